/* SPDX-License-Identifier: MIT */
/*
 * threadpool-int.h - what the pool (pool.c) and the event loop (loop.c) tell each other:
 * the loop's lock-free completion list that workers push finished items onto, and the
 * pool's count of items whose `done` has not returned yet.
 *
 * Threading: as stated per function.
 */
#ifndef TBLK_THREADPOOL_INT_H
#define TBLK_THREADPOOL_INT_H

#include "threadpool/threadpool.h"

/* A pause hint for spin loops: lets the sibling hyperthread run, saves power. */
static inline void tblk__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield" ::: "memory");
#else
	__asm__ __volatile__("" ::: "memory");
#endif
}

/*
 * Hands @work (fn has run, work->ret is set) to @loop, which runs work->done and then
 * tblk__pool_work_done(work->pool). Wakes the loop only if the completion list was empty
 * and the loop may be asleep. The caller must not touch @work afterwards. Any thread.
 */
void tblk__loop_push_completion(struct tblk_loop *loop, struct tblk_work *work);

/*
 * Counts an item whose completion is due on @loop into, and out of, a pool queue: queued
 * before it is enqueued, started when a worker takes it (before its fn runs). Completions
 * may then defer the loop's wake-up while enough items are queued. Any thread.
 */
void tblk__loop_item_queued(struct tblk_loop *loop);
void tblk__loop_item_started(struct tblk_loop *loop);

/* An item of @pool has completed (its done returned, or it had none). Any thread. */
void tblk__pool_work_done(struct tblk_pool *pool);

/*
 * A tuning knob from the environment (for benchmarks): the value of @name as a decimal
 * count of nanoseconds, or @dflt if unset or malformed.
 */
uint64_t tblk__env_ns(const char *name, uint64_t dflt);

#endif /* TBLK_THREADPOOL_INT_H */
