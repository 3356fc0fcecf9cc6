/* SPDX-License-Identifier: MIT */
/*
 * node.c - the driver table, format probing, and opening and closing nodes from dotted
 * options. Control path: one thread opens or closes a given node; the tree of nodes below
 * a backend is built here and is [const] until it is closed.
 */
#include <string.h>

#include "tracked/tracked.h"

extern const struct tblk_driver tblk__drv_raw;
extern const struct tblk_driver tblk__drv_qcow2;
extern const struct tblk_driver tblk__drv_file;
extern const struct tblk_driver tblk__drv_host_device;
extern const struct tblk_driver tblk__drv_null_co;
extern const struct tblk_driver tblk__drv_null_aio;
extern const struct tblk_driver tblk__drv_nbd;
extern const struct tblk_driver tblk__drv_blkdebug;
extern const struct tblk_driver tblk__drv_copy_on_read;
extern const struct tblk_driver tblk__drv_throttle;

/* Filters: opened by name only, never probed. */
static const struct tblk_driver *const filters[] = {
	&tblk__drv_copy_on_read,
	&tblk__drv_throttle,
	NULL,
};

static const struct tblk_driver *const formats[] = {
	&tblk__drv_raw,
	&tblk__drv_qcow2,
	NULL,
};

static const struct tblk_driver *const protocols[] = {
	&tblk__drv_file,
	&tblk__drv_host_device,
	&tblk__drv_null_co,
	&tblk__drv_null_aio,
	&tblk__drv_nbd,
	&tblk__drv_blkdebug,
	NULL,
};

/* Bytes read from the start of a file for probing. */
#define PROBE_BYTES 2048

const struct tblk_driver *const *tblk__format_drivers(void)
{
	return formats;
}

const char *const *tblk_format_names(void)
{
	static const char *names[TBLK_ARRAY_SIZE(formats)];

	for (size_t i = 0; formats[i]; i++)
		names[i] = formats[i]->name;
	return names;
}

bool tblk_driver_known(const char *name)
{
	return tblk__driver_find(name) != NULL;
}

const struct tblk_driver *tblk__driver_find(const char *name)
{
	for (size_t i = 0; formats[i]; i++)
		if (!strcmp(formats[i]->name, name))
			return formats[i];
	for (size_t i = 0; protocols[i]; i++)
		if (!strcmp(protocols[i]->name, name))
			return protocols[i];
	for (size_t i = 0; filters[i]; i++)
		if (!strcmp(filters[i]->name, name))
			return filters[i];
	return NULL;
}

/*
 * A protocol named by a "proto://..." or "proto:" prefix of the file name, if any; a
 * transport may follow the name after a '+' ("nbd+unix://").
 */
static const struct tblk_driver *protocol_from_filename(const char *filename)
{
	const char *colon = filename ? strchr(filename, ':') : NULL;
	const char *slash = filename ? strchr(filename, '/') : NULL;

	if (!colon || (slash && slash < colon))
		return NULL;
	for (size_t i = 0; protocols[i]; i++) {
		size_t n = strlen(protocols[i]->name);

		if ((size_t)(colon - filename) >= n && !strncmp(filename, protocols[i]->name, n) &&
		    (filename[n] == ':' || filename[n] == '+'))
			return protocols[i];
	}
	return NULL;
}

const struct tblk_driver *tblk__protocol_for(const char *filename)
{
	return protocol_from_filename(filename) ?: &tblk__drv_file;
}

static struct tblk_node *node_alloc(const struct tblk_driver *drv, unsigned int flags)
{
	struct tblk_node *node = g_new0(struct tblk_node, 1);

	node->drv = drv;
	node->opaque = drv->instance_size ? g_malloc0(drv->instance_size) : NULL;
	node->flags = flags;
	node->read_only = !(flags & TBLK_OPEN_RDWR);
	node->limits.request_alignment = 1;
	node->limits.mem_alignment = 1;
	tblk_mutex_init(&node->lock);
	tblk_cond_init(&node->cv);
	tblk_list_init(&node->in_flight);
	return node;
}

static void node_free(struct tblk_node *node)
{
	tblk_cond_destroy(&node->cv);
	tblk_mutex_destroy(&node->lock);
	g_free(node->opaque);
	g_free(node->node_name);
	g_free(node->filename);
	g_free(node);
}

