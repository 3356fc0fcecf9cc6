/* SPDX-License-Identifier: MIT */
/*
 * qcow2-prealloc.c - preallocation of a new area of a qcow2 image (create and grow) with
 * qemu 7.2's placement, and the refcount arithmetic it shares with `measure`:
 *  - metadata: L2 tables and data clusters are allocated L2 table by L2 table, each table
 *    followed by the data clusters it maps; the file is extended to the last one;
 *  - falloc/full: refcount structures covering the whole new area are written first after
 *    the last used cluster (a new refcount table included), then the data area after them is
 *    allocated in one piece, the file grown over it with the protocol's preallocation, and
 *    L2 tables mapping it allocated at the first free clusters.
 *
 * Threading: under the image lock, drained (truncate and create).
 */
#include <string.h>

#include "formats/qcow2-int.h"

/* qemu's ceiling for one allocation request: INT_MAX rounded down to the cluster size. */
static uint64_t max_run(const struct qcow2_state *s)
{
	return (0x7fffffffull & ~(uint64_t)(s->cluster_size - 1)) >> s->cluster_bits;
}

uint64_t qcow2_refcount_metadata_size(uint64_t clusters, uint64_t cluster_size,
				      unsigned int refcount_order, bool generous,
				      uint64_t *refblock_count)
{
	uint64_t per_table_cluster = cluster_size / 8;
	uint64_t per_block = cluster_size * 8 / (1u << refcount_order);
	uint64_t table = 0, blocks = 0, last, n = 0;

	/* The fixed point where the refcount structures also count themselves. */
	do {
		last = n;
		blocks = (clusters + table + blocks + per_block - 1) / per_block;
		table = (blocks + per_table_cluster - 1) / per_table_cluster;
		n = clusters + blocks + table;
		if (n == last && generous) {
			clusters += (table + 1) / 2;
			n = 0;
			generous = false;
		}
	} while (n != last);
	if (refblock_count)
		*refblock_count = blocks;
	return (blocks + table) * cluster_size;
}

uint64_t qcow2_prealloc_size(uint64_t total_size, uint64_t cluster_size,
			     unsigned int refcount_order, bool ext_l2)
{
	uint64_t aligned = TBLK_ALIGN_UP(total_size, cluster_size);
	uint64_t l2e = ext_l2 ? 16 : 8, meta = cluster_size, nl1e, nl2e;

	nl2e = TBLK_ALIGN_UP(aligned / cluster_size, cluster_size / l2e);
	meta += nl2e * l2e;
	nl1e = TBLK_ALIGN_UP(nl2e * l2e / cluster_size, cluster_size / 8);
	meta += nl1e * 8;
	meta += qcow2_refcount_metadata_size((meta + aligned) / cluster_size, cluster_size,
					     refcount_order, false, NULL);
	return meta + aligned;
}

static int write_reftable_header(struct qcow2_state *s, uint64_t offset, uint32_t clusters)
{
	uint8_t data[12];
	uint64_t o = htobe64(offset);
	uint32_t c = htobe32(clusters);
	int ret;

	memcpy(data, &o, 8);
	memcpy(data + 8, &c, 4);
	ret = tblk_node_pwrite(s->node->file, 48, data, sizeof(data), 0);
	return ret < 0 ? ret : tblk_node_flush(s->node->file);
}

/* Fills the refcount blocks of indexes [first, count) for a new area; *block_off advances. */
static int fill_area_blocks(struct qcow2_state *s, uint64_t *table, uint64_t first,
			    uint64_t count, uint64_t start, uint64_t end, uint64_t *block_off)
{
	uint64_t per_block = 1ull << s->rc_block_bits;

	for (uint64_t i = first; i < count; i++) {
		uint64_t covered = (i * per_block) << s->cluster_bits;
		void *block;
		int ret;

		if (table[i]) {
			ret = qcow2_cache_get(s->rc_cache, table[i], false, &block);
		} else {
			ret = qcow2_cache_get(s->rc_cache, *block_off, true, &block);
			table[i] = *block_off;
			*block_off += s->cluster_size;
		}
		if (ret < 0)
			return ret;
		qcow2_cache_mark_dirty(s->rc_cache, block);
		if (covered >= end)
			continue;
		for (uint64_t j = covered < start ? (start - covered) >> s->cluster_bits : 0;
		     j < TBLK_MIN((end - covered) >> s->cluster_bits, per_block); j++) {
			qcow2_cluster_taken(s, (covered >> s->cluster_bits) + j);
			qcow2_rc_set(s, block, j, 1);
		}
	}
	return 0;
}

