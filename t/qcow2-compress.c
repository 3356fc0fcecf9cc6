/* SPDX-License-Identifier: MIT */
/*
 * qcow2-compress.c - the qcow2 cluster codecs: round trips of both types over cluster sizes
 * 4 KiB to 2 MiB with compressible, mixed and random data; qemu's limit for keeping a
 * cluster compressed; streams written by qemu-img 7.2 decode, and ours are byte-identical to
 * them; hostile input (random bytes, truncations, bit flips, short streams, oversized zstd
 * frames) fails with -EIO; four threads at once.
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "common/common.h"
#include "formats/qcow2-compress.h"
#include "t/tap.h"

#define ZLIB TBLK_QCOW2_COMPRESS_ZLIB
#define ZSTD TBLK_QCOW2_COMPRESS_ZSTD
#define FIXTURE_CLUSTER 4096

static const char *const type_name[] = { "zlib", "zstd" };

/*
 * The fixtures: a raw file of two 4 KiB clusters, fixture_text(99) then fixture_text(1000),
 * converted by qemu-img 7.2.22 (Debian 12) with
 *   qemu-img convert -c -O qcow2 -o compression_type=zlib,cluster_size=4096 in.raw out.qcow2
 * (and compression_type=zstd). Each array holds the bytes the first cluster's compressed L2
 * descriptor covers (host offset 0x5000, one sector): that cluster's stream (360 bytes of
 * raw deflate, a 209-byte zstd frame), then the start of the second cluster's stream, which
 * qemu packs right behind it.
 */
