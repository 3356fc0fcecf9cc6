#!/bin/bash
# SPDX-License-Identifier: MIT
# cli-io.t - differential test of tblk-io against Debian's qemu-io 7.2: every case runs the
# same command line through both programs, on identical copies of a raw image, in two
# directories where the image has the same name, and compares stdout, stderr and the exit
# status, then the resulting images with cmp. tblk-io is run through a symlink named
# qemu-io found on PATH, so the program name in messages (and glibc's getopt messages, which
# print argv[0] as given) is the same; timing numbers are replaced by X, as QEMU's own test
# suite filters them.
#
# What qemu-io 7.2.22 does, as observed (and what tblk-io reproduces):
# - A command line is split on spaces only: no quoting, tabs are not separators, empty words
#   vanish. Unknown command: 'command "foo" not found' on stderr, exit status 1.
# - Before a command runs: 'no file open, try '"'"'help open'"'"'' without an image; then the
#   argument count ("bad argument count 1 to read, expected at least 2 arguments", on stderr);
#   then, for writing commands on a read-only image, "qemu-io: Block node is read-only".
#   Option errors come from glibc getopt ("read: invalid option -- 'x'") followed by the
#   synopsis line on stdout; a negative number looks like an option ("read -1 1").
# - Numbers: decimal (010 is ten), 0x hex, fractions only with a suffix (1.5k; "1.0" is
#   fine, "1.5" is not), suffixes b k m g t p e in either case, "1e3" and ".5k" refused.
#   A suffix on a hex number works with "qemu-io: warning: Using a multiplier suffix on hex
#   numbers is deprecated: 0x10k" on stderr. Errors on stdout: "Parsing error:
#   non-numeric argument, or extraneous/unrecognized suffix -- abc", "Parsing error: argument
#   too large -- 16E". Lengths above 2147483136: "length cannot exceed 2147483136, given 2G"
#   (write adds " without -n"). Pattern bytes: strtol base 0 in 0..255, else
#   "256 is not a valid pattern byte".
# - No alignment is required in 7.2 (read 0 40 works). Beyond the end: "read failed:
#   Input/output error" (EIO from the block layer's range check); offset == size with
#   length 0 succeeds.
# - Success: "read N/N bytes at offset X" then "<size>, 1 ops; <time> (<rate>/sec and <x>
#   ops/sec)"; sizes "%.3f" with ".000" cut, under 1 KiB "%f bytes" with ".000000" cut
#   ("280.086311 bytes/sec"); time "00.55 sec" under a second, "0:00:02.61" above; -C prints
#   "bytes,ops,0:00:00.00,bytes/sec,ops/sec". -q prints nothing (not even -v dumps).
# - -P mismatch: "Pattern verification failed at offset X, N bytes" (stdout), the read
#   line still follows, exit status 1; for aio_read the status is not affected.
# - Hex dump: "%08x: " then " %02x" per byte, two spaces, isalnum() bytes or '.'.
# - aio_read/aio_write print when the completion is processed: with -c only while a later
#   blocking command runs, in aio_flush, or at exit. aio_read errors "readv failed: ...",
#   aio_write errors "aio_write failed: ...". -i prints "injecting invalid read request".
# - Without -c, commands come from stdin after a "qemu-io> " prompt (the program name),
#   printed without a newline, also at EOF.
# - Without -f on a writable image: the three-line "WARNING: Image format was not
#   specified for 'img' and probing guessed raw." on stderr (not with -r).
# - Options: -t bogus "qemu-io: Invalid cache option: bogus", -i bogus "Invalid aio option",
#   -d bogus "Invalid discard option"; -i native without -t none/-n fails at open with
#   "can't open device img: aio=native was specified, but it requires cache.direct=on, which
#   was not specified."; -U without -r: "force-share=on can only be used with read-only
#   images"; a missing file "can't open device nofile: Could not open 'nofile': No such file
#   or directory"; two file names print the usage and exit 1.
# Deliberate differences (not compared): the --help/usage text and the extended "help cmd"
# text are tblk's own words; version strings say tblk; only tblk's commands are listed.
set -u
: "${TBLK_BUILD:?set TBLK_BUILD to the build directory}"

if ! command -v qemu-io >/dev/null || ! command -v qemu-img >/dev/null; then
	echo "1..0 # SKIP qemu-io/qemu-img not installed"
	exit 0
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tblk-cli-io.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/q" "$tmp/t"
ln -s "$TBLK_BUILD/tools/tblk-io" "$tmp/bin/qemu-io"
QPATH=$PATH
TPATH=$tmp/bin:$PATH

