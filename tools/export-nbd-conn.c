/* SPDX-License-Identifier: MIT */
/*
 * export-nbd-conn.c - one NBD client connection: a non-blocking socket driven by fd
 * handlers on one loop, the handshake (export-nbd-proto.c), then requests read one header at
 * a time, checked, and submitted to the backend asynchronously (block status on the worker
 * pool), so that many are in flight at once and replies leave in completion order.
 *
 * Threading: everything here runs on conn->loop: the server's loop for the handshake, then
 * the backend's loop (the connection moves with tblk_loop_call_soon() when they differ).
 * Input stops while NBDS_MAX_INFLIGHT requests or NBDS_MAX_BUFFERED bytes are held, so a
 * client cannot make us buffer without bound.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tools/export-nbd-srv.h"

/* A reply being sent: header bytes and data pieces, as an iovec. */
struct nbds_out {
	struct nbds_out *next;
	GByteArray *hdr;		/* chunk headers, referenced by offset until finished */
	GArray *segs;			/* struct seg, while being built */
	void *data;			/* data buffer (buf_put()), may be NULL */
	uint32_t data_len;		/* its requested length */
	struct iovec *iov;
	int iovcnt, idx;		/* iov[idx..] not yet sent */
	size_t bytes;			/* accounted in conn->buffered */
};

struct seg {
	bool data;
	size_t off, len;
};

struct nbds_req {
	struct nbds_conn *conn;
	struct nbds_request r;
	void *buf;			/* READ/WRITE data (buf_put()) */
	struct iovec iov;
	struct tblk_work work;		/* BLOCK_STATUS on the pool */
	GByteArray *bs;			/* BLOCK_STATUS chunks built by the worker */
	size_t bs_last;			/* offset of the last chunk in bs */
	int ret;
};

static void conn_update(struct nbds_conn *conn);
static void process_input(struct nbds_conn *conn);
static void bs_cache_drop(struct nbds_bs_cache *c);

/* ---------------------------------------------------------------- data buffers */

/*
 * Request buffers come in power-of-two classes from 64 KiB to 32 MiB and are kept for
 * reuse by the export's connections (see NBDS_BUF_CACHE_MAX).
 */
static unsigned int buf_class(size_t len)
{
	unsigned int c = 0;

	while (((size_t)NBDS_BUF_MIN << c) < len)
		c++;
	return c;
}

void nbds__buf_cache_init(struct nbds_buf_cache *c)
{
	memset(c, 0, sizeof(*c));
	tblk_mutex_init(&c->lock);
}

void nbds__buf_cache_destroy(struct nbds_buf_cache *c)
{
	unsigned int i;

	for (i = 0; i < NBDS_BUF_CLASSES; i++)
		while (c->nr[i])
			free(c->bufs[i][--c->nr[i]]);
	c->bytes = 0;
	tblk_mutex_destroy(&c->lock);
}

void *nbds__buf_get(struct nbds_buf_cache *c, size_t len)
{
	unsigned int i = buf_class(len);
	void *p = NULL;

	tblk_mutex_lock(&c->lock);
	if (c->nr[i]) {
		c->bytes -= (size_t)NBDS_BUF_MIN << i;
		p = c->bufs[i][--c->nr[i]];
	}
	tblk_mutex_unlock(&c->lock);
	if (!p && posix_memalign(&p, 4096, (size_t)NBDS_BUF_MIN << i))
		return NULL;
	return p;
}

void nbds__buf_put(struct nbds_buf_cache *c, void *p, size_t len)
{
	unsigned int i = buf_class(len);
	size_t size = (size_t)NBDS_BUF_MIN << i;

	if (!p)
		return;
	tblk_mutex_lock(&c->lock);
	if (c->nr[i] < NBDS_BUF_KEEP && c->bytes + size <= NBDS_BUF_CACHE_MAX) {
		c->bufs[i][c->nr[i]++] = p;
		c->bytes += size;
		p = NULL;
	}
	tblk_mutex_unlock(&c->lock);
	free(p);
}

/* Data buffers exist only in transmission, when conn->exp is set. */
static void *buf_get(struct nbds_conn *conn, size_t len)
{
	return nbds__buf_get(&conn->exp->bufs, len);
}

static void buf_put(struct nbds_conn *conn, void *p, size_t len)
{
	if (p)
		nbds__buf_put(&conn->exp->bufs, p, len);
}

/* ---------------------------------------------------------------- output */

static struct nbds_out *out_new(void)
{
	struct nbds_out *o = g_new0(struct nbds_out, 1);

	o->hdr = g_byte_array_new();
	o->segs = g_array_new(FALSE, FALSE, sizeof(struct seg));
	return o;
}

