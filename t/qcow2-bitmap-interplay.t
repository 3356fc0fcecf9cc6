#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# qcow2-bitmap-interplay.t - persistent bitmaps meeting the other image operations, against
# Debian's qemu-img/qemu-io 7.2, the same commands on copies of the same images (one with an
# enabled, a disabled and a 4k-granularity bitmap holding bits; one whose bitmaps a killed
# qemu-io left in use):
# - resize (grow, shrink, sizes not a multiple of the granularity, preallocation) with
#   qemu-img resize and qemu-io truncate, the bitmaps resized and stored as qemu stores them;
#   refused with qemu's message while a bitmap is inconsistent;
# - internal snapshots: create (files identical once the snapshot dates are zeroed), list,
#   apply refused while bitmaps exist (enabled, disabled or in use), delete, resize of a v3
#   image with snapshots and bitmaps;
# - amend (compat=0.10 with bitmaps, refcount_bits, lazy_refcounts, size), commit, rebase
#   (safe and unsafe) and measure of images with bitmaps;
# - hostile bitmap directories and tables (every field of the extension, of the entries and
#   of the table entries; extra data; unknown flags; duplicate names; data past the end of
#   the file): info, check and check -r all give qemu's messages and exit status, and the
#   same files where qemu's repair is the same.
# Output is compared with the program name, file names and qemu's node names normalised.
import os
import shutil
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib_bitmap import TIMG, TIO, cmpf, main, ok, read_dir, run, sh  # noqa: E402

# Known differences, each with its reason; the rest of each comparison still runs.
KNOWN = {
    # qemu's leak repair frees the leaked cluster with a discard that punches it out of the
    # file; ours only drops its refcount (general check code, not the bitmaps'): same
    # output, different bytes in the freed cluster.
    "repair-discards": "qemu punches out the clusters whose leaks it repairs",
}


def zero_dates(path):
    """The file's bytes with the creation date of every snapshot entry zeroed."""
    d = bytearray(open(path, "rb").read())
    nb, off = struct.unpack(">IQ", d[60:72])
    for _ in range(nb):
        d[off + 16:off + 24] = bytes(8)
        idl, nml = struct.unpack(">HH", d[off + 12:off + 16])
        extra = struct.unpack(">I", d[off + 36:off + 40])[0]
        off += (40 + extra + idl + nml + 7) & ~7
    return bytes(d)


def same_file(a, b, dates=False):
    if dates:
        return zero_dates(a) == zero_dates(b)
    return cmpf(a, b)


def write_dir(path, change, nb=None):
    """Rewrites the directory of @path in place after @change(entries) edits it."""
    d = bytearray(open(path, "rb").read())
    ext, off, entries = read_dir(d)
    change(entries)
    out = b""
    for e in entries:
        ent = struct.pack(">QIIBBHI", e["toff"], e["tsz"], e["flags"], e["type"], e["gb"],
                          e["nl"], e["ex"]) + e["extra"] + e["name"]
        out += ent + bytes(-len(ent) % 8)
    d[off:off + len(out)] = out
    d[ext + 8:ext + 12] = struct.pack(">I", len(entries) if nb is None else nb)
    d[ext + 16:ext + 24] = struct.pack(">Q", len(out))
    open(path, "wb").write(d)


def patch(path, fn):
    d = bytearray(open(path, "rb").read())
    fn(d)
    open(path, "wb").write(d)


def differential(tmp, base, steps, what, dates=False, files=True, known=None, check=True):
    """Runs @steps on copies of @base through qemu and tblk; compares output and files.
    A step is ("img", args) or ("io", commands); "IMG" in args stands for the image."""
    q = os.path.join(tmp, "q.qcow2")
    t = os.path.join(tmp, "t.qcow2")
    shutil.copy(base, q)
    shutil.copy(base, t)
    same, diag = True, ""
    for kind, args in steps:
        if kind == "io":
            argv = []
            for c in args:
                argv += ["-c", c]
            rq = run(["qemu-io"] + argv + [q], [(q, "IMG")], cwd=tmp)
            rt = run([TIO] + argv + [t], [(t, "IMG")], cwd=tmp)
        else:
            rq = run(["qemu-img"] + [q if a == "IMG" else a for a in args], [(q, "IMG")],
                     cwd=tmp)
            rt = run([TIMG] + [t if a == "IMG" else a for a in args], [(t, "IMG")],
                     cwd=tmp)
        if rq != rt:
            same = False
            diag += "step %r\nqemu: %r\ntblk: %r\n" % ((kind, args), rq, rt)
    ok(same, "%s: same output and status" % what, diag)
    identical = False
    if files and known != "repair-discards":
        identical = ok(same_file(q, t, dates), "%s: files identical%s" %
                       (what, " (dates zeroed)" if dates else ""))
    # Identical files check the same; the others must check as qemu's.
    if check and not identical:
        rc = run(["qemu-img", "check", t])
        rcq = run(["qemu-img", "check", q])
        ok(rc[0] == rcq[0], "%s: qemu-img check of ours as of qemu's (%d)" % (what, rcq[0]),
           rc[1] + rc[2])
    return q, t


