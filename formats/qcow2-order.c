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
 * A turn is a ticket from one counter for all nodes (a ticket never repeats), taken on the
 * submitting loop thread just before the request goes to the pool, and kept in the request's
 * drv_scratch (unused on the pool path) with a tag naming the node. Per node, the tickets not
 * yet released; a write places once its ticket is the lowest there, and releases its ticket
 * once the room for its last cluster is taken (a cluster stored uncompressed: once written);
 * the waiter whose turn comes is woken alone, and waits as a blocked pool worker, so the pool
 * goes on compressing meanwhile. The pool runs requests in the order they came, so the
 * lowest is always running or done. Should a ticketed request
 * never reach the driver (the checks before it are mirrored where the ticket is given, so
 * none should), a waiter that sees the same lowest ticket for ORDER_STALE_NS drops it.
 * Requests without a ticket (synchronous, throttled, or behind a serialising one) place
 * whenever they come, as before.
 *
 * Threading: order_lock is a leaf guarding the table; each waiter waits on its own cv.
 */
#include <pthread.h>

#include "formats/qcow2-order.h"

#define ORDER_TAG	0x71636f77326f7264ull	/* "qcow2ord", xor the node's address */
#define ORDER_STALE_NS	10000000000ull		/* 10 s */
#define ORDER_POLL_NS	100000000ull		/* waiters look again after 100 ms */
#define SCRATCH_TICKET	22			/* drv_scratch slots: the ticket */
#define SCRATCH_TAG	23			/* and the tag */

/* A worker waiting for its turn: woken alone when its ticket becomes the lowest. */
struct waiter {
	uint64_t ticket;
	struct tblk_cond cv;
};

struct turns {
	GArray *tickets;	/* [order_lock] uint64_t, ascending: taken, not released */
	GPtrArray *waiters;	/* [order_lock] struct waiter, on their threads' stacks */
	uint64_t seen_lowest;	/* [order_lock] the lowest a waiter saw last, */
	uint64_t seen_ns;	/* [order_lock] and since when */
};

static pthread_once_t order_once = PTHREAD_ONCE_INIT;
static struct tblk_mutex order_lock;
static GHashTable *order_nodes;	/* [order_lock] struct tblk_node * -> struct turns */
static uint64_t order_next = 1;	/* [order_lock] the next ticket */

static void turns_free(gpointer p);

static void order_init(void)
{
	tblk_mutex_init(&order_lock);
	order_nodes = g_hash_table_new_full(g_direct_hash, g_direct_equal, NULL, turns_free);
}

static uint64_t tag_of(const struct tblk_node *node)
{
	return (uint64_t)(uintptr_t)node ^ ORDER_TAG;
}

/* The ticket of @req for @node, or 0. */
static uint64_t ticket_of(const struct tblk_node *node, const struct tblk_req *req)
{
	if (!req || req->kind != TBLK_REQ_WRITE || !(req->flags & TBLK_REQ_COMPRESSED) ||
	    req->drv_scratch[SCRATCH_TAG] != tag_of(node))
		return 0;
	return req->drv_scratch[SCRATCH_TICKET];
}

static void turns_remove_locked(struct tblk_node *node, struct turns *t, uint64_t ticket)
	TBLK_REQUIRES(order_lock)
{
	for (guint i = 0; i < t->tickets->len; i++) {
		if (g_array_index(t->tickets, uint64_t, i) != ticket)
			continue;
		g_array_remove_index(t->tickets, i);
		break;
	}
	if (t->tickets->len == 0 && t->waiters->len == 0) {
		g_hash_table_remove(order_nodes, node);
		return;
	}
	/* Only the one whose turn it is now: no herd of workers woken for nothing. */
	for (guint i = 0; i < t->waiters->len; i++) {
		struct waiter *w = t->waiters->pdata[i];

		if (!t->tickets->len || w->ticket <= g_array_index(t->tickets, uint64_t, 0))
			tblk_cond_signal(&w->cv);
	}
}

static void turns_free(gpointer p)
{
	struct turns *t = p;

	g_array_free(t->tickets, TRUE);
	g_ptr_array_free(t->waiters, TRUE);
	g_free(t);
}

void tblk__qcow2_order_ticket(struct tblk_node *node, struct tblk_req *req)
{
	struct turns *t;

	req->drv_scratch[SCRATCH_TAG] = 0;
	/* As the pool path would refuse before the driver runs: no turn to take. */
	if (req->kind != TBLK_REQ_WRITE || !(req->flags & TBLK_REQ_COMPRESSED) ||
	    req->bytes == 0 || node->read_only)
		return;
	pthread_once(&order_once, order_init);
	tblk_mutex_lock(&order_lock);
	t = g_hash_table_lookup(order_nodes, node);
	if (!t) {
		t = g_new0(struct turns, 1);
		t->tickets = g_array_new(FALSE, FALSE, sizeof(uint64_t));
		t->waiters = g_ptr_array_new();
		g_hash_table_insert(order_nodes, node, t);
	}
	req->drv_scratch[SCRATCH_TICKET] = order_next;
	req->drv_scratch[SCRATCH_TAG] = tag_of(node);
	g_array_append_val(t->tickets, order_next);
	order_next++;
	tblk_mutex_unlock(&order_lock);
}

void tblk__qcow2_order_wait(struct tblk_node *node)
{
	struct waiter w = { .ticket = ticket_of(node, tblk__req_current()) };
	struct turns *t;

	if (!w.ticket)
		return;
	tblk_cond_init(&w.cv);
	tblk_mutex_lock(&order_lock);
	t = g_hash_table_lookup(order_nodes, node);
	if (t)
		g_ptr_array_add(t->waiters, &w);
	/* (t stays while we are among its waiters) */
	while (t && t->tickets->len) {
		uint64_t lowest = g_array_index(t->tickets, uint64_t, 0), now = tblk_clock_ns();

		if (lowest >= w.ticket)	/* our turn (or ours was dropped as stale) */
			break;
		if (lowest != t->seen_lowest) {
			t->seen_lowest = lowest;
			t->seen_ns = now;
		} else if (now - t->seen_ns > ORDER_STALE_NS) {
			turns_remove_locked(node, t, lowest);
			continue;
		}
		/* (as a blocked worker: the pool runs queued compressions meanwhile) */
		tblk_pool_timedwait(&w.cv, &order_lock, now + ORDER_POLL_NS);
	}
	if (t) {
		g_ptr_array_remove_fast(t->waiters, &w);
		if (t->tickets->len == 0 && t->waiters->len == 0)
			g_hash_table_remove(order_nodes, node);
	}
	tblk_mutex_unlock(&order_lock);
	tblk_cond_destroy(&w.cv);
}

void tblk__qcow2_order_placed(struct tblk_node *node, uint64_t offset, uint64_t bytes)
{
	struct tblk_req *req = tblk__req_current();

	if (req && offset + bytes >= req->offset + req->bytes)
		tblk__qcow2_order_release(node);
}

void tblk__qcow2_order_release(struct tblk_node *node)
{
	struct tblk_req *req = tblk__req_current();
	uint64_t ticket = ticket_of(node, req);
	struct turns *t;

	if (!ticket)
		return;
	req->drv_scratch[SCRATCH_TAG] = 0;	/* later pieces of the request go unordered */
	tblk_mutex_lock(&order_lock);
	t = g_hash_table_lookup(order_nodes, node);
	if (t)
		turns_remove_locked(node, t, ticket);
	tblk_mutex_unlock(&order_lock);
}
