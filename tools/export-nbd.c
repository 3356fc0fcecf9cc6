/* SPDX-License-Identifier: MIT */
/*
 * export-nbd.c - the NBD server object: exports, listening sockets, the client count, and
 * the export table the handshake consults. Connections themselves are export-nbd-conn.c.
 *
 * Threading: listeners, handshakes, export additions and removals run on the server's loop
 * (srv->loop). A connection moves to its backend's loop after the handshake; the fields it
 * shares with the server are under srv->lock (a leaf lock; no callback runs with it held).
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "tools/export-nbd-srv.h"

static struct nbds_export *find_locked(struct nbds_server *srv, const char *name,
				       const char *id)
{
	struct tblk_list *pos;

	tblk_list_for_each(pos, &srv->exports) {
		struct nbds_export *e = tblk_list_entry(pos, struct nbds_export, link);

		if ((name && !strcmp(e->p.name, name)) || (id && !strcmp(e->id, id)))
			return e;
	}
	return NULL;
}

/*
 * The handshake's view of the exports. It runs on the server loop, the only thread that
 * takes exports off the list (nbds_server_del_export()), so what it finds stays valid
 * for the rest of the callback; the lock covers additions from other threads.
 */
static const struct nbds_proto_export *table_lookup(void *opaque, const char *name)
{
	struct nbds_server *srv = opaque;
	struct nbds_export *e;

	tblk_mutex_lock(&srv->lock);
	e = find_locked(srv, name, NULL);
	tblk_mutex_unlock(&srv->lock);
	return e ? &e->p : NULL;
}

static const struct nbds_proto_export *table_nth(void *opaque, unsigned int i)
{
	struct nbds_server *srv = opaque;
	const struct nbds_proto_export *p = NULL;
	struct tblk_list *pos;

	tblk_mutex_lock(&srv->lock);
	tblk_list_for_each(pos, &srv->exports) {
		if (!i--) {
			p = &tblk_list_entry(pos, struct nbds_export, link)->p;
			break;
		}
	}
	tblk_mutex_unlock(&srv->lock);
	return p;
}

struct nbds_server *nbds_server_new(struct tblk_loop *loop)
{
	struct nbds_server *srv = g_new0(struct nbds_server, 1);

	srv->loop = loop;
	srv->handshake_ns = NBDS_HANDSHAKE_NS;
	tblk_mutex_init(&srv->lock);
	tblk_cond_init(&srv->cond);
	tblk_list_init(&srv->exports);
	tblk_list_init(&srv->conns);
	srv->table.lookup = table_lookup;
	srv->table.nth = table_nth;
	srv->table.opaque = srv;
	return srv;
}

void nbds_server_set_handshake_timeout(struct nbds_server *srv, uint64_t ns)
{
	srv->handshake_ns = ns;
}

void nbds_server_set_max_clients(struct nbds_server *srv, unsigned int max)
{
	srv->max_clients = max;
}

void nbds_server_set_clients_cb(struct nbds_server *srv, nbds_clients_fn *fn, void *opaque)
{
	srv->clients_fn = fn;
	srv->clients_opaque = opaque;
}

static void listeners_update(struct nbds_server *srv);

static void on_accept(void *opaque)
{
	struct nbds_listener *l = opaque;
	int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);

	if (fd < 0)
		return;	/* EAGAIN, a client gone before we took it, or out of fds: retry later */
	nbds_server_add_client(l->srv, fd);
}

/* Listens only while there is room for another client. Server loop. */
static void listeners_update(struct nbds_server *srv)
{
	unsigned int i, nr;
	bool on;

	tblk_mutex_lock(&srv->lock);
	nr = srv->nr_clients;
	tblk_mutex_unlock(&srv->lock);
	on = !srv->stopping && (!srv->max_clients || nr < srv->max_clients);
	if (on == srv->listening)
		return;
	srv->listening = on;
	for (i = 0; i < srv->nr_listeners; i++)
		tblk_loop_set_fd_handler(srv->loop, srv->listeners[i].fd, on ? on_accept : NULL,
					 NULL, NULL, &srv->listeners[i]);
}

