/* SPDX-License-Identifier: MIT */
/*
 * t/aio.c - tests of the kernel AIO engines (protocols/aio*.c): for Linux AIO (reaping from
 * the user-mapped ring, then with the io_getevents() fallback) and io_uring, a seeded
 * random mix of reads, writes and fdsyncs on a temporary file (O_DIRECT where supported),
 * with more ops in flight than the kernel depth, checked against a shadow copy; then a
 * short read past EOF, and ops the kernel refuses in the middle of a batch.
 *
 * Threading: single-threaded; the test is the loop thread of every loop it creates.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "protocols/aio-int.h"
#include "t/tap.h"

#define BLK		4096u
#define FILE_BLOCKS	4096u		/* 16 MiB */
#define MAX_BLOCKS	8u		/* per op */
#define MAX_SEGS	4
#define NR_OPS		3000u		/* per engine run */
#define NR_SLOTS	200u		/* ops in flight at most: more than TBLK_AIO_DEPTH */
#define TESTS_PER_RUN	21

struct slot {
	struct tblk_aio_op op;
	struct run *run;
	uint64_t off;			/* bytes */
	size_t len;			/* bytes; 0 for fdsync */
	struct iovec iov[MAX_SEGS];
	uint8_t *buf;			/* MAX_BLOCKS * BLK, 4 KiB aligned */
	long ret;			/* completion result */
	int nr_completions;		/* must end at 1 per submission */
	struct slot *next_free;
};

struct run {
	struct tblk_loop *loop;
	struct tblk_aio_engine *eng;
	int fd;
	uint64_t rng;
	uint8_t *shadow;		/* what the file must contain */
	uint8_t *writing;		/* per block: a write is in flight */
	uint16_t *reading;		/* per block: reads in flight */
	struct slot slots[NR_SLOTS];
	struct slot *free_slots;
	unsigned int nr_issued, nr_completed;
	unsigned int nr_bad_ret, nr_mismatch, nr_wrong_thread, nr_multi;
	unsigned int nr_reads, nr_writes, nr_syncs, nr_sync_bad;
	bool mixing;			/* in the random mix: check and refill on completion */
};

static bool range_free(struct run *r, uint64_t blk, unsigned int n, bool write)
{
	unsigned int i;

	for (i = 0; i < n; i++)
		if (r->writing[blk + i] || (write && r->reading[blk + i]))
			return false;
	return true;
}

static void mark_range(struct run *r, uint64_t blk, unsigned int n, bool write, int delta)
{
	unsigned int i;

	for (i = 0; i < n; i++) {
		if (write)
			r->writing[blk + i] += delta;
		else
			r->reading[blk + i] += delta;
	}
}

/* Splits the op's buffer into 1..MAX_SEGS block-aligned iovec elements. */
static void split_iov(struct run *r, struct slot *s, unsigned int nblocks)
{
	unsigned int nseg = 1 + tap_rand(&r->rng) % TBLK_MIN(nblocks, (unsigned int)MAX_SEGS);
	unsigned int sizes[MAX_SEGS], i, left = nblocks - nseg;
	size_t pos = 0;

	for (i = 0; i < nseg; i++)
		sizes[i] = 1;
	while (left--)
		sizes[tap_rand(&r->rng) % nseg]++;
	for (i = 0; i < nseg; i++) {
		s->iov[i].iov_base = s->buf + pos;
		s->iov[i].iov_len = (size_t)sizes[i] * BLK;
		pos += s->iov[i].iov_len;
	}
	s->op.iov = s->iov;
	s->op.iovcnt = nseg;
}

static void op_done(struct tblk_aio_op *op, long ret);

