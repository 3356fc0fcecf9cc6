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
#include <stdlib.h>
#include <string.h>

#include "tools/img-int.h"

/* One creation option: its name, kind, and the default "Formatting" prints (NULL: none). */
enum co_kind { CO_STR, CO_SIZE_T, CO_BOOL, CO_NUM };
struct co_desc {
	const char *name;
	enum co_kind kind;
	const char *def;
};

/* Per format, in the order "Formatting" prints them. */
static const struct co_desc raw_opts[] = {
	{ "size", CO_SIZE_T, NULL },
	{ "nocow", CO_BOOL, NULL },
	{ "preallocation", CO_STR, NULL },
	{ "extent_size_hint", CO_SIZE_T, NULL },
	{ NULL, 0, NULL },
};

static const struct co_desc qcow2_opts[] = {
	{ "encryption", CO_BOOL, NULL },
	{ "encrypt.format", CO_STR, NULL },
	{ "encrypt.key-secret", CO_STR, NULL },
	{ "encrypt.cipher-alg", CO_STR, NULL },
	{ "encrypt.cipher-mode", CO_STR, NULL },
	{ "encrypt.ivgen-alg", CO_STR, NULL },
	{ "encrypt.ivgen-hash-alg", CO_STR, NULL },
	{ "encrypt.hash-alg", CO_STR, NULL },
	{ "encrypt.iter-time", CO_NUM, NULL },
	{ "cluster_size", CO_SIZE_T, "65536" },
	{ "extended_l2", CO_BOOL, "off" },
	{ "preallocation", CO_STR, NULL },
	{ "compression_type", CO_STR, "zlib" },
	{ "size", CO_SIZE_T, NULL },
	{ "compat", CO_STR, NULL },
	{ "backing_file", CO_STR, NULL },
	{ "backing_fmt", CO_STR, NULL },
	{ "data_file", CO_STR, NULL },
	{ "data_file_raw", CO_BOOL, NULL },
	{ "lazy_refcounts", CO_BOOL, "off" },
	{ "refcount_bits", CO_NUM, "16" },
	{ "nocow", CO_BOOL, NULL },
	{ "extent_size_hint", CO_SIZE_T, NULL },
	{ NULL, 0, NULL },
};

#define CO_MAX 32
/* value[] and num[] below are indexed by a table's entries. */
G_STATIC_ASSERT(G_N_ELEMENTS(raw_opts) - 1 <= CO_MAX);
G_STATIC_ASSERT(G_N_ELEMENTS(qcow2_opts) - 1 <= CO_MAX);

struct create_args {
	const char *fmt;
	const char *filename;
	const char *backing, *backing_fmt;
	GString *options;		/* -o lists joined by ',' */
	bool quiet;
	bool unsafe;			/* -u: do not open the backing file */
	bool has_size;
	uint64_t size;
};

struct create_opts {
	const struct co_desc *desc;	/* the format's table */
	char *value[CO_MAX];		/* as given, NULL if not set */
	uint64_t num[CO_MAX];		/* parsed sizes and numbers */
};

static int co_index(const struct create_opts *co, const char *name)
{
	for (int i = 0; co->desc[i].name; i++)
		if (!strcmp(co->desc[i].name, name))
			return i;
	return -1;
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
		case 'u': a->unsafe = true; break;
		case 'O': break;
		case 'o':
			if (!img_opt_list_valid(optarg)) {
				tool_error("Invalid option list: %s", optarg);
				exit(1);
			}
			if (a->options->len)
				g_string_append_c(a->options, ',');
			g_string_append(a->options, optarg);
			break;
		}
	}
	/* qemu answers -o help before it looks for a file name, and names the protocol then */
	if (a->options->len && img_opt_list_has_help(a->options->str))
		exit(img_create_opts_help(a->fmt ? a->fmt : "raw",
					  optind < argc ? argv[optind] : NULL));
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

static bool num_value(const char *val, uint64_t *out)
{
	char *end;

	if (!*val || *val == '-')
		return false;
	errno = 0;
	*out = strtoull(val, &end, 0);
	return !errno && !*end;
}

/* Checks one "key=value" element against the format's creation options. */
static int set_option(struct create_opts *co, char *key, char *val, GError **errp)
{
	int i = co_index(co, key);

	if (i < 0) {
		g_set_error(errp, tblk_error_quark(), EINVAL, "Invalid parameter '%s'", key);
		return -EINVAL;
	}
	if (co->desc[i].kind == CO_SIZE_T && size_value(key, val, &co->num[i], errp) < 0)
		return -EINVAL;
	if (co->desc[i].kind == CO_NUM && !num_value(val, &co->num[i])) {
		g_set_error(errp, tblk_error_quark(), EINVAL, "Parameter '%s' expects a number",
			    key);
		return -EINVAL;
	}
	if (co->desc[i].kind == CO_BOOL && strcmp(val, "on") && strcmp(val, "off")) {
		g_set_error(errp, tblk_error_quark(), EINVAL,
			    "Parameter '%s' expects 'on' or 'off'", key);
		return -EINVAL;
	}
	g_free(co->value[i]);
	co->value[i] = g_strdup(val);
	return 0;
}

