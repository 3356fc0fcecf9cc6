/* SPDX-License-Identifier: MIT */
/*
 * race-qcow2.c - requests racing one held at an exact point of qcow2's work: a blkdebug
 * breakpoint stops an allocating write at an event (before its data is written, while it
 * allocates, while it writes a new L2 table), other threads send overlapping writes and
 * discards meanwhile, then it is resumed. Afterwards the cluster holds the result of one
 * serial order of the requests, the image reopens with the same data, and `qemu-img check`
 * finds it clean. Also: a write to another cluster is not held up by the stopped one, and
 * the stopped request is reported by tblk_blk_debug_is_suspended() until resumed.
 *
 * Snapshot creation against writes, both ways: an allocating write held at a metadata event
 * while another thread creates an internal snapshot (the snapshot waits for it and holds
 * its data), and a snapshot creation held at one of its own metadata events while other
 * threads write, discard and zero (they wait for the snapshot and land after it). Then the
 * snapshot reads (through tblk and through `qemu-img convert -l`) exactly the data before
 * the snapshot, the image the data after, and `qemu-img check` finds it clean.
 * Run under ThreadSanitizer by `make check-tsan`.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tracked/tracked.h"
#include "t/tap.h"

#define CLUSTER		65536u
#define SIZE		(4u << 20)
#define SNAP_SIZE	(1ull << 30)	/* two L2 tables: a write far out allocates one */
#define FAR		(600ull << 20)
#define ITERATIONS	8

static char path[256];

enum op { OP_WRITE, OP_DISCARD, OP_ZERO, OP_FLUSH };

/* One request run synchronously, or a list of them in order (next), in one thread. */
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

static void job_run(struct job *j)
{
	g_autofree uint8_t *buf = NULL;

	switch (j->op) {
	case OP_WRITE:
		buf = g_malloc(j->len);
		memset(buf, j->pattern, j->len);
		j->ret = tblk_blk_pwrite(j->blk, j->off, buf, j->len, 0);
		break;
	case OP_DISCARD:
		j->ret = tblk_blk_pdiscard(j->blk, j->off, j->len);
		break;
	case OP_ZERO:
		j->ret = tblk_blk_pwrite_zeroes(j->blk, j->off, j->len, 0);
		break;
	case OP_FLUSH:
		j->ret = tblk_blk_flush(j->blk);
		break;
	}
	atomic_store(&j->done, true);
}

static void *job_main(void *arg)
{
	for (struct job *j = arg; j; j = j->next)
		job_run(j);
	return NULL;
}

static void job_start(struct job *j, struct tblk_blk *blk, enum op op, uint64_t off,
		      uint64_t len, int pattern)
{
	*j = (struct job){ .blk = blk, .op = op, .off = off, .len = len, .pattern = pattern };
	pthread_create(&j->th, NULL, job_main, j);
}

/* Starts @others (filled in but for blk) one after the other in one thread. */
static void jobs_start(struct job *others, int nr, struct tblk_blk *blk)
{
	for (int i = 0; i < nr; i++) {
		others[i].blk = blk;
		others[i].next = i + 1 < nr ? &others[i + 1] : NULL;
		atomic_store(&others[i].done, false);
	}
	pthread_create(&others[0].th, NULL, job_main, others);
}

/* Applies @j to @img (a copy of the cluster's guest bytes starting at @base). */
static void job_apply(const struct job *j, uint8_t *img, uint64_t base)
{
	memset(img + (j->off - base), j->op == OP_WRITE ? j->pattern : 0, j->len);
}

static struct tblk_blk *open_image(bool blkdebug, GError **err)
{
	GHashTable *opts = tblk_opts_new();
	struct tblk_blk *blk = NULL;

	g_hash_table_insert(opts, g_strdup("driver"), g_strdup("qcow2"));
	if (blkdebug) {
		g_hash_table_insert(opts, g_strdup("file.driver"), g_strdup("blkdebug"));
		g_hash_table_insert(opts, g_strdup("file.image.filename"), g_strdup(path));
	}
	if (tblk_blk_open(&blk, blkdebug ? NULL : path, opts, TBLK_OPEN_RDWR, NULL, err) < 0)
		blk = NULL;
	g_hash_table_unref(opts);
	return blk;
}

