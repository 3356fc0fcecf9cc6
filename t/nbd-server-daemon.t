#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# tblk-daemon's NBD server (tools/export-nbd-daemon.c) side by side with
# qemu-storage-daemon given the same --blockdev/--nbd-server/--export options: what nbdinfo
# sees (--json flags and contexts, both maps) must match, data written through one export
# reads back, a read-only export refuses a read-write open, and both daemons refuse the same
# bad --nbd-server/--export options. Skipped while the build has no tblk-daemon.
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib_nbd import DAEMON, free_port, ok, run, start, stop, uri  # noqa: E402
from lib_nbd import main as nbd_main  # noqa: E402


def body(d):
    base = os.path.join(d, "base.qcow2")
    top = os.path.join(d, "top.qcow2")
    run(["qemu-img", "create", "-q", "-f", "qcow2", base, "16M"])
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 1 0 2M", "-c", "write -z 4M 1M", base])
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top])
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 2 1M 2M", "-c", "write -P 3 10M 64k", top])
    # read-only: both daemons hold the image at once, which image locking allows readers
    bd = "driver=qcow2,node-name=disk,read-only=on,file.driver=file,file.filename=" + top
    socks = {}
    procs = {}
    for who, prog in [("ours", DAEMON), ("qemu", "qemu-storage-daemon")]:
        socks[who] = os.path.join(d, who + ".sock")
        procs[who] = start([prog] + ["--blockdev", bd, "--nbd-server",
                                  "addr.type=unix,addr.path=" + socks[who],
                                  "--export", "type=nbd,id=e0,node-name=disk,name=vol,"
                                  "description=a volume,allocation-depth=on,writable=off"],
                           socks[who])
    res = {}
    for who in socks:
        res[who] = [run(["nbdinfo", "--json", uri(socks[who], "vol")]),
                    run(["nbdinfo", "--map=base:allocation", uri(socks[who], "vol")]),
                    run(["nbdinfo", "--map=qemu:allocation-depth", uri(socks[who], "vol")]),
                    run(["qemu-img", "map", "--output=json", "-f", "raw",
                         uri(socks[who], "vol")])]
    try:
        ea = json.loads(res["ours"][0][1])["exports"][0]
        eb = json.loads(res["qemu"][0][1])["exports"][0]
        keys = ["export-name", "description", "contexts", "is_read_only", "can_flush",
                "can_fua", "can_trim", "can_zero", "can_cache", "can_multi_conn",
                "export-size"]
        diff = [k for k in keys if ea.get(k) != eb.get(k)]
        ok(not diff, "nbdinfo --json as qemu-storage-daemon's", "differs: %s" % diff)
    except (ValueError, KeyError, IndexError):
        ok(False, "nbdinfo --json parses", res["ours"][0][1] + res["ours"][0][2])
    for i, what in [(1, "base:allocation map"), (2, "allocation-depth map"),
                    (3, "qemu-img map --output=json")]:
        ok(res["ours"][i][0] == 0 and res["ours"][i][1] == res["qemu"][i][1],
           "%s as qemu-storage-daemon's" % what, res["ours"][i][1] + res["ours"][i][2] +
           "\n" + res["qemu"][i][1])
    rc, out, err = run(["qemu-io", "-f", "raw", "-c", "write 0 512", uri(socks["ours"], "vol")])
    ok(rc != 0 and "Permission denied" in out + err, "writable=off: no read-write open",
       out + err)
    for p in procs.values():
        stop(p)

    # A writable export over TCP-less unix socket, data both ways.
    img = os.path.join(d, "w.raw")
    run(["qemu-img", "create", "-q", "-f", "raw", img, "8M"])
    s = os.path.join(d, "w.sock")
    p = start([DAEMON] + ["--blockdev", "driver=file,node-name=f,filename=" + img,
                       "--nbd-server", "addr.type=unix,addr.path=" + s,
                       "--export", "type=nbd,id=e1,node-name=f,writable=on"], s)
    rc, out, err = run(["qemu-io", "-f", "raw", "-c", "write -P 0x42 1M 1M", "-c", "flush",
                        uri(s, "f")])
    ok(rc == 0, "write through the daemon's export (name defaults to the node name)",
       out + err)
    stop(p)
    rc, out, err = run(["qemu-io", "-f", "raw", "-c", "read -P 0x42 1M 1M", img])
    ok(rc == 0 and "failed" not in out, "the data is in the image", out + err)

    # An export on an iothread, over TCP: connections move to the iothread's loop.
    port = free_port()
    p = start([DAEMON, "--object", "iothread,id=io0",
               "--blockdev", "driver=file,node-name=f,filename=" + img,
               "--nbd-server", "addr.type=inet,addr.host=127.0.0.1,addr.port=%d" % port,
               "--export", "type=nbd,id=e2,node-name=f,name=io,writable=on,iothread=io0"],
              port=port)
    url = "nbd://127.0.0.1:%d/io" % port
    rc, out, err = run(["nbdcopy", "--connections=2", img, url])
    ok(rc == 0, "nbdcopy into an export on an iothread over TCP", out + err)
    rc, out, err = run(["qemu-io", "-f", "raw", "-c", "read -P 0x42 1M 1M", "-c",
                        "write -P 0x43 2M 64k", "-c", "read -P 0x43 2M 64k", url])
    ok(rc == 0 and "failed" not in out, "reads and writes through the iothread", out + err)
    stop(p)
    ok(p.returncode == 0, "the daemon exits 0 on SIGTERM", p.stderr.read())

    for args in [["--nbd-server", "addr.type=foo"], ["--nbd-server", "addr.type=inet"],
                 ["--nbd-server", "addr.type=unix"],
                 ["--nbd-server", "addr.type=unix,addr.path=%s/x.sock,bogus=1" % d],
                 ["--blockdev", "driver=file,node-name=f,filename=" + img,
                  "--export", "type=nbd,id=e0,node-name=f"]]:
        a = run([DAEMON] + args, timeout=10)
        b = run(["qemu-storage-daemon"] + args, timeout=10)
        ea = a[2].replace("tblk-daemon", "PROG")
        eb = b[2].replace("qemu-storage-daemon", "PROG")
        ok(a[0] == b[0] and ea == eb, "error for %s as qemu-storage-daemon's" % " ".join(args),
           "ours %d: %s\nqemu %d: %s" % (a[0], ea, b[0], eb))


def main():
    if not os.path.exists(DAEMON):
        print("1..0 # SKIP no tblk-daemon in this build")
        return 0
    return nbd_main("tnbdd-", body)


if __name__ == "__main__":
    sys.exit(main())
