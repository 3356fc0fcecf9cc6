/* SPDX-License-Identifier: MIT */
/*
 * img-compare.c - "tblk-img compare": whether two images read the same, as qemu-img compare
 * decides it. Both images are walked together by block status; ranges both know to be zero
 * are skipped, ranges allocated in both are read and compared sector by sector, a range
 * allocated in one image only must read as zeroes there. Images of different sizes are
 * equal if the rest of the larger one reads as zeroes (-s makes any size or allocation
 * difference a mismatch).
 *
 * Exit status: 0 identical, 1 different, 2 an image could not be opened, 3 block status
 * failed, 4 a read failed (1 for command-line errors, as qemu-img).
 *
 * Threading: single-threaded.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "tools/img-int.h"

#define CMP_BUF_SIZE	(2u << 20)	/* largest range read at once (qemu's IO_BUF_SIZE) */
#define SECTOR		512u
/* Not a TBLK_BS_* bit: the range reaches the end of the image (for strict mode). */
#define CMP_BS_EOF	0x100u

enum { CMP_SAME = 0, CMP_DIFFERENT = 1, CMP_OPEN_ERROR = 2, CMP_STATUS_ERROR = 3,
       CMP_READ_ERROR = 4 };

struct cmp_args {
	struct img_open_opts open1, open2;
	const char *cache;		/* -T */
	bool progress, quiet, strict;
};

struct cmp_image {
	struct tblk_blk *blk;
	const char *name;
	int64_t size;
	uint8_t *buf;
};

struct cmp {
	struct cmp_image img[2];
	bool quiet;
	int64_t progress_base;		/* the larger size: 100% */
};

static void cmp_parse(int argc, char **argv, struct cmp_args *a)
{
	unsigned int flags = 0;
	int c;

	while ((c = getopt_long(argc, argv, ":hf:F:T:pqsU", img_long_opts, NULL)) != -1) {
		/* compare's errors all exit 2, a bad --object's too */
		if (c == IMG_OPT_OBJECT) {
			if (tool_object_add(optarg) < 0)
				exit(2);
			continue;
		}
		if (img_common_opt(c, argv, &a->open1.image_opts))
			continue;
		switch (c) {
		case 'f': a->open1.fmt = optarg; break;
		case 'F': a->open2.fmt = optarg; break;
		case 'T': a->cache = optarg; break;
		case 'p': a->progress = true; break;
		case 'q': a->quiet = true; break;
		case 's': a->strict = true; break;
		case 'U': flags |= TBLK_OPEN_SHARE_RW; break;
		}
	}
	if (a->quiet)
		a->progress = false;
	if (optind != argc - 2)
		img_error_exit("Expecting two image file names");
	a->open1.filename = argv[optind];
	a->open2.filename = argv[optind + 1];
	a->open1.flags = a->open2.flags = flags;
	a->open2.image_opts = a->open1.image_opts;
}

static void cmp_say(const struct cmp *c, const char *fmt, int64_t offset)
{
	if (!c->quiet) {
		printf(fmt, offset);
		fflush(stdout);
	}
}

/* Offset of the first 512-byte block of @buf that is not all zero, or -1. */
static int64_t first_nonzero_sector(const uint8_t *buf, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (buf[i])
			return (int64_t)(i / SECTOR * SECTOR);
	return -1;
}

/* Offset of the first 512-byte block where @a and @b differ, or -1. */
static int64_t first_diff_sector(const uint8_t *a, const uint8_t *b, size_t len)
{
	for (size_t i = 0; i < len; i += SECTOR) {
		size_t n = len - i < SECTOR ? len - i : SECTOR;

		if (memcmp(a + i, b + i, n))
			return (int64_t)i;
	}
	return -1;
}

static int cmp_read(struct cmp_image *im, int64_t offset, size_t bytes)
{
	int ret = tblk_blk_pread(im->blk, (uint64_t)offset, im->buf, bytes, 0);

	if (ret < 0) {
		tool_error("Error while reading offset %" PRId64 " of %s: %s", offset, im->name,
			   strerror(-ret));
		return CMP_READ_ERROR;
	}
	return CMP_SAME;
}

/* A range that must read as zeroes in @im. */
static int check_empty(const struct cmp *c, struct cmp_image *im, int64_t offset, size_t bytes)
{
	int64_t idx;
	int ret = cmp_read(im, offset, bytes);

	if (ret)
		return ret;
	idx = first_nonzero_sector(im->buf, bytes);
	if (idx >= 0) {
		cmp_say(c, "Content mismatch at offset %" PRId64 "!\n", offset + idx);
		return CMP_DIFFERENT;
	}
	return CMP_SAME;
}

/* Block status in compare's terms: the bits, CMP_BS_EOF where the range ends the image. */
static int cmp_status(struct cmp_image *im, int64_t offset, int64_t bytes, int64_t *pnum,
		      unsigned int *bits)
{
	struct img_status st;
	int ret = img_block_status(im->blk, (uint64_t)offset, (uint64_t)bytes, &st);

	if (ret < 0) {
		tool_error("Sector allocation test failed for %s", im->name);
		return CMP_STATUS_ERROR;
	}
	*pnum = (int64_t)st.pnum;
	*bits = st.bits & (TBLK_BS_DATA | TBLK_BS_ZERO | TBLK_BS_OFFSET_VALID);
	if (st.present)
		*bits |= TBLK_BS_ALLOCATED;
	if (offset + *pnum == im->size)
		*bits |= CMP_BS_EOF;
	return CMP_SAME;
}

