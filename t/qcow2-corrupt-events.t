#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""qcow2-corrupt-events.t - corruptions met on the data path, against Debian's qemu-io 7.2.

Each case damages one entry of a qcow2 image made by qemu-img/qemu-io (an unaligned L2 table
offset in the L1 table; an unaligned data or preallocated zero cluster in an L2 entry, in
place or not, first in the request or further on; extended L2 bitmaps with both bits set or
allocated without a host cluster; compressed entries past the end of the file, too long, or
in an image with an external data file; an unaligned refcount block; a freed cluster whose
refcount is already 0; harmless damage qemu ignores: reserved bits, an L2 table past the end
of the file), then runs read, write, write -z (partial and whole), discard and map on two
copies, through qemu-io and tblk-io, writable and read-only (the file mode 0444: nothing may
write it). Compared: stdout (timings cut), stderr (qemu's "Marking image as corrupt" /
"Image is corrupt" / "qcow2_free_clusters failed" lines), exit status, and the file bytes
afterwards (the corrupt bit, what was or was not written, freed and discarded).
"""
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib_qcow2diff as D  # noqa: E402
from lib_qcow2diff import COMPRESSED, COPIED, OFF_MASK, Img, ok, sh  # noqa: E402

D.need("qemu-img", "qemu-io")


def differ(name, tmp, img, cmds, ro=False, expect_err=None):
    """@cmds through qemu-io and tblk-io on two copies of @img; with @ro the copies are
    opened read-only and made unwritable. @expect_err: what qemu's stderr must contain
    (the damage is the intended one)."""
    label = "%s%s: %s" % (name, " (read-only)" if ro else "", "; ".join(cmds))
    q = D.differ(label, tmp, img, cmds, ro=ro)
    if expect_err is not None:
        ok(expect_err in q[2], "%s: qemu-io says %r" % (label, expect_err), q[2])


def make(tmp, name, opts=None, cmds=("write -P 1 0 128k",)):
    path = os.path.join(tmp, name)
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if opts:
        argv += ["-o", opts]
    sh(*argv, path, "1M", cwd=tmp)
    for c in cmds:
        sh("qemu-io", "-c", c, "-f", "qcow2", path, cwd=tmp)
    return path


MARK = "qcow2: Marking image as corrupt: "
SEEN = "qcow2: Image is corrupt: "


def cases(tmp):
    hostile = os.path.join(tmp, "h.qcow2")

    def damaged(src):
        shutil.copyfile(src, hostile)
        return Img(hostile)

    base = make(tmp, "base.qcow2")
    b = Img(base)
    l2 = b.l2_off()
    e1 = b.u64(l2 + 8)

    # An L2 table offset in the L1 table, unaligned: fatal on every path.
    damaged(base).set_u64(b.l1_off, b.u64(b.l1_off) + 0x200)
    msg = "L2 table offset %#x unaligned (L1 index: 0)" % (l2 + 0x200)
    for c in ("read 0 4k", "write 0 4k", "write -z 0 4k", "write -z -u 0 64k", "discard 0 64k",
              "map", "write -c 128k 64k"):
        differ("L1 entry unaligned", tmp, hostile, [c], expect_err=MARK + msg)
    for c in ("read 0 4k", "map"):
        differ("L1 entry unaligned", tmp, hostile, [c, c], ro=True, expect_err=SEEN + msg)
    differ("L1 entry unaligned, then", tmp, hostile,
           ["read 64k 4k", "read 0 4k", "write 0 4k", "discard 0 64k", "flush"])
    # Not compared: requests in flight together (aio_write) when the image is marked; which
    # of them fail with EIO and which with ENOMEDIUM depends on their timing, in qemu too.
    # Reserved bits of the L1 entry below the offset: ignored.
    damaged(base).set_u64(b.l1_off, b.u64(b.l1_off) | 0x100)
    differ("L1 entry reserved bits", tmp, hostile, ["read -P 1 0 4k", "write 0 4k", "map"])

    # A data cluster (in place) of the second guest cluster, unaligned.
    damaged(base).set_u64(l2 + 8, e1 + 0x200)
    alloc = "Cluster allocation offset %#x unaligned (L2 offset: %#x, L2 index: 0x1)" % (
        (e1 & OFF_MASK) + 0x200, l2)
    data = "Data cluster offset %#x unaligned (guest offset: %%#x)" % ((e1 & OFF_MASK) + 0x200)
    freeing = SEEN + "Cannot free unaligned cluster %#x" % ((e1 & OFF_MASK) + 0x200)
    differ("data cluster unaligned", tmp, hostile, ["read 68k 4k"], expect_err=MARK + alloc)
    differ("data cluster unaligned", tmp, hostile, ["read 68k 4k", "read 68k 4k", "read 0 4k",
                                                     "map"], ro=True, expect_err=SEEN + alloc)
    differ("data cluster unaligned", tmp, hostile, ["map"], expect_err=MARK + alloc)
    differ("data cluster unaligned", tmp, hostile, ["write 68k 4k"],
           expect_err=MARK + data % 0x11000)
    # The cluster after the part written first is looked at before that part is written.
    differ("data cluster unaligned, request across", tmp, hostile, ["write 60k 8k"],
           expect_err=MARK + data % 0x10000)
    differ("data cluster unaligned, read across", tmp, hostile, ["read -P 1 60k 8k"])
    differ("data cluster unaligned", tmp, hostile, ["write -z 68k 4k"], expect_err=MARK + alloc)
    differ("data cluster unaligned", tmp, hostile, ["write -z 64k 64k"])
    differ("data cluster unaligned", tmp, hostile, ["write -z -u 64k 64k"], expect_err=freeing)
    differ("data cluster unaligned", tmp, hostile, ["discard 0 128k", "read -P 0 0 128k",
                                                     "discard 0 128k"], expect_err=freeing)
    differ("data cluster unaligned", tmp, hostile, ["write -c 64k 64k"])
    # Not in place: the copy-on-write read finds it, the whole overwrite frees it.
    damaged(base).set_u64(l2 + 8, (e1 + 0x200) & ~COPIED)
    differ("data cluster unaligned, shared", tmp, hostile, ["write 68k 4k"],
           expect_err=MARK + alloc)
    differ("data cluster unaligned, shared", tmp, hostile, ["write 64k 64k", "read -P 0xcd 64k 64k"],
           expect_err=freeing)
    # A preallocated zero cluster, unaligned.
    damaged(base).set_u64(l2 + 8, (e1 + 0x200) | 1)
    differ("zero cluster unaligned", tmp, hostile, ["write 68k 4k"],
           expect_err=MARK + "Preallocated zero cluster offset %#x unaligned (guest offset: "
           "0x11000)" % ((e1 & OFF_MASK) + 0x200))
    differ("zero cluster unaligned", tmp, hostile, ["read 68k 4k"], expect_err=MARK + alloc)
    differ("zero cluster unaligned", tmp, hostile, ["write -z 64k 64k", "discard 64k 64k"],
           expect_err=freeing)
    damaged(base).set_u64(l2 + 8, ((e1 + 0x200) | 1) & ~COPIED)
    differ("zero cluster unaligned, shared", tmp, hostile, ["write 68k 4k"],
           expect_err=MARK + alloc)
    # Reserved bits of an L2 entry, an L2 table past the end of the file: qemu reads on.
    damaged(base).set_u64(l2 + 8, e1 | (1 << 56) | 0x100)
    differ("L2 entry reserved bits", tmp, hostile, ["read -P 1 64k 4k", "write 64k 4k",
                                                     "write -z 64k 64k", "discard 0 128k", "map"])
    damaged(base).set_u64(b.l1_off, COPIED | 0x1000000)
    for c in ("read -P 0 0 4k", "write 0 4k", "write -z 0 64k", "discard 0 64k", "map"):
        differ("L2 table past the end of the file", tmp, hostile, [c])

    # Version 2: no corrupt bit to set; the image is unusable all the same.
    v2 = make(tmp, "v2.qcow2", "compat=0.10")
    v = damaged(v2)
    v2l2 = v.l2_off()
    v.set_u64(v2l2 + 8, v.u64(v2l2 + 8) + 0x200)
    differ("v2 data cluster unaligned", tmp, hostile, ["read 64k 4k", "read 0 4k"])
    differ("v2 data cluster unaligned", tmp, hostile, ["discard 0 128k", "read 0 4k"])

    # Extended L2 entries.
    x = make(tmp, "x.qcow2", "extended_l2=on", ("write -P 1 0 64k",))
    xi = Img(x)
    xl2 = xi.l2_off()
    inv_r = "Invalid cluster entry found  (L2 offset: %#x, L2 index: 0)" % xl2
    inv_w = "Invalid cluster entry found (L2 offset: %#x, L2 index: 0)" % xl2
    for what, entry, bitmap in (("both bits", None, 0x00000001ffffffff),
                                ("allocated without a cluster", 0, 0xff)):
        h = damaged(x)
        if entry is not None:
            h.set_u64(xl2, entry)
        h.set_u64(xl2 + 8, bitmap)
        differ("extended L2, %s" % what, tmp, hostile, ["read 0 4k"], expect_err=MARK + inv_r)
        differ("extended L2, %s" % what, tmp, hostile, ["map"], ro=True, expect_err=SEEN + inv_r)
        differ("extended L2, %s" % what, tmp, hostile, ["write 0 4k"], expect_err=MARK + inv_w)
        differ("extended L2, %s" % what, tmp, hostile, ["write -z 0 64k", "discard 0 64k"])
    damaged(x).set_u64(xl2, xi.u64(xl2) + 0x200)
    xmsg = "Cluster allocation offset %#x unaligned (L2 offset: %#x, L2 index: 0)" % (
        (xi.u64(xl2) & OFF_MASK) + 0x200, xl2)
    differ("extended L2, unaligned", tmp, hostile, ["read 0 4k"], expect_err=MARK + xmsg)
    differ("extended L2, unaligned", tmp, hostile, ["write 0 4k"],
           expect_err=MARK + "Data cluster offset %#x unaligned (guest offset: 0)" %
           ((xi.u64(xl2) & OFF_MASK) + 0x200))
    differ("extended L2, unaligned", tmp, hostile, ["discard 0 64k"],
           expect_err=SEEN + "Cannot free unaligned cluster")
    xc = make(tmp, "xc.qcow2", "extended_l2=on", ("write -c -P 1 0 64k",))
    damaged(xc).set_u64(Img(xc).l2_off() + 8, 1)
    differ("extended L2, compressed with a bitmap", tmp, hostile,
           ["read -P 1 0 4k", "map", "write 0 4k", "discard 0 64k"])

    # Compressed clusters: past the end of the file, too long.
    c = make(tmp, "c.qcow2", cmds=("write -c -P 1 0 64k",))
    ci = Img(c)
    cl2 = ci.l2_off()
    ce = ci.u64(cl2)
    damaged(c).set_u64(cl2, (ce & ~((1 << 54) - 1)) | 0x1000000)
    for cmd in ("read 0 4k", "map", "write 0 4k", "write -z 0 64k", "discard 0 64k"):
        differ("compressed past the end", tmp, hostile, [cmd])
    damaged(c).set_u64(cl2, ce | (0xff << 54))
    for cmd in ("read 0 4k", "write 0 4k", "write -z 0 64k", "discard 0 64k"):
        differ("compressed too long", tmp, hostile, [cmd],
               expect_err=None if cmd.startswith(("read", "write 0")) else
               "qcow2_free_clusters failed: Invalid argument")
    # ... in an image whose data is in an external data file.
    d = os.path.join(tmp, "d.qcow2")
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-o",
       "data_file=" + os.path.join(tmp, "d.raw"), d, "1M", cwd=tmp)
    sh("qemu-io", "-c", "write -P 1 0 64k", "-f", "qcow2", d, cwd=tmp)
    dl2 = Img(d).l2_off()
    dmsg = "Compressed cluster entry found in image with external data file (L2 offset: " \
        "%#x, L2 index: 0)" % dl2
    damaged(d).set_u64(dl2, COMPRESSED | 0x100000)
    for cmd in ("read 0 4k", "map", "write 0 4k"):
        differ("compressed, external data file", tmp, hostile, [cmd], expect_err=MARK + dmsg)
    differ("compressed, external data file", tmp, hostile, ["read 0 4k"], ro=True,
           expect_err=SEEN + dmsg)
    for cmd in ("write -z 0 64k", "write -z -u 0 64k", "discard 0 64k"):
        differ("compressed, external data file", tmp, hostile, [cmd])

    # Refcounts: an unaligned refcount block, met when allocating or freeing.
    rb = b.rb_off()
    damaged(base).set_u64(b.rt_off, b.u64(b.rt_off) + 0x200)
    rmsg = "Refblock offset %#x unaligned (reftable index: 0)" % (rb + 0x200)
    differ("refcount block unaligned", tmp, hostile, ["write 128k 4k"], expect_err=MARK + rmsg)
    differ("refcount block unaligned", tmp, hostile, ["discard 0 64k", "read 0 4k"],
           expect_err=MARK + rmsg)
    differ("refcount block unaligned", tmp, hostile, ["read -P 1 0 4k", "write 0 4k",
                                                       "write -z 0 64k", "map"])
    # A data cluster whose refcount is already 0 when it is freed: told, then on.
    damaged(base).set_refcount((b.u64(l2) & OFF_MASK) // 65536, 0)
    for cmd in ("discard 0 64k", "write -z -u 0 64k"):
        differ("freeing a cluster of refcount 0", tmp, hostile, [cmd, "write 128k 4k"],
               expect_err="qcow2_free_clusters failed: Invalid argument")


def main():
    D.in_tmpdir("tblk-corrupt-", cases, os.environ.get("TMPDIR", "/var/tmp"))


main()