/* Marks hdr bytes appended since @start as the next piece. */
static void out_hdr_piece(struct nbds_out *o, size_t start)
{
	struct seg s = { false, start, o->hdr->len - start };

	if (o->segs->len) {
		struct seg *last = &g_array_index(o->segs, struct seg, o->segs->len - 1);

		if (!last->data && last->off + last->len == start) {
			last->len += s.len;
			return;
		}
	}
	if (s.len)
		g_array_append_val(o->segs, s);
}

static void out_data_piece(struct nbds_out *o, size_t off, size_t len)
{
	struct seg s = { true, off, len };

	if (len)
		g_array_append_val(o->segs, s);
}

static void out_free(struct nbds_conn *conn, struct nbds_out *o)
{
	if (o->hdr)
		g_byte_array_free(o->hdr, TRUE);
	if (o->segs)
		g_array_free(o->segs, TRUE);
	buf_put(conn, o->data, o->data_len);
	g_free(o->iov);
	g_free(o);
}

/* Queues @o (takes ownership) and tries to send at once. */
static void out_queue(struct nbds_conn *conn, struct nbds_out *o)
{
	guint i;

	if (conn->dead) {
		out_free(conn, o);
		return;
	}
	o->iovcnt = (int)o->segs->len;
	o->iov = g_new(struct iovec, o->iovcnt ? o->iovcnt : 1);
	for (i = 0; i < o->segs->len; i++) {
		struct seg *s = &g_array_index(o->segs, struct seg, i);

		o->iov[i].iov_base = (s->data ? (uint8_t *)o->data : o->hdr->data) + s->off;
		o->iov[i].iov_len = s->len;
		o->bytes += s->len;
	}
	g_array_free(o->segs, TRUE);
	o->segs = NULL;
	conn->buffered += o->bytes;
	if (conn->out_tail)
		conn->out_tail->next = o;
	else
		conn->out_head = o;
	conn->out_tail = o;
}

static void queue_bytes(struct nbds_conn *conn, GByteArray *bytes)
{
	struct nbds_out *o;

	if (!bytes->len)
		return;
	o = out_new();
	g_byte_array_append(o->hdr, bytes->data, bytes->len);
	out_hdr_piece(o, 0);
	g_byte_array_set_size(bytes, 0);
	out_queue(conn, o);
}

/* Sends what the socket takes. false if the connection failed. */
static bool conn_flush(struct nbds_conn *conn)
{
	while (conn->out_head) {
		struct nbds_out *o = conn->out_head;
		struct msghdr msg = { .msg_iov = o->iov + o->idx,
				      .msg_iovlen = TBLK_MIN(o->iovcnt - o->idx, IOV_MAX) };
		ssize_t n = o->idx < o->iovcnt ? sendmsg(conn->fd, &msg, MSG_NOSIGNAL) : 0;

		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return true;
			if (errno == EINTR)
				continue;
			return false;
		}
		while (n > 0) {
			struct iovec *v = &o->iov[o->idx];
			size_t k = TBLK_MIN((size_t)n, v->iov_len);

			v->iov_base = (uint8_t *)v->iov_base + k;
			v->iov_len -= k;
			n -= (ssize_t)k;
			if (!v->iov_len)
				o->idx++;
		}
		while (o->idx < o->iovcnt && !o->iov[o->idx].iov_len)
			o->idx++;
		if (o->idx < o->iovcnt)
			continue;
		conn->out_head = o->next;
		if (!conn->out_head)
			conn->out_tail = NULL;
		conn->buffered -= o->bytes;
		out_free(conn, o);
	}
	return true;
}

static void drop_output(struct nbds_conn *conn)
{
	while (conn->out_head) {
		struct nbds_out *o = conn->out_head;

		conn->out_head = o->next;
		conn->buffered -= o->bytes;
		out_free(conn, o);
	}
	conn->out_tail = NULL;
}

/* ---------------------------------------------------------------- lifetime */

struct nbds_conn *nbds__conn_new(struct nbds_server *srv, int fd)
{
	struct nbds_conn *conn = g_new0(struct nbds_conn, 1);

	conn->srv = srv;
	conn->fd = fd;
	conn->loop = srv->loop;
	conn->inbuf = g_malloc(NBDS_INBUF_SIZE);
	conn->hs_out = g_byte_array_new();
	tblk_list_init(&conn->link);
	return conn;
}

static void conn_free(struct nbds_conn *conn)
{
	if (conn->in_state == NBDS_IN_HANDSHAKE)
		tblk_timer_del(&conn->hs_timer);
	tblk_loop_set_fd_handler(conn->loop, conn->fd, NULL, NULL, NULL, NULL);
	close(conn->fd);
	drop_output(conn);
	if (conn->cur) {
		buf_put(conn, conn->cur->buf, conn->cur->r.len);
		g_free(conn->cur);
	}
	nbds_hs_destroy(&conn->hs);
	g_byte_array_free(conn->hs_out, TRUE);
	g_free(conn->inbuf);
	nbds__server_client_gone(conn->srv, conn);
	g_free(conn);
}

