#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""qcow2 allocating writes: tblk-img bench against qemu-img bench, interleaved.

For each case and round, each program (in an order that rotates from round to round) writes
into a freshly created 4 GiB qcow2 (`qemu-img create -f qcow2 IMG 4G` before every run, 64 KiB
clusters), every request in a new cluster, depth 32, O_DIRECT, Linux AIO:

    bench -w -f qcow2 -t none -i native -d 32 -c 20000 -s 65536 -S 65536 IMG   (64k)
    bench -w -f qcow2 -t none -i native -d 32 -c 50000 -s 4096 -S 65536 IMG    (4k)

and reports per program the median [min..max] IOPS (count / "Run completed in T seconds.")
and CPU per I/O (user + system time of the child from wait4(), over the count), and the
median [min..max] of the per-round paired ratios tblk/qemu. Target: IOPS ratio >= 1.2x.
With --qemu-prealloc, qemu-img also runs with its `preallocate` filter between qcow2 and the
file (not qemu's default; it grows the file ahead of writes as tblk's file driver does):
`--image-opts driver=qcow2,file.driver=preallocate,file.file.driver=file,file.file.filename=IMG`.

Usage: bench/qcow2-alloc.py [--rounds N] [--cases 64k,4k] [--dir DIR] [--tblk-img PATH]
                            [--qemu-img PATH] [--count-scale F] [--qemu-prealloc] [-v]
tblk-img is found as --tblk-img, $TBLK_IMG, $TBLK_BUILD/tools/tblk-img, or in PATH.
Standard library only.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CASES = {
    "64k": dict(bs=65536, count=20000),
    "4k": dict(bs=4096, count=50000),
}


def find_tblk(explicit):
    for p in (explicit, os.environ.get("TBLK_IMG"),
              os.path.join(os.environ.get("TBLK_BUILD", ""), "tools", "tblk-img")
              if os.environ.get("TBLK_BUILD") else None,
              shutil.which("tblk-img")):
        if p and os.access(p, os.X_OK):
            return p
    sys.exit("tblk-img not found: give --tblk-img, $TBLK_IMG or $TBLK_BUILD")


def run_bench(prog, qemu, img, case, count, verbose, prealloc=False):
    """One run on a fresh image: (seconds, cpu seconds)."""
    if os.path.exists(img):
        os.unlink(img)
    subprocess.check_call([qemu, "create", "-q", "-f", "qcow2", img, "4G"])
    argv = [prog, "bench", "-w", "-t", "none", "-i", "native", "-d", "32",
            "-c", str(count), "-s", str(case["bs"]), "-S", "65536"]
    if prealloc:
        argv += ["--image-opts", "driver=qcow2,file.driver=preallocate,file.file.driver=file,"
                 "file.file.filename=" + img]
    else:
        argv += ["-f", "qcow2", img]
    if verbose:
        sys.stderr.write("+ %s\n" % " ".join(argv))
    out = tempfile.TemporaryFile()
    pid = os.posix_spawn(argv[0], argv, os.environ,
                         file_actions=[(os.POSIX_SPAWN_DUP2, out.fileno(), 1)])
    _, status, ru = os.wait4(pid, 0)
    out.seek(0)
    text = out.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit("%s failed (%s):\n%s" % (" ".join(argv), status, text))
    m = re.search(r"Run completed in ([0-9.]+) seconds", text)
    if not m:
        sys.exit("no timing in the output of %s:\n%s" % (" ".join(argv), text))
    return float(m.group(1)), ru.ru_utime + ru.ru_stime


def rng(xs, fmt):
    return "%s [%s..%s]" % (fmt % statistics.median(xs), fmt % min(xs), fmt % max(xs))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cases", default="64k,4k")
    ap.add_argument("--dir", default=None, help="where the images go (default: a temporary "
                    "directory under $TMPDIR; must support O_DIRECT)")
    ap.add_argument("--tblk-img")
    ap.add_argument("--qemu-img", default=shutil.which("qemu-img"))
    ap.add_argument("--count-scale", type=float, default=1.0)
    ap.add_argument("--qemu-prealloc", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    tblk = find_tblk(a.tblk_img)
    if not a.qemu_img:
        sys.exit("qemu-img not found")
    progs = [("tblk-img", tblk), ("qemu-img", a.qemu_img)]
    if a.qemu_prealloc:
        progs.append(("qemu-img+preallocate", a.qemu_img))
    tmp = tempfile.mkdtemp(prefix="qcow2-alloc.", dir=a.dir)
    img = os.path.join(tmp, "w.qcow2")
    print("load average at start: %.2f %.2f %.2f" % os.getloadavg())
    t0 = time.time()
    try:
        for name in a.cases.split(","):
            case = CASES[name]
            count = max(1, int(case["count"] * a.count_scale))
            res = {p: [] for p, _ in progs}
            for r in range(a.rounds):
                order = progs[r % len(progs):] + progs[:r % len(progs)]
                for label, prog in order:
                    secs, cpu = run_bench(prog, a.qemu_img, img, case, count, a.verbose,
                                          label.endswith("preallocate"))
                    res[label].append((count / secs, cpu * 1e6 / count))
                    if a.verbose:
                        sys.stderr.write("  %s %s round %d: %.0f IOPS, %.1f us CPU/IO\n" %
                                         (name, label, r, count / secs, cpu * 1e6 / count))
            print("\n%s writes, %d per run, %d rounds (bench -w -f qcow2 -t none -i native "
                  "-d 32 -c %d -s %d -S 65536):" % (name, count, a.rounds, count, case["bs"]))
            for label, _ in progs:
                iops = [x[0] for x in res[label]]
                cpu = [x[1] for x in res[label]]
                print("  %-20s IOPS %s  CPU us/IO %s" %
                      (label, rng(iops, "%.0f"), rng(cpu, "%.1f")))
            ri = [t[0] / q[0] for t, q in zip(res["tblk-img"], res["qemu-img"])]
            rc = [t[1] / q[1] for t, q in zip(res["tblk-img"], res["qemu-img"])]
            med = statistics.median(ri)
            print("  ratio tblk/qemu: IOPS %s (%s, target >= 1.20x)  CPU/IO %s" %
                  (rng(ri, "%.2fx"), "PASS" if med >= 1.2 else "FAIL", rng(rc, "%.2fx")))
            if a.qemu_prealloc:
                q = res["qemu-img+preallocate"]
                ri = [t[0] / p[0] for t, p in zip(res["tblk-img"], q)]
                rc = [t[1] / p[1] for t, p in zip(res["tblk-img"], q)]
                print("  ratio tblk/qemu+preallocate: IOPS %s  CPU/IO %s" %
                      (rng(ri, "%.2fx"), rng(rc, "%.2fx")))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("\nload average at end: %.2f %.2f %.2f; %.0f s" % (os.getloadavg() +
                                                           (time.time() - t0,)))


if __name__ == "__main__":
    main()
