/* SPDX-License-Identifier: MIT */
/*
 * img-rebase.c - "tblk-img rebase": qemu-img rebase's command line and messages. Safe mode
 * compares the old and the new backing file where the image itself holds nothing and
 * copies into the image only the sectors where they differ (2 MiB at a time, as qemu-img,
 * so -p prints the same figures), then rewrites the backing file name and format in the
 * header; unsafe mode (-u) only rewrites the header. A new backing file already in the
 * image's chain is read as that layer, and only ranges changed above it are compared.
 *
 * Also the lookup of a backing file by name in a chain (qemu's rules), shared with commit.
 *
 * Threading: single-threaded.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "tools/img-int.h"

#define REBASE_BUF	(2u << 20)	/* qemu-img's IO_BUF_SIZE */
#define SECTOR		512

struct rebase_args {
	struct img_open_opts open;
	const char *cache, *src_cache;
	const char *base, *base_fmt;	/* -b (NULL: none given), -F */
	bool unsafe, progress, quiet, force_share;
};

/* ---------------------------------------------------------------- backing file names */

static bool has_protocol(const char *name)
{
	const char *p = name + strcspn(name, ":/");

	return name[0] != '/' && *p == ':' && strncmp(name, "json:", 5);
}

char *img_path_relative_to(const char *image, const char *name)
{
	const char *slash;

	if (name[0] == '/' || has_protocol(name) || !image || has_protocol(image))
		return g_strdup(name);
	/* qemu keeps the image's directory as written ("./a" gives "./b"). */
	slash = strrchr(image, '/');
	if (!slash)
		return g_strdup(name);
	return g_strdup_printf("%.*s%s", (int)(slash - image + 1), image, name);
}

/* True if @name, made absolute relative to @l, is the backing file @l records. */
static bool names_backing(const struct tblk_chain_layer *l, const char *name)
{
	g_autofree char *full = img_path_relative_to(l->filename, l->backing_file);
	g_autofree char *a = NULL, *b = NULL;

	if (has_protocol(name) || has_protocol(l->backing_file))
		return !strcmp(name, l->backing_file) || !strcmp(name, full);
	g_free(full);
	full = img_path_relative_to(l->filename, name);
	a = realpath(full, NULL);
	g_free(full);
	full = img_path_relative_to(l->filename, l->backing_file);
	b = realpath(full, NULL);
	return a && b && !strcmp(a, b);
}

int img_find_backing_image(struct tblk_blk *blk, const char *name)
{
	struct tblk_chain_layer l;

	for (int d = 0; tblk_blk_chain_layer(blk, d, &l) == 0; d++) {
		struct tblk_chain_layer below;

		if (!l.backing_file || tblk_blk_chain_layer(blk, d + 1, &below) < 0)
			break;
		if (names_backing(&l, name))
			return d + 1;
	}
	return -1;
}

int img_open_layer(struct tblk_blk **pblk, struct tblk_blk *chain, int depth,
		   unsigned int flags, GError **errp)
{
	struct tblk_chain_layer l;
	GHashTable *opts;
	int ret;

	if (tblk_blk_chain_layer(chain, depth, &l) < 0)
		return -ENOENT;
	opts = tblk_opts_new();
	g_hash_table_insert(opts, g_strdup("driver"), g_strdup(l.format));
	/*
	 * Our own chain holds it open already, and its locks keep other writers out: no
	 * second set of locks, which would conflict with our own.
	 */
	g_hash_table_insert(opts, g_strdup("file.locking"), g_strdup("off"));
	ret = tblk_blk_open(pblk, l.filename, opts, flags | TBLK_OPEN_NODE_OPTS, NULL, errp);
	g_hash_table_unref(opts);
	return ret;
}

/* ---------------------------------------------------------------- command line */

