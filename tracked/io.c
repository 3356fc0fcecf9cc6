/* SPDX-License-Identifier: MIT */
/*
 * io.c - the synchronous node I/O entry points and the generic request dispatch shared by
 * the synchronous and the pool paths: alignment (bounce buffers and read-modify-write of
 * unaligned writes under serialisation), max_transfer splitting, discard and write-zeroes
 * alignment and splitting, flush ordering down the graph.
 *
 * Threading: runs in the thread carrying the request (a pool worker or a synchronous
 * caller). Drivers are called without any tblk lock held.
 */
#include <stdlib.h>
#include <string.h>

#include "tracked/tracked.h"

/* Unaligned requests are bounced through buffers of at most this size. */
#define BOUNCE_MAX	(1u << 20)

static int drv_rw(struct tblk_node *node, bool write, uint64_t offset, uint64_t bytes,
		  const struct iovec *iov, int iovcnt, unsigned int flags)
{
	if (write)
		return node->drv->pwritev(node, offset, bytes, iov, iovcnt, flags);
	return node->drv->preadv(node, offset, bytes, iov, iovcnt, flags);
}

/* Aligned request: split at max_transfer and pass down. */
static int rw_aligned(struct tblk_node *node, bool write, uint64_t offset, uint64_t bytes,
		      const struct iovec *iov, int iovcnt, unsigned int flags)
{
	uint64_t max = node->limits.max_transfer;
	g_autofree struct iovec *slice = NULL;

	if (!max || bytes <= max)
		return drv_rw(node, write, offset, bytes, iov, iovcnt, flags);
	/* A piece never needs more entries than the whole request has. */
	slice = g_new(struct iovec, iovcnt);
	for (uint64_t done = 0; done < bytes; done += max) {
		uint64_t n = TBLK_MIN(max, bytes - done);
		int cnt = tblk_iov_slice(slice, iovcnt, iov, iovcnt, done, n);
		int ret = drv_rw(node, write, offset + done, n, slice, cnt, flags);

		if (ret < 0)
			return ret;
	}
	return 0;
}

static void *bounce_alloc(struct tblk_node *node, size_t size)
{
	void *buf;
	size_t align = TBLK_MAX(node->limits.mem_alignment, sizeof(void *));

	if (posix_memalign(&buf, align, size))
		return NULL;
	return buf;
}

/* Reads the aligned block at @pos into @buf (bounce memory, aligned). */
static int read_block(struct tblk_node *node, void *buf, uint64_t pos)
{
	struct iovec biov = { buf, node->limits.request_alignment };

	return rw_aligned(node, false, pos, biov.iov_len, &biov, 1, 0);
}

/*
 * Unaligned or badly placed buffers: move [offset, offset + bytes) through a bounce buffer
 * covering the aligned range, a chunk at a time. Writes read the partial blocks at each
 * chunk's edges first (the caller made the request serialising over the aligned range).
 */
static int rw_bounced(struct tblk_node *node, bool write, uint64_t offset, uint64_t bytes,
		      const struct iovec *iov, int iovcnt, unsigned int flags)
{
	uint32_t align = node->limits.request_alignment;
	uint64_t start = TBLK_ALIGN_DOWN(offset, align);
	uint64_t end = TBLK_ALIGN_UP(offset + bytes, align);
	size_t chunk_max = TBLK_MAX(TBLK_ALIGN_DOWN(BOUNCE_MAX, align), align);
	void *buf = bounce_alloc(node, TBLK_MIN(chunk_max, end - start));
	int ret = 0;

	if (!buf)
		return -ENOMEM;
	for (uint64_t pos = start; pos < end && ret >= 0; pos += chunk_max) {
		uint64_t n = TBLK_MIN(chunk_max, end - pos);
		uint64_t lo = TBLK_MAX(pos, offset), hi = TBLK_MIN(pos + n, offset + bytes);
		struct iovec biov = { buf, n };

		if (!write) {
			ret = rw_aligned(node, false, pos, n, &biov, 1, 0);
			if (ret >= 0)
				tblk_iov_from_buf(iov, iovcnt, lo - offset, (char *)buf + (lo - pos),
						  hi - lo);
			continue;
		}
		/* Partial blocks at the edges: fetch their current contents, nothing more. */
		if (lo > pos)
			ret = read_block(node, buf, pos);
		if (ret >= 0 && hi < pos + n && (n > align || lo == pos))
			ret = read_block(node, (char *)buf + n - align, pos + n - align);
		if (ret < 0)
			break;
		tblk_iov_to_buf(iov, iovcnt, lo - offset, (char *)buf + (lo - pos), hi - lo);
		ret = rw_aligned(node, true, pos, n, &biov, 1, flags);
	}
	free(buf);
	return ret < 0 ? ret : 0;
}

