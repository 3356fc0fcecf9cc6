/* SPDX-License-Identifier: MIT */
/*
 * blk.c - the backend a user holds (struct tblk_blk): opening from a file name and options,
 * range checks, the asynchronous API (fast path or pool, callback on the backend's loop),
 * the synchronous API, drain, and queries.
 *
 * Threading: asynchronous requests are submitted and completed on the backend's loop thread;
 * synchronous ones run in the calling thread. Fields are [const] after open except where
 * tagged.
 */
#include <stdlib.h>
#include <string.h>

#include "tracked/throttle.h"
#include "tracked/tracked.h"

int tblk__req_dispatch(struct tblk_req *req);

/* The backend whose callback the calling thread is running, to catch a drain from it. */
static __thread struct tblk_blk *cb_blk;

struct tblk_blk {
	struct tblk_node *root;		/* [const] where requests go */
	struct tblk_node *image;	/* [const] what queries see: root below an implicit
					 * copy-on-read filter */
	struct tblk__thr_member *throttle;	/* [const] I/O limits, or NULL */
	struct tblk_loop *loop;		/* [const] where callbacks run, may be NULL */
	struct tblk_pool *pool;		/* [const] */
	bool writethrough;		/* [atomic] writes get TBLK_REQ_FUA */
	uint64_t size;			/* [atomic] cached virtual size for range checks */
	struct tblk_list parked;	/* [loop thread] requests waiting for a drain to end */
	/*
	 * Resubmits parked requests. [const] from open until the close, which frees it on the
	 * loop thread and sets it to NULL: no drained section may overlap a close.
	 */
	struct tblk_bh *resume_bh;
	/*
	 * [loop thread] Finished request objects kept for reuse (linked through work.next),
	 * so the asynchronous hot path does not allocate; at most REQ_CACHE_MAX of them.
	 */
	struct tblk_req *free_reqs;
	unsigned int nr_free_reqs;	/* [loop thread] */
};

#define REQ_CACHE_MAX	256

static bool blk_writethrough(struct tblk_blk *blk)
{
	return __atomic_load_n(&blk->writethrough, __ATOMIC_RELAXED);
}

static uint64_t blk_size(struct tblk_blk *blk)
{
	return __atomic_load_n(&blk->size, __ATOMIC_RELAXED);
}

static int blk_refresh_size(struct tblk_blk *blk)
{
	int64_t len = tblk_node_getlength(blk->root);

	if (len < 0)
		return len < -4095 ? -EIO : (int)len;
	__atomic_store_n(&blk->size, (uint64_t)len, __ATOMIC_RELAXED);
	return 0;
}

static void blk_resume_parked(void *opaque);

/*
 * The backend's own options: "throttling.*" (I/O limits, qemu's -drive names) and
 * "copy-on-read", which puts a copy-on-read filter above the image (its options move
 * under "file."). On success *pthr is the throttle member or NULL.
 */
static int blk_take_opts(GHashTable **popts, unsigned int *flags, struct tblk_loop *loop,
			 struct tblk__thr_member **pthr, GError **errp)
{
	/* TBLK_OPEN_NODE_OPTS: none of them; they stay for the node, which refuses them */
	bool node_only = *flags & TBLK_OPEN_NODE_OPTS;
	g_autoptr(GHashTable) topts = node_only ? tblk_opts_new() :
					  tblk__opts_extract_prefix(*popts, "throttling");
	g_autofree char *group = tblk__opts_take(topts, "group");
	bool cor = *flags & TBLK_OPEN_COPY_ON_READ;
	struct tblk__thr_cfg cfg;
	GHashTableIter it;
	gpointer k, v;

	*pthr = NULL;
	if ((!node_only && tblk__opts_take_bool(*popts, "copy-on-read", &cor, errp) < 0) ||
	    tblk__thr_cfg_parse(&cfg, topts, "", errp) < 0)
		return -EINVAL;
	g_hash_table_iter_init(&it, topts);
	if (g_hash_table_iter_next(&it, &k, &v))
		return tblk_error_set(errp, EINVAL, "Invalid parameter 'throttling.%s'",
				      (char *)k);
	if (cor) {
		GHashTable *fopts = tblk_opts_new();

		g_hash_table_iter_init(&it, *popts);
		while (g_hash_table_iter_next(&it, &k, &v))
			g_hash_table_insert(fopts, g_strconcat("file.", k, NULL), g_strdup(v));
		g_hash_table_insert(fopts, g_strdup("driver"), g_strdup("copy-on-read"));
		g_hash_table_unref(*popts);
		*popts = fopts;
		*flags |= TBLK_OPEN_COPY_ON_READ;
	}
	if (tblk__thr_cfg_enabled(&cfg))
		return tblk__thr_member_new(pthr, group, &cfg, loop, errp);
	return 0;
}

