#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# tblk-nbd against NBD clients we did not write (qemu-io, qemu-img, nbdinfo, nbdcopy), and
# against qemu-nbd serving the same image as the reference:
# - data written locally reads back over nbd+unix:// and nbd://, data written over NBD reads
#   back locally (raw and qcow2);
# - `qemu-img map --output=json`, `nbdinfo --map` (base:allocation, qemu:allocation-depth
#   over a backing chain) and `nbdinfo --json` agree with qemu-nbd's export of the image;
# - `qemu-img convert` and `nbdcopy` from the export are byte-identical to a local convert,
#   `nbdcopy` into the export writes the same bytes;
# - a read-only export refuses writes and the image stays unchanged;
# - without -t the server exits after its client; --fork/--pid-file; qemu-nbd's messages for
#   bad options.
import json
import os
import signal
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib_nbd import (NBD, free_port, ok, qio, run, serve, sha, stop, uri,  # noqa: E402
                     wait_for)
from lib_nbd import main as nbd_main  # noqa: E402


def data_roundtrip(d, fmt, extra=()):
    img = os.path.join(d, "rt." + fmt)
    sock = os.path.join(d, "rt.sock")
    run(["qemu-img", "create", "-q", "-f", fmt, img, "16M"])
    qio(img, "write -P 0x11 0 1M", "write -P 0x22 3M 64k", "write -z 8M 1M", fmt=fmt)
    p = serve(NBD, ["-t", "-f", fmt] + list(extra) + [img], sock=sock)
    name = " ".join([fmt] + list(extra))
    rc, out, err = qio(uri(sock), "read -P 0x11 0 1M", "read -P 0x22 3M 64k",
                       "read -P 0 8M 1M", "read -P 0 12M 4M")
    ok(rc == 0 and "failed" not in out + err, "%s: local data reads back over NBD" % name,
       out + err)
    rc, out, err = qio(uri(sock), "write -P 0x33 5M 128k", "write -P 0x44 513 1000",
                       "write -z 4096 4096", "write -z -u 3M 4096", "discard 12M 1M",
                       "write -P 0x55 -f 6M 4k", "flush")
    ok(rc == 0 and "error" not in (out + err).lower(), "%s: writes over NBD succeed" % name,
       out + err)
    stop(p)
    ok(p.returncode == 0, "%s: tblk-nbd exits 0 on SIGTERM" % name, p.stderr.read())
    rc, out, err = qio(img, "read -P 0x33 5M 128k", "read -P 0x44 513 1000",
                       "read -P 0x11 0 513", "read -P 0x11 1513 2583", "read -P 0 4096 4096",
                       "read -P 0x11 8192 4096", "read -P 0 3M 4096",
                       "read -P 0x22 3149824 61440", "read -P 0x55 6M 4k", fmt=fmt)
    ok(rc == 0 and "failed" not in out + err, "%s: NBD writes read back locally" % name,
       out + err)
    rc, out, err = run(["qemu-img", "check", "-f", fmt, img]) if fmt == "qcow2" else (0, "", "")
    ok(rc == 0, "%s: image consistent after NBD writes" % name, out + err)


def tcp_and_names(d):
    img = os.path.join(d, "tcp.raw")
    run(["qemu-img", "create", "-q", "-f", "raw", img, "4M"])
    qio(img, "write -P 0x5a 0 4M")
    port = free_port()
    p = serve(NBD, ["-t", "-f", "raw", "-x", "disk0", "-D", "a test disk", img], port=port)
    url = "nbd://127.0.0.1:%d/disk0" % port
    rc, out, err = qio(url, "read -P 0x5a 0 4M")
    ok(rc == 0 and "failed" not in out, "nbd:// over TCP with an export name", out + err)
    rc, out, err = qio("nbd://127.0.0.1:%d/other" % port, "read 0 512")
    ok(rc != 0, "an unknown export name is refused", out + err)
    rc, out, err = run(["nbdinfo", "--list", "--json", "nbd://127.0.0.1:%d" % port])
    try:
        j = json.loads(out)
        e = j["exports"][0]
        ok(len(j["exports"]) == 1 and e["export-name"] == "disk0" and
           e.get("description") == "a test disk" and e["export-size"] == 4 << 20,
           "nbdinfo --list shows the name and description", out)
    except (ValueError, KeyError, IndexError):
        ok(False, "nbdinfo --list shows the name and description", out + err)
    stop(p)


