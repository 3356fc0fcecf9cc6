/* SPDX-License-Identifier: MIT */
/*
 * vhost-user.c - the vhost-user-blk back-end driven over its socket by the front-end of
 * t/vhost-user-frontend.h (memfd guest memory passed with SCM_RIGHTS, two regions): the
 * handshake, the config space, I/O on two queues checked against the image file, a buffer
 * crossing two regions, GET_VRING_BASE answered only once the ring is quiet, malformed
 * messages (each drops the connection or is refused, never a crash), random garbage, a
 * second front-end refused while one is connected, and reconnects that find the disk.
 *
 * The back-end runs in this process on an iothread, so ThreadSanitizer and ASan see it.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "virtio-blk/virtio-blk.h"
#include "t/tap.h"
#include "t/vhost-user-frontend.h"

#define DISK	(8u << 20)
#define MEM	(16u << 20)

static char img[200], sock[256];
static struct tblk_vu_server *srv;
static struct tblk_blk *blk;
static struct tblk_iothread *iot;

struct on_loop {
	void (*fn)(void *);
	void *arg;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool done;
};

static void on_loop_cb(void *opaque)
{
	struct on_loop *o = opaque;

	o->fn(o->arg);
	pthread_mutex_lock(&o->mu);
	o->done = true;
	pthread_cond_signal(&o->cv);
	pthread_mutex_unlock(&o->mu);
}

static void run_on_iothread(void (*fn)(void *), void *arg)
{
	struct on_loop o = { fn, arg, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false };

	tblk_loop_call_soon(tblk_iothread_get_loop(iot), on_loop_cb, &o);
	pthread_mutex_lock(&o.mu);
	while (!o.done)
		pthread_cond_wait(&o.cv, &o.mu);
	pthread_mutex_unlock(&o.mu);
}

static int start_ret;

static void start_server(void *arg)
{
	struct tblk_vu_opts o = {
		.blk = { .num_queues = 2, .logical_block_size = 512, .writable = true,
			 .serial = "vu-test" },
		.path = sock,
	};
	GError *err = NULL;

	start_ret = tblk_vu_server_start(&srv, blk, &o, &err);
	if (start_ret < 0) {
		tap_diag("server: %s", err->message);
		g_error_free(err);
	}
}

static void stop_server(void *arg)
{
	tblk_vu_server_stop(srv);
}

static void free_server(void *arg)
{
	tblk_vu_server_free(srv);
}

static uint64_t want_features(void)
{
	return 1ull << VIRTIO_F_VERSION_1 | 1ull << VIRTIO_RING_F_EVENT_IDX |
	       1ull << VIRTIO_RING_F_INDIRECT_DESC | 1ull << VIRTIO_BLK_F_FLUSH |
	       1ull << VIRTIO_BLK_F_DISCARD | 1ull << VIRTIO_BLK_F_WRITE_ZEROES |
	       1ull << VIRTIO_BLK_F_MQ | 1ull << VIRTIO_BLK_F_BLK_SIZE;
}

static int file_read(uint64_t off, void *buf, size_t len)
{
	int fd = open(img, O_RDONLY);
	ssize_t n = pread(fd, buf, len, (off_t)off);

	close(fd);
	return n == (ssize_t)len ? 0 : -1;
}

/* One request on queue @q, waited for; the status or -1. */
static int fe_io(struct fe *f, unsigned int q, uint32_t type, uint64_t sector, uint32_t len,
		 int nsplit, bool ind, struct vreq *r, int fill)
{
	struct drv *d = &f->d[q];
	uint32_t id, ulen;

	drv_req(d, r, type, sector, len, nsplit, ind);
	if (fill >= 0 && len)
		memset(g2h(d, r->data), fill, len);
	fe_kick(f, q);
	if (fe_wait(f, q, 1) < 0)
		return -1;
	drv_get_used(d, &id, &ulen);
	return drv_status(d, r);
}

