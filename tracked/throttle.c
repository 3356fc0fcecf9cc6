/* SPDX-License-Identifier: MIT */
/*
 * throttle.c - I/O limits: the leaky buckets, qemu's limit options, throttle groups and
 * their members, and releasing waiting requests round-robin between members.
 *
 * A group holds one set of buckets. Each member (a backend, or a throttle filter node) has
 * a queue per direction of requests waiting for budget. Whoever asks for budget, and every
 * timer expiry, runs one release pass per direction (reads, writes; which one goes first
 * alternates): starting at the member whose turn it is, the head of
 * each non-empty queue is charged and released while the buckets allow, the turn moving to
 * the next member after each release. When budget runs out, the waiter at the head of the
 * next queue is made responsible for the next pass: an asynchronous one arms its member's
 * timer (on the member's loop, through a bottom half), synchronous ones sleep until the
 * group's deadline.
 *
 * Threading: group state under group->lock (a leaf; registry_lock is taken before it,
 * never inside). Released asynchronous waiters are handed to their member's loop, where
 * their release() runs without any lock held.
 */
#include <string.h>

#include "tracked/throttle.h"

/* ---------------------------------------------------------------- buckets */

bool tblk__thr_cfg_enabled(const struct tblk__thr_cfg *cfg)
{
	for (int i = 0; i < TBLK_THR_NR; i++)
		if (cfg->b[i].avg > 0)
			return true;
	return false;
}

/* No libm: static users of libtblk.a do not link it. */
static double dmax(double a, double b)
{
	return a > b ? a : b;
}

static double bucket_size(const struct tblk__thr_bucket *b)
{
	double max = b->max > 0 ? b->max : b->avg / 10;

	return max * (double)(b->burst_length ? b->burst_length : 1);
}

void tblk__thr_leak(struct tblk__thr_cfg *cfg, uint64_t delta_ns)
{
	double secs = (double)delta_ns / 1e9;

	for (int i = 0; i < TBLK_THR_NR; i++) {
		struct tblk__thr_bucket *b = &cfg->b[i];

		if (b->avg <= 0)
			continue;
		b->level = dmax(0, b->level - b->avg * secs);
		if (b->burst_length > 1)
			b->burst_level = dmax(0, b->burst_level - b->max * secs);
	}
}

static uint64_t bucket_wait_ns(const struct tblk__thr_bucket *b)
{
	double extra, wait = 0;

	if (b->avg <= 0)
		return 0;
	extra = b->level - bucket_size(b);
	if (extra > 0)
		wait = extra / b->avg;
	/* A long burst still may not exceed max per second: a bucket of a tenth of max. */
	if (b->burst_length > 1) {
		extra = b->burst_level - b->max / 10;
		if (extra > 0)
			wait = dmax(wait, extra / b->max);
	}
	return wait > 0 ? (uint64_t)(wait * 1e9) + 1 : 0;
}

uint64_t tblk__thr_wait_ns(const struct tblk__thr_cfg *cfg, bool write)
{
	static const int bps[2] = { TBLK_THR_BPS_READ, TBLK_THR_BPS_WRITE };
	static const int ops[2] = { TBLK_THR_OPS_READ, TBLK_THR_OPS_WRITE };
	uint64_t w = 0;

	w = TBLK_MAX(w, bucket_wait_ns(&cfg->b[TBLK_THR_BPS_TOTAL]));
	w = TBLK_MAX(w, bucket_wait_ns(&cfg->b[TBLK_THR_OPS_TOTAL]));
	w = TBLK_MAX(w, bucket_wait_ns(&cfg->b[bps[write]]));
	w = TBLK_MAX(w, bucket_wait_ns(&cfg->b[ops[write]]));
	return w;
}

static void bucket_add(struct tblk__thr_bucket *b, double units)
{
	if (b->avg <= 0)
		return;
	b->level += units;
	if (b->burst_length > 1)
		b->burst_level += units;
}