int64_t qcow2_refcount_area(struct qcow2_state *s, uint64_t start, uint64_t additional,
			    bool exact, uint64_t new_block_index, uint64_t new_block_offset)
{
	uint64_t count, table_size, area_index, table_clusters, extra = 0, max_index = 0;
	uint64_t table_off, end, block_off = start;
	uint64_t old_off = s->reftable_offset, old_bytes = s->reftable_size * 8;
	g_autofree uint64_t *table = NULL;
	int ret;

	qcow2_refcount_metadata_size((start >> s->cluster_bits) + additional, s->cluster_size,
				     s->refcount_order, !exact, &count);
	if (count > QCOW2_MAX_REFTABLE_BYTES)
		return -EFBIG;
	area_index = (start >> s->cluster_bits) >> s->rc_block_bits;
	table_size = exact ? count : count + (count + 1) / 2;
	table_size = TBLK_ALIGN_UP(table_size, s->cluster_size / 8);
	table_clusters = table_size * 8 >> s->cluster_bits;
	if (table_size > QCOW2_MAX_REFTABLE_BYTES)
		return -EFBIG;
	table = g_try_new0(uint64_t, table_size);
	if (!table)
		return -ENOMEM;
	for (uint64_t i = 0; i < s->reftable_size; i++)
		if (s->reftable[i])
			max_index = i;
	memcpy(table, s->reftable, TBLK_MIN(table_size, max_index + 1) * 8);
	if (new_block_offset)
		table[new_block_index] = new_block_offset;
	for (uint64_t i = area_index; i < count; i++)
		extra += !table[i];
	table_off = start + (extra << s->cluster_bits);
	end = table_off + (table_clusters << s->cluster_bits);
	tblk_node_debug_event(s->node->file, TBLK_DBG_REFBLOCK_ALLOC_WRITE_BLOCKS);
	ret = fill_area_blocks(s, table, area_index, count, start, end, &block_off);
	if (ret >= 0)
		ret = qcow2_cache_write(s->rc_cache);
	if (ret >= 0)
		ret = tblk_node_flush(s->node->file);
	if (ret < 0)
		return ret;
	for (uint64_t i = 0; i < table_size; i++)
		table[i] = htobe64(table[i]);
	tblk_node_debug_event(s->node->file, TBLK_DBG_REFBLOCK_ALLOC_WRITE_TABLE);
	ret = tblk_node_pwrite(s->node->file, table_off, table, table_size * 8, 0);
	if (ret >= 0)
		ret = tblk_node_flush(s->node->file);
	if (ret >= 0) {
		tblk_node_debug_event(s->node->file, TBLK_DBG_REFBLOCK_ALLOC_SWITCH_TABLE);
		ret = write_reftable_header(s, table_off, (uint32_t)table_clusters);
	}
	if (ret < 0)
		return ret;
	for (uint64_t i = 0; i < table_size; i++)
		table[i] = be64toh(table[i]);
	g_free(s->reftable);
	s->reftable = g_steal_pointer(&table);
	s->reftable_size = table_size;
	s->reftable_offset = table_off;
	s->reftable_clusters = (uint32_t)table_clusters;
	qcow2_overlap_invalidate(s);
	/*
	 * Nothing on disk points at the old table any more: free it now, as qemu does (a
	 * deferred free would let the caller's next allocation land there, qemu's does not).
	 */
	ret = qcow2_update_refcount(s, old_off, old_bytes, -1);
	if (ret >= 0 && s->pass_discard[QCOW2_DISCARD_OTHER])
		(void)tblk_node_pdiscard(s->node->file, old_off, old_bytes);
	return ret < 0 ? ret : (int64_t)end;
}

