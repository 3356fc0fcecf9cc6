/* SPDX-License-Identifier: MIT */
/*
 * threadpool.h - the generic worker pool, the event loop (iothread) and the wait service.
 * Nothing here knows about blocks.
 *
 * Threading contract:
 * - A loop is owned by the one thread that runs it (tblk_loop_run()/tblk_loop_iterate()).
 *   Functions marked "loop thread" may only be called from that thread (or before the loop
 *   first runs); functions marked "any thread" are thread-safe.
 * - Pool work runs on a worker; its completion (`done`) always runs on the loop named by the
 *   submitter, never on a worker. Many completions cost one eventfd write. While four or
 *   more of a loop's items wait in a pool queue and its completions come fast, the loop
 *   sleeps at most 500 us (TBLK_LOOP_LAZY_MAX_NS; 0: off; rounded up to whole milliseconds
 *   on kernels without epoll_pwait2, before 5.11) and a completion does not wake it: the
 *   start of the item that leaves fewer queued, or that bound, does, so `done` may run up
 *   to that long after fn returned, in batches, for fewer wake-ups.
 * - A work item that must wait for something calls tblk_pool_wait(): the pool counts the
 *   worker as blocked and starts another one if work is queued, so queued work is never
 *   starved by blocked workers.
 */
#ifndef TBLK_THREADPOOL_H
#define TBLK_THREADPOOL_H

#include "common/common.h"

struct tblk_loop;
struct tblk_pool;
struct tblk_iothread;

/* ---------------------------------------------------------------- event loop */

/* Runs on the loop thread when the fd is readable (or writable). */
typedef void tblk_fd_fn(void *opaque);
/*
 * Runs on the loop thread while the loop busy-polls before sleeping; returns true if it
 * found and handled work (e.g. completions in a ring), which ends the polling phase.
 */
typedef bool tblk_poll_fn(void *opaque);
/* A bottom half, timer or hook callback; runs on the loop thread. */
typedef void tblk_loop_fn(void *opaque);

/* Creates a loop (epoll fd + an eventfd for wake-ups). Any thread. NULL and *errp on error. */
struct tblk_loop *tblk_loop_new(GError **errp);
/*
 * Frees a loop that no thread is running.  Pending bottom halves are dropped; fd handlers
 * must have been removed by their owners. Data slots' destroy functions run here.
 */
void tblk_loop_free(struct tblk_loop *loop);

/*
 * Adds, changes or (both callbacks and poll NULL) removes the handler of @fd.  @poll, if
 * non-NULL, takes part in adaptive polling. Loop thread. Returns 0 or -errno.
 */
int tblk_loop_set_fd_handler(struct tblk_loop *loop, int fd, tblk_fd_fn *on_read,
			     tblk_fd_fn *on_write, tblk_poll_fn *poll, void *opaque);

/*
 * Runs one iteration: prepare hooks, (adaptive polling), epoll, ready fd handlers, expired
 * timers, scheduled bottom halves, pool completions. With @blocking, sleeps until something
 * happens. Returns true if any callback ran. Loop thread (the caller becomes it).
 */
bool tblk_loop_iterate(struct tblk_loop *loop, bool blocking);
/* Iterates until tblk_loop_stop(). The caller becomes the loop thread. */
void tblk_loop_run(struct tblk_loop *loop);
/* Makes tblk_loop_run() return after its current iteration. Any thread. */
void tblk_loop_stop(struct tblk_loop *loop);
/* Wakes the loop if it sleeps in epoll. Any thread. */
void tblk_loop_kick(struct tblk_loop *loop);
/* True if the calling thread is the one running @loop right now. */
bool tblk_loop_in_thread(struct tblk_loop *loop);
/*
 * True while some thread is inside tblk_loop_run()/tblk_loop_iterate() of @loop. A waiter
 * that finds the loop idle may iterate it itself (a tool's main loop); one that finds it
 * run by another thread (an iothread) sleeps instead. Any thread.
 */
bool tblk_loop_is_running(struct tblk_loop *loop);
/* The loop the calling thread is running, or NULL. */
struct tblk_loop *tblk_loop_current(void);

/*
 * Adaptive polling: the longest time (ns) the loop busy-polls before sleeping. 0 disables
 * polling. The loop self-tunes the actual window between 0 and this maximum. Loop thread.
 */
void tblk_loop_set_poll_max_ns(struct tblk_loop *loop, uint64_t max_ns);
/*
 * What a sleep and a wake-up of the loop cost in CPU time (ns; default 8 us,
 * TBLK_LOOP_POLL_BREAK_EVEN_NS): the window grows only for events that come sooner than
 * this and shrinks after any that came later, since polling for those costs more than
 * sleeping. Loop thread.
 */
