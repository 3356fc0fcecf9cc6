#!/usr/bin/env python3
# qcow2-bitmaps.t - persistent bitmaps in images qemu made, against Debian's qemu-img/qemu-io
# on the same files. Images get bitmaps from `qemu-img bitmap` (enabled, disabled,
# granularities, one left in use by a killed qemu-io). Then:
# - info (human and JSON) and check list and count them exactly as qemu-img does (their
#   directory, tables and data clusters are referenced, not leaks);
# - check -r all keeps them and stores them on close as qemu does (files cmp identical);
# - the same writes, zero writes and discards through tblk-io and qemu-io mark the same bits
#   in the enabled bitmaps, stored to the same clusters (files cmp identical);
# - with the bitmaps autoclear bit cleared (what a program without bitmap support does),
#   qemu-img warns and counts their clusters as leaks, and tblk-img prints the same warning;
#   opening such an image for writing drops the stale extension as qemu-io does.
# stderr is compared with the program name normalised.
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib_bitmap import TIMG, TIO, cmpf, main, ok, run, same  # noqa: E402


def clear_autoclear(path):
    """What a program without bitmap support does to a v3 image it writes."""
    with open(path, "r+b") as f:
        f.seek(95)
        v = f.read(1)[0]
        f.seek(95)
        f.write(bytes([v & ~1]))


def make(tmp, name, setup):
    path = os.path.join(tmp, name)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2"] + setup.get("opts", []) +
                   [path, setup.get("size", "64M")], check=True)
    for cmd in setup.get("pre", []):
        subprocess.run(["qemu-io", "-c", cmd, path], check=True, capture_output=True)
    for args in setup.get("bitmaps", []):
        subprocess.run(["qemu-img", "bitmap"] + args[:-1] + [path, args[-1]], check=True)
    for cmd in setup.get("post", []):
        subprocess.run(["qemu-io", "-c", cmd, path], check=True, capture_output=True)
    if setup.get("in_use"):
        # qemu-io marks auto bitmaps in use while it has the image open for writing.
        subprocess.run(["qemu-io", "-c", "write -P 9 1M 64k", "-c", "sigraise 9", path],
                       capture_output=True)
    return path


SETUPS = {
    "one enabled bitmap": {"bitmaps": [["--add", "b0"]], "post": ["write -P 1 0 1M"]},
    "two, data before and after": {"pre": ["write -P 1 0 1M"],
                                   "bitmaps": [["--add", "b0"],
                                               ["--add", "--granularity", "128k", "b1"]],
                                   "post": ["write -P 2 2M 1M"]},
    "disabled bitmap": {"bitmaps": [["--add", "x"], ["--disable", "x"]],
                        "post": ["write 0 64k"]},
    "fine granularity, 4k clusters": {"opts": ["-o", "cluster_size=4096"],
                                      "bitmaps": [["--add", "--granularity", "512", "f"]],
                                      "post": ["write -P 3 0 3M"]},
    "bitmap in use (writer killed)": {"bitmaps": [["--add", "u"]], "in_use": True},
    "many bitmaps": {"bitmaps": [["--add", "m%d" % i] for i in range(12)],
                     "post": ["write -P 4 0 2M"]},
}


def tests(tmp):
    for name, setup in SETUPS.items():
        img = make(tmp, "img.qcow2", setup)
        for fmt in ("human", "json"):
            same(run(["qemu-img", "info", "--output=" + fmt, img]),
                 run([TIMG, "info", "--output=" + fmt, img]), "%s: info %s" % (name, fmt))
        same(run(["qemu-img", "check", img]), run([TIMG, "check", img]),
             "%s: check" % name)
        q = os.path.join(tmp, "q.qcow2")
        t = os.path.join(tmp, "t.qcow2")
        # A repair opens the image for writing: the bitmaps are stored again on close,
        # to new clusters, as qemu stores them.
        shutil.copy(img, q)
        shutil.copy(img, t)
        same(run(["qemu-img", "check", "-r", "all", q])[0],
             run([TIMG, "check", "-r", "all", t])[0], "%s: check -r all" % name)
        rc, out, _ = run(["qemu-img", "info", "--output=json", t])
        nb = len(json.loads(out)["format-specific"]["data"].get("bitmaps", [])) if rc == 0 \
            else -1
        ok(nb == len([b for b in setup["bitmaps"] if b[0] == "--add"]),
           "%s: check -r all keeps the bitmaps (%d)" % (name, nb))
        ok(cmpf(q, t), "%s: check -r all gives qemu-img's file" % name)
        same(run(["qemu-img", "check", t])[0], 0, "%s: and qemu-img check finds it clean" % name)
        # Writes through tblk-io and qemu-io mark the same bits, stored the same way.
        shutil.copy(img, q)
        shutil.copy(img, t)
        cmds = ["-c", "write -P 5 8M 64k", "-c", "write -z 12M 192k", "-c", "discard 1M 4k"]
        rq = run(["qemu-io"] + cmds + [q])
        rt = run([TIO] + cmds + [t])
        ok(rq[0] == 0 and rt[0] == 0, "%s: both write" % name, rq[2] + rt[2])
        ok(cmpf(q, t), "%s: writes tracked as qemu tracks them (files identical)" % name)
        same(run(["qemu-img", "info", t]), run([TIMG, "info", t]),
             "%s: info after the writes" % name)
        # A program without bitmap support clears the autoclear bit: stale bitmaps.
        shutil.copy(img, t)
        clear_autoclear(t)
        q_info = run(["qemu-img", "info", t])
        ok("lacking bitmap support" in q_info[2] and "bitmaps:" not in q_info[1],
           "%s: qemu-img then finds the bitmaps inconsistent" % name, q_info[2])
        same(q_info, run([TIMG, "info", t]), "%s: info of the stale image" % name)
        same(run(["qemu-img", "check", t]), run([TIMG, "check", t]),
             "%s: check of the stale image (their clusters leak)" % name)
        # A read-write open of the stale image drops the extension as qemu-io does.
        shutil.copy(t, q)
        rq = run(["qemu-io", "-c", "write -P 6 9M 4k", q])
        rt = run([TIO, "-c", "write -P 6 9M 4k", t])
        same(rq[0], rt[0], "%s: write to the stale image" % name)
        same(rq[2], rt[2], "%s: same warning on stderr" % name)
        ok(cmpf(q, t), "%s: stale extension dropped as qemu drops it (files identical)"
           % name)


main("tblk-bitmaps.", tests)
