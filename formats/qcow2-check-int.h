/* SPDX-License-Identifier: MIT */
/*
 * qcow2-check-int.h - what the files of the qcow2 check share (qcow2-check.c, the steps and
 * the findings; qcow2-check-refcount.c, the refcount array; qcow2-check-l2.c, the table walk
 * and the COPIED flags; qcow2-check-repair.c, the refcount structure rebuilt).
 *
 * Locking: one check runs at a time on an image, under its image lock (meta) in a drained
 * section; struct check lives on the stack of qcow2_check() and is seen by that thread only.
 * Its fields are tagged [const] (set before the walk starts) or [meta].
 */
#ifndef TBLK_QCOW2_CHECK_INT_H
#define TBLK_QCOW2_CHECK_INT_H

#include "formats/qcow2-int.h"

/*
 * A finding that qemu-img reports as its own error ("qemu-img: ERROR writing refblock: ...")
 * starts with this byte: tblk-img check prints it after its program name.
 */
#define TOOL_ERROR	"\001"

/* Walking an L2 table of the active L1 table: count allocation statistics too. */
#define CHECK_FRAG_INFO	0x1

/* Entries all L2 views may hold (20 bytes each) before they are dropped and read anew. */
#define VIEW_ENTRIES_MAX	(1u << 22)

struct check {
	struct qcow2_state *s;		/* [const] */
	struct tblk_check_result *res;	/* [const] the pointer; its counters and findings [meta] */
	uint64_t file_size;		/* [meta] bytes; grows when a repair grows the file */
	uint8_t *refs;			/* [meta] counted references, in refcount block layout */
	uint64_t nb_clusters;		/* [meta] entries of refs that are in use */
	bool rebuild;			/* [meta] the refcount structure must be written anew */
	bool signaled;			/* [meta] the corruption message was given */
	bool halted;			/* [meta] marked corrupt while repairing: no more writes */
	bool findings_cut;		/* [meta] FINDINGS_MAX reached */
	/*
	 * [meta] The entries in use of the L2 tables walked so far, by table offset (struct
	 * l2_view): hostile L1 tables name one table thousands of times, and a walk then costs
	 * what the table holds, not its size. Forgotten when a repair writes into the file.
	 */
	GHashTable *views;
	uint64_t view_entries;		/* [meta] held by views, at most VIEW_ENTRIES_MAX */
	/* [meta] for the overlap checks of repairs, built at the first; dropped on a rebuild */
	struct qcow2_overlap_index overlaps;
};

/* The non-zero entries (or bitmaps) of an L2 table, in order; the rest read as zero. */
struct l2_view {
	uint32_t n;
	uint32_t *index;
	uint64_t *entry;
	uint64_t *bitmap;		/* zero without extended L2 entries */
};

/* ------------------------------------------------ qcow2-check.c */
/* Appends a finding (a line, in qemu-img's words) to c->res->messages. */
void qcow2_chk_finding(struct check *c, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
/* Stored refcount of cluster @i; a failure is qemu's -EIO (a broken block signalled). */
int qcow2_chk_stored(struct check *c, uint64_t i, uint64_t *rc);
/*
 * A repair's write of @len bytes at @off: 0, or -EIO (the image marked corrupt, the repair
 * halted) if it would touch metadata other than the QCOW2_OL_* kinds in @ignore.
 */
int qcow2_chk_overlap(struct check *c, unsigned int ignore, uint64_t off, uint64_t len);

/* ------------------------------------------------ qcow2-check-refcount.c */
/* Bytes of a refs array of @n entries: whole clusters, so a block is a slice of it. */
uint64_t qcow2_chk_refs_bytes(const struct qcow2_state *s, uint64_t n);
/* Grows the array to @n entries (new ones zero); -ENOMEM. */
int qcow2_chk_refs_resize(struct check *c, uint64_t n);
/* Counts one reference to each cluster of [offset, offset + len); -ENOMEM only. */
int qcow2_chk_ref(struct check *c, uint64_t offset, uint64_t len);
/* Counts every reference the metadata makes into c->refs. */
int qcow2_chk_count(struct check *c, int fix);
/* Compares stored refcounts with the counts, repairing as @fix allows; the highest in use. */
uint64_t qcow2_chk_compare(struct check *c, int fix);

static inline uint64_t ref_get(const struct check *c, uint64_t i)
{
	return qcow2_rc_get(c->s, c->refs, i);
}

static inline void ref_set(struct check *c, uint64_t i, uint64_t v)
{
	qcow2_rc_set(c->s, c->refs, i, v);
}

/* ------------------------------------------------ qcow2-check-l2.c */
/* Counts an L1 table of @l1_size entries at @l1_off and everything it references. */
int qcow2_chk_l1(struct check *c, uint64_t l1_off, uint32_t l1_size, int flags, int fix);
/* Counts the snapshot table and every snapshot's L1 table. */
int qcow2_chk_snapshots(struct check *c, int fix);
/* Sets the COPIED flags of the active L1 and L2 entries from the refcounts. */
int qcow2_chk_copied(struct check *c, int fix);
/* A repair wrote into the file (or the views grew too big): tables are read again. */
void qcow2_chk_forget_views(struct check *c);

/* ------------------------------------------------ qcow2-check-repair.c */
/* Writes a new refcount structure from the counts and points the header at it. */
int qcow2_chk_rebuild(struct check *c);
/* After a rebuild: counts again, frees the old structure, works out what was repaired. */
int qcow2_chk_after_rebuild(struct check *c, int fix, uint64_t *highest);

#endif
