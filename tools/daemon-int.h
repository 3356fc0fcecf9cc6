/* SPDX-License-Identifier: MIT */
/*
 * daemon-int.h - what the files of tblk-daemon share: its block nodes, iothreads and
 * exports (daemon-objects.c), and the export host it gives export types.
 *
 * Threading: everything here runs on the daemon's main thread.
 */
#ifndef TBLK_DAEMON_INT_H
#define TBLK_DAEMON_INT_H

#include <glib.h>

#include "tools/export.h"

/* Creates the object table; @main_loop is run by the main thread. */
void daemon_objects_init(struct tblk_loop *main_loop);
struct export_host *daemon_host(void);

/* --blockdev: opens the node now (with the main loop). 0 or -errno with *errp. */
int daemon_add_blockdev(const char *arg, GError **errp);
/* --object: only iothread. 0 or -errno with *errp. */
int daemon_add_object(const char *arg, GError **errp);
/* --export. 0 or -errno with *errp. */
int daemon_add_export(const char *arg, GError **errp);
/* --<server option> of an export type (--nbd-server). 0 or -errno with *errp. */
int daemon_add_server(const struct export_type *type, const char *arg, GError **errp);
/* The export type whose program-wide option is @name, or NULL. */
const struct export_type *daemon_server_type(const char *name);

/*
 * Stops every export taking requests, drains, flushes and closes every node, frees the
 * iothreads. Returns the number of flush failures.
 */
int daemon_shutdown(void);

#endif /* TBLK_DAEMON_INT_H */
