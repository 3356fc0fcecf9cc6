/* SPDX-License-Identifier: MIT */
/*
 * file.c - the `file` and `host_device` protocols: regular files and block devices through
 * POSIX calls in the calling thread (the pool path), and the fast path that hands aligned
 * reads, writes and flushes to Linux AIO or io_uring straight from the loop thread; and
 * image locking, interoperable with qemu's (locking=auto|on|off).
 *
 * Threading: the state is [const] after open; data-path calls run concurrently in workers
 * (pool path) or on the loop thread (fast path submission and completion).
 */
#include <assert.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "protocols/aio.h"
#include "tracked/tracked.h"

enum file_aio {
	FILE_AIO_THREADS,
	FILE_AIO_NATIVE,
	FILE_AIO_URING,
};

struct file_state {
	int fd;				/* [const] */
	enum file_aio aio;		/* [const] */
	bool is_bdev;			/* [const] */
	bool direct;			/* [const] opened O_DIRECT */
	int lock;			/* [const] locking: -1 auto, 0 off, 1 on */
	unsigned int perm;		/* [const] what the open took (1u << PERM_*) */
	unsigned int shared;		/* [const] what the open let others have */
	struct tblk_mutex perm_lock;	/* leaf: guards extra */
	/* [perm_lock] file_lock_perms() counts: [p] takes PERM p, [PERM_COUNT + p] denies it */
	unsigned int extra[8];

	/* Growing the file ahead of O_DIRECT writes (see "extending ahead" below). */
	bool extend_ahead;		/* [const] a regular file opened O_DIRECT for writing */
	struct tblk_mutex ext_lock;	/* a leaf: taken to grow the file ahead */
	bool ext_failed;		/* [ext_lock] fallocate() refused: stop trying */
	uint64_t data_end;		/* [atomic] the length without the extension */
	uint64_t touched_end;		/* [atomic] past any write issued, done or not */
	uint64_t phys_end;		/* [atomic] the file's length with it; ext_lock to grow */
};

/*
 * Image locking, on the bytes qemu's file driver locks so that tblk and qemu processes see
 * each other: for each permission p (qemu's order), a shared OFD lock on byte 100 + p says
 * "I have p", one on byte 200 + p says "nobody else may have p". Opening takes its own bytes,
 * then fails if another open file holds the byte that contradicts one of them. The locks
 * live as long as the file description: closing the fd drops them.
 */
enum {
	PERM_CONSISTENT_READ,
	PERM_WRITE,
	PERM_WRITE_UNCHANGED,
	PERM_RESIZE,
	PERM_COUNT,
};
#define PERM_ALL		((1u << PERM_COUNT) - 1)
#define LOCK_PERM_BASE		100
#define LOCK_SHARED_BASE	200

static const char *const perm_names[PERM_COUNT] = {
	"consistent read", "write", "write unchanged", "resize",
};

/* What the fast path keeps in a request's drv_scratch while the kernel has it. */
struct file_fast {
	struct tblk_aio_op op;
	struct tblk_req *req;
	struct file_state *s;		/* the file written, for data_end */
};
_Static_assert(sizeof(struct file_fast) <= sizeof(((struct tblk_req *)0)->drv_scratch),
	       "drv_scratch too small for the file fast path");

/* ---------------------------------------------------------------- extending ahead */

/*
 * An O_DIRECT write that extends a file is done synchronously inside io_submit() by ext4
 * (and under the inode lock by others): writes at the end of a growing image, which is where
 * a qcow2 allocates every new cluster, then run one at a time, each blocking the thread that
 * submits it (the loop thread on the fast path). So a file opened O_DIRECT for writing is
 * grown ahead of such writes by fallocate() in steps of EXTEND_STEP, and the writes land
 * inside it, in parallel. data_end is where the file would end without this (the furthest
 * write or zeroing that succeeded, or the last truncate): getlength reports it, and close
 * gives the rest of the extension back (extend_undo() says how far), so the file ends where
 * it would have. A write moves data_end only once it succeeded (extend_written()), so a
 * failed one does not lengthen the image. After a crash the file keeps its zeroed tail,
 * which no format references. qemu's `preallocate` filter works this way.
 */
#define EXTEND_STEP	(64ull << 20)
/* The smallest unit another open may have written in (a logical block). */
#define EXTEND_SECTOR	512u

static void extend_init(struct file_state *s, unsigned int flags, const struct stat *st)
{
	s->extend_ahead = !s->is_bdev && s->direct && S_ISREG(st->st_mode) &&
			  (flags & TBLK_OPEN_RDWR);
	tblk_mutex_init(&s->ext_lock);
	s->ext_failed = false;
	s->data_end = (uint64_t)st->st_size;
	s->touched_end = (uint64_t)st->st_size;
	s->phys_end = (uint64_t)st->st_size;
}

/* Grows the file past @end if a write ending there would extend it. Caller holds ext_lock. */
static void extend_locked(struct file_state *s, uint64_t end) TBLK_REQUIRES(s->ext_lock)
{
	uint64_t phys = __atomic_load_n(&s->phys_end, __ATOMIC_RELAXED);
	uint64_t target = TBLK_ALIGN_UP(end, 1ull << 20) + EXTEND_STEP;

	if (end <= phys || s->ext_failed)
		return;
	/* Mode 0 never shrinks the file, whatever a concurrent write did to its length. */
	if (fallocate(s->fd, 0, (off_t)phys, (off_t)(target - phys)) < 0) {
		s->ext_failed = true;
		return;
	}
	__atomic_store_n(&s->phys_end, target, __ATOMIC_RELEASE);
}

