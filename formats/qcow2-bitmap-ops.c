/* SPDX-License-Identifier: MIT */
/*
 * qcow2-bitmap-ops.c - qemu-img bitmap's actions on a qcow2 image (add, remove, clear,
 * enable, disable, merge) with qemu's checks and messages, the list convert --bitmaps
 * copies, and the tracking of writes: the driver table's write entry points (pool path,
 * fast path, zero writes, discards as asked, resize) go through here and mark the enabled
 * bitmaps before the write proper.
 *
 * Threading: the actions and the list run on the control thread with the image drained;
 * marking runs on any thread (see qcow2-bitmap.h).
 */
#include <string.h>

#include "formats/qcow2-bitmap.h"

#define INCONSISTENT_HINT	"Try block-dirty-bitmap-remove to delete this bitmap from disk"

static int not_found(GError **errp, const char *name)
{
	return tblk_error_set(errp, ENOENT, "Dirty bitmap '%s' not found", name);
}

static const char *node_label(struct qcow2_state *s)
{
	return s->node->node_name ? s->node->node_name : "#block0";
}

/* qemu's bdrv_dirty_bitmap_check: read-only (if @ro_ok is false) and inconsistent bitmaps. */
static int check_usable(struct qcow2_state *s, struct qcow2_dbm *b, bool ro_ok, GError **errp)
{
	if (!ro_ok && s->read_only)
		return tblk_error_set(errp, EPERM, "Bitmap '%s' is readonly and cannot be "
				      "modified", b->name);
	if (b->inconsistent)
		return tblk_error_set(errp, EINVAL, "Bitmap '%s' is inconsistent and cannot be "
				      "used\n" INCONSISTENT_HINT, b->name);
	return 0;
}

/* qemu's bdrv_get_default_bitmap_granularity: the cluster size within [4 KiB, 64 KiB]. */
static uint32_t default_granularity(const struct qcow2_state *s)
{
	return TBLK_MIN(TBLK_MAX(s->cluster_size, 4096u), 65536u);
}

/* qemu's qcow2_co_can_store_new_dirty_bitmap. */
static int can_store(struct qcow2_state *s, const char *name, unsigned int gran_bits,
		     GError **errp)
{
	const char *msg = NULL;

	if (s->version < 3)
		msg = "Cannot store dirty bitmaps in qcow2 v2 files";
	else if (gran_bits > BITMAP_MAX_GRAN_BITS)
		msg = "Granularity exceeds maximum (2147483648 bytes)";
	else if (gran_bits < BITMAP_MIN_GRAN_BITS)
		msg = "Granularity is under minimum (512 bytes)";
	else if (qcow2_dbm_too_big(s->size, s->cluster_size, gran_bits))
		msg = "Too much space will be occupied by the bitmap. Use larger granularity";
	else if (strlen(name) > BITMAP_MAX_NAME)
		msg = "Name length exceeds maximum (1023 characters)";
	else if (s->nb_bitmaps >= BITMAP_MAX)
		msg = "Maximum number of persistent bitmaps is already reached";
	else if (s->bitmap_dir_size + TBLK_ALIGN_UP(BITMAP_ENTRY_HEADER + strlen(name), 8) >
		 BITMAP_MAX_DIR_BYTES)
		msg = "Not enough space in the bitmap directory";
	if (msg)
		return tblk_error_set(errp, EINVAL, "Can't make bitmap '%s' persistent in '%s': %s",
				      name, node_label(s), msg);
	return 0;
}

static int bitmap_add(struct qcow2_state *s, const struct tblk_bitmap_request *rq,
		      GError **errp)
{
	/* qemu takes the granularity as a 32-bit number: 4G reads as 0. */
	uint32_t gran = (uint32_t)rq->granularity;
	struct qcow2_dbm *b;
	int ret;

	if (!rq->name[0])
		return tblk_error_set(errp, EINVAL, "Bitmap name cannot be empty");
	if (rq->granularity && (gran < 512 || (gran & (gran - 1))))
		return tblk_error_set(errp, EINVAL, "Granularity must be power of 2 and at least "
				      "512");
	if (!rq->granularity)
		gran = default_granularity(s);
	ret = can_store(s, rq->name, (unsigned int)__builtin_ctz(gran), errp);
	if (ret < 0)
		return ret;
	if (qcow2_dbm_find(s, rq->name))
		return tblk_error_set(errp, EEXIST, "Bitmap already exists: %s", rq->name);
	b = qcow2_dbm_new(rq->name, (unsigned int)__builtin_ctz(gran), s->size);
	b->words = g_try_new0(uint64_t, TBLK_MAX(qcow2_dbm_bytes(b->nbits) / 8, 1ull));
	if (!b->words) {
		qcow2_dbm_free(b);
		return tblk_error_set(errp, ENOMEM, "Could not allocate bitmap");
	}
	b->enabled = !rq->disabled;
	b->next = s->dbms;
	s->dbms = b;
	if (b->enabled)
		s->nr_dbm_enabled++;
	return 0;
}

