#!/bin/sh
# SPDX-License-Identifier: MIT
# make-seeds.sh - regenerates the qcow2 seed corpus of t/fuzz-qcow2.c with Debian's qemu-img
# and qemu-io: small images (tiny virtual sizes, 512 B..16 KiB clusters) covering v2 and v3,
# refcount widths, compressed clusters (zlib, zstd), zero clusters, snapshots, backing file
# names, an external data file name, extended L2, a dirty lazy-refcounts image, persistent
# bitmaps and the corrupt bit. Usage: make-seeds.sh [DIR] (default: this script's directory).
# Seeds named crash-* are regression inputs for fixed bugs; this script leaves them alone.
set -eu
dir=${1:-$(cd "$(dirname "$0")" && pwd)}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/qcow2-seeds.XXXXXX")
trap 'rm -rf "$tmp"' EXIT INT TERM
cd "$tmp"
ulimit -c 0

img() { qemu-img create -q -f qcow2 -o "$2" "$1" "$3"; }
io() { f=$1; shift; for c in "$@"; do set -- "$@" -c "$c"; shift; done; qemu-io -f qcow2 "$@" "$f" >/dev/null; }
# The flag bit @2 (0..7) of header byte @1, set in place.
setbit() {
	b=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
	printf "$(printf '\\%03o' $((b | (1 << $3))))" | dd of="$1" bs=1 seek="$2" conv=notrunc 2>/dev/null
}

img v2-c512.qcow2 compat=0.10,cluster_size=512 64k
io v2-c512.qcow2 'write -P 0x11 0 1k' 'write -z 4k 512' 'write -P 0x22 20k 1536' 'discard 0 512'

img v3-c512-rc1.qcow2 cluster_size=512,refcount_bits=1 32k
io v3-c512-rc1.qcow2 'write -P 0x33 512 1k' 'write -z 8k 1k'

img v3-c1k-rc64.qcow2 cluster_size=1024,refcount_bits=64 32k
io v3-c1k-rc64.qcow2 'write -P 0x44 0 3k' 'discard 1k 1k'

img v3-c2k-rc2.qcow2 cluster_size=2048,refcount_bits=2 32k
io v3-c2k-rc2.qcow2 'write -P 0x55 2k 2k' 'write -z 6k 2k' 'write -z -u 2k 2k'

img v3-c512-rc4-l1.qcow2 cluster_size=512,refcount_bits=4 1M
io v3-c512-rc4-l1.qcow2 'write -P 0x66 0 512' 'write -P 0x67 300k 1k' 'write -P 0x68 1023k 1k'

img v3-c4k-zlib.qcow2 cluster_size=4096 32k
io v3-c4k-zlib.qcow2 'write -c -P 0x77 0 4k' 'write -c -P 0x78 8k 8k' 'write -z 20k 4k' \
	'write -P 0x79 28k 512'

img v3-c4k-zstd.qcow2 cluster_size=4096,compression_type=zstd 16k
io v3-c4k-zstd.qcow2 'write -c -P 0x7a 0 4k' 'write -c 4k 4k' 'write -P 0x7b 12k 4k'

img v2-c512-zlib.qcow2 compat=0.10,cluster_size=512 8k
io v2-c512-zlib.qcow2 'write -c -P 0x7c 0 512' 'write -c -P 0x7d 1k 1k'

img v3-c512-snap.qcow2 cluster_size=512 16k
io v3-c512-snap.qcow2 'write -P 0x81 0 2k'
qemu-img snapshot -c first v3-c512-snap.qcow2
io v3-c512-snap.qcow2 'write -P 0x82 1k 2k' 'discard 0 512'
qemu-img snapshot -c second v3-c512-snap.qcow2
io v3-c512-snap.qcow2 'write -z 2k 1k'

img v2-c512-snap.qcow2 compat=0.10,cluster_size=512 8k
io v2-c512-snap.qcow2 'write -P 0x83 0 1k'
qemu-img snapshot -c s v2-c512-snap.qcow2
io v2-c512-snap.qcow2 'write -P 0x84 512 512'

