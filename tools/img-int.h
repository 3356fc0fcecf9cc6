/* SPDX-License-Identifier: MIT */
/*
 * img-int.h - what the files of tblk-img share: the subcommands, qemu-img's ways of
 * reporting bad command lines, its number parsing with range messages, opening an image with
 * qemu-img's messages, creating a target image from -o lists, --object checks, the progress
 * display (-p) and the block status of an image as qemu-img's map, compare and convert see it.
 *
 * Threading: tblk-img is single-threaded; the backend's loop runs in the main thread.
 */
#ifndef TBLK_IMG_INT_H
#define TBLK_IMG_INT_H

#include <stdbool.h>
#include <stdint.h>
#include <tblk/tblk.h>

#include "tools/tool-util.h"

#define IMG_NORETURN __attribute__((noreturn))

/* Subcommands: argv[0] is the subcommand's name. Each returns the exit status. */
int img_amend(int argc, char **argv);
int img_bench(int argc, char **argv);
int img_bitmap(int argc, char **argv);
int img_check(int argc, char **argv);
int img_compare(int argc, char **argv);
int img_convert(int argc, char **argv);
int img_create(int argc, char **argv);
int img_dd(int argc, char **argv);
int img_info(int argc, char **argv);
int img_map(int argc, char **argv);
int img_snapshot(int argc, char **argv);

/* qemu-img's snapshot table ("Snapshot list:", a header, one row per snapshot); nothing if
 * @n is 0. */
void img_snapshot_dump(const struct tblk_snapshot_info *sn, int n);
/* The "snapshots" JSON array of info, its closing bracket indented by @indent spaces. */
void img_snapshot_json(GString *out, const struct tblk_snapshot_info *sn, int n, int indent);

int img_measure(int argc, char **argv);
int img_resize(int argc, char **argv);
int img_rebase(int argc, char **argv);
int img_commit(int argc, char **argv);

/* @name made relative to the directory of @image (qemu's path_combine); caller frees. */
char *img_path_relative_to(const char *image, const char *name);
/*
 * The depth of the layer of @blk's chain that a backing file named @name is (qemu's
 * bdrv_find_backing_image: @name relative to each layer's directory, compared as real
 * paths), or -1.
 */
int img_find_backing_image(struct tblk_blk *blk, const char *name);
/* Opens the layer at @depth of @chain's backing chain as a backend of its own, without
 * taking locks (the chain holds them). 0 or -errno with *errp. */
int img_open_layer(struct tblk_blk **pblk, struct tblk_blk *chain, int depth,
		   unsigned int flags, GError **errp);

/* "prog: <msg>" then "Try 'qemu-img --help' for more information", exit 1. */
void img_error_exit(const char *fmt, ...) TOOL_PRINTF(1, 2) IMG_NORETURN;
/* What qemu-img does when getopt returns '?' or ':' (optstrings start with ':'). */
void img_bad_option(int c, char **argv) IMG_NORETURN;
void img_help(void) IMG_NORETURN;
void img_version(void);

/*
 * Parses a size argument: the value, or -1 after printing qemu-img's message naming @name
 * ("Invalid image size specified. ...").
 */
int64_t img_cvtnum_full(const char *name, const char *value, int64_t min, int64_t max);

/* Opening an image for a subcommand; errors printed as "Could not open 'F': <why>". */
struct img_open_opts {
	const char *filename;
	const char *fmt;		/* -f, or NULL to probe */
	bool image_opts;		/* @filename is an option string */
	unsigned int flags;		/* TBLK_OPEN_* */
};
int img_open(struct tblk_blk **pblk, const struct img_open_opts *o, struct tblk_loop *loop);
/*
 * The name qemu-img gives the image @blk opened from @o (img-name.c): a "json:{...}" one when
 * options describe it that a plain file name cannot carry, else tblk_blk_filename(). Caller
 * frees.
 */
char *img_node_name(const struct img_open_opts *o, struct tblk_blk *blk);

