/* SPDX-License-Identifier: MIT */
/*
 * qcow2-rw.c - the qcow2 data path: reads (data, zero, backing, compressed), writes (in place
 * or allocating, with copy-on-write of the rest of each new cluster in the same write),
 * compressed writes, discard, write zeroes, flush and block status.
 *
 * Threading: any number of requests run at once in pool workers or synchronous callers.
 * Each takes the image lock to translate or allocate and drops it for guest data I/O. A write
 * that overlaps clusters another write is allocating waits until that allocation is linked
 * into its L2 table (qcow2_state.allocs).
 */
#include <string.h>

#include "formats/qcow2-compress.h"
#include "formats/qcow2-int.h"
#include "formats/qcow2-order.h"

/* ------------------------------------------------ reads */

/* Guest data of the backing file for [offset, offset + bytes) into @iov at @iov_off. */
static int read_backing(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			const struct iovec *iov, int iovcnt, size_t iov_off)
{
	g_autofree struct iovec *slice = g_new(struct iovec, iovcnt);
	int64_t blen = node->backing ? tblk_node_getlength(node->backing) : 0;
	uint64_t n = 0;
	int cnt, ret;

	if (blen < 0)
		return (int)blen;
	if ((uint64_t)blen > offset)
		n = TBLK_MIN(bytes, (uint64_t)blen - offset);
	if (n) {
		cnt = tblk_iov_slice(slice, iovcnt, iov, iovcnt, iov_off, n);
		tblk_node_debug_event(node->file, TBLK_DBG_READ_BACKING_AIO);
		ret = tblk_node_preadv(node->backing, offset, n, slice, cnt, 0);
		if (ret < 0)
			return ret;
	}
	if (bytes > n)
		tblk_iov_memset(iov, iovcnt, iov_off + n, 0, bytes - n);
	return 0;
}

/* Decompresses the cluster of L2 entry @entry into @buf (cluster_size bytes). */
static int read_compressed(struct qcow2_state *s, uint64_t entry, void *buf)
{
	uint64_t off = entry & s->coffset_mask;
	uint64_t sectors = ((entry >> s->csize_shift) & s->csize_mask) + 1;
	uint64_t len = sectors * 512 - (off & 511);
	g_autofree uint8_t *cbuf = g_malloc(len);
	int ret;

	tblk_node_debug_event(s->node->file, TBLK_DBG_READ_COMPRESSED);
	ret = tblk_node_pread(s->node->file, off, cbuf, len);
	if (ret < 0)
		return ret;
	ret = tblk__qcow2_decompress(s->compression_type, buf, s->cluster_size, cbuf, len);
	return ret < 0 ? -EIO : 0;
}

/* Reads the guest range [offset, offset + n) of one mapping run into @iov at @iov_off. */
static int read_run(struct qcow2_state *s, const struct qcow2_map *m, uint64_t offset,
		    uint64_t n, const struct iovec *iov, int iovcnt, size_t iov_off)
{
	g_autofree struct iovec *slice = NULL;
	g_autofree uint8_t *buf = NULL;
	int cnt, ret;

	switch (m->type) {
	case QCOW2_UNALLOCATED:
		return read_backing(s->node, offset, n, iov, iovcnt, iov_off);
	case QCOW2_ZERO_PLAIN:
	case QCOW2_ZERO_ALLOC:
		tblk_iov_memset(iov, iovcnt, iov_off, 0, n);
		return 0;
	case QCOW2_COMPRESSED:
		buf = g_malloc(s->cluster_size);
		ret = read_compressed(s, m->l2_entry, buf);
		if (ret < 0)
			return ret;
		tblk_iov_from_buf(iov, iovcnt, iov_off, buf + qcow2_offset_into_cluster(s, offset),
				  n);
		return 0;
	case QCOW2_NORMAL:
		slice = g_new(struct iovec, iovcnt);
		cnt = tblk_iov_slice(slice, iovcnt, iov, iovcnt, iov_off, n);
		tblk_node_debug_event(s->node->file, TBLK_DBG_READ_AIO);
		return tblk_node_preadv(s->data, m->host, n, slice, cnt, 0);
	}
	return -EIO;
}

/* Guest reads, from a request or from copy-on-write (the image may be dead: -EIO). */
static int read_guest(struct qcow2_state *s, uint64_t offset, uint64_t bytes,
		      const struct iovec *iov, int iovcnt)
{
	size_t done = 0;

	while (done < bytes) {
		struct qcow2_map m;
		int ret;

		qcow2_lock(s);
		/* Made unusable while this read waited: failed as qemu's reads in flight. */
		ret = qcow2_dead(s) ? -EIO : qcow2_get_mapping(s, offset + done, bytes - done, &m);
		qcow2_unlock(s);
		if (ret < 0)
			return ret;
		ret = read_run(s, &m, offset + done, m.bytes, iov, iovcnt, done);
		if (ret < 0)
			return ret;
		done += m.bytes;
	}
	return 0;
}

int tblk__qcow2_preadv(struct tblk_node *node, uint64_t offset, uint64_t bytes,
		       const struct iovec *iov, int iovcnt, unsigned int flags)
{
	struct qcow2_state *s = node->opaque;

	(void)flags;
	if (qcow2_dead(s))
		return -ENOMEDIUM;
	return read_guest(s, offset, bytes, iov, iovcnt);
}

/* ------------------------------------------------ allocating writes */

/* A data or preallocated zero cluster whose host offset is unaligned (corrupt). */
static bool host_unaligned(const struct qcow2_state *s, uint64_t entry)
{
	enum qcow2_ctype t = qcow2_entry_type(s, entry);

	return (t == QCOW2_NORMAL || t == QCOW2_ZERO_ALLOC) &&
	       (entry & QCOW2_OFFSET_MASK & (s->cluster_size - 1));
}

static bool needs_new_cluster(const struct qcow2_state *s, uint64_t entry)
{
	switch (qcow2_entry_type(s, entry)) {
	case QCOW2_NORMAL:
	case QCOW2_ZERO_ALLOC:
		return !(entry & QCOW2_OFLAG_COPIED);
	default:
		return true;
	}
}

