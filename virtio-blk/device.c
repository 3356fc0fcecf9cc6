/* SPDX-License-Identifier: MIT */
/*
 * device.c - the virtio-blk device: features, config space, queue setup for transports,
 * and request decoding (IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES) into the tblk async
 * API, so a raw image on Linux AIO takes the fast path straight from this loop.
 *
 * Threading: loop thread of the backend (see virtio-blk.h).
 */
#include <string.h>

#include "virtio-blk/virtio-blk-int.h"

#define SECTOR	512u

int tblk_vblk_new(struct tblk_vblk **pdev, struct tblk_blk *blk,
		  const struct tblk_vblk_opts *opts, GError **errp)
{
	uint32_t lbs = opts->logical_block_size ? opts->logical_block_size : SECTOR;
	struct tblk_vblk *dev;

	if (opts->num_queues < 1 || opts->num_queues > TBLK_VBLK_MAX_QUEUES)
		return tblk_error_set(errp, EINVAL, "num-queues must be between 1 and %u",
				      TBLK_VBLK_MAX_QUEUES);
	if (lbs < SECTOR || lbs > (2u << 20) || !TBLK_IS_POW2(lbs))
		return tblk_error_set(errp, EINVAL, "logical-block-size must be a power of two "
				      "between 512 and 2097152");
	if (!tblk_blk_get_loop(blk))
		return tblk_error_set(errp, EINVAL, "the backend has no event loop");
	dev = g_malloc0(sizeof(*dev) + opts->num_queues * sizeof(struct tblk_vq));
	dev->refcnt = 1;
	dev->blk = blk;
	dev->loop = tblk_blk_get_loop(blk);
	dev->opts = *opts;
	dev->opts.logical_block_size = lbs;
	if (opts->serial)
		g_strlcpy(dev->serial, opts->serial, sizeof(dev->serial));
	dev->opts.serial = dev->serial;
	if (tblk_blk_is_read_only(blk))
		dev->opts.writable = false;
	dev->offered = 1ull << VIRTIO_BLK_F_SEG_MAX | 1ull << VIRTIO_BLK_F_BLK_SIZE |
		       1ull << VIRTIO_BLK_F_FLUSH | 1ull << VIRTIO_BLK_F_CONFIG_WCE |
		       1ull << VIRTIO_BLK_F_MQ | 1ull << VIRTIO_BLK_F_TOPOLOGY |
		       1ull << VIRTIO_RING_F_INDIRECT_DESC | 1ull << VIRTIO_RING_F_EVENT_IDX |
		       1ull << VIRTIO_F_VERSION_1;
	if (dev->opts.writable)
		dev->offered |= 1ull << VIRTIO_BLK_F_DISCARD | 1ull << VIRTIO_BLK_F_WRITE_ZEROES;
	else
		dev->offered |= 1ull << VIRTIO_BLK_F_RO;
	dev->writeback = 1;
	dev->length = tblk_blk_getlength(blk);
	dev->nq = opts->num_queues;
	for (unsigned int i = 0; i < dev->nq; i++)
		tblk__vq_init(dev, &dev->vq[i], i);
	*pdev = dev;
	return 0;
}

void tblk_vblk_ref(struct tblk_vblk *dev)
{
	dev->refcnt++;
}

void tblk_vblk_unref(struct tblk_vblk *dev)
{
	if (!dev || --dev->refcnt > 0)
		return;
	for (unsigned int i = 0; i < dev->nq; i++)
		tblk__vq_destroy(&dev->vq[i]);
	tblk__vmem_unref(dev->vmem);
	g_free(dev);
}

size_t tblk_vblk_inflight_size(unsigned int qsize)
{
	return TBLK_ALIGN_UP(sizeof(struct vblk_inflight) +
			     qsize * sizeof(struct vblk_inflight_desc), 64);
}

