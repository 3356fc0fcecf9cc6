/* SPDX-License-Identifier: MIT */
/*
 * nbd-conn.c - one NBD connection in the transmission phase: many requests in flight at
 * once, matched to their replies by cookie.
 *
 * A caller (a pool worker or a synchronous caller) puts its request on the pending list,
 * writes it to the socket under send_lock (held only for that one write, so requests are
 * not interleaved on the wire), then sleeps in the pool's wait service on its own condition
 * variable. Replies are parsed by a resumable, non-blocking parser under rx_lock: it finds
 * each request by cookie, reads the payload straight into the caller's buffers (the caller
 * is asleep until `done`, so they are stable), and wakes the caller.
 *
 * The one loop that parses for its own requests may defer them instead (a batch): they get
 * their cookies at once but go on the pending list only when tblk__nbd_conn_flush() writes
 * them all with one sendmsg, so no reply can match a request that has not gone out.
 *
 * Who runs the parser: the asynchronous requests of the fast path (tblk__nbd_conn_submit())
 * are sent from a loop thread, and that loop watches the socket and parses on its own thread
 * (tblk__nbd_conn_poll()), so a reply costs one wake-up: the loop's. The reader thread sleeps
 * until some request in flight has no loop to read for it (a synchronous caller); then it
 * polls the socket and parses too (whoever takes rx_lock first gets the bytes).
 *
 * Anything the server sends that breaks the protocol (bad magic, unknown cookie, a chunk
 * too long or outside its request, a truncated stream) breaks the connection: the parser
 * fails every pending request with -EIO; later requests fail at once. Nothing the server
 * sends is trusted for a length or an offset before it is checked.
 *
 * Lock order: send_lock before lock, rx_lock before lock (send_lock and rx_lock are never
 * held together); lock is never held across socket I/O, rx_lock only across non-blocking
 * reads, and only an asynchronous request's completion function (which takes its own leaf
 * lock) runs under lock.
 */
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "protocols/nbd-int.h"
#include "tracked/tracked.h"

/* Requests in flight on one connection; more wait for a slot. */
#define NBD_MAX_IN_FLIGHT	64
/* The reader's read-ahead buffer; payloads of half of it or more bypass it. */
#define NBD_RBUF_SIZE		(64 * 1024)
/*
 * A batch of deferred requests (tblk__nbd_conn_submit() with defer) is written by one
 * sendmsg: at most this many iovecs, and write payloads of at most NBD_BATCH_PAYLOAD bytes
 * in all (bigger writes go out on their own, so that a batch never holds the loop in a
 * long blocking write).
 */
#define NBD_BATCH_IOV		64
#define NBD_BATCH_PAYLOAD	(64 * 1024)

/* Where the reply parser is in the stream. */
enum rx_state {
	RX_HEADER,	/* expecting a reply header */
	RX_PREFIX,	/* a structured chunk's fixed fields, rx.need bytes */
	RX_DATA,	/* read data into the request's buffers */
	RX_SKIP,	/* payload to drop */
	RX_ERR_OFFSET,	/* the offset that ends an ERROR_OFFSET chunk */
};

/* The reply being parsed. [rx_lock] */
struct tblk_nbd_rx {
	enum rx_state state;
	struct tblk_nbd_slot *slot;	/* the request it answers (not RX_HEADER) */
	bool chunk;			/* a structured chunk, not a simple reply */
	uint16_t flags, type;		/* the chunk's */
	uint32_t len;			/* the chunk's payload length */
	uint32_t need;			/* RX_PREFIX: bytes of fixed fields */
	uint64_t off;			/* RX_DATA: where in the request's buffers */
	uint64_t left;			/* RX_DATA, RX_SKIP: bytes to go */
};

struct tblk_nbd_conn {
	int fd;				/* [const] */
	struct tblk_nbd_info info;	/* [const] */
	pthread_t reader;		/* [const] */
	bool reader_started;		/* [const] */

	struct tblk_mutex send_lock;	/* serialises writes of whole requests; before lock */

	/*
	 * Requests deferred by the one thread that batches (the loop that reads the replies),
	 * written together by tblk__nbd_conn_flush(). They have cookies but are not on the
	 * pending list (nor counted in nr_pending) until then: the parser cannot match a reply
	 * to a request that has not gone out. [thread: batcher]
	 */
	unsigned int batch_nr;
	unsigned int batch_nr_iov;
	size_t batch_payload;
	struct tblk_nbd_slot *batch_slot[NBD_MAX_IN_FLIGHT];
	uint8_t batch_hdr[NBD_MAX_IN_FLIGHT][TBLK_NBD_REQUEST_SIZE];
	struct iovec batch_iov[NBD_BATCH_IOV];

	/* The parser: whoever reads replies (the reader thread or a loop) holds it; before lock. */
	struct tblk_mutex rx_lock;
	struct tblk_nbd_rx rx;		/* [rx_lock] */
	uint8_t *rbuf;			/* [rx_lock] NBD_RBUF_SIZE bytes read ahead */
	size_t rpos, rlen;		/* [rx_lock] unread bytes are rbuf[rpos, rlen) */
	bool rx_short;			/* [rx_lock] the last recv() emptied the socket */
	bool rx_dead;			/* [rx_lock] the parser broke the connection */

