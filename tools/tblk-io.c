/* SPDX-License-Identifier: MIT */
/*
 * tblk-io.c - the main program of tblk-io, a command-line compatible replacement for
 * qemu-io: option parsing, opening the image, and running the commands given with -c or,
 * without -c, read from stdin after a "<prog>> " prompt.
 *
 * Threading: one thread, which also runs the backend's loop (see io-int.h).
 */
#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config-host.h"
#include "tools/io-int.h"

#ifndef TBLK_VERSION
#define TBLK_VERSION "0"
#endif

struct io_opts {
	GPtrArray *cmds;		/* -c strings, borrowed from argv */
	const char *format;
	const char *filename;
	unsigned int flags;		/* TBLK_OPEN_* */
	bool image_opts;
	bool snapshot;
};

static void usage(FILE *f)
{
	fprintf(f, "Usage: %s [OPTIONS]... [-c STRING]... [file]\n"
		"Exercise block I/O on an image, one command at a time (tblk).\n\n"
		"  --object OBJECTDEF   define an object (throttle-group; others ignored)\n"
		"  --image-opts         the file argument is an option string\n"
		"  -c, --cmd STRING     run this command (may be repeated)\n"
		"  -f, --format FMT     the image format (default: probe)\n"
		"  -r, --read-only      open the image read-only\n"
		"  -s, --snapshot       write to a temporary overlay, never to the image\n"
		"  -n, --nocache        bypass the host page cache (-t none)\n"
		"  -C, --copy-on-read   copy data read from backing files into the image\n"
		"  -m, --misalign       accepted, ignored\n"
		"  -k, --native-aio     use Linux AIO (same as -i native)\n"
		"  -i, --aio=MODE       threads, native or io_uring\n"
		"  -t, --cache=MODE     none, writeback, writethrough, directsync or unsafe\n"
		"  -d, --discard=MODE   ignore, off, unmap or on\n"
		"  -T, --trace OPTS     accepted, ignored\n"
		"  -U, --force-share    do not lock the image\n"
		"  -h, --help           print this help and exit\n"
		"  -V, --version        print the version and exit\n\n"
		"Run '%s -c help' for the list of commands.\n", tool_progname, tool_progname);
}

static void usage_exit(int code)
{
	usage(stdout);
	exit(code);
}

enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS };

static const struct option long_opts[] = {
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, 'V' },
	{ "cmd", required_argument, NULL, 'c' },
	{ "format", required_argument, NULL, 'f' },
	{ "read-only", no_argument, NULL, 'r' },
	{ "snapshot", no_argument, NULL, 's' },
	{ "nocache", no_argument, NULL, 'n' },
	{ "copy-on-read", no_argument, NULL, 'C' },
	{ "misalign", no_argument, NULL, 'm' },
	{ "native-aio", no_argument, NULL, 'k' },
	{ "discard", required_argument, NULL, 'd' },
	{ "cache", required_argument, NULL, 't' },
	{ "trace", required_argument, NULL, 'T' },
	{ "object", required_argument, NULL, OPT_OBJECT },
	{ "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
	{ "force-share", no_argument, NULL, 'U' },
	{ "aio", required_argument, NULL, 'i' },
	{ NULL, 0, NULL, 0 },
};

static void parse_args(int argc, char **argv, struct io_opts *o)
{
	int c;

	while ((c = getopt_long(argc, argv, "hVc:d:f:rsnCmki:t:T:U", long_opts, NULL)) != -1) {
		switch (c) {
		case 'h': usage_exit(0); break;
		case 'V':
			printf("%s version 7.2.22 (tblk %s)\n", tool_progname, TBLK_VERSION);
			printf("tblk: a block I/O stack; compatible with qemu-io 7.2\n");
			exit(0);
		case 'c': g_ptr_array_add(o->cmds, optarg); break;
		case 'f': o->format = optarg; break;
		case 's': o->snapshot = true; break;
		case 'm': case 'T': break;
		case OPT_OBJECT:
			if (tool_object_add(optarg) < 0)
				exit(1);
			break;
		case OPT_IMAGE_OPTS: o->image_opts = true; break;
		case 'r': case 'n': case 'k': case 'U': case 'C': case 't': case 'i': case 'd':
			if (io_open_flag_opt(c, optarg, &o->flags) < 0)
				exit(1);
			break;
		default: usage_exit(1);
		}
	}
	if (argc - optind > 1)
		usage_exit(1);
	o->filename = optind < argc ? argv[optind] : NULL;
	if (o->image_opts && o->format) {
		tool_error("--image-opts and -f are mutually exclusive");
		exit(1);
	}
}

