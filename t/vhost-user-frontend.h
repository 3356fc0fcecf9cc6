/* SPDX-License-Identifier: MIT */
/*
 * vhost-user-frontend.h - a vhost-user front-end for the tests and the benchmark: connects
 * to a back-end's socket, shares memfd guest memory (SCM_RIGHTS), negotiates, lays out the
 * rings with t/virtio-blk-driver.h and waits for completions on the call eventfds.
 *
 * Threading: one front-end per thread.
 */
#ifndef TBLK_T_VHOST_USER_FRONTEND_H
#define TBLK_T_VHOST_USER_FRONTEND_H

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "virtio-blk/vhost-user-proto.h"
#include "t/virtio-blk-driver.h"

#define FE_MAXQ		4
#define FE_QSIZE	128

struct fe {
	int sock;
	int memfd;
	uint8_t *mem;
	uint64_t memsize;
	unsigned int nq;
	struct drv d[FE_MAXQ];
	int kick[FE_MAXQ], call[FE_MAXQ], err[FE_MAXQ];
	uint64_t proto;
	bool want_inflight;	/* negotiate INFLIGHT_SHMFD */
	int ifl_fd;		/* the in-flight area to hand back, -1: ask for one */
	bool keep_rings;	/* reconnecting: the rings stay as they are */
};

static inline int fe_connect(const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (strlen(path) >= sizeof(sa.sun_path))
		return -1;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	for (int i = 0; i < 500; i++) {
		if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			return fd;
		usleep(10000);
	}
	close(fd);
	return -1;
}

static inline int fe_send(int sock, uint32_t req, uint32_t flags, const void *p, uint32_t size,
			  const int *fds, unsigned int nfds)
{
	uint8_t buf[VHOST_USER_HDR_SIZE + VHOST_USER_MAX_PAYLOAD + 64];
	struct vhost_user_hdr h = { req, flags, size };
	union {
		struct cmsghdr align;
		uint8_t b[CMSG_SPACE(sizeof(int) * 16)];
	} ctl;
	struct iovec iov = { buf, VHOST_USER_HDR_SIZE + size };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	memcpy(buf, &h, sizeof(h));
	if (size)
		memcpy(buf + sizeof(h), p, size);
	if (nfds) {
		struct cmsghdr *cm;

		mh.msg_control = ctl.b;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
	}
	return sendmsg(sock, &mh, MSG_NOSIGNAL) == (ssize_t)iov.iov_len ? 0 : -1;
}

/* Receives one message (5 s at most); its payload size, 0 at EOF, -1 on error/timeout. */
static inline int fe_recv(int sock, struct vhost_user_hdr *h, void *p, size_t max)
{
	struct pollfd pfd = { sock, POLLIN, 0 };
	ssize_t n;

	if (poll(&pfd, 1, 5000) != 1)
		return -1;
	n = recv(sock, h, sizeof(*h), MSG_WAITALL);
	if (n == 0)
		return 0;
	if (n != (ssize_t)sizeof(*h) || h->size > max)
		return -1;
	if (h->size && recv(sock, p, h->size, MSG_WAITALL) != (ssize_t)h->size)
		return -1;
	return (int)h->size + 1;
}

/* True if the back-end closed the connection (within 5 s). */
static inline bool fe_closed(int sock)
{
	struct vhost_user_hdr h;
	uint8_t p[VHOST_USER_MAX_PAYLOAD];

	for (int i = 0; i < 4; i++) {
		int n = fe_recv(sock, &h, p, sizeof(p));

		if (n == 0)
			return true;
		if (n < 0)
			return false;
	}
	return false;
}

/* Receives one message and the fd that came with it (5 s at most). */
static inline int fe_recv_fd(int sock, struct vhost_user_hdr *h, void *p, size_t max, int *fd)
{
	union {
		struct cmsghdr align;
		uint8_t b[CMSG_SPACE(sizeof(int) * 4)];
	} ctl;
	struct iovec iov = { h, sizeof(*h) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
			     .msg_controllen = sizeof(ctl.b) };
	struct pollfd pfd = { sock, POLLIN, 0 };
	struct cmsghdr *cm;

	*fd = -1;
	if (poll(&pfd, 1, 5000) != 1 || recvmsg(sock, &mh, MSG_WAITALL) != (ssize_t)sizeof(*h))
		return -1;
	cm = CMSG_FIRSTHDR(&mh);
	if (cm && cm->cmsg_type == SCM_RIGHTS)
		memcpy(fd, CMSG_DATA(cm), sizeof(int));
	if (h->size > max || (h->size && recv(sock, p, h->size, MSG_WAITALL) != (ssize_t)h->size))
		return -1;
	return (int)h->size + 1;
}

