/* SPDX-License-Identifier: MIT */
/*
 * soak-qcow2.c - load soak: many threads doing mixed I/O (allocating writes, overwrites,
 * reads, zero writes, discards, flushes; 512 B to 256 KiB) on a qcow2 image whose backing
 * chain holds two images with content, through the public API: several threads use the
 * synchronous calls, one more runs a loop with a queue of asynchronous requests. Requests
 * whose byte ranges overlap are ordered by the test (a range lock) so that a shadow copy of
 * the disk knows what every read must return; requests to different bytes of one cluster
 * still race inside qcow2. Every read is checked against the shadow as it completes; at the
 * end the image is reread whole after a reopen, `qemu-img check` must find it clean and the
 * backing files unchanged.
 *
 * Memory stays flat: after a warm-up phase (every thread joined, caches filled) the resident
 * size and the bytes malloc holds are sampled, the load runs again, and growth must stay
 * below a few bytes per request plus a fixed slack, which a leak of anything per request
 * exceeds. Skipped under sanitizers (ASan quarantines freed memory; its leak check covers
 * leaks there).
 *
 * Duration: TBLK_SOAK_SECONDS (default 12, 4 under sanitizers); an hour-long soak is
 * TBLK_SOAK_SECONDS=3600 ./t/soak-qcow2.t. TBLK_SOAK_THREADS sets the synchronous threads
 * (default 6), TBLK_SEED the random seed.
 */
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/common.h"
#include "tblk/tblk.h"
#include "t/tap.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

#define DISK		(64ull << 20)
#define SECTOR		512u
#define MAX_REQ		(256u << 10)
#define TOP_CLUSTER	65536u
#define QD		16
#define MAX_THREADS	32

static char dir[256], base_path[300], mid_path[300], top_path[300];

/* --------------------------------------------------------------- data patterns */

/* The 8-byte word at absolute byte @pos written by write number @tag. */
static inline uint64_t word(uint64_t tag, uint64_t pos)
{
	uint64_t x = (tag << 40) ^ (pos >> 3) ^ 0x9e3779b97f4a7c15ull;

	x ^= x >> 29;
	x *= 0xbf58476d1ce4e5b9ull;
	return x ^ (x >> 32);
}

/* Fills @buf with the data of write @tag at disk offset @off (both 8-byte aligned). */
static void fill(uint8_t *buf, uint64_t off, size_t len, uint64_t tag)
{
	for (size_t i = 0; i < len; i += 8) {
		uint64_t w = word(tag, off + i);

		memcpy(buf + i, &w, 8);
	}
}

/* --------------------------------------------------------------- shadow and range lock */

/*
 * The shadow is what the disk must read as. A byte range of it is owned by the thread that
 * holds the range lock over it, which is also the only one with a request there in flight.
 */
static uint8_t *shadow;

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cv;			/* [lock] signalled when a range is released */
	uint64_t start[MAX_THREADS + QD];	/* [lock] held ranges, len 0: free slot */
	uint64_t len[MAX_THREADS + QD];		/* [lock] */
} ranges = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, { 0 }, { 0 } };

static bool range_busy_locked(uint64_t off, uint64_t len)
{
	for (int i = 0; i < MAX_THREADS + QD; i++)
		if (ranges.len[i] && off < ranges.start[i] + ranges.len[i] &&
		    ranges.start[i] < off + len)
			return true;
	return false;
}

/* Takes [off, off + len): waits if @wait, else returns -1 when busy. Returns the slot. */
static int range_take(uint64_t off, uint64_t len, bool wait)
{
	int slot = -1;

	pthread_mutex_lock(&ranges.lock);
	while (range_busy_locked(off, len)) {
		if (!wait)
			goto out;
		pthread_cond_wait(&ranges.cv, &ranges.lock);
	}
	for (int i = 0; i < MAX_THREADS + QD; i++)
		if (!ranges.len[i]) {
			slot = i;
			break;
		}
	if (slot < 0)
		abort();	/* more slots than threads and queue entries: cannot happen */
	ranges.start[slot] = off;
	ranges.len[slot] = len;
out:
	pthread_mutex_unlock(&ranges.lock);
	return slot;
}