def read_only(d):
    img = os.path.join(d, "ro.qcow2")
    sock = os.path.join(d, "ro.sock")
    run(["qemu-img", "create", "-q", "-f", "qcow2", img, "8M"])
    qio(img, "write -P 0x66 0 2M", fmt="qcow2")
    before = sha(img)
    p = serve(NBD, ["-t", "-r", "-f", "qcow2", img], sock=sock)
    # qemu's client refuses a read-write open of a read-only export (the raw-protocol
    # refusals with EPERM are in t/nbd-server-hostile.t).
    rc, out, err = qio(uri(sock), "write 0 4096")
    ok(rc != 0 and "Permission denied" in out + err,
       "qemu-io cannot open the read-only export read-write", out + err)
    rc, out, err = qio(uri(sock), "read -P 0x66 0 2M", extra=["-r"])
    ok(rc == 0 and "failed" not in out, "read-only export still reads", out + err)
    rc, out, err = run(["nbdinfo", "--json", uri(sock)])
    try:
        e = json.loads(out)["exports"][0]
        ok(e["is_read_only"] and not e["can_trim"] and not e["can_zero"] and
           not e["can_multi_conn"], "nbdinfo: read-only flags as qemu-nbd -r", out)
    except (ValueError, KeyError, IndexError):
        ok(False, "nbdinfo: read-only flags", out + err)
    stop(p)
    ok(sha(img) == before, "read-only export left the image unchanged")


def make_chain(d):
    base = os.path.join(d, "base.qcow2")
    top = os.path.join(d, "top.qcow2")
    run(["qemu-img", "create", "-q", "-f", "qcow2", base, "32M"])
    qio(base, "write -P 1 0 4M", "write -P 2 8M 1M", "write -z 16M 2M", "write -P 3 30M 1M",
        fmt="qcow2")
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top])
    qio(top, "write -P 4 1M 1M", "write -z 8M 512k", "discard 30M 64k", "write -P 5 20M 3M",
        fmt="qcow2")
    return top


def differential_maps(d):
    top = make_chain(d)
    s1 = os.path.join(d, "ours.sock")
    s2 = os.path.join(d, "qemu.sock")
    p1 = serve(NBD, ["-t", "-r", "-A", "-f", "qcow2", top], sock=s1)
    p2 = serve("qemu-nbd", ["-t", "-r", "-A", "-f", "qcow2", top], sock=s2)
    for ctx in ["base:allocation", "qemu:allocation-depth"]:
        a = run(["nbdinfo", "--map=" + ctx, uri(s1)])
        b = run(["nbdinfo", "--map=" + ctx, uri(s2)])
        ok(a[0] == 0 and a[1] == b[1], "nbdinfo --map=%s equals qemu-nbd's" % ctx,
           "ours:\n%s%s\nqemu-nbd:\n%s" % (a[1], a[2], b[1]))
    a = run(["nbdinfo", "--map", "--totals", uri(s1)])
    b = run(["nbdinfo", "--map", "--totals", uri(s2)])
    ok(a[0] == 0 and a[1] == b[1], "nbdinfo --map --totals equals qemu-nbd's", a[1] + b[1])
    a = run(["qemu-img", "map", "--output=json", "-f", "raw", uri(s1)])
    b = run(["qemu-img", "map", "--output=json", "-f", "raw", uri(s2)])
    ok(a[0] == 0 and a[1] == b[1], "qemu-img map --output=json over NBD equals qemu-nbd's",
       a[1] + a[2] + "\n" + b[1])
    a = run(["qemu-img", "map", "-f", "raw", uri(s1)])
    b = run(["qemu-img", "map", "-f", "raw", uri(s2)])
    ok(a[0] == 0 and a[1].replace(s1, "S") == b[1].replace(s2, "S"), "qemu-img map (human) over NBD equals qemu-nbd's",
       a[1] + a[2] + "\n" + b[1])
    ja = run(["nbdinfo", "--json", uri(s1)])
    jb = run(["nbdinfo", "--json", uri(s2)])
    try:
        ea = json.loads(ja[1])["exports"][0]
        eb = json.loads(jb[1])["exports"][0]
        keys = ["contexts", "is_read_only", "can_cache", "can_df", "can_fast_zero",
                "can_flush", "can_fua", "can_multi_conn", "can_trim", "can_zero",
                "block_size_maximum", "export-size", "is_rotational"]
        diff = [k for k in keys if ea.get(k) != eb.get(k)]
        ok(not diff, "nbdinfo --json equals qemu-nbd's (%s)" % ",".join(keys),
           "differs: %s\n%s\n%s" % (diff, ja[1], jb[1]))
        ok(ea["contexts"] == ["base:allocation", "qemu:allocation-depth"],
           "both meta contexts offered with -A", ja[1])
    except (ValueError, KeyError, IndexError):
        ok(False, "nbdinfo --json parses", ja[1] + ja[2])
    # Converting from the export: byte-identical to a local convert.
    local = os.path.join(d, "local.raw")
    run(["qemu-img", "convert", "-O", "raw", top, local])
    out1 = os.path.join(d, "conv.raw")
    rc, o, e = run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri(s1), out1])
    ok(rc == 0 and sha(out1) == sha(local), "qemu-img convert from the export is identical",
       o + e)
    out2 = os.path.join(d, "copy.raw")
    rc, o, e = run(["nbdcopy", uri(s1), out2])
    ok(rc == 0 and sha(out2) == sha(local), "nbdcopy from the export is identical", o + e)
    rc, o, e = run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", uri(s1), top])
    ok(rc == 0, "qemu-img compare export vs image", o + e)
    stop(p1)
    stop(p2)
    return local