/* --object OBJECTDEF: checked as qemu-img does at option time; exits 1 on a bad one. */
void img_object_check(const char *def);
/*
 * The long options most subcommands share, for getopt_long(): --help, --object,
 * --image-opts, and in img_long_opts also --force-share (returned as 'U'). A subcommand's
 * loop hands each option to img_common_opt() first.
 */
enum { IMG_OPT_OBJECT = 256, IMG_OPT_IMAGE_OPTS, IMG_OPT_FIRST_FREE };
struct option;
extern const struct option img_long_opts[];
extern const struct option img_long_opts_no_share[];
/*
 * Handles option @c of getopt_long() if every subcommand treats it alike: a bad or
 * incomplete option and -h (these exit), --object (checked), --image-opts (sets
 * *image_opts). True if it did.
 */
bool img_common_opt(int c, char **argv, bool *image_opts);
/*
 * -l of convert and measure: an argument "snapshot.id=...,snapshot.name=..." may name only
 * those two keys (else qemu's errors and exit 1); true if it has that form.
 */
bool img_snapshot_arg_check(const char *arg);
/*
 * Makes the read-only @blk read as the internal snapshot -l @arg names: the keyed form must
 * match both keys given, a plain argument is an id, else a name. 0, or -errno after printing
 * "Failed to load snapshot: ...".
 */
int img_snapshot_load(struct tblk_blk *blk, const char *arg);

/*
 * Creation options of a target image (convert, dd): the "-o" lists joined by ',' are checked
 * against what @fmt accepts, with qemu's messages; the checked options (not "size") go into
 * @opts as strings, "key" alone meaning "key=on" and "nokey" "key=off", as in qemu. -1 after
 * printing the error, else 0.
 */
int img_create_opts_parse(const char *fmt, const char *list, GHashTable *opts);
/* Whether @list parses as creation options of @fmt (values checked too); prints nothing. */
bool img_create_opts_valid(const char *fmt, const char *list);
/* qemu refuses an empty -o list or one with an empty element (",," is a comma). */
bool img_opt_list_valid(const char *s);
/* The elements of a -o list, ",," turned into ','; free with g_strfreev(). */
char **img_opt_list_split(const char *list);
/* True if an element of a -o list asks for help ("help" or "?"). */
bool img_opt_list_has_help(const char *list);
/* True if the table of creation options of @fmt has @key (unknown formats: true). */
bool img_fmt_has_create_opt(const char *fmt, const char *key);
/* True if @fmt is a format tblk-img knows to take compressed writes (qcow2). */
bool img_fmt_can_compress(const char *fmt);
/* True if @fmt names a format or protocol driver of this build. */
bool img_fmt_known(const char *fmt);
/*
 * qemu's "-o help" for @fmt: the format's creation options, with those of the protocol
 * @filename names when it is not NULL, on stdout. The exit status: 0, or 1 after an error.
 */
int img_create_opts_help(const char *fmt, const char *filename);

/*
 * The progress display of -p: "    (P/100%)\r" on stdout each time the figure moved by more
 * than @min_skip (or reached 0 or 100), a newline at the end. Disabled, SIGUSR1 prints the
 * figure once. @max 0 sets the figure to @delta; otherwise @delta percent of @max is added.
 * The arithmetic is single precision, as qemu's, so the same figures come out.
 */
void img_progress_init(bool enabled, float min_skip);
void img_progress_print(float delta, int max);
void img_progress_end(void);

/*
 * Block status as qemu-img's map and compare see it, through the backing chain: the layer
 * that holds [offset, offset + *pnum) and its bits. @present is false where no layer holds
 * the range (it then reads as zeroes, depth is the layer whose end or lack of backing file
 * says so). 0 or -errno.
 */
struct img_status {
	uint64_t pnum;
	unsigned int bits;		/* TBLK_BS_* */
	uint64_t map;			/* valid with TBLK_BS_OFFSET_VALID */
	int depth;
	bool present;
};
int img_block_status(struct tblk_blk *blk, uint64_t offset, uint64_t bytes,
		     struct img_status *st);

#endif /* TBLK_IMG_INT_H */
