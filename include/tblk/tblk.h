/* SPDX-License-Identifier: MIT */
/*
 * tblk.h - the public API of libtblk, the only header an embedding program includes.
 *
 * A program opens an image as a backend (struct tblk_blk) and submits requests to it, either
 * asynchronously from the thread that runs the backend's event loop (the callback runs on that
 * same loop), or synchronously from any thread. Every request is tracked from submission to
 * completion; backends can be drained.
 *
 * Errors: data-path functions return >= 0 or -errno; control-path functions return -errno
 * and fill a GError (domain tblk_error_quark(), code = errno) given last. A NULL errp is fine.
 *
 * Minimal use (see examples/read-write.c):
 *
 *	struct tblk_loop *loop = tblk_loop_new(NULL);
 *	struct tblk_blk *blk;
 *	if (tblk_blk_open(&blk, "disk.img", NULL, TBLK_OPEN_RDWR, loop, &err) < 0) ...
 *	tblk_blk_preadv(blk, 0, &iov, 1, 0, my_cb, my_data);	// my_cb runs in tblk_loop_run()
 */
#ifndef TBLK_TBLK_H
#define TBLK_TBLK_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <glib.h>

#ifdef __cplusplus
extern "C" {
#endif

struct tblk_loop;
struct tblk_iothread;
struct tblk_blk;

GQuark tblk_error_quark(void);

/* ------------------------------------------------------------ event loops */

/* A loop is run by one thread at a time; callbacks of requests run there. */
struct tblk_loop *tblk_loop_new(GError **errp);
void tblk_loop_free(struct tblk_loop *loop);
/* Runs one iteration (sleeping first if @blocking); true if a callback ran. */
bool tblk_loop_iterate(struct tblk_loop *loop, bool blocking);
void tblk_loop_run(struct tblk_loop *loop);
void tblk_loop_stop(struct tblk_loop *loop);
struct tblk_iothread *tblk_iothread_new(const char *name, GError **errp);
struct tblk_loop *tblk_iothread_get_loop(struct tblk_iothread *iot);
void tblk_iothread_free(struct tblk_iothread *iot);

/* ------------------------------------------------------------ opening */

/* Open flags. */
#define TBLK_OPEN_RDWR		0x0001u	/* read-write (default read-only) */
#define TBLK_OPEN_NOCACHE	0x0002u	/* O_DIRECT on the protocol (cache.direct=on) */
#define TBLK_OPEN_NO_FLUSH	0x0004u	/* flushes are no-ops (cache.no-flush=on, "unsafe") */
#define TBLK_OPEN_WRITETHROUGH	0x0008u	/* every write is FUA (writethrough, directsync) */
#define TBLK_OPEN_AIO_NATIVE	0x0010u	/* file protocol uses Linux AIO (aio=native) */
#define TBLK_OPEN_AIO_URING	0x0020u	/* file protocol uses io_uring (aio=io_uring) */
#define TBLK_OPEN_NO_PROBE	0x0040u	/* without a driver option, assume raw, never probe */
#define TBLK_OPEN_SHARE_RW	0x0080u	/* do not take image locks (-U / force-share) */
#define TBLK_OPEN_PROTOCOL	0x0100u	/* open the protocol node only, no format on top */
#define TBLK_OPEN_CHECK		0x1000u	/* opened to be checked: no repair of a dirty image */
#define TBLK_OPEN_COPY_ON_READ	0x0200u	/* copy-on-read filter on top (copy-on-read=on) */
#define TBLK_OPEN_NO_BACKING	0x2000u	/* do not open the backing file the image names */
/*
 * The options are the image node's only, as qemu-img and qemu-io take them: the backend's
 * own ("copy-on-read", "throttling.*") are unknown options of the node's driver.
 */
#define TBLK_OPEN_NODE_OPTS	0x0400u
/*
 * Metadata only (qemu-img info): an external data file is not opened, and options for it
 * are dropped unread. Read-only opens only: the image's data is not there to read.
 */
#define TBLK_OPEN_NO_DATA_FILE	0x0800u
/*
 * Image locking (qemu's, on the same bytes): an image is locked for reading, and for writing
 * if TBLK_OPEN_RDWR; opening fails while another process (tblk or qemu) holds a permission
 * we deny or denies one we take. Formats deny writes and resizes of their own file and of
 * backing images. TBLK_OPEN_SHARE_RW (read-only opens only) denies nothing.
 */
#define TBLK_OPEN_RESIZE	0x4000u	/* may change the size (qemu-img resize) */
#define TBLK_OPEN_NO_SHARE_RESIZE 0x8000u /* nobody else may resize it (an NBD export) */
#define TBLK_OPEN_NO_SHARE	0x10000u /* nobody else may write or resize it (qemu-img
					 * convert's sources) */
/*
 * discard=ignore (or off): discards of this node succeed and do nothing, and its write zeroes
 * never unmap (TBLK_REQ_MAY_UNMAP is dropped). Only the node it is given to: as in qemu, its
 * children still unmap what the format frees.
 */
#define TBLK_OPEN_NO_UNMAP	0x20000u

/* Permissions, as the image locks name them (qemu's, in qemu's order). */
#define TBLK_PERM_CONSISTENT_READ	0x1u
#define TBLK_PERM_WRITE			0x2u
#define TBLK_PERM_WRITE_UNCHANGED	0x4u
#define TBLK_PERM_RESIZE		0x8u
/*
 * Takes @perm and denies other processes @deny on the image locks of layer @depth of @blk's
 * backing chain (0: the image), on top of what its open took: what an NBD export of a node
 * opened earlier denies (resizes), or what qemu-img commit takes on the chain it holds open
 * read-only (writes to the base; intermediate images nobody may read). Counted per
 * permission: each lock needs its own tblk_blk_unlock_perms() (or the close). No-op without
 * image locks (locking=off, -U). 0, -ENOENT (no such layer), or -EAGAIN with qemu's "Failed
 * to get ... lock" in *errp when another process holds or denies one of them (nothing is
 * taken then). Control path: from the thread that manages @blk's users.
 */
int tblk_blk_lock_perms(struct tblk_blk *blk, int depth, unsigned int perm, unsigned int deny,
			GError **errp);
void tblk_blk_unlock_perms(struct tblk_blk *blk, int depth, unsigned int perm,
			   unsigned int deny);

/*
 * Parses a cache mode as qemu does ("none", "writeback", "writethrough", "directsync",
 * "unsafe") into TBLK_OPEN_NOCACHE/NO_FLUSH/WRITETHROUGH bits OR-ed into *flags after
 * clearing those three. 0 or -EINVAL with *errp.
 */
int tblk_parse_cache_mode(const char *mode, unsigned int *flags, GError **errp);
/* Parses "threads", "native" or "io_uring" into the TBLK_OPEN_AIO_* bits of *flags. */
int tblk_parse_aio_mode(const char *mode, unsigned int *flags, GError **errp);

/*
 * Options are a GHashTable of string keys to string values in qemu's dotted syntax
 * ("driver" = "raw", "file.filename" = "x.img", "file.aio" = "native", "offset" = "4096").
 * tblk_opts_new() makes an empty one; tblk_opts_parse() adds "key=value,key=value" (",," is
 * a literal comma; a first element without '=' is the value of @implied_key if non-NULL) or
 * a "json:{...}" string. Returns 0 or -EINVAL with *errp.
 */
GHashTable *tblk_opts_new(void);
int tblk_opts_parse(GHashTable *opts, const char *str, const char *implied_key, GError **errp);
/*
 * Parses as qemu's command lines do (-o, --image-opts): like tblk_opts_parse(), but an
 * element without '=' is qemu's deprecated short form of "key=on" ("nokey": "key=off";
 * "help" and "?" are keys of their own), and an empty key is kept. Each short form is
 * appended as written to @short_forms (may be NULL; g_strdup'ed strings) for the caller to
 * warn about. 0 or -EINVAL with *errp (a bad json: string only).
 */
int tblk_opts_parse_qemu(GHashTable *opts, const char *str, const char *implied_key,
			 GPtrArray *short_forms, GError **errp);

/*
 * Opens @filename (may be NULL if @options name the file) with @options (borrowed, may be
 * NULL) and @flags. Without a "driver" option the format is probed (raw unless another
 * format matches; see TBLK_OPEN_NO_PROBE). Asynchronous requests complete on @loop (may be
 * NULL for synchronous use only). Options nobody consumed are an error naming the option.
 * 0 and *pblk, or -errno and *errp. Any thread.
 */
int tblk_blk_open(struct tblk_blk **pblk, const char *filename, GHashTable *options,
		  unsigned int flags, struct tblk_loop *loop, GError **errp);
/* Drains and closes @blk; NULL ok. Not from a callback of @blk. */
void tblk_blk_close(struct tblk_blk *blk);

/*
 * Where the library warns where qemu would print a warning (an image whose persistent
 * bitmaps another program left inconsistent, ...): @fn gets the text, which may hold a
 * newline and need not end with one. A text starting with "error: " is one qemu reports as
 * an error, not a warning (persistent bitmaps lost at close); one starting with "verbatim: "
 * is one qemu prints as it stands, without the program's name (qcow2's "qcow2: Marking image
 * as corrupt: ..."). Without a handler, warnings are dropped. Process-wide; set it before
 * opening images. Any thread.
 */
typedef void tblk_warn_fn(const char *msg, void *opaque);
void tblk_set_warning_handler(tblk_warn_fn *fn, void *opaque);

/*
 * Defines the throttle group @id (--object throttle-group,id=...) with limits from @props
 * ("x-iops-total", "limits.bps-read-max", ...; "id" and "qom-type" ignored). Backends join
 * it with throttling.group=@id, throttle filter nodes with throttle-group=@id. The group
 * lives until the process exits. 0 or -errno with *errp. Any thread.
 */
int tblk_throttle_group_new(const char *id, GHashTable *props, GError **errp);

/*
 * Creates an image of @fmt ("raw" so far) and @size bytes at @filename with creation options
 * (e.g. "preallocation"), borrowed, may be NULL. 0 or -errno with *errp.
 */
int tblk_img_create(const char *filename, const char *fmt, uint64_t size,
		    GHashTable *options, GError **errp);

/* What an image of a format would take on the host (qemu-img measure). */
struct tblk_measure {
	uint64_t required;		/* bytes for the data at hand and all metadata */
	uint64_t fully_allocated;	/* bytes if every cluster were allocated */
	bool has_bitmaps;		/* the format (and the source) keep persistent bitmaps */
	uint64_t bitmaps;		/* bytes for the source's bitmaps */
};
/*
 * Measures an image of @fmt with creation options @options (borrowed, may be NULL): of @size
 * bytes if @src is NULL, else holding the data of @src (its whole backing chain). 0, or
 * -ENOTSUP if @fmt cannot measure, or -errno; *errp says why.
 */
int tblk_img_measure(const char *fmt, GHashTable *options, uint64_t size, struct tblk_blk *src,
		     struct tblk_measure *m, GError **errp);
/*
 * Changes format options of an open image in place (qemu-img amend): for qcow2 "compat",
 * "lazy_refcounts", "refcount_bits", "size", "backing_file", "backing_fmt", "data_file",
 * "data_file_raw". @options is borrowed. With @force, changes that may lose data proceed.
 * @progress (may be NULL) is called with a done/total fraction. 0 or -errno with *errp.
 */
int tblk_blk_amend(struct tblk_blk *blk, GHashTable *options, bool force,
		   void (*progress)(double fraction, void *opaque), void *opaque, GError **errp);

/* ------------------------------------------------------------ persistent dirty bitmaps */

/*
 * qemu-img bitmap's actions on an image's persistent dirty bitmaps (qcow2 v3). A bitmap
 * marks, one bit per @granularity bytes, what was written since it was made or cleared;
 * enabled ones follow every write, discard and zero write while the image is open for
 * writing, and are stored in the image when it is closed.
 */
enum tblk_bitmap_action {
	TBLK_BITMAP_ADD,
	TBLK_BITMAP_REMOVE,
	TBLK_BITMAP_CLEAR,
	TBLK_BITMAP_ENABLE,
	TBLK_BITMAP_DISABLE,
	TBLK_BITMAP_MERGE,	/* sets the bits of @src_name (of @src) in @name */
};
struct tblk_bitmap_request {
	enum tblk_bitmap_action action;
	const char *name;
	uint64_t granularity;		/* ADD: bytes per bit; 0: the format's default */
	bool disabled;			/* ADD: not tracking writes */
	struct tblk_blk *src;		/* MERGE: where @src_name is; NULL: this image */
	const char *src_name;		/* MERGE */
};
/* Applies @rq to @blk (drained). 0, or -errno with *errp in qemu's words. Control thread. */
int tblk_blk_bitmap_apply(struct tblk_blk *blk, const struct tblk_bitmap_request *rq,
			  GError **errp);
/* A bitmap as the image holds it in memory. */
struct tblk_dirty_bitmap {
	char *name;
	uint64_t granularity;
	bool enabled;			/* tracks writes */
	bool inconsistent;		/* found in use (not stored cleanly): its bits are lost */
};
/*
 * The image's persistent bitmaps in qemu's order (the most recently loaded or added first).
 * -ENOTSUP if the format has none; free with tblk_dirty_bitmaps_free(). Control thread.
 */
int tblk_blk_bitmap_list(struct tblk_blk *blk, struct tblk_dirty_bitmap **list, int *n);
void tblk_dirty_bitmaps_free(struct tblk_dirty_bitmap *list, int n);

/* ------------------------------------------------------------ requests */

/* Request flags. */
#define TBLK_REQ_FUA		0x1u	/* write is durable on completion */
#define TBLK_REQ_MAY_UNMAP	0x2u	/* write zeroes may deallocate */
#define TBLK_REQ_NO_FALLBACK	0x4u	/* write zeroes fails with -ENOTSUP rather than writing */
#define TBLK_REQ_COMPRESSED	0x8u	/* write compressed: whole clusters (qcow2), else -ENOTSUP */
/* the write leaves the data as it reads (copy-on-read): dirty bitmaps do not count it */
#define TBLK_REQ_WRITE_UNCHANGED 0x10u

/* Runs on the backend's loop with the request's result: 0 or -errno. */
typedef void tblk_cb(void *opaque, int ret);

/*
 * Asynchronous requests. Call from the thread running the backend's loop. The callback is
 * always called exactly once, on that loop, never before the submitting call returns. The
 * iovec array must stay valid until the callback runs.
 */
void tblk_blk_preadv(struct tblk_blk *blk, uint64_t offset, const struct iovec *iov, int iovcnt,
		     unsigned int flags, tblk_cb *cb, void *opaque);
void tblk_blk_pwritev(struct tblk_blk *blk, uint64_t offset, const struct iovec *iov,
		      int iovcnt, unsigned int flags, tblk_cb *cb, void *opaque);
void tblk_blk_aio_flush(struct tblk_blk *blk, tblk_cb *cb, void *opaque);
void tblk_blk_aio_pdiscard(struct tblk_blk *blk, uint64_t offset, uint64_t bytes, tblk_cb *cb,
			   void *opaque);
void tblk_blk_aio_pwrite_zeroes(struct tblk_blk *blk, uint64_t offset, uint64_t bytes,
				unsigned int flags, tblk_cb *cb, void *opaque);

/*
 * Synchronous requests from any thread not running a loop callback of @blk (a loop's own
 * thread may call them too: they do not need the loop). 0 or -errno.
 */
int tblk_blk_pread(struct tblk_blk *blk, uint64_t offset, void *buf, size_t bytes,
		   unsigned int flags);
int tblk_blk_pwrite(struct tblk_blk *blk, uint64_t offset, const void *buf, size_t bytes,
		    unsigned int flags);
int tblk_blk_preadv_sync(struct tblk_blk *blk, uint64_t offset, const struct iovec *iov,
			 int iovcnt, unsigned int flags);
int tblk_blk_pwritev_sync(struct tblk_blk *blk, uint64_t offset, const struct iovec *iov,
			  int iovcnt, unsigned int flags);
int tblk_blk_flush(struct tblk_blk *blk);
int tblk_blk_pdiscard(struct tblk_blk *blk, uint64_t offset, uint64_t bytes);
int tblk_blk_pwrite_zeroes(struct tblk_blk *blk, uint64_t offset, uint64_t bytes,
			   unsigned int flags);

/* Waits until no request of @blk is in flight (runs the loop if called on it). */
void tblk_blk_drain(struct tblk_blk *blk);

/* ------------------------------------------------------------ queries and changes */

/* Virtual size in bytes, or -errno. */
int64_t tblk_blk_getlength(struct tblk_blk *blk);
/* Bytes allocated on the host for the image (st_blocks * 512 of its files), or -errno. */
int64_t tblk_blk_get_allocated_size(struct tblk_blk *blk);
/* Resizes to @size; @prealloc is "off", "falloc", "full" or NULL. 0 or -errno with *errp. */
int tblk_blk_truncate(struct tblk_blk *blk, uint64_t size, const char *prealloc,
		      GError **errp);

/*
 * The image's VM state area, where savevm keeps a VM's state (qcow2: after the guest data,
 * outside the guest's view): reads into or writes from @buf @bytes at @pos of it, drained
 * and synchronously. A write is flushed in writethrough mode. 0, -ENOTSUP if the format has
 * no such area, -EPERM on a read-only image, or -errno. Control thread, not from a callback.
 */
int tblk_blk_load_vmstate(struct tblk_blk *blk, uint64_t pos, void *buf, uint64_t bytes);
int tblk_blk_save_vmstate(struct tblk_blk *blk, uint64_t pos, const void *buf, uint64_t bytes);

/* Block status, as bdrv_block_status: data/zero/allocation of a range. */
#define TBLK_BS_DATA		0x1u	/* reads return data from the file */
#define TBLK_BS_ZERO		0x2u	/* reads return zeroes */
#define TBLK_BS_OFFSET_VALID	0x4u	/* *map is the offset in the protocol file */
#define TBLK_BS_ALLOCATED	0x8u	/* allocated in this layer (not a backing file) */
/*
 * Describes [offset, offset + *pnum) with @bytes the longest range asked about; *pnum > 0
 * unless offset is at the end. Returns the TBLK_BS_* bits or -errno.
 */
int tblk_blk_block_status(struct tblk_blk *blk, uint64_t offset, uint64_t bytes,
			  uint64_t *pnum, uint64_t *map);

/*
 * Block status through the backing chain: the layer that holds [offset, offset + *pnum) is
 * *depth (0 = the image itself, 1 = its backing file, ...) and the TBLK_BS_* bits are that
 * layer's, with TBLK_BS_ALLOCATED set for every depth. Where no layer holds the range,
 * *depth is the chain length and the bits are TBLK_BS_ZERO (0 if the bottom layer cannot have
 * a backing file and holds neither data nor zeroes, as raw over null-co without read-zeroes),
 * plus TBLK_BS_OFFSET_VALID and *map if the last layer asked has a host offset there (qcow2's
 * unallocated subclusters of an allocated cluster, as in qemu).
 * @map and @depth may be NULL.
 */
int tblk_blk_block_status_depth(struct tblk_blk *blk, uint64_t offset, uint64_t bytes,
				uint64_t *pnum, uint64_t *map, int *depth);
/* The format's cluster size in bytes (the unit of compressed writes), 0 if it has none. */
uint32_t tblk_blk_cluster_size(struct tblk_blk *blk);
/*
 * What an image's format records about itself, for `info`. Strings are borrowed from the
 * backend and stay valid until it is closed; NULL when absent.
 */
/* A persistent dirty bitmap stored in an image (qcow2). */
struct tblk_bitmap_info {
	const char *name;
	uint64_t granularity;		/* bytes per bit */
	bool in_use;			/* not saved cleanly: may be inconsistent */
	bool is_auto;			/* tracks every write to the image */
};

struct tblk_format_info {
	uint32_t cluster_size;		/* 0: the format has no clusters */
	const char *backing_file;	/* as recorded in the image */
	const char *backing_fmt;
	bool dirty;			/* the image was not closed cleanly */
	/* qcow2 only (is_qcow2). */
	bool is_qcow2;
	const char *compat;		/* "0.10" or "1.1" */
	const char *compression_type;	/* "zlib" or "zstd" */
	bool lazy_refcounts;
	unsigned int refcount_bits;
	const char *data_file;
	bool data_file_raw;
	bool corrupt;
	bool extended_l2;
	unsigned int nb_snapshots;
	/* Consistent persistent bitmaps; valid while the image stays open. */
	unsigned int nb_bitmaps;
	const struct tblk_bitmap_info *bitmaps;	/* nb_bitmaps of them */
};
/* Fills @info for the image (root node). 0 or -errno. */
int tblk_blk_get_format_info(struct tblk_blk *blk, struct tblk_format_info *info);
/* What `check` found (and repaired); @messages holds one line per finding, as qemu-img words
 * them, for the caller to print. */
#define TBLK_CHECK_FIX_LEAKS	0x1
#define TBLK_CHECK_FIX_ERRORS	0x2
struct tblk_check_result {
	int corruptions;
	int leaks;
	int check_errors;
	int corruptions_fixed;
	int leaks_fixed;
	uint64_t image_end_offset;
	uint64_t total_clusters;
	uint64_t allocated_clusters;
	uint64_t fragmented_clusters;
	uint64_t compressed_clusters;
	GString *messages;		/* caller-allocated, appended to */
};
/* Checks (and with @fix, repairs) the image's metadata. -ENOTSUP if the format has no
 * check. @blk must be opened read-write to repair. */
int tblk_blk_check(struct tblk_blk *blk, int fix, struct tblk_check_result *res);
/*
 * Internal snapshots (qcow2). A snapshot as the image records it; @icount is UINT64_MAX when
 * the image does not record one. Strings are owned by the array tblk_blk_snapshot_list()
 * returns (free it with tblk_snapshot_list_free()).
 */
struct tblk_snapshot_info {
	char *id;			/* "1", "2", ... */
	char *name;			/* the tag */
	uint64_t vm_state_size;		/* bytes of VM state saved with it (0: disk only) */
	uint32_t date_sec;		/* creation time, seconds and nanoseconds since 1970 */
	uint32_t date_nsec;
	uint64_t vm_clock_nsec;		/* guest clock at creation */
	uint64_t icount;		/* instruction count at creation, UINT64_MAX: none */
	uint64_t disk_size;		/* virtual size at creation */
};
/* The image's snapshots in table order: *psn (NULL if none), *pn. 0 or -errno (-ENOTSUP:
 * the format has no internal snapshots). Control thread; no request may be in flight. */
int tblk_blk_snapshot_list(struct tblk_blk *blk, struct tblk_snapshot_info **psn, int *pn);
void tblk_snapshot_list_free(struct tblk_snapshot_info *sn, int n);
/* Creates a snapshot of the current state named @sn->name with @sn's date, vm clock and
 * icount (the id is chosen by the format, the VM state is empty). Drains @blk. 0 or -errno;
 * *errp tells why. */
int tblk_blk_snapshot_create(struct tblk_blk *blk, const struct tblk_snapshot_info *sn,
			     GError **errp);
/* Reverts the image to the snapshot whose id, else whose name, is @id_or_name. Drains. */
int tblk_blk_snapshot_goto(struct tblk_blk *blk, const char *id_or_name, GError **errp);
/* Deletes the snapshot matching @id and @name (either may be NULL: not compared). Drains. */
int tblk_blk_snapshot_delete(struct tblk_blk *blk, const char *id, const char *name,
			     GError **errp);
/*
 * Makes a read-only @blk read as the snapshot matching @id and @name (either may be NULL)
 * until it is closed (qemu-img convert -l). -EINVAL if @blk is writable, -ENOENT if there is
 * no such snapshot. Drains.
 */
int tblk_blk_snapshot_load_tmp(struct tblk_blk *blk, const char *id, const char *name,
			       GError **errp);
/* Number of images in the backing chain (1 without a backing file). */
int tblk_blk_chain_length(struct tblk_blk *blk);
/*
 * The image at @depth of the backing chain (0: the image itself, 1: its backing file, ...):
 * the file it was opened from, its format driver, and the backing file name and format it
 * records (NULL when absent). Strings are borrowed and live until @blk is closed. 0, or
 * -ENOENT if the chain is shorter.
 */
struct tblk_chain_layer {
	const char *filename;
	const char *format;
	const char *backing_file;
	const char *backing_fmt;
};
int tblk_blk_chain_layer(struct tblk_blk *blk, int depth, struct tblk_chain_layer *layer);
/*
 * Rewrites the backing file name (NULL: none) and its format (may be NULL) recorded in the
 * image's header, as qemu-img rebase does; the chain already open is not changed. Drains.
 * 0, or -ENOTSUP (the format has no backing files), -ENOSPC (no room in the header),
 * -EINVAL (a format without a file, or an image that cannot take one), -errno.
 */
int tblk_blk_change_backing_file(struct tblk_blk *blk, const char *backing_file,
				 const char *backing_fmt);
/*
 * Drops all data of a writable image (qemu-img commit empties the committed image this
 * way: a qcow2 v3 image without snapshots is rewritten as freshly created, others have
 * every cluster discarded). Drains. 0 or -errno (-ENOTSUP: the format cannot).
 */
int tblk_blk_make_empty(struct tblk_blk *blk);

/* The format driver's name ("raw"), the root node's filename, the protocol's name. */
const char *tblk_blk_format_name(struct tblk_blk *blk);
const char *tblk_blk_filename(struct tblk_blk *blk);
const char *tblk_blk_protocol_name(struct tblk_blk *blk);
bool tblk_blk_is_read_only(struct tblk_blk *blk);
/* True if the format was probed rather than named (qemu warns about probed raw). */
bool tblk_blk_format_probed(struct tblk_blk *blk);
struct tblk_loop *tblk_blk_get_loop(struct tblk_blk *blk);
/* Smallest request alignment the backend serves without read-modify-write. */
uint32_t tblk_blk_request_alignment(struct tblk_blk *blk);
/* Turns writethrough (every write FUA) on or off. */
void tblk_blk_set_writethrough(struct tblk_blk *blk, bool on);

/* Per-kind statistics of the root node. */
enum tblk_stat_kind { TBLK_STAT_READ, TBLK_STAT_WRITE, TBLK_STAT_FLUSH, TBLK_STAT_DISCARD,
		      TBLK_STAT_ZEROES, TBLK_STAT_NR };
struct tblk_stats {
	uint64_t ops[TBLK_STAT_NR];
	uint64_t failed[TBLK_STAT_NR];
	uint64_t bytes[TBLK_STAT_NR];
	uint64_t total_ns[TBLK_STAT_NR];
	uint64_t max_ns[TBLK_STAT_NR];
	uint64_t fast_ops[TBLK_STAT_NR];	/* of ops: served by the fast path, not the pool */
};
void tblk_blk_get_stats(struct tblk_blk *blk, struct tblk_stats *st);

/* Names of the format drivers this build has, NULL-terminated, for probing tools. */
const char *const *tblk_format_names(void);
/* Whether this build has a driver (format, protocol or filter) called @name. */
bool tblk_driver_known(const char *name);

/*
 * Fault injection: breakpoints of the first blkdebug node below @blk's root (qemu-io's
 * break, remove_break, resume, wait_break). A request that raises @event stops in its
 * thread until resumed; a breakpoint is removed when it is hit. 0 or -errno: -ENOTSUP
 * without a blkdebug node, -ENOENT for an unknown event, tag, or no stopped request.
 * Any thread.
 */
int tblk_blk_debug_breakpoint(struct tblk_blk *blk, const char *event, const char *tag);
int tblk_blk_debug_remove_breakpoint(struct tblk_blk *blk, const char *tag);
int tblk_blk_debug_resume(struct tblk_blk *blk, const char *tag);
bool tblk_blk_debug_is_suspended(struct tblk_blk *blk, const char *tag);
/*
 * Called when a request stops at a breakpoint @tag (@suspended) and when it goes on again;
 * runs in the request's thread (a pool worker), before it waits and once it woke. Process
 * wide; NULL turns it off.
 */
typedef void tblk_debug_notify_fn(void *opaque, const char *tag, bool suspended);
void tblk_debug_set_notify(tblk_debug_notify_fn *fn, void *opaque);

#ifdef __cplusplus
}
#endif

#endif /* TBLK_TBLK_H */