/* Picks a random op whose range conflicts with nothing in flight; false if none found. */
static bool pick_op(struct run *r, struct slot *s)
{
	uint64_t x = tap_rand(&r->rng);
	unsigned int nblocks = 1 + (x >> 8) % MAX_BLOCKS, tries;
	bool write = x % 100 < 45;
	uint64_t blk = 0;

	if (x % 100 >= 97) {
		s->op.type = TBLK_AIO_FDSYNC;
		s->len = 0;
		s->op.iov = NULL;
		s->op.iovcnt = 0;
		return true;
	}
	for (tries = 0; tries < 8; tries++) {
		blk = tap_rand(&r->rng) % (FILE_BLOCKS - nblocks + 1);
		if (range_free(r, blk, nblocks, write))
			break;
	}
	if (tries == 8)
		return false;
	mark_range(r, blk, nblocks, write, 1);
	s->op.type = write ? TBLK_AIO_WRITE : TBLK_AIO_READ;
	s->off = blk * BLK;
	s->len = (size_t)nblocks * BLK;
	if (write) {
		size_t i;

		for (i = 0; i < s->len; i += 8) {
			uint64_t v = tap_rand(&r->rng);

			memcpy(s->buf + i, &v, 8);
		}
	} else {
		memset(s->buf, 0xa5, s->len);
	}
	split_iov(r, s, nblocks);
	return true;
}

/* Queues new ops until NR_SLOTS are in flight or NR_OPS have been issued. */
static void refill(struct run *r)
{
	while (r->free_slots && r->nr_issued < NR_OPS) {
		struct slot *s = r->free_slots;

		if (!pick_op(r, s))
			return;
		r->free_slots = s->next_free;
		s->op.fd = r->fd;
		s->op.offset = s->off;
		s->op.complete = op_done;
		s->nr_completions = 0;
		r->nr_issued++;
		tblk__aio_submit(r->eng, &s->op);
	}
}

static void check_done(struct run *r, struct slot *s, long ret)
{
	uint64_t blk = s->off / BLK;
	unsigned int nblocks = s->len / BLK;

	switch (s->op.type) {
	case TBLK_AIO_FDSYNC:
		r->nr_syncs++;
		r->nr_sync_bad += ret != 0;
		return;
	case TBLK_AIO_READ:
		r->nr_reads++;
		mark_range(r, blk, nblocks, false, -1);
		if (ret == (long)s->len && memcmp(s->buf, r->shadow + s->off, s->len))
			r->nr_mismatch++;
		break;
	default:
		r->nr_writes++;
		mark_range(r, blk, nblocks, true, -1);
		if (ret == (long)s->len)
			memcpy(r->shadow + s->off, s->buf, s->len);
		break;
	}
	if (ret != (long)s->len && r->nr_bad_ret++ == 0)
		tap_diag("op type %d off %" PRIu64 " len %zu: got %ld", s->op.type, s->off,
			 s->len, ret);
}

static void op_done(struct tblk_aio_op *op, long ret)
{
	struct slot *s = tblk_container_of(op, struct slot, op);
	struct run *r = s->run;

	if (++s->nr_completions != 1) {
		r->nr_multi++;
		return;
	}
	if (!tblk_loop_in_thread(r->loop))
		r->nr_wrong_thread++;
	s->ret = ret;
	r->nr_completed++;
	if (!r->mixing)
		return;
	check_done(r, s, ret);
	s->next_free = r->free_slots;
	r->free_slots = s;
	/* The file protocol submits from completions: do it here half the time. */
	if (tap_rand(&r->rng) & 1)
		refill(r);
}

static int open_tmp(bool *direct)
{
	const char *dir = getenv("TMPDIR");
	char *path = g_strdup_printf("%s/tblk-aio.XXXXXX", dir && *dir ? dir : "/tmp");
	int fd = mkstemp(path), dfd;

	if (fd < 0)
		tap_bail("mkstemp failed");
	dfd = open(path, O_RDWR | O_DIRECT | O_CLOEXEC);
	unlink(path);
	g_free(path);
	*direct = dfd >= 0;
	if (dfd >= 0) {
		close(fd);
		fd = dfd;
	}
	if (ftruncate(fd, (off_t)FILE_BLOCKS * BLK) < 0)
		tap_bail("ftruncate failed");
	return fd;
}

static void run_until_idle(struct run *r)
{
	unsigned long spins = 0;

	while (r->nr_completed < r->nr_issued || r->nr_issued < NR_OPS) {
		refill(r);
		tblk_loop_iterate(r->loop, true);
		if (++spins > 10000000ul)
			tap_bail("the engine stopped completing ops");
	}
}