/* Reads or writes part of @req's range with @req's tracking (serialising when unaligned). */
static int rw_range(struct tblk_req *req, bool write, uint64_t offset, uint64_t bytes,
		    const struct iovec *iov, int iovcnt, unsigned int flags)
{
	struct tblk_node *node = req->node;
	uint32_t align = node->limits.request_alignment;
	bool aligned = ((offset | bytes) & (align - 1)) == 0;

	if (bytes == 0)
		return 0;
	if (aligned && tblk_iov_aligned(iov, iovcnt, node->limits.mem_alignment))
		return rw_aligned(node, write, offset, bytes, iov, iovcnt, flags);
	if (write && !aligned) {
		uint64_t start = TBLK_ALIGN_DOWN(offset, align);

		tblk__req_make_serialising(req, start,
					   TBLK_ALIGN_UP(offset + bytes, align) - start);
	}
	return rw_bounced(node, write, offset, bytes, iov, iovcnt, flags);
}

static int req_rw(struct tblk_req *req)
{
	bool write = req->kind == TBLK_REQ_WRITE;

	if (write && req->node->read_only)
		return -EPERM;
	/* Only formats with clusters can store compressed data. */
	if (write && (req->flags & TBLK_REQ_COMPRESSED) && !req->node->drv->cluster_size)
		return -ENOTSUP;
	return rw_range(req, write, req->offset, req->bytes, req->iov, req->iovcnt, req->flags);
}

static int req_flush(struct tblk_req *req)
{
	struct tblk_node *node = req->node;
	int ret = 0;

	if (node->flags & TBLK_OPEN_NO_FLUSH)
		return 0;
	if (node->drv->flush)
		ret = node->drv->flush(node);
	if (ret >= 0 && node->file)
		ret = tblk_node_flush(node->file);
	return ret;
}

/* Runs @fn over [offset, offset + bytes) in pieces of at most @max (0: one piece). */
static int for_each_piece(struct tblk_req *req, uint64_t offset, uint64_t bytes,
			  uint64_t max, int (*fn)(struct tblk_req *, uint64_t, uint64_t))
{
	while (bytes > 0) {
		uint64_t n = max ? TBLK_MIN(max, bytes) : bytes;
		int ret = fn(req, offset, n);

		if (ret < 0)
			return ret;
		offset += n;
		bytes -= n;
	}
	return 0;
}

static int discard_piece(struct tblk_req *req, uint64_t offset, uint64_t bytes)
{
	return req->node->drv->pdiscard(req->node, offset, bytes);
}

static int req_discard(struct tblk_req *req)
{
	struct tblk_node *node = req->node;
	uint32_t align = node->limits.pdiscard_alignment ?: node->limits.request_alignment;
	uint64_t start = TBLK_ALIGN_UP(req->offset, align);
	uint64_t end = TBLK_ALIGN_DOWN(req->offset + req->bytes, align);
	uint64_t max = TBLK_ALIGN_DOWN(node->limits.max_pdiscard, align);
	int ret;

	if (node->read_only)
		return -EPERM;
	/* discard=ignore: nothing happens, so nothing is marked dirty either (as qemu). */
	if (!node->drv->pdiscard || (node->flags & TBLK_OPEN_NO_UNMAP))
		return 0;
	if (node->drv->discard_notify)
		node->drv->discard_notify(node, req->offset, req->bytes);
	/* Discard is advisory: what cannot be discarded whole is left alone. */
	if (end <= start)
		return 0;
	ret = for_each_piece(req, start, end - start, max, discard_piece);
	return ret == -ENOTSUP ? 0 : ret;
}

