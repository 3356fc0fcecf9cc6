/* SPDX-License-Identifier: MIT */
/*
 * nbd-client-hostile.c - the nbd protocol driver against an in-process fake server (a thread
 * on a unix socket) that misbehaves on purpose: bad magic, unknown cookies, chunks too long
 * or outside their request, truncated streams, a server that hangs up mid-request, broken
 * handshakes. Each must give the caller a clean error (-EIO for a broken protocol, the
 * server's error for an error chunk), never a crash or a hang. Then many threads issue reads
 * and writes through one connection to a well-behaved fake server that answers in a shuffled
 * order, verified against a shadow copy.
 */
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <tblk/tblk.h>
#include "common/nbd-wire.h"
#include "threadpool/threadpool.h"
#include "t/tap.h"

#define DISK_SIZE	(1u << 20)

/* What the fake server does. */
enum hs {			/* handshake */
	HS_OK,
	HS_NOT_STRUCTURED,
	HS_BAD_MAGIC,
	HS_CLOSE_EARLY,
	HS_HUGE_OPTION_REPLY,
	HS_NO_GO,		/* ERR_UNSUP to OPT_GO: the client falls back to EXPORT_NAME */
	HS_OLDSTYLE,
	HS_UNKNOWN_EXPORT,
	HS_ENDLESS_INFO,	/* OPT_GO answered by info replies that never end */
	HS_BAD_BLOCK_SIZE,
};

enum tx {			/* how the first READ is answered */
	TX_GOOD,		/* a well-behaved memory server, replies shuffled */
	TX_BAD_MAGIC,
	TX_UNKNOWN_COOKIE,
	TX_OVERSIZED_CHUNK,
	TX_HUGE_CHUNK,
	TX_CHUNK_OUTSIDE,
	TX_TRUNCATED,
	TX_HANG_UP,
	TX_ERROR_CHUNK,		/* EPERM, then behaves */
	TX_SIMPLE_AFTER_STRUCTURED,
	TX_NOT_COVERED,
	TX_HOLE_AND_DATA,
	TX_UNKNOWN_CHUNK,
	TX_BS_BAD_CONTEXT,
	TX_BS_LONG_EXTENT,
	TX_RANDOM,		/* chunks with random type, flags, length and payload */
};

struct fake {
	char path[100];
	int lfd;
	pthread_t thr;
	enum hs hs;
	enum tx tx;
	uint8_t *disk;
	int nr_requests;	/* served */
	uint64_t seed;		/* TX_RANDOM */
};

static char dir[64];
/* The fake server sends in pieces of a few bytes to a few KiB: replies arrive cut anywhere. */
static bool trickle;

static int wr(int fd, const void *buf, size_t n)
{
	static __thread uint64_t rng = 7;
	const uint8_t *p = buf;

	while (n) {
		uint64_t x = tap_rand(&rng);
		size_t k = (size_t)(x & 1 ? 1 + x % 16 : 1 + x % 8192);
		ssize_t r;

		if (!trickle || k > n)
			k = n;
		r = send(fd, p, k, MSG_NOSIGNAL);
		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static int rd(int fd, void *buf, size_t n)
{
	uint8_t *p = buf;

	while (n) {
		ssize_t r = recv(fd, p, n, 0);

		if (r <= 0)
			return -1;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static void put32(uint8_t *p, uint32_t v)
{
	put16(p, (uint16_t)(v >> 16));
	put16(p + 2, (uint16_t)v);
}
static void put64(uint8_t *p, uint64_t v)
{
	put32(p, (uint32_t)(v >> 32));
	put32(p + 4, (uint32_t)v);
}
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) << 16 | get16(p + 2); }
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) << 32 | get32(p + 4); }

static int opt_reply(int fd, uint32_t opt, uint32_t type, const void *data, uint32_t len)
{
	uint8_t h[20];

	put64(h, TBLK_NBD_REP_MAGIC);
	put32(h + 8, opt);
	put32(h + 12, type);
	put32(h + 16, len);
	return wr(fd, h, 20) || (len && wr(fd, data, len)) ? -1 : 0;
}

#define TX_FLAGS (TBLK_NBD_FLAG_HAS_FLAGS | TBLK_NBD_FLAG_SEND_FLUSH | TBLK_NBD_FLAG_SEND_FUA | \
		  TBLK_NBD_FLAG_SEND_TRIM | TBLK_NBD_FLAG_SEND_WRITE_ZEROES)

