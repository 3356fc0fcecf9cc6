/* SPDX-License-Identifier: MIT */
/*
 * tool-util.h - helpers shared by tblk-img and tblk-io: the program name used as error
 * prefix, error and warning printing in qemu's format, qemu-style number parsing and size
 * printing, timing, pattern buffers and JSON string escaping.
 *
 * Threading: the tools are single-threaded; nothing here is thread-safe.
 */
#ifndef TBLK_TOOL_UTIL_H
#define TBLK_TOOL_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <glib.h>

#define TOOL_PRINTF(a, b) __attribute__((format(printf, a, b)))

/* Largest request qemu accepts: INT_MAX rounded down to 512 (BDRV_REQUEST_MAX_BYTES). */
#define TOOL_REQUEST_MAX_BYTES	2147483136LL

/* The basename of argv[0]: the prefix of every error message. */
extern const char *tool_progname;
void tool_set_progname(const char *argv0);

/* "prog: message\n" on stderr (unbuffered). */
void tool_error(const char *fmt, ...) TOOL_PRINTF(1, 2);
/* "prog: warning: message\n" on stderr. */
void tool_warn(const char *fmt, ...) TOOL_PRINTF(1, 2);
/* Prints "prog: <prefix>: <message of err>" (prefix may be NULL) and frees @err. */
void tool_error_gerror(GError *err, const char *prefix_fmt, ...) TOOL_PRINTF(2, 3);
/*
 * tblk_opts_parse_qemu() for a command line's option list, warning about each short-form
 * boolean ("key" for "key=on") as qemu does. 0 or -EINVAL with *errp.
 */
int tool_opts_parse(GHashTable *opts, const char *str, GError **errp);
/* The same, a first element without '=' being the value of @implied_key (qemu-img's
 * --image-opts: "file"). */
int tool_opts_parse_implied(GHashTable *opts, const char *str, const char *implied_key,
			    GError **errp);
/*
 * qemu's checks of an --object definition (tool-object.c), printing qemu's message: 0, 1
 * when it asked for help (the list of types is printed), or -EINVAL.
 */
int tool_object_check(GHashTable *opts);

/*
 * Parses a size as qemu_strtosz does: decimal (with an optional fraction when a suffix
 * follows) or 0x hex, optional suffix b/B k/K m/M g/G t/T p/P e/E (powers of 1024), the whole
 * string. 0, -EINVAL or -ERANGE. *hex_suffix is set when a hex number carried a suffix (qemu
 * warns about that), whatever the result.
 */
int tool_strtosz(const char *s, uint64_t *val, bool *hex_suffix);
/* Parses an unsigned long as qemu_strtoul (base 0, whole string; "-1" wraps). 0 or -errno. */
int tool_strtoul(const char *s, unsigned long *val);

/* qemu-io's size style: "%.3f KiB" ("%f bytes" below 1 KiB), a trailing all-zero fraction cut. */
void tool_fmt_size_io(char *buf, size_t len, double value);
/* qemu-img's size style: "%0.3g KiB" with the unit chosen so the number stays below 1000. */
void tool_fmt_size_img(char *buf, size_t len, uint64_t value);

/* Monotonic time in nanoseconds. */
uint64_t tool_now_ns(void);

/* A buffer aligned for O_DIRECT, filled with @pattern; NULL if it cannot be allocated. */
void *tool_buf_new(size_t len, int pattern);
void tool_buf_free(void *buf);

struct tblk_blk;
/* Defines the object --object @def names if the library has it (throttle-group); other
 * types are accepted and ignored. 0, or -EINVAL after printing the error. */
int tool_object_add(const char *def);

/* Whether @filename is a "json:{...}" one that names its driver (nothing is probed then). */
bool tool_json_names_driver(const char *filename);
/* -U may be added to @opts: they set no force-share, or set it "on" (qemu compares the text). */
bool tool_opts_force_share_ok(GHashTable *opts);
/*
 * qemu's deprecation warning for each node given "backing": "" (no backing file) in @opts or
 * in a "json:{...}" @filename (NULL: none), before the image is opened.
 */
void tool_warn_empty_backing(GHashTable *opts, const char *filename);
/* qemu's warning about a writable image whose raw format was only probed (stderr). */
void tool_warn_probed_raw(struct tblk_blk *blk, const char *name);

struct tblk_format_info;
/* qemu's human "Format specific information:" block (qcow2 only; nothing for other formats). */
void tool_print_format_specific(const struct tblk_format_info *fi);

/* Appends @s as a JSON string (quoted, escaped as QEMU's JSON writer does) to @out. */
void tool_json_string(GString *out, const char *s);

#endif /* TBLK_TOOL_UTIL_H */
