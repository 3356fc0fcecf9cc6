/* SPDX-License-Identifier: MIT */
/*
 * pool-cap.h - the adaptive limit on a pool's running workers (pool-cap.c).
 *
 * Threading: every field is guarded by the owner's lock (the pool's lock); no call blocks.
 */
#ifndef TBLK_POOL_CAP_H
#define TBLK_POOL_CAP_H

#include "common/common.h"

/* Enough levels for any unsigned maximum: 8 below 8, then 4 per doubling. */
#define TBLK_CAP_LEVELS	128

struct tblk_pool_cap {
	unsigned int cap;	/* [owner's lock] running workers allowed now: one of level[] */
	unsigned int min;	/* [const] */
	unsigned int max;	/* [const] */
	bool adaptive;		/* [const] false: cap stays at max */
	unsigned int nr_levels;	/* [const] entries of level[] */
	unsigned int level[TBLK_CAP_LEVELS];	/* [const] the caps tried, ascending, min..max */
	uint64_t rate[TBLK_CAP_LEVELS];	/* [owner's lock] completions/s at each, averaged; 0 unknown */
	uint64_t seen[TBLK_CAP_LEVELS];	/* [owner's lock] the window that last measured each */
	uint64_t windows;	/* [owner's lock] windows measured so far */
	uint64_t win_start_ns;	/* [owner's lock] 0 before the first window */
	uint64_t win_done;	/* [owner's lock] completions in this window */
	unsigned int win_peak;	/* [owner's lock] most demand (running + queued) seen in it */
};

void tblk__cap_init(struct tblk_pool_cap *c, unsigned int min, unsigned int max, bool adaptive);

/* The demand now: workers running plus items queued. */
void tblk__cap_demand(struct tblk_pool_cap *c, unsigned int demand);

/* An item completed; true if that ended a window and the cap may have changed. */
bool tblk__cap_completed(struct tblk_pool_cap *c);

/* The end of a window with @rate completions per second (exposed for tests). */
void tblk__cap_decide(struct tblk_pool_cap *c, uint64_t rate);

#endif /* TBLK_POOL_CAP_H */
