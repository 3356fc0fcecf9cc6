/* SPDX-License-Identifier: MIT */
/*
 * daemon-objects.c - tblk-daemon's objects: block nodes from --blockdev (opened at once so
 * errors show where qemu-storage-daemon shows them, reopened on an export's iothread when
 * one asks), iothreads from --object, exports from --export, and the orderly shutdown.
 *
 * Threading: main thread only.
 */
#include <stdlib.h>
#include <string.h>

#include "common/common.h"
#include "threadpool/threadpool.h"
#include "tools/daemon-int.h"

struct blockdev {
	char *node_name;
	GHashTable *opts;		/* what to open it with again */
	unsigned int flags;
	struct tblk_blk *blk;
	bool bound;			/* an export uses it: its loop is fixed */
	char *used_by;			/* a later node took it as its child */
};

struct iothread_obj {
	char *id;
	struct tblk_iothread *iot;
};

static struct {
	struct export_host host;
	GPtrArray *blockdevs;		/* struct blockdev * */
	GPtrArray *iothreads;		/* struct iothread_obj * */
	GPtrArray *exports;		/* struct export * */
	GPtrArray *server_types;	/* const struct export_type * with a server */
} d;

static struct blockdev *find_blockdev(const char *name)
{
	for (guint i = 0; i < d.blockdevs->len; i++) {
		struct blockdev *b = g_ptr_array_index(d.blockdevs, i);

		if (!strcmp(b->node_name, name) && !b->used_by)
			return b;
	}
	return NULL;
}

static int host_get_loop(struct export_host *host, const char *id, struct tblk_loop **ploop,
			 GError **errp)
{
	if (!id) {
		*ploop = host->main_loop;
		return 0;
	}
	for (guint i = 0; i < d.iothreads->len; i++) {
		struct iothread_obj *o = g_ptr_array_index(d.iothreads, i);

		if (!strcmp(o->id, id)) {
			*ploop = tblk_iothread_get_loop(o->iot);
			return 0;
		}
	}
	return tblk_error_set(errp, ENOENT, "iothread \"%s\" not found", id);
}

static int open_blockdev(struct blockdev *b, struct tblk_loop *loop, GError **errp)
{
	return tblk_blk_open(&b->blk, NULL, b->opts, b->flags, loop, errp);
}

static int host_get_blk(struct export_host *host, const char *node_name,
			struct tblk_loop *loop, bool writable, struct tblk_blk **pblk,
			GError **errp)
{
	struct blockdev *b = find_blockdev(node_name);
	int ret;

	if (!b) {
		for (guint i = 0; i < d.blockdevs->len; i++) {
			struct blockdev *c = g_ptr_array_index(d.blockdevs, i);

			if (!strcmp(c->node_name, node_name))
				return tblk_error_set(errp, EBUSY, "Node '%s' is the child of "
						      "'%s': export that one", node_name,
						      c->used_by);
		}
		return tblk_error_set(errp, ENOENT, "Cannot find device='' nor node-name='%s'",
				      node_name);
	}
	if (writable && tblk_blk_is_read_only(b->blk))
		return tblk_error_set(errp, EACCES, "Cannot export read-only node as writable");
	if (tblk_blk_get_loop(b->blk) != loop) {
		if (b->bound)
			return tblk_error_set(errp, EBUSY, "Node '%s' is already exported on "
					      "another iothread", node_name);
		tblk_blk_close(b->blk);
		b->blk = NULL;
		ret = open_blockdev(b, loop, errp);
		if (ret < 0)
			return ret;
	}
	b->bound = true;
	*pblk = b->blk;
	return 0;
}

void daemon_objects_init(struct tblk_loop *main_loop)
{
	d.host.main_loop = main_loop;
	d.host.get_blk = host_get_blk;
	d.host.get_loop = host_get_loop;
	d.blockdevs = g_ptr_array_new();
	d.iothreads = g_ptr_array_new();
	d.exports = g_ptr_array_new();
	d.server_types = g_ptr_array_new();
}

struct export_host *daemon_host(void)
{
	return &d.host;
}

static char *take(GHashTable *opts, const char *key)
{
	gpointer k = NULL, v = NULL;

	if (!g_hash_table_steal_extended(opts, key, &k, &v))
		return NULL;
	g_free(k);
	return v;
}

/*
 * "file=NODE" (or backing=NODE) names an earlier --blockdev: the library opens children
 * from options, so the earlier node's options move under "file." and it closes; the new
 * node owns it from now on.
 */