/* The socket failed or the peer broke the protocol: stop everything, close when idle. */
static void conn_fail(struct nbds_conn *conn)
{
	conn->dead = true;
	conn->closing = true;
	drop_output(conn);
}

static bool conn_can_read(struct nbds_conn *conn)
{
	return !conn->closing && !conn->moving && conn->nr_inflight < NBDS_MAX_INFLIGHT &&
	       conn->buffered < NBDS_MAX_BUFFERED;
}

static void on_read(void *opaque);
static void on_write(void *opaque);
static void conn_arrived(void *opaque);

/*
 * Sends what can be sent, installs the handlers the state needs, and frees the connection
 * once it is closing with nothing in flight and nothing left to send. The connection may be
 * gone when this returns: call it last.
 */
static void conn_update(struct nbds_conn *conn)
{
	struct tblk_loop *dst;
	bool r, w;

	if (conn->moving) {
		if (!conn->move_to)
			return;
		/* The hand-off to the backend's loop is the last thing this thread does. */
		tblk_loop_set_fd_handler(conn->loop, conn->fd, NULL, NULL, NULL, NULL);
		conn->reading = conn->writing = false;
		dst = conn->loop = conn->move_to;
		conn->move_to = NULL;
		tblk_loop_call_soon(dst, conn_arrived, conn);
		return;
	}
	if (!conn->dead && !conn_flush(conn))
		conn_fail(conn);
	if (conn->closing && !conn->nr_inflight && (conn->dead || !conn->out_head)) {
		conn_free(conn);
		return;
	}
	r = conn_can_read(conn);
	w = conn->out_head != NULL;
	if (r != conn->reading || w != conn->writing) {
		conn->reading = r;
		conn->writing = w;
		tblk_loop_set_fd_handler(conn->loop, conn->fd, r ? on_read : NULL,
					 w ? on_write : NULL, NULL, conn);
	}
}

static void on_write(void *opaque)
{
	struct nbds_conn *conn = opaque;

	/*
	 * Sending may lift the limit on buffered bytes: requests already received must then
	 * be taken up here, since no new input may come to wake on_read().
	 */
	if (!conn->dead && !conn_flush(conn))
		conn_fail(conn);
	process_input(conn);
	conn_update(conn);
}

/* ---------------------------------------------------------------- replies */

static void req_free(struct nbds_req *req)
{
	struct nbds_conn *conn = req->conn;

	if (req->buf) {
		buf_put(conn, req->buf, req->r.len);
		conn->buffered -= req->r.len;
	}
	if (req->bs)
		g_byte_array_free(req->bs, TRUE);
	g_free(req);
}

static void reply_error(struct nbds_conn *conn, uint64_t cookie, uint32_t error)
{
	struct nbds_out *o = out_new();

	if (conn->tx.structured)
		nbds_put_error_chunk(o->hdr, cookie, error, NULL);
	else
		nbds_put_simple_reply(o->hdr, cookie, error);
	out_hdr_piece(o, 0);
	out_queue(conn, o);
}

static void reply_ok(struct nbds_conn *conn, uint64_t cookie)
{
	struct nbds_out *o = out_new();

	if (conn->tx.structured)
		nbds_put_chunk_header(o->hdr, TBLK_NBD_REPLY_FLAG_DONE, TBLK_NBD_REPLY_TYPE_NONE,
				      cookie, 0);
	else
		nbds_put_simple_reply(o->hdr, cookie, 0);
	out_hdr_piece(o, 0);
	out_queue(conn, o);
}

/* Replies to a request without data (unless the connection died) and frees it. */
static void req_finish(struct nbds_req *req, int ret)
{
	struct nbds_conn *conn = req->conn;

	if (ret < 0)
		reply_error(conn, req->r.cookie, nbds_errno_to_nbd(ret));
	else
		reply_ok(conn, req->r.cookie);
	req_free(req);
	conn->nr_inflight--;
}

/* After a completion: input may resume; the connection may be freed. */
static void conn_resume(struct nbds_conn *conn)
{
	process_input(conn);
	conn_update(conn);
}

/* A completion callback's end (never nested in process_input()). */
static void req_done(struct nbds_req *req, int ret)
{
	struct nbds_conn *conn = req->conn;

	req_finish(req, ret);
	conn_resume(conn);
}

