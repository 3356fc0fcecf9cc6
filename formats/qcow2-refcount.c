/* SPDX-License-Identifier: MIT */
/*
 * qcow2-refcount.c - reference counts: the refcount table, refcount blocks of 1 to 64 bits
 * per entry, the first-free cluster search and refcount block allocation placed where qemu
 * places them (so that the same operations give the same image bytes), byte allocation for
 * compressed clusters, and deferred frees: a cluster whose last reference is dropped becomes
 * reusable only once the metadata that dropped it is on disk.
 *
 * Threading: everything here runs under the image lock.
 */
#include <assert.h>
#include <string.h>

#include "formats/qcow2-int.h"

static uint64_t rc_get(const struct qcow2_state *s, const void *block, uint64_t i)
{
	const uint8_t *b = block;
	unsigned int bits = 1u << s->refcount_order;

	switch (s->refcount_order) {
	case 4:
		return be16toh(((const uint16_t *)block)[i]);
	case 5:
		return be32toh(((const uint32_t *)block)[i]);
	case 6:
		return be64toh(((const uint64_t *)block)[i]);
	case 3:
		return b[i];
	default:
		/* 1, 2 and 4 bits: least significant bits first within a byte */
		return (b[i * bits / 8] >> (i * bits % 8)) & ((1u << bits) - 1);
	}
}

static void rc_set(const struct qcow2_state *s, void *block, uint64_t i, uint64_t v)
{
	uint8_t *b = block;
	unsigned int bits = 1u << s->refcount_order;

	switch (s->refcount_order) {
	case 4:
		((uint16_t *)block)[i] = htobe16((uint16_t)v);
		break;
	case 5:
		((uint32_t *)block)[i] = htobe32((uint32_t)v);
		break;
	case 6:
		((uint64_t *)block)[i] = htobe64(v);
		break;
	case 3:
		b[i] = (uint8_t)v;
		break;
	default: {
		unsigned int shift = (unsigned int)(i * bits % 8);
		uint8_t mask = (uint8_t)(((1u << bits) - 1) << shift);

		b[i * bits / 8] = (uint8_t)((b[i * bits / 8] & ~mask) | ((v << shift) & mask));
		break;
	}
	}
}

uint64_t qcow2_rc_get(const struct qcow2_state *s, const void *block, uint64_t i)
{
	return rc_get(s, block, i);
}

void qcow2_rc_set(const struct qcow2_state *s, void *block, uint64_t i, uint64_t v)
{
	rc_set(s, block, i, v);
}

int qcow2_refcount_load_table(struct qcow2_state *s, GError **errp)
{
	uint64_t bytes = (uint64_t)s->reftable_clusters << s->cluster_bits;
	int ret;

	s->reftable_size = bytes / 8;
	s->reftable = g_try_malloc(bytes);
	if (!s->reftable)
		return tblk_error_set(errp, ENOMEM, "Could not allocate refcount table");
	tblk_node_debug_event(s->node->file, TBLK_DBG_REFTABLE_LOAD);
	ret = tblk_node_pread(s->node->file, s->reftable_offset, s->reftable, bytes);
	if (ret < 0)
		return tblk_error_set_errno(errp, -ret, "Could not read refcount table");
	for (uint64_t i = 0; i < s->reftable_size; i++)
		s->reftable[i] = be64toh(s->reftable[i]);
	return 0;
}

/* The refcount block covering @cluster_index, or *block = NULL if it has none. */
static int get_block(struct qcow2_state *s, uint64_t cluster_index, void **block)
{
	uint64_t ti = cluster_index >> s->rc_block_bits, off;

	*block = NULL;
	if (ti >= s->reftable_size)
		return 0;
	off = s->reftable[ti] & ~QCOW2_REFT_RESERVED;
	if (!off)
		return 0;
	/* `check` reports this one itself, in its findings. */
	if ((off & (s->cluster_size - 1)) && s->checking)
		return qcow2_signal_corruption(s, "Refblock offset not aligned", off);
	if (off & (s->cluster_size - 1))
		return qcow2_signal_event(s, true, "Refblock offset %#" PRIx64 " unaligned "
					  "(reftable index: %#" PRIx64 ")", off, ti);
	tblk_node_debug_event(s->node->file, TBLK_DBG_REFBLOCK_LOAD);
	return qcow2_cache_get(s->rc_cache, off, false, block);
}

int qcow2_get_refcount(struct qcow2_state *s, uint64_t cluster_index, uint64_t *refcount)
{
	void *block;
	int ret = get_block(s, cluster_index, &block);

	if (ret < 0)
		return ret;
	*refcount = block ? rc_get(s, block, cluster_index & ((1ull << s->rc_block_bits) - 1)) : 0;
	return 0;
}

