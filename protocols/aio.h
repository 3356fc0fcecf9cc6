/* SPDX-License-Identifier: MIT */
/*
 * aio.h - asynchronous kernel I/O engines shared by the file protocol: Linux AIO (libaio)
 * and io_uring (liburing). One engine instance per event loop and kind, created lazily on
 * first use and kept in the loop's data slot; all file nodes served by that loop share it.
 *
 * Threading: everything here runs on the loop thread of the loop given. Submission is
 * batched: tblk__aio_submit() only queues the operation; the loop's prepare hook issues one
 * io_submit()/io_uring_submit() per loop iteration for everything queued since. Completions
 * are reaped from the kernel's completion ring without a syscall when it is non-empty, from
 * the engine's eventfd handler and from the loop's adaptive polling, and each op's
 * `complete` callback runs on the loop thread.  Operations beyond the context's depth or
 * refused with EAGAIN wait in a software queue and are submitted as slots free up.
 */
#ifndef TBLK_PROTOCOLS_AIO_H
#define TBLK_PROTOCOLS_AIO_H

#include <sys/uio.h>
#include "threadpool/threadpool.h"

enum tblk_aio_engine_kind {
	TBLK_AIO_LINUX,		/* libaio */
	TBLK_AIO_URING,		/* liburing */
};

enum tblk_aio_op_type {
	TBLK_AIO_READ,
	TBLK_AIO_WRITE,
	TBLK_AIO_FDSYNC,	/* fdatasync */
};

struct tblk_aio_op;
/* Runs on the loop thread: @ret is the byte count transferred or -errno. */
typedef void tblk_aio_complete_fn(struct tblk_aio_op *op, long ret);

/* Storage owned by the caller (embedded in a request) until `complete` runs. */
struct tblk_aio_op {
	int fd;				/* [owner] */
	enum tblk_aio_op_type type;	/* [owner] */
	uint64_t offset;		/* [owner] */
	const struct iovec *iov;	/* [owner] must stay valid until completion */
	int iovcnt;			/* [owner] */
	tblk_aio_complete_fn *complete;	/* [owner] */
	/* private to the engine */
	struct tblk_aio_op *next;	/* [loop thread] software queue link */
	uint64_t priv[10];		/* [loop thread] engine scratch (e.g. a struct iocb) */
};

struct tblk_aio_engine;

/*
 * Returns @loop's engine of @kind, creating it (context of depth 128, eventfd registered
 * with the loop, prepare hook added) on first use. NULL and *errp if the kernel refuses
 * (io_setup/io_uring_queue_init failure). Loop thread.
 */
struct tblk_aio_engine *tblk__aio_get(struct tblk_loop *loop, enum tblk_aio_engine_kind kind,
				      GError **errp);
/* Queues @op for the next batched submit. Never completes @op synchronously. Loop thread. */
void tblk__aio_submit(struct tblk_aio_engine *eng, struct tblk_aio_op *op);
/* Submits everything queued now rather than at the next prepare hook. Loop thread. */
void tblk__aio_flush_batch(struct tblk_aio_engine *eng);
/* Operations submitted and not yet completed (for drain diagnostics). Loop thread. */
unsigned int tblk__aio_in_flight(struct tblk_aio_engine *eng);
/* True if this kernel/library supports @kind (probes once, caches). Any thread. */
bool tblk__aio_available(enum tblk_aio_engine_kind kind);

#endif /* TBLK_PROTOCOLS_AIO_H */