/*
 * Splits the -o list (",," is a literal comma); a bare key means "key=on", a bare "nokey"
 * "key=off" (qemu's short forms: "nocow" alone is "cow=off").
 */
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
		if (!eq && !strncmp(elem->str, "no", 2))
			ret = set_option(co, elem->str + 2, (char *)"off", errp);
		else
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

/* The size of the backing file named by -b/-F (for create without a size). */
static int backing_size(const char *image, const char *backing, const char *fmt,
			uint64_t *size, GError **errp)
{
	g_autoptr(GHashTable) opts = tblk_opts_new();
	g_autofree char *dir = g_path_get_dirname(image);
	g_autofree char *path = NULL;
	GError *err = NULL;
	struct tblk_blk *blk;
	int64_t len;

	if (backing[0] == '/' || !strcmp(dir, "."))
		path = g_strdup(backing);
	else
		path = g_build_filename(dir, backing, NULL);
	g_hash_table_insert(opts, g_strdup("driver"), g_strdup(fmt));
	if (tblk_blk_open(&blk, path, opts, TBLK_OPEN_NODE_OPTS, NULL, &err) < 0) {
		g_set_error(errp, tblk_error_quark(), EINVAL, "%s\nCould not open backing image.",
			    err->message);
		g_error_free(err);
		return -EINVAL;
	}
	len = tblk_blk_getlength(blk);
	tblk_blk_close(blk);
	if (len < 0) {
		g_set_error(errp, tblk_error_quark(), EIO, "Could not get the size of the backing "
			    "image");
		return -EIO;
	}
	*size = (uint64_t)len;
	return 0;
}

/* The checks qemu makes before printing "Formatting"; 0 or -errno with *errp. */
static int create_check(struct create_args *a, struct create_opts *co, GError **errp)
{
	int si, bi, fi;

	if (!format_known(a->fmt)) {
		g_set_error(errp, tblk_error_quark(), EINVAL, "Unknown file format '%s'", a->fmt);
		return -EINVAL;
	}
	co->desc = !strcmp(a->fmt, "qcow2") ? qcow2_opts : raw_opts;
	if (parse_options(co, a->options->str, errp) < 0)
		return -EINVAL;
	si = co_index(co, "size");
	bi = co_index(co, "backing_file");
	fi = co_index(co, "backing_fmt");
	if (a->has_size && co->value[si]) {
		g_set_error(errp, tblk_error_quark(), EINVAL,
			    "The image size must be specified only once");
		return -EINVAL;
	}
	if ((a->backing || a->backing_fmt) && bi < 0) {
		g_set_error(errp, tblk_error_quark(), ENOTSUP,
			    "Backing file%s not supported for file format '%s'",
			    a->backing ? "" : " format", a->fmt);
		return -ENOTSUP;
	}
	if (a->backing) {
		g_free(co->value[bi]);
		co->value[bi] = g_strdup(a->backing);
	}
	if (a->backing_fmt) {
		g_free(co->value[fi]);
		co->value[fi] = g_strdup(a->backing_fmt);
	}
	if (bi >= 0 && co->value[bi] && !*co->value[bi]) {
		g_set_error(errp, tblk_error_quark(), EINVAL,
			    "Expected backing file name, got empty string");
		return -EINVAL;
	}
	if (co->value[si]) {
		a->size = co->num[si];
		a->has_size = true;
	}
	if (bi >= 0 && co->value[bi] && !co->value[fi]) {
		g_set_error(errp, tblk_error_quark(), EINVAL,
			    "Backing file specified without backing format");
		return -EINVAL;
	}
	if (bi >= 0 && co->value[bi] && !a->has_size && !a->unsafe) {
		if (backing_size(a->filename, co->value[bi], co->value[fi], &a->size, errp) < 0)
			return -EINVAL;
		a->size = (a->size + 511) & ~511ull;
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
	printf("Formatting '%s', fmt=%s", a->filename, a->fmt);
	for (int i = 0; co->desc[i].name; i++) {
		const struct co_desc *d = &co->desc[i];

		if (!strcmp(d->name, "size"))
			printf(" size=%" PRId64, (int64_t)a->size);
		else if (co->value[i] && (d->kind == CO_SIZE_T || d->kind == CO_NUM))
			printf(" %s=%" PRIu64, d->name, co->num[i]);
		else if (co->value[i])
			printf(" %s=%s", d->name, co->value[i]);
		else if (d->def)
			printf(" %s=%s", d->name, d->def);
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
		fflush(stdout);
		for (i = 0; co.desc[i].name; i++) {
			const char *name = co.desc[i].name;

			if (!co.value[i] || !strcmp(name, "size") ||
			    !strcmp(name, "extent_size_hint"))
				continue;
			g_hash_table_insert(opts, g_strdup(name), g_strdup(co.value[i]));
		}
		ret = tblk_img_create(a.filename, a.fmt, a.size, opts, &err);
	}
	if (ret < 0)
		tool_error_gerror(err, "%s: ", a.filename);
	for (i = 0; i < CO_MAX; i++)
		g_free(co.value[i]);
	g_hash_table_unref(opts);
	g_string_free(a.options, TRUE);
	return ret < 0 ? 1 : 0;
}
