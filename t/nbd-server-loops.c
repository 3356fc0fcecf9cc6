/* SPDX-License-Identifier: MIT */
/*
 * t/nbd-server-loops.c - the NBD server (tools/export-nbd*.c, included here so the test
 * links with libtblk alone) with its listeners on one loop and the exported backend on an
 * iothread, as tblk-daemon runs it: connections move to the backend's loop after the
 * handshake. Four client threads pipeline writes and reads on their own regions and check
 * every byte against a shadow; then removing the export disconnects an idle client, and
 * freeing the server ends. Meant for ThreadSanitizer as much as for the checks.
 *
 * Threading: thread "srv" runs the server's loop, the iothread runs the backend's, the
 * client threads only use blocking sockets.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "tools/export-nbd-proto.c"
#include "tools/export-nbd.c"
#include "tools/export-nbd-conn.c"
#include "t/tap.h"

#define NR_CLIENTS	4
#define REGION		(1u << 20)
#define BLOCK		4096u
#define ROUNDS		40
#define BATCH		8

static char sock_path[108];

static int xfer(int fd, void *buf, size_t len, bool out)
{
	uint8_t *p = buf;

	while (len) {
		ssize_t n = out ? send(fd, p, len, MSG_NOSIGNAL) : recv(fd, p, len, 0);

		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int cl_connect(void)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	strcpy(sun.sun_path, sock_path);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

/* Handshake with GO on the default export, simple replies. 0 or -1. */
static int cl_go(int fd, uint64_t *size)
{
	uint8_t greet[18], opt[16 + 6], rep[20], data[256];
	GByteArray *b = g_byte_array_new();
	int ret = -1;

	if (xfer(fd, greet, sizeof(greet), false) < 0)
		goto out;
	nbds_put_be32(b, 3);
	nbds_put_be64(b, TBLK_NBD_OPTS_MAGIC);
	nbds_put_be32(b, TBLK_NBD_OPT_GO);
	nbds_put_be32(b, 6);
	nbds_put_be32(b, 0);
	nbds_put_be16(b, 0);
	(void)opt;
	if (xfer(fd, b->data, b->len, true) < 0)
		goto out;
	for (;;) {
		uint32_t type, len;

		if (xfer(fd, rep, sizeof(rep), false) < 0)
			goto out;
		type = nbds_be32(rep + 12);
		len = nbds_be32(rep + 16);
		if (len > sizeof(data) || xfer(fd, data, len, false) < 0)
			goto out;
		if (type == TBLK_NBD_REP_INFO && len == 12 && nbds_be16(data) == 0)
			*size = nbds_be64(data + 2);
		if (type == TBLK_NBD_REP_ACK)
			break;
		if (type != TBLK_NBD_REP_INFO)
			goto out;
	}
	ret = 0;
out:
	g_byte_array_free(b, TRUE);
	return ret;
}

static int cl_send(int fd, uint16_t type, uint64_t cookie, uint64_t off, uint32_t len,
		   const void *data)
{
	GByteArray *b = g_byte_array_new();
	int ret;

	nbds_put_be32(b, TBLK_NBD_REQUEST_MAGIC);
	nbds_put_be16(b, 0);
	nbds_put_be16(b, type);
	nbds_put_be64(b, cookie);
	nbds_put_be64(b, off);
	nbds_put_be32(b, len);
	if (data)
		g_byte_array_append(b, data, len);
	ret = xfer(fd, b->data, b->len, true);
	g_byte_array_free(b, TRUE);
	return ret;
}

struct client {
	pthread_t thread;
	int idx;
	uint64_t rng;
	unsigned int bad, ops;
	uint8_t shadow[REGION];
};

/* A reply's header: its cookie and error. 0 or -1. */
static int cl_reply(int fd, uint64_t *cookie, uint32_t *err)
{
	uint8_t h[16];

	if (xfer(fd, h, sizeof(h), false) < 0 || nbds_be32(h) != TBLK_NBD_SIMPLE_REPLY_MAGIC)
		return -1;
	*err = nbds_be32(h + 4);
	*cookie = nbds_be64(h + 8);
	return 0;
}

