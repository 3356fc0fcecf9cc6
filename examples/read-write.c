/* SPDX-License-Identifier: MIT */
/*
 * read-write.c - the smallest use of libtblk an emulator author needs to read: open an
 * image, write a block asynchronously, read it back, wait for both, close.
 *
 *   cc read-write.c $(pkg-config --cflags --libs tblk) -o read-write
 *   ./read-write disk.img
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tblk/tblk.h>

struct io {
	const char *what;
	int done;		/* callbacks run on the loop thread: no locking needed */
};

/* Runs on the loop, inside tblk_loop_iterate(), once the request has completed. */
static void on_complete(void *opaque, int ret)
{
	struct io *io = opaque;

	printf("%s: %s\n", io->what, ret < 0 ? strerror(-ret) : "ok");
	io->done++;
}

int main(int argc, char **argv)
{
	static char wbuf[4096], rbuf[4096];
	struct iovec wiov = { wbuf, sizeof(wbuf) }, riov = { rbuf, sizeof(rbuf) };
	struct io wio = { "write", 0 }, rio = { "read", 0 };
	struct tblk_loop *loop;
	struct tblk_blk *blk;
	GError *err = NULL;

	if (argc != 2) {
		fprintf(stderr, "usage: %s IMAGE\n", argv[0]);
		return 2;
	}
	loop = tblk_loop_new(&err);
	/* Format probed (raw unless it is something else), read-write, requests on `loop`. */
	if (!loop || tblk_blk_open(&blk, argv[1], NULL, TBLK_OPEN_RDWR, loop, &err) < 0) {
		fprintf(stderr, "%s: %s\n", argv[1], err->message);
		return 1;
	}
	memset(wbuf, 'x', sizeof(wbuf));
	tblk_blk_pwritev(blk, 0, &wiov, 1, 0, on_complete, &wio);
	while (!wio.done)
		tblk_loop_iterate(loop, true);	/* the callback runs in here */
	tblk_blk_preadv(blk, 0, &riov, 1, 0, on_complete, &rio);
	while (!rio.done)
		tblk_loop_iterate(loop, true);
	printf("read back %s\n", memcmp(rbuf, wbuf, sizeof(rbuf)) ? "different data" : "the data");
	tblk_blk_close(blk);
	tblk_loop_free(loop);
	return 0;
}
