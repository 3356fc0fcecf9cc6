/* SPDX-License-Identifier: MIT */
/*
 * qcow2.c - the qcow2 format driver: the image lock, open and close, and the driver table.
 * The data path is in qcow2-rw.c, metadata in qcow2-cluster.c and qcow2-refcount.c.
 *
 * Threading: open/close on the control thread; every other operation may run concurrently
 * in pool workers and synchronous callers, serialised on metadata by the image lock.
 */
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2-int.h"
#include "formats/qcow2-order.h"

/* qemu's defaults: L2 cache covering the whole image up to 32 MiB, refcount cache a quarter. */
#define L2_CACHE_MAX_BYTES	(32u << 20)

/*
 * The image lock hands over to one waiter at a time (lock_cv is signalled, not broadcast: a
 * woken waiter either takes the lock or waits again behind a holder who will signal in turn),
 * so a busy image does not wake every blocked worker at each release. Waiters for an
 * allocation sleep on cv, woken together when the lock is released.
 */
static void lock_locked(struct qcow2_state *s) TBLK_REQUIRES(s->mu)
{
	while (s->meta_held) {
		s->nr_lock_waiters++;
		tblk_pool_wait(&s->lock_cv, &s->mu);
		s->nr_lock_waiters--;
	}
	s->meta_held = true;
}

static void release_locked(struct qcow2_state *s) TBLK_REQUIRES(s->mu)
{
	s->meta_held = false;
	if (s->nr_lock_waiters)
		tblk_cond_signal(&s->lock_cv);
}

void qcow2_lock(struct qcow2_state *s)
{
	tblk_mutex_lock(&s->mu);
	lock_locked(s);
	tblk_mutex_unlock(&s->mu);
}

void qcow2_unlock(struct qcow2_state *s)
{
	tblk_mutex_lock(&s->mu);
	release_locked(s);
	if (s->nr_alloc_waiters)
		tblk_cond_broadcast(&s->cv);
	tblk_mutex_unlock(&s->mu);
}

void qcow2_wait_alloc(struct qcow2_state *s)
{
	/* Allocations end under the image lock and broadcast cv when they release it. */
	tblk_mutex_lock(&s->mu);
	release_locked(s);
	s->nr_alloc_waiters++;
	tblk_pool_wait(&s->cv, &s->mu);
	s->nr_alloc_waiters--;
	lock_locked(s);
	tblk_mutex_unlock(&s->mu);
}

int qcow2_signal_corruption(struct qcow2_state *s, const char *what, uint64_t offset)
{
	/* The first finding is kept for `check` and `info`; the data path never prints. */
	if (!s->corrupt) {
		s->corrupt = true;
		s->corrupt_what = what;
		s->corrupt_offset = offset;
	}
	return -EUCLEAN;
}

/*
 * On a read-only image no event is fatal. Once an event was reported, further ones are not,
 * except a fatal one while the corrupt bit is not set yet: qemu's rule.
 */
static int signal_event(struct qcow2_state *s, bool fatal, const char *fmt, va_list ap)
{
	g_autofree char *what = NULL;

	fatal = fatal && !s->read_only;
	if (qcow2_dead(s))
		return -EIO;
	if (s->signaled && (!fatal || (s->incompat & QCOW2_INCOMPAT_CORRUPT)))
		return -EIO;
	what = g_strdup_vprintf(fmt, ap);
	s->signaled = true;
	/* qemu prints these itself, without the program's name. */
	if (!fatal) {
		tblk__warn("verbatim: qcow2: Image is corrupt: %s; further non-fatal corruption "
			   "events will be suppressed\n", what);
		return -EIO;
	}
	tblk__warn("verbatim: qcow2: Marking image as corrupt: %s; further corruption events "
		   "will be suppressed\n", what);
	(void)qcow2_signal_corruption(s, "Marked corrupt", 0);
	/* Nothing more reaches the file: what the caches hold is dropped, now and at close. */
	qcow2_cache_clear(s->l2_cache);
	qcow2_cache_clear(s->rc_cache);
	/* The corrupt bit: only the feature field is written; v2 has none. */
	if (s->version >= 3 && !(s->incompat & QCOW2_INCOMPAT_CORRUPT)) {
		uint64_t be;

		s->incompat |= QCOW2_INCOMPAT_CORRUPT;
		be = htobe64(s->incompat);
		if (tblk_node_pwrite(s->node->file, 72, &be, 8, 0) >= 0)
			(void)tblk_node_flush(s->node->file);
	}
	/*
	 * Only now do new requests fail with -ENOMEDIUM; those arriving meanwhile wait for the
	 * image lock and fail with -EIO (s->corrupt), as qemu's requests in flight do, and
	 * not before the request that found the corruption.
	 */
	__atomic_store_n(&s->dead, true, __ATOMIC_RELEASE);
	return -EIO;
}