static int add_listener(struct nbds_server *srv, int fd, GError **errp)
{
	if (srv->nr_listeners == TBLK_ARRAY_SIZE(srv->listeners)) {
		close(fd);
		return tblk_error_set(errp, EMFILE, "too many listening sockets");
	}
	srv->listeners[srv->nr_listeners].fd = fd;
	srv->listeners[srv->nr_listeners].srv = srv;
	srv->nr_listeners++;
	if (!srv->listening) {
		listeners_update(srv);	/* starts every listener if there is room */
		return 0;
	}
	return tblk_loop_set_fd_handler(srv->loop, fd, on_accept, NULL, NULL,
					&srv->listeners[srv->nr_listeners - 1]);
}

int nbds_server_listen_inet(struct nbds_server *srv, const char *host, const char *port,
			    GError **errp)
{
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
				  .ai_flags = AI_PASSIVE | AI_ADDRCONFIG };
	struct addrinfo *res, *ai;
	int ret, fd = -1, err = 0, one = 1;

	ret = getaddrinfo(host && *host ? host : NULL, port, &hints, &res);
	if (ret)
		return tblk_error_set(errp, EINVAL, "address resolution failed for %s:%s: %s",
				      host ? host : "", port, gai_strerror(ret));
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
		if (fd < 0) {
			err = errno;
			continue;
		}
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (ai->ai_family == AF_INET6)
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 128) == 0)
			break;
		err = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return tblk_error_set_errno(errp, err ? err : EADDRNOTAVAIL,
					    "Failed to bind socket");
	return add_listener(srv, fd, errp);
}

int nbds_server_listen_unix(struct nbds_server *srv, const char *path, GError **errp)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd, err;

	if (strlen(path) >= sizeof(sun.sun_path))
		return tblk_error_set(errp, EINVAL, "UNIX socket path '%s' is too long", path);
	strcpy(sun.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return tblk_error_set_errno(errp, errno, "Failed to create socket");
	unlink(path);
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 || listen(fd, 128) < 0) {
		err = errno;
		close(fd);
		return tblk_error_set_errno(errp, err, "Failed to bind socket to %s", path);
	}
	g_free(srv->unix_path);
	srv->unix_path = g_strdup(path);
	return add_listener(srv, fd, errp);
}

int nbds_server_listen_fd(struct nbds_server *srv, int fd, GError **errp)
{
	int type = 0, acc = 0, fl;
	socklen_t len = sizeof(type);

	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0 || type != SOCK_STREAM ||
	    getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &(socklen_t){ sizeof(acc) }) < 0 ||
	    !acc)
		return tblk_error_set(errp, EINVAL, "File descriptor %d is not a listening socket",
				      fd);
	fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		return tblk_error_set_errno(errp, errno, "Failed to set up socket %d", fd);
	return add_listener(srv, fd, errp);
}

/* A client came or went: tell the owner, listen or stop listening. Server loop. */
static void clients_changed(void *opaque)
{
	struct nbds_server *srv = opaque;
	unsigned int nr;
	uint64_t total;

	listeners_update(srv);
	tblk_mutex_lock(&srv->lock);
	nr = srv->nr_clients;
	total = srv->nr_accepted;
	srv->nr_notify_pending--;
	tblk_cond_broadcast(&srv->cond);
	tblk_mutex_unlock(&srv->lock);
	if (srv->clients_fn && !srv->stopping)
		srv->clients_fn(srv->clients_opaque, nr, total);
}

void nbds__server_client_gone(struct nbds_server *srv, struct nbds_conn *conn)
{
	tblk_mutex_lock(&srv->lock);
	tblk_list_del(&conn->link);
	if (conn->exp)
		conn->exp->nr_conns--;
	srv->nr_clients--;
	srv->nr_notify_pending++;
	tblk_cond_broadcast(&srv->cond);
	tblk_mutex_unlock(&srv->lock);
	tblk_loop_call_soon(srv->loop, clients_changed, srv);
}

