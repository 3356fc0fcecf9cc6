#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# nbd-kernel.t - tblk-nbd against the Linux kernel's NBD client: Debian's nbd-client attaches
# /dev/nbd0 to a tblk-nbd export over TCP and the kernel's nbd driver does the I/O. The
# kernel module rarely loads on the machine running the tests (a container, or a kernel
# whose modules are not installed: `modprobe nbd` is tried and its verdict printed), so the
# client side runs in a guest: Debian's qemu-system-x86_64 (TCG) boots the packaged kernel
# with a busybox initramfs holding nbd.ko, virtio-net and nbd-client with its libraries, and
# reaches the host's tblk-nbd through user-mode networking (10.0.2.2). The guest reads the
# image's data, writes a pattern with O_DIRECT, discards a range and disconnects; the host
# then checks the image. Skipped when the emulator, busybox, nbd-client or a kernel with the
# nbd and virtio-net modules is absent.
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib_guest import cpio, extract_vmlinux, find_kernel  # noqa: E402
from lib_nbd import free_port  # noqa: E402

BUILD = os.environ.get("TBLK_BUILD", ".")
NBD = os.path.join(BUILD, "tools", "tblk-nbd")
MODS = ["virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio",
        "virtio_pci", "failover", "net_failover", "virtio_net", "nbd"]
n = 0


def ok(cond, what, diag=""):
    global n
    n += 1
    print("%sok %d - %s" % ("" if cond else "not ", n, what), flush=True)
    if not cond and diag:
        print("# " + "\n# ".join(str(diag).splitlines()[-30:]), flush=True)
    return cond


def skip_all(why):
    print("1..0 # SKIP %s" % why)
    sys.exit(0)


def host_modprobe():
    """Whether the nbd module loads on this machine, and why not."""
    try:
        p = subprocess.run(["modprobe", "-n", "-v", "nbd"], capture_output=True, text=True,
                           timeout=30)
    except OSError as e:
        return False, str(e)
    if p.returncode == 0:
        return True, ""
    return False, (p.stderr or p.stdout).strip()


def libs_of(binary):
    """The shared libraries @binary loads (ldd), the dynamic loader included."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    paths = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) > parts.index("=>") + 1:
            paths.append(parts[parts.index("=>") + 1])
        elif parts and parts[0].startswith("/"):
            paths.append(parts[0])
    return [p for p in paths if os.path.isfile(p)]


def dirs_of(paths):
    seen = []
    for p in paths:
        parts = p.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in seen:
                seen.append(d)
    return seen


INIT = r"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
for m in %(mods)s; do /bin/busybox insmod /m/$m.ko; done
/bin/busybox ip link set lo up
/bin/busybox ip addr add 10.0.2.15/24 dev eth0
/bin/busybox ip link set eth0 up
/usr/sbin/nbd-client -N tblk 10.0.2.2 %(port)d /dev/nbd0 && echo TBLK-CONNECTED
echo "TBLK-SIZE $(/bin/busybox cat /sys/block/nbd0/size)"
/bin/busybox dd if=/dev/nbd0 bs=65536 count=16 iflag=direct 2>/dev/null | /bin/busybox sha256sum | /bin/busybox sed 's/^/TBLK-READ /'
/bin/busybox yes tblk-kernel-pattern | /bin/busybox head -c 1048576 > /p
/bin/busybox dd if=/p of=/dev/nbd0 bs=65536 seek=32 oflag=direct conv=fsync 2>/dev/null && echo TBLK-WRITE-OK
/bin/busybox dd if=/dev/nbd0 bs=65536 skip=32 count=16 iflag=direct 2>/dev/null | /bin/busybox sha256sum | /bin/busybox sed 's/^/TBLK-REREAD /'
/bin/busybox blkdiscard -o 4194304 -l 1048576 /dev/nbd0 && echo TBLK-DISCARD-OK
/bin/busybox dd if=/dev/nbd0 bs=65536 skip=64 count=16 iflag=direct 2>/dev/null | /bin/busybox sha256sum | /bin/busybox sed 's/^/TBLK-ZERO /'
/usr/sbin/nbd-client -d /dev/nbd0 && echo TBLK-DISCONNECTED
echo TBLK-DONE
/bin/busybox poweroff -f
"""


