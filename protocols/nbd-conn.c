/* SPDX-License-Identifier: MIT */
/*
 * nbd-conn.c - one NBD connection in the transmission phase: many requests in flight at
 * once, matched to their replies by cookie.
 *
 * A caller (a pool worker or a synchronous caller) puts its request on the pending list,
 * writes it to the socket under send_lock (held only for that one write, so requests are
 * not interleaved on the wire), then sleeps in the pool's wait service on its own condition
 * variable. The reader thread is the only one that reads the socket: it parses each reply
 * header, finds the request by cookie, reads the payload straight into the caller's buffers
 * (the caller is asleep until `done`, so they are stable), and wakes the caller.
 *
 * Anything the server sends that breaks the protocol (bad magic, unknown cookie, a chunk
 * too long or outside its request, a truncated stream) breaks the connection: the reader
 * fails every pending request with -EIO and exits; later requests fail at once. Nothing the
 * server sends is trusted for a length or an offset before it is checked.
 *
 * Asynchronous requests (tblk__nbd_conn_submit(), the fast path) are sent the same way from
 * the loop thread, and the reader calls their completion function instead of waking a
 * sleeper.
 *
 * Lock order: send_lock before lock; lock is never held across socket I/O, and only an
 * asynchronous request's completion function (which takes its own leaf lock) runs under it.
 */
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "protocols/nbd-int.h"
#include "tracked/tracked.h"

/* Requests in flight on one connection; more wait for a slot. */
#define NBD_MAX_IN_FLIGHT	64
/* The reader's read-ahead buffer; payloads of half of it or more bypass it. */
#define NBD_RBUF_SIZE		(64 * 1024)

struct tblk_nbd_conn {
	int fd;				/* [const] */
	struct tblk_nbd_info info;	/* [const] */
	pthread_t reader;		/* [const] */
	bool reader_started;		/* [const] */

	struct tblk_mutex send_lock;	/* serialises writes of whole requests; before lock */

	struct tblk_mutex lock;		/* leaf */
	struct tblk_cond slot_cv;	/* [lock] signalled when nr_pending drops */
	struct tblk_list pending;	/* [lock] struct tblk_nbd_slot, sent or being sent */
	unsigned int nr_pending;	/* [lock] */
	uint64_t next_cookie;		/* [lock] */
	int broken;			/* [lock] 0, or -EIO once the connection failed */
	char *why;			/* [lock] what broke it */

	uint8_t *rbuf;			/* [reader] NBD_RBUF_SIZE bytes read ahead */
	size_t rpos, rlen;		/* [reader] unread bytes are rbuf[rpos, rlen) */
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
	tblk_cond_broadcast(&conn->slot_cv);
}

/* Reader thread only: it alone completes requests, so none is failed while it fills it. */
static void conn_break(struct tblk_nbd_conn *conn, const char *why)
{
	tblk_mutex_lock(&conn->lock);
	conn_break_locked(conn, why);
	tblk_mutex_unlock(&conn->lock);
	shutdown(conn->fd, SHUT_RDWR);
}

/*
 * Any other thread: refuses new requests at once and shuts the socket down, which makes
 * the reader fail the pending ones (and exit).
 */
static void conn_poison(struct tblk_nbd_conn *conn, const char *why)
{
	tblk_mutex_lock(&conn->lock);
	if (!conn->broken) {
		conn->broken = -EIO;
		conn->why = g_strdup(why);
	}
	tblk_mutex_unlock(&conn->lock);
	shutdown(conn->fd, SHUT_RDWR);
}

/* ---------------------------------------------------------------- the reader thread */

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
 * Reads exactly @n bytes of the stream: from the reader's buffer, refilled with as much as
 * the socket has (one recv() for many small replies), or straight into @dst for big reads.
 * 0, -EPIPE at end of stream, or -errno. Reader thread.
 */