static bool needs_alloc(const struct qcow2_state *s, uint64_t entry)
{
	enum qcow2_ctype t = qcow2_entry_type(s, entry);

	return !((t == QCOW2_NORMAL || t == QCOW2_ZERO_ALLOC) && (entry & QCOW2_OFLAG_COPIED));
}

/*
 * Points @n entries from guest @offset (within one L2 table) at host @host on, frees what they
 * pointed at. @bitmap_or/@bitmap_and adjust extended L2 bitmaps.
 */
static int link_run(struct qcow2_state *s, uint64_t offset, uint64_t host, uint64_t n,
		    uint64_t bitmap_or, uint64_t bitmap_and)
{
	uint32_t l2i;
	void *table;
	int ret = qcow2_get_l2_for_write(s, offset, &table, &l2i);

	if (ret < 0)
		return ret;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t old = qcow2_l2_get(s, table, l2i + i);
		uint64_t bm = qcow2_l2_get_bitmap(s, table, l2i + i);

		qcow2_l2_set(s, table, l2i + i, (host + ((uint64_t)i << s->cluster_bits)) |
			     QCOW2_OFLAG_COPIED, (bm | bitmap_or) & bitmap_and);
		if (s->data == s->node->file && (old & QCOW2_OFFSET_MASK) &&
		    !(old & QCOW2_OFLAG_COMPRESSED) &&
		    (old & QCOW2_OFFSET_MASK) == host + ((uint64_t)i << s->cluster_bits))
			continue;
		ret = qcow2_free_l2_entry(s, old, QCOW2_DISCARD_OTHER);
		if (ret < 0)
			return ret;
	}
	qcow2_cache_mark_dirty(s->l2_cache, table);
	return 0;
}

/*
 * One run of qemu's metadata preallocation from @offset: the L2 table, then as many clusters
 * as need allocating in a row within it. *run_end: end of the host range used, *done: guest
 * bytes covered.
 */
static int prealloc_run(struct qcow2_state *s, uint64_t offset, uint64_t end, uint64_t *host,
			uint64_t *done)
{
	uint64_t start = qcow2_start_of_cluster(s, offset), n, k = 0, e;
	uint32_t l2i;
	void *table;
	int64_t h;
	int ret = qcow2_get_l2_for_write(s, offset, &table, &l2i);

	if (ret < 0)
		return ret;
	n = TBLK_MIN(qcow2_size_to_clusters(s, end - start), (uint64_t)(s->l2_size - l2i));
	n = TBLK_MIN(n, max_run(s));
	e = qcow2_l2_get(s, table, l2i);
	if (!needs_alloc(s, e)) {
		*host = (e & QCOW2_OFFSET_MASK) + s->cluster_size;
		*done = start + s->cluster_size - offset;
		return 0;
	}
	while (k < n && needs_alloc(s, qcow2_l2_get(s, table, l2i + (uint32_t)k)))
		k++;
	if (s->data != s->node->file) {
		h = (int64_t)start;	/* external data file: host offset = guest offset */
	} else {
		h = qcow2_alloc_clusters(s, k << s->cluster_bits);
		if (h < 0)
			return (int)h;
	}
	ret = link_run(s, start, (uint64_t)h, k, 0, ~0ull);
	if (ret < 0)
		return ret;
	*host = (uint64_t)h + (k << s->cluster_bits);
	*done = start + (k << s->cluster_bits) - offset;
	return 0;
}

static int grow_file(struct tblk_node *f, uint64_t size, const char *mode, GError **errp)
{
	if (!f->drv->truncate)
		return tblk_error_set(errp, ENOTSUP, "Protocol driver '%s' does not support "
				      "image resize", f->drv->name);
	return f->drv->truncate(f, size, mode, errp);
}

static const char *const mode_names[] = { "off", "metadata", "falloc", "full" };

