/* SPDX-License-Identifier: MIT */
/*
 * img-open.c - opening the image of a tblk-img subcommand, with qemu-img's messages:
 * "Could not open 'F': <why>", the --image-opts/-f conflict, and the warning about writing
 * to an image whose raw format was only probed; what else subcommands check before they open
 * or create an image (--object definitions, the creation options of a target format, which
 * formats take compressed writes); and block status through the backing chain in the terms
 * qemu-img's map and compare use.
 *
 * Threading: the tool's single thread.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "tools/img-int.h"

/*
 * Builds the open options; sets *probe_name to the name to warn about if probing, and
 * *open_name to the file name to open (NULL: the options name it). An error is in *errp, or
 * was printed already if *errp stays NULL.
 */
static int build_opts(GHashTable *opts, const struct img_open_opts *o, const char **probe_name,
		      char **open_name, GError **errp)
{
	*probe_name = tool_json_names_driver(o->filename) ? NULL : o->filename;
	*open_name = o->image_opts ? NULL : g_strdup(o->filename);
	if (o->image_opts) {
		/* qemu-img takes a first element without '=' for "file=" (qemu-io does not) */
		if (tool_opts_parse_implied(opts, o->filename, "file", errp) < 0)
			return -EINVAL;
		*probe_name = g_hash_table_lookup(opts, "driver") ? NULL :
			      g_hash_table_lookup(opts, "file.filename");
		/* No format named: probe the plain file the options name, as qemu does. */
		if (*probe_name && !g_hash_table_lookup(opts, "file.driver")) {
			*open_name = g_strdup(*probe_name);
			g_hash_table_remove(opts, "file.filename");
			*probe_name = *open_name;
		}
	} else if (o->fmt) {
		g_hash_table_insert(opts, g_strdup("driver"), g_strdup(o->fmt));
		*probe_name = NULL;
	}
	/* -U against the options' own force-share: said as is, not as a failed open. */
	if (o->image_opts && (o->flags & TBLK_OPEN_SHARE_RW) && !tool_opts_force_share_ok(opts)) {
		tool_error("--force-share/-U conflicts with image options");
		return -EINVAL;
	}
	/*
	 * -U on a writable open: qemu refuses it after looking the driver up by name, before
	 * opening any file; the node does the same once it knows its driver.
	 */
	if ((o->flags & TBLK_OPEN_SHARE_RW) && (o->flags & TBLK_OPEN_RDWR)) {
		if (g_hash_table_contains(opts, "driver") || tool_json_names_driver(o->filename)) {
			g_hash_table_replace(opts, g_strdup("force-share"), g_strdup("on"));
			return 0;
		}
		g_set_error(errp, tblk_error_quark(), EINVAL,
			    "force-share=on can only be used with read-only images");
		return -EINVAL;
	}
	return 0;
}

int img_open(struct tblk_blk **pblk, const struct img_open_opts *o, struct tblk_loop *loop)
{
	GHashTable *opts;
	const char *probe_name;
	char *open_name = NULL;
	GError *err = NULL;
	int ret;

	if (o->image_opts && o->fmt) {
		tool_error("--image-opts and --format are mutually exclusive");
		return -EINVAL;
	}
	opts = tblk_opts_new();
	ret = build_opts(opts, o, &probe_name, &open_name, &err);
	/* qemu opens without a backing file then, and says so. */
	if (ret == 0)
		tool_warn_empty_backing(opts, open_name);
	if (ret == 0)
		ret = tblk_blk_open(pblk, open_name, opts, o->flags | TBLK_OPEN_NODE_OPTS, loop,
				    &err);
	if (ret < 0 && err) {
		tool_error_gerror(err, "Could not open '%s': ", o->filename);
	} else if (probe_name) {
		tool_warn_probed_raw(*pblk, probe_name);
	}
	g_free(open_name);
	g_hash_table_unref(opts);
	return ret;
}

/* ---------------------------------------------------------------- shared options */

#define COMMON_LONG_OPTS \
	{ "help", no_argument, NULL, 'h' }, \
	{ "object", required_argument, NULL, IMG_OPT_OBJECT }, \
	{ "image-opts", no_argument, NULL, IMG_OPT_IMAGE_OPTS }

const struct option img_long_opts[] = {
	COMMON_LONG_OPTS,
	{ "force-share", no_argument, NULL, 'U' },
	{ NULL, 0, NULL, 0 },
};

