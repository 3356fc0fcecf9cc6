/* SPDX-License-Identifier: MIT */
/*
 * graph.h - nodes, the driver table that formats and protocols fill in, and opening nodes
 * from qemu's dotted option syntax.
 *
 * Threading: a node is opened and closed by one control thread; its [const] fields are set
 * during open and read from any thread afterwards. The in-flight state lives in `lock`
 * (see tracked/tracked.h). Driver operations are synchronous and run in the calling thread
 * (a pool worker or a synchronous caller); they may be called concurrently and must guard
 * their own shared state.
 */
#ifndef TBLK_GRAPH_H
#define TBLK_GRAPH_H

#include <sys/uio.h>
#include <tblk/tblk.h>

#include "common/common.h"
#include "threadpool/threadpool.h"

struct tblk_node;
struct tblk_req;

/*
 * Points in a format driver's work that a fault-injection node below it (blkdebug) can
 * act on: qemu's blkdebug event names, in qemu's order (tblk__debug_event_name()).
 */
enum tblk_debug_event {
	TBLK_DBG_L1_UPDATE,
	TBLK_DBG_L1_GROW_ALLOC_TABLE,
	TBLK_DBG_L1_GROW_WRITE_TABLE,
	TBLK_DBG_L1_GROW_ACTIVATE_TABLE,
	TBLK_DBG_L2_LOAD,
	TBLK_DBG_L2_UPDATE,
	TBLK_DBG_L2_UPDATE_COMPRESSED,
	TBLK_DBG_L2_ALLOC_COW_READ,
	TBLK_DBG_L2_ALLOC_WRITE,
	TBLK_DBG_READ_AIO,
	TBLK_DBG_READ_BACKING_AIO,
	TBLK_DBG_READ_COMPRESSED,
	TBLK_DBG_WRITE_AIO,
	TBLK_DBG_WRITE_COMPRESSED,
	TBLK_DBG_VMSTATE_LOAD,
	TBLK_DBG_VMSTATE_SAVE,
	TBLK_DBG_COW_READ,
	TBLK_DBG_COW_WRITE,
	TBLK_DBG_REFTABLE_LOAD,
	TBLK_DBG_REFTABLE_GROW,
	TBLK_DBG_REFTABLE_UPDATE,
	TBLK_DBG_REFBLOCK_LOAD,
	TBLK_DBG_REFBLOCK_UPDATE,
	TBLK_DBG_REFBLOCK_UPDATE_PART,
	TBLK_DBG_REFBLOCK_ALLOC,
	TBLK_DBG_REFBLOCK_ALLOC_HOOKUP,
	TBLK_DBG_REFBLOCK_ALLOC_WRITE,
	TBLK_DBG_REFBLOCK_ALLOC_WRITE_BLOCKS,
	TBLK_DBG_REFBLOCK_ALLOC_WRITE_TABLE,
	TBLK_DBG_REFBLOCK_ALLOC_SWITCH_TABLE,
	TBLK_DBG_CLUSTER_ALLOC,
	TBLK_DBG_CLUSTER_ALLOC_BYTES,
	TBLK_DBG_CLUSTER_FREE,
	TBLK_DBG_FLUSH_TO_OS,
	TBLK_DBG_FLUSH_TO_DISK,
	TBLK_DBG_PWRITEV_RMW_HEAD,
	TBLK_DBG_PWRITEV_RMW_AFTER_HEAD,
	TBLK_DBG_PWRITEV_RMW_TAIL,
	TBLK_DBG_PWRITEV_RMW_AFTER_TAIL,
	TBLK_DBG_PWRITEV,
	TBLK_DBG_PWRITEV_ZERO,
	TBLK_DBG_PWRITEV_DONE,
	TBLK_DBG_EMPTY_IMAGE_PREPARE,
	TBLK_DBG_L1_SHRINK_WRITE_TABLE,
	TBLK_DBG_L1_SHRINK_FREE_L2_CLUSTERS,
	TBLK_DBG_COR_WRITE,
	TBLK_DBG_CLUSTER_ALLOC_SPACE,
	TBLK_DBG_NONE,
	TBLK_DBG__MAX,
};

/*
 * A driver: one const table per format or protocol. Data-path operations return >= 0 or
 * -errno; control-path ones fill *errp. Optional operations may be NULL.
 */
struct tblk_driver {
	const char *name;		/* "raw", "file", "null-co" */
	bool is_protocol;		/* opened on a file name, has no `file` child */
	/* May have a backing file: what it does not hold reads as zeroes without one. */
	bool supports_backing;
	size_t instance_size;		/* bytes of node->opaque, zeroed at open */

