/* SPDX-License-Identifier: MIT */
/*
 * img-map.c - "tblk-img map": qemu-img map's command line and its two outputs. The image
 * is walked with block status through the backing chain; neighbouring extents that agree
 * (same layer, same flags, contiguous host offsets) are merged into one entry. The human
 * output lists only the extents holding data, and treats unallocated, zero and zero-data
 * extents alike so that they merge; the JSON output lists every extent. The human output
 * names the file of each layer of the chain as qemu-img does: a relative backing file name
 * joined to the directory of the image that records it.
 *
 * Threading: single-threaded.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "tools/img-int.h"

struct map_args {
	struct img_open_opts open;
	const char *output;
	int64_t start;
	int64_t max_length;		/* -1: to the end */
};

struct map_entry {
	int64_t start;
	int64_t length;
	int64_t offset;			/* host offset, with has_offset */
	int depth;
	bool data, zero, present, has_offset;
	const char *filename;		/* file holding the data, NULL if unknown */
};

enum { OPT_OUTPUT = 256, OPT_OBJECT, OPT_IMAGE_OPTS };

static void map_parse(int argc, char **argv, struct map_args *a)
{
	static const struct option long_opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "format", required_argument, NULL, 'f' },
		{ "output", required_argument, NULL, OPT_OUTPUT },
		{ "object", required_argument, NULL, OPT_OBJECT },
		{ "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
		{ "force-share", no_argument, NULL, 'U' },
		{ "start-offset", required_argument, NULL, 's' },
		{ "max-length", required_argument, NULL, 'l' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	/* -s and -l: qemu-img's undocumented short forms of --start-offset and --max-length */
	while ((c = getopt_long(argc, argv, ":f:s:l:hU", long_opts, NULL)) != -1) {
		switch (c) {
		case '?': case ':': img_bad_option(c, argv);
		case 'h': img_help();
		case 'f': a->open.fmt = optarg; break;
		case 'U': a->open.flags |= TBLK_OPEN_SHARE_RW; break;
		case OPT_OUTPUT: a->output = optarg; break;
		case OPT_IMAGE_OPTS: a->open.image_opts = true; break;
		case OPT_OBJECT: img_object_check(optarg); break;
		case 's':
			a->start = img_cvtnum_full("start offset", optarg, 0, INT64_MAX);
			if (a->start < 0)
				exit(1);
			break;
		case 'l':
			a->max_length = img_cvtnum_full("max length", optarg, 0, INT64_MAX);
			if (a->max_length < 0)
				exit(1);
			break;
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

/* The file names of the layers of the chain, found as they are first needed. */
struct chain_names {
	struct tblk_blk *blk;
	GPtrArray *names;		/* char *, by depth; NULL where unknown */
};

/* qemu's way of naming a relative backing file: next to the image that records it. */
static char *path_combine(const char *base, const char *name)
{
	const char *slash = strrchr(base, '/');

	if (name[0] == '/' || !slash)
		return g_strdup(name);
	return g_strdup_printf("%.*s%s", (int)(slash - base + 1), base, name);
}

/* Opens layer @depth - 1 again (read-only, shared) to learn what backing file it names. */
static char *backing_name(struct tblk_blk *top, const char *name, int depth)
{
	struct tblk_format_info info;
	struct tblk_blk *blk = top;
	GError *err = NULL;
	char *ret = NULL;

	if (depth > 1) {
		GHashTable *opts = tblk_opts_new();

		if (tblk_blk_open(&blk, name, opts, TBLK_OPEN_SHARE_RW | TBLK_OPEN_NODE_OPTS,
				  NULL, &err) < 0)
			blk = NULL;
		g_clear_error(&err);
		g_hash_table_unref(opts);
	}
	if (blk && tblk_blk_get_format_info(blk, &info) == 0 && info.backing_file)
		ret = path_combine(name, info.backing_file);
	if (blk != top)
		tblk_blk_close(blk);
	return ret;
}

/* The file name of the layer at @depth, for the human output; NULL if unknown. */
static const char *layer_filename(struct chain_names *cn, int depth)
{
	if (!cn->names->len)
		g_ptr_array_add(cn->names, g_strdup(tblk_blk_filename(cn->blk)));
	while ((int)cn->names->len <= depth) {
		const char *prev = g_ptr_array_index(cn->names, cn->names->len - 1);

		g_ptr_array_add(cn->names, prev ? backing_name(cn->blk, prev, cn->names->len) :
					   NULL);
	}
	return g_ptr_array_index(cn->names, depth);
}

static int get_entry(struct chain_names *cn, int64_t offset, int64_t bytes,
		     struct map_entry *e)
{
	struct img_status st;
	int ret = img_block_status(cn->blk, (uint64_t)offset, (uint64_t)bytes, &st);

	if (ret < 0)
		return ret;
	*e = (struct map_entry){
		.start = offset,
		.length = (int64_t)st.pnum,
		.depth = st.depth,
		.data = st.bits & TBLK_BS_DATA,
		.zero = st.bits & TBLK_BS_ZERO,
		.present = st.present,
		.has_offset = st.bits & TBLK_BS_OFFSET_VALID,
		.offset = (int64_t)st.map,
	};
	if (e->has_offset)
		e->filename = layer_filename(cn, st.depth);
	return 0;
}

static bool mergeable(const struct map_entry *a, const struct map_entry *b)
{
	if (a->depth != b->depth || a->data != b->data || a->zero != b->zero ||
	    a->present != b->present || a->has_offset != b->has_offset)
		return false;
	return !a->has_offset || a->offset + a->length == b->offset;
}

/* Prints @e; @next (NULL for the last) may be adjusted so that the human output merges. */
static int dump_entry(bool json, const struct map_entry *e, struct map_entry *next)
{
	if (json) {
		printf("{ \"start\": %" PRId64 ", \"length\": %" PRId64 ", \"depth\": %d, "
		       "\"present\": %s, \"zero\": %s, \"data\": %s", e->start, e->length,
		       e->depth, e->present ? "true" : "false", e->zero ? "true" : "false",
		       e->data ? "true" : "false");
		if (e->has_offset)
			printf(", \"offset\": %" PRId64, e->offset);
		printf("}%s", next ? ",\n" : "");
		return 0;
	}
	if (e->data && !e->has_offset) {
		tool_error("File contains external, encrypted or compressed clusters.");
		return -1;
	}
	if (e->data && !e->zero)
		printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n", (uint64_t)e->start,
		       (uint64_t)e->length, e->has_offset ? (uint64_t)e->offset : 0,
		       e->filename ? e->filename : "");
	/* Unallocated, zero and zero-data all print nothing: let them merge. */
	if (next && (!next->data || next->zero)) {
		next->data = false;
		next->zero = true;
	}
	return 0;
}

static int map_run(struct chain_names *cn, const struct map_args *a, bool json)
{
	struct map_entry curr = { .start = a->start }, next;
	int64_t length = tblk_blk_getlength(cn->blk);
	int ret;

	if (length < 0) {
		tool_error("Failed to get size for '%s'", a->open.filename);
		return -1;
	}
	/* qemu adds in signed 64 bits; an overflow leaves nothing to map. */
	if (a->max_length >= 0) {
		int64_t end = (int64_t)((uint64_t)a->start + (uint64_t)a->max_length);

		if (end < length)
			length = end;
	}
	if (json)
		printf("[");
	else
		printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
	while (curr.start + curr.length < length) {
		int64_t offset = curr.start + curr.length;

		ret = get_entry(cn, offset, length - offset, &next);
		if (ret < 0) {
			tool_error("Could not read file metadata: %s", strerror(-ret));
			return -1;
		}
		if (mergeable(&curr, &next)) {
			curr.length += next.length;
			continue;
		}
		if (curr.length > 0 && dump_entry(json, &curr, &next) < 0)
			return -1;
		curr = next;
	}
	ret = dump_entry(json, &curr, NULL);
	if (json)
		printf("]\n");
	return ret;
}

int img_map(int argc, char **argv)
{
	struct map_args a = { .output = "human", .max_length = -1 };
	struct chain_names cn = { .names = g_ptr_array_new_with_free_func(g_free) };
	int ret;

	map_parse(argc, argv, &a);
	if (img_open(&cn.blk, &a.open, NULL) < 0)
		return 1;
	ret = map_run(&cn, &a, !strcmp(a.output, "json"));
	tblk_blk_close(cn.blk);
	g_ptr_array_free(cn.names, TRUE);
	return ret < 0 ? 1 : 0;
}