static void range_release(int slot)
{
	pthread_mutex_lock(&ranges.lock);
	ranges.len[slot] = 0;
	pthread_cond_broadcast(&ranges.cv);
	pthread_mutex_unlock(&ranges.lock);
}

/* --------------------------------------------------------------- operations */

enum op { OP_WRITE, OP_READ, OP_ZERO, OP_DISCARD, OP_FLUSH, OP_NR };

struct stats {
	uint64_t ops[OP_NR];
	uint64_t bytes;
	uint64_t errors;	/* a request failed */
	uint64_t mismatches;	/* a read differed from the shadow */
};

static atomic_uint_fast64_t next_tag = 1;
static atomic_bool stop;
static struct tblk_blk *blk;

/* One request: what it is, the range it holds, its buffer. */
struct req {
	enum op op;
	uint64_t off, len, tag;
	unsigned int flags;
	int slot;
	struct iovec iov[3];
	int iovcnt;
	uint8_t *buf;		/* MAX_REQ bytes */
};

/* A random length of 512 B .. 256 KiB, most of them small, in sectors. */
static uint64_t rand_len(uint64_t *seed)
{
	unsigned int shift = (unsigned int)(tap_rand(seed) % 10);	/* 512 << 0..9 */
	uint64_t max = (uint64_t)SECTOR << shift;

	return SECTOR * (1 + tap_rand(seed) % (max / SECTOR));
}

/* Picks the next request; hot spots on a few clusters make overlaps common. */
static void req_pick(struct req *r, uint64_t *seed)
{
	unsigned int p = (unsigned int)(tap_rand(seed) % 100);

	r->op = p < 40 ? OP_WRITE : p < 75 ? OP_READ : p < 85 ? OP_ZERO : p < 95 ? OP_DISCARD :
		OP_FLUSH;
	r->len = rand_len(seed);
	if (tap_rand(seed) % 4 == 0)
		r->off = (tap_rand(seed) % 64) * TOP_CLUSTER + (tap_rand(seed) % 128) * SECTOR;
	else
		r->off = (tap_rand(seed) % (DISK / SECTOR)) * SECTOR;
	if (r->off + r->len > DISK)
		r->off = DISK - r->len;
	r->flags = 0;
	if (r->op == OP_WRITE && tap_rand(seed) % 16 == 0)
		r->flags = TBLK_REQ_FUA;
	if (r->op == OP_ZERO && tap_rand(seed) % 2)
		r->flags = TBLK_REQ_MAY_UNMAP;
	if (r->op == OP_DISCARD)
		r->len = TBLK_MIN(DISK - r->off, r->len * 4);	/* whole clusters more often */
	r->tag = atomic_fetch_add(&next_tag, 1);
	/* Up to three iovec pieces cut at sector boundaries. */
	r->iovcnt = 1 + (int)(tap_rand(seed) % 3);
	if ((uint64_t)r->iovcnt > r->len / SECTOR)
		r->iovcnt = 1;
	{
		uint64_t done = 0;

		for (int i = 0; i < r->iovcnt; i++) {
			uint64_t left = r->len - done;
			uint64_t n = i == r->iovcnt - 1 ? left :
				     SECTOR * (1 + tap_rand(seed) % (left / SECTOR - (uint64_t)(r->iovcnt - 1 - i)));

			r->iov[i] = (struct iovec){ r->buf + done, n };
			done += n;
		}
	}
	if (r->op == OP_WRITE)
		fill(r->buf, r->off, r->len, r->tag);
}

/* The bytes a request locks: a flush none, a discard the clusters it may drop. */
static bool req_range(const struct req *r, uint64_t *off, uint64_t *len)
{
	if (r->op == OP_FLUSH)
		return false;
	*off = r->off;
	*len = r->len;
	return true;
}

