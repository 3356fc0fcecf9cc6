/* SPDX-License-Identifier: MIT */
/*
 * t/pool.c - the worker pool: a many-item stress from several submitting threads with
 * completions on the right loops, the wait service against starvation, idle exit down to
 * the minimum, freeing with queued work, the zero-thread test mode, loop wake-ups batched
 * while items are queued and the bound on their delay.
 *
 * Threading: items record what they saw in atomics; only the main thread asserts.
 */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "threadpool/pool-cap.h"
#include "threadpool/threadpool.h"
#include "t/tap.h"

#define TIMEOUT_NS	(20ull * 1000000000)	/* a hang fails the test instead */

#define STRESS_ITEMS	200000

static bool timed_out(uint64_t start)
{
	return tblk_clock_ns() - start > TIMEOUT_NS;
}

/* ---------------------------------------------------------------- stress */

#define STRESS_SUBMITTERS	4
#define STRESS_LOOPS		2

struct stress_item {
	struct tblk_work work;
	unsigned int ran;	/* [atomic] times fn ran */
	unsigned int done;	/* [atomic] times done ran */
};

struct stress {
	struct tblk_pool *pool;
	struct tblk_loop *loops[STRESS_LOOPS];
	struct stress_item *items;
	unsigned int nr_done;		/* [atomic] */
	unsigned int fn_not_worker;	/* [atomic] fn ran outside a worker, or on a loop */
	unsigned int done_wrong_loop;	/* [atomic] done ran elsewhere than work.loop */
	unsigned int done_before_fn;	/* [atomic] */
	unsigned int bad_ret;		/* [atomic] */
};

static struct stress stress;

static int stress_fn(void *opaque)
{
	struct stress_item *it = opaque;

	if (!tblk_pool_in_worker() || tblk_loop_current())
		__atomic_fetch_add(&stress.fn_not_worker, 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&it->ran, 1, __ATOMIC_RELAXED);
	return (int)(it - stress.items);
}

static void stress_done(void *opaque, int ret)
{
	struct stress_item *it = opaque;

	if (tblk_loop_current() != it->work.loop || tblk_pool_in_worker())
		__atomic_fetch_add(&stress.done_wrong_loop, 1, __ATOMIC_RELAXED);
	if (__atomic_load_n(&it->ran, __ATOMIC_RELAXED) != 1)
		__atomic_fetch_add(&stress.done_before_fn, 1, __ATOMIC_RELAXED);
	if (ret != (int)(it - stress.items))
		__atomic_fetch_add(&stress.bad_ret, 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&it->done, 1, __ATOMIC_RELAXED);
	__atomic_fetch_add(&stress.nr_done, 1, __ATOMIC_RELEASE);
}

static unsigned int stress_items;

static void *stress_submitter(void *opaque)
{
	unsigned int k = (unsigned int)(uintptr_t)opaque, i;

	for (i = k; i < stress_items; i += STRESS_SUBMITTERS) {
		struct stress_item *it = &stress.items[i];

		it->work.fn = stress_fn;
		it->work.done = stress_done;
		it->work.opaque = it;
		it->work.loop = stress.loops[i % STRESS_LOOPS];
		tblk_pool_submit(stress.pool, &it->work);
		/* Some bursts, some trickle: exercise both the spinner and the sleepers. */
		if (i % 4096 < STRESS_SUBMITTERS)
			usleep(200);
	}
	return NULL;
}

/* Sets the polling cap from the loop's own thread, as the API requires. */
static void no_poll_cb(void *opaque)
{
	tblk_loop_set_poll_max_ns(tblk_loop_current(), 0);
}

/*
 * @quiet: no worker spinning, no loop polling, so that every hand-off goes through the
 * sleep and wake-up paths instead.
 */
