/* SPDX-License-Identifier: MIT */
/*
 * sync.c - condition variables on CLOCK_MONOTONIC, the monotonic clock, and a bare futex.
 * Thread-safe; no state of its own.
 */
#include <linux/futex.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "common/common.h"

void tblk_cond_init(struct tblk_cond *cv)
{
	pthread_condattr_t attr;

	pthread_condattr_init(&attr);
	pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
	pthread_cond_init(&cv->c, &attr);
	pthread_condattr_destroy(&attr);
}

void tblk_cond_destroy(struct tblk_cond *cv)
{
	pthread_cond_destroy(&cv->c);
}

void tblk_cond_wait(struct tblk_cond *cv, struct tblk_mutex *mu) TBLK_NO_TSA
{
#ifdef TBLK_DEBUG
	tblk_mutex_assert_held(mu);
	mu->locked = false;
#endif
	pthread_cond_wait(&cv->c, &mu->m);
#ifdef TBLK_DEBUG
	mu->owner = pthread_self();
	mu->locked = true;
#endif
}

bool tblk_cond_timedwait(struct tblk_cond *cv, struct tblk_mutex *mu, uint64_t deadline_ns)
	TBLK_NO_TSA
{
	struct timespec ts = {
		.tv_sec = deadline_ns / 1000000000ull,
		.tv_nsec = deadline_ns % 1000000000ull,
	};
	int r;

#ifdef TBLK_DEBUG
	tblk_mutex_assert_held(mu);
	mu->locked = false;
#endif
	r = pthread_cond_timedwait(&cv->c, &mu->m, &ts);
#ifdef TBLK_DEBUG
	mu->owner = pthread_self();
	mu->locked = true;
#endif
	return r != ETIMEDOUT;
}

uint64_t tblk_clock_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

bool tblk__futex_wait(uint32_t *word, uint32_t val, uint64_t deadline_ns)
{
	struct timespec ts = {
		.tv_sec = (time_t)(deadline_ns / 1000000000ull),
		.tv_nsec = (long)(deadline_ns % 1000000000ull),
	};

	/* WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, which WAIT does not. */
	if (syscall(SYS_futex, word, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, val,
		    deadline_ns ? &ts : NULL, NULL, FUTEX_BITSET_MATCH_ANY) < 0)
		return errno != ETIMEDOUT;
	return true;
}

void tblk__futex_wake(uint32_t *word, int n)
{
	syscall(SYS_futex, word, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, n, NULL, NULL, 0);
}
