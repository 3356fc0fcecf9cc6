#!/usr/bin/env python3
# daemon-guest.t - end to end with a real emulator: Debian's qemu-system-x86_64 (TCG) boots
# the host's Linux kernel with a busybox initramfs built here, its disk being tblk-daemon's
# vhost-user-blk export (two queues, on an iothread). The guest writes a pattern with
# O_DIRECT, reads it back, discards, flushes and powers off; the host then finds the
# pattern in the image, SIGTERMs the daemon and checks it exits 0 and removes its socket
# and pid file. In between, the daemon is restarted under the running guest (QEMU
# reconnects), and the guest reads its data back and writes more through the new one. Skipped when the emulator, busybox or a kernel with virtio modules is absent.
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lib_guest import cpio, extract_vmlinux, find_kernel  # noqa: E402

BUILD = os.environ.get("TBLK_BUILD", ".")
DAEMON = os.path.join(BUILD, "tools", "tblk-daemon")
MODS = ["virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio",
        "virtio_pci", "virtio_blk"]
n = 0


def ok(cond, what):
    global n
    n += 1
    print("%sok %d - %s" % ("" if cond else "not ", n, what), flush=True)
    return cond


def skip_all(why):
    print("1..0 # SKIP %s" % why)
    sys.exit(0)


INIT = r"""#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
for m in %s; do /bin/busybox insmod /m/$m.ko; done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do /bin/busybox sleep 0.1; i=$((i+1)); done
echo "TBLK-SIZE $(/bin/busybox cat /sys/block/vda/size) Q $(/bin/busybox ls /sys/block/vda/mq | /bin/busybox wc -l)"
/bin/busybox yes tblk-guest-pattern | /bin/busybox head -c 1048576 > /p
/bin/busybox dd if=/p of=/dev/vda bs=65536 seek=16 oflag=direct conv=fsync 2>/dev/null && echo TBLK-WRITE-OK
/bin/busybox dd if=/dev/vda bs=65536 skip=16 count=16 iflag=direct 2>/dev/null | /bin/busybox sha256sum | /bin/busybox sed 's/^/TBLK-READ /'
/bin/busybox blkdiscard -o 4194304 -l 1048576 /dev/vda && echo TBLK-DISCARD-OK
/bin/busybox dd if=/dev/vda bs=65536 skip=64 count=16 iflag=direct 2>/dev/null | /bin/busybox sha256sum | /bin/busybox sed 's/^/TBLK-ZERO /'
/bin/busybox sync
echo TBLK-PHASE1
read go < /dev/console
/bin/busybox dd if=/dev/vda bs=65536 skip=16 count=16 iflag=direct 2>/dev/null | /bin/busybox sha256sum | /bin/busybox sed 's/^/TBLK-REREAD /'
/bin/busybox yes tblk-second-pattern | /bin/busybox head -c 1048576 > /p2
/bin/busybox dd if=/p2 of=/dev/vda bs=65536 seek=96 oflag=direct conv=fsync 2>/dev/null && echo TBLK-WRITE2-OK
/bin/busybox sync
echo TBLK-DONE
/bin/busybox poweroff -f
"""