/* Returns 0 when transmission starts, -1 if the scenario ends here. */
static int handshake(struct fake *f, int fd)
{
	uint8_t b[64];
	bool structured = false;

	put64(b, TBLK_NBD_MAGIC);
	if (f->hs == HS_BAD_MAGIC) {
		put64(b + 8, 0x1122334455667788ull);
		wr(fd, b, 16);
		return -1;
	}
	if (f->hs == HS_CLOSE_EARLY) {
		wr(fd, b, 8);
		return -1;
	}
	if (f->hs == HS_OLDSTYLE) {
		memset(b, 0, sizeof(b));
		put64(b, TBLK_NBD_MAGIC);
		put64(b + 8, TBLK_NBD_OLDSTYLE_MAGIC);
		put64(b + 16, DISK_SIZE);
		put32(b + 24, TX_FLAGS);
		if (wr(fd, b, 28))
			return -1;
		memset(b, 0, sizeof(b));
		return wr(fd, b, 124 - 64) || wr(fd, b, 64) ? -1 : 0;
	}
	put64(b + 8, TBLK_NBD_OPTS_MAGIC);
	put16(b + 16, TBLK_NBD_FLAG_FIXED_NEWSTYLE | TBLK_NBD_FLAG_NO_ZEROES);
	if (wr(fd, b, 18) || rd(fd, b, 4))
		return -1;
	for (;;) {
		uint32_t opt, len;
		uint8_t *data;

		if (rd(fd, b, 16))
			return -1;
		opt = get32(b + 8);
		len = get32(b + 12);
		if (len > 65536)
			return -1;
		data = malloc(len + 1);
		if (rd(fd, data, len)) {
			free(data);
			return -1;
		}
		free(data);
		if (f->hs == HS_HUGE_OPTION_REPLY) {
			uint8_t h[20];

			put64(h, TBLK_NBD_REP_MAGIC);
			put32(h + 8, opt);
			put32(h + 12, TBLK_NBD_REP_ACK);
			put32(h + 16, 0xffffffffu);
			wr(fd, h, 20);
			return -1;
		}
		switch (opt) {
		case TBLK_NBD_OPT_STRUCTURED_REPLY:
			if (f->hs == HS_NOT_STRUCTURED) {
				opt_reply(fd, opt, TBLK_NBD_REP_ERR_UNSUP, NULL, 0);
				break;
			}
			structured = true;
			opt_reply(fd, opt, TBLK_NBD_REP_ACK, NULL, 0);
			break;
		case TBLK_NBD_OPT_SET_META_CONTEXT:
			put32(b, 7);	/* our id for base:allocation */
			memcpy(b + 4, TBLK_NBD_META_BASE_ALLOCATION, 15);
			if (structured)
				opt_reply(fd, opt, TBLK_NBD_REP_META_CONTEXT, b, 19);
			opt_reply(fd, opt, TBLK_NBD_REP_ACK, NULL, 0);
			break;
		case TBLK_NBD_OPT_GO:
			if (f->hs == HS_NO_GO) {
				opt_reply(fd, opt, TBLK_NBD_REP_ERR_UNSUP, NULL, 0);
				break;
			}
			if (f->hs == HS_UNKNOWN_EXPORT) {
				opt_reply(fd, opt, TBLK_NBD_REP_ERR_UNKNOWN, "no such export", 14);
				return -1;
			}
			if (f->hs == HS_ENDLESS_INFO) {
				put16(b, TBLK_NBD_INFO_NAME);
				while (opt_reply(fd, opt, TBLK_NBD_REP_INFO, b, 2) == 0)
					;
				return -1;
			}
			if (f->hs == HS_BAD_BLOCK_SIZE) {
				put16(b, TBLK_NBD_INFO_BLOCK_SIZE);
				put32(b + 2, 3);	/* not a power of 2 */
				put32(b + 6, 4096);
				put32(b + 10, 1 << 20);
				opt_reply(fd, opt, TBLK_NBD_REP_INFO, b, 14);
			}
			put16(b, TBLK_NBD_INFO_EXPORT);
			put64(b + 2, DISK_SIZE);
			put16(b + 10, TX_FLAGS);
			opt_reply(fd, opt, TBLK_NBD_REP_INFO, b, 12);
			opt_reply(fd, opt, TBLK_NBD_REP_ACK, NULL, 0);
			return 0;
		case TBLK_NBD_OPT_EXPORT_NAME:
			put64(b, DISK_SIZE);
			put16(b + 8, TX_FLAGS);
			return wr(fd, b, 10);
		default:
			opt_reply(fd, opt, TBLK_NBD_REP_ERR_UNSUP, NULL, 0);
			break;
		}
	}
}

static int chunk(int fd, uint16_t flags, uint16_t type, uint64_t cookie, const void *p1,
		 uint32_t n1, const void *p2, uint32_t n2)
{
	uint8_t h[20];

	put32(h, TBLK_NBD_STRUCTURED_REPLY_MAGIC);
	put16(h + 4, flags);
	put16(h + 6, type);
	put64(h + 8, cookie);
	put32(h + 16, n1 + n2);
	return wr(fd, h, 20) || (n1 && wr(fd, p1, n1)) || (n2 && wr(fd, p2, n2)) ? -1 : 0;
}

static int simple(int fd, uint32_t err, uint64_t cookie, const void *data, uint32_t n)
{
	uint8_t h[16];

	put32(h, TBLK_NBD_SIMPLE_REPLY_MAGIC);
	put32(h + 4, err);
	put64(h + 8, cookie);
	return wr(fd, h, 16) || (n && wr(fd, data, n)) ? -1 : 0;
}

/* A request and its payload as the fake server keeps it until it answers. */
struct fake_req {
	uint16_t flags, type;
	uint64_t cookie, off;
	uint32_t len;
};

/* Answers one request the way a correct server does. */
static int answer(struct fake *f, int fd, const struct fake_req *r, bool structured)
{
	uint8_t off[8];

	if (r->off > DISK_SIZE || r->len > DISK_SIZE - r->off)
		return structured && r->type == TBLK_NBD_CMD_READ ?
		       chunk(fd, TBLK_NBD_REPLY_FLAG_DONE, TBLK_NBD_REPLY_TYPE_ERROR, r->cookie,
			     "\0\0\0\x16\0\0", 6, NULL, 0) :
		       simple(fd, TBLK_NBD_EINVAL, r->cookie, NULL, 0);
	switch (r->type) {
	case TBLK_NBD_CMD_READ:
		if (!structured)
			return simple(fd, 0, r->cookie, f->disk + r->off, r->len);
		put64(off, r->off);
		return chunk(fd, TBLK_NBD_REPLY_FLAG_DONE, TBLK_NBD_REPLY_TYPE_OFFSET_DATA,
			     r->cookie, off, 8, f->disk + r->off, r->len);
	case TBLK_NBD_CMD_TRIM:
	case TBLK_NBD_CMD_WRITE_ZEROES:
		memset(f->disk + r->off, 0, r->len);
		return simple(fd, 0, r->cookie, NULL, 0);
	case TBLK_NBD_CMD_BLOCK_STATUS: {
		uint8_t e[12];

		put32(e, 7);
		put32(e + 4, r->len);
		put32(e + 8, 0);
		return chunk(fd, TBLK_NBD_REPLY_FLAG_DONE, TBLK_NBD_REPLY_TYPE_BLOCK_STATUS,
			     r->cookie, e, 12, NULL, 0);
	}
	default:
		return simple(fd, 0, r->cookie, NULL, 0);
	}
}

