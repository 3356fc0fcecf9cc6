/* SPDX-License-Identifier: MIT */
/*
 * vhost-user-int.h - what the vhost-user back-end's files share: the server, connection and
 * queue structures, the decoded message, and the functions each file offers the other
 * (vhost-user.c: sockets, replies, kick fds, connections; vhost-user-msg.c: the messages).
 *
 * Threading: everything belongs to the loop thread of the server's backend.
 */
#ifndef TBLK_VHOST_USER_INT_H
#define TBLK_VHOST_USER_INT_H

#include <unistd.h>

#include "virtio-blk/virtio-blk.h"
#include "virtio-blk/vhost-user-proto.h"

#define VU_MAX_SLOTS	TBLK_VMEM_MAX_REGIONS
/* Returned by a handler: the front-end broke the protocol; drop the connection. */
#define VU_DROP		(-10000)

struct vu_conn;

struct vu_vq {
	struct vu_conn *conn;
	unsigned int idx;
	int kick_fd, call_fd, err_fd;	/* -1 when absent */
};

/* One front-end's connection; every field belongs to the loop thread. */
struct vu_conn {
	struct tblk_vu_server *srv;
	int fd;
	struct tblk_vblk *dev;		/* reference */
	uint64_t features;		/* as set by SET_FEATURES, bit 30 included */
	uint64_t proto;			/* negotiated protocol features */
	bool paused;			/* waiting to answer GET_VRING_BASE */
	int wait_q;			/* the queue it waits for */
	bool in_process;		/* inside conn_dispatch(): do not free */
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
	int listen_fd;			/* [loop thread] -1 once stopped */
	struct vu_conn *conn;		/* [loop thread] the connected front-end, or NULL */
	unsigned int nr_conns;		/* [atomic] */
};

/* A message being handled: header, payload and the fds that came with it. */
struct msg {
	struct vhost_user_hdr h;
	const uint8_t *p;		/* payload, h.size bytes */
	int *fds;
	unsigned int nfds;
};

static inline void vu_close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* vhost-user.c */
int tblk__vu_reply(struct vu_conn *c, uint32_t request, const void *payload, uint32_t size);
int tblk__vu_reply_fd(struct vu_conn *c, uint32_t request, const void *payload, uint32_t size,
		      int fd);
int tblk__vu_reply_u64(struct vu_conn *c, uint32_t request, uint64_t v);
/* Watches @fd (taken) as queue @q's kick eventfd. 0 or -errno (then @fd is closed). */
int tblk__vu_vq_watch(struct vu_conn *c, struct vu_vq *q, int fd);
void tblk__vu_vq_unwatch(struct vu_conn *c, struct vu_vq *v);
/* Replaces the device with a fresh one (RESET_OWNER, new connection). 0 or VU_DROP. */
int tblk__vu_conn_new_device(struct vu_conn *c);

/* vhost-user-msg.c */
/* 0 or -errno: done, no reply yet; 1: replied; VU_DROP: protocol violation. */
int tblk__vu_handle(struct vu_conn *c, struct msg *m);
void tblk__vu_inflight_clear(struct vu_conn *c);

#endif /* TBLK_VHOST_USER_INT_H */
