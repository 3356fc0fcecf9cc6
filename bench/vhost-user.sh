#!/bin/sh
# vhost-user.sh - tblk-daemon against qemu-storage-daemon as vhost-user-blk back-ends, on
# the same raw and qcow2 images, driven by bench/vhost-user-load (no guest), interleaved
# round by round. Prints one line per run and the medians. Not part of CI.
#
# usage: bench/vhost-user.sh [ROUNDS] [SECONDS]     (env: TBLK_BUILD, TMPDIR, CASES, EVENT_IDX)
# CASES selects cases by a grep -E pattern over "fmt rw bs depth queues", e.g. CASES=qcow2.
# The load generator negotiates VIRTIO_RING_F_EVENT_IDX, as a Linux guest does, and refuses
# a back-end that does not offer it, so both run with the same features; EVENT_IDX=0: without.
# The order of the two back-ends alternates from round to round; the summary gives the
# medians of each back-end and the median [min..max] of the per-round ratios tblk/qsd.
set -eu
rounds=${1:-3}
secs=${2:-5}
src=$(cd "$(dirname "$0")/.." && pwd)
build=${TBLK_BUILD:-$src/b}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tblk-vubench.XXXXXX")
trap 'kill $dpid 2>/dev/null || true; rm -rf "$tmp"' EXIT
dpid=
loadopts=--event-idx
[ "${EVENT_IDX:-1}" = 0 ] && loadopts=--no-event-idx
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (load generator: $loadopts)"
cc -O2 -Wall -Wextra -D_GNU_SOURCE -pthread -I"$src" -I"$build" -I"$src/include" $(pkg-config --cflags glib-2.0) \
	-o "$tmp/load" "$src/bench/vhost-user-load.c"
size=$((1024 * 1024 * 1024))
qemu-img create -q -f raw "$tmp/raw.img" $size
qemu-img create -q -f qcow2 "$tmp/q.qcow2" $size
# Fill both so reads hit data (and qcow2 clusters are allocated).
qemu-io -f raw -c "write -P 0x5a 0 $size" "$tmp/raw.img" >/dev/null
qemu-io -f qcow2 -c "write -P 0x5a 0 $size" "$tmp/q.qcow2" >/dev/null

start() {	# start PROG FMT: starts a back-end on $tmp/s, sets dpid
	local prog=$1 fmt=$2 img=$tmp/raw.img
	[ "$fmt" = qcow2 ] && img=$tmp/q.qcow2
	rm -f "$tmp/s"
	"$prog" --object iothread,id=io0 \
		--blockdev "driver=$fmt,node-name=d,file.driver=file,file.filename=$img,file.aio=native,file.cache.direct=on" \
		--export "type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path=$tmp/s,writable=on,num-queues=$3,iothread=io0" &
	dpid=$!
	while [ ! -S "$tmp/s" ]; do sleep 0.05; done
}

stop_daemon() {	# SIGTERM, then SIGKILL after 5 s (qemu-storage-daemon sometimes hangs)
	kill $dpid 2>/dev/null || true
	for _ in $(seq 50); do kill -0 $dpid 2>/dev/null || break; sleep 0.1; done
	kill -9 $dpid 2>/dev/null || true
	wait $dpid 2>/dev/null || true
	dpid=
}

cases="raw randread 4096 32 1
raw randread 4096 1 1
raw randwrite 4096 32 1
raw read 65536 8 1
raw randread 4096 16 2
qcow2 randread 4096 32 1
qcow2 randwrite 4096 32 1"
cases=$(echo "$cases" | grep -E "${CASES:-.}")
echo "$cases" | while read -r fmt rw bs depth nq; do
	for r in $(seq "$rounds"); do
		progs="$build/tools/tblk-daemon qemu-storage-daemon"
		[ $((r % 2)) = 0 ] && progs="qemu-storage-daemon $build/tools/tblk-daemon"
		for prog in $progs; do
			start "$prog" "$fmt" "$nq"
			res=$("$tmp/load" $loadopts --socket "$tmp/s" --pid $dpid --queues "$nq" --depth "$depth" \
				--bs "$bs" --rw "$rw" --time "$secs" --size $size)
			stop_daemon
			echo "$fmt $rw bs=$bs depth=$depth queues=$nq $(basename "$prog") round=$r $res"
		done
	done
done | tee "$tmp/results"
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "--- medians over $rounds rounds (ratio columns: median [min..max] of the per-round ratios)"
python3 - "$tmp/results" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    f = line.split()
    kv = dict(x.split("=", 1) for x in f if "=" in x)
    runs[(" ".join(f[:5]), f[5])][kv["round"]] = (float(kv["iops"]), float(kv["cpu_us_per_io"]))
med = statistics.median
for c in sorted({k[0] for k in runs}):
    t = runs.get((c, "tblk-daemon"), {})
    q = runs.get((c, "qemu-storage-daemon"), {})
    rs = sorted(set(t) & set(q))
    if not rs:
        continue
    ri = [t[r][0] / q[r][0] for r in rs]
    rc = [t[r][1] / q[r][1] for r in rs]
    print("%-40s tblk %6.0f IOPS %5.1f us/IO | qsd %6.0f IOPS %5.1f us/IO | IOPS x%.2f [%.2f..%.2f]"
          " CPU x%.2f [%.2f..%.2f]"
          % (c, med(v[0] for v in t.values()), med(v[1] for v in t.values()),
             med(v[0] for v in q.values()), med(v[1] for v in q.values()),
             med(ri), min(ri), max(ri), med(rc), min(rc), max(rc)))
PY