void tblk_vblk_set_inflight(struct tblk_vblk *dev, void *base, unsigned int nq,
			    unsigned int qsize)
{
	dev->ifl_base = base;
	dev->ifl_nq = base ? nq : 0;
	dev->ifl_qsize = qsize;
	for (unsigned int i = 0; i < dev->nq; i++)
		if (!dev->vq[i].started)
			dev->vq[i].ifl = NULL;
}

void tblk_vblk_detach(struct tblk_vblk *dev)
{
	dev->detached = true;
	memset(&dev->cbs, 0, sizeof(dev->cbs));
	for (unsigned int i = 0; i < dev->nq; i++) {
		dev->vq[i].started = false;
		dev->vq[i].ifl = NULL;
		tblk_bh_cancel(dev->vq[i].bh);
	}
}

void tblk_vblk_set_callbacks(struct tblk_vblk *dev, const struct tblk_vblk_callbacks *cbs)
{
	dev->cbs = *cbs;
}

uint64_t tblk_vblk_get_features(struct tblk_vblk *dev)
{
	return dev->offered;
}

int tblk_vblk_set_features(struct tblk_vblk *dev, uint64_t features)
{
	if (features & ~dev->offered)
		return -EINVAL;
	dev->features = features;
	return 0;
}

uint64_t tblk_vblk_features(struct tblk_vblk *dev)
{
	return dev->features;
}

unsigned int tblk_vblk_num_queues(struct tblk_vblk *dev)
{
	return dev->nq;
}

static void build_config(struct tblk_vblk *dev, struct virtio_blk_config *c)
{
	int64_t len = dev->length = tblk_blk_getlength(dev->blk);
	uint32_t lbs = dev->opts.logical_block_size;

	memset(c, 0, sizeof(*c));
	c->capacity = len > 0 ? (uint64_t)len / lbs * (lbs / SECTOR) : 0;
	c->seg_max = TBLK_VBLK_SEG_MAX;
	c->blk_size = lbs;
	c->min_io_size = 1;
	c->opt_io_size = 1;
	c->writeback = dev->writeback;
	c->num_queues = (uint16_t)dev->nq;
	if (dev->opts.writable) {
		c->max_discard_sectors = TBLK_VBLK_MAX_DISCARD_SECTORS;
		c->max_discard_seg = 1;
		c->discard_sector_alignment = lbs / SECTOR;
		c->max_write_zeroes_sectors = TBLK_VBLK_MAX_DISCARD_SECTORS;
		c->max_write_zeroes_seg = 1;
		c->write_zeroes_may_unmap = 1;
	}
}

int tblk_vblk_get_config(struct tblk_vblk *dev, uint32_t offset, void *buf, uint32_t len)
{
	uint8_t space[TBLK_VBLK_CONFIG_MAX] = { 0 };
	struct virtio_blk_config c;

	if (offset > sizeof(space) || len > sizeof(space) - offset)
		return -EINVAL;
	build_config(dev, &c);
	memcpy(space, &c, sizeof(c));
	memcpy(buf, space + offset, len);
	return 0;
}

int tblk_vblk_set_config(struct tblk_vblk *dev, uint32_t offset, const void *buf,
			 uint32_t len)
{
	if (offset != TBLK_VBLK_CONFIG_WRITEBACK_OFFSET || len != 1 ||
	    !(dev->offered & (1ull << VIRTIO_BLK_F_CONFIG_WCE)))
		return -EINVAL;
	dev->writeback = *(const uint8_t *)buf ? 1 : 0;
	return 0;
}

void tblk_vblk_set_mem(struct tblk_vblk *dev, struct tblk_vmem *vmem)
{
	tblk__vmem_unref(dev->vmem);
	dev->vmem = vmem;
	for (unsigned int i = 0; i < dev->nq; i++) {
		struct tblk_vq *vq = &dev->vq[i];

		if (vq->addr_set && vq->started && tblk__vq_translate(vq) < 0)
			tblk__vq_break(vq);
	}
}

struct tblk_vmem *tblk_vblk_get_mem(struct tblk_vblk *dev)
{
	return dev->vmem;
}