int qcow2_signal_event(struct qcow2_state *s, bool fatal, const char *fmt, ...)
{
	va_list ap;
	int ret;

	va_start(ap, fmt);
	ret = signal_event(s, fatal, fmt, ap);
	va_end(ap);
	return ret;
}

void qcow2_signal_fatal(struct qcow2_state *s, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	(void)signal_event(s, true, fmt, ap);
	va_end(ap);
}

static int qcow2_probe(const uint8_t *buf, size_t len, const char *filename)
{
	if (len >= 8 && buf[0] == 0x51 && buf[1] == 0x46 && buf[2] == 0x49 && buf[3] == 0xfb) {
		uint32_t v = ((uint32_t)buf[4] << 24) | ((uint32_t)buf[5] << 16) |
			     ((uint32_t)buf[6] << 8) | buf[7];

		return v >= 2 ? 100 : 0;
	}
	return 0;
}

static int load_l1(struct qcow2_state *s, GError **errp)
{
	int ret;

	if (!s->l1_size) {
		s->l1 = NULL;
		return 0;
	}
	s->l1 = g_try_new(uint64_t, s->l1_size);
	if (!s->l1)
		return tblk_error_set(errp, ENOMEM, "Could not allocate L1 table");
	ret = tblk_node_pread(s->node->file, s->l1_offset, s->l1, (uint64_t)s->l1_size * 8);
	if (ret < 0)
		return tblk_error_set_errno(errp, -ret, "Could not read L1 table");
	for (uint32_t i = 0; i < s->l1_size; i++)
		s->l1[i] = be64toh(s->l1[i]);
	return 0;
}

/* Cache sizes from the options, with qemu's defaults. */
static int setup_caches(struct qcow2_state *s, GHashTable *opts, GError **errp)
{
	uint64_t l2_bytes = 0, rc_bytes = 0, total = 0, entry = s->cluster_size;
	uint64_t max_l2 = ((s->size + qcow2_l1_span(s) - 1) / qcow2_l1_span(s)) *
			  s->cluster_size;
	bool has_l2 = g_hash_table_contains(opts, "l2-cache-size");
	bool has_rc = g_hash_table_contains(opts, "refcount-cache-size");
	bool has_total = g_hash_table_contains(opts, "cache-size");
	uint64_t interval = 600;

	if (tblk__opts_take_size(opts, "l2-cache-size", &l2_bytes, errp) < 0 ||
	    tblk__opts_take_size(opts, "refcount-cache-size", &rc_bytes, errp) < 0 ||
	    tblk__opts_take_size(opts, "cache-size", &total, errp) < 0 ||
	    tblk__opts_take_size(opts, "l2-cache-entry-size", &entry, errp) < 0 ||
	    tblk__opts_take_uint64(opts, "cache-clean-interval", &interval, errp) < 0)
		return -EINVAL;
	if (entry != s->cluster_size && (entry < 512 || entry > s->cluster_size ||
					 (entry & (entry - 1))))
		return tblk_error_set(errp, EINVAL, "L2 cache entry size must be a power of two "
				      "between %d and the cluster size (%u)", 512,
				      s->cluster_size);
	if (has_total && has_l2 && has_rc)
		return tblk_error_set(errp, EINVAL, "cache-size, l2-cache-size and "
				      "refcount-cache-size may not be set at the same time");
	if (has_total) {
		if (!has_l2)
			l2_bytes = has_rc ? (total > rc_bytes ? total - rc_bytes : 0)
					  : TBLK_MIN(max_l2, total - total / 4);
		if (!has_rc)
			rc_bytes = total > l2_bytes ? total - l2_bytes : 0;
	}
	if (!has_l2 && !has_total)
		l2_bytes = TBLK_MIN(max_l2, (uint64_t)L2_CACHE_MAX_BYTES);
	if (!has_rc && !has_total)
		rc_bytes = 4ull * s->cluster_size;
	/* Entries are whole tables here (l2-cache-entry-size is accepted, not yet used). */
	s->l2_cache = qcow2_cache_new(s, (unsigned int)TBLK_MIN(l2_bytes / s->cluster_size,
							     65536ull));
	s->rc_cache = qcow2_cache_new(s, (unsigned int)TBLK_MIN(rc_bytes / s->cluster_size,
							     65536ull));
	return 0;
}

