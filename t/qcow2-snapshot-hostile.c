/* SPDX-License-Identifier: MIT */
/*
 * qcow2-snapshot-hostile.c - internal snapshots through the library API, and snapshot tables
 * with broken fields:
 * - create, list, goto and delete through tblk_blk_snapshot_*, with the data each snapshot
 *   held read back after goto;
 * - a table with one field broken (count, offset, extra data size, id/name lengths, a
 *   snapshot's L1 size, offset and entries) is refused at open with -EUCLEAN/-EFBIG/-EINVAL,
 *   or, where qemu opens such images too, refused by goto and delete without a change to
 *   the file; random damage to the table never crashes or hangs; a read-only open never
 *   writes.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tracked/tracked.h"
#include "t/tap.h"

#define CLUSTER	4096

static char path[256];

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

static uint32_t get32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static uint64_t get64(const uint8_t *p)
{
	return ((uint64_t)get32(p) << 32) | get32(p + 4);
}

static void put(uint8_t *p, int width, uint64_t v)
{
	for (int i = width - 1; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

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

static int fill(struct tblk_blk *blk, uint64_t off, int pattern, size_t len)
{
	g_autofree uint8_t *buf = g_malloc(len);

	memset(buf, pattern, len);
	return tblk_blk_pwrite(blk, off, buf, len, 0);
}

static int verify(struct tblk_blk *blk, uint64_t off, int pattern, size_t len)
{
	g_autofree uint8_t *buf = g_malloc(len);

	if (tblk_blk_pread(blk, off, buf, len, 0) < 0)
		return -1;
	for (size_t i = 0; i < len; i++)
		if (buf[i] != pattern)
			return 1;
	return 0;
}

static int snap(struct tblk_blk *blk, const char *name, uint32_t date)
{
	struct tblk_snapshot_info sn = { .name = (char *)name, .date_sec = date,
					 .date_nsec = 5000, .vm_clock_nsec = 0, .icount = 0 };
	GError *err = NULL;
	int ret = tblk_blk_snapshot_create(blk, &sn, &err);

	if (ret < 0)
		tap_diag("snapshot create: %s", err ? err->message : "?");
	g_clear_error(&err);
	return ret;
}

/* Builds the image the breakages start from: two snapshots, data differing in each. */
static void test_api(void)
{
	GHashTable *opts = tblk_opts_new();
	struct tblk_snapshot_info *sn = NULL;
	struct tblk_blk *blk;
	GError *err = NULL;
	int n = 0;

	g_hash_table_insert(opts, g_strdup("cluster_size"), g_strdup("4096"));
	ok(tblk_img_create(path, "qcow2", 1 << 20, opts, &err) == 0, "create an image");
	g_clear_error(&err);
	g_hash_table_unref(opts);
	blk = open_image(path, true, NULL);
	if (!blk)
		tap_bail("open");
	ok(fill(blk, 0, 0x11, 3 * CLUSTER) == 0, "write pattern 0x11");
	ok(snap(blk, "one", 1000) == 0, "snapshot 'one'");
	ok(fill(blk, CLUSTER, 0x22, CLUSTER) == 0, "overwrite a shared cluster with 0x22");
	ok(fill(blk, 200 * CLUSTER, 0x33, CLUSTER) == 0, "write a new cluster with 0x33");
	ok(snap(blk, "two", 2000) == 0, "snapshot 'two'");
	ok(fill(blk, 0, 0x44, 2 * CLUSTER) == 0, "overwrite with 0x44");
	ok(tblk_blk_snapshot_list(blk, &sn, &n) == 0 && n == 2, "two snapshots listed (%d)", n);
	if (n == 2) {
		ok(!strcmp(sn[0].id, "1") && !strcmp(sn[0].name, "one") && sn[0].date_sec == 1000 &&
		   sn[0].date_nsec == 5000 && sn[0].disk_size == 1 << 20 && sn[0].icount == 0 &&
		   sn[0].vm_state_size == 0, "first entry as created");
		ok(!strcmp(sn[1].id, "2") && !strcmp(sn[1].name, "two"), "second entry as created");
	}
	tblk_snapshot_list_free(sn, n);
	ok(tblk_blk_snapshot_goto(blk, "nope", &err) == -ENOENT, "goto an unknown snapshot: "
	   "-ENOENT");
	g_clear_error(&err);
	ok(tblk_blk_snapshot_goto(blk, "one", &err) == 0, "goto 'one'");
	g_clear_error(&err);
	ok(verify(blk, 0, 0x11, 3 * CLUSTER) == 0 && verify(blk, 200 * CLUSTER, 0, CLUSTER) == 0,
	   "'one' reads back");
	ok(tblk_blk_snapshot_goto(blk, "2", &err) == 0, "goto id 2");
	g_clear_error(&err);
	ok(verify(blk, 0, 0x11, CLUSTER) == 0 && verify(blk, CLUSTER, 0x22, CLUSTER) == 0 &&
	   verify(blk, 200 * CLUSTER, 0x33, CLUSTER) == 0, "'two' reads back");
	ok(fill(blk, CLUSTER, 0x55, 512) == 0 && verify(blk, 0, 0x11, CLUSTER) == 0 &&
	   verify(blk, CLUSTER + 512, 0x22, CLUSTER - 512) == 0, "a write after goto is COWed");
	ok(tblk_blk_snapshot_delete(blk, NULL, "nope", &err) == -ENOENT, "delete unknown: "
	   "-ENOENT");
	g_clear_error(&err);
	tblk_blk_close(blk);
	blk = open_image(path, true, NULL);
	ok(blk && tblk_blk_snapshot_goto(blk, "two", &err) == 0 &&
	   verify(blk, CLUSTER, 0x22, CLUSTER) == 0, "after reopen, 'two' unchanged by the COW");
	g_clear_error(&err);
	tblk_blk_close(blk);
	blk = open_image(path, true, NULL);
	ok(blk && tblk_blk_snapshot_load_tmp(blk, NULL, "one", &err) == -EINVAL,
	   "load_tmp refused on a writable image");
	g_clear_error(&err);
	tblk_blk_close(blk);
	blk = open_image(path, false, NULL);
	ok(blk && tblk_blk_snapshot_load_tmp(blk, NULL, "nope", &err) == -ENOENT,
	   "load_tmp of an unknown snapshot: -ENOENT");
	g_clear_error(&err);
	ok(blk && tblk_blk_snapshot_load_tmp(blk, "1", NULL, &err) == 0 &&
	   verify(blk, 0, 0x11, 3 * CLUSTER) == 0 && verify(blk, 200 * CLUSTER, 0, CLUSTER) == 0,
	   "load_tmp of id 1 reads snapshot 'one'");
	g_clear_error(&err);
	tblk_blk_close(blk);
	blk = open_image(path, false, NULL);
	ok(blk && verify(blk, CLUSTER, 0x22, CLUSTER) == 0, "the image itself is unchanged");
	tblk_blk_close(blk);
}

