/* SPDX-License-Identifier: MIT */
/*
 * qcow2-overlap.c - which metadata a write into the image file would overwrite, judged from
 * the structures in memory alone (not the refcounts), as qemu 7.2's default overlap check
 * ("cached": every kind but the L2 tables of snapshots) judges it, kind for kind in its order.
 * Its users refuse such a write and mark the image corrupt.
 *
 * Threading: called under the image lock; reads only [meta] fields.
 */
#include "formats/qcow2-int.h"

/* Whether [a, a + alen) and [b, b + blen) share a byte; the ends saturate. */
static bool ranges_meet(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	uint64_t aend = a + alen < a ? UINT64_MAX : a + alen;
	uint64_t bend = b + blen < b ? UINT64_MAX : b + blen;

	return alen && blen && a < bend && b < aend;
}

static bool tables_meet(const struct qcow2_state *s, uint64_t off, uint64_t len)
{
	for (uint32_t i = 0; s->snapshots && i < s->nb_snapshots; i++)
		if (ranges_meet(off, len, s->snapshots[i].l1_offset,
				(uint64_t)s->snapshots[i].l1_size * 8))
			return true;
	return false;
}

static bool l2_tables_meet(const struct qcow2_state *s, uint64_t off, uint64_t len)
{
	for (uint32_t i = 0; s->l1 && i < s->l1_size; i++) {
		uint64_t l2 = s->l1[i] & QCOW2_OFFSET_MASK;

		if (l2 && ranges_meet(off, len, l2, s->cluster_size))
			return true;
	}
	return false;
}

static bool refblocks_meet(const struct qcow2_state *s, uint64_t off, uint64_t len)
{
	for (uint64_t i = 0; s->reftable && i < s->reftable_size; i++) {
		uint64_t b = s->reftable[i] & ~QCOW2_REFT_RESERVED;

		if (b && ranges_meet(off, len, b, s->cluster_size))
			return true;
	}
	return false;
}

unsigned int qcow2_overlap_find(const struct qcow2_state *s, unsigned int ignore, uint64_t off,
				uint64_t len)
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
	if ((chk & QCOW2_OL_INACTIVE_L1) && tables_meet(s, off, len))
		return QCOW2_OL_INACTIVE_L1;
	if ((chk & QCOW2_OL_ACTIVE_L2) && l2_tables_meet(s, off, len))
		return QCOW2_OL_ACTIVE_L2;
	if ((chk & QCOW2_OL_REFBLOCK) && refblocks_meet(s, off, len))
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