/* Opens the backing file named in the header, relative to the image's directory. */
static int open_backing(struct tblk_node *node, struct qcow2_state *s, GHashTable *opts,
			unsigned int flags, GError **errp)
{
	g_autoptr(GHashTable) bopts = tblk__opts_extract_prefix(opts, "backing");
	g_autofree char *path = NULL;
	g_autofree char *ref = tblk__opts_take(opts, "backing");
	GHashTableIter it;
	gpointer k, v;
	int ret;

	/* Not opening one, qemu leaves its options to the unsupported-option check. */
	if (flags & TBLK_OPEN_NO_BACKING) {
		if (ref)
			g_hash_table_insert(opts, g_strdup("backing"), g_steal_pointer(&ref));
		g_hash_table_iter_init(&it, bopts);
		while (g_hash_table_iter_next(&it, &k, &v))
			g_hash_table_insert(opts, g_strdup_printf("backing.%s", (char *)k),
					    g_strdup(v));
		return 0;
	}
	/* "backing": 5 in JSON is no reference: qemu opens the header's backing file */
	if (ref && !strcmp(ref, TBLK__OPTS_NOT_STRING))
		g_clear_pointer(&ref, g_free);
	if (ref) {
		ret = tblk__opts_child_reference(ref, bopts, errp);
		tblk_error_prepend(errp, "Could not open backing file: ");
		return ret;
	}
	if (!s->backing_file)
		return 0;
	/* A file the options name replaces the header's, as in qemu. */
	if (g_hash_table_contains(bopts, "file.filename")) {
		path = NULL;
	} else if (s->backing_file[0] == '/' || strstr(s->backing_file, "://") ||
		   !node->file->filename || !strrchr(node->file->filename, '/')) {
		path = g_strdup(s->backing_file);
	} else {
		/* The image's directory as written, as qemu combines them ("./a" gives "./b"). */
		const char *slash = strrchr(node->file->filename, '/');

		path = g_strdup_printf("%.*s%s", (int)(slash - node->file->filename + 1),
				       node->file->filename, s->backing_file);
	}
	if (s->backing_fmt && !g_hash_table_contains(bopts, "driver"))
		g_hash_table_insert(bopts, g_strdup("driver"), g_strdup(s->backing_fmt));
	flags &= ~(TBLK_OPEN_RDWR | TBLK_OPEN_PROTOCOL | TBLK_OPEN_RESIZE);
	ret = tblk__node_open(&node->backing, path, bopts, flags | TBLK_OPEN_NO_SHARE, errp);
	if (ret < 0) {
		tblk_error_prepend(errp, "Could not open backing file: ");
		return ret;
	}
	return 0;
}

