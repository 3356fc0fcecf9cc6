/* SPDX-License-Identifier: MIT */
/*
 * io-cmds-alloc.c - tblk-io's "alloc" and "map": what the image itself (not its backing
 * files) has allocated, from the backend's block status. "alloc" adds up the allocated
 * bytes of one range; "map" lists the whole image as runs of allocated and unallocated
 * bytes. Like qemu-io, both look at the top layer only.
 *
 * Threading: the tool's single thread.
 */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "tools/io-int.h"

/*
 * Whether [offset, offset + bytes) starts allocated, and in *pnum how many bytes from
 * @offset share that state (consecutive answers of the block status merged). 0 or 1, or
 * -errno.
 */
static int allocated_run(struct tblk_blk *blk, uint64_t offset, uint64_t bytes, uint64_t *pnum)
{
	uint64_t done = 0, n;
	int first = -1, ret;

	while (done < bytes) {
		ret = tblk_blk_block_status(blk, offset + done, bytes - done, &n, NULL);
		/* As qemu-io's: an error past the first answer ends the run, told next time. */
		if (ret < 0 && first >= 0)
			break;
		if (ret < 0)
			return ret;
		if (n == 0)
			break;
		ret = !!(ret & TBLK_BS_ALLOCATED);
		if (first >= 0 && ret != first)
			break;
		first = ret;
		done += n;
	}
	*pnum = done;
	return first > 0;
}

int io_alloc_f(struct io_ctx *io, int argc, char **argv)
{
	int64_t offset, count = 512, size, sum = 0;
	uint64_t pos, end, n;
	char buf[64];
	int ret;

	offset = io_cvtnum(argv[1]);
	if (offset < 0) {
		io_print_cvtnum_err(offset, argv[1]);
		return -EINVAL;
	}
	if (argc == 3) {
		count = io_cvtnum(argv[2]);
		if (count < 0) {
			io_print_cvtnum_err(count, argv[2]);
			return -EINVAL;
		}
	}
	size = tblk_blk_getlength(io->blk);
	if (size < 0) {
		printf("getlength: %s\n", strerror((int)-size));
		return (int)size;
	}
	/* The range is cut at the end of the image; past it, nothing is allocated. */
	if (offset >= size)
		count = 0;
	else if (count > size - offset)
		count = size - offset;
	end = (uint64_t)offset + (uint64_t)count;
	for (pos = (uint64_t)offset; pos < end; pos += n) {
		ret = allocated_run(io->blk, pos, end - pos, &n);
		if (ret < 0) {
			printf("alloc failed: %s\n", strerror(-ret));
			return ret;
		}
		if (n == 0)
			break;
		if (ret)
			sum += (int64_t)n;
	}
	tool_fmt_size_io(buf, sizeof(buf), (double)offset);
	printf("%" PRId64 "/%" PRId64 " bytes allocated at offset %s\n", sum, count, buf);
	return 0;
}

int io_map_f(struct io_ctx *io, int argc, char **argv)
{
	int64_t size = tblk_blk_getlength(io->blk);
	char len_str[64], off_str[64];
	uint64_t pos, n;
	int ret;

	(void)argc, (void)argv;
	if (size < 0) {
		tool_error("could not get image length: %s", strerror((int)-size));
		return (int)size;
	}
	for (pos = 0; pos < (uint64_t)size; pos += n) {
		ret = allocated_run(io->blk, pos, (uint64_t)size - pos, &n);
		if (ret < 0) {
			tool_error("Failed to get allocation status: %s", strerror(-ret));
			return ret;
		}
		if (n == 0)
			break;
		tool_fmt_size_io(len_str, sizeof(len_str), (double)n);
		tool_fmt_size_io(off_str, sizeof(off_str), (double)pos);
		printf("%s (0x%" PRIx64 ") bytes %s at offset %s (0x%" PRIx64 ")\n", len_str, n,
		       ret ? "    allocated" : "not allocated", off_str, pos);
	}
	return 0;
}
