/* SPDX-License-Identifier: MIT */
/*
 * tblk-vhost-user-blk - one image as a vhost-user-blk back-end, started the way the
 * vhost-user spec's "backend program conventions" say managers start back-ends:
 * --socket-path=PATH or --fd=FDNUM, --print-capabilities, --blk-file=PATH, --read-only;
 * ends on SIGTERM (and SIGINT) after the requests in flight completed and the image was
 * flushed. Extra options: --format=FMT (default raw), --num-queues=N, --aio=MODE,
 * --cache=MODE, --logical-block-size=N.
 *
 * Threading: one thread runs the loop that serves the socket and the image.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "common/common.h"
#include "threadpool/threadpool.h"
#include "virtio-blk/virtio-blk.h"
#include "tools/tool-util.h"

static struct tblk_loop *loop;
static int sig_fd = -1;

static void on_signal(void *opaque)
{
	struct signalfd_siginfo si;

	if (read(sig_fd, &si, sizeof(si)) < 0) {
		/* Stop anyway. */
	}
	tblk_loop_stop(loop);
}

static void usage(void)
{
	printf("Usage: %s [--socket-path=PATH | --fd=FDNUM] --blk-file=PATH [--read-only]\n"
	       "       [--format=FMT] [--num-queues=N] [--aio=threads|native|io_uring]\n"
	       "       [--cache=MODE] [--logical-block-size=N]\n"
	       "       %s --print-capabilities\n"
	       "Serves an image as a vhost-user-blk device.\n", tool_progname, tool_progname);
}

enum { OPT_SOCK = 256, OPT_FD, OPT_CAPS, OPT_FILE, OPT_RO, OPT_FMT, OPT_NQ, OPT_AIO,
       OPT_CACHE, OPT_LBS };

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "socket-path", required_argument, NULL, OPT_SOCK },
		{ "fd", required_argument, NULL, OPT_FD },
		{ "print-capabilities", no_argument, NULL, OPT_CAPS },
		{ "blk-file", required_argument, NULL, OPT_FILE },
		{ "read-only", no_argument, NULL, OPT_RO },
		{ "format", required_argument, NULL, OPT_FMT },
		{ "num-queues", required_argument, NULL, OPT_NQ },
		{ "aio", required_argument, NULL, OPT_AIO },
		{ "cache", required_argument, NULL, OPT_CACHE },
		{ "logical-block-size", required_argument, NULL, OPT_LBS },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *sock = NULL, *file = NULL, *fmt = "raw";
	struct tblk_vu_opts vo = { .blk = { .num_queues = 1, .logical_block_size = 512,
					    .writable = true, .serial = "tblk" },
				   .listen_fd = -1 };
	unsigned int flags = TBLK_OPEN_RDWR;
	struct tblk_vu_server *srv = NULL;
	g_autoptr(GHashTable) opts = tblk_opts_new();
	struct tblk_blk *blk = NULL;
	GError *err = NULL;
	unsigned long n;
	sigset_t sigs;
	int opt, ret = 1;

	tool_set_progname(argv[0]);
	while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (opt) {
		case OPT_CAPS:
			printf("{\n  \"type\": \"block\",\n  \"features\": [\n"
			       "    \"read-only\",\n    \"blk-file\"\n  ]\n}\n");
			return 0;
		case OPT_SOCK:
			sock = optarg;
			break;
		case OPT_FD:
			if (tool_strtoul(optarg, &n) < 0 || n > INT32_MAX) {
				tool_error("invalid file descriptor '%s'", optarg);
				return 1;
			}
			vo.listen_fd = (int)n;
			break;
		case OPT_FILE:
			file = optarg;
			break;
		case OPT_RO:
			flags &= ~TBLK_OPEN_RDWR;
			vo.blk.writable = false;
			break;
		case OPT_FMT:
			fmt = optarg;
			break;
		case OPT_NQ:
		case OPT_LBS:
			if (tool_strtoul(optarg, &n) < 0 || n > UINT32_MAX) {
				tool_error("invalid number '%s'", optarg);
				return 1;
			}
			if (opt == OPT_NQ)
				vo.blk.num_queues = (unsigned int)n;
			else
				vo.blk.logical_block_size = (uint32_t)n;
			break;
		case OPT_AIO:
			if (tblk_parse_aio_mode(optarg, &flags, &err) < 0)
				goto out_err;
			break;
		case OPT_CACHE:
			if (tblk_parse_cache_mode(optarg, &flags, &err) < 0)
				goto out_err;
			break;
		case 'h':
			usage();
			return 0;
		default:
			return 1;
		}
	}
	if (optind < argc) {
		tool_error("unexpected argument '%s'", argv[optind]);
		return 1;
	}
	if (!sock == (vo.listen_fd < 0)) {
		tool_error("exactly one of --socket-path and --fd is needed");
		return 1;
	}
	if (!file) {
		tool_error("--blk-file is needed");
		return 1;
	}
	vo.path = sock;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	loop = tblk_loop_new(NULL);
	g_hash_table_insert(opts, g_strdup("driver"), g_strdup(fmt));
	if (tblk_blk_open(&blk, file, opts, flags, loop, &err) < 0)
		goto out_err;
	if (tblk_vu_server_start(&srv, blk, &vo, &err) < 0)
		goto out_err;
	sig_fd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
	tblk_loop_set_fd_handler(loop, sig_fd, on_signal, NULL, NULL, NULL);
	tblk_loop_run(loop);
	tblk_loop_set_fd_handler(loop, sig_fd, NULL, NULL, NULL, NULL);
	close(sig_fd);
	tblk_vu_server_stop(srv);
	tblk_blk_drain(blk);
	tblk_vu_server_free(srv);
	ret = vo.blk.writable && tblk_blk_flush(blk) < 0 ? 1 : 0;
	tblk_blk_close(blk);
	tblk_loop_free(loop);
	return ret;
out_err:
	tool_error("%s", err->message);
	g_clear_error(&err);
	tblk_blk_close(blk);
	if (loop)
		tblk_loop_free(loop);
	return 1;
}
