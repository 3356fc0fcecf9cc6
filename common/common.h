/* SPDX-License-Identifier: MIT */
/*
 * common.h - small helpers every layer of tblk may use: compiler attributes, clang's
 * thread-safety annotations, mutex and condition wrappers that assert the lock, an intrusive
 * doubly linked list, and the error helpers of the control path.
 *
 * Threading: everything here is either pure or thread-safe as documented per helper.
 */
#ifndef TBLK_COMMON_H
#define TBLK_COMMON_H

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <glib.h>

#include "config-host.h"

#define TBLK_EXPORT	__attribute__((visibility("default")))
#define TBLK_UNUSED	__attribute__((unused))
#define TBLK_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define tblk_likely(x)	__builtin_expect(!!(x), 1)
#define tblk_unlikely(x) __builtin_expect(!!(x), 0)

#define TBLK_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define tblk_container_of(ptr, type, member) \
	((type *)((char *)(ptr) - offsetof(type, member)))
#define TBLK_MIN(a, b) ((a) < (b) ? (a) : (b))
#define TBLK_MAX(a, b) ((a) > (b) ? (a) : (b))
#define TBLK_ALIGN_DOWN(n, m) ((n) / (m) * (m))
#define TBLK_ALIGN_UP(n, m) TBLK_ALIGN_DOWN((n) + (m) - 1, (m))
#define TBLK_IS_POW2(n) ((n) != 0 && ((n) & ((n) - 1)) == 0)

/* clang -Wthread-safety annotations; no-ops elsewhere. */
#if defined(__clang__)
#define TBLK_TSA(x) __attribute__((x))
#else
#define TBLK_TSA(x)
#endif
#define TBLK_REQUIRES(...) TBLK_TSA(requires_capability(__VA_ARGS__))
#define TBLK_ACQUIRES(...) TBLK_TSA(acquire_capability(__VA_ARGS__))
#define TBLK_RELEASES(...) TBLK_TSA(release_capability(__VA_ARGS__))
#define TBLK_NO_TSA TBLK_TSA(no_thread_safety_analysis)

/*
 * A mutex that knows its owner in debug builds, so `_locked` functions can assert the
 * caller holds it.  Leaf unless the struct that embeds it documents an order.
 */
struct TBLK_TSA(capability("mutex")) tblk_mutex {
	pthread_mutex_t m;
#ifdef TBLK_DEBUG
	pthread_t owner;	/* [m] thread holding it, valid while locked */
	bool locked;		/* [m] */
#endif
};

static inline void tblk_mutex_init(struct tblk_mutex *mu)
{
	pthread_mutex_init(&mu->m, NULL);
#ifdef TBLK_DEBUG
	mu->locked = false;
#endif
}

static inline void tblk_mutex_destroy(struct tblk_mutex *mu)
{
	pthread_mutex_destroy(&mu->m);
}

static inline void tblk_mutex_lock(struct tblk_mutex *mu) TBLK_ACQUIRES(mu) TBLK_NO_TSA
{
	int r = pthread_mutex_lock(&mu->m);

	assert(r == 0);
	(void)r;
#ifdef TBLK_DEBUG
	mu->owner = pthread_self();
	mu->locked = true;
#endif
}

static inline void tblk_mutex_unlock(struct tblk_mutex *mu) TBLK_RELEASES(mu) TBLK_NO_TSA
{
#ifdef TBLK_DEBUG
	assert(mu->locked && pthread_equal(mu->owner, pthread_self()));
	mu->locked = false;
#endif
	pthread_mutex_unlock(&mu->m);
}

/* Debug builds: abort unless the calling thread holds @mu.  Use on entry of `_locked`. */
#ifdef TBLK_DEBUG
#define tblk_mutex_assert_held(mu) \
	assert((mu)->locked && pthread_equal((mu)->owner, pthread_self()))
#else
#define tblk_mutex_assert_held(mu) ((void)(mu))
#endif

