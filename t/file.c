/* SPDX-License-Identifier: MIT */
/*
 * file.c - raw over the file protocol under every aio mode and cache mode: seeded random
 * reads and writes (aligned and not, several buffers, many in flight) through the async and
 * the sync API, verified against a shadow copy and then against the file itself; discard,
 * write zeroes, block status, truncate, range and permission errors, bad options.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <tblk/tblk.h>
#include "t/tap.h"

#define IMG_SIZE	(8u << 20)
#define MAX_LEN		(256u << 10)
#define DEPTH		48
#define NR_OPS		1500

static char path[256];
static uint8_t *shadow;
static uint64_t rng;

struct op {
	bool busy;
	bool write;
	uint64_t off, len;
	uint8_t *mem;		/* allocation */
	struct iovec iov[3];
	int iovcnt;
	int *errors;
	int *done;
};

static void make_image(void)
{
	int fd;

	snprintf(path, sizeof(path), "%s/tblk-file-XXXXXX", getenv("TMPDIR") ?: "/tmp");
	fd = mkstemp(path);
	if (fd < 0)
		tap_bail("mkstemp");
	shadow = malloc(IMG_SIZE);
	for (size_t i = 0; i < IMG_SIZE; i++)
		shadow[i] = (uint8_t)tap_rand(&rng);
	if (pwrite(fd, shadow, IMG_SIZE, 0) != IMG_SIZE)
		tap_bail("pwrite");
	close(fd);
}

static bool file_matches_shadow(void)
{
	uint8_t *buf = malloc(IMG_SIZE);
	int fd = open(path, O_RDONLY);
	bool same = fd >= 0 && pread(fd, buf, IMG_SIZE, 0) == IMG_SIZE &&
		    memcmp(buf, shadow, IMG_SIZE) == 0;

	if (fd >= 0)
		close(fd);
	free(buf);
	return same;
}

/* A random range; aligned to 4 KiB half of the time so the fast path is exercised. */
static void pick_range(uint64_t *off, uint64_t *len)
{
	bool aligned = tap_rand(&rng) & 1;

	*len = 1 + tap_rand(&rng) % MAX_LEN;
	*off = tap_rand(&rng) % (IMG_SIZE - *len);
	if (aligned) {
		*off &= ~4095ull;
		*len = (*len + 4095) & ~4095ull;
	}
}

/* Splits a buffer into 1-3 iovecs; misaligns the memory sometimes to force bouncing. */
static void op_fill_iov(struct op *o)
{
	uint64_t first, second;
	size_t shift = (tap_rand(&rng) % 4 == 0) ? 1 : 0;

	if (posix_memalign((void **)&o->mem, 4096, o->len + 4096))
		tap_bail("posix_memalign");
	o->iovcnt = 1 + (int)(tap_rand(&rng) % 3);
	if (o->len < 3)
		o->iovcnt = 1;
	first = o->iovcnt > 1 ? ((o->len / 2) & ~(uint64_t)511) : o->len;
	o->iov[0] = (struct iovec){ o->mem + shift, first };
	if (o->iovcnt == 1)
		return;
	second = o->iovcnt == 3 ? (o->len - first) / 2 : o->len - first;
	o->iov[1] = (struct iovec){ o->mem + shift + first, second };
	if (o->iovcnt == 3)
		o->iov[2] = (struct iovec){ o->mem + shift + first + second,
					    o->len - first - second };
}

static bool overlaps_busy(struct op *ops, uint64_t off, uint64_t len)
{
	for (int i = 0; i < DEPTH; i++)
		if (ops[i].busy && off < ops[i].off + ops[i].len && ops[i].off < off + len)
			return true;
	return false;
}

static void op_cb(void *opaque, int ret)
{
	struct op *o = opaque;
	uint8_t *buf;

	if (ret < 0) {
		tap_diag("op %s %" PRIu64 "+%" PRIu64 " failed: %d", o->write ? "write" : "read",
			 o->off, o->len, ret);
		(*o->errors)++;
	} else if (!o->write) {
		buf = malloc(o->len);
		for (int i = 0, pos = 0; i < o->iovcnt; pos += (int)o->iov[i].iov_len, i++)
			memcpy(buf + pos, o->iov[i].iov_base, o->iov[i].iov_len);
		if (memcmp(buf, shadow + o->off, o->len)) {
			tap_diag("read %" PRIu64 "+%" PRIu64 " mismatch", o->off, o->len);
			(*o->errors)++;
		}
		free(buf);
	}
	free(o->mem);
	o->busy = false;
	(*o->done)++;
}

