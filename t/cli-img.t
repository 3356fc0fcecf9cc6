#!/bin/bash
# SPDX-License-Identifier: MIT
# cli-img.t - differential test of tblk-img against Debian's qemu-img 7.2 for the
# subcommands tblk-img has (create, info, bench) and for the global command line: each case
# runs in two directories holding identical files, once with qemu-img and once with
# tblk-img (through a symlink named qemu-img on PATH, so messages carry the same program
# name), and compares stdout, stderr, the exit status, and the files left behind (name,
# size, allocated blocks, contents). Bench timings are replaced by X.
#
# What qemu-img 7.2.22 does, as observed:
# - Usage errors: "qemu-img: <msg>" then "Try 'qemu-img --help' for more information" (the
#   second line says qemu-img whatever the program name), exit 1: "Not enough arguments",
#   "Command not found: foo", "unrecognized option '-x'" (the whole argument as given),
#   "missing argument for option '-f'", "Expecting image file name" (create),
#   "Expecting one image file name" (info, bench), "Unexpected argument: extra".
# - Sizes: "Invalid image size specified. You may use k, M, G, T, P or E suffixes for" and
#   "qemu-img: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes." (two
#   messages); out of range: "Invalid image size specified. Must be between 0 and
#   9223372036854775807." (also for 16E, which does not even parse).
# - create: "Formatting 'F', fmt=raw size=N" then the -o options set, in the order nocow,
#   preallocation, extent_size_hint; -q silences it. Errors are "qemu-img: F: <msg>": "Image
#   creation needs a size parameter", "The image size must be specified only once",
#   "Invalid parameter 'bogus'", "Parameter 'size' expects a non-negative number below 2^64"
#   (+ two lines), "Value '16E' is out of range for parameter 'size'", "Backing file not
#   supported for file format 'raw'", "Unknown file format 'bogus'"; "Invalid option list: "
#   for an empty -o or an empty element. A bad preallocation is reported after the
#   Formatting line. The file size is rounded up to 512 (size=100 gives 512 bytes).
# - info: "image:", "file format:", "virtual size: 10 MiB (10485760 bytes)", "disk size:"
#   with sizes in "%0.3g" and the unit that keeps the number under 1000 ("0.977 MiB",
#   "1e+03 KiB"); JSON keys in QEMU's hash order: virtual-size, filename, format,
#   actual-size, dirty-flag; strings escaped with upper-case \uXXXX for non-ASCII.
#   --backing-chain --output=json wraps the object in an array.
# - bench: "Sending N read requests, S bytes each, D in parallel (starting at offset O, step
#   size X)", "Sending flush every N requests" with --flush-interval, "Run completed in
#   T seconds."; -q changes nothing. -c/-d/--flush-interval/--pattern take strtoul base 0
#   numbers ("010" is 8) up to INT_MAX (0xff): "Invalid request count specified",
#   "Invalid queue depth specified", "Invalid flush interval specified", "Invalid pattern
#   byte specified"; -s/-S up to INT_MAX, -o up to INT64_MAX with the size messages above
#   ("buffer size", "step_size", "offset"); "--flush-interval is only available in write
#   tests"; "Flush interval can't be smaller than depth"; "-t bogus": "Invalid cache mode";
#   "-i bogus": "Invalid aio option: bogus"; a failed request: "Failed request:
#   Input/output error", exit 1, no "Run completed". The offset wraps modulo the image size.
#   -w without -f warns that probing guessed raw. -U -w: "Could not open 'F':
#   force-share=on can only be used with read-only images".
# ("backing=null", copy-on-read, data-file options in info and "backing": 5 in json: are
# compared in t/cli-sweep.t.)
# Not compared: help texts (tblk's own words), version strings (they say tblk), -d 0 with
# requests to send (qemu hangs; tblk-img says "Invalid queue depth specified"), -s values
# whose depth * size overflows an int (qemu aborts).
set -u
: "${TBLK_BUILD:?set TBLK_BUILD to the build directory}"

