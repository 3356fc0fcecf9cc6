/* SPDX-License-Identifier: MIT */
/*
 * nbd.c - the `nbd` protocol: an image served by an NBD server. File names as qemu takes
 * them (nbd://host[:port]/export, nbd+unix:///export?socket=path, the legacy
 * nbd:host:port[:exportname=name] and nbd:unix:path[:exportname=name]) or the options
 * server.type=inet|unix, server.host, server.port, server.path, export.
 *
 * Threading: the state is [const] after open; data-path calls run concurrently in any
 * thread and share the node's one connection (nbd-conn.c), requests in flight together.
 * Asynchronous reads, writes and flushes take the fast path: the loop thread sends them and
 * the first loop to do so (rx_loop) watches the socket and parses the replies itself, so a
 * reply costs that loop one wake-up and no thread hand-off; completions are queued on the
 * loop's list and completed after the parse. rx_loop's own requests are batched: written
 * together after the completions of a parse (whose callbacks submit the next ones) or before
 * the loop next polls or sleeps (a prepare hook), and after a batch the socket is read once
 * more before the loop goes back to epoll. The fast-path requests of any other loop are
 * read by the connection's reader thread, which queues them and schedules the loop's bottom
 * half. Everything else (and whatever the fast path refuses) runs in the pool.
 */
#include <stdlib.h>
#include <string.h>

#include "protocols/nbd-int.h"
#include "tracked/tracked.h"

struct nbd_state {
	struct tblk_nbd_conn *conn;	/* [const] */
	struct tblk_nbd_info info;	/* [const] copy of the negotiated export */
	struct tblk_loop *rx_loop;	/* [atomic] set once: the loop that reads its replies */
	struct tblk_bh *rx_bh;		/* [thread: rx_loop] parses again (budget ran out) */
	struct tblk_loop_hook rx_hook;	/* [thread: rx_loop] flushes the batch of requests */
	bool rx_hooked;			/* [thread: rx_loop] rx_hook is on rx_loop */
	bool rx_watching;		/* [thread: rx_loop] the socket's fd handler is set */
	bool rx_over;			/* [thread: rx_loop] connection broken: never again */
	unsigned int reread_backoff;	/* [thread: rx_loop] see nbd_rx_reread() */
	unsigned int reread_skip;	/* [thread: rx_loop] */
};

static void nbd_rx_stop(struct nbd_state *s);

/* Largest NBD command length that is a multiple of @align (lengths are 32 bits). */
static uint64_t max_len(uint32_t align)
{
	return TBLK_ALIGN_DOWN((uint64_t)1 << 31, (uint64_t)align);
}

/* ---------------------------------------------------------------- file names */

void tblk__nbd_addr_clear(struct tblk_nbd_addr *addr)
{
	g_free(addr->host);
	g_free(addr->port);
	g_free(addr->path);
	g_free(addr->export);
	memset(addr, 0, sizeof(*addr));
}

/* "host[:port]" or "[v6]:port" of a URL's authority. */
static int parse_authority(const char *auth, struct tblk_nbd_addr *addr)
{
	const char *colon;

	if (*auth == '[') {
		const char *end = strchr(auth, ']');

		if (!end || (end[1] && end[1] != ':'))
			return -EINVAL;
		addr->host = g_strndup(auth + 1, (size_t)(end - auth - 1));
		colon = end[1] ? end + 1 : NULL;
	} else {
		colon = strrchr(auth, ':');
		addr->host = colon ? g_strndup(auth, (size_t)(colon - auth)) : g_strdup(auth);
	}
	if (colon && colon[1])
		addr->port = g_strdup(colon + 1);
	if (!*addr->host)
		return -EINVAL;
	return 0;
}