static bool wait_suspended(struct tblk_blk *blk, const char *tag)
{
	/* Bounded only so that a broken breakpoint fails the test instead of hanging it. */
	for (int i = 0; i < 20000; i++) {
		if (tblk_blk_debug_is_suspended(blk, tag))
			return true;
		usleep(500);
	}
	return false;
}

/*
 * Holds @held (an allocating write) at @event, runs @others one after the other in another
 * thread meanwhile, resumes it, and checks that the cluster at @base holds one serial order
 * of all requests: the others in their order, the held one anywhere among them. Returns
 * false on a failed check.
 */
static bool race(const char *what, const char *event, struct job *held, struct job *others,
		 int nr_others, uint64_t base, uint64_t *seed)
{
	g_autofree uint8_t *got = g_malloc(CLUSTER);
	g_autofree uint8_t *order = g_malloc0(CLUSTER);
	bool serial = false;
	struct tblk_blk *blk;
	GError *err = NULL;
	bool good = true;
	int ret;

	blk = open_image(true, &err);
	if (!blk)
		tap_bail(err->message);
	ret = tblk_blk_debug_breakpoint(blk, event, "held");
	if (ret < 0) {
		tap_diag("break %s: %s", event, strerror(-ret));
		tblk_blk_close(blk);
		return false;
	}
	job_start(held, blk, held->op, held->off, held->len, held->pattern);
	if (!wait_suspended(blk, "held")) {
		tap_diag("%s: the write never stopped at %s (cluster at %" PRIu64 ")", what, event,
			 base);
		tblk_blk_debug_remove_breakpoint(blk, "held");
		pthread_join(held->th, NULL);
		tblk_blk_close(blk);
		return false;
	}
	jobs_start(others, nr_others, blk);
	/* Give the others a varying head start into the conflict (not a check). */
	usleep((useconds_t)(tap_rand(seed) % 3000));
	if (atomic_load(&held->done)) {
		tap_diag("%s: the held write completed while stopped", what);
		good = false;
	}
	ret = tblk_blk_debug_resume(blk, "held");
	if (ret < 0) {
		tap_diag("%s: resume: %s", what, strerror(-ret));
		good = false;
	}
	pthread_join(held->th, NULL);
	pthread_join(others[0].th, NULL);
	if (held->ret < 0)
		good = false;
	for (int i = 0; i < nr_others; i++)
		if (others[i].ret < 0)
			good = false;
	if (!good)
		tap_diag("%s: a request failed (held %d)", what, held->ret);
	/* What the cluster holds now, read through the stack. */
	ret = tblk_blk_pread(blk, base, got, CLUSTER, 0);
	tblk_blk_close(blk);
	for (int pos = 0; pos <= nr_others && !serial; pos++) {
		memset(order, 0, CLUSTER);
		for (int i = 0; i <= nr_others; i++) {
			if (i == pos)
				job_apply(held, order, base);
			if (i < nr_others)
				job_apply(&others[i], order, base);
		}
		serial = !memcmp(got, order, CLUSTER);
	}
	if (ret < 0 || !serial) {
		tap_diag("%s: the cluster holds no serial order of the requests", what);
		good = false;
	}
	/* The same after a reopen without blkdebug. */
	blk = open_image(false, &err);
	if (!blk)
		tap_bail(err->message);
	memset(order, 0, CLUSTER);
	if (tblk_blk_pread(blk, base, order, CLUSTER, 0) < 0 || memcmp(got, order, CLUSTER)) {
		tap_diag("%s: the data differs after a reopen", what);
		good = false;
	}
	tblk_blk_close(blk);
	return good;
}

