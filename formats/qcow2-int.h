/* SPDX-License-Identifier: MIT */
/*
 * qcow2-int.h - what the files of the qcow2 driver share: the on-disk constants, the state of
 * an open image, and the functions of qcow2-header.c, qcow2-refcount.c, qcow2-cache.c and
 * qcow2-cluster.c.
 *
 * Locking: one image lock per image (struct qcow2_state.meta) guards all metadata, the
 * caches and the allocation state. It is a sleeping lock: it may be held across metadata I/O
 * (as qemu holds its CoMutex), and is always dropped around guest data I/O. A thread waiting
 * for it waits through the pool's wait service. `mu` is the short leaf mutex that implements
 * it; nothing else is ever done under `mu` alone.
 */
#ifndef TBLK_QCOW2_INT_H
#define TBLK_QCOW2_INT_H

#include <endian.h>

#include "tracked/tracked.h"

#define QCOW2_MAGIC		0x514649fbu
#define QCOW2_MIN_CLUSTER_BITS	9
#define QCOW2_MAX_CLUSTER_BITS	21
#define QCOW2_V2_HEADER_LEN	72
#define QCOW2_V3_HEADER_LEN	104	/* without the compression type */
#define QCOW2_HEADER_LEN	112	/* what we write for v3 */
#define QCOW2_MAX_L1_BYTES	(32u << 20)
#define QCOW2_MAX_REFTABLE_BYTES (8u << 20)
#define QCOW2_MAX_BACKING_NAME	1023
#define QCOW2_MAX_SNAPSHOTS	65536

/* Header extension types. */
#define QCOW2_EXT_END		0x00000000u
#define QCOW2_EXT_BACKING_FMT	0xe2792acau
#define QCOW2_EXT_FEATURES	0x6803f857u
#define QCOW2_EXT_CRYPTO	0x0537be77u
#define QCOW2_EXT_BITMAPS	0x23852875u
#define QCOW2_EXT_DATA_FILE	0x44415441u

/* Feature bits. */
#define QCOW2_INCOMPAT_DIRTY		(1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT		(1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE	(1ull << 2)
#define QCOW2_INCOMPAT_COMPRESSION	(1ull << 3)
#define QCOW2_INCOMPAT_EXTL2		(1ull << 4)
#define QCOW2_INCOMPAT_KNOWN		0x1full
#define QCOW2_COMPAT_LAZY_REFCOUNTS	(1ull << 0)
#define QCOW2_AUTOCLEAR_BITMAPS		(1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_FILE_RAW	(1ull << 1)
#define QCOW2_AUTOCLEAR_KNOWN		0x3ull

/* Table entries. */
#define QCOW2_OFLAG_COPIED	(1ull << 63)
#define QCOW2_OFLAG_COMPRESSED	(1ull << 62)
#define QCOW2_OFLAG_ZERO	(1ull << 0)
#define QCOW2_OFFSET_MASK	0x00fffffffffffe00ull
#define QCOW2_L1_RESERVED	0x7f000000000001ffull
#define QCOW2_L2_RESERVED	0x3f000000000001feull
#define QCOW2_REFT_RESERVED	0x00000000000001ffull

/* What a guest cluster (or subcluster) is. */
enum qcow2_ctype {
	QCOW2_UNALLOCATED,	/* falls through to the backing file, or zero */
	QCOW2_ZERO_PLAIN,	/* reads zeroes, no host cluster */
	QCOW2_ZERO_ALLOC,	/* reads zeroes, host cluster kept */
	QCOW2_NORMAL,		/* data at a host offset */
	QCOW2_COMPRESSED,	/* compressed data at a host byte offset */
};

/* Bitmap directory entry flags. */
#define QCOW2_BITMAP_IN_USE	(1u << 0)
#define QCOW2_BITMAP_AUTO	(1u << 1)
#define QCOW2_BITMAP_EXTRA_OK	(1u << 2)

/* A persistent bitmap's directory entry (qcow2-bitmap.c). */
struct qcow2_bitmap {
	uint64_t table_offset;
	uint32_t table_size;		/* entries */
	uint16_t name_size;		/* bytes of the name in the directory */
	uint8_t type;
	uint8_t granularity_bits;
	uint32_t flags;			/* QCOW2_BITMAP_* */
};

struct qcow2_dbm;

/* A header extension we do not interpret, written back unchanged. */
struct qcow2_ext {
	uint32_t type;
	uint32_t len;
	uint8_t *data;
	struct qcow2_ext *next;
};

