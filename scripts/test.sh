#!/bin/sh
# test.sh - installs the dependencies, builds out of tree and runs every test with prove,
# then the sanitizer builds (ThreadSanitizer; AddressSanitizer + UBSan) of the unit,
# concurrency, I/O and parsing tests. Exits non-zero if anything fails.
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
build=${TBLK_BUILD_DIR:-$src/build}
jobs=$(nproc 2>/dev/null || echo 2)
"$src/scripts/install-deps.sh"
# What git sees in the source tree, the build directory excepted.
tree_state()
{
	git -C "$src" status --porcelain --ignored --untracked-files=all 2>/dev/null |
		grep -v -e "^!! ${build#"$src"/}/" || true
}
before=$(tree_state)
mkdir -p "$build"
cd "$build"
"$src/configure" >/dev/null
make -s -j"$jobs"
# An out-of-tree build writes nothing into the source tree (build/ itself is ignored).
after=$(tree_state)
if [ "$before" != "$after" ]; then
	echo "test.sh: the build wrote into the source tree:" >&2
	printf '%s\n%s\n' "$before" "$after" | sort | uniq -u >&2
	exit 1
fi
make -s check
make -s -j"$jobs" check-tsan
make -s -j"$jobs" check-asan
make -s -j"$jobs" check-fuzz
# A clang build: its -Wthread-safety checks every lock annotation (gcc ignores them).
mkdir -p b-clang
(cd b-clang && "$src/configure" --cc=clang >/dev/null && make -s -j"$jobs")
