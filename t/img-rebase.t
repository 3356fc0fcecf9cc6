#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# tblk-img rebase against Debian's qemu-img 7.2: backing chains of depth 1-3 (qcow2 or raw
# base) built by qemu-img/qemu-io, copied twice, rebased once by each tool; stdout (with -p),
# stderr (program name normalised), exit status and every file of the chain must be equal
# (cmp: the copied data and the rewritten header land at the same offsets), and our images
# must pass qemu-img check. Safe and unsafe mode, new backing files outside and inside the
# chain, relative names (image in a subdirectory) and absolute ones, -b "" and bad command
# lines.
# Images in use: qemu-io (or, on our side, tblk-io) holds one image of the chain open,
# read-write or read-only, while the command runs; errors and files must be the same.
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib_chain_diff as L  # noqa: E402


def chain(depth, base_fmt="qcow2", top_dir="", sizes=None, opts="", extra=()):
    def setup(d):
        L.make_chain(d, depth, base_fmt, sizes=sizes, opts=opts, top_dir=top_dir)
        # candidate new backing files: different data, some equal to the old backing's
        L.sh([["qemu-img", "create", "-q", "-f", "qcow2", "new.qcow2", "4M"],
              ["qemu-io", "-f", "qcow2", "-c", "write -P 1 64k 256k", "-c",
               "write -P 9 1M 128k", "-c", "write -z 3M 64k", "new.qcow2"],
              ["qemu-img", "create", "-q", "-f", "raw", "new.raw", "3M"],
              ["qemu-io", "-f", "raw", "-c", "write -P 1 64k 100k", "-c",
               "write -P 8 2M 512", "new.raw"],
              ["qemu-img", "create", "-q", "-f", "qcow2", "small.qcow2", "1M"],
              ["qemu-io", "-f", "qcow2", "-c", "write -P 4 0 1M", "small.qcow2"]], d)
        os.makedirs(os.path.join(d, "sub2"), exist_ok=True)
        L.sh([["qemu-img", "create", "-q", "-f", "qcow2", "sub2/new.qcow2", "4M"],
              ["qemu-io", "-f", "qcow2", "-c", "write -P 2 512k 64k", "sub2/new.qcow2"]], d)
        for e in extra:
            e(d)
    return setup


def files_of(depth, base_fmt="qcow2", top_dir=""):
    names = ["base.%s" % base_fmt] + ["mid%d.qcow2" % i for i in range(1, depth)]
    names.append(os.path.join(top_dir, "top.qcow2"))
    return names + ["new.qcow2", "new.raw", "small.qcow2", "sub2/new.qcow2"]


