/* SPDX-License-Identifier: MIT */
/*
 * qcow2-check-l2.c - the check's walk of the L1 and L2 tables (active and snapshots'):
 * every cluster they reference counted, their entries checked in qemu's words, misaligned
 * preallocated entries repaired; and, once the refcounts are known, the COPIED flags of the
 * active tables compared with them and repaired. Each L2 table is read once per check into a
 * view of its entries in use, so that a hostile L1 table naming one table thousands of times
 * costs what the table holds, not its size.
 *
 * Threading: under the image lock, in the check's drained section.
 */
#include <string.h>

#include "formats/qcow2-check-int.h"

static int read_padded(struct check *c, uint64_t off, void *buf, uint64_t len)
{
	uint64_t n = off >= c->file_size ? 0 : TBLK_MIN(len, c->file_size - off);

	memset((uint8_t *)buf + n, 0, len - n);
	return n ? tblk_node_pread(c->s->node->file, off, buf, n) : 0;
}

static enum qcow2_ctype ctype(const struct qcow2_state *s, uint64_t e)
{
	enum qcow2_ctype t = qcow2_entry_type(s, e);

	if (t == QCOW2_UNALLOCATED && s->data != s->node->file && (e & QCOW2_OFLAG_COPIED))
		return QCOW2_NORMAL;
	return t;
}

/*
 * Entries of the L2 table at @l2_off that lie inside the file: those past its end read as
 * zero, and a zero entry (and bitmap) is unallocated, nothing to count or repair.
 */
static uint32_t l2_entries_in_file(const struct check *c, uint64_t l2_off)
{
	const struct qcow2_state *s = c->s;
	uint64_t n;

	if (l2_off >= c->file_size)
		return 0;
	n = (c->file_size - l2_off + s->l2_entry_size - 1) / s->l2_entry_size;
	return (uint32_t)TBLK_MIN(n, (uint64_t)s->l2_size);
}

static void view_free(gpointer p)
{
	struct l2_view *v = p;

	g_free(v->index);
	g_free(v->entry);
	g_free(v->bitmap);
	g_free(v);
}

void qcow2_chk_forget_views(struct check *c)
{
	if (c->views)
		g_hash_table_remove_all(c->views);
	c->view_entries = 0;
}

/*
 * The entries in use of the L2 table at @l2_off, read once per check (until a repair
 * writes); owned by c->views. Returns -errno if the table cannot be read.
 */
static int l2_view(struct check *c, uint64_t l2_off, const struct l2_view **out)
{
	struct qcow2_state *s = c->s;
	uint32_t n = l2_entries_in_file(c, l2_off), used = 0;
	g_autofree uint8_t *t = NULL;
	struct l2_view *v;
	uint64_t *key;
	int ret;

	if (!c->views)
		c->views = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, view_free);
	v = g_hash_table_lookup(c->views, &l2_off);
	if (v) {
		*out = v;
		return 0;
	}
	t = g_malloc(TBLK_MAX((size_t)n * s->l2_entry_size, (size_t)1));
	ret = read_padded(c, l2_off, t, (uint64_t)n * s->l2_entry_size);
	if (ret < 0)
		return ret;
	for (uint32_t i = 0; i < n; i++)
		used += qcow2_l2_get(s, t, i) || (s->ext_l2 && qcow2_l2_get_bitmap(s, t, i));
	if (c->view_entries + used > VIEW_ENTRIES_MAX)
		qcow2_chk_forget_views(c);
	c->view_entries += used;
	v = g_new0(struct l2_view, 1);
	v->index = g_new(uint32_t, TBLK_MAX(used, 1u));
	v->entry = g_new(uint64_t, TBLK_MAX(used, 1u));
	v->bitmap = g_new0(uint64_t, TBLK_MAX(used, 1u));
	for (uint32_t i = 0; i < n; i++) {
		uint64_t e = qcow2_l2_get(s, t, i);
		uint64_t bm = s->ext_l2 ? qcow2_l2_get_bitmap(s, t, i) : 0;

		if (!e && !bm)
			continue;
		v->index[v->n] = i;
		v->entry[v->n] = e;
		v->bitmap[v->n++] = bm;
	}
	key = g_new(uint64_t, 1);
	*key = l2_off;
	g_hash_table_insert(c->views, key, v);
	*out = v;
	return 0;
}