/* A misbehaving answer to the first read. Returns -1 to hang up. */
static int misbehave(struct fake *f, int fd, const struct fake_req *r)
{
	uint8_t b[64];
	uint64_t c = r->cookie;

	put64(b, r->off);
	switch (f->tx) {
	case TX_BAD_MAGIC:
		put32(b, 0xdeadbeef);
		wr(fd, b, 20);
		return 0;
	case TX_UNKNOWN_COOKIE:
		return chunk(fd, TBLK_NBD_REPLY_FLAG_DONE, TBLK_NBD_REPLY_TYPE_OFFSET_DATA, c + 99,
			     b, 8, f->disk, r->len);
	case TX_OVERSIZED_CHUNK:
		return chunk(fd, TBLK_NBD_REPLY_FLAG_DONE, TBLK_NBD_REPLY_TYPE_OFFSET_DATA, c, b, 8,
			     f->disk, r->len + 512);
	case TX_HUGE_CHUNK:
		put32(b + 8, TBLK_NBD_STRUCTURED_REPLY_MAGIC);
		put16(b + 12, TBLK_NBD_REPLY_FLAG_DONE);
		put16(b + 14, TBLK_NBD_REPLY_TYPE_OFFSET_DATA);
		put64(b + 16, c);
		put32(b + 24, 0xfffffff0u);
		wr(fd, b + 8, 20);
		return 0;
	case TX_CHUNK_OUTSIDE:
		put64(b, r->off + r->len);	/* right after the request */
		return chunk(fd, TBLK_NBD_REPLY_FLAG_DONE, TBLK_NBD_REPLY_TYPE_OFFSET_DATA, c, b, 8,
			     f->disk, 512);
	case TX_TRUNCATED:
		put32(b + 8, TBLK_NBD_STRUCTURED_REPLY_MAGIC);
		put16(b + 12, TBLK_NBD_REPLY_FLAG_DONE);
		put16(b + 14, TBLK_NBD_REPLY_TYPE_OFFSET_DATA);
		put64(b + 16, c);
		put32(b + 24, 8 + r->len);
		wr(fd, b + 8, 20);
		wr(fd, b, 8);
		wr(fd, f->disk, r->len / 2);
		return -1;
	case TX_HANG_UP:
		return -1;
	case TX_ERROR_CHUNK:
		put32(b, TBLK_NBD_EPERM);
		put16(b + 4, 4);
		memcpy(b + 6, "nope", 4);
		return chunk(fd, TBLK_NBD_REPLY_FLAG_DONE, TBLK_NBD_REPLY_TYPE_ERROR, c, b, 10,
			     NULL, 0);
	case TX_SIMPLE_AFTER_STRUCTURED:
		return simple(fd, 0, c, f->disk, r->len);
	case TX_NOT_COVERED:
		return chunk(fd, TBLK_NBD_REPLY_FLAG_DONE, TBLK_NBD_REPLY_TYPE_OFFSET_DATA, c, b, 8,
			     f->disk, r->len / 2);
	case TX_HOLE_AND_DATA:
		/* second half as data first, then the first half as a hole */
		put64(b, r->off + r->len / 2);
		put64(b + 8, r->off);
		put32(b + 16, r->len / 2);
		return chunk(fd, 0, TBLK_NBD_REPLY_TYPE_OFFSET_DATA, c, b, 8,
			     f->disk + r->off + r->len / 2, r->len / 2) ||
		       chunk(fd, TBLK_NBD_REPLY_FLAG_DONE, TBLK_NBD_REPLY_TYPE_OFFSET_HOLE, c,
			     b + 8, 12, NULL, 0);
	case TX_UNKNOWN_CHUNK:
		return chunk(fd, TBLK_NBD_REPLY_FLAG_DONE, 77, c, b, 8, NULL, 0);
	case TX_RANDOM:
		/* a few chunks of the right cookie, then garbage or a hang-up */
		for (int i = 0; i < 4; i++) {
			static const uint16_t types[] = { 0, 1, 2, 5, 0x8001, 0x8002, 3, 0x8003 };
			uint8_t p[300];
			uint32_t len = (uint32_t)(tap_rand(&f->seed) % sizeof(p));
			uint64_t x = tap_rand(&f->seed);

			for (uint32_t j = 0; j < len; j++)
				p[j] = (uint8_t)tap_rand(&f->seed);
			if (x & 1)	/* often a plausible offset */
				put64(p, x & 2 ? r->off : r->off + (x >> 8) % (r->len + 1024));
			if (chunk(fd, (uint16_t)((x >> 4) & 1), types[(x >> 5) % 8], x & 8 ? c : c + 1,
				  p, len, NULL, 0))
				return -1;
		}
		return -1;
	default:
		return answer(f, fd, r, true);
	}
}

static int misbehave_bs(struct fake *f, int fd, const struct fake_req *r)
{
	uint8_t e[12];

	put32(e, f->tx == TX_BS_BAD_CONTEXT ? 8 : 7);
	put32(e + 4, f->tx == TX_BS_LONG_EXTENT ? 0xfffff000u : r->len);
	put32(e + 8, TBLK_NBD_STATE_HOLE | TBLK_NBD_STATE_ZERO);
	return chunk(fd, TBLK_NBD_REPLY_FLAG_DONE, TBLK_NBD_REPLY_TYPE_BLOCK_STATUS, r->cookie,
		     e, 12, NULL, 0);
}

/* Reads one request (and a write's payload into the disk). 1 on DISC or EOF. */
static int read_req(struct fake *f, int fd, struct fake_req *r)
{
	uint8_t h[28];

	if (rd(fd, h, 28) || get32(h) != TBLK_NBD_REQUEST_MAGIC)
		return 1;
	r->flags = get16(h + 4);
	r->type = get16(h + 6);
	r->cookie = get64(h + 8);
	r->off = get64(h + 16);
	r->len = get32(h + 24);
	if (r->type == TBLK_NBD_CMD_DISC)
		return 1;
	if (r->type == TBLK_NBD_CMD_WRITE) {
		uint8_t *tmp = malloc(r->len ? r->len : 1);
		int bad = rd(fd, tmp, r->len);

		if (!bad && r->off <= DISK_SIZE && r->len <= DISK_SIZE - r->off)
			memcpy(f->disk + r->off, tmp, r->len);
		free(tmp);
		if (bad)
			return 1;
	}
	return 0;
}

#define BATCH 8

