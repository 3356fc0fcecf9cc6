/* SPDX-License-Identifier: MIT */
/*
 * qcow2-order.h - compressed writes place their clusters in the order they were submitted
 * (see qcow2-order.c).
 */
#ifndef TBLK_QCOW2_ORDER_H
#define TBLK_QCOW2_ORDER_H

#include "tracked/tracked.h"

/*
 * Gives @req, an asynchronous compressed write about to go to the pool, its turn among the
 * compressed writes of @node. Loop thread that submits @req.
 */
void tblk__qcow2_order_ticket(struct tblk_node *node, struct tblk_req *req);
/*
 * In the body of a compressed write (its pool worker), once its data is compressed: waits
 * until every compressed write of @node with an earlier turn has placed its clusters. Returns
 * at once for a write without a turn. Call with no lock held.
 */
void tblk__qcow2_order_wait(struct tblk_node *node);
/*
 * The compressed write whose body the thread runs has taken room in the file for its cluster
 * at guest [@offset, @offset + @bytes): if that is its last, the next in turn may go on (the
 * layout is settled; the data and the L2 entry follow meanwhile).
 */
void tblk__qcow2_order_placed(struct tblk_node *node, uint64_t offset, uint64_t bytes);
/* The compressed write whose body the thread runs has placed its clusters (or failed). */
void tblk__qcow2_order_release(struct tblk_node *node);

#endif /* TBLK_QCOW2_ORDER_H */
