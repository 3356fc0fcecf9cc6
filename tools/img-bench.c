/* SPDX-License-Identifier: MIT */
/*
 * img-bench.c - "tblk-img bench": qemu-img bench's options, messages and request pattern
 * (COUNT requests of SIZE bytes, DEPTH in flight, the offset advancing by STEP modulo the
 * image size, an optional flush every N requests with or without draining first).
 *
 * The I/O loop is what benchmarks measure: requests are submitted with the asynchronous API
 * from their completion callbacks on the main thread's loop; all requests share one
 * buffer and one iovec, and nothing is allocated or printed per request.
 *
 * Threading: the main thread, which runs the backend's loop.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "tools/img-int.h"

struct bench {
	struct tblk_blk *blk;
	struct iovec iov;		/* the one buffer every request uses */
	uint64_t image_size;
	uint64_t offset;		/* of the next request */
	unsigned int step;
	int depth;
	int remaining;			/* requests not yet completed */
	int in_flight;
	int flush_interval;		/* 0: never */
	bool write;
	bool drain_on_flush;
	bool in_flush;			/* a draining flush is running: submit nothing */
	int failed;			/* first error, stops submitting */
};

struct bench_args {
	struct img_open_opts open;
	int count, depth, flush_interval, pattern;
	int64_t offset, bufsize, step;
	bool write, no_drain;
};

static void bench_cb(void *opaque, int ret);

static void bench_undrained_flush_cb(void *opaque, int ret)
{
	struct bench *b = opaque;

	if (ret < 0 && !b->failed)
		b->failed = ret;
}

/* Submits requests until DEPTH are in flight or none is left to start. */
static void bench_fill(struct bench *b)
{
	while (b->remaining > b->in_flight && b->in_flight < b->depth && !b->failed) {
		uint64_t offset = b->offset;

		b->in_flight++;
		b->offset += b->step;
		if (b->image_size)
			b->offset %= b->image_size;
		if (b->write)
			tblk_blk_pwritev(b->blk, offset, &b->iov, 1, 0, bench_cb, b);
		else
			tblk_blk_preadv(b->blk, offset, &b->iov, 1, 0, bench_cb, b);
	}
}

/*
 * A request (or a draining flush) completed. When the number of requests still to start
 * reaches a multiple of the flush interval, flush: after the queue drained (no new request
 * until the flush completes), or at once alongside the requests in flight with --no-drain.
 */
static void bench_cb(void *opaque, int ret)
{
	struct bench *b = opaque;
	int to_start;

	if (ret < 0) {
		if (!b->failed)
			b->failed = ret;
		if (!b->in_flush)
			b->in_flight--;
		b->in_flush = false;
		return;
	}
	if (b->in_flush) {
		b->in_flush = false;
	} else {
		to_start = b->remaining - b->in_flight;
		b->remaining--;
		b->in_flight--;
		if (b->flush_interval && to_start % b->flush_interval == 0) {
			if (b->drain_on_flush && b->in_flight == 0) {
				b->in_flush = true;
				tblk_blk_aio_flush(b->blk, bench_cb, b);
			} else if (!b->drain_on_flush) {
				tblk_blk_aio_flush(b->blk, bench_undrained_flush_cb, b);
			}
			if (b->drain_on_flush)
				return;
		}
	}
	bench_fill(b);
}

/* qemu_strtoul-style integer option in [0, max]; false if invalid. */
static bool parse_int_opt(const char *arg, unsigned long max, int *out)
{
	unsigned long v;

	if (tool_strtoul(arg, &v) < 0 || v > max)
		return false;
	*out = (int)v;
	return true;
}

static void bench_fail(const char *what)
{
	tool_error("Invalid %s specified", what);
	exit(1);
}

enum { OPT_FLUSH_INTERVAL = 256, OPT_NO_DRAIN, OPT_PATTERN, OPT_IMAGE_OPTS };

static int64_t size_opt(const char *name, const char *arg, int64_t max)
{
	int64_t v = img_cvtnum_full(name, arg, 0, max);

	if (v < 0)
		exit(1);
	return v;
}

static void int_opt(const char *arg, unsigned long max, int *out, const char *what)
{
	if (!parse_int_opt(arg, max, out))
		bench_fail(what);
}

static void mode_opt(int c, const char *arg, unsigned int *flags)
{
	if (c == 'i' && tblk_parse_aio_mode(arg, flags, NULL) < 0) {
		tool_error("Invalid aio option: %s", arg);
		exit(1);
	}
	if (c == 't' && tblk_parse_cache_mode(arg, flags, NULL) < 0) {
		tool_error("Invalid cache mode");
		exit(1);
	}
}