/* nbd://, nbd+tcp:// and nbd+unix:// URLs. */
static int parse_url(const char *filename, struct tblk_nbd_addr *addr)
{
	const char *rest, *slash, *query;
	g_autofree char *auth = NULL, *path = NULL;

	if (g_str_has_prefix(filename, "nbd://"))
		rest = filename + 6;
	else if (g_str_has_prefix(filename, "nbd+tcp://"))
		rest = filename + 10;
	else if (g_str_has_prefix(filename, "nbd+unix://")) {
		rest = filename + 11;
		addr->is_unix = true;
	} else
		return -EINVAL;
	query = strchr(rest, '?');
	slash = strchr(rest, '/');
	if (slash && query && slash > query)
		slash = NULL;
	auth = g_strndup(rest, (size_t)((slash ? slash : query ? query : rest + strlen(rest)) -
					rest));
	if (slash)
		path = g_strndup(slash + 1,
				 query ? (size_t)(query - slash - 1) : strlen(slash + 1));
	addr->export = path ? g_uri_unescape_string(path, NULL) : g_strdup("");
	if (!addr->export)
		return -EINVAL;
	if (addr->is_unix) {
		/* nbd+unix: no host, exactly one query parameter socket=path */
		if (*auth || !query || !g_str_has_prefix(query, "?socket=") ||
		    strchr(query + 1, '&'))
			return -EINVAL;
		addr->path = g_uri_unescape_string(query + 8, NULL);
		return addr->path && *addr->path ? 0 : -EINVAL;
	}
	if (query)
		return -EINVAL;
	return parse_authority(auth, addr);
}

/* Legacy nbd:unix:path[:exportname=x] and nbd:host[:port][:exportname=x]. */
static int parse_legacy(const char *filename, struct tblk_nbd_addr *addr)
{
	const char *rest = filename + 4, *ex = strstr(rest, ":exportname=");
	g_autofree char *head = ex ? g_strndup(rest, (size_t)(ex - rest)) : g_strdup(rest);

	addr->export = g_strdup(ex ? ex + 12 : "");
	if (ex && !ex[12])
		return -ENOENT;	/* qemu's parser drops an empty name with the address */
	if (g_str_has_prefix(head, "unix:")) {
		addr->is_unix = true;
		addr->path = g_strdup(head + 5);
		return 0;
	}
	return parse_authority(head, addr);
}

static int parse_filename(const char *filename, struct tblk_nbd_addr *addr, GError **errp)
{
	int ret = strstr(filename, "://") ? parse_url(filename, addr) :
		  g_str_has_prefix(filename, "nbd:") ? parse_legacy(filename, addr) : -EINVAL;

	if (ret < 0) {
		tblk__nbd_addr_clear(addr);
		if (ret == -ENOENT)
			return tblk_error_set(errp, EINVAL, "NBD server address missing");
		return tblk_error_set(errp, EINVAL, "No valid URL specified");
	}
	return 0;
}

/* The server.* and export options. */
static int parse_options(GHashTable *opts, struct tblk_nbd_addr *addr, GError **errp)
{
	g_autofree char *type = tblk__opts_take(opts, "server.type");
	g_autofree char *host = tblk__opts_take(opts, "server.host");
	g_autofree char *port = tblk__opts_take(opts, "server.port");
	g_autofree char *path = tblk__opts_take(opts, "server.path");

	addr->export = tblk__opts_take(opts, "export");
	if (!addr->export)
		addr->export = g_strdup("");
	if (!type)
		return tblk_error_set(errp, EINVAL, "NBD server address missing");
	if (!strcmp(type, "unix")) {
		if (!path)
			return tblk_error_set(errp, EINVAL, "Parameter 'server.path' is missing");
		if (host || port)
			return tblk_error_set(errp, EINVAL, "Parameter 'server.%s' is unexpected",
					      host ? "host" : "port");
		addr->is_unix = true;
		addr->path = g_steal_pointer(&path);
	} else if (!strcmp(type, "inet")) {
		if (!host)
			return tblk_error_set(errp, EINVAL, "Parameter 'server.host' is missing");
		if (path)
			return tblk_error_set(errp, EINVAL,
					      "Parameter 'server.path' is unexpected");
		addr->host = g_steal_pointer(&host);
		addr->port = g_steal_pointer(&port);
	} else {
		return tblk_error_set(errp, EINVAL, "Parameter 'server.type' does not accept "
				      "value '%s'", type);
	}
	return 0;
}

