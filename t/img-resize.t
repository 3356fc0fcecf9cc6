#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# tblk-img resize against Debian's qemu-img 7.2: the same image (created and filled by
# qemu-img/qemu-io), copied twice, resized once by each tool; stdout, stderr (program name
# normalised), exit status and the resulting files (cmp) must be equal, and our result must
# pass `qemu-img check`. Covers qcow2 (cluster sizes 512/64k/2M, refcount widths, compat
# 0.10/1.1, extended L2, backing files) and raw, grow and shrink, the preallocation modes,
# and bad command lines. Also images created with preallocation by both tools (cmp).
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib_qcow2diff as D  # noqa: E402
from lib_qcow2diff import TIMG, ok  # noqa: E402


def run(argv, cwd):
    return D.run(argv, cwd, timeout=120)


def same_files(a, b):
    if os.path.exists(a) != os.path.exists(b):
        return False
    if not os.path.exists(a):
        return True
    return subprocess.run(["cmp", "-s", a, b]).returncode == 0


def diff_case(d, name, setup, args, files=("img",), check=True):
    """setup(dir) makes the input files; args: the resize arguments (file names relative)."""
    q, t = D.img_sides(d, setup, ["resize"] + args)
    why = ""
    if q[0] != t[0]:
        why = "exit status %d vs %d" % (q[0], t[0])
    elif q[1] != t[1]:
        why = "stdout %r vs %r" % (q[1], t[1])
    elif q[2] != t[2]:
        why = "stderr %r vs %r" % (q[2], t[2])
    else:
        for f in files:
            if not same_files(os.path.join(d, "q", f), os.path.join(d, "t", f)):
                why = "file %s differs" % f
                break
    if not why and check and t[0] == 0 and files[0].endswith("qcow2"):
        rc, out, err = run(["qemu-img", "check", files[0]], os.path.join(d, "t"))
        if rc != 0:
            why = "qemu-img check: " + out + err
    ok(not why, name + ": resize " + " ".join(args), why)


def sh(cmds, cwd):
    for c in cmds:
        subprocess.run(c, cwd=cwd, check=True, capture_output=True)


def qcow2_setup(size, opts, writes=(), backing=False):
    def setup(sd):
        o = opts
        if backing:
            sh([["qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", size]], sd)
            sh([["qemu-io", "-f", "qcow2", "-c", "write -P 7 0 256k", "base.qcow2"]], sd)
            o = opts + ",backing_file=base.qcow2,backing_fmt=qcow2"
        sh([["qemu-img", "create", "-q", "-f", "qcow2", "-o", o, "img.qcow2", size]], sd)
        for w in writes:
            sh([["qemu-io", "-f", "qcow2", "-c", w, "img.qcow2"]], sd)
    return setup


def raw_setup(size, writes=()):
    def setup(sd):
        sh([["qemu-img", "create", "-q", "-f", "raw", "img.raw", size]], sd)
        for w in writes:
            sh([["qemu-io", "-f", "raw", "-c", w, "img.raw"]], sd)
    return setup


