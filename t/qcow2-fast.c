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
#include "t/tap.h"

#define IMG_SIZE	(8u << 20)
#define CLUSTER		65536
#define DEPTH		32
#define NR_OPS		3000

static char path[256];
static uint8_t *shadow;
static uint64_t rng;

enum op_kind { OP_READ, OP_WRITE, OP_ZERO, OP_DISCARD };

struct op {
	bool busy;
	enum op_kind kind;
	uint64_t off, len;
	uint8_t *mem;
	struct iovec iov;
	int *errors;
	int *done;
};

static void op_cb(void *opaque, int ret)
{
	struct op *o = opaque;

	if (ret < 0) {
		tap_diag("op %d %" PRIu64 "+%" PRIu64 " failed: %d", o->kind, o->off, o->len, ret);
		(*o->errors)++;
	} else if (o->kind == OP_READ && memcmp(o->mem, shadow + o->off, o->len)) {
		tap_diag("read %" PRIu64 "+%" PRIu64 " mismatch", o->off, o->len);
		(*o->errors)++;
	}
	free(o->mem);
	o->mem = NULL;
	o->busy = false;
	(*o->done)++;
}

static bool overlaps_busy(struct op *ops, uint64_t off, uint64_t len)
{
	for (int i = 0; i < DEPTH; i++)
		if (ops[i].busy && off < ops[i].off + ops[i].len && ops[i].off < off + len)
			return true;
	return false;
}

/* Mostly 4 KiB aligned reads and writes; some unaligned, some spanning clusters. */
static void pick(struct op *o)
{
	uint64_t k = tap_rand(&rng) % 100;

	o->kind = k < 55 ? OP_READ : k < 90 ? OP_WRITE : k < 95 ? OP_ZERO : OP_DISCARD;
	if (o->kind == OP_DISCARD) {
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

static void submit(struct tblk_blk *blk, struct op *o)
{
	if (posix_memalign((void **)&o->mem, 4096, o->len))
		tap_bail("posix_memalign");
	o->iov = (struct iovec){ o->mem, o->len };
	switch (o->kind) {
	case OP_READ:
		tblk_blk_preadv(blk, o->off, &o->iov, 1, 0, op_cb, o);
		break;
	case OP_WRITE:
		for (uint64_t j = 0; j < o->len; j++)
			o->mem[j] = (uint8_t)tap_rand(&rng);
		memcpy(shadow + o->off, o->mem, o->len);
		tblk_blk_pwritev(blk, o->off, &o->iov, 1, 0, op_cb, o);
		break;
	case OP_ZERO:
		memset(shadow + o->off, 0, o->len);
		tblk_blk_aio_pwrite_zeroes(blk, o->off, o->len, TBLK_REQ_MAY_UNMAP, op_cb, o);
		break;
	case OP_DISCARD:
		memset(shadow + o->off, 0, o->len);	/* no backing file: reads zeroes */
		tblk_blk_aio_pdiscard(blk, o->off, o->len, op_cb, o);
		break;
	}
}

static void run(struct tblk_blk *blk, struct tblk_loop *loop, const char *mode)
{
	static struct op ops[DEPTH];
	int errors = 0, done = 0, submitted = 0;
	struct tblk_stats st;

	memset(ops, 0, sizeof(ops));
	for (int i = 0; i < DEPTH; i++) {
		ops[i].errors = &errors;
		ops[i].done = &done;
	}
	while (done < NR_OPS) {
		for (int i = 0; i < DEPTH && submitted < NR_OPS; i++) {
			if (ops[i].busy)
				continue;
			pick(&ops[i]);
			if (overlaps_busy(ops, ops[i].off, ops[i].len))
				continue;
			ops[i].busy = true;
			submitted++;
			submit(blk, &ops[i]);
		}
		tblk_loop_iterate(loop, true);
	}
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