static int open_data_file(struct tblk_node *node, struct qcow2_state *s, GHashTable *opts,
			  unsigned int flags, GError **errp)
{
	g_autoptr(GHashTable) dopts = tblk__opts_extract_prefix(opts, "data-file");
	g_autofree char *path = NULL, *ref = tblk__opts_take(opts, "data-file");
	struct tblk_node *child;
	int ret;

	/*
	 * Metadata only: qemu does not look at the data file or its options. A null node
	 * stands in for an external one (it is never read) so that s->data says it is apart.
	 */
	if ((flags & TBLK_OPEN_NO_DATA_FILE) && !(flags & TBLK_OPEN_RDWR)) {
		GHashTable *nopts;

		if (!(s->incompat & QCOW2_INCOMPAT_DATA_FILE)) {
			s->data = node->file;
			return 0;
		}
		nopts = tblk_opts_new();
		g_hash_table_insert(nopts, g_strdup("driver"), g_strdup("null-co"));
		ret = tblk__node_open(&s->data, NULL, nopts, TBLK_OPEN_PROTOCOL, errp);
		g_hash_table_unref(nopts);
		return ret;
	}
	if (ref)
		return tblk__opts_child_reference(ref, dopts, errp);
	if (!(s->incompat & QCOW2_INCOMPAT_DATA_FILE)) {
		s->data = node->file;
		if (!g_hash_table_size(dopts))
			return 0;
		/* qemu opens the child first: its own errors come before this one */
		if (!g_hash_table_contains(dopts, "driver"))
			g_hash_table_insert(dopts, g_strdup("driver"), g_strdup("file"));
		ret = tblk__node_open(&child, NULL, dopts, (flags & ~TBLK_OPEN_RDWR) |
				      TBLK_OPEN_PROTOCOL | TBLK_OPEN_SHARE_RW, errp);
		if (ret < 0)
			return ret;
		tblk__node_close(child);
		return tblk_error_set(errp, EINVAL, "'data-file' can only be set for images with "
				      "an external data file");
	}
	path = g_strdup(g_hash_table_lookup(dopts, "filename"));
	if (!path)
		path = g_strdup(s->data_file_name);
	if (!g_hash_table_contains(dopts, "driver"))
		g_hash_table_insert(dopts, g_strdup("driver"), g_strdup("file"));
	/* Others may write guest data in place, as long as its size stays. */
	flags |= TBLK_OPEN_PROTOCOL | TBLK_OPEN_NO_SHARE_RESIZE |
		 ((flags & TBLK_OPEN_RDWR) ? TBLK_OPEN_RESIZE : 0);
	return tblk__node_open(&s->data, path, dopts, flags, errp);
}

/* Clears the dirty bit once the refcounts are right again. */
static int mark_clean(struct qcow2_state *s)
{
	int ret;

	if (!(s->incompat & QCOW2_INCOMPAT_DIRTY))
		return 0;
	s->incompat &= ~QCOW2_INCOMPAT_DIRTY;
	ret = qcow2_header_write(s);
	if (ret >= 0)
		ret = tblk_node_flush(s->node->file);
	return ret;
}

/*
 * The dirty bit says that refcounts may be stale (lazy refcounts, not closed cleanly): as
 * qemu, repair them before writing, then clear the bit. A check (TBLK_OPEN_CHECK) does not
 * come here: it shows and repairs what it finds itself.
 */
static int repair_dirty(struct qcow2_state *s, GError **errp)
{
	struct tblk_check_result res = { .messages = g_string_new(NULL) };
	int ret;

	qcow2_lock(s);
	ret = qcow2_check(s, &res, TBLK_CHECK_FIX_LEAKS | TBLK_CHECK_FIX_ERRORS);
	if (ret >= 0 && (res.corruptions || res.check_errors))
		ret = -EIO;
	if (ret < 0) {
		qcow2_unlock(s);
		g_string_free(res.messages, TRUE);
		return tblk_error_set_errno(errp, -ret, "qcow2: Could not repair dirty image");
	}
	ret = mark_clean(s);
	qcow2_unlock(s);
	g_string_free(res.messages, TRUE);
	if (ret < 0)
		return tblk_error_set_errno(errp, -ret, "qcow2: Could not update qcow2 header");
	return 0;
}

static void state_free(struct qcow2_state *s)
{
	qcow2_cache_free(s->l2_cache);
	qcow2_cache_free(s->rc_cache);
	qcow2_overlap_index_destroy(&s->ol);
	g_free(s->l1);
	g_free(s->reftable);
	g_free(s->pending_free);
	qcow2_snapshots_free(s);
	qcow2_bitmaps_free(s);
	qcow2_state_free_header(s);
	tblk__qcow2_order_free(s->order);
	s->order = NULL;
	tblk_cond_destroy(&s->cv);
	tblk_cond_destroy(&s->lock_cv);
	tblk_mutex_destroy(&s->mu);
}

