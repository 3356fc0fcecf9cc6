/* SPDX-License-Identifier: MIT */
/*
 * qcow2-fast.c - qcow2 through the asynchronous API with aio=native and io_uring, where reads
 * and overwrites of cached, allocated clusters take the fast path: many requests in flight,
 * a mix of reads, overwrites, allocating writes, zero writes and discards (so the fast path
 * races the pool path's metadata updates), every read checked against a shadow copy; the
 * statistics must show that the fast path served requests, the image must match the shadow
 * after a reopen, and `qemu-img check` must find it clean.
 */
#include <stdlib.h>
#include <string.h>

#include <tblk/tblk.h>
#include "t/async-mix.h"
#include "t/tap.h"

#define IMG_SIZE	(8u << 20)
#define CLUSTER		65536
#define DEPTH		32
#define NR_OPS		3000

static char path[256];
static uint8_t *shadow;
static uint64_t rng;

/* Mostly 4 KiB aligned reads and writes; some unaligned, some spanning clusters. */
static void pick(struct mix_op *o)
{
	uint64_t k = tap_rand(&rng) % 100;

	o->kind = k < 55 ? MIX_READ : k < 90 ? MIX_WRITE : k < 95 ? MIX_ZERO : MIX_DISCARD;
	if (o->kind == MIX_DISCARD) {
		o->off = (tap_rand(&rng) % (IMG_SIZE / CLUSTER)) * CLUSTER;
		o->len = CLUSTER;
		return;
	}
	o->len = 4096 * (1 + tap_rand(&rng) % (k % 7 == 0 ? 40 : 2));
	o->off = (tap_rand(&rng) % ((IMG_SIZE - o->len) / 4096)) * 4096;
	if (k % 11 == 0)
		o->off += 512 * (1 + tap_rand(&rng) % 7);
	if (o->off + o->len > IMG_SIZE)
		o->off = IMG_SIZE - o->len;
}

static void run(struct tblk_blk *blk, struct tblk_loop *loop, const char *mode)
{
	static struct mix_op ops[DEPTH];
	int errors = mix_run(blk, loop, ops, DEPTH, NR_OPS, pick, shadow, &rng);
	struct tblk_stats st;

	is_int(errors, 0, "%s: %d async requests complete, reads match the shadow", mode, NR_OPS);
	tblk_blk_get_stats(blk, &st);
	ok(st.fast_ops[TBLK_STAT_READ] > st.ops[TBLK_STAT_READ] / 4,
	   "%s: the fast path served reads (%" PRIu64 " of %" PRIu64 ")", mode,
	   st.fast_ops[TBLK_STAT_READ], st.ops[TBLK_STAT_READ]);
	ok(st.fast_ops[TBLK_STAT_WRITE] > 0 && st.fast_ops[TBLK_STAT_WRITE] <
	   st.ops[TBLK_STAT_WRITE], "%s: overwrites took the fast path, allocations the pool "
	   "(%" PRIu64 " of %" PRIu64 ")", mode, st.fast_ops[TBLK_STAT_WRITE],
	   st.ops[TBLK_STAT_WRITE]);
}

static struct tblk_blk *open_image(const char *aio, bool direct, struct tblk_loop *loop)
{
	GHashTable *opts = tblk_opts_new();
	struct tblk_blk *blk = NULL;
	GError *err = NULL;
	char spec[400];
	unsigned int flags = TBLK_OPEN_RDWR;

	snprintf(spec, sizeof(spec), "driver=qcow2,file.driver=file,file.filename=%s,file.aio=%s",
		 path, aio);
	tblk_opts_parse(opts, spec, NULL, NULL);
	tblk_parse_cache_mode(direct ? "none" : "writeback", &flags, NULL);
	if (tblk_blk_open(&blk, NULL, opts, flags, loop, &err) < 0) {
		tap_diag("open: %s", err ? err->message : "?");
		g_clear_error(&err);
		blk = NULL;
	}
	g_hash_table_destroy(opts);
	return blk;
}

static void test_mode(const char *aio)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	g_autofree uint8_t *all = g_malloc(IMG_SIZE);
	GHashTable *copts = tblk_opts_new();
	struct tblk_blk *blk;
	GError *err = NULL;
	char cmd[600];

	memset(shadow, 0, IMG_SIZE);
	g_hash_table_insert(copts, g_strdup("cluster_size"), g_strdup("65536"));
	if (tblk_img_create(path, "qcow2", IMG_SIZE, copts, &err) < 0)
		tap_bail(err->message);
	g_hash_table_destroy(copts);
	blk = open_image(aio, true, loop);
	if (!blk)
		tap_bail("cannot open the image");
	/* Allocate the first half so that reads and overwrites can take the fast path. */
	for (uint64_t off = 0; off < IMG_SIZE / 2; off += CLUSTER) {
		for (uint64_t j = 0; j < CLUSTER; j++)
			shadow[off + j] = (uint8_t)tap_rand(&rng);
	}
	ok(tblk_blk_pwrite(blk, 0, shadow, IMG_SIZE / 2, 0) == 0, "aio=%s: fill half", aio);
	run(blk, loop, aio);
	is_int(tblk_blk_flush(blk), 0, "aio=%s: flush", aio);
	tblk_blk_close(blk);
	tblk_loop_free(loop);

	blk = open_image("threads", false, NULL);
	ok(blk && tblk_blk_pread(blk, 0, all, IMG_SIZE, 0) == 0 &&
	   memcmp(all, shadow, IMG_SIZE) == 0, "aio=%s: the reopened image matches the shadow",
	   aio);
	tblk_blk_close(blk);
	snprintf(cmd, sizeof(cmd), "qemu-img check -q '%s'", path);
	is_int(system(cmd), 0, "aio=%s: qemu-img check finds no errors and no leaks", aio);
}

int main(void)
{
	rng = tap_seed(0x9e3779b9);
	tap_plan(14);
	snprintf(path, sizeof(path), "%s/tblk-qcow2-fast-XXXXXX", getenv("TMPDIR") ?: "/tmp");
	if (mkstemp(path) < 0)
		tap_bail("mkstemp");
	shadow = g_malloc(IMG_SIZE);
	test_mode("native");
	test_mode("io_uring");
	unlink(path);
	g_free(shadow);
	return tap_done();
}
