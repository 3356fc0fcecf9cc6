/* SPDX-License-Identifier: MIT */
/*
 * qcow2-amend.c - changing a qcow2 image's options in place (qemu-img amend), in qemu 7.2's
 * order and with its checks: upgrade to compat=1.1 first, then the refcount width (new
 * refcount blocks and table allocated as qemu allocates them, written, switched to, the old
 * ones freed), lazy_refcounts, the size, and the downgrade to compat=0.10 last (zero clusters
 * become unallocated without a backing file, zero-filled data clusters with one).
 *
 * Threading: runs drained (tblk_blk_amend), under the image lock.
 */
#include <string.h>

#include "formats/qcow2-int.h"

struct amend_opts {
	int version;
	uint64_t size;			/* 0: unchanged */
	bool lazy;
	uint64_t refcount_bits;
};

/*
 * Progress as qemu-img amend -p shows it: the steps that run (upgrade, refcount width,
 * downgrade) each report offset/work in their own units; a step's first report closes the
 * one before (its last work adds to the offset done), and the steps still to come are
 * projected to cost as much on average as those seen so far.
 */
struct qcow2_amend_progress {
	void (*cb)(double fraction, void *opaque);
	void *opaque;
	unsigned int steps;		/* that will run */
	unsigned int steps_done;
	enum qcow2_amend_step step;	/* the last that reported */
	uint64_t done;			/* work units of the steps done */
	uint64_t last_work;		/* of the step that reported last */
};

void qcow2_amend_report(struct qcow2_state *s, enum qcow2_amend_step step, uint64_t offset,
			uint64_t work)
{
	struct qcow2_amend_progress *p = s->amend_progress;
	uint64_t cur, projected;

	if (!p || !p->cb || !p->steps)
		return;
	if (step != p->step) {
		if (p->step != QCOW2_AMEND_NONE) {
			p->done += p->last_work;
			p->steps_done++;
		}
		p->step = step;
	}
	if (p->steps_done >= p->steps)
		return;
	p->last_work = work;
	cur = p->done + work;
	projected = cur * (p->steps - p->steps_done - 1) / (p->steps_done + 1);
	if (cur + projected)
		p->cb((double)(p->done + offset) / (double)(cur + projected), p->opaque);
}

static bool opt_on(const char *v)
{
	return !strcmp(v, "on") || !strcmp(v, "true") || !strcmp(v, "yes");
}

/* The options, checked in qemu's order (size, compat, backing, encryption, lazy, refcount). */
static int parse(struct qcow2_state *s, GHashTable *opts, struct amend_opts *o, GError **errp)
{
	const char *v;

	o->version = s->version;
	o->lazy = s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS;
	o->refcount_bits = 1ull << s->refcount_order;
	if (tblk__opts_take_size(opts, "size", &o->size, errp) < 0)
		return -EINVAL;
	v = g_hash_table_lookup(opts, "compat");
	if (v && (!strcmp(v, "0.10") || !strcmp(v, "v2")))
		o->version = 2;
	else if (v && (!strcmp(v, "1.1") || !strcmp(v, "v3")))
		o->version = 3;
	else if (v)
		return tblk_error_set(errp, EINVAL, "Unknown compatibility level %s", v);
	if ((v = g_hash_table_lookup(opts, "backing_file")) &&
	    g_strcmp0(v, s->backing_file))
		return tblk_error_set(errp, EINVAL, "Cannot amend the backing file\nYou can use "
				      "'qemu-img rebase' instead.");
	if ((v = g_hash_table_lookup(opts, "backing_fmt")) && g_strcmp0(v, s->backing_fmt))
		return tblk_error_set(errp, EINVAL, "Cannot amend the backing file\nYou can use "
				      "'qemu-img rebase' instead.");
	g_autoptr(GList) keys = g_hash_table_get_keys(opts);
	for (GList *k = keys; k; k = k->next)
		if (g_str_has_prefix(k->data, "encrypt."))
			return tblk_error_set(errp, EINVAL, "Can't amend encryption options - "
					      "encryption not present");
	if ((v = g_hash_table_lookup(opts, "lazy_refcounts")))
		o->lazy = opt_on(v);
	if (tblk__opts_take_uint64(opts, "refcount_bits", &o->refcount_bits, errp) < 0)
		return -EINVAL;
	if (!o->refcount_bits || o->refcount_bits > 64 ||
	    (o->refcount_bits & (o->refcount_bits - 1)))
		return tblk_error_set(errp, EINVAL, "Refcount width must be a power of two and may "
				      "not exceed 64 bits");
	if ((v = g_hash_table_lookup(opts, "data_file")) && !(s->incompat &
							      QCOW2_INCOMPAT_DATA_FILE))
		return tblk_error_set(errp, EINVAL, "data-file can only be set for images that "
				      "use an external data file");
	if ((v = g_hash_table_lookup(opts, "data_file_raw")) && opt_on(v) &&
	    !(s->autoclear & QCOW2_AUTOCLEAR_DATA_FILE_RAW))
		return tblk_error_set(errp, EINVAL, "data-file-raw cannot be set on existing "
				      "images");
	return 0;
}

