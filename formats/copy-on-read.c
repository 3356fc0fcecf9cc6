/* SPDX-License-Identifier: MIT */
/*
 * copy-on-read.c - the copy-on-read filter (driver=copy-on-read, and copy-on-read=on on a
 * backend): a read of a range its image does not hold itself (it comes from the backing
 * chain) is written into the image, whole clusters at a time, through the image's normal
 * write path; all-zero data is written as zeroes, as qemu does. The read becomes a
 * serialising request over the clusters it copies, so an overlapping write through the
 * filter runs entirely before or after the copy and is never overwritten by old data.
 *
 * Threading: no state of its own; runs in the thread carrying the request.
 */
#include <stdlib.h>
#include <string.h>

#include "formats/filter.h"

/*
 * Copies are bounced through at most this much memory at a time (whole clusters): qemu's
 * bounce buffer, which also decides what is written as zeroes (a chunk that is all zero).
 */
#define COR_CHUNK	(16u << 20)

static int cor_open(struct tblk_node *node, GHashTable *opts, unsigned int flags,
		    GError **errp)
{
	int ret;

	/* copy-on-read=on (TBLK_OPEN_COPY_ON_READ) is refused first; the driver after its child */
	if (node->read_only && (flags & TBLK_OPEN_COPY_ON_READ))
		return tblk_error_set(errp, EINVAL, "Can't use copy-on-read on read-only "
				      "device");
	ret = tblk__filter_open_child(node, opts, flags, errp);
	if (ret < 0)
		return ret;
	if (node->read_only) {
		tblk__node_close(node->file);
		node->file = NULL;
		return tblk_error_set(errp, EACCES, "Block node is read-only");
	}
	node->limits.mem_alignment = node->file->limits.mem_alignment;
	return 0;
}

static bool buf_is_zero(const uint8_t *p, size_t n)
{
	return n == 0 || (p[0] == 0 && !memcmp(p, p + 1, n - 1));
}

/* Copies [pos, pos + n) from the backing chain into the image, filling the part of @iov
 * that [offset, offset + bytes) overlaps. */
static int cor_copy(struct tblk_node *node, uint64_t pos, uint64_t n, uint64_t offset,
		    uint64_t bytes, const struct iovec *iov, int iovcnt, void *buf)
{
	struct tblk_node *child = node->file;
	struct iovec biov = { buf, n };
	uint64_t lo = TBLK_MAX(pos, offset), hi = TBLK_MIN(pos + n, offset + bytes);
	int ret;

	ret = tblk_node_preadv(child, pos, n, &biov, 1, 0);
	if (ret < 0)
		return ret;
	if (buf_is_zero(buf, n))
		ret = tblk_node_pwrite_zeroes(child, pos, n, TBLK_REQ_WRITE_UNCHANGED);
	else
		ret = tblk_node_pwritev(child, pos, n, &biov, 1, TBLK_REQ_WRITE_UNCHANGED);
	if (ret < 0)
		return ret;
	if (hi > lo)
		tblk_iov_from_buf(iov, iovcnt, lo - offset, (char *)buf + (lo - pos), hi - lo);
	return 0;
}

/* Reads the part of [offset, offset + bytes) inside [pos, pos + n) from the image. */
static int cor_read_through(struct tblk_node *node, uint64_t pos, uint64_t n, uint64_t offset,
			    uint64_t bytes, const struct iovec *iov, int iovcnt)
{
	uint64_t lo = TBLK_MAX(pos, offset), hi = TBLK_MIN(pos + n, offset + bytes);
	g_autofree struct iovec *slice = NULL;
	int cnt;

	if (hi <= lo)
		return 0;
	slice = g_new(struct iovec, iovcnt);
	cnt = tblk_iov_slice(slice, iovcnt, iov, iovcnt, lo - offset, hi - lo);
	if (cnt < 0)
		return cnt;
	return tblk_node_preadv(node->file, lo, hi - lo, slice, cnt, 0);
}

/* True if the image itself holds all of [offset, offset + bytes); < 0 on error. */
static int all_allocated(struct tblk_node *child, uint64_t offset, uint64_t bytes)
{
	while (bytes > 0) {
		uint64_t n;
		int ret = tblk_node_block_status(child, offset, bytes, &n, NULL);

		if (ret < 0)
			return ret;
		if (n == 0)
			return 1;
		if (!(ret & TBLK_BS_ALLOCATED))
			return 0;
		offset += n;
		bytes -= n;
	}
	return 1;
}

static int cor_preadv(struct tblk_node *node, uint64_t offset, uint64_t bytes,
		      const struct iovec *iov, int iovcnt, unsigned int flags)
{
	struct tblk_node *child = node->file;
	uint32_t cs = tblk__filter_cluster_size(node) ?: 65536;
	int64_t len = tblk_node_getlength(child);
	uint64_t start, end, chunk;
	void *buf = NULL;
	int ret;

	if (len < 0)
		return (int)len;
	ret = all_allocated(child, offset, bytes);
	if (ret != 0)
		return ret < 0 ? ret : tblk_node_preadv(child, offset, bytes, iov, iovcnt, flags);
	start = TBLK_ALIGN_DOWN(offset, cs);
	end = TBLK_MIN(TBLK_ALIGN_UP(offset + bytes, cs), (uint64_t)len);
	/* Exclude overlapping writes, then look again: one may have allocated meanwhile. */
	tblk__req_make_serialising(tblk__req_current(), start, end - start);
	chunk = TBLK_MAX(TBLK_ALIGN_DOWN(COR_CHUNK, cs), cs);
	for (uint64_t pos = start; pos < end && ret >= 0;) {
		uint64_t n;

		ret = tblk_node_block_status(child, pos, TBLK_MIN(end - pos, chunk), &n, NULL);
		if (ret < 0)
			break;
		if (n == 0) {
			ret = -EIO;
			break;
		}
		if (ret & TBLK_BS_ALLOCATED) {
			ret = cor_read_through(node, pos, n, offset, bytes, iov, iovcnt);
		} else {
			if (!buf && posix_memalign(&buf, TBLK_MAX(child->limits.mem_alignment,
								  sizeof(void *)), chunk)) {
				buf = NULL;
				ret = -ENOMEM;
				break;
			}
			ret = cor_copy(node, pos, n, offset, bytes, iov, iovcnt, buf);
		}
		pos += n;
	}
	free(buf);
	return ret < 0 ? ret : 0;
}

const struct tblk_driver tblk__drv_copy_on_read = {
	.name = "copy-on-read",
	.open = cor_open,
	.preadv = cor_preadv,
	.pwritev = tblk__filter_pwritev,
	.pdiscard = tblk__filter_pdiscard,
	.pwrite_zeroes = tblk__filter_pwrite_zeroes,
	.block_status = tblk__filter_block_status,
	.cluster_size = tblk__filter_cluster_size,
	.get_info = tblk__filter_get_info,
	.truncate = tblk__filter_truncate,
};
