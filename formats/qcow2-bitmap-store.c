/* SPDX-License-Identifier: MIT */
/*
 * qcow2-bitmap-store.c - writing persistent bitmaps the way qemu 7.2 does, so the same
 * operations give the same file: each bitmap is written to new clusters (its data clusters
 * in order, skipping all-zero ones, then its table), then a new directory, the header
 * pointed at it, and only then the old directory and the old tables are freed. Opening for
 * writing marks the bitmaps in use in the directory, rewritten in place, with the bitmaps
 * autoclear bit cleared meanwhile (a crash in between leaves bitmaps a reader ignores).
 *
 * Threading: control thread, image drained, image lock held by the caller.
 */
#include <string.h>

#include "formats/qcow2-bitmap.h"

/* Points the bitmaps extension (kept with the unknown ones, first) at the directory. */
static void set_extension(struct qcow2_state *s)
{
	struct qcow2_ext **pe = &s->unknown_exts, *e;

	while (*pe && (*pe)->type != QCOW2_EXT_BITMAPS)
		pe = &(*pe)->next;
	if (!s->nb_bitmaps) {
		if (*pe) {
			e = *pe;
			*pe = e->next;
			g_free(e->data);
			g_free(e);
		}
		s->has_bitmaps_ext = false;
		return;
	}
	e = *pe;
	if (!e) {
		/* qemu writes it before any extension it does not know. */
		e = g_new0(struct qcow2_ext, 1);
		e->type = QCOW2_EXT_BITMAPS;
		e->next = s->unknown_exts;
		s->unknown_exts = e;
	}
	g_free(e->data);
	e->len = 24;
	e->data = g_malloc0(24);
	*(uint32_t *)e->data = htobe32(s->nb_bitmaps);
	*(uint64_t *)(e->data + 8) = htobe64(s->bitmap_dir_size);
	*(uint64_t *)(e->data + 16) = htobe64(s->bitmap_dir_offset);
	s->has_bitmaps_ext = true;
}

/* The header written and flushed (qemu's update_header_sync). */
static int header_sync(struct qcow2_state *s)
{
	int ret;

	set_extension(s);
	ret = qcow2_header_write(s);
	if (ret >= 0)
		ret = tblk_node_flush(s->node->file);
	return ret;
}

static uint64_t entry_size(const char *name)
{
	return TBLK_ALIGN_UP(BITMAP_ENTRY_HEADER + strlen(name), 8);
}

static uint64_t dir_size(GArray *list)
{
	uint64_t size = 0;

	for (unsigned int i = 0; i < list->len; i++)
		size += entry_size(g_array_index(list, struct qcow2_dirent, i).name);
	return size;
}

/* Writes @list as a directory at *offset (allocated unless @in_place). */
static int dir_write(struct qcow2_state *s, GArray *list, uint64_t *offset, uint64_t *size,
		     bool in_place)
{
	uint64_t len = dir_size(list), pos = 0;
	g_autofree uint8_t *dir = NULL;
	int64_t off;
	int ret;

	if (!len || len > BITMAP_MAX_DIR_BYTES || (in_place && len != *size))
		return -EINVAL;
	dir = g_malloc0(len);
	for (unsigned int i = 0; i < list->len; i++) {
		const struct qcow2_dirent *e = &g_array_index(list, struct qcow2_dirent, i);
		uint8_t *p = dir + pos;
		size_t nlen = strlen(e->name);

		*(uint64_t *)p = htobe64(e->table_offset);
		*(uint32_t *)(p + 8) = htobe32(e->table_size);
		*(uint32_t *)(p + 12) = htobe32(e->flags);
		p[16] = 1;	/* dirty tracking bitmap */
		p[17] = (uint8_t)e->gran_bits;
		p[18] = (uint8_t)(nlen >> 8);
		p[19] = (uint8_t)nlen;
		memcpy(p + BITMAP_ENTRY_HEADER, e->name, nlen);
		pos += entry_size(e->name);
	}
	off = in_place ? (int64_t)*offset : qcow2_alloc_clusters(s, len);
	if (off < 0)
		return (int)off;
	ret = qcow2_meta_pwrite(s, 0, (uint64_t)off, dir, len);
	if (ret < 0) {
		if (!in_place)
			(void)qcow2_free_clusters(s, (uint64_t)off, len, QCOW2_DISCARD_OTHER);
		return ret;
	}
	*offset = (uint64_t)off;
	*size = len;
	return 0;
}

