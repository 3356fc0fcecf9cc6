/* SPDX-License-Identifier: MIT */
/*
 * qcow2-overlap.c - which metadata a write into the image file would overwrite, judged from
 * the structures in memory alone (not the refcounts), as qemu 7.2's default overlap check
 * ("cached": every kind but the L2 tables of snapshots) judges it, kind for kind in its order.
 * Its users refuse such a write and mark the image corrupt. A user that asks many times
 * while the tables stay put (the check's repairs) builds an index first: sorted, merged
 * ranges searched in log time instead of every L1 and refcount table entry each time.
 *
 * Threading: called under the image lock; reads only [meta] fields.
 */
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2-int.h"

static int cmp_range(const void *a, const void *b)
{
	const struct qcow2_range *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

/* Whether [a, a + alen) and [b, b + blen) share a byte; the ends saturate. */
static bool ranges_meet(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	uint64_t aend = a + alen < a ? UINT64_MAX : a + alen;
	uint64_t bend = b + blen < b ? UINT64_MAX : b + blen;

	return alen && blen && a < bend && b < aend;
}

/* Sorts and merges @n ranges into disjoint ones, in place; returns how many remain. */
static size_t merge_ranges(struct qcow2_range *r, size_t n)
{
	size_t out = 0;

	qsort(r, n, sizeof(*r), cmp_range);
	for (size_t i = 0; i < n; i++) {
		if (out && r[i].start <= r[out - 1].end) {
			r[out - 1].end = TBLK_MAX(r[out - 1].end, r[i].end);
			continue;
		}
		r[out++] = r[i];
	}
	return out;
}

static void add_range(struct qcow2_range *r, size_t *n, uint64_t start, uint64_t len)
{
	if (!len)
		return;
	r[*n].start = start;
	r[*n].end = start + len < start ? UINT64_MAX : start + len;
	(*n)++;
}

int qcow2_overlap_index_build(const struct qcow2_state *s, struct qcow2_overlap_index *ix)
{
	size_t n = 0;

	memset(ix, 0, sizeof(*ix));
	ix->l2 = g_try_new(struct qcow2_range, TBLK_MAX((size_t)s->l1_size, (size_t)1));
	ix->rb = g_try_new(struct qcow2_range, TBLK_MAX((size_t)s->reftable_size, (size_t)1));
	ix->snap = g_try_new(struct qcow2_range, TBLK_MAX((size_t)s->nb_snapshots, (size_t)1));
	if (!ix->l2 || !ix->rb || !ix->snap) {
		qcow2_overlap_index_destroy(ix);
		return -ENOMEM;
	}
	for (uint32_t i = 0; s->l1 && i < s->l1_size; i++)
		if (s->l1[i] & QCOW2_OFFSET_MASK)
			add_range(ix->l2, &n, s->l1[i] & QCOW2_OFFSET_MASK, s->cluster_size);
	ix->nr_l2 = merge_ranges(ix->l2, n);
	n = 0;
	for (uint64_t i = 0; s->reftable && i < s->reftable_size; i++)
		if (s->reftable[i] & ~QCOW2_REFT_RESERVED)
			add_range(ix->rb, &n, s->reftable[i] & ~QCOW2_REFT_RESERVED,
				  s->cluster_size);
	ix->nr_rb = merge_ranges(ix->rb, n);
	n = 0;
	for (uint32_t i = 0; s->snapshots && i < s->nb_snapshots; i++)
		add_range(ix->snap, &n, s->snapshots[i].l1_offset,
			  (uint64_t)s->snapshots[i].l1_size * 8);
	ix->nr_snap = merge_ranges(ix->snap, n);
	ix->built = true;
	return 0;
}

void qcow2_overlap_index_destroy(struct qcow2_overlap_index *ix)
{
	g_free(ix->l2);
	g_free(ix->rb);
	g_free(ix->snap);
	memset(ix, 0, sizeof(*ix));
}

/* Whether [off, off + len) meets one of the @n sorted disjoint ranges @r. */
static bool index_meets(const struct qcow2_range *r, size_t n, uint64_t off, uint64_t len)
{
	size_t lo = 0, hi = n;

	/* The first range that ends after off. */
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (r[mid].end <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && ranges_meet(off, len, r[lo].start, r[lo].end - r[lo].start);
}

static bool tables_meet(const struct qcow2_state *s, const struct qcow2_overlap_index *ix,
			uint64_t off, uint64_t len)
{
	if (ix && ix->built)
		return index_meets(ix->snap, ix->nr_snap, off, len);
	for (uint32_t i = 0; s->snapshots && i < s->nb_snapshots; i++)
		if (ranges_meet(off, len, s->snapshots[i].l1_offset,
				(uint64_t)s->snapshots[i].l1_size * 8))
			return true;
	return false;
}

static bool l2_tables_meet(const struct qcow2_state *s, const struct qcow2_overlap_index *ix,
			   uint64_t off, uint64_t len)
{
	if (ix && ix->built)
		return index_meets(ix->l2, ix->nr_l2, off, len);
	for (uint32_t i = 0; s->l1 && i < s->l1_size; i++) {
		uint64_t l2 = s->l1[i] & QCOW2_OFFSET_MASK;

		if (l2 && ranges_meet(off, len, l2, s->cluster_size))
			return true;
	}
	return false;
}

static bool refblocks_meet(const struct qcow2_state *s, const struct qcow2_overlap_index *ix,
			   uint64_t off, uint64_t len)
{
	if (ix && ix->built)
		return index_meets(ix->rb, ix->nr_rb, off, len);
	for (uint64_t i = 0; s->reftable && i < s->reftable_size; i++) {
		uint64_t b = s->reftable[i] & ~QCOW2_REFT_RESERVED;

		if (b && ranges_meet(off, len, b, s->cluster_size))
			return true;
	}
	return false;
}

unsigned int qcow2_overlap_find(const struct qcow2_state *s, const struct qcow2_overlap_index *ix,
				unsigned int ignore, uint64_t off, uint64_t len)
{
	unsigned int chk = QCOW2_OL_CACHED & ~ignore;

	if (!len)
		return 0;
	if ((chk & QCOW2_OL_HEADER) && off < s->cluster_size)
		return QCOW2_OL_HEADER;
	/* Whole clusters are compared: what shares a cluster with the write is hit. */
	len = qcow2_size_to_clusters(s, qcow2_offset_into_cluster(s, off) + len) << s->cluster_bits;
	off = qcow2_start_of_cluster(s, off);
	if ((chk & QCOW2_OL_ACTIVE_L1) && ranges_meet(off, len, s->l1_offset,
						      (uint64_t)s->l1_size * 8))
		return QCOW2_OL_ACTIVE_L1;
	if ((chk & QCOW2_OL_REFTABLE) && ranges_meet(off, len, s->reftable_offset,
						     s->reftable_size * 8))
		return QCOW2_OL_REFTABLE;
	if ((chk & QCOW2_OL_SNAPSHOT_TABLE) && ranges_meet(off, len, s->snapshots_offset,
							   s->snapshots_size))
		return QCOW2_OL_SNAPSHOT_TABLE;
	if ((chk & QCOW2_OL_INACTIVE_L1) && tables_meet(s, ix, off, len))
		return QCOW2_OL_INACTIVE_L1;
	if ((chk & QCOW2_OL_ACTIVE_L2) && l2_tables_meet(s, ix, off, len))
		return QCOW2_OL_ACTIVE_L2;
	if ((chk & QCOW2_OL_REFBLOCK) && refblocks_meet(s, ix, off, len))
		return QCOW2_OL_REFBLOCK;
	if ((chk & QCOW2_OL_BITMAP_DIR) && (s->autoclear & QCOW2_AUTOCLEAR_BITMAPS) &&
	    ranges_meet(off, len, s->bitmap_dir_offset, s->bitmap_dir_size))
		return QCOW2_OL_BITMAP_DIR;
	return 0;
}

const char *qcow2_overlap_name(unsigned int kind)
{
	switch (kind) {
	case QCOW2_OL_HEADER:		return "qcow2_header";
	case QCOW2_OL_ACTIVE_L1:	return "active L1 table";
	case QCOW2_OL_ACTIVE_L2:	return "active L2 table";
	case QCOW2_OL_REFTABLE:		return "refcount table";
	case QCOW2_OL_REFBLOCK:		return "refcount block";
	case QCOW2_OL_SNAPSHOT_TABLE:	return "snapshot table";
	case QCOW2_OL_INACTIVE_L1:	return "inactive L1 table";
	case QCOW2_OL_INACTIVE_L2:	return "inactive L2 table";
	case QCOW2_OL_BITMAP_DIR:	return "bitmap directory";
	default:			return "unknown metadata";
	}
}