img base.qcow2 cluster_size=512 16k
io base.qcow2 'write -P 0x91 0 16k'
qemu-img create -q -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 v3-c512-backing.qcow2
io v3-c512-backing.qcow2 'write -P 0x92 1k 1k' 'write -z 4k 1k'
qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=1024 -b base.qcow2 -F qcow2 \
	v2-c1k-backing.qcow2
io v2-c1k-backing.qcow2 'write -P 0x93 0 512'

img v3-c16k-extl2.qcow2 cluster_size=16384,extended_l2=on 64k
io v3-c16k-extl2.qcow2 'write -P 0xa1 0 512' 'write -P 0xa2 1k 1k' 'write -z 16k 2k' \
	'write -P 0xa3 40k 1k'

img v3-c512-lazy-dirty.qcow2 cluster_size=512,lazy_refcounts=on 16k
io v3-c512-lazy-dirty.qcow2 'write -P 0xb1 0 1k' 'flush' 'write -P 0xb2 4k 512' 'abort' \
	2>/dev/null || true

img v3-c512-bitmaps.qcow2 cluster_size=512 16k
io v3-c512-bitmaps.qcow2 'write -P 0xc1 0 1k'
qemu-img bitmap --add v3-c512-bitmaps.qcow2 b0
qemu-img bitmap --add --disable -g 1024 v3-c512-bitmaps.qcow2 b1
io v3-c512-bitmaps.qcow2 'write -P 0xc2 4k 1k'
# Left in use by a killed writer; and two directories qemu refuses (hostile-*: they need not
# open): an entry with extra data (the directory rewritten 8 bytes longer), an entry with an
# unknown flag.
cp v3-c512-bitmaps.qcow2 v3-c512-bitmap-inuse.qcow2
io v3-c512-bitmap-inuse.qcow2 'write -P 0xc3 2k 1k' 'sigraise 9' 2>/dev/null || true
cp v3-c512-bitmaps.qcow2 hostile-bitmap-extra-data.qcow2
cp v3-c512-bitmaps.qcow2 hostile-bitmap-unknown-flag.qcow2
python3 - hostile-bitmap-extra-data.qcow2 hostile-bitmap-unknown-flag.qcow2 <<'PY'
import struct, sys
for path, extra in ((sys.argv[1], True), (sys.argv[2], False)):
    d = bytearray(open(path, "rb").read())
    pos = struct.unpack(">I", d[100:104])[0]
    while struct.unpack(">I", d[pos:pos + 4])[0] != 0x23852875:
        pos += 8 + ((struct.unpack(">I", d[pos + 4:pos + 8])[0] + 7) & ~7)
    size, off = struct.unpack(">QQ", d[pos + 16:pos + 32])
    if extra:
        nl = struct.unpack(">H", d[off + 18:off + 20])[0]
        ent = d[off:off + 24] + bytes(8) + d[off + 24:off + 24 + nl]
        ent[20:24] = struct.pack(">I", 8)
        ent += bytes(-len(ent) % 8)
        old = (24 + nl + 7) & ~7
        d[off:off + size] = ent + d[off + old:off + size]
        d[pos + 16:pos + 24] = struct.pack(">Q", size - old + len(ent))
    else:
        d[off + 15] |= 0x10
    open(path, "wb").write(d)
PY

img v3-c512-corrupt.qcow2 cluster_size=512 8k
io v3-c512-corrupt.qcow2 'write -P 0xd1 0 1k'
setbit v3-c512-corrupt.qcow2 79 1

img v3-c512-datafile.qcow2 cluster_size=512,data_file=data.raw 8k
io v3-c512-datafile.qcow2 'write -P 0xe1 0 1k'
img v3-c512-datafile-raw.qcow2 cluster_size=512,data_file=data2.raw,data_file_raw=on 8k

img v3-c64k-1T.qcow2 cluster_size=65536 1T
# (no writes: any would add a 64 KiB L2 table and a 64 KiB cluster)

mkdir -p "$dir"
for f in v*.qcow2 hostile-bitmap-*.qcow2; do
	cp "$f" "$dir/${f%.qcow2}"
done
