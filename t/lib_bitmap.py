# SPDX-License-Identifier: MIT
#
# lib_bitmap.py - shared by t/qcow2-bitmaps.t, t/qcow2-bitmap-cmd.t and
# t/qcow2-bitmap-interplay.t: the TAP counter, qemu's and our tools run with their output
# normalised (program name, file names, qemu's node names, qemu-io's timing figures),
# comparisons, the qcow2 bitmap directory read from a file, and the scripts' main (skip
# without the tools, a scratch directory, the plan at the end).
import os
import re
import shutil
import struct
import subprocess
import tempfile

BUILD = os.environ.get("TBLK_BUILD", ".")
TIMG = os.path.join(BUILD, "tools", "tblk-img")
TIO = os.path.join(BUILD, "tools", "tblk-io")
BITMAPS_EXT = 0x23852875
n = 0


def ok(cond, what, diag=""):
    global n
    n += 1
    print("%sok %d - %s" % ("" if cond else "not ", n, what))
    if not cond and diag:
        for line in diag.splitlines():
            print("#   " + line)
    return cond


def norm(text, names=()):
    for name in ("qemu-img", "qemu-io", "tblk-img", "tblk-io"):
        text = text.replace(name + ":", "PROG:")
    for a, b in names:
        text = text.replace(a, b)
    text = re.sub(r"#block\d+", "#blockN", text)
    # Snapshot dates: the two runs may straddle a second.
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "DATE", text)
    # Timings of qemu-io's I/O lines.
    return re.sub(r"\d+(\.\d+)? [KMGT]?i?B, \d+ ops; .*", "TIMING", text)


def run(argv, names=(), cwd=None):
    """(exit status, stdout, stderr), both normalised; @names: (text, replacement) pairs."""
    p = subprocess.run(argv, capture_output=True, text=True, cwd=cwd)
    return p.returncode, norm(p.stdout, names), norm(p.stderr, names)


def sh(argv, cwd=None):
    subprocess.run(argv, check=True, capture_output=True, cwd=cwd)


def same(q, t, what):
    return ok(q == t, what, "" if q == t else "qemu: %r\ntblk: %r" % (q, t))


def cmpf(a, b):
    return subprocess.run(["cmp", "-s", a, b]).returncode == 0


def find_ext(d):
    """Where the bitmaps header extension of qcow2 bytes @d starts, or None."""
    pos = struct.unpack(">I", d[100:104])[0]
    while pos + 8 <= len(d):
        typ, ln = struct.unpack(">II", d[pos:pos + 8])
        if typ == 0:
            return None
        if typ == BITMAPS_EXT:
            return pos
        pos += 8 + ((ln + 7) & ~7)
    return None


def read_dir(d):
    """The bitmaps extension's position and directory as a list of dicts."""
    ext = find_ext(d)
    nb, _, size, off = struct.unpack(">IIQQ", d[ext + 8:ext + 32])
    entries, pos = [], off
    for _ in range(nb):
        toff, tsz, flags, typ, gb, nl, ex = struct.unpack(">QIIBBHI", d[pos:pos + 24])
        entries.append(dict(toff=toff, tsz=tsz, flags=flags, type=typ, gb=gb, nl=nl, ex=ex,
                            extra=d[pos + 24:pos + 24 + ex],
                            name=d[pos + 24 + ex:pos + 24 + ex + nl]))
        pos += (24 + ex + nl + 7) & ~7
    return ext, off, entries


def bitmaps_of(path):
    """The bitmap directory of a qcow2 file with each bitmap's bytes, by name."""
    d = open(path, "rb").read()
    cs = 1 << struct.unpack(">I", d[20:24])[0]
    out = {}
    if find_ext(d) is None:
        return out
    for e in read_dir(d)[2]:
        bits = b""
        for k in range(e["tsz"]):
            c = struct.unpack(">Q", d[e["toff"] + 8 * k:e["toff"] + 8 * k + 8])[0]
            bits += d[c:c + cs] if c > 1 else bytes(cs)
        out[e["name"]] = (e["flags"], e["gb"], e["tsz"], bits)
    return out


def main(prefix, tests):
    """Runs @tests(scratch directory) unless qemu-img or tblk-img is missing; the plan last."""
    if not shutil.which("qemu-img") or not os.access(TIMG, os.X_OK):
        print("1..0 # SKIP qemu-img or tblk-img missing")
        return
    tmp = tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("TMPDIR", "/tmp"))
    try:
        tests(tmp)
        print("1..%d" % n)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
