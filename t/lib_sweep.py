# SPDX-License-Identifier: MIT
#
# lib_sweep.py - the runner shared by t/cli-sweep.t and t/cli-sweep2.t: each command line
# runs in a fresh copy of the images once with Debian's qemu-img/qemu-io and once with ours
# (through symlinks named qemu-img and qemu-io put first on PATH); the exit status, stdout
# (filtered by the script), stderr and every file's bytes are compared, and the results
# printed as TAP.
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time

BUILD = os.environ.get("TBLK_BUILD", "build")


def state(d):
    """Every file of directory @d with the MD5 of its bytes, one a line."""
    out = []
    for f in sorted(os.listdir(d)):
        with open(os.path.join(d, f), "rb") as fh:
            out.append("%s %s" % (f, hashlib.md5(fh.read()).hexdigest()))
    return "\n".join(out)


def run_side(tmp, base, side, argv, path, filt, timeout):
    """@argv in a fresh copy of @base with PATH @path: (exit status, filt(stdout), stderr,
    state of the copy afterwards)."""
    d = os.path.join(tmp, side)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(base, d)
    env = dict(os.environ, PATH=path)
    try:
        p = subprocess.run(argv, cwd=d, env=env, capture_output=True, text=True,
                           timeout=timeout, errors="replace", stdin=subprocess.DEVNULL)
        return (p.returncode, filt(p.stdout), p.stderr, state(d))
    except subprocess.TimeoutExpired:
        return ("timeout", "", "", "")


def known_kind(argv, q, t):
    """The reason of a known difference of a generated qemu-io line, or "": the order AIO
    completions print in around later commands' lines (when only the order differs), the
    compressed clusters qemu still writes after a failing one (see t/cli-sweep.t)."""
    if argv[0] != "qemu-io":
        return ""
    same_but_order = (q[0], q[2], q[3]) == (t[0], t[2], t[3]) and \
        sorted(q[1].splitlines()) == sorted(t[1].splitlines())
    if same_but_order and any(a.startswith("aio_") for a in argv):
        return "the order qemu-io prints AIO completions in"
    if q[:3] == t[:3] and "write failed" in q[1] and any(a.startswith("write -c") for a in argv):
        return "qemu writes the compressed clusters in flight after a failing one"
    return ""


def differences(q, t):
    """Diagnostic lines for what differs between two run_side() results."""
    diag = []
    for k, what in enumerate(("exit status", "stdout", "stderr", "images")):
        if q[k] != t[k]:
            diag.append("%s: qemu %r" % (what, q[k]))
            diag.append("%s: ours %r" % (what, t[k]))
    return diag


def sweep(prefix, make_images, lines, filt, timeout=60, known=None, verdict=None):
    """Runs every command line of @lines through both tools and prints the TAP results.
    make_images(base): the images every line starts from; filt(stdout): the normalised
    output; known(argv, q, t, diag): the reason of a known difference (a TODO), or "";
    verdict(argv, q, t): None to compare as usual, or (good, skip reason) for the line.
    SWEEP_ONLY_DIFF in the environment prints only the lines that differ, and the slowest."""
    if not shutil.which("qemu-img") or not shutil.which("qemu-io"):
        print("1..0 # SKIP qemu-img or qemu-io not installed")
        return 0
    only_diff = os.environ.get("SWEEP_ONLY_DIFF")
    tmp = tempfile.mkdtemp(prefix=prefix)
    results = []
    slow = []
    try:
        base = os.path.join(tmp, "base")
        make_images(base)
        bindir = os.path.join(tmp, "bin")
        os.makedirs(bindir)
        for t, n in (("tblk-img", "qemu-img"), ("tblk-io", "qemu-io")):
            os.symlink(os.path.abspath(os.path.join(BUILD, "tools", t)), os.path.join(bindir, n))
        qpath = os.environ["PATH"]
        tpath = bindir + ":" + qpath
        for argv in lines:
            name = " ".join(repr(a) if (" " in a or not a) else a for a in argv)
            if argv[1:3] == ["snapshot", "-c"]:
                results.append((True, name, "", "the snapshot's creation time"))
                continue
            t0 = time.time()
            q = run_side(tmp, base, "q", argv, qpath, filt, timeout)
            t1 = time.time()
            t = run_side(tmp, base, "t", argv, tpath, filt, timeout)
            slow.append((time.time() - t1, t1 - t0, name))
            v = verdict(argv, q, t) if verdict else None
            if v is not None:
                results.append((v[0], name, "", v[1]))
                continue
            diag = differences(q, t)
            why = known(argv, q, t, diag) if known else ""
            results.append((not diag, name, "\n".join(diag), "TODO " + why if why else ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if only_diff:
        for ours, theirs, name in sorted(slow)[-8:]:
            sys.stderr.write("slow: ours %.2fs qemu %.2fs %s\n" % (ours, theirs, name))
    print("1..%d" % len(results))
    for i, (good, name, diag, skip) in enumerate(results, 1):
        if only_diff and good:
            continue
        if skip.startswith("TODO"):
            print("%s %d - %s # %s" % ("ok" if good else "not ok", i, name, skip))
        else:
            print("%s %d - %s%s" % ("ok" if good else "not ok", i, name,
                                    " # SKIP " + skip if skip else ""))
        for line in diag.splitlines():
            print("#   " + line)
    return 0
