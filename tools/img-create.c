/* SPDX-License-Identifier: MIT */
/*
 * img-create.c - "tblk-img create": qemu-img create's command line, its checks of the -o
 * creation options (raw: size, nocow, preallocation, extent_size_hint) with qemu's messages,
 * and the "Formatting '...'" line with the options in qemu's fixed order.
 *
 * Threading: single-threaded.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <string.h>

#include "tools/img-int.h"

/* The creation options of raw images, in the order "Formatting" prints them. */
enum { CO_SIZE, CO_NOCOW, CO_PREALLOC, CO_EXTENT_HINT, CO_NR };
static const char *const co_names[CO_NR] = {
	"size", "nocow", "preallocation", "extent_size_hint",
};

struct create_args {
	const char *fmt;
	const char *filename;
	const char *backing, *backing_fmt;
	GString *options;		/* -o lists joined by ',' */
	bool quiet;
	bool has_size;
	uint64_t size;
};

struct create_opts {
	char *value[CO_NR];		/* as given, NULL if not set */
	uint64_t num[CO_NR];		/* parsed sizes */
};

/* qemu refuses an empty -o list or one with an empty element (",," is a comma). */
static bool option_list_valid(const char *s)
{
	const char *p;

	if (!*s || *s == ',')
		return false;
	for (p = s; *p; p++) {
		if (*p != ',')
			continue;
		if (p[1] == ',') {
			p++;
			continue;
		}
		if (p[1] == '\0')
			return false;
	}
	return true;
}

static void create_help_options(void)
{
	printf("Creation options of raw images:\n"
	       "  size=<size>              virtual disk size\n"
	       "  preallocation=<str>      off, falloc or full\n"
	       "  nocow=<bool (on/off)>    turn copy-on-write off (btrfs)\n"
	       "  extent_size_hint=<size>  extent size hint of the file, 0 for none\n");
	exit(0);
}

static void create_parse(int argc, char **argv, struct create_args *a)
{
	static const struct option long_opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "object", required_argument, NULL, 'O' },
		{ NULL, 0, NULL, 0 },
	};
	int c;
	int64_t v;

	while ((c = getopt_long(argc, argv, ":F:b:f:ho:qu", long_opts, NULL)) != -1) {
		switch (c) {
		case '?': case ':': img_bad_option(c, argv);
		case 'h': img_help();
		case 'F': a->backing_fmt = optarg; break;
		case 'b': a->backing = optarg; break;
		case 'f': a->fmt = optarg; break;
		case 'q': a->quiet = true; break;
		case 'u': case 'O': break;
		case 'o':
			if (!strcmp(optarg, "help") || !strcmp(optarg, "?"))
				create_help_options();
			if (!option_list_valid(optarg)) {
				tool_error("Invalid option list: %s", optarg);
				exit(1);
			}
			if (a->options->len)
				g_string_append_c(a->options, ',');
			g_string_append(a->options, optarg);
			break;
		}
	}
	if (optind >= argc)
		img_error_exit("Expecting image file name");
	a->filename = argv[optind++];
	if (optind < argc) {
		v = img_cvtnum_full("image size", argv[optind++], 0, INT64_MAX);
		if (v < 0)
			exit(1);
		a->size = (uint64_t)v;
		a->has_size = true;
	}
	if (optind != argc)
		img_error_exit("Unexpected argument: %s", argv[optind]);
}

static int size_value(const char *key, const char *val, uint64_t *out, GError **errp)
{
	bool hex_suffix;
	int ret = tool_strtosz(val, out, &hex_suffix);

	if (ret == -ERANGE)
		g_set_error(errp, tblk_error_quark(), ERANGE,
			    "Value '%s' is out of range for parameter '%s'", val, key);
	else if (ret < 0)
		g_set_error(errp, tblk_error_quark(), EINVAL,
			    "Parameter '%s' expects a non-negative number below 2^64\n"
			    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, "
			    "peta-\nand exabytes, respectively.", key);
	return ret;
}

