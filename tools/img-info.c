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
	char *filename;			/* qemu's name of the node (img_node_name()) */
	const char *format;
	int64_t virtual_size;
	int64_t actual_size;		/* < 0: unknown, left out */
	struct tblk_format_info fi;
	bool has_fi;			/* the driver has information (else no dirty-flag) */
	char *full_backing;		/* backing file name resolved against the image's */
	struct tblk_snapshot_info *sn;	/* internal snapshots, nsn of them */
	int nsn;
};

/* qemu's path_combine: a relative backing name is relative to the image's directory. */
static char *full_backing_name(const char *image, const char *backing)
{
	const char *slash = strrchr(image, '/');

	if (backing[0] == '/' || strstr(backing, "://") || !slash)
		return g_strdup(backing);
	return g_strdup_printf("%.*s%s", (int)(slash - image + 1), image, backing);
}

static void print_human(const struct image_info *ii)
{
	const struct tblk_format_info *fi = &ii->fi;
	char vsz[64], dsz[64];

	tool_fmt_size_img(vsz, sizeof(vsz), (uint64_t)ii->virtual_size);
	printf("image: %s\nfile format: %s\nvirtual size: %s (%" PRId64 " bytes)\n",
	       ii->filename, ii->format, vsz, ii->virtual_size);
	if (ii->actual_size >= 0)
		tool_fmt_size_img(dsz, sizeof(dsz), (uint64_t)ii->actual_size);
	printf("disk size: %s\n", ii->actual_size >= 0 ? dsz : "unavailable");
	if (fi->cluster_size)
		printf("cluster_size: %u\n", fi->cluster_size);
	if (fi->backing_file) {
		printf("backing file: %s", fi->backing_file);
		if (strcmp(fi->backing_file, ii->full_backing))
			printf(" (actual path: %s)", ii->full_backing);
		printf("\n");
	}
	if (fi->backing_fmt)
		printf("backing file format: %s\n", fi->backing_fmt);
	img_snapshot_dump(ii->sn, ii->nsn);
	tool_print_format_specific(fi);
}

static void json_key(GString *out, int indent, const char *key)
{
	g_string_append_printf(out, ",\n%*s\"%s\": ", indent, "", key);
}

/* "bitmaps": the list of persistent bitmaps, the key indented by @in spaces. */
static void json_bitmaps(GString *out, const struct tblk_format_info *fi, int in)
{
	json_key(out, in, "bitmaps");
	g_string_append(out, "[");
	for (unsigned int i = 0; i < fi->nb_bitmaps; i++) {
		const struct tblk_bitmap_info *b = &fi->bitmaps[i];
		const char *flags[2];
		unsigned int nf = 0;

		if (b->in_use)
			flags[nf++] = "in-use";
		if (b->is_auto)
			flags[nf++] = "auto";
		g_string_append_printf(out, "%s\n%*s{\n%*s\"flags\": [", i ? "," : "", in + 4, "",
				       in + 8, "");
		for (unsigned int k = 0; k < nf; k++)
			g_string_append_printf(out, "%s\n%*s\"%s\"", k ? "," : "", in + 12, "",
					       flags[k]);
		g_string_append_printf(out, "\n%*s],\n%*s\"name\": ", in + 8, "", in + 8, "");
		tool_json_string(out, b->name);
		g_string_append_printf(out, ",\n%*s\"granularity\": %" PRIu64 "\n%*s}", in + 8, "",
				       b->granularity, in + 4, "");
	}
	g_string_append_printf(out, "\n%*s]", in, "");
}

static void json_qcow2(GString *out, const struct tblk_format_info *fi, int in)
{
	const char *b[] = { "false", "true" };

	g_string_append_printf(out, "{\n%*s\"type\": \"qcow2\",\n%*s\"data\": {\n"
			       "%*s\"compat\": \"%s\",\n%*s\"compression-type\": \"%s\"",
			       in, "", in, "", in + 4, "", fi->compat, in + 4, "",
			       fi->compression_type);
	if (strcmp(fi->compat, "0.10"))
		g_string_append_printf(out, ",\n%*s\"lazy-refcounts\": %s", in + 4, "",
				       b[fi->lazy_refcounts]);
	if (fi->nb_bitmaps)
		json_bitmaps(out, fi, in + 4);
	g_string_append_printf(out, ",\n%*s\"refcount-bits\": %u", in + 4, "",
			       fi->refcount_bits);
	if (fi->data_file) {
		json_key(out, in + 4, "data-file");
		tool_json_string(out, fi->data_file);
		g_string_append_printf(out, ",\n%*s\"data-file-raw\": %s", in + 4, "",
				       b[fi->data_file_raw]);
	}
	if (strcmp(fi->compat, "0.10"))
		g_string_append_printf(out, ",\n%*s\"corrupt\": %s,\n%*s\"extended-l2\": %s",
				       in + 4, "", b[fi->corrupt], in + 4, "", b[fi->extended_l2]);
	g_string_append_printf(out, "\n%*s}\n%*s}", in, "", in - 4, "");
}