static void test_handshake(struct fe *f)
{
	struct vhost_user_hdr h;
	uint8_t buf[256];
	struct vhost_user_config *cfg = (void *)buf;
	struct virtio_blk_config bc;
	uint64_t v;

	f->sock = fe_connect(sock);
	ok(f->sock >= 0, "connects to the socket");
	is_int(fe_get_u64(f, VHOST_USER_GET_FEATURES, &v), 0, "GET_FEATURES answered");
	ok((v & want_features()) == want_features() &&
	   (v & (1ull << VHOST_USER_F_PROTOCOL_FEATURES)),
	   "features: virtio-blk set with PROTOCOL_FEATURES (0x%" PRIx64 ")", v);
	is_int(fe_get_u64(f, VHOST_USER_GET_PROTOCOL_FEATURES, &v), 0, "GET_PROTOCOL_FEATURES");
	ok((v & 0x8209) == 0x8209, "protocol features: MQ, REPLY_ACK, CONFIG, mem slots");
	is_int(fe_set_u64(f, VHOST_USER_SET_PROTOCOL_FEATURES, v & 0x209), 0, "set them");
	f->proto = v & 0x209;
	is_int(fe_get_u64(f, VHOST_USER_GET_QUEUE_NUM, &v), 0, "GET_QUEUE_NUM");
	is_int(v, 2, "two queues");
	is_int(fe_get_u64(f, VHOST_USER_GET_MAX_MEM_SLOTS, &v), 0, "GET_MAX_MEM_SLOTS");
	ok(v >= 8, "at least 8 memory slots (%" PRIu64 ")", v);
	*cfg = (struct vhost_user_config){ 0, sizeof(bc), 0 };
	fe_send(f->sock, VHOST_USER_GET_CONFIG, VHOST_USER_VERSION, buf, 12 + sizeof(bc), NULL, 0);
	is_int(fe_recv(f->sock, &h, buf, sizeof(buf)), 12 + (int)sizeof(bc) + 1,
	       "GET_CONFIG answers the size asked");
	memcpy(&bc, cfg->payload, sizeof(bc));
	is_int(bc.capacity, DISK / 512, "config: capacity");
	is_int(bc.num_queues, 2, "config: num_queues");
	is_int(fe_state(f, VHOST_USER_SET_VRING_NUM, 0, 100), 1,
	       "SET_VRING_NUM 100 (not a power of two) is refused through REPLY_ACK");
	is_int(fe_set_u64(f, VHOST_USER_SET_FEATURES, 1ull << 50), 1,
	       "SET_FEATURES with a bit not offered is refused");
	fe_close(f);
}