/* Raises the [atomic] @end_field to at least @end. */
static void extend_raise(uint64_t *end_field, uint64_t end)
{
	uint64_t cur = __atomic_load_n(end_field, __ATOMIC_RELAXED);

	while (end > cur && !__atomic_compare_exchange_n(end_field, &cur, end, true,
							 __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
}

/*
 * Before a write or zeroing that makes the file at least @end long: grows the file ahead.
 * Any thread. data_end moves when it succeeded: extend_written().
 */
static void extend_for_write(struct file_state *s, uint64_t end)
{
	if (!s->extend_ahead)
		return;
	extend_raise(&s->touched_end, end);
	if (end <= __atomic_load_n(&s->phys_end, __ATOMIC_ACQUIRE))
		return;
	tblk_mutex_lock(&s->ext_lock);
	extend_locked(s, end);
	tblk_mutex_unlock(&s->ext_lock);
}

/* After a write or zeroing up to @end that extend_for_write() announced: @ret is its result. */
static void extend_written(struct file_state *s, uint64_t end, int ret)
{
	if (s->extend_ahead && ret >= 0)
		extend_raise(&s->data_end, end);
}

/*
 * Zeroing [offset, offset + bytes) where no write has gone yet (not even a failed one, which
 * may have left data) but the extension covers (it reads zeroes, allocated by our
 * fallocate()): only data_end moves. True if done.
 */
static bool extend_zeroed(struct file_state *s, uint64_t offset, uint64_t bytes)
{
	if (!s->extend_ahead || offset < __atomic_load_n(&s->touched_end, __ATOMIC_RELAXED) ||
	    offset + bytes > __atomic_load_n(&s->phys_end, __ATOMIC_ACQUIRE))
		return false;
	extend_raise(&s->touched_end, offset + bytes);
	extend_raise(&s->data_end, offset + bytes);
	return true;
}

/* After a truncate to @size (drained): the file ends where the truncate put it. */
static void extend_reset(struct file_state *s, uint64_t size)
{
	struct stat st;

	if (!s->extend_ahead)
		return;
	tblk_mutex_lock(&s->ext_lock);
	__atomic_store_n(&s->data_end, size, __ATOMIC_RELAXED);
	__atomic_store_n(&s->touched_end, size, __ATOMIC_RELAXED);
	/* A preallocating truncate that did not shrink may leave the extension in place. */
	__atomic_store_n(&s->phys_end, fstat(s->fd, &st) == 0 ? (uint64_t)st.st_size : size,
			 __ATOMIC_RELAXED);
	tblk_mutex_unlock(&s->ext_lock);
}

/*
 * Where the data in the file system block of @s's file that holds @from ends: past the last
 * non-zero byte at or after @from (rounded up to a sector), @from if there is none. Past the
 * block if it cannot be read: keeping a few zeroes beats cutting data.
 */
static uint64_t extend_block_data_end(struct file_state *s, uint64_t from, uint64_t size,
				      uint32_t blk)
{
	uint64_t base = TBLK_ALIGN_DOWN(from, blk);
	uint64_t end = TBLK_MIN(base + blk, size);
	uint8_t *buf;
	ssize_t n;

	if (posix_memalign((void **)&buf, blk, blk))
		return end;
	do {
		n = pread(s->fd, buf, blk, (off_t)base);	/* O_DIRECT: the whole block */
	} while (n < 0 && errno == EINTR);
	if (n >= 0) {
		end = from;
		for (uint64_t i = from - base; i < (uint64_t)n; i++)
			if (buf[i])
				end = base + TBLK_ALIGN_UP(i + 1, EXTEND_SECTOR);
		end = TBLK_MIN(end, size);
	}
	free(buf);
	return end;
}

/* Where the data in @s's file past @from ends (see extend_undo()), @from if there is none. */
static uint64_t extend_data_past(struct file_state *s, uint64_t from, uint64_t size,
				 uint32_t blk)
{
	uint64_t end = from, pos = TBLK_ALIGN_UP(from, blk);

	/* Whole blocks: our fallocate()d ones are holes until somebody writes them. */
	while (pos < size) {
		off_t d = lseek(s->fd, (off_t)pos, SEEK_DATA), h;

		if (d < 0 && errno == ENXIO)
			break;
		h = d < 0 ? -1 : lseek(s->fd, d, SEEK_HOLE);
		if (h <= d)
			return size;	/* cannot tell: keep everything */
		end = pos = (uint64_t)h;
	}
	if (end == from && from % blk)
		end = extend_block_data_end(s, from, size, blk);
	return TBLK_MIN(end, size);
}

/*
 * At close: gives back the part of the extension nobody wrote.
 *
 * Another open may write the file too (share-rw, or locking off: another backend, another
 * process), and may have written into our extension; its own data_end does not tell us
 * (an open made after we extended counts our extension as its data), and it may close
 * before or after us. So the rule is: the file is cut back to our data_end, but never
 * below data that is in the file past it. Our fallocate()d blocks read as holes to
 * SEEK_DATA until written, so that data is found with SEEK_DATA/SEEK_HOLE; in the file
 * system block that holds data_end, where they cannot tell, by reading it (up to its last
 * non-zero byte, rounded up to a sector). Nothing is cut if the file is now longer than our
 * extension made it: that tail is another open's, which gives it back at its own close by
 * the same rule. What this cannot see: zeroes another open "wrote" past its data_end by
 * moving it alone (extend_zeroed()): the file may end before them, and reads there return
 * zeroes all the same. What a failed write of ours left past data_end stays, as it would
 * have without the extension.
 */
static void extend_undo(struct file_state *s)
{
	uint64_t de = __atomic_load_n(&s->data_end, __ATOMIC_RELAXED);
	uint64_t phys = __atomic_load_n(&s->phys_end, __ATOMIC_RELAXED);
	struct stat st;

	if (!s->extend_ahead)
		return;
	if (phys > de && fstat(s->fd, &st) == 0 && (uint64_t)st.st_size <= phys &&
	    (uint64_t)st.st_size > de) {
		uint32_t blk = st.st_blksize >= EXTEND_SECTOR &&
			       !(st.st_blksize & (st.st_blksize - 1)) ? (uint32_t)st.st_blksize :
			       4096;
		uint64_t end = extend_data_past(s, de, (uint64_t)st.st_size, blk);

		if (end < (uint64_t)st.st_size)
			(void)!ftruncate(s->fd, (off_t)end);	/* nothing to do about a failure */
	}
	tblk_mutex_destroy(&s->ext_lock);
}

/* ---------------------------------------------------------------- open and close */

static int parse_aio(GHashTable *opts, unsigned int flags, enum file_aio *aio, GError **errp)
{
	g_autofree char *v = tblk__opts_take(opts, "aio");

	*aio = (flags & TBLK_OPEN_AIO_NATIVE) ? FILE_AIO_NATIVE :
	       (flags & TBLK_OPEN_AIO_URING) ? FILE_AIO_URING : FILE_AIO_THREADS;
	if (!v)
		return 0;
	if (!strcmp(v, "threads"))
		*aio = FILE_AIO_THREADS;
	else if (!strcmp(v, "native"))
		*aio = FILE_AIO_NATIVE;
	else if (!strcmp(v, "io_uring"))
		*aio = FILE_AIO_URING;
	else
		return tblk_error_set(errp, EINVAL, "Parameter 'aio' does not accept value '%s'",
				      v);
	return 0;
}

/* True if an O_DIRECT read of @len bytes into @buf at offset 0 is accepted. */
static bool direct_read_ok(int fd, void *buf, size_t len)
{
	ssize_t r;

	do {
		r = pread(fd, buf, len, 0);
	} while (r < 0 && errno == EINTR);
	return r >= 0;
}

/* The kernel's own answer (Linux 6.1+): true if it filled in both alignments. */
static bool statx_dio_align(int fd, uint32_t *offset_align, uint32_t *mem_align)
{
#ifdef STATX_DIOALIGN
	struct statx stx;

	if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
	    (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align &&
	    stx.stx_dio_mem_align && TBLK_IS_POW2(stx.stx_dio_offset_align) &&
	    TBLK_IS_POW2(stx.stx_dio_mem_align)) {
		*offset_align = stx.stx_dio_offset_align;
		*mem_align = stx.stx_dio_mem_align;
		return true;
	}
#endif
	return false;
}

/*
 * Probes by trial reads at offset 0, which only means something where block 0 holds data:
 * reads of a hole succeed whatever their alignment. Returns false if it cannot tell.
 */
static bool probe_dio_align(int fd, uint32_t *offset_align, uint32_t *mem_align)
{
	static const uint32_t sizes[] = { 512, 1024, 2048, 4096 };
	uint8_t *buf;
	bool found = false;

	if (lseek(fd, 0, SEEK_DATA) != 0 || posix_memalign((void **)&buf, 8192, 8192))
		return false;
	for (size_t i = 0; i < TBLK_ARRAY_SIZE(sizes) && !found; i++) {
		if (direct_read_ok(fd, buf, sizes[i])) {
			*offset_align = sizes[i];
			found = true;
		}
	}
	*mem_align = 4096;
	for (size_t i = 0; i < TBLK_ARRAY_SIZE(sizes) && found; i++) {
		if (direct_read_ok(fd, buf + sizes[i], *offset_align)) {
			*mem_align = sizes[i];
			break;
		}
	}
	free(buf);
	return found;
}

/*
 * O_DIRECT constraints: a device's logical block size; for a file, what the kernel reports,
 * else what trial reads show, else 4096 for both (always safe).
 */
static void probe_alignment(struct tblk_node *node, struct file_state *s)
{
	struct tblk_node_limits *l = &node->limits;
	uint32_t req = 4096, mem = 4096;
	int bs;

	l->request_alignment = l->mem_alignment = 1;
	if (!s->direct)
		return;
	if (s->is_bdev) {
		if (ioctl(s->fd, BLKSSZGET, &bs) == 0 && bs >= 512 && TBLK_IS_POW2(bs))
			req = mem = (uint32_t)bs;
	} else if (!statx_dio_align(s->fd, &req, &mem) && !probe_dio_align(s->fd, &req, &mem)) {
		req = mem = 4096;
	}
	l->request_alignment = req;
	l->mem_alignment = mem;
}

/* Takes (F_RDLCK) or drops (F_UNLCK) byte @off of @fd's locks. 0 or -errno. */
static int lock_byte(int fd, off_t off, short type)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = off, .l_len = 1 };

	return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* 1 if another open file holds a lock on byte @off, 0 if none, or -errno. */
static int byte_locked_elsewhere(int fd, off_t off)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = off, .l_len = 1 };

	if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
		return -errno;
	return fl.l_type != F_UNLCK;
}

