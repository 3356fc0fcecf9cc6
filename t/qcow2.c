/* SPDX-License-Identifier: MIT */
/*
 * qcow2.c - the qcow2 driver under concurrency and hostile input:
 * - threads write, zero, discard, read and flush one image at once, on bytes each thread
 *   owns but in clusters they share (allocations race), checked against a shadow copy, after
 *   a reopen, and by `qemu-img check`;
 * - images with one header or table field broken fail to open or fail the request with an
 *   error, never crash, and a read-only open leaves the file unchanged.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tracked/tracked.h"
#include "t/tap.h"

#define NR_THREADS	4
#define CLUSTER		4096
#define SIZE		(4u << 20)
#define HALF		(SIZE / 2)
#define ROUNDS		600

static char path[256];
static uint8_t *shadow;

struct worker {
	struct tblk_blk *blk;
	int id;
	uint64_t seed;
	int errors;
	int mismatches;
};

static int check_own(struct worker *w, uint64_t off, uint64_t len)
{
	g_autofree uint8_t *buf = g_malloc(len);

	if (tblk_blk_pread(w->blk, off, buf, len, 0) < 0)
		return -1;
	return memcmp(buf, shadow + off, len) ? 1 : 0;
}

/*
 * Lower half: thread t owns the 512-byte sectors s with s % NR_THREADS == t (sub-cluster
 * writes into shared clusters). Upper half: it owns the clusters c with c % NR_THREADS == t
 * (multi-sector writes, zeroes, discards).
 */
static void *worker_main(void *arg)
{
	struct worker *w = arg;
	uint8_t buf[2 * CLUSTER];

	for (int r = 0; r < ROUNDS; r++) {
		uint64_t k = tap_rand(&w->seed) % 100, off, len;
		int ret = 0;

		if (k < 45) {
			off = ((tap_rand(&w->seed) % (HALF / 512 / NR_THREADS)) * NR_THREADS +
			       (uint64_t)w->id) * 512;
			len = 512;
		} else {
			uint64_t c = (tap_rand(&w->seed) % (HALF / CLUSTER / NR_THREADS)) *
				     NR_THREADS + (uint64_t)w->id;

			off = HALF + c * CLUSTER;
			len = CLUSTER;
			if (k < 70) {
				uint64_t a = (tap_rand(&w->seed) % 8) * 512;

				off += a;
				len = (tap_rand(&w->seed) % ((CLUSTER - a) / 512) + 1) * 512;
			}
		}
		if (k < 80) {
			memset(buf, (int)(tap_rand(&w->seed) % 255 + 1), len);
			ret = tblk_blk_pwrite(w->blk, off, buf, len, 0);
			memcpy(shadow + off, buf, len);
		} else if (k < 88) {
			ret = tblk_blk_pwrite_zeroes(w->blk, off, len,
						     (k & 1) ? TBLK_REQ_MAY_UNMAP : 0);
			memset(shadow + off, 0, len);
		} else if (k < 93 && off >= HALF) {
			off = TBLK_ALIGN_DOWN(off, CLUSTER);
			ret = tblk_blk_pdiscard(w->blk, off, CLUSTER);
			memset(shadow + off, 0, CLUSTER);	/* no backing file: reads zeroes */
		} else if (k < 95) {
			ret = tblk_blk_flush(w->blk);
		} else {
			int m = check_own(w, off, len);

			ret = m < 0 ? -EIO : 0;
			w->mismatches += m > 0;
		}
		if (ret < 0)
			w->errors++;
	}
	return NULL;
}

static struct tblk_blk *open_image(const char *file, bool rw, GError **err)
{
	GHashTable *opts = tblk_opts_new();
	struct tblk_blk *blk = NULL;

	g_hash_table_insert(opts, g_strdup("driver"), g_strdup("qcow2"));
	if (tblk_blk_open(&blk, file, opts, rw ? TBLK_OPEN_RDWR : 0, NULL, err) < 0)
		blk = NULL;
	g_hash_table_unref(opts);
	return blk;
}

static int create_image(const char *file, uint64_t size, const char *cluster)
{
	GHashTable *opts = tblk_opts_new();
	GError *err = NULL;
	int ret;

	g_hash_table_insert(opts, g_strdup("cluster_size"), g_strdup(cluster));
	ret = tblk_img_create(file, "qcow2", size, opts, &err);
	if (ret < 0)
		tap_diag("create: %s", err->message);
	g_clear_error(&err);
	g_hash_table_unref(opts);
	return ret;
}

