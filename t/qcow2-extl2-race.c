/* SPDX-License-Identifier: MIT */
/*
 * qcow2-extl2-race.c - concurrency on images with extended L2 entries (32 subclusters per
 * cluster), where several requests may fill different subclusters of the same new cluster:
 * - threads started together write and zero disjoint pieces (partial subclusters included)
 *   of one fresh cluster, round after round, without and over a backing file: no piece may be
 *   lost and the untouched subclusters must still fall through to the backing file;
 * - a blkdebug breakpoint holds an allocating subcluster write before its data is written
 *   while other writes and zero writes hit the same cluster: the cluster then holds one
 *   serial order of all of them, also after a reopen;
 * - the asynchronous API with aio=native, many requests in flight on subclusters, so that the
 *   fast path (reads and overwrites of allocated subclusters) races the pool's allocations.
 * Each time the image must pass `qemu-img check`. Run under ThreadSanitizer by `make
 * check-tsan`.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <tblk/tblk.h>
#include "t/async-mix.h"
#include "t/tap.h"

#define CLUSTER		65536u
#define SUB		(CLUSTER / 32)
#define SIZE		(4u << 20)
#define BACKING_BYTE	0x5a

static char path[256];
static char bpath[300];
static uint64_t seed;

static struct tblk_blk *open_image(const char *spec_extra, struct tblk_loop *loop)
{
	GHashTable *opts = tblk_opts_new();
	struct tblk_blk *blk = NULL;
	GError *err = NULL;
	char spec[700];

	snprintf(spec, sizeof(spec), "driver=qcow2,%s", spec_extra);
	tblk_opts_parse(opts, spec, NULL, NULL);
	if (tblk_blk_open(&blk, NULL, opts, TBLK_OPEN_RDWR, loop, &err) < 0) {
		tap_diag("open: %s", err ? err->message : "?");
		g_clear_error(&err);
		blk = NULL;
	}
	g_hash_table_unref(opts);
	return blk;
}

static struct tblk_blk *open_plain(void)
{
	char spec[400];

	snprintf(spec, sizeof(spec), "file.driver=file,file.filename=%s", path);
	return open_image(spec, NULL);
}

/* A fresh extended L2 image, over a raw backing file full of BACKING_BYTE if @backing. */
static void create_image(bool backing, uint8_t *shadow)
{
	char cmd[800];
	int ret;

	if (backing) {
		g_autofree uint8_t *buf = g_malloc(SIZE);
		FILE *f = fopen(bpath, "wb");

		memset(buf, BACKING_BYTE, SIZE);
		if (!f || fwrite(buf, 1, SIZE, f) != SIZE || fclose(f))
			tap_bail("cannot write the backing file");
	}
	snprintf(cmd, sizeof(cmd), "qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=%u "
		 "%s%s%s '%s' %u", CLUSTER, backing ? "-F raw -b '" : "", backing ? bpath : "",
		 backing ? "'" : "", path, SIZE);
	ret = system(cmd);
	if (ret != 0)
		tap_bail("qemu-img create failed");
	memset(shadow, backing ? BACKING_BYTE : 0, SIZE);
}

static bool image_clean(void)
{
	char cmd[600];

	snprintf(cmd, sizeof(cmd), "qemu-img check -q '%s' >/dev/null 2>&1", path);
	return system(cmd) == 0;
}

/* The image read back through a fresh open equals @shadow. */
static bool image_matches(const uint8_t *shadow, const char *what)
{
	g_autofree uint8_t *got = g_malloc(SIZE);
	struct tblk_blk *blk = open_plain();
	bool same = blk && tblk_blk_pread(blk, 0, got, SIZE, 0) == 0;

	if (same) {
		for (uint64_t i = 0; i < SIZE; i++) {
			if (got[i] != shadow[i]) {
				tap_diag("%s: byte %" PRIu64 " is %#x, expected %#x", what, i, got[i],
					 shadow[i]);
				same = false;
				break;
			}
		}
	}
	if (blk)
		tblk_blk_close(blk);
	return same;
}

/* ------------------------------------------------ threads started together */

enum op { OP_WRITE, OP_ZERO, OP_ZERO_UNMAP };

struct piece {
	struct tblk_blk *blk;
	pthread_barrier_t *start;
	enum op op;
	uint64_t off, len;
	int pattern;
	int ret;
	pthread_t th;
};

static void *piece_main(void *arg)
{
	struct piece *p = arg;
	g_autofree uint8_t *buf = g_malloc(p->len);

	memset(buf, p->pattern, p->len);
	pthread_barrier_wait(p->start);
	if (p->op == OP_WRITE)
		p->ret = tblk_blk_pwrite(p->blk, p->off, buf, p->len, 0);
	else
		p->ret = tblk_blk_pwrite_zeroes(p->blk, p->off, p->len,
						p->op == OP_ZERO_UNMAP ? TBLK_REQ_MAY_UNMAP : 0);
	return NULL;
}

