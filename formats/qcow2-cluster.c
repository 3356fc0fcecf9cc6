/* SPDX-License-Identifier: MIT */
/*
 * qcow2-cluster.c - guest-to-host translation: L1 and L2 tables, entry types (standard and
 * extended L2 entries), allocation and copy-on-write of L2 tables, L1 growth.
 *
 * Threading: everything here runs under the image lock.
 */
#include <string.h>

#include "formats/qcow2-int.h"

uint64_t qcow2_l2_get(const struct qcow2_state *s, const void *table, uint32_t i)
{
	return be64toh(((const uint64_t *)table)[s->ext_l2 ? 2 * i : i]);
}

uint64_t qcow2_l2_get_bitmap(const struct qcow2_state *s, const void *table, uint32_t i)
{
	return s->ext_l2 ? be64toh(((const uint64_t *)table)[2 * i + 1]) : 0;
}

void qcow2_l2_set(const struct qcow2_state *s, void *table, uint32_t i, uint64_t entry,
		  uint64_t bitmap)
{
	uint64_t *t = table;

	if (s->ext_l2) {
		t[2 * i] = htobe64(entry);
		t[2 * i + 1] = htobe64(bitmap);
	} else {
		t[i] = htobe64(entry);
	}
}

enum qcow2_ctype qcow2_entry_type(const struct qcow2_state *s, uint64_t entry)
{
	if (entry & QCOW2_OFLAG_COMPRESSED)
		return QCOW2_COMPRESSED;
	if ((entry & QCOW2_OFLAG_ZERO) && !s->ext_l2)
		return (entry & QCOW2_OFFSET_MASK) ? QCOW2_ZERO_ALLOC : QCOW2_ZERO_PLAIN;
	return (entry & QCOW2_OFFSET_MASK) ? QCOW2_NORMAL : QCOW2_UNALLOCATED;
}

/*
 * The type of subcluster @sc of an extended entry; -EINVAL if the entry is invalid there (both
 * bits set, or allocated without a host cluster): the caller reports it.
 */
static int subcluster_type(struct qcow2_state *s, uint64_t entry, uint64_t bitmap,
			   unsigned int sc, enum qcow2_ctype *type)
{
	bool alloc = bitmap & (1ull << sc), zero = bitmap & (1ull << (32 + sc));
	enum qcow2_ctype t = qcow2_entry_type(s, entry);

	if (t == QCOW2_COMPRESSED) {
		*type = t;
		return 0;
	}
	if (alloc && zero)
		return -EINVAL;
	if (t == QCOW2_NORMAL)
		*type = alloc ? QCOW2_NORMAL : zero ? QCOW2_ZERO_ALLOC : QCOW2_UNALLOCATED;
	else
		*type = zero ? QCOW2_ZERO_PLAIN : alloc ? QCOW2_NORMAL : QCOW2_UNALLOCATED;
	return *type == QCOW2_NORMAL && t != QCOW2_NORMAL ? -EINVAL : 0;
}

/*
 * The L2 table of L1 entry @l1i for reading: *table NULL if none. The reserved bits of the
 * entry are ignored, as qemu ignores them outside `check`.
 */
static int l2_for_read(struct qcow2_state *s, uint64_t l1i, void **table)
{
	uint64_t l2off;

	*table = NULL;
	if (l1i >= s->l1_size)
		return 0;
	l2off = s->l1[l1i] & QCOW2_OFFSET_MASK;
	if (!l2off)
		return 0;
	if (l2off & (s->cluster_size - 1))
		return qcow2_signal_event(s, true, "L2 table offset %#" PRIx64 " unaligned "
					  "(L1 index: %#" PRIx64 ")", l2off, l1i);
	return qcow2_cache_get(s->l2_cache, l2off, false, table);
}

/* Whether the entry has a host cluster and it is misaligned (whatever its subclusters are). */
static bool entry_unaligned(const struct qcow2_state *s, uint64_t entry)
{
	enum qcow2_ctype type = qcow2_entry_type(s, entry);

	return (type == QCOW2_NORMAL || type == QCOW2_ZERO_ALLOC) &&
	       (entry & QCOW2_OFFSET_MASK & (s->cluster_size - 1));
}

