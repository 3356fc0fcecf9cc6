/* SPDX-License-Identifier: MIT */
/*
 * nbd-int.h - what the files of the NBD client share: the server address, the export's
 * negotiated properties, and one connection (socket, handshake, the parser that matches
 * replies to requests by cookie, run by a reader thread or by a loop's fd handler).
 *
 * Threading: a connection is made and freed by one control thread. tblk__nbd_conn_run() may
 * be called from any number of threads at once (pool workers, synchronous callers); each
 * caller sleeps in the pool's wait service until the parser has filled its reply.
 */
#ifndef TBLK_PROTOCOLS_NBD_INT_H
#define TBLK_PROTOCOLS_NBD_INT_H

#include <sys/uio.h>

#include "common/common.h"
#include "common/nbd-wire.h"

/* Where the server is. Strings owned by the struct. */
struct tblk_nbd_addr {
	bool is_unix;
	char *host;		/* inet */
	char *port;		/* inet, decimal */
	char *path;		/* unix socket path */
	char *export;		/* "" when unnamed */
};

void tblk__nbd_addr_clear(struct tblk_nbd_addr *addr);

/* What the handshake learnt about the export. */
struct tblk_nbd_info {
	uint64_t size;
	uint16_t flags;		/* TBLK_NBD_FLAG_* transmission flags */
	uint32_t min_block;	/* 0: the server gave no block sizes */
	uint32_t pref_block;
	uint32_t max_block;
	bool structured;	/* structured replies negotiated */
	bool has_alloc;		/* base:allocation negotiated, id alloc_id */
	uint32_t alloc_id;
};

/*
 * One command and what its reply brought back. Read: iov receives @len bytes. Write: iov
 * holds the payload. Block status: the first extent lands in bs_len/bs_flags.
 */
struct tblk_nbd_cmd {
	uint16_t type;
	uint16_t flags;
	uint64_t offset;
	uint32_t len;
	const struct iovec *iov;
	int iovcnt;
	uint32_t bs_len;	/* out: 0 if the server sent no extent */
	uint32_t bs_flags;	/* out: TBLK_NBD_STATE_* */
};

struct tblk_nbd_conn;

/*
 * A request on its way: on the caller's stack (tblk__nbd_conn_run()) or in the caller's
 * storage (tblk__nbd_conn_submit()). Fill cmd (and complete) before; the rest is private.
 */
struct tblk_nbd_slot {
	struct tblk_nbd_cmd *cmd;	/* [const] outputs written by the reader before done */
	/*
	 * Asynchronous requests: runs on the thread that parsed the reply (the reader thread
	 * or the loop calling tblk__nbd_conn_poll(); with the connection's lock held: take
	 * only a leaf lock) once the reply is complete, result in ret. NULL: a sleeper waits
	 * on cv.
	 */
	void (*complete)(struct tblk_nbd_slot *slot);
	/*
	 * [const] The reader thread must read the reply (always so for tblk__nbd_conn_run());
	 * false: the submitter's loop calls tblk__nbd_conn_poll() when the socket is readable.
	 */
	bool by_thread;
	uint64_t cookie;		/* [conn->lock] */
	struct tblk_cond cv;		/* [conn->lock] signalled when done is set */
	struct tblk_list link;		/* [conn->lock] on conn->pending until done */
	bool done;			/* [conn->lock] */
	bool got_extent;		/* [conn->rx_lock] */
	int ret;			/* [conn->rx_lock] until done, then the owner's */
	uint64_t covered;		/* [conn->rx_lock] read bytes described by chunks so far */
};

/*
 * Connects to @addr, negotiates (fixed newstyle with OPT_GO, structured replies,
 * base:allocation; EXPORT_NAME and oldstyle for old servers) and starts the reader thread.
 * Control path. 0 and *pconn, or -errno and *errp.
 */
int tblk__nbd_conn_open(const struct tblk_nbd_addr *addr, struct tblk_nbd_conn **pconn,
			GError **errp);