static int prealloc_metadata(struct qcow2_state *s, uint64_t offset, uint64_t end, int mode,
			     GError **errp)
{
	uint64_t host = 0;
	int64_t flen;
	int ret;

	while (offset < end) {
		uint64_t done = 0;

		ret = prealloc_run(s, offset, end, &host, &done);
		if (ret < 0)
			return tblk_error_set_errno(errp, -ret, "Allocating clusters failed");
		offset += done;
	}
	flen = tblk_node_getlength(s->data);
	if (flen < 0)
		return tblk_error_set_errno(errp, (int)-flen, "Could not get file size");
	if (host > (uint64_t)flen)
		return grow_file(s->data, host, mode == QCOW2_PREALLOC_METADATA ? "off" :
				 mode_names[mode], errp);
	return 0;
}

static int prealloc_data(struct qcow2_state *s, uint64_t old, uint64_t size, int mode,
			 GError **errp)
{
	int64_t flen = tblk_node_getlength(s->node->file), start, got;
	uint64_t last, nb_data, nb_l2, guest, host, left;
	uint64_t l2_entries = s->cluster_size / s->l2_entry_size;
	int ret;

	if (flen < 0)
		return tblk_error_set_errno(errp, (int)-flen, "Failed to inquire current file "
					    "length");
	if (qcow2_last_cluster(s, (uint64_t)flen, &last) >= 0)
		flen = (int64_t)((last + 1) << s->cluster_bits);
	else
		flen = (int64_t)TBLK_ALIGN_UP((uint64_t)flen, s->cluster_size);
	nb_data = (TBLK_ALIGN_UP(size, s->cluster_size) - qcow2_start_of_cluster(s, old)) >>
		  s->cluster_bits;
	nb_l2 = (nb_data + l2_entries - 1) / l2_entries + 1;
	start = qcow2_refcount_area(s, (uint64_t)flen, nb_data + nb_l2, true, 0, 0);
	if (start < 0)
		return tblk_error_set_errno(errp, (int)-start, "Failed to resize refcount "
					    "structures");
	got = qcow2_alloc_clusters_at(s, (uint64_t)start, nb_data);
	if (got < 0)
		return tblk_error_set_errno(errp, (int)-got, "Failed to allocate data clusters");
	if ((uint64_t)got != nb_data)
		return tblk_error_set(errp, EIO, "Failed to allocate data clusters");
	ret = grow_file(s->node->file, (uint64_t)start + (nb_data << s->cluster_bits),
			mode_names[mode], errp);
	if (ret < 0) {
		tblk_error_prepend(errp, "Failed to resize underlying file: ");
		(void)qcow2_free_clusters(s, (uint64_t)start, nb_data << s->cluster_bits,
					  QCOW2_DISCARD_OTHER);
		return ret;
	}
	guest = qcow2_start_of_cluster(s, old);
	host = (uint64_t)start;
	for (left = nb_data; left;) {
		uint64_t l2i = (guest >> s->cluster_bits) & (s->l2_size - 1);
		uint64_t n = TBLK_MIN(left, s->l2_size - l2i);

		/* qemu 7.2 leaves extended L2 bitmaps as they were here (observed). */
		ret = link_run(s, guest, host, n, 0, ~0ull);
		if (ret < 0)
			return tblk_error_set_errno(errp, -ret, "Failed to update L2 tables");
		guest += n << s->cluster_bits;
		host += n << s->cluster_bits;
		left -= n;
	}
	return 0;
}

int qcow2_prealloc(struct qcow2_state *s, uint64_t old, uint64_t size, int mode,
		   GError **errp)
{
	switch (mode) {
	case QCOW2_PREALLOC_OFF:
		if (s->data != s->node->file)
			return grow_file(s->data, size, "off", errp);
		return 0;
	case QCOW2_PREALLOC_METADATA:
		return prealloc_metadata(s, old, size, mode, errp);
	default:
		if (s->data != s->node->file)
			return prealloc_metadata(s, old, size, mode, errp);
		return prealloc_data(s, old, size, mode, errp);
	}
}
