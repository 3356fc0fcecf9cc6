/* SPDX-License-Identifier: MIT */
/*
 * fuzz-vhost-user.c - fuzz target for the vhost-user back-end: an input is a front-end's
 * sequence of messages (each: a byte saying which fds go with it, a header, a payload),
 * sent over a socketpair to a server on a null-aio disk, with a memfd of guest memory whose
 * bytes also come from the input and eventfds that are kicked after every message. The
 * invariant is the back-end's: nothing a front-end sends crashes it, leaks, or makes it
 * touch memory it did not map (ASan/UBSan watch).
 *
 * Built normally it is a TAP test running seeded inputs (a valid setup sequence and its
 * mutations). With libFuzzer (from a configured build directory):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -DTBLK_LIBFUZZER -D_GNU_SOURCE -I. \
 *     -I.. -I../include $(pkg-config --cflags glib-2.0) ../t/fuzz-vhost-user.c libtblk.a \
 *     $(pkg-config --libs glib-2.0) -laio -luring -lzstd -lz -lm -o fuzz-vhost-user
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "virtio-blk/virtio-blk.h"
#include "virtio-blk/vhost-user-proto.h"
#ifndef TBLK_LIBFUZZER
#include "t/tap.h"
#endif

#define MEMSZ	(64u << 10)

static struct tblk_loop *loop;
static struct tblk_blk *blk;

static void setup(void)
{
	GHashTable *opts;

	if (loop)
		return;
	loop = tblk_loop_new(NULL);
	opts = tblk_opts_new();
	tblk_opts_parse(opts, "driver=raw,file.driver=null-aio,file.size=1M", NULL, NULL);
	if (tblk_blk_open(&blk, NULL, opts, TBLK_OPEN_RDWR, loop, NULL) < 0)
		abort();
	g_hash_table_destroy(opts);
}

static void send_msg(int sock, const uint8_t *msg, size_t len, const int *fds, int nfds)
{
	union {
		struct cmsghdr align;
		uint8_t b[CMSG_SPACE(sizeof(int) * 8)];
	} ctl;
	struct iovec iov = { (void *)msg, len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (nfds) {
		struct cmsghdr *cm;

		mh.msg_control = ctl.b;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
	}
	if (sendmsg(sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
		/* The back-end hung up or the buffer is full: the next messages see it. */
	}
}

static void pump(int sock)
{
	uint8_t junk[4096];

	for (int i = 0; i < 64 && tblk_loop_iterate(loop, false); i++)
		;
	while (recv(sock, junk, sizeof(junk), MSG_DONTWAIT) > 0)
		;
}

