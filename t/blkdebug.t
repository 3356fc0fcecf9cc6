#!/bin/bash
# SPDX-License-Identifier: MIT
# blkdebug.t - differential test of the blkdebug protocol against Debian's qemu-io 7.2: config
# files and options (accepted, refused and with which message), injected errors on qcow2
# events (sticky, once, errno, sector, iotype, states), and breakpoints (break, wait_break,
# resume, remove_break). Each case runs the same command line through qemu-io and tblk-io
# (through a symlink named qemu-io) on fresh copies of one qcow2 image and compares stdout,
# stderr and the exit status; then the image tblk-io left must pass `qemu-img check`
# (leaks allowed: they are what a failed allocation leaves in qemu too).
#
# What qemu-io 7.2.22 does, as observed:
# - "blkdebug:CONFIG:IMAGE"; an empty CONFIG means no rules; without the second colon
#   "blkdebug requires both config file and image path".
# - Config lines: '#' comments only in column 0; "key = "value"" where the key is the first
#   word, so 'errno="28"' is the key 'errno="28"' ("Invalid parameter 'errno="28"'") and an
#   unquoted value is empty; a blank line is skipped but one of spaces is "parse error"; a
#   key before any group "no group defined"; unknown groups "There is no option group 'x'";
#   "[inject-error "id"]" twice "Duplicate ID 'id' for inject-error". Numbers take C syntax
#   (0x1c, leading blanks); booleans on/off/yes/no/true/false.
# - An event activates the inject-error rules written for it (in the current state, state 0
#   meaning any): from then on every request of their iotype fails with errno until another
#   event activates other rules; with once=on a rule is removed after one failure. set-state
#   changes the state after the event. A sector rule fails only requests covering it. Rules
#   on the event "none" are active from the open on (a qcow2 header read fails).
# - Breakpoints print "blkdebug: Suspended request 'TAG'" and "blkdebug: Resuming request
#   'TAG'"; a breakpoint fires once; resume wakes one request; unknown tags and events are
#   ENOENT ("No such file or directory").
# Not compared: qemu's close reports "Failed to flush the L2 table cache: ..." on stderr when
# its caches cannot be written; tblk's close does not print. Those lines are filtered out.
set -u
: "${TBLK_BUILD:?set TBLK_BUILD to the build directory}"

. "$TBLK_SRC/t/lib-diff.sh"
diff_init blkdebug io qemu-io qemu-img

qemu-img create -q -f qcow2 "$tmp/base.qcow2" 4M
# A second image with data in its first cluster: overwrites there allocate nothing.
cp "$tmp/base.qcow2" "$tmp/data.qcow2"
qemu-io -f qcow2 -c "write -q -P 0x11 0 64k" "$tmp/data.qcow2" >/dev/null
base=$tmp/base.qcow2

filter() {
	local n='[0-9.inf]+'
	sed -E -e "s#[0-9]+ ops; [0-9:.]+( sec)? \\($n [A-Za-z]+/sec and $n ops/sec\\)#X ops; X#"
}

n=0
# conf TEXT: the config file both sides read (printf format).
conf() {
	# shellcheck disable=SC2059
	printf "$1" >"$tmp/q/c.conf"
	cp "$tmp/q/c.conf" "$tmp/t/c.conf"
}
# run_case NAME ARGS...: runs qemu-io ARGS in both directories (image "img", config
# "c.conf"), compares, then checks tblk-io's image. $TIMEOUT ends both programs; $SORT
# compares sorted stdout (requests running side by side complete in either order); $IMG
# replaces the base image.
run_case() {
	local name=$1 side p
	shift
	for side in q t; do
		cp "${IMG:-$base}" "$tmp/$side/img"
		[ "$side" = q ] && p=$QPATH || p=$TPATH
		(ulimit -c 0; cd "$tmp/$side" &&
			PATH=$p ${TIMEOUT:+timeout "$TIMEOUT"} qemu-io "$@" >out 2>err </dev/null
			echo $? >rc) 2>/dev/null
		sed -i -E -e '/Failed to flush the (L2 table|refcount block) cache/d' \
			"$tmp/$side/err"
		filter <"$tmp/$side/out" >"$tmp/$side/out.f"
		[ -n "${SORT:-}" ] && sort -o "$tmp/$side/out.f" "$tmp/$side/out.f"
	done
	verdict "$name" qemu-io /dev/null /dev/null "" "$@"
	n=$((n + 1))
	if qemu-img check -q "$tmp/t/img" >/dev/null 2>&1 || [ $? = 3 ]; then
		echo "ok $n - $name: image clean"
	else
		echo "not ok $n - $name: image clean"
		qemu-img check "$tmp/t/img" 2>&1 | head -5 | sed 's/^/#   /'
	fi
}
c() { run_case "$@"; }
bd="-f qcow2 blkdebug:c.conf:img"

