/* SPDX-License-Identifier: MIT */
/*
 * img-check.c - "tblk-img check": qemu-img check's command line, its findings on stderr, its
 * human and JSON summaries and its exit codes (0 clean, 1 check not completed, 2 corruptions,
 * 3 leaks only, 63 no check for the format). With -r, the repair is followed by a second
 * check whose result decides the output, as qemu-img does.
 *
 * Threading: single-threaded.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <string.h>

#include "tools/img-int.h"

struct check_args {
	struct img_open_opts open;
	const char *output;
	const char *cache;		/* -T, checked after the arguments */
	bool quiet;
	int fix;
};

enum { OPT_OUTPUT = 256, OPT_OBJECT, OPT_IMAGE_OPTS };

static void check_parse(int argc, char **argv, struct check_args *a)
{
	static const struct option long_opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "format", required_argument, NULL, 'f' },
		{ "repair", required_argument, NULL, 'r' },
		{ "output", required_argument, NULL, OPT_OUTPUT },
		{ "object", required_argument, NULL, OPT_OBJECT },
		{ "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
		{ "force-share", no_argument, NULL, 'U' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, ":hf:r:T:qU", long_opts, NULL)) != -1) {
		switch (c) {
		case '?': case ':': img_bad_option(c, argv);
		case 'h': img_help();
		case 'f': a->open.fmt = optarg; break;
		case 'q': a->quiet = true; break;
		case 'U': a->open.flags |= TBLK_OPEN_SHARE_RW; break;
		case 'T': a->cache = optarg; break;
		case 'r':
			a->open.flags |= TBLK_OPEN_RDWR | TBLK_OPEN_CHECK;
			if (!strcmp(optarg, "leaks"))
				a->fix = TBLK_CHECK_FIX_LEAKS;
			else if (!strcmp(optarg, "all"))
				a->fix = TBLK_CHECK_FIX_LEAKS | TBLK_CHECK_FIX_ERRORS;
			else
				img_error_exit("Unknown option value for -r (expecting 'leaks' or "
					       "'all'): %s", optarg);
			break;
		case OPT_OUTPUT: a->output = optarg; break;
		case OPT_IMAGE_OPTS: a->open.image_opts = true; break;
		case OPT_OBJECT: img_object_check(optarg); break;
		}
	}
	if (optind != argc - 1)
		img_error_exit("Expecting one image file name");
	a->open.filename = argv[optind];
	if (strcmp(a->output, "human") && strcmp(a->output, "json")) {
		tool_error("--output must be used with human or json as argument.");
		exit(1);
	}
	if (a->cache && tblk_parse_cache_mode(a->cache, &a->open.flags, NULL) < 0) {
		tool_error("Invalid source cache option: %s", a->cache);
		exit(1);
	}
}

static double pct(uint64_t n, uint64_t d)
{
	return d ? 100.0 * (double)n / (double)d : 0.0;
}

static void print_human(const struct tblk_check_result *r)
{
	if (!r->corruptions && !r->leaks && !r->check_errors)
		printf("No errors were found on the image.\n");
	if (r->corruptions)
		printf("\n%d errors were found on the image.\nData may be corrupted, or further "
		       "writes to the image may corrupt it.\n", r->corruptions);
	if (r->leaks)
		printf("\n%d leaked clusters were found on the image.\nThis means waste of disk "
		       "space, but no harm to data.\n", r->leaks);
	if (r->check_errors)
		printf("\n%d internal errors have occurred during the check.\n", r->check_errors);
	if (r->total_clusters && r->allocated_clusters)
		printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% "
		       "compressed clusters\n", r->allocated_clusters, r->total_clusters,
		       pct(r->allocated_clusters, r->total_clusters),
		       pct(r->fragmented_clusters, r->allocated_clusters),
		       pct(r->compressed_clusters, r->allocated_clusters));
	if (r->image_end_offset)
		printf("Image end offset: %" PRIu64 "\n", r->image_end_offset);
}

/* A counter qemu reports only when it is not zero. */
static void json_count(GString *out, const char *key, uint64_t n)
{
	if (n)
		g_string_append_printf(out, "    \"%s\": %" PRIu64 ",\n", key, n);
}