#define NR_PIECES 5

/*
 * One round: five requests on disjoint parts of the cluster at @base, started together.
 * Writes begin and end inside subclusters (copy-on-write of the rest) or on their edges.
 */
static int round_pieces(struct tblk_blk *blk, uint64_t base, uint8_t *shadow, int round)
{
	struct piece p[NR_PIECES];
	pthread_barrier_t start;
	int failed = 0;

	pthread_barrier_init(&start, NULL, NR_PIECES);
	for (int i = 0; i < NR_PIECES; i++) {
		/* Each piece in its own sixth of the cluster, at a varying place inside it. */
		uint64_t slot = base + (uint64_t)i * (CLUSTER / 6) / 512 * 512;
		uint64_t off = slot + 512 * (tap_rand(&seed) % 8);
		uint64_t len = 512 * (1 + tap_rand(&seed) % 12);

		p[i] = (struct piece){ .blk = blk, .start = &start, .off = off, .len = len,
				       .pattern = 0x10 + round * NR_PIECES + i };
		p[i].op = OP_WRITE;
		if (i == 3) {
			p[i].op = (round & 1) ? OP_ZERO_UNMAP : OP_ZERO;
			p[i].off = slot / SUB * SUB + SUB;	/* whole subclusters */
			p[i].len = SUB * (1 + round % 3);
		}
		memset(shadow + p[i].off, p[i].op == OP_WRITE ? p[i].pattern : 0, p[i].len);
	}
	for (int i = 0; i < NR_PIECES; i++)
		pthread_create(&p[i].th, NULL, piece_main, &p[i]);
	for (int i = 0; i < NR_PIECES; i++) {
		pthread_join(p[i].th, NULL);
		if (p[i].ret < 0) {
			tap_diag("round %d piece %d: %s", round, i, strerror(-p[i].ret));
			failed++;
		}
	}
	pthread_barrier_destroy(&start);
	return failed;
}

static void test_pieces(bool backing)
{
	g_autofree uint8_t *shadow = g_malloc(SIZE);
	const char *what = backing ? "over a backing file" : "without a backing file";
	char spec[400];
	struct tblk_blk *blk;
	int failed = 0;

	create_image(backing, shadow);
	snprintf(spec, sizeof(spec), "file.driver=file,file.filename=%s", path);
	blk = open_image(spec, NULL);
	if (!blk)
		tap_bail("cannot open the image");
	for (int round = 0; round < 24; round++) {
		/* New clusters, some of them under a new L2 table (1 MiB apart). */
		uint64_t base = (uint64_t)(round % 12) * CLUSTER + (round >= 12 ? 2u << 20 : 0);

		failed += round_pieces(blk, base, shadow, round);
	}
	is_int(failed, 0, "%s: 24 rounds of 5 concurrent requests on one new cluster succeed",
	       what);
	tblk_blk_close(blk);
	ok(image_matches(shadow, what), "%s: no piece lost, untouched subclusters fall through",
	   what);
	ok(image_clean(), "%s: qemu-img check clean", what);
}

/* ------------------------------------------------ one write held at a breakpoint */

/* One request, or a list of them run in order (next) in one thread. */
struct job {
	struct tblk_blk *blk;
	enum op op;
	uint64_t off, len;
	int pattern;
	int ret;
	struct job *next;
	atomic_bool done;
	pthread_t th;
};

static void *job_main(void *arg)
{
	for (struct job *j = arg; j; j = j->next) {
		g_autofree uint8_t *buf = g_malloc(j->len);

		memset(buf, j->pattern, j->len);
		if (j->op == OP_WRITE)
			j->ret = tblk_blk_pwrite(j->blk, j->off, buf, j->len, 0);
		else
			j->ret = tblk_blk_pwrite_zeroes(j->blk, j->off, j->len,
							j->op == OP_ZERO_UNMAP ?
							TBLK_REQ_MAY_UNMAP : 0);
		atomic_store(&j->done, true);
	}
	return NULL;
}

static void job_apply(const struct job *j, uint8_t *img, uint64_t base)
{
	memset(img + (j->off - base), j->op == OP_WRITE ? j->pattern : 0, j->len);
}

struct scenario {
	const char *name;
	/* Offsets relative to the cluster under test; len 0 ends the list. */
	struct { enum op op; uint64_t off, len; } held, others[3];
};

