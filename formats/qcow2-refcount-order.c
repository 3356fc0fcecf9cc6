/* SPDX-License-Identifier: MIT */
/*
 * qcow2-refcount-order.c - changing the refcount width of an image (amend refcount_bits) as
 * qemu 7.2 does: walks over the current refcount table allocating a new refcount block (first
 * free, in the current structures) for every range of the new width that counts something,
 * then a new refcount table, repeating until a walk allocates nothing; a last walk writes the
 * new blocks, then the new table, the header switches to them, and the old blocks and table
 * are freed in the new structures.
 *
 * Threading: under the image lock, drained (amend).
 */
#include <string.h>

#include "formats/qcow2-int.h"

struct new_rc {
	unsigned int order;
	uint64_t per_block;		/* entries per new refcount block */
	uint64_t *table;		/* new refcount table, host order */
	uint64_t size;			/* its entries */
	uint64_t index;			/* block being filled */
	uint8_t *buf;			/* the block being filled (write pass), else NULL */
	bool allocated;			/* the pass allocated something */
	unsigned int walk, walks;	/* progress: this walk of how many expected */
};

static void set_rc(unsigned int order, uint8_t *b, uint64_t i, uint64_t v)
{
	unsigned int bits = 1u << order;

	if (order >= 3) {
		for (unsigned int k = 0; k < bits / 8; k++)
			b[i * bits / 8 + k] = (uint8_t)(v >> (bits - 8 - 8 * k));
		return;
	}
	b[i * bits / 8] |= (uint8_t)(v << (i * bits % 8));
}

/* A new refcount block is complete: allocate its cluster, or write it. */
static int finish_block(struct qcow2_state *s, struct new_rc *n, bool empty, GError **errp)
{
	if (n->buf) {
		int ret = 0;

		if (n->index < n->size && n->table[n->index])
			ret = qcow2_meta_pwrite(s, 0, n->table[n->index], n->buf,
						s->cluster_size);
		memset(n->buf, 0, s->cluster_size);
		return ret < 0 ? tblk_error_set_errno(errp, -ret, "Failed to write refblock") : 0;
	}
	if (empty)
		return 0;
	if (n->index >= n->size) {
		uint64_t size = TBLK_ALIGN_UP(n->index + 1, s->cluster_size / 8);

		if (size > QCOW2_MAX_REFTABLE_BYTES / 8)
			return tblk_error_set(errp, ENOTSUP, "This operation would make the "
					      "refcount table grow beyond the maximum size "
					      "supported by QEMU, aborting");
		n->table = g_renew(uint64_t, n->table, size);
		memset(n->table + n->size, 0, (size - n->size) * 8);
		n->size = size;
	}
	if (!n->table[n->index]) {
		int64_t off = qcow2_alloc_clusters(s, s->cluster_size);

		if (off < 0)
			return tblk_error_set_errno(errp, (int)-off, "Failed to allocate refblock");
		n->table[n->index] = (uint64_t)off;
		n->allocated = true;
	}
	return 0;
}

/*
 * The refcount block the old table names at index @ti, or *block = NULL if it has none
 * (everything there counts 0). Valid until the next allocation.
 */
static int old_block(struct qcow2_state *s, uint64_t ti, const void **block)
{
	uint64_t rc;
	void *b;
	int ret;

	*block = NULL;
	if (ti >= s->reftable_size || !(s->reftable[ti] & ~QCOW2_REFT_RESERVED))
		return 0;
	/* Validates the table entry (a misaligned block is a corruption). */
	ret = qcow2_get_refcount(s, ti << s->rc_block_bits, &rc);
	if (ret < 0)
		return ret;
	ret = qcow2_cache_get(s->rc_cache, s->reftable[ti] & ~QCOW2_REFT_RESERVED, false, &b);
	if (ret < 0)
		return ret;
	*block = b;
	return 0;
}

/*
 * Copies @count refcounts from entry @bi of old @block (NULL: zeroes) to new entries from
 * @ni on, checking that they fit. Sets *empty to false if one is not zero.
 */
static int copy_run(struct qcow2_state *s, struct new_rc *n, const void *block, uint64_t ti,
		    uint64_t bi, uint64_t ni, uint64_t count, bool *empty, GError **errp)
{
	unsigned int bits = 1u << n->order;

	if (!block)
		return 0;
	for (uint64_t k = 0; k < count; k++) {
		uint64_t rc = qcow2_rc_get(s, block, bi + k);

		if (!rc)
			continue;
		if (bits < 64 && rc >> bits)
			return tblk_error_set(errp, EINVAL, "Cannot decrease refcount entry width "
					      "to %u bits: Cluster at offset %#" PRIx64 " has a "
					      "refcount of %" PRIu64, bits,
					      ((ti << s->rc_block_bits) + bi + k) << s->cluster_bits,
					      rc);
		if (n->buf)
			set_rc(n->order, n->buf, ni + k, rc);
		*empty = false;
	}
	return 0;
}

/*
 * One pass over the old refcounts, new block by new block. Allocating a new block (in
 * finish_block) can change the old structures, so the old block is looked up again after
 * each new block boundary, and only there: between two boundaries nothing is allocated.
 * Ranges without an old block are skipped whole (a 64 KiB-cluster table names 256 M
 * clusters, nearly all without a block).
 */