static bool block_is_zero(const uint8_t *p, size_t len)
{
	static const uint8_t zero[16];

	if (len < 16)
		return !memcmp(p, zero, len);
	return !memcmp(p, zero, 16) && !memcmp(p, p + 16, len - 16);
}

/* A successful structured READ: data chunks, with zero runs of 4 KiB blocks as holes. */
static void put_read_chunks(struct nbds_out *o, struct nbds_req *req)
{
	const uint32_t blk = 4096;
	const uint8_t *buf = req->buf;
	uint32_t len = req->r.len, pos = 0;
	bool holes = !(req->r.flags & TBLK_NBD_CMD_FLAG_DF);

	size_t last = 0;

	while (pos < len) {
		uint32_t end = pos, start_hdr = o->hdr->len;
		bool zero = false;

		last = start_hdr;

		if (holes && len - pos >= blk)
			zero = block_is_zero(buf + pos, blk);
		/* Extend the run while blocks keep the same kind. */
		do {
			end = TBLK_MIN(len, end + blk);
		} while (holes && end < len && len - end >= blk &&
			 block_is_zero(buf + end, blk) == zero);
		if (!holes)
			end = len;
		if (zero) {
			nbds_put_chunk_header(o->hdr, 0, TBLK_NBD_REPLY_TYPE_OFFSET_HOLE,
					      req->r.cookie, 12);
			nbds_put_be64(o->hdr, req->r.offset + pos);
			nbds_put_be32(o->hdr, end - pos);
			out_hdr_piece(o, start_hdr);
		} else {
			nbds_put_chunk_header(o->hdr, 0, TBLK_NBD_REPLY_TYPE_OFFSET_DATA,
					      req->r.cookie, 8 + end - pos);
			nbds_put_be64(o->hdr, req->r.offset + pos);
			out_hdr_piece(o, start_hdr);
			out_data_piece(o, pos, end - pos);
		}
		pos = end;
	}
	/* The last chunk carries DONE (its flags follow the 4-byte magic). */
	o->hdr->data[last + 5] |= TBLK_NBD_REPLY_FLAG_DONE;
}

static void read_done(void *opaque, int ret)
{
	struct nbds_req *req = opaque;
	struct nbds_conn *conn = req->conn;
	struct nbds_out *o;

	if (ret < 0 || !req->r.len) {
		req_done(req, ret);
		return;
	}
	o = out_new();
	if (conn->tx.structured) {
		put_read_chunks(o, req);
	} else {
		nbds_put_simple_reply(o->hdr, req->r.cookie, 0);
		out_hdr_piece(o, 0);
		out_data_piece(o, 0, req->r.len);
	}
	/* The reply takes the buffer; its bytes move from the request to the output. */
	o->data = req->buf;
	o->data_len = req->r.len;
	req->buf = NULL;
	conn->buffered -= req->r.len;
	out_queue(conn, o);
	req_free(req);
	conn->nr_inflight--;
	conn_resume(conn);
}

static void write_done(void *opaque, int ret)
{
	req_done(opaque, ret);
}

/* A zero write: what was data may be a hole or zeroes now. */
static void zero_done(void *opaque, int ret)
{
	struct nbds_req *req = opaque;

	bs_cache_drop(&req->conn->exp->bs);	/* again: a query may have run meanwhile */
	req_done(req, ret);
}

static void fua_flush_done(void *opaque, int ret)
{
	req_done(opaque, ret);
}

/* TRIM with FUA: make the discard durable with a flush. */
static void trim_done(void *opaque, int ret)
{
	struct nbds_req *req = opaque;

	bs_cache_drop(&req->conn->exp->bs);	/* again: a query may have run meanwhile */
	if (ret >= 0 && (req->r.flags & TBLK_NBD_CMD_FLAG_FUA)) {
		tblk_blk_aio_flush(req->conn->blk, fua_flush_done, req);
		return;
	}
	req_done(req, ret);
}

/* ---------------------------------------------------------------- block status */

struct bs_ctx {
	uint32_t id;
	GByteArray *out;
	size_t len_off;		/* where the chunk's length field is */
	uint32_t nr;
	uint32_t last_len, last_flags;
};

static void bs_add(struct bs_ctx *c, uint32_t len, uint32_t flags)
{
	if (c->nr && c->last_flags == flags) {
		c->last_len += len;
		return;
	}
	if (c->nr) {
		nbds_put_be32(c->out, c->last_len);
		nbds_put_be32(c->out, c->last_flags);
	}
	c->nr++;
	c->last_len = len;
	c->last_flags = flags;
}

