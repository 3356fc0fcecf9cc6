/* SPDX-License-Identifier: MIT */
/*
 * qcow2-bitmap-race.c - persistent dirty bitmaps tracking writes that race each other and
 * the bitmap actions. A qcow2 image (half of it allocated, so that overwrites take the Linux
 * AIO fast path) has two enabled bitmaps of different granularities (64 KiB and 512 B).
 * An iothread keeps asynchronous reads, overwrites, allocating writes, zero writes and
 * discards in flight; other threads send synchronous writes, zero writes and discards; and
 * one more thread meanwhile adds, merges, clears, enables, disables and removes bitmaps
 * through tblk_blk_bitmap_apply (merging into the tracked ones, too), and once freezes a
 * copy of the 64 KiB bitmap into a disabled one. After the close, the bitmaps stored in the
 * file (read from its directory and tables here) must cover every range written,
 * zeroed or discarded; the frozen copy every range completed before it was made; the
 * temporary bitmaps are gone; and `qemu-img check` finds the image clean.
 * Run under ThreadSanitizer and ASan by `make check-tsan` / `make check-asan`.
 */
#include <endian.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <tblk/tblk.h>
#include "threadpool/threadpool.h"
#include "t/tap.h"

#define IMG_SIZE	(16u << 20)
#define CLUSTER		65536u
#define DEPTH		16
#define NR_ASYNC	1200
#define NR_SYNC_THREADS	3
#define NR_SYNC		250
#define MAX_LEN		(16u << 10)

static char path[256];
static atomic_ulong seq;		/* orders completions against the freeze */

enum op_kind { OP_READ, OP_WRITE, OP_ZERO, OP_DISCARD };

/* A range that changed: done is the seq value taken after the request completed. */
struct done_op {
	uint64_t off, len;
	unsigned long done;
};

struct log {
	struct done_op *ops;
	unsigned int n;
};

static void log_add(struct log *l, uint64_t off, uint64_t len)
{
	l->ops[l->n++] = (struct done_op){ off, len, atomic_fetch_add(&seq, 1) };
}

static void pick(uint64_t *rng, enum op_kind *kind, uint64_t *off, uint64_t *len, bool reads)
{
	unsigned int r = (unsigned int)(tap_rand(rng) % 100);

	*kind = reads && r < 20 ? OP_READ : r < 60 ? OP_WRITE : r < 80 ? OP_ZERO : OP_DISCARD;
	*len = (1 + tap_rand(rng) % (MAX_LEN / 512)) * 512;
	/* Mostly into the allocated half, where overwrites can take the fast path. */
	if (tap_rand(rng) % 4)
		*off = (tap_rand(rng) % ((IMG_SIZE / 2 - *len) / 512)) * 512;
	else
		*off = (tap_rand(rng) % ((IMG_SIZE - *len) / 512)) * 512;
}

/* ------------------------------------------------ asynchronous requests on the iothread */

struct aop {
	struct async_state *st;
	enum op_kind kind;
	uint64_t off, len;
	uint8_t *mem;
	struct iovec iov;
};

struct async_state {
	struct tblk_blk *blk;
	uint64_t rng;
	unsigned int submitted, completed;	/* [iothread] */
	int errors;				/* [iothread] */
	struct log log;				/* [iothread] */
	struct aop ops[DEPTH];			/* [iothread] */
	atomic_bool finished;
};

static void async_submit(struct aop *o);

static void async_cb(void *opaque, int ret)
{
	struct aop *o = opaque;
	struct async_state *st = o->st;

	if (ret < 0)
		st->errors++;
	else if (o->kind != OP_READ)
		log_add(&st->log, o->off, o->len);
	st->completed++;
	if (st->submitted < NR_ASYNC)
		async_submit(o);
	else if (st->completed == NR_ASYNC)
		atomic_store(&st->finished, true);
}

static void async_submit(struct aop *o)
{
	struct async_state *st = o->st;

	st->submitted++;
	pick(&st->rng, &o->kind, &o->off, &o->len, true);
	o->iov = (struct iovec){ o->mem, o->len };
	switch (o->kind) {
	case OP_READ:
		tblk_blk_preadv(st->blk, o->off, &o->iov, 1, 0, async_cb, o);
		break;
	case OP_WRITE:
		memset(o->mem, (int)(st->submitted & 0xff), o->len);
		tblk_blk_pwritev(st->blk, o->off, &o->iov, 1, 0, async_cb, o);
		break;
	case OP_ZERO:
		tblk_blk_aio_pwrite_zeroes(st->blk, o->off, o->len, TBLK_REQ_MAY_UNMAP, async_cb,
					   o);
		break;
	case OP_DISCARD:
		tblk_blk_aio_pdiscard(st->blk, o->off, o->len, async_cb, o);
		break;
	}
}

