/* SPDX-License-Identifier: MIT */
/*
 * io-cmd.c - tblk-io's command table, the splitting of a command line into words (on
 * spaces only, as qemu-io does), the generic checks made before a command runs (file open,
 * argument count, write permission) and the help command.
 *
 * Threading: the tool's single thread.
 */
#include <errno.h>
#include <getopt.h>
#include <string.h>

#include "tools/io-int.h"

static const char rw_read_help[] =
	" Reads bytes of the open image at an offset.\n"
	" -C, -- print the statistics as one comma-separated line\n"
	" -l, -- how many bytes -P checks (default: all)\n"
	" -p, -- accepted and ignored\n"
	" -P, -- check that every byte read equals this value\n"
	" -q, -- print no statistics\n"
	" -s, -- where in the buffer -P starts checking\n"
	" -v, -- print the data as a hex dump\n\n";
static const char rw_write_help[] =
	" Writes bytes filled with a pattern (0xcd by default) at an offset.\n"
	" -C, -- print the statistics as one comma-separated line\n"
	" -f, -- the write is durable when it completes (FUA)\n"
	" -n, -- with -z, fail rather than write zeroes the slow way\n"
	" -p, -- accepted and ignored\n"
	" -P, -- the byte to fill the buffer with\n"
	" -q, -- print no statistics\n"
	" -s, -- fill the buffer with the contents of a file, repeated\n"
	" -u, -- with -z, the range may be deallocated\n"
	" -z, -- write zeroes without a data buffer\n\n";
static const char aio_read_help[] =
	" Starts a read of the given lengths one after the other at an offset, and\n"
	" returns at once; the result is printed when the request completes. Use\n"
	" aio_flush to wait for all of them.\n"
	" -C, -- print the statistics as one comma-separated line\n"
	" -i, -- count an invalid request instead of reading\n"
	" -P, -- check that every byte read equals this value\n"
	" -q, -- print no statistics\n"
	" -v, -- print the data as a hex dump\n\n";
static const char aio_write_help[] =
	" Starts a write of the given lengths one after the other at an offset, and\n"
	" returns at once; the result is printed when the request completes. Use\n"
	" aio_flush to wait for all of them.\n"
	" -C, -- print the statistics as one comma-separated line\n"
	" -f, -- the write is durable when it completes (FUA)\n"
	" -i, -- count an invalid request instead of writing\n"
	" -P, -- the byte to fill the buffer with\n"
	" -q, -- print no statistics\n"
	" -u, -- with -z, the range may be deallocated\n"
	" -z, -- write zeroes without a data buffer\n\n";
static const char readv_help[] =
	" Reads bytes of the open image at an offset into one buffer per length given.\n"
	" -C, -- print the statistics as one comma-separated line\n"
	" -P, -- check that every byte read equals this value\n"
	" -q, -- print no statistics\n"
	" -v, -- print the data as a hex dump\n\n";
static const char writev_help[] =
	" Writes bytes filled with a pattern (0xcd by default) at an offset, from one\n"
	" buffer per length given.\n"
	" -C, -- print the statistics as one comma-separated line\n"
	" -f, -- the write is durable when it completes (FUA)\n"
	" -P, -- the byte to fill the buffers with\n"
	" -q, -- print no statistics\n\n";
static const char open_help[] =
	" Opens an image for the other commands; only one can be open at a time.\n"
	" -r, -- read-only\n"
	" -s, -- write to a temporary overlay, never to the image\n"
	" -C, -- accepted, no effect without a backing file\n"
	" -n, -- bypass the host page cache (-t none)\n"
	" -U, -- do not lock the image (needs -r)\n"
	" -k, -- use Linux AIO (same as -i native)\n"
	" -i, -- threads, native or io_uring\n"
	" -t, -- none, writeback, writethrough, directsync or unsafe\n"
	" -d, -- ignore, off, unmap or on\n"
	" -o, -- driver options as key=value,key=value\n";
static const char reopen_help[] =
	" Opens the image again with some options changed; what cannot change is refused.\n"
	" -r, -- read-only from now on\n"
	" -w, -- read-write from now on\n"
	" -c, -- a new cache mode\n"
	" -o, -- driver options to change, as key=value,key=value\n\n";
