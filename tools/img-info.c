/* SPDX-License-Identifier: MIT */
/*
 * img-info.c - "tblk-img info": qemu-img info's command line and its human and JSON
 * output for images without format-specific data (raw, or a bare protocol). The JSON keys
 * come out in the order QEMU's hash table gives them for this set of keys.
 *
 * Threading: single-threaded.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <string.h>

#include "tools/img-int.h"

struct info_args {
	struct img_open_opts open;
	const char *output;
	bool backing_chain;
};

struct image_info {
	const char *filename;
	const char *format;
	int64_t virtual_size;
	int64_t actual_size;		/* < 0: unknown, left out */
};

static void print_human(const struct image_info *ii)
{
	char vsz[64], dsz[64];

	tool_fmt_size_img(vsz, sizeof(vsz), (uint64_t)ii->virtual_size);
	printf("image: %s\nfile format: %s\nvirtual size: %s (%" PRId64 " bytes)\n",
	       ii->filename, ii->format, vsz, ii->virtual_size);
	if (ii->actual_size >= 0)
		tool_fmt_size_img(dsz, sizeof(dsz), (uint64_t)ii->actual_size);
	printf("disk size: %s\n", ii->actual_size >= 0 ? dsz : "unavailable");
}

/* One ImageInfo object, its members indented by @indent spaces. */
static void print_json_object(GString *out, const struct image_info *ii, int indent)
{
	g_string_append_printf(out, "{\n%*s\"virtual-size\": %" PRId64 ",\n%*s\"filename\": ",
			       indent, "", ii->virtual_size, indent, "");
	tool_json_string(out, ii->filename);
	g_string_append_printf(out, ",\n%*s\"format\": ", indent, "");
	tool_json_string(out, ii->format);
	if (ii->actual_size >= 0)
		g_string_append_printf(out, ",\n%*s\"actual-size\": %" PRId64, indent, "",
				       ii->actual_size);
	g_string_append_printf(out, ",\n%*s\"dirty-flag\": false\n%*s}", indent, "",
			       indent - 4, "");
}

static void print_json(const struct image_info *ii, bool chain)
{
	GString *out = g_string_new(NULL);

	if (chain) {
		g_string_append(out, "[\n    ");
		print_json_object(out, ii, 8);
		g_string_append(out, "\n]");
	} else {
		print_json_object(out, ii, 4);
	}
	printf("%s\n", out->str);
	g_string_free(out, TRUE);
}

enum { OPT_OUTPUT = 256, OPT_BACKING_CHAIN, OPT_OBJECT, OPT_IMAGE_OPTS };

static void info_parse(int argc, char **argv, struct info_args *a)
{
	static const struct option long_opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "format", required_argument, NULL, 'f' },
		{ "output", required_argument, NULL, OPT_OUTPUT },
		{ "backing-chain", no_argument, NULL, OPT_BACKING_CHAIN },
		{ "object", required_argument, NULL, OPT_OBJECT },
		{ "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
		{ "force-share", no_argument, NULL, 'U' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, ":f:hU", long_opts, NULL)) != -1) {
		switch (c) {
		case '?': case ':': img_bad_option(c, argv);
		case 'h': img_help();
		case 'f': a->open.fmt = optarg; break;
		case 'U': a->open.flags |= TBLK_OPEN_SHARE_RW; break;
		case OPT_OUTPUT: a->output = optarg; break;
		case OPT_BACKING_CHAIN: a->backing_chain = true; break;
		case OPT_IMAGE_OPTS: a->open.image_opts = true; break;
		case OPT_OBJECT: break;
		}
	}
	if (optind != argc - 1)
		img_error_exit("Expecting one image file name");
	a->open.filename = argv[optind];
	if (strcmp(a->output, "human") && strcmp(a->output, "json")) {
		tool_error("--output must be used with human or json as argument.");
		exit(1);
	}
}

int img_info(int argc, char **argv)
{
	struct info_args a = { .output = "human" };
	struct image_info ii;
	struct tblk_blk *blk;

	info_parse(argc, argv, &a);
	if (img_open(&blk, &a.open, NULL) < 0)
		return 1;
	ii.filename = tblk_blk_filename(blk);
	ii.format = tblk_blk_format_name(blk);
	ii.virtual_size = tblk_blk_getlength(blk);
	ii.actual_size = tblk_blk_get_allocated_size(blk);
	if (ii.virtual_size < 0) {
		tool_error("Could not get the size of '%s': %s", a.open.filename,
			   strerror((int)-ii.virtual_size));
		tblk_blk_close(blk);
		return 1;
	}
	if (!strcmp(a.output, "json"))
		print_json(&ii, a.backing_chain);
	else
		print_human(&ii);
	tblk_blk_close(blk);
	return 0;
}
