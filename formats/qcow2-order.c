/* SPDX-License-Identifier: MIT */
/*
 * qcow2-order.c - compressed writes place their clusters in the order they were submitted.
 *
 * qcow2 compresses a cluster before it allocates room for it, and packs compressed data one
 * cluster after the other; writes compressing side by side would take their room in the
 * order they finish compressing, so the same copy would lay the file out differently from run
 * to run (qemu-img convert -c writes one cluster after the other: its file is always the same).
 * Here compression still runs on all the pool's workers at once; only taking the room goes
 * in turn, so a tool that submits in order gets qemu-img's file.
 *
 * Each open image has its own struct qcow2_order, made at open and freed at close. A turn is
 * a ticket from the image's counter (tickets only increase), taken on the submitting loop
 * thread just before the request goes to the pool, and kept in the request's drv_scratch
 * (unused on the pool path) with the image's tag, a number no other image of the process
 * ever gets: a request whose scratch holds another image's tag, or stale bytes, has no turn
 * here. The image keeps its tickets not yet released; a write places once its ticket is the
 * lowest there, and releases its ticket once the room for its last cluster is taken (a
 * cluster stored uncompressed: once written); the waiter whose turn comes is woken alone, and
 * waits as a blocked pool worker, so the pool goes on compressing meanwhile. The pool runs
 * requests in the order they came, so the lowest is always running or done. Should a
 * ticketed request never reach the driver (the checks before it are mirrored where the
 * ticket is given, so none should), a waiter that sees the same lowest ticket for
 * ORDER_STALE_NS drops it, and close drops what is left. Requests without a ticket
 * (synchronous, throttled, or behind a serialising one) place whenever they come, as before.
 *
 * Threading: struct qcow2_order.mu is a leaf (taken with the image lock held or not; nothing
 * is taken under it); each waiter waits on its own cv.
 */
#include "formats/qcow2-order.h"

#define ORDER_TAG	0x71636f77326f7264ull	/* "qcow2ord", xor the image's number */
#define ORDER_STALE_NS	10000000000ull		/* 10 s */
#define ORDER_POLL_NS	100000000ull		/* waiters look again after 100 ms */
#define SCRATCH_TICKET	22			/* drv_scratch slots: the ticket */
#define SCRATCH_TAG	23			/* and the tag */

/* A worker waiting for its turn: woken alone when its ticket becomes the lowest. */
struct waiter {
	uint64_t ticket;	/* [const] the ticket it waits to be the lowest */
	struct tblk_cond cv;	/* waited on and signalled under the order's mu */
};

/* The turns of one image's compressed writes. Lock order: mu is a leaf. */
struct qcow2_order {
	struct tblk_mutex mu;
	uint64_t tag;		/* [const] names the image in drv_scratch */
	uint64_t next;		/* [mu] the next ticket */
	GArray *tickets;	/* [mu] uint64_t, ascending: taken, not released */
	GPtrArray *waiters;	/* [mu] struct waiter, on their threads' stacks */
	uint64_t seen_lowest;	/* [mu] the lowest a waiter saw last, */
	uint64_t seen_ns;	/* [mu] and since when */
};

/* Images given a tag so far: two images never share one, even at the same address. */
static uint64_t order_images;	/* [atomic] */

struct qcow2_order *tblk__qcow2_order_new(void)
{
	struct qcow2_order *o = g_new0(struct qcow2_order, 1);

	tblk_mutex_init(&o->mu);
	o->tag = ORDER_TAG ^ __atomic_add_fetch(&order_images, 1, __ATOMIC_RELAXED);
	o->next = 1;
	o->tickets = g_array_new(FALSE, FALSE, sizeof(uint64_t));
	o->waiters = g_ptr_array_new();
	return o;
}

void tblk__qcow2_order_free(struct qcow2_order *o)
{
	if (!o)
		return;
	/* Waiters run inside compressed writes, and close drains them all first. */
	assert(o->waiters->len == 0);
	g_array_free(o->tickets, TRUE);
	g_ptr_array_free(o->waiters, TRUE);
	tblk_mutex_destroy(&o->mu);
	g_free(o);
}

