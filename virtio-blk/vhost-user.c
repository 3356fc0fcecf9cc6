/* SPDX-License-Identifier: MIT */
/*
 * vhost-user.c - the vhost-user-blk back-end's server: a unix socket that serves one
 * front-end at a time (the others wait in the backlog), reads its messages one by one with
 * the fds that came with each (handled in vhost-user-msg.c), sends replies, and wires each
 * queue's kick and call eventfds to the device model. A front-end that goes away leaves the
 * server listening; the next one gets a fresh device on the same disk.
 *
 * Threading: the server, its connection, the device and all fd handlers live on the loop
 * of the backend (an iothread or the main loop); nothing here takes a lock.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "virtio-blk/vhost-user-int.h"

static void conn_drop(struct vu_conn *c);
static void conn_readable(void *opaque);
static void listen_readable(void *opaque);

/* ------------------------------------------------------------ sending */

static int send_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN) {
			/* Replies are small; a front-end that does not read is gone. */
			return -EAGAIN;
		}
		if (n <= 0)
			return -EIO;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

int tblk__vu_reply(struct vu_conn *c, uint32_t request, const void *payload, uint32_t size)
{
	uint8_t msg[VHOST_USER_HDR_SIZE + VHOST_USER_MAX_PAYLOAD];
	struct vhost_user_hdr h = { request, VHOST_USER_VERSION | VHOST_USER_REPLY, size };

	memcpy(msg, &h, sizeof(h));
	memcpy(msg + sizeof(h), payload, size);
	return send_all(c->fd, msg, sizeof(h) + size);
}

int tblk__vu_reply_fd(struct vu_conn *c, uint32_t request, const void *payload, uint32_t size,
		      int fd)
{
	uint8_t msg[VHOST_USER_HDR_SIZE + 64];
	struct vhost_user_hdr h = { request, VHOST_USER_VERSION | VHOST_USER_REPLY, size };
	union {
		struct cmsghdr align;
		uint8_t b[CMSG_SPACE(sizeof(int))];
	} ctl;
	struct iovec iov = { msg, sizeof(h) + size };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
			     .msg_controllen = sizeof(ctl.b) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);

	memcpy(msg, &h, sizeof(h));
	memcpy(msg + sizeof(h), payload, size);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	return sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)iov.iov_len ? 0 : -EIO;
}

int tblk__vu_reply_u64(struct vu_conn *c, uint32_t request, uint64_t v)
{
	return tblk__vu_reply(c, request, &v, sizeof(v));
}

/* ------------------------------------------------------------ device callbacks */

static void signal_fd(int fd)
{
	uint64_t one = 1;

	if (fd >= 0 && write(fd, &one, sizeof(one)) < 0) {
		/* A full or closed eventfd: the front-end polls the ring anyway. */
	}
}

static void dev_notify(void *opaque, unsigned int q)
{
	struct vu_conn *c = opaque;

	signal_fd(c->vq[q].call_fd);
}

static void dev_broken(void *opaque, unsigned int q)
{
	struct vu_conn *c = opaque;

	signal_fd(c->vq[q].err_fd);
}

static void conn_resume(void *opaque);

static void dev_stopped(void *opaque, unsigned int q)
{
	struct vu_conn *c = opaque;
	struct vhost_user_state st;
	unsigned int inflight;

	if (!c->paused || c->wait_q != (int)q)
		return;
	st.index = q;
	st.num = tblk_vblk_vq_stop(c->dev, q, &inflight);
	c->paused = false;
	if (tblk__vu_reply(c, VHOST_USER_GET_VRING_BASE, &st, sizeof(st)) < 0) {
		conn_drop(c);
		return;
	}
	/* Not from inside the device's completion: from the loop, soon. */
	tblk_bh_schedule(c->resume_bh);
}

/* ------------------------------------------------------------ queues */

