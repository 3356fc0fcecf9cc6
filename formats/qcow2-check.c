/* SPDX-License-Identifier: MIT */
/*
 * qcow2-check.c - consistency check and repair, finding for finding what qemu-img 7.2 finds
 * and leaving the file as its repair leaves it.
 *
 * Every cluster the metadata references (header, L1 and L2 tables, data, compressed data,
 * snapshot table and snapshot L1 tables, persistent bitmaps, refcount table and blocks) is
 * counted in an in-memory refcount array laid out as refcount blocks are (entries of the
 * image's refcount width, whole clusters), and the counts are compared with the stored
 * refcounts. A repair:
 * - sets stored refcounts to the counts; a leaked cluster whose refcount drops to zero is
 *   discarded in the file, as qemu does;
 * - when a cluster in use has refcount 0 or a refcount block is unusable (and errors may be
 *   repaired), writes a whole new refcount structure from the array: new blocks in the first
 *   free clusters of each block's range, a new table after them, the old structures freed;
 * - grows the file to hold a refcount block that lies past its end;
 * - turns a misaligned preallocated zero cluster's entry into a plain zero entry;
 * - sets the COPIED flags of active L1 and L2 entries from the refcounts.
 * Findings are returned in qemu-img's words; nothing here prints.
 *
 * Threading: runs under the image lock in a drained section (the tool's only user).
 */
#include <string.h>

#include "formats/qcow2-int.h"

/*
 * A finding that qemu-img reports as its own error ("qemu-img: ERROR writing refblock: ...")
 * starts with this byte: tblk-img check prints it after its program name.
 */
#define TOOL_ERROR	"\001"

/* Walking an L2 table of the active L1 table: count allocation statistics too. */
#define CHECK_FRAG_INFO	0x1

struct check {
	struct qcow2_state *s;
	struct tblk_check_result *res;
	uint64_t file_size;		/* bytes */
	uint8_t *refs;			/* counted references, in refcount block layout */
	uint64_t nb_clusters;		/* entries of refs that are in use */
	bool rebuild;			/* the refcount structure must be written anew */
	bool signaled;			/* the corruption message was given */
	bool halted;			/* marked corrupt while repairing: nothing more is written */
	bool findings_cut;		/* FINDINGS_MAX reached */
	/*
	 * The entries in use of the L2 tables walked so far, by table offset (struct l2_view):
	 * hostile L1 tables name one table thousands of times, and a walk then costs what the
	 * table holds, not its size. Forgotten when a repair writes into the file.
	 */
	GHashTable *views;
	uint64_t view_entries;		/* held by views, bounded by VIEW_ENTRIES_MAX */
};

/* Entries all views may hold (20 bytes each) before they are dropped and read anew. */
#define VIEW_ENTRIES_MAX	(1u << 22)

/* The non-zero entries (or bitmaps) of an L2 table, in order; the rest read as zero. */
struct l2_view {
	uint32_t n;
	uint32_t *index;
	uint64_t *entry;
	uint64_t *bitmap;		/* zero without extended L2 entries */
};

/*
 * Bytes of findings kept. qemu-img streams its findings to stderr; we keep them in memory,
 * and a hostile image (thousands of L1 entries naming one table of entries past the end of
 * the file) makes gigabytes of them: past this, one line says they were cut.
 */
#define FINDINGS_MAX	(16u << 20)