static void serve(struct fake *f, int fd)
{
	bool structured = f->hs != HS_NOT_STRUCTURED && f->hs != HS_OLDSTYLE;
	struct fake_req q[BATCH];
	int nq = 0, misbehaved = 0;
	uint64_t seed = 42;

	for (;;) {
		struct pollfd p = { fd, POLLIN, 0 };
		bool more;

		if (read_req(f, fd, &q[nq]))
			break;
		f->nr_requests++;
		if (!misbehaved && f->tx != TX_GOOD &&
		    (q[nq].type == TBLK_NBD_CMD_READ || q[nq].type == TBLK_NBD_CMD_BLOCK_STATUS)) {
			misbehaved = 1;
			if ((q[nq].type == TBLK_NBD_CMD_READ ? misbehave(f, fd, &q[nq]) :
			     misbehave_bs(f, fd, &q[nq])) < 0)
				break;
			continue;
		}
		nq++;
		/* Answer a batch in a shuffled order once no more requests are waiting. */
		more = poll(&p, 1, 1) > 0;
		if (nq < BATCH && more)
			continue;
		while (nq) {
			int i = (int)(tap_rand(&seed) % (uint64_t)nq);

			if (answer(f, fd, &q[i], structured))
				return;
			q[i] = q[--nq];
		}
	}
}

static void *fake_main(void *opaque)
{
	struct fake *f = opaque;
	int fd = accept(f->lfd, NULL, NULL);

	if (fd < 0)
		return NULL;
	if (handshake(f, fd) == 0)
		serve(f, fd);
	close(fd);
	return NULL;
}

static void fake_start(struct fake *f, enum hs hs, enum tx tx)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	static int n;

	memset(f, 0, sizeof(*f));
	f->hs = hs;
	f->tx = tx;
	f->disk = malloc(DISK_SIZE);
	for (size_t i = 0; i < DISK_SIZE; i++)
		f->disk[i] = (uint8_t)(i * 7 + i / 4096);
	snprintf(f->path, sizeof(f->path), "%.80s/s%d", dir, n++);
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", f->path);
	f->lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (f->lfd < 0 || bind(f->lfd, (struct sockaddr *)&sun, sizeof(sun)) ||
	    listen(f->lfd, 4))
		tap_bail("fake server socket");
	if (pthread_create(&f->thr, NULL, fake_main, f))
		tap_bail("pthread_create");
}

static void fake_stop(struct fake *f)
{
	/* Unblocks an accept() the client never answered. */
	shutdown(f->lfd, SHUT_RDWR);
	pthread_join(f->thr, NULL);
	close(f->lfd);
	unlink(f->path);
}

static int open_fake(struct tblk_blk **blk, struct fake *f, bool rw, GError **err)
{
	GHashTable *opts = tblk_opts_new();
	char *s = g_strdup_printf("driver=nbd,server.type=unix,server.path=%s", f->path);
	int ret = tblk_opts_parse(opts, s, NULL, err);

	if (ret == 0)
		ret = tblk_blk_open(blk, NULL, opts, rw ? TBLK_OPEN_RDWR : 0, NULL, err);
	g_hash_table_unref(opts);
	g_free(s);
	return ret;
}

/* One misbehaving reply to a 64 KiB read: the read fails with @want, later I/O with @later. */
static void read_case(const char *name, enum hs hs, enum tx tx, int want, int later)
{
	struct tblk_blk *blk = NULL;
	GError *err = NULL;
	struct fake f;
	uint8_t *buf = malloc(65536);
	int ret;

	fake_start(&f, hs, tx);
	ret = open_fake(&blk, &f, false, &err);
	is_int(ret, 0, "%s: open", name);
	if (ret == 0) {
		is_int(tblk_blk_pread(blk, 8192, buf, 65536, 0), want, "%s: read", name);
		if (want == 0)
			ok(!memcmp(buf, f.disk + 8192, 65536) || tx == TX_HOLE_AND_DATA,
			   "%s: data", name);
		is_int(tblk_blk_pread(blk, 0, buf, 4096, 0), later, "%s: next read", name);
		tblk_blk_close(blk);
	}
	if (err)
		g_error_free(err);
	fake_stop(&f);
	free(f.disk);
	free(buf);
}

/* Seeded random chunks: every result is a clean one, never a crash or a hang. */
static void test_random(void)
{
	uint64_t seed = tap_seed(12345);
	int bad = 0;

	for (int i = 0; i < 40; i++) {
		struct tblk_blk *blk = NULL;
		struct fake f;
		uint8_t *buf = malloc(65536);
		int r1 = 0, r2 = 0;

		fake_start(&f, HS_OK, TX_RANDOM);
		f.seed = seed + (uint64_t)i;
		if (open_fake(&blk, &f, false, NULL) == 0) {
			r1 = tblk_blk_pread(blk, 8192, buf, 65536, 0);
			r2 = tblk_blk_pread(blk, 0, buf, 4096, 0);
			tblk_blk_close(blk);
		}
		/* 0 or -errno, whatever came */
		if (r1 > 0 || r1 < -4095 || r2 > 0 || r2 < -4095) {
			tap_diag("seed %" PRIu64 ": %d %d", seed + (uint64_t)i, r1, r2);
			bad++;
		}
		fake_stop(&f);
		free(f.disk);
		free(buf);
	}
	is_int(bad, 0, "40 servers sending random chunks: clean errors (seed %" PRIu64 ")", seed);
}

static void test_hole_and_data(void)
{
	struct tblk_blk *blk = NULL;
	struct fake f;
	uint8_t *buf = malloc(65536), *want = calloc(1, 65536);

	fake_start(&f, HS_OK, TX_HOLE_AND_DATA);
	if (open_fake(&blk, &f, false, NULL) == 0) {
		memset(buf, 0xee, 65536);
		is_int(tblk_blk_pread(blk, 8192, buf, 65536, 0), 0, "hole+data: read");
		memcpy(want + 32768, f.disk + 8192 + 32768, 32768);
		ok(!memcmp(buf, want, 65536), "hole+data: hole is zeroes, data is the server's");
		tblk_blk_close(blk);
	} else {
		ok(0, "hole+data: open");
		ok(0, "hole+data: data");
	}
	fake_stop(&f);
	free(f.disk);
	free(buf);
	free(want);
}

static void bs_case(const char *name, enum tx tx, int want, uint64_t want_pnum)
{
	struct tblk_blk *blk = NULL;
	struct fake f;
	uint64_t pnum = 0;
	int ret = -1;

	fake_start(&f, HS_OK, tx);
	if (open_fake(&blk, &f, false, NULL) == 0) {
		ret = tblk_blk_block_status(blk, 4096, 65536, &pnum, NULL);
		tblk_blk_close(blk);
	}
	is_int(ret, want, "%s: block status", name);
	if (want >= 0)
		is_int(pnum, want_pnum, "%s: length", name);
	fake_stop(&f);
	free(f.disk);
}