static const uint8_t fixture_zlib[] = {
	0x85, 0xd2, 0x3d, 0x4a, 0x04, 0x51, 0x00, 0xc0, 0xe0, 0xfe, 0x9d, 0x62,
	0x0e, 0x20, 0x0f, 0xdd, 0xff, 0x39, 0x8e, 0x0b, 0x23, 0x16, 0x83, 0x0b,
	0xba, 0xe0, 0xf5, 0x4d, 0x63, 0x95, 0x22, 0x75, 0xf8, 0xba, 0xac, 0xeb,
	0x72, 0x7f, 0x3c, 0x9f, 0xfb, 0xf6, 0xb3, 0x3c, 0x3e, 0x96, 0xfb, 0xb6,
	0x7d, 0x2f, 0x8f, 0xaf, 0xe5, 0xf9, 0xb9, 0x2d, 0xbf, 0xef, 0xfb, 0xfe,
	0xb2, 0xac, 0xea, 0x73, 0xac, 0xb7, 0x30, 0xea, 0x98, 0x6b, 0x18, 0x75,
	0xcc, 0x25, 0x8c, 0x3a, 0xe6, 0x1c, 0x46, 0x1d, 0x73, 0x0a, 0xa3, 0x8e,
	0x39, 0x86, 0x51, 0xc7, 0x1c, 0xc2, 0xa8, 0x63, 0xde, 0xc2, 0xa8, 0x63,
	0x5e, 0xc3, 0xa8, 0xcf, 0x71, 0x8b, 0x0f, 0xdc, 0x31, 0xf1, 0x81, 0x3b,
	0x26, 0x3e, 0x70, 0xc7, 0xc4, 0x07, 0xee, 0x98, 0xf8, 0xc0, 0x1d, 0x13,
	0x1f, 0xb8, 0x63, 0xe2, 0x03, 0x77, 0x4c, 0x7c, 0xe0, 0x8e, 0x89, 0x0f,
	0xdc, 0x31, 0xf1, 0x81, 0xfb, 0x1c, 0xd7, 0xf8, 0xc0, 0x1d, 0x13, 0x1f,
	0xb8, 0x63, 0xe2, 0x03, 0x77, 0x4c, 0x7c, 0xe0, 0x8e, 0x89, 0x0f, 0xdc,
	0x31, 0xf1, 0x81, 0x3b, 0x26, 0x3e, 0x70, 0xc7, 0xc4, 0x07, 0xee, 0x98,
	0xf8, 0xc0, 0x1d, 0x13, 0x1f, 0xb8, 0xcf, 0x71, 0x89, 0x0f, 0xdc, 0x31,
	0xf1, 0x81, 0x3b, 0x26, 0x3e, 0x70, 0xc7, 0xc4, 0x07, 0xee, 0x98, 0xf8,
	0xc0, 0x1d, 0x13, 0x1f, 0xb8, 0x63, 0xe2, 0x03, 0x77, 0x4c, 0x7c, 0xe0,
	0x8e, 0x89, 0x0f, 0xdc, 0x31, 0xf1, 0x81, 0xfb, 0x1c, 0xe7, 0xf8, 0xc0,
	0x1d, 0x13, 0x1f, 0xb8, 0x63, 0xe2, 0x03, 0x77, 0x4c, 0x7c, 0xe0, 0x8e,
	0x89, 0x0f, 0xdc, 0x31, 0xf1, 0x81, 0x3b, 0x26, 0x3e, 0x70, 0xc7, 0xc4,
	0x07, 0xee, 0x98, 0xf8, 0xc0, 0x1d, 0x13, 0x1f, 0xb8, 0xcf, 0x71, 0x8a,
	0x0f, 0xdc, 0x31, 0xf1, 0x81, 0x3b, 0x26, 0x3e, 0x70, 0xc7, 0xc4, 0x07,
	0xee, 0x98, 0xf8, 0xc0, 0x1d, 0x13, 0x1f, 0xb8, 0x63, 0xe2, 0x03, 0x77,
	0x4c, 0x7c, 0xe0, 0x8e, 0x89, 0x0f, 0xdc, 0x31, 0xf1, 0x81, 0xfb, 0x1c,
	0xc7, 0xf8, 0xc0, 0x1d, 0x13, 0x1f, 0xb8, 0x63, 0xe2, 0x03, 0x77, 0x4c,
	0x7c, 0xe0, 0x8e, 0x89, 0x0f, 0xdc, 0x31, 0xf1, 0x81, 0x3b, 0x26, 0x3e,
	0x70, 0xc7, 0xc4, 0x07, 0xee, 0x98, 0xf8, 0xc0, 0x1d, 0x13, 0x1f, 0xb8,
	0xcf, 0x71, 0x88, 0x0f, 0xdc, 0x31, 0xf1, 0x81, 0x3b, 0x26, 0x3e, 0x70,
	0xc7, 0xc4, 0x07, 0xee, 0x98, 0xf8, 0xc0, 0x1d, 0x13, 0x1f, 0xb8, 0x63,
	0xe2, 0x03, 0x77, 0x4c, 0x7c, 0xe0, 0x8e, 0x89, 0x0f, 0xfe, 0xfb, 0x1f,
	0x85, 0xd2, 0x3b, 0x4a, 0x43, 0x51, 0x00, 0x00, 0xd1, 0xde, 0x55, 0xdc,
	0x05, 0x88, 0xe4, 0xff, 0x59, 0x8e, 0x81, 0x27, 0x16, 0xc1, 0x80, 0x06,
	0xdc, 0xbe, 0x77, 0x2a, 0x8b, 0x09, 0x99, 0x7e, 0x4e, 0x37, 0xeb, 0xd5,
	0x6a, 0x35, 0x2e, 0xb7, 0xfb, 0xfd, 0xba, 0xfc, 0x8c, 0xdb, 0xc7, 0xb8,
	0x2c, 0xcb, 0xf7, 0xb8, 0x7d, 0x8d, 0xfb, 0xe7, 0x32, 0x7e, 0xdf, 0xaf,
	0xd7, 0xd7, 0xb1, 0x7e, 0x50, 0xbc, 0xbd, 0x9c, 0xcf, 0xe7, 0xe7, 0xec,
	0x41, 0x80, 0x3a, 0x95, 0x52, 0x80, 0x3a, 0x96, 0x52, 0x80, 0x3a, 0x94,
	0x52, 0x80, 0xda, 0x97, 0x52, 0x80, 0xda, 0x95, 0x52, 0x80, 0xda, 0x96,
	0x52, 0x80, 0xda, 0x94, 0x52, 0x80, 0x5a, 0x97, 0x52, 0x80, 0x8a, 0x39,
	0x1e, 0x04, 0x53, 0x9d, 0xea, 0x0d, 0x07, 0xa8, 0x7a, 0xc3, 0x01, 0xaa,
	0xde, 0x70, 0x80, 0xaa, 0x37, 0x1c, 0xa0, 0xea, 0x0d, 0x07, 0xa8, 0x7a,
	0xc3, 0x01, 0xaa, 0xde, 0x70, 0x80, 0xaa, 0x37, 0x1c, 0xa0, 0xea, 0x0d,
	0x07, 0xa8, 0x7a, 0xc3, 0xc1, 0x54, 0xc7, 0x7a,
};
#define FIXTURE_ZLIB_STREAM 360

