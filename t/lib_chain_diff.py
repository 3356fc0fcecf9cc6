# SPDX-License-Identifier: MIT
#
# lib_chain_diff.py - shared by t/img-rebase.t and t/img-commit.t: backing chains built by
# qemu-img/qemu-io once per scenario, copied to a qemu side and a tblk side, one command run
# on each, and the verdict: exit status, stdout (progress lines normalised where qemu's are
# timing-dependent), stderr (program name normalised), then every file of the scenario with
# cmp (or qemu-img compare where layout may differ), and qemu-img check of our qcow2 files.
import os
import shutil
import subprocess

BUILD = os.environ.get("TBLK_BUILD", "build")
TIMG = os.path.abspath(os.path.join(BUILD, "tools", "tblk-img"))
TIO = os.path.abspath(os.path.join(BUILD, "tools", "tblk-io"))


class Holder:
    """An io tool (qemu-io or tblk-io) holding an image open at its interactive prompt, so
    its image locks are in place once start() returns, until stop()."""

    def __init__(self, tool, args, cwd):
        self.proc = subprocess.Popen([tool] + args, cwd=cwd, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        got = b""
        while not got.endswith(b"> "):
            c = os.read(self.proc.stdout.fileno(), 4096)
            if not c:
                raise RuntimeError("holder died: %r" % self.proc.stderr.read())
            got += c

    def stop(self):
        self.proc.stdin.write(b"quit\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.proc.stdout.close()
        self.proc.stderr.close()


def run(argv, cwd):
    # bytes, not text: universal newlines would turn the progress line's \r into \n
    p = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=120)
    return (p.returncode, p.stdout.decode("utf-8", "replace"),
            p.stderr.decode("utf-8", "replace"))


def sh(cmds, cwd):
    for c in cmds:
        p = subprocess.run(c, cwd=cwd, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError("setup failed: %s: %s" % (" ".join(c), p.stderr))


def norm_err(err, prog):
    return err.replace(prog + ":", "PROG:")


def progress_ends(out):
    """Only the first and the last progress figure (qemu's job prints a timing-dependent
    number of them in between)."""
    if "\r" not in out:
        return out
    parts = out.split("\r")
    figs = [p for p in parts[:-1]]
    return "%s\r%s\r%s" % (figs[0], figs[-1], parts[-1])


class Harness:
    def __init__(self, root):
        self.root = root
        self.tests = []
        self.protos = {}

    def ok(self, cond, name, diag=""):
        self.tests.append((bool(cond), name, diag))

    def proto(self, key, setup):
        """The scenario's files, made once with qemu's tools; the path of its directory."""
        if key not in self.protos:
            d = os.path.join(self.root, "proto", str(len(self.protos)))
            os.makedirs(d)
            setup(d)
            self.protos[key] = d
        return self.protos[key]

    def case(self, name, key, setup, sub, args, files, compare=(), todo=None,
             norm_progress=False, check=True, cwd="", hold=None, hold_tblk=False):
        """Runs `tool SUB ARGS` in both copies of the scenario (in subdirectory @cwd).
        @files must be byte-identical, @compare only equal in content (qemu-img compare).
        With @hold, qemu-io HOLD (tblk-io HOLD on our side with @hold_tblk) holds an image
        open meanwhile."""
        src = self.proto(key, setup)
        res = {}
        for side, tool in (("q", "qemu-img"), ("t", TIMG)):
            sd = os.path.join(self.root, side)
            shutil.rmtree(sd, ignore_errors=True)
            shutil.copytree(src, sd, symlinks=True)
            argv = [a.replace("@SIDE@", sd) for a in args]
            holder = None
            if hold:
                holder = Holder(TIO if side == "t" and hold_tblk else "qemu-io", hold, sd)
            try:
                rc, out, err = run([tool, sub] + argv, os.path.join(sd, cwd))
            finally:
                if holder:
                    holder.stop()
            if norm_progress:
                out = progress_ends(out)
            res[side] = (rc, out, norm_err(err, os.path.basename(tool)))
        q, t = res["q"], res["t"]
        why = ""
        if q[0] != t[0]:
            why = "exit status %d vs %d" % (q[0], t[0])
        elif q[1] != t[1]:
            why = "stdout %r vs %r" % (q[1], t[1])
        elif q[2] != t[2]:
            why = "stderr %r vs %r" % (q[2], t[2])
        if not why:
            why = self.same_files(files, compare)
        if not why and check:
            for f in list(files) + list(compare):
                if not f.endswith("qcow2") or not os.path.exists(
                        os.path.join(self.root, "t", f)):
                    continue
                # the backing file may be gone or renamed: check the image alone
                js = ('json:{"driver":"qcow2","backing":null,"file":{"driver":"file",'
                      '"filename":"%s"}}' % f)
                rc, out, err = run(["qemu-img", "check", "-U", js],
                                   os.path.join(self.root, "t"))
                if rc != 0:
                    why = "qemu-img check %s: %s%s" % (f, out, err)
                    break
        label = "%s: %s %s" % (name, sub, " ".join(args).replace(self.root, "DIR"))
        if todo and why:
            label += " # TODO " + todo
        self.ok(not why, label, why)

    def same_files(self, files, compare):
        for f in files:
            a = os.path.join(self.root, "q", f)
            b = os.path.join(self.root, "t", f)
            if os.path.exists(a) != os.path.exists(b):
                return "file %s exists on one side only" % f
            if os.path.exists(a) and subprocess.run(["cmp", "-s", a, b]).returncode != 0:
                return "file %s differs (cmp)" % f
        for f in compare:
            a = os.path.join(self.root, "q", f)
            b = os.path.join(self.root, "t", f)
            rc, out, err = run(["qemu-img", "compare", "-U", a, b], self.root)
            if rc == 2 and subprocess.run(["cmp", "-s", a, b]).returncode == 0:
                continue    # cannot be opened (its backing file is gone), but unchanged
            if rc != 0:
                return "file %s differs in content: %s%s" % (f, out, err)
        return ""

    def finish(self):
        print("1..%d" % len(self.tests))
        for i, (good, name, diag) in enumerate(self.tests, 1):
            print("%s %d - %s" % ("ok" if good else "not ok", i, name))
            if not good:
                for line in str(diag).splitlines():
                    print("#   " + line)
        return 0


def to_bytes(s):
    mult = {"k": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * mult[s[-1]] if s[-1] in mult else int(s)


def fits(cmd, size):
    """True if a qemu-io "write ... OFF LEN" stays inside an image of @size."""
    f = cmd.split()
    return to_bytes(f[-2]) + to_bytes(f[-1]) <= to_bytes(size)


def make_chain(d, depth, base_fmt="qcow2", size="4M", sizes=None, opts="", writes=None,
               names=None, top_dir=""):
    """base (qcow2 or raw) and @depth qcow2 overlays, each writing its own pattern.
    Overlays name their backing file relative to their own directory."""
    names = names or (["base"] + ["mid%d" % i for i in range(1, depth)] + ["top"])
    sizes = sizes or [size] * (depth + 1)
    files = []
    for i, n in enumerate(names):
        fmt = base_fmt if i == 0 else "qcow2"
        sub = top_dir if (i == depth and top_dir) else ""
        fn = os.path.join(sub, "%s.%s" % (n, fmt))
        if sub:
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        cmd = ["qemu-img", "create", "-q", "-f", fmt]
        if fmt == "qcow2" and opts:
            cmd += ["-o", opts]
        if i > 0:
            prev = files[-1]
            rel = os.path.relpath(os.path.join(d, prev), os.path.join(d, sub or "."))
            cmd += ["-b", rel, "-F", base_fmt if i == 1 else "qcow2"]
        sh([cmd + [fn, sizes[i]]], d)
        w = writes[i] if writes else ["write -P %d %dk 512k" % (i + 1, 256 * i + 64),
                                      "write -P %d %dk 64k" % (i + 11, 1536 + 700 * i)]
        w = [x for x in w if fits(x, sizes[i])]
        if w:
            c = ["qemu-io", "-f", fmt]
            for x in w:
                c += ["-c", x]
            sh([c + [fn]], d)
        files.append(fn)
    return files