/* Applies a completed request to the shadow (or checks a read against it). */
static void req_complete(struct req *r, int ret, struct stats *st)
{
	st->ops[r->op]++;
	if (ret < 0) {
		if (!st->errors)
			tap_diag("op %d at %" PRIu64 "+%" PRIu64 " failed: %s", r->op, r->off,
				 r->len, strerror(-ret));
		st->errors++;
		goto out;
	}
	switch (r->op) {
	case OP_WRITE:
		memcpy(shadow + r->off, r->buf, r->len);
		st->bytes += r->len;
		break;
	case OP_READ:
		st->bytes += r->len;
		if (memcmp(shadow + r->off, r->buf, r->len)) {
			uint64_t i = 0;

			while (shadow[r->off + i] == r->buf[i])
				i++;
			if (!st->mismatches)
				tap_diag("read %" PRIu64 "+%" PRIu64 " differs from the shadow at %"
					 PRIu64, r->off, r->len, r->off + i);
			st->mismatches++;
		}
		break;
	case OP_ZERO:
		memset(shadow + r->off, 0, r->len);
		break;
	case OP_DISCARD: {
		/* qcow2 v3 over a backing file: whole clusters read as zeroes, the rest stays. */
		uint64_t s = TBLK_ALIGN_UP(r->off, TOP_CLUSTER);
		uint64_t e = TBLK_ALIGN_DOWN(r->off + r->len, TOP_CLUSTER);

		if (e > s)
			memset(shadow + s, 0, e - s);
		break;
	}
	default:
		break;
	}
out:
	if (r->slot >= 0)
		range_release(r->slot);
	r->slot = -1;
}

static int req_run_sync(struct req *r)
{
	switch (r->op) {
	case OP_WRITE:
		if (r->iovcnt == 1)
			return tblk_blk_pwrite(blk, r->off, r->buf, r->len, r->flags);
		return tblk_blk_pwritev_sync(blk, r->off, r->iov, r->iovcnt, r->flags);
	case OP_READ:
		if (r->iovcnt == 1)
			return tblk_blk_pread(blk, r->off, r->buf, r->len, 0);
		return tblk_blk_preadv_sync(blk, r->off, r->iov, r->iovcnt, 0);
	case OP_ZERO:
		return tblk_blk_pwrite_zeroes(blk, r->off, r->len, r->flags);
	case OP_DISCARD:
		return tblk_blk_pdiscard(blk, r->off, r->len);
	default:
		return tblk_blk_flush(blk);
	}
}

/* --------------------------------------------------------------- the threads */

struct worker {
	pthread_t th;
	uint64_t seed;
	struct stats st;
	struct tblk_loop *loop;	/* the asynchronous worker's */
};

static void *sync_main(void *arg)
{
	struct worker *w = arg;
	struct req r = { .buf = g_malloc(MAX_REQ), .slot = -1 };

	while (!atomic_load(&stop)) {
		uint64_t off, len;

		req_pick(&r, &w->seed);
		r.slot = req_range(&r, &off, &len) ? range_take(off, len, true) : -1;
		req_complete(&r, req_run_sync(&r), &w->st);
	}
	g_free(r.buf);
	return NULL;
}

struct aslot {
	struct req r;
	bool busy;
	struct worker *w;
	unsigned int *inflight;
};

static void async_cb(void *opaque, int ret)
{
	struct aslot *a = opaque;

	req_complete(&a->r, ret, &a->w->st);
	a->busy = false;
	(*a->inflight)--;
}

static void async_submit(struct aslot *a)
{
	struct req *r = &a->r;

	switch (r->op) {
	case OP_WRITE:
		tblk_blk_pwritev(blk, r->off, r->iov, r->iovcnt, r->flags, async_cb, a);
		break;
	case OP_READ:
		tblk_blk_preadv(blk, r->off, r->iov, r->iovcnt, 0, async_cb, a);
		break;
	case OP_ZERO:
		tblk_blk_aio_pwrite_zeroes(blk, r->off, r->len, r->flags, async_cb, a);
		break;
	case OP_DISCARD:
		tblk_blk_aio_pdiscard(blk, r->off, r->len, async_cb, a);
		break;
	default:
		tblk_blk_aio_flush(blk, async_cb, a);
		break;
	}
}

