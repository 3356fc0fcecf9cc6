#!/bin/bash
# SPDX-License-Identifier: MIT
# cli-img-data.t - differential test of the tblk-img subcommands that move or inspect image
# data (convert, map, compare, dd) against Debian's qemu-img 7.2. Each case runs in two
# directories holding identical files, once with qemu-img and once with tblk-img (through a
# symlink named qemu-img on PATH, so messages carry the same program name), and compares
# stdout (progress lines included), stderr, the exit status, and the files left behind: name,
# size, contents, and for the targets (o*, t*) their allocation as `qemu-img map` reports it.
#
# The files are written by a small generator, not copied, so that holes stay holes and
# written zeroes stay allocated (cp would turn zero blocks into holes); the sources are hard
# links to one read-only set, the targets t*.img are written for each case:
#   d.img   8 MiB: data at 0 (64 KiB), written zeroes at 1 MiB (64 KiB), 100 KiB of data at
#           2 MiB, 512 bytes at 3 MiB + 512, data with a 4 KiB and an 8 KiB zero gap at
#           5 MiB, 2.5 MiB of data ending at 8 MiB; holes elsewhere
#   d2.img  d.img with one byte changed at 2 MiB + 50000
#   dl.img  d.img grown to 10 MiB (a hole at the end); dlx.img the same with a byte at 9 MiB
#   h.img   4 MiB hole, not even the first block; f.img 3 MiB of data
#   odd.img 1000 bytes; z0.img empty; t10.img 10 MiB of old data; t1.img 1 MiB
#
# What qemu-img 7.2.22 does, as observed:
# - convert: no output without -p. -p prints "    (P/100%)\r" with P in "%3.2f" whenever
#   the figure moved by more than 1 (and at 0 and 100): first 0.00, then after each chunk
#   copied the share of the data chunks done (chunks: block status extents cut at 2 MiB),
#   then 100.00 once more and a newline; -q silences it. Zero areas are skipped on a new
#   target and written as zeroes (holes punched) with -n; runs of -S zero bytes (4 KiB
#   default) inside data are left out, -S 0 writes everything. The target is created with
#   the sum of the source sizes (in whole sectors); -o size= is overridden. Errors: "Must
#   specify image file name", "Invalid buffer size for sparse output specified. Valid sizes
#   are multiples of 512 up to 16777216. ...", "Invalid number of coroutines. Allowed number
#   of coroutines is between 1 and 16" (-m is strtol base 0: "08" is refused), "output file
#   is smaller than input file", "--target-is-zero requires use of -n flag",
#   "--target-image-opts requires use of -n flag", "-o has no effect when skipping image
#   creation", "Compression not supported for this file format", "Cannot enable copy
#   offloading when -c/-S is used", "Cannot use copy offloading in salvaging mode", "Source
#   lacks bitmap support", "Use of --skip-broken-bitmaps requires --bitmaps", "Backing file
#   (format) not supported for file format 'raw'", "F: error while converting raw: <why>",
#   "Invalid source cache option" (before opening), "Invalid cache option" (after the target
#   was created), "Failed to load snapshot: Block format 'raw' used by device '' does not
#   support temporarily loading internal snapshots", a bare "-o nocow" is "cow=off".
# - map: "Offset          Length          Mapped to       File" and one line per data extent
#   ("%#-16x" columns); JSON keys start, length, depth, present, zero, data, offset, one
#   object a line. The size is in whole sectors (1000 bytes map as 1024). --start-offset
#   past the end, --max-length=0 or an overflowing sum print one empty entry.
# - compare: "Images are identical." (0), "Content mismatch at offset N!" (1) at the first
#   differing 512-byte sector, "Warning: Image size mismatch!" before checking that the
#   rest of the larger image reads as zeroes, -s: "Strict mode: Image size mismatch!" or
#   "Strict mode: Offset N block status mismatch!" (the status includes whether the extent
#   reaches the end of the image). Open errors exit 2. -p steps by more than 2.
# - dd: count= counts blocks from the start of the input, skipped ones included; a skip
#   past the end prints "F: cannot skip to specified offset" and exits 0 with an empty
#   output; "-O bogus" is "Unknown file format" without a name.
# - qcow2: targets made by both tools are byte-identical, compressed ones too when the
#   clusters are compressed one at a time (-m 1). A compressed copy pads the file to whole
#   sectors at the end. "-l" on qcow2 without snapshots: "Failed to load snapshot: Can't find
#   snapshot"; an error of the first compressed write stops the copy ("error while writing
#   at byte 0: Input/output error"). map names a backing layer's file relative to the
#   directory of the image that records it.
# Known differences (with their reason): tblk-img -c compresses -m clusters at once into a
# new target, so its compressed clusters may lie in another order in the file (compared by
# content here) and those in flight when one fails are still written (only an I/O error of
# the target can fail them there). Into an existing target (-n), where clusters already
# allocated make compressed writes fail, it writes one cluster at a time as qemu-img does.
# Not compared: -o help texts (tblk's own words); read errors under --salvage (no fault
# injection driver yet); timing of -r; what SIGUSR1 prints (timing).
set -u
: "${TBLK_BUILD:?set TBLK_BUILD to the build directory}"
: "${TBLK_SRC:?set TBLK_SRC to the source directory}"

