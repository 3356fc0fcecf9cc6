# SPDX-License-Identifier: MIT
#
# lib_qcow2diff.py - shared by the differential qcow2 and qemu-img scripts
# (t/qcow2-check-repair.t, t/qcow2-overlap.t, t/qcow2-corrupt-events.t,
# t/qcow2-amend-overlap.t, t/crash-qcow2.t, t/fault-qcow2.t, t/img-amend.t, t/img-resize.t,
# t/img-measure.t, t/copy-on-read.t, t/img-convert-compressed.t): the build directory and our
# tools, the skip when the reference tools are missing, the TAP counter, a tool run with its
# output normalised (program name, image path, qemu-io's timing lines), raw access to a qcow2
# file's header, tables and refcounts to make hostile images, one command line run through a
# qemu tool and ours on two copies of an image with stdout, stderr, exit status and the file
# bytes afterwards compared, and a qemu-img command run on two copies of what a set-up made.
#
# A script finds this file next to itself:
#     sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
#     import lib_qcow2diff as D
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile

BUILD = os.environ.get("TBLK_BUILD")
if not BUILD:
    sys.exit("set TBLK_BUILD to the build directory")
TIMG = os.path.join(BUILD, "tools", "tblk-img")
TIO = os.path.join(BUILD, "tools", "tblk-io")

COPIED = 1 << 63
COMPRESSED = 1 << 62
OFF_MASK = 0x00fffffffffffe00
n = 0
failed = 0  # tests not ok, but for TODO ones


def need(*progs):
    """Skips the whole script (a TAP plan of 0) unless every one of @progs is on PATH."""
    missing = [p for p in progs if not shutil.which(p)]
    if missing:
        print("1..0 # SKIP %s not installed" % "/".join(progs))
        sys.exit(0)


def ok(cond, what, diag="", todo=""):
    """One TAP line; up to 40 lines of @diag after a failure; @todo: the reason of a known
    difference (a TODO directive)."""
    global n, failed
    n += 1
    failed += 0 if cond or todo else 1
    print("%sok %d - %s%s" % ("" if cond else "not ", n, what, " # TODO " + todo if todo else ""))
    if not cond and diag:
        for line in str(diag).splitlines()[:40]:
            print("#   " + line)
    return cond


def plan():
    """The plan, at the end: as many tests as ok() counted."""
    print("1..%d" % n)