void tblk__thr_account(struct tblk__thr_cfg *cfg, bool write, uint64_t bytes)
{
	double ops = 1;

	if (cfg->op_size && bytes > cfg->op_size)
		ops = (double)bytes / (double)cfg->op_size;
	bucket_add(&cfg->b[TBLK_THR_BPS_TOTAL], (double)bytes);
	bucket_add(&cfg->b[write ? TBLK_THR_BPS_WRITE : TBLK_THR_BPS_READ], (double)bytes);
	bucket_add(&cfg->b[TBLK_THR_OPS_TOTAL], ops);
	bucket_add(&cfg->b[write ? TBLK_THR_OPS_WRITE : TBLK_THR_OPS_READ], ops);
}

/* ---------------------------------------------------------------- options */

static const char *const bucket_names[TBLK_THR_NR] = {
	"bps-total", "bps-read", "bps-write", "iops-total", "iops-read", "iops-write",
};

/* qemu's upper bound for every limit (THROTTLE_VALUE_MAX). */
#define THR_VALUE_MAX	1000000000000000ull

static int take_u64(GHashTable *opts, const char *prefix, const char *name,
		    const char *suffix, uint64_t *out, GError **errp)
{
	g_autofree char *key = g_strconcat(prefix, name, suffix, NULL);

	return tblk__opts_take_uint64(opts, key, out, errp);
}

static int cfg_validate(const struct tblk__thr_cfg *cfg, GError **errp)
{
	for (int i = 0; i < TBLK_THR_NR; i += 3) {
		bool total = cfg->b[i].avg > 0 || cfg->b[i].max > 0;
		bool rw = cfg->b[i + 1].avg > 0 || cfg->b[i + 1].max > 0 ||
			  cfg->b[i + 2].avg > 0 || cfg->b[i + 2].max > 0;

		if (total && rw)
			return tblk_error_set(errp, EINVAL, "bps/iops/max total values and "
					      "read/write values cannot be used at the same time");
	}
	for (int i = 0; i < TBLK_THR_NR; i++) {
		const struct tblk__thr_bucket *b = &cfg->b[i];

		if (b->avg > THR_VALUE_MAX || b->max > THR_VALUE_MAX)
			return tblk_error_set(errp, EINVAL, "bps/iops/max values must be within "
					      "[0, %llu]", THR_VALUE_MAX);
		if (!b->burst_length)
			return tblk_error_set(errp, EINVAL, "the burst length cannot be 0");
		if (b->burst_length > 1 && !b->max)
			return tblk_error_set(errp, EINVAL, "burst length set without burst "
					      "rate");
		if (b->max > 0 && !(b->avg > 0))
			return tblk_error_set(errp, EINVAL, "bps_max/iops_max require "
					      "corresponding bps/iops values");
		if (b->max > 0 && b->max < b->avg)
			return tblk_error_set(errp, EINVAL, "bps_max/iops_max cannot be lower "
					      "than bps/iops");
	}
	return 0;
}

int tblk__thr_cfg_parse(struct tblk__thr_cfg *cfg, GHashTable *opts, const char *prefix,
		       GError **errp)
{
	memset(cfg, 0, sizeof(*cfg));
	for (int i = 0; i < TBLK_THR_NR; i++) {
		uint64_t avg = 0, max = 0, len = 1;

		if (take_u64(opts, prefix, bucket_names[i], "", &avg, errp) < 0 ||
		    take_u64(opts, prefix, bucket_names[i], "-max", &max, errp) < 0 ||
		    take_u64(opts, prefix, bucket_names[i], "-max-length", &len, errp) < 0)
			return -EINVAL;
		cfg->b[i].avg = (double)avg;
		cfg->b[i].max = (double)max;
		cfg->b[i].burst_length = len;
	}
	if (take_u64(opts, prefix, "iops-size", "", &cfg->op_size, errp) < 0)
		return -EINVAL;
	return cfg_validate(cfg, errp);
}

/* ---------------------------------------------------------------- groups */

/* Lock order: registry_lock, then a group's lock. */
struct tblk__thr_group {
	char *name;			/* [const] NULL: private to one member */
	unsigned int refcnt;		/* [registry_lock] members + 1 if made by --object */
	struct tblk_mutex lock;
	struct tblk_cond cv;		/* [lock] broadcast when a synchronous waiter is released
					 * or the deadline changes */
	struct tblk__thr_cfg cfg;	/* [lock] */
	uint64_t prev_ns;		/* [lock] when the buckets last leaked */
	uint64_t deadline_ns;		/* [lock] next release pass due, 0: none */
	int first_dir;			/* [lock] the direction served first next pass */
	struct tblk_list members;	/* [lock] tblk__thr_member.link */
	struct tblk__thr_member *turn[2];	/* [lock] the member served next per direction */
	uint64_t (*clock_ns)(void);	/* [const] tblk_clock_ns() except in tests */
};

