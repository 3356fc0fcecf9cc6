/* SPDX-License-Identifier: MIT */
/*
 * qcow2-check-refcount.c - the check's refcount array: counting a reference, counting
 * every reference the metadata makes (the refcount blocks last, growing the file for one
 * past its end when repairing), and comparing the counts with the stored refcounts,
 * repairing them as the check's mode allows.
 *
 * Threading: under the image lock, in the check's drained section.
 */
#include <string.h>

#include "formats/qcow2-check-int.h"

uint64_t qcow2_chk_refs_bytes(const struct qcow2_state *s, uint64_t n)
{
	uint64_t bytes = ((n << s->refcount_order) + 7) / 8;

	return qcow2_size_to_clusters(s, bytes) << s->cluster_bits;
}

int qcow2_chk_refs_resize(struct check *c, uint64_t n)
{
	uint64_t old = qcow2_chk_refs_bytes(c->s, c->nb_clusters),
		 new = qcow2_chk_refs_bytes(c->s, n);
	uint8_t *p;

	if (n >> (64 - 6 - c->s->refcount_order))
		return -ENOMEM;
	if (new != old || !c->refs) {
		if (new > SIZE_MAX)
			return -ENOMEM;
		p = g_try_realloc(c->refs, new ? new : 1);
		if (!p)
			return -ENOMEM;
		if (new > old)
			memset(p + old, 0, new - old);
		c->refs = p;
	}
	c->nb_clusters = n;
	return 0;
}

int qcow2_chk_ref(struct check *c, uint64_t offset, uint64_t len)
{
	struct qcow2_state *s = c->s;
	uint64_t first, last;

	if (len == 0)
		return 0;
	/* The last cluster may be partly past the end of the file, no more. */
	if (offset + len >= c->file_size + s->cluster_size || offset + len < offset) {
		qcow2_chk_finding(c, "ERROR: counting reference for region exceeding the end of "
				  "the file by one cluster or more: offset 0x%" PRIx64 " size 0x%"
				  PRIx64, offset, len);
		c->res->corruptions++;
		return 0;
	}
	first = offset >> s->cluster_bits;
	last = (offset + len - 1) >> s->cluster_bits;
	for (uint64_t k = first; k <= last; k++) {
		uint64_t rc;

		if (k >= c->nb_clusters && qcow2_chk_refs_resize(c, k + 1) < 0) {
			c->res->check_errors++;
			return -ENOMEM;
		}
		rc = ref_get(c, k);
		if (rc == s->refcount_max) {
			qcow2_chk_finding(c, "ERROR: overflow cluster offset=0x%" PRIx64 "\nUse "
					  "qemu-img amend to increase the refcount entry width or "
					  "qemu-img convert to create a clean copy if the image "
					  "cannot be opened for writing", k << s->cluster_bits);
			c->res->corruptions++;
			continue;
		}
		ref_set(c, k, rc + 1);
	}
	return 0;
}

static void ref_bitmap_range(void *opaque, uint64_t offset, uint64_t len)
{
	(void)qcow2_chk_ref(opaque, offset, len);
}

static int grow_for_block(struct check *c, uint64_t off)
{
	struct qcow2_state *s = c->s;
	struct tblk_node *f = s->node->file;
	GError *err = NULL;
	int64_t len;
	int ret;

	if (off > (uint64_t)INT64_MAX - s->cluster_size)
		return -EINVAL;
	if (!f->drv->truncate)
		return -ENOTSUP;
	ret = f->drv->truncate(f, off + s->cluster_size, NULL, &err);
	if (ret < 0) {
		qcow2_chk_finding(c, TOOL_ERROR "%s", err ? err->message : strerror(-ret));
		g_clear_error(&err);
		return ret;
	}
	len = tblk_node_getlength(f);
	if (len < 0)
		return (int)len;
	c->file_size = (uint64_t)len;
	ret = qcow2_chk_refs_resize(c, TBLK_MAX(c->nb_clusters,
						  qcow2_size_to_clusters(s, c->file_size)));
	if (ret < 0)
		return ret;
	return off >> s->cluster_bits < c->nb_clusters ? 0 : -EINVAL;
}

/*
 * Refcount block @i at @off lies past the end of the image: reported, and when errors are
 * repaired the file is grown to hold it (its count then 1) or a rebuild is asked for.
 */