int tblk_blk_open(struct tblk_blk **pblk, const char *filename, GHashTable *options,
		  unsigned int flags, struct tblk_loop *loop, GError **errp)
{
	GHashTable *opts = tblk__opts_copy(options);
	struct tblk__thr_member *thr;
	struct tblk_blk *blk;
	struct tblk_node *root;
	int ret;

	const struct tblk_driver *drv;

	/* An empty file name for the image: qemu hands it to the file driver, which says */
	if (filename && !*filename && !g_hash_table_contains(opts, "filename") &&
	    !g_hash_table_contains(opts, "file.filename") && !g_hash_table_contains(opts, "file")) {
		g_hash_table_unref(opts);
		return tblk_error_set(errp, EINVAL, "The 'file' block driver requires a file name");
	}
	if (filename && !*filename)
		filename = NULL;
	/* A "json:{...}" file name holds options; those given apart win, as in qemu. */
	if (filename && g_str_has_prefix(filename, "json:")) {
		GHashTable *jopts = tblk_opts_new();
		GHashTableIter it;
		gpointer k, v;

		ret = tblk_opts_parse(jopts, filename, NULL, errp);
		g_hash_table_iter_init(&it, jopts);
		while (ret == 0 && g_hash_table_iter_next(&it, &k, &v))
			if (!g_hash_table_contains(opts, k))
				g_hash_table_insert(opts, g_strdup(k), g_strdup(v));
		g_hash_table_unref(jopts);
		if (ret < 0) {
			g_hash_table_unref(opts);
			return ret;
		}
		filename = NULL;
	}
	/* A protocol named with a file name twice: qemu refuses to choose. */
	drv = tblk__driver_find(g_hash_table_lookup(opts, "driver") ?: "");
	if (filename && drv && drv->is_protocol && g_hash_table_contains(opts, "filename")) {
		g_hash_table_unref(opts);
		return tblk_error_set(errp, EINVAL, "Can't specify 'file' and 'filename' options "
				      "at the same time");
	}
	ret = blk_take_opts(&opts, &flags, loop, &thr, errp);
	if (ret == 0)
		ret = tblk__node_open(&root, filename, opts, flags, errp);
	g_hash_table_unref(opts);
	if (ret < 0) {
		tblk__thr_member_free(thr);
		return ret;
	}
	blk = g_new0(struct tblk_blk, 1);
	blk->root = root;
	blk->image = (flags & TBLK_OPEN_COPY_ON_READ) ? root->file : root;
	blk->throttle = thr;
	blk->loop = loop;
	blk->pool = tblk_pool_default();
	blk->writethrough = flags & TBLK_OPEN_WRITETHROUGH;
	tblk_list_init(&blk->parked);
	if (loop)
		blk->resume_bh = tblk_bh_new(loop, blk_resume_parked, blk);
	ret = blk_refresh_size(blk);
	if (ret < 0) {
		tblk_error_set_errno(errp, -ret, "Could not get the size of '%s'",
				     root->filename ? root->filename : "");
		tblk_blk_close(blk);
		return ret;
	}
	*pblk = blk;
	return 0;
}

/* Requests parked by a drained section that never ended: fail them rather than lose them. */
static void blk_fail_parked(struct tblk_blk *blk)
{
	struct tblk_list *pos, *tmp;

	tblk_list_for_each_safe(pos, tmp, &blk->parked) {
		struct tblk_req *req = tblk_list_entry(pos, struct tblk_req, park_link);

		tblk_list_del(pos);
		req->cb(req->cb_opaque, -ENOMEDIUM);
		g_free(req);
	}
}

/*
 * Close, first step, on the loop thread: no resumption may come later, so parked requests
 * resume now (those of a drained section that ended, whose bottom half may not have run
 * yet) or fail (those of one that did not end).
 */
static void blk_close_parked(void *opaque)
{
	struct tblk_blk *blk = opaque;

	tblk_bh_free(blk->resume_bh);
	blk->resume_bh = NULL;
	blk_resume_parked(blk);
	blk_fail_parked(blk);
}

/* Close, last step, on the loop thread: what the loop thread owns, once nothing is in flight. */
static void blk_close_loop_state(void *opaque)
{
	struct tblk_blk *blk = opaque;

	while (blk->free_reqs) {
		struct tblk_req *req = blk->free_reqs;

		blk->free_reqs = (struct tblk_req *)req->work.next;
		g_free(req);
	}
	tblk__thr_member_free(blk->throttle);
}

/*
 * Any thread. The loop's own state (parked requests, the resume bottom half, the request
 * cache, the throttle member) is let go on the loop thread: the drain sees the last request
 * leave the in-flight count, but the loop thread may still be on its way out of that
 * request's completion (the driver's completion loop, the request's own release). Running
 * the last step there, after it, orders every access of the loop thread to @blk before the
 * free, whichever thread closes.
 */
void tblk_blk_close(struct tblk_blk *blk)
{
	if (!blk)
		return;
	if (blk->loop)
		tblk_loop_call_wait(blk->loop, blk_close_parked, blk);
	tblk_blk_drain(blk);
	if (blk->loop)
		tblk_loop_call_wait(blk->loop, blk_close_loop_state, blk);
	else
		blk_close_loop_state(blk);
	tblk__node_close(blk->root);
	g_free(blk);
}

/* The length check qemu's block backend makes: the whole range inside the image. */
static int check_range(struct tblk_blk *blk, uint64_t offset, uint64_t bytes)
{
	uint64_t size = blk_size(blk);

	if (offset > size || bytes > size - offset)
		return -EIO;
	return 0;
}

/* ---------------------------------------------------------------- asynchronous */