static void test_stress(uint64_t seed)
{
	struct worker w[NR_THREADS];
	pthread_t th[NR_THREADS];
	struct tblk_blk *blk;
	GError *err = NULL;
	int errors = 0, mism = 0;
	char cmd[600];

	shadow = g_malloc0(SIZE);
	ok(create_image(path, SIZE, "4096") == 0, "create a 4 MiB image with 4 KiB clusters");
	blk = open_image(path, true, &err);
	if (!blk)
		tap_bail(err->message);
	for (int i = 0; i < NR_THREADS; i++) {
		w[i] = (struct worker){ .blk = blk, .id = i, .seed = seed + (uint64_t)i * 7919 };
		pthread_create(&th[i], NULL, worker_main, &w[i]);
	}
	for (int i = 0; i < NR_THREADS; i++) {
		pthread_join(th[i], NULL);
		errors += w[i].errors;
		mism += w[i].mismatches;
	}
	is_int(errors, 0, "no request failed under %d threads", NR_THREADS);
	is_int(mism, 0, "every thread read back what it wrote while others allocated");
	ok(tblk_blk_flush(blk) == 0, "flush");
	tblk_blk_close(blk);
	blk = open_image(path, false, &err);
	if (!blk)
		tap_bail(err->message);
	{
		g_autofree uint8_t *all = g_malloc(SIZE);
		size_t first = SIZE;

		ok(tblk_blk_pread(blk, 0, all, SIZE, 0) == 0, "read the whole image after reopen");
		for (size_t i = 0; i < SIZE && first == SIZE; i++)
			if (all[i] != shadow[i])
				first = i;
		if (!ok(first == SIZE, "the image matches the shadow copy"))
			tap_diag("first difference at %zu", first);
	}
	tblk_blk_close(blk);
	snprintf(cmd, sizeof(cmd), "qemu-img check -q '%s'", path);
	is_int(system(cmd), 0, "qemu-img check finds no errors and no leaks");
	g_free(shadow);
}

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

/* A broken field: at @off, 4 or 8 bytes of @val. */
struct breakage {
	const char *what;
	uint32_t off;
	int width;
	uint64_t val;
};

static const struct breakage breakages[] = {
	{ "bad magic", 0, 4, 0x514649fa },
	{ "version 1", 4, 4, 1 },
	{ "version 4", 4, 4, 4 },
	{ "cluster_bits 8", 20, 4, 8 },
	{ "cluster_bits 31", 20, 4, 31 },
	{ "backing name offset past the cluster", 8, 8, 1u << 20 },
	{ "encrypted", 32, 4, 1 },
	{ "L1 size 2^31", 36, 4, 0x80000000u },
	{ "L1 too small for the size", 36, 4, 0 },
	{ "L1 offset unaligned", 40, 8, 0x30001 },
	{ "L1 offset far past the end", 40, 8, 1ull << 60 },
	{ "refcount table offset 0", 48, 8, 0 },
	{ "refcount table offset unaligned", 48, 8, 4097 },
	{ "refcount table of 2^31 clusters", 56, 4, 0x80000000u },
	{ "too many snapshots", 60, 4, 0x7fffffff },
	{ "unknown incompatible feature", 72, 8, 1ull << 40 },
	{ "virtual size 2^63", 24, 8, 1ull << 63 },
	{ "refcount order 7", 96, 4, 7 },
	{ "header length 4 GiB", 100, 4, 0xffffffffu },
	{ "header length 50", 100, 4, 50 },
	{ "compression type 9", 104, 4, 0x09000000u },
};

static uint64_t file_sum(const char *file)
{
	g_autofree char *data = NULL;
	gsize len = 0;
	uint64_t h = 1469598103934665603ull;

	if (!g_file_get_contents(file, &data, &len, NULL))
		return 0;
	for (gsize i = 0; i < len; i++)
		h = (h ^ (uint8_t)data[i]) * 1099511628211ull;
	return h ^ len;
}

