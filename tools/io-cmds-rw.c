/* SPDX-License-Identifier: MIT */
/*
 * io-cmds-rw.c - tblk-io's blocking "read" and "write" commands. Each submits one
 * asynchronous request and runs the loop until it completes, so AIO requests started by
 * earlier commands complete (and print) meanwhile, as in qemu-io.
 *
 * Threading: the tool's single thread.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "tools/io-int.h"

enum rw_kind { RW_READ, RW_WRITE, RW_ZEROES };

/* Runs one request of @kind and waits for it, processing other completions meanwhile. */
static int do_rw(struct io_ctx *io, enum rw_kind kind, int64_t offset, void *buf, int64_t bytes,
		 unsigned int flags)
{
	struct io_sync r = { false, 0 };
	struct iovec iov = { buf, (size_t)bytes };

	if (io_out_of_range(io, offset, (uint64_t)bytes))
		return -EIO;
	/*
	 * nothing to do: qemu completes it without running the loop either (not a write: that
	 * flushes in qemu-io's default writethrough mode)
	 */
	if (bytes == 0 && kind != RW_WRITE)
		return 0;
	if (kind == RW_READ)
		tblk_blk_preadv(io->blk, (uint64_t)offset, &iov, 1, flags, io_sync_cb, &r);
	else if (kind == RW_WRITE)
		tblk_blk_pwritev(io->blk, (uint64_t)offset, &iov, 1, flags, io_sync_cb, &r);
	else
		tblk_blk_aio_pwrite_zeroes(io->blk, (uint64_t)offset, (uint64_t)bytes, flags,
					   io_sync_cb, &r);
	io_wait(io, &r.done);
	return r.ret;
}

/* Parses "off len" (the last two arguments); -EINVAL after printing the error. */
static int parse_off_len(char **argv, int64_t *offset, int64_t *count, const char *extra)
{
	*offset = io_cvtnum(argv[0]);
	if (*offset < 0) {
		io_print_cvtnum_err(*offset, argv[0]);
		return -EINVAL;
	}
	*count = io_cvtnum(argv[1]);
	if (*count < 0) {
		io_print_cvtnum_err(*count, argv[1]);
		return -EINVAL;
	}
	if (*count > TOOL_REQUEST_MAX_BYTES) {
		printf("length cannot exceed %lld%s, given %s\n", TOOL_REQUEST_MAX_BYTES, extra,
		       argv[1]);
		return -EINVAL;
	}
	return 0;
}

static int parse_num_opt(const char *arg, int64_t *val)
{
	*val = io_cvtnum(arg);
	if (*val < 0) {
		io_print_cvtnum_err(*val, arg);
		return -EINVAL;
	}
	return 0;
}

static int check_sector_aligned(int64_t v, const char *what)
{
	if (v & 511) {
		printf("%lld is not a sector-aligned value for '%s'\n", (long long)v, what);
		return -EINVAL;
	}
	return 0;
}

struct read_opts {
	bool csv, quiet, dump, vmstate, has_pattern, has_poff, has_plen;
	int pattern;
	int64_t poff, plen;
};

static int read_getopt(int argc, char **argv, struct read_opts *o)
{
	int c;

	while ((c = getopt(argc, argv, "bCqvpP:s:l:")) != -1) {
		switch (c) {
		case 'b': o->vmstate = true; break;
		case 'C': o->csv = true; break;
		case 'q': o->quiet = true; break;
		case 'v': o->dump = true; break;
		case 'p': break;
		case 'P':
			o->has_pattern = true;
			o->pattern = io_parse_pattern(optarg);
			if (o->pattern < 0)
				return -EINVAL;
			break;
		case 's':
			o->has_poff = true;
			if (parse_num_opt(optarg, &o->poff) < 0)
				return -EINVAL;
			break;
		case 'l':
			o->has_plen = true;
			if (parse_num_opt(optarg, &o->plen) < 0)
				return -EINVAL;
			break;
		default:
			return io_usage_of("read");
		}
	}
	if (optind != argc - 2)
		return io_usage_of("read");
	return 0;
}

int io_read_f(struct io_ctx *io, int argc, char **argv)
{
	struct read_opts o = { 0 };
	int64_t offset, count;
	uint64_t t0, t1;
	void *buf;
	int ret;

	ret = read_getopt(argc, argv, &o);
	if (ret < 0 || (ret = parse_off_len(argv + optind, &offset, &count, "")) < 0)
		return ret;
	if (!o.has_pattern && (o.has_poff || o.has_plen))
		return io_usage_of("read");
	if (!o.has_plen)
		o.plen = count - o.poff;
	if (o.plen < 0 || o.plen + o.poff > count) {
		printf("pattern verification range exceeds end of read data\n");
		return -EINVAL;
	}
	if (o.vmstate && ((ret = check_sector_aligned(offset, "offset")) < 0 ||
			  (ret = check_sector_aligned(count, "count")) < 0))
		return ret;
	buf = tool_buf_new((size_t)count, 0xab);
	if (!buf) {
		printf("read failed: %s\n", strerror(ENOMEM));
		return -ENOMEM;
	}
	t0 = tool_now_ns();
	ret = o.vmstate ? tblk_blk_load_vmstate(io->blk, (uint64_t)offset, buf, (uint64_t)count) :
			  do_rw(io, RW_READ, offset, buf, count, 0);
	t1 = tool_now_ns();
	if (ret < 0) {
		printf("read failed: %s\n", strerror(-ret));
		goto out;
	}
	if (o.has_pattern &&
	    !io_verify_pattern((char *)buf + o.poff, o.pattern, offset + o.poff, o.plen))
		ret = -EINVAL;
	if (!o.quiet) {
		if (o.dump)
			io_dump_buffer(buf, offset, count);
		io_print_report("read", t0, t1, offset, count, count, 1, o.csv);
	}
out:
	tool_buf_free(buf);
	return ret;
}