static int set_version(struct qcow2_state *s, int version)
{
	int old = s->version;
	uint32_t old_len = s->header_length;
	int ret;

	s->version = version;
	s->header_length = version >= 3 ? QCOW2_HEADER_LEN : QCOW2_V2_HEADER_LEN;
	ret = qcow2_header_write(s);
	if (ret < 0) {
		s->version = old;
		s->header_length = old_len;
	}
	return ret;
}

/* What downgrading needs to know of an internal snapshot. */
struct snap_info {
	uint64_t l1_offset;
	uint32_t l1_size;
	uint64_t vm_state_size;
	uint64_t disk_size;
};

#define SNAP_MAX_EXTRA	1024u	/* qemu's limit on a snapshot's extra data */

/* Reads the snapshot table (the fields downgrading needs), bounds-checked. */
static int read_snapshots(struct qcow2_state *s, struct snap_info **out)
{
	g_autofree struct snap_info *sn = g_new0(struct snap_info, s->nb_snapshots);
	uint64_t off = s->snapshots_offset;

	if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS)
		return qcow2_signal_corruption(s, "Too many snapshots", s->nb_snapshots);
	for (uint32_t i = 0; i < s->nb_snapshots; i++) {
		uint8_t h[40], extra[16] = { 0 };
		uint32_t extra_size;
		uint16_t id_size, name_size;
		int ret = tblk_node_pread(s->node->file, off, h, sizeof(h));

		if (ret < 0)
			return ret;
		sn[i].l1_offset = qcow2_get_be64(h);
		sn[i].l1_size = qcow2_get_be32(h + 8);
		id_size = qcow2_get_be16(h + 12);
		name_size = qcow2_get_be16(h + 14);
		sn[i].vm_state_size = qcow2_get_be32(h + 32);
		extra_size = qcow2_get_be32(h + 36);
		if (extra_size > SNAP_MAX_EXTRA || sn[i].l1_size > QCOW2_MAX_L1_BYTES / 8 ||
		    (sn[i].l1_offset & (s->cluster_size - 1)))
			return qcow2_signal_corruption(s, "Bad snapshot table entry at", off);
		ret = tblk_node_pread(s->node->file, off + 40, extra,
				      TBLK_MIN(extra_size, (uint32_t)sizeof(extra)));
		if (ret < 0)
			return ret;
		if (extra_size >= 8)
			sn[i].vm_state_size = qcow2_get_be64(extra);
		sn[i].disk_size = extra_size >= 16 ? qcow2_get_be64(extra + 8) : s->size;
		off = TBLK_ALIGN_UP(off + 40 + extra_size + id_size + name_size, 8);
	}
	*out = g_steal_pointer(&sn);
	return 0;
}

/*
 * The new entry for zero cluster @e of an L2 table referenced @l2_rc times, of the active
 * L1 table if @active, or -errno.
 */