static const uint8_t fixture_zstd[] = {
	0x28, 0xb5, 0x2f, 0xfd, 0x60, 0x00, 0x0f, 0x3d, 0x06, 0x00, 0x82, 0x0c,
	0x1f, 0x18, 0x80, 0xa7, 0xc9, 0x01, 0x00, 0x8d, 0x28, 0x28, 0x04, 0xb8,
	0x92, 0xc8, 0x18, 0xd5, 0x99, 0x99, 0x29, 0xf7, 0xf7, 0xb1, 0xab, 0xb9,
	0x03, 0x9e, 0x47, 0x92, 0x20, 0x87, 0x42, 0xcc, 0xcc, 0xcc, 0xcc, 0xcc,
	0xcc, 0xcc, 0xcc, 0xcc, 0x48, 0x92, 0x24, 0x49, 0x92, 0x24, 0x49, 0xd2,
	0xb6, 0x6d, 0xdb, 0xb6, 0x6d, 0xdb, 0xb6, 0x91, 0x24, 0x49, 0x92, 0x24,
	0x49, 0x92, 0x64, 0xdb, 0xb6, 0x6d, 0xdb, 0xb6, 0x6d, 0xdb, 0xda, 0xb6,
	0x6d, 0xdb, 0xb6, 0x6d, 0xdb, 0xf6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	0x4f, 0x28, 0x14, 0x37, 0x18, 0x08, 0x62, 0x46, 0xda, 0xc8, 0xd6, 0xfe,
	0x0b, 0x42, 0xa1, 0x00, 0x1c, 0x47, 0xc0, 0x41, 0x31, 0x06, 0x92, 0x42,
	0x80, 0x94, 0x02, 0xc3, 0x38, 0x14, 0x01, 0xa4, 0x18, 0x18, 0x47, 0x92,
	0x20, 0x87, 0x52, 0x14, 0x01, 0x80, 0x9e, 0xa8, 0x21, 0xf0, 0xd2, 0xfe,
	0x6f, 0xd0, 0x53, 0x96, 0x03, 0x11, 0xfc, 0x09, 0x82, 0x20, 0x08, 0x5d,
	0xf8, 0x11, 0x1f, 0x84, 0x20, 0x21, 0x43, 0x92, 0x08, 0x11, 0x22, 0x24,
	0x48, 0x10, 0x11, 0x42, 0x82, 0x04, 0x09, 0x21, 0x22, 0x48, 0x90, 0x10,
	0x21, 0x42, 0x04, 0x29, 0x6a, 0xde, 0x82, 0x04, 0x00, 0xeb, 0x32, 0xf8,
	0x47, 0x16, 0x58, 0x08, 0x44, 0x84, 0x98, 0x96, 0xdd, 0xbd, 0x02, 0x47,
	0x2c, 0x15, 0x83, 0xdd, 0x55, 0x28, 0xb5, 0x2f, 0xfd, 0x60, 0x00, 0x0f,
	0xed, 0x06, 0x00, 0xe2, 0x4a, 0x1b, 0x17, 0xa0, 0x37, 0x1d, 0x00, 0x84,
	0x88, 0xc9, 0x7f, 0x5f, 0xd1, 0x7f, 0xd1, 0xbb, 0xa5, 0x94, 0x52, 0xca,
	0x6d, 0x5c, 0xf7, 0x56, 0xc3, 0x03, 0x55, 0x55, 0x55, 0x55, 0x55, 0xdb,
	0xb6, 0x6d, 0xdb, 0xb6, 0x6d, 0xdb, 0x46, 0x92, 0x24, 0x49, 0x92, 0x24,
	0x49, 0x92, 0x6d, 0xdb, 0xb6, 0x6d, 0xdb, 0xb6, 0x6d, 0x6b, 0xdb, 0xb6,
	0x6d, 0xdb, 0xb6, 0x6d, 0xdb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
	0x8f, 0x88, 0xe2, 0x18, 0x35, 0xd6, 0x3f, 0x0e, 0x44, 0x14, 0xc7, 0xa8,
	0xb1, 0xfe, 0x81, 0x10, 0x22, 0x0a, 0x03, 0x48, 0x92, 0xc0, 0xc1, 0xa4,
	0xc1, 0x62, 0x08, 0x8a, 0x29, 0xa4, 0x84, 0x18, 0x81, 0x62, 0x0c, 0x29,
	0x59, 0x16, 0x05, 0x31, 0xe7, 0x1c, 0x23, 0x80, 0xab, 0xa8, 0x01, 0xf1,
	0xa5, 0xfd, 0xcf, 0xe0, 0x35, 0x96, 0x03, 0x11, 0x80, 0x84, 0x11, 0x61,
	0x84, 0x08, 0x20, 0x01, 0x51, 0xc5, 0x2b, 0xc1, 0x07, 0x75, 0x21, 0x77,
	0xb7, 0xee, 0x6e, 0xdd, 0x9d, 0xbb, 0x3b, 0x77, 0xb7, 0xee, 0x6e, 0xdd,
	0x9d, 0xbb, 0x3b, 0x77, 0xb7, 0xee, 0x6e, 0xdd, 0x9d, 0xbb, 0x3b, 0x77,
	0xb7, 0x6e, 0xb5, 0xf8, 0x21, 0x6d, 0xf0, 0xef, 0x5f, 0x0b, 0xcc, 0x58,
	0xd1, 0xdb, 0x00, 0x3a, 0x76, 0xe0, 0x5c, 0x60, 0x06, 0xb1, 0xe6, 0x0d,
	0x44, 0xf6, 0x86, 0x95, 0x04, 0xcc, 0xdf, 0x27, 0x72, 0x76, 0xe0, 0x5c,
	0xc1, 0x8c, 0x15, 0xb5, 0x0d, 0xa0, 0xb3, 0x03, 0x8a, 0x99, 0xf7, 0x1a,
	0xd9, 0x1b, 0xa6, 0xb7, 0xaa, 0x8a, 0xb2, 0xab, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
};
#define FIXTURE_ZSTD_STREAM 209

