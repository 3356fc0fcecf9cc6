/* SPDX-License-Identifier: MIT */
/*
 * qcow2-create.c - creating qcow2 images with qemu-img 7.2's layout: the header in cluster 0,
 * the refcount table in cluster 1, its first refcount block in cluster 2, then the image is
 * opened and grown to its size (the L1 table lands in the first free clusters), so that the
 * file is byte for byte what qemu-img create writes.
 *
 * Threading: control path, one thread.
 */
#include <string.h>

#include "formats/qcow2-int.h"

struct create_opts {
	uint64_t size;
	uint64_t cluster_size;
	uint64_t refcount_bits;
	int version;
	bool lazy_refcounts;
	bool ext_l2;
	bool data_file_raw;
	uint8_t compression_type;
	char *backing_file;
	char *backing_fmt;
	char *data_file;
	char *prealloc;
};

static void create_opts_clear(struct create_opts *o)
{
	g_free(o->backing_file);
	g_free(o->backing_fmt);
	g_free(o->data_file);
	g_free(o->prealloc);
}

static int take_bool_opt(GHashTable *opts, const char *key, bool *out, GError **errp)
{
	g_autofree char *v = tblk__opts_take(opts, key);

	if (!v)
		return 0;
	if (!strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "true"))
		*out = true;
	else if (!strcmp(v, "off") || !strcmp(v, "no") || !strcmp(v, "false"))
		*out = false;
	else
		return tblk_error_set(errp, EINVAL, "Parameter '%s' expects 'on' or 'off'", key);
	return 0;
}

/*
 * The encryption options, refused in qemu's order and words: tblk creates no encrypted
 * image, but qemu's messages about an incomplete set come first.
 */
static int check_encryption(GHashTable *opts, const char *enc, const char *encfmt,
			    GError **errp)
{
	g_autoptr(GHashTable) eopts = tblk__opts_extract_prefix(opts, "encrypt");
	const char *fmt = encfmt;
	bool on = enc && strcmp(enc, "off");

	if (on && encfmt)
		return tblk_error_set(errp, EINVAL, "'encrypt.format' and its alias 'encryption' "
				      "can't be used at the same time");
	if (on)
		fmt = "aes";
	if (fmt && strcmp(fmt, "aes") && strcmp(fmt, "luks"))
		return tblk_error_set(errp, EINVAL, "Parameter 'format' does not accept value "
				      "'%s'", fmt);
	if (!fmt && g_hash_table_size(eopts))
		return tblk_error_set(errp, EINVAL, "Parameter 'encrypt.format' is missing");
	if (!fmt)
		return 0;
	if (!g_hash_table_contains(eopts, "key-secret"))
		return tblk_error_set(errp, EINVAL, "Parameter 'encrypt.key-secret' is required "
				      "for cipher");
	return tblk_error_set(errp, ENOTSUP, "Encrypted images are not supported");
}

static int parse_opts(GHashTable *opts, struct create_opts *o, GError **errp)
{
	g_autofree char *compat = tblk__opts_take(opts, "compat");
	g_autofree char *ctype = tblk__opts_take(opts, "compression_type");
	g_autofree char *enc = tblk__opts_take(opts, "encryption");
	g_autofree char *encfmt = tblk__opts_take(opts, "encrypt.format");
	int ret;

	o->cluster_size = 65536;
	o->refcount_bits = 16;
	o->version = 3;
	if (tblk__opts_take_size(opts, "cluster_size", &o->cluster_size, errp) < 0 ||
	    tblk__opts_take_uint64(opts, "refcount_bits", &o->refcount_bits, errp) < 0 ||
	    take_bool_opt(opts, "lazy_refcounts", &o->lazy_refcounts, errp) < 0 ||
	    take_bool_opt(opts, "extended_l2", &o->ext_l2, errp) < 0 ||
	    take_bool_opt(opts, "data_file_raw", &o->data_file_raw, errp) < 0)
		return -EINVAL;
	o->backing_file = tblk__opts_take(opts, "backing_file");
	o->backing_fmt = tblk__opts_take(opts, "backing_fmt");
	o->data_file = tblk__opts_take(opts, "data_file");
	o->prealloc = tblk__opts_take(opts, "preallocation");
	ret = check_encryption(opts, enc, encfmt, errp);
	if (ret < 0)
		return ret;
	if (!compat || !strcmp(compat, "1.1") || !strcmp(compat, "v3"))
		o->version = 3;
	else if (!strcmp(compat, "0.10") || !strcmp(compat, "v2"))
		o->version = 2;
	else
		return tblk_error_set(errp, EINVAL, "Parameter 'version' does not accept value "
				      "'%s'", compat);
	if (!ctype || !strcmp(ctype, "zlib"))
		o->compression_type = 0;
	else if (!strcmp(ctype, "zstd"))
		o->compression_type = 1;
	else
		return tblk_error_set(errp, EINVAL, "Parameter 'compression-type' does not accept "
				      "value '%s'", ctype);
	if (o->prealloc && strcmp(o->prealloc, "off") && strcmp(o->prealloc, "metadata") &&
	    strcmp(o->prealloc, "falloc") && strcmp(o->prealloc, "full"))
		return tblk_error_set(errp, EINVAL, "Parameter 'preallocation' does not accept "
				      "value '%s'", o->prealloc);
	return 0;
}

