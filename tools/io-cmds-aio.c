/* SPDX-License-Identifier: MIT */
/*
 * io-cmds-aio.c - tblk-io's "aio_read", "aio_write" and "aio_flush". The first two submit
 * a request and return; its result is printed by the callback when the loop next runs
 * (during a later blocking command, aio_flush, the prompt, or the final close). aio_flush
 * waits for all of them (a drain, not a disk flush), as in qemu-io.
 *
 * Threading: the tool's single thread, which runs the backend's loop.
 */
#include <assert.h>
#include <errno.h>
#include <getopt.h>
#include <string.h>

#include "tools/io-int.h"

struct aio_ctx {
	struct io_ctx *io;
	struct io_vec vec;
	int64_t offset;
	int64_t zero_bytes;		/* -z: length of the zero write */
	uint64_t start_ns;
	bool write, csv, quiet, dump, zeroes, has_pattern;
	int pattern;
};

static void aio_done(void *opaque, int ret)
{
	struct aio_ctx *a = opaque;
	uint64_t end = tool_now_ns();
	int64_t bytes = a->zeroes ? a->zero_bytes : a->vec.total;

	a->io->nr_aio--;
	if (ret < 0) {
		printf("%s failed: %s\n", a->write ? "aio_write" : "readv", strerror(-ret));
		goto out;
	}
	/* A mismatch is reported but, the command having returned long ago, not counted. */
	if (!a->write && a->has_pattern)
		io_verify_pattern(a->vec.buf, a->pattern, a->offset, bytes);
	if (a->quiet)
		goto out;
	if (a->dump)
		io_dump_buffer(a->vec.buf, a->offset, bytes);
	io_print_report(a->write ? "wrote" : "read", a->start_ns, end, a->offset, bytes, bytes, 1,
			a->csv);
out:
	io_vec_destroy(&a->vec);
	g_free(a);
}

static void aio_submit(struct aio_ctx *a, unsigned int flags)
{
	struct io_ctx *io = a->io;

	io->nr_aio++;
	a->start_ns = tool_now_ns();
	if (a->zeroes)
		tblk_blk_aio_pwrite_zeroes(io->blk, (uint64_t)a->offset, (uint64_t)a->zero_bytes,
					   flags, aio_done, a);
	else if (a->write)
		tblk_blk_pwritev(io->blk, (uint64_t)a->offset, a->vec.iov, a->vec.niov, flags,
				 aio_done, a);
	else
		tblk_blk_preadv(io->blk, (uint64_t)a->offset, a->vec.iov, a->vec.niov, flags,
				aio_done, a);
}

/* Option letters; returns 1 if -i ended the command, 0 to go on, -errno on error. */
static int aio_getopt(struct aio_ctx *a, int argc, char **argv, unsigned int *flags, bool *unmap)
{
	const char *opts = a->write ? "CfiqP:uz" : "CiqvP:";
	int c;

	while ((c = getopt(argc, argv, opts)) != -1) {
		switch (c) {
		case 'C': a->csv = true; break;
		case 'q': a->quiet = true; break;
		case 'v': a->dump = true; break;
		case 'f': *flags |= TBLK_REQ_FUA; break;
		case 'u': *unmap = true; break;
		case 'z': a->zeroes = true; break;
		case 'i':
			printf("injecting invalid %s request\n", a->write ? "write" : "read");
			return 1;
		case 'P':
			a->has_pattern = true;
			a->pattern = io_parse_pattern(optarg);
			if (a->pattern < 0)
				return -EINVAL;
			break;
		default:
			return io_usage_of(argv[0]);
		}
	}
	if (optind > argc - 2)
		return io_usage_of(argv[0]);
	return 0;
}

/* The lengths after the offset: an iovec, or for -z a single length. */
static int aio_parse_lengths(struct aio_ctx *a, int nr, char **lens)
{
	int fill = a->write ? (a->has_pattern ? a->pattern : 0xcd) : 0xab;

	if (!a->zeroes)
		return io_vec_init(&a->vec, lens, nr, fill);
	if (nr != 1) {
		printf("-z supports only a single length parameter\n");
		return -EINVAL;
	}
	a->zero_bytes = io_cvtnum(lens[0]);
	if (a->zero_bytes < 0) {
		io_print_cvtnum_err(a->zero_bytes, lens[0]);
		return -EINVAL;
	}
	return 0;
}

static int aio_rw(struct io_ctx *io, int argc, char **argv, bool write)
{
	struct aio_ctx *a = g_new0(struct aio_ctx, 1);
	unsigned int flags = 0;
	bool unmap = false;
	int ret;

	a->io = io;
	a->write = write;
	ret = aio_getopt(a, argc, argv, &flags, &unmap);
	if (ret != 0)
		goto fail;
	if (unmap && !a->zeroes) {
		printf("-u requires -z to be specified\n");
		ret = -EINVAL;
		goto fail;
	}
	a->offset = io_cvtnum(argv[optind]);
	if (a->offset < 0) {
		io_print_cvtnum_err(a->offset, argv[optind]);
		ret = -EINVAL;
		goto fail;
	}
	ret = aio_parse_lengths(a, argc - optind - 1, argv + optind + 1);
	if (ret < 0)
		goto fail;
	aio_submit(a, flags | (unmap ? TBLK_REQ_MAY_UNMAP : 0));
	return 0;
fail:
	g_free(a);
	return ret > 0 ? 0 : ret;
}

int io_aio_read_f(struct io_ctx *io, int argc, char **argv)
{
	return aio_rw(io, argc, argv, false);
}

int io_aio_write_f(struct io_ctx *io, int argc, char **argv)
{
	return aio_rw(io, argc, argv, true);
}

void io_drain_all(struct io_ctx *io)
{
	/* Drain returns once every callback has run, those of refused requests included. */
	tblk_blk_drain(io->blk);
	assert(io->nr_aio == 0);
}

int io_aio_flush_f(struct io_ctx *io, int argc, char **argv)
{
	(void)argc, (void)argv;
	io_drain_all(io);
	return 0;
}