/* Opens read-only and lists; 0 if that worked, else the error. The file must not change. */
static int try_open(const char *file, const char *what)
{
	uint64_t before = file_sum(file);
	struct tblk_snapshot_info *sn = NULL;
	struct tblk_blk *blk;
	GError *err = NULL;
	int ret = 0, n = 0;

	blk = open_image(file, false, &err);
	if (!blk) {
		ret = err ? -err->code : -EIO;
		if (what)
			tap_diag("%s: %s", what, err ? err->message : "?");
		g_clear_error(&err);
	} else {
		ret = tblk_blk_snapshot_list(blk, &sn, &n);
		tblk_snapshot_list_free(sn, n);
		tblk_blk_close(blk);
	}
	if (file_sum(file) != before)
		ok(0, "read-only open changed the file");
	return ret;
}

struct breakage {
	const char *what;
	int rel;		/* 0: header field; 1: field of the first snapshot entry */
	uint32_t off;
	int width;
	uint64_t val;
	int err;		/* expected open error, 0: opens; then goto/delete must fail */
};

static const struct breakage breakages[] = {
	{ "more snapshots than qemu allows", 0, 60, 4, 65537, -EINVAL },
	{ "more snapshots than the table holds", 0, 60, 4, 5000, -EUCLEAN },
	{ "table offset unaligned", 0, 64, 8, 0x10008, -EINVAL },
	{ "table offset far past the end", 0, 64, 8, 1ull << 60, -EUCLEAN },
	{ "table offset 2^64 - 1 cluster", 0, 64, 8, ~(uint64_t)(CLUSTER - 1), -EINVAL },
	{ "extra data size 2^32 - 1", 1, 36, 4, 0xffffffffu, -EFBIG },
	{ "extra data size 1025", 1, 36, 4, 1025, -EFBIG },
	{ "id length 65535", 1, 12, 2, 0xffff, -EUCLEAN },
	{ "name length 65535", 1, 14, 2, 0xffff, -EUCLEAN },
	{ "snapshot L1 size 2^32 - 1", 1, 8, 4, 0xffffffffu, 0 },
	{ "snapshot L1 size past the end of the file", 1, 8, 4, 4000000, 0 },
	{ "snapshot L1 offset unaligned", 1, 0, 8, 0x3004, 0 },
	{ "snapshot L1 offset far past the end", 1, 0, 8, 1ull << 55, 0 },
	{ "snapshot L1 offset 2^64 - 1 cluster", 1, 0, 8, ~(uint64_t)(CLUSTER - 1), 0 },
};