int nbds_server_add_client(struct nbds_server *srv, int fd)
{
	struct nbds_conn *conn;
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
		close(fd);
		return -errno;
	}
	conn = nbds__conn_new(srv, fd);
	tblk_mutex_lock(&srv->lock);
	tblk_list_add_tail(&srv->conns, &conn->link);
	srv->nr_clients++;
	srv->nr_accepted++;
	srv->nr_notify_pending++;
	tblk_mutex_unlock(&srv->lock);
	tblk_loop_call_soon(srv->loop, clients_changed, srv);
	nbds__conn_start(conn);
	return 0;
}

int nbds_server_add_export(struct nbds_server *srv, struct tblk_blk *blk,
			   const struct nbds_export_opts *o, GError **errp)
{
	const char *name = o->name ? o->name : "";
	struct nbds_export *e;
	int64_t size;
	uint32_t align;

	if (strlen(name) > TBLK_NBD_MAX_STRING)
		return tblk_error_set(errp, EINVAL, "export name '%s' too long", name);
	if (o->description && strlen(o->description) > TBLK_NBD_MAX_STRING)
		return tblk_error_set(errp, EINVAL, "description '%s' too long", o->description);
	tblk_mutex_lock(&srv->lock);
	e = find_locked(srv, name, NULL);
	tblk_mutex_unlock(&srv->lock);
	if (e)
		return tblk_error_set(errp, EEXIST, "NBD server already has export named '%s'",
				      name);
	if (o->writable && tblk_blk_is_read_only(blk))
		return tblk_error_set(errp, EPERM, "Cannot export a read-only image as writable");
	size = tblk_blk_getlength(blk);
	if (size < 0)
		return tblk_error_set_errno(errp, (int)-size, "Failed to determine the image size");
	align = tblk_blk_request_alignment(blk);
	if (!align || !TBLK_IS_POW2(align) || align > 65536)
		align = 1;

	e = g_new0(struct nbds_export, 1);
	e->blk = blk;
	e->id = g_strdup(o->id ? o->id : name);
	e->name = g_strdup(name);
	e->description = g_strdup(o->description);
	e->discard = o->discard;
	e->detect_zeroes = o->detect_zeroes;
	nbds__buf_cache_init(&e->bufs);
	nbds__bs_cache_init(&e->bs);
	e->p.name = e->name;
	e->p.description = e->description;
	e->p.size = (uint64_t)size;
	e->p.min_block = align;
	e->p.pref_block = TBLK_MAX(align, 4096u);
	e->p.max_block = TBLK_NBD_MAX_BUFFER;
	e->p.alloc_depth = o->allocation_depth;
	e->p.tflags = TBLK_NBD_FLAG_HAS_FLAGS | TBLK_NBD_FLAG_SEND_FLUSH | TBLK_NBD_FLAG_SEND_FUA |
		      TBLK_NBD_FLAG_SEND_CACHE | TBLK_NBD_FLAG_SEND_DF;
	if (o->writable)
		e->p.tflags |= TBLK_NBD_FLAG_SEND_TRIM | TBLK_NBD_FLAG_SEND_WRITE_ZEROES |
			       TBLK_NBD_FLAG_SEND_FAST_ZERO;
	else
		e->p.tflags |= TBLK_NBD_FLAG_READ_ONLY;
	if (o->multi_conn)
		e->p.tflags |= TBLK_NBD_FLAG_CAN_MULTI_CONN;
	tblk_mutex_lock(&srv->lock);
	tblk_list_add_tail(&srv->exports, &e->link);
	tblk_mutex_unlock(&srv->lock);
	return 0;
}

unsigned int nbds_server_nr_exports(struct nbds_server *srv)
{
	unsigned int n = 0;
	struct tblk_list *pos;

	tblk_mutex_lock(&srv->lock);
	tblk_list_for_each(pos, &srv->exports)
		n++;
	tblk_mutex_unlock(&srv->lock);
	return n;
}

/*
 * Waits until @pred(srv, arg) holds; srv->lock held on entry and exit. Connections end on
 * their own loops: turn @loop ourselves if it is ours or idle, else sleep on srv->cond.
 */
