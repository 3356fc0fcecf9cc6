/* SPDX-License-Identifier: MIT */
/*
 * img-amend.c - "tblk-img amend": qemu-img amend's command line, the amendable options of
 * qcow2 with qemu's type checks and messages (creation-only options named as such), -o help,
 * -p progress, and the exit codes.
 *
 * Threading: single-threaded.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "tools/img-int.h"

enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS, OPT_FORCE };
enum amend_type { AT_STR, AT_BOOL, AT_NUM, AT_SIZE };

static const struct {
	const char *name;
	enum amend_type type;
	const char *help;
} qcow2_amend_opts[] = {
	{ "backing_file", AT_STR, "<str>     - File name of a base image" },
	{ "backing_fmt", AT_STR, "<str>      - Image format of the base image" },
	{ "compat", AT_STR, "<str>           - Compatibility level (v2 [0.10] or v3 [1.1])" },
	{ "data_file", AT_STR, "<str>        - File name of an external data file" },
	{ "data_file_raw", AT_BOOL, "<bool (on/off)> - The external data file must stay valid "
	  "as a raw image" },
	{ "encrypt.iter-time", AT_NUM, "<num> - Time to spend in PBKDF in milliseconds" },
	{ "encrypt.keyslot", AT_NUM, "<num>  - Select a single keyslot to modify explicitly" },
	{ "encrypt.new-secret", AT_STR, "<str> - New secret to set in the matching keyslots. "
	  "Empty string to erase" },
	{ "encrypt.old-secret", AT_STR, "<str> - Select all keyslots that match this password" },
	{ "encrypt.state", AT_STR, "<str>    - Select new state of affected keyslots "
	  "(active/inactive)" },
	{ "lazy_refcounts", AT_BOOL, "<bool (on/off)> - Postpone refcount updates" },
	{ "refcount_bits", AT_NUM, "<num>    - Width of a reference count entry in bits" },
	{ "size", AT_SIZE, "<size>            - Virtual disk size" },
};
#define NR_AMEND_OPTS (sizeof(qcow2_amend_opts) / sizeof(qcow2_amend_opts[0]))

struct amend_args {
	struct img_open_opts open;
	GString *options;
	const char *cache;
	bool progress, quiet, force, has_options;
};

static void amend_parse(int argc, char **argv, struct amend_args *a)
{
	static const struct option long_opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "object", required_argument, NULL, OPT_OBJECT },
		{ "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
		{ "force", no_argument, NULL, OPT_FORCE },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, ":ho:f:t:pq", long_opts, NULL)) != -1) {
		switch (c) {
		case '?': case ':': img_bad_option(c, argv);
		case 'h': img_help();
		case 'o':
			if (!img_opt_list_valid(optarg)) {
				tool_error("Invalid option list: %s", optarg);
				exit(1);
			}
			if (a->options->len)
				g_string_append_c(a->options, ',');
			g_string_append(a->options, optarg);
			a->has_options = true;
			break;
		case 'f': a->open.fmt = optarg; break;
		case 't': a->cache = optarg; break;
		case 'p': a->progress = true; break;
		case 'q': a->quiet = true; break;
		case OPT_OBJECT: img_object_check(optarg); break;
		case OPT_IMAGE_OPTS: a->open.image_opts = true; break;
		case OPT_FORCE: a->force = true; break;
		}
	}
	if (!a->has_options)
		img_error_exit("Must specify options (-o)");
}

static int print_help(const char *fmt)
{
	if (strcmp(fmt, "qcow2")) {
		tool_error("Format driver '%s' does not support option amendment", fmt);
		return 1;
	}
	printf("Amend options for 'qcow2':\n");
	for (size_t i = 0; i < NR_AMEND_OPTS; i++)
		printf("  %s=%s\n", qcow2_amend_opts[i].name, qcow2_amend_opts[i].help);
	return 0;
}

static int check_value(enum amend_type t, const char *key, const char *val)
{
	uint64_t v;
	bool hex;
	char *end;

	switch (t) {
	case AT_BOOL:
		if (strcmp(val, "on") && strcmp(val, "off")) {
			tool_error("Parameter '%s' expects 'on' or 'off'", key);
			return -1;
		}
		return 0;
	case AT_NUM:
		errno = 0;
		(void)strtoull(val, &end, 0);
		if (end == val || *end || errno) {
			tool_error("Parameter '%s' expects a number", key);
			return -1;
		}
		return 0;
	case AT_SIZE:
		if (tool_strtosz(val, &v, &hex) < 0) {
			tool_error("Parameter '%s' expects a non-negative number below 2^64\n"
				   "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, "
				   "tera-, peta-\nand exabytes, respectively.", key);
			return -1;
		}
		return 0;
	default:
		return 0;
	}
}

/* Splits the -o list into @opts with qemu's checks and messages; -1 after the message. */
static int parse_list(const char *fmt, const char *list, GHashTable *opts)
{
	g_auto(GStrv) parts = img_opt_list_split(list);

	for (char **p = parts; *p; p++) {
		char *eq = strchr(*p, '='), *key = *p;
		const char *val = eq ? eq + 1 : "on";
		size_t i;

		if (eq)
			*eq = '\0';
		else if (!strncmp(key, "no", 2))	/* qemu's short form of key=off */
			key += 2, val = "off";
		for (i = 0; i < NR_AMEND_OPTS && strcmp(qcow2_amend_opts[i].name, key); i++)
			;
		if (i == NR_AMEND_OPTS) {
			tool_error("Invalid parameter '%s'", key);
			/* qemu's hint, when the whole list would do for creating an image */
			if (img_create_opts_valid(fmt, list))
				fprintf(stderr, "This option is only supported for image "
					"creation\n");
			return -1;
		}
		if (check_value(qcow2_amend_opts[i].type, key, val) < 0)
			return -1;
		g_hash_table_insert(opts, g_strdup(key), g_strdup(val));
	}
	return 0;
}

