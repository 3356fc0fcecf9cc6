/* SPDX-License-Identifier: MIT */
/*
 * pool.c - the generic worker pool and its wait service.
 *
 * Threading: tblk_pool_submit(), tblk_pool_wait() and the stats are callable from any
 * thread; workers run fn; done runs on the item's loop (loop.c delivers it). All pool state
 * is under pool->lock except the few [atomic] counters read on the fast paths.
 *
 * Wake-up strategy, the point of this file: a syscall per item is what makes a pool slow.
 * - A worker that finishes an item takes the next one under the same lock, without sleeping.
 * - When the queue is empty, one worker at a time spins briefly (spin_ns) watching an atomic
 *   queue length before it sleeps, so a submission that follows soon (the next request of
 *   a queue-depth-1 guest) finds it awake and costs no futex wake.
 * - Sleeping workers each wait on a futex word of their own, on a LIFO idle list. A
 *   submitter wakes one only if the queue holds more items than there are workers already
 *   on their way to it (nr_coming: spinning or starting), and hands it the oldest item
 *   directly: the woken worker runs it without taking the pool lock, and the wake-up is
 *   made after the lock is dropped, so a woken worker never sleeps again on the lock its
 *   waker still holds (what a condition variable signalled under the lock costs). A burst
 *   wakes as many workers as it has items, never more. LIFO keeps hot threads busy and
 *   lets the cold ones time out.
 * - Running workers (not idle, not blocked in the wait service) are limited by an adaptive
 *   cap (pool-cap.c) that looks for the fewest that keep the throughput: with fewer running
 *   workers than items in flight, a worker goes from one item to the next without sleeping.
 * - Completions go back through the loop's lock-free stack; see loop.c.
 * Items are embedded by the submitter (intrusive link): no allocation per item.
 */
#include <sched.h>
#include <signal.h>

#include "threadpool/pool-cap.h"
#include "threadpool/threadpool-int.h"

#define POOL_FREE_POLL_NS	10000000ull	/* tblk_pool_free() rechecks this often */

/* What an idle worker's futex word says. */
enum {
	WAKE_NONE,	/* asleep on the idle list */
	WAKE_WORK,	/* taken off the list with an item in handoff */
	WAKE_STOP,	/* taken off the list because the pool stops */
};

struct worker {
	struct tblk_pool *pool;	/* [const] */
	pthread_t thread;	/* [lock] valid once started */
	bool started;		/* [lock] pthread_create() returned: thread may be joined */
	bool detached;		/* [lock] exited detached: freed without a join */
	/*
	 * [atomic] WAKE_*: set to NONE by the worker as it joins the idle list; set to WORK or
	 * STOP, under lock, by whoever takes it off the list (release), then woken (futex).
	 */
	uint32_t state;
	/* [lock] written before state becomes WAKE_WORK; the worker reads it after (acquire). */
	struct tblk_work *handoff;
	/* [atomic] futex wakes promised on state but not made yet: w is not freed before 0. */
	unsigned int wakes_pending;
	struct tblk_list link;	/* [lock] on pool->idle while idle, pool->zombies once exited */
};

/*
 * Lock order: pool->lock is a leaf. tblk_pool_wait() takes it with the caller's mutex held,
 * so nothing may ever be locked under it; no callback runs with it held.
 */
struct tblk_pool {
	unsigned int min_threads;	/* [const] */
	unsigned int max_threads;	/* [const] 0: test mode, no worker at all */
	uint64_t idle_ns;		/* [const] */
	uint64_t spin_ns;		/* [atomic] */
	struct tblk_mutex lock;
	struct tblk_work *head;		/* [lock] queue, FIFO through work->next */
	struct tblk_work *tail;		/* [lock] */
	unsigned int nr_queued;		/* [lock] stored atomically: spinners peek without it */
	unsigned int nr_threads;	/* [lock] started and not exited, blocked ones included */
	unsigned int nr_blocked;	/* [lock] workers inside tblk_pool_wait() */
	unsigned int nr_idle;		/* [lock] workers on idle */
	unsigned int nr_coming;		/* [lock] will look at the queue without a wake-up */
	bool spinning;			/* [lock] a worker spins (one at most) */
	struct tblk_pool_cap cap;	/* [lock] limit on running workers */
	bool stopping;			/* [lock] tblk_pool_free() is making the workers exit */
	struct tblk_list idle;		/* [lock] struct worker, most recently idle first */
	struct tblk_list zombies;	/* [lock] exited workers waiting to be joined */
	struct tblk_cond free_cv;	/* signalled when in_flight or nr_threads drop to 0 */
	struct tblk_bh *free_bh;	/* [lock] wakes the loop tblk_pool_free() iterates */
	unsigned int in_flight;		/* [atomic] submitted, done not returned yet */
	/*
	 * [const] Set for the process-wide pool, which is never freed: its exiting workers
	 * detach, so no finished thread is left unjoined when the process ends.
	 */
	bool detach_exited;
	bool freeing;			/* [atomic] tblk_pool_free() waits for in_flight == 0 */
	uint64_t nr_completed;		/* [atomic] */
};