static void test_stress(unsigned int items, bool quiet)
{
	struct tblk_iothread *iot[STRESS_LOOPS];
	pthread_t th[STRESS_SUBMITTERS];
	struct tblk_pool_stats st;
	unsigned int i, once = 0;
	uint64_t start = tblk_clock_ns();

	memset(&stress, 0, sizeof(stress));
	stress_items = items;
	stress.pool = tblk_pool_new(0, 8, 1000, NULL);
	stress.items = g_new0(struct stress_item, items);
	for (i = 0; i < STRESS_LOOPS; i++) {
		iot[i] = tblk_iothread_new("t-pool", NULL);
		stress.loops[i] = tblk_iothread_get_loop(iot[i]);
		if (quiet)
			tblk_loop_call_soon(stress.loops[i], no_poll_cb, NULL);
	}
	/* Spinning is off by default; the busy run turns it on so the spinner is exercised. */
	tblk_pool_set_spin_ns(stress.pool, quiet ? 0 : 20000);
	tap_diag("stress: %u items, %s", items, quiet ? "no spinning or polling" :
		 "spinning workers, polling loops");
	for (i = 0; i < STRESS_SUBMITTERS; i++)
		pthread_create(&th[i], NULL, stress_submitter, (void *)(uintptr_t)i);
	for (i = 0; i < STRESS_SUBMITTERS; i++)
		pthread_join(th[i], NULL);
	while (__atomic_load_n(&stress.nr_done, __ATOMIC_ACQUIRE) < items && !timed_out(start))
		usleep(1000);
	is_int(__atomic_load_n(&stress.nr_done, __ATOMIC_ACQUIRE), items,
	       "%u items from %d threads all completed", items, STRESS_SUBMITTERS);
	for (i = 0; i < items; i++)
		once += stress.items[i].ran == 1 && stress.items[i].done == 1;
	is_int(once, items, "each ran and completed exactly once");
	is_int(stress.fn_not_worker, 0, "fn always ran on a worker, never on a loop");
	is_int(stress.done_wrong_loop, 0, "done always ran on the item's loop");
	is_int(stress.done_before_fn, 0, "done never ran before fn");
	is_int(stress.bad_ret, 0, "done got fn's result");
	tblk_pool_get_stats(stress.pool, &st);
	is_int(st.nr_completed, items, "stats count every completion");
	ok(st.nr_threads >= 1 && st.nr_threads <= 8, "between 1 and max threads (%u)",
	   st.nr_threads);
	tblk_pool_free(stress.pool);
	for (i = 0; i < STRESS_LOOPS; i++)
		tblk_iothread_free(iot[i]);
	g_free(stress.items);
	tap_diag("stress: %.2f s", (tblk_clock_ns() - start) / 1e9);
}

/* ---------------------------------------------------------------- starvation */

#define CHAIN_ITEMS	24
#define CHAIN_MAX	3

struct chain {
	struct tblk_mutex lock;
	struct tblk_cond cv;
	bool finished[CHAIN_ITEMS];	/* [lock] */
	unsigned int blocked_seen;	/* [lock] nr_blocked when the last item ran */
	unsigned int threads_seen;	/* [lock] */
	struct tblk_pool *pool;
	struct tblk_work work[CHAIN_ITEMS];
	unsigned int nr_done;		/* [loop thread] */
	bool all_done;			/* [loop thread] */
};

static struct chain chain;

/* Item i can only finish after item i+1 has: the last one unwinds the whole chain. */
static int chain_fn(void *opaque)
{
	unsigned int i = (unsigned int)(uintptr_t)opaque;
	struct tblk_pool_stats st;

	tblk_mutex_lock(&chain.lock);
	if (i == CHAIN_ITEMS - 1) {
		tblk_pool_get_stats(chain.pool, &st);
		chain.blocked_seen = st.nr_blocked;
		chain.threads_seen = st.nr_threads;
	}
	while (i + 1 < CHAIN_ITEMS && !chain.finished[i + 1])
		tblk_pool_wait(&chain.cv, &chain.lock);
	chain.finished[i] = true;
	tblk_mutex_unlock(&chain.lock);
	tblk_cond_broadcast(&chain.cv);
	return 0;
}

static void chain_done(void *opaque, int ret)
{
	if (++chain.nr_done == CHAIN_ITEMS)
		chain.all_done = true;
}