static int fix_prealloc_entry(struct check *c, uint64_t l2_off, uint32_t i)
{
	struct qcow2_state *s = c->s;
	uint8_t e[16] = {0};
	int ret;

	if (!s->ext_l2)
		e[7] = QCOW2_OFLAG_ZERO;
	else if ((ret = tblk_node_pread(s->node->file, l2_off + i * 16ull + 8, e + 8, 8)) < 0)
		return ret;
	ret = tblk_node_pwrite(s->node->file, l2_off + (uint64_t)i * s->l2_entry_size, e,
			       s->l2_entry_size, 0);
	if (ret >= 0)
		ret = tblk_node_flush(s->node->file);
	if (!qcow2_offset_into_cluster(s, l2_off))
		qcow2_cache_discard(s->l2_cache, l2_off);
	return ret;
}

/*
 * A data entry at a misaligned offset: a data cluster is reported; a preallocated zero
 * cluster is reported, and repaired as @fix allows. 1 if the entry was repaired (its cluster
 * is not used any more), 0 if not, -errno if the check must stop.
 */
static int check_misaligned(struct check *c, uint64_t l2_off, uint32_t i, uint64_t e,
			    uint64_t bitmap, int flags, int fix)
{
	struct qcow2_state *s = c->s;
	uint64_t off = e & QCOW2_OFFSET_MASK;
	bool data = s->ext_l2 ? (bitmap & 0xffffffffu) : !(e & QCOW2_OFLAG_ZERO);
	bool repair = fix & TBLK_CHECK_FIX_ERRORS;
	int ret;

	c->res->corruptions++;
	if (data) {
		qcow2_chk_finding(c, "ERROR offset=%" PRIx64 ": Data cluster is not properly "
				  "aligned; L2 entry corrupted.", off);
		return 0;
	}
	qcow2_chk_finding(c, "%s offset=%" PRIx64 ": Preallocated cluster is not properly "
			  "aligned; L2 entry corrupted.", repair ? "Repairing" : "ERROR", off);
	if (!repair)
		return 0;
	/* The entry inside other metadata: the check stops here. */
	ret = qcow2_chk_overlap(c, (flags & CHECK_FRAG_INFO) ? QCOW2_OL_ACTIVE_L2 :
				QCOW2_OL_INACTIVE_L2, l2_off + (uint64_t)i * s->l2_entry_size,
				s->l2_entry_size);
	if (ret < 0) {
		qcow2_chk_finding(c, "ERROR: Overlap check failed");
		c->res->check_errors++;
		return ret;
	}
	ret = fix_prealloc_entry(c, l2_off, i);
	qcow2_chk_forget_views(c);
	if (ret >= 0) {
		c->res->corruptions--;
		c->res->corruptions_fixed++;
		return 1;
	}
	qcow2_chk_finding(c, "ERROR: Failed to overwrite L2 table entry: %s", strerror(-ret));
	c->res->check_errors++;
	return 0;
}

static int check_data_entry(struct check *c, uint64_t l2_off, uint32_t i, uint64_t e,
			    uint64_t bitmap, int flags, int fix, uint64_t *next)
{
	struct qcow2_state *s = c->s;
	uint64_t off = e & QCOW2_OFFSET_MASK;

	if ((bitmap >> 32) & bitmap) {
		c->res->corruptions++;
		qcow2_chk_finding(c, "ERROR offset=%" PRIx64 ": Allocated cluster has corrupted "
				  "subcluster allocation bitmap", off);
	}
	if (qcow2_offset_into_cluster(s, off)) {
		int ret = check_misaligned(c, l2_off, i, e, bitmap, flags, fix);

		if (ret)
			return ret < 0 ? ret : 0;
	}
	if (flags & CHECK_FRAG_INFO) {
		c->res->allocated_clusters++;
		if (*next && off != *next)
			c->res->fragmented_clusters++;
		*next = off + s->cluster_size;
	}
	return s->data == s->node->file ? qcow2_chk_ref(c, off, s->cluster_size) : 0;
}