static const struct scenario scenarios[] = {
	{ "writes to other subclusters of the cluster being allocated",
	  { OP_WRITE, 3 * SUB + 512, SUB }, { { OP_WRITE, 20 * SUB, 2 * SUB },
					      { OP_WRITE, 9 * SUB + 1024, 512 } } },
	{ "a write into the held write's partial subclusters",
	  { OP_WRITE, 3 * SUB + 512, SUB }, { { OP_WRITE, 4 * SUB + 512, 1024 } } },
	{ "zero writes next to and over the held write",
	  { OP_WRITE, 5 * SUB, 3 * SUB + 512 }, { { OP_ZERO, 10 * SUB, SUB },
						  { OP_ZERO_UNMAP, 0, CLUSTER },
						  { OP_WRITE, 6 * SUB + 512, 512 } } },
	{ "a zero write of part of a subcluster the held write completes",
	  { OP_WRITE, 2 * SUB + 512, 512 }, { { OP_ZERO, 2 * SUB + 1536, 512 },
					      { OP_WRITE, 31 * SUB, SUB } } },
};

static bool wait_suspended(struct tblk_blk *blk)
{
	/* Bounded only so that a broken breakpoint fails the test instead of hanging it. */
	for (int i = 0; i < 20000; i++) {
		if (tblk_blk_debug_is_suspended(blk, "held"))
			return true;
		usleep(500);
	}
	return false;
}

/* The cluster at @base holds one serial order of @held and @others (in their order). */
static bool serial(const uint8_t *got, const struct job *held, const struct job *others,
		   int nr, uint64_t base, const uint8_t *before)
{
	g_autofree uint8_t *order = g_malloc(CLUSTER);

	for (int pos = 0; pos <= nr; pos++) {
		memcpy(order, before, CLUSTER);
		for (int i = 0; i <= nr; i++) {
			if (i == pos)
				job_apply(held, order, base);
			if (i < nr)
				job_apply(&others[i], order, base);
		}
		if (!memcmp(got, order, CLUSTER))
			return true;
	}
	return false;
}

static bool race(const struct scenario *sc, uint64_t base, bool backing, int it)
{
	g_autofree uint8_t *shadow = g_malloc(SIZE);
	g_autofree uint8_t *got = g_malloc(CLUSTER);
	struct job held, others[3];
	struct tblk_blk *blk;
	char spec[600];
	bool good = true;
	int nr = 0;

	create_image(backing, shadow);
	snprintf(spec, sizeof(spec), "file.driver=blkdebug,file.image.filename=%s", path);
	blk = open_image(spec, NULL);
	if (!blk)
		tap_bail("cannot open the image over blkdebug");
	if (tblk_blk_debug_breakpoint(blk, "write_aio", "held") < 0)
		tap_bail("cannot set a breakpoint");
	held = (struct job){ .blk = blk, .op = sc->held.op, .off = base + sc->held.off,
			     .len = sc->held.len, .pattern = 0x40 + it };
	pthread_create(&held.th, NULL, job_main, &held);
	if (!wait_suspended(blk)) {
		tap_diag("%s: the write never stopped", sc->name);
		tblk_blk_debug_remove_breakpoint(blk, "held");
		pthread_join(held.th, NULL);
		tblk_blk_close(blk);
		return false;
	}
	for (; nr < 3 && sc->others[nr].len; nr++)
		others[nr] = (struct job){ .blk = blk, .op = sc->others[nr].op,
					   .off = base + sc->others[nr].off,
					   .len = sc->others[nr].len, .pattern = 0x80 + nr };
	for (int i = 0; i + 1 < nr; i++)
		others[i].next = &others[i + 1];
	pthread_create(&others[0].th, NULL, job_main, &others[0]);
	/* A varying head start into the conflict for the others (not a check). */
	usleep((useconds_t)(tap_rand(&seed) % 3000));
	if (atomic_load(&held.done))
		good = false;
	if (tblk_blk_debug_resume(blk, "held") < 0)
		good = false;
	pthread_join(held.th, NULL);
	pthread_join(others[0].th, NULL);
	for (int i = 0; i < nr; i++)
		good = good && others[i].ret == 0;
	good = good && held.ret == 0;
	if (!good)
		tap_diag("%s: a request failed or the held one did not wait", sc->name);
	if (tblk_blk_pread(blk, base, got, CLUSTER, 0) < 0)
		good = false;
	tblk_blk_close(blk);
	if (!serial(got, &held, others, nr, base, shadow + base)) {
		tap_diag("%s: the cluster holds no serial order of the requests", sc->name);
		good = false;
	}
	memcpy(shadow + base, got, CLUSTER);
	if (!image_matches(shadow, sc->name))
		good = false;
	if (!image_clean()) {
		tap_diag("%s: qemu-img check found errors or leaks", sc->name);
		good = false;
	}
	return good;
}