/* A request object for @blk's loop thread: reused if one is free. */
static struct tblk_req *req_get(struct tblk_blk *blk)
{
	struct tblk_req *req = blk->free_reqs;

	if (!req)
		return g_new(struct tblk_req, 1);	/* aborts on exhaustion, as GLib does */
	blk->free_reqs = (struct tblk_req *)req->work.next;
	blk->nr_free_reqs--;
	return req;
}

static void req_put(struct tblk_blk *blk, struct tblk_req *req)
{
	if (blk->nr_free_reqs >= REQ_CACHE_MAX) {
		g_free(req);
		return;
	}
	req->work.next = (struct tblk_work *)blk->free_reqs;
	blk->free_reqs = req;
	blk->nr_free_reqs++;
}

static void areq_complete(struct tblk_req *req, int ret)
{
	struct tblk_blk *outer = cb_blk, *blk = req->blk;

	cb_blk = blk;
	req->cb(req->cb_opaque, ret);
	cb_blk = outer;
	/*
	 * Once the request leaves the in-flight count, a close on another thread may go on,
	 * but it frees @blk's cache on this thread, after this function returned.
	 */
	tblk__req_end_async(req, ret);
	req_put(blk, req);
}

/* Pool worker: the request's body, nested so children do not wait for quiesce. */
static int areq_work(void *opaque)
{
	struct tblk_req *req = opaque;
	int ret;

	tblk__req_wait_conflicts(req);
	tblk__req_enter();
	ret = tblk__req_dispatch(req);
	tblk__req_leave();
	tblk__req_unlink(req);
	return ret;
}

static void areq_done(void *opaque, int ret)
{
	areq_complete(opaque, ret);
}

void tblk__req_fast_done(struct tblk_req *req, int ret)
{
	if (req->fast_hook && req->fast_hook(req, &ret))
		return;
	req->fast = true;
	areq_complete(req, ret);
}

/*
 * Requests refused at submission (range, read-only) are tracked like any other and their
 * error comes back through the pool, so drain waits for their callbacks too.
 */
static int areq_fail_work(void *opaque)
{
	struct tblk_req *req = opaque;

	return req->ret;
}

/* A request waiting for its throttle group's budget. */
struct areq_thr_wait {
	struct tblk__thr_waiter w;
	struct tblk_req *req;
};

/* Loop thread: the throttle group released the request (tracked all along). */
static void areq_thr_release(struct tblk__thr_waiter *w)
{
	struct areq_thr_wait *tw = tblk_container_of(w, struct areq_thr_wait, w);
	struct tblk_req *req = tw->req;

	g_free(tw);
	tblk_pool_submit(req->blk->pool, &req->work);
}

/* True if @req was queued for budget (it is released later, on the loop). */
static bool areq_throttle(struct tblk_req *req)
{
	struct areq_thr_wait *tw;

	if (!req->blk->throttle || (req->kind != TBLK_REQ_READ && req->kind != TBLK_REQ_WRITE &&
				    req->kind != TBLK_REQ_ZEROES))
		return false;
	tw = g_new0(struct areq_thr_wait, 1);
	tw->req = req;
	tw->w.write = req->kind != TBLK_REQ_READ;
	tw->w.bytes = req->bytes;
	tw->w.release = areq_thr_release;
	if (!tblk__thr_submit(req->blk->throttle, &tw->w))
		return true;
	g_free(tw);
	return false;
}

static void areq_submit(struct tblk_req *req)
{
	struct tblk_node *root = req->node;
	int r = tblk__req_track_async(req);

	if (r == -EBUSY) {
		tblk_list_add_tail(&req->blk->parked, &req->park_link);
		return;
	}
	if (req->ret < 0) {
		req->work.fn = areq_fail_work;
		tblk_pool_submit(req->blk->pool, &req->work);
		return;
	}
	if (areq_throttle(req))
		return;
	if (r == 1 && root->drv->submit_fast && root->drv->submit_fast(root, req, req->offset) == 0)
		return;
	tblk_pool_submit(req->blk->pool, &req->work);
}

static void blk_resume_parked(void *opaque)
{
	struct tblk_blk *blk = opaque;
	struct tblk_list list, *pos, *tmp;

	/* Detach first: a request may park again if another drain began meanwhile. */
	tblk_list_init(&list);
	if (tblk_list_empty(&blk->parked))
		return;
	list.next = blk->parked.next;
	list.prev = blk->parked.prev;
	list.next->prev = &list;
	list.prev->next = &list;
	tblk_list_init(&blk->parked);
	tblk_list_for_each_safe(pos, tmp, &list) {
		tblk_list_del(pos);
		areq_submit(tblk_list_entry(pos, struct tblk_req, park_link));
	}
}

static void blk_aio(struct tblk_blk *blk, enum tblk_req_kind kind, uint64_t offset,
		    uint64_t bytes, const struct iovec *iov, int iovcnt, unsigned int flags,
		    tblk_cb *cb, void *opaque)
{
	struct tblk_req *req;

	/* Asynchronous use needs the loop given at open, and its thread. */
	assert(blk->loop);
	assert(tblk_loop_in_thread(blk->loop) || !tblk_loop_is_running(blk->loop));
	req = req_get(blk);
	req->node = blk->root;
	req->blk = blk;
	req->kind = kind;
	req->offset = offset;
	req->bytes = bytes;
	req->iov = iov;
	req->iovcnt = iovcnt;
	req->flags = flags;
	req->cb = cb;
	req->cb_opaque = opaque;
	req->work.fn = areq_work;
	req->work.done = areq_done;
	req->work.opaque = req;
	req->work.loop = blk->loop;
	req->ret = kind == TBLK_REQ_FLUSH ? 0 : check_range(blk, offset, bytes);
	if (req->ret == 0 && kind != TBLK_REQ_READ && kind != TBLK_REQ_FLUSH && blk->root->read_only)
		req->ret = -EPERM;
	areq_submit(req);
}

