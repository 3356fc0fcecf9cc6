#!/bin/bash
# SPDX-License-Identifier: MIT
# nbd-client.t - the nbd protocol driver against NBD servers we did not write (qemu-nbd and
# nbdkit), differentially: each case runs once with Debian's qemu-img/qemu-io and once with
# tblk-img/tblk-io (through symlinks named qemu-img/qemu-io, so messages carry the same
# program name) on the same URL, and compares stdout, stderr, the exit status and, for
# writes, the exported image afterwards.
#
# Servers: qemu-nbd exporting raw and qcow2 (-f qcow2, and a qcow2 file exported raw so the
# client probes qcow2 over nbd) on unix sockets and on a free TCP port; nbdkit's memory
# (odd size) and file plugins; nbdkit's error filter (the server's error reaches the caller
# as qemu-io reports it); nbdkit with a delay filter killed while a read waits (a clear
# error, no hang). Writes run against a fresh server per side on the same socket path, so
# URLs and messages are identical.
#
# What qemu 7.2 does, as observed: info names the image by its canonical URL
# (nbd+unix://?socket=P without an export, nbd+unix:///E?socket=P, nbd://H:P[/E]),
# "disk size: unavailable", no actual-size and no dirty-flag in JSON for raw; map gives
# offsets equal to the guest offsets; a server that is gone makes the request fail with
# EIO ("read failed: Input/output error").
set -u
: "${TBLK_BUILD:?set TBLK_BUILD to the build directory}"
: "${TBLK_SRC:?set TBLK_SRC to the source directory}"

for p in qemu-img qemu-io qemu-nbd nbdkit python3; do
	if ! command -v $p >/dev/null; then
		echo "1..0 # SKIP $p not installed"
		exit 0
	fi