static void test_io(struct fe *f)
{
	static uint8_t buf[1 << 20];
	struct vreq r;
	int bad = 0;

	is_int(fe_setup(f, sock, 2, want_features()), 0, "full setup of two queues");
	for (int i = 0; i < 32; i++) {
		if (fe_io(f, (unsigned int)i & 1, VIRTIO_BLK_T_OUT, (uint64_t)i * 64, 32768,
			  1 + i % 5, i & 2, &r, 0x40 + i) != 0)
			bad++;
		drv_reset_heap(&f->d[i & 1]);
	}
	is_int(bad, 0, "32 writes over both queues");
	is_int(fe_io(f, 0, VIRTIO_BLK_T_FLUSH, 0, 0, 1, false, &r, -1), 0, "flush");
	drv_reset_heap(&f->d[0]);
	file_read(0, buf, 32 * 32768);
	for (int i = 0; i < 32; i++)
		for (int b = 0; b < 32768; b++)
			if (buf[i * 32768 + b] != 0x40 + i)
				bad++;
	is_int(bad, 0, "the image file holds what the guest wrote");
	for (int i = 0; i < 32; i++) {
		if (fe_io(f, (unsigned int)(i + 1) & 1, VIRTIO_BLK_T_IN, (uint64_t)i * 64, 32768,
			  1 + i % 3, i & 4, &r, 0) != 0 ||
		    memcmp(g2h(&f->d[(i + 1) & 1], r.data), buf + i * 32768, 32768))
			bad++;
		drv_reset_heap(&f->d[(i + 1) & 1]);
	}
	is_int(bad, 0, "32 reads return it");
	/* The device checks ranges against a size it caches: the edges still hold. */
	is_int(fe_io(f, 0, VIRTIO_BLK_T_IN, DISK / 512 - 8, 4096, 1, false, &r, 0),
	       VIRTIO_BLK_S_OK, "read of the last 4 KiB");
	drv_reset_heap(&f->d[0]);
	is_int(fe_io(f, 1, VIRTIO_BLK_T_OUT, DISK / 512 - 7, 4096, 2, false, &r, 0x11),
	       VIRTIO_BLK_S_IOERR, "write crossing the end: IOERR");
	drv_reset_heap(&f->d[1]);
	is_int(fe_io(f, 0, VIRTIO_BLK_T_IN, DISK / 512, 512, 1, true, &r, 0),
	       VIRTIO_BLK_S_IOERR, "read just past the end: IOERR");
	drv_reset_heap(&f->d[0]);
	{	/* a write whose buffer crosses from one memory region into the next */
		struct drv *d = &f->d[0];
		struct seg s[3];
		uint64_t h = drv_alloc(d, 16), st = drv_alloc(d, 1);
		struct virtio_blk_outhdr *hp = g2h(d, h);

		*hp = (struct virtio_blk_outhdr){ VIRTIO_BLK_T_OUT, 0, 4096 };
		memset(f->mem + MEM / 2 - 2048, 0x77, 4096);
		s[0] = (struct seg){ h, 16, false };
		s[1] = (struct seg){ MEM / 2 - 2048, 4096, false };
		s[2] = (struct seg){ st, 1, true };
		drv_add(d, s, 3, false);
		fe_kick(f, 0);
		fe_wait(f, 0, 1);
		drv_get_used(d, &(uint32_t){ 0 }, &(uint32_t){ 0 });
		drv_reset_heap(d);
		is_int(*(uint8_t *)g2h(d, st), 0, "a buffer across two regions is written");
		file_read(4096 * 512, buf, 4096);
		bad = 0;
		for (int b = 0; b < 4096; b++)
			bad += buf[b] != 0x77;
		is_int(bad, 0, "... and lands in the image");
	}
	{	/* write zeroes with unmap, then discard */
		struct virtio_blk_discard_write_zeroes *seg;

		drv_req(&f->d[1], &r, VIRTIO_BLK_T_WRITE_ZEROES, 0, 16, 1, false);
		seg = g2h(&f->d[1], r.data);
		*seg = (struct virtio_blk_discard_write_zeroes){ 64, 64, VIRTIO_BLK_WZ_F_UNMAP };
		fe_kick(f, 1);
		fe_wait(f, 1, 1);
		drv_get_used(&f->d[1], &(uint32_t){ 0 }, &(uint32_t){ 0 });
		is_int(drv_status(&f->d[1], &r), 0, "write zeroes");
		drv_reset_heap(&f->d[1]);
		file_read(64 * 512, buf, 32768);
		bad = 0;
		for (int b = 0; b < 32768; b++)
			bad += buf[b] != 0;
		is_int(bad, 0, "... zeroes in the image");
	}
}

/* GET_VRING_BASE: the answer comes once everything taken is in the used ring. */
static void test_vring_base(struct fe *f)
{
	struct vhost_user_state st = { 0, 0 };
	struct vhost_user_hdr h;
	struct vreq r;
	struct drv *d = &f->d[0];

	for (int i = 0; i < 16; i++)
		drv_req(d, &r, VIRTIO_BLK_T_IN, (uint64_t)i * 128, 65536, 4, i & 1);
	fe_kick(f, 0);
	fe_send(f->sock, VHOST_USER_GET_VRING_BASE, VHOST_USER_VERSION, &st, sizeof(st), NULL, 0);
	is_int(fe_recv(f->sock, &h, &st, sizeof(st)), 9, "GET_VRING_BASE answered");
	is_int(st.num, d->avail_idx, "it returns the next avail index");
	is_int(drv_used_idx(d), d->avail_idx, "every request it took was completed first");
	d->last_used = drv_used_idx(d);
	drv_reset_heap(d);
	fe_close(f);
}

static void expect_drop(const char *what, uint32_t req, uint32_t flags, const void *p,
			uint32_t size, const int *fds, unsigned int nfds)
{
	struct fe f = { 0 };
	uint64_t v;

	f.sock = fe_connect(sock);
	fe_get_u64(&f, VHOST_USER_GET_FEATURES, &v);
	fe_send(f.sock, req, flags, p, size, fds, nfds);
	ok(fe_closed(f.sock), "%s: connection dropped", what);
	close(f.sock);
}

