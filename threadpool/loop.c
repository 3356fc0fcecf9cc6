/* SPDX-License-Identifier: MIT */
/*
 * loop.c - the event loop: epoll and fd handlers, bottom halves, timers, prepare hooks,
 * per-loop data slots, delivery of pool completions, adaptive polling; and the eventfd
 * notifiers.
 *
 * Threading: one thread at a time runs a loop; it is "the loop thread" while it is inside
 * tblk_loop_iterate()/tblk_loop_run(), and everything tagged [loop thread] is touched only
 * there. Other threads reach a loop only through two lock-free stacks (scheduled bottom
 * halves, finished pool items) and a few atomic flags, so the loop takes no lock at all.
 *
 * Wake-ups: the loop raises notify_me only around an epoll_wait that may block, never while
 * it runs callbacks or busy-polls. A producer writes the wake eventfd only if notify_me is
 * up, the stack it pushed onto was empty, and nobody wrote it since the loop last drained
 * it. A busy or polling loop therefore costs its producers no syscall at all. Correctness
 * rests on a store-then-load pattern on both sides with sequentially consistent atomics:
 * the loop stores notify_me and then looks at the stacks; a producer pushes and then loads
 * notify_me; at least one of the two sees the other's store.
 *
 * Reentrancy: a callback may run tblk_loop_iterate() on its own loop (drain does). Every
 * batch being dispatched lives on the stack of the iteration that took it, fd handlers
 * removed during dispatch are only marked and freed when the outermost iteration ends.
 */
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "threadpool/threadpool-int.h"

#define LOOP_POLL_MAX_NS	32000u	/* default cap of the adaptive polling window */
#define LOOP_POLL_BREAK_EVEN_NS	8000u	/* default: polling longer costs more than a sleep */
#define LOOP_POLL_FIRST_NS	4000u	/* window when polling (re)starts from 0 */
#define LOOP_POLL_MIN_NS	1000u	/* a window shrunk below this becomes 0 */
#define LOOP_MAX_EVENTS		64
#define LOOP_MAX_EPOLL_SKIPS	16	/* busy iterations in a row that may skip epoll */
/*
 * A completion may leave the sleeping loop asleep while at least this many of its items
 * wait in a pool queue: the start of one of them wakes it (see tblk__loop_item_started()).
 */
#define LOOP_LAZY_MIN_QUEUED	4
#define LOOP_LAZY_MAX_NS	500000ull	/* the loop then sleeps no longer than this */
#define LOOP_LAZY_MAX_SKIP	256		/* unbounded sleeps after misses in a row */

struct fd_handler {
	int fd;			/* [loop thread] */
	tblk_fd_fn *on_read;	/* [loop thread] */
	tblk_fd_fn *on_write;	/* [loop thread] */
	tblk_poll_fn *poll;	/* [loop thread] */
	void *opaque;		/* [loop thread] */
	uint32_t events;	/* [loop thread] what epoll watches; 0: not registered */
	bool deleted;		/* [loop thread] removed, freed once no dispatch can see it */
	struct tblk_list link;	/* [loop thread] on loop->handlers */
};

/* A bottom half is on a stack or a batch exactly when its state is not BH_IDLE. */
enum { BH_IDLE, BH_QUEUED, BH_CANCELLED };

struct tblk_bh {
	struct tblk_loop *loop;	/* [const] */
	tblk_loop_fn *fn;	/* [const] */
	void *opaque;		/* [const] */
	bool oneshot;		/* [const] call_soon()/call_wait(): the loop frees it once met */
	int state;		/* [atomic] BH_* */
	bool freed;		/* [loop thread] freed while queued: free it when dequeued */
	struct tblk_bh *next;	/* written by the one thread that moves state off BH_IDLE */
};

struct data_slot {
	const void *key;
	void *data;
	void (*destroy)(void *data);
};

/* No lock: shared fields are [atomic], all others belong to the loop thread. */
struct tblk_loop {
	int epfd;			/* [const] */
	int wake_fd;			/* [const] eventfd producers write to end epoll_wait */
	struct fd_handler wake_handler;	/* [const] epoll's tag for wake_fd */

	struct tblk_bh *bh_head;	/* [atomic] stack of scheduled bottom halves, LIFO */
	struct tblk_work *done_head;	/* [atomic] stack of finished pool items, LIFO */
	unsigned int nr_pushers;	/* [atomic] producers inside push_*(); free waits */
	unsigned int pool_queued;	/* [atomic] items to complete here still in a pool queue */
	bool lazy;			/* [atomic] a completion is pushed and no wake-up made */
	bool defer_ok;			/* [atomic] written by the loop: not in an unbounded sleep */
	unsigned int lazy_skip;		/* [loop thread] unbounded sleeps before a bounded one */
	unsigned int lazy_backoff;	/* [loop thread] lazy_skip after the next miss */
	uint64_t lazy_max_ns;		/* [const] bound on a deferred wake-up; 0: never defer */
	bool notify_me;			/* [atomic] loop may block: producers must write wake_fd */
	bool notified;			/* [atomic] wake_fd written and not drained yet */
	bool kicked;			/* [atomic] tblk_loop_kick() since the last epoll_wait */
	bool stop;			/* [atomic] tblk_loop_stop() not yet seen by run */
	bool running;			/* [atomic] run_depth > 0, for tblk_loop_is_running() */
	unsigned int entries;		/* [atomic] times run_depth went from 0 to 1 */

