/* SPDX-License-Identifier: MIT */
/*
 * virtio-blk.c - the virtio-blk device model driven directly: a fake guest memory region
 * with hand-built split rings. Every request type against a shadow of the disk (split
 * buffers, indirect tables, several queues), config space and features, notification
 * suppression with and without EVENT_IDX, and hostile chains (addresses outside guest
 * memory, loops, indexes out of range, nested indirect tables, bad header sizes, random
 * descriptor garbage) that must end in IOERR/UNSUPP or a broken queue, never a crash.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "virtio-blk/virtio-blk.h"
#include "t/tap.h"
#include "t/virtio-blk-driver.h"

#define DISK		(4u << 20)
#define GPA		0x100000ull
#define UVA_DELTA	0x7f0000000000ull
#define MEM		(8u << 20)
#define QSIZE		64

static char path[256];
static struct tblk_loop *loop;
static uint8_t *guest;
static uint8_t shadow[DISK];
static uint8_t known[DISK / 512];	/* 0: discarded, content unspecified */
static unsigned int nr_notify, nr_broken;

static void on_notify(void *opaque, unsigned int q)
{
	nr_notify++;
}

static void on_broken(void *opaque, unsigned int q)
{
	nr_broken++;
}

struct env {
	struct tblk_blk *blk;
	struct tblk_vblk *dev;
	struct drv d[2];
};

static struct tblk_blk *open_blk(bool rw)
{
	GHashTable *opts = tblk_opts_new();
	struct tblk_blk *blk = NULL;
	GError *err = NULL;
	char spec[400];

	snprintf(spec, sizeof(spec), "driver=raw,file.filename=%s", path);
	tblk_opts_parse(opts, spec, NULL, NULL);
	if (tblk_blk_open(&blk, NULL, opts, rw ? TBLK_OPEN_RDWR : 0, loop, &err) < 0) {
		tap_diag("open: %s", err->message);
		tap_bail("cannot open the test image");
	}
	g_hash_table_destroy(opts);
	return blk;
}

/* A device with two queues on fresh rings; @features added to the base set. */
static void env_up(struct env *e, bool rw, uint64_t features)
{
	struct tblk_vblk_opts o = { .num_queues = 2, .logical_block_size = 512,
				    .writable = rw, .serial = "tblk-serial-0123456789" };
	struct tblk_vblk_callbacks cbs = { .notify = on_notify, .broken = on_broken };
	struct tblk_vmem *vmem = tblk__vmem_new();

	e->blk = open_blk(rw);
	if (tblk_vblk_new(&e->dev, e->blk, &o, NULL) < 0)
		tap_bail("tblk_vblk_new");
	tblk_vblk_set_callbacks(e->dev, &cbs);
	tblk__vmem_add(vmem, GPA, MEM, GPA + UVA_DELTA, guest, NULL);
	tblk_vblk_set_mem(e->dev, vmem);
	features &= tblk_vblk_get_features(e->dev);
	if (tblk_vblk_set_features(e->dev, features | (1ull << VIRTIO_F_VERSION_1)) < 0)
		tap_bail("set_features");
	for (unsigned int q = 0; q < 2; q++) {
		struct drv *d = &e->d[q];

		drv_init(d, guest + q * (MEM / 2), GPA + q * (MEM / 2), MEM / 2, QSIZE);
		tblk_vblk_vq_set_num(e->dev, q, QSIZE);
		tblk_vblk_vq_set_addr(e->dev, q, d->desc_gpa + UVA_DELTA, d->avail_gpa + UVA_DELTA,
				      d->used_gpa + UVA_DELTA);
		tblk_vblk_vq_set_base(e->dev, q, 0);
		if (tblk_vblk_vq_start(e->dev, q) < 0)
			tap_bail("vq_start");
		tblk_vblk_vq_enable(e->dev, q, true);
	}
	nr_notify = 0;
	nr_broken = 0;
}

static void env_down(struct env *e)
{
	tblk_vblk_detach(e->dev);
	tblk_vblk_unref(e->dev);
	tblk_blk_close(e->blk);
	while (tblk_loop_iterate(loop, false))
		;
}

