#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# qcow2 internal snapshots against Debian's qemu 7.2:
# - the same sequence of writes (qemu-io / tblk-io) and snapshot commands (qemu-img snapshot
#   / tblk-img snapshot -c -l -a -d) on identical images gives the same output and exit code
#   at every step and byte-identical image files at the end, once the creation dates of the
#   snapshot entries (bytes 16-23 of each entry, the clock) are zeroed in both files; the
#   images pass `qemu-img check`; over cluster sizes 512 and 64k, refcount_bits 1 and 16,
#   compat 0.10 and 1.1, extended L2 entries;
# - images with snapshots made by qemu are read by tblk exactly: `info` (human and JSON) and
#   `snapshot -l` identical to qemu-img's, and `-a`/`-d` on copies give files identical to
#   qemu's;
# - command line errors as qemu-img gives them.
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile

BUILD = os.environ.get("TBLK_BUILD", "build")
TIO = os.path.join(BUILD, "tools", "tblk-io")
TIMG = os.path.join(BUILD, "tools", "tblk-img")
tests = []
TMP = tempfile.mkdtemp(prefix="tblk-snap-")


def run(argv, cwd=TMP):
    p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout, p.stderr


def ok(cond, name, diag="", todo=None):
    tests.append((bool(cond), name, diag, todo))


# Known differences, each with its reason (none left: extended L2 writes now match qemu's).
TODO_IDENTICAL = {}


DATE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")


def norm(res):
    rc, out, err = res
    out = "".join(l for l in out.splitlines(True) if " ops; " not in l)
    out = DATE.sub("DATE", out)
    out = re.sub(r'"date-(n?sec)": \d+', r'"date-\1": N', out)
    err = re.sub(r"^(qemu-img|tblk-img|qemu-io|tblk-io): ", "PROG: ", err, flags=re.M)
    return rc, out, err


def zero_dates(path):
    """Zeroes the date fields of every snapshot entry; returns the file's bytes."""
    data = bytearray(open(path, "rb").read())
    nb, off = struct.unpack(">IQ", data[60:72])
    for _ in range(nb):
        off = (off + 7) & ~7
        if off + 40 > len(data):
            break
        id_len, name_len = struct.unpack(">HH", data[off + 12:off + 16])
        extra = struct.unpack(">I", data[off + 36:off + 40])[0]
        data[off + 16:off + 24] = bytes(8)
        off += 40 + extra + id_len + name_len
    return bytes(data)


def step(kind, *args):
    return (kind, args)


SEQ = [
    step("io", "write -P 1 0 64k", "write -P 2 192k 64k", "write -P 7 1M 4k"),
    step("snap", "-c", "s1"),
    step("io", "write -P 3 32k 64k", "write -P 4 512k 4k"),
    step("snap", "-c", "s2"),
    step("snap", "-l"),
    step("io", "write -P 5 0 4k", "discard 192k 64k", "write -z 1M 4k"),
    step("snap", "-c", "s2"),
    step("snap", "-a", "s1"),
    step("io", "read -P 1 0 64k", "read -P 2 192k 64k", "read -P 0 512k 4k",
         "read -P 7 1M 4k"),
    step("io", "write -P 6 64k 8k"),
    step("snap", "-d", "s2"),
    step("snap", "-l"),
    step("snap", "-a", "2"),
    step("io", "read -P 1 0 32k", "read -P 3 32k 64k", "read -P 4 512k 4k"),
    step("snap", "-d", "s1"),
    step("snap", "-d", "nope"),
    step("snap", "-a", "nope"),
    step("snap", "-d", "1"),
    step("snap", "-c", "s4"),
    step("snap", "-l"),
    step("io", "write -P 8 0 128k", "write -c -P 12 1536k 64k"),
    step("snap", "-c", "s5"),
    step("io", "write -P 13 1540k 4k", "read -P 12 1536k 4k", "read -P 12 1544k 56k"),
    step("snap", "-a", "s5"),
    step("io", "read -P 12 1536k 64k"),
    step("snap", "-d", "s5"),
    step("snap", "-d", "s2"),
    step("snap", "-d", "s4"),
    step("snap", "-l"),
]