static void test_malformed(struct fe *f)
{
	struct vhost_user_mem m = { .nregions = 9 };
	struct vhost_user_state st = { 7, 64 };
	uint8_t big[64] = { 0 };
	uint64_t v = 0;
	int efd = eventfd(0, EFD_CLOEXEC), fds[3] = { efd, efd, efd };
	struct vhost_user_hdr h = { VHOST_USER_GET_FEATURES, 1, 100000 };
	int s;

	expect_drop("unknown request 200", 200, 1, NULL, 0, NULL, 0);
	expect_drop("version 2", VHOST_USER_GET_FEATURES, 2, NULL, 0, NULL, 0);
	expect_drop("SET_MEM_TABLE of 9 regions", VHOST_USER_SET_MEM_TABLE, 1, &m, 8, NULL, 0);
	m.nregions = 1;
	m.r[0] = (struct vhost_user_region){ 0, 4096, 0, 0 };
	expect_drop("SET_MEM_TABLE with 3 fds for 1 region", VHOST_USER_SET_MEM_TABLE, 1, &m,
		    40, fds, 3);
	expect_drop("SET_MEM_TABLE shorter than its regions", VHOST_USER_SET_MEM_TABLE, 1, &m,
		    20, fds, 1);
	expect_drop("SET_VRING_NUM for queue 7", VHOST_USER_SET_VRING_NUM, 1, &st, 8, NULL, 0);
	expect_drop("SET_VRING_NUM of 5 bytes", VHOST_USER_SET_VRING_NUM, 1, &st, 5, NULL, 0);
	expect_drop("SET_VRING_KICK without its fd", VHOST_USER_SET_VRING_KICK, 1, &v, 8, NULL, 0);
	v = 1ull << 8;
	expect_drop("SET_VRING_CALL 'no fd' with an fd", VHOST_USER_SET_VRING_CALL, 1, &v, 8,
		    fds, 1);
	v = 1ull << 20;
	expect_drop("SET_VRING_ERR with stray bits", VHOST_USER_SET_VRING_ERR, 1, &v, 8, fds, 1);
	expect_drop("GET_CONFIG larger than its message", VHOST_USER_GET_CONFIG, 1,
		    &(struct vhost_user_config){ 0, 200, 0 }, 12, NULL, 0);
	expect_drop("SET_FEATURES of 64 bytes", VHOST_USER_SET_FEATURES, 1, big, 64, NULL, 0);
	expect_drop("ADD_MEM_REG without fd", VHOST_USER_ADD_MEM_REG, 1, big, 40, NULL, 0);
	/* A header announcing 100000 bytes. */
	s = fe_connect(sock);
	if (write(s, &h, sizeof(h)) < 0)
		tap_diag("write failed");
	ok(fe_closed(s), "payload of 100000 bytes: connection dropped");
	close(s);
	/* A region whose mmap fails (4 KiB region at an offset beyond an empty memfd). */
	{
		struct fe g = { 0 };
		int mfd = memfd_create("empty", MFD_CLOEXEC);

		g.sock = fe_connect(sock);
		g.proto = 0;
		fe_set_u64(&g, VHOST_USER_SET_PROTOCOL_FEATURES,
			   1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK);
		g.proto = 1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK;
		m.r[0] = (struct vhost_user_region){ 0, 4096, 0x10000, 4095 };
		is_int(fe_set(&g, VHOST_USER_SET_MEM_TABLE, &m, 40, &mfd, 1), 1,
		       "region beyond the end of its memfd refused (no SIGBUS later)");
		is_int(fe_set(&g, VHOST_USER_SET_MEM_TABLE, &m, 40, &efd, 1), 1,
		       "region on an eventfd refused");
		/* Rings outside the memory: starting the queue fails, no crash. */
		is_int(fe_state(&g, VHOST_USER_SET_VRING_NUM, 0, 64), 0, "SET_VRING_NUM");
		is_int(fe_set(&g, VHOST_USER_SET_VRING_ADDR,
			      &(struct vhost_user_addr){ 0, 0, 0x1000, 0x2000, 0x3000, 0 }, 40,
			      NULL, 0), 0, "SET_VRING_ADDR (not checked yet)");
		v = 0;
		is_int(fe_set(&g, VHOST_USER_SET_VRING_KICK, &v, 8, &efd, 1), 1,
		       "SET_VRING_KICK with unmapped rings refused");
		close(mfd);
		close(g.sock);
	}
	close(efd);
	(void)f;
}

