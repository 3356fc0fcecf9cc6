# SPDX-License-Identifier: MIT
#
# lib_nbd.py - shared by the NBD server scripts (t/nbd-server.t, t/nbd-server-options.t,
# t/nbd-server-daemon.t, t/nbd-server-hostile.t): results collected and printed as TAP at
# the end, commands run, server processes (tblk-nbd, qemu-nbd, tblk-daemon,
# qemu-storage-daemon) started and waited for until they listen, stopped with SIGTERM, and
# killed if a script ends early, and each script's main around its body.
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

BUILD = os.environ.get("TBLK_BUILD", "build")
NBD = os.path.join(BUILD, "tools", "tblk-nbd")
DAEMON = os.path.join(BUILD, "tools", "tblk-daemon")
tests = []
procs = []


def ok(cond, name, diag=""):
    tests.append((bool(cond), name, diag))


def run(argv, timeout=120, **kw):
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    return p.returncode, p.stdout, p.stderr


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def wait_for(pred, what=None, timeout=20):
    """Polls @pred until it holds; a timeout with @what named is a failed test."""
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.02)
    if what:
        ok(False, "waiting for " + what)
    return False


def port_up(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def start(argv, sock=None, port=None, wait=True):
    """Starts a server (killed at the end if still running) and, with @wait, waits until it
    listens on unix socket @sock or TCP @port of 127.0.0.1, or exits."""
    if sock and os.path.exists(sock):
        os.unlink(sock)
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    procs.append(p)
    if wait and (sock or port):
        wait_for(lambda: (os.path.exists(sock) if sock else port_up(port)) or
                 p.poll() is not None, "server on " + str(sock or port))
    return p


def serve(prog, args, sock=None, port=None):
    """Starts tblk-nbd or qemu-nbd (qemu-nbd's options) on @sock or on TCP @port."""
    where = ["-k", sock] if sock else ["-p", str(port), "-b", "127.0.0.1"]
    # A TCP probe counts as a client: only probe persistent servers.
    return start([prog] + where + args, sock, port, wait=bool(sock) or "-t" in args)


def stop(p):
    """SIGTERM, then SIGKILL after 10 s; p.stderr is left to read."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def uri(sock, name=""):
    return "nbd+unix:///%s?socket=%s" % (name, sock)


def qio(target, *cmds, fmt="raw", extra=()):
    argv = ["qemu-io", "-f", fmt] + list(extra)
    for c in cmds:
        argv += ["-c", c]
    return run(argv + [target])


def main(prefix, body):
    """Runs @body(scratch directory), kills what it left running, prints the TAP results;
    the exit status."""
    d = tempfile.mkdtemp(prefix=prefix)
    try:
        body(d)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(d, ignore_errors=True)
    print("1..%d" % len(tests))
    bad = 0
    for i, (c, name, diag) in enumerate(tests, 1):
        print("%s %d - %s" % ("ok" if c else "not ok", i, name))
        if not c:
            bad += 1
            for line in str(diag).splitlines()[:40]:
                print("# " + line)
    return 1 if bad else 0