done
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tblk-nbdc.XXXXXX")
pids=()
cleanup() {
	for p in "${pids[@]}"; do
		kill "$p" 2>/dev/null
	done
	rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p "$tmp/bin" "$tmp/q" "$tmp/t"
ln -s "$TBLK_BUILD/tools/tblk-img" "$tmp/bin/qemu-img"
ln -s "$TBLK_BUILD/tools/tblk-io" "$tmp/bin/qemu-io"
QPATH=$PATH
TPATH=$tmp/bin:$PATH

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits for a server's pid file, then for its socket (unix path or TCP port) to accept.
wait_ready() {
	local pidfile=$1 where=$2 i
	for i in $(seq 1 200); do
		if [ -s "$pidfile" ]; then
			case $where in
			/*) [ -S "$where" ] && break ;;
			*) python3 -c "import socket; socket.create_connection(('127.0.0.1', $where)).close()" 2>/dev/null && break ;;
			esac
		fi
		sleep 0.05
	done
	pids+=("$(cat "$pidfile")")
}

# start_qemu_nbd NAME WHERE ARGS...: WHERE is a socket path or a TCP port.
start_qemu_nbd() {
	local name=$1 where=$2
	shift 2
	rm -f "$tmp/$name.pid"
	case $where in
	/*) qemu-nbd --fork --pid-file="$tmp/$name.pid" -t -k "$where" "$@" ;;
	*) qemu-nbd --fork --pid-file="$tmp/$name.pid" -t -b 127.0.0.1 -p "$where" "$@" ;;
	esac
	wait_ready "$tmp/$name.pid" "$where"
}

start_nbdkit() {
	local name=$1 sock=$2
	shift 2
	rm -f "$tmp/$name.pid"
	nbdkit -P "$tmp/$name.pid" -U "$sock" "$@"
	wait_ready "$tmp/$name.pid" "$sock"
}

stop_server() {
	local p
	p=$(cat "$tmp/$1.pid")
	kill -"${2:-TERM}" "$p" 2>/dev/null
	while kill -0 "$p" 2>/dev/null; do sleep 0.02; done
}

# Images: raw with data, zeroes and holes; the same as qcow2.
qemu-img create -q -f raw "$tmp/base.raw" 4M
qemu-io -f raw -c "write -q -P 0x5a 0 64k" -c "write -q -P 0xa5 1M 192k" \
	-c "write -q -z 2M 64k" -c "write -q -P 0x11 3M 4k" -c "write -q -P 0x22 4190208 4096" \
	"$tmp/base.raw" >/dev/null
qemu-img convert -f raw -O qcow2 "$tmp/base.raw" "$tmp/base.qcow2"
cp "$tmp/base.qcow2" "$tmp/base2.qcow2"
truncate -s 1000 "$tmp/odd.raw"

# Read-only servers both sides share.
PORT=$(free_port)
start_qemu_nbd raw "$tmp/raw.sock" -r -f raw "$tmp/base.raw"
start_qemu_nbd qc "$tmp/qc.sock" -r -f qcow2 "$tmp/base.qcow2"
start_qemu_nbd tcp "$PORT" -r -f raw -x exp "$tmp/base2.qcow2"
start_nbdkit mem "$tmp/mem.sock" -r memory 1000
start_nbdkit file "$tmp/file.sock" -r file "$tmp/base.raw"
start_nbdkit eio "$tmp/eio.sock" --filter=error memory 1M error=EIO error-pread-rate=1 \
	error-pwrite-rate=0
start_nbdkit enospc "$tmp/enospc.sock" --filter=error memory 1M error=ENOSPC \
	error-pwrite-rate=1 error-pread-rate=0

RAW="nbd+unix:///?socket=$tmp/raw.sock"
QC="nbd+unix:///?socket=$tmp/qc.sock"
TCP="nbd://127.0.0.1:$PORT/exp"
MEM="nbd+unix:///?socket=$tmp/mem.sock"
FILE="nbd+unix:///?socket=$tmp/file.sock"

filter() {
	sed -E -e 's/^Run completed in [0-9.]+ seconds\.$/Run completed in X seconds./' \
		-e 's#[0-9]+ ops; [0-9:.]+( sec)? \([0-9.inf]+ [A-Za-z]+/sec and [0-9.inf]+ ops/sec\)#X ops; X#'
}

# name, size and contents of the files a case leaves in its directory
listing() {
	(cd "$1" && for f in *; do
		case $f in out|err|rc|out.f|'*') continue ;; esac
		printf '%s %s %s\n' "$f" "$(stat -c %s -- "$f")" "$(md5sum <"$f" | cut -c1-32)"
	done)
}

. "$TBLK_SRC/t/lib-diff.sh"
n=0

# run_side SIDE TOOL ARGS...: runs in $tmp/SIDE with that side's PATH.
run_side() {
	local side=$1 tool=$2 p
	shift 2
	[ "$side" = q ] && p=$QPATH || p=$TPATH
	(cd "$tmp/$side" && PATH=$p timeout 60 $tool "$@" >out 2>err </dev/null; echo $? >rc)
	if [ -n "${SORT:-}" ]; then
		filter <"$tmp/$side/out" | sort >"$tmp/$side/out.f"
	else
		filter <"$tmp/$side/out" >"$tmp/$side/out.f"
	fi
}

# c TOOL NAME ARGS...: a case on the shared read-only servers; files left are compared.
c() {
	local tool=$1 name=$2 side
	shift 2
	for side in q t; do
		rm -rf "${tmp:?}/$side"/*
		run_side $side $tool "$@"
		listing "$tmp/$side" >"$tmp/$side.files"
	done
	verdict "$name" $tool "$tmp/q.files" "$tmp/t.files" files "$@"
	[ -n "${TIMING:-}" ] && echo "# $SECONDS s"
}

# alloc_map: qemu-img map --output=json on stdin, as merged "start length data|zero|hole"
# lines (allocated ranges are data whatever their zero flag)
alloc_map() {
	python3 -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    kind = "data" if e["data"] else ("zero" if e["zero"] else "hole")
    if out and out[-1][2] == kind and out[-1][0] + out[-1][1] == e["start"]:
        out[-1][1] += e["length"]
    else:
        out.append([e["start"], e["length"], kind])
for o in out:
    print(*o)
'
}

# w FMT NAME TOOL ARGS...: a case that writes: each side gets a fresh copy of base.FMT
# served by its own qemu-nbd (-f FMT) on the same socket; the image is compared after.
w() {
	local fmt=$1 name=$2 tool=$3 side
	shift 3
	for side in q t; do
		rm -rf "${tmp:?}/$side"/*
		cp "$tmp/base.$fmt" "$tmp/$side.img"
		start_qemu_nbd w "$tmp/w.sock" -f "$fmt" --cache=unsafe "$tmp/$side.img"
		run_side $side $tool "$@"
		stop_server w
		qemu-img convert -f "$fmt" -O raw "$tmp/$side.img" "$tmp/$side.out.raw"
		# where qcow2 put clusters depends on the order concurrent writes arrived, and
		# whether an allocated range is a hole in qemu-nbd's file ("zero" with "data")
		# on how its cluster allocations met: compare what is allocated, not where
		(md5sum <"$tmp/$side.out.raw"; qemu-img map -f "$fmt" --output=json \
			"$tmp/$side.img" | alloc_map) >"$tmp/$side.state"
	done
	verdict "$name" $tool "$tmp/q.state" "$tmp/t.state" "image contents and map" "$@"
}
WU="nbd+unix:///?socket=$tmp/w.sock"

# ---- info, map, compare, convert, bench over every kind of server and URL
for u in "$RAW" "$QC" "$TCP" "$MEM" "$FILE"; do
	c qemu-img "info $u" info "$u"
	c qemu-img "info json $u" info --output=json "$u"
	c qemu-img "map $u" map "$u"
	c qemu-img "map json $u" map --output=json "$u"
done
for u in "nbd:unix:$tmp/raw.sock" "nbd:unix:$tmp/raw.sock:exportname=" \
	 "nbd:127.0.0.1:$PORT:exportname=exp" "nbd+tcp://127.0.0.1:$PORT/exp" \
	 "nbd://localhost:$PORT/exp" "nbd://127.0.0.1:$PORT" "nbd:127.0.0.1:$PORT" \
	 "nbd+unix:///exp?socket=$tmp/raw.sock" "nbd://" "nbd+unix:///" \
	 "nbd+unix://host/?socket=$tmp/raw.sock" "nbd://127.0.0.1:$PORT/exp?socket=x"; do
	c qemu-img "info $u" info "$u"
done
c qemu-img "info --image-opts unix" info --image-opts \
	"driver=nbd,server.type=unix,server.path=$tmp/raw.sock"
c qemu-img "info --image-opts inet" info --image-opts \
	"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=$PORT,export=exp"
c qemu-img "info raw over --image-opts" info --image-opts \
	"driver=raw,file.driver=nbd,file.server.type=unix,file.server.path=$tmp/raw.sock"
c qemu-img "map of qcow2 probed over nbd, -f qcow2" map -f qcow2 --output=json "$TCP"
c qemu-img "info -f raw of a qcow2 over nbd" info -f raw "$TCP"
for u in "$RAW" "$QC" "$TCP" "$FILE"; do
	c qemu-img "convert -O raw $u" convert -O raw "$u" out.raw
	c qemu-img "convert -O qcow2 $u" convert -O qcow2 "$u" out.qcow2
	c qemu-img "compare $u with the local raw" compare "$u" "$tmp/base.raw"
done
for u in "$RAW" "$TCP"; do
	c qemu-img "convert -S 0 -O raw $u" convert -S 0 -O raw "$u" out.raw
	c qemu-img "bench $u" bench -c 300 -s 8k "$u"
	c qemu-img "bench -w $u (read-only export)" bench -w -c 30 -f raw "$u"
done
c qemu-img "convert -O raw, odd size" convert -O raw "$MEM" out.raw
c qemu-img "compare two nbd servers" compare "$RAW" "$QC"
c qemu-img "compare nbd with a different local file" compare "$RAW" "$tmp/odd.raw"
c qemu-img "compare -s" compare -s "$RAW" "$FILE"
c qemu-img "convert two nbd sources" convert -O raw "$RAW" "$MEM" out.raw

# ---- errors on opening
c qemu-img "unknown export" info "nbd+unix:///nope?socket=$tmp/raw.sock"
c qemu-img "no server on the socket" info "nbd+unix:///?socket=$tmp/none.sock"
c qemu-img "connection refused" info "nbd://127.0.0.1:1/x"
c qemu-io "write to a read-only export" -f raw -c "write 0 512" "$RAW"
c qemu-io "read-only open, write" -r -f raw -c "write 0 512" "$RAW"
c qemu-io "info command, probed raw" -r -c info "$RAW"
c qemu-io "info command, qcow2 over nbd" -r -c info "$TCP"

# ---- qemu-io reads over nbd
for u in "$RAW" "$QC" "$TCP" "$FILE"; do
	c qemu-io "read patterns $u" -r -c "read -P 0x5a 0 64k" -c "read -P 0xa5 1M 192k" \
		-c "read -P 0 2M 64k" -c "read -P 0x11 3M 4k" -c "read -v 4190200 16" "$u"
	c qemu-io "map and alloc $u" -r -c "map" -c "alloc 0 4M" "$u"
done
c qemu-io "read past the odd size" -r -f raw -c "read -v 990 34" -c "read -P 0 1000 24" "$MEM"
c qemu-io "unaligned reads" -r -f raw -c "read -P 0x5a 1 65534" -c "readv -P 0xa5 1048577 1000 3000 7" "$RAW"

# ---- errors from the server reach the caller
c qemu-io "nbdkit error filter: EIO on reads" -f raw -c "read 0 512" -c "write -P 1 0 512" \
	-c "read 4096 4096" "nbd+unix:///?socket=$tmp/eio.sock"
c qemu-io "nbdkit error filter: ENOSPC on writes" -f raw -c "write 0 512" -c "read 0 512" \
	-c "write -z 0 64k" "nbd+unix:///?socket=$tmp/enospc.sock"
c qemu-img "nbdkit error filter: convert fails" convert -f raw -O raw \
	"nbd+unix:///?socket=$tmp/eio.sock" out.raw

# ---- writes through qemu-nbd, raw and qcow2 (-f qcow2), checked image after
aio=()
for i in $(seq 0 31); do
	aio+=(-c "aio_write -P $i $((i * 96))k 64k")
done
for fmt in raw qcow2; do
	w $fmt "$fmt: write patterns" qemu-io -f raw -c "write -P 0x77 0 64k" \
		-c "write -P 0x78 100 1000" -c "writev -P 0x79 8191 1 4097 20000" \
		-c "read -P 0x78 100 1000" -c "flush" "$WU"
	w $fmt "$fmt: write -f (FUA), -z, -z -u, discard" qemu-io -f raw \
		-c "write -f -P 0x33 64k 64k" -c "write -z 1M 64k" -c "write -z -u 1088k 64k" \
		-c "discard 3M 64k" -c "read -P 0 1M 128k" "$WU"
	SORT=1 w $fmt "$fmt: many aio requests in flight" qemu-io -f raw "${aio[@]}" \
		-c "aio_flush" -c "read -P 31 2976k 64k" -c "read -P 0 0 64k" "$WU"
	w $fmt "$fmt: convert a local raw into the export" qemu-img convert -n -f raw \
		-O raw "$tmp/base.raw" "$WU"
	w $fmt "$fmt: convert a zero image into the export" qemu-img convert -n -f raw \
		-O raw "$tmp/odd.raw" "$WU"
	# one write at a time: with several in flight the allocation order, and so the map of
	# the qcow2 behind the export, depends on timing for qemu-img as for tblk-img
	w $fmt "$fmt: bench -w" qemu-img bench -w -c 200 -d 1 -s 4k -f raw "$WU"
done
# an export is reused, not created: size checked, first sector zeroed
w raw "create on an export" qemu-img create -f raw "$WU" 1M
w raw "create bigger than the export" qemu-img create -f raw "$WU" 8M
w raw "convert -O raw into an export (no -n)" qemu-img convert -O raw "$tmp/odd.raw" "$WU"
# both qcow2 drivers zero the rest of a newly allocated cluster with a fast write-zeroes
# (NBD_CMD_WRITE_ZEROES with FAST_ZERO): holes in the export's file, not zero data
w raw "convert -O qcow2 into an export" qemu-img convert -O qcow2 "$tmp/base.qcow2" "$WU"
w raw "create -f qcow2 on an export" qemu-img create -f qcow2 "$WU" 2M
c qemu-img "create on a read-only export" create -f raw "$RAW" 1M
c qemu-img "create with no server" create -f raw "nbd+unix:///?socket=$tmp/none.sock" 1M

# ---- a server that goes away in the middle of a request: a clean error, no hang. SIGTERM
# lets nbdkit fail the read with ESHUTDOWN; SIGKILL drops the connection (EIO).
slow_case() {
	local sig=$1 want=$2 side i
	for side in q t; do
		rm -f "$tmp/slow.sock" "$tmp/$side"/*
		start_nbdkit slow "$tmp/slow.sock" --filter=delay memory 1M delay-read=30
		(cd "$tmp/$side" && PATH=$([ $side = q ] && echo "$QPATH" || echo "$TPATH") \
			timeout 60 qemu-io -f raw -c "read 0 4k" -c "read 4k 4k" \
			"nbd+unix:///?socket=$tmp/slow.sock" >out 2>err </dev/null; echo $? >rc) &
		bg=$!
		# the read waits in the delay filter once nbdkit has a client
		for i in $(seq 1 200); do
			[ "$(ss -xH 2>/dev/null | grep -c "$tmp/slow.sock")" -ge 1 ] && break
			sleep 0.05
		done
		# the handshake and the read must be under way even on a loaded machine: the
		# read waits 30 s in the filter, so waiting 2 s here costs nothing in the race
		sleep 2
		stop_server slow "$sig"
		wait $bg
		filter <"$tmp/$side/out" >"$tmp/$side/out.f"
	done
	n=$((n + 1))
	if [ "$(cat "$tmp/t/rc")" != 124 ] && grep -q "read failed: $want" "$tmp/t/out" &&
		cmp -s "$tmp/q/rc" "$tmp/t/rc" && cmp -s "$tmp/q/out.f" "$tmp/t/out.f" &&
		cmp -s "$tmp/q/err" "$tmp/t/err"; then
		echo "ok $n - server killed ($sig) during a read: '$want' as qemu-io, no hang"
	else
		echo "not ok $n - server killed ($sig) during a read: '$want' as qemu-io, no hang"
		echo "#   rc $(cat "$tmp/q/rc") vs $(cat "$tmp/t/rc")"
		diff "$tmp/q/out.f" "$tmp/t/out.f" | sed 's/^/#   out /'
		diff "$tmp/q/err" "$tmp/t/err" | sed 's/^/#   err /'
	fi
}
slow_case TERM "Cannot send after transport endpoint shutdown"
slow_case KILL "Input/output error"

echo "1..$n"
