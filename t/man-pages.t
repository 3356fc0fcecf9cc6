#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# The manual pages in docs/man: each renders without a warning (groff -ww, and man -l when
# man-db is there); every option the tools' --help lists, every tblk-img command line of
# its --help and every tblk-io command synopsis of "help", appears in the page; `make
# install DESTDIR=...` puts them all in $(prefix)/share/man/man1.
import os
import re
import shutil
import subprocess
import sys
import tempfile

BUILD = os.path.abspath(os.environ.get("TBLK_BUILD", "build"))
SRC = os.path.abspath(os.environ.get("TBLK_SRC", "."))
MAN = os.path.join(SRC, "docs", "man")
TOOLS = ["tblk-img", "tblk-io", "tblk-daemon", "tblk-nbd", "tblk-vhost-user-blk"]
results = []


def ok(cond, name, diag=""):
    results.append((bool(cond), name, diag))


def render(page):
    """Plain text, no hyphenation, one long line per paragraph; (text, warnings)."""
    p = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-rHY=0", "-rLL=1000n", "-P-cbou",
                        page], capture_output=True, text=True)
    return p.stdout, p.stderr


def squash(s):
    # groff prints ASCII '-' as U+2010 or U+2212 in some contexts and quotes as ' or U+2019
    s = s.replace("\u2010", "-").replace("\u2212", "-").replace("\u2019", "'")
    s = s.replace("\u2018", "'").replace("\u201c", '"').replace("\u201d", '"')
    return re.sub(r"\s+", " ", s)


def help_text(tool, *args):
    p = subprocess.run([os.path.join(BUILD, "tools", tool)] + list(args),
                       capture_output=True, text=True)
    return p.stdout + p.stderr


def options_in(text):
    """-x and --long options mentioned in a help text."""
    found = set()
    for m in re.finditer(r"(?<![\w'-])(--[a-z][a-z0-9-]*|-[A-Za-z])(?![\w])", text):
        found.add(m.group(1))
    return found


def main():
    if not shutil.which("groff"):
        print("1..0 # SKIP groff not installed (scripts/install-deps.sh)")
        return 0
    pages = {}
    for tool in TOOLS:
        page = os.path.join(MAN, tool + ".1")
        ok(os.path.exists(page), "%s.1 exists" % tool)
        if not os.path.exists(page):
            continue
        text, warn = render(page)
        ok(warn == "" and text.strip(), "%s.1 renders without warnings" % tool, warn)
        if shutil.which("man"):
            p = subprocess.run(["man", "--warnings", "-l", page], capture_output=True,
                               text=True, env=dict(os.environ, MANWIDTH="80",
                                                   MANPAGER="cat", PAGER="cat"))
            ok(p.returncode == 0 and p.stderr == "", "man -l %s.1: no warnings" % tool,
               p.stderr)
        pages[tool] = squash(text)

    for tool in TOOLS:
        if tool not in pages:
            continue
        missing = sorted(o for o in options_in(help_text(tool, "--help"))
                         if o not in pages[tool])
        ok(not missing, "%s.1 names every option of %s --help" % (tool, tool),
           "missing: %s" % " ".join(missing))

    # tblk-img: each command line of --help, as printed.
    if "tblk-img" in pages:
        lines = [l.strip() for l in help_text("tblk-img", "--help").splitlines()]
        cmds = [l for l in lines if re.match(r"^[a-z]+ \[", l)]
        ok(len(cmds) >= 8, "tblk-img --help lists its commands", "%r" % cmds)
        for c in cmds:
            ok(squash(c) in pages["tblk-img"], "tblk-img.1 has '%s'" % c.split()[0], c)
    # tblk-io: each command's synopsis of "help", as printed.
    if "tblk-io" in pages:
        lines = help_text("tblk-io", "-c", "help").splitlines()
        syn = [l.split(" -- ")[0].strip() for l in lines if " -- " in l]
        ok(len(syn) >= 25, "tblk-io -c help lists its commands", "%r" % syn)
        for s in syn:
            ok(squash(s) in pages["tblk-io"], "tblk-io.1 has '%s'" % s.split()[0], s)

    # make install puts the pages where man looks for them.
    tmp = tempfile.mkdtemp(prefix="tblk-man-")
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAKE")}
        p = subprocess.run(["make", "-C", BUILD, "--no-print-directory", "install",
                            "DESTDIR=" + tmp, "prefix=/usr"], capture_output=True, text=True,
                           env=env)
        mandir = os.path.join(tmp, "usr", "share", "man", "man1")
        got = sorted(os.listdir(mandir)) if os.path.isdir(mandir) else []
        want = sorted(t + ".1" for t in TOOLS)
        ok(p.returncode == 0 and got == want, "make install DESTDIR= installs the man pages",
           "status %d, %r\n%s" % (p.returncode, got, p.stderr[-2000:]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print("1..%d" % len(results))
    for n, (good, name, diag) in enumerate(results, 1):
        print("%s %d - %s" % ("ok" if good else "not ok", n, name))
        if not good and diag:
            for line in str(diag).splitlines():
                print("#   " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
