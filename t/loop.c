/* SPDX-License-Identifier: MIT */
/*
 * t/loop.c - the event loop: fd handlers, bottom halves from other threads, timers,
 * notifiers, prepare hooks, adaptive polling, iothreads, call_soon, data slots.
 *
 * Threading: the main thread runs its loops; helper threads only schedule bottom halves and
 * set notifiers, and report through atomics checked on the main thread.
 */
#include <pthread.h>
#include <unistd.h>

#include "threadpool/threadpool.h"
#include "t/tap.h"

#define WATCHDOG_NS	(10ull * 1000000000)	/* a hang fails the test instead */

static bool watchdog_fired;

static void watchdog_cb(void *opaque)
{
	watchdog_fired = true;
}

/* Iterates @loop until *@flag is set; false if the watchdog fired first. */
static bool iterate_until(struct tblk_loop *loop, const bool *flag)
{
	struct tblk_timer dog;

	watchdog_fired = false;
	tblk_timer_init(&dog, loop, watchdog_cb, NULL);
	tblk_timer_mod(&dog, tblk_clock_ns() + WATCHDOG_NS);
	while (!__atomic_load_n(flag, __ATOMIC_ACQUIRE) && !watchdog_fired)
		tblk_loop_iterate(loop, true);
	tblk_timer_del(&dog);
	return __atomic_load_n(flag, __ATOMIC_ACQUIRE);
}

/* ---------------------------------------------------------------- fd handlers */

struct fd_ctx {
	struct tblk_loop *loop;
	int rfd, wfd;
	int nr_read, nr_write;
	char last;
	struct fd_ctx *other;	/* handler to remove from inside this one */
};

static void on_read(void *opaque)
{
	struct fd_ctx *c = opaque;

	if (read(c->rfd, &c->last, 1) == 1)
		c->nr_read++;
	if (c->other) {
		tblk_loop_set_fd_handler(c->loop, c->other->rfd, NULL, NULL, NULL, NULL);
		c->other = NULL;
	}
}

static void on_write(void *opaque)
{
	struct fd_ctx *c = opaque;

	c->nr_write++;
	/* Level-triggered and always writable: stop watching from inside the callback. */
	tblk_loop_set_fd_handler(c->loop, c->wfd, NULL, NULL, NULL, NULL);
}

static void fd_ctx_init(struct fd_ctx *c, struct tblk_loop *loop)
{
	int p[2];

	memset(c, 0, sizeof(*c));
	if (pipe(p) < 0)
		tap_bail("pipe");
	c->loop = loop;
	c->rfd = p[0];
	c->wfd = p[1];
}

static void test_fd_handlers(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	struct fd_ctx a, b;
	int i;

	fd_ctx_init(&a, loop);
	fd_ctx_init(&b, loop);
	is_int(tblk_loop_set_fd_handler(loop, a.rfd, on_read, NULL, NULL, &a), 0,
	       "set a read handler");
	ok(!tblk_loop_iterate(loop, false), "nothing ready: iterate reports no progress");
	is_int(write(a.wfd, "x", 1), 1, "write to the pipe");
	ok(tblk_loop_iterate(loop, true), "a ready fd makes progress");
	is_int(a.nr_read, 1, "read handler ran once");
	is_int(a.last, 'x', "and read the byte");
	is_int(tblk_loop_set_fd_handler(loop, a.rfd, NULL, NULL, NULL, NULL), 0, "remove it");
	is_int(write(a.wfd, "y", 1), 1, "write again");
	for (i = 0; i < 3; i++)
		tblk_loop_iterate(loop, false);
	is_int(a.nr_read, 1, "removed handler not called");

	is_int(tblk_loop_set_fd_handler(loop, a.wfd, NULL, on_write, NULL, &a), 0,
	       "set a write handler");
	tblk_loop_iterate(loop, true);
	tblk_loop_iterate(loop, false);
	is_int(a.nr_write, 1, "write handler ran, removed itself");

	/* Both ready in one epoll batch; the first removes the second before it runs. */
	is_int(tblk_loop_set_fd_handler(loop, a.rfd, on_read, NULL, NULL, &a), 0, "re-add a");
	is_int(tblk_loop_set_fd_handler(loop, b.rfd, on_read, NULL, NULL, &b), 0, "add b");
	a.other = &b;
	b.other = &a;
	is_int(write(a.wfd, "1", 1) + write(b.wfd, "2", 1), 2, "make both readable");
	tblk_loop_iterate(loop, true);
	is_int(a.nr_read + b.nr_read, 2, "only one of two handlers ran: the other was removed");
	tblk_loop_set_fd_handler(loop, a.rfd, NULL, NULL, NULL, NULL);
	tblk_loop_set_fd_handler(loop, b.rfd, NULL, NULL, NULL, NULL);
	is_int(tblk_loop_set_fd_handler(loop, -1, on_read, NULL, NULL, &a), -EBADF,
	       "a bad fd is refused with -EBADF");
	tblk_loop_free(loop);
	close(a.rfd);
	close(a.wfd);
	close(b.rfd);
	close(b.wfd);
}

