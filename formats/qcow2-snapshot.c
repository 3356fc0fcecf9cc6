/* SPDX-License-Identifier: MIT */
/*
 * qcow2-snapshot.c - internal snapshots: the snapshot table (read and checked at open,
 * rewritten whole at a new place on every change, as qemu does), and the create, list, goto
 * and delete operations with their refcount walks. Every allocation, write and free happens
 * in the order qemu 7.2 does it, so that the same operations give the same image bytes.
 *
 * On-disk entry (spec: "Snapshots"): a 40-byte header (L1 offset and size, id and name
 * lengths, date, VM clock, VM state size, extra data size), the extra data (VM state size
 * 64-bit, disk size, icount; unknown trailing extra data is kept), the id, the name; each
 * entry starts 8-byte aligned.
 *
 * Threading: open/close run on the control thread; the operations run on the control thread
 * with the node drained and take the image lock for their whole duration.
 */
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2-int.h"

#define SN_HEADER_LEN		40
#define SN_EXTRA_LEN		24	/* the extra data fields we know */
#define SN_MAX_EXTRA		1024	/* qemu's limit on one entry's extra data */
#define SN_MAX_TABLE_BYTES	(1024ull * QCOW2_MAX_SNAPSHOTS)

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

static uint32_t get32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint64_t get64(const uint8_t *p)
{
	return ((uint64_t)get32(p) << 32) | get32(p + 4);
}

static void put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
	put16(p, (uint16_t)(v >> 16));
	put16(p + 2, (uint16_t)v);
}

static void put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)(v >> 32));
	put32(p + 4, (uint32_t)v);
}

static void snapshot_clear(struct qcow2_snapshot *sn)
{
	g_free(sn->id);
	g_free(sn->name);
	g_free(sn->unknown_extra);
	memset(sn, 0, sizeof(*sn));
}

void qcow2_snapshots_free(struct qcow2_state *s)
{
	for (uint32_t i = 0; s->snapshots && i < s->nb_snapshots; i++)
		snapshot_clear(&s->snapshots[i]);
	g_free(s->snapshots);
	s->snapshots = NULL;
}

/* ------------------------------------------------ reading the table */

/* Parses entry @i at @off (8-byte aligned); *end is where it ends. */
static int read_entry(struct qcow2_state *s, uint32_t i, uint64_t off, uint64_t file_size,
		      uint64_t *end, GError **errp)
{
	struct qcow2_snapshot *sn = &s->snapshots[i];
	uint8_t h[SN_HEADER_LEN];
	g_autofree uint8_t *rest = NULL;
	uint32_t extra, id_len, name_len, known;
	uint64_t rest_len;
	int ret;

	if (off > file_size || file_size - off < SN_HEADER_LEN)
		return tblk_error_set(errp, EUCLEAN, "Snapshot table entry %u lies beyond the end "
				      "of the file", i);
	ret = tblk_node_pread(s->node->file, off, h, sizeof(h));
	if (ret < 0)
		return tblk_error_set_errno(errp, -ret, "Failed to read snapshot table");
	sn->l1_offset = get64(h);
	sn->l1_size = get32(h + 8);
	id_len = get16(h + 12);
	name_len = get16(h + 14);
	sn->date_sec = get32(h + 16);
	sn->date_nsec = get32(h + 20);
	sn->vm_clock_nsec = get64(h + 24);
	sn->vm_state_size = get32(h + 32);
	extra = get32(h + 36);
	if (extra > SN_MAX_EXTRA)
		return tblk_error_set(errp, EFBIG, "Too much extra metadata in snapshot table "
				      "entry %u", i);
	rest_len = (uint64_t)extra + id_len + name_len;
	if (file_size - off - SN_HEADER_LEN < rest_len)
		return tblk_error_set(errp, EUCLEAN, "Snapshot table entry %u lies beyond the end "
				      "of the file", i);
	rest = g_malloc(rest_len + 1);
	ret = tblk_node_pread(s->node->file, off + SN_HEADER_LEN, rest, rest_len);
	if (ret < 0)
		return tblk_error_set_errno(errp, -ret, "Failed to read snapshot table");
	sn->extra_data_size = extra;
	sn->vm_state_size = extra >= 8 ? get64(rest) : sn->vm_state_size;
	sn->disk_size = extra >= 16 ? get64(rest + 8) : TBLK_ALIGN_UP(s->size, 512);
	sn->icount = extra >= 24 ? get64(rest + 16) : UINT64_MAX;
	known = TBLK_MIN(extra, (uint32_t)SN_EXTRA_LEN);
	if (extra > known)
		sn->unknown_extra = g_memdup2(rest + known, extra - known);
	/* A name with a NUL byte ends there, as in qemu. */
	sn->id = g_strndup((const char *)rest + extra, id_len);
	sn->name = g_strndup((const char *)rest + extra + id_len, name_len);
	*end = off + SN_HEADER_LEN + rest_len;
	return 0;
}

