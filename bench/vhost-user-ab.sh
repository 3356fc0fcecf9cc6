#!/bin/sh
# vhost-user-ab.sh - several vhost-user-blk back-ends (tblk-daemon builds or settings, and
# qemu-storage-daemon) paired round by round on the same images with bench/vhost-user.sh's
# command line: each round runs every back-end once, in an order rotated from round to round,
# and ratios are taken within the round. Not part of CI.
#
# usage: bench/vhost-user-ab.sh ROUNDS SECONDS 'NAME=COMMAND' ['NAME=COMMAND' ...]
#   COMMAND is the back-end program with any prefix, e.g. 'new=env X=1 b/tools/tblk-daemon'
#   or 'qsd=qemu-storage-daemon'; the first back-end is the reference of the ratios.
#   env: CASES (grep -E over "fmt rw bs depth queues", default: raw randwrite d32, raw randread
#   d32, qcow2 randwrite d32), TBLK_BUILD (for the load generator's config), TMPDIR, IMGDIR
#   (a directory where the two 1 GiB images are kept between invocations),
#   IOSUBMIT=1 to record the sizes of the back-end's io_submit() calls with perf (2 s of each
#   run; this costs CPU, so do not mix it with the CPU figures).
# Prints each run, the load average at the start and end of each case, then per case the
# median IOPS and CPU µs/IO of each back-end and the median [min..max] of the per-round ratios
# of each back-end to the first.
set -eu
rounds=$1
secs=$2
shift 2
src=$(cd "$(dirname "$0")/.." && pwd)
build=${TBLK_BUILD:-$src/b}
# shellcheck source=bench/vhost-user-lib.sh
. "$src/bench/vhost-user-lib.sh"
vu_init tblk-vuab
img=${IMGDIR:-$tmp}
vu_images "$img"
n=0
for b in "$@"; do
	n=$((n + 1))
	echo "${b%%=*}" >"$tmp/name$n"
	echo "${b#*=}" >"$tmp/cmd$n"
done

cases="raw randwrite 4096 32 1
raw randread 4096 32 1
qcow2 randwrite 4096 32 1"
[ -n "${CASES:-}" ] && cases=$(echo "$vu_all_cases" | grep -E "$CASES")
echo "$cases" | while read -r fmt rw bs depth nq; do
	echo "load average at start of $fmt $rw $bs $depth $nq: $(cut -d' ' -f1-3 /proc/loadavg)"
	for r in $(seq "$rounds"); do
		for i in $(seq "$n"); do
			k=$(( (i + r - 2) % n + 1 ))
			# shellcheck disable=SC2046
			vu_start "$img" "$fmt" "$nq" $(cat "$tmp/cmd$k")	# 'env' execs: $dpid is the daemon
			if [ "${IOSUBMIT:-0}" = 1 ]; then
				(sleep 0.5; perf record -q -e syscalls:sys_enter_io_submit -p $dpid \
					-o "$tmp/perf.data" -- sleep 2 >/dev/null 2>&1) &
				ppid=$!
			fi
			res=$("$tmp/load" --event-idx --socket "$tmp/s" --pid $dpid --queues "$nq" \
				--depth "$depth" --bs "$bs" --rw "$rw" --time "$secs" --size $size)
			sub=
			if [ "${IOSUBMIT:-0}" = 1 ]; then
				wait $ppid || true
				sub=" io_submit_sizes=$(perf script -i "$tmp/perf.data" -F trace 2>/dev/null |
					sed -n 's/.*nr: 0x\([0-9a-f]*\).*/\1/p' | sort | uniq -c |
					while read -r cnt nr; do printf '%d:%d,' "0x$nr" "$cnt"; done)"
			fi
			vu_stop
			echo "$fmt $rw bs=$bs depth=$depth queues=$nq $(cat "$tmp/name$k") round=$r $res$sub"
		done
	done
	echo "load average at end of $fmt $rw $bs $depth $nq: $(cut -d' ' -f1-3 /proc/loadavg)"
done | tee "$tmp/results"
python3 - "$tmp/results" "$(cat "$tmp/name1")" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(dict)
names = []
for line in open(sys.argv[1]):
    f = line.split()
    if not f or f[0] == "load":
        continue
    kv = dict(x.split("=", 1) for x in f if "=" in x)
    if f[5] not in names:
        names.append(f[5])
    runs[(" ".join(f[:5]), f[5])][kv["round"]] = (float(kv["iops"]), float(kv["cpu_us_per_io"]))
med = statistics.median
ref = sys.argv[2]
print("--- medians (ratios: median [min..max] of the per-round ratios to %s)" % ref)
for c in sorted({k[0] for k in runs}):
    base = runs.get((c, ref), {})
    for nm in names:
        t = runs.get((c, nm), {})
        if not t:
            continue
        line = "%-40s %-10s %7.0f IOPS %5.1f us/IO" % (c, nm, med(v[0] for v in t.values()),
                                                      med(v[1] for v in t.values()))
        rs = sorted(set(t) & set(base))
        if nm != ref and rs:
            ri = [t[r][0] / base[r][0] for r in rs]
            rc = [t[r][1] / base[r][1] for r in rs]
            line += " | IOPS x%.2f [%.2f..%.2f] CPU x%.2f [%.2f..%.2f]" % (
                med(ri), min(ri), max(ri), med(rc), min(rc), max(rc))
        print(line)
PY