static int check_opts(struct create_opts *o, GError **errp)
{
	uint64_t cs = o->cluster_size, rb = o->refcount_bits;

	if (cs < 512 || cs > (2u << 20) || (cs & (cs - 1)))
		return tblk_error_set(errp, EINVAL, "Cluster size must be a power of two between "
				      "512 and 2048k");
	if (rb == 0 || rb > 64 || (rb & (rb - 1)))
		return tblk_error_set(errp, EINVAL, "Refcount width must be a power of two and may "
				      "not exceed 64 bits");
	if (o->version < 3) {
		if (rb != 16)
			return tblk_error_set(errp, EINVAL, "Different refcount widths than 16 bits "
					      "require compatibility level 1.1 or above (use "
					      "version=v3 or greater)");
		if (o->lazy_refcounts)
			return tblk_error_set(errp, EINVAL, "Lazy refcounts only supported with "
					      "compatibility level 1.1 and above (use version=v3 or "
					      "greater)");
		if (o->ext_l2)
			return tblk_error_set(errp, EINVAL, "Extended L2 entries are only supported "
					      "with compatibility level 1.1 and above (use "
					      "version=v3 or greater)");
		if (o->data_file)
			return tblk_error_set(errp, EINVAL, "data-file is only supported with "
					      "compatibility level 1.1 and above (use version=v3 or "
					      "greater)");
		if (o->compression_type)
			return tblk_error_set(errp, EINVAL, "Non-zlib compression type is only "
					      "supported with compatibility level 1.1 and above (use "
					      "version=v3 or greater)");
	}
	if (o->ext_l2 && cs < 16384)
		return tblk_error_set(errp, EINVAL, "Extended L2 entries are only supported with "
				      "cluster sizes of at least 16384 bytes");
	if (o->data_file_raw && !o->data_file)
		return tblk_error_set(errp, EINVAL, "data-file-raw requires data-file");
	/* qemu's order: preallocation over a backing file needs subclusters, then raw data. */
	if (o->backing_file && o->prealloc && strcmp(o->prealloc, "off") && !o->ext_l2)
		return tblk_error_set(errp, EINVAL, "Backing file and preallocation can only be "
				      "used at the same time if extended_l2 is on");
	if (o->backing_file && o->data_file_raw)
		return tblk_error_set(errp, EINVAL, "Backing file and data-file-raw cannot be "
				      "used at the same time");
	if (o->backing_fmt && !o->backing_file)
		return tblk_error_set(errp, EINVAL, "Backing format cannot be used without "
				      "backing file");
	return 0;
}

/* Header, refcount table and first refcount block: clusters 0, 1 and 2. */
static int write_initial(struct tblk_node *file, const struct create_opts *o, GError **errp)
{
	struct qcow2_state s = { 0 };
	uint32_t cs = (uint32_t)o->cluster_size;
	g_autofree uint8_t *buf = g_malloc0(3ull * cs);
	int ret;

	s.version = o->version;
	s.cluster_bits = (unsigned int)__builtin_ctz(cs);
	s.refcount_order = (unsigned int)__builtin_ctzll(o->refcount_bits);
	s.ext_l2 = o->ext_l2;
	qcow2_set_geometry(&s);
	s.reftable_offset = cs;
	s.reftable_clusters = 1;
	s.header_length = o->version >= 3 ? QCOW2_HEADER_LEN : QCOW2_V2_HEADER_LEN;
	s.compression_type = o->compression_type;
	s.incompat = (o->compression_type ? QCOW2_INCOMPAT_COMPRESSION : 0) |
		     (o->ext_l2 ? QCOW2_INCOMPAT_EXTL2 : 0) |
		     (o->data_file ? QCOW2_INCOMPAT_DATA_FILE : 0);
	s.compat = o->lazy_refcounts ? QCOW2_COMPAT_LAZY_REFCOUNTS : 0;
	s.autoclear = o->data_file_raw ? QCOW2_AUTOCLEAR_DATA_FILE_RAW : 0;
	s.data_file_name = o->data_file;
	ret = qcow2_header_build(&s, buf);
	s.data_file_name = NULL;
	if (ret < 0)
		return tblk_error_set(errp, EINVAL, "Header does not fit in one cluster");
	/* Refcount table entry 0 -> cluster 2; clusters 0-2 have refcount 1. */
	*(uint64_t *)(buf + cs) = htobe64(2ull * cs);
	for (unsigned int i = 0; i < 3; i++) {
		uint64_t bit = (uint64_t)i * o->refcount_bits;
		uint8_t *blk = buf + 2ull * cs;

		/* Refcount 1 in big-endian fields of refcount_bits bits (lsb-first below 8). */
		if (o->refcount_bits >= 8)
			blk[(bit + o->refcount_bits) / 8 - 1] = 1;
		else
			blk[bit / 8] |= (uint8_t)(1u << (bit % 8));
	}
	ret = tblk_node_pwrite(file, 0, buf, 3ull * cs, 0);
	if (ret < 0)
		return tblk_error_set_errno(errp, -ret, "Could not write qcow2 header");
	return 0;
}