def run_seq(img, io, path, compress):
    results = []
    for kind, args in SEQ:
        if kind == "io":
            cmd = [io, "-f", "qcow2"]
            for c in args:
                cmd += ["-c", c if compress else c.replace("write -c ", "write ")]
            results.append(norm(run(cmd + [path])))
        else:
            results.append(norm(run([img, "snapshot"] + list(args) + [path])))
    return results


def differential(label, create_opts, size="2M"):
    q = os.path.join(TMP, "q-%s.qcow2" % label)
    t = os.path.join(TMP, "t-%s.qcow2" % label)
    rc, out, err = run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", create_opts, q, size])
    if rc:
        ok(False, "%s: create" % label, err)
        return
    shutil.copy(q, t)
    # tblk-io's compressed writes place data as qemu-io's only with 64k clusters so far
    # (without snapshots too): elsewhere the sequence writes plain data.
    compress = "cluster_size=65536" in create_opts
    rq = run_seq("qemu-img", "qemu-io", q, compress)
    rt = run_seq(TIMG, TIO, t, compress)
    for i, ((kind, args), a, b) in enumerate(zip(SEQ, rq, rt)):
        ok(a == b, "%s: step %d %s %s" % (label, i, kind, " ".join(args)),
           "qemu: %r\ntblk: %r" % (a, b))
    zq, zt = zero_dates(q), zero_dates(t)
    same = zq == zt
    diag = ""
    if not same:
        n = min(len(zq), len(zt))
        first = next((k for k in range(n) if zq[k] != zt[k]), n)
        diag = "sizes %d %d, first difference at byte %d" % (len(zq), len(zt), first)
    ok(same, "%s: image files identical (dates zeroed)" % label, diag,
       todo=TODO_IDENTICAL.get(label))
    # qemu leaks the L1 copy of a snapshot it fails to create (refcount_bits=1): the same
    # check result as qemu's own file is what is asked, and clean where qemu is clean.
    cq = run(["qemu-img", "check", q])
    ct = run(["qemu-img", "check", t])
    ok(ct[0] == cq[0] and (ct[0] or "No errors were found" in ct[1]),
       "%s: qemu-img check as on qemu's file (rc %d)" % (label, cq[0]),
       "qemu: %r\ntblk: %r" % (cq, ct))


CONFIGS = [
    ("c64k-rb16", "cluster_size=65536,refcount_bits=16"),
    ("c512-rb16", "cluster_size=512,refcount_bits=16"),
    ("c64k-rb1", "cluster_size=65536,refcount_bits=1"),
    ("c512-rb1", "cluster_size=512,refcount_bits=1"),
    ("c64k-v2", "cluster_size=65536,compat=0.10"),
    ("c512-v2", "cluster_size=512,compat=0.10"),
    ("c4k-rb8", "cluster_size=4096,refcount_bits=8"),
    ("c64k-extl2", "cluster_size=65536,extended_l2=on"),
    ("c64k-rb64", "cluster_size=65536,refcount_bits=64"),
    ("c64k-rb2", "cluster_size=65536,refcount_bits=2"),
    ("c64k-lazy", "cluster_size=65536,lazy_refcounts=on"),
    ("c2M-rb16", "cluster_size=2097152"),
]


