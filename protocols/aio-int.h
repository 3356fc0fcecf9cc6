/* SPDX-License-Identifier: MIT */
/*
 * aio-int.h - what aio.c (dispatch, software queue) shares with the two kernel back ends,
 * aio-linux.c (libaio) and aio-uring.c (liburing).
 *
 * Threading: an engine belongs to one event loop; every field and function here is used on
 * that loop's thread only (or before the loop first runs).
 */
#ifndef TBLK_PROTOCOLS_AIO_INT_H
#define TBLK_PROTOCOLS_AIO_INT_H

#include "protocols/aio.h"

/* Operations the kernel holds at most per engine: io_setup()/io_uring_queue_init() depth. */
#define TBLK_AIO_DEPTH		128u
/* How long to wait before resubmitting when the kernel refused and nothing is in flight. */
#define TBLK_AIO_RETRY_NS	1000000ull

/* A back end's operations; one static const table per back end. */
struct tblk__aio_backend {
	/* [const] hands queued ops to the kernel while slots are free */
	void (*flush)(struct tblk_aio_engine *eng);
	/* [const] releases the kernel context and the memory (after the engine is unhooked) */
	void (*free)(struct tblk_aio_engine *eng);
};

/*
 * The part common to both back ends, embedded first in each back end's struct.  Ops enter
 * `queue` in tblk__aio_submit() and leave it when the kernel accepts them (or refuses one
 * with an error, which completes it); `in_flight` then counts them until their completion
 * has been reaped.  The queue is both the per-iteration batch and the software queue for
 * what exceeds the depth.
 */
struct tblk_aio_engine {
	const struct tblk__aio_backend *be;	/* [const] */
	struct tblk_loop *loop;			/* [const] */
	enum tblk_aio_engine_kind kind;		/* [const] */
	int efd;				/* [const] eventfd the kernel signals on */
	struct tblk_aio_op *queue;		/* [loop thread] ops not yet accepted, FIFO */
	struct tblk_aio_op **queue_tail;	/* [loop thread] &last->next, or &queue if empty */
	unsigned int nr_queued;			/* [loop thread] length of queue */
	unsigned int in_flight;			/* [loop thread] given to the kernel, not reaped */
	unsigned int max_in_flight;		/* [loop thread] high-water mark, for tests */
	struct tblk_loop_hook hook;		/* [loop thread] prepare hook: one submit a turn */
	struct tblk_timer retry;		/* [loop thread] resubmits after a refusal with
						 * nothing in flight (no completion would) */
};

/* Back-end constructors: the engine is set up except for hook and timer.  Loop thread. */
struct tblk_aio_engine *tblk__aio_linux_new(struct tblk_loop *loop, GError **errp);
struct tblk_aio_engine *tblk__aio_uring_new(struct tblk_loop *loop, GError **errp);
/* Probes whether the kernel accepts a context of this kind.  Any thread, uncached. */
bool tblk__aio_linux_probe(void);
bool tblk__aio_uring_probe(void);
/* Tests only: set before creating a Linux AIO engine to reap with io_getevents() instead. */
extern bool tblk__aio_linux_no_ring;

/* Fills the common part; the back end then sets efd. */
void tblk__aio_engine_init(struct tblk_aio_engine *eng, const struct tblk__aio_backend *be,
			   struct tblk_loop *loop, enum tblk_aio_engine_kind kind);

/* Unlinks and returns the head of the queue (which must be non-empty). */
static inline struct tblk_aio_op *tblk__aio_queue_pop(struct tblk_aio_engine *eng)
{
	struct tblk_aio_op *op = eng->queue;

	eng->queue = op->next;
	if (!eng->queue)
		eng->queue_tail = &eng->queue;
	eng->nr_queued--;
	op->next = NULL;
	return op;
}

/*
 * Reapers call this after each completion, with *batch starting at 1.  Work that completions
 * queue is submitted while reaping continues, in batches of 1, 2, 4 and then
 * TBLK_AIO_REAP_BATCH: the device gets its first new request within microseconds instead
 * of after the whole burst has been processed and submitted in one (plugged) io_submit.
 * On a virtual disk whose completions arrive in bursts, this is worth 10-20% IOPS at depth
 * 32 for a few extra syscalls per burst.  Ops queued outside a reap still go in one submit
 * per loop iteration.
 */
#define TBLK_AIO_REAP_BATCH	8u
static inline void tblk__aio_reap_flush(struct tblk_aio_engine *eng, unsigned int *batch)
{
	unsigned int room = TBLK_AIO_DEPTH - eng->in_flight;

	if (TBLK_MIN(eng->nr_queued, room) >= *batch) {
		eng->be->flush(eng);
		*batch = TBLK_MIN(*batch * 2, TBLK_AIO_REAP_BATCH);
	}
}

/* Arms the retry timer: called when the kernel refused work and no completion will come. */
void tblk__aio_retry_later(struct tblk_aio_engine *eng);

/* Clears the engine's eventfd; returns false if it was not set. */
bool tblk__aio_clear_eventfd(struct tblk_aio_engine *eng);

#endif /* TBLK_PROTOCOLS_AIO_INT_H */