/* "99 bottles of beer on the wall, 99 bottles of beer.\n", counting down from @first. */
static void fixture_text(uint8_t *buf, size_t len, int first)
{
	char line[80];
	size_t pos = 0;

	for (int i = first; pos < len; i--) {
		int n = snprintf(line, sizeof(line), "%d bottles of beer on the wall, "
				 "%d bottles of beer.\n", i, i);
		size_t take = TBLK_MIN((size_t)n, len - pos);

		memcpy(buf + pos, line, take);
		pos += take;
	}
}

enum kind { COMPRESSIBLE, MIXED, RANDOM };
static const char *const kind_name[] = { "compressible", "mixed", "random" };

static void fill(uint8_t *buf, size_t len, enum kind kind, uint64_t *rng)
{
	static const char *const words[] = { "qcow2 ", "cluster ", "refcount ", "L2 ", "tblk ",
					     "zero ", "backing ", "snapshot ", "sector " };
	size_t pos = 0;

	while (pos < len) {
		uint64_t r = tap_rand(rng);
		size_t n;

		if (kind == RANDOM || (kind == MIXED && r % 3 == 0)) {
			/* a run of random bytes */
			n = TBLK_MIN(len - pos, kind == RANDOM ? len : 1 + (r >> 8) % 300);
			for (size_t i = 0; i < n; i++)
				buf[pos + i] = (uint8_t)(tap_rand(rng) >> 32);
		} else if (kind == MIXED && r % 3 == 1) {
			/* a run of one byte */
			n = TBLK_MIN(len - pos, 1 + (r >> 8) % 200);
			memset(buf + pos, (int)(r >> 40), n);
		} else {
			const char *w = words[(r >> 8) % TBLK_ARRAY_SIZE(words)];

			n = TBLK_MIN(len - pos, strlen(w));
			memcpy(buf + pos, w, n);
		}
		pos += n;
	}
}

/*
 * What the qcow2 driver reads back: the stream followed by garbage up to the end of its last
 * 512-byte sector (@start is the stream's offset in its first sector). Returns a malloc'ed
 * buffer of exactly *@len bytes, so ASan sees any read past it.
 */