static void print_json(const struct tblk_check_result *r, const char *file, const char *fmt)
{
	GString *out = g_string_new("{\n");

	json_count(out, "image-end-offset", r->image_end_offset);
	json_count(out, "compressed-clusters", r->compressed_clusters);
	json_count(out, "total-clusters", r->total_clusters);
	if (r->corruptions)
		g_string_append_printf(out, "    \"corruptions\": %d,\n", r->corruptions);
	if (r->corruptions_fixed)
		g_string_append_printf(out, "    \"corruptions-fixed\": %d,\n",
				       r->corruptions_fixed);
	g_string_append_printf(out, "    \"check-errors\": %d,\n", r->check_errors);
	if (r->leaks)
		g_string_append_printf(out, "    \"leaks\": %d,\n", r->leaks);
	if (r->leaks_fixed)
		g_string_append_printf(out, "    \"leaks-fixed\": %d,\n", r->leaks_fixed);
	json_count(out, "allocated-clusters", r->allocated_clusters);
	g_string_append(out, "    \"filename\": ");
	tool_json_string(out, file);
	g_string_append(out, ",\n    \"format\": ");
	tool_json_string(out, fmt);
	if (r->fragmented_clusters)
		g_string_append_printf(out, ",\n    \"fragmented-clusters\": %" PRIu64,
				       r->fragmented_clusters);
	g_string_append(out, "\n}");
	printf("%s\n", out->str);
	g_string_free(out, TRUE);
}

/*
 * The check's findings, one a line; a line starting with byte 1 is an error qemu-img reports
 * as its own (after the program name).
 */
static void print_messages(const char *m)
{
	while (*m) {
		const char *nl = strchr(m, '\n');
		int len = nl ? (int)(nl - m) : (int)strlen(m);

		if (*m == '\001')
			tool_error("%.*s", len - 1, m + 1);
		else
			fprintf(stderr, "%.*s\n", len, m);
		m += len + (nl ? 1 : 0);
	}
}

static int run_check(struct tblk_blk *blk, int fix, struct tblk_check_result *r)
{
	int ret;

	memset(r, 0, sizeof(*r));
	r->messages = g_string_new(NULL);
	ret = tblk_blk_check(blk, fix, r);
	print_messages(r->messages->str);
	g_string_free(r->messages, TRUE);
	r->messages = NULL;
	return ret;
}

int img_check(int argc, char **argv)
{
	struct check_args a = { .output = "human" };
	struct tblk_check_result r, again;
	bool json;
	struct tblk_blk *blk;
	int ret;

	check_parse(argc, argv, &a);
	json = !strcmp(a.output, "json");
	if (img_open(&blk, &a.open, NULL) < 0)
		return 1;
	ret = run_check(blk, a.fix, &r);
	if (ret == -ENOTSUP) {
		tool_error("This image format does not support checks");
		tblk_blk_close(blk);
		return 63;
	}
	if (r.leaks_fixed || r.corruptions_fixed) {
		if (!json && !a.quiet)
			printf("The following inconsistencies were found and repaired:\n\n"
			       "    %d leaked clusters\n    %d corruptions\n\n"
			       "Double checking the fixed image now...\n", r.leaks_fixed,
			       r.corruptions_fixed);
		ret = run_check(blk, 0, &again);
		again.leaks_fixed = r.leaks_fixed;
		again.corruptions_fixed = r.corruptions_fixed;
		r = again;
	}
	/* As qemu-img: the summary only for a check that completed, then its verdict. */
	if (ret >= 0 && !a.quiet) {
		if (json)
			print_json(&r, a.open.filename, tblk_blk_format_name(blk));
		else
			print_human(&r);
	}
	if (ret < 0 || r.check_errors) {
		if (ret < 0)
			tool_error("Check failed: %s", strerror(-ret));
		else
			tool_error("Check failed");
		tblk_blk_close(blk);
		return 1;
	}
	tblk_blk_close(blk);
	return r.corruptions ? 2 : r.leaks ? 3 : 0;
}