static int create_data_file(const struct create_opts *o, uint64_t size, GError **errp)
{
	const struct tblk_driver *proto = tblk__driver_find("file");
	g_autoptr(GHashTable) popts = tblk_opts_new();

	if (o->prealloc)
		g_hash_table_insert(popts, g_strdup("preallocation"), g_strdup(o->prealloc));
	return proto->create(o->data_file, o->data_file_raw ? size : 0, popts, errp);
}

/* Opened image: sets the backing file and grows it to its size. */
static int finish(struct tblk_node *node, const struct create_opts *o, GError **errp)
{
	struct qcow2_state *s = node->opaque;
	int ret;

	qcow2_lock(s);
	if (o->backing_file) {
		s->backing_file = g_strdup(o->backing_file);
		s->backing_fmt = g_strdup(o->backing_fmt);
		ret = qcow2_header_write(s);
		if (ret < 0)
			goto out;
	}
	/* As qemu: the new image is resized to its size, preallocating as asked. */
	ret = qcow2_truncate_locked(s, o->size, qcow2_prealloc_mode(o->prealloc, NULL), errp);
	if (ret < 0) {
		tblk_error_prepend(errp, "Could not resize image: ");
		qcow2_unlock(s);
		return ret;
	}
	ret = qcow2_flush_metadata(s);
out:
	qcow2_unlock(s);
	if (ret < 0)
		return tblk_error_set_errno(errp, -ret, "Could not resize image");
	return 0;
}

int qcow2_create(const char *filename, uint64_t size, GHashTable *opts, GError **errp)
{
	const struct tblk_driver *proto = tblk__protocol_for(filename);
	g_autoptr(GHashTable) popts = tblk_opts_new();
	g_autoptr(GHashTable) iopts = tblk_opts_new();
	struct create_opts o = { 0 };
	struct tblk_node *file, *node;
	int ret;

	ret = parse_opts(opts, &o, errp);
	if (ret >= 0)
		ret = check_opts(&o, errp);
	if (ret < 0)
		goto out;
	o.size = size > UINT64_MAX - 511 ? size : TBLK_ALIGN_UP(size, 512);
	if (!proto->create) {
		ret = tblk_error_set(errp, ENOTSUP, "Protocol driver '%s' does not support image "
				     "creation", proto->name);
		goto out;
	}
	ret = proto->create(filename, 0, popts, errp);
	if (ret < 0)
		goto out;
	if (o.data_file) {
		ret = create_data_file(&o, o.size, errp);
		if (ret < 0)
			goto out;
	}
	g_hash_table_insert(popts, g_strdup("driver"), g_strdup(proto->name));
	ret = tblk__node_open(&file, filename, popts, TBLK_OPEN_RDWR | TBLK_OPEN_PROTOCOL, errp);
	if (ret < 0)
		goto out;
	ret = write_initial(file, &o, errp);
	tblk__node_close(file);
	if (ret < 0)
		goto out;
	g_hash_table_insert(iopts, g_strdup("driver"), g_strdup("qcow2"));
	/* The backing file need not exist yet: open without it. */
	g_hash_table_insert(iopts, g_strdup("backing"), g_strdup(TBLK__OPTS_NULL));
	ret = tblk__node_open(&node, filename, iopts, TBLK_OPEN_RDWR, errp);
	if (ret < 0)
		goto out;
	ret = finish(node, &o, errp);
	tblk__node_close(node);
out:
	create_opts_clear(&o);
	return ret;
}
