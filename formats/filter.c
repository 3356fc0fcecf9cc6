/* SPDX-License-Identifier: MIT */
/*
 * filter.c - the child opening and pass-through operations of filter drivers. A filter's
 * `file` child is an image (format node), not a protocol. No state of its own: any thread.
 */
#include "formats/filter.h"

int tblk__filter_open_child(struct tblk_node *node, GHashTable *opts, unsigned int flags,
			    GError **errp)
{
	g_autoptr(GHashTable) copts = tblk__opts_extract_prefix(opts, "file");
	g_autofree char *ref = tblk__opts_take(opts, "file");
	g_autofree char *fname = NULL;

	if (ref)
		return tblk__opts_child_reference(ref, copts, errp);
	/* Without a driver the file name is the image to probe, not an option of its own. */
	if (!g_hash_table_contains(copts, "driver"))
		fname = tblk__opts_take(copts, "filename");
	if (!fname)
		fname = g_strdup(node->filename);
	if (!fname && !g_hash_table_contains(copts, "driver"))
		return tblk_error_set(errp, EINVAL, "A block device must be specified for "
				      "\"file\"");
	flags &= ~(TBLK_OPEN_PROTOCOL | TBLK_OPEN_COPY_ON_READ);
	return tblk__node_open(&node->file, fname, copts, flags, errp);
}

int tblk__filter_preadv(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			const struct iovec *iov, int iovcnt, unsigned int flags)
{
	return tblk_node_preadv(node->file, offset, bytes, iov, iovcnt, flags);
}

int tblk__filter_pwritev(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			 const struct iovec *iov, int iovcnt, unsigned int flags)
{
	return tblk_node_pwritev(node->file, offset, bytes, iov, iovcnt, flags);
}

int tblk__filter_pdiscard(struct tblk_node *node, uint64_t offset, uint64_t bytes)
{
	return tblk_node_pdiscard(node->file, offset, bytes);
}

int tblk__filter_pwrite_zeroes(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			       unsigned int flags)
{
	return tblk_node_pwrite_zeroes(node->file, offset, bytes, flags);
}

int tblk__filter_block_status(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			      uint64_t *pnum, uint64_t *map)
{
	return tblk_node_block_status(node->file, offset, bytes, pnum, map);
}

uint32_t tblk__filter_cluster_size(struct tblk_node *node)
{
	struct tblk_node *f = node->file;

	return f->drv->cluster_size ? f->drv->cluster_size(f) : 0;
}

int tblk__filter_get_info(struct tblk_node *node, struct tblk_format_info *info)
{
	struct tblk_node *f = node->file;

	return f->drv->get_info ? f->drv->get_info(f, info) : 0;
}

int tblk__filter_truncate(struct tblk_node *node, uint64_t size, const char *prealloc,
			  GError **errp)
{
	struct tblk_node *f = node->file;

	if (!f->drv->truncate)
		return tblk_error_set(errp, ENOTSUP, "Image format driver does not support "
				      "resize");
	return f->drv->truncate(f, size, prealloc, errp);
}

