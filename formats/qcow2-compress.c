/* SPDX-License-Identifier: MIT */
/*
 * qcow2-compress.c - the codecs of qcow2 compressed clusters: raw deflate ("zlib") and zstd.
 *
 * What qemu-img 7.2.22 (Debian 12, zlib 1.2.13, libzstd 1.5.4) writes, found by converting
 * raw files of known content with `qemu-img convert -c -O qcow2 [-o compression_type=zstd,
 * cluster_size=N]` for N = 512 B to 2 MiB, decoding the clusters that the compressed L2
 * descriptors point to, and searching the parameter space for byte-identical output:
 *
 * - zlib: a raw deflate stream (RFC 1951: no zlib header, no Adler-32, no gzip wrapper),
 *   produced by a single deflate(Z_FINISH) over the whole cluster with level 6 (zlib's
 *   default), a 4 KiB window (windowBits 12), memLevel 9 and the default strategy. The
 *   stream ends with a final block. Level 7, memLevel 8 or larger windows give other bytes
 *   for some clusters; only this combination matched every cluster.
 * - zstd: exactly one zstd frame per cluster, level 3 (libzstd's default) with every other
 *   parameter at its default: the frame header has the single-segment flag and the content
 *   size (2 bytes for 512 B to 64 KiB clusters, 4 bytes for 2 MiB), no dictionary id, no
 *   checksum; clusters above 128 KiB are split into 128 KiB blocks. No multi-frame output
 *   was seen, but frames are decoded in a loop anyway (other writers may concatenate
 *   frames or insert skippable frames).
 * - When a cluster is stored uncompressed: qemu compresses into a cluster_size - 1 buffer.
 *   A deflate stream of cluster_size - 2 bytes stays compressed and one of cluster_size - 1
 *   does not (zlib reports the end of the stream only when output room is left), while a
 *   zstd frame of exactly cluster_size - 1 bytes stays compressed (seen with 512 B
 *   clusters; with larger ones zstd's minimum gain per block keeps frames far below).
 * - The next compressed cluster is packed right after the end of a stream, not at a sector
 *   boundary, so the bytes after a stream (up to the sector end the descriptor gives) are
 *   usually the start of another stream, or zeros.
 *
 * Decoding follows what qemu-io 7.2 reads, checked on images whose compressed cluster was
 * replaced by hand: a deflate stream is accepted once it has produced the cluster, whatever
 * follows (a stream that goes on past the cluster, or one cut just before its end code);
 * zstd frames are decoded one after the other (two concatenated frames read fine), but
 * each must be complete and must not produce more than the room left in the cluster (a
 * frame declaring 4097 bytes in a 4 KiB cluster, a frame without content size producing
 * 8 KiB, or a frame missing its checksum are I/O errors in qemu too). Only zstd frames and
 * skippable frames are recognised, no legacy (v0.x) zstd formats. Inflate uses a 32 KiB
 * window: qemu also reads deflate streams with distances beyond 4 KiB.
 *
 * Threading: no shared mutable state; each thread lazily creates its own deflate, inflate
 * and zstd contexts (a deflate context is ~270 KiB, a zstd one several MiB for 2 MiB
 * clusters) and keeps them for later calls; a pthread key destructor frees them when the
 * thread exits (the key is never deleted: libtblk.so must not be unloaded while threads
 * that used a codec are alive).
 */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>
#include <zstd.h>
#include <zstd_errors.h>

#include "formats/qcow2-compress.h"

/* qemu-img 7.2's deflate parameters (see above). */
#define QCOW2_DEFLATE_LEVEL	6
#define QCOW2_DEFLATE_WBITS	12
#define QCOW2_DEFLATE_MEMLEVEL	9
/* Any raw deflate stream decodes with the largest window. */
#define QCOW2_INFLATE_WBITS	15
#define QCOW2_ZSTD_LEVEL	3

#define ZSTD_FRAME_MAGIC	0xFD2FB528u
#define ZSTD_SKIP_MAGIC		0x184D2A50u	/* low 4 bits are free */
#define ZSTD_SKIP_MAGIC_MASK	0xFFFFFFF0u

/* One per thread, reached through ctx_key; only its owner thread touches it. */
struct codec_ctx {
	z_stream deflate;	/* [thread] valid if has_deflate */
	z_stream inflate;	/* [thread] valid if has_inflate */
	bool has_deflate;	/* [thread] */
	bool has_inflate;	/* [thread] */
	ZSTD_CCtx *zcctx;	/* [thread] NULL until the first zstd compression */
	ZSTD_DCtx *zdctx;	/* [thread] NULL until the first zstd decompression */
};

static pthread_once_t ctx_once = PTHREAD_ONCE_INIT;
static pthread_key_t ctx_key;	/* [const] after ctx_once */
static bool ctx_key_ok;		/* [const] after ctx_once */