/* True for the errors of a file system or kernel that has no OFD locks. */
static bool lock_unsupported(int err)
{
	return err == -EINVAL || err == -ENOLCK || err == -EOPNOTSUPP || err == -ENOSYS;
}

/*
 * Locks @fd for permissions @perm, letting others have only @shared, then checks that no
 * other open file contradicts that, in qemu's order and words. With @lax, a file system
 * without OFD locks means no locking (locking=auto). 0, or -errno with *errp; on failure
 * some bytes may stay locked until @fd is closed.
 */
static int lock_image(int fd, unsigned int perm, unsigned int shared, bool lax,
		      const char *name, GError **errp)
{
	unsigned int p;
	int r;

	for (p = 0; p < 2 * PERM_COUNT; p++) {
		bool mine = p < PERM_COUNT ? perm & (1u << p) :
			    !(shared & (1u << (p - PERM_COUNT)));
		off_t off = p < PERM_COUNT ? LOCK_PERM_BASE + p :
			    LOCK_SHARED_BASE + (p - PERM_COUNT);

		if (!mine)
			continue;
		r = lock_byte(fd, off, F_RDLCK);
		if (r < 0 && lax && lock_unsupported(r))
			return 0;
		if (r < 0)
			return tblk_error_set_errno(errp, -r, "Failed to lock byte %d", (int)off);
	}
	for (p = 0; p < 2 * PERM_COUNT; p++) {
		unsigned int bit = 1u << (p % PERM_COUNT);
		bool want = p < PERM_COUNT ? perm & bit : !(shared & bit);

		if (!want)
			continue;
		/* What I have must not be denied; what I deny must not be had. */
		r = byte_locked_elsewhere(fd, p < PERM_COUNT ? LOCK_SHARED_BASE + p :
					  LOCK_PERM_BASE + (p - PERM_COUNT));
		if (r < 0)
			return tblk_error_set_errno(errp, -r, "Failed to check lock byte");
		if (r > 0)
			return tblk_error_set(errp, EAGAIN, "Failed to get %s\"%s\" lock\n"
					      "Is another process using the image [%s]?",
					      p < PERM_COUNT ? "" : "shared ",
					      perm_names[p % PERM_COUNT], name);
	}
	return 0;
}

