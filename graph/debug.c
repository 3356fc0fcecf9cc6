/* SPDX-License-Identifier: MIT */
/*
 * debug.c - the core side of fault injection: qemu's blkdebug event names, delivering an
 * event raised by a format to the debug node below it, finding that node for breakpoint
 * control, and the process-wide notifier a tool uses to report stopped requests.
 *
 * Threading: events are delivered in the thread of the request raising them; the lookups
 * walk [const] node fields. The notifier is set by the tool before any request runs
 * ([atomic] pointer pair under notify_lock so a reader sees a matching pair).
 */
#include <string.h>

#include "graph/graph.h"

static const char *const event_names[TBLK_DBG__MAX] = {
	[TBLK_DBG_L1_UPDATE] = "l1_update",
	[TBLK_DBG_L1_GROW_ALLOC_TABLE] = "l1_grow_alloc_table",
	[TBLK_DBG_L1_GROW_WRITE_TABLE] = "l1_grow_write_table",
	[TBLK_DBG_L1_GROW_ACTIVATE_TABLE] = "l1_grow_activate_table",
	[TBLK_DBG_L2_LOAD] = "l2_load",
	[TBLK_DBG_L2_UPDATE] = "l2_update",
	[TBLK_DBG_L2_UPDATE_COMPRESSED] = "l2_update_compressed",
	[TBLK_DBG_L2_ALLOC_COW_READ] = "l2_alloc_cow_read",
	[TBLK_DBG_L2_ALLOC_WRITE] = "l2_alloc_write",
	[TBLK_DBG_READ_AIO] = "read_aio",
	[TBLK_DBG_READ_BACKING_AIO] = "read_backing_aio",
	[TBLK_DBG_READ_COMPRESSED] = "read_compressed",
	[TBLK_DBG_WRITE_AIO] = "write_aio",
	[TBLK_DBG_WRITE_COMPRESSED] = "write_compressed",
	[TBLK_DBG_VMSTATE_LOAD] = "vmstate_load",
	[TBLK_DBG_VMSTATE_SAVE] = "vmstate_save",
	[TBLK_DBG_COW_READ] = "cow_read",
	[TBLK_DBG_COW_WRITE] = "cow_write",
	[TBLK_DBG_REFTABLE_LOAD] = "reftable_load",
	[TBLK_DBG_REFTABLE_GROW] = "reftable_grow",
	[TBLK_DBG_REFTABLE_UPDATE] = "reftable_update",
	[TBLK_DBG_REFBLOCK_LOAD] = "refblock_load",
	[TBLK_DBG_REFBLOCK_UPDATE] = "refblock_update",
	[TBLK_DBG_REFBLOCK_UPDATE_PART] = "refblock_update_part",
	[TBLK_DBG_REFBLOCK_ALLOC] = "refblock_alloc",
	[TBLK_DBG_REFBLOCK_ALLOC_HOOKUP] = "refblock_alloc_hookup",
	[TBLK_DBG_REFBLOCK_ALLOC_WRITE] = "refblock_alloc_write",
	[TBLK_DBG_REFBLOCK_ALLOC_WRITE_BLOCKS] = "refblock_alloc_write_blocks",
	[TBLK_DBG_REFBLOCK_ALLOC_WRITE_TABLE] = "refblock_alloc_write_table",
	[TBLK_DBG_REFBLOCK_ALLOC_SWITCH_TABLE] = "refblock_alloc_switch_table",
	[TBLK_DBG_CLUSTER_ALLOC] = "cluster_alloc",
	[TBLK_DBG_CLUSTER_ALLOC_BYTES] = "cluster_alloc_bytes",
	[TBLK_DBG_CLUSTER_FREE] = "cluster_free",
	[TBLK_DBG_FLUSH_TO_OS] = "flush_to_os",
	[TBLK_DBG_FLUSH_TO_DISK] = "flush_to_disk",
	[TBLK_DBG_PWRITEV_RMW_HEAD] = "pwritev_rmw_head",
	[TBLK_DBG_PWRITEV_RMW_AFTER_HEAD] = "pwritev_rmw_after_head",
	[TBLK_DBG_PWRITEV_RMW_TAIL] = "pwritev_rmw_tail",
	[TBLK_DBG_PWRITEV_RMW_AFTER_TAIL] = "pwritev_rmw_after_tail",
	[TBLK_DBG_PWRITEV] = "pwritev",
	[TBLK_DBG_PWRITEV_ZERO] = "pwritev_zero",
	[TBLK_DBG_PWRITEV_DONE] = "pwritev_done",
	[TBLK_DBG_EMPTY_IMAGE_PREPARE] = "empty_image_prepare",
	[TBLK_DBG_L1_SHRINK_WRITE_TABLE] = "l1_shrink_write_table",
	[TBLK_DBG_L1_SHRINK_FREE_L2_CLUSTERS] = "l1_shrink_free_l2_clusters",
	[TBLK_DBG_COR_WRITE] = "cor_write",
	[TBLK_DBG_CLUSTER_ALLOC_SPACE] = "cluster_alloc_space",
	[TBLK_DBG_NONE] = "none",
};