static int inline_child(GHashTable *opts, const char *key, GError **errp)
{
	const char *name = g_hash_table_lookup(opts, key);
	struct blockdev *c = name ? find_blockdev(name) : NULL;
	GHashTableIter it;
	gpointer k, v;

	if (!c)
		return 0;
	if (c->bound)
		return tblk_error_set(errp, EBUSY, "Node '%s' is already exported", name);
	g_hash_table_iter_init(&it, c->opts);
	while (g_hash_table_iter_next(&it, &k, &v)) {
		if (!strcmp(k, "node-name"))
			continue;
		g_hash_table_insert(opts, g_strdup_printf("%s.%s", key, (char *)k), g_strdup(v));
	}
	if (c->flags & TBLK_OPEN_SHARE_RW)
		g_hash_table_insert(opts, g_strdup("force-share"), g_strdup("on"));
	g_hash_table_remove(opts, key);
	tblk_blk_close(c->blk);
	c->blk = NULL;
	c->used_by = g_strdup(g_hash_table_lookup(opts, "node-name"));
	return 0;
}

int daemon_add_blockdev(const char *arg, GError **errp)
{
	g_autoptr(GHashTable) opts = tblk_opts_new();
	g_autofree char *fs = NULL, *dz = NULL;
	struct blockdev *b;
	bool share = false;
	int ret;

	ret = tblk_opts_parse(opts, arg, "driver", errp);
	if (ret < 0)
		return ret;
	if (!g_hash_table_contains(opts, "driver"))
		return tblk_error_set(errp, EINVAL, "Parameter 'driver' is missing");
	if (!g_hash_table_contains(opts, "node-name"))
		return tblk_error_set(errp, EINVAL, "'node-name' must be specified for the root "
				      "node");
	if (find_blockdev(g_hash_table_lookup(opts, "node-name")))
		return tblk_error_set(errp, EEXIST, "Duplicate nodes with node-name='%s'",
				      (char *)g_hash_table_lookup(opts, "node-name"));
	if (inline_child(opts, "file", errp) < 0 || inline_child(opts, "backing", errp) < 0)
		return -EBUSY;
	fs = take(opts, "force-share");
	if (fs && tblk_parse_bool(fs, &share) < 0)
		return tblk_error_set(errp, EINVAL, "Parameter 'force-share' expects 'on' or "
				      "'off'");
	dz = take(opts, "detect-zeroes");
	if (dz && strcmp(dz, "off"))
		return tblk_error_set(errp, ENOTSUP, "detect-zeroes=%s is not supported", dz);
	b = g_new0(struct blockdev, 1);
	b->node_name = g_strdup(g_hash_table_lookup(opts, "node-name"));
	b->opts = g_steal_pointer(&opts);
	b->flags = TBLK_OPEN_RDWR | TBLK_OPEN_NO_PROBE | (share ? TBLK_OPEN_SHARE_RW : 0);
	ret = open_blockdev(b, d.host.main_loop, errp);
	if (ret < 0) {
		g_hash_table_destroy(b->opts);
		g_free(b->node_name);
		g_free(b);
		return ret;
	}
	g_ptr_array_add(d.blockdevs, b);
	return 0;
}

/* An iothread property that qemu types as a non-negative int64. Returns 0 or -EINVAL. */
static int take_nonneg(GHashTable *opts, const char *key, int64_t *out, GError **errp)
{
	g_autofree char *v = take(opts, key);
	long long n;
	char *end;

	*out = -1;
	if (!v)
		return 0;
	errno = 0;
	n = strtoll(v, &end, 0);
	if (!*v || *end || errno || g_ascii_isspace(*v))
		return tblk_error_set(errp, EINVAL, "Parameter '%s' expects integer", key);
	if (n < 0)
		return tblk_error_set(errp, EINVAL, "%s value must be in range [0, %lld]", key,
				      (long long)INT64_MAX);
	*out = n;
	return 0;
}

/*
 * qemu's polling and batching properties. poll-max-ns caps the loop's adaptive polling (0
 * turns it off), as in qemu; the loop sizes its window itself (see loop.c), so poll-grow and
 * poll-shrink are checked and have no further effect, and so is aio-max-batch (a loop
 * submits what one iteration gathered).
 */
static int take_polling(GHashTable *opts, int64_t *poll_max_ns, GError **errp)
{
	static const char *const ignored[] = { "poll-grow", "poll-shrink", "aio-max-batch" };
	int64_t unused;
	int ret;

	ret = take_nonneg(opts, "poll-max-ns", poll_max_ns, errp);
	for (size_t i = 0; ret == 0 && i < G_N_ELEMENTS(ignored); i++)
		ret = take_nonneg(opts, ignored[i], &unused, errp);
	return ret;
}

struct poll_max {
	struct tblk_loop *loop;
	uint64_t ns;
};

/* On the iothread (or before it runs its loop): the setting is the loop thread's. */
static void set_poll_max(void *opaque)
{
	struct poll_max *pm = opaque;

	tblk_loop_set_poll_max_ns(pm->loop, pm->ns);
}