static int check_compressed_entry(struct check *c, uint32_t i, uint64_t e, uint64_t bitmap,
				  int flags)
{
	struct qcow2_state *s = c->s;
	uint64_t coff = e & s->coffset_mask;
	uint64_t sectors = ((e >> s->csize_shift) & s->csize_mask) + 1;
	int ret;

	if (e & QCOW2_OFLAG_COPIED) {
		qcow2_chk_finding(c, "ERROR: coffset=0x%" PRIx64 ": copied flag must never be set "
				  "for compressed clusters", coff);
		e &= ~QCOW2_OFLAG_COPIED;
		c->res->corruptions++;
	}
	if (s->data != s->node->file) {
		qcow2_chk_finding(c, "ERROR compressed cluster %u with data file, entry=0x%" PRIx64,
				  i, e);
		c->res->corruptions++;
		return 0;
	}
	if (bitmap) {
		qcow2_chk_finding(c, "ERROR compressed cluster %u with non-zero subcluster "
				  "allocation bitmap, entry=0x%" PRIx64, i, e);
		c->res->corruptions++;
		return 0;
	}
	ret = qcow2_chk_ref(c, coff, sectors * 512 - (coff & 511));
	if (ret >= 0 && (flags & CHECK_FRAG_INFO)) {
		c->res->allocated_clusters++;
		c->res->compressed_clusters++;
		c->res->fragmented_clusters++;
	}
	return ret;
}

/* One entry in use of an L2 table; *@next is where a contiguous data cluster would be. */
static int check_entry(struct check *c, uint64_t l2_off, uint32_t i, uint64_t e,
		      uint64_t bitmap, int flags, int fix, uint64_t *next)
{
	enum qcow2_ctype type = ctype(c->s, e);

	if (type != QCOW2_COMPRESSED && (e & QCOW2_L2_RESERVED)) {
		qcow2_chk_finding(c, "ERROR found l2 entry with reserved bits set: %" PRIx64, e);
		c->res->corruptions++;
	}
	switch (type) {
	case QCOW2_COMPRESSED:
		return check_compressed_entry(c, i, e, bitmap, flags);
	case QCOW2_NORMAL:
	case QCOW2_ZERO_ALLOC:
		return check_data_entry(c, l2_off, i, e, bitmap, flags, fix, next);
	case QCOW2_UNALLOCATED:
		if (bitmap & 0xffffffffu) {
			c->res->corruptions++;
			qcow2_chk_finding(c, "ERROR: Unallocated cluster has non-zero subcluster "
					  "allocation map");
		}
		return 0;
	default:
		return 0;
	}
}

static int check_l2(struct check *c, uint64_t l2_off, int flags, int fix)
{
	uint64_t next = 0;
	const struct l2_view *v;
	int ret = l2_view(c, l2_off, &v);

	if (ret < 0) {
		qcow2_chk_finding(c, "ERROR: I/O error in check_refcounts_l2");
		c->res->check_errors++;
		return ret;
	}
	/* A repair (of a misaligned entry) forgets the view: walk a copy of it. */
	g_autofree uint32_t *index = g_memdup2(v->index, TBLK_MAX(v->n, 1u) * sizeof(uint32_t));
	g_autofree uint64_t *entry = g_memdup2(v->entry, TBLK_MAX(v->n, 1u) * sizeof(uint64_t));
	g_autofree uint64_t *bitmap = g_memdup2(v->bitmap, TBLK_MAX(v->n, 1u) * sizeof(uint64_t));
	uint32_t n = v->n;

	for (uint32_t k = 0; k < n; k++) {
		ret = check_entry(c, l2_off, index[k], entry[k], bitmap[k], flags, fix, &next);
		if (ret < 0)
			return ret;
	}
	return 0;
}

/*
 * The part of an L1 table of @l1_size entries at @l1_off that lies inside the file (past
 * its end it reads as zeroes: no L2 tables), in file byte order; *@n entries. Reading only
 * that keeps thousands of snapshots naming 32 MiB tables in a small file from taking
 * minutes (qemu-img's too).
 */
static int read_l1(struct check *c, uint64_t l1_off, uint32_t l1_size, uint64_t **l1,
		   uint32_t *n)
{
	int ret;

	*n = l1_off >= c->file_size ? 0 :
	     (uint32_t)TBLK_MIN((uint64_t)l1_size, (c->file_size - l1_off + 7) / 8);
	*l1 = g_try_new(uint64_t, *n ? *n : 1);
	if (!*l1) {
		c->res->check_errors++;
		return -ENOMEM;
	}
	ret = read_padded(c, l1_off, *l1, (uint64_t)*n * 8);
	if (ret < 0) {
		qcow2_chk_finding(c, "ERROR: I/O error in check_refcounts_l1");
		c->res->check_errors++;
	}
	return ret;
}