# ---- config files: accepted and refused
conf ''
c "empty config" -c "write 0 64k" $bd
c "missing config file" -c "write 0 64k" -f qcow2 blkdebug:nonexistent.conf:img
c "no image path" -c "write 0 64k" -f qcow2 blkdebug:img
c "no config, image" -c "write 0 64k" -c "read -P 0xcd 0 64k" -f qcow2 blkdebug::img
conf '[inject-error]\nevent = "foo"\n'
c "unknown event" -c "write 0 64k" $bd
conf '[inject-error]\nerrno = "5"\n'
c "missing event" -c "write 0 64k" $bd
conf '[inject-error]\nevent = "l2_update"\nfoo = "5"\n'
c "unknown key" -c "write 0 64k" $bd
conf '[inject-error]\nevent = l2_update\n'
c "unquoted value" -c "write 0 64k" $bd
conf '[foo]\nevent = "l2_update"\n'
c "unknown group" -c "write 0 64k" $bd
conf '[ inject-error ]\nevent = "l2_update"\n'
c "group with blanks" -c "write 0 64k" $bd
conf '  # comment\n[inject-error]\nevent = "l2_update"\n'
c "indented comment" -c "write 0 64k" $bd
conf '# comment\n[inject-error]\n\nevent = "l2_update"\n'
c "comment and blank line" -c "write 0 64k" $bd
conf '[inject-error]\n   \nevent = "l2_update"\n'
c "line of blanks" -c "write 0 64k" $bd
conf '[inject-error]\nevent="l2_update"\n'
c "key without blanks" -c "write 0 64k" $bd
conf 'event = "l2_update"\n'
c "key before any group" -c "write 0 64k" $bd
conf 'garbage\n'
c "a word" -c "write 0 64k" $bd
conf '[inject-error "x"]\nevent = "l2_update"\n[inject-error "x"]\nevent = "l1_update"\n'
c "duplicate id" -c "write 0 64k" $bd
conf '[inject-error "x"]\nevent = "l2_update"\n[set-state "x"]\nevent = "l1_update"\n'
c "same id in two groups" -c "write 0 64k" $bd
conf '[inject-error]\nevent = "l2_update"\nerrno = "abc"\n'
c "errno not a number" -c "write 0 64k" $bd
conf '[inject-error]\nevent = "l2_update"\nonce = "maybe"\n'
c "once not a boolean" -c "write 0 64k" $bd
conf '[inject-error]\nevent = "l2_update"\nsector = "1x"\n'
c "sector not a number" -c "write 0 64k" $bd
conf '[inject-error]\nevent = "l2_update"\niotype = "bogus"\n'
c "bad iotype" -c "write 0 64k" $bd
conf '[set-state]\nevent = "l2_update"\nnew_state = "x"\n'
c "new_state not a number" -c "write 0 64k" $bd
conf '[set-state]\nevent = "l2_updat"\nnew_state = "2"\n'
c "set-state with an unknown event" -c "write 0 64k" $bd
conf '[inject-error]\r\nevent = "l2_update"\r\n'
c "CRLF lines" -c "write 0 64k" $bd

# ---- options
io="--image-opts driver=qcow2,file.driver=blkdebug,file.image.filename=img"
ie=file.inject-error.0
ss=file.set-state.0
c "options: an error" -c "write 0 64k" $io,$ie.event=l2_update
c "options: errno, once" -c "write 0 64k" -c "write 64k 64k" \
	$io,$ie.event=l2_update,$ie.errno=28,$ie.once=on
c "options: missing event" -c "write 0 64k" $io,$ie.errno=5
c "options: unknown key" -c "write 0 64k" $io,$ie.event=l2_update,$ie.foo=1
c "options: index gap" -c "write 0 64k" $io,file.inject-error.1.event=l2_update
c "options: bad iotype" -c "write 0 64k" $io,$ie.event=l2_update,$ie.iotype=x
c "options: iotype read spares writes" -c "write 0 64k" -c "read 0 64k" \
	$io,$ie.event=l2_update,$ie.iotype=read
c "options: set-state" -c "write 0 64k" -c "write 1M 64k" \
	$io,$ss.event=l2_alloc_write,$ss.state=1,$ss.new_state=2,$ie.event=write_aio,$ie.state=2
c "options: new-state is not a key" -c "write 0 64k" $io,$ss.event=l2_update,$ss.new-state=2
c "options: unknown blkdebug option" -c "write 0 64k" $io,file.foo=1
c "options: align not a power of two" -c "write 0 64k" $io,file.align=3
c "options: align 4k" -c "write 512 512" -c "read -P 0xcd 512 512" $io,file.align=4k
c "options: no image" -c "write 0 64k" --image-opts driver=qcow2,file.driver=blkdebug
c "options: config and options" -c "write 0 64k" -c "write 64k 64k" \
	$io,file.config=c.conf,$ie.event=write_aio,$ie.once=on