static int conn_read(struct tblk_nbd_conn *conn, void *dst, size_t n)
{
	uint8_t *p = dst;

	while (n) {
		size_t have = conn->rlen - conn->rpos;
		ssize_t r;

		if (have) {
			size_t take = TBLK_MIN(have, n);

			memcpy(p, conn->rbuf + conn->rpos, take);
			conn->rpos += take;
			p += take;
			n -= take;
			continue;
		}
		if (n >= NBD_RBUF_SIZE / 2)
			return tblk__nbd_read_full(conn->fd, p, n);
		r = recv(conn->fd, conn->rbuf, NBD_RBUF_SIZE, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -EPIPE;
		conn->rpos = 0;
		conn->rlen = (size_t)r;
	}
	return 0;
}

/* Reads @n bytes into @iov starting @off bytes into it. 0 or -errno. */
static int read_into_iov(struct tblk_nbd_conn *conn, const struct iovec *iov, int iovcnt,
			 uint64_t off, uint64_t n)
{
	for (int i = 0; i < iovcnt && n; i++) {
		uint64_t take;
		int ret;

		if (off >= iov[i].iov_len) {
			off -= iov[i].iov_len;
			continue;
		}
		take = TBLK_MIN(n, iov[i].iov_len - off);
		ret = conn_read(conn, (uint8_t *)iov[i].iov_base + off, take);
		if (ret < 0)
			return ret;
		off = 0;
		n -= take;
	}
	return n ? -EINVAL : 0;
}

/* Reads and drops @n bytes. */
static int skip_bytes(struct tblk_nbd_conn *conn, uint64_t n)
{
	uint8_t buf[4096];

	while (n) {
		size_t take = (size_t)TBLK_MIN(n, sizeof(buf));
		int ret = conn_read(conn, buf, take);

		if (ret < 0)
			return ret;
		n -= take;
	}
	return 0;
}

/* Finds the pending request of @cookie. The reader owns it until it sets done. */
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
		slot->done = true;
		if (slot->complete)
			slot->complete(slot);
		else
			tblk_cond_signal(&slot->cv);
		tblk_cond_signal(&conn->slot_cv);
	}
	tblk_mutex_unlock(&conn->lock);
}

/* A simple reply: 16 bytes read; a successful read's data follows. NULL or why it broke. */
static const char *simple_reply(struct tblk_nbd_conn *conn, const uint8_t *hdr)
{
	struct tblk_nbd_slot *slot = find_slot(conn, tblk__nbd_get64(hdr + 8));
	uint32_t err = tblk__nbd_get32(hdr + 4);
	struct tblk_nbd_cmd *cmd;

	if (!slot)
		return "Server replied to a request we did not send";
	cmd = slot->cmd;
	if (err) {
		slot->ret = nbd_errno(err);
	} else if (cmd->type == TBLK_NBD_CMD_READ) {
		if (conn->info.structured)
			return "Server sent a simple reply to a read after agreeing to "
			       "structured replies";
		if (read_into_iov(conn, cmd->iov, cmd->iovcnt, 0, cmd->len) < 0)
			return "Server closed the connection in the middle of a read reply";
	} else if (cmd->type == TBLK_NBD_CMD_BLOCK_STATUS) {
		return "Server sent a simple reply to a block status request";
	}
	slot_done(conn, slot);
	return NULL;
}

/* OFFSET_DATA and OFFSET_HOLE chunks of a read. */
static const char *read_chunk(struct tblk_nbd_conn *conn, struct tblk_nbd_slot *slot,
			      uint16_t type, uint32_t len)
{
	struct tblk_nbd_cmd *cmd = slot->cmd;
	uint8_t b[12];
	uint64_t off, n;

	if (cmd->type != TBLK_NBD_CMD_READ)
		return "Server sent read data in reply to a request that is not a read";
	if (type == TBLK_NBD_REPLY_TYPE_OFFSET_HOLE ? len != 12 : len < 8)
		return "Server sent a read chunk of an invalid length";
	if (conn_read(conn, b, type == TBLK_NBD_REPLY_TYPE_OFFSET_HOLE ? 12 : 8))
		return "Server closed the connection in the middle of a reply";
	off = tblk__nbd_get64(b);
	n = type == TBLK_NBD_REPLY_TYPE_OFFSET_HOLE ? tblk__nbd_get32(b + 8) : len - 8u;
	if (off < cmd->offset || off - cmd->offset > cmd->len || n == 0 ||
	    n > cmd->len - (off - cmd->offset))
		return "Server sent a read chunk outside the request";
	off -= cmd->offset;
	if (type == TBLK_NBD_REPLY_TYPE_OFFSET_HOLE)
		tblk_iov_memset(cmd->iov, cmd->iovcnt, off, 0, n);
	else if (read_into_iov(conn, cmd->iov, cmd->iovcnt, off, n) < 0)
		return "Server closed the connection in the middle of a reply";
	slot->covered += n;
	return NULL;
}

/* A BLOCK_STATUS chunk: the first extent of our context is the answer. */
static const char *status_chunk(struct tblk_nbd_conn *conn, struct tblk_nbd_slot *slot,
				uint32_t len)
{
	struct tblk_nbd_cmd *cmd = slot->cmd;
	uint8_t b[12];

	if (cmd->type != TBLK_NBD_CMD_BLOCK_STATUS)
		return "Server sent block status in reply to another request";
	if (len < 12 || (len - 4) % 8)
		return "Server sent a block status chunk of an invalid length";
	if (conn_read(conn, b, 12))
		return "Server closed the connection in the middle of a reply";
	if (tblk__nbd_get32(b) != conn->info.alloc_id)
		return "Server sent block status for a meta context we did not negotiate";
	if (tblk__nbd_get32(b + 4) == 0)
		return "Server sent an empty extent";
	if (!slot->got_extent) {
		/* Servers may describe more than asked; we only use what we asked about. */
		cmd->bs_len = TBLK_MIN(tblk__nbd_get32(b + 4), cmd->len);
		cmd->bs_flags = tblk__nbd_get32(b + 8);
		slot->got_extent = true;
	}
	if (skip_bytes(conn, len - 12))
		return "Server closed the connection in the middle of a reply";
	return NULL;
}