def cases(d):
    F = ("img.qcow2",)
    # qcow2 matrix: geometry x data x size change
    geoms = [
        ("cluster_size=65536", "64k"),
        ("cluster_size=512", "512"),
        ("cluster_size=2M", "2M"),
        ("cluster_size=4096,refcount_bits=1", "4k rb1"),
        ("cluster_size=65536,refcount_bits=64", "64k rb64"),
        ("compat=0.10", "v2"),
        ("cluster_size=65536,extended_l2=on", "extl2"),
        ("cluster_size=65536,lazy_refcounts=on", "lazy"),
    ]
    data = [
        ("empty", ()),
        ("data", ("write -P 1 0 300k", "write -P 2 900k 100k", "write -z 1500k 64k",
                  "write -P 3 3M 1M", "discard 3M 64k")),
    ]
    changes = [
        ["+1M"], ["64M"], ["1G"], ["--shrink", "2M"], ["--shrink", "1M"],
        ["--shrink", "512k"], ["--shrink", "-3M"], ["--preallocation=metadata", "+5M"],
        ["--preallocation=falloc", "40M"], ["--preallocation=full", "+3M"],
    ]
    for go, gname in geoms:
        for dname, writes in data:
            for ch in changes:
                # an empty image needs fewer cases; keeps the test near a minute
                if dname == "empty" and ch not in (["+1M"], ["--shrink", "1M"],
                                                   ["--preallocation=metadata", "+5M"]):
                    continue
                if gname == "512" and ch == ["1G"]:
                    ch = ["300M"]
                diff_case(d, "qcow2 %s %s" % (gname, dname),
                          qcow2_setup("4M", go, writes), ch + ["img.qcow2"], F)
    # extended L2 with a partly written cluster: qemu leaves the new bitmaps alone
    for ch in (["--preallocation=falloc", "+1M"], ["--preallocation=full", "+1M"]):
        diff_case(d, "qcow2 extl2 subclusters",
                  qcow2_setup("4M", "extended_l2=on", ("write -P 1 4k 8k",)),
                  ch + ["img.qcow2"], F)
    # internal snapshots, external data files
    def snap(sd):
        qcow2_setup("4M", "cluster_size=65536", ("write -P 1 0 1M",))(sd)
        sh([["qemu-img", "snapshot", "-c", "s1", "img.qcow2"],
            ["qemu-io", "-f", "qcow2", "-c", "write -P 2 512k 1M", "-c",
             "write -z 3M 64k", "img.qcow2"]], sd)
    def v2snap(sd):
        qcow2_setup("4M", "compat=0.10", ("write -P 1 0 1M",))(sd)
        sh([["qemu-img", "snapshot", "-c", "s1", "img.qcow2"]], sd)
    for ch in (["+4M"], ["--shrink", "1M"], ["--preallocation=metadata", "+1M"],
               ["--preallocation=full", "+1M"]):
        diff_case(d, "qcow2 with a snapshot", snap, ch + ["img.qcow2"], F)
        diff_case(d, "qcow2 with an external data file",
                  qcow2_setup("4M", "data_file=img.data", ("write -P 1 0 1M",)),
                  ch + ["img.qcow2"], ("img.qcow2", "img.data"))
    diff_case(d, "qcow2 v2 with a snapshot", v2snap, ["+4M", "img.qcow2"], F)
    # backing file
    for ch in (["+4M"], ["--shrink", "1M"], ["--preallocation=metadata", "+1M"]):
        diff_case(d, "qcow2 with backing",
                  qcow2_setup("4M", "cluster_size=65536", ("write -P 5 1M 64k",), True),
                  ch + ["img.qcow2"], F)
    # a larger image crossing L2 tables, shrunk across an L1 boundary
    big = ("write -P 1 0 64k", "write -P 2 600M 128k", "write -P 3 1100M 64k")
    for ch in (["--shrink", "700M"], ["--shrink", "100M"], ["3G"]):
        diff_case(d, "qcow2 1.2G", qcow2_setup("1200M", "cluster_size=65536", big),
                  ch + ["img.qcow2"], F)
    # shrink twice then grow (L1 kept large, refcount blocks dropped)
    def twice(sd):
        qcow2_setup("4M", "cluster_size=512", data[1][1])(sd)
        sh([["qemu-img", "resize", "-q", "--shrink", "img.qcow2", "1M"]], sd)
    diff_case(d, "qcow2 shrunk before", twice, ["+2M", "img.qcow2"], F)
    # raw
    for ch in (["+1M"], ["--shrink", "100k"], ["--shrink", "1000"], ["1001"],
               ["--preallocation=falloc", "+1M"], ["--preallocation=full", "8M"],
               ["--preallocation=metadata", "8M"], ["-q", "+512"]):
        diff_case(d, "raw", raw_setup("4M", ("write -P 9 0 64k",)),
                  ["-f", "raw"] + ch + ["img.raw"], ("img.raw",))
    # bad command lines and refusals
    bad = [
        [], ["img.qcow2"], ["img.qcow2", "1M", "2M"], ["-f", "qcow2", "img.qcow2"],
        ["img.qcow2", "abc"], ["img.qcow2", ""], ["img.qcow2", "16E"], ["img.qcow2", "0"],
        ["img.qcow2", "--", "-4M"], ["img.qcow2", "--", "-5M"], ["img.qcow2", "+8E"],
        ["img.qcow2", "1M"], ["img.qcow2", "--", "-1"], ["--shrink", "img.qcow2", "1000"],
        ["--preallocation=foo", "img.qcow2", "8M"],
        ["--preallocation=full", "img.qcow2", "4M"],
        ["--preallocation=full", "--shrink", "img.qcow2", "1M"],
        ["img.qcow2", "100P"], ["img.qcow2", "7E"], ["img.qcow2", "4M"],
        ["-x", "img.qcow2", "1M"], ["--image-opts", "-f", "qcow2", "img.qcow2", "5M"],
        ["-f", "foo", "img.qcow2", "5M"], ["nonexistent.qcow2", "+1M"],
        ["-f", "raw", "img.qcow2", "-q", "+0"],
        ["--image-opts", "driver=qcow2,file.filename=img.qcow2", "6M"],
        ["img.qcow2", "0x800k"],
    ]
    for b in bad:
        diff_case(d, "bad input", qcow2_setup("4M", "cluster_size=65536", data[1][1]),
                  b, F)
    # creation with preallocation, both tools (cmp)
    for opts in ("preallocation=metadata", "preallocation=falloc", "preallocation=full",
                 "preallocation=metadata,cluster_size=512",
                 "preallocation=full,cluster_size=512,refcount_bits=64",
                 "preallocation=metadata,cluster_size=2M",
                 "preallocation=falloc,compat=0.10",
                 "preallocation=metadata,extended_l2=on",
                 "preallocation=metadata,refcount_bits=1,cluster_size=4096"):
        for size in ("1M", "100M"):
            for side, tool in (("q", "qemu-img"), ("t", TIMG)):
                sd = os.path.join(d, side)
                shutil.rmtree(sd, ignore_errors=True)
                os.makedirs(sd)
                r = run([tool, "create", "-q", "-f", "qcow2", "-o", opts, "c.qcow2", size],
                        sd)
            ok(r[0] == 0 and same_files(os.path.join(d, "q", "c.qcow2"),
                                        os.path.join(d, "t", "c.qcow2")),
               "create -o %s %s: same file" % (opts, size), r[2])
    # over a backing file (needs extended L2), and the refusals, with qemu's messages
    for opts in ("preallocation=metadata,extended_l2=on", "preallocation=full,extended_l2=on",
                 "preallocation=falloc,extended_l2=on,cluster_size=32k",
                 "preallocation=metadata", "data_file=d.raw,data_file_raw=on"):
        res = []
        for side, tool in (("q", "qemu-img"), ("t", TIMG)):
            sd = os.path.join(d, side)
            shutil.rmtree(sd, ignore_errors=True)
            os.makedirs(sd)
            sh([["qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "4M"]], sd)
            r = run([tool, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
                     "-o", opts, "c.qcow2", "3M"], sd)
            res.append((r[0], r[1], r[2].split(": ", 1)[-1]))
        ok(res[0] == res[1] and same_files(os.path.join(d, "q", "c.qcow2"),
                                           os.path.join(d, "t", "c.qcow2")),
           "create -b -o %s: same result" % opts, "%r" % res)
    for opts in ("preallocation=falloc", "preallocation=full"):
        for side, tool in (("q", "qemu-img"), ("t", TIMG)):
            sd = os.path.join(d, side)
            shutil.rmtree(sd, ignore_errors=True)
            os.makedirs(sd)
            r = run([tool, "create", "-q", "-f", "raw", "-o", opts, "c.raw", "3M"], sd)
        ok(r[0] == 0 and same_files(os.path.join(d, "q", "c.raw"),
                                    os.path.join(d, "t", "c.raw")),
           "create -f raw -o %s: same file" % opts, r[2])


def main():
    return D.in_tmpdir("tblk-resize-", cases)


if __name__ == "__main__":
    sys.exit(main())