/* What a guest cluster held before its allocation: the source of copy-on-write. */
static int read_old(struct qcow2_state *s, uint64_t entry, uint64_t guest, uint64_t n,
		    void *buf)
{
	struct iovec iov = { buf, n };
	g_autofree uint8_t *cl = NULL;
	int ret;

	if (n == 0)
		return 0;
	/*
	 * Extended L2: subclusters differ; read what the guest sees (the old entry). So is an
	 * unaligned host cluster read, which the read reports as qemu's copy-on-write does.
	 */
	if (s->ext_l2 || host_unaligned(s, entry))
		return read_guest(s, guest, n, &iov, 1);
	switch (qcow2_entry_type(s, entry)) {
	case QCOW2_UNALLOCATED:
		return read_backing(s->node, guest, n, &iov, 1, 0);
	case QCOW2_NORMAL:
		return tblk_node_pread(s->data, (entry & QCOW2_OFFSET_MASK) +
				       qcow2_offset_into_cluster(s, guest), buf, n);
	case QCOW2_COMPRESSED:
		cl = g_malloc(s->cluster_size);
		ret = read_compressed(s, entry, cl);
		if (ret < 0)
			return ret;
		memcpy(buf, cl + qcow2_offset_into_cluster(s, guest), n);
		return 0;
	default:
		memset(buf, 0, n);
		return 0;
	}
}

struct alloc_job {
	struct qcow2_alloc a;	/* the claimed guest range */
	uint64_t host;		/* host offset of a.start */
	uint64_t n;		/* clusters */
	uint64_t *old;		/* n previous L2 entries */
	uint64_t *old_bitmap;	/* n previous bitmaps (extended L2) */
	bool keep_old;		/* the host cluster is the old one (zero-alloc or subclusters) */
	uint64_t wfrom, wto;	/* what is written, relative to a.start: data and copy-on-write */
};

/* Extended L2: the index of the subcluster of guest offset @off in its cluster. */
static unsigned int sc_index(const struct qcow2_state *s, uint64_t off)
{
	return (unsigned int)(qcow2_offset_into_cluster(s, off) / s->subcluster_size);
}

/*
 * Extended L2: the part of the planned clusters the write covers (job->wfrom, job->wto) for
 * data ending at @end, as qemu plans it. Around the data, the partially written subclusters
 * are completed by copy-on-write. A new host cluster for an old one also takes every
 * allocated subcluster of the old one before (after) the data along, a compressed one the
 * whole cluster. Subclusters outside stay as they were: unallocated, or zero.
 */
static void plan_subclusters(const struct qcow2_state *s, struct alloc_job *job,
			     uint64_t offset, uint64_t end)
{
	uint64_t sc = s->subcluster_size, rel = offset - job->a.start;
	uint64_t rel_end = TBLK_MIN(end, job->a.end) - job->a.start;
	uint64_t whole = job->n << s->cluster_bits;
	unsigned int first = sc_index(s, offset), last = sc_index(s, job->a.start + rel_end - 1);
	uint32_t alloc0 = (uint32_t)job->old_bitmap[0];
	uint32_t allocl = (uint32_t)job->old_bitmap[job->n - 1];

	if (job->keep_old) {
		job->wfrom = (alloc0 >> first) & 1 ? rel : (uint64_t)first * sc;
		job->wto = (allocl >> last) & 1 ? rel_end : TBLK_ALIGN_UP(rel_end, sc);
		return;
	}
	switch (qcow2_entry_type(s, job->old[0])) {
	case QCOW2_COMPRESSED:
		job->wfrom = 0;
		break;
	case QCOW2_NORMAL:
		job->wfrom = TBLK_MIN(first, alloc0 ? (unsigned int)__builtin_ctz(alloc0) : 32) * sc;
		break;
	default:
		job->wfrom = (uint64_t)first * sc;
	}
	switch (qcow2_entry_type(s, job->old[job->n - 1])) {
	case QCOW2_COMPRESSED:
		job->wto = whole;
		break;
	case QCOW2_NORMAL:
		job->wto = whole - TBLK_MIN(31 - last,
					    allocl ? (unsigned int)__builtin_clz(allocl) : 32) * sc;
		break;
	default:
		job->wto = TBLK_ALIGN_UP(rel_end, sc);
	}
}

static bool alloc_overlaps(const struct qcow2_alloc *a, uint64_t start, uint64_t end)
{
	return a->start < end && start < a->end;
}

/*
 * Under the image lock: waits for allocations overlapping the start of [offset, offset +
 * *bytes) and shortens *bytes to end before any other one.
 */
static void wait_dependencies(struct qcow2_state *s, uint64_t offset, uint64_t *bytes)
{
	struct tblk_list *pos;
	bool again;

	do {
		uint64_t start = qcow2_start_of_cluster(s, offset);
		uint64_t end = TBLK_ALIGN_UP(offset + *bytes, s->cluster_size);

		again = false;
		tblk_list_for_each(pos, &s->allocs) {
			struct qcow2_alloc *a = tblk_container_of(pos, struct qcow2_alloc, link);

			if (!alloc_overlaps(a, start, end))
				continue;
			if (a->start <= start) {
				qcow2_wait_alloc(s);
				again = true;
				break;
			}
			*bytes = TBLK_MIN(*bytes, a->start - offset);
			end = a->start;
		}
	} while (again);
}

/*
 * Under the image lock: plans the allocation of the clusters starting at @offset (whose
 * first cluster needs one), at most up to @end. Fills @job and claims its range.
 */
static int plan_alloc(struct qcow2_state *s, uint64_t offset, uint64_t end, uint64_t hint,
		      struct alloc_job *job)
{
	uint64_t start = qcow2_start_of_cluster(s, offset), nmax, e0;
	uint32_t l2i;
	void *table;
	int ret = qcow2_get_l2_for_write(s, offset, &table, &l2i);