static void bs_finish(struct bs_ctx *c)
{
	uint32_t len;
	uint8_t *p;

	if (c->nr) {
		nbds_put_be32(c->out, c->last_len);
		nbds_put_be32(c->out, c->last_flags);
	}
	len = (uint32_t)(c->out->len - c->len_off - 4);
	p = c->out->data + c->len_off;
	p[0] = len >> 24;
	p[1] = len >> 16;
	p[2] = len >> 8;
	p[3] = len;
}

/* ---------------------------------------------------------------- the data extent cache */

/* How far past a query the backend is asked, to learn a data extent later queries reuse. */
#define NBDS_BS_LOOKAHEAD	(1ull << 30)

void nbds__bs_cache_init(struct nbds_bs_cache *c)
{
	memset(c, 0, sizeof(*c));
	tblk_mutex_init(&c->lock);
	tblk_cond_init(&c->cv);
}

void nbds__bs_cache_destroy(struct nbds_bs_cache *c)
{
	tblk_cond_destroy(&c->cv);
	tblk_mutex_destroy(&c->lock);
}

/*
 * Pool worker: true and *pend if @off lies in the known data extent. Else false, and the
 * caller asks the backend and must call bs_cache_put() with *pgen; while another worker
 * does so, this one waits for its answer (the queries of a multi-conn client come together
 * and would each pay for the same walk).
 */
static bool bs_cache_get(struct nbds_bs_cache *c, uint64_t off, uint64_t *pend, uint64_t *pgen)
{
	bool hit;

	tblk_mutex_lock(&c->lock);
	while (c->busy && !(off >= c->start && off < c->end))
		tblk_pool_wait(&c->cv, &c->lock);
	hit = off >= c->start && off < c->end;
	if (hit) {
		*pend = c->end;
	} else {
		c->busy = true;
		*pgen = c->gen;
	}
	tblk_mutex_unlock(&c->lock);
	return hit;
}

/* Ends a bs_cache_get() miss: [start, end) is data (if end > start) as of @gen. */
static void bs_cache_put(struct nbds_bs_cache *c, uint64_t gen, uint64_t start, uint64_t end)
{
	tblk_mutex_lock(&c->lock);
	if (end > start && gen == c->gen) {
		c->start = start;
		c->end = end;
	}
	c->busy = false;
	tblk_cond_broadcast(&c->cv);
	tblk_mutex_unlock(&c->lock);
}

/* Part of the export may be unmapped or zeroed now: forget, and refuse answers in flight. */
static void bs_cache_drop(struct nbds_bs_cache *c)
{
	tblk_mutex_lock(&c->lock);
	c->gen++;
	c->start = c->end = 0;
	tblk_mutex_unlock(&c->lock);
}

/*
 * One base:allocation-only extent at @off (at most @bytes): from the cache, or from the
 * backend asked up to NBDS_BS_LOOKAHEAD further, whose data answer goes in the cache.
 */
static int bs_base_status(struct nbds_conn *conn, uint64_t off, uint64_t bytes, uint64_t *pnum)
{
	struct nbds_export *e = conn->exp;
	uint64_t size = e->p.size, end, gen, ahead;
	int ret, depth = 0;

	if (bs_cache_get(&e->bs, off, &end, &gen)) {
		*pnum = TBLK_MIN(end - off, bytes);
		return TBLK_BS_DATA;
	}
	ahead = off < size ? TBLK_MAX(bytes, TBLK_MIN(size - off, NBDS_BS_LOOKAHEAD)) : bytes;
	ret = tblk_blk_block_status_depth(conn->blk, off, ahead, pnum, NULL, &depth);
	bs_cache_put(&e->bs, gen, off,
		     ret >= 0 && (ret & (TBLK_BS_DATA | TBLK_BS_ZERO)) == TBLK_BS_DATA ?
		     off + *pnum : off);
	if (ret >= 0)
		*pnum = TBLK_MIN(*pnum, bytes);
	return ret;
}