/* Why clusters are freed: decides whether the freed range is discarded in the file too. */
enum qcow2_discard_type {
	QCOW2_DISCARD_REQUEST,	/* a guest discard or zero write with unmap */
	QCOW2_DISCARD_SNAPSHOT,	/* a snapshot deleted */
	QCOW2_DISCARD_OTHER,	/* copy-on-write, metadata moved */
	QCOW2_DISCARD_ALWAYS,	/* clusters cut off by a shrink: always discarded in the file */
	QCOW2_DISCARD_NR,
};

struct qcow2_cache;
struct qcow2_order;

/* One entry of the snapshot table (qcow2-snapshot.c), as read or to be written. */
struct qcow2_snapshot {
	uint64_t l1_offset;
	uint32_t l1_size;
	char *id;
	char *name;
	uint64_t disk_size;
	uint64_t vm_state_size;
	uint32_t date_sec;
	uint32_t date_nsec;
	uint64_t vm_clock_nsec;
	uint64_t icount;		/* UINT64_MAX: not recorded */
	uint32_t extra_data_size;	/* as recorded (at least 24 when we write it) */
	uint8_t *unknown_extra;		/* extra data past the fields we know, kept */
};

/* A guest range whose clusters are being allocated: writers overlapping it wait. */
struct qcow2_alloc {
	uint64_t start;		/* guest offset, cluster aligned */
	uint64_t end;
	struct tblk_list link;	/* [meta] on qcow2_state.allocs */
};

/* Metadata overlap (qcow2-overlap.c). */
/* Kinds of metadata, in qemu's bit order (the overlap-check.* options). */
#define QCOW2_OL_HEADER		(1u << 0)
#define QCOW2_OL_ACTIVE_L1	(1u << 1)
#define QCOW2_OL_ACTIVE_L2	(1u << 2)
#define QCOW2_OL_REFTABLE	(1u << 3)
#define QCOW2_OL_REFBLOCK	(1u << 4)
#define QCOW2_OL_SNAPSHOT_TABLE	(1u << 5)
#define QCOW2_OL_INACTIVE_L1	(1u << 6)
#define QCOW2_OL_INACTIVE_L2	(1u << 7)
#define QCOW2_OL_BITMAP_DIR	(1u << 8)
#define QCOW2_OL_NR		9
/* The modes of overlap-check: "constant" needs no table walk, "cached" (the default) adds
 * what is in memory, "all" the snapshots' L2 tables. */
#define QCOW2_OL_CONSTANT	(QCOW2_OL_HEADER | QCOW2_OL_ACTIVE_L1 | QCOW2_OL_REFTABLE | \
				 QCOW2_OL_SNAPSHOT_TABLE | QCOW2_OL_BITMAP_DIR)
#define QCOW2_OL_CACHED		(QCOW2_OL_CONSTANT | QCOW2_OL_ACTIVE_L2 | QCOW2_OL_REFBLOCK | \
				 QCOW2_OL_INACTIVE_L1)
#define QCOW2_OL_ALL		(QCOW2_OL_CACHED | QCOW2_OL_INACTIVE_L2)
/* As an ignore mask: a write qemu does not check (only an unusable image refuses it). */
#define QCOW2_OL_UNCHECKED	0x1ffu
struct qcow2_range {
	uint64_t start;
	uint64_t end;			/* exclusive */
};
/* A sorted multiset of the offsets of one-cluster tables. */
struct qcow2_offsets {
	uint64_t *v;
	size_t n, cap;
};
/* Where the active and inactive L2 tables, refcount blocks and snapshot L1 tables lie. */
struct qcow2_overlap_index {
	bool built;
	struct qcow2_offsets l2, rb;
	struct qcow2_offsets il2;	/* only with QCOW2_OL_INACTIVE_L2 checked */
	struct qcow2_range *snap;	/* sorted, merged */
	size_t nr_snap;
};

struct qcow2_state {
	/* The image lock (see the file comment). Lock order: meta before node locks; mu is a leaf. */
	struct tblk_mutex mu;
	struct tblk_cond cv;		/* [mu] the image lock released: allocations may have ended */
	struct tblk_cond lock_cv;	/* [mu] the image lock released: one waiter may take it */
	bool meta_held;			/* [mu] */
	unsigned int nr_lock_waiters;	/* [mu] sleeping on lock_cv */
	unsigned int nr_alloc_waiters;	/* [mu] sleeping on cv */

