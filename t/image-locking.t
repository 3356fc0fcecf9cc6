#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# Image locking against Debian's qemu 7.2: one process holds an image open (qemu-io or
# tblk-io at its interactive prompt, read-write or read-only, -U, as a backing file, or an
# NBD server), another opens it. Every case runs four ways: qemu holds/qemu opens (the
# reference), qemu holds/tblk opens, tblk holds/qemu opens, tblk holds/tblk opens; exit
# status, stdout (timings filtered) and stderr (program name normalised) must be the same.
# Also: the holder's lock bytes in /proc/locks are the same for qemu-io and tblk-io, and a
# refused open never changed the file.
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BUILD = os.path.abspath(os.environ.get("TBLK_BUILD", "build"))
TOOLS = os.path.join(BUILD, "tools")
TBLK = {"img": os.path.join(TOOLS, "tblk-img"), "io": os.path.join(TOOLS, "tblk-io"),
        "nbd": os.path.join(TOOLS, "tblk-nbd"), "daemon": os.path.join(TOOLS, "tblk-daemon")}
QEMU = {"img": "qemu-img", "io": "qemu-io", "nbd": "qemu-nbd", "daemon": "qemu-storage-daemon"}
results = []


def ok(cond, name, diag="", todo=None):
    results.append((bool(cond), name, diag, todo))


def sha(path):
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def filt(out):
    out = re.sub(r"\d+(\.\d+)? (bytes|[KMGTPE]iB), \d+ ops; .*", "TIMING", out)
    out = re.sub(r"Run completed in [0-9.]+ seconds\.", "Run completed in X seconds.", out)
    return out


def norm(err, tools):
    for t in tools.values():
        err = err.replace(os.path.basename(t) + ":", "PROG:")
    return err


# ---------------------------------------------------------------- images

def make_images(d):
    """The images every case starts from, made by qemu-img/qemu-io."""
    def q(*a):
        subprocess.run(list(a), cwd=d, check=True, capture_output=True)
    q("qemu-img", "create", "-f", "qcow2", "a.qcow2", "4M")
    q("qemu-io", "-c", "write -P 0x11 0 64k", "a.qcow2")
    q("qemu-img", "create", "-f", "raw", "r.raw", "4M")
    q("qemu-io", "-f", "raw", "-c", "write -P 0x22 0 64k", "r.raw")
    q("qemu-img", "create", "-f", "qcow2", "base.qcow2", "4M")
    q("qemu-io", "-c", "write -P 0x33 64k 64k", "base.qcow2")
    q("qemu-img", "create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2")
    q("qemu-img", "create", "-f", "raw", "src.raw", "4M")
    q("qemu-io", "-f", "raw", "-c", "write -P 0x44 0 128k", "src.raw")


# ---------------------------------------------------------------- holders

