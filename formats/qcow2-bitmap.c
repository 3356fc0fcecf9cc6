/* SPDX-License-Identifier: MIT */
/*
 * qcow2-bitmap.c - persistent dirty bitmaps: the bitmap directory the bitmaps extension
 * points to is read at open (when the extension is consistent: its autoclear bit set),
 * listed by `info`, and walked by `check`, for which the clusters of the directory, of each
 * bitmap table and of the bitmap data are referenced like any metadata. Here too: the
 * bitmaps in memory, as qemu loads them at open (one per directory entry, enabled if "auto",
 * inconsistent if "in use"), their bits read from the image, and set by writes.
 * Writing them back is qcow2-bitmap-store.c's.
 *
 * Threading: see qcow2-bitmap.h. The directory (s->bitmaps, s->bitmap_info) changes only
 * on the control thread with the image drained.
 */
#include <string.h>

#include "formats/qcow2-bitmap.h"

void qcow2_bitmaps_free(struct qcow2_state *s)
{
	while (s->dbms) {
		struct qcow2_dbm *b = s->dbms;

		s->dbms = b->next;
		qcow2_dbm_free(b);
	}
	s->nr_dbm_enabled = 0;
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

/* qemu's check_dir_entry: the fields of an entry it would load. */
static bool entry_valid(const struct qcow2_state *s, const struct qcow2_bitmap *b)
{
	uint64_t phys = (uint64_t)b->table_size * s->cluster_size;

	if (!b->table_size || !b->table_offset || (b->table_offset & (s->cluster_size - 1)) ||
	    b->table_size > BITMAP_MAX_TABLE_ENTRIES ||
	    b->granularity_bits > BITMAP_MAX_GRAN_BITS ||
	    b->granularity_bits < BITMAP_MIN_GRAN_BITS ||
	    (b->flags & ~(QCOW2_BITMAP_IN_USE | QCOW2_BITMAP_AUTO)) ||
	    b->name_size > BITMAP_MAX_NAME || b->type != 1 || phys > BITMAP_MAX_PHYS_BYTES)
		return false;
	/* A bitmap to be loaded must have a table large enough for the image. */
	return (b->flags & QCOW2_BITMAP_IN_USE) || s->size <= (phys * 8) << b->granularity_bits;
}

/*
 * Parses the directory @dir of @size bytes, which must hold exactly @n entries, in qemu's
 * order of checks and with its messages. Entries with extra data are refused as qemu 7.2
 * refuses them (it knows no extra data field), as are the flags it does not know (bit 2,
 * "extra data compatible", included).
 */
static int parse_directory(struct qcow2_state *s, const uint8_t *dir, uint64_t size, uint32_t n,
			   GError **errp)
{
	uint64_t pos = 0;
	uint32_t i = 0;

	s->bitmaps = g_new0(struct qcow2_bitmap, n);
	s->bitmap_info = g_new0(struct tblk_bitmap_info, n);
	while (pos < size) {
		struct qcow2_bitmap *b;
		const uint8_t *e = dir + pos;
		uint32_t extra;
		uint64_t len;
		int32_t slen;
		const char *name;

		if (size - pos < BITMAP_ENTRY_HEADER)
			goto broken;
		if (i == n)
			return tblk_error_set(errp, EINVAL, "More bitmaps found than specified in "
					      "header extension");
		b = &s->bitmaps[i];
		b->table_offset = qcow2_get_be64(e);
		b->table_size = qcow2_get_be32(e + 8);
		b->flags = qcow2_get_be32(e + 12);
		b->type = e[16];
		b->granularity_bits = e[17];
		b->name_size = qcow2_get_be16(e + 18);
		extra = qcow2_get_be32(e + 20);
		/*
		 * qemu sizes an entry in an int: a huge extra data size wraps, and only a
		 * positive size can reach past the directory's end. Extra data is refused
		 * anyway, so the size is only used while there is none.
		 */
		slen = (int32_t)(uint32_t)(BITMAP_ENTRY_HEADER + extra + b->name_size);
		slen = (int32_t)((uint32_t)slen + 7) & ~7;
		if (slen > 0 && (uint64_t)slen > size - pos)
			goto broken;
		len = TBLK_ALIGN_UP(BITMAP_ENTRY_HEADER + (uint64_t)b->name_size, 8);
		if (extra)
			return tblk_error_set(errp, ENOTSUP, "Bitmap extra data is not supported");
		name = (const char *)e + BITMAP_ENTRY_HEADER;
		if (!entry_valid(s, b))
			return tblk_error_set(errp, EINVAL, "Bitmap '%.*s' doesn't satisfy the "
					      "constraints", (int)strnlen(name, b->name_size), name);
		s->bitmap_info[i] = (struct tblk_bitmap_info) {
			.name = g_strndup(name, b->name_size),
			.granularity = 1ull << b->granularity_bits,
			.in_use = b->flags & QCOW2_BITMAP_IN_USE,
			.is_auto = b->flags & QCOW2_BITMAP_AUTO,
		};
		s->nb_bitmaps = ++i;
		pos += len;
	}
	if (i != n)
		return tblk_error_set(errp, EINVAL, "Less bitmaps found than specified in header "
				      "extension");
	return 0;
broken:
	return tblk_error_set(errp, EINVAL, "Broken bitmap directory");
}

/* The checks of the bitmaps extension qemu makes while it reads the header. */
static int check_extension(struct qcow2_state *s, const struct qcow2_ext *e, GError **errp)
{
	uint32_t n = qcow2_get_be32(e->data);

	if (qcow2_get_be32(e->data + 4))
		return tblk_error_set(errp, EINVAL, "bitmaps_ext: Reserved field is not zero");
	if (n > BITMAP_MAX)
		return tblk_error_set(errp, EINVAL, "bitmaps_ext: Image has %" PRIu32 " bitmaps, "
				      "exceeding the QEMU supported maximum of %u", n, BITMAP_MAX);
	if (!n)
		return tblk_error_set(errp, EINVAL, "found bitmaps extension with zero bitmaps");
	if (s->bitmap_dir_offset & (s->cluster_size - 1))
		return tblk_error_set(errp, EINVAL, "bitmaps_ext: invalid bitmap directory offset");
	if (s->bitmap_dir_size > BITMAP_MAX_DIR_BYTES)
		return tblk_error_set(errp, EINVAL, "bitmaps_ext: bitmap directory size (%" PRIu64
				      ") exceeds the maximum supported size (%u)",
				      s->bitmap_dir_size, BITMAP_MAX_DIR_BYTES);
	if (!s->bitmap_dir_size)
		return tblk_error_set(errp, EINVAL, "Requested bitmap directory size is zero");
	return 0;
}

/*
 * qemu's load_bitmap before the data: the table of a bitmap that is not in use must hold
 * valid entries, its name must be new, and its size must be what the image size needs.
 */
static int check_bitmap(struct qcow2_state *s, unsigned int i, GError **errp)
{
	const struct qcow2_bitmap *b = &s->bitmaps[i];
	const char *name = s->bitmap_info[i].name;
	g_autofree uint64_t *t = NULL;
	uint64_t need;
	int ret;

	if (!(b->flags & QCOW2_BITMAP_IN_USE)) {
		ret = qcow2_bitmap_table_read(s, b->table_offset, b->table_size, &t);
		for (uint32_t k = 0; ret >= 0 && k < b->table_size; k++)
			if (!qcow2_bitmap_entry_valid(s, t[k]))
				ret = -EINVAL;
		if (ret < 0)
			return tblk_error_set_errno(errp, -ret, "Could not read bitmap_table table "
						    "from image for bitmap '%s'", name);
	}
	/* A name seen before: qemu loads no second bitmap of it, and skips one in use. */
	for (unsigned int k = 0; k < i; k++)
		if (!strcmp(s->bitmap_info[k].name, name)) {
			if (b->flags & QCOW2_BITMAP_IN_USE)
				return 0;
			return tblk_error_set(errp, EEXIST, "Bitmap already exists: %s", name);
		}
	if (b->flags & QCOW2_BITMAP_IN_USE)
		return 0;
	need = qcow2_dbm_bytes(qcow2_dbm_nbits(s->size, b->granularity_bits));
	if (((need + s->cluster_size - 1) >> s->cluster_bits) != b->table_size)
		return tblk_error_set_errno(errp, EINVAL, "Could not read bitmap '%s' from image",
					    name);
	return 0;
}

int qcow2_bitmaps_read(struct qcow2_state *s, uint64_t flen, GError **errp)
{
	const struct qcow2_ext *e = bitmaps_ext(s);
	g_autofree uint8_t *dir = NULL;
	int ret;

	if (!e)
		return 0;
	if (e->len != 24)
		return tblk_error_set(errp, EINVAL, "bitmaps_ext: Invalid extension length");
	if (!(s->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
		return 0;
	s->bitmap_dir_size = qcow2_get_be64(e->data + 8);
	s->bitmap_dir_offset = qcow2_get_be64(e->data + 16);
	ret = check_extension(s, e, errp);
	if (ret < 0)
		return ret;
	dir = g_try_malloc0(s->bitmap_dir_size);
	if (!dir)
		return tblk_error_set(errp, ENOMEM, "Failed to allocate space for bitmap "
				      "directory");
	/* What lies past the end of the file reads as zeroes, as it does for qemu. */
	if (s->bitmap_dir_offset < flen) {
		ret = tblk_node_pread(s->node->file, s->bitmap_dir_offset, dir,
				      TBLK_MIN(s->bitmap_dir_size, flen - s->bitmap_dir_offset));
		if (ret < 0)
			return tblk_error_set_errno(errp, -ret, "Failed to read bitmap directory");
	}
	ret = parse_directory(s, dir, s->bitmap_dir_size, qcow2_get_be32(e->data), errp);
	for (unsigned int i = 0; ret >= 0 && i < s->nb_bitmaps; i++)
		ret = check_bitmap(s, i, errp);
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
		g_autofree uint64_t *t = NULL;
		int ret;

		fn(opaque, b->table_offset, (uint64_t)b->table_size * 8);
		/* As qemu's check: a table with a bad entry fails the check (in use or not). */
		ret = qcow2_bitmap_table_read(s, b->table_offset, b->table_size, &t);
		for (uint32_t k = 0; ret >= 0 && k < b->table_size; k++)
			if (!qcow2_bitmap_entry_valid(s, t[k]))
				ret = -EINVAL;
		if (ret < 0)
			return ret;
		for (uint32_t k = 0; k < b->table_size; k++) {
			uint64_t off = t[k] & BITMAP_TABLE_OFFSET_MASK;

			if (off)
				fn(opaque, off, s->cluster_size);
		}
	}
	return 0;
}

/* ------------------------------------------------ bitmaps in memory */

uint64_t qcow2_dbm_nbits(uint64_t size, unsigned int gran_bits)
{
	return (size >> gran_bits) + ((size & ((1ull << gran_bits) - 1)) ? 1 : 0);
}

struct qcow2_dbm *qcow2_dbm_new(const char *name, unsigned int gran_bits, uint64_t size)
{
	struct qcow2_dbm *b = g_new0(struct qcow2_dbm, 1);

	b->name = g_strdup(name);
	b->gran_bits = gran_bits;
	b->nbits = qcow2_dbm_nbits(size, gran_bits);
	return b;
}

void qcow2_dbm_free(struct qcow2_dbm *b)
{
	if (!b)
		return;
	g_free(b->name);
	g_free(b->words);
	g_free(b);
}

struct qcow2_dbm *qcow2_dbm_find(struct qcow2_state *s, const char *name)
{
	for (struct qcow2_dbm *b = s->dbms; b; b = b->next)
		if (!strcmp(b->name, name))
			return b;
	return NULL;
}

int qcow2_bitmap_table_read(struct qcow2_state *s, uint64_t offset, uint32_t size,
			    uint64_t **table)
{
	uint64_t *t = g_try_new(uint64_t, size);
	int ret;

	if (!t)
		return -ENOMEM;
	ret = tblk_node_pread(s->node->file, offset, t, (uint64_t)size * 8);
	if (ret < 0) {
		g_free(t);
		return ret;
	}
	for (uint32_t i = 0; i < size; i++)
		t[i] = be64toh(t[i]);
	*table = t;
	return 0;
}

bool qcow2_bitmap_entry_valid(const struct qcow2_state *s, uint64_t entry)
{
	uint64_t off = entry & BITMAP_TABLE_OFFSET_MASK;

	if (entry & BITMAP_TABLE_RESERVED)
		return false;
	return !off || (!(entry & BITMAP_TABLE_ALL_ONES) && !(off & (s->cluster_size - 1)));
}

/* Sets bits [first, last] of @words (no other writer: plain stores). */
static void words_set_range(uint64_t *words, uint64_t first, uint64_t last)
{
	for (uint64_t i = first; i <= last;) {
		if (!(i & 63) && last - i >= 63) {
			words[i / 64] = ~0ull;
			i += 64;
		} else {
			words[i / 64] |= 1ull << (i & 63);
			i++;
		}
	}
}

/* Fills @b's bits from the table entries of its directory entry @e. */
static int dbm_read_data(struct qcow2_state *s, struct qcow2_dbm *b, const struct qcow2_bitmap *e,
			 uint64_t *words)
{
	uint64_t bytes = qcow2_dbm_bytes(b->nbits);
	uint64_t need = (bytes + s->cluster_size - 1) >> s->cluster_bits;
	uint64_t bits_per_cluster = (uint64_t)s->cluster_size * 8;
	g_autofree uint64_t *t = NULL;
	g_autofree uint8_t *buf = NULL;
	int ret;

	if (need != e->table_size)
		return -EINVAL;
	ret = qcow2_bitmap_table_read(s, e->table_offset, e->table_size, &t);
	if (ret < 0)
		return ret;
	buf = g_malloc(s->cluster_size);
	for (uint64_t i = 0; i < need; i++) {
		uint64_t off = t[i] & BITMAP_TABLE_OFFSET_MASK;
		uint64_t first = i * bits_per_cluster;
		uint64_t chunk = TBLK_MIN(bytes - i * s->cluster_size, (uint64_t)s->cluster_size);

		if (!qcow2_bitmap_entry_valid(s, t[i]))
			return -EINVAL;
		if (!off) {
			if (t[i] & BITMAP_TABLE_ALL_ONES)
				words_set_range(words, first,
						TBLK_MIN(b->nbits, first + bits_per_cluster) - 1);
			continue;
		}
		ret = tblk_node_pread(s->node->file, off, buf, chunk);
		if (ret < 0)
			return ret;
		for (uint64_t k = 0; k < chunk / 8; k++) {
			uint64_t w;

			memcpy(&w, buf + k * 8, 8);
			words[i * s->cluster_size / 8 + k] = le64toh(w);
		}
	}
	/* Bits past the end of the image are not part of the bitmap. */
	if (b->nbits & 63)
		words[b->nbits / 64] &= (1ull << (b->nbits & 63)) - 1;
	return 0;
}

int qcow2_dbm_load(struct qcow2_state *s, struct qcow2_dbm *b)
{
	uint64_t nwords = qcow2_dbm_bytes(b->nbits) / 8;
	uint64_t *words;
	int ret = 0;

	if (b->words)
		return 0;
	if (qcow2_dbm_bytes(b->nbits) > BITMAP_MAX_PHYS_BYTES)
		return -EFBIG;
	words = g_try_new0(uint64_t, TBLK_MAX(nwords, 1ull));
	if (!words)
		return -ENOMEM;
	/* An inconsistent bitmap's data is not read (qemu keeps an empty one). */
	if (!b->inconsistent) {
		ret = -ENOENT;
		for (unsigned int i = 0; i < s->nb_bitmaps; i++)
			if (!strcmp(s->bitmap_info[i].name, b->name)) {
				ret = dbm_read_data(s, b, &s->bitmaps[i], words);
				break;
			}
	}
	if (ret < 0) {
		g_free(words);
		return ret;
	}
	__atomic_store_n(&b->words, words, __ATOMIC_RELEASE);
	return 0;
}

void qcow2_bitmaps_mark(struct qcow2_state *s, uint64_t offset, uint64_t bytes)
{
	if (!bytes || !__atomic_load_n(&s->nr_dbm_enabled, __ATOMIC_RELAXED))
		return;
	for (struct qcow2_dbm *b = s->dbms; b; b = b->next) {
		uint64_t first = offset >> b->gran_bits, last = (offset + bytes - 1) >> b->gran_bits;
		uint64_t *words = __atomic_load_n(&b->words, __ATOMIC_ACQUIRE);

		if (!b->enabled || !words || first >= b->nbits)
			continue;
		last = TBLK_MIN(last, b->nbits - 1);
		for (uint64_t w = first / 64; w <= last / 64; w++) {
			uint64_t lo = w == first / 64 ? first & 63 : 0;
			uint64_t hi = w == last / 64 ? last & 63 : 63;
			uint64_t mask = (hi == 63 ? ~0ull : (1ull << (hi + 1)) - 1) & ~((1ull << lo) - 1);

			/* Most writes land in words already marked: skip the locked OR then. */
			if ((__atomic_load_n(&words[w], __ATOMIC_RELAXED) & mask) != mask)
				__atomic_fetch_or(&words[w], mask, __ATOMIC_RELAXED);
		}
	}
}

/*
 * qemu's qcow2_truncate_bitmaps_check: every stored bitmap must be in memory and usable,
 * checked in directory order. The new bit arrays for @size are allocated here, so that
 * qcow2_bitmaps_resize_commit cannot fail once the image has its new size.
 */
int qcow2_bitmaps_resize_prepare(struct qcow2_state *s, uint64_t size, GPtrArray **prep,
				 GError **errp)
{
	GPtrArray *words;

	for (unsigned int i = 0; i < s->nb_bitmaps; i++) {
		struct qcow2_dbm *b = qcow2_dbm_find(s, s->bitmap_info[i].name);

		if (!b)
			return tblk_error_set(errp, ENOTSUP, "Cannot resize qcow2 with persistent "
					      "bitmaps that were not loaded");
		if (s->read_only)
			return tblk_error_set(errp, EPERM, "Bitmap '%s' is readonly and cannot be "
					      "modified", b->name);
		if (b->inconsistent)
			return tblk_error_set(errp, ENOTSUP, "Bitmap '%s' is inconsistent and "
					      "cannot be used\nTry block-dirty-bitmap-remove to "
					      "delete this bitmap from disk", b->name);
	}
	words = g_ptr_array_new_with_free_func(g_free);
	for (struct qcow2_dbm *b = s->dbms; b; b = b->next) {
		uint64_t n = qcow2_dbm_bytes(qcow2_dbm_nbits(size, b->gran_bits)) / 8;
		uint64_t *w = NULL;

		if (b->words && !(w = g_try_new0(uint64_t, TBLK_MAX(n, 1ull)))) {
			g_ptr_array_free(words, TRUE);
			return tblk_error_set(errp, ENOMEM, "Could not resize bitmap '%s'",
					      b->name);
		}
		g_ptr_array_add(words, w);
	}
	*prep = words;
	return 0;
}

/*
 * The image now has size s->size: the bitmaps follow, as qemu's hbitmap_truncate (bits past
 * a smaller end dropped, a larger one adds clear bits). Takes ownership of @prep.
 */
void qcow2_bitmaps_resize_commit(struct qcow2_state *s, GPtrArray *prep)
{
	unsigned int i = 0;

	for (struct qcow2_dbm *b = s->dbms; b; b = b->next, i++) {
		uint64_t nbits = qcow2_dbm_nbits(s->size, b->gran_bits);
		uint64_t *w = g_ptr_array_index(prep, i);

		if (b->words) {
			uint64_t keep = qcow2_dbm_bytes(TBLK_MIN(nbits, b->nbits));

			memcpy(w, b->words, keep);
			if (nbits < b->nbits && (nbits & 63))
				w[nbits / 64] &= (1ull << (nbits & 63)) - 1;
			g_free(b->words);
			b->words = w;
			g_ptr_array_index(prep, i) = NULL;
		}
		b->nbits = nbits;
	}
	g_ptr_array_free(prep, TRUE);
}

/* ------------------------------------------------ directory lists */

static void dirent_clear(void *p)
{
	struct qcow2_dirent *e = p;

	g_free(e->name);
}

GArray *qcow2_dirents_load(struct qcow2_state *s)
{
	GArray *list = g_array_new(FALSE, TRUE, sizeof(struct qcow2_dirent));

	g_array_set_clear_func(list, dirent_clear);
	for (unsigned int i = 0; i < s->nb_bitmaps; i++) {
		struct qcow2_dirent e = {
			.name = g_strdup(s->bitmap_info[i].name),
			.table_offset = s->bitmaps[i].table_offset,
			.table_size = s->bitmaps[i].table_size,
			.flags = s->bitmaps[i].flags,
			.gran_bits = s->bitmaps[i].granularity_bits,
		};

		g_array_append_val(list, e);
	}
	return list;
}

void qcow2_dirents_free(GArray *list)
{
	if (list)
		g_array_free(list, TRUE);
}

struct qcow2_dirent *qcow2_dirents_find(GArray *list, const char *name)
{
	for (unsigned int i = 0; i < list->len; i++) {
		struct qcow2_dirent *e = &g_array_index(list, struct qcow2_dirent, i);

		if (!strcmp(e->name, name))
			return e;
	}
	return NULL;
}

void qcow2_dirents_publish(struct qcow2_state *s, GArray *list)
{
	for (unsigned int i = 0; i < s->nb_bitmaps; i++)
		g_free((char *)s->bitmap_info[i].name);
	g_free(s->bitmaps);
	g_free(s->bitmap_info);
	s->nb_bitmaps = list->len;
	s->bitmaps = g_new0(struct qcow2_bitmap, TBLK_MAX(list->len, 1u));
	s->bitmap_info = g_new0(struct tblk_bitmap_info, TBLK_MAX(list->len, 1u));
	for (unsigned int i = 0; i < list->len; i++) {
		const struct qcow2_dirent *e = &g_array_index(list, struct qcow2_dirent, i);

		s->bitmaps[i] = (struct qcow2_bitmap) {
			.table_offset = e->table_offset,
			.table_size = e->table_size,
			.name_size = (uint16_t)strlen(e->name),
			.type = 1,
			.granularity_bits = (uint8_t)e->gran_bits,
			.flags = e->flags,
		};
		s->bitmap_info[i] = (struct tblk_bitmap_info) {
			.name = g_strdup(e->name),
			.granularity = 1ull << e->gran_bits,
			.in_use = e->flags & QCOW2_BITMAP_IN_USE,
			.is_auto = e->flags & QCOW2_BITMAP_AUTO,
		};
	}
}

/* ------------------------------------------------ open and close */

int qcow2_bitmaps_open(struct qcow2_state *s, GError **errp)
{
	int ret;

	for (unsigned int i = 0; i < s->nb_bitmaps; i++) {
		const struct qcow2_bitmap *e = &s->bitmaps[i];
		struct qcow2_dbm *b;

		/* A second entry of that name, in use (else the open failed): qemu skips it. */
		if (qcow2_dbm_find(s, s->bitmap_info[i].name))
			continue;
		b = qcow2_dbm_new(s->bitmap_info[i].name, e->granularity_bits, s->size);

		/* qemu lists the most recently created first. */
		b->inconsistent = e->flags & QCOW2_BITMAP_IN_USE;
		b->enabled = e->flags & QCOW2_BITMAP_AUTO;
		b->next = s->dbms;
		s->dbms = b;
		if (s->read_only)
			continue;	/* read when asked for */
		ret = qcow2_dbm_load(s, b);
		if (ret < 0)
			return tblk_error_set_errno(errp, -ret, "Could not read bitmap '%s' from "
						    "image", b->name);
		if (b->enabled)
			s->nr_dbm_enabled++;
	}
	if (s->read_only || !s->dbms)
		return 0;
	qcow2_lock(s);
	ret = qcow2_bitmaps_mark_in_use(s, errp);
	qcow2_unlock(s);
	return ret;
}

int qcow2_bitmaps_close(struct qcow2_state *s)
{
	GError *err = NULL;
	int ret;

	qcow2_lock(s);
	ret = qcow2_bitmaps_store(s, &err);
	qcow2_unlock(s);
	if (ret < 0) {
		tblk__warn("error: Lost persistent bitmaps during inactivation of node '%s': %s\n",
			   s->node->node_name ? s->node->node_name : "#block0", err->message);
		g_error_free(err);
	}
	return ret;
}