static void async_start(void *opaque)
{
	struct async_state *st = opaque;

	for (int i = 0; i < DEPTH; i++)
		async_submit(&st->ops[i]);
}

/* ------------------------------------------------ synchronous requests */

struct sync_thread {
	struct tblk_blk *blk;
	uint64_t rng;
	int errors;
	struct log log;
	pthread_t th;
};

static void *sync_main(void *arg)
{
	struct sync_thread *t = arg;
	g_autofree uint8_t *buf = g_malloc(MAX_LEN);

	for (int i = 0; i < NR_SYNC; i++) {
		enum op_kind kind;
		uint64_t off, len;
		int ret;

		pick(&t->rng, &kind, &off, &len, false);
		if (kind == OP_WRITE) {
			memset(buf, i & 0xff, len);
			ret = tblk_blk_pwrite(t->blk, off, buf, len, 0);
		} else if (kind == OP_ZERO) {
			ret = tblk_blk_pwrite_zeroes(t->blk, off, len, 0);
		} else {
			ret = tblk_blk_pdiscard(t->blk, off, len);
		}
		if (ret < 0)
			t->errors++;
		else
			log_add(&t->log, off, len);
	}
	return NULL;
}

/* ------------------------------------------------ the bitmap actions */

struct bitmap_thread {
	struct tblk_blk *blk;
	struct async_state *async;
	struct sync_thread *sync;
	uint64_t rng;
	int errors;
	unsigned int actions;
	unsigned long frozen_at;	/* seq before the frozen copy was merged */
	char first_error[256];
	pthread_t th;
};

static int apply(struct bitmap_thread *b, enum tblk_bitmap_action action, const char *name,
		 uint64_t gran, bool disabled, const char *src)
{
	struct tblk_bitmap_request rq = { .action = action, .name = name, .granularity = gran,
					  .disabled = disabled, .src_name = src };
	GError *err = NULL;
	int ret = tblk_blk_bitmap_apply(b->blk, &rq, &err);

	if (ret < 0) {
		if (!b->errors++)
			snprintf(b->first_error, sizeof(b->first_error), "%s", err->message);
		g_error_free(err);
	}
	b->actions++;
	return ret;
}

static bool writers_done(struct bitmap_thread *b)
{
	return atomic_load(&b->async->finished) && atomic_load(&seq) >=
	       NR_ASYNC / 2 + NR_SYNC_THREADS * NR_SYNC / 2 && b->actions > 40;
}

static void *bitmap_main(void *arg)
{
	static const uint64_t grans[] = { 512, 4096, 1u << 20 };
	struct bitmap_thread *b = arg;
	char name[32];

	for (unsigned int round = 0; !writers_done(b) || round < 8; round++) {
		uint64_t gran = grans[tap_rand(&b->rng) % 3];

		snprintf(name, sizeof(name), "tmp%u", round);
		apply(b, TBLK_BITMAP_ADD, name, gran, round & 1, NULL);
		apply(b, TBLK_BITMAP_MERGE, name, 0, false, "a64k");
		apply(b, TBLK_BITMAP_CLEAR, name, 0, false, NULL);
		apply(b, TBLK_BITMAP_MERGE, name, 0, false, "b512");
		apply(b, round & 1 ? TBLK_BITMAP_ENABLE : TBLK_BITMAP_DISABLE, name, 0, false,
		      NULL);
		/*
		 * Into the tracked ones only from bitmaps as fine, which hold bits of real
		 * writes alone: their bits stay exact, so a missing mark cannot be hidden.
		 */
		apply(b, TBLK_BITMAP_MERGE, "a64k", 0, false, "b512");
		if (gran == 512)
			apply(b, TBLK_BITMAP_MERGE, "b512", 0, false, name);
		else if (gran <= 65536)
			apply(b, TBLK_BITMAP_MERGE, "a64k", 0, false, name);
		apply(b, TBLK_BITMAP_REMOVE, name, 0, false, NULL);
		if (round == 3) {
			apply(b, TBLK_BITMAP_ADD, "frozen", 4096, true, NULL);
			b->frozen_at = atomic_fetch_add(&seq, 1);
			apply(b, TBLK_BITMAP_MERGE, "frozen", 0, false, "a64k");
		}
		if (round >= 8 && !writers_done(b))
			sched_yield();
	}
	return NULL;
}