static int open_image(struct io_ctx *io, const struct io_opts *o)
{
	struct io_open_req r = { .filename = o->filename, .flags = o->flags,
				 .snapshot = o->snapshot };
	GError *err = NULL;
	int ret;

	r.opts = tblk_opts_new();
	if (o->image_opts) {
		r.filename = NULL;
		if (tool_opts_parse(r.opts, o->filename, &err) < 0) {
			tool_error_gerror(err, "can't open: ");
			g_hash_table_unref(r.opts);
			return -EINVAL;
		}
	} else if (o->format) {
		g_hash_table_insert(r.opts, g_strdup("driver"), g_strdup(o->format));
	}
	ret = io_open_image(io, &r);
	g_hash_table_unref(r.opts);
	return ret;
}

struct line_reader {
	GString *buf;
	bool eof;
};

/* Runs the callbacks of requests that have already completed. */
static void run_completions(struct io_ctx *io)
{
	while (tblk_loop_iterate(io->loop, false))
		;
}

/* Waits for input on stdin; while AIO is in flight, completions print meanwhile. */
static void wait_stdin(struct io_ctx *io)
{
	struct pollfd pfd = { .fd = STDIN_FILENO, .events = POLLIN };

	while (io->nr_aio) {
		run_completions(io);
		if (poll(&pfd, 1, io->nr_aio ? 1 : -1) != 0)
			return;
	}
}

/* The next line of stdin without its newline (caller frees), or NULL at the end. */
static char *read_line(struct io_ctx *io, struct line_reader *lr)
{
	char tmp[4096], *nl, *line;
	ssize_t n;

	for (;;) {
		nl = memchr(lr->buf->str, '\n', lr->buf->len);
		if (nl || (lr->eof && lr->buf->len)) {
			size_t len = nl ? (size_t)(nl - lr->buf->str) : lr->buf->len;

			line = g_strndup(lr->buf->str, len);
			g_string_erase(lr->buf, 0, nl ? len + 1 : len);
			return line;
		}
		if (lr->eof)
			return NULL;
		wait_stdin(io);
		n = read(STDIN_FILENO, tmp, sizeof(tmp));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			lr->eof = true;
		else
			g_string_append_len(lr->buf, tmp, n);
	}
}

static int command_loop(struct io_ctx *io)
{
	struct line_reader lr = { g_string_new(NULL), false };
	bool quit = false;
	int failed = 0;
	char *line;

	while (!quit) {
		printf("%s> ", tool_progname);
		fflush(stdout);
		run_completions(io);
		line = read_line(io, &lr);
		if (!line)
			break;
		failed |= io_run_line(io, line, &quit);
		g_free(line);
	}
	g_string_free(lr.buf, TRUE);
	return failed;
}

int main(int argc, char **argv)
{
	struct io_opts o = { .flags = TBLK_OPEN_RDWR | TBLK_OPEN_WRITETHROUGH };
	struct io_ctx io = { .open.snapshot_fd = -1 };
	GError *err = NULL;
	bool quit = false;
	int failed = 0;
	unsigned int i;

	tool_set_progname(argv[0]);
	o.cmds = g_ptr_array_new();
	parse_args(argc, argv, &o);
	io.loop = tblk_loop_new(&err);
	if (!io.loop) {
		tool_error_gerror(err, NULL);
		return 1;
	}
	if (o.filename && open_image(&io, &o) < 0) {
		failed = 1;
		goto out_free_loop;
	}
	if (o.cmds->len == 0)
		failed = command_loop(&io);
	for (i = 0; i < o.cmds->len && !quit; i++)
		failed |= io_run_line(&io, o.cmds->pdata[i], &quit);
	io_close_image(&io);
out_free_loop:
	tblk_loop_free(io.loop);
	g_ptr_array_free(o.cmds, TRUE);
	return failed ? 1 : 0;
}