/* Sends NBD_CMD_DISC (if the connection still works), closes, joins the reader. NULL ok. */
void tblk__nbd_conn_free(struct tblk_nbd_conn *conn);
/* The negotiated export; [const] for the connection's lifetime. */
const struct tblk_nbd_info *tblk__nbd_conn_info(struct tblk_nbd_conn *conn);

/*
 * Sends @cmd and waits for its whole reply. Any thread, concurrently. Returns 0, the
 * server's error as -errno, or -EIO once the connection is broken (the server went away or
 * broke the protocol; every request in flight fails then, and every later one at once).
 */
int tblk__nbd_conn_run(struct tblk_nbd_conn *conn, struct tblk_nbd_cmd *cmd);

/* ---------------------------------------------------------------- nbd-handshake.c */

/* Big-endian fields of wire buffers. */
static inline uint16_t tblk__nbd_get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}
static inline uint32_t tblk__nbd_get32(const uint8_t *p)
{
	return (uint32_t)tblk__nbd_get16(p) << 16 | tblk__nbd_get16(p + 2);
}
static inline uint64_t tblk__nbd_get64(const uint8_t *p)
{
	return (uint64_t)tblk__nbd_get32(p) << 32 | tblk__nbd_get32(p + 4);
}
static inline void tblk__nbd_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}
static inline void tblk__nbd_put32(uint8_t *p, uint32_t v)
{
	tblk__nbd_put16(p, (uint16_t)(v >> 16));
	tblk__nbd_put16(p + 2, (uint16_t)v);
}
static inline void tblk__nbd_put64(uint8_t *p, uint64_t v)
{
	tblk__nbd_put32(p, (uint32_t)(v >> 32));
	tblk__nbd_put32(p + 4, (uint32_t)v);
}

/* Reads or writes exactly @n bytes, retrying on EINTR. 0, -EPIPE at end of stream, -errno. */
int tblk__nbd_read_full(int fd, void *buf, size_t n);
int tblk__nbd_write_full(int fd, const void *buf, size_t n);
/* Connects a stream socket to @addr. The fd, or -errno and *errp (qemu's wording). */
int tblk__nbd_socket_connect(const struct tblk_nbd_addr *addr, GError **errp);
/* Negotiates @export on the connected @fd up to transmission. 0, or -errno and *errp. */
int tblk__nbd_handshake(int fd, const char *export, struct tblk_nbd_info *info,
			GError **errp);

/* ---------------------------------------------------------------- nbd-conn.c */

/*
 * Sends @slot's command without waiting: 0, then slot->complete runs once (any result), or
 * -EAGAIN if the connection is broken or has too many requests in flight (the caller then
 * uses tblk__nbd_conn_run() from a worker). Any thread; may block briefly while sending.
 * @defer: only the one thread that batches (the loop that parses the replies of its
 * by_thread-false slots) may say so: the request is queued, to go out with the others of
 * the batch in one write at tblk__nbd_conn_flush() (or at once if it is a big write), which
 * that thread must call before it waits for anything.
 */
int tblk__nbd_conn_submit(struct tblk_nbd_conn *conn, struct tblk_nbd_slot *slot, bool defer);
/* The batching thread: writes the queued requests (fails them if the connection broke). */
void tblk__nbd_conn_flush(struct tblk_nbd_conn *conn);

/*
 * Parses the replies that have come in, without waiting; the caller is a loop whose
 * fast-path requests (by_thread false) are pending, called when the socket (see
 * tblk__nbd_conn_fd()) is readable. Completions run here. Returns 0, 1 if it stopped with
 * whole replies perhaps still buffered (call again soon: the socket may not signal them),
 * or -EIO once the connection is broken (nothing more will come: stop watching the socket).
 */
int tblk__nbd_conn_poll(struct tblk_nbd_conn *conn);
/* The connection's socket, to watch for tblk__nbd_conn_poll(). [const] */
int tblk__nbd_conn_fd(struct tblk_nbd_conn *conn);

/* Why the connection broke, or NULL while it works. Caller frees. Any thread. */
char *tblk__nbd_conn_error(struct tblk_nbd_conn *conn);

#endif /* TBLK_PROTOCOLS_NBD_INT_H */