	/* Geometry. [const] after open. */
	unsigned int cluster_bits;
	uint32_t cluster_size;
	unsigned int l2_bits;		/* log2 of entries per L2 table */
	uint32_t l2_size;		/* entries per L2 table */
	unsigned int l2_entry_size;	/* 8, or 16 with extended L2 */
	bool ext_l2;
	uint32_t subcluster_size;	/* cluster_size / 32 with ext_l2, else cluster_size */
	unsigned int refcount_order;
	unsigned int rc_block_bits;	/* log2 of refcounts per refcount block */
	uint64_t refcount_max;
	unsigned int csize_shift;	/* compressed descriptor: offset bits */
	uint64_t csize_mask;
	uint64_t coffset_mask;
	int version;
	uint8_t compression_type;

	/* Header fields and features. [meta] (changed only in drained sections or under meta). */
	uint64_t size;
	uint64_t incompat;
	uint64_t compat;
	uint64_t autoclear;
	uint32_t header_length;		/* as found; what we rewrite */
	char *backing_file;
	char *backing_fmt;
	char *data_file_name;
	struct qcow2_ext *unknown_exts;
	bool has_bitmaps_ext;
	/* Persistent bitmaps, when the extension is consistent. [const] after open, or [meta] */
	struct qcow2_bitmap *bitmaps;
	struct tblk_bitmap_info *bitmap_info;	/* names allocated */
	unsigned int nb_bitmaps;
	uint64_t bitmap_dir_offset;
	uint64_t bitmap_dir_size;
	/* The bitmaps in memory (qcow2-bitmap.c), newest first; changed only drained. */
	struct qcow2_dbm *dbms;
	unsigned int nr_dbm_enabled;	/* [drained] how many of them track writes */
	uint32_t nb_snapshots;
	uint64_t snapshots_offset;
	uint64_t snapshots_size;	/* bytes of the snapshot table */
	struct qcow2_snapshot *snapshots;	/* nb_snapshots entries */

	/* L1 and refcount table, kept in memory in host order. [meta] */
	uint64_t *l1;
	uint32_t l1_size;
	uint64_t l1_offset;
	uint64_t *reftable;
	uint64_t reftable_size;		/* entries */
	uint64_t reftable_offset;
	uint32_t reftable_clusters;

	struct qcow2_cache *l2_cache;	/* [meta] */
	struct qcow2_cache *rc_cache;	/* [meta] */

	/* Allocation. [meta] */
	uint64_t free_cluster_index;	/* where the first-free search starts */
	uint64_t free_byte_offset;	/* end of the last compressed cluster, 0 = none */
	uint64_t *pending_free;		/* host offsets freed but still referenced on disk,
					 * the low bit set if the file range is discarded too */
	size_t nr_pending_free;
	size_t pending_free_cap;
	struct tblk_list allocs;	/* struct qcow2_alloc in flight */
	bool meta_dirty;		/* metadata written since the last file flush */
	bool l2_needs_rc;		/* L2 entries linked to new clusters since the last L2
					 * write-back: qemu's L2 cache "depends" on the refcounts */
	bool fast_alloc_off;		/* [mu] the data file refused a fast allocating write */
	/*
	 * Whether the image looks preallocated with metadata (more clusters in use than the
	 * file has blocks), decided at the first block status as qemu does: then block status
	 * asks the data file where a data cluster is a hole. [atomic], written under meta:
	 * 0 not decided yet, 1 no, 2 yes.
	 */
	uint8_t meta_prealloc;
	struct qcow2_amend_progress *amend_progress;	/* [meta] the amend running, or NULL */
	/* The turns of compressed writes (qcow2-order.c; its own leaf lock inside). [const] */
	struct qcow2_order *order;

	bool pass_discard[QCOW2_DISCARD_NR];	/* [const] pass-discard-* options */
	bool corrupt;			/* [meta] found corrupt: no more writes */
	bool dead;			/* [atomic] set under meta: a fatal corruption was
					 * signalled, nothing reads or writes any more */
	unsigned int overlap_check;	/* [const] QCOW2_OL_* kinds checked before writes */
	struct qcow2_overlap_index ol;	/* [meta] for those checks; see qcow2-overlap.c */
	bool signaled;			/* [meta] a corruption event was reported */
	bool checking;			/* [meta] qcow2_check() runs: it reports what it finds */
	const char *corrupt_what;	/* [meta] the first corruption found, and where */
	uint64_t corrupt_offset;	/* [meta] */
	bool read_only;			/* [const] */
	struct tblk_node *node;		/* [const] */
	struct tblk_node *data;		/* [const] where guest data lives (file or data_file) */
};