	struct tblk_list handlers;	/* [loop thread] struct fd_handler, deleted ones too */
	unsigned int nr_pollers;	/* [loop thread] live handlers with a poll function */
	unsigned int nr_deleted;	/* [loop thread] deleted handlers still listed */
	unsigned int depth;		/* [loop thread] nesting of tblk_loop_iterate() */
	unsigned int run_depth;		/* [loop thread] nesting of run and iterate */
	unsigned int nr_epoll_skips;	/* [loop thread] iterations in a row without epoll */
	struct tblk_list timers;	/* [loop thread] pending struct tblk_timer, by expire_ns */
	struct tblk_list hooks;		/* [loop thread] struct tblk_loop_hook */
	struct data_slot *slots;	/* [loop thread] */
	unsigned int nr_slots;		/* [loop thread] */
	uint64_t poll_max_ns;		/* [loop thread] 0: never poll */
	uint64_t poll_ns;		/* [loop thread] current adaptive window */
	unsigned int poll_near;		/* [loop thread] events in a row within break-even */
	uint64_t poll_break_even_ns;	/* [loop thread] CPU time a sleep and a wake-up cost */
};

static __thread struct tblk_loop *cur_loop;

/* ---------------------------------------------------------------- wake-ups */

/* Makes a blocked epoll_wait return, if the loop may be in one. Any thread. */
static void loop_notify(struct tblk_loop *loop)
{
	uint64_t one = 1;

	if (!__atomic_load_n(&loop->notify_me, __ATOMIC_SEQ_CST))
		return;
	if (__atomic_exchange_n(&loop->notified, true, __ATOMIC_SEQ_CST))
		return;
	/* Fails only with EAGAIN when the counter is saturated: it is readable anyway. */
	if (write(loop->wake_fd, &one, sizeof(one)) < 0)
		return;
}

static void drain_wake_fd(struct tblk_loop *loop)
{
	uint64_t v;

	if (read(loop->wake_fd, &v, sizeof(v)) < 0)
		v = 0;	/* EAGAIN: a concurrent write is not visible yet; epoll tells us again */
	/* Cleared after the read: a producer seeing true knows a drain is still to come. */
	__atomic_store_n(&loop->notified, false, __ATOMIC_SEQ_CST);
}

/* True if something is queued for the loop or it was kicked: do not sleep. */
static bool loop_has_pending(struct tblk_loop *loop)
{
	return __atomic_load_n(&loop->done_head, __ATOMIC_SEQ_CST) ||
	       __atomic_load_n(&loop->bh_head, __ATOMIC_SEQ_CST) ||
	       __atomic_load_n(&loop->kicked, __ATOMIC_SEQ_CST);
}

void tblk_loop_kick(struct tblk_loop *loop)
{
	/* The flag makes a loop that is about to sleep look again instead. */
	__atomic_store_n(&loop->kicked, true, __ATOMIC_SEQ_CST);
	loop_notify(loop);
}

/*
 * Producers count themselves in nr_pushers from before the push until after the wake-up,
 * so that tblk_loop_free() cannot free the loop under a producer whose item has already
 * been run by the loop.
 */
static void push_bh(struct tblk_loop *loop, struct tblk_bh *bh)
{
	struct tblk_bh *old;

	__atomic_fetch_add(&loop->nr_pushers, 1, __ATOMIC_SEQ_CST);
	old = __atomic_load_n(&loop->bh_head, __ATOMIC_RELAXED);
	do {
		bh->next = old;
	} while (!__atomic_compare_exchange_n(&loop->bh_head, &old, bh, true, __ATOMIC_SEQ_CST,
					      __ATOMIC_RELAXED));
	if (!old)
		loop_notify(loop);
	__atomic_fetch_sub(&loop->nr_pushers, 1, __ATOMIC_RELEASE);
}

/*
 * The first completion onto an empty stack would wake the sleeping loop. While enough of the
 * loop's own items still wait in a pool queue, it need not: the workers are kept busy by
 * those, and the loop, woken later, takes a batch of completions for one wake-up (a wake-up
 * costs the loop two context switches and the waker a cross-CPU interrupt; on a virtual
 * machine several microseconds). The start of the item that leaves fewer than
 * LOOP_LAZY_MIN_QUEUED queued makes the wake-up (tblk__loop_item_started()).
 *
 * A queued item may not start soon (the workers stuck in long items, items of another
 * pool, a producer that keeps the queue full), so deferring is allowed only while the loop
 * sleeps at most lazy_max_ns (defer_ok, see loop_wait()): that bounds the delay. A bounded
 * sleep that ends without a batch is a miss (lazy_learn()): the loop then sleeps unbounded
 * for a while, longer after each miss, so slow storage or a queue that does not move pays
 * an empty or late wake-up only now and then.
 *
 * Orderings, all SEQ_CST: we push and then load defer_ok, the loop stores defer_ok and then
 * loads done_head before it sleeps; we store lazy and then load pool_queued, a starter
 * decrements pool_queued and then loads lazy. In each pair one side sees the other. True if
 * the wake-up is left to a starter or to the loop's bounded sleep.
 */
static bool defer_wake(struct tblk_loop *loop)
{
	if (!__atomic_load_n(&loop->defer_ok, __ATOMIC_SEQ_CST) ||
	    __atomic_load_n(&loop->pool_queued, __ATOMIC_SEQ_CST) < LOOP_LAZY_MIN_QUEUED)
		return false;
	__atomic_store_n(&loop->lazy, true, __ATOMIC_SEQ_CST);
	if (__atomic_load_n(&loop->pool_queued, __ATOMIC_SEQ_CST) >= LOOP_LAZY_MIN_QUEUED)
		return true;
	/* A starter may have missed our flag: wake the loop ourselves unless it took the flag. */
	return !__atomic_exchange_n(&loop->lazy, false, __ATOMIC_SEQ_CST);
}

