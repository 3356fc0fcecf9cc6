/* SPDX-License-Identifier: MIT */
/*
 * io-open-snapshot.c - "-s" of tblk-io and of its open command: the image is opened
 * read-only as the backing file of a temporary qcow2 overlay that takes every write, so the
 * image itself never changes. The overlay is created in $TMPDIR (default /var/tmp) and
 * unlinked at once; the tool keeps a descriptor of it and opens it through /proc/self/fd,
 * so a reopen finds it again and nothing is left behind, even after a crash.
 *
 * Threading: the tool's single thread.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tools/io-int.h"

/* The image's size and format, from opening it read-only as the user asked. */
static int probe_base(struct io_ctx *io, const struct io_open_req *r, int64_t *size,
		      char **fmt, GError **errp)
{
	struct tblk_blk *blk;
	int ret;

	/* (copy-on-read is the overlay's: it copies into the overlay) */
	ret = tblk_blk_open(&blk, r->filename, r->opts,
			    (r->flags & ~(TBLK_OPEN_RDWR | TBLK_OPEN_COPY_ON_READ)) |
			    TBLK_OPEN_NODE_OPTS, io->loop, errp);
	if (ret < 0)
		return ret;
	*size = tblk_blk_getlength(blk);
	*fmt = g_strdup(tblk_blk_format_name(blk));
	tblk_blk_close(blk);
	if (*size < 0) {
		g_free(*fmt);
		g_set_error(errp, tblk_error_quark(), (int)-*size, "Could not get image size");
		return (int)*size;
	}
	return 0;
}

/* Creates the overlay and returns a descriptor of it, already unlinked; -errno and *errp. */
static int create_overlay(int64_t size, const char *backing, const char *fmt, GError **errp)
{
	const char *dir = getenv("TMPDIR");
	char *path = g_build_filename(dir && *dir ? dir : "/var/tmp", "vl.XXXXXX", NULL);
	GHashTable *copts = tblk_opts_new();
	int fd, ret;

	fd = mkstemp(path);
	if (fd < 0) {
		ret = -errno;
		g_set_error(errp, tblk_error_quark(), -ret, "Could not get temporary filename: %s",
			    strerror(-ret));
		goto out;
	}
	close(fd);
	g_hash_table_insert(copts, g_strdup("backing_file"), g_strdup(backing));
	g_hash_table_insert(copts, g_strdup("backing_fmt"), g_strdup(fmt));
	ret = tblk_img_create(path, "qcow2", (uint64_t)size, copts, errp);
	fd = ret < 0 ? -1 : open(path, O_RDWR | O_CLOEXEC);
	if (ret == 0 && fd < 0) {
		ret = -errno;
		g_set_error(errp, tblk_error_quark(), -ret, "Could not open '%s': %s", path,
			    strerror(-ret));
	}
	unlink(path);
	if (ret == 0)
		ret = fd;
out:
	g_hash_table_unref(copts);
	g_free(path);
	return ret;
}

int io_open_snapshot(struct io_ctx *io, const struct io_open_req *r, GError **errp)
{
	const char *name = r->filename ? r->filename : g_hash_table_lookup(r->opts,
									  "file.filename");
	GHashTable *oopts = tblk_opts_new();
	char *fmt = NULL, *backing = NULL, *ofile = NULL;
	GHashTableIter it;
	gpointer k, v;
	int64_t size;
	int fd, ret;

	if (!name) {
		ret = -ENOTSUP;
		g_set_error(errp, tblk_error_quark(), ENOTSUP, "-s needs an image file name");
		goto out;
	}
	ret = probe_base(io, r, &size, &fmt, errp);
	if (ret < 0)
		goto out;
	backing = g_canonicalize_filename(name, NULL);
	fd = create_overlay(size, backing, fmt, errp);
	if (fd < 0) {
		ret = fd;
		goto out;
	}
	/* The image keeps the options it was given, one level down. */
	g_hash_table_iter_init(&it, r->opts);
	while (g_hash_table_iter_next(&it, &k, &v))
		g_hash_table_insert(oopts, g_strdup_printf("backing.%s", (char *)k), g_strdup(v));
	if (!g_hash_table_contains(oopts, "backing.driver"))
		g_hash_table_insert(oopts, g_strdup("backing.driver"), g_strdup(fmt));
	g_hash_table_insert(oopts, g_strdup("driver"), g_strdup("qcow2"));
	ofile = g_strdup_printf("/proc/self/fd/%d", fd);
	ret = tblk_blk_open(&io->blk, ofile, oopts, r->flags | TBLK_OPEN_NODE_OPTS, io->loop, errp);
	if (ret < 0) {
		close(fd);
		goto out;
	}
	io_save_open_state(io, ofile, oopts, r->flags);
	io->open.snapshot_fd = fd;
out:
	g_hash_table_unref(oopts);
	g_free(ofile);
	g_free(backing);
	g_free(fmt);
	return ret;
}