/* A condition variable on CLOCK_MONOTONIC, always used with a struct tblk_mutex. */
struct tblk_cond {
	pthread_cond_t c;
};

void tblk_cond_init(struct tblk_cond *cv);
void tblk_cond_destroy(struct tblk_cond *cv);
/* Waits on @cv; @mu must be held.  Callers loop on their predicate. */
void tblk_cond_wait(struct tblk_cond *cv, struct tblk_mutex *mu);
/* As tblk_cond_wait() but gives up at @deadline_ns (tblk_clock_ns()); false on timeout. */
bool tblk_cond_timedwait(struct tblk_cond *cv, struct tblk_mutex *mu, uint64_t deadline_ns);
static inline void tblk_cond_signal(struct tblk_cond *cv)
{
	pthread_cond_signal(&cv->c);
}
static inline void tblk_cond_broadcast(struct tblk_cond *cv)
{
	pthread_cond_broadcast(&cv->c);
}

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t tblk_clock_ns(void);

/*
 * A futex on a 32-bit word of one process: sleep while *word == val, until woken or, if
 * @deadline_ns is not 0, until that tblk_clock_ns() time (false then). May return early
 * (true) for no reason: callers recheck the word. Data handed over with the word must be
 * published and read through atomics (release store, acquire load) to be visible.
 */
bool tblk__futex_wait(uint32_t *word, uint32_t val, uint64_t deadline_ns);
/* Wakes up to @n threads sleeping on @word. */
void tblk__futex_wake(uint32_t *word, int n);

/* Intrusive doubly linked list; a head is a node linked to itself when empty. */
struct tblk_list {
	struct tblk_list *next, *prev;
};

#define TBLK_LIST_INIT(name) { &(name), &(name) }
static inline void tblk_list_init(struct tblk_list *h)
{
	h->next = h->prev = h;
}
static inline bool tblk_list_empty(const struct tblk_list *h)
{
	return h->next == h;
}
static inline void tblk_list_add_tail(struct tblk_list *h, struct tblk_list *n)
{
	n->prev = h->prev;
	n->next = h;
	h->prev->next = n;
	h->prev = n;
}
static inline void tblk_list_del(struct tblk_list *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	n->next = n->prev = n;
}
#define tblk_list_entry(ptr, type, member) tblk_container_of(ptr, type, member)
#define tblk_list_for_each(pos, head) \
	for ((pos) = (head)->next; (pos) != (head); (pos) = (pos)->next)
#define tblk_list_for_each_safe(pos, tmp, head) \
	for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head); \
	     (pos) = (tmp), (tmp) = (pos)->next)

/* Control-path errors: GError in the TBLK_ERROR domain, code = positive errno. */
#define TBLK_ERROR tblk_error_quark()
GQuark tblk_error_quark(void);

/* Sets *errp (if errp is non-NULL and *errp is NULL) and returns -@err. */
int tblk_error_set(GError **errp, int err, const char *fmt, ...) TBLK_PRINTF(3, 4);
/* A warning, to the handler set with tblk_set_warning_handler() (dropped without one). */
void tblk__warn(const char *fmt, ...) TBLK_PRINTF(1, 2);
/* As tblk_error_set() with ": strerror(err)" appended, the way qemu words OS errors. */
int tblk_error_set_errno(GError **errp, int err, const char *fmt, ...) TBLK_PRINTF(3, 4);
/* Prefixes an existing *errp with "fmt: ". */
void tblk_error_prepend(GError **errp, const char *fmt, ...) TBLK_PRINTF(2, 3);

/* Parses an unsigned decimal or 0x number that must fill @s; -EINVAL or -ERANGE. */
int tblk_parse_uint64(const char *s, uint64_t *out);
/* Parses a boolean option value: on/off, true/false, yes/no, 1/0. */
int tblk_parse_bool(const char *s, bool *out);

#endif /* TBLK_COMMON_H */