void tblk__loop_push_completion(struct tblk_loop *loop, struct tblk_work *work)
{
	struct tblk_work *old;

	__atomic_fetch_add(&loop->nr_pushers, 1, __ATOMIC_SEQ_CST);
	old = __atomic_load_n(&loop->done_head, __ATOMIC_RELAXED);
	do {
		work->next = old;
	} while (!__atomic_compare_exchange_n(&loop->done_head, &old, work, true,
					      __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
	/* Not empty before: the loop has yet to take the stack and will find this too. */
	if (!old && !defer_wake(loop))
		loop_notify(loop);
	__atomic_fetch_sub(&loop->nr_pushers, 1, __ATOMIC_RELEASE);
}

void tblk__loop_item_queued(struct tblk_loop *loop)
{
	__atomic_fetch_add(&loop->pool_queued, 1, __ATOMIC_SEQ_CST);
}

void tblk__loop_item_started(struct tblk_loop *loop)
{
	unsigned int left = __atomic_sub_fetch(&loop->pool_queued, 1, __ATOMIC_SEQ_CST);

	assert(left != UINT_MAX);
	/* The loop is alive: this item's completion is still due on it. */
	if (left >= LOOP_LAZY_MIN_QUEUED || !__atomic_load_n(&loop->lazy, __ATOMIC_SEQ_CST))
		return;
	if (__atomic_exchange_n(&loop->lazy, false, __ATOMIC_SEQ_CST))
		loop_notify(loop);
}

/* ---------------------------------------------------------------- create, free */

struct tblk_loop *tblk_loop_new(GError **errp)
{
	struct tblk_loop *loop = g_new0(struct tblk_loop, 1);
	struct epoll_event ev = { .events = EPOLLIN };

	loop->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (loop->epfd < 0) {
		tblk_error_set_errno(errp, errno, "cannot create an epoll instance");
		goto out_free;
	}
	loop->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (loop->wake_fd < 0) {
		tblk_error_set_errno(errp, errno, "cannot create an eventfd");
		goto out_close_epfd;
	}
	loop->wake_handler.fd = loop->wake_fd;
	loop->wake_handler.events = EPOLLIN;
	tblk_list_init(&loop->wake_handler.link);
	ev.data.ptr = &loop->wake_handler;
	if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, loop->wake_fd, &ev) < 0) {
		tblk_error_set_errno(errp, errno, "cannot watch the loop's eventfd");
		goto out_close_wake_fd;
	}
	tblk_list_init(&loop->handlers);
	tblk_list_init(&loop->timers);
	tblk_list_init(&loop->hooks);
	loop->poll_max_ns = tblk__env_ns("TBLK_LOOP_POLL_MAX_NS", LOOP_POLL_MAX_NS);
	loop->lazy_max_ns = tblk__env_ns("TBLK_LOOP_LAZY_MAX_NS", LOOP_LAZY_MAX_NS);
	loop->lazy_backoff = 1;
	loop->poll_break_even_ns = tblk__env_ns("TBLK_LOOP_POLL_BREAK_EVEN_NS",
						LOOP_POLL_BREAK_EVEN_NS);
	return loop;

out_close_wake_fd:
	close(loop->wake_fd);
out_close_epfd:
	close(loop->epfd);
out_free:
	g_free(loop);
	return NULL;
}

static void destroy_data_slots(struct tblk_loop *loop)
{
	/* Last first, one at a time: a destructor may look up or set other slots. */
	while (loop->nr_slots) {
		struct data_slot s = loop->slots[--loop->nr_slots];

		if (s.destroy)
			s.destroy(s.data);
	}
	g_free(loop->slots);
	loop->slots = NULL;
}

/* Empties the bottom-half stack; only the ones the loop owns are freed. */
static void drop_bhs(struct tblk_loop *loop)
{
	struct tblk_bh *bh = __atomic_exchange_n(&loop->bh_head, NULL, __ATOMIC_ACQUIRE), *next;

	for (; bh; bh = next) {
		next = bh->next;
		__atomic_store_n(&bh->state, BH_IDLE, __ATOMIC_RELEASE);
		if (bh->freed || bh->oneshot)
			g_free(bh);
	}
}

/* Unlinks what callers own (timers, hooks) so their later del/remove stays harmless. */
static void unlink_owned(struct tblk_loop *loop)
{
	struct tblk_list *pos, *tmp;

	tblk_list_for_each_safe(pos, tmp, &loop->timers) {
		tblk_list_entry(pos, struct tblk_timer, link)->pending = false;
		tblk_list_del(pos);
	}
	tblk_list_for_each_safe(pos, tmp, &loop->hooks)
		tblk_list_del(pos);
	tblk_list_for_each_safe(pos, tmp, &loop->handlers) {
		tblk_list_del(pos);
		g_free(tblk_list_entry(pos, struct fd_handler, link));
	}
}

static bool run_completions(struct tblk_loop *loop);

void tblk_loop_free(struct tblk_loop *loop)
{
	struct tblk_loop *prev = cur_loop;

	if (!loop)
		return;
	/* A producer whose item already ran may still be waking us. */
	while (__atomic_load_n(&loop->nr_pushers, __ATOMIC_ACQUIRE))
		sched_yield();
	/* Destructors may use loop-thread API (remove hooks, handlers, timers). */
	cur_loop = loop;
	loop->depth++;
	/* Finished pool items are delivered rather than lost: tblk_pool_free() counts them. */
	run_completions(loop);
	destroy_data_slots(loop);
	drop_bhs(loop);
	loop->depth--;
	cur_loop = prev;
	unlink_owned(loop);
	close(loop->wake_fd);
	close(loop->epfd);
	g_free(loop);
}