	if (ret < 0)
		return ret;
	nmax = TBLK_MIN(qcow2_size_to_clusters(s, end - start), (uint64_t)(s->l2_size - l2i));
	e0 = qcow2_l2_get(s, table, l2i);
	job->keep_old = !needs_new_cluster(s, e0);
	job->n = 1;
	if (!job->keep_old)
		while (job->n < nmax && needs_new_cluster(s, qcow2_l2_get(s, table, l2i + job->n)))
			job->n++;
	job->old = g_new(uint64_t, job->n);
	job->old_bitmap = g_new(uint64_t, job->n);
	for (uint64_t i = 0; i < job->n; i++) {
		job->old[i] = qcow2_l2_get(s, table, l2i + (uint32_t)i);
		job->old_bitmap[i] = qcow2_l2_get_bitmap(s, table, l2i + (uint32_t)i);
	}
	if (job->keep_old) {
		job->host = e0 & QCOW2_OFFSET_MASK;
	} else if (s->data != s->node->file) {
		job->host = start;	/* external data file: guest offset = host offset */
	} else {
		int64_t host = 0;

		/* Right after the previous cluster of the same request, if free there. */
		if (hint) {
			host = qcow2_alloc_clusters_at(s, hint, job->n);
			if (host > 0)
				job->n = (uint64_t)host;
			host = host > 0 ? (int64_t)hint : host;
		}
		if (host == 0)
			host = qcow2_alloc_clusters(s, job->n << s->cluster_bits);

		if (host < 0) {
			g_free(job->old);
			g_free(job->old_bitmap);
			return (int)host;
		}
		job->host = (uint64_t)host;
	}
	job->a.start = start;
	job->a.end = start + (job->n << s->cluster_bits);
	job->wfrom = 0;
	job->wto = job->a.end - start;
	if (s->ext_l2)
		plan_subclusters(s, job, offset, end);
	tblk_list_add_tail(&s->allocs, &job->a.link);
	return 0;
}

static int range_reads_zero(struct qcow2_state *s, uint64_t offset, uint64_t bytes, bool *zero);

/*
 * True if the copy-on-write edge [offset, offset + bytes) of a cluster whose old entry is
 * @entry reads as zeroes per block status. The common cases are told by the entry alone,
 * without the image lock; the rest asks block status.
 */
static bool edge_reads_zero(struct qcow2_state *s, uint64_t entry, uint64_t offset,
			    uint64_t bytes)
{
	bool zero = false;

	if (!bytes)
		return true;
	if (!s->ext_l2) {
		enum qcow2_ctype t = qcow2_entry_type(s, entry);

		if (t == QCOW2_ZERO_PLAIN || (t == QCOW2_ZERO_ALLOC && !host_unaligned(s, entry)) ||
		    (t == QCOW2_UNALLOCATED && !s->node->backing))
			return true;
	}
	/* As qemu's, a failed check just means copying the edge. */
	return range_reads_zero(s, offset, bytes, &zero) >= 0 && zero;
}

/*
 * qemu's way with copy-on-write edges that read as zeroes per block status (unallocated in
 * the whole chain, zero clusters, past the end of a backing file): the whole range to be
 * written, edges and data, is zeroed by one fast write-zeroes on the data file (no zeroes
 * written: holes where the file can), and only the guest data is written after it. 1 if that
 * was done, 0 if it cannot be (edges not zero, or the file cannot zero fast), else the error
 * of the zeroing, which fails the write as in qemu.
 */
static int zero_cow_fast(struct qcow2_state *s, const struct alloc_job *job, uint64_t head,
			 uint64_t tail, uint64_t data_end)
{
	int ret;

	if ((!head && !tail) ||
	    !edge_reads_zero(s, job->old[0], job->a.start + job->wfrom, head) ||
	    !edge_reads_zero(s, job->old[job->n - 1], data_end, tail))
		return 0;
	tblk_node_debug_event(s->node->file, TBLK_DBG_CLUSTER_ALLOC_SPACE);
	ret = tblk_node_pwrite_zeroes(s->data, job->host + job->wfrom, job->wto - job->wfrom,
				      TBLK_REQ_NO_FALLBACK);
	if (ret == -ENOTSUP || ret == -EAGAIN)
		return 0;
	return ret < 0 ? ret : 1;
}

/*
 * Writes guest data and the copy-on-write edges of the planned clusters in one request. Where
 * the edges read as zeroes, the range is zeroed by the file instead (fallocate, no
 * data written: zero_cow_fast) and only the guest data is written: the file ends up with the
 * same bytes and the same size, for a fraction of the I/O.
 */
static int write_alloc(struct qcow2_state *s, struct alloc_job *job, uint64_t offset,
		       uint64_t n, const struct iovec *iov, int iovcnt, size_t iov_off,
		       unsigned int flags)
{
	uint64_t wstart = job->a.start + job->wfrom, wend = job->a.start + job->wto;
	uint64_t head = offset - wstart, tail = wend - (offset + n);
	g_autofree struct iovec *v = g_new(struct iovec, iovcnt + 2);
	g_autofree uint8_t *hbuf = NULL;
	g_autofree uint8_t *tbuf = NULL;
	int cnt = 0, ret;

	ret = zero_cow_fast(s, job, head, tail, offset + n);
	if (ret < 0)
		return ret;
	if (ret) {
		ret = tblk_iov_slice(v, iovcnt, iov, iovcnt, iov_off, n);
		if (ret < 0)
			return ret;
		tblk_node_debug_event(s->node->file, TBLK_DBG_WRITE_AIO);
		return tblk_node_pwritev(s->data, offset - job->a.start + job->host, n, v, ret,
					 flags & TBLK_REQ_FUA);
	}
	hbuf = head ? g_malloc(head) : NULL;
	tbuf = tail ? g_malloc(tail) : NULL;
	if (head || tail)
		tblk_node_debug_event(s->node->file, TBLK_DBG_COW_READ);
	ret = read_old(s, job->old[0], wstart, head, hbuf);
	if (ret >= 0)
		ret = read_old(s, job->old[job->n - 1], offset + n, tail, tbuf);
	if (ret < 0)
		return ret;
	if (head)
		v[cnt++] = (struct iovec){ hbuf, head };
	ret = tblk_iov_slice(v + cnt, iovcnt, iov, iovcnt, iov_off, n);
	if (ret < 0)
		return ret;
	cnt += ret;
	if (tail)
		v[cnt++] = (struct iovec){ tbuf, tail };
	tblk_node_debug_event(s->node->file, TBLK_DBG_WRITE_AIO);
	/* qemu raises cow_write for the merged write of data and edges too. */
	if (head || tail)
		tblk_node_debug_event(s->node->file, TBLK_DBG_COW_WRITE);
	return tblk_node_pwritev(s->data, job->host + job->wfrom, job->wto - job->wfrom, v, cnt,
				 flags & TBLK_REQ_FUA);
}

