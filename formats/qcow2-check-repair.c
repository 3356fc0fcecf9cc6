/* SPDX-License-Identifier: MIT */
/*
 * qcow2-check-repair.c - the repair that writes a new refcount structure from the counts:
 * new refcount blocks in the first free clusters of each block's range, a new table after
 * them (the blocks covering it written again until it stops growing), the header pointed at
 * it; then a second count frees the old structure and works out what was repaired.
 *
 * Threading: under the image lock, in the check's drained section.
 */
#include <string.h>

#include "formats/qcow2-check-int.h"

/*
 * The first @count free clusters in a row at or after *first_free in the counts, the array
 * growing past the end of the image if needed; they are counted as used. Host offset.
 */
static int64_t alloc_counted(struct check *c, uint64_t count, uint64_t *first_free)
{
	uint64_t k = *first_free, run = 0;
	bool gap = true;
	int ret;

	for (; k < c->nb_clusters && run < count; k++) {
		if (ref_get(c, k)) {
			run = 0;
			continue;
		}
		run++;
		if (gap) {
			*first_free = k;
			gap = false;
		}
	}
	if (run < count) {
		ret = qcow2_chk_refs_resize(c, k + count - run);
		if (ret < 0)
			return ret;
	}
	k -= run;
	for (uint64_t i = 0; i < count; i++)
		ref_set(c, k + i, 1);
	return (int64_t)(k << c->s->cluster_bits);
}

/*
 * Writes the refcount blocks covering the clusters in use among [first, end), each a slice
 * of the counts, allocating those the new table (*table, *entries) does not have yet.
 * Returns 1 if the table had to grow, 0 if not, or -errno.
 */
/*
 * A new refcount block for entry @bi of the new table (*@table, *@entries, grown as
 * needed): allocated at or after *@first_free; *@end grows to cover its own count. Returns
 * its offset (*@grown set if the table grew), or -errno.
 */
static int64_t new_refblock(struct check *c, uint64_t bi, uint64_t *first_free, uint64_t *end,
			    uint64_t **table, uint64_t *entries, int *grown)
{
	struct qcow2_state *s = c->s;
	int64_t got = alloc_counted(c, 1, first_free);

	if (got < 0) {
		qcow2_chk_finding(c, TOOL_ERROR "ERROR allocating refblock: %s",
				  strerror((int)-got));
		return got;
	}
	/* The block holding this block's own count must be written too. */
	if ((uint64_t)got >> s->cluster_bits >= *end)
		*end = ((uint64_t)got >> s->cluster_bits) + 1;
	if (*entries <= bi) {
		uint64_t n = TBLK_ALIGN_UP((bi + 1) * 8, (uint64_t)s->cluster_size) / 8;
		uint64_t *t = g_try_renew(uint64_t, *table, n);

		if (!t) {
			qcow2_chk_finding(c, TOOL_ERROR "ERROR allocating reftable memory");
			return -ENOMEM;
		}
		memset(t + *entries, 0, (n - *entries) * 8);
		*table = t;
		*entries = n;
		*grown = 1;
	}
	(*table)[bi] = (uint64_t)got;
	return got;
}

static int write_refblocks(struct check *c, uint64_t first, uint64_t end, uint64_t **table,
			   uint64_t *entries)
{
	struct qcow2_state *s = c->s;
	uint64_t per_block = 1ull << s->rc_block_bits, first_free = 0;
	int grown = 0, ret;

	for (uint64_t k = first; k < end; k++) {
		uint64_t bi = k >> s->rc_block_bits, start = bi << s->rc_block_bits;
		int64_t off;

		if (!ref_get(c, k))
			continue;
		if (bi < *entries && (*table)[bi]) {
			off = (int64_t)(*table)[bi];
		} else {
			/* Not inside a block already written. */
			first_free = TBLK_MAX(first_free, start);
			off = new_refblock(c, bi, &first_free, &end, table, entries, &grown);
			if (off < 0)
				return (int)off;
		}
		ret = qcow2_chk_overlap(c, 0, (uint64_t)off, s->cluster_size);
		if (ret >= 0)
			ret = tblk_node_pwrite(s->node->file, (uint64_t)off,
					       c->refs + bi * s->cluster_size, s->cluster_size, 0);
		if (ret < 0) {
			qcow2_chk_finding(c, TOOL_ERROR "ERROR writing refblock: %s",
					  strerror(-ret));
			return ret;
		}
		k = start + per_block - 1;	/* this block is done */
	}
	return grown;
}

/*
 * Writes a new refcount structure from the counts (blocks, then a table placed where it
 * fits, the blocks covering it written again, until the table stops growing) and points the
 * header at it. The old structure is left to be freed as leaked clusters.
 */
