/* SPDX-License-Identifier: MIT */
/*
 * sync.c - condition variables on CLOCK_MONOTONIC and the monotonic clock.
 * Thread-safe; no state of its own.
 */
#include <time.h>

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
