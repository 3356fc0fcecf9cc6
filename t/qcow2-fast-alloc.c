/* SPDX-License-Identifier: MIT */
/*
 * qcow2-fast-alloc.c - allocating writes of whole clusters on the fast path (allocated on the
 * loop thread from cached tables, data by Linux AIO or io_uring, linked on completion), and
 * the file protocol growing an O_DIRECT file ahead of writes:
 * - layout: the same sequence of writes (whole clusters, two-cluster writes, partial writes,
 *   discards) through tblk at depth 1 and through qemu-io gives byte-identical files, the
 *   file lengths included (the extension is given back at close), with writes taking the
 *   fast path;
 * - integrity: depth 32 mixes of allocating and partial writes, zero writes, discards,
 *   reads and flushes on aio=native (default caches, and caches of two tables so that links
 *   fall back to the pool), io_uring and threads (the data file refuses the fast path):
 *   reads match a shadow, the reopened image matches it, `qemu-img check` finds it clean;
 * - crash: a process killed without closing leaves the file extended; `qemu-img check`
 *   finds no errors and the data flushed before reads back.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <tblk/tblk.h>
#include "t/async-mix.h"
#include "t/tap.h"

#define CLUSTER		65536u
#define LAYOUT_SIZE	(1536ull << 20)	/* three L2 tables */
#define MIX_SIZE	(16u << 20)
#define DEPTH		32
#define NR_OPS		2500

static char path[256], ref_path[300];
static uint8_t *shadow;
static uint64_t rng;

static struct tblk_blk *open_image(const char *p, const char *aio, const char *extra,
				   bool direct, struct tblk_loop *loop)
{
	GHashTable *opts = tblk_opts_new();
	struct tblk_blk *blk = NULL;
	unsigned int flags = TBLK_OPEN_RDWR;
	GError *err = NULL;
	char spec[600];

	snprintf(spec, sizeof(spec), "driver=qcow2,file.driver=file,file.filename=%s,"
		 "file.aio=%s%s%s", p, aio, extra ? "," : "", extra ? extra : "");
	tblk_opts_parse(opts, spec, NULL, NULL);
	tblk_parse_cache_mode(direct ? "none" : "writeback", &flags, NULL);
	if (tblk_blk_open(&blk, NULL, opts, flags, loop, &err) < 0) {
		tap_diag("open %s: %s", spec, err ? err->message : "?");
		g_clear_error(&err);
		blk = NULL;
	}
	g_hash_table_destroy(opts);
	return blk;
}

static void create(const char *p, uint64_t size)
{
	GHashTable *copts = tblk_opts_new();
	GError *err = NULL;

	g_hash_table_insert(copts, g_strdup("cluster_size"), g_strdup("65536"));
	if (tblk_img_create(p, "qcow2", size, copts, &err) < 0)
		tap_bail(err->message);
	g_hash_table_destroy(copts);
}

static void count_cb(void *opaque, int ret)
{
	int *state = opaque;

	state[0]++;
	if (ret < 0)
		state[1]++;
}

static off_t file_size(const char *p)
{
	struct stat st;

	return stat(p, &st) == 0 ? st.st_size : -1;
}

/* ------------------------------------------------ layout against qemu-io */

struct lop {
	bool discard;
	uint64_t off, len;
	uint8_t pattern;
};