/* ERROR and ERROR_OFFSET chunks: the first error is the request's. */
static const char *error_chunk(struct tblk_nbd_conn *conn, struct tblk_nbd_slot *slot,
			       uint16_t type, uint32_t len)
{
	struct tblk_nbd_cmd *cmd = slot->cmd;
	uint8_t b[6 + 8];
	uint32_t err, msglen;

	if (len < 6)
		return "Server sent an error chunk of an invalid length";
	if (conn_read(conn, b, 6))
		return "Server closed the connection in the middle of a reply";
	err = tblk__nbd_get32(b);
	msglen = tblk__nbd_get16(b + 4);
	if (err == 0)
		return "Server sent an error chunk without an error";
	if (msglen > len - 6 || (type == TBLK_NBD_REPLY_TYPE_ERROR_OFFSET && len - 6 - msglen != 8))
		return "Server sent an error chunk of an invalid length";
	if (skip_bytes(conn, msglen))
		return "Server closed the connection in the middle of a reply";
	if (type == TBLK_NBD_REPLY_TYPE_ERROR_OFFSET) {
		uint64_t off;

		if (conn_read(conn, b + 6, 8))
			return "Server closed the connection in the middle of a reply";
		off = tblk__nbd_get64(b + 6);
		if (off < cmd->offset || off - cmd->offset >= cmd->len)
			return "Server sent an error offset outside the request";
	} else if (len - 6 - msglen) {
		return "Server sent an error chunk of an invalid length";
	}
	if (!slot->ret)
		slot->ret = nbd_errno(err);
	return NULL;
}

/* A structured reply chunk: 20 bytes read. NULL or why the connection must break. */
static const char *structured_chunk(struct tblk_nbd_conn *conn, const uint8_t *hdr)
{
	uint16_t flags = tblk__nbd_get16(hdr + 4), type = tblk__nbd_get16(hdr + 6);
	uint32_t len = tblk__nbd_get32(hdr + 16);
	struct tblk_nbd_slot *slot;
	struct tblk_nbd_cmd *cmd;
	const char *why = NULL;

	if (!conn->info.structured)
		return "Server sent a structured reply we did not agree to";
	slot = find_slot(conn, tblk__nbd_get64(hdr + 8));
	if (!slot)
		return "Server replied to a request we did not send";
	cmd = slot->cmd;
	if (len > TBLK_NBD_MAX_BUFFER + 64u)
		return "Server sent a reply chunk that is too long";
	switch (type) {
	case TBLK_NBD_REPLY_TYPE_NONE:
		if (len || !(flags & TBLK_NBD_REPLY_FLAG_DONE))
			why = "Server sent an invalid NONE chunk";
		break;
	case TBLK_NBD_REPLY_TYPE_OFFSET_DATA:
	case TBLK_NBD_REPLY_TYPE_OFFSET_HOLE:
		why = read_chunk(conn, slot, type, len);
		break;
	case TBLK_NBD_REPLY_TYPE_BLOCK_STATUS:
		why = status_chunk(conn, slot, len);
		break;
	case TBLK_NBD_REPLY_TYPE_ERROR:
	case TBLK_NBD_REPLY_TYPE_ERROR_OFFSET:
		why = error_chunk(conn, slot, type, len);
		break;
	default:
		/* Unknown error types fail the request; unknown others break the protocol. */
		if (!(type & (1u << 15)))
			return "Server sent a reply chunk of an unknown type";
		if (skip_bytes(conn, len))
			return "Server closed the connection in the middle of a reply";
		if (!slot->ret)
			slot->ret = -EIO;
		break;
	}
	if (why || !(flags & TBLK_NBD_REPLY_FLAG_DONE))
		return why;
	if (!slot->ret && cmd->type == TBLK_NBD_CMD_READ && slot->covered < cmd->len)
		slot->ret = -EIO;	/* the server left part of the read undescribed */
	if (!slot->ret && cmd->type == TBLK_NBD_CMD_BLOCK_STATUS && !slot->got_extent)
		slot->ret = -EIO;
	slot_done(conn, slot);
	return NULL;
}