/* Under the image lock: points the L2 entries at the new clusters, frees the old ones. */
static int link_alloc(struct qcow2_state *s, struct alloc_job *job)
{
	uint32_t l2i;
	void *table;
	int ret = qcow2_get_l2_for_write(s, job->a.start, &table, &l2i);

	if (ret < 0)
		return ret;
	for (uint64_t i = 0; i < job->n; i++) {
		uint64_t e = (job->host + (i << s->cluster_bits)) | QCOW2_OFLAG_COPIED;
		uint64_t bitmap = 0;

		if (s->ext_l2) {
			/* The written subclusters become allocated, the others stay as they are
			 * now (a concurrent zeroing may have changed them). */
			uint64_t base = i << s->cluster_bits;
			uint64_t from = TBLK_MAX(job->wfrom, base) - base;
			uint64_t to = TBLK_MIN(job->wto, base + s->cluster_size) - base;
			uint64_t lo = from / s->subcluster_size;
			uint64_t hi = TBLK_ALIGN_UP(to, s->subcluster_size) / s->subcluster_size;
			uint64_t mask = ((1ull << hi) - 1) & ~((1ull << lo) - 1);

			bitmap = qcow2_l2_get_bitmap(s, table, l2i + (uint32_t)i);
			bitmap = (bitmap | mask) & ~(mask << 32);
		}
		qcow2_l2_set(s, table, l2i + (uint32_t)i, e, bitmap);
		if (!job->keep_old) {
			ret = qcow2_free_l2_entry(s, job->old[i], QCOW2_DISCARD_OTHER);
			if (ret < 0)
				return ret;
		}
	}
	qcow2_cache_mark_dirty(s->l2_cache, table);
	/* The data must be on disk before the table that points at it. */
	s->meta_dirty = true;
	s->l2_needs_rc = true;
	return 0;
}

/*
 * Writes the leading part of [offset, offset + *pbytes) that maps to one contiguous host
 * range (in place, or allocated). *hint: where the host range of the previous part of the
 * same request ended, 0 if none; updated for the next part.
 */
static int write_chunk(struct qcow2_state *s, uint64_t offset, uint64_t *pbytes,
		       const struct iovec *iov, int iovcnt, size_t iov_off, unsigned int flags,
		       uint64_t *hint)
{
	g_autofree struct iovec *slice = NULL;
	struct alloc_job job = { 0 };
	struct qcow2_map m;
	uint64_t n;
	int ret;

	qcow2_lock(s);
	if (s->corrupt) {
		qcow2_unlock(s);
		return -EIO;
	}
	wait_dependencies(s, offset, pbytes);
	ret = qcow2_get_mapping_for_write(s, offset, *pbytes, &m);
	if (ret < 0)
		goto out_unlock;
	if (m.type == QCOW2_NORMAL && (m.l2_entry & QCOW2_OFLAG_COPIED)) {
		n = m.bytes;
		ret = n < *pbytes ? qcow2_write_lookahead(s, offset + n) : 0;
		if (ret >= 0)
			ret = qcow2_overlap_data_check(s, m.host, n);
		qcow2_unlock(s);
		if (ret < 0)
			return ret;
		slice = g_new(struct iovec, iovcnt);
		ret = tblk_iov_slice(slice, iovcnt, iov, iovcnt, iov_off, n);
		tblk_node_debug_event(s->node->file, TBLK_DBG_WRITE_AIO);
		if (ret >= 0)
			ret = tblk_node_pwritev(s->data, m.host, n, slice, ret, flags & TBLK_REQ_FUA);
		*pbytes = n;
		*hint = TBLK_ALIGN_UP(m.host + n, s->cluster_size);
		return ret;
	}
	ret = plan_alloc(s, offset, offset + *pbytes, *hint, &job);
	if (ret < 0)
		goto out_unlock;
	ret = job.a.end < offset + *pbytes ? qcow2_write_lookahead(s, job.a.end) : 0;
	/* Data and copy-on-write edges (or their zeroing) land in [wfrom, wto). */
	if (ret >= 0)
		ret = qcow2_overlap_alloc_check(s, job.host + job.wfrom, job.wto - job.wfrom);
	if (ret < 0) {
		tblk_list_del(&job.a.link);
		g_free(job.old);
		g_free(job.old_bitmap);
		goto out_unlock;
	}
	qcow2_unlock(s);
	n = TBLK_MIN(*pbytes, job.a.end - offset);
	ret = write_alloc(s, &job, offset, n, iov, iovcnt, iov_off, flags);
	qcow2_lock(s);
	if (ret >= 0 && qcow2_dead(s))
		ret = -EIO;
	if (ret >= 0)
		ret = link_alloc(s, &job);
	else if (!job.keep_old && s->data == s->node->file && !qcow2_dead(s))
		/*
		 * As qemu's failed allocating write, the new clusters are given back.
		 * TODO: qemu never discards them in the file; with pass-discard-other=on
		 * we do (there is no discard type "never" here yet).
		 */
		(void)qcow2_free_clusters(s, job.host, job.n << s->cluster_bits,
					  QCOW2_DISCARD_OTHER);
	tblk_list_del(&job.a.link);
	*hint = job.host + (job.a.end - job.a.start);
	g_free(job.old);
	g_free(job.old_bitmap);
	*pbytes = n;
out_unlock:
	qcow2_unlock(s);
	return ret;
}

static int write_compressed(struct qcow2_state *s, uint64_t offset, uint64_t bytes,
			    const struct iovec *iov, int iovcnt);