int qcow2_chk_l1(struct check *c, uint64_t l1_off, uint32_t l1_size, int flags, int fix)
{
	struct qcow2_state *s = c->s;
	g_autofree uint64_t *l1 = NULL;
	uint32_t n;
	int ret;

	if (!l1_size)
		return 0;
	ret = qcow2_chk_ref(c, l1_off, (uint64_t)l1_size * 8);
	if (ret >= 0)
		ret = read_l1(c, l1_off, l1_size, &l1, &n);
	for (uint32_t i = 0; ret >= 0 && i < n; i++) {
		uint64_t e = be64toh(l1[i]), l2 = e & QCOW2_OFFSET_MASK;

		if (!e)
			continue;
		if (e & QCOW2_L1_RESERVED) {
			qcow2_chk_finding(c, "ERROR found L1 entry with reserved bits set: %"
					  PRIx64, e);
			c->res->corruptions++;
		}
		ret = qcow2_chk_ref(c, l2, s->cluster_size);
		if (ret < 0)
			break;
		if (qcow2_offset_into_cluster(s, l2)) {
			qcow2_chk_finding(c, "ERROR l2_offset=%" PRIx64 ": Table is not cluster "
					  "aligned; L1 entry corrupted", l2);
			c->res->corruptions++;
		}
		/* Past the end of the file a table reads as zeroes: nothing to walk. */
		if (l2 < c->file_size)
			ret = check_l2(c, l2, flags, fix);
	}
	return ret < 0 ? ret : 0;
}

int qcow2_chk_snapshots(struct check *c, int fix)
{
	struct qcow2_state *s = c->s;
	int ret;

	if (s->data != s->node->file && s->nb_snapshots) {
		qcow2_chk_finding(c, "ERROR %u snapshots in image with data file", s->nb_snapshots);
		c->res->corruptions++;
	}
	for (uint32_t i = 0; s->snapshots && i < s->nb_snapshots; i++) {
		const struct qcow2_snapshot *sn = &s->snapshots[i];

		if (qcow2_offset_into_cluster(s, sn->l1_offset)) {
			qcow2_chk_finding(c,
					  "ERROR snapshot %s (%s) l1_offset=%#" PRIx64
					  ": L1 table is not "
					  "cluster aligned; snapshot table entry corrupted",
					  sn->id, sn->name, sn->l1_offset);
			c->res->corruptions++;
			continue;
		}
		if ((uint64_t)sn->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
			qcow2_chk_finding(c,
					  "ERROR snapshot %s (%s) l1_size=%#" PRIx32
					  ": L1 table is too "
					  "large; snapshot table entry corrupted",
					  sn->id, sn->name, sn->l1_size);
			c->res->corruptions++;
			continue;
		}
		ret = qcow2_chk_l1(c, sn->l1_offset, sn->l1_size, 0, fix);
		if (ret < 0)
			return ret;
	}
	return qcow2_chk_ref(c, s->snapshots_offset, s->snapshots_size);
}

/* Active L1 entry @i, whose table has refcount @rc: its COPIED flag checked, repaired. */
static int copied_l1_entry(struct check *c, uint32_t i, uint64_t rc, bool repair)
{
	struct qcow2_state *s = c->s;
	uint64_t e = s->l1[i];
	int ret;

	if ((rc == 1) == !!(e & QCOW2_OFLAG_COPIED))
		return 0;
	c->res->corruptions++;
	qcow2_chk_finding(c, "%s OFLAG_COPIED L2 cluster: l1_index=%u l1_entry=%" PRIx64
			  " refcount=%" PRIu64, repair ? "Repairing" : "ERROR", i, e, rc);
	if (!repair)
		return 0;
	s->l1[i] = rc == 1 ? e | QCOW2_OFLAG_COPIED : e & ~QCOW2_OFLAG_COPIED;
	ret = qcow2_chk_overlap(c, QCOW2_OL_ACTIVE_L1, s->l1_offset + i * 8ull, 8);
	if (ret >= 0)
		ret = qcow2_write_l1_entry(s, i);
	if (ret < 0) {
		c->res->check_errors++;
		return ret;
	}
	c->res->corruptions--;
	c->res->corruptions_fixed++;
	return 0;
}

