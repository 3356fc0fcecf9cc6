/* SPDX-License-Identifier: MIT */
/*
 * qcow2-resize.c - changing the virtual size of a qcow2 image the way qemu 7.2 does, so that
 * the same resize gives the same file: growing makes the L1 table exactly as large as the new
 * size needs (moved to the first free clusters); shrinking unmaps every cluster past the new
 * end (L2 tables are allocated for that where missing, as qemu does), zeroes the L1 entries
 * past the end without making the table smaller, drops refcount blocks that count nothing,
 * and cuts the file after its last used cluster. Preallocation of the new area is in
 * qcow2-prealloc.c. Persistent bitmaps are resized with the image as qemu 7.2 resizes them
 * (in memory, stored at close), unless one of them is inconsistent.
 *
 * Threading: the driver's truncate op runs drained (tblk_blk_truncate), under the image lock.
 */
#include <string.h>

#include "formats/qcow2-bitmap.h"

int qcow2_prealloc_mode(const char *prealloc, GError **errp)
{
	if (!prealloc || !strcmp(prealloc, "off"))
		return QCOW2_PREALLOC_OFF;
	if (!strcmp(prealloc, "metadata"))
		return QCOW2_PREALLOC_METADATA;
	if (!strcmp(prealloc, "falloc"))
		return QCOW2_PREALLOC_FALLOC;
	if (!strcmp(prealloc, "full"))
		return QCOW2_PREALLOC_FULL;
	return tblk_error_set(errp, ENOTSUP, "Unsupported preallocation mode '%s'", prealloc);
}

/* Unmaps the clusters of [offset, offset + bytes) entirely (no zero flag): qemu's full discard. */
static int discard_full(struct qcow2_state *s, uint64_t offset, uint64_t bytes)
{
	uint64_t n = qcow2_size_to_clusters(s, bytes);

	while (n > 0) {
		uint32_t l2i, k;
		void *table;
		int ret = qcow2_get_l2_for_write(s, offset, &table, &l2i);

		if (ret < 0)
			return ret;
		k = (uint32_t)TBLK_MIN(n, (uint64_t)(s->l2_size - l2i));
		for (uint32_t i = 0; i < k; i++) {
			uint64_t e = qcow2_l2_get(s, table, l2i + i);
			uint64_t b = qcow2_l2_get_bitmap(s, table, l2i + i);

			if (!e && !b)
				continue;
			qcow2_l2_set(s, table, l2i + i, 0, 0);
			qcow2_cache_mark_dirty(s->l2_cache, table);
			ret = qcow2_free_l2_entry(s, e, QCOW2_DISCARD_ALWAYS);
			if (ret < 0)
				return ret;
		}
		offset += (uint64_t)k << s->cluster_bits;
		n -= k;
	}
	return 0;
}

/* Zeroes the L1 entries from @new_size on (on disk first) and frees their L2 tables. */
static int shrink_l1(struct qcow2_state *s, uint64_t new_size)
{
	uint64_t len;
	g_autofree uint8_t *zero = NULL;
	int ret;

	if (new_size >= s->l1_size)
		return 0;
	len = ((uint64_t)s->l1_size - new_size) * 8;
	zero = g_malloc0(len);
	ret = qcow2_meta_pwrite(s, QCOW2_OL_ACTIVE_L1, s->l1_offset + new_size * 8, zero, len);
	if (ret >= 0)
		ret = tblk_node_flush(s->node->file);
	if (ret < 0) {
		memset(s->l1 + new_size, 0, len);
		return ret;
	}
	for (uint64_t i = s->l1_size; i-- > new_size;) {
		uint64_t off = s->l1[i] & QCOW2_OFFSET_MASK;

		qcow2_overlap_l2_moved(s, s->l1[i], 0);
		s->l1[i] = 0;
		if (!off)
			continue;
		ret = qcow2_free_clusters(s, off, s->cluster_size, QCOW2_DISCARD_ALWAYS);
		if (ret < 0)
			return ret;
	}
	return 0;
}

