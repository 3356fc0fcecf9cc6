/* SPDX-License-Identifier: MIT */
/*
 * qcow2-overlap-race.c - the overlap check under load: one guest cluster of an allocated
 * image points at the active L1 table, and many asynchronous overwrites (fast path with
 * aio=native, pool with aio=threads), allocating writes, reads, discards and flushes are in
 * flight when a write to that cluster is refused. Every request must complete with 0, -EIO
 * (refused, or caught in flight) or -ENOMEDIUM (the image is unusable), at least one with
 * -EIO; afterwards the L1 table on disk is intact, the corrupt bit set, and the image refuses
 * to open read/write. Built for ThreadSanitizer and ASan too.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <tblk/tblk.h>
#include "t/tap.h"

#define IMG_SIZE	(8u << 20)
#define CLUSTER		65536u
#define DEPTH		32
#define NR_OPS		1500
#define BAD_CLUSTER	37	/* in the allocated first half */

static char path[256];
static uint64_t rng;

enum { RES_OK, RES_EIO, RES_ENOMEDIUM, RES_OTHER, RES_NR };

struct op {
	bool busy;
	uint8_t *mem;
	struct iovec iov;
	int *results;
	int *done;
};

static void op_cb(void *opaque, int ret)
{
	struct op *o = opaque;

	o->results[ret == 0 ? RES_OK : ret == -EIO ? RES_EIO : ret == -ENOMEDIUM ? RES_ENOMEDIUM :
		   RES_OTHER]++;
	if (ret && ret != -EIO && ret != -ENOMEDIUM)
		tap_diag("unexpected result %d", ret);
	free(o->mem);
	o->mem = NULL;
	o->busy = false;
	(*o->done)++;
}

static void submit(struct tblk_blk *blk, struct op *o)
{
	uint64_t k = tap_rand(&rng) % 100, len = 4096, off;
	bool bad = tap_rand(&rng) % 400 == 0;

	if (posix_memalign((void **)&o->mem, 4096, CLUSTER))
		tap_bail("posix_memalign");
	memset(o->mem, (int)k, CLUSTER);
	off = (tap_rand(&rng) % (IMG_SIZE / 2 / 4096)) * 4096;
	if ((off >> 16) == BAD_CLUSTER)
		off += 2 * CLUSTER;	/* the bad cluster is hit rarely, by a write */
	if (bad) {
		k = 0;
		off = BAD_CLUSTER * (uint64_t)CLUSTER + 4096 * (tap_rand(&rng) % 16);
	}
	o->iov = (struct iovec){ o->mem, len };
	if (k < 55) {
		tblk_blk_pwritev(blk, off, &o->iov, 1, 0, op_cb, o);
	} else if (k < 65) {
		/* whole clusters of the second half: allocating writes */
		off = IMG_SIZE / 2 + (tap_rand(&rng) % (IMG_SIZE / 2 / CLUSTER)) * CLUSTER;
		o->iov.iov_len = CLUSTER;
		tblk_blk_pwritev(blk, off, &o->iov, 1, 0, op_cb, o);
	} else if (k < 92) {
		tblk_blk_preadv(blk, off, &o->iov, 1, 0, op_cb, o);
	} else if (k < 96) {
		tblk_blk_aio_pdiscard(blk, IMG_SIZE / 2 + (off & ~(uint64_t)(CLUSTER - 1)),
				      CLUSTER, op_cb, o);
	} else {
		tblk_blk_aio_flush(blk, op_cb, o);
	}
}

static struct tblk_blk *open_image(const char *aio, bool direct, struct tblk_loop *loop,
				   unsigned int flags)
{
	GHashTable *opts = tblk_opts_new();
	struct tblk_blk *blk = NULL;
	GError *err = NULL;
	char spec[400];

	snprintf(spec, sizeof(spec), "driver=qcow2,file.driver=file,file.filename=%s,file.aio=%s",
		 path, aio);
	tblk_opts_parse(opts, spec, NULL, NULL);
	tblk_parse_cache_mode(direct ? "none" : "writeback", &flags, NULL);
	if (tblk_blk_open(&blk, NULL, opts, flags, loop, &err) < 0) {
		g_clear_error(&err);
		blk = NULL;
	}
	g_hash_table_destroy(opts);
	return blk;
}

static uint64_t get_be64(int fd, uint64_t off)
{
	uint8_t b[8];
	uint64_t v = 0;

	if (pread(fd, b, 8, (off_t)off) != 8)
		tap_bail("pread");
	for (int i = 0; i < 8; i++)
		v = v << 8 | b[i];
	return v;
}