def qemu_made():
    """Images whose snapshots qemu made, read and changed by tblk."""
    q = os.path.join(TMP, "qm.qcow2")
    run(["qemu-img", "create", "-q", "-f", "qcow2", q, "1M"])
    run(["qemu-io", "-c", "write -P 9 0 128k", q])
    run(["qemu-img", "snapshot", "-c", "first", q])
    run(["qemu-io", "-c", "write -P 10 64k 128k", q])
    run(["qemu-img", "snapshot", "-c", "a name with spaces \"and\" quotes", q])
    run(["qemu-io", "-c", "write -c -P 11 512k 64k", q])
    run(["qemu-img", "snapshot", "-c", "third", q])
    for args in (["snapshot", "-l"], ["snapshot", "-U", "-l"], ["info"],
                 ["info", "--output=json"], ["info", "-U", "--output=json"], ["check"],
                 ["check", "--output=json"]):
        a = run(["qemu-img"] + args + [q])
        b = run([TIMG] + args + [q])
        ok(a[0] == b[0] and a[1] == b[1] and a[2].replace("qemu-img", "") ==
           b[2].replace("tblk-img", ""), "qemu-made image: %s" % " ".join(args),
           "qemu: %r\ntblk: %r" % (a, b))
    for args in (["-a", "first"], ["-a", "2"], ["-d", "first"], ["-d", "third"],
                 ["-c", "new"]):
        qc = os.path.join(TMP, "qm-q.qcow2")
        tc = os.path.join(TMP, "qm-t.qcow2")
        shutil.copy(q, qc)
        shutil.copy(q, tc)
        a = norm(run(["qemu-img", "snapshot"] + args + [qc]))
        b = norm(run([TIMG, "snapshot"] + args + [tc]))
        same = zero_dates(qc) == zero_dates(tc)
        ok(a == b and same, "qemu-made image: snapshot %s gives the same file" %
           " ".join(args), "qemu: %r\ntblk: %r identical=%s" % (a, b, same))
        rc, out, err = run(["qemu-img", "check", tc])
        ok(rc == 0, "qemu-made image: check after snapshot %s" % " ".join(args), out + err)
    # a backing chain with snapshots in both images
    cb = os.path.join(TMP, "chain-base.qcow2")
    ct = os.path.join(TMP, "chain-top.qcow2")
    run(["qemu-img", "create", "-q", "-f", "qcow2", cb, "1M"])
    run(["qemu-img", "snapshot", "-c", "in base", cb])
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", cb, "-F", "qcow2", ct])
    run(["qemu-img", "snapshot", "-c", "in top", ct])
    run(["qemu-img", "snapshot", "-c", "again", ct])
    for args in (["info", "--backing-chain"], ["info", "--backing-chain", "--output=json"]):
        a = run(["qemu-img"] + args + [ct])
        b = run([TIMG] + args + [ct])
        ok(a == b, "backing chain with snapshots: %s" % " ".join(args),
           "qemu: %r\ntblk: %r" % (a, b))
    # tblk reads the snapshot's data after applying it
    tc = os.path.join(TMP, "qm-t.qcow2")
    shutil.copy(q, tc)
    run([TIMG, "snapshot", "-a", "first", tc])
    rc, out, err = run([TIO, "-c", "read -P 9 0 128k", "-c", "read -P 0 128k 512k", tc])
    ok(rc == 0 and "verification failed" not in out, "tblk reads snapshot 'first' after -a",
       out + err)


def rewrite_table(path, change):
    """Re-lays the snapshot table in place after change(index, entry dict) edits entries."""
    data = bytearray(open(path, "rb").read())
    nb, off0 = struct.unpack(">IQ", data[60:72])
    off, entries = off0, []
    for i in range(nb):
        off = (off + 7) & ~7
        h = data[off:off + 40]
        l1o, l1s, idl, nml, ds, dn, clk, vms, extra = struct.unpack(">QIHHIIQII", h)
        ex = bytes(data[off + 40:off + 40 + extra])
        ident = bytes(data[off + 40 + extra:off + 40 + extra + idl])
        name = bytes(data[off + 40 + extra + idl:off + 40 + extra + idl + nml])
        e = dict(l1o=l1o, l1s=l1s, ds=ds, dn=dn, clk=clk, vms=vms, ex=ex, id=ident,
                 name=name)
        change(i, e)
        entries.append(e)
        off += 40 + extra + idl + nml
    out, off = bytearray(), 0
    for e in entries:
        out += bytes(((off + 7) & ~7) - off)
        off = (off + 7) & ~7
        ent = struct.pack(">QIHHIIQII", e["l1o"], e["l1s"], len(e["id"]), len(e["name"]),
                          e["ds"], e["dn"], e["clk"], e["vms"], len(e["ex"]))
        ent += e["ex"] + e["id"] + e["name"]
        out += ent
        off += len(ent)
    data[off0:off0 + len(out)] = out
    open(path, "wb").write(data)


