/* SPDX-License-Identifier: MIT */
/*
 * export-nbd.h - the NBD server that tblk-nbd and tblk-daemon use to export backends: a
 * server listens on TCP and/or Unix sockets, holds named exports (one backend each), and
 * serves any number of clients, each on the loop of the backend it picked, with its requests
 * submitted asynchronously and answered in whatever order they complete.
 *
 * Threading: create the server and its listeners on the thread that runs the server's loop
 * (or before it runs); exports may be added and removed from any thread. A backend's asynchronous requests are submitted on the
 * backend's loop: connections move there after the handshake.
 */
#ifndef TBLK_TOOLS_EXPORT_NBD_H
#define TBLK_TOOLS_EXPORT_NBD_H

#include <stdbool.h>
#include <stdint.h>
#include <glib.h>

struct tblk_blk;
struct tblk_loop;
struct nbds_server;

/* qemu's detect-zeroes: off, on (write zeroes), unmap (and unmap them if discard is on). */
enum nbds_detect_zeroes {
	NBDS_DETECT_ZEROES_OFF,
	NBDS_DETECT_ZEROES_ON,
	NBDS_DETECT_ZEROES_UNMAP,
};

struct nbds_export_opts {
	const char *id;			/* for the daemon; may be NULL */
	const char *name;		/* export name ("" is the default export) */
	const char *description;	/* may be NULL */
	bool writable;			/* otherwise NBD_FLAG_READ_ONLY, writes get EPERM */
	bool allocation_depth;		/* offer qemu:allocation-depth */
	bool multi_conn;		/* advertise NBD_FLAG_CAN_MULTI_CONN */
	bool discard;			/* TRIM unmaps (--discard=unmap), else is ignored */
	enum nbds_detect_zeroes detect_zeroes; /* all-zero WRITEs become WRITE_ZEROES */
};

/*
 * Called on the server's loop after the number of connected clients changed: how many are
 * connected now, and how many connected since the server started.
 */
typedef void nbds_clients_fn(void *opaque, unsigned int nr_clients, uint64_t nr_accepted);

/* A server whose listeners and handshakes run on @loop. Never fails. */
struct nbds_server *nbds_server_new(struct tblk_loop *loop);
/*
 * Closes the listeners, disconnects every client, waits until they are gone (iterating the
 * server's loop when called on it or while nobody runs it), frees the exports (not their
 * backends). NULL ok.
 */
void nbds_server_free(struct nbds_server *srv);

/* At most @max clients at once (0: no limit); more wait in the listen backlog. */
void nbds_server_set_max_clients(struct nbds_server *srv, unsigned int max);
/* Drops clients that have not finished the handshake after @ns (default 10 s). */
void nbds_server_set_handshake_timeout(struct nbds_server *srv, uint64_t ns);
void nbds_server_set_clients_cb(struct nbds_server *srv, nbds_clients_fn *fn, void *opaque);

/* Listens on @host:@port (host NULL or "" for any address). 0 or -errno with *errp. */
int nbds_server_listen_inet(struct nbds_server *srv, const char *host, const char *port,
			    GError **errp);
/* Listens on a Unix socket at @path (replaced if it exists, removed at free). */
int nbds_server_listen_unix(struct nbds_server *srv, const char *path, GError **errp);
/* Listens on an already listening socket @fd (takes ownership). 0 or -errno with *errp. */
int nbds_server_listen_fd(struct nbds_server *srv, int fd, GError **errp);
/* Serves an already connected socket (takes ownership of @fd). 0 or -errno. */
int nbds_server_add_client(struct nbds_server *srv, int fd);

/*
 * Exports @blk (borrowed: it must outlive the export) under @o->name. -EEXIST if the name
 * is taken, -EINVAL on bad options; *errp says which.
 */
int nbds_server_add_export(struct nbds_server *srv, struct tblk_blk *blk,
			   const struct nbds_export_opts *o, GError **errp);
/* Removes the export with id (or, if no export has that id, name) @id, disconnecting its
 * clients. 0 or -ENOENT. */
int nbds_server_del_export(struct nbds_server *srv, const char *id);
/* Number of exports. */
unsigned int nbds_server_nr_exports(struct nbds_server *srv);

#endif /* TBLK_TOOLS_EXPORT_NBD_H */