int tblk__qcow2_pwritev(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			const struct iovec *iov, int iovcnt, unsigned int flags)
{
	struct qcow2_state *s = node->opaque;
	uint64_t done = 0, hint = 0;
	int ret = 0;

	if (qcow2_dead(s)) {
		tblk__qcow2_order_release(s->order);
		return -ENOMEDIUM;
	}
	tblk_node_debug_event(node->file, TBLK_DBG_PWRITEV);
	if (flags & TBLK_REQ_COMPRESSED) {
		ret = write_compressed(s, offset, bytes, iov, iovcnt);
		tblk__qcow2_order_release(s->order);	/* the next in turn may place */
	}
	/* Compressed writes are durable on completion too when asked (writethrough). */
	while (!(flags & TBLK_REQ_COMPRESSED) && done < bytes) {
		uint64_t n = bytes - done;

		ret = write_chunk(s, offset + done, &n, iov, iovcnt, done, flags, &hint);
		if (ret < 0)
			return ret;
		done += n;
	}
	if (ret >= 0 && (flags & TBLK_REQ_FUA))
		ret = tblk__qcow2_flush(node);
	return ret;
}

/* ------------------------------------------------ compressed writes */

/*
 * One whole cluster (or the image's last, partial one), compressed if that saves space,
 * else written as a normal allocating write. The target cluster must be unallocated or zero.
 */
static int write_compressed_cluster(struct qcow2_state *s, uint64_t offset, uint64_t bytes,
				    const struct iovec *iov, int iovcnt, size_t iov_off)
{
	g_autofree uint8_t *src = g_malloc0(s->cluster_size);
	g_autofree uint8_t *dst = g_malloc(s->cluster_size);
	uint64_t entry, bitmap, nsect, desc;
	int64_t host;
	uint32_t l2i;
	ssize_t clen;
	void *table;
	int ret;

	tblk_iov_to_buf(iov, iovcnt, iov_off, src, bytes);
	clen = tblk__qcow2_compress(s->compression_type, dst, s->cluster_size - 1, src,
				    s->cluster_size);
	tblk__qcow2_order_wait(s->order);	/* placed in the order of submission */
	if (clen == -ENOSPC) {
		struct iovec one = { src, bytes };

		return tblk__qcow2_pwritev(s->node, offset, bytes, &one, 1, 0);
	}
	if (clen < 0)
		return (int)clen;
	qcow2_lock(s);
	ret = -EIO;
	if (s->corrupt)
		goto out_unlock;
	uint64_t one_bytes = s->cluster_size;

	wait_dependencies(s, offset, &one_bytes);
	ret = qcow2_get_l2_entry(s, offset, &entry, &bitmap);
	if (ret < 0)
		goto out_unlock;
	if (qcow2_entry_type(s, entry) != QCOW2_UNALLOCATED &&
	    qcow2_entry_type(s, entry) != QCOW2_ZERO_PLAIN) {
		ret = -EIO;	/* qemu refuses compressed overwrites too */
		goto out_unlock;
	}
	ret = qcow2_get_l2_for_write(s, offset, &table, &l2i);
	if (ret < 0)
		goto out_unlock;
	host = qcow2_alloc_bytes(s, (uint64_t)clen);
	if (host < 0) {
		ret = (int)host;
		goto out_unlock;
	}
	ret = qcow2_overlap_data_check(s, (uint64_t)host, (uint64_t)clen);
	if (ret < 0)
		goto out_unlock;
	tblk__qcow2_order_placed(s->order, offset, bytes);	/* room taken: the next may */
	tblk_node_debug_event(s->node->file, TBLK_DBG_L2_UPDATE_COMPRESSED);
	qcow2_unlock(s);
	tblk_node_debug_event(s->node->file, TBLK_DBG_WRITE_COMPRESSED);
	ret = tblk_node_pwrite(s->node->file, (uint64_t)host, dst, (uint64_t)clen, 0);
	qcow2_lock(s);
	if (ret >= 0 && qcow2_dead(s))
		ret = -EIO;
	if (ret < 0)
		goto out_unlock;
	nsect = (((uint64_t)host + (uint64_t)clen - 1) >> 9) - ((uint64_t)host >> 9);
	desc = QCOW2_OFLAG_COMPRESSED | (nsect << s->csize_shift) | (uint64_t)host;
	ret = qcow2_get_l2_for_write(s, offset, &table, &l2i);
	if (ret < 0)
		goto out_unlock;
	qcow2_l2_set(s, table, l2i, desc, 0);
	qcow2_cache_mark_dirty(s->l2_cache, table);
	s->meta_dirty = true;
out_unlock:
	qcow2_unlock(s);
	return ret;
}

static int write_compressed(struct qcow2_state *s, uint64_t offset, uint64_t bytes,
			    const struct iovec *iov, int iovcnt)
{
	if (s->data != s->node->file)
		return -ENOTSUP;
	if (qcow2_offset_into_cluster(s, offset))
		return -EINVAL;
	for (uint64_t done = 0; done < bytes; done += s->cluster_size) {
		uint64_t n = TBLK_MIN((uint64_t)s->cluster_size, bytes - done);
		int ret;

		if (n < s->cluster_size && offset + done + n != s->size)
			return -EINVAL;
		ret = write_compressed_cluster(s, offset + done, n, iov, iovcnt, done);
		if (ret < 0)
			return ret;
	}
	return 0;
}

/* ------------------------------------------------ discard and zeroes */

/* Under the image lock: rewrites the entries of [offset, offset + n clusters) with @fn. */
typedef bool entry_fn(struct qcow2_state *s, uint64_t old, uint64_t old_bitmap,
		      unsigned int flags, uint64_t *new, uint64_t *new_bitmap, bool *free_old);

