/* SPDX-License-Identifier: MIT */
/*
 * req.c - tracking of requests on their node: the in-flight list, overlap serialisation,
 * statistics, quiesce/drain.
 *
 * Threading: everything here takes node->lock (a leaf) briefly. Waits go through the pool's
 * wait service, so a worker blocked on an overlap never starves queued work. A thread that
 * may have to turn an event loop for what it waits for (the loop completing asynchronous
 * requests: its own, or an idle tool loop) turns it between short waits instead of sleeping.
 *
 * An asynchronous request counts in nr_in_flight until its callback has run (drain waits for
 * callbacks), but leaves the overlap list as soon as its body has run, so that a synchronous
 * request on the loop thread never waits for a callback that only that thread can run.
 */
#include "tracked/tracked.h"

/* Requests the calling thread is inside; > 0 means a request issued by a driver. */
static __thread unsigned int req_depth;
/* The loop this thread may turn while it waits (see tblk__set_wait_loop()). */
static __thread struct tblk_loop *wait_loop;

/* How long a loop-turning waiter sleeps between turns of its loop. */
#define LOOP_WAIT_NS	1000000ull

unsigned int tblk__req_depth(void)
{
	return req_depth;
}

void tblk__set_wait_loop(struct tblk_loop *loop)
{
	wait_loop = loop;
}

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

/*
 * One wait for node->cv. A thread that runs a loop, or has one to turn, gives the loop a
 * non-blocking turn first and then sleeps only briefly: what it waits for may complete there.
 */
static void node_wait_step_locked(struct tblk_node *node) TBLK_REQUIRES(node->lock)
{
	struct tblk_loop *loop = tblk_loop_current() ?: wait_loop;

	if (!loop) {
		tblk_pool_wait(&node->cv, &node->lock);
		return;
	}
	tblk_mutex_unlock(&node->lock);
	tblk_loop_iterate(loop, false);
	tblk_mutex_lock(&node->lock);
	tblk_cond_timedwait(&node->cv, &node->lock, tblk_clock_ns() + LOOP_WAIT_NS);
}

/* True if @req must wait for a running request that overlaps it. */
static bool req_conflicts_locked(struct tblk_node *node, struct tblk_req *req)
	TBLK_REQUIRES(node->lock)
{
	struct tblk_list *pos;

	if (!req->serialising && node->nr_serialising == 0)
		return false;
	tblk_list_for_each(pos, &node->in_flight) {
		struct tblk_req *o = tblk_list_entry(pos, struct tblk_req, node_link);

		if (o == req || o->waiting || (!req->serialising && !o->serialising))
			continue;
		if (ranges_overlap(req->overlap_offset, req->overlap_bytes, o->overlap_offset,
				   o->overlap_bytes))
			return true;
	}
	return false;
}

static void wait_conflicts_locked(struct tblk_node *node, struct tblk_req *req)
	TBLK_REQUIRES(node->lock)
{
	while (req_conflicts_locked(node, req)) {
		req->waiting = true;
		node_wait_step_locked(node);
	}
	req->waiting = false;
}

static void req_init_range(struct tblk_req *req)
{
	req->overlap_offset = req->offset;
	req->overlap_bytes = req->bytes;
	req->serialising = false;
	req->waiting = false;
	req->start_ns = tblk_clock_ns();
}

static void req_link_locked(struct tblk_node *node, struct tblk_req *req)
	TBLK_REQUIRES(node->lock)
{
	tblk_list_add_tail(&node->in_flight, &req->node_link);
	req->on_list = true;
	node->nr_in_flight++;
	if (req->async)
		node->nr_async++;
}

void tblk__req_begin(struct tblk_req *req)
{
	struct tblk_node *node = req->node;

	req_init_range(req);
	req->async = false;
	req->fast = false;
	tblk_mutex_lock(&node->lock);
	while (node->quiesce_counter > 0 && req_depth == 0)
		node_wait_step_locked(node);
	req_link_locked(node, req);
	wait_conflicts_locked(node, req);
	tblk_mutex_unlock(&node->lock);
	req_depth++;
}

int tblk__req_track_async(struct tblk_req *req)
{
	struct tblk_node *node = req->node;
	int ret;

	req_init_range(req);
	req->async = true;
	req->fast = false;
	req->fast_hook = NULL;
	tblk_mutex_lock(&node->lock);
	if (node->quiesce_counter > 0) {
		tblk_mutex_unlock(&node->lock);
		return -EBUSY;
	}
	req_link_locked(node, req);
	ret = node->nr_serialising == 0;
	tblk_mutex_unlock(&node->lock);
	return ret;
}

void tblk__req_wait_conflicts(struct tblk_req *req)
{
	struct tblk_node *node = req->node;

	tblk_mutex_lock(&node->lock);
	wait_conflicts_locked(node, req);
	tblk_mutex_unlock(&node->lock);
}

void tblk__req_enter(void)
{
	req_depth++;
}

void tblk__req_leave(void)
{
	req_depth--;
}

void tblk__req_make_serialising(struct tblk_req *req, uint64_t offset, uint64_t bytes)
{
	struct tblk_node *node = req->node;

	tblk_mutex_lock(&node->lock);
	if (req->overlap_bytes) {
		/* Claim the union: a request never gives back a range it claimed. */
		uint64_t end = TBLK_MAX(offset + bytes, req->overlap_offset + req->overlap_bytes);

		offset = TBLK_MIN(offset, req->overlap_offset);
		bytes = end - offset;
	}
	req->overlap_offset = offset;
	req->overlap_bytes = bytes;
	if (!req->serialising) {
		req->serialising = true;
		node->nr_serialising++;
	}
	wait_conflicts_locked(node, req);
	tblk_mutex_unlock(&node->lock);
}