const struct option img_long_opts_no_share[] = {
	COMMON_LONG_OPTS,
	{ NULL, 0, NULL, 0 },
};

bool img_common_opt(int c, char **argv, bool *image_opts)
{
	switch (c) {
	case '?':
	case ':':
		img_bad_option(c, argv);
	case 'h':
		img_help();
	case IMG_OPT_OBJECT:
		img_object_check(optarg);
		return true;
	case IMG_OPT_IMAGE_OPTS:
		*image_opts = true;
		return true;
	}
	return false;
}

/* ---------------------------------------------------------------- -l snapshot */

bool img_snapshot_arg_check(const char *arg)
{
	g_auto(GStrv) elems = NULL;

	if (strncmp(arg, "snapshot.", 9))
		return false;
	elems = g_strsplit(arg, ",", -1);
	for (char **e = elems; *e; e++) {
		g_autofree char *key = g_strdup(*e);
		char *eq = strchr(key, '=');

		if (!**e)
			continue;
		if (eq)
			*eq = '\0';
		if (strcmp(key, "snapshot.id") && strcmp(key, "snapshot.name")) {
			tool_error("Invalid parameter '%s'", key);
			tool_error("Failed in parsing snapshot param '%s'", arg);
			exit(1);
		}
	}
	return true;
}

int img_snapshot_load(struct tblk_blk *blk, const char *arg)
{
	g_autoptr(GHashTable) opts = tblk_opts_new();
	bool keyed = !strncmp(arg, "snapshot.", 9);
	const char *id = arg, *name = NULL;
	GError *err = NULL;
	int ret;

	if (keyed) {
		id = NULL;
		/* Checked by img_snapshot_arg_check() already. */
		if (tblk_opts_parse(opts, arg, NULL, NULL) == 0) {
			id = g_hash_table_lookup(opts, "snapshot.id");
			name = g_hash_table_lookup(opts, "snapshot.name");
		}
	}
	ret = tblk_blk_snapshot_load_tmp(blk, id, name, &err);
	if (!keyed && (ret == -ENOENT || ret == -EINVAL)) {
		g_clear_error(&err);
		ret = tblk_blk_snapshot_load_tmp(blk, NULL, arg, &err);
	}
	if (ret < 0)
		tool_error_gerror(err, "Failed to load snapshot: ");
	return ret;
}

/* ---------------------------------------------------------------- --object */

void img_object_check(const char *def)
{
	/* qemu's checks (tool-object.c), then the object is made; "help" lists the types. */
	if (tool_object_add(def) < 0)
		exit(1);
}

/* ---------------------------------------------------------------- creation options */

enum opt_type { OPT_STR, OPT_SIZE, OPT_BOOL, OPT_NUM };

/* OPT_OWN: the format's own option, listed by -o help; others are its protocol's. */
#define OPT_OWN	1

struct fmt_opt {
	const char *name;
	enum opt_type type;
	const char *help;	/* as qemu's -o help prints it */
	unsigned int flags;
};

#define SIZE_OPT(fl)	{ "size", OPT_SIZE, "Virtual disk size", fl }
#define FILE_PROTO_OPTS(fl)							\
	{ "extent_size_hint", OPT_SIZE, "Extent size hint for the image file, 0 to disable",	\
	  fl },									\
	{ "nocow", OPT_BOOL, "Turn off copy-on-write (valid only on btrfs)", fl },		\
	{ "preallocation", OPT_STR, "Preallocation mode (allowed values: off, falloc, full)",	\
	  fl },									\
	SIZE_OPT(fl)

static const struct fmt_opt raw_opts[] = {
	SIZE_OPT(OPT_OWN),
	FILE_PROTO_OPTS(0),
	{ NULL },
};

/* the formats "file" and "host_device" (qemu's protocols, created directly) */
static const struct fmt_opt file_opts[] = {
	FILE_PROTO_OPTS(OPT_OWN),
	{ NULL },
};