static uint8_t *as_stored(const uint8_t *stream, size_t stream_len, size_t start,
			  uint64_t *rng, size_t *len)
{
	size_t total = TBLK_ALIGN_UP(start + stream_len, 512) - start;
	uint8_t *buf = malloc(total);

	if (!buf)
		tap_bail("out of memory");
	memcpy(buf, stream, stream_len);
	for (size_t i = stream_len; i < total; i++)
		buf[i] = (uint8_t)tap_rand(rng);
	*len = total;
	return buf;
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p)
		tap_bail("out of memory");
	return p;
}

static void test_fixtures(void)
{
	static const struct {
		const uint8_t *bytes;
		size_t len, stream;
	} fx[] = {
		[ZLIB] = { fixture_zlib, sizeof(fixture_zlib), FIXTURE_ZLIB_STREAM },
		[ZSTD] = { fixture_zstd, sizeof(fixture_zstd), FIXTURE_ZSTD_STREAM },
	};
	uint8_t want[FIXTURE_CLUSTER], got[FIXTURE_CLUSTER + 1], out[FIXTURE_CLUSTER];

	fixture_text(want, sizeof(want), 99);
	for (int t = ZLIB; t <= ZSTD; t++) {
		const char *tn = type_name[t];
		uint8_t *src = xmalloc(fx[t].len);
		ssize_t n;
		bool early = true;

		memcpy(src, fx[t].bytes, fx[t].len);
		memset(got, 0xaa, sizeof(got));
		is_int(tblk__qcow2_decompress(t, got, FIXTURE_CLUSTER, src, fx[t].len), 0,
		       "%s: qemu-img's cluster decodes (with the next stream behind it)", tn);
		ok(!memcmp(got, want, FIXTURE_CLUSTER), "%s: to the original data", tn);
		is_int(tblk__qcow2_decompress(t, got, FIXTURE_CLUSTER, src, fx[t].stream), 0,
		       "%s: the bare stream decodes", tn);
		is_int(tblk__qcow2_decompress(t, got, FIXTURE_CLUSTER + 1, src, fx[t].len), -EIO,
		       "%s: asking one byte more than the stream holds is -EIO", tn);
		/* A cut inside the data cannot produce the cluster. */
		for (size_t cut = 0; cut + 2 < fx[t].stream; cut++) {
			if (tblk__qcow2_decompress(t, got, FIXTURE_CLUSTER, src, cut) != -EIO) {
				tap_diag("  cut at %zu accepted", cut);
				early = false;
			}
		}
		ok(early, "%s: every truncation of the stream is -EIO", tn);

		/* The same cluster with qemu's limit gives qemu's bytes. */
		n = tblk__qcow2_compress(t, out, FIXTURE_CLUSTER - 1, want, FIXTURE_CLUSTER);
		is_int(n, fx[t].stream, "%s: our stream has qemu's length", tn);
		ok(n == (ssize_t)fx[t].stream && !memcmp(out, fx[t].bytes, fx[t].stream),
		   "%s: and qemu's bytes", tn);
		free(src);
	}
}

static const size_t cluster_sizes[] = { 4096, 8192, 16384, 32768, 65536, 131072, 262144,
					524288, 1048576, 2097152 };

/* Round trips one cluster; returns a description of the failure or NULL. */
static const char *round_trip(int t, const uint8_t *data, size_t cs, enum kind kind,
			      uint64_t *rng, uint8_t *cbuf, uint8_t *dbuf)
{
	ssize_t n = tblk__qcow2_compress(t, cbuf, cs - 1, data, cs);
	size_t stored_len, start = tap_rand(rng) % 512;
	uint8_t *stored;
	int ret;

	if (kind == RANDOM)
		return n == -ENOSPC ? NULL : "random data did not give -ENOSPC";
	if (n <= 0 || (size_t)n > cs - 1)
		return "compression failed";
	stored = as_stored(cbuf, (size_t)n, start, rng, &stored_len);
	memset(dbuf, 0x55, cs);
	ret = tblk__qcow2_decompress(t, dbuf, cs, stored, stored_len);
	free(stored);
	if (ret != 0)
		return "decompression failed";
	if (memcmp(dbuf, data, cs))
		return "decompressed data differs";
	return NULL;
}

