/* SPDX-License-Identifier: MIT */
/*
 * tracked.h - the request object that follows one I/O from submission to completion, the
 * synchronous node I/O entry points drivers use to reach their children, overlap
 * serialisation, alignment (read-modify-write), splitting, drain and statistics.
 *
 * Threading: a request is owned by the thread carrying it (the submitting loop thread for
 * the fast path, then the worker that runs it, then the loop thread that completes it);
 * its node_link and the node's in-flight state are guarded by node->lock.
 */
#ifndef TBLK_TRACKED_H
#define TBLK_TRACKED_H

#include "graph/graph.h"

enum tblk_req_kind {
	TBLK_REQ_READ = TBLK_STAT_READ,
	TBLK_REQ_WRITE = TBLK_STAT_WRITE,
	TBLK_REQ_FLUSH = TBLK_STAT_FLUSH,
	TBLK_REQ_DISCARD = TBLK_STAT_DISCARD,
	TBLK_REQ_ZEROES = TBLK_STAT_ZEROES,
};

struct tblk_blk;

struct tblk_req {
	struct tblk_node *node;		/* [owner] the node it is tracked on */
	enum tblk_req_kind kind;	/* [owner] */
	uint64_t offset;		/* [owner] */
	uint64_t bytes;			/* [owner] */
	const struct iovec *iov;	/* [owner] borrowed from the submitter */
	int iovcnt;			/* [owner] */
	unsigned int flags;		/* [owner] TBLK_REQ_* */
	uint64_t start_ns;		/* [owner] for latency statistics */

	/* Overlap serialisation: the range this request claims and whether it excludes. */
	bool serialising;		/* [node->lock] */
	bool waiting;			/* [node->lock] blocked in an overlap wait */
	bool on_list;			/* [node->lock] on node->in_flight */
	bool async;			/* [owner] tracked by tblk__req_track_async() */
	bool fast;			/* [owner] completed by the fast path */
	uint64_t overlap_offset;	/* [node->lock] */
	uint64_t overlap_bytes;		/* [node->lock] */
	struct tblk_list node_link;	/* [node->lock] on node->in_flight */

	/* Asynchronous requests only. */
	struct tblk_blk *blk;		/* [owner] */
	tblk_cb *cb;			/* [owner] runs on work.loop */
	void *cb_opaque;		/* [owner] */
	struct tblk_work work;		/* [owner] pool path; work.loop is where cb runs */
	struct tblk_list park_link;	/* [blk loop thread] parked while the blk is drained */
	int ret;			/* [owner] result for the callback */
	struct iovec one_iov;		/* [owner] storage for single-buffer requests */

	/*
	 * A format's fast path that hands @req to its child's fast path may set this to see
	 * the child's completion first (loop thread): it returns false to complete @req now
	 * with *ret (which it may change), true if it took @req over (it completes it later,
	 * e.g. through work.done). Cleared when an asynchronous request is tracked.
	 */
	bool (*fast_hook)(struct tblk_req *req, int *ret);	/* [owner] */
	void *fast_hook_opaque;		/* [owner] */

	/* Scratch space for the fast-path driver (e.g. an AIO control block). */
	uint64_t drv_scratch[24] __attribute__((aligned(16)));	/* [owner] */
};

/* ------------------------------------------------ synchronous node I/O (any thread) */

/*
 * Read/write @bytes at @offset of @node through its driver, tracked on @node: aligned to
 * request_alignment (with read-modify-write of unaligned writes), split at max_transfer,
 * serialised against overlapping read-modify-writes. Runs in the calling thread. 0 or -errno.
 */
int tblk_node_preadv(struct tblk_node *node, uint64_t offset, uint64_t bytes,
		     const struct iovec *iov, int iovcnt, unsigned int flags);
int tblk_node_pwritev(struct tblk_node *node, uint64_t offset, uint64_t bytes,
		      const struct iovec *iov, int iovcnt, unsigned int flags);
int tblk_node_pread(struct tblk_node *node, uint64_t offset, void *buf, uint64_t bytes);
int tblk_node_pwrite(struct tblk_node *node, uint64_t offset, const void *buf, uint64_t bytes,
		     unsigned int flags);
/* Flushes @node and then its children (a format's metadata before its file). */
int tblk_node_flush(struct tblk_node *node);
int tblk_node_pdiscard(struct tblk_node *node, uint64_t offset, uint64_t bytes);
int tblk_node_pwrite_zeroes(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			    unsigned int flags);
int tblk_node_block_status(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			   uint64_t *pnum, uint64_t *map);
int64_t tblk_node_getlength(struct tblk_node *node);