/* Runs on a pool worker: the chain's status over the request's range, both contexts. */
static int block_status_work(void *opaque)
{
	struct nbds_req *req = opaque;
	struct nbds_conn *conn = req->conn;
	bool one = req->r.flags & TBLK_NBD_CMD_FLAG_REQ_ONE;
	struct bs_ctx ctx[2] = { { .id = NBDS_CTX_BASE }, { .id = NBDS_CTX_DEPTH } };
	bool want[2] = { conn->tx.meta_base, conn->tx.meta_depth };
	int chain = tblk_blk_chain_length(conn->blk);
	uint64_t off = req->r.offset, end = req->r.offset + req->r.len;
	unsigned int i, n = 0;

	for (i = 0; i < 2; i++) {
		if (!want[i])
			continue;
		ctx[i].out = g_byte_array_new();
		ctx[i].len_off = TBLK_NBD_STRUCTURED_REPLY_SIZE - 4;
		nbds_put_chunk_header(ctx[i].out, 0, TBLK_NBD_REPLY_TYPE_BLOCK_STATUS,
				      req->r.cookie, 0);
		nbds_put_be32(ctx[i].out, ctx[i].id);
	}
	while (off < end && n < NBDS_MAX_EXTENTS) {
		uint64_t pnum = 0;
		int depth = 0;
		/* The cache knows nothing of depths: only for base:allocation alone. */
		int ret = want[1] ? tblk_blk_block_status_depth(conn->blk, off, end - off, &pnum,
								 NULL, &depth) :
				    bs_base_status(conn, off, end - off, &pnum);

		if (ret < 0) {
			if (n)
				break;	/* report what we have */
			for (i = 0; i < 2; i++)
				if (ctx[i].out)
					g_byte_array_free(ctx[i].out, TRUE);
			return ret;
		}
		if (!pnum)
			break;
		pnum = TBLK_MIN(pnum, end - off);
		if (want[0])
			bs_add(&ctx[0], (uint32_t)pnum,
			       (ret & TBLK_BS_DATA ? 0 : TBLK_NBD_STATE_HOLE) |
			       (ret & TBLK_BS_ZERO ? TBLK_NBD_STATE_ZERO : 0));
		if (want[1])
			bs_add(&ctx[1], (uint32_t)pnum, depth >= chain ? 0 : (uint32_t)depth + 1);
		off += pnum;
		n++;
		if (one)
			break;
	}
	req->bs = g_byte_array_new();
	for (i = 0; i < 2; i++) {
		if (!ctx[i].out)
			continue;
		if (!ctx[i].nr)
			bs_add(&ctx[i], req->r.len, 0);	/* cannot happen: len > 0 */
		bs_finish(&ctx[i]);
		req->bs_last = req->bs->len;
		g_byte_array_append(req->bs, ctx[i].out->data, ctx[i].out->len);
		g_byte_array_free(ctx[i].out, TRUE);
	}
	return 0;
}

static void block_status_done(void *opaque, int ret)
{
	struct nbds_req *req = opaque;
	struct nbds_conn *conn = req->conn;
	struct nbds_out *o;

	if (ret < 0) {
		req_done(req, ret);
		return;
	}
	o = out_new();
	g_byte_array_append(o->hdr, req->bs->data, req->bs->len);
	/* The last context's chunk carries DONE (its flags follow the 4-byte magic). */
	o->hdr->data[req->bs_last + 5] |= TBLK_NBD_REPLY_FLAG_DONE;
	out_hdr_piece(o, 0);
	out_queue(conn, o);
	req_free(req);
	conn->nr_inflight--;
	conn_resume(conn);
}

/* ---------------------------------------------------------------- requests */

static void submit(struct nbds_conn *conn, struct nbds_req *req)
{
	struct nbds_export *e = conn->exp;
	unsigned int fl = 0;

	conn->nr_inflight++;
	switch (req->r.type) {
	case TBLK_NBD_CMD_READ:
		tblk_blk_preadv(conn->blk, req->r.offset, &req->iov, 1, 0, read_done, req);
		break;
	case TBLK_NBD_CMD_WRITE:
		if (req->r.flags & TBLK_NBD_CMD_FLAG_FUA)
			fl |= TBLK_REQ_FUA;
		if (e->detect_zeroes && block_is_zero(req->buf, req->r.len)) {
			/* As qemu's detect-zeroes: the data is dropped, zeroes are written. */
			if (e->detect_zeroes == NBDS_DETECT_ZEROES_UNMAP && e->discard)
				fl |= TBLK_REQ_MAY_UNMAP;
			bs_cache_drop(&e->bs);
			tblk_blk_aio_pwrite_zeroes(conn->blk, req->r.offset, req->r.len, fl,
						   zero_done, req);
			break;
		}
		tblk_blk_pwritev(conn->blk, req->r.offset, &req->iov, 1, fl, write_done, req);
		break;
	case TBLK_NBD_CMD_FLUSH:
		tblk_blk_aio_flush(conn->blk, write_done, req);
		break;
	case TBLK_NBD_CMD_TRIM:
		if (!e->discard)
			req_finish(req, 0);	/* --discard=ignore: nothing to do */
		else {
			bs_cache_drop(&e->bs);
			tblk_blk_aio_pdiscard(conn->blk, req->r.offset, req->r.len, trim_done,
					      req);
		}
		break;
	case TBLK_NBD_CMD_WRITE_ZEROES:
		if (req->r.flags & TBLK_NBD_CMD_FLAG_FUA)
			fl |= TBLK_REQ_FUA;
		/*
		 * As qemu-nbd: without NO_HOLE the range may be unmapped whatever --discard
		 * says (that option is about TRIM).
		 */
		if (!(req->r.flags & TBLK_NBD_CMD_FLAG_NO_HOLE))
			fl |= TBLK_REQ_MAY_UNMAP;
		if (req->r.flags & TBLK_NBD_CMD_FLAG_FAST_ZERO)
			fl |= TBLK_REQ_NO_FALLBACK;
		bs_cache_drop(&e->bs);
		tblk_blk_aio_pwrite_zeroes(conn->blk, req->r.offset, req->r.len, fl, zero_done,
					   req);
		break;
	case TBLK_NBD_CMD_BLOCK_STATUS:
		req->work.fn = block_status_work;
		req->work.done = block_status_done;
		req->work.opaque = req;
		req->work.loop = conn->loop;
		tblk_pool_submit(tblk_pool_default(), &req->work);
		break;
	default:	/* CACHE: a hint we take by doing nothing */
		req_finish(req, 0);
		break;
	}
}