/* Kicks queue @q and runs the loop until @n used entries came back (or nothing moves). */
static int run_until(struct env *e, unsigned int q, unsigned int n)
{
	struct drv *d = &e->d[q];
	int spins = 0;

	drv_publish(d);
	tblk_vblk_vq_kick(e->dev, q);
	while ((uint16_t)(drv_used_idx(d) - d->last_used) < n && spins < 100000) {
		if (tblk_vblk_vq_is_broken(e->dev, q))
			return -1;
		tblk_loop_iterate(loop, true);
		spins++;
	}
	return (uint16_t)(drv_used_idx(d) - d->last_used) >= n ? 0 : -1;
}

static void collect(struct env *e, unsigned int q, unsigned int n)
{
	uint32_t id, len;

	for (unsigned int i = 0; i < n; i++)
		drv_get_used(&e->d[q], &id, &len);
	drv_reset_heap(&e->d[q]);
}

/* One request, waited for; returns its status (or -1 if it never completed). */
static int one(struct env *e, unsigned int q, uint32_t type, uint64_t sector, uint32_t len,
	       int nsplit, bool indirect, struct vreq *r)
{
	struct drv *d = &e->d[q];
	int st;

	drv_req(d, r, type, sector, len, nsplit, indirect);
	if (run_until(e, q, 1) < 0)
		return -1;
	st = drv_status(d, r);
	return st;
}

static void test_config(void)
{
	struct env e;
	struct virtio_blk_config c;
	uint64_t f;

	env_up(&e, true, ~0ull);
	f = tblk_vblk_get_features(e.dev);
	is_int(tblk_vblk_get_config(e.dev, 0, &c, sizeof(c)), 0, "config space reads");
	is_int(c.capacity, DISK / 512, "capacity in sectors");
	is_int(c.blk_size, 512, "blk_size");
	is_int(c.num_queues, 2, "num_queues");
	is_int(c.seg_max, TBLK_VBLK_SEG_MAX, "seg_max");
	is_int(c.max_discard_seg, 1, "max_discard_seg");
	is_int(c.write_zeroes_may_unmap, 1, "write_zeroes_may_unmap");
	ok((f & (1ull << VIRTIO_BLK_F_DISCARD)) && (f & (1ull << VIRTIO_BLK_F_WRITE_ZEROES)) &&
	   !(f & (1ull << VIRTIO_BLK_F_RO)) && (f & (1ull << VIRTIO_RING_F_EVENT_IDX)) &&
	   (f & (1ull << VIRTIO_RING_F_INDIRECT_DESC)) && (f & (1ull << VIRTIO_BLK_F_MQ)),
	   "writable device offers discard, write zeroes, indirect, event idx, MQ");
	ok(tblk_vblk_get_config(e.dev, 250, &c, sizeof(c)) < 0, "config read past the end refused");
	ok(tblk_vblk_set_config(e.dev, 0, &c, 8) < 0, "capacity is not writable");
	ok(tblk_vblk_set_features(e.dev, 1ull << 40) < 0, "a feature not offered is refused");
	env_down(&e);
}

static void shadow_check(struct env *e, const char *what)
{
	static uint8_t buf[DISK];
	int bad = -1;

	if (tblk_blk_pread(e->blk, 0, buf, DISK, 0) < 0)
		bad = -2;
	for (uint32_t s = 0; bad == -1 && s < DISK / 512; s++)
		if (known[s] && memcmp(buf + s * 512, shadow + s * 512, 512))
			bad = (int)s;
	is_int(bad, -1, "%s: image matches the shadow (-2: read error, else first bad sector)",
	       what);
}