int qcow2_snapshots_read(struct qcow2_state *s, uint64_t file_size, GError **errp)
{
	uint64_t off = s->snapshots_offset, table_len = 0;
	int ret;

	s->snapshots = NULL;
	s->snapshots_size = 0;
	if (!s->nb_snapshots)
		return 0;
	if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS)
		return tblk_error_set(errp, EFBIG, "Snapshot table too large");
	if ((s->snapshots_offset & (s->cluster_size - 1)) ||
	    s->snapshots_offset > INT64_MAX - (uint64_t)s->nb_snapshots * SN_HEADER_LEN)
		return tblk_error_set(errp, EINVAL, "Snapshot table offset invalid");
	s->snapshots = g_new0(struct qcow2_snapshot, s->nb_snapshots);
	for (uint32_t i = 0; i < s->nb_snapshots; i++) {
		uint64_t end = 0;

		off = TBLK_ALIGN_UP(off, 8);
		ret = read_entry(s, i, off, file_size, &end, errp);
		if (ret < 0)
			goto out_free;
		table_len = TBLK_ALIGN_UP(table_len, 8) + (end - off);
		if (table_len > SN_MAX_TABLE_BYTES) {
			ret = tblk_error_set(errp, EFBIG, "Snapshot table is too big");
			goto out_free;
		}
		off = end;
	}
	s->snapshots_size = off - s->snapshots_offset;
	return 0;

out_free:
	qcow2_snapshots_free(s);
	return ret;
}

/* ------------------------------------------------ refcount walks */

/* qemu's error for a refcount that would overflow is EINVAL. */
static int change_refcount(struct qcow2_state *s, uint64_t off, uint64_t len, int addend,
			   GArray *discards)
{
	int ret = qcow2_update_refcount(s, off, len, addend);

	if (ret == -ERANGE)
		return -EINVAL;
	if (ret < 0 || addend >= 0 || !s->pass_discard[QCOW2_DISCARD_SNAPSHOT])
		return ret;
	/* Freed clusters are discarded in the file once the walk is on disk. */
	for (uint64_t c = off >> s->cluster_bits; c <= (off + len - 1) >> s->cluster_bits; c++) {
		uint64_t rc;

		ret = qcow2_get_refcount(s, c, &rc);
		if (ret < 0)
			return ret;
		if (rc == 0)
			g_array_append_val(discards, c);
	}
	return 0;
}

/* One L2 entry: its refcount change, and the entry with OFLAG_COPIED set as it must be. */
static int walk_entry(struct qcow2_state *s, uint64_t entry, int addend, GArray *discards,
		      uint64_t *out)
{
	uint64_t off = entry & QCOW2_OFFSET_MASK, rc = 0;
	int ret = 0;

	entry &= ~QCOW2_OFLAG_COPIED;
	switch (qcow2_entry_type(s, entry)) {
	case QCOW2_COMPRESSED: {
		uint64_t coff = entry & s->coffset_mask;
		uint64_t sectors = ((entry >> s->csize_shift) & s->csize_mask) + 1;

		if (addend)
			ret = change_refcount(s, coff, sectors * 512 - (coff & 511), addend,
					      discards);
		rc = 2;		/* compressed clusters are never written in place */
		break;
	}
	case QCOW2_NORMAL:
	case QCOW2_ZERO_ALLOC:
		if (off & (s->cluster_size - 1))
			return qcow2_signal_corruption(s, "Cluster allocation offset unaligned",
						       off);
		if (s->data != s->node->file)
			break;		/* external data: no refcounts */
		if (addend)
			ret = change_refcount(s, off, s->cluster_size, addend, discards);
		if (ret >= 0)
			ret = qcow2_get_refcount(s, off >> s->cluster_bits, &rc);
		break;
	default:
		break;
	}
	if (rc == 1)
		entry |= QCOW2_OFLAG_COPIED;
	*out = entry;
	return ret;
}

