/* SPDX-License-Identifier: MIT */
/*
 * tblk-img.c - the main program of tblk-img, a command-line compatible replacement for
 * qemu-img: global options, subcommand dispatch, help and version, the error conventions
 * shared by all subcommands and the progress display of -p (declared in img-int.h).
 *
 * Threading: single-threaded (the progress figure is only read by the SIGUSR1 handler's
 * flag test, on the same thread).
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "config-host.h"
#include "tools/img-int.h"

#ifndef TBLK_VERSION
#define TBLK_VERSION "0"
#endif

void img_error_exit(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", tool_progname);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\nTry 'qemu-img --help' for more information\n");
	exit(1);
}

void img_bad_option(int c, char **argv)
{
	if (c == ':')
		img_error_exit("missing argument for option '%s'", argv[optind - 1]);
	img_error_exit("unrecognized option '%s'", argv[optind - 1]);
}

void img_version(void)
{
	printf("qemu-img version 7.2.22 (tblk %s)\n", TBLK_VERSION);
	printf("tblk: a block I/O stack; command-line compatible with qemu-img 7.2\n");
}

void img_help(void)
{
	img_version();
	printf("usage: qemu-img [standard options] command [command options]\n"
	       "Create, inspect and exercise disk images (tblk).\n\n"
	       "    '-h', '--help'       print this help and exit\n"
	       "    '-V', '--version'    print the version and exit\n"
	       "    '-T', '--trace'      accepted, ignored\n\n"
	       "Commands:\n"
	       "  bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] "
	       "[-i aio] [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q] "
	       "[-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename\n"
	       "  bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... "
	       "[-b source_file [-F source_fmt]] [-g granularity] [--object objectdef] "
	       "[--image-opts | -f fmt] filename bitmap\n"
	       "  commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache] [-b base] "
	       "[-r rate_limit] [-d] [-p] filename\n"
	       "  compare [--object objectdef] [--image-opts] [-f fmt] [-F fmt] [-T src_cache] "
	       "[-p] [-q] [-s] [-U] filename1 filename2\n"
	       "  convert [--object objectdef] [--image-opts] [--target-image-opts] "
	       "[--target-is-zero] [--bitmaps] [-U] [-C] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] "
	       "[-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] "
	       "[-l snapshot_param] [-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W] "
	       "[--salvage] filename [filename2 [...]] output_filename\n"
	       "  create [--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]] "
	       "[-u] [-o options] filename [size]\n"
	       "  dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] "
	       "[skip=blocks] if=input of=output\n"
	       "  info [--object objectdef] [--image-opts] [-f fmt] [--output=ofmt] "
	       "[--backing-chain] [-U] filename\n"
	       "  map [--object objectdef] [--image-opts] [-f fmt] [--start-offset=offset] "
	       "[--max-length=len] [--output=ofmt] [-U] filename\n"
	       "  rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] "
	       "[-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] filename\n"
	       "  snapshot [--object objectdef] [--image-opts] [-U] [-q] [-l | -a snapshot | "
	       "-c snapshot | -d snapshot] filename\n\n"
	       "Sizes take the suffixes k, M, G, T, P and E (powers of 1024); 'b' means bytes.\n\n"
	       "Supported formats:");
	for (const char *const *f = tblk_format_names(); *f; f++)
		printf(" %s", *f);
	printf("\n");
	exit(0);
}

int64_t img_cvtnum_full(const char *name, const char *value, int64_t min, int64_t max)
{
	uint64_t v;
	bool hex_suffix;
	int ret = tool_strtosz(value, &v, &hex_suffix);

	if (hex_suffix)
		tool_warn("Using a multiplier suffix on hex numbers is deprecated: %s", value);
	if (ret < 0 && ret != -ERANGE) {
		tool_error("Invalid %s specified. You may use k, M, G, T, P or E suffixes for",
			   name);
		tool_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
		return -1;
	}
	if (ret == -ERANGE || v > (uint64_t)max || (int64_t)v < min) {
		tool_error("Invalid %s specified. Must be between %lld and %lld.", name,
			   (long long)min, (long long)max);
		return -1;
	}
	return (int64_t)v;
}

/* ---------------------------------------------------------------- progress (-p) */