static int create_image(void)
{
	GHashTable *opts = tblk_opts_new();
	GError *err = NULL;
	int ret;

	g_hash_table_insert(opts, g_strdup("cluster_size"), g_strdup("65536"));
	ret = tblk_img_create(path, "qcow2", SIZE, opts, &err);
	if (ret < 0)
		tap_diag("create: %s", err->message);
	g_clear_error(&err);
	g_hash_table_unref(opts);
	return ret;
}

static bool image_clean(void)
{
	char cmd[600];

	snprintf(cmd, sizeof(cmd), "qemu-img check -q '%s' 2>/dev/null", path);
	return system(cmd) == 0;
}

struct scenario {
	const char *name;
	const char *event;
	/* Offsets are relative to the cluster under test; len 0 ends the list. */
	struct { enum op op; uint64_t off, len; } held, others[3];
};

static const struct scenario scenarios[] = {
	{ "overlapping write while the first waits to write its data", "write_aio",
	  { OP_WRITE, 0, CLUSTER }, { { OP_WRITE, 8192, 4096 } } },
	{ "partial writes to one new cluster, both with copy-on-write", "write_aio",
	  { OP_WRITE, 4096, 4096 }, { { OP_WRITE, 32768, 8192 }, { OP_WRITE, 4096, 512 } } },
	{ "discard against an allocating write", "write_aio",
	  { OP_WRITE, 0, CLUSTER }, { { OP_DISCARD, 0, CLUSTER } } },
	{ "zero write and a write against an allocating write", "write_aio",
	  { OP_WRITE, 0, 16384 }, { { OP_ZERO, 0, CLUSTER }, { OP_WRITE, 512, 1024 } } },
	{ "writes while the first allocates its cluster", "cluster_alloc",
	  { OP_WRITE, 0, 8192 }, { { OP_WRITE, 4096, 8192 }, { OP_DISCARD, 0, CLUSTER } } },
	{ "writes while the first writes a new L2 table", "l2_alloc_write",
	  { OP_WRITE, 0, CLUSTER }, { { OP_WRITE, 0, 4096 } } },
	{ "writes while the first updates the refcounts", "refblock_update_part",
	  { OP_WRITE, 0, CLUSTER }, { { OP_WRITE, 60000, 5536 }, { OP_WRITE, 0, 512 } } },
};

static void test_scenarios(uint64_t *seed)
{
	const char *only = getenv("TBLK_RACE_ONLY");

	for (size_t s = 0; s < TBLK_ARRAY_SIZE(scenarios); s++) {
		if (only && (size_t)atoi(only) != s)
			continue;
		const struct scenario *sc = &scenarios[s];
		int failed = 0;

		for (int it = 0; it < ITERATIONS; it++) {
			/* A new cluster each iteration, 1 MiB apart: some need a new L2 table. */
			uint64_t base = (uint64_t)((s * ITERATIONS + (size_t)it) % 24) * CLUSTER +
					(it % 2 ? 2u << 20 : 0);
			struct job held = { .op = sc->held.op, .off = base + sc->held.off,
					    .len = sc->held.len, .pattern = 0x10 + it };
			struct job others[3];
			int nr = 0;

			if (create_image() < 0)
				tap_bail("cannot create the image");
			for (; nr < 3 && sc->others[nr].len; nr++)
				others[nr] = (struct job){ .op = sc->others[nr].op,
							   .off = base + sc->others[nr].off,
							   .len = sc->others[nr].len,
							   .pattern = 0x80 + nr };
			if (!race(sc->name, sc->event, &held, others, nr, base, seed))
				failed++;
			else if (!image_clean()) {
				tap_diag("%s: qemu-img check found errors or leaks", sc->name);
				failed++;
			}
		}
		is_int(failed, 0, "%s (held at %s), %d rounds: serial result, same after reopen, "
		       "qemu-img check clean", sc->name, sc->event, ITERATIONS);
	}
}