static void test_requests(uint64_t seed)
{
	struct env e;
	struct vreq r;
	int fails = 0, rounds = 300;

	env_up(&e, true, ~0ull);
	memset(known, 1, sizeof(known));
	for (int i = 0; i < rounds; i++) {
		unsigned int q = (unsigned int)(tap_rand(&seed) % 2);
		unsigned int kind = (unsigned int)(tap_rand(&seed) % 10);
		uint32_t secs = (uint32_t)(tap_rand(&seed) % 64) + 1;
		uint64_t sector = tap_rand(&seed) % (DISK / 512 - secs);
		int nsplit = (int)(tap_rand(&seed) % 6) + 1;
		bool ind = tap_rand(&seed) % 2;
		struct drv *d = &e.d[q];
		int st;

		if (kind < 4) {		/* write a pattern */
			drv_req(d, &r, VIRTIO_BLK_T_OUT, sector, secs * 512, nsplit, ind);
			for (uint32_t b = 0; b < secs * 512; b++)
				((uint8_t *)g2h(d, r.data))[b] = (uint8_t)tap_rand(&seed);
			memcpy(shadow + sector * 512, g2h(d, r.data), secs * 512);
			memset(known + sector, 1, secs);
			st = run_until(&e, q, 1) < 0 ? -1 : drv_status(d, &r);
		} else if (kind < 7) {	/* read and compare */
			st = one(&e, q, VIRTIO_BLK_T_IN, sector, secs * 512, nsplit, ind, &r);
			for (uint32_t s = 0; st == 0 && s < secs; s++)
				if (known[sector + s] && memcmp(g2h(d, r.data) + s * 512,
								shadow + (sector + s) * 512, 512))
					st = 99;
		} else if (kind < 9) {	/* write zeroes (maybe unmap) or discard */
			struct virtio_blk_discard_write_zeroes *seg;
			bool wz = kind == 7;

			drv_req(d, &r, wz ? VIRTIO_BLK_T_WRITE_ZEROES : VIRTIO_BLK_T_DISCARD, 0,
				16, 1, ind);
			seg = g2h(d, r.data);
			seg->sector = sector;
			seg->num_sectors = secs;
			seg->flags = wz && (tap_rand(&seed) & 1) ? VIRTIO_BLK_WZ_F_UNMAP : 0;
			memset(shadow + sector * 512, 0, secs * 512);
			memset(known + sector, wz, secs);
			st = run_until(&e, q, 1) < 0 ? -1 : drv_status(d, &r);
		} else {
			st = one(&e, q, VIRTIO_BLK_T_FLUSH, 0, 0, 1, ind, &r);
		}
		if (st != VIRTIO_BLK_S_OK) {
			if (fails++ < 5)
				tap_diag("round %d kind %u: status %d", i, kind, st);
		}
		collect(&e, q, 1);
	}
	is_int(fails, 0, "%d random reads, writes, zeroes, discards, flushes over two queues",
	       rounds);
	shadow_check(&e, "after the random requests");

	/* GET_ID: the serial, truncated to 20 bytes. */
	is_int(one(&e, 0, VIRTIO_BLK_T_GET_ID, 0, 20, 2, false, &r), VIRTIO_BLK_S_OK, "GET_ID ok");
	ok(!memcmp(g2h(&e.d[0], r.data), "tblk-serial-01234567", 20), "GET_ID returns the serial");
	collect(&e, 0, 1);
	is_int(one(&e, 0, 42, 0, 512, 1, false, &r), VIRTIO_BLK_S_UNSUPP, "unknown type: UNSUPP");
	collect(&e, 0, 1);
	/* Several requests in one kick complete in one batch. */
	for (int i = 0; i < 16; i++)
		drv_req(&e.d[1], &r, VIRTIO_BLK_T_IN, (uint64_t)i * 8, 4096, 2, i & 1);
	nr_notify = 0;
	*drv_used_event(&e.d[1]) = e.d[1].last_used;
	is_int(run_until(&e, 1, 16), 0, "16 requests in one kick complete");
	ok(nr_notify >= 1 && nr_notify < 16, "completions batched (%u notifications)", nr_notify);
	collect(&e, 1, 16);
	env_down(&e);
}

