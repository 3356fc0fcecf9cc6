/* SPDX-License-Identifier: MIT */
/*
 * vhost-user.c - the vhost-user-blk back-end: a unix socket server that serves one
 * front-end at a time, decodes its messages (every size, fd count and index checked),
 * maps the guest memory it shares, and wires each queue's kick and call eventfds to the
 * device model. A front-end that goes away leaves the server listening; the next one gets
 * a fresh device on the same disk.
 *
 * Threading: the server, its connection, the device and all fd handlers live on the loop
 * of the backend (an iothread or the main loop); nothing here takes a lock.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "virtio-blk/virtio-blk.h"
#include "virtio-blk/vhost-user-int.h"

#define VU_MAX_SLOTS	TBLK_VMEM_MAX_REGIONS
/* Returned by a handler: the front-end broke the protocol; drop the connection. */
#define VU_DROP		(-10000)

struct vu_conn;

struct vu_vq {
	struct vu_conn *conn;
	unsigned int idx;
	int kick_fd, call_fd, err_fd;	/* -1 when absent */
};

struct vu_conn {
	struct tblk_vu_server *srv;
	int fd;
	struct tblk_vblk *dev;		/* reference */
	uint64_t features;		/* as set by SET_FEATURES, bit 30 included */
	uint64_t proto;			/* negotiated protocol features */
	bool paused;			/* waiting to answer GET_VRING_BASE */
	int wait_q;			/* the queue it waits for */
	bool in_process;		/* inside conn_process(): do not free */
	bool dead;			/* dropped while in_process */
	struct tblk_bh *resume_bh;	/* goes on with messages after GET_VRING_BASE */
	size_t have;			/* bytes in buf */
	uint8_t buf[VHOST_USER_HDR_SIZE + VHOST_USER_MAX_PAYLOAD];
	int fds[VHOST_USER_MAX_FDS];	/* received with the message being assembled */
	unsigned int nfds;
	struct vu_vq vq[TBLK_VBLK_MAX_QUEUES];
	void *ifl_map;			/* in-flight area (INFLIGHT_SHMFD), NULL if none */
	size_t ifl_len;
	unsigned int ifl_nq, ifl_qsize;
	size_t ifl_offset;
};

struct tblk_vu_server {
	struct tblk_blk *blk;		/* [const] borrowed */
	struct tblk_loop *loop;		/* [const] */
	struct tblk_vblk_opts opts;	/* [const] */
	char serial[VIRTIO_BLK_ID_BYTES + 1];
	char *path;			/* [const] socket we created, NULL with a given fd */
	int listen_fd;
	struct vu_conn *conn;		/* [loop thread] the connected front-end, or NULL */
	unsigned int nr_conns;		/* [atomic] */
};

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

static int reply(struct vu_conn *c, uint32_t request, const void *payload, uint32_t size)
{
	uint8_t msg[VHOST_USER_HDR_SIZE + VHOST_USER_MAX_PAYLOAD];
	struct vhost_user_hdr h = { request, VHOST_USER_VERSION | VHOST_USER_REPLY, size };

	memcpy(msg, &h, sizeof(h));
	memcpy(msg + sizeof(h), payload, size);
	return send_all(c->fd, msg, sizeof(h) + size);
}