	struct tblk_mutex lock;		/* leaf */
	struct tblk_cond slot_cv;	/* [lock] signalled when nr_pending drops */
	struct tblk_cond reader_cv;	/* [lock] signalled when the reader has work or stops */
	struct tblk_list pending;	/* [lock] struct tblk_nbd_slot, sent or being sent */
	unsigned int nr_pending;	/* [lock] */
	unsigned int nr_thread;		/* [lock] pending slots the reader thread reads for */
	uint64_t next_cookie;		/* [lock] */
	int broken;			/* [lock] 0, or -EIO once the connection failed */
	char *why;			/* [lock] what broke it */
	bool stopping;			/* [lock] tblk__nbd_conn_free() is joining the reader */
};

const struct tblk_nbd_info *tblk__nbd_conn_info(struct tblk_nbd_conn *conn)
{
	return &conn->info;
}

char *tblk__nbd_conn_error(struct tblk_nbd_conn *conn)
{
	char *why;

	tblk_mutex_lock(&conn->lock);
	why = g_strdup(conn->why);
	tblk_mutex_unlock(&conn->lock);
	return why;
}

/* Fails every pending request and all later ones. */
static void conn_break_locked(struct tblk_nbd_conn *conn, const char *why)
{
	struct tblk_list *pos;

	tblk_mutex_assert_held(&conn->lock);
	if (!conn->broken) {
		conn->broken = -EIO;
		conn->why = g_strdup(why);
	}
	tblk_list_for_each(pos, &conn->pending) {
		struct tblk_nbd_slot *slot = tblk_list_entry(pos, struct tblk_nbd_slot, link);

		slot->ret = -EIO;
		slot->done = true;
		if (!slot->complete)
			tblk_cond_signal(&slot->cv);
	}
	while (!tblk_list_empty(&conn->pending)) {
		struct tblk_nbd_slot *slot = tblk_list_entry(conn->pending.next,
							     struct tblk_nbd_slot, link);

		tblk_list_del(&slot->link);
		if (slot->complete)
			slot->complete(slot);	/* the slot may be reused from here on */
	}
	conn->nr_pending = 0;
	conn->nr_thread = 0;
	tblk_cond_broadcast(&conn->slot_cv);
	tblk_cond_signal(&conn->reader_cv);
}

/* The parser only (rx_lock): it alone completes requests, so none is failed while it fills it. */
static void conn_break(struct tblk_nbd_conn *conn, const char *why)
{
	tblk_mutex_lock(&conn->lock);
	conn_break_locked(conn, why);
	tblk_mutex_unlock(&conn->lock);
	shutdown(conn->fd, SHUT_RDWR);
}

/*
 * Any other thread: refuses new requests at once and shuts the socket down, which makes
 * the parser (the reader thread, woken here) fail the pending ones.
 */
static void conn_poison(struct tblk_nbd_conn *conn, const char *why)
{
	tblk_mutex_lock(&conn->lock);
	if (!conn->broken) {
		conn->broken = -EIO;
		conn->why = g_strdup(why);
	}
	tblk_cond_signal(&conn->reader_cv);
	tblk_mutex_unlock(&conn->lock);
	shutdown(conn->fd, SHUT_RDWR);
}

/* ---------------------------------------------------------------- the reply parser */

/* The server's error number as ours; unknown ones read as EINVAL, as the spec says. */
static int nbd_errno(uint32_t err)
{
	switch (err) {
	case TBLK_NBD_EPERM: return -EPERM;
	case TBLK_NBD_EIO: return -EIO;
	case TBLK_NBD_ENOMEM: return -ENOMEM;
	case TBLK_NBD_ENOSPC: return -ENOSPC;
	case TBLK_NBD_EOVERFLOW: return -EOVERFLOW;
	case TBLK_NBD_ENOTSUP: return -ENOTSUP;
	case TBLK_NBD_ESHUTDOWN: return -ESHUTDOWN;
	default: return -EINVAL;
	}
}

/*
 * Makes @n (at most NBD_RBUF_SIZE) unread bytes contiguous at rbuf + rpos, taking what the
 * socket has without waiting. 1: there; 0: not yet; -EPIPE at end of stream, or -errno.
 */
static int rx_need(struct tblk_nbd_conn *conn, size_t n)
{
	tblk_mutex_assert_held(&conn->rx_lock);
	while (conn->rlen - conn->rpos < n) {
		size_t want;
		ssize_t r;

		if (conn->rx_short)
			return 0;	/* the last recv() emptied the socket */
		if (conn->rpos) {
			memmove(conn->rbuf, conn->rbuf + conn->rpos, conn->rlen - conn->rpos);
			conn->rlen -= conn->rpos;
			conn->rpos = 0;
		}
		want = NBD_RBUF_SIZE - conn->rlen;
		r = recv(conn->fd, conn->rbuf + conn->rlen, want, MSG_DONTWAIT);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
		if (r == 0)
			return -EPIPE;
		conn->rlen += (size_t)r;
		conn->rx_short = (size_t)r < want;
	}
	return 1;
}

