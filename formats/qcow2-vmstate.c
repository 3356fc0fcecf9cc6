/* SPDX-License-Identifier: MIT */
/*
 * qcow2-vmstate.c - qcow2's VM state area: where savevm keeps a VM's memory and device state,
 * right after the guest data, from the virtual size rounded up to what one L2 table maps.
 * The area is written and read through the image's own cluster mapping at those offsets
 * (the L1 table grows to cover it), so it never overlaps the guest's data.
 *
 * Threading: called by the block core with the node drained (graph/blk.c), in one thread.
 */
#include "formats/qcow2-int.h"

/* qemu's vm_state_offset: the first byte past what the L1 entries of the disk map. */
static uint64_t vm_state_offset(const struct qcow2_state *s)
{
	unsigned int bits = s->cluster_bits + s->l2_bits;

	return ((s->size + (1ull << bits) - 1) >> bits) << bits;
}

int tblk__qcow2_vmstate_rw(struct tblk_node *node, uint64_t pos, const struct iovec *iov,
			   int iovcnt, uint64_t bytes, bool write)
{
	struct qcow2_state *s = node->opaque;
	uint64_t off = vm_state_offset(s);

	if (pos > INT64_MAX - off || bytes > INT64_MAX - off - pos)
		return -EINVAL;
	if (write) {
		tblk_node_debug_event(node->file, TBLK_DBG_VMSTATE_SAVE);
		return tblk__qcow2_pwritev(node, off + pos, bytes, iov, iovcnt, 0);
	}
	tblk_node_debug_event(node->file, TBLK_DBG_VMSTATE_LOAD);
	return tblk__qcow2_preadv(node, off + pos, bytes, iov, iovcnt, 0);
}