/* The canonical name qemu gives the node. */
static char *canonical_name(const struct tblk_nbd_addr *addr)
{
	g_autofree char *ex = g_uri_escape_string(addr->export, "/", TRUE);

	if (addr->is_unix)
		return g_strdup_printf("nbd+unix://%s%s?socket=%s", *ex ? "/" : "", ex,
				       addr->path);
	return g_strdup_printf(strchr(addr->host, ':') ? "nbd://[%s]:%s%s%s" : "nbd://%s:%s%s%s",
			       addr->host, addr->port, *ex ? "/" : "", ex);
}

/* ---------------------------------------------------------------- open and close */

static void set_limits(struct tblk_node *node, const struct tblk_nbd_info *info)
{
	struct tblk_node_limits *l = &node->limits;
	uint32_t align = info->min_block ? info->min_block : 1;
	uint64_t max = TBLK_NBD_MAX_BUFFER;

	if (info->max_block)
		max = TBLK_MIN(max, info->max_block);
	l->request_alignment = align;
	l->mem_alignment = 1;
	l->max_transfer = TBLK_MAX(TBLK_ALIGN_DOWN(max, align), align);
	l->max_pdiscard = max_len(align);
	l->max_pwrite_zeroes = max_len(align);
}

static int nbd_open(struct tblk_node *node, GHashTable *opts, unsigned int flags,
		    GError **errp)
{
	struct nbd_state *s = node->opaque;
	g_autofree char *filename = tblk__opts_take(opts, "filename");
	g_autofree char *tls = tblk__opts_take(opts, "tls-creds");
	struct tblk_nbd_addr addr = { 0 };
	bool has_server = g_hash_table_contains(opts, "server.type") ||
			  g_hash_table_contains(opts, "server.host") ||
			  g_hash_table_contains(opts, "server.path");
	int ret;

	if (tls)
		return tblk_error_set(errp, ENOTSUP, "TLS is not supported by this NBD client");
	if (filename && has_server)
		return tblk_error_set(errp, EINVAL, "Server address in both the file name and "
				      "the options");
	ret = filename ? parse_filename(filename, &addr, errp) : parse_options(opts, &addr, errp);
	if (ret < 0)
		goto out_clear;
	if (!addr.is_unix && !addr.port)
		addr.port = g_strdup_printf("%d", TBLK_NBD_DEFAULT_PORT);
	ret = tblk__nbd_conn_open(&addr, &s->conn, errp);
	if (ret < 0)
		goto out_clear;
	s->info = *tblk__nbd_conn_info(s->conn);
	if ((flags & TBLK_OPEN_RDWR) && (s->info.flags & TBLK_NBD_FLAG_READ_ONLY)) {
		ret = tblk_error_set_errno(errp, EACCES, "Could not open image");
		goto out_conn;
	}
	set_limits(node, &s->info);
	node->filename = canonical_name(&addr);
	tblk__nbd_addr_clear(&addr);
	return 0;

out_conn:
	tblk__nbd_conn_free(s->conn);
	s->conn = NULL;
out_clear:
	tblk__nbd_addr_clear(&addr);
	return ret;
}

static void nbd_close(struct tblk_node *node)
{
	struct nbd_state *s = node->opaque;

	nbd_rx_stop(s);
	tblk__nbd_conn_free(s->conn);
	s->conn = NULL;
}

/*
 * An export cannot be created, only reused, as qemu does for protocols without creation:
 * it must be writable and at least @size bytes, and its first sector is zeroed so that no
 * old header is probed later.
 */
#define NO_CREATE "Protocol driver 'nbd' does not support image creation, and opening the " \
		  "image failed: "