/*
 * Bitmaps whose autoclear bit is clear were left inconsistent by a program without bitmap
 * support: warn, as qemu does, and when we may write, drop the extension (its clusters leak).
 */
static int drop_stale_bitmaps(struct qcow2_state *s, GError **errp)
{
	struct qcow2_ext **pe = &s->unknown_exts;
	int ret;

	if (!s->has_bitmaps_ext || (s->autoclear & QCOW2_AUTOCLEAR_BITMAPS))
		return 0;
	tblk__warn("%s\nSome clusters may be leaked, run 'qemu-img check -r' on the image file "
		   "to fix.", s->version < 3 ? "This qcow2 v2 image contains bitmaps, but they "
		   "may have been modified by a program without persistent bitmap support; so "
		   "now they must all be considered inconsistent" : "a program lacking bitmap "
		   "support modified this file, so all bitmaps are now considered inconsistent");
	if (s->read_only)
		return 0;
	while (*pe && (*pe)->type != QCOW2_EXT_BITMAPS)
		pe = &(*pe)->next;
	if (*pe) {
		struct qcow2_ext *e = *pe;

		*pe = e->next;
		g_free(e->data);
		g_free(e);
	}
	s->has_bitmaps_ext = false;
	ret = qcow2_header_write(s);
	if (ret < 0)
		return tblk_error_set_errno(errp, -ret, "Could not update qcow2 header");
	return 0;
}

/* The autoclear bits that stay set when the image is opened for writing. */
#define KEEP_AUTOCLEAR	(QCOW2_AUTOCLEAR_DATA_FILE_RAW | QCOW2_AUTOCLEAR_BITMAPS)

