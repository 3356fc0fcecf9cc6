/* SPDX-License-Identifier: MIT */
/*
 * nbd-handshake.c - the NBD client's side of connecting: the socket (TCP or unix), and
 * negotiation up to the transmission phase. Fixed newstyle servers get STRUCTURED_REPLY,
 * SET_META_CONTEXT base:allocation and OPT_GO (asking for block sizes); servers that do not
 * know OPT_GO get OPT_EXPORT_NAME, and oldstyle servers are read as they come.
 *
 * Threading: control path, one thread, blocking I/O on a socket nobody else uses yet. Every
 * length the server sends is checked before it is used or allocated.
 */
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "protocols/nbd-int.h"

/* Replies to one option we read before calling the server hostile. */
#define MAX_REPLIES	64

int tblk__nbd_read_full(int fd, void *buf, size_t n)
{
	uint8_t *p = buf;

	while (n) {
		ssize_t r = recv(fd, p, n, 0);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -EPIPE;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

int tblk__nbd_write_full(int fd, const void *buf, size_t n)
{
	const uint8_t *p = buf;

	while (n) {
		ssize_t r = send(fd, p, n, MSG_NOSIGNAL);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		p += r;
		n -= (size_t)r;
	}
	return 0;
}

static int connect_unix(const char *path, GError **errp)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	int fd, err;

	if (!*path)	/* as qemu words it */
		return tblk_error_set_errno(errp, ECONNREFUSED, "Failed to connect to ''");
	if (strlen(path) >= sizeof(sun.sun_path))
		return tblk_error_set(errp, ENAMETOOLONG, "UNIX socket path '%s' is too long",
				      path);
	strcpy(sun.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return tblk_error_set_errno(errp, errno, "Failed to create socket");
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		err = errno;
		close(fd);
		return tblk_error_set_errno(errp, err, "Failed to connect to '%s'", path);
	}
	return fd;
}

static int connect_inet(const char *host, const char *port, GError **errp)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_ADDRCONFIG };
	struct addrinfo *res, *ai;
	int fd = -1, err = ECONNREFUSED, one = 1, r;

	r = getaddrinfo(host, port, &hints, &res);
	if (r)
		return tblk_error_set(errp, EINVAL, "address resolution failed for %s:%s: %s",
				      host, port, gai_strerror(r));
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0) {
			err = errno;
			continue;
		}
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		err = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return tblk_error_set_errno(errp, err, "Failed to connect to '%s:%s'", host, port);
	/* Request headers are small: do not let Nagle hold them back. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return fd;
}

int tblk__nbd_socket_connect(const struct tblk_nbd_addr *addr, GError **errp)
{
	if (addr->is_unix)
		return connect_unix(addr->path, errp);
	return connect_inet(addr->host, addr->port, errp);
}

/* ---------------------------------------------------------------- options */

static int lost(GError **errp, int ret)
{
	if (ret == -EPIPE)
		return tblk_error_set(errp, EIO, "Server closed the connection during the "
				      "handshake");
	return tblk_error_set_errno(errp, -ret, "Failed to talk to the NBD server");
}

static int send_option(int fd, uint32_t opt, const void *data, uint32_t len, GError **errp)
{
	g_autofree uint8_t *buf = g_malloc(16 + (size_t)len);
	int ret;

	/* One write per option: fewer small segments for Nagle and delayed ACKs to hold. */
	tblk__nbd_put64(buf, TBLK_NBD_OPTS_MAGIC);
	tblk__nbd_put32(buf + 8, opt);
	tblk__nbd_put32(buf + 12, len);
	if (len)
		memcpy(buf + 16, data, len);
	ret = tblk__nbd_write_full(fd, buf, 16 + (size_t)len);
	return ret < 0 ? lost(errp, ret) : 0;
}

/* One option reply: its type and payload (caller frees, NUL-terminated for messages). */
struct opt_reply {
	uint32_t type;
	uint32_t len;
	uint8_t *data;
};