/* Fills @len bytes with the contents of @path, repeated; false after printing why not. */
static bool fill_from_file(void *buf, size_t len, const char *path)
{
	FILE *f = fopen(path, "r");
	size_t n, done;

	if (!f) {
		perror(path);
		return false;
	}
	n = fread(buf, 1, len, f);
	if (ferror(f)) {
		perror(path);
		fclose(f);
		return false;
	}
	fclose(f);
	if (n == 0 && len) {
		fprintf(stderr, "%s: file is empty\n", path);
		return false;
	}
	for (done = n; done < len; done += n) {
		if (n > len - done)
			n = len - done;
		memcpy((char *)buf + done, buf, n);
	}
	return true;
}

struct write_opts {
	bool csv, quiet, vmstate, compress, fua, no_fallback, unmap, zeroes, has_pattern;
	const char *src;
	int pattern;
};

static int write_getopt(int argc, char **argv, struct write_opts *o)
{
	int c;

	while ((c = getopt(argc, argv, "bcCfnpP:quzs:")) != -1) {
		switch (c) {
		case 'b': o->vmstate = true; break;
		case 'c': o->compress = true; break;
		case 'C': o->csv = true; break;
		case 'f': o->fua = true; break;
		case 'n': o->no_fallback = true; break;
		case 'p': break;
		case 'q': o->quiet = true; break;
		case 'u': o->unmap = true; break;
		case 'z': o->zeroes = true; break;
		case 's': o->src = optarg; break;
		case 'P':
			o->has_pattern = true;
			o->pattern = io_parse_pattern(optarg);
			if (o->pattern < 0)
				return -EINVAL;
			break;
		default:
			return io_usage_of("write");
		}
	}
	if (optind != argc - 2)
		return io_usage_of("write");
	return 0;
}

static int write_check_flags(const struct write_opts *o)
{
	const char *msg = NULL;

	/* In qemu-io's order: the first conflict found is the one reported. */
	if (o->vmstate && o->zeroes)
		msg = "-b and -z cannot be specified at the same time";
	else if (o->fua && (o->vmstate || o->compress))
		msg = "-f and -b or -c cannot be specified at the same time";
	else if (o->no_fallback && !o->zeroes)
		msg = "-n requires -z to be specified";
	else if (o->unmap && !o->zeroes)
		msg = "-u requires -z to be specified";
	else if (o->zeroes + o->has_pattern + !!o->src > 1)
		msg = "Only one of -z, -P, and -s can be specified at the same time";
	if (msg) {
		printf("%s\n", msg);
		return -EINVAL;
	}
	return 0;
}

static int do_write(struct io_ctx *io, const struct write_opts *o, int64_t offset, void *buf,
		    int64_t count)
{
	unsigned int flags = o->fua ? TBLK_REQ_FUA : 0;

	/* -z wins over -c (which is then ignored), -b over -c, as in qemu-io. */
	if (o->zeroes) {
		flags |= (o->unmap ? TBLK_REQ_MAY_UNMAP : 0) |
			 (o->no_fallback ? TBLK_REQ_NO_FALLBACK : 0);
		return do_rw(io, RW_ZEROES, offset, NULL, count, flags);
	}
	if (o->vmstate)
		return tblk_blk_save_vmstate(io->blk, (uint64_t)offset, buf, (uint64_t)count);
	if (o->compress)
		flags |= TBLK_REQ_COMPRESSED;	/* formats without clusters refuse it */
	return do_rw(io, RW_WRITE, offset, buf, count, flags);
}

int io_write_f(struct io_ctx *io, int argc, char **argv)
{
	struct write_opts o = { .pattern = 0xcd };
	int64_t offset, count;
	uint64_t t0, t1;
	void *buf = NULL;
	int ret;

	ret = write_getopt(argc, argv, &o);
	if (ret < 0 || (ret = write_check_flags(&o)) < 0 ||
	    (ret = parse_off_len(argv + optind, &offset, &count, " without -n")) < 0)
		return ret;
	if ((o.compress || o.vmstate) &&
	    ((ret = check_sector_aligned(offset, "offset")) < 0 ||
	     (ret = check_sector_aligned(count, "count")) < 0))
		return ret;
	if (!o.zeroes) {
		buf = tool_buf_new((size_t)count, o.pattern);
		if (!buf) {
			printf("write failed: %s\n", strerror(ENOMEM));
			return -ENOMEM;
		}
		if (o.src && !fill_from_file(buf, (size_t)count, o.src)) {
			tool_buf_free(buf);
			return -EINVAL;
		}
	}
	t0 = tool_now_ns();
	ret = do_write(io, &o, offset, buf, count);
	t1 = tool_now_ns();
	if (ret < 0)
		printf("write failed: %s\n", strerror(-ret));
	else if (!o.quiet)
		io_print_report("wrote", t0, t1, offset, count, count, 1, o.csv);
	tool_buf_free(buf);
	return ret;
}
