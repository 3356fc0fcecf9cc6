/* SPDX-License-Identifier: MIT */
/*
 * io-cmds-debug.c - tblk-io's commands for test scripts: "sleep" (the loop keeps running, so
 * AIO requests complete and print meanwhile), "abort" (ends the process as a crash would:
 * buffered output is lost), "sigraise" (flushes the output first), and the blkdebug
 * breakpoint commands "break", "remove_break", "resume" and "wait_break". We have no
 * blkdebug driver, so the first three fail as qemu-io's do on an image without one, and
 * "wait_break" waits forever, as qemu-io's does, for a breakpoint that cannot be hit.
 *
 * Threading: the tool's single thread, which runs the backend's loop.
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

int io_break_f(struct io_ctx *io, int argc, char **argv)
{
	(void)io, (void)argc, (void)argv;
	printf("Could not set breakpoint: %s\n", strerror(ENOTSUP));
	return -ENOTSUP;
}

int io_remove_break_f(struct io_ctx *io, int argc, char **argv)
{
	(void)io, (void)argc;
	printf("Could not remove breakpoint %s: %s\n", argv[1], strerror(ENOTSUP));
	return -ENOTSUP;
}

int io_resume_f(struct io_ctx *io, int argc, char **argv)
{
	(void)io, (void)argc, (void)argv;
	printf("Could not resume request: %s\n", strerror(ENOTSUP));
	return -ENOTSUP;
}

int io_wait_break_f(struct io_ctx *io, int argc, char **argv)
{
	(void)argc, (void)argv;
	for (;;)
		io_wait_until(io, UINT64_MAX);
}