static int nbd_create(const char *filename, uint64_t size, GHashTable *opts, GError **errp)
{
	struct tblk_nbd_addr addr = { 0 };
	struct tblk_nbd_conn *conn;
	const struct tblk_nbd_info *info;
	uint8_t zero[512] = { 0 };
	struct iovec iov = { zero, sizeof(zero) };
	struct tblk_nbd_cmd cmd = { .type = TBLK_NBD_CMD_WRITE, .iov = &iov, .iovcnt = 1 };
	int ret = parse_filename(filename, &addr, errp);

	if (ret < 0)
		return ret;
	if (!addr.is_unix && !addr.port)
		addr.port = g_strdup_printf("%d", TBLK_NBD_DEFAULT_PORT);
	ret = tblk__nbd_conn_open(&addr, &conn, errp);
	tblk__nbd_addr_clear(&addr);
	if (ret < 0) {
		tblk_error_prepend(errp, "%s", NO_CREATE);
		return ret;
	}
	info = tblk__nbd_conn_info(conn);
	if (info->flags & TBLK_NBD_FLAG_READ_ONLY) {
		ret = tblk_error_set_errno(errp, EACCES, NO_CREATE "Could not open image");
	} else if (size > info->size) {
		ret = tblk_error_set(errp, EINVAL, "Cannot grow NBD nodes");
	} else if (size) {
		cmd.len = (uint32_t)TBLK_MIN(size, sizeof(zero));
		iov.iov_len = cmd.len;
		ret = tblk__nbd_conn_run(conn, &cmd);
		if (ret < 0)
			tblk_error_set_errno(errp, -ret, "Failed to clear the new image's first "
					     "sector");
	}
	tblk__nbd_conn_free(conn);
	return ret;
}

/* ---------------------------------------------------------------- data path */

static int nbd_run(struct nbd_state *s, uint16_t type, uint16_t flags, uint64_t offset,
		   uint64_t bytes, const struct iovec *iov, int iovcnt)
{
	struct tblk_nbd_cmd cmd = {
		.type = type, .flags = flags, .offset = offset, .len = (uint32_t)bytes,
		.iov = iov, .iovcnt = iovcnt,
	};

	assert(bytes <= UINT32_MAX);
	return tblk__nbd_conn_run(s->conn, &cmd);
}

static int nbd_preadv(struct tblk_node *node, uint64_t offset, uint64_t bytes,
		      const struct iovec *iov, int iovcnt, unsigned int flags)
{
	struct nbd_state *s = node->opaque;
	uint64_t size = s->info.size, in = bytes;

	/* The node's size is rounded up to a sector, as qemu does: the tail reads as zeroes. */
	if (offset >= size)
		in = 0;
	else if (bytes > size - offset)
		in = size - offset;
	if (in < bytes)
		tblk_iov_memset(iov, iovcnt, (size_t)in, 0, (size_t)(bytes - in));
	if (!in)
		return 0;
	return nbd_run(s, TBLK_NBD_CMD_READ, 0, offset, in, iov, iovcnt);
}

/* FUA on the wire if the server takes it, else a flush after the write. */
static int fua_flag(struct nbd_state *s, unsigned int flags, bool *flush_after)
{
	*flush_after = false;
	if (!(flags & TBLK_REQ_FUA))
		return 0;
	if (s->info.flags & TBLK_NBD_FLAG_SEND_FUA)
		return TBLK_NBD_CMD_FLAG_FUA;
	*flush_after = s->info.flags & TBLK_NBD_FLAG_SEND_FLUSH;
	return 0;
}

static int nbd_flush(struct tblk_node *node)
{
	struct nbd_state *s = node->opaque;

	if (!(s->info.flags & TBLK_NBD_FLAG_SEND_FLUSH))
		return 0;
	return nbd_run(s, TBLK_NBD_CMD_FLUSH, 0, 0, 0, NULL, 0);
}

static int nbd_pwritev(struct tblk_node *node, uint64_t offset, uint64_t bytes,
		       const struct iovec *iov, int iovcnt, unsigned int flags)
{
	struct nbd_state *s = node->opaque;
	bool flush_after;
	uint16_t f = (uint16_t)fua_flag(s, flags, &flush_after);
	int ret = nbd_run(s, TBLK_NBD_CMD_WRITE, f, offset, bytes, iov, iovcnt);

	if (ret == 0 && flush_after)
		ret = nbd_flush(node);
	return ret;
}