/* A write to another cluster is not held up by a request stopped at a breakpoint. */
static void test_independent(void)
{
	struct tblk_blk *blk;
	GError *err = NULL;
	struct job held, other;
	bool went_on = false;

	if (create_image() < 0)
		tap_bail("cannot create the image");
	blk = open_image(true, &err);
	if (!blk)
		tap_bail(err->message);
	/* Allocate both L2 ranges first: only data writes are left to race. */
	ok(tblk_blk_pwrite_zeroes(blk, 0, SIZE, 0) == 0 && tblk_blk_pdiscard(blk, 0, SIZE) == 0,
	   "prepare the image");
	ok(tblk_blk_debug_breakpoint(blk, "write_aio", "held") == 0, "set a breakpoint");
	job_start(&held, blk, OP_WRITE, 0, CLUSTER, 0x21);
	ok(wait_suspended(blk, "held"), "the first write stops at write_aio");
	job_start(&other, blk, OP_WRITE, 3u << 20, CLUSTER, 0x22);
	for (int i = 0; i < 20000 && !went_on; i++) {
		went_on = atomic_load(&other.done);
		if (!went_on)
			usleep(500);
	}
	ok(went_on && other.ret == 0, "a write to another cluster completes meanwhile");
	ok(tblk_blk_debug_is_suspended(blk, "held") && !atomic_load(&held.done),
	   "the first is still stopped");
	is_int(tblk_blk_debug_resume(blk, "held"), 0, "resume");
	is_int(tblk_blk_debug_resume(blk, "held"), -ENOENT, "a second resume finds nothing");
	pthread_join(held.th, NULL);
	pthread_join(other.th, NULL);
	is_int(held.ret, 0, "the resumed write completes");
	tblk_blk_close(blk);
	ok(image_clean(), "qemu-img check clean");
}

/* ---------------------------------------------------------------- snapshots against writes */

/* The two regions the snapshot tests touch: four clusters at 0, one at FAR. */
#define REG_A		(4 * CLUSTER)
struct view {
	uint8_t a[REG_A];
	uint8_t far[CLUSTER];
};

static uint8_t *view_at(struct view *v, uint64_t off)
{
	return off >= FAR ? v->far + (off - FAR) : v->a + off;
}

static void view_apply(struct view *v, const struct job *j)
{
	if (j->op == OP_FLUSH)
		return;
	if (j->op == OP_DISCARD) {	/* whole clusters only, as the tests use */
		memset(view_at(v, j->off), 0, j->len);
		return;
	}
	job_apply(j, view_at(v, j->off), j->off);
}

struct snap_job {
	struct tblk_blk *blk;
	const char *name;
	int ret;
	atomic_bool done;
	pthread_t th;
};

static void *snap_main(void *arg)
{
	struct snap_job *sj = arg;
	struct tblk_snapshot_info sn = { .name = (char *)sj->name, .date_sec = 1700000000,
					 .icount = UINT64_MAX };
	GError *err = NULL;

	sj->ret = tblk_blk_snapshot_create(sj->blk, &sn, &err);
	if (sj->ret < 0)
		tap_diag("snapshot %s: %s", sj->name, err ? err->message : "?");
	g_clear_error(&err);
	atomic_store(&sj->done, true);
	return NULL;
}

static void snap_start(struct snap_job *sj, struct tblk_blk *blk, const char *name)
{
	*sj = (struct snap_job){ .blk = blk, .name = name };
	pthread_create(&sj->th, NULL, snap_main, sj);
}

/* Reads both regions of @blk into @v. */
static int view_read(struct tblk_blk *blk, struct view *v)
{
	int ret = tblk_blk_pread(blk, 0, v->a, REG_A, 0);

	return ret < 0 ? ret : tblk_blk_pread(blk, FAR, v->far, CLUSTER, 0);
}

