#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""crash-qcow2.t - tblk-io killed at random moments never corrupts a qcow2 or loses data.

Each round creates a qcow2 (64 KiB or 4 KiB clusters; every third round with
lazy_refcounts=on), feeds tblk-io (cache=writeback, so only flush makes writes durable) a
random workload of allocating writes, overwrites, zero writes, discards and flushes on
stdin, and
- power cut: stops it (SIGSTOP) at a random moment, copies the image file, lets it go on;
- crash: kills it (SIGKILL) at a later random moment.
tblk-io's stdout is line buffered: each command's output follows the prompt printed after
the previous command completed, so the output says which commands completed. For the copy
and for the crashed image:
- `qemu-img check` finds no corruption (leaks allowed: a crash leaks what was allocated
  but not linked); for lazy_refcounts images `qemu-img check -r all` must leave it clean;
- every 512-byte sector reads (through qemu-img convert, qemu's reader) the value it had
  at the last completed flush or one written after it (a pattern byte, or zero for zero
  writes and discards): nothing acknowledged before a completed flush is lost, and no
  sector shows data that was never written there (a freed cluster reused too early would).
The crashed image must then open read-write in tblk-io and take a write.

Limit of the power-cut variant: the copy is taken from the page cache, which holds every
write that returned, flushed or not, in order. It proves the ordering of tblk's writes as
issued, not what a disk that loses or reorders unflushed writes would hold.

TBLK_CRASH_ROUNDS sets the rounds (default 200), TBLK_CRASH_BUDGET a time limit in seconds
after which it stops early (never before 60 rounds; default none), TBLK_CRASH_SEED the seed.
"""
import filecmp
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib_qcow2diff as D  # noqa: E402

TBLK_IO = D.TIO
D.need("qemu-img", "stdbuf")

K, M = 1024, 1024 * 1024
SIZE = 8 * M
SECT = 512
NSECT = SIZE // SECT
PROMPT = "tblk-io> "


def workload(rng, n):
    """Commands as (text, kind, offset, length, value)."""
    cmds = []
    for i in range(n):
        r = rng.random()
        length = rng.choice([SECT, 4 * K, 16 * K, 64 * K, 64 * K + SECT, 200 * K])
        length = rng.randrange(SECT, length + 1, SECT)
        off = rng.randrange(0, SIZE - length + 1, SECT)
        if r < 0.55:
            val = i % 254 + 1
            cmds.append(("write -P %d %d %d" % (val, off, length), "w", off, length, val))
        elif r < 0.67:
            cmds.append(("write -z %d %d" % (off, length), "w", off, length, 0))
        elif r < 0.79:
            cmds.append(("discard %d %d" % (off, length), "d", off, length, 0))
        else:
            cmds.append(("flush", "f", 0, 0, 0))
    return cmds


def wait_stopped(proc):
    """
    Waits until every thread of @proc has stopped: SIGSTOP only asks them to, and a copy
    taken while one still runs is torn. False if the process ended instead.
    """
    while proc.poll() is None:
        states = []
        try:
            for tid in os.listdir("/proc/%d/task" % proc.pid):
                with open("/proc/%d/task/%s/stat" % (proc.pid, tid)) as f:
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
        except OSError:
            states = []     # a thread came or went: look again
        if any(s in "ZX" for s in states):
            return False
        if states and all(s in "Tt" for s in states):
            return True
        time.sleep(0.0005)
    return False


def completed(out):
    """
    How many commands are known to have completed. A prompt is printed after each command
    completed, and a write's result line when it completed; what follows the last newline
    (a prompt, or nothing for a flush) may still sit in the dead process's buffer.
    """
    segs = out.split(PROMPT)
    known = max(len(segs) - 2, 0)
    if len(segs) >= 2 and segs[-1].endswith("\n"):
        known += 1
    return known


def failures(out):
    return [seg for seg in out.split(PROMPT) if "failed" in seg]


def verify(img, cmds, done):
    """None if every sector holds an allowed value, else why not."""
    zero = frozenset((0,))
    durable = [zero] * NSECT       # values possible at the last completed flush
    pending = {}                   # sector -> (value, kind) written since (or in flight)
    # Commands 0..done-1 completed. Unseen, flushes may have completed after them, and the
    # next write or discard may have run: those count as in flight.
    last = done
    while last < len(cmds) and cmds[last][1] == "f":
        last += 1
    for i, (text, kind, off, length, val) in enumerate(cmds[:last + 1]):
        if kind == "f":
            if i < done:
                for s, ops in pending.items():
                    for v, k in ops:
                        # A discard is advisory (partial clusters stay): zero or as before.
                        durable[s] = durable[s] | zero if k == "d" else frozenset((v,))
                pending = {}
            continue
        for s in range(off // SECT, (off + length) // SECT):
            pending.setdefault(s, []).append((val, kind))
    raw = img + ".raw"
    p = subprocess.run(["qemu-img", "convert", "-O", "raw", img, raw], capture_output=True,
                       text=True)
    if p.returncode:
        return "qemu-img convert: " + p.stderr.strip()
    with open(raw, "rb") as f:
        data = f.read()
    os.unlink(raw)
    for s in range(NSECT):
        sec = data[s * SECT:(s + 1) * SECT]
        v = sec[0]
        if sec.count(v) != SECT:
            return "sector %d is not one write's data" % s
        if v not in durable[s] and v not in [pv for pv, k in pending.get(s, ())]:
            writers = [i for i, c in enumerate(cmds) if c[1] != "f" and
                       c[2] <= s * SECT < c[2] + c[3]]
            return ("sector %d reads %d; allowed %s or %s (%d commands completed; "
                    "commands writing it: %s)" % (s, v, sorted(durable[s]), pending.get(s, []),
                                                  done, writers[:8]))
    return None


def check(img, lazy):
    """None if qemu-img check finds no corruption (and -r all repairs a lazy image)."""
    p = subprocess.run(["qemu-img", "check", img], capture_output=True, text=True)
    if p.returncode not in (0, 3):
        return "qemu-img check exit %d: %s" % (p.returncode,
                                               (p.stdout + p.stderr).strip()[:300])
    if lazy:
        cp = img + ".repair"
        shutil.copyfile(img, cp)
        p = subprocess.run(["qemu-img", "check", "-r", "all", cp], capture_output=True,
                           text=True)
        os.unlink(cp)
        if p.returncode != 0:
            return "qemu-img check -r all exit %d" % p.returncode
    return None


def dirty_flag(img):
    p = subprocess.run(["qemu-img", "info", "--output=json", img], capture_output=True,
                       text=True)
    return '"dirty-flag": true' in p.stdout


def dirty_image_tests(tmp, result):
    """
    tblk never leaves a dirty image (it keeps refcounts even with lazy_refcounts=on), but
    qemu does when it crashes: such an image is repaired when opened read-write, as qemu
    does, and checked and repaired by tblk-img as by qemu-img.
    """
    tblk_img = D.TIMG
    base = os.path.join(tmp, "dirty.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on",
                    base, "4M"], check=True)
    subprocess.run(["qemu-io", "-c", "write -P 1 0 64k", "-c", "write -P 2 1M 64k", "-c",
                    "abort", base], capture_output=True)
    result(dirty_flag(base), "qemu-io's crash left a dirty image")
    # qemu rebuilds the refcount structures at the end of the file where tblk repairs them
    # in place: the image end offsets differ and are not compared.
    # -r leaks may not rebuild the refcounts a dirty image needs: qemu-img gives up with
    # "ERROR need to rebuild refcount structures" and "Check failed", exit 1 (stderr
    # compared too, the program name normalised). qemu then closes the image as clean,
    # wrong refcounts and all; tblk leaves it as it was, still dirty, so that the next
    # read-write open repairs it.
    for args in (["check"], ["check", "-r", "all"], ["check", "-r", "leaks"]):
        outs = []
        leaks = args[-1] == "leaks"
        for tool in ("qemu-img", tblk_img):
            img = os.path.join(tmp, "d.qcow2")
            shutil.copyfile(base, img)
            p = subprocess.run([tool] + args + [img], capture_output=True, text=True)
            out = "".join(l for l in p.stdout.splitlines(True)
                          if not l.startswith("Image end offset") or len(args) == 1)
            err = p.stderr.replace(os.path.basename(tool) + ":", "PROG:")
            outs.append((p.returncode, out, None if leaks else dirty_flag(img),
                         err if leaks else ""))
        result(outs[0] == outs[1], "dirty image: %s as qemu-img's (status, stdout, %s)" %
               (" ".join(args), "stderr" if leaks else "dirty flag after"),
               "%r vs %r" % (outs[0], outs[1]))
        if leaks:
            result(filecmp.cmp(base, img, shallow=False), "dirty image: tblk-img check -r "
                   "leaks that gives up leaves the image untouched")
    img = os.path.join(tmp, "d.qcow2")
    shutil.copyfile(base, img)
    p = subprocess.run([TBLK_IO, "-r", "-c", "read -P 2 1M 64k", img], capture_output=True,
                       text=True)
    result(p.returncode == 0 and dirty_flag(img), "dirty image opened read-only: reads, "
           "not repaired", p.stdout + p.stderr)
    p = subprocess.run([TBLK_IO, "-c", "read -P 1 0 64k", "-c", "read -P 2 1M 64k", "-c",
                        "write -P 3 2M 64k", img], capture_output=True, text=True)
    c = subprocess.run(["qemu-img", "check", img], capture_output=True, text=True)
    result(p.returncode == 0 and not dirty_flag(img) and c.returncode == 0,
           "dirty image opened read-write: repaired, marked clean, data intact",
           p.stdout + p.stderr + c.stdout)


def main():
    rounds = int(os.environ.get("TBLK_CRASH_ROUNDS", "200"))
    # Without an explicit count, a loaded machine stops early (at least 60 rounds).
    budget = float(os.environ["TBLK_CRASH_BUDGET"]) if "TBLK_CRASH_BUDGET" in os.environ else None
    began = time.monotonic()
    seed = int(os.environ.get("TBLK_CRASH_SEED", str(int(time.time()))))
    rng = random.Random(seed)
    where = os.environ.get("TMPDIR") or ("/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    tmp = tempfile.mkdtemp(prefix="tblk-crash-", dir=where)
    print("# seed %d (TBLK_CRASH_SEED), %d rounds" % (seed, rounds))
    n = 0
    runtime = {}    # cluster size -> seconds a whole workload takes
    stats = {"killed": 0, "finished": 0, "flushes": 0, "commands": 0}

    def result(ok, what, why=None, todo=None):
        nonlocal n
        n += 1
        print("%s %d - %s%s%s" % ("ok" if ok else "not ok", n, what,
                                  "" if ok else ": " + str(why)[:400],
                                  " # TODO " + todo if todo and not ok else ""))

    try:
        for r in range(rounds):
            if budget and r >= 60 and time.monotonic() - began > budget:
                print("# stopped after %d rounds: the time budget (%.0f s) is spent" %
                      (r, budget))
                break
            lazy = r % 3 == 2
            cluster = "64k" if r % 2 == 0 else "4k"
            name = "round %d (%s clusters%s)" % (r, cluster, ", lazy refcounts" if lazy else "")
            img = os.path.join(tmp, "img.qcow2")
            opts = "cluster_size=%s%s" % (cluster, ",lazy_refcounts=on" if lazy else "")
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, img,
                            str(SIZE)], check=True)
            cmds = workload(rng, 400)
            outp = os.path.join(tmp, "out")
            if cluster not in runtime:
                # Calibration: how long a whole workload runs, to kill within it.
                start = time.monotonic()
                subprocess.run([TBLK_IO, "-t", "writeback", "-f", "qcow2", img],
                               input="".join(c[0] + "\n" for c in cmds), text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                runtime[cluster] = time.monotonic() - start
                print("# a workload on %s clusters runs %.3f s" % (cluster, runtime[cluster]))
                subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, img,
                                str(SIZE)], check=True)
            with open(outp, "w") as out:
                proc = subprocess.Popen(["stdbuf", "-oL", TBLK_IO, "-t", "writeback",
                                         "-f", "qcow2", img], stdin=subprocess.PIPE,
                                        stdout=out, stderr=subprocess.DEVNULL, text=True)
                proc.stdin.write("".join(c[0] + "\n" for c in cmds))
                proc.stdin.close()
                t_stop = rng.uniform(0, runtime[cluster] * 0.9)
                t_kill = rng.uniform(t_stop, runtime[cluster] * 1.05)
                # Power cut: the file as it is while the writer is stopped.
                time.sleep(t_stop)
                cut = None
                if proc.poll() is None:
                    proc.send_signal(signal.SIGSTOP)
                    if wait_stopped(proc):
                        cut = img + ".cut"
                        shutil.copyfile(img, cut)
                        with open(outp) as f:
                            cut_out = f.read()
                    proc.send_signal(signal.SIGCONT)
                time.sleep(max(t_kill - t_stop, 0))
                if proc.poll() is None:
                    proc.kill()
                    stats["killed"] += 1
                else:
                    stats["finished"] += 1
                proc.wait()
            with open(outp) as f:
                text = f.read()
            done = completed(text)
            stats["commands"] += done
            stats["flushes"] += sum(1 for c in cmds[:done] if c[1] == "f")
            fails = failures(text)
            result(not fails, name + ": no command failed", fails[:1])
            if cut:
                why = check(cut, lazy) or verify(cut, cmds, completed(cut_out))
                result(why is None, name + ": power-cut copy consistent", why)
                os.unlink(cut)
            why = check(img, lazy) or verify(img, cmds, done)
            result(why is None, name + ": crashed image consistent", why)
            p = subprocess.run([TBLK_IO, "-c", "write -P 0xee 0 4k", "-c",
                                "read -P 0xee 0 4k", "-f", "qcow2", img],
                               capture_output=True, text=True)
            why = check(img, False) if p.returncode == 0 else p.stdout + p.stderr
            result(why is None, name + ": reopens and writes", why)
        dirty_image_tests(tmp, result)
        print("# %(killed)d rounds killed, %(finished)d ran to the end; %(commands)d "
              "commands and %(flushes)d flushes completed" % stats)
        print("1..%d" % n)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


main()
