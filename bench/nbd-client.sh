#!/bin/bash
# SPDX-License-Identifier: MIT
# nbd-client.sh - `tblk-img bench` over our nbd client vs `qemu-img bench` over qemu's, both
# against the same qemu-nbd export (a raw image in $BENCH_DIR, default /dev/shm, so the
# server's disk is not what is measured). Runs alternate, tblk then qemu, ROUNDS times per
# case; prints the median IOPS of each, their ratio, the median of the ratios of each round's
# pair of runs (less sensitive to a load that changes during the case), and the median CPU
# time (user + system, all threads) of each client per request in microseconds. Not part of
# CI.
#
#   bench/nbd-client.sh [ROUNDS]        (TBLK_BUILD: build directory, default ./b)
#   NBD_CLIENT_CASES="read-4k-d1 read-1M-d4" bench/nbd-client.sh 9    # a subset of the cases
set -eu
rounds=${1:-5}
build=${TBLK_BUILD:-b}
tblk=$build/tools/tblk-img
dir=$(mktemp -d "${BENCH_DIR:-/dev/shm}/tblk-nbd-bench.XXXXXX")
trap 'kill $(cat "$dir/pid" 2>/dev/null) 2>/dev/null; rm -rf "$dir"' EXIT

qemu-img create -q -f raw "$dir/img" 1G
qemu-io -f raw -c "write -q -P 0x5a 0 1G" "$dir/img" >/dev/null
qemu-nbd --fork --pid-file="$dir/pid" -t -f raw --cache=writeback --aio=threads \
	-k "$dir/sock" "$dir/img"
url="nbd+unix:///?socket=$dir/sock"

# run PROGRAM ARGS...: prints the I/O loop's IOPS and the process's CPU µs per request
run() {
	local prog=$1 count t cpu
	shift
	count=$(printf '%s\n' "$@" | awk 'p { print; exit } $0 == "-c" { p = 1 }')
	t=$(/usr/bin/time -f '%U %S' -o "$dir/cpu" "$prog" bench -f raw "$@" "$url" |
		sed -n 's/^Run completed in \([0-9.]*\) seconds\.$/\1/p')
	cpu=$(awk '{ print $1 + $2 }' "$dir/cpu")
	awk -v c="$count" -v t="$t" -v u="$cpu" 'BEGIN { printf "%.0f %.1f\n", c / t, u * 1e6 / c }'
}

median() {
	sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

printf '%-16s %10s %10s %7s %7s %14s\n' case tblk-IOPS qemu-IOPS ratio pairs "cpu-us/IO t/q"
while read -r name args; do
	case " ${NBD_CLIENT_CASES:-$name} " in *" $name "*) ;; *) continue ;; esac
	: >"$dir/t"
	: >"$dir/q"
	for r in $(seq 1 "$rounds"); do
		# shellcheck disable=SC2086
		run "$tblk" $args >>"$dir/t"
		# shellcheck disable=SC2086
		run qemu-img $args >>"$dir/q"
	done
	tm=$(cut -d' ' -f1 "$dir/t" | median)
	qm=$(cut -d' ' -f1 "$dir/q" | median)
	tc=$(cut -d' ' -f2 "$dir/t" | median)
	qc=$(cut -d' ' -f2 "$dir/q" | median)
	pr=$(paste -d' ' "$dir/t" "$dir/q" | awk '{ print $1 / $3 }' | median)
	printf '%-16s %10s %10s %7.2f %7.2f %14s\n' "$name" "$tm" "$qm" \
		"$(awk -v a="$tm" -v b="$qm" 'BEGIN { print a / b }')" "$pr" "$tc / $qc"
done <<'EOF'
read-4k-d1      -c 20000 -d 1 -s 4k
read-4k-d16     -c 100000 -d 16 -s 4k
read-64k-d16    -c 20000 -d 16 -s 64k
read-1M-d4      -c 2000 -d 4 -s 1M
write-4k-d16    -w -c 50000 -d 16 -s 4k
write-64k-d16   -w -c 20000 -d 16 -s 64k
EOF
