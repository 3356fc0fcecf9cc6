# lib-diff.sh - sourced by the differential CLI tests: their scratch directory and PATHs,
# and the verdict on one case run through the reference tool (in $tmp/q) and through ours
# (in $tmp/t). Each side left rc (exit status), out.f (filtered stdout) and err; the caller
# names the state files to compare.

# diff_init NAME TOOLS PROG...: skips the whole script unless every PROG is installed; makes
# $tmp (removed at exit) with q/, t/ and bin/, where each of our tools named in TOOLS ("img",
# "io") stands as qemu-img or qemu-io. PATH=$QPATH runs the reference tools, PATH=$TPATH ours.
diff_init() {
	local name=$1 tools=$2 p
	shift 2
	for p in "$@"; do
		if ! command -v "$p" >/dev/null; then
			echo "1..0 # SKIP $p not installed"
			exit 0
		fi
	done
	tmp=$(mktemp -d "${TMPDIR:-/tmp}/tblk-$name.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	mkdir -p "$tmp/bin" "$tmp/q" "$tmp/t"
	for p in $tools; do
		ln -s "$TBLK_BUILD/tools/tblk-$p" "$tmp/bin/qemu-$p"
	done
	QPATH=$PATH
	TPATH=$tmp/bin:$PATH
}

# verdict NAME TOOL QSTATE TSTATE STATE_WHAT ARGS...: prints "ok N" or "not ok N" with the
# first difference (exit status, stdout, stderr, then the state files) and the diffs. $n is
# the running test number; $TODO marks a known difference (TAP TODO).
verdict() {
	local name=$1 tool=$2 qs=$3 ts=$4 what=$5 ok=0 why=""
	shift 5
	if ! cmp -s "$tmp/q/rc" "$tmp/t/rc"; then
		ok=1; why="exit status $(cat "$tmp/q/rc") vs $(cat "$tmp/t/rc")"
	elif ! cmp -s "$tmp/q/out.f" "$tmp/t/out.f"; then
		ok=1; why=stdout
	elif ! cmp -s "$tmp/q/err" "$tmp/t/err"; then
		ok=1; why=stderr
	elif ! cmp -s "$qs" "$ts"; then
		ok=1; why=$what
	fi
	n=$((n + 1))
	if [ $ok = 0 ]; then
		echo "ok $n - $name"
		return
	fi
	echo "not ok $n - $name ($why)${TODO:+ # TODO $TODO}"
	echo "#   $tool $*"
	diff "$tmp/q/out.f" "$tmp/t/out.f" | sed 's/^/#   out /'
	diff "$tmp/q/err" "$tmp/t/err" | sed 's/^/#   err /'
	diff "$qs" "$ts" 2>&1 | head -20 | sed 's/^/#   state /'
}