def crafted():
    """Fields qemu-img cannot set (VM state, VM clock, no icount, unknown extra data)."""
    q = os.path.join(TMP, "cr.qcow2")
    run(["qemu-img", "create", "-q", "-f", "qcow2", q, "1M"])
    run(["qemu-io", "-c", "write -P 9 0 128k", q])
    for n in ("a", "b", "c"):
        run(["qemu-img", "snapshot", "-c", n, q])

    def change(i, e):
        if i == 0:
            e["clk"] = 3723456000000 + 999999
            e["vms"] = 1536
            e["ex"] = struct.pack(">QQ", 1536, 1 << 20)     # no icount
        elif i == 1:
            e["ex"] = e["ex"] + b"\x01\x02\x03\x04\x05\x06\x07\x08"   # unknown extra data
            e["clk"] = 123 * 10**9 * 3600
        else:
            e["ex"] = struct.pack(">Q", 5 << 30)   # 8 bytes: VM state size only
            e["vms"] = 0
            e["id"] = b"17"
    rewrite_table(q, change)
    for args in (["snapshot", "-l"], ["info"], ["info", "--output=json"]):
        a = run(["qemu-img"] + args + [q])
        b = run([TIMG] + args + [q])
        ok(a[0] == b[0] and a[1] == b[1], "crafted table: %s" % " ".join(args),
           "qemu: %r\ntblk: %r" % (a, b))
    for args in (["-c", "new"], ["-d", "b"], ["-a", "a"], ["-a", "17"], ["-d", "c"]):
        qc = os.path.join(TMP, "cr-q.qcow2")
        tc = os.path.join(TMP, "cr-t.qcow2")
        shutil.copy(q, qc)
        shutil.copy(q, tc)
        a = norm(run(["qemu-img", "snapshot"] + args + [qc]))
        b = norm(run([TIMG, "snapshot"] + args + [tc]))
        same = zero_dates(qc) == zero_dates(tc)
        ok(a == b and same, "crafted table: snapshot %s gives the same file" % " ".join(args),
           "qemu: %r\ntblk: %r identical=%s" % (a, b, same))


def broken_l1():
    """A snapshot whose L1 table fails qemu's checks: the same messages from -a and -d."""
    q = os.path.join(TMP, "bl.qcow2")
    run(["qemu-img", "create", "-q", "-f", "qcow2", q, "1M"])
    run(["qemu-io", "-c", "write 0 64k", q])
    run(["qemu-img", "snapshot", "-c", "s", q])

    def unaligned(i, e):
        e["l1o"] = 0x3004

    def too_large(i, e):
        e["l1s"] = 0xffffffff
    for label, change in (("L1 offset unaligned", unaligned), ("L1 too large", too_large)):
        b = os.path.join(TMP, "bl-b.qcow2")
        shutil.copy(q, b)
        rewrite_table(b, change)
        for args in (["-l"], ["-a", "s"], ["-d", "s"]):
            qc = os.path.join(TMP, "bl-q.qcow2")
            tc = os.path.join(TMP, "bl-t.qcow2")
            shutil.copy(b, qc)
            shutil.copy(b, tc)
            x = norm(run(["qemu-img", "snapshot"] + args + [qc]))
            y = norm(run([TIMG, "snapshot"] + args + [tc]))
            ok(x == y and open(qc, "rb").read() == open(tc, "rb").read(),
               "%s: snapshot %s" % (label, " ".join(args)), "qemu: %r\ntblk: %r" % (x, y))