# The base images: 1 MiB with known data, and one of an odd size.
qemu-img create -q -f raw "$tmp/base.img" 1M
qemu-io -f raw -c "write -q -P 0x5a 64k 64k" -c "write -q -P 0xa5 200k 4k" \
	-c "write -q -P 0x41 512 100" "$tmp/base.img" >/dev/null
printf 'abcdefg' >"$tmp/src7"
: >"$tmp/empty"
base=$tmp/base.img

filter() {
	sed -E -e 's#[0-9]+ ops; [0-9:.]+( sec)? \([0-9.inf]+ [A-Za-z]+/sec and [0-9.inf]+ ops/sec\)#X ops; XX:XX:XX.X (XXX YYY/sec and XXX ops/sec)#' \
		-e 's#^([0-9]+,[0-9]+),[0-9:.]+,[0-9.inf]+,[0-9.inf]+$#\1,X,X,X#'
}

. "$TBLK_SRC/t/lib-diff.sh"
n=0
# run_case MODE NAME ARGS...: MODE is "exact", "sort" (completion order may vary: compare
# sorted lines) or "nostdout" (stdout is a usage text, compare stderr and status only).
# $INPUT, if set, is fed on stdin; otherwise stdin is /dev/null. $TODO, if set, marks a known
# difference that is the library's to fix (TAP TODO: reported, not counted as a failure).
run_case() {
	local mode=$1 name=$2 side p
	shift 2
	for side in q t; do
		rm -f "$tmp/$side/img"
		cp "$base" "$tmp/$side/img"
		[ "$side" = q ] && p=$QPATH || p=$TPATH
		(cd "$tmp/$side" && printf '%s' "${INPUT:-}" |
			PATH=$p qemu-io "$@" >out 2>err; echo $? >rc)
		filter <"$tmp/$side/out" >"$tmp/$side/out.f"
		[ "$mode" = sort ] && sort -o "$tmp/$side/out.f" "$tmp/$side/out.f"
		[ "$mode" = nostdout ] && : >"$tmp/$side/out.f"
	done
	verdict "$name" qemu-io "$tmp/q/img" "$tmp/t/img" "image contents" "$@"
}
c() { run_case exact "$@"; }

# ---- read and write, patterns and sizes
c "write and read back a pattern" -f raw -c "write -P 0xab 0 1k" -c "read -P 0xab 0 1k" img
c "pattern mismatch fails the run" -f raw -c "read -P 0xac 64k 4k" -c "read -P 0x5a 64k 64k" img
c "sizes with suffixes" -f raw -c "read 0 1.25k" -c "read 1k 0.5k" -c "read 0 1.9999k" \
	-c "read 0 1K" -c "read 0 1m" -c "read 0 1b" -c "read 1b 1B" -c "read 0 1.0" \
	-c "read 0x10 0x10" -c "read 010 1" -c "read 0 +1" img
c "statistics sizes" -f raw -c "read 0 1" -c "read 0 1000" -c "read 0 1023" -c "read 0 1025" \
	-c "read 0 1536" -c "read 0 10000" -c "read 0 1048575" -c "read 0 1572864" img
c "bad numbers" -f raw -c "read abc 1" -c "read 0 abc" -c "read 0 1.5" -c "read 0 1.5b" \
	-c "read 0 .5k" -c "read 0 1k5" -c "read 0 1kb" -c "read 0 1KiB" -c "read 0 1s" \
	-c "read 0 1e3" -c "read 0 0x" -c "read 0 0x1.5k" -c "read 0 16E" \
	-c "read 0 99999999999999999999" -c "read 9E 1" img
c "hex with a suffix warns" -f raw -c "read 0 0x10k" -c "read 0x1P 1" img
c "lengths over the limit" -f raw -c "read 0 2G" -c "read 0 1T" -c "write 0 3G" \
	-c "write -z 0 3G" -c "discard 0 1E" img
c "beyond the end" -f raw -c "read 0 2M" -c "read 1M 1" -c "read 1048575 1" \
	-c "write 1048575 2" -c "read 1M 0" -c "read 1048577 0" -c "write -z 2M 1k" \
	-c "read 0x7fffffffffffffff 1" img
c "zero-length requests" -f raw -c "read 0 0" -c "write 0 0" -c "write -z 0 0" img
c "bad patterns" -f raw -c "read -P 0x100 0 1" -c "read -P abc 0 1" -c "write -P -1 0 1" \
	-c "write -P 256 0 1" -c "write -P 1k 0 1" -c "write -P ' ' 0 1" -c "write -P '' 0 1" img
c "good patterns" -f raw -c "write -P 0xff 0 1" -c "write -P 255 1 1" -c "write -P 0377 2 1" \
	-c "read -P 255 0 3" img