static void test_round_trips(uint64_t *rng)
{
	size_t max = cluster_sizes[TBLK_ARRAY_SIZE(cluster_sizes) - 1];
	uint8_t *data = xmalloc(max), *cbuf = xmalloc(max), *dbuf = xmalloc(max);

	for (int t = ZLIB; t <= ZSTD; t++) {
		for (size_t i = 0; i < TBLK_ARRAY_SIZE(cluster_sizes); i++) {
			size_t cs = cluster_sizes[i];

			for (enum kind k = COMPRESSIBLE; k <= RANDOM; k++) {
				const char *err;

				fill(data, cs, k, rng);
				err = round_trip(t, data, cs, k, rng, cbuf, dbuf);
				ok(!err, "%s: %zu KiB %s cluster%s%s", type_name[t], cs >> 10,
				   kind_name[k], err ? ": " : "", err ? err : "");
			}
		}
	}
	free(data);
	free(cbuf);
	free(dbuf);
}

/*
 * qemu compresses into cluster_size - 1 bytes; a deflate stream needs one byte to spare,
 * a zstd frame may fill the room exactly.
 */
static void test_limits(uint64_t *rng)
{
	size_t cs = 65536;
	uint8_t *data = xmalloc(cs), *out = xmalloc(2 * cs), *small;
	ssize_t len;

	fill(data, cs, MIXED, rng);
	for (int t = ZLIB; t <= ZSTD; t++) {
		const char *tn = type_name[t];

		len = tblk__qcow2_compress(t, out, 2 * cs, data, cs);
		ok(len > 0, "%s: mixed 64 KiB compresses to %zd bytes", tn, len);
		if (len <= 0)
			continue;
		small = xmalloc((size_t)len + 1);
		if (t == ZLIB) {
			is_int(tblk__qcow2_compress(t, small, (size_t)len, data, cs), -ENOSPC,
			       "zlib: room for exactly the stream is -ENOSPC");
			is_int(tblk__qcow2_compress(t, small, (size_t)len + 1, data, cs), len,
			       "zlib: one byte more is enough");
		} else {
			is_int(tblk__qcow2_compress(t, small, (size_t)len - 1, data, cs), -ENOSPC,
			       "zstd: one byte short is -ENOSPC");
			is_int(tblk__qcow2_compress(t, small, (size_t)len, data, cs), len,
			       "zstd: room for exactly the frame is enough");
		}
		ok(!memcmp(small, out, (size_t)len), "%s: a tight buffer gives the same bytes", tn);
		free(small);
	}
	fill(data, cs, RANDOM, rng);
	for (int t = ZLIB; t <= ZSTD; t++)
		is_int(tblk__qcow2_compress(t, out, cs - 512, data, cs), -ENOSPC,
		       "%s: random data in cluster_size - 512 is -ENOSPC", type_name[t]);
	is_int(tblk__qcow2_compress(2, out, cs, data, cs), -EINVAL, "unknown type: compress");
	is_int(tblk__qcow2_decompress(2, out, cs, data, cs), -EINVAL, "unknown type: decompress");
	free(data);
	free(out);
}

static size_t put_le(uint8_t *p, uint64_t v, int bytes)
{
	for (int i = 0; i < bytes; i++)
		p[i] = (uint8_t)(v >> (8 * i));
	return (size_t)bytes;
}

/* A zstd frame holding @len zero bytes in one raw block, with the given header fields. */
static size_t zstd_frame(uint8_t *buf, uint8_t fhd, uint64_t fcs, size_t len)
{
	static const int fcs_bytes[4] = { 0, 2, 4, 8 };
	size_t pos = put_le(buf, 0xFD2FB528u, 4);
	int fb = fcs_bytes[fhd >> 6];

	buf[pos++] = fhd;
	if (!(fhd & 0x20))
		buf[pos++] = 0x58;	/* window descriptor: 2^21 */
	if ((fhd & 0x20) && !(fhd >> 6))
		fb = 1;
	if (fb == 2)
		fcs -= 256;
	pos += put_le(buf + pos, fcs, fb);
	pos += put_le(buf + pos, (uint64_t)len << 3 | 1, 3);	/* last, raw, len */
	memset(buf + pos, 0, len);
	return pos + len;
}

