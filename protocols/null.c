/* SPDX-License-Identifier: MIT */
/*
 * null.c - the `null-co` and `null-aio` protocols: reads return zeroes (read-zeroes=on) or
 * leave the buffer untouched, writes are dropped, after an optional latency (latency-ns).
 * Without latency, requests take the fast path: queued on a per-loop list and completed by
 * one bottom half per batch, so a benchmark measures the stack, not a device.
 *
 * Threading: the state is [const] after open. The per-loop completion list is owned by the
 * loop thread.
 */
#include <string.h>
#include <time.h>

#include "tracked/tracked.h"

struct null_state {
	uint64_t size;			/* [const] */
	uint64_t latency_ns;		/* [const] */
	bool read_zeroes;		/* [const] */
};

/* Fast-path requests waiting for the loop's bottom half; one per loop. */
struct null_loop {
	struct tblk_bh *bh;		/* [const] */
	struct tblk_req *head;		/* [loop thread] */
	struct tblk_req **tail;		/* [loop thread] */
};

static const char null_loop_key;

/* The next request in a null_loop list, kept in the request's driver scratch. */
static struct tblk_req **req_next(struct tblk_req *req)
{
	return (struct tblk_req **)&req->drv_scratch[0];
}

static int null_open(struct tblk_node *node, GHashTable *opts, unsigned int flags,
		     GError **errp)
{
	struct null_state *s = node->opaque;
	/* null-co:// names carry nothing: the filename option is taken and dropped. */
	g_free(tblk__opts_take(opts, "filename"));

	s->size = 1ull << 30;
	if (tblk__opts_take_size(opts, "size", &s->size, errp) < 0 ||
	    tblk__opts_take_uint64(opts, "latency-ns", &s->latency_ns, errp) < 0 ||
	    tblk__opts_take_bool(opts, "read-zeroes", &s->read_zeroes, errp) < 0)
		return -EINVAL;
	if (s->size > INT64_MAX)
		return tblk_error_set(errp, EINVAL, "Parameter 'size' is too large (at most %"
				      PRId64 ")", INT64_MAX);
	node->filename = g_strdup_printf("%s://", node->drv->name);
	return 0;
}

static void null_delay(struct null_state *s)
{
	struct timespec ts = {
		.tv_sec = s->latency_ns / 1000000000ull,
		.tv_nsec = s->latency_ns % 1000000000ull,
	};

	if (s->latency_ns)
		while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
			;
}

static int null_preadv(struct tblk_node *node, uint64_t offset, uint64_t bytes,
		       const struct iovec *iov, int iovcnt, unsigned int flags)
{
	struct null_state *s = node->opaque;

	null_delay(s);
	if (s->read_zeroes)
		tblk_iov_memset(iov, iovcnt, 0, 0, bytes);
	return 0;
}

static int null_pwritev(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			const struct iovec *iov, int iovcnt, unsigned int flags)
{
	null_delay(node->opaque);
	return 0;
}

static int null_flush(struct tblk_node *node)
{
	null_delay(node->opaque);
	return 0;
}

static int null_block_status(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			     uint64_t *pnum, uint64_t *map)
{
	struct null_state *s = node->opaque;

	*pnum = bytes;
	if (map)
		*map = offset;
	/* Without read-zeroes a read returns whatever the buffer held: neither data nor zeroes. */
	return TBLK_BS_OFFSET_VALID | (s->read_zeroes ? TBLK_BS_ZERO : 0);
}

static int64_t null_getlength(struct tblk_node *node)
{
	struct null_state *s = node->opaque;

	return (int64_t)s->size;
}

static void null_loop_bh(void *opaque)
{
	struct null_loop *nl = opaque;
	struct tblk_req *req = nl->head;

	nl->head = NULL;
	nl->tail = &nl->head;
	while (req) {
		struct tblk_req *next = *req_next(req);
		struct null_state *s = tblk__node_protocol(req->node)->opaque;

		if (req->kind == TBLK_REQ_READ && s->read_zeroes)
			tblk_iov_memset(req->iov, req->iovcnt, 0, 0, req->bytes);
		tblk__req_fast_done(req, 0);
		req = next;
	}
}

static void null_loop_free(void *data)
{
	struct null_loop *nl = data;

	tblk_bh_free(nl->bh);
	g_free(nl);
}

static int null_submit_fast(struct tblk_node *node, struct tblk_req *req, uint64_t offset)
{
	struct null_state *s = node->opaque;
	struct tblk_loop *loop = req->work.loop;
	struct null_loop *nl;

	if (s->latency_ns)
		return -EAGAIN;	/* the pool sleeps for us */
	nl = tblk_loop_get_data(loop, &null_loop_key);
	if (!nl) {
		nl = g_new0(struct null_loop, 1);
		nl->bh = tblk_bh_new(loop, null_loop_bh, nl);
		nl->tail = &nl->head;
		tblk_loop_set_data(loop, &null_loop_key, nl, null_loop_free);
	}
	*req_next(req) = NULL;
	*nl->tail = req;
	nl->tail = req_next(req);
	if (nl->head == req)
		tblk_bh_schedule(nl->bh);
	return 0;
}

#define NULL_DRIVER(drv_name)					\
	{							\
		.name = drv_name,				\
		.is_protocol = true,				\
		.instance_size = sizeof(struct null_state),	\
		.open = null_open,				\
		.preadv = null_preadv,				\
		.pwritev = null_pwritev,			\
		.flush = null_flush,				\
		.block_status = null_block_status,		\
		.getlength = null_getlength,			\
		.submit_fast = null_submit_fast,		\
	}

const struct tblk_driver tblk__drv_null_co = NULL_DRIVER("null-co");
const struct tblk_driver tblk__drv_null_aio = NULL_DRIVER("null-aio");