static void test_starvation(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	struct tblk_pool_stats st;
	uint64_t start = tblk_clock_ns();
	unsigned int i;

	tblk_mutex_init(&chain.lock);
	tblk_cond_init(&chain.cv);
	chain.pool = tblk_pool_new(0, CHAIN_MAX, 1000, NULL);
	for (i = 0; i < CHAIN_ITEMS; i++) {
		chain.work[i] = (struct tblk_work){ .fn = chain_fn, .done = chain_done,
						    .opaque = (void *)(uintptr_t)i, .loop = loop };
		tblk_pool_submit(chain.pool, &chain.work[i]);
	}
	while (!chain.all_done && !timed_out(start))
		tblk_loop_iterate(loop, true);
	ok(chain.all_done, "%d items each waiting on the next finish with max %d threads",
	   CHAIN_ITEMS, CHAIN_MAX);
	/* Items are taken in order; the last one ran after all others had been taken. */
	ok(chain.blocked_seen >= CHAIN_ITEMS - CHAIN_MAX,
	   "blocked workers did not count against the max (%u blocked, %u threads)",
	   chain.blocked_seen, chain.threads_seen);
	ok(chain.threads_seen > CHAIN_MAX, "the pool grew past max while workers were blocked");
	tblk_pool_get_stats(chain.pool, &st);
	is_int(st.nr_blocked, 0, "nobody blocked afterwards");
	tblk_pool_free(chain.pool);
	tblk_cond_destroy(&chain.cv);
	tblk_mutex_destroy(&chain.lock);
	tblk_loop_free(loop);
}

/* ---------------------------------------------------------------- idle exit, minimum */

#define GATE_ITEMS	6

struct gate {
	struct tblk_mutex lock;
	struct tblk_cond cv;
	unsigned int inside;	/* [lock] */
	bool gave_up;		/* [lock] */
};

static struct gate gate;

/* Holds its worker until GATE_ITEMS items are running at once: proves that many threads. */
static int gate_fn(void *opaque)
{
	uint64_t deadline = tblk_clock_ns() + TIMEOUT_NS;

	tblk_mutex_lock(&gate.lock);
	gate.inside++;
	tblk_cond_broadcast(&gate.cv);
	while (gate.inside < GATE_ITEMS && !gate.gave_up) {
		/* A plain wait: the worker must stay busy, not be replaced. */
		if (!tblk_cond_timedwait(&gate.cv, &gate.lock, deadline))
			gate.gave_up = true;
	}
	tblk_mutex_unlock(&gate.lock);
	return 0;
}

static void count_done(void *opaque, int ret)
{
	(*(unsigned int *)opaque)++;
}

static bool wait_threads(struct tblk_pool *pool, unsigned int want, struct tblk_pool_stats *st)
{
	uint64_t start = tblk_clock_ns();

	for (;;) {
		tblk_pool_get_stats(pool, st);
		if (st->nr_threads == want || timed_out(start))
			return st->nr_threads == want;
		usleep(2000);
	}
}

static void test_idle_exit(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	struct tblk_pool *pool = tblk_pool_new(2, 8, 30, NULL);
	struct tblk_work work[GATE_ITEMS];
	struct tblk_pool_stats st;
	unsigned int i, n = 0;
	uint64_t start = tblk_clock_ns();
	bool exited;

	tblk_mutex_init(&gate.lock);
	tblk_cond_init(&gate.cv);
	tblk_pool_get_stats(pool, &st);
	is_int(st.nr_threads, 0, "minimum threads start lazily");
	for (i = 0; i < GATE_ITEMS; i++) {
		work[i] = (struct tblk_work){ .fn = gate_fn, .done = count_done, .opaque = &n,
					      .loop = loop };
		tblk_pool_submit(pool, &work[i]);
	}
	while (n < GATE_ITEMS && !timed_out(start))
		tblk_loop_iterate(loop, true);
	is_int(n, GATE_ITEMS, "all gated items completed");
	ok(!gate.gave_up, "%d items ran at once: one thread each", GATE_ITEMS);
	exited = wait_threads(pool, 2, &st);
	ok(exited, "idle threads above the minimum exited (%u left)", st.nr_threads);
	is_int(st.nr_idle, 2, "the minimum stays, idle");
	usleep(100000);	/* more than three idle timeouts */
	tblk_pool_get_stats(pool, &st);
	is_int(st.nr_threads, 2, "and does not time out");
	tblk_pool_free(pool);
	tblk_cond_destroy(&gate.cv);
	tblk_mutex_destroy(&gate.lock);
	tblk_loop_free(loop);
}

/* ---------------------------------------------------------------- free with queued work */

#define QUEUED_ITEMS	200

static unsigned int queued_ran;		/* [atomic] */

static int slow_fn(void *opaque)
{
	__atomic_fetch_add(&queued_ran, 1, __ATOMIC_RELAXED);
	usleep(20);
	return 0;
}

static void atomic_count_done(void *opaque, int ret)
{
	__atomic_fetch_add((unsigned int *)opaque, 1, __ATOMIC_RELAXED);
}