static void test_held(void)
{
	for (size_t s = 0; s < sizeof(scenarios) / sizeof(scenarios[0]); s++) {
		int failed = 0;

		for (int it = 0; it < 4; it++) {
			uint64_t base = (uint64_t)(s + 2 * (size_t)it) * CLUSTER +
					(it % 2 ? 2u << 20 : 0);

			if (!race(&scenarios[s], base, it >= 2, it))
				failed++;
		}
		is_int(failed, 0, "%s (held before its data is written), 4 rounds with and without "
		       "a backing file: serial result, same after reopen, check clean",
		       scenarios[s].name);
	}
}

/* ------------------------------------------------ asynchronous, fast path */

#define DEPTH	16
#define NR_OPS	1500

/* Mostly reads and writes of a few subclusters in the first 1 MiB, so that requests meet. */
static void aop_pick(struct mix_op *o)
{
	uint64_t k = tap_rand(&seed) % 100;

	o->kind = k < 55 ? MIX_READ : k < 92 ? MIX_WRITE :
		  tap_rand(&seed) & 1 ? MIX_ZERO : MIX_ZERO_ALLOC;
	o->len = 512 * (1 + tap_rand(&seed) % (k % 5 ? 8 : 300));
	o->off = 512 * (tap_rand(&seed) % ((1u << 20) / 512 - 300));
	if (o->kind == MIX_ZERO || o->kind == MIX_ZERO_ALLOC) {
		o->off = o->off / SUB * SUB;
		o->len = (o->len + SUB - 1) / SUB * SUB;
	}
}

static void test_async(void)
{
	g_autofree uint8_t *shadow = g_malloc(SIZE);
	struct tblk_loop *loop = tblk_loop_new(NULL);
	static struct mix_op ops[DEPTH];
	struct tblk_stats st;
	struct tblk_blk *blk;
	char spec[600];
	int errors;

	create_image(false, shadow);
	snprintf(spec, sizeof(spec), "file.driver=file,file.filename=%s,file.aio=native,"
		 "cache.direct=on", path);
	blk = open_image(spec, loop);
	if (!blk)
		tap_bail("cannot open the image with aio=native");
	/* Most of the first 1 MiB allocated, subcluster by subcluster, a few left out. */
	for (uint64_t off = 0; off < (1u << 20); off += SUB) {
		if (tap_rand(&seed) % 8 == 0)
			continue;
		memset(shadow + off, (int)(off / SUB) | 1, SUB);
		if (tblk_blk_pwrite(blk, off, shadow + off, SUB, 0) < 0)
			tap_bail("fill");
	}
	/* Nothing overlapping in flight: the shadow needs an order. */
	errors = mix_run(blk, loop, ops, DEPTH, NR_OPS, aop_pick, shadow, &seed);
	is_int(errors, 0, "aio=native: %d async requests on subclusters complete, reads match",
	       NR_OPS);
	tblk_blk_get_stats(blk, &st);
	ok(st.fast_ops[TBLK_STAT_READ] > 0 && st.fast_ops[TBLK_STAT_WRITE] > 0,
	   "aio=native: the fast path served reads (%" PRIu64 " of %" PRIu64 ") and overwrites "
	   "(%" PRIu64 " of %" PRIu64 ") of allocated subclusters",
	   st.fast_ops[TBLK_STAT_READ], st.ops[TBLK_STAT_READ], st.fast_ops[TBLK_STAT_WRITE],
	   st.ops[TBLK_STAT_WRITE]);
	is_int(tblk_blk_flush(blk), 0, "aio=native: flush");
	tblk_blk_close(blk);
	tblk_loop_free(loop);
	ok(image_matches(shadow, "aio=native"), "aio=native: the reopened image matches");
	ok(image_clean(), "aio=native: qemu-img check clean");
}

int main(void)
{
	const char *tmpdir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	int fd;

	seed = tap_seed((uint64_t)time(NULL));
	if (system("qemu-img --version >/dev/null 2>&1") != 0) {
		printf("1..0 # SKIP qemu-img not installed\n");
		return 0;
	}
	snprintf(path, sizeof(path), "%s/tblk-extl2-XXXXXX", tmpdir);
	fd = mkstemp(path);
	if (fd < 0)
		tap_bail("mkstemp");
	close(fd);
	snprintf(bpath, sizeof(bpath), "%s.base", path);
	test_pieces(false);
	test_pieces(true);
	test_held();
	test_async();
	unlink(path);
	unlink(bpath);
	return tap_done();
}
