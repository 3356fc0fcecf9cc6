/* SPDX-License-Identifier: MIT */
/*
 * qcow2-fast-alloc.c - allocating writes on the fast path. A write of whole clusters that are
 * unallocated (or plain zero clusters), within one L2 table that is cached, whose new host
 * clusters are found free in cached refcount blocks, is allocated on the loop thread in
 * memory: the refcounts are raised in the cached blocks and the guest range is claimed on
 * qcow2_state.allocs, as the pool path's plan_alloc() does. Its data then goes to the data
 * file's own fast path (Linux AIO or io_uring submitted from the loop). When that completes,
 * the L2 entries are pointed at the new clusters, again on the loop thread, if nobody holds
 * the image lock and the table is still cached; otherwise a pool worker links them under the
 * image lock. A data file that refuses the fast path, and a short write (which the file
 * driver hands to the pool as req->work), finish in a worker too: the data is written there
 * with a blocking call, then linked.
 *
 * Ordering is the pool path's: refcounts are raised (in the cache) before the data is
 * written, the L2 entries set only once it completed, and meta_dirty then makes the file
 * flush before any L2 table is written back. While the range is claimed, pool writers, zero
 * writes and discards touching it wait (wait_dependencies()), and the fast path cannot serve
 * it: its entries read as unallocated until the link. A failed data write leaks its clusters
 * (refcount 1, no L2 entry), as the pool path and qemu do.
 *
 * Whole clusters only: a partial cluster needs copy-on-write or zeroing of the rest of the
 * cluster (a read or an fallocate), which the pool path does.
 *
 * Threading: planning and the inline link run on the loop thread under qcow2_state.mu while
 * meta_held is false, which excludes every metadata user (see qcow2-fast.c) and never waits;
 * the fallbacks run in pool workers under the image lock. A struct fast_alloc is owned by
 * whoever carries the request: the loop thread, then at most one worker.
 */
#include "formats/qcow2-int.h"

/* Most clusters one fast allocation may span. */
#define ALLOC_MAX_CLUSTERS	16
/* Most refcount entries the first-free search may look at on the loop thread. */
#define SEARCH_MAX		1024

struct fast_alloc {
	struct qcow2_alloc a;		/* [meta] the claimed guest range, on s->allocs */
	struct qcow2_state *s;		/* [const] */
	uint64_t host;			/* [const] host offset of a.start */
	bool written;			/* [owner] the data is in place: only the link is left */
	int ret;			/* [owner] result of the data write when written */
};

static bool claimed_locked(struct qcow2_state *s, uint64_t start, uint64_t end)
{
	struct tblk_list *pos;

	tblk_list_for_each(pos, &s->allocs) {
		struct qcow2_alloc *a = tblk_container_of(pos, struct qcow2_alloc, link);

		if (a->start < end && start < a->end)
			return true;
	}
	return false;
}

/* The cached refcount block covering @cluster_index, or NULL (none, not cached, odd). */
static void *peek_block(struct qcow2_state *s, uint64_t cluster_index)
{
	uint64_t ti = cluster_index >> s->rc_block_bits, off;
	void *block;

	if (ti >= s->reftable_size)
		return NULL;
	off = s->reftable[ti] & ~QCOW2_REFT_RESERVED;
	if (!off || (off & (s->cluster_size - 1)) || qcow2_cache_peek(s->rc_cache, off, &block) < 0)
		return NULL;
	return block;
}

/*
 * The first-free search of qcow2-refcount.c (the same result, so that layouts match qemu's),
 * on cached refcount blocks only: the index of the first of @n free clusters in a row from
 * free_cluster_index, and in *next where the cursor goes. -EAGAIN where the search would need
 * I/O, a new refcount block, or more than SEARCH_MAX steps; the cursor is not moved.
 */
