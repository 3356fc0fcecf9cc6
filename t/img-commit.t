#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# tblk-img commit against Debian's qemu-img 7.2: backing chains of depth 1-3 (qcow2 or raw
# base) built by qemu-img/qemu-io, copied twice, committed once by each tool; stdout,
# stderr (program name normalised), exit status and every file of the chain must be equal
# (cmp), and our images must pass qemu-img check. The commit target itself is compared by
# content (qemu-img compare): qemu's commit job copies with several requests in flight, so
# where the base allocates new clusters differs from one qemu run to the next (seen: three
# different files in six runs of the same commit); tblk allocates them in offset order. Commit into the direct backing file and,
# with -b, into a base further down; -d keeping the image's data, the image emptied
# otherwise (qcow2 v3 reset, v2 and images with snapshots unmapped), the base growing to the
# image's size, zero clusters, geometries, -p (qemu's job prints a timing-dependent number of
# figures: only the first and the last are compared) and bad command lines.
# Images in use: qemu-io (or, on our side, tblk-io) holds one image of the chain open,
# read-write or read-only, while the command runs; errors and files must be the same.
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib_chain_diff as L  # noqa: E402


def files_of(depth, base_fmt="qcow2", top_dir=""):
    names = ["base.%s" % base_fmt] + ["mid%d.qcow2" % i for i in range(1, depth)]
    return names + [os.path.join(top_dir, "top.qcow2")]


def chain(depth, base_fmt="qcow2", top_dir="", sizes=None, opts="", writes=None, extra=()):
    def setup(d):
        L.make_chain(d, depth, base_fmt, sizes=sizes, opts=opts, writes=writes,
                     top_dir=top_dir)
        for e in extra:
            e(d)
    return setup


# zero clusters, a discard and data in the image over data in the base
ZW = [["write -P 1 0 2M"],
      ["write -z 0 64k", "write -P 2 1M 128k", "write -z 1536k 512k", "discard 3M 64k",
       "write -P 3 3M 4k"]]
# unaligned small writes (base clusters only partly covered)
UW = [["write -P 1 0 1M"], ["write -P 5 1000 3000", "write -P 6 70k 1k", "write -z 200k 4k",
                           "write -P 7 4095k 1k"]]


def split_target(files, args, cwd=""):
    """The commit target (where qemu's job writes in a timing-dependent order, so only its
    content is compared) and the files that must stay byte-identical."""
    img = args[-1] if args else ""
    if "file.filename=" in img:
        img = img.split("file.filename=")[1].split(",")[0]
    img = os.path.normpath(os.path.join(cwd, img))
    target = None
    if "-b" in args[:-1]:
        b = args[args.index("-b") + 1]
        cand = os.path.normpath(os.path.join(os.path.dirname(img), b.replace("@SIDE@/", "")))
        if cand in files:
            target = cand
        elif os.path.basename(b) in files:
            target = os.path.basename(b)
    elif img in files and files.index(img) > 0:
        target = files[files.index(img) - 1]
    return [f for f in files if f != target], [target] if target else []