/* ---------------------------------------------------------------- bottom halves */

#define BH_THREADS	4
#define BH_ROUNDS	2000

struct bh_ctx {
	struct tblk_bh *bh;
	unsigned int runs;	/* [loop thread] */
	unsigned int wanted;	/* [atomic] rounds scheduled by the helper */
	bool done;		/* [atomic] */
	bool wrong_thread;
	struct tblk_loop *loop;
};

static void bh_cb(void *opaque)
{
	struct bh_ctx *c = opaque;

	c->runs++;
	if (!tblk_loop_in_thread(c->loop))
		c->wrong_thread = true;
}

static void *bh_helper(void *opaque)
{
	struct bh_ctx *c = opaque;
	int i;

	for (i = 0; i < BH_ROUNDS; i++) {
		tblk_bh_schedule(c->bh);
		if (i % 64 == 0)
			usleep(50);
	}
	__atomic_store_n(&c->done, true, __ATOMIC_RELEASE);
	/* Wake the loop once more so it sees done. */
	tblk_bh_schedule(c->bh);
	return NULL;
}

static void test_bh_threads(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	struct bh_ctx c[BH_THREADS];
	pthread_t th[BH_THREADS];
	bool all_done = false, wrong = false, runs_ok = true;
	uint64_t deadline = tblk_clock_ns() + WATCHDOG_NS;
	int i;

	memset(c, 0, sizeof(c));
	for (i = 0; i < BH_THREADS; i++) {
		c[i].loop = loop;
		c[i].bh = tblk_bh_new(loop, bh_cb, &c[i]);
		pthread_create(&th[i], NULL, bh_helper, &c[i]);
	}
	while (!all_done && tblk_clock_ns() < deadline) {
		tblk_loop_iterate(loop, true);
		all_done = true;
		for (i = 0; i < BH_THREADS; i++)
			all_done &= __atomic_load_n(&c[i].done, __ATOMIC_ACQUIRE);
	}
	for (i = 0; i < BH_THREADS; i++)
		pthread_join(th[i], NULL);
	/* The last schedule of each helper comes after done: run it. */
	while (tblk_loop_iterate(loop, false))
		;
	for (i = 0; i < BH_THREADS; i++) {
		wrong |= c[i].wrong_thread;
		runs_ok &= c[i].runs >= 1 && c[i].runs <= BH_ROUNDS + 1;
		tblk_bh_free(c[i].bh);
	}
	ok(all_done, "bottom halves scheduled from %d threads woke the sleeping loop", BH_THREADS);
	ok(!wrong, "bottom halves ran on the loop thread");
	ok(runs_ok, "each ran at least once, at most once per schedule");
	ok(!tblk_loop_iterate(loop, false), "nothing left to run");
	tblk_loop_free(loop);
}

static void count_cb(void *opaque)
{
	(*(int *)opaque)++;
}

static void test_bh_cancel_free(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	int n = 0, m = 0;
	struct tblk_bh *bh = tblk_bh_new(loop, count_cb, &n);
	struct tblk_bh *bh2 = tblk_bh_new(loop, count_cb, &m);

	tblk_bh_schedule(bh);
	tblk_bh_schedule(bh);
	tblk_loop_iterate(loop, false);
	is_int(n, 1, "scheduling twice runs once");
	tblk_bh_schedule(bh);
	tblk_bh_cancel(bh);
	tblk_loop_iterate(loop, false);
	is_int(n, 1, "a cancelled bottom half does not run");
	tblk_bh_schedule(bh);
	tblk_bh_cancel(bh);
	tblk_bh_schedule(bh);
	tblk_loop_iterate(loop, false);
	is_int(n, 2, "rescheduling after cancel runs it");
	tblk_bh_schedule(bh2);
	tblk_bh_free(bh2);
	tblk_loop_iterate(loop, false);
	is_int(m, 0, "freeing a scheduled bottom half unschedules it (and ASan sees no leak)");
	tblk_bh_schedule(bh);
	tblk_loop_free(loop);	/* drops it */
	is_int(n, 2, "loop free drops pending bottom halves");
	tblk_bh_free(bh);
}

