/* SPDX-License-Identifier: MIT */
/*
 * qcow2-bitmap.c - persistent dirty bitmaps, read only: the bitmap directory the bitmaps
 * extension points to is read at open (when the extension is consistent: its autoclear bit
 * set), listed by `info`, and walked by `check`, for which the clusters of the directory, of
 * each bitmap table and of the bitmap data are referenced like any metadata.
 *
 * We do not maintain bitmaps. Opening an image for writing clears the bitmaps autoclear bit
 * (qcow2.c), which tells every later reader that the bitmaps no longer describe the disk, as
 * the specification asks of programs without bitmap support; the list is dropped with it.
 * A repair (check -r) writes only refcounts and keeps the bit and the bitmaps.
 *
 * Threading: read at open; after that the list is constant until close.
 */
#include <string.h>

#include "formats/qcow2-int.h"

#define BITMAP_MAX			65535		/* qemu's limit on their number */
#define BITMAP_MAX_DIR_BYTES		(64u << 20)
#define BITMAP_MAX_TABLE_ENTRIES	0x8000000u
#define BITMAP_ENTRY_HEADER		24
#define BITMAP_TABLE_OFFSET_MASK	0x00fffffffffffe00ull

void qcow2_bitmaps_free(struct qcow2_state *s)
{
	for (unsigned int i = 0; i < s->nb_bitmaps; i++)
		g_free((char *)s->bitmap_info[i].name);
	g_free(s->bitmaps);
	g_free(s->bitmap_info);
	s->bitmaps = NULL;
	s->bitmap_info = NULL;
	s->nb_bitmaps = 0;
}

static const struct qcow2_ext *bitmaps_ext(struct qcow2_state *s)
{
	for (const struct qcow2_ext *e = s->unknown_exts; e; e = e->next)
		if (e->type == QCOW2_EXT_BITMAPS)
			return e;
	return NULL;
}

/* Parses the directory @dir of @size bytes holding @n entries. */
static int parse_directory(struct qcow2_state *s, const uint8_t *dir, uint64_t size, uint32_t n,
			   uint64_t flen, GError **errp)
{
	uint64_t pos = 0;

	s->bitmaps = g_new0(struct qcow2_bitmap, n);
	s->bitmap_info = g_new0(struct tblk_bitmap_info, n);
	for (uint32_t i = 0; i < n; i++) {
		struct qcow2_bitmap *b = &s->bitmaps[i];
		struct tblk_bitmap_info *info = &s->bitmap_info[i];
		const uint8_t *e = dir + pos;
		uint32_t flags, extra;
		uint16_t name_len;
		uint64_t len;

		if (size - pos < BITMAP_ENTRY_HEADER)
			return tblk_error_set(errp, EINVAL, "Bitmap directory is truncated");
		b->table_offset = qcow2_get_be64(e);
		b->table_size = qcow2_get_be32(e + 8);
		flags = qcow2_get_be32(e + 12);
		b->type = e[16];
		b->granularity_bits = e[17];
		name_len = qcow2_get_be16(e + 18);
		extra = qcow2_get_be32(e + 20);
		len = TBLK_ALIGN_UP(BITMAP_ENTRY_HEADER + (uint64_t)extra + name_len, 8);
		if (len > size - pos || name_len == 0 || name_len > 1023 || b->type != 1 ||
		    b->granularity_bits < 9 || b->granularity_bits > 31 ||
		    (flags & ~(QCOW2_BITMAP_IN_USE | QCOW2_BITMAP_AUTO | QCOW2_BITMAP_EXTRA_OK)) ||
		    (b->table_offset & (s->cluster_size - 1)) || b->table_size == 0 ||
		    b->table_size > BITMAP_MAX_TABLE_ENTRIES ||
		    b->table_offset > flen || (uint64_t)b->table_size * 8 > flen - b->table_offset)
			return tblk_error_set(errp, EINVAL, "Bitmap directory entry %u is invalid", i);
		b->name_size = name_len;
		info->name = g_strndup((const char *)e + BITMAP_ENTRY_HEADER + extra, name_len);
		info->granularity = 1ull << b->granularity_bits;
		info->in_use = flags & QCOW2_BITMAP_IN_USE;
		info->is_auto = flags & QCOW2_BITMAP_AUTO;
		s->nb_bitmaps = i + 1;
		pos += len;
	}
	return 0;
}

int qcow2_bitmaps_read(struct qcow2_state *s, uint64_t flen, GError **errp)
{
	const struct qcow2_ext *e = bitmaps_ext(s);
	g_autofree uint8_t *dir = NULL;
	uint32_t n;
	int ret;

	if (!e || !(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
		return 0;
	if (e->len < 24)
		return tblk_error_set(errp, EINVAL, "Bitmaps extension is too short");
	n = qcow2_get_be32(e->data);
	s->bitmap_dir_size = qcow2_get_be64(e->data + 8);
	s->bitmap_dir_offset = qcow2_get_be64(e->data + 16);
	if (n == 0 || n > BITMAP_MAX || qcow2_get_be32(e->data + 4) ||
	    s->bitmap_dir_size < BITMAP_ENTRY_HEADER || s->bitmap_dir_size > BITMAP_MAX_DIR_BYTES ||
	    (s->bitmap_dir_offset & (s->cluster_size - 1)) || s->bitmap_dir_offset > flen ||
	    s->bitmap_dir_size > flen - s->bitmap_dir_offset)
		return tblk_error_set(errp, EINVAL, "Bitmaps extension is invalid");
	dir = g_malloc(s->bitmap_dir_size);
	ret = tblk_node_pread(s->node->file, s->bitmap_dir_offset, dir, s->bitmap_dir_size);
	if (ret < 0)
		return tblk_error_set_errno(errp, -ret, "Could not read the bitmap directory");
	ret = parse_directory(s, dir, s->bitmap_dir_size, n, flen, errp);
	if (ret < 0)
		qcow2_bitmaps_free(s);
	return ret;
}

int qcow2_bitmaps_for_each_cluster(struct qcow2_state *s,
				   void (*fn)(void *opaque, uint64_t offset, uint64_t len),
				   void *opaque)
{
	if (!s->nb_bitmaps)
		return 0;
	fn(opaque, s->bitmap_dir_offset, s->bitmap_dir_size);
	for (unsigned int i = 0; i < s->nb_bitmaps; i++) {
		const struct qcow2_bitmap *b = &s->bitmaps[i];
		g_autofree uint64_t *t = g_new(uint64_t, b->table_size);
		int ret;

		fn(opaque, b->table_offset, (uint64_t)b->table_size * 8);
		ret = tblk_node_pread(s->node->file, b->table_offset, t,
				      (uint64_t)b->table_size * 8);
		if (ret < 0)
			return ret;
		for (uint32_t k = 0; k < b->table_size; k++) {
			uint64_t off = be64toh(t[k]) & BITMAP_TABLE_OFFSET_MASK;

			if (off)
				fn(opaque, off, s->cluster_size);
		}
	}
	return 0;
}
