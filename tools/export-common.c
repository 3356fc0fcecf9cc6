/* SPDX-License-Identifier: MIT */
/*
 * export-common.c - the registry of export types, the options every export shares, and
 * running a function on an export's loop. See export.h.
 *
 * Threading: the registry is filled by constructors before main() and read-only after;
 * everything else runs on the program's main thread.
 */
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "threadpool/threadpool.h"
#include "tools/export.h"

#define EXPORT_TYPES_MAX	8

static const struct export_type *types[EXPORT_TYPES_MAX];
static unsigned int nr_types;

void export_type_register(const struct export_type *type)
{
	assert(nr_types < EXPORT_TYPES_MAX);
	types[nr_types++] = type;
}

const struct export_type *export_type_find(const char *name)
{
	for (unsigned int i = 0; i < nr_types; i++)
		if (!strcmp(types[i]->name, name))
			return types[i];
	return NULL;
}

void export_type_foreach(void (*fn)(const struct export_type *type, void *opaque),
			 void *opaque)
{
	for (unsigned int i = 0; i < nr_types; i++)
		fn(types[i], opaque);
}

int export_take_bool(GHashTable *opts, const char *key, bool *val, GError **errp)
{
	g_autofree char *v = NULL;
	gpointer k = NULL, vv = NULL;

	if (!g_hash_table_steal_extended(opts, key, &k, &vv))
		return 0;
	g_free(k);
	v = vv;
	if (!strcmp(v, "on") || !strcmp(v, "true") || !strcmp(v, "yes")) {
		*val = true;
		return 0;
	}
	if (!strcmp(v, "off") || !strcmp(v, "false") || !strcmp(v, "no")) {
		*val = false;
		return 0;
	}
	return tblk_error_set(errp, EINVAL, "Parameter '%s' expects 'on' or 'off'", key);
}

int export_take_uint(GHashTable *opts, const char *key, uint64_t *val, GError **errp)
{
	g_autofree char *v = NULL;
	gpointer k = NULL, vv = NULL;
	uint64_t n;

	if (!g_hash_table_steal_extended(opts, key, &k, &vv))
		return 0;
	g_free(k);
	v = vv;
	if (tblk_parse_uint64(v, &n) < 0)
		return tblk_error_set(errp, EINVAL, "Parameter '%s' expects a number", key);
	*val = n;
	return 0;
}

static char *take(GHashTable *opts, const char *key)
{
	gpointer k = NULL, v = NULL;

	if (!g_hash_table_steal_extended(opts, key, &k, &v))
		return NULL;
	g_free(k);
	return v;
}

static void common_clear(struct export_common *c)
{
	g_free(c->id);
	g_free(c->node_name);
	g_free(c->iothread);
	memset(c, 0, sizeof(*c));
}

static int parse_common(GHashTable *opts, struct export_common *c, GError **errp)
{
	c->id = take(opts, "id");
	c->node_name = take(opts, "node-name");
	c->iothread = take(opts, "iothread");
	if (export_take_bool(opts, "writable", &c->writable, errp) < 0 ||
	    export_take_bool(opts, "writethrough", &c->writethrough, errp) < 0 ||
	    export_take_bool(opts, "fixed-iothread", &c->fixed_iothread, errp) < 0)
		return -EINVAL;
	if (!c->id)
		return tblk_error_set(errp, EINVAL, "Parameter 'id' is missing");
	if (!c->node_name)
		return tblk_error_set(errp, EINVAL, "Parameter 'node-name' is missing");
	return 0;
}

int export_add(struct export_host *host, GHashTable *opts, struct export **pexp,
	       GError **errp)
{
	g_autofree char *tname = take(opts, "type");
	const struct export_type *type;
	struct export *exp;
	GHashTableIter it;
	gpointer k, v;
	int ret;

	if (!tname)
		return tblk_error_set(errp, EINVAL, "Parameter 'type' is missing");
	type = export_type_find(tname);
	if (!type)
		return tblk_error_set(errp, EINVAL, "Parameter 'type' does not accept value '%s'",
				      tname);
	exp = g_new0(struct export, 1);
	exp->type = type;
	ret = parse_common(opts, &exp->common, errp);
	if (ret < 0)
		goto out_free;
	ret = host->get_loop(host, exp->common.iothread, &exp->loop, errp);
	if (ret < 0)
		goto out_free;
	ret = host->get_blk(host, exp->common.node_name, exp->loop, exp->common.writable,
			    &exp->blk, errp);
	if (ret < 0)
		goto out_free;
	if (exp->common.writethrough)
		tblk_blk_set_writethrough(exp->blk, true);
	if (type->deny_resize) {
		ret = tblk_blk_lock_perms(exp->blk, 0, 0, TBLK_PERM_RESIZE, errp);
		if (ret < 0)
			goto out_free;
	}
	ret = type->add(exp, opts, errp);
	if (ret < 0)
		goto out_share;
	g_hash_table_iter_init(&it, opts);
	if (g_hash_table_iter_next(&it, &k, &v)) {
		ret = tblk_error_set(errp, EINVAL, "Parameter '%s' is unexpected", (char *)k);
		type->shutdown(exp);
		tblk_blk_drain(exp->blk);
		type->free(exp);
		goto out_share;
	}
	*pexp = exp;
	return 0;
out_share:
	if (type->deny_resize)
		tblk_blk_unlock_perms(exp->blk, 0, 0, TBLK_PERM_RESIZE);
out_free:
	common_clear(&exp->common);
	g_free(exp);
	return ret;
}

void export_shutdown(struct export *exp)
{
	exp->type->shutdown(exp);
}

void export_free(struct export *exp)
{
	if (!exp)
		return;
	tblk_blk_drain(exp->blk);
	exp->type->free(exp);
	if (exp->type->deny_resize)
		tblk_blk_unlock_perms(exp->blk, 0, 0, TBLK_PERM_RESIZE);
	common_clear(&exp->common);
	g_free(exp);
}

void export_run_on_loop(struct tblk_loop *loop, void (*fn)(void *opaque), void *opaque)
{
	tblk_loop_call_wait(loop, fn, opaque);
}