static void run_async(struct tblk_blk *blk, struct tblk_loop *loop, const char *mode)
{
	static struct op ops[DEPTH];
	int errors = 0, done = 0, submitted = 0;

	memset(ops, 0, sizeof(ops));
	for (int i = 0; i < DEPTH; i++) {
		ops[i].errors = &errors;
		ops[i].done = &done;
	}
	while (done < NR_OPS) {
		for (int i = 0; i < DEPTH && submitted < NR_OPS; i++) {
			uint64_t off, len;

			if (ops[i].busy)
				continue;
			pick_range(&off, &len);
			if (overlaps_busy(ops, off, len))
				continue;
			ops[i].off = off;
			ops[i].len = len;
			ops[i].write = tap_rand(&rng) % 2;
			ops[i].busy = true;
			op_fill_iov(&ops[i]);
			if (ops[i].write) {
				struct op *o = &ops[i];

				for (int k = 0, pos = 0; k < o->iovcnt;
				     pos += (int)o->iov[k].iov_len, k++) {
					for (size_t j = 0; j < o->iov[k].iov_len; j++)
						((uint8_t *)o->iov[k].iov_base)[j] =
							(uint8_t)tap_rand(&rng);
					memcpy(shadow + o->off + pos, o->iov[k].iov_base,
					       o->iov[k].iov_len);
				}
				tblk_blk_pwritev(blk, o->off, o->iov, o->iovcnt, 0, op_cb, o);
			} else {
				tblk_blk_preadv(blk, ops[i].off, ops[i].iov, ops[i].iovcnt, 0,
						op_cb, &ops[i]);
			}
			submitted++;
		}
		tblk_loop_iterate(loop, true);
	}
	is_int(errors, 0, "%s: %d async random requests complete and read back the shadow",
	       mode, NR_OPS);
}

static void run_sync(struct tblk_blk *blk, const char *mode)
{
	int errors = 0;

	for (int i = 0; i < 200; i++) {
		uint64_t off, len;
		uint8_t *buf;

		pick_range(&off, &len);
		buf = malloc(len);
		if (tap_rand(&rng) & 1) {
			for (uint64_t j = 0; j < len; j++)
				buf[j] = (uint8_t)tap_rand(&rng);
			memcpy(shadow + off, buf, len);
			errors += tblk_blk_pwrite(blk, off, buf, len, 0) < 0;
		} else {
			errors += tblk_blk_pread(blk, off, buf, len, 0) < 0 ||
				  memcmp(buf, shadow + off, len) != 0;
		}
		free(buf);
	}
	is_int(errors, 0, "%s: 200 sync random requests match the shadow", mode);
}

static void test_mode(const char *aio, const char *cache)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	GHashTable *opts = tblk_opts_new();
	struct tblk_blk *blk = NULL;
	GError *err = NULL;
	char mode[64], spec[400];
	unsigned int flags = TBLK_OPEN_RDWR;

	snprintf(mode, sizeof(mode), "aio=%s cache=%s", aio, cache);
	snprintf(spec, sizeof(spec), "driver=raw,file.driver=file,file.filename=%s,file.aio=%s",
		 path, aio);
	tblk_opts_parse(opts, spec, NULL, NULL);
	tblk_parse_cache_mode(cache, &flags, NULL);
	if (!ok(tblk_blk_open(&blk, NULL, opts, flags, loop, &err) == 0, "%s: open", mode)) {
		tap_diag("%s", err ? err->message : "?");
		g_clear_error(&err);
		tap_skip(3, "open failed");
		goto out;
	}
	run_async(blk, loop, mode);
	run_sync(blk, mode);
	is_int(tblk_blk_flush(blk), 0, "%s: flush", mode);
	tblk_blk_close(blk);
	ok(file_matches_shadow(), "%s: the file holds exactly the shadow", mode);
out:
	g_hash_table_destroy(opts);
	tblk_loop_free(loop);
}

static struct tblk_blk *open_plain(unsigned int flags)
{
	struct tblk_blk *blk = NULL;
	GHashTable *opts = tblk_opts_new();

