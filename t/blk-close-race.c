/* SPDX-License-Identifier: MIT */
/*
 * blk-close-race.c - tblk_blk_close() on the main thread while the backend's iothread
 * completes its requests. Requests are submitted on the iothread's loop, one per turn of
 * the loop; the main thread then closes the backend either right after the submission (the
 * close's drain waits while the iothread completes them), right after the last callback
 * signalled it (the close races the completion path's tail: the request cache, the
 * in-flight count, the drain wake-up), or right after a drained section of its own (a
 * resize) during which some of the requests were parked: they resume on the iothread.
 * Backends: null-co on the pool (latency-ns), on its fast path and throttled (some
 * requests wait for their budget on the iothread's loop), raw files on the pool
 * (aio=threads) and on Linux AIO and io_uring (O_DIRECT).
 * Every callback must have run, once, with success and on the iothread, when the close
 * returns; a close must not free what the iothread still touches (run under
 * ThreadSanitizer and ASan by `make check-tsan` / `make check-asan`).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <tblk/tblk.h>
#include "threadpool/threadpool.h"
#include "t/tap.h"

#define DISK_SIZE	(1u << 20)
#define REQ_LEN		4096u
#define MAX_REQS	8
#define ROUNDS		60

/* When the main thread closes. */
enum close_when {
	AFTER_SUBMIT,		/* the iothread submitted everything */
	AFTER_CALLBACKS,	/* every callback signalled */
	AFTER_DRAINED,		/* a resize (drained section) ran while the iothread submitted */
	NR_WHEN,
};

static char path[256];

struct round {
	struct tblk_blk *blk;
	struct tblk_loop *loop;		/* [const] the iothread's */
	unsigned int nr_reqs;		/* [const] */
	unsigned int nr_submitted;	/* [iothread] */
	struct tblk_mutex lock;
	struct tblk_cond cv;
	bool submitted;			/* [lock] the iothread is done submitting */
	unsigned int nr_done;		/* [lock] callbacks run */
	int ret[MAX_REQS];		/* [iothread] each callback's result, 1 before */
	atomic_uint calls[MAX_REQS];	/* callbacks run per request */
	atomic_uint off_loop;		/* callbacks run on another thread than the iothread */
	struct iovec iov[MAX_REQS];
	uint8_t *buf;			/* MAX_REQS * REQ_LEN, aligned for O_DIRECT */
};

struct req_ctx {
	struct round *r;
	unsigned int i;
};

static struct req_ctx ctx[MAX_REQS];

static void req_done(void *opaque, int ret)
{
	struct req_ctx *c = opaque;
	struct round *r = c->r;

	if (!tblk_loop_in_thread(r->loop))
		atomic_fetch_add(&r->off_loop, 1);
	r->ret[c->i] = ret;
	atomic_fetch_add(&r->calls[c->i], 1);
	tblk_mutex_lock(&r->lock);
	r->nr_done++;
	tblk_cond_signal(&r->cv);
	tblk_mutex_unlock(&r->lock);
}

/* On the iothread: one read or write per turn of the loop, in flight together. */
static void submit(void *opaque)
{
	struct round *r = opaque;
	unsigned int i = r->nr_submitted++;
	uint64_t off = (uint64_t)i * REQ_LEN * 3 % DISK_SIZE;

	ctx[i] = (struct req_ctx){ r, i };
	r->iov[i] = (struct iovec){ r->buf + (size_t)i * REQ_LEN, REQ_LEN };
	if (i & 1)
		tblk_blk_pwritev(r->blk, off, &r->iov[i], 1, 0, req_done, &ctx[i]);
	else
		tblk_blk_preadv(r->blk, off, &r->iov[i], 1, 0, req_done, &ctx[i]);
	if (r->nr_submitted < r->nr_reqs) {
		tblk_loop_call_soon(r->loop, submit, r);
		return;
	}
	tblk_mutex_lock(&r->lock);
	r->submitted = true;
	tblk_cond_signal(&r->cv);
	tblk_mutex_unlock(&r->lock);
}

/* Waits (main thread) until the iothread submitted, and with @all until every callback ran. */
static void wait_round(struct round *r, bool all)
{
	tblk_mutex_lock(&r->lock);
	while (!r->submitted || (all && r->nr_done < r->nr_reqs))
		tblk_cond_wait(&r->cv, &r->lock);
	tblk_mutex_unlock(&r->lock);
}