. "$TBLK_SRC/t/lib-diff.sh"
diff_init cli-img-data img qemu-img perl
K=1024
M=1048576

# The layout of d.img, d2.img, dl.img and dlx.img: "offset length byte" lines.
d_layout() {
	cat <<EOF
0 $((64 * K)) 17
$((1 * M)) $((64 * K)) 0
$((2 * M)) $((100 * K)) 34
$((3 * M)) 4096 0
$((3 * M + 512)) 512 51
$((5 * M)) $((8 * K)) 68
$((5 * M + 8 * K)) $((4 * K)) 0
$((5 * M + 12 * K)) $((8 * K)) 68
$((5 * M + 20 * K)) $((8 * K)) 0
$((5 * M + 28 * K)) $((4 * K)) 68
$((11 * M / 2)) $((5 * M / 2)) 85
EOF
}

# The spec of every file: "file size" creates it, "file offset length byte" writes (byte 0
# writes allocated zeroes).
spec() {
	local f
	for f in d.img:8 d2.img:8 dl.img:10 dlx.img:10; do
		echo "${f%:*} $((${f#*:} * M))"
		d_layout | sed "s/^/${f%:*} /"
	done
	cat <<EOF
d2.img $((2 * M + 50000)) 1 153
dlx.img $((9 * M + 100)) 1 136
h.img $((4 * M))
f.img $((3 * M))
f.img 0 $((3 * M)) 102
odd.img 1000
odd.img 0 1000 119
z0.img 0
t10.img $((10 * M))
t10.img 0 $((10 * M)) 119
t1.img $((1 * M))
t1.img 0 4096 0
EOF
}
spec >"$tmp/spec"

# make_files: writes the images of the spec into the current directory.
make_files() {
	perl -e '
		use Fcntl;
		my %fh;
		while (<STDIN>) {
			my ($f, @a) = split;
			if (@a == 1) {
				sysopen(my $h, $f, O_RDWR | O_CREAT | O_TRUNC) or die "$f: $!";
				truncate($h, $a[0]) or die;
				$fh{$f} = $h;
				next;
			}
			my ($off, $len, $byte) = @a;
			sysseek($fh{$f}, $off, 0) or die;
			syswrite($fh{$f}, chr($byte) x $len) == $len or die;
		}'
}
# qcow2 images, made by qemu: a backing chain cb <- cm <- ct (ct is larger than its
# backing files), a compressed image, one with zero and discarded clusters, a v2 one with
# 4 KiB clusters, tq.qcow2, a target with data, and tz.qcow2, an empty one.
qcow2_files() {
	local io="qemu-io -f qcow2"

	qemu-img create -q -f qcow2 cb.qcow2 4M
	$io -c "write -q -P 0x41 0 1M" cb.qcow2
	qemu-img create -q -f qcow2 -b cb.qcow2 -F qcow2 cm.qcow2 4M
	$io -c "write -q -P 0x42 512k 1M" -c "write -q -z 2M 64k" cm.qcow2
	qemu-img create -q -f qcow2 -b cm.qcow2 -F qcow2 ct.qcow2 6M
	$io -c "write -q -P 0x43 3M 64k" -c "write -q -P 0x44 5M 64k" ct.qcow2
	qemu-img convert -O raw ct.qcow2 ct.raw
	qemu-img convert -c -O qcow2 d.img c.qcow2
	qemu-img convert -O qcow2 d.img q.qcow2
	$io -c "write -q -z 5M 64k" -c "discard -q 0 64k" q.qcow2
	qemu-img convert -O qcow2 -o compat=0.10,cluster_size=4k d.img q2.qcow2
	qemu-img create -q -f qcow2 tq.qcow2 10M
	$io -c "write -q -P 0x77 0 1M" tq.qcow2
	qemu-img create -q -f qcow2 tz.qcow2 10M
	# preallocated: data clusters that are holes in the file (metadata), or not
	qemu-img create -q -f qcow2 -o preallocation=metadata pm.qcow2 4M
	$io -c "write -q -P 1 1M 4k" -c "write -q -P 2 2M 128k" -c "write -q -z 3M 64k" pm.qcow2
	qemu-img create -q -f qcow2 -o preallocation=metadata,cluster_size=16k,extended_l2=on \
		pmx.qcow2 1M
	$io -c "write -q -P 3 100k 1k" -c "write -q -P 4 512k 8k" pmx.qcow2
	qemu-img create -q -f qcow2 -o preallocation=falloc pfa.qcow2 2M
	$io -c "write -q -P 5 64k 4k" pfa.qcow2
	qemu-img create -q -f qcow2 -o preallocation=full pfu.qcow2 2M
	# written data with holes punched into it: how many decides qemu's metadata
	# preallocation heuristic (clusters in use against the blocks the file has)
	for k in 1 2 3 4; do
		qemu-img create -q -f qcow2 ph$k.qcow2 4M
		$io -c "write -q -P 6 0 2560k" ph$k.qcow2
		for i in $(seq 1 $k); do
			fallocate -p -o $((327680 + i * 65536)) -l 65536 ph$k.qcow2
		done
	done
}

