/* SPDX-License-Identifier: MIT */
/*
 * img-int.h - what the files of tblk-img share: the subcommands, qemu-img's ways of
 * reporting bad command lines, its number parsing with range messages, and opening an image
 * with qemu-img's messages.
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
int img_bench(int argc, char **argv);
int img_check(int argc, char **argv);
int img_create(int argc, char **argv);
int img_info(int argc, char **argv);

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

#endif /* TBLK_IMG_INT_H */