void tblk_blk_preadv(struct tblk_blk *blk, uint64_t offset, const struct iovec *iov, int iovcnt,
		     unsigned int flags, tblk_cb *cb, void *opaque)
{
	blk_aio(blk, TBLK_REQ_READ, offset, tblk_iov_size(iov, iovcnt), iov, iovcnt, flags, cb,
		opaque);
}

void tblk_blk_pwritev(struct tblk_blk *blk, uint64_t offset, const struct iovec *iov,
		      int iovcnt, unsigned int flags, tblk_cb *cb, void *opaque)
{
	if (blk_writethrough(blk))
		flags |= TBLK_REQ_FUA;
	blk_aio(blk, TBLK_REQ_WRITE, offset, tblk_iov_size(iov, iovcnt), iov, iovcnt, flags, cb,
		opaque);
}

void tblk_blk_aio_flush(struct tblk_blk *blk, tblk_cb *cb, void *opaque)
{
	blk_aio(blk, TBLK_REQ_FLUSH, 0, 0, NULL, 0, 0, cb, opaque);
}

void tblk_blk_aio_pdiscard(struct tblk_blk *blk, uint64_t offset, uint64_t bytes, tblk_cb *cb,
			   void *opaque)
{
	blk_aio(blk, TBLK_REQ_DISCARD, offset, bytes, NULL, 0, 0, cb, opaque);
}

void tblk_blk_aio_pwrite_zeroes(struct tblk_blk *blk, uint64_t offset, uint64_t bytes,
				unsigned int flags, tblk_cb *cb, void *opaque)
{
	if (blk_writethrough(blk))
		flags |= TBLK_REQ_FUA;
	blk_aio(blk, TBLK_REQ_ZEROES, offset, bytes, NULL, 0, flags, cb, opaque);
}

/* ---------------------------------------------------------------- synchronous */

static int blk_sync(struct tblk_blk *blk, enum tblk_req_kind kind, uint64_t offset,
		    uint64_t bytes, const struct iovec *iov, int iovcnt, unsigned int flags)
{
	struct tblk_req req = {
		.node = blk->root, .blk = blk, .kind = kind, .offset = offset, .bytes = bytes,
		.iov = iov, .iovcnt = iovcnt, .flags = flags,
	};
	int ret = kind == TBLK_REQ_FLUSH ? 0 : check_range(blk, offset, bytes);

	if (ret < 0)
		return ret;
	if (kind != TBLK_REQ_READ && kind != TBLK_REQ_FLUSH && blk->root->read_only)
		return -EPERM;
	if ((kind == TBLK_REQ_WRITE || kind == TBLK_REQ_ZEROES) && blk_writethrough(blk))
		req.flags |= TBLK_REQ_FUA;
	/* Synchronous callers sleep for their budget before the request is tracked. */
	if (blk->throttle && (kind == TBLK_REQ_READ || kind == TBLK_REQ_WRITE ||
			      kind == TBLK_REQ_ZEROES))
		tblk__thr_throttle_sync(blk->throttle, kind != TBLK_REQ_READ, bytes);
	/* If this thread may turn the backend's loop, waits turn it (see tracked/req.c). */
	if (blk->loop && (tblk_loop_in_thread(blk->loop) || !tblk_loop_is_running(blk->loop)))
		tblk__set_wait_loop(blk->loop);
	ret = tblk__req_run(&req);
	tblk__set_wait_loop(NULL);
	return ret;
}

int tblk_blk_preadv_sync(struct tblk_blk *blk, uint64_t offset, const struct iovec *iov,
			 int iovcnt, unsigned int flags)
{
	return blk_sync(blk, TBLK_REQ_READ, offset, tblk_iov_size(iov, iovcnt), iov, iovcnt,
			flags);
}

int tblk_blk_pwritev_sync(struct tblk_blk *blk, uint64_t offset, const struct iovec *iov,
			  int iovcnt, unsigned int flags)
{
	return blk_sync(blk, TBLK_REQ_WRITE, offset, tblk_iov_size(iov, iovcnt), iov, iovcnt,
			flags);
}

int tblk_blk_pread(struct tblk_blk *blk, uint64_t offset, void *buf, size_t bytes,
		   unsigned int flags)
{
	struct iovec iov = { buf, bytes };

	return blk_sync(blk, TBLK_REQ_READ, offset, bytes, &iov, 1, flags);
}

int tblk_blk_pwrite(struct tblk_blk *blk, uint64_t offset, const void *buf, size_t bytes,
		    unsigned int flags)
{
	struct iovec iov = { (void *)buf, bytes };

	return blk_sync(blk, TBLK_REQ_WRITE, offset, bytes, &iov, 1, flags);
}

