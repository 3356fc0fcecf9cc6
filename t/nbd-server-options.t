#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# tblk-nbd's block device and connection options side by side with qemu-nbd given the same
# command line, on the same kind of image:
# - --discard and --detect-zeroes: zero-filled writes, WRITE_ZEROES with and without
#   NO_HOLE and TRIM sent by qemu-io over NBD leave the image (raw and qcow2) with the same
#   allocation map (qemu-img map --output=json) and the same contents as under qemu-nbd;
# - --cache and --aio modes: both servers start or both refuse with the same message, and
#   data written through a started one reads back;
# - -e: a second client is served while the first stays connected (-e 2), or once the first
#   one leaves (-e 1); NBD_FLAG_CAN_MULTI_CONN as qemu-nbd's for each;
# - -p/-b: a TCP listener on the given address and port.
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib_nbd import NBD, free_port, ok, qio, run, sha, stop, uri  # noqa: E402
from lib_nbd import main as nbd_main, serve as nbd_serve  # noqa: E402


def serve(prog, args, sock):
    """Starts tblk-nbd or qemu-nbd on @sock; returns (process, started)."""
    p = nbd_serve(prog, args, sock=sock)
    return p, p.poll() is None


def progs():
    return [("ours", NBD), ("qemu", "qemu-nbd")]


def zero_semantics(d):
    """Zero writes, WRITE_ZEROES and TRIM leave the same allocation as under qemu-nbd."""
    modes = [[], ["--discard=unmap"], ["--detect-zeroes=on"],
             ["--discard=unmap", "--detect-zeroes=unmap"]]
    for fmt in ["raw", "qcow2"]:
        for mode in modes:
            res = {}
            for who, prog in progs():
                img = os.path.join(d, "z-%s.%s" % (who, fmt))
                sock = os.path.join(d, "z.sock")
                run(["qemu-img", "create", "-q", "-f", fmt, img, "8M"])
                qio(img, "write -P 0x11 0 8M", fmt=fmt)
                p, up = serve(prog, ["-t", "-f", fmt] + mode + [img], sock)
                rc, out, err = qio(uri(sock), "write -P 0 0 1M", "write -z 1M 1M",
                                   "write -z -u 2M 1M", "discard 3M 1M",
                                   "write -P 0 4M 64k", "write -P 0x22 6M 64k")
                stop(p)
                mrc, mout, merr = run(["qemu-img", "map", "--output=json", "-f", fmt, img])
                flat = img + ".flat"
                run(["qemu-img", "convert", "-f", fmt, "-O", "raw", img, flat])
                res[who] = (up, rc, "failed" in out + err, mout, sha(flat))
            name = "%s %s" % (fmt, " ".join(mode) or "defaults")
            ok(res["ours"][:3] == (True, 0, False), "%s: zero writes and TRIM over NBD" % name,
               res["ours"])
            ok(res["ours"][3] == res["qemu"][3], "%s: image map as under qemu-nbd" % name,
               "ours:\n%s\nqemu:\n%s" % (res["ours"][3], res["qemu"][3]))
            ok(res["ours"][4] == res["qemu"][4], "%s: contents as under qemu-nbd" % name)


def cache_aio(d):
    """Each --cache/--aio combination starts or fails as qemu-nbd's; data reads back."""
    combos = [["--cache=writeback"], ["--cache=writethrough"], ["--cache=unsafe"],
              ["--cache=none"], ["--cache=directsync"], ["-n"], ["--aio=threads"],
              ["--aio=io_uring"], ["--aio=native"], ["--aio=native", "--cache=none"],
              ["--aio=io_uring", "--cache=directsync"]]
    for combo in combos:
        res = {}
        for who, prog in progs():
            img = os.path.join(d, "c-%s.raw" % who)
            sock = os.path.join(d, "c.sock")
            run(["qemu-img", "create", "-q", "-f", "raw", img, "4M"])
            p, up = serve(prog, ["-t", "-f", "raw"] + combo + [img], sock)
            data = None
            if up:
                # qemu-nbd listens before it opens the image: whether it started is
                # only known once a client has tried.
                rc, out, err = qio(uri(sock), "write -P 0x5c 4k 1M", "read -P 0x5c 4k 1M")
                data = (rc, "failed" in out + err)
                up = p.poll() is None
            stop(p)
            err = p.stderr.read().replace(img, "IMG").replace(prog, "PROG")
            err = err.replace("tblk-nbd", "PROG")
            res[who] = (up, data, err if not up else "")
        name = " ".join(combo)
        ok(res["ours"][0] == res["qemu"][0] and res["ours"][2] == res["qemu"][2],
           "%s: %s as qemu-nbd" % (name, "starts" if res["qemu"][0] else "refused"),
           "ours %s\nqemu %s" % (res["ours"], res["qemu"]))
        if res["ours"][0]:
            ok(res["ours"][1] == (0, False), "%s: data written reads back" % name, res["ours"])


def shared(d):
    """-e N: how many clients are served at once, and multi-conn."""
    img = os.path.join(d, "e.raw")
    run(["qemu-img", "create", "-q", "-f", "raw", img, "1M"])
    for n in ["1", "2"]:
        flags = {}
        for who, prog in progs():
            sock = os.path.join(d, "e.sock")
            p, up = serve(prog, ["-t", "-e", n, "-f", "raw", img], sock)
            # The first client stays connected until its stdin closes.
            first = subprocess.Popen(["qemu-io", "-f", "raw", uri(sock)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
            first.stdin.write("read 0 4k\n")
            first.stdin.flush()
            line = ""
            while "read 4096/4096" not in line:
                line = first.stdout.readline()
                if not line:
                    break
            second = subprocess.Popen(["nbdinfo", "--json", uri(sock)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
            if n == "2":
                out, _ = second.communicate(timeout=60)
                ok(second.returncode == 0, "-e 2 (%s): a second client while the first "
                   "is connected" % who)
                first.stdin.close()
            else:
                first.stdin.close()
                out, _ = second.communicate(timeout=60)
                ok(second.returncode == 0, "-e 1 (%s): the second client is served once "
                   "the first leaves" % who)
            first.wait(30)
            flags[who] = '"can_multi_conn": true' in out
            stop(p)
        ok(flags["ours"] == flags["qemu"], "-e %s: multi-conn %s as qemu-nbd" %
           (n, "on" if flags["qemu"] else "off"))


def tcp(d):
    img = os.path.join(d, "p.raw")
    run(["qemu-img", "create", "-q", "-f", "raw", img, "1M"])
    port = free_port()
    p = nbd_serve(NBD, ["-t", "-f", "raw", img], port=port)
    rc, out, err = qio("nbd://127.0.0.1:%d" % port, "write -P 7 0 4k", "read -P 7 0 4k")
    ok(rc == 0 and "failed" not in out, "-p PORT -b 127.0.0.1: served over TCP", out + err)
    stop(p)


def body(d):
    zero_semantics(d)
    cache_aio(d)
    shared(d)
    tcp(d)


if __name__ == "__main__":
    sys.exit(nbd_main("tnbdo-", body))