const char *tblk__debug_event_name(enum tblk_debug_event ev)
{
	return (unsigned int)ev < TBLK_DBG__MAX ? event_names[ev] : NULL;
}

int tblk__debug_event_find(const char *name)
{
	for (int i = 0; i < TBLK_DBG__MAX; i++)
		if (!strcmp(event_names[i], name))
			return i;
	return -ENOENT;
}

/* The first node from @node down the `file` chain whose driver has @op set. */
#define FIND_DEBUG_NODE(node, op)					\
	({								\
		struct tblk_node *n_ = (node);				\
		while (n_ && !n_->drv->op)				\
			n_ = n_->file;					\
		n_;							\
	})

void tblk__node_debug_event(struct tblk_node *child, enum tblk_debug_event ev)
{
	struct tblk_node *n = FIND_DEBUG_NODE(child, debug_event);

	if (n)
		n->drv->debug_event(n, ev);
}

int tblk__node_debug_breakpoint(struct tblk_node *node, const char *event, const char *tag)
{
	struct tblk_node *n = FIND_DEBUG_NODE(node, debug_breakpoint);

	return n ? n->drv->debug_breakpoint(n, event, tag) : -ENOTSUP;
}

int tblk__node_debug_remove_breakpoint(struct tblk_node *node, const char *tag)
{
	struct tblk_node *n = FIND_DEBUG_NODE(node, debug_remove_breakpoint);

	return n ? n->drv->debug_remove_breakpoint(n, tag) : -ENOTSUP;
}

int tblk__node_debug_resume(struct tblk_node *node, const char *tag)
{
	struct tblk_node *n = FIND_DEBUG_NODE(node, debug_resume);

	return n ? n->drv->debug_resume(n, tag) : -ENOTSUP;
}

bool tblk__node_debug_is_suspended(struct tblk_node *node, const char *tag)
{
	struct tblk_node *n = FIND_DEBUG_NODE(node, debug_is_suspended);

	return n ? n->drv->debug_is_suspended(n, tag) : false;
}

/* Lock order: a leaf. */
static pthread_mutex_t notify_lock = PTHREAD_MUTEX_INITIALIZER;
static tblk_debug_notify_fn *notify_fn;	/* [notify_lock] */
static void *notify_opaque;		/* [notify_lock] */

void tblk_debug_set_notify(tblk_debug_notify_fn *fn, void *opaque)
{
	pthread_mutex_lock(&notify_lock);
	notify_fn = fn;
	notify_opaque = opaque;
	pthread_mutex_unlock(&notify_lock);
}

void tblk__debug_notify(const char *tag, bool suspended)
{
	tblk_debug_notify_fn *fn;
	void *opaque;

	pthread_mutex_lock(&notify_lock);
	fn = notify_fn;
	opaque = notify_opaque;
	pthread_mutex_unlock(&notify_lock);
	if (fn)
		fn(opaque, tag, suspended);
}