/* Both regions of snapshot @name as `qemu-img convert -l` exports it. */
static bool view_read_qemu(const char *name, struct view *v)
{
	g_autofree char *raw = g_strdup_printf("%s.raw", path);
	g_autofree char *cmd = g_strdup_printf("qemu-img convert -l snapshot.name=%s -O raw "
					       "'%s' '%s' 2>&1", name, path, raw);
	FILE *f;
	bool good;

	if (system(cmd) != 0)
		return false;
	f = fopen(raw, "rb");
	good = f && fread(v->a, 1, REG_A, f) == REG_A && fseeko(f, (off_t)FAR, SEEK_SET) == 0 &&
	       fread(v->far, 1, CLUSTER, f) == CLUSTER;
	if (f)
		fclose(f);
	unlink(raw);
	return good;
}

/*
 * Checks the image at @path (closed): it reads @now, snapshot @name reads @then through
 * tblk and through qemu-img, and qemu-img check finds it clean. Diagnoses what differs.
 */
static bool snap_verify(const char *what, const char *name, const struct view *now,
			const struct view *then)
{
	g_autofree struct view *got = g_new0(struct view, 1);
	struct tblk_blk *blk;
	GError *err = NULL;
	bool good = true;

	blk = open_image(false, &err);
	if (!blk)
		tap_bail(err->message);
	if (view_read(blk, got) < 0 || memcmp(got, now, sizeof(*got))) {
		tap_diag("%s: the image does not read as the writes left it", what);
		good = false;
	}
	tblk_blk_close(blk);
	{
		GHashTable *opts = tblk_opts_new();

		g_hash_table_insert(opts, g_strdup("driver"), g_strdup("qcow2"));
		if (tblk_blk_open(&blk, path, opts, 0, NULL, &err) < 0)
			tap_bail(err->message);
		g_hash_table_unref(opts);
	}
	memset(got, 0, sizeof(*got));
	if (tblk_blk_snapshot_load_tmp(blk, NULL, name, &err) < 0 || view_read(blk, got) < 0 ||
	    memcmp(got, then, sizeof(*got))) {
		tap_diag("%s: snapshot %s does not read as the image did when it was taken", what,
			 name);
		good = false;
	}
	g_clear_error(&err);
	tblk_blk_close(blk);
	memset(got, 0, sizeof(*got));
	if (!view_read_qemu(name, got) || memcmp(got, then, sizeof(*got))) {
		tap_diag("%s: qemu-img reads snapshot %s differently", what, name);
		good = false;
	}
	if (!image_clean()) {
		tap_diag("%s: qemu-img check found errors or leaks", what);
		good = false;
	}
	return good;
}

static int create_big_image(void)
{
	GHashTable *opts = tblk_opts_new();
	GError *err = NULL;
	int ret;

	g_hash_table_insert(opts, g_strdup("cluster_size"), g_strdup("65536"));
	ret = tblk_img_create(path, "qcow2", SNAP_SIZE, opts, &err);
	if (ret < 0)
		tap_diag("create: %s", err->message);
	g_clear_error(&err);
	g_hash_table_unref(opts);
	return ret;
}

/* Fills clusters 0 and 1 with 0x01 (allocated, to be shared by the snapshot). */
static void snap_prepare(struct tblk_blk *blk, struct view *v)
{
	struct job pre = { .op = OP_WRITE, .off = 0, .len = 2 * CLUSTER, .pattern = 0x01 };

	memset(v, 0, sizeof(*v));
	pre.blk = blk;
	job_run(&pre);
	if (pre.ret < 0)
		tap_bail("cannot prepare the image");
	view_apply(v, &pre);
}

/*
 * A request (@held: an allocating write, or a flush writing back metadata) stops at @event;
 * another thread creates a snapshot meanwhile, which must wait for it. After both, a write
 * into the held one's cluster (copy-on-write of a cluster the snapshot shares). The snapshot
 * holds the held write, the image the later one too. With @pre_snapshot a first snapshot
 * shares the prepared clusters before, so the held write copies on write itself.
 */