static int nbd_pdiscard(struct tblk_node *node, uint64_t offset, uint64_t bytes)
{
	struct nbd_state *s = node->opaque;

	if (!(s->info.flags & TBLK_NBD_FLAG_SEND_TRIM))
		return -ENOTSUP;
	return nbd_run(s, TBLK_NBD_CMD_TRIM, 0, offset, bytes, NULL, 0);
}

static int nbd_pwrite_zeroes(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			     unsigned int flags)
{
	struct nbd_state *s = node->opaque;
	bool flush_after;
	uint16_t f = (uint16_t)fua_flag(s, flags, &flush_after);
	int ret;

	if (!(s->info.flags & TBLK_NBD_FLAG_SEND_WRITE_ZEROES))
		return -ENOTSUP;
	if (!(flags & TBLK_REQ_MAY_UNMAP))
		f |= TBLK_NBD_CMD_FLAG_NO_HOLE;
	if (flags & TBLK_REQ_NO_FALLBACK) {
		if (!(s->info.flags & TBLK_NBD_FLAG_SEND_FAST_ZERO))
			return -ENOTSUP;
		f |= TBLK_NBD_CMD_FLAG_FAST_ZERO;
	}
	ret = nbd_run(s, TBLK_NBD_CMD_WRITE_ZEROES, f, offset, bytes, NULL, 0);
	if (ret == 0 && flush_after)
		ret = nbd_flush(node);
	return ret;
}

static int nbd_block_status(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			    uint64_t *pnum, uint64_t *map)
{
	struct nbd_state *s = node->opaque;
	uint32_t align = node->limits.request_alignment;
	struct tblk_nbd_cmd cmd = {
		.type = TBLK_NBD_CMD_BLOCK_STATUS, .flags = TBLK_NBD_CMD_FLAG_REQ_ONE,
		.offset = offset,
	};
	uint64_t n;
	int ret;

	if (map)
		*map = offset;
	/* Past the export's true end (inside the last sector): zeroes stored nowhere. */
	if (offset >= s->info.size) {
		*pnum = bytes;
		return TBLK_BS_ZERO;
	}
	bytes = TBLK_MIN(bytes, s->info.size - offset);
	if (!s->info.has_alloc) {
		*pnum = bytes;
		return TBLK_BS_DATA | TBLK_BS_OFFSET_VALID;
	}
	cmd.len = (uint32_t)TBLK_MIN(bytes, max_len(align));
	ret = tblk__nbd_conn_run(s->conn, &cmd);
	if (ret < 0)
		return ret;
	n = cmd.bs_len;
	/* Keep to the node's alignment: a shorter extent reads as data, which is always safe. */
	if (n < align) {
		*pnum = TBLK_MIN((uint64_t)align, bytes);
		return TBLK_BS_DATA | TBLK_BS_OFFSET_VALID;
	}
	*pnum = TBLK_ALIGN_DOWN(n, align);
	return TBLK_BS_OFFSET_VALID |
	       ((cmd.bs_flags & TBLK_NBD_STATE_HOLE) ? 0 : TBLK_BS_DATA) |
	       ((cmd.bs_flags & TBLK_NBD_STATE_ZERO) ? TBLK_BS_ZERO : 0);
}

/* ---------------------------------------------------------------- fast path */

/* Fast-path requests whose replies came in, waiting for the loop; one per loop. */
struct nbd_loop {
	struct tblk_loop *loop;		/* [const] */
	struct tblk_bh *bh;		/* [const] */
	struct tblk_mutex lock;		/* leaf (taken under the connection's lock) */
	struct nbd_fast *head;		/* [lock] FIFO */
	struct nbd_fast **tail;		/* [lock] */
};