/* One round: open, submit on the iothread, close from here as @when says. */
static int run_round(struct round *r, const char *spec, enum close_when when)
{
	GHashTable *opts = tblk_opts_new();
	int ret;

	r->blk = NULL;
	r->nr_submitted = 0;
	r->submitted = false;
	r->nr_done = 0;
	for (int i = 0; i < MAX_REQS; i++) {
		r->ret[i] = 1;
		atomic_store(&r->calls[i], 0);
	}
	tblk_opts_parse(opts, spec, NULL, NULL);
	ret = tblk_blk_open(&r->blk, NULL, opts, TBLK_OPEN_RDWR, r->loop, NULL);
	g_hash_table_unref(opts);
	if (ret < 0)
		return ret;
	tblk_loop_call_soon(r->loop, submit, r);
	/* The resize may fail (null-co cannot): its drained section is what counts. */
	if (when == AFTER_DRAINED)
		tblk_blk_truncate(r->blk, DISK_SIZE, NULL, NULL);
	wait_round(r, when == AFTER_CALLBACKS);
	tblk_blk_close(r->blk);
	return 0;
}

/*
 * ROUNDS rounds of @spec on @loop's iothread, closing from this thread in each way in turn.
 * Counts rounds where a callback was lost, repeated or failed.
 */
static void run_case(const char *name, const char *spec, struct tblk_loop *loop)
{
	int bad_open = 0, bad = 0;
	struct round r = { .loop = loop };

	r.buf = aligned_alloc(4096, MAX_REQS * REQ_LEN);
	memset(r.buf, 0x5a, MAX_REQS * REQ_LEN);
	tblk_mutex_init(&r.lock);
	tblk_cond_init(&r.cv);
	for (int round = 0; round < ROUNDS; round++) {
		unsigned int lost = 0;

		r.nr_reqs = 1 + (unsigned int)round % MAX_REQS;
		if (run_round(&r, spec, (enum close_when)(round % NR_WHEN)) < 0) {
			bad_open++;
			continue;
		}
		/* Every callback ran before the close returned. */
		for (unsigned int i = 0; i < r.nr_reqs; i++)
			lost += atomic_load(&r.calls[i]) != 1 || r.ret[i] != 0;
		bad += lost != 0;
	}
	tblk_cond_destroy(&r.cv);
	tblk_mutex_destroy(&r.lock);
	free(r.buf);
	is_int(bad_open, 0, "%s: every open works", name);
	is_int(bad, 0, "%s: every callback ran once, with success, before the close returned",
	       name);
	is_int((int)atomic_load(&r.off_loop), 0, "%s: every callback ran on the iothread", name);
}

int main(void)
{
	struct tblk_iothread *iot;
	struct tblk_loop *loop;
	char spec[512];
	int fd;

	alarm(120);	/* a hang is a failure, not a stuck CI */
	tap_plan(18);
	snprintf(path, sizeof(path), "%s/tblk-close-race-XXXXXX", getenv("TMPDIR") ?: "/tmp");
	fd = mkstemp(path);
	if (fd < 0 || ftruncate(fd, DISK_SIZE) < 0)
		tap_bail("cannot create the test file");
	close(fd);
	iot = tblk_iothread_new("close-race", NULL);
	if (!iot)
		tap_bail("cannot start the iothread");
	loop = tblk_iothread_get_loop(iot);

	run_case("null-co latency-ns (pool)",
		 "driver=raw,file.driver=null-co,file.size=1M,file.latency-ns=20000", loop);
	run_case("null-co (fast path)", "driver=raw,file.driver=null-co,file.size=1M", loop);
	run_case("null-co throttled", "driver=raw,file.driver=null-co,file.size=1M,"
		 "throttling.iops-total=50", loop);
	snprintf(spec, sizeof(spec), "driver=raw,file.driver=file,file.filename=%s,"
		 "file.aio=threads", path);
	run_case("raw aio=threads", spec, loop);
	snprintf(spec, sizeof(spec), "driver=raw,file.driver=file,file.filename=%s,"
		 "file.aio=native,cache.direct=on", path);
	run_case("raw aio=native O_DIRECT", spec, loop);
	snprintf(spec, sizeof(spec), "driver=raw,file.driver=file,file.filename=%s,"
		 "file.aio=io_uring,cache.direct=on", path);
	run_case("raw aio=io_uring O_DIRECT", spec, loop);

	tblk_iothread_free(iot);
	unlink(path);
	return tap_done();
}
