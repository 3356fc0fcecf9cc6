/* SPDX-License-Identifier: MIT */
/*
 * tracked.c - tracked requests: read-modify-write of unaligned writes from many threads at
 * once (interleaved stripes sharing sectors: a lost update shows as a mismatch), drain of
 * asynchronous requests, requests parked during a drained section, statistics, and iovec
 * helpers.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tracked/tracked.h"
#include "t/tap.h"

void tblk__blk_drained_begin(struct tblk_blk *blk);
void tblk__blk_drained_end(struct tblk_blk *blk);

#define NR_THREADS	4
#define STRIPE		100
#define AREA		(64 << 10)
#define ROUNDS		400

static char path[256];
static uint8_t expect[AREA];

struct writer {
	struct tblk_blk *blk;
	int id;
	uint64_t seed;
	int errors;
};

/* Thread @id owns the stripes s with s % NR_THREADS == id; neighbours share sectors. */
static void *writer_main(void *arg)
{
	struct writer *w = arg;
	uint8_t buf[STRIPE];

	for (int r = 0; r < ROUNDS; r++) {
		uint64_t stripe = (tap_rand(&w->seed) % (AREA / STRIPE / NR_THREADS)) * NR_THREADS +
				  (uint64_t)w->id;
		uint64_t off = stripe * STRIPE;

		memset(buf, (int)(tap_rand(&w->seed) & 0xff), sizeof(buf));
		if (tblk_blk_pwrite(w->blk, off, buf, STRIPE, 0) < 0)
			w->errors++;
		memcpy(expect + off, buf, STRIPE);	/* only this thread touches these bytes */
	}
	return NULL;
}

static struct tblk_blk *open_direct(struct tblk_loop *loop)
{
	GHashTable *opts = tblk_opts_new();
	struct tblk_blk *blk = NULL;
	GError *err = NULL;
	char spec[400];

	snprintf(spec, sizeof(spec), "driver=raw,file.filename=%s", path);
	tblk_opts_parse(opts, spec, NULL, NULL);
	if (tblk_blk_open(&blk, NULL, opts, TBLK_OPEN_RDWR | TBLK_OPEN_NOCACHE, loop, &err) < 0) {
		tap_diag("open: %s", err->message);
		g_error_free(err);
		tap_bail("cannot open the test image with O_DIRECT");
	}
	g_hash_table_destroy(opts);
	return blk;
}

static void test_rmw_concurrent(uint64_t seed)
{
	struct tblk_blk *blk = open_direct(NULL);
	struct writer w[NR_THREADS];
	pthread_t th[NR_THREADS];
	uint8_t *buf = malloc(AREA);
	int errors = 0;

	ok(tblk_blk_request_alignment(blk) >= 512, "O_DIRECT gives a request alignment (%u)",
	   tblk_blk_request_alignment(blk));
	for (int i = 0; i < NR_THREADS; i++) {
		w[i] = (struct writer){ .blk = blk, .id = i, .seed = seed + (uint64_t)i };
		pthread_create(&th[i], NULL, writer_main, &w[i]);
	}
	for (int i = 0; i < NR_THREADS; i++) {
		pthread_join(th[i], NULL);
		errors += w[i].errors;
	}
	is_int(errors, 0, "%d threads x %d unaligned writes succeed", NR_THREADS, ROUNDS);
	is_int(tblk_blk_pread(blk, 0, buf, AREA, 0), 0, "read back");
	ok(!memcmp(buf, expect, AREA), "no update lost to a concurrent read-modify-write");
	tblk_blk_close(blk);
	free(buf);
}

static int cb_count;
static void count_cb(void *opaque, int ret)
{
	if (ret == 0)
		cb_count++;
}

static struct tblk_blk *open_null(struct tblk_loop *loop, const char *extra)
{
	GHashTable *opts = tblk_opts_new();
	struct tblk_blk *blk = NULL;
	char spec[200];

	snprintf(spec, sizeof(spec), "driver=raw,file.driver=null-aio,file.size=1M%s", extra);
	tblk_opts_parse(opts, spec, NULL, NULL);
	if (tblk_blk_open(&blk, NULL, opts, TBLK_OPEN_RDWR, loop, NULL) < 0)
		tap_bail("cannot open null-aio");
	g_hash_table_destroy(opts);
	return blk;
}

