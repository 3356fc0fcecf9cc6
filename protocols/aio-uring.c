/* SPDX-License-Identifier: MIT */
/*
 * aio-uring.c - the io_uring (liburing) engine: one ring of 128 entries per loop, SQEs
 * filled from the queue and handed over with one io_uring_submit() per loop iteration (the
 * prepare hook), completions signalled on a registered eventfd and reaped from the CQ ring
 * in user space with io_uring_peek_cqe()/io_uring_cq_advance().
 *
 * Threading: an engine and its ring are used only on its loop's thread.  At most 128 ops
 * are in flight, so the CQ (twice the SQ) never overflows.
 */
#include <liburing.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "protocols/aio-int.h"

struct aio_uring {
	struct tblk_aio_engine eng;	/* common part; tags inside */
	struct io_uring ring;		/* [loop thread] */
	bool have_rw;			/* [const] IORING_OP_READ/WRITE exist (kernel >= 5.6) */
	bool stalled;			/* [loop thread] SQEs left in the SQ by a failed submit */
};

static inline struct aio_uring *to_uring(struct tblk_aio_engine *eng)
{
	return tblk_container_of(eng, struct aio_uring, eng);
}

static void prep_sqe(struct aio_uring *u, struct io_uring_sqe *sqe, struct tblk_aio_op *op)
{
	/* One-element vectors use the plain opcodes: the kernel then skips importing an iovec. */
	bool plain = op->iovcnt == 1 && u->have_rw && op->iov[0].iov_len <= UINT32_MAX;

	switch (op->type) {
	case TBLK_AIO_READ:
		if (plain)
			io_uring_prep_read(sqe, op->fd, op->iov[0].iov_base, op->iov[0].iov_len,
					   op->offset);
		else
			io_uring_prep_readv(sqe, op->fd, op->iov, op->iovcnt, op->offset);
		break;
	case TBLK_AIO_WRITE:
		if (plain)
			io_uring_prep_write(sqe, op->fd, op->iov[0].iov_base, op->iov[0].iov_len,
					    op->offset);
		else
			io_uring_prep_writev(sqe, op->fd, op->iov, op->iovcnt, op->offset);
		break;
	case TBLK_AIO_FDSYNC:
		io_uring_prep_fsync(sqe, op->fd, IORING_FSYNC_DATASYNC);
		break;
	default:
		/* An opcode the kernel does not know completes with -EINVAL. */
		io_uring_prep_nop(sqe);
		sqe->opcode = IORING_OP_LAST;
		break;
	}
	io_uring_sqe_set_data(sqe, op);
}

/*
 * Moves queued ops into free SQEs (at most TBLK_AIO_DEPTH in flight) and submits them with
 * one syscall.  If the kernel refuses (-EAGAIN, -EBUSY, ...), the SQEs stay in the SQ and
 * the next flush, from a completion or the retry timer, resubmits them.
 */
static void uring_flush(struct tblk_aio_engine *eng)
{
	struct aio_uring *u = to_uring(eng);
	int ret;

	while (eng->queue && eng->in_flight < TBLK_AIO_DEPTH) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);

		if (!sqe)
			break;
		prep_sqe(u, sqe, tblk__aio_queue_pop(eng));
		eng->in_flight++;
	}
	if (eng->in_flight > eng->max_in_flight)
		eng->max_in_flight = eng->in_flight;
	if (!io_uring_sq_ready(&u->ring)) {
		u->stalled = false;
		return;
	}
	ret = io_uring_submit(&u->ring);
	u->stalled = ret < 0 || io_uring_sq_ready(&u->ring) > 0;
	if (u->stalled)
		tblk__aio_retry_later(eng);
}

static bool uring_reap(struct aio_uring *u)
{
	struct io_uring_cqe *cqe;
	unsigned int batch = 1;
	bool progress = false;

	/* cq_ready is a plain ring read; peek_cqe could enter the kernel if the CQ is empty. */
	while (io_uring_cq_ready(&u->ring) && io_uring_peek_cqe(&u->ring, &cqe) == 0) {
		struct tblk_aio_op *op = io_uring_cqe_get_data(cqe);
		long res = cqe->res;

		/* Advance first: a completion that re-enters the loop reaps after this CQE. */
		io_uring_cq_advance(&u->ring, 1);
		u->eng.in_flight--;
		op->complete(op, res);
		progress = true;
		tblk__aio_reap_flush(&u->eng, &batch);
	}
	/* What is still queued (held back for lack of slots, or a last partial batch) goes now. */
	if (progress && (u->eng.queue || u->stalled))
		uring_flush(&u->eng);
	return progress;
}

static void uring_on_read(void *opaque)
{
	struct aio_uring *u = opaque;

	/* Clear before reaping, so a CQE arriving meanwhile sets it again: no lost wake-up. */
	tblk__aio_clear_eventfd(&u->eng);
	uring_reap(u);
}

static bool uring_poll(void *opaque)
{
	return uring_reap(opaque);
}

static void uring_free(struct tblk_aio_engine *eng)
{
	struct aio_uring *u = to_uring(eng);

	io_uring_queue_exit(&u->ring);
	if (eng->efd >= 0)
		close(eng->efd);
	g_free(u);
}

static const struct tblk__aio_backend uring_backend = {
	.flush = uring_flush,
	.free = uring_free,
};

static bool probe_rw_opcodes(struct io_uring *ring)
{
	struct io_uring_probe *p = io_uring_get_probe_ring(ring);
	bool ok;

	if (!p)
		return false;
	ok = io_uring_opcode_supported(p, IORING_OP_READ) &&
	     io_uring_opcode_supported(p, IORING_OP_WRITE);
	io_uring_free_probe(p);
	return ok;
}

struct tblk_aio_engine *tblk__aio_uring_new(struct tblk_loop *loop, GError **errp)
{
	struct aio_uring *u = g_new0(struct aio_uring, 1);
	int ret;

	tblk__aio_engine_init(&u->eng, &uring_backend, loop, TBLK_AIO_URING);
	ret = io_uring_queue_init(TBLK_AIO_DEPTH, &u->ring, 0);
	if (ret < 0) {
		tblk_error_set_errno(errp, -ret, "io_uring_queue_init(%u) failed", TBLK_AIO_DEPTH);
		goto out_free;
	}
	u->have_rw = probe_rw_opcodes(&u->ring);
	u->eng.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (u->eng.efd < 0) {
		tblk_error_set_errno(errp, errno, "cannot create an eventfd for io_uring");
		goto out_queue_exit;
	}
	ret = io_uring_register_eventfd(&u->ring, u->eng.efd);
	if (ret < 0) {
		tblk_error_set_errno(errp, -ret, "cannot register an eventfd with io_uring");
		goto out_close_efd;
	}
	ret = tblk_loop_set_fd_handler(loop, u->eng.efd, uring_on_read, NULL, uring_poll, u);
	if (ret < 0) {
		tblk_error_set_errno(errp, -ret, "cannot watch the io_uring eventfd");
		goto out_close_efd;
	}
	return &u->eng;

out_close_efd:
	close(u->eng.efd);
out_queue_exit:
	io_uring_queue_exit(&u->ring);
out_free:
	g_free(u);
	return NULL;
}

bool tblk__aio_uring_probe(void)
{
	struct io_uring ring;

	if (io_uring_queue_init(2, &ring, 0) < 0)
		return false;
	io_uring_queue_exit(&ring);
	return true;
}