static void cmp_progress(const struct cmp *c, int64_t chunk)
{
	img_progress_print((float)chunk / (float)c->progress_base * 100, 100);
}

/* One range of the common part: 0 to go on (*chunk set), else the exit status. */
static int cmp_common_chunk(struct cmp *c, int64_t offset, int64_t end, bool strict,
			    int64_t *chunk)
{
	unsigned int bits[2];
	int64_t pnum[2], diff;
	bool alloc[2];
	int ret, i;

	for (i = 0; i < 2; i++) {
		ret = cmp_status(&c->img[i], offset, end - offset, &pnum[i], &bits[i]);
		if (ret)
			return ret;
		alloc[i] = bits[i] & TBLK_BS_ALLOCATED;
	}
	*chunk = pnum[0] < pnum[1] ? pnum[0] : pnum[1];
	if (strict && bits[0] != bits[1]) {
		cmp_say(c, "Strict mode: Offset %" PRId64 " block status mismatch!\n", offset);
		return CMP_DIFFERENT;
	}
	if ((bits[0] & TBLK_BS_ZERO) && (bits[1] & TBLK_BS_ZERO))
		return CMP_SAME;
	if (*chunk > (int64_t)CMP_BUF_SIZE)
		*chunk = CMP_BUF_SIZE;
	if (alloc[0] != alloc[1])
		return check_empty(c, &c->img[alloc[0] ? 0 : 1], offset, (size_t)*chunk);
	if (!alloc[0])
		return CMP_SAME;
	for (i = 0; i < 2; i++) {
		ret = cmp_read(&c->img[i], offset, (size_t)*chunk);
		if (ret)
			return ret;
	}
	diff = first_diff_sector(c->img[0].buf, c->img[1].buf, (size_t)*chunk);
	if (diff >= 0) {
		cmp_say(c, "Content mismatch at offset %" PRId64 "!\n", offset + diff);
		return CMP_DIFFERENT;
	}
	return CMP_SAME;
}

/* The part of the larger image past the end of the smaller one must read as zeroes. */
static int cmp_tail(struct cmp *c, int64_t offset)
{
	struct cmp_image *over = &c->img[c->img[0].size > c->img[1].size ? 0 : 1];
	unsigned int bits;
	int64_t chunk;
	int ret;

	cmp_say(c, "Warning: Image size mismatch!\n", 0);
	while (offset < over->size) {
		ret = cmp_status(over, offset, over->size - offset, &chunk, &bits);
		if (ret)
			return ret;
		if ((bits & TBLK_BS_ALLOCATED) && !(bits & TBLK_BS_ZERO)) {
			if (chunk > (int64_t)CMP_BUF_SIZE)
				chunk = CMP_BUF_SIZE;
			ret = check_empty(c, over, offset, (size_t)chunk);
			if (ret)
				return ret;
		}
		offset += chunk;
		cmp_progress(c, chunk);
	}
	return CMP_SAME;
}

static int cmp_run(struct cmp *c, bool strict)
{
	int64_t size0 = c->img[0].size, size1 = c->img[1].size;
	int64_t end = size0 < size1 ? size0 : size1, offset = 0, chunk;
	int ret;

	c->progress_base = size0 > size1 ? size0 : size1;
	if (strict && size0 != size1) {
		cmp_say(c, "Strict mode: Image size mismatch!\n", 0);
		return CMP_DIFFERENT;
	}
	while (offset < end) {
		ret = cmp_common_chunk(c, offset, end, strict, &chunk);
		if (ret)
			return ret;
		offset += chunk;
		cmp_progress(c, chunk);
	}
	if (size0 != size1) {
		ret = cmp_tail(c, offset);
		if (ret)
			return ret;
	}
	cmp_say(c, "Images are identical.\n", 0);
	return CMP_SAME;
}

static int cmp_open(struct cmp *c, struct cmp_args *a)
{
	struct img_open_opts *o[2] = { &a->open1, &a->open2 };
	GError *err = NULL;

	if (tblk_parse_cache_mode(a->cache, &a->open1.flags, &err) < 0) {
		g_clear_error(&err);
		tool_error("Invalid source cache option: %s", a->cache);
		return CMP_OPEN_ERROR;
	}
	a->open2.flags = a->open1.flags;
	for (int i = 0; i < 2; i++) {
		struct cmp_image *im = &c->img[i];

		im->name = o[i]->filename;
		if (img_open(&im->blk, o[i], NULL) < 0)
			return CMP_OPEN_ERROR;
		im->size = tblk_blk_getlength(im->blk);
		if (im->size < 0) {
			tool_error("Can't get size of %s: %s", im->name, strerror((int)-im->size));
			return CMP_READ_ERROR;
		}
		im->buf = tool_buf_new(CMP_BUF_SIZE, 0);
		if (!im->buf) {
			tool_error("Could not allocate memory");
			return CMP_READ_ERROR;
		}
	}
	return CMP_SAME;
}

int img_compare(int argc, char **argv)
{
	struct cmp_args a = { .cache = "writeback" };
	struct cmp c = { 0 };
	int ret;

	cmp_parse(argc, argv, &a);
	c.quiet = a.quiet;
	img_progress_init(a.progress, 2.0f);
	ret = cmp_open(&c, &a);
	if (ret == CMP_SAME) {
		img_progress_print(0, 100);
		ret = cmp_run(&c, a.strict);
	}
	img_progress_end();
	for (int i = 0; i < 2; i++) {
		tblk_blk_close(c.img[i].blk);
		tool_buf_free(c.img[i].buf);
	}
	return ret;
}