/*
 * Moves up to @n payload bytes to @dst (NULL: drops them): what the read-ahead buffer holds,
 * else what the socket has (straight into @dst for big pieces). Bytes moved, 0 if none has
 * come yet, or -errno (-EPIPE at end of stream).
 */
static ssize_t rx_stream(struct tblk_nbd_conn *conn, void *dst, size_t n)
{
	size_t have = conn->rlen - conn->rpos;
	ssize_t r;

	tblk_mutex_assert_held(&conn->rx_lock);
	if (!have) {
		if (conn->rx_short)
			return 0;
		if (dst && n >= NBD_RBUF_SIZE / 2) {
			r = recv(conn->fd, dst, n, MSG_DONTWAIT);
			if (r > 0)
				conn->rx_short = (size_t)r < n;
		} else {
			conn->rpos = conn->rlen = 0;
			r = recv(conn->fd, conn->rbuf, NBD_RBUF_SIZE, MSG_DONTWAIT);
			if (r > 0) {
				conn->rlen = (size_t)r;
				conn->rx_short = (size_t)r < NBD_RBUF_SIZE;
				return rx_stream(conn, dst, n);
			}
		}
		if (r < 0 && errno == EINTR)
			return 0;	/* not a short read: the caller asks again */
		if (r < 0)
			return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
		return r ? r : -EPIPE;
	}
	have = TBLK_MIN(have, n);
	if (dst)
		memcpy(dst, conn->rbuf + conn->rpos, have);
	conn->rpos += have;
	return (ssize_t)have;
}

/* Finds the pending request of @cookie. The parser owns it until it sets done. */
static struct tblk_nbd_slot *find_slot(struct tblk_nbd_conn *conn, uint64_t cookie)
{
	struct tblk_nbd_slot *found = NULL;
	struct tblk_list *pos;

	tblk_mutex_lock(&conn->lock);
	tblk_list_for_each(pos, &conn->pending) {
		struct tblk_nbd_slot *slot = tblk_list_entry(pos, struct tblk_nbd_slot, link);

		if (slot->cookie == cookie) {
			found = slot;
			break;
		}
	}
	tblk_mutex_unlock(&conn->lock);
	return found;
}

static void slot_done(struct tblk_nbd_conn *conn, struct tblk_nbd_slot *slot)
{
	tblk_mutex_lock(&conn->lock);
	if (!slot->done) {	/* else the connection broke meanwhile and failed it */
		tblk_list_del(&slot->link);
		conn->nr_pending--;
		if (slot->by_thread)
			conn->nr_thread--;
		slot->done = true;
		if (slot->complete)
			slot->complete(slot);
		else
			tblk_cond_signal(&slot->cv);
		tblk_cond_signal(&conn->slot_cv);
	}
	tblk_mutex_unlock(&conn->lock);
}

/* Parser step results besides 0 (progress): wait for input, or the connection must break. */
#define RX_AGAIN	1
#define RX_BROKEN	(-1)

static const char *const mid_reply = "Server closed the connection in the middle of a reply";

/* rx_need()'s result inside a reply: 0 go on, RX_AGAIN, or RX_BROKEN with *why. */
static int rx_input(int ret, const char **why)
{
	if (ret > 0)
		return 0;
	if (ret == 0)
		return RX_AGAIN;
	*why = mid_reply;
	return RX_BROKEN;
}

/* The current chunk is complete: the request's checks if it was the last. */
static int rx_chunk_end(struct tblk_nbd_conn *conn)
{
	struct tblk_nbd_rx *rx = &conn->rx;
	struct tblk_nbd_slot *slot = rx->slot;
	struct tblk_nbd_cmd *cmd = slot->cmd;

	rx->state = RX_HEADER;
	rx->slot = NULL;
	if (!rx->chunk) {
		slot_done(conn, slot);	/* a simple reply */
		return 0;
	}
	if (!(rx->flags & TBLK_NBD_REPLY_FLAG_DONE))
		return 0;
	if (!slot->ret && cmd->type == TBLK_NBD_CMD_READ && slot->covered < cmd->len)
		slot->ret = -EIO;	/* the server left part of the read undescribed */
	if (!slot->ret && cmd->type == TBLK_NBD_CMD_BLOCK_STATUS && !slot->got_extent)
		slot->ret = -EIO;
	slot_done(conn, slot);
	return 0;
}

/* A simple reply's 16 bytes: done, or a read's data follows. */
static int rx_simple(struct tblk_nbd_conn *conn, const uint8_t *hdr, const char **why)
{
	struct tblk_nbd_rx *rx = &conn->rx;
	struct tblk_nbd_slot *slot = find_slot(conn, tblk__nbd_get64(hdr + 8));
	uint32_t err = tblk__nbd_get32(hdr + 4);
	struct tblk_nbd_cmd *cmd;

	if (!slot) {
		*why = "Server replied to a request we did not send";
		return RX_BROKEN;
	}
	cmd = slot->cmd;
	rx->slot = slot;
	rx->chunk = false;
	if (err) {
		slot->ret = nbd_errno(err);
	} else if (cmd->type == TBLK_NBD_CMD_READ) {
		if (conn->info.structured) {
			*why = "Server sent a simple reply to a read after agreeing to structured "
			       "replies";
			return RX_BROKEN;
		}
		rx->state = RX_DATA;
		rx->off = 0;
		rx->left = cmd->len;
		return 0;
	} else if (cmd->type == TBLK_NBD_CMD_BLOCK_STATUS) {
		*why = "Server sent a simple reply to a block status request";
		return RX_BROKEN;
	}
	return rx_chunk_end(conn);
}

