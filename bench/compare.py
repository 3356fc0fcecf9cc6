#!/usr/bin/env python3
"""Side-by-side benchmark: tblk-img bench vs qemu-img bench vs fio.

Runs the same `bench` argument list through tblk-img and qemu-img (tblk-img
accepts qemu-img's command line) and an equivalent fio job, interleaving the
programs run by run (A B C A B C ...), and reports for each case:

  - IOPS  = number of I/Os / wall time of the I/O loop
            ("Run completed in T seconds." for the *-img programs,
             total_ios / runtime from fio's JSON output for fio);
  - CPU per I/O = (user + system time of the child, from wait4()'s rusage,
            which includes any processes the child itself reaped, e.g. fio's
            job processes) / number of I/Os, in microseconds;

each as median [min..max] over the repeats, and the ratios tblk-img/qemu-img
and tblk-img/fio (median and range of the per-round paired ratios), with
PASS/FAIL against the project targets.  The -i threads cases at depth > 1 also
run "fio-psync": fio with one thread per request in flight, each looping on a
blocking pread(), which is the floor of any thread pool (no hand-off at all);
fio-psync/qemu-img shows how far below qemu-img a pool can get on the machine.

Standard library only.  Run `bench/compare.py --help` and see bench/README.md.
"""

import argparse
import fnmatch
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------
# kind "null": qemu-img bench on the null-co driver (no file, measures the
#              block layer's own per-request cost).
# kind "raw":  a fully written raw file opened with -t none (O_DIRECT).
# pattern "rand": 4 KiB reads with a step that is a multiple of the request
#              size, coprime with the number of blocks and near size/phi, so
#              that the offsets (step modulo image size) visit every block
#              once in a scattered order; fio uses rw=randread.
# pattern "seq": step = request size; fio uses rw=read.
# count: I/Os per run for the full run (about 2-3 s each on the reference
#        machine); --quick divides it, --count overrides it.
# targets: (metric, reference program, comparison, factor)
#        metric "iops": tblk IOPS / ref IOPS must be >= factor
#        metric "cpu":  tblk CPU per I/O / ref CPU per I/O must be <= factor

CASES = [
    dict(name="null-d1", kind="null", depth=1, bs=4096, count=2_000_000,
         targets=[]),
    dict(name="null-d32", kind="null", depth=32, bs=4096, count=4_000_000,
         targets=[("iops", "qemu-img", ">=", 1.0),
                  ("cpu", "qemu-img", "<=", 1.0)]),
    dict(name="raw-native-d1", kind="raw", aio="native", depth=1, bs=4096,
         pattern="rand", fio_engine="libaio", count=40_000, targets=[]),
    dict(name="raw-native-d32", kind="raw", aio="native", depth=32, bs=4096,
         pattern="rand", fio_engine="libaio", count=200_000,
         targets=[("iops", "fio", ">=", 0.97),
                  ("cpu", "qemu-img", "<=", 1.0)]),
    dict(name="raw-threads-d1", kind="raw", aio="threads", depth=1, bs=4096,
         pattern="rand", fio_engine="libaio", count=40_000, targets=[]),
    dict(name="raw-threads-d32", kind="raw", aio="threads", depth=32, bs=4096,
         pattern="rand", fio_engine="libaio", count=200_000,
         targets=[("iops", "qemu-img", ">=", 1.2),
                  ("cpu", "qemu-img", "<=", 0.6)]),
    dict(name="raw-io_uring-d1", kind="raw", aio="io_uring", depth=1,
         bs=4096, pattern="rand", fio_engine="io_uring", count=40_000,
         targets=[]),
    dict(name="raw-io_uring-d32", kind="raw", aio="io_uring", depth=32,
         bs=4096, pattern="rand", fio_engine="io_uring", count=200_000,
         targets=[]),
    dict(name="raw-seq64k-d32", kind="raw", aio="native", depth=32,
         bs=65536, pattern="seq", fio_engine="libaio", count=40_000,
         targets=[]),
    # qcow2 (64 KiB clusters, fully allocated, converted from the raw image):
    # tblk-img and qemu-img on the qcow2, and tblk-img on the raw image it
    # was made from ("tblk-raw"), all in the same rounds.
    dict(name="qcow2-native-d32", kind="qcow2", aio="native", depth=32,
         bs=4096, pattern="rand", count=200_000,
         targets=[("iops", "tblk-raw", ">=", 0.97),
                  ("cpu", "qemu-img", "<=", 0.8)]),
]

