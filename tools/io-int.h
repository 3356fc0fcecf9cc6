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

/* How the open image was opened: what reopen starts from. */
struct io_open_state {
	char *filename;			/* file argument, NULL if options name the file */
	GHashTable *opts;		/* the options as given (-f, -o, --image-opts) */
	unsigned int flags;		/* TBLK_OPEN_* */
	int snapshot_fd;		/* -s: the unlinked overlay file, else -1 */
};

struct io_ctx {
	struct tblk_loop *loop;
	struct tblk_blk *blk;		/* NULL when no image is open */
	struct io_open_state open;	/* valid while blk is set */
	unsigned int nr_aio;		/* asynchronous requests in flight */
};

/* What the program's options and the open command's options set up for opening. */
struct io_open_req {
	const char *filename;		/* may be NULL if opts name the file */
	GHashTable *opts;		/* borrowed; boolean values may be rewritten on/off */
	unsigned int flags;		/* TBLK_OPEN_* */
	bool snapshot;			/* -s */
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

/* io-cmds-open.c */
/*
 * Applies an option letter the program and the open command share (-n, -k, -U, -t, -i, -d,
 * and -r) to *flags; -EINVAL after printing qemu-io's error, 1 if @c is not one of them.
 */
int io_open_flag_opt(int c, const char *arg, unsigned int *flags);
/* Opens the image as qemu-io's open command and its file argument do; -errno after printing. */
int io_open_image(struct io_ctx *io, const struct io_open_req *r);
/* Drains and closes the open image (nothing if none). */
void io_close_image(struct io_ctx *io);
/* Records how the image now open was opened (copies @filename and @opts), for reopen. */
void io_save_open_state(struct io_ctx *io, const char *filename, GHashTable *opts,
			unsigned int flags);

/* io-open-snapshot.c */
/* Opens @r's image under a temporary qcow2 overlay (-s); 0, or -errno and *errp. */
int io_open_snapshot(struct io_ctx *io, const struct io_open_req *r, GError **errp);

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

/* Builds an iovec over one buffer from the lengths of aio_read, aio_write, readv, writev. */
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

/* Runs the loop, processing AIO completions, until the monotonic time @deadline_ns. */
void io_wait_until(struct io_ctx *io, uint64_t deadline_ns);

/* The result of one request a blocking command waits for (opaque of io_sync_cb). */
struct io_sync {
	bool done;
	int ret;
};
tblk_cb io_sync_cb;
/*
 * Whether [offset, offset + bytes) leaves the image: qemu fails such a read or write at once,
 * without running the event loop (AIO completions print after its error; not readv/writev,
 * which wait for an AIO request).
 */
bool io_out_of_range(struct io_ctx *io, int64_t offset, uint64_t bytes);

/* The commands, one file per family. */
io_cmd_fn io_read_f, io_write_f, io_readv_f, io_writev_f;		/* io-cmds-rw.c, -vec.c */
io_cmd_fn io_aio_read_f, io_aio_write_f, io_aio_flush_f;		/* io-cmds-aio.c */
io_cmd_fn io_flush_f, io_discard_f, io_length_f, io_info_f, io_truncate_f; /* io-cmds-misc.c */
io_cmd_fn io_alloc_f, io_map_f;						/* io-cmds-alloc.c */
io_cmd_fn io_open_f, io_close_f, io_reopen_f;				/* io-cmds-open.c */
io_cmd_fn io_sleep_f, io_abort_f, io_sigraise_f, io_break_f, io_remove_break_f;
io_cmd_fn io_resume_f, io_wait_break_f;					/* io-cmds-debug.c */
io_cmd_fn io_quit_f, io_help_f;						/* io-cmd.c */

#endif /* TBLK_IO_INT_H */
