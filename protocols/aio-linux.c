/* SPDX-License-Identifier: MIT */
/*
 * aio-linux.c - the Linux AIO (libaio) engine: one io_setup() context of depth 128 per loop,
 * batched io_submit() from the loop's prepare hook, completions signalled on an eventfd and
 * reaped straight from the completion ring the kernel maps into our address space, so that
 * reaping costs no syscall.  io_getevents() is the fallback when the ring's layout is not
 * the one we know.
 *
 * Threading: an engine is used only on its loop's thread.  The ring is shared with the
 * kernel, which produces at `tail` (we load it with acquire) and reads `head` to recycle
 * slots (we store it with release once an event has been copied out).
 */
#include <libaio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "protocols/aio-int.h"

/* The user-visible header of the kernel's AIO completion ring (fs/aio.c), at the ctx id. */
#define AIO_RING_MAGIC	0xa10a10a1u
struct aio_ring {
	unsigned int id;		/* [kernel] */
	unsigned int nr;		/* [kernel] slots in io_events */
	unsigned int head;		/* [loop thread] next event to consume (kernel reads) */
	unsigned int tail;		/* [kernel] next slot the kernel fills */
	unsigned int magic;		/* [kernel] AIO_RING_MAGIC */
	unsigned int compat_features;	/* [kernel] */
	unsigned int incompat_features;	/* [kernel] nonzero: a layout we do not understand */
	unsigned int header_length;	/* [kernel] sizeof(struct aio_ring) */
	struct io_event io_events[];	/* [kernel] filled at tail, consumed at head */
};

/* The iocb lives in the op's scratch space, so a submission allocates nothing. */
_Static_assert(sizeof(struct iocb) <= sizeof(((struct tblk_aio_op *)0)->priv),
	       "struct iocb does not fit in tblk_aio_op.priv");

struct aio_linux {
	struct tblk_aio_engine eng;		/* common part; tags inside */
	io_context_t ctx;			/* [const] */
	struct aio_ring *ring;			/* [const] NULL: reap with io_getevents() */
	unsigned int ring_nr;			/* [const] ring->nr, read once */
	struct iocb *iocbs[TBLK_AIO_DEPTH];	/* [loop thread] io_submit() argument array */
};

/* Tests set this before creating an engine to exercise the io_getevents() fallback. */
bool tblk__aio_linux_no_ring;

static inline struct aio_linux *to_linux(struct tblk_aio_engine *eng)
{
	return tblk_container_of(eng, struct aio_linux, eng);
}

static struct iocb *prep_iocb(struct aio_linux *a, struct tblk_aio_op *op)
{
	struct iocb *cb = (struct iocb *)op->priv;

	/* One-element vectors use the plain opcodes: the kernel then skips importing an iovec. */
	switch (op->type) {
	case TBLK_AIO_READ:
		if (op->iovcnt == 1)
			io_prep_pread(cb, op->fd, op->iov[0].iov_base, op->iov[0].iov_len,
				      op->offset);
		else
			io_prep_preadv(cb, op->fd, op->iov, op->iovcnt, op->offset);
		break;
	case TBLK_AIO_WRITE:
		if (op->iovcnt == 1)
			io_prep_pwrite(cb, op->fd, op->iov[0].iov_base, op->iov[0].iov_len,
				       op->offset);
		else
			io_prep_pwritev(cb, op->fd, op->iov, op->iovcnt, op->offset);
		break;
	case TBLK_AIO_FDSYNC:
		io_prep_fdsync(cb, op->fd);
		break;
	default:
		/* A bad type is refused by io_submit() with -EINVAL, completing the op. */
		memset(cb, 0, sizeof(*cb));
		cb->aio_fildes = op->fd;
		cb->aio_lio_opcode = -1;
		break;
	}
	cb->data = op;
	io_set_eventfd(cb, a->eng.efd);
	return cb;
}

/* The kernel took the first @n queued ops. */
static void accept_ops(struct tblk_aio_engine *eng, unsigned int n)
{
	unsigned int i;

	for (i = 0; i < n; i++)
		tblk__aio_queue_pop(eng);
	eng->in_flight += n;
	if (eng->in_flight > eng->max_in_flight)
		eng->max_in_flight = eng->in_flight;
}

/*
 * Submits as much of the queue as free slots allow, one io_submit() per pass.  A partial
 * submit is retried at once: if the op that stopped it is bad, the retry reports its error
 * with a negative return and completes it alone; if the kernel is out of resources, the
 * retry gets -EAGAIN and the rest waits for completions (or the retry timer).  A completion
 * run from here may submit or flush again; the state is consistent at every call.
 */
static void linux_flush(struct tblk_aio_engine *eng)
{
	struct aio_linux *a = to_linux(eng);

	while (eng->queue && eng->in_flight < TBLK_AIO_DEPTH) {
		unsigned int n = 0, room = TBLK_AIO_DEPTH - eng->in_flight;
		struct tblk_aio_op *op;
		int ret;

		for (op = eng->queue; op && n < room; op = op->next)
			a->iocbs[n++] = prep_iocb(a, op);
		ret = io_submit(a->ctx, n, a->iocbs);
		if (ret > 0) {
			accept_ops(eng, ret);
			continue;
		}
		if (ret == 0 || ret == -EAGAIN || ret == -EINTR) {
			if (!eng->in_flight)
				tblk__aio_retry_later(eng);
			return;
		}
		op = tblk__aio_queue_pop(eng);
		op->complete(op, ret);
	}
}

