/* SPDX-License-Identifier: MIT */
/*
 * qcow2-fast.c - the qcow2 fast path. On the loop thread that submitted it, a read, or an
 * overwrite, whose L2 table is in the cache and whose clusters are allocated, uncompressed and
 * contiguous in the file is translated without the pool and handed to the data file's own
 * fast path (Linux AIO or io_uring submitted from the loop). With extended L2 entries every
 * subcluster the request touches must be allocated too. Everything else, and anything that
 * would need metadata I/O, an allocation or a change of subcluster bits, returns -EAGAIN and
 * takes the pool path, except writes of whole unallocated clusters that qcow2-fast-alloc.c
 * can allocate from cached tables.
 *
 * Threading: translation runs under qcow2_state.mu only, and only while nobody holds the
 * image lock (meta_held false): whoever takes the image lock sets meta_held under mu first,
 * so holding mu with meta_held false excludes every metadata user. mu is a leaf held for a
 * few table lookups; the loop thread never waits for the image lock itself.
 */
#include "formats/qcow2-int.h"
#include "formats/qcow2-order.h"

/* Most clusters one fast request may span (a 64 KiB cluster image: 1 MiB). */
#define FAST_MAX_CLUSTERS 16

/* Extended L2: true if the subclusters of [pos, end) in @pos's cluster are all allocated. */
static bool subclusters_allocated(const struct qcow2_state *s, uint64_t bitmap, uint64_t pos,
				  uint64_t end)
{
	uint64_t into = qcow2_offset_into_cluster(s, pos);
	uint64_t last = TBLK_MIN(end - pos + into, (uint64_t)s->cluster_size) - 1;
	uint64_t lo = into / s->subcluster_size, hi = last / s->subcluster_size + 1;
	uint64_t mask = ((1ull << hi) - 1) & ~((1ull << lo) - 1);

	/* A zero bit next to an allocated one is corruption: the pool reports it. */
	return (bitmap & mask) == mask && !((bitmap >> 32) & mask);
}

/*
 * The host offset of guest [offset, offset + bytes) if it is one contiguous run of allocated
 * data clusters (owned by the active image alone for a write) whose L2 tables are cached.
 * Caller holds mu with meta_held false.
 */
static int translate_locked(struct qcow2_state *s, uint64_t offset, uint64_t bytes, bool write,
			    uint64_t *host)
{
	uint64_t pos = offset, end = offset + bytes, first = 0;
	unsigned int n = 0;

	while (pos < end) {
		uint64_t l1i = pos >> (s->l2_bits + s->cluster_bits);
		uint32_t l2i = (uint32_t)((pos >> s->cluster_bits) & (s->l2_size - 1));
		uint64_t l2off, entry, h;
		void *table;

		if (++n > FAST_MAX_CLUSTERS || l1i >= s->l1_size)
			return -EAGAIN;
		/* Odd entries are left to the pool, which reports them as corruption. */
		if (s->l1[l1i] & QCOW2_L1_RESERVED & ~QCOW2_OFLAG_COPIED)
			return -EAGAIN;
		l2off = s->l1[l1i] & QCOW2_OFFSET_MASK;
		if (!l2off || (l2off & (s->cluster_size - 1)) ||
		    qcow2_cache_peek(s->l2_cache, l2off, &table) < 0)
			return -EAGAIN;
		entry = qcow2_l2_get(s, table, l2i);
		if (qcow2_entry_type(s, entry) != QCOW2_NORMAL ||
		    (entry & QCOW2_L2_RESERVED) ||
		    (entry & QCOW2_OFFSET_MASK & (s->cluster_size - 1)) ||
		    (write && !(entry & QCOW2_OFLAG_COPIED)))
			return -EAGAIN;
		if (s->ext_l2 &&
		    !subclusters_allocated(s, qcow2_l2_get_bitmap(s, table, l2i), pos, end))
			return -EAGAIN;
		h = (entry & QCOW2_OFFSET_MASK) + qcow2_offset_into_cluster(s, pos);
		if (pos == offset)
			first = h;
		else if (h != first + (pos - offset))
			return -EAGAIN;
		pos = qcow2_start_of_cluster(s, pos) + s->cluster_size;
	}
	*host = first;
	return 0;
}

int tblk__qcow2_submit_fast(struct tblk_node *node, struct tblk_req *req, uint64_t offset)
{
	struct qcow2_state *s = node->opaque;
	struct tblk_node *data = s->data;
	bool write = req->kind == TBLK_REQ_WRITE;
	struct fast_alloc *fa = NULL;
	uint64_t host = 0;
	int ret = -EAGAIN;

	if (!s->read_only)	/* compressed writes: their turn to place */
		tblk__qcow2_order_ticket(s->order, req);
	if ((req->kind != TBLK_REQ_READ && !write) || req->bytes == 0 ||
	    !data->drv->submit_fast || (write && (s->read_only || req->flags)))
		return -EAGAIN;
	tblk_mutex_lock(&s->mu);
	if (!s->meta_held && !qcow2_dead(s) && !(write && s->corrupt)) {
		ret = translate_locked(s, offset, req->bytes, write, &host);
		/* A write into metadata goes to the pool, which refuses it and says why. */
		if (ret >= 0 && write && qcow2_overlap_hit_fast(s, host, req->bytes))
			ret = -EAGAIN;
		else if (ret < 0 && write)
			fa = qcow2_fast_alloc_plan_locked(s, req, offset);
	}
	tblk_mutex_unlock(&s->mu);
	if (fa)
		return qcow2_fast_alloc_submit(s, req, fa);
	if (ret < 0)
		return ret;
	return data->drv->submit_fast(data, req, host);
}