/* One ImageInfo object, its members indented by @indent spaces, in QEMU's key order. */
static void print_json_object(GString *out, const struct image_info *ii, int indent)
{
	const struct tblk_format_info *fi = &ii->fi;

	g_string_append(out, "{\n");
	if (fi->backing_fmt) {
		g_string_append_printf(out, "%*s\"backing-filename-format\": ", indent, "");
		tool_json_string(out, fi->backing_fmt);
		g_string_append(out, ",\n");
	}
	if (ii->nsn > 0) {
		g_string_append_printf(out, "%*s\"snapshots\": ", indent, "");
		img_snapshot_json(out, ii->sn, ii->nsn, indent);
		g_string_append(out, ",\n");
	}
	g_string_append_printf(out, "%*s\"virtual-size\": %" PRId64, indent, "",
			       ii->virtual_size);
	json_key(out, indent, "filename");
	tool_json_string(out, ii->filename);
	if (fi->cluster_size)
		g_string_append_printf(out, ",\n%*s\"cluster-size\": %u", indent, "",
				       fi->cluster_size);
	json_key(out, indent, "format");
	tool_json_string(out, ii->format);
	if (ii->actual_size >= 0)
		g_string_append_printf(out, ",\n%*s\"actual-size\": %" PRId64, indent, "",
				       ii->actual_size);
	if (fi->is_qcow2) {
		json_key(out, indent, "format-specific");
		json_qcow2(out, fi, indent + 4);
	}
	if (fi->backing_file) {
		json_key(out, indent, "full-backing-filename");
		tool_json_string(out, ii->full_backing);
		json_key(out, indent, "backing-filename");
		tool_json_string(out, fi->backing_file);
	}
	if (ii->has_fi)
		g_string_append_printf(out, ",\n%*s\"dirty-flag\": %s", indent, "",
				       fi->dirty ? "true" : "false");
	g_string_append_printf(out, "\n%*s}", indent - 4, "");
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
}

static int collect(struct tblk_blk *blk, const struct img_open_opts *o, struct image_info *ii)
{
	const char *name = o->filename;

	ii->filename = img_node_name(o, blk);
	ii->format = tblk_blk_format_name(blk);
	ii->virtual_size = tblk_blk_getlength(blk);
	ii->actual_size = tblk_blk_get_allocated_size(blk);
	if (ii->virtual_size < 0) {
		tool_error("Could not get the size of '%s': %s", name,
			   strerror((int)-ii->virtual_size));
		return -1;
	}
	ii->has_fi = tblk_blk_get_format_info(blk, &ii->fi) == 0;
	if (tblk_blk_snapshot_list(blk, &ii->sn, &ii->nsn) < 0) {
		ii->sn = NULL;
		ii->nsn = 0;
	}
	/* Against the file's own name: the node's name may be a json: description. */
	ii->full_backing = ii->fi.backing_file ?
			   full_backing_name(tblk_blk_filename(blk), ii->fi.backing_file) : NULL;
	return 0;
}

int img_info(int argc, char **argv)
{
	struct info_args a = { .output = "human" };
	bool json = false, first = true;
	GString *out = g_string_new(NULL);
	struct img_open_opts o;
	struct tblk_blk *blk;
	char *next = NULL, *next_fmt = NULL;
	int ret = 0;

	info_parse(argc, argv, &a);
	/* Each image of the chain is opened on its own, as qemu-img does: backing.* options
	 * are not for it. */
	a.open.flags |= TBLK_OPEN_NO_BACKING | TBLK_OPEN_NO_DATA_FILE;
	json = !strcmp(a.output, "json");
	o = a.open;
	if (img_open(&blk, &o, NULL) < 0)
		return 1;
	if (json && a.backing_chain)
		g_string_append(out, "[\n    ");
	for (;;) {
		struct image_info ii = { 0 };

		if (collect(blk, &o, &ii) < 0) {
			g_free(ii.filename);
			ret = 1;
			tblk_blk_close(blk);
			break;
		}
		if (json) {
			if (!first)
				g_string_append(out, ",\n    ");
			print_json_object(out, &ii, a.backing_chain ? 8 : 4);
		} else {
			if (!first)
				printf("\n");
			print_human(&ii);
		}
		first = false;
		tblk_snapshot_list_free(ii.sn, ii.nsn);
		g_free(ii.filename);
		g_free(next);
		g_free(next_fmt);
		next = ii.full_backing;
		next_fmt = g_strdup(ii.fi.backing_fmt);
		tblk_blk_close(blk);
		if (!a.backing_chain || !next)
			break;
		o = (struct img_open_opts){ .filename = next, .fmt = next_fmt,
					    .flags = a.open.flags };
		if (img_open(&blk, &o, NULL) < 0) {
			ret = 1;
			break;
		}
	}
	if (json && ret == 0) {
		if (a.backing_chain)
			g_string_append(out, "\n]");
		printf("%s\n", out->str);
	}
	g_free(next);
	g_free(next_fmt);
	g_string_free(out, TRUE);
	return ret;
}
