#!/bin/bash
# SPDX-License-Identifier: MIT
#
# bench/nbd.sh - tblk-nbd against qemu-nbd exporting the same image: nbdcopy and
# qemu-img convert from the export (to null: / a tmpfs file) and into it (from a tmpfs file),
# runs interleaved ours/qemu, median wall time of each, throughput in MiB/s, the server's CPU
# seconds (utime + stime from /proc) per run, the ratio ours/qemu of throughput, and the
# median of the ratios of each round's pair of runs (less sensitive to a changing load).
# Not part of `make check`.
#
#   bench/nbd.sh                       # 1 GiB raw and qcow2, 3 rounds
#   NBD_BENCH_SIZE=256M NBD_BENCH_ROUNDS=5 NBD_BENCH_FORMATS=raw bench/nbd.sh
#   NBD_BENCH_CASES="nbdcopy-out" bench/nbd.sh    # a subset of the four cases
#
# Programs: $TBLK_NBD (default $TBLK_BUILD/tools/tblk-nbd, then build/tools/tblk-nbd),
# qemu-nbd, qemu-img, nbdcopy from PATH. Scratch files go to $NBD_BENCH_DIR (default a new
# directory in /dev/shm), removed at exit.
set -eu

SIZE=${NBD_BENCH_SIZE:-1G}
ROUNDS=${NBD_BENCH_ROUNDS:-3}
FORMATS=${NBD_BENCH_FORMATS:-raw qcow2}
CASES=${NBD_BENCH_CASES:-nbdcopy-out nbdcopy-in convert-out convert-in}
TBLK_NBD=${TBLK_NBD:-${TBLK_BUILD:-build}/tools/tblk-nbd}
[ -x "$TBLK_NBD" ] || { echo "no tblk-nbd at $TBLK_NBD (set TBLK_NBD or TBLK_BUILD)" >&2; exit 1; }
DIR=${NBD_BENCH_DIR:-$(mktemp -d /dev/shm/tblk-nbd-bench.XXXXXX)}
SERVER_PID=
cleanup() {
	[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
	rm -rf "$DIR"
}
trap cleanup EXIT

bytes=$(numfmt --from=iec "$SIZE")
ticks=$(getconf CLK_TCK)

# The server's CPU time so far, in seconds.
server_cpu() {
	awk -v t="$ticks" '{ print ($14 + $15) / t }' "/proc/$SERVER_PID/stat"
}

start_server() { # prog fmt img
	local sock=$DIR/sock
	rm -f "$sock"
	"$1" -t -e 8 -f "$2" -k "$sock" "$3" >/dev/null 2>&1 &
	SERVER_PID=$!
	for _ in $(seq 200); do [ -S "$sock" ] && return 0; sleep 0.05; done
	echo "server $1 did not start" >&2
	exit 1
}

stop_server() {
	kill "$SERVER_PID"
	wait "$SERVER_PID" 2>/dev/null || true
	SERVER_PID=
}

# Runs one case against the running server; prints "seconds cpu".
one() { # case
	local uri="nbd+unix:///?socket=$DIR/sock" t0 t1 c0 c1
	c0=$(server_cpu)
	t0=$(date +%s.%N)
	case $1 in
	nbdcopy-out)	nbdcopy "$uri" null: ;;
	nbdcopy-in)	nbdcopy "$DIR/src.raw" "$uri" ;;
	convert-out)	qemu-img convert -f raw -O raw "$uri" "$DIR/out.raw"; rm -f "$DIR/out.raw" ;;
	convert-in)	qemu-img convert -n -f raw -O raw "$DIR/src.raw" "$uri" ;;
	esac
	t1=$(date +%s.%N)
	c1=$(server_cpu)
	echo "$(echo "$t1 - $t0" | bc -l) $(echo "$c1 - $c0" | bc -l)"
}

median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

echo "# bench/nbd.sh: $SIZE, $ROUNDS rounds, $(nproc) CPUs, $(uname -r)"
echo "# tblk-nbd: $TBLK_NBD; $(qemu-nbd --version | head -1); nbdcopy $(nbdcopy --version | head -1 | awk '{print $2}')"
head -c "$bytes" /dev/urandom > "$DIR/src.raw"
printf "%-7s %-12s %12s %12s %9s %9s %7s %7s\n" format case "ours MiB/s" "qemu MiB/s" \
	"ours cpu" "qemu cpu" ratio pairs
for fmt in $FORMATS; do
	img=$DIR/img.$fmt
	qemu-img convert -f raw -O "$fmt" "$DIR/src.raw" "$img"
	for c in $CASES; do
		: > "$DIR/ours"
		: > "$DIR/qemu"
		for r in $(seq 0 "$ROUNDS"); do
			for who in ours qemu; do
				prog=$TBLK_NBD
				[ $who = qemu ] && prog=qemu-nbd
				start_server "$prog" "$fmt" "$img"
				res=$(one "$c")
				stop_server
				[ "$r" -gt 0 ] && echo "$res" >> "$DIR/$who"   # round 0 warms up
			done
		done
		to=$(cut -d' ' -f1 "$DIR/ours" | median)
		tq=$(cut -d' ' -f1 "$DIR/qemu" | median)
		co=$(cut -d' ' -f2 "$DIR/ours" | median)
		cq=$(cut -d' ' -f2 "$DIR/qemu" | median)
		mo=$(echo "$bytes / 1048576 / $to" | bc -l)
		mq=$(echo "$bytes / 1048576 / $tq" | bc -l)
		pr=$(paste -d' ' "$DIR/ours" "$DIR/qemu" | awk '{ print $3 / $1 }' | median)
		printf "%-7s %-12s %12.0f %12.0f %8.2fs %8.2fs %6.2fx %6.2fx\n" "$fmt" "$c" "$mo" \
			"$mq" "$co" "$cq" "$(echo "$mo / $mq" | bc -l)" "$pr"
	done
done