def main():
    d = tempfile.mkdtemp(prefix="tblk-commit-")
    h = L.Harness(d)
    case0 = h.case

    def case(name, key, setup, sub, args, files, **kw):
        same, content = split_target(list(files), args, kw.get("cwd", ""))
        case0(name, key, setup, sub, args, same, compare=content, **kw)
    h.case = case
    try:
        for depth in (1, 2, 3):
            for bf in ("qcow2", "raw"):
                key = ("chain", depth, bf)
                setup = chain(depth, bf)
                F = files_of(depth, bf)
                nm = "depth %d %s base" % (depth, bf)
                for args in ([], ["-d"], ["-q"], ["-p"], ["-d", "-p"], ["-r", "1M"],
                             ["-t", "none"], ["-t", "unsafe", "-d"]):
                    h.case(nm, key, setup, "commit", args + ["top.qcow2"], F,
                           norm_progress="-p" in args)
                below = ["base.%s" % bf] + ["mid%d.qcow2" % i for i in range(1, depth)]
                for b in below:
                    h.case(nm + " -b", key, setup, "commit", ["-b", b, "top.qcow2"], F)
                    h.case(nm + " -b", key, setup, "commit", ["-p", "-b", b, "top.qcow2"], F,
                           norm_progress=True)
                if depth > 1:
                    h.case(nm + " intermediate", key, setup, "commit", ["mid1.qcow2"], F)
                    h.case(nm + " intermediate", key, setup, "commit",
                           ["-b", below[0], "mid%d.qcow2" % (depth - 1)], F)
        # the image in a subdirectory: -b names resolve against each image's directory
        for depth in (1, 2):
            key = ("sub", depth)
            setup = chain(depth, top_dir="sub")
            F = files_of(depth, "qcow2", "sub")
            nm = "depth %d, image in sub/" % depth
            for args in ([], ["-d"], ["-b", "../base.qcow2"], ["-b", "base.qcow2"],
                         ["-b", os.path.join("..", "mid1.qcow2") if depth > 1 else "x"]):
                h.case(nm, key, setup, "commit", args + ["sub/top.qcow2"], F)
            h.case(nm + ", run from sub/", key, setup, "commit",
                   ["-b", "../base.qcow2", "top.qcow2"], F, cwd="sub")
        # an absolute -b
        key = ("chain", 2, "qcow2")
        setup = chain(2)
        h.case("absolute -b", key, setup, "commit",
               ["-b", "@SIDE@/base.qcow2", "top.qcow2"], files_of(2))
        # zero clusters, discards, unaligned writes, sizes
        for nm, w, bf in (("zeroes", ZW, "qcow2"), ("zeroes raw", ZW, "raw"),
                          ("unaligned", UW, "qcow2"), ("unaligned raw", UW, "raw")):
            key = ("w", nm)
            setup = chain(1, bf, writes=w)
            for args in ([], ["-d"]):
                h.case(nm, key, setup, "commit", args + ["top.qcow2"], files_of(1, bf))
        for sizes, nm in ((["2M", "4M"], "base smaller"), (["4M", "3M"], "image smaller"),
                          (["1M", "5M"], "base 1M image 5M")):
            for bf in ("qcow2", "raw"):
                key = ("sizes", bf) + tuple(sizes)
                setup = chain(1, bf, sizes=sizes)
                h.case(nm + " " + bf, key, setup, "commit", ["top.qcow2"], files_of(1, bf))
        # geometries (of every image in the chain)
        for opts in ("cluster_size=512", "cluster_size=4096", "cluster_size=2M",
                     "compat=0.10", "extended_l2=on", "refcount_bits=1", "lazy_refcounts=on"):
            key = ("opts", opts)
            setup = chain(1, opts=opts)
            for args in ([], ["-d"]):
                h.case(opts, key, setup, "commit", args + ["top.qcow2"], files_of(1))

        # an image with an internal snapshot is unmapped, not reset
        def snap(dd):
            L.sh([["qemu-img", "snapshot", "-c", "s1", "top.qcow2"],
                  ["qemu-io", "-c", "write -P 8 2M 256k", "top.qcow2"]], dd)
        key = ("snap",)
        setup = chain(1, extra=(snap,))
        h.case("image with a snapshot", key, setup, "commit", ["top.qcow2"], files_of(1))
        # errors
        key = ("chain", 2, "qcow2")
        setup = chain(2)
        F = files_of(2)
        bad = [
            [], ["top.qcow2", "x"], ["-x", "top.qcow2"], ["-b"], ["-b", "nonexist",
                                                                   "top.qcow2"],
            ["-b", "top.qcow2", "top.qcow2"], ["base.qcow2"], ["nonexistent.qcow2"],
            ["-t", "foo", "top.qcow2"], ["-r", "1x", "top.qcow2"], ["-r", "-1", "top.qcow2"],
            ["-f", "raw", "top.qcow2"], ["-f", "foo", "top.qcow2"],
            ["--image-opts", "-f", "qcow2", "top.qcow2"],
            ["--image-opts", "driver=qcow2,file.filename=top.qcow2"],
            ["--object", "foo,id=x", "top.qcow2"], ["-q", "-b", "nonexist", "top.qcow2"],
            ["-p", "-b", "nonexist", "top.qcow2"], ["-U", "top.qcow2"],
        ]
        for b in bad:
            h.case("bad input", key, setup, "commit", b, F)

        # images in use: held by qemu-io (or tblk-io on our side), read-write or read-only
        for held in ("top.qcow2", "mid1.qcow2", "base.qcow2"):
            for hargs in ([], ["-r"], ["-r", "-U"]):
                for args in (["top.qcow2"], ["-d", "top.qcow2"], ["-b", "base.qcow2",
                                                                   "top.qcow2"],
                             ["mid1.qcow2"], ["-U", "top.qcow2"]):
                    for ht in (False, True):
                        h.case("%s held%s by %s" % (held, " " + " ".join(hargs) if hargs
                                                    else "", "tblk-io" if ht else "qemu-io"),
                               key, setup, "commit", args, F, hold=hargs + [held],
                               hold_tblk=ht)

        def rm_base(dd):
            os.unlink(os.path.join(dd, "base.qcow2"))
        key = ("nobase",)
        setup = chain(2, extra=(rm_base,))
        h.case("missing backing file", key, setup, "commit", ["top.qcow2"], F)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return h.finish()


if __name__ == "__main__":
    sys.exit(main())