/* Drops @b from the list and frees it. */
static void release(struct qcow2_state *s, struct qcow2_dbm *b)
{
	for (struct qcow2_dbm **pb = &s->dbms; *pb; pb = &(*pb)->next)
		if (*pb == b) {
			*pb = b->next;
			break;
		}
	if (b->enabled && b->words)
		s->nr_dbm_enabled--;
	qcow2_dbm_free(b);
}

/* qemu's qcow2_co_remove_persistent_dirty_bitmap: a new directory without it, then its
 * clusters freed. Image lock held. */
static int remove_persistent(struct qcow2_state *s, const char *name, GError **errp)
{
	GArray *list;
	struct qcow2_dirent *e, gone;
	int ret;

	if (!s->nb_bitmaps)
		return 0;
	list = qcow2_dirents_load(s);
	e = qcow2_dirents_find(list, name);
	if (!e) {
		qcow2_dirents_free(list);
		return 0;
	}
	gone = *e;
	e->name = NULL;
	g_array_remove_index(list, (unsigned int)(e - &g_array_index(list, struct qcow2_dirent, 0)));
	ret = qcow2_bitmap_dir_update(s, list);
	qcow2_dirents_free(list);
	if (ret < 0) {
		g_free(gone.name);
		return tblk_error_set_errno(errp, -ret, "Failed to update bitmap extension");
	}
	(void)qcow2_bitmap_free_clusters(s, gone.table_offset, gone.table_size);
	g_free(gone.name);
	return 0;
}

static int bitmap_remove(struct qcow2_state *s, struct qcow2_dbm *b, GError **errp)
{
	int ret;

	if (s->read_only)
		return tblk_error_set(errp, EPERM, "Bitmap '%s' is readonly and cannot be "
				      "modified", b->name);
	qcow2_lock(s);
	ret = remove_persistent(s, b->name, errp);
	qcow2_unlock(s);
	if (ret < 0)
		return ret;
	release(s, b);
	return 0;
}

/* The bits of @b, read on demand (a read-only image reads them only when asked). */
static int loaded(struct qcow2_state *s, struct qcow2_dbm *b, GError **errp)
{
	int ret;

	qcow2_lock(s);
	ret = qcow2_dbm_load(s, b);
	qcow2_unlock(s);
	if (ret < 0)
		return tblk_error_set_errno(errp, -ret, "Could not read bitmap '%s' from image",
					    b->name);
	return 0;
}

/* Sets in @dst every bit covering a range @src has set (any two granularities). */
static void merge_bits(struct qcow2_dbm *dst, const struct qcow2_dbm *src, uint64_t size)
{
	if (dst->gran_bits == src->gran_bits) {
		for (uint64_t w = 0; w < qcow2_dbm_bytes(dst->nbits) / 8; w++)
			dst->words[w] |= src->words[w];
		return;
	}
	for (uint64_t i = 0; i < src->nbits; i++) {
		uint64_t start, end;

		if (!(src->words[i / 64] & (1ull << (i & 63)))) {
			if (!src->words[i / 64])
				i |= 63;
			continue;
		}
		start = i << src->gran_bits;
		end = TBLK_MIN(size, (i + 1) << src->gran_bits);
		for (uint64_t k = start >> dst->gran_bits; k <= (end - 1) >> dst->gran_bits; k++)
			dst->words[k / 64] |= 1ull << (k & 63);
	}
}

static int bitmap_merge(struct qcow2_state *s, struct qcow2_dbm *dst,
			const struct tblk_bitmap_request *rq, struct tblk_node *src_node,
			GError **errp)
{
	struct qcow2_state *ss;
	struct qcow2_dbm *src;
	int ret;

	ret = check_usable(s, dst, false, errp);
	if (ret < 0)
		return ret;
	if (src_node && src_node->drv != s->node->drv)
		return not_found(errp, rq->src_name);
	ss = src_node ? src_node->opaque : s;
	src = qcow2_dbm_find(ss, rq->src_name);
	if (!src)
		return not_found(errp, rq->src_name);
	ret = check_usable(ss, src, true, errp);
	if (ret < 0)
		return ret;
	if (ss->size != s->size)
		return tblk_error_set(errp, EINVAL, "Bitmaps are of different sizes (destination "
				      "size is %" PRIu64 ", source size is %" PRIu64 ") and can't "
				      "be merged", s->size, ss->size);
	ret = loaded(s, dst, errp);
	if (ret >= 0)
		ret = loaded(ss, src, errp);
	if (ret < 0)
		return ret;
	merge_bits(dst, src, s->size);
	return 0;
}