/* Sets up @s as a one-element op on @fd at @off for @len bytes of its buffer. */
static void one_op(struct slot *s, int fd, enum tblk_aio_op_type type, uint64_t off, size_t len)
{
	s->op.fd = fd;
	s->op.type = type;
	s->op.offset = off;
	s->off = off;
	s->len = len;
	s->iov[0].iov_base = s->buf;
	s->iov[0].iov_len = len;
	s->op.iov = s->iov;
	s->op.iovcnt = 1;
	s->op.complete = op_done;
	s->nr_completions = 0;
	s->ret = 1;
}

static void test_refusals(struct run *r)
{
	struct slot *s = r->slots;
	unsigned int i;

	/* A good read, one on a closed fd, a good one, a bad type: all in one batch. */
	one_op(&s[0], r->fd, TBLK_AIO_READ, 0, BLK);
	one_op(&s[1], 1000000, TBLK_AIO_READ, 0, BLK);
	one_op(&s[2], r->fd, TBLK_AIO_READ, BLK, BLK);
	one_op(&s[3], r->fd, (enum tblk_aio_op_type)77, 0, BLK);
	r->nr_issued = r->nr_completed = 0;
	for (i = 0; i < 4; i++) {
		tblk__aio_submit(r->eng, &s[i].op);
		r->nr_issued++;
	}
	while (r->nr_completed < r->nr_issued)
		tblk_loop_iterate(r->loop, true);
	is_int(s[0].ret, BLK, "good read before a refused op completes");
	is_int(s[1].ret, -EBADF, "read on a bad fd completes with -EBADF");
	is_int(s[2].ret, BLK, "good read after a refused op completes");
	is_int(s[3].ret, -EINVAL, "unknown op type completes with -EINVAL");
}

static void test_eof(struct run *r)
{
	struct slot *s = r->slots;
	uint64_t size = (uint64_t)FILE_BLOCKS * BLK;

	one_op(&s[0], r->fd, TBLK_AIO_READ, size - BLK, 2 * BLK);
	one_op(&s[1], r->fd, TBLK_AIO_READ, size, BLK);
	memset(s[0].buf, 0xa5, 2 * BLK);
	tblk__aio_submit(r->eng, &s[0].op);
	tblk__aio_submit(r->eng, &s[1].op);
	tblk__aio_flush_batch(r->eng);
	r->nr_issued = 2;
	r->nr_completed = 0;
	while (r->nr_completed < r->nr_issued)
		tblk_loop_iterate(r->loop, true);
	is_int(s[0].ret, BLK, "read across EOF is short");
	ok(!memcmp(s[0].buf, r->shadow + size - BLK, BLK), "short read returns the last block");
	is_int(s[1].ret, 0, "read at EOF returns 0");
}

/* More ops than the depth in one batch: the kernel gets the depth, the rest waits. */
static void test_backlog(struct run *r)
{
	unsigned int i, nr_bad = 0;

	r->nr_issued = r->nr_completed = 0;
	for (i = 0; i < NR_SLOTS; i++) {
		one_op(&r->slots[i], r->fd, TBLK_AIO_READ, (uint64_t)i * BLK, BLK);
		tblk__aio_submit(r->eng, &r->slots[i].op);
		r->nr_issued++;
	}
	tblk__aio_flush_batch(r->eng);
	is_int(r->eng->in_flight, TBLK_AIO_DEPTH, "a flush hands the kernel the depth");
	is_int(tblk__aio_in_flight(r->eng), NR_SLOTS, "the rest counts as in flight");
	while (r->nr_completed < r->nr_issued)
		tblk_loop_iterate(r->loop, true);
	for (i = 0; i < NR_SLOTS; i++) {
		struct slot *s = &r->slots[i];

		if (s->ret != BLK || s->nr_completions != 1 ||
		    memcmp(s->buf, r->shadow + s->off, BLK))
			nr_bad++;
	}
	is_int(nr_bad, 0, "queued ops were submitted as slots freed and read the right data");
}

