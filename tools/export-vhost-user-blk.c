/* SPDX-License-Identifier: MIT */
/*
 * export-vhost-user-blk.c - the "vhost-user-blk" export type: qemu-storage-daemon's options
 * (addr.type=unix,addr.path= or addr.type=fd,addr.str=, num-queues, logical-block-size)
 * over the vhost-user back-end of virtio-blk/.
 *
 * Threading: add/shutdown/free run on the main thread; the server itself lives on the
 * export's loop and is reached through export_run_on_loop().
 */
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "common/common.h"
#include "virtio-blk/virtio-blk.h"
#include "tools/export.h"

struct vub {
	struct tblk_vu_server *srv;
	struct tblk_vu_opts opts;
	char *path;
	char *serial;
	struct export *exp;
	GError *err;
	int ret;
};

static char *take(GHashTable *opts, const char *key)
{
	gpointer k = NULL, v = NULL;

	if (!g_hash_table_steal_extended(opts, key, &k, &v))
		return NULL;
	g_free(k);
	return v;
}

static int parse_addr(struct vub *v, GHashTable *opts, GError **errp)
{
	g_autofree char *type = take(opts, "addr.type");
	g_autofree char *str = NULL;
	uint64_t fd;
	int sotype;
	socklen_t len = sizeof(sotype);

	if (!type)
		return tblk_error_set(errp, EINVAL, "Parameter 'addr' is missing");
	if (!strcmp(type, "unix")) {
		v->path = take(opts, "addr.path");
		if (!v->path)
			return tblk_error_set(errp, EINVAL, "Parameter 'addr.path' is missing");
		g_free(take(opts, "addr.abstract"));
		g_free(take(opts, "addr.tight"));
		v->opts.path = v->path;
		v->opts.listen_fd = -1;
		return 0;
	}
	if (strcmp(type, "fd"))
		return tblk_error_set(errp, EINVAL, "Only socket address types 'unix' and 'fd' "
				      "are supported");
	str = take(opts, "addr.str");
	if (!str)
		return tblk_error_set(errp, EINVAL, "Parameter 'addr.str' is missing");
	if (tblk_parse_uint64(str, &fd) < 0 || fd > INT32_MAX)
		return tblk_error_set(errp, EINVAL, "No file descriptor named %s found", str);
	if (getsockopt((int)fd, SOL_SOCKET, SO_TYPE, &sotype, &len) < 0)
		return tblk_error_set(errp, EINVAL, "File descriptor '%s' is not a socket", str);
	v->opts.path = NULL;
	v->opts.listen_fd = (int)fd;
	return 0;
}

static int parse(struct vub *v, struct export *exp, GHashTable *opts, GError **errp)
{
	uint64_t nq = 1, lbs = 512;
	int ret;

	ret = parse_addr(v, opts, errp);
	if (ret < 0)
		return ret;
	if (export_take_uint(opts, "num-queues", &nq, errp) < 0 ||
	    export_take_uint(opts, "logical-block-size", &lbs, errp) < 0)
		return -EINVAL;
	if (nq > UINT16_MAX)
		return tblk_error_set(errp, EINVAL, "Parameter 'num-queues' expects uint16_t");
	if (nq == 0)
		return tblk_error_set(errp, EINVAL, "num-queues must be greater than 0");
	if (nq > TBLK_VBLK_MAX_QUEUES)
		return tblk_error_set(errp, EINVAL, "num-queues must be at most %u",
				      TBLK_VBLK_MAX_QUEUES);
	if (lbs < 512 || lbs > (2u << 20))
		return tblk_error_set(errp, EINVAL, "Property %s.logical-block-size doesn't take "
				      "value %" PRIu64 " (minimum: 512, maximum: 2097152)",
				      exp->common.id, lbs);
	if (!TBLK_IS_POW2(lbs))
		return tblk_error_set(errp, EINVAL, "Property %s.logical-block-size doesn't take "
				      "value '%" PRIu64 "', it's not a power of 2",
				      exp->common.id, lbs);
	v->serial = take(opts, "serial");
	v->opts.blk = (struct tblk_vblk_opts){
		.num_queues = (unsigned int)nq,
		.logical_block_size = (uint32_t)lbs,
		.writable = exp->common.writable,
		.serial = v->serial ? v->serial : exp->common.id,
	};
	return 0;
}

static void start_on_loop(void *opaque)
{
	struct vub *v = opaque;

	v->ret = tblk_vu_server_start(&v->srv, v->exp->blk, &v->opts, &v->err);
}

static void vub_free_priv(struct vub *v)
{
	g_free(v->path);
	g_free(v->serial);
	g_free(v);
}

static int vub_add(struct export *exp, GHashTable *opts, GError **errp)
{
	struct vub *v = g_new0(struct vub, 1);
	int ret;

	v->exp = exp;
	ret = parse(v, exp, opts, errp);
	if (ret < 0)
		goto out_free;
	export_run_on_loop(exp->loop, start_on_loop, v);
	if (v->ret < 0) {
		ret = v->ret;
		g_propagate_error(errp, v->err);
		goto out_free;
	}
	exp->priv = v;
	return 0;
out_free:
	vub_free_priv(v);
	return ret;
}

static void stop_on_loop(void *opaque)
{
	struct vub *v = opaque;

	tblk_vu_server_stop(v->srv);
}

static void free_on_loop(void *opaque)
{
	struct vub *v = opaque;

	tblk_vu_server_free(v->srv);
}

static void vub_shutdown(struct export *exp)
{
	export_run_on_loop(exp->loop, stop_on_loop, exp->priv);
}

static void vub_free(struct export *exp)
{
	struct vub *v = exp->priv;

	export_run_on_loop(exp->loop, free_on_loop, v);
	vub_free_priv(v);
	exp->priv = NULL;
}

static const struct export_type vhost_user_blk = {
	.name = "vhost-user-blk",
	.add = vub_add,
	.shutdown = vub_shutdown,
	.free = vub_free,
};

__attribute__((constructor)) static void vub_register(void)
{
	export_type_register(&vhost_user_blk);
}
