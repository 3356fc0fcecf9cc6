#!/usr/bin/env python3
# vhost-guest.py - fio inside a TCG guest whose disk is a vhost-user-blk export served by
# tblk-daemon or by Debian's qemu-storage-daemon, on the same raw and qcow2 images. Not part
# of CI.
#
# Debian's qemu-system-x86_64 (TCG: KVM does not work on nested machines without vmx/svm)
# boots the host's kernel (the ELF inside /boot/vmlinuz-*) with an uncompressed initramfs
# built here: busybox, the virtio modules, Debian's fio with every shared library it needs and
# the dynamic loader. The guest runs the jobs one after the other; before each it waits for a
# line on the console, so the host can sample the back-end's CPU time (utime + stime from
# /proc/PID/stat) right before and right after the job. fio's JSON comes back on the serial
# console. QEMU's own CPU time per I/O is sampled the same way, to show how much of the work
# is the emulation. Rounds are interleaved: in each round every format is run against tblk-daemon,
# then qemu-storage-daemon. Prints one line per job and run, then medians and the ratios
# tblk-daemon / qemu-storage-daemon.
#
# usage: bench/vhost-guest.py [--rounds 3] [--runtime 4] [--build DIR] [--dir DIR] ...
#        (bench/vhost-guest.py --help for the rest; env TBLK_BUILD, TMPDIR)
import argparse
import glob
import json
import lzma
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MODS = ["virtio_ring", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio",
        "virtio_pci", "virtio_blk"]
# name, fio --rw, block size, iodepth
JOBS = [
    ("randread-4k-d32", "randread", "4k", 32),
    ("randwrite-4k-d32", "randwrite", "4k", 32),
    ("randread-4k-d1", "randread", "4k", 1),
    ("read-64k-d8", "read", "64k", 8),
]
PROGS = ["tblk-daemon", "qemu-storage-daemon"]
SIZE = 1 << 30


def log(msg):
    print(msg, flush=True)


def die(msg):
    sys.stderr.write("vhost-guest: %s\n" % msg)
    sys.exit(2)


def find_kernel():
    for vmlinuz in sorted(glob.glob("/boot/vmlinuz-*"), reverse=True):
        ver = os.path.basename(vmlinuz)[len("vmlinuz-"):]
        moddir = "/lib/modules/%s/kernel" % ver
        paths = {}
        for m in MODS:
            found = glob.glob("%s/drivers/**/%s.ko" % (moddir, m), recursive=True)
            if not found:
                break
            paths[m] = found[0]
        if len(paths) == len(MODS) and os.access(vmlinuz, os.R_OK):
            return vmlinuz, paths
    return None, None


def extract_vmlinux(vmlinuz, out):
    """The ELF inside the bzImage (xz): QEMU boots it directly (PVH), which is faster."""
    data = open(vmlinuz, "rb").read()
    off = data.find(b"\xfd7zXZ\x00")
    if off < 0:
        return vmlinuz
    try:
        elf = lzma.LZMADecompressor().decompress(data[off:])
    except lzma.LZMAError:
        return vmlinuz
    if not elf.startswith(b"\x7fELF"):
        return vmlinuz
    with open(out, "wb") as f:
        f.write(elf)
    return out


def shared_libs(binary):
    """Every library `ldd` lists for binary and, recursively, for those libraries, plus the
    dynamic loader: {path as ldd names it: real file}."""
    libs = {}
    todo = [binary]
    seen = set()
    while todo:
        obj = todo.pop()
        if obj in seen:
            continue
        seen.add(obj)
        out = subprocess.run(["ldd", obj], capture_output=True, text=True).stdout
        for line in out.splitlines():
            f = line.split()
            path = None
            if "=>" in f:
                i = f.index("=>")
                if i + 1 < len(f) and f[i + 1].startswith("/"):
                    path = f[i + 1]
            elif f and f[0].startswith("/"):
                path = f[0]  # the loader
            if path and path not in libs:
                libs[path] = os.path.realpath(path)
                todo.append(path)
    return libs


def dynsyms(path, undefined):
    """{name: (version or None, type, size)} of the dynamic symbols path defines (or, with
    undefined, those it needs)."""
    out = subprocess.run(["readelf", "--dyn-syms", "-W", path], capture_output=True,
                         text=True, check=True).stdout
    syms = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) < 8 or not f[0].endswith(":") or f[4] not in ("GLOBAL", "WEAK"):
            continue
        if (f[6] == "UND") != undefined:
            continue
        name, _, ver = f[7].partition("@")
        ver = ver.lstrip("@") or None
        if undefined or ver is None or "@@" in f[7] or name not in syms:
            syms[name] = (ver, f[3], int(f[2], 0) if f[2].isdigit() else 0)
    return syms