int qcow2_bitmap_dir_update(struct qcow2_state *s, GArray *list)
{
	uint64_t old_off = s->bitmap_dir_offset, old_size = s->bitmap_dir_size;
	uint64_t off = 0, size = 0;
	int ret;

	if (list->len > BITMAP_MAX)
		return -EINVAL;
	if (list->len) {
		ret = dir_write(s, list, &off, &size, false);
		if (ret < 0)
			return ret;
		ret = qcow2_flush_metadata(s);
		if (ret >= 0)
			ret = tblk_node_flush(s->node->file);
		if (ret < 0)
			return ret;
		s->autoclear |= QCOW2_AUTOCLEAR_BITMAPS;
	} else {
		s->autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
	}
	s->bitmap_dir_offset = off;
	s->bitmap_dir_size = size;
	qcow2_dirents_publish(s, list);
	ret = header_sync(s);
	if (ret < 0)
		return ret;
	if (old_size)
		(void)qcow2_free_clusters(s, old_off, old_size, QCOW2_DISCARD_OTHER);
	return 0;
}

int qcow2_bitmap_free_clusters(struct qcow2_state *s, uint64_t table_offset, uint32_t size)
{
	g_autofree uint64_t *t = NULL;
	int ret;

	if (!size)
		return 0;
	ret = qcow2_bitmap_table_read(s, table_offset, size, &t);
	if (ret < 0)
		return ret;
	for (uint32_t i = 0; i < size; i++) {
		uint64_t off = t[i] & BITMAP_TABLE_OFFSET_MASK;

		if (off)
			(void)qcow2_free_clusters(s, off, s->cluster_size, QCOW2_DISCARD_ALWAYS);
	}
	return qcow2_free_clusters(s, table_offset, (uint64_t)size * 8, QCOW2_DISCARD_OTHER);
}

/* True if a bit of @b in [first, first + n) is set. */
static bool any_set(const struct qcow2_dbm *b, uint64_t first, uint64_t n)
{
	for (uint64_t w = first / 64; w < (first + n + 63) / 64; w++)
		if (b->words[w])
			return true;
	return false;
}

/* Writes @e's bitmap to new clusters: the data, then the table (qemu's store_bitmap). */
static int store_bitmap(struct qcow2_state *s, struct qcow2_dirent *e)
{
	const struct qcow2_dbm *b = e->dbm;
	uint64_t bytes = qcow2_dbm_bytes(b->nbits);
	uint64_t tb_size = (bytes + s->cluster_size - 1) >> s->cluster_bits;
	uint64_t bits_per_cluster = (uint64_t)s->cluster_size * 8;
	g_autofree uint64_t *tb = NULL;
	g_autofree uint8_t *buf = NULL;
	int64_t off;
	int ret;

	if (tb_size > BITMAP_MAX_TABLE_ENTRIES || tb_size * s->cluster_size > BITMAP_MAX_PHYS_BYTES)
		return -EFBIG;
	tb = g_try_new0(uint64_t, TBLK_MAX(tb_size, 1ull));
	if (!tb)
		return -ENOMEM;
	buf = g_malloc(s->cluster_size);
	for (uint64_t i = 0; i < tb_size; i++) {
		uint64_t first = i * bits_per_cluster;
		uint64_t chunk = TBLK_MIN(bytes - i * s->cluster_size, (uint64_t)s->cluster_size);

		if (!any_set(b, first, TBLK_MIN(bits_per_cluster, b->nbits - first)))
			continue;
		off = qcow2_alloc_clusters(s, s->cluster_size);
		if (off < 0)
			return (int)off;
		tb[i] = (uint64_t)off;
		memset(buf, 0, s->cluster_size);
		for (uint64_t k = 0; k < chunk / 8; k++) {
			uint64_t w = htole64(b->words[i * s->cluster_size / 8 + k]);

			memcpy(buf + k * 8, &w, 8);
		}
		ret = qcow2_meta_pwrite(s, 0, (uint64_t)off, buf, s->cluster_size);
		if (ret < 0)
			return ret;
	}
	off = qcow2_alloc_clusters(s, tb_size * 8);
	if (off < 0)
		return (int)off;
	for (uint64_t i = 0; i < tb_size; i++)
		tb[i] = htobe64(tb[i]);
	ret = qcow2_meta_pwrite(s, 0, (uint64_t)off, tb, tb_size * 8);
	if (ret < 0)
		return ret;
	e->table_offset = (uint64_t)off;
	e->table_size = (uint32_t)tb_size;
	return 0;
}

/* qemu's check_constraints_on_bitmap for a bitmap being stored. */
static int check_constraints(struct qcow2_state *s, const struct qcow2_dbm *b, GError **errp)
{
	if (qcow2_dbm_too_big(s->size, s->cluster_size, b->gran_bits))
		return tblk_error_set(errp, EINVAL, "Bitmap '%s' doesn't satisfy the constraints: "
				      "Too much space will be occupied by the bitmap. Use larger "
				      "granularity", b->name);
	return 0;
}

