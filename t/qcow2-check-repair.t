#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""qcow2-check-repair.t - check and repair of damaged qcow2 images against Debian's qemu-img.

Each case makes an image with qemu-img/qemu-io, damages it with a few byte writes (leaked
data clusters and tables, refcounts too high and too low, an L2 table or data cluster
referenced twice, misaligned entries, entries past the end of the file, a broken refcount
table, bitmap directory and tables past the end of the file, a dirty lazy-refcount image),
then runs `check`, `check -r leaks` and `check -r all`, human and JSON, through qemu-img and
tblk-img on two copies of the damaged file. stdout, stderr (program name normalised), the
exit status and the file bytes afterwards (cmp) must be equal; a check without -r must leave
the file untouched.
"""
import os
import shutil
import struct
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib_qcow2diff as D  # noqa: E402
from lib_qcow2diff import COPIED, OFF_MASK, sh  # noqa: E402

D.need("qemu-img", "qemu-io")


def make(path, size="2G", opts=(), cmds=()):
    sh("qemu-img", "create", "-q", "-f", "qcow2", *opts, path, size)
    if cmds:
        args = []
        for c in cmds:
            args += ["-c", c]
        sh("qemu-io", *args, path)


# Damage functions: each takes an Img and breaks it.
def leak_data(m):
    for j in range(3, 8):
        m.set_l2(0, j, 0)


def leak_l2(m):
    m.set_l1(1, 0)


def leak_compressed(m):
    m.set_l2(0, 1, 0)


def rc_high(m):
    d = m.l2(0, 2) & OFF_MASK
    m.set_refcount(d >> m.cluster_bits, 3)


def rc_low_snapshot(m):
    # with a snapshot the data clusters have refcount 2: one of them drops to 1
    d = m.l2(0, 2) & OFF_MASK
    m.set_refcount(d >> m.cluster_bits, 1)


def rc_zero(m):
    d = m.l2(0, 2) & OFF_MASK
    m.set_refcount(d >> m.cluster_bits, 0)


def copied_missing(m):
    m.set_l2(0, 0, m.l2(0, 0) & ~COPIED)


def copied_extra_l1(m):
    m.set_l1(0, m.l1(0) & ~COPIED)


def l2_twice(m):
    m.set_l1(1, m.l1(0))


def data_twice(m):
    m.set_l2(0, 5, m.l2(0, 4))


def l2_misaligned(m):
    m.set_l2(0, 3, m.l2(0, 3) + 512)


def l1_misaligned(m):
    m.set_l1(1, m.l1(1) + 512)


def l2_past_eof(m):
    m.set_l2(0, 3, COPIED | (1 << 40))


def l1_past_eof(m):
    m.set_l1(1, COPIED | (1 << 40))


def reftable_misaligned(m):
    m.set_u64(m.rt_off, m.u64(m.rt_off) + 512)


def reftable_past_eof(m):
    # not too far: the repair grows the file there, and cmp reads all of it
    m.set_u64(m.rt_off + 8, 64 << 20)


def prealloc_misaligned(m):
    # a preallocated zero cluster (v3: zero flag and an offset) whose offset is misaligned
    m.set_l2(0, 3, (m.l2(0, 3) + 512) | 1)


def extl2_zero_misaligned(m):
    # extended L2: an entry with an offset, no subcluster allocated, all zero, misaligned
    e = m.l2(0, 3)
    m.set_l2(0, 3, e + 512)
    m.set_u64((m.l1(0) & OFF_MASK) + 16 * 3 + 8, 0xffffffff00000000)


def l1_reserved(m):
    m.set_l1(0, m.l1(0) | (1 << 56))


def l2_reserved(m):
    m.set_l2(0, 3, m.l2(0, 3) | 2)


def compressed_copied(m):
    m.set_l2(0, 0, m.l2(0, 0) | COPIED)


def reftable_reserved(m):
    m.set_u64(m.rt_off, m.u64(m.rt_off) | 1)


def bitmap_dir(m):
    """The bitmaps extension's directory offset, as the header extension stores it."""
    off = 104 if m.version < 3 else struct.unpack(">I", m.read(100, 4))[0]
    while True:
        magic, length = struct.unpack(">II", m.read(off, 8))
        if magic == 0:
            raise RuntimeError("no bitmaps extension")
        if magic == 0x23852875:
            return off + 8
        off += 8 + ((length + 7) & ~7)


def bitmap_dir_past_eof(m):
    ext = bitmap_dir(m)
    m.set_u64(ext + 16, 1 << 40)


def bitmap_table_past_eof(m):
    ext = bitmap_dir(m)
    d = m.u64(ext + 16)
    m.set_u64(d, 1 << 40)


def l2_over_l1(m):
    # an L2 table in the active L1 table, whose entry 0 keeps a COPIED flag that the shared
    # table no longer merits: its repair would write the L1 table where an L2 table lies
    m.set_l1(1, COPIED | m.l1_off)


def l2_over_snapshot_l1(m):
    # an L2 table in a snapshot's L1 table whose entry 0 has COPIED: repairing that entry
    # would write the L2 table over the snapshot's L1 table
    sl1 = m.sn_l1_off()
    m.set_u64(sl1, m.u64(sl1) | COPIED)
    m.set_l1(1, sl1)


def prealloc_over_snapshot_l1(m):
    # the same, with a misaligned preallocated zero cluster in that entry instead
    sl1 = m.sn_l1_off()
    m.set_u64(sl1 + 8, (m.l2(0, 4) & OFF_MASK) + 512 | 1)
    m.set_l1(1, sl1)


