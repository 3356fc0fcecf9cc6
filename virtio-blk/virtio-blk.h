/* SPDX-License-Identifier: MIT */
/*
 * virtio-blk.h - the virtio-blk device model, independent of its transport: guest memory
 * maps (struct tblk_vmem), split virtqueues (struct tblk_vq) and the block device
 * (struct tblk_vblk) that decodes requests and submits them through the tblk async API.
 * The vhost-user back-end (tblk_vu_server) that feeds it is declared at the end.
 *
 * Threading: a device and its queues belong to one loop (the loop of its backend): every
 * function here except the vmem reference counting is called on that loop's thread, and
 * request completions run there too. Guest memory is shared with a guest running
 * concurrently: ring indexes are read with acquire loads and published with release stores,
 * request headers are copied once and then validated.
 *
 * Nothing a guest writes can make these functions crash or access memory outside the mapped
 * regions: a malformed request completes with VIRTIO_BLK_S_IOERR or _UNSUPP, a malformed
 * ring marks the queue broken (it then does nothing until it is reset).
 */
#ifndef TBLK_VIRTIO_BLK_H
#define TBLK_VIRTIO_BLK_H

#include <sys/uio.h>

#include "common/common.h"
#include "threadpool/threadpool.h"
#include <tblk/tblk.h>

/* ------------------------------------------------------------ virtio numbers */

#define VIRTIO_BLK_F_SIZE_MAX		1
#define VIRTIO_BLK_F_SEG_MAX		2
#define VIRTIO_BLK_F_GEOMETRY		4
#define VIRTIO_BLK_F_RO			5
#define VIRTIO_BLK_F_BLK_SIZE		6
#define VIRTIO_BLK_F_FLUSH		9
#define VIRTIO_BLK_F_TOPOLOGY		10
#define VIRTIO_BLK_F_CONFIG_WCE		11
#define VIRTIO_BLK_F_MQ			12
#define VIRTIO_BLK_F_DISCARD		13
#define VIRTIO_BLK_F_WRITE_ZEROES	14
#define VIRTIO_RING_F_INDIRECT_DESC	28
#define VIRTIO_RING_F_EVENT_IDX		29
#define VIRTIO_F_VERSION_1		32

#define VIRTIO_BLK_T_IN			0
#define VIRTIO_BLK_T_OUT		1
#define VIRTIO_BLK_T_FLUSH		4
#define VIRTIO_BLK_T_GET_ID		8
#define VIRTIO_BLK_T_DISCARD		11
#define VIRTIO_BLK_T_WRITE_ZEROES	13

#define VIRTIO_BLK_S_OK			0
#define VIRTIO_BLK_S_IOERR		1
#define VIRTIO_BLK_S_UNSUPP		2

#define VIRTIO_BLK_WZ_F_UNMAP		1u
#define VIRTIO_BLK_ID_BYTES		20

#define VRING_DESC_F_NEXT		1
#define VRING_DESC_F_WRITE		2
#define VRING_DESC_F_INDIRECT		4
#define VRING_AVAIL_F_NO_INTERRUPT	1
#define VRING_USED_F_NO_NOTIFY		1

/* Largest split queue (the spec's limit). */
#define TBLK_VQ_MAX_SIZE		32768

/* Guest-visible layouts (little-endian, as on every host we build for). */
struct vring_desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags;
	uint16_t next;
};

struct vring_avail {
	uint16_t flags;
	uint16_t idx;
	uint16_t ring[];	/* then le16 used_event */
};

struct vring_used_elem {
	uint32_t id;
	uint32_t len;
};

struct vring_used {
	uint16_t flags;
	uint16_t idx;
	struct vring_used_elem ring[];	/* then le16 avail_event */
};

struct virtio_blk_outhdr {
	uint32_t type;
	uint32_t ioprio;
	uint64_t sector;
};

struct virtio_blk_discard_write_zeroes {
	uint64_t sector;
	uint32_t num_sectors;
	uint32_t flags;
};