mkdir "$tmp/src"
(cd "$tmp/src" && spec | make_files && qcow2_files && chmod a-w ./*)

# The sources are hard links to one read-only copy; the targets t* are fresh copies.
setup_dir() {
	rm -rf "$1"
	mkdir -p "$1"
	ln "$tmp"/src/[!t]* "$1/"
	cp "$tmp"/src/t*.qcow2 "$1/"
	chmod u+w "$1"/t*.qcow2
	(cd "$1" && grep '^t' "$tmp/spec" | make_files)
}

# Every file a case leaves; for the targets (not the read-only sources) size, contents hash
# and allocation. With $2 = content, qcow2 targets are described by what they read and by
# `qemu-img check`, not by their bytes (their clusters may lie in another order).
listing() {
	(cd "$1" && for f in *; do
		case $f in
		out|err|rc|out.f) ;;
		o*.qcow2|t*.qcow2)
			if [ "$2" = content ]; then
				PATH=$QPATH qemu-img convert -O raw "$f" content.raw 2>&1
				echo "$f $(md5sum <content.raw | cut -c1-32)"
				rm -f content.raw
				PATH=$QPATH qemu-img check "$f" 2>&1 | grep -v "end offset"
			else
				echo "$f $(stat -c %s -- "$f") $(md5sum <"$f" | cut -c1-32)"
			fi
			PATH=$QPATH qemu-img map --output=json -- "$f" 2>&1 ;;
		o*|t*)
			echo "$f $(stat -c %s -- "$f") $(md5sum <"$f" | cut -c1-32)"
			PATH=$QPATH qemu-img map --output=json -f raw -- "$f" 2>&1 ;;
		*) echo "$f" ;;
		esac
	done)
}

n=0
# run_case MODE NAME ARGS...: MODE "exact", "nostdout" (stdout is a help text: compare the
# rest) or "content" (qcow2 targets compared by content). $TODO marks a known difference
# (TAP TODO).
run_case() {
	local mode=$1 name=$2 side p
	shift 2
	for side in q t; do
		setup_dir "$tmp/$side"
		[ "$side" = q ] && p=$QPATH || p=$TPATH
		(cd "$tmp/$side" && PATH=$p qemu-img "$@" >out 2>err </dev/null; echo $? >rc)
		cp "$tmp/$side/out" "$tmp/$side/out.f"
		[ "$mode" = nostdout ] && : >"$tmp/$side/out.f"
		listing "$tmp/$side" "$mode" >"$tmp/$side.files"
	done
	verdict "$name" qemu-img "$tmp/q.files" "$tmp/t.files" files "$@"
}
c() { run_case exact "$@"; }

# ---- convert
c "convert" convert d.img o.img
c "convert -f raw -O raw" convert -f raw -O raw d.img o.img
c "convert -p" convert -p d.img o.img
c "convert -p -q" convert -p -q d.img o.img
c "convert -q" convert -q d.img o.img
c "convert -S 0" convert -S 0 d.img o.img
c "convert -S 0 -p" convert -p -S 0 d.img o.img
c "convert -S 512" convert -S 512 d.img o.img
c "convert -S 1k" convert -S 1k d.img o.img
c "convert -S 8k" convert -S 8k d.img o.img
c "convert -S 64k" convert -S 64k d.img o.img
c "convert -S 16M" convert -S 16M d.img o.img
c "convert -S 0x200" convert -S 0x200 d.img o.img
c "convert -m 1" convert -m 1 d.img o.img
c "convert -m 16 -p" convert -m 16 -p d.img o.img
c "convert -m ' 8'" convert -m " 8" d.img o.img
c "convert -W" convert -W d.img o.img
c "convert -W -m 1 -p" convert -W -m 1 -p d.img o.img
c "convert of a hole" convert -p h.img o.img
c "convert of full data" convert -p f.img o.img
c "convert of an odd size" convert -p odd.img o.img
c "convert of an empty image" convert -p z0.img o.img
c "convert, several sources" convert -p d.img f.img odd.img h.img o.img
c "convert, an empty source among others" convert z0.img f.img z0.img o.img
c "convert -n over old data" convert -n d.img t10.img
c "convert -n -p" convert -n -p h.img t10.img
c "convert -n -S 0" convert -n -S 0 d.img t10.img
c "convert -n -W -m 4" convert -n -W -m 4 d.img t10.img
c "convert -n --target-is-zero" convert -n --target-is-zero d.img t10.img
c "convert -n --target-image-opts" convert -n --target-image-opts d.img \
	driver=raw,file.filename=t10.img
c "convert -n --target-image-opts, probed" convert -n --target-image-opts d.img \
	file.filename=t10.img
c "convert --image-opts" convert --image-opts driver=raw,file.filename=d.img o.img
c "convert -C" convert -C -p d.img o.img
c "convert --salvage" convert --salvage d.img o.img
c "convert -U" convert -U d.img o.img
c "convert -T none -t none" convert -T none -t none d.img o.img
c "convert -t writeback" convert -t writeback d.img o.img
c "convert -t directsync -T unsafe" convert -t directsync -T unsafe f.img o.img
c "convert -o preallocation=full" convert -o preallocation=full d.img o.img
c "convert -o preallocation=falloc" convert -o preallocation=falloc d.img o.img
c "convert -o preallocation=off,nocow=off" convert -o preallocation=off,nocow=off d.img o.img
c "convert -o twice" convert -o preallocation=off -o extent_size_hint=1M d.img o.img
c "convert -o size is overridden" convert -o size=1M d.img o.img
c "convert -O file" convert -O file d.img o.img
c "convert -r" convert -r 1G d.img o.img
c "convert -r 0" convert -r 0 d.img o.img
c "convert --object secret" convert --object secret,id=s0,data=x d.img o.img
c "convert over an existing file" convert f.img t10.img
c "convert --" convert -- d.img o.img
c "convert: no arguments" convert
c "convert: one argument" convert d.img
c "convert: -O only" convert -O raw d.img
c "convert: missing source" convert nofile.img o.img
c "convert: second source missing" convert d.img nofile.img o.img
c "convert: target directory missing" convert d.img /nonexistent/o.img
c "convert: -n, target missing" convert -n d.img nofile.img
c "convert: -n, target too small" convert -n d.img t1.img
c "convert: unknown -O" convert -O bogus d.img o.img
c "convert: unknown -f" convert -f bogus d.img o.img
c "convert: -f qcow2 on raw" convert -f qcow2 d.img o.img
c "convert: -f twice" convert -f raw -f bogus d.img o.img
c "convert: -c on raw" convert -c d.img o.img
c "convert: -c -W on raw" convert -c -W d.img o.img
c "convert: -n -c on raw" convert -n -c d.img t10.img
c "convert: -C -c" convert -C -c -O qcow2 d.img o.img
c "convert: -C -S" convert -C -S 4k d.img o.img
c "convert: -C --salvage" convert -C --salvage d.img o.img
c "convert: --bitmaps" convert --bitmaps d.img o.img
c "convert: --bitmaps, two sources" convert --bitmaps d.img f.img o.img
c "convert: --skip-broken-bitmaps" convert --skip-broken-bitmaps d.img o.img
c "convert: --target-is-zero without -n" convert --target-is-zero d.img o.img
c "convert: --target-image-opts without -n" convert --target-image-opts d.img o.img
c "convert: --target-image-opts with -O" convert -n --target-image-opts -O raw d.img \
	driver=raw,file.filename=t10.img
c "convert: --image-opts with -f" convert --image-opts -f raw driver=raw,file.filename=d.img \
	o.img
c "convert: -n with -o" convert -n -o size=1M d.img t10.img
c "convert: -B on raw" convert -B x d.img o.img
c "convert: -F on raw" convert -F raw d.img o.img
c "convert: -b" convert -b x d.img o.img
c "convert: -l name" convert -l snap d.img o.img
c "convert: -l snapshot.id" convert -l snapshot.id=1 d.img o.img
c "convert: -l bad key" convert -l snapshot.bogus=1 d.img o.img
c "convert: -l name, two sources" convert -l snap d.img f.img o.img
c "convert: -l options, two sources" convert -l snapshot.name=x d.img f.img o.img
for a in "-S 100" "-S 32M" "-S abc" "-S -1" "-S 16E" "-m 0" "-m 17" "-m abc" "-m 08" \
	"-r abc" "-r -1" "-r 16E" "-T bogus" "-t bogus" "-p -t bogus" "-p -T bogus" \
	"-o preallocation=bogus" "-o nocow=maybe" "-o nocow" "-o bogus=1" "-o size=1M," \
	"-o ,size=1M" "-o extent_size_hint=abc" "-o size=16E" "-o preallocation=metadata" \
	"--object bogus" "--object secret" "--object secret,id=s0" "-x" "--bogus"; do
	# shellcheck disable=SC2086
	c "convert: bad option $a" convert $a d.img o.img
done
c "convert: empty -o" convert -o "" d.img o.img
c "convert: missing -O argument" convert d.img o.img -O
c "convert: -O bogus -o help" convert -O bogus -o help d.img o.img
run_case nostdout "convert -o help" convert -o help
run_case nostdout "convert -O raw -o ?" convert -O raw -o "?" d.img o.img

# ---- map
c "map" map d.img
c "map json" map --output=json d.img
c "map human" map --output=human -f raw d.img
c "map of a hole" map --output=json h.img
c "map of a hole, human" map h.img
c "map of full data" map f.img
c "map of an odd size" map --output=json odd.img
c "map of an odd size, human" map odd.img
c "map of an empty image" map --output=json z0.img
c "map of an empty image, human" map z0.img
c "map --start-offset" map --start-offset=1M d.img
c "map --start-offset --max-length json" map --start-offset=1M --max-length=100k \
	--output=json d.img
c "map unaligned window" map --start-offset=1000 --max-length=1000 --output=json d.img
c "map --start-offset 3M" map --start-offset 3M --output=json d.img
c "map --start-offset at the end" map --start-offset=8M --output=json d.img
c "map --start-offset past the end" map --start-offset=9M --output=json d.img
c "map --start-offset past the end, human" map --start-offset=9M d.img
c "map --max-length=0" map --max-length=0 --output=json d.img
c "map --max-length=0, human" map --max-length=0 d.img
c "map --max-length=100" map --max-length=100 --output=json d.img
c "map --max-length past the end" map --max-length=1G --output=json d.img
c "map, overflowing window" map --start-offset=1M --max-length=9223372036854775807 \
	--output=json d.img
c "map, hex with suffix" map --output=json --max-length=0x1p d.img
c "map -s and -l (short forms)" map -s 1M -l 2M --output=json d.img
c "map -l, -s in human form" map -l 1M -s 512k d.img
c "map: bad -s" map -s abc d.img
c "map: bad -l" map -l 1x d.img
c "map: -l without an argument" map -l
c "map -U --image-opts" map -U --image-opts driver=raw,file.filename=d.img
c "map --object" map --object secret,id=s0,data=x --output=json f.img
c "map: no file" map
c "map: two files" map d.img f.img
c "map: bad --output" map --output=bogus d.img
c "map: missing file" map nofile.img
c "map: -f qcow2 on raw" map -f qcow2 d.img
c "map: unknown format" map -f bogus d.img
c "map: --image-opts with -f" map --image-opts -f raw driver=raw,file.filename=d.img
c "map: unknown option" map -p d.img
for a in abc -1 9E 1.5; do
	c "map: --start-offset=$a" map --start-offset=$a d.img
	c "map: --max-length=$a" map --max-length=$a d.img
done
c "map: --max-length=8E" map --start-offset=1M --max-length=8E d.img

# ---- compare
c "compare identical" compare d.img d.img
c "compare different" compare d.img d2.img
c "compare -q" compare -q d.img d2.img
c "compare -p" compare -p d.img d2.img
c "compare -p identical" compare -p d.img dl.img
c "compare data with holes" compare h.img f.img
c "compare hole and zeroes" compare h.img t1.img
c "compare -f -F" compare -f raw -F raw d.img d2.img
c "compare -s identical" compare -s d.img d.img
c "compare -s, allocation differs" compare -s h.img t1.img
c "compare -s, sizes differ" compare -s d.img dl.img
c "compare -s -p, sizes differ" compare -s -p d.img dl.img
c "compare, sizes differ" compare d.img dl.img
c "compare, sizes differ, swapped" compare dl.img d.img
c "compare, sizes differ, data in the tail" compare d.img dlx.img
c "compare -p, sizes differ, data in the tail" compare -p dlx.img d.img
c "compare, odd sizes" compare odd.img z0.img
c "compare, empty images" compare z0.img z0.img
c "compare -U -T none" compare -U -T none d.img d.img
c "compare --image-opts" compare --image-opts driver=raw,file.filename=d.img \
	driver=raw,file.filename=d2.img
c "compare --object" compare --object secret,id=s0,data=x f.img f.img
c "compare: bad --object (exit 2)" compare --object bogus f.img f.img
c "compare: one file" compare d.img
c "compare: three files" compare d.img d.img d.img
c "compare: first missing" compare nofile.img d.img
c "compare: second missing" compare d.img nofile.img
c "compare: -p, missing file" compare -p d.img nofile.img
c "compare: -f qcow2 on raw" compare -f qcow2 d.img d.img
c "compare: unknown -F" compare -F bogus d.img d.img
c "compare: -T bogus" compare -T bogus d.img d.img
c "compare: -p -T bogus" compare -p -T bogus d.img d.img
c "compare: --image-opts with -f" compare --image-opts -f raw d.img d.img
c "compare: --image-opts with -F" compare --image-opts -F raw driver=raw,file.filename=d.img \
	driver=raw,file.filename=d.img
c "compare: unknown option" compare -x d.img d.img

# ---- dd
c "dd" dd if=odd.img of=o.img
c "dd bs=64k" dd if=d.img of=o.img bs=64k
c "dd bs count skip" dd if=d.img of=o.img bs=64k count=3 skip=2
c "dd odd bs" dd if=d.img of=o.img bs=1000 count=5
c "dd skip near the end" dd if=d.img of=o.img bs=1000 skip=8388
c "dd skip past the end" dd if=d.img of=o.img skip=100M
c "dd skip overflow" dd if=d.img of=o.img skip=9223372036854775807 bs=2
c "dd count=0" dd if=d.img of=o.img bs=1M count=0
c "dd count overflow" dd if=odd.img of=o.img count=9223372036854775807 bs=2
c "dd hex count" dd if=d.img of=o.img count=0x10 bs=1k
c "dd bs twice" dd bs=1k bs=2k if=f.img of=o.img
c "dd if twice" dd if=nofile.img if=f.img of=o.img bs=1M
c "dd of an odd size" dd if=odd.img of=o.img bs=300
c "dd of an empty image" dd if=z0.img of=o.img
c "dd over an existing file" dd if=f.img of=t10.img bs=1M
c "dd -f -O" dd -f raw -O raw if=d.img of=o.img bs=1M
c "dd -O file" dd -O file if=f.img of=o.img bs=1M
c "dd --image-opts" dd --image-opts if=driver=raw,file.filename=f.img of=o.img bs=1M
c "dd -U" dd -U if=f.img of=o.img bs=1M
c "dd: nothing" dd
c "dd: no of" dd if=d.img
c "dd: no if" dd of=o.img
c "dd: unknown operand" dd if=d.img of=o.img foo=1
c "dd: operand without =" dd if=d.img of=o.img foo
c "dd: bare file name" dd d.img
c "dd: unknown option" dd -x if=d.img of=o.img
for a in bs=0 bs=abc bs=3G bs=-1 count=abc count=-1 count=16E skip=abc skip=-1 bs=; do
	c "dd: $a" dd if=d.img of=o.img $a
done
c "dd: missing input" dd if=nofile.img of=o.img
c "dd: empty if" dd if= of=o.img
c "dd: empty of" dd if=d.img of=
c "dd: output directory missing" dd if=d.img of=/nonexistent/o.img
c "dd: unknown -O" dd -O bogus if=d.img of=o.img
c "dd: unknown -f" dd -f bogus if=d.img of=o.img
c "dd: --image-opts with -f" dd --image-opts -f raw if=driver=raw,file.filename=d.img of=o.img

# ---- qcow2 (images made by qemu, targets made by each tool)
c "map of a backing chain" map ct.qcow2
c "map of a backing chain, json" map --output=json ct.qcow2
c "map of a chain, window" map --output=json --start-offset=768k --max-length=3M ct.qcow2
c "map -f qcow2 of the middle" map -f qcow2 cm.qcow2
c "map of zero and discarded clusters" map --output=json q.qcow2
c "map of zero and discarded clusters, human" map q.qcow2
c "map of a v2 image, 4k clusters" map --output=json q2.qcow2
c "map of compressed clusters" map --output=json c.qcow2
c "map: compressed clusters, human" map c.qcow2
c "compare chain with its raw copy" compare ct.qcow2 ct.raw
c "compare -s chain with its raw copy" compare -s ct.qcow2 ct.raw
c "compare -p raw with the chain" compare -p ct.raw ct.qcow2
c "compare chain layers" compare cm.qcow2 ct.qcow2
c "compare -s chain layers" compare -s cm.qcow2 cb.qcow2
c "compare compressed with raw" compare c.qcow2 d.img
c "compare -s compressed with raw" compare -s c.qcow2 d.img
c "compare discarded with raw" compare -f qcow2 -F raw q.qcow2 d.img
c "compare v2 with raw" compare -s q2.qcow2 d.img
c "convert chain to raw" convert -p ct.qcow2 o.img
c "convert compressed to raw" convert c.qcow2 o.img
c "convert zero and discarded clusters to raw" convert -f qcow2 q.qcow2 o.img
c "convert v2 to raw" convert q2.qcow2 o.img
c "convert raw to qcow2" convert -p -O qcow2 d.img o.qcow2
c "convert chain to qcow2" convert -O qcow2 ct.qcow2 o.qcow2
c "convert qcow2 to qcow2 -S 0" convert -O qcow2 -S 0 q.qcow2 o.qcow2
c "convert to qcow2, several sources" convert -O qcow2 d.img f.img odd.img o.qcow2
c "convert -B -F" convert -p -O qcow2 -B cm.qcow2 -F qcow2 ct.qcow2 o.qcow2
c "convert -B to the base" convert -O qcow2 -B cb.qcow2 -F qcow2 ct.qcow2 o.qcow2
c "convert -o backing_file,backing_fmt" convert -O qcow2 \
	-o backing_file=cm.qcow2,backing_fmt=qcow2 ct.qcow2 o.qcow2
c "convert -o cluster_size,compat" convert -O qcow2 -o cluster_size=4k,compat=0.10 d.img \
	o.qcow2
c "convert -o lazy_refcounts,refcount_bits" convert -O qcow2 \
	-o lazy_refcounts=on,refcount_bits=64 d.img o.qcow2
c "convert -o compression_type=zstd -c -m 1" convert -O qcow2 -o compression_type=zstd \
	-c -m 1 d.img o.qcow2
c "convert -c -m 1" convert -c -m 1 -p -O qcow2 d.img o.qcow2
c "convert -c -m 1 of a chain" convert -c -m 1 -O qcow2 ct.qcow2 o.qcow2
c "convert -c -m 1 -S 0" convert -c -m 1 -S 0 -O qcow2 d.img o.qcow2
c "convert -c -m 1, 2M clusters" convert -c -m 1 -O qcow2 -o cluster_size=2M d.img f.img \
	o.qcow2
c "convert -c -m 1, 512-byte clusters" convert -c -m 1 -O qcow2 -o cluster_size=512 \
	odd.img f.img o.qcow2
run_case content "convert -c (parallel)" convert -c -O qcow2 d.img f.img o.qcow2
run_case content "convert -c -W" convert -c -W -m 16 -O qcow2 dl.img o.qcow2
c "convert -n into qcow2" convert -n -O qcow2 d.img tq.qcow2
c "convert -n -S 0 into qcow2" convert -n -S 0 -O qcow2 h.img tq.qcow2
c "convert -n --target-is-zero into qcow2" convert -n --target-is-zero -O qcow2 f.img \
	tq.qcow2
c "convert -n -f qcow2 -O qcow2" convert -n -f qcow2 -O qcow2 ct.qcow2 tq.qcow2
c "convert --bitmaps qcow2 to qcow2" convert --bitmaps -O qcow2 cb.qcow2 o.qcow2
for a in metadata falloc full; do
	c "convert -O qcow2 -o preallocation=$a" convert -O qcow2 -o preallocation=$a d.img \
		o.qcow2
done
c "convert -o data_file" convert -O qcow2 -o data_file=odata.raw d.img o.qcow2
c "convert -o nocow,extent_size_hint to qcow2" convert -O qcow2 \
	-o nocow=on,extent_size_hint=1M d.img o.qcow2
c "convert: -n -c over allocated clusters" convert -n -c -O qcow2 d.img tq.qcow2
c "convert: -n -c -m 1 over allocated clusters" convert -n -c -m 1 -O qcow2 d.img tq.qcow2
c "convert: -n -c into an empty qcow2" convert -n -c -p -O qcow2 d.img tz.qcow2
c "convert: -n -c, two sources" convert -n -c -m 4 -O qcow2 f.img odd.img tz.qcow2
run_case content "convert: -n -c -W into an empty qcow2" convert -n -c -W -O qcow2 dl.img \
	tz.qcow2
c "convert: -B without -F" convert -O qcow2 -B cm.qcow2 ct.qcow2 o.qcow2
c "convert: -o backing_file without backing_fmt" convert -O qcow2 -o backing_file=cm.qcow2 \
	ct.qcow2 o.qcow2
c "convert: -F without -B" convert -O qcow2 -F qcow2 d.img o.qcow2
c "convert: -B with two sources" convert -O qcow2 -B cm.qcow2 -F qcow2 d.img f.img o.qcow2
c "convert: -B with --target-is-zero" convert -O qcow2 -B cm.qcow2 -F qcow2 -n \
	--target-is-zero d.img tq.qcow2
c "convert: -c with preallocation" convert -c -O qcow2 -o preallocation=full d.img o.qcow2
c "convert: -c with encryption" convert -c -O qcow2 -o encryption=on d.img o.qcow2
c "convert: --bitmaps to raw" convert --bitmaps ct.qcow2 o.img
c "convert: -l on qcow2" convert -l snap ct.qcow2 o.img
c "convert: -l snapshot.id on qcow2" convert -l snapshot.id=1 ct.qcow2 o.img
for a in cluster_size=abc refcount_bits=abc lazy_refcounts=maybe cluster_size=3k \
	refcount_bits=3 compat=v3 bogus=1; do
	c "convert: -O qcow2 -o $a" convert -O qcow2 -o $a d.img o.qcow2
done
c "convert: -O qcow2 -o compat=0.9" convert -O qcow2 -o compat=0.9 d.img o.qcow2
# data clusters that are holes in the file: qemu asks the file where the image looks
# preallocated with metadata
for f in pm pmx pfa pfu ph1 ph2 ph3 ph4; do
	c "map, preallocated $f" map $f.qcow2
	c "map --output=json, preallocated $f" map --output=json $f.qcow2
done
c "map, preallocated, window" map --output=json --start-offset=1M --max-length=1100k pm.qcow2
c "compare -s preallocated with raw" compare -s pm.qcow2 d.img
c "compare -s preallocated layouts" compare -s pfa.qcow2 pfu.qcow2
c "compare -s metadata-preallocated images" compare -s pm.qcow2 pmx.qcow2
c "convert preallocated to raw" convert pm.qcow2 o.img
c "convert preallocated to qcow2" convert -O qcow2 pm.qcow2 o.qcow2
c "convert punched to qcow2" convert -O qcow2 ph4.qcow2 o.qcow2
c "dd -O qcow2" dd -O qcow2 if=d.img of=o.qcow2 bs=64k
c "dd from a chain" dd -f qcow2 if=ct.qcow2 of=o.img bs=1M skip=1

echo "1..$n"