static void *client_main(void *opaque)
{
	struct client *c = opaque;
	uint64_t base = (uint64_t)c->idx * REGION, size = 0;
	uint8_t *buf = g_malloc(BATCH * 16 * BLOCK);
	int fd = cl_connect(), r, i;

	if (fd < 0 || cl_go(fd, &size) < 0 || size < (NR_CLIENTS + 1) * (uint64_t)REGION) {
		c->bad++;
		goto out;
	}
	for (r = 0; r < ROUNDS; r++) {
		uint32_t offs[BATCH], lens[BATCH];
		bool used[REGION / BLOCK] = { false };

		/* A batch of writes to distinct blocks, in flight together. */
		for (i = 0; i < BATCH; i++) {
			uint32_t blk, n;

			do {
				blk = (uint32_t)(tap_rand(&c->rng) % (REGION / BLOCK));
				n = 1 + (uint32_t)(tap_rand(&c->rng) % 16);
				n = TBLK_MIN(n, REGION / BLOCK - blk);
			} while (memchr(used + blk, 1, n));
			memset(used + blk, 1, n);
			offs[i] = blk * BLOCK;
			lens[i] = n * BLOCK;
			memset(c->shadow + offs[i], (int)(tap_rand(&c->rng) & 0xff), lens[i]);
			if (cl_send(fd, TBLK_NBD_CMD_WRITE, i, base + offs[i], lens[i],
				    c->shadow + offs[i]) < 0)
				goto fail;
		}
		for (i = 0; i < BATCH; i++) {
			uint64_t cookie;
			uint32_t err;

			if (cl_reply(fd, &cookie, &err) < 0 || err || cookie >= BATCH)
				goto fail;
			c->ops++;
		}
		/* Reads of the same ranges: replies may come in any order. */
		for (i = 0; i < BATCH; i++)
			if (cl_send(fd, TBLK_NBD_CMD_READ, i, base + offs[i], lens[i], NULL) < 0)
				goto fail;
		for (i = 0; i < BATCH; i++) {
			uint64_t cookie;
			uint32_t err;

			if (cl_reply(fd, &cookie, &err) < 0 || err || cookie >= BATCH ||
			    xfer(fd, buf, lens[cookie], false) < 0)
				goto fail;
			if (memcmp(buf, c->shadow + offs[cookie], lens[cookie]))
				c->bad++;
			c->ops++;
		}
	}
	cl_send(fd, TBLK_NBD_CMD_FLUSH, 99, 0, 0, NULL);
	{
		uint64_t cookie;
		uint32_t err;

		if (cl_reply(fd, &cookie, &err) < 0 || err || cookie != 99)
			c->bad++;
	}
	cl_send(fd, TBLK_NBD_CMD_DISC, 0, 0, 0, NULL);
	goto out;
fail:
	c->bad++;
out:
	if (fd >= 0)
		close(fd);
	g_free(buf);
	return NULL;
}

static void *srv_thread(void *opaque)
{
	tblk_loop_run(opaque);
	return NULL;
}

/* Runs @fn(@arg) on the server's loop thread and waits for it. */
struct on_loop {
	void (*fn)(void *arg);
	void *arg;
	struct tblk_mutex lock;
	struct tblk_cond cv;
	bool done;		/* [lock] */
};

static void on_loop_cb(void *opaque)
{
	struct on_loop *o = opaque;

	o->fn(o->arg);
	tblk_mutex_lock(&o->lock);
	o->done = true;
	tblk_cond_broadcast(&o->cv);
	tblk_mutex_unlock(&o->lock);
}

static void run_on(struct tblk_loop *loop, void (*fn)(void *arg), void *arg)
{
	struct on_loop o = { .fn = fn, .arg = arg };

	tblk_mutex_init(&o.lock);
	tblk_cond_init(&o.cv);
	tblk_loop_call_soon(loop, on_loop_cb, &o);
	tblk_mutex_lock(&o.lock);
	while (!o.done)
		tblk_cond_wait(&o.cv, &o.lock);
	tblk_mutex_unlock(&o.lock);
	tblk_cond_destroy(&o.cv);
	tblk_mutex_destroy(&o.lock);
}

static struct nbds_server *the_srv;
static int del_ret;

static void del_export(void *arg)
{
	(void)arg;
	del_ret = nbds_server_del_export(the_srv, "disk");
}

static void set_handshake_timeout(void *arg)
{
	nbds_server_set_handshake_timeout(the_srv, *(uint64_t *)arg);
}

static void clients_seen(void *opaque, unsigned int nr, uint64_t total)
{
	(void)total;
	unsigned int *max = opaque;

	if (nr > *max)
		*max = nr;
}

