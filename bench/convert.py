#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""convert.py - `tblk-img convert` against `qemu-img convert`, side by side.

Builds a raw source image with mixed content (random data, zero-filled data and holes),
then, round by round and alternating which program goes first, converts it to qcow2 with
both programs, plain and compressed (-c), timing each run (wall clock) and its CPU
(getrusage of the child). Prints medians and per-round ratios tblk/qemu. The outputs of both
programs are compared with `qemu-img compare` once per mode, so a fast wrong answer shows.

    bench/convert.py [--size 4G] [--repeat 3] [--dir DIR] [--tblk-img PATH]
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

MiB = 1 << 20


def parse_size(s):
    mult = {"K": 1 << 10, "M": MiB, "G": 1 << 30}
    return int(s[:-1]) * mult[s[-1].upper()] if s[-1].upper() in mult else int(s)


def make_source(path, size):
    """Per 64 MiB: 24 MiB random data, 8 MiB written zeroes, 32 MiB hole."""
    if os.path.exists(path) and os.path.getsize(path) == size:
        return
    sys.stderr.write("writing %s (%d MiB)...\n" % (path, size // MiB))
    chunk = os.urandom(MiB)
    with open(path, "wb") as f:
        f.truncate(size)
        for base in range(0, size, 64 * MiB):
            f.seek(base)
            for i in range(24):
                f.write(chunk[i:] + chunk[:i])
            f.write(bytes(8 * MiB))
        f.flush()
        os.fsync(f.fileno())


def run(argv):
    t0 = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.monotonic() - t0
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="4G")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=os.environ.get("TMPDIR", "/tmp"))
    ap.add_argument("--tblk-img", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the source image")
    a = ap.parse_args()
    build = os.environ.get("TBLK_BUILD", "build")
    tblk = a.tblk_img or os.path.join(build, "tools", "tblk-img")
    progs = [("tblk-img", tblk), ("qemu-img", "qemu-img")]
    size = parse_size(a.size)
    src = os.path.join(a.dir, "tblk-convert-src.raw")
    make_source(src, size)
    modes = [("plain", []), ("compressed", ["-c"])]
    res = {}
    for mode, extra in modes:
        for r in range(a.repeat):
            order = progs if r % 2 == 0 else progs[::-1]
            for label, path in order:
                out = os.path.join(a.dir, "tblk-convert-%s.qcow2" % label)
                wall, cpu = run([path, "convert", "-f", "raw", "-O", "qcow2"] + extra +
                                [src, out])
                res.setdefault((mode, label), []).append((wall, cpu))
                sys.stderr.write("%s round %d %s: %.2f s, CPU %.2f s\n"
                                 % (mode, r + 1, label, wall, cpu))
        same = subprocess.run(["qemu-img", "compare", "-q",
                               os.path.join(a.dir, "tblk-convert-tblk-img.qcow2"),
                               os.path.join(a.dir, "tblk-convert-qemu-img.qcow2")])
        res[(mode, "same")] = same.returncode == 0
    print("source: %s raw, per 64 MiB 24 MiB data, 8 MiB zeroes, 32 MiB hole; %d rounds"
          % (a.size, a.repeat))
    print("| mode | tblk-img s (CPU s) | qemu-img s (CPU s) | throughput ratio | CPU ratio "
          "| outputs equal |")
    print("| --- | --- | --- | --- | --- | --- |")
    for mode, _ in modes:
        t = res[(mode, "tblk-img")]
        q = res[(mode, "qemu-img")]
        tw = statistics.median(x[0] for x in t)
        qw = statistics.median(x[0] for x in q)
        tc = statistics.median(x[1] for x in t)
        qc = statistics.median(x[1] for x in q)
        ratios = sorted(q[i][0] / t[i][0] for i in range(len(t)))
        print("| %s | %.2f (%.2f) | %.2f (%.2f) | %.2fx [%.2fx..%.2fx] | %.2fx | %s |"
              % (mode, tw, tc, qw, qc, statistics.median(ratios), ratios[0], ratios[-1],
                 tc / qc, "yes" if res[(mode, "same")] else "NO"))
    for label, _ in progs:
        try:
            os.unlink(os.path.join(a.dir, "tblk-convert-%s.qcow2" % label))
        except OSError:
            pass
    if not a.keep:
        os.unlink(src)


if __name__ == "__main__":
    sys.exit(main())