def IMG(*args):
    return ("img", list(args))


def IO(*cmds):
    return ("io", list(cmds))


def make_images(tmp):
    a = os.path.join(tmp, "a.qcow2")
    sh(["qemu-img", "create", "-q", "-f", "qcow2", a, "64M"])
    sh(["qemu-img", "bitmap", "--add", a, "en"])
    sh(["qemu-img", "bitmap", "--add", "--disable", "-g", "1M", a, "dis"])
    sh(["qemu-io", "-c", "write 0 64k", "-c", "write 60M 128k", "-c", "write 33M 4k", a])
    sh(["qemu-img", "bitmap", "--merge", "en", a, "dis"])
    sh(["qemu-img", "bitmap", "--add", "-g", "4k", a, "third"])
    sh(["qemu-io", "-c", "write 20M 12k", "-c", "write -z 40M 1M", a])
    inuse = os.path.join(tmp, "inuse.qcow2")
    shutil.copy(a, inuse)
    subprocess.run(["qemu-io", "-c", "write 0 64k", "-c", "sigraise 9", inuse],
                   capture_output=True)
    return a, inuse


def resize_tests(tmp, a, inuse):
    for args in (["128M"], ["+1G"], ["--shrink", "32M"], ["--shrink", "63M"],
                 ["--shrink", "1M"], ["--shrink", "33M"], ["--shrink", str(20 * 2**20 + 512)],
                 ["--preallocation=metadata", "80M"], ["--preallocation=falloc", "70M"],
                 ["32M"]):
        differential(tmp, a, [IMG("resize", *(args[:-1] + ["IMG", args[-1]]))],
                     "resize %s" % " ".join(args))
    differential(tmp, a, [IO("write 62M 1M", "truncate 62M", "truncate 100M",
                             "write 90M 64k")], "truncate down and up, writes after")
    differential(tmp, a, [IO("truncate 8G", "write 7G 64k", "write -z 6G 1M",
                             "discard 0 64k")], "truncate to 8G, writes in the new area")
    differential(tmp, a, [IO("truncate 1000000")], "truncate to a size not of sectors")
    differential(tmp, a, [IMG("bitmap", "--add", "IMG", "late"),
                          IO("write 1M 64k", "truncate 10M", "write 9M 1M")],
                 "bitmap added then the image shrunk")
    differential(tmp, inuse, [IMG("resize", "IMG", "128M")], "in-use bitmap refuses resize")
    differential(tmp, inuse, [IO("truncate 10M")], "in-use bitmap refuses truncate")
    differential(tmp, inuse, [IMG("bitmap", "--remove", "IMG", "en"),
                              IMG("bitmap", "--remove", "IMG", "dis"),
                              IMG("resize", "IMG", "128M")],
                 "resize once the in-use bitmaps are removed")
    # Grown past what a 512-byte granularity may hold: the bitmap is lost at close.
    g = os.path.join(tmp, "g.qcow2")
    sh(["qemu-img", "create", "-q", "-f", "qcow2", g, "1G"])
    sh(["qemu-img", "bitmap", "--add", "-g", "512", g, "fine"])
    sh(["qemu-img", "bitmap", "--add", g, "normal"])
    sh(["qemu-io", "-c", "write 0 1M", g])
    differential(tmp, g, [IMG("resize", "IMG", "3T")], "grown past the bitmap limits")
    differential(tmp, g, [IMG("resize", "IMG", "300G")], "grown to 300G")