	/* Score 0-100 that @buf (the file's first bytes) is this format. Formats only. */
	int (*probe)(const uint8_t *buf, size_t len, const char *filename);
	/*
	 * Opens @node. Consumes (removes) the options it understands from @opts, the node's
	 * own level (children's keys have been moved to their own tables). Formats open
	 * their `file` child with tblk__node_open_child().
	 */
	int (*open)(struct tblk_node *node, GHashTable *opts, unsigned int flags,
		    GError **errp);
	void (*close)(struct tblk_node *node);
	/* Creates an image; protocols create the file, formats write their metadata. */
	int (*create)(const char *filename, uint64_t size, GHashTable *opts, GError **errp);

	/* Synchronous data path; offsets and lengths are aligned to request_alignment. */
	int (*preadv)(struct tblk_node *node, uint64_t offset, uint64_t bytes,
		      const struct iovec *iov, int iovcnt, unsigned int flags);
	int (*pwritev)(struct tblk_node *node, uint64_t offset, uint64_t bytes,
		       const struct iovec *iov, int iovcnt, unsigned int flags);
	int (*flush)(struct tblk_node *node);
	int (*pdiscard)(struct tblk_node *node, uint64_t offset, uint64_t bytes);
	int (*pwrite_zeroes)(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			     unsigned int flags);
	int (*block_status)(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			    uint64_t *pnum, uint64_t *map);

	int64_t (*getlength)(struct tblk_node *node);
	/* Checks metadata consistency, repairing with @fix (TBLK_CHECK_FIX_*); may be NULL. */
	int (*check)(struct tblk_node *node, struct tblk_check_result *res, int fix);
	/* Fills what the format records about itself (tblk_blk_get_format_info); may be NULL. */
	int (*get_info)(struct tblk_node *node, struct tblk_format_info *info);
	/* Allocation unit of the format (qcow2's cluster size); NULL: none. */
	uint32_t (*cluster_size)(struct tblk_node *node);
	int64_t (*get_allocated_size)(struct tblk_node *node);
	int (*truncate)(struct tblk_node *node, uint64_t size, const char *prealloc,
			GError **errp);
	/*
	 * Reads or writes the VM state area (savevm's), @bytes at @pos of it; called drained.
	 * NULL: the node's `file` child's, or -ENOTSUP without one.
	 */
	int (*vmstate_rw)(struct tblk_node *node, uint64_t pos, const struct iovec *iov,
			  int iovcnt, uint64_t bytes, bool write);
	/*
	 * qemu-img measure: an image of @size bytes, or holding @src's data (see tblk.h);
	 * @src_node is @src's root node (NULL without a source).
	 */
	int (*measure)(GHashTable *opts, uint64_t size, struct tblk_blk *src,
		       struct tblk_node *src_node, struct tblk_measure *m, GError **errp);
	/* qemu-img amend: changes options in place; runs drained. */
	int (*amend)(struct tblk_node *node, GHashTable *opts, bool force,
		     void (*progress)(double fraction, void *opaque), void *opaque,
		     GError **errp);

	/*
	 * Records @backing_file (NULL: none) and @backing_fmt (may be NULL) in the image
	 * header (qemu-img rebase); the open backing chain is left as it is. Runs drained.
	 * -ENOSPC if the header cluster cannot hold them, -EINVAL if the image cannot have
	 * that backing file.
	 */
	int (*change_backing_file)(struct tblk_node *node, const char *backing_file,
				   const char *backing_fmt);
	/* Drops all data of the image (what qemu-img commit does to the committed top). */
	int (*make_empty)(struct tblk_node *node);
	/*
	 * Takes (@take) or releases TBLK_PERM_* @perm and @deny on the node's image locks,
	 * counted per permission (tblk_blk_lock_perms). Protocols with image locks only.
	 * 0, or -errno with *errp (only when taking; nothing is taken then).
	 */
	int (*lock_perms)(struct tblk_node *node, unsigned int perm, unsigned int deny,
			  bool take, GError **errp);

	/*
	 * Internal snapshots (tblk_blk_snapshot_*); all NULL if the format has none. Called on
	 * the control thread with the node drained.
	 */
	int (*snapshot_list)(struct tblk_node *node, struct tblk_snapshot_info **psn, int *pn);
	int (*snapshot_create)(struct tblk_node *node, const struct tblk_snapshot_info *sn,
			       GError **errp);
	int (*snapshot_goto)(struct tblk_node *node, const char *id_or_name, GError **errp);
	int (*snapshot_delete)(struct tblk_node *node, const char *id, const char *name,
			       GError **errp);
	/* Makes a read-only node read as the snapshot matching @id and @name until closed. */
	int (*snapshot_load_tmp)(struct tblk_node *node, const char *id, const char *name,
				 GError **errp);

