/* SPDX-License-Identifier: MIT */
/*
 * throttle.h - I/O limits: leaky-bucket accounting with qemu's options (throttling.*,
 * throttle-group objects), throttle groups whose members share one budget round-robin,
 * and the two ways a request waits for budget: an asynchronous request is parked on its
 * member's queue and released on its loop by a timer, a synchronous caller sleeps.
 *
 * Threading: a group's state is guarded by its lock (a leaf; no callback runs with it held).
 * A member's timer and bottom half belong to its loop thread. The bucket functions take
 * explicit timestamps and touch only the config they are given (tests call them directly).
 */
#ifndef TBLK_THROTTLE_H
#define TBLK_THROTTLE_H

#include "graph/graph.h"

/* The six limits, in the order qemu lists them. */
enum tblk__thr_index {
	TBLK_THR_BPS_TOTAL,
	TBLK_THR_BPS_READ,
	TBLK_THR_BPS_WRITE,
	TBLK_THR_OPS_TOTAL,
	TBLK_THR_OPS_READ,
	TBLK_THR_OPS_WRITE,
	TBLK_THR_NR,
};

/*
 * One leaky bucket. Each request adds its cost to `level`, which leaks at `avg` units per
 * second; a request may start while the level is at most the bucket size (max *
 * burst_length, max defaulting to avg / 10). With a burst longer than a second,
 * `burst_level` leaks at `max` per second and caps the burst rate itself.
 */
struct tblk__thr_bucket {
	double avg;		/* units per second, 0: no limit */
	double max;		/* burst rate; 0: avg / 10 */
	uint64_t burst_length;	/* seconds, >= 1 */
	double level;
	double burst_level;
};

struct tblk__thr_cfg {
	struct tblk__thr_bucket b[TBLK_THR_NR];
	uint64_t op_size;	/* iops-size: bigger requests count as several ops, 0: off */
};

/* True if any limit is set. */
bool tblk__thr_cfg_enabled(const struct tblk__thr_cfg *cfg);
/*
 * Parses qemu's limit names ("iops-total", "bps-read-max", "iops-write-max-length",
 * "iops-size") from @opts, each key being @prefix followed by the name; consumed keys are
 * removed. Validates like qemu (no total with read/write, max >= avg, ...). 0 or -EINVAL.
 */
int tblk__thr_cfg_parse(struct tblk__thr_cfg *cfg, GHashTable *opts, const char *prefix,
		       GError **errp);
/* Lets the buckets leak for @delta_ns. */
void tblk__thr_leak(struct tblk__thr_cfg *cfg, uint64_t delta_ns);
/* Nanoseconds before a @write (or read) request may start; 0: now. */
uint64_t tblk__thr_wait_ns(const struct tblk__thr_cfg *cfg, bool write);
/* Charges a request of @bytes to the buckets it counts in. */
void tblk__thr_account(struct tblk__thr_cfg *cfg, bool write, uint64_t bytes);

/* ---------------------------------------------------------------- groups and members */

struct tblk__thr_group;
struct tblk__thr_member;

/* A request waiting for budget; storage owned by the waiter. */
struct tblk__thr_waiter {
	struct tblk_list link;		/* [group lock] on its member's queue */
	bool write;			/* [const] */
	uint64_t bytes;			/* [const] */
	bool released;			/* [group lock] */
	/* Asynchronous waiters: runs on the member's loop once released. NULL: synchronous. */
	void (*release)(struct tblk__thr_waiter *w);
};

/*
 * Joins the group @name (NULL: a private group), creating it if needed. With @cfg non-NULL
 * the group's limits become @cfg (qemu: the last member's throttling.* options win); a new
 * group needs @cfg. Asynchronous waiters are released on @loop (NULL: synchronous only).
 * 0 or -errno with *errp. Control path.
 */
int tblk__thr_member_new(struct tblk__thr_member **pm, const char *name,
			const struct tblk__thr_cfg *cfg, struct tblk_loop *loop, GError **errp);
/* Leaves the group (freed with its last member unless made by tblk_throttle_group_new()).
 * No waiter may be queued. On the loop thread (or with the loop not running). NULL ok. */
void tblk__thr_member_free(struct tblk__thr_member *m);

/*
 * Asks for budget for @w. Returns true if it may run now (charged); false if it was queued:
 * an asynchronous waiter's release() will run on the member's loop. Any thread for
 * synchronous waiters, the member's loop thread for asynchronous ones.
 */
bool tblk__thr_submit(struct tblk__thr_member *m, struct tblk__thr_waiter *w);
/* Waits (sleeps) until synchronous @w, which tblk__thr_submit() queued, is released. */
void tblk__thr_wait(struct tblk__thr_member *m, struct tblk__thr_waiter *w);
/* Both: throttles a synchronous request of @bytes; returns when it may run. */
void tblk__thr_throttle_sync(struct tblk__thr_member *m, bool write, uint64_t bytes);

/*
 * Drained sections: with @begin, releases @m's waiters at once (their budget charged) and
 * lets new requests of @m go without waiting until the matching call without @begin. Nests.
 * Asynchronous waiters run on @m's loop as usual. Any thread.
 */
void tblk__thr_member_drain(struct tblk__thr_member *m, bool begin);

/* Tests: a clock for the group of @m instead of tblk_clock_ns(), and a manual release pass
 * (what the timer does). */
void tblk__thr_set_clock(struct tblk__thr_member *m, uint64_t (*clock_ns)(void));
void tblk__thr_run_timer(struct tblk__thr_member *m);

#endif /* TBLK_THROTTLE_H */