static void test_zstd_frames(uint64_t *rng)
{
	enum { CS = 4096, HALF = CS / 2 };
	uint8_t *data = xmalloc(CS), *got = xmalloc(CS), *buf = xmalloc(4 * CS);
	size_t a, b, pos, skip;
	ZSTD_CCtx *cc = ZSTD_createCCtx();

	fill(data, CS, MIXED, rng);
	/* Two frames of half a cluster each, with a skippable frame between them. */
	a = ZSTD_compress(buf, 2 * CS, data, HALF, 1);
	pos = a;
	skip = put_le(buf + pos, 0x184D2A5Au, 4);
	skip += put_le(buf + pos + skip, 5, 4);
	memset(buf + pos + skip, 0xee, 5);
	pos += skip + 5;
	b = ZSTD_compress(buf + pos, 2 * CS, data + HALF, HALF, 19);
	ok(!ZSTD_isError(a) && !ZSTD_isError(b), "built a two-frame stream");
	memset(got, 0, CS);
	ok(tblk__qcow2_decompress(ZSTD, got, CS, buf, pos + b) == 0 && !memcmp(got, data, CS),
	   "zstd: several frames and a skippable frame decode");
	is_int(tblk__qcow2_decompress(ZSTD, got, CS, buf, pos + b - 1), -EIO,
	       "zstd: second frame cut short is -EIO");
	is_int(tblk__qcow2_decompress(ZSTD, got, CS, buf, a), -EIO,
	       "zstd: only the first half is -EIO");

	/* No content size in the header, and a checksum: decodes; a bad checksum does not. */
	ZSTD_CCtx_setParameter(cc, ZSTD_c_contentSizeFlag, 0);
	ZSTD_CCtx_setParameter(cc, ZSTD_c_checksumFlag, 1);
	a = ZSTD_compress2(cc, buf, 2 * CS, data, CS);
	ok(!ZSTD_isError(a) && ZSTD_getFrameContentSize(buf, a) == ZSTD_CONTENTSIZE_UNKNOWN,
	   "built a frame without content size");
	ok(tblk__qcow2_decompress(ZSTD, got, CS, buf, a) == 0 && !memcmp(got, data, CS),
	   "zstd: frame without content size, with checksum decodes");
	is_int(tblk__qcow2_decompress(ZSTD, got, CS - 1, buf, a), -EIO,
	       "zstd: frame without content size producing too much is -EIO");
	buf[a - 1] ^= 1;
	is_int(tblk__qcow2_decompress(ZSTD, got, CS, buf, a), -EIO, "zstd: bad checksum is -EIO");

	/* Hand-made frames whose header claims more than the cluster holds. */
	a = zstd_frame(buf, 0xe0, 1ull << 40, 64);	/* single segment, 8-byte size */
	is_int(tblk__qcow2_decompress(ZSTD, got, CS, buf, a), -EIO,
	       "zstd: single-segment frame claiming 1 TiB is -EIO");
	a = zstd_frame(buf, 0xc0, 1ull << 62, 64);	/* window descriptor, 8-byte size */
	is_int(tblk__qcow2_decompress(ZSTD, got, CS, buf, a), -EIO,
	       "zstd: frame claiming 2^62 bytes is -EIO");
	a = zstd_frame(buf, 0x60, CS + 1, CS + 1);
	is_int(tblk__qcow2_decompress(ZSTD, got, CS, buf, a), -EIO,
	       "zstd: frame claiming one byte more than the cluster is -EIO");
	a = zstd_frame(buf, 0x60, CS, 64);
	is_int(tblk__qcow2_decompress(ZSTD, got, CS, buf, a), -EIO,
	       "zstd: frame whose blocks hold less than its content size is -EIO");
	a = zstd_frame(buf, 0x60, CS, CS);
	is_int(tblk__qcow2_decompress(ZSTD, got, CS, buf, a), 0,
	       "zstd: the same hand-made frame with a full raw block decodes");
	put_le(buf, 0xFD2FB527u, 4);	/* zstd v0.7 legacy magic */
	is_int(tblk__qcow2_decompress(ZSTD, got, CS, buf, a), -EIO,
	       "zstd: legacy frame magic is -EIO");
	ZSTD_freeCCtx(cc);
	free(data);
	free(got);
	free(buf);
}