static void test_free_queued(void)
{
	struct tblk_iothread *iot = tblk_iothread_new("t-pool-free", NULL);
	struct tblk_pool *pool = tblk_pool_new(0, 1, 1000, NULL);
	struct tblk_work *work = g_new0(struct tblk_work, QUEUED_ITEMS);
	struct tblk_loop *loop = tblk_iothread_get_loop(iot);
	unsigned int done = 0, i;

	for (i = 0; i < QUEUED_ITEMS; i++) {
		work[i] = (struct tblk_work){ .fn = slow_fn, .done = atomic_count_done,
					      .opaque = &done, .loop = loop };
		tblk_pool_submit(pool, &work[i]);
	}
	tblk_pool_free(pool);
	is_int(__atomic_load_n(&queued_ran, __ATOMIC_RELAXED), QUEUED_ITEMS,
	       "pool free ran every queued item");
	is_int(__atomic_load_n(&done, __ATOMIC_RELAXED), QUEUED_ITEMS,
	       "and returned only after their done callbacks (on an iothread)");
	tblk_iothread_free(iot);
	g_free(work);
}

/* ---------------------------------------------------------------- batched wake-ups */

#define BATCH_ITEMS	12
#define BATCH_WATCHDOG_NS	(5ull * 1000000000)

struct batch_item {
	struct tblk_work work;
	unsigned int index;
	unsigned int *done;	/* [loop thread] */
};

static unsigned int batch_gate;		/* [atomic] items with a lower index may finish */

static int batch_fn(void *opaque)
{
	struct batch_item *it = opaque;

	while (__atomic_load_n(&batch_gate, __ATOMIC_ACQUIRE) <= it->index)
		usleep(100);
	return 0;
}

static void batch_done(void *opaque, int ret)
{
	struct batch_item *it = opaque;

	(*it->done)++;
}

/* One worker and BATCH_ITEMS gated items completing on a new loop, whose bound is @lazy_max. */
static struct tblk_pool *batch_start(struct tblk_loop **loop, const char *lazy_max,
				     struct batch_item *items, unsigned int *done)
{
	struct tblk_pool *pool = tblk_pool_new(0, 1, 1000, NULL);
	unsigned int i;

	setenv("TBLK_LOOP_LAZY_MAX_NS", lazy_max, 1);
	*loop = tblk_loop_new(NULL);
	unsetenv("TBLK_LOOP_LAZY_MAX_NS");
	__atomic_store_n(&batch_gate, 0, __ATOMIC_RELEASE);
	for (i = 0; i < BATCH_ITEMS; i++) {
		items[i] = (struct batch_item){ .index = i, .done = done };
		items[i].work = (struct tblk_work){ .fn = batch_fn, .done = batch_done,
						    .opaque = &items[i], .loop = *loop };
		tblk_pool_submit(pool, &items[i].work);
	}
	return pool;
}

/* Iterates @loop until *done reaches @want; returns the iterations that ran completions. */
static unsigned int batch_wait(struct tblk_loop *loop, unsigned int *done, unsigned int want)
{
	uint64_t start = tblk_clock_ns();
	unsigned int wakes = 0;

	while (*done < want && !timed_out(start)) {
		unsigned int before = *done;

		tblk_loop_iterate(loop, true);
		wakes += *done > before;
	}
	return wakes;
}

/*
 * While four or more of a loop's items are still queued, a completion leaves the sleeping
 * loop asleep, so it wakes for a batch instead of once per item, and the last items, with
 * fewer queued behind them, still wake it (none stranded). The items are let through one
 * by one, 1 ms apart, with no time bound on the deferral: about 5 wake-ups rather than 12.
 */
static void *batch_release(void *opaque)
{
	unsigned int i;

	for (i = 1; i <= BATCH_ITEMS; i++) {
		usleep(1000);
		__atomic_store_n(&batch_gate, i, __ATOMIC_RELEASE);
	}
	return NULL;
}

static void batch_watchdog(void *opaque)
{
	*(bool *)opaque = true;
}