/* ---------------------------------------------------------------- call_soon */

struct soon_ctx {
	struct tblk_loop *loop;
	unsigned int count;	/* [loop thread] */
	bool wrong_thread;	/* [loop thread] */
	bool all;		/* [loop thread] */
};

#define SOON_THREADS	3
#define SOON_EACH	300

static void soon_cb(void *opaque)
{
	struct soon_ctx *c = opaque;

	if (tblk_loop_current() != c->loop)
		c->wrong_thread = true;
	if (++c->count == SOON_THREADS * SOON_EACH)
		c->all = true;
}

static void *soon_helper(void *opaque)
{
	struct soon_ctx *c = opaque;
	int i;

	for (i = 0; i < SOON_EACH; i++)
		tblk_loop_call_soon(c->loop, soon_cb, c);
	return NULL;
}

static void test_call_soon(void)
{
	struct soon_ctx c = { .loop = tblk_loop_new(NULL) };
	pthread_t th[SOON_THREADS];
	int i;

	for (i = 0; i < SOON_THREADS; i++)
		pthread_create(&th[i], NULL, soon_helper, &c);
	ok(iterate_until(c.loop, &c.all), "call_soon from %d threads: all ran", SOON_THREADS);
	for (i = 0; i < SOON_THREADS; i++)
		pthread_join(th[i], NULL);
	is_int(c.count, SOON_THREADS * SOON_EACH, "each exactly once");
	ok(!c.wrong_thread, "on the loop thread");
	tblk_loop_call_soon(c.loop, soon_cb, &c);	/* never run: freed by loop free */
	tblk_loop_free(c.loop);
}

static int fifo_log[4], fifo_n;

static void fifo_cb(void *opaque)
{
	fifo_log[fifo_n++] = (int)(intptr_t)opaque;
}

static void test_bh_order(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	int i;

	for (i = 0; i < 4; i++)
		tblk_loop_call_soon(loop, fifo_cb, (void *)(intptr_t)i);
	tblk_loop_iterate(loop, false);
	is_int(fifo_n, 4, "four call_soon ran in one iteration");
	ok(fifo_log[0] == 0 && fifo_log[1] == 1 && fifo_log[2] == 2 && fifo_log[3] == 3,
	   "in the order they were scheduled");
	tblk_loop_free(loop);
}

/* ---------------------------------------------------------------- timers */

struct timer_log {
	int order[8];
	int n;
};

struct timer_ctx {
	struct tblk_timer t;
	struct timer_log *log;
	int id;
};

static void timer_cb(void *opaque)
{
	struct timer_ctx *c = opaque;

	c->log->order[c->log->n++] = c->id;
}

static void test_timers(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	struct timer_log log = { { 0 }, 0 };
	struct timer_ctx t[5];
	uint64_t now = tblk_clock_ns(), ms = 1000000;
	uint64_t when[5] = { 3 * ms, 1 * ms, 2 * ms, 2 * ms, 4 * ms };
	bool late = false;
	int i;

	for (i = 0; i < 5; i++) {
		t[i].log = &log;
		t[i].id = i;
		tblk_timer_init(&t[i].t, loop, timer_cb, &t[i]);
		tblk_timer_mod(&t[i].t, now + when[i]);
	}
	tblk_timer_del(&t[4].t);
	tblk_timer_mod(&t[0].t, now + 5 * ms);	/* re-arm moves it last */
	ok(t[0].t.pending && !t[4].t.pending, "pending flags follow mod and del");
	while (log.n < 4 && !late) {
		tblk_loop_iterate(loop, true);
		late = tblk_clock_ns() > now + WATCHDOG_NS;
	}
	is_int(log.n, 4, "four timers fired, the deleted one did not");
	ok(log.order[0] == 1 && log.order[1] == 2 && log.order[2] == 3 && log.order[3] == 0,
	   "in expiry order, equal deadlines FIFO (got %d %d %d %d)", log.order[0],
	   log.order[1], log.order[2], log.order[3]);
	ok(tblk_clock_ns() >= now + 5 * ms, "not before their deadline");
	ok(!t[0].t.pending, "a fired timer is no longer pending");
	tblk_timer_mod(&t[4].t, now + 3600 * 1000 * ms);
	tblk_loop_free(loop);	/* unlinks it */
	ok(!t[4].t.pending, "loop free unlinks pending timers");
	tblk_timer_del(&t[4].t);
}