static void *zero_buf;
static pthread_once_t zero_once = PTHREAD_ONCE_INIT;

static void zero_buf_init(void)
{
	if (posix_memalign(&zero_buf, 4096, BOUNCE_MAX) == 0)
		memset(zero_buf, 0, BOUNCE_MAX);
	else
		zero_buf = NULL;
}

/* Writes zero data over part of @req's range (no zeroing support, or unaligned edges). */
static int zeroes_fallback(struct tblk_req *req, uint64_t offset, uint64_t bytes)
{
	int ret = 0;

	/* One shared, never written buffer of zeroes, aligned for any O_DIRECT file. */
	pthread_once(&zero_once, zero_buf_init);
	if (!zero_buf)
		return -ENOMEM;
	for (uint64_t done = 0; done < bytes && ret >= 0; done += BOUNCE_MAX) {
		struct iovec iov = { zero_buf, TBLK_MIN((uint64_t)BOUNCE_MAX, bytes - done) };

		ret = rw_range(req, true, offset + done, iov.iov_len, &iov, 1,
			       req->flags & TBLK_REQ_FUA);
	}
	return ret;
}

static int zeroes_piece(struct tblk_req *req, uint64_t offset, uint64_t bytes)
{
	struct tblk_node *node = req->node;
	int ret = -ENOTSUP;

	if (node->drv->pwrite_zeroes)
		ret = node->drv->pwrite_zeroes(node, offset, bytes, req->flags);
	if (ret == -ENOTSUP && !(req->flags & TBLK_REQ_NO_FALLBACK))
		ret = zeroes_fallback(req, offset, bytes);
	return ret;
}

static int req_zeroes(struct tblk_req *req)
{
	struct tblk_node *node = req->node;
	uint32_t align = node->limits.request_alignment;
	uint64_t off = req->offset, end = req->offset + req->bytes;
	uint64_t head = TBLK_MIN(TBLK_ALIGN_UP(off, align), end);
	uint64_t tail = TBLK_MAX(TBLK_ALIGN_DOWN(end, align), head);
	bool fallback = !(req->flags & TBLK_REQ_NO_FALLBACK);
	int ret = 0;

	if (node->read_only)
		return -EPERM;
	if (node->flags & TBLK_OPEN_NO_UNMAP)
		req->flags &= ~TBLK_REQ_MAY_UNMAP;
	/* Unaligned edges are written as zero data through the read-modify-write path. */
	if ((head > off || end > tail) && !fallback)
		return -ENOTSUP;
	if (head > off)
		ret = zeroes_fallback(req, off, head - off);
	if (ret >= 0 && tail > head)
		ret = for_each_piece(req, head, tail - head,
				     TBLK_ALIGN_DOWN(node->limits.max_pwrite_zeroes, align),
				     zeroes_piece);
	if (ret >= 0 && end > tail)
		ret = zeroes_fallback(req, tail, end - tail);
	return ret;
}

/* The request whose body the calling thread runs (innermost), for filter drivers. */
static __thread struct tblk_req *cur_req;

struct tblk_req *tblk__req_current(void)
{
	return cur_req;
}

static int dispatch_kind(struct tblk_req *req)
{
	switch (req->kind) {
	case TBLK_REQ_READ:
	case TBLK_REQ_WRITE:
		return req_rw(req);
	case TBLK_REQ_FLUSH:
		return req_flush(req);
	case TBLK_REQ_DISCARD:
		return req_discard(req);
	case TBLK_REQ_ZEROES:
		return req_zeroes(req);
	}
	return -EINVAL;
}