static void finding(struct check *c, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void finding(struct check *c, const char *fmt, ...)
{
	va_list ap;

	if (c->res->messages->len >= FINDINGS_MAX) {
		if (!c->findings_cut)
			g_string_append(c->res->messages, "(more findings not shown)\n");
		c->findings_cut = true;
		return;
	}
	va_start(ap, fmt);
	g_string_append_vprintf(c->res->messages, fmt, ap);
	va_end(ap);
	g_string_append_c(c->res->messages, '\n');
}

/* Bytes of a refs array of @n entries: whole clusters, so a block is a slice of it. */
static uint64_t refs_bytes(const struct qcow2_state *s, uint64_t n)
{
	uint64_t bytes = ((n << s->refcount_order) + 7) / 8;

	return qcow2_size_to_clusters(s, bytes) << s->cluster_bits;
}

/* Grows the array to @n entries (new ones zero). */
static int refs_resize(struct check *c, uint64_t n)
{
	uint64_t old = refs_bytes(c->s, c->nb_clusters), new = refs_bytes(c->s, n);
	uint8_t *p;

	if (n >> (64 - 6 - c->s->refcount_order))
		return -ENOMEM;
	if (new != old || !c->refs) {
		if (new > SIZE_MAX)
			return -ENOMEM;
		p = g_try_realloc(c->refs, new ? new : 1);
		if (!p)
			return -ENOMEM;
		if (new > old)
			memset(p + old, 0, new - old);
		c->refs = p;
	}
	c->nb_clusters = n;
	return 0;
}

static uint64_t ref_get(const struct check *c, uint64_t i)
{
	return qcow2_rc_get(c->s, c->refs, i);
}

static void ref_set(struct check *c, uint64_t i, uint64_t v)
{
	qcow2_rc_set(c->s, c->refs, i, v);
}

/* Counts one reference to each cluster of [offset, offset + len). */
static int ref_range(struct check *c, uint64_t offset, uint64_t len)
{
	struct qcow2_state *s = c->s;
	uint64_t first, last;

	if (len == 0)
		return 0;
	/* The last cluster may be partly past the end of the file, no more. */
	if (offset + len >= c->file_size + s->cluster_size || offset + len < offset) {
		finding(c, "ERROR: counting reference for region exceeding the end of the file by "
			   "one cluster or more: offset 0x%" PRIx64 " size 0x%" PRIx64, offset, len);
		c->res->corruptions++;
		return 0;
	}
	first = offset >> s->cluster_bits;
	last = (offset + len - 1) >> s->cluster_bits;
	for (uint64_t k = first; k <= last; k++) {
		uint64_t rc;

		if (k >= c->nb_clusters && refs_resize(c, k + 1) < 0) {
			c->res->check_errors++;
			return -ENOMEM;
		}
		rc = ref_get(c, k);
		if (rc == s->refcount_max) {
			finding(c, "ERROR: overflow cluster offset=0x%" PRIx64 "\nUse qemu-img amend "
				   "to increase the refcount entry width or qemu-img convert to create "
				   "a clean copy if the image cannot be opened for writing",
				k << s->cluster_bits);
			c->res->corruptions++;
			continue;
		}
		ref_set(c, k, rc + 1);
	}
	return 0;
}

/* Reads @len bytes at @off; what lies past the end of the file reads as zeroes. */
static int read_padded(struct check *c, uint64_t off, void *buf, uint64_t len)
{
	uint64_t n = off >= c->file_size ? 0 : TBLK_MIN(len, c->file_size - off);

	memset((uint8_t *)buf + n, 0, len - n);
	return n ? tblk_node_pread(c->s->node->file, off, buf, n) : 0;
}

/* qemu's cluster types, where an external data file makes offset 0 with COPIED data. */
static enum qcow2_ctype ctype(const struct qcow2_state *s, uint64_t e)
{
	enum qcow2_ctype t = qcow2_entry_type(s, e);

	if (t == QCOW2_UNALLOCATED && s->data != s->node->file && (e & QCOW2_OFLAG_COPIED))
		return QCOW2_NORMAL;
	return t;
}

/*
 * Entries of the L2 table at @l2_off that lie inside the file: those past its end read as
 * zero, and a zero entry (and bitmap) is unallocated, nothing to count or repair.
 */
static uint32_t l2_entries_in_file(const struct check *c, uint64_t l2_off)
{
	const struct qcow2_state *s = c->s;
	uint64_t n;

	if (l2_off >= c->file_size)
		return 0;
	n = (c->file_size - l2_off + s->l2_entry_size - 1) / s->l2_entry_size;
	return (uint32_t)TBLK_MIN(n, (uint64_t)s->l2_size);
}

static void view_free(gpointer p)
{
	struct l2_view *v = p;

	g_free(v->index);
	g_free(v->entry);
	g_free(v->bitmap);
	g_free(v);
}

/* A repair wrote into the file (or the views grew too big): tables are read again. */
static void forget_views(struct check *c)
{
	if (c->views)
		g_hash_table_remove_all(c->views);
	c->view_entries = 0;
}

/*
 * The entries in use of the L2 table at @l2_off, read once per check (until a repair
 * writes); owned by c->views. Returns -errno if the table cannot be read.
 */
static int l2_view(struct check *c, uint64_t l2_off, const struct l2_view **out)
{
	struct qcow2_state *s = c->s;
	uint32_t n = l2_entries_in_file(c, l2_off), used = 0;
	g_autofree uint8_t *t = NULL;
	struct l2_view *v;
	uint64_t *key;
	int ret;

	if (!c->views)
		c->views = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, view_free);
	v = g_hash_table_lookup(c->views, &l2_off);
	if (v) {
		*out = v;
		return 0;
	}
	t = g_malloc(TBLK_MAX((size_t)n * s->l2_entry_size, (size_t)1));
	ret = read_padded(c, l2_off, t, (uint64_t)n * s->l2_entry_size);
	if (ret < 0)
		return ret;
	for (uint32_t i = 0; i < n; i++)
		used += qcow2_l2_get(s, t, i) || (s->ext_l2 && qcow2_l2_get_bitmap(s, t, i));
	if (c->view_entries + used > VIEW_ENTRIES_MAX)
		forget_views(c);
	c->view_entries += used;
	v = g_new0(struct l2_view, 1);
	v->index = g_new(uint32_t, TBLK_MAX(used, 1u));
	v->entry = g_new(uint64_t, TBLK_MAX(used, 1u));
	v->bitmap = g_new0(uint64_t, TBLK_MAX(used, 1u));
	for (uint32_t i = 0; i < n; i++) {
		uint64_t e = qcow2_l2_get(s, t, i);
		uint64_t bm = s->ext_l2 ? qcow2_l2_get_bitmap(s, t, i) : 0;

		if (!e && !bm)
			continue;
		v->index[v->n] = i;
		v->entry[v->n] = e;
		v->bitmap[v->n++] = bm;
	}
	key = g_new(uint64_t, 1);
	*key = l2_off;
	g_hash_table_insert(c->views, key, v);
	*out = v;
	return 0;
}


static int overlap_check(struct check *c, unsigned int ignore, uint64_t off, uint64_t len);

/* A misaligned zero cluster's entry becomes a plain zero entry on disk. */
static int fix_prealloc_entry(struct check *c, uint64_t l2_off, uint32_t i)
{
	struct qcow2_state *s = c->s;
	uint8_t e[16] = { 0 };
	int ret;

	if (!s->ext_l2)
		e[7] = QCOW2_OFLAG_ZERO;
	else if ((ret = tblk_node_pread(s->node->file, l2_off + i * 16ull + 8, e + 8, 8)) < 0)
		return ret;
	ret = tblk_node_pwrite(s->node->file, l2_off + (uint64_t)i * s->l2_entry_size, e,
			       s->l2_entry_size, 0);
	if (ret >= 0)
		ret = tblk_node_flush(s->node->file);
	if (!qcow2_offset_into_cluster(s, l2_off))
		qcow2_cache_discard(s->l2_cache, l2_off);
	return ret;
}

