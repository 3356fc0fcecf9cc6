/* SPDX-License-Identifier: MIT */
/*
 * export-nbd-srv.h - what export-nbd.c (server, exports, listeners) and export-nbd-conn.c
 * (one client connection) share.
 *
 * Lock order: srv->lock is a leaf. A connection's own fields belong to the thread running
 * its loop (conn->loop): the server's loop during the handshake, the backend's afterwards.
 */
#ifndef TBLK_TOOLS_EXPORT_NBD_SRV_H
#define TBLK_TOOLS_EXPORT_NBD_SRV_H

#include "tblk/tblk.h"
#include "threadpool/threadpool.h"
#include "tools/export-nbd-int.h"
#include "tools/export-nbd.h"

/*
 * Data buffer classes: 64 KiB << 0..9 (32 MiB). Freed buffers are kept per export for reuse
 * by its connections, up to NBDS_BUF_CACHE_MAX bytes: a buffer freed to malloc comes back as
 * fresh pages that fault in on every request (a new connection would fault in its whole
 * window again), and unmapping them costs TLB shootdowns on every CPU.
 */
#define NBDS_BUF_MIN		(64u * 1024)
#define NBDS_BUF_CLASSES	10
#define NBDS_BUF_KEEP		(4 * NBDS_MAX_INFLIGHT)
#define NBDS_BUF_CACHE_MAX	(64u << 20)

/* Lock order: a leaf; taken on the loops of the export's connections. */
struct nbds_buf_cache {
	struct tblk_mutex lock;
	void *bufs[NBDS_BUF_CLASSES][NBDS_BUF_KEEP];	/* [lock] free buffers by class */
	unsigned int nr[NBDS_BUF_CLASSES];		/* [lock] */
	size_t bytes;					/* [lock] */
};

/* A 4 KiB-aligned buffer of at least @len bytes; NULL if memory is short. Any thread. */
void *nbds__buf_get(struct nbds_buf_cache *c, size_t len);
/* Gives back a buffer of nbds__buf_get(@len) (NULL ok). Any thread. */
void nbds__buf_put(struct nbds_buf_cache *c, void *p, size_t len);
void nbds__buf_cache_init(struct nbds_buf_cache *c);
void nbds__buf_cache_destroy(struct nbds_buf_cache *c);

/*
 * One extent of the export known to be data, for base:allocation. Reporting data for a
 * range is always a correct answer (the spec's "allocated, or the server could not
 * otherwise determine its status"), so a stale entry is only less precise, never wrong;
 * trims and zero writes through the export drop it anyway. It spares the backend's block
 * status (on a raw file two lseek()s that walk the page cache up to the next hole: 5-20 ms
 * for 512 MiB on tmpfs) for each connection of a multi-conn client and each later query.
 * Lock order: a leaf. Any thread (pool workers, the connections' loops).
 */
struct nbds_bs_cache {
	struct tblk_mutex lock;
	struct tblk_cond cv;		/* [lock] signalled when busy clears */
	uint64_t start, end;		/* [lock] data; empty when equal */
	uint64_t gen;			/* [lock] bumped by each change that may unmap or zero */
	bool busy;			/* [lock] a worker is asking the backend to fill it */
};

void nbds__bs_cache_init(struct nbds_bs_cache *c);
void nbds__bs_cache_destroy(struct nbds_bs_cache *c);

struct nbds_export {
	struct nbds_proto_export p;	/* [const] what clients are told */
	struct tblk_blk *blk;		/* [const] borrowed */
	char *id, *name, *description;	/* [const] */
	bool discard;			/* [const] TRIM unmaps */
	enum nbds_detect_zeroes detect_zeroes; /* [const] */
	unsigned int nr_conns;		/* [srv->lock] connections serving it */
	struct nbds_buf_cache bufs;	/* its own lock; freed with the export */
	struct nbds_bs_cache bs;	/* its own lock */
	struct tblk_list link;		/* [srv->lock] srv->exports; unlinked on the server loop */
};