def snapshot_tests(tmp, a, inuse):
    differential(tmp, a, [IMG("snapshot", "-c", "s1", "IMG"), IMG("snapshot", "-l", "IMG"),
                          IO("write 0 2M"), IMG("snapshot", "-c", "s2", "IMG")],
                 "snapshots created", dates=True)
    sn = os.path.join(tmp, "sn.qcow2")
    shutil.copy(a, sn)
    sh(["qemu-img", "snapshot", "-c", "s1", sn])
    sh(["qemu-io", "-c", "write -P 5 0 1M", sn])
    differential(tmp, sn, [IMG("snapshot", "-a", "s1", "IMG")], "apply refused with bitmaps")
    differential(tmp, sn, [IMG("snapshot", "-a", "nope", "IMG")],
                 "apply of a missing snapshot refused with bitmaps")
    differential(tmp, sn, [IMG("snapshot", "-d", "s1", "IMG")], "snapshot deleted")
    differential(tmp, sn, [IMG("bitmap", "--disable", "IMG", "en"),
                           IMG("bitmap", "--disable", "IMG", "third"),
                           IMG("snapshot", "-a", "s1", "IMG")],
                 "apply refused with disabled bitmaps only")
    differential(tmp, sn, [IMG("bitmap", "--remove", "IMG", "en"),
                           IMG("bitmap", "--remove", "IMG", "dis"),
                           IMG("bitmap", "--remove", "IMG", "third"),
                           IMG("snapshot", "-a", "s1", "IMG")],
                 "apply once the bitmaps are removed")
    differential(tmp, sn, [IMG("resize", "IMG", "100M"), IO("write 80M 64k"),
                           IMG("resize", "--shrink", "IMG", "16M")],
                 "resize with snapshots and bitmaps")
    differential(tmp, inuse, [IMG("snapshot", "-c", "s1", "IMG"),
                              IMG("snapshot", "-a", "s1", "IMG"),
                              IMG("snapshot", "-d", "s1", "IMG")],
                 "snapshots of an image with in-use bitmaps", dates=True)


def amend_tests(tmp, a, inuse):
    # (refcount_bits changes take seconds each: one of them.)
    for img, label, opts in ((a, "", ("compat=0.10", "refcount_bits=1",
                                      "lazy_refcounts=on", "size=128M", "size=32M",
                                      "compat=0.10,size=100M")),
                             (inuse, ", in-use bitmaps", ("compat=0.10", "lazy_refcounts=on",
                                                          "size=128M"))):
        for o in opts:
            differential(tmp, img, [IMG("amend", "-o", o, "IMG")], "amend %s%s" % (o, label))
    differential(tmp, a, [IMG("amend", "-o", "compat=0.10", "IMG"), IMG("info", "IMG"),
                          IMG("amend", "-o", "compat=1.1", "IMG"),
                          IMG("bitmap", "--add", "IMG", "new")],
                 "bitmaps after a downgrade and an upgrade")


def chain_tests(tmp, a):
    base = os.path.join(tmp, "base.qcow2")
    sh(["qemu-img", "create", "-q", "-f", "qcow2", base, "64M"])
    sh(["qemu-io", "-c", "write -P 7 0 2M", base])
    sh(["qemu-img", "bitmap", "--add", base, "bb"])
    sh(["qemu-img", "bitmap", "--add", "-g", "512", "--disable", base, "bd"])
    base2 = os.path.join(tmp, "base2.qcow2")
    sh(["qemu-img", "create", "-q", "-f", "qcow2", base2, "64M"])
    sh(["qemu-io", "-c", "write -P 3 4M 1M", "-c", "write -P 7 0 64k", base2])
    for args, what in ((["commit", "IMG"], "commit"), (["commit", "-d", "IMG"], "commit -d"),
                       (["rebase", "-b", "", "IMG"], "rebase -b ''"),
                       (["rebase", "-u", "-b", "", "IMG"], "rebase -u -b ''"),
                       (["rebase", "-F", "qcow2", "-b", "base2.qcow2", "IMG"],
                        "rebase onto another base")):
        sh(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
            "ov.qcow2"], cwd=tmp)
        sh(["qemu-img", "bitmap", "--add", "ov.qcow2", "ob"], cwd=tmp)
        sh(["qemu-io", "-c", "write -P 9 1M 2M", "ov.qcow2"], cwd=tmp)
        dq, dt = os.path.join(tmp, "cq"), os.path.join(tmp, "ct")
        for dd in (dq, dt):
            shutil.rmtree(dd, ignore_errors=True)
            os.mkdir(dd)
            for f in ("base.qcow2", "base2.qcow2", "ov.qcow2"):
                shutil.copy(os.path.join(tmp, f), dd)
        rq = run(["qemu-img"] + [x if x != "IMG" else "ov.qcow2" for x in args], cwd=dq)
        rt = run([TIMG] + [x if x != "IMG" else "ov.qcow2" for x in args], cwd=dt)
        ok(rq == rt, "%s of an image with bitmaps: same output and status" % what,
           "qemu: %r\ntblk: %r" % (rq, rt))
        ok(all(same_file(os.path.join(dq, f), os.path.join(dt, f))
               for f in ("base.qcow2", "ov.qcow2")), "%s: files identical" % what)
    for args in (["-O", "qcow2", a], ["-O", "qcow2", "--output=json", a],
                 ["-O", "raw", a], ["-O", "qcow2", "-o", "compat=0.10", a],
                 ["-O", "qcow2", "-o", "cluster_size=4096", a],
                 ["-O", "qcow2", os.path.join(tmp, "inuse.qcow2")]):
        rq = run(["qemu-img", "measure"] + args)
        rt = run([TIMG, "measure"] + args)
        ok(rq == rt, "measure %s: same output" % " ".join(args[:-1]),
           "qemu: %r\ntblk: %r" % (rq, rt))


