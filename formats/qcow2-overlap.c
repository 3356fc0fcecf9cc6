/* SPDX-License-Identifier: MIT */
/*
 * qcow2-overlap.c - the metadata overlap check: which metadata a write into the image file
 * would overwrite, judged from the structures in memory (not the refcounts), kind for kind in
 * qemu 7.2's order, for the kinds the overlap-check options select (default "cached": every
 * kind but the L2 tables of snapshots). Every write qcow2 makes into its file asks first; a
 * write that would hit metadata is refused, the image is marked corrupt and becomes unusable
 * (every request then fails with -ENOMEDIUM), as qemu makes it.
 *
 * The kinds that are many (active L2 tables, refcount blocks, snapshot L1 tables and, with
 * "all", the snapshots' L2 tables) are kept in an index: sorted arrays searched by bisection,
 * updated in place as an L2 table or a refcount block is allocated or freed, rebuilt from the
 * tables after bulk changes (snapshots, refcount rebuilds, shrinking). A write costs a few
 * bisections, not qemu's walk over the L1 and refcount tables.
 *
 * Threading: everything runs under the image lock (the index is [meta]), except
 * qcow2_overlap_hit_fast(), which the fast path calls under mu while nobody holds the image
 * lock, which excludes every writer of the index.
 */
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2-int.h"

/* ------------------------------------------------ options */

static const char *const kind_opts[QCOW2_OL_NR] = {
	"overlap-check.main-header", "overlap-check.active-l1", "overlap-check.active-l2",
	"overlap-check.refcount-table", "overlap-check.refcount-block",
	"overlap-check.snapshot-table", "overlap-check.inactive-l1", "overlap-check.inactive-l2",
	"overlap-check.bitmap-directory",
};

int qcow2_overlap_options(struct qcow2_state *s, GHashTable *opts, GError **errp)
{
	g_autofree char *mode = tblk__opts_take(opts, "overlap-check");
	g_autofree char *tmpl = tblk__opts_take(opts, "overlap-check.template");
	const char *name = tmpl ? tmpl : mode ? mode : "cached";
	unsigned int template;

	if (mode && tmpl && strcmp(mode, tmpl))
		return tblk_error_set(errp, EINVAL, "Conflicting values for qcow2 options "
				      "'overlap-check' ('%s') and 'overlap-check.template' "
				      "('%s')", mode, tmpl);
	if (!strcmp(name, "none"))
		template = 0;
	else if (!strcmp(name, "constant"))
		template = QCOW2_OL_CONSTANT;
	else if (!strcmp(name, "cached"))
		template = QCOW2_OL_CACHED;
	else if (!strcmp(name, "all"))
		template = QCOW2_OL_ALL;
	else
		return tblk_error_set(errp, EINVAL, "Unsupported value '%s' for qcow2 option "
				      "'overlap-check'. Allowed are any of the following: none, "
				      "constant, cached, all", name);
	s->overlap_check = 0;
	for (unsigned int i = 0; i < QCOW2_OL_NR; i++) {
		bool on = template & (1u << i);

		if (tblk__opts_take_bool(opts, kind_opts[i], &on, errp) < 0)
			return -EINVAL;
		if (on)
			s->overlap_check |= 1u << i;
	}
	return 0;
}

/* ------------------------------------------------ sorted offsets */

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

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