/* What a fast-path request keeps in its drv_scratch while the server has it. */
struct nbd_fast {
	struct tblk_nbd_slot slot;
	struct tblk_nbd_cmd cmd;
	struct nbd_loop *nl;
	struct nbd_fast *next;		/* [nl->lock] */
};
_Static_assert(sizeof(struct nbd_fast) <= sizeof(((struct tblk_req *)0)->drv_scratch),
	       "drv_scratch too small for the nbd fast path");

static const char nbd_loop_key;

/* The list nbd_rx_ready() completes when its parse ends, while it parses. */
static __thread struct nbd_loop *parsing_nl;

/*
 * The thread that parsed the reply. If that is nbd_rx_ready() of the request's own loop,
 * it completes the batch when the parse ends; else the loop's bottom half does.
 */
static void nbd_fast_complete(struct tblk_nbd_slot *slot)
{
	struct nbd_fast *f = tblk_container_of(slot, struct nbd_fast, slot);
	struct nbd_loop *nl = f->nl;
	bool first;

	tblk_mutex_lock(&nl->lock);
	f->next = NULL;
	first = !nl->head;
	*nl->tail = f;
	nl->tail = &f->next;
	tblk_mutex_unlock(&nl->lock);
	if (first && nl != parsing_nl)
		tblk_bh_schedule(nl->bh);
}

/* Loop thread: completes the batch. */
static void nbd_loop_bh(void *opaque)
{
	struct nbd_loop *nl = opaque;
	struct nbd_fast *f;

	tblk_mutex_lock(&nl->lock);
	f = nl->head;
	nl->head = NULL;
	nl->tail = &nl->head;
	tblk_mutex_unlock(&nl->lock);
	while (f) {
		struct nbd_fast *next = f->next;
		struct tblk_req *req = tblk_container_of((void *)f, struct tblk_req, drv_scratch);

		tblk__req_fast_done(req, f->slot.ret);
		f = next;
	}
}

static void nbd_loop_free(void *data)
{
	struct nbd_loop *nl = data;

	tblk_bh_free(nl->bh);
	tblk_mutex_destroy(&nl->lock);
	g_free(nl);
}

static struct nbd_loop *nbd_loop_get(struct tblk_loop *loop)
{
	struct nbd_loop *nl = tblk_loop_get_data(loop, &nbd_loop_key);

	if (!nl) {
		/*
		 * The loop waits for replies on the socket: busy polling has nothing to look
		 * at for them and takes the CPU the server (or our reader thread) needs to send
		 * them. Measured at depth 1 on 2 shared CPUs: 2-4x the CPU per request with
		 * the default window. Sleep instead, unless the user chose a window.
		 */
		if (!getenv("TBLK_LOOP_POLL_MAX_NS"))
			tblk_loop_set_poll_max_ns(loop, 0);
		nl = g_new0(struct nbd_loop, 1);
		nl->loop = loop;
		tblk_mutex_init(&nl->lock);
		nl->tail = &nl->head;
		nl->bh = tblk_bh_new(loop, nbd_loop_bh, nl);
		tblk_loop_set_data(loop, &nbd_loop_key, nl, nbd_loop_free);
	}
	return nl;
}

/* rx_loop: stops watching the socket. */
static void nbd_rx_unwatch(struct nbd_state *s)
{
	if (s->rx_watching)
		tblk_loop_set_fd_handler(s->rx_loop, tblk__nbd_conn_fd(s->conn), NULL, NULL,
					 NULL, NULL);
	s->rx_watching = false;
}

/* Opportunistic reads in a row after a batch; misses before one is tried again, at most. */
#define NBD_REREAD_MAX		4
#define NBD_REREAD_BACKOFF_MAX	64

/*
 * rx_loop, after a batch of replies completed and the requests their callbacks made went
 * out: whether to read the socket again at once rather than go back to the loop, which
 * would ask epoll first. Replies that came meanwhile then cost one recv() instead of an
 * epoll_wait() and a recv(); when none has come the recv() is a wasted EAGAIN, so after a
 * miss the next 1, 2, 4, ... (up to NBD_REREAD_BACKOFF_MAX) chances are skipped, and a hit
 * starts over. At depth 1 the reply never comes that fast (one miss in 64 requests); at
 * high depth it often does.
 */