/* The body of a request, without tracking: what a worker or a synchronous caller runs. */
int tblk__req_dispatch(struct tblk_req *req);
int tblk__req_dispatch(struct tblk_req *req)
{
	struct tblk_req *outer = cur_req;
	int ret;

	cur_req = req;
	ret = dispatch_kind(req);
	cur_req = outer;
	return ret;
}

int tblk__req_run(struct tblk_req *req)
{
	int ret;

	tblk__req_begin(req);
	ret = tblk__req_dispatch(req);
	tblk__req_end(req, ret);
	return ret;
}

static int run_sync(struct tblk_node *node, enum tblk_req_kind kind, uint64_t offset,
		    uint64_t bytes, const struct iovec *iov, int iovcnt, unsigned int flags)
{
	struct tblk_req req = {
		.node = node, .kind = kind, .offset = offset, .bytes = bytes,
		.iov = iov, .iovcnt = iovcnt, .flags = flags,
	};

	return tblk__req_run(&req);
}

int tblk_node_preadv(struct tblk_node *node, uint64_t offset, uint64_t bytes,
		     const struct iovec *iov, int iovcnt, unsigned int flags)
{
	return run_sync(node, TBLK_REQ_READ, offset, bytes, iov, iovcnt, flags);
}

int tblk_node_pwritev(struct tblk_node *node, uint64_t offset, uint64_t bytes,
		      const struct iovec *iov, int iovcnt, unsigned int flags)
{
	return run_sync(node, TBLK_REQ_WRITE, offset, bytes, iov, iovcnt, flags);
}

int tblk_node_pread(struct tblk_node *node, uint64_t offset, void *buf, uint64_t bytes)
{
	struct iovec iov = { buf, bytes };

	return tblk_node_preadv(node, offset, bytes, &iov, 1, 0);
}

int tblk_node_pwrite(struct tblk_node *node, uint64_t offset, const void *buf, uint64_t bytes,
		     unsigned int flags)
{
	struct iovec iov = { (void *)buf, bytes };

	return tblk_node_pwritev(node, offset, bytes, &iov, 1, flags);
}

int tblk_node_flush(struct tblk_node *node)
{
	return run_sync(node, TBLK_REQ_FLUSH, 0, 0, NULL, 0, 0);
}

int tblk_node_pdiscard(struct tblk_node *node, uint64_t offset, uint64_t bytes)
{
	return run_sync(node, TBLK_REQ_DISCARD, offset, bytes, NULL, 0, 0);
}

int tblk_node_pwrite_zeroes(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			    unsigned int flags)
{
	return run_sync(node, TBLK_REQ_ZEROES, offset, bytes, NULL, 0, flags);
}

int tblk_node_block_status(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			   uint64_t *pnum, uint64_t *map)
{
	int64_t len = tblk_node_getlength(node);
	int ret;

	if (len < 0)
		return (int)len;
	if (offset >= (uint64_t)len) {
		*pnum = 0;
		return 0;
	}
	bytes = TBLK_MIN(bytes, (uint64_t)len - offset);
	if (!node->drv->block_status) {
		*pnum = bytes;
		if (map)
			*map = offset;
		return TBLK_BS_DATA | TBLK_BS_ALLOCATED |
		       (node->drv->is_protocol ? TBLK_BS_OFFSET_VALID : 0);
	}
	ret = node->drv->block_status(node, offset, bytes, pnum, map);
	/* Data or zeroes a node describes itself are its own, as in qemu's generic layer. */
	if (ret > 0 && (ret & (TBLK_BS_DATA | TBLK_BS_ZERO)))
		ret |= TBLK_BS_ALLOCATED;
	return ret;
}

/* Sizes are whole 512-byte sectors, as qemu counts them: a file's odd tail reads as zeroes. */
int64_t tblk_node_getlength(struct tblk_node *node)
{
	int64_t len;

	if (!node->drv->getlength)
		return node->file ? tblk_node_getlength(node->file) : -ENOMEDIUM;
	len = node->drv->getlength(node);
	if (len < 0 || len > INT64_MAX - 511)
		return len;
	return TBLK_ALIGN_UP(len, 512);
}