/*
 * The COPIED flags of the data entries of the active L2 table at @l2, checked; those to be
 * repaired are set in @t (the whole table, read at the first). Returns how many, or -errno.
 */
static int copied_l2_entries(struct check *c, uint64_t l2, uint8_t *t, bool repair)
{
	struct qcow2_state *s = c->s;
	const struct l2_view *v;
	int dirty = 0, ret = l2_view(c, l2, &v);

	for (uint32_t k = 0; ret >= 0 && k < v->n; k++) {
		uint64_t le = v->entry[k], off = le & QCOW2_OFFSET_MASK, rc;
		enum qcow2_ctype ty = ctype(s, le);

		if (ty != QCOW2_NORMAL && ty != QCOW2_ZERO_ALLOC)
			continue;
		if (s->data != s->node->file)
			rc = 1;
		else if (qcow2_chk_stored(c, off >> s->cluster_bits, &rc) < 0)
			continue;
		if ((rc == 1) == !!(le & QCOW2_OFLAG_COPIED))
			continue;
		c->res->corruptions++;
		qcow2_chk_finding(c, "%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64 " refcount=%"
				  PRIu64, repair ? "Repairing" : "ERROR", le, rc);
		if (!repair)
			continue;
		if (!dirty++)
			ret = read_padded(c, l2, t, (uint64_t)s->l2_size * s->l2_entry_size);
		qcow2_l2_set(s, t, v->index[k], rc == 1 ? le | QCOW2_OFLAG_COPIED :
			     le & ~QCOW2_OFLAG_COPIED, v->bitmap[k]);
	}
	if (ret < 0) {
		qcow2_chk_finding(c, "ERROR: Could not read L2 table: %s", strerror(-ret));
		c->res->check_errors++;
		return ret;
	}
	return dirty;
}

/* Writes the active L2 table @t at @l2 with @dirty entries repaired. */
static int write_l2(struct check *c, uint64_t l2, const uint8_t *t, int dirty)
{
	struct qcow2_state *s = c->s;
	int ret = qcow2_chk_overlap(c, QCOW2_OL_ACTIVE_L2, l2, s->cluster_size);

	if (ret < 0) {
		qcow2_chk_finding(c, "ERROR: Could not write L2 table; metadata overlap check "
				  "failed: %s", strerror(-ret));
		c->res->check_errors++;
		return ret;
	}
	ret = tblk_node_pwrite(s->node->file, l2, t, s->cluster_size, 0);
	qcow2_chk_forget_views(c);
	if (!qcow2_offset_into_cluster(s, l2))
		qcow2_cache_discard(s->l2_cache, l2);
	if (ret < 0) {
		qcow2_chk_finding(c, "ERROR: Could not write L2 table: %s", strerror(-ret));
		c->res->check_errors++;
		return ret;
	}
	c->res->corruptions -= dirty;
	c->res->corruptions_fixed += dirty;
	return 0;
}

int qcow2_chk_copied(struct check *c, int fix)
{
	struct qcow2_state *s = c->s;
	size_t l2_bytes = (size_t)s->l2_size * s->l2_entry_size;
	g_autofree uint8_t *t = g_malloc(TBLK_MAX(l2_bytes, (size_t)s->cluster_size));
	bool repair;
	int ret;

	if (fix & TBLK_CHECK_FIX_ERRORS)
		repair = true;
	else if (fix & TBLK_CHECK_FIX_LEAKS)
		/* Only when the refcounts are known right: they were repaired just before. */
		repair = !c->res->check_errors && !c->res->corruptions && !c->res->leaks;
	else
		repair = false;
	for (uint32_t i = 0; i < s->l1_size; i++) {
		uint64_t l2 = s->l1[i] & QCOW2_OFFSET_MASK, rc;

		if (!l2 || qcow2_chk_stored(c, l2 >> s->cluster_bits, &rc) < 0)
			continue;
		ret = copied_l1_entry(c, i, rc, repair);
		if (ret >= 0)
			ret = copied_l2_entries(c, l2, t, repair);
		if (ret > 0)
			ret = write_l2(c, l2, t, ret);
		if (ret < 0)
			return ret;
	}
	return 0;
}
