# vhost-user-lib.sh - sourced by bench/vhost-user.sh and bench/vhost-user-ab.sh: the scratch
# directory, the load generator, the two 1 GiB images, a vhost-user-blk back-end started and
# stopped, and the benchmark cases. Expects $src (the source tree) and $build to be set.
# shellcheck shell=sh

size=$((1024 * 1024 * 1024))
dpid=
# The cases, "fmt rw bs depth queues" a line.
vu_all_cases="raw randread 4096 32 1
raw randread 4096 1 1
raw randwrite 4096 32 1
raw read 65536 8 1
raw randread 4096 16 2
qcow2 randread 4096 32 1
qcow2 randwrite 4096 32 1"

vu_init() {	# vu_init NAME: sets $tmp to a new scratch directory, removed at exit with the
		# back-end stopped; builds the load generator as $tmp/load
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
	trap 'kill $dpid 2>/dev/null || true; rm -rf "$tmp"' EXIT
	# shellcheck disable=SC2046
	cc -O2 -Wall -Wextra -D_GNU_SOURCE -pthread -I"$src" -I"$build" -I"$src/include" \
		$(pkg-config --cflags glib-2.0) -o "$tmp/load" "$src/bench/vhost-user-load.c"
}

vu_images() {	# vu_images DIR: DIR/raw.img and DIR/q.qcow2 of $size bytes, unless both are
		# there; filled so that reads hit data (and qcow2 clusters are allocated)
	if [ ! -f "$1/raw.img" ] || [ ! -f "$1/q.qcow2" ]; then
		qemu-img create -q -f raw "$1/raw.img" $size
		qemu-img create -q -f qcow2 "$1/q.qcow2" $size
		qemu-io -f raw -c "write -P 0x5a 0 $size" "$1/raw.img" >/dev/null
		qemu-io -f qcow2 -c "write -P 0x5a 0 $size" "$1/q.qcow2" >/dev/null
	fi
}

vu_start() {	# vu_start IMGDIR FMT QUEUES COMMAND...: starts the back-end COMMAND (a program
		# with any prefix that execs it, e.g. env) exporting IMGDIR's FMT image on $tmp/s;
		# sets dpid
	local f=$1/raw.img fmt=$2 nq=$3
	[ "$fmt" = qcow2 ] && f=$1/q.qcow2
	shift 3
	rm -f "$tmp/s"
	"$@" --object iothread,id=io0 \
		--blockdev "driver=$fmt,node-name=d,file.driver=file,file.filename=$f,file.aio=native,file.cache.direct=on" \
		--export "type=vhost-user-blk,id=e,node-name=d,addr.type=unix,addr.path=$tmp/s,writable=on,num-queues=$nq,iothread=io0" >/dev/null &
	dpid=$!
	while [ ! -S "$tmp/s" ]; do sleep 0.05; done
}

vu_stop() {	# SIGTERM, then SIGKILL after 5 s (qemu-storage-daemon sometimes hangs)
	kill $dpid 2>/dev/null || true
	for _ in $(seq 50); do kill -0 $dpid 2>/dev/null || break; sleep 0.1; done
	kill -9 $dpid 2>/dev/null || true
	wait $dpid 2>/dev/null || true
	dpid=
}
