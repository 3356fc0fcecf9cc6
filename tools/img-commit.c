/* SPDX-License-Identifier: MIT */
/*
 * img-commit.c - "tblk-img commit": qemu-img commit's command line and messages. The data
 * the layers above the base hold (the image and, with -b, the images between) is written
 * into the base: the direct backing file, or the one -b names (found by qemu's rules). The
 * copy follows qemu's commit job: the base grows to the image's size if smaller, the ranges
 * held above the base are copied in chunks of the base's granularity (its cluster size
 * within 4-64 KiB, 64 KiB without clusters), a run of zeroes that covers whole base
 * clusters is written as zeroes that may unmap, anything else is copied. Without -d (and
 * -b, which implies it) the image is emptied afterwards, as qemu does.
 *
 * Threading: single-threaded.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "tools/img-int.h"

#define COMMIT_MAX_IO	(1u << 20)	/* the largest copy request of qemu's job */

struct commit_args {
	struct img_open_opts open;
	const char *cache, *base;
	bool drop, progress, quiet;
};

static void commit_parse(int argc, char **argv, struct commit_args *a)
{
	int c;

	while ((c = getopt_long(argc, argv, ":f:ht:b:dpqr:", img_long_opts_no_share, NULL)) != -1) {
		if (img_common_opt(c, argv, &a->open.image_opts))
			continue;
		switch (c) {
		case 'f': a->open.fmt = optarg; break;
		case 't': a->cache = optarg; break;
		case 'b': a->base = optarg; a->drop = true; break;
		case 'd': a->drop = true; break;
		case 'p': a->progress = true; break;
		case 'q': a->quiet = true; break;
		case 'r':
			/* Accepted and checked as qemu does; the copy is not slowed down. */
			if (img_cvtnum_full("rate limit", optarg, 0, INT64_MAX) < 0)
				exit(1);
			break;
		}
	}
	if (a->quiet)
		a->progress = false;
	if (optind != argc - 1)
		img_error_exit("Expecting one image file name");
	a->open.filename = argv[optind];
}

struct commit {
	struct tblk_blk *top;		/* the image, its chain read through */
	struct tblk_blk *base;		/* the base, opened for writing */
	int depth;			/* of the base in top's chain */
	uint64_t size, gran, base_cluster;
	uint8_t *buf;
	uint64_t total, done;		/* bytes to copy, copied: the progress figure */
};

/* True if [off, off + bytes) holds something above the base; *n is the run's length. */
static int held_above(struct commit *cm, uint64_t off, uint64_t bytes, uint64_t *n)
{
	int depth = 0;
	int ret = tblk_blk_block_status_depth(cm->top, off, bytes, n, NULL, &depth);

	if (ret < 0)
		return ret;
	if (*n == 0)
		*n = bytes;
	return depth < cm->depth;
}

/* True if any byte of the granularity chunk at @off is held above the base. */
static int chunk_dirty(struct commit *cm, uint64_t off)
{
	uint64_t end = off + cm->gran < cm->size ? off + cm->gran : cm->size, n;

	for (uint64_t p = off; p < end; p += n) {
		int ret = held_above(cm, p, end - p, &n);

		if (ret != 0)
			return ret;
	}
	return 0;
}

/* Length of the run of dirty chunks from @off, at most @max bytes; negative: -errno. */
static int64_t dirty_run(struct commit *cm, uint64_t off, uint64_t max)
{
	uint64_t len = 0;

	while (off + len < cm->size && len < max) {
		int ret = chunk_dirty(cm, off + len);

		if (ret < 0)
			return ret;
		if (!ret)
			break;
		len += cm->gran;
	}
	return (int64_t)(off + len > cm->size ? cm->size - off : len);
}

/* Copies (or zeroes) the dirty run at @off of @len bytes; how many bytes it handled. */
static int64_t commit_step(struct commit *cm, uint64_t off, uint64_t len)
{
	uint64_t n = 0;
	int ret = tblk_blk_block_status_depth(cm->top, off, len, &n, NULL, NULL);
	bool zero = false;

	if (ret < 0)
		return ret;
	if (n == 0 || n > len)
		n = len;
	if (!(ret & TBLK_BS_DATA)) {
		uint64_t whole = n - n % cm->gran;

		/* Zeroes only over whole clusters of the base; the rest is copied. */
		if (whole >= cm->gran && off % cm->base_cluster == 0 &&
		    (whole % cm->base_cluster == 0 || off + whole >= cm->size)) {
			n = whole;
			zero = true;
		}
	}
	if (!zero) {
		n -= n % cm->gran;
		if (n < cm->gran)
			n = cm->gran;
		if (n > COMMIT_MAX_IO)
			n = COMMIT_MAX_IO;
		if (off + n > cm->size)
			n = cm->size - off;
		ret = tblk_blk_pread(cm->top, off, cm->buf, n, 0);
		if (ret >= 0)
			ret = tblk_blk_pwrite(cm->base, off, cm->buf, n, 0);
	} else {
		if (off + n > cm->size)
			n = cm->size - off;
		ret = tblk_blk_pwrite_zeroes(cm->base, off, n, TBLK_REQ_MAY_UNMAP);
	}
	return ret < 0 ? ret : (int64_t)n;
}