/* Checks one "key=value" element against raw's creation options. */
static int set_option(struct create_opts *co, char *key, char *val, GError **errp)
{
	int i;

	for (i = 0; i < CO_NR && strcmp(co_names[i], key); i++)
		;
	if (i == CO_NR) {
		g_set_error(errp, tblk_error_quark(), EINVAL, "Invalid parameter '%s'", key);
		return -EINVAL;
	}
	if ((i == CO_SIZE || i == CO_EXTENT_HINT) && size_value(key, val, &co->num[i], errp) < 0)
		return -EINVAL;
	if (i == CO_NOCOW && strcmp(val, "on") && strcmp(val, "off")) {
		g_set_error(errp, tblk_error_quark(), EINVAL,
			    "Parameter '%s' expects 'on' or 'off'", key);
		return -EINVAL;
	}
	g_free(co->value[i]);
	co->value[i] = g_strdup(val);
	return 0;
}

/* Splits the -o list (",," is a literal comma); a bare key means "key=on". */
static int parse_options(struct create_opts *co, const char *list, GError **errp)
{
	GString *elem = g_string_new(NULL);
	const char *p = list;
	char *eq;
	int ret = 0;

	while (*p && ret == 0) {
		g_string_truncate(elem, 0);
		for (; *p && (*p != ',' || p[1] == ','); p++) {
			g_string_append_c(elem, *p);
			if (*p == ',')
				p++;
		}
		if (*p == ',')
			p++;
		eq = strchr(elem->str, '=');
		if (eq)
			*eq = '\0';
		ret = set_option(co, elem->str, eq ? eq + 1 : (char *)"on", errp);
	}
	g_string_free(elem, TRUE);
	return ret;
}

static bool format_known(const char *fmt)
{
	const char *const *f;

	for (f = tblk_format_names(); *f; f++)
		if (!strcmp(*f, fmt))
			return true;
	return !strcmp(fmt, "file");
}

/* The checks qemu makes before creating anything; 0 or -errno with *errp. */
static int create_check(struct create_args *a, struct create_opts *co, GError **errp)
{
	if (!format_known(a->fmt)) {
		g_set_error(errp, tblk_error_quark(), EINVAL, "Unknown file format '%s'", a->fmt);
		return -EINVAL;
	}
	if (parse_options(co, a->options->str, errp) < 0)
		return -EINVAL;
	if (a->has_size && co->value[CO_SIZE]) {
		g_set_error(errp, tblk_error_quark(), EINVAL,
			    "The image size must be specified only once");
		return -EINVAL;
	}
	if (a->backing || a->backing_fmt) {
		g_set_error(errp, tblk_error_quark(), ENOTSUP,
			    "Backing file%s not supported for file format '%s'",
			    a->backing ? "" : " format", a->fmt);
		return -ENOTSUP;
	}
	if (co->value[CO_SIZE]) {
		a->size = co->num[CO_SIZE];
		a->has_size = true;
	}
	if (!a->has_size) {
		g_set_error(errp, tblk_error_quark(), EINVAL,
			    "Image creation needs a size parameter");
		return -EINVAL;
	}
	return 0;
}

static void print_formatting(const struct create_args *a, const struct create_opts *co)
{
	int i;

	printf("Formatting '%s', fmt=%s size=%" PRId64, a->filename, a->fmt, (int64_t)a->size);
	for (i = CO_SIZE + 1; i < CO_NR; i++) {
		if (!co->value[i])
			continue;
		if (i == CO_EXTENT_HINT)
			printf(" %s=%" PRIu64, co_names[i], co->num[i]);
		else
			printf(" %s=%s", co_names[i], co->value[i]);
	}
	printf("\n");
}

int img_create(int argc, char **argv)
{
	struct create_args a = { .fmt = "raw", .options = g_string_new(NULL) };
	struct create_opts co = { 0 };
	GHashTable *opts = tblk_opts_new();
	GError *err = NULL;
	int ret, i;

	create_parse(argc, argv, &a);
	ret = create_check(&a, &co, &err);
	if (ret == 0) {
		if (!a.quiet)
			print_formatting(&a, &co);
		for (i = CO_SIZE + 1; i < CO_NR; i++)
			if (co.value[i] && i != CO_EXTENT_HINT)
				g_hash_table_insert(opts, g_strdup(co_names[i]),
						    g_strdup(co.value[i]));
		ret = tblk_img_create(a.filename, a.fmt, a.size, opts, &err);
	}
	if (ret < 0)
		tool_error_gerror(err, "%s: ", a.filename);
	for (i = 0; i < CO_NR; i++)
		g_free(co.value[i]);
	g_hash_table_unref(opts);
	g_string_free(a.options, TRUE);
	return ret < 0 ? 1 : 0;
}