/* Brackets run and iterate: the loop thread is the only writer, so plain stores do. */
static struct tblk_loop *loop_enter(struct tblk_loop *loop)
{
	struct tblk_loop *prev = cur_loop;

	cur_loop = loop;
	if (loop->run_depth++ == 0) {
		__atomic_fetch_add(&loop->entries, 1, __ATOMIC_RELAXED);
		__atomic_store_n(&loop->running, true, __ATOMIC_RELEASE);
	}
	return prev;
}

static void loop_leave(struct tblk_loop *loop, struct tblk_loop *prev)
{
	if (--loop->run_depth == 0)
		__atomic_store_n(&loop->running, false, __ATOMIC_RELEASE);
	cur_loop = prev;
}

bool tblk_loop_is_running(struct tblk_loop *loop)
{
	return __atomic_load_n(&loop->running, __ATOMIC_ACQUIRE);
}

bool tblk_loop_in_thread(struct tblk_loop *loop)
{
	return cur_loop == loop;
}

struct tblk_loop *tblk_loop_current(void)
{
	return cur_loop;
}

void tblk_loop_set_poll_max_ns(struct tblk_loop *loop, uint64_t max_ns)
{
	loop->poll_max_ns = max_ns;
	if (loop->poll_ns > max_ns)
		loop->poll_ns = max_ns;
}

void tblk_loop_set_poll_break_even_ns(struct tblk_loop *loop, uint64_t ns)
{
	loop->poll_break_even_ns = ns;
}

/* ---------------------------------------------------------------- fd handlers */

static struct fd_handler *find_handler(struct tblk_loop *loop, int fd)
{
	struct tblk_list *pos;

	tblk_list_for_each(pos, &loop->handlers) {
		struct fd_handler *h = tblk_list_entry(pos, struct fd_handler, link);

		if (h->fd == fd && !h->deleted)
			return h;
	}
	return NULL;
}

static int watch_fd(struct tblk_loop *loop, struct fd_handler *h, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = h };
	int op;

	if (events == h->events)
		return 0;
	op = !h->events ? EPOLL_CTL_ADD : !events ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
	if (epoll_ctl(loop->epfd, op, h->fd, &ev) < 0 && op != EPOLL_CTL_DEL)
		return -errno;
	h->events = events;
	return 0;
}

static void reap_handlers(struct tblk_loop *loop)
{
	struct tblk_list *pos, *tmp;

	tblk_list_for_each_safe(pos, tmp, &loop->handlers) {
		struct fd_handler *h = tblk_list_entry(pos, struct fd_handler, link);

		if (h->deleted) {
			tblk_list_del(pos);
			g_free(h);
		}
	}
	loop->nr_deleted = 0;
}

static void remove_handler(struct tblk_loop *loop, struct fd_handler *h)
{
	/* EBADF if the owner closed the fd first; epoll forgot it then, which is fine. */
	watch_fd(loop, h, 0);
	if (h->poll)
		loop->nr_pollers--;
	h->deleted = true;
	loop->nr_deleted++;
	/* Events already fetched by a running dispatch may still point at it. */
	if (!loop->depth)
		reap_handlers(loop);
}

int tblk_loop_set_fd_handler(struct tblk_loop *loop, int fd, tblk_fd_fn *on_read,
			     tblk_fd_fn *on_write, tblk_poll_fn *poll, void *opaque)
{
	struct fd_handler *h = find_handler(loop, fd);
	uint32_t events = (on_read ? EPOLLIN : 0) | (on_write ? EPOLLOUT : 0);
	bool added = false;
	int ret;

	if (!on_read && !on_write && !poll) {
		if (h)
			remove_handler(loop, h);
		return 0;
	}
	if (!h) {
		h = g_new0(struct fd_handler, 1);
		h->fd = fd;
		tblk_list_add_tail(&loop->handlers, &h->link);
		added = true;
	}
	ret = watch_fd(loop, h, events);
	if (ret < 0) {
		if (added) {
			tblk_list_del(&h->link);
			g_free(h);
		}
		return ret;
	}
	loop->nr_pollers += !!poll - !!h->poll;
	h->on_read = on_read;
	h->on_write = on_write;
	h->poll = poll;
	h->opaque = opaque;
	return 0;
}