def main():
    loads, why = host_modprobe()
    print("# host kernel %s: nbd module %s" % (os.uname().release,
          "loads" if loads else "cannot load here (%s); the kernel client runs in a guest"
          % (why or "modprobe failed")), flush=True)
    qemu = shutil.which("qemu-system-x86_64")
    busybox = shutil.which("busybox")
    client = shutil.which("nbd-client") or (
        "/usr/sbin/nbd-client" if os.access("/usr/sbin/nbd-client", os.X_OK) else None)
    if not qemu or not busybox:
        skip_all("qemu-system-x86_64 or busybox missing")
    if not client:
        skip_all("nbd-client (package nbd-client) missing")
    if not os.access(NBD, os.X_OK):
        skip_all("tblk-nbd not built")
    vmlinuz, ver, mods = find_kernel(MODS)
    if not vmlinuz:
        skip_all("no readable kernel with nbd and virtio-net modules in /boot and /lib/modules")
    print("1..9", flush=True)
    print("# guest kernel %s" % ver, flush=True)
    tmp = tempfile.mkdtemp(prefix="tblk-nbdk.", dir=os.environ.get("TMPDIR", "/tmp"))
    server = None
    try:
        kernel = extract_vmlinux(vmlinuz, os.path.join(tmp, "vmlinux"))
        port = free_port()
        libs = libs_of(client)
        files = [("usr/sbin/nbd-client", client)] + [(p.lstrip("/"), p) for p in libs]
        ents = [("bin", 0o40755, b""), ("dev", 0o40755, b""), ("proc", 0o40755, b""),
                ("sys", 0o40755, b""), ("m", 0o40755, b""), ("etc", 0o40755, b""),
                ("dev/console", 0o20600, (5, 1))]
        ents += [(d, 0o40755, b"") for d in dirs_of(["/" + f for f, _ in files])
                 if d not in ("bin", "dev", "proc", "sys", "m", "etc")]
        ents += [("bin/busybox", 0o100755, open(busybox, "rb").read()),
                 ("init", 0o100755,
                  (INIT % {"mods": " ".join(MODS), "port": port}).encode())]
        for name, src in files:
            ents.append((name, 0o100755, open(src, "rb").read()))
        for m in MODS:
            ents.append(("m/%s.ko" % m, 0o100644, open(mods[m], "rb").read()))
        initrd = os.path.join(tmp, "initrd")
        cpio(ents, initrd)

        img = os.path.join(tmp, "disk.img")
        head = (b"tblk-host-data\n" * 70000)[:1 << 20]
        with open(img, "wb") as f:
            f.write(head + b"\xaa" * (7 << 20))
        server = subprocess.Popen([NBD, "-t", "-p", str(port), "-b", "127.0.0.1", "-x", "tblk",
                                   "-f", "raw", "--discard=unmap", img],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        up = False
        for _ in range(500):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                up = True
                break
            except OSError:
                if server.poll() is not None:
                    break
                time.sleep(0.02)
        ok(up, "tblk-nbd listens on 127.0.0.1:%d" % port)
        cmd = [qemu, "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "256M",
               "-kernel", kernel, "-initrd", initrd,
               "-append", "console=ttyS0 panic=-1 quiet loglevel=3",
               "-display", "none", "-serial", "stdio", "-monitor", "none",
               "-no-reboot", "-nodefaults",
               "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0"]
        try:
            p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
            out = p.stdout.decode("utf-8", "replace")
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode("utf-8", "replace") + "\n(timeout)"
        lines = {}
        for line in out.splitlines():
            line = line.rstrip("\r")
            if line.startswith("TBLK-"):
                key, _, val = line.partition(" ")
                lines[key] = val.strip()
        ok("TBLK-CONNECTED" in lines and lines.get("TBLK-SIZE") == "16384",
           "the guest's nbd-client attaches /dev/nbd0: 8 MiB (%s)" % lines.get("TBLK-SIZE"),
           out)
        ok(lines.get("TBLK-READ", "").split(" ")[0] == hashlib.sha256(head).hexdigest(),
           "the kernel reads the image's data")
        pattern = (b"tblk-kernel-pattern\n" * 60000)[:1 << 20]
        want = hashlib.sha256(pattern).hexdigest()
        ok("TBLK-WRITE-OK" in lines and lines.get("TBLK-REREAD", "").split(" ")[0] == want,
           "O_DIRECT write with fsync, read back")
        zeroes = hashlib.sha256(b"\0" * (1 << 20)).hexdigest()
        ok("TBLK-DISCARD-OK" in lines and lines.get("TBLK-ZERO", "").split(" ")[0] == zeroes,
           "blkdiscard: the range reads back as zeroes")
        ok("TBLK-DISCONNECTED" in lines and "TBLK-DONE" in lines,
           "nbd-client -d disconnects; the guest ran its whole script", out)
        data = open(img, "rb").read()
        ok(data[2 << 20:3 << 20] == pattern, "the image holds the pattern where the guest "
           "wrote it")
        ok(data[:1 << 20] == head and data[1 << 20:2 << 20] == b"\xaa" * (1 << 20) and
           data[3 << 20:4 << 20] == b"\xaa" * (1 << 20) and
           data[4 << 20:5 << 20] == b"\0" * (1 << 20) and
           data[5 << 20:] == b"\xaa" * (3 << 20), "the rest of the image is as it was, the "
           "discarded range is zero")
        server.send_signal(signal.SIGTERM)
        try:
            rc = server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            rc = None
        ok(rc == 0, "tblk-nbd exits 0 on SIGTERM (%s)" % rc)
        server = None
    finally:
        if server is not None:
            server.kill()
            server.wait()
        shutil.rmtree(tmp, ignore_errors=True)


main()
