/* SPDX-License-Identifier: MIT */
/*
 * virtio-blk-int.h - what device.c and virtqueue.c share: the device and queue structures
 * and the request object.
 *
 * Threading: everything here belongs to the device's loop thread ([loop thread]).
 */
#ifndef TBLK_VIRTIO_BLK_INT_H
#define TBLK_VIRTIO_BLK_INT_H

#include "virtio-blk/virtio-blk.h"

/* Buffers one request may map to (descriptors plus splits at region boundaries). */
#define VBLK_REQ_IOV	(TBLK_VBLK_SEG_MAX + 2 + 64)

struct vblk_req {
	struct tblk_vq *vq;
	struct tblk_vmem *vmem;		/* reference: the map the buffers point into */
	struct vblk_req *next_free;
	uint16_t head;
	uint32_t used_len;		/* bytes the device wrote, for the used element */
	uint8_t *status;		/* the status byte, NULL if the chain has none */
	struct iovec *data;		/* inside iov[] */
	int data_cnt;
	struct iovec iov[VBLK_REQ_IOV];
};

/* The in-flight region of one split queue (the vhost-user spec's layout). */
struct vblk_inflight_desc {
	uint8_t inflight;
	uint8_t padding[5];
	uint16_t next;
	uint64_t counter;
};

struct vblk_inflight {
	uint64_t features;
	uint16_t version;
	uint16_t desc_num;
	uint16_t last_batch_head;
	uint16_t used_idx;
	struct vblk_inflight_desc desc[];
};

struct tblk_vq {
	struct tblk_vblk *dev;		/* [const] */
	unsigned int idx;		/* [const] */
	unsigned int num;		/* queue size, 0: not set */
	uint64_t desc_uva, avail_uva, used_uva;
	bool addr_set;
	struct vring_desc *desc;	/* translated at start and at memory changes */
	struct vring_avail *avail;
	struct vring_used *used;
	uint16_t last_avail;		/* next avail entry to take */
	uint16_t used_idx;		/* our used index, published or not */
	uint16_t signalled_used;	/* used index at the last notification (EVENT_IDX) */
	bool signalled_valid;
	bool started, enabled, broken, stopping, stalled;
	unsigned int inflight;		/* requests taken and not completed */
	unsigned int nr_unpublished;	/* used elements written, idx not yet published */
	struct tblk_bh *bh;		/* publishes used entries and notifies, once per batch */
	struct vblk_req *free_reqs;	/* cache of request objects */
	unsigned int nr_free;
	struct vblk_inflight *ifl;	/* shared in-flight region, NULL: not tracked */
	uint64_t ifl_counter;		/* order in which requests were taken */
	uint16_t *resubmit;		/* heads to take again before the avail ring */
	unsigned int nr_resubmit;	/* (taken from the end: sorted by counter, descending) */
};

struct tblk_vblk {
	unsigned int refcnt;		/* owner + one per request in flight */
	struct tblk_blk *blk;		/* [const] borrowed */
	struct tblk_loop *loop;		/* [const] */
	struct tblk_vblk_opts opts;	/* [const] (serial points to serial[]) */
	char serial[VIRTIO_BLK_ID_BYTES + 1];
	uint64_t offered;		/* [const] */
	uint64_t features;
	uint8_t writeback;
	bool detached;
	int64_t length;			/* disk size cached for range checks (-errno: unknown) */
	struct tblk_vmem *vmem;		/* reference, may be NULL */
	struct tblk_vblk_callbacks cbs;
	struct tblk_vblk_stats stats;
	uint8_t *ifl_base;		/* in-flight area, borrowed */
	unsigned int ifl_nq, ifl_qsize;
	unsigned int nq;		/* [const] */
	struct tblk_vq vq[];		/* [const] count */
};

static inline bool vblk_has(const struct tblk_vblk *dev, unsigned int bit)
{
	return dev->features & (1ull << bit);
}

/* virtqueue.c */
void tblk__vq_init(struct tblk_vblk *dev, struct tblk_vq *vq, unsigned int idx);
void tblk__vq_destroy(struct tblk_vq *vq);
int tblk__vq_translate(struct tblk_vq *vq);
/* At queue start: checks the in-flight region, lists what to resubmit, moves last_avail. */
void tblk__vq_inflight_start(struct tblk_vq *vq);
void tblk__vq_process(struct tblk_vq *vq);
void tblk__vq_break(struct tblk_vq *vq);
/* device.c: decodes and submits a request whose buffers are mapped. */
void tblk__vblk_submit(struct tblk_vblk *dev, struct vblk_req *req, struct iovec *out,
		       unsigned int out_cnt, struct iovec *in, unsigned int in_cnt);
/* virtqueue.c: completes @req with @status (VIRTIO_BLK_S_*) and frees it. */
void tblk__vq_complete(struct vblk_req *req, int status);

#endif /* TBLK_VIRTIO_BLK_INT_H */