static bool dispatch_fds(struct tblk_loop *loop, struct epoll_event *events, int n)
{
	bool progress = false;
	int i;

	for (i = 0; i < n; i++) {
		struct fd_handler *h = events[i].data.ptr;
		uint32_t ev = events[i].events;

		if (h == &loop->wake_handler) {
			drain_wake_fd(loop);
			continue;
		}
		/* Errors and hang-ups go to both sides so that each sees its failure. */
		if (!h->deleted && h->on_read && (ev & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
			h->on_read(h->opaque);
			progress = true;
		}
		if (!h->deleted && h->on_write && (ev & (EPOLLOUT | EPOLLHUP | EPOLLERR))) {
			h->on_write(h->opaque);
			progress = true;
		}
	}
	return progress;
}

/* ---------------------------------------------------------------- bottom halves */

struct tblk_bh *tblk_bh_new(struct tblk_loop *loop, tblk_loop_fn *fn, void *opaque)
{
	struct tblk_bh *bh = g_new0(struct tblk_bh, 1);

	bh->loop = loop;
	bh->fn = fn;
	bh->opaque = opaque;
	return bh;
}

void tblk_bh_schedule(struct tblk_bh *bh)
{
	/*
	 * An exchange even when already queued: its release pairs with the loop's exchange
	 * before fn runs, so fn sees everything the scheduler wrote before scheduling.
	 */
	if (__atomic_exchange_n(&bh->state, BH_QUEUED, __ATOMIC_ACQ_REL) == BH_IDLE)
		push_bh(bh->loop, bh);
}

void tblk_bh_cancel(struct tblk_bh *bh)
{
	int queued = BH_QUEUED;

	/* It stays on its stack and is skipped there; rescheduling just revives it. */
	__atomic_compare_exchange_n(&bh->state, &queued, BH_CANCELLED, false, __ATOMIC_ACQ_REL,
				    __ATOMIC_RELAXED);
}

void tblk_bh_free(struct tblk_bh *bh)
{
	if (!bh)
		return;
	if (__atomic_load_n(&bh->state, __ATOMIC_ACQUIRE) != BH_IDLE) {
		/* Still linked on a stack or a batch: the loop frees it when it gets there. */
		__atomic_store_n(&bh->state, BH_CANCELLED, __ATOMIC_RELEASE);
		bh->freed = true;
		return;
	}
	g_free(bh);
}

void tblk_loop_call_soon(struct tblk_loop *loop, tblk_loop_fn *fn, void *opaque)
{
	struct tblk_bh *bh = tblk_bh_new(loop, fn, opaque);

	bh->oneshot = true;
	tblk_bh_schedule(bh);
}

/* A tblk_loop_call_wait() in progress, on the caller's stack. */
struct call_wait {
	tblk_loop_fn *fn;	/* [const] */
	void *opaque;		/* [const] */
	struct tblk_mutex lock;
	struct tblk_cond cv;
	bool done;		/* [lock] */
};

/* How often a waiter looks whether the loop still runs (see tblk_loop_call_wait()). */
#define CALL_WAIT_RECHECK_NS	10000000ull

static void call_wait_cb(void *opaque)
{
	struct call_wait *cw = opaque;

	cw->fn(cw->opaque);
	/* Signalled under the lock: the caller destroys both as soon as it sees done. */
	tblk_mutex_lock(&cw->lock);
	cw->done = true;
	tblk_cond_signal(&cw->cv);
	tblk_mutex_unlock(&cw->lock);
}

/* Takes a queued bh back before the loop runs it: true if this call won the race. */
static bool bh_take_back(struct tblk_bh *bh)
{
	int queued = BH_QUEUED;

	return __atomic_compare_exchange_n(&bh->state, &queued, BH_CANCELLED, false,
					   __ATOMIC_ACQ_REL, __ATOMIC_RELAXED);
}

/*
 * The loop may stop being run after the request was queued (a tool iterating it by hand
 * leaves its iterate and waits for something else): then nobody would ever run the bh.
 * A hand-iterated loop also looks idle for a moment between two iterations, so one look
 * does not tell: the waiter looks every CALL_WAIT_RECHECK_NS, and only when two looks in a
 * row find the loop idle, with no entry into it between them, does it take the bh back and
 * run fn itself, as it would have had the loop been idle from the start. The bh's state
 * decides who runs fn: run_bhs() and bh_take_back() both swap it from BH_QUEUED, so exactly
 * one of them does.
 */
void tblk_loop_call_wait(struct tblk_loop *loop, tblk_loop_fn *fn, void *opaque)
{
	struct call_wait cw = { .fn = fn, .opaque = opaque };
	unsigned int seen = 0;
	bool was_idle = false;
	struct tblk_bh *bh;

	if (tblk_loop_in_thread(loop) || !tblk_loop_is_running(loop)) {
		fn(opaque);
		return;
	}
	tblk_mutex_init(&cw.lock);
	tblk_cond_init(&cw.cv);
	bh = tblk_bh_new(loop, call_wait_cb, &cw);
	bh->oneshot = true;
	tblk_bh_schedule(bh);
	tblk_mutex_lock(&cw.lock);
	while (!cw.done) {
		unsigned int entries;
		bool idle;

		if (tblk_cond_timedwait(&cw.cv, &cw.lock, tblk_clock_ns() + CALL_WAIT_RECHECK_NS))
			continue;
		idle = !tblk_loop_is_running(loop);
		entries = __atomic_load_n(&loop->entries, __ATOMIC_ACQUIRE);
		if (!idle || !was_idle || entries != seen || !bh_take_back(bh)) {
			was_idle = idle;
			seen = entries;
			continue;
		}
		/* Taken back: the loop frees the oneshot bh when it next meets it. */
		tblk_mutex_unlock(&cw.lock);
		fn(opaque);
		tblk_mutex_lock(&cw.lock);
		cw.done = true;
	}
	tblk_mutex_unlock(&cw.lock);
	tblk_cond_destroy(&cw.cv);
	tblk_mutex_destroy(&cw.lock);
}

static bool run_bhs(struct tblk_loop *loop)
{
	struct tblk_bh *bh = __atomic_exchange_n(&loop->bh_head, NULL, __ATOMIC_ACQUIRE);
	struct tblk_bh *fifo = NULL, *next;
	bool progress = false;

	/* The stack is newest first; run in scheduling order. */
	for (; bh; bh = next) {
		next = bh->next;
		bh->next = fifo;
		fifo = bh;
	}
	for (bh = fifo; bh; bh = next) {
		bool oneshot = bh->oneshot;

		/* Read next first: once idle, the bh may be rescheduled and relinked. */
		next = bh->next;
		if (__atomic_exchange_n(&bh->state, BH_IDLE, __ATOMIC_ACQ_REL) != BH_QUEUED ||
		    bh->freed) {
			/* A oneshot one was taken back by tblk_loop_call_wait(): ours to free. */
			if (bh->freed || oneshot)
				g_free(bh);
			continue;
		}
		bh->fn(bh->opaque);
		if (oneshot)
			g_free(bh);
		progress = true;
	}
	return progress;
}

/* ---------------------------------------------------------------- pool completions */

static bool run_completions(struct tblk_loop *loop)
{
	struct tblk_work *w, *fifo = NULL, *next;

	if (!__atomic_load_n(&loop->done_head, __ATOMIC_RELAXED))
		return false;
	/* Whatever a deferred wake-up was for is taken now (a late flag costs a spare wake). */
	if (__atomic_load_n(&loop->lazy, __ATOMIC_RELAXED))
		__atomic_store_n(&loop->lazy, false, __ATOMIC_SEQ_CST);
	w = __atomic_exchange_n(&loop->done_head, NULL, __ATOMIC_ACQUIRE);
	if (!w)
		return false;
	for (; w; w = next) {
		next = w->next;
		w->next = fifo;
		fifo = w;
	}
	for (w = fifo; w; w = next) {
		struct tblk_pool *pool = w->pool;

		/* done usually frees the request that embeds w. */
		next = w->next;
		w->done(w->opaque, w->ret);
		tblk__pool_work_done(pool);
	}
	return true;
}

/* ---------------------------------------------------------------- timers */

void tblk_timer_init(struct tblk_timer *t, struct tblk_loop *loop, tblk_loop_fn *fn,
		     void *opaque)
{
	t->loop = loop;
	t->fn = fn;
	t->opaque = opaque;
	t->expire_ns = 0;
	t->pending = false;
	tblk_list_init(&t->link);
}

void tblk_timer_mod(struct tblk_timer *t, uint64_t expire_ns)
{
	struct tblk_list *head = &t->loop->timers, *pos;

	if (t->pending)
		tblk_list_del(&t->link);
	t->expire_ns = expire_ns;
	t->pending = true;
	/* New deadlines tend to be the latest: search from the tail; equal ones stay FIFO. */
	for (pos = head->prev; pos != head; pos = pos->prev) {
		if (tblk_list_entry(pos, struct tblk_timer, link)->expire_ns <= expire_ns)
			break;
	}
	tblk_list_add_tail(pos->next, &t->link);
}

void tblk_timer_del(struct tblk_timer *t)
{
	if (!t->pending)
		return;
	tblk_list_del(&t->link);
	t->pending = false;
}

/* Nanoseconds until the first timer expires, 0 if one has, -1 if none is pending. */
static int64_t timer_timeout_ns(struct tblk_loop *loop)
{
	struct tblk_timer *t;
	uint64_t now;

	if (tblk_list_empty(&loop->timers))
		return -1;
	t = tblk_list_entry(loop->timers.next, struct tblk_timer, link);
	now = tblk_clock_ns();
	if (t->expire_ns <= now)
		return 0;
	return (int64_t)TBLK_MIN(t->expire_ns - now, (uint64_t)INT64_MAX);
}

static bool run_timers(struct tblk_loop *loop)
{
	bool progress = false;
	uint64_t now;

	if (tblk_list_empty(&loop->timers))
		return false;
	/* One clock reading: a timer re-armed for "now" waits for the next iteration. */
	now = tblk_clock_ns();
	while (!tblk_list_empty(&loop->timers)) {
		struct tblk_timer *t = tblk_list_entry(loop->timers.next, struct tblk_timer, link);

		if (t->expire_ns > now)
			break;
		tblk_list_del(&t->link);
		t->pending = false;
		t->fn(t->opaque);
		progress = true;
	}
	return progress;
}

/* ---------------------------------------------------------------- hooks and data */

static void run_prepare_hooks(struct tblk_loop *loop);

void tblk_loop_prepare_now(struct tblk_loop *loop)
{
	run_prepare_hooks(loop);
}

void tblk_loop_add_prepare_hook(struct tblk_loop *loop, struct tblk_loop_hook *hook)
{
	tblk_list_add_tail(&loop->hooks, &hook->link);
}

void tblk_loop_remove_prepare_hook(struct tblk_loop *loop, struct tblk_loop_hook *hook)
{
	tblk_list_del(&hook->link);
}

/* A hook may remove itself while it runs, not another hook. */
static void run_prepare_hooks(struct tblk_loop *loop)
{
	struct tblk_list *pos, *tmp;

	tblk_list_for_each_safe(pos, tmp, &loop->hooks) {
		struct tblk_loop_hook *hook = tblk_list_entry(pos, struct tblk_loop_hook, link);

		hook->fn(hook->opaque);
	}
}

static struct data_slot *find_slot(struct tblk_loop *loop, const void *key)
{
	unsigned int i;

	for (i = 0; i < loop->nr_slots; i++) {
		if (loop->slots[i].key == key)
			return &loop->slots[i];
	}
	return NULL;
}

void *tblk_loop_get_data(struct tblk_loop *loop, const void *key)
{
	struct data_slot *s = find_slot(loop, key);

	return s ? s->data : NULL;
}

/* Replacing or clearing (@data NULL) a slot runs the old value's destroy function. */
void tblk_loop_set_data(struct tblk_loop *loop, const void *key, void *data,
			void (*destroy)(void *data))
{
	struct data_slot *s = find_slot(loop, key), old = { 0 };

	if (s) {
		old = *s;
		if (data)
			*s = (struct data_slot){ key, data, destroy };
		else
			*s = loop->slots[--loop->nr_slots];
	} else if (data) {
		loop->slots = g_renew(struct data_slot, loop->slots, loop->nr_slots + 1);
		loop->slots[loop->nr_slots++] = (struct data_slot){ key, data, destroy };
	}
	/* Last, so that the destructor sees a consistent table. */
	if (old.destroy && old.data != data)
		old.destroy(old.data);
}

/* ---------------------------------------------------------------- polling and waiting */

/* Calls every poll function once; true if one of them handled work. */
static bool call_pollers(struct tblk_loop *loop)
{
	struct tblk_list *pos;
	bool progress = false;

	if (!loop->nr_pollers)
		return false;
	tblk_list_for_each(pos, &loop->handlers) {
		struct fd_handler *h = tblk_list_entry(pos, struct fd_handler, link);

		if (!h->deleted && h->poll && h->poll(h->opaque))
			progress = true;
	}
	return progress;
}

/*
 * Busy-polls for at most the adaptive window and never past @timeout_ns (-1: none).
 * Returns true if work turned up (sets *progress if a poll function handled some).
 * *polled_ns is how long it tried, in both cases.
 */
static bool poll_for_work(struct tblk_loop *loop, int64_t timeout_ns, bool *progress,
			  uint64_t *polled_ns)
{
	uint64_t window = loop->poll_ns, start, now;
	bool found = false;

	if (timeout_ns >= 0 && (uint64_t)timeout_ns < window)
		window = timeout_ns;
	start = now = tblk_clock_ns();
	do {
		if (call_pollers(loop)) {
			*progress = found = true;
			break;
		}
		if (loop_has_pending(loop)) {
			found = true;
			break;
		}
		tblk__cpu_relax();
		now = tblk_clock_ns();
	} while (now - start < window);
	*polled_ns = (found ? tblk_clock_ns() : now) - start;
	return found;
}

/*
 * Self-tuning of the polling window, the ski-rental way. Polling for an event that comes
 * after t ns costs t ns of CPU; sleeping for it costs about poll_break_even_ns (the
 * epoll_wait, two context switches, the producer's eventfd write), whenever it comes.
 * @waited_ns runs from the start of polling to the event: polling found it, or it woke
 * the sleeping loop (@event false: a timeout, which teaches nothing).
 * - an event that came within the break-even time would have been cheaper to poll for:
 *   grow the window (up to poll_max_ns) if the loop had to sleep for it and the event
 *   before it came soon too. One near event among far ones teaches nothing: at queue depth
 *   1 a guest's next kick may follow a completion closely, but every other wait is for the
 *   disk, and a window grown by the one is spent, in vain, on both;
 * - an event that came later cost more to poll for than a sleep would have, whether
 *   polling caught it or not: shrink the window.
 * So the loop polls where events follow each other closely (a busy device, a guest that
 * submits right after a completion) and sleeps where they come tens of microseconds
 * apart (a thread pool's completions on a slow disk), where polling would burn a CPU the
 * workers need.
 */
static void poll_adapt(struct tblk_loop *loop, uint64_t waited_ns, bool event, bool slept)
{
	if (!event || !loop->poll_max_ns)
		return;
	if (waited_ns <= loop->poll_break_even_ns) {
		if (loop->poll_near < 2)
			loop->poll_near++;
		if (!slept || loop->poll_near < 2)
			return;
		loop->poll_ns = loop->poll_ns ? loop->poll_ns * 2 : LOOP_POLL_FIRST_NS;
		if (loop->poll_ns < waited_ns)
			loop->poll_ns = waited_ns;
		if (loop->poll_ns > loop->poll_max_ns)
			loop->poll_ns = loop->poll_max_ns;
	} else {
		loop->poll_near = 0;
		loop->poll_ns /= 2;
		if (loop->poll_ns < LOOP_POLL_MIN_NS)
			loop->poll_ns = 0;
	}
}

static int epoll_wait_ns(struct tblk_loop *loop, struct epoll_event *events, int64_t timeout_ns)
{
	static bool no_pwait2;	/* [atomic] the kernel lacks epoll_pwait2() */
	int n, ms;

#ifdef SYS_epoll_pwait2
	if (timeout_ns > 0 && !__atomic_load_n(&no_pwait2, __ATOMIC_RELAXED)) {
		struct timespec ts = {
			.tv_sec = timeout_ns / 1000000000,
			.tv_nsec = timeout_ns % 1000000000,
		};

		n = syscall(SYS_epoll_pwait2, loop->epfd, events, LOOP_MAX_EVENTS, &ts, NULL, 0);
		if (n >= 0 || errno != ENOSYS)
			return n < 0 ? 0 : n;
		__atomic_store_n(&no_pwait2, true, __ATOMIC_RELAXED);
	}
#endif
	/* Round up: waking before a timer expires would only spin. */
	if (timeout_ns < 0)
		ms = -1;
	else
		ms = (int)TBLK_MIN((timeout_ns + 999999) / 1000000, (int64_t)INT_MAX);
	n = epoll_wait(loop->epfd, events, LOOP_MAX_EVENTS, ms);
	return n < 0 ? 0 : n;	/* EINTR: just another iteration */
}

/*
 * When work is known to be waiting, the non-blocking epoll_wait() is skipped so that a busy
 * loop makes no syscall per iteration; fds still get looked at every few iterations.
 */
static int epoll_ready(struct tblk_loop *loop, struct epoll_event *events, bool busy)
{
	if (busy && loop->nr_epoll_skips < LOOP_MAX_EPOLL_SKIPS) {
		loop->nr_epoll_skips++;
		return 0;
	}
	loop->nr_epoll_skips = 0;
	return epoll_wait_ns(loop, events, 0);
}

/*
 * After a sleep: a bounded one that found two or more completions waiting batched them (the
 * point of deferring); one that reached its bound with fewer was a miss: completions come
 * slower than the bound, or one was held back by a queue that does not move. After a miss,
 * the next lazy_skip sleeps are unbounded (completions wake the loop at once), 1, 2, 4 ...
 * up to LOOP_LAZY_MAX_SKIP after misses in a row.
 */
static void lazy_learn(struct tblk_loop *loop, bool bounded, bool bound_hit)
{
	struct tblk_work *head = __atomic_load_n(&loop->done_head, __ATOMIC_ACQUIRE);

	if (!bounded) {
		if (loop->lazy_skip)
			loop->lazy_skip--;
		return;
	}
	if (head && head->next) {
		loop->lazy_backoff = 1;
	} else if (bound_hit) {
		loop->lazy_skip = loop->lazy_backoff;
		if (loop->lazy_backoff < LOOP_LAZY_MAX_SKIP)
			loop->lazy_backoff *= 2;
	}
}

/* Polls, then sleeps in epoll if still nothing to do. Returns the number of events. */
static int loop_wait(struct tblk_loop *loop, struct epoll_event *events, bool blocking,
		     bool *progress)
{
	int64_t timeout = blocking ? timer_timeout_ns(loop) : 0;
	uint64_t start = 0, polled = 0;
	bool bounded, clamped;
	int n;

	if (loop_has_pending(loop))
		return epoll_ready(loop, events, true);
	if (timeout != 0 && loop->poll_ns) {
		start = tblk_clock_ns();
		if (poll_for_work(loop, timeout, progress, &polled)) {
			poll_adapt(loop, polled, true, false);
			return epoll_ready(loop, events, true);
		}
		if (timeout > 0)
			timeout = (uint64_t)timeout > polled ? timeout - (int64_t)polled : 0;
	}
	if (timeout == 0)
		return epoll_ready(loop, events, false);

	/* Completions may be left pending only during a bounded sleep (see defer_wake()). */
	bounded = loop->lazy_max_ns && !loop->lazy_skip &&
		  __atomic_load_n(&loop->pool_queued, __ATOMIC_RELAXED) >= LOOP_LAZY_MIN_QUEUED;
	__atomic_store_n(&loop->defer_ok, bounded, __ATOMIC_SEQ_CST);
	__atomic_store_n(&loop->notify_me, true, __ATOMIC_SEQ_CST);
	if (loop_has_pending(loop))
		timeout = 0;
	/* Only a sleep the bound ended can be a miss: not one a sooner timer ended. */
	clamped = bounded && (timeout < 0 || (uint64_t)timeout > loop->lazy_max_ns);
	if (clamped)
		timeout = (int64_t)loop->lazy_max_ns;
	if (!start)
		start = tblk_clock_ns();
	n = epoll_wait_ns(loop, events, timeout);
	__atomic_store_n(&loop->notify_me, false, __ATOMIC_SEQ_CST);
	loop->nr_epoll_skips = 0;
	if (timeout != 0) {
		lazy_learn(loop, bounded, clamped && n == 0);
		poll_adapt(loop, tblk_clock_ns() - start, n > 0, true);
	}
	return n;
}

/* ---------------------------------------------------------------- iterate, run */

bool tblk_loop_iterate(struct tblk_loop *loop, bool blocking)
{
	struct epoll_event events[LOOP_MAX_EVENTS];
	struct tblk_loop *prev = loop_enter(loop);
	bool progress = false;
	int n;

	loop->depth++;
	run_prepare_hooks(loop);
	n = loop_wait(loop, events, blocking, &progress);
	/* A kick asks for one more look at the state; this iteration is that look. */
	if (__atomic_load_n(&loop->kicked, __ATOMIC_SEQ_CST))
		__atomic_store_n(&loop->kicked, false, __ATOMIC_SEQ_CST);
	progress |= dispatch_fds(loop, events, n);
	progress |= run_timers(loop);
	progress |= run_bhs(loop);
	progress |= run_completions(loop);
	if (--loop->depth == 0 && loop->nr_deleted)
		reap_handlers(loop);
	loop_leave(loop, prev);
	return progress;
}

void tblk_loop_run(struct tblk_loop *loop)
{
	struct tblk_loop *prev = loop_enter(loop);

	/* Consumes the stop request, so a stop issued before run starts is not lost. */
	while (!__atomic_exchange_n(&loop->stop, false, __ATOMIC_SEQ_CST))
		tblk_loop_iterate(loop, true);
	loop_leave(loop, prev);
}

void tblk_loop_stop(struct tblk_loop *loop)
{
	__atomic_store_n(&loop->stop, true, __ATOMIC_SEQ_CST);
	tblk_loop_kick(loop);
}

/* ---------------------------------------------------------------- notifiers */

int tblk_notifier_init(struct tblk_notifier *n)
{
	n->fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	return n->fd < 0 ? -errno : 0;
}

void tblk_notifier_destroy(struct tblk_notifier *n)
{
	if (n->fd >= 0)
		close(n->fd);
	n->fd = -1;
}

void tblk_notifier_set(struct tblk_notifier *n)
{
	uint64_t one = 1;

	/* EAGAIN only when the counter is saturated, i.e. already set. */
	if (write(n->fd, &one, sizeof(one)) < 0)
		return;
}

bool tblk_notifier_test_and_clear(struct tblk_notifier *n)
{
	uint64_t v;

	return read(n->fd, &v, sizeof(v)) == sizeof(v) && v;
}