static void test_batched_wakeups(void)
{
	struct batch_item items[BATCH_ITEMS];
	struct tblk_loop *loop;
	unsigned int done = 0, wakes;
	struct tblk_pool *pool = batch_start(&loop, "60000000000", items, &done);
	struct tblk_timer watchdog;
	bool fired = false;
	pthread_t th;

	/* The batch is woken by the start of an item, not by the bound (60 s) nor this timer. */
	tblk_timer_init(&watchdog, loop, batch_watchdog, &fired);
	tblk_timer_mod(&watchdog, tblk_clock_ns() + BATCH_WATCHDOG_NS);
	pthread_create(&th, NULL, batch_release, NULL);
	wakes = batch_wait(loop, &done, BATCH_ITEMS);
	pthread_join(th, NULL);
	tblk_timer_del(&watchdog);
	ok(done == BATCH_ITEMS && !fired,
	   "every completion reached the sleeping loop, woken by the queue (%u done, watchdog %s)",
	   done, fired ? "fired" : "idle");
	ok(wakes <= 7, "in batches: %u loop wake-ups ran completions for %d items", wakes,
	   BATCH_ITEMS);
	tblk_pool_free(pool);
	tblk_loop_free(loop);
}

static int nop_fn(void *opaque)
{
	return 0;
}

/*
 * The bound (10 ms here): item 0 finishes while item 1 runs on, gated, with ten queued
 * behind it. Its completion must reach the sleeping loop while item 1 still runs, not when
 * item 1 ends (a 5 s watchdog would say it did not).
 */
static void *open_gate_1(void *opaque)
{
	usleep(1000);
	__atomic_store_n(&batch_gate, 1, __ATOMIC_RELEASE);
	return NULL;
}

static void test_lazy_bound(void)
{
	struct batch_item items[BATCH_ITEMS];
	struct tblk_loop *loop;
	unsigned int done = 0;
	struct tblk_pool *pool = batch_start(&loop, "10000000", items, &done);
	struct tblk_timer watchdog;
	bool fired = false;
	pthread_t th;

	tblk_timer_init(&watchdog, loop, batch_watchdog, &fired);
	tblk_timer_mod(&watchdog, tblk_clock_ns() + BATCH_WATCHDOG_NS);
	pthread_create(&th, NULL, open_gate_1, NULL);
	while (!done && !fired)
		tblk_loop_iterate(loop, true);
	pthread_join(th, NULL);
	ok(done == 1 && !fired, "a deferred completion reaches the sleeping loop while the next "
	   "item still runs (%u done, watchdog %s)", done, fired ? "fired" : "idle");
	tblk_timer_del(&watchdog);
	__atomic_store_n(&batch_gate, BATCH_ITEMS, __ATOMIC_RELEASE);
	batch_wait(loop, &done, BATCH_ITEMS);
	is_int(done, BATCH_ITEMS, "and the rest");
	tblk_pool_free(pool);
	tblk_loop_free(loop);
}

/*
 * Items queued on a loop's behalf that no worker will start soon (here: in a pool without
 * threads) must not hold back another pool's completion on the same loop.
 */
static void test_lazy_other_pool(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	struct tblk_pool *idle = tblk_pool_new(0, 0, 0, NULL);
	struct tblk_pool *pool = tblk_pool_new(0, 1, 1000, NULL);
	struct tblk_work stuck[4], work;
	unsigned int done = 0, stuck_done = 0, i;
	struct tblk_timer watchdog;
	bool fired = false;

	for (i = 0; i < 4; i++) {
		stuck[i] = (struct tblk_work){ .fn = nop_fn, .done = count_done,
					       .opaque = &stuck_done, .loop = loop };
		tblk_pool_submit(idle, &stuck[i]);
	}
	work = (struct tblk_work){ .fn = nop_fn, .done = count_done, .opaque = &done,
				   .loop = loop };
	tblk_timer_init(&watchdog, loop, batch_watchdog, &fired);
	tblk_timer_mod(&watchdog, tblk_clock_ns() + BATCH_WATCHDOG_NS);
	tblk_pool_submit(pool, &work);
	while (!done && !fired)
		tblk_loop_iterate(loop, true);
	ok(done == 1 && !fired, "four items stuck in another pool hold nothing back (watchdog %s)",
	   fired ? "fired" : "idle");
	tblk_timer_del(&watchdog);
	tblk_pool_run_queued(idle);
	while (stuck_done < 4)
		tblk_loop_iterate(loop, true);
	tblk_pool_free(idle);
	tblk_pool_free(pool);
	tblk_loop_free(loop);
}

/* Freeing from a loop callback, with completions due on that very loop. */
struct free_on_loop {
	struct tblk_pool *pool;
	unsigned int done;
	bool freed;
};

static void free_pool_cb(void *opaque)
{
	struct free_on_loop *f = opaque;

	tblk_pool_free(f->pool);
	f->freed = true;
}