static int read_reply(int fd, uint32_t opt, struct opt_reply *rep, GError **errp)
{
	uint8_t hdr[20];
	int ret = tblk__nbd_read_full(fd, hdr, sizeof(hdr));

	rep->data = NULL;
	if (ret < 0)
		return lost(errp, ret);
	if (tblk__nbd_get64(hdr) != TBLK_NBD_REP_MAGIC)
		return tblk_error_set(errp, EINVAL, "Unexpected option reply magic 0x%" PRIx64,
				      tblk__nbd_get64(hdr));
	if (tblk__nbd_get32(hdr + 8) != opt)
		return tblk_error_set(errp, EINVAL, "Unexpected option %u in the reply to "
				      "option %u", tblk__nbd_get32(hdr + 8), opt);
	rep->type = tblk__nbd_get32(hdr + 12);
	rep->len = tblk__nbd_get32(hdr + 16);
	if (rep->len > TBLK_NBD_MAX_OPTION_LEN)
		return tblk_error_set(errp, EINVAL, "Option reply of %u bytes is too long",
				      rep->len);
	rep->data = g_malloc0(rep->len + 1);
	ret = tblk__nbd_read_full(fd, rep->data, rep->len);
	if (ret < 0) {
		g_clear_pointer(&rep->data, g_free);
		return lost(errp, ret);
	}
	return 0;
}

/* An error reply as qemu words it; the server's message, if any, on a second line. */
static int reply_error(const struct opt_reply *rep, const char *what, GError **errp)
{
	const char *msg;
	int err = EINVAL;

	switch (rep->type) {
	case TBLK_NBD_REP_ERR_UNKNOWN:
		msg = "Requested export not available";
		err = ENOENT;
		break;
	case TBLK_NBD_REP_ERR_POLICY:
		msg = "Denied by server for option";
		err = EPERM;
		break;
	case TBLK_NBD_REP_ERR_TLS_REQD:
		msg = "TLS negotiation required before option";
		err = ENOTSUP;
		break;
	case TBLK_NBD_REP_ERR_SHUTDOWN:
		msg = "Server shutting down before option";
		err = ESHUTDOWN;
		break;
	default:
		msg = "Option failed";
		break;
	}
	for (uint32_t i = 0; i < rep->len; i++)
		if (!g_ascii_isprint(rep->data[i]) && rep->data[i] != '\n')
			rep->data[i] = '?';
	if (rep->len)
		return tblk_error_set(errp, err, "%s%s%s\nserver reported: %s", msg,
				      *what ? " " : "", what, (char *)rep->data);
	return tblk_error_set(errp, err, "%s%s%s", msg, *what ? " " : "", what);
}

/* Structured replies: an ACK turns them on, any error leaves them off. */
static int opt_structured(int fd, struct tblk_nbd_info *info, GError **errp)
{
	struct opt_reply rep;
	int ret = send_option(fd, TBLK_NBD_OPT_STRUCTURED_REPLY, NULL, 0, errp);

	if (ret == 0)
		ret = read_reply(fd, TBLK_NBD_OPT_STRUCTURED_REPLY, &rep, errp);
	if (ret < 0)
		return ret;
	if (rep.type == TBLK_NBD_REP_ACK && rep.len == 0)
		info->structured = true;
	else if (!(rep.type & TBLK_NBD_REP_FLAG_ERROR))
		ret = tblk_error_set(errp, EINVAL, "Unexpected reply %u to STRUCTURED_REPLY",
				     rep.type);
	g_free(rep.data);
	return ret;
}

/* Asks for base:allocation; the server's id for it lands in info->alloc_id. */
static int opt_meta_context(int fd, const char *export, struct tblk_nbd_info *info,
			    GError **errp)
{
	const char *ctx = TBLK_NBD_META_BASE_ALLOCATION;
	uint32_t nlen = (uint32_t)strlen(export), clen = (uint32_t)strlen(ctx);
	uint32_t len = 4 + nlen + 4 + 4 + clen;
	g_autofree uint8_t *buf = g_malloc(len);
	struct opt_reply rep;
	int ret;

	tblk__nbd_put32(buf, nlen);
	memcpy(buf + 4, export, nlen);
	tblk__nbd_put32(buf + 4 + nlen, 1);
	tblk__nbd_put32(buf + 8 + nlen, clen);
	memcpy(buf + 12 + nlen, ctx, clen);
	ret = send_option(fd, TBLK_NBD_OPT_SET_META_CONTEXT, buf, len, errp);
	for (int n = 0; ret == 0; n++) {
		if (n == MAX_REPLIES) {
			ret = tblk_error_set(errp, EINVAL, "Server sent too many replies");
			break;
		}
		ret = read_reply(fd, TBLK_NBD_OPT_SET_META_CONTEXT, &rep, errp);
		if (ret < 0)
			break;
		if (rep.type == TBLK_NBD_REP_META_CONTEXT) {
			if (rep.len == 4 + clen && !memcmp(rep.data + 4, ctx, clen)) {
				info->has_alloc = true;
				info->alloc_id = tblk__nbd_get32(rep.data);
			} else {
				ret = tblk_error_set(errp, EINVAL, "Server replied with a meta "
						     "context we did not ask for");
			}
		} else if (rep.type & TBLK_NBD_REP_FLAG_ERROR) {
			info->has_alloc = false;	/* fine: no block status */
			g_free(rep.data);
			break;
		} else if (rep.type != TBLK_NBD_REP_ACK) {
			ret = tblk_error_set(errp, EINVAL, "Unexpected reply %u to "
					     "SET_META_CONTEXT", rep.type);
		}
		g_free(rep.data);
		if (rep.type == TBLK_NBD_REP_ACK)
			break;
	}
	return ret;
}