static void *reader_main(void *opaque)
{
	struct tblk_nbd_conn *conn = opaque;
	const char *why = NULL;
	uint8_t hdr[TBLK_NBD_STRUCTURED_REPLY_SIZE];

	while (!why) {
		int ret = conn_read(conn, hdr, 4);
		uint32_t magic;

		if (ret == 0) {
			magic = tblk__nbd_get32(hdr);
			if (magic == TBLK_NBD_SIMPLE_REPLY_MAGIC) {
				ret = conn_read(conn, hdr + 4,
							  TBLK_NBD_SIMPLE_REPLY_SIZE - 4);
				why = ret ? NULL : simple_reply(conn, hdr);
			} else if (magic == TBLK_NBD_STRUCTURED_REPLY_MAGIC) {
				ret = conn_read(conn, hdr + 4,
							  TBLK_NBD_STRUCTURED_REPLY_SIZE - 4);
				why = ret ? NULL : structured_chunk(conn, hdr);
			} else {
				why = "Server sent a reply with a bad magic";
			}
		}
		if (ret < 0)
			why = ret == -EPIPE ? "Server closed the connection" :
					      "Failed to read from the server";
	}
	conn_break(conn, why);
	return NULL;
}

/* ---------------------------------------------------------------- requests */

/* Writes a request header and its payload in one go (as few syscalls as the kernel lets). */
static int send_request(struct tblk_nbd_conn *conn, const uint8_t *hdr,
			const struct tblk_nbd_cmd *cmd)
{
	bool payload = cmd->type == TBLK_NBD_CMD_WRITE;
	int cnt = 1 + (payload ? cmd->iovcnt : 0);
	struct iovec small[16];
	g_autofree struct iovec *big = cnt > 16 ? g_new(struct iovec, cnt) : NULL;
	struct iovec *iov = big ? big : small;
	struct msghdr msg = { 0 };
	int i = 0;

	iov[0] = (struct iovec){ (void *)hdr, TBLK_NBD_REQUEST_SIZE };
	if (payload)
		memcpy(iov + 1, cmd->iov, sizeof(*iov) * (size_t)cmd->iovcnt);
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

/* Puts @slot on the pending list under a new cookie. Caller holds the lock, not broken. */
static void slot_add_locked(struct tblk_nbd_conn *conn, struct tblk_nbd_slot *slot)
{
	tblk_mutex_assert_held(&conn->lock);
	slot->cookie = ++conn->next_cookie;
	slot->done = false;
	slot->ret = 0;
	slot->covered = 0;
	slot->got_extent = false;
	slot->cmd->bs_len = slot->cmd->bs_flags = 0;
	tblk_list_add_tail(&conn->pending, &slot->link);
	conn->nr_pending++;
}

/* Writes @slot's request. A failure breaks the connection, which completes the slot. */
static void slot_send(struct tblk_nbd_conn *conn, struct tblk_nbd_slot *slot)
{
	const struct tblk_nbd_cmd *cmd = slot->cmd;
	uint8_t hdr[TBLK_NBD_REQUEST_SIZE];
	int ret;

	tblk__nbd_put32(hdr, TBLK_NBD_REQUEST_MAGIC);
	tblk__nbd_put16(hdr + 4, cmd->flags);
	tblk__nbd_put16(hdr + 6, cmd->type);
	tblk__nbd_put64(hdr + 8, slot->cookie);
	tblk__nbd_put64(hdr + 16, cmd->offset);
	tblk__nbd_put32(hdr + 24, cmd->len);
	tblk_mutex_lock(&conn->send_lock);
	ret = send_request(conn, hdr, cmd);
	tblk_mutex_unlock(&conn->send_lock);
	if (ret < 0)	/* a request cut in the middle desynchronises the stream */
		conn_poison(conn, "Failed to send a request to the server");
}

int tblk__nbd_conn_run(struct tblk_nbd_conn *conn, struct tblk_nbd_cmd *cmd)
{
	struct tblk_nbd_slot slot = { .cmd = cmd };
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
	slot_add_locked(conn, &slot);
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

int tblk__nbd_conn_submit(struct tblk_nbd_conn *conn, struct tblk_nbd_slot *slot)
{
	tblk_mutex_lock(&conn->lock);
	if (conn->broken || conn->nr_pending >= NBD_MAX_IN_FLIGHT) {
		tblk_mutex_unlock(&conn->lock);
		return -EAGAIN;
	}
	slot_add_locked(conn, slot);
	tblk_mutex_unlock(&conn->lock);
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
	tblk_mutex_init(&conn->lock);
	tblk_cond_init(&conn->slot_cv);
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
	tblk_cond_destroy(&conn->slot_cv);
	tblk_mutex_destroy(&conn->lock);
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
	shutdown(conn->fd, SHUT_RDWR);
	pthread_join(conn->reader, NULL);
	close(conn->fd);
	tblk_cond_destroy(&conn->slot_cv);
	tblk_mutex_destroy(&conn->lock);
	tblk_mutex_destroy(&conn->send_lock);
	g_free(conn->why);
	g_free(conn->rbuf);
	g_free(conn);
}
