#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""qcow2-overlap.t - the metadata overlap check against Debian's qemu-io/qemu-img 7.2.

Each case makes a qcow2 image with qemu-img/qemu-io, points some table entry of it at metadata
(a data cluster at the active L1 table, the refcount table, a refcount block, an L2 table, the
snapshot table, a snapshot's L1 or L2 table; an L1 entry at the refcount table; the refcount
of a metadata cluster at zero so that an allocation lands on it), then runs the same commands
through qemu-io and tblk-io on two copies, with the overlap-check options in their modes. The
write into metadata must be refused the same way: stdout (timings cut), stderr (program name
normalised), exit status, and the file bytes afterwards (cmp: the corrupt bit set, the
metadata intact, or, where the check is off, the metadata overwritten alike).
"""
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib_qcow2diff as D  # noqa: E402
from lib_qcow2diff import COPIED, Img, differ, ok, sh  # noqa: E402

D.need("qemu-img", "qemu-io")


def expect(name, q, rc, err_has):
    """The reference itself did what the case is about (the damage is the intended one)."""
    ok(q[0] == rc and err_has in q[2], name + ": qemu-io " + err_has,
       "rc %d\n%s" % (q[0], q[2]))


def main():
    D.in_tmpdir("tblk-overlap-", cases, os.environ.get("TMPDIR", "/var/tmp"))


def make_base(tmp, name, size="1M", snapshot=False, after=()):
    path = os.path.join(tmp, name)
    sh("qemu-img", "create", "-q", "-f", "qcow2", path, size, cwd=tmp)
    sh("qemu-io", "-c", "write -P 1 0 64k", path, cwd=tmp)
    if snapshot:
        sh("qemu-img", "snapshot", "-c", "s1", path, cwd=tmp)
    for c in after:
        sh("qemu-io", "-c", c, path, cwd=tmp)
    return path


def cases(tmp):
    base = make_base(tmp, "base.qcow2")
    b = Img(base)
    hostile = os.path.join(tmp, "h.qcow2")
    marked = "Marking image as corrupt: Preventing invalid write on metadata (overlaps with %s)"

    def damaged(src=base):
        shutil.copyfile(src, hostile)
        return Img(hostile)

    # A data cluster (in place: COPIED) at each kind of metadata of a plain image.
    targets = [("active L1 table", b.l1_off), ("refcount table", b.rt_off),
               ("refcount block", b.rb_off()), ("active L2 table", b.l2_off())]
    for kind, off in targets:
        damaged().set_l2(0, 0, COPIED | off)
        q = differ("data cluster at the %s: write refused, reads fail after" % kind, tmp,
                   hostile, ["write -P 2 0 4k", "read -P 1 0 4k", "write -P 3 4k 4k",
                             "discard 0 64k", "write -z 0 64k", "aio_write 0 4k",
                             "aio_flush", "flush"])
        expect(kind, q, 1, marked % kind)
    # The same through -t none -i native: a read caches the L2 table first, so the
    # overwrite is one the fast path would serve; it goes to the pool and is refused there.
    damaged().set_l2(0, 0, COPIED | b.l1_off)
    differ("fast path: overwrite of the active L1 table refused", tmp, hostile,
           ["read 0 4k", "write -P 2 0 4k", "aio_write -P 2 8k 4k", "aio_flush"],
           extra=["-t", "none", "-i", "native"])
    damaged().set_l2(0, 0, COPIED | b.rb_off())
    differ("fast path: aio overwrite of a refcount block refused", tmp, hostile,
           ["read 0 4k", "aio_write -P 2 0 4k", "aio_flush", "read 0 4k"],
           extra=["-t", "none", "-i", "native"])

    # The header: cluster 0 has refcount 0, the allocation lands there.
    damaged().set_refcount(0, 0)
    q = differ("allocating write on the header", tmp, hostile, ["write -P 2 64k 64k"])
    expect("header", q, 1, marked % "qcow2_header")
    damaged().set_refcount(0, 0)
    differ("partial allocating write (copy-on-write) on the header", tmp, hostile,
           ["write -P 2 68k 4k"])
    # A compressed write allocating on the active L1 table (refcount 0).
    damaged().set_refcount(b.l1_off // b.cs, 0)
    q = differ("compressed write on the active L1 table", tmp, hostile, ["write -c 64k 64k"])
    expect("compressed", q, 1, marked % "active L1 table")

    # An L1 entry at the refcount table: a write allocating in that "L2 table" writes its
    # data and refcounts, then the table's write-back is refused.
    damaged().set_u64(b.l1_off, COPIED | b.rt_off)
    q = differ("L1 entry at the refcount table, allocating write", tmp, hostile,
               ["write -P 2 64k 64k", "read -P 2 64k 64k"])
    expect("L2 write-back", q, 1, marked % "refcount table")

    # The fast path's allocations: L1 entry 1 names an L2 table past the end of the file,
    # whose cluster has refcount 0; the third allocation reaches it.
    big = make_base(tmp, "big.qcow2", size="1G")
    bb = Img(big)
    far = (os.path.getsize(big) // bb.cs + 2) * bb.cs
    shutil.copyfile(big, hostile)
    Img(hostile).set_u64(bb.l1_off + 8, COPIED | far)
    q = differ("fast allocating writes reach the active L2 table", tmp, hostile,
               ["write -P 2 512M 64k", "write -P 3 513M 64k", "aio_write -P 4 514M 64k",
                "aio_flush", "aio_write -P 5 515M 64k", "aio_flush"],
               extra=["-t", "none", "-i", "native"])
    expect("fast alloc", q, 0, marked % "active L2 table")	# aio errors do not count

    # Allocations qemu refuses before any write: cluster 0 free, an L2 table or compressed
    # data would go there.
    for cmd, what in (("write -P 2 512M 4k", "L2 table"),
                      ("write -c 64k 64k", "compressed cluster")):
        shutil.copyfile(big, hostile)
        Img(hostile).set_refcount(0, 0)
        q = differ("%s allocated at offset 0" % what, tmp, hostile, [cmd])
        expect(what, q, 1, "Marking image as corrupt: Preventing invalid allocation of %s "
               "at offset 0" % what)

    # Snapshots: the snapshot table, a snapshot's L1 table, a snapshot's L2 table.
    sn = make_base(tmp, "sn.qcow2", snapshot=True)
    s = Img(sn)
    h = damaged(sn)
    h.set_u64(s.l1_off, COPIED | s.l1(0))
    h.set_l2(0, 0, COPIED | s.sn_off)
    q = differ("data cluster at the snapshot table", tmp, hostile, ["write -P 2 0 4k"])
    expect("snapshot table", q, 1, marked % "snapshot table")
    h = damaged(sn)
    h.set_u64(s.l1_off, COPIED | s.l1(0))
    h.set_l2(0, 0, COPIED | s.sn_l1_off())
    q = differ("data cluster at a snapshot's L1 table", tmp, hostile, ["write -P 2 0 4k"])
    expect("inactive L1", q, 1, marked % "inactive L1 table")
    sn2 = make_base(tmp, "sn2.qcow2", snapshot=True, after=["write -P 3 0 4k"])
    s2 = Img(sn2)
    old_l2 = s.l2_off()		# the snapshot's table, copied away by the write
    for mode, refused in (("cached", False), ("constant", False), ("all", True)):
        damaged(sn2).set_l2(0, 1, COPIED | old_l2)
        q = differ("data cluster at a snapshot's L2 table, overlap-check=%s" % mode, tmp,
                   hostile, ["write -P 2 64k 4k"], opts=",overlap-check=" + mode)
        if refused:
            expect("inactive L2", q, 1, marked % "inactive L2 table")
    assert s2.l2_off() != old_l2

    # Modes and per-kind switches.
    for opts, kind, refused in (
            (",overlap-check=none", "active L1 table", False),
            (",overlap-check=constant", "active L2 table", False),
            (",overlap-check=constant", "active L1 table", True),
            (",overlap-check=constant,overlap-check.active-l2=on", "active L2 table", True),
            (",overlap-check.active-l1=off", "active L1 table", False),
            (",overlap-check.template=none,overlap-check.refcount-block=on", "refcount block",
             True),
            (",overlap-check=all,overlap-check.template=all", "refcount table", True)):
        off = dict(targets)[kind]
        damaged().set_l2(0, 0, COPIED | off)
        q = differ("%s: data cluster at the %s" % (opts[1:], kind), tmp, hostile,
                   ["write -P 2 0 4k", "read -P 2 0 4k"], opts=opts)
        expect(opts[1:], q, 1 if refused else 0, marked % kind if refused else "")
    for opts in (",overlap-check=bogus", ",overlap-check=", ",overlap-check.template=x",
                 ",overlap-check=all,overlap-check.template=cached",
                 ",overlap-check.active-l1=maybe", ",overlap-check.nonsense=on"):
        differ("bad option %s" % opts[1:], tmp, base, ["read 0 4k"], opts=opts)

    # tblk-img: bench writes, a snapshot's L1 copy and an L1 table's growth that land on
    # metadata (its refcount at zero), as qemu-img refuses them.
    damaged().set_l2(0, 0, COPIED | b.l1_off)
    for extra in ([], ["-t", "none", "-i", "native"]):
        q = differ("img bench -w %s: into the active L1 table" % " ".join(extra), tmp, hostile,
                   [], img_args=["bench", "-w", "-c", "64", "-d", "4", "-f", "qcow2"] + extra)
        expect("bench", q, 1, marked % "active L1 table")
    for kind, cluster, args in (
            ("active L1 table", b.l1_off // b.cs, ["snapshot", "-c", "s1"]),
            ("refcount table", b.rt_off // b.cs, ["snapshot", "-c", "s1"]),
            ("active L1 table", b.l1_off // b.cs, ["resize", "-f", "qcow2", "IMG", "5G"]),
            ("active L2 table", b.l2_off() // b.cs, ["resize", "-f", "qcow2", "IMG", "5G"])):
        damaged().set_refcount(cluster, 0)
        q = differ("img %s allocating on the %s" % (args[0], kind), tmp, hostile, [],
                   img_args=args)
        expect(args[0], q, 1, marked % kind)

    # v2 images have no corrupt bit: nothing is written.
    v2 = os.path.join(tmp, "v2.qcow2")
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", v2, "1M", cwd=tmp)
    sh("qemu-io", "-c", "write -P 1 0 64k", v2, cwd=tmp)
    damaged(v2).set_l2(0, 0, COPIED | Img(v2).l1_off)
    differ("compat=0.10: write refused, file untouched", tmp, hostile, ["write -P 2 0 4k"])

    # An image whose metadata is sound is written as before (no false alarm), through the
    # pool and the fast path, allocating, growing the L1 table, with snapshots.
    fresh = os.path.join(tmp, "fresh.qcow2")
    sh("qemu-img", "create", "-q", "-f", "qcow2", fresh, "64M", cwd=tmp)
    differ("sound image: allocating, overwriting, compressed, snapshot", tmp, fresh,
           ["write -P 1 0 1M", "write -P 2 4k 8k", "write -c -P 3 2M 64k",
            "write -z 3M 64k", "discard 0 64k", "write -P 4 0 4k"],
           opts=",overlap-check=all")
    differ("sound image, fast path", tmp, fresh,
           ["write -P 1 0 1M", "read 0 4k", "write -P 2 4k 4k", "write -P 3 1M 64k",
            "flush"], extra=["-t", "none", "-i", "native"])


main()