/* One NBD_REP_INFO item of OPT_GO's answer. */
static int go_info(const struct opt_reply *rep, struct tblk_nbd_info *info, bool *got_export,
		   GError **errp)
{
	const uint8_t *d = rep->data;

	if (rep->len < 2)
		return tblk_error_set(errp, EINVAL, "Server sent a truncated info reply");
	switch (tblk__nbd_get16(d)) {
	case TBLK_NBD_INFO_EXPORT:
		if (rep->len != 12)
			return tblk_error_set(errp, EINVAL, "Invalid length %u of the export "
					      "info", rep->len);
		info->size = tblk__nbd_get64(d + 2);
		info->flags = tblk__nbd_get16(d + 10);
		*got_export = true;
		return 0;
	case TBLK_NBD_INFO_BLOCK_SIZE:
		if (rep->len != 14)
			return tblk_error_set(errp, EINVAL, "Invalid length %u of the block size "
					      "info", rep->len);
		info->min_block = tblk__nbd_get32(d + 2);
		info->pref_block = tblk__nbd_get32(d + 6);
		info->max_block = tblk__nbd_get32(d + 10);
		if (!TBLK_IS_POW2(info->min_block) || info->min_block > 65536 ||
		    !TBLK_IS_POW2(info->pref_block) || info->pref_block < info->min_block ||
		    info->max_block < info->min_block ||
		    info->max_block % info->min_block)
			return tblk_error_set(errp, EINVAL, "Server sent invalid block sizes "
					      "(minimum %u, preferred %u, maximum %u)",
					      info->min_block, info->pref_block, info->max_block);
		return 0;
	default:
		return 0;	/* names and descriptions: not needed */
	}
}

/* OPT_GO. Returns 1 if the server does not know it (use EXPORT_NAME), 0 when done. */
static int opt_go(int fd, const char *export, struct tblk_nbd_info *info, GError **errp)
{
	uint32_t nlen = (uint32_t)strlen(export), len = 4 + nlen + 2 + 2;
	g_autofree uint8_t *buf = g_malloc(len);
	bool got_export = false;
	struct opt_reply rep;
	int ret;

	tblk__nbd_put32(buf, nlen);
	memcpy(buf + 4, export, nlen);
	tblk__nbd_put16(buf + 4 + nlen, 1);
	tblk__nbd_put16(buf + 6 + nlen, TBLK_NBD_INFO_BLOCK_SIZE);
	ret = send_option(fd, TBLK_NBD_OPT_GO, buf, len, errp);
	for (int n = 0; ret == 0; n++) {
		if (n == MAX_REPLIES) {
			ret = tblk_error_set(errp, EINVAL, "Server sent too many replies");
			break;
		}
		ret = read_reply(fd, TBLK_NBD_OPT_GO, &rep, errp);
		if (ret < 0)
			break;
		if (rep.type == TBLK_NBD_REP_INFO) {
			ret = go_info(&rep, info, &got_export, errp);
		} else if (rep.type == TBLK_NBD_REP_ACK) {
			if (!got_export)
				ret = tblk_error_set(errp, EINVAL, "Server did not describe the "
						     "export");
			g_free(rep.data);
			break;
		} else if (rep.type == TBLK_NBD_REP_ERR_UNSUP) {
			ret = 1;
		} else if (rep.type & TBLK_NBD_REP_FLAG_ERROR) {
			ret = reply_error(&rep, "", errp);
		} else {
			ret = tblk_error_set(errp, EINVAL, "Unexpected reply %u to OPT_GO",
					     rep.type);
		}
		g_free(rep.data);
	}
	return ret;
}