static void wait_locked(struct nbds_server *srv, struct tblk_loop *loop,
			bool (*pred)(struct nbds_server *srv, void *arg), void *arg)
	TBLK_REQUIRES(srv->lock)
{
	while (!pred(srv, arg)) {
		if (tblk_loop_in_thread(loop) || !tblk_loop_is_running(loop)) {
			tblk_mutex_unlock(&srv->lock);
			tblk_loop_iterate(loop, true);
			tblk_mutex_lock(&srv->lock);
		} else {
			tblk_cond_wait(&srv->cond, &srv->lock);
		}
	}
}

static bool export_idle(struct nbds_server *srv, void *arg)
{
	(void)srv;
	return !((struct nbds_export *)arg)->nr_conns;
}

static void shutdown_conns_locked(struct nbds_server *srv, struct nbds_export *e)
{
	struct tblk_list *pos;

	tblk_list_for_each(pos, &srv->conns) {
		struct nbds_conn *c = tblk_list_entry(pos, struct nbds_conn, link);

		if (!e || c->exp == e)
			shutdown(c->fd, SHUT_RDWR);
	}
}

static void nbds_export_destroy(struct nbds_export *e)
{
	nbds__buf_cache_destroy(&e->bufs);
	nbds__bs_cache_destroy(&e->bs);
	g_free(e->id);
	g_free(e->name);
	g_free(e->description);
	g_free(e);
}

struct unlink_ctx {
	struct nbds_server *srv;
	const char *id;
	struct nbds_export *e;		/* [srv->lock] the export taken off the list */
	bool done;			/* [srv->lock] */
};

/* Server loop: takes the export off the list, so no new handshake can pick it. */
static void unlink_export(void *opaque)
{
	struct unlink_ctx *u = opaque;
	struct nbds_server *srv = u->srv;

	tblk_mutex_lock(&srv->lock);
	u->e = find_locked(srv, NULL, u->id);
	if (!u->e)
		u->e = find_locked(srv, u->id, NULL);
	if (u->e) {
		tblk_list_del(&u->e->link);
		shutdown_conns_locked(srv, u->e);
	}
	u->done = true;
	tblk_cond_broadcast(&srv->cond);
	tblk_mutex_unlock(&srv->lock);
}

static bool unlink_done(struct nbds_server *srv, void *arg)
{
	(void)srv;
	return ((struct unlink_ctx *)arg)->done;
}

int nbds_server_del_export(struct nbds_server *srv, const char *id)
{
	struct unlink_ctx u = { .srv = srv, .id = id };

	if (tblk_loop_in_thread(srv->loop) || !tblk_loop_is_running(srv->loop))
		unlink_export(&u);
	else
		tblk_loop_call_soon(srv->loop, unlink_export, &u);
	tblk_mutex_lock(&srv->lock);
	wait_locked(srv, srv->loop, unlink_done, &u);
	if (u.e)
		wait_locked(srv, tblk_blk_get_loop(u.e->blk), export_idle, u.e);
	tblk_mutex_unlock(&srv->lock);
	if (!u.e)
		return -ENOENT;
	nbds_export_destroy(u.e);
	return 0;
}

static bool server_idle(struct nbds_server *srv, void *arg)
{
	(void)arg;
	return !srv->nr_clients && !srv->nr_notify_pending;
}

void nbds_server_free(struct nbds_server *srv)
{
	struct tblk_list *pos, *tmp;
	unsigned int i;

	if (!srv)
		return;
	srv->stopping = true;
	listeners_update(srv);
	for (i = 0; i < srv->nr_listeners; i++) {
		tblk_loop_set_fd_handler(srv->loop, srv->listeners[i].fd, NULL, NULL, NULL, NULL);
		close(srv->listeners[i].fd);
	}
	if (srv->unix_path)
		unlink(srv->unix_path);
	tblk_mutex_lock(&srv->lock);
	shutdown_conns_locked(srv, NULL);
	wait_locked(srv, srv->loop, server_idle, NULL);
	tblk_mutex_unlock(&srv->lock);
	tblk_list_for_each_safe(pos, tmp, &srv->exports) {
		tblk_list_del(pos);
		nbds_export_destroy(tblk_list_entry(pos, struct nbds_export, link));
	}
	tblk_cond_destroy(&srv->cond);
	tblk_mutex_destroy(&srv->lock);
	g_free(srv->unix_path);
	g_free(srv);
}
