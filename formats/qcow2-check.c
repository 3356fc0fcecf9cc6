/* SPDX-License-Identifier: MIT */
/*
 * qcow2-check.c - consistency check and repair, finding for finding what qemu-img 7.2 finds
 * and leaving the file as its repair leaves it: the order of the steps, the findings, the
 * corruption signal and the overlap check repairs go through.
 *
 * Every cluster the metadata references (header, L1 and L2 tables, data, compressed data,
 * snapshot table and snapshot L1 tables, persistent bitmaps, refcount table and blocks) is
 * counted in an in-memory refcount array (qcow2-check-refcount.c, walking the tables with
 * qcow2-check-l2.c), and the counts are compared with the stored refcounts. A repair:
 * - sets stored refcounts to the counts; a leaked cluster whose refcount drops to zero is
 *   discarded in the file, as qemu does;
 * - when a cluster in use has refcount 0 or a refcount block is unusable (and errors may be
 *   repaired), writes a whole new refcount structure from the array (qcow2-check-repair.c);
 * - grows the file to hold a refcount block that lies past its end;
 * - turns a misaligned preallocated zero cluster's entry into a plain zero entry;
 * - sets the COPIED flags of active L1 and L2 entries from the refcounts.
 * No repair writes over other metadata (qcow2-overlap.c): such a write marks the image
 * corrupt and stops the repair. Findings are returned in qemu-img's words; nothing prints.
 *
 * Threading: runs under the image lock in a drained section (the tool's only user).
 */
#include <string.h>

#include "formats/qcow2-check-int.h"

/*
 * Bytes of findings kept. qemu-img streams its findings to stderr; we keep them in memory,
 * and a hostile image (thousands of L1 entries naming one table of entries past the end of
 * the file) makes gigabytes of them: past this, one line says they were cut.
 */
#define FINDINGS_MAX	(16u << 20)

void qcow2_chk_finding(struct check *c, const char *fmt, ...)
{
	va_list ap;

	if (c->res->messages->len >= FINDINGS_MAX) {
		if (!c->findings_cut)
			g_string_append(c->res->messages, "(more findings not shown)\n");
		c->findings_cut = true;
		return;
	}
	va_start(ap, fmt);
	g_string_append_vprintf(c->res->messages, fmt, ap);
	va_end(ap);
	g_string_append_c(c->res->messages, '\n');
}

/*
 * A corruption qemu signals while checking: reported once; on a writable image the corrupt
 * bit goes into the header (qemu writes just the feature field), so that nothing else uses
 * the image until a repair succeeds.
 */