static bool write_then_snapshot(const char *event, struct job *held, bool pre_snapshot,
				uint64_t *seed)
{
	g_autofree struct view *now = g_new0(struct view, 1);
	g_autofree struct view *then = NULL;
	struct job later = { .op = OP_WRITE, .off = (held->off & ~(CLUSTER - 1ull)) + 4096,
			     .len = 8192, .pattern = 0x77 };
	struct snap_job sj;
	struct tblk_blk *blk;
	GError *err = NULL;
	bool good = true;
	char what[160];

	snprintf(what, sizeof(what), "snapshot against a write held at %s", event);
	if (create_big_image() < 0)
		tap_bail("cannot create the image");
	blk = open_image(true, &err);
	if (!blk)
		tap_bail(err->message);
	snap_prepare(blk, now);
	if (pre_snapshot) {	/* clusters 0 and 1 shared: the held write copies on write */
		struct snap_job s0;

		snap_start(&s0, blk, "s0");
		pthread_join(s0.th, NULL);
		if (s0.ret < 0)
			tap_bail("cannot create a snapshot");
	}
	if (tblk_blk_debug_breakpoint(blk, event, "held") < 0)
		tap_bail("cannot set a breakpoint");
	job_start(held, blk, held->op, held->off, held->len, held->pattern);
	if (!wait_suspended(blk, "held")) {
		tap_diag("%s: the write never stopped", what);
		tblk_blk_debug_remove_breakpoint(blk, "held");
		pthread_join(held->th, NULL);
		tblk_blk_close(blk);
		return false;
	}
	snap_start(&sj, blk, "s1");
	usleep((useconds_t)(1000 + tap_rand(seed) % 3000));
	if (atomic_load(&sj.done) || atomic_load(&held->done)) {
		tap_diag("%s: the snapshot did not wait for the held write", what);
		good = false;
	}
	if (tblk_blk_debug_resume(blk, "held") < 0)
		good = false;
	pthread_join(held->th, NULL);
	pthread_join(sj.th, NULL);
	if (held->ret < 0 || sj.ret < 0)
		good = false;
	view_apply(now, held);
	then = g_memdup2(now, sizeof(*now));
	later.blk = blk;
	job_run(&later);
	if (later.ret < 0)
		good = false;
	view_apply(now, &later);
	tblk_blk_close(blk);
	return snap_verify(what, "s1", now, then) && good;
}

/*
 * A snapshot creation stops at @event; other threads write, discard and zero meanwhile (in
 * quiesced backends they must wait). The snapshot reads as before them, the image after.
 */
static bool snapshot_then_writes(const char *event, uint64_t *seed)
{
	g_autofree struct view *now = g_new0(struct view, 1);
	g_autofree struct view *then = NULL;
	struct job others[4] = {
		{ .op = OP_WRITE, .off = 4096, .len = 4096, .pattern = 0x21 },	/* shared */
		{ .op = OP_WRITE, .off = 2 * CLUSTER + 512, .len = 3000, .pattern = 0x22 },
		{ .op = OP_DISCARD, .off = CLUSTER, .len = CLUSTER },
		{ .op = OP_WRITE, .off = FAR, .len = CLUSTER, .pattern = 0x24 },	/* new L2 */
	};
	struct job zero = { .op = OP_ZERO, .off = 3 * CLUSTER, .len = 4096 };
	struct snap_job sj;
	struct tblk_blk *blk;
	GError *err = NULL;
	bool good = true;
	char what[160];

	snprintf(what, sizeof(what), "writes against a snapshot held at %s", event);
	if (create_big_image() < 0)
		tap_bail("cannot create the image");
	blk = open_image(true, &err);
	if (!blk)
		tap_bail(err->message);
	snap_prepare(blk, now);
	then = g_memdup2(now, sizeof(*now));
	if (tblk_blk_debug_breakpoint(blk, event, "held") < 0)
		tap_bail("cannot set a breakpoint");
	snap_start(&sj, blk, "s1");
	if (!wait_suspended(blk, "held")) {
		tap_diag("%s: the snapshot creation never stopped", what);
		tblk_blk_debug_remove_breakpoint(blk, "held");
		pthread_join(sj.th, NULL);
		tblk_blk_close(blk);
		return false;
	}
	jobs_start(others, 4, blk);
	job_start(&zero, blk, OP_ZERO, zero.off, zero.len, 0);
	usleep((useconds_t)(1000 + tap_rand(seed) % 3000));
	for (int i = 0; i < 4; i++)
		if (atomic_load(&others[i].done))
			good = false;
	if (!good || atomic_load(&zero.done) || atomic_load(&sj.done)) {
		tap_diag("%s: a request went on while the snapshot was held", what);
		good = false;
	}
	if (tblk_blk_debug_resume(blk, "held") < 0)
		good = false;
	pthread_join(sj.th, NULL);
	pthread_join(others[0].th, NULL);
	pthread_join(zero.th, NULL);
	if (sj.ret < 0 || zero.ret < 0)
		good = false;
	for (int i = 0; i < 4; i++) {
		if (others[i].ret < 0)
			good = false;
		view_apply(now, &others[i]);
	}
	view_apply(now, &zero);
	if (!good)
		tap_diag("%s: a request failed", what);
	tblk_blk_close(blk);
	return snap_verify(what, "s1", now, then) && good;
}

