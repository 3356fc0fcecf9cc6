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
# shellcheck source=bench/vhost-user-lib.sh
. "$src/bench/vhost-user-lib.sh"
loadopts=--event-idx
[ "${EVENT_IDX:-1}" = 0 ] && loadopts=--no-event-idx
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg) (load generator: $loadopts)"
vu_init tblk-vubench
vu_images "$tmp"
cases=$(echo "$vu_all_cases" | grep -E "${CASES:-.}")
echo "$cases" | while read -r fmt rw bs depth nq; do
	for r in $(seq "$rounds"); do
		progs="$build/tools/tblk-daemon qemu-storage-daemon"
		[ $((r % 2)) = 0 ] && progs="qemu-storage-daemon $build/tools/tblk-daemon"
		for prog in $progs; do
			vu_start "$tmp" "$fmt" "$nq" "$prog"
			res=$("$tmp/load" $loadopts --socket "$tmp/s" --pid $dpid --queues "$nq" --depth "$depth" \
				--bs "$bs" --rw "$rw" --time "$secs" --size $size)
			vu_stop
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