static void test_layout(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	GString *cmd = g_string_new("qemu-io -f qcow2 -t none");
	struct lop ops[160];
	int state[2] = { 0, 0 }, n = 0;
	struct tblk_blk *blk;
	struct tblk_stats st;
	off_t ext_size = 0;
	uint8_t *buf;

	/* Clusters scattered over three L2 tables, some twice, some in pairs, some partial. */
	for (n = 0; n < (int)(sizeof(ops) / sizeof(ops[0])); n++) {
		uint64_t k = tap_rand(&rng) % 100;
		struct lop *o = &ops[n];

		o->discard = k < 6;
		o->off = (tap_rand(&rng) % (LAYOUT_SIZE / CLUSTER - 2)) * CLUSTER;
		o->len = k < 20 ? 2 * CLUSTER : CLUSTER;
		if (k >= 20 && k < 30) {
			o->off += 4096 * (tap_rand(&rng) % 8);
			o->len = 4096;
		}
		o->pattern = (uint8_t)(1 + n);
		if (o->discard)
			g_string_append_printf(cmd, " -c 'discard %" PRIu64 " %" PRIu64 "'", o->off,
					       o->len);
		else
			g_string_append_printf(cmd, " -c 'write -P %u %" PRIu64 " %" PRIu64 "'",
					       o->pattern, o->off, o->len);
	}
	create(path, LAYOUT_SIZE);
	create(ref_path, LAYOUT_SIZE);
	blk = open_image(path, "native", NULL, true, loop);
	if (!blk)
		tap_bail("cannot open the image");
	if (posix_memalign((void **)&buf, 4096, 2 * CLUSTER))
		tap_bail("posix_memalign");
	for (int i = 0; i < n; i++) {
		struct iovec iov = { buf, ops[i].len };
		int want = state[0] + 1;

		memset(buf, ops[i].pattern, ops[i].len);
		if (ops[i].discard)
			tblk_blk_aio_pdiscard(blk, ops[i].off, ops[i].len, count_cb, state);
		else
			tblk_blk_pwritev(blk, ops[i].off, &iov, 1, 0, count_cb, state);
		while (state[0] < want)
			tblk_loop_iterate(loop, true);
		if (file_size(path) > ext_size)
			ext_size = file_size(path);
	}
	is_int(state[1], 0, "layout: %d writes and discards at depth 1 succeed", n);
	tblk_blk_get_stats(blk, &st);
	ok(st.fast_ops[TBLK_STAT_WRITE] > st.ops[TBLK_STAT_WRITE] / 2,
	   "layout: most writes took the fast path (%" PRIu64 " of %" PRIu64 ")",
	   st.fast_ops[TBLK_STAT_WRITE], st.ops[TBLK_STAT_WRITE]);
	tblk_blk_close(blk);
	tblk_loop_free(loop);
	free(buf);

	g_string_append_printf(cmd, " '%s' >/dev/null", ref_path);
	is_int(system(cmd->str), 0, "layout: qemu-io runs the same sequence");
	ok(ext_size > file_size(ref_path), "layout: the file was grown ahead while open "
	   "(%lld bytes, qemu's %lld)", (long long)ext_size, (long long)file_size(ref_path));
	is_int(file_size(path), file_size(ref_path), "layout: same file length after close");
	g_string_printf(cmd, "cmp -s '%s' '%s'", path, ref_path);
	is_int(system(cmd->str), 0, "layout: byte-identical to qemu-io's image");
	g_string_free(cmd, true);
	unlink(ref_path);
}

/* ------------------------------------------------ integrity under a mix */

/* Mostly whole-cluster writes (one to three clusters), the rest partial or other kinds. */
static void pick(struct mix_op *o)
{
	uint64_t k = tap_rand(&rng) % 100;

	o->kind = k < 25 ? MIX_READ : k < 85 ? MIX_WRITE : k < 91 ? MIX_ZERO :
		  k < 98 ? MIX_DISCARD : MIX_FLUSH;
	o->off = (tap_rand(&rng) % (MIX_SIZE / CLUSTER - 3)) * CLUSTER;
	o->len = CLUSTER * (1 + tap_rand(&rng) % 3);
	if (o->kind == MIX_FLUSH) {
		o->off = o->len = 0;
	} else if (o->kind != MIX_DISCARD && k % 5 == 0) {
		o->off += 4096 * (tap_rand(&rng) % 16);
		o->len = 4096 * (1 + tap_rand(&rng) % 8);
	}
}

static void run_mix(struct tblk_blk *blk, struct tblk_loop *loop, int *errors,
		    struct tblk_stats *st)
{
	static struct mix_op ops[DEPTH];

	*errors += mix_run(blk, loop, ops, DEPTH, NR_OPS, pick, shadow, &rng);
	tblk_blk_get_stats(blk, st);
}