/* "discard": ignore/off set TBLK_OPEN_NO_UNMAP, unmap/on clear it (qemu's default here). */
static int take_discard_opt(GHashTable *opts, unsigned int *flags, GError **errp)
{
	g_autofree char *v = tblk__opts_take(opts, "discard");

	if (!v)
		return 0;
	if (!strcmp(v, "ignore") || !strcmp(v, "off"))
		*flags |= TBLK_OPEN_NO_UNMAP;
	else if (!strcmp(v, "unmap") || !strcmp(v, "on"))
		*flags &= ~TBLK_OPEN_NO_UNMAP;
	else
		return tblk_error_set(errp, EINVAL, "Invalid discard option");
	return 0;
}

/* Applies the options every node understands to @flags. */
static int take_common_opts(GHashTable *opts, unsigned int *flags, GError **errp)
{
	bool ro = !(*flags & TBLK_OPEN_RDWR), direct = *flags & TBLK_OPEN_NOCACHE;
	bool no_flush = *flags & TBLK_OPEN_NO_FLUSH, share = false;

	if (tblk__opts_take_bool(opts, "read-only", &ro, errp) < 0 ||
	    tblk__opts_take_bool(opts, "cache.direct", &direct, errp) < 0 ||
	    tblk__opts_take_bool(opts, "cache.no-flush", &no_flush, errp) < 0 ||
	    tblk__opts_take_bool(opts, "force-share", &share, errp) < 0)
		return -EINVAL;
	/*
	 * Others may write what we read, never what we write. Only the option is checked: a
	 * reopen for writing keeps TBLK_OPEN_SHARE_RW, as qemu-io -U's "reopen -w" does.
	 */
	if (share && !ro)
		return tblk_error_set(errp, EINVAL, "force-share=on can only be used with "
				      "read-only images");
	share = share || (*flags & TBLK_OPEN_SHARE_RW);
	*flags = (*flags & ~(TBLK_OPEN_RDWR | TBLK_OPEN_NOCACHE | TBLK_OPEN_NO_FLUSH |
			     TBLK_OPEN_SHARE_RW)) |
		 (ro ? 0 : TBLK_OPEN_RDWR) | (direct ? TBLK_OPEN_NOCACHE : 0) |
		 (no_flush ? TBLK_OPEN_NO_FLUSH : 0) | (share ? TBLK_OPEN_SHARE_RW : 0);
	g_free(tblk__opts_take(opts, "auto-read-only"));
	return take_discard_opt(opts, flags, errp);
}

static int check_leftover(const struct tblk_driver *drv, GHashTable *opts, GError **errp)
{
	const char *k = tblk__opts_first_key(opts);

	if (!k)
		return 0;
	if (drv->is_protocol)
		return tblk_error_set(errp, EINVAL, "Block protocol '%s' doesn't support the "
				      "option '%s'", drv->name, k);
	return tblk_error_set(errp, EINVAL, "Block format '%s' does not support the option "
			      "'%s'", drv->name, k);
}

/* Opens a node of @drv with @opts already stripped of "driver". */
static int node_open_drv(struct tblk_node **pnode, const struct tblk_driver *drv,
			 const char *filename, GHashTable *opts, unsigned int flags,
			 GError **errp)
{
	struct tblk_node *node;
	const char *backing;
	int ret;

	if (take_common_opts(opts, &flags, errp) < 0)
		return -EINVAL;
	/*
	 * "backing" null (or "", deprecated) on any node: no backing file, as in qemu, which then
	 * leaves options given for the backing node ("backing.driver") unused.
	 */
	backing = g_hash_table_lookup(opts, "backing");
	if (backing && (!*backing || !strcmp(backing, TBLK__OPTS_NULL))) {
		g_hash_table_remove(opts, "backing");
		flags |= TBLK_OPEN_NO_BACKING;
	}
	if (drv->is_protocol && filename && !g_hash_table_contains(opts, "filename"))
		g_hash_table_insert(opts, g_strdup("filename"), g_strdup(filename));
	node = node_alloc(drv, flags);
	node->node_name = tblk__opts_take(opts, "node-name");
	if (!drv->is_protocol && filename)
		node->filename = g_strdup(filename);
	/* The discard mode is this node's own: children are opened as qemu opens them. */
	ret = drv->open(node, opts, flags & ~TBLK_OPEN_NO_UNMAP, errp);
	if (ret < 0) {
		node_free(node);
		return ret;
	}
	ret = check_leftover(drv, opts, errp);
	if (ret < 0) {
		tblk__node_close(node);
		return ret;
	}
	/* A protocol that names itself canonically (nbd://host:port/x) names its format too. */
	if (node->file && node->file->filename && protocol_from_filename(node->file->filename)) {
		g_free(node->filename);
		node->filename = g_strdup(node->file->filename);
	}
	if (!node->filename && node->file)
		node->filename = g_strdup(node->file->filename);
	*pnode = node;
	return 0;
}