/* Leaves the overlap list; true if overlap waiters may now proceed. */
static bool req_unlink_locked(struct tblk_node *node, struct tblk_req *req)
	TBLK_REQUIRES(node->lock)
{
	bool was_serialising = req->serialising;

	if (!req->on_list)
		return false;
	tblk_list_del(&req->node_link);
	req->on_list = false;
	if (was_serialising) {
		node->nr_serialising--;
		req->serialising = false;
	}
	/* Waiters only exist while serialising requests do. */
	return was_serialising || node->nr_serialising > 0;
}

void tblk__req_unlink(struct tblk_req *req)
{
	struct tblk_node *node = req->node;
	bool wake;

	tblk_mutex_lock(&node->lock);
	wake = req_unlink_locked(node, req);
	tblk_mutex_unlock(&node->lock);
	if (wake)
		tblk_cond_broadcast(&node->cv);
}

static void stats_account_locked(struct tblk_node *node, struct tblk_req *req, int ret)
	TBLK_REQUIRES(node->lock)
{
	struct tblk_stats *st = &node->stats;
	uint64_t ns = tblk_clock_ns() - req->start_ns;
	int k = req->kind;

	if (ret < 0) {
		st->failed[k]++;
		return;
	}
	st->ops[k]++;
	st->fast_ops[k] += req->fast;
	st->bytes[k] += req->bytes;
	st->total_ns[k] += ns;
	if (ns > st->max_ns[k])
		st->max_ns[k] = ns;
}

void tblk__req_end_async(struct tblk_req *req, int ret)
{
	struct tblk_node *node = req->node;
	bool wake;

	tblk_mutex_lock(&node->lock);
	wake = req_unlink_locked(node, req);
	node->nr_in_flight--;
	if (req->async)
		node->nr_async--;
	stats_account_locked(node, req, ret);
	wake |= node->nr_in_flight == 0;	/* drains */
	/*
	 * Under the lock: a drainer on another thread that sees nothing in flight may close
	 * the node (and destroy cv) as soon as the lock is free.
	 */
	if (wake)
		tblk_cond_broadcast(&node->cv);
	tblk_mutex_unlock(&node->lock);
}

void tblk__req_end(struct tblk_req *req, int ret)
{
	req_depth--;
	tblk__req_end_async(req, ret);
}

/* ---------------------------------------------------------------- drain */

/*
 * Waits until @node has nothing in flight. Asynchronous completions need @loop: if the
 * caller runs it, or nobody does (a tool's main loop between iterations), the caller turns
 * it while asynchronous requests remain, and sleeps on the condition for synchronous ones;
 * if another thread (an iothread) runs it, the caller only sleeps. Two threads must not
 * drain through the same idle loop at once.
 */
/* Tells the drivers of @node and of every node below it that a drain begins or ends. */
static void subtree_drain_hook(struct tblk_node *node, bool begin)
{
	for (struct tblk_node *n = node; n; n = n->file) {
		if (begin && n->drv->drain_begin)
			n->drv->drain_begin(n);
		if (!begin && n->drv->drain_end)
			n->drv->drain_end(n);
		if (n->backing)
			subtree_drain_hook(n->backing, begin);
	}
}

void tblk__node_wait_idle(struct tblk_node *node, struct tblk_loop *loop)
{
	bool turn = loop && (tblk_loop_in_thread(loop) || !tblk_loop_is_running(loop));

	/* The node's requests may be held by a driver below it (a throttle filter). */
	subtree_drain_hook(node, true);
	tblk_mutex_lock(&node->lock);
	while (node->nr_in_flight > 0) {
		if (turn && node->nr_async > 0) {
			tblk_mutex_unlock(&node->lock);
			tblk_loop_iterate(loop, true);
			tblk_mutex_lock(&node->lock);
		} else {
			tblk_pool_wait(&node->cv, &node->lock);
		}
	}
	tblk_mutex_unlock(&node->lock);
	subtree_drain_hook(node, false);
}

void tblk_node_drain(struct tblk_node *node)
{
	tblk__node_wait_idle(node, tblk_loop_current());
}

static void node_quiesce(struct tblk_node *node, bool on)
{
	tblk_mutex_lock(&node->lock);
	if (on) {
		node->quiesce_counter++;
	} else {
		assert(node->quiesce_counter > 0);
		node->quiesce_counter--;
	}
	tblk_mutex_unlock(&node->lock);
	if (!on)
		tblk_cond_broadcast(&node->cv);
}

void tblk_node_drained_begin(struct tblk_node *node)
{
	node_quiesce(node, true);
	tblk_node_drain(node);
}

void tblk_node_drained_end(struct tblk_node *node)
{
	node_quiesce(node, false);
}

void tblk__graph_quiesce(struct tblk_node *root, bool on)
{
	for (struct tblk_node *n = root; n; n = n->file) {
		node_quiesce(n, on);
		if (n->backing)
			tblk__graph_quiesce(n->backing, on);
	}
}

void tblk__graph_wait_idle(struct tblk_node *root, struct tblk_loop *loop)
{
	/* Top first: a parent's requests are what keep its children busy. */
	for (struct tblk_node *n = root; n; n = n->file) {
		tblk__node_wait_idle(n, loop);
		if (n->backing)
			tblk__graph_wait_idle(n->backing, loop);
	}
}

void tblk_graph_drained_begin(struct tblk_node *root)
{
	tblk__graph_quiesce(root, true);
	tblk__graph_wait_idle(root, tblk_loop_current());
}

void tblk_graph_drained_end(struct tblk_node *root)
{
	tblk__graph_quiesce(root, false);
}
