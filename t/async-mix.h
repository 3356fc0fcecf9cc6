/* SPDX-License-Identifier: MIT */
/*
 * async-mix.h - a random mix of asynchronous requests kept in flight on one backend and
 * checked against a shadow copy of the image: reads must return what the shadow holds,
 * writes, zero writes and discards update it, no two overlapping requests are in flight
 * (so the shadow has an order). Each test picks the requests (offsets, lengths, kinds);
 * this file submits them and runs the loop. Shared by t/qcow2-fast.c,
 * t/qcow2-fast-alloc.c and t/qcow2-extl2-race.c.
 *
 * Threading: everything runs on the thread that runs the loop.
 */
#ifndef TBLK_T_ASYNC_MIX_H
#define TBLK_T_ASYNC_MIX_H

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include <tblk/tblk.h>
#include "t/tap.h"

/* MIX_ZERO may unmap, MIX_ZERO_ALLOC may not. */
enum mix_kind { MIX_READ, MIX_WRITE, MIX_ZERO, MIX_DISCARD, MIX_FLUSH, MIX_ZERO_ALLOC };

struct mix_op {
	bool busy;		/* submitted, not completed */
	enum mix_kind kind;
	uint64_t off, len;	/* len 0 for MIX_FLUSH */
	uint8_t *mem;
	struct iovec iov;
	uint8_t *shadow;	/* the image as it must read */
	uint64_t *rng;		/* fills the data of writes */
	int *errors;
	int *done;
};

static void mix_cb(void *opaque, int ret)
{
	struct mix_op *o = opaque;

	if (ret < 0) {
		tap_diag("op %d %" PRIu64 "+%" PRIu64 " failed: %d", o->kind, o->off, o->len, ret);
		(*o->errors)++;
	} else if (o->kind == MIX_READ && memcmp(o->mem, o->shadow + o->off, o->len)) {
		tap_diag("read %" PRIu64 "+%" PRIu64 " mismatch", o->off, o->len);
		(*o->errors)++;
	}
	free(o->mem);
	o->mem = NULL;
	o->busy = false;
	(*o->done)++;
}

static bool mix_overlaps_busy(const struct mix_op *ops, int n, uint64_t off, uint64_t len)
{
	for (int i = 0; i < n; i++)
		if (ops[i].busy && off < ops[i].off + ops[i].len && ops[i].off < off + len)
			return true;
	return false;
}

/* Submits @o, updating the shadow for what changes the image. Lengths are 8-byte multiples. */
static void mix_submit(struct tblk_blk *blk, struct mix_op *o)
{
	if (posix_memalign((void **)&o->mem, 4096, o->len ? o->len : 4096))
		tap_bail("posix_memalign");
	o->iov = (struct iovec){ o->mem, o->len };
	switch (o->kind) {
	case MIX_READ:
		tblk_blk_preadv(blk, o->off, &o->iov, 1, 0, mix_cb, o);
		break;
	case MIX_WRITE:
		for (uint64_t j = 0; j < o->len; j += 8) {
			uint64_t v = tap_rand(o->rng);

			memcpy(o->mem + j, &v, 8);
		}
		memcpy(o->shadow + o->off, o->mem, o->len);
		tblk_blk_pwritev(blk, o->off, &o->iov, 1, 0, mix_cb, o);
		break;
	case MIX_ZERO:
	case MIX_ZERO_ALLOC:
		memset(o->shadow + o->off, 0, o->len);
		tblk_blk_aio_pwrite_zeroes(blk, o->off, o->len,
					   o->kind == MIX_ZERO ? TBLK_REQ_MAY_UNMAP : 0, mix_cb, o);
		break;
	case MIX_DISCARD:
		memset(o->shadow + o->off, 0, o->len);	/* no backing file: reads zeroes */
		tblk_blk_aio_pdiscard(blk, o->off, o->len, mix_cb, o);
		break;
	case MIX_FLUSH:
		tblk_blk_aio_flush(blk, mix_cb, o);
		break;
	}
}

/*
 * Runs @nr_ops requests chosen by @pick, at most @depth in flight (@ops has @depth
 * entries), until all completed; returns how many failed or read what the shadow does not.
 */
static int mix_run(struct tblk_blk *blk, struct tblk_loop *loop, struct mix_op *ops, int depth,
		   int nr_ops, void (*pick)(struct mix_op *o), uint8_t *shadow, uint64_t *rng)
{
	int errors = 0, done = 0, submitted = 0;

	memset(ops, 0, sizeof(*ops) * depth);
	for (int i = 0; i < depth; i++) {
		ops[i].shadow = shadow;
		ops[i].rng = rng;
		ops[i].errors = &errors;
		ops[i].done = &done;
	}
	while (done < nr_ops) {
		for (int i = 0; i < depth && submitted < nr_ops; i++) {
			if (ops[i].busy)
				continue;
			pick(&ops[i]);
			if (mix_overlaps_busy(ops, depth, ops[i].off, ops[i].len))
				continue;
			ops[i].busy = true;
			submitted++;
			mix_submit(blk, &ops[i]);
		}
		tblk_loop_iterate(loop, true);
	}
	return errors;
}

#endif