	g_hash_table_insert(opts, g_strdup("driver"), g_strdup("raw"));
	if (tblk_blk_open(&blk, path, opts, flags, NULL, NULL) < 0)
		blk = NULL;
	g_hash_table_destroy(opts);
	return blk;
}

static void test_zeroes_discard_status(void)
{
	struct tblk_blk *blk = open_plain(TBLK_OPEN_RDWR);
	uint8_t *buf = malloc(1 << 20), *zero = calloc(1, 1 << 20);
	uint64_t pnum = 0, map = 0;
	int st;

	is_int(tblk_blk_pwrite_zeroes(blk, 1000, 300000, 0), 0, "write zeroes, unaligned");
	memset(shadow + 1000, 0, 300000);
	is_int(tblk_blk_pread(blk, 0, buf, 1 << 20, 0), 0, "read after write zeroes");
	ok(!memcmp(buf, shadow, 1 << 20), "write zeroes left zeroes and kept the edges");
	is_int(tblk_blk_pdiscard(blk, 1 << 20, 1 << 20), 0, "discard 1 MiB");
	is_int(tblk_blk_pwrite_zeroes(blk, 2 << 20, 1 << 20, TBLK_REQ_MAY_UNMAP), 0,
	       "write zeroes with unmap");
	memset(shadow + (2 << 20), 0, 1 << 20);
	is_int(tblk_blk_pread(blk, 2 << 20, buf, 1 << 20, 0), 0, "read unmapped range");
	ok(!memcmp(buf, zero, 1 << 20), "unmapped range reads as zeroes");
	st = tblk_blk_block_status(blk, 2 << 20, 1 << 20, &pnum, &map);
	ok(st >= 0 && (st & TBLK_BS_ZERO), "block status reports the punched hole as zero");
	is_int(pnum, 1 << 20, "the hole is 1 MiB long");
	/* The discarded range holds whatever the file system left: take it as the truth. */
	tblk_blk_pread(blk, 1 << 20, shadow + (1 << 20), 1 << 20, 0);
	st = tblk_blk_block_status(blk, 4 << 20, 4096, &pnum, &map);
	ok(st >= 0 && (st & TBLK_BS_DATA) && map == (4 << 20), "written range is data at its offset");
	tblk_blk_close(blk);
	free(buf);
	free(zero);
}

static void test_errors(void)
{
	struct tblk_blk *blk = open_plain(0);
	uint8_t buf[512];
	GHashTable *opts;
	GError *err = NULL;
	struct tblk_blk *b2 = NULL;
	char spec[400];

	ok(blk && tblk_blk_is_read_only(blk), "read-only open");
	is_int(tblk_blk_pwrite(blk, 0, buf, 512, 0), -EPERM, "write to read-only fails EPERM");
	is_int(tblk_blk_pread(blk, IMG_SIZE - 256, buf, 512, 0), -EIO,
	       "read crossing the end fails EIO");
	is_int(tblk_blk_pread(blk, IMG_SIZE, buf, 0, 0), 0, "empty read at the end is fine");
	is_int(tblk_blk_getlength(blk), IMG_SIZE, "length");
	tblk_blk_close(blk);
	ok(file_matches_shadow(), "nothing was written through the read-only backend");

	opts = tblk_opts_new();
	snprintf(spec, sizeof(spec), "driver=raw,file.filename=%s,file.aio=native", path);
	tblk_opts_parse(opts, spec, NULL, NULL);
	ok(tblk_blk_open(&b2, NULL, opts, 0, NULL, &err) < 0 && err &&
	   strstr(err->message, "requires cache.direct=on"), "aio=native needs cache.direct");
	g_clear_error(&err);
	g_hash_table_remove_all(opts);
	snprintf(spec, sizeof(spec), "driver=raw,file.filename=%s,bogus=1", path);
	tblk_opts_parse(opts, spec, NULL, NULL);
	ok(tblk_blk_open(&b2, NULL, opts, 0, NULL, &err) < 0 && err &&
	   !strcmp(err->message, "Block format 'raw' does not support the option 'bogus'"),
	   "unknown format option is named");
	g_clear_error(&err);
	g_hash_table_remove_all(opts);
	snprintf(spec, sizeof(spec), "driver=raw,file.filename=%s,file.bogus=1", path);
	tblk_opts_parse(opts, spec, NULL, NULL);
	ok(tblk_blk_open(&b2, NULL, opts, 0, NULL, &err) < 0 && err &&
	   !strcmp(err->message, "Block protocol 'file' doesn't support the option 'bogus'"),
	   "unknown protocol option is named");
	g_clear_error(&err);
	g_hash_table_remove_all(opts);
	snprintf(spec, sizeof(spec), "driver=raw,file.filename=%s,cache.direct=maybe", path);
	tblk_opts_parse(opts, spec, NULL, NULL);
	ok(tblk_blk_open(&b2, NULL, opts, 0, NULL, &err) < 0 && err &&
	   strstr(err->message, "cache.direct"), "bad boolean is named");
	g_clear_error(&err);
	ok(tblk_blk_open(&b2, "/nonexistent/x.img", NULL, 0, NULL, &err) < 0 && err &&
	   strstr(err->message, "No such file or directory"), "missing file");
	g_clear_error(&err);
	g_hash_table_destroy(opts);
}