/* The permissions a node opened with @flags holds, and those it lets others have. */
static void node_perms(unsigned int flags, unsigned int *perm, unsigned int *shared)
{
	*perm = 1u << PERM_CONSISTENT_READ;
	if (flags & TBLK_OPEN_RDWR)
		*perm |= 1u << PERM_WRITE;
	if ((flags & TBLK_OPEN_RDWR) && (flags & TBLK_OPEN_RESIZE))
		*perm |= 1u << PERM_RESIZE;
	*shared = PERM_ALL;
	if (flags & TBLK_OPEN_SHARE_RW)
		return;
	if (flags & TBLK_OPEN_NO_SHARE)
		*shared &= ~(1u << PERM_WRITE);
	if (flags & (TBLK_OPEN_NO_SHARE | TBLK_OPEN_NO_SHARE_RESIZE))
		*shared &= ~(1u << PERM_RESIZE);
}

/* locking=auto|on|off into *lock (-1 auto, 0 off, 1 on). */
static int parse_locking(GHashTable *opts, int *lock, GError **errp)
{
	g_autofree char *v = tblk__opts_take(opts, "locking");

	*lock = -1;
	if (!v || !strcmp(v, "auto"))
		return 0;
	if (!strcmp(v, "on") || !strcmp(v, "off")) {
		*lock = !strcmp(v, "on");
		return 0;
	}
	return tblk_error_set(errp, EINVAL, "invalid parameter value: %s", v);
}

static int file_open_fd(const char *filename, unsigned int flags, bool direct, GError **errp)
{
	int oflags = O_CLOEXEC | ((flags & TBLK_OPEN_RDWR) ? O_RDWR : O_RDONLY);
	int fd;

	if (direct)
		oflags |= O_DIRECT;
	fd = open(filename, oflags);
	if (fd < 0)
		return tblk_error_set_errno(errp, errno, "Could not open '%s'", filename);
	return fd;
}