/* A message with a u64 answer (GET_*); -1 on failure. */
static inline int fe_get_u64(struct fe *f, uint32_t req, uint64_t *v)
{
	struct vhost_user_hdr h;

	if (fe_send(f->sock, req, VHOST_USER_VERSION, NULL, 0, NULL, 0) < 0)
		return -1;
	if (fe_recv(f->sock, &h, v, sizeof(*v)) != 9 || h.request != req ||
	    !(h.flags & VHOST_USER_REPLY))
		return -1;
	return 0;
}

/* A message without an answer, acknowledged when REPLY_ACK is on: 0, the ack, or -1. */
static inline int fe_set(struct fe *f, uint32_t req, const void *p, uint32_t size,
			 const int *fds, unsigned int nfds)
{
	bool ack = f->proto & (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK);
	struct vhost_user_hdr h;
	uint64_t v;

	if (fe_send(f->sock, req, VHOST_USER_VERSION | (ack ? VHOST_USER_NEED_REPLY : 0), p, size,
		    fds, nfds) < 0)
		return -1;
	if (!ack)
		return 0;
	if (fe_recv(f->sock, &h, &v, sizeof(v)) != 9 || h.request != req)
		return -1;
	return (int)v;
}

static inline int fe_set_u64(struct fe *f, uint32_t req, uint64_t v)
{
	return fe_set(f, req, &v, sizeof(v), NULL, 0);
}

static inline int fe_state(struct fe *f, uint32_t req, uint32_t idx, uint32_t num)
{
	struct vhost_user_state st = { idx, num };

	return fe_set(f, req, &st, sizeof(st), NULL, 0);
}

/* Guest memory: one memfd of @size bytes shared as two regions (split in the middle). */
static inline int fe_mem_init(struct fe *f, uint64_t size)
{
	f->memfd = memfd_create("fe-guest", MFD_CLOEXEC);
	if (f->memfd < 0 || ftruncate(f->memfd, (off_t)size) < 0)
		return -1;
	f->mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, f->memfd, 0);
	if (f->mem == MAP_FAILED)
		return -1;
	f->memsize = size;
	return 0;
}

static inline int fe_set_mem_table(struct fe *f)
{
	struct vhost_user_mem m = { .nregions = 2 };
	int fds[2] = { f->memfd, f->memfd };
	uint64_t half = f->memsize / 2;

	m.r[0] = (struct vhost_user_region){ 0, half, (uint64_t)(uintptr_t)f->mem, 0 };
	m.r[1] = (struct vhost_user_region){ half, half, (uint64_t)(uintptr_t)f->mem + half,
					     half };
	return fe_set(f, VHOST_USER_SET_MEM_TABLE, &m, 8 + 2 * sizeof(m.r[0]), fds, 2);
}

