/* SPDX-License-Identifier: MIT */
/*
 * throttle-filter.c - the throttle filter (driver=throttle,throttle-group=NAME,file...):
 * every read, write and zero write through it waits for budget from the named group, which
 * --object throttle-group (tblk_throttle_group_new()) or a backend's throttling.group made.
 * The filter runs in the thread carrying the request, so it waits by sleeping there; in a
 * pool worker the pool's wait service counts that worker as blocked and starts another for
 * queued work. A drain of the filter or of any node above it lets waiting requests go at
 * once (charged to the group) and new ones through unthrottled until it ends, as qemu's
 * throttle driver does, so a drain never waits out the limits.
 *
 * Threading: the member is [const] after open; the group guards its own state.
 */
#include "formats/filter.h"
#include "tracked/throttle.h"

struct thr_filter {
	struct tblk__thr_member *member;	/* [const] */
};

static int thr_open(struct tblk_node *node, GHashTable *opts, unsigned int flags,
		    GError **errp)
{
	struct thr_filter *s = node->opaque;
	g_autofree char *group = tblk__opts_take(opts, "throttle-group");
	int ret;

	if (!group)
		return tblk_error_set(errp, EINVAL, "Please specify a throttle group");
	ret = tblk__thr_member_new(&s->member, group, NULL, NULL, errp);
	if (ret < 0)
		return ret;
	ret = tblk__filter_open_child(node, opts, flags, errp);
	if (ret < 0) {
		tblk__thr_member_free(s->member);
		return ret;
	}
	node->limits.mem_alignment = node->file->limits.mem_alignment;
	return 0;
}

static void thr_close(struct tblk_node *node)
{
	struct thr_filter *s = node->opaque;

	tblk__thr_member_free(s->member);
}

static int thr_preadv(struct tblk_node *node, uint64_t offset, uint64_t bytes,
		      const struct iovec *iov, int iovcnt, unsigned int flags)
{
	struct thr_filter *s = node->opaque;

	tblk__thr_throttle_sync(s->member, false, bytes);
	return tblk_node_preadv(node->file, offset, bytes, iov, iovcnt, flags);
}

static int thr_pwritev(struct tblk_node *node, uint64_t offset, uint64_t bytes,
		       const struct iovec *iov, int iovcnt, unsigned int flags)
{
	struct thr_filter *s = node->opaque;

	tblk__thr_throttle_sync(s->member, true, bytes);
	return tblk_node_pwritev(node->file, offset, bytes, iov, iovcnt, flags);
}

static int thr_pwrite_zeroes(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			     unsigned int flags)
{
	struct thr_filter *s = node->opaque;

	tblk__thr_throttle_sync(s->member, true, bytes);
	return tblk_node_pwrite_zeroes(node->file, offset, bytes, flags);
}

static void thr_drain_begin(struct tblk_node *node)
{
	struct thr_filter *s = node->opaque;

	tblk__thr_member_drain(s->member, true);
}

static void thr_drain_end(struct tblk_node *node)
{
	struct thr_filter *s = node->opaque;

	tblk__thr_member_drain(s->member, false);
}

const struct tblk_driver tblk__drv_throttle = {
	.name = "throttle",
	.instance_size = sizeof(struct thr_filter),
	.open = thr_open,
	.close = thr_close,
	.preadv = thr_preadv,
	.pwritev = thr_pwritev,
	.pdiscard = tblk__filter_pdiscard,
	.pwrite_zeroes = thr_pwrite_zeroes,
	.block_status = tblk__filter_block_status,
	.cluster_size = tblk__filter_cluster_size,
	.get_info = tblk__filter_get_info,
	.truncate = tblk__filter_truncate,
	.drain_begin = thr_drain_begin,
	.drain_end = thr_drain_end,
};
