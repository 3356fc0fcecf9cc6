/* SPDX-License-Identifier: MIT */
/*
 * tool-util.c - program name, error printing, timing and I/O buffers for the tools, and the
 * human "Format specific information" block both tools print.
 *
 * Errors go unbuffered to stderr with the invoked program's name as prefix, so a tool
 * installed under qemu's name prints exactly qemu's prefix.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <tblk/tblk.h>

#include "tools/tool-util.h"

const char *tool_progname = "tblk";

/* The library's warnings, worded as qemu's: "PROG: warning: TEXT" (TEXT ends as given). */
static void print_warning(const char *msg, void *opaque)
{
	if (!strncmp(msg, "error: ", 7))
		fprintf(stderr, "%s: %s", tool_progname, msg + 7);
	else if (!strncmp(msg, "verbatim: ", 10))
		fputs(msg + 10, stderr);
	else
		fprintf(stderr, "%s: warning: %s", tool_progname, msg);
}

void tool_set_progname(const char *argv0)
{
	const char *slash = argv0 ? strrchr(argv0, '/') : NULL;

	if (argv0 && *argv0)
		tool_progname = slash ? slash + 1 : argv0;
	tblk_set_warning_handler(print_warning, NULL);
}

static void vreport(const char *kind, const char *fmt, va_list ap)
{
	fprintf(stderr, "%s: %s", tool_progname, kind);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

void tool_error(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreport("", fmt, ap);
	va_end(ap);
}

void tool_warn(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreport("warning: ", fmt, ap);
	va_end(ap);
}

int tool_opts_parse(GHashTable *opts, const char *str, GError **errp)
{
	return tool_opts_parse_implied(opts, str, NULL, errp);
}

int tool_opts_parse_implied(GHashTable *opts, const char *str, const char *implied_key,
			    GError **errp)
{
	g_autoptr(GPtrArray) shorts = g_ptr_array_new_with_free_func(g_free);
	int ret = tblk_opts_parse_qemu(opts, str, implied_key, shorts, errp);

	for (guint i = 0; i < shorts->len; i++) {
		const char *elem = shorts->pdata[i];
		bool no = g_str_has_prefix(elem, "no");

		tool_warn("short-form boolean option '%s' deprecated", elem);
		/* qemu's one special case: "delay" is a socket option spelt "nodelay". */
		if (!strcmp(elem + (no ? 2 : 0), "delay"))
			fprintf(stderr, "Please use nodelay=%s instead\n", no ? "on" : "off");
		else
			fprintf(stderr, "Please use %s=%s instead\n", elem + (no ? 2 : 0),
				no ? "off" : "on");
	}
	return ret;
}

void tool_error_gerror(GError *err, const char *prefix_fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", tool_progname);
	if (prefix_fmt) {
		va_start(ap, prefix_fmt);
		vfprintf(stderr, prefix_fmt, ap);
		va_end(ap);
	}
	fprintf(stderr, "%s\n", err ? err->message : "Unknown error");
	if (err)
		g_error_free(err);
}

uint64_t tool_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void *tool_buf_new(size_t len, int pattern)
{
	void *buf;

	/* 4 KiB alignment serves O_DIRECT on any logical block size we meet. */
	if (posix_memalign(&buf, 4096, len ? len : 1) != 0)
		return NULL;
	memset(buf, pattern, len);
	return buf;
}

void tool_buf_free(void *buf)
{
	free(buf);
}

bool tool_json_names_driver(const char *filename)
{
	g_autoptr(GHashTable) opts = NULL;

	if (!filename || strncmp(filename, "json:", 5))
		return false;
	opts = tblk_opts_new();
	return tblk_opts_parse(opts, filename, NULL, NULL) == 0 &&
	       g_hash_table_contains(opts, "driver");
}

bool tool_opts_force_share_ok(GHashTable *opts)
{
	const char *v = g_hash_table_lookup(opts, "force-share");

	return !v || !strcmp(v, "on");
}

static void warn_empty_backing(GHashTable *opts)
{
	const char *drv = g_hash_table_lookup(opts, "driver");
	GHashTableIter it;
	gpointer k, v;

	/* qemu looks the driver up first */
	if (drv && !tblk_driver_known(drv))
		return;
	g_hash_table_iter_init(&it, opts);
	while (g_hash_table_iter_next(&it, &k, &v))
		if ((!strcmp(k, "backing") || g_str_has_suffix(k, ".backing")) && v && !*(char *)v)
			tool_warn("Use of \"backing\": \"\" is deprecated; use \"backing\": null "
				  "instead");
}

void tool_warn_empty_backing(GHashTable *opts, const char *filename)
{
	g_autoptr(GHashTable) jopts = NULL;

	if (opts)
		warn_empty_backing(opts);
	if (!filename || strncmp(filename, "json:", 5))
		return;
	jopts = tblk_opts_new();
	if (tblk_opts_parse(jopts, filename, NULL, NULL) == 0)
		warn_empty_backing(jopts);
}

void tool_warn_probed_raw(struct tblk_blk *blk, const char *name)
{
	const char *canonical = tblk_blk_filename(blk);

	/* qemu names the node: a URL (nbd://...) comes out in its canonical form. */
	if (canonical && strstr(canonical, "://"))
		name = canonical;
	if (tblk_blk_is_read_only(blk) || strcmp(tblk_blk_format_name(blk), "raw"))
		return;
	fprintf(stderr, "WARNING: Image format was not specified for '%s' and probing guessed "
		"raw.\n         Automatically detecting the format is dangerous for raw images, "
		"write operations on block 0 will be restricted.\n         Specify the 'raw' "
		"format explicitly to remove the restrictions.\n", name);
}

void tool_print_format_specific(const struct tblk_format_info *fi)
{
	bool v3;

	if (!fi->is_qcow2)
		return;
	v3 = strcmp(fi->compat, "0.10") != 0;
	printf("Format specific information:\n    compat: %s\n    compression type: %s\n",
	       fi->compat, fi->compression_type);
	if (v3)
		printf("    lazy refcounts: %s\n", fi->lazy_refcounts ? "true" : "false");
	if (fi->nb_bitmaps)
		printf("    bitmaps:\n");
	for (unsigned int i = 0; i < fi->nb_bitmaps; i++) {
		const struct tblk_bitmap_info *b = &fi->bitmaps[i];
		unsigned int k = 0;

		printf("        [%u]:\n            flags:\n", i);
		if (b->in_use)
			printf("                [%u]: in-use\n", k++);
		if (b->is_auto)
			printf("                [%u]: auto\n", k++);
		printf("            name: %s\n            granularity: %" PRIu64 "\n", b->name,
		       b->granularity);
	}
	printf("    refcount bits: %u\n", fi->refcount_bits);
	if (fi->data_file)
		printf("    data file: %s\n    data file raw: %s\n", fi->data_file,
		       fi->data_file_raw ? "true" : "false");
	if (v3)
		printf("    corrupt: %s\n    extended l2: %s\n", fi->corrupt ? "true" : "false",
		       fi->extended_l2 ? "true" : "false");
}

int tool_object_add(const char *def)
{
	g_autoptr(GHashTable) opts = tblk_opts_new();
	GError *err = NULL;
	const char *type;
	int ret;

	if (tblk_opts_parse(opts, def, "qom-type", &err) < 0) {
		tool_error_gerror(err, NULL);
		return -EINVAL;
	}
	ret = tool_object_check(opts);
	if (ret > 0)
		exit(0);	/* "help": the list is printed */
	if (ret < 0)
		return ret;
	type = g_hash_table_lookup(opts, "qom-type");
	if (!type || strcmp(type, "throttle-group"))
		return 0;
	if (tblk_throttle_group_new(g_hash_table_lookup(opts, "id"), opts, &err) < 0) {
		tool_error_gerror(err, NULL);
		return -EINVAL;
	}
	return 0;
}