static void rebase_parse(int argc, char **argv, struct rebase_args *a)
{
	int c;

	while ((c = getopt_long(argc, argv, ":hf:F:b:upt:T:qU", img_long_opts, NULL)) != -1) {
		if (img_common_opt(c, argv, &a->open.image_opts))
			continue;
		switch (c) {
		case 'f': a->open.fmt = optarg; break;
		case 'F': a->base_fmt = optarg; break;
		case 'b': a->base = optarg; break;
		case 'u': a->unsafe = true; break;
		case 'p': a->progress = true; break;
		case 't': a->cache = optarg; break;
		case 'T': a->src_cache = optarg; break;
		case 'q': a->quiet = true; break;
		case 'U': a->force_share = true; break;
		}
	}
	if (a->quiet)
		a->progress = false;
	if (optind != argc - 1)
		img_error_exit("Expecting one image file name");
	if (!a->unsafe && !a->base)
		img_error_exit("Must specify backing file (-b) or use unsafe mode (-u)");
	a->open.filename = argv[optind];
}

/* ---------------------------------------------------------------- safe mode */

struct rebase {
	const struct rebase_args *a;
	struct tblk_blk *blk;		/* the image */
	struct tblk_blk *old_b;		/* its backing file, NULL if none */
	struct tblk_blk *new_b;		/* the new one, NULL for -b "" */
	int prefix_depth;		/* the new one is this layer of the chain, or -1 */
	unsigned int src_flags;
	int64_t size, old_size, new_size;
	uint8_t *buf_old, *buf_new;
};

/* Opens the backing file to compare with: a layer of the chain or a file of its own. */
static int open_new_backing(struct rebase *rb)
{
	const struct rebase_args *a = rb->a;
	struct tblk_chain_layer top;
	g_autofree char *path = NULL;
	GHashTable *opts;
	GError *err = NULL;
	int ret;

	tblk_blk_chain_layer(rb->blk, 0, &top);
	path = img_path_relative_to(top.filename, a->base);
	rb->prefix_depth = img_find_backing_image(rb->blk, path);
	if (rb->prefix_depth > 0) {
		ret = img_open_layer(&rb->new_b, rb->blk, rb->prefix_depth, rb->src_flags, &err);
		if (ret < 0)
			tool_error_gerror(err, "Could not reuse backing file '%s': ", a->base);
		return ret;
	}
	opts = tblk_opts_new();
	if (a->base_fmt)
		g_hash_table_insert(opts, g_strdup("driver"), g_strdup(a->base_fmt));
	ret = tblk_blk_open(&rb->new_b, path, opts, rb->src_flags | TBLK_OPEN_NODE_OPTS |
			    (a->force_share ? TBLK_OPEN_SHARE_RW : 0), NULL, &err);
	g_hash_table_unref(opts);
	if (ret < 0)
		tool_error_gerror(err, "Could not open new backing file '%s': ", a->base);
	return ret;
}

static int open_backings(struct rebase *rb)
{
	GError *err = NULL;
	int ret;

	if (tblk_blk_chain_length(rb->blk) > 1) {
		ret = img_open_layer(&rb->old_b, rb->blk, 1, rb->src_flags, &err);
		if (ret < 0) {
			struct tblk_chain_layer l;

			tblk_blk_chain_layer(rb->blk, 1, &l);
			tool_error_gerror(err, "Could not reuse old backing file '%s': ",
					  l.filename);
			return ret;
		}
	}
	if (rb->a->base[0] && open_new_backing(rb) < 0)
		return -EINVAL;
	return 0;
}

/* Length of the leading run of [0, bytes) that is equal (false) or differs (true). */
static bool compare_run(const uint8_t *a, const uint8_t *b, int64_t bytes, int64_t *pnum)
{
	int64_t i = bytes < SECTOR ? bytes : SECTOR;
	bool differ = memcmp(a, b, (size_t)i) != 0;

	while (i < bytes) {
		int64_t len = bytes - i < SECTOR ? bytes - i : SECTOR;

		if ((memcmp(a + i, b + i, (size_t)len) != 0) != differ)
			break;
		i += len;
	}
	*pnum = i;
	return differ;
}