static void test_garbage(uint64_t seed)
{
	for (int round = 0; round < 100; round++) {
		uint8_t buf[512];
		int s = fe_connect(sock);
		size_t n = tap_rand(&seed) % sizeof(buf);

		for (size_t i = 0; i < n; i++)
			buf[i] = (uint8_t)tap_rand(&seed);
		if (n >= 12) {	/* mostly plausible headers */
			uint32_t req = (uint32_t)(tap_rand(&seed) % 40), flags = 1;
			uint32_t size = (uint32_t)(n - 12);

			memcpy(buf, &req, 4);
			memcpy(buf + 4, &flags, 4);
			if (tap_rand(&seed) % 4)
				memcpy(buf + 8, &size, 4);
		}
		if (send(s, buf, n, MSG_NOSIGNAL) < 0)
			tap_diag("send failed");
		close(s);
	}
	ok(1, "100 connections of random messages");
}

static void test_reconnect(struct fe *f)
{
	struct fe g = { 0 };
	struct vreq r;
	uint64_t v;
	int s2;

	is_int(fe_setup(f, sock, 2, want_features()), 0, "reconnect: setup again");
	s2 = fe_connect(sock);
	fe_send(s2, VHOST_USER_GET_FEATURES, VHOST_USER_VERSION, NULL, 0, NULL, 0);
	ok(poll(&(struct pollfd){ s2, POLLIN, 0 }, 1, 200) == 0,
	   "a second front-end is not served while one is connected");
	/* Submit and disconnect without waiting. */
	for (int i = 0; i < 8; i++)
		drv_req(&f->d[0], &r, VIRTIO_BLK_T_IN, (uint64_t)i * 8, 4096, 1, false);
	fe_kick(f, 0);
	fe_close(f);
	{
		struct vhost_user_hdr h;

		ok(fe_recv(s2, &h, &v, 8) == 9 && h.request == VHOST_USER_GET_FEATURES,
		   "the waiting front-end is served once the first leaves");
		close(s2);
	}
	/* The next front-end (same guest memory) finds the disk. */
	g.mem = f->mem;
	g.memfd = f->memfd;
	g.memsize = f->memsize;
	is_int(fe_setup(&g, sock, 1, want_features()), 0, "after a disconnect mid-stream");
	is_int(fe_io(&g, 0, VIRTIO_BLK_T_IN, 5 * 64, 32768, 2, false, &r, 0), 0, "read");
	ok(((uint8_t *)g2h(&g.d[0], r.data))[100] == 0x45, "the data written before is there");
	is_int(fe_get_u64(&g, VHOST_USER_GET_QUEUE_NUM, &v), 0, "still talking");
	g.mem = NULL;
	fe_close(&g);
}

static struct vblk_ifl {
	uint64_t features;
	uint16_t version, desc_num, last_batch_head, used_idx;
	struct { uint8_t inflight, pad[5]; uint16_t next; uint64_t counter; } desc[FE_QSIZE];
} *ifl_region(int fd)
{
	void *p = mmap(NULL, 2 * 4096 + 64 * 2, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);

	return p == MAP_FAILED ? NULL : p;
}