void tblk_loop_set_poll_break_even_ns(struct tblk_loop *loop, uint64_t ns);

/*
 * Prepare hooks run at the start of every iteration, before the loop polls or sleeps:
 * where batched I/O (one io_submit for many requests) is flushed. The hook struct is owned
 * by the caller and must stay valid until removed. Loop thread.
 */
struct tblk_loop_hook {
	tblk_loop_fn *fn;
	void *opaque;
	struct tblk_list link;	/* [loop thread] private */
};
void tblk_loop_add_prepare_hook(struct tblk_loop *loop, struct tblk_loop_hook *hook);
void tblk_loop_remove_prepare_hook(struct tblk_loop *loop, struct tblk_loop_hook *hook);
/*
 * Runs the prepare hooks now, from a callback on the loop thread: a caller queueing a burst
 * of requests lets the batching submitters (AIO engines) send what they hold so far.
 */
void tblk_loop_prepare_now(struct tblk_loop *loop);

/*
 * Per-loop data slots for other layers (e.g. one Linux AIO context per loop), keyed by the
 * address of a static object of the caller's. @destroy (may be NULL) runs at loop free.
 * Loop thread.
 */
void *tblk_loop_get_data(struct tblk_loop *loop, const void *key);
void tblk_loop_set_data(struct tblk_loop *loop, const void *key, void *data,
			void (*destroy)(void *data));

/* Bottom halves: a callback scheduled from any thread, run once on the loop. */
struct tblk_bh;
struct tblk_bh *tblk_bh_new(struct tblk_loop *loop, tblk_loop_fn *fn, void *opaque);
/* Schedules @bh (idempotent until it runs). Any thread. */
void tblk_bh_schedule(struct tblk_bh *bh);
/* Unschedules @bh if it has not run yet. Loop thread. */
void tblk_bh_cancel(struct tblk_bh *bh);
/* Frees @bh (NULL ok); it must not be running. Loop thread. */
void tblk_bh_free(struct tblk_bh *bh);
/* Runs @fn(@opaque) once on @loop, soon. Allocates. Any thread. */
void tblk_loop_call_soon(struct tblk_loop *loop, tblk_loop_fn *fn, void *opaque);
/*
 * Runs @fn(@opaque) on @loop's thread and returns once it has run: in the caller if that is
 * the loop's thread or nobody runs @loop, else as a call_soon waited for. Everything the loop
 * thread did before @fn happens before the return. Any thread the loop does not wait for.
 * If nobody runs @loop any more while the call waits (a hand-iterated loop was left), the
 * caller takes the call back and runs @fn itself once it has seen the loop idle for 10-20 ms.
 * @loop must not be freed meanwhile.
 */
void tblk_loop_call_wait(struct tblk_loop *loop, tblk_loop_fn *fn, void *opaque);

/* Timers on CLOCK_MONOTONIC (tblk_clock_ns()), storage owned by the caller. Loop thread. */
struct tblk_timer {
	struct tblk_loop *loop;	/* [const] */
	tblk_loop_fn *fn;	/* [const] */
	void *opaque;		/* [const] */
	uint64_t expire_ns;	/* [loop thread] */
	bool pending;		/* [loop thread] */
	struct tblk_list link;	/* [loop thread] private, sorted by expire_ns */
};
void tblk_timer_init(struct tblk_timer *t, struct tblk_loop *loop, tblk_loop_fn *fn,
		     void *opaque);
/* (Re)arms @t to fire at @expire_ns. */
void tblk_timer_mod(struct tblk_timer *t, uint64_t expire_ns);
void tblk_timer_del(struct tblk_timer *t);

/* Event notifiers: an eventfd that any thread may set and the loop watches. */
struct tblk_notifier {
	int fd;			/* [const] */
};
int tblk_notifier_init(struct tblk_notifier *n);	/* 0 or -errno */
void tblk_notifier_destroy(struct tblk_notifier *n);
void tblk_notifier_set(struct tblk_notifier *n);	/* any thread */
bool tblk_notifier_test_and_clear(struct tblk_notifier *n);

/*
 * An iothread: a loop running in a thread of its own. tblk_iothread_new() returns once the
 * loop runs, so tblk_loop_is_running() is true from then until tblk_iothread_free().
 */
struct tblk_iothread *tblk_iothread_new(const char *name, GError **errp);
struct tblk_loop *tblk_iothread_get_loop(struct tblk_iothread *iot);
/* Stops the loop, joins the thread, frees the loop. NULL ok. Not from the iothread. */
void tblk_iothread_free(struct tblk_iothread *iot);

/* ---------------------------------------------------------------- worker pool */