def needed(path):
    out = subprocess.run(["readelf", "-d", "-W", path], capture_output=True, text=True,
                         check=True).stdout
    return [line.split("[")[1].split("]")[0] for line in out.splitlines()
            if "(NEEDED)" in line]


def stub_lib(lib, want, out):
    """A library with lib's soname that defines the symbols of want (with their versions) that
    lib defines, as functions returning -1 or zeroed objects: enough for the loader to bind a
    program that never calls them (fio's engines for RBD, GlusterFS, RDMA, NBD, PMEM)."""
    have = dynsyms(lib, False)
    soname = os.path.basename(out)
    nodes = {}
    code = ["/* stub of %s, generated by bench/vhost-guest.py */" % soname]
    for name, (ver, typ, _) in sorted(want.items()):
        if name not in have:
            continue
        _, htyp, size = have[name]
        if htyp == "OBJECT":
            code.append("char %s[%d] __attribute__((aligned(16)));" % (name, max(size, 1)))
        else:
            code.append("long %s(void) { return -1; }" % name)
        nodes.setdefault(ver, []).append(name)
    csrc = out + ".c"
    with open(csrc, "w") as f:
        f.write("\n".join(code) + "\n")
    argv = ["cc", "-shared", "-fPIC", "-O0", "-w", "-nostdlib", "-Wl,-soname," + soname,
            "-o", out, csrc]
    if any(v for v in nodes if v):
        vs = out + ".map"
        with open(vs, "w") as f:
            for ver, names in nodes.items():
                if ver:
                    f.write("%s { global: %s; };\n" % (ver, "; ".join(names)))
        argv.append("-Wl,--version-script=" + vs)
    subprocess.run(argv, check=True)
    return out


def fio_libs(fio, tmp, keep):
    """{path in the guest: file on the host}: the libraries fio needs. Without full, those not
    in keep (nor needed by keep) are replaced by stubs, which takes the initramfs from about
    84 MiB to a few."""
    libs = shared_libs(fio)
    if keep is None:
        return libs
    soname_path = {os.path.basename(p): p for p in libs}
    kept = {}
    for soname in needed(fio):
        path = soname_path.get(soname)
        if path is None:
            raise RuntimeError("ldd does not list %s" % soname)
        if soname.split(".so")[0] in keep:
            kept[path] = libs[path]
            kept.update(shared_libs(path))
    kept.update({p: r for p, r in libs.items() if "ld-linux" in p})
    want = dynsyms(fio, True)
    os.makedirs(os.path.join(tmp, "stubs"), exist_ok=True)
    for soname in needed(fio):
        path = soname_path[soname]
        if path not in kept:
            kept[path] = stub_lib(libs[path], want, os.path.join(tmp, "stubs", soname))
    return kept


def cpio(entries, out):
    """A newc archive, uncompressed: (name, mode, data or (major, minor) for devices)."""
    with open(out, "wb") as f:
        pos = 0
        ino = 1
        for name, mode, data in entries + [("TRAILER!!!", 0, b"")]:
            rdev = (0, 0)
            if isinstance(data, tuple):
                rdev, data = data, b""
            nm = name.encode() + b"\0"
            hdr = "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X" % (
                ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(nm), 0)
            chunk = hdr.encode() + nm
            chunk += b"\0" * ((4 - (pos + len(chunk)) % 4) % 4)
            chunk += data
            chunk += b"\0" * ((4 - (pos + len(chunk)) % 4) % 4)
            f.write(chunk)
            pos += len(chunk)
            ino += 1
    return pos


INIT_HEAD = r"""#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
$B mkdir -p /tmp /dev/shm
$B mount -t tmpfs tmp /tmp
$B mount -t tmpfs shm /dev/shm
for m in %(mods)s; do $B insmod /m/$m.ko; done
i=0; while [ ! -b /dev/vda ] && [ $i -lt 200 ]; do $B sleep 0.1; i=$((i+1)); done
echo none > /sys/block/vda/queue/scheduler 2>/dev/null
export LD_LIBRARY_PATH=%(libpath)s
echo "TBLK-READY $($B cat /sys/block/vda/size) $($B ls /sys/block/vda/mq | $B wc -l)"
"""
INIT_JOB = r"""echo "TBLK-WAIT %(name)s"
read go < /dev/console
echo "TBLK-JSON-BEGIN %(name)s"
/usr/bin/fio --name=%(name)s --filename=/dev/vda --ioengine=libaio --direct=1 --rw=%(rw)s \
  --bs=%(bs)s --iodepth=%(depth)d --runtime=%(runtime)d --time_based --norandommap \
  --randrepeat=0 --clocksource=clock_gettime --output-format=json 2>&1
echo "TBLK-JSON-END %(name)s $?"
"""
INIT_TAIL = r"""echo TBLK-ALL-DONE
$B poweroff -f
"""