static void open_case(const char *name, enum hs hs, const char *msg)
{
	struct tblk_blk *blk = NULL;
	GError *err = NULL;
	struct fake f;
	int ret;

	fake_start(&f, hs, TX_GOOD);
	ret = open_fake(&blk, &f, false, &err);
	ok(ret < 0, "%s: open fails (%d)", name, ret);
	ok(err && strstr(err->message, msg), "%s: message '%s'", name,
	   err ? err->message : "(none)");
	if (ret == 0)
		tblk_blk_close(blk);
	if (err)
		g_error_free(err);
	fake_stop(&f);
	free(f.disk);
}

/* Old servers: simple replies only, or EXPORT_NAME, or oldstyle; read and write work. */
static void compat_case(const char *name, enum hs hs)
{
	struct tblk_blk *blk = NULL;
	struct fake f;
	uint8_t buf[8192], pat[8192];
	uint64_t pnum = 0;

	memset(buf, 0, sizeof(buf));
	memset(pat, 0x3c, sizeof(pat));
	fake_start(&f, hs, TX_GOOD);
	if (open_fake(&blk, &f, true, NULL) == 0) {
		is_int(tblk_blk_pwrite(blk, 4096, pat, sizeof(pat), TBLK_REQ_FUA), 0,
		       "%s: write", name);
		is_int(tblk_blk_pread(blk, 4096, buf, sizeof(buf), 0), 0, "%s: read", name);
		ok(!memcmp(buf, pat, sizeof(buf)), "%s: read what was written", name);
		/* no base:allocation: all data */
		is_int(tblk_blk_block_status(blk, 0, 65536, &pnum, NULL),
		       TBLK_BS_DATA | TBLK_BS_OFFSET_VALID | TBLK_BS_ALLOCATED,
		       "%s: block status without context", name);
		tblk_blk_close(blk);
	} else {
		ok(0, "%s: open", name);
	}
	fake_stop(&f);
	free(f.disk);
}

/* ---------------------------------------------------------------- concurrency */

#define NR_THREADS	8
#define NR_OPS		300
#define REGION		(DISK_SIZE / NR_THREADS)

struct worker {
	struct tblk_blk *blk;
	int id;
	uint8_t *shadow;	/* this thread's region */
	int errors;
};

static void *worker_main(void *opaque)
{
	struct worker *w = opaque;
	uint64_t rng = 1000 + (uint64_t)w->id;
	uint64_t base = (uint64_t)w->id * REGION;
	uint8_t *buf = malloc(REGION);

	for (int i = 0; i < NR_OPS; i++) {
		uint64_t off = tap_rand(&rng) % REGION, len = 1 + tap_rand(&rng) % 16384;
		int kind = (int)(tap_rand(&rng) % 4);

		if (len > REGION - off)
			len = REGION - off;
		if (kind == 0) {
			memset(buf, (int)(tap_rand(&rng) & 0xff), len);
			if (tblk_blk_pwrite(w->blk, base + off, buf, len, 0) < 0)
				w->errors++;
			memcpy(w->shadow + off, buf, len);
		} else if (kind == 1) {
			if (tblk_blk_pwrite_zeroes(w->blk, base + off, len, TBLK_REQ_MAY_UNMAP) < 0)
				w->errors++;
			memset(w->shadow + off, 0, len);
		} else {
			if (tblk_blk_pread(w->blk, base + off, buf, len, 0) < 0 ||
			    memcmp(buf, w->shadow + off, len))
				w->errors++;
		}
	}
	free(buf);
	return NULL;
}

static void test_concurrency(void)
{
	struct worker w[NR_THREADS];
	pthread_t t[NR_THREADS];
	struct tblk_blk *blk = NULL;
	struct fake f;
	int errors = 0;

	fake_start(&f, HS_OK, TX_GOOD);
	if (open_fake(&blk, &f, true, NULL) < 0) {
		ok(0, "concurrency: open");
		fake_stop(&f);
		free(f.disk);
		return;
	}
	for (int i = 0; i < NR_THREADS; i++) {
		w[i] = (struct worker){ .blk = blk, .id = i, .shadow = malloc(REGION) };
		memcpy(w[i].shadow, f.disk + (size_t)i * REGION, REGION);
		pthread_create(&t[i], NULL, worker_main, &w[i]);
	}
	for (int i = 0; i < NR_THREADS; i++) {
		pthread_join(t[i], NULL);
		errors += w[i].errors;
	}
	is_int(errors, 0, "concurrency: %d threads x %d ops through one connection, shuffled "
	       "replies, match the shadow", NR_THREADS, NR_OPS);
	is_int(tblk_blk_flush(blk), 0, "concurrency: flush");
	tblk_blk_close(blk);
	fake_stop(&f);	/* joins the server: the disk is stable now */
	for (int i = 0; i < NR_THREADS; i++) {
		errors += memcmp(w[i].shadow, f.disk + (size_t)i * REGION, REGION) != 0;
		free(w[i].shadow);
	}
	is_int(errors, 0, "concurrency: the server's disk matches the shadow");
	free(f.disk);
}

/* ---------------------------------------------------------------- asynchronous requests */

#define NR_ASYNC	64
#define ASYNC_LEN	8192

struct async_op {
	int ret;
	bool done;
};

static void async_cb(void *opaque, int ret)
{
	struct async_op *op = opaque;

	op->ret = ret;
	op->done = true;
}

/* Runs @loop until every op of @ops is done; counts those that failed with other than @want. */
static int async_wait(struct tblk_loop *loop, struct async_op *ops, int n, int want)
{
	int bad = 0;

	for (int i = 0; i < n; i++) {
		while (!ops[i].done)
			tblk_loop_iterate(loop, true);
		bad += ops[i].ret != want;
		ops[i].done = false;
	}
	return bad;
}

