/* SPDX-License-Identifier: MIT */
/*
 * io-cmds-debug.c - tblk-io's commands for test scripts: "sleep" (the loop keeps running, so
 * AIO requests complete and print meanwhile), "abort" (ends the process as a crash would:
 * buffered output is lost), "sigraise" (flushes the output first), and the blkdebug
 * breakpoint commands "break", "remove_break", "resume" and "wait_break" of a blkdebug node
 * in the image's graph (without one they fail as qemu-io's do, and "wait_break" waits
 * forever, as qemu-io's does, for a breakpoint that cannot be hit).
 *
 * Threading: the tool's single thread, which runs the backend's loop; the "blkdebug:"
 * reports of a stopped request are printed from that request's worker thread.
 */
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "tools/io-int.h"

int io_sleep_f(struct io_ctx *io, int argc, char **argv)
{
	struct timespec rt;
	uint64_t now_rt, ns;
	char *end;
	long ms;

	(void)argc;
	ms = strtol(argv[1], &end, 0);
	if (ms < 0 || *end) {
		printf("%s is not a valid number\n", argv[1]);
		return -EINVAL;
	}
	/*
	 * qemu arms a wall-clock timer at now + ms milliseconds in signed 64-bit nanoseconds:
	 * a product that wraps to a time already past expires at once. Do the same sum.
	 */
	clock_gettime(CLOCK_REALTIME, &rt);
	now_rt = (uint64_t)rt.tv_sec * 1000000000u + (uint64_t)rt.tv_nsec;
	ns = now_rt + (uint64_t)ms * 1000000u;
	if ((int64_t)ns <= (int64_t)now_rt)
		return 0;
	io_wait_until(io, tool_now_ns() + (ns - now_rt));
	return 0;
}

int io_abort_f(struct io_ctx *io, int argc, char **argv)
{
	(void)io, (void)argc, (void)argv;
	abort();
}

/*
 * Signals qemu-io takes through its event loop or ignores, so raising them has no visible
 * effect there: SIGBUS, SIGUSR1, SIGPIPE, SIGALRM, SIGIO.
 */
static bool signal_is_handled(long sig)
{
	return sig == SIGBUS || sig == SIGUSR1 || sig == SIGPIPE || sig == SIGALRM ||
	       sig == SIGIO;
}

int io_sigraise_f(struct io_ctx *io, int argc, char **argv)
{
	int64_t sig = io_cvtnum(argv[1]);

	(void)io, (void)argc;
	if (sig < 0) {
		io_print_cvtnum_err(sig, argv[1]);
		return -EINVAL;
	}
	if (sig > NSIG) {
		printf("signal argument '%s' is too large to be a valid signal\n", argv[1]);
		return -EINVAL;
	}
	/* What was printed so far comes out even if the signal ends the process. */
	fflush(stdout);
	if (!signal_is_handled((long)sig))
		raise((int)sig);
	return 0;
}

/* Runs in the stopped request's thread; stdout's lock keeps each line whole. */
static void debug_notify(void *opaque, const char *tag, bool suspended)
{
	(void)opaque;
	printf("blkdebug: %s request '%s'\n", suspended ? "Suspended" : "Resuming", tag);
}

int io_break_f(struct io_ctx *io, int argc, char **argv)
{
	int ret;

	(void)argc;
	tblk_debug_set_notify(debug_notify, NULL);
	ret = tblk_blk_debug_breakpoint(io->blk, argv[1], argv[2]);
	if (ret < 0)
		printf("Could not set breakpoint: %s\n", strerror(-ret));
	return ret;
}

int io_remove_break_f(struct io_ctx *io, int argc, char **argv)
{
	int ret;

	(void)argc;
	ret = tblk_blk_debug_remove_breakpoint(io->blk, argv[1]);
	if (ret < 0)
		printf("Could not remove breakpoint %s: %s\n", argv[1], strerror(-ret));
	return ret;
}

int io_resume_f(struct io_ctx *io, int argc, char **argv)
{
	int ret;

	(void)argc;
	ret = tblk_blk_debug_resume(io->blk, argv[1]);
	if (ret < 0)
		printf("Could not resume request: %s\n", strerror(-ret));
	return ret;
}

/* As qemu-io's: turns the loop until a request stops at @tag, forever if none ever does. */
int io_wait_break_f(struct io_ctx *io, int argc, char **argv)
{
	(void)argc;
	while (!tblk_blk_debug_is_suspended(io->blk, argv[1]))
		io_wait_until(io, tool_now_ns() + 1000000);
	return 0;
}