/*
 * The first-free search: advances free_cluster_index over used clusters until @n free ones
 * in a row were seen; does not change refcounts. Whole refcount blocks are scanned at once,
 * and a block found without a free entry is skipped when the table names it again: a hostile
 * table naming one full block thousands of times would otherwise take minutes (qemu's does),
 * now the work is bounded by the size of the blocks themselves.
 */
static int64_t alloc_noref(struct qcow2_state *s, uint64_t n)
{
	uint64_t limit = (1ull << 56) >> s->cluster_bits;	/* a multiple of per_block */
	uint64_t per_block = 1ull << s->rc_block_bits;
	g_autoptr(GHashTable) full = NULL;	/* offsets of blocks without a free entry */
	uint64_t run = 0;

	while (run < n) {
		uint64_t idx = s->free_cluster_index, first = idx & (per_block - 1), i;
		uint64_t ti = idx >> s->rc_block_bits, boff = 0;
		bool any_free = false;
		void *block;
		int ret;

		if (idx >= limit)
			return -EFBIG;
		if (ti < s->reftable_size)
			boff = s->reftable[ti] & ~QCOW2_REFT_RESERVED;
		if (!boff) {	/* no block: all free */
			i = TBLK_MIN(per_block - first, n - run);
			run += i;
			s->free_cluster_index += i;
			continue;
		}
		if (full && g_hash_table_contains(full, &boff)) {
			run = 0;
			s->free_cluster_index += per_block - first;
			continue;
		}
		ret = get_block(s, idx, &block);
		if (ret < 0) {
			s->free_cluster_index++;
			return ret;
		}
		for (i = first; i < per_block && run < n; i++) {
			bool used = rc_get(s, block, i) != 0;

			run = used ? 0 : run + 1;
			any_free |= !used;
		}
		s->free_cluster_index += i - first;
		if (!any_free && first == 0 && i == per_block) {
			if (!full)
				full = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free,
							     NULL);
			g_hash_table_add(full, g_memdup2(&boff, sizeof(boff)));
		}
	}
	return (int64_t)((s->free_cluster_index - n) << s->cluster_bits);
}

static int write_reftable_entry(struct qcow2_state *s, uint64_t index)
{
	uint64_t be = htobe64(s->reftable[index]);
	int ret;

	tblk_node_debug_event(s->node->file, TBLK_DBG_REFBLOCK_ALLOC_HOOKUP);
	ret = qcow2_meta_pwrite(s, QCOW2_OL_UNCHECKED, s->reftable_offset + index * 8, &be, 8);

	if (ret >= 0)
		ret = tblk_node_flush(s->node->file);
	return ret;
}

static int grow_reftable(struct qcow2_state *s, uint64_t cluster_index, uint64_t new_block);

/*
 * Gives @cluster_index a refcount block. Returns 0 if it had one, -EAGAIN if a new block was
 * allocated (the caller restarts its free-cluster search: the block may sit where it meant
 * to allocate), or -errno.
 */
static int alloc_refcount_block(struct qcow2_state *s, uint64_t cluster_index)
{
	uint64_t ti = cluster_index >> s->rc_block_bits;
	uint64_t mask = (1ull << s->rc_block_bits) - 1;
	int64_t nb;
	void *block;
	int ret;

	tblk_node_debug_event(s->node->file, TBLK_DBG_REFBLOCK_ALLOC);
	if (ti < s->reftable_size && (s->reftable[ti] & ~QCOW2_REFT_RESERVED))
		return 0;
	nb = alloc_noref(s, 1);
	if (nb < 0)
		return (int)nb;
	if (nb == 0) {
		qcow2_signal_fatal(s, "Preventing invalid allocation of refcount block at offset 0");
		return -EIO;
	}
	if (((uint64_t)nb >> s->cluster_bits >> s->rc_block_bits) == ti) {
		/* The new block covers itself. */
		ret = qcow2_cache_get(s->rc_cache, (uint64_t)nb, true, &block);
		if (ret < 0)
			return ret;
		qcow2_cluster_taken(s, (uint64_t)nb >> s->cluster_bits);
		rc_set(s, block, ((uint64_t)nb >> s->cluster_bits) & mask, 1);
	} else {
		ret = qcow2_update_refcount(s, (uint64_t)nb, s->cluster_size, 1);
		if (ret < 0)
			return ret;
		ret = qcow2_cache_get(s->rc_cache, (uint64_t)nb, true, &block);
		if (ret < 0)
			return ret;
	}
	tblk_node_debug_event(s->node->file, TBLK_DBG_REFBLOCK_ALLOC_WRITE);
	ret = qcow2_cache_write(s->rc_cache);
	if (ret >= 0)
		ret = tblk_node_flush(s->node->file);
	if (ret < 0)
		return ret;
	if (ti < s->reftable_size) {
		s->reftable[ti] = (uint64_t)nb;
		ret = write_reftable_entry(s, ti);
		if (ret < 0)
			s->reftable[ti] = 0;	/* as the disk may say; the block leaks */
		else
			qcow2_overlap_rb_moved(s, 0, (uint64_t)nb);
		return ret < 0 ? ret : -EAGAIN;
	}
	ret = grow_reftable(s, cluster_index, (uint64_t)nb);
	return ret < 0 ? ret : -EAGAIN;
}

