/* SPDX-License-Identifier: MIT */
/*
 * iothread.c - a loop running in a thread of its own.
 *
 * Threading: tblk_iothread_new() and tblk_iothread_free() from any thread but the
 * iothread itself; tblk_iothread_get_loop() from any thread. The loop's own rules apply to
 * everything done with it.
 */
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "threadpool/threadpool-int.h"

struct tblk_iothread {
	char *name;		/* [const] */
	struct tblk_loop *loop;	/* [const] */
	pthread_t thread;	/* [const] */
};

static void *iothread_main(void *opaque)
{
	struct tblk_iothread *iot = opaque;

	tblk_loop_run(iot->loop);
	return NULL;
}

/* tblk_iothread_new() waiting for its thread to be inside tblk_loop_run(). */
struct iothread_start {
	struct tblk_mutex lock;
	struct tblk_cond cv;
	bool running;		/* [lock] */
};

/* On the iothread, inside tblk_loop_run(): the loop is running from now until it stops. */
static void iothread_started(void *opaque)
{
	struct iothread_start *st = opaque;

	/* Signalled under the lock: the waiter destroys both as soon as it sees running. */
	tblk_mutex_lock(&st->lock);
	st->running = true;
	tblk_cond_signal(&st->cv);
	tblk_mutex_unlock(&st->lock);
}

/*
 * Returns once the loop runs, so that from then on tblk_loop_is_running() is true and
 * tblk_loop_call_wait() and friends hand their work to the iothread rather than run it in
 * the caller, concurrently with the loop thread starting up.
 */
static void iothread_wait_running(struct tblk_iothread *iot)
{
	struct iothread_start st = { .running = false };

	tblk_mutex_init(&st.lock);
	tblk_cond_init(&st.cv);
	tblk_loop_call_soon(iot->loop, iothread_started, &st);
	tblk_mutex_lock(&st.lock);
	while (!st.running)
		tblk_cond_wait(&st.cv, &st.lock);
	tblk_mutex_unlock(&st.lock);
	tblk_cond_destroy(&st.cv);
	tblk_mutex_destroy(&st.lock);
}

struct tblk_iothread *tblk_iothread_new(const char *name, GError **errp)
{
	struct tblk_iothread *iot;
	char comm[16];
	sigset_t all, old;
	int r;

	iot = g_new0(struct tblk_iothread, 1);
	iot->name = g_strdup(name ? name : "iothread");
	iot->loop = tblk_loop_new(errp);
	if (!iot->loop)
		goto out_free;
	/* Signals go to the application's own threads, not to ours. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = pthread_create(&iot->thread, NULL, iothread_main, iot);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r) {
		tblk_error_set_errno(errp, r, "cannot create iothread '%s'", iot->name);
		goto out_free_loop;
	}
	/* The kernel keeps 15 characters; a name is a debugging aid, so truncate. */
	g_strlcpy(comm, iot->name, sizeof(comm));
	pthread_setname_np(iot->thread, comm);
	iothread_wait_running(iot);
	return iot;

out_free_loop:
	tblk_loop_free(iot->loop);
out_free:
	g_free(iot->name);
	g_free(iot);
	return NULL;
}

struct tblk_loop *tblk_iothread_get_loop(struct tblk_iothread *iot)
{
	return iot->loop;
}

void tblk_iothread_free(struct tblk_iothread *iot)
{
	if (!iot)
		return;
	tblk_loop_stop(iot->loop);
	pthread_join(iot->thread, NULL);
	tblk_loop_free(iot->loop);
	g_free(iot->name);
	g_free(iot);
}

uint64_t tblk__env_ns(const char *name, uint64_t dflt)
{
	const char *v = getenv(name);
	uint64_t n;

	if (!v || tblk_parse_uint64(v, &n) < 0)
		return dflt;
	return n;
}