static void signal_corruption(struct check *c, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void signal_corruption(struct check *c, const char *fmt, ...)
{
	struct qcow2_state *s = c->s;
	g_autofree char *what = NULL;
	uint64_t be;
	va_list ap;

	if (c->signaled)
		return;
	c->signaled = true;
	va_start(ap, fmt);
	what = g_strdup_vprintf(fmt, ap);
	va_end(ap);
	if (s->read_only) {
		qcow2_chk_finding(c, "qcow2: Image is corrupt: %s; further non-fatal corruption "
				  "events will be suppressed", what);
		return;
	}
	qcow2_chk_finding(c,
			  "qcow2: Marking image as corrupt: %s; further corruption events will be "
			  "suppressed",
			  what);
	/*
	 * As qemu's image becomes unusable: what the repair left in the caches (refcounts
	 * already repaired) is dropped, not written, now nor at close.
	 */
	c->halted = true;
	(void)qcow2_signal_corruption(s, "check", 0);
	qcow2_cache_clear(s->l2_cache);
	qcow2_cache_clear(s->rc_cache);
	s->incompat |= QCOW2_INCOMPAT_CORRUPT;
	be = htobe64(s->incompat);
	if (tblk_node_pwrite(s->node->file, 72, &be, 8, 0) >= 0)
		(void)tblk_node_flush(s->node->file);
}

int qcow2_chk_stored(struct check *c, uint64_t i, uint64_t *rc)
{
	struct qcow2_state *s = c->s;
	int ret = qcow2_get_refcount(s, i, rc);
	uint64_t ti = i >> s->rc_block_bits;

	if (ret != -EUCLEAN)
		return ret;
	if (ti < s->reftable_size)
		signal_corruption(c, "Refblock offset %#" PRIx64 " unaligned (reftable index: %#"
				  PRIx64 ")", (uint64_t)(s->reftable[ti] & ~QCOW2_REFT_RESERVED),
				  ti);
	return -EIO;
}

/*
 * A repair's write of @len bytes at @off, refused (-EIO, the image marked corrupt) if it
 * would touch metadata other than the kinds in @ignore, as qemu's overlap check refuses it.
 */
int qcow2_chk_overlap(struct check *c, unsigned int ignore, uint64_t off, uint64_t len)
{
	unsigned int kind;

	/* Without memory for the index the tables are searched entry by entry. */
	if (!c->overlaps.built)
		(void)qcow2_overlap_index_build(c->s, &c->overlaps);
	kind = qcow2_overlap_find(c->s, &c->overlaps, ignore, off, len);

	if (!kind)
		return 0;
	signal_corruption(c, "Preventing invalid write on metadata (overlaps with %s)",
			  qcow2_overlap_name(kind));
	return -EIO;
}

static int check_refcounts(struct check *c, int fix)
{
	struct tblk_check_result pre;
	uint64_t highest;
	int ret;

	ret = qcow2_chk_count(c, fix);
	if (ret < 0)
		return ret;
	/* Repairing without a rebuild compares again from here, repairing. */
	pre = *c->res;
	highest = qcow2_chk_compare(c, 0);
	if (c->rebuild && (fix & TBLK_CHECK_FIX_ERRORS)) {
		qcow2_chk_finding(c, "Rebuilding refcount structure");
		ret = qcow2_chk_rebuild(c);
		qcow2_overlap_index_destroy(&c->overlaps);	/* the refcount table moved */
		qcow2_chk_forget_views(c);
		if (ret >= 0)
			ret = qcow2_chk_after_rebuild(c, fix, &highest);
		if (ret < 0)
			return ret;
	} else if (fix) {
		if (c->rebuild) {
			qcow2_chk_finding(c, "ERROR need to rebuild refcount structures");
			c->res->check_errors++;
			return -EIO;
		}
		if (c->res->leaks || c->res->corruptions) {
			pre.messages = c->res->messages;
			*c->res = pre;
			highest = qcow2_chk_compare(c, fix);
		}
	}
	ret = qcow2_chk_copied(c, fix);
	if (ret < 0)
		return ret;
	c->res->image_end_offset = (highest + 1) << c->s->cluster_bits;
	return 0;
}

static int run_check(struct qcow2_state *s, struct tblk_check_result *res, int fix)
{
	int64_t flen = tblk_node_getlength(s->node->file);
	struct check c = {.s = s, .res = res};
	int ret;

	if (flen < 0)
		return (int)flen;
	c.file_size = (uint64_t)flen;
	/* The repairs write tables directly: nothing may wait in the caches. */
	if (fix) {
		ret = qcow2_flush_metadata(s);
		if (ret < 0)
			return ret;
	}
	ret = qcow2_chk_refs_resize(&c, qcow2_size_to_clusters(s, c.file_size));
	if (ret < 0) {
		res->check_errors++;
		return ret;
	}
	res->total_clusters = qcow2_size_to_clusters(s, s->size);
	ret = check_refcounts(&c, fix);
	if (ret >= 0 && fix && !res->corruptions && !res->check_errors &&
	    (s->incompat & QCOW2_INCOMPAT_CORRUPT)) {
		/* Repaired: the corrupt bit goes, as qemu's repair clears it. */
		uint64_t be = htobe64(s->incompat & ~QCOW2_INCOMPAT_CORRUPT);

		ret = tblk_node_pwrite(s->node->file, 72, &be, 8, 0);
		if (ret >= 0)
			ret = tblk_node_flush(s->node->file);
		if (ret >= 0)
			s->incompat &= ~QCOW2_INCOMPAT_CORRUPT;
	}
	if (fix && !c.halted) {
		int r = qcow2_flush_metadata(s);

		ret = ret < 0 ? ret : r;
	}
	g_free(c.refs);
	if (c.views)
		g_hash_table_destroy(c.views);
	qcow2_overlap_index_destroy(&c.overlaps);
	return ret;
}

int qcow2_check(struct qcow2_state *s, struct tblk_check_result *res, int fix)
{
	int ret;

	/* What the check meets it reports in its findings, not as data path events. */
	s->checking = true;
	ret = run_check(s, res, fix);
	s->checking = false;
	return ret;
}
