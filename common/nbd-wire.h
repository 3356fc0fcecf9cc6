/* SPDX-License-Identifier: MIT */
/*
 * nbd-wire.h - the NBD protocol's numbers, shared by the client protocol driver
 * (protocols/nbd*.c) and the server (tools/export-nbd*.c). Values are those of the NBD
 * protocol document; every multi-byte field on the wire is big-endian.
 */
#ifndef TBLK_COMMON_NBD_WIRE_H
#define TBLK_COMMON_NBD_WIRE_H

#include <stdint.h>

/* Handshake. */
#define TBLK_NBD_MAGIC			0x4e42444d41474943ULL /* "NBDMAGIC" */
#define TBLK_NBD_OPTS_MAGIC		0x49484156454f5054ULL /* "IHAVEOPT" */
#define TBLK_NBD_OLDSTYLE_MAGIC		0x00420281861253ULL
#define TBLK_NBD_REP_MAGIC		0x3e889045565a9ULL    /* option replies */
#define TBLK_NBD_DEFAULT_PORT		10809

/* Handshake flags (server, 16 bits) and client flags (32 bits). */
#define TBLK_NBD_FLAG_FIXED_NEWSTYLE	(1u << 0)
#define TBLK_NBD_FLAG_NO_ZEROES		(1u << 1)
#define TBLK_NBD_FLAG_C_FIXED_NEWSTYLE	(1u << 0)
#define TBLK_NBD_FLAG_C_NO_ZEROES	(1u << 1)

/* Options. */
#define TBLK_NBD_OPT_EXPORT_NAME	1
#define TBLK_NBD_OPT_ABORT		2
#define TBLK_NBD_OPT_LIST		3
#define TBLK_NBD_OPT_PEEK_EXPORT	4
#define TBLK_NBD_OPT_STARTTLS		5
#define TBLK_NBD_OPT_INFO		6
#define TBLK_NBD_OPT_GO			7
#define TBLK_NBD_OPT_STRUCTURED_REPLY	8
#define TBLK_NBD_OPT_LIST_META_CONTEXT	9
#define TBLK_NBD_OPT_SET_META_CONTEXT	10
#define TBLK_NBD_OPT_EXTENDED_HEADERS	11

/* Option reply types; errors have bit 31 set. */
#define TBLK_NBD_REP_ACK		1
#define TBLK_NBD_REP_SERVER		2
#define TBLK_NBD_REP_INFO		3
#define TBLK_NBD_REP_META_CONTEXT	4
#define TBLK_NBD_REP_FLAG_ERROR		(1u << 31)
#define TBLK_NBD_REP_ERR_UNSUP		(TBLK_NBD_REP_FLAG_ERROR | 1)
#define TBLK_NBD_REP_ERR_POLICY		(TBLK_NBD_REP_FLAG_ERROR | 2)
#define TBLK_NBD_REP_ERR_INVALID	(TBLK_NBD_REP_FLAG_ERROR | 3)
#define TBLK_NBD_REP_ERR_PLATFORM	(TBLK_NBD_REP_FLAG_ERROR | 4)
#define TBLK_NBD_REP_ERR_TLS_REQD	(TBLK_NBD_REP_FLAG_ERROR | 5)
#define TBLK_NBD_REP_ERR_UNKNOWN	(TBLK_NBD_REP_FLAG_ERROR | 6)
#define TBLK_NBD_REP_ERR_SHUTDOWN	(TBLK_NBD_REP_FLAG_ERROR | 7)
#define TBLK_NBD_REP_ERR_BLOCK_SIZE_REQD (TBLK_NBD_REP_FLAG_ERROR | 8)
#define TBLK_NBD_REP_ERR_TOO_BIG	(TBLK_NBD_REP_FLAG_ERROR | 9)

/* NBD_REP_INFO / NBD_OPT_INFO item types. */
#define TBLK_NBD_INFO_EXPORT		0
#define TBLK_NBD_INFO_NAME		1
#define TBLK_NBD_INFO_DESCRIPTION	2
#define TBLK_NBD_INFO_BLOCK_SIZE	3

