/* SPDX-License-Identifier: MIT */
/*
 * io-cmds-misc.c - tblk-io's "discard", "flush", "length" and "info" commands.
 * (The generic ones, "help" and "quit", live with the command table in io-cmd.c.)
 *
 * Threading: the tool's single thread, which runs the backend's loop.
 */
#include <errno.h>
#include <getopt.h>
#include <string.h>

#include "tools/io-int.h"

struct wait_req {
	bool done;
	int ret;
};

static void wait_cb(void *opaque, int ret)
{
	struct wait_req *w = opaque;

	w->ret = ret;
	w->done = true;
}

int io_discard_f(struct io_ctx *io, int argc, char **argv)
{
	struct wait_req w = { false, 0 };
	bool csv = false, quiet = false;
	int64_t offset, bytes;
	uint64_t t0, t1;
	int c;

	while ((c = getopt(argc, argv, "Cq")) != -1) {
		if (c == 'C')
			csv = true;
		else if (c == 'q')
			quiet = true;
		else
			return io_usage_of("discard");
	}
	if (optind != argc - 2)
		return io_usage_of("discard");
	offset = io_cvtnum(argv[optind]);
	if (offset < 0) {
		io_print_cvtnum_err(offset, argv[optind]);
		return -EINVAL;
	}
	bytes = io_cvtnum(argv[optind + 1]);
	if (bytes < 0) {
		io_print_cvtnum_err(bytes, argv[optind + 1]);
		return -EINVAL;
	}
	if (bytes > TOOL_REQUEST_MAX_BYTES) {
		printf("length cannot exceed %lld, given %s\n", TOOL_REQUEST_MAX_BYTES,
		       argv[optind + 1]);
		return -EINVAL;
	}
	t0 = tool_now_ns();
	tblk_blk_aio_pdiscard(io->blk, (uint64_t)offset, (uint64_t)bytes, wait_cb, &w);
	io_wait(io, &w.done);
	t1 = tool_now_ns();
	if (w.ret < 0) {
		printf("discard failed: %s\n", strerror(-w.ret));
		return w.ret;
	}
	if (!quiet)
		io_print_report("discard", t0, t1, offset, bytes, bytes, 1, csv);
	return 0;
}

int io_flush_f(struct io_ctx *io, int argc, char **argv)
{
	struct wait_req w = { false, 0 };

	(void)argc, (void)argv;
	tblk_blk_aio_flush(io->blk, wait_cb, &w);
	io_wait(io, &w.done);
	return w.ret;
}

int io_length_f(struct io_ctx *io, int argc, char **argv)
{
	int64_t size = tblk_blk_getlength(io->blk);
	char buf[64];

	(void)argc, (void)argv;
	if (size < 0) {
		printf("getlength: %s\n", strerror((int)-size));
		return (int)size;
	}
	tool_fmt_size_io(buf, sizeof(buf), (double)size);
	printf("%s\n", buf);
	return 0;
}

int io_info_f(struct io_ctx *io, int argc, char **argv)
{
	const char *fmt = tblk_blk_format_name(io->blk);

	(void)argc, (void)argv;
	printf("format name: %s\n", fmt);
	/* qemu-io prints the name twice when the image is opened as a bare protocol. */
	if (!strcmp(fmt, tblk_blk_protocol_name(io->blk)))
		printf("format name: %s\n", fmt);
	/* Neither raw nor a protocol has clusters or a VM state area. */
	printf("cluster size: 0 bytes\n");
	printf("vm state offset: 0 bytes\n");
	return 0;
}