struct tblk__thr_member {
	struct tblk__thr_group *tg;	/* [const] */
	struct tblk_list link;		/* [tg->lock] on tg->members */
	struct tblk_list queue[2];	/* [tg->lock] waiters per direction (read, write) */
	struct tblk_list released;	/* [tg->lock] asynchronous waiters to hand back */
	uint64_t timer_want_ns;		/* [tg->lock] the timer should fire then, 0: no */
	unsigned int bypass;		/* [tg->lock] > 0: drained, requests go at once */
	struct tblk_loop *loop;		/* [const] may be NULL */
	struct tblk_bh *bh;		/* [const] runs member_bh on loop */
	struct tblk_timer timer;	/* [loop thread] */
};

static struct tblk_mutex registry_lock = { .m = PTHREAD_MUTEX_INITIALIZER };
static GHashTable *registry;		/* [registry_lock] name -> group */

static struct tblk__thr_group *group_new(const char *name)
{
	struct tblk__thr_group *tg = g_new0(struct tblk__thr_group, 1);

	tg->name = g_strdup(name);
	tblk_mutex_init(&tg->lock);
	tblk_cond_init(&tg->cv);
	tblk_list_init(&tg->members);
	tg->clock_ns = tblk_clock_ns;
	tg->prev_ns = tblk_clock_ns();
	return tg;
}

static void group_unref(struct tblk__thr_group *tg)
{
	bool last;

	tblk_mutex_lock(&registry_lock);
	last = --tg->refcnt == 0;
	if (last && tg->name)
		g_hash_table_remove(registry, tg->name);
	tblk_mutex_unlock(&registry_lock);
	if (!last)
		return;
	tblk_cond_destroy(&tg->cv);
	tblk_mutex_destroy(&tg->lock);
	g_free(tg->name);
	g_free(tg);
}

/* Finds or makes the group @name and takes a reference; NULL if it must exist and does not. */
static struct tblk__thr_group *group_get(const char *name, bool create)
{
	struct tblk__thr_group *tg = NULL;

	tblk_mutex_lock(&registry_lock);
	if (!registry)
		registry = g_hash_table_new(g_str_hash, g_str_equal);
	if (name)
		tg = g_hash_table_lookup(registry, name);
	if (!tg && create) {
		tg = group_new(name);
		if (name)
			g_hash_table_insert(registry, tg->name, tg);
	}
	if (tg)
		tg->refcnt++;
	tblk_mutex_unlock(&registry_lock);
	return tg;
}

static void group_set_cfg(struct tblk__thr_group *tg, const struct tblk__thr_cfg *cfg)
{
	tblk_mutex_lock(&tg->lock);
	tg->cfg = *cfg;
	tg->prev_ns = tg->clock_ns();
	tblk_mutex_unlock(&tg->lock);
	tblk_cond_broadcast(&tg->cv);
}

int tblk_throttle_group_new(const char *id, GHashTable *props, GError **errp)
{
	g_autoptr(GHashTable) opts = tblk_opts_new();
	struct tblk__thr_group *tg;
	struct tblk__thr_cfg cfg;
	GHashTableIter it;
	gpointer k, v;

	if (!id || !*id)
		return tblk_error_set(errp, EINVAL, "Parameter 'id' is missing");
	/* "x-iops-total" and "limits.iops-total" name the same limit. */
	if (props) {
		g_hash_table_iter_init(&it, props);
		while (g_hash_table_iter_next(&it, &k, &v)) {
			const char *key = k;

			if (g_str_has_prefix(key, "x-"))
				key += 2;
			else if (g_str_has_prefix(key, "limits."))
				key += 7;
			else if (!strcmp(key, "id") || !strcmp(key, "qom-type"))
				continue;
			g_hash_table_insert(opts, g_strdup(key), g_strdup(v));
		}
	}
	if (tblk__thr_cfg_parse(&cfg, opts, "", errp) < 0)
		return -EINVAL;
	g_hash_table_iter_init(&it, opts);
	if (g_hash_table_iter_next(&it, &k, &v))
		return tblk_error_set(errp, EINVAL, "Property 'throttle-group.%s' not found",
				      (char *)k);
	tblk_mutex_lock(&registry_lock);
	tg = registry ? g_hash_table_lookup(registry, id) : NULL;
	tblk_mutex_unlock(&registry_lock);
	if (tg)
		return tblk_error_set(errp, EEXIST, "attempt to add duplicate property '%s' to "
				      "object (type 'container')", id);
	tg = group_get(id, true);	/* this reference is the object's, kept */
	group_set_cfg(tg, &cfg);
	return 0;
}

