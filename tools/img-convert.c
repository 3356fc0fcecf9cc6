/* SPDX-License-Identifier: MIT */
/*
 * img-convert.c - "tblk-img convert": qemu-img convert's command line, its checks in
 * qemu's order with qemu's messages, the creation of the target (any format, through
 * tblk_img_create()) and the copy.
 *
 * The copy walks the concatenated sources in chunks cut by block status: unallocated and
 * zero ranges are skipped (or written as zeroes when the target may hold old data), data
 * ranges are read in pieces of at most 2 MiB and written back with runs of -S zero bytes
 * left out. Up to -m chunks are in flight at once through the asynchronous API, all on the
 * main thread's loop; writes happen in the order of the image unless -W. Compressed targets
 * (-c) get whole clusters with TBLK_REQ_COMPRESSED; into a new target those writes start in
 * order but run side by side, so the format compresses them on all the pool's threads and
 * places them in the order they started (qcow2: the same file as qemu-img's; a failing one
 * does not stop those already started). Chunk boundaries and
 * the progress figures follow qemu-img's, so -p prints the same figures.
 *
 * Threading: the main thread runs the loop of the sources and the target; every callback
 * runs there, so nothing here is shared with another thread.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tools/img-int.h"

#define SECTOR			512
#define BUF_SECTORS		4096		/* 2 MiB: the largest data chunk */
#define MAX_BUF_SECTORS		32768		/* 16 MiB: the largest -S */
#define MAX_REQ_SECTORS		(TOOL_REQUEST_MAX_BYTES / SECTOR)
#define MAX_SLOTS		16		/* -m limit */
#define RATE_SLICE_NS		100000000ull	/* -r accounting period */

struct convert_args {
	const char *fmt, *out_fmt, *cache, *src_cache;
	unsigned int src_flags;			/* TBLK_OPEN_* of -T */
	const char *backing, *backing_fmt;	/* -B, -F */
	const char *snapshot;			/* -l NAME, or NULL */
	bool snapshot_opts;			/* -l snapshot.id=...,snapshot.name=... */
	GString *options;			/* -o lists joined by ',' */
	bool compressed, progress, quiet, skip_create, in_order, copy_range, image_opts;
	bool tgt_image_opts, target_is_zero, bitmaps, skip_broken, salvage, force_share;
	bool explicit_sparse;
	int64_t min_sparse;			/* sectors */
	int num_slots;				/* -m */
	int64_t rate_limit;			/* bytes per second, 0: none */
	char **srcs;
	int nr_srcs;
	const char *out;
};

enum chunk_status { ST_DATA, ST_ZERO, ST_BACKING };

enum slot_state {
	SLOT_FREE,		/* may take the next chunk */
	SLOT_READING,		/* source read in flight */
	SLOT_READY,		/* data in the buffer (or none needed), waiting to write */
	SLOT_WRITING,		/* a target write in flight */
	SLOT_WRITTEN,		/* the writes issued completed (more pieces may follow) */
};

struct convert;

/* One chunk in flight; owned by the main thread like everything here. */
struct slot {
	struct convert *cv;
	enum slot_state state;
	int64_t sector;			/* chunk start in the concatenated sources */
	int64_t n;			/* chunk length in sectors */
	enum chunk_status status;
	uint8_t *buf;
	struct iovec iov;		/* the read */
	struct iovec wiov;		/* the data write in flight */
	int64_t cursor;			/* pieces: where the next one starts */
	unsigned int pending;		/* requests in flight */
	int ret;			/* first error of the requests */
	bool advanced;			/* the in-order write position is past this chunk */
};

struct convert {
	const struct convert_args *a;
	struct tblk_loop *loop;
	struct tblk_blk **src;
	int64_t *src_sectors;
	int *src_align;			/* sectors: request alignment or cluster */
	int64_t total_sectors;
	struct tblk_blk *target;

	int64_t min_sparse;		/* sectors, 0: no sparse detection */
	int64_t buf_sectors;
	int64_t alignment;		/* sectors, power of two: write boundaries */
	int64_t cluster_sectors;
	bool compressed, has_zero_init, target_has_backing, target_is_new;
	int64_t target_backing_sectors;	/* -1: unknown or none */

	/* The block status last asked: [.., next_status) has status. */
	int64_t next_status;
	enum chunk_status status;

	int64_t allocated_sectors;	/* what progress counts */
	int64_t allocated_done;

	struct slot slots[MAX_SLOTS];
	int nr_slots;
	int64_t next_sector;		/* next chunk to hand out */
	int64_t wr_offs;		/* in order: where the next write must start */
	unsigned int inflight;		/* requests submitted and not completed */
	int ret;			/* first error; stops handing out chunks */

	uint64_t rate_slice_start;	/* -r: current accounting slice */
	uint64_t rate_slice_bytes;	/* -r: read in it */
	uint64_t rate_next;		/* -r: when the next data chunk may start */
};

/* ---------------------------------------------------------------- command line */

enum {
	OPT_OBJECT = 256, OPT_IMAGE_OPTS, OPT_TARGET_IMAGE_OPTS, OPT_SALVAGE,
	OPT_TARGET_IS_ZERO, OPT_BITMAPS, OPT_SKIP_BROKEN,
};

static void parse_sparse(struct convert_args *a, const char *arg)
{
	int64_t v = img_cvtnum_full("buffer size for sparse output", arg, 0, INT64_MAX);

	if (v < 0)
		exit(1);
	if (v % SECTOR || v / SECTOR > MAX_BUF_SECTORS) {
		tool_error("Invalid buffer size for sparse output specified. Valid sizes are "
			   "multiples of %d up to %d. Select 0 to disable sparse detection (fully "
			   "allocates output).", SECTOR, MAX_BUF_SECTORS * SECTOR);
		exit(1);
	}
	a->min_sparse = v / SECTOR;
	a->explicit_sparse = true;
}