def random_sequence(rnd, size, cs):
    seq, names = [], ["a", "b", "c", "d"]
    for _ in range(24):
        k = rnd.randrange(100)
        if k < 45:
            cmds = []
            for _ in range(rnd.randrange(1, 4)):
                off = rnd.randrange(size // 512) * 512
                ln = min(rnd.choice([512, 4096, cs, 3 * cs + 1024]), size - off)
                c = rnd.randrange(100)
                if c < 70:
                    cmds.append("write -P %d %d %d" % (rnd.randrange(1, 255), off, ln))
                elif c < 85:
                    cmds.append("write -z %d %d" % (off, ln))
                else:
                    cmds.append("discard %d %d" % (off - off % cs, cs))
            seq.append(step("io", *cmds))
        elif k < 65:
            seq.append(step("snap", "-c", rnd.choice(names)))
        elif k < 80:
            seq.append(step("snap", "-a", rnd.choice(names + ["1", "2", "3"])))
        elif k < 95:
            seq.append(step("snap", "-d", rnd.choice(names)))
        else:
            seq.append(step("snap", "-l"))
    return seq


def overflow_midtable():
    """refcount_bits=2: creating a snapshot fails on a cluster already referenced 3 times,
    after earlier entries of the same L2 table were counted (qemu keeps what it did)."""
    saved = SEQ[:]
    SEQ[:] = [
        step("io", "write -P 1 64k 64k"),
        step("snap", "-c", "s1"),
        step("snap", "-c", "s2"),
        step("io", "write -P 2 0 64k"),
        step("snap", "-c", "s3"),
        step("snap", "-l"),
        step("io", "write -P 3 0 4k", "read -P 1 64k 64k"),
        step("snap", "-d", "s1"),
        step("snap", "-c", "s4"),
        step("snap", "-a", "s4"),
        step("io", "read -P 2 0 64k", "read -P 1 64k 64k"),
    ]
    differential("overflow-midtable", "cluster_size=65536,refcount_bits=2")
    SEQ[:] = saved


def randomized():
    seed = int(os.environ.get("TBLK_SEED", random.randrange(1 << 30)))
    rnd = random.Random(seed)
    for label, opts, cs in (("rand-c64k", "cluster_size=65536", 65536),
                            ("rand-c4k-v2", "cluster_size=4096,compat=0.10", 4096),
                            ("rand-c512-rb4", "cluster_size=512,refcount_bits=4", 512)):
        SEQ[:] = random_sequence(rnd, 1 << 20, cs)
        differential("%s-seed%d" % (label, seed), opts, size="1M")
    print("# seed %d (TBLK_SEED=N repeats a run)" % seed)


def cli_errors():
    q = os.path.join(TMP, "cli.qcow2")
    r = os.path.join(TMP, "cli.raw")
    run(["qemu-img", "create", "-q", "-f", "qcow2", q, "1M"])
    run(["qemu-img", "create", "-q", "-f", "raw", r, "1M"])
    cases = [
        [], ["cli.qcow2"], ["-l"], ["-l", "-c", "x", "cli.qcow2"], ["-c", "a", "-c", "b", "cli.qcow2"],
        ["-x", "cli.qcow2"], ["-c"], ["-l", "cli.qcow2", "extra"], ["-l", "nofile.qcow2"],
        ["-U", "-c", "y", "cli.qcow2"], ["-f", "qcow2", "-l", "cli.qcow2"],
        ["--object", "foo", "-l", "cli.qcow2"], ["-l", "cli.raw"], ["-c", "x", "cli.raw"],
        ["-a", "x", "cli.raw"], ["-d", "x", "cli.raw"], ["-q", "-c", "quiet", "cli.qcow2"],
        ["-q", "-l", "cli.qcow2"], ["-l", "--image-opts", "driver=qcow2,file.filename=cli.qcow2"],
        ["-c", "", "cli.qcow2"], ["-l", "cli.qcow2"], ["-c", "x" * 300, "cli.qcow2"],
        ["-l", "cli.qcow2"], ["-d", "x" * 300, "cli.qcow2"], ["-l", "cli.qcow2"],
    ]
    for args in cases:
        a = norm(run(["qemu-img", "snapshot"] + args))
        b = norm(run([TIMG, "snapshot"] + args))
        ok(a == b, "cli: snapshot %s" % " ".join(a_[:40] for a_ in args),
           "qemu: %r\ntblk: %r" % (a, b))


for label, opts in CONFIGS:
    differential(label, opts)
qemu_made()
crafted()
broken_l1()
cli_errors()
overflow_midtable()
randomized()

print("1..%d" % len(tests))
for i, (good, name, diag, todo) in enumerate(tests, 1):
    print("%s %d - %s%s" % ("ok" if good else "not ok", i, name,
                           " # TODO " + todo if todo else ""))
    if not good and diag:
        for line in diag.splitlines():
            print("# " + line)
shutil.rmtree(TMP, ignore_errors=True)
sys.exit(0)