/* A structured chunk's 20-byte header: what its payload holds and what reads it. */
static int rx_chunk(struct tblk_nbd_conn *conn, const uint8_t *hdr, const char **why)
{
	struct tblk_nbd_rx *rx = &conn->rx;
	struct tblk_nbd_slot *slot;
	uint16_t t;

	if (!conn->info.structured) {
		*why = "Server sent a structured reply we did not agree to";
		return RX_BROKEN;
	}
	slot = find_slot(conn, tblk__nbd_get64(hdr + 8));
	if (!slot) {
		*why = "Server replied to a request we did not send";
		return RX_BROKEN;
	}
	rx->slot = slot;
	rx->chunk = true;
	rx->flags = tblk__nbd_get16(hdr + 4);
	rx->type = t = tblk__nbd_get16(hdr + 6);
	rx->len = tblk__nbd_get32(hdr + 16);
	*why = NULL;
	if (rx->len > TBLK_NBD_MAX_BUFFER + 64u)
		*why = "Server sent a reply chunk that is too long";
	else if (t == TBLK_NBD_REPLY_TYPE_NONE)
		*why = rx->len || !(rx->flags & TBLK_NBD_REPLY_FLAG_DONE) ?
		       "Server sent an invalid NONE chunk" : NULL;
	else if ((t == TBLK_NBD_REPLY_TYPE_OFFSET_DATA || t == TBLK_NBD_REPLY_TYPE_OFFSET_HOLE) &&
		 slot->cmd->type != TBLK_NBD_CMD_READ)
		*why = "Server sent read data in reply to a request that is not a read";
	else if (t == TBLK_NBD_REPLY_TYPE_OFFSET_HOLE ? rx->len != 12 :
		 t == TBLK_NBD_REPLY_TYPE_OFFSET_DATA && rx->len < 8)
		*why = "Server sent a read chunk of an invalid length";
	else if (t == TBLK_NBD_REPLY_TYPE_BLOCK_STATUS &&
		 slot->cmd->type != TBLK_NBD_CMD_BLOCK_STATUS)
		*why = "Server sent block status in reply to another request";
	else if (t == TBLK_NBD_REPLY_TYPE_BLOCK_STATUS && (rx->len < 12 || (rx->len - 4) % 8))
		*why = "Server sent a block status chunk of an invalid length";
	else if ((t == TBLK_NBD_REPLY_TYPE_ERROR || t == TBLK_NBD_REPLY_TYPE_ERROR_OFFSET) &&
		 rx->len < 6)
		*why = "Server sent an error chunk of an invalid length";
	if (*why)
		return RX_BROKEN;
	switch (t) {
	case TBLK_NBD_REPLY_TYPE_NONE:
		return rx_chunk_end(conn);
	case TBLK_NBD_REPLY_TYPE_OFFSET_DATA:
		rx->need = 8;
		break;
	case TBLK_NBD_REPLY_TYPE_OFFSET_HOLE:
	case TBLK_NBD_REPLY_TYPE_BLOCK_STATUS:
		rx->need = 12;
		break;
	case TBLK_NBD_REPLY_TYPE_ERROR:
	case TBLK_NBD_REPLY_TYPE_ERROR_OFFSET:
		rx->need = 6;
		break;
	default:
		/* Unknown error types fail the request; unknown others break the protocol. */
		if (!(t & (1u << 15))) {
			*why = "Server sent a reply chunk of an unknown type";
			return RX_BROKEN;
		}
		if (!slot->ret)
			slot->ret = -EIO;
		rx->state = RX_SKIP;
		rx->left = rx->len;
		return 0;
	}
	rx->state = RX_PREFIX;
	return 0;
}

/* Expecting a reply header. */
static int rx_header(struct tblk_nbd_conn *conn, const char **why)
{
	uint8_t hdr[TBLK_NBD_STRUCTURED_REPLY_SIZE];
	uint32_t magic;
	size_t size = 0;
	int ret = rx_need(conn, 4);

	if (ret > 0) {
		magic = tblk__nbd_get32(conn->rbuf + conn->rpos);
		if (magic == TBLK_NBD_SIMPLE_REPLY_MAGIC)
			size = TBLK_NBD_SIMPLE_REPLY_SIZE;
		else if (magic == TBLK_NBD_STRUCTURED_REPLY_MAGIC)
			size = TBLK_NBD_STRUCTURED_REPLY_SIZE;
		else {
			*why = "Server sent a reply with a bad magic";
			return RX_BROKEN;
		}
		ret = rx_need(conn, size);
	}
	if (ret == 0)
		return RX_AGAIN;
	if (ret < 0) {
		*why = ret == -EPIPE ? "Server closed the connection" :
				       "Failed to read from the server";
		return RX_BROKEN;
	}
	memcpy(hdr, conn->rbuf + conn->rpos, size);
	conn->rpos += size;
	if (size == TBLK_NBD_SIMPLE_REPLY_SIZE)
		return rx_simple(conn, hdr, why);
	return rx_chunk(conn, hdr, why);
}