/*
 * Consumes the ring one event at a time, publishing `head` before running the completion:
 * a completion that re-enters the loop and reaps again then starts after this event.
 */
static bool reap_ring(struct aio_linux *a)
{
	struct aio_ring *ring = a->ring;
	unsigned int batch = 1;
	bool progress = false;

	for (;;) {
		unsigned int head = __atomic_load_n(&ring->head, __ATOMIC_RELAXED);
		unsigned int tail = __atomic_load_n(&ring->tail, __ATOMIC_ACQUIRE);
		struct tblk_aio_op *op;
		long res;

		if (head == tail)
			break;
		op = ring->io_events[head].data;
		res = (long)ring->io_events[head].res;
		if (++head == a->ring_nr)
			head = 0;
		__atomic_store_n(&ring->head, head, __ATOMIC_RELEASE);
		a->eng.in_flight--;
		op->complete(op, res);
		progress = true;
		tblk__aio_reap_flush(&a->eng, &batch);
	}
	return progress;
}

/* The fallback: io_getevents() without waiting, in batches on the stack (re-entrant). */
static bool reap_syscall(struct aio_linux *a)
{
	struct timespec zero = { 0, 0 };
	struct io_event ev[32];
	unsigned int batch = 1;
	bool progress = false;
	int n, i;

	do {
		n = io_getevents(a->ctx, 0, TBLK_ARRAY_SIZE(ev), ev, &zero);
		if (n <= 0)
			break;
		for (i = 0; i < n; i++) {
			struct tblk_aio_op *op = ev[i].data;

			a->eng.in_flight--;
			op->complete(op, (long)ev[i].res);
			tblk__aio_reap_flush(&a->eng, &batch);
		}
		progress = true;
	} while (n == (int)TBLK_ARRAY_SIZE(ev));
	return progress;
}

static bool linux_reap(struct aio_linux *a)
{
	bool progress = a->ring ? reap_ring(a) : reap_syscall(a);

	/* What is still queued (held back for lack of slots, or a last partial batch) goes now. */
	if (progress && a->eng.queue)
		linux_flush(&a->eng);
	return progress;
}

static void linux_on_read(void *opaque)
{
	struct aio_linux *a = opaque;

	/* Clear before reaping, so an event arriving meanwhile sets it again: no lost wake-up. */
	tblk__aio_clear_eventfd(&a->eng);
	linux_reap(a);
}

static bool linux_poll(void *opaque)
{
	struct aio_linux *a = opaque;

	return linux_reap(a);
}

static void linux_free(struct tblk_aio_engine *eng)
{
	struct aio_linux *a = to_linux(eng);

	/* io_destroy() waits for anything still in flight, so the kernel lets go of the ring. */
	io_destroy(a->ctx);
	if (eng->efd >= 0)
		close(eng->efd);
	g_free(a);
}

static const struct tblk__aio_backend linux_backend = {
	.flush = linux_flush,
	.free = linux_free,
};

static struct aio_ring *usable_ring(io_context_t ctx)
{
	struct aio_ring *ring = (struct aio_ring *)ctx;

	if (tblk__aio_linux_no_ring)
		return NULL;
	if (ring->magic != AIO_RING_MAGIC || ring->incompat_features != 0 ||
	    ring->header_length != sizeof(*ring) || ring->nr == 0)
		return NULL;
	return ring;
}

struct tblk_aio_engine *tblk__aio_linux_new(struct tblk_loop *loop, GError **errp)
{
	struct aio_linux *a = g_new0(struct aio_linux, 1);
	int ret;

	tblk__aio_engine_init(&a->eng, &linux_backend, loop, TBLK_AIO_LINUX);
	ret = io_setup(TBLK_AIO_DEPTH, &a->ctx);
	if (ret < 0) {
		tblk_error_set_errno(errp, -ret, "io_setup(%u) failed", TBLK_AIO_DEPTH);
		goto out_free;
	}
	a->eng.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (a->eng.efd < 0) {
		tblk_error_set_errno(errp, errno, "cannot create an eventfd for Linux AIO");
		goto out_io_destroy;
	}
	a->ring = usable_ring(a->ctx);
	if (a->ring)
		a->ring_nr = a->ring->nr;
	/* Without the ring, polling would cost a syscall per spin: only the eventfd then. */
	ret = tblk_loop_set_fd_handler(loop, a->eng.efd, linux_on_read, NULL,
				       a->ring ? linux_poll : NULL, a);
	if (ret < 0) {
		tblk_error_set_errno(errp, -ret, "cannot watch the Linux AIO eventfd");
		goto out_close_efd;
	}
	return &a->eng;

out_close_efd:
	close(a->eng.efd);
out_io_destroy:
	io_destroy(a->ctx);
out_free:
	g_free(a);
	return NULL;
}

bool tblk__aio_linux_probe(void)
{
	io_context_t ctx = 0;

	if (io_setup(1, &ctx) < 0)
		return false;
	io_destroy(ctx);
	return true;
}
