/* SPDX-License-Identifier: MIT */
/*
 * virtio-blk-driver.h - a minimal virtio-blk driver for the tests: lays out split rings in
 * a piece of "guest memory", builds chains (split buffers, indirect tables, hostile shapes),
 * publishes them and collects used entries. Shared by t/virtio-blk.c (device driven
 * directly) and t/vhost-user.c (device behind the vhost-user socket).
 *
 * Threading: one driver is used by one thread.
 */
#ifndef TBLK_T_VIRTIO_BLK_DRIVER_H
#define TBLK_T_VIRTIO_BLK_DRIVER_H

#include <string.h>

#include "virtio-blk/virtio-blk.h"

struct drv {
	uint8_t *mem;		/* our address of guest address gpa */
	uint64_t gpa;
	uint64_t size;
	unsigned int num;
	uint64_t desc_gpa, avail_gpa, used_gpa, heap_gpa;
	struct vring_desc *desc;
	struct vring_avail *avail;
	struct vring_used *used;
	uint16_t avail_idx, last_used;
	unsigned int next_desc;
	uint64_t heap_off;
};

static inline void *g2h(struct drv *d, uint64_t gpa)
{
	return d->mem + (gpa - d->gpa);
}

/* Lays out rings of @num entries at the start of [gpa, gpa + size) mapped at @mem. */
static inline void drv_init(struct drv *d, uint8_t *mem, uint64_t gpa, uint64_t size,
			    unsigned int num)
{
	memset(d, 0, sizeof(*d));
	d->mem = mem;
	d->gpa = gpa;
	d->size = size;
	d->num = num;
	d->desc_gpa = gpa;
	d->avail_gpa = gpa + 16 * num;
	d->used_gpa = (d->avail_gpa + 6 + 2 * num + 4095) & ~4095ull;
	d->heap_gpa = (d->used_gpa + 6 + 8 * num + 4095) & ~4095ull;
	memset(mem, 0, d->heap_gpa - gpa);
	d->desc = g2h(d, d->desc_gpa);
	d->avail = g2h(d, d->avail_gpa);
	d->used = g2h(d, d->used_gpa);
}

/* Buffer space for the next batch of requests (reset with drv_reset_heap()). */
static inline uint64_t drv_alloc(struct drv *d, uint64_t len)
{
	uint64_t g = d->heap_gpa + d->heap_off;

	d->heap_off = (d->heap_off + len + 63) & ~63ull;
	if (d->heap_gpa + d->heap_off > d->gpa + d->size)
		abort();
	return g;
}

static inline void drv_reset_heap(struct drv *d)
{
	d->heap_off = 0;
	d->next_desc = 0;
}

struct seg {
	uint64_t gpa;
	uint32_t len;
	bool write;
};

/*
 * Makes a chain of @n segments (in descriptors of the ring, or in an indirect table in the
 * heap) and puts its head in the avail ring, unpublished. Returns the head.
 */
static inline uint16_t drv_add(struct drv *d, const struct seg *s, int n, bool indirect)
{
	struct vring_desc *t;
	uint16_t head = (uint16_t)(d->next_desc % d->num);
	unsigned int base = 0;

	if (indirect) {
		uint64_t tg = drv_alloc(d, 16 * (uint64_t)n);

		t = g2h(d, tg);
		d->desc[head] = (struct vring_desc){ tg, 16u * (uint32_t)n,
						     VRING_DESC_F_INDIRECT, 0 };
		d->next_desc++;
	} else {
		t = d->desc;
		base = head;
		d->next_desc += (unsigned int)n;
	}
	for (int i = 0; i < n; i++) {
		unsigned int at = (base + (unsigned int)i) % (indirect ? (unsigned int)n : d->num);

		t[at].addr = s[i].gpa;
		t[at].len = s[i].len;
		t[at].flags = (uint16_t)((s[i].write ? VRING_DESC_F_WRITE : 0) |
					 (i + 1 < n ? VRING_DESC_F_NEXT : 0));
		t[at].next = (uint16_t)((at + 1) % (indirect ? (unsigned int)n : d->num));
	}
	d->avail->ring[d->avail_idx % d->num] = head;
	d->avail_idx++;
	return head;
}

/* Puts a raw head index in the avail ring (hostile tests). */
static inline void drv_add_head(struct drv *d, uint16_t head)
{
	d->avail->ring[d->avail_idx % d->num] = head;
	d->avail_idx++;
}

static inline void drv_publish(struct drv *d)
{
	__atomic_store_n(&d->avail->idx, d->avail_idx, __ATOMIC_RELEASE);
}

static inline uint16_t drv_used_idx(struct drv *d)
{
	return __atomic_load_n(&d->used->idx, __ATOMIC_ACQUIRE);
}

/* Takes the next used entry; false if none. */
static inline bool drv_get_used(struct drv *d, uint32_t *id, uint32_t *len)
{
	struct vring_used_elem *e;

	if (drv_used_idx(d) == d->last_used)
		return false;
	e = &d->used->ring[d->last_used % d->num];
	*id = e->id;
	*len = e->len;
	d->last_used++;
	return true;
}

static inline uint16_t *drv_used_event(struct drv *d)
{
	return &d->avail->ring[d->num];
}

/* A request: header, data split into @nsplit descriptors, status. Returns the head. */
struct vreq {
	uint64_t hdr, data, status;
	uint32_t len;
	uint16_t head;
};

static inline void drv_req(struct drv *d, struct vreq *r, uint32_t type, uint64_t sector,
			   uint32_t len, int nsplit, bool indirect)
{
	struct seg s[40];
	struct virtio_blk_outhdr *h;
	bool dev_writes = type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID;
	int n = 0;

	r->hdr = drv_alloc(d, 16);
	r->data = len ? drv_alloc(d, len) : 0;
	r->status = drv_alloc(d, 1);
	r->len = len;
	h = g2h(d, r->hdr);
	h->type = type;
	h->ioprio = 0;
	h->sector = sector;
	*(uint8_t *)g2h(d, r->status) = 0xee;
	s[n++] = (struct seg){ r->hdr, 16, false };
	for (int i = 0; len && i < nsplit; i++) {
		uint32_t a = len / (uint32_t)nsplit * (uint32_t)i;
		uint32_t b = i + 1 == nsplit ? len : len / (uint32_t)nsplit * (uint32_t)(i + 1);

		s[n++] = (struct seg){ r->data + a, b - a, dev_writes };
	}
	s[n++] = (struct seg){ r->status, 1, true };
	r->head = drv_add(d, s, n, indirect);
}

static inline uint8_t drv_status(struct drv *d, const struct vreq *r)
{
	return __atomic_load_n((uint8_t *)g2h(d, r->status), __ATOMIC_RELAXED);
}

#endif /* TBLK_T_VIRTIO_BLK_DRIVER_H */