/* OPT_EXPORT_NAME: no reply header; size and flags, then padding unless NO_ZEROES. */
static int opt_export_name(int fd, const char *export, bool no_zeroes,
			   struct tblk_nbd_info *info, GError **errp)
{
	uint8_t buf[10 + 124];
	size_t n = no_zeroes ? 10 : sizeof(buf);
	int ret = send_option(fd, TBLK_NBD_OPT_EXPORT_NAME, export, (uint32_t)strlen(export),
			      errp);

	if (ret < 0)
		return ret;
	ret = tblk__nbd_read_full(fd, buf, n);
	if (ret == -EPIPE)
		return tblk_error_set(errp, ENOENT, "Requested export not available");
	if (ret < 0)
		return lost(errp, ret);
	info->size = tblk__nbd_get64(buf);
	info->flags = tblk__nbd_get16(buf + 8);
	return 0;
}

static int newstyle(int fd, const char *export, struct tblk_nbd_info *info, GError **errp)
{
	uint8_t b[4];
	uint16_t sflags;
	uint32_t cflags = 0;
	int ret = tblk__nbd_read_full(fd, b, 2);

	if (ret < 0)
		return lost(errp, ret);
	sflags = tblk__nbd_get16(b);
	if (sflags & TBLK_NBD_FLAG_FIXED_NEWSTYLE)
		cflags |= TBLK_NBD_FLAG_C_FIXED_NEWSTYLE;
	if (sflags & TBLK_NBD_FLAG_NO_ZEROES)
		cflags |= TBLK_NBD_FLAG_C_NO_ZEROES;
	tblk__nbd_put32(b, cflags);
	ret = tblk__nbd_write_full(fd, b, 4);
	if (ret < 0)
		return lost(errp, ret);
	if (sflags & TBLK_NBD_FLAG_FIXED_NEWSTYLE) {
		ret = opt_structured(fd, info, errp);
		if (ret == 0 && info->structured)
			ret = opt_meta_context(fd, export, info, errp);
		if (ret == 0)
			ret = opt_go(fd, export, info, errp);
		if (ret <= 0)
			return ret;
	}
	/* Meta contexts are only usable once negotiated with OPT_GO's export. */
	info->has_alloc = false;
	return opt_export_name(fd, export, sflags & TBLK_NBD_FLAG_NO_ZEROES, info, errp);
}

int tblk__nbd_handshake(int fd, const char *export, struct tblk_nbd_info *info,
			GError **errp)
{
	uint8_t buf[16 + 128];
	uint64_t magic;
	int ret;

	if (strlen(export) > TBLK_NBD_MAX_STRING)
		return tblk_error_set(errp, EINVAL, "Export name too long to send to server");
	memset(info, 0, sizeof(*info));
	ret = tblk__nbd_read_full(fd, buf, 16);
	if (ret < 0)
		return lost(errp, ret);
	if (tblk__nbd_get64(buf) != TBLK_NBD_MAGIC)
		return tblk_error_set(errp, EINVAL, "Server did not send the NBD magic: not an "
				      "NBD server");
	magic = tblk__nbd_get64(buf + 8);
	if (magic == TBLK_NBD_OPTS_MAGIC)
		ret = newstyle(fd, export, info, errp);
	else if (magic == TBLK_NBD_OLDSTYLE_MAGIC) {
		/* size 8, flags 4 (the low 16 bits are the transmission flags), zeroes 124 */
		if (*export)
			return tblk_error_set(errp, EINVAL, "Server does not support non-empty "
					      "export names");
		ret = tblk__nbd_read_full(fd, buf, 8 + 4 + 124);
		if (ret < 0)
			return lost(errp, ret);
		info->size = tblk__nbd_get64(buf);
		info->flags = (uint16_t)tblk__nbd_get32(buf + 8);
	} else {
		return tblk_error_set(errp, EINVAL, "Bad server magic 0x%" PRIx64, magic);
	}
	if (ret < 0)
		return ret;
	if (info->size > INT64_MAX)
		return tblk_error_set(errp, EINVAL, "Export size %" PRIu64 " is too large",
				      info->size);
	if (!(info->flags & TBLK_NBD_FLAG_HAS_FLAGS))
		info->flags = 0;
	if (!info->structured)
		info->has_alloc = false;
	return 0;
}