static int file_open(struct tblk_node *node, GHashTable *opts, unsigned int flags,
		     GError **errp)
{
	struct file_state *s = node->opaque;
	g_autofree char *filename = tblk__opts_take(opts, "filename");
	unsigned int perm, shared;
	struct stat st;
	int ret, lock;

	g_free(tblk__opts_take(opts, "aio-max-batch"));
	if (!filename)
		return tblk_error_set(errp, EINVAL, "The '%s' block driver requires a file name",
				      node->drv->name);
	ret = parse_locking(opts, &lock, errp);
	if (ret < 0)
		return ret;
	ret = parse_aio(opts, flags, &s->aio, errp);
	if (ret < 0)
		return ret;
	s->direct = flags & TBLK_OPEN_NOCACHE;
	s->fd = file_open_fd(filename, flags, s->direct, errp);
	if (s->fd < 0)
		return s->fd;
	/* qemu opens the file first: a missing file is the error then */
	if (s->aio == FILE_AIO_NATIVE && !s->direct) {
		close(s->fd);
		return tblk_error_set(errp, EINVAL, "aio=native was specified, but it requires "
				      "cache.direct=on, which was not specified.");
	}
	if (fstat(s->fd, &st) < 0) {
		ret = tblk_error_set_errno(errp, errno, "Could not stat '%s'", filename);
		close(s->fd);
		return ret;
	}
	s->is_bdev = S_ISBLK(st.st_mode);
	node_perms(flags, &perm, &shared);
	ret = lock ? lock_image(s->fd, perm, shared, lock < 0, filename, errp) : 0;
	if (ret < 0) {
		close(s->fd);
		return ret;
	}
	s->lock = (flags & TBLK_OPEN_SHARE_RW) ? 0 : lock;
	s->perm = perm;
	s->shared = shared;
	tblk_mutex_init(&s->perm_lock);
	node->filename = g_steal_pointer(&filename);
	extend_init(s, flags, &st);
	probe_alignment(node, s);
	/* Linux caps one read/write at 2 GiB - 4 KiB: stay well below. */
	node->limits.max_transfer = 1u << 30;
	node->limits.max_pdiscard = 1u << 30;
	node->limits.max_pwrite_zeroes = 1u << 30;
	return 0;
}

static void file_close(struct tblk_node *node)
{
	struct file_state *s = node->opaque;

	extend_undo(s);
	close(s->fd);
	tblk_mutex_destroy(&s->perm_lock);
}

_Static_assert(TBLK_PERM_CONSISTENT_READ == 1u << PERM_CONSISTENT_READ &&
	       TBLK_PERM_WRITE == 1u << PERM_WRITE &&
	       TBLK_PERM_WRITE_UNCHANGED == 1u << PERM_WRITE_UNCHANGED &&
	       TBLK_PERM_RESIZE == 1u << PERM_RESIZE && 2 * PERM_COUNT == 8,
	       "TBLK_PERM_* are the lock bytes' permissions");

/* Drops the lock bytes of @perm and @deny (which the open did not take). */
static void unlock_perms(struct file_state *s, unsigned int perm, unsigned int deny)
{
	for (unsigned int p = 0; p < PERM_COUNT; p++) {
		if (perm & (1u << p))
			lock_byte(s->fd, LOCK_PERM_BASE + p, F_UNLCK);
		if (deny & (1u << p))
			lock_byte(s->fd, LOCK_SHARED_BASE + p, F_UNLCK);
	}
}

/*
 * Takes or releases permissions beyond the open's, counted per permission: a byte is locked
 * when its count leaves 0 (unless the open holds it already) and unlocked when it is back.
 */
static int file_lock_perms(struct tblk_node *node, unsigned int perm, unsigned int deny,
			   bool take, GError **errp)
{
	struct file_state *s = node->opaque;
	unsigned int new_perm = 0, new_deny = 0;
	int ret = 0;

	perm &= PERM_ALL;
	deny &= PERM_ALL;
	tblk_mutex_lock(&s->perm_lock);
	for (unsigned int p = 0; p < PERM_COUNT; p++) {
		unsigned int *pc = &s->extra[p], *dc = &s->extra[PERM_COUNT + p], bit = 1u << p;

		if ((perm & bit) && (take ? *pc == 0 : *pc == 1) && !(s->perm & bit))
			new_perm |= bit;
		if ((deny & bit) && (take ? *dc == 0 : *dc == 1) && (s->shared & bit))
			new_deny |= bit;
		assert(take || ((!(perm & bit) || *pc > 0) && (!(deny & bit) || *dc > 0)));
	}
	if (take && s->lock && (new_perm | new_deny)) {
		ret = lock_image(s->fd, new_perm, PERM_ALL & ~new_deny, s->lock < 0,
				 node->filename, errp);
		if (ret < 0)
			unlock_perms(s, new_perm, new_deny);
	} else if (!take && s->lock) {
		unlock_perms(s, new_perm, new_deny);
	}
	for (unsigned int p = 0; ret == 0 && p < PERM_COUNT; p++) {
		if (perm & (1u << p))
			s->extra[p] += take ? 1 : -1u;
		if (deny & (1u << p))
			s->extra[PERM_COUNT + p] += take ? 1 : -1u;
	}
	tblk_mutex_unlock(&s->perm_lock);
	return ret;
}

/* ---------------------------------------------------------------- pool path */

/*
 * The part of @iov from byte @done on: @iov itself at first, a copy after a short transfer
 * (rare). *owned is what the caller frees.
 */
static const struct iovec *iov_rest(const struct iovec *iov, int iovcnt, uint64_t done,
				    uint64_t bytes, int *cnt, struct iovec **owned)
{
	if (done == 0 && iovcnt <= IOV_MAX) {
		*cnt = iovcnt;
		return iov;
	}
	g_free(*owned);
	*owned = g_new(struct iovec, iovcnt);
	*cnt = tblk_iov_slice(*owned, TBLK_MIN(iovcnt, IOV_MAX), iov, iovcnt, done,
			      bytes - done);
	if (*cnt < 0) {
		/* More than IOV_MAX entries left: move what fits now, the rest next time. */
		*cnt = IOV_MAX;
	}
	return *owned;
}