static int check_data_entry(struct check *c, uint64_t l2_off, uint32_t i, uint64_t e,
			    uint64_t bitmap, int flags, int fix, uint64_t *next)
{
	struct qcow2_state *s = c->s;
	uint64_t off = e & QCOW2_OFFSET_MASK;

	if ((bitmap >> 32) & bitmap) {
		c->res->corruptions++;
		finding(c, "ERROR offset=%" PRIx64 ": Allocated cluster has corrupted subcluster "
			   "allocation bitmap", off);
	}
	if (qcow2_offset_into_cluster(s, off)) {
		bool data = s->ext_l2 ? (bitmap & 0xffffffffu) : !(e & QCOW2_OFLAG_ZERO);

		c->res->corruptions++;
		if (data) {
			finding(c, "ERROR offset=%" PRIx64 ": Data cluster is not properly aligned; "
				   "L2 entry corrupted.", off);
		} else {
			finding(c, "%s offset=%" PRIx64 ": Preallocated cluster is not properly "
				   "aligned; L2 entry corrupted.",
				(fix & TBLK_CHECK_FIX_ERRORS) ? "Repairing" : "ERROR", off);
			if (fix & TBLK_CHECK_FIX_ERRORS) {
				/* The entry inside other metadata: the check stops here. */
				int ret = overlap_check(c, (flags & CHECK_FRAG_INFO) ?
							QCOW2_OL_ACTIVE_L2 : QCOW2_OL_INACTIVE_L2,
							l2_off + (uint64_t)i * s->l2_entry_size,
							s->l2_entry_size);

				if (ret < 0) {
					finding(c, "ERROR: Overlap check failed");
					c->res->check_errors++;
					return ret;
				}
				ret = fix_prealloc_entry(c, l2_off, i);
				forget_views(c);
				if (ret >= 0) {
					c->res->corruptions--;
					c->res->corruptions_fixed++;
					return 0;	/* the cluster is not used any more */
				}
				finding(c, "ERROR: Failed to overwrite L2 table entry: %s",
					strerror(-ret));
				c->res->check_errors++;
			}
		}
	}
	if (flags & CHECK_FRAG_INFO) {
		c->res->allocated_clusters++;
		if (*next && off != *next)
			c->res->fragmented_clusters++;
		*next = off + s->cluster_size;
	}
	return s->data == s->node->file ? ref_range(c, off, s->cluster_size) : 0;
}

static int check_l2(struct check *c, uint64_t l2_off, int flags, int fix)
{
	struct qcow2_state *s = c->s;
	uint64_t next = 0;
	const struct l2_view *v;
	int ret = l2_view(c, l2_off, &v);

	if (ret < 0) {
		finding(c, "ERROR: I/O error in check_refcounts_l2");
		c->res->check_errors++;
		return ret;
	}
	/* A repair (of a misaligned entry) forgets the view: walk a copy of it. */
	g_autofree uint32_t *index = g_memdup2(v->index, TBLK_MAX(v->n, 1u) * sizeof(uint32_t));
	g_autofree uint64_t *entry = g_memdup2(v->entry, TBLK_MAX(v->n, 1u) * sizeof(uint64_t));
	g_autofree uint64_t *bitmaps = g_memdup2(v->bitmap, TBLK_MAX(v->n, 1u) * sizeof(uint64_t));
	uint32_t n = v->n;

	for (uint32_t k = 0; k < n; k++) {
		uint32_t i = index[k];
		uint64_t e = entry[k], bitmap = bitmaps[k];
		enum qcow2_ctype type = ctype(s, e);

		if (type != QCOW2_COMPRESSED && (e & QCOW2_L2_RESERVED)) {
			finding(c, "ERROR found l2 entry with reserved bits set: %" PRIx64, e);
			c->res->corruptions++;
		}
		switch (type) {
		case QCOW2_COMPRESSED: {
			uint64_t coff, sectors;

			if (e & QCOW2_OFLAG_COPIED) {
				finding(c, "ERROR: coffset=0x%" PRIx64 ": copied flag must never be "
					   "set for compressed clusters", e & s->coffset_mask);
				e &= ~QCOW2_OFLAG_COPIED;
				c->res->corruptions++;
			}
			if (s->data != s->node->file) {
				finding(c, "ERROR compressed cluster %u with data file, entry=0x%"
					   PRIx64, i, e);
				c->res->corruptions++;
				break;
			}
			if (bitmap) {
				finding(c, "ERROR compressed cluster %u with non-zero subcluster "
					   "allocation bitmap, entry=0x%" PRIx64, i, e);
				c->res->corruptions++;
				break;
			}
			coff = e & s->coffset_mask;
			sectors = ((e >> s->csize_shift) & s->csize_mask) + 1;
			ret = ref_range(c, coff, sectors * 512 - (coff & 511));
			if (ret < 0)
				return ret;
			if (flags & CHECK_FRAG_INFO) {
				c->res->allocated_clusters++;
				c->res->compressed_clusters++;
				c->res->fragmented_clusters++;
			}
			break;
		}
		case QCOW2_NORMAL:
		case QCOW2_ZERO_ALLOC:
			ret = check_data_entry(c, l2_off, i, e, bitmap, flags, fix, &next);
			if (ret < 0)
				return ret;
			break;
		case QCOW2_UNALLOCATED:
			if (bitmap & 0xffffffffu) {
				c->res->corruptions++;
				finding(c, "ERROR: Unallocated cluster has non-zero subcluster "
					   "allocation map");
			}
			break;
		default:
			break;
		}
	}
	return 0;
}