static void parse_slots(struct convert_args *a, const char *arg)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(arg, &end, 0);
	if (end == arg || *end || errno || v < 1 || v > MAX_SLOTS) {
		tool_error("Invalid number of coroutines. Allowed number of coroutines is between "
			   "1 and %d", MAX_SLOTS);
		exit(1);
	}
	a->num_slots = (int)v;
}

static void parse_one(struct convert_args *a, int c, char **argv)
{
	switch (c) {
	case '?': case ':': img_bad_option(c, argv);
	case 'h': img_help();
	case 'f': a->fmt = optarg; break;
	case 'O': a->out_fmt = optarg; break;
	case 'B': a->backing = optarg; break;
	case 'F': a->backing_fmt = optarg; break;
	case 'c': a->compressed = true; break;
	case 'C': a->copy_range = true; break;
	case 'p': a->progress = true; break;
	case 'q': a->quiet = true; break;
	case 'n': a->skip_create = true; break;
	case 'W': a->in_order = false; break;
	case 'U': a->force_share = true; break;
	case 't': a->cache = optarg; break;
	case 'T': a->src_cache = optarg; break;
	case 'S': parse_sparse(a, optarg); break;
	case 'm': parse_slots(a, optarg); break;
	case 'o':
		if (!img_opt_list_valid(optarg)) {
			tool_error("Invalid option list: %s", optarg);
			exit(1);
		}
		if (a->options->len)
			g_string_append_c(a->options, ',');
		g_string_append(a->options, optarg);
		break;
	case 'l':
		a->snapshot_opts = img_snapshot_arg_check(optarg);
		a->snapshot = optarg;
		break;
	case 'r':
		a->rate_limit = img_cvtnum_full("rate limit", optarg, 0, INT64_MAX);
		if (a->rate_limit < 0)
			exit(1);
		break;
	case OPT_OBJECT: img_object_check(optarg); break;
	case OPT_IMAGE_OPTS: a->image_opts = true; break;
	case OPT_TARGET_IMAGE_OPTS: a->tgt_image_opts = true; break;
	case OPT_SALVAGE: a->salvage = true; break;
	case OPT_TARGET_IS_ZERO: a->target_is_zero = true; break;
	case OPT_BITMAPS: a->bitmaps = true; break;
	case OPT_SKIP_BROKEN: a->skip_broken = true; break;
	}
}

/* The checks qemu-img makes before opening anything; exits 1 (0 after -o help). */
static void check_args(struct convert_args *a)
{
	const char *msg = NULL;

	if (!a->out_fmt && !a->tgt_image_opts)
		a->out_fmt = "raw";
	if (a->skip_broken && !a->bitmaps)
		msg = "Use of --skip-broken-bitmaps requires --bitmaps";
	else if (a->compressed && a->copy_range)
		msg = "Cannot enable copy offloading when -c is used";
	else if (a->explicit_sparse && a->copy_range)
		msg = "Cannot enable copy offloading when -S is used";
	else if (a->copy_range && a->salvage)
		msg = "Cannot use copy offloading in salvaging mode";
	else if (a->tgt_image_opts && !a->skip_create)
		msg = "--target-image-opts requires use of -n flag";
	else if (a->skip_create && a->options->len)
		msg = "-o has no effect when skipping image creation";
	else if (a->target_is_zero && !a->skip_create)
		msg = "--target-is-zero requires use of -n flag";
	if (msg) {
		tool_error("%s", msg);
		exit(1);
	}
	if (a->options->len && img_opt_list_has_help(a->options->str)) {
		if (!a->out_fmt) {
			tool_error("Option help requires a format be specified");
			exit(1);
		}
		exit(img_create_opts_help(a->out_fmt, a->out));
	}
	if (a->nr_srcs < 1) {
		tool_error("Must specify image file name");
		exit(1);
	}
}

static void convert_parse(int argc, char **argv, struct convert_args *a)
{
	static const struct option long_opts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "object", required_argument, NULL, OPT_OBJECT },
		{ "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
		{ "target-image-opts", no_argument, NULL, OPT_TARGET_IMAGE_OPTS },
		{ "salvage", no_argument, NULL, OPT_SALVAGE },
		{ "target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO },
		{ "bitmaps", no_argument, NULL, OPT_BITMAPS },
		{ "skip-broken-bitmaps", no_argument, NULL, OPT_SKIP_BROKEN },
		{ "force-share", no_argument, NULL, 'U' },
		{ NULL, 0, NULL, 0 },
	};
	GError *err = NULL;
	int c;

	while ((c = getopt_long(argc, argv, ":hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:", long_opts,
				NULL)) != -1)
		parse_one(a, c, argv);
	a->nr_srcs = argc - optind - 1;
	a->srcs = argv + optind;
	a->out = a->nr_srcs >= 1 ? argv[argc - 1] : NULL;
	check_args(a);
	if (tblk_parse_cache_mode(a->src_cache, &a->src_flags, &err) < 0) {
		g_clear_error(&err);
		tool_error("Invalid source cache option: %s", a->src_cache);
		exit(1);
	}
	if (a->quiet)
		a->progress = false;
}

/* ---------------------------------------------------------------- chunks */

static bool sector_is_zero(const uint8_t *p)
{
	const uint64_t *w = (const uint64_t *)p;
	uint64_t acc = 0;

	if (w[0] || w[SECTOR / 8 - 1])
		return false;
	for (int i = 0; i < SECTOR / 8; i++)
		acc |= w[i];
	return acc == 0;
}

static bool buffer_is_zero(const uint8_t *p, int64_t sectors)
{
	for (int64_t i = 0; i < sectors; i++)
		if (!sector_is_zero(p + i * SECTOR))
			return false;
	return true;
}

