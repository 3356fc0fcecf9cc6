/* SPDX-License-Identifier: MIT */
/*
 * virtqueue.c - split virtqueues: taking chains from the avail ring (direct and indirect
 * descriptors, every index and address checked), returning them through the used ring,
 * and notifying the driver once per batch, with or without VIRTIO_RING_F_EVENT_IDX.
 *
 * Threading: everything runs on the device's loop thread. The guest writes the rings
 * concurrently: avail->idx is read with acquire, used->idx published with release, and a
 * descriptor is copied once before any of its fields is used.
 */
#include <string.h>

#include "virtio-blk/virtio-blk-int.h"

static void vq_bh(void *opaque);

/*
 * A burst of requests taken from the avail ring is not held until the loop's next iteration
 * submits it in one batch: while the device takes a burst, what it holds goes to the disk (the
 * loop's prepare hooks: one io_submit() for Linux AIO) at once if none of the queue's other
 * requests is in flight, else as soon as it holds as many as are in flight (at least
 * VQ_BATCH_MIN, at most VQ_BATCH_MAX). A queue whose requests all complete together and
 * come back together (a guest at depth 32 on a disk that completes in bursts) is submitted
 * as 1, 3, 4, 8, 16: the disk starts on the first request while the rest are parsed, and the
 * queue falls out of that lockstep. A few requests that arrive while the disk is busy go in
 * one batch. Linux plugs an io_submit() of more than 2 iocbs; a smaller one rings the disk's
 * doorbell once per request, hence the minimum of 3. Against submitting after the 1st, 2nd,
 * 4th, 8th, 16th request and every 8 more: half the io_submit() calls per request,
 * 0.91-0.95x the CPU per random write at depth 32 for the same IOPS, 0.98x the IOPS and
 * the CPU of random reads (bench/vhost-user-ab.sh, docs/BENCHMARKS.md).
 */
#define VQ_BATCH_MIN	3u
#define VQ_BATCH_MAX	16u

/* Should the @held requests taken since the last submission go to the disk now? */
static bool vq_submit_now(const struct tblk_vq *vq, unsigned int held)
{
	/* Some of the held ones may have completed already (a request error). */
	unsigned int busy = vq->inflight > held ? vq->inflight - held : 0;

	return !busy || held >= TBLK_MAX(VQ_BATCH_MIN, TBLK_MIN(busy, VQ_BATCH_MAX));
}

void tblk__vq_init(struct tblk_vblk *dev, struct tblk_vq *vq, unsigned int idx)
{
	memset(vq, 0, sizeof(*vq));
	vq->dev = dev;
	vq->idx = idx;
	vq->bh = tblk_bh_new(dev->loop, vq_bh, vq);
}

void tblk__vq_destroy(struct tblk_vq *vq)
{
	struct vblk_req *r;

	tblk_bh_cancel(vq->bh);
	tblk_bh_free(vq->bh);
	while ((r = vq->free_reqs)) {
		vq->free_reqs = r->next_free;
		g_free(r);
	}
	g_free(vq->resubmit);
}

/* Translates the ring addresses against the current memory map; -EFAULT if they miss. */
int tblk__vq_translate(struct tblk_vq *vq)
{
	struct tblk_vmem *vmem = vq->dev->vmem;
	uint64_t n = vq->num;

	vq->desc = NULL;
	vq->avail = NULL;
	vq->used = NULL;
	if (!vq->addr_set || !n)
		return -EINVAL;
	vq->desc = tblk__vmem_uva(vmem, vq->desc_uva, 16 * n);
	vq->avail = tblk__vmem_uva(vmem, vq->avail_uva, 4 + 2 * n + 2);
	vq->used = tblk__vmem_uva(vmem, vq->used_uva, 4 + 8 * n + 2);
	if (!vq->desc || !vq->avail || !vq->used ||
	    ((uintptr_t)vq->desc & 15) || ((uintptr_t)vq->avail & 1) ||
	    ((uintptr_t)vq->used & 3)) {
		vq->desc = NULL;
		vq->avail = NULL;
		vq->used = NULL;
		return -EFAULT;
	}
	return 0;
}

void tblk__vq_break(struct tblk_vq *vq)
{
	struct tblk_vblk *dev = vq->dev;

	if (vq->broken)
		return;
	vq->broken = true;
	if (!dev->detached && dev->cbs.broken)
		dev->cbs.broken(dev->cbs.opaque, vq->idx);
}

static uint16_t *used_event(struct tblk_vq *vq)
{
	return &vq->avail->ring[vq->num];
}

static uint16_t *avail_event(struct tblk_vq *vq)
{
	return (uint16_t *)&vq->used->ring[vq->num];
}