/* The fast path: requests sent from the loop thread, completed through its bottom half. */
static void test_async(void)
{
	static uint8_t bufs[NR_ASYNC][ASYNC_LEN], rbuf[NR_ASYNC][ASYNC_LEN];
	struct iovec wiov[NR_ASYNC], riov[NR_ASYNC];
	struct async_op ops[NR_ASYNC];
	struct tblk_loop *loop = tblk_loop_new(NULL);
	GHashTable *opts = tblk_opts_new();
	struct tblk_blk *blk = NULL;
	struct fake f;
	char *s;
	int bad = 0;

	fake_start(&f, HS_OK, TX_GOOD);
	s = g_strdup_printf("driver=nbd,server.type=unix,server.path=%s", f.path);
	tblk_opts_parse(opts, s, NULL, NULL);
	if (tblk_blk_open(&blk, NULL, opts, TBLK_OPEN_RDWR, loop, NULL) < 0) {
		ok(0, "async: open");
		goto out;
	}
	memset(ops, 0, sizeof(ops));
	for (int i = 0; i < NR_ASYNC; i++) {
		memset(bufs[i], i + 1, ASYNC_LEN);
		wiov[i] = (struct iovec){ bufs[i], ASYNC_LEN };
		tblk_blk_pwritev(blk, (uint64_t)i * ASYNC_LEN * 2, &wiov[i], 1,
				 i % 2 ? TBLK_REQ_FUA : 0, async_cb, &ops[i]);
	}
	is_int(async_wait(loop, ops, NR_ASYNC, 0), 0, "async: %d writes in flight", NR_ASYNC);
	for (int i = 0; i < NR_ASYNC; i++) {
		riov[i] = (struct iovec){ rbuf[i], ASYNC_LEN };
		tblk_blk_preadv(blk, (uint64_t)i * ASYNC_LEN * 2, &riov[i], 1, 0, async_cb,
				&ops[i]);
	}
	is_int(async_wait(loop, ops, NR_ASYNC, 0), 0, "async: %d reads in flight", NR_ASYNC);
	for (int i = 0; i < NR_ASYNC; i++)
		bad += memcmp(rbuf[i], bufs[i], ASYNC_LEN) != 0;
	is_int(bad, 0, "async: reads return what the writes wrote");
	tblk_blk_aio_flush(blk, async_cb, &ops[0]);
	is_int(async_wait(loop, ops, 1, 0), 0, "async: flush");
	tblk_blk_close(blk);
out:
	fake_stop(&f);
	free(f.disk);
	g_free(s);
	g_hash_table_unref(opts);
	tblk_loop_free(loop);
}

/* The server hangs up while asynchronous reads wait: every callback gets -EIO. */
static void test_async_hangup(void)
{
	static uint8_t rbuf[8][4096];
	struct iovec riov[8];
	struct async_op ops[8];
	struct tblk_loop *loop = tblk_loop_new(NULL);
	GHashTable *opts = tblk_opts_new();
	struct tblk_blk *blk = NULL;
	struct fake f;
	char *s;

	fake_start(&f, HS_OK, TX_HANG_UP);
	s = g_strdup_printf("driver=nbd,server.type=unix,server.path=%s", f.path);
	tblk_opts_parse(opts, s, NULL, NULL);
	if (tblk_blk_open(&blk, NULL, opts, 0, loop, NULL) < 0) {
		ok(0, "async hang-up: open");
		goto out;
	}
	memset(ops, 0, sizeof(ops));
	for (int i = 0; i < 8; i++) {
		riov[i] = (struct iovec){ rbuf[i], 4096 };
		tblk_blk_preadv(blk, (uint64_t)i * 4096, &riov[i], 1, 0, async_cb, &ops[i]);
	}
	is_int(async_wait(loop, ops, 8, -EIO), 0, "async hang-up: 8 reads in flight fail with EIO");
	tblk_blk_preadv(blk, 0, &riov[0], 1, 0, async_cb, &ops[0]);
	is_int(async_wait(loop, ops, 1, -EIO), 0, "async hang-up: a later read fails at once");
	tblk_blk_close(blk);
out:
	fake_stop(&f);
	free(f.disk);
	g_free(s);
	g_hash_table_unref(opts);
	tblk_loop_free(loop);
}

/*
 * Chains of reads, each completion submitting the chain's next read from the loop's
 * callback: the requests the loop sends while it completes a batch of replies go out
 * together, and the loop reads the socket again before it waits.
 */
#define NR_CHAINS	8
#define CHAIN_LEN	64

struct chain {
	struct tblk_blk *blk;
	const uint8_t *disk;
	uint8_t buf[4096];
	struct iovec iov;
	uint64_t off;
	int left, bad, ret;
	bool done;
};

static void chain_next(struct chain *c);

static void chain_cb(void *opaque, int ret)
{
	struct chain *c = opaque;

	if (ret < 0 || memcmp(c->buf, c->disk + c->off, sizeof(c->buf)))
		c->bad++;
	c->ret = ret;
	if (ret < 0 || !--c->left) {
		c->done = true;
		return;
	}
	c->off = (c->off + 7 * 4096) % DISK_SIZE;
	chain_next(c);
}

static void chain_next(struct chain *c)
{
	c->iov = (struct iovec){ c->buf, sizeof(c->buf) };
	tblk_blk_preadv(c->blk, c->off, &c->iov, 1, 0, chain_cb, c);
}

/* With @tx TX_HANG_UP every chain must end with -EIO at its first read, none hang. */
static void test_chains(enum tx tx)
{
	static struct chain c[NR_CHAINS];
	struct tblk_loop *loop = tblk_loop_new(NULL);
	GHashTable *opts = tblk_opts_new();
	struct tblk_blk *blk = NULL;
	const char *name = tx == TX_GOOD ? "chains" : "chains, hang-up";
	int bad = 0, eio = 0;
	struct fake f;
	char *s;

	fake_start(&f, HS_OK, tx);
	s = g_strdup_printf("driver=nbd,server.type=unix,server.path=%s", f.path);
	tblk_opts_parse(opts, s, NULL, NULL);
	if (tblk_blk_open(&blk, NULL, opts, 0, loop, NULL) < 0) {
		ok(0, "%s: open", name);
		goto out;
	}
	for (int i = 0; i < NR_CHAINS; i++) {
		c[i] = (struct chain){ .blk = blk, .disk = f.disk, .left = CHAIN_LEN,
				       .off = (uint64_t)i * 4096 };
		chain_next(&c[i]);
	}
	for (int i = 0; i < NR_CHAINS; i++) {
		while (!c[i].done)
			tblk_loop_iterate(loop, true);
		bad += c[i].bad != (tx == TX_GOOD ? 0 : 1) ||
		       c[i].left != (tx == TX_GOOD ? 0 : CHAIN_LEN);
		eio += c[i].ret == -EIO;
	}
	if (tx == TX_GOOD) {
		is_int(bad, 0, "%s: %d chains of %d reads from completion callbacks return the "
		       "disk's data", name, NR_CHAINS, CHAIN_LEN);
	} else {
		is_int(bad, 0, "%s: every chain stops at its first read", name);
		is_int(eio, NR_CHAINS, "%s: with EIO", name);
	}
	tblk_blk_close(blk);
out:
	fake_stop(&f);
	free(f.disk);
	g_free(s);
	g_hash_table_unref(opts);
	tblk_loop_free(loop);
}