/*
 * The run of sectors at @buf that are all zero or all not, up to @n; returns true for data.
 * Where the run does not end on an @align boundary it is cut there: a data run grows to the
 * boundary (the block is written anyway), a zero run shrinks to it, and a zero run that does
 * not even reach the boundary counts as data (the data after it rewrites that block).
 */
static bool run_length(const uint8_t *buf, int64_t n, int64_t sector, int64_t align,
		       int64_t *pnum)
{
	bool zero = sector_is_zero(buf);
	int64_t i, tail;

	for (i = 1; i < n && sector_is_zero(buf + i * SECTOR) == zero; i++)
		;
	if (i < n) {
		tail = (sector + i) & (align - 1);
		if (tail && zero && i <= tail)
			zero = false;
		if (tail && !zero)
			i = i + align - tail < n ? i + align - tail : n;
		else if (tail)
			i -= tail;
	}
	*pnum = i;
	return !zero;
}

/*
 * The next piece of a data buffer to write: true and a data run that swallows zero runs
 * shorter than @min (so short gaps do not split writes), or false and a zero run.
 */
static bool next_piece(const uint8_t *buf, int64_t n, int64_t sector, int64_t min,
		       int64_t align, int64_t *pnum)
{
	int64_t used, checked, r;

	if (n < min)
		min = n;
	if (!run_length(buf, n, sector, align, pnum))
		return false;
	used = checked = *pnum;
	while (checked < n) {
		bool data = run_length(buf + checked * SECTOR, n - checked, sector + checked,
				       align, &r);

		checked += r;
		if (data)
			used = checked;
		else if (r >= min)
			break;
	}
	*pnum = used;
	return true;
}

/* The source holding @sector and where that source starts. */
static int select_src(const struct convert *cv, int64_t sector, int64_t *start)
{
	int i;

	*start = 0;
	for (i = 0; i < cv->a->nr_srcs - 1; i++) {
		if (sector < *start + cv->src_sectors[i])
			break;
		*start += cv->src_sectors[i];
	}
	return i;
}

/* Block status of source @i for @n sectors at @off (its own sectors); bits or -errno. */
static int src_status(struct convert *cv, int i, int64_t off, int64_t n, int64_t *pnum)
{
	uint64_t bytes;
	int ret;

	if (cv->target_has_backing)
		ret = tblk_blk_block_status(cv->src[i], (uint64_t)off * SECTOR,
					    (uint64_t)n * SECTOR, &bytes, NULL);
	else
		ret = tblk_blk_block_status_depth(cv->src[i], (uint64_t)off * SECTOR,
						  (uint64_t)n * SECTOR, &bytes, NULL, NULL);
	if (ret >= 0)
		*pnum = (int64_t)((bytes + SECTOR - 1) / SECTOR);
	/* The walk moves on by *pnum: a driver that describes nothing would stall it. */
	if (ret >= 0 && *pnum == 0)
		ret = -EIO;
	return ret;
}

/* Asks block status at @sector; --salvage retries on shorter ranges, then assumes data. */
static int refresh_status(struct convert *cv, int64_t sector, int64_t n, bool post_backing_zero)
{
	int64_t start, off, pnum = 0, tail;
	int i = select_src(cv, sector, &start);
	int ret;

	off = sector - start;
	if (n > cv->src_sectors[i] - off)
		n = cv->src_sectors[i] - off;
	for (;;) {
		ret = src_status(cv, i, off, n, &pnum);
		if (ret >= 0)
			break;
		if (!cv->a->salvage) {
			tool_error("error while reading block status at offset %" PRIu64 ": %s",
				   (uint64_t)off * SECTOR, strerror(-ret));
			return ret;
		}
		if (n > 1) {
			n = (n + 3) / 4;
			continue;
		}
		if (!cv->a->quiet)
			tool_warn("error while reading block status at offset %" PRIu64 ": %s",
				  (uint64_t)off * SECTOR, strerror(-ret));
		ret = TBLK_BS_DATA;
		pnum = 1;
		break;
	}
	/* Keep the next status query aligned to the source's blocks. */
	tail = (off + pnum) % cv->src_align[i];
	if (pnum > tail)
		pnum -= tail;
	if (ret & TBLK_BS_ZERO)
		cv->status = post_backing_zero ? ST_BACKING : ST_ZERO;
	else if (ret & TBLK_BS_DATA)
		cv->status = ST_DATA;
	else
		cv->status = cv->target_has_backing ? ST_BACKING : ST_DATA;
	cv->next_status = sector + pnum;
	return 0;
}

/* The length in sectors of the chunk at @sector (its status in cv->status), or -errno. */
static int64_t next_chunk(struct convert *cv, int64_t sector)
{
	int64_t n = cv->total_sectors - sector;
	bool post_backing_zero = false;
	int ret;

	if (n > MAX_REQ_SECTORS)
		n = MAX_REQ_SECTORS;
	if (cv->target_backing_sectors >= 0) {
		if (sector >= cv->target_backing_sectors)
			post_backing_zero = true;
		else if (sector + n > cv->target_backing_sectors)
			n = cv->target_backing_sectors - sector;
	}
	if (cv->next_status <= sector) {
		ret = refresh_status(cv, sector, n, post_backing_zero);
		if (ret < 0)
			return ret;
	}
	if (n > cv->next_status - sector)
		n = cv->next_status - sector;
	if ((cv->status == ST_DATA || (!cv->min_sparse && cv->status == ST_ZERO)) &&
	    n > cv->buf_sectors)
		n = cv->buf_sectors;
	/* Compressed targets take whole clusters: a short range belongs to its cluster. */
	if (cv->compressed) {
		if (n < cv->cluster_sectors) {
			n = cv->cluster_sectors < cv->total_sectors - sector ?
			    cv->cluster_sectors : cv->total_sectors - sector;
			cv->status = ST_DATA;
		} else {
			n -= n % cv->cluster_sectors;
		}
	}
	return n;
}