static bool nbd_rx_reread(struct nbd_state *s)
{
	if (s->reread_skip) {
		s->reread_skip--;
		return false;
	}
	return true;
}

static void nbd_rx_reread_learn(struct nbd_state *s, bool hit)
{
	if (hit) {
		s->reread_backoff = 0;
		return;
	}
	s->reread_backoff = s->reread_backoff ? s->reread_backoff * 2 : 1;
	if (s->reread_backoff > NBD_REREAD_BACKOFF_MAX)
		s->reread_backoff = NBD_REREAD_BACKOFF_MAX;
	s->reread_skip = s->reread_backoff;
}

/*
 * rx_loop: sends what is batched, parses what has come and completes it; then perhaps
 * again (see nbd_rx_reread()). True if some request completed.
 */
static bool nbd_rx_parse(struct nbd_state *s)
{
	struct nbd_loop *nl = nbd_loop_get(s->rx_loop);
	bool any = false, got;
	unsigned int round;
	int ret;

	for (round = 0;; round++) {
		/* Not while parsing_nl is set: a failed batch completes through the bottom half. */
		tblk__nbd_conn_flush(s->conn);
		parsing_nl = nl;
		ret = tblk__nbd_conn_poll(s->conn);
		parsing_nl = NULL;
		if (ret < 0) {
			/* Broken: the socket stays readable (end of stream), nothing more comes. */
			nbd_rx_unwatch(s);
			s->rx_over = true;
		} else if (ret > 0) {
			tblk_bh_schedule(s->rx_bh);
		}
		tblk_mutex_lock(&nl->lock);
		got = nl->head != NULL;
		tblk_mutex_unlock(&nl->lock);
		nbd_loop_bh(nl);
		any |= got;
		if (round)
			nbd_rx_reread_learn(s, got);
		if (!got || ret || round + 1 == NBD_REREAD_MAX || !nbd_rx_reread(s))
			break;
	}
	tblk__nbd_conn_flush(s->conn);
	return any;
}

/* rx_loop, before it polls or sleeps: what the loop's callbacks submitted goes out. */
static void nbd_rx_hook(void *opaque)
{
	struct nbd_state *s = opaque;

	tblk__nbd_conn_flush(s->conn);
}

/* rx_loop: the socket is readable (or a parse ran out of budget). */
static void nbd_rx_ready(void *opaque)
{
	nbd_rx_parse(opaque);
}

/* rx_loop, while the loop busy-polls: parses what has come; true if a request completed. */
static bool nbd_rx_poll(void *opaque)
{
	return nbd_rx_parse(opaque);
}

/*
 * Loop thread, before sending a fast-path request from @loop: true if @loop reads its reply
 * (it is, or now becomes, the node's rx_loop and watches the socket); false: the reader
 * thread must.
 */
static bool nbd_rx_watch(struct nbd_state *s, struct tblk_loop *loop)
{
	struct tblk_loop *owner = NULL;

	if (!__atomic_compare_exchange_n(&s->rx_loop, &owner, loop, false, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE) && owner != loop)
		return false;
	if (s->rx_watching)
		return true;
	if (s->rx_over)
		return false;
	if (!s->rx_bh)
		s->rx_bh = tblk_bh_new(loop, nbd_rx_ready, s);
	if (!s->rx_hooked) {
		s->rx_hook = (struct tblk_loop_hook){ .fn = nbd_rx_hook, .opaque = s };
		tblk_loop_add_prepare_hook(loop, &s->rx_hook);
		s->rx_hooked = true;
	}
	if (tblk_loop_set_fd_handler(loop, tblk__nbd_conn_fd(s->conn), nbd_rx_ready, NULL,
				     nbd_rx_poll, s) < 0)
		return false;
	s->rx_watching = true;
	return true;
}