/* ------------------------------------------------ image lock (qcow2.c) */
void qcow2_lock(struct qcow2_state *s);
void qcow2_unlock(struct qcow2_state *s);
/* Waits for an allocation to finish: drops and retakes the image lock. */
void qcow2_wait_alloc(struct qcow2_state *s);
/* Marks the image corrupt (once), logs where; returns -EUCLEAN. */
int qcow2_signal_corruption(struct qcow2_state *s, const char *what, uint64_t offset);
/*
 * A fatal corruption, as qemu signals it: the message is printed once (through the warning
 * handler, as qemu prints it), the corrupt bit set on disk (v3), the caches dropped unwritten
 * and the image made unusable (s->dead). Under meta.
 */
void qcow2_signal_fatal(struct qcow2_state *s, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
/*
 * A corruption found on the data path, reported as qemu reports it (its rules on which event
 * is printed, see qcow2.c): a fatal one on a writable image as by qcow2_signal_fatal(), else
 * "Image is corrupt: ..." and nothing changes. Returns -EIO, what qemu's callers return.
 * Under meta.
 */
int qcow2_signal_event(struct qcow2_state *s, bool fatal, const char *fmt, ...)
	G_GNUC_PRINTF(3, 4);
/* True once a fatal corruption made the image unusable: requests fail with -ENOMEDIUM. */
static inline bool qcow2_dead(const struct qcow2_state *s)
{
	return __atomic_load_n(&s->dead, __ATOMIC_ACQUIRE);
}

/* ------------------------------------------------ metadata overlap (qcow2-overlap.c) */
/* Takes the overlap-check options from @opts into s->overlap_check (at open). */
int qcow2_overlap_options(struct qcow2_state *s, GHashTable *opts, GError **errp);
/*
 * Builds @ix (caller's storage) from the tables in memory (and, if inactive L2 tables are
 * checked, the snapshot L1 tables on disk). -ENOMEM, or the read error. Under meta.
 */
int qcow2_overlap_index_build(struct qcow2_state *s, struct qcow2_overlap_index *ix);
void qcow2_overlap_index_destroy(struct qcow2_overlap_index *ix);
/* Keeping s->ol current, under meta: an L1 entry (a refcount table entry) changed from @old
 * to @new (raw entries, 0 for none); bulk changes rebuild it at the next check. */
void qcow2_overlap_l2_moved(struct qcow2_state *s, uint64_t old, uint64_t new);
void qcow2_overlap_rb_moved(struct qcow2_state *s, uint64_t old, uint64_t new);
void qcow2_overlap_snapshots_changed(struct qcow2_state *s);
void qcow2_overlap_invalidate(struct qcow2_state *s);
/*
 * The first kind of metadata (QCOW2_OL_*, checked by the options and not in @ignore) that a
 * write of @len bytes at file offset @off would touch, as the tables in memory place it; 0
 * if none. @ix, if not NULL and built, stands for the tables. Under meta.
 */
unsigned int qcow2_overlap_find(const struct qcow2_state *s, const struct qcow2_overlap_index *ix,
				unsigned int ignore, uint64_t off, uint64_t len);
/* qemu's name of an overlap kind ("active L2 table"). */
const char *qcow2_overlap_name(unsigned int kind);
/*
 * Before a write of metadata into the image file, under meta: 0 if it may go ahead; -EIO if
 * it would overwrite metadata other than @ignore (the image is then marked corrupt and
 * unusable) or the image is unusable already.
 */
int qcow2_overlap_check(struct qcow2_state *s, unsigned int ignore, uint64_t off, uint64_t len);
/* The same for guest data at host offset @off of the data file (never metadata if apart). */
int qcow2_overlap_data_check(struct qcow2_state *s, uint64_t off, uint64_t len);
/*
 * The same for the clusters just allocated for guest data: refused, qemu gives them back,
 * which first writes the refcount blocks if linked L2 entries wait for them; so do we.
 */
int qcow2_overlap_alloc_check(struct qcow2_state *s, uint64_t off, uint64_t len);
/*
 * The fast path's question, under mu with the image lock free: true if a data write at @off
 * may touch metadata, or the index is not built (the pool path then decides and reports).
 */
bool qcow2_overlap_hit_fast(const struct qcow2_state *s, uint64_t off, uint64_t len);
/* qcow2_overlap_check(), then the write into the image file. */
int qcow2_meta_pwrite(struct qcow2_state *s, unsigned int ignore, uint64_t off, const void *buf,
		      uint64_t len);

/* ------------------------------------------------ helpers */
/* Big-endian fields of on-disk structures, at any alignment. */
static inline uint16_t qcow2_get_be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t qcow2_get_be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint64_t qcow2_get_be64(const uint8_t *p)
{
	return ((uint64_t)qcow2_get_be32(p) << 32) | qcow2_get_be32(p + 4);
}

static inline uint64_t qcow2_size_to_clusters(const struct qcow2_state *s, uint64_t size)
{
	return (size + s->cluster_size - 1) >> s->cluster_bits;
}

static inline uint64_t qcow2_offset_into_cluster(const struct qcow2_state *s, uint64_t off)
{
	return off & (s->cluster_size - 1);
}

static inline uint64_t qcow2_start_of_cluster(const struct qcow2_state *s, uint64_t off)
{
	return off & ~(uint64_t)(s->cluster_size - 1);
}

/* Guest bytes one L1 entry covers. */
static inline uint64_t qcow2_l1_span(const struct qcow2_state *s)
{
	return (uint64_t)s->l2_size << s->cluster_bits;
}

/* ------------------------------------------------ header (qcow2-header.c) */
/* Parses and validates the header in @buf (the first cluster, @len bytes). */
int qcow2_header_parse(struct qcow2_state *s, const uint8_t *buf, size_t len,
		       uint64_t file_size, GError **errp);
/* Writes the header cluster from @s. */
int qcow2_header_write(struct qcow2_state *s);
/* Builds the header cluster image (cluster_size bytes) from @s into @buf. -ENOSPC if too big. */
int qcow2_header_build(const struct qcow2_state *s, uint8_t *buf);
/* Sets geometry fields from cluster_bits, refcount_order, ext_l2. */
void qcow2_set_geometry(struct qcow2_state *s);
void qcow2_state_free_header(struct qcow2_state *s);

/* ------------------------------------------------ bitmaps (qcow2-bitmap.c) */
/* Reads the bitmap directory if the bitmaps extension is consistent; 0 if there is none. */
int qcow2_bitmaps_read(struct qcow2_state *s, uint64_t flen, GError **errp);
void qcow2_bitmaps_free(struct qcow2_state *s);
/* Calls @fn for every byte range the bitmaps occupy in the file (directory, tables, data). */
int qcow2_bitmaps_for_each_cluster(struct qcow2_state *s,
				   void (*fn)(void *opaque, uint64_t offset, uint64_t len),
				   void *opaque);
/*
 * After the directory is read at open: the bitmaps in memory, as qemu loads them; on a
 * writable image their data is read and every bitmap is marked in use on disk.
 */
int qcow2_bitmaps_open(struct qcow2_state *s, GError **errp);
/* At close of a writable image: stores the bitmaps in memory as qemu does. */
int qcow2_bitmaps_close(struct qcow2_state *s);
/* Marks guest [offset, offset + bytes) dirty in the enabled bitmaps. Any thread, no lock. */
void qcow2_bitmaps_mark(struct qcow2_state *s, uint64_t offset, uint64_t bytes);
/* qemu-img bitmap's actions and the bitmaps list (qcow2-bitmap-ops.c). */
int tblk__qcow2_bitmap_apply(struct tblk_node *node, const struct tblk_bitmap_request *rq,
			     struct tblk_node *src, GError **errp);
int tblk__qcow2_bitmap_list(struct tblk_node *node, struct tblk_dirty_bitmap **plist, int *pn);
/* The driver's write entry points: mark the enabled bitmaps, then the write proper. */
int tblk__qcow2_bm_pwritev(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			   const struct iovec *iov, int iovcnt, unsigned int flags);
int tblk__qcow2_bm_pwrite_zeroes(struct tblk_node *node, uint64_t offset, uint64_t bytes,
				 unsigned int flags);
void tblk__qcow2_bm_discard_notify(struct tblk_node *node, uint64_t offset, uint64_t bytes);
int tblk__qcow2_bm_submit_fast(struct tblk_node *node, struct tblk_req *req, uint64_t offset);
int tblk__qcow2_bm_truncate(struct tblk_node *node, uint64_t size, const char *prealloc,
			    GError **errp);

/* ------------------------------------------------ caches (qcow2-cache.c) */
struct qcow2_cache *qcow2_cache_new(struct qcow2_state *s, unsigned int nr_entries);
void qcow2_cache_free(struct qcow2_cache *c);
/* The table at host @offset (one cluster), loaded if needed; stays valid until the next
 * cache call. With @fresh, the table is zero-filled instead of read. */
int qcow2_cache_get(struct qcow2_cache *c, uint64_t offset, bool fresh, void **table);
/* The table at host @offset if it is cached (-ENOENT if not): never does I/O. */
int qcow2_cache_peek(struct qcow2_cache *c, uint64_t offset, void **table);
void qcow2_cache_mark_dirty(struct qcow2_cache *c, void *table);
/* Writes dirty tables. */
int qcow2_cache_write(struct qcow2_cache *c);
/* Forgets the table at @offset (freed) without writing it. */
void qcow2_cache_discard(struct qcow2_cache *c, uint64_t offset);
/* Forgets every table (clean or not) without writing it. */
void qcow2_cache_clear(struct qcow2_cache *c);
/* Writes all metadata in a crash-safe order: refcounts, file flush, L2 tables. */
int qcow2_flush_metadata(struct qcow2_state *s);

/* ------------------------------------------------ refcounts (qcow2-refcount.c) */
int qcow2_refcount_load_table(struct qcow2_state *s, GError **errp);
int qcow2_get_refcount(struct qcow2_state *s, uint64_t cluster_index, uint64_t *refcount);
/* Entry @i of a refcount block in the cache. */
uint64_t qcow2_rc_get(const struct qcow2_state *s, const void *block, uint64_t i);
void qcow2_rc_set(const struct qcow2_state *s, void *block, uint64_t i, uint64_t v);
/* Adds @delta to the refcounts of the clusters covering [offset, offset + len). */
int qcow2_update_refcount(struct qcow2_state *s, uint64_t offset, uint64_t len, int64_t delta);
/*
 * Host cluster @index, free until now, is being taken (its refcount leaves 0): compressed
 * data must not go on packing into it. Every path that raises a refcount from 0 calls it,
 * also those that set refcounts directly. [meta]
 */
static inline void qcow2_cluster_taken(struct qcow2_state *s, uint64_t index)
{
	if (s->free_byte_offset && s->free_byte_offset >> s->cluster_bits == index)
		s->free_byte_offset = 0;
}
/* Allocates @len bytes of contiguous clusters (first free), refcount 1. Host offset or -errno. */
int64_t qcow2_alloc_clusters(struct qcow2_state *s, uint64_t len);
/*
 * Allocates up to @n clusters at exactly @offset: as many as are free there in a row,
 * without moving the first-free cursor. Returns how many (0 if @offset is in use) or -errno.
 */
int64_t qcow2_alloc_clusters_at(struct qcow2_state *s, uint64_t offset, uint64_t n);
/* Allocates @len bytes for compressed data (packed after the previous ones). */
int64_t qcow2_alloc_bytes(struct qcow2_state *s, uint64_t len);
/* Drops one reference to the clusters of @l2_entry (normal or compressed), deferred. */
int qcow2_free_l2_entry(struct qcow2_state *s, uint64_t l2_entry, enum qcow2_discard_type t);
/* Drops one reference to clusters at [offset, offset + len), deferred until the metadata that
 * stopped using them is on disk. */
int qcow2_free_clusters(struct qcow2_state *s, uint64_t offset, uint64_t len,
			enum qcow2_discard_type t);
/* Applies deferred frees (caller made the metadata that dropped the references durable). */
int qcow2_apply_pending_frees(struct qcow2_state *s);

/* ------------------------------------------------ clusters (qcow2-cluster.c) */
struct qcow2_map {
	enum qcow2_ctype type;
	uint64_t host;		/* host offset of the guest offset asked, 0 if none (normal,
				 * zero-alloc, unallocated subcluster of a host cluster) */
	uint64_t l2_entry;	/* raw entry of the first cluster (compressed descriptor) */
	uint64_t bytes;		/* guest bytes from the offset with the same type and contiguity */
};
/*
 * What [offset, offset + bytes) maps to, for the leading run of one type. A bad entry is a
 * fatal corruption event (-EIO), worded as qemu's read and block status paths word it.
 */
int qcow2_get_mapping(struct qcow2_state *s, uint64_t offset, uint64_t bytes,
		      struct qcow2_map *map);
/* The same, the corruption worded as qemu's write path words it. */
int qcow2_get_mapping_for_write(struct qcow2_state *s, uint64_t offset, uint64_t bytes,
				struct qcow2_map *map);
/*
 * Before a write writes a part that ends at cluster @offset while the request goes on: qemu
 * looks at the next cluster first, and an unaligned cluster to be written in place there
 * fails the whole part (a fatal event, -EIO). 0 otherwise.
 */
int qcow2_write_lookahead(struct qcow2_state *s, uint64_t offset);
/* Reads the raw L2 entry (and bitmap) of the cluster at guest @offset; 0 if no L2 table. */
int qcow2_get_l2_entry(struct qcow2_state *s, uint64_t offset, uint64_t *entry,
		       uint64_t *bitmap);
/* The writable L2 table for guest @offset, allocating or copying it. *table, *index. */
int qcow2_get_l2_for_write(struct qcow2_state *s, uint64_t offset, void **table,
			   uint32_t *index);
/* Entry accessors on a table returned by the cache. */
uint64_t qcow2_l2_get(const struct qcow2_state *s, const void *table, uint32_t i);
uint64_t qcow2_l2_get_bitmap(const struct qcow2_state *s, const void *table, uint32_t i);
void qcow2_l2_set(const struct qcow2_state *s, void *table, uint32_t i, uint64_t entry,
		  uint64_t bitmap);
enum qcow2_ctype qcow2_entry_type(const struct qcow2_state *s, uint64_t entry);
/* Grows the L1 table to at least @min_size entries (exact when @exact). */
int qcow2_grow_l1(struct qcow2_state *s, uint64_t min_size, bool exact);
/* Writes L1 entry @index to disk. */
int qcow2_write_l1_entry(struct qcow2_state *s, uint32_t index);

/* ------------------------------------------------ data path (qcow2-rw.c) */
int tblk__qcow2_preadv(struct tblk_node *node, uint64_t offset, uint64_t bytes,
		       const struct iovec *iov, int iovcnt, unsigned int flags);
int tblk__qcow2_pwritev(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			const struct iovec *iov, int iovcnt, unsigned int flags);
int tblk__qcow2_flush(struct tblk_node *node);
/* Reads or writes @bytes at @pos of the VM state area (qcow2-vmstate.c); 0 or -errno. */
int tblk__qcow2_vmstate_rw(struct tblk_node *node, uint64_t pos, const struct iovec *iov,
			   int iovcnt, uint64_t bytes, bool write);
int tblk__qcow2_pdiscard(struct tblk_node *node, uint64_t offset, uint64_t bytes);
int tblk__qcow2_pwrite_zeroes(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			      unsigned int flags);
int tblk__qcow2_block_status(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			     uint64_t *pnum, uint64_t *map);

/* ------------------------------------------------ fast path (qcow2-fast.c, qcow2-fast-alloc.c) */
int tblk__qcow2_submit_fast(struct tblk_node *node, struct tblk_req *req, uint64_t offset);
struct fast_alloc;
/*
 * Loop thread, under mu with meta_held false: plans a fast allocating write of @req at guest
 * @offset (clusters claimed, refcounts raised in the cache), or NULL if it does not qualify.
 */
struct fast_alloc *qcow2_fast_alloc_plan_locked(struct qcow2_state *s, struct tblk_req *req,
						uint64_t offset) TBLK_REQUIRES(s->mu);
/* Loop thread, without mu: hands the planned write to the data file; takes @req (0). */
int qcow2_fast_alloc_submit(struct qcow2_state *s, struct tblk_req *req, struct fast_alloc *fa);

/* ------------------------------------------------ check (qcow2-check.c) */
int qcow2_check(struct qcow2_state *s, struct tblk_check_result *res, int fix);

/* ------------------------------------------------ snapshots (qcow2-snapshot.c) */
/* Reads and checks the snapshot table at open. */
int qcow2_snapshots_read(struct qcow2_state *s, uint64_t file_size, GError **errp);
void qcow2_snapshots_free(struct qcow2_state *s);
int tblk__qcow2_snapshot_list(struct tblk_node *node, struct tblk_snapshot_info **psn, int *pn);
int tblk__qcow2_snapshot_create(struct tblk_node *node, const struct tblk_snapshot_info *sn,
				GError **errp);
int tblk__qcow2_snapshot_goto(struct tblk_node *node, const char *id_or_name, GError **errp);
int tblk__qcow2_snapshot_delete(struct tblk_node *node, const char *id, const char *name,
				GError **errp);
int tblk__qcow2_snapshot_load_tmp(struct tblk_node *node, const char *id, const char *name,
				  GError **errp);

/* ------------------------------------------------ backing file, emptying (qcow2-backing.c) */
int tblk__qcow2_change_backing_file(struct tblk_node *node, const char *backing_file,
				    const char *backing_fmt);
int tblk__qcow2_make_empty(struct tblk_node *node);

/* ------------------------------------------------ resize (qcow2-resize.c, qcow2-prealloc.c) */
enum { QCOW2_PREALLOC_OFF, QCOW2_PREALLOC_METADATA, QCOW2_PREALLOC_FALLOC, QCOW2_PREALLOC_FULL };
/* QCOW2_PREALLOC_* of a preallocation mode name (NULL: off), or -ENOTSUP with *errp. */
int qcow2_prealloc_mode(const char *prealloc, GError **errp);
int tblk__qcow2_truncate(struct tblk_node *node, uint64_t size, const char *prealloc,
			 GError **errp);
/* Under the image lock: resizes to @size with preallocation @mode (QCOW2_PREALLOC_*). */
int qcow2_truncate_locked(struct qcow2_state *s, uint64_t size, int mode, GError **errp);
/* The index of the last cluster with a reference below @file_size. */
int qcow2_last_cluster(struct qcow2_state *s, uint64_t file_size, uint64_t *last);
/* Preallocates guest [old, size) with @mode (the L1 table already covers it). */
int qcow2_prealloc(struct qcow2_state *s, uint64_t old, uint64_t size, int mode,
		   GError **errp);
/* qemu's size of the refcount structures counting @clusters clusters (and themselves). */
uint64_t qcow2_refcount_metadata_size(uint64_t clusters, uint64_t cluster_size,
				      unsigned int refcount_order, bool generous,
				      uint64_t *refblock_count);
/* File size of a fully preallocated image of @total_size (qemu's calc_prealloc_size). */
uint64_t qcow2_prealloc_size(uint64_t total_size, uint64_t cluster_size,
			     unsigned int refcount_order, bool ext_l2);
/*
 * Writes refcount blocks and a new refcount table at @start covering everything up to
 * @additional clusters past it (qemu's qcow2_refcount_area). Returns the end of the new
 * structures or -errno.
 */
int64_t qcow2_refcount_area(struct qcow2_state *s, uint64_t start, uint64_t additional,
			    bool exact, uint64_t new_block_index, uint64_t new_block_offset);

/* ------------------------------------------------ amend (qcow2-amend.c, qcow2-refcount-order.c) */
int tblk__qcow2_amend(struct tblk_node *node, GHashTable *opts, bool force,
		      void (*progress)(double fraction, void *opaque), void *opaque,
		      GError **errp);
/* Under the image lock: rewrites the refcount structures with entries of 2^@order bits. */
int qcow2_change_refcount_order(struct qcow2_state *s, unsigned int order, GError **errp);
/* The steps of an amend that report progress. */
enum qcow2_amend_step {
	QCOW2_AMEND_NONE,
	QCOW2_AMEND_UPGRADE,
	QCOW2_AMEND_REFCOUNT_ORDER,
	QCOW2_AMEND_DOWNGRADE,
};
/*
 * Step @step of the amend running has done @offset of @work units (see qcow2-amend.c for how
 * steps combine); nothing when no amend with a progress callback runs. Under the image lock.
 */
void qcow2_amend_report(struct qcow2_state *s, enum qcow2_amend_step step, uint64_t offset,
			uint64_t work);

/* ------------------------------------------------ measure (qcow2-measure.c) */
int tblk__qcow2_measure(GHashTable *opts, uint64_t size, struct tblk_blk *src,
			struct tblk_node *src_node, struct tblk_measure *m, GError **errp);

/* ------------------------------------------------ create (qcow2-create.c) */
int qcow2_create(const char *filename, uint64_t size, GHashTable *opts, GError **errp);

#endif /* TBLK_QCOW2_INT_H */