/* The first index of @o whose value is >= @v. */
static size_t offsets_lower(const struct qcow2_offsets *o, uint64_t v)
{
	size_t lo = 0, hi = o->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (o->v[mid] < v)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int offsets_reserve(struct qcow2_offsets *o, size_t n)
{
	uint64_t *v;
	size_t cap;

	if (n <= o->cap)
		return 0;
	cap = TBLK_MAX(n, TBLK_MAX(o->cap * 2, (size_t)16));
	v = g_try_renew(uint64_t, o->v, cap);
	if (!v)
		return -ENOMEM;
	o->v = v;
	o->cap = cap;
	return 0;
}

static int offsets_insert(struct qcow2_offsets *o, uint64_t v)
{
	size_t i;

	if (offsets_reserve(o, o->n + 1) < 0)
		return -ENOMEM;
	i = offsets_lower(o, v);
	memmove(o->v + i + 1, o->v + i, (o->n - i) * sizeof(*o->v));
	o->v[i] = v;
	o->n++;
	return 0;
}

static void offsets_remove(struct qcow2_offsets *o, uint64_t v)
{
	size_t i = offsets_lower(o, v);

	if (i == o->n || o->v[i] != v)
		return;
	memmove(o->v + i, o->v + i + 1, (o->n - i - 1) * sizeof(*o->v));
	o->n--;
}

static void offsets_sort(struct qcow2_offsets *o)
{
	/* An empty set has no array: qsort() must not see its NULL. */
	if (o->n > 1)
		qsort(o->v, o->n, sizeof(*o->v), cmp_u64);
}

/*
 * Whether [off, off + len) meets one of the tables of @size bytes starting at the offsets of
 * @o: all have the same size, so sorted starts are sorted ends too.
 */
static bool offsets_meet(const struct qcow2_offsets *o, uint64_t size, uint64_t off, uint64_t len)
{
	size_t i = offsets_lower(o, off >= size ? off - size + 1 : 0);

	return i < o->n && ranges_meet(off, len, o->v[i], size);
}

static void offsets_free(struct qcow2_offsets *o)
{
	g_free(o->v);
	memset(o, 0, sizeof(*o));
}

/* ------------------------------------------------ building the index */

/* Sorts and merges @n ranges into disjoint ones, in place; returns how many remain. */
static size_t merge_ranges(struct qcow2_range *r, size_t n)
{
	size_t out = 0;

	if (n > 1)
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

/* The snapshot L1 tables, and with "all" the L2 tables they name (read from the file). */
static int build_snapshots(struct qcow2_state *s, struct qcow2_overlap_index *ix)
{
	size_t n = 0;

	g_free(ix->snap);
	ix->nr_snap = 0;
	ix->il2.n = 0;
	ix->snap = g_try_new(struct qcow2_range, TBLK_MAX((size_t)s->nb_snapshots, (size_t)1));
	if (!ix->snap)
		return -ENOMEM;
	for (uint32_t i = 0; s->snapshots && i < s->nb_snapshots; i++) {
		uint64_t start = s->snapshots[i].l1_offset;
		uint64_t len = (uint64_t)s->snapshots[i].l1_size * 8;

		if (!len)
			continue;
		ix->snap[n].start = start;
		ix->snap[n].end = start + len < start ? UINT64_MAX : start + len;
		n++;
	}
	ix->nr_snap = merge_ranges(ix->snap, n);
	if (!(s->overlap_check & QCOW2_OL_INACTIVE_L2))
		return 0;
	for (uint32_t i = 0; s->snapshots && i < s->nb_snapshots; i++) {
		const struct qcow2_snapshot *sn = &s->snapshots[i];
		g_autofree uint64_t *l1 = NULL;
		int ret;

		/* As qemu's check: a table it cannot read fails the write. */
		if (sn->l1_size > QCOW2_MAX_L1_BYTES / 8 ||
		    qcow2_offset_into_cluster(s, sn->l1_offset))
			return -EFBIG;
		if (!sn->l1_size)
			continue;
		l1 = g_try_new(uint64_t, sn->l1_size);
		if (!l1 || offsets_reserve(&ix->il2, ix->il2.n + sn->l1_size) < 0)
			return -ENOMEM;
		ret = tblk_node_pread(s->node->file, sn->l1_offset, l1, (uint64_t)sn->l1_size * 8);
		if (ret < 0)
			return ret;
		for (uint32_t j = 0; j < sn->l1_size; j++) {
			uint64_t l2 = be64toh(l1[j]) & QCOW2_OFFSET_MASK;

			if (l2)
				ix->il2.v[ix->il2.n++] = l2;
		}
	}
	offsets_sort(&ix->il2);
	return 0;
}

int qcow2_overlap_index_build(struct qcow2_state *s, struct qcow2_overlap_index *ix)
{
	int ret;

	qcow2_overlap_index_destroy(ix);
	if (offsets_reserve(&ix->l2, s->l1_size) < 0 ||
	    offsets_reserve(&ix->rb, (size_t)s->reftable_size) < 0)
		goto out_nomem;
	for (uint32_t i = 0; s->l1 && i < s->l1_size; i++)
		if (s->l1[i] & QCOW2_OFFSET_MASK)
			ix->l2.v[ix->l2.n++] = s->l1[i] & QCOW2_OFFSET_MASK;
	offsets_sort(&ix->l2);
	for (uint64_t i = 0; s->reftable && i < s->reftable_size; i++)
		if (s->reftable[i] & ~QCOW2_REFT_RESERVED)
			ix->rb.v[ix->rb.n++] = s->reftable[i] & ~QCOW2_REFT_RESERVED;
	offsets_sort(&ix->rb);
	ret = build_snapshots(s, ix);
	if (ret < 0) {
		qcow2_overlap_index_destroy(ix);
		return ret;
	}
	ix->built = true;
	return 0;

out_nomem:
	qcow2_overlap_index_destroy(ix);
	return -ENOMEM;
}

void qcow2_overlap_index_destroy(struct qcow2_overlap_index *ix)
{
	offsets_free(&ix->l2);
	offsets_free(&ix->rb);
	offsets_free(&ix->il2);
	g_free(ix->snap);
	memset(ix, 0, sizeof(*ix));
}

/* ------------------------------------------------ keeping it current */

void qcow2_overlap_invalidate(struct qcow2_state *s)
{
	s->ol.built = false;
}

/* Replaces @old by @new (0: none) in @o; on failure the index is rebuilt later. */
static void replace(struct qcow2_state *s, struct qcow2_offsets *o, uint64_t old, uint64_t new)
{
	if (!s->ol.built || old == new)
		return;
	if (old)
		offsets_remove(o, old);
	if (new && offsets_insert(o, new) < 0)
		s->ol.built = false;
}

void qcow2_overlap_l2_moved(struct qcow2_state *s, uint64_t old, uint64_t new)
{
	replace(s, &s->ol.l2, old & QCOW2_OFFSET_MASK, new & QCOW2_OFFSET_MASK);
}

void qcow2_overlap_rb_moved(struct qcow2_state *s, uint64_t old, uint64_t new)
{
	replace(s, &s->ol.rb, old & ~QCOW2_REFT_RESERVED, new & ~QCOW2_REFT_RESERVED);
}

void qcow2_overlap_snapshots_changed(struct qcow2_state *s)
{
	if (s->ol.built && build_snapshots(s, &s->ol) < 0)
		s->ol.built = false;
}

/* ------------------------------------------------ the check */

/* The linear searches, when the index could not be built (out of memory). */
static bool scan_snap_l1(const struct qcow2_state *s, uint64_t off, uint64_t len)
{
	for (uint32_t i = 0; s->snapshots && i < s->nb_snapshots; i++)
		if (ranges_meet(off, len, s->snapshots[i].l1_offset,
				(uint64_t)s->snapshots[i].l1_size * 8))
			return true;
	return false;
}

static bool scan_l2(const struct qcow2_state *s, uint64_t off, uint64_t len)
{
	for (uint32_t i = 0; s->l1 && i < s->l1_size; i++) {
		uint64_t l2 = s->l1[i] & QCOW2_OFFSET_MASK;

		if (l2 && ranges_meet(off, len, l2, s->cluster_size))
			return true;
	}
	return false;
}

static bool scan_rb(const struct qcow2_state *s, uint64_t off, uint64_t len)
{
	for (uint64_t i = 0; s->reftable && i < s->reftable_size; i++) {
		uint64_t b = s->reftable[i] & ~QCOW2_REFT_RESERVED;

		if (b && ranges_meet(off, len, b, s->cluster_size))
			return true;
	}
	return false;
}

static bool snap_meets(const struct qcow2_overlap_index *ix, uint64_t off, uint64_t len)
{
	size_t lo = 0, hi = ix->nr_snap;

	/* The first range that ends after off. */
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (ix->snap[mid].end <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < ix->nr_snap &&
	       ranges_meet(off, len, ix->snap[lo].start, ix->snap[lo].end - ix->snap[lo].start);
}

unsigned int qcow2_overlap_find(const struct qcow2_state *s, const struct qcow2_overlap_index *ix,
				unsigned int ignore, uint64_t off, uint64_t len)
{
	unsigned int chk = s->overlap_check & ~ignore;
	bool built = ix && ix->built;

	if (!len || !chk)
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
	if ((chk & QCOW2_OL_INACTIVE_L1) &&
	    (built ? snap_meets(ix, off, len) : scan_snap_l1(s, off, len)))
		return QCOW2_OL_INACTIVE_L1;
	if ((chk & QCOW2_OL_ACTIVE_L2) &&
	    (built ? offsets_meet(&ix->l2, s->cluster_size, off, len) : scan_l2(s, off, len)))
		return QCOW2_OL_ACTIVE_L2;
	if ((chk & QCOW2_OL_REFBLOCK) &&
	    (built ? offsets_meet(&ix->rb, s->cluster_size, off, len) : scan_rb(s, off, len)))
		return QCOW2_OL_REFBLOCK;
	if ((chk & QCOW2_OL_INACTIVE_L2) && built &&
	    offsets_meet(&ix->il2, s->cluster_size, off, len))
		return QCOW2_OL_INACTIVE_L2;
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

/*
 * The index, built if it is not: 0, or the error of reading a snapshot's L1 table (which fails
 * the write, as in qemu). Without memory for it the tables are searched entry by entry.
 */
static int ensure_index(struct qcow2_state *s)
{
	int ret = s->ol.built ? 0 : qcow2_overlap_index_build(s, &s->ol);

	return ret == -ENOMEM ? 0 : ret;
}

int qcow2_overlap_check(struct qcow2_state *s, unsigned int ignore, uint64_t off, uint64_t len)
{
	unsigned int kind;
	int ret;

	if (qcow2_dead(s))
		return -EIO;
	if (!(s->overlap_check & ~ignore) || !len)
		return 0;
	ret = ensure_index(s);
	if (ret < 0)
		return ret;
	kind = qcow2_overlap_find(s, &s->ol, ignore, off, len);
	if (!kind)
		return 0;
	qcow2_signal_fatal(s, "Preventing invalid write on metadata (overlaps with %s)",
			   qcow2_overlap_name(kind));
	return -EIO;
}

int qcow2_overlap_data_check(struct qcow2_state *s, uint64_t off, uint64_t len)
{
	if (s->data != s->node->file)
		return qcow2_dead(s) ? -EIO : 0;	/* an external data file holds no metadata */
	return qcow2_overlap_check(s, 0, off, len);
}

int qcow2_overlap_alloc_check(struct qcow2_state *s, uint64_t off, uint64_t len)
{
	if (s->data == s->node->file && !qcow2_dead(s) && s->l2_needs_rc &&
	    ensure_index(s) >= 0 && qcow2_overlap_find(s, &s->ol, 0, off, len))
		(void)qcow2_cache_write(s->rc_cache);
	return qcow2_overlap_data_check(s, off, len);
}

bool qcow2_overlap_hit_fast(const struct qcow2_state *s, uint64_t off, uint64_t len)
{
	if (!s->overlap_check || s->data != s->node->file)
		return false;
	return !s->ol.built || qcow2_overlap_find(s, &s->ol, 0, off, len);
}

int qcow2_meta_pwrite(struct qcow2_state *s, unsigned int ignore, uint64_t off, const void *buf,
		      uint64_t len)
{
	int ret = qcow2_overlap_check(s, ignore, off, len);

	if (ret < 0)
		return ret;
	return tblk_node_pwrite(s->node->file, off, buf, len, 0);
}