int tblk_blk_flush(struct tblk_blk *blk)
{
	return blk_sync(blk, TBLK_REQ_FLUSH, 0, 0, NULL, 0, 0);
}

int tblk_blk_pdiscard(struct tblk_blk *blk, uint64_t offset, uint64_t bytes)
{
	return blk_sync(blk, TBLK_REQ_DISCARD, offset, bytes, NULL, 0, 0);
}

int tblk_blk_pwrite_zeroes(struct tblk_blk *blk, uint64_t offset, uint64_t bytes,
			   unsigned int flags)
{
	return blk_sync(blk, TBLK_REQ_ZEROES, offset, bytes, NULL, 0, flags);
}

/* ---------------------------------------------------------------- drain and queries */

void tblk_blk_drain(struct tblk_blk *blk)
{
	/* A drain from one of its own callbacks would wait for that callback forever. */
	assert(cb_blk != blk);
	/* Requests waiting for the backend's I/O limits go now (qemu: limits off in drain). */
	if (blk->throttle)
		tblk__thr_member_drain(blk->throttle, true);
	tblk__graph_wait_idle(blk->root, blk->loop);
	if (blk->throttle)
		tblk__thr_member_drain(blk->throttle, false);
}

/* Drained section over the whole graph of @blk; parked requests resume at the end. */
void tblk__blk_drained_begin(struct tblk_blk *blk);
void tblk__blk_drained_end(struct tblk_blk *blk);

void tblk__blk_drained_begin(struct tblk_blk *blk)
{
	tblk__graph_quiesce(blk->root, true);
	if (blk->throttle)
		tblk__thr_member_drain(blk->throttle, true);
	tblk__graph_wait_idle(blk->root, blk->loop);
}

void tblk__blk_drained_end(struct tblk_blk *blk)
{
	if (blk->throttle)
		tblk__thr_member_drain(blk->throttle, false);
	tblk__graph_quiesce(blk->root, false);
	if (blk->resume_bh)
		tblk_bh_schedule(blk->resume_bh);
}

int64_t tblk_blk_getlength(struct tblk_blk *blk)
{
	return tblk_node_getlength(blk->root);
}

int64_t tblk_blk_get_allocated_size(struct tblk_blk *blk)
{
	struct tblk_node *proto = tblk__node_protocol(blk->root);

	if (!proto->drv->get_allocated_size)
		return -ENOTSUP;
	return proto->drv->get_allocated_size(proto);
}

int tblk_blk_truncate(struct tblk_blk *blk, uint64_t size, const char *prealloc,
		      GError **errp)
{
	struct tblk_node *root = blk->root;
	int ret;

	if (root->read_only)
		return tblk_error_set(errp, EPERM, "Image is read-only");
	if (!root->drv->truncate)
		return tblk_error_set(errp, ENOTSUP, "Image format driver does not support "
				      "resize");
	tblk__blk_drained_begin(blk);
	/* The driver's own metadata I/O is nested in the drained section: it must not wait. */
	tblk__req_enter();
	ret = root->drv->truncate(root, size, prealloc, errp);
	tblk__req_leave();
	if (ret >= 0)
		ret = blk_refresh_size(blk);
	tblk__blk_drained_end(blk);
	return ret;
}

/* The VM state area of the first node down the `file` chain that has one. */
static int blk_vmstate_rw(struct tblk_blk *blk, uint64_t pos, void *buf, uint64_t bytes,
			  bool write)
{
	struct iovec iov = { .iov_base = buf, .iov_len = bytes };
	struct tblk_node *node = blk->image;
	int ret;

	if (write && blk->image->read_only)
		return -EPERM;
	if (bytes > SIZE_MAX || pos > INT64_MAX || bytes > INT64_MAX - pos)
		return -EINVAL;
	while (node && !node->drv->vmstate_rw)
		node = node->file;
	if (!node)
		return -ENOTSUP;
	tblk__blk_drained_begin(blk);
	tblk__req_enter();
	ret = node->drv->vmstate_rw(node, pos, &iov, 1, bytes, write);
	tblk__req_leave();
	tblk__blk_drained_end(blk);
	if (ret >= 0 && write && blk_writethrough(blk))
		ret = tblk_node_flush(blk->image);
	return ret < 0 ? ret : 0;
}

int tblk_blk_load_vmstate(struct tblk_blk *blk, uint64_t pos, void *buf, uint64_t bytes)
{
	return blk_vmstate_rw(blk, pos, buf, bytes, false);
}

int tblk_blk_save_vmstate(struct tblk_blk *blk, uint64_t pos, const void *buf, uint64_t bytes)
{
	return blk_vmstate_rw(blk, pos, (void *)buf, bytes, true);
}

int tblk_blk_block_status(struct tblk_blk *blk, uint64_t offset, uint64_t bytes,
			  uint64_t *pnum, uint64_t *map)
{
	return tblk_node_block_status(blk->image, offset, bytes, pnum, map);
}

const char *tblk_blk_format_name(struct tblk_blk *blk)
{
	return blk->image->drv->name;
}

const char *tblk_blk_filename(struct tblk_blk *blk)
{
	return blk->image->filename;
}

const char *tblk_blk_protocol_name(struct tblk_blk *blk)
{
	return tblk__node_protocol(blk->root)->drv->name;
}