static void test_hostile(uint64_t *rng)
{
	enum { CS = 65536 };
	uint8_t *data = xmalloc(CS), *cbuf = xmalloc(CS), *got = xmalloc(CS);

	for (int t = ZLIB; t <= ZSTD; t++) {
		const char *tn = type_name[t];
		int bad = 0, other = 0, accepted = 0;
		ssize_t n;

		/* Random bytes of many lengths, into clusters of many sizes. */
		for (int i = 0; i < 200; i++) {
			size_t len = 1 + tap_rand(rng) % 4096, cs = 512u << (i % 8);
			uint8_t *src = xmalloc(len);
			uint8_t *dst = xmalloc(cs);

			for (size_t j = 0; j < len; j++)
				src[j] = (uint8_t)tap_rand(rng);
			if (tblk__qcow2_decompress(t, dst, cs, src, len) != -EIO)
				bad++;
			free(src);
			free(dst);
		}
		is_int(bad, 0, "%s: 200 random inputs are -EIO", tn);

		/* A stream of half a cluster, asked for a whole one. */
		fill(data, CS, COMPRESSIBLE, rng);
		n = tblk__qcow2_compress(t, cbuf, CS, data, CS / 2);
		ok(n > 0 && tblk__qcow2_decompress(t, got, CS, cbuf, (size_t)n) == -EIO,
		   "%s: a stream decoding to half the cluster is -EIO", tn);
		is_int(tblk__qcow2_decompress(t, got, CS, cbuf, 0), -EIO, "%s: empty input", tn);

		/*
		 * Flipped bits in valid streams of compressible and of mixed data: never a
		 * crash or an out-of-bounds access (exact-size buffers for ASan), and the result
		 * is 0 or -EIO (neither format has a checksum here, so many still decode).
		 */
		for (int i = 0; i < 300; i++) {
			uint8_t *src;
			int ret;

			if (i % 150 == 0) {
				fill(data, CS, i ? MIXED : COMPRESSIBLE, rng);
				n = tblk__qcow2_compress(t, cbuf, CS - 1, data, CS);
				if (n <= 0) {
					other++;
					break;
				}
			}
			src = xmalloc((size_t)n);
			memcpy(src, cbuf, (size_t)n);
			for (int f = 0; f < 1 + i % 4; f++) {
				uint64_t r = tap_rand(rng);

				src[r % (size_t)n] ^= (uint8_t)(1u << (r >> 32) % 8);
			}
			ret = tblk__qcow2_decompress(t, got, CS, src, (size_t)n);
			if (ret == 0)
				accepted++;
			else if (ret != -EIO)
				other++;
			free(src);
		}
		is_int(other, 0, "%s: 300 corrupted streams give 0 or -EIO (%d decoded)", tn,
		       accepted);
	}
	free(data);
	free(cbuf);
	free(got);
}

#define NR_THREADS 4

struct worker {
	pthread_t thread;
	uint64_t seed;
	int failures;		/* written by the worker, read after join */
	const char *first_error;
};

static void *worker_main(void *opaque)
{
	static const size_t sizes[] = { 4096, 65536, 262144 };
	struct worker *w = opaque;
	uint64_t rng = w->seed;
	size_t max = 262144;
	uint8_t *data = xmalloc(max), *cbuf = xmalloc(max), *dbuf = xmalloc(max);

	for (int i = 0; i < 24; i++) {
		int t = i % 2;
		size_t cs = sizes[(i / 2) % TBLK_ARRAY_SIZE(sizes)];
		enum kind k = (enum kind)((i / 6) % 3);
		const char *err;

		fill(data, cs, k, &rng);
		err = round_trip(t, data, cs, k, &rng, cbuf, dbuf);
		if (err) {
			w->failures++;
			if (!w->first_error)
				w->first_error = err;
		}
	}
	free(data);
	free(cbuf);
	free(dbuf);
	return NULL;
}

static void test_threads(uint64_t seed)
{
	struct worker w[NR_THREADS] = { 0 };
	int failures = 0, started = 0;

	for (int i = 0; i < NR_THREADS; i++) {
		w[i].seed = seed + 1000 * (uint64_t)(i + 1);
		if (pthread_create(&w[i].thread, NULL, worker_main, &w[i]) == 0)
			started++;
	}
	is_int(started, NR_THREADS, "started %d threads", NR_THREADS);
	for (int i = 0; i < started; i++) {
		pthread_join(w[i].thread, NULL);
		failures += w[i].failures;
		if (w[i].first_error)
			tap_diag("  thread %d: %s", i, w[i].first_error);
	}
	is_int(failures, 0, "%d threads round-tripping both types at once", NR_THREADS);
}

int main(void)
{
	uint64_t seed = tap_seed(20240601), rng = seed;

	tap_plan(110);
	test_fixtures();
	test_round_trips(&rng);
	test_limits(&rng);
	test_zstd_frames(&rng);
	test_hostile(&rng);
	test_threads(seed);
	return tap_done();
}