/* An L1 table of @l1_size entries at @l1_off and everything it references. */
static int check_l1(struct check *c, uint64_t l1_off, uint32_t l1_size, int flags, int fix)
{
	struct qcow2_state *s = c->s;
	g_autofree uint64_t *l1 = NULL;
	uint32_t n;
	int ret;

	if (!l1_size)
		return 0;
	ret = ref_range(c, l1_off, (uint64_t)l1_size * 8);
	if (ret < 0)
		return ret;
	/*
	 * What lies past the end of the file reads as zeroes (no L2 tables): only the part
	 * inside is read and walked, or thousands of snapshots naming 32 MiB tables in a small
	 * file take minutes (qemu-img's too).
	 */
	n = l1_off >= c->file_size ? 0 :
	    (uint32_t)TBLK_MIN((uint64_t)l1_size, (c->file_size - l1_off + 7) / 8);
	l1 = g_try_new(uint64_t, n ? n : 1);
	if (!l1) {
		c->res->check_errors++;
		return -ENOMEM;
	}
	ret = read_padded(c, l1_off, l1, (uint64_t)n * 8);
	if (ret < 0) {
		finding(c, "ERROR: I/O error in check_refcounts_l1");
		c->res->check_errors++;
		return ret;
	}
	for (uint32_t i = 0; i < n; i++) {
		uint64_t e = be64toh(l1[i]), l2 = e & QCOW2_OFFSET_MASK;

		if (!e)
			continue;
		if (e & QCOW2_L1_RESERVED) {
			finding(c, "ERROR found L1 entry with reserved bits set: %" PRIx64, e);
			c->res->corruptions++;
		}
		ret = ref_range(c, l2, s->cluster_size);
		if (ret < 0)
			return ret;
		if (qcow2_offset_into_cluster(s, l2)) {
			finding(c, "ERROR l2_offset=%" PRIx64 ": Table is not cluster aligned; L1 "
				   "entry corrupted", l2);
			c->res->corruptions++;
		}
		/* Past the end of the file a table reads as zeroes: nothing to walk. */
		if (l2 >= c->file_size)
			continue;
		ret = check_l2(c, l2, flags, fix);
		if (ret < 0)
			return ret;
	}
	return 0;
}

static int check_snapshots(struct check *c, int fix)
{
	struct qcow2_state *s = c->s;
	int ret;

	if (s->data != s->node->file && s->nb_snapshots) {
		finding(c, "ERROR %u snapshots in image with data file", s->nb_snapshots);
		c->res->corruptions++;
	}
	for (uint32_t i = 0; s->snapshots && i < s->nb_snapshots; i++) {
		const struct qcow2_snapshot *sn = &s->snapshots[i];

		if (qcow2_offset_into_cluster(s, sn->l1_offset)) {
			finding(c, "ERROR snapshot %s (%s) l1_offset=%#" PRIx64 ": L1 table is not "
				   "cluster aligned; snapshot table entry corrupted", sn->id,
				sn->name, sn->l1_offset);
			c->res->corruptions++;
			continue;
		}
		if ((uint64_t)sn->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
			finding(c, "ERROR snapshot %s (%s) l1_size=%#" PRIx32 ": L1 table is too "
				   "large; snapshot table entry corrupted", sn->id, sn->name,
				sn->l1_size);
			c->res->corruptions++;
			continue;
		}
		ret = check_l1(c, sn->l1_offset, sn->l1_size, 0, fix);
		if (ret < 0)
			return ret;
	}
	return ref_range(c, s->snapshots_offset, s->snapshots_size);
}

static void ref_bitmap_range(void *opaque, uint64_t offset, uint64_t len)
{
	(void)ref_range(opaque, offset, len);
}

/* Grows the file so that the refcount block at @off (past its end) lies inside. */
static int grow_for_block(struct check *c, uint64_t off)
{
	struct qcow2_state *s = c->s;
	struct tblk_node *f = s->node->file;
	GError *err = NULL;
	int64_t len;
	int ret;

	if (off > (uint64_t)INT64_MAX - s->cluster_size)
		return -EINVAL;
	if (!f->drv->truncate)
		return -ENOTSUP;
	ret = f->drv->truncate(f, off + s->cluster_size, NULL, &err);
	if (ret < 0) {
		finding(c, TOOL_ERROR "%s", err ? err->message : strerror(-ret));
		g_clear_error(&err);
		return ret;
	}
	len = tblk_node_getlength(f);
	if (len < 0)
		return (int)len;
	c->file_size = (uint64_t)len;
	ret = refs_resize(c, TBLK_MAX(c->nb_clusters, qcow2_size_to_clusters(s, c->file_size)));
	if (ret < 0)
		return ret;
	return off >> s->cluster_bits < c->nb_clusters ? 0 : -EINVAL;
}