static const char sigraise_help[] =
	" Sends the given signal number to tblk-io itself with raise(3).\n\n";
static const char discard_help[] =
	" Tells the image that a range of bytes is no longer needed.\n"
	" -C, -- print the statistics as one comma-separated line\n"
	" -q, -- print no statistics\n\n";

#define F	IO_CMD_NEED_FILE
#define W	IO_CMD_NEED_WRITE
/* Sorted by name: "help" lists them in this order. */
const struct io_cmd io_cmds[] = {
	{ "abort", NULL, io_abort_f, 0, 0, 0, NULL, "simulate a program crash using abort(3)",
	  NULL },
	{ "aio_flush", NULL, io_aio_flush_f, 0, 0, F, NULL,
	  "completes all outstanding aio requests", NULL },
	{ "aio_read", NULL, io_aio_read_f, 2, -1, F, "[-Ciqv] [-P pattern] off len [len..]",
	  "asynchronously reads a number of bytes", aio_read_help },
	{ "aio_write", NULL, io_aio_write_f, 2, -1, F | W, "[-Cfiquz] [-P pattern] off len [len..]",
	  "asynchronously writes a number of bytes", aio_write_help },
	{ "alloc", "a", io_alloc_f, 1, 2, F, "offset [count]",
	  "checks if offset is allocated in the file", NULL },
	{ "break", NULL, io_break_f, 2, 2, F, "event tag",
	  "sets a breakpoint on event and tags the stopped request as tag", NULL },
	{ "close", "c", io_close_f, 0, 0, F, NULL, "close the current open file", NULL },
	{ "discard", "d", io_discard_f, 2, -1, F | W, "[-Cq] off len",
	  "discards a number of bytes at a specified offset", discard_help },
	{ "flush", "f", io_flush_f, 0, 0, F, NULL, "flush all in-core file state to disk", NULL },
	{ "help", "?", io_help_f, 0, 1, 0, "[command]", "help for one or all commands", NULL },
	{ "info", "i", io_info_f, 0, 0, F, NULL, "prints information about the current file",
	  NULL },
	{ "length", "l", io_length_f, 0, 0, F, NULL, "gets the length of the current file", NULL },
	{ "map", NULL, io_map_f, 0, 0, F, "", "prints the allocated areas of a file", NULL },
	{ "open", "o", io_open_f, 1, -1, 0,
	  "[-rsCnkU] [-t cache] [-d discard] [-o options] [path]",
	  "open the file specified by path", open_help },
	{ "quit", "q", io_quit_f, 0, -1, 0, NULL, "exit the program", NULL },
	{ "read", "r", io_read_f, 2, -1, F, "[-abCqv] [-P pattern [-s off] [-l len]] off len",
	  "reads a number of bytes at a specified offset", rw_read_help },
	{ "readv", NULL, io_readv_f, 2, -1, F, "[-Cqv] [-P pattern] off len [len..]",
	  "reads a number of bytes at a specified offset", readv_help },
	{ "remove_break", NULL, io_remove_break_f, 1, 1, F, "tag", "remove a breakpoint by tag",
	  NULL },
	{ "reopen", NULL, io_reopen_f, 0, -1, F, "[(-r|-w)] [-c cache] [-o options]",
	  "reopens an image with new options", reopen_help },
	{ "resume", NULL, io_resume_f, 1, 1, F, "tag", "resumes the request tagged as tag", NULL },
	{ "sigraise", NULL, io_sigraise_f, 1, 1, 0, "signal", "raises a signal", sigraise_help },
	{ "sleep", NULL, io_sleep_f, 1, 1, 0, NULL, "waits for the given value in milliseconds",
	  NULL },
	{ "truncate", "t", io_truncate_f, 1, 3, F | W, "[-m prealloc_mode] off",
	  "truncates the current file at the given offset", NULL },
	{ "wait_break", NULL, io_wait_break_f, 1, 1, F, "tag",
	  "waits for the suspension of a request", NULL },
	{ "write", "w", io_write_f, 2, -1, F | W,
	  "[-bcCfnquz] [-P pattern | -s source_file] off len",
	  "writes a number of bytes at a specified offset", rw_write_help },
	{ "writev", NULL, io_writev_f, 2, -1, F | W, "[-Cfq] [-P pattern] off len [len..]",
	  "writes a number of bytes at a specified offset", writev_help },
};
#undef F
#undef W
const unsigned int io_nr_cmds = sizeof(io_cmds) / sizeof(io_cmds[0]);