static void put_be64(int fd, uint64_t off, uint64_t v)
{
	uint8_t b[8];

	for (int i = 7; i >= 0; i--, v >>= 8)
		b[i] = (uint8_t)v;
	if (pwrite(fd, b, 8, (off_t)off) != 8)
		tap_bail("pwrite");
}

static void test_mode(const char *aio)
{
	static struct op ops[DEPTH];
	int results[RES_NR] = { 0 }, done = 0, submitted = 0, fd;
	struct tblk_loop *loop = tblk_loop_new(NULL);
	g_autofree uint8_t *buf = g_malloc0(IMG_SIZE / 2);
	g_autofree uint8_t *l1_before = g_malloc(CLUSTER);
	g_autofree uint8_t *l1_after = g_malloc(CLUSTER);
	GHashTable *copts = tblk_opts_new();
	struct tblk_blk *blk;
	uint64_t l1_off, l2_off;
	GError *err = NULL;
	uint8_t tmp[4096];

	g_hash_table_insert(copts, g_strdup("cluster_size"), g_strdup("65536"));
	if (tblk_img_create(path, "qcow2", IMG_SIZE, copts, &err) < 0)
		tap_bail(err->message);
	g_hash_table_destroy(copts);
	blk = open_image("threads", false, NULL, TBLK_OPEN_RDWR);
	if (!blk || tblk_blk_pwrite(blk, 0, buf, IMG_SIZE / 2, 0) < 0)
		tap_bail("cannot fill the image");
	tblk_blk_close(blk);

	/* Guest cluster BAD_CLUSTER now says its data is the active L1 table. */
	fd = open(path, O_RDWR);
	if (fd < 0)
		tap_bail("open");
	l1_off = get_be64(fd, 40);
	l2_off = get_be64(fd, l1_off) & 0x00fffffffffffe00ull;
	put_be64(fd, l2_off + 8 * BAD_CLUSTER, (1ull << 63) | l1_off);
	if (pread(fd, l1_before, CLUSTER, (off_t)l1_off) != CLUSTER)
		tap_bail("pread");

	blk = open_image(aio, true, loop, TBLK_OPEN_RDWR);
	if (!blk)
		tap_bail("cannot open the damaged image");
	/* Cache the L2 table: the overwrites qualify for the fast path. */
	ok(tblk_blk_pread(blk, 0, tmp, sizeof(tmp), 0) == 0, "aio=%s: first read", aio);
	for (int i = 0; i < DEPTH; i++)
		ops[i] = (struct op){ .results = results, .done = &done };
	while (done < NR_OPS) {
		for (int i = 0; i < DEPTH && submitted < NR_OPS; i++) {
			if (ops[i].busy)
				continue;
			ops[i].busy = true;
			submitted++;
			submit(blk, &ops[i]);
		}
		tblk_loop_iterate(loop, true);
	}
	tap_diag("aio=%s: %d ok, %d EIO, %d ENOMEDIUM", aio, results[RES_OK], results[RES_EIO],
		 results[RES_ENOMEDIUM]);
	is_int(results[RES_OTHER], 0, "aio=%s: every request completed with 0, EIO or ENOMEDIUM",
	       aio);
	ok(results[RES_EIO] >= 1, "aio=%s: the write into the L1 table was refused", aio);
	ok(results[RES_OK] >= 1, "aio=%s: requests before it succeeded", aio);
	is_int(tblk_blk_pread(blk, 0, tmp, sizeof(tmp), 0), -ENOMEDIUM,
	       "aio=%s: the image is unusable afterwards", aio);
	tblk_blk_close(blk);
	tblk_loop_free(loop);

	if (pread(fd, l1_after, CLUSTER, (off_t)l1_off) != CLUSTER)
		tap_bail("pread");
	ok(!memcmp(l1_before, l1_after, CLUSTER), "aio=%s: the L1 table is intact", aio);
	ok(get_be64(fd, 72) & 2, "aio=%s: the corrupt bit is set", aio);
	close(fd);
	blk = open_image("threads", false, NULL, TBLK_OPEN_RDWR);
	ok(!blk, "aio=%s: the image no longer opens read/write", aio);
	tblk_blk_close(blk);
}

int main(void)
{
	rng = tap_seed(0x6f766c70);
	tap_plan(16);
	snprintf(path, sizeof(path), "%s/tblk-qcow2-overlap-XXXXXX", getenv("TMPDIR") ?: "/tmp");
	if (mkstemp(path) < 0)
		tap_bail("mkstemp");
	test_mode("native");
	test_mode("threads");
	unlink(path);
	return tap_done();
}
