#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# Copy-on-read against Debian's qemu 7.2: a qcow2 over a raw backing file (qemu-img create
# -b) is read through `tblk-io -C` (copy-on-read=on) and through the copy-on-read filter
# (--image-opts driver=copy-on-read), and a copy of the same image through qemu-io the same
# way. Then `qemu-img map --output=json` of both images is identical (the clusters read are
# allocated in the top image, zero clusters for zero data), the data equals the backing
# file's, `qemu-img check` is clean. Writes racing copy-on-read reads of the same cluster
# (aio in one session) are never overwritten by the copied old data.
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib_qcow2diff as D  # noqa: E402
from lib_qcow2diff import TIO, ok  # noqa: E402


def run(argv, cwd):
    return D.run(argv, cwd, timeout=120)


def filt(out):
    return "".join(l for l in out.splitlines(True) if " ops; " not in l)


def cmds(lst):
    out = []
    for c in lst:
        out += ["-c", c]
    return out


READS = ["read -P 0xab 4k 8k", "read -P 0 1M 4k", "read -P 0xcd 2M 64k", "read 3M 100k",
         "read -P 0xab 896k 128k", "read 4000k 96k"]


def make_images(d):
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", "base.raw", "4M"], cwd=d,
                   check=True)
    subprocess.run(["qemu-io", "-f", "raw", "-c", "write -P 0xab 0 1M",
                    "-c", "write -P 0xcd 2M 64k", "-c", "write -P 0xef 4032k 64k",
                    "base.raw"], cwd=d, check=True, capture_output=True)
    for name in ("tblk.qcow2", "qemu.qcow2"):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F",
                        "raw", name], cwd=d, check=True)


def image_map(d, name):
    return run(["qemu-img", "map", "--output=json", name], d)[1]


def compare_case(d, label, tblk_argv, qemu_argv):
    r1 = run([TIO] + tblk_argv, d)
    r2 = run(["qemu-io"] + qemu_argv, d)
    ok(r1[0] == 0 and r1[0] == r2[0], f"{label}: exit status as qemu-io ({r1[0]})", r1[2])
    ok(filt(r1[1]) == filt(r2[1]).replace("qemu.qcow2", "tblk.qcow2"),
       f"{label}: output as qemu-io's (pattern checks pass)",
       "tblk:\n" + r1[1] + r1[2] + "\nqemu:\n" + r2[1] + r2[2])
    m1, m2 = image_map(d, "tblk.qcow2"), image_map(d, "qemu.qcow2")
    ok(m1 == m2 and m1, f"{label}: qemu-img map equals qemu-io's", "tblk:\n" + m1 +
       "qemu:\n" + m2)
    ok('"start": 0, "length": 65536, "depth": 0' in m1,
       f"{label}: the first cluster read is now in the top image")
    rc, out, err = run(["qemu-img", "compare", "tblk.qcow2", "base.raw"], d)
    ok(rc == 0, f"{label}: data identical to the backing file", out + err)
    rc, out, err = run(["qemu-img", "check", "tblk.qcow2"], d)
    ok(rc == 0 and "No errors were found" in out, f"{label}: qemu-img check clean", out + err)


def main():
    tmp = tempfile.mkdtemp(prefix="tblk-cor.")
    try:
        d = os.path.join(tmp, "a")
        os.mkdir(d)
        make_images(d)
        compare_case(d, "-C", ["-C"] + cmds(READS) + ["tblk.qcow2"],
                     ["-C"] + cmds(READS) + ["qemu.qcow2"])

        d = os.path.join(tmp, "b")
        os.mkdir(d)
        make_images(d)
        opts = "driver=copy-on-read,file.driver=qcow2,file.file.filename=%s"
        compare_case(d, "filter", ["--image-opts"] + cmds(READS) + [opts % "tblk.qcow2"],
                     ["--image-opts"] + cmds(READS) + [opts % "qemu.qcow2"])

        # Without -C, nothing is copied.
        d = os.path.join(tmp, "c")
        os.mkdir(d)
        make_images(d)
        run([TIO] + cmds(READS) + ["tblk.qcow2"], d)
        m = image_map(d, "tblk.qcow2")
        ok('"depth": 0' not in m, "plain reads allocate nothing", m)

        # Without a backing file, unallocated clusters still become zero clusters, as in qemu.
        for name in ("nb-tblk.qcow2", "nb-qemu.qcow2"):
            run(["qemu-img", "create", "-q", "-f", "qcow2", name, "1M"], d)
        run([TIO, "-C", "-c", "read 0 4k", "-c", "read 200k 8k", "nb-tblk.qcow2"], d)
        run(["qemu-io", "-C", "-c", "read 0 4k", "-c", "read 200k 8k", "nb-qemu.qcow2"], d)
        m1, m2 = image_map(d, "nb-tblk.qcow2"), image_map(d, "nb-qemu.qcow2")
        ok(m1 == m2 and m1, "no backing file: the same map as qemu-io -C", m1 + m2)

        # Read-only: refused with qemu's message.
        rc, out, err = run([TIO, "-r", "-C", "-c", "read 0 4k", "tblk.qcow2"], d)
        rc2, out2, err2 = run(["qemu-io", "-r", "-C", "-c", "read 0 4k", "qemu.qcow2"], d)
        ok(rc == rc2 == 1 and err.replace("tblk-io", "qemu-io").replace("tblk.", "qemu.") ==
           err2, "read-only copy-on-read refused as qemu-io does", err + err2)

        # Races: writes overlapping copy-on-read reads in flight at once, both orders.
        race = ["aio_write -P 0x22 0 64k", "aio_read 0 64k", "aio_read 64k 64k",
                "aio_write -P 0x33 80k 4k", "aio_flush",
                "read -P 0x22 0 64k", "read -P 0xab 64k 16k", "read -P 0x33 80k 4k",
                "read -P 0xab 84k 44k"]
        for rnd in range(20):
            run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw",
                 "race.qcow2"], d)
            rc, out, err = run([TIO, "-C"] + cmds(race) + ["race.qcow2"], d)
            bad = "Pattern verification failed" in out or rc != 0
            if bad:
                break
        ok(not bad, "20 rounds of writes racing copy-on-read reads keep the written data",
           out + err)
        rc, out, err = run(["qemu-img", "check", "race.qcow2"], d)
        ok(rc == 0, "the raced image checks clean", out + err)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    D.plan()
    return 1 if D.failed else 0


if __name__ == "__main__":
    sys.exit(main())