/* Allocates a request's data buffer; NULL if memory is short. */
static void *data_buf(struct nbds_conn *conn, uint32_t len)
{
	void *p = buf_get(conn, len);

	if (p)
		conn->buffered += len;
	return p;
}

/* A checked header: refuse it, start reading its payload, or run it. */
static void handle_request(struct nbds_conn *conn, const struct nbds_request *r)
{
	struct nbds_req *req;

	if (r->error || (r->type != TBLK_NBD_CMD_DISC && !r->len &&
			 (r->type == TBLK_NBD_CMD_READ || r->type == TBLK_NBD_CMD_WRITE ||
			  r->type == TBLK_NBD_CMD_TRIM || r->type == TBLK_NBD_CMD_WRITE_ZEROES))) {
		/* Refused, or nothing to do: answer at once. */
		if (r->error)
			reply_error(conn, r->cookie, r->error);
		else
			reply_ok(conn, r->cookie);
		if (r->close_after)
			conn->closing = true;
		if (r->skip_payload) {
			conn->skip = r->payload;
			conn->in_state = NBDS_IN_SKIP;
		}
		return;
	}
	if (r->type == TBLK_NBD_CMD_DISC) {
		conn->closing = true;
		return;
	}
	req = g_new0(struct nbds_req, 1);
	req->conn = conn;
	req->r = *r;
	if (r->type == TBLK_NBD_CMD_READ || r->type == TBLK_NBD_CMD_WRITE) {
		req->buf = data_buf(conn, r->len);
		if (!req->buf) {
			g_free(req);
			reply_error(conn, r->cookie, TBLK_NBD_ENOMEM);
			if (r->payload) {
				conn->skip = r->payload;
				conn->in_state = NBDS_IN_SKIP;
			}
			return;
		}
		req->iov.iov_base = req->buf;
		req->iov.iov_len = r->len;
	}
	if (r->type == TBLK_NBD_CMD_WRITE) {
		conn->cur = req;
		conn->cur_fill = 0;
		conn->in_state = NBDS_IN_PAYLOAD;
		return;
	}
	submit(conn, req);
}

/* The handshake ended with an export: fix the transmission parameters, move loops. */
static void attach_export(struct nbds_conn *conn);

static void handshake_input(struct nbds_conn *conn)
{
	size_t n = nbds_hs_feed(&conn->hs, conn->inbuf + conn->in_start,
				conn->in_end - conn->in_start);

	conn->in_start += n;
	queue_bytes(conn, conn->hs_out);
	if (conn->hs.state == NBDS_HS_CLOSE)
		conn->closing = true;
	else if (conn->hs.state == NBDS_HS_DONE)
		attach_export(conn);
}

/* Consumes buffered input as far as the state allows. */
static void process_input(struct nbds_conn *conn)
{
	while (conn->in_start < conn->in_end && conn_can_read(conn)) {
		size_t avail = conn->in_end - conn->in_start;
		uint8_t *p = conn->inbuf + conn->in_start;
		struct nbds_request r;
		size_t n;

		switch (conn->in_state) {
		case NBDS_IN_HANDSHAKE:
			handshake_input(conn);
			break;
		case NBDS_IN_HEADER:
			if (avail < TBLK_NBD_REQUEST_SIZE)
				return;
			conn->in_start += TBLK_NBD_REQUEST_SIZE;
			if (nbds_request_parse(p, &conn->tx, &r) < 0) {
				conn_fail(conn);	/* garbage: no reply possible */
				return;
			}
			handle_request(conn, &r);
			break;
		case NBDS_IN_PAYLOAD:
			n = TBLK_MIN(avail, (size_t)(conn->cur->r.len - conn->cur_fill));
			memcpy((uint8_t *)conn->cur->buf + conn->cur_fill, p, n);
			conn->cur_fill += (uint32_t)n;
			conn->in_start += n;
			if (conn->cur_fill == conn->cur->r.len) {
				struct nbds_req *req = conn->cur;

				conn->cur = NULL;
				conn->in_state = NBDS_IN_HEADER;
				submit(conn, req);
			}
			break;
		case NBDS_IN_SKIP:
			n = TBLK_MIN(avail, conn->skip);
			conn->skip -= n;
			conn->in_start += n;
			if (!conn->skip)
				conn->in_state = NBDS_IN_HEADER;
			break;
		}
	}
	if (conn->in_start == conn->in_end)
		conn->in_start = conn->in_end = 0;
}