/* ---------------------------------------------------------------- release passes */

static struct tblk__thr_member *next_member_locked(struct tblk__thr_group *tg,
						  struct tblk__thr_member *m)
	TBLK_REQUIRES(tg->lock)
{
	struct tblk_list *n = m->link.next == &tg->members ? tg->members.next : m->link.next;

	return tblk_list_entry(n, struct tblk__thr_member, link);
}

/* The head waiter of direction @dir whose turn is next (round-robin over members). */
static struct tblk__thr_waiter *next_waiter_locked(struct tblk__thr_group *tg, int dir,
						  struct tblk__thr_member **pm)
	TBLK_REQUIRES(tg->lock)
{
	struct tblk__thr_member *start, *m;

	if (tblk_list_empty(&tg->members))
		return NULL;
	start = tg->turn[dir] ?: tblk_list_entry(tg->members.next, struct tblk__thr_member, link);
	m = start;
	do {
		if (!tblk_list_empty(&m->queue[dir])) {
			*pm = m;
			return tblk_list_entry(m->queue[dir].next, struct tblk__thr_waiter, link);
		}
		m = next_member_locked(tg, m);
	} while (m != start);
	return NULL;
}

static void leak_locked(struct tblk__thr_group *tg, uint64_t now) TBLK_REQUIRES(tg->lock)
{
	if (now > tg->prev_ns) {
		tblk__thr_leak(&tg->cfg, now - tg->prev_ns);
		tg->prev_ns = now;
	}
}

/*
 * Releases waiters of direction @dir while the budget allows (a read that must wait does not
 * hold back writes the budget allows); returns when the next pass for @dir is due (0: no
 * waiter left) and sets *wake if synchronous waiters must be woken.
 */
static uint64_t release_dir_locked(struct tblk__thr_group *tg, int dir, uint64_t now, bool *wake)
	TBLK_REQUIRES(tg->lock)
{
	struct tblk__thr_member *m;
	struct tblk__thr_waiter *w;

	while ((w = next_waiter_locked(tg, dir, &m))) {
		uint64_t wait = tblk__thr_wait_ns(&tg->cfg, dir);

		if (wait > 0) {
			uint64_t deadline = now + wait;

			if (w->release && (!m->timer_want_ns || m->timer_want_ns > deadline)) {
				m->timer_want_ns = deadline;
				tblk_bh_schedule(m->bh);
			}
			return deadline;
		}
		tblk_list_del(&w->link);
		tblk__thr_account(&tg->cfg, dir, w->bytes);
		tg->turn[dir] = next_member_locked(tg, m);
		if (w->release) {
			tblk_list_add_tail(&m->released, &w->link);
			tblk_bh_schedule(m->bh);
		} else {
			w->released = true;
			*wake = true;
		}
	}
	return 0;
}

/* One release pass over both directions. Returns true if synchronous waiters must wake. */
static bool release_pass_locked(struct tblk__thr_group *tg) TBLK_REQUIRES(tg->lock)
{
	uint64_t now = tg->clock_ns(), deadline = 0;
	bool wake = false;

	leak_locked(tg, now);
	/* Alternate which direction goes first, or a total limit would starve writes. */
	tg->first_dir ^= 1;
	for (int i = 0; i < 2; i++) {
		uint64_t d = release_dir_locked(tg, tg->first_dir ^ i, now, &wake);

		if (d && (!deadline || d < deadline))
			deadline = d;
	}
	if (tg->deadline_ns != deadline)
		wake = true;
	tg->deadline_ns = deadline;
	return wake;
}