static void kick_readable(void *opaque)
{
	struct vu_vq *v = opaque;
	uint64_t cnt;
	ssize_t n = read(v->kick_fd, &cnt, sizeof(cnt));

	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
		/* Not an eventfd we can read (a pipe at EOF...): stop watching, do not spin. */
		tblk_loop_set_fd_handler(v->conn->srv->loop, v->kick_fd, NULL, NULL, NULL, NULL);
		return;
	}
	tblk_vblk_vq_kick(v->conn->dev, v->idx);
}

static bool kick_poll(void *opaque)
{
	struct vu_vq *v = opaque;

	return tblk_vblk_vq_poll(v->conn->dev, v->idx);
}

int tblk__vu_vq_watch(struct vu_conn *c, struct vu_vq *q, int fd)
{
	int ret = tblk_loop_set_fd_handler(c->srv->loop, fd, kick_readable, NULL, kick_poll, q);

	if (ret < 0) {
		close(fd);
		return ret;
	}
	q->kick_fd = fd;
	return 0;
}

void tblk__vu_vq_unwatch(struct vu_conn *c, struct vu_vq *v)
{
	if (v->kick_fd >= 0)
		tblk_loop_set_fd_handler(c->srv->loop, v->kick_fd, NULL, NULL, NULL, NULL);
	vu_close_fd(&v->kick_fd);
}

/* Handles one complete message; false if the connection was dropped. */
static bool dispatch(struct vu_conn *c, struct msg *m)
{
	bool ack = (c->proto & (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK)) &&
		   (m->h.flags & VHOST_USER_NEED_REPLY);
	int ret;

	if ((m->h.flags & VHOST_USER_VERSION_MASK) != VHOST_USER_VERSION)
		ret = VU_DROP;
	else
		ret = tblk__vu_handle(c, m);
	for (unsigned int i = 0; i < m->nfds; i++)
		close(m->fds[i]);
	m->nfds = 0;
	if (ret == VU_DROP) {
		conn_drop(c);
		return false;
	}
	if (ret <= 0 && ack && tblk__vu_reply_u64(c, m->h.request, ret < 0 ? 1 : 0) < 0) {
		conn_drop(c);
		return false;
	}
	return true;
}

/* Dispatches the message in the buffer; false if @c is gone. */
static bool conn_dispatch(struct vu_conn *c)
{
	struct msg m;

	memcpy(&m.h, c->buf, sizeof(m.h));
	m.p = c->buf + VHOST_USER_HDR_SIZE;
	m.fds = c->fds;
	m.nfds = c->nfds;
	c->in_process = true;
	dispatch(c, &m);
	c->in_process = false;
	c->have = 0;
	c->nfds = 0;
	if (c->dead) {
		conn_drop(c);
		return false;
	}
	return true;
}

static void conn_resume(void *opaque)
{
	struct vu_conn *c = opaque;

	if (!c->dead && !c->paused)
		tblk_loop_set_fd_handler(c->srv->loop, c->fd, conn_readable, NULL, NULL, c);
}

/* Keeps the fds that came with a read: they belong to the message being assembled. */
static bool take_fds(struct vu_conn *c, struct msghdr *mh)
{
	bool ok = !(mh->msg_flags & MSG_CTRUNC);

	for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
		const uint8_t *data = CMSG_DATA(cm);
		size_t nr;

		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		nr = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < nr; i++) {
			int fd;

			memcpy(&fd, data + i * sizeof(int), sizeof(fd));
			if (c->nfds < VHOST_USER_MAX_FDS) {
				c->fds[c->nfds++] = fd;
			} else {
				close(fd);
				ok = false;
			}
		}
	}
	return ok;
}

/*
 * Reads messages one at a time, header then payload, so that the fds a front-end sent
 * with a message (one sendmsg() each) arrive with that message's bytes and no other's.
 */