static int check_refblocks(struct check *c, int fix)
{
	struct qcow2_state *s = c->s;
	int ret;

	for (uint64_t i = 0; i < s->reftable_size; i++) {
		uint64_t off = s->reftable[i] & ~QCOW2_REFT_RESERVED, k = off >> s->cluster_bits;

		if (s->reftable[i] & QCOW2_REFT_RESERVED) {
			finding(c, "ERROR refcount table entry %" PRIu64 " has reserved bits set", i);
			c->res->corruptions++;
			c->rebuild = true;
			continue;
		}
		if (qcow2_offset_into_cluster(s, off)) {
			finding(c, "ERROR refcount block %" PRIu64 " is not cluster aligned; "
				   "refcount table entry corrupted", i);
			c->res->corruptions++;
			c->rebuild = true;
			continue;
		}
		if (k >= c->nb_clusters) {
			c->res->corruptions++;
			finding(c, "%s refcount block %" PRIu64 " is outside image",
				(fix & TBLK_CHECK_FIX_ERRORS) ? "Repairing" : "ERROR", i);
			if (!(fix & TBLK_CHECK_FIX_ERRORS))
				continue;
			ret = grow_for_block(c, off);
			forget_views(c);
			if (ret == -ENOMEM) {
				c->res->check_errors++;
				return ret;
			}
			if (ret < 0) {
				c->rebuild = true;
				finding(c, "ERROR could not resize image: %s", strerror(-ret));
				continue;
			}
			c->res->corruptions--;
			c->res->corruptions_fixed++;
			/* Just grown and zeroed: its count can only be 1 now. */
			ret = ref_range(c, off, s->cluster_size);
			if (ret < 0)
				return ret;
			continue;
		}
		if (!off)
			continue;
		ret = ref_range(c, off, s->cluster_size);
		if (ret < 0)
			return ret;
		if (ref_get(c, k) != 1) {
			finding(c, "ERROR refcount block %" PRIu64 " refcount=%" PRIu64, i,
				ref_get(c, k));
			c->res->corruptions++;
			c->rebuild = true;
		}
	}
	return 0;
}

/* Counts every reference the metadata makes into c->refs. */
static int calculate_refcounts(struct check *c, int fix)
{
	struct qcow2_state *s = c->s;
	int ret;

	ret = ref_range(c, 0, s->cluster_size);
	if (ret >= 0)
		ret = check_l1(c, s->l1_offset, s->l1_size, CHECK_FRAG_INFO, fix);
	if (ret >= 0)
		ret = check_snapshots(c, fix);
	if (ret >= 0)
		ret = ref_range(c, s->reftable_offset, s->reftable_size * 8);
	if (ret >= 0)
		ret = qcow2_bitmaps_for_each_cluster(s, ref_bitmap_range, c);
	if (ret >= 0)
		ret = check_refblocks(c, fix);
	return ret;
}

/*
 * A corruption qemu signals while checking: reported once; on a writable image the corrupt
 * bit goes into the header (qemu writes just the feature field), so that nothing else uses
 * the image until a repair succeeds.
 */
