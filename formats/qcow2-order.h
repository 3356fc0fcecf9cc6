/* SPDX-License-Identifier: MIT */
/*
 * qcow2-order.h - compressed writes place their clusters in the order they were submitted
 * (see qcow2-order.c). One struct qcow2_order per open image, owned by its struct
 * qcow2_state.
 */
#ifndef TBLK_QCOW2_ORDER_H
#define TBLK_QCOW2_ORDER_H

#include "tracked/tracked.h"

struct qcow2_order;

/* The turns of a newly opened image: none taken yet. Never fails. */
struct qcow2_order *tblk__qcow2_order_new(void);
/*
 * At close (drained: no compressed write of the image runs, so none waits) or when the open
 * fails: drops tickets never released (requests refused before reaching the driver) and
 * frees @o. NULL is accepted.
 */
void tblk__qcow2_order_free(struct qcow2_order *o);
/*
 * Gives @req, an asynchronous compressed write about to go to the pool, its turn among the
 * compressed writes of the image of @o, which must be writable (a read-only image refuses
 * them before its driver runs: their tickets would never be released). Loop thread that
 * submits @req.
 */
void tblk__qcow2_order_ticket(struct qcow2_order *o, struct tblk_req *req);
/*
 * In the body of a compressed write (its pool worker), once its data is compressed: waits
 * until every compressed write of the image with an earlier turn has placed its clusters.
 * Returns at once for a write without a turn. Call with no lock held.
 */
void tblk__qcow2_order_wait(struct qcow2_order *o);
/*
 * The compressed write whose body the thread runs has taken room in the file for its cluster
 * at guest [@offset, @offset + @bytes): if that is its last, the next in turn may go on (the
 * layout is settled; the data and the L2 entry follow meanwhile).
 */
void tblk__qcow2_order_placed(struct qcow2_order *o, uint64_t offset, uint64_t bytes);
/* The compressed write whose body the thread runs has placed its clusters (or failed). */
void tblk__qcow2_order_release(struct qcow2_order *o);

#endif /* TBLK_QCOW2_ORDER_H */