/* ------------------------------------------------ reading the stored bitmaps */

struct stored {
	char name[64];
	unsigned int gran_bits;
	uint32_t flags;
	uint8_t *bits;		/* the serialised bits, NULL if not found */
};

static uint64_t be64_at(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return be64toh(v);
}

static uint32_t be32_at(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return be32toh(v);
}

/* Reads the bitmaps directory of the file at @path; returns the number found (<= @max). */
static int read_stored(struct stored *out, int max)
{
	g_autofree uint8_t *d = NULL;
	gsize flen;
	uint64_t pos, cs, dir, nb;
	int n = 0;

	if (!g_file_get_contents(path, (char **)&d, &flen, NULL) || flen < 104)
		return -1;
	cs = 1ull << be32_at(d + 20);
	for (pos = be32_at(d + 100); pos + 8 <= flen && be32_at(d + pos);
	     pos += 8 + ((be32_at(d + pos + 4) + 7) & ~7u))
		if (be32_at(d + pos) == 0x23852875)
			break;
	if (pos + 32 > flen || be32_at(d + pos) != 0x23852875)
		return 0;
	nb = be32_at(d + pos + 8);
	dir = be64_at(d + pos + 24);
	for (uint64_t i = 0; i < nb && n < max; i++) {
		uint64_t toff = be64_at(d + dir), nl = (d[dir + 18] << 8) | d[dir + 19];
		uint32_t tsz = be32_at(d + dir + 8);
		struct stored *s = &out[n++];

		snprintf(s->name, sizeof(s->name), "%.*s", (int)nl, (const char *)d + dir + 24);
		s->flags = be32_at(d + dir + 12);
		s->gran_bits = d[dir + 17];
		s->bits = g_malloc0(tsz * cs);
		for (uint32_t k = 0; k < tsz; k++) {
			uint64_t e = be64_at(d + toff + 8 * k), off = e & 0x00fffffffffffe00ull;

			if (off && off + cs <= flen)
				memcpy(s->bits + k * cs, d + off, cs);
			else if (e & 1)
				memset(s->bits + k * cs, 0xff, cs);
		}
		dir += (24 + nl + 7) & ~7ull;
	}
	return n;
}

static const struct stored *find_stored(const struct stored *s, int n, const char *name)
{
	for (int i = 0; i < n; i++)
		if (!strcmp(s[i].name, name))
			return &s[i];
	return NULL;
}

/* Number of logged ranges (done before @before) with a bit of @s clear. */
static unsigned int missing(const struct stored *s, const struct log *l, unsigned long before)
{
	unsigned int bad = 0;

	for (unsigned int i = 0; i < l->n; i++) {
		const struct done_op *o = &l->ops[i];

		if (o->done >= before)
			continue;
		for (uint64_t bit = o->off >> s->gran_bits;
		     bit <= (o->off + o->len - 1) >> s->gran_bits; bit++)
			if (!(s->bits[bit / 8] & (1u << (bit % 8)))) {
				bad++;
				break;
			}
	}
	return bad;
}

/* Number of bits of @s set where no logged range lies (each log @nlogs long). */
static uint64_t spurious(const struct stored *s, const struct log *logs, int nlogs)
{
	uint64_t nbits = (IMG_SIZE + (1ull << s->gran_bits) - 1) >> s->gran_bits, bad = 0;
	g_autofree uint8_t *want = g_malloc0((nbits + 7) / 8);

	for (int k = 0; k < nlogs; k++)
		for (unsigned int i = 0; i < logs[k].n; i++) {
			const struct done_op *o = &logs[k].ops[i];

			for (uint64_t bit = o->off >> s->gran_bits;
			     bit <= (o->off + o->len - 1) >> s->gran_bits; bit++)
				want[bit / 8] |= (uint8_t)(1u << (bit % 8));
		}
	for (uint64_t bit = 0; bit < nbits; bit++)
		if ((s->bits[bit / 8] & (1u << (bit % 8))) && !(want[bit / 8] & (1u << (bit % 8))))
			bad++;
	return bad;
}

