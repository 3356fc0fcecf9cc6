/* SPDX-License-Identifier: MIT */
/*
 * qcow2-compress.h - the codecs of qcow2 compressed clusters (header field compression_type):
 * raw deflate ("zlib") and zstd, writing the same bytes as qemu-img 7.2.
 *
 * Threading: both functions may be called from any number of threads at once; each thread
 * keeps its own codec contexts, freed when the thread exits.
 */
#ifndef TBLK_QCOW2_COMPRESS_H
#define TBLK_QCOW2_COMPRESS_H

#include <stddef.h>
#include <sys/types.h>

enum { TBLK_QCOW2_COMPRESS_ZLIB = 0, TBLK_QCOW2_COMPRESS_ZSTD = 1 };

/*
 * Compresses @src_size bytes of @src into @dst (room @dst_size). Returns the compressed
 * length (> 0), -ENOSPC if the result would not fit in @dst_size (the caller then writes
 * the cluster uncompressed), or another -errno (-EINVAL for an unknown @type, -ENOMEM).
 * Thread-safe: called from many pool workers at once.
 *
 * To decide like qemu-img 7.2 which clusters stay compressed, pass
 * dst_size = cluster_size - 1. A deflate stream must then leave one byte of @dst_size
 * unused (zlib can only report the end of the stream when it has room left; qemu has the
 * same limit, so a cluster is kept compressed when its deflate stream is at most
 * cluster_size - 2 bytes), while a zstd frame may fill @dst_size exactly.
 */
ssize_t tblk__qcow2_compress(int type, void *dst, size_t dst_size, const void *src,
			     size_t src_size);

/*
 * Decompresses @src (@src_size bytes; qcow2 stores lengths rounded to 512-byte sectors,
 * so there may be garbage after the stream) until @dst_size bytes are produced.
 * 0, or -EIO if the stream is malformed or ends before @dst_size bytes (-EINVAL for an
 * unknown @type, -ENOMEM). Never reads or writes out of bounds whatever the input (hostile
 * images). Thread-safe. @dst may be written even when the call fails.
 */
int tblk__qcow2_decompress(int type, void *dst, size_t dst_size, const void *src,
			   size_t src_size);

#endif /* TBLK_QCOW2_COMPRESS_H */
