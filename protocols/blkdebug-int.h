/* SPDX-License-Identifier: MIT */
/*
 * blkdebug-int.h - what blkdebug.c and blkdebug-config.c share: the rule object and the
 * parsers that turn a config file or "inject-error.N.*" / "set-state.N.*" options into rules.
 *
 * Threading: control path; the rules are built before the node is published.
 */
#ifndef TBLK_BLKDEBUG_INT_H
#define TBLK_BLKDEBUG_INT_H

#include "tracked/tracked.h"

enum bd_action {
	BD_INJECT_ERROR,
	BD_SET_STATE,
	BD_SUSPEND,
};

/* The kinds of request an inject-error rule fails (qemu's "iotype"). */
enum bd_iotype {
	BD_IO_READ,
	BD_IO_WRITE,
	BD_IO_WRITE_ZEROES,
	BD_IO_DISCARD,
	BD_IO_FLUSH,
	BD_IO_BLOCK_STATUS,
};

#define BD_IOTYPE_DEFAULT						\
	((1u << BD_IO_READ) | (1u << BD_IO_WRITE) | (1u << BD_IO_WRITE_ZEROES) |	\
	 (1u << BD_IO_DISCARD) | (1u << BD_IO_FLUSH))

/* A rule; once the node is open, its fields are guarded by the node's blkdebug lock. */
struct bd_rule {
	enum bd_action action;
	enum tblk_debug_event event;
	int state;			/* 0: in any state */
	/* inject-error */
	int error;			/* positive errno; <= 0 makes requests succeed */
	bool once;			/* removed after failing one request */
	bool immediately;		/* accepted; our requests are failed synchronously anyway */
	int64_t offset;			/* sector * 512 a request must cover, -1: any */
	unsigned int iotype_mask;	/* 1 << enum bd_iotype */
	/* set-state */
	int new_state;
	/* suspend (a breakpoint) */
	char *tag;
};

void bd_rule_free(struct bd_rule *rule);

/*
 * Reads qemu's blkdebug config file @path ([inject-error] and [set-state] sections with
 * key = "value" lines) and appends its rules to @rules (struct bd_rule *, owned). 0 or
 * -errno with *errp worded as qemu's.
 */
int bd_config_read(const char *path, GPtrArray *rules, GError **errp);
/*
 * Takes the "inject-error.N.*" and "set-state.N.*" keys out of @opts and appends their
 * rules to @rules. 0 or -errno with *errp.
 */
int bd_options_take(GHashTable *opts, GPtrArray *rules, GError **errp);

#endif /* TBLK_BLKDEBUG_INT_H */