c "quiet and csv" -f raw -c "write -q 0 1" -c "read -q 0 512" -c "read -C -q 0 1k" \
	-c "read -C 0 4k" -c "write -C 0 4k" -c "discard -C 0 4k" img
c "hex dumps" -f raw -c "read -v 0 40" -c "read -v 500 33" -c "read -v 64k 20" \
	-c "read -v -q 0 20" -c "read -v -P 0 0 20" img
c "pattern ranges" -f raw -c "read -P 0 -s 512 -l 512 0 4k" -c "read -P 0 -s 512 -l 512 1k 4k" \
	-c "read -P 0 -s 4000 -l 512 0 4k" -c "read -P 0 -s 512 -l 5000 0 4k" \
	-c "read -P 0 -l 0 0 4k" -c "read -P 0 -s 2 0 1" -c "read -s 1 0 1k" -c "read -l 1 0 1k" \
	-c "read -s abc 0 1" -c "read -P 1 -s 1.5 0 1" img
c "write -z and its flags" -f raw -c "write -z 64k 4k" -c "write -z -u 68k 4k" \
	-c "write -z -n 72k 4k" -c "write -z -f 76k 4k" -c "write -u 0 4k" -c "write -n 0 4k" \
	-c "write -z -P 1 0 4k" -c "write -P 1 -s x 0 1" -c "write -b -z 0 1" img
c "write -f, -p, compressed and vmstate" -f raw -c "write -f 0 1k" -c "write -p 0 1" \
	-c "read -p 0 1" -c "write -c 0 64k" -c "write -c 1 512" -c "write -c -z 0 1" \
	-c "write -b 0 1k" -c "read -b 0 1k" img
c "write -s source file" -f raw -c "write -s $tmp/src7 0 20" -c "read -v 0 20" \
	-c "write -s $tmp/src7 100 1k" -c "write -s /nonexistent 0 1k" \
	-c "write -s $tmp/empty 0 20" -c "write -s $tmp 0 1" -c "write -s /nonexistent 0 abc" img

# ---- command-line structure
c "argument counts and usage" -f raw -c "read 0 1 2" -c "read 0" -c "read" -c "read 1k" \
	-c "write -P 1 0 1 2" -c "discard 0" -c "discard 0 1 2" -c "length 1" -c "flush 1" \
	-c "info 1" -c "aio_flush 1" -c "aio_read 0" -c "help read write" img
c "getopt errors" -f raw -c "read -x 0 1" -c "read -1 1" -c "read 0 -5" -c "read -a 0 1" \
	-c "write -a 0 1" -c "aio_read -s 0 0 1k" -c "discard -v 0 1" img
c "options after operands" -f raw -c "read 0 -P 0x5a 1" -c "read 64k 4k -P 0x5a" img
c "unknown commands and spacing" -f raw -c "foo" -c "" -c "  " -c "  length  " \
	-c "read	0	1" -c "len" img
c "aliases" -f raw -c "r 0 1" -c "w 0 1" -c "l" -c "i" -c "f" -c "d 0 1" -c "r" img
c "quit stops, keeps the status" -f raw -c "help foo" -c "quit 1" -c "length" img
c "quit with arguments" -f raw -c "quit 1 2 3" -c "length" img
c "q alias" -f raw -c "q" -c "read 0 2M" img
c "length and info" -f raw -c length -c info img
c "help for one command" -f raw -c "help length" -c "help quit" -c "help ?" -c "help foo" img
c "flush" -f raw -c "write 0 4k" -c flush -c "read 0 4k" img
c "discard" -f raw -c "discard 64k 4k" -c "read -P 0 64k 4k" -c "discard -q 0 4k" \
	-c "discard 0 2M" -c "discard 1 1" -c "d 128k 64k" img
c "discard with -d unmap" -d unmap -f raw -c "discard 64k 64k" -c "read -P 0 64k 64k" img
c "no file open" -c "read 0 1" -c "length 1" -c "help length" -c quit
c "no file, no command" -c "length"
c "probed raw warns" -c "write -P 3 0 4k" -c "read -v 4090 8" img
c "probed raw read-only does not warn" -r -c "read 0 1" img
c "read-only refuses writes" -r -f raw -c "write 0 1k" -c "write -z 0 1k" -c "discard 0 1k" \
	-c "aio_write 0 1k" -c "flush" -c "read 0 1k" -c "write" -c "write -x 0 1" img
c "read-only long option" --read-only -f raw -c "write 0 1" img

# ---- aio
c "aio one at a time" -f raw -c "aio_write -P 5 0 4k" -c "aio_flush" \
	-c "aio_read -P 5 0 2k 2k" -c aio_flush -c "aio_read -P 6 0 1k" -c aio_flush \
	-c "aio_write 0 1k 512 512" -c "aio_flush" -c "read -P 0xcd 0 2k" img