/* Opens read-only and reads everything; returns 0 if all worked, else the first error. */
static int try_image(const char *file)
{
	struct tblk_blk *blk;
	GError *err = NULL;
	int64_t len;
	int ret = 0;

	blk = open_image(file, false, &err);
	if (!blk) {
		ret = err && err->message[0] ? -err->code : -EIO;
		g_clear_error(&err);
		return ret ? ret : -EIO;
	}
	len = tblk_blk_getlength(blk);
	for (uint64_t off = 0; len > 0 && off < (uint64_t)len && ret == 0; off += 1 << 20) {
		static uint8_t buf[1 << 20];

		ret = tblk_blk_pread(blk, off, buf, TBLK_MIN((uint64_t)len - off, sizeof(buf)), 0);
	}
	tblk_blk_close(blk);
	return ret;
}

static void test_hostile(void)
{
	g_autofree char *good = NULL;
	gsize glen;
	char bad[300];
	int fd;

	snprintf(bad, sizeof(bad), "%s.bad", path);
	ok(create_image(path, 8 << 20, "4096") == 0, "create an image to break");
	{
		struct tblk_blk *blk = open_image(path, true, NULL);
		uint8_t buf[8192];

		memset(buf, 0x5a, sizeof(buf));
		ok(blk && tblk_blk_pwrite(blk, 0, buf, sizeof(buf), 0) == 0, "fill two clusters");
		tblk_blk_close(blk);
	}
	g_file_get_contents(path, &good, &glen, NULL);
	for (size_t i = 0; i < TBLK_ARRAY_SIZE(breakages); i++) {
		const struct breakage *b = &breakages[i];
		g_autofree uint8_t *img = g_memdup2(good, glen);
		uint64_t before;
		int ret;

		if (b->width == 4)
			put32(img + b->off, (uint32_t)b->val);
		else
			put64(img + b->off, b->val);
		g_file_set_contents(bad, (char *)img, (gssize)glen, NULL);
		before = file_sum(bad);
		ret = try_image(bad);
		ok(ret < 0, "%s: refused (%d)", b->what, ret);
		ok(file_sum(bad) == before, "%s: file unchanged", b->what);
	}
	/* Tables pointing at bad places: L1 entry and L2 entry unaligned (beyond the reserved low
	 * bits, which qemu ignores), refcount block. */
	{
		uint32_t l1 = 3 * 4096, l2;
		g_autofree uint8_t *img = g_memdup2(good, glen);

		l2 = (uint32_t)(((uint64_t)img[l1 + 6] << 8 | img[l1 + 7]) & ~511u);
		l2 |= (uint32_t)img[l1 + 5] << 16;
		put64(img + l1, 0x8000000000000000ull | (l2 + 512));
		g_file_set_contents(bad, (char *)img, (gssize)glen, NULL);
		ok(try_image(bad) < 0, "unaligned L2 table offset: read fails");
		memcpy(img, good, glen);
		put64(img + l2, 0x8000000000000000ull | 0x1234);
		g_file_set_contents(bad, (char *)img, (gssize)glen, NULL);
		ok(try_image(bad) < 0, "unaligned data cluster offset: read fails");
		memcpy(img, good, glen);
		put64(img + l2, 0x4000000000000000ull | (0x3fffull << 50) | 0xffff);
		g_file_set_contents(bad, (char *)img, (gssize)glen, NULL);
		ok(try_image(bad) < 0, "compressed cluster of garbage: read fails");
	}
	/* Random bytes over the header area, many times: no crash, no hang. */
	{
		uint64_t seed = 99;
		int refused = 0;

		for (int r = 0; r < 200; r++) {
			g_autofree uint8_t *img = g_memdup2(good, glen);

			for (int k = 0; k < 8; k++)
				img[tap_rand(&seed) % 512] = (uint8_t)tap_rand(&seed);
			g_file_set_contents(bad, (char *)img, (gssize)glen, NULL);
			refused += try_image(bad) < 0;
		}
		ok(refused > 0, "200 randomly damaged headers opened or refused without a crash "
		   "(%d refused)", refused);
	}
	fd = open(bad, O_RDONLY);
	ok(fd >= 0, "the damaged file is still there");
	if (fd >= 0)
		close(fd);
	unlink(bad);
}

int main(void)
{
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	uint64_t seed = tap_seed(2026);
	int fd;

	snprintf(path, sizeof(path), "%s/tblk-qcow2-XXXXXX", tmp);
	fd = mkstemp(path);
	if (fd < 0)
		tap_bail("mkstemp");
	close(fd);
	test_stress(seed);
	test_hostile();
	unlink(path);
	return tap_done();
}