static void test_snapshots(uint64_t *seed)
{
	/* Requests held at each metadata event of their path. */
	static const struct {
		const char *event;
		enum op op;
		uint64_t off, len;
		bool pre_snapshot;
	} held[] = {
		{ "cluster_alloc", OP_WRITE, 2 * CLUSTER + 4096, 8192, false },
		{ "write_aio", OP_WRITE, 2 * CLUSTER, CLUSTER, false },
		{ "cow_read", OP_WRITE, CLUSTER + 512, 4096, true },
		{ "l2_alloc_write", OP_WRITE, FAR + 4096, 4096, false },
		{ "l1_update", OP_WRITE, FAR, CLUSTER, false },
		{ "l2_update", OP_FLUSH, 0, 0, false },
		{ "refblock_update_part", OP_FLUSH, 0, 0, false },
	};
	/* Events the snapshot creation itself raises. */
	static const char *const snap_events[] = {
		"cluster_alloc", "refblock_update_part", "refblock_load",
	};

	for (size_t i = 0; i < TBLK_ARRAY_SIZE(held); i++) {
		int failed = 0;

		for (int it = 0; it < ITERATIONS / 2; it++) {
			struct job j = { .op = held[i].op, .off = held[i].off, .len = held[i].len,
					 .pattern = 0x40 + it };

			failed += !write_then_snapshot(held[i].event, &j, held[i].pre_snapshot,
						       seed);
		}
		is_int(failed, 0, "snapshot created against a %s held at %s, %d rounds: the "
		       "snapshot waits and holds it, the image reads a later write too, qemu-img "
		       "reads the snapshot alike, check clean",
		       held[i].op == OP_FLUSH ? "flush" : "write", held[i].event, ITERATIONS / 2);
	}
	for (size_t i = 0; i < TBLK_ARRAY_SIZE(snap_events); i++) {
		int failed = 0;

		for (int it = 0; it < ITERATIONS / 2; it++)
			failed += !snapshot_then_writes(snap_events[i], seed);
		is_int(failed, 0, "writes, discard and zero write against a snapshot creation "
		       "held at %s, %d rounds: they wait for it, the snapshot reads as before "
		       "them, the image after, check clean", snap_events[i], ITERATIONS / 2);
	}
}

int main(void)
{
	uint64_t seed = tap_seed((uint64_t)time(NULL));
	const char *tmpdir = getenv("TMPDIR");
	int fd;

	snprintf(path, sizeof(path), "%s/tblk-race-XXXXXX", tmpdir ? tmpdir : "/tmp");
	fd = mkstemp(path);
	if (fd < 0)
		tap_bail("mkstemp");
	close(fd);
	if (system("qemu-img --version >/dev/null 2>&1") != 0) {
		unlink(path);
		printf("1..0 # SKIP qemu-img not installed\n");
		return 0;
	}
	test_independent();
	test_scenarios(&seed);
	test_snapshots(&seed);
	unlink(path);
	return tap_done();
}
