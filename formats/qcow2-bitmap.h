/* SPDX-License-Identifier: MIT */
/*
 * qcow2-bitmap.h - what the persistent bitmap files share (qcow2-bitmap.c reads the
 * directory and keeps the bitmaps in memory, qcow2-bitmap-store.c writes them as qemu
 * does, qcow2-bitmap-ops.c offers qemu-img bitmap's actions and tracks writes).
 *
 * Threading: the list of bitmaps in memory and every field but the bits change only on the
 * control thread with the image drained (open, close, tblk_blk_bitmap_apply, resize). The
 * bits are set by writers on any thread with atomic ORs and read only while drained.
 */
#ifndef TBLK_QCOW2_BITMAP_H
#define TBLK_QCOW2_BITMAP_H

#include "formats/qcow2-int.h"

#define BITMAP_MAX			65535		/* qemu's limit on their number */
#define BITMAP_MAX_DIR_BYTES		(1024u * BITMAP_MAX)	/* qemu's: 67107840 */
#define BITMAP_MAX_TABLE_ENTRIES	0x8000000u
#define BITMAP_MAX_PHYS_BYTES		0x20000000u	/* bitmap data, in clusters */
#define BITMAP_MAX_NAME			1023
#define BITMAP_MIN_GRAN_BITS		9
#define BITMAP_MAX_GRAN_BITS		31
#define BITMAP_ENTRY_HEADER		24
#define BITMAP_TABLE_OFFSET_MASK	0x00fffffffffffe00ull
#define BITMAP_TABLE_RESERVED		0xff000000000001feull
#define BITMAP_TABLE_ALL_ONES		1ull

/* A bitmap in memory (qemu's BdrvDirtyBitmap, persistent). */
struct qcow2_dbm {
	char *name;			/* [drained] */
	unsigned int gran_bits;		/* [drained] */
	uint64_t nbits;			/* [drained] bits covering the image size */
	/*
	 * The pointer: [drained], or [meta] where a read-only image reads the bits on demand;
	 * the bits: [atomic] ORs by writers. Bit i in words[i / 64]; NULL: not read yet.
	 */
	uint64_t *words;
	bool enabled;			/* [drained] tracks writes */
	bool inconsistent;		/* [drained] in use on disk when opened: never stored */
	struct qcow2_dbm *next;		/* [drained] on qcow2_state.dbms */
};

/* A directory entry while a new directory is made (qemu's Qcow2Bitmap). */
struct qcow2_dirent {
	char *name;
	uint64_t table_offset;
	uint32_t table_size;
	uint32_t flags;
	unsigned int gran_bits;
	struct qcow2_dbm *dbm;		/* the bitmap to store there, or NULL: keep the table */
};

/* qcow2-bitmap.c */
uint64_t qcow2_dbm_nbits(uint64_t size, unsigned int gran_bits);
struct qcow2_dbm *qcow2_dbm_new(const char *name, unsigned int gran_bits, uint64_t size);
void qcow2_dbm_free(struct qcow2_dbm *b);
struct qcow2_dbm *qcow2_dbm_find(struct qcow2_state *s, const char *name);
/* Reads the bits of @b from its directory entry, if not done yet. Image lock held. */
int qcow2_dbm_load(struct qcow2_state *s, struct qcow2_dbm *b);
/* Bytes of the serialised bits (whole 64-bit words) of @nbits bits. */
static inline uint64_t qcow2_dbm_bytes(uint64_t nbits)
{
	return (nbits + 63) / 64 * 8;
}
/* True if a bitmap of @size bytes at that granularity exceeds qemu's limits on its data. */
static inline bool qcow2_dbm_too_big(uint64_t size, uint32_t cluster_size, unsigned int gran_bits)
{
	uint64_t bytes = (qcow2_dbm_nbits(size, gran_bits) + 7) / 8;

	return bytes > BITMAP_MAX_PHYS_BYTES ||
	       bytes > (uint64_t)BITMAP_MAX_TABLE_ENTRIES * cluster_size;
}
/* The directory as read (s->bitmaps) as a list of entries; free with qcow2_dirents_free. */
GArray *qcow2_dirents_load(struct qcow2_state *s);
void qcow2_dirents_free(GArray *list);
struct qcow2_dirent *qcow2_dirents_find(GArray *list, const char *name);
/* Replaces s->bitmaps and s->bitmap_info with @list (the directory just written). */
void qcow2_dirents_publish(struct qcow2_state *s, GArray *list);
/* qemu's check_table_entry: reserved bits clear, a data offset aligned and not "all ones". */
bool qcow2_bitmap_entry_valid(const struct qcow2_state *s, uint64_t entry);
/* Reads a bitmap table of @size entries at @offset (host order). */
int qcow2_bitmap_table_read(struct qcow2_state *s, uint64_t offset, uint32_t size,
			    uint64_t **table);

/* Resize (qcow2-resize.c, image lock held, drained): checks and new arrays, then the switch. */
int qcow2_bitmaps_resize_prepare(struct qcow2_state *s, uint64_t size, GPtrArray **prep,
				 GError **errp);
void qcow2_bitmaps_resize_commit(struct qcow2_state *s, GPtrArray *prep);

/* qcow2-bitmap-store.c, image lock held */
/* Writes @list as the new directory, points the header at it, frees the old one. */
int qcow2_bitmap_dir_update(struct qcow2_state *s, GArray *list);
/* Frees a bitmap's data clusters and table. */
int qcow2_bitmap_free_clusters(struct qcow2_state *s, uint64_t table_offset, uint32_t size);
/* Stores every bitmap in memory that may be (qemu's qcow2_store_persistent_dirty_bitmaps). */
int qcow2_bitmaps_store(struct qcow2_state *s, GError **errp);
/* Sets IN_USE on every consistent bitmap, the directory rewritten in place. */
int qcow2_bitmaps_mark_in_use(struct qcow2_state *s, GError **errp);

#endif /* TBLK_QCOW2_BITMAP_H */