/* The virtio spec's vring_need_event(): did [old, new) pass event? */
static bool need_event(uint16_t event, uint16_t new_idx, uint16_t old)
{
	return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old);
}

/* Publishes the used entries written so far and notifies if the driver wants it. */
static void vq_flush(struct tblk_vq *vq)
{
	struct tblk_vblk *dev = vq->dev;
	bool need;

	unsigned int batch = vq->nr_unpublished;

	if (!vq->nr_unpublished || dev->detached || !vq->used)
		return;
	vq->nr_unpublished = 0;
	/*
	 * The driver's event index must be read after the index is visible (store-load order:
	 * both sequentially consistent; no bare fence, which ThreadSanitizer cannot follow).
	 */
	__atomic_store_n(&vq->used->idx, vq->used_idx, __ATOMIC_SEQ_CST);
	if (vq->ifl) {
		/* The batch is in the used ring: its heads are no longer in flight. */
		uint16_t h = __atomic_load_n(&vq->ifl->last_batch_head, __ATOMIC_RELAXED);

		for (unsigned int i = 0; i < batch && h < vq->num; i++) {
			__atomic_store_n(&vq->ifl->desc[h].inflight, 0, __ATOMIC_RELAXED);
			h = vq->ifl->desc[h].next;
		}
		__atomic_store_n(&vq->ifl->used_idx, vq->used_idx, __ATOMIC_RELEASE);
	}
	if (vblk_has(dev, VIRTIO_RING_F_EVENT_IDX)) {
		uint16_t old = vq->signalled_used;
		bool valid = vq->signalled_valid;

		vq->signalled_used = vq->used_idx;
		vq->signalled_valid = true;
		need = !valid || need_event(__atomic_load_n(used_event(vq), __ATOMIC_SEQ_CST),
					    vq->used_idx, old);
	} else {
		need = !(__atomic_load_n(&vq->avail->flags, __ATOMIC_SEQ_CST) &
			 VRING_AVAIL_F_NO_INTERRUPT);
	}
	if (need && dev->cbs.notify) {
		dev->stats.notifies++;
		dev->cbs.notify(dev->cbs.opaque, vq->idx);
	}
}

static void vq_bh(void *opaque)
{
	struct tblk_vq *vq = opaque;

	vq_flush(vq);
}

static struct vblk_req *req_get(struct tblk_vq *vq)
{
	struct vblk_req *req = vq->free_reqs;

	if (req) {
		vq->free_reqs = req->next_free;
		vq->nr_free--;
	} else {
		req = g_malloc(sizeof(*req));
	}
	req->vq = vq;
	req->vmem = NULL;
	req->status = NULL;
	req->used_len = 0;
	req->data = NULL;
	req->data_cnt = 0;
	return req;
}

void tblk__vq_complete(struct vblk_req *req, int status)
{
	struct tblk_vq *vq = req->vq;
	struct tblk_vblk *dev = vq->dev;

	if (status != VIRTIO_BLK_S_OK)
		dev->stats.errors++;
	if (!dev->detached && vq->used && !vq->broken && req->status) {
		__atomic_store_n(req->status, (uint8_t)status, __ATOMIC_RELAXED);
		req->used_len++;
	}
	/*
	 * Its memory was truncated under it (vguard.c), maybe found only by the store just
	 * above: nothing in it can be trusted, the queue is broken, no used entry is written.
	 */
	if (tblk__vguard_faults() && tblk__vmem_faulted(req->vmem))
		tblk__vq_break(vq);
	if (!dev->detached && vq->used && !vq->broken) {
		struct vring_used_elem *e = &vq->used->ring[vq->used_idx % vq->num];

		__atomic_store_n(&e->id, req->head, __ATOMIC_RELAXED);
		__atomic_store_n(&e->len, req->used_len, __ATOMIC_RELAXED);
		if (vq->ifl) {
			vq->ifl->desc[req->head].next = vq->ifl->last_batch_head;
			__atomic_store_n(&vq->ifl->last_batch_head, req->head, __ATOMIC_RELEASE);
		}
		vq->used_idx++;
		vq->nr_unpublished++;
		tblk_bh_schedule(vq->bh);
	}
	tblk__vmem_unref(req->vmem);
	if (vq->nr_free < vq->num) {
		req->next_free = vq->free_reqs;
		vq->free_reqs = req;
		vq->nr_free++;
	} else {
		g_free(req);
	}
	vq->inflight--;
	if (vq->stopping && !vq->inflight) {
		vq_flush(vq);
		if (!dev->detached && dev->cbs.stopped)
			dev->cbs.stopped(dev->cbs.opaque, vq->idx);
	} else if (vq->stalled && vq->started && vq->enabled && !vq->stopping) {
		vq->stalled = false;
		tblk__vq_process(vq);
	}
	tblk_vblk_unref(dev);
}