# 64 KiB clusters: an L2 table covers 512 MiB, so the image has L1 entries 0 and 1 in use.
W = ["write -P 1 0 64k", "write -P 2 64k 448k", "write -P 3 8M 256k", "write -P 4 600M 64k"]
CASES = [
    ("leaked data clusters", {"cmds": W}, leak_data),
    ("leaked L2 table", {"cmds": W}, leak_l2),
    ("leaked compressed cluster", {"cmds": ["write -c -P 1 0 64k", "write -c -P 2 64k 64k"]},
     leak_compressed),
    ("refcount too high", {"cmds": W}, rc_high),
    ("refcount too low (snapshot)", {"cmds": W, "snap": True}, rc_low_snapshot),
    ("refcount zero in use", {"cmds": W}, rc_zero),
    ("COPIED flag missing on data", {"cmds": W}, copied_missing),
    ("COPIED flag missing on L2", {"cmds": W}, copied_extra_l1),
    ("L2 table referenced twice", {"cmds": W}, l2_twice),
    ("data cluster referenced twice", {"cmds": W}, data_twice),
    ("L2 entry misaligned", {"cmds": W}, l2_misaligned),
    ("L1 entry misaligned", {"cmds": W}, l1_misaligned),
    ("L2 entry past the end", {"cmds": W}, l2_past_eof),
    ("L1 entry past the end", {"cmds": W}, l1_past_eof),
    ("refcount block misaligned", {"cmds": W}, reftable_misaligned),
    ("refcount block past the end", {"cmds": W}, reftable_past_eof),
    ("preallocated zero cluster misaligned", {"cmds": W}, prealloc_misaligned),
    ("extended L2 zero cluster misaligned", {"cmds": W, "opts": ["-o", "extended_l2=on"]},
     extl2_zero_misaligned),
    ("L1 entry with reserved bits", {"cmds": W}, l1_reserved),
    ("L2 entry with reserved bits", {"cmds": W}, l2_reserved),
    ("compressed cluster with COPIED", {"cmds": ["write -c -P 1 0 64k"]}, compressed_copied),
    ("refcount table entry with reserved bits", {"cmds": W}, reftable_reserved),
    ("refcount overflow (refcount_bits=1)", {"cmds": W, "opts": ["-o", "refcount_bits=1"]},
     data_twice),
    ("leaks with 512-byte clusters", {"cmds": W, "opts": ["-o", "cluster_size=512"]},
     leak_data),
    ("v2 image: leaks", {"cmds": W, "opts": ["-o", "compat=0.10"]}, leak_data),
    ("v2 image: COPIED flag missing", {"cmds": W, "opts": ["-o", "compat=0.10"]},
     copied_missing),
    ("L2 table over the active L1 table", {"cmds": W}, l2_over_l1),
    ("L2 table over a snapshot's L1 table", {"cmds": W, "snap": True}, l2_over_snapshot_l1),
    ("misaligned zero cluster in an L2 table over a snapshot's L1 table",
     {"cmds": W, "snap": True}, prealloc_over_snapshot_l1),
    ("bitmap directory past the end", {"cmds": W, "bitmap": True}, bitmap_dir_past_eof),
    ("bitmap table past the end", {"cmds": W, "bitmap": True}, bitmap_table_past_eof),
]
MODES = [[], ["-r", "leaks"], ["-r", "all"]]
# Differences by design, reported as TODO: (case, repairing) -> reason.
KNOWN = {
    ("bitmap table past the end", True):
        "storing the bitmaps when the repaired image closes frees the old bitmap table, which "
        "lies past the end of the file where no refcount block covers it: qemu 7.2 allocates "
        "a refcount block for it (in the cluster the repair just freed), hooks it into the "
        "table, then fails with 'qcow2_free_clusters failed: Resource temporarily "
        "unavailable'; tblk never allocates refcount blocks to free a cluster that has none "
        "(a hostile offset would grow the file by gigabytes), so that block and message are "
        "missing. The check and repair output themselves are equal",
}


def main():
    where = os.environ.get("TMPDIR") or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    tmp = tempfile.mkdtemp(prefix="tblk-check-", dir=where)
    only = os.environ.get("TBLK_CASE")
    try:
        for name, setup, damage in CASES:
            if only and only not in name:
                continue
            orig = os.path.join(tmp, "orig.qcow2")
            make(orig, cmds=setup.get("cmds", ()), opts=setup.get("opts", ()))
            if setup.get("snap"):
                sh("qemu-img", "snapshot", "-c", "s1", orig)
            if setup.get("bitmap"):
                sh("qemu-img", "bitmap", "--add", orig, "b0")
                sh("qemu-io", "-c", "write -P 5 1M 64k", orig)
            damage(D.Img(orig))
            for mode in MODES:
                for out in ("human", "json"):
                    what = "%s: check %s--output=%s" % (name, " ".join(mode) + " " if mode
                                                        else "", out)
                    D.differ(what, tmp, orig, img_args=["check"] + mode + ["--output=" + out],
                             todo=KNOWN.get((name, bool(mode)), ""))
                    if not mode:
                        why = D.file_difference(orig, os.path.join(tmp, "t.qcow2"))
                        D.ok(not why, "%s: check without -r leaves the file untouched" % what,
                             why)
        D.plan()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


main()
