/* SPDX-License-Identifier: MIT */
/*
 * qcow2-backing.c - what qemu-img rebase and commit change in a qcow2 image besides guest
 * data: the backing file name and format recorded in the header, and emptying an image
 * after its data was committed to its backing file.
 *
 * Emptying leaves the file as qemu 7.2 leaves it, so images stay byte-identical: a v3 image
 * without snapshots, bitmaps or external data file is reset to header, refcount table, one
 * refcount block and a zeroed L1 table of the old size, and the file cut after them; any
 * other image has every cluster unmapped (entries cleared, clusters freed, L2 tables
 * allocated where the L1 table had none, as qemu's discard does).
 *
 * Threading: both run drained (tblk_blk_change_backing_file, tblk_blk_make_empty), under the
 * image lock.
 */
#include <string.h>

#include "formats/qcow2-int.h"

static int change_backing_locked(struct qcow2_state *s, const char *file, const char *fmt)
{
	char *old_file = s->backing_file, *old_fmt = s->backing_fmt;
	int ret;

	/* A raw external data file is the whole image: a backing file would not show. */
	if (file && (s->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW))
		return -EINVAL;
	if (file && strlen(file) > QCOW2_MAX_BACKING_NAME)
		return -EINVAL;
	s->backing_file = file ? g_strdup(file) : NULL;
	s->backing_fmt = fmt ? g_strdup(fmt) : NULL;
	ret = qcow2_header_write(s);
	if (ret < 0) {
		g_free(s->backing_file);
		g_free(s->backing_fmt);
		s->backing_file = old_file;
		s->backing_fmt = old_fmt;
		return ret;
	}
	g_free(old_file);
	g_free(old_fmt);
	return tblk_node_flush(s->node->file);
}

int tblk__qcow2_change_backing_file(struct tblk_node *node, const char *backing_file,
				    const char *backing_fmt)
{
	struct qcow2_state *s = node->opaque;
	int ret;

	qcow2_lock(s);
	ret = s->corrupt ? -EIO : change_backing_locked(s, backing_file, backing_fmt);
	qcow2_unlock(s);
	return ret;
}

/* ---------------------------------------------------------------- emptying */

/* The reset image: clusters 0 header, 1 refcount table, 2 refcount block, 3.. the L1 table. */
static int reset_layout(struct qcow2_state *s, uint64_t l1_clusters)
{
	uint64_t cs = s->cluster_size, n = 3 + l1_clusters;
	struct tblk_node *f = s->node->file;
	g_autofree uint8_t *buf = g_malloc0(cs);
	GError *err = NULL;
	int ret;

	/* Dirty while the refcounts say nothing true: a crash leaves a repairable image. */
	s->incompat |= QCOW2_INCOMPAT_DIRTY;
	ret = qcow2_header_write(s);
	if (ret >= 0)
		ret = tblk_node_flush(f);
	if (ret >= 0 && l1_clusters)
		ret = tblk_node_pwrite_zeroes(f, s->l1_offset, l1_clusters * cs, 0);
	if (ret >= 0)
		ret = tblk_node_pwrite_zeroes(f, cs, (n - 1) * cs, 0);
	if (ret < 0)
		return ret;
	memset(s->l1, 0, (size_t)s->l1_size * 8);
	s->l1_offset = 3 * cs;
	s->reftable_offset = cs;
	s->reftable_clusters = 1;
	s->reftable_size = cs / 8;
	g_free(s->reftable);
	s->reftable = g_new0(uint64_t, s->reftable_size);
	s->reftable[0] = 2 * cs;
	qcow2_overlap_invalidate(s);
	s->free_cluster_index = n;
	s->free_byte_offset = 0;
	s->nr_pending_free = 0;

	*(uint64_t *)buf = htobe64(2 * cs);
	ret = tblk_node_pwrite(f, cs, buf, 8, 0);
	memset(buf, 0, 8);
	for (uint64_t i = 0; ret >= 0 && i < n; i++)
		qcow2_rc_set(s, buf, i, 1);
	if (ret >= 0)
		ret = tblk_node_pwrite(f, 2 * cs, buf, cs, 0);
	if (ret >= 0)
		ret = tblk_node_flush(f);
	if (ret < 0)
		return ret;
	s->incompat &= ~QCOW2_INCOMPAT_DIRTY;
	ret = qcow2_header_write(s);
	if (ret >= 0)
		ret = tblk_node_flush(f);
	if (ret >= 0 && f->drv->truncate && f->drv->truncate(f, n * cs, NULL, &err) < 0) {
		g_clear_error(&err);
		ret = -EIO;
	}
	return ret;
}

/* Clears every L2 entry, freeing what they pointed to. */
static int unmap_all(struct qcow2_state *s)
{
	for (uint64_t off = 0; off < s->size; off += s->cluster_size) {
		uint64_t entry, bitmap;
		uint32_t l2i;
		void *table;
		int ret = qcow2_get_l2_for_write(s, off, &table, &l2i);

		if (ret < 0)
			return ret;
		entry = qcow2_l2_get(s, table, l2i);
		bitmap = qcow2_l2_get_bitmap(s, table, l2i);
		if (!entry && !bitmap)
			continue;
		qcow2_l2_set(s, table, l2i, 0, 0);
		qcow2_cache_mark_dirty(s->l2_cache, table);
		ret = qcow2_free_l2_entry(s, entry, QCOW2_DISCARD_SNAPSHOT);
		if (ret < 0)
			return ret;
	}
	return qcow2_flush_metadata(s);
}

int tblk__qcow2_make_empty(struct tblk_node *node)
{
	struct qcow2_state *s = node->opaque;
	uint64_t l1_clusters;
	int ret;

	qcow2_lock(s);
	if (s->corrupt) {
		ret = -EIO;
		goto out;
	}
	l1_clusters = ((uint64_t)s->l1_size * 8 + s->cluster_size - 1) >> s->cluster_bits;
	if (s->version >= 3 && !s->nb_snapshots && !s->has_bitmaps_ext &&
	    3 + l1_clusters <= (1ull << s->rc_block_bits) &&
	    !(s->incompat & QCOW2_INCOMPAT_DATA_FILE)) {
		/* Everything cached is about to be stale: write it out, then forget it. */
		ret = qcow2_flush_metadata(s);
		if (ret >= 0) {
			qcow2_cache_clear(s->l2_cache);
			qcow2_cache_clear(s->rc_cache);
			ret = reset_layout(s, l1_clusters);
		}
	} else {
		ret = unmap_all(s);
	}
out:
	qcow2_unlock(s);
	return ret;
}