static void test_free_on_loop(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	struct free_on_loop f = { .pool = tblk_pool_new(0, 2, 1000, NULL) };
	struct tblk_work work[QUEUED_ITEMS];
	uint64_t start = tblk_clock_ns();
	unsigned int i;

	for (i = 0; i < QUEUED_ITEMS; i++) {
		work[i] = (struct tblk_work){ .fn = slow_fn, .done = count_done, .opaque = &f.done,
					      .loop = loop };
		tblk_pool_submit(f.pool, &work[i]);
	}
	tblk_loop_call_soon(loop, free_pool_cb, &f);
	while (!f.freed && !timed_out(start))
		tblk_loop_iterate(loop, true);
	ok(f.freed, "pool free from a callback of the loop its items complete on returns");
	is_int(f.done, QUEUED_ITEMS, "after running their completions on that loop");
	tblk_loop_free(loop);
}

/* ---------------------------------------------------------------- test mode, misc */

static int order_log[8], order_n;

static int order_fn(void *opaque)
{
	return (int)(intptr_t)opaque * 10;
}

static void order_done(void *opaque, int ret)
{
	order_log[order_n++] = ret;
}

static int no_done_fn(void *opaque)
{
	__atomic_store_n((bool *)opaque, true, __ATOMIC_RELEASE);
	return 0;
}

static void test_zero_threads(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	struct tblk_pool *pool = tblk_pool_new(0, 0, 0, NULL);
	struct tblk_work work[4];
	struct tblk_pool_stats st;
	bool ran = false;
	int i;

	for (i = 0; i < 3; i++) {
		work[i] = (struct tblk_work){ .fn = order_fn, .done = order_done,
					      .opaque = (void *)(intptr_t)(i + 1), .loop = loop };
		tblk_pool_submit(pool, &work[i]);
	}
	tblk_loop_iterate(loop, false);
	tblk_pool_get_stats(pool, &st);
	ok(order_n == 0 && st.nr_threads == 0, "max 0: no thread, nothing runs by itself");
	is_int(tblk_pool_run_queued(pool), 3, "run_queued runs the three items");
	is_int(order_n, 0, "done waits for the loop");
	tblk_loop_iterate(loop, false);
	ok(order_n == 3 && order_log[0] == 10 && order_log[1] == 20 && order_log[2] == 30,
	   "then runs in submission order with fn's results");
	work[3] = (struct tblk_work){ .fn = no_done_fn, .opaque = &ran };
	tblk_pool_submit(pool, &work[3]);
	tblk_pool_free(pool);	/* runs it: no worker would */
	ok(ran, "an item without done runs; free waited for it");
	ok(!tblk_pool_in_worker(), "the main thread is not a worker");
	ok(tblk_pool_new(3, 2, 0, NULL) == NULL, "min above max is refused");
	tblk_loop_free(loop);
}

static void test_default_pool(void)
{
	struct tblk_pool *pool = tblk_pool_default();
	struct tblk_loop *loop = tblk_loop_new(NULL);
	unsigned int n = 0;
	struct tblk_work w = { .fn = slow_fn, .done = count_done, .opaque = &n, .loop = loop };
	uint64_t start = tblk_clock_ns();

	ok(pool && pool == tblk_pool_default(), "one default pool");
	tblk_pool_submit(pool, &w);
	while (!n && !timed_out(start))
		tblk_loop_iterate(loop, true);
	is_int(n, 1, "it runs work");
	tblk_loop_free(loop);
}

/* ---------------------------------------------------------------- adaptive cap */

/* One window of the controller: the demand seen, then the window's rate. */
static unsigned int cap_window(struct tblk_pool_cap *c, unsigned int demand, uint64_t rate)
{
	tblk__cap_demand(c, demand);
	tblk__cap_decide(c, rate);
	c->win_peak = 0;
	return c->cap;
}

/*
 * A synthetic device whose throughput grows with the workers up to a knee, then stays flat:
 * the cap must settle near the knee from above and from below, and follow it when it moves.
 */
static uint64_t knee_rate(unsigned int cap, unsigned int knee)
{
	return 1000ull * (cap < knee ? cap : knee);
}

/* A deterministic number in [0, 1) for the noise below. */
static double cap_random(uint64_t *seed)
{
	return (double)(tap_rand(seed) >> 11) / (double)(1ull << 53);
}