. "$TBLK_SRC/t/lib-diff.sh"
diff_init cli-img img qemu-img

# The files every case starts with: an 8 MiB image, a 1 MiB one with data, odd names.
qemu-img create -q -f raw "$tmp/base.img" 8M
qemu-img create -q -f raw "$tmp/small.img" 1M
qemu-io -f raw -c "write -q -P 0x5a 0 64k" "$tmp/small.img" >/dev/null
truncate -s 1000 "$tmp/odd.img"
truncate -s 1023000 "$tmp/odd2.img"
# qcow2: an empty v2 image, one with data, zeroes and a compressed cluster, an overlay
qemu-img create -q -f qcow2 -o compat=0.10 "$tmp/v2.qcow2" 1M
qemu-img create -q -f qcow2 "$tmp/q.qcow2" 4M
qemu-io -c "write -q 0 64k" -c "write -q -z 1M 64k" -c "write -q -c 2M 64k" "$tmp/q.qcow2" \
	>/dev/null
qemu-img create -q -f qcow2 -b q.qcow2 -F qcow2 "$tmp/o.qcow2"
# compressed images: many compressed clusters, some overwritten, discarded, or shared with a
# snapshot (refcount 2); extended L2 with 16 KiB clusters; an overlay with compressed data
qemu-io -f raw -c "write -q -P 1 0 1M" -c "write -q -P 2 2M 512k" -c "write -q -P 3 4M 100k" \
	"$tmp/base.img" >/dev/null
for o in cluster_size=65536 extended_l2=on,cluster_size=16384; do
	f=$tmp/c-${o%%,*}.qcow2
	qemu-img convert -c -O qcow2 -o "$o" "$tmp/base.img" "$f"
	qemu-img snapshot -c s1 "$f"
	qemu-io -c "write -q -P 5 64k 64k" -c "write -q -c -P 7 128k 64k" -c "discard -q 2M 64k" \
		-c "write -q -P 6 4M 4k" "$f" >/dev/null
done
qemu-img create -q -f qcow2 -b c-cluster_size=65536.qcow2 -F qcow2 "$tmp/co.qcow2"
qemu-io -c "write -q -c -P 9 1M 64k" -c "write -q -c -P 9 3M 64k" "$tmp/co.qcow2" >/dev/null
qemu-img create -q -f raw "$tmp/base.img" 8M
# for amend -p: 512-byte clusters (a refcount table of 64 entries), 8-bit refcounts, v2, and
# an 8 GiB image (16 L1 entries)
for o in am:cluster_size=512:1M am8:cluster_size=512,refcount_bits=8:64M \
	amv2:cluster_size=512,compat=0.10:1M am8g:cluster_size=65536:8G; do
	IFS=: read -r f opts size <<<"$o"
	qemu-img create -q -f qcow2 -o "$opts" "$tmp/$f.qcow2" "$size"
	qemu-io -c "write -q -P 1 0 300k" -c "write -q -z 512k 64k" "$tmp/$f.qcow2" >/dev/null
done

setup_dir() {
	rm -rf "$1"
	mkdir -p "$1"
	cp --sparse=always "$tmp/base.img" "$1/img"
	cp --sparse=always "$tmp/small.img" "$1/small.img"
	cp "$tmp/odd.img" "$tmp/odd2.img" "$tmp/v2.qcow2" "$tmp/q.qcow2" "$tmp/o.qcow2" "$1/"
	cp "$tmp"/c-*.qcow2 "$tmp/co.qcow2" "$tmp"/am*.qcow2 "$1/"
	cp "$tmp/small.img" "$1/a\"b"
	cp "$tmp/small.img" "$1/$(printf 'x\351y')"
	cp "$tmp/small.img" "$1/é€😀"
}

filter() {
	sed -E -e 's/^Run completed in [0-9.]+ seconds\.$/Run completed in X seconds./'
}