/* True if refcount block @block counts nothing but (optionally) itself at entry @self. */
static bool refblock_unused(const struct qcow2_state *s, const uint8_t *block, int64_t self)
{
	unsigned int bits = 1u << s->refcount_order;
	uint64_t skip_from = 0, skip_to = 0;
	uint8_t mask = 0;

	if (self >= 0) {
		uint64_t bit = (uint64_t)self * bits;

		skip_from = bit / 8;
		skip_to = bits >= 8 ? skip_from + bits / 8 : skip_from + 1;
		/* Entries narrower than a byte sit least significant bits first. */
		mask = bits >= 8 ? 0xff : (uint8_t)(((1u << bits) - 1) << (bit % 8));
	}
	for (uint64_t i = 0; i < s->cluster_size; i++) {
		uint8_t b = block[i];

		if (self >= 0 && i >= skip_from && i < skip_to)
			b &= (uint8_t)~mask;
		if (b)
			return false;
	}
	return true;
}

/* Drops the refcount blocks that count no cluster (but possibly themselves). */
static int shrink_reftable(struct qcow2_state *s)
{
	uint64_t bytes = s->reftable_size * 8;
	g_autofree uint64_t *tmp = g_new0(uint64_t, s->reftable_size);
	int ret;

	for (uint64_t i = 0; i < s->reftable_size; i++) {
		uint64_t off = s->reftable[i] & ~QCOW2_REFT_RESERVED;
		int64_t self = -1;
		void *block;

		if (!off)
			continue;
		if (off & (s->cluster_size - 1))
			return qcow2_signal_corruption(s, "Refblock offset not aligned", off);
		ret = qcow2_cache_get(s->rc_cache, off, false, &block);
		if (ret < 0)
			return ret;
		if ((off >> s->cluster_bits >> s->rc_block_bits) == i)
			self = (int64_t)((off >> s->cluster_bits) &
					 ((1ull << s->rc_block_bits) - 1));
		if (!refblock_unused(s, block, self))
			tmp[i] = htobe64(s->reftable[i]);
	}
	ret = qcow2_meta_pwrite(s, QCOW2_OL_REFTABLE, s->reftable_offset, tmp, bytes);
	if (ret >= 0)
		ret = tblk_node_flush(s->node->file);
	for (uint64_t i = 0; i < s->reftable_size; i++) {
		uint64_t off = s->reftable[i] & ~QCOW2_REFT_RESERVED;

		if (!off || tmp[i])
			continue;
		qcow2_overlap_rb_moved(s, s->reftable[i], 0);
		s->reftable[i] = 0;
		qcow2_cache_discard(s->rc_cache, off);
		if (ret >= 0)
			(void)tblk_node_pdiscard(s->node->file, off, s->cluster_size);
	}
	return ret;
}

int qcow2_last_cluster(struct qcow2_state *s, uint64_t file_size, uint64_t *last)
{
	for (uint64_t i = qcow2_size_to_clusters(s, file_size); i-- > 0;) {
		uint64_t rc;
		int ret = qcow2_get_refcount(s, i, &rc);

		if (ret < 0)
			return ret;
		if (rc) {
			*last = i;
			return 0;
		}
	}
	return qcow2_signal_corruption(s, "There are no references in the refcount table", 0);
}

/* Cuts the file after its last used cluster. Failing to is not an error (qemu warns). */
static void truncate_tail(struct qcow2_state *s)
{
	struct tblk_node *f = s->node->file;
	int64_t flen = tblk_node_getlength(f);
	uint64_t last;
	GError *err = NULL;

	if (flen < 0 || qcow2_last_cluster(s, (uint64_t)flen, &last) < 0)
		return;
	if ((last + 1) << s->cluster_bits >= (uint64_t)flen || !f->drv->truncate)
		return;
	if (f->drv->truncate(f, (last + 1) << s->cluster_bits, NULL, &err) < 0)
		g_clear_error(&err);
}