QUICK_DIVISOR = 20
QUICK_SIZE = 256 * MiB

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def die(msg):
    sys.stderr.write("compare.py: %s\n" % msg)
    sys.exit(2)


def parse_size(s):
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT]?)(i?[bB])?\s*", s)
    if not m:
        raise argparse.ArgumentTypeError("bad size %r" % s)
    mult = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}
    return int(m.group(1)) * mult[m.group(2).lower()]


def fmt_size(n):
    for unit, mult in (("G", GiB), ("M", MiB), ("K", KiB)):
        if n % mult == 0:
            return "%d%s" % (n // mult, unit)
    return str(n)


def rand_step(size, bs):
    """A step (multiple of bs, < size) whose block count is coprime with the
    number of blocks, so step modulo size visits every block once; chosen
    near size/phi so that consecutive offsets are far apart."""
    blocks = size // bs
    if blocks < 3:
        return bs
    k = int(blocks / ((1 + math.sqrt(5)) / 2))
    for delta in range(blocks):
        for cand in (k + delta, k - delta):
            if 1 < cand < blocks and math.gcd(cand, blocks) == 1:
                return cand * bs
    return bs


def find_program(explicit, env_names, fallbacks):
    if explicit:
        path = explicit if os.sep in explicit else shutil.which(explicit)
        if not path or not os.access(path, os.X_OK):
            die("program not found or not executable: %s" % explicit)
        return path
    for env in env_names:
        v = os.environ.get(env)
        if v:
            return find_program(v, [], [])
    for f in fallbacks:
        if f is None:
            continue
        path = f if os.sep in f else shutil.which(f)
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def run_child(argv, cwd=None, extra_env=None):
    """Start argv (with extra_env added to the environment), wait for it with
    wait4() and return
    (exit status, stdout text, stderr text, user+sys seconds, wall seconds)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
            (os.POSIX_SPAWN_DUP2, err.fileno(), 2),
        ]
        env = dict(os.environ)
        env.setdefault("LC_ALL", "C")
        env.update(extra_env or {})
        old = None
        if cwd:
            old = os.getcwd()
            os.chdir(cwd)
        try:
            t0 = time.monotonic()
            pid = os.posix_spawnp(argv[0], argv, env, file_actions=actions)
        finally:
            if old:
                os.chdir(old)
        while True:
            try:
                _, status, ru = os.wait4(pid, 0)
                break
            except InterruptedError:
                continue
        wall = time.monotonic() - t0
        out.seek(0)
        err.seek(0)
        return (os.waitstatus_to_exitcode(status),
                out.read().decode("utf-8", "replace"),
                err.read().decode("utf-8", "replace"),
                ru.ru_utime + ru.ru_stime, wall)


RUN_RE = re.compile(r"^Run completed in (\d+(?:\.\d+)?) seconds\.$", re.M)
SEND_RE = re.compile(r"^Sending (\d+) (read|write) requests", re.M)


class Program:
    def __init__(self, label, path, kind, note="", env=None):
        self.label = label      # "tblk-img", "qemu-img", "fio", a variant
        self.path = path
        self.kind = kind        # "img", "img-raw", "fio" or "fio-psync"
        self.note = note
        self.env = env or {}    # added to the environment (--variant)


def case_step(case, size):
    if case["kind"] == "null":
        return None
    if case["pattern"] == "rand":
        return rand_step(size, case["bs"])
    return case["bs"]


def img_args(case, count, image, size, fmt=None):
    args = ["bench", "-c", str(count), "-d", str(case["depth"]),
            "-s", str(case["bs"])]
    if case["kind"] == "null":
        args += ["--image-opts", "driver=null-co,size=%d" % size]
    else:
        fmt = fmt or case["kind"]
        if fmt == "qcow2":
            image += ".qcow2"
        args += ["-S", str(case_step(case, size)), "-f", fmt, "-t", "none",
                 "-i", case["aio"], image]
    return args


def prepare_qcow2(raw, qemu, verbose):
    """Create (or reuse) RAW.qcow2: RAW converted by qemu-img, 64k clusters."""
    path = raw + ".qcow2"
    try:
        if os.stat(path).st_mtime >= os.stat(raw).st_mtime:
            if verbose:
                sys.stderr.write("reusing %s\n" % path)
            return path
    except FileNotFoundError:
        pass
    sys.stderr.write("converting %s to qcow2...\n" % raw)
    subprocess.check_call([qemu, "convert", "-f", "raw", "-O", "qcow2", "-o",
                           "cluster_size=65536", raw, path])
    return path


def fio_args(case, count, image, size, extra):
    rw = "randread" if case["pattern"] == "rand" else "read"
    return ["--name=" + case["name"], "--filename=" + image,
            "--rw=" + rw, "--bs=%d" % case["bs"], "--direct=1",
            "--ioengine=" + case["fio_engine"],
            "--iodepth=%d" % case["depth"],
            "--size=%d" % size,
            "--number_ios=%d" % count,
            "--io_size=%d" % (count * case["bs"]),
            "--output-format=json"] + extra


def fio_psync_args(case, count, image, size, extra):
    """The floor of any thread pool: `depth` threads, each looping on a
    blocking pread() of its own, with no hand-off between threads at all
    (fio --ioengine=psync --numjobs=depth --thread, one group)."""
    rw = "randread" if case["pattern"] == "rand" else "read"
    jobs = case["depth"]
    return ["--name=" + case["name"], "--filename=" + image,
            "--rw=" + rw, "--bs=%d" % case["bs"], "--direct=1",
            "--ioengine=psync", "--thread", "--numjobs=%d" % jobs,
            "--group_reporting",
            "--size=%d" % size,
            "--number_ios=%d" % (count // jobs),
            "--io_size=%d" % (count // jobs * case["bs"]),
            "--output-format=json"] + extra


def prog_args(prog, case, count, image, size, extra):
    if prog.kind == "fio-psync":
        return fio_psync_args(case, count, image, size, extra)
    return fio_args(case, count, image, size, extra)


def run_one(prog, case, count, image, size, fio_extra, verbose):
    """Run one program once; returns dict(iops, cpu_us, wall, secs) or
    raises RuntimeError."""
    if prog.kind == "img":
        argv = [prog.path] + img_args(case, count, image, size)
    elif prog.kind == "img-raw":
        argv = [prog.path] + img_args(case, count, image, size, "raw")
    else:
        argv = [prog.path] + prog_args(prog, case, count, image, size,
                                       fio_extra)
        if prog.kind == "fio-psync":
            count = count // case["depth"] * case["depth"]
    if verbose:
        sys.stderr.write("  $ %s\n" % " ".join(argv))
    rc, out, err, cpu, wall = run_child(argv, extra_env=prog.env)
    if rc != 0:
        raise RuntimeError("%s exited with %d: %s" %
                           (prog.label, rc, (err or out).strip()[-500:]))
    if prog.kind in ("img", "img-raw"):
        m = RUN_RE.search(out)
        s = SEND_RE.search(out)
        if not m:
            raise RuntimeError("%s: no 'Run completed in' line in output: %r"
                               % (prog.label, out[-300:]))
        if s and int(s.group(1)) != count:
            raise RuntimeError("%s: sent %s requests, expected %d"
                               % (prog.label, s.group(1), count))
        secs = float(m.group(1))
        ios = count
    else:
        try:
            j = json.loads(out[out.index("{"):])
            job = j["jobs"][0]
            ios = job["read"]["total_ios"]
            secs = job["read"]["runtime"] / 1000.0
        except (ValueError, KeyError, IndexError) as e:
            raise RuntimeError("fio: cannot parse JSON output (%s): %r"
                               % (e, out[-300:]))
        if ios != count:
            raise RuntimeError("fio did %d I/Os, expected %d" % (ios, count))
    if secs <= 0:
        # "Run completed in 0.000 seconds.": count too small for the
        # timer's millisecond resolution.
        secs = 0.0005
    return dict(iops=ios / secs, cpu_us=cpu * 1e6 / ios, wall=wall,
                secs=secs, ios=ios)


def prepare_image(path, size, verbose):
    """Create (or reuse) a fully written, non-sparse raw file of `size`."""
    try:
        st = os.stat(path)
        if st.st_size == size and st.st_blocks * 512 >= size:
            if verbose:
                sys.stderr.write("reusing %s\n" % path)
            return False
    except FileNotFoundError:
        pass
    sys.stderr.write("writing %s (%s, not sparse)...\n" % (path, fmt_size(size)))
    chunk = 4 * MiB
    buf = bytearray(os.urandom(chunk))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done = 0
        while done < size:
            n = min(chunk, size - done)
            # vary the data a little so no two chunks are identical
            buf[0:8] = done.to_bytes(8, "little")
            os.write(fd, memoryview(buf)[:n])
            done += n
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def med(xs):
    return statistics.median(xs)


def fmt_num(x):
    if x >= 100_000:
        return "%.0fk" % (x / 1000)
    if x >= 10_000:
        return "%.1fk" % (x / 1000)
    return "%.0f" % x


def fmt_cpu(x):
    return "%.3f" % x if x < 10 else "%.2f" % x


def fmt_ratio(x):
    return "%.3fx" % x


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(
        description="Side-by-side benchmark of tblk-img bench against "
                    "qemu-img bench and fio (interleaved runs, IOPS and CPU "
                    "time per I/O, ratios with PASS/FAIL).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="cases:\n" + "\n".join(
            "  %-18s %s" % (c["name"], describe(c)) for c in CASES))
    ap.add_argument("--tblk-img", metavar="PATH",
                    help="tblk-img binary (default: $TBLK_IMG, "
                         "$TBLK_BUILD/tools/tblk-img, tools/tblk-img of this "
                         "tree, then tblk-img in PATH). Pass qemu-img here "
                         "for a harness self-check.")
    ap.add_argument("--qemu-img", metavar="PATH",
                    help="qemu-img binary (default: $QEMU_IMG or qemu-img)")
    ap.add_argument("--fio", metavar="PATH",
                    help="fio binary (default: $FIO or fio)")
    ap.add_argument("--no-fio", action="store_true", help="do not run fio")
    ap.add_argument("--fio-extra", action="append", default=[],
                    metavar="ARG", help="extra fio argument (repeatable)")
    ap.add_argument("--variant", action="append", default=[],
                    metavar="LABEL:VAR=VAL[,VAR=VAL..]",
                    help="also run tblk-img with these environment variables "
                         "as program LABEL, in the same rounds, compared with "
                         "qemu-img (e.g. w16:TBLK_POOL_ADAPT=0,"
                         "TBLK_POOL_MAX_THREADS=16); repeatable")
    ap.add_argument("--case", action="append", default=[], metavar="NAME",
                    help="case to run (repeatable, comma lists and shell "
                         "globs allowed, e.g. 'raw-*-d32'); default: all")
    ap.add_argument("--list", action="store_true",
                    help="list the cases and exit")
    ap.add_argument("--repeat", type=int, default=None,
                    help="measured rounds per case (default 5, quick 3)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="unmeasured warm-up rounds per case, at 1/10 of "
                         "the count (default 1, quick 0)")
    ap.add_argument("--count", type=int, default=None,
                    help="I/Os per run for every case (default: per case)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiply the per-case counts by this")
    ap.add_argument("--size", type=parse_size, default=None,
                    help="image size, e.g. 1G (default 1G, quick 256M); also "
                         "the null-co device size")
    ap.add_argument("--dir", default=None,
                    help="directory for the test image (default $TMPDIR or "
                         "/tmp); must be on the disk to measure and support "
                         "O_DIRECT")
    ap.add_argument("--image", default=None,
                    help="use this raw image file (created and filled if "
                         "missing or sparse; never deleted)")
    ap.add_argument("--keep-image", action="store_true",
                    help="do not delete the test image at the end")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: counts / %d, 3 rounds, no warm-up, "
                         "256M image" % QUICK_DIVISOR)
    ap.add_argument("--subtract-startup", action="store_true",
                    help="measure each program's CPU time for a 1-I/O run "
                         "(start-up and exit) per case and subtract it from "
                         "every run's CPU time before dividing by the I/Os")
    ap.add_argument("--markdown", metavar="FILE",
                    help="also write the results as markdown to FILE")
    ap.add_argument("--json", metavar="FILE",
                    help="also write every run's raw figures as JSON")
    ap.add_argument("--fail-exit", action="store_true",
                    help="exit with status 1 if any target FAILs")
    ap.add_argument("-v", "--verbose", action="store_true",
                    help="print every command line")
    a = ap.parse_args()

    if a.list:
        for c in CASES:
            print("%-18s %s" % (c["name"], describe(c)))
        return 0

    repeat = a.repeat if a.repeat is not None else (3 if a.quick else 5)
    warmup = a.warmup if a.warmup is not None else (0 if a.quick else 1)
    size = a.size if a.size is not None else (QUICK_SIZE if a.quick else GiB)
    if repeat < 1:
        die("--repeat must be >= 1")
    if size % 65536:
        die("--size must be a multiple of 64 KiB")

    # select cases
    cases = []
    pats = [p for arg in a.case for p in arg.split(",") if p]
    if not pats:
        cases = list(CASES)
    else:
        for p in pats:
            hit = [c for c in CASES if fnmatch.fnmatchcase(c["name"], p)]
            if not hit:
                die("no case matches %r (see --list)" % p)
            for c in hit:
                if c not in cases:
                    cases.append(c)
        cases.sort(key=CASES.index)

    # programs
    here = os.path.dirname(os.path.abspath(__file__))
    tree_tool = os.path.join(os.path.dirname(here), "tools", "tblk-img")
    build = os.environ.get("TBLK_BUILD")
    tblk = find_program(a.tblk_img, ["TBLK_IMG"],
                        [os.path.join(build, "tools", "tblk-img")
                         if build else None, tree_tool, "tblk-img"])
    if not tblk:
        die("tblk-img not found: build it, set TBLK_BUILD or TBLK_IMG, or "
            "pass --tblk-img=PATH (--tblk-img=qemu-img for a harness "
            "self-check)")
    qemu = find_program(a.qemu_img, ["QEMU_IMG"], ["qemu-img"])
    if not qemu:
        die("qemu-img not found (apt-get install qemu-utils)")
    fio = None
    if not a.no_fio:
        fio = find_program(a.fio, ["FIO"], ["fio"])
        if not fio:
            die("fio not found (apt-get install fio, or pass --no-fio)")
    selfcheck = os.path.realpath(tblk) == os.path.realpath(qemu)

    progs_img = [Program("tblk-img", tblk, "img"),
                 Program("qemu-img", qemu, "img")]
    variants = []
    for v in a.variant:
        label, _, assigns = v.partition(":")
        env_v = dict(x.split("=", 1) for x in assigns.split(",") if x)
        if not label or not env_v or any(not k for k in env_v) or \
                label in ("tblk-img", "qemu-img", "fio", "fio-psync",
                          "tblk-raw") or label in variants:
            die("--variant %r: want LABEL:VAR=VAL[,VAR=VAL..] with a new "
                "label" % v)
        variants.append(label)
        progs_img.append(Program(label, tblk, "img", env=env_v))
    prog_fio = Program("fio", fio, "fio") if fio else None

    # image
    image = None
    made_image = False
    need_raw = any(c["kind"] in ("raw", "qcow2") for c in cases)
    if need_raw:
        if a.image:
            image = os.path.abspath(a.image)
            prepare_image(image, size, a.verbose)
        else:
            d = a.dir or os.environ.get("TMPDIR") or "/tmp"
            if not os.path.isdir(d):
                die("--dir %s is not a directory" % d)
            image = os.path.join(os.path.abspath(d),
                                 "tblk-bench-%s.raw" % fmt_size(size))
            made_image = prepare_image(image, size, a.verbose) or \
                os.path.exists(image)

    qcow2_image = None
    if image and any(c["kind"] == "qcow2" for c in cases):
        qcow2_image = prepare_qcow2(image, qemu, a.verbose)

    env = environment(tblk, qemu, fio, size, repeat, warmup, a, selfcheck)
    sys.stderr.write(env["summary"] + "\n")

    results = []   # per case: dict(case, count, runs{label: [run..]}, error)
    t_start = time.monotonic()
    try:
        for case in cases:
            count = case_count(case, a)
            progs = list(progs_img)
            if case["kind"] == "raw" and prog_fio:
                progs.append(prog_fio)
                if case.get("aio") == "threads" and case["depth"] > 1:
                    progs.append(Program("fio-psync", prog_fio.path,
                                         "fio-psync"))
            if case["kind"] == "qcow2":
                progs.append(Program("tblk-raw", tblk, "img-raw"))
            res = dict(case=case, count=count,
                       runs={p.label: [] for p in progs}, error=None,
                       step=case_step(case, size),
                       cmds={})
            for p in progs:
                if p.kind == "img":
                    res["cmds"][p.label] = " ".join(
                        [p.label] + img_args(case, count, "IMG", size))
                elif p.kind == "img-raw":
                    res["cmds"][p.label] = " ".join(
                        ["tblk-img"] + img_args(case, count, "IMG", size,
                                                "raw"))
                else:
                    res["cmds"][p.label] = " ".join(
                        ["fio"] + prog_args(p, case, count, "IMG", size,
                                            a.fio_extra))
            sys.stderr.write("%s: %d I/Os x %d rounds (+%d warm-up)\n"
                             % (case["name"], count, repeat, warmup))
            try:
                base = {}
                if a.subtract_startup:
                    # CPU of a 1-I/O run: start-up and tear-down cost
                    for p in progs:
                        base[p.label] = med([run_one(
                            p, case, 1, image, size, a.fio_extra,
                            a.verbose)["cpu_us"] for _ in range(3)])
                    res["startup_cpu_us"] = base
                    sys.stderr.write("  start-up CPU (subtracted): %s\n" % (
                        ", ".join("%s %.1f ms" % (k, v / 1000)
                                  for k, v in base.items())))
                for _ in range(warmup):
                    for p in progs:
                        run_one(p, case, max(count // 10, 1), image, size,
                                a.fio_extra, a.verbose)
                for r in range(repeat):
                    line = []
                    # rotate the order each round (A B C, B C A, C A B, ...)
                    # so no program always runs first or after the same one
                    order = progs[r % len(progs):] + progs[:r % len(progs)]
                    for p in order:
                        x = run_one(p, case, count, image, size, a.fio_extra,
                                    a.verbose)
                        if p.label in base:
                            x["cpu_us"] = max(
                                x["cpu_us"] - base[p.label] / count, 0.0)
                        if x["secs"] < 0.2 and not a.quick:
                            sys.stderr.write(
                                "  warning: %s's I/O loop took %.3f s; the "
                                "timer has 1 ms resolution, raise --count\n"
                                % (p.label, x["secs"]))
                        res["runs"][p.label].append(x)
                        line.append("%s %s IOPS %s us/IO" % (
                            p.label, fmt_num(x["iops"]), fmt_cpu(x["cpu_us"])))
                    sys.stderr.write("  round %d: %s\n" % (r + 1,
                                                            "; ".join(line)))
            except RuntimeError as e:
                res["error"] = str(e)
                sys.stderr.write("  ERROR: %s\n" % e)
            results.append(res)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted; reporting what was measured\n")
    finally:
        if image and made_image and not a.image and not a.keep_image:
            for f in (image, qcow2_image):
                try:
                    if f:
                        os.unlink(f)
                except OSError:
                    pass
    elapsed = time.monotonic() - t_start

    summaries = [summarise(r, variants) for r in results]
    text = render_text(summaries, env, elapsed)
    sys.stdout.write(text)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(render_markdown(summaries, env, elapsed))
        sys.stderr.write("markdown written to %s\n" % a.markdown)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(environment=env, results=[
                dict(case=r["case"]["name"], count=r["count"],
                     step=r["step"], error=r["error"], commands=r["cmds"],
                     startup_cpu_us=r.get("startup_cpu_us"),
                     runs=r["runs"]) for r in results]), f, indent=2)
    if any(r["error"] for r in results):
        return 2
    if a.fail_exit and any(v == "FAIL" for s in summaries
                           for t in s["targets"] for v in [t["verdict"]]):
        return 1
    return 0


def describe(c):
    if c["kind"] == "null":
        s = "null-co, %s reads, depth %d" % (fmt_size(c["bs"]), c["depth"])
    elif c["kind"] == "qcow2":
        s = ("qcow2 (64k clusters, allocated) O_DIRECT, %s random reads, "
             "-i %s, depth %d; tblk-raw: tblk-img on the raw source" % (
                 fmt_size(c["bs"]), c["aio"], c["depth"]))
    else:
        s = "raw O_DIRECT, %s %s reads, -i %s, depth %d; fio %s" % (
            fmt_size(c["bs"]),
            "random" if c["pattern"] == "rand" else "sequential",
            c["aio"], c["depth"], c["fio_engine"])
    if c["targets"]:
        s += "; target " + ", ".join(target_str(t) for t in c["targets"])
    return s


def target_str(t):
    metric, ref, op, factor = t
    return "%s %s %.2fx %s" % ("IOPS" if metric == "iops" else "CPU/IO",
                               op, factor, ref)


def case_count(case, a):
    if a.count:
        return a.count
    n = case["count"] * a.scale
    if a.quick:
        n /= QUICK_DIVISOR
    return max(int(n), 1)


def environment(tblk, qemu, fio, size, repeat, warmup, a, selfcheck):
    def version(path, arg):
        if not path:
            return None
        try:
            rc, out, err, _, _ = run_child([path, arg])
            return (out or err).strip().splitlines()[0]
        except (OSError, IndexError):
            return None
    ncpu = os.cpu_count()
    try:
        load = "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = "?"
    env = dict(
        tblk_img=tblk, qemu_img=qemu, fio=fio,
        tblk_version=version(tblk, "--version"),
        qemu_version=version(qemu, "--version"),
        fio_version=version(fio, "--version"),
        cpus=ncpu, loadavg=load, kernel=platform.release(),
        size=size, repeat=repeat, warmup=warmup, quick=a.quick,
        subtract_startup=a.subtract_startup,
        selfcheck=selfcheck,
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
    )
    lines = ["tblk-img: %s (%s)" % (tblk, env["tblk_version"]),
             "qemu-img: %s (%s)" % (qemu, env["qemu_version"])]
    if fio:
        lines.append("fio:      %s (%s)" % (fio, env["fio_version"]))
    lines.append("%d CPUs, load %s, kernel %s, image %s, %d rounds + %d "
                 "warm-up%s" % (ncpu, load, env["kernel"], fmt_size(size),
                                repeat, warmup, ", quick" if a.quick else ""))
    if selfcheck:
        lines.append("HARNESS SELF-CHECK: tblk-img is qemu-img; the tblk-img "
                     "column is qemu-img, not a tblk result")
    env["summary"] = "\n".join(lines)
    return env


def summarise(res, variants=()):
    case = res["case"]
    runs = res["runs"]
    s = dict(name=case["name"], desc=describe(case), count=res["count"],
             step=res["step"], error=res["error"], progs=[], ratios=[],
             targets=[], cmds=res["cmds"])
    for label, xs in runs.items():
        if not xs:
            continue
        iops = [x["iops"] for x in xs]
        cpu = [x["cpu_us"] for x in xs]
        s["progs"].append(dict(label=label, n=len(xs),
                               iops=(med(iops), min(iops), max(iops)),
                               cpu=(med(cpu), min(cpu), max(cpu))))
    # tblk-img against each reference; and the thread-per-request floor
    # (fio-psync) against qemu-img, to show what any thread pool can reach.
    pairs = [("tblk-img", ref)
             for ref in ("qemu-img", "fio", "fio-psync", "tblk-raw")]
    pairs.append(("fio-psync", "qemu-img"))
    pairs += [(v, "qemu-img") for v in variants]
    for label, ref in pairs:
        base = runs.get(label, [])
        other = runs.get(ref, [])
        n = min(len(base), len(other))
        if n == 0:
            continue
        ri = [base[i]["iops"] / other[i]["iops"] for i in range(n)]
        rc = [base[i]["cpu_us"] / other[i]["cpu_us"] for i in range(n)]
        s["ratios"].append(dict(base=label, ref=ref, n=n,
                                iops=(med(ri), min(ri), max(ri)),
                                cpu=(med(rc), min(rc), max(rc))))
    for t in case["targets"]:
        metric, ref, op, factor = t
        r = next((x for x in s["ratios"]
                  if x["ref"] == ref and x["base"] == "tblk-img"), None)
        if r is None:
            verdict, value = "n/a", None
        else:
            value = r[metric][0]
            ok = value >= factor if op == ">=" else value <= factor
            verdict = "PASS" if ok else "FAIL"
        s["targets"].append(dict(text=target_str(t), ref=ref, value=value,
                                 verdict=verdict))
    return s


def rng(t, f):
    return "%s [%s..%s]" % (f(t[0]), f(t[1]), f(t[2]))


def render_text(summaries, env, elapsed):
    out = []
    out.append("")
    out.append(env["summary"])
    out.append("IOPS and CPU us/IO: median [min..max] over rounds; ratios: "
               "median [min..max] of per-round tblk-img/other")
    out.append("")
    for s in summaries:
        out.append("== %s: %s" % (s["name"], s["desc"]))
        out.append("   %d I/Os per run%s" % (
            s["count"], ", step %d" % s["step"] if s["step"] else ""))
        if s["error"]:
            out.append("   ERROR: %s" % s["error"])
        for p in s["progs"]:
            out.append("   %-9s IOPS %-26s CPU us/IO %s" % (
                p["label"], rng(p["iops"], fmt_num), rng(p["cpu"], fmt_cpu)))
        for r in s["ratios"]:
            out.append("   %-18s IOPS %-23s CPU/IO %s" % (
                r["base"] + "/" + r["ref"], rng(r["iops"], fmt_ratio),
                rng(r["cpu"], fmt_ratio)))
        for t in s["targets"]:
            out.append("   target %-28s %s%s" % (
                t["text"], t["verdict"],
                " (%.3fx)" % t["value"] if t["value"] is not None else ""))
        out.append("")
    out.append("total %.0f s" % elapsed)
    out.append("")
    return "\n".join(out)


def render_markdown(summaries, env, elapsed):
    o = []
    o.append("Measured %s; %d CPUs, load average at start %s, kernel %s; "
             "image %s; %d measured rounds (+%d warm-up) per case, programs "
             "interleaved; total %.0f s.%s" % (
                 env["date"], env["cpus"], env["loadavg"], env["kernel"],
                 fmt_size(env["size"]), env["repeat"], env["warmup"], elapsed,
                 " Quick mode." if env["quick"] else "") +
             (" Start-up CPU subtracted." if env["subtract_startup"] else ""))
    o.append("")
    o.append("- tblk-img: %s" % (env["tblk_version"] or "?"))
    o.append("- qemu-img: %s" % (env["qemu_version"] or "?"))
    if env["fio"]:
        o.append("- fio: %s" % (env["fio_version"] or "?"))
    if env["selfcheck"]:
        o.append("")
        o.append("**Harness self-check: the `tblk-img` column is qemu-img "
                 "run a second time, not a tblk result.**")
    o.append("")
    o.append("IOPS and CPU µs per I/O: median [min..max] over the rounds. "
             "Ratios: median [min..max] of the per-round ratios "
             "tblk-img/other.")
    o.append("")
    o.append("| case | program | I/Os per run | IOPS | CPU µs/IO |")
    o.append("| --- | --- | ---: | --- | --- |")
    for s in summaries:
        for p in s["progs"]:
            o.append("| %s | %s | %d | %s | %s |" % (
                s["name"], p["label"], s["count"], rng(p["iops"], fmt_num),
                rng(p["cpu"], fmt_cpu)))
        if s["error"]:
            o.append("| %s | ERROR | | %s | |" % (
                s["name"], s["error"].replace("|", "/")[:200]))
    o.append("")
    o.append("| case | ratio | IOPS | CPU/IO | target | result |")
    o.append("| --- | --- | --- | --- | --- | --- |")
    for s in summaries:
        for r in s["ratios"]:
            tg = [t for t in s["targets"]
                  if t["ref"] == r["ref"] and r["base"] == "tblk-img"]
            o.append("| %s | %s/%s | %s | %s | %s | %s |" % (
                s["name"], r["base"], r["ref"], rng(r["iops"], fmt_ratio),
                rng(r["cpu"], fmt_ratio),
                "; ".join(t["text"] for t in tg) or "–",
                "; ".join(t["verdict"] for t in tg) or "–"))
    o.append("")
    return "\n".join(o)


if __name__ == "__main__":
    sys.exit(main())