# name, size, contents hash (and with $2, allocated blocks) of every file a case leaves
listing() {
	(cd "$1" && for f in *; do
		case $f in out|err|rc|out.f) continue ;; esac
		printf '%s %s %s %s\n' "$f" "$(stat -c %s -- "$f")" \
			"$([ -n "$2" ] && stat -c %b -- "$f")" "$(md5sum <"$f" | cut -c1-32)"
	done)
}

n=0
# run_case MODE NAME ARGS...: MODE "exact", "blocks" (also compare allocated blocks), or
# "nostdout" (stdout is a help text: compare the rest). $TODO marks a known difference that is the library's (TAP TODO).
run_case() {
	local mode=$1 name=$2 side p
	shift 2
	for side in q t; do
		setup_dir "$tmp/$side"
		[ "$side" = q ] && p=$QPATH || p=$TPATH
		(cd "$tmp/$side" && PATH=$p qemu-img "$@" >out 2>err </dev/null; echo $? >rc)
		filter <"$tmp/$side/out" >"$tmp/$side/out.f"
		[ "$mode" = nostdout ] && : >"$tmp/$side/out.f"
		listing "$tmp/$side" "$([ "$mode" = blocks ] && echo 1)" >"$tmp/$side.files"
	done
	verdict "$name" qemu-img "$tmp/q.files" "$tmp/t.files" files "$@"
}
c() { run_case exact "$@"; }

# ---- global command line
c "no arguments"
c "unknown command" foo
c "unknown option" -x
c "unknown long option" --bogus
run_case nostdout "--help" --help
run_case nostdout "-h" -h
run_case nostdout "create -h" create -h

# ---- create
c "create with a size" create -f raw c.img 10M
c "create, default format" create c.img 1.5M
	c "create, size in bytes" create -f raw c.img 1000
	c "create, tiny size" create -f raw c.img 100b
c "create, size 0" create -f raw c.img 0
	run_case blocks "create allocates the first block" create -f raw c.img 1M
c "create, hex size" create -f raw c.img 0x100
c "create -o size" create -f raw -o size=2M c.img
c "create -o size twice" create -f raw -o size=1M,size=2M c.img
c "create -o twice" create -f raw -o size=1M -o preallocation=off c.img
c "create -o nocow (short form: cow=off)" create -f raw -o nocow c.img 1M
c "create -o nolazy_refcounts" create -f qcow2 -o nolazy_refcounts,noextended_l2 c.qcow2 1M
c "create -o nobogus" create -f qcow2 -o nobogus c.qcow2 1M
c "create -o lazy_refcounts" create -f qcow2 -o lazy_refcounts c.qcow2 1M
c "create -q" create -q -f raw c.img 1M
c "create -q after operands" create -f raw c.img 2M -q
c "create --" create -f raw -- c.img 1M
run_case blocks "create preallocation=full" create -f raw -o preallocation=full c.img 1M
run_case blocks "create preallocation=falloc" create -f raw -o preallocation=falloc c.img 1M
c "create preallocation twice" create -f raw -o preallocation=falloc,preallocation=full c.img 1M
c "create nocow, extent_size_hint" create -f raw \
	-o nocow=on,preallocation=off,extent_size_hint=1M c.img 1M