/* The ticket of @req for the image of @o, or 0. */
static uint64_t ticket_of(const struct qcow2_order *o, const struct tblk_req *req)
{
	if (!req || req->kind != TBLK_REQ_WRITE || !(req->flags & TBLK_REQ_COMPRESSED) ||
	    req->drv_scratch[SCRATCH_TAG] != o->tag)
		return 0;
	return req->drv_scratch[SCRATCH_TICKET];
}

static void remove_locked(struct qcow2_order *o, uint64_t ticket) TBLK_REQUIRES(o->mu)
{
	tblk_mutex_assert_held(&o->mu);
	for (guint i = 0; i < o->tickets->len; i++) {
		if (g_array_index(o->tickets, uint64_t, i) != ticket)
			continue;
		g_array_remove_index(o->tickets, i);
		break;
	}
	/* Only the one whose turn it is now: no herd of workers woken for nothing. */
	for (guint i = 0; i < o->waiters->len; i++) {
		struct waiter *w = o->waiters->pdata[i];

		if (!o->tickets->len || w->ticket <= g_array_index(o->tickets, uint64_t, 0))
			tblk_cond_signal(&w->cv);
	}
}

void tblk__qcow2_order_ticket(struct qcow2_order *o, struct tblk_req *req)
{
	req->drv_scratch[SCRATCH_TAG] = 0;
	/* As the pool path would refuse before the driver runs: no turn to take. */
	if (req->kind != TBLK_REQ_WRITE || !(req->flags & TBLK_REQ_COMPRESSED) || req->bytes == 0)
		return;
	tblk_mutex_lock(&o->mu);
	req->drv_scratch[SCRATCH_TICKET] = o->next;
	req->drv_scratch[SCRATCH_TAG] = o->tag;
	g_array_append_val(o->tickets, o->next);
	o->next++;
	tblk_mutex_unlock(&o->mu);
}

void tblk__qcow2_order_wait(struct qcow2_order *o)
{
	struct waiter w = { .ticket = ticket_of(o, tblk__req_current()) };

	if (!w.ticket)
		return;
	tblk_cond_init(&w.cv);
	tblk_mutex_lock(&o->mu);
	g_ptr_array_add(o->waiters, &w);
	while (o->tickets->len) {
		uint64_t lowest = g_array_index(o->tickets, uint64_t, 0), now = tblk_clock_ns();

		if (lowest >= w.ticket)	/* our turn (or ours was dropped as stale) */
			break;
		if (lowest != o->seen_lowest) {
			o->seen_lowest = lowest;
			o->seen_ns = now;
		} else if (now - o->seen_ns > ORDER_STALE_NS) {
			remove_locked(o, lowest);
			continue;
		}
		/* (as a blocked worker: the pool runs queued compressions meanwhile) */
		tblk_pool_timedwait(&w.cv, &o->mu, now + ORDER_POLL_NS);
	}
	g_ptr_array_remove_fast(o->waiters, &w);
	tblk_mutex_unlock(&o->mu);
	tblk_cond_destroy(&w.cv);
}

void tblk__qcow2_order_placed(struct qcow2_order *o, uint64_t offset, uint64_t bytes)
{
	struct tblk_req *req = tblk__req_current();

	if (req && offset + bytes >= req->offset + req->bytes)
		tblk__qcow2_order_release(o);
}

void tblk__qcow2_order_release(struct qcow2_order *o)
{
	struct tblk_req *req = tblk__req_current();
	uint64_t ticket = ticket_of(o, req);

	if (!ticket)
		return;
	req->drv_scratch[SCRATCH_TAG] = 0;	/* later pieces of the request go unordered */
	tblk_mutex_lock(&o->mu);
	remove_locked(o, ticket);
	tblk_mutex_unlock(&o->mu);
}