static void conn_readable(void *opaque)
{
	struct vu_conn *c = opaque;

	while (!c->paused) {
		union {
			struct cmsghdr align;
			uint8_t buf[CMSG_SPACE(sizeof(int) * VHOST_USER_MAX_FDS * 2)];
		} ctl;
		struct vhost_user_hdr h;
		size_t want;
		struct iovec iov;
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf,
				     .msg_controllen = sizeof(ctl.buf) };
		ssize_t n;

		memcpy(&h, c->buf, sizeof(h));
		want = c->have < VHOST_USER_HDR_SIZE ? VHOST_USER_HDR_SIZE - c->have :
		       VHOST_USER_HDR_SIZE + h.size - c->have;
		iov = (struct iovec){ c->buf + c->have, want };
		n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (n <= 0 || !take_fds(c, &mh)) {
			conn_drop(c);
			return;
		}
		c->have += (size_t)n;
		if (c->have < VHOST_USER_HDR_SIZE)
			continue;
		memcpy(&h, c->buf, sizeof(h));
		if (h.size > VHOST_USER_MAX_PAYLOAD) {
			conn_drop(c);
			return;
		}
		if (c->have == VHOST_USER_HDR_SIZE + h.size && !conn_dispatch(c))
			return;
	}
	tblk_loop_set_fd_handler(c->srv->loop, c->fd, NULL, NULL, NULL, NULL);
}

/* ------------------------------------------------------------ connections */

static void conn_release_device(struct vu_conn *c)
{
	for (unsigned int i = 0; i < TBLK_VBLK_MAX_QUEUES; i++) {
		tblk__vu_vq_unwatch(c, &c->vq[i]);
		vu_close_fd(&c->vq[i].call_fd);
		vu_close_fd(&c->vq[i].err_fd);
	}
	if (c->dev) {
		tblk_vblk_detach(c->dev);
		tblk_vblk_unref(c->dev);
		c->dev = NULL;
	}
}

int tblk__vu_conn_new_device(struct vu_conn *c)
{
	struct tblk_vblk_callbacks cbs = { dev_notify, dev_stopped, dev_broken, c };
	int ret;

	conn_release_device(c);
	ret = tblk_vblk_new(&c->dev, c->srv->blk, &c->srv->opts, NULL);
	if (ret < 0)
		return VU_DROP;
	tblk_vblk_set_callbacks(c->dev, &cbs);
	if (c->ifl_map)
		tblk_vblk_set_inflight(c->dev, (uint8_t *)c->ifl_map + c->ifl_offset, c->ifl_nq,
				       c->ifl_qsize);
	c->paused = false;
	c->features = 0;
	return 0;
}

static void conn_drop(struct vu_conn *c)
{
	struct tblk_vu_server *srv = c->srv;

	if (c->dead && c->in_process)
		return;
	if (!c->dead) {
		tblk_loop_set_fd_handler(srv->loop, c->fd, NULL, NULL, NULL, NULL);
		conn_release_device(c);
		tblk__vu_inflight_clear(c);
		vu_close_fd(&c->fd);
		for (unsigned int i = 0; i < c->nfds; i++)
			close(c->fds[i]);
		c->nfds = 0;
		if (srv->conn == c) {
			srv->conn = NULL;
			/* Take the next front-end, which may already wait in the backlog. */
			if (srv->listen_fd >= 0)
				tblk_loop_set_fd_handler(srv->loop, srv->listen_fd, listen_readable,
							 NULL, NULL, srv);
		}
		c->dead = true;
	}
	if (!c->in_process) {
		tblk_bh_cancel(c->resume_bh);
		tblk_bh_free(c->resume_bh);
		g_free(c);
	}
}

/* Serves the connected socket @fd (taking it); 0 or -errno. */
static int conn_adopt(struct tblk_vu_server *srv, int fd)
{
	struct vu_conn *c;

	c = g_new0(struct vu_conn, 1);
	c->srv = srv;
	c->fd = fd;
	c->resume_bh = tblk_bh_new(srv->loop, conn_resume, c);
	for (unsigned int i = 0; i < TBLK_VBLK_MAX_QUEUES; i++)
		c->vq[i] = (struct vu_vq){ c, i, -1, -1, -1 };
	if (tblk__vu_conn_new_device(c) < 0 ||
	    tblk_loop_set_fd_handler(srv->loop, fd, conn_readable, NULL, NULL, c) < 0) {
		conn_release_device(c);
		close(fd);
		tblk_bh_free(c->resume_bh);
		g_free(c);
		return -ENOMEM;
	}
	srv->conn = c;
	__atomic_add_fetch(&srv->nr_conns, 1, __ATOMIC_RELAXED);
	return 0;
}

