/* SPDX-License-Identifier: MIT */
/*
 * raw.c - the raw format: the guest sees the protocol's bytes, optionally a window of them
 * (`offset` and `size` options). Passes the fast path through to its file child.
 *
 * Threading: no mutable state after open; every operation may run concurrently.
 */
#include "tracked/tracked.h"

struct raw_state {
	uint64_t offset;	/* [const] start of the window in the file */
	uint64_t size;		/* [const] window size, 0 = to the end of the file */
	bool has_size;		/* [const] */
};

static int raw_probe(const uint8_t *buf, size_t len, const char *filename)
{
	return 1;	/* anything is raw, at the lowest score */
}

static int raw_open(struct tblk_node *node, GHashTable *opts, unsigned int flags,
		    GError **errp)
{
	struct raw_state *s = node->opaque;
	int64_t flen;
	int ret;

	s->has_size = g_hash_table_contains(opts, "size");
	if (tblk__opts_take_size(opts, "offset", &s->offset, errp) < 0 ||
	    tblk__opts_take_size(opts, "size", &s->size, errp) < 0)
		return -EINVAL;
	ret = tblk__node_open_child(node, "file", opts, flags, &node->file, errp);
	if (ret < 0)
		return ret;
	node->limits = node->file->limits;
	flen = tblk_node_getlength(node->file);
	if (flen < 0) {
		ret = tblk_error_set_errno(errp, flen < -4095 ? EIO : (int)-flen,
					   "Could not get the size of '%s'", node->file->filename);
		goto out_close_file;
	}
	/* qemu's checks, in its order: the window must lie in the file, in whole sectors. */
	if (s->offset > (uint64_t)flen) {
		ret = tblk_error_set(errp, EINVAL, "Offset (%" PRIu64 ") cannot be greater than "
				     "size of the containing file (%" PRId64 ")", s->offset, flen);
		goto out_close_file;
	}
	if (s->has_size && s->size > (uint64_t)flen - s->offset) {
		ret = tblk_error_set(errp, EINVAL, "The sum of offset (%" PRIu64 ") and size "
				     "(%" PRIu64 ") has to be smaller or equal to the  actual size "
				     "of the containing file (%" PRId64 ")", s->offset, s->size,
				     flen);
		goto out_close_file;
	}
	if (s->has_size && s->size % 512) {
		ret = tblk_error_set(errp, EINVAL, "Specified size is not multiple of 512");
		goto out_close_file;
	}
	return 0;

out_close_file:
	tblk__node_close(node->file);
	node->file = NULL;
	return ret;
}

static int raw_preadv(struct tblk_node *node, uint64_t offset, uint64_t bytes,
		      const struct iovec *iov, int iovcnt, unsigned int flags)
{
	struct raw_state *s = node->opaque;

	/* qemu's raw format raises these too (blkdebug breakpoints, injected errors) */
	tblk_node_debug_event(node->file, TBLK_DBG_READ_AIO);
	return tblk_node_preadv(node->file, s->offset + offset, bytes, iov, iovcnt, flags);
}

static int raw_pwritev(struct tblk_node *node, uint64_t offset, uint64_t bytes,
		       const struct iovec *iov, int iovcnt, unsigned int flags)
{
	struct raw_state *s = node->opaque;

	tblk_node_debug_event(node->file, TBLK_DBG_WRITE_AIO);
	return tblk_node_pwritev(node->file, s->offset + offset, bytes, iov, iovcnt, flags);
}

static int raw_pdiscard(struct tblk_node *node, uint64_t offset, uint64_t bytes)
{
	struct raw_state *s = node->opaque;

	return tblk_node_pdiscard(node->file, s->offset + offset, bytes);
}

static int raw_pwrite_zeroes(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			     unsigned int flags)
{
	struct raw_state *s = node->opaque;

	return tblk_node_pwrite_zeroes(node->file, s->offset + offset, bytes, flags);
}

static int raw_block_status(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			    uint64_t *pnum, uint64_t *map)
{
	struct raw_state *s = node->opaque;

	/* The file's answer, allocation included (null-co without read-zeroes has none). */
	return tblk_node_block_status(node->file, s->offset + offset, bytes, pnum, map);
}

static int64_t raw_getlength(struct tblk_node *node)
{
	struct raw_state *s = node->opaque;
	int64_t len;

	if (s->has_size)
		return (int64_t)s->size;
	len = tblk_node_getlength(node->file);
	if (len < 0)
		return len;
	return len > (int64_t)s->offset ? len - (int64_t)s->offset : 0;
}

static int raw_truncate(struct tblk_node *node, uint64_t size, const char *prealloc,
			GError **errp)
{
	struct raw_state *s = node->opaque;
	struct tblk_node *f = node->file;

	/* as qemu's: a window of fixed size stays so; one with only an offset grows the file */
	if (s->has_size)
		return tblk_error_set(errp, ENOTSUP, "Cannot resize fixed-size raw disks");
	if (size > INT64_MAX - s->offset)
		return tblk_error_set(errp, EINVAL, "Disk size too large for the chosen offset");
	if (!f->drv->truncate)
		return tblk_error_set(errp, ENOTSUP, "Protocol driver '%s' does not support "
				      "image resize", f->drv->name);
	return f->drv->truncate(f, s->offset + size, prealloc, errp);
}

static int raw_create(const char *filename, uint64_t size, GHashTable *opts, GError **errp)
{
	const struct tblk_driver *proto = tblk__protocol_for(filename);

	if (!proto->create)
		return tblk_error_set(errp, ENOTSUP, "Protocol driver '%s' does not support "
				      "image creation", proto->name);
	return proto->create(filename, size, opts, errp);
}

/* Every byte of a raw image takes its place in the file. */
static int raw_measure(GHashTable *opts, uint64_t size, struct tblk_blk *src,
		       struct tblk_node *src_node, struct tblk_measure *m, GError **errp)
{
	int64_t len;

	if (!src) {
		m->required = size > UINT64_MAX - 511 ? size : TBLK_ALIGN_UP(size, 512);
	} else {
		len = tblk_blk_getlength(src);
		if (len < 0)
			return tblk_error_set_errno(errp, (int)-len, "Unable to get image size");
		m->required = (uint64_t)len;
	}
	m->fully_allocated = m->required;
	return 0;
}

static int raw_submit_fast(struct tblk_node *node, struct tblk_req *req, uint64_t offset)
{
	struct raw_state *s = node->opaque;
	struct tblk_node *f = node->file;

	if (!f->drv->submit_fast)
		return -EAGAIN;
	return f->drv->submit_fast(f, req, s->offset + offset);
}

const struct tblk_driver tblk__drv_raw = {
	.name = "raw",
	.instance_size = sizeof(struct raw_state),
	.probe = raw_probe,
	.open = raw_open,
	.create = raw_create,
	.preadv = raw_preadv,
	.pwritev = raw_pwritev,
	.pdiscard = raw_pdiscard,
	.pwrite_zeroes = raw_pwrite_zeroes,
	.block_status = raw_block_status,
	.getlength = raw_getlength,
	.truncate = raw_truncate,
	.measure = raw_measure,
	.submit_fast = raw_submit_fast,
};
