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
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib_qcow2diff as D  # noqa: E402
from lib_qcow2diff import COPIED, Img, ok, run, sh  # noqa: E402

D.need("qemu-img", "qemu-io")


def main():
    print("1..6")
    with tempfile.TemporaryDirectory() as tmp:
        img = os.path.join(tmp, "a.qcow2")
        sh("qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=1.1", img, "1M")
        sh("qemu-io", "-c", "write -P 0x55 0 64k", img)
        m = Img(img)
        l1_0 = m.l1(0)
        # Guest cluster 0: a zero cluster whose allocation is the active L1 table.
        m.set_l2(0, 0, COPIED | m.l1_off | 1)
        res = {}
        for tool, prog in (("q", "qemu-img"), ("t", D.TIMG)):
            path = os.path.join(tmp, tool + ".qcow2")
            shutil.copyfile(img, path)
            rc, _, err = run([prog, "amend", "-f", "qcow2", "-o", "compat=0.10", path], tmp)
            res[tool] = (rc, err, Img(path).u64(m.l1_off), Img(path).u64(72))
        q, t = res["q"], res["t"]
        ok(q[0] == 1 and q[2] == l1_0, "qemu-img refuses the write, its L1 table intact")
        ok(q[3] & 2, "qemu-img sets the corrupt bit")
        ok(t[0] == q[0], "tblk-img exits as qemu-img (%d, qemu %d)" % (t[0], q[0]))
        ok(t[2] == l1_0, "tblk-img leaves the L1 table intact (L1[0] %#x, was %#x)"
           % (t[2], l1_0))
        ok(t[3] & 2, "tblk-img sets the corrupt bit")
        ok("overlaps with active L1 table" in t[1], "tblk-img says why")


main()