static int64_t search_locked(struct qcow2_state *s, uint64_t n, uint64_t *next)
{
	uint64_t idx = s->free_cluster_index, run = 0, block_ti = UINT64_MAX;
	uint64_t limit = (1ull << 56) >> s->cluster_bits, mask = (1ull << s->rc_block_bits) - 1;
	void *block = NULL;

	for (unsigned int steps = 0; run < n; steps++, idx++) {
		if (steps == SEARCH_MAX || idx >= limit)
			return -EAGAIN;
		if (idx >> s->rc_block_bits != block_ti) {
			block = peek_block(s, idx);
			if (!block)
				return -EAGAIN;
			block_ti = idx >> s->rc_block_bits;
		}
		run = qcow2_rc_get(s, block, idx & mask) ? 0 : run + 1;
	}
	*next = idx;
	return (int64_t)(idx - n);
}

/* Gives the @n clusters from @first a refcount of 1 in their cached (free) entries. */
static void take_clusters_locked(struct qcow2_state *s, uint64_t first, uint64_t n)
{
	uint64_t mask = (1ull << s->rc_block_bits) - 1;

	for (uint64_t c = first; c < first + n; c++) {
		void *block = peek_block(s, c);	/* found by the search just now */

		qcow2_cluster_taken(s, c);
		qcow2_rc_set(s, block, c & mask, 1);
		qcow2_cache_mark_dirty(s->rc_cache, block);
	}
}

/* The cached L2 table of guest @offset if its L1 entry owns it alone (no copy needed). */
static void *writable_l2_locked(struct qcow2_state *s, uint64_t offset)
{
	uint64_t l1i = offset >> (s->l2_bits + s->cluster_bits), e, off;
	void *table;

	if (l1i >= s->l1_size)
		return NULL;
	e = s->l1[l1i];
	off = e & QCOW2_OFFSET_MASK;
	if (!(e & QCOW2_OFLAG_COPIED) || (e & QCOW2_L1_RESERVED & ~QCOW2_OFLAG_COPIED) || !off ||
	    (off & (s->cluster_size - 1)) || qcow2_cache_peek(s->l2_cache, off, &table) < 0)
		return NULL;
	return table;
}

static uint32_t l2_index(const struct qcow2_state *s, uint64_t offset)
{
	return (uint32_t)((offset >> s->cluster_bits) & (s->l2_size - 1));
}

/*
 * Caller holds mu with meta_held false (the image lock is free). Plans the allocation of the
 * guest range [offset, offset + bytes) of @req, or returns NULL if it does not qualify.
 */
struct fast_alloc *qcow2_fast_alloc_plan_locked(struct qcow2_state *s, struct tblk_req *req,
						uint64_t offset)
{
	uint64_t n = req->bytes >> s->cluster_bits, next;
	uint32_t l2i = l2_index(s, offset);
	struct fast_alloc *fa;
	void *table;
	int64_t first;

	if (s->fast_alloc_off || s->corrupt || s->ext_l2 || s->data != s->node->file ||
	    s->nr_pending_free || qcow2_offset_into_cluster(s, offset | req->bytes) || n == 0 ||
	    n > ALLOC_MAX_CLUSTERS || l2i + n > s->l2_size ||
	    s->cluster_size % s->data->limits.request_alignment || req->iovcnt > 1024 ||
	    !tblk_iov_aligned(req->iov, req->iovcnt, s->data->limits.mem_alignment))
		return NULL;
	table = writable_l2_locked(s, offset);
	if (!table)
		return NULL;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t e = qcow2_l2_get(s, table, l2i + i);
		enum qcow2_ctype t = qcow2_entry_type(s, e);

		/* Nothing to free, nothing to copy; odd entries are the pool's to report. */
		if ((t != QCOW2_UNALLOCATED && t != QCOW2_ZERO_PLAIN) || (e & QCOW2_L2_RESERVED))
			return NULL;
	}
	if (claimed_locked(s, offset, offset + req->bytes))
		return NULL;
	first = search_locked(s, n, &next);
	/* Cluster 0 is the header, free clusters may hold metadata (refcounts are hostile
	 * input): the pool allocates the same clusters, refuses the write and reports it. */
	if (first <= 0 ||
	    qcow2_overlap_hit_fast(s, (uint64_t)first << s->cluster_bits, req->bytes))
		return NULL;
	take_clusters_locked(s, (uint64_t)first, n);
	s->free_cluster_index = next;
	fa = g_new0(struct fast_alloc, 1);
	fa->s = s;
	fa->host = (uint64_t)first << s->cluster_bits;
	fa->a.start = offset;
	fa->a.end = offset + req->bytes;
	tblk_list_add_tail(&s->allocs, &fa->a.link);
	return fa;
}

