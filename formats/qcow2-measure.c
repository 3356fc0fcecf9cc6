/* SPDX-License-Identifier: MIT */
/*
 * qcow2-measure.c - what a qcow2 image would take on the host (qemu-img measure), with qemu
 * 7.2's arithmetic: the fully allocated size is the header, all L2 tables, the L1 table and
 * the refcount structures counting all of it plus every data cluster; the required size
 * counts only the data clusters the source holds (all of them with a backing file or
 * falloc/full preallocation).
 *
 * Threading: control path; @src is read through the public API.
 */
#include <string.h>

#include "formats/qcow2-int.h"

struct measure_opts {
	bool ext_l2;
	uint64_t cluster_size;
	int version;
	uint64_t refcount_bits;
	int prealloc;
	bool has_backing;
};

static int opt_bool(GHashTable *opts, const char *key, bool *out)
{
	g_autofree char *v = tblk__opts_take(opts, key);

	if (v)
		*out = !strcmp(v, "on") || !strcmp(v, "true") || !strcmp(v, "yes");
	return 0;
}

static int parse(GHashTable *opts, struct measure_opts *o, GError **errp)
{
	g_autofree char *compat = NULL, *prealloc = NULL, *backing = NULL, *enc = NULL;
	uint64_t cs = 65536;

	opt_bool(opts, "extended_l2", &o->ext_l2);
	if (tblk__opts_take_size(opts, "cluster_size", &cs, errp) < 0)
		return -EINVAL;
	if (cs < 512 || cs > (2u << 20) || (cs & (cs - 1)))
		return tblk_error_set(errp, EINVAL, "Cluster size must be a power of two between "
				      "%d and %dk", 512, 2048);
	if (o->ext_l2 && cs < 32 * 512)
		return tblk_error_set(errp, EINVAL, "Extended L2 entries are only supported with "
				      "cluster sizes of at least %d bytes", 32 * 512);
	o->cluster_size = cs;
	compat = tblk__opts_take(opts, "compat");
	o->version = 3;
	if (compat && (!strcmp(compat, "0.10") || !strcmp(compat, "v2")))
		o->version = 2;
	else if (compat && strcmp(compat, "1.1") && strcmp(compat, "v3"))
		return tblk_error_set(errp, EINVAL, "Invalid compatibility level: '%s'", compat);
	o->refcount_bits = 16;
	if (tblk__opts_take_uint64(opts, "refcount_bits", &o->refcount_bits, errp) < 0)
		return -EINVAL;
	if (!o->refcount_bits || o->refcount_bits > 64 ||
	    (o->refcount_bits & (o->refcount_bits - 1)))
		return tblk_error_set(errp, EINVAL, "Refcount width must be a power of two and may "
				      "not exceed 64 bits");
	if (o->version < 3 && o->refcount_bits != 16)
		return tblk_error_set(errp, EINVAL, "Different refcount widths than 16 bits require "
				      "compatibility level 1.1 or above (use compat=1.1 or "
				      "greater)");
	prealloc = tblk__opts_take(opts, "preallocation");
	o->prealloc = qcow2_prealloc_mode(prealloc, NULL);
	if (o->prealloc < 0)
		return tblk_error_set(errp, EINVAL, "invalid parameter value: %s", prealloc);
	backing = tblk__opts_take(opts, "backing_file");
	o->has_backing = backing != NULL;
	enc = tblk__opts_take(opts, "encrypt.format");
	if (enc && !strcmp(enc, "luks"))
		return tblk_error_set(errp, EINVAL, "Parameter 'encrypt.key-secret' is required "
				      "for cipher");
	return 0;
}

