#!/bin/sh
# test.sh - installs the dependencies, builds out of tree and runs every test with prove,
# then the sanitizer builds (ThreadSanitizer; AddressSanitizer + UBSan) of the unit,
# concurrency, I/O and parsing tests. Exits non-zero if anything fails.
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
build=${TBLK_BUILD_DIR:-$src/build}
jobs=$(nproc 2>/dev/null || echo 2)
"$src/scripts/install-deps.sh"
mkdir -p "$build"
cd "$build"
"$src/configure" >/dev/null
make -s -j"$jobs"
make -s check
make -s -j"$jobs" check-tsan
make -s -j"$jobs" check-asan