/* Points the L2 entries of the claimed range at the new clusters in @table. */
static void set_entries(struct qcow2_state *s, struct fast_alloc *fa, void *table)
{
	uint32_t l2i = l2_index(s, fa->a.start);
	uint64_t n = (fa->a.end - fa->a.start) >> s->cluster_bits;

	for (uint32_t i = 0; i < n; i++)
		qcow2_l2_set(s, table, l2i + i,
			     (fa->host + ((uint64_t)i << s->cluster_bits)) | QCOW2_OFLAG_COPIED, 0);
	qcow2_cache_mark_dirty(s->l2_cache, table);
	/* The data must be on disk before the table that points at it. */
	s->meta_dirty = true;
	s->l2_needs_rc = true;
}

/* Pool worker: finishes what the loop thread could not (see the file comment). */
static int fast_alloc_work(void *opaque)
{
	struct tblk_req *req = opaque;
	struct fast_alloc *fa = req->fast_hook_opaque;
	struct qcow2_state *s = fa->s;
	int ret = fa->ret;
	uint32_t l2i;
	void *table;

	tblk__req_enter();
	if (!fa->written) {
		tblk_node_debug_event(s->node->file, TBLK_DBG_WRITE_AIO);
		ret = tblk_node_pwritev(s->data, fa->host, req->bytes, req->iov, req->iovcnt, 0);
	}
	qcow2_lock(s);
	if (ret >= 0 && qcow2_dead(s))
		ret = -EIO;	/* the image became unusable meanwhile: nothing is linked */
	if (ret >= 0)
		ret = qcow2_get_l2_for_write(s, fa->a.start, &table, &l2i);
	if (ret >= 0)
		set_entries(s, fa, table);
	tblk_list_del(&fa->a.link);
	qcow2_unlock(s);	/* wakes the allocation waiters */
	tblk__req_leave();
	g_free(fa);
	return ret;
}

/* Loop thread: the data file completed the data write with @ret. */
static bool fast_alloc_done(struct tblk_req *req, int *ret)
{
	struct fast_alloc *fa = req->fast_hook_opaque;
	struct qcow2_state *s = fa->s;
	bool finished = false;
	void *table;

	tblk_mutex_lock(&s->mu);
	if (*ret >= 0 && qcow2_dead(s))
		*ret = -EIO;	/* the image became unusable meanwhile: nothing is linked */
	if (!s->meta_held) {
		table = *ret >= 0 ? writable_l2_locked(s, fa->a.start) : NULL;
		if (table)
			set_entries(s, fa, table);
		finished = table || *ret < 0;
		if (finished) {
			tblk_list_del(&fa->a.link);
			if (s->nr_alloc_waiters)
				tblk_cond_broadcast(&s->cv);
		}
	}
	tblk_mutex_unlock(&s->mu);
	if (finished) {
		g_free(fa);
		return false;
	}
	fa->written = true;
	fa->ret = *ret;
	tblk_pool_submit(tblk_pool_default(), &req->work);
	return true;
}

int qcow2_fast_alloc_submit(struct qcow2_state *s, struct tblk_req *req, struct fast_alloc *fa)
{
	int ret;

	req->fast_hook = fast_alloc_done;
	req->fast_hook_opaque = fa;
	/* What a short write (the file driver redoes it through req->work) or a refusal runs. */
	req->work.fn = fast_alloc_work;
	ret = s->data->drv->submit_fast(s->data, req, fa->host);
	if (ret < 0) {
		/* The data file cannot take it (aio=threads): it will not later either. */
		tblk_mutex_lock(&s->mu);
		s->fast_alloc_off = true;
		tblk_mutex_unlock(&s->mu);
		req->fast_hook = NULL;
		tblk_pool_submit(tblk_pool_default(), &req->work);
	}
	return 0;
}