/* ---------------------------------------------------------------- notifiers */

struct notify_ctx {
	struct tblk_notifier n;
	int hits;
	bool seen;
};

static void notify_read(void *opaque)
{
	struct notify_ctx *c = opaque;

	if (tblk_notifier_test_and_clear(&c->n)) {
		c->hits++;
		c->seen = true;
	}
}

static void *notify_helper(void *opaque)
{
	struct notify_ctx *c = opaque;

	usleep(1000);
	tblk_notifier_set(&c->n);
	return NULL;
}

static void test_notifiers(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	struct notify_ctx c = { .hits = 0 };
	pthread_t th;

	is_int(tblk_notifier_init(&c.n), 0, "notifier init");
	ok(!tblk_notifier_test_and_clear(&c.n), "a new notifier is clear");
	tblk_notifier_set(&c.n);
	ok(tblk_notifier_test_and_clear(&c.n), "set, then test_and_clear is true");
	ok(!tblk_notifier_test_and_clear(&c.n), "and clears it");
	tblk_loop_set_fd_handler(loop, c.n.fd, notify_read, NULL, NULL, &c);
	pthread_create(&th, NULL, notify_helper, &c);
	ok(iterate_until(loop, &c.seen), "set from another thread wakes the loop");
	pthread_join(th, NULL);
	tblk_notifier_set(&c.n);
	tblk_notifier_set(&c.n);
	tblk_loop_iterate(loop, false);
	tblk_loop_iterate(loop, false);
	is_int(c.hits, 2, "two sets before the loop looks count as one event");
	tblk_loop_set_fd_handler(loop, c.n.fd, NULL, NULL, NULL, NULL);
	tblk_notifier_destroy(&c.n);
	is_int(c.n.fd, -1, "destroy closes it");
	tblk_loop_free(loop);
}

/* ---------------------------------------------------------------- prepare hooks */

static int hook_a;

static void hook_fn(void *opaque)
{
	(*(int *)opaque)++;
}

static struct tblk_loop_hook self_hook;
static struct tblk_loop *self_hook_loop;

static void self_removing_hook(void *opaque)
{
	(*(int *)opaque)++;
	tblk_loop_remove_prepare_hook(self_hook_loop, &self_hook);
}

static void test_prepare_hooks(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	struct tblk_loop_hook a = { .fn = hook_fn, .opaque = &hook_a };
	int self = 0, bh_runs = 0;
	struct tblk_bh *bh = tblk_bh_new(loop, count_cb, &bh_runs);
	int i;

	tblk_loop_add_prepare_hook(loop, &a);
	for (i = 0; i < 5; i++)
		tblk_loop_iterate(loop, false);
	is_int(hook_a, 5, "a prepare hook runs once per iteration");
	tblk_loop_prepare_now(loop);
	is_int(hook_a, 6, "tblk_loop_prepare_now() runs the hooks once more");
	hook_a = 5;
	self_hook.fn = self_removing_hook;
	self_hook.opaque = &self;
	self_hook_loop = loop;
	tblk_loop_add_prepare_hook(loop, &self_hook);
	tblk_bh_schedule(bh);
	tblk_loop_iterate(loop, true);
	tblk_loop_iterate(loop, false);
	is_int(self, 1, "a hook may remove itself while running");
	is_int(hook_a, 7, "the other hook keeps running");
	is_int(bh_runs, 1, "the bottom half scheduled meanwhile ran once");
	tblk_loop_remove_prepare_hook(loop, &a);
	tblk_loop_iterate(loop, false);
	is_int(hook_a, 7, "removed hook no longer runs");
	tblk_bh_free(bh);
	tblk_loop_free(loop);
}

/* ---------------------------------------------------------------- adaptive polling */

