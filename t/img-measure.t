#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# tblk-img measure against Debian's qemu-img 7.2: stdout (human and JSON), stderr (program
# name normalised) and exit status equal for sizes, target options (cluster sizes, refcount
# widths, compat, extended L2, preallocation, backing file) and source images (qcow2 v2/v3
# with and without persistent bitmaps, and raw, holding data, zeroes and holes, with a
# backing file; -l internal snapshots), for the formats qemu-img knows and tblk does not
# measure (their -o options are not checked: tblk does not know them), and for bad command
# lines
# (not a bad option: qemu-img measure then prints its whole help text, which is not ours).
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib_qcow2diff as D  # noqa: E402


def case(d, args):
    q = D.run(["qemu-img", "measure"] + args, d)
    t = D.run([D.TIMG, "measure"] + args, d)
    q = (q[0], q[1], D.norm(q[2]))
    t = (t[0], t[1], D.norm(t[2]))
    why = "" if q == t else "qemu-img %r\n  ours %r" % (q, t)
    D.ok(not why, "measure " + " ".join(args), why)


def sh(d, *argv):
    subprocess.run(list(argv), cwd=d, check=True, capture_output=True)


def cases(d):
    sh(d, "qemu-img", "create", "-q", "-f", "qcow2", "v3.qcow2", "10M")
    sh(d, "qemu-io", "-f", "qcow2", "-c", "write 0 1M", "-c", "write 5M 10k",
       "-c", "write -z 7M 1M", "-c", "write 9M 512", "v3.qcow2")
    sh(d, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2",
       "3M")
    sh(d, "qemu-io", "-f", "qcow2", "-c", "write 1M 100k", "v2.qcow2")
    sh(d, "qemu-img", "create", "-q", "-f", "raw", "r.raw", "10M")
    sh(d, "qemu-io", "-f", "raw", "-c", "write 0 1M", "-c", "write 4M 4k", "r.raw")
    sh(d, "qemu-img", "create", "-q", "-f", "qcow2", "-b", "v3.qcow2", "-F", "qcow2",
       "top.qcow2", "12M")
    sh(d, "qemu-io", "-f", "qcow2", "-c", "write 11M 64k", "top.qcow2")
    sh(d, "qemu-img", "create", "-q", "-f", "raw", "odd.raw", "1000")
    sh(d, "qemu-img", "create", "-q", "-f", "qcow2", "sn.qcow2", "4M")
    sh(d, "qemu-io", "-c", "write -P 1 0 1M", "sn.qcow2")
    sh(d, "qemu-img", "snapshot", "-c", "s1", "sn.qcow2")
    sh(d, "qemu-io", "-c", "write -P 2 1M 2M", "-c", "discard 0 512k", "sn.qcow2")
    sh(d, "qemu-img", "snapshot", "-c", "s2", "sn.qcow2")
    # -l: the source read as one of its internal snapshots
    for l in ("s1", "1", "s2", "2", "snapshot.name=s1", "snapshot.id=2",
              "snapshot.id=1,snapshot.name=s1", "snapshot.id=1,snapshot.name=s2",
              "snapshot.bogus=1", "nosuch"):
        case(d, ["-O", "qcow2", "-l", l, "sn.qcow2"])
    case(d, ["--output=json", "-O", "qcow2", "-o", "cluster_size=4k", "-l", "s1", "-U",
             "sn.qcow2"])
    case(d, ["-O", "raw", "-l", "s1", "sn.qcow2"])
    sh(d, "qemu-img", "create", "-q", "-f", "qcow2", "bm.qcow2", "100M")
    sh(d, "qemu-img", "bitmap", "--add", "bm.qcow2", "b0")
    sh(d, "qemu-img", "bitmap", "--add", "-g", "512", "bm.qcow2", "a" * 40)
    sh(d, "qemu-img", "bitmap", "--add", "-g", "2M", "bm.qcow2", "c")
    sh(d, "qemu-io", "-f", "qcow2", "-c", "write 0 1M", "bm.qcow2")
    for o in ("", "cluster_size=512", "cluster_size=2M", "compat=0.10"):
        for out in ("human", "json"):
            case(d, ["--output=" + out, "-O", "qcow2"] + (["-o", o] if o else []) +
                 ["bm.qcow2"])
    sizes = ["0", "1000", "1M", "1G", "100G", "1P", "3T"]
    opts = ["", "cluster_size=512", "cluster_size=2M", "refcount_bits=1",
            "refcount_bits=64", "compat=0.10", "extended_l2=on",
            "extended_l2=on,cluster_size=2M", "preallocation=metadata",
            "preallocation=falloc", "preallocation=full,cluster_size=4k",
            "backing_file=v3.qcow2,backing_fmt=qcow2", "lazy_refcounts=on",
            "compression_type=zstd"]
    for o in opts:
        for s in sizes:
            case(d, ["-O", "qcow2"] + (["-o", o] if o else []) + ["--size", s])
        for src in ("v3.qcow2", "v2.qcow2", "r.raw", "top.qcow2", "odd.raw"):
            case(d, ["-O", "qcow2"] + (["-o", o] if o else []) + [src])
    for src in ("v3.qcow2", "r.raw", "top.qcow2", "odd.raw"):
        for out in ("human", "json"):
            case(d, ["--output=" + out, src])
            case(d, ["--output=" + out, "-O", "qcow2", src])
    for s in sizes:
        case(d, ["--size", s])
        case(d, ["--output=json", "-O", "qcow2", "--size", s])
    case(d, ["-f", "raw", "-O", "qcow2", "r.raw"])
    case(d, ["--image-opts", "-O", "qcow2", "driver=qcow2,file.filename=v3.qcow2"])
    bad = [[], ["--size", "1G", "v3.qcow2"], ["-f", "qcow2", "--size", "1G"],
           ["--size", "abc"], ["--size", "-1"], ["--size", "8E"],
           ["-O", "foo", "--size", "1G"], ["-O", "qcow2", "-o", "foo=bar", "--size", "1G"],
           ["-O", "raw", "-o", "foo=1", "--size", "1G"], ["--output=xml", "--size", "1G"],
           ["-O", "qcow2", "v3.qcow2", "r.raw"], ["-O", "qcow2", "-l", "snap", "v3.qcow2"],
           ["-l", "snap", "--size", "1G"], ["-O", "qcow2", "-o", "cluster_size=256",
                                           "--size", "1G"],
           ["-O", "qcow2", "-o", "cluster_size=3000", "--size", "1G"],
           ["-O", "qcow2", "-o", "compat=0.9", "--size", "1G"],
           ["-O", "qcow2", "-o", "refcount_bits=3", "--size", "1G"],
           ["-O", "qcow2", "-o", "compat=0.10,refcount_bits=8", "--size", "1G"],
           ["-O", "qcow2", "-o", "preallocation=foo", "--size", "1G"],
           ["-O", "qcow2", "-o", "cluster_size=1k,extended_l2=on", "--size", "1G"],
           ["-O", "qcow2", "-o", "cluster_size=512", "--size", "1P"],
           ["-O", "qcow2", "-o", "help", "--size", "1G"], ["nonexistent.qcow2"]]
    for b in bad:
        case(d, b)
    # every other -O format qemu-img 7.2 knows: creation or measurement unsupported,
    # luks without its key; with --size and with a source image
    others = ["blkdebug", "blklogwrites", "blkverify", "bochs", "cloop", "compress",
              "copy-before-write", "copy-on-read", "dmg", "file", "ftp", "gluster",
              "host_cdrom", "host_device", "http", "iscsi", "luks", "nbd", "nfs",
              "null-aio", "null-co", "nvme", "parallels", "preallocate", "qcow", "qed",
              "quorum", "rbd", "replication", "snapshot-access", "ssh", "throttle", "vdi",
              "vhdx", "vmdk", "vpc", "vvfat", "bogus"]
    for f in others:
        case(d, ["-O", f, "--size", "1M"])
    for f in ["vmdk", "null-co", "luks", "bogus"]:
        case(d, ["-O", f, "-f", "raw", "r.raw"])


def main():
    return D.in_tmpdir("tblk-measure-", cases)


if __name__ == "__main__":
    sys.exit(main())