static int block_outside(struct check *c, uint64_t i, uint64_t off, int fix)
{
	int ret;

	c->res->corruptions++;
	qcow2_chk_finding(c, "%s refcount block %" PRIu64 " is outside image",
			  (fix & TBLK_CHECK_FIX_ERRORS) ? "Repairing" : "ERROR", i);
	if (!(fix & TBLK_CHECK_FIX_ERRORS))
		return 0;
	ret = grow_for_block(c, off);
	qcow2_chk_forget_views(c);
	if (ret == -ENOMEM) {
		c->res->check_errors++;
		return ret;
	}
	if (ret < 0) {
		c->rebuild = true;
		qcow2_chk_finding(c, "ERROR could not resize image: %s", strerror(-ret));
		return 0;
	}
	c->res->corruptions--;
	c->res->corruptions_fixed++;
	/* Just grown and zeroed: its count can only be 1 now. */
	return qcow2_chk_ref(c, off, c->s->cluster_size);
}

static int check_refblocks(struct check *c, int fix)
{
	struct qcow2_state *s = c->s;
	int ret = 0;

	for (uint64_t i = 0; ret >= 0 && i < s->reftable_size; i++) {
		uint64_t off = s->reftable[i] & ~QCOW2_REFT_RESERVED, k = off >> s->cluster_bits;

		if (s->reftable[i] & QCOW2_REFT_RESERVED) {
			qcow2_chk_finding(c, "ERROR refcount table entry %" PRIu64 " has reserved "
					  "bits set", i);
			c->res->corruptions++;
			c->rebuild = true;
		} else if (qcow2_offset_into_cluster(s, off)) {
			qcow2_chk_finding(c, "ERROR refcount block %" PRIu64 " is not cluster "
					  "aligned; refcount table entry corrupted", i);
			c->res->corruptions++;
			c->rebuild = true;
		} else if (k >= c->nb_clusters) {
			ret = block_outside(c, i, off, fix);
		} else if (off) {
			ret = qcow2_chk_ref(c, off, s->cluster_size);
			if (ret >= 0 && ref_get(c, k) != 1) {
				qcow2_chk_finding(c, "ERROR refcount block %" PRIu64 " refcount=%"
						  PRIu64, i, ref_get(c, k));
				c->res->corruptions++;
				c->rebuild = true;
			}
		}
	}
	return ret < 0 ? ret : 0;
}

int qcow2_chk_count(struct check *c, int fix)
{
	struct qcow2_state *s = c->s;
	int ret;

	ret = qcow2_chk_ref(c, 0, s->cluster_size);
	if (ret >= 0)
		ret = qcow2_chk_l1(c, s->l1_offset, s->l1_size, CHECK_FRAG_INFO, fix);
	if (ret >= 0)
		ret = qcow2_chk_snapshots(c, fix);
	if (ret >= 0)
		ret = qcow2_chk_ref(c, s->reftable_offset, s->reftable_size * 8);
	if (ret >= 0)
		ret = qcow2_bitmaps_for_each_cluster(s, ref_bitmap_range, c);
	if (ret >= 0)
		ret = check_refblocks(c, fix);
	return ret;
}

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

/*
 * Compares stored refcounts with the counted ones, repairing what @fix allows. A leaked
 * cluster repaired down to refcount 0 is discarded in the file. Returns the index of the
 * highest cluster in use.
 */
uint64_t qcow2_chk_compare(struct check *c, int fix)
{
	struct qcow2_state *s = c->s;
	uint64_t highest = 0;

	for (uint64_t i = 0; i < c->nb_clusters; i++) {
		uint64_t rc, want = ref_get(c, i);
		int *fixed = NULL;
		int ret = qcow2_chk_stored(c, i, &rc);

		if (ret < 0) {
			qcow2_chk_finding(c, "Can't get refcount for cluster %" PRIu64 ": %s", i,
					  strerror(-ret));
			c->res->check_errors++;
			continue;
		}
		if (rc || want)
			highest = i;
		if (rc == want)
			continue;
		if (rc == 0)
			c->rebuild = true;
		else if (rc > want && (fix & TBLK_CHECK_FIX_LEAKS))
			fixed = &c->res->leaks_fixed;
		else if (rc < want && (fix & TBLK_CHECK_FIX_ERRORS))
			fixed = &c->res->corruptions_fixed;
		qcow2_chk_finding(c,
				  "%s cluster %" PRIu64 " refcount=%" PRIu64 " reference=%" PRIu64,
				  fixed	      ? "Repairing"
				  : rc < want ? "ERROR"
					      : "Leaked",
				  i, rc, want);
		if (fixed && set_refcount(s, i, rc, want) >= 0) {
			(*fixed)++;
			/* Discarding in the file is advisory: its failure is not an error. */
			if (want == 0)
				(void)tblk_node_pdiscard(s->node->file, i << s->cluster_bits,
							 s->cluster_size);
			continue;
		}
		if (rc < want)
			c->res->corruptions++;
		else
			c->res->leaks++;
	}
	return highest;
}