c "aio completes at exit" -f raw -c "aio_write -P 7 0 4k" img
c "aio completes during a blocking read" -f raw -c "aio_write -P 7 0 4k" -c "length" \
	-c "read -q 8k 1" -c "aio_flush" img
run_case sort "many aio in flight" -f raw -c "aio_write -P 1 0 4k" -c "aio_write -P 2 8k 4k" \
	-c "aio_read 64k 64k" -c "aio_read -P 0x5a 64k 4k" -c "aio_read -v 512 16" \
	-c "aio_flush" -c "read -P 2 8k 4k" img
c "aio errors" -f raw -c "aio_write 2M 1k" -c aio_flush -c "aio_read 2M 1k" -c "aio_flush" \
	-c "aio_read -i 0 1k" -c "aio_write -i 0 1k" -c "aio_read -C 0 1k" -c "aio_flush" img
c "aio argument errors" -f raw -c "aio_write -u 0 1k" -c "aio_write -z 0 1k 1k" \
	-c "aio_read 0" -c "aio_write 0 1.5" -c "aio_read -P 256 0 1" -c "aio_read 0 2G" \
	-c "aio_read 0 1G 1G 1G" -c "aio_read -x 0 1" -c "aio_read abc 1" img
c "aio zero length" -f raw -c "aio_read 0 0" -c aio_flush -c "aio_write 0 0" -c aio_flush img
c "aio -q, -C, -v, -f, -z" -f raw -c "aio_write -f -q 0 1k" -c aio_flush -c "aio_read -C 0 1k" \
	-c aio_flush -c "aio_read -v 500 40" -c aio_flush -c "aio_read -q -P 9 0 1" -c aio_flush \
	-c "aio_write -z 64k 4k" -c aio_flush -c "aio_write -z -u 68k 4k" -c aio_flush \
	-c "aio_write -z -P 1 72k 1k" -c aio_flush -c "read -P 0 64k 9k" img
c "aio pattern mismatch keeps status 0" -f raw -c "aio_read -P 1 0 1k" -c aio_flush img

# ---- commands on stdin
INPUT=$'length\nread 0 1\nfoo\nwrite -P 9 0 1k\nread -P 9 0 1k\nquit\nlength\n' \
	c "commands on stdin" -f raw img
INPUT=$'length\nread 2M 1\n' c "stdin, failed command" -f raw img
INPUT=$'length' c "stdin without a final newline" -f raw img
INPUT='' c "empty stdin" -f raw img
INPUT=$'aio_write -P 4 0 4k\naio_flush\nread -P 4 0 4k\n' c "aio on stdin" -f raw img

# ---- program options
c "-t cache modes" -t none -f raw -c "write -P 1 0 4k" -c "read -P 1 0 4k" img
c "-t writeback, -t unsafe" -t writeback -t unsafe -f raw -c "write 0 1" img
c "-n" -n -f raw -c "read 0 1" -c "write 1 1k" img
c "-t bogus" -f raw -t bogus -c length img
c "-i bogus" -f raw -i bogus -c length img
c "-d bogus" -f raw -d bogus -c length img
c "-i native without -n" -f raw -i native -c length img
c "-k without -n" -f raw -k -c length img
c "-n -i native" -f raw -n -i native -c "write -P 2 0 4k" -c "read -P 2 0 4k" img
c "-t none -i io_uring" -f raw -t none -i io_uring -c "read 0 4k" img
c "-i threads" -f raw -i threads -c "read 0 4k" img
c "-U read-write" -U -f raw -c length img
c "-U read-only" -U -r -f raw -c length img
c "missing file" -f raw -c length nofile.img
c "missing file, probed" -c length nofile.img
c "unknown format" -f bogus -c length img
c "--image-opts" -c length -c "read -P 0x5a 64k 4k" --image-opts driver=raw,file.filename=img
c "--image-opts with -f" -f raw -c length --image-opts driver=raw,file.filename=img
c "long options" --format=raw --cmd=length --cache=none --aio=threads img
run_case nostdout "unknown option" -x -c length img
run_case nostdout "unknown long option" --bogus -c length img
run_case nostdout "missing option argument" -f raw -c
run_case nostdout "two files" -f raw -c length img img
run_case nostdout "invalid option -o" -f raw -o foo img

# ---- odd-sized image: the virtual size is rounded up to 512 bytes
truncate -s 1000 "$tmp/odd.img"
base=$tmp/odd.img
	c "odd size: length and reads near the end" -f raw -c length -c "read 0 1024" \
	-c "read 1000 24" -c "read 1000 25" -c "write -P 1 990 34" img
base=$tmp/base.img

echo "1..$n"