/*
 * A completion callback that submits a read and waits for it by iterating the loop itself
 * (as a drain does): the read it submitted must go out before that inner iteration waits.
 */
struct nested {
	struct tblk_loop *loop;
	struct tblk_blk *blk;
	uint8_t a[4096], b[4096];
	struct iovec ia, ib;
	struct async_op opb;
	int ret_a;
	bool done;
};

static void nested_cb(void *opaque, int ret)
{
	struct nested *n = opaque;

	n->ret_a = ret;
	n->ib = (struct iovec){ n->b, sizeof(n->b) };
	tblk_blk_preadv(n->blk, 8192, &n->ib, 1, 0, async_cb, &n->opb);
	while (!n->opb.done)
		tblk_loop_iterate(n->loop, true);
	n->done = true;
}

static void test_nested(void)
{
	static struct nested n;
	struct tblk_loop *loop = tblk_loop_new(NULL);
	GHashTable *opts = tblk_opts_new();
	struct fake f;
	char *s;

	fake_start(&f, HS_OK, TX_GOOD);
	s = g_strdup_printf("driver=nbd,server.type=unix,server.path=%s", f.path);
	tblk_opts_parse(opts, s, NULL, NULL);
	memset(&n, 0, sizeof(n));
	n.loop = loop;
	if (tblk_blk_open(&n.blk, NULL, opts, 0, loop, NULL) < 0) {
		ok(0, "nested: open");
		goto out;
	}
	n.ia = (struct iovec){ n.a, sizeof(n.a) };
	tblk_blk_preadv(n.blk, 0, &n.ia, 1, 0, nested_cb, &n);
	while (!n.done)
		tblk_loop_iterate(loop, true);
	ok(n.ret_a == 0 && n.opb.ret == 0 && !memcmp(n.a, f.disk, 4096) &&
	   !memcmp(n.b, f.disk + 8192, 4096),
	   "nested: a callback's read completes in a loop iteration nested in the callback");
	tblk_blk_close(n.blk);
out:
	fake_stop(&f);
	free(f.disk);
	g_free(s);
	g_hash_table_unref(opts);
	tblk_loop_free(loop);
}

/*
 * Both parsers on one socket: the loop reads the replies of its asynchronous reads while
 * threads wait for synchronous ones, which the reader thread reads.
 */
static void test_mixed(void)
{
	enum { NR_SYNC = NR_THREADS / 2, NR_MIX = 32 };
	static uint8_t rbuf[NR_MIX][4096];
	struct iovec riov[NR_MIX];
	struct async_op ops[NR_MIX];
	struct worker w[NR_SYNC];
	pthread_t t[NR_SYNC];
	struct tblk_loop *loop = tblk_loop_new(NULL);
	GHashTable *opts = tblk_opts_new();
	struct tblk_blk *blk = NULL;
	struct fake f;
	char *s;
	int errors = 0, bad = 0;

	fake_start(&f, HS_OK, TX_GOOD);
	s = g_strdup_printf("driver=nbd,server.type=unix,server.path=%s", f.path);
	tblk_opts_parse(opts, s, NULL, NULL);
	if (tblk_blk_open(&blk, NULL, opts, TBLK_OPEN_RDWR, loop, NULL) < 0) {
		ok(0, "mixed: open");
		goto out;
	}
	for (int i = 0; i < NR_SYNC; i++) {
		w[i] = (struct worker){ .blk = blk, .id = i, .shadow = malloc(REGION) };
		memcpy(w[i].shadow, f.disk + (size_t)i * REGION, REGION);
		pthread_create(&t[i], NULL, worker_main, &w[i]);
	}
	/* Asynchronous reads of the regions no worker touches, in rounds while they run. */
	for (int round = 0; round < 20; round++) {
		memset(ops, 0, sizeof(ops));
		for (int i = 0; i < NR_MIX; i++) {
			uint64_t off = (uint64_t)NR_SYNC * REGION + (uint64_t)(round * NR_MIX + i) *
				       4096 % ((NR_THREADS - NR_SYNC) * REGION);

			riov[i] = (struct iovec){ rbuf[i], 4096 };
			tblk_blk_preadv(blk, off, &riov[i], 1, 0, async_cb, &ops[i]);
		}
		bad += async_wait(loop, ops, NR_MIX, 0);
		for (int i = 0; i < NR_MIX; i++) {
			uint64_t off = (uint64_t)NR_SYNC * REGION + (uint64_t)(round * NR_MIX + i) *
				       4096 % ((NR_THREADS - NR_SYNC) * REGION);

			bad += memcmp(rbuf[i], f.disk + off, 4096) != 0;
		}
	}
	for (int i = 0; i < NR_SYNC; i++) {
		pthread_join(t[i], NULL);
		errors += w[i].errors;
		free(w[i].shadow);
	}
	is_int(bad, 0, "mixed: asynchronous reads from the loop return the disk's data");
	is_int(errors, 0, "mixed: %d threads' synchronous I/O meanwhile matches the shadow",
	       NR_SYNC);
	tblk_blk_close(blk);
out:
	fake_stop(&f);
	free(f.disk);
	g_free(s);
	g_hash_table_unref(opts);
	tblk_loop_free(loop);
}

/*
 * The fast path on an iothread's loop (which becomes the loop that reads the replies), the
 * node closed from the main thread while that loop runs: the socket's handler and the
 * parser's bottom half are dropped on the iothread, in rounds so that some close finds the
 * bottom half scheduled.
 */
struct iot_round {
	struct tblk_blk *blk;
	struct tblk_mutex lock;
	struct tblk_cond cv;
	struct async_op ops[NR_ASYNC];
	struct iovec iov[NR_ASYNC];
	uint8_t (*buf)[ASYNC_LEN];
	int nr_done;			/* [lock] */
};

