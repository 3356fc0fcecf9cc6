#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# tblk-img convert into qcow2, compressed (-c) and not, writes the same file as Debian's
# qemu-img 7.2, byte for byte (cmp), every time: without -W the target's clusters are placed
# in the order of the source although tblk compresses them side by side. Sources: a raw file
# and a qcow2 image, 24 MiB of compressible data, incompressible data (clusters stored
# uncompressed), written zeroes and holes at offsets not aligned to clusters, so the copy is
# much larger than the -m window; target cluster sizes 64k, 4k, 512k and 2M, -m 1 and 16,
# zstd, -S 0; the compressed cases run three times each. With -W the writes may go in any
# order: only the guest data must be the same (qemu-img compare).
import os
import random
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib_qcow2diff as D  # noqa: E402

TIMG = os.path.abspath(D.TIMG)
MiB = 1 << 20


def sh(d, *argv):
    return subprocess.run(list(argv), cwd=d, capture_output=True, text=True, timeout=120)


def make_source(path):
    r = random.Random(7)
    with open(path, "wb") as f:
        f.truncate(24 * MiB)
        for i in range(0, 24 * MiB, 64 * 1024):
            k = r.random()
            f.seek(i + r.choice([0, 512, 4096]))
            if k < 0.3:
                f.write(bytes(r.randrange(4) for _ in range(40000)))
            elif k < 0.45:
                f.write(r.randbytes(130 * 1024))
            elif k < 0.55:
                f.write(b"\0" * 65536)


def cases(d):
    make_source(os.path.join(d, "src.raw"))
    sh(d, "qemu-img", "convert", "-O", "qcow2", "src.raw", "src.qcow2")
    cases = [["-c"], ["-c", "-o", "cluster_size=4k"], ["-c", "-o", "cluster_size=512k"],
             ["-c", "-o", "cluster_size=2M"], ["-c", "-m", "1"], ["-c", "-m", "16"],
             ["-c", "-o", "compression_type=zstd"], ["-c", "-S", "0"], [],
             ["-o", "cluster_size=4k"], ["-S", "0"]]
    for src in ("src.raw", "src.qcow2"):
        for args in cases:
            name = "convert %s -O qcow2 %s" % (" ".join(args), src)
            q = sh(d, "qemu-img", "convert", *args, "-O", "qcow2", src, "q.qcow2")
            for i in range(3 if "-c" in args else 1):
                t = sh(d, TIMG, "convert", *args, "-O", "qcow2", src, "t.qcow2")
                why = D.file_difference(os.path.join(d, "q.qcow2"), os.path.join(d, "t.qcow2"))
                D.ok(q.returncode == 0 and t.returncode == 0 and not why,
                     "%s: the same file as qemu-img's (run %d)" % (name, i + 1),
                     q.stderr + t.stderr + why)
        # -W: any order, the same guest data
        t = sh(d, TIMG, "convert", "-c", "-W", "-O", "qcow2", src, "t.qcow2")
        c = sh(d, "qemu-img", "compare", "-q", src, "t.qcow2")
        D.ok(t.returncode == 0 and c.returncode == 0,
             "convert -c -W -O qcow2 %s: the guest data of the source" % src,
             t.stderr + c.stdout + c.stderr)
    # the source has compressed and uncompressed clusters: both paths were taken
    m = sh(d, "qemu-img", "check", "--output=json", "t.qcow2")
    D.ok('"compressed-clusters"' in m.stdout, "the target has compressed clusters", m.stdout)


def main():
    D.need("qemu-img")
    return D.in_tmpdir("tblk-convert-c-", cases)


if __name__ == "__main__":
    sys.exit(main())