static int qcow2_open(struct tblk_node *node, GHashTable *opts, unsigned int flags,
		      GError **errp)
{
	struct qcow2_state *s = node->opaque;
	g_autofree uint8_t *hdr = NULL;
	int64_t flen;
	int ret;

	tblk_mutex_init(&s->mu);
	tblk_cond_init(&s->cv);
	tblk_cond_init(&s->lock_cv);
	tblk_list_init(&s->allocs);
	s->order = tblk__qcow2_order_new();
	s->node = node;
	s->read_only = node->read_only;
	/* The metadata is ours alone; a writable image may grow. */
	ret = tblk__node_open_child(node, "file", opts, flags | TBLK_OPEN_NO_SHARE |
				    ((flags & TBLK_OPEN_RDWR) ? TBLK_OPEN_RESIZE : 0),
				    &node->file, errp);
	if (ret < 0)
		goto out_state;
	flen = tblk_node_getlength(node->file);
	if (flen < 0) {
		ret = tblk_error_set_errno(errp, (int)-flen, "Could not get the file size");
		goto out_file;
	}
	hdr = g_malloc0(1u << QCOW2_MAX_CLUSTER_BITS);
	ret = tblk_node_pread(node->file, 0, hdr, TBLK_MIN((uint64_t)flen,
							   1ull << QCOW2_MIN_CLUSTER_BITS));
	if (ret >= 0 && flen >= 24 && hdr[20] == 0 && hdr[21] == 0 && hdr[22] == 0 &&
	    hdr[23] > QCOW2_MIN_CLUSTER_BITS && hdr[23] <= QCOW2_MAX_CLUSTER_BITS)
		ret = tblk_node_pread(node->file, 0, hdr, TBLK_MIN((uint64_t)flen,
								   1ull << hdr[23]));
	if (ret < 0) {
		ret = tblk_error_set_errno(errp, -ret, "Could not read qcow2 header");
		goto out_file;
	}
	ret = qcow2_header_parse(s, hdr, TBLK_MIN((uint64_t)flen, 1ull << QCOW2_MAX_CLUSTER_BITS),
				 (uint64_t)flen, errp);
	if (ret < 0)
		goto out_file;
	if ((s->incompat & QCOW2_INCOMPAT_CORRUPT) && !node->read_only) {
		ret = tblk_error_set(errp, EACCES, "qcow2: Image is corrupt; cannot be opened "
				     "read/write");
		goto out_file;
	}
	s->corrupt = s->incompat & QCOW2_INCOMPAT_CORRUPT;
	ret = setup_caches(s, opts, errp);
	if (ret < 0)
		goto out_file;
	g_free(tblk__opts_take(opts, "lazy-refcounts"));
	s->pass_discard[QCOW2_DISCARD_REQUEST] = true;
	s->pass_discard[QCOW2_DISCARD_SNAPSHOT] = true;
	s->pass_discard[QCOW2_DISCARD_ALWAYS] = true;
	if (tblk__opts_take_bool(opts, "pass-discard-request",
				 &s->pass_discard[QCOW2_DISCARD_REQUEST], errp) < 0 ||
	    tblk__opts_take_bool(opts, "pass-discard-snapshot",
				 &s->pass_discard[QCOW2_DISCARD_SNAPSHOT], errp) < 0 ||
	    tblk__opts_take_bool(opts, "pass-discard-other",
				 &s->pass_discard[QCOW2_DISCARD_OTHER], errp) < 0) {
		ret = -EINVAL;
		goto out_file;
	}
	ret = qcow2_overlap_options(s, opts, errp);
	if (ret < 0)
		goto out_file;
	ret = load_l1(s, errp);
	if (ret < 0)
		goto out_file;
	ret = qcow2_refcount_load_table(s, errp);
	if (ret < 0)
		goto out_file;
	ret = qcow2_snapshots_read(s, (uint64_t)flen, errp);
	if (ret < 0)
		goto out_file;
	ret = qcow2_bitmaps_read(s, (uint64_t)flen, errp);
	if (ret < 0)
		goto out_file;
	ret = drop_stale_bitmaps(s, errp);
	if (ret < 0)
		goto out_file;
	ret = open_data_file(node, s, opts, flags, errp);
	if (ret < 0)
		goto out_file;
	ret = open_backing(node, s, opts, flags, errp);
	if (ret < 0)
		goto out_data;
	if ((s->incompat & QCOW2_INCOMPAT_DIRTY) && !node->read_only &&
	    !(flags & TBLK_OPEN_CHECK)) {
		ret = repair_dirty(s, errp);
		if (ret < 0)
			goto out_backing;
	}
	/* Any offset and length, as qemu's qcow2: zero writes are split and completed here. */
	node->limits.request_alignment = 1;
	node->limits.mem_alignment = node->file->limits.mem_alignment;
	node->limits.pdiscard_alignment = s->cluster_size;
	/* Autoclear features we do not maintain are cleared once we may write. */
	if (!node->read_only && (s->autoclear & ~KEEP_AUTOCLEAR)) {
		s->autoclear &= KEEP_AUTOCLEAR;
		ret = qcow2_header_write(s);
		if (ret < 0) {
			tblk_error_set_errno(errp, -ret, "Could not update qcow2 header");
			goto out_backing;
		}
	}
	/* Persistent bitmaps in memory; on a writable image marked in use on disk. */
	ret = qcow2_bitmaps_open(s, errp);
	if (ret < 0)
		goto out_backing;
	/* The index of the overlap checks, ready for the first write (the fast path needs it). */
	if (!node->read_only && s->overlap_check) {
		qcow2_lock(s);
		(void)qcow2_overlap_index_build(s, &s->ol);
		qcow2_unlock(s);
	}
	return 0;

out_backing:
	tblk__node_close(node->backing);
	node->backing = NULL;
out_data:
	if (s->data && s->data != node->file)
		tblk__node_close(s->data);
out_file:
	tblk__node_close(node->file);
	node->file = NULL;
out_state:
	state_free(s);
	return ret;
}

static void qcow2_close(struct tblk_node *node)
{
	struct qcow2_state *s = node->opaque;

	if (!node->read_only && !s->corrupt && !qcow2_dead(s)) {
		(void)qcow2_bitmaps_close(s);
		qcow2_lock(s);
		(void)qcow2_flush_metadata(s);
		qcow2_unlock(s);
	}
	if (s->data && s->data != node->file)
		tblk__node_close(s->data);
	state_free(s);
}