struct poll_ctx {
	struct tblk_notifier n;
	unsigned int polls;	/* [loop thread] poll function calls */
	unsigned int found;	/* [loop thread] events the poll function handled */
	unsigned int reads;	/* [loop thread] events the read handler handled */
	bool stop;		/* [atomic] helper should stop */
};

static bool poll_fn(void *opaque)
{
	struct poll_ctx *c = opaque;

	c->polls++;
	if (!tblk_notifier_test_and_clear(&c->n))
		return false;
	c->found++;
	return true;
}

static void poll_read(void *opaque)
{
	struct poll_ctx *c = opaque;

	if (tblk_notifier_test_and_clear(&c->n))
		c->reads++;
}

static void *poll_helper(void *opaque)
{
	struct poll_ctx *c = opaque;

	while (!__atomic_load_n(&c->stop, __ATOMIC_ACQUIRE)) {
		tblk_notifier_set(&c->n);
		usleep(500);
	}
	return NULL;
}

/* Runs the loop against a helper that sets the notifier every 0.5 ms. */
static void run_poll(struct tblk_loop *loop, struct poll_ctx *c, unsigned int events)
{
	uint64_t deadline = tblk_clock_ns() + WATCHDOG_NS;
	pthread_t th;

	__atomic_store_n(&c->stop, false, __ATOMIC_RELEASE);
	pthread_create(&th, NULL, poll_helper, c);
	while (c->found + c->reads < events && tblk_clock_ns() < deadline)
		tblk_loop_iterate(loop, true);
	__atomic_store_n(&c->stop, true, __ATOMIC_RELEASE);
	pthread_join(th, NULL);
}

static void test_polling(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	struct poll_ctx c = { .polls = 0 };

	tblk_notifier_init(&c.n);
	tblk_loop_set_fd_handler(loop, c.n.fd, poll_read, NULL, poll_fn, &c);
	tblk_loop_set_poll_max_ns(loop, 0);
	run_poll(loop, &c, 20);
	is_int(c.polls, 0, "poll_max_ns 0: poll functions are never called");
	ok(c.reads >= 20, "events still arrive through epoll");

	/*
	 * Events every 0.5 ms, a 50 ms cap, a sleep said to cost 50 ms: polling for them is
	 * cheaper, so the window grows until it catches them.
	 */
	c.reads = 0;
	tblk_loop_set_poll_max_ns(loop, 50000000);
	tblk_loop_set_poll_break_even_ns(loop, 50000000);
	run_poll(loop, &c, 200);
	ok(c.polls > 0, "the window grew: poll functions were called (%u times)", c.polls);
	ok(c.found > 0, "and handled events (%u, %u through epoll)", c.found, c.reads);

	/*
	 * The same events when a sleep costs 8 us: each one that polling caught came late and
	 * cost more than a sleep, so the window shrinks to nothing (a halving per event, about
	 * 16 from 50 ms), and from then on the loop sleeps: events come through epoll.
	 */
	tblk_loop_set_poll_break_even_ns(loop, 8000);
	c.found = c.reads = 0;
	run_poll(loop, &c, 40);
	c.found = c.reads = c.polls = 0;
	run_poll(loop, &c, 100);
	ok(c.reads >= 90 && c.found <= 10,
	   "late events shrink the window: %u events through epoll, %u by polling", c.reads,
	   c.found);

	tblk_loop_set_fd_handler(loop, c.n.fd, NULL, NULL, NULL, NULL);
	tblk_notifier_destroy(&c.n);
	tblk_loop_free(loop);
}

/* ---------------------------------------------------------------- iothreads */

struct iot_ctx {
	struct tblk_loop *loop;
	struct tblk_loop *seen;		/* [written before ran] tblk_loop_current() there */
	bool in_thread;
	bool ran;			/* [atomic] */
};

static void iot_cb(void *opaque)
{
	struct iot_ctx *c = opaque;

	c->seen = tblk_loop_current();
	c->in_thread = tblk_loop_in_thread(c->loop);
	__atomic_store_n(&c->ran, true, __ATOMIC_RELEASE);
}