static const struct fmt_opt qcow2_opts[] = {
	{ "backing_file", OPT_STR, "File name of a base image", OPT_OWN },
	{ "backing_fmt", OPT_STR, "Image format of the base image", OPT_OWN },
	{ "cluster_size", OPT_SIZE, "qcow2 cluster size", OPT_OWN },
	{ "compat", OPT_STR, "Compatibility level (v2 [0.10] or v3 [1.1])", OPT_OWN },
	{ "compression_type", OPT_STR, "Compression method used for image cluster compression",
	  OPT_OWN },
	{ "data_file", OPT_STR, "File name of an external data file", OPT_OWN },
	{ "data_file_raw", OPT_BOOL, "The external data file must stay valid as a raw image",
	  OPT_OWN },
	{ "encrypt.cipher-alg", OPT_STR, "Name of encryption cipher algorithm", OPT_OWN },
	{ "encrypt.cipher-mode", OPT_STR, "Name of encryption cipher mode", OPT_OWN },
	{ "encrypt.format", OPT_STR, "Encrypt the image, format choices: 'aes', 'luks'",
	  OPT_OWN },
	{ "encrypt.hash-alg", OPT_STR, "Name of encryption hash algorithm", OPT_OWN },
	{ "encrypt.iter-time", OPT_NUM, "Time to spend in PBKDF in milliseconds", OPT_OWN },
	{ "encrypt.ivgen-alg", OPT_STR, "Name of IV generator algorithm", OPT_OWN },
	{ "encrypt.ivgen-hash-alg", OPT_STR, "Name of IV generator hash algorithm", OPT_OWN },
	{ "encrypt.key-secret", OPT_STR, "ID of secret providing qcow AES key or LUKS passphrase",
	  OPT_OWN },
	{ "encryption", OPT_BOOL, "Encrypt the image with format 'aes'. (Deprecated in favor of "
	  "encrypt.format=aes)", OPT_OWN },
	{ "extended_l2", OPT_BOOL, "Extended L2 tables", OPT_OWN },
	{ "lazy_refcounts", OPT_BOOL, "Postpone refcount updates", OPT_OWN },
	{ "preallocation", OPT_STR, "Preallocation mode (allowed values: off, metadata, falloc, "
	  "full)", OPT_OWN },
	{ "refcount_bits", OPT_NUM, "Width of a reference count entry in bits", OPT_OWN },
	SIZE_OPT(OPT_OWN),
	FILE_PROTO_OPTS(0),
	{ NULL },
};

/* What tblk-img knows of a format before creating an image of it. */
static const struct fmt_info {
	const char *name;
	const struct fmt_opt *opts;
	bool can_compress;
} fmt_infos[] = {
	{ "raw", raw_opts, false },
	{ "file", file_opts, false },
	{ "host_device", file_opts, false },
	{ "qcow2", qcow2_opts, true },
};

static const struct fmt_info *fmt_info(const char *fmt)
{
	for (size_t i = 0; i < sizeof(fmt_infos) / sizeof(fmt_infos[0]); i++)
		if (!strcmp(fmt_infos[i].name, fmt))
			return &fmt_infos[i];
	return NULL;
}

static const struct fmt_opt *fmt_opt(const char *fmt, const char *key)
{
	const struct fmt_info *fi = fmt_info(fmt);
	const struct fmt_opt *o;

	if (!fi)
		return NULL;
	for (o = fi->opts; o->name; o++)
		if (!strcmp(o->name, key))
			return o;
	return NULL;
}

bool img_fmt_has_create_opt(const char *fmt, const char *key)
{
	return !fmt_info(fmt) || fmt_opt(fmt, key);
}

bool img_fmt_can_compress(const char *fmt)
{
	const struct fmt_info *fi = fmt_info(fmt);

	return fi ? fi->can_compress : true;
}

bool img_fmt_known(const char *fmt)
{
	for (const char *const *f = tblk_format_names(); *f; f++)
		if (!strcmp(*f, fmt))
			return true;
	return !strcmp(fmt, "file") || !strcmp(fmt, "host_device");
}

/* The creation options of the protocols qemu-img -o help names ("simple": size only). */
static const struct fmt_opt simple_proto_opts[] = {
	{ "preallocation", OPT_STR, "Preallocation mode (allowed values: off)", 0 },
	SIZE_OPT(0),
	{ NULL },
};
static const struct fmt_opt ssh_proto_opts[] = { SIZE_OPT(0), { NULL } };
static const struct fmt_opt file_proto_opts[] = { FILE_PROTO_OPTS(0), { NULL } };