/* The image opens; goto and delete of the first snapshot fail and leave the file alone. */
static void broken_l1(const char *file, const char *what)
{
	struct tblk_blk *blk = open_image(file, true, NULL);
	GError *err = NULL;
	uint64_t before;
	int r1, r2;

	if (!blk) {
		ok(0, "%s: opens read-write", what);
		return;
	}
	before = file_sum(file);
	r1 = tblk_blk_snapshot_goto(blk, "1", &err);
	g_clear_error(&err);
	r2 = tblk_blk_snapshot_delete(blk, "1", NULL, &err);
	if (err)
		tap_diag("%s: %s", what, err->message);
	g_clear_error(&err);
	ok(r1 < 0 && r2 < 0, "%s: goto (%d) and delete (%d) refused", what, r1, r2);
	tblk_blk_close(blk);
	ok(file_sum(file) == before, "%s: file unchanged", what);
}

static void test_breakages(void)
{
	g_autofree uint8_t *good = NULL;
	char bad[300];
	gsize glen;
	uint64_t table;

	snprintf(bad, sizeof(bad), "%s.bad", path);
	g_file_get_contents(path, (char **)&good, &glen, NULL);
	table = get64(good + 64);
	ok(get32(good + 60) == 2 && table && table < glen, "the good image has 2 snapshots");
	for (size_t i = 0; i < TBLK_ARRAY_SIZE(breakages); i++) {
		const struct breakage *b = &breakages[i];
		g_autofree uint8_t *img = g_memdup2(good, glen);
		int ret;

		put(img + (b->rel ? table : 0) + b->off, b->width, b->val);
		g_file_set_contents(bad, (char *)img, (gssize)glen, NULL);
		ret = try_open(bad, b->what);
		ok(ret == b->err, "%s: open gives %d (%d expected)", b->what, ret, b->err);
		if (!b->err)
			broken_l1(bad, b->what);
	}
	/* The snapshot's L1 table pointing at an unaligned L2 table or at garbage. */
	{
		g_autofree uint8_t *img = g_memdup2(good, glen);
		uint64_t l1 = get64(good + table);

		put(img + l1, 8, 0x8000000000000000ull | 0x2200);
		g_file_set_contents(bad, (char *)img, (gssize)glen, NULL);
		ok(try_open(bad, NULL) == 0, "snapshot L1 entry unaligned: opens");
		broken_l1(bad, "snapshot L1 entry unaligned");
	}
}

/* Random damage to the snapshot table, then open, list, goto and delete: no crash. */
static void test_random(void)
{
	g_autofree uint8_t *good = NULL;
	char bad[300];
	uint64_t seed = tap_seed(7), table;
	int opened = 0, refused = 0;
	gsize glen;

	snprintf(bad, sizeof(bad), "%s.bad", path);
	g_file_get_contents(path, (char **)&good, &glen, NULL);
	table = get64(good + 64);
	for (int r = 0; r < 150; r++) {
		g_autofree uint8_t *img = g_memdup2(good, glen);
		struct tblk_blk *blk;
		GError *err = NULL;

		for (int k = 0; k < 4; k++)
			img[table + tap_rand(&seed) % 160] = (uint8_t)tap_rand(&seed);
		g_file_set_contents(bad, (char *)img, (gssize)glen, NULL);
		if (try_open(bad, NULL) < 0) {
			refused++;
			continue;
		}
		opened++;
		blk = open_image(bad, true, &err);
		g_clear_error(&err);
		if (!blk)
			continue;
		(void)tblk_blk_snapshot_goto(blk, "1", &err);
		g_clear_error(&err);
		(void)tblk_blk_snapshot_delete(blk, NULL, "two", &err);
		g_clear_error(&err);
		tblk_blk_close(blk);
	}
	ok(opened + refused == 150, "150 damaged tables: %d opened, %d refused, no crash", opened,
	   refused);
	unlink(bad);
}

int main(void)
{
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	int fd;

	snprintf(path, sizeof(path), "%s/tblk-qcow2-snap-XXXXXX", tmp);
	fd = mkstemp(path);
	if (fd < 0)
		tap_bail("mkstemp");
	close(fd);
	test_api();
	test_breakages();
	test_random();
	unlink(path);
	return tap_done();
}