struct virtio_blk_config {
	uint64_t capacity;
	uint32_t size_max;
	uint32_t seg_max;
	uint16_t cylinders;
	uint8_t heads;
	uint8_t sectors;
	uint32_t blk_size;
	uint8_t physical_block_exp;
	uint8_t alignment_offset;
	uint16_t min_io_size;
	uint32_t opt_io_size;
	uint8_t writeback;
	uint8_t unused0;
	uint16_t num_queues;
	uint32_t max_discard_sectors;
	uint32_t max_discard_seg;
	uint32_t discard_sector_alignment;
	uint32_t max_write_zeroes_sectors;
	uint32_t max_write_zeroes_seg;
	uint8_t write_zeroes_may_unmap;
	uint8_t unused1[3];
} __attribute__((packed));

#define TBLK_VBLK_CONFIG_WRITEBACK_OFFSET	32

/* ------------------------------------------------------------ guest memory */

#define TBLK_VMEM_MAX_REGIONS	32

/* One mmap()ed piece of front-end memory, shared by the maps that use it. */
struct tblk_vmap {
	int refcnt;		/* [atomic] */
	void *base;		/* [const] */
	size_t len;		/* [const] */
	int guard;		/* [const] vguard.c slot, -1 if the file is sealed or unguarded */
	int faulted;		/* [atomic] a page past the file's end was touched (vguard.c) */
};

struct tblk_vmem_region {
	uint64_t gpa;		/* guest physical address of the first byte */
	uint64_t size;		/* bytes */
	uint64_t uva;		/* the front-end's virtual address of the first byte */
	uint8_t *host;		/* our address of the first byte */
	struct tblk_vmap *map;	/* reference to the mapping, NULL if not ours (tests) */
};

/*
 * An immutable set of regions, reference counted: a request holds the map it was decoded
 * against, so a new memory table never pulls memory from under a request in flight.
 */
struct tblk_vmem {
	int refcnt;		/* [atomic] */
	unsigned int nr;	/* [const] after publication */
	struct tblk_vmem_region r[TBLK_VMEM_MAX_REGIONS];	/* [const] after publication */
};

/*
 * vguard.c: registers [base, base + len) so that a SIGBUS there (the file was truncated)
 * maps a zero page and sets *flag instead of killing the process; the slot or -ENOSPC.
 */
int tblk__vguard_add(void *base, size_t len, int *flag);
void tblk__vguard_del(int slot);
/* How many such faults the process has seen. Any thread, async-signal-safe. */
unsigned int tblk__vguard_faults(void);
/* Whether a map of @vmem has faulted (NULL: no). */
bool tblk__vmem_faulted(struct tblk_vmem *vmem);

/* mmap()s @len bytes of @fd at @offset shared read-write; NULL and -errno in *perr. */
struct tblk_vmap *tblk__vmap_open(int fd, uint64_t offset, uint64_t len, int *perr);
void tblk__vmap_unref(struct tblk_vmap *map);

struct tblk_vmem *tblk__vmem_new(void);
struct tblk_vmem *tblk__vmem_ref(struct tblk_vmem *vmem);
/* Drops a reference; the last one drops the regions' mappings. NULL ok. Any thread. */
void tblk__vmem_unref(struct tblk_vmem *vmem);
/* A new unpublished map with the same regions (sharing their mappings). */
struct tblk_vmem *tblk__vmem_clone(struct tblk_vmem *vmem);
/*
 * Adds a region whose first byte is at @host, taking the reference to @map (may be NULL).
 * -EINVAL if it is empty, wraps or overlaps another region in guest or front-end address
 * space, -ENOSPC if the map is full (the reference is dropped then). Before publication.
 */
int tblk__vmem_add(struct tblk_vmem *vmem, uint64_t gpa, uint64_t size, uint64_t uva,
		   void *host, struct tblk_vmap *map);
/* Removes the region at @gpa of @size. -ENOENT if there is none. Before publication. */
int tblk__vmem_remove(struct tblk_vmem *vmem, uint64_t gpa, uint64_t size);
/* Our address of front-end address [uva, uva + len) inside one region, or NULL. */
void *tblk__vmem_uva(struct tblk_vmem *vmem, uint64_t uva, uint64_t len);
/* Our address of guest address [gpa, gpa + len) inside one region, or NULL. */
void *tblk__vmem_gpa(struct tblk_vmem *vmem, uint64_t gpa, uint64_t len);
/*
 * Maps guest range [gpa, gpa + len) onto iovecs appended at iov[*cnt] (at most @max in
 * all), splitting at region boundaries. 0, -EFAULT (not all mapped) or -E2BIG (too many).
 */