bool tblk_blk_is_read_only(struct tblk_blk *blk)
{
	return blk->root->read_only;
}

bool tblk_blk_format_probed(struct tblk_blk *blk)
{
	return blk->image->probed;
}

struct tblk_loop *tblk_blk_get_loop(struct tblk_blk *blk)
{
	return blk->loop;
}

uint32_t tblk_blk_request_alignment(struct tblk_blk *blk)
{
	return blk->root->limits.request_alignment;
}

void tblk_blk_set_writethrough(struct tblk_blk *blk, bool on)
{
	__atomic_store_n(&blk->writethrough, on, __ATOMIC_RELAXED);
}

void tblk_blk_get_stats(struct tblk_blk *blk, struct tblk_stats *st)
{
	tblk_mutex_lock(&blk->root->lock);
	*st = blk->root->stats;
	tblk_mutex_unlock(&blk->root->lock);
}

int tblk_img_create(const char *filename, const char *fmt, uint64_t size, GHashTable *options,
		    GError **errp)
{
	const struct tblk_driver *drv = tblk__driver_find(fmt);
	g_autoptr(GHashTable) opts = tblk__opts_copy(options);
	int ret;

	if (!drv || !drv->create)
		return tblk_error_set(errp, EINVAL, "Unknown file format '%s'", fmt);
	ret = drv->create(filename, size, opts, errp);
	if (ret < 0)
		return ret;
	return 0;
}

int tblk_img_measure(const char *fmt, GHashTable *options, uint64_t size, struct tblk_blk *src,
		     struct tblk_measure *m, GError **errp)
{
	const struct tblk_driver *drv = tblk__driver_find(fmt);
	g_autoptr(GHashTable) opts = tblk__opts_copy(options);

	if (!drv)
		return tblk_error_set(errp, EINVAL, "Unknown file format '%s'", fmt);
	if (!drv->measure)
		return tblk_error_set(errp, ENOTSUP, "Block driver '%s' does not support size "
				      "measurement", fmt);
	memset(m, 0, sizeof(*m));
	return drv->measure(opts, size, src, src ? src->root : NULL, m, errp);
}

int tblk_blk_amend(struct tblk_blk *blk, GHashTable *options, bool force,
		   void (*progress)(double fraction, void *opaque), void *opaque, GError **errp)
{
	struct tblk_node *root = blk->root;
	g_autoptr(GHashTable) opts = tblk__opts_copy(options);
	int ret;

	if (!root->drv->amend)
		return tblk_error_set(errp, ENOTSUP, "Format driver '%s' does not support option "
				      "amendment", root->drv->name);
	if (root->read_only)
		return tblk_error_set(errp, EPERM, "Image is read-only");
	tblk__blk_drained_begin(blk);
	/* As truncate: the driver's metadata I/O is nested in the drained section. */
	tblk__req_enter();
	ret = root->drv->amend(root, opts, force, progress, opaque, errp);
	tblk__req_leave();
	if (ret >= 0)
		ret = blk_refresh_size(blk);
	tblk__blk_drained_end(blk);
	return ret;
}

int tblk_blk_chain_length(struct tblk_blk *blk)
{
	int n = 0;

	for (struct tblk_node *node = blk->image; node; node = node->backing)
		n++;
	return n;
}

int tblk_blk_chain_layer(struct tblk_blk *blk, int depth, struct tblk_chain_layer *layer)
{
	struct tblk_node *node = blk->image;
	struct tblk_format_info info = { 0 };

	for (; node && depth > 0; depth--)
		node = node->backing;
	if (!node || depth < 0)
		return -ENOENT;
	if (node->drv->get_info && node->drv->get_info(node, &info) < 0)
		memset(&info, 0, sizeof(info));
	layer->filename = node->filename;
	layer->format = node->drv->name;
	layer->backing_file = info.backing_file;
	layer->backing_fmt = info.backing_fmt;
	return 0;
}

/* Runs a metadata operation of the root's driver in a drained section. */
static int blk_drained_op(struct tblk_blk *blk, int (*op)(struct tblk_node *node,
							  const void *a, const void *b),
			  const void *a, const void *b)
{
	int ret;

	tblk__blk_drained_begin(blk);
	tblk__req_enter();
	ret = op(blk->image, a, b);
	tblk__req_leave();
	tblk__blk_drained_end(blk);
	return ret;
}

static int op_change_backing(struct tblk_node *node, const void *a, const void *b)
{
	return node->drv->change_backing_file(node, a, b);
}

static int op_make_empty(struct tblk_node *node, const void *a, const void *b)
{
	(void)a;
	(void)b;
	return node->drv->make_empty(node);
}

int tblk_blk_change_backing_file(struct tblk_blk *blk, const char *backing_file,
				 const char *backing_fmt)
{
	if (!blk->image->drv->change_backing_file)
		return -ENOTSUP;
	if (blk->image->read_only)
		return -EACCES;
	return blk_drained_op(blk, op_change_backing, backing_file, backing_fmt);
}

int tblk_blk_make_empty(struct tblk_blk *blk)
{
	int ret;

	if (!blk->image->drv->make_empty)
		return -ENOTSUP;
	if (blk->image->read_only)
		return -EACCES;
	ret = blk_drained_op(blk, op_make_empty, NULL, NULL);
	return ret;
}