def raw_maps(d):
    img = os.path.join(d, "sparse.raw")
    run(["qemu-img", "create", "-q", "-f", "raw", img, "64M"])
    qio(img, "write -P 1 0 64k", "write -P 2 5M 3M", "write -z 20M 1M", "write -P 3 63M 1M")
    s1 = os.path.join(d, "rawours.sock")
    s2 = os.path.join(d, "rawqemu.sock")
    p1 = serve(NBD, ["-t", "-r", "-f", "raw", img], sock=s1)
    p2 = serve("qemu-nbd", ["-t", "-r", "-f", "raw", img], sock=s2)
    a = run(["qemu-img", "map", "--output=json", "-f", "raw", uri(s1)])
    b = run(["qemu-img", "map", "--output=json", "-f", "raw", uri(s2)])
    ok(a[0] == 0 and a[1] == b[1], "sparse raw: qemu-img map over NBD equals qemu-nbd's",
       a[1] + a[2] + "\n" + b[1])
    a = run(["nbdinfo", "--map", uri(s1)])
    b = run(["nbdinfo", "--map", uri(s2)])
    ok(a[0] == 0 and a[1] == b[1], "sparse raw: nbdinfo --map equals qemu-nbd's", a[1] + b[1])
    out = os.path.join(d, "sparse.copy")
    rc, o, e = run(["qemu-img", "convert", "-f", "raw", "-O", "raw", uri(s1), out])
    ok(rc == 0 and sha(out) == sha(img), "sparse raw: convert from the export is identical",
       o + e)
    stop(p1)
    stop(p2)


def maps_after_trim(d):
    """The map after a trim and a zero write through the server shows them, as qemu-nbd's
    does: ours remembers a data extent between queries and must forget it then."""
    maps = []
    for name, prog in [("ours", NBD), ("qemu", "qemu-nbd")]:
        img = os.path.join(d, "trim-%s.raw" % name)
        sock = os.path.join(d, "trim-%s.sock" % name)
        run(["qemu-img", "create", "-q", "-f", "raw", img, "16M"])
        qio(img, "write -P 7 0 16M")
        p = serve(prog, ["-t", "-f", "raw", "--discard=unmap", img], sock=sock)
        before = run(["nbdinfo", "--map", uri(sock)])
        qio(uri(sock), "discard 1M 1M", "write -z -u 4M 1M")
        after = run(["nbdinfo", "--map", uri(sock)])
        stop(p)
        maps.append((before, after))
    (b1, a1), (b2, a2) = maps
    ok(b1[0] == 0 and a1[0] == 0 and b1[1] == b2[1] and a1[1] == a2[1],
       "map before and after a trim and a zero write through the server equals qemu-nbd's",
       "ours:\n%s%s\nqemu-nbd:\n%s%s" % (b1[1], a1[1], b2[1], a2[1]))
    ok(a1[1] != b1[1], "the trim and the zero write show in the map", a1[1])