int qcow2_get_l2_entry(struct qcow2_state *s, uint64_t offset, uint64_t *entry,
		       uint64_t *bitmap)
{
	uint64_t l1i = offset >> (s->l2_bits + s->cluster_bits);
	uint32_t l2i = (uint32_t)((offset >> s->cluster_bits) & (s->l2_size - 1));
	void *table;
	int ret = l2_for_read(s, l1i, &table);

	if (ret < 0)
		return ret;
	*entry = table ? qcow2_l2_get(s, table, l2i) : 0;
	*bitmap = table ? qcow2_l2_get_bitmap(s, table, l2i) : 0;
	return 0;
}

/*
 * True if guest data of @type in the cluster of @entry has a host offset: data and zero
 * clusters with a host cluster, and, as qemu reports them in block status, the unallocated
 * subclusters of an extended entry that has one.
 */
static bool has_host_offset(const struct qcow2_state *s, uint64_t entry, enum qcow2_ctype type)
{
	if (type == QCOW2_NORMAL || type == QCOW2_ZERO_ALLOC)
		return true;
	return type == QCOW2_UNALLOCATED && s->ext_l2 && !(entry & QCOW2_OFLAG_COMPRESSED) &&
	       (entry & QCOW2_OFFSET_MASK);
}

/* A write in place into an unaligned host cluster: qemu's handle_copied() signals it. */
static int bad_in_place(struct qcow2_state *s, uint64_t offset, uint64_t entry)
{
	/* The raw zero flag decides the wording, with extended L2 entries too. */
	return qcow2_signal_event(s, true, "%s offset %#" PRIx64 " unaligned (guest offset: %#"
				  PRIx64 ")", (entry & QCOW2_OFLAG_ZERO) ?
				  "Preallocated zero cluster" : "Data cluster",
				  (uint64_t)(entry & QCOW2_OFFSET_MASK), offset);
}

static bool in_place_unaligned(const struct qcow2_state *s, uint64_t entry)
{
	return (entry & QCOW2_OFLAG_COPIED) && entry_unaligned(s, entry);
}

/* Reports the bad first entry of a mapping (see get_mapping()). */
static int bad_entry(struct qcow2_state *s, uint64_t offset, uint64_t entry, bool invalid,
		     bool write)
{
	uint64_t l1i = offset >> (s->l2_bits + s->cluster_bits);
	uint64_t l2off = s->l1[l1i] & QCOW2_OFFSET_MASK;
	uint32_t l2i = (uint32_t)((offset >> s->cluster_bits) & (s->l2_size - 1));

	/* A write in place looks at the cluster before its bitmap. */
	if (write && in_place_unaligned(s, entry))
		return bad_in_place(s, offset, entry);
	/* qemu's read path says it with two spaces, its write path with one. */
	if (invalid)
		return qcow2_signal_event(s, true, "Invalid cluster entry found %s(L2 offset: %#"
					  PRIx64 ", L2 index: %#x)", write ? "" : " ", l2off, l2i);
	return qcow2_signal_event(s, true, "Cluster allocation offset %#" PRIx64 " unaligned "
				  "(L2 offset: %#" PRIx64 ", L2 index: %#x)",
				  (uint64_t)(entry & QCOW2_OFFSET_MASK), l2off, l2i);
}

int qcow2_write_lookahead(struct qcow2_state *s, uint64_t offset)
{
	uint64_t entry, bitmap;
	int ret = qcow2_get_l2_entry(s, offset, &entry, &bitmap);

	if (ret < 0)
		return ret;
	return in_place_unaligned(s, entry) ? bad_in_place(s, offset, entry) : 0;
}

/*
 * Only the first (sub)cluster of the run is checked, and reported as qemu reports it on the
 * path the caller is on; a bad entry further on ends the run, to be reported when reached.
 */
static int get_mapping(struct qcow2_state *s, uint64_t offset, uint64_t bytes,
		       struct qcow2_map *map, bool write)
{
	uint64_t l1i = offset >> (s->l2_bits + s->cluster_bits);
	uint32_t l2i = (uint32_t)((offset >> s->cluster_bits) & (s->l2_size - 1));
	uint64_t span_end = (l1i + 1) * qcow2_l1_span(s);
	uint64_t unit = s->subcluster_size, pos = offset, end;
	void *table;
	int ret = l2_for_read(s, l1i, &table);

