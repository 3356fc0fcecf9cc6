/* SPDX-License-Identifier: MIT */
/*
 * export-nbd-proto.c - the NBD server's protocol engine without sockets: the fixed newstyle
 * handshake (options EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY, LIST_META_CONTEXT,
 * SET_META_CONTEXT; anything else is NBD_REP_ERR_UNSUP), the checks of a transmission request
 * header, and reply builders. Everything a peer sends is length-checked before use; nothing
 * here allocates more than TBLK_NBD_MAX_OPTION_LEN for a peer's data.
 *
 * Threading: none; see export-nbd-int.h. This file depends only on glib and nbd-wire.h, so
 * the fuzz target can include it.
 */
#include <errno.h>
#include <stdarg.h>
#include <string.h>

#include "tools/export-nbd-int.h"

/* Options per connection before we give up on a client that never starts transmission. */
#define NBDS_MAX_OPTIONS	4096

void nbds_hs_init(struct nbds_handshake *hs, const struct nbds_export_table *table,
		  GByteArray *out)
{
	memset(hs, 0, sizeof(*hs));
	hs->table = table;
	hs->out = out;
	hs->state = NBDS_HS_CLIENT_FLAGS;
	nbds_put_be64(out, TBLK_NBD_MAGIC);
	nbds_put_be64(out, TBLK_NBD_OPTS_MAGIC);
	nbds_put_be16(out, TBLK_NBD_FLAG_FIXED_NEWSTYLE | TBLK_NBD_FLAG_NO_ZEROES);
}

void nbds_hs_destroy(struct nbds_handshake *hs)
{
	g_free(hs->optbuf);
	g_free(hs->meta_export);
	hs->optbuf = NULL;
	hs->meta_export = NULL;
}

static void put_rep(struct nbds_handshake *hs, uint32_t type, uint32_t len)
{
	nbds_put_be64(hs->out, TBLK_NBD_REP_MAGIC);
	nbds_put_be32(hs->out, hs->opt);
	nbds_put_be32(hs->out, type);
	nbds_put_be32(hs->out, len);
}

static void rep_ack(struct nbds_handshake *hs)
{
	put_rep(hs, TBLK_NBD_REP_ACK, 0);
}

/* An error reply with a human-readable message, as the protocol allows. */
static void rep_err(struct nbds_handshake *hs, uint32_t type, const char *fmt, ...)
	TBLK_PRINTF(3, 4);

static void rep_err(struct nbds_handshake *hs, uint32_t type, const char *fmt, ...)
{
	va_list ap;
	char *msg;
	size_t len;

	va_start(ap, fmt);
	msg = g_strdup_vprintf(fmt, ap);
	va_end(ap);
	len = strlen(msg);
	put_rep(hs, type, (uint32_t)len);
	g_byte_array_append(hs->out, (const uint8_t *)msg, (guint)len);
	g_free(msg);
	/* A client that did not ask for fixed newstyle cannot understand errors. */
	if (!hs->fixed)
		hs->state = NBDS_HS_CLOSE;
}

/* Copies a length-checked string out of an option (NUL-terminated); NULL if it has a NUL. */
static char *opt_string(const uint8_t *p, uint32_t len)
{
	if (memchr(p, 0, len))
		return NULL;
	return g_strndup((const char *)p, len);
}

static void put_export_info(struct nbds_handshake *hs, const struct nbds_proto_export *e)
{
	put_rep(hs, TBLK_NBD_REP_INFO, 12);
	nbds_put_be16(hs->out, TBLK_NBD_INFO_EXPORT);
	nbds_put_be64(hs->out, e->size);
	nbds_put_be16(hs->out, e->tflags);
}

static void opt_export_name(struct nbds_handshake *hs, const uint8_t *data, uint32_t len)
{
	static const uint8_t zeroes[124];
	const struct nbds_proto_export *e;
	char *name = opt_string(data, len);

	/* This option has no error reply: an unknown export ends the session. */
	e = name ? hs->table->lookup(hs->table->opaque, name) : NULL;
	if (!e) {
		g_free(name);
		hs->state = NBDS_HS_CLOSE;
		return;
	}
	nbds_put_be64(hs->out, e->size);
	nbds_put_be16(hs->out, e->tflags);
	if (!hs->no_zeroes)
		g_byte_array_append(hs->out, zeroes, sizeof(zeroes));
	if (hs->meta_export && strcmp(hs->meta_export, name))
		hs->meta_base = hs->meta_depth = false;
	g_free(name);
	hs->exp = e;
	hs->state = NBDS_HS_DONE;
}