static int expand_entry(struct qcow2_state *s, uint64_t e, uint64_t l2_rc, bool active,
			uint64_t *ne)
{
	uint64_t off = e & QCOW2_OFFSET_MASK;
	int ret;

	if (qcow2_entry_type(s, e) == QCOW2_ZERO_PLAIN) {
		int64_t n;

		if (!s->node->backing) {
			*ne = 0;
			return 0;
		}
		n = qcow2_alloc_clusters(s, s->cluster_size);
		if (n < 0)
			return (int)n;
		off = (uint64_t)n;
		/* A shared table: the new cluster is referenced as often as the table. */
		if (l2_rc > 1) {
			ret = qcow2_update_refcount(s, off, s->cluster_size, (int64_t)l2_rc - 1);
			if (ret < 0)
				return ret;
		}
	}
	if (off & (s->cluster_size - 1))
		return qcow2_signal_corruption(s, "Cluster allocation offset unaligned", off);
	/* A hostile entry may name metadata: refused, the image marked corrupt, as qemu does. */
	ret = qcow2_overlap_data_check(s, off, s->cluster_size);
	if (ret < 0)
		return ret;
	ret = tblk_node_pwrite_zeroes(s->data, off, s->cluster_size, 0);
	if (ret < 0)
		return ret;
	/*
	 * qemu 7.2 sets COPIED from the L2 table's refcount alone, also on a kept cluster that
	 * a snapshot shares (its table was copied on write, the cluster was not). In the active
	 * table that flag lets the next guest write go in place, into the snapshot's data, and
	 * `qemu-img check` reports it: there we look at the cluster's refcount. In a snapshot's
	 * table COPIED means nothing until the snapshot is applied, which sets it anew from the
	 * refcounts (qemu's and ours): there we write what qemu writes.
	 */
	if (active && qcow2_entry_type(s, e) == QCOW2_ZERO_ALLOC) {
		ret = qcow2_get_refcount(s, off >> s->cluster_bits, &l2_rc);
		if (ret < 0)
			return ret;
	}
	*ne = off | (l2_rc == 1 ? QCOW2_OFLAG_COPIED : 0);
	return 0;
}

/* One L2 table of an inactive (snapshot) L1 table, edited on disk. */
static int expand_inactive_l2(struct qcow2_state *s, uint64_t l2off, uint64_t l2_rc)
{
	g_autofree uint8_t *t = g_malloc(s->cluster_size);
	bool dirty = false;
	int ret = tblk_node_pread(s->node->file, l2off, t, s->cluster_size);

	for (uint32_t j = 0; ret >= 0 && j < s->l2_size; j++) {
		uint64_t e = qcow2_l2_get(s, t, j), ne;
		enum qcow2_ctype type = qcow2_entry_type(s, e);

		if (type != QCOW2_ZERO_PLAIN && type != QCOW2_ZERO_ALLOC)
			continue;
		ret = expand_entry(s, e, l2_rc, false, &ne);
		if (ret >= 0) {
			qcow2_l2_set(s, t, j, ne, 0);
			dirty = true;
		}
	}
	if (ret >= 0 && dirty)
		ret = qcow2_meta_pwrite(s, QCOW2_OL_INACTIVE_L2 | QCOW2_OL_ACTIVE_L2, l2off, t,
					s->cluster_size);
	return ret;
}

/* One L2 table of the active L1 table, edited through the cache. */
static int expand_active_l2(struct qcow2_state *s, uint64_t l2off, uint64_t l2_rc)
{
	for (uint32_t j = 0; j < s->l2_size; j++) {
		void *t;
		uint64_t e, ne;
		enum qcow2_ctype type;
		int ret = qcow2_cache_get(s->l2_cache, l2off, false, &t);

		if (ret < 0)
			return ret;
		e = qcow2_l2_get(s, t, j);
		type = qcow2_entry_type(s, e);
		if (type != QCOW2_ZERO_PLAIN && type != QCOW2_ZERO_ALLOC)
			continue;
		ret = expand_entry(s, e, l2_rc, true, &ne);
		/* The allocation may have evicted the table: look it up again. */
		if (ret >= 0)
			ret = qcow2_cache_get(s->l2_cache, l2off, false, &t);
		if (ret < 0)
			return ret;
		qcow2_l2_set(s, t, j, ne, 0);
		qcow2_cache_mark_dirty(s->l2_cache, t);
	}
	return 0;
}

/* Progress: one unit per L1 entry, *@visited of @total (all tables) after each. */
static int expand_l1(struct qcow2_state *s, const uint64_t *l1, uint32_t l1_size, bool active,
		     uint64_t *visited, uint64_t total)
{
	for (uint32_t i = 0; i < l1_size; i++) {
		uint64_t l2off = l1[i] & QCOW2_OFFSET_MASK, l2_rc;
		int ret = 0;

		if (l2off & (s->cluster_size - 1))
			return qcow2_signal_corruption(s, "L2 table offset not aligned", l2off);
		if (l2off)
			ret = qcow2_get_refcount(s, l2off >> s->cluster_bits, &l2_rc);
		if (l2off && ret >= 0)
			ret = active ? expand_active_l2(s, l2off, l2_rc)
				     : expand_inactive_l2(s, l2off, l2_rc);
		if (ret < 0)
			return ret;
		qcow2_amend_report(s, QCOW2_AMEND_DOWNGRADE, ++*visited, total);
	}
	return 0;
}