/*
 * The directory with an entry for each bitmap in memory that is to be stored (added at the
 * end if new); the tables they replace go to @drop. 1 if something is to be written.
 */
static int plan_store(struct qcow2_state *s, GArray *list, GArray *drop, GError **errp)
{
	uint64_t dsize = s->bitmap_dir_size;
	bool need = false;

	for (struct qcow2_dbm *b = s->dbms; b; b = b->next) {
		struct qcow2_dirent *e;

		if (b->inconsistent || !b->words)
			continue;
		need = true;
		if (check_constraints(s, b, errp) < 0)
			return -EINVAL;
		e = qcow2_dirents_find(list, b->name);
		if (!e) {
			struct qcow2_dirent n = { .name = g_strdup(b->name) };

			if (list->len + 1 > BITMAP_MAX)
				return tblk_error_set(errp, EINVAL, "Too many persistent bitmaps");
			dsize += entry_size(b->name);
			if (dsize > BITMAP_MAX_DIR_BYTES)
				return tblk_error_set(errp, EINVAL, "Bitmap directory is too large");
			g_array_append_val(list, n);
			e = &g_array_index(list, struct qcow2_dirent, list->len - 1);
		} else {
			struct qcow2_dirent old = { .table_offset = e->table_offset,
						    .table_size = e->table_size };

			if (!(e->flags & QCOW2_BITMAP_IN_USE))
				return tblk_error_set(errp, EINVAL, "Bitmap '%s' already exists in "
						      "the image", b->name);
			g_array_append_val(drop, old);
			e->table_offset = 0;
			e->table_size = 0;
		}
		e->flags = b->enabled ? QCOW2_BITMAP_AUTO : 0;
		e->gran_bits = b->gran_bits;
		e->dbm = b;
	}
	return need;
}

int qcow2_bitmaps_store(struct qcow2_state *s, GError **errp)
{
	GArray *list = qcow2_dirents_load(s);
	GArray *drop = g_array_new(FALSE, TRUE, sizeof(struct qcow2_dirent));
	int ret;

	ret = plan_store(s, list, drop, errp);
	if (ret <= 0)
		goto out;
	if (s->read_only) {
		ret = tblk_error_set(errp, EPERM, "No write access");
		goto out;
	}
	for (unsigned int i = 0; i < list->len; i++) {
		struct qcow2_dirent *e = &g_array_index(list, struct qcow2_dirent, i);

		if (!e->dbm)
			continue;
		ret = store_bitmap(s, e);
		if (ret < 0) {
			tblk_error_set_errno(errp, -ret, "Failed to store bitmap '%s'", e->name);
			goto out;
		}
	}
	ret = qcow2_bitmap_dir_update(s, list);
	if (ret < 0) {
		tblk_error_set_errno(errp, -ret, "Failed to update bitmap extension");
		goto out;
	}
	for (unsigned int i = 0; i < drop->len; i++) {
		const struct qcow2_dirent *d = &g_array_index(drop, struct qcow2_dirent, i);

		(void)qcow2_bitmap_free_clusters(s, d->table_offset, d->table_size);
	}
	ret = 0;
out:
	g_array_free(drop, TRUE);
	qcow2_dirents_free(list);
	return ret;
}

int qcow2_bitmaps_mark_in_use(struct qcow2_state *s, GError **errp)
{
	GArray *list = qcow2_dirents_load(s);
	uint64_t off = s->bitmap_dir_offset, size = s->bitmap_dir_size;
	bool need = false;
	int ret = 0;

	for (unsigned int i = 0; i < list->len; i++) {
		struct qcow2_dirent *e = &g_array_index(list, struct qcow2_dirent, i);

		if (!(e->flags & QCOW2_BITMAP_IN_USE)) {
			e->flags |= QCOW2_BITMAP_IN_USE;
			need = true;
		}
	}
	if (!need)
		goto out;
	/* While the directory is rewritten, readers must not trust it. */
	s->autoclear &= ~QCOW2_AUTOCLEAR_BITMAPS;
	ret = header_sync(s);
	if (ret >= 0)
		ret = dir_write(s, list, &off, &size, true);
	if (ret >= 0)
		ret = qcow2_flush_metadata(s);
	if (ret >= 0) {
		s->autoclear |= QCOW2_AUTOCLEAR_BITMAPS;
		qcow2_dirents_publish(s, list);
		ret = header_sync(s);
	}
	if (ret < 0)
		tblk_error_set_errno(errp, -ret, "Can't update bitmap directory");
out:
	qcow2_dirents_free(list);
	return ret;
}
