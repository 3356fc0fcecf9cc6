/* SPDX-License-Identifier: MIT */
/*
 * export-nbd-int.h - the NBD server's protocol engine, kept apart from sockets and event
 * loops so that it can be fuzzed (t/fuzz-nbd-server.c): the handshake is a state machine fed
 * with bytes that appends its replies to a byte array, and a transmission request header is
 * checked by a pure function that says what to do with it.
 *
 * Threading: a handshake or a request belongs to the one connection that feeds it; nothing
 * here is shared. The export table given to the handshake must stay valid while it runs.
 */
#ifndef TBLK_TOOLS_EXPORT_NBD_INT_H
#define TBLK_TOOLS_EXPORT_NBD_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <glib.h>

#include "common/common.h"
#include "common/nbd-wire.h"

/* Context ids we hand out for the meta contexts of the session. */
#define NBDS_CTX_BASE		1
#define NBDS_CTX_DEPTH		2

/* Requests in flight and bytes buffered per connection before we stop reading from it. */
#define NBDS_MAX_INFLIGHT	64
#define NBDS_MAX_BUFFERED	(128u << 20)
/* Extents one BLOCK_STATUS reply describes at most per context. */
#define NBDS_MAX_EXTENTS	4096

/* What the handshake and the request checks need to know about an export. [const] */
struct nbds_proto_export {
	const char *name;
	const char *description;	/* NULL: none */
	uint64_t size;
	uint16_t tflags;		/* TBLK_NBD_FLAG_* transmission flags */
	uint32_t min_block, pref_block, max_block;
	bool alloc_depth;		/* offers qemu:allocation-depth */
};

/* The exports a handshake may name; both functions are called by the handshake only. */
struct nbds_export_table {
	/* The export called @name, or NULL. */
	const struct nbds_proto_export *(*lookup)(void *opaque, const char *name);
	/* The @i-th export (for NBD_OPT_LIST), or NULL past the last. */
	const struct nbds_proto_export *(*nth)(void *opaque, unsigned int i);
	void *opaque;
};

enum nbds_hs_state {
	NBDS_HS_CLIENT_FLAGS,	/* waiting for the client's 32-bit flags */
	NBDS_HS_OPT_HEADER,	/* waiting for IHAVEOPT, option, length */
	NBDS_HS_OPT_DATA,	/* collecting an option's payload */
	NBDS_HS_OPT_SKIP,	/* discarding an oversized option's payload */
	NBDS_HS_DONE,		/* transmission phase: hs.exp is the export */
	NBDS_HS_CLOSE,		/* flush hs.out, then close the connection */
};

/* One connection's handshake. Owned by the connection. */
struct nbds_handshake {
	enum nbds_hs_state state;
	const struct nbds_export_table *table;
	GByteArray *out;		/* replies to send, appended by nbds_hs_feed() */
	bool fixed;			/* the client sent NBD_FLAG_C_FIXED_NEWSTYLE */
	bool no_zeroes;
	bool structured;		/* NBD_OPT_STRUCTURED_REPLY acknowledged */
	bool meta_base, meta_depth;	/* contexts selected by SET_META_CONTEXT */
	char *meta_export;		/* the export SET_META_CONTEXT named */
	bool block_size_requested;	/* the client will honour our minimum block size */
	uint8_t hdr[16];		/* the option header being collected */
	size_t hdr_fill;
	uint32_t opt, optlen;
	uint8_t *optbuf;		/* optlen bytes being collected */
	size_t opt_fill;
	uint64_t skip;			/* bytes left to discard in NBDS_HS_OPT_SKIP */
	unsigned int nr_opts;		/* options seen, bounded */
	const struct nbds_proto_export *exp; /* chosen export once NBDS_HS_DONE */
};

/*
 * Starts a handshake: appends the server's greeting to @out (which it borrows for its
 * lifetime). @table is borrowed.
 */
void nbds_hs_init(struct nbds_handshake *hs, const struct nbds_export_table *table,
		  GByteArray *out);
void nbds_hs_destroy(struct nbds_handshake *hs);
/*
 * Feeds @len received bytes; returns how many were consumed. Consumption stops when the
 * state becomes NBDS_HS_DONE (the rest belongs to the transmission phase) or NBDS_HS_CLOSE.
 */
size_t nbds_hs_feed(struct nbds_handshake *hs, const uint8_t *in, size_t len);

/* Transmission parameters of one connection, fixed after the handshake. */
struct nbds_tx {
	uint64_t size;
	bool read_only;
	bool structured;
	bool meta_base, meta_depth;
	bool fast_zero;			/* NBD_FLAG_SEND_FAST_ZERO advertised */
	uint32_t align;			/* enforced alignment (1: none) */
};

void nbds_tx_from_hs(struct nbds_tx *tx, const struct nbds_handshake *hs);

/* A decoded request header and the verdict of its checks. */
struct nbds_request {
	uint16_t flags;
	uint16_t type;
	uint64_t cookie;
	uint64_t offset;
	uint32_t len;
	uint32_t error;			/* NBD error to reply with, 0 if the request is valid */
	uint32_t payload;		/* bytes of data that follow the header (WRITE) */
	bool skip_payload;		/* the payload must be read and discarded (error) */
	bool close_after;		/* reply, then close: the stream cannot be resynchronised */
};

/*
 * Checks a 28-byte request header. Returns 0 with *req filled (req->error set if the
 * request must be refused), or -EPROTO if the header is garbage and the connection must be
 * closed without a reply.
 */
int nbds_request_parse(const uint8_t *hdr, const struct nbds_tx *tx, struct nbds_request *req);

/* The NBD error value for a -errno result. */
uint32_t nbds_errno_to_nbd(int err);

/* Reply builders: append to @out. */
void nbds_put_simple_reply(GByteArray *out, uint64_t cookie, uint32_t error);
void nbds_put_chunk_header(GByteArray *out, uint16_t flags, uint16_t type, uint64_t cookie,
			   uint32_t length);
void nbds_put_error_chunk(GByteArray *out, uint64_t cookie, uint32_t error, const char *msg);

/* Big-endian helpers. */
static inline void nbds_put_be16(GByteArray *out, uint16_t v)
{
	uint8_t b[2] = { v >> 8, v };

	g_byte_array_append(out, b, 2);
}

static inline void nbds_put_be32(GByteArray *out, uint32_t v)
{
	uint8_t b[4] = { v >> 24, v >> 16, v >> 8, v };

	g_byte_array_append(out, b, 4);
}

static inline void nbds_put_be64(GByteArray *out, uint64_t v)
{
	nbds_put_be32(out, v >> 32);
	nbds_put_be32(out, (uint32_t)v);
}

static inline uint16_t nbds_be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

static inline uint32_t nbds_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t nbds_be64(const uint8_t *p)
{
	return (uint64_t)nbds_be32(p) << 32 | nbds_be32(p + 4);
}

#endif /* TBLK_TOOLS_EXPORT_NBD_INT_H */