static bool queue_empty_locked(struct tblk__thr_group *tg, int dir) TBLK_REQUIRES(tg->lock)
{
	struct tblk__thr_member *m;

	return next_waiter_locked(tg, dir, &m) == NULL;
}

bool tblk__thr_submit(struct tblk__thr_member *m, struct tblk__thr_waiter *w)
{
	struct tblk__thr_group *tg = m->tg;
	bool wake;

	assert(!w->release || m->loop);
	w->released = false;
	tblk_mutex_lock(&tg->lock);
	leak_locked(tg, tg->clock_ns());
	/*
	 * Nobody ahead and budget left: run now, without a queue round trip. While drained
	 * the member's requests go at once too (charged, as qemu does, so the average holds).
	 */
	if (m->bypass ||
	    (queue_empty_locked(tg, w->write) && tblk__thr_wait_ns(&tg->cfg, w->write) == 0)) {
		tblk__thr_account(&tg->cfg, w->write, w->bytes);
		tblk_mutex_unlock(&tg->lock);
		return true;
	}
	tblk_list_add_tail(&m->queue[w->write], &w->link);
	wake = release_pass_locked(tg);
	tblk_mutex_unlock(&tg->lock);
	if (wake)
		tblk_cond_broadcast(&tg->cv);
	/* Released at once: the waiter still goes through its loop (or returns true). */
	return false;
}

void tblk__thr_wait(struct tblk__thr_member *m, struct tblk__thr_waiter *w)
{
	struct tblk__thr_group *tg = m->tg;
	bool wake = false;

	tblk_mutex_lock(&tg->lock);
	while (!w->released) {
		/* Sleeps until the pass is due (or someone else released us). */
		uint64_t deadline = tg->deadline_ns;

		if (deadline && tg->clock_ns() >= deadline) {
			wake = release_pass_locked(tg);
			continue;
		}
		/*
		 * Bounded: the deadline may move, and an injected clock is not the cv's. In a
		 * pool worker (a throttle filter below an asynchronous request) the wait service
		 * counts the worker as blocked, so queued work gets another one.
		 */
		tblk_pool_timedwait(&tg->cv, &tg->lock,
				    tblk_clock_ns() + (deadline ?
						       TBLK_MIN(deadline - tg->clock_ns(),
								10000000ull) : 10000000ull));
		if (!tg->deadline_ns && !w->released)
			wake = release_pass_locked(tg);
	}
	tblk_mutex_unlock(&tg->lock);
	if (wake)
		tblk_cond_broadcast(&tg->cv);
}

void tblk__thr_throttle_sync(struct tblk__thr_member *m, bool write, uint64_t bytes)
{
	struct tblk__thr_waiter w = { .write = write, .bytes = bytes };

	if (!tblk__thr_submit(m, &w))
		tblk__thr_wait(m, &w);
}

/*
 * Drain: lets every request of @m waiting for budget go now (charged) and, until the matching
 * end, any new one at once, so that a drain never waits out the limits (qemu disables a
 * member's limits in a drained section and restarts its queue). Nests.
 */
void tblk__thr_member_drain(struct tblk__thr_member *m, bool begin)
{
	struct tblk__thr_group *tg = m->tg;
	bool wake = false, bh = false;

	tblk_mutex_lock(&tg->lock);
	if (!begin) {
		assert(m->bypass > 0);
		m->bypass--;
		tblk_mutex_unlock(&tg->lock);
		return;
	}
	m->bypass++;
	for (int dir = 0; dir < 2; dir++) {
		while (!tblk_list_empty(&m->queue[dir])) {
			struct tblk__thr_waiter *w =
				tblk_list_entry(m->queue[dir].next, struct tblk__thr_waiter, link);

			tblk_list_del(&w->link);
			tblk__thr_account(&tg->cfg, dir, w->bytes);
			if (w->release) {
				tblk_list_add_tail(&m->released, &w->link);
				bh = true;
			} else {
				w->released = true;
				wake = true;
			}
		}
	}
	tblk_mutex_unlock(&tg->lock);
	if (bh)
		tblk_bh_schedule(m->bh);
	if (wake)
		tblk_cond_broadcast(&tg->cv);
}

