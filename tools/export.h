/* SPDX-License-Identifier: MIT */
/*
 * export.h - the table of export types shared by the programs that serve images
 * (tblk-daemon, tblk-nbd, tblk-vhost-user-blk). Each type lives in tools/export-<type>*.c and
 * registers itself from a constructor with export_type_register(), so a new type plugs in
 * by adding its files: no list to edit.
 *
 * The program (the "host") opens images and iothreads; an export asks the host for them
 * through struct export_host, so the same type works under every program.
 *
 * Threading: add(), shutdown() and free() run on the program's main thread. An export whose
 * work runs on an iothread's loop uses export_run_on_loop() to do loop-thread work there.
 */
#ifndef TBLK_TOOLS_EXPORT_H
#define TBLK_TOOLS_EXPORT_H

#include <stdbool.h>
#include <glib.h>
#include <tblk/tblk.h>

struct export_host;

/* The options every export type shares (qemu's BlockExportOptions). */
struct export_common {
	char *id;		/* "id", required */
	char *node_name;	/* "node-name", required */
	bool writable;		/* "writable", default off */
	bool writethrough;	/* "writethrough", default off */
	char *iothread;		/* "iothread", NULL: the main loop */
	bool fixed_iothread;	/* "fixed-iothread" (accepted, nothing moves anyway) */
};

/* One export, made by export_add(). */
struct export {
	const struct export_type *type;
	struct export_common common;
	struct tblk_loop *loop;		/* where its requests complete (iothread or main) */
	struct tblk_blk *blk;		/* borrowed from the host */
	void *priv;			/* the type's state */
};

struct export_type {
	const char *name;		/* the "type" value: "vhost-user-blk", "nbd" */
	/*
	 * Starts serving @exp (common fields, loop and blk already filled in) with the type's
	 * own options in @opts: it removes every key it consumes; keys left over are an error
	 * reported by the caller. 0 or -errno with *errp.
	 */
	int (*add)(struct export *exp, GHashTable *opts, GError **errp);
	/* Stops taking connections and requests; requests in flight may still complete. */
	void (*shutdown)(struct export *exp);
	/* Frees the type's state once the backend is drained. */
	void (*free)(struct export *exp);
	/*
	 * A program-wide option of this type ("nbd-server" for --nbd-server), or NULL; its
	 * parsed value goes to server() before any export is added. 0 or -errno with *errp.
	 */
	const char *server_option;
	int (*server)(struct export_host *host, GHashTable *opts, GError **errp);
	/* Frees what server() made, after every export is freed. May be NULL. */
	void (*server_free)(void);
	/*
	 * Other processes may not resize the image while it is exported (qemu's NBD exports):
	 * export_add() takes the lock byte saying so, export_free() drops it.
	 */
	bool deny_resize;
};

/* What the program offers its exports. */
struct export_host {
	struct tblk_loop *main_loop;
	/*
	 * The backend of block node @node_name with requests completing on @loop, opened on
	 * first use; -EBUSY if it is already bound to another loop, -EACCES if @writable and the
	 * node is read-only. Borrowed: the host closes it. 0 or -errno with *errp.
	 */
	int (*get_blk)(struct export_host *host, const char *node_name, struct tblk_loop *loop,
		       bool writable, struct tblk_blk **pblk, GError **errp);
	/* The loop of iothread @id (NULL: main_loop). 0 or -ENOENT with *errp. */
	int (*get_loop)(struct export_host *host, const char *id, struct tblk_loop **ploop,
			GError **errp);
};

/* Registers @type (from a constructor). */
void export_type_register(const struct export_type *type);
/* The type named @name, or NULL. */
const struct export_type *export_type_find(const char *name);
/* Calls @fn for every registered type. */
void export_type_foreach(void (*fn)(const struct export_type *type, void *opaque),
			 void *opaque);

/*
 * Makes an export from the options of one --export (@opts is consumed: "type" and the
 * common keys are taken, the type takes its own, leftovers are an error). 0 and *pexp, or
 * -errno with *errp.
 */
int export_add(struct export_host *host, GHashTable *opts, struct export **pexp,
	       GError **errp);
/* shutdown() then, after the backend drained, free(); frees @exp. */
void export_shutdown(struct export *exp);
void export_free(struct export *exp);

/*
 * Runs @fn(@opaque) on @loop's thread and waits for it: tblk_loop_call_wait(), kept
 * for the exports that use it.
 */
void export_run_on_loop(struct tblk_loop *loop, void (*fn)(void *opaque), void *opaque);

/* Pulls a boolean option ("on"/"off"/"true"/"false") out of @opts; 0 or -EINVAL with *errp. */
int export_take_bool(GHashTable *opts, const char *key, bool *val, GError **errp);
/* Pulls an unsigned option; 0 (absent: *val unchanged) or -EINVAL with *errp. */
int export_take_uint(GHashTable *opts, const char *key, uint64_t *val, GError **errp);

#endif /* TBLK_TOOLS_EXPORT_H */