/* Reads the first bytes of @proto and picks the best-scoring format (raw at worst). */
static const struct tblk_driver *probe_format(struct tblk_node *proto, const char *filename,
					      GError **errp)
{
	g_autofree uint8_t *buf = g_malloc0(PROBE_BYTES);
	const struct tblk_driver *best = &tblk__drv_raw;
	int64_t len = tblk_node_getlength(proto);
	int best_score = 0;

	if (len < 0) {
		tblk_error_set_errno(errp, len < -4095 ? EIO : (int)-len,
				     "Could not determine the size of '%s'", filename);
		return NULL;
	}
	len = TBLK_MIN(len, PROBE_BYTES);
	if (len > 0 && tblk_node_pread(proto, 0, buf, (uint64_t)len) < 0) {
		tblk_error_set(errp, EIO, "Could not read image for determining its format");
		return NULL;
	}
	for (size_t i = 0; formats[i]; i++) {
		int score = formats[i]->probe ? formats[i]->probe(buf, (size_t)len, filename) : 0;

		if (score > best_score) {
			best = formats[i];
			best_score = score;
		}
	}
	return best;
}

/* Opens @filename read-only with no options just to probe its format. */
static const struct tblk_driver *probe_file(const char *filename, unsigned int flags,
					    GError **errp)
{
	const struct tblk_driver *proto_drv = protocol_from_filename(filename);
	g_autoptr(GHashTable) popts = tblk_opts_new();
	const struct tblk_driver *drv;
	struct tblk_node *proto;

	flags = (flags & ~TBLK_OPEN_RDWR) | TBLK_OPEN_PROTOCOL;
	if (node_open_drv(&proto, proto_drv ? proto_drv : &tblk__drv_file, filename, popts,
			  flags, errp) < 0)
		return NULL;
	drv = probe_format(proto, filename, errp);
	tblk__node_close(proto);
	return drv;
}

/*
 * What a child's options (@copts, its "@name." keys) need when no file name names it: qemu's
 * errors for a child with no options at all and for one with neither a driver nor a file
 * name. 0 or -EINVAL.
 */
static int check_child_opts(const char *name, GHashTable *copts, GError **errp)
{
	if (g_hash_table_size(copts) == 0)
		return tblk_error_set(errp, EINVAL, "A block device must be specified for \"%s\"",
				      name);
	if (!g_hash_table_contains(copts, "driver") && !g_hash_table_contains(copts, "filename"))
		return tblk_error_set(errp, EINVAL, "Must specify either driver or file");
	return 0;
}

/*
 * No driver and no file name, but options for the file child ("file.filename=x.img",
 * "file.driver=null-co"): qemu opens that child and probes the format from it.
 */
static const struct tblk_driver *probe_file_child(GHashTable *opts, unsigned int flags,
						  GError **errp)
{
	g_autoptr(GHashTable) copts = tblk__opts_copy(opts);
	g_autoptr(GHashTable) popts = tblk__opts_extract_prefix(copts, "file");
	const char *fname = g_hash_table_lookup(popts, "filename");
	const struct tblk_driver *drv;
	struct tblk_node *proto;

	if (check_child_opts("file", popts, errp) < 0)
		return NULL;
	if (!g_hash_table_contains(popts, "driver") && !protocol_from_filename(fname))
		g_hash_table_insert(popts, g_strdup("driver"), g_strdup("file"));
	flags = (flags & ~TBLK_OPEN_RDWR) | TBLK_OPEN_PROTOCOL;
	if (tblk__node_open(&proto, NULL, popts, flags, errp) < 0)
		return NULL;
	drv = probe_format(proto, proto->filename, errp);
	tblk__node_close(proto);
	return drv;
}

/* Whether @opts has a "file.*" key. */
static bool has_file_child_opts(GHashTable *opts)
{
	GHashTableIter it;
	gpointer k, v;

	g_hash_table_iter_init(&it, opts);
	while (g_hash_table_iter_next(&it, &k, &v))
		if (!strncmp(k, "file.", 5))
			return true;
	return false;
}