/*
 * The refcount table is full: as qemu, a new, larger table and the refcount blocks that cover
 * it are placed after everything the current blocks could describe (qcow2_refcount_area in
 * qcow2-prealloc.c), the old table is freed.
 */
static int grow_reftable(struct qcow2_state *s, uint64_t cluster_index, uint64_t new_block)
{
	uint64_t per_block = 1ull << s->rc_block_bits;
	uint64_t used = TBLK_MAX(cluster_index + 1, (new_block >> s->cluster_bits) + 1);
	uint64_t blocks_used = (used + per_block - 1) / per_block;
	int64_t ret;

	tblk_node_debug_event(s->node->file, TBLK_DBG_REFTABLE_GROW);
	ret = qcow2_refcount_area(s, (blocks_used * per_block) << s->cluster_bits, 0, false,
				  cluster_index >> s->rc_block_bits, new_block);
	return ret < 0 ? (int)ret : 0;
}

int qcow2_update_refcount(struct qcow2_state *s, uint64_t offset, uint64_t len, int64_t delta)
{
	uint64_t first = offset >> s->cluster_bits;
	uint64_t last = (offset + len - 1) >> s->cluster_bits;
	uint64_t mask = (1ull << s->rc_block_bits) - 1;
	uint64_t done;
	int ret = 0;

	assert(delta != INT64_MIN);	/* the undo below negates it */
	if (len == 0)
		return 0;
	for (done = first; done <= last; done++) {
		void *block;
		uint64_t rc;

		/*
		 * A cluster without a refcount block has refcount 0: dropping a reference to it
		 * is an underflow, found without allocating blocks (and growing the table) to
		 * cover it, which for an offset far out in a corrupt image writes gigabytes.
		 */
		ret = delta < 0 ? get_block(s, done, &block) : 0;
		if (ret >= 0 && delta < 0 && !block) {
			/*
			 * TODO: qemu allocates the missing refcount block first (writing it
			 * and maybe growing the table) and then fails the same way; we do
			 * not, as noted above, so such a file differs from qemu's by them.
			 */
			ret = -EINVAL;
			break;
		}
		if (ret >= 0)
			ret = alloc_refcount_block(s, done);
		if (ret == -EAGAIN && s->free_cluster_index > first)
			s->free_cluster_index = first;
		if (ret < 0)
			break;
		ret = get_block(s, done, &block);
		if (ret < 0)
			break;
		rc = rc_get(s, block, done & mask);
		if ((delta < 0 && rc < -(uint64_t)delta) ||
		    (delta > 0 && rc > s->refcount_max - (uint64_t)delta)) {
			/* Not a corruption event in qemu either: the callers decide. */
			ret = delta < 0 ? -EINVAL : -ERANGE;
			break;
		}
		/*
		 * Compressed data goes on packing into its cluster after that cluster is freed,
		 * as qemu's does (same bytes), unless something else takes the cluster first:
		 * packing would then overwrite that data (qemu 7.2 does, and corrupts the image).
		 * qcow2_alloc_bytes() sets the offset again after its own increment.
		 */
		if (rc == 0 && delta > 0)
			qcow2_cluster_taken(s, done);
		rc += (uint64_t)delta;
		rc_set(s, block, done & mask, rc);
		qcow2_cache_mark_dirty(s->rc_cache, block);
		if (rc == 0) {
			qcow2_cache_discard(s->l2_cache, done << s->cluster_bits);
			qcow2_cache_discard(s->rc_cache, done << s->cluster_bits);
			if (done < s->free_cluster_index)
				s->free_cluster_index = done;
		}
	}
	if (ret < 0 && done > first) {
		/* Undo what was done so far. */
		uint64_t n = (done - first) << s->cluster_bits;

		(void)qcow2_update_refcount(s, first << s->cluster_bits, n, -delta);
	}
	return ret;
}

