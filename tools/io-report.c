/* SPDX-License-Identifier: MIT */
/*
 * io-report.c - what tblk-io prints the way qemu-io prints it: the statistics lines of a
 * request, hex dumps, pattern checks, number parsing errors; plus the small request helpers
 * the I/O commands share (bounds check, waiting, iovec building).
 *
 * Threading: the tool's single thread.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "tools/io-int.h"

int64_t io_cvtnum(const char *s)
{
	uint64_t v;
	bool hex_suffix;
	int ret = tool_strtosz(s, &v, &hex_suffix);

	if (hex_suffix)
		tool_warn("Using a multiplier suffix on hex numbers is deprecated: %s", s);
	if (ret < 0)
		return ret;
	if (v > INT64_MAX)
		return -ERANGE;
	return (int64_t)v;
}

void io_print_cvtnum_err(int64_t ret, const char *s)
{
	if (ret == -ERANGE)
		printf("Parsing error: argument too large -- %s\n", s);
	else if (ret == -EINVAL)
		printf("Parsing error: non-numeric argument, or extraneous/unrecognized "
		       "suffix -- %s\n", s);
	else
		printf("Parsing error: %s\n", strerror((int)-ret));
}

int io_parse_pattern(const char *s)
{
	char *end;
	long v = strtol(s, &end, 0);

	if (end == s || *end || v < 0 || v > 255) {
		printf("%s is not a valid pattern byte\n", s);
		return -1;
	}
	return (int)v;
}

/* qemu-io's time format: "SS.cc sec" under a second, "H:MM:SS.cc" otherwise or if @fixed. */
static void fmt_time(char *buf, size_t len, uint64_t ns, bool fixed)
{
	uint64_t sec = ns / 1000000000ull;
	double frac = (double)(ns % 1000000000ull) / 1e9;

	if (fixed || sec)
		snprintf(buf, len, "%u:%02u:%05.2f", (unsigned int)(sec / 3600),
			 (unsigned int)(sec / 60 % 60), (double)(sec % 60) + frac);
	else
		snprintf(buf, len, "%05.2f sec", frac);
}

void io_print_report(const char *op, uint64_t start_ns, uint64_t end_ns, int64_t offset,
		     int64_t bytes, int64_t total, int cnt, bool csv)
{
	uint64_t ns = end_ns > start_ns ? end_ns - start_ns : 1;
	double secs = (double)ns / 1e9;
	char t[64], sz[64], rate[64];

	fmt_time(t, sizeof(t), ns, csv);
	if (csv) {
		printf("%" PRId64 ",%d,%s,%.3f,%.3f\n", total, cnt, t, (double)total / secs,
		       cnt / secs);
		return;
	}
	printf("%s %" PRId64 "/%" PRId64 " bytes at offset %" PRId64 "\n", op, bytes, bytes,
	       offset);
	tool_fmt_size_io(sz, sizeof(sz), (double)total);
	tool_fmt_size_io(rate, sizeof(rate), (double)total / secs);
	printf("%s, %d ops; %s (%s/sec and %.4f ops/sec)\n", sz, cnt, t, rate, cnt / secs);
}

void io_dump_buffer(const void *buf, int64_t offset, int64_t len)
{
	const unsigned char *p = buf;
	int64_t i, j;

	for (i = 0; i < len; i += 16) {
		printf("%08" PRIx64 ": ", (uint64_t)(offset + i));
		for (j = i; j < len && j < i + 16; j++)
			printf(" %02x", p[j]);
		printf("  ");
		for (j = i; j < len && j < i + 16; j++)
			putchar(isalnum(p[j]) ? p[j] : '.');
		putchar('\n');
	}
}

bool io_verify_pattern(const void *buf, int pattern, int64_t offset, int64_t len)
{
	const unsigned char *p = buf;
	int64_t i;

	for (i = 0; i < len; i++) {
		if (p[i] != (unsigned char)pattern) {
			printf("Pattern verification failed at offset %" PRId64 ", %" PRId64
			       " bytes\n", offset, len);
			return false;
		}
	}
	return true;
}

void io_wait(struct io_ctx *io, const bool *done)
{
	while (!*done)
		tblk_loop_iterate(io->loop, true);
}

bool io_out_of_range(struct io_ctx *io, int64_t offset, uint64_t bytes)
{
	int64_t len = tblk_blk_getlength(io->blk);

	return len >= 0 && (offset > len || bytes > (uint64_t)(len - offset));
}

void io_sync_cb(void *opaque, int ret)
{
	struct io_sync *s = opaque;

	s->ret = ret;
	s->done = true;
}

void io_wait_until(struct io_ctx *io, uint64_t deadline_ns)
{
	/* The loop has no timer in the public API: poll it while requests are in flight. */
	for (;;) {
		uint64_t now, step;
		struct timespec ts;

		while (tblk_loop_iterate(io->loop, false))
			;
		now = tool_now_ns();
		if (now >= deadline_ns)
			return;
		step = deadline_ns - now;
		if (io->nr_aio && step > 1000000)
			step = 1000000;
		ts.tv_sec = (time_t)(step / 1000000000u);
		ts.tv_nsec = (long)(step % 1000000000u);
		nanosleep(&ts, NULL);
	}
}

int io_vec_init(struct io_vec *v, char **lens, int nr, int pattern)
{
	int64_t *sizes = g_new(int64_t, nr);
	int64_t total = 0, len;
	int i;

	for (i = 0; i < nr; i++) {
		len = io_cvtnum(lens[i]);
		if (len < 0) {
			io_print_cvtnum_err(len, lens[i]);
			goto fail;
		}
		if (len > TOOL_REQUEST_MAX_BYTES) {
			printf("Argument '%s' exceeds maximum size %lld\n", lens[i],
			       TOOL_REQUEST_MAX_BYTES);
			goto fail;
		}
		if (total > TOOL_REQUEST_MAX_BYTES - len) {
			printf("The total number of bytes exceed the maximum size %lld\n",
			       TOOL_REQUEST_MAX_BYTES);
			goto fail;
		}
		sizes[i] = len;
		total += len;
	}
	v->buf = tool_buf_new((size_t)total, pattern);
	if (!v->buf) {
		printf("Cannot allocate memory\n");
		goto fail;
	}
	v->iov = g_new(struct iovec, nr);
	v->niov = nr;
	v->total = total;
	for (i = 0, total = 0; i < nr; total += sizes[i], i++) {
		v->iov[i].iov_base = (char *)v->buf + total;
		v->iov[i].iov_len = (size_t)sizes[i];
	}
	g_free(sizes);
	return 0;
fail:
	g_free(sizes);
	return -EINVAL;
}

void io_vec_destroy(struct io_vec *v)
{
	tool_buf_free(v->buf);
	g_free(v->iov);
	v->buf = NULL;
	v->iov = NULL;
}