static void test_event_idx(void)
{
	struct env e;
	struct vreq r;

	env_up(&e, true, ~0ull);
	/* used_event far ahead: no notification wanted after the first. */
	one(&e, 0, VIRTIO_BLK_T_FLUSH, 0, 0, 1, false, &r);
	collect(&e, 0, 1);
	nr_notify = 0;
	*drv_used_event(&e.d[0]) = 100;
	one(&e, 0, VIRTIO_BLK_T_FLUSH, 0, 0, 1, false, &r);
	collect(&e, 0, 1);
	is_int(nr_notify, 0, "EVENT_IDX: no notification before used_event");
	*drv_used_event(&e.d[0]) = e.d[0].last_used;
	one(&e, 0, VIRTIO_BLK_T_FLUSH, 0, 0, 1, false, &r);
	collect(&e, 0, 1);
	is_int(nr_notify, 1, "EVENT_IDX: a notification when used_event is reached");
	is_int(*(uint16_t *)&e.d[0].used->ring[QSIZE], e.d[0].avail_idx,
	       "avail_event asks for the next kick");
	env_down(&e);

	env_up(&e, true, ~(1ull << VIRTIO_RING_F_EVENT_IDX));
	e.d[0].avail->flags = VRING_AVAIL_F_NO_INTERRUPT;
	one(&e, 0, VIRTIO_BLK_T_FLUSH, 0, 0, 1, false, &r);
	collect(&e, 0, 1);
	is_int(nr_notify, 0, "no EVENT_IDX: NO_INTERRUPT suppresses the notification");
	e.d[0].avail->flags = 0;
	one(&e, 0, VIRTIO_BLK_T_FLUSH, 0, 0, 1, false, &r);
	collect(&e, 0, 1);
	is_int(nr_notify, 1, "no EVENT_IDX: notified otherwise");
	env_down(&e);
}

static void test_readonly(void)
{
	struct env e;
	struct vreq r;

	env_up(&e, false, ~0ull);
	ok(tblk_vblk_get_features(e.dev) & (1ull << VIRTIO_BLK_F_RO), "read-only: RO offered");
	ok(!(tblk_vblk_get_features(e.dev) & (1ull << VIRTIO_BLK_F_DISCARD)),
	   "read-only: no discard");
	memset(g2h(&e.d[0], e.d[0].heap_gpa), 0x5a, 8192);
	is_int(one(&e, 0, VIRTIO_BLK_T_OUT, 0, 512, 1, false, &r), VIRTIO_BLK_S_IOERR,
	       "read-only: write gives IOERR");
	collect(&e, 0, 1);
	is_int(one(&e, 0, VIRTIO_BLK_T_WRITE_ZEROES, 0, 16, 1, false, &r), VIRTIO_BLK_S_UNSUPP,
	       "read-only: write zeroes gives UNSUPP");
	collect(&e, 0, 1);
	is_int(one(&e, 0, VIRTIO_BLK_T_IN, 0, 512, 1, false, &r), VIRTIO_BLK_S_OK,
	       "read-only: read works");
	collect(&e, 0, 1);
	env_down(&e);
	e.blk = open_blk(false);
	shadow_check(&e, "read-only device wrote nothing");
	tblk_blk_close(e.blk);
}

