#!/bin/sh
# cli-lib.t - the library as an embedder gets it: libtblk.so exports only tblk_ names (no
# tblk__ internals, nothing else), `make install` lays out headers, libraries and tblk.pc
# under DESTDIR/prefix, and the example builds against that tree with pkg-config and runs.
set -u
: "${TBLK_BUILD:?set TBLK_BUILD to the build directory}"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tblk-lib.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
n=0
ok() { n=$((n + 1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fi; }
echo 1..8

syms=$(nm -D --defined-only "$TBLK_BUILD/libtblk.so" | awk '$2 ~ /^[TDBR]$/ { print $3 }')
bad=$(echo "$syms" | grep -v '^tblk_[^_]' | grep -v '^$' | head -5)
ok "$([ -z "$bad" ] && echo 0 || echo 1)" "libtblk.so exports only tblk_ names${bad:+ (not: $bad)}"
echo "$syms" | grep -qx tblk_blk_open; ok $? "tblk_blk_open is exported"
echo "$syms" | grep -q '^tblk__'; ok "$([ $? = 0 ] && echo 1 || echo 0)" "no tblk__ internals exported"

make -s -C "$TBLK_BUILD" install DESTDIR="$tmp/root" prefix=/usr >/dev/null 2>&1
ok $? "make install with DESTDIR"
[ -f "$tmp/root/usr/include/tblk/tblk.h" ] && [ -f "$tmp/root/usr/lib/libtblk.a" ] &&
	[ -x "$tmp/root/usr/bin/tblk-img" ] && [ -x "$tmp/root/usr/bin/tblk-io" ]
ok $? "headers, library and tools installed under prefix"

# The staged tree stands in for the prefix it was installed for (a copy of tblk.pc says so;
# --define-variable would move glib-2.0's prefix too).
pc="$tmp/pc"
mkdir -p "$pc"
sed "s|^prefix=.*|prefix=$tmp/root/usr|" "$tmp/root/usr/lib/pkgconfig/tblk.pc" >"$pc/tblk.pc"
pcq() { PKG_CONFIG_PATH=$pc pkg-config "$@" tblk; }
cflags=$(pcq --cflags)
libs=$(pcq --static --libs)
# Link the static library so the test does not depend on the loader path.
${CC:-cc} "$TBLK_SRC/examples/read-write.c" $cflags -o "$tmp/rw" \
	"$tmp/root/usr/lib/libtblk.a" $(pkg-config --libs glib-2.0) -laio -luring -lzstd -lz \
	-lpthread >"$tmp/cc.log" 2>&1
ok $? "the example builds against the installed headers (pkg-config: ${libs:+found})"

truncate -s 1M "$tmp/disk.img"
out=$("$tmp/rw" "$tmp/disk.img" 2>&1)
[ "$out" = "write: ok
read: ok
read back the data" ]
ok $? "the example writes and reads back through the library"
head -c 4096 "$tmp/disk.img" | tr -d x | wc -c | grep -qx 0
ok $? "the example's block is on disk"