int tblk__node_open(struct tblk_node **pnode, const char *filename, GHashTable *opts,
		    unsigned int flags, GError **errp)
{
	g_autofree char *drv_name = tblk__opts_take(opts, "driver");
	const struct tblk_driver *drv;
	bool probed = false;
	int ret;

	if (!filename)
		filename = g_hash_table_lookup(opts, "filename");
	/* qemu reads a "filename" option for protocols only; a format needs its file child */
	if (filename && filename == g_hash_table_lookup(opts, "filename") &&
	    !(flags & TBLK_OPEN_PROTOCOL) &&
	    (!drv_name || !tblk__driver_find(drv_name) || !tblk__driver_find(drv_name)->is_protocol)) {
		g_hash_table_remove(opts, "filename");
		filename = NULL;
	}
	if (drv_name) {
		drv = tblk__driver_find(drv_name);
		if (!drv)
			return tblk_error_set(errp, EINVAL, "Unknown driver '%s'", drv_name);
	} else if (!filename && !(flags & (TBLK_OPEN_PROTOCOL | TBLK_OPEN_NO_PROBE)) &&
		   has_file_child_opts(opts)) {
		drv = probe_file_child(opts, flags, errp);
		if (!drv)
			return -EINVAL;
		probed = true;
	} else if (!filename && !(flags & TBLK_OPEN_PROTOCOL) && g_hash_table_contains(opts, "file")) {
		/* "file=NAME" without a driver: the file child is a reference */
		return tblk__opts_child_reference(g_hash_table_lookup(opts, "file"), NULL, errp);
	} else if (!filename && (flags & TBLK_OPEN_PROTOCOL)) {
		return tblk_error_set(errp, EINVAL, "The 'file' block driver requires a file "
				      "name");
	} else if (!filename) {
		/* no driver, no file name, nothing for a file child: no format to probe */
		return tblk_error_set(errp, EINVAL, "Must specify either driver or file");
	} else if (flags & TBLK_OPEN_PROTOCOL) {
		drv = protocol_from_filename(filename) ?: &tblk__drv_file;
	} else if (flags & TBLK_OPEN_NO_PROBE) {
		drv = &tblk__drv_raw;
	} else {
		drv = probe_file(filename, flags, errp);
		if (!drv)
			return -EINVAL;
		probed = true;
	}
	ret = node_open_drv(pnode, drv, filename, opts, flags, errp);
	if (ret == 0)
		(*pnode)->probed = probed;
	return ret;
}

int tblk__node_open_child(struct tblk_node *parent, const char *name, GHashTable *opts,
			  unsigned int flags, struct tblk_node **pchild, GError **errp)
{
	g_autoptr(GHashTable) copts = tblk__opts_extract_prefix(opts, name);
	g_autofree char *fname = g_strdup(g_hash_table_lookup(copts, "filename"));
	g_autofree char *ref = tblk__opts_take(opts, name);
	int ret;

	const struct tblk_driver *cdrv = tblk__driver_find(g_hash_table_lookup(copts, "driver") ?:
							   "");

	/* "file=NAME" names an existing node (tblk-daemon resolves its own --blockdev names). */
	if (ref)
		return tblk__opts_child_reference(ref, copts, errp);
	/* A format child reads no file name: it needs a file child of its own, as in qemu. */
	if (cdrv && !cdrv->is_protocol && fname) {
		g_hash_table_remove(copts, "filename");
		g_clear_pointer(&fname, g_free);
	}
	/* A file name for the image and one for its child: qemu will not choose. */
	if (fname && parent->filename)
		return tblk_error_set(errp, EINVAL, "Can't specify 'file' and 'filename' options at "
				      "the same time");
	if (!fname)
		fname = g_strdup(parent->filename);
	if (!fname && check_child_opts(name, copts, errp) < 0)
		return -EINVAL;
	if (!g_hash_table_contains(copts, "driver") && !protocol_from_filename(fname))
		g_hash_table_insert(copts, g_strdup("driver"), g_strdup("file"));
	ret = tblk__node_open(pchild, fname, copts, flags | TBLK_OPEN_PROTOCOL, errp);
	if (ret < 0)
		return ret;
	ret = check_leftover((*pchild)->drv, copts, errp);
	if (ret < 0) {
		tblk__node_close(*pchild);
		*pchild = NULL;
	}
	return ret;
}

void tblk__node_close(struct tblk_node *node)
{
	if (!node)
		return;
	tblk_node_drain(node);
	if (node->drv->close)
		node->drv->close(node);
	tblk__node_close(node->backing);
	tblk__node_close(node->file);
	node_free(node);
}

struct tblk_node *tblk__node_protocol(struct tblk_node *node)
{
	while (node->file)
		node = node->file;
	return node;
}
