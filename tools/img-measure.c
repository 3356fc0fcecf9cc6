/* SPDX-License-Identifier: MIT */
/*
 * img-measure.c - "tblk-img measure": qemu-img measure's command line (--size N or one source
 * image, -O target format with -o creation options, -l snapshot), the sizes in human form or
 * JSON with qemu's key order, and its messages and exit codes.
 *
 * Threading: single-threaded.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <string.h>

#include "tools/img-int.h"

enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS, OPT_OUTPUT, OPT_SIZE };

struct measure_args {
	struct img_open_opts open;
	const char *out_fmt;
	const char *snapshot;
	GString *options;		/* -o lists joined by ',' */
	bool json;
	uint64_t size;			/* UINT64_MAX: not given */
};

static void measure_parse(int argc, char **argv, struct measure_args *a)
{
	static const struct option long_opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
		{ "object", required_argument, NULL, OPT_OBJECT },
		{ "output", required_argument, NULL, OPT_OUTPUT },
		{ "size", required_argument, NULL, OPT_SIZE },
		{ "force-share", no_argument, NULL, 'U' },
		{ NULL, 0, NULL, 0 },
	};
	int64_t v;
	int c;

	/* qemu-img measure lets getopt report a bad option, then prints the help (exit 0). */
	while ((c = getopt_long(argc, argv, "hf:O:o:l:U", long_opts, NULL)) != -1) {
		switch (c) {
		case '?': case 'h': img_help();
		case 'f': a->open.fmt = optarg; break;
		case 'O': a->out_fmt = optarg; break;
		case 'l':
			img_snapshot_arg_check(optarg);
			a->snapshot = optarg;
			break;
		case 'U': a->open.flags |= TBLK_OPEN_SHARE_RW; break;
		case 'o':
			if (a->options->len)
				g_string_append_c(a->options, ',');
			g_string_append(a->options, optarg);
			break;
		case OPT_OBJECT: img_object_check(optarg); break;
		case OPT_IMAGE_OPTS: a->open.image_opts = true; break;
		case OPT_OUTPUT:
			if (strcmp(optarg, "human") && strcmp(optarg, "json")) {
				tool_error("--output must be used with human or json as argument.");
				exit(1);
			}
			a->json = !strcmp(optarg, "json");
			break;
		case OPT_SIZE:
			v = img_cvtnum_full("image size", optarg, 0, INT64_MAX);
			if (v < 0)
				exit(1);
			a->size = (uint64_t)v;
			break;
		}
	}
}

/* Checks the arguments left after the options: 0, or 1 after qemu-img's message. */
static int measure_check_args(int argc, char **argv, struct measure_args *a)
{
	if (argc - optind > 1) {
		tool_error("At most one filename argument is allowed.");
		return 1;
	}
	if (argc - optind == 1)
		a->open.filename = argv[optind];
	if (!a->open.filename && (a->open.image_opts || a->open.fmt || a->snapshot)) {
		tool_error("--image-opts, -f, and -l require a filename argument.");
		return 1;
	}
	if (a->open.filename && a->size != UINT64_MAX) {
		tool_error("--size N cannot be used together with a filename.");
		return 1;
	}
	if (!a->open.filename && a->size == UINT64_MAX) {
		tool_error("Either --size N or one filename must be specified.");
		return 1;
	}
	return 0;
}

static void print_measure(const struct tblk_measure *m, bool json)
{
	if (!json) {
		printf("required size: %" PRIu64 "\nfully allocated size: %" PRIu64 "\n",
		       m->required, m->fully_allocated);
		if (m->has_bitmaps)
			printf("bitmaps size: %" PRIu64 "\n", m->bitmaps);
		return;
	}
	/* qemu's dictionary order. */
	printf("{\n");
	if (m->has_bitmaps)
		printf("    \"bitmaps\": %" PRIu64 ",\n", m->bitmaps);
	printf("    \"required\": %" PRIu64 ",\n    \"fully-allocated\": %" PRIu64 "\n}\n",
	       m->required, m->fully_allocated);
}

/* qemu 7.2's drivers (Debian) that tblk cannot create: some create images, none measure. */
static const char *const qemu_create_only[] = {
	"gluster", "host_cdrom", "iscsi", "iser", "nbd", "nfs", "nvme", "parallels", "qcow",
	"qed", "rbd", "ssh", "vdi", "vhdx", "vmdk", "vpc", NULL,
};
static const char *const qemu_no_create[] = {
	"blkdebug", "blklogwrites", "blkverify", "bochs", "cloop", "compress",
	"copy-before-write", "copy-on-read", "dmg", "ftp", "ftps", "http", "https", "null-aio",
	"null-co", "preallocate", "quorum", "replication", "snapshot-access", "throttle", "vvfat",
	NULL,
};

static bool in_list(const char *const *list, const char *s)
{
	for (; *list; list++)
		if (!strcmp(*list, s))
			return true;
	return false;
}

/* qemu's message for an -O format tblk does not measure; false if there is none. */
static bool measure_unsupported(const struct measure_args *a)
{
	if (in_list(qemu_no_create, a->out_fmt)) {
		tool_error("Format driver '%s' does not support image creation", a->out_fmt);
		return true;
	}
	/* (their -o options are not checked: tblk does not know them) */
	if (in_list(qemu_create_only, a->out_fmt)) {
		tool_error("Block driver '%s' does not support size measurement", a->out_fmt);
		return true;
	}
	/* luks measures once it has a key; without one qemu stops here */
	if (!strcmp(a->out_fmt, "luks") && !strstr(a->options->str, "key-secret=")) {
		tool_error("Parameter 'key-secret' is required for cipher");
		return true;
	}
	return false;
}

static int measure_run(struct measure_args *a, struct tblk_blk *src)
{
	g_autoptr(GHashTable) opts = tblk_opts_new();
	struct tblk_measure m;
	GError *err = NULL;

	if (measure_unsupported(a))
		return 1;
	if (!img_fmt_known(a->out_fmt)) {
		tool_error("Unknown file format '%s'", a->out_fmt);
		return 1;
	}
	if (a->options->len && img_create_opts_parse(a->out_fmt, a->options->str, opts) < 0) {
		tool_error("Invalid options for file format '%s'", a->out_fmt);
		return 1;
	}
	if (tblk_img_measure(a->out_fmt, opts, a->size == UINT64_MAX ? 0 : a->size, src, &m,
			     &err) < 0) {
		tool_error_gerror(err, NULL);
		return 1;
	}
	print_measure(&m, a->json);
	return 0;
}

int img_measure(int argc, char **argv)
{
	struct measure_args a = { .out_fmt = "raw", .size = UINT64_MAX };
	struct tblk_blk *src = NULL;
	int ret;

	a.options = g_string_new(NULL);
	measure_parse(argc, argv, &a);
	ret = measure_check_args(argc, argv, &a);
	if (ret == 0 && a.open.filename && img_open(&src, &a.open, NULL) < 0)
		ret = 1;
	if (ret == 0 && src && a.snapshot && img_snapshot_load(src, a.snapshot) < 0)
		ret = 1;
	if (ret == 0)
		ret = measure_run(&a, src);
	if (src)
		tblk_blk_close(src);
	g_string_free(a.options, TRUE);
	return ret;
}