/* ------------------------------------------------ the test */

static atomic_bool closed;

static void close_on_loop(void *opaque)
{
	tblk_blk_close(opaque);
	atomic_store(&closed, true);
}

static struct tblk_blk *open_image(struct tblk_loop *loop)
{
	GHashTable *opts = tblk_opts_new();
	struct tblk_blk *blk = NULL;
	unsigned int flags = TBLK_OPEN_RDWR;
	GError *err = NULL;
	char spec[400];

	snprintf(spec, sizeof(spec), "driver=qcow2,file.driver=file,file.filename=%s,"
		 "file.aio=native", path);
	tblk_opts_parse(opts, spec, NULL, NULL);
	tblk_parse_cache_mode("none", &flags, NULL);
	if (tblk_blk_open(&blk, NULL, opts, flags, loop, &err) < 0) {
		tap_diag("open: %s", err ? err->message : "?");
		g_clear_error(&err);
		blk = NULL;
	}
	g_hash_table_destroy(opts);
	return blk;
}

int main(void)
{
	struct async_state *async = g_new0(struct async_state, 1);
	struct sync_thread syncs[NR_SYNC_THREADS];
	struct bitmap_thread bt = { 0 };
	struct stored st[16];
	struct tblk_stats stats;
	struct log logs[NR_SYNC_THREADS + 1];
	struct tblk_iothread *iot;
	struct tblk_loop *loop;
	GHashTable *copts;
	struct tblk_blk *blk;
	GError *err = NULL;
	g_autofree uint8_t *fill = NULL;
	const struct stored *a, *b, *f;
	unsigned int sync_errors = 0;
	int nst;
	char cmd[600];

	uint64_t seed = tap_seed(0x5eed);
	int fd;

	snprintf(path, sizeof(path), "%s/tblk-bitmap-race-XXXXXX", getenv("TMPDIR") ?: "/tmp");
	fd = mkstemp(path);
	if (fd < 0)
		tap_bail("mkstemp");
	close(fd);
	if (system("qemu-img --version >/dev/null 2>&1") != 0) {
		unlink(path);
		printf("1..0 # SKIP qemu-img not installed\n");
		return 0;
	}
	tap_plan(14);
	bt.rng = seed;
	copts = tblk_opts_new();
	g_hash_table_insert(copts, g_strdup("cluster_size"), g_strdup("65536"));
	if (tblk_img_create(path, "qcow2", IMG_SIZE, copts, &err) < 0)
		tap_bail(err->message);
	g_hash_table_destroy(copts);
	iot = tblk_iothread_new("bitmap-race", &err);
	if (!iot)
		tap_bail(err->message);
	loop = tblk_iothread_get_loop(iot);
	blk = open_image(loop);
	if (!blk)
		tap_bail("cannot open the image");
	bt.blk = blk;
	is_int(apply(&bt, TBLK_BITMAP_ADD, "a64k", 65536, false, NULL), 0, "add a64k");
	is_int(apply(&bt, TBLK_BITMAP_ADD, "b512", 512, false, NULL), 0, "add b512");
	bt.actions = 0;
	/* Allocated clusters for the fast path; not logged, so the bitmaps are cleared after. */
	fill = g_malloc(IMG_SIZE / 2);
	memset(fill, 0x5a, IMG_SIZE / 2);
	ok(tblk_blk_pwrite(blk, 0, fill, IMG_SIZE / 2, 0) == 0 &&
	   apply(&bt, TBLK_BITMAP_CLEAR, "a64k", 0, false, NULL) == 0 &&
	   apply(&bt, TBLK_BITMAP_CLEAR, "b512", 0, false, NULL) == 0,
	   "fill half the image, clear the bitmaps");

	async->blk = blk;
	async->rng = seed + 1;
	async->log.ops = g_new(struct done_op, NR_ASYNC);
	for (int i = 0; i < DEPTH; i++) {
		async->ops[i].st = async;
		if (posix_memalign((void **)&async->ops[i].mem, 4096, MAX_LEN))
			tap_bail("posix_memalign");
	}
	for (int i = 0; i < NR_SYNC_THREADS; i++) {
		syncs[i] = (struct sync_thread){ .blk = blk, .rng = seed + 100 + (uint64_t)i };
		syncs[i].log.ops = g_new(struct done_op, NR_SYNC);
	}
	bt.async = async;
	bt.sync = syncs;
	bt.frozen_at = 0;
	tblk_loop_call_soon(loop, async_start, async);
	for (int i = 0; i < NR_SYNC_THREADS; i++)
		pthread_create(&syncs[i].th, NULL, sync_main, &syncs[i]);
	pthread_create(&bt.th, NULL, bitmap_main, &bt);
	for (int i = 0; i < NR_SYNC_THREADS; i++) {
		pthread_join(syncs[i].th, NULL);
		sync_errors += (unsigned int)syncs[i].errors;
	}
	pthread_join(bt.th, NULL);
	tblk_blk_drain(blk);
	is_int(sync_errors, 0, "%d synchronous writes, zero writes and discards in %d threads",
	       NR_SYNC_THREADS * NR_SYNC, NR_SYNC_THREADS);
	ok(atomic_load(&async->finished) && async->errors == 0, "%d asynchronous requests "
	   "complete without error", NR_ASYNC);
	ok(bt.errors == 0, "%u bitmap actions meanwhile, none failed%s%s", bt.actions,
	   bt.errors ? ": " : "", bt.first_error);
	tblk_blk_get_stats(blk, &stats);
	ok(stats.fast_ops[TBLK_STAT_WRITE] > 0, "overwrites took the fast path (%" PRIu64
	   " of %" PRIu64 " writes)", stats.fast_ops[TBLK_STAT_WRITE], stats.ops[TBLK_STAT_WRITE]);
	/*
	 * Closed on the iothread: its last completion may still be recycling its request
	 * object when a drain from another thread sees nothing in flight.
	 */
	tblk_loop_call_soon(loop, close_on_loop, blk);
	while (!atomic_load(&closed))
		usleep(1000);
	tblk_iothread_free(iot);

	nst = read_stored(st, 16);
	a = find_stored(st, nst, "a64k");
	b = find_stored(st, nst, "b512");
	f = find_stored(st, nst, "frozen");
	ok(nst == 3 && a && b && f && a->flags == 2 && b->flags == 2 && f->flags == 0 &&
	   a->gran_bits == 16 && b->gran_bits == 9 && f->gran_bits == 12,
	   "stored: a64k and b512 enabled, frozen disabled, no temporary bitmap (%d)", nst);
	if (a && b && f) {
		unsigned int ma = missing(a, &async->log, ~0ul), mb = missing(b, &async->log, ~0ul);
		unsigned int mf = missing(f, &async->log, bt.frozen_at);

		for (int i = 0; i < NR_SYNC_THREADS; i++) {
			ma += missing(a, &syncs[i].log, ~0ul);
			mb += missing(b, &syncs[i].log, ~0ul);
			mf += missing(f, &syncs[i].log, bt.frozen_at);
		}
		is_int(ma, 0, "a64k covers every range written, zeroed or discarded");
		is_int(mb, 0, "b512 covers every range written, zeroed or discarded");
		is_int(mf, 0, "frozen covers every range done before it was made");
		logs[0] = async->log;
		for (int i = 0; i < NR_SYNC_THREADS; i++)
			logs[i + 1] = syncs[i].log;
		is_int(spurious(a, logs, NR_SYNC_THREADS + 1) + spurious(b, logs, NR_SYNC_THREADS + 1),
		       0, "a64k and b512 have no bit set where nothing was written");
	} else {
		tap_skip(4, "bitmaps missing");
	}
	for (int i = 0; i < nst; i++)
		g_free(st[i].bits);
	snprintf(cmd, sizeof(cmd), "qemu-img check -q '%s'", path);
	is_int(system(cmd), 0, "qemu-img check finds no errors and no leaks");
	snprintf(cmd, sizeof(cmd), "qemu-img bitmap --remove '%s' frozen >/dev/null 2>&1 && "
		 "qemu-img check -q '%s'", path, path);
	is_int(system(cmd), 0, "qemu-img loads the stored bitmaps and removes one cleanly");

	for (int i = 0; i < DEPTH; i++)
		free(async->ops[i].mem);
	g_free(async->log.ops);
	g_free(async);
	for (int i = 0; i < NR_SYNC_THREADS; i++)
		g_free(syncs[i].log.ops);
	unlink(path);
	return tap_done();
}