def nbdcopy_in(d, local):
    img = os.path.join(d, "dst.qcow2")
    sock = os.path.join(d, "dst.sock")
    run(["qemu-img", "create", "-q", "-f", "qcow2", img, "32M"])
    qio(img, "write -P 0x77 0 32M", fmt="qcow2")
    # -e 4: several connections, multi-conn advertised (as qemu-nbd -e 4).
    p = serve(NBD, ["-t", "-e", "4", "-f", "qcow2", "--discard=unmap", img], sock=sock)
    rc, out, err = run(["nbdinfo", "--json", uri(sock)])
    ok('"can_multi_conn": true' in out, "-e 4 advertises multi-conn", out)
    rc, o, e = run(["nbdcopy", "--connections=4", "--requests=16", local, uri(sock)])
    ok(rc == 0, "nbdcopy into the export", o + e)
    stop(p)
    rc, o, e = run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", local, img])
    ok(rc == 0, "nbdcopy into the export wrote the same bytes", o + e)
    rc, o, e = run(["qemu-img", "check", img])
    ok(rc == 0, "image consistent after nbdcopy", o + e)
    # Four writers at once on different regions.
    p = serve(NBD, ["-t", "-e", "4", "-f", "qcow2", img], sock=sock)
    ws = [subprocess.Popen(["qemu-io", "-f", "raw", "-c",
                            "write -P %d %dM 4M" % (0x10 + i, 4 * i), uri(sock)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
          for i in range(4)]
    rcs = [w.wait(60) for w in ws]
    ok(rcs == [0, 0, 0, 0], "four clients write at once", rcs)
    rc, out, err = qio(uri(sock), *["read -P %d %dM 4M" % (0x10 + i, 4 * i) for i in range(4)])
    ok(rc == 0 and "failed" not in out, "their data reads back", out + err)
    stop(p)


def lifecycle(d):
    img = os.path.join(d, "life.raw")
    sock = os.path.join(d, "life.sock")
    run(["qemu-img", "create", "-q", "-f", "raw", img, "1M"])
    p = serve(NBD, ["-f", "raw", img], sock=sock)
    rc, out, err = qio(uri(sock), "read 0 512")
    try:
        p.wait(10)
    except subprocess.TimeoutExpired:
        pass
    ok(rc == 0 and p.returncode == 0, "without -t the server exits after its client",
       "rc=%s exit=%s %s" % (rc, p.returncode, out + err))
    # -e 1 (the default): a second client waits until the first is gone.
    p = serve(NBD, ["-t", "-f", "raw", img], sock=sock)
    a = socket.socket(socket.AF_UNIX)
    a.connect(sock)
    a.settimeout(20)
    first = a.recv(18)
    b = socket.socket(socket.AF_UNIX)
    b.connect(sock)     # lands in the listen backlog
    b.settimeout(0.5)
    try:
        early = b.recv(18)
    except socket.timeout:
        early = b""
    a.close()
    b.settimeout(20)
    try:
        late = early or b.recv(18)
    except socket.timeout:
        late = b""
    ok(len(first) == 18 and early == b"" and len(late) == 18,
       "-e 1: the second client is served once the first left", (first, early, late))
    b.close()
    stop(p)
    pidf = os.path.join(d, "nbd.pid")
    rc, out, err = run([NBD, "--fork", "--pid-file", pidf, "-t", "-k", sock, "-f", "raw", img])
    ok(rc == 0 and os.path.exists(sock), "--fork returns once the socket listens", err)
    pid = int(open(pidf).read()) if os.path.exists(pidf) else 0
    ok(pid > 0, "--pid-file holds the server's pid")
    rc, out, err = qio(uri(sock), "read 0 512")
    ok(rc == 0, "the forked server serves", out + err)
    if pid > 0:
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not os.path.exists(pidf), "pid file removal")
    rc, out, err = run([NBD, "--fork", "-k", sock, "-f", "raw", os.path.join(d, "nope")])
    ok(rc == 1 and "nope" in err, "--fork: the parent fails when the server cannot start", err)


def messages(d):
    img = os.path.join(d, "msg.raw")
    run(["qemu-img", "create", "-q", "-f", "raw", img, "1M"])
    sock = os.path.join(d, "msg.sock")
    cases = [[], [img, img], ["--cache=foo", img], ["--aio=foo", img],
             ["--discard=foo", img], ["--detect-zeroes=foo", img], ["-e", "x", img],
             ["--bogus", img], ["-x"], ["--image-opts", "-f", "raw", img],
             ["--detect-zeroes=unmap", img], ["-x", "n" * 5000, img],
             ["-D", "d" * 5000, img], ["-k", "/nonexistent/dir/s", img],
             ["-p", "abc", "-f", "raw", img],
             ["-k", sock, "-f", "raw", os.path.join(d, "missing.img")]]
    for c in cases:
        a = run([NBD] + c)
        b = run(["qemu-nbd"] + c)
        ea = a[2].replace("tblk-nbd", "PROG")
        eb = b[2].replace("qemu-nbd", "PROG")
        ok(a[0] == b[0] and ea == eb, "error for %s as qemu-nbd's" % " ".join(c)[:60],
           "ours %d: %s\nqemu %d: %s" % (a[0], ea[:300], b[0], eb[:300]))


def body(d):
    for fmt in ["raw", "qcow2"]:
        data_roundtrip(d, fmt)
    # O_DIRECT with Linux AIO (the fast path for raw), where the filesystem allows it.
    probe = os.path.join(d, "direct.probe")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_RDWR | os.O_DIRECT)
        os.close(fd)
        data_roundtrip(d, "raw", ["--cache=none", "--aio=native"])
        data_roundtrip(d, "qcow2", ["--cache=none", "--aio=native"])
    except OSError:
        ok(True, "O_DIRECT unsupported here # SKIP")
    tcp_and_names(d)
    read_only(d)
    local = differential_maps(d)
    raw_maps(d)
    maps_after_trim(d)
    nbdcopy_in(d, local)
    lifecycle(d)
    messages(d)


if __name__ == "__main__":
    sys.exit(nbd_main("tnbds-", body))