static int shrink(struct qcow2_state *s, uint64_t size, uint64_t new_l1, GError **errp)
{
	uint64_t start = TBLK_ALIGN_UP(size, s->cluster_size);
	int ret = 0;

	if (start < s->size)
		ret = discard_full(s, start, s->size - start);
	if (ret < 0)
		return tblk_error_set_errno(errp, -ret, "Failed to discard cropped clusters");
	ret = shrink_l1(s, new_l1);
	if (ret < 0)
		return tblk_error_set_errno(errp, -ret, "Failed to reduce the number of L2 tables");
	/* Refcounts must show the frees before unused refcount blocks can be found. */
	ret = qcow2_flush_metadata(s);
	if (ret >= 0)
		ret = shrink_reftable(s);
	if (ret < 0)
		return tblk_error_set_errno(errp, -ret, "Failed to discard unused refblocks");
	truncate_tail(s);
	return 0;
}

static int write_size(struct qcow2_state *s, uint64_t size)
{
	uint64_t be = htobe64(size);
	int ret = tblk_node_pwrite(s->node->file, 24, &be, 8, 0);

	return ret < 0 ? ret : tblk_node_flush(s->node->file);
}

int qcow2_truncate_locked(struct qcow2_state *s, uint64_t size, int mode, GError **errp)
{
	uint64_t old = s->size;
	uint64_t new_l1 = (size + qcow2_l1_span(s) - 1) / qcow2_l1_span(s);
	GPtrArray *bitmaps = NULL;
	int ret;

	if (s->corrupt)
		return tblk_error_set(errp, EIO, "Image is corrupt");
	if (s->nb_snapshots && s->version < 3)
		return tblk_error_set(errp, ENOTSUP, "Can't resize a v2 image which has snapshots");
	/* The bitmaps in memory follow the new size and are stored with it at close. */
	ret = qcow2_bitmaps_resize_prepare(s, size, &bitmaps, errp);
	if (ret < 0)
		return ret;
	if (size < old) {
		if (mode != QCOW2_PREALLOC_OFF) {
			ret = tblk_error_set(errp, EINVAL, "Preallocation can't be used for "
					     "shrinking an image");
			goto out_bitmaps;
		}
		ret = shrink(s, size, new_l1, errp);
		if (ret < 0)
			goto out_bitmaps;
	} else {
		ret = qcow2_grow_l1(s, new_l1, true);
		if (ret < 0) {
			tblk_error_set_errno(errp, -ret, "Failed to grow the L1 table");
			goto out_bitmaps;
		}
		if ((s->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW) && mode == QCOW2_PREALLOC_OFF)
			mode = QCOW2_PREALLOC_METADATA;
	}
	ret = qcow2_prealloc(s, old, size, mode, errp);
	if (ret < 0)
		goto out_bitmaps;
	if (mode != QCOW2_PREALLOC_OFF) {
		ret = qcow2_flush_metadata(s);
		if (ret < 0) {
			tblk_error_set_errno(errp, -ret, "Failed to flush the preallocated area to "
					     "disk");
			goto out_bitmaps;
		}
	}
	ret = write_size(s, size);
	if (ret < 0) {
		tblk_error_set_errno(errp, -ret, "Failed to update the image size");
		goto out_bitmaps;
	}
	s->size = size;
	qcow2_bitmaps_resize_commit(s, bitmaps);
	return 0;
out_bitmaps:
	g_ptr_array_free(bitmaps, TRUE);
	return ret;
}

int tblk__qcow2_truncate(struct tblk_node *node, uint64_t size, const char *prealloc,
			 GError **errp)
{
	struct qcow2_state *s = node->opaque;
	int mode = qcow2_prealloc_mode(prealloc, errp);
	int ret;

	if (mode < 0)
		return mode;
	if (size % 512)
		return tblk_error_set(errp, EINVAL, "The new size must be a multiple of %u", 512);
	qcow2_lock(s);
	ret = qcow2_truncate_locked(s, size, mode, errp);
	qcow2_unlock(s);
	return ret;
}
