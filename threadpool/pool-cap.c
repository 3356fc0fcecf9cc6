/* SPDX-License-Identifier: MIT */
/*
 * pool-cap.c - how many of a pool's workers may run at once: a limit that finds, by trial,
 * the fewest workers that keep the throughput.
 *
 * Why: a worker that finishes an item and finds the queue empty sleeps, and the next item
 * costs a wake-up, two context switches. With fewer running workers than items in flight
 * the queue stays non-empty and a worker goes from one item to the next without sleeping;
 * but each worker blocked in a read is one request the device sees, so too few workers lose
 * throughput. Where the knee lies depends on the device and on the items (a raw read, a
 * qcow2 allocation that does three I/Os), so it is measured, not configured.
 *
 * How: completions are counted in windows (WINDOW_ITEMS and at least WINDOW_NS). A window
 * in which the demand (running plus queued items) stayed below the cap held nothing back:
 * the cap drops to the demand seen, so that a search starts from what is used. Otherwise
 * the window's rate is compared with a reference, the best rate of late (it follows a
 * better rate at once and decays by DECAY_PCT a window). Searching down, the cap steps down
 * (an eighth, or one) as long as the rate stays within TOLERANCE_PCT of the reference, since
 * fewer workers did as well; a loss turns the search up. Searching up, it steps up as long
 * as each step gains more than half the tolerance over the window before, then turns down
 * again. So the cap hovers just above the knee of the throughput curve and follows it. On a noisy machine the reference rides the upper envelope of the rates and the cap
 * drifts up, towards more workers: noise costs CPU time, never throughput.
 *
 * Threading: the caller serialises every call (the pool calls under its lock).
 */
#include "threadpool/pool-cap.h"

#define WINDOW_ITEMS	2048
#define WINDOW_NS	20000000ull
#define TOLERANCE_PCT	5
#define DECAY_PCT	2

void tblk__cap_init(struct tblk_pool_cap *c, unsigned int min, unsigned int max, bool adaptive)
{
	*c = (struct tblk_pool_cap){
		.cap = max,
		.min = min < max ? min : max,
		.max = max,
		.adaptive = adaptive && min < max,
		.dir = -1,
	};
}

void tblk__cap_demand(struct tblk_pool_cap *c, unsigned int demand)
{
	if (demand > c->win_peak)
		c->win_peak = demand;
}

static unsigned int step(unsigned int cap)
{
	return cap >= 16 ? cap / 8 : 1;
}

void tblk__cap_decide(struct tblk_pool_cap *c, uint64_t rate)
{
	unsigned int cap = c->cap;

	if (c->win_peak < cap) {
		/* The cap held nothing back: start any later search from what was used. */
		c->cap = c->win_peak > c->min ? c->win_peak : c->min;
		return;
	}
	/* The reference follows the best recent rate up at once and down slowly. */
	c->ref_rate = c->ref_rate * (100 - DECAY_PCT) / 100;
	if (rate > c->ref_rate)
		c->ref_rate = rate;
	if (c->dir < 0) {
		/* Down while the rate holds; a loss: back up. */
		if (rate * 100 < c->ref_rate * (100 - TOLERANCE_PCT))
			c->dir = 1;
	} else if (rate * 200 <= c->last_rate * (200 + TOLERANCE_PCT)) {
		/* Up while each step still gains; no more gain: the knee, search down again. */
		c->dir = -1;
	}
	c->last_rate = rate;
	if (c->dir < 0)
		cap = cap - step(cap) > c->min ? cap - step(cap) : c->min;
	else
		cap = cap + step(cap) < c->max ? cap + step(cap) : c->max;
	c->cap = cap;
}

bool tblk__cap_completed(struct tblk_pool_cap *c)
{
	uint64_t now, elapsed;

	if (!c->adaptive || ++c->win_done < WINDOW_ITEMS)
		return false;
	now = tblk_clock_ns();
	if (!c->win_start_ns) {
		c->win_start_ns = now;
		c->win_done = 0;
		c->win_peak = 0;
		return false;
	}
	elapsed = now - c->win_start_ns;
	if (elapsed < WINDOW_NS)
		return false;
	tblk__cap_decide(c, c->win_done * 1000000000ull / elapsed);
	c->win_start_ns = now;
	c->win_done = 0;
	c->win_peak = 0;
	return true;
}