static void opt_list(struct nbds_handshake *hs, uint32_t len)
{
	const struct nbds_proto_export *e;
	unsigned int i;

	if (len) {
		rep_err(hs, TBLK_NBD_REP_ERR_INVALID, "NBD_OPT_LIST must not carry data");
		return;
	}
	for (i = 0; (e = hs->table->nth(hs->table->opaque, i)); i++) {
		size_t nlen = strlen(e->name);
		size_t dlen = e->description ? strlen(e->description) : 0;

		put_rep(hs, TBLK_NBD_REP_SERVER, (uint32_t)(4 + nlen + dlen));
		nbds_put_be32(hs->out, (uint32_t)nlen);
		g_byte_array_append(hs->out, (const uint8_t *)e->name, (guint)nlen);
		if (dlen)
			g_byte_array_append(hs->out, (const uint8_t *)e->description, (guint)dlen);
	}
	rep_ack(hs);
}

static void opt_info_go(struct nbds_handshake *hs, const uint8_t *data, uint32_t len)
{
	bool want_name = false, want_desc = false;
	const struct nbds_proto_export *e;
	uint32_t namelen, i;
	uint16_t nreq;
	char *name;

	if (len < 6 || (namelen = nbds_be32(data)) > len - 6) {
		rep_err(hs, TBLK_NBD_REP_ERR_INVALID, "option length is inconsistent");
		return;
	}
	nreq = nbds_be16(data + 4 + namelen);
	if (len != 6 + namelen + 2u * nreq) {
		rep_err(hs, TBLK_NBD_REP_ERR_INVALID, "option length is inconsistent");
		return;
	}
	if (namelen > TBLK_NBD_MAX_STRING) {
		rep_err(hs, TBLK_NBD_REP_ERR_INVALID, "export name too long");
		return;
	}
	name = opt_string(data + 4, namelen);
	if (!name) {
		rep_err(hs, TBLK_NBD_REP_ERR_INVALID, "export name contains NUL");
		return;
	}
	for (i = 0; i < nreq; i++) {
		uint16_t type = nbds_be16(data + 6 + namelen + 2 * i);

		want_name |= type == TBLK_NBD_INFO_NAME;
		want_desc |= type == TBLK_NBD_INFO_DESCRIPTION;
		if (type == TBLK_NBD_INFO_BLOCK_SIZE && hs->opt == TBLK_NBD_OPT_GO)
			hs->block_size_requested = true;
	}
	e = hs->table->lookup(hs->table->opaque, name);
	if (!e) {
		rep_err(hs, TBLK_NBD_REP_ERR_UNKNOWN, "export '%s' not present", name);
		g_free(name);
		return;
	}
	if (want_name) {
		size_t nlen = strlen(e->name);

		put_rep(hs, TBLK_NBD_REP_INFO, (uint32_t)(2 + nlen));
		nbds_put_be16(hs->out, TBLK_NBD_INFO_NAME);
		g_byte_array_append(hs->out, (const uint8_t *)e->name, (guint)nlen);
	}
	if (want_desc && e->description) {
		size_t dlen = strlen(e->description);

		put_rep(hs, TBLK_NBD_REP_INFO, (uint32_t)(2 + dlen));
		nbds_put_be16(hs->out, TBLK_NBD_INFO_DESCRIPTION);
		g_byte_array_append(hs->out, (const uint8_t *)e->description, (guint)dlen);
	}
	/* Block sizes go out whether asked or not, as qemu does. */
	put_rep(hs, TBLK_NBD_REP_INFO, 14);
	nbds_put_be16(hs->out, TBLK_NBD_INFO_BLOCK_SIZE);
	nbds_put_be32(hs->out, e->min_block);
	nbds_put_be32(hs->out, e->pref_block);
	nbds_put_be32(hs->out, e->max_block);
	put_export_info(hs, e);
	rep_ack(hs);
	if (hs->opt == TBLK_NBD_OPT_GO) {
		if (hs->meta_export && strcmp(hs->meta_export, name))
			hs->meta_base = hs->meta_depth = false;
		hs->exp = e;
		hs->state = NBDS_HS_DONE;
	}
	g_free(name);
}