static bool counts_for_progress(const struct convert *cv, enum chunk_status st)
{
	return st == ST_DATA || (!cv->min_sparse && st == ST_ZERO);
}

/* The first pass: how many sectors will be copied, for the progress figures. */
static int count_allocated(struct convert *cv)
{
	int64_t sector = 0, n;

	while (sector < cv->total_sectors) {
		n = next_chunk(cv, sector);
		if (n < 0)
			return (int)n;
		if (counts_for_progress(cv, cv->status))
			cv->allocated_sectors += n;
		sector += n;
	}
	cv->next_status = 0;
	return 0;
}

/* ---------------------------------------------------------------- the copy */

static void read_done(void *opaque, int ret)
{
	struct slot *s = opaque;

	s->cv->inflight--;
	s->ret = ret;
	s->state = SLOT_READY;
}

static void write_done(void *opaque, int ret)
{
	struct slot *s = opaque;

	s->cv->inflight--;
	if (ret < 0 && s->ret == 0)
		s->ret = ret;
	if (--s->pending == 0)
		s->state = SLOT_WRITTEN;
}

/* --salvage: reads the chunk sector by sector, zeroes where that fails. */
static void salvage_read(struct slot *s)
{
	struct convert *cv = s->cv;
	int64_t start;
	int i = select_src(cv, s->sector, &start);

	for (int64_t k = 0; k < s->n; k++) {
		uint64_t pos = (uint64_t)(s->sector - start + k) * SECTOR;
		int ret = tblk_blk_pread(cv->src[i], pos, s->buf + k * SECTOR, SECTOR, 0);

		if (ret < 0) {
			if (!cv->a->quiet)
				tool_warn("error while reading offset %" PRIu64 ": %s", pos,
					  strerror(-ret));
			memset(s->buf + k * SECTOR, 0, SECTOR);
		}
	}
	s->ret = 0;
}

/*
 * -r: true if the next data chunk may start now. Each chunk read is accounted in slices of
 * RATE_SLICE_NS holding rate / 10 bytes; a chunk that overdraws the slice pushes the start of
 * the next one back by as many slices as it used. Waits here if nothing else is in flight.
 */
static bool rate_allows(struct convert *cv)
{
	uint64_t now = tool_now_ns();

	if (!cv->a->rate_limit || now >= cv->rate_next)
		return true;
	if (cv->inflight == 0) {
		uint64_t left = cv->rate_next - now;
		struct timespec ts = { (time_t)(left / 1000000000ull),
				       (long)(left % 1000000000ull) };

		nanosleep(&ts, NULL);
	}
	return false;
}

static void rate_account(struct convert *cv, uint64_t bytes)
{
	uint64_t now = tool_now_ns();
	double quota = (double)cv->a->rate_limit * RATE_SLICE_NS / 1e9;

	if (!cv->a->rate_limit)
		return;
	if (now >= cv->rate_next) {
		cv->rate_slice_start = now;
		cv->rate_slice_bytes = 0;
	}
	cv->rate_slice_bytes += bytes;
	cv->rate_next = cv->rate_slice_start +
			(uint64_t)((double)cv->rate_slice_bytes / quota * RATE_SLICE_NS);
	if ((double)cv->rate_slice_bytes < quota)
		cv->rate_next = now;
}

/* Hands the next chunk to a free slot and starts its read if it has data. */
static bool slot_start(struct slot *s)
{
	struct convert *cv = s->cv;
	int64_t start, n;
	int i;

	if (cv->ret < 0 || cv->next_sector >= cv->total_sectors)
		return false;
	if (!rate_allows(cv))
		return false;
	n = next_chunk(cv, cv->next_sector);
	if (n < 0) {
		cv->ret = (int)n;
		return false;
	}
	s->sector = cv->next_sector;
	s->n = n;
	s->status = cv->status;
	s->ret = 0;
	s->advanced = false;
	cv->next_sector += n;
	if (counts_for_progress(cv, s->status))
		rate_account(cv, (uint64_t)n * SECTOR);
	if (s->status == ST_DATA) {
		i = select_src(cv, s->sector, &start);
		s->iov = (struct iovec){ s->buf, (size_t)n * SECTOR };
		s->state = SLOT_READING;
		cv->inflight++;
		tblk_blk_preadv(cv->src[i], (uint64_t)(s->sector - start) * SECTOR, &s->iov, 1, 0,
				read_done, s);
		return true;
	}
	if (counts_for_progress(cv, s->status))
		memset(s->buf, 0, (size_t)n * SECTOR);	/* -S 0: zeroes are written as data */
	s->state = SLOT_READY;
	return true;
}

static void submit_write(struct slot *s, int64_t sector, int64_t n, bool data,
			 unsigned int flags)
{
	struct convert *cv = s->cv;
	uint64_t off = (uint64_t)sector * SECTOR, bytes = (uint64_t)n * SECTOR;

	s->pending++;
	cv->inflight++;
	if (!data) {
		tblk_blk_aio_pwrite_zeroes(cv->target, off, bytes, TBLK_REQ_MAY_UNMAP, write_done,
					   s);
		return;
	}
	s->wiov = (struct iovec){ s->buf + (sector - s->sector) * SECTOR, (size_t)bytes };
	tblk_blk_pwritev(cv->target, off, &s->wiov, 1, flags, write_done, s);
}

/*
 * Issues the next write of a data chunk cut into pieces: data runs and the zero runs
 * between them (nothing to write for those on a target known to read zeroes). One piece
 * at a time, in order, as qemu-img does: a format allocates their clusters in that order.
 */