/*
 * The entries of the L2 table at @l2_off, with their refcounts changed by @addend. After a
 * failure the entries walked so far keep their new flags, as in qemu.
 */
static int walk_l2(struct qcow2_state *s, uint64_t l2_off, int addend, GArray *discards,
		   uint8_t *buf)
{
	bool modified = false;
	void *t;
	int ret = qcow2_cache_get(s->l2_cache, l2_off, false, &t), err = 0;

	if (ret < 0)
		return ret;
	memcpy(buf, t, s->cluster_size);
	for (uint32_t j = 0; j < s->l2_size && !err; j++) {
		uint64_t e = qcow2_l2_get(s, buf, j), ne = e;

		err = walk_entry(s, e, addend, discards, &ne);
		if (!err && ne != e) {
			qcow2_l2_set(s, buf, j, ne, qcow2_l2_get_bitmap(s, buf, j));
			modified = true;
		}
	}
	if (!modified)
		return err;
	ret = qcow2_cache_get(s->l2_cache, l2_off, false, &t);
	if (ret < 0)
		return ret;
	memcpy(t, buf, s->cluster_size);
	qcow2_cache_mark_dirty(s->l2_cache, t);
	return err;
}

/*
 * Adds @addend (+1, -1 or 0) to the refcount of every cluster the L1 table at @l1_offset
 * (@l1_size entries) references, L2 tables included, and sets OFLAG_COPIED on exactly the
 * entries whose cluster is then referenced once. The active L1 table is taken from memory
 * (goto relies on it: its disk copy may already be the snapshot's). The L1 table is written
 * back when changed, unless @addend is -1 (it is being freed).
 */
static int update_refcounts(struct qcow2_state *s, uint64_t l1_offset, uint32_t l1_size,
			    int addend)
{
	bool active = l1_offset == s->l1_offset, l1_modified = false;
	g_autofree uint64_t *own = NULL;
	g_autofree uint8_t *buf = g_malloc(s->cluster_size);
	g_autoptr(GArray) discards = g_array_new(false, false, sizeof(uint64_t));
	uint64_t *l1 = s->l1;
	int ret = 0;

	if (!active && l1_size) {
		own = g_try_new0(uint64_t, l1_size);
		if (!own)
			return -ENOMEM;
		ret = tblk_node_pread(s->node->file, l1_offset, own, (uint64_t)l1_size * 8);
		if (ret < 0)
			return ret;
		for (uint32_t i = 0; i < l1_size; i++)
			own[i] = be64toh(own[i]);
		l1 = own;
	}
	for (uint32_t i = 0; i < l1_size && ret >= 0; i++) {
		uint64_t l2_off = l1[i] & QCOW2_OFFSET_MASK, rc;

		if (!l1[i] || !l2_off)
			continue;
		if (l2_off & (s->cluster_size - 1)) {
			ret = qcow2_signal_corruption(s, "L2 table offset not aligned", l2_off);
			break;
		}
		ret = walk_l2(s, l2_off, addend, discards, buf);
		if (ret >= 0 && addend)
			ret = change_refcount(s, l2_off, s->cluster_size, addend, discards);
		if (ret >= 0)
			ret = qcow2_get_refcount(s, l2_off >> s->cluster_bits, &rc);
		if (ret < 0)
			break;
		if (rc == 1)
			l2_off |= QCOW2_OFLAG_COPIED;
		if (l2_off != l1[i]) {
			l1[i] = l2_off;
			l1_modified = true;
		}
	}
	if (ret >= 0)
		ret = qcow2_flush_metadata(s);
	if (ret >= 0)
		ret = tblk_node_flush(s->node->file);
	for (guint i = 0; i < discards->len; i++)
		(void)tblk_node_pdiscard(s->node->file,
					 g_array_index(discards, uint64_t, i) << s->cluster_bits,
					 s->cluster_size);
	if (ret >= 0 && addend >= 0 && l1_modified) {
		g_autofree uint64_t *be = g_new(uint64_t, l1_size);

		for (uint32_t i = 0; i < l1_size; i++)
			be[i] = htobe64(l1[i]);
		ret = qcow2_meta_pwrite(s, QCOW2_OL_UNCHECKED, l1_offset, be,
					(uint64_t)l1_size * 8);
		if (ret >= 0)
			ret = tblk_node_flush(s->node->file);
	}
	return ret < 0 ? ret : 0;
}