static ssize_t pwritev_fua(int fd, const struct iovec *iov, int n, off_t off, bool fua)
{
	ssize_t r;

	if (!fua)
		return pwritev(fd, iov, n, off);
	r = pwritev2(fd, iov, n, off, RWF_DSYNC);
	if (r < 0 && (errno == EOPNOTSUPP || errno == EINVAL || errno == ENOSYS)) {
		r = pwritev(fd, iov, n, off);
		if (r >= 0 && fdatasync(fd) < 0)
			return -1;
	}
	return r;
}

/*
 * Moves @bytes at @offset until done: retries interrupted and short transfers; a read that
 * meets the end of the file fills the rest with zeroes, as a sparse tail would read.
 */
static int file_rw(struct tblk_node *node, bool write, uint64_t offset, uint64_t bytes,
		   const struct iovec *iov, int iovcnt, unsigned int flags)
{
	struct file_state *s = node->opaque;
	g_autofree struct iovec *owned = NULL;
	uint64_t done = 0;

	while (done < bytes) {
		int n;
		const struct iovec *rest = iov_rest(iov, iovcnt, done, bytes, &n, &owned);
		off_t pos = (off_t)(offset + done);
		ssize_t r = write ? pwritev_fua(s->fd, rest, n, pos, flags & TBLK_REQ_FUA) :
			    preadv(s->fd, rest, n, pos);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0 && write)
			return -ENOSPC;
		if (r == 0) {
			tblk_iov_memset(iov, iovcnt, done, 0, bytes - done);
			break;
		}
		done += (uint64_t)r;
	}
	return 0;
}

static int file_preadv(struct tblk_node *node, uint64_t offset, uint64_t bytes,
		       const struct iovec *iov, int iovcnt, unsigned int flags)
{
	return file_rw(node, false, offset, bytes, iov, iovcnt, flags);
}

static int file_pwritev(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			const struct iovec *iov, int iovcnt, unsigned int flags)
{
	int ret;

	extend_for_write(node->opaque, offset + bytes);
	ret = file_rw(node, true, offset, bytes, iov, iovcnt, flags);
	extend_written(node->opaque, offset + bytes, ret);
	return ret;
}

static int file_flush(struct tblk_node *node)
{
	struct file_state *s = node->opaque;

	return fdatasync(s->fd) < 0 ? -errno : 0;
}

static int errno_notsup(void)
{
	int e = errno;

	return (e == EOPNOTSUPP || e == ENOTTY || e == ENOSYS || e == EINVAL) ? -ENOTSUP : -e;
}

static int file_pdiscard(struct tblk_node *node, uint64_t offset, uint64_t bytes)
{
	struct file_state *s = node->opaque;

	if (s->is_bdev) {
		uint64_t range[2] = { offset, bytes };

		return ioctl(s->fd, BLKDISCARD, range) < 0 ? errno_notsup() : 0;
	}
	if (fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset,
		      (off_t)bytes) < 0)
		return errno_notsup();
	return 0;
}

/* fallocate(2) as 0 or -errno, "not supported" in any of its spellings as -ENOTSUP. */
static int do_fallocate(int fd, int mode, uint64_t offset, uint64_t bytes)
{
	return fallocate(fd, mode, (off_t)offset, (off_t)bytes) < 0 ? errno_notsup() : 0;
}

/*
 * Zeroes a range of a regular file without writing zeroes, trying what qemu's file driver
 * tries, in its order: a hole punched (if unmapping is allowed), FALLOC_FL_ZERO_RANGE, a
 * hole punched and allocated again (tmpfs has no ZERO_RANGE), and past the end of the file
 * plain allocation. -ENOTSUP if none works; an error other than "not supported" ends it.
 */
static int zero_regular(int fd, uint64_t offset, uint64_t bytes, bool unmap)
{
	struct stat st;
	int ret;

	if (unmap) {
		ret = do_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, bytes);
		if (ret != -ENOTSUP && ret != -EBUSY)
			return ret;
	}
	ret = do_fallocate(fd, FALLOC_FL_ZERO_RANGE, offset, bytes);
	if (ret != -ENOTSUP)
		return ret;
	ret = do_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, bytes);
	if (ret == 0)
		ret = do_fallocate(fd, 0, offset, bytes);
	if (ret != -ENOTSUP)
		return ret;
	if (fstat(fd, &st) == 0 && offset >= (uint64_t)st.st_size)
		return do_fallocate(fd, 0, offset, bytes);
	return -ENOTSUP;
}

static int file_pwrite_zeroes(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			      unsigned int flags)
{
	struct file_state *s = node->opaque;
	int ret = -ENOTSUP;

	if (s->is_bdev) {
		uint64_t range[2] = { offset, bytes };

		ret = ioctl(s->fd, BLKZEROOUT, range) < 0 ? errno_notsup() : 0;
	} else if (extend_zeroed(s, offset, bytes)) {
		ret = 0;
	} else {
		extend_for_write(s, offset + bytes);
		ret = zero_regular(s->fd, offset, bytes, flags & TBLK_REQ_MAY_UNMAP);
		extend_written(s, offset + bytes, ret);
	}
	if (ret == 0 && (flags & TBLK_REQ_FUA))
		ret = file_flush(node);
	return ret;
}