int tblk_blk_block_status_depth(struct tblk_blk *blk, uint64_t offset, uint64_t bytes,
				uint64_t *pnum, uint64_t *map, int *depth)
{
	struct tblk_node *last = NULL;
	uint64_t n = bytes;
	int d = 0, ret = 0;

	for (struct tblk_node *node = blk->image; node; node = node->backing, d++) {
		int64_t len = tblk_node_getlength(node);

		if (len < 0)
			return (int)len;
		/* Past the end of a shorter backing file everything reads as zeroes. */
		if (offset >= (uint64_t)len) {
			if (d == 0) {
				*pnum = 0;
				return 0;
			}
			break;
		}
		ret = tblk_node_block_status(node, offset, n, &n, map);
		if (ret < 0)
			return ret;
		if (ret & TBLK_BS_ALLOCATED) {
			*pnum = n;
			if (depth)
				*depth = d;
			return ret;
		}
		last = node;
	}
	*pnum = n;
	if (depth)
		*depth = d;
	/*
	 * A layer that may have a backing file reads as zeroes where nobody holds the range;
	 * one that cannot (raw over null-co without read-zeroes) says what it said. As in
	 * qemu, the host offset the last layer asked gave stays (qcow2's unallocated
	 * subclusters of a host cluster have one).
	 */
	if (last && !last->drv->supports_backing)
		return ret & TBLK_BS_ZERO;
	return TBLK_BS_ZERO | (ret & TBLK_BS_OFFSET_VALID);
}

uint32_t tblk_blk_cluster_size(struct tblk_blk *blk)
{
	struct tblk_node *root = blk->image;

	return root->drv->cluster_size ? root->drv->cluster_size(root) : 0;
}

int tblk_blk_get_format_info(struct tblk_blk *blk, struct tblk_format_info *info)
{
	struct tblk_node *root = blk->image;

	memset(info, 0, sizeof(*info));
	if (root->drv->cluster_size)
		info->cluster_size = root->drv->cluster_size(root);
	if (root->drv->get_info)
		return root->drv->get_info(root, info);
	/*
	 * qemu's raw asks its protocol, and only a local file or device answers; over nbd or
	 * null there is nothing to report (qemu-img info leaves out dirty-flag).
	 */
	return tblk__node_protocol(root)->drv->get_allocated_size ? 0 : -ENOTSUP;
}

int tblk_blk_check(struct tblk_blk *blk, int fix, struct tblk_check_result *res)
{
	struct tblk_node *root = blk->image;
	int ret;

	if (!root->drv->check)
		return -ENOTSUP;
	if (fix && root->read_only)
		return -EROFS;
	/* The check's own metadata reads are outside requests: wait for idle, do not quiesce. */
	tblk_blk_drain(blk);
	ret = root->drv->check(root, res, fix);
	return ret;
}

/* ---------------------------------------------------------------- internal snapshots */

void tblk_snapshot_list_free(struct tblk_snapshot_info *sn, int n)
{
	for (int i = 0; sn && i < n; i++) {
		g_free(sn[i].id);
		g_free(sn[i].name);
	}
	g_free(sn);
}

int tblk_blk_snapshot_list(struct tblk_blk *blk, struct tblk_snapshot_info **psn, int *pn)
{
	struct tblk_node *root = blk->root;

	if (!root->drv->snapshot_list)
		return -ENOTSUP;
	tblk_blk_drain(blk);
	return root->drv->snapshot_list(root, psn, pn);
}

/* Runs a snapshot operation of the root's driver in a drained section. */
static int snapshot_op(struct tblk_blk *blk, int (*op)(struct tblk_node *node, const void *a,
						      const void *b, GError **errp),
		       const void *a, const void *b, GError **errp)
{
	int ret;

	if (blk->root->read_only)
		return tblk_error_set(errp, EACCES, "Image is read-only");
	/*
	 * Only the root is quiesced: the driver's own metadata I/O to its children runs as
	 * outside requests from this thread. Wait for idle first, turning the loop if need be.
	 */
	tblk_blk_drain(blk);
	tblk_node_drained_begin(blk->root);
	ret = op(blk->root, a, b, errp);
	if (ret >= 0)
		ret = blk_refresh_size(blk);
	tblk_node_drained_end(blk->root);
	if (blk->resume_bh)
		tblk_bh_schedule(blk->resume_bh);
	return ret;
}

static int op_create(struct tblk_node *n, const void *a, const void *b, GError **errp)
{
	(void)b;
	return n->drv->snapshot_create(n, a, errp);
}

static int op_goto(struct tblk_node *n, const void *a, const void *b, GError **errp)
{
	(void)b;
	return n->drv->snapshot_goto(n, a, errp);
}

static int op_delete(struct tblk_node *n, const void *a, const void *b, GError **errp)
{
	return n->drv->snapshot_delete(n, a, b, errp);
}

int tblk_blk_snapshot_create(struct tblk_blk *blk, const struct tblk_snapshot_info *sn,
			     GError **errp)
{
	if (!blk->root->drv->snapshot_create)
		return tblk_error_set(errp, ENOTSUP, "Block driver does not support snapshots");
	return snapshot_op(blk, op_create, sn, NULL, errp);
}