int daemon_add_object(const char *arg, GError **errp)
{
	g_autoptr(GHashTable) opts = tblk_opts_new();
	g_autofree char *type = NULL;
	struct iothread_obj *o;
	struct tblk_loop *loop;
	int64_t poll_max_ns;
	GHashTableIter it;
	gpointer k, v;
	int ret;

	ret = tblk_opts_parse(opts, arg, "qom-type", errp);
	if (ret < 0)
		return ret;
	type = take(opts, "qom-type");
	if (!type)
		return tblk_error_set(errp, EINVAL, "Parameter 'qom-type' is missing");
	if (strcmp(type, "iothread"))
		return tblk_error_set(errp, EINVAL, "Parameter 'qom-type' does not accept value "
				      "'%s'", type);
	if (!g_hash_table_contains(opts, "id"))
		return tblk_error_set(errp, EINVAL, "Parameter 'id' is missing");
	if (host_get_loop(&d.host, g_hash_table_lookup(opts, "id"), &loop, NULL) == 0)
		return tblk_error_set(errp, EEXIST, "attempt to add duplicate property '%s' to "
				      "object (type 'container')",
				      (char *)g_hash_table_lookup(opts, "id"));
	ret = take_polling(opts, &poll_max_ns, errp);
	if (ret < 0)
		return ret;
	o = g_new0(struct iothread_obj, 1);
	o->id = take(opts, "id");
	g_hash_table_iter_init(&it, opts);
	if (g_hash_table_iter_next(&it, &k, &v)) {
		ret = tblk_error_set(errp, EINVAL, "Parameter '%s' is unexpected", (char *)k);
		goto out_free;
	}
	o->iot = tblk_iothread_new(o->id, errp);
	if (!o->iot) {
		ret = -ENOMEM;
		goto out_free;
	}
	if (poll_max_ns >= 0) {
		struct poll_max pm = { tblk_iothread_get_loop(o->iot), (uint64_t)poll_max_ns };

		tblk_loop_call_wait(pm.loop, set_poll_max, &pm);
	}
	g_ptr_array_add(d.iothreads, o);
	return 0;
out_free:
	g_free(o->id);
	g_free(o);
	return ret;
}

int daemon_add_export(const char *arg, GError **errp)
{
	g_autoptr(GHashTable) opts = tblk_opts_new();
	struct export *exp;
	int ret;

	ret = tblk_opts_parse(opts, arg, "type", errp);
	if (ret < 0)
		return ret;
	if (g_hash_table_contains(opts, "id")) {
		for (guint i = 0; i < d.exports->len; i++) {
			struct export *e = g_ptr_array_index(d.exports, i);

			if (!strcmp(e->common.id, g_hash_table_lookup(opts, "id")))
				return tblk_error_set(errp, EEXIST, "Block export id '%s' is "
						      "already in use", e->common.id);
		}
	}
	ret = export_add(&d.host, opts, &exp, errp);
	if (ret < 0)
		return ret;
	g_ptr_array_add(d.exports, exp);
	return 0;
}

int daemon_add_server(const struct export_type *type, const char *arg, GError **errp)
{
	g_autoptr(GHashTable) opts = tblk_opts_new();
	int ret;

	ret = tblk_opts_parse(opts, arg, NULL, errp);
	if (ret < 0)
		return ret;
	ret = type->server(&d.host, opts, errp);
	if (ret == 0)
		g_ptr_array_add(d.server_types, (gpointer)type);
	return ret;
}

struct find_server {
	const char *name;
	const struct export_type *found;
};

static void match_server(const struct export_type *type, void *opaque)
{
	struct find_server *f = opaque;

	if (type->server_option && !strcmp(type->server_option, f->name))
		f->found = type;
}

const struct export_type *daemon_server_type(const char *name)
{
	struct find_server f = { name, NULL };

	export_type_foreach(match_server, &f);
	return f.found;
}

int daemon_shutdown(void)
{
	int failures = 0;

	/* Stop taking requests everywhere first, then wait for what is in flight. */
	for (guint i = 0; i < d.exports->len; i++)
		export_shutdown(g_ptr_array_index(d.exports, i));
	for (guint i = 0; i < d.exports->len; i++)
		export_free(g_ptr_array_index(d.exports, i));
	g_ptr_array_set_size(d.exports, 0);
	for (guint i = 0; i < d.server_types->len; i++) {
		const struct export_type *t = g_ptr_array_index(d.server_types, i);

		if (t->server_free)
			t->server_free();
	}
	for (guint i = 0; i < d.blockdevs->len; i++) {
		struct blockdev *b = g_ptr_array_index(d.blockdevs, i);

		if (b->blk) {
			tblk_blk_drain(b->blk);
			if (!tblk_blk_is_read_only(b->blk) && tblk_blk_flush(b->blk) < 0)
				failures++;
			tblk_blk_close(b->blk);
		}
		g_hash_table_destroy(b->opts);
		g_free(b->used_by);
		g_free(b->node_name);
		g_free(b);
	}
	g_ptr_array_set_size(d.blockdevs, 0);
	for (guint i = 0; i < d.iothreads->len; i++) {
		struct iothread_obj *o = g_ptr_array_index(d.iothreads, i);

		tblk_iothread_free(o->iot);
		g_free(o->id);
		g_free(o);
	}
	g_ptr_array_set_size(d.iothreads, 0);
	return failures;
}
