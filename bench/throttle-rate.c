/* SPDX-License-Identifier: MIT */
/*
 * throttle-rate.c - measures the rates I/O limits let through: N backends opened from one
 * option string (with "%d" replaced by the backend's index), each kept busy at a queue depth
 * of asynchronous requests on one loop, for a warm-up (excluded: the initial burst) and then
 * a measured window. Prints one line per backend and a total: ops/s and bytes/s.
 * Built and run by bench/throttle.py; not part of the build.
 *
 * usage: throttle-rate OPTS NR_BACKENDS read|write|mixed SIZE DEPTH WARMUP_S MEASURE_S
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <tblk/tblk.h>

struct slot {
	struct bk *bk;
	struct iovec iov;
	bool write;
};

struct bk {
	struct tblk_blk *blk;
	uint64_t size;
	unsigned int req_size;
	int mode;		/* 0 read, 1 write, 2 mixed (alternating) */
	unsigned long n;	/* submitted */
	unsigned long done;	/* completed */
	unsigned long done_bytes;
	unsigned long done_dir[2];
	unsigned long base_done, base_bytes, base_dir[2];
	int errors;
	bool stop;
	int inflight;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void submit(struct slot *s);

static void cb(void *opaque, int ret)
{
	struct slot *s = opaque;
	struct bk *bk = s->bk;

	bk->inflight--;
	if (ret < 0)
		bk->errors++;
	bk->done++;
	bk->done_bytes += bk->req_size;
	bk->done_dir[s->write]++;
	if (!bk->stop)
		submit(s);
}

static void submit(struct slot *s)
{
	struct bk *bk = s->bk;
	uint64_t off = (bk->n * 7919 % (bk->size / bk->req_size)) * bk->req_size;
	bk->n++;
	bk->inflight++;
	if (s->write)
		tblk_blk_pwritev(bk->blk, off, &s->iov, 1, 0, cb, s);
	else
		tblk_blk_preadv(bk->blk, off, &s->iov, 1, 0, cb, s);
}

int main(int argc, char **argv)
{
	struct tblk_loop *loop;
	struct bk *bks;
	int nr, depth, mode;
	unsigned int size;
	double warm, measure;
	uint64_t t0, t1, end;
	double total_ops = 0, total_bytes = 0;

	if (argc != 8) {
		fprintf(stderr, "usage: %s OPTS NR read|write|mixed SIZE DEPTH WARMUP MEASURE\n",
			argv[0]);
		return 2;
	}
	nr = atoi(argv[2]);
	mode = !strcmp(argv[3], "read") ? 0 : !strcmp(argv[3], "write") ? 1 : 2;
	size = (unsigned int)atoi(argv[4]);
	depth = atoi(argv[5]);
	warm = atof(argv[6]);
	measure = atof(argv[7]);
	loop = tblk_loop_new(NULL);
	bks = calloc((size_t)nr, sizeof(*bks));
	for (int i = 0; i < nr; i++) {
		GHashTable *opts = tblk_opts_new();
		GError *err = NULL;
		char *str = g_strdup_printf(argv[1], i);

		if (tblk_opts_parse(opts, str, NULL, &err) < 0 ||
		    tblk_blk_open(&bks[i].blk, NULL, opts, TBLK_OPEN_RDWR, loop, &err) < 0) {
			fprintf(stderr, "%s: %s\n", str, err->message);
			return 1;
		}
		g_free(str);
		g_hash_table_unref(opts);
		bks[i].size = (uint64_t)tblk_blk_getlength(bks[i].blk);
		bks[i].req_size = size;
		bks[i].mode = mode;
	}
	for (int i = 0; i < nr; i++) {
		for (int d = 0; d < depth; d++) {
			struct slot *s = calloc(1, sizeof(*s));
			void *buf;

			if (posix_memalign(&buf, 4096, size))
				return 1;
			memset(buf, 0x5a, size);
			s->bk = &bks[i];
			s->iov = (struct iovec){ buf, size };
			/* Mixed: half the queue reads, half writes, each at its own limit. */
			s->write = mode == 1 || (mode == 2 && (d & 1));
			submit(s);
		}
	}
	t0 = now_ns();
	end = t0 + (uint64_t)(warm * 1e9);
	while (now_ns() < end)
		tblk_loop_iterate(loop, true);
	for (int i = 0; i < nr; i++) {
		bks[i].base_done = bks[i].done;
		bks[i].base_bytes = bks[i].done_bytes;
		bks[i].base_dir[0] = bks[i].done_dir[0];
		bks[i].base_dir[1] = bks[i].done_dir[1];
	}
	t0 = now_ns();
	end = t0 + (uint64_t)(measure * 1e9);
	while (now_ns() < end)
		tblk_loop_iterate(loop, true);
	t1 = now_ns();
	for (int i = 0; i < nr; i++) {
		double secs = (double)(t1 - t0) / 1e9;
		double ops = (double)(bks[i].done - bks[i].base_done) / secs;
		double bytes = (double)(bks[i].done_bytes - bks[i].base_bytes) / secs;

		printf("backend %d ops/s %.1f bytes/s %.0f read_ops/s %.1f write_ops/s %.1f "
		       "errors %d\n", i, ops, bytes,
		       (double)(bks[i].done_dir[0] - bks[i].base_dir[0]) / secs,
		       (double)(bks[i].done_dir[1] - bks[i].base_dir[1]) / secs, bks[i].errors);
		total_ops += ops;
		total_bytes += bytes;
		bks[i].stop = true;
	}
	printf("total ops/s %.1f bytes/s %.0f\n", total_ops, total_bytes);
	for (int i = 0; i < nr; i++) {
		while (bks[i].inflight)
			tblk_loop_iterate(loop, true);
		tblk_blk_close(bks[i].blk);
	}
	tblk_loop_free(loop);
	return 0;
}