static int rewrite_entries(struct qcow2_state *s, uint64_t offset, uint64_t nclusters,
			   unsigned int flags, entry_fn *fn)
{
	while (nclusters > 0) {
		uint64_t entry, bitmap, ne, nb;
		bool free_old = false;
		uint32_t l2i;
		void *table;
		int ret;

		/* qemu allocates the L2 table even where no entry changes: so do we. */
		ret = qcow2_get_l2_for_write(s, offset, &table, &l2i);
		if (ret < 0)
			return ret;
		entry = qcow2_l2_get(s, table, l2i);
		bitmap = qcow2_l2_get_bitmap(s, table, l2i);
		if (fn(s, entry, bitmap, flags, &ne, &nb, &free_old)) {
			qcow2_l2_set(s, table, l2i, ne, nb);
			qcow2_cache_mark_dirty(s->l2_cache, table);
			if (free_old) {
				ret = qcow2_free_l2_entry(s, entry, QCOW2_DISCARD_REQUEST);
				if (ret < 0)
					return ret;
			}
		}
		offset += s->cluster_size;
		nclusters--;
	}
	return 0;
}

static bool is_allocated(const struct qcow2_state *s, uint64_t entry)
{
	enum qcow2_ctype t = qcow2_entry_type(s, entry);

	return t == QCOW2_NORMAL || t == QCOW2_ZERO_ALLOC || t == QCOW2_COMPRESSED;
}

static bool discard_entry(struct qcow2_state *s, uint64_t old, uint64_t old_bitmap,
			  unsigned int flags, uint64_t *new, uint64_t *new_bitmap, bool *free_old)
{
	*new = old;
	*new_bitmap = old_bitmap;
	if (s->node->backing || is_allocated(s, old)) {
		*new = (s->version >= 3 && !s->ext_l2) ? QCOW2_OFLAG_ZERO : 0;
		*new_bitmap = s->ext_l2 ? 0xffffffff00000000ull : 0;
	}
	*free_old = is_allocated(s, old);
	return *new != old || *new_bitmap != old_bitmap;
}

static bool zero_entry(struct qcow2_state *s, uint64_t old, uint64_t old_bitmap,
		       unsigned int flags, uint64_t *new, uint64_t *new_bitmap, bool *free_old)
{
	bool unmap = qcow2_entry_type(s, old) == QCOW2_COMPRESSED ||
		     ((flags & TBLK_REQ_MAY_UNMAP) && is_allocated(s, old));

	/* v2 has no zero flag: without a backing file an unallocated cluster reads zeroes. */
	if (s->version < 3)
		return discard_entry(s, old, old_bitmap, flags, new, new_bitmap, free_old);

	*new = unmap ? 0 : old;
	*new_bitmap = old_bitmap;
	if (s->ext_l2)
		*new_bitmap = 0xffffffff00000000ull;
	else
		*new |= QCOW2_OFLAG_ZERO;
	*free_old = unmap;
	return *new != old || *new_bitmap != old_bitmap;
}

/* Under the image lock: waits for allocations in the range, then rewrites its entries. */
static int rewrite_range(struct qcow2_state *s, uint64_t offset, uint64_t bytes,
			 unsigned int flags, entry_fn *fn)
{
	uint64_t done = 0;

	while (done < bytes) {
		uint64_t n = bytes - done;
		int ret;

		wait_dependencies(s, offset + done, &n);
		n = TBLK_ALIGN_UP(n, s->cluster_size);
		ret = rewrite_entries(s, offset + done, n >> s->cluster_bits, flags, fn);
		if (ret < 0)
			return ret;
		done += n;
	}
	return 0;
}

int tblk__qcow2_pdiscard(struct tblk_node *node, uint64_t offset, uint64_t bytes)
{
	struct qcow2_state *s = node->opaque;
	uint64_t end = TBLK_MIN(offset + bytes, s->size);
	int ret;

	if (qcow2_dead(s))
		return -ENOMEDIUM;
	if (qcow2_offset_into_cluster(s, offset))
		return -ENOTSUP;
	if (s->version < 3 && node->backing)
		return 0;	/* unallocating would expose the backing file */
	end = end == s->size ? end : qcow2_start_of_cluster(s, end);
	if (end <= offset)
		return 0;
	qcow2_lock(s);
	ret = s->corrupt ? -EIO : rewrite_range(s, offset, end - offset, 0, discard_entry);
	qcow2_unlock(s);
	return ret;
}

/* True if [offset, offset + bytes) of the backing chain of @node reads as zeroes. */
static int backing_reads_zero(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			      bool *zero)
{
	struct tblk_node *b = node->backing;

	*zero = true;
	while (b && bytes) {
		int64_t len = tblk_node_getlength(b);
		uint64_t n;
		int ret;

		if (len < 0)
			return (int)len;
		if (offset >= (uint64_t)len)
			return 0;
		ret = tblk_node_block_status(b, offset, TBLK_MIN(bytes, (uint64_t)len - offset),
					     &n, NULL);
		if (ret < 0)
			return ret;
		if (!(ret & TBLK_BS_ALLOCATED)) {
			/* Falls through this layer: ask the one below for the same range. */
			bool z;

			ret = backing_reads_zero(b, offset, n, &z);
			if (ret < 0 || !z) {
				*zero = false;
				return ret;
			}
		} else if (!(ret & TBLK_BS_ZERO)) {
			*zero = false;
			return 0;
		}
		offset += n;
		bytes -= n;
	}
	return 0;
}

/*
 * True if guest [offset, offset + bytes) reads as zeroes as far as block status tells, down
 * the backing chain; past the end of the image counts as zeroes. It is what decides, as in
 * qemu, whether a partially zeroed unit may become a zero (sub)cluster.
 */
static int range_reads_zero(struct qcow2_state *s, uint64_t offset, uint64_t bytes, bool *zero)
{
	*zero = true;
	if (offset >= s->size)
		return 0;
	bytes = TBLK_MIN(bytes, s->size - offset);
	while (bytes) {
		struct qcow2_map m;
		int ret;

		qcow2_lock(s);
		ret = qcow2_get_mapping(s, offset, bytes, &m);
		qcow2_unlock(s);
		if (ret < 0)
			return ret;
		if (m.type == QCOW2_UNALLOCATED) {
			ret = backing_reads_zero(s->node, offset, m.bytes, zero);
			if (ret < 0 || !*zero)
				return ret;
		} else if (m.type != QCOW2_ZERO_PLAIN && m.type != QCOW2_ZERO_ALLOC) {
			*zero = false;
			return 0;
		}
		offset += m.bytes;
		bytes -= m.bytes;
	}
	return 0;
}