/*
 * Zero clusters (v3 only) become unallocated (no backing file) or zero-filled data clusters,
 * in the active L1 table then in every snapshot's, as qemu does.
 */
static int expand_zero_clusters(struct qcow2_state *s, const struct snap_info *sn)
{
	uint64_t visited = 0, total = s->l1_size;
	int ret;

	for (uint32_t i = 0; i < s->nb_snapshots; i++)
		total += sn[i].l1_size;
	ret = expand_l1(s, s->l1, s->l1_size, true, &visited, total);

	/* Snapshot tables are edited on disk: the cache must hold nothing newer. */
	if (ret >= 0)
		ret = qcow2_flush_metadata(s);
	for (uint32_t i = 0; ret >= 0 && i < s->nb_snapshots; i++) {
		g_autofree uint64_t *l1 = g_new(uint64_t, TBLK_MAX(sn[i].l1_size, 1u));

		ret = tblk_node_pread(s->node->file, sn[i].l1_offset, l1,
				      (uint64_t)sn[i].l1_size * 8);
		for (uint32_t k = 0; k < sn[i].l1_size; k++) {
			l1[k] = be64toh(l1[k]);
			qcow2_cache_discard(s->l2_cache, l1[k] & QCOW2_OFFSET_MASK);
		}
		if (ret >= 0)
			ret = expand_l1(s, l1, sn[i].l1_size, false, &visited, total);
	}
	return ret < 0 ? ret : qcow2_flush_metadata(s);
}

static int has_compressed(struct qcow2_state *s, bool *found)
{
	*found = false;
	for (uint32_t i = 0; i < s->l1_size && !*found; i++) {
		uint64_t l2off = s->l1[i] & QCOW2_OFFSET_MASK;
		void *t;

		if (!l2off)
			continue;
		int ret = qcow2_cache_get(s->l2_cache, l2off, false, &t);

		if (ret < 0)
			return ret;
		for (uint32_t j = 0; j < s->l2_size && !*found; j++)
			*found = qcow2_entry_type(s, qcow2_l2_get(s, t, j)) == QCOW2_COMPRESSED;
	}
	return 0;
}

static int downgrade(struct qcow2_state *s, GError **errp)
{
	g_autofree struct snap_info *sn = NULL;
	bool comp;
	int ret;

	if (s->refcount_order != 4)
		return tblk_error_set(errp, ENOTSUP, "compat=0.10 requires refcount_bits=16");
	if (s->incompat & QCOW2_INCOMPAT_DATA_FILE)
		return tblk_error_set(errp, ENOTSUP, "Cannot downgrade an image with a data file");
	ret = read_snapshots(s, &sn);
	if (ret < 0)
		return tblk_error_set_errno(errp, -ret, "Could not read the snapshot table");
	for (uint32_t i = 0; i < s->nb_snapshots; i++)
		if (sn[i].vm_state_size > UINT32_MAX || sn[i].disk_size != s->size)
			return tblk_error_set(errp, ENOTSUP, "Internal snapshots prevent "
					      "downgrade of image");
	if (s->incompat & ~(QCOW2_INCOMPAT_COMPRESSION | QCOW2_INCOMPAT_DIRTY))
		return tblk_error_set(errp, ENOTSUP, "Cannot downgrade an image with incompatible "
				      "features 0x%" PRIx64 " set",
				      (uint64_t)(s->incompat & ~QCOW2_INCOMPAT_COMPRESSION &
						 ~QCOW2_INCOMPAT_DIRTY));
	s->compat = 0;
	s->autoclear = 0;
	ret = expand_zero_clusters(s, sn);
	if (ret < 0)
		return tblk_error_set_errno(errp, -ret, "Failed to turn zero into data clusters");
	if (s->incompat & QCOW2_INCOMPAT_COMPRESSION) {
		ret = has_compressed(s, &comp);
		if (ret < 0)
			return tblk_error_set(errp, EINVAL, "Failed to check block status");
		if (comp)
			return tblk_error_set(errp, ENOTSUP, "Cannot downgrade an image with zstd "
					      "compression type and existing compressed clusters");
		s->incompat &= ~QCOW2_INCOMPAT_COMPRESSION;
		s->compression_type = 0;
	}
	ret = set_version(s, 2);
	if (ret < 0)
		return tblk_error_set_errno(errp, -ret, "Failed to update the image header");
	return 0;
}