static void write_next_piece(struct slot *s)
{
	struct convert *cv = s->cv;
	int64_t end = s->sector + s->n, pnum;

	while (s->cursor < end && s->pending == 0) {
		const uint8_t *p = s->buf + (s->cursor - s->sector) * SECTOR;
		bool data = next_piece(p, end - s->cursor, s->cursor, cv->min_sparse,
				       cv->alignment, &pnum);

		if (data || !cv->has_zero_init)
			submit_write(s, s->cursor, pnum, data, 0);
		s->cursor += pnum;
	}
	if (s->pending == 0)
		s->state = SLOT_WRITTEN;
}

/* A range that reads as zeroes: nothing to do on a target known to be zero. */
static void write_zero_range(struct slot *s, int64_t sector, int64_t n)
{
	if (!s->cv->has_zero_init)
		submit_write(s, sector, n, false, 0);
}

/* Starts the chunk's writes. */
static void slot_write(struct slot *s)
{
	struct convert *cv = s->cv;
	unsigned int flags = cv->compressed ? TBLK_REQ_COMPRESSED : 0;

	s->pending = 0;
	s->cursor = s->sector + s->n;
	s->state = SLOT_WRITING;
	if (s->status == ST_ZERO && cv->min_sparse) {
		write_zero_range(s, s->sector, s->n);
	} else if (s->status == ST_BACKING) {
		/* the target's backing file provides it */
	} else if (!cv->min_sparse || cv->a->copy_range) {
		submit_write(s, s->sector, s->n, true, flags);
	} else if (cv->compressed) {
		if (buffer_is_zero(s->buf, s->n))
			write_zero_range(s, s->sector, s->n);
		else
			submit_write(s, s->sector, s->n, true, flags);
	} else {
		s->cursor = s->sector;
		write_next_piece(s);
	}
	/*
	 * Compressed writes run side by side into a new target; the order is that of their
	 * start. A target that existed (-n) may hold allocated clusters, which compressed
	 * writes refuse: there the writes run one after the other, as qemu-img runs them, so
	 * nothing after the first failing one is written.
	 */
	if (cv->compressed && cv->a->in_order && cv->target_is_new) {
		cv->wr_offs = s->sector + s->n;
		s->advanced = true;
	}
	if (s->pending == 0)
		s->state = SLOT_WRITTEN;
}

static void slot_finish(struct slot *s)
{
	struct convert *cv = s->cv;
	int64_t at = s->sector * SECTOR;

	if (s->ret < 0) {
		if (cv->ret == 0)
			tool_error("error while writing at byte %" PRId64 ": %s", at,
				   strerror(-s->ret));
		cv->ret = s->ret;
	} else {
		if (!s->advanced)
			cv->wr_offs = s->sector + s->n;
		if (counts_for_progress(cv, s->status)) {
			cv->allocated_done += s->n;
			img_progress_print((float)(100.0 * (double)cv->allocated_done /
						   (double)cv->allocated_sectors), 0);
		}
	}
	s->state = SLOT_FREE;
}

/* Moves @s on as far as it can without waiting; true if anything changed. */
static bool slot_step(struct slot *s)
{
	struct convert *cv = s->cv;

	switch (s->state) {
	case SLOT_FREE:
		return slot_start(s);
	case SLOT_READING:
		return false;
	case SLOT_READY:
		if (s->ret < 0 && cv->a->salvage)
			salvage_read(s);
		if (s->ret < 0) {
			/* Every read that was in flight reports its failure, as in qemu. */
			tool_error("error while reading at byte %" PRId64 ": %s",
				   s->sector * SECTOR, strerror(-s->ret));
			cv->ret = s->ret;
		}
		if (cv->ret < 0) {
			s->state = SLOT_FREE;
			return true;
		}
		if (cv->a->in_order && s->sector != cv->wr_offs)
			return false;
		slot_write(s);
		return true;
	case SLOT_WRITING:
		return false;
	case SLOT_WRITTEN:
		if (s->ret == 0 && s->cursor < s->sector + s->n) {
			s->state = SLOT_WRITING;
			write_next_piece(s);
		} else {
			slot_finish(s);
		}
		return true;
	}
	return false;
}

static bool slots_idle(const struct convert *cv)
{
	for (int i = 0; i < cv->nr_slots; i++)
		if (cv->slots[i].state != SLOT_FREE)
			return false;
	return true;
}

static int copy_run(struct convert *cv)
{
	bool moved;

	for (;;) {
		do {
			moved = false;
			for (int i = 0; i < cv->nr_slots; i++)
				moved |= slot_step(&cv->slots[i]);
		} while (moved);
		if (cv->inflight)
			tblk_loop_iterate(cv->loop, true);
		else if (slots_idle(cv) &&
			 (cv->ret < 0 || cv->next_sector >= cv->total_sectors))
			break;
	}
	return cv->ret;
}

static int copy_setup(struct convert *cv)
{
	size_t len = (size_t)cv->buf_sectors * SECTOR;

	cv->nr_slots = cv->a->num_slots;
	for (int i = 0; i < cv->nr_slots; i++) {
		struct slot *s = &cv->slots[i];

		s->cv = cv;
		s->buf = tool_buf_new(len, 0);
		if (!s->buf) {
			tool_error("Could not allocate memory");
			return -ENOMEM;
		}
	}
	return 0;
}

static void copy_cleanup(struct convert *cv)
{
	for (int i = 0; i < cv->nr_slots; i++)
		tool_buf_free(cv->slots[i].buf);
}