/* qemu 7.2's protocols that create no images */
static const char *const no_create_protos[] = {
	"blkdebug", "blkverify", "ftp", "ftps", "http", "https", "null-aio", "null-co", "vvfat",
	NULL,
};

/*
 * The creation options of the protocol @filename names, as qemu finds it: a "proto:" prefix
 * (before any '/'), else a host device under /dev, else a file. NULL after an error.
 */
static const struct fmt_opt *proto_opts(const char *filename)
{
	size_t n = strcspn(filename, ":/");
	g_autofree char *proto = NULL;
	struct stat st;

	if (filename[n] != ':') {
		if (!strncmp(filename, "/dev/", 5) && stat(filename, &st) == 0 &&
		    (S_ISBLK(st.st_mode) || S_ISCHR(st.st_mode)))
			return simple_proto_opts;
		return file_proto_opts;
	}
	proto = g_strndup(filename, n);
	if (!strcmp(proto, "file"))
		return file_proto_opts;
	if (!strcmp(proto, "host_device") || !strcmp(proto, "nbd") ||
	    !strcmp(proto, "nbd+tcp") || !strcmp(proto, "nbd+unix"))
		return simple_proto_opts;
	if (!strcmp(proto, "ssh"))
		return ssh_proto_opts;
	for (const char *const *p = no_create_protos; *p; p++) {
		if (!strcmp(*p, proto)) {
			tool_error("Protocol driver '%s' does not support image creation", proto);
			return NULL;
		}
	}
	tool_error("Unknown protocol '%s'", proto);
	return NULL;
}

static const char *const opt_type_names[] = {
	[OPT_STR] = "str", [OPT_SIZE] = "size", [OPT_BOOL] = "bool (on/off)", [OPT_NUM] = "num",
};

static void add_help_lines(GPtrArray *lines, GHashTable *seen, const struct fmt_opt *o,
			   unsigned int need)
{
	for (; o->name; o++) {
		g_autofree char *head = NULL;

		if ((o->flags & need) != need || !g_hash_table_add(seen, (char *)o->name))
			continue;
		head = g_strdup_printf("%s=<%s>", o->name, opt_type_names[o->type]);
		g_ptr_array_add(lines, g_strdup_printf("  %-22s - %s", head, o->help));
	}
}