int tblk__vmem_map(struct tblk_vmem *vmem, uint64_t gpa, uint64_t len, struct iovec *iov,
		   unsigned int *cnt, unsigned int max);

/* ------------------------------------------------------------ the device */

struct tblk_vblk;
struct tblk_vq;

/* Runs on the device's loop when queue @qidx has new used buffers worth a notification. */
typedef void tblk_vblk_notify_fn(void *opaque, unsigned int qidx);
/* Runs on the device's loop when the stopped queue @qidx has no request left in flight. */
typedef void tblk_vblk_stopped_fn(void *opaque, unsigned int qidx);

struct tblk_vblk_opts {
	unsigned int num_queues;	/* 1..TBLK_VBLK_MAX_QUEUES */
	uint32_t logical_block_size;	/* power of two, 512..2 MiB */
	bool writable;
	const char *serial;		/* GET_ID answer (up to 20 bytes), NULL: "" */
};

#define TBLK_VBLK_MAX_QUEUES	64
/* Segments in one request: the seg_max we announce plus room for region splits. */
#define TBLK_VBLK_SEG_MAX	254
#define TBLK_VBLK_MAX_IOV	1024
#define TBLK_VBLK_MAX_DISCARD_SECTORS	(1u << 22)

/*
 * A device over @blk (borrowed; its loop is the device's loop) with one reference held by
 * the caller. -EINVAL with *errp for bad @opts.
 */
int tblk_vblk_new(struct tblk_vblk **pdev, struct tblk_blk *blk,
		  const struct tblk_vblk_opts *opts, GError **errp);
void tblk_vblk_ref(struct tblk_vblk *dev);
/* Drops a reference; requests in flight hold their own, the last one frees. NULL ok. */
void tblk_vblk_unref(struct tblk_vblk *dev);
/*
 * Detaches the device from its transport: queues stop, no completion touches guest memory
 * or calls a callback from now on (the front-end will resubmit what did not complete).
 */
void tblk_vblk_detach(struct tblk_vblk *dev);

/* What the transport hears from the device; each may be NULL. Loop thread. */
struct tblk_vblk_callbacks {
	tblk_vblk_notify_fn *notify;	/* used buffers to signal (call eventfd) */
	tblk_vblk_stopped_fn *stopped;	/* a stopped queue has nothing in flight any more */
	tblk_vblk_notify_fn *broken;	/* a queue broke (error eventfd) */
	void *opaque;
};
void tblk_vblk_set_callbacks(struct tblk_vblk *dev, const struct tblk_vblk_callbacks *cbs);
/* The features the device offers (virtio bits, 0..63). */
uint64_t tblk_vblk_get_features(struct tblk_vblk *dev);
/* Accepts the driver's features; -EINVAL if it names one not offered. */
int tblk_vblk_set_features(struct tblk_vblk *dev, uint64_t features);
uint64_t tblk_vblk_features(struct tblk_vblk *dev);
unsigned int tblk_vblk_num_queues(struct tblk_vblk *dev);
/*
 * Copies the config space (refreshing capacity) into @buf: [offset, offset+len); fields
 * beyond what we implement (secure erase, zoned) read as zero. -EINVAL past
 * TBLK_VBLK_CONFIG_MAX.
 */
#define TBLK_VBLK_CONFIG_MAX	256
int tblk_vblk_get_config(struct tblk_vblk *dev, uint32_t offset, void *buf, uint32_t len);
/* Writes the config space: only `writeback` (with CONFIG_WCE) is writable. */
int tblk_vblk_set_config(struct tblk_vblk *dev, uint32_t offset, const void *buf,
			 uint32_t len);
/* Replaces the memory map (takes the caller's reference). Rings are translated again;
 * a ring that no longer maps breaks. */
void tblk_vblk_set_mem(struct tblk_vblk *dev, struct tblk_vmem *vmem);
struct tblk_vmem *tblk_vblk_get_mem(struct tblk_vblk *dev);	/* borrowed, may be NULL */

