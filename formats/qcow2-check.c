/* SPDX-License-Identifier: MIT */
/*
 * qcow2-check.c - consistency check and repair: every cluster the metadata references
 * (header, L1 and L2 tables, data, compressed data, refcount table and blocks, snapshot table
 * and snapshot L1 tables, persistent bitmaps) is counted, and the counts are compared with the stored refcounts;
 * COPIED flags are checked against them. Repair sets the stored refcounts to the counts.
 * Findings are returned as qemu-img words them; nothing here prints.
 *
 * Threading: runs under the image lock in a drained section (the tool's only user).
 */
#include <string.h>

#include "formats/qcow2-int.h"

struct check {
	struct qcow2_state *s;
	uint64_t file_size;		/* bytes */
	uint64_t nb_clusters;		/* clusters the file holds */
	uint64_t *refs;			/* references counted per cluster */
	struct tblk_check_result *res;
	uint64_t last_data;		/* previous data cluster of this L2 table, 0 = none */
};

static void finding(struct check *c, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void finding(struct check *c, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	g_string_append_vprintf(c->res->messages, fmt, ap);
	va_end(ap);
	g_string_append_c(c->res->messages, '\n');
}

/* Counts one reference to each cluster of [offset, offset + len). */
static void ref_range(struct check *c, uint64_t offset, uint64_t len)
{
	struct qcow2_state *s = c->s;

	if (len == 0)
		return;
	for (uint64_t i = offset >> s->cluster_bits; i <= (offset + len - 1) >> s->cluster_bits;
	     i++) {
		if (i >= c->nb_clusters) {
			finding(c, "ERROR: counting reference for region exceeding the end of the "
				   "file by one cluster or more: offset 0x%" PRIx64 " size 0x%" PRIx64,
				offset, len);
			c->res->corruptions++;	/* qemu-img counts these as errors */
			return;
		}
		c->refs[i]++;
	}
}

static int check_l2(struct check *c, uint64_t l2_off, bool active)
{
	struct qcow2_state *s = c->s;
	g_autofree uint8_t *t = g_malloc(s->cluster_size);
	int ret = tblk_node_pread(s->node->file, l2_off, t, s->cluster_size);

	if (ret < 0) {
		finding(c, "ERROR: I/O error in check_refcounts_l2");
		c->res->check_errors++;
		return ret;
	}
	c->last_data = 0;	/* contiguity is judged within one L2 table */
	for (uint32_t i = 0; i < s->l2_size; i++) {
		uint64_t e = qcow2_l2_get(s, t, i), off = e & QCOW2_OFFSET_MASK;

		switch (qcow2_entry_type(s, e)) {
		case QCOW2_COMPRESSED: {
			uint64_t coff = e & s->coffset_mask;
			uint64_t n = ((e >> s->csize_shift) & s->csize_mask) + 1;

			ref_range(c, coff, (coff & ~511ull) + n * 512 - coff);
			if (active) {
				c->res->allocated_clusters++;
				c->res->compressed_clusters++;
				c->res->fragmented_clusters++;
			}
			break;
		}
		case QCOW2_NORMAL:
		case QCOW2_ZERO_ALLOC:
			if (off & (s->cluster_size - 1)) {
				finding(c, "ERROR offset=%" PRIx64 ": Cluster is not properly aligned; "
					   "L2 entry corrupted.", off);
				c->res->corruptions++;
				break;
			}
			if (active) {
				c->res->allocated_clusters++;
				if (c->last_data && off != c->last_data + s->cluster_size)
					c->res->fragmented_clusters++;
				c->last_data = off;
			}
			if (s->data == s->node->file)
				ref_range(c, off, s->cluster_size);
			break;
		default:
			break;
		}
	}
	return 0;
}

/* An L1 table of @l1_size entries at @l1_off, of which the first @n are in @l1. */
static int check_l1(struct check *c, uint64_t l1_off, uint32_t l1_size, const uint64_t *l1,
		    uint32_t n, bool active)
{
	struct qcow2_state *s = c->s;

	ref_range(c, l1_off, (uint64_t)l1_size * 8);
	for (uint32_t i = 0; i < n; i++) {
		uint64_t l2 = l1[i] & QCOW2_OFFSET_MASK;

		if (!l2)
			continue;
		if (l2 & (s->cluster_size - 1)) {
			finding(c, "ERROR l2_offset=%" PRIx64 ": Table is not cluster aligned; L1 "
				   "entry corrupted", l2);
			c->res->corruptions++;
			continue;
		}
		ref_range(c, l2, s->cluster_size);
		/* Past the end of the file a table reads as zeroes: nothing to walk. */
		if (l2 >= c->file_size)
			continue;
		if (check_l2(c, l2, active) < 0)
			return -EIO;
	}
	return 0;
}

/* Snapshot table: the table itself and each snapshot's L1 table and what it references. */
static int check_snapshots(struct check *c)
{
	struct qcow2_state *s = c->s;
	uint64_t pos = s->snapshots_offset, start = pos;

	for (uint32_t i = 0; i < s->nb_snapshots; i++) {
		uint8_t h[40];
		uint64_t l1_off;
		uint32_t l1_size, extra, n;
		uint16_t id_len, name_len;
		g_autofree uint64_t *l1 = NULL;

		if (tblk_node_pread(s->node->file, pos, h, sizeof(h)) < 0)
			return -EIO;
		l1_off = qcow2_get_be64(h);
		l1_size = qcow2_get_be32(h + 8);
		id_len = qcow2_get_be16(h + 12);
		name_len = qcow2_get_be16(h + 14);
		extra = qcow2_get_be32(h + 36);
		if ((uint64_t)l1_size * 8 > QCOW2_MAX_L1_BYTES || extra > 1024) {
			finding(c, "ERROR snapshot table entry %u is invalid", i);
			c->res->corruptions++;
			return 0;
		}
		/*
		 * What lies past the end of the file reads as zeroes (no L2 tables): only the
		 * part inside is read and walked, or thousands of snapshots naming 32 MiB tables
		 * in a small file take minutes (qemu-img's too). ref_range reports the overrun.
		 */
		n = l1_off >= c->file_size ? 0 :
		    (uint32_t)TBLK_MIN((uint64_t)l1_size, (c->file_size - l1_off) / 8);
		l1 = g_new(uint64_t, n ? n : 1);
		if (n && tblk_node_pread(s->node->file, l1_off, l1, (uint64_t)n * 8) < 0)
			return -EIO;
		for (uint32_t k = 0; k < n; k++)
			l1[k] = be64toh(l1[k]);
		if (check_l1(c, l1_off, l1_size, l1, n, false) < 0)
			return -EIO;
		pos += TBLK_ALIGN_UP(40 + (uint64_t)extra + id_len + name_len, 8);
	}
	ref_range(c, start, pos - start);
	return 0;
}

static void ref_bitmap_range(void *opaque, uint64_t offset, uint64_t len)
{
	ref_range(opaque, offset, len);
}

/* Stored refcount of cluster @i as check sees it (unreadable blocks count as 0). */
static uint64_t stored(struct check *c, uint64_t i)
{
	uint64_t rc = 0;

	if (qcow2_get_refcount(c->s, i, &rc) < 0)
		return 0;
	return rc;
}

static void check_copied(struct check *c)
{
	struct qcow2_state *s = c->s;

	for (uint32_t i = 0; i < s->l1_size; i++) {
		uint64_t e = s->l1[i], l2 = e & QCOW2_OFFSET_MASK, rc;
		g_autofree uint8_t *t = NULL;

		if (!l2 || (l2 & (s->cluster_size - 1)))
			continue;
		rc = stored(c, l2 >> s->cluster_bits);
		if ((rc == 1) != !!(e & QCOW2_OFLAG_COPIED)) {
			finding(c, "ERROR OFLAG_COPIED L2 cluster: l1_index=%u l1_entry=%" PRIx64
				   " refcount=%" PRIu64, i, e, rc);
			c->res->corruptions++;
		}
		if (l2 >= c->file_size)
			continue;
		t = g_malloc(s->cluster_size);
		if (tblk_node_pread(s->node->file, l2, t, s->cluster_size) < 0)
			continue;
		for (uint32_t k = 0; k < s->l2_size; k++) {
			uint64_t le = qcow2_l2_get(s, t, k), off = le & QCOW2_OFFSET_MASK;
			enum qcow2_ctype ty = qcow2_entry_type(s, le);

			if ((ty != QCOW2_NORMAL && ty != QCOW2_ZERO_ALLOC) ||
			    (off & (s->cluster_size - 1)) || s->data != s->node->file)
				continue;
			rc = stored(c, off >> s->cluster_bits);
			if ((rc == 1) != !!(le & QCOW2_OFLAG_COPIED)) {
				finding(c, "ERROR OFLAG_COPIED data cluster: l2_entry=%" PRIx64
					   " refcount=%" PRIu64, le, rc);
				c->res->corruptions++;
			}
		}
	}
}

/* Moves cluster @i's refcount from @rc to @want, in steps an int64_t can hold. */
static int set_refcount(struct qcow2_state *s, uint64_t i, uint64_t rc, uint64_t want)
{
	while (rc != want) {
		uint64_t step = TBLK_MIN(rc > want ? rc - want : want - rc, (uint64_t)INT64_MAX);
		int ret = qcow2_update_refcount(s, i << s->cluster_bits, 1,
					       rc > want ? -(int64_t)step : (int64_t)step);

		if (ret < 0)
			return ret;
		rc = rc > want ? rc - step : rc + step;
	}
	return 0;
}

static int compare_and_fix(struct check *c, int fix)
{
	struct qcow2_state *s = c->s;
	uint64_t highest = 0;
	bool unreferenced_in_use = false;

	for (uint64_t i = 0; i < c->nb_clusters; i++) {
		uint64_t rc = stored(c, i), want = c->refs[i];

		if (rc || want)
			highest = i + 1;
		if (rc == want)
			continue;
		finding(c, "%s cluster %" PRIu64 " refcount=%" PRIu64 " reference=%" PRIu64,
			rc > want ? "Leaked" : "ERROR", i, rc, want);
		if (rc > want)
			c->res->leaks++;
		else
			c->res->corruptions++;
		unreferenced_in_use |= rc == 0;
	}
	c->res->image_end_offset = highest << s->cluster_bits;
	if (!fix)
		return 0;
	/*
	 * A cluster in use with refcount 0 (what a dirty lazy-refcount image holds) needs the
	 * refcounts rebuilt, which only repairing errors may do: qemu gives up on a leaks-only
	 * repair then, and so do we, before touching anything.
	 */
	if (unreferenced_in_use && !(fix & TBLK_CHECK_FIX_ERRORS)) {
		finding(c, "ERROR need to rebuild refcount structures");
		c->res->check_errors++;
		return -EIO;
	}
	for (uint64_t i = 0; i < c->nb_clusters; i++) {
		uint64_t rc = stored(c, i), want = c->refs[i];
		bool leak = rc > want;
		int ret;

		if (rc == want || !(fix & (leak ? TBLK_CHECK_FIX_LEAKS : TBLK_CHECK_FIX_ERRORS)))
			continue;
		finding(c, "Repairing cluster %" PRIu64 " refcount=%" PRIu64 " reference=%" PRIu64,
			i, rc, want);
		ret = set_refcount(s, i, rc, want);
		if (ret < 0) {
			c->res->check_errors++;
			continue;
		}
		if (leak) {
			c->res->leaks_fixed++;
			c->res->leaks--;
		} else {
			c->res->corruptions_fixed++;
			c->res->corruptions--;
		}
	}
	return 0;
}

int qcow2_check(struct qcow2_state *s, struct tblk_check_result *res, int fix)
{
	int64_t flen = tblk_node_getlength(s->node->file);
	struct check c = { .s = s, .res = res };
	int ret;

	if (flen < 0)
		return (int)flen;
	c.file_size = (uint64_t)flen;
	c.nb_clusters = qcow2_size_to_clusters(s, (uint64_t)flen);
	c.refs = g_try_new0(uint64_t, c.nb_clusters ? c.nb_clusters : 1);
	if (!c.refs)
		return -ENOMEM;
	res->total_clusters = qcow2_size_to_clusters(s, s->size);
	ref_range(&c, 0, s->cluster_size);
	ret = check_l1(&c, s->l1_offset, s->l1_size, s->l1, s->l1_size, true);
	if (ret >= 0 && s->nb_snapshots)
		ret = check_snapshots(&c);
	if (ret >= 0)
		ret = qcow2_bitmaps_for_each_cluster(s, ref_bitmap_range, &c);
	if (ret >= 0) {
		ref_range(&c, s->reftable_offset, (uint64_t)s->reftable_clusters << s->cluster_bits);
		for (uint64_t i = 0; i < s->reftable_size; i++) {
			uint64_t b = s->reftable[i] & ~QCOW2_REFT_RESERVED;

			if (!b)
				continue;
			if (b & (s->cluster_size - 1)) {
				finding(&c, "ERROR refcount block %" PRIu64 " is not cluster aligned; "
					    "refcount table entry corrupted", i);
				res->corruptions++;
				continue;
			}
			if (b >> s->cluster_bits >= c.nb_clusters) {
				finding(&c, "ERROR refcount block %" PRIu64 " is outside image", i);
				res->corruptions++;
				continue;
			}
			ref_range(&c, b, s->cluster_size);
		}
		ret = compare_and_fix(&c, fix);
	}
	if (ret >= 0)
		check_copied(&c);
	if (ret >= 0 && fix)
		ret = qcow2_flush_metadata(s);
	g_free(c.refs);
	return ret;
}