static int set_lazy(struct qcow2_state *s, bool on, int version, GError **errp)
{
	uint64_t old = s->compat;
	int ret;

	if (on && version < 3)
		return tblk_error_set(errp, EINVAL, "Lazy refcounts only supported with "
				      "compatibility level 1.1 and above (use compat=1.1 or "
				      "greater)");
	/* The image is clean: tblk refuses to open a dirty one for writing. */
	if (on)
		s->compat |= QCOW2_COMPAT_LAZY_REFCOUNTS;
	else
		s->compat &= ~QCOW2_COMPAT_LAZY_REFCOUNTS;
	ret = qcow2_header_write(s);
	if (ret < 0) {
		s->compat = old;
		return tblk_error_set_errno(errp, -ret, "Failed to update the image header");
	}
	return 0;
}

static int amend_locked(struct qcow2_state *s, GHashTable *opts, GError **errp)
{
	struct amend_opts o = { 0 };
	int ret = parse(s, opts, &o, errp);
	const char *v;

	if (ret < 0)
		return ret;
	if (s->corrupt)
		return tblk_error_set(errp, EIO, "Image is corrupt");
	if (s->amend_progress)
		s->amend_progress->steps = (o.version != s->version) +
					   (o.refcount_bits != 1ull << s->refcount_order);
	if (o.version > s->version) {
		/* qemu's upgrade: two units, the snapshot table and the header */
		qcow2_amend_report(s, QCOW2_AMEND_UPGRADE, 0, 2);
		qcow2_amend_report(s, QCOW2_AMEND_UPGRADE, 1, 2);
		ret = set_version(s, o.version);
		if (ret < 0)
			return tblk_error_set_errno(errp, -ret, "Failed to update the image "
						    "header");
		qcow2_amend_report(s, QCOW2_AMEND_UPGRADE, 2, 2);
	}
	if (o.refcount_bits != 1ull << s->refcount_order) {
		if (o.version < 3 && o.refcount_bits != 16)
			return tblk_error_set(errp, EINVAL, "Refcount widths other than 16 bits "
					      "require compatibility level 1.1 or above (use "
					      "compat=1.1 or greater)");
		ret = qcow2_change_refcount_order(s, (unsigned int)__builtin_ctzll(o.refcount_bits),
						  errp);
		if (ret < 0)
			return ret;
	}
	if ((v = g_hash_table_lookup(opts, "data_file_raw")) && !opt_on(v))
		s->autoclear &= ~QCOW2_AUTOCLEAR_DATA_FILE_RAW;
	if ((v = g_hash_table_lookup(opts, "data_file"))) {
		g_free(s->data_file_name);
		s->data_file_name = *v ? g_strdup(v) : NULL;
	}
	ret = qcow2_header_write(s);
	if (ret < 0)
		return tblk_error_set_errno(errp, -ret, "Failed to update the image header");
	if (o.lazy != !!(s->compat & QCOW2_COMPAT_LAZY_REFCOUNTS)) {
		ret = set_lazy(s, o.lazy, o.version, errp);
		if (ret < 0)
			return ret;
	}
	if (o.size) {
		ret = qcow2_truncate_locked(s, o.size, QCOW2_PREALLOC_OFF, errp);
		if (ret < 0)
			return ret;
	}
	if (o.version < s->version)
		return downgrade(s, errp);
	return 0;
}

int tblk__qcow2_amend(struct tblk_node *node, GHashTable *opts, bool force,
		      void (*progress)(double fraction, void *opaque), void *opaque,
		      GError **errp)
{
	struct qcow2_state *s = node->opaque;
	struct qcow2_amend_progress prog = { .cb = progress, .opaque = opaque };
	uint64_t size = 0;
	int ret;

	(void)force;
	if (g_hash_table_contains(opts, "size")) {
		g_autoptr(GHashTable) copy = tblk__opts_copy(opts);

		if (tblk__opts_take_size(copy, "size", &size, errp) < 0)
			return -EINVAL;
		if (size % 512)
			return tblk_error_set(errp, EINVAL, "The new size must be a multiple of %u",
					      512);
	}
	qcow2_lock(s);
	/* @progress runs under the image lock (drained): it must not call into the image */
	s->amend_progress = &prog;
	ret = amend_locked(s, opts, errp);
	s->amend_progress = NULL;
	qcow2_overlap_invalidate(s);	/* tables may have moved anywhere */
	if (ret >= 0)
		ret = qcow2_flush_metadata(s);
	qcow2_unlock(s);
	return ret;
}