static void test_mix(struct run *r)
{
	uint8_t *file = NULL;
	unsigned int i;

	r->free_slots = NULL;
	for (i = 0; i < NR_SLOTS; i++) {
		r->slots[i].next_free = r->free_slots;
		r->free_slots = &r->slots[i];
	}
	r->mixing = true;
	run_until_idle(r);
	r->mixing = false;
	is_int(r->nr_completed, NR_OPS, "every op completed (%u reads, %u writes, %u fdsyncs)",
	       r->nr_reads, r->nr_writes, r->nr_syncs);
	is_int(r->nr_multi, 0, "no op completed twice");
	is_int(r->nr_wrong_thread, 0, "completions run on the loop thread");
	is_int(r->nr_bad_ret, 0, "reads and writes transferred their full length");
	is_int(r->nr_sync_bad, 0, "fdsyncs returned 0");
	is_int(r->nr_mismatch, 0, "reads returned what was written");
	ok(r->eng->max_in_flight <= TBLK_AIO_DEPTH,
	   "the kernel never held more than the depth (%u)", r->eng->max_in_flight);
	is_int(tblk__aio_in_flight(r->eng), 0, "nothing left in flight");

	if (posix_memalign((void **)&file, BLK, (size_t)FILE_BLOCKS * BLK))
		tap_bail("out of memory");
	ok(pread(r->fd, file, (size_t)FILE_BLOCKS * BLK, 0) == (ssize_t)FILE_BLOCKS * BLK &&
	   !memcmp(file, r->shadow, (size_t)FILE_BLOCKS * BLK), "the file matches the shadow");
	free(file);
}

static void run_engine(enum tblk_aio_engine_kind kind, bool no_ring, uint64_t seed)
{
	struct run *r = g_new0(struct run, 1);
	GError *err = NULL;
	bool direct;
	unsigned int i;

	tblk__aio_linux_no_ring = no_ring;
	r->rng = seed;
	r->fd = open_tmp(&direct);
	r->loop = tblk_loop_new(&err);
	if (!r->loop)
		tap_bail("tblk_loop_new failed");
	r->shadow = g_malloc0((size_t)FILE_BLOCKS * BLK);
	r->writing = g_malloc0(FILE_BLOCKS);
	r->reading = g_malloc0(FILE_BLOCKS * sizeof(*r->reading));
	for (i = 0; i < NR_SLOTS; i++) {
		r->slots[i].run = r;
		if (posix_memalign((void **)&r->slots[i].buf, BLK, (size_t)MAX_BLOCKS * BLK))
			tap_bail("out of memory");
	}
	tap_diag("engine %s%s, O_DIRECT %s", kind == TBLK_AIO_LINUX ? "linux-aio" : "io_uring",
		 no_ring ? " (io_getevents reaping)" : "", direct ? "on" : "off");

	r->eng = tblk__aio_get(r->loop, kind, &err);
	ok(r->eng != NULL, "engine created%s%s", err ? ": " : "", err ? err->message : "");
	if (!r->eng) {
		tap_skip(TESTS_PER_RUN - 1, "no engine");
	} else {
		ok(tblk__aio_get(r->loop, kind, NULL) == r->eng, "one engine per loop and kind");
		test_mix(r);
		test_backlog(r);
		test_eof(r);
		test_refusals(r);
	}
	g_clear_error(&err);
	tblk_loop_free(r->loop);
	tblk__aio_linux_no_ring = false;
	close(r->fd);
	for (i = 0; i < NR_SLOTS; i++)
		free(r->slots[i].buf);
	g_free(r->shadow);
	g_free(r->writing);
	g_free(r->reading);
	g_free(r);
}

int main(void)
{
	uint64_t seed;

	alarm(60);	/* a hang fails the test instead of blocking prove */
	tap_plan(2 + 3 * TESTS_PER_RUN);
	seed = tap_seed(0x5eed1234);
	ok(tblk__aio_available(TBLK_AIO_LINUX) == tblk__aio_available(TBLK_AIO_LINUX),
	   "availability is stable");
	ok(!tblk__aio_available((enum tblk_aio_engine_kind)42), "unknown kinds are unavailable");

	if (tblk__aio_available(TBLK_AIO_LINUX)) {
		run_engine(TBLK_AIO_LINUX, false, seed);
		run_engine(TBLK_AIO_LINUX, true, seed + 1);
	} else {
		tap_skip(2 * TESTS_PER_RUN, "Linux AIO not available");
	}
	if (tblk__aio_available(TBLK_AIO_URING))
		run_engine(TBLK_AIO_URING, false, seed + 2);
	else
		tap_skip(TESTS_PER_RUN, "io_uring not available");
	return tap_done();
}