/* Keeps up to QD asynchronous requests in flight on the loop this thread runs. */
static void *async_main(void *arg)
{
	struct worker *w = arg;
	struct aslot slots[QD];
	unsigned int inflight = 0;
	bool picked[QD] = { false };

	for (int i = 0; i < QD; i++)
		slots[i] = (struct aslot){ .r = { .buf = g_malloc(MAX_REQ), .slot = -1 },
					   .w = w, .inflight = &inflight };
	while (!atomic_load(&stop) || inflight) {
		bool submitted = false;

		for (int i = 0; i < QD && !atomic_load(&stop); i++) {
			struct aslot *a = &slots[i];
			uint64_t off, len;

			if (a->busy)
				continue;
			/* A request whose range is busy waits for the next round. */
			if (!picked[i])
				req_pick(&a->r, &w->seed);
			picked[i] = true;
			a->r.slot = -1;
			if (req_range(&a->r, &off, &len)) {
				a->r.slot = range_take(off, len, false);
				if (a->r.slot < 0)
					continue;
			}
			picked[i] = false;
			a->busy = true;
			inflight++;
			submitted = true;
			async_submit(a);
		}
		if (inflight)
			tblk_loop_iterate(w->loop, true);
		else if (!submitted)
			usleep(100);
	}
	for (int i = 0; i < QD; i++)
		g_free(slots[i].r.buf);
	return NULL;
}

/* Runs the load for @seconds with @nsync synchronous threads and one asynchronous one. */
static void run_phase(struct worker *w, int nsync, double seconds)
{
	struct timespec ts = { (time_t)seconds,
			       (long)((seconds - (double)(time_t)seconds) * 1e9) };

	atomic_store(&stop, false);
	for (int i = 0; i < nsync; i++)
		pthread_create(&w[i].th, NULL, sync_main, &w[i]);
	pthread_create(&w[nsync].th, NULL, async_main, &w[nsync]);
	nanosleep(&ts, NULL);
	atomic_store(&stop, true);
	for (int i = 0; i <= nsync; i++)
		pthread_join(w[i].th, NULL);
}

static void sum_stats(struct worker *w, int n, struct stats *sum)
{
	*sum = (struct stats){ 0 };
	for (int i = 0; i < n; i++) {
		for (int k = 0; k < OP_NR; k++)
			sum->ops[k] += w[i].st.ops[k];
		sum->bytes += w[i].st.bytes;
		sum->errors += w[i].st.errors;
		sum->mismatches += w[i].st.mismatches;
		w[i].st = (struct stats){ 0 };
	}
}

static uint64_t total_ops(const struct stats *s)
{
	uint64_t n = 0;

	for (int k = 0; k < OP_NR; k++)
		n += s->ops[k];
	return n;
}

/* --------------------------------------------------------------- memory */

/* Resident bytes, once malloc has given back the free pages it can (less noise). */
static uint64_t rss_bytes(void)
{
	unsigned long size = 0, resident = 0;
	FILE *f;

#ifdef __GLIBC__
	malloc_trim(0);
#endif
	f = fopen("/proc/self/statm", "r");
	if (!f)
		return 0;
	if (fscanf(f, "%lu %lu", &size, &resident) != 2)
		resident = 0;
	fclose(f);
	return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* Bytes handed out by malloc, every arena and mmapped chunks included. */
static uint64_t heap_bytes(void)
{
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 33)
	struct mallinfo2 mi = mallinfo2();

	return mi.uordblks + mi.hblkhd;
#else
	return 0;
#endif
}

/* --------------------------------------------------------------- images */

static void run(const char *cmd)
{
	if (system(cmd) != 0) {
		tap_diag("failed: %s", cmd);
		tap_bail("cannot prepare the images");
	}
}

/*
 * Writes about @share percent of @path in pieces of 4 KiB .. 1 MiB (some not cluster
 * aligned) with write numbers @tag + i, mirroring them into the shadow.
 */
static void populate(const char *path, uint64_t tag, int share, uint64_t *seed)
{
	struct tblk_blk *b;
	GError *err = NULL;
	uint8_t *buf = g_malloc(1 << 20);
	uint64_t off = 0;

	if (tblk_blk_open(&b, path, NULL, TBLK_OPEN_RDWR, NULL, &err) < 0)
		tap_bail(err->message);
	while (off < DISK) {
		uint64_t len = 4096 * (1 + tap_rand(seed) % 256);

		len = TBLK_MIN(len, DISK - off);
		if ((int)(tap_rand(seed) % 100) < share) {
			fill(buf, off, len, tag);
			if (tblk_blk_pwrite(b, off, buf, len, 0) < 0)
				tap_bail("cannot write a backing file");
			memcpy(shadow + off, buf, len);
			tag++;
		}
		off += len + SECTOR * (tap_rand(seed) % 8);
	}
	tblk_blk_close(b);
	g_free(buf);
}