/* The fixed fields at the start of a chunk's payload (rx->need bytes). */
static int rx_prefix(struct tblk_nbd_conn *conn, const char **why)
{
	struct tblk_nbd_rx *rx = &conn->rx;
	struct tblk_nbd_slot *slot = rx->slot;
	struct tblk_nbd_cmd *cmd = slot->cmd;
	const uint8_t *b;
	uint64_t off, n;
	uint32_t err, msglen;
	int ret = rx_input(rx_need(conn, rx->need), why);

	if (ret)
		return ret;
	b = conn->rbuf + conn->rpos;
	conn->rpos += rx->need;
	switch (rx->type) {
	case TBLK_NBD_REPLY_TYPE_OFFSET_DATA:
	case TBLK_NBD_REPLY_TYPE_OFFSET_HOLE:
		off = tblk__nbd_get64(b);
		n = rx->type == TBLK_NBD_REPLY_TYPE_OFFSET_HOLE ? tblk__nbd_get32(b + 8) :
								  rx->len - 8u;
		if (off < cmd->offset || off - cmd->offset > cmd->len || n == 0 ||
		    n > cmd->len - (off - cmd->offset)) {
			*why = "Server sent a read chunk outside the request";
			return RX_BROKEN;
		}
		slot->covered += n;
		if (rx->type == TBLK_NBD_REPLY_TYPE_OFFSET_HOLE) {
			tblk_iov_memset(cmd->iov, cmd->iovcnt, off - cmd->offset, 0, n);
			return rx_chunk_end(conn);
		}
		rx->state = RX_DATA;
		rx->off = off - cmd->offset;
		rx->left = n;
		return 0;
	case TBLK_NBD_REPLY_TYPE_BLOCK_STATUS:
		if (tblk__nbd_get32(b) != conn->info.alloc_id) {
			*why = "Server sent block status for a meta context we did not negotiate";
			return RX_BROKEN;
		}
		if (tblk__nbd_get32(b + 4) == 0) {
			*why = "Server sent an empty extent";
			return RX_BROKEN;
		}
		if (!slot->got_extent) {
			/* Servers may describe more than asked; we only use what we asked about. */
			cmd->bs_len = TBLK_MIN(tblk__nbd_get32(b + 4), cmd->len);
			cmd->bs_flags = tblk__nbd_get32(b + 8);
			slot->got_extent = true;
		}
		rx->state = RX_SKIP;
		rx->left = rx->len - 12u;
		return 0;
	default:	/* ERROR, ERROR_OFFSET: the first error is the request's */
		err = tblk__nbd_get32(b);
		msglen = tblk__nbd_get16(b + 4);
		if (err == 0) {
			*why = "Server sent an error chunk without an error";
			return RX_BROKEN;
		}
		if (msglen > rx->len - 6 ||
		    rx->len - 6 - msglen != (rx->type == TBLK_NBD_REPLY_TYPE_ERROR_OFFSET ? 8u : 0u)) {
			*why = "Server sent an error chunk of an invalid length";
			return RX_BROKEN;
		}
		if (!slot->ret)
			slot->ret = nbd_errno(err);
		rx->state = RX_SKIP;
		rx->left = msglen;
		return 0;
	}
}

/* An ERROR_OFFSET chunk's offset, after its message. */
static int rx_err_offset(struct tblk_nbd_conn *conn, const char **why)
{
	struct tblk_nbd_rx *rx = &conn->rx;
	struct tblk_nbd_cmd *cmd = rx->slot->cmd;
	uint64_t off;
	int ret = rx_input(rx_need(conn, 8), why);

	if (ret)
		return ret;
	off = tblk__nbd_get64(conn->rbuf + conn->rpos);
	conn->rpos += 8;
	if (off < cmd->offset || off - cmd->offset >= cmd->len) {
		*why = "Server sent an error offset outside the request";
		return RX_BROKEN;
	}
	return rx_chunk_end(conn);
}

/* Payload: read data into the request's buffers, or bytes to drop. */
static int rx_payload(struct tblk_nbd_conn *conn, const char **why)
{
	struct tblk_nbd_rx *rx = &conn->rx;

	while (rx->left) {
		void *dst = NULL;
		size_t n = (size_t)TBLK_MIN(rx->left, (uint64_t)SIZE_MAX);
		ssize_t r;

		if (rx->state == RX_DATA) {
			const struct iovec *iov = rx->slot->cmd->iov;
			int i, cnt = rx->slot->cmd->iovcnt;
			uint64_t off = rx->off;

			for (i = 0; i < cnt && off >= iov[i].iov_len; i++)
				off -= iov[i].iov_len;
			if (i == cnt) {	/* the buffers are shorter than the command */
				*why = "Server sent a read chunk outside the request";
				return RX_BROKEN;
			}
			dst = (uint8_t *)iov[i].iov_base + off;
			n = (size_t)TBLK_MIN((uint64_t)n, iov[i].iov_len - off);
		}
		r = rx_stream(conn, dst, n);
		if (r < 0) {
			*why = rx->chunk ? mid_reply :
			       "Server closed the connection in the middle of a read reply";
			return RX_BROKEN;
		}
		if (r == 0)
			return RX_AGAIN;
		rx->off += (uint64_t)r;
		rx->left -= (uint64_t)r;
	}
	if (rx->state == RX_SKIP && rx->type == TBLK_NBD_REPLY_TYPE_ERROR_OFFSET) {
		rx->state = RX_ERR_OFFSET;
		return 0;
	}
	return rx_chunk_end(conn);
}