/* Copies descriptor @i of @table (a guest table of @n entries) once. */
static void desc_read(const struct vring_desc *table, unsigned int i, struct vring_desc *d)
{
	const volatile struct vring_desc *s = &table[i];

	d->addr = s->addr;
	d->len = s->len;
	d->flags = s->flags;
	d->next = s->next;
}

struct walk {
	unsigned int out_cnt, in_cnt;	/* iovecs of readable, writable buffers */
	int err;			/* request error (mapping, order, size) */
};

/*
 * Maps one data descriptor. Readable buffers go to the front of iov[], writable ones after
 * them; a readable buffer after a writable one is a request error.
 */
static void walk_desc(struct tblk_vq *vq, struct vblk_req *req, const struct vring_desc *d,
		      struct walk *w)
{
	unsigned int cnt = w->out_cnt + w->in_cnt;
	int ret;

	if (d->flags & VRING_DESC_F_WRITE) {
		req->status = NULL;
		if (d->len)
			req->status = tblk__vmem_gpa(req->vmem, d->addr + d->len - 1, 1);
		if (d->addr + d->len < d->addr)
			req->status = NULL;
	} else if (w->in_cnt) {
		w->err = -EINVAL;
		return;
	}
	if (w->err)
		return;
	ret = tblk__vmem_map(req->vmem, d->addr, d->len, req->iov, &cnt, VBLK_REQ_IOV);
	if (ret < 0) {
		w->err = ret;
		return;
	}
	if (d->flags & VRING_DESC_F_WRITE)
		w->in_cnt = cnt - w->out_cnt;
	else
		w->out_cnt = cnt;
	(void)vq;
}

/*
 * Walks the chain at @head. -EPROTO if the ring itself is broken (index out of range, a
 * loop, a bad indirect table); else 0 with request errors in w->err.
 */
static int walk_chain(struct tblk_vq *vq, struct vblk_req *req, uint16_t head, struct walk *w)
{
	const struct vring_desc *table = vq->desc;
	unsigned int n = vq->num, i = head, count = 0;
	bool indirect = false;
	struct vring_desc d;

	if (head >= n)
		return -EPROTO;
	for (;;) {
		desc_read(table, i, &d);
		if (d.flags & VRING_DESC_F_INDIRECT) {
			if (indirect || (d.flags & VRING_DESC_F_NEXT) || d.len == 0 ||
			    d.len % sizeof(struct vring_desc) ||
			    d.len / sizeof(struct vring_desc) > TBLK_VQ_MAX_SIZE)
				return -EPROTO;
			table = tblk__vmem_gpa(req->vmem, d.addr, d.len);
			if (!table || ((uintptr_t)table & 7))
				return -EPROTO;
			indirect = true;
			n = d.len / sizeof(struct vring_desc);
			i = 0;
			count = 0;
			continue;
		}
		if (++count > n)
			return -EPROTO;
		walk_desc(vq, req, &d, w);
		if (!(d.flags & VRING_DESC_F_NEXT))
			return 0;
		i = d.next;
		if (i >= n)
			return -EPROTO;
	}
}

/* Takes the chain at @head. -EPROTO breaks the queue. */
static int vq_take(struct tblk_vq *vq, uint16_t head)
{
	struct tblk_vblk *dev = vq->dev;
	struct vblk_req *req = req_get(vq);
	struct walk w = { 0 };
	int ret;

	req->head = head;
	req->vmem = tblk__vmem_ref(dev->vmem);
	ret = walk_chain(vq, req, head, &w);
	if (ret < 0) {
		tblk__vmem_unref(req->vmem);
		g_free(req);
		return ret;
	}
	dev->stats.requests++;
	vq->inflight++;
	tblk_vblk_ref(dev);
	if (vq->ifl) {
		vq->ifl->desc[head].counter = ++vq->ifl_counter;
		__atomic_store_n(&vq->ifl->desc[head].inflight, 1, __ATOMIC_RELEASE);
	}
	if (w.err || !req->status || !w.in_cnt) {
		tblk__vq_complete(req, VIRTIO_BLK_S_IOERR);
		return 0;
	}
	/* The status byte is the last writable byte: not part of the data. */
	if (--req->iov[w.out_cnt + w.in_cnt - 1].iov_len == 0)
		w.in_cnt--;
	tblk__vblk_submit(dev, req, req->iov, w.out_cnt, req->iov + w.out_cnt, w.in_cnt);
	return 0;
}

static bool vq_runnable(struct tblk_vq *vq)
{
	return vq->started && vq->enabled && !vq->broken && !vq->stopping && vq->desc &&
	       !vq->dev->detached;
}

