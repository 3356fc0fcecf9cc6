/* SPDX-License-Identifier: MIT */
/*
 * filter.h - what the filter drivers (copy-on-read, throttle) share: opening their `file`
 * child as a whole image (a format node, probed if not named) and the operations they pass
 * through unchanged.
 */
#ifndef TBLK_FORMATS_FILTER_H
#define TBLK_FORMATS_FILTER_H

#include "tracked/tracked.h"

/* Opens node->file from the "file.*" keys of @opts (or "file=NAME"). 0 or -errno. */
int tblk__filter_open_child(struct tblk_node *node, GHashTable *opts, unsigned int flags,
			    GError **errp);

int tblk__filter_preadv(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			const struct iovec *iov, int iovcnt, unsigned int flags);
int tblk__filter_pwritev(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			 const struct iovec *iov, int iovcnt, unsigned int flags);
int tblk__filter_pdiscard(struct tblk_node *node, uint64_t offset, uint64_t bytes);
int tblk__filter_pwrite_zeroes(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			       unsigned int flags);
int tblk__filter_block_status(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			      uint64_t *pnum, uint64_t *map);
uint32_t tblk__filter_cluster_size(struct tblk_node *node);
int tblk__filter_get_info(struct tblk_node *node, struct tblk_format_info *info);
int tblk__filter_truncate(struct tblk_node *node, uint64_t size, const char *prealloc,
			  GError **errp);

#endif /* TBLK_FORMATS_FILTER_H */
