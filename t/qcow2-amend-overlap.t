#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""qcow2-amend-overlap.t - amend's zero-cluster expansion against the overlap check.

`amend -o compat=0.10` turns zero clusters into data clusters and writes zeroes into each
("expand_entry" in formats/qcow2-amend.c). A zero cluster that keeps an allocation (ZERO_ALLOC)
names its host cluster in the L2 entry, which a corrupt or hostile image can point at the
active L1 table. qemu-img 7.2 runs its overlap check before that zero write, refuses it, marks
the image corrupt and exits 1 with the L1 table intact; tblk-img must do the same rather than
zero the L1 table (which loses every guest cluster).
"""
import os
import shutil
import struct
import subprocess
import sys
import tempfile

BUILD = os.environ.get("TBLK_BUILD")
if not BUILD:
    sys.exit("set TBLK_BUILD to the build directory")
TIMG = os.path.join(BUILD, "tools", "tblk-img")
if not shutil.which("qemu-img") or not shutil.which("qemu-io"):
    print("1..0 # SKIP qemu-img/qemu-io not installed")
    sys.exit(0)

n = 0


def ok(cond, what, todo=""):
    global n
    n += 1
    print("%sok %d - %s%s" % ("" if cond else "not ", n, what, todo))
    return cond


def u64(path, off):
    with open(path, "rb") as f:
        f.seek(off)
        return struct.unpack(">Q", f.read(8))[0]


def set_u64(path, off, v):
    with open(path, "r+b") as f:
        f.seek(off)
        f.write(struct.pack(">Q", v))


def run(argv, cwd):
    p = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=60)
    return p.returncode, p.stderr.decode(errors="replace")


def main():
    print("1..6")
    with tempfile.TemporaryDirectory() as tmp:
        img = os.path.join(tmp, "a.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=1.1", img,
                        "1M"], check=True)
        subprocess.run(["qemu-io", "-c", "write -P 0x55 0 64k", img], check=True,
                       stdout=subprocess.DEVNULL)
        l1_off = u64(img, 40)
        l1_0 = u64(img, l1_off)
        l2_off = l1_0 & 0x00fffffffffffe00
        # Guest cluster 0: a zero cluster whose allocation is the active L1 table.
        set_u64(img, l2_off, (1 << 63) | l1_off | 1)
        res = {}
        for tool, prog in (("q", "qemu-img"), ("t", TIMG)):
            path = os.path.join(tmp, tool + ".qcow2")
            shutil.copyfile(img, path)
            rc, err = run([prog, "amend", "-f", "qcow2", "-o", "compat=0.10", path], tmp)
            res[tool] = (rc, err, u64(path, l1_off), u64(path, 72))
        q, t = res["q"], res["t"]
        ok(q[0] == 1 and q[2] == l1_0, "qemu-img refuses the write, its L1 table intact")
        ok(q[3] & 2, "qemu-img sets the corrupt bit")
        ok(t[0] == q[0], "tblk-img exits as qemu-img (%d, qemu %d)" % (t[0], q[0]))
        ok(t[2] == l1_0, "tblk-img leaves the L1 table intact (L1[0] %#x, was %#x)"
           % (t[2], l1_0))
        ok(t[3] & 2, "tblk-img sets the corrupt bit")
        ok("overlaps with active L1 table" in t[1], "tblk-img says why")


main()