struct nbds_listener {
	int fd;				/* [const] */
	struct nbds_server *srv;	/* [const] */
};

struct nbds_server {
	struct tblk_loop *loop;		/* [const] */
	struct nbds_export_table table;	/* [const] for handshakes */
	struct tblk_list exports;	/* [lock] struct nbds_export; removals on the server loop */
	struct nbds_listener listeners[8]; /* [server loop] */
	unsigned int nr_listeners;	/* [server loop] */
	bool listening;			/* [server loop] accept handlers installed */
	bool stopping;			/* [server loop] nbds_server_free() began */
	unsigned int max_clients;	/* [server loop] 0: unlimited */
	uint64_t handshake_ns;		/* [server loop] */
	char *unix_path;		/* [server loop] removed at free */
	nbds_clients_fn *clients_fn;	/* [server loop] */
	void *clients_opaque;		/* [server loop] */

	struct tblk_mutex lock;		/* leaf */
	struct tblk_cond cond;		/* [lock] broadcast when a client or notification ends */
	struct tblk_list conns;		/* [lock] struct nbds_conn */
	unsigned int nr_clients;	/* [lock] */
	uint64_t nr_accepted;		/* [lock] clients ever served */
	unsigned int nr_notify_pending;	/* [lock] clients_changed() calls not yet run */
};

struct nbds_out;
struct nbds_req;

enum nbds_in_state {
	NBDS_IN_HANDSHAKE,
	NBDS_IN_HEADER,		/* waiting for a 28-byte request header */
	NBDS_IN_PAYLOAD,	/* reading a WRITE's data into conn->cur */
	NBDS_IN_SKIP,		/* discarding a refused WRITE's data */
};

#define NBDS_INBUF_SIZE	(64 * 1024)
/* A client that has not finished its handshake by then is dropped (qemu-nbd's limit). */
#define NBDS_HANDSHAKE_NS	(10ull * 1000 * 1000 * 1000)

struct nbds_conn {
	struct nbds_server *srv;	/* [const] */
	int fd;				/* [const] */
	struct tblk_list link;		/* [srv->lock] srv->conns */
	struct nbds_export *exp;	/* [srv->lock] set once, at the end of the handshake */

	/* The rest belongs to the thread running conn->loop. */
	struct tblk_loop *loop;		/* server loop, then the backend's */
	struct tblk_blk *blk;
	struct nbds_handshake hs;
	GByteArray *hs_out;
	struct tblk_timer hs_timer;	/* armed on the server loop while in the handshake */		/* handshake replies not yet queued */
	struct nbds_tx tx;
	enum nbds_in_state in_state;
	uint8_t *inbuf;			/* NBDS_INBUF_SIZE bytes received, [in_start, in_end) unused */
	size_t in_start, in_end;
	struct nbds_req *cur;		/* request whose payload is being read */
	uint32_t cur_fill;
	uint64_t skip;			/* bytes of payload left to discard */
	struct nbds_out *out_head, *out_tail; /* replies to send, in order */
	size_t buffered;		/* bytes in replies and request buffers */
	unsigned int nr_inflight;	/* requests submitted and not yet replied */
	bool reading, writing;		/* fd handlers installed */
	bool closing;			/* no more input: finish in-flight work, flush, close */
	bool dead;			/* the socket failed: drop output, close when idle */
	bool moving;			/* between loops: no input, no output */
	struct tblk_loop *move_to;	/* the loop to move to when the callback ends */
};

struct nbds_conn *nbds__conn_new(struct nbds_server *srv, int fd);
/* Installs the connection's handlers and queues the greeting. Server loop. */
void nbds__conn_start(struct nbds_conn *conn);
/* The connection is gone: take it off the server's books. Any loop. */
void nbds__server_client_gone(struct nbds_server *srv, struct nbds_conn *conn);

#endif /* TBLK_TOOLS_EXPORT_NBD_SRV_H */