/* Negotiates everything and starts @nq queues. 0 or the step that failed (> 0). */
static inline int fe_setup(struct fe *f, const char *path, unsigned int nq, uint64_t features)
{
	uint64_t v;

	f->sock = fe_connect(path);
	if (f->sock < 0)
		return 1;
	f->proto = 0;
	f->nq = nq;
	if (fe_get_u64(f, VHOST_USER_GET_FEATURES, &v) < 0)
		return 2;
	features &= v;
	features |= 1ull << VHOST_USER_F_PROTOCOL_FEATURES;
	if (fe_get_u64(f, VHOST_USER_GET_PROTOCOL_FEATURES, &v) < 0)
		return 3;
	v &= 1ull << VHOST_USER_PROTOCOL_F_MQ | 1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK |
	     1ull << VHOST_USER_PROTOCOL_F_CONFIG |
	     (f->want_inflight ? 1ull << VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD : 0);
	if (fe_set_u64(f, VHOST_USER_SET_PROTOCOL_FEATURES, v) != 0)
		return 4;
	f->proto = v;
	if (fe_set(f, VHOST_USER_SET_OWNER, NULL, 0, NULL, 0) != 0)
		return 5;
	if (fe_set_u64(f, VHOST_USER_SET_FEATURES, features) != 0)
		return 6;
	if (fe_set_mem_table(f) != 0)
		return 7;
	if (f->want_inflight) {
		struct vhost_user_inflight in = { 0, 0, (uint16_t)nq, FE_QSIZE };
		struct vhost_user_hdr h;

		if (f->ifl_fd < 0) {
			fe_send(f->sock, VHOST_USER_GET_INFLIGHT_FD, VHOST_USER_VERSION, &in,
				sizeof(in), NULL, 0);
			if (fe_recv_fd(f->sock, &h, &in, sizeof(in), &f->ifl_fd) !=
			    (int)sizeof(in) + 1 || f->ifl_fd < 0)
				return 10;
		} else {
			in.mmap_size = nq * (uint64_t)(((16 + 16 * FE_QSIZE) + 63) & ~63);
		}
		if (fe_set(f, VHOST_USER_SET_INFLIGHT_FD, &in, sizeof(in), &f->ifl_fd, 1) != 0)
			return 11;
	}
	for (unsigned int q = 0; q < nq; q++) {
		struct drv *d = &f->d[q];
		uint64_t base = (f->memsize / 2 / FE_MAXQ) * q + (f->memsize / 2) * (q & 1);
		struct vhost_user_addr a;

		if (!f->keep_rings)
			drv_init(d, f->mem + base, base, f->memsize / 2 / FE_MAXQ, FE_QSIZE);
		a = (struct vhost_user_addr){ q, 0, (uint64_t)(uintptr_t)d->desc,
					      (uint64_t)(uintptr_t)d->used,
					      (uint64_t)(uintptr_t)d->avail, 0 };
		f->kick[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		f->call[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		f->err[q] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (fe_state(f, VHOST_USER_SET_VRING_NUM, q, FE_QSIZE) != 0 ||
		    fe_state(f, VHOST_USER_SET_VRING_BASE, q, 0) != 0 ||
		    fe_set(f, VHOST_USER_SET_VRING_ADDR, &a, sizeof(a), NULL, 0) != 0)
			return 8;
		v = q;
		if (fe_set(f, VHOST_USER_SET_VRING_CALL, &v, 8, &f->call[q], 1) != 0 ||
		    fe_set(f, VHOST_USER_SET_VRING_ERR, &v, 8, &f->err[q], 1) != 0 ||
		    fe_set(f, VHOST_USER_SET_VRING_KICK, &v, 8, &f->kick[q], 1) != 0 ||
		    fe_state(f, VHOST_USER_SET_VRING_ENABLE, q, 1) != 0)
			return 9;
	}
	return 0;
}

static inline void fe_close(struct fe *f)
{
	for (unsigned int q = 0; q < f->nq; q++) {
		close(f->kick[q]);
		close(f->call[q]);
		close(f->err[q]);
	}
	f->nq = 0;
	if (f->sock >= 0)
		close(f->sock);
	f->sock = -1;
}

static inline void fe_kick(struct fe *f, unsigned int q)
{
	uint64_t one = 1;

	drv_publish(&f->d[q]);
	if (write(f->kick[q], &one, sizeof(one)) < 0)
		abort();
}

/* Waits (10 s at most) until queue @q has @n unconsumed used entries. */
static inline int fe_wait(struct fe *f, unsigned int q, unsigned int n)
{
	struct drv *d = &f->d[q];

	for (int i = 0; i < 1000; i++) {
		struct pollfd pfd = { f->call[q], POLLIN, 0 };
		uint64_t cnt;

		if ((uint16_t)(drv_used_idx(d) - d->last_used) >= n)
			return 0;
		if (poll(&pfd, 1, 10) == 1 && read(f->call[q], &cnt, 8) < 0)
			return -1;
	}
	return -1;
}

#endif /* TBLK_T_VHOST_USER_FRONTEND_H */