static int commit_copy(struct commit *cm)
{
	uint64_t off = 0;

	/* The figure -p shows is the share of dirty bytes done, as the job counts it. */
	for (uint64_t p = 0; p < cm->size; p += cm->gran) {
		int ret = chunk_dirty(cm, p);

		if (ret < 0)
			return ret;
		if (ret)
			cm->total += cm->gran;
	}
	while (off < cm->size) {
		int64_t run = dirty_run(cm, off, 16u << 20);

		if (run < 0)
			return (int)run;
		if (run == 0) {
			off += cm->gran;
			continue;
		}
		for (uint64_t end = off + (uint64_t)run; off < end;) {
			int64_t n = commit_step(cm, off, end - off);

			if (n < 0)
				return (int)n;
			off += (uint64_t)n;
			cm->done += (uint64_t)n;
			if (cm->total)
				img_progress_print((float)cm->done / (float)cm->total * 100.f, 0);
		}
	}
	return tblk_blk_flush(cm->base);
}

static int commit_open_base(struct commit *cm, unsigned int flags, GError **errp)
{
	uint32_t cluster;
	int64_t blen;
	int ret = img_open_layer(&cm->base, cm->top, cm->depth, flags, errp);

	if (ret < 0)
		return ret;
	cluster = tblk_blk_cluster_size(cm->base);
	cm->base_cluster = cluster ? cluster : 1;
	cm->gran = cluster < 4096 ? 4096 : cluster > 65536 ? 65536 : cluster;
	if (!cluster)
		cm->gran = 65536;
	blen = tblk_blk_getlength(cm->base);
	if (blen < 0) {
		g_set_error(errp, tblk_error_quark(), (int)-blen, "Could not get base size: %s",
			    strerror((int)-blen));
		return (int)blen;
	}
	if ((uint64_t)blen < cm->size) {
		ret = tblk_blk_truncate(cm->base, cm->size, NULL, errp);
		if (ret < 0)
			return ret;
	}
	return 0;
}

/*
 * The image locks of qemu's commit job, on the chain we hold open read-only: the base is
 * written (its read-write open below takes no locks of its own, which would conflict with
 * our chain's), and nobody else may read or resize the images between the image and the
 * base, whose data is about to be dropped. In qemu's order, from the base up.
 */
static int commit_lock_chain(struct commit *cm, GError **errp)
{
	int ret = tblk_blk_lock_perms(cm->top, cm->depth, TBLK_PERM_WRITE, 0, errp);

	for (int i = 1; ret == 0 && i < cm->depth; i++)
		ret = tblk_blk_lock_perms(cm->top, i, 0,
					  TBLK_PERM_CONSISTENT_READ | TBLK_PERM_RESIZE, errp);
	return ret;
}

/* The commit proper; 0 or -errno with *errp. */
static int commit_run(struct commit *cm, const struct commit_args *a, unsigned int flags,
		      GError **errp)
{
	int64_t size = tblk_blk_getlength(cm->top);
	int ret;

	if (a->base) {
		cm->depth = img_find_backing_image(cm->top, a->base);
		if (cm->depth < 0) {
			g_set_error(errp, tblk_error_quark(), ENOENT, "Did not find '%s' in the "
				    "backing chain of '%s'", a->base, a->open.filename);
			return -ENOENT;
		}
	} else if (tblk_blk_chain_length(cm->top) < 2) {
		g_set_error(errp, tblk_error_quark(), ENOENT, "Image does not have a backing file");
		return -ENOENT;
	} else {
		cm->depth = 1;
	}
	if (size < 0) {
		g_set_error(errp, tblk_error_quark(), (int)-size, "Could not get image size: %s",
			    strerror((int)-size));
		return (int)size;
	}
	cm->size = (uint64_t)size;
	ret = commit_lock_chain(cm, errp);
	if (ret < 0)
		return ret;
	ret = commit_open_base(cm, flags, errp);
	if (ret < 0)
		return ret;
	cm->buf = tool_buf_new(COMMIT_MAX_IO, 0);
	ret = commit_copy(cm);
	if (ret < 0) {
		g_set_error(errp, tblk_error_quark(), -ret, "%s", strerror(-ret));
		return ret;
	}
	img_progress_print(100.f, 0);
	if (!a->drop) {
		ret = tblk_blk_make_empty(cm->top);
		if (ret < 0 && ret != -ENOTSUP) {
			g_set_error(errp, tblk_error_quark(), -ret, "Failed to empty %s: %s",
				    a->open.filename, strerror(-ret));
			return ret;
		}
	}
	return 0;
}

int img_commit(int argc, char **argv)
{
	struct commit_args a = { .cache = "writeback" };
	struct commit cm = { 0 };
	GError *err = NULL;
	unsigned int flags = TBLK_OPEN_RDWR;
	int ret;

	commit_parse(argc, argv, &a);
	if (tblk_parse_cache_mode(a.cache, &flags, &err) < 0) {
		g_clear_error(&err);
		tool_error("Invalid cache option: %s", a.cache);
		return 1;
	}
	a.open.flags = flags;
	if (img_open(&cm.top, &a.open, NULL) < 0)
		return 1;
	img_progress_init(a.progress, 1.f);
	img_progress_print(0.f, 100);
	ret = commit_run(&cm, &a, flags, &err);
	img_progress_end();
	tool_buf_free(cm.buf);
	tblk_blk_close(cm.base);
	tblk_blk_close(cm.top);
	if (ret < 0) {
		tool_error_gerror(err, NULL);
		return 1;
	}
	if (!a.quiet)
		printf("Image committed.\n");
	return 0;
}