/* Bytes of data clusters @src holds (through its chain), rounded out to whole clusters. */
static int source_data(struct tblk_blk *src, uint64_t len, uint64_t cs, uint64_t *required)
{
	uint64_t off = 0, pnum = 0;

	for (; off < len; off += pnum) {
		int ret = tblk_blk_block_status_depth(src, off, len - off, &pnum, NULL, NULL);

		if (ret < 0)
			return ret;
		if (pnum == 0)
			return -EIO;
		if (ret & TBLK_BS_ZERO)
			continue;
		if ((ret & (TBLK_BS_DATA | TBLK_BS_ALLOCATED)) ==
		    (TBLK_BS_DATA | TBLK_BS_ALLOCATED)) {
			pnum = TBLK_ALIGN_UP(off + pnum, cs) - off;
			*required += off % cs + pnum;
		}
	}
	return 0;
}

extern const struct tblk_driver tblk__drv_qcow2;

#define BITMAP_ENTRY_LEN	24u

/*
 * Bytes the persistent bitmaps of a qcow2 source take in a target of @cs clusters, as qemu
 * counts them: each bitmap fully allocated, its table, and the directory (entries with their
 * names, no extra data). Only consistent bitmaps (autoclear bit set) were loaded at open, as
 * qemu loads them (qcow2-bitmap.c).
 */
static uint64_t bitmaps_size(const struct qcow2_state *q, uint64_t vsize, uint64_t cs)
{
	uint64_t total = 0, dir_bytes = 0;

	for (unsigned int i = 0; i < q->nb_bitmaps; i++) {
		unsigned int gran = q->bitmaps[i].granularity_bits;
		uint64_t bits = (vsize + (1ull << gran) - 1) >> gran;
		uint64_t clusters = ((bits + 7) / 8 + cs - 1) / cs;

		total += clusters * cs + TBLK_ALIGN_UP(clusters * 8, cs);
		dir_bytes += TBLK_ALIGN_UP(BITMAP_ENTRY_LEN + (uint64_t)q->bitmaps[i].name_size, 8);
	}
	return total + TBLK_ALIGN_UP(dir_bytes, cs);
}

int tblk__qcow2_measure(GHashTable *opts, uint64_t size, struct tblk_blk *src,
			struct tblk_node *src_node, struct tblk_measure *m, GError **errp)
{
	struct measure_opts o = { 0 };
	uint64_t vsize, l2_tables, required = 0, l2e;
	int ret = parse(opts, &o, errp);

	if (ret < 0)
		return ret;
	l2e = o.ext_l2 ? 16 : 8;
	vsize = TBLK_ALIGN_UP(size, o.cluster_size);
	l2_tables = (vsize / o.cluster_size + o.cluster_size / l2e - 1) / (o.cluster_size / l2e);
	if (l2_tables * 8 > QCOW2_MAX_L1_BYTES)
		return tblk_error_set(errp, EFBIG, "The image size is too large (try using a larger "
				      "cluster size)");
	if (src) {
		int64_t len = tblk_blk_getlength(src);
		struct tblk_format_info fi = { 0 };

		if (len < 0)
			return tblk_error_set_errno(errp, (int)-len, "Unable to get image "
						    "virtual_size");
		vsize = TBLK_ALIGN_UP((uint64_t)len, o.cluster_size);
		if (o.has_backing) {
			required = vsize;
		} else {
			ret = source_data(src, (uint64_t)len, o.cluster_size, &required);
			if (ret < 0)
				return tblk_error_set_errno(errp, -ret, "Unable to get block "
							    "status");
		}
		/* Bitmaps are shown when both ends keep them: qcow2 v3. */
		m->has_bitmaps = o.version >= 3 && tblk_blk_get_format_info(src, &fi) >= 0 &&
				 fi.is_qcow2 && !strcmp(fi.compat, "1.1");
		if (m->has_bitmaps && src_node->drv == &tblk__drv_qcow2)
			m->bitmaps = bitmaps_size(src_node->opaque, (uint64_t)len, o.cluster_size);
	}
	if (o.prealloc == QCOW2_PREALLOC_FALLOC || o.prealloc == QCOW2_PREALLOC_FULL)
		required = vsize;
	m->fully_allocated = qcow2_prealloc_size(vsize, o.cluster_size,
						 (unsigned int)__builtin_ctzll(o.refcount_bits),
						 o.ext_l2);
	m->required = m->fully_allocated - vsize + required;
	return 0;
}