def build_initramfs(tmp, busybox, fio, mods, runtime, out, keep):
    libs = fio_libs(fio, tmp, keep)
    dirs = {"bin", "dev", "proc", "sys", "m", "usr", "usr/bin", "tmp"}
    for path in libs:
        d = os.path.dirname(path).lstrip("/")
        while d:
            dirs.add(d)
            d = os.path.dirname(d)
    ents = [(d, 0o40755, b"") for d in sorted(dirs)]
    ents.append(("dev/console", 0o20600, (5, 1)))
    ents.append(("bin/busybox", 0o100755, open(busybox, "rb").read()))
    ents.append(("usr/bin/fio", 0o100755, open(fio, "rb").read()))
    for path, real in sorted(libs.items()):
        ents.append((path.lstrip("/"), 0o100755, open(real, "rb").read()))
    for m in MODS:
        ents.append(("m/%s.ko" % m, 0o100644, open(mods[m], "rb").read()))
    libpath = ":".join(sorted({os.path.dirname(p) for p in libs}))
    init = INIT_HEAD % {"mods": " ".join(MODS), "libpath": libpath}
    for name, rw, bs, depth in JOBS:
        init += INIT_JOB % {"name": name, "rw": rw, "bs": bs, "depth": depth,
                            "runtime": runtime}
    init += INIT_TAIL
    ents.append(("init", 0o100755, init.encode()))
    return cpio(ents, out), len(libs)


