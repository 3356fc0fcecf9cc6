/* SPDX-License-Identifier: MIT */
/*
 * img-dd.c - "tblk-img dd": qemu-img dd's operands (bs=, count=, skip=, if=, of=) and its
 * copy: the output image is created (format -O) with the size left after skipping, then
 * filled block by block with whatever the input reads, zeroes included.
 *
 * As qemu-img 7.2 does, count= limits the input to count blocks from its start, skipped
 * blocks included, and a skip past the end of the input is reported but still exits 0 with
 * an empty output image.
 *
 * Threading: single-threaded.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "tools/img-int.h"

struct dd_args {
	struct img_open_opts in;
	const char *out_fmt;
	const char *out;
	int64_t bs;
	int64_t count;			/* -1: not given */
	int64_t skip;			/* -1: not given */
};

/* One "key=value" operand; exits on a bad one as qemu-img does. */
static void dd_operand(struct dd_args *a, const char *arg)
{
	const char *eq = strchr(arg, '=');
	g_autofree char *key = eq ? g_strndup(arg, (size_t)(eq - arg)) : g_strdup(arg);
	const char *val = eq ? eq + 1 : NULL;
	int64_t *num = NULL;
	int64_t min = 0, max = INT64_MAX;

	if (!val) {
		tool_error("unrecognized operand %s", arg);
		exit(1);
	}
	if (!strcmp(key, "if")) {
		a->in.filename = val;
	} else if (!strcmp(key, "of")) {
		a->out = val;
	} else if (!strcmp(key, "bs")) {
		num = &a->bs, min = 1, max = INT32_MAX;
	} else if (!strcmp(key, "count")) {
		num = &a->count;
	} else if (!strcmp(key, "skip")) {
		num = &a->skip;
	} else {
		tool_error("unrecognized operand %s", key);
		exit(1);
	}
	if (num) {
		*num = img_cvtnum_full(key, val, min, max);
		if (*num < 0)
			exit(1);
	}
}

static void dd_parse(int argc, char **argv, struct dd_args *a)
{
	int c;

	while ((c = getopt_long(argc, argv, ":hf:O:U", img_long_opts, NULL)) != -1) {
		if (img_common_opt(c, argv, &a->in.image_opts))
			continue;
		switch (c) {
		case 'f': a->in.fmt = optarg; break;
		case 'O': a->out_fmt = optarg; break;
		case 'U': a->in.flags |= TBLK_OPEN_SHARE_RW; break;
		}
	}
	for (; optind < argc; optind++)
		dd_operand(a, argv[optind]);
	if (!a->in.filename || !a->out) {
		tool_error("Must specify both input and output files");
		exit(1);
	}
}

static int dd_copy(struct tblk_blk *in, struct tblk_blk *out, int64_t in_pos, int64_t end,
		   int64_t bs)
{
	uint8_t *buf = tool_buf_new((size_t)bs, 0);
	int64_t out_pos = 0;
	int ret = 0;

	if (!buf) {
		tool_error("Could not allocate memory");
		return -ENOMEM;
	}
	while (in_pos < end) {
		size_t bytes = (size_t)(end - in_pos < bs ? end - in_pos : bs);

		ret = tblk_blk_pread(in, (uint64_t)in_pos, buf, bytes, 0);
		if (ret < 0) {
			tool_error("error while reading from input image file: %s", strerror(-ret));
			break;
		}
		in_pos += (int64_t)bytes;
		ret = tblk_blk_pwrite(out, (uint64_t)out_pos, buf, bytes, 0);
		if (ret < 0) {
			tool_error("error while writing to output image file: %s", strerror(-ret));
			break;
		}
		out_pos += (int64_t)bytes;
	}
	tool_buf_free(buf);
	return ret;
}

/* Creates and opens the output; its size is what is left of the input after skip=. */
static int dd_create(struct dd_args *a, int64_t size, bool skip_past_end, struct tblk_blk **out)
{
	struct img_open_opts o = { .filename = a->out, .fmt = a->out_fmt,
				   .flags = TBLK_OPEN_RDWR };
	GHashTable *opts = tblk_opts_new();
	GError *err = NULL;
	int ret;

	ret = tblk_img_create(a->out, a->out_fmt,
			      skip_past_end ? 0 : (uint64_t)(size - a->skip * a->bs), opts, &err);
	g_hash_table_unref(opts);
	if (ret < 0) {
		tool_error_gerror(err, "%s: error while creating output image: ", a->out);
		return ret;
	}
	return img_open(out, &o, NULL);
}

static int dd_run(struct dd_args *a, struct tblk_blk *in)
{
	struct tblk_blk *out = NULL;
	int64_t size = tblk_blk_getlength(in), in_pos;
	bool skip_past_end;
	int ret;

	if (!img_fmt_known(a->out_fmt)) {
		tool_error("Unknown file format");
		return -EINVAL;
	}
	if (size < 0) {
		tool_error("Failed to get size for '%s'", a->in.filename);
		return (int)size;
	}
	if (a->count >= 0 && a->count <= INT64_MAX / a->bs && a->count * a->bs < size)
		size = a->count * a->bs;
	skip_past_end = a->skip >= 0 && (a->skip > INT64_MAX / a->bs || size < a->skip * a->bs);
	if (a->skip < 0)
		a->skip = 0;
	ret = dd_create(a, size, skip_past_end, &out);
	if (ret < 0)
		return ret;
	if (skip_past_end) {
		tool_error("%s: cannot skip to specified offset", a->in.filename);
		in_pos = size;
	} else {
		in_pos = a->skip * a->bs;
	}
	ret = dd_copy(in, out, in_pos, size, a->bs);
	tblk_blk_close(out);
	return ret;
}

int img_dd(int argc, char **argv)
{
	struct dd_args a = { .out_fmt = "raw", .bs = 512, .count = -1, .skip = -1 };
	struct tblk_blk *in;
	int ret;

	dd_parse(argc, argv, &a);
	if (img_open(&in, &a.in, NULL) < 0)
		return 1;
	ret = dd_run(&a, in);
	tblk_blk_close(in);
	return ret < 0 ? 1 : 0;
}