/* Malformed requests: the queue keeps working, the request gets an error. */
static void test_bad_requests(void)
{
	struct env e;
	struct vreq r;
	struct drv *d;
	struct seg s[4];
	uint32_t id = 0, len = 99;

	env_up(&e, true, ~0ull);
	d = &e.d[0];
	is_int(one(&e, 0, VIRTIO_BLK_T_IN, DISK / 512, 512, 1, false, &r), VIRTIO_BLK_S_IOERR,
	       "read past the end: IOERR");
	collect(&e, 0, 1);
	is_int(one(&e, 0, VIRTIO_BLK_T_IN, UINT64_MAX / 256, 512, 1, false, &r),
	       VIRTIO_BLK_S_IOERR, "huge sector: IOERR");
	collect(&e, 0, 1);
	is_int(one(&e, 0, VIRTIO_BLK_T_OUT, 0, 100, 1, false, &r), VIRTIO_BLK_S_IOERR,
	       "write of 100 bytes: IOERR");
	collect(&e, 0, 1);

	/* Data outside guest memory. */
	drv_req(d, &r, VIRTIO_BLK_T_IN, 0, 512, 1, false);
	d->desc[(r.head + 1) % QSIZE].addr = GPA + MEM - 256;
	is_int(run_until(&e, 0, 1), 0, "buffer crossing the end of memory completes");
	is_int(drv_status(d, &r), VIRTIO_BLK_S_IOERR, "... with IOERR");
	collect(&e, 0, 1);
	drv_req(d, &r, VIRTIO_BLK_T_OUT, 0, 512, 1, true);
	((struct vring_desc *)g2h(d, d->desc[r.head].addr))[1].addr = 0xdead00000000ull;
	is_int(run_until(&e, 0, 1), 0, "indirect buffer at a wild address completes");
	is_int(drv_status(d, &r), VIRTIO_BLK_S_IOERR, "... with IOERR");
	collect(&e, 0, 1);

	/* Header too short, split header, header missing. */
	s[0] = (struct seg){ drv_alloc(d, 16), 8, false };
	s[1] = (struct seg){ drv_alloc(d, 1), 1, true };
	memset(g2h(d, s[0].gpa), 0, 16);
	drv_add(d, s, 2, false);
	run_until(&e, 0, 1);
	is_int(*(uint8_t *)g2h(d, s[1].gpa), VIRTIO_BLK_S_IOERR, "8-byte header: IOERR");
	collect(&e, 0, 1);
	{
		uint64_t h = drv_alloc(d, 16), st = drv_alloc(d, 1);
		struct virtio_blk_outhdr *hp = g2h(d, h);

		hp->type = VIRTIO_BLK_T_FLUSH;
		hp->ioprio = 0;
		hp->sector = 0;
		s[0] = (struct seg){ h, 5, false };
		s[1] = (struct seg){ h + 5, 11, false };
		s[2] = (struct seg){ st, 1, true };
		drv_add(d, s, 3, false);
		run_until(&e, 0, 1);
		is_int(*(uint8_t *)g2h(d, st), VIRTIO_BLK_S_OK,
		       "header split over two descriptors is accepted");
		collect(&e, 0, 1);
	}
	/* Readable after writable. */
	s[0] = (struct seg){ drv_alloc(d, 16), 16, false };
	memset(g2h(d, s[0].gpa), 0, 16);
	s[1] = (struct seg){ drv_alloc(d, 512), 512, true };
	s[2] = (struct seg){ drv_alloc(d, 512), 512, false };
	s[3] = (struct seg){ drv_alloc(d, 1), 1, true };
	drv_add(d, s, 4, false);
	run_until(&e, 0, 1);
	is_int(*(uint8_t *)g2h(d, s[3].gpa), VIRTIO_BLK_S_IOERR, "readable after writable: IOERR");
	collect(&e, 0, 1);
	/* No writable byte at all: returned with length 0, queue still fine. */
	s[0] = (struct seg){ drv_alloc(d, 16), 16, false };
	drv_add(d, s, 1, false);
	run_until(&e, 0, 1);
	drv_get_used(d, &id, &len);
	is_int(len, 0, "chain without a status byte: used length 0");
	drv_reset_heap(d);
	/* Status byte outside memory. */
	drv_req(d, &r, VIRTIO_BLK_T_FLUSH, 0, 0, 1, false);
	d->desc[(r.head + 1) % QSIZE].addr = GPA - 1;
	is_int(run_until(&e, 0, 1), 0, "status outside memory: returned");
	collect(&e, 0, 1);
	/* Discard with two segments / flags. */
	drv_req(d, &r, VIRTIO_BLK_T_DISCARD, 0, 32, 1, false);
	memset(g2h(d, r.data), 0, 32);
	((struct virtio_blk_discard_write_zeroes *)g2h(d, r.data))[0].num_sectors = 1;
	run_until(&e, 0, 1);
	is_int(drv_status(d, &r), VIRTIO_BLK_S_UNSUPP, "discard with two segments: UNSUPP");
	collect(&e, 0, 1);
	drv_req(d, &r, VIRTIO_BLK_T_DISCARD, 0, 16, 1, false);
	*(struct virtio_blk_discard_write_zeroes *)g2h(d, r.data) =
		(struct virtio_blk_discard_write_zeroes){ 0, 1, VIRTIO_BLK_WZ_F_UNMAP };
	run_until(&e, 0, 1);
	is_int(drv_status(d, &r), VIRTIO_BLK_S_UNSUPP, "discard with the unmap flag: UNSUPP");
	collect(&e, 0, 1);
	drv_req(d, &r, VIRTIO_BLK_T_WRITE_ZEROES, 0, 15, 1, false);
	run_until(&e, 0, 1);
	is_int(drv_status(d, &r), VIRTIO_BLK_S_IOERR, "write zeroes of 15 bytes: IOERR");
	collect(&e, 0, 1);
	ok(!tblk_vblk_vq_is_broken(e.dev, 0) && nr_broken == 0,
	   "malformed requests did not break the queue");
	env_down(&e);
}