static void opt_structured(struct nbds_handshake *hs, uint32_t len)
{
	if (len) {
		rep_err(hs, TBLK_NBD_REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY must not carry data");
		return;
	}
	if (hs->structured) {
		rep_err(hs, TBLK_NBD_REP_ERR_INVALID, "structured reply already negotiated");
		return;
	}
	hs->structured = true;
	rep_ack(hs);
}

/* Which of our contexts a query selects: bit 0 base:allocation, bit 1 allocation-depth. */
static unsigned int match_query(const uint8_t *q, uint32_t qlen, bool list, bool depth_ok)
{
#define QEQ(s) (qlen == sizeof(s) - 1 && !memcmp(q, s, qlen))
	if (QEQ(TBLK_NBD_META_BASE_ALLOCATION) || (list && QEQ("base:")))
		return 1;
	if (depth_ok && (QEQ(TBLK_NBD_META_QEMU_ALLOC_DEPTH) || (list && QEQ("qemu:"))))
		return 2;
	return 0;
#undef QEQ
}

static void put_context(struct nbds_handshake *hs, uint32_t id, const char *name)
{
	size_t len = strlen(name);

	put_rep(hs, TBLK_NBD_REP_META_CONTEXT, (uint32_t)(4 + len));
	nbds_put_be32(hs->out, id);
	g_byte_array_append(hs->out, (const uint8_t *)name, (guint)len);
}

static void opt_meta_context(struct nbds_handshake *hs, const uint8_t *data, uint32_t len)
{
	bool set = hs->opt == TBLK_NBD_OPT_SET_META_CONTEXT;
	const struct nbds_proto_export *e;
	uint32_t namelen, nq, i, pos;
	unsigned int mask = 0;
	char *name;

	if (set && !hs->structured) {
		rep_err(hs, TBLK_NBD_REP_ERR_INVALID,
			"NBD_OPT_SET_META_CONTEXT without structured replies");
		return;
	}
	if (len < 8 || (namelen = nbds_be32(data)) > len - 8) {
		rep_err(hs, TBLK_NBD_REP_ERR_INVALID, "option length is inconsistent");
		return;
	}
	if (namelen > TBLK_NBD_MAX_STRING || !(name = opt_string(data + 4, namelen))) {
		rep_err(hs, TBLK_NBD_REP_ERR_INVALID, "invalid export name");
		return;
	}
	nq = nbds_be32(data + 4 + namelen);
	pos = 8 + namelen;
	/* Check every query's length before acting on any. */
	for (i = 0; i < nq; i++) {
		uint32_t qlen;

		if (len - pos < 4 || (qlen = nbds_be32(data + pos)) > len - pos - 4 ||
		    qlen > TBLK_NBD_MAX_STRING) {
			rep_err(hs, TBLK_NBD_REP_ERR_INVALID, "option length is inconsistent");
			goto out;
		}
		pos += 4 + qlen;
	}
	if (pos != len) {
		rep_err(hs, TBLK_NBD_REP_ERR_INVALID, "option length is inconsistent");
		goto out;
	}
	e = hs->table->lookup(hs->table->opaque, name);
	if (!e) {
		rep_err(hs, TBLK_NBD_REP_ERR_UNKNOWN, "export '%s' not present", name);
		goto out;
	}
	if (!nq && !set)
		mask = 1 | (e->alloc_depth ? 2 : 0);
	for (i = 0, pos = 8 + namelen; i < nq; i++) {
		uint32_t qlen = nbds_be32(data + pos);

		mask |= match_query(data + pos + 4, qlen, !set, e->alloc_depth);
		pos += 4 + qlen;
	}
	if (mask & 1)
		put_context(hs, NBDS_CTX_BASE, TBLK_NBD_META_BASE_ALLOCATION);
	if (mask & 2)
		put_context(hs, NBDS_CTX_DEPTH, TBLK_NBD_META_QEMU_ALLOC_DEPTH);
	if (set) {
		hs->meta_base = mask & 1;
		hs->meta_depth = mask & 2;
		g_free(hs->meta_export);
		hs->meta_export = name;
		name = NULL;
	}
	rep_ack(hs);
out:
	g_free(name);
}

static void handle_option(struct nbds_handshake *hs, const uint8_t *data, uint32_t len)
{
	if (!hs->fixed && hs->opt != TBLK_NBD_OPT_EXPORT_NAME) {
		hs->state = NBDS_HS_CLOSE;
		return;
	}
	switch (hs->opt) {
	case TBLK_NBD_OPT_EXPORT_NAME:
		opt_export_name(hs, data, len);
		break;
	case TBLK_NBD_OPT_ABORT:
		rep_ack(hs);
		hs->state = NBDS_HS_CLOSE;
		break;
	case TBLK_NBD_OPT_LIST:
		opt_list(hs, len);
		break;
	case TBLK_NBD_OPT_INFO:
	case TBLK_NBD_OPT_GO:
		opt_info_go(hs, data, len);
		break;
	case TBLK_NBD_OPT_STRUCTURED_REPLY:
		opt_structured(hs, len);
		break;
	case TBLK_NBD_OPT_LIST_META_CONTEXT:
	case TBLK_NBD_OPT_SET_META_CONTEXT:
		opt_meta_context(hs, data, len);
		break;
	case TBLK_NBD_OPT_STARTTLS:
		rep_err(hs, TBLK_NBD_REP_ERR_UNSUP, "TLS is not supported");
		break;
	default:
		rep_err(hs, TBLK_NBD_REP_ERR_UNSUP, "unsupported option %u", hs->opt);
		break;
	}
}

/* Takes the option header out of hs->hdr and decides how to read its payload. */
static void start_option(struct nbds_handshake *hs)
{
	if (nbds_be64(hs->hdr) != TBLK_NBD_OPTS_MAGIC || ++hs->nr_opts > NBDS_MAX_OPTIONS) {
		hs->state = NBDS_HS_CLOSE;
		return;
	}
	hs->opt = nbds_be32(hs->hdr + 8);
	hs->optlen = nbds_be32(hs->hdr + 12);
	hs->hdr_fill = 0;
	if (hs->optlen > TBLK_NBD_MAX_OPTION_LEN) {
		if (hs->opt == TBLK_NBD_OPT_EXPORT_NAME || !hs->fixed) {
			hs->state = NBDS_HS_CLOSE;
			return;
		}
		hs->skip = hs->optlen;
		hs->state = NBDS_HS_OPT_SKIP;
		return;
	}
	hs->optbuf = g_malloc(hs->optlen ? hs->optlen : 1);
	hs->opt_fill = 0;
	hs->state = NBDS_HS_OPT_DATA;
}

static void finish_option(struct nbds_handshake *hs)
{
	uint8_t *buf = hs->optbuf;

	hs->optbuf = NULL;
	hs->state = NBDS_HS_OPT_HEADER;
	handle_option(hs, buf, hs->optlen);
	g_free(buf);
}

size_t nbds_hs_feed(struct nbds_handshake *hs, const uint8_t *in, size_t len)
{
	size_t pos = 0, n;

	while (pos < len) {
		switch (hs->state) {
		case NBDS_HS_CLIENT_FLAGS:
			n = TBLK_MIN(4 - hs->hdr_fill, len - pos);
			memcpy(hs->hdr + hs->hdr_fill, in + pos, n);
			hs->hdr_fill += n;
			pos += n;
			if (hs->hdr_fill < 4)
				break;
			hs->hdr_fill = 0;
			{
				uint32_t cf = nbds_be32(hs->hdr);

				/* Unknown client flags: the protocol says to close. */
				if (cf & ~(uint32_t)(TBLK_NBD_FLAG_C_FIXED_NEWSTYLE |
						     TBLK_NBD_FLAG_C_NO_ZEROES)) {
					hs->state = NBDS_HS_CLOSE;
					break;
				}
				hs->fixed = cf & TBLK_NBD_FLAG_C_FIXED_NEWSTYLE;
				hs->no_zeroes = cf & TBLK_NBD_FLAG_C_NO_ZEROES;
			}
			hs->state = NBDS_HS_OPT_HEADER;
			break;
		case NBDS_HS_OPT_HEADER:
			n = TBLK_MIN(16 - hs->hdr_fill, len - pos);
			memcpy(hs->hdr + hs->hdr_fill, in + pos, n);
			hs->hdr_fill += n;
			pos += n;
			if (hs->hdr_fill == 16) {
				start_option(hs);
				if (hs->state == NBDS_HS_OPT_DATA && !hs->optlen)
					finish_option(hs);
			}
			break;
		case NBDS_HS_OPT_DATA:
			n = TBLK_MIN(hs->optlen - hs->opt_fill, len - pos);
			memcpy(hs->optbuf + hs->opt_fill, in + pos, n);
			hs->opt_fill += n;
			pos += n;
			if (hs->opt_fill == hs->optlen)
				finish_option(hs);
			break;
		case NBDS_HS_OPT_SKIP:
			n = TBLK_MIN(hs->skip, len - pos);
			hs->skip -= n;
			pos += n;
			if (!hs->skip) {
				hs->state = NBDS_HS_OPT_HEADER;
				rep_err(hs, TBLK_NBD_REP_ERR_TOO_BIG, "option too long");
			}
			break;
		case NBDS_HS_DONE:
		case NBDS_HS_CLOSE:
			return pos;
		}
	}
	return pos;
}

void nbds_tx_from_hs(struct nbds_tx *tx, const struct nbds_handshake *hs)
{
	const struct nbds_proto_export *e = hs->exp;

	memset(tx, 0, sizeof(*tx));
	tx->size = e->size;
	tx->read_only = e->tflags & TBLK_NBD_FLAG_READ_ONLY;
	tx->fast_zero = e->tflags & TBLK_NBD_FLAG_SEND_FAST_ZERO;
	tx->structured = hs->structured;
	tx->meta_base = hs->structured && hs->meta_base;
	tx->meta_depth = hs->structured && hs->meta_depth;
	tx->align = hs->block_size_requested && e->min_block ? e->min_block : 1;
}

/* Flags each command accepts. */
static uint16_t allowed_flags(const struct nbds_tx *tx, uint16_t type)
{
	switch (type) {
	case TBLK_NBD_CMD_READ:
		return tx->structured ? TBLK_NBD_CMD_FLAG_DF : 0;
	case TBLK_NBD_CMD_WRITE:
	case TBLK_NBD_CMD_TRIM:
		return TBLK_NBD_CMD_FLAG_FUA;
	case TBLK_NBD_CMD_WRITE_ZEROES:
		return TBLK_NBD_CMD_FLAG_FUA | TBLK_NBD_CMD_FLAG_NO_HOLE |
		       (tx->fast_zero ? TBLK_NBD_CMD_FLAG_FAST_ZERO : 0);
	case TBLK_NBD_CMD_BLOCK_STATUS:
		return TBLK_NBD_CMD_FLAG_REQ_ONE;
	default:
		return 0;
	}
}

static uint32_t check_request(const struct nbds_tx *tx, struct nbds_request *req)
{
	bool is_write = req->type == TBLK_NBD_CMD_WRITE ||
			req->type == TBLK_NBD_CMD_WRITE_ZEROES || req->type == TBLK_NBD_CMD_TRIM;

	switch (req->type) {
	case TBLK_NBD_CMD_READ:
	case TBLK_NBD_CMD_WRITE:
	case TBLK_NBD_CMD_TRIM:
	case TBLK_NBD_CMD_CACHE:
	case TBLK_NBD_CMD_WRITE_ZEROES:
	case TBLK_NBD_CMD_BLOCK_STATUS:
		break;
	case TBLK_NBD_CMD_FLUSH:
	case TBLK_NBD_CMD_DISC:
		/* Offset and length mean nothing here; flags would. */
		return req->flags ? TBLK_NBD_EINVAL : 0;
	default:
		return TBLK_NBD_EINVAL;
	}
	if (req->flags & ~allowed_flags(tx, req->type))
		return TBLK_NBD_EINVAL;
	if ((req->type == TBLK_NBD_CMD_READ || req->type == TBLK_NBD_CMD_WRITE) &&
	    req->len > TBLK_NBD_MAX_BUFFER)
		return TBLK_NBD_EINVAL;
	if (req->offset > tx->size || req->len > tx->size - req->offset)
		return req->type == TBLK_NBD_CMD_WRITE || req->type == TBLK_NBD_CMD_WRITE_ZEROES ?
		       TBLK_NBD_ENOSPC : TBLK_NBD_EINVAL;
	if (req->offset % tx->align || req->len % tx->align)
		return TBLK_NBD_EINVAL;
	if (is_write && tx->read_only)
		return TBLK_NBD_EPERM;
	if (req->type == TBLK_NBD_CMD_BLOCK_STATUS &&
	    (!req->len || !(tx->meta_base || tx->meta_depth)))
		return TBLK_NBD_EINVAL;
	return 0;
}

int nbds_request_parse(const uint8_t *hdr, const struct nbds_tx *tx, struct nbds_request *req)
{
	memset(req, 0, sizeof(*req));
	if (nbds_be32(hdr) != TBLK_NBD_REQUEST_MAGIC)
		return -EPROTO;
	req->flags = nbds_be16(hdr + 4);
	req->type = nbds_be16(hdr + 6);
	req->cookie = nbds_be64(hdr + 8);
	req->offset = nbds_be64(hdr + 16);
	req->len = nbds_be32(hdr + 24);
	if (req->type == TBLK_NBD_CMD_WRITE)
		req->payload = req->len;
	req->error = check_request(tx, req);
	if (req->error && req->payload) {
		/* The payload follows whatever we think of it; past our limit we do not read it. */
		if (req->len > TBLK_NBD_MAX_BUFFER)
			req->close_after = true;
		else
			req->skip_payload = true;
	}
	return 0;
}

uint32_t nbds_errno_to_nbd(int err)
{
	switch (err < 0 ? -err : err) {
	case 0:
		return 0;
	case EPERM:
	case EROFS:
		return TBLK_NBD_EPERM;
	case EIO:
		return TBLK_NBD_EIO;
	case ENOMEM:
		return TBLK_NBD_ENOMEM;
	case ENOSPC:
	case EDQUOT:
	case EFBIG:
		return TBLK_NBD_ENOSPC;
	case EOVERFLOW:
		return TBLK_NBD_EOVERFLOW;
	case ENOTSUP:
		return TBLK_NBD_ENOTSUP;
	case ESHUTDOWN:
		return TBLK_NBD_ESHUTDOWN;
	default:
		return TBLK_NBD_EINVAL;
	}
}

void nbds_put_simple_reply(GByteArray *out, uint64_t cookie, uint32_t error)
{
	nbds_put_be32(out, TBLK_NBD_SIMPLE_REPLY_MAGIC);
	nbds_put_be32(out, error);
	nbds_put_be64(out, cookie);
}

void nbds_put_chunk_header(GByteArray *out, uint16_t flags, uint16_t type, uint64_t cookie,
			   uint32_t length)
{
	nbds_put_be32(out, TBLK_NBD_STRUCTURED_REPLY_MAGIC);
	nbds_put_be16(out, flags);
	nbds_put_be16(out, type);
	nbds_put_be64(out, cookie);
	nbds_put_be32(out, length);
}

void nbds_put_error_chunk(GByteArray *out, uint64_t cookie, uint32_t error, const char *msg)
{
	size_t len = msg ? strlen(msg) : 0;

	nbds_put_chunk_header(out, TBLK_NBD_REPLY_FLAG_DONE, TBLK_NBD_REPLY_TYPE_ERROR, cookie,
			      (uint32_t)(6 + len));
	nbds_put_be32(out, error);
	nbds_put_be16(out, (uint16_t)len);
	if (len)
		g_byte_array_append(out, (const uint8_t *)msg, (guint)len);
}
