/* SPDX-License-Identifier: MIT */
/*
 * qcow2-header.c - the qcow2 header and its extensions: parsing with every field checked
 * (the image is untrusted input), and building the header cluster we write, with the
 * extensions in the order qemu writes them and unknown ones preserved.
 *
 * Threading: parse runs at open (one thread); build/write run under the image lock.
 */
#include <string.h>

#include "formats/qcow2-int.h"

static void put32(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

static void put64(uint8_t *p, uint64_t v)
{
	put32(p, v >> 32);
	put32(p + 4, (uint32_t)v);
}

void qcow2_set_geometry(struct qcow2_state *s)
{
	s->cluster_size = 1u << s->cluster_bits;
	s->l2_entry_size = s->ext_l2 ? 16 : 8;
	s->l2_size = s->cluster_size / s->l2_entry_size;
	s->l2_bits = (unsigned int)__builtin_ctz(s->l2_size);
	s->subcluster_size = s->ext_l2 ? s->cluster_size / 32 : s->cluster_size;
	s->rc_block_bits = s->cluster_bits + 3 - s->refcount_order;
	s->refcount_max = s->refcount_order == 6 ? UINT64_MAX :
			  (1ull << (1u << s->refcount_order)) - 1;
	s->csize_shift = 62 - (s->cluster_bits - 8);
	s->csize_mask = (1ull << (s->cluster_bits - 8)) - 1;
	s->coffset_mask = (1ull << s->csize_shift) - 1;
}

void qcow2_state_free_header(struct qcow2_state *s)
{
	g_free(s->backing_file);
	g_free(s->backing_fmt);
	g_free(s->data_file_name);
	while (s->unknown_exts) {
		struct qcow2_ext *e = s->unknown_exts;

		s->unknown_exts = e->next;
		g_free(e->data);
		g_free(e);
	}
	s->backing_file = s->backing_fmt = s->data_file_name = NULL;
}

/* Lists the names of unknown incompatible features, from the image's feature table. */
static void unsupported_features(const uint8_t *table, size_t len, uint64_t mask, GString *out)
{
	for (int bit = 0; bit < 64; bit++) {
		bool named = false;

		if (!(mask & (1ull << bit)))
			continue;
		for (size_t i = 0; table && i + 48 <= len; i += 48) {
			if (table[i] == 0 && table[i + 1] == bit) {
				g_string_append_printf(out, "%s%.46s", out->len ? ", " : "",
						       (const char *)table + i + 2);
				named = true;
				break;
			}
		}
		if (!named)
			g_string_append_printf(out, "%sUnknown incompatible feature: %llx",
					       out->len ? ", " : "", 1ull << bit);
	}
}

static int parse_extensions(struct qcow2_state *s, const uint8_t *buf, size_t len,
			    size_t start, size_t end, GError **errp)
{
	struct qcow2_ext **tail = &s->unknown_exts;
	const uint8_t *features = NULL;
	size_t features_len = 0;

	for (size_t off = start; off + 8 <= end;) {
		uint32_t type = qcow2_get_be32(buf + off), elen = qcow2_get_be32(buf + off + 4);
		const uint8_t *data = buf + off + 8;

		if (type == QCOW2_EXT_END)
			break;
		if (elen > end - off - 8)
			return tblk_error_set(errp, EINVAL, "Invalid extension length");
		switch (type) {
		case QCOW2_EXT_BACKING_FMT:
			if (elen > 1023)
				return tblk_error_set(errp, EINVAL, "ERROR: ext_backing_format: len=%u "
						      "too large (>=%u)", elen, 1023u);
			s->backing_fmt = g_strndup((const char *)data, elen);
			break;
		case QCOW2_EXT_FEATURES:
			features = data;
			features_len = elen;
			break;
		case QCOW2_EXT_DATA_FILE:
			s->data_file_name = g_strndup((const char *)data, elen);
			break;
		case QCOW2_EXT_CRYPTO:
			return tblk_error_set(errp, ENOTSUP, "Encrypted images are not supported");
		case QCOW2_EXT_BITMAPS:
			s->has_bitmaps_ext = true;
			__attribute__((fallthrough));	/* kept byte for byte */
		default: {
			struct qcow2_ext *e = g_new0(struct qcow2_ext, 1);

			e->type = type;
			e->len = elen;
			e->data = g_memdup2(data, elen);
			*tail = e;
			tail = &e->next;
			break;
		}
		}
		off += 8 + TBLK_ALIGN_UP((size_t)elen, 8);
	}
	if (s->incompat & ~QCOW2_INCOMPAT_KNOWN) {
		g_autoptr(GString) names = g_string_new(NULL);

		unsupported_features(features, features_len, s->incompat & ~QCOW2_INCOMPAT_KNOWN,
				     names);
		return tblk_error_set(errp, ENOTSUP, "Unsupported qcow2 feature(s): %s",
				      names->str);
	}
	(void)len;
	return 0;
}

/* The checks a header must pass before anything else of the image is read. */
static int check_layout(struct qcow2_state *s, const uint8_t *buf, uint64_t file_size,
			GError **errp)
{
	uint64_t l1_needed;

	if (s->size > (1ull << 62) || s->size / s->cluster_size / s->l2_size >= (1u << 28))
		return tblk_error_set(errp, EFBIG, "Image is too big");
	l1_needed = (s->size + qcow2_l1_span(s) - 1) / qcow2_l1_span(s);
	if ((uint64_t)s->l1_size * 8 > QCOW2_MAX_L1_BYTES)
		return tblk_error_set(errp, EFBIG, "Active L1 table too large");
	if (s->l1_size < l1_needed)
		return tblk_error_set(errp, EINVAL, "L1 table is too small");
	if (s->l1_size && (s->l1_offset & (s->cluster_size - 1)))
		return tblk_error_set(errp, EINVAL, "Invalid L1 table offset");
	if ((uint64_t)s->reftable_clusters << s->cluster_bits > QCOW2_MAX_REFTABLE_BYTES)
		return tblk_error_set(errp, EINVAL, "Reference count table too large");
	if (s->reftable_clusters == 0 || (s->reftable_offset & (s->cluster_size - 1)) ||
	    s->reftable_offset == 0)
		return tblk_error_set(errp, EINVAL, "Invalid reference count table offset");
	if (s->l1_size && s->l1_offset > file_size)
		return tblk_error_set(errp, EINVAL, "L1 table lies beyond the end of the file");
	if (s->reftable_offset > file_size)
		return tblk_error_set(errp, EINVAL, "Reference count table lies beyond the end of "
				      "the file");
	if (s->nb_snapshots > QCOW2_MAX_SNAPSHOTS)
		return tblk_error_set(errp, EINVAL, "Too many snapshots");
	if (s->nb_snapshots && (s->snapshots_offset & (s->cluster_size - 1)))
		return tblk_error_set(errp, EINVAL, "Invalid snapshot table offset");
	(void)buf;
	return 0;
}

int qcow2_header_parse(struct qcow2_state *s, const uint8_t *buf, size_t len,
		       uint64_t file_size, GError **errp)
{
	uint64_t backing_off;
	uint32_t backing_len, cluster_bits, crypt;

	if (len < QCOW2_V2_HEADER_LEN || qcow2_get_be32(buf) != QCOW2_MAGIC)
		return tblk_error_set(errp, EINVAL, "Image is not in qcow2 format");
	s->version = (int)qcow2_get_be32(buf + 4);
	if (s->version < 2 || s->version > 3)
		return tblk_error_set(errp, ENOTSUP, "Unsupported qcow2 version %d", s->version);
	cluster_bits = qcow2_get_be32(buf + 20);
	if (cluster_bits < QCOW2_MIN_CLUSTER_BITS || cluster_bits > QCOW2_MAX_CLUSTER_BITS)
		return tblk_error_set(errp, EINVAL, "Unsupported cluster size: 2^%u", cluster_bits);
	s->cluster_bits = cluster_bits;
	backing_off = qcow2_get_be64(buf + 8);
	backing_len = qcow2_get_be32(buf + 16);
	s->size = qcow2_get_be64(buf + 24);
	crypt = qcow2_get_be32(buf + 32);
	s->l1_size = qcow2_get_be32(buf + 36);
	s->l1_offset = qcow2_get_be64(buf + 40);
	s->reftable_offset = qcow2_get_be64(buf + 48);
	s->reftable_clusters = qcow2_get_be32(buf + 56);
	s->nb_snapshots = qcow2_get_be32(buf + 60);
	s->snapshots_offset = qcow2_get_be64(buf + 64);
	s->refcount_order = 4;
	s->header_length = QCOW2_V2_HEADER_LEN;
	if (s->version == 3) {
		if (len < QCOW2_V3_HEADER_LEN)
			return tblk_error_set(errp, EINVAL, "qcow2 header too short");
		s->incompat = qcow2_get_be64(buf + 72);
		s->compat = qcow2_get_be64(buf + 80);
		s->autoclear = qcow2_get_be64(buf + 88);
		s->refcount_order = qcow2_get_be32(buf + 96);
		s->header_length = qcow2_get_be32(buf + 100);
		if (s->header_length < QCOW2_V3_HEADER_LEN)
			return tblk_error_set(errp, EINVAL, "qcow2 header too short");
		if (s->header_length > (1u << cluster_bits) || s->header_length > len)
			return tblk_error_set(errp, EINVAL, "qcow2 header exceeds cluster size");
		if (s->header_length > QCOW2_V3_HEADER_LEN)
			s->compression_type = buf[104];
	}
	if (s->refcount_order > 6)
		return tblk_error_set(errp, EINVAL, "Reference count entry width too large; may "
				      "not exceed 64 bits");
	if (crypt)
		return tblk_error_set(errp, ENOTSUP, "Encrypted images are not supported");
	if (s->incompat & QCOW2_INCOMPAT_COMPRESSION) {
		if (s->compression_type > 1)
			return tblk_error_set(errp, EINVAL, "Unknown compression type '%u'",
					      s->compression_type);
	} else if (s->compression_type) {
		return tblk_error_set(errp, EINVAL, "compression_type field is %u but the "
				      "compression type bit is not set", s->compression_type);
	}
	s->ext_l2 = s->incompat & QCOW2_INCOMPAT_EXTL2;
	if (s->ext_l2 && cluster_bits < 14)
		return tblk_error_set(errp, EINVAL, "The cluster size must be at least 16 KiB "
				      "with extended L2 entries");
	qcow2_set_geometry(s);
	if (backing_off) {
		if (backing_len > QCOW2_MAX_BACKING_NAME || backing_off >= s->cluster_size ||
		    backing_len > s->cluster_size - backing_off || backing_off + backing_len > len)
			return tblk_error_set(errp, EINVAL, "Backing file name too long");
		s->backing_file = g_strndup((const char *)buf + backing_off, backing_len);
	}
	if (parse_extensions(s, buf, len, s->header_length,
			     backing_off ? TBLK_MIN(backing_off, len) : TBLK_MIN(len, s->cluster_size),
			     errp) < 0)
		return -EINVAL;
	if ((s->incompat & QCOW2_INCOMPAT_DATA_FILE) && !s->data_file_name)
		return tblk_error_set(errp, ENOTSUP, "External data files without a name in the "
				      "header are not supported");
	return check_layout(s, buf, file_size, errp);
}

static const struct {
	uint8_t type, bit;
	const char *name;
} feature_names[] = {
	{ 0, 0, "dirty bit" },
	{ 0, 1, "corrupt bit" },
	{ 0, 2, "external data file" },
	{ 0, 3, "compression type" },
	{ 0, 4, "extended L2 entries" },
	{ 1, 0, "lazy refcounts" },
	{ 2, 0, "bitmaps" },
	{ 2, 1, "raw external data" },
};

/* Appends one extension at *pos, padded to 8 bytes; -ENOSPC if it does not fit before @end. */
static int put_ext(uint8_t *buf, size_t *pos, size_t end, uint32_t type, const void *data,
		   uint32_t len)
{
	size_t need = 8 + TBLK_ALIGN_UP((size_t)len, 8);

	if (need > end - *pos)
		return -ENOSPC;
	put32(buf + *pos, type);
	put32(buf + *pos + 4, len);
	if (len)	/* an empty unknown extension has data == NULL */
		memcpy(buf + *pos + 8, data, len);
	*pos += need;
	return 0;
}

int qcow2_header_build(const struct qcow2_state *s, uint8_t *buf)
{
	size_t end = s->cluster_size, pos;
	size_t blen = s->backing_file ? strlen(s->backing_file) : 0;
	int ret = 0;

	memset(buf, 0, s->cluster_size);
	put32(buf, QCOW2_MAGIC);
	put32(buf + 4, (uint32_t)s->version);
	put32(buf + 20, s->cluster_bits);
	put64(buf + 24, s->size);
	put32(buf + 36, s->l1_size);
	put64(buf + 40, s->l1_offset);
	put64(buf + 48, s->reftable_offset);
	put32(buf + 56, s->reftable_clusters);
	put32(buf + 60, s->nb_snapshots);
	put64(buf + 64, s->snapshots_offset);
	pos = QCOW2_V2_HEADER_LEN;
	if (s->version >= 3) {
		uint32_t hlen = TBLK_MAX(s->header_length, (uint32_t)QCOW2_HEADER_LEN);

		put64(buf + 72, s->incompat);
		put64(buf + 80, s->compat);
		put64(buf + 88, s->autoclear);
		put32(buf + 96, s->refcount_order);
		put32(buf + 100, hlen);
		buf[104] = s->compression_type;
		pos = hlen;
	}
	if (blen > QCOW2_MAX_BACKING_NAME || blen >= end)
		return -ENOSPC;
	end -= blen;
	/* An image's own header_length may leave no room before its backing file name. */
	if (pos > end)
		return -ENOSPC;
	if (s->backing_fmt)
		ret = put_ext(buf, &pos, end, QCOW2_EXT_BACKING_FMT, s->backing_fmt,
			      (uint32_t)strlen(s->backing_fmt));
	if (!ret && s->data_file_name)
		ret = put_ext(buf, &pos, end, QCOW2_EXT_DATA_FILE, s->data_file_name,
			      (uint32_t)strlen(s->data_file_name));
	/* qemu 7.2 writes the feature name table only with clusters above 4 KiB. */
	if (!ret && s->version >= 3 && s->cluster_size > 4096) {
		uint8_t table[TBLK_ARRAY_SIZE(feature_names) * 48] = { 0 };

		for (size_t i = 0; i < TBLK_ARRAY_SIZE(feature_names); i++) {
			table[i * 48] = feature_names[i].type;
			table[i * 48 + 1] = feature_names[i].bit;
			memcpy(table + i * 48 + 2, feature_names[i].name,
			       strlen(feature_names[i].name));
		}
		ret = put_ext(buf, &pos, end, QCOW2_EXT_FEATURES, table, sizeof(table));
	}
	for (const struct qcow2_ext *e = s->unknown_exts; !ret && e; e = e->next)
		ret = put_ext(buf, &pos, end, e->type, e->data, e->len);
	if (ret)
		return ret;
	if (end - pos < 8)
		return -ENOSPC;
	pos += 8;	/* end marker: type 0, length 0 */
	if (blen) {
		memcpy(buf + pos, s->backing_file, blen);
		put64(buf + 8, pos);
		put32(buf + 16, (uint32_t)blen);
	}
	return 0;
}

int qcow2_header_write(struct qcow2_state *s)
{
	g_autofree uint8_t *buf = g_malloc(s->cluster_size);
	int ret = qcow2_header_build(s, buf);

	if (ret < 0)
		return ret;
	s->meta_dirty = true;
	return qcow2_meta_pwrite(s, QCOW2_OL_UNCHECKED, 0, buf, s->cluster_size);
}