c "create over an existing image" create -f raw small.img 2M
c "create: no file name" create
c "create: no file name with -f" create -f raw
c "create: no size" create -f raw c.img
c "create: unexpected argument" create -f raw c.img 1M extra
c "create: missing -f argument" create -f
c "create: missing -o argument" create -f raw -o
c "create: unknown option" create -x -f raw c.img 1M
c "create: negative size" create -f raw c.img -1
c "create: bad sizes" create -f raw c.img 1.5
c "create: bad size abc" create -f raw c.img abc
c "create: size 16E" create -f raw c.img 16E
c "create: size 8E" create -f raw c.img 8E
c "create: size twice" create -f raw -o size=2M c.img 3M
c "create: -o size=abc" create -f raw -o size=abc c.img
c "create: -o size=1.5" create -f raw -o size=1.5 c.img
c "create: -o size=16E" create -f raw -o size=16E c.img
c "create: -o size without value" create -f raw -o size c.img
c "create: -o unknown" create -f raw -o bogus=1 c.img 1M
c "create: -o bare unknown" create -f raw -o foo c.img 1M
c "create: -o nocow=maybe" create -f raw -o nocow=maybe c.img 1M
c "create: -o extent_size_hint=abc" create -f raw -o extent_size_hint=abc c.img 1M
c "create: empty -o" create -f raw -o "" c.img 1M
c "create: -o trailing comma" create -f raw -o size=1M, c.img
c "create: -o leading comma" create -f raw -o ,size=1M c.img
c "create: unknown format" create -f bogus c.img 1M
c "create: backing file" create -f raw -b x c.img 1M
c "create: backing format" create -f raw -F raw c.img 1M
c "create: -u" create -f raw -u c.img 1M
c "create: bad preallocation" \
	create -f raw -o preallocation=bogus c.img 1M
	c "create: preallocation=metadata" \
	create -f raw -o preallocation=metadata c.img 1M
c "create: directory missing" create -f raw /nonexistent/c.img 1M

# ---- info
c "info" info img
c "info json" info --output=json img
c "info human" info --output=human img
c "info json, long options" info --output json --format raw --force-share img
c "info -f raw -U" info -f raw -U small.img
c "info --backing-chain" info --backing-chain small.img
c "info --backing-chain json" info --backing-chain --output=json small.img
c "info odd size" info odd.img
	c "info odd size json" info --output=json odd2.img
c "info on JSON-hostile names" info --output=json 'a"b'
c "info, non-ASCII name" info --output=json é€😀
c "info, invalid UTF-8 name" info --output=json "$(printf 'x\351y')"
c "info --image-opts" info --image-opts driver=raw,file.filename=small.img
c "info --image-opts file" info --output=json --image-opts driver=file,filename=small.img
c "info -f file" info -f file small.img
c "info: bad --output" info --output=bogus img
c "info: --output eats the name" info --output img
c "info: no name" info
c "info: two names" info img small.img
c "info: missing file" info nofile
c "info: wrong format" info -f qcow2 img
c "info: unknown format" info -f bogus img
c "info: unknown option" info --limits img
c "info: --image-opts with -f" info -f raw --image-opts driver=raw,file.filename=img

# ---- bench
c "bench read" bench -c 1000 img
c "bench defaults" bench -f raw img
c "bench write" bench -f raw -w -c 1000 img
c "bench write probed" bench -w -c 10 img
c "bench write pattern" bench -f raw -w --pattern=0x41 -c 100 -d 4 -s 1k -S 3k -o 4096 img
c "bench sizes and steps" bench -f raw -c 1000 -d 4 -s 64k -S 128k -o 4096 img
c "bench write with flushes" bench -f raw -w --flush-interval=100 -c 1000 img
c "bench write, flushes without drain" bench -f raw -w --flush-interval=100 --no-drain -c 1000 img
c "bench flush interval 0" bench -f raw -w --flush-interval=0 -c 10 img
c "bench wraps around the image" bench -f raw -w --pattern=7 -c 300 -s 4k -S 12k -o 7M img
c "bench steps off the end" bench -f raw -c 100000 -s 1000 img
c "bench starts past the end" bench -f raw -c 10 -o 8M img
c "bench -q" bench -f raw -q -c 100 img
c "bench -c 0" bench -f raw -c 0 img
c "bench -c 0 -d 0" bench -f raw -c 0 -d 0 img
c "bench octal and hex counts" bench -f raw -c 010 -d 0x4 img
c "bench -s 0" bench -f raw -c 10 -s 0 img
c "bench -S 0" bench -f raw -c 10 -S 0 img
c "bench -o with suffix" bench -f raw -c 10 -o 1.5k img
c "bench -t none -i native" bench -f raw -t none -i native -c 100 img
c "bench -n -t none" bench -f raw -n -t none -c 100 img
c "bench -t none -i io_uring" bench -f raw -t none -i io_uring -c 100 img
c "bench -t none unaligned" bench -f raw -t none -s 1000 -c 100 img
c "bench -t writethrough" bench -f raw -w -t writethrough -c 100 img
c "bench -i threads" bench -f raw -i threads -c 10 img
c "bench -U" bench -f raw -U -c 10 img
c "bench --image-opts" bench -c 10 --image-opts driver=raw,file.filename=img
c "bench --image-opts file" bench -w -c 10 --image-opts driver=file,filename=img
c "bench: -i native without -t none" bench -f raw -i native -c 100 img
c "bench: -n without -t none" bench -f raw -n -c 100 img
c "bench: -U -w" bench -f raw -c 10 -w -U img
c "bench: --image-opts with -f" bench -f raw -c 10 --image-opts driver=raw,file.filename=img
for a in "-c -1" "-c abc" "-c 1k" "-c 4294967296" "-c 2147483648" "-d abc" "-d 1k" \
	"-s abc" "-s 3G" "-S abc" "-S 3G" "-o abc" "-o -1" "-o 16E" "-w --pattern=256" \
	"-w --pattern=abc" "-w --pattern=-1" "-w --flush-interval=abc" \
	"-w --flush-interval=-1" "-w --flush-interval=2147483648" "--flush-interval=5" \
	"-w --flush-interval=010" "-c 20 -d 100 -w --flush-interval=3" "-i bogus" "-t bogus" \
	"-x" "-c"; do
	# shellcheck disable=SC2086
	c "bench: bad option $a" bench -f raw $a img