/* ---------------------------------------------------------------- members */

/* Member's loop: arms the timer if asked, hands released waiters back. */
static void member_bh(void *opaque)
{
	struct tblk__thr_member *m = opaque;
	struct tblk__thr_group *tg = m->tg;
	struct tblk_list list, *pos, *tmp;
	uint64_t want;

	tblk_list_init(&list);
	tblk_mutex_lock(&tg->lock);
	want = m->timer_want_ns;
	m->timer_want_ns = 0;
	tblk_list_for_each_safe(pos, tmp, &m->released) {
		tblk_list_del(pos);
		tblk_list_add_tail(&list, pos);
	}
	tblk_mutex_unlock(&tg->lock);
	if (want && (!m->timer.pending || m->timer.expire_ns > want))
		tblk_timer_mod(&m->timer, want);
	tblk_list_for_each_safe(pos, tmp, &list) {
		struct tblk__thr_waiter *w = tblk_list_entry(pos, struct tblk__thr_waiter, link);

		tblk_list_del(pos);
		w->release(w);
	}
}

static void member_timer(void *opaque)
{
	tblk__thr_run_timer(opaque);
}

void tblk__thr_run_timer(struct tblk__thr_member *m)
{
	struct tblk__thr_group *tg = m->tg;
	bool wake;

	tblk_mutex_lock(&tg->lock);
	wake = release_pass_locked(tg);
	tblk_mutex_unlock(&tg->lock);
	if (wake)
		tblk_cond_broadcast(&tg->cv);
	/* Not inline: a timer re-armed from its own callback must wait for the next turn. */
	if (m->loop)
		tblk_bh_schedule(m->bh);
}

int tblk__thr_member_new(struct tblk__thr_member **pm, const char *name,
			const struct tblk__thr_cfg *cfg, struct tblk_loop *loop, GError **errp)
{
	struct tblk__thr_group *tg = group_get(name, cfg != NULL);
	struct tblk__thr_member *m;

	if (!tg)
		return tblk_error_set(errp, EINVAL, "Throttle group '%s' does not exist", name);
	if (cfg)
		group_set_cfg(tg, cfg);
	m = g_new0(struct tblk__thr_member, 1);
	m->tg = tg;
	m->loop = loop;
	tblk_list_init(&m->queue[0]);
	tblk_list_init(&m->queue[1]);
	tblk_list_init(&m->released);
	if (loop) {
		m->bh = tblk_bh_new(loop, member_bh, m);
		tblk_timer_init(&m->timer, loop, member_timer, m);
	}
	tblk_mutex_lock(&tg->lock);
	tblk_list_add_tail(&tg->members, &m->link);
	tblk_mutex_unlock(&tg->lock);
	*pm = m;
	return 0;
}

void tblk__thr_member_free(struct tblk__thr_member *m)
{
	struct tblk__thr_group *tg;

	if (!m)
		return;
	tg = m->tg;
	tblk_mutex_lock(&tg->lock);
	assert(tblk_list_empty(&m->queue[0]) && tblk_list_empty(&m->queue[1]));
	assert(tblk_list_empty(&m->released));
	for (int dir = 0; dir < 2; dir++) {
		if (tg->turn[dir] == m)
			tg->turn[dir] = next_member_locked(tg, m);
		if (tg->turn[dir] == m)	/* the last member */
			tg->turn[dir] = NULL;
	}
	tblk_list_del(&m->link);
	tblk_mutex_unlock(&tg->lock);
	if (m->loop) {
		tblk_timer_del(&m->timer);
		tblk_bh_free(m->bh);
	}
	g_free(m);
	group_unref(tg);
}

void tblk__thr_set_clock(struct tblk__thr_member *m, uint64_t (*clock_ns)(void))
{
	struct tblk__thr_group *tg = m->tg;

	tblk_mutex_lock(&tg->lock);
	tg->clock_ns = clock_ns;
	tg->prev_ns = clock_ns();
	tblk_mutex_unlock(&tg->lock);
}