/* Reads a large WRITE payload straight into its buffer. false on EOF or error. */
static bool read_payload_direct(struct nbds_conn *conn, bool *again)
{
	struct nbds_req *req = conn->cur;
	ssize_t n = recv(conn->fd, (uint8_t *)req->buf + conn->cur_fill,
			 req->r.len - conn->cur_fill, 0);

	if (n <= 0) {
		*again = n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
		return *again;
	}
	conn->cur_fill += (uint32_t)n;
	if (conn->cur_fill == req->r.len) {
		conn->cur = NULL;
		conn->in_state = NBDS_IN_HEADER;
		submit(conn, req);
	}
	*again = false;
	return true;
}

static void on_read(void *opaque)
{
	struct nbds_conn *conn = opaque;
	int i;

	/* A bounded number of reads per wake-up, so one busy client cannot starve others. */
	for (i = 0; i < 16 && conn_can_read(conn); i++) {
		bool again = false;
		ssize_t n;

		if (conn->in_state == NBDS_IN_PAYLOAD && conn->in_start == conn->in_end &&
		    conn->cur->r.len - conn->cur_fill >= NBDS_INBUF_SIZE) {
			if (!read_payload_direct(conn, &again)) {
				conn_fail(conn);
				break;
			}
			if (again)
				break;
			continue;
		}
		if (conn->in_start && conn->in_end == NBDS_INBUF_SIZE) {
			memmove(conn->inbuf, conn->inbuf + conn->in_start,
				conn->in_end - conn->in_start);
			conn->in_end -= conn->in_start;
			conn->in_start = 0;
		}
		n = recv(conn->fd, conn->inbuf + conn->in_end, NBDS_INBUF_SIZE - conn->in_end, 0);
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
			break;
		if (n <= 0) {
			/*
			 * End of input. In transmission, a client that stops sending still
			 * gets the replies of what it sent; a truncated request is dropped.
			 */
			if (n < 0 || conn->in_state == NBDS_IN_HANDSHAKE)
				conn_fail(conn);
			else
				conn->closing = true;
			break;
		}
		conn->in_end += (size_t)n;
		process_input(conn);
	}
	conn_update(conn);
}

/* ---------------------------------------------------------------- export attach */

/* On the backend's loop, after the move: take up where the server's loop left off. */
static void conn_arrived(void *opaque)
{
	struct nbds_conn *conn = opaque;

	conn->moving = false;
	process_input(conn);
	conn_update(conn);
}


static void attach_export(struct nbds_conn *conn)
{
	struct nbds_server *srv = conn->srv;
	struct nbds_export *e = tblk_container_of(conn->hs.exp, struct nbds_export, p);
	struct tblk_loop *loop = tblk_blk_get_loop(e->blk);

	tblk_timer_del(&conn->hs_timer);
	nbds_tx_from_hs(&conn->tx, &conn->hs);
	tblk_mutex_lock(&srv->lock);
	conn->exp = e;
	e->nr_conns++;
	tblk_mutex_unlock(&srv->lock);
	conn->blk = e->blk;
	conn->in_state = NBDS_IN_HEADER;
	if (!loop || loop == conn->loop)
		return;
	/*
	 * Requests go to the backend from its own loop: follow it there, once the current
	 * callback ends (conn_update() makes the move; input stops meanwhile).
	 */
	conn->moving = true;
	conn->move_to = loop;
}

/* The handshake took too long. Server loop. */
static void handshake_timeout(void *opaque)
{
	struct nbds_conn *conn = opaque;

	conn_fail(conn);
	conn_update(conn);
}

void nbds__conn_start(struct nbds_conn *conn)
{
	nbds_hs_init(&conn->hs, &conn->srv->table, conn->hs_out);
	conn->in_state = NBDS_IN_HANDSHAKE;
	tblk_timer_init(&conn->hs_timer, conn->loop, handshake_timeout, conn);
	tblk_timer_mod(&conn->hs_timer, tblk_clock_ns() + conn->srv->handshake_ns);
	queue_bytes(conn, conn->hs_out);
	conn_update(conn);
}