static int convert_do_copy(struct convert *cv)
{
	int ret;

	/*
	 * As qemu's bdrv_has_zero_init(): a new file reads as zeroes, a device or a reused NBD
	 * export does not (under qcow2, unallocated clusters read as zeroes anyway).
	 */
	if (!cv->has_zero_init && cv->target_is_new && cv->min_sparse &&
	    !cv->target_has_backing)
		cv->has_zero_init = strcmp(tblk_blk_protocol_name(cv->target), "host_device") &&
				    (strcmp(tblk_blk_protocol_name(cv->target), "nbd") ||
				     !strcmp(tblk_blk_format_name(cv->target), "qcow2"));
	if (cv->compressed) {
		if (cv->cluster_sectors <= 0 || cv->cluster_sectors > cv->buf_sectors) {
			tool_error("invalid cluster size");
			return -EINVAL;
		}
		cv->buf_sectors = cv->cluster_sectors;
	}
	ret = count_allocated(cv);
	if (ret < 0)
		return ret;
	ret = copy_setup(cv);
	if (ret == 0)
		ret = copy_run(cv);
	copy_cleanup(cv);
	if (ret == 0) {
		ret = tblk_blk_flush(cv->target);
		if (ret < 0)
			tool_error("error while flushing: %s", strerror(-ret));
	}
	return ret;
}

/* ---------------------------------------------------------------- sources and target */

static int open_sources(struct convert *cv)
{
	const struct convert_args *a = cv->a;
	struct img_open_opts o = { .fmt = a->fmt, .image_opts = a->image_opts,
				   .flags = a->src_flags };

	cv->src = g_new0(struct tblk_blk *, a->nr_srcs);
	cv->src_sectors = g_new0(int64_t, a->nr_srcs);
	cv->src_align = g_new0(int, a->nr_srcs);
	/* A consistent copy: nobody may write the sources meanwhile, unless -U. */
	o.flags |= a->force_share ? TBLK_OPEN_SHARE_RW : TBLK_OPEN_NO_SHARE;
	for (int i = 0; i < a->nr_srcs; i++) {
		int64_t len;
		uint32_t align, cluster;

		o.filename = a->srcs[i];
		if (img_open(&cv->src[i], &o, cv->loop) < 0)
			return -EINVAL;
		len = tblk_blk_getlength(cv->src[i]);
		if (len < 0) {
			tool_error("Could not get size of %s: %s", a->srcs[i], strerror((int)-len));
			return (int)len;
		}
		cv->src_sectors[i] = (len + SECTOR - 1) / SECTOR;
		align = tblk_blk_request_alignment(cv->src[i]);
		cluster = tblk_blk_cluster_size(cv->src[i]);
		cv->src_align[i] = (int)((align + SECTOR - 1) / SECTOR);
		if ((int)(cluster / SECTOR) > cv->src_align[i])
			cv->src_align[i] = (int)(cluster / SECTOR);
		if (cv->src_align[i] < 1)
			cv->src_align[i] = 1;
		cv->total_sectors += cv->src_sectors[i];
	}
	return 0;
}

/* -l: the first source reads as one of its internal snapshots. */
static int load_snapshot(struct convert *cv)
{
	const struct convert_args *a = cv->a;

	if (!a->snapshot)
		return 0;
	if (!a->snapshot_opts && a->nr_srcs > 1) {
		tool_error("No support for concatenating multiple snapshot");
		return -EINVAL;
	}
	return img_snapshot_load(cv->src[0], a->snapshot);
}

static int target_options(struct convert *cv, GHashTable *opts)
{
	const struct convert_args *a = cv->a;

	if (!img_fmt_known(a->out_fmt)) {
		tool_error("Unknown file format '%s'", a->out_fmt);
		return -EINVAL;
	}
	if (img_create_opts_parse(a->out_fmt, a->options->str, opts) < 0)
		return -EINVAL;
	if (a->backing) {
		if (!img_fmt_has_create_opt(a->out_fmt, "backing_file")) {
			tool_error("Backing file not supported for file format '%s'", a->out_fmt);
			return -EINVAL;
		}
		g_hash_table_insert(opts, g_strdup("backing_file"), g_strdup(a->backing));
	}
	if (a->backing_fmt) {
		if (!img_fmt_has_create_opt(a->out_fmt, "backing_fmt")) {
			tool_error("Backing file format not supported for file format '%s'",
				   a->out_fmt);
			return -EINVAL;
		}
		g_hash_table_insert(opts, g_strdup("backing_fmt"), g_strdup(a->backing_fmt));
	}
	return 0;
}

/* True if the image's format keeps persistent bitmaps (qcow2 v3). */
static bool keeps_bitmaps(struct tblk_blk *blk)
{
	struct tblk_dirty_bitmap *bm = NULL;
	int n = 0;

	if (tblk_blk_bitmap_list(blk, &bm, &n) < 0)
		return false;
	tblk_dirty_bitmaps_free(bm, n);
	return true;
}

/* --bitmaps: the source keeps bitmaps, and none is inconsistent unless they are skipped. */
static int check_src_bitmaps(struct tblk_blk *src, bool skip_broken)
{
	struct tblk_dirty_bitmap *bm = NULL;
	int n = 0, ret = 0;

	if (tblk_blk_bitmap_list(src, &bm, &n) < 0) {
		tool_error("Source lacks bitmap support");
		return -ENOTSUP;
	}
	for (int i = 0; i < n && !skip_broken; i++)
		if (bm[i].inconsistent) {
			tool_error("Cannot copy inconsistent bitmap '%s'", bm[i].name);
			fprintf(stderr, "Try --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' "
				"to delete it\n");
			ret = -EINVAL;
			break;
		}
	tblk_dirty_bitmaps_free(bm, n);
	return ret;
}

/*
 * After the copy: each bitmap of the source, in qemu's order, added to the target with its
 * granularity and state and filled from the source's (qemu's convert_copy_bitmaps).
 */