done
c "bench: missing --flush-interval argument" bench --flush-interval
c "bench: no file" bench
c "bench: two files" bench img img
c "bench: missing file" bench -f raw nofile
c "bench: unknown format" bench -f bogus img

# ---- check: the counters qemu-img leaves out when they are zero
for f in v2.qcow2 q.qcow2 o.qcow2 img c-cluster_size=65536.qcow2 c-extended_l2=on.qcow2 \
	co.qcow2; do
	c "check $f" check $f
	c "check --output=json $f" check --output=json $f
done
c "check -r all, compressed clusters" check -r all --output=json c-extended_l2=on.qcow2
c "info --output=json, compressed clusters" info --output=json --backing-chain co.qcow2
c "map --output=json, compressed clusters" map --output=json co.qcow2
c "map, compressed clusters" map c-extended_l2=on.qcow2
c "check -r leaks" check -r leaks q.qcow2
c "check -r all --output=json" check -r all --output=json q.qcow2
c "check -q" check -q q.qcow2
c "check -U -f qcow2" check -U -f qcow2 o.qcow2
c "check: bad -r" check -r bogus q.qcow2
c "check: wrong format" check -f qcow2 img

# ---- --object: qemu-img's checks of the definition
for o in secret,id=s0,data=x bogus id=x secret iothread,id=x secret,id=0s,data=x \
	secret,id=s0,data=x,bogus=1 secret,id=s0,data=x,format=bogus help; do
	c "info --object $o" info --object "$o" small.img
done
c "info --image-opts, a short-form boolean" info --image-opts \
	driver=raw,file.filename=small.img,x
# json: file names: their options, those given apart winning
J='json:{"driver":"qcow2","file":{"driver":"file","filename":"o.qcow2"}}'
c "info of a json: file name" info "$J"
c "info --backing-chain --output=json, json: file name" info --backing-chain --output=json "$J"
c "info -f raw of a json: file name" info -f raw "$J"
c "info of a json: file name without a driver" info \
	'json:{"file":{"driver":"file","filename":"q.qcow2"}}'
c "info --image-opts backing= (deprecated)" info --backing-chain --image-opts \
	driver=qcow2,file.filename=o.qcow2,backing=

