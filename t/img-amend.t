#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
#
# tblk-img amend against Debian's qemu-img 7.2: the same qcow2 image (created and filled by
# qemu-img/qemu-io), copied twice, amended once by each tool; stdout, stderr (program name
# normalised), exit status and the resulting files (cmp) must be equal, and our result must
# pass `qemu-img check`. Covers compat 1.1 <-> 0.10 (zero clusters with and without a backing
# file), lazy_refcounts, refcount_bits (every width, both ways), size, combinations, and the
# refusals and bad command lines.
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lib_qcow2diff as D  # noqa: E402


def run(argv, cwd):
    return D.run(argv, cwd, timeout=120)


def sh(cmds, cwd):
    for c in cmds:
        subprocess.run(c, cwd=cwd, check=True, capture_output=True)


def cmp(a, b):
    return subprocess.run(["cmp", "-s", a, b]).returncode == 0


def diff_case(d, name, setup, args, same_bytes=True, qemu_repaired=False):
    """same_bytes False: where qemu's result fails its own check, compare contents only.
    qemu_repaired: qemu's result fails its own check; once `qemu-img check -r all` has
    repaired it, it must be byte-identical to ours (which needs no repair)."""
    q, t = D.img_sides(d, setup, ["amend"] + args)
    why = ""
    if qemu_repaired and q[0] == 0:
        rc, out, err = run(["qemu-img", "check", "-r", "all", "img.qcow2"],
                           os.path.join(d, "q"))
        if rc != 0 or "1 corruptions" not in out:
            why = "qemu-img check -r all on qemu's result: %d %s%s" % (rc, out, err)
    if why:
        pass
    elif q != t:
        why = "qemu-img %r\nours %r" % (q, t)
    elif same_bytes and not cmp(os.path.join(d, "q", "img.qcow2"),
                                os.path.join(d, "t", "img.qcow2")):
        why = "img.qcow2 differs"
    elif not same_bytes and run(["qemu-img", "compare", "q/img.qcow2", "t/img.qcow2"],
                                d)[0] != 0:
        why = "contents differ"
    elif t[0] == 0:
        rc, out, err = run(["qemu-img", "check", "img.qcow2"], os.path.join(d, "t"))
        if rc != 0:
            why = "qemu-img check: " + out + err
    D.ok(not why, "%s: amend %s" % (name, " ".join(args)), why)