/* One step of the parser: 0 (progress), RX_AGAIN, or RX_BROKEN with *why. */
static int rx_step(struct tblk_nbd_conn *conn, const char **why)
{
	switch (conn->rx.state) {
	case RX_HEADER:
		return rx_header(conn, why);
	case RX_PREFIX:
		return rx_prefix(conn, why);
	case RX_DATA:
	case RX_SKIP:
		return rx_payload(conn, why);
	case RX_ERR_OFFSET:
		return rx_err_offset(conn, why);
	}
	return RX_BROKEN;
}

/*
 * Parses what has come in, at most @budget steps (0: no limit), without waiting. Returns 0
 * once it needs more input, 1 if the budget ran out (whole replies may still be buffered),
 * or -EIO when the connection is broken. Any thread; the parser is under rx_lock.
 */
static int conn_rx(struct tblk_nbd_conn *conn, unsigned int budget)
{
	const char *why = NULL;
	int ret = 0;

	tblk_mutex_lock(&conn->rx_lock);
	conn->rx_short = false;
	while (!conn->rx_dead) {
		int r = rx_step(conn, &why);

		if (r == RX_AGAIN)
			break;
		if (r == RX_BROKEN) {
			conn->rx_dead = true;
			conn_break(conn, why);
			break;
		}
		if (budget && !--budget) {
			ret = 1;
			break;
		}
	}
	if (conn->rx_dead)
		ret = -EIO;
	tblk_mutex_unlock(&conn->rx_lock);
	return ret;
}

int tblk__nbd_conn_poll(struct tblk_nbd_conn *conn)
{
	return conn_rx(conn, 256);
}

int tblk__nbd_conn_fd(struct tblk_nbd_conn *conn)
{
	return conn->fd;
}

/*
 * The reader thread reads while some request in flight has no loop reading for it (a
 * synchronous caller, or a fast-path request of a loop without a handler); else it sleeps.
 */
static void *reader_main(void *opaque)
{
	struct tblk_nbd_conn *conn = opaque;
	struct pollfd pfd = { .fd = conn->fd, .events = POLLIN };

	for (;;) {
		tblk_mutex_lock(&conn->lock);
		/* A poisoned connection is read to its end, which fails what is pending. */
		while (!conn->stopping && !conn->nr_thread && !(conn->broken && conn->nr_pending))
			tblk_cond_wait(&conn->reader_cv, &conn->lock);
		if (conn->stopping) {
			tblk_mutex_unlock(&conn->lock);
			break;
		}
		tblk_mutex_unlock(&conn->lock);
		if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
			break;
		if (conn_rx(conn, 0) < 0)
			break;
	}
	return NULL;
}

/* ---------------------------------------------------------------- requests */

/*
 * Writes @cnt iovecs in as few syscalls as the kernel lets; advances @iov over what went
 * out. 0 or -errno. Caller holds send_lock.
 */
static int send_iov(struct tblk_nbd_conn *conn, struct iovec *iov, int cnt)
{
	struct msghdr msg = { 0 };
	int i = 0;

	tblk_mutex_assert_held(&conn->send_lock);
	while (i < cnt) {
		ssize_t r;

		msg.msg_iov = iov + i;
		msg.msg_iovlen = (size_t)TBLK_MIN(cnt - i, 1024);
		r = sendmsg(conn->fd, &msg, MSG_NOSIGNAL);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		while (i < cnt && (size_t)r >= iov[i].iov_len)
			r -= (ssize_t)iov[i++].iov_len;
		if (i < cnt) {
			iov[i].iov_base = (uint8_t *)iov[i].iov_base + r;
			iov[i].iov_len -= (size_t)r;
		}
	}
	return 0;
}

/* Writes a request header and its payload in one go. */
static int send_request(struct tblk_nbd_conn *conn, const uint8_t *hdr,
			const struct tblk_nbd_cmd *cmd)
{
	bool payload = cmd->type == TBLK_NBD_CMD_WRITE;
	int cnt = 1 + (payload ? cmd->iovcnt : 0);
	struct iovec small[16];
	g_autofree struct iovec *big = cnt > 16 ? g_new(struct iovec, cnt) : NULL;
	struct iovec *iov = big ? big : small;
	int ret;

	iov[0] = (struct iovec){ (void *)hdr, TBLK_NBD_REQUEST_SIZE };
	if (payload)
		memcpy(iov + 1, cmd->iov, sizeof(*iov) * (size_t)cmd->iovcnt);
	tblk_mutex_lock(&conn->send_lock);
	ret = send_iov(conn, iov, cnt);
	tblk_mutex_unlock(&conn->send_lock);
	return ret;
}

