#!/bin/sh
# daemon-cli.t - tblk-daemon's command line against qemu-storage-daemon's: for bad options
# both must fail with the same exit status and the same message (program name aside);
# also --version and --help exit 0, and tblk-vhost-user-blk's --print-capabilities.
set -u
: "${TBLK_BUILD:?set TBLK_BUILD to the build directory}"
qsd=$(command -v qemu-storage-daemon)
if [ -z "$qsd" ]; then
	echo "1..0 # SKIP qemu-storage-daemon not installed"
	exit 0
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tblk-dcli.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
truncate -s 1M "$tmp/x.img"
n=0
B="--blockdev driver=file,node-name=n,filename=$tmp/x.img"
S="addr.type=unix,addr.path=$tmp/s"

run() {	# run TOOL DIR ARGS...
	local tool=$1 dir=$2
	shift 2
	mkdir -p "$dir"
	timeout 10 "$tool" "$@" >/dev/null 2>"$dir/err.raw"
	echo $? >"$dir/rc"
	sed -e 's|^[^ :]*qemu-storage-daemon: |PROG: |' -e 's|^[^ :]*tblk-daemon: |PROG: |' \
		"$dir/err.raw" >"$dir/err"
}

check() {	# check NAME ARGS...
	local name=$1 why=""
	shift
	rm -rf "$tmp/q" "$tmp/t" "$tmp/s"
	run "$qsd" "$tmp/q" "$@"
	rm -f "$tmp/s"
	run "$TBLK_BUILD/tools/tblk-daemon" "$tmp/t" "$@"
	n=$((n + 1))
	if ! cmp -s "$tmp/q/rc" "$tmp/t/rc"; then
		why="exit status $(cat "$tmp/q/rc") vs $(cat "$tmp/t/rc")"
	elif ! cmp -s "$tmp/q/err" "$tmp/t/err"; then
		why=stderr
	fi
	if [ -z "$why" ]; then
		echo "ok $n - $name"
	else
		echo "not ok $n - $name ($why)"
		diff "$tmp/q/err" "$tmp/t/err" | sed 's/^/#   /'
	fi
}

echo 1..31
check "export without node-name" --export type=vhost-user-blk,id=e
check "unknown export type" --export type=foo,id=e
check "blockdev on a missing file" --blockdev driver=file,node-name=n,filename=$tmp/none.img
check "blockdev without node-name" --blockdev driver=file,filename=$tmp/x.img
check "blockdev without driver" --blockdev node-name=n,filename=$tmp/x.img
check "duplicate node-name" $B $B
check "export of an unknown node" $B --export type=vhost-user-blk,id=e,node-name=m,$S
check "unexpected export parameter" $B --export type=vhost-user-blk,id=e,node-name=n,$S,bogus=1
check "unknown iothread" $B --export type=vhost-user-blk,id=e,node-name=n,$S,iothread=io0
check "logical-block-size 100" $B --export type=vhost-user-blk,id=e,node-name=n,$S,logical-block-size=100
check "logical-block-size 1000" $B --export type=vhost-user-blk,id=e,node-name=n,$S,logical-block-size=1000
check "num-queues 0" $B --export type=vhost-user-blk,id=e,node-name=n,$S,num-queues=0
check "num-queues 99999" $B --export type=vhost-user-blk,id=e,node-name=n,$S,num-queues=99999
check "writable=maybe" $B --export type=vhost-user-blk,id=e,node-name=n,$S,writable=maybe
check "addr missing" $B --export type=vhost-user-blk,id=e,node-name=n
check "addr.path missing" $B --export type=vhost-user-blk,id=e,node-name=n,addr.type=unix
check "addr.type inet" $B --export type=vhost-user-blk,id=e,node-name=n,addr.type=inet,addr.host=a,addr.port=1
check "addr.type=fd on a non-socket" $B --export type=vhost-user-blk,id=e,node-name=n,addr.type=fd,addr.str=0
check "socket in a missing directory" $B --export type=vhost-user-blk,id=e,node-name=n,addr.type=unix,addr.path=$tmp/no/s
check "writable export of a read-only node" --blockdev driver=file,node-name=n,filename=$tmp/x.img,read-only=on --export type=vhost-user-blk,id=e,node-name=n,$S,writable=on
check "duplicate iothread" --object iothread,id=i --object iothread,id=i
check "unknown object type" --object foo,id=i
check "poll-max-ns negative" --object iothread,id=i,poll-max-ns=-1
check "poll-max-ns not a number" --object iothread,id=i,poll-max-ns=5k
check "poll-max-ns beyond int64" --object iothread,id=i,poll-max-ns=9223372036854775808
check "poll-grow negative" --object iothread,id=i,poll-grow=-1
check "aio-max-batch empty" --object iothread,id=i,aio-max-batch=
check "unrecognized option" --bogus
check "missing option argument" --pidfile
check "stray argument" extra
n=$((n + 1))
if "$TBLK_BUILD/tools/tblk-daemon" --version >/dev/null &&
	"$TBLK_BUILD/tools/tblk-daemon" --help | grep -q vhost-user-blk; then
	echo "ok $n - --version and --help"
else
	echo "not ok $n - --version and --help"
fi