typedef void breaker_fn(struct drv *d);

static void brk_head(struct drv *d)
{
	drv_add_head(d, QSIZE + 3);
}

static void brk_next(struct drv *d)
{
	struct vreq r;

	drv_req(d, &r, VIRTIO_BLK_T_FLUSH, 0, 0, 1, false);
	d->desc[r.head].next = 999;
}

static void brk_loop(struct drv *d)
{
	struct vreq r;

	drv_req(d, &r, VIRTIO_BLK_T_IN, 0, 512, 3, false);
	d->desc[(r.head + 3) % QSIZE].flags |= VRING_DESC_F_NEXT;
	d->desc[(r.head + 3) % QSIZE].next = r.head;
}

static void brk_ind_loop(struct drv *d)
{
	struct vreq r;
	struct vring_desc *t;

	drv_req(d, &r, VIRTIO_BLK_T_IN, 0, 512, 3, true);
	t = g2h(d, d->desc[r.head].addr);
	t[4].flags |= VRING_DESC_F_NEXT;
	t[4].next = 1;
}

static void brk_nested(struct drv *d)
{
	struct vreq r;
	struct vring_desc *t;

	drv_req(d, &r, VIRTIO_BLK_T_IN, 0, 512, 1, true);
	t = g2h(d, d->desc[r.head].addr);
	t[1].flags |= VRING_DESC_F_INDIRECT;
	t[1].len = 32;
}

static void brk_ind_next(struct drv *d)
{
	struct vreq r;

	drv_req(d, &r, VIRTIO_BLK_T_IN, 0, 512, 1, true);
	d->desc[r.head].flags |= VRING_DESC_F_NEXT;
}

static void brk_ind_len(struct drv *d)
{
	struct vreq r;

	drv_req(d, &r, VIRTIO_BLK_T_IN, 0, 512, 1, true);
	d->desc[r.head].len = 17;
}

static void brk_ind_addr(struct drv *d)
{
	struct vreq r;

	drv_req(d, &r, VIRTIO_BLK_T_IN, 0, 512, 1, true);
	d->desc[r.head].addr = GPA + MEM - 16;
}

static void brk_avail_jump(struct drv *d)
{
	struct vreq r;

	drv_req(d, &r, VIRTIO_BLK_T_FLUSH, 0, 0, 1, false);
	d->avail_idx += QSIZE + 1;
}

static void brk_too_long(struct drv *d)
{
	/* Every descriptor chained to the next, around the whole ring. */
	for (unsigned int i = 0; i < QSIZE; i++)
		d->desc[i] = (struct vring_desc){ d->heap_gpa, 16, VRING_DESC_F_NEXT,
						  (uint16_t)((i + 1) % QSIZE) };
	drv_add_head(d, 0);
}

