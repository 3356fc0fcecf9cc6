/* SPDX-License-Identifier: MIT */
/*
 * img-bitmap.c - "tblk-img bitmap": qemu-img bitmap's command line
 *   bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)...
 *          [-b source_file [-F source_fmt]] [-g granularity] [--object ...]
 *          [--image-opts | -f fmt] filename bitmap
 * with its checks, messages and exit codes. The actions run in the order given; the first
 * that fails stops the rest (what the earlier ones did is kept and stored, as in qemu).
 *
 * Threading: single-threaded.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "tools/img-int.h"

enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS, OPT_ADD, OPT_REMOVE, OPT_CLEAR, OPT_ENABLE,
       OPT_DISABLE, OPT_MERGE };

struct bitmap_args {
	GArray *actions;		/* struct tblk_bitmap_request, name and src unset */
	struct img_open_opts open;
	const char *src_file;
	const char *src_fmt;
	int64_t granularity;
	bool add, merge;
};

static const char *const action_names[] = {
	[TBLK_BITMAP_ADD] = "add",
	[TBLK_BITMAP_REMOVE] = "remove",
	[TBLK_BITMAP_CLEAR] = "clear",
	[TBLK_BITMAP_ENABLE] = "enable",
	[TBLK_BITMAP_DISABLE] = "disable",
	[TBLK_BITMAP_MERGE] = "merge",
};

static void add_action(struct bitmap_args *a, enum tblk_bitmap_action act, const char *src)
{
	struct tblk_bitmap_request rq = { .action = act, .src_name = src };

	g_array_append_val(a->actions, rq);
}

/* Parses the command line; 0, or 1 (the exit status) after printing why not. */
static int bitmap_parse(int argc, char **argv, struct bitmap_args *a)
{
	static const struct option long_opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "object", required_argument, NULL, OPT_OBJECT },
		{ "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
		{ "add", no_argument, NULL, OPT_ADD },
		{ "remove", no_argument, NULL, OPT_REMOVE },
		{ "clear", no_argument, NULL, OPT_CLEAR },
		{ "enable", no_argument, NULL, OPT_ENABLE },
		{ "disable", no_argument, NULL, OPT_DISABLE },
		{ "merge", required_argument, NULL, OPT_MERGE },
		{ "granularity", required_argument, NULL, 'g' },
		{ "source-file", required_argument, NULL, 'b' },
		{ "source-format", required_argument, NULL, 'F' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, ":b:f:F:g:h", long_opts, NULL)) != -1) {
		switch (c) {
		case '?': case ':': img_bad_option(c, argv);
		case 'h': img_help();
		case 'b': a->src_file = optarg; break;
		case 'f': a->open.fmt = optarg; break;
		case 'F': a->src_fmt = optarg; break;
		case 'g':
			a->granularity = img_cvtnum_full("granularity", optarg, 0, INT64_MAX);
			if (a->granularity < 0)
				return 1;
			break;
		case OPT_ADD: add_action(a, TBLK_BITMAP_ADD, NULL); a->add = true; break;
		case OPT_REMOVE: add_action(a, TBLK_BITMAP_REMOVE, NULL); break;
		case OPT_CLEAR: add_action(a, TBLK_BITMAP_CLEAR, NULL); break;
		case OPT_ENABLE: add_action(a, TBLK_BITMAP_ENABLE, NULL); break;
		case OPT_DISABLE: add_action(a, TBLK_BITMAP_DISABLE, NULL); break;
		case OPT_MERGE: add_action(a, TBLK_BITMAP_MERGE, optarg); a->merge = true; break;
		case OPT_OBJECT: img_object_check(optarg); break;
		case OPT_IMAGE_OPTS: a->open.image_opts = true; break;
		}
	}
	if (!a->actions->len) {
		tool_error("Need at least one of --add, --remove, --clear, --enable, --disable, "
			   "or --merge");
		return 1;
	}
	if (a->granularity && !a->add) {
		tool_error("granularity only supported with --add");
		return 1;
	}
	if (a->src_fmt && !a->src_file) {
		tool_error("-F only supported with -b");
		return 1;
	}
	if (a->src_file && !a->merge) {
		tool_error("Merge bitmap source file only supported with --merge");
		return 1;
	}
	if (optind != argc - 2) {
		tool_error("Expecting filename and bitmap name");
		return 1;
	}
	a->open.filename = argv[optind];
	return 0;
}

static int run_actions(struct bitmap_args *a, struct tblk_blk *blk, struct tblk_blk *src,
		       const char *name)
{
	for (unsigned int i = 0; i < a->actions->len; i++) {
		struct tblk_bitmap_request rq = g_array_index(a->actions,
							      struct tblk_bitmap_request, i);
		GError *err = NULL;

		rq.name = name;
		rq.granularity = (uint64_t)a->granularity;
		rq.src = src;
		if (tblk_blk_bitmap_apply(blk, &rq, &err) < 0) {
			tool_error("Operation %s on bitmap %s failed: %s", action_names[rq.action],
				   name, err->message);
			g_error_free(err);
			return 1;
		}
	}
	return 0;
}

int img_bitmap(int argc, char **argv)
{
	struct bitmap_args a = { .actions = g_array_new(FALSE, TRUE,
							sizeof(struct tblk_bitmap_request)) };
	struct tblk_blk *blk = NULL, *src = NULL;
	int ret;

	ret = bitmap_parse(argc, argv, &a);
	if (ret)
		goto out;
	/* The bitmaps are the image's own: no backing chain needed. */
	a.open.flags = TBLK_OPEN_RDWR | TBLK_OPEN_NO_BACKING;
	ret = 1;
	if (img_open(&blk, &a.open, NULL) < 0)
		goto out;
	/* read-only=on in --image-opts wins over the writable open qemu-img asks for. */
	if (tblk_blk_is_read_only(blk)) {
		tool_error("Could not open '%s': Block node is read-only", a.open.filename);
		goto out_close;
	}
	if (a.src_file) {
		struct img_open_opts so = { .filename = a.src_file, .fmt = a.src_fmt,
					    .flags = TBLK_OPEN_NO_BACKING };

		if (img_open(&src, &so, NULL) < 0)
			goto out_close;
	}
	ret = run_actions(&a, blk, src, argv[argc - 1]);
out_close:
	if (src)
		tblk_blk_close(src);
	tblk_blk_close(blk);
out:
	g_array_free(a.actions, TRUE);
	return ret;
}