/* ------------------------------------------------ writing the table */

static size_t entry_len(const struct qcow2_snapshot *sn)
{
	return SN_HEADER_LEN + TBLK_MAX(sn->extra_data_size, (uint32_t)SN_EXTRA_LEN) +
	       strlen(sn->id) + strlen(sn->name);
}

static uint8_t *build_entry(const struct qcow2_snapshot *sn, size_t *len)
{
	uint32_t extra = TBLK_MAX(sn->extra_data_size, (uint32_t)SN_EXTRA_LEN);
	size_t id_len = strlen(sn->id), name_len = strlen(sn->name);
	uint8_t *e = g_malloc0(entry_len(sn));

	put64(e, sn->l1_offset);
	put32(e + 8, sn->l1_size);
	put16(e + 12, (uint16_t)id_len);
	put16(e + 14, (uint16_t)name_len);
	put32(e + 16, sn->date_sec);
	put32(e + 20, sn->date_nsec);
	put64(e + 24, sn->vm_clock_nsec);
	/* A VM state too big for 32 bits reads as none to old readers. */
	put32(e + 32, sn->vm_state_size <= UINT32_MAX ? (uint32_t)sn->vm_state_size : 0);
	put32(e + 36, extra);
	put64(e + 40, sn->vm_state_size);
	put64(e + 48, sn->disk_size);
	put64(e + 56, sn->icount);
	if (extra > SN_EXTRA_LEN)
		memcpy(e + 64, sn->unknown_extra, extra - SN_EXTRA_LEN);
	memcpy(e + SN_HEADER_LEN + extra, sn->id, id_len);
	memcpy(e + SN_HEADER_LEN + extra + id_len, sn->name, name_len);
	*len = entry_len(sn);
	return e;
}

/*
 * Writes s->snapshots (nb_snapshots entries) as a new table in newly allocated clusters,
 * points the header at it and frees the old one.
 */
static int write_table(struct qcow2_state *s)
{
	uint64_t size = 0, pos;
	uint8_t hdr[12];
	int64_t off;
	int ret;

	/* The list in memory changed (a snapshot added or removed): so did the L1 tables. */
	qcow2_overlap_snapshots_changed(s);
	for (uint32_t i = 0; i < s->nb_snapshots; i++) {
		size = TBLK_ALIGN_UP(size, 8) + entry_len(&s->snapshots[i]);
		if (size > SN_MAX_TABLE_BYTES)
			return -EFBIG;
	}
	off = qcow2_alloc_clusters(s, size);
	if (off < 0)
		return (int)off;
	ret = qcow2_flush_metadata(s);
	if (ret >= 0)
		ret = tblk_node_flush(s->node->file);
	if (ret >= 0)
		ret = qcow2_overlap_check(s, 0, (uint64_t)off, size);
	pos = (uint64_t)off;
	for (uint32_t i = 0; i < s->nb_snapshots && ret >= 0; i++) {
		size_t len;
		g_autofree uint8_t *e = build_entry(&s->snapshots[i], &len);

		pos = TBLK_ALIGN_UP(pos, 8);
		ret = tblk_node_pwrite(s->node->file, pos, e, len, 0);
		pos += len;
	}
	if (ret >= 0)
		ret = tblk_node_flush(s->node->file);
	if (ret < 0)
		return ret;
	/* Only the two header fields change. */
	put32(hdr, s->nb_snapshots);
	put64(hdr + 4, (uint64_t)off);
	ret = qcow2_meta_pwrite(s, QCOW2_OL_UNCHECKED, 60, hdr, sizeof(hdr));
	if (ret >= 0)
		ret = tblk_node_flush(s->node->file);
	if (ret < 0)
		return ret;
	if (s->snapshots_size)
		ret = qcow2_free_clusters(s, s->snapshots_offset, s->snapshots_size,
					  QCOW2_DISCARD_SNAPSHOT);
	s->snapshots_offset = (uint64_t)off;
	s->snapshots_size = size;
	return ret;
}