/* The format's steps: qemu-img's figure is 100.f * offset / total, in single precision. */
static void amend_progress(double fraction, void *opaque)
{
	(void)opaque;
	img_progress_print((float)(fraction * 100.0), 0);
}

static int amend_run(struct tblk_blk *blk, struct amend_args *a)
{
	const char *fmt = tblk_blk_format_name(blk);
	g_autoptr(GHashTable) opts = tblk_opts_new();
	GError *err = NULL;

	if (img_opt_list_has_help(a->options->str))
		return print_help(fmt);
	if (strcmp(fmt, "qcow2")) {
		tool_error("Format driver '%s' does not support option amendment", fmt);
		return 1;
	}
	if (parse_list(fmt, a->options->str, opts) < 0)
		return 1;
	/* 0 and 100% whatever the format reports in between, as qemu-img prints them */
	img_progress_print(0.f, 0);
	if (tblk_blk_amend(blk, opts, a->force, amend_progress, NULL, &err) < 0) {
		img_progress_print(100.f, 0);
		tool_error_gerror(err, NULL);
		return 1;
	}
	img_progress_print(100.f, 0);
	return 0;
}

int img_amend(int argc, char **argv)
{
	struct amend_args a = { .open.flags = TBLK_OPEN_RDWR, .cache = "writeback" };
	struct tblk_blk *blk;
	int ret;

	a.options = g_string_new(NULL);
	amend_parse(argc, argv, &a);
	img_progress_init(a.progress && !a.quiet, 1.0f);
	if (a.open.fmt && img_opt_list_has_help(a.options->str)) {
		ret = print_help(a.open.fmt);
		goto out;
	}
	if (optind != argc - 1) {
		tool_error("Expecting one image file name");
		ret = 1;
		goto out;
	}
	a.open.filename = argv[optind];
	if (strcmp(a.cache, "none") && strcmp(a.cache, "off") && strcmp(a.cache, "writeback") &&
	    strcmp(a.cache, "writethrough") && strcmp(a.cache, "directsync") &&
	    strcmp(a.cache, "unsafe")) {
		tool_error("Invalid cache option: %s", a.cache);
		ret = 1;
		goto out;
	}
	ret = 1;
	if (img_open(&blk, &a.open, NULL) == 0) {
		ret = amend_run(blk, &a);
		tblk_blk_close(blk);
	}
out:
	img_progress_end();
	g_string_free(a.options, TRUE);
	return ret;
}