/* The memory table was truncated under us (vguard.c): break the queue. */
static bool vq_mem_faulted(struct tblk_vq *vq)
{
	if (!tblk__vguard_faults() || !tblk__vmem_faulted(vq->dev->vmem))
		return false;
	tblk__vq_break(vq);
	return true;
}

void tblk__vq_process(struct tblk_vq *vq)
{
	unsigned int held = 0;	/* taken from the avail ring since the last submission */

	/* Requests a previous back-end took and never completed go first, in their order. */
	while (vq->nr_resubmit && vq_runnable(vq)) {
		if (vq->inflight >= vq->num) {
			vq->stalled = true;
			return;
		}
		vq->dev->stats.resubmitted++;
		if (vq_take(vq, vq->resubmit[--vq->nr_resubmit]) < 0) {
			tblk__vq_break(vq);
			return;
		}
		if (vq_mem_faulted(vq))
			return;
	}
	while (vq_runnable(vq)) {
		uint16_t avail_idx = __atomic_load_n(&vq->avail->idx, __ATOMIC_ACQUIRE);

		if (vq_mem_faulted(vq))
			return;
		if ((uint16_t)(avail_idx - vq->last_avail) > vq->num) {
			tblk__vq_break(vq);
			return;
		}
		while (vq->last_avail != avail_idx) {
			uint16_t head;

			/* See VQ_BATCH_MIN: what was taken so far goes to the disk now. */
			if (held && vq_submit_now(vq, held)) {
				tblk_loop_prepare_now(vq->dev->loop);
				held = 0;
				if (!vq_runnable(vq))
					return;
			}
			if (vq->inflight >= vq->num) {
				vq->stalled = true;
				return;
			}
			head = __atomic_load_n(&vq->avail->ring[vq->last_avail % vq->num],
					       __ATOMIC_RELAXED);
			vq->last_avail++;
			held++;
			if (vq_take(vq, head) < 0) {
				tblk__vq_break(vq);
				return;
			}
			if (vq_mem_faulted(vq))
				return;
			if (!vq_runnable(vq))
				return;
		}
		if (!vblk_has(vq->dev, VIRTIO_RING_F_EVENT_IDX))
			return;
		/* Ask for a kick at the next entry, then look again for a racing one. */
		__atomic_store_n(avail_event(vq), vq->last_avail, __ATOMIC_SEQ_CST);
		if (__atomic_load_n(&vq->avail->idx, __ATOMIC_SEQ_CST) == avail_idx)
			return;
	}
}

static int counter_desc(const void *a, const void *b, void *opaque)
{
	const struct vblk_inflight *ifl = opaque;
	uint64_t ca = ifl->desc[*(const uint16_t *)a].counter;
	uint64_t cb = ifl->desc[*(const uint16_t *)b].counter;

	return ca < cb ? 1 : ca > cb ? -1 : 0;
}

void tblk__vq_inflight_start(struct tblk_vq *vq)
{
	struct vblk_inflight *ifl = vq->ifl;
	uint16_t used_idx = __atomic_load_n(&vq->used->idx, __ATOMIC_ACQUIRE);
	unsigned int n = 0;

	g_free(vq->resubmit);
	vq->resubmit = NULL;
	vq->nr_resubmit = 0;
	vq->ifl_counter = 0;
	if (!ifl)
		return;
	if (ifl->version == 0 || ifl->desc_num != vq->num) {
		/* A fresh region (or one for another queue size): nothing to resume. */
		memset(ifl, 0, tblk_vblk_inflight_size(vq->num));
		ifl->version = 1;
		ifl->desc_num = (uint16_t)vq->num;
		ifl->used_idx = used_idx;
		return;
	}
	if (ifl->used_idx != used_idx) {
		/* The last batch reached the used ring but was not cleared here. */
		uint16_t h = ifl->last_batch_head;
		unsigned int batch = (uint16_t)(used_idx - ifl->used_idx);

		for (unsigned int i = 0; i < batch && i < vq->num && h < vq->num; i++) {
			ifl->desc[h].inflight = 0;
			h = ifl->desc[h].next;
		}
		ifl->used_idx = used_idx;
	}
	vq->resubmit = g_new(uint16_t, vq->num);
	for (unsigned int i = 0; i < vq->num; i++) {
		if (ifl->desc[i].inflight != 1)
			continue;
		vq->resubmit[n++] = (uint16_t)i;
		vq->ifl_counter = TBLK_MAX(vq->ifl_counter, ifl->desc[i].counter);
	}
	g_qsort_with_data(vq->resubmit, (gint)n, sizeof(uint16_t), counter_desc, ifl);
	vq->nr_resubmit = n;
	/* What is in flight was taken from the avail ring after the used entries. */
	vq->last_avail = (uint16_t)(used_idx + n);
}
