/* SPDX-License-Identifier: MIT */
/*
 * io-cmds-misc.c - tblk-io's "discard", "flush", "length", "info" and "truncate" commands.
 * (The generic ones, "help" and "quit", live with the command table in io-cmd.c.)
 *
 * Threading: the tool's single thread, which runs the backend's loop.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <string.h>

#include "tools/io-int.h"

int io_discard_f(struct io_ctx *io, int argc, char **argv)
{
	struct io_sync w = { false, 0 };
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
	tblk_blk_aio_pdiscard(io->blk, (uint64_t)offset, (uint64_t)bytes, io_sync_cb, &w);
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
	struct io_sync w = { false, 0 };

	(void)argc, (void)argv;
	tblk_blk_aio_flush(io->blk, io_sync_cb, &w);
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

/*
 * Where qcow2 keeps the VM state: right after the guest data, at the virtual size rounded
 * up to what one L2 table maps (qemu's vm_state_offset).
 */
static uint64_t qcow2_vm_state_offset(const struct tblk_format_info *fi, uint64_t size)
{
	uint64_t entries = fi->cluster_size / (fi->extended_l2 ? 16u : 8u);
	uint64_t span = (uint64_t)fi->cluster_size * entries;

	return span ? (size + span - 1) / span * span : 0;
}

int io_info_f(struct io_ctx *io, int argc, char **argv)
{
	const char *fmt = tblk_blk_format_name(io->blk);
	const char *proto = tblk_blk_protocol_name(io->blk);
	struct tblk_format_info fi = { 0 };
	int64_t size = tblk_blk_getlength(io->blk);
	uint64_t vm_state = 0;
	char cs[64], vs[64];
	int ret;

	(void)argc, (void)argv;
	printf("format name: %s\n", fmt);
	/* qemu-io prints the name twice when the image is opened as a bare protocol. */
	if (!strcmp(fmt, proto))
		printf("format name: %s\n", fmt);
	/*
	 * The rest comes from the driver's information, which raw asks of its protocol, and
	 * which the null protocols do not have: qemu-io stops there and fails.
	 */
	if ((!strcmp(fmt, proto) || !strcmp(fmt, "raw")) && !strncmp(proto, "null-", 5))
		return -ENOTSUP;
	ret = tblk_blk_get_format_info(io->blk, &fi);
	if (ret == -ENOTSUP)
		return ret;	/* raw over nbd: no driver information either */
	if (ret < 0)
		memset(&fi, 0, sizeof(fi));
	if (fi.is_qcow2 && size > 0)
		vm_state = qcow2_vm_state_offset(&fi, (uint64_t)size);
	tool_fmt_size_io(cs, sizeof(cs), (double)fi.cluster_size);
	tool_fmt_size_io(vs, sizeof(vs), (double)vm_state);
	printf("cluster size: %s\nvm state offset: %s\n", cs, vs);
	tool_print_format_specific(&fi);
	return 0;
}

/* Largest image size the block layer accepts (qemu's BDRV_MAX_LENGTH). */
#define IO_MAX_LENGTH	(INT64_MAX - (1LL << 30) + 1)

int io_truncate_f(struct io_ctx *io, int argc, char **argv)
{
	static const char *const modes[] = { "off", "metadata", "falloc", "full", NULL };
	const char *prealloc = NULL;
	GError *err = NULL;
	int64_t size;
	unsigned int i;
	int c;

	while ((c = getopt(argc, argv, "m:")) != -1) {
		if (c != 'm')
			return io_usage_of("truncate");
		for (i = 0; modes[i] && strcmp(modes[i], optarg); i++)
			;
		if (!modes[i]) {
			tool_error("Invalid preallocation mode '%s'", optarg);
			return -EINVAL;
		}
		prealloc = modes[i];
	}
	/* qemu-io reads past its arguments here ("truncate -m off") and crashes. */
	if (optind >= argc)
		return io_usage_of("truncate");
	size = io_cvtnum(argv[optind]);
	/* qemu-io names its first argument, whatever it was ("-m" in "truncate -m full x") */
	if (size < 0) {
		io_print_cvtnum_err(size, argv[1]);
		return -EINVAL;
	}
	if (size > IO_MAX_LENGTH) {
		tool_error("offset(%" PRId64 ") exceeds maximum(%lld)", size,
			   (long long)IO_MAX_LENGTH);
		return -EFBIG;
	}
	if (tblk_blk_truncate(io->blk, (uint64_t)size, prealloc, &err) < 0) {
		tool_error_gerror(err, NULL);
		return -EINVAL;
	}
	return 0;
}