static int reply_fd(struct vu_conn *c, uint32_t request, const void *payload, uint32_t size,
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

static int reply_u64(struct vu_conn *c, uint32_t request, uint64_t v)
{
	return reply(c, request, &v, sizeof(v));
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
	if (reply(c, VHOST_USER_GET_VRING_BASE, &st, sizeof(st)) < 0) {
		conn_drop(c);
		return;
	}
	/* Not from inside the device's completion: from the loop, soon. */
	tblk_bh_schedule(c->resume_bh);
}

/* ------------------------------------------------------------ queues */

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void kick_readable(void *opaque)
{
	struct vu_vq *v = opaque;
	uint64_t cnt;

	if (read(v->kick_fd, &cnt, sizeof(cnt)) < 0 && errno != EAGAIN && errno != EINTR) {
		/* Not an eventfd we can read: stop watching it rather than spin. */
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

static void vq_unwatch(struct vu_conn *c, struct vu_vq *v)
{
	if (v->kick_fd >= 0)
		tblk_loop_set_fd_handler(c->srv->loop, v->kick_fd, NULL, NULL, NULL, NULL);
	close_fd(&v->kick_fd);
}

/* ------------------------------------------------------------ messages */

struct msg {
	struct vhost_user_hdr h;
	const uint8_t *p;		/* payload, h.size bytes */
	int *fds;
	unsigned int nfds;
};

/* Takes the one fd a message must carry (the caller closes the rest). */
static int take_fd(struct msg *m)
{
	int fd;

	if (m->nfds != 1)
		return -1;
	fd = m->fds[0];
	m->nfds = 0;
	return fd;
}

static bool vq_index_ok(struct vu_conn *c, uint64_t idx)
{
	return idx < tblk_vblk_num_queues(c->dev);
}

static int map_region(const struct vhost_user_region *r, int fd, struct tblk_vmem *vmem)
{
	struct tblk_vmap *map;
	int err = 0;

	if (r->size == 0 || r->mmap_offset > UINT64_MAX - r->size)
		return -EINVAL;
	map = tblk__vmap_open(fd, 0, r->mmap_offset + r->size, &err);
	if (!map)
		return err;
	return tblk__vmem_add(vmem, r->gpa, r->size, r->uva, (uint8_t *)map->base +
			      r->mmap_offset, map);
}

static int msg_set_mem_table(struct vu_conn *c, struct msg *m)
{
	struct vhost_user_mem mem;
	struct tblk_vmem *vmem;
	int ret = 0;

	memset(&mem, 0, sizeof(mem));
	if (m->h.size < 8)
		return VU_DROP;
	memcpy(&mem, m->p, 8);
	if (mem.nregions > VHOST_USER_MEMORY_BASELINE_NREGIONS ||
	    m->h.size != 8 + mem.nregions * sizeof(struct vhost_user_region) ||
	    m->nfds != mem.nregions)
		return VU_DROP;
	memcpy(&mem, m->p, m->h.size);
	vmem = tblk__vmem_new();
	for (unsigned int i = 0; i < mem.nregions && ret == 0; i++)
		ret = map_region(&mem.r[i], m->fds[i], vmem);
	if (ret < 0) {
		tblk__vmem_unref(vmem);
		return ret;
	}
	tblk_vblk_set_mem(c->dev, vmem);
	return 0;
}

static int msg_add_mem_reg(struct vu_conn *c, struct msg *m)
{
	struct vhost_user_mem_single s;
	struct tblk_vmem *vmem;
	int fd, ret;

	if (m->h.size != sizeof(s) || m->nfds != 1)
		return VU_DROP;
	memcpy(&s, m->p, sizeof(s));
	fd = take_fd(m);
	vmem = tblk__vmem_clone(tblk_vblk_get_mem(c->dev));
	ret = map_region(&s.r, fd, vmem);
	close(fd);
	if (ret < 0) {
		tblk__vmem_unref(vmem);
		return ret;
	}
	tblk_vblk_set_mem(c->dev, vmem);
	return 0;
}

static int msg_rem_mem_reg(struct vu_conn *c, struct msg *m)
{
	struct vhost_user_mem_single s;
	struct tblk_vmem *vmem;
	int ret;

	if (m->h.size != sizeof(s) || m->nfds > 1)
		return VU_DROP;
	memcpy(&s, m->p, sizeof(s));
	vmem = tblk__vmem_clone(tblk_vblk_get_mem(c->dev));
	ret = tblk__vmem_remove(vmem, s.r.gpa, s.r.size);
	if (ret < 0) {
		tblk__vmem_unref(vmem);
		return ret;
	}
	tblk_vblk_set_mem(c->dev, vmem);
	return 0;
}

static int msg_vring_fd(struct vu_conn *c, struct msg *m)
{
	uint64_t v;
	struct vu_vq *q;
	int fd = -1, ret;

	if (m->h.size != sizeof(v))
		return VU_DROP;
	memcpy(&v, m->p, sizeof(v));
	if ((v & ~(VHOST_USER_VRING_IDX_MASK | VHOST_USER_VRING_NOFD)) ||
	    !vq_index_ok(c, v & VHOST_USER_VRING_IDX_MASK))
		return VU_DROP;
	if (v & VHOST_USER_VRING_NOFD) {
		if (m->nfds)
			return VU_DROP;
	} else {
		fd = take_fd(m);
		if (fd < 0)
			return VU_DROP;
	}
	q = &c->vq[v & VHOST_USER_VRING_IDX_MASK];
	switch (m->h.request) {
	case VHOST_USER_SET_VRING_CALL:
		close_fd(&q->call_fd);
		q->call_fd = fd;
		return 0;
	case VHOST_USER_SET_VRING_ERR:
		close_fd(&q->err_fd);
		q->err_fd = fd;
		return 0;
	}
	/* SET_VRING_KICK: polling mode (no fd) is not supported. */
	vq_unwatch(c, q);
	if (fd < 0)
		return -ENOTSUP;
	ret = tblk_vblk_vq_start(c->dev, q->idx);
	if (ret < 0) {
		close(fd);
		return ret;
	}
	ret = tblk_loop_set_fd_handler(c->srv->loop, fd, kick_readable, NULL, kick_poll, q);
	if (ret < 0) {
		close(fd);
		return ret;
	}
	q->kick_fd = fd;
	if (!(c->features & (1ull << VHOST_USER_F_PROTOCOL_FEATURES)))
		tblk_vblk_vq_enable(c->dev, q->idx, true);
	/* Requests may already wait in the ring. */
	tblk_vblk_vq_kick(c->dev, q->idx);
	return 0;
}

static int msg_get_vring_base(struct vu_conn *c, struct msg *m)
{
	struct vhost_user_state st;
	unsigned int inflight;

	if (m->h.size != sizeof(st))
		return VU_DROP;
	memcpy(&st, m->p, sizeof(st));
	if (!vq_index_ok(c, st.index))
		return VU_DROP;
	vq_unwatch(c, &c->vq[st.index]);
	st.num = tblk_vblk_vq_stop(c->dev, st.index, &inflight);
	if (inflight) {
		/* Answer once the requests in flight are in the used ring. */
		c->paused = true;
		c->wait_q = (int)st.index;
		return 1;
	}
	return reply(c, VHOST_USER_GET_VRING_BASE, &st, sizeof(st)) < 0 ? VU_DROP : 1;
}

static int msg_state(struct vu_conn *c, struct msg *m)
{
	struct vhost_user_state st;

	if (m->h.size != sizeof(st))
		return VU_DROP;
	memcpy(&st, m->p, sizeof(st));
	if (!vq_index_ok(c, st.index))
		return VU_DROP;
	switch (m->h.request) {
	case VHOST_USER_SET_VRING_NUM:
		return tblk_vblk_vq_set_num(c->dev, st.index, st.num);
	case VHOST_USER_SET_VRING_BASE:
		if (st.num > UINT16_MAX)
			return -EINVAL;
		return tblk_vblk_vq_set_base(c->dev, st.index, (uint16_t)st.num);
	default:	/* SET_VRING_ENABLE */
		if (st.num > 1)
			return -EINVAL;
		tblk_vblk_vq_enable(c->dev, st.index, st.num);
		if (st.num)
			tblk_vblk_vq_kick(c->dev, st.index);
		return 0;
	}
}

static int msg_vring_addr(struct vu_conn *c, struct msg *m)
{
	struct vhost_user_addr a;

	if (m->h.size != sizeof(a))
		return VU_DROP;
	memcpy(&a, m->p, sizeof(a));
	if (!vq_index_ok(c, a.index))
		return VU_DROP;
	return tblk_vblk_vq_set_addr(c->dev, a.index, a.desc, a.avail, a.used);
}

static int msg_config(struct vu_conn *c, struct msg *m)
{
	uint8_t out[sizeof(struct vhost_user_config) + TBLK_VBLK_CONFIG_MAX];
	struct vhost_user_config cfg;

	if (m->h.size < sizeof(cfg))
		return VU_DROP;
	memcpy(&cfg, m->p, sizeof(cfg));
	if (cfg.size > TBLK_VBLK_CONFIG_MAX || m->h.size != sizeof(cfg) + cfg.size)
		return VU_DROP;
	if (m->h.request == VHOST_USER_SET_CONFIG)
		return tblk_vblk_set_config(c->dev, cfg.offset, m->p + sizeof(cfg), cfg.size);
	memcpy(out, &cfg, sizeof(cfg));
	if (tblk_vblk_get_config(c->dev, cfg.offset, out + sizeof(cfg), cfg.size) < 0) {
		/* The spec's way to fail: a reply without payload. */
		cfg.size = 0;
		memcpy(out, &cfg, sizeof(cfg));
		return reply(c, m->h.request, out, sizeof(cfg)) < 0 ? VU_DROP : 1;
	}
	return reply(c, m->h.request, out, (uint32_t)sizeof(cfg) + cfg.size) < 0 ? VU_DROP : 1;
}

static int msg_u64(struct msg *m, uint64_t *v)
{
	if (m->h.size != sizeof(*v))
		return VU_DROP;
	memcpy(v, m->p, sizeof(*v));
	return 0;
}

/* ------------------------------------------------------------ in-flight area */

static void conn_inflight_clear(struct vu_conn *c)
{
	if (c->dev)
		tblk_vblk_set_inflight(c->dev, NULL, 0, 0);
	if (c->ifl_map)
		munmap(c->ifl_map, c->ifl_len);
	c->ifl_map = NULL;
	c->ifl_len = 0;
}

/* Maps @len bytes at @offset of @fd as the in-flight area of @nq queues of @qsize. */
static int conn_inflight_map(struct vu_conn *c, int fd, uint64_t offset, uint64_t len,
			     unsigned int nq, unsigned int qsize)
{
	struct stat st;
	void *p;

	if (nq == 0 || nq > TBLK_VBLK_MAX_QUEUES || qsize == 0 || qsize > TBLK_VQ_MAX_SIZE ||
	    !TBLK_IS_POW2(qsize) || len < nq * tblk_vblk_inflight_size(qsize) ||
	    offset > SIZE_MAX / 2 || len > SIZE_MAX / 2)
		return -EINVAL;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size < offset + len)
		return -EINVAL;
	p = mmap(NULL, offset + len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	conn_inflight_clear(c);
	c->ifl_map = p;
	c->ifl_len = offset + len;
	c->ifl_offset = offset;
	c->ifl_nq = nq;
	c->ifl_qsize = qsize;
	tblk_vblk_set_inflight(c->dev, (uint8_t *)p + offset, nq, qsize);
	return 0;
}

static int msg_inflight(struct vu_conn *c, struct msg *m)
{
	struct vhost_user_inflight in = { 0 };
	uint64_t len;
	int fd, ret;

	if (m->h.size < 20 || m->h.size > sizeof(in))
		return VU_DROP;
	memcpy(&in, m->p, m->h.size);
	if (m->h.request == VHOST_USER_SET_INFLIGHT_FD) {
		fd = take_fd(m);
		if (fd < 0)
			return VU_DROP;
		ret = conn_inflight_map(c, fd, in.mmap_offset, in.mmap_size, in.num_queues,
					in.queue_size);
		close(fd);
		return ret;
	}
	/* GET_INFLIGHT_FD: a zeroed area of our layout; the front-end keeps it for us. */
	if (m->nfds || in.num_queues == 0 || in.num_queues > TBLK_VBLK_MAX_QUEUES ||
	    in.queue_size == 0 || in.queue_size > TBLK_VQ_MAX_SIZE || !TBLK_IS_POW2(in.queue_size))
		return VU_DROP;
	len = in.num_queues * tblk_vblk_inflight_size(in.queue_size);
	fd = memfd_create("tblk-inflight", MFD_CLOEXEC);
	if (fd < 0 || ftruncate(fd, (off_t)len) < 0 ||
	    conn_inflight_map(c, fd, 0, len, in.num_queues, in.queue_size) < 0) {
		if (fd >= 0)
			close(fd);
		return VU_DROP;
	}
	in.mmap_size = len;
	in.mmap_offset = 0;
	ret = reply_fd(c, m->h.request, &in, sizeof(in), fd);
	close(fd);
	return ret < 0 ? VU_DROP : 1;
}

static uint64_t offered_protocol(void)
{
	return 1ull << VHOST_USER_PROTOCOL_F_MQ | 1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK |
	       1ull << VHOST_USER_PROTOCOL_F_CONFIG |
	       1ull << VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD |
	       1ull << VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS;
}

static int conn_new_device(struct vu_conn *c);

/* 0 or -errno: done, no reply yet; 1: replied; VU_DROP: protocol violation. */
static int handle(struct vu_conn *c, struct msg *m)
{
	uint64_t v;
	int ret;

	switch (m->h.request) {
	case VHOST_USER_GET_FEATURES:
		if (m->h.size != 0 && m->h.size != 8)
			return VU_DROP;
		v = tblk_vblk_get_features(c->dev) | 1ull << VHOST_USER_F_PROTOCOL_FEATURES;
		return reply_u64(c, m->h.request, v) < 0 ? VU_DROP : 1;
	case VHOST_USER_SET_FEATURES:
		if ((ret = msg_u64(m, &v)) < 0)
			return ret;
		ret = tblk_vblk_set_features(c->dev, v & ~(1ull << VHOST_USER_F_PROTOCOL_FEATURES));
		if (ret == 0)
			c->features = v;
		if (ret == 0 && !(v & (1ull << VHOST_USER_F_PROTOCOL_FEATURES)))
			for (unsigned int i = 0; i < tblk_vblk_num_queues(c->dev); i++)
				tblk_vblk_vq_enable(c->dev, i, true);
		return ret;
	case VHOST_USER_GET_PROTOCOL_FEATURES:
		if (m->h.size != 0 && m->h.size != 8)
			return VU_DROP;
		return reply_u64(c, m->h.request, offered_protocol()) < 0 ? VU_DROP : 1;
	case VHOST_USER_SET_PROTOCOL_FEATURES:
		if ((ret = msg_u64(m, &v)) < 0)
			return ret;
		if (v & ~offered_protocol())
			return -EINVAL;
		c->proto = v;
		return 0;
	case VHOST_USER_SET_OWNER:
		return m->h.size == 0 ? 0 : VU_DROP;
	case VHOST_USER_RESET_OWNER:
		if (m->h.size != 0 && m->h.size != 8)
			return VU_DROP;
		return conn_new_device(c);
	case VHOST_USER_GET_QUEUE_NUM:
		return reply_u64(c, m->h.request, tblk_vblk_num_queues(c->dev)) < 0 ? VU_DROP : 1;
	case VHOST_USER_GET_MAX_MEM_SLOTS:
		return reply_u64(c, m->h.request, VU_MAX_SLOTS) < 0 ? VU_DROP : 1;
	case VHOST_USER_SET_MEM_TABLE:
		return msg_set_mem_table(c, m);
	case VHOST_USER_ADD_MEM_REG:
		return msg_add_mem_reg(c, m);
	case VHOST_USER_REM_MEM_REG:
		return msg_rem_mem_reg(c, m);
	case VHOST_USER_SET_VRING_NUM:
	case VHOST_USER_SET_VRING_BASE:
	case VHOST_USER_SET_VRING_ENABLE:
		return msg_state(c, m);
	case VHOST_USER_SET_VRING_ADDR:
		return msg_vring_addr(c, m);
	case VHOST_USER_GET_VRING_BASE:
		return msg_get_vring_base(c, m);
	case VHOST_USER_SET_VRING_KICK:
	case VHOST_USER_SET_VRING_CALL:
	case VHOST_USER_SET_VRING_ERR:
		return msg_vring_fd(c, m);
	case VHOST_USER_GET_CONFIG:
	case VHOST_USER_SET_CONFIG:
		return msg_config(c, m);
	case VHOST_USER_GET_INFLIGHT_FD:
	case VHOST_USER_SET_INFLIGHT_FD:
		return msg_inflight(c, m);
	case VHOST_USER_SET_LOG_BASE:
	case VHOST_USER_SET_LOG_FD:
	case VHOST_USER_SET_VRING_ENDIAN:
		return -ENOTSUP;
	default:
		/* Unknown: it may expect a reply we cannot give. */
		return VU_DROP;
	}
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
		ret = handle(c, m);
	for (unsigned int i = 0; i < m->nfds; i++)
		close(m->fds[i]);
	m->nfds = 0;
	if (ret == VU_DROP) {
		conn_drop(c);
		return false;
	}
	if (ret <= 0 && ack && reply_u64(c, m->h.request, ret < 0 ? 1 : 0) < 0) {
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
		vq_unwatch(c, &c->vq[i]);
		close_fd(&c->vq[i].call_fd);
		close_fd(&c->vq[i].err_fd);
	}
	if (c->dev) {
		tblk_vblk_detach(c->dev);
		tblk_vblk_unref(c->dev);
		c->dev = NULL;
	}
}

static int conn_new_device(struct vu_conn *c)
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
		conn_inflight_clear(c);
		close_fd(&c->fd);
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
	if (conn_new_device(c) < 0 ||
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