def cpu_ticks(pid):
    """utime + stime of a process (all its threads, live and exited), in clock ticks."""
    with open("/proc/%d/stat" % pid) as f:
        s = f.read()
    fields = s[s.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


class Backend:
    def __init__(self, argv, sock):
        self.sock = sock
        if os.path.exists(sock):
            os.unlink(sock)
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not os.path.exists(sock):
            if self.p.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("%s did not create its socket" % argv[0])
            time.sleep(0.02)

    def stop(self):
        """SIGTERM, then SIGKILL after 5 s (qemu-storage-daemon sometimes hangs)."""
        if self.p is None:
            return
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.p = None
        if os.path.exists(self.sock):
            os.unlink(self.sock)


class Guest:
    """QEMU under coreutils' timeout (so it dies even if this script does), with a thread
    that puts the console's lines on a queue."""

    def __init__(self, argv, limit):
        self.p = subprocess.Popen(["timeout", "-k", "5", str(int(limit))] + argv,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        self.lines = queue.Queue()
        self.tail = []
        self.th = threading.Thread(target=self._reader, daemon=True)
        self.th.start()

    def _reader(self):
        for raw in self.p.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            self.tail = (self.tail + [line])[-40:]
            self.lines.put(line)
        self.lines.put(None)

    def expect(self, prefix, timeout, collect=None):
        """The first line starting with prefix; lines before it go to collect."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("timeout waiting for %r" % prefix)
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError("QEMU exited while waiting for %r" % prefix)
            if line.startswith(prefix):
                return line
            if collect is not None:
                collect.append(line)

    def qemu_pid(self):
        """QEMU's pid (the child of timeout)."""
        with open("/proc/%d/task/%d/children" % (self.p.pid, self.p.pid)) as f:
            return int(f.read().split()[0])

    def send(self, text):
        self.p.stdin.write(text.encode())
        self.p.stdin.flush()

    def stop(self, timeout):
        if self.p is None:
            return
        try:
            self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait()
        self.p = None


def parse_fio(lines):
    text = "\n".join(lines)
    start = text.find("{")
    if start < 0:
        raise RuntimeError("no JSON from fio: %s" % text[-500:])
    obj, _ = json.JSONDecoder().raw_decode(text[start:])
    job = obj["jobs"][0]
    if job.get("error"):
        raise RuntimeError("fio error %s" % job["error"])
    ios = job["read"]["total_ios"] + job["write"]["total_ios"]
    iops = job["read"]["iops"] + job["write"]["iops"]
    return iops, ios


def main():
    ap = argparse.ArgumentParser(description="fio in a TCG guest on a vhost-user-blk disk "
                                 "served by tblk-daemon or qemu-storage-daemon")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--runtime", type=int, default=4, help="seconds per fio job")
    ap.add_argument("--build", default=os.environ.get("TBLK_BUILD"),
                    help="tblk build directory (default $TBLK_BUILD, else b/ in the tree)")
    ap.add_argument("--tblk-daemon", help="path of tblk-daemon (default BUILD/tools/)")
    ap.add_argument("--qsd", default="qemu-storage-daemon")
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--fio", default="/usr/bin/fio")
    ap.add_argument("--dir", default=os.environ.get("TMPDIR", "/tmp"),
                    help="where the images go (must be on the disk to measure)")
    ap.add_argument("--formats", default="raw,qcow2")
    ap.add_argument("--queues", type=int, default=1, help="virtio queues (num-queues)")
    ap.add_argument("--smp", type=int, default=1, help="guest vCPUs")
    ap.add_argument("--mem", default="512M", help="guest RAM")
    ap.add_argument("--full-libs", action="store_true",
                    help="copy all of fio's libraries (84 MiB) instead of stubbing those of "
                    "the engines not used here")
    ap.add_argument("--markdown", help="also write the medians as a markdown table here")
    args = ap.parse_args()

    src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    build = args.build or os.path.join(src, "b")
    tblk = args.tblk_daemon or os.path.join(build, "tools", "tblk-daemon")
    progs = {"tblk-daemon": tblk, "qemu-storage-daemon": shutil.which(args.qsd)}
    qemu = shutil.which(args.qemu)
    busybox = shutil.which("busybox")
    for what, path in [("tblk-daemon", tblk), ("qemu-storage-daemon", progs[PROGS[1]]),
                       ("qemu-system-x86_64", qemu), ("busybox", busybox),
                       ("fio", args.fio), ("qemu-img", shutil.which("qemu-img")),
                       ("qemu-io", shutil.which("qemu-io"))]:
        if not path or not os.access(path, os.X_OK):
            die("%s not found" % what)
    vmlinuz, mods = find_kernel()
    if not vmlinuz:
        die("no readable kernel with virtio modules in /boot and /lib/modules")
    formats = args.formats.split(",")

    # Clean up on SIGTERM/SIGINT/SIGHUP too: turn them into SystemExit.
    def on_signal(signum, frame):
        raise SystemExit(128 + signum)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    tmp = tempfile.mkdtemp(prefix="tblk-vhost-guest.", dir=args.dir)
    backend = guest = None
    results = {}  # (fmt, job, prog) -> [(iops, cpu us per io)]
    try:
        log("# uptime: %s" % subprocess.run(["uptime"], capture_output=True,
                                            text=True).stdout.strip())
        kernel = extract_vmlinux(vmlinuz, os.path.join(tmp, "vmlinux"))
        initrd = os.path.join(tmp, "initrd")
        keep = None if args.full_libs else ["libc", "libm", "libaio", "libz", "libnuma"]
        nbytes, nlibs = build_initramfs(tmp, busybox, args.fio, mods, args.runtime, initrd,
                                        keep)
        log("# kernel %s, initramfs %.1f MiB uncompressed (fio + %d libraries)" %
            (vmlinuz, nbytes / 1048576, nlibs))
        images = {}
        for fmt in formats:
            img = os.path.join(tmp, "disk." + fmt)
            subprocess.run(["qemu-img", "create", "-q", "-f", fmt, img, str(SIZE)], check=True)
            # Fill it, so reads hit data and qcow2 clusters are allocated.
            subprocess.run(["qemu-io", "-f", fmt, "-c", "write -P 0x5a 0 %d" % SIZE, img],
                           check=True, stdout=subprocess.DEVNULL)
            images[fmt] = img
        sock = os.path.join(tmp, "vhost.sock")
        hz = os.sysconf("SC_CLK_TCK")
        limit = 180 + len(JOBS) * (args.runtime + 60)
        for rnd in range(1, args.rounds + 1):
            for fmt in formats:
                for prog in PROGS:
                    backend = Backend([
                        progs[prog], "--object", "iothread,id=io0",
                        "--blockdev", "driver=%s,node-name=d,file.driver=file,"
                        "file.filename=%s,file.aio=native,file.cache.direct=on" %
                        (fmt, images[fmt]),
                        "--export", "type=vhost-user-blk,id=e,node-name=d,addr.type=unix,"
                        "addr.path=%s,writable=on,num-queues=%d,iothread=io0" %
                        (sock, args.queues)], sock)
                    pid = backend.p.pid
                    guest = Guest([
                        qemu, "-accel", "tcg,thread=multi", "-cpu", "max",
                        "-smp", str(args.smp), "-m", args.mem,
                        "-object", "memory-backend-memfd,id=mem,size=%s,share=on" % args.mem,
                        "-numa", "node,memdev=mem", "-kernel", kernel, "-initrd", initrd,
                        "-append", "console=ttyS0 panic=-1 quiet loglevel=3",
                        "-display", "none", "-serial", "stdio", "-monitor", "none",
                        "-no-reboot", "-nodefaults",
                        "-chardev", "socket,id=c0,path=%s" % sock,
                        "-device", "vhost-user-blk-pci,chardev=c0,num-queues=%d" %
                        args.queues], limit)
                    try:
                        t0 = time.monotonic()
                        ready = guest.expect("TBLK-READY", 180).split()
                        if ready[1:2] != [str(SIZE // 512)]:
                            raise RuntimeError("the guest's disk: %s" % " ".join(ready))
                        boot = time.monotonic() - t0
                        qpid = guest.qemu_pid()
                        for name, _, _, _ in JOBS:
                            guest.expect("TBLK-WAIT " + name, 60)
                            c0, g0 = cpu_ticks(pid), cpu_ticks(qpid)
                            guest.send("go\n")
                            guest.expect("TBLK-JSON-BEGIN " + name, 60)
                            out = []
                            guest.expect("TBLK-JSON-END " + name, args.runtime + 60, out)
                            c1, g1 = cpu_ticks(pid), cpu_ticks(qpid)
                            iops, ios = parse_fio(out)
                            cpu = (c1 - c0) * 1e6 / hz / max(ios, 1)
                            qcpu = (g1 - g0) * 1e6 / hz / max(ios, 1)
                            results.setdefault((fmt, name, prog), []).append((iops, cpu,
                                                                              qcpu))
                            log("%s %s %s round=%d iops=%.0f ios=%d cpu_us_per_io=%.1f "
                                "qemu_cpu_us_per_io=%.0f boot=%.1fs" %
                                (fmt, name, prog, rnd, iops, ios, cpu, qcpu, boot))
                        guest.expect("TBLK-ALL-DONE", 60)
                    except RuntimeError as e:
                        log("# %s %s round %d failed: %s" % (fmt, prog, rnd, e))
                        for line in guest.tail[-20:]:
                            log("#   | " + line)
                    guest.stop(30)
                    guest = None
                    backend.stop()
                    backend = None
        log("# uptime: %s" % subprocess.run(["uptime"], capture_output=True,
                                            text=True).stdout.strip())
        report(results, formats, args)
    finally:
        if guest is not None:
            guest.stop(0)
        if backend is not None:
            backend.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def report(results, formats, args):
    log("--- medians over %d rounds (%ds per job, %d vCPU, %d queue(s))" %
        (args.rounds, args.runtime, args.smp, args.queues))
    rows = []
    for fmt in formats:
        for name, _, _, _ in JOBS:
            t = results.get((fmt, name, PROGS[0]))
            q = results.get((fmt, name, PROGS[1]))
            if not t or not q:
                log("%s %s: incomplete" % (fmt, name))
                continue
            ti = statistics.median(x[0] for x in t)
            tc = statistics.median(x[1] for x in t)
            qi = statistics.median(x[0] for x in q)
            qc = statistics.median(x[1] for x in q)
            tg = statistics.median(x[2] for x in t)
            qg = statistics.median(x[2] for x in q)
            ri = ti / qi if qi else float("nan")
            rc = tc / qc if qc else float("nan")
            log("%-6s %-17s tblk %6.0f IOPS %6.1f us/IO | qsd %6.0f IOPS %6.1f us/IO | "
                "IOPS %.2fx CPU/IO %.2fx | QEMU us/IO %.0f / %.0f" %
                (fmt, name, ti, tc, qi, qc, ri, rc, tg, qg))
            tr = "%.0f..%.0f" % (min(x[0] for x in t), max(x[0] for x in t))
            qr = "%.0f..%.0f" % (min(x[0] for x in q), max(x[0] for x in q))
            log("%-6s %-17s IOPS ranges: tblk %s, qsd %s" % (fmt, name, tr, qr))
            rows.append("| %s | %s | %.0f [%s] | %.0f [%s] | %.2fx | %.1f / %.1f (%.2fx) | "
                        "%.0f / %.0f |" % (fmt, name, ti, tr, qi, qr, ri, tc, qc, rc, tg, qg))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("| format | job | tblk IOPS [min..max] | qsd IOPS [min..max] | IOPS ratio | "
                    "back-end CPU µs/IO tblk / qsd | QEMU CPU µs/IO tblk / qsd |\n")
            f.write("| --- | --- | --- | --- | --- | --- | --- |\n")
            f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