static void test_drain_and_park(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	struct tblk_blk *blk = open_null(loop, ",file.latency-ns=2000000");
	static uint8_t buf[4096];
	struct iovec iov = { buf, sizeof(buf) };
	struct tblk_stats st;

	cb_count = 0;
	for (int i = 0; i < 64; i++)
		tblk_blk_preadv(blk, (uint64_t)i * 4096, &iov, 1, 0, count_cb, NULL);
	is_int(cb_count, 0, "no callback runs before the loop does");
	tblk_blk_drain(blk);
	is_int(cb_count, 64, "drain returns after all 64 callbacks");

	tblk__blk_drained_begin(blk);
	tblk_blk_preadv(blk, 0, &iov, 1, 0, count_cb, NULL);
	tblk_blk_pwritev(blk, 4096, &iov, 1, 0, count_cb, NULL);
	for (int i = 0; i < 5; i++)
		tblk_loop_iterate(loop, false);
	is_int(cb_count, 64, "requests submitted in a drained section are parked");
	tblk__blk_drained_end(blk);
	tblk_blk_drain(blk);
	while (cb_count < 66 && tblk_loop_iterate(loop, true))
		;
	is_int(cb_count, 66, "parked requests complete after the drained section");
	tblk_blk_get_stats(blk, &st);
	is_int(st.ops[TBLK_STAT_READ], 65, "statistics count 65 reads");
	is_int(st.ops[TBLK_STAT_WRITE], 1, "statistics count 1 write");
	is_int(st.bytes[TBLK_STAT_READ], 65 * 4096, "statistics count read bytes");
	ok(st.max_ns[TBLK_STAT_READ] >= 2000000, "latency covers the 2 ms the device took");
	tblk_blk_close(blk);
	tblk_loop_free(loop);
}

static void test_fast_null(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	struct tblk_blk *blk = open_null(loop, ",file.read-zeroes=on");
	static uint8_t buf[8192];
	struct iovec iov = { buf, sizeof(buf) };

	memset(buf, 0xaa, sizeof(buf));
	cb_count = 0;
	tblk_blk_preadv(blk, 0, &iov, 1, 0, count_cb, NULL);
	tblk_blk_preadv(blk, 1 << 20, &iov, 1, 0, count_cb, NULL);	/* past the end */
	tblk_blk_drain(blk);
	while (tblk_loop_iterate(loop, false))
		;
	is_int(cb_count, 1, "in-range read completes, out-of-range one fails");
	ok(buf[0] == 0 && buf[8191] == 0, "read-zeroes=on fills zeroes");
	tblk_blk_close(blk);
	tblk_loop_free(loop);
}

static void test_iov(void)
{
	char a[10] = "0123456789", b[6] = "abcdef", out[16] = { 0 };
	struct iovec iov[2] = { { a, 10 }, { b, 6 } }, sl[4];
	int n;

	is_int(tblk_iov_size(iov, 2), 16, "iov size");
	tblk_iov_to_buf(iov, 2, 8, out, 5);
	is_str(out, "89abc", "iov to buf across entries");
	n = tblk_iov_slice(sl, 4, iov, 2, 9, 3);
	ok(n == 2 && sl[0].iov_len == 1 && sl[1].iov_len == 2 && *(char *)sl[1].iov_base == 'a',
	   "slice across entries");
	is_int(tblk_iov_slice(sl, 1, iov, 2, 9, 3), -EINVAL, "slice needing too many entries");
	tblk_iov_memset(iov, 2, 9, 'z', 2);
	ok(a[9] == 'z' && b[0] == 'z' && b[1] == 'b', "memset across entries");
}

int main(void)
{
	uint64_t seed = tap_seed(42);
	int fd;

	snprintf(path, sizeof(path), "%s/tblk-tracked-XXXXXX", getenv("TMPDIR") ?: "/tmp");
	fd = mkstemp(path);
	if (fd < 0 || ftruncate(fd, AREA * 2) < 0)
		tap_bail("cannot create the test image");
	close(fd);
	test_rmw_concurrent(seed);
	test_drain_and_park();
	test_fast_null();
	test_iov();
	unlink(path);
	return tap_done();
}