def setup_fn(opts, writes, backing=False):
    def setup(sd):
        o = opts
        if backing:
            sh([["qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "4M"],
                ["qemu-io", "-f", "qcow2", "-c", "write -P 7 0 4M", "base.qcow2"]], sd)
            o += ",backing_file=base.qcow2,backing_fmt=qcow2"
        sh([["qemu-img", "create", "-q", "-f", "qcow2", "-o", o, "img.qcow2", "4M"]], sd)
        for w in writes:
            sh([["qemu-io", "-f", "qcow2", "-c", w, "img.qcow2"]], sd)
    return setup


def cases(d):
    data = ("write -z 0 64k", "write -P 1 64k 64k", "write -z 64k 64k", "write -P 2 1M 1M",
            "write -z -u 2M 128k", "discard 1M 64k", "write -P 3 3M 4k")
    for geo in ("cluster_size=65536", "cluster_size=512", "cluster_size=2M",
                "cluster_size=4096,refcount_bits=1", "cluster_size=65536,refcount_bits=64",
                "cluster_size=65536,lazy_refcounts=on"):
        for ch in ("compat=0.10", "lazy_refcounts=on", "lazy_refcounts=off",
                   "refcount_bits=1", "refcount_bits=2", "refcount_bits=4",
                   "refcount_bits=8", "refcount_bits=16", "refcount_bits=32",
                   "refcount_bits=64", "size=8M", "size=1M", "size=1G",
                   "compat=0.10,size=2M", "compat=1.1"):
            for dname, w in (("empty", ()), ("data", data)):
                diff_case(d, "%s %s" % (geo, dname), setup_fn(geo, w), ["-o", ch])
    for ch in ("compat=0.10", "refcount_bits=8", "size=16M"):
        diff_case(d, "backing", setup_fn("cluster_size=65536", data, True), ["-o", ch])
    v2 = setup_fn("compat=0.10", ("write -P 1 0 64k",))
    for ch in ("compat=1.1", "compat=1.1,lazy_refcounts=on", "compat=1.1,refcount_bits=4",
               "lazy_refcounts=on", "refcount_bits=8", "compat=0.10"):
        diff_case(d, "v2", v2, ["-o", ch])
    # internal snapshots (zero clusters in shared and inactive L2 tables)
    def snap(writes2, backing=False, resize=None):
        def setup(sd):
            setup_fn("cluster_size=65536", ("write -P 1 0 1M", "write -z 2M 128k"),
                     backing)(sd)
            sh([["qemu-img", "snapshot", "-c", "s1", "img.qcow2"]], sd)
            for w in writes2:
                sh([["qemu-io", "-f", "qcow2", "-c", w, "img.qcow2"]], sd)
            if resize:
                sh([["qemu-img", "resize", "-q", "img.qcow2", resize]], sd)
        return setup
    for ch in ("compat=0.10", "refcount_bits=4", "lazy_refcounts=on", "size=8M"):
        diff_case(d, "snapshot", snap(("write -P 2 512k 1M", "write -z 3M 64k")),
                  ["-o", ch])
        diff_case(d, "snapshot, backing", snap(("write -P 2 512k 1M",), True), ["-o", ch])
    diff_case(d, "snapshot of another size", snap((), False, "8M"), ["-o", "compat=0.10"])
    diff_case(d, "snapshot of another size", snap((), False, "8M"),
              ["-o", "compat=0.10,size=4M"])
    # qemu marks a kept zero cluster a snapshot shares COPIED in the active table from
    # the table's refcount (1, it was copied on write) where the cluster's is 2: its
    # check reports one corruption, and the next write to that guest cluster would go
    # in place, into the snapshot. tblk writes the same bytes except that flag (in the
    # snapshot's table, where the flag is set anew on apply, it writes qemu's): qemu's
    # result repaired by its check is byte-identical to ours.
    diff_case(d, "snapshot sharing a zero cluster (qemu bug avoided)",
              snap(("write -z 64k 64k", "write -P 2 512k 1M")), ["-o", "compat=0.10"],
              qemu_repaired=True)

    def zero_in_snap(sd):
        setup_fn("cluster_size=65536", ("write -P 1 0 1M", "write -z 0 128k"))(sd)
        sh([["qemu-img", "snapshot", "-c", "s1", "img.qcow2"],
            ["qemu-io", "-f", "qcow2", "-c", "write -P 2 64k 4k", "img.qcow2"]], sd)
    diff_case(d, "zero cluster in snapshot and active tables (qemu bug avoided)",
              zero_in_snap, ["-o", "compat=0.10"], qemu_repaired=True)
    # what the flag would do: a write after our downgrade leaves the snapshot intact
    sd = os.path.join(d, "t")
    sh([["qemu-io", "-f", "qcow2", "-c", "write -P 9 0 64k", "img.qcow2"],
        ["qemu-img", "convert", "-l", "snapshot.name=s1", "-O", "raw", "img.qcow2",
         "s1.raw"]], sd)
    with open(os.path.join(sd, "s1.raw"), "rb") as f:
        head = f.read(65536)
    D.ok(head == bytes(65536), "after our downgrade, a write leaves the snapshot's zero "
         "cluster zero", "s1 starts %r" % head[:4])
    # compressed clusters (many references to one host cluster), external data file
    comp = setup_fn("cluster_size=65536", ("write -c -P 4 0 1M", "write -z 2M 64k"))
    for ch in ("compat=0.10", "refcount_bits=8", "refcount_bits=2", "size=1M"):
        diff_case(d, "compressed", comp, ["-o", ch])
    zstd = setup_fn("compression_type=zstd", ("write -c -P 4 0 256k",))
    diff_case(d, "zstd with compressed clusters", zstd, ["-o", "compat=0.10"])
    ext = setup_fn("data_file=img.data", ("write -P 1 0 1M",))
    for ch in ("compat=0.10", "data_file=other.data", "data_file_raw=off",
               "lazy_refcounts=on", "refcount_bits=8", "size=8M"):
        diff_case(d, "data file", ext, ["-o", ch])
    # refcount width changes walk old blocks new block by new block, skipping ranges
    # without a block: 512-byte clusters with the new blocks spanning many old ones,
    # a refcount of 2 (a snapshot) that 1 bit cannot hold, an image larger than 4M
    def big(opts, snapshot=False):
        def setup(sd):
            sh([["qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, "img.qcow2", "4G"]],
               sd)
            for w in ("write -P 1 0 64k", "write -P 2 1G 96k", "write -P 3 3G 64k",
                      "write -c -P 4 2G 64k"):
                sh([["qemu-io", "-f", "qcow2", "-c", w, "img.qcow2"]], sd)
            if snapshot:
                sh([["qemu-img", "snapshot", "-c", "s1", "img.qcow2"]], sd)
                sh([["qemu-io", "-f", "qcow2", "-c", "write -P 5 1G 4k", "img.qcow2"]], sd)
        return setup
    for geo in ("cluster_size=512", "cluster_size=4096,refcount_bits=64"):
        for ch in ("refcount_bits=1", "refcount_bits=4", "refcount_bits=64",
                   "refcount_bits=16"):
            diff_case(d, "4G %s" % geo, big(geo), ["-o", ch])
        diff_case(d, "4G %s, snapshot" % geo, big(geo, True), ["-o", "refcount_bits=1"])
        diff_case(d, "4G %s, snapshot" % geo, big(geo, True), ["-o", "refcount_bits=2"])
    plain = setup_fn("cluster_size=65536", data)
    bad = [[], ["img.qcow2"], ["-o", "cluster_size=4k", "img.qcow2"],
           ["-o", "foo=1", "img.qcow2"], ["-o", "refcount_bits=3", "img.qcow2"],
           ["-o", "refcount_bits=128", "img.qcow2"], ["-o", "compat=0.9", "img.qcow2"],
           ["-o", "compat=0.10,lazy_refcounts=on", "img.qcow2"],
           ["-o", "refcount_bits=8,compat=0.10", "img.qcow2"],
           ["-o", "preallocation=full", "img.qcow2"], ["-o", "extended_l2=on", "img.qcow2"],
           ["-o", "compression_type=zstd", "img.qcow2"], ["-o", "encryption=on", "img.qcow2"],
           ["-o", "encrypt.format=luks", "img.qcow2"],
           ["-o", "lazy_refcounts=maybe", "img.qcow2"], ["-o", "refcount_bits=x", "img.qcow2"],
           # ",," is a comma inside a value; a trailing single comma is an empty element
           ["-o", "lazy_refcounts=on,,off", "img.qcow2"], ["-o", "compat=1.1,", "img.qcow2"],
           ["-o", "size=abc", "img.qcow2"], ["-o", "size=1000", "img.qcow2"],
           ["-o", "data_file=x", "img.qcow2"], ["-o", "data_file_raw=on", "img.qcow2"],
           ["-o", "backing_file=other.qcow2", "img.qcow2"],
           ["-o", "compat=1.1", "img.qcow2", "c.qcow2"], ["-o", "", "img.qcow2"],
           ["-o", "help", "img.qcow2"], ["-f", "qcow2", "-o", "help"],
           ["-f", "raw", "-o", "size=1M", "img.qcow2"], ["-t", "foo", "-o", "compat=1.1",
                                                          "img.qcow2"],
           ["-t", "none", "-o", "compat=1.1", "img.qcow2"], ["-q", "-o", "compat=1.1",
                                                             "img.qcow2"],
           ["-o", "compat=0.10", "nonexistent.qcow2"], ["-x", "-o", "compat=1.1", "img.qcow2"],
           ["-p", "-o", "lazy_refcounts=on", "img.qcow2"],
           ["--force", "-o", "lazy_refcounts=on", "img.qcow2"],
           ["--image-opts", "-o", "lazy_refcounts=on", "driver=qcow2,file.filename=img.qcow2"],
           # short forms ("nokey" is key=off); the creation-only hint only when the
           # whole list would do for creating an image
           ["-o", "nolazy_refcounts", "img.qcow2"], ["-o", "lazy_refcounts", "img.qcow2"],
           ["-o", "nocow", "img.qcow2"], ["-o", "nobogus", "img.qcow2"],
           ["-o", "nocluster_size", "img.qcow2"], ["-o", "cluster_size", "img.qcow2"],
           ["-o", "cluster_size=off", "img.qcow2"],
           ["-o", "cluster_size=4k,bogus=1", "img.qcow2"],
           ["-o", "compat=0.10,cluster_size=4k", "img.qcow2"],
           ["-o", "preallocation=bogus", "img.qcow2"], ["-o", "nopreallocation", "img.qcow2"],
           ["-o", "extended_l2=maybe", "img.qcow2"]]
    for b in bad:
        diff_case(d, "bad input", plain, b)


def main():
    return D.in_tmpdir("tblk-amend-", cases)


if __name__ == "__main__":
    sys.exit(main())