def main():
    d = tempfile.mkdtemp(prefix="tblk-rebase-")
    h = L.Harness(d)
    # an absolute new backing file, shared by both sides (only read by rebase)
    shared = os.path.join(d, "shared")
    os.makedirs(shared)
    L.sh([["qemu-img", "create", "-q", "-f", "qcow2", "abs.qcow2", "4M"],
          ["qemu-io", "-f", "qcow2", "-c", "write -P 1 0 128k", "-c", "write -P 6 1M 64k",
           "abs.qcow2"]], shared)
    absn = os.path.join(shared, "abs.qcow2")
    try:
        for depth in (1, 2, 3):
            for bf in ("qcow2", "raw"):
                key = ("chain", depth, bf)
                setup = chain(depth, bf)
                F = files_of(depth, bf)
                nm = "depth %d %s base" % (depth, bf)
                for args in (["-b", "new.qcow2", "-F", "qcow2"],
                             ["-b", "new.raw", "-F", "raw"],
                             ["-b", "", ],
                             ["-b", "small.qcow2", "-F", "qcow2"],
                             ["-p", "-b", "new.qcow2", "-F", "qcow2"],
                             ["-q", "-p", "-b", "new.raw", "-F", "raw"],
                             ["-u", "-b", "new.qcow2", "-F", "qcow2"],
                             ["-u", "-b", ""],
                             ["-u"],
                             ["-u", "-b", "whatever.img", "-F", "raw"],
                             ["-b", absn, "-F", "qcow2"],
                             ["-u", "-b", absn, "-F", "qcow2"],
                             ["-b", "sub2/new.qcow2", "-F", "qcow2"],
                             ["-b", "new.qcow2"],
                             ["-u", "-b", "new.qcow2"]):
                    h.case(nm, key, setup, "rebase", args + ["top.qcow2"], F)
                # onto a layer of its own chain (only the changes above it are compared)
                below = ["base.%s" % bf] + ["mid%d.qcow2" % i for i in range(1, depth)]
                for b in below[:-1] if depth > 1 else []:
                    fmt = bf if b.startswith("base") else "qcow2"
                    h.case(nm + " onto its chain", key, setup, "rebase",
                           ["-b", b, "-F", fmt, "top.qcow2"], F)
                    h.case(nm + " onto its chain", key, setup, "rebase",
                           ["-p", "-b", b, "-F", fmt, "top.qcow2"], F)
        # the image in a subdirectory: names resolve against its directory
        for depth in (1, 2):
            key = ("sub", depth)
            setup = chain(depth, "qcow2", top_dir="sub")
            F = files_of(depth, "qcow2", "sub")
            nm = "depth %d, image in sub/" % depth
            for args in (["-b", "../new.qcow2", "-F", "qcow2"],
                         ["-b", "new.qcow2", "-F", "qcow2"],
                         ["-u", "-b", "../new.qcow2", "-F", "qcow2"],
                         ["-b", "../sub2/new.qcow2", "-F", "qcow2"],
                         ["-b", "../base.qcow2", "-F", "qcow2"],
                         ["-b", ""]):
                h.case(nm, key, setup, "rebase", args + ["sub/top.qcow2"], F)
            h.case(nm + ", run from sub/", key, setup, "rebase",
                   ["-b", "../new.qcow2", "-F", "qcow2", "top.qcow2"], F, cwd="sub")
        # sizes: image larger and smaller than its backing files
        for sizes, nm in ((["2M", "4M"], "backing smaller"), (["4M", "3M"], "image smaller"),
                          (["1M", "6M"], "image 6M over 1M")):
            key = ("sizes",) + tuple(sizes)
            setup = chain(1, "qcow2", sizes=sizes)
            for args in (["-b", "new.qcow2", "-F", "qcow2"], ["-b", ""],
                         ["-b", "new.raw", "-F", "raw"], ["-p", "-b", "small.qcow2", "-F",
                                                           "qcow2"]):
                h.case(nm, key, setup, "rebase", args + ["top.qcow2"], files_of(1))
        # geometries of the image
        for opts in ("cluster_size=512", "cluster_size=2M", "compat=0.10",
                     "extended_l2=on", "refcount_bits=1"):
            key = ("opts", opts)
            setup = chain(1, "qcow2", opts=opts)
            for args in (["-b", "new.qcow2", "-F", "qcow2"], ["-u", "-b", "new.raw", "-F",
                                                               "raw"], ["-b", ""]):
                h.case(opts, key, setup, "rebase", args + ["top.qcow2"], files_of(1))
        # a name too long for the header (512-byte clusters), and too long for qemu at all
        key = ("opts", "cluster_size=512")
        setup = chain(1, "qcow2", opts="cluster_size=512")
        for n in (400, 1000, 1100):
            h.case("long name", key, setup, "rebase",
                   ["-u", "-b", "x" * n, "-F", "raw", "top.qcow2"], files_of(1))
        # errors
        key = ("chain", 2, "qcow2")
        setup = chain(2)
        F = files_of(2)

        def rm_base(dd):
            os.unlink(os.path.join(dd, "base.qcow2"))
        bad = [
            [], ["top.qcow2"], ["-b", "new.qcow2", "-F", "qcow2"],
            ["-b", "new.qcow2", "-F", "qcow2", "top.qcow2", "x"],
            ["-x", "top.qcow2"], ["-b"], ["-F", "qcow2", "-u", "top.qcow2"],
            ["-b", "new.qcow2", "-F", "foo", "top.qcow2"],
            ["-u", "-b", "new.qcow2", "-F", "foo", "top.qcow2"],
            ["-b", "nonexistent.qcow2", "-F", "qcow2", "top.qcow2"],
            ["-b", "new.qcow2", "-F", "qcow2", "nonexistent.qcow2"],
            ["-t", "foo", "-b", "new.qcow2", "-F", "qcow2", "top.qcow2"],
            ["-T", "foo", "-b", "new.qcow2", "-F", "qcow2", "top.qcow2"],
            ["-f", "raw", "-b", "new.qcow2", "-F", "qcow2", "top.qcow2"],
            ["-f", "raw", "-u", "top.qcow2"],
            ["--image-opts", "-f", "qcow2", "-u", "top.qcow2"],
            ["--image-opts", "-u", "-b", "new.raw", "-F", "raw",
             "driver=qcow2,file.filename=top.qcow2"],
            ["-b", "new.qcow2", "-F", "qcow2", "-t", "none", "-T", "directsync", "top.qcow2"],
            ["-U", "-b", "new.qcow2", "-F", "qcow2", "top.qcow2"],
            ["-b", "", "-F", "qcow2", "top.qcow2"],
            ["--object", "secret,id=s0,data=x", "-u", "-b", "", "top.qcow2"],
            ["--object", "foo,id=x", "-u", "top.qcow2"],
            ["-b", "new.qcow2", "-F", "qcow2", "base.qcow2"],
        ]
        for b in bad:
            h.case("bad input", key, setup, "rebase", b, F)
        # images in use: held by qemu-io (or tblk-io on our side), read-write or read-only
        for held in ("top.qcow2", "mid1.qcow2", "base.qcow2", "new.qcow2"):
            for hargs in ([], ["-r"], ["-r", "-U"]):
                for args in (["-b", "new.qcow2", "-F", "qcow2", "top.qcow2"],
                             ["-u", "-b", "new.qcow2", "-F", "qcow2", "top.qcow2"],
                             ["-b", "base.qcow2", "-F", "qcow2", "top.qcow2"],
                             ["-b", "", "top.qcow2"],
                             ["-U", "-u", "-b", "new.raw", "-F", "raw", "top.qcow2"]):
                    for ht in (False, True):
                        h.case("%s held%s by %s" % (held, " " + " ".join(hargs) if hargs
                                                    else "", "tblk-io" if ht else "qemu-io"),
                               key, setup, "rebase", args, F, hold=hargs + [held],
                               hold_tblk=ht)
        key = ("nobase",)
        setup = chain(2, extra=(rm_base,))
        for b in (["-b", "new.qcow2", "-F", "qcow2", "top.qcow2"],
                  ["-u", "-b", "new.qcow2", "-F", "qcow2", "mid1.qcow2"],
                  ["-b", "new.qcow2", "-F", "qcow2", "mid1.qcow2"]):
            h.case("missing backing file", key, setup, "rebase", b, F)
    finally:
        import shutil
        shutil.rmtree(d, ignore_errors=True)
    return h.finish()


if __name__ == "__main__":
    sys.exit(main())