	if (ret < 0)
		return ret;
	end = offset + TBLK_MIN(bytes, span_end - offset);
	map->host = 0;
	map->l2_entry = 0;
	if (!table) {
		map->type = QCOW2_UNALLOCATED;
		map->bytes = end - offset;
		return 0;
	}
	while (pos < end) {
		uint32_t i = l2i + (uint32_t)((pos - offset + qcow2_offset_into_cluster(s, offset))
					      >> s->cluster_bits);
		uint64_t entry = qcow2_l2_get(s, table, i);
		uint64_t bitmap = qcow2_l2_get_bitmap(s, table, i);
		uint64_t into = qcow2_offset_into_cluster(s, pos);
		uint64_t next = TBLK_MIN(qcow2_start_of_cluster(s, pos) + s->cluster_size, end);
		enum qcow2_ctype type = qcow2_entry_type(s, entry);
		uint64_t host = (entry & QCOW2_OFFSET_MASK) + into;

		if (s->ext_l2 && type != QCOW2_COMPRESSED) {
			ret = subcluster_type(s, entry, bitmap, (unsigned int)(into / unit), &type);
			next = TBLK_MIN(pos - (into % unit) + unit, end);
		}
		if (pos != offset && (ret < 0 || entry_unaligned(s, entry)))
			break;
		/*
		 * A cluster a write replaces is not looked at here: the copy-on-write read
		 * finds it unaligned, if there is one, as qemu's does.
		 */
		if (ret < 0 || (entry_unaligned(s, entry) && !(write && !(entry & QCOW2_OFLAG_COPIED))))
			return bad_entry(s, offset, entry, ret < 0, write);
		if (type == QCOW2_COMPRESSED && s->data != s->node->file)
			return qcow2_signal_event(s, true, "Compressed cluster entry found in image "
						  "with external data file (L2 offset: %#" PRIx64
						  ", L2 index: %#x)", (uint64_t)(s->l1[l1i] & QCOW2_OFFSET_MASK),
						  i);
		/* An unallocated subcluster of a host cluster has the host offset (see above). */
		if (!has_host_offset(s, entry, type))
			host = 0;
		if (pos == offset) {
			map->type = type;
			map->l2_entry = entry;
			map->host = host;
		} else if (type != map->type || type == QCOW2_COMPRESSED ||
			   ((entry ^ map->l2_entry) & QCOW2_OFLAG_COPIED) ||
			   (!host != !map->host) || (host && host != map->host + (pos - offset))) {
			break;
		}
		pos = next;
	}
	map->bytes = pos - offset;
	return 0;
}

int qcow2_get_mapping(struct qcow2_state *s, uint64_t offset, uint64_t bytes,
		      struct qcow2_map *map)
{
	return get_mapping(s, offset, bytes, map, false);
}

int qcow2_get_mapping_for_write(struct qcow2_state *s, uint64_t offset, uint64_t bytes,
				struct qcow2_map *map)
{
	return get_mapping(s, offset, bytes, map, true);
}

int qcow2_write_l1_entry(struct qcow2_state *s, uint32_t index)
{
	uint64_t be = htobe64(s->l1[index]);
	int ret;

	tblk_node_debug_event(s->node->file, TBLK_DBG_L1_UPDATE);
	ret = qcow2_meta_pwrite(s, QCOW2_OL_ACTIVE_L1, s->l1_offset + (uint64_t)index * 8, &be, 8);

	if (ret >= 0)
		ret = tblk_node_flush(s->node->file);
	return ret;
}