static void bench_opt(int c, const char *arg, struct bench_args *a)
{
	switch (c) {
	case 'c': int_opt(arg, INT32_MAX, &a->count, "request count"); break;
	case 'd': int_opt(arg, INT32_MAX, &a->depth, "queue depth"); break;
	case OPT_FLUSH_INTERVAL:
		int_opt(arg, INT32_MAX, &a->flush_interval, "flush interval");
		break;
	case OPT_PATTERN: int_opt(arg, 0xff, &a->pattern, "pattern byte"); break;
	case 'o': a->offset = size_opt("offset", arg, INT64_MAX); break;
	case 's': a->bufsize = size_opt("buffer size", arg, INT32_MAX); break;
	case 'S': a->step = size_opt("step_size", arg, INT32_MAX); break;
	case 'f': a->open.fmt = arg; break;
	case 'n': a->open.flags |= TBLK_OPEN_AIO_NATIVE; break;
	case 'i': case 't': mode_opt(c, arg, &a->open.flags); break;
	case 'q': break;	/* qemu-img bench prints its lines even with -q */
	case 'w': a->write = true; a->open.flags |= TBLK_OPEN_RDWR; break;
	case 'U': a->open.flags |= TBLK_OPEN_SHARE_RW; break;
	case OPT_NO_DRAIN: a->no_drain = true; break;
	case OPT_IMAGE_OPTS: a->open.image_opts = true; break;
	}
}

static void bench_parse(int argc, char **argv, struct bench_args *a)
{
	static const struct option long_opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "flush-interval", required_argument, NULL, OPT_FLUSH_INTERVAL },
		{ "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
		{ "pattern", required_argument, NULL, OPT_PATTERN },
		{ "no-drain", no_argument, NULL, OPT_NO_DRAIN },
		{ "force-share", no_argument, NULL, 'U' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU", long_opts, NULL)) != -1) {
		if (c == 'h')
			img_help();
		if (c == '?' || c == ':')
			img_bad_option(c, argv);
		bench_opt(c, optarg, a);
	}
	if (optind != argc - 1)
		img_error_exit("Expecting one image file name");
	a->open.filename = argv[optind];
	if (a->flush_interval && !a->write) {
		tool_error("--flush-interval is only available in write tests");
		exit(1);
	}
	if (a->write && a->flush_interval && a->flush_interval < a->depth) {
		tool_error("Flush interval can't be smaller than depth");
		exit(1);
	}
	/* qemu-img waits forever here; refusing is kinder. */
	if (a->depth == 0 && a->count > 0)
		bench_fail("queue depth");
}

/* Runs the requests; 0 or the first error. Prints the lines qemu-img bench prints. */
static int bench_run(struct bench *b, struct tblk_loop *loop, const struct bench_args *a)
{
	uint64_t t0, t1;

	printf("Sending %d %s requests, %d bytes each, %d in parallel (starting at offset %lld, "
	       "step size %u)\n", a->count, a->write ? "write" : "read", (int)a->bufsize,
	       a->depth, (long long)a->offset, b->step);
	if (a->flush_interval)
		printf("Sending flush every %d requests\n", a->flush_interval);
	t0 = tool_now_ns();
	bench_fill(b);
	while (b->remaining > 0 && !b->failed)
		tblk_loop_iterate(loop, true);
	t1 = tool_now_ns();
	if (b->failed)
		return b->failed;
	printf("Run completed in %3.3f seconds.\n", (double)(t1 - t0) / 1e9);
	return 0;
}

int img_bench(int argc, char **argv)
{
	struct bench_args a = {
		.count = 75000, .depth = 64, .bufsize = 4096,
		.open.flags = 0,	/* cache=writeback, read-only unless -w */
	};
	struct bench b = { 0 };
	struct tblk_loop *loop;
	GError *err = NULL;
	int64_t len;
	int ret = 1;

	bench_parse(argc, argv, &a);
	loop = tblk_loop_new(&err);
	if (!loop) {
		tool_error_gerror(err, NULL);
		return 1;
	}
	if (img_open(&b.blk, &a.open, loop) < 0)
		goto out_loop;
	len = tblk_blk_getlength(b.blk);
	if (len < 0) {
		tool_error("Could not get the image size: %s", strerror((int)-len));
		goto out_close;
	}
	b.image_size = (uint64_t)len;
	b.offset = (uint64_t)a.offset;
	b.step = (unsigned int)(a.step ? a.step : a.bufsize);	/* -S 0 means -s, too */
	b.depth = a.depth;
	b.remaining = a.count;
	b.write = a.write;
	b.flush_interval = a.flush_interval;
	b.drain_on_flush = !a.no_drain;
	b.iov.iov_len = (size_t)a.bufsize;
	b.iov.iov_base = tool_buf_new((size_t)a.bufsize, a.write ? a.pattern : 0);
	if (!b.iov.iov_base) {
		tool_error("Could not allocate a buffer of %lld bytes", (long long)a.bufsize);
		goto out_close;
	}
	ret = bench_run(&b, loop, &a);
	if (ret < 0) {
		tool_error("Failed request: %s", strerror(-ret));
		ret = 1;
	}
out_close:
	tblk_blk_close(b.blk);	/* drains undrained flushes and, after a failure, the rest */
	tool_buf_free(b.iov.iov_base);
out_loop:
	tblk_loop_free(loop);
	return ret;
}