	/*
	 * Persistent dirty bitmaps (tblk_blk_bitmap_*), on the control thread, drained; @src
	 * is the root node of a merge's source image (NULL: @node). Optional.
	 */
	int (*bitmap_apply)(struct tblk_node *node, const struct tblk_bitmap_request *rq,
			    struct tblk_node *src, GError **errp);
	int (*bitmap_list)(struct tblk_node *node, struct tblk_dirty_bitmap **list, int *n);
	/* A discard of [offset, offset + bytes) as asked, before it is trimmed. Optional. */
	void (*discard_notify)(struct tblk_node *node, uint64_t offset, uint64_t bytes);

	/*
	 * Fast path: called on @req's loop thread to serve an asynchronous request without
	 * the pool (e.g. Linux AIO submitted straight from the iothread). Returns 0 if it
	 * took @req (it will call tblk__req_fast_done() later, on the loop thread), or
	 * -EAGAIN if the pool must serve it. May be NULL.
	 */
	int (*submit_fast)(struct tblk_node *node, struct tblk_req *req, uint64_t offset);

	/*
	 * Drain: someone waits for the requests of this node or of a parent to finish. Requests
	 * the driver holds back on its own (a throttle filter waiting for budget) must go now,
	 * and new ones must not be held back until drain_end. Calls nest. Any thread. Optional.
	 */
	void (*drain_begin)(struct tblk_node *node);
	void (*drain_end)(struct tblk_node *node);

	/*
	 * Fault injection (blkdebug), all optional. debug_event runs in the thread of the
	 * request that raised @ev and may block it there (a breakpoint). The others are
	 * control-path calls from any thread: 0 or -errno (-ENOENT: unknown event or tag).
	 */
	void (*debug_event)(struct tblk_node *node, enum tblk_debug_event ev);
	int (*debug_breakpoint)(struct tblk_node *node, const char *event, const char *tag);
	int (*debug_remove_breakpoint)(struct tblk_node *node, const char *tag);
	int (*debug_resume)(struct tblk_node *node, const char *tag);
	bool (*debug_is_suspended)(struct tblk_node *node, const char *tag);
};

/* Open-time limits and properties of a node, [const] after open. */
struct tblk_node_limits {
	uint32_t request_alignment;	/* offsets/lengths; RMW below this */
	uint32_t mem_alignment;		/* buffer addresses and iov lengths */
	uint64_t max_transfer;		/* bytes per driver call, 0 = unlimited */
	uint64_t max_pdiscard;		/* 0 = unlimited */
	uint64_t max_pwrite_zeroes;	/* 0 = unlimited */
	uint32_t pdiscard_alignment;	/* discards are trimmed to it, 0 = request_alignment */
};

/*
 * Lock order: node->lock is a leaf. It guards the tracked-request state; driver state has
 * its own locks, never held while calling a child.
 */
struct tblk_node {
	const struct tblk_driver *drv;	/* [const] */
	void *opaque;			/* [const] driver instance, instance_size bytes */
	char *node_name;		/* [const] */
	char *filename;			/* [const] protocol file or the child's */
	struct tblk_node *file;		/* [const] protocol child of a format, or NULL */
	struct tblk_node *backing;	/* [const] backing child, or NULL */
	unsigned int flags;		/* [const] TBLK_OPEN_* as opened */
	bool read_only;			/* [const] */
	struct tblk_node_limits limits;	/* [const] */
	bool probed;			/* [const] the format was guessed, not named */

	struct tblk_mutex lock;
	struct tblk_cond cv;		/* [lock] signalled when a request leaves or drain ends */
	struct tblk_list in_flight;	/* [lock] running requests (tblk_req.node_link), for overlaps */
	unsigned int nr_in_flight;	/* [lock] tracked, callbacks of async ones not yet run */
	unsigned int nr_async;		/* [lock] async ones among nr_in_flight */
	unsigned int nr_serialising;	/* [lock] serialising requests on in_flight */
	unsigned int quiesce_counter;	/* [lock] > 0: new outside requests wait */
	struct tblk_stats stats;	/* [lock] */
};

/* Finds a driver by name (formats and protocols); NULL if unknown. */
const struct tblk_driver *tblk__driver_find(const char *name);
/* The protocol a file name names ("nbd://...", "null-co://"), or "file" for plain paths. */
const struct tblk_driver *tblk__protocol_for(const char *filename);
/* The format drivers to probe and the NULL-terminated list of their names. */
const struct tblk_driver *const *tblk__format_drivers(void);

/*
 * Opens a node from @opts (keys of this level; "file.*" keys are the file child's), taking
 * ownership of nothing: @opts is modified (consumed keys removed). @filename may be NULL.
 * On success *pnode. Any leftover key is an error naming it.
 */