int main(int argc, char **argv)
{
	char *dir;
	struct nbds_export_opts eo = { .id = "disk", .name = "", .writable = true };
	struct client *cl = g_new0(struct client, NR_CLIENTS);
	struct tblk_iothread *iot;
	struct tblk_loop *srv_loop;
	struct nbds_server *srv;
	struct tblk_blk *blk;
	GError *err = NULL;
	pthread_t st;
	char *img;
	unsigned int i, bad = 0, ops = 0, max_clients = 0;
	uint64_t seed;
	int fd;

	/*
	 * glib 2.74's slice allocator passes chunks between threads through magazines whose
	 * synchronisation ThreadSanitizer cannot see; glib reads G_SLICE before main(), so
	 * run again with plain malloc.
	 */
	(void)argc;
	if (!getenv("G_SLICE")) {
		setenv("G_SLICE", "always-malloc", 1);
		execv("/proc/self/exe", argv);
	}
	seed = tap_seed(20261121);

	tap_plan(9);
	dir = g_dir_make_tmp("tblk-nbdloops-XXXXXX", NULL);
	if (!dir)
		tap_bail("mkdtemp");
	img = g_strdup_printf("%s/img.raw", dir);
	snprintf(sock_path, sizeof(sock_path), "%s/s", dir);
	fd = open(img, O_CREAT | O_RDWR, 0600);
	if (fd < 0 || ftruncate(fd, (NR_CLIENTS + 1) * (off_t)REGION) < 0)
		tap_bail("image");
	close(fd);

	iot = tblk_iothread_new("nbd-io", &err);
	srv_loop = tblk_loop_new(&err);
	if (!iot || !srv_loop)
		tap_bail("loops");
	ok(tblk_blk_open(&blk, img, NULL, TBLK_OPEN_RDWR | TBLK_OPEN_NO_PROBE,
			 tblk_iothread_get_loop(iot), &err) == 0, "open the image on an iothread");
	srv = the_srv = nbds_server_new(srv_loop);
	nbds_server_set_clients_cb(srv, clients_seen, &max_clients);
	ok(nbds_server_add_export(srv, blk, &eo, &err) == 0 &&
	   nbds_server_listen_unix(srv, sock_path, &err) == 0, "export and listen");
	pthread_create(&st, NULL, srv_thread, srv_loop);

	for (i = 0; i < NR_CLIENTS; i++) {
		cl[i].idx = (int)i;
		cl[i].rng = seed + i;
		pthread_create(&cl[i].thread, NULL, client_main, &cl[i]);
	}
	for (i = 0; i < NR_CLIENTS; i++) {
		pthread_join(cl[i].thread, NULL);
		bad += cl[i].bad;
		ops += cl[i].ops;
	}
	ok(!bad && ops == NR_CLIENTS * ROUNDS * BATCH * 2,
	   "%d clients, pipelined writes then reads, all replies right (%u ops, %u bad)",
	   NR_CLIENTS, ops, bad);
	{
		uint8_t *data = g_malloc(REGION);

		for (i = 0; i < NR_CLIENTS; i++)
			if (tblk_blk_pread(blk, (uint64_t)i * REGION, data, REGION, 0) < 0 ||
			    memcmp(data, cl[i].shadow, REGION))
				bad++;
		g_free(data);
	}
	ok(!bad, "the image holds what the clients wrote");

	/* A client that never completes its handshake is dropped. */
	{
		uint64_t ns = 100 * 1000 * 1000;

		run_on(srv_loop, set_handshake_timeout, &ns);
	}
	fd = cl_connect();
	{
		struct timeval tv = { .tv_sec = 30 };
		uint8_t greet[18];
		char c;

		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
		ok(fd >= 0 && xfer(fd, greet, sizeof(greet), false) == 0 &&
		   recv(fd, &c, 1, 0) == 0, "a client silent after the greeting is disconnected");
		if (fd >= 0)
			close(fd);
	}
	{
		uint64_t ns = NBDS_HANDSHAKE_NS;

		run_on(srv_loop, set_handshake_timeout, &ns);
	}

	/* An idle client: removing the export disconnects it. */
	fd = cl_connect();
	{
		uint64_t size = 0;
		char c;

		ok(fd >= 0 && cl_go(fd, &size) == 0, "another client connects");
		run_on(srv_loop, del_export, NULL);
		ok(del_ret == 0 && recv(fd, &c, 1, 0) == 0,
		   "removing the export disconnects its client");
		close(fd);
	}
	fd = cl_connect();
	{
		uint64_t size = 0;

		ok(fd >= 0 && cl_go(fd, &size) < 0, "the removed export is not offered any more");
		if (fd >= 0)
			close(fd);
	}
	tblk_loop_stop(srv_loop);
	pthread_join(st, NULL);
	nbds_server_free(srv);
	ok(max_clients >= 1, "the clients callback saw clients (max %u)", max_clients);
	tblk_blk_close(blk);
	tblk_iothread_free(iot);
	tblk_loop_free(srv_loop);
	unlink(img);
	rmdir(dir);
	g_free(dir);
	g_free(img);
	g_free(cl);
	return tap_done();
}