/* rx_loop (or no loop runs it): the socket's handler and the bottom half go. */
static void nbd_rx_release(void *opaque)
{
	struct nbd_state *s = opaque;

	tblk__nbd_conn_flush(s->conn);	/* empty: the node is drained */
	if (s->rx_hooked)
		tblk_loop_remove_prepare_hook(s->rx_loop, &s->rx_hook);
	s->rx_hooked = false;
	nbd_rx_unwatch(s);
	/* Freed on rx_loop's thread: tblk_bh_free() races with its loop elsewhere. */
	tblk_bh_free(s->rx_bh);
	s->rx_bh = NULL;
}

/* Close (the node is drained): removes rx_loop's handler on that loop's thread. */
static void nbd_rx_stop(struct nbd_state *s)
{
	struct tblk_loop *loop = __atomic_load_n(&s->rx_loop, __ATOMIC_ACQUIRE);

	if (loop)
		tblk_loop_call_wait(loop, nbd_rx_release, s);
}

/* Loop thread. Reads and writes that fit one command, and flushes; else -EAGAIN. */
static int nbd_submit_fast(struct tblk_node *node, struct tblk_req *req, uint64_t offset)
{
	struct nbd_state *s = node->opaque;
	struct nbd_fast *f = (struct nbd_fast *)req->drv_scratch;
	uint32_t align = node->limits.request_alignment;
	uint16_t type, flags = 0;
	bool mine;

	switch (req->kind) {
	case TBLK_REQ_READ:
		if (offset > s->info.size || req->bytes > s->info.size - offset)
			return -EAGAIN;	/* the tail past the export's end reads as zeroes */
		type = TBLK_NBD_CMD_READ;
		break;
	case TBLK_REQ_WRITE:
		if (req->flags & TBLK_REQ_FUA) {
			if (!(s->info.flags & TBLK_NBD_FLAG_SEND_FUA))
				return -EAGAIN;
			flags = TBLK_NBD_CMD_FLAG_FUA;
		}
		type = TBLK_NBD_CMD_WRITE;
		break;
	case TBLK_REQ_FLUSH:
		if ((node->flags & TBLK_OPEN_NO_FLUSH) ||
		    !(s->info.flags & TBLK_NBD_FLAG_SEND_FLUSH))
			return -EAGAIN;
		type = TBLK_NBD_CMD_FLUSH;
		break;
	default:
		return -EAGAIN;
	}
	if (type != TBLK_NBD_CMD_FLUSH &&
	    (!req->bytes || req->bytes > node->limits.max_transfer ||
	     ((offset | req->bytes) & (align - 1))))
		return -EAGAIN;
	f->cmd = (struct tblk_nbd_cmd){
		.type = type, .flags = flags,
		.offset = type == TBLK_NBD_CMD_FLUSH ? 0 : offset,
		.len = type == TBLK_NBD_CMD_FLUSH ? 0 : (uint32_t)req->bytes,
		.iov = req->iov, .iovcnt = req->iovcnt,
	};
	mine = nbd_rx_watch(s, req->work.loop);
	f->slot = (struct tblk_nbd_slot){
		.cmd = &f->cmd, .complete = nbd_fast_complete, .by_thread = !mine,
	};
	f->nl = nbd_loop_get(req->work.loop);
	/* rx_loop batches: its requests go out together when it next parses or waits. */
	return tblk__nbd_conn_submit(s->conn, &f->slot, mine);
}

static int64_t nbd_getlength(struct tblk_node *node)
{
	struct nbd_state *s = node->opaque;

	return (int64_t)s->info.size;
}

const struct tblk_driver tblk__drv_nbd = {
	.name = "nbd",
	.is_protocol = true,
	.instance_size = sizeof(struct nbd_state),
	.open = nbd_open,
	.close = nbd_close,
	.create = nbd_create,
	.preadv = nbd_preadv,
	.pwritev = nbd_pwritev,
	.flush = nbd_flush,
	.pdiscard = nbd_pdiscard,
	.pwrite_zeroes = nbd_pwrite_zeroes,
	.block_status = nbd_block_status,
	.getlength = nbd_getlength,
	.submit_fast = nbd_submit_fast,
};