/* ------------------------------------------------ operations */

/* Index of the snapshot matching @id and @name (NULL: any), or -1. */
static int find_snapshot(const struct qcow2_state *s, const char *id, const char *name)
{
	if (!id && !name)
		return -1;
	for (uint32_t i = 0; i < s->nb_snapshots; i++) {
		const struct qcow2_snapshot *sn = &s->snapshots[i];

		if ((!id || !strcmp(sn->id, id)) && (!name || !strcmp(sn->name, name)))
			return (int)i;
	}
	return -1;
}

/* qemu's checks of a snapshot's L1 table before it is used, and that it is in the file. */
static int check_snapshot_l1(struct qcow2_state *s, const struct qcow2_snapshot *sn,
			     GError **errp)
{
	uint64_t bytes = (uint64_t)sn->l1_size * 8;
	int64_t flen;

	if (bytes > QCOW2_MAX_L1_BYTES)
		return tblk_error_set(errp, EFBIG, "Snapshot L1 table too large");
	if (sn->l1_offset > INT64_MAX - bytes || (sn->l1_offset & (s->cluster_size - 1)))
		return tblk_error_set(errp, EINVAL, "Snapshot L1 table offset invalid");
	flen = tblk_node_getlength(s->node->file);
	if (flen < 0)
		return tblk_error_set_errno(errp, (int)-flen, "Could not get the file size");
	if (sn->l1_offset + bytes > (uint64_t)flen)
		return tblk_error_set(errp, EUCLEAN, "Snapshot L1 table lies beyond the end of the "
				      "file");
	return 0;
}

int tblk__qcow2_snapshot_list(struct tblk_node *node, struct tblk_snapshot_info **psn, int *pn)
{
	struct qcow2_state *s = node->opaque;
	struct tblk_snapshot_info *out = NULL;

	qcow2_lock(s);
	if (s->nb_snapshots)
		out = g_new0(struct tblk_snapshot_info, s->nb_snapshots);
	for (uint32_t i = 0; i < s->nb_snapshots; i++) {
		const struct qcow2_snapshot *sn = &s->snapshots[i];

		out[i] = (struct tblk_snapshot_info){
			.id = g_strdup(sn->id),
			.name = g_strdup(sn->name),
			.vm_state_size = sn->vm_state_size,
			.date_sec = sn->date_sec,
			.date_nsec = sn->date_nsec,
			.vm_clock_nsec = sn->vm_clock_nsec,
			.icount = sn->icount,
			.disk_size = sn->disk_size,
		};
	}
	*pn = (int)s->nb_snapshots;
	*psn = out;
	qcow2_unlock(s);
	return 0;
}

/* The next id: one more than the largest numeric id. */
static char *new_id(const struct qcow2_state *s)
{
	unsigned long max = 0;

	for (uint32_t i = 0; i < s->nb_snapshots; i++)
		max = TBLK_MAX(max, strtoul(s->snapshots[i].id, NULL, 10));
	return g_strdup_printf("%lu", max + 1);
}

static int create_locked(struct qcow2_state *s, const struct tblk_snapshot_info *info)
{
	struct qcow2_snapshot sn = {
		.l1_size = s->l1_size,
		.disk_size = TBLK_ALIGN_UP(s->size, 512),
		.date_sec = info->date_sec,
		.date_nsec = info->date_nsec,
		.vm_clock_nsec = info->vm_clock_nsec,
		.icount = info->icount,
		.extra_data_size = SN_EXTRA_LEN,
	};
	g_autofree uint64_t *be = NULL;
	int64_t off;
	int ret;

	if (s->nb_snapshots >= QCOW2_MAX_SNAPSHOTS)
		return -EFBIG;
	if (s->data != s->node->file)
		return -ENOTSUP;
	if (s->corrupt)
		return -EIO;
	if (strlen(info->name ? info->name : "") > UINT16_MAX)
		return -EINVAL;
	/* The active L1 table is copied to new clusters. */
	off = qcow2_alloc_clusters(s, (uint64_t)s->l1_size * 8);
	if (off < 0)
		return (int)off;
	sn.l1_offset = (uint64_t)off;
	if (s->l1_size) {
		be = g_new(uint64_t, s->l1_size);
		for (uint32_t i = 0; i < s->l1_size; i++)
			be[i] = htobe64(s->l1[i]);
		ret = qcow2_meta_pwrite(s, 0, sn.l1_offset, be, (uint64_t)s->l1_size * 8);
		if (ret < 0)
			return ret;
	}
	/* Everything it references is shared now: on disk before the table names it. */
	ret = update_refcounts(s, s->l1_offset, s->l1_size, 1);
	if (ret < 0)
		return ret;
	sn.id = new_id(s);
	sn.name = g_strdup(info->name ? info->name : "");
	s->snapshots = g_renew(struct qcow2_snapshot, s->snapshots, s->nb_snapshots + 1);
	s->snapshots[s->nb_snapshots++] = sn;
	ret = write_table(s);
	if (ret < 0) {
		snapshot_clear(&s->snapshots[--s->nb_snapshots]);
		qcow2_overlap_snapshots_changed(s);
		return ret;
	}
	return 0;
}

