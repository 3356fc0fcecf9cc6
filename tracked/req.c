/* SPDX-License-Identifier: MIT */
/*
 * req.c - tracking of requests on their node: the in-flight list, overlap serialisation,
 * statistics, quiesce/drain.
 *
 * Threading: everything here takes node->lock (a leaf) briefly; waits go through the pool's
 * wait service so a worker blocked on an overlap never starves queued work. A drain on the
 * thread that runs the loop completing the node's requests iterates that loop instead of
 * sleeping, since the completions it waits for run there.
 */
#include "tracked/tracked.h"

/* Requests the calling thread is inside; > 0 means a request issued by a driver. */
static __thread unsigned int req_depth;

unsigned int tblk__req_depth(void)
{
	return req_depth;
}

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
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
		tblk_pool_wait(&node->cv, &node->lock);
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

void tblk__req_begin(struct tblk_req *req)
{
	struct tblk_node *node = req->node;

	req_init_range(req);
	tblk_mutex_lock(&node->lock);
	while (node->quiesce_counter > 0 && req_depth == 0)
		tblk_pool_wait(&node->cv, &node->lock);
	tblk_list_add_tail(&node->in_flight, &req->node_link);
	node->nr_in_flight++;
	wait_conflicts_locked(node, req);
	tblk_mutex_unlock(&node->lock);
	req_depth++;
}

int tblk__req_track_async(struct tblk_req *req)
{
	struct tblk_node *node = req->node;
	int ret;

	req_init_range(req);
	tblk_mutex_lock(&node->lock);
	if (node->quiesce_counter > 0) {
		tblk_mutex_unlock(&node->lock);
		return -EBUSY;
	}
	tblk_list_add_tail(&node->in_flight, &req->node_link);
	node->nr_in_flight++;
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
	tblk_list_del(&req->node_link);
	node->nr_in_flight--;
	if (req->serialising)
		node->nr_serialising--;
	stats_account_locked(node, req, ret);
	/* Waiters are overlaps (only while serialising requests exist) and drains. */
	wake = req->serialising || node->nr_serialising > 0 || node->nr_in_flight == 0;
	tblk_mutex_unlock(&node->lock);
	if (wake)
		tblk_cond_broadcast(&node->cv);
}

void tblk__req_end(struct tblk_req *req, int ret)
{
	req_depth--;
	tblk__req_end_async(req, ret);
}

/* ---------------------------------------------------------------- drain */

/*
 * Waits until @node has nothing in flight. The completions may need @loop: if the caller
 * runs it, or nobody does (a tool's main loop between iterations), the caller turns it;
 * if another thread (an iothread) runs it, the caller sleeps until woken.
 */
void tblk__node_wait_idle(struct tblk_node *node, struct tblk_loop *loop);
void tblk__node_wait_idle(struct tblk_node *node, struct tblk_loop *loop)
{
	if (loop && (tblk_loop_in_thread(loop) || !tblk_loop_is_running(loop))) {
		/* Completions of this node run on our loop: keep it turning. */
		for (;;) {
			unsigned int n;

			tblk_mutex_lock(&node->lock);
			n = node->nr_in_flight;
			tblk_mutex_unlock(&node->lock);
			if (n == 0)
				return;
			tblk_loop_iterate(loop, true);
		}
	}
	tblk_mutex_lock(&node->lock);
	while (node->nr_in_flight > 0)
		tblk_pool_wait(&node->cv, &node->lock);
	tblk_mutex_unlock(&node->lock);
}

/* The loop the calling thread runs, used to decide whether a drain must iterate it. */
static struct tblk_loop *drain_loop(void)
{
	return tblk_loop_current();
}

void tblk_node_drain(struct tblk_node *node)
{
	tblk__node_wait_idle(node, drain_loop());
}

void tblk_node_drained_begin(struct tblk_node *node)
{
	tblk_mutex_lock(&node->lock);
	node->quiesce_counter++;
	tblk_mutex_unlock(&node->lock);
	tblk__node_wait_idle(node, drain_loop());
}

void tblk_node_drained_end(struct tblk_node *node)
{
	tblk_mutex_lock(&node->lock);
	assert(node->quiesce_counter > 0);
	node->quiesce_counter--;
	tblk_mutex_unlock(&node->lock);
	tblk_cond_broadcast(&node->cv);
}

void tblk_graph_drained_begin(struct tblk_node *root)
{
	for (struct tblk_node *n = root; n; n = n->file) {
		tblk_node_drained_begin(n);
		if (n->backing)
			tblk_graph_drained_begin(n->backing);
	}
}

void tblk_graph_drained_end(struct tblk_node *root)
{
	for (struct tblk_node *n = root; n; n = n->file) {
		if (n->backing)
			tblk_graph_drained_end(n->backing);
		tblk_node_drained_end(n);
	}
}
