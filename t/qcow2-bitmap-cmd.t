#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# qcow2-bitmap-cmd.t - `tblk-img bitmap`, dirty tracking and `convert --bitmaps` against
# Debian's qemu-img/qemu-io 7.2, differential on copies of the same images:
# - sequences of `bitmap` calls (several actions per call, granularities, merges within an
#   image and from another file, removes, clears, enable/disable) interleaved with writes,
#   zero writes, discards and compressed writes through qemu-io and tblk-io (pool path and
#   the Linux AIO fast path): same stdout, stderr (program name and qemu's node names
#   normalised), exit status, and files identical with cmp (qemu's cluster placement);
# - bad command lines (unknown option, missing argument, no action, conflicting actions,
#   bad granularity, wrong argument count, read-only node): qemu-img's message and exit
#   status, and the image is not touched;
# - errors found after the open (unknown bitmap, bitmap exists, granularity rules, v2 image,
#   inconsistent bitmap, sizes differ): qemu's message, and the same file as qemu leaves;
# - convert --bitmaps (plain, compressed, other cluster size, -n into images with bitmaps,
#   inconsistent source bitmaps with and without --skip-broken-bitmaps, raw/v2 ends).
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib_bitmap import TIMG, TIO, bitmaps_of, cmpf, main, ok, run, same, sh  # noqa: E402


def same_bitmaps(q, t):
    """Compressed data differs between zlib builds: compare the bitmaps and the data."""
    return bitmaps_of(q) == bitmaps_of(t) and bitmaps_of(t) and \
        subprocess.run(["qemu-img", "compare", "-q", q, t]).returncode == 0


def differential(tmp, base, steps, what, extra=(), compressed=False):
    """Runs @steps on copies of @base through qemu and through tblk; compares everything."""
    q = os.path.join(tmp, "q.qcow2")
    t = os.path.join(tmp, "t.qcow2")
    shutil.copy(base, q)
    shutil.copy(base, t)
    outputs_same = True
    diag = ""
    for step in steps:
        if step[0] == "io":
            rq = run(["qemu-io"] + step[1] + [q], [(q, "IMG")])
            rt = run([TIO] + step[1] + [t], [(t, "IMG")])
            # Timing lines differ; the status and errors must not.
            rq, rt = (rq[0], rq[2]), (rt[0], rt[2])
        else:
            args = step[1]
            rq = run(["qemu-img", "bitmap"] + args[:-1] + [q, args[-1]], [(q, "IMG")])
            rt = run([TIMG, "bitmap"] + args[:-1] + [t, args[-1]], [(t, "IMG")])
        if rq != rt:
            outputs_same = False
            diag += "step %r\nqemu: %r\ntblk: %r\n" % (step, rq, rt)
    ok(outputs_same, "%s: same output and status" % what, diag)
    if compressed:
        ok(same_bitmaps(q, t), "%s: same bitmaps, same data" % what)
    else:
        ok(cmpf(q, t), "%s: files identical" % what)
    if extra:
        same(run(["qemu-img", "check", t])[0], 0, "%s: qemu-img check is clean" % what)
        same(run(["qemu-img", "info", "--output=json", t]),
             run([TIMG, "info", "--output=json", t]), "%s: info --output=json" % what)


def B(*args):
    return ("bitmap", list(args))


def IO(*cmds, opts=()):
    argv = list(opts)
    for c in cmds:
        argv += ["-c", c]
    return ("io", argv)