static void test_iothread(void)
{
	struct tblk_iothread *iot = tblk_iothread_new("t-loop", NULL);
	struct iot_ctx c = { .loop = tblk_iothread_get_loop(iot) };
	uint64_t deadline = tblk_clock_ns() + WATCHDOG_NS;

	ok(iot && c.loop, "iothread started");
	ok(!tblk_loop_in_thread(c.loop) && tblk_loop_current() == NULL,
	   "main thread is not its loop thread");
	tblk_loop_call_soon(c.loop, iot_cb, &c);
	while (!__atomic_load_n(&c.ran, __ATOMIC_ACQUIRE) && tblk_clock_ns() < deadline)
		usleep(100);
	ok(__atomic_load_n(&c.ran, __ATOMIC_ACQUIRE), "call_soon ran on the iothread");
	ok(c.seen == c.loop && c.in_thread, "where tblk_loop_current() is its loop");
	ok(tblk_loop_is_running(c.loop), "an iothread's loop is running (seen from main)");
	tblk_iothread_free(iot);
	ok(1, "iothread stopped and joined");
	tblk_iothread_free(tblk_iothread_new(NULL, NULL));
	ok(1, "an iothread freed right after creation stops too");
	tblk_iothread_free(NULL);
}

static void where_cb(void *opaque)
{
	struct iot_ctx *c = opaque;

	c->in_thread = tblk_loop_in_thread(c->loop);
}

/*
 * tblk_loop_call_wait() right after tblk_iothread_new(), as tblk-daemon's --object iothread
 * does: the new thread may not have entered its loop yet, but it owns the loop all the same,
 * so the function must run there and not in the caller, concurrently with the loop thread.
 */
static void test_iothread_call_wait(void)
{
	unsigned int i, inline_runs = 0;

	for (i = 0; i < 20; i++) {
		struct tblk_iothread *iot = tblk_iothread_new("t-loop", NULL);
		struct iot_ctx c = { .loop = tblk_iothread_get_loop(iot) };

		tblk_loop_call_wait(c.loop, where_cb, &c);
		inline_runs += !c.in_thread;
		tblk_iothread_free(iot);
	}
	is_int(inline_runs, 0, "call_wait on a new iothread always runs on that iothread");
}

/*
 * A tool iterating its loop by hand leaves tblk_loop_iterate() after another thread's
 * tblk_loop_call_wait() queued its function there, and does not iterate again until that
 * thread is done: the waiter must notice the loop is idle and run the function itself.
 */
struct hand_ctx {
	struct tblk_loop *loop;
	int go;		/* [atomic] the waiter is about to call */
	int runs;	/* [atomic] times fn ran */
	int in_loop;	/* [atomic] times fn ran inside the loop's thread */
	int returned;	/* [atomic] tblk_loop_call_wait() returned */
};

static void hand_fn(void *opaque)
{
	struct hand_ctx *h = opaque;

	__atomic_fetch_add(&h->runs, 1, __ATOMIC_SEQ_CST);
	if (tblk_loop_in_thread(h->loop))
		__atomic_fetch_add(&h->in_loop, 1, __ATOMIC_SEQ_CST);
}

