/* SPDX-License-Identifier: MIT */
/*
 * img-resize.c - "tblk-img resize": qemu-img resize's command line (the size is the last
 * argument, taken before option parsing so that "-1G" is not an option), absolute and
 * relative sizes, --shrink required to make an image smaller, --preallocation for the new
 * area, and qemu-img's messages and exit codes.
 *
 * Threading: single-threaded.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <string.h>

#include "tools/img-int.h"

/* qemu's BDRV_MAX_LENGTH: INT64_MAX rounded down to 1 GiB. */
#define RESIZE_MAX_LENGTH	0x7fffffffc0000000ll

enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS, OPT_PREALLOC, OPT_SHRINK };

struct resize_args {
	struct img_open_opts open;
	const char *prealloc;		/* NULL: off */
	const char *size;
	bool quiet;
	bool shrink;
};

static void resize_parse(int argc, char **argv, struct resize_args *a)
{
	static const struct option long_opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "object", required_argument, NULL, OPT_OBJECT },
		{ "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
		{ "preallocation", required_argument, NULL, OPT_PREALLOC },
		{ "shrink", no_argument, NULL, OPT_SHRINK },
		{ NULL, 0, NULL, 0 },
	};
	static const char *const modes[] = { "off", "metadata", "falloc", "full", NULL };
	int c, i;

	if (argc < 3)
		img_error_exit("Not enough arguments");
	a->size = argv[--argc];
	while ((c = getopt_long(argc, argv, ":f:hq", long_opts, NULL)) != -1) {
		switch (c) {
		case '?': case ':': img_bad_option(c, argv);
		case 'h': img_help();
		case 'f': a->open.fmt = optarg; break;
		case 'q': a->quiet = true; break;
		case OPT_OBJECT: img_object_check(optarg); break;
		case OPT_IMAGE_OPTS: a->open.image_opts = true; break;
		case OPT_SHRINK: a->shrink = true; break;
		case OPT_PREALLOC:
			for (i = 0; modes[i] && strcmp(modes[i], optarg); i++)
				;
			if (!modes[i]) {
				tool_error("Invalid preallocation mode '%s'", optarg);
				exit(1);
			}
			a->prealloc = modes[i];
			break;
		}
	}
	if (optind != argc - 1)
		img_error_exit("Expecting image file name and size");
	a->open.filename = argv[optind];
}

/* The size argument as qemu parses a "size" option: 0 or -1 after the message. */
static int parse_size(const char *s, uint64_t *n)
{
	bool hex_suffix;
	int ret = tool_strtosz(s, n, &hex_suffix);

	if (hex_suffix)
		tool_warn("Using a multiplier suffix on hex numbers is deprecated: %s", s);
	if (ret == -ERANGE) {
		tool_error("Value '%s' is out of range for parameter 'size'", s);
		return -1;
	}
	if (ret < 0) {
		tool_error("Parameter 'size' expects a non-negative number below 2^64");
		fprintf(stderr, "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, "
			"tera-, peta-\nand exabytes, respectively.\n");
		return -1;
	}
	return 0;
}

static int do_resize(struct tblk_blk *blk, const struct resize_args *a, int relative,
		     uint64_t n)
{
	int64_t cur = tblk_blk_getlength(blk), total;
	GError *err = NULL;

	if (cur < 0) {
		tool_error("Failed to inquire current image length: %s", strerror((int)-cur));
		return 1;
	}
	/* qemu computes this in signed 64 bits: a huge step wraps negative. */
	total = relative ? (int64_t)((uint64_t)cur + n * (uint64_t)(int64_t)relative)
			 : (int64_t)n;
	if (total <= 0) {
		tool_error("New image size must be positive");
		return 1;
	}
	if (total <= cur && a->prealloc && strcmp(a->prealloc, "off")) {
		tool_error("Preallocation can only be used for growing images");
		return 1;
	}
	if (total < cur && !a->shrink) {
		tool_error("Use the --shrink option to perform a shrink operation.");
		tool_warn("Shrinking an image will delete all data beyond the shrunken image's "
			  "end. Before performing such an operation, make sure there is no "
			  "important data there.");
		return 1;
	}
	if (total > RESIZE_MAX_LENGTH) {
		tool_error("offset(%" PRId64 ") exceeds maximum(%lld)", total,
			   (long long)RESIZE_MAX_LENGTH);
		return 1;
	}
	if (tblk_blk_truncate(blk, (uint64_t)total, a->prealloc, &err) < 0) {
		tool_error_gerror(err, NULL);
		return 1;
	}
	if (!a->quiet)
		printf("Image resized.\n");
	return 0;
}

int img_resize(int argc, char **argv)
{
	struct resize_args a = { .open.flags = TBLK_OPEN_RDWR | TBLK_OPEN_RESIZE };
	struct tblk_blk *blk;
	const char *size;
	int relative = 0, ret;
	uint64_t n;

	resize_parse(argc, argv, &a);
	size = a.size;
	if (*size == '+' || *size == '-')
		relative = *size++ == '+' ? 1 : -1;
	if (parse_size(size, &n) < 0)
		return 1;
	if (img_open(&blk, &a.open, NULL) < 0)
		return 1;
	ret = do_resize(blk, &a, relative, n);
	tblk_blk_close(blk);
	return ret;
}