def tests(tmp):
    base = os.path.join(tmp, "base.qcow2")
    sh(["qemu-img", "create", "-q", "-f", "qcow2", base, "64M"])
    sh(["qemu-io", "-c", "write -P 1 0 1M", base])
    small = os.path.join(tmp, "small.qcow2")
    sh(["qemu-img", "create", "-q", "-f", "qcow2", small, "1M"])
    sh(["qemu-img", "bitmap", "--add", small, "s"])
    other = os.path.join(tmp, "other.qcow2")
    shutil.copy(base, other)
    sh(["qemu-img", "bitmap", "--add", other, "o"])
    sh(["qemu-io", "-c", "write 5M 3M", "-c", "write 40M 64k", other])
    sh(["qemu-img", "bitmap", "--add", "-g", "1M", "--disable", other, "coarse"])
    sh(["qemu-img", "bitmap", "--merge", "o", other, "coarse"])

    sequences = {
        "add one": [B("--add", "b0")],
        "add two, second at 128k": [B("--add", "b0"), B("--add", "-g", "128k", "b1")],
        "add disabled, add enabled": [B("--add", "--disable", "b0"), B("--add", "b1")],
        "add two, remove the first": [B("--add", "b0"), B("--add", "b1"), B("--remove", "b0")],
        "remove the only one": [B("--add", "b0"), IO("write 0 64k"), B("--remove", "b0")],
        "writes, zero writes, discards tracked": [
            B("--add", "b0"), B("--add", "-g", "512", "fine"),
            IO("write 0 64k", "write 200k 1", "discard 1M 128k", "write -z 3M 64k",
               "write -z -u 5M 4k", "discard 7M 1k", "write 63M 1M")],
        "fast path overwrites tracked": [
            B("--add", "b0"), B("--add", "-g", "4k", "b4k"),
            # The read caches the L2 table: the writes to the allocated clusters after it
            # take the fast path, and are the only ones marking their bits.
            IO("read -P 1 0 1M", "aio_write -P 3 4k 4k", "aio_write -P 3 300k 8k",
               "aio_flush", opts=["-t", "none", "-i", "native"])],
        # discard=ignore: the discard does nothing and marks nothing, as in qemu.
        "discards ignored are not tracked": [
            B("--add", "b0"), IO("discard 0 1M", "discard 1536k 1k", opts=["-d", "ignore"]),
            IO("discard 2M 64k")],
        "disabled bitmaps do not track": [B("--add", "--disable", "d"), B("--add", "e"),
                                          IO("write 2M 1M")],
        "merge, clear, enable, disable": [
            B("--add", "b0"), IO("write 0 3M"), B("--add", "--disable", "-g", "1M", "b1"),
            B("--merge", "b0", "b1"), IO("write 10M 64k"), B("--clear", "b0"),
            IO("write 20M 4k"), B("--enable", "b1"), IO("write 30M 1"),
            B("--disable", "b0"), IO("write 50M 1M")],
        "several actions in one call": [
            B("--add", "--disable", "--enable", "-g", "256k", "x"), IO("write 1M 1M"),
            B("--clear", "--merge", "x", "--disable", "x")],
        "merge from another file": [B("--add", "m"), B("-b", other, "--merge", "o", "m"),
                                    B("-b", other, "-F", "qcow2", "--merge", "coarse", "m")],
        "many bitmaps": [B("--add", "m%d" % i) for i in range(10)] +
                        [IO("write 0 2M"), B("--remove", "m3")],
        "failed action keeps the earlier ones": [B("--add", "b0"),
                                                 B("--add", "--add", "b1")],
        "errors after the open": [
            B("--add", "u"), IO("write 0 1M"), B("--remove", "nope"), B("--clear", "nope"),
            B("--enable", "nope"), B("--merge", "nope", "u"), B("--merge", "u", "nope"),
            B("--add", "-g", "1000", "x"), B("--add", "-g", "256", "x"),
            B("--add", "-g", "4G", "x"), B("--add", ""), B("--add", "u"),
            B("--add", "n" * 1024), B("-b", small, "--merge", "s", "u")],
        "32-bit granularity": [B("--add", "-g", "6G", "x"), B("--add", "-g", "2G", "y")],
    }
    for what, steps in sequences.items():
        differential(tmp, base, steps, what, extra=True)
    differential(tmp, base, [B("--add", "b0"), IO("write -c 8M 64k", "write -c 9M 128k")],
                 "compressed writes tracked", extra=True, compressed=True)

    # Images with one in-use (inconsistent) bitmap, from a qemu-io killed while writing.
    inuse = os.path.join(tmp, "inuse.qcow2")
    shutil.copy(other, inuse)
    subprocess.run(["qemu-io", "-c", "write 0 64k", "-c", "sigraise 9", inuse],
                   capture_output=True)
    sh(["qemu-img", "bitmap", "--add", inuse, "fresh"])
    differential(tmp, inuse, [B("--clear", "o"), B("--disable", "coarse"),
                              B("--add", "z"), B("--merge", "o", "z"), IO("write 6M 1M"),
                              B("--remove", "o")], "inconsistent bitmaps")

    # Other geometries: 4k clusters with 512-byte granularity; a huge image; qcow2 v2.
    c4k = os.path.join(tmp, "c4k.qcow2")
    sh(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", c4k, "64M"])
    differential(tmp, c4k, [B("--add", "-g", "512", "f"), B("--add", "g"),
                            IO("write 0 40M", "discard 8M 1k")], "4k clusters")
    big = os.path.join(tmp, "big.qcow2")
    sh(["qemu-img", "create", "-q", "-f", "qcow2", big, "64T"])
    differential(tmp, big, [B("--add", "-g", "512", "x"), B("--add", "x"),
                            IO("write 60T 1M")], "64 TiB image")
    v2 = os.path.join(tmp, "v2.qcow2")
    sh(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compat=0.10", v2, "64M"])
    differential(tmp, v2, [B("--add", "x")], "qcow2 v2")

    # Bad command lines: qemu-img's message and status, the image untouched.
    bad = [
        [], ["--frob"], ["--merge"], ["-g"], ["--add", "-g", "foo"], ["--add", "-g", "-5"],
        ["-g", "64k", "--remove"], ["-F", "qcow2", "--merge", "b0"],
        ["-b", other, "--add"], ["--add", "extra-arg"],
    ]
    for args in bad:
        q = os.path.join(tmp, "q.qcow2")
        t = os.path.join(tmp, "t.qcow2")
        shutil.copy(other, q)
        shutil.copy(other, t)
        tail = [q, "n"] if args != ["--add", "extra-arg"] else [q, "n", "extra"]
        rq = run(["qemu-img", "bitmap"] + args + tail, [(q, "IMG")])
        tail = [t, "n"] if args != ["--add", "extra-arg"] else [t, "n", "extra"]
        rt = run([TIMG, "bitmap"] + args + tail, [(t, "IMG")])
        same(rq, rt, "bad command line %r: same message and status" % args)
        ok(rt[0] != 0 and cmpf(other, t), "bad command line %r: image untouched" % args)
    t = os.path.join(tmp, "t.qcow2")
    shutil.copy(other, t)
    opts = "driver=qcow2,file.filename=%s,read-only=on" % t
    same(run(["qemu-img", "bitmap", "--add", "--image-opts", opts, "n"], [(t, "IMG")]),
         run([TIMG, "bitmap", "--add", "--image-opts", opts, "n"], [(t, "IMG")]),
         "read-only node: same message and status")
    ok(cmpf(other, t), "read-only node: image untouched")
    same(run(["qemu-img", "bitmap", "--add", os.path.join(tmp, "missing"), "n"], [(tmp, "D")]),
         run([TIMG, "bitmap", "--add", os.path.join(tmp, "missing"), "n"], [(tmp, "D")]),
         "missing file")

    # convert --bitmaps.
    conv = [
        (other, ["-O", "qcow2"]),
        (other, ["-O", "qcow2", "-c"]),
        (other, ["-O", "qcow2", "-o", "cluster_size=4096"]),
        (other, ["-O", "qcow2", "-o", "compat=0.10"]),
        (other, ["-O", "raw"]),
        (inuse, ["-O", "qcow2"]),
        (inuse, ["-O", "qcow2", "--skip-broken-bitmaps"]),
        (v2, ["-O", "qcow2"]),
    ]
    for src, args in conv:
        q = os.path.join(tmp, "cq.img")
        t = os.path.join(tmp, "ct.img")
        for f in (q, t):
            if os.path.exists(f):
                os.unlink(f)
        rq = run(["qemu-img", "convert", "--bitmaps"] + args + [src, q], [(q, "OUT")])
        rt = run([TIMG, "convert", "--bitmaps"] + args + [src, t], [(t, "OUT")])
        what = "convert --bitmaps %s %s" % (" ".join(args), os.path.basename(src))
        same(rq, rt, what + ": same output and status")
        if rq[0] == 0 and "-c" in args:
            ok(same_bitmaps(q, t), what + ": same bitmaps, same data")
        elif rq[0] == 0:
            ok(cmpf(q, t), what + ": files identical")
    # -n into existing targets: one holding a bitmap of the same name, one larger.
    for size, pre, what in (("64M", ["--add", "o"], "name taken"),
                            ("128M", None, "larger target"),
                            ("64M", ["--add", "zz"], "other bitmap kept")):
        q = os.path.join(tmp, "cq.img")
        t = os.path.join(tmp, "ct.img")
        sh(["qemu-img", "create", "-q", "-f", "qcow2", q, size])
        if pre:
            sh(["qemu-img", "bitmap"] + pre[:-1] + [q, pre[-1]])
        shutil.copy(q, t)
        rq = run(["qemu-img", "convert", "--bitmaps", "-n", "-O", "qcow2", other, q],
                 [(q, "OUT")])
        rt = run([TIMG, "convert", "--bitmaps", "-n", "-O", "qcow2", other, t], [(t, "OUT")])
        same(rq, rt, "convert --bitmaps -n, %s: same output and status" % what)
        ok(cmpf(q, t), "convert --bitmaps -n, %s: files identical" % what)


main("tblk-bitmap-cmd.", tests)