static int64_t qcow2_getlength(struct tblk_node *node)
{
	struct qcow2_state *s = node->opaque;

	return qcow2_dead(s) ? -ENOMEDIUM : (int64_t)s->size;
}

static uint32_t qcow2_cluster_size(struct tblk_node *node)
{
	struct qcow2_state *s = node->opaque;

	return s->cluster_size;
}

static int qcow2_get_info(struct tblk_node *node, struct tblk_format_info *info)
{
	struct qcow2_state *s = node->opaque;

	info->backing_file = s->backing_file;
	info->backing_fmt = s->backing_fmt;
	info->dirty = s->incompat & QCOW2_INCOMPAT_DIRTY;
	info->is_qcow2 = true;
	info->compat = s->version >= 3 ? "1.1" : "0.10";
	info->compression_type = s->compression_type ? "zstd" : "zlib";
	info->lazy_refcounts = s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS;
	info->refcount_bits = 1u << s->refcount_order;
	info->data_file = s->data_file_name;
	info->data_file_raw = s->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW;
	info->corrupt = s->corrupt || (s->incompat & QCOW2_INCOMPAT_CORRUPT);
	info->extended_l2 = s->ext_l2;
	info->nb_snapshots = s->nb_snapshots;
	info->nb_bitmaps = s->nb_bitmaps;
	info->bitmaps = s->bitmap_info;
	return 0;
}

static int qcow2_check_node(struct tblk_node *node, struct tblk_check_result *res, int fix)
{
	struct qcow2_state *s = node->opaque;
	int ret;

	qcow2_lock(s);
	ret = qcow2_check(s, res, fix);
	/* A repair that left nothing to fix makes a dirty image clean, as qemu's. */
	if (ret >= 0 && fix && !res->corruptions && !res->check_errors)
		ret = mark_clean(s);
	qcow2_unlock(s);
	if (ret < 0) {
		/* As qemu-img's: a check that failed has no counts (nothing was "repaired"). */
		GString *messages = res->messages;

		memset(res, 0, sizeof(*res));
		res->messages = messages;
	}
	return ret;
}

const struct tblk_driver tblk__drv_qcow2 = {
	.name = "qcow2",
	.supports_backing = true,
	.vmstate_rw = tblk__qcow2_vmstate_rw,
	.instance_size = sizeof(struct qcow2_state),
	.probe = qcow2_probe,
	.open = qcow2_open,
	.close = qcow2_close,
	.create = qcow2_create,
	.preadv = tblk__qcow2_preadv,
	.pwritev = tblk__qcow2_bm_pwritev,
	.flush = tblk__qcow2_flush,
	.pdiscard = tblk__qcow2_pdiscard,
	.pwrite_zeroes = tblk__qcow2_bm_pwrite_zeroes,
	.discard_notify = tblk__qcow2_bm_discard_notify,
	.block_status = tblk__qcow2_block_status,
	.getlength = qcow2_getlength,
	.cluster_size = qcow2_cluster_size,
	.get_info = qcow2_get_info,
	.check = qcow2_check_node,
	.submit_fast = tblk__qcow2_bm_submit_fast,
	.snapshot_list = tblk__qcow2_snapshot_list,
	.snapshot_create = tblk__qcow2_snapshot_create,
	.snapshot_goto = tblk__qcow2_snapshot_goto,
	.snapshot_delete = tblk__qcow2_snapshot_delete,
	.snapshot_load_tmp = tblk__qcow2_snapshot_load_tmp,
	.truncate = tblk__qcow2_bm_truncate,
	.bitmap_apply = tblk__qcow2_bitmap_apply,
	.bitmap_list = tblk__qcow2_bitmap_list,
	.measure = tblk__qcow2_measure,
	.amend = tblk__qcow2_amend,
	.change_backing_file = tblk__qcow2_change_backing_file,
	.make_empty = tblk__qcow2_make_empty,
};