def in_tmpdir(prefix, fn, tmpdir=None):
    """Runs fn(d) in a new scratch directory (under tmpdir, else $TMPDIR), removes it, then
    prints the plan. Returns the exit status, 0."""
    d = tempfile.mkdtemp(prefix=prefix, dir=tmpdir)
    try:
        fn(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    plan()
    return 0


def sh(*argv, cwd=None):
    """A set-up command that must succeed; its output is dropped."""
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


def run(argv, cwd=None, timeout=60):
    """(exit status, stdout, stderr) of @argv, decoded."""
    p = subprocess.run(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout)
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def norm(s, path=None):
    """qemu-io's timing lines and program names out; @path (an image) as IMG."""
    s = re.sub(r"^.* ops; .*$", "TIMING", s, flags=re.M)
    s = re.sub(r"Run completed in [0-9.]+ seconds", "Run completed in T seconds", s)
    if path:
        s = s.replace(path, "IMG")
    for prog in ("qemu-io:", "tblk-io:", "qemu-img:", "tblk-img:"):
        s = s.replace(prog, "PROG:")
    return s


def file_difference(a, b):
    """Where files @a and @b first differ, as a reason; "" when their bytes are equal."""
    with open(a, "rb") as f:
        x = f.read()
    with open(b, "rb") as f:
        y = f.read()
    if x == y:
        return ""
    first = next((i for i in range(min(len(x), len(y))) if x[i] != y[i]), min(len(x), len(y)))
    return "file differs at %#x (sizes %#x, %#x)" % (first, len(x), len(y))


def differ(name, tmp, img, cmds=(), ro=False, opts=None, extra=(), img_args=None, todo=""):
    """Runs qemu-io and tblk-io with @cmds (-c each) on two copies of @img, tmp/q.qcow2 and
    tmp/t.qcow2 (left there for the caller), and compares exit status, stdout, stderr and
    the file bytes afterwards as one test. @opts: --image-opts with these options after the
    file name; @extra: arguments before the commands. With @img_args, runs qemu-img and
    tblk-img with those arguments instead, the image for "IMG" or last. With @ro, the copies
    are opened read-only and made unwritable, and ours must still equal @img. Returns qemu's
    (exit status, stdout, stderr)."""
    res = {}
    progs = (("q", "qemu-io"), ("t", TIO)) if img_args is None else \
        (("q", "qemu-img"), ("t", TIMG))
    for tool, prog in progs:
        path = os.path.join(tmp, tool + ".qcow2")
        shutil.copyfile(img, path)
        argv = [prog] + (["-r"] if ro else []) + list(extra)
        for c in cmds:
            argv += ["-c", c]
        if img_args is not None:
            args = list(img_args) if "IMG" in img_args else list(img_args) + ["IMG"]
            argv += [path if a == "IMG" else a for a in args]
        elif opts is None:
            argv += ["-f", "qcow2", path]
        else:
            argv += ["--image-opts", "driver=qcow2,file.filename=%s%s" % (path, opts)]
        if ro:
            os.chmod(path, 0o444)
        try:
            rc, out, err = run(argv, tmp)
        finally:
            os.chmod(path, 0o644)
        res[tool] = (rc, norm(out, path), norm(err, path))
    q, t = res["q"], res["t"]
    why = ""
    if q[0] != t[0]:
        why = "exit status %d vs %d" % (q[0], t[0])
    elif q[1] != t[1]:
        why = "stdout"
    elif q[2] != t[2]:
        why = "stderr"
    else:
        why = file_difference(os.path.join(tmp, "q.qcow2"), os.path.join(tmp, "t.qcow2"))
    if not why and ro and file_difference(img, os.path.join(tmp, "t.qcow2")):
        why = "read-only file written"
    diag = "qemu: rc %d\n%s%s\ntblk: rc %d\n%s%s" % (q[0], q[1], q[2], t[0], t[1], t[2])
    ok(not why, name + (" (%s)" % why if why else ""), diag, todo)
    return q


def img_sides(d, setup, argv):
    """setup(dir) makes the input files in d/q, copied to d/t (one setup for both: snapshots
    carry timestamps); then qemu-img @argv runs in d/q and tblk-img @argv in d/t. Returns
    qemu's and ours (exit status, stdout, stderr normalised)."""
    for side in ("q", "t"):
        shutil.rmtree(os.path.join(d, side), ignore_errors=True)
    os.makedirs(os.path.join(d, "q"))
    setup(os.path.join(d, "q"))
    shutil.copytree(os.path.join(d, "q"), os.path.join(d, "t"))
    res = {}
    for side, tool in (("q", "qemu-img"), ("t", TIMG)):
        rc, out, err = run([tool] + list(argv), os.path.join(d, side), timeout=120)
        res[side] = (rc, out, norm(err))
    return res["q"], res["t"]


class Img:
    """Raw access to a qcow2 file's header, L1/L2 tables and refcounts (16-bit refcounts
    only), to make hostile images. Each access opens the file anew."""

    def __init__(self, path):
        self.path = path
        h = self.read(0, 104)
        self.version = struct.unpack(">I", h[4:8])[0]
        self.cluster_bits = struct.unpack(">I", h[20:24])[0]
        self.cs = 1 << self.cluster_bits
        self.l1_size = struct.unpack(">I", h[36:40])[0]
        self.l1_off = struct.unpack(">Q", h[40:48])[0]
        self.rt_off = struct.unpack(">Q", h[48:56])[0]
        self.rt_clusters = struct.unpack(">I", h[56:60])[0]
        self.sn_off = struct.unpack(">Q", h[64:72])[0]
        self.rc_order = struct.unpack(">I", h[96:100])[0] if self.version >= 3 else 4
        incompat = struct.unpack(">Q", h[72:80])[0] if self.version >= 3 else 0
        self.l2_entry = 16 if incompat & 16 else 8

    def read(self, off, size):
        with open(self.path, "rb") as f:
            f.seek(off)
            return f.read(size)

    def write(self, off, data):
        with open(self.path, "r+b") as f:
            f.seek(off)
            f.write(data)

    def u64(self, off):
        return struct.unpack(">Q", self.read(off, 8))[0]

    def set_u64(self, off, v):
        self.write(off, struct.pack(">Q", v))

    def l1(self, i):
        return self.u64(self.l1_off + 8 * i)

    def set_l1(self, i, v):
        self.set_u64(self.l1_off + 8 * i, v)

    def l2_off(self, i=0):
        """The offset of the L2 table of L1 entry @i."""
        return self.l1(i) & OFF_MASK

    def l2(self, i, j):
        return self.u64(self.l2_off(i) + self.l2_entry * j)

    def set_l2(self, i, j, v):
        self.set_u64(self.l2_off(i) + self.l2_entry * j, v)

    def rb_off(self, i=0):
        """The offset of refcount block @i."""
        return self.u64(self.rt_off + 8 * i) & ~0x1ff

    def sn_l1_off(self):
        """The first snapshot's L1 table offset."""
        return self.u64(self.sn_off)

    def rc_addr(self, cluster):
        """The file offset of a cluster's refcount."""
        assert self.rc_order == 4
        per_block = self.cs * 8 >> self.rc_order
        return self.rb_off(cluster // per_block) + 2 * (cluster % per_block)

    def refcount(self, cluster):
        return struct.unpack(">H", self.read(self.rc_addr(cluster), 2))[0]

    def set_refcount(self, cluster, v):
        self.write(self.rc_addr(cluster), struct.pack(">H", v))