int tblk__qcow2_snapshot_create(struct tblk_node *node, const struct tblk_snapshot_info *info,
				GError **errp)
{
	struct qcow2_state *s = node->opaque;
	int ret;

	qcow2_lock(s);
	ret = create_locked(s, info);
	qcow2_unlock(s);
	if (ret < 0)
		tblk_error_set_errno(errp, -ret, "Could not create snapshot");
	return ret;
}

/* Makes the snapshot's L1 table the active one (the image has the snapshot's size). */
static int goto_locked(struct qcow2_state *s, const struct qcow2_snapshot *sn)
{
	g_autofree uint64_t *sn_l1 = NULL;
	uint64_t cur_bytes;
	int ret = qcow2_grow_l1(s, sn->l1_size, true);

	if (ret < 0)
		return ret;
	cur_bytes = (uint64_t)s->l1_size * 8;
	sn_l1 = g_try_malloc0(TBLK_MAX(cur_bytes, 8));
	if (!sn_l1)
		return -ENOMEM;
	ret = tblk_node_pread(s->node->file, sn->l1_offset, sn_l1, (uint64_t)sn->l1_size * 8);
	if (ret < 0)
		return ret;
	/* References of the new table first, then the old one's are dropped. */
	ret = update_refcounts(s, sn->l1_offset, sn->l1_size, 1);
	if (ret < 0)
		return ret;
	ret = qcow2_meta_pwrite(s, QCOW2_OL_ACTIVE_L1, s->l1_offset, sn_l1, cur_bytes);
	if (ret >= 0)
		ret = tblk_node_flush(s->node->file);
	if (ret < 0)
		return ret;
	ret = update_refcounts(s, s->l1_offset, s->l1_size, -1);
	for (uint32_t i = 0; i < s->l1_size; i++)
		s->l1[i] = be64toh(sn_l1[i]);
	qcow2_overlap_invalidate(s);
	if (ret < 0)
		return ret;
	return update_refcounts(s, s->l1_offset, s->l1_size, 0);
}

int tblk__qcow2_snapshot_goto(struct tblk_node *node, const char *id_or_name, GError **errp)
{
	struct qcow2_state *s = node->opaque;
	struct qcow2_snapshot sn;
	int idx, ret;

	qcow2_lock(s);
	idx = find_snapshot(s, id_or_name, NULL);
	if (idx < 0)
		idx = find_snapshot(s, NULL, id_or_name);
	if (idx < 0) {
		qcow2_unlock(s);
		return tblk_error_set_errno(errp, ENOENT, "Failed to load snapshot");
	}
	sn = s->snapshots[idx];		/* the table does not change while we go */
	ret = check_snapshot_l1(s, &sn, errp);
	if (ret >= 0 && s->corrupt)
		ret = tblk_error_set_errno(errp, EIO, "Failed to load snapshot");
	if (ret >= 0 && sn.disk_size != TBLK_ALIGN_UP(s->size, 512)) {
		qcow2_unlock(s);
		if (!node->drv->truncate)
			return tblk_error_set(errp, ENOTSUP, "Image format driver does not "
					      "support resize");
		ret = node->drv->truncate(node, sn.disk_size, "off", errp);
		if (ret < 0)
			return ret;
		qcow2_lock(s);
	}
	if (ret >= 0) {
		ret = goto_locked(s, &sn);
		if (ret < 0)
			tblk_error_set_errno(errp, -ret, "Failed to load snapshot");
	}
	qcow2_unlock(s);
	return ret;
}