static int cmp_lines(gconstpointer a, gconstpointer b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int img_create_opts_help(const char *fmt, const char *filename)
{
	const struct fmt_info *fi = fmt_info(fmt);
	g_autoptr(GHashTable) seen = g_hash_table_new(g_str_hash, g_str_equal);
	g_autoptr(GPtrArray) lines = g_ptr_array_new_with_free_func(g_free);
	const struct fmt_opt *po = NULL;

	if (!img_fmt_known(fmt)) {
		tool_error("Unknown file format '%s'", fmt);
		return 1;
	}
	if (!fi) {
		tool_error("Format driver '%s' does not support image creation", fmt);
		return 1;
	}
	if (filename) {
		po = proto_opts(filename);
		if (!po)
			return 1;
	}
	add_help_lines(lines, seen, fi->opts, OPT_OWN);
	if (po)
		add_help_lines(lines, seen, po, 0);
	g_ptr_array_sort(lines, cmp_lines);
	if (filename)
		printf("Supported options:\n");
	else
		printf("Supported %s options:\n", fmt);
	for (guint i = 0; i < lines->len; i++)
		printf("%s\n", (char *)g_ptr_array_index(lines, i));
	if (!filename)
		printf("\nThe protocol level may support further options.\n"
		       "Specify the target filename to include those options.\n");
	return 0;
}

/* Set while img_create_opts_valid() parses: the checks below print nothing then. */
static bool opts_quiet;

#define opt_error(...) do { if (!opts_quiet) tool_error(__VA_ARGS__); } while (0)

/* Checks a value against its type, with the messages of qemu's option parser. */
static int check_value(const struct fmt_opt *o, const char *val)
{
	unsigned long long n;
	uint64_t v;
	bool hex_suffix;
	char *end;
	int ret;

	switch (o->type) {
	case OPT_STR:
		return 0;
	case OPT_BOOL:
		if (!strcmp(val, "on") || !strcmp(val, "off"))
			return 0;
		opt_error("Parameter '%s' expects 'on' or 'off'", o->name);
		return -1;
	case OPT_NUM:
		errno = 0;
		n = strtoull(val, &end, 0);
		(void)n;
		if (end == val || *end) {
			opt_error("Parameter '%s' expects a number", o->name);
			return -1;
		}
		if (errno == ERANGE) {
			opt_error("Value '%s' is too large for parameter '%s'", val, o->name);
			return -1;
		}
		return 0;
	case OPT_SIZE:
		ret = tool_strtosz(val, &v, &hex_suffix);
		if (ret == -ERANGE) {
			opt_error("Value '%s' is out of range for parameter '%s'", val, o->name);
			return -1;
		}
		if (ret < 0) {
			opt_error("Parameter '%s' expects a non-negative number below 2^64\n"
				   "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, "
				   "tera-, peta-\nand exabytes, respectively.", o->name);
			return -1;
		}
		return 0;
	}
	return 0;
}

/* One "key=value" element; a bare "key" is "key=on", a bare "nokey" is "key=off". */
static int create_opt_set(const char *fmt, char *elem, GHashTable *opts)
{
	char *eq = strchr(elem, '=');
	const char *key = elem, *val = eq ? eq + 1 : "on";
	const struct fmt_opt *o;

	if (eq)
		*eq = '\0';
	else if (!strncmp(elem, "no", 2))
		key = elem + 2, val = "off";
	o = fmt_opt(fmt, key);
	if (!o && fmt_info(fmt)) {
		opt_error("Invalid parameter '%s'", key);
		return -1;
	}
	if (o && check_value(o, val) < 0)
		return -1;
	if (strcmp(key, "size"))
		g_hash_table_insert(opts, g_strdup(key), g_strdup(val));
	return 0;
}

bool img_opt_list_valid(const char *s)
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

bool img_opt_list_has_help(const char *list)
{
	g_auto(GStrv) elems = g_strsplit(list, ",", -1);

	for (char **e = elems; *e; e++)
		if (!strcmp(*e, "help") || !strcmp(*e, "?"))
			return true;
	return false;
}

char **img_opt_list_split(const char *list)
{
	GPtrArray *elems = g_ptr_array_new();
	GString *elem = g_string_new(NULL);
	const char *p = list;

	while (*p) {
		g_string_truncate(elem, 0);
		for (; *p && (*p != ',' || p[1] == ','); p++) {
			g_string_append_c(elem, *p);
			if (*p == ',')
				p++;
		}
		if (*p == ',')
			p++;
		g_ptr_array_add(elems, g_strdup(elem->str));
	}
	g_string_free(elem, TRUE);
	g_ptr_array_add(elems, NULL);
	return (char **)g_ptr_array_free(elems, FALSE);
}

int img_create_opts_parse(const char *fmt, const char *list, GHashTable *opts)
{
	g_auto(GStrv) elems = img_opt_list_split(list);
	int ret = 0;

	for (char **e = elems; *e && ret == 0; e++)
		ret = create_opt_set(fmt, *e, opts);
	return ret;
}

bool img_create_opts_valid(const char *fmt, const char *list)
{
	g_autoptr(GHashTable) opts = tblk_opts_new();
	int ret;

	opts_quiet = true;
	ret = img_create_opts_parse(fmt, list, opts);
	opts_quiet = false;
	return ret == 0;
}

/* ---------------------------------------------------------------- block status */

int img_block_status(struct tblk_blk *blk, uint64_t offset, uint64_t bytes,
		     struct img_status *st)
{
	uint64_t pnum = 0, map = 0;
	int depth = 0;
	int ret = tblk_blk_block_status_depth(blk, offset, bytes, &pnum, &map, &depth);

	if (ret < 0)
		return ret;
	/* Callers walk forward by pnum: a driver that describes nothing would stall them. */
	if (pnum == 0 && bytes > 0)
		return -EIO;
	st->pnum = pnum;
	st->map = map;
	st->present = ret & TBLK_BS_ALLOCATED;
	if (!st->present) {
		/*
		 * Nobody holds the range: it reads as zeroes because the layer above the one
		 * reported has no backing file there (qemu names that layer).
		 */
		st->bits = (unsigned int)ret & (TBLK_BS_ZERO | TBLK_BS_OFFSET_VALID);
		st->depth = depth > 0 ? depth - 1 : 0;
	} else {
		st->bits = (unsigned int)ret;
		st->depth = depth;
	}
	return 0;
}
