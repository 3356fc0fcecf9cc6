/* SPDX-License-Identifier: MIT */
/*
 * iov.c - helpers over struct iovec arrays: size, copy to and from flat buffers, slicing.
 * Pure functions; thread-safe.
 */
#include <string.h>

#include "tracked/tracked.h"

size_t tblk_iov_size(const struct iovec *iov, int iovcnt)
{
	size_t n = 0;

	for (int i = 0; i < iovcnt; i++)
		n += iov[i].iov_len;
	return n;
}

/* Calls @fn on each piece of [offset, offset + n) of @iov with the matching buffer offset. */
static void iov_walk(const struct iovec *iov, int iovcnt, size_t offset, size_t n,
		     void (*fn)(void *iov_part, size_t buf_off, size_t len, void *arg), void *arg)
{
	size_t done = 0;

	for (int i = 0; i < iovcnt && done < n; i++) {
		size_t len = iov[i].iov_len;

		if (offset >= len) {
			offset -= len;
			continue;
		}
		len = TBLK_MIN(len - offset, n - done);
		fn((char *)iov[i].iov_base + offset, done, len, arg);
		done += len;
		offset = 0;
	}
}

static void to_buf(void *part, size_t off, size_t len, void *buf)
{
	memcpy((char *)buf + off, part, len);
}

static void from_buf(void *part, size_t off, size_t len, void *buf)
{
	memcpy(part, (const char *)buf + off, len);
}

static void set_byte(void *part, size_t off, size_t len, void *c)
{
	memset(part, *(int *)c, len);
}

void tblk_iov_to_buf(const struct iovec *iov, int iovcnt, size_t offset, void *buf, size_t n)
{
	iov_walk(iov, iovcnt, offset, n, to_buf, buf);
}

void tblk_iov_from_buf(const struct iovec *iov, int iovcnt, size_t offset, const void *buf,
		       size_t n)
{
	iov_walk(iov, iovcnt, offset, n, from_buf, (void *)buf);
}

void tblk_iov_memset(const struct iovec *iov, int iovcnt, size_t offset, int c, size_t n)
{
	iov_walk(iov, iovcnt, offset, n, set_byte, &c);
}

int tblk_iov_slice(struct iovec *dst, int max, const struct iovec *iov, int iovcnt,
		   size_t offset, size_t bytes)
{
	int n = 0;

	for (int i = 0; i < iovcnt && bytes > 0; i++) {
		size_t len = iov[i].iov_len;

		if (offset >= len) {
			offset -= len;
			continue;
		}
		if (n == max)
			return -EINVAL;	/* callers that can go on in pieces check for it */
		len = TBLK_MIN(len - offset, bytes);
		dst[n].iov_base = (char *)iov[i].iov_base + offset;
		dst[n].iov_len = len;
		n++;
		bytes -= len;
		offset = 0;
	}
	return n;
}

bool tblk_iov_aligned(const struct iovec *iov, int iovcnt, size_t align)
{
	for (int i = 0; i < iovcnt; i++) {
		if (((uintptr_t)iov[i].iov_base | iov[i].iov_len) & (align - 1))
			return false;
	}
	return true;
}