static struct tblk_vq *get_vq(struct tblk_vblk *dev, unsigned int qidx)
{
	return qidx < dev->nq ? &dev->vq[qidx] : NULL;
}

int tblk_vblk_vq_set_num(struct tblk_vblk *dev, unsigned int qidx, unsigned int num)
{
	struct tblk_vq *vq = get_vq(dev, qidx);

	if (!vq || vq->started || num == 0 || num > TBLK_VQ_MAX_SIZE || !TBLK_IS_POW2(num))
		return -EINVAL;
	vq->num = num;
	return 0;
}

int tblk_vblk_vq_set_addr(struct tblk_vblk *dev, unsigned int qidx, uint64_t desc,
			  uint64_t avail, uint64_t used)
{
	struct tblk_vq *vq = get_vq(dev, qidx);

	if (!vq)
		return -EINVAL;
	vq->desc_uva = desc;
	vq->avail_uva = avail;
	vq->used_uva = used;
	vq->addr_set = true;
	if (vq->started && tblk__vq_translate(vq) < 0)
		tblk__vq_break(vq);
	return 0;
}

int tblk_vblk_vq_set_base(struct tblk_vblk *dev, unsigned int qidx, uint16_t last_avail)
{
	struct tblk_vq *vq = get_vq(dev, qidx);

	if (!vq || vq->started)
		return -EINVAL;
	vq->last_avail = last_avail;
	return 0;
}

int tblk_vblk_vq_start(struct tblk_vblk *dev, unsigned int qidx)
{
	struct tblk_vq *vq = get_vq(dev, qidx);
	int ret;

	if (!vq || vq->inflight)
		return -EBUSY;
	ret = tblk__vq_translate(vq);
	if (ret < 0)
		return ret;
	vq->used_idx = __atomic_load_n(&vq->used->idx, __ATOMIC_RELAXED);
	vq->ifl = NULL;
	if (dev->ifl_base && qidx < dev->ifl_nq && dev->ifl_qsize == vq->num)
		vq->ifl = (struct vblk_inflight *)(dev->ifl_base +
						   qidx * tblk_vblk_inflight_size(vq->num));
	tblk__vq_inflight_start(vq);
	vq->signalled_valid = false;
	vq->broken = false;
	vq->stopping = false;
	vq->stalled = false;
	vq->nr_unpublished = 0;
	vq->started = true;
	return 0;
}

int tblk_vblk_vq_enable(struct tblk_vblk *dev, unsigned int qidx, bool on)
{
	struct tblk_vq *vq = get_vq(dev, qidx);

	if (!vq)
		return -EINVAL;
	vq->enabled = on;
	return 0;
}

uint16_t tblk_vblk_vq_stop(struct tblk_vblk *dev, unsigned int qidx, unsigned int *pinflight)
{
	struct tblk_vq *vq = get_vq(dev, qidx);

	*pinflight = 0;
	if (!vq)
		return 0;
	if (vq->started) {
		vq->stopping = true;
		vq->started = false;
	}
	*pinflight = vq->inflight;
	if (!vq->inflight) {
		vq->stopping = false;
		tblk_bh_cancel(vq->bh);
		/* Publish what the batch still holds before the front-end reads the ring. */
		if (vq->nr_unpublished && vq->used && !dev->detached) {
			vq->nr_unpublished = 0;
			__atomic_store_n(&vq->used->idx, vq->used_idx, __ATOMIC_RELEASE);
		}
	}
	return vq->last_avail;
}

void tblk_vblk_vq_kick(struct tblk_vblk *dev, unsigned int qidx)
{
	struct tblk_vq *vq = get_vq(dev, qidx);

	if (vq)
		tblk__vq_process(vq);
}

bool tblk_vblk_vq_poll(struct tblk_vblk *dev, unsigned int qidx)
{
	struct tblk_vq *vq = get_vq(dev, qidx);

	if (!vq || !vq->started || !vq->enabled || vq->broken || vq->stopping || vq->stalled ||
	    !vq->avail || dev->detached)
		return false;
	if (__atomic_load_n(&vq->avail->idx, __ATOMIC_ACQUIRE) == vq->last_avail &&
	    !vq->nr_resubmit)
		return false;
	tblk__vq_process(vq);
	return true;
}