/*
 * Whether the image must act on [off, off + *n): not held by the image itself and, with the
 * new backing file in the chain, changed above it. 1 act, 0 skip, -errno; *n is cut.
 */
static int needs_action(struct rebase *rb, int64_t off, int64_t *n)
{
	uint64_t pnum = 0;
	int depth = 0;
	int ret = tblk_blk_block_status(rb->blk, (uint64_t)off, (uint64_t)*n, &pnum, NULL);

	if (ret < 0)
		return ret;
	if (pnum > 0 && pnum < (uint64_t)*n)
		*n = (int64_t)pnum;
	if (ret & TBLK_BS_ALLOCATED)
		return 0;
	if (rb->prefix_depth <= 0)
		return 1;
	ret = tblk_blk_block_status_depth(rb->blk, (uint64_t)off, (uint64_t)*n, &pnum, NULL,
					  &depth);
	if (ret < 0)
		return ret;
	if (pnum > 0 && pnum < (uint64_t)*n)
		*n = (int64_t)pnum;
	return depth < rb->prefix_depth;
}

/* Reads @n bytes at @off of a backing file of @size bytes; *zero if past its end. */
static int read_backing(struct tblk_blk *b, int64_t size, int64_t off, int64_t *n,
			uint8_t *buf, bool *zero)
{
	if (!b || off >= size) {
		memset(buf, 0, (size_t)*n);
		*zero = true;
		return 0;
	}
	*zero = false;
	if (off + *n > size)
		*n = size - off;
	return tblk_blk_pread(b, (uint64_t)off, buf, (size_t)*n, 0);
}

static int copy_differences(struct rebase *rb, int64_t off, int64_t n, bool old_zero)
{
	for (int64_t done = 0; done < n;) {
		int64_t pnum;
		int ret = 0;

		if (compare_run(rb->buf_old + done, rb->buf_new + done, n - done, &pnum)) {
			if (old_zero)
				ret = tblk_blk_pwrite_zeroes(rb->blk, (uint64_t)(off + done),
							     (uint64_t)pnum, 0);
			else
				ret = tblk_blk_pwrite(rb->blk, (uint64_t)(off + done),
						      rb->buf_old + done, (size_t)pnum, 0);
			if (ret < 0) {
				tool_error("Error while writing to COW image: %s", strerror(-ret));
				return ret;
			}
		}
		done += pnum;
	}
	return 0;
}

static int rebase_copy(struct rebase *rb)
{
	float step = 0;
	int64_t n;

	if (rb->size)
		step = (float)100 / (float)(rb->size / (rb->size < REBASE_BUF ? rb->size :
							   REBASE_BUF));
	for (int64_t off = 0; off < rb->size; off += n) {
		bool old_zero, new_zero;
		int ret;

		n = rb->size - off < REBASE_BUF ? rb->size - off : REBASE_BUF;
		ret = needs_action(rb, off, &n);
		if (ret < 0) {
			tool_error("error while reading image metadata: %s", strerror(-ret));
			return ret;
		}
		if (!ret)
			continue;
		ret = read_backing(rb->old_b, rb->old_size, off, &n, rb->buf_old, &old_zero);
		if (ret < 0) {
			tool_error("error while reading from old backing file");
			return ret;
		}
		ret = read_backing(rb->new_b, rb->new_size, off, &n, rb->buf_new, &new_zero);
		if (ret < 0) {
			tool_error("error while reading from new backing file");
			return ret;
		}
		ret = copy_differences(rb, off, n, old_zero);
		if (ret < 0)
			return ret;
		img_progress_print(step, 100);
	}
	return 0;
}

