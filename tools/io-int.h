/* SPDX-License-Identifier: MIT */
/*
 * io-int.h - what the files of tblk-io share: the session state, the command table type,
 * and the helpers that print in qemu-io's formats.
 *
 * Threading: tblk-io runs in one thread, which also runs the backend's loop; AIO callbacks
 * run inside tblk_loop_iterate() calls made by blocking commands, aio_flush, the prompt
 * and the final close, as qemu-io's do.
 */
#ifndef TBLK_IO_INT_H
#define TBLK_IO_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <tblk/tblk.h>

#include "tools/tool-util.h"

struct io_ctx {
	struct tblk_loop *loop;
	struct tblk_blk *blk;		/* NULL when no image is open */
	unsigned int nr_aio;		/* asynchronous requests in flight */
};

typedef int io_cmd_fn(struct io_ctx *io, int argc, char **argv);

#define IO_CMD_NEED_FILE	0x1u	/* refused without an open image */
#define IO_CMD_NEED_WRITE	0x2u	/* refused on a read-only image */

struct io_cmd {
	const char *name;
	const char *alias;		/* one-letter short name or NULL */
	io_cmd_fn *fn;
	int argmin;
	int argmax;			/* -1: no limit */
	unsigned int flags;		/* IO_CMD_* */
	const char *args;		/* synopsis of the arguments, NULL if none */
	const char *oneline;
	const char *help;		/* extended help, NULL if none */
};

/* io-cmd.c */
extern const struct io_cmd io_cmds[];
extern const unsigned int io_nr_cmds;
/* Splits @line on spaces and runs the command; returns 0 or 1 (failed), sets *quit. */
int io_run_line(struct io_ctx *io, const char *line, bool *quit);
void io_print_usage_line(const struct io_cmd *ct, const char *name);
/* Prints the synopsis line of the command named argv[0] (after a getopt error). */
int io_usage_of(const char *name);

/* io-report.c */
/* Parses an offset or length as qemu-io: >= 0 or -errno (message not printed). */
int64_t io_cvtnum(const char *s);
void io_print_cvtnum_err(int64_t ret, const char *s);
/* Parses a pattern byte (strtol base 0, 0..255); -1 and a message if invalid. */
int io_parse_pattern(const char *s);
/* Prints the two lines of a completed request (or the -C line). */
void io_print_report(const char *op, uint64_t start_ns, uint64_t end_ns, int64_t offset,
		     int64_t bytes, int64_t total, int cnt, bool csv);
void io_dump_buffer(const void *buf, int64_t offset, int64_t len);
/* Compares @len bytes with @pattern; prints qemu-io's message and returns false on mismatch. */
bool io_verify_pattern(const void *buf, int pattern, int64_t offset, int64_t len);
/* Waits (running the loop, so AIO completions are processed) until *done. */
void io_wait(struct io_ctx *io, const bool *done);

/* Builds an iovec over one buffer from the length arguments of aio_read/aio_write. */
struct io_vec {
	struct iovec *iov;
	int niov;
	void *buf;
	int64_t total;
};
int io_vec_init(struct io_vec *v, char **lens, int nr, int pattern);
void io_vec_destroy(struct io_vec *v);

/* Waits until every AIO request has completed and printed (aio_flush, exit). */
void io_drain_all(struct io_ctx *io);

/* io-cmds-rw.c, io-cmds-aio.c, io-cmds-misc.c */
io_cmd_fn io_read_f, io_write_f, io_aio_read_f, io_aio_write_f, io_aio_flush_f;
io_cmd_fn io_flush_f, io_discard_f, io_length_f, io_info_f, io_quit_f, io_help_f;

#endif /* TBLK_IO_INT_H */