static __thread struct worker *cur_worker;

static void *worker_main(void *opaque);

/* ---------------------------------------------------------------- queue */

static void enqueue_locked(struct tblk_pool *pool, struct tblk_work *work)
{
	work->next = NULL;
	if (pool->tail)
		pool->tail->next = work;
	else
		pool->head = work;
	pool->tail = work;
	__atomic_store_n(&pool->nr_queued, pool->nr_queued + 1, __ATOMIC_RELAXED);
}

static struct tblk_work *dequeue_locked(struct tblk_pool *pool)
{
	struct tblk_work *work = pool->head;

	if (!work)
		return NULL;
	pool->head = work->next;
	if (!pool->head)
		pool->tail = NULL;
	__atomic_store_n(&pool->nr_queued, pool->nr_queued - 1, __ATOMIC_RELAXED);
	return work;
}

static void run_work(struct tblk_pool *pool, struct tblk_work *work)
{
	if (work->done)
		tblk__loop_item_started(work->loop);
	work->ret = work->fn(work->opaque);
	if (work->done)
		tblk__loop_push_completion(work->loop, work);
	else
		tblk__pool_work_done(pool);
}

void tblk__pool_work_done(struct tblk_pool *pool)
{
	__atomic_fetch_add(&pool->nr_completed, 1, __ATOMIC_RELAXED);
	if (!__atomic_load_n(&pool->freeing, __ATOMIC_SEQ_CST)) {
		/*
		 * Lock-free while nobody frees the pool. If tblk_pool_free() starts right
		 * now, it may miss this last decrement's wake-up (it cannot be told without
		 * touching a pool it may already have freed); it rechecks periodically.
		 */
		__atomic_fetch_sub(&pool->in_flight, 1, __ATOMIC_SEQ_CST);
		return;
	}
	/* Under the lock, so the pool cannot be freed before we are done with it. */
	tblk_mutex_lock(&pool->lock);
	if (__atomic_sub_fetch(&pool->in_flight, 1, __ATOMIC_SEQ_CST) == 0) {
		tblk_cond_broadcast(&pool->free_cv);
		if (pool->free_bh)
			tblk_bh_schedule(pool->free_bh);
	}
	tblk_mutex_unlock(&pool->lock);
}

/* ---------------------------------------------------------------- workers */

/* Takes the exited workers that can be joined (their creator has recorded the thread). */
static void take_zombies_locked(struct tblk_pool *pool, struct tblk_list *out)
{
	struct tblk_list *pos, *tmp;

	tblk_mutex_assert_held(&pool->lock);
	tblk_list_init(out);
	tblk_list_for_each_safe(pos, tmp, &pool->zombies) {
		struct worker *w = tblk_list_entry(pos, struct worker, link);

		if (w->started) {
			tblk_list_del(pos);
			tblk_list_add_tail(out, pos);
		}
	}
}

static void join_zombies(struct tblk_list *zombies)
{
	struct tblk_list *pos, *tmp;

	tblk_list_for_each_safe(pos, tmp, zombies) {
		struct worker *w = tblk_list_entry(pos, struct worker, link);

		if (!w->detached)
			pthread_join(w->thread, NULL);
		/* A waker that picked it may not have made its futex call yet. */
		while (__atomic_load_n(&w->wakes_pending, __ATOMIC_ACQUIRE))
			sched_yield();
		g_free(w);
	}
}

/*
 * Starts a worker for which the caller has already counted nr_threads and nr_coming. On
 * failure the pool goes on with fewer; if it has none at all, the caller runs the queue
 * itself so that nothing is stranded. Called without pool->lock.
 */