# ---- children given as strings (references to existing nodes: qemu-img has none), backing.*
# options where the backing file is not opened (info, rebase -u: qemu leaves them to the
# unsupported-option check, which names the first key in its dictionary's hash order)
O=driver=qcow2,file.filename=o.qcow2
for a in "info --image-opts $O,backing.file.filename=q.qcow2" \
	"info --backing-chain --image-opts $O,backing.driver=qcow2,backing.file.filename=q.qcow2" \
	"info --output=json --image-opts $O,backing.driver=raw,backing.file.filename=small.img" \
	"info --image-opts $O,backing=foo" "map --image-opts $O,backing=foo" \
	"map --image-opts $O,backing=foo,backing.driver=qcow2" "map --image-opts $O,backing=" \
	"map --image-opts $O,backing.file.filename=q.qcow2" \
	"rebase -u -b x --image-opts $O,backing.file.filename=q.qcow2" \
	"info --image-opts driver=qcow2,file=foo" "info --image-opts driver=qcow2,file=" \
	"info --image-opts driver=raw,file=foo,file.filename=small.img" \
	"info --image-opts $O,file=x" "map --image-opts $O,data-file.filename=x" \
	"map --image-opts $O,data-file.filename=small.img" \
	"map --image-opts $O,data-file.filename=small.img,data-file.bogus=1" \
	"map --image-opts $O,data-file=foo" \
	"info --image-opts driver=copy-on-read,file=foo" \
	"info --image-opts driver=copy-on-read,file.filename=small.img" \
	"info --image-opts driver=copy-on-read,file.filename=nofile" \
	"info --image-opts driver=raw,file.filename=small.img,x=1,bogus=2" \
	"info --image-opts driver=raw,file.filename=small.img,foo=1,bogus=2" \
	"info --image-opts driver=file,filename=small.img,x=1,bogus=2,foo=3"; do
	# shellcheck disable=SC2086
	c "${a%% *} ${a##*,}" $a
done
c "map of a json: file name, backing null" map \
	'json:{"driver":"qcow2","file":{"filename":"o.qcow2"},"backing":null}'
c "map of a json: file name, backing a string" map \
	'json:{"driver":"qcow2","file":{"filename":"o.qcow2"},"backing":"q.qcow2"}'
c "info of a json: file name, file a string" info 'json:{"driver":"qcow2","file":"o.qcow2"}'
c "info of a json: file name, file null" info 'json:{"driver":"qcow2","file":null}'

# ---- json: file names: qemu's lexer ("stray" tokens), parser and top-level messages
while IFS= read -r j; do
	c "info json:$j" info "json:$j"