static void signal_corruption(struct check *c, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static void signal_corruption(struct check *c, const char *fmt, ...)
{
	struct qcow2_state *s = c->s;
	g_autofree char *what = NULL;
	uint64_t be;
	va_list ap;

	if (c->signaled)
		return;
	c->signaled = true;
	va_start(ap, fmt);
	what = g_strdup_vprintf(fmt, ap);
	va_end(ap);
	if (s->read_only) {
		finding(c, "qcow2: Image is corrupt: %s; further non-fatal corruption events will "
			   "be suppressed", what);
		return;
	}
	finding(c, "qcow2: Marking image as corrupt: %s; further corruption events will be "
		   "suppressed", what);
	/*
	 * As qemu's image becomes unusable: what the repair left in the caches (refcounts
	 * already repaired) is dropped, not written, now nor at close.
	 */
	c->halted = true;
	(void)qcow2_signal_corruption(s, "check", 0);
	qcow2_cache_clear(s->l2_cache);
	qcow2_cache_clear(s->rc_cache);
	s->incompat |= QCOW2_INCOMPAT_CORRUPT;
	be = htobe64(s->incompat);
	if (tblk_node_pwrite(s->node->file, 72, &be, 8, 0) >= 0)
		(void)tblk_node_flush(s->node->file);
}

/* Stored refcount of cluster @i; a failure is qemu's -EIO. */
static int stored(struct check *c, uint64_t i, uint64_t *rc)
{
	struct qcow2_state *s = c->s;
	int ret = qcow2_get_refcount(s, i, rc);
	uint64_t ti = i >> s->rc_block_bits;

	if (ret != -EUCLEAN)
		return ret;
	if (ti < s->reftable_size)
		signal_corruption(c, "Refblock offset %#" PRIx64 " unaligned (reftable index: %#"
				  PRIx64 ")", (uint64_t)(s->reftable[ti] & ~QCOW2_REFT_RESERVED),
				  ti);
	return -EIO;
}

/*
 * A repair's write of @len bytes at @off, refused (-EIO, the image marked corrupt) if it
 * would touch metadata other than the kinds in @ignore, as qemu's overlap check refuses it.
 */
static int overlap_check(struct check *c, unsigned int ignore, uint64_t off, uint64_t len)
{
	unsigned int kind = qcow2_overlap_find(c->s, ignore, off, len);

	if (!kind)
		return 0;
	signal_corruption(c, "Preventing invalid write on metadata (overlaps with %s)",
			  qcow2_overlap_name(kind));
	return -EIO;
}

/* Moves cluster @i's refcount from @rc to @want, in steps an int64_t can hold. */
static int set_refcount(struct qcow2_state *s, uint64_t i, uint64_t rc, uint64_t want)
{
	while (rc != want) {
		uint64_t step = TBLK_MIN(rc > want ? rc - want : want - rc, (uint64_t)INT64_MAX);
		int ret = qcow2_update_refcount(s, i << s->cluster_bits, 1,
					       rc > want ? -(int64_t)step : (int64_t)step);

		if (ret < 0)
			return ret;
		rc = rc > want ? rc - step : rc + step;
	}
	return 0;
}

/*
 * Compares stored refcounts with the counted ones, repairing what @fix allows. A leaked
 * cluster repaired down to refcount 0 is discarded in the file. Returns the index of the
 * highest cluster in use.
 */
static uint64_t compare_refcounts(struct check *c, int fix)
{
	struct qcow2_state *s = c->s;
	uint64_t highest = 0;

	for (uint64_t i = 0; i < c->nb_clusters; i++) {
		uint64_t rc, want = ref_get(c, i);
		int *fixed = NULL;
		int ret = stored(c, i, &rc);

		if (ret < 0) {
			finding(c, "Can't get refcount for cluster %" PRIu64 ": %s", i,
				strerror(-ret));
			c->res->check_errors++;
			continue;
		}
		if (rc || want)
			highest = i;
		if (rc == want)
			continue;
		if (rc == 0)
			c->rebuild = true;
		else if (rc > want && (fix & TBLK_CHECK_FIX_LEAKS))
			fixed = &c->res->leaks_fixed;
		else if (rc < want && (fix & TBLK_CHECK_FIX_ERRORS))
			fixed = &c->res->corruptions_fixed;
		finding(c, "%s cluster %" PRIu64 " refcount=%" PRIu64 " reference=%" PRIu64,
			fixed ? "Repairing" : rc < want ? "ERROR" : "Leaked", i, rc, want);
		if (fixed && set_refcount(s, i, rc, want) >= 0) {
			(*fixed)++;
			/* Discarding in the file is advisory: its failure is not an error. */
			if (want == 0)
				(void)tblk_node_pdiscard(s->node->file, i << s->cluster_bits,
							 s->cluster_size);
			continue;
		}
		if (rc < want)
			c->res->corruptions++;
		else
			c->res->leaks++;
	}
	return highest;
}

/*
 * The first @count free clusters in a row at or after *first_free in the counts, the array
 * growing past the end of the image if needed; they are counted as used. Host offset.
 */
static int64_t alloc_counted(struct check *c, uint64_t count, uint64_t *first_free)
{
	uint64_t k = *first_free, run = 0;
	bool gap = true;
	int ret;

	for (; k < c->nb_clusters && run < count; k++) {
		if (ref_get(c, k)) {
			run = 0;
			continue;
		}
		run++;
		if (gap) {
			*first_free = k;
			gap = false;
		}
	}
	if (run < count) {
		ret = refs_resize(c, k + count - run);
		if (ret < 0)
			return ret;
	}
	k -= run;
	for (uint64_t i = 0; i < count; i++)
		ref_set(c, k + i, 1);
	return (int64_t)(k << c->s->cluster_bits);
}

/*
 * Writes the refcount blocks covering the clusters in use among [first, end), each a slice
 * of the counts, allocating those the new table (*table, *entries) does not have yet.
 * Returns 1 if the table had to grow, 0 if not, or -errno.
 */
static int write_refblocks(struct check *c, uint64_t first, uint64_t end, uint64_t **table,
			   uint64_t *entries)
{
	struct qcow2_state *s = c->s;
	uint64_t per_block = 1ull << s->rc_block_bits, first_free = 0;
	int grown = 0, ret;

	for (uint64_t k = first; k < end; k++) {
		uint64_t bi = k >> s->rc_block_bits, start = bi << s->rc_block_bits, off;

		if (!ref_get(c, k))
			continue;
		if (bi < *entries && (*table)[bi]) {
			off = (*table)[bi];
		} else {
			int64_t got;

			/* Not inside a block already written. */
			first_free = TBLK_MAX(first_free, start);
			got = alloc_counted(c, 1, &first_free);
			if (got < 0) {
				finding(c, TOOL_ERROR "ERROR allocating refblock: %s",
					strerror((int)-got));
				return (int)got;
			}
			off = (uint64_t)got;
			/* The block holding this block's own count must be written too. */
			if (off >> s->cluster_bits >= end)
				end = (off >> s->cluster_bits) + 1;
			if (*entries <= bi) {
				uint64_t n = TBLK_ALIGN_UP((bi + 1) * 8, (uint64_t)s->cluster_size) / 8;
				uint64_t *t = g_try_renew(uint64_t, *table, n);

				if (!t) {
					finding(c, TOOL_ERROR "ERROR allocating reftable memory");
					return -ENOMEM;
				}
				memset(t + *entries, 0, (n - *entries) * 8);
				*table = t;
				*entries = n;
				grown = 1;
			}
			(*table)[bi] = off;
		}
		ret = overlap_check(c, 0, off, s->cluster_size);
		if (ret >= 0)
			ret = tblk_node_pwrite(s->node->file, off, c->refs + bi * s->cluster_size,
					       s->cluster_size, 0);
		if (ret < 0) {
			finding(c, TOOL_ERROR "ERROR writing refblock: %s", strerror(-ret));
			return ret;
		}
		k = start + per_block - 1;	/* this block is done */
	}
	return grown;
}

/*
 * Writes a new refcount structure from the counts (blocks, then a table placed where it
 * fits, the blocks covering it written again, until the table stops growing) and points the
 * header at it. The old structure is left to be freed as leaked clusters.
 */
static int rebuild_refcounts(struct check *c)
{
	struct qcow2_state *s = c->s;
	uint64_t *table = NULL, entries = 0, clusters = 0;
	int64_t table_off = -1;
	uint8_t hdr[12];
	int ret;

	ret = qcow2_cache_write(s->rc_cache);
	if (ret < 0)
		goto out_free;
	qcow2_cache_clear(s->rc_cache);
	ret = write_refblocks(c, 0, c->nb_clusters, &table, &entries);
	while (ret > 0) {
		uint64_t first_free = 0, start;

		clusters = qcow2_size_to_clusters(s, entries * 8);
		table_off = alloc_counted(c, clusters, &first_free);
		if (table_off < 0) {
			finding(c, TOOL_ERROR "ERROR allocating reftable: %s",
				strerror((int)-table_off));
			ret = (int)table_off;
			break;
		}
		start = (uint64_t)table_off >> s->cluster_bits;
		ret = write_refblocks(c, start, start + clusters, &table, &entries);
	}
	if (ret < 0) {
		c->res->check_errors++;
		goto out_free;
	}
	for (uint64_t i = 0; i < entries; i++)
		table[i] = htobe64(table[i]);
	ret = overlap_check(c, 0, (uint64_t)table_off, entries * 8);
	if (ret >= 0)
		ret = tblk_node_pwrite(s->node->file, (uint64_t)table_off, table, entries * 8, 0);
	if (ret < 0) {
		finding(c, TOOL_ERROR "ERROR writing reftable: %s", strerror(-ret));
		goto out_free;
	}
	for (int i = 0; i < 8; i++)
		hdr[i] = (uint8_t)((uint64_t)table_off >> (56 - 8 * i));
	for (int i = 0; i < 4; i++)
		hdr[8 + i] = (uint8_t)(clusters >> (24 - 8 * i));
	ret = tblk_node_pwrite(s->node->file, 48, hdr, sizeof(hdr), 0);
	if (ret >= 0)
		ret = tblk_node_flush(s->node->file);
	if (ret < 0) {
		finding(c, TOOL_ERROR "ERROR setting reftable: %s", strerror(-ret));
		goto out_free;
	}
	for (uint64_t i = 0; i < entries; i++)
		table[i] = be64toh(table[i]);
	g_free(s->reftable);
	s->reftable = table;
	s->reftable_offset = (uint64_t)table_off;
	s->reftable_size = entries;
	s->reftable_clusters = (uint32_t)clusters;
	s->free_cluster_index = 0;
	return 0;

out_free:
	g_free(table);
	return ret;
}

/* After a rebuild: counts again, frees the old structure, works out what was repaired. */
static int after_rebuild(struct check *c, int fix, uint64_t *highest)
{
	struct tblk_check_result old = *c->res, saved;
	int64_t flen = tblk_node_getlength(c->s->node->file);
	int fresh_leaks = 0, ret;

	if (flen < 0)
		return (int)flen;
	c->file_size = (uint64_t)flen;	/* the new structure may lie past the old end */

	c->res->corruptions = 0;
	c->res->leaks = 0;
	c->rebuild = false;
	memset(c->refs, 0, refs_bytes(c->s, c->nb_clusters));
	ret = calculate_refcounts(c, 0);
	if (ret < 0)
		return ret;
	if (fix & TBLK_CHECK_FIX_LEAKS) {
		/* Leaks now are the old structures: repaired, and counted only if they stay. */
		saved = *c->res;
		c->res->corruptions = c->res->leaks = c->res->check_errors = 0;
		c->res->corruptions_fixed = c->res->leaks_fixed = 0;
		*highest = compare_refcounts(c, TBLK_CHECK_FIX_LEAKS);
		if (c->rebuild)
			finding(c, "ERROR rebuilt refcount structure is still broken");
		fresh_leaks = c->res->leaks;
		saved.messages = c->res->messages;
		*c->res = saved;
	}
	if (c->res->corruptions < old.corruptions)
		c->res->corruptions_fixed += old.corruptions - c->res->corruptions;
	if (c->res->leaks < old.leaks)
		c->res->leaks_fixed += old.leaks - c->res->leaks;
	c->res->leaks += fresh_leaks;
	return 0;
}

/* Sets the COPIED flags of the active L1 and L2 entries from the refcounts. */
static int check_copied(struct check *c, int fix)
{
	struct qcow2_state *s = c->s;
	size_t l2_bytes = (size_t)s->l2_size * s->l2_entry_size;
	g_autofree uint8_t *t = g_malloc(TBLK_MAX(l2_bytes, (size_t)s->cluster_size));
	bool repair;
	int ret;

	if (fix & TBLK_CHECK_FIX_ERRORS)
		repair = true;
	else if (fix & TBLK_CHECK_FIX_LEAKS)
		/* Only when the refcounts are known right: they were repaired just before. */
		repair = !c->res->check_errors && !c->res->corruptions && !c->res->leaks;
	else
		repair = false;
	for (uint32_t i = 0; i < s->l1_size; i++) {
		uint64_t e = s->l1[i], l2 = e & QCOW2_OFFSET_MASK, rc;
		const struct l2_view *v;
		unsigned int dirty = 0;

		if (!l2 || stored(c, l2 >> s->cluster_bits, &rc) < 0)
			continue;
		if ((rc == 1) != !!(e & QCOW2_OFLAG_COPIED)) {
			c->res->corruptions++;
			finding(c, "%s OFLAG_COPIED L2 cluster: l1_index=%u l1_entry=%" PRIx64
				   " refcount=%" PRIu64, repair ? "Repairing" : "ERROR", i, e, rc);
			if (repair) {
				s->l1[i] = rc == 1 ? e | QCOW2_OFLAG_COPIED : e & ~QCOW2_OFLAG_COPIED;
				ret = overlap_check(c, QCOW2_OL_ACTIVE_L1, s->l1_offset + i * 8ull, 8);
				if (ret >= 0)
					ret = qcow2_write_l1_entry(s, i);
				if (ret < 0) {
					c->res->check_errors++;
					return ret;
				}
				c->res->corruptions--;
				c->res->corruptions_fixed++;
			}
		}
		ret = l2_view(c, l2, &v);
		for (uint32_t k = 0; ret >= 0 && k < v->n; k++) {
			uint64_t le = v->entry[k], off = le & QCOW2_OFFSET_MASK;
			enum qcow2_ctype ty = ctype(s, le);

			if (ty != QCOW2_NORMAL && ty != QCOW2_ZERO_ALLOC)
				continue;
			if (s->data != s->node->file)
				rc = 1;
			else if (stored(c, off >> s->cluster_bits, &rc) < 0)
				continue;
			if ((rc == 1) == !!(le & QCOW2_OFLAG_COPIED))
				continue;
			c->res->corruptions++;
			finding(c, "%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64 " refcount=%"
				   PRIu64, repair ? "Repairing" : "ERROR", le, rc);
			if (!repair)
				continue;
			/* The whole table is written back: read it at the first repair. */
			if (!dirty++)
				ret = read_padded(c, l2, t, l2_bytes);
			qcow2_l2_set(s, t, v->index[k], rc == 1 ? le | QCOW2_OFLAG_COPIED :
				     le & ~QCOW2_OFLAG_COPIED, v->bitmap[k]);
		}
		if (ret < 0) {
			finding(c, "ERROR: Could not read L2 table: %s", strerror(-ret));
			c->res->check_errors++;
			return ret;
		}
		if (!dirty)
			continue;
		ret = overlap_check(c, QCOW2_OL_ACTIVE_L2, l2, s->cluster_size);
		if (ret < 0) {
			finding(c, "ERROR: Could not write L2 table; metadata overlap check failed: "
				   "%s", strerror(-ret));
			c->res->check_errors++;
			return ret;
		}
		ret = tblk_node_pwrite(s->node->file, l2, t, s->cluster_size, 0);
		forget_views(c);
		if (!qcow2_offset_into_cluster(s, l2))
			qcow2_cache_discard(s->l2_cache, l2);
		if (ret < 0) {
			finding(c, "ERROR: Could not write L2 table: %s", strerror(-ret));
			c->res->check_errors++;
			return ret;
		}
		c->res->corruptions -= (int)dirty;
		c->res->corruptions_fixed += (int)dirty;
	}
	return 0;
}

static int check_refcounts(struct check *c, int fix)
{
	struct tblk_check_result pre;
	uint64_t highest;
	int ret;

	ret = calculate_refcounts(c, fix);
	if (ret < 0)
		return ret;
	/* Repairing without a rebuild compares again from here, repairing. */
	pre = *c->res;
	highest = compare_refcounts(c, 0);
	if (c->rebuild && (fix & TBLK_CHECK_FIX_ERRORS)) {
		finding(c, "Rebuilding refcount structure");
		ret = rebuild_refcounts(c);
		forget_views(c);
		if (ret >= 0)
			ret = after_rebuild(c, fix, &highest);
		if (ret < 0)
			return ret;
	} else if (fix) {
		if (c->rebuild) {
			finding(c, "ERROR need to rebuild refcount structures");
			c->res->check_errors++;
			return -EIO;
		}
		if (c->res->leaks || c->res->corruptions) {
			pre.messages = c->res->messages;
			*c->res = pre;
			highest = compare_refcounts(c, fix);
		}
	}
	ret = check_copied(c, fix);
	if (ret < 0)
		return ret;
	c->res->image_end_offset = (highest + 1) << c->s->cluster_bits;
	return 0;
}

int qcow2_check(struct qcow2_state *s, struct tblk_check_result *res, int fix)
{
	int64_t flen = tblk_node_getlength(s->node->file);
	struct check c = { .s = s, .res = res };
	int ret;

	if (flen < 0)
		return (int)flen;
	c.file_size = (uint64_t)flen;
	/* The repairs write tables directly: nothing may wait in the caches. */
	if (fix) {
		ret = qcow2_flush_metadata(s);
		if (ret < 0)
			return ret;
	}
	ret = refs_resize(&c, qcow2_size_to_clusters(s, c.file_size));
	if (ret < 0) {
		res->check_errors++;
		return ret;
	}
	res->total_clusters = qcow2_size_to_clusters(s, s->size);
	ret = check_refcounts(&c, fix);
	if (ret >= 0 && fix && !res->corruptions && !res->check_errors &&
	    (s->incompat & QCOW2_INCOMPAT_CORRUPT)) {
		/* Repaired: the corrupt bit goes, as qemu's repair clears it. */
		uint64_t be = htobe64(s->incompat & ~QCOW2_INCOMPAT_CORRUPT);

		ret = tblk_node_pwrite(s->node->file, 72, &be, 8, 0);
		if (ret >= 0)
			ret = tblk_node_flush(s->node->file);
		if (ret >= 0)
			s->incompat &= ~QCOW2_INCOMPAT_CORRUPT;
	}
	if (fix && !c.halted) {
		int r = qcow2_flush_metadata(s);

		ret = ret < 0 ? ret : r;
	}
	g_free(c.refs);
	if (c.views)
		g_hash_table_destroy(c.views);
	return ret;
}