static int walk(struct qcow2_state *s, struct new_rc *n, GError **errp)
{
	uint64_t old_per_block = 1ull << s->rc_block_bits, ni = 0;
	bool empty = true;
	int ret;

	n->index = 0;
	for (uint64_t ti = 0; ti < s->reftable_size; ti++) {
		qcow2_amend_report(s, QCOW2_AMEND_REFCOUNT_ORDER, n->walk * s->reftable_size + ti,
				   n->walks * s->reftable_size);
		for (uint64_t bi = 0; bi < old_per_block;) {
			const void *block;
			uint64_t count;

			if (ni >= n->per_block) {
				ret = finish_block(s, n, empty, errp);
				if (ret < 0)
					return ret;
				n->index++;
				ni = 0;
				empty = true;
			}
			ret = old_block(s, ti, &block);
			if (ret < 0)
				return tblk_error_set_errno(errp, -ret, "Failed to read refcounts");
			count = TBLK_MIN(old_per_block - bi, n->per_block - ni);
			ret = copy_run(s, n, block, ti, bi, ni, count, &empty, errp);
			if (ret < 0)
				return ret;
			bi += count;
			ni += count;
		}
	}
	if (ni > 0) {
		ret = finish_block(s, n, empty, errp);
		if (ret < 0)
			return ret;
		n->index++;
	}
	qcow2_amend_report(s, QCOW2_AMEND_REFCOUNT_ORDER, (n->walk + 1) * s->reftable_size,
			   n->walks * s->reftable_size);
	return 0;
}

/* Switches the header and the state to the new structures, frees the old ones. */
static int switch_to(struct qcow2_state *s, struct new_rc *n, uint64_t table_off,
		     GError **errp)
{
	uint64_t old_off = s->reftable_offset, old_size = s->reftable_size;
	uint32_t old_clusters = s->reftable_clusters;
	unsigned int old_order = s->refcount_order;
	uint64_t *old = s->reftable;
	int ret;

	s->refcount_order = n->order;
	s->reftable_offset = table_off;
	s->reftable_clusters = (uint32_t)qcow2_size_to_clusters(s, n->size * 8);
	ret = qcow2_header_write(s);
	if (ret < 0) {
		s->refcount_order = old_order;
		s->reftable_offset = old_off;
		s->reftable_clusters = old_clusters;
		return tblk_error_set_errno(errp, -ret, "Failed to update the qcow2 header");
	}
	for (uint64_t i = 0; i < old_size; i++)
		if (old[i] & ~QCOW2_REFT_RESERVED)
			qcow2_cache_discard(s->rc_cache, old[i] & ~QCOW2_REFT_RESERVED);
	s->reftable = g_steal_pointer(&n->table);
	s->reftable_size = n->size;
	qcow2_set_geometry(s);
	qcow2_overlap_invalidate(s);
	for (uint64_t i = 0; i < old_size && ret >= 0; i++)
		if (old[i] & ~QCOW2_REFT_RESERVED)
			ret = qcow2_update_refcount(s, old[i] & ~QCOW2_REFT_RESERVED,
						    s->cluster_size, -1);
	if (ret >= 0)
		ret = qcow2_update_refcount(s, old_off, old_size * 8, -1);
	g_free(old);
	if (ret < 0)
		return tblk_error_set_errno(errp, -ret, "Failed to free the old refcount "
					    "structures");
	return 0;
}

int qcow2_change_refcount_order(struct qcow2_state *s, unsigned int order, GError **errp)
{
	struct new_rc n = { .order = order };
	uint64_t table_off = 0, table_alloc = 0;
	int ret;

	n.per_block = 1ull << (s->cluster_bits + 3 - order);
	ret = qcow2_flush_metadata(s);
	if (ret < 0)
		return tblk_error_set_errno(errp, -ret, "Failed to flush metadata");
	do {
		n.allocated = false;
		/* qemu expects an allocating walk, one finding nothing more, and the write */
		n.walks = TBLK_MAX(n.walk + 2, 3);
		ret = walk(s, &n, errp);
		n.walk++;
		if (ret < 0)
			goto out;
		if (n.allocated) {
			if (table_off) {
				ret = qcow2_update_refcount(s, table_off, table_alloc * 8, -1);
				if (ret < 0)
					goto out_errno;
			}
			int64_t off = qcow2_alloc_clusters(s, n.size * 8);

			if (off < 0) {
				ret = tblk_error_set_errno(errp, (int)-off, "Failed to allocate the "
							   "new reftable");
				goto out;
			}
			table_off = (uint64_t)off;
			table_alloc = n.size;
		}
	} while (n.allocated);
	n.buf = g_malloc0(s->cluster_size);
	n.walks = n.walk + 1;
	ret = walk(s, &n, errp);
	if (ret < 0)
		goto out;
	for (uint64_t i = 0; i < n.size; i++)
		n.table[i] = htobe64(n.table[i]);
	ret = qcow2_meta_pwrite(s, 0, table_off, n.table, n.size * 8);
	for (uint64_t i = 0; i < n.size; i++)
		n.table[i] = be64toh(n.table[i]);
	if (ret < 0) {
		ret = tblk_error_set_errno(errp, -ret, "Failed to write the new reftable");
		goto out;
	}
	ret = qcow2_cache_write(s->rc_cache);
	if (ret >= 0)
		ret = tblk_node_flush(s->node->file);
	if (ret < 0)
		goto out_errno;
	ret = switch_to(s, &n, table_off, errp);
	goto out;
out_errno:
	ret = tblk_error_set_errno(errp, -ret, "Failed to flush the refblock cache");
out:
	g_free(n.buf);
	g_free(n.table);
	return ret;
}