static void test_broken(void)
{
	static const struct { breaker_fn *fn; const char *what; } cases[] = {
		{ brk_head, "head index beyond the queue" },
		{ brk_next, "next index beyond the queue" },
		{ brk_loop, "a descriptor loop" },
		{ brk_ind_loop, "a loop inside an indirect table" },
		{ brk_nested, "an indirect table inside an indirect table" },
		{ brk_ind_next, "an indirect descriptor with NEXT" },
		{ brk_ind_len, "an indirect table of 17 bytes" },
		{ brk_ind_addr, "an indirect table outside memory" },
		{ brk_avail_jump, "avail index more than a queue ahead" },
		{ brk_too_long, "a chain longer than the queue" },
	};

	for (size_t i = 0; i < TBLK_ARRAY_SIZE(cases); i++) {
		struct env e;
		struct tblk_vblk_stats st;

		env_up(&e, true, ~0ull);
		cases[i].fn(&e.d[0]);
		drv_publish(&e.d[0]);
		tblk_vblk_vq_kick(e.dev, 0);
		tblk_vblk_get_stats(e.dev, &st);
		ok(tblk_vblk_vq_is_broken(e.dev, 0) && nr_broken == 1 && st.requests == 0,
		   "%s: queue broken, nothing submitted", cases[i].what);
		env_down(&e);
	}
}

/* Random descriptor garbage: whatever happens, no crash and no access outside memory. */
static void test_garbage(uint64_t seed)
{
	unsigned int broken = 0, completed = 0;

	for (int round = 0; round < 200; round++) {
		struct env e;
		struct drv *d;
		struct tblk_vblk_stats st;
		unsigned int n = (unsigned int)(tap_rand(&seed) % 8) + 1;

		env_up(&e, true, ~0ull);
		d = &e.d[0];
		for (unsigned int i = 0; i < QSIZE; i++) {
			uint64_t x = tap_rand(&seed);

			d->desc[i].addr = (x & 1) ? d->heap_gpa + (tap_rand(&seed) % 65536) :
					  tap_rand(&seed);
			d->desc[i].len = (x & 2) ? (uint32_t)(tap_rand(&seed) % 4096) :
					 (uint32_t)tap_rand(&seed);
			d->desc[i].flags = (uint16_t)(tap_rand(&seed) & 7);
			d->desc[i].next = (uint16_t)((x & 4) ? tap_rand(&seed) % QSIZE :
						     tap_rand(&seed));
		}
		for (unsigned int i = 0; i < 65536 / 8; i++)
			((uint64_t *)g2h(d, d->heap_gpa))[i] = tap_rand(&seed) % 4 == 0 ?
				tap_rand(&seed) : tap_rand(&seed) % 16;
		for (unsigned int i = 0; i < n; i++)
			drv_add_head(d, (uint16_t)(tap_rand(&seed) % (QSIZE + 2)));
		drv_publish(d);
		tblk_vblk_vq_kick(e.dev, 0);
		for (;;) {
			tblk_vblk_get_stats(e.dev, &st);
			if (!st.inflight)
				break;
			tblk_loop_iterate(loop, true);
		}
		broken += tblk_vblk_vq_is_broken(e.dev, 0);
		completed += (unsigned int)st.requests;
		env_down(&e);
	}
	ok(1, "200 rounds of random descriptors: no crash (%u broken, %u requests)", broken,
	   completed);
}

int main(void)
{
	uint64_t seed = tap_seed(0x7b1c0de);
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	int fd;

	snprintf(path, sizeof(path), "%s/tblk-vblk-XXXXXX", tmp);
	fd = mkstemp(path);
	if (fd < 0 || ftruncate(fd, DISK) < 0)
		tap_bail("cannot create the test image");
	close(fd);
	loop = tblk_loop_new(NULL);
	guest = aligned_alloc(4096, MEM);
	memset(guest, 0, MEM);
	memset(known, 1, sizeof(known));

	test_config();
	test_requests(seed);
	test_event_idx();
	test_readonly();
	test_bad_requests();
	test_broken();
	test_garbage(seed);

	free(guest);
	tblk_loop_free(loop);
	unlink(path);
	return tap_done();
}