/*
 * Reads per second against running workers as measured for 4k random reads at depth 32 on a
 * virtual disk (docs/BENCHMARKS.md): a gentle slope up to 20-24 workers, then down, since
 * workers beyond the depth sleep and wake for every item.
 */
static double disk_rate(unsigned int w)
{
	static const double x[] = { 4, 8, 12, 16, 20, 24, 28, 32, 64 };
	static const double y[] = { 25e3, 49e3, 60e3, 65e3, 69e3, 69e3, 61e3, 57e3, 50e3 };
	unsigned int i;

	for (i = 1; i < TBLK_ARRAY_SIZE(x); i++)
		if (w <= x[i])
			return y[i - 1] + (y[i] - y[i - 1]) * (w - x[i - 1]) / (x[i] - x[i - 1]);
	return y[TBLK_ARRAY_SIZE(y) - 1];
}

static void test_cap(void)
{
	struct tblk_pool_cap c;
	unsigned int i, lo = 64, hi = 0, near = 0;
	uint64_t seed = 1;
	double drift = 1, got = 0;

	tblk__cap_init(&c, 4, 64, true);
	is_int(c.cap, 64, "the cap starts at the maximum");
	is_int(cap_window(&c, 32, 32000), 32, "a window whose demand stayed below it: lowered to the demand");
	for (i = 0; i < 40; i++)
		cap_window(&c, 32, knee_rate(c.cap, 12));
	for (i = 0; i < 40; i++) {
		cap_window(&c, 32, knee_rate(c.cap, 12));
		lo = c.cap < lo ? c.cap : lo;
		hi = c.cap > hi ? c.cap : hi;
		near += c.cap == 12;
	}
	ok(lo >= 10 && hi <= 14 && near >= 30,
	   "a flat device beyond 12 workers: the cap stays at the knee, trying its neighbours now and then (%u..%u, %u/40 at 12)",
	   lo, hi, near);
	for (i = 0, near = 0; i < 200; i++) {
		cap_window(&c, 64, knee_rate(c.cap, 40));
		near += i >= 160 && c.cap == 40;
	}
	ok(near >= 30, "the knee moves to 40: the cap follows it up (%u/40 windows at 40)", near);
	for (i = 0; i < 200; i++)
		cap_window(&c, 64, 50000);
	is_int(c.cap, 4, "a rate that does not depend on the workers: down to the minimum");
	/*
	 * That disk, each window 10% off at random and the whole disk drifting by 15% (a shared
	 * machine): the cap must keep near the best rate. A search against one decaying
	 * reference rate walked down the slope to 11-12 workers here (83-90% of it).
	 */
	tblk__cap_init(&c, 4, 64, true);
	for (i = 0; i < 3000; i++) {
		drift = 0.95 * drift + 0.05 * (0.85 + 0.3 * cap_random(&seed));
		cap_window(&c, 32, (uint64_t)(disk_rate(c.cap) * drift * (0.9 + 0.2 * cap_random(&seed))));
		if (i >= 100)
			got += disk_rate(c.cap);
	}
	got /= 2900;
	ok(got >= 0.95 * disk_rate(20),
	   "a noisy disk with a gentle slope: the cap keeps near its best rate (%.0f of %.0f reads/s)",
	   got, disk_rate(20));
	/* Windows that would move an adaptive cap (demand 0, far below it): this one stays. */
	tblk__cap_init(&c, 4, 64, false);
	for (i = 0; i < 3 * 2048 + 2; i++) {
		tblk__cap_completed(&c);
		if (i % 2048 == 0)
			usleep(25000);
	}
	is_int(c.cap, 64, "not adaptive: the cap stays at the maximum");
	tblk__cap_init(&c, 4, 64, true);
	for (i = 0; i < 3 * 2048 + 2; i++) {
		tblk__cap_completed(&c);
		if (i % 2048 == 0)
			usleep(25000);
	}
	is_int(c.cap, 4, "the same windows move an adaptive one (no demand: the minimum)");
}

int main(void)
{
	tap_plan(52);
	test_cap();
	test_zero_threads();
	test_stress(STRESS_ITEMS, false);
	test_stress(STRESS_ITEMS / 4, true);
	test_starvation();
	test_idle_exit();
	test_free_queued();
	test_batched_wakeups();
	test_lazy_bound();
	test_lazy_other_pool();
	test_free_on_loop();
	test_default_pool();
	return tap_done();
}