/* Runs a request already filled in (kind, range, iov, flags) synchronously. */
int tblk__req_run(struct tblk_req *req);

/* ------------------------------------------------ tracking */

/*
 * Puts @req on its node's in-flight list. Outside requests (not issued from inside another
 * request) wait while the node is quiesced. A serialising request waits until no overlapping
 * request is running; any request waits for overlapping serialising ones. A request blocked
 * in such a wait is skipped by the others, which breaks every wait cycle.
 */
void tblk__req_begin(struct tblk_req *req);
/* Takes @req off the list, records statistics for @ret, wakes waiters. */
void tblk__req_end(struct tblk_req *req, int ret);
/*
 * The request whose body the calling thread is running (innermost), so a driver operation
 * (a filter's) can make it serialising; NULL outside a request.
 */
struct tblk_req *tblk__req_current(void);
/* Widens @req's claimed range to [offset, offset + bytes) and makes it serialising. */
void tblk__req_make_serialising(struct tblk_req *req, uint64_t offset, uint64_t bytes);

/*
 * Asynchronous requests are tracked from submission on the loop thread, which never
 * blocks: returns -EBUSY if the node is quiesced (the caller parks @req), else 1 if no
 * serialising request is in flight (the fast path may take it), else 0.
 */
int tblk__req_track_async(struct tblk_req *req);
/* In the worker, before running an asynchronous request: waits for overlaps. */
void tblk__req_wait_conflicts(struct tblk_req *req);
/*
 * In the worker, once an asynchronous request's body ran: it stops taking part in overlap
 * checks at once (its callback may wait for the loop), but still counts for drain.
 */
void tblk__req_unlink(struct tblk_req *req);
/*
 * The loop a synchronous caller may turn while it waits for a request (its completion may
 * need that loop), or NULL. Thread-local; set by the backend around synchronous requests.
 */
void tblk__set_wait_loop(struct tblk_loop *loop);
/* Ends an asynchronous request's tracking (any thread). */
void tblk__req_end_async(struct tblk_req *req, int ret);
/* Brackets a driver operation run on behalf of @req in this thread (nested depth). */
void tblk__req_enter(void);
void tblk__req_leave(void);

/* Called on the loop thread by a fast-path driver when @req finished with @ret. */
void tblk__req_fast_done(struct tblk_req *req, int ret);

/* ------------------------------------------------ drain */

/* Stops new outside requests on @node and waits for its in-flight ones. Nests. */
void tblk_node_drained_begin(struct tblk_node *node);
void tblk_node_drained_end(struct tblk_node *node);
/* Waits until @node has nothing in flight (no quiesce). */
void tblk_node_drain(struct tblk_node *node);
/* Waits until @node has nothing in flight, turning @loop if the caller may (see req.c). */
void tblk__node_wait_idle(struct tblk_node *node, struct tblk_loop *loop);
/* Quiesces (or un-quiesces) every node of a graph without waiting. */
void tblk__graph_quiesce(struct tblk_node *root, bool on);
/* Waits until no node of a graph has anything in flight. */
void tblk__graph_wait_idle(struct tblk_node *root, struct tblk_loop *loop);
/* Drained sections over a node and all nodes below it, top first. */
void tblk_graph_drained_begin(struct tblk_node *root);
void tblk_graph_drained_end(struct tblk_node *root);

/* Number of requests nested in the calling thread (0: an outside request). */
unsigned int tblk__req_depth(void);

/* ------------------------------------------------ iovec helpers */

size_t tblk_iov_size(const struct iovec *iov, int iovcnt);
/* Copies between a flat buffer and @iov starting @offset bytes into @iov. */
void tblk_iov_to_buf(const struct iovec *iov, int iovcnt, size_t offset, void *buf, size_t n);
void tblk_iov_from_buf(const struct iovec *iov, int iovcnt, size_t offset, const void *buf,
		       size_t n);
void tblk_iov_memset(const struct iovec *iov, int iovcnt, size_t offset, int c, size_t n);
/*
 * Fills @dst (room for @max entries) with the part [offset, offset + bytes) of @iov.
 * Returns the entry count, or -EINVAL if it needs more than @max.
 */
int tblk_iov_slice(struct iovec *dst, int max, const struct iovec *iov, int iovcnt,
		   size_t offset, size_t bytes);
/* True if every base and length in @iov is a multiple of @align. */
bool tblk_iov_aligned(const struct iovec *iov, int iovcnt, size_t align);

#endif /* TBLK_TRACKED_H */