bool tblk_vblk_vq_is_broken(struct tblk_vblk *dev, unsigned int qidx)
{
	struct tblk_vq *vq = get_vq(dev, qidx);

	return vq && vq->broken;
}

void tblk_vblk_get_stats(struct tblk_vblk *dev, struct tblk_vblk_stats *st)
{
	*st = dev->stats;
	st->inflight = 0;
	for (unsigned int i = 0; i < dev->nq; i++)
		st->inflight += dev->vq[i].inflight;
}

/* ------------------------------------------------------------ requests */

static uint64_t iov_size(const struct iovec *iov, unsigned int cnt)
{
	uint64_t n = 0;

	for (unsigned int i = 0; i < cnt; i++)
		n += iov[i].iov_len;
	return n;
}

/* Copies up to @len bytes from the front of @iov and drops them from it. */
static size_t iov_pull(struct iovec **iov, unsigned int *cnt, void *buf, size_t len)
{
	size_t done = 0;

	while (*cnt && done < len) {
		size_t n = TBLK_MIN(len - done, (*iov)->iov_len);

		memcpy((uint8_t *)buf + done, (*iov)->iov_base, n);
		done += n;
		(*iov)->iov_base = (uint8_t *)(*iov)->iov_base + n;
		(*iov)->iov_len -= n;
		if (!(*iov)->iov_len) {
			(*iov)++;
			(*cnt)--;
		}
	}
	return done;
}

static void req_done(void *opaque, int ret)
{
	struct vblk_req *req = opaque;

	tblk__vq_complete(req, ret < 0 ? VIRTIO_BLK_S_IOERR : VIRTIO_BLK_S_OK);
}

static bool range_in(int64_t len, uint64_t sector, uint64_t bytes)
{
	return len >= 0 && sector <= (uint64_t)len / SECTOR &&
	       bytes <= (uint64_t)len - sector * SECTOR;
}

/*
 * True if [sector, +bytes) is aligned to the logical block size and inside the disk. The
 * size is the one cached at creation and at each config read (asking the driver costs a
 * syscall per request on a file); a range outside it asks again, so a disk grown since is
 * served. The backend checks every request against its own size too, so one shrunk since
 * fails there.
 */
static bool range_ok(struct tblk_vblk *dev, uint64_t sector, uint64_t bytes)
{
	uint32_t lbs = dev->opts.logical_block_size;

	if ((sector * SECTOR) % lbs || bytes % lbs)
		return false;
	if (range_in(dev->length, sector, bytes))
		return true;
	dev->length = tblk_blk_getlength(dev->blk);
	return range_in(dev->length, sector, bytes);
}

static bool writes_through(struct tblk_vblk *dev)
{
	if (!vblk_has(dev, VIRTIO_BLK_F_FLUSH))
		return true;
	return vblk_has(dev, VIRTIO_BLK_F_CONFIG_WCE) && !dev->writeback;
}

static int submit_rw(struct tblk_vblk *dev, struct vblk_req *req, bool write, uint64_t sector,
		     struct iovec *iov, unsigned int cnt)
{
	uint64_t bytes = iov_size(iov, cnt);

	if (write && !dev->opts.writable)
		return VIRTIO_BLK_S_IOERR;
	if (!range_ok(dev, sector, bytes) || bytes > INT32_MAX)
		return VIRTIO_BLK_S_IOERR;
	req->data = iov;
	req->data_cnt = (int)cnt;
	if (write) {
		tblk_blk_pwritev(dev->blk, sector * SECTOR, iov, (int)cnt,
				 writes_through(dev) ? TBLK_REQ_FUA : 0, req_done, req);
	} else {
		req->used_len = (uint32_t)bytes;
		tblk_blk_preadv(dev->blk, sector * SECTOR, iov, (int)cnt, 0, req_done, req);
	}
	return -1;
}