def main():
    qemu = shutil.which("qemu-system-x86_64")
    busybox = shutil.which("busybox")
    if not qemu or not busybox:
        skip_all("qemu-system-x86_64 or busybox missing")
    if not os.access(DAEMON, os.X_OK):
        skip_all("tblk-daemon not built")
    vmlinuz, _, mods = find_kernel(MODS)
    if not vmlinuz:
        skip_all("no readable kernel with virtio modules in /boot and /lib/modules")
    print("1..12", flush=True)
    tmp = tempfile.mkdtemp(prefix="tblk-guest.", dir=os.environ.get("TMPDIR", "/tmp"))
    daemon = None
    try:
        kernel = extract_vmlinux(vmlinuz, os.path.join(tmp, "vmlinux"))
        ents = [("bin", 0o40755, b""), ("dev", 0o40755, b""), ("proc", 0o40755, b""),
                ("sys", 0o40755, b""), ("m", 0o40755, b""),
                ("dev/console", 0o20600, (5, 1)),
                ("bin/busybox", 0o100755, open(busybox, "rb").read()),
                ("init", 0o100755, (INIT % " ".join(MODS)).encode())]
        for m in MODS:
            ents.append(("m/%s.ko" % m, 0o100644, open(mods[m], "rb").read()))
        initrd = os.path.join(tmp, "initrd")
        cpio(ents, initrd)

        img = os.path.join(tmp, "disk.img")
        with open(img, "wb") as f:
            f.write(b"\xaa" * (8 << 20))
        sock = os.path.join(tmp, "vhost.sock")
        pidf = os.path.join(tmp, "daemon.pid")

        def start_daemon():
            d = subprocess.Popen([
                DAEMON, "--object", "iothread,id=io0",
                "--blockdev", "driver=file,node-name=f,filename=%s" % img,
                "--blockdev", "driver=raw,node-name=disk,file=f",
                "--export", "type=vhost-user-blk,id=e0,node-name=disk,addr.type=unix,"
                "addr.path=%s,writable=on,num-queues=2,iothread=io0" % sock,
                "--pidfile", pidf])
            for _ in range(500):
                if os.path.exists(pidf) or d.poll() is not None:
                    break
                time.sleep(0.01)
            return d

        def stop_daemon(d):
            d.send_signal(signal.SIGTERM)
            try:
                return d.wait(timeout=20)
            except subprocess.TimeoutExpired:
                d.kill()
                d.wait()
                return None

        daemon = start_daemon()
        ok(os.path.exists(sock) and daemon.poll() is None, "tblk-daemon listens")
        cmd = [qemu, "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "256M",
               "-object", "memory-backend-memfd,id=mem,size=256M,share=on",
               "-numa", "node,memdev=mem", "-kernel", kernel, "-initrd", initrd,
               "-append", "console=ttyS0 panic=-1 quiet loglevel=3",
               "-display", "none", "-serial", "stdio", "-monitor", "none",
               "-no-reboot", "-nodefaults",
               "-chardev", "socket,id=c0,path=%s,reconnect=1" % sock,
               "-device", "vhost-user-blk-pci,chardev=c0,num-queues=2"]
        qemu_p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
        outl = []
        phase1 = threading.Event()

        def reader():
            for raw in qemu_p.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                outl.append(line)
                if line.startswith("TBLK-PHASE1"):
                    phase1.set()

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        restarted = None
        if phase1.wait(60):
            # Restart the daemon under the running guest; QEMU reconnects.
            rc1 = stop_daemon(daemon)
            daemon = start_daemon()
            restarted = rc1 == 0 and daemon.poll() is None
            qemu_p.stdin.write(b"go\n")
            qemu_p.stdin.flush()
        try:
            qemu_p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            qemu_p.kill()
            qemu_p.wait()
            outl.append("(timeout)")
        th.join(5)
        out = "\n".join(outl)
        lines = {}
        for line in out.splitlines():
            if line.startswith("TBLK-"):
                key, _, val = line.partition(" ")
                lines[key] = val.strip()
        pattern = (b"tblk-guest-pattern\n" * 60000)[:1 << 20]
        want = hashlib.sha256(pattern).hexdigest()
        if not ok("TBLK-DONE" in lines, "the guest booted and ran its script"):
            print("# " + "\n# ".join(out.splitlines()[-30:]))
        ok(lines.get("TBLK-SIZE", "").startswith("16384 Q 2"),
           "the guest sees 8 MiB on two queues (%s)" % lines.get("TBLK-SIZE"))
        ok("TBLK-WRITE-OK" in lines, "O_DIRECT write with fsync")
        ok(lines.get("TBLK-READ", "").split(" ")[0] == want, "the guest reads its pattern back")
        zeroes = hashlib.sha256(b"\0" * (1 << 20)).hexdigest()
        ok("TBLK-DISCARD-OK" in lines and lines.get("TBLK-ZERO", "").split(" ")[0] == zeroes,
           "discard: the range reads back as zeroes")
        data = open(img, "rb").read()
        ok(data[1 << 20:2 << 20] == pattern and data[:1 << 20] == b"\xaa" * (1 << 20),
           "the image holds the pattern where the guest wrote it, and nothing else changed")
        ok(restarted, "SIGTERM with the guest connected: exit 0; a new daemon starts")
        ok(lines.get("TBLK-REREAD", "").split(" ")[0] == want,
           "after the restart the guest reads its pattern back")
        pattern2 = (b"tblk-second-pattern\n" * 60000)[:1 << 20]
        ok("TBLK-WRITE2-OK" in lines and
           open(img, "rb").read()[6 << 20:7 << 20] == pattern2,
           "and writes through the new daemon land in the image")
        rc = stop_daemon(daemon)
        ok(rc == 0, "SIGTERM: tblk-daemon exits 0 (%s)" % rc)
        ok(not os.path.exists(sock) and not os.path.exists(pidf),
           "its socket and pid file are removed")
        daemon = None
    finally:
        if daemon is not None:
            daemon.kill()
            daemon.wait()
        shutil.rmtree(tmp, ignore_errors=True)


main()