static int delete_locked(struct qcow2_state *s, int idx, GError **errp)
{
	struct qcow2_snapshot sn = s->snapshots[idx];
	int ret = check_snapshot_l1(s, &sn, errp);
	uint64_t l1_offset;
	uint32_t l1_size;

	if (ret < 0)
		return ret;
	if (s->corrupt)
		return tblk_error_set_errno(errp, EIO, "Failed to remove snapshot from snapshot "
					    "list");
	memmove(&s->snapshots[idx], &s->snapshots[idx + 1],
		(s->nb_snapshots - (uint32_t)idx - 1) * sizeof(sn));
	s->nb_snapshots--;
	ret = write_table(s);
	if (ret < 0) {
		memmove(&s->snapshots[idx + 1], &s->snapshots[idx],
			(s->nb_snapshots - (uint32_t)idx) * sizeof(sn));
		s->snapshots[idx] = sn;
		s->nb_snapshots++;
		qcow2_overlap_snapshots_changed(s);
		return tblk_error_set_errno(errp, -ret, "Failed to remove snapshot from snapshot "
					    "list");
	}
	/* From here a failure leaks clusters, nothing worse. */
	l1_offset = sn.l1_offset;
	l1_size = sn.l1_size;
	snapshot_clear(&sn);
	ret = update_refcounts(s, l1_offset, l1_size, -1);
	if (ret < 0)
		return tblk_error_set_errno(errp, -ret, "Failed to free the cluster and L1 table");
	if (l1_size)
		ret = qcow2_free_clusters(s, l1_offset, (uint64_t)l1_size * 8,
					  QCOW2_DISCARD_SNAPSHOT);
	/* Clusters the snapshot shared may be referenced once now. */
	if (ret >= 0)
		ret = update_refcounts(s, s->l1_offset, s->l1_size, 0);
	if (ret < 0)
		return tblk_error_set_errno(errp, -ret, "Failed to update snapshot status in disk");
	return 0;
}

int tblk__qcow2_snapshot_delete(struct tblk_node *node, const char *id, const char *name,
				GError **errp)
{
	struct qcow2_state *s = node->opaque;
	int idx, ret;

	qcow2_lock(s);
	idx = find_snapshot(s, id, name);
	if (idx < 0)
		ret = tblk_error_set(errp, ENOENT, "Can't find the snapshot");
	else
		ret = delete_locked(s, idx, errp);
	qcow2_unlock(s);
	return ret;
}

int tblk__qcow2_snapshot_load_tmp(struct tblk_node *node, const char *id, const char *name,
				  GError **errp)
{
	struct qcow2_state *s = node->opaque;
	g_autofree uint64_t *l1 = NULL;
	struct qcow2_snapshot sn;
	int idx, ret;

	qcow2_lock(s);
	idx = find_snapshot(s, id, name);
	if (idx < 0) {
		ret = tblk_error_set(errp, ENOENT, "Can't find snapshot");
		goto out_unlock;
	}
	sn = s->snapshots[idx];
	ret = check_snapshot_l1(s, &sn, errp);
	if (ret < 0)
		goto out_unlock;
	l1 = g_try_new0(uint64_t, TBLK_MAX(sn.l1_size, 1u));
	if (!l1) {
		ret = tblk_error_set(errp, ENOMEM, "Could not allocate the snapshot's L1 table");
		goto out_unlock;
	}
	ret = tblk_node_pread(s->node->file, sn.l1_offset, l1, (uint64_t)sn.l1_size * 8);
	if (ret < 0) {
		tblk_error_set_errno(errp, -ret, "Could not read the snapshot's L1 table");
		goto out_unlock;
	}
	for (uint32_t i = 0; i < sn.l1_size; i++)
		l1[i] = be64toh(l1[i]);
	/* Read-only from here on: the image reads as the snapshot until it is closed. */
	g_free(s->l1);
	s->l1 = g_steal_pointer(&l1);
	s->l1_size = sn.l1_size;
	s->l1_offset = sn.l1_offset;
	qcow2_overlap_invalidate(s);
out_unlock:
	qcow2_unlock(s);
	return ret;
}