static void test_mix(const char *aio, const char *extra, bool expect_fast)
{
	const char *what = extra ? extra : "default caches";
	struct tblk_loop *loop = tblk_loop_new(NULL);
	g_autofree uint8_t *all = g_malloc(MIX_SIZE);
	struct tblk_blk *blk;
	struct tblk_stats st;
	int errors = 0;
	char cmd[600];

	memset(shadow, 0, MIX_SIZE);
	create(path, MIX_SIZE);
	blk = open_image(path, aio, extra, true, loop);
	if (!blk)
		tap_bail("cannot open the image");
	run_mix(blk, loop, &errors, &st);
	is_int(errors, 0, "%s, %s: %d requests complete, reads match the shadow", aio, what,
	       NR_OPS);
	if (expect_fast)
		ok(st.fast_ops[TBLK_STAT_WRITE] > 0, "%s, %s: writes took the fast path "
		   "(%" PRIu64 " of %" PRIu64 ")", aio, what, st.fast_ops[TBLK_STAT_WRITE],
		   st.ops[TBLK_STAT_WRITE]);
	else
		is_int(st.fast_ops[TBLK_STAT_WRITE], 0, "%s: no write took the fast path", aio);
	tblk_blk_close(blk);
	tblk_loop_free(loop);

	blk = open_image(path, "threads", NULL, false, NULL);
	ok(blk && tblk_blk_pread(blk, 0, all, MIX_SIZE, 0) == 0 &&
	   memcmp(all, shadow, MIX_SIZE) == 0, "%s, %s: the reopened image matches the shadow",
	   aio, what);
	tblk_blk_close(blk);
	snprintf(cmd, sizeof(cmd), "qemu-img check -q '%s'", path);
	is_int(system(cmd), 0, "%s, %s: qemu-img check finds no errors and no leaks", aio, what);
}

/* ------------------------------------------------ a crash leaves the file extended */

static void crash_child(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	struct tblk_blk *blk = open_image(path, "native", NULL, true, loop);
	int state[2] = { 0, 0 };
	struct iovec iov;

	if (!blk)
		_exit(2);
	iov.iov_len = CLUSTER;
	if (posix_memalign(&iov.iov_base, 4096, CLUSTER))
		_exit(2);
	for (int i = 0; i < 64; i++) {
		memset(iov.iov_base, 0x40 + i, CLUSTER);
		tblk_blk_pwritev(blk, (uint64_t)i * 3 * CLUSTER, &iov, 1, 0, count_cb, state);
		while (state[0] < i + 1)
			tblk_loop_iterate(loop, true);
		if (i == 47 && tblk_blk_flush(blk) < 0)
			_exit(3);
	}
	_exit(state[1] ? 4 : 0);	/* no close: the extension stays */
}

static void test_crash(void)
{
	g_autofree uint8_t *buf = g_malloc(CLUSTER), *want = g_malloc(CLUSTER);
	struct tblk_blk *blk;
	int status = -1, bad = 0;
	char cmd[600];
	pid_t pid;

	create(path, MIX_SIZE);
	fflush(stdout);
	pid = fork();
	if (pid == 0)
		crash_child();
	waitpid(pid, &status, 0);
	is_int(status, 0, "crash: the writer ran and exited without closing");
	ok(file_size(path) > 64ll * CLUSTER + 4 * CLUSTER,
	   "crash: the file stays grown ahead (%lld bytes)", (long long)file_size(path));
	snprintf(cmd, sizeof(cmd), "qemu-img check -q '%s'", path);
	is_int(system(cmd), 0, "crash: qemu-img check finds no errors");
	blk = open_image(path, "threads", NULL, false, NULL);
	for (int i = 0; blk && i < 48; i++) {
		memset(want, 0x40 + i, CLUSTER);
		if (tblk_blk_pread(blk, (uint64_t)i * 3 * CLUSTER, buf, CLUSTER, 0) < 0 ||
		    memcmp(buf, want, CLUSTER))
			bad++;
	}
	ok(blk && bad == 0, "crash: the data flushed before the crash reads back");
	tblk_blk_close(blk);
}

int main(void)
{
	rng = tap_seed(0x51f15eed);
	tap_plan(6 + 4 * 4 + 4);
	snprintf(path, sizeof(path), "%s/tblk-qcow2-fa-XXXXXX", getenv("TMPDIR") ?: "/tmp");
	if (mkstemp(path) < 0)
		tap_bail("mkstemp");
	snprintf(ref_path, sizeof(ref_path), "%s.ref", path);
	shadow = g_malloc(MIX_SIZE);
	test_crash();	/* first: the child forks before this process starts any thread */
	test_layout();
	test_mix("native", NULL, true);
	test_mix("native", "l2-cache-size=131072,refcount-cache-size=131072", true);
	test_mix("io_uring", NULL, true);
	test_mix("threads", NULL, false);
	unlink(path);
	g_free(shadow);
	return tap_done();
}