static int file_block_status(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			     uint64_t *pnum, uint64_t *map)
{
	struct file_state *s = node->opaque;
	off_t data, hole;

	if (map)
		*map = offset;
	*pnum = bytes;
	if (s->is_bdev)
		return TBLK_BS_DATA | TBLK_BS_OFFSET_VALID;
	data = lseek(s->fd, (off_t)offset, SEEK_DATA);
	if (data < 0 && errno == ENXIO) {
		return TBLK_BS_ZERO | TBLK_BS_OFFSET_VALID;	/* a hole up to the end */
	} else if (data < 0) {
		return TBLK_BS_DATA | TBLK_BS_OFFSET_VALID;	/* cannot tell: data */
	} else if ((uint64_t)data > offset) {
		*pnum = TBLK_MIN(bytes, (uint64_t)data - offset);
		return TBLK_BS_ZERO | TBLK_BS_OFFSET_VALID;
	}
	hole = lseek(s->fd, (off_t)offset, SEEK_HOLE);
	if (hole > (off_t)offset)
		*pnum = TBLK_MIN(bytes, (uint64_t)hole - offset);
	return TBLK_BS_DATA | TBLK_BS_OFFSET_VALID;
}

static int64_t file_getlength(struct tblk_node *node)
{
	struct file_state *s = node->opaque;
	struct stat st;
	uint64_t size;

	if (s->is_bdev)
		return ioctl(s->fd, BLKGETSIZE64, &size) < 0 ? -errno : (int64_t)size;
	if (s->extend_ahead)
		return (int64_t)__atomic_load_n(&s->data_end, __ATOMIC_RELAXED);
	return fstat(s->fd, &st) < 0 ? -errno : (int64_t)st.st_size;
}

static int64_t file_get_allocated_size(struct tblk_node *node)
{
	struct file_state *s = node->opaque;
	struct stat st;

	return fstat(s->fd, &st) < 0 ? -errno : (int64_t)st.st_blocks * 512;
}

/* ---------------------------------------------------------------- truncate and create */

/* Resizes @fd from @old to @size; only "off" shrinks, "falloc" and "full" grow. */
static int fd_resize(int fd, uint64_t old, uint64_t size, const char *prealloc, GError **errp)
{
	bool off = !prealloc || !strcmp(prealloc, "off");

	if (!off && size < old)
		return tblk_error_set(errp, ENOTSUP, "Cannot use preallocation for shrinking files");
	if (off) {
		if (ftruncate(fd, (off_t)size) < 0)
			return tblk_error_set_errno(errp, errno, "Could not resize file");
		return 0;
	}
	if (!strcmp(prealloc, "falloc")) {
		int r = size == old ? 0 : posix_fallocate(fd, (off_t)old, (off_t)(size - old));

		if (r)
			return tblk_error_set_errno(errp, r, "Could not preallocate new data");
		return 0;
	}
	if (!strcmp(prealloc, "full")) {
		g_autofree char *zero = g_malloc0(1 << 20);

		if (ftruncate(fd, (off_t)size) < 0)
			return tblk_error_set_errno(errp, errno, "Could not resize file");
		for (uint64_t pos = old; pos < size;) {
			ssize_t r = pwrite(fd, zero, TBLK_MIN(size - pos, 1u << 20), (off_t)pos);

			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0)
				return tblk_error_set_errno(errp, r < 0 ? errno : ENOSPC,
							    "Could not write zeros for "
							    "preallocation");
			pos += (uint64_t)r;
		}
		return fsync(fd) < 0 ? tblk_error_set_errno(errp, errno, "Could not flush") : 0;
	}
	return tblk_error_set(errp, EINVAL, "Unsupported preallocation mode: %s", prealloc);
}

static int file_truncate(struct tblk_node *node, uint64_t size, const char *prealloc,
			 GError **errp)
{
	struct file_state *s = node->opaque;
	int64_t old = file_getlength(node);
	int ret;

	if (old < 0)
		return tblk_error_set_errno(errp, (int)-old, "Could not get the file size");
	if (s->is_bdev) {
		if (size > (uint64_t)old)
			return tblk_error_set(errp, EINVAL, "Cannot grow device files");
		return 0;
	}
	ret = fd_resize(s->fd, (uint64_t)old, size, prealloc, errp);
	if (ret == 0)
		extend_reset(s, size);
	return ret;
}

/*
 * Writes zeroes over the first block of a new file, as qemu does: tools see the file's
 * first block allocated, and O_DIRECT alignment probing has data to read.
 */
static int allocate_first_block(int fd, uint64_t size)
{
	static const uint8_t zero[4096];
	size_t n = (size_t)TBLK_MIN(size, (uint64_t)sizeof(zero));
	ssize_t r;

	if (n == 0)
		return 0;
	do {
		r = pwrite(fd, zero, n, 0);
	} while (r < 0 && errno == EINTR);
	return r < 0 ? -errno : 0;
}