static void *hand_waiter(void *opaque)
{
	struct hand_ctx *h = opaque;

	__atomic_store_n(&h->go, 1, __ATOMIC_SEQ_CST);
	tblk_loop_call_wait(h->loop, hand_fn, h);
	__atomic_store_n(&h->returned, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

/* Holds the loop "running" until the waiter has (most likely) queued its call. */
static void hand_hold_cb(void *opaque)
{
	struct hand_ctx *h = opaque;

	while (!__atomic_load_n(&h->go, __ATOMIC_SEQ_CST))
		usleep(100);
	usleep(50000);
}

static void test_call_wait_idle_loop(void)
{
	struct hand_ctx h = { .loop = tblk_loop_new(NULL) };
	pthread_t t;
	int i;

	tblk_loop_call_soon(h.loop, hand_hold_cb, &h);
	pthread_create(&t, NULL, hand_waiter, &h);
	tblk_loop_iterate(h.loop, false);	/* runs hand_hold_cb, then leaves */
	/* Not iterating now: the waiter must finish on its own (a 10 s guard, not a timing). */
	for (i = 0; i < 10000 && !__atomic_load_n(&h.returned, __ATOMIC_SEQ_CST); i++)
		usleep(1000);
	ok(__atomic_load_n(&h.returned, __ATOMIC_SEQ_CST),
	   "call_wait returns when the loop stops being iterated after it queued");
	if (!__atomic_load_n(&h.returned, __ATOMIC_SEQ_CST))
		tblk_loop_iterate(h.loop, false);	/* unstick it rather than hang */
	pthread_join(t, NULL);
	tblk_loop_iterate(h.loop, false);	/* meets the taken-back bh: must not run it */
	is_int(h.runs, 1, "the function ran exactly once");
	is_int(h.in_loop, 0, "in the waiter, since nobody ran the loop");
	tblk_loop_free(h.loop);
}

struct run_stop {
	struct tblk_loop *loop;
	int nested_ran;	/* [atomic] nested_cb() is done */
};

/*
 * Stops the loop from another thread, once nested_cb() ran: stopping earlier (a slow start
 * under a sanitizer) would end run before its first iteration and skip nested_cb's checks.
 */
static void *stopper(void *opaque)
{
	struct run_stop *rs = opaque;

	while (!__atomic_load_n(&rs->nested_ran, __ATOMIC_ACQUIRE))
		usleep(100);
	usleep(2000);
	tblk_loop_stop(rs->loop);
	return NULL;
}

static void nested_cb(void *opaque)
{
	struct run_stop *rs = opaque;
	struct tblk_loop *loop = rs->loop;
	int n = 0;

	/* A callback running its own loop again, as drain does. */
	tblk_loop_call_soon(loop, count_cb, &n);
	tblk_loop_iterate(loop, false);
	ok(n == 1, "nested iteration inside a callback runs new work");
	ok(tblk_loop_is_running(loop), "the loop is running inside its callbacks");
	__atomic_store_n(&rs->nested_ran, 1, __ATOMIC_RELEASE);
}

static void test_run_stop(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	struct run_stop rs = { .loop = loop };
	pthread_t th;

	ok(!tblk_loop_is_running(loop), "a new loop is not running");
	tblk_loop_stop(loop);
	tblk_loop_run(loop);
	ok(1, "a stop before run makes run return");
	pthread_create(&th, NULL, stopper, &rs);
	tblk_loop_call_soon(loop, nested_cb, &rs);
	tblk_loop_run(loop);
	pthread_join(th, NULL);
	ok(tblk_loop_current() == NULL && !tblk_loop_is_running(loop),
	   "run stopped from another thread; current and running cleared");
	tblk_loop_free(loop);
}

/* ---------------------------------------------------------------- data slots */

static int destroyed[3];
static bool destroy_in_thread = true;
static struct tblk_loop *slot_loop;
static const int key_a, key_b;

static void slot_destroy(void *data)
{
	destroyed[*(int *)data]++;
	destroy_in_thread &= tblk_loop_in_thread(slot_loop);
}

static void test_data_slots(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	int d0 = 0, d1 = 1, d2 = 2;

	slot_loop = loop;
	ok(tblk_loop_get_data(loop, &key_a) == NULL, "empty slot reads NULL");
	tblk_loop_set_data(loop, &key_a, &d0, slot_destroy);
	tblk_loop_set_data(loop, &key_b, &d1, slot_destroy);
	ok(tblk_loop_get_data(loop, &key_a) == &d0 && tblk_loop_get_data(loop, &key_b) == &d1,
	   "slots keyed by address");
	tblk_loop_set_data(loop, &key_a, &d2, slot_destroy);
	ok(destroyed[0] == 1 && tblk_loop_get_data(loop, &key_a) == &d2,
	   "replacing destroys the old value");
	tblk_loop_set_data(loop, &key_b, NULL, NULL);
	ok(destroyed[1] == 1 && tblk_loop_get_data(loop, &key_b) == NULL,
	   "clearing destroys the value");
	tblk_loop_set_data(loop, &key_b, &d1, NULL);
	destroy_in_thread = true;	/* the calls above were not made as the loop thread */
	tblk_loop_free(loop);
	ok(destroyed[2] == 1 && destroyed[0] == 1 && destroyed[1] == 1,
	   "loop free destroys the remaining slots (a NULL destroy is skipped)");
	ok(destroy_in_thread, "destroy functions run as the loop thread");
}

int main(void)
{
	tap_plan(76);
	test_fd_handlers();
	test_bh_threads();
	test_bh_cancel_free();
	test_call_soon();
	test_bh_order();
	test_timers();
	test_notifiers();
	test_prepare_hooks();
	test_polling();
	test_iothread();
	test_iothread_call_wait();
	test_call_wait_idle_loop();
	test_run_stop();
	test_data_slots();
	return tap_done();
}