static void spawn_worker(struct tblk_pool *pool)
{
	struct worker *w = g_new0(struct worker, 1);
	struct tblk_list zombies;
	sigset_t all, old;
	pthread_t thread;
	bool stranded;
	int r;

	w->pool = pool;
	tblk_list_init(&w->link);
	/* Workers take no signals: they belong to the threads the application set up. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = pthread_create(&thread, NULL, worker_main, w);
	pthread_sigmask(SIG_SETMASK, &old, NULL);

	tblk_mutex_lock(&pool->lock);
	if (r == 0) {
		w->thread = thread;
		w->started = true;
	} else {
		pool->nr_threads--;
		pool->nr_coming--;
	}
	stranded = r != 0 && pool->nr_threads == 0 && pool->nr_queued > 0;
	take_zombies_locked(pool, &zombies);
	tblk_mutex_unlock(&pool->lock);
	join_zombies(&zombies);
	if (r != 0)
		g_free(w);
	if (stranded)
		tblk_pool_run_queued(pool);
}

/* Workers neither idle nor blocked in tblk_pool_wait(): busy, spinning or starting. */
static unsigned int nr_running_locked(struct tblk_pool *pool)
{
	return pool->nr_threads - pool->nr_blocked - pool->nr_idle;
}

/*
 * Queued work that no worker is on its way to, and fewer running workers than the cap
 * allows (else a running one takes it when it finishes): hand the oldest item to the most recently
 * idle worker (returned in *woken, for the caller to wake with wake_worker() once it has
 * dropped the lock), or, if the non-blocked workers are below the maximum, tell the caller
 * to start one (true).
 */
static bool want_worker_locked(struct tblk_pool *pool, struct worker **woken)
{
	struct worker *w;

	tblk_mutex_assert_held(&pool->lock);
	*woken = NULL;
	tblk__cap_demand(&pool->cap, nr_running_locked(pool) + pool->nr_queued);
	if (pool->nr_queued <= pool->nr_coming || nr_running_locked(pool) >= pool->cap.cap)
		return false;
	if (!tblk_list_empty(&pool->idle)) {
		w = tblk_list_entry(pool->idle.next, struct worker, link);
		tblk_list_del(&w->link);
		pool->nr_idle--;
		w->handoff = dequeue_locked(pool);
		__atomic_fetch_add(&w->wakes_pending, 1, __ATOMIC_RELAXED);
		__atomic_store_n(&w->state, WAKE_WORK, __ATOMIC_RELEASE);
		*woken = w;
		return false;
	}
	if (pool->nr_threads - pool->nr_blocked >= pool->max_threads)
		return false;
	pool->nr_threads++;
	pool->nr_coming++;
	return true;
}

/* Wakes a worker want_worker_locked() picked. Called without the lock. */
static void wake_worker(struct worker *w)
{
	if (!w)
		return;
	tblk__futex_wake(&w->state, 1);
	/* Last touch of w: it may be freed as soon as this reaches 0. */
	__atomic_fetch_sub(&w->wakes_pending, 1, __ATOMIC_RELEASE);
}

/* Spins a little for new work; true if some is queued now. Drops the lock meanwhile. */
static bool spin_locked(struct tblk_pool *pool) TBLK_REQUIRES(pool->lock)
{
	uint64_t spin_ns = __atomic_load_n(&pool->spin_ns, __ATOMIC_RELAXED), start;
	unsigned int i;

	if (!spin_ns || pool->spinning)
		return false;
	pool->spinning = true;
	pool->nr_coming++;
	tblk_mutex_unlock(&pool->lock);
	start = tblk_clock_ns();
	for (i = 1; !__atomic_load_n(&pool->nr_queued, __ATOMIC_RELAXED); i++) {
		tblk__cpu_relax();
		/* The clock costs more than a peek at the queue: read it now and then. */
		if (!(i & 15) && tblk_clock_ns() - start >= spin_ns)
			break;
	}
	tblk_mutex_lock(&pool->lock);
	pool->spinning = false;
	pool->nr_coming--;
	return pool->nr_queued > 0;
}

/*
 * Sleeps on the idle list, without the lock, until a submitter hands this worker an item
 * (returned, lock not held) or it should exit (NULL, lock held): the pool stops, or it stayed
 * idle for idle_ns with more than min_threads alive. Called with the lock held.
 */
static struct tblk_work *idle_wait_locked(struct tblk_pool *pool, struct worker *w) TBLK_NO_TSA
{
	uint64_t deadline = tblk_clock_ns() + pool->idle_ns;
	uint32_t st;

	if (pool->stopping)
		return NULL;
	__atomic_store_n(&w->state, WAKE_NONE, __ATOMIC_RELAXED);
	tblk_list_add_tail(pool->idle.next, &w->link);	/* at the head: LIFO */
	pool->nr_idle++;
	tblk_mutex_unlock(&pool->lock);
	for (;;) {
		bool woken = tblk__futex_wait(&w->state, WAKE_NONE, deadline);

		st = __atomic_load_n(&w->state, __ATOMIC_ACQUIRE);
		if (st == WAKE_WORK)
			return w->handoff;	/* the waker took us off the list */
		if (st == WAKE_STOP) {
			tblk_mutex_lock(&pool->lock);
			return NULL;	/* the stopper took us off the list */
		}
		if (woken)
			continue;
		/* Timed out: leave unless we are one of the min (then sleep with no limit). */
		tblk_mutex_lock(&pool->lock);
		st = __atomic_load_n(&w->state, __ATOMIC_ACQUIRE);
		if (st == WAKE_WORK) {
			tblk_mutex_unlock(&pool->lock);
			return w->handoff;
		}
		if (st == WAKE_STOP)
			return NULL;	/* the stopper took us off the list */
		if (pool->nr_threads > pool->min_threads) {
			tblk_list_del(&w->link);
			pool->nr_idle--;
			return NULL;
		}
		tblk_mutex_unlock(&pool->lock);
		deadline = 0;
	}
}

/* More non-blocked workers than the maximum, after a blocked one came back: shed one. */
static bool surplus_locked(struct tblk_pool *pool)
{
	return pool->nr_threads - pool->nr_blocked > pool->max_threads;
}

/* Leaves the pool; the thread is joined by whoever next takes the zombies. Unlocks. */
static void worker_exit_locked(struct tblk_pool *pool, struct worker *w)
	TBLK_RELEASES(pool->lock)
{
	struct tblk_list zombies;

	take_zombies_locked(pool, &zombies);
	pool->nr_threads--;
	if (pool->detach_exited) {
		/* w itself is freed by whoever takes the zombies; we never touch it again. */
		pthread_detach(pthread_self());
		w->detached = true;
	}
	tblk_list_add_tail(&pool->zombies, &w->link);
	if (pool->stopping && !pool->nr_threads)
		tblk_cond_broadcast(&pool->free_cv);
	tblk_mutex_unlock(&pool->lock);
	/* Those exited before us; tblk_pool_free() joins us, and so waits for these joins. */
	join_zombies(&zombies);
}

static void *worker_main(void *opaque) TBLK_NO_TSA
{
	struct worker *w = opaque;
	struct tblk_pool *pool = w->pool;
	struct tblk_work *work;

	cur_worker = w;
	tblk_mutex_lock(&pool->lock);
	pool->nr_coming--;	/* counted by our creator until we look at the queue */
	for (;;) {
		bool over_cap;

		if (surplus_locked(pool))
			break;
		/* Over the cap (it was lowered): leave the queue to the others and idle. */
		over_cap = nr_running_locked(pool) > pool->cap.cap;
		work = over_cap ? NULL : dequeue_locked(pool);
		if (work) {
			tblk_mutex_unlock(&pool->lock);
			run_work(pool, work);
			tblk_mutex_lock(&pool->lock);
			tblk__cap_completed(&pool->cap);
			continue;
		}
		if (pool->stopping)
			break;
		if (!over_cap && spin_locked(pool))
			continue;
		work = idle_wait_locked(pool, w);
		if (!work)
			break;
		run_work(pool, work);	/* handed over: the lock was not retaken */
		tblk_mutex_lock(&pool->lock);
		tblk__cap_completed(&pool->cap);
	}
	worker_exit_locked(pool, w);
	return NULL;
}

/* ---------------------------------------------------------------- API */

/*
 * The critical sections are a few pointer moves, but submitters, workers and the spinner hit
 * them at once: an adaptive mutex spins a little before it sleeps, saving futex calls.
 */
static void init_lock(struct tblk_mutex *mu)
{
	pthread_mutexattr_t attr;

	tblk_mutex_init(mu);
	pthread_mutex_destroy(&mu->m);
	pthread_mutexattr_init(&attr);
	pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
	pthread_mutex_init(&mu->m, &attr);
	pthread_mutexattr_destroy(&attr);
}

struct tblk_pool *tblk_pool_new(unsigned int min_threads, unsigned int max_threads,
				unsigned int idle_ms, GError **errp)
{
	struct tblk_pool *pool;

	if (min_threads > max_threads) {
		tblk_error_set(errp, EINVAL, "pool minimum of %u threads exceeds its maximum %u",
			       min_threads, max_threads);
		return NULL;
	}
	pool = g_new0(struct tblk_pool, 1);
	pool->min_threads = min_threads;
	pool->max_threads = max_threads;
	pool->idle_ns = idle_ms * 1000000ull;
	pool->spin_ns = tblk__env_ns("TBLK_POOL_SPIN_NS", TBLK_POOL_SPIN_NS);
	tblk__cap_init(&pool->cap, TBLK_POOL_MIN_CAP, max_threads,
		       tblk__env_ns("TBLK_POOL_ADAPT", 1) != 0);
	init_lock(&pool->lock);
	tblk_cond_init(&pool->free_cv);
	tblk_list_init(&pool->idle);
	tblk_list_init(&pool->zombies);
	return pool;
}

void tblk_pool_submit(struct tblk_pool *pool, struct tblk_work *work)
{
	struct worker *woken;
	bool spawn;

	assert(work->fn && (work->loop || !work->done));
	work->pool = pool;
	__atomic_fetch_add(&pool->in_flight, 1, __ATOMIC_SEQ_CST);
	if (work->done)
		tblk__loop_item_queued(work->loop);
	tblk_mutex_lock(&pool->lock);
	enqueue_locked(pool, work);
	spawn = want_worker_locked(pool, &woken);
	tblk_mutex_unlock(&pool->lock);
	wake_worker(woken);
	if (spawn)
		spawn_worker(pool);
}

/* A pool worker about to block: counts it, starts another if queued work needs one. */
static struct tblk_pool *blocked_begin(void)
{
	struct worker *w = cur_worker, *woken;
	struct tblk_pool *pool;
	bool spawn;

	if (!w)
		return NULL;
	pool = w->pool;
	tblk_mutex_lock(&pool->lock);
	pool->nr_blocked++;
	spawn = want_worker_locked(pool, &woken);
	tblk_mutex_unlock(&pool->lock);
	wake_worker(woken);
	/* With the caller's mutex held: slow, but only when the pool must grow. */
	if (spawn)
		spawn_worker(pool);
	return pool;
}

static void blocked_end(struct tblk_pool *pool)
{
	if (!pool)
		return;
	tblk_mutex_lock(&pool->lock);
	pool->nr_blocked--;
	tblk_mutex_unlock(&pool->lock);
}

void tblk_pool_wait(struct tblk_cond *cv, struct tblk_mutex *mu)
{
	struct tblk_pool *pool = blocked_begin();

	tblk_cond_wait(cv, mu);
	blocked_end(pool);
}

bool tblk_pool_timedwait(struct tblk_cond *cv, struct tblk_mutex *mu, uint64_t deadline_ns)
{
	struct tblk_pool *pool = blocked_begin();
	bool woken = tblk_cond_timedwait(cv, mu, deadline_ns);

	blocked_end(pool);
	return woken;
}

bool tblk_pool_in_worker(void)
{
	return cur_worker != NULL;
}

unsigned int tblk_pool_run_queued(struct tblk_pool *pool)
{
	struct tblk_work *work;
	unsigned int n = 0;

	for (;;) {
		tblk_mutex_lock(&pool->lock);
		work = dequeue_locked(pool);
		tblk_mutex_unlock(&pool->lock);
		if (!work)
			return n;
		run_work(pool, work);
		n++;
	}
}

void tblk_pool_set_spin_ns(struct tblk_pool *pool, uint64_t ns)
{
	__atomic_store_n(&pool->spin_ns, ns, __ATOMIC_RELAXED);
}

void tblk_pool_get_stats(struct tblk_pool *pool, struct tblk_pool_stats *st)
{
	tblk_mutex_lock(&pool->lock);
	st->nr_threads = pool->nr_threads;
	st->nr_idle = pool->nr_idle;
	st->nr_blocked = pool->nr_blocked;
	st->cap = pool->cap.cap;
	tblk_mutex_unlock(&pool->lock);
	st->nr_completed = __atomic_load_n(&pool->nr_completed, __ATOMIC_RELAXED);
}

static void free_bh_nop(void *opaque)
{
}

/*
 * Waits for in_flight to reach 0. If the caller runs a loop, completions may be due on it:
 * iterate it, woken by free_bh on the last completion, or by a timer in the rare case the
 * last completion raced with our start (see tblk__pool_work_done()).
 */
static void wait_in_flight(struct tblk_pool *pool)
{
	struct tblk_loop *loop = tblk_loop_current();
	struct tblk_timer tick;
	struct tblk_bh *bh = NULL;

	if (loop) {
		bh = tblk_bh_new(loop, free_bh_nop, NULL);
		tblk_timer_init(&tick, loop, free_bh_nop, NULL);
	}
	tblk_mutex_lock(&pool->lock);
	pool->free_bh = bh;
	__atomic_store_n(&pool->freeing, true, __ATOMIC_SEQ_CST);
	while (__atomic_load_n(&pool->in_flight, __ATOMIC_SEQ_CST)) {
		uint64_t deadline = tblk_clock_ns() + POOL_FREE_POLL_NS;

		if (!pool->max_threads) {
			/* Test mode: no worker will run the queue, so we do. */
			tblk_mutex_unlock(&pool->lock);
			tblk_pool_run_queued(pool);
			tblk_mutex_lock(&pool->lock);
			if (!__atomic_load_n(&pool->in_flight, __ATOMIC_SEQ_CST))
				break;
		}
		if (!loop) {
			tblk_cond_timedwait(&pool->free_cv, &pool->lock, deadline);
			continue;
		}
		tblk_mutex_unlock(&pool->lock);
		tblk_timer_mod(&tick, deadline);
		tblk_loop_iterate(loop, true);
		tblk_mutex_lock(&pool->lock);
	}
	pool->free_bh = NULL;
	tblk_mutex_unlock(&pool->lock);
	if (loop) {
		tblk_timer_del(&tick);
		tblk_bh_free(bh);
	}
}

static void stop_workers(struct tblk_pool *pool)
{
	struct tblk_list zombies, *pos, *tmp;

	tblk_mutex_lock(&pool->lock);
	pool->stopping = true;
	/* Under the lock: a stopped worker needs it to exit, so it cannot be freed meanwhile. */
	tblk_list_for_each_safe(pos, tmp, &pool->idle) {
		struct worker *w = tblk_list_entry(pos, struct worker, link);

		tblk_list_del(pos);
		pool->nr_idle--;
		__atomic_store_n(&w->state, WAKE_STOP, __ATOMIC_RELEASE);
		tblk__futex_wake(&w->state, 1);
	}
	while (pool->nr_threads)
		tblk_cond_wait(&pool->free_cv, &pool->lock);
	take_zombies_locked(pool, &zombies);
	assert(tblk_list_empty(&pool->zombies));
	tblk_mutex_unlock(&pool->lock);
	join_zombies(&zombies);
}

void tblk_pool_free(struct tblk_pool *pool)
{
	if (!pool)
		return;
	wait_in_flight(pool);
	stop_workers(pool);
	assert(!pool->head);
	tblk_cond_destroy(&pool->free_cv);
	tblk_mutex_destroy(&pool->lock);
	g_free(pool);
}

static struct tblk_pool *default_pool;
static pthread_once_t default_once = PTHREAD_ONCE_INIT;

static void default_pool_init(void)
{
	uint64_t max = tblk__env_ns("TBLK_POOL_MAX_THREADS", TBLK_POOL_MAX_THREADS);

	/* The knob is a count, read with the nanosecond helper; 0 or absurd: the default. */
	if (max == 0 || max > 1024)
		max = TBLK_POOL_MAX_THREADS;
	default_pool = tblk_pool_new(0, (unsigned int)max, 10000, NULL);
	default_pool->detach_exited = true;
}

struct tblk_pool *tblk_pool_default(void)
{
	pthread_once(&default_once, default_pool_init);
	return default_pool;
}