/* Writes the new table (@entries, host order, turned to disk order) and the header. */
static int write_reftable(struct check *c, uint64_t *table, uint64_t entries,
			  uint64_t table_off, uint64_t clusters)
{
	struct qcow2_state *s = c->s;
	uint8_t hdr[12];
	int ret;

	for (uint64_t i = 0; i < entries; i++)
		table[i] = htobe64(table[i]);
	ret = qcow2_chk_overlap(c, 0, table_off, entries * 8);
	if (ret >= 0)
		ret = tblk_node_pwrite(s->node->file, table_off, table, entries * 8, 0);
	for (uint64_t i = 0; i < entries; i++)
		table[i] = be64toh(table[i]);
	if (ret < 0) {
		qcow2_chk_finding(c, TOOL_ERROR "ERROR writing reftable: %s", strerror(-ret));
		return ret;
	}
	for (int i = 0; i < 8; i++)
		hdr[i] = (uint8_t)(table_off >> (56 - 8 * i));
	for (int i = 0; i < 4; i++)
		hdr[8 + i] = (uint8_t)(clusters >> (24 - 8 * i));
	ret = tblk_node_pwrite(s->node->file, 48, hdr, sizeof(hdr), 0);
	if (ret >= 0)
		ret = tblk_node_flush(s->node->file);
	if (ret < 0)
		qcow2_chk_finding(c, TOOL_ERROR "ERROR setting reftable: %s", strerror(-ret));
	return ret;
}

int qcow2_chk_rebuild(struct check *c)
{
	struct qcow2_state *s = c->s;
	uint64_t *table = NULL, entries = 0, clusters = 0;
	int64_t table_off = -1;
	int ret;

	ret = qcow2_cache_write(s->rc_cache);
	if (ret < 0)
		goto out_free;
	qcow2_cache_clear(s->rc_cache);
	ret = write_refblocks(c, 0, c->nb_clusters, &table, &entries);
	while (ret > 0) {
		uint64_t first_free = 0, start;

		clusters = qcow2_size_to_clusters(s, entries * 8);
		table_off = alloc_counted(c, clusters, &first_free);
		if (table_off < 0) {
			qcow2_chk_finding(c, TOOL_ERROR "ERROR allocating reftable: %s",
					  strerror((int)-table_off));
			ret = (int)table_off;
			break;
		}
		start = (uint64_t)table_off >> s->cluster_bits;
		ret = write_refblocks(c, start, start + clusters, &table, &entries);
	}
	if (ret < 0) {
		c->res->check_errors++;
		goto out_free;
	}
	ret = write_reftable(c, table, entries, (uint64_t)table_off, clusters);
	if (ret < 0)
		goto out_free;
	g_free(s->reftable);
	s->reftable = table;
	s->reftable_offset = (uint64_t)table_off;
	s->reftable_size = entries;
	s->reftable_clusters = (uint32_t)clusters;
	s->free_cluster_index = 0;
	qcow2_overlap_invalidate(s);
	return 0;

out_free:
	g_free(table);
	return ret;
}

int qcow2_chk_after_rebuild(struct check *c, int fix, uint64_t *highest)
{
	struct tblk_check_result old = *c->res, saved;
	int64_t flen = tblk_node_getlength(c->s->node->file);
	int fresh_leaks = 0, ret;

	if (flen < 0)
		return (int)flen;
	c->file_size = (uint64_t)flen; /* the new structure may lie past the old end */

	c->res->corruptions = 0;
	c->res->leaks = 0;
	c->rebuild = false;
	memset(c->refs, 0, qcow2_chk_refs_bytes(c->s, c->nb_clusters));
	ret = qcow2_chk_count(c, 0);
	if (ret < 0)
		return ret;
	if (fix & TBLK_CHECK_FIX_LEAKS) {
		/* Leaks now are the old structures: repaired, and counted only if they stay. */
		saved = *c->res;
		c->res->corruptions = c->res->leaks = c->res->check_errors = 0;
		c->res->corruptions_fixed = c->res->leaks_fixed = 0;
		*highest = qcow2_chk_compare(c, TBLK_CHECK_FIX_LEAKS);
		if (c->rebuild)
			qcow2_chk_finding(c, "ERROR rebuilt refcount structure is still broken");
		fresh_leaks = c->res->leaks;
		saved.messages = c->res->messages;
		*c->res = saved;
	}
	if (c->res->corruptions < old.corruptions)
		c->res->corruptions_fixed += old.corruptions - c->res->corruptions;
	if (c->res->leaks < old.leaks)
		c->res->leaks_fixed += old.leaks - c->res->leaks;
	c->res->leaks += fresh_leaks;
	return 0;
}