int64_t qcow2_alloc_clusters(struct qcow2_state *s, uint64_t len)
{
	uint64_t n = qcow2_size_to_clusters(s, len);
	int64_t off;
	int ret;

	if (s->nr_pending_free) {
		ret = qcow2_flush_metadata(s);
		if (ret < 0)
			return ret;
	}
	tblk_node_debug_event(s->node->file, TBLK_DBG_CLUSTER_ALLOC);
	do {
		off = alloc_noref(s, n);
		if (off < 0)
			return off;
		/*
		 * Cluster 0 holds the header: free there means the refcounts are corrupt. As in
		 * qemu, the overlap check refuses the write that would follow (an L2 table's
		 * allocation is refused by its caller). An empty allocation, for an empty
		 * snapshot table, returns the search position untouched, as qemu's, which records
		 * it in the header.
		 */
		ret = qcow2_update_refcount(s, (uint64_t)off, n << s->cluster_bits, 1);
	} while (ret == -EAGAIN);
	return ret < 0 ? ret : off;
}

int64_t qcow2_alloc_clusters_at(struct qcow2_state *s, uint64_t offset, uint64_t n)
{
	uint64_t k, rc;
	int ret;

	if (s->nr_pending_free) {
		ret = qcow2_flush_metadata(s);
		if (ret < 0)
			return ret;
	}
	do {
		for (k = 0; k < n; k++) {
			ret = qcow2_get_refcount(s, (offset >> s->cluster_bits) + k, &rc);
			if (ret < 0)
				return ret;
			if (rc)
				break;
		}
		if (k == 0)
			return 0;
		ret = qcow2_update_refcount(s, offset, k << s->cluster_bits, 1);
	} while (ret == -EAGAIN);
	return ret < 0 ? ret : (int64_t)k;
}

/*
 * Compressed data is packed byte by byte: it continues right after the previous compressed
 * cluster, spilling into the next host cluster when that one is the next free cluster; each
 * host cluster's refcount counts the compressed clusters that touch it.
 */
int64_t qcow2_alloc_bytes(struct qcow2_state *s, uint64_t len)
{
	uint64_t off = s->free_byte_offset, free_in = 0, rc;
	int ret;

	tblk_node_debug_event(s->node->file, TBLK_DBG_CLUSTER_ALLOC_BYTES);
	if (s->nr_pending_free) {
		ret = qcow2_flush_metadata(s);
		if (ret < 0)
			return ret;
	}
	if (off) {
		ret = qcow2_get_refcount(s, off >> s->cluster_bits, &rc);
		if (ret < 0)
			return ret;
		if (rc == s->refcount_max)
			off = 0;
		else
			free_in = s->cluster_size - qcow2_offset_into_cluster(s, off);
	}
	do {
		if (!off || free_in < len) {
			int64_t new = alloc_noref(s, 1);

			if (new < 0)
				return new;
			if (new == 0) {
				qcow2_signal_fatal(s, "Preventing invalid allocation of compressed "
						   "cluster at offset 0");
				return -EIO;
			}
			if (!off || TBLK_ALIGN_UP(off, s->cluster_size) != (uint64_t)new) {
				off = (uint64_t)new;
				free_in = s->cluster_size;
			} else {
				free_in += s->cluster_size;
			}
		}
		ret = qcow2_update_refcount(s, off, len, 1);
		if (ret < 0)
			off = 0;
	} while (ret == -EAGAIN);
	if (ret < 0)
		return ret;
	s->free_byte_offset = qcow2_offset_into_cluster(s, off + len) ? off + len : 0;
	return (int64_t)off;
}

/*
 * qemu's free of clusters [first, c) was undone when cluster c failed, but in a guest
 * discard (or zeroing) those whose refcount had reached 0 on the way are still discarded
 * in the file, while their refcount stays: so are ours, for the same file bytes, except any
 * that the tables place metadata in. Under meta, like the metadata writes.
 */
static void discard_undone(struct qcow2_state *s, uint64_t first, uint64_t c,
			   enum qcow2_discard_type t)
{
	for (; c > first && t == QCOW2_DISCARD_REQUEST && s->pass_discard[t]; first++) {
		uint64_t rc;

		uint64_t off = first << s->cluster_bits;

		/* A hostile entry may name a metadata cluster: that one is kept (qemu's is not). */
		if (qcow2_get_refcount(s, first, &rc) >= 0 && rc == 1 &&
		    !qcow2_overlap_find(s, s->ol.built ? &s->ol : NULL, 0, off, s->cluster_size))
			(void)tblk_node_pdiscard(s->node->file, off, s->cluster_size);
	}
}