int tblk__qcow2_bitmap_apply(struct tblk_node *node, const struct tblk_bitmap_request *rq,
			     struct tblk_node *src, GError **errp)
{
	struct qcow2_state *s = node->opaque;
	struct qcow2_dbm *b;
	int ret;

	if (rq->action == TBLK_BITMAP_ADD)
		return bitmap_add(s, rq, errp);
	b = qcow2_dbm_find(s, rq->name);
	if (!b)
		return not_found(errp, rq->name);
	switch (rq->action) {
	case TBLK_BITMAP_REMOVE:
		return bitmap_remove(s, b, errp);
	case TBLK_BITMAP_CLEAR:
		ret = check_usable(s, b, false, errp);
		if (ret >= 0)
			ret = loaded(s, b, errp);
		if (ret >= 0)
			memset(b->words, 0, qcow2_dbm_bytes(b->nbits));
		return ret;
	case TBLK_BITMAP_ENABLE:
	case TBLK_BITMAP_DISABLE:
		ret = check_usable(s, b, true, errp);
		if (ret < 0)
			return ret;
		if (b->enabled && b->words)
			s->nr_dbm_enabled--;
		b->enabled = rq->action == TBLK_BITMAP_ENABLE;
		if (b->enabled && b->words)
			s->nr_dbm_enabled++;
		return 0;
	case TBLK_BITMAP_MERGE:
		return bitmap_merge(s, b, rq, src, errp);
	default:
		return tblk_error_set(errp, EINVAL, "Unknown bitmap action");
	}
}

int tblk__qcow2_bitmap_list(struct tblk_node *node, struct tblk_dirty_bitmap **plist, int *pn)
{
	struct qcow2_state *s = node->opaque;
	struct tblk_dirty_bitmap *list;
	int n = 0;

	if (s->version < 3)
		return -ENOTSUP;	/* no autoclear bits: no bitmaps */
	for (struct qcow2_dbm *b = s->dbms; b; b = b->next)
		n++;
	list = g_new0(struct tblk_dirty_bitmap, TBLK_MAX(n, 1));
	n = 0;
	for (struct qcow2_dbm *b = s->dbms; b; b = b->next, n++) {
		list[n].name = g_strdup(b->name);
		list[n].granularity = 1ull << b->gran_bits;
		list[n].enabled = b->enabled;
		list[n].inconsistent = b->inconsistent;
	}
	*plist = list;
	*pn = n;
	return 0;
}

/* ------------------------------------------------ tracking writes */

int tblk__qcow2_bm_pwritev(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			   const struct iovec *iov, int iovcnt, unsigned int flags)
{
	/* as qemu's, a copy-on-read write changes no data a bitmap would track */
	if (!(flags & TBLK_REQ_WRITE_UNCHANGED))
		qcow2_bitmaps_mark(node->opaque, offset, bytes);
	return tblk__qcow2_pwritev(node, offset, bytes, iov, iovcnt, flags);
}

int tblk__qcow2_bm_pwrite_zeroes(struct tblk_node *node, uint64_t offset, uint64_t bytes,
				 unsigned int flags)
{
	if (!(flags & TBLK_REQ_WRITE_UNCHANGED))
		qcow2_bitmaps_mark(node->opaque, offset, bytes);
	return tblk__qcow2_pwrite_zeroes(node, offset, bytes, flags);
}

void tblk__qcow2_bm_discard_notify(struct tblk_node *node, uint64_t offset, uint64_t bytes)
{
	qcow2_bitmaps_mark(node->opaque, offset, bytes);
}

int tblk__qcow2_bm_submit_fast(struct tblk_node *node, struct tblk_req *req, uint64_t offset)
{
	if (req->kind == TBLK_REQ_WRITE)
		qcow2_bitmaps_mark(node->opaque, offset, req->bytes);
	return tblk__qcow2_submit_fast(node, req, offset);
}

int tblk__qcow2_bm_truncate(struct tblk_node *node, uint64_t size, const char *prealloc,
			    GError **errp)
{
	/* qcow2_truncate_locked resizes the bitmaps (amend's resize goes there too). */
	return tblk__qcow2_truncate(node, size, prealloc, errp);
}