int tblk_blk_snapshot_goto(struct tblk_blk *blk, const char *id_or_name, GError **errp)
{
	struct tblk_dirty_bitmap *bm = NULL;
	int nbm = 0;

	if (!blk->root->drv->snapshot_goto)
		return tblk_error_set(errp, ENOTSUP, "Block driver does not support snapshots");
	/* As qemu: the bitmaps would not describe the data of the snapshot. */
	if (tblk_blk_bitmap_list(blk, &bm, &nbm) >= 0) {
		tblk_dirty_bitmaps_free(bm, nbm);
		if (nbm > 0)
			return tblk_error_set(errp, EBUSY, "Device has active dirty bitmaps");
	}
	return snapshot_op(blk, op_goto, id_or_name, NULL, errp);
}

int tblk_blk_snapshot_delete(struct tblk_blk *blk, const char *id, const char *name,
			     GError **errp)
{
	if (!blk->root->drv->snapshot_delete)
		return tblk_error_set(errp, ENOTSUP, "Block driver does not support snapshots");
	return snapshot_op(blk, op_delete, id, name, errp);
}

int tblk_blk_snapshot_load_tmp(struct tblk_blk *blk, const char *id, const char *name,
			       GError **errp)
{
	struct tblk_node *root = blk->root;
	int ret;

	if (!root->drv->snapshot_load_tmp)
		return tblk_error_set(errp, ENOTSUP, "Block format '%s' used by device '' does "
				      "not support temporarily loading internal snapshots",
				      root->drv->name);
	if (!root->read_only)
		return tblk_error_set(errp, EINVAL, "Device is not readonly");
	tblk_blk_drain(blk);
	tblk_node_drained_begin(root);
	ret = root->drv->snapshot_load_tmp(root, id, name, errp);
	tblk_node_drained_end(root);
	if (blk->resume_bh)
		tblk_bh_schedule(blk->resume_bh);
	return ret;
}

int tblk_blk_debug_breakpoint(struct tblk_blk *blk, const char *event, const char *tag)
{
	return tblk__node_debug_breakpoint(blk->root, event, tag);
}

int tblk_blk_debug_remove_breakpoint(struct tblk_blk *blk, const char *tag)
{
	return tblk__node_debug_remove_breakpoint(blk->root, tag);
}

int tblk_blk_debug_resume(struct tblk_blk *blk, const char *tag)
{
	return tblk__node_debug_resume(blk->root, tag);
}

bool tblk_blk_debug_is_suspended(struct tblk_blk *blk, const char *tag)
{
	return tblk__node_debug_is_suspended(blk->root, tag);
}

/* The protocol under layer @depth of @blk's chain, or NULL. */
static struct tblk_node *blk_layer_protocol(struct tblk_blk *blk, int depth)
{
	struct tblk_node *node = depth ? blk->image : blk->root;

	for (; node && depth > 0; depth--)
		node = node->backing;
	return depth < 0 || !node ? NULL : tblk__node_protocol(node);
}

/* Formats deny what they must of their file themselves; the file locks for the image. */
int tblk_blk_lock_perms(struct tblk_blk *blk, int depth, unsigned int perm, unsigned int deny,
			GError **errp)
{
	struct tblk_node *proto = blk_layer_protocol(blk, depth);

	if (!proto)
		return tblk_error_set(errp, ENOENT, "No layer %d in the backing chain", depth);
	if (!proto->drv->lock_perms)
		return 0;
	return proto->drv->lock_perms(proto, perm, deny, true, errp);
}

void tblk_blk_unlock_perms(struct tblk_blk *blk, int depth, unsigned int perm,
			   unsigned int deny)
{
	struct tblk_node *proto = blk_layer_protocol(blk, depth);

	if (proto && proto->drv->lock_perms)
		proto->drv->lock_perms(proto, perm, deny, false, NULL);
}

int tblk_blk_bitmap_apply(struct tblk_blk *blk, const struct tblk_bitmap_request *rq,
			  GError **errp)
{
	struct tblk_node *node = blk->image;
	struct tblk_node *src = rq->src ? rq->src->image : NULL;
	int ret;

	if (!node->drv->bitmap_apply) {
		if (rq->action == TBLK_BITMAP_ADD)
			return tblk_error_set(errp, ENOTSUP, "Can't store persistent bitmaps to "
					      "%s: Operation not supported", node->node_name ?
					      node->node_name : "#block0");
		return tblk_error_set(errp, ENOENT, "Dirty bitmap '%s' not found", rq->name);
	}
	tblk__blk_drained_begin(blk);
	tblk__req_enter();
	ret = node->drv->bitmap_apply(node, rq, src, errp);
	tblk__req_leave();
	tblk__blk_drained_end(blk);
	return ret;
}

int tblk_blk_bitmap_list(struct tblk_blk *blk, struct tblk_dirty_bitmap **list, int *n)
{
	struct tblk_node *node = blk->image;

	if (!node->drv->bitmap_list)
		return -ENOTSUP;
	return node->drv->bitmap_list(node, list, n);
}

void tblk_dirty_bitmaps_free(struct tblk_dirty_bitmap *list, int n)
{
	for (int i = 0; i < n; i++)
		g_free(list[i].name);
	g_free(list);
}