/*
 * Under the image lock, extended L2: makes the subclusters of [offset, offset + bytes) (in one
 * cluster, subcluster aligned) zero subclusters; the host cluster stays. -ENOTSUP for a
 * compressed cluster, which has no subclusters.
 */
static int zero_subclusters(struct qcow2_state *s, uint64_t offset, uint64_t bytes)
{
	uint64_t n = bytes, entry, bitmap, nb, mask;
	uint64_t lo = sc_index(s, offset);
	uint64_t hi = lo + TBLK_ALIGN_UP(bytes, s->subcluster_size) / s->subcluster_size;
	uint32_t l2i;
	void *table;
	int ret;

	wait_dependencies(s, offset, &n);
	ret = qcow2_get_l2_for_write(s, offset, &table, &l2i);
	if (ret < 0)
		return ret;
	entry = qcow2_l2_get(s, table, l2i);
	if (qcow2_entry_type(s, entry) == QCOW2_COMPRESSED)
		return -ENOTSUP;
	mask = ((1ull << hi) - 1) & ~((1ull << lo) - 1);
	bitmap = qcow2_l2_get_bitmap(s, table, l2i);
	nb = (bitmap | (mask << 32)) & ~mask;
	if (nb != bitmap) {
		qcow2_l2_set(s, table, l2i, entry, nb);
		qcow2_cache_mark_dirty(s->l2_cache, table);
	}
	return 0;
}

/*
 * Under the image lock: zeroes [offset, offset + bytes), aligned to the allocation unit (or
 * ending at the end of the image), in the metadata: partial clusters at either end as zero
 * subclusters, whole clusters as zero clusters (unmapped with TBLK_REQ_MAY_UNMAP).
 */
static int zeroize_locked(struct qcow2_state *s, uint64_t offset, uint64_t bytes,
			  unsigned int flags)
{
	uint64_t end = offset + bytes;
	uint64_t head = TBLK_MIN(end, TBLK_ALIGN_UP(offset, s->cluster_size)) - offset;
	uint64_t tail = 0;
	int ret = 0;

	if (s->corrupt)
		return -EIO;
	if (end < s->size)
		tail = end - TBLK_MAX(offset + head, qcow2_start_of_cluster(s, end));
	if (!s->ext_l2)
		head = tail = 0;	/* unit and cluster are one */
	if (head)
		ret = zero_subclusters(s, offset, head);
	if (ret >= 0 && end - tail > offset + head)
		ret = rewrite_range(s, offset + head, end - tail - (offset + head), flags,
				    zero_entry);
	if (ret >= 0 && tail)
		ret = zero_subclusters(s, end - tail, tail);
	return ret;
}

/* Writes zero data over [offset, offset + bytes): where zero (sub)clusters cannot be used. */
static int zero_fallback(struct qcow2_state *s, uint64_t offset, uint64_t bytes,
			 unsigned int flags)
{
	uint64_t chunk = TBLK_MIN(bytes, (uint64_t)16 << 20);
	g_autofree void *buf = NULL;

	if (flags & TBLK_REQ_NO_FALLBACK)
		return -ENOTSUP;
	buf = g_malloc0(chunk);
	for (uint64_t done = 0; done < bytes; done += chunk) {
		struct iovec iov = { buf, TBLK_MIN(chunk, bytes - done) };
		int ret = tblk__qcow2_pwritev(s->node, offset + done, iov.iov_len, &iov, 1,
					      flags & TBLK_REQ_FUA);

		if (ret < 0)
			return ret;
	}
	return 0;
}

/*
 * Less than one allocation unit (subcluster, or cluster without extended L2): the whole unit
 * becomes zero if the rest of it already reads as zeroes and it holds no data, else zero data
 * is written.
 */
static int zero_partial(struct qcow2_state *s, uint64_t offset, uint64_t bytes,
			unsigned int flags)
{
	uint64_t unit = s->subcluster_size, start = TBLK_ALIGN_DOWN(offset, unit);
	uint64_t n = unit;
	struct qcow2_map m;
	bool zero = false;
	int ret;

	/*
	 * As qemu's: what cannot be told to read as zeroes (an error, a corruption signalled
	 * on the way) does not, and zero data is written instead.
	 */
	ret = range_reads_zero(s, start, offset - start, &zero);
	if (ret >= 0 && zero)
		ret = range_reads_zero(s, offset + bytes, start + unit - (offset + bytes), &zero);
	if (ret < 0)
		zero = false;
	if (zero) {
		qcow2_lock(s);
		/* An allocation in flight in this cluster decides what it holds: wait for it. */
		wait_dependencies(s, start, &n);
		ret = qcow2_get_mapping(s, start, unit, &m);
		zero = ret >= 0 && (m.type == QCOW2_UNALLOCATED || m.type == QCOW2_ZERO_PLAIN ||
				    m.type == QCOW2_ZERO_ALLOC);
		if (zero)
			ret = zeroize_locked(s, start, unit, flags);
		qcow2_unlock(s);
		if (ret < 0 || zero)
			return ret;
	}
	return zero_fallback(s, offset, bytes, flags);
}

/* Units whole (or up to the end of the image): zero (sub)clusters where possible. */
static int zero_aligned(struct qcow2_state *s, uint64_t offset, uint64_t bytes,
			unsigned int flags)
{
	int ret;

	qcow2_lock(s);
	ret = zeroize_locked(s, offset, bytes, flags);
	qcow2_unlock(s);
	/* A compressed cluster cannot be zeroed in part: the whole range gets zero data. */
	return ret == -ENOTSUP ? zero_fallback(s, offset, bytes, flags) : ret;
}

/*
 * Split as qemu's block layer splits a zero write for the driver: a partial unit at the
 * head, the whole units, a partial unit at the tail.
 */
