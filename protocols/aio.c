/* SPDX-License-Identifier: MIT */
/*
 * aio.c - the engine-independent half of the asynchronous kernel I/O engines: one engine per
 * loop and kind kept in the loop's data slot, the queue that batches submissions until the
 * loop's prepare hook (and holds what exceeds the kernel's depth), the retry timer, and the
 * cached probes of what the kernel supports.  The kernel-facing halves are aio-linux.c and
 * aio-uring.c.
 *
 * Threading: everything but tblk__aio_available() runs on the thread of the engine's loop.
 *
 * Lifetime: an engine lives until tblk_loop_free() runs its data-slot destructor.  Owners
 * drain their ops before that: the kernel is still waited for, but no completion runs then.
 */
#include <unistd.h>

#include "protocols/aio-int.h"

/* Loop data keys, one byte per engine kind: only their addresses matter. */
static const char engine_keys[2];

static pthread_once_t probe_once[2] = { PTHREAD_ONCE_INIT, PTHREAD_ONCE_INIT };
/* Written once under probe_once[kind], read after pthread_once() returns. */
static bool probe_result[2];

void tblk__aio_engine_init(struct tblk_aio_engine *eng, const struct tblk__aio_backend *be,
			   struct tblk_loop *loop, enum tblk_aio_engine_kind kind)
{
	eng->be = be;
	eng->loop = loop;
	eng->kind = kind;
	eng->efd = -1;
	eng->queue = NULL;
	eng->queue_tail = &eng->queue;
	eng->nr_queued = 0;
	eng->in_flight = 0;
	eng->max_in_flight = 0;
}

/* Prepare hook: everything queued this turn goes in one submit call. */
static void flush_cb(void *opaque)
{
	struct tblk_aio_engine *eng = opaque;

	if (eng->queue)
		eng->be->flush(eng);
}

/* Retry timer: also when the queue is empty, as the back end may hold refused work. */
static void retry_cb(void *opaque)
{
	struct tblk_aio_engine *eng = opaque;

	eng->be->flush(eng);
}

void tblk__aio_retry_later(struct tblk_aio_engine *eng)
{
	if (!eng->retry.pending)
		tblk_timer_mod(&eng->retry, tblk_clock_ns() + TBLK_AIO_RETRY_NS);
}

bool tblk__aio_clear_eventfd(struct tblk_aio_engine *eng)
{
	uint64_t v;

	/* Non-blocking eventfd: EAGAIN just means another path already cleared it. */
	return read(eng->efd, &v, sizeof(v)) == sizeof(v);
}

/* Loop data destructor: runs from tblk_loop_free(), with the owners' ops long completed. */
static void engine_destroy(void *data)
{
	struct tblk_aio_engine *eng = data;

	tblk_timer_del(&eng->retry);
	tblk_loop_remove_prepare_hook(eng->loop, &eng->hook);
	if (eng->efd >= 0)
		tblk_loop_set_fd_handler(eng->loop, eng->efd, NULL, NULL, NULL, NULL);
	eng->be->free(eng);
}

struct tblk_aio_engine *tblk__aio_get(struct tblk_loop *loop, enum tblk_aio_engine_kind kind,
				      GError **errp)
{
	struct tblk_aio_engine *eng;
	const void *key;

	if (kind != TBLK_AIO_LINUX && kind != TBLK_AIO_URING) {
		tblk_error_set(errp, EINVAL, "unknown AIO engine kind %d", (int)kind);
		return NULL;
	}
	key = &engine_keys[kind];
	eng = tblk_loop_get_data(loop, key);
	if (eng)
		return eng;

	if (kind == TBLK_AIO_LINUX)
		eng = tblk__aio_linux_new(loop, errp);
	else
		eng = tblk__aio_uring_new(loop, errp);
	if (!eng)
		return NULL;

	eng->hook.fn = flush_cb;
	eng->hook.opaque = eng;
	tblk_loop_add_prepare_hook(loop, &eng->hook);
	tblk_timer_init(&eng->retry, loop, retry_cb, eng);
	tblk_loop_set_data(loop, key, eng, engine_destroy);
	return eng;
}

void tblk__aio_submit(struct tblk_aio_engine *eng, struct tblk_aio_op *op)
{
	op->next = NULL;
	*eng->queue_tail = op;
	eng->queue_tail = &op->next;
	eng->nr_queued++;
}

void tblk__aio_flush_batch(struct tblk_aio_engine *eng)
{
	if (eng->queue)
		eng->be->flush(eng);
}

unsigned int tblk__aio_in_flight(struct tblk_aio_engine *eng)
{
	return eng->in_flight + eng->nr_queued;
}

static void probe_linux(void)
{
	probe_result[TBLK_AIO_LINUX] = tblk__aio_linux_probe();
}

static void probe_uring(void)
{
	probe_result[TBLK_AIO_URING] = tblk__aio_uring_probe();
}

bool tblk__aio_available(enum tblk_aio_engine_kind kind)
{
	switch (kind) {
	case TBLK_AIO_LINUX:
		pthread_once(&probe_once[kind], probe_linux);
		break;
	case TBLK_AIO_URING:
		pthread_once(&probe_once[kind], probe_uring);
		break;
	default:
		return false;
	}
	return probe_result[kind];
}
