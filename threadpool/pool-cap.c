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
 * How: the cap takes one of a few levels (every count up to 8, then four per doubling:
 * 8 10 12 14 16 20 24 28 32 40 ..). Completions are counted in windows (WINDOW_ITEMS and at
 * least WINDOW_NS). A window in which the demand (running plus queued items) stayed below
 * the cap held nothing back: the cap drops to the highest level within the demand, and the
 * window teaches nothing. Otherwise the window's rate goes into a running average kept for
 * its level (restarted when its last figure is older than a probe's), and the cap moves to
 * the lowest level whose average is within TOLERANCE_PCT of the best one: fewer workers that
 * did as well. Only levels measured in the last FORGET windows count, and the two levels
 * beside the chosen one are measured again, one window each, whenever their figure is older
 * than PROBE_EVERY windows (or missing): so the cap walks down while fewer workers do as
 * well, climbs while more do better, and follows a device whose knee moves. A lucky window at
 * a level raises its average, which makes it the chosen level, which measures it every window
 * until the average says what it is worth: one noisy window moves the cap for a few windows,
 * not for good (a search against a single reference rate walked away on noise, see
 * docs/BENCHMARKS.md).
 *
 * Threading: the caller serialises every call (the pool calls under its lock).
 */
#include "threadpool/pool-cap.h"

#include <limits.h>
#include <string.h>

#define WINDOW_ITEMS	2048
#define WINDOW_NS	20000000ull
#define TOLERANCE_PCT	5
#define PROBE_EVERY	16
#define FORGET		64

/* The level after @v: +1 below 8, then a quarter of the power of two at or below it. */
static unsigned int next_level(unsigned int v)
{
	unsigned int p = 8;

	if (v < 8)
		return v + 1;
	while (p <= v / 2)
		p *= 2;
	return v + p / 4 > v ? v + p / 4 : UINT_MAX;
}

void tblk__cap_init(struct tblk_pool_cap *c, unsigned int min, unsigned int max, bool adaptive)
{
	unsigned int v, n = 0;

	memset(c, 0, sizeof(*c));
	c->min = min < max ? min : max;
	c->max = max;
	c->adaptive = adaptive && min < max;
	for (v = c->min; v < max && n < TBLK_CAP_LEVELS - 1; v = next_level(v))
		c->level[n++] = v;
	c->level[n++] = max;
	c->nr_levels = n;
	c->cap = max;
}

void tblk__cap_demand(struct tblk_pool_cap *c, unsigned int demand)
{
	if (demand > c->win_peak)
		c->win_peak = demand;
}

/* The index of the highest level at or below @v (the lowest level if none). */
static unsigned int level_at_most(const struct tblk_pool_cap *c, unsigned int v)
{
	unsigned int i = 0;

	while (i + 1 < c->nr_levels && c->level[i + 1] <= v)
		i++;
	return i;
}

static bool fresh(const struct tblk_pool_cap *c, unsigned int i, uint64_t age)
{
	return c->rate[i] && c->windows - c->seen[i] <= age;
}

void tblk__cap_decide(struct tblk_pool_cap *c, uint64_t rate)
{
	unsigned int i = level_at_most(c, c->cap), best = i, pick;

	if (c->win_peak < c->cap) {
		/* The cap held nothing back: start any later search from what was used. */
		c->cap = c->level[level_at_most(c, c->win_peak)];
		return;
	}
	/* An average of windows close together; a figure older than a probe's is replaced. */
	c->windows++;
	if (rate == 0)
		rate = 1;
	c->rate[i] = fresh(c, i, PROBE_EVERY) ? (3 * c->rate[i] + rate) / 4 : rate;
	c->seen[i] = c->windows;
	for (i = 0; i < c->nr_levels; i++)
		if (fresh(c, i, FORGET) && c->rate[i] > c->rate[best])
			best = i;
	for (pick = 0; pick < best; pick++)
		if (fresh(c, pick, FORGET) &&
		    c->rate[pick] * 100 >= c->rate[best] * (100 - TOLERANCE_PCT))
			break;
	/* Refresh a neighbour that may do better: fewer workers first. */
	if (pick > 0 && !fresh(c, pick - 1, PROBE_EVERY))
		pick--;
	else if (pick + 1 < c->nr_levels && !fresh(c, pick + 1, PROBE_EVERY))
		pick++;
	c->cap = c->level[pick];
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
