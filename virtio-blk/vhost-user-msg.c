/* SPDX-License-Identifier: MIT */
/*
 * vhost-user-msg.c - the vhost-user messages a vhost-user-blk back-end serves: features and
 * protocol features, memory tables and single regions (mapped with their size checked
 * against the file), vring setup, GET_VRING_BASE (answered once the ring is quiet), config
 * space, queue and slot counts, and the in-flight area of INFLIGHT_SHMFD. Every payload
 * size, fd count and queue index is checked before use.
 *
 * Threading: the loop thread of the server's backend.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "virtio-blk/vhost-user-int.h"

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
	/*
	 * Never block on a front-end's fd: a call eventfd whose counter it left near the top
	 * (or a full pipe) would otherwise stop this loop in write().
	 */
	if (fd >= 0)
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	switch (m->h.request) {
	case VHOST_USER_SET_VRING_CALL:
		vu_close_fd(&q->call_fd);
		q->call_fd = fd;
		return 0;
	case VHOST_USER_SET_VRING_ERR:
		vu_close_fd(&q->err_fd);
		q->err_fd = fd;
		return 0;
	}
	/* SET_VRING_KICK: polling mode (no fd) is not supported. */
	tblk__vu_vq_unwatch(c, q);
	if (fd < 0)
		return -ENOTSUP;
	ret = tblk_vblk_vq_start(c->dev, q->idx);
	if (ret < 0) {
		close(fd);
		return ret;
	}
	ret = tblk__vu_vq_watch(c, q, fd);
	if (ret < 0)
		return ret;
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
	tblk__vu_vq_unwatch(c, &c->vq[st.index]);
	st.num = tblk_vblk_vq_stop(c->dev, st.index, &inflight);
	if (inflight) {
		/* Answer once the requests in flight are in the used ring. */
		c->paused = true;
		c->wait_q = (int)st.index;
		return 1;
	}
	return tblk__vu_reply(c, VHOST_USER_GET_VRING_BASE, &st, sizeof(st)) < 0 ? VU_DROP : 1;
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
		return tblk__vu_reply(c, m->h.request, out, sizeof(cfg)) < 0 ? VU_DROP : 1;
	}
	return tblk__vu_reply(c, m->h.request, out, (uint32_t)sizeof(cfg) + cfg.size) < 0 ? VU_DROP : 1;
}

static int msg_u64(struct msg *m, uint64_t *v)
{
	if (m->h.size != sizeof(*v))
		return VU_DROP;
	memcpy(v, m->p, sizeof(*v));
	return 0;
}

/* ------------------------------------------------------------ in-flight area */

void tblk__vu_inflight_clear(struct vu_conn *c)
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
	tblk__vu_inflight_clear(c);
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
	ret = tblk__vu_reply_fd(c, m->h.request, &in, sizeof(in), fd);
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

int tblk__vu_handle(struct vu_conn *c, struct msg *m)
{
	uint64_t v;
	int ret;

	switch (m->h.request) {
	case VHOST_USER_GET_FEATURES:
		if (m->h.size != 0 && m->h.size != 8)
			return VU_DROP;
		v = tblk_vblk_get_features(c->dev) | 1ull << VHOST_USER_F_PROTOCOL_FEATURES;
		return tblk__vu_reply_u64(c, m->h.request, v) < 0 ? VU_DROP : 1;
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
		return tblk__vu_reply_u64(c, m->h.request, offered_protocol()) < 0 ? VU_DROP : 1;
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
		return tblk__vu_conn_new_device(c);
	case VHOST_USER_GET_QUEUE_NUM:
		return tblk__vu_reply_u64(c, m->h.request, tblk_vblk_num_queues(c->dev)) < 0 ? VU_DROP : 1;
	case VHOST_USER_GET_MAX_MEM_SLOTS:
		return tblk__vu_reply_u64(c, m->h.request, VU_MAX_SLOTS) < 0 ? VU_DROP : 1;
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