def entry_field(name, value, which=0):
    def change(entries):
        entries[which][name] = value
    return change


def hostile_tests(tmp, a, inuse):
    c512 = os.path.join(tmp, "c512.qcow2")
    sh(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", c512, "1M"])
    sh(["qemu-img", "bitmap", "--add", c512, "x"])
    sh(["qemu-img", "bitmap", "--add", "-g", "512", c512, "y"])
    sh(["qemu-io", "-c", "write 0 4k", "-c", "write 512k 1k", c512])
    d = open(a, "rb").read()
    ext, doff, ents = read_dir(d)
    cs = 1 << struct.unpack(">I", d[20:24])[0]
    l1 = struct.unpack(">Q", d[40:48])[0]
    l2 = struct.unpack(">Q", d[l1:l1 + 8])[0] & 0x00fffffffffffe00
    t0 = ents[0]["toff"]
    first = struct.unpack(">Q", d[t0:t0 + 8])[0]
    eof = (len(d) + 100 * cs) & ~(cs - 1)

    def w64(off, v):
        return lambda b: b.__setitem__(slice(off, off + 8), struct.pack(">Q", v))

    def w32(off, v):
        return lambda b: b.__setitem__(slice(off, off + 4), struct.pack(">I", v))

    def both(*fns):
        def f(b):
            for fn in fns:
                fn(b)
        return f

    def noac(b):
        b[95] &= ~1

    in_use = entry_field("flags", 3)
    cases = [
        # The extension.
        ("extension length", a, both(w32(ext + 4, 16)), None),
        ("extension length, autoclear clear", a, both(w32(ext + 4, 16), noac), None),
        ("autoclear bit clear", a, noac, "repair-discards"),
        ("reserved field", a, w32(ext + 12, 1), None),
        ("no bitmaps announced", a, w32(ext + 8, 0), None),
        ("70000 bitmaps announced", a, w32(ext + 8, 70000), None),
        ("one more bitmap announced", a, w32(ext + 8, len(ents) + 1), None),
        ("one less bitmap announced", a, w32(ext + 8, len(ents) - 1), None),
        ("directory offset unaligned", a, w64(ext + 24, doff + 8), None),
        ("directory past the end of the file", a, w64(ext + 24, eof), None),
        ("directory size zero", a, w64(ext + 16, 0), None),
        ("directory size 16", a, w64(ext + 16, 16), None),
        ("directory size one cluster more", a, w64(ext + 16, 4096 + cs), None),
        ("directory size 1T", a, w64(ext + 16, 1 << 40), None),
        ("directory size 64M", a, w64(ext + 16, 64 << 20), None),
        # Directory entries.
        ("extra data", a, entry_field("extra", bytes(8)), "dir"),
        ("extra data, size only", a, None, "extra-size-only"),
        ("extra data 0xffffffff", a, None, "extra-huge"),
        ("extra data compatible flag", a, entry_field("flags", 2 | 4), "dir"),
        ("unknown flag 3", a, entry_field("flags", 2 | 8), "dir"),
        ("unknown flag 31", a, entry_field("flags", 1 << 31), "dir"),
        ("type 2", a, entry_field("type", 2), "dir"),
        ("granularity bits 8", a, entry_field("gb", 8), "dir"),
        ("granularity bits 32", a, entry_field("gb", 32), "dir"),
        ("granularity bits 255", a, entry_field("gb", 255), "dir"),
        ("granularity too coarse for the table", a, entry_field("gb", 9, 1), "dir"),
        ("empty name", a, lambda es: (es[0].update(name=b"", nl=0)), "dir"),
        ("name with a NUL", a, lambda es: (es[0].update(name=b"e\0n", nl=3)), "dir"),
        ("name of 1023 bytes", a, lambda es: (es[0].update(name=b"n" * 1023, nl=1023)), "dir"),
        ("name of 1024 bytes", a, lambda es: (es[0].update(name=b"n" * 1024, nl=1024)), "dir"),
        ("duplicate names", a, lambda es: (es[1].update(name=b"en", nl=2)), "dir"),
        ("duplicate in-use names", inuse, lambda es: (es[1].update(name=b"en", nl=2)), "dir"),
        ("table offset zero", a, entry_field("toff", 0), "dir"),
        ("table offset unaligned", a, entry_field("toff", t0 + 8), "dir"),
        ("table past the end of the file", a, entry_field("toff", eof), "dir-past-eof"),
        ("table size zero", a, entry_field("tsz", 0), "dir"),
        ("table size 2", a, entry_field("tsz", 2), "dir"),
        ("table size 0x8000001", a, entry_field("tsz", 0x8000001), "dir"),
        ("table size 2, in use", inuse, both(), "dir-tsz2"),
        ("table at the L2 table", a, entry_field("toff", l2), "dir"),
        # Table entries.
        ("data offset unaligned", a, w64(t0, first + 512), None),
        ("reserved bit in an entry", a, w64(t0, first | 2), None),
        ("high reserved bit in an entry", a, w64(t0, first | (1 << 60)), None),
        ("all-ones flag with an offset", a, w64(t0, first | 1), None),
        ("data past the end of the file", a, w64(t0, eof), "past-eof"),
        ("data at the L2 table", a, w64(t0, l2), "l2"),
        ("data entry zero", a, w64(t0, 0), "repair-discards"),
        ("data entry all ones", a, w64(t0, 1), "repair-discards"),
        ("in use, data offset unaligned", inuse, w64(t0, first + 512), None),
    ]
    for what, img, fn, kind in cases:
        h = os.path.join(tmp, "h.qcow2")
        shutil.copy(img, h)
        if kind in ("dir", "dir-past-eof"):
            write_dir(h, fn)
        elif kind == "dir-tsz2":
            write_dir(h, entry_field("tsz", 2))
        elif kind == "extra-size-only":
            patch(h, w32(doff + 20, 8))
        elif kind == "extra-huge":
            patch(h, w32(doff + 20, 0xffffffff))
        else:
            patch(h, fn)
        known = "repair-discards" if kind == "repair-discards" else None
        if kind in ("past-eof", "dir-past-eof", "l2"):
            # qemu's repair of these goes its own way (its messages for a cluster past
            # the end, its OFLAG_COPIED repair): the plain check and info only.
            steps = [IMG("info", "IMG"), IMG("check", "IMG")]
        else:
            steps = [IMG("info", "--output=json", "IMG"), IMG("check", "IMG"),
                     IMG("check", "-r", "all", "IMG")]
        differential(tmp, h, steps, "hostile: " + what, known=known, check=False)
    # A small image: the same hostile entries, then writes (bitmaps stored at close).
    for what, fn in (("extra data", entry_field("extra", bytes(16))),
                     ("unknown flag", entry_field("flags", 6)),
                     ("second name in use", lambda es: es[1].update(name=b"x", nl=1,
                                                                   flags=es[1]["flags"] | 1)),
                     ("good", lambda es: None)):
        h = os.path.join(tmp, "h.qcow2")
        shutil.copy(c512, h)
        write_dir(h, fn)
        differential(tmp, h, [IO("write 8k 1k"), IMG("info", "IMG")],
                     "512-byte clusters, %s: open for writing" % what)


def tests(tmp):
    a, inuse = make_images(tmp)
    resize_tests(tmp, a, inuse)
    snapshot_tests(tmp, a, inuse)
    amend_tests(tmp, a, inuse)
    chain_tests(tmp, a)
    hostile_tests(tmp, a, inuse)


main("tblk-bitmap-inter.", tests)