/* A call eventfd left one short of overflowing and a kick pipe at EOF: no hang, no spin. */
static void test_hostile_fds(struct fe *f)
{
	int full = eventfd(0, EFD_CLOEXEC), p[2];
	uint64_t big = 0xfffffffffffffffeull, v = 0;
	struct drv *d = &f->d[0];
	struct vreq r;
	int i;

	is_int(fe_setup(f, sock, 2, want_features()), 0, "setup");
	if (write(full, &big, 8) != 8 || pipe(p) < 0)
		tap_bail("eventfd");
	is_int(fe_set(f, VHOST_USER_SET_VRING_CALL, &v, 8, &full, 1), 0,
	       "a call eventfd that cannot take one more signal");
	drv_req(d, &r, VIRTIO_BLK_T_FLUSH, 0, 0, 1, false);
	fe_kick(f, 0);
	for (i = 0; i < 1000 && drv_used_idx(d) == d->last_used; i++)
		usleep(5000);
	d->last_used = drv_used_idx(d);
	drv_reset_heap(d);
	ok(i < 1000, "the request still completes");
	close(p[1]);
	v = 1;
	is_int(fe_set(f, VHOST_USER_SET_VRING_KICK, &v, 8, &p[0], 1), 0,
	       "a kick fd that is a pipe at end of file");
	is_int(fe_get_u64(f, VHOST_USER_GET_QUEUE_NUM, &v), 0, "the back-end still answers");
	fe_close(f);
	close(full);
	close(p[0]);
}

/* A back-end "crashed" with three writes taken: the next one resubmits them, in order. */
/*
 * Returns once the back-end has dropped our last connection: it serves one front-end at a
 * time, so a new connection's first reply comes only after the old one is gone (and this
 * one, which sets up no queue, can take no request).
 */
static void wait_backend_released(void)
{
	struct fe b = { .sock = fe_connect(sock) };
	uint64_t v;

	if (b.sock < 0 || fe_get_u64(&b, VHOST_USER_GET_FEATURES, &v) < 0)
		tap_diag("barrier connection failed");
	if (b.sock >= 0)
		close(b.sock);
}

static void test_inflight_resume(struct fe *f)
{
	static uint8_t buf[4096];
	struct vblk_ifl *ifl;
	struct drv *d = &f->d[0];
	struct vreq r[4];
	unsigned int seen = 0;
	int bad = 0, st;

	f->want_inflight = true;
	f->ifl_fd = -1;
	f->keep_rings = false;
	is_int(fe_setup(f, sock, 2, want_features()), 0, "INFLIGHT_SHMFD: setup with an area");
	is_int(fe_io(f, 0, VIRTIO_BLK_T_FLUSH, 0, 0, 1, false, &r[0], -1), 0, "a flush");
	ifl = ifl_region(f->ifl_fd);
	ok(ifl && ifl->version == 1 && ifl->desc_num == FE_QSIZE &&
	   ifl->used_idx == drv_used_idx(d) && !ifl->desc[r[0].head].inflight,
	   "the area tracks the queue: version 1, used_idx follows, completed head cleared");
	fe_close(f);
	/* Else the old connection, still polling its rings, could take what we publish now. */
	wait_backend_released();
	/* What a back-end that died after taking three requests leaves behind. */
	drv_reset_heap(d);
	for (int i = 0; i < 4; i++) {
		drv_req(d, &r[i], VIRTIO_BLK_T_OUT, 200 + 8 * (uint64_t)i, 4096, 2, i & 1);
		memset(g2h(d, r[i].data), 0x61 + i, 4096);
	}
	drv_publish(d);
	for (int i = 0; i < 3; i++) {
		ifl->desc[r[2 - i].head].inflight = 1;
		ifl->desc[r[2 - i].head].counter = 100 + (uint64_t)(2 - i);
	}
	f->keep_rings = true;
	is_int(fe_setup(f, sock, 2, want_features()), 0, "reconnect with the same area");
	fe_kick(f, 0);
	is_int(fe_wait(f, 0, 4), 0, "the three requests in flight and the new one complete");
	for (int i = 0; i < 4; i++) {
		uint32_t id = 0, len;

		drv_get_used(d, &id, &len);
		seen |= 1u << (id == r[0].head ? 0 : id == r[1].head ? 1 : id == r[2].head ? 2 :
			       id == r[3].head ? 3 : 4);
		/* Taken again in the order first taken (their new counters say so). */
		if (i && ifl->desc[r[i].head].counter <= ifl->desc[r[i - 1].head].counter)
			bad++;
		st = drv_status(d, &r[i]);
		if (st != 0)
			bad++;
		if (file_read((200 + 8 * (uint64_t)i) * 512, buf, 4096) < 0 || buf[0] != 0x61 + i ||
		    buf[4095] != 0x61 + i)
			bad++;
	}
	is_int(seen, 0xf, "each of the four answered once");
	is_int(bad, 0, "resubmitted in the order taken, data in the image");
	ok(!ifl->desc[r[0].head].inflight && !ifl->desc[r[3].head].inflight &&
	   ifl->used_idx == drv_used_idx(d), "the area is clean again");
	drv_reset_heap(d);
	fe_close(f);
	munmap(ifl, 2 * 4096 + 128);
}