int qcow2_get_l2_for_write(struct qcow2_state *s, uint64_t offset, void **table,
			   uint32_t *index)
{
	uint64_t l1i = offset >> (s->l2_bits + s->cluster_bits);
	uint64_t old, old_off;
	int64_t new;
	void *t;
	int ret;

	*index = (uint32_t)((offset >> s->cluster_bits) & (s->l2_size - 1));
	if (l1i >= s->l1_size) {
		ret = qcow2_grow_l1(s, l1i + 1, false);
		if (ret < 0)
			return ret;
	}
	old = s->l1[l1i];
	old_off = old & QCOW2_OFFSET_MASK;
	if (old_off && (old & QCOW2_OFLAG_COPIED)) {
		ret = l2_for_read(s, l1i, table);
		return ret;
	}
	/* A new table, or a copy of one shared with a snapshot. */
	new = qcow2_alloc_clusters(s, s->cluster_size);
	if (new < 0)
		return (int)new;
	if (new == 0) {
		qcow2_signal_fatal(s, "Preventing invalid allocation of L2 table at offset 0");
		return -EIO;
	}
	if (old_off) {
		void *src;

		ret = l2_for_read(s, l1i, &src);
		if (ret < 0)
			return ret;
		ret = qcow2_cache_get(s->l2_cache, (uint64_t)new, true, &t);
		if (ret < 0)
			return ret;
		/* src may have been evicted by the get above: read it again. */
		tblk_node_debug_event(s->node->file, TBLK_DBG_L2_ALLOC_COW_READ);
		ret = tblk_node_pread(s->node->file, old_off, t, s->cluster_size);
		if (ret < 0)
			return ret;
		qcow2_cache_mark_dirty(s->l2_cache, t);
	} else {
		ret = qcow2_cache_get(s->l2_cache, (uint64_t)new, true, &t);
		if (ret < 0)
			return ret;
	}
	tblk_node_debug_event(s->node->file, TBLK_DBG_L2_ALLOC_WRITE);
	/* The table is on disk before the L1 entry that points at it. */
	ret = qcow2_cache_write(s->l2_cache);
	if (ret >= 0)
		ret = tblk_node_flush(s->node->file);
	if (ret < 0)
		return ret;
	s->meta_dirty = false;
	s->l1[l1i] = (uint64_t)new | QCOW2_OFLAG_COPIED;
	ret = qcow2_write_l1_entry(s, (uint32_t)l1i);
	if (ret < 0) {
		/* The disk may still point at the old table: so must we (the new one leaks). */
		s->l1[l1i] = old;
		return ret;
	}
	qcow2_overlap_l2_moved(s, old, s->l1[l1i]);
	if (old_off) {
		ret = qcow2_free_clusters(s, old_off, s->cluster_size, QCOW2_DISCARD_OTHER);
		if (ret < 0)
			return ret;
	}
	return qcow2_cache_get(s->l2_cache, (uint64_t)new, false, table);
}

int qcow2_grow_l1(struct qcow2_state *s, uint64_t min_size, bool exact)
{
	uint64_t new_size = exact ? min_size : TBLK_MAX((uint64_t)s->l1_size, 1);
	uint64_t old_off = s->l1_offset, old_bytes = (uint64_t)s->l1_size * 8;
	g_autofree uint64_t *table = NULL;
	uint64_t *old_l1;
	int64_t off;
	int ret;

	if (min_size <= s->l1_size)
		return 0;
	while (!exact && new_size < min_size)
		new_size = (new_size * 3 + 1) / 2;
	if (new_size * 8 > QCOW2_MAX_L1_BYTES)
		return -EFBIG;
	table = g_new0(uint64_t, new_size);
	for (uint32_t i = 0; i < s->l1_size; i++)
		table[i] = htobe64(s->l1[i]);
	tblk_node_debug_event(s->node->file, TBLK_DBG_L1_GROW_ALLOC_TABLE);
	off = qcow2_alloc_clusters(s, new_size * 8);
	if (off < 0)
		return (int)off;
	tblk_node_debug_event(s->node->file, TBLK_DBG_L1_GROW_WRITE_TABLE);
	ret = qcow2_cache_write(s->rc_cache);
	if (ret >= 0)
		ret = qcow2_meta_pwrite(s, 0, (uint64_t)off, table, new_size * 8);
	if (ret >= 0)
		ret = tblk_node_flush(s->node->file);
	if (ret < 0)
		return ret;
	for (uint64_t i = 0; i < new_size; i++)
		table[i] = be64toh(table[i]);
	old_l1 = s->l1;
	s->l1 = g_steal_pointer(&table);
	s->l1_size = (uint32_t)new_size;
	s->l1_offset = (uint64_t)off;
	tblk_node_debug_event(s->node->file, TBLK_DBG_L1_GROW_ACTIVATE_TABLE);
	ret = qcow2_header_write(s);
	if (ret < 0) {
		/* The header still names the old table: so must we. The new one leaks. */
		g_free(s->l1);
		s->l1 = old_l1;
		s->l1_size = (uint32_t)(old_bytes / 8);
		s->l1_offset = old_off;
		return ret;
	}
	g_free(old_l1);
	ret = tblk_node_flush(s->node->file);
	if (ret < 0)
		return ret;
	s->meta_dirty = false;
	return old_bytes ? qcow2_free_clusters(s, old_off, old_bytes, QCOW2_DISCARD_OTHER) : 0;
}