static int copy_bitmaps(struct tblk_blk *src, struct tblk_blk *dst, bool skip_broken)
{
	struct tblk_dirty_bitmap *bm = NULL;
	int n = 0, ret = 0;

	if (tblk_blk_bitmap_list(src, &bm, &n) < 0)
		return 0;
	for (int i = 0; i < n && ret == 0; i++) {
		struct tblk_bitmap_request add = {
			.action = TBLK_BITMAP_ADD, .name = bm[i].name,
			.granularity = bm[i].granularity, .disabled = !bm[i].enabled,
		};
		struct tblk_bitmap_request merge = {
			.action = TBLK_BITMAP_MERGE, .name = bm[i].name, .src = src,
			.src_name = bm[i].name,
		};
		struct tblk_bitmap_request rm = { .action = TBLK_BITMAP_REMOVE, .name = bm[i].name };
		GError *err = NULL;

		if (skip_broken && bm[i].inconsistent) {
			tool_warn("Skipping inconsistent bitmap '%s'", bm[i].name);
			continue;
		}
		if (tblk_blk_bitmap_apply(dst, &add, &err) < 0) {
			tool_error("Failed to create bitmap %s: %s", bm[i].name, err->message);
			ret = -EINVAL;
		} else if (tblk_blk_bitmap_apply(dst, &merge, &err) < 0) {
			tool_error("Failed to populate bitmap %s: %s", bm[i].name, err->message);
			g_clear_error(&err);
			(void)tblk_blk_bitmap_apply(dst, &rm, &err);
			ret = -EINVAL;
		}
		g_clear_error(&err);
	}
	tblk_dirty_bitmaps_free(bm, n);
	return ret;
}

/* The checks between the options and creating the target. 1: stop with status 0. */
static int check_target(struct convert *cv, GHashTable *opts, const char **backing)
{
	const struct convert_args *a = cv->a;
	const char *opt_backing = opts ? g_hash_table_lookup(opts, "backing_file") : NULL;
	const char *prealloc = opts ? g_hash_table_lookup(opts, "preallocation") : NULL;
	const char *encrypt = opts ? g_hash_table_lookup(opts, "encryption") : NULL;

	*backing = opt_backing ? opt_backing : a->backing;
	cv->target_has_backing = *backing;
	if (a->target_is_zero && cv->target_has_backing) {
		/* qemu-img 7.2 reports this and still exits 0. */
		tool_error("Cannot use --target-is-zero when the destination image has a "
			   "backing file");
		return 1;
	}
	if (a->nr_srcs > 1 && *backing) {
		tool_error("Having a backing file for the target makes no sense when "
			   "concatenating multiple input images");
		return -EINVAL;
	}
	if (opt_backing && !g_hash_table_lookup(opts, "backing_fmt")) {
		tool_error("Use of backing file requires explicit backing format");
		return -EINVAL;
	}
	if (a->compressed && opts) {
		const char *msg = NULL;

		if (!img_fmt_can_compress(a->out_fmt))
			msg = "Compression not supported for this file format";
		else if ((encrypt && !strcmp(encrypt, "on")) ||
			 g_hash_table_lookup(opts, "encrypt.format"))
			msg = "Compression and encryption not supported at the same time";
		else if (prealloc && strcmp(prealloc, "off"))
			msg = "Compression and preallocation not supported at the same time";
		if (msg) {
			tool_error("%s", msg);
			return -EINVAL;
		}
	}
	if (a->bitmaps) {
		if (a->nr_srcs > 1) {
			tool_error("Copying bitmaps only possible with single source");
			return -EINVAL;
		}
		if (check_src_bitmaps(cv->src[0], a->skip_broken) < 0)
			return -EINVAL;
	}
	return 0;
}

/* The size of the target's backing file in sectors, -1 if it cannot be opened. */
static int64_t backing_sectors(const char *backing, const char *backing_fmt, const char *out)
{
	g_autofree char *dir = g_path_get_dirname(out);
	g_autofree char *path = g_path_is_absolute(backing) ? g_strdup(backing) :
				g_build_filename(dir, backing, NULL);
	GHashTable *opts = tblk_opts_new();
	struct tblk_blk *blk;
	GError *err = NULL;
	int64_t len = -1;

	if (backing_fmt)
		g_hash_table_insert(opts, g_strdup("driver"), g_strdup(backing_fmt));
	if (tblk_blk_open(&blk, path, opts, TBLK_OPEN_SHARE_RW | TBLK_OPEN_NODE_OPTS, NULL,
			  &err) == 0) {
		len = tblk_blk_getlength(blk);
		tblk_blk_close(blk);
	}
	g_clear_error(&err);
	g_hash_table_unref(opts);
	return len < 0 ? -1 : (len + SECTOR - 1) / SECTOR;
}

static int open_target(struct convert *cv)
{
	const struct convert_args *a = cv->a;
	struct img_open_opts o = { .filename = a->out, .fmt = a->out_fmt,
				   .image_opts = a->tgt_image_opts, .flags = TBLK_OPEN_RDWR };
	GError *err = NULL;
	int64_t len;

	if (tblk_parse_cache_mode(a->cache, &o.flags, &err) < 0) {
		g_clear_error(&err);
		tool_error("Invalid cache option: %s", a->cache);
		return -EINVAL;
	}
	if (img_open(&cv->target, &o, cv->loop) < 0)
		return -EINVAL;
	if (a->bitmaps && !keeps_bitmaps(cv->target)) {
		tool_error("Format driver '%s' does not support bitmaps",
			   tblk_blk_format_name(cv->target));
		return -ENOTSUP;
	}
	cv->cluster_sectors = tblk_blk_cluster_size(cv->target) / SECTOR;
	if (cv->compressed && !cv->cluster_sectors) {
		tool_error("Compression not supported for this file format");
		return -ENOTSUP;
	}
	if (a->skip_create) {
		len = tblk_blk_getlength(cv->target);
		if (len < 0) {
			tool_error("unable to get output image length: %s", strerror((int)-len));
			return (int)len;
		}
		if ((len + SECTOR - 1) / SECTOR < cv->total_sectors) {
			tool_error("output file is smaller than input file");
			return -EINVAL;
		}
	}
	return 0;
}