done <<'EOF'
{
 
{"driver":
{"driver":"raw"
{"driver" "raw"}
[1]
"x"
{"driver":"raw",}
{"a":1} x
{driver:1}
{"file":{"filename":"small.img"}}x
{'file':1}
{"x":[1,2]}
{"file.filename":"small.img","driver":"raw"}
{"file":{"filename":"small.img"},"driver":"raw","driver":"qcow2"}
{"driver":"raw","file":{"filename":"small.img"},"size":1.5}
{"driver":"raw","file":{"filename":"small.img","x":"\u00e9"}}
{"a":"\q"}
{"a":tru}
{"a":1 "b":2}
{1:2}
{"a":@}
{"a":[1,}
{"a":[1 2]}
{"a":[}
{"a":1,,}
{,}
{"a"}
{"a":}
{"a":-}
{"a":01}
{"a":1e}
{"a":"x
{"a":"\u12"}
{"a":"\ud800"}
{"a":true,"b":false,"c":null}
{"a":1}}
]
}
{"a":{"b":1,"b":2}}
{"a":1.5e3}
{"a":"x\x"}
{'a':'b"'}
{"a":nul}
{"a":"	"}
{"a":1}{"b":2}
{"a":[[[[]]]]}
x
{"a":"\/"}
{"a":18446744073709551616}
{"a":-1}
{"a" : 1 , }
{"a":%d}
{"a":TRUE}
{"a":tr_ue}
{"a":t1}
{"a":1x}
{"a":1.}
{"a":.5}
{"a":+1}
{"a":1e+}
{"a":-01}
{"a":0.5e-3x}
{"a":"\u0000"}
{"a":"\uDC00"}
{"a":"\ud800\u0041"}
{"a":"\u00e9\u12G4"}
{"a" "b" @}
{"a":{}}
1 2
"x" @
{"a":1} @
{'a":1}
[
{"file":{"filename":"small.img"},"file":{"driver":"file"}}
{"driver":"raw","file":{"driver":"file","filename":"small.img"}}
{"driver":"raw","file":{"driver":"file","filename":"r\u002eimg"}}
{"driver":"raw","file":{"driver":"file",'filename':'small.img'}}
{"driver":"qcow2","file":{"filename":"o.qcow2"},"backing":null}
{"driver":"qcow2","file":{"filename":"o.qcow2"},"backing":{"driver":"qcow2","file":{"filename":"q.qcow2"}}}
{"driver":"qcow2","file":{"filename":"o.qcow2"},"backing":1}
{"driver":"raw","file":{"driver":"raw","filename":"small.img"}}
{"driver":"file"}
{"file":{"driver":"file"}}
{"driver":"qcow2","file":{}}
{"file":"small.img"}
{"filename":"small.img"}
{"driver":"raw","filename":"small.img"}
EOF
j=$(printf '{"a":"\001"}')
c "info json: with a control character" info "json:$j"
j=$(printf '{"a":"\377"}')
c "info json: with a byte 0xff" info "json:$j"
j='{"a":'$(printf '%*s' 1023 '' | tr ' ' '[')$(printf '%*s' 1023 '' | tr ' ' ']')'}'
c "info json: nested 1024 deep" info "json:$j"
j='{"a":'$(printf '%*s' 1024 '' | tr ' ' '[')$(printf '%*s' 1024 '' | tr ' ' ']')'}'
c "info json: nested 1025 deep" info "json:$j"
for a in "filename=small.img" "driver=raw,filename=small.img" "file=small.img" \
	"driver=qcow2,filename=o.qcow2" "driver=raw,file.driver=raw,file.filename=small.img"; do
	c "map --image-opts $a" map --image-opts "$a"
done

# ---- empty names: qemu hands an empty file name to the file driver; an empty backing file
for a in "info ''" "info -f raw ''" "info -f qcow2 ''" "map ''" "info --image-opts ''" \
	"info json:{}" "create -f qcow2 -b '' -F raw x.qcow2 1M" \
	"create -f qcow2 -o backing_file= -F raw x.qcow2 1M" "create -f qcow2 -b '' x.qcow2 1M" \
	"create -f qcow2 -o backing_file=,backing_fmt=raw x.qcow2"; do
	eval "c \"\$a\" $a"
done

# ---- amend -p: the steps qemu's qcow2 reports (upgrade: 2 units; refcount width: 3 walks
# over the refcount table, one unit an entry; downgrade: one unit per L1 entry), the steps
# combined with the ones still to come projected, and qemu-img's own 0 and 100
for a in compat=0.10 refcount_bits=8 refcount_bits=1 refcount_bits=64 lazy_refcounts=on \
	size=2M compat=1.1; do
	c "amend -p -o $a" amend -p -o $a am.qcow2
done
c "amend -p, upgrade and refcount width" amend -p -o compat=1.1,refcount_bits=8 amv2.qcow2
c "amend -p, upgrade" amend -p -o compat=1.1 amv2.qcow2
c "amend -p, refcount width and downgrade" amend -p -o compat=0.10,refcount_bits=16 am8.qcow2
c "amend -p, downgrade of 16 L1 entries" amend -p -o compat=0.10 am8g.qcow2
c "amend -p, refcount width of a 64k-cluster image" amend -p -o refcount_bits=2 am8g.qcow2
c "amend -p -q" amend -p -q -o refcount_bits=8 am.qcow2
c "amend -p, an error" amend -p -o compat=0.10,refcount_bits=8 am.qcow2

echo "1..$n"