class Holder:
    """A process holding an image open until stop(); ready once start() returns."""

    def __init__(self, d, tools, kind):
        self.d, self.tools, self.kind = d, tools, kind
        self.proc = self.pid = None

    def start(self):
        args = HOLDERS[self.kind]["args"]
        sock = os.path.join(self.d, "srv.sock")
        pidf = os.path.join(self.d, "srv.pid")
        server = None
        if HOLDERS[self.kind].get("nbd"):
            server = [self.tools["nbd"], "--fork", "-k", sock, "--pid-file", pidf] + args
        elif HOLDERS[self.kind].get("daemon"):
            server = [self.tools["daemon"], "--daemonize", "--pidfile", pidf,
                      "--nbd-server", "addr.type=unix,addr.path=" + sock] + args
        if server:
            # Both fork and let the parent exit once the image is open.
            p = subprocess.run(server, cwd=self.d, capture_output=True, text=True,
                               timeout=60)
            if p.returncode != 0:
                raise RuntimeError("server holder: " + p.stderr)
            with open(pidf) as f:
                self.pid = int(f.read())
            return
        # Interactive: the prompt comes once the image is open (and locked).
        self.proc = subprocess.Popen([self.tools["io"]] + args, cwd=self.d,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        got = b""
        while not got.endswith(b"> "):
            c = os.read(self.proc.stdout.fileno(), 4096)
            if not c:
                raise RuntimeError("io holder died: %r" % self.proc.stderr.read())
            got += c

    def stop(self):
        if self.proc:
            self.proc.stdin.write(b"quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
            self.proc.stdout.close()
            self.proc.stderr.close()
            self.proc = None
        if self.pid:
            # Not our child: poll until it is gone; one that ignores SIGTERM gets SIGKILL.
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
                try:
                    os.kill(self.pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline:
                    try:
                        os.kill(self.pid, 0)
                    except ProcessLookupError:
                        break
                    time.sleep(0.01)
                else:
                    continue
                break
            self.pid = None


# held: the image the probers open; args: the holder's command line after the tool; probers:
# all of them, or only the CORE ones.
HOLDERS = {
    "qcow2-rw": {"held": "a.qcow2", "fmt": "qcow2", "args": ["a.qcow2"], "all": True},
    "qcow2-ro": {"held": "a.qcow2", "fmt": "qcow2", "args": ["-r", "a.qcow2"]},
    "qcow2-ro-U": {"held": "a.qcow2", "fmt": "qcow2", "args": ["-r", "-U", "a.qcow2"]},
    "raw-rw": {"held": "r.raw", "fmt": "raw", "args": ["-f", "raw", "r.raw"], "all": True},
    "raw-ro": {"held": "r.raw", "fmt": "raw", "args": ["-f", "raw", "-r", "r.raw"],
               "all": True},
    "backing": {"held": "base.qcow2", "fmt": "qcow2", "args": ["top.qcow2"]},
    "nbd-rw": {"held": "a.qcow2", "fmt": "qcow2", "nbd": True,
               "args": ["-f", "qcow2", "a.qcow2"]},
    "nbd-ro": {"held": "a.qcow2", "fmt": "qcow2", "nbd": True,
               "args": ["-r", "-f", "qcow2", "a.qcow2"]},
    "nbd-raw-ro": {"held": "r.raw", "fmt": "raw", "nbd": True,
                   "args": ["-r", "-f", "raw", "r.raw"]},
    "daemon-rw": {"held": "a.qcow2", "fmt": "qcow2", "daemon": True,
                  "args": ["--blockdev", "driver=file,node-name=f,filename=a.qcow2",
                           "--blockdev", "driver=qcow2,node-name=q,file=f",
                           "--export", "type=nbd,id=e,node-name=q,writable=on"]},
    "daemon-ro": {"held": "r.raw", "fmt": "raw", "daemon": True,
                  "args": ["--blockdev", "driver=file,node-name=f,filename=r.raw,"
                           "read-only=on", "--export", "type=nbd,id=e,node-name=f"]},
    "daemon-raw-rw": {"held": "r.raw", "fmt": "raw", "daemon": True,
                      "args": ["--blockdev", "driver=file,node-name=f,filename=r.raw",
                               "--blockdev", "driver=raw,node-name=r,file=f",
                               "--export", "type=nbd,id=e,node-name=r,writable=on"]},
}

# Probers: (core, tool, args); I is the held image, F its format.
PROBERS = [
    (1, "img", ["info", "I"]),
    (1, "img", ["info", "-U", "I"]),
    (0, "img", ["info", "--output=json", "I"]),
    (1, "img", ["check", "I"]),
    (0, "img", ["check", "-U", "I"]),
    (0, "img", ["map", "-U", "--output=json", "I"]),
    (0, "img", ["compare", "I", "I"]),
    (0, "img", ["measure", "-O", "qcow2", "I"]),
    (0, "img", ["snapshot", "-l", "I"]),
    (1, "img", ["convert", "-O", "raw", "I", "out.raw"]),
    (0, "img", ["convert", "-U", "-O", "raw", "I", "out.raw"]),
    (0, "img", ["dd", "if=I", "of=out.raw", "-O", "raw"]),
    (0, "img", ["bench", "-c", "1", "I"]),
    (0, "img", ["info", "--image-opts", "driver=F,file.filename=I,file.locking=off"]),
    (0, "img", ["info", "--image-opts", "driver=F,file.filename=I,file.locking=on"]),
    (0, "img", ["info", "--image-opts", "driver=F,file.filename=I,force-share=on"]),
    (0, "img", ["info", "--image-opts", "driver=F,file.filename=I,file.force-share=on"]),
    (0, "img", ["info", "--image-opts", "driver=F,file.filename=I,file.locking=maybe"]),
    (1, "io", ["-r", "-c", "read 0 512", "I"]),
    (1, "io", ["-r", "-U", "-c", "read 0 512", "I"]),
    (0, "io", ["-U", "-c", "read 0 512", "I"]),
    (0, "io", ["-c", "read 0 512", "--image-opts", "driver=F,file.filename=I,force-share=on"]),
    (1, "img", ["check", "-r", "leaks", "I"]),
    (0, "img", ["check", "-U", "-r", "all", "I"]),
    (1, "img", ["resize", "-f", "F", "I", "+1M"]),
    (0, "img", ["snapshot", "-c", "s1", "I"]),
    (0, "img", ["amend", "-f", "F", "-o", "size=8M", "I"]),
    (1, "img", ["create", "-f", "qcow2", "I", "1M"]),
    (0, "img", ["create", "-f", "raw", "I", "1M"]),
    (0, "img", ["convert", "-n", "-O", "F", "src.raw", "I"]),
    (0, "img", ["convert", "-O", "raw", "src.raw", "I"]),
    (0, "img", ["bench", "-w", "-c", "1", "-f", "F", "I"]),
    (1, "io", ["-f", "F", "-c", "write -P 0x55 0 512", "I"]),
    (0, "io", ["-c", "write 0 512", "--image-opts", "driver=F,file.filename=I,file.locking=off"]),
]


def subst(args, h):
    return [a.replace("I", h["held"]).replace("F", h["fmt"]) if a in
            ("I", "F") or "=I" in a or "=F" in a else a for a in args]


def run_prober(d, tools, tool, args):
    p = subprocess.run([tools[tool]] + args, cwd=d, capture_output=True, text=True,
                       timeout=120)
    if os.path.exists(os.path.join(d, "out.raw")):
        os.unlink(os.path.join(d, "out.raw"))
    return (p.returncode, filt(p.stdout), norm(p.stderr, tools))


def fresh_dir(tmp, tmpl, name):
    d = os.path.join(tmp, name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(tmpl, d)
    return d


def compare(name, ref, got, diag_args, todo=None):
    why = ""
    if ref[0] != got[0]:
        why = "exit status %d vs %d" % (ref[0], got[0])
    elif ref[1] != got[1]:
        why = "stdout"
    elif ref[2] != got[2]:
        why = "stderr"
    diag = ""
    if why:
        diag = "%s\nref: %r\ngot: %r" % (" ".join(diag_args), ref, got)
    ok(not why, name + (" (%s)" % why if why else ""), diag, todo)


# ---------------------------------------------------------------- lock bytes

def lock_bytes(path):
    """The byte ranges locked on @path's inode (every holder: only one runs at a time), each
    once: qemu may hold a range through two descriptors for a moment (while it reopens the
    image), which says nothing about which bytes it locks."""
    st = os.stat(path)
    dev = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    found = []
    with open("/proc/locks") as f:
        for line in f:
            fields = line.split()
            if dev in fields:
                i = fields.index(dev)
                found.append("%s %s-%s" % (fields[1], fields[i + 1], fields[i + 2]))
    return sorted(set(found))


def probe_kind(tmp, tmpl, kind, h):
    """Runs the kind's probers under a qemu and a tblk holder: {(i, holder, prober): ...}."""
    probers = [p for p in PROBERS if p[0] or h.get("all")]
    res, locks = {}, {}
    for hname, htools in (("qemu", QEMU), ("tblk", TBLK)):
        d = fresh_dir(tmp, tmpl, "d")
        img = os.path.join(d, h["held"])
        holder = Holder(d, htools, kind)
        holder.start()
        try:
            locks[hname] = [lock_bytes(os.path.join(d, f))
                            for f in ("a.qcow2", "r.raw", "base.qcow2", "top.qcow2")]
            for i, (_, tool, args) in enumerate(probers):
                a = subst(args, h)
                for pname, ptools in (("qemu", QEMU), ("tblk", TBLK)):
                    before = sha(img)
                    r = run_prober(d, ptools, tool, a)
                    changed = sha(img) != before
                    res[(i, hname, pname)] = (r, changed)
                    if changed:
                        # Start again from the same files for the next run.
                        holder.stop()
                        d = fresh_dir(tmp, tmpl, "d")
                        holder = Holder(d, htools, kind)
                        holder.start()
        finally:
            holder.stop()
    ok(locks["qemu"] == locks["tblk"], "%s: tblk holds the lock bytes qemu holds" % kind,
       "qemu %r\ntblk %r" % (locks["qemu"], locks["tblk"]), h.get("todo"))
    for i, (_, tool, args) in enumerate(probers):
        a = subst(args, h)
        ref = res[(i, "qemu", "qemu")]
        for hname, pname in (("qemu", "tblk"), ("tblk", "qemu"), ("tblk", "tblk")):
            r, changed = res[(i, hname, pname)]
            name = "%s held by %s, %s-%s %s" % (kind, hname, pname, tool, " ".join(a))
            todo = h.get("todo") if hname == "tblk" and args[0] in ("resize", "create") \
                else None
            compare(name, ref[0], r, [tool] + a, todo)
            if changed != ref[1]:
                ok(False, name + ": changed the image iff qemu's did", "", todo)
            # qemu-img create -f qcow2 over an image held read-write as raw empties it, then
            # fails to open it as qcow2 (it asks for exclusive write only then): the one
            # refusal that is allowed to have changed the file, and only where qemu's did.
            if pname == "tblk" and r[0] != 0 and (tool, args[0]) != ("img", "create"):
                ok(not changed, name + ": refused, left the image unchanged")


def main():
    tmp = tempfile.mkdtemp(prefix="tblk-lock-")
    try:
        tmpl = os.path.join(tmp, "tmpl")
        os.makedirs(tmpl)
        make_images(tmpl)
        for kind, h in HOLDERS.items():
            probe_kind(tmp, tmpl, kind, h)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("1..%d" % len(results))
    for n, (good, name, diag, todo) in enumerate(results, 1):
        print("%s %d - %s%s" % ("ok" if good else "not ok", n, name,
                                " # TODO " + todo if todo else ""))
        if not good and diag:
            for line in diag.splitlines():
                print("#   " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