/*
 * In-flight tracking (vhost-user's INFLIGHT_SHMFD, split rings): @base is a shared area of
 * @nq regions of tblk_vblk_inflight_size(@qsize) bytes, one per queue, that survives the
 * back-end: requests taken are marked there until their used entry is published, and a
 * queue started on a region that still marks requests resubmits them (in the order they
 * were taken) and resumes the avail ring after them. Borrowed until replaced or the device
 * is detached; NULL turns tracking off.
 */
size_t tblk_vblk_inflight_size(unsigned int qsize);
void tblk_vblk_set_inflight(struct tblk_vblk *dev, void *base, unsigned int nq,
			    unsigned int qsize);

/* Queue setup, in the order a transport gives it. -EINVAL for bad values. */
int tblk_vblk_vq_set_num(struct tblk_vblk *dev, unsigned int qidx, unsigned int num);
/* Ring addresses in the front-end's address space (uva); checked at start. */
int tblk_vblk_vq_set_addr(struct tblk_vblk *dev, unsigned int qidx, uint64_t desc,
			  uint64_t avail, uint64_t used);
int tblk_vblk_vq_set_base(struct tblk_vblk *dev, unsigned int qidx, uint16_t last_avail);
/* Starts processing (translating the rings: -EFAULT if they do not map). */
int tblk_vblk_vq_start(struct tblk_vblk *dev, unsigned int qidx);
/* Enables or disables (a disabled started queue takes no new request). */
int tblk_vblk_vq_enable(struct tblk_vblk *dev, unsigned int qidx, bool on);
/*
 * Stops the queue: no new request is taken; returns the next avail index to process.
 * *pinflight is how many requests are still in flight (the stopped callback runs when
 * they are done, unless it is 0 now).
 */
uint16_t tblk_vblk_vq_stop(struct tblk_vblk *dev, unsigned int qidx, unsigned int *pinflight);
/* Handles a kick of queue @qidx: takes every available request. */
void tblk_vblk_vq_kick(struct tblk_vblk *dev, unsigned int qidx);
/*
 * For the loop's busy-polling phase: if requests wait in queue @qidx, takes them and
 * returns true (no kick needed to find them).
 */
bool tblk_vblk_vq_poll(struct tblk_vblk *dev, unsigned int qidx);
bool tblk_vblk_vq_is_broken(struct tblk_vblk *dev, unsigned int qidx);
/* Statistics for tests. */
struct tblk_vblk_stats {
	uint64_t requests;	/* chains taken from the avail rings */
	uint64_t notifies;	/* notify callbacks */
	uint64_t errors;	/* requests completed with IOERR or UNSUPP, or unanswerable */
	unsigned int inflight;	/* requests taken and not yet completed, all queues */
	uint64_t resubmitted;	/* requests taken again from an in-flight region */
};
void tblk_vblk_get_stats(struct tblk_vblk *dev, struct tblk_vblk_stats *st);

/* ------------------------------------------------------------ vhost-user back-end */

struct tblk_vu_server;

struct tblk_vu_opts {
	struct tblk_vblk_opts blk;
	const char *path;	/* unix socket to create (unlinked first), or NULL with fd */
	int listen_fd;		/* when !path, a socket (taken over): listening, or already
				 * connected to the one front-end it will serve */
};

/*
 * Starts a vhost-user-blk server on @blk's loop: listens, serves one front-end at a time,
 * keeps listening after a disconnect. Call on the loop's thread (or before it runs).
 * 0 and *psrv, or -errno with *errp.
 */
int tblk_vu_server_start(struct tblk_vu_server **psrv, struct tblk_blk *blk,
			 const struct tblk_vu_opts *opts, GError **errp);
/* Stops listening (removing the socket it created) and drops the connection; requests in
 * flight finish on their own. Loop thread. */
void tblk_vu_server_stop(struct tblk_vu_server *srv);
/* Frees a stopped server once @blk is drained. Loop thread or after the loop stopped. */
void tblk_vu_server_free(struct tblk_vu_server *srv);
/* Connections accepted so far (tests). Any thread. */
unsigned int tblk_vu_server_nr_connections(struct tblk_vu_server *srv);

#endif /* TBLK_VIRTIO_BLK_H */