/* Puts @slot on the pending list (@link) under a new cookie. Caller holds the lock, not broken. */
static void slot_add_locked(struct tblk_nbd_conn *conn, struct tblk_nbd_slot *slot, bool link)
{
	tblk_mutex_assert_held(&conn->lock);
	slot->cookie = ++conn->next_cookie;
	slot->done = false;
	slot->ret = 0;
	slot->covered = 0;
	slot->got_extent = false;
	slot->cmd->bs_len = slot->cmd->bs_flags = 0;
	if (!link)
		return;	/* deferred: tblk__nbd_conn_flush() links it */
	tblk_list_add_tail(&conn->pending, &slot->link);
	conn->nr_pending++;
	if (slot->by_thread && !conn->nr_thread++)
		tblk_cond_signal(&conn->reader_cv);
}

static void slot_header(const struct tblk_nbd_slot *slot, uint8_t *hdr)
{
	const struct tblk_nbd_cmd *cmd = slot->cmd;

	tblk__nbd_put32(hdr, TBLK_NBD_REQUEST_MAGIC);
	tblk__nbd_put16(hdr + 4, cmd->flags);
	tblk__nbd_put16(hdr + 6, cmd->type);
	tblk__nbd_put64(hdr + 8, slot->cookie);
	tblk__nbd_put64(hdr + 16, cmd->offset);
	tblk__nbd_put32(hdr + 24, cmd->len);
}

/* Writes @slot's request. A failure breaks the connection, which completes the slot. */
static void slot_send(struct tblk_nbd_conn *conn, struct tblk_nbd_slot *slot)
{
	uint8_t hdr[TBLK_NBD_REQUEST_SIZE];

	slot_header(slot, hdr);
	/* A request cut in the middle desynchronises the stream. */
	if (send_request(conn, hdr, slot->cmd) < 0)
		conn_poison(conn, "Failed to send a request to the server");
}

/*
 * The batch goes on the pending list and out in one write; on a broken connection its
 * requests fail instead (nothing was written for them, so no reply can have come).
 */
void tblk__nbd_conn_flush(struct tblk_nbd_conn *conn)
{
	unsigned int i, nr = conn->batch_nr;
	int broken, ret = 0;

	if (!nr)
		return;
	tblk_mutex_lock(&conn->lock);
	broken = conn->broken;
	for (i = 0; i < nr; i++) {
		struct tblk_nbd_slot *slot = conn->batch_slot[i];

		if (broken) {
			slot->ret = broken;
			slot->done = true;
			slot->complete(slot);
		} else {
			tblk_list_add_tail(&conn->pending, &slot->link);
		}
	}
	if (!broken)
		conn->nr_pending += nr;
	tblk_mutex_unlock(&conn->lock);
	if (!broken) {
		tblk_mutex_lock(&conn->send_lock);
		ret = send_iov(conn, conn->batch_iov, (int)conn->batch_nr_iov);
		tblk_mutex_unlock(&conn->send_lock);
	}
	conn->batch_nr = conn->batch_nr_iov = 0;
	conn->batch_payload = 0;
	if (ret < 0)	/* a request cut in the middle desynchronises the stream */
		conn_poison(conn, "Failed to send a request to the server");
}

/* Whether @cmd can join a batch at all: small enough, and a slot that completes by callback. */
static bool cmd_batchable(const struct tblk_nbd_slot *slot)
{
	const struct tblk_nbd_cmd *cmd = slot->cmd;
	bool payload = cmd->type == TBLK_NBD_CMD_WRITE;

	return slot->complete && !slot->by_thread &&
	       (!payload || ((unsigned int)cmd->iovcnt < NBD_BATCH_IOV &&
			     cmd->len <= NBD_BATCH_PAYLOAD));
}

/* Flushes the batch if @slot's request would not fit in it. */
static void batch_make_room(struct tblk_nbd_conn *conn, const struct tblk_nbd_slot *slot)
{
	const struct tblk_nbd_cmd *cmd = slot->cmd;
	bool payload = cmd->type == TBLK_NBD_CMD_WRITE;
	unsigned int cnt = 1 + (payload ? (unsigned int)cmd->iovcnt : 0);

	if (conn->batch_nr == NBD_MAX_IN_FLIGHT || conn->batch_nr_iov + cnt > NBD_BATCH_IOV ||
	    conn->batch_payload + (payload ? cmd->len : 0) > NBD_BATCH_PAYLOAD)
		tblk__nbd_conn_flush(conn);
}

/* Queues @slot's request (it fits: batch_make_room() ran) on the batch. */
static void batch_add(struct tblk_nbd_conn *conn, struct tblk_nbd_slot *slot)
{
	const struct tblk_nbd_cmd *cmd = slot->cmd;
	uint8_t *hdr = conn->batch_hdr[conn->batch_nr];

	slot_header(slot, hdr);
	conn->batch_slot[conn->batch_nr++] = slot;
	conn->batch_iov[conn->batch_nr_iov++] = (struct iovec){ hdr, TBLK_NBD_REQUEST_SIZE };
	if (cmd->type == TBLK_NBD_CMD_WRITE) {
		memcpy(conn->batch_iov + conn->batch_nr_iov, cmd->iov,
		       sizeof(struct iovec) * (size_t)cmd->iovcnt);
		conn->batch_nr_iov += (unsigned int)cmd->iovcnt;
		conn->batch_payload += cmd->len;
	}
}