int tblk__qcow2_pwrite_zeroes(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			      unsigned int flags)
{
	struct qcow2_state *s = node->opaque;
	uint64_t unit = s->subcluster_size, end = offset + bytes, pos = offset;
	int ret = 0;

	/*
	 * No pwritev_zero on the file here: as in qemu, that event belongs to zero writes that
	 * reach the file (copy-on-write zeroing), not to zero (sub)clusters in the metadata.
	 */
	if (qcow2_dead(s))
		return -ENOMEDIUM;
	if (s->version < 3 && node->backing)
		return -ENOTSUP;	/* written as zero data */
	while (ret >= 0 && pos < end) {
		uint64_t n = end - pos;
		bool partial;

		if (pos % unit)
			n = TBLK_MIN(n, unit - pos % unit);
		else if (end % unit && n > unit)
			n -= end % unit;
		partial = (pos % unit) || ((pos + n) % unit && pos + n != s->size);
		ret = partial ? zero_partial(s, pos, n, flags) : zero_aligned(s, pos, n, flags);
		pos += n;
	}
	if (ret >= 0 && (flags & TBLK_REQ_FUA))
		ret = tblk__qcow2_flush(node);
	return ret;
}

/* ------------------------------------------------ flush and block status */

int tblk__qcow2_flush(struct tblk_node *node)
{
	struct qcow2_state *s = node->opaque;
	int ret;

	/* A flush of an unusable image does nothing, as qemu's. */
	if (node->read_only || qcow2_dead(s))
		return 0;
	tblk_node_debug_event(node->file, TBLK_DBG_FLUSH_TO_OS);
	qcow2_lock(s);
	ret = qcow2_flush_metadata(s);
	qcow2_unlock(s);
	tblk_node_debug_event(node->file, TBLK_DBG_FLUSH_TO_DISK);
	if (ret >= 0 && s->data != node->file)
		ret = tblk_node_flush(s->data);
	return ret;
}

/*
 * qemu's test for an image preallocated with metadata: the clusters with a non-zero refcount
 * (counted up to the end of the file) reach max(10/9 of the clusters the file has blocks
 * for, those + 2). Decided once, at the first block status; an error counts as "no". The
 * file's sizes are taken before the image lock (they are not metadata I/O). [meta]
 */
static bool meta_prealloc_locked(struct qcow2_state *s, int64_t file_len, int64_t file_alloc)
{
	uint64_t real, threshold, end, count = 0;
	uint8_t v = __atomic_load_n(&s->meta_prealloc, __ATOMIC_RELAXED);

	if (v)
		return v == 2;
	__atomic_store_n(&s->meta_prealloc, 1, __ATOMIC_RELAXED);
	if (file_len < 0 || file_alloc < 0)
		return false;
	real = (uint64_t)file_alloc >> s->cluster_bits;
	threshold = TBLK_MAX(real * 10 / 9, real + 2);
	end = qcow2_size_to_clusters(s, (uint64_t)file_len);
	for (uint64_t i = 0; i < end && count < threshold; i++) {
		uint64_t rc;

		if (qcow2_get_refcount(s, i, &rc) < 0)
			return false;
		count += rc != 0;
	}
	if (count < threshold)
		return false;
	__atomic_store_n(&s->meta_prealloc, 2, __ATOMIC_RELAXED);
	return true;
}

/*
 * A data cluster of a metadata-preallocated image may be a hole in the data file: as qemu's
 * generic block status does for such images, ask the data file about [host, host + *pnum)
 * and add its zero bit, cutting *pnum to the extent the file reports, except where the file
 * says "zeroes up to its end" or the range starts past that end (then the whole of *pnum
 * reads as zeroes). Errors are ignored: this only adds information.
 */
static int data_file_zero(struct qcow2_state *s, uint64_t host, uint64_t *pnum)
{
	int64_t len = tblk_node_getlength(s->data);
	uint64_t n = 0;
	int ret;

	if (len < 0)
		return 0;
	ret = tblk_node_block_status(s->data, host, *pnum, &n, NULL);
	if (ret < 0)
		return 0;
	if (host >= (uint64_t)len || (host + n == (uint64_t)len && (ret & TBLK_BS_ZERO)))
		return TBLK_BS_ZERO;
	*pnum = n;
	return ret & TBLK_BS_ZERO;
}

int tblk__qcow2_block_status(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			     uint64_t *pnum, uint64_t *map)
{
	struct qcow2_state *s = node->opaque;
	int64_t file_len = 0, file_alloc = 0;
	struct qcow2_map m;
	bool prealloc;
	int ret;

	if (qcow2_dead(s))
		return -ENOMEDIUM;
	if (!__atomic_load_n(&s->meta_prealloc, __ATOMIC_RELAXED)) {
		/* A peek: at worst both sizes are read once more and not used. */
		file_len = tblk_node_getlength(node->file);
		file_alloc = node->file->drv->get_allocated_size ?
			     node->file->drv->get_allocated_size(node->file) : -ENOTSUP;
	}
	qcow2_lock(s);
	ret = qcow2_get_mapping(s, offset, bytes, &m);
	prealloc = meta_prealloc_locked(s, file_len, file_alloc);
	qcow2_unlock(s);
	if (ret < 0)
		return ret;
	*pnum = m.bytes;
	switch (m.type) {
	case QCOW2_NORMAL:
		if (map)
			*map = m.host;
		return TBLK_BS_DATA | TBLK_BS_OFFSET_VALID | TBLK_BS_ALLOCATED |
		       (prealloc ? data_file_zero(s, m.host, pnum) : 0);
	case QCOW2_ZERO_ALLOC:
		if (map)
			*map = m.host;
		return TBLK_BS_ZERO | TBLK_BS_OFFSET_VALID | TBLK_BS_ALLOCATED;
	case QCOW2_ZERO_PLAIN:
		return TBLK_BS_ZERO | TBLK_BS_ALLOCATED;
	case QCOW2_COMPRESSED:
		return TBLK_BS_DATA | TBLK_BS_ALLOCATED;
	default:
		/* Unallocated subclusters of a host cluster: qemu gives the host offset. */
		if (m.host && map)
			*map = m.host;
		return m.host ? TBLK_BS_OFFSET_VALID : 0;
	}
}