static struct iot_round *iot_cur;

static void iot_done(void *opaque, int ret)
{
	struct async_op *op = opaque;

	op->ret = ret;
	tblk_mutex_lock(&iot_cur->lock);
	iot_cur->nr_done++;
	tblk_cond_signal(&iot_cur->cv);
	tblk_mutex_unlock(&iot_cur->lock);
}

/* On the iothread: reads of the whole disk, in flight together. */
static void iot_submit(void *opaque)
{
	struct iot_round *r = opaque;

	for (int i = 0; i < NR_ASYNC; i++) {
		r->iov[i] = (struct iovec){ r->buf[i], ASYNC_LEN };
		tblk_blk_preadv(r->blk, (uint64_t)i * ASYNC_LEN % DISK_SIZE, &r->iov[i], 1, 0,
				iot_done, &r->ops[i]);
	}
}

static void test_iothread_close(void)
{
	static uint8_t buf[NR_ASYNC][ASYNC_LEN];
	struct tblk_iothread *iot = tblk_iothread_new("nbd-iot", NULL);
	struct tblk_loop *loop = tblk_iothread_get_loop(iot);
	int bad = 0, failed_open = 0;
	struct iot_round r;
	struct fake f;

	for (int round = 0; round < 10; round++) {
		GHashTable *opts = tblk_opts_new();
		char *s;

		fake_start(&f, HS_OK, TX_GOOD);	/* the fake serves one connection */
		s = g_strdup_printf("driver=nbd,server.type=unix,server.path=%s", f.path);

		memset(&r, 0, sizeof(r));
		r.buf = buf;
		tblk_mutex_init(&r.lock);
		tblk_cond_init(&r.cv);
		iot_cur = &r;
		tblk_opts_parse(opts, s, NULL, NULL);
		if (tblk_blk_open(&r.blk, NULL, opts, 0, loop, NULL) < 0) {
			failed_open++;
		} else {
			tblk_loop_call_soon(loop, iot_submit, &r);
			tblk_mutex_lock(&r.lock);
			while (r.nr_done < NR_ASYNC)
				tblk_cond_wait(&r.cv, &r.lock);
			tblk_mutex_unlock(&r.lock);
			for (int i = 0; i < NR_ASYNC; i++)
				bad += r.ops[i].ret != 0 ||
				       memcmp(buf[i], f.disk + (size_t)i * ASYNC_LEN % DISK_SIZE,
					      ASYNC_LEN) != 0;
			tblk_blk_close(r.blk);
		}
		tblk_cond_destroy(&r.cv);
		tblk_mutex_destroy(&r.lock);
		g_free(s);
		g_hash_table_unref(opts);
		fake_stop(&f);
		free(f.disk);
	}
	is_int(failed_open, 0, "iothread: every open works");
	is_int(bad, 0, "iothread: reads on the iothread's loop, closed from the main thread");
	tblk_iothread_free(iot);
}

int main(void)
{
	alarm(120);	/* a hang is a failure, not a stuck CI */
	snprintf(dir, sizeof(dir), "%s/tblk-nbdh-XXXXXX", getenv("TMPDIR") ?: "/tmp");
	if (!mkdtemp(dir))
		tap_bail("mkdtemp");

	read_case("good", HS_OK, TX_GOOD, 0, 0);
	read_case("bad magic", HS_OK, TX_BAD_MAGIC, -EIO, -EIO);
	read_case("unknown cookie", HS_OK, TX_UNKNOWN_COOKIE, -EIO, -EIO);
	read_case("oversized chunk", HS_OK, TX_OVERSIZED_CHUNK, -EIO, -EIO);
	read_case("huge chunk", HS_OK, TX_HUGE_CHUNK, -EIO, -EIO);
	read_case("chunk outside the request", HS_OK, TX_CHUNK_OUTSIDE, -EIO, -EIO);
	read_case("truncated stream", HS_OK, TX_TRUNCATED, -EIO, -EIO);
	read_case("server hangs up", HS_OK, TX_HANG_UP, -EIO, -EIO);
	read_case("error chunk", HS_OK, TX_ERROR_CHUNK, -EPERM, 0);
	read_case("simple reply to a structured read", HS_OK, TX_SIMPLE_AFTER_STRUCTURED, -EIO,
		  -EIO);
	read_case("read not covered", HS_OK, TX_NOT_COVERED, -EIO, 0);
	read_case("unknown chunk type", HS_OK, TX_UNKNOWN_CHUNK, -EIO, -EIO);
	test_hole_and_data();
	test_random();
	bs_case("block status", TX_GOOD, TBLK_BS_DATA | TBLK_BS_OFFSET_VALID | TBLK_BS_ALLOCATED,
		65536);
	bs_case("block status, other context", TX_BS_BAD_CONTEXT, -EIO, 0);
	bs_case("block status, extent past the request", TX_BS_LONG_EXTENT,
		TBLK_BS_ZERO | TBLK_BS_OFFSET_VALID | TBLK_BS_ALLOCATED, 65536);
	open_case("handshake bad magic", HS_BAD_MAGIC, "magic");
	open_case("handshake cut", HS_CLOSE_EARLY, "closed the connection");
	open_case("huge option reply", HS_HUGE_OPTION_REPLY, "too long");
	open_case("unknown export", HS_UNKNOWN_EXPORT, "Requested export not available");
	open_case("endless info replies", HS_ENDLESS_INFO, "too many replies");
	open_case("invalid block sizes", HS_BAD_BLOCK_SIZE, "invalid block sizes");
	compat_case("simple replies only", HS_NOT_STRUCTURED);
	compat_case("no OPT_GO", HS_NO_GO);
	compat_case("oldstyle", HS_OLDSTYLE);
	test_concurrency();
	test_async();
	test_async_hangup();
	test_chains(TX_GOOD);
	test_chains(TX_HANG_UP);
	test_nested();
	test_mixed();
	test_iothread_close();
	/* Again with replies cut at random places: the parser resumes wherever input stops. */
	trickle = true;
	read_case("good, trickled", HS_OK, TX_GOOD, 0, 0);
	test_hole_and_data();
	test_concurrency();
	test_async();
	test_chains(TX_GOOD);
	test_mixed();
	trickle = false;
	rmdir(dir);
	return tap_done();
}