static void ctx_free(struct codec_ctx *c)
{
	if (c->has_deflate)
		deflateEnd(&c->deflate);
	if (c->has_inflate)
		inflateEnd(&c->inflate);
	ZSTD_freeCCtx(c->zcctx);
	ZSTD_freeDCtx(c->zdctx);
	free(c);
}

/* Runs in an exiting thread that used a codec. */
static void ctx_destructor(void *p)
{
	ctx_free(p);
}

static void ctx_key_create(void)
{
	ctx_key_ok = pthread_key_create(&ctx_key, ctx_destructor) == 0;
}

/*
 * The calling thread's contexts, created on first use. If they cannot be attached to the
 * thread (no key), *@temp is set and the caller frees them with ctx_put() after the call.
 */
static struct codec_ctx *ctx_get(bool *temp)
{
	struct codec_ctx *c;

	*temp = false;
	if (pthread_once(&ctx_once, ctx_key_create) == 0 && ctx_key_ok) {
		c = pthread_getspecific(ctx_key);
		if (c)
			return c;
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	if (!ctx_key_ok || pthread_setspecific(ctx_key, c) != 0)
		*temp = true;
	return c;
}

static void ctx_put(struct codec_ctx *c, bool temp)
{
	if (temp)
		ctx_free(c);
}

static int zlib_errno(int ret)
{
	return ret == Z_MEM_ERROR ? -ENOMEM : -EIO;
}

static int zstd_errno(size_t ret)
{
	switch (ZSTD_getErrorCode(ret)) {
	case ZSTD_error_memory_allocation:
		return -ENOMEM;
	case ZSTD_error_dstSize_tooSmall:
		return -ENOSPC;
	default:
		return -EIO;
	}
}

static ssize_t deflate_cluster(struct codec_ctx *c, void *dst, size_t dst_size,
			       const void *src, size_t src_size)
{
	z_stream *s = &c->deflate;
	uInt room = dst_size > UINT_MAX ? UINT_MAX : (uInt)dst_size;
	int ret;

	if (src_size > UINT_MAX)
		return -EINVAL;
	if (!c->has_deflate) {
		memset(s, 0, sizeof(*s));
		ret = deflateInit2(s, QCOW2_DEFLATE_LEVEL, Z_DEFLATED, -QCOW2_DEFLATE_WBITS,
				   QCOW2_DEFLATE_MEMLEVEL, Z_DEFAULT_STRATEGY);
		if (ret != Z_OK)
			return zlib_errno(ret);
		c->has_deflate = true;
	} else {
		ret = deflateReset(s);
		if (ret != Z_OK)
			return zlib_errno(ret);
	}
	s->next_in = (Bytef *)src;
	s->avail_in = (uInt)src_size;
	s->next_out = dst;
	s->avail_out = room;
	/* One call, as qemu does: the stream must end with room to spare (see the header). */
	ret = deflate(s, Z_FINISH);
	if (ret == Z_STREAM_END)
		return (ssize_t)(room - s->avail_out);
	if (ret == Z_OK || ret == Z_BUF_ERROR)
		return -ENOSPC;
	return zlib_errno(ret);
}

static int inflate_cluster(struct codec_ctx *c, void *dst, size_t dst_size, const void *src,
			   size_t src_size)
{
	z_stream *s = &c->inflate;
	int ret;

	if (dst_size > UINT_MAX)
		return -EINVAL;
	if (!c->has_inflate) {
		memset(s, 0, sizeof(*s));
		ret = inflateInit2(s, -QCOW2_INFLATE_WBITS);
		if (ret != Z_OK)
			return zlib_errno(ret);
		c->has_inflate = true;
	} else {
		ret = inflateReset(s);
		if (ret != Z_OK)
			return zlib_errno(ret);
	}
	/* Bytes past 4 GiB could only be garbage after a cluster's stream. */
	s->next_in = (Bytef *)src;
	s->avail_in = src_size > UINT_MAX ? UINT_MAX : (uInt)src_size;
	s->next_out = dst;
	s->avail_out = (uInt)dst_size;
	ret = inflate(s, Z_FINISH);
	if (ret == Z_MEM_ERROR)
		return -ENOMEM;
	/*
	 * Done once the cluster is full: either the stream ended exactly there, or it goes on
	 * (Z_OK, Z_BUF_ERROR) and the rest is ignored, as qemu does.
	 */
	if (s->avail_out == 0 && (ret == Z_STREAM_END || ret == Z_OK || ret == Z_BUF_ERROR))
		return 0;
	return -EIO;
}

static ssize_t zstd_compress_cluster(struct codec_ctx *c, void *dst, size_t dst_size,
				     const void *src, size_t src_size)
{
	ZSTD_outBuffer out = { .dst = dst, .size = dst_size, .pos = 0 };
	ZSTD_inBuffer in = { .src = src, .size = src_size, .pos = 0 };
	size_t ret;

	if (!c->zcctx) {
		c->zcctx = ZSTD_createCCtx();
		if (!c->zcctx)
			return -ENOMEM;
		ret = ZSTD_CCtx_setParameter(c->zcctx, ZSTD_c_compressionLevel, QCOW2_ZSTD_LEVEL);
		if (ZSTD_isError(ret)) {
			ZSTD_freeCCtx(c->zcctx);
			c->zcctx = NULL;
			return -EIO;
		}
	} else {
		/* Drops what a previous call that ran out of room left behind. */
		ZSTD_CCtx_reset(c->zcctx, ZSTD_reset_session_only);
	}
	/*
	 * The streaming call with ZSTD_e_end is what qemu uses: it records the content size
	 * and, when @dst is smaller than the worst case, stops as soon as it is full.
	 */
	ret = ZSTD_compressStream2(c->zcctx, &out, &in, ZSTD_e_end);
	if (ZSTD_isError(ret))
		return zstd_errno(ret);
	if (ret != 0)
		return -ENOSPC;	/* output left to flush: it does not fit */
	return (ssize_t)out.pos;
}

static uint32_t get_le32(const uint8_t *p)
{
	return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/*
 * Decodes frames one after the other straight into @dst until it is full. Each frame is
 * bounded by ZSTD_findFrameCompressedSize() first, so the bytes after the last frame are
 * never parsed, and each step consumes at least one frame header: the loop ends.
 */
static int zstd_decompress_cluster(struct codec_ctx *c, uint8_t *dst, size_t dst_size,
				   const uint8_t *src, size_t src_size)
{
	size_t done = 0, off = 0;

	if (!c->zdctx) {
		c->zdctx = ZSTD_createDCtx();
		if (!c->zdctx)
			return -ENOMEM;
	}
	while (done < dst_size) {
		size_t rest = src_size - off, frame_len, n;
		unsigned long long content;
		uint32_t magic;

		if (rest < 4)
			return -EIO;	/* the stream ended before the cluster did */
		/* Checked first so that libzstd never parses a legacy (v0.x) frame. */
		magic = get_le32(src + off);
		if (magic != ZSTD_FRAME_MAGIC && (magic & ZSTD_SKIP_MAGIC_MASK) != ZSTD_SKIP_MAGIC)
			return -EIO;
		frame_len = ZSTD_findFrameCompressedSize(src + off, rest);
		if (ZSTD_isError(frame_len) || frame_len == 0 || frame_len > rest)
			return -EIO;
		if (magic != ZSTD_FRAME_MAGIC) {
			off += frame_len;	/* skippable frame */
			continue;
		}
		content = ZSTD_getFrameContentSize(src + off, rest);
		if (content == ZSTD_CONTENTSIZE_ERROR ||
		    (content != ZSTD_CONTENTSIZE_UNKNOWN && content > dst_size - done))
			return -EIO;
		n = ZSTD_decompressDCtx(c->zdctx, dst + done, dst_size - done, src + off,
					frame_len);
		if (ZSTD_isError(n))
			return zstd_errno(n) == -ENOMEM ? -ENOMEM : -EIO;
		done += n;
		off += frame_len;
	}
	return 0;
}

ssize_t tblk__qcow2_compress(int type, void *dst, size_t dst_size, const void *src,
			     size_t src_size)
{
	struct codec_ctx *c;
	bool temp;
	ssize_t ret;

	if (type != TBLK_QCOW2_COMPRESS_ZLIB && type != TBLK_QCOW2_COMPRESS_ZSTD)
		return -EINVAL;
	if (dst_size == 0)
		return -ENOSPC;
	c = ctx_get(&temp);
	if (!c)
		return -ENOMEM;
	if (type == TBLK_QCOW2_COMPRESS_ZLIB)
		ret = deflate_cluster(c, dst, dst_size, src, src_size);
	else
		ret = zstd_compress_cluster(c, dst, dst_size, src, src_size);
	ctx_put(c, temp);
	return ret;
}

int tblk__qcow2_decompress(int type, void *dst, size_t dst_size, const void *src,
			   size_t src_size)
{
	struct codec_ctx *c;
	bool temp;
	int ret;

	if (type != TBLK_QCOW2_COMPRESS_ZLIB && type != TBLK_QCOW2_COMPRESS_ZSTD)
		return -EINVAL;
	if (dst_size == 0)
		return 0;
	c = ctx_get(&temp);
	if (!c)
		return -ENOMEM;
	if (type == TBLK_QCOW2_COMPRESS_ZLIB)
		ret = inflate_cluster(c, dst, dst_size, src, src_size);
	else
		ret = zstd_decompress_cluster(c, dst, dst_size, src, src_size);
	ctx_put(c, temp);
	return ret;
}