int tblk__nbd_conn_run(struct tblk_nbd_conn *conn, struct tblk_nbd_cmd *cmd)
{
	struct tblk_nbd_slot slot = { .cmd = cmd, .by_thread = true };
	int ret;

	tblk_cond_init(&slot.cv);
	tblk_mutex_lock(&conn->lock);
	while (!conn->broken && conn->nr_pending >= NBD_MAX_IN_FLIGHT)
		tblk_pool_wait(&conn->slot_cv, &conn->lock);
	if (conn->broken) {
		ret = conn->broken;
		tblk_mutex_unlock(&conn->lock);
		goto out_destroy;
	}
	slot_add_locked(conn, &slot, true);
	tblk_mutex_unlock(&conn->lock);

	slot_send(conn, &slot);

	tblk_mutex_lock(&conn->lock);
	while (!slot.done)
		tblk_pool_wait(&slot.cv, &conn->lock);
	ret = slot.ret;
	tblk_mutex_unlock(&conn->lock);
out_destroy:
	tblk_cond_destroy(&slot.cv);
	return ret;
}

int tblk__nbd_conn_submit(struct tblk_nbd_conn *conn, struct tblk_nbd_slot *slot, bool defer)
{
	if (defer && !cmd_batchable(slot)) {
		tblk__nbd_conn_flush(conn);	/* keeps the batcher's requests in order */
		defer = false;
	} else if (defer) {
		batch_make_room(conn, slot);
	}
	tblk_mutex_lock(&conn->lock);
	if (conn->broken ||
	    conn->nr_pending + (defer ? conn->batch_nr : 0) >= NBD_MAX_IN_FLIGHT) {
		tblk_mutex_unlock(&conn->lock);
		return -EAGAIN;
	}
	slot_add_locked(conn, slot, !defer);
	tblk_mutex_unlock(&conn->lock);
	if (defer)
		batch_add(conn, slot);
	else
		slot_send(conn, slot);
	return 0;
}

/* ---------------------------------------------------------------- open and close */

int tblk__nbd_conn_open(const struct tblk_nbd_addr *addr, struct tblk_nbd_conn **pconn,
			GError **errp)
{
	struct tblk_nbd_conn *conn;
	int fd, ret;

	fd = tblk__nbd_socket_connect(addr, errp);
	if (fd < 0)
		return fd;
	conn = g_new0(struct tblk_nbd_conn, 1);
	conn->fd = fd;
	conn->rbuf = g_malloc(NBD_RBUF_SIZE);
	ret = tblk__nbd_handshake(fd, addr->export, &conn->info, errp);
	if (ret < 0)
		goto out_close;
	tblk_mutex_init(&conn->send_lock);
	tblk_mutex_init(&conn->rx_lock);
	tblk_mutex_init(&conn->lock);
	tblk_cond_init(&conn->slot_cv);
	tblk_cond_init(&conn->reader_cv);
	tblk_list_init(&conn->pending);
	ret = -pthread_create(&conn->reader, NULL, reader_main, conn);
	if (ret < 0) {
		tblk_error_set_errno(errp, -ret, "Failed to start the NBD reader thread");
		goto out_destroy;
	}
	conn->reader_started = true;
	*pconn = conn;
	return 0;

out_destroy:
	tblk_cond_destroy(&conn->reader_cv);
	tblk_cond_destroy(&conn->slot_cv);
	tblk_mutex_destroy(&conn->lock);
	tblk_mutex_destroy(&conn->rx_lock);
	tblk_mutex_destroy(&conn->send_lock);
out_close:
	close(fd);
	g_free(conn->rbuf);
	g_free(conn);
	return ret;
}

void tblk__nbd_conn_free(struct tblk_nbd_conn *conn)
{
	uint8_t hdr[TBLK_NBD_REQUEST_SIZE] = { 0 };
	bool broken;

	if (!conn)
		return;
	assert(!conn->batch_nr);	/* the node was drained */
	tblk_mutex_lock(&conn->lock);
	broken = conn->broken;
	tblk_mutex_unlock(&conn->lock);
	if (!broken) {
		/* Nothing is in flight (the node was drained): say goodbye politely. */
		tblk__nbd_put32(hdr, TBLK_NBD_REQUEST_MAGIC);
		tblk__nbd_put16(hdr + 6, TBLK_NBD_CMD_DISC);
		tblk_mutex_lock(&conn->send_lock);
		(void)tblk__nbd_write_full(conn->fd, hdr, sizeof(hdr));
		tblk_mutex_unlock(&conn->send_lock);
	}
	tblk_mutex_lock(&conn->lock);
	conn->stopping = true;
	tblk_cond_signal(&conn->reader_cv);
	tblk_mutex_unlock(&conn->lock);
	shutdown(conn->fd, SHUT_RDWR);
	pthread_join(conn->reader, NULL);
	close(conn->fd);
	tblk_cond_destroy(&conn->reader_cv);
	tblk_cond_destroy(&conn->slot_cv);
	tblk_mutex_destroy(&conn->lock);
	tblk_mutex_destroy(&conn->rx_lock);
	tblk_mutex_destroy(&conn->send_lock);
	g_free(conn->why);
	g_free(conn->rbuf);
	g_free(conn);
}