static const struct io_cmd *find_cmd(const char *name)
{
	unsigned int i;

	for (i = 0; i < io_nr_cmds; i++)
		if (!strcmp(io_cmds[i].name, name) ||
		    (io_cmds[i].alias && !strcmp(io_cmds[i].alias, name)))
			return &io_cmds[i];
	return NULL;
}

void io_print_usage_line(const struct io_cmd *ct, const char *name)
{
	if (ct->args)
		printf("%s %s -- %s\n", name, ct->args, ct->oneline);
	else
		printf("%s -- %s\n", name, ct->oneline);
}

int io_usage_of(const char *name)
{
	const struct io_cmd *ct = find_cmd(name);

	if (ct)
		io_print_usage_line(ct, ct->name);
	return -EINVAL;
}

static bool check_argc(const struct io_cmd *ct, const char *name, int n)
{
	if (n >= ct->argmin && (ct->argmax < 0 || n <= ct->argmax))
		return true;
	fprintf(stderr, "bad argument count %d to %s, expected ", n, name);
	if (ct->argmax < 0)
		fprintf(stderr, "at least %d arguments\n", ct->argmin);
	else if (ct->argmin == ct->argmax)
		fprintf(stderr, "%d arguments\n", ct->argmin);
	else
		fprintf(stderr, "between %d and %d arguments\n", ct->argmin, ct->argmax);
	return false;
}

static int run_cmd(struct io_ctx *io, int argc, char **argv, bool *quit)
{
	const struct io_cmd *ct = find_cmd(argv[0]);

	if (!ct) {
		fprintf(stderr, "command \"%s\" not found\n", argv[0]);
		return 1;
	}
	if ((ct->flags & IO_CMD_NEED_FILE) && !io->blk) {
		fprintf(stderr, "no file open, try 'help open'\n");
		return 1;
	}
	if (!check_argc(ct, argv[0], argc - 1))
		return 1;
	if ((ct->flags & IO_CMD_NEED_WRITE) && tblk_blk_is_read_only(io->blk)) {
		tool_error("Block node is read-only");
		return 1;
	}
	if (ct->fn == io_quit_f) {
		*quit = true;
		return 0;
	}
	optind = 0;	/* glibc: reinitialise getopt for a new argument vector */
	return ct->fn(io, argc, argv) < 0 ? 1 : 0;
}

int io_run_line(struct io_ctx *io, const char *line, bool *quit)
{
	gchar **words = g_strsplit(line, " ", -1);
	GPtrArray *argv = g_ptr_array_new();
	int ret = 0;
	unsigned int i;

	for (i = 0; words[i]; i++)
		if (words[i][0])
			g_ptr_array_add(argv, words[i]);
	if (argv->len) {
		g_ptr_array_add(argv, NULL);
		ret = run_cmd(io, (int)argv->len - 1, (char **)argv->pdata, quit);
	}
	g_ptr_array_free(argv, TRUE);
	g_strfreev(words);
	return ret;
}

int io_quit_f(struct io_ctx *io, int argc, char **argv)
{
	(void)io, (void)argc, (void)argv;
	return 0;
}

int io_help_f(struct io_ctx *io, int argc, char **argv)
{
	const struct io_cmd *ct;
	unsigned int i;

	(void)io;
	if (argc == 1) {
		for (i = 0; i < io_nr_cmds; i++)
			io_print_usage_line(&io_cmds[i], io_cmds[i].name);
		printf("\nUse 'help commandname' for extended help.\n");
		return 0;
	}
	ct = find_cmd(argv[1]);
	if (!ct) {
		printf("command %s not found\n", argv[1]);
		return -EINVAL;
	}
	io_print_usage_line(ct, argv[1]);
	if (ct->help)
		printf("\n%s", ct->help);
	return 0;
}
