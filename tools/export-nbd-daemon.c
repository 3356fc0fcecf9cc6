/* SPDX-License-Identifier: MIT */
/*
 * export-nbd-daemon.c - the "nbd" export type of tools/export.h: tblk-daemon's
 * `--nbd-server addr.type=inet,addr.host=H,addr.port=P` (or addr.type=unix,addr.path=S, or
 * addr.type=fd,addr.str=N; max-connections=N) makes the one NBD server of the program, and
 * `--export type=nbd,id=,node-name=,name=,description=,writable=,allocation-depth=,
 * multi-conn=` adds an export to it, as qemu-storage-daemon does.
 *
 * Threading: everything here runs on the program's main thread (export.h's contract); the
 * server's listeners and handshakes run on the host's main loop, each connection then moves
 * to its export's loop (export-nbd-conn.c).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "tools/export-nbd.h"
#include "tools/export.h"

static struct nbds_server *nbd_server;	/* [main thread] */

static char *nbd_take(GHashTable *opts, const char *key)
{
	gpointer k = NULL, v = NULL;

	if (!g_hash_table_steal_extended(opts, key, &k, &v))
		return NULL;
	g_free(k);
	return v;
}

static int nbd_leftover(GHashTable *opts, GError **errp)
{
	GHashTableIter it;
	gpointer k, v;

	g_hash_table_iter_init(&it, opts);
	if (g_hash_table_iter_next(&it, &k, &v))
		return tblk_error_set(errp, EINVAL, "Parameter '%s' is unexpected", (char *)k);
	return 0;
}

static int listen_addr(struct nbds_server *srv, GHashTable *opts, GError **errp)
{
	g_autofree char *type = nbd_take(opts, "addr.type");
	g_autofree char *host = NULL, *port = NULL, *path = NULL, *str = NULL;
	uint64_t fd;

	if (!type)
		return tblk_error_set(errp, EINVAL, "Parameter 'addr.type' is missing");
	if (!strcmp(type, "inet")) {
		host = nbd_take(opts, "addr.host");
		port = nbd_take(opts, "addr.port");
		if (!host)
			return tblk_error_set(errp, EINVAL, "Parameter 'addr.host' is missing");
		if (!port)
			return tblk_error_set(errp, EINVAL, "Parameter 'addr.port' is missing");
		if (nbd_leftover(opts, errp) < 0)
			return -EINVAL;
		return nbds_server_listen_inet(srv, host, port, errp);
	}
	if (!strcmp(type, "unix")) {
		path = nbd_take(opts, "addr.path");
		if (!path)
			return tblk_error_set(errp, EINVAL, "Parameter 'addr.path' is missing");
		if (nbd_leftover(opts, errp) < 0)
			return -EINVAL;
		return nbds_server_listen_unix(srv, path, errp);
	}
	if (!strcmp(type, "fd")) {
		str = nbd_take(opts, "addr.str");
		if (!str)
			return tblk_error_set(errp, EINVAL, "Parameter 'addr.str' is missing");
		if (tblk_parse_uint64(str, &fd) < 0 || fd > INT32_MAX)
			return tblk_error_set(errp, EINVAL, "'%s' is not a valid file descriptor",
					      str);
		if (nbd_leftover(opts, errp) < 0)
			return -EINVAL;
		return nbds_server_listen_fd(srv, (int)fd, errp);
	}
	return tblk_error_set(errp, EINVAL, "Parameter 'type' does not accept value '%s'", type);
}

static int nbd_server_start(struct export_host *host, GHashTable *opts, GError **errp)
{
	g_autofree char *tls = nbd_take(opts, "tls-creds");
	g_autofree char *authz = nbd_take(opts, "tls-authz");
	uint64_t max = 0;
	struct nbds_server *srv;

	if (nbd_server)
		return tblk_error_set(errp, EEXIST, "NBD server already running");
	if (tls || authz)
		return tblk_error_set(errp, ENOTSUP, "TLS is not supported by this NBD server");
	if (export_take_uint(opts, "max-connections", &max, errp) < 0)
		return -EINVAL;
	if (max > UINT32_MAX)
		return tblk_error_set(errp, EINVAL, "Parameter 'max-connections' is too large");
	srv = nbds_server_new(host->main_loop);
	nbds_server_set_max_clients(srv, (unsigned int)max);
	if (listen_addr(srv, opts, errp) < 0) {
		nbds_server_free(srv);
		return -EINVAL;
	}
	nbd_server = srv;
	return 0;
}

static void nbd_server_stop(void)
{
	nbds_server_free(nbd_server);
	nbd_server = NULL;
}

static int nbd_export_add(struct export *exp, GHashTable *opts, GError **errp)
{
	g_autofree char *name = nbd_take(opts, "name");
	g_autofree char *desc = nbd_take(opts, "description");
	g_autofree char *mc = nbd_take(opts, "multi-conn");
	struct nbds_export_opts o = { 0 };

	if (!nbd_server)
		return tblk_error_set(errp, EINVAL, "NBD server not running");
	if (export_take_bool(opts, "allocation-depth", &o.allocation_depth, errp) < 0)
		return -EINVAL;
	/* qemu-storage-daemon advertises multi-conn unless told otherwise. */
	o.multi_conn = true;
	if (mc && !strcmp(mc, "off"))
		o.multi_conn = false;
	else if (mc && strcmp(mc, "on") && strcmp(mc, "auto"))
		return tblk_error_set(errp, EINVAL,
				      "Parameter 'multi-conn' does not accept value '%s'", mc);
	o.id = exp->common.id;
	o.name = name ? name : exp->common.node_name;
	o.description = desc;
	o.writable = exp->common.writable;
	o.discard = true;	/* the node's own discard option decides what a discard does */
	if (nbds_server_add_export(nbd_server, exp->blk, &o, errp) < 0)
		return -EINVAL;
	exp->priv = nbd_server;
	return 0;
}

static void nbd_export_shutdown(struct export *exp)
{
	if (exp->priv) {
		nbds_server_del_export(exp->priv, exp->common.id);
		exp->priv = NULL;
	}
}

static void nbd_export_free(struct export *exp)
{
	nbd_export_shutdown(exp);
}

static const struct export_type nbd_export_type = {
	.name = "nbd",
	.add = nbd_export_add,
	.shutdown = nbd_export_shutdown,
	.free = nbd_export_free,
	.server_option = "nbd-server",
	.server = nbd_server_start,
	.server_free = nbd_server_stop,
	.deny_resize = true,	/* as qemu: nobody resizes an image under an NBD client */
};

static void __attribute__((constructor)) nbd_export_register(void)
{
	export_type_register(&nbd_export_type);
}