/* A front-end that goes away with requests in flight gets each answered exactly once. */
static void test_inflight_disconnect(struct fe *f)
{
	struct drv *d = &f->d[0];
	uint8_t seen[FE_QSIZE] = { 0 };
	uint16_t start = drv_used_idx(d);
	struct vreq r;
	uint16_t heads[32];
	int dup = 0, missing = 0;

	f->keep_rings = true;
	is_int(fe_setup(f, sock, 2, want_features()), 0, "setup");
	for (int i = 0; i < 32; i++) {
		drv_req(d, &r, VIRTIO_BLK_T_OUT, 512 + 64 * (uint64_t)i, 32768, 1, false);
		heads[i] = r.head;
	}
	fe_kick(f, 0);
	fe_close(f);
	is_int(fe_setup(f, sock, 2, want_features()), 0, "reconnect mid-stream");
	fe_kick(f, 0);
	is_int(fe_wait(f, 0, 32), 0, "all 32 requests come back");
	for (uint16_t i = start; i != drv_used_idx(d); i++) {
		uint32_t id = d->used->ring[i % FE_QSIZE].id;

		if (id < FE_QSIZE && seen[id]++)
			dup++;
	}
	for (int i = 0; i < 32; i++)
		missing += !seen[heads[i]];
	is_int(dup, 0, "no request answered twice");
	is_int(missing, 0, "no request lost");
	d->last_used = drv_used_idx(d);
	drv_reset_heap(d);
	fe_close(f);
	close(f->ifl_fd);
	f->want_inflight = false;
	f->keep_rings = false;
}

int main(void)
{
	uint64_t seed = tap_seed(0x5eed);
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	struct tblk_vblk_opts bad = { .num_queues = 0 };
	struct tblk_vu_opts bo = { .blk = bad, .path = "x" };
	GHashTable *opts = tblk_opts_new();
	struct fe f = { 0 };
	GError *err = NULL;
	char spec[300];
	int fd;

	snprintf(img, sizeof(img), "%s/tblk-vu-XXXXXX", tmp);
	fd = mkstemp(img);
	if (fd < 0 || ftruncate(fd, DISK) < 0)
		tap_bail("cannot create the image");
	close(fd);
	snprintf(sock, sizeof(sock), "%s.sock", img);
	iot = tblk_iothread_new("vu", NULL);
	snprintf(spec, sizeof(spec), "driver=raw,file.filename=%s", img);
	tblk_opts_parse(opts, spec, NULL, NULL);
	if (tblk_blk_open(&blk, NULL, opts, TBLK_OPEN_RDWR, tblk_iothread_get_loop(iot), &err) < 0)
		tap_bail("open");
	g_hash_table_destroy(opts);
	ok(tblk_vu_server_start(&srv, blk, &bo, &err) < 0 && err, "num-queues 0 refused");
	g_clear_error(&err);
	run_on_iothread(start_server, NULL);
	if (start_ret < 0)
		tap_bail("server");
	if (fe_mem_init(&f, MEM) < 0)
		tap_bail("memfd");

	test_handshake(&f);
	test_io(&f);
	test_vring_base(&f);
	test_malformed(&f);
	test_garbage(seed);
	test_reconnect(&f);
	test_hostile_fds(&f);
	test_inflight_resume(&f);
	test_inflight_disconnect(&f);

	ok(tblk_vu_server_nr_connections(srv) >= 120, "the server accepted every connection (%u)",
	   tblk_vu_server_nr_connections(srv));
	run_on_iothread(stop_server, NULL);
	ok(access(sock, F_OK) < 0, "the socket is removed at stop");
	tblk_blk_drain(blk);
	run_on_iothread(free_server, NULL);
	tblk_blk_close(blk);
	tblk_iothread_free(iot);
	munmap(f.mem, MEM);
	close(f.memfd);
	unlink(img);
	return tap_done();
}