/* Runs on a pool worker; returns the result handed to `done`. */
typedef int tblk_work_fn(void *opaque);
/* Runs on the submitter's loop with the result of `fn`. */
typedef void tblk_done_fn(void *opaque, int ret);

/*
 * A work item, storage owned by the submitter (embed it in the request). Fill fn, done,
 * opaque and loop before tblk_pool_submit(); the rest is private to the pool.
 */
struct tblk_work {
	tblk_work_fn *fn;
	tblk_done_fn *done;
	void *opaque;
	struct tblk_loop *loop;		/* where `done` runs */
	int ret;			/* private: fn's result */
	struct tblk_work *next;		/* private: pool queue / completion list link */
	struct tblk_pool *pool;		/* private: the pool it was submitted to */
};

/*
 * A pool with at least @min_threads started lazily and kept, at most @max_threads workers
 * that are not blocked in tblk_pool_wait(), idle workers above the minimum exiting after
 * @idle_ms. Any thread. NULL and *errp on error.
 */
struct tblk_pool *tblk_pool_new(unsigned int min_threads, unsigned int max_threads,
				unsigned int idle_ms, GError **errp);
/*
 * Waits for every submitted item to run and for its `done` to return, joins the workers,
 * frees. NULL ok. The loops items complete on must keep running meanwhile: the caller's own
 * loop (tblk_loop_current()) is iterated here, others need their threads. Items submitted
 * by fn or done of this pool's items during the wait are waited for too; any other
 * tblk_pool_submit() must not race with this.
 */
void tblk_pool_free(struct tblk_pool *pool);
/* Queues @work. Any thread. Never fails (worker creation failure degrades to fewer). */
void tblk_pool_submit(struct tblk_pool *pool, struct tblk_work *work);
/* The process-wide pool (min 0, max 64, idle 10 s), created on first use. Any thread. */
struct tblk_pool *tblk_pool_default(void);

/*
 * The wait service: waits on @cv with @mu held, like tblk_cond_wait(). Called from a pool
 * worker, the worker is counted as blocked while it waits, and another worker is started
 * if work is queued and no worker is idle. Callers loop on their predicate. Any thread.
 */
void tblk_pool_wait(struct tblk_cond *cv, struct tblk_mutex *mu);
/* As tblk_pool_wait(), giving up at @deadline_ns (tblk_clock_ns()); false on timeout. */
bool tblk_pool_timedwait(struct tblk_cond *cv, struct tblk_mutex *mu, uint64_t deadline_ns);

/* True if the calling thread is a worker of some pool. */
bool tblk_pool_in_worker(void);

/*
 * Test mode: a pool made with max_threads == 0 starts no worker; items stay queued until
 * this runs them, in order, in the calling thread (completions still go to their loops).
 * Returns how many ran. Any thread that is not a loop callback holding a lock fn needs.
 */
unsigned int tblk_pool_run_queued(struct tblk_pool *pool);

/*
 * How long (ns) a worker that finds the queue empty spins before it sleeps, so that back-to-
 * back submissions cost no wake-up; 0 disables. At most one worker spins at a time. The
 * default, TBLK_POOL_SPIN_NS (or $TBLK_POOL_SPIN_NS), is 0: with disk I/O taking far longer
 * than any useful spin, spinning only added CPU time per I/O (measured in docs/BENCHMARKS.md).
 * Any thread.
 */
#define TBLK_POOL_SPIN_NS	0
/*
 * Workers of the process-wide pool: TBLK_POOL_MAX_THREADS (or $TBLK_POOL_MAX_THREADS).
 * Of those, how many may run at once (neither idle nor blocked in tblk_pool_wait()) adapts
 * between TBLK_POOL_MIN_CAP and the maximum: fewer running workers than requests in flight
 * keep the queue non-empty, so a worker that finishes takes the next item without sleeping
 * (about half the context switches of aio=threads at depth 32), at the price of fewer
 * requests in flight at the device; the pool searches for the fewest that keep the
 * throughput. $TBLK_POOL_ADAPT=0 pins the limit at the maximum.
 */
#define TBLK_POOL_MAX_THREADS	64
#define TBLK_POOL_MIN_CAP	4
void tblk_pool_set_spin_ns(struct tblk_pool *pool, uint64_t ns);

/* Statistics for tests: workers alive, idle, blocked in tblk_pool_wait(). Any thread. */
struct tblk_pool_stats {
	unsigned int nr_threads;
	unsigned int nr_idle;
	unsigned int nr_blocked;
	unsigned int cap;	/* running workers allowed now */
	uint64_t nr_completed;
};
void tblk_pool_get_stats(struct tblk_pool *pool, struct tblk_pool_stats *st);

#endif /* TBLK_THREADPOOL_H */
