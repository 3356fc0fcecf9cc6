/* SPDX-License-Identifier: MIT */
/*
 * io-cmds-vec.c - tblk-io's blocking "readv" and "writev": one request over several buffers
 * (one per length argument), waited for while the loop runs, so earlier AIO requests
 * complete and print meanwhile.
 *
 * Threading: the tool's single thread, which runs the backend's loop.
 */
#include <errno.h>
#include <getopt.h>
#include <string.h>

#include "tools/io-int.h"

struct vec_opts {
	bool csv, quiet, dump, has_pattern;
	int pattern;
	unsigned int flags;		/* TBLK_REQ_* */
};

/* Option letters of readv (@write false) or writev; 0, or -errno after printing. */
static int vec_getopt(int argc, char **argv, bool write, struct vec_opts *o)
{
	int c;

	while ((c = getopt(argc, argv, write ? "CfqP:" : "CqvP:")) != -1) {
		switch (c) {
		case 'C': o->csv = true; break;
		case 'q': o->quiet = true; break;
		case 'v': o->dump = true; break;
		case 'f': o->flags |= TBLK_REQ_FUA; break;
		case 'P':
			o->has_pattern = true;
			o->pattern = io_parse_pattern(optarg);
			if (o->pattern < 0)
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

static int vec_rw(struct io_ctx *io, int argc, char **argv, bool write)
{
	struct vec_opts o = { .pattern = 0xcd };
	struct io_sync r = { false, 0 };
	struct io_vec v;
	int64_t offset;
	uint64_t t0, t1;
	int ret;

	ret = vec_getopt(argc, argv, write, &o);
	if (ret < 0)
		return ret;
	offset = io_cvtnum(argv[optind]);
	if (offset < 0) {
		io_print_cvtnum_err(offset, argv[optind]);
		return -EINVAL;
	}
	if (io_vec_init(&v, argv + optind + 1, argc - optind - 1, write ? o.pattern : 0xab) < 0)
		return -EINVAL;
	t0 = tool_now_ns();
	if (write)
		tblk_blk_pwritev(io->blk, (uint64_t)offset, v.iov, v.niov, o.flags, io_sync_cb, &r);
	else
		tblk_blk_preadv(io->blk, (uint64_t)offset, v.iov, v.niov, 0, io_sync_cb, &r);
	io_wait(io, &r.done);
	t1 = tool_now_ns();
	ret = r.ret;
	if (ret < 0) {
		printf("%s failed: %s\n", write ? "writev" : "readv", strerror(-ret));
		goto out;
	}
	if (!write && o.has_pattern && !io_verify_pattern(v.buf, o.pattern, offset, v.total))
		ret = -EINVAL;
	if (o.quiet)
		goto out;
	if (o.dump)
		io_dump_buffer(v.buf, offset, v.total);
	io_print_report(write ? "wrote" : "read", t0, t1, offset, v.total, v.total, 1, o.csv);
out:
	io_vec_destroy(&v);
	return ret;
}

int io_readv_f(struct io_ctx *io, int argc, char **argv)
{
	return vec_rw(io, argc, argv, false);
}

int io_writev_f(struct io_ctx *io, int argc, char **argv)
{
	return vec_rw(io, argc, argv, true);
}