static char *file_sum(const char *path)
{
	g_autofree char *data = NULL;
	gsize len = 0;

	if (!g_file_get_contents(path, &data, &len, NULL))
		return g_strdup("?");
	return g_compute_checksum_for_data(G_CHECKSUM_SHA256, (const guchar *)data, len);
}

static void make_chain(uint64_t *seed)
{
	char cmd[2000];

	snprintf(cmd, sizeof(cmd),
		 "qemu-img create -q -f qcow2 '%s' %llu && "
		 "qemu-img create -q -f qcow2 -o cluster_size=16384 -b '%s' -F qcow2 '%s' && "
		 "qemu-img create -q -f qcow2 -o cluster_size=%u -b '%s' -F qcow2 '%s'",
		 base_path, DISK, base_path, mid_path, TOP_CLUSTER, mid_path, top_path);
	run(cmd);
	populate(base_path, 1ull << 22, 60, seed);
	populate(mid_path, 2ull << 22, 30, seed);
}

/* Reads the whole disk through a fresh read-only open and compares it with the shadow. */
static uint64_t verify_all(void)
{
	struct tblk_blk *b;
	GError *err = NULL;
	uint8_t *buf = g_malloc(1 << 20);
	uint64_t bad = 0;

	if (tblk_blk_open(&b, top_path, NULL, 0, NULL, &err) < 0) {
		tap_diag("reopen: %s", err->message);
		g_clear_error(&err);
		g_free(buf);
		return DISK;
	}
	for (uint64_t off = 0; off < DISK; off += 1 << 20) {
		if (tblk_blk_pread(b, off, buf, 1 << 20, 0) < 0) {
			bad += 1 << 20;
			continue;
		}
		for (uint64_t i = 0; i < (1 << 20); i += SECTOR)
			if (memcmp(buf + i, shadow + off + i, SECTOR)) {
				if (!bad)
					tap_diag("sector at %" PRIu64 " differs", off + i);
				bad += SECTOR;
			}
	}
	tblk_blk_close(b);
	g_free(buf);
	return bad;
}

static int check_image(const char *path)
{
	char cmd[700];

	snprintf(cmd, sizeof(cmd), "qemu-img check -q '%s' >/dev/null 2>&1", path);
	return system(cmd);
}

/* --------------------------------------------------------------- main */

static void report(const char *phase, const struct stats *s, double seconds)
{
	tap_diag("%s: %" PRIu64 " requests in %.1f s (%" PRIu64 " writes, %" PRIu64 " reads, %"
		 PRIu64 " zero writes, %" PRIu64 " discards, %" PRIu64 " flushes), %" PRIu64
		 " MiB moved", phase, total_ops(s), seconds, s->ops[OP_WRITE], s->ops[OP_READ],
		 s->ops[OP_ZERO], s->ops[OP_DISCARD], s->ops[OP_FLUSH], s->bytes >> 20);
}