static int create_target(struct convert *cv, GHashTable *opts)
{
	const struct convert_args *a = cv->a;
	GError *err = NULL;
	int ret;

	ret = tblk_img_create(a->out, a->out_fmt, (uint64_t)cv->total_sectors * SECTOR, opts,
			      &err);
	if (ret < 0)
		tool_error_gerror(err, "%s: error while converting %s: ", a->out, a->out_fmt);
	return ret;
}

/* Everything after the command line; 0, 1 (stop, status 0) or -errno. */
static int convert_run(struct convert *cv)
{
	const struct convert_args *a = cv->a;
	g_autoptr(GHashTable) opts = NULL;
	const char *backing;
	int ret;

	ret = open_sources(cv);
	if (ret == 0)
		ret = load_snapshot(cv);
	if (ret == 0 && !a->skip_create) {
		opts = tblk_opts_new();
		ret = target_options(cv, opts);
	}
	if (ret == 0)
		ret = check_target(cv, opts, &backing);
	if (ret == 0 && !a->skip_create)
		ret = create_target(cv, opts);
	if (ret)
		return ret;
	cv->target_is_new = !a->skip_create;
	ret = open_target(cv);
	if (ret < 0)
		return ret;
	/* Writes start and end on this boundary where they can, to spare read-modify-write. */
	cv->alignment = 1;
	while (cv->alignment * 2 <= cv->min_sparse)
		cv->alignment *= 2;
	ret = (int)((tblk_blk_request_alignment(cv->target) + SECTOR - 1) / SECTOR);
	if (ret > cv->alignment)
		cv->alignment = ret;
	cv->target_backing_sectors = -1;
	if (cv->target_has_backing && cv->target_is_new)
		cv->target_backing_sectors = backing_sectors(backing,
			g_hash_table_lookup(opts, "backing_fmt"), a->out);
	return convert_do_copy(cv);
}

/*
 * After a compressed copy qemu-img has the format pad its file to whole sectors (compressed
 * clusters end anywhere); the file is padded the same way here, once the image is closed.
 */
static int pad_compressed_file(const char *filename)
{
	GHashTable *opts = tblk_opts_new();
	struct tblk_blk *blk;
	GError *err = NULL;
	int64_t len;
	int ret;

	ret = tblk_blk_open(&blk, filename, opts,
			    TBLK_OPEN_RDWR | TBLK_OPEN_PROTOCOL | TBLK_OPEN_NODE_OPTS, NULL, &err);
	g_hash_table_unref(opts);
	if (ret < 0) {
		tool_error_gerror(err, "Could not open '%s': ", filename);
		return ret;
	}
	/* The length is in whole sectors already: setting it grows the file to that. */
	len = tblk_blk_getlength(blk);
	ret = len < 0 ? (int)len : 0;
	if (ret == 0)
		ret = tblk_blk_truncate(blk, (uint64_t)len, "off", &err);
	if (ret < 0 && err)
		tool_error_gerror(err, "%s: ", filename);
	else if (ret < 0)
		tool_error("%s: %s", filename, strerror(-ret));
	tblk_blk_close(blk);
	return ret;
}

/* Pads the compressed target's file, which is closed for that, then opens it again. */
static int pad_and_reopen(struct convert *cv)
{
	struct img_open_opts o = { .filename = cv->a->out, .fmt = cv->a->out_fmt,
				   .flags = TBLK_OPEN_RDWR };
	int ret;

	tblk_blk_close(cv->target);
	cv->target = NULL;
	ret = pad_compressed_file(cv->a->out);
	if (ret < 0)
		return ret;
	return img_open(&cv->target, &o, cv->loop) < 0 ? -EINVAL : 0;
}

int img_convert(int argc, char **argv)
{
	struct convert_args a = {
		.cache = "unsafe", .src_cache = "writeback", .in_order = true, .min_sparse = 8,
		.num_slots = 8, .options = g_string_new(NULL),
	};
	struct convert cv = { .a = &a };
	GError *err = NULL;
	int ret;

	convert_parse(argc, argv, &a);
	cv.min_sparse = a.min_sparse;
	cv.compressed = a.compressed;
	cv.has_zero_init = a.target_is_zero;
	cv.buf_sectors = BUF_SECTORS;
	img_progress_init(a.progress, 1.0f);
	img_progress_print(0, 100);
	cv.loop = tblk_loop_new(&err);
	if (!cv.loop) {
		tool_error_gerror(err, NULL);
		return 1;
	}
	ret = convert_run(&cv);
	if (ret == 1)
		ret = 0;
	if (ret == 0)
		img_progress_print(100, 0);
	/* qemu pads a compressed target before it stores the bitmaps (at close, after it). */
	if (ret == 0 && a.bitmaps && cv.compressed && !a.tgt_image_opts)
		ret = pad_and_reopen(&cv);
	if (ret == 0 && a.bitmaps)
		ret = copy_bitmaps(cv.src[0], cv.target, a.skip_broken);
	tblk_blk_close(cv.target);
	if (ret == 0 && cv.compressed && cv.target && !a.tgt_image_opts && !a.bitmaps)
		ret = pad_compressed_file(a.out);
	img_progress_end();
	for (int i = 0; i < a.nr_srcs && cv.src; i++)
		tblk_blk_close(cv.src[i]);
	tblk_loop_free(cv.loop);
	g_free(cv.src);
	g_free(cv.src_sectors);
	g_free(cv.src_align);
	g_string_free(a.options, TRUE);
	return ret < 0 ? 1 : 0;
}