static struct {
	bool enabled;
	float current;		/* the figure, percent */
	float last_print;	/* the figure last printed */
	float min_skip;
} progress;

/* Set by SIGUSR1 when -p is off: the next update prints the figure once. */
static volatile sig_atomic_t progress_requested;

static void progress_sigusr1(int sig)
{
	(void)sig;
	progress_requested = 1;
}

void img_progress_init(bool enabled, float min_skip)
{
	struct sigaction sa = { .sa_handler = progress_sigusr1 };

	progress.enabled = enabled;
	progress.current = 0;
	progress.last_print = 0;
	progress.min_skip = min_skip;
	if (!enabled) {
		sigemptyset(&sa.sa_mask);
		sigaction(SIGUSR1, &sa, NULL);
	}
}

void img_progress_print(float delta, int max)
{
	/* Single precision throughout, as qemu computes it: the printed figures must agree. */
	float cur = max == 0 ? delta : progress.current + delta / 100 * (float)max;

	/* qemu caps the figure (rebase's last chunk may overshoot). */
	if (cur > 100)
		cur = 100;

	if (progress_requested) {
		progress_requested = 0;
		printf("    (%3.2f/100%%)\n", (double)progress.current);
		fflush(stdout);
	}
	progress.current = cur;
	if (!(cur > progress.last_print + progress.min_skip ||
	      cur < progress.last_print - progress.min_skip || cur == 0 || cur == 100))
		return;
	progress.last_print = cur;
	if (progress.enabled) {
		printf("    (%3.2f/100%%)\r", (double)cur);
		fflush(stdout);
	}
}

void img_progress_end(void)
{
	if (progress.enabled) {
		printf("\n");
		fflush(stdout);
	}
}

/* ---------------------------------------------------------------- dispatch */

/* Subcommands qemu-img 7.2 has that tblk-img does not implement yet. */
static const char *const unimplemented[] = {
	NULL,
};

static const struct {
	const char *name;
	int (*fn)(int argc, char **argv);
} subcommands[] = {
	{ "amend", img_amend },
	{ "bench", img_bench },
	{ "bitmap", img_bitmap },
	{ "check", img_check },
	{ "commit", img_commit },
	{ "compare", img_compare },
	{ "convert", img_convert },
	{ "create", img_create },
	{ "dd", img_dd },
	{ "info", img_info },
	{ "map", img_map },
	{ "snapshot", img_snapshot },
	{ "measure", img_measure },
	{ "rebase", img_rebase },
	{ "resize", img_resize },
};

static int dispatch(int argc, char **argv)
{
	const char *cmd = argv[0];
	unsigned int i;

	for (i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++) {
		if (!strcmp(cmd, subcommands[i].name)) {
			optind = 0;	/* glibc: start over on the subcommand's vector */
			return subcommands[i].fn(argc, argv);
		}
	}
	for (i = 0; unimplemented[i]; i++) {
		if (!strcmp(cmd, unimplemented[i])) {
			tool_error("Command '%s' is not implemented by tblk yet", cmd);
			return 1;
		}
	}
	img_error_exit("Command not found: %s", cmd);
}

int main(int argc, char **argv)
{
	static const struct option long_opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ "trace", required_argument, NULL, 'T' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	tool_set_progname(argv[0]);
	if (argc < 2)
		img_error_exit("Not enough arguments");
	while ((c = getopt_long(argc, argv, "+:hVT:", long_opts, NULL)) != -1) {
		switch (c) {
		case 'h':
			img_help();
		case 'V':
			img_version();
			return 0;
		case 'T':
			break;
		default:
			img_bad_option(c, argv);
		}
	}
	if (optind >= argc)
		return 0;
	return dispatch(argc - optind, argv + optind);
}