static void listen_readable(void *opaque)
{
	struct tblk_vu_server *srv = opaque;
	int fd;

	if (srv->conn)
		return;
	fd = accept4(srv->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
	if (fd < 0 || conn_adopt(srv, fd) < 0)
		return;
	/* One front-end at a time: the others wait in the backlog until this one leaves. */
	tblk_loop_set_fd_handler(srv->loop, srv->listen_fd, NULL, NULL, NULL, NULL);
}

/* ------------------------------------------------------------ server */

static int listen_unix(const char *path, GError **errp)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path))
		return tblk_error_set(errp, ENAMETOOLONG, "UNIX socket path '%s' is too long",
				      path);
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return tblk_error_set_errno(errp, errno, "Failed to create socket");
	unlink(path);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 16) < 0) {
		int err = errno;

		close(fd);
		return tblk_error_set_errno(errp, err, "Failed to bind socket to %s", path);
	}
	return fd;
}

int tblk_vu_server_start(struct tblk_vu_server **psrv, struct tblk_blk *blk,
			 const struct tblk_vu_opts *opts, GError **errp)
{
	struct tblk_vu_server *srv;
	struct tblk_vblk *probe;
	int ret, fd, listening = 1;
	socklen_t len = sizeof(listening);

	/* Validate the device options once, before anything is created. */
	ret = tblk_vblk_new(&probe, blk, &opts->blk, errp);
	if (ret < 0)
		return ret;
	tblk_vblk_unref(probe);
	if (opts->path) {
		fd = listen_unix(opts->path, errp);
		if (fd < 0)
			return fd;
	} else {
		fd = opts->listen_fd;
		if (fd < 0)
			return tblk_error_set(errp, EINVAL, "no socket to listen on");
		if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) < 0)
			return tblk_error_set_errno(errp, errno, "File descriptor %d is not a "
						    "socket", fd);
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	}
	srv = g_new0(struct tblk_vu_server, 1);
	srv->blk = blk;
	srv->loop = tblk_blk_get_loop(blk);
	srv->opts = opts->blk;
	if (opts->blk.serial)
		g_strlcpy(srv->serial, opts->blk.serial, sizeof(srv->serial));
	srv->opts.serial = srv->serial;
	srv->path = g_strdup(opts->path);
	srv->listen_fd = fd;
	if (!listening) {
		/* A socket already connected to its front-end: serve it, listen to nothing. */
		srv->listen_fd = -1;
		ret = conn_adopt(srv, fd);
	} else {
		ret = tblk_loop_set_fd_handler(srv->loop, fd, listen_readable, NULL, NULL, srv);
	}
	if (ret < 0) {
		tblk_error_set_errno(errp, -ret, "Cannot watch the socket");
		if (listening)
			close(fd);
		if (srv->path)
			unlink(srv->path);
		g_free(srv->path);
		g_free(srv);
		return ret;
	}
	*psrv = srv;
	return 0;
}

void tblk_vu_server_stop(struct tblk_vu_server *srv)
{
	if (srv->listen_fd >= 0) {
		tblk_loop_set_fd_handler(srv->loop, srv->listen_fd, NULL, NULL, NULL, NULL);
		close(srv->listen_fd);
		srv->listen_fd = -1;
		if (srv->path)
			unlink(srv->path);
	}
	if (srv->conn)
		conn_drop(srv->conn);
}

void tblk_vu_server_free(struct tblk_vu_server *srv)
{
	if (!srv)
		return;
	g_free(srv->path);
	g_free(srv);
}

unsigned int tblk_vu_server_nr_connections(struct tblk_vu_server *srv)
{
	return __atomic_load_n(&srv->nr_conns, __ATOMIC_RELAXED);
}