int main(void)
{
	uint64_t seed = tap_seed((uint64_t)time(NULL));
	const char *tmpdir = getenv("TMPDIR");
	const char *env_s = getenv("TBLK_SOAK_SECONDS");
	const char *env_t = getenv("TBLK_SOAK_THREADS");
	double seconds = env_s ? atof(env_s) : SANITIZED ? 4 : 12;
	int nsync = env_t ? atoi(env_t) : 6;
	struct worker w[MAX_THREADS];
	struct tblk_loop *loop;
	g_autofree char *base_sum = NULL, *mid_sum = NULL, *base_sum2 = NULL, *mid_sum2 = NULL;
	struct stats warm, load;
	uint64_t rss0, rss1, heap0, heap1, n;
	GError *err = NULL;
	char cmd[700];

	if (nsync < 1 || nsync > MAX_THREADS - 1)
		nsync = 6;
	if (seconds < 1)
		seconds = 1;
	if (system("qemu-img --version >/dev/null 2>&1") != 0) {
		printf("1..0 # SKIP qemu-img not installed\n");
		return 0;
	}
	snprintf(dir, sizeof(dir), "%s/tblk-soak-XXXXXX", tmpdir ? tmpdir : "/tmp");
	if (!mkdtemp(dir))
		tap_bail("mkdtemp");
	snprintf(base_path, sizeof(base_path), "%s/base.qcow2", dir);
	snprintf(mid_path, sizeof(mid_path), "%s/mid.qcow2", dir);
	snprintf(top_path, sizeof(top_path), "%s/top.qcow2", dir);
	tap_plan(9);
	tap_diag("%d synchronous threads + 1 asynchronous (queue depth %d), %.0f s", nsync, QD,
		 seconds);

#ifdef __GLIBC__
	/*
	 * A fixed mmap threshold: by default glibc raises it when a big buffer is freed, so the
	 * request buffers of the second phase would come from an arena instead and stay there
	 * as a few MiB of RSS, which is not what this test looks for.
	 */
	mallopt(M_MMAP_THRESHOLD, 128 << 10);
#endif
	/* Every page of the shadow resident now, so that RSS does not grow as it is written. */
	shadow = g_malloc(DISK);
	memset(shadow, 0, DISK);
	make_chain(&seed);
	base_sum = file_sum(base_path);
	mid_sum = file_sum(mid_path);
	is_int(verify_all(), 0, "the top image reads as its two backing files with content");

	loop = tblk_loop_new(NULL);
	if (tblk_blk_open(&blk, top_path, NULL, TBLK_OPEN_RDWR, loop, &err) < 0)
		tap_bail(err->message);
	for (int i = 0; i <= nsync; i++)
		w[i] = (struct worker){ .seed = seed + 7919 * (uint64_t)(i + 1), .loop = loop };

	/* Warm-up: fills the caches, the malloc arenas of every thread, the image itself. */
	run_phase(w, nsync, seconds * 0.3);
	sum_stats(w, nsync + 1, &warm);
	report("warm-up", &warm, seconds * 0.3);
	rss0 = rss_bytes();
	heap0 = heap_bytes();

	run_phase(w, nsync, seconds * 0.7);
	sum_stats(w, nsync + 1, &load);
	report("load", &load, seconds * 0.7);
	rss1 = rss_bytes();
	heap1 = heap_bytes();

	is_int(warm.errors + load.errors, 0, "no request failed");
	is_int(warm.mismatches + load.mismatches, 0, "every read returned what the shadow holds");
	ok(load.ops[OP_WRITE] && load.ops[OP_READ] && load.ops[OP_ZERO] && load.ops[OP_DISCARD] &&
	   load.ops[OP_FLUSH], "every kind of request ran");

	/*
	 * A leak of one small allocation per request (a request, an iovec copy: 64 bytes or
	 * more) grows the heap by n * 64 or more: allow a quarter of that plus a fixed slack of
	 * 256 KiB (a leak of 64 bytes per request, tried, fails this from about 6000 requests),
	 * and RSS n * 64 plus 2 MiB (pages of pool workers started in between, their stacks).
	 */
	n = total_ops(&load);
	tap_diag("after warm-up: RSS %" PRIu64 " KiB, heap %" PRIu64 " KiB; after %" PRIu64
		 " more requests: RSS %" PRIu64 " KiB, heap %" PRIu64 " KiB", rss0 >> 10,
		 heap0 >> 10, n, rss1 >> 10, heap1 >> 10);
	if (SANITIZED || !heap0) {
		tap_skip(2, "memory is not flat under sanitizers (ASan's leak check covers leaks)");
	} else {
		ok(heap1 < heap0 + n * 16 + (256u << 10),
		   "heap in use flat: grew %" PRId64 " bytes over %" PRIu64 " requests",
		   (int64_t)(heap1 - heap0), n);
		ok(rss1 < rss0 + n * 64 + (2u << 20),
		   "RSS flat: grew %" PRId64 " KiB over %" PRIu64 " requests",
		   ((int64_t)rss1 - (int64_t)rss0) / 1024, n);
	}

	tblk_blk_close(blk);
	tblk_loop_free(loop);
	is_int(verify_all(), 0, "after a reopen the whole disk reads as the shadow");
	is_int(check_image(top_path), 0, "qemu-img check finds the image clean");
	base_sum2 = file_sum(base_path);
	mid_sum2 = file_sum(mid_path);
	ok(!strcmp(base_sum, base_sum2) && !strcmp(mid_sum, mid_sum2),
	   "the backing files are unchanged");

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		tap_diag("cannot remove %s", dir);
	g_free(shadow);
	return tap_done();
}