# ---- injected errors on qcow2 events
for ev in l1_update l2_alloc_write l2_update write_aio refblock_update_part cluster_alloc; do
	for once in on off; do
		conf "[inject-error]\nevent = \"$ev\"\nonce = \"$once\"\n"
		c "$ev once=$once" -c "write 0 64k" -c "write 64k 64k" -c "read 64k 64k" $bd
	done
done
conf '[inject-error]\nevent = "l2_update"\nerrno = "28"\n'
c "ENOSPC" -c "write 0 64k" $bd
conf '[inject-error]\nevent = "l2_update"\nerrno = "0x1c"\nonce = "yes"\n'
c "hex errno, once=yes" -c "write 0 64k" -c "write 64k 64k" $bd
conf '[inject-error]\nevent = "l2_update"\nerrno = "0"\n'
c "errno 0 injects nothing" -c "write 0 64k" $bd
conf '[inject-error]\nevent = "l2_update"\nerrno = "99999999999"\n'
c "errno wraps" -c "write 0 64k" $bd
conf '[inject-error]\nevent = "write_aio"\nsector = "0"\n'
c "sector not covered" -c "write 0 64k" -c "write 64k 64k" $bd
conf '[inject-error]\nevent = "read_aio"\nonce = "on"\n'
IMG=$tmp/data.qcow2 c "read_aio" -c "read 0 4k" -c "read -P 0x11 0 4k" $bd
conf '[inject-error]\nevent = "write_aio"\n'
IMG=$tmp/data.qcow2 c "overwrite fails at write_aio" -c "write 0 4k" -c "read -P 0x11 0 4k" $bd
conf '[inject-error]\nevent = "none"\nonce = "on"\n'
c "event none: active from the start" -c "read 0 4k" $bd
conf '[inject-error]\nevent = "none"\niotype = "write"\n'
c "event none, raw: writes fail" -c "read 0 4k" -c "write 0 4k" -c "read 0 4k" \
	-f raw blkdebug:c.conf:img
conf '[inject-error]\nevent = "l2_update"\nstate = "2"\n'
c "rule of another state" -c "write 0 64k" $bd
conf '[set-state]\nevent = "l2_alloc_write"\nstate = "1"\nnew_state = "2"\n'\
'[inject-error]\nevent = "write_aio"\nstate = "2"\nonce = "on"\n'
c "state machine" -c "write 0 64k" -c "write 64k 64k" -c "write 1M 64k" $bd

# ---- breakpoints
conf ''
c "break, wait, resume" -c "break write_aio A" -c "aio_write 0 64k" -c "wait_break A" \
	-c "resume A" -c "aio_flush" -c "read -P 0xcd 0 64k" $bd
c "a breakpoint fires once" -c "break write_aio A" -c "aio_write 0 64k" -c "wait_break A" \
	-c "resume A" -c "aio_flush" -c "write 64k 64k" -c "resume A" $bd
c "unknown event, tags" -c "break bogus A" -c "resume B" -c "remove_break C" \
	-c "break L2_update A" $bd
c "remove_break removes all of a tag" -c "break write_aio B" -c "break l2_update B" \
	-c "remove_break B" -c "remove_break B" -c "write 0 64k" $bd
c "remove_break resumes" -c "break write_aio A" -c "aio_write 0 64k" -c "wait_break A" \
	-c "remove_break A" -c "aio_flush" $bd
SORT=1 c "two requests, two tags" -c "break write_aio A" -c "aio_write 0 64k" -c "wait_break A" \
	-c "break write_aio B" -c "aio_write 1M 64k" -c "wait_break B" -c "resume B" \
	-c "resume A" -c "aio_flush" -c "read -P 0xcd 0 64k" -c "read -P 0xcd 1M 64k" $bd
# Races: a request held at a breakpoint while others overlap it; reads check the result.
# (A zero write racing an allocation may come out in either order: qemu's finds the cluster
# still unallocated and does nothing, tblk's waits for the allocation. t/race-qcow2.c
# accepts both; they are not compared here.)
for ev in write_aio cluster_alloc l2_alloc_write refblock_update_part l1_update; do
	SORT=1 c "held at $ev, overlapping write" -c "break $ev A" -c "aio_write -P 1 0 64k" \
		-c "wait_break A" -c "aio_write -P 2 4k 4k" -c "sleep 10" -c "resume A" \
		-c "aio_flush" -c "read -P 1 0 4k" -c "read -P 2 4k 4k" -c "read -P 1 8k 56k" $bd
done
SORT=1 c "held partial write, write into its copy-on-write edge" -c "break write_aio A" \
	-c "aio_write -P 1 4k 4k" -c "wait_break A" -c "aio_write -P 2 60k 4k" -c "sleep 10" \
	-c "resume A" -c "aio_flush" -c "read -P 0 0 4k" -c "read -P 1 4k 4k" \
	-c "read -P 0 8k 52k" -c "read -P 2 60k 4k" $bd
c "breakpoints without blkdebug" -c "break write_aio A" -c "resume A" -c "remove_break A" \
	-f qcow2 img

echo "1..$n"