/* raw's offset/size options: a window onto the file, checked against the file's end. */
static void test_raw_window(void)
{
	GHashTable *opts = tblk_opts_new();
	struct tblk_blk *blk = NULL;
	GError *err = NULL;
	uint8_t buf[4096];
	char spec[400];

	snprintf(spec, sizeof(spec), "driver=raw,offset=4096,size=8192,file.filename=%s", path);
	tblk_opts_parse(opts, spec, NULL, NULL);
	is_int(tblk_blk_open(&blk, NULL, opts, TBLK_OPEN_RDWR, NULL, &err), 0, "raw window open");
	is_int(tblk_blk_getlength(blk), 8192, "window length is the size option");
	is_int(tblk_blk_pread(blk, 4096, buf, 4096, 0), 0, "read inside the window");
	ok(!memcmp(buf, shadow + 8192, 4096), "window offset 4096 is file offset 8192");
	memset(buf, 0x5a, sizeof(buf));
	is_int(tblk_blk_pwrite(blk, 0, buf, 4096, 0), 0, "write inside the window");
	memcpy(shadow + 4096, buf, 4096);
	is_int(tblk_blk_pread(blk, 8192, buf, 1, 0), -EIO, "read past the window fails");
	ok(tblk_blk_truncate(blk, 4096, NULL, &err) < 0 && err, "a window cannot be resized");
	g_clear_error(&err);
	tblk_blk_close(blk);
	ok(file_matches_shadow(), "the window wrote where it should and nowhere else");
	g_hash_table_remove_all(opts);
	snprintf(spec, sizeof(spec), "driver=raw,offset=%u,size=4096,file.filename=%s",
		 IMG_SIZE - 100, path);
	tblk_opts_parse(opts, spec, NULL, NULL);
	ok(tblk_blk_open(&blk, NULL, opts, 0, NULL, &err) < 0 && err &&
	   strstr(err->message, "has to be smaller or equal"), "window beyond the file refused");
	g_clear_error(&err);
	g_hash_table_destroy(opts);
}

static void test_truncate(void)
{
	struct tblk_blk *blk = open_plain(TBLK_OPEN_RDWR);
	GError *err = NULL;

	is_int(tblk_blk_truncate(blk, IMG_SIZE + 65536, NULL, &err), 0, "grow");
	is_int(tblk_blk_getlength(blk), IMG_SIZE + 65536, "grown length");
	/* As qemu: preallocation only grows. */
	is_int(tblk_blk_truncate(blk, IMG_SIZE, "falloc", &err), -ENOTSUP,
	       "no shrinking with preallocation");
	g_clear_error(&err);
	is_int(tblk_blk_truncate(blk, IMG_SIZE, NULL, &err), 0, "shrink back");
	is_int(tblk_blk_getlength(blk), IMG_SIZE, "length after shrink");
	tblk_blk_close(blk);
}

int main(void)
{
	static const char *const modes[][2] = {
		{ "threads", "writeback" }, { "threads", "none" }, { "native", "none" },
		{ "io_uring", "none" }, { "io_uring", "writeback" }, { "threads", "writethrough" },
	};

	rng = tap_seed(0x5eed);
	make_image();
	for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++)
		test_mode(modes[i][0], modes[i][1]);
	test_zeroes_discard_status();
	test_errors();
	test_raw_window();
	test_truncate();
	unlink(path);
	free(shadow);
	return tap_done();
}