int tblk__node_open(struct tblk_node **pnode, const char *filename, GHashTable *opts,
		    unsigned int flags, GError **errp);
/* Opens @parent's child @name ("file") from the "@name." keys of @opts. */
int tblk__node_open_child(struct tblk_node *parent, const char *name, GHashTable *opts,
			  unsigned int flags, struct tblk_node **pchild, GError **errp);
/* Closes a node and its children (drains first). NULL ok. */
void tblk__node_close(struct tblk_node *node);
/* The node at the bottom of the `file` chain. */
struct tblk_node *tblk__node_protocol(struct tblk_node *node);

/* ---------------------------------------------------------------- fault injection */

/*
 * Raises @ev on @child, the file child of the format raising it: the first node down its
 * `file` chain with a debug driver (blkdebug) acts on it and may fail its next requests or
 * hold the calling thread at a breakpoint. A cheap no-op when there is none. Call it with
 * no driver lock held that a resumer would need. Any thread.
 */
void tblk__node_debug_event(struct tblk_node *child, enum tblk_debug_event ev);
static inline void tblk_node_debug_event(struct tblk_node *child, enum tblk_debug_event ev)
{
	if (child && (child->drv->debug_event || child->file))
		tblk__node_debug_event(child, ev);
}
/* qemu's name of @ev; and the event named @name, or -ENOENT. */
const char *tblk__debug_event_name(enum tblk_debug_event ev);
int tblk__debug_event_find(const char *name);
/* Breakpoints on the first node of @node's `file` chain with a debug driver (-ENOTSUP if none). */
int tblk__node_debug_breakpoint(struct tblk_node *node, const char *event, const char *tag);
int tblk__node_debug_remove_breakpoint(struct tblk_node *node, const char *tag);
int tblk__node_debug_resume(struct tblk_node *node, const char *tag);
bool tblk__node_debug_is_suspended(struct tblk_node *node, const char *tag);
/* Tells the notifier set with tblk_debug_set_notify() that a request stopped or goes on. */
void tblk__debug_notify(const char *tag, bool suspended);

/* ---------------------------------------------------------------- options */

/* Removes @key from @opts and returns its value (caller frees) or NULL. */
char *tblk__opts_take(GHashTable *opts, const char *key);
/* Takes and parses a bool/uint64/size option; missing leaves *out unchanged. 0 or -EINVAL. */
int tblk__opts_take_bool(GHashTable *opts, const char *key, bool *out, GError **errp);
int tblk__opts_take_uint64(GHashTable *opts, const char *key, uint64_t *out, GError **errp);
int tblk__opts_take_size(GHashTable *opts, const char *key, uint64_t *out, GError **errp);
/* Moves every "@prefix.*" key of @opts into a new table without the prefix. */
GHashTable *tblk__opts_extract_prefix(GHashTable *opts, const char *prefix);
/* Flattens the text of a "json:" file name into @opts (options-json.c). 0 or -EINVAL. */
int tblk__json_flatten(GHashTable *opts, const char *json, GError **errp);
/* Copies a string table. */
GHashTable *tblk__opts_copy(GHashTable *opts);
/*
 * The key of @opts qemu would name first (its dictionaries iterate in hash bucket order), as
 * in "does not support the option 'x'"; NULL if @opts is empty.
 */
const char *tblk__opts_first_key(GHashTable *opts);
/* The bucket of qemu's dictionary hash (0..511) @key falls in: its iteration order. */
unsigned int tblk__qdict_bucket(const char *key);
/*
 * A child given as a string ("file=NAME", "backing=NAME"): qemu takes NAME for an existing
 * node, and tblk has none to offer. Sets qemu's error (also for a reference given with
 * options of the child, @copts) and returns -EINVAL.
 */
int tblk__opts_child_reference(const char *ref, GHashTable *copts, GError **errp);
/*
 * The value a child option holds when a "json:" file name gives it as null ("backing": null,
 * no backing file). No option string spells it: "backing=null" names a node called "null",
 * as in qemu. (The library's own spelling of "no backing file" is "backing=", which qemu
 * still takes and tblk's tools warn about as qemu's do.)
 */
#define TBLK__OPTS_NULL "\x01null"
/*
 * The value of "backing" when a "json:" file name gives it a number, a boolean, {} or []:
 * no reference to a node (qemu takes only a string for one), and no option of the driver.
 */
#define TBLK__OPTS_NOT_STRING "\x01value"
/* Parses a size with qemu's suffixes (k, M, G, T, P, E; powers of 1024). 0 or -EINVAL. */
int tblk__parse_size(const char *s, uint64_t *out);

#endif /* TBLK_GRAPH_H */