static int rebase_safe(struct rebase *rb)
{
	int ret = open_backings(rb);

	if (ret < 0)
		return ret;
	rb->size = tblk_blk_getlength(rb->blk);
	if (rb->size < 0) {
		tool_error("Could not get size of '%s': %s", rb->a->open.filename,
			   strerror((int)-rb->size));
		return (int)rb->size;
	}
	rb->old_size = rb->old_b ? tblk_blk_getlength(rb->old_b) : 0;
	rb->new_size = rb->new_b ? tblk_blk_getlength(rb->new_b) : 0;
	if (rb->old_size < 0 || rb->new_size < 0) {
		tool_error("Could not get size of the backing file: %s",
			   strerror((int)-(rb->old_size < 0 ? rb->old_size : rb->new_size)));
		return -EIO;
	}
	rb->buf_old = tool_buf_new(REBASE_BUF, 0);
	rb->buf_new = tool_buf_new(REBASE_BUF, 0);
	if (!rb->buf_old || !rb->buf_new) {
		tool_error("Could not allocate buffers");
		return -ENOMEM;
	}
	return rebase_copy(rb);
}

/* ---------------------------------------------------------------- the header */

static int change_backing(struct rebase *rb)
{
	const struct rebase_args *a = rb->a;
	bool set = a->base && a->base[0];
	int ret;

	/* qemu insists on a format for a new backing file. */
	if (set && !a->base_fmt)
		ret = -EINVAL;
	else
		ret = tblk_blk_change_backing_file(rb->blk, set ? a->base : NULL,
						   set ? a->base_fmt : NULL);
	if (ret == -ENOSPC)
		tool_error("Could not change the backing file to '%s': No space left in the "
			   "file header", a->base ? a->base : "(null)");
	else if (ret == -EINVAL && set && !a->base_fmt)
		tool_error("Could not change the backing file to '%s': backing format must be "
			   "specified", a->base);
	else if (ret < 0)
		tool_error("Could not change the backing file to '%s': %s",
			   a->base ? a->base : "(null)", strerror(-ret));
	return ret;
}

static int rebase_run(struct rebase *rb)
{
	struct rebase_args *a = (struct rebase_args *)rb->a;
	GError *err = NULL;
	int ret;

	a->open.flags = TBLK_OPEN_RDWR | (a->unsafe ? TBLK_OPEN_NO_BACKING : 0);
	if (tblk_parse_cache_mode(a->cache, &a->open.flags, &err) < 0) {
		g_clear_error(&err);
		tool_error("Invalid cache option: %s", a->cache);
		return -EINVAL;
	}
	if (tblk_parse_cache_mode(a->src_cache, &rb->src_flags, &err) < 0) {
		g_clear_error(&err);
		tool_error("Invalid source cache option: %s", a->src_cache);
		return -EINVAL;
	}
	if (img_open(&rb->blk, &a->open, NULL) < 0)
		return -EINVAL;
	if (a->base_fmt && !img_fmt_known(a->base_fmt)) {
		tool_error("Invalid format name: '%s'", a->base_fmt);
		return -EINVAL;
	}
	if (!a->unsafe) {
		ret = rebase_safe(rb);
		if (ret < 0)
			return ret;
	}
	ret = change_backing(rb);
	img_progress_print(100, 0);
	return ret;
}

int img_rebase(int argc, char **argv)
{
	struct rebase_args a = { .cache = "writeback", .src_cache = "writeback" };
	struct rebase rb = { .a = &a, .prefix_depth = -1 };
	int ret;

	rebase_parse(argc, argv, &a);
	img_progress_init(a.progress, 2.0f);
	img_progress_print(0, 100);
	ret = rebase_run(&rb);
	img_progress_end();
	tool_buf_free(rb.buf_old);
	tool_buf_free(rb.buf_new);
	tblk_blk_close(rb.old_b);
	tblk_blk_close(rb.new_b);
	tblk_blk_close(rb.blk);
	return ret < 0 ? 1 : 0;
}