static int file_create(const char *filename, uint64_t size, GHashTable *opts, GError **errp)
{
	g_autofree char *prealloc = tblk__opts_take(opts, "preallocation");
	bool known = !prealloc || !strcmp(prealloc, "off") || !strcmp(prealloc, "falloc") ||
		     !strcmp(prealloc, "full");
	int fd, ret;

	g_free(tblk__opts_take(opts, "nocow"));
	g_free(tblk__opts_take(opts, "extent_size_hint"));
	if (!known && strcmp(prealloc, "metadata"))
		return tblk_error_set(errp, EINVAL, "invalid parameter value: %s", prealloc);
	/* Whole sectors, as qemu sizes images. */
	size = size > UINT64_MAX - 511 ? size : TBLK_ALIGN_UP(size, 512);
	fd = open(filename, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return tblk_error_set_errno(errp, errno, "Could not create '%s'", filename);
	/* Nobody may be using a file we are about to empty: lock it as qemu does, first. */
	ret = lock_image(fd, (1u << PERM_WRITE) | (1u << PERM_RESIZE),
			 PERM_ALL & ~(1u << PERM_RESIZE), true, filename, errp);
	if (ret == 0 && ftruncate(fd, 0) < 0)
		ret = tblk_error_set_errno(errp, errno, "Could not clear '%s'", filename);
	if (ret == 0 && !known)
		ret = tblk_error_set(errp, ENOTSUP, "Unsupported preallocation mode: %s",
				     prealloc);
	if (ret == 0)
		ret = fd_resize(fd, 0, size, prealloc, errp);
	if (ret == 0 && (!prealloc || !strcmp(prealloc, "off")) &&
	    allocate_first_block(fd, size) < 0)
		ret = tblk_error_set_errno(errp, errno, "Could not write to '%s'", filename);
	close(fd);
	return ret;
}

/* ---------------------------------------------------------------- fast path */

static void file_fast_complete(struct tblk_aio_op *op, long ret)
{
	struct file_fast *ff = tblk_container_of(op, struct file_fast, op);
	struct tblk_req *req = ff->req;

	if (ret >= 0 && req->kind != TBLK_REQ_FLUSH && (uint64_t)ret != req->bytes) {
		/* Short transfer (end of file, or an interrupted one): redo it in the pool. */
		tblk_pool_submit(tblk_pool_default(), &req->work);
		return;
	}
	if (ff->op.type == TBLK_AIO_WRITE)
		extend_written(ff->s, ff->op.offset + req->bytes, ret < 0 ? (int)ret : 0);
	tblk__req_fast_done(req, ret < 0 ? (int)ret : 0);
}

static int file_submit_fast(struct tblk_node *node, struct tblk_req *req, uint64_t offset)
{
	struct file_state *s = node->opaque;
	struct file_fast *ff = (struct file_fast *)req->drv_scratch;
	struct tblk_aio_engine *eng;
	uint32_t align = node->limits.request_alignment;

	if (s->aio == FILE_AIO_THREADS)
		return -EAGAIN;
	if (req->kind == TBLK_REQ_FLUSH) {
		if (node->flags & TBLK_OPEN_NO_FLUSH)
			return -EAGAIN;
		ff->op.type = TBLK_AIO_FDSYNC;
	} else if (req->kind == TBLK_REQ_READ || req->kind == TBLK_REQ_WRITE) {
		if (((offset | req->bytes) & (align - 1)) || req->iovcnt > 1024 ||
		    (req->flags & TBLK_REQ_FUA) || req->bytes == 0 ||
		    !tblk_iov_aligned(req->iov, req->iovcnt, node->limits.mem_alignment))
			return -EAGAIN;
		ff->op.type = req->kind == TBLK_REQ_READ ? TBLK_AIO_READ : TBLK_AIO_WRITE;
		if (req->kind == TBLK_REQ_WRITE)
			extend_for_write(s, offset + req->bytes);
	} else {
		return -EAGAIN;
	}
	eng = tblk__aio_get(req->work.loop,
			    s->aio == FILE_AIO_NATIVE ? TBLK_AIO_LINUX : TBLK_AIO_URING, NULL);
	if (!eng)
		return -EAGAIN;
	ff->req = req;
	ff->s = s;
	ff->op.fd = s->fd;
	ff->op.offset = offset;
	ff->op.iov = req->iov;
	ff->op.iovcnt = req->iovcnt;
	ff->op.complete = file_fast_complete;
	tblk__aio_submit(eng, &ff->op);
	return 0;
}

#define FILE_DRIVER(drv_name)					\
	{							\
		.name = drv_name,				\
		.is_protocol = true,				\
		.instance_size = sizeof(struct file_state),	\
		.open = file_open,				\
		.close = file_close,				\
		.lock_perms = file_lock_perms,			\
		.create = file_create,				\
		.preadv = file_preadv,				\
		.pwritev = file_pwritev,			\
		.flush = file_flush,				\
		.pdiscard = file_pdiscard,			\
		.pwrite_zeroes = file_pwrite_zeroes,		\
		.block_status = file_block_status,		\
		.getlength = file_getlength,			\
		.get_allocated_size = file_get_allocated_size,	\
		.truncate = file_truncate,			\
		.submit_fast = file_submit_fast,		\
	}

const struct tblk_driver tblk__drv_file = FILE_DRIVER("file");
const struct tblk_driver tblk__drv_host_device = FILE_DRIVER("host_device");