int qcow2_free_clusters(struct qcow2_state *s, uint64_t offset, uint64_t len,
			enum qcow2_discard_type t)
{
	uint64_t first = offset >> s->cluster_bits;
	uint64_t last = (offset + len - 1) >> s->cluster_bits;

	tblk_node_debug_event(s->node->file, TBLK_DBG_CLUSTER_FREE);
	/*
	 * qemu drops the references at once, we when nothing on disk uses the clusters any
	 * more; what qemu finds then is found now: a bad refcount block (a corruption event),
	 * a refcount already 0. The failure is told and nothing is freed, as in qemu, whose
	 * callers go on.
	 * TODO: a cluster freed twice before the batch is applied (two L2 entries naming it) is
	 * found only then, at the next metadata flush, where qemu tells it at the second free;
	 * finding it here needs a lookup in the batch per cluster freed.
	 */
	for (uint64_t c = first; c <= last && !s->checking; c++) {
		void *block;
		int ret = get_block(s, c, &block);

		if (ret >= 0 && (!block || !rc_get(s, block, c & ((1ull << s->rc_block_bits) - 1))))
			ret = -EINVAL;
		if (ret < 0) {
			tblk__warn("verbatim: qcow2_free_clusters failed: %s\n", g_strerror(-ret));
			discard_undone(s, first, c, t);
			return 0;
		}
	}
	for (uint64_t c = first; c <= last; c++) {
		if (s->nr_pending_free == s->pending_free_cap) {
			s->pending_free_cap = TBLK_MAX(s->pending_free_cap * 2, (size_t)64);
			s->pending_free = g_renew(uint64_t, s->pending_free, s->pending_free_cap);
		}
		s->pending_free[s->nr_pending_free++] = (c << s->cluster_bits) |
							(s->pass_discard[t] ? 1 : 0);
	}
	return 0;
}

int qcow2_free_l2_entry(struct qcow2_state *s, uint64_t entry, enum qcow2_discard_type t)
{
	switch (qcow2_entry_type(s, entry)) {
	case QCOW2_COMPRESSED: {
		uint64_t off = entry & s->coffset_mask;
		uint64_t sectors = ((entry >> s->csize_shift) & s->csize_mask) + 1;
		uint64_t end = (off & ~511ull) + sectors * 512;

		/* Not valid with an external data file: qemu frees nothing for it. */
		if (s->data != s->node->file)
			return 0;

		return qcow2_free_clusters(s, off, end - off, t);
	}
	case QCOW2_NORMAL:
	case QCOW2_ZERO_ALLOC:
		if (s->data != s->node->file)
			return 0;	/* external data file: no refcounts for data */
		/* Not fatal in qemu: the entry goes, the cluster it named stays as it was. */
		if (entry & QCOW2_OFFSET_MASK & (s->cluster_size - 1)) {
			(void)qcow2_signal_event(s, false, "Cannot free unaligned cluster %#" PRIx64,
						 (uint64_t)(entry & QCOW2_OFFSET_MASK));
			return 0;
		}
		return qcow2_free_clusters(s, entry & QCOW2_OFFSET_MASK, s->cluster_size, t);
	default:
		return 0;
	}
}

int qcow2_apply_pending_frees(struct qcow2_state *s)
{
	int ret = 0;

	for (size_t i = 0; i < s->nr_pending_free && !qcow2_dead(s); i++) {
		uint64_t off = s->pending_free[i] & ~1ull, rc;

		ret = qcow2_update_refcount(s, off, 1, -1);
		/*
		 * As qemu's frees, which are not undone when they fail: the failure is told
		 * (qemu prints it itself) and the next cluster is freed. `check` frees only
		 * what its repair of the refcounts allows.
		 */
		if (ret < 0 && !s->checking) {
			tblk__warn("verbatim: qcow2_free_clusters failed: %s\n", g_strerror(-ret));
			ret = 0;
			continue;
		}
		if (ret >= 0 && (s->pending_free[i] & 1))
			ret = qcow2_get_refcount(s, off >> s->cluster_bits, &rc);
		/* Discarding in the file is advisory: its failure is not an error. */
		if (ret >= 0 && (s->pending_free[i] & 1) && rc == 0)
			(void)tblk_node_pdiscard(s->node->file, off, s->cluster_size);
		if (ret < 0)
			break;
	}
	s->nr_pending_free = 0;
	return qcow2_dead(s) ? -EIO : ret;
}