static void run(const uint8_t *data, size_t size)
{
	struct tblk_vu_opts o = { .blk = { .num_queues = 2, .logical_block_size = 512,
					   .writable = true }, .path = NULL };
	struct tblk_vu_server *srv;
	int sv[2], memfd, efd[4];
	uint8_t *mem;

	setup();
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		abort();
	memfd = memfd_create("fuzz", MFD_CLOEXEC);
	if (ftruncate(memfd, MEMSZ) < 0)
		abort();
	mem = mmap(NULL, MEMSZ, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	for (size_t i = 0; size && i < MEMSZ; i++)
		mem[i] = data[i % size];
	for (int i = 0; i < 4; i++)
		efd[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	o.listen_fd = sv[1];
	if (tblk_vu_server_start(&srv, blk, &o, NULL) < 0)
		abort();
	while (size >= 1 + VHOST_USER_HDR_SIZE) {
		uint8_t fdsel = data[0], msg[VHOST_USER_HDR_SIZE + 512];
		struct vhost_user_hdr h;
		int fds[4], nfds = 0;
		size_t plen;

		memcpy(&h, data + 1, sizeof(h));
		data += 1 + sizeof(h);
		size -= 1 + sizeof(h);
		h.request %= 48;
		plen = TBLK_MIN((size_t)(h.size % 512), size);
		if (!(fdsel & 0x80))
			h.size = (uint32_t)plen;	/* mostly consistent sizes */
		memcpy(msg, &h, sizeof(h));
		memcpy(msg + sizeof(h), data, plen);
		data += plen;
		size -= plen;
		for (int i = 0; i < (fdsel & 3); i++)
			fds[nfds++] = (fdsel & 4) ? memfd : efd[(fdsel >> 3 & 3)];
		send_msg(sv[0], msg, sizeof(h) + plen, fds, nfds);
		pump(sv[0]);
		for (int i = 0; i < 4; i++) {
			uint64_t one = 1;

			if (write(efd[i], &one, sizeof(one)) < 0)
				break;
		}
		pump(sv[0]);
	}
	close(sv[0]);
	for (int i = 0; i < 64 && tblk_loop_iterate(loop, false); i++)
		;
	tblk_vu_server_stop(srv);
	tblk_blk_drain(blk);
	tblk_vu_server_free(srv);
	while (tblk_loop_iterate(loop, false))
		;
	for (int i = 0; i < 4; i++)
		close(efd[i]);
	munmap(mem, MEMSZ);
	close(memfd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	run(data, size);
	return 0;
}

#ifndef TBLK_LIBFUZZER
static size_t put(uint8_t *buf, size_t off, uint8_t fdsel, uint32_t req, const void *p,
		  uint32_t len)
{
	struct vhost_user_hdr h = { req, VHOST_USER_VERSION, len };

	buf[off] = fdsel;
	memcpy(buf + off + 1, &h, sizeof(h));
	if (len)
		memcpy(buf + off + 1 + sizeof(h), p, len);
	return off + 1 + sizeof(h) + len;
}

/* A front-end's valid setup of queue 0 with rings at the start of the memfd. */
static size_t make_seed(uint8_t *buf)
{
	struct vhost_user_mem m = { .nregions = 1 };
	struct vhost_user_state st = { 0, 16 };
	struct vhost_user_addr a = { 0, 0, 0x100000, 0x100000 + 0x1000, 0x100000 + 0x400, 0 };
	uint64_t v = 1ull << 32 | 1ull << 30, zero = 0;
	size_t off = 0;

	m.r[0] = (struct vhost_user_region){ 0, MEMSZ, 0x100000, 0 };
	off = put(buf, off, 0, VHOST_USER_GET_FEATURES, NULL, 0);
	off = put(buf, off, 0, VHOST_USER_SET_PROTOCOL_FEATURES, &(uint64_t){ 0x1209 }, 8);
	off = put(buf, off, 0, VHOST_USER_SET_FEATURES, &v, 8);
	off = put(buf, off, 1 | 4, VHOST_USER_SET_MEM_TABLE, &m, 8 + 32);
	off = put(buf, off, 0, VHOST_USER_SET_VRING_NUM, &st, 8);
	off = put(buf, off, 0, VHOST_USER_SET_VRING_ADDR, &a, sizeof(a));
	off = put(buf, off, 1, VHOST_USER_SET_VRING_CALL, &zero, 8);
	off = put(buf, off, 1 | 8, VHOST_USER_SET_VRING_KICK, &zero, 8);
	off = put(buf, off, 0, VHOST_USER_SET_VRING_ENABLE, &(struct vhost_user_state){ 0, 1 }, 8);
	off = put(buf, off, 0, VHOST_USER_GET_VRING_BASE, &(struct vhost_user_state){ 0, 0 }, 8);
	off = put(buf, off, 0, VHOST_USER_GET_INFLIGHT_FD,
		  &(struct vhost_user_inflight){ 0, 0, 2, 16 }, 24);
	return off;
}

int main(void)
{
	uint64_t rng = tap_seed(0xf0f0);
	static uint8_t seed[4096], buf[4096];
	size_t n = make_seed(seed);
	const char *out = getenv("TBLK_FUZZ_SEED_OUT");
	int runs = 0;

	if (out) {	/* a starting corpus for libFuzzer */
		FILE *fp = fopen(out, "wb");

		if (fp) {
			fwrite(seed, 1, n, fp);
			fclose(fp);
		}
	}

	for (int i = 0; i < 400; i++) {
		memcpy(buf, seed, n);
		for (int m = i ? (int)(1 + tap_rand(&rng) % 6) : 0; m > 0; m--)
			buf[tap_rand(&rng) % n] ^= (uint8_t)(1u << (tap_rand(&rng) % 8));
		run(buf, n);
		runs++;
	}
	for (int i = 0; i < 100; i++) {
		size_t len = tap_rand(&rng) % sizeof(buf);

		for (size_t j = 0; j < len; j++)
			buf[j] = (uint8_t)tap_rand(&rng);
		run(buf, len);
		runs++;
	}
	ok(1, "%d message sequences (a valid setup, its mutations, random bytes): no crash",
	   runs);
	tblk_blk_close(blk);
	tblk_loop_free(loop);
	return tap_done();
}
#endif
