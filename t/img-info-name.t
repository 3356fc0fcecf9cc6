#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# The name tblk-img info gives an image that options describe, against Debian's qemu-img 7.2:
# a plain name when the driver can spell one and no option changes its meaning (a file with
# any cache, aio or locking options; qcow2 with its runtime options; "null-co://";
# "blkdebug:CONF:IMAGE"), else qemu's "json:{...}" with the node's driver, filename and the
# options that count (raw's offset and size, null's size and read-zeroes, blkdebug's rules
# and limits, a throttle group), each child nested under its name, the keys in qemu's
# dictionary order, values typed as given (strings from --image-opts, numbers and booleans
# from JSON). Human and --output=json output, --backing-chain with a json: backing file and
# with a json: image whose relative backing file lies next to its file.
# Compared: stdout, stderr (program name normalised), the exit status; not "disk size" /
# "actual-size" (qemu gives a null node 0 bytes and a blkdebug one none; tblk does not yet).
import os
import re
import shutil
import subprocess
import sys
import tempfile

BUILD = os.environ.get("TBLK_BUILD", "build")
TIMG = os.path.abspath(os.path.join(BUILD, "tools", "tblk-img"))

TG = ["--object", "throttle-group,id=tg0"]
CASES = [
    ["--image-opts", "driver=raw,file.filename=r.img,offset=4096,size=8192"],
    ["--image-opts", "driver=raw,file.filename=r.img,size=1M,offset=1M"],
    ["--image-opts", "driver=raw,file.filename=r.img"],
    ["--image-opts", "driver=raw,file.filename=r.img,size=4M"],
    ["--image-opts", "driver=raw,file.filename=r.img,offset=0"],
    ["--image-opts", "driver=qcow2,file.filename=q.qcow2"],
    ["--image-opts", "driver=qcow2,file.filename=q.qcow2,lazy-refcounts=on,cache-size=1M"],
    ["--image-opts", "driver=qcow2,file.driver=file,file.filename=q.qcow2,discard=unmap"],
    ["--image-opts", "driver=raw,file.driver=file,file.filename=r.img,file.aio=native,"
     "file.cache.direct=on,file.locking=off,offset=512"],
    ["--image-opts", "driver=file,filename=r.img"],
    ["--image-opts", "file.filename=r.img,offset=4096"],
    ["--image-opts", "driver=null-co"],
    ["--image-opts", "driver=null-co,size=1M"],
    ["--image-opts", "driver=null-co,read-zeroes=on"],
    ["--image-opts", "driver=null-aio,size=1M,read-zeroes=off"],
    ["--image-opts", "driver=raw,file.driver=null-co,file.size=1M"],
    ["--image-opts", "driver=raw,file.driver=null-aio"],
    ["--image-opts", "driver=blkdebug,image.filename=r.img"],
    ["--image-opts", "driver=blkdebug,config=empty.conf,image.filename=r.img"],
    ["--image-opts", "driver=raw,file.driver=blkdebug,file.image.filename=r.img"],
    ["--image-opts", "driver=raw,file.driver=blkdebug,file.image.filename=r.img,file.align=4096"],
    ["--image-opts", "driver=qcow2,file.driver=blkdebug,file.image.filename=q.qcow2,"
     "file.align=512,file.inject-error.0.event=read_aio"],
    ["--image-opts", "driver=qcow2,file.driver=blkdebug,file.config=empty.conf,"
     "file.image.filename=q.qcow2,file.max-transfer=65536"],
    TG + ["--image-opts", "driver=throttle,throttle-group=tg0,file.filename=r.img"],
    TG + ["--image-opts", "driver=raw,file.driver=throttle,file.throttle-group=tg0,"
          "file.file.driver=raw,file.file.file.filename=r.img,file.file.offset=512"],
    ['json:{"driver":"raw","offset":4096,"file":{"filename":"r.img"}}'],
    ['json:{"driver":"raw","offset":4096.0,"size":"8192","file":{"driver":"file",'
     '"filename":"r.img","aio":"native","cache":{"direct":true}}}'],
    ['json:{"file":{"driver":"file","filename":"r.img"},"offset":4096}'],
    ["-f", "raw", 'json:{"file":{"filename":"r.img"},"size":65536}'],
    ['json:{"driver":"raw","offset":4096,"file.filename":"r.img"}'],
    ['json:{"driver":"null-co","read-zeroes":true,"size":1048576}'],
    ['json:{"driver":"null-co","size":"1M","latency-ns":10}'],
    ["json:{'driver':'raw','size':512,'file':{'filename':'r.img'}}"],
    ['json:{"driver":"qcow2","lazy-refcounts":true,"file":{"filename":"q.qcow2"}}'],
    ["--output=json", "--image-opts", "driver=raw,file.filename=r.img,offset=4096,size=8192"],
    ["--output=json", 'json:{"driver":"null-co","read-zeroes":false}'],
    ["--backing-chain", "x.qcow2"],
    ["--backing-chain", "--output=json", "x.qcow2"],
    # a relative backing file is found next to the file, not next to the json: name's last '/'
    ["--backing-chain", 'json:{"driver":"qcow2","file":{"driver":"blkdebug","inject-error":'
     '[{"event":"l1_update"}],"image":{"driver":"file","filename":"sub/o.qcow2"}}}'],
]


def run(argv, cwd):
    p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    out = re.sub(r"(?m)^disk size: .*\n", "", p.stdout)
    out = re.sub(r',\n *"actual-size": \d+', "", out)
    return p.returncode, out, p.stderr


def sh(d, *argv):
    subprocess.run(list(argv), cwd=d, check=True, capture_output=True)


def main():
    if not shutil.which("qemu-img"):
        print("1..0 # SKIP qemu-img not installed")
        return 0
    d = tempfile.mkdtemp(prefix="tblk-info-name-")
    tests = []
    try:
        sh(d, "qemu-img", "create", "-q", "-f", "raw", "r.img", "4M")
        sh(d, "qemu-io", "-f", "raw", "-c", "write -P 1 0 64k", "r.img")
        sh(d, "qemu-img", "create", "-q", "-f", "qcow2", "q.qcow2", "4M")
        sh(d, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b",
           'json:{"driver":"raw","offset":4096,"file":{"filename":"r.img"}}', "x.qcow2")
        os.mkdir(os.path.join(d, "sub"))
        sh(d, "qemu-img", "create", "-q", "-f", "qcow2", "sub/base.qcow2", "4M")
        sh(d, "qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", "base.qcow2",
           "sub/o.qcow2")
        open(os.path.join(d, "empty.conf"), "w").close()
        for args in CASES:
            q = run(["qemu-img", "info"] + args, d)
            t = run([TIMG, "info"] + args, d)
            q = (q[0], q[1], q[2].replace("qemu-img:", "PROG:"))
            t = (t[0], t[1], t[2].replace("tblk-img:", "PROG:"))
            why = "" if q == t else "qemu-img %r\n  ours %r" % (q, t)
            tests.append((not why, "info " + " ".join(args), why))
            # the case must show what it is about: a name came out
            tests.append(("image: " in q[1] or '"filename": ' in q[1],
                          "qemu-img names the image: " + " ".join(args), q[2]))
    finally:
        shutil.rmtree(d, ignore_errors=True)
    print("1..%d" % len(tests))
    for i, (good, name, why) in enumerate(tests, 1):
        print("%s %d - %s" % ("ok" if good else "not ok", i, name))
        for line in why.splitlines():
            print("#   " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