static int submit_discard(struct tblk_vblk *dev, struct vblk_req *req, uint32_t type,
			  struct iovec *out, unsigned int out_cnt)
{
	bool wz = type == VIRTIO_BLK_T_WRITE_ZEROES;
	struct virtio_blk_discard_write_zeroes seg;
	uint64_t len = iov_size(out, out_cnt), bytes;

	if (!vblk_has(dev, wz ? VIRTIO_BLK_F_WRITE_ZEROES : VIRTIO_BLK_F_DISCARD))
		return VIRTIO_BLK_S_UNSUPP;
	if (!dev->opts.writable)
		return VIRTIO_BLK_S_IOERR;
	if (len == 0 || len % sizeof(seg))
		return VIRTIO_BLK_S_IOERR;
	if (len > sizeof(seg))
		return VIRTIO_BLK_S_UNSUPP;
	iov_pull(&out, &out_cnt, &seg, sizeof(seg));
	if (seg.flags & ~(wz ? VIRTIO_BLK_WZ_F_UNMAP : 0u))
		return VIRTIO_BLK_S_UNSUPP;
	if (seg.num_sectors > TBLK_VBLK_MAX_DISCARD_SECTORS)
		return VIRTIO_BLK_S_IOERR;
	bytes = (uint64_t)seg.num_sectors * SECTOR;
	if (seg.sector > UINT64_MAX / SECTOR || !range_ok(dev, seg.sector, bytes))
		return VIRTIO_BLK_S_IOERR;
	if (wz)
		tblk_blk_aio_pwrite_zeroes(dev->blk, seg.sector * SECTOR, bytes,
					   (seg.flags & VIRTIO_BLK_WZ_F_UNMAP) ?
					   TBLK_REQ_MAY_UNMAP : 0, req_done, req);
	else
		tblk_blk_aio_pdiscard(dev->blk, seg.sector * SECTOR, bytes, req_done, req);
	return -1;
}

static int get_id(struct tblk_vblk *dev, struct vblk_req *req, struct iovec *in,
		  unsigned int in_cnt)
{
	uint8_t id[VIRTIO_BLK_ID_BYTES] = { 0 };
	size_t done = 0;

	memcpy(id, dev->serial, strlen(dev->serial));
	for (unsigned int i = 0; i < in_cnt && done < sizeof(id); i++) {
		size_t n = TBLK_MIN(in[i].iov_len, sizeof(id) - done);

		memcpy(in[i].iov_base, id + done, n);
		done += n;
	}
	req->used_len = (uint32_t)done;
	return VIRTIO_BLK_S_OK;
}

void tblk__vblk_submit(struct tblk_vblk *dev, struct vblk_req *req, struct iovec *out,
		       unsigned int out_cnt, struct iovec *in, unsigned int in_cnt)
{
	struct virtio_blk_outhdr hdr;
	int status;

	if (iov_pull(&out, &out_cnt, &hdr, sizeof(hdr)) < sizeof(hdr)) {
		tblk__vq_complete(req, VIRTIO_BLK_S_IOERR);
		return;
	}
	switch (hdr.type) {
	case VIRTIO_BLK_T_IN:
		status = submit_rw(dev, req, false, hdr.sector, in, in_cnt);
		break;
	case VIRTIO_BLK_T_OUT:
		status = submit_rw(dev, req, true, hdr.sector, out, out_cnt);
		break;
	case VIRTIO_BLK_T_FLUSH:
		tblk_blk_aio_flush(dev->blk, req_done, req);
		status = -1;
		break;
	case VIRTIO_BLK_T_GET_ID:
		status = get_id(dev, req, in, in_cnt);
		break;
	case VIRTIO_BLK_T_DISCARD:
	case VIRTIO_BLK_T_WRITE_ZEROES:
		status = submit_discard(dev, req, hdr.type, out, out_cnt);
		break;
	default:
		status = VIRTIO_BLK_S_UNSUPP;
		break;
	}
	if (status >= 0)
		tblk__vq_complete(req, status);
}
