#!/bin/sh
# demo.sh - builds tblk, creates a 1 GiB raw image and benchmarks it side by side with
# qemu-img: 4k random reads, O_DIRECT, Linux AIO, depth 32, tblk-img bench and qemu-img
# bench interleaved, with IOPS and CPU time per I/O.
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
build=${TBLK_BUILD_DIR:-$src/build}
"$src/scripts/install-deps.sh"
mkdir -p "$build"
cd "$build"
"$src/configure" >/dev/null
make -s -j"$(nproc 2>/dev/null || echo 2)"
dir=$(mktemp -d "${TMPDIR:-/tmp}/tblk-demo.XXXXXX")
trap 'rm -rf "$dir"' EXIT INT TERM
img=$dir/disk.img
"$build/tools/tblk-img" create -f raw "$img" 1G
# Fill it so reads hit real blocks, not holes.
dd if=/dev/urandom of="$img" bs=1M count=1024 conv=notrunc status=none
TBLK_BUILD=$build python3 "$src/bench/compare.py" --quick --image "$img"