/* Transmission flags (16 bits). */
#define TBLK_NBD_FLAG_HAS_FLAGS		(1u << 0)
#define TBLK_NBD_FLAG_READ_ONLY		(1u << 1)
#define TBLK_NBD_FLAG_SEND_FLUSH	(1u << 2)
#define TBLK_NBD_FLAG_SEND_FUA		(1u << 3)
#define TBLK_NBD_FLAG_ROTATIONAL	(1u << 4)
#define TBLK_NBD_FLAG_SEND_TRIM		(1u << 5)
#define TBLK_NBD_FLAG_SEND_WRITE_ZEROES	(1u << 6)
#define TBLK_NBD_FLAG_SEND_DF		(1u << 7)
#define TBLK_NBD_FLAG_CAN_MULTI_CONN	(1u << 8)
#define TBLK_NBD_FLAG_SEND_RESIZE	(1u << 9)
#define TBLK_NBD_FLAG_SEND_CACHE	(1u << 10)
#define TBLK_NBD_FLAG_SEND_FAST_ZERO	(1u << 11)

/* Transmission: request and reply headers. */
#define TBLK_NBD_REQUEST_MAGIC		0x25609513u
#define TBLK_NBD_SIMPLE_REPLY_MAGIC	0x67446698u
#define TBLK_NBD_STRUCTURED_REPLY_MAGIC	0x668e33efu
#define TBLK_NBD_REQUEST_SIZE		28 /* magic 4, flags 2, type 2, cookie 8, offset 8, len 4 */
#define TBLK_NBD_SIMPLE_REPLY_SIZE	16 /* magic 4, error 4, cookie 8 */
#define TBLK_NBD_STRUCTURED_REPLY_SIZE	20 /* magic 4, flags 2, type 2, cookie 8, length 4 */

/* Commands. */
#define TBLK_NBD_CMD_READ		0
#define TBLK_NBD_CMD_WRITE		1
#define TBLK_NBD_CMD_DISC		2
#define TBLK_NBD_CMD_FLUSH		3
#define TBLK_NBD_CMD_TRIM		4
#define TBLK_NBD_CMD_CACHE		5
#define TBLK_NBD_CMD_WRITE_ZEROES	6
#define TBLK_NBD_CMD_BLOCK_STATUS	7
#define TBLK_NBD_CMD_RESIZE		8

/* Command flags (16 bits). */
#define TBLK_NBD_CMD_FLAG_FUA		(1u << 0)
#define TBLK_NBD_CMD_FLAG_NO_HOLE	(1u << 1)
#define TBLK_NBD_CMD_FLAG_DF		(1u << 2)
#define TBLK_NBD_CMD_FLAG_REQ_ONE	(1u << 3)
#define TBLK_NBD_CMD_FLAG_FAST_ZERO	(1u << 4)

/* Structured reply flags and chunk types. */
#define TBLK_NBD_REPLY_FLAG_DONE	(1u << 0)
#define TBLK_NBD_REPLY_TYPE_NONE	0
#define TBLK_NBD_REPLY_TYPE_OFFSET_DATA	1
#define TBLK_NBD_REPLY_TYPE_OFFSET_HOLE	2
#define TBLK_NBD_REPLY_TYPE_BLOCK_STATUS 5
#define TBLK_NBD_REPLY_TYPE_ERROR	((1u << 15) | 1)
#define TBLK_NBD_REPLY_TYPE_ERROR_OFFSET ((1u << 15) | 2)

/* Error values carried in replies (not the host's errno numbers). */
#define TBLK_NBD_EPERM			1
#define TBLK_NBD_EIO			5
#define TBLK_NBD_ENOMEM			12
#define TBLK_NBD_EINVAL			22
#define TBLK_NBD_ENOSPC			28
#define TBLK_NBD_EOVERFLOW		75
#define TBLK_NBD_ENOTSUP		95
#define TBLK_NBD_ESHUTDOWN		108

/* Meta contexts. */
#define TBLK_NBD_META_BASE_ALLOCATION	"base:allocation"
#define TBLK_NBD_META_QEMU_ALLOC_DEPTH	"qemu:allocation-depth"
#define TBLK_NBD_STATE_HOLE		(1u << 0) /* base:allocation */
#define TBLK_NBD_STATE_ZERO		(1u << 1)

/* Limits. */
#define TBLK_NBD_MAX_STRING		4096	 /* export names, descriptions, contexts */
#define TBLK_NBD_MAX_OPTION_LEN		(64 * 1024) /* an option's payload we accept */
#define TBLK_NBD_MAX_BUFFER		(32u << 20) /* largest READ/WRITE payload (qemu's) */

#endif
