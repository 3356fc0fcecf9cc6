/* SPDX-License-Identifier: MIT */
/*
 * fuzz-qcow2.c - fuzz target for the qcow2 driver: an input is an image file. It is written
 * to a file in a private temporary directory and opened through the library, first read-only
 * (info, snapshot list, reads at a few offsets, a block-status walk, a check without repair,
 * as `qemu-img check` does), then, on a private copy, read-write (writes, zero writes, a
 * discard, a compressed write, reverting to and deleting a snapshot, taking one, a flush,
 * `check -r all`). Backing files are not followed ("backing=", none) unless the
 * image names "base.qcow2", which is a small image of ours in the same directory; an external
 * data file is always ours too, so nothing outside the directory is ever opened.
 * Invariants: no crash, leak or undefined behaviour (the sanitizers watch), no hang or huge
 * allocation (libFuzzer's -timeout and -malloc_limit_mb), and the read-only pass changes
 * neither the image nor its data file by a single byte.
 *
 * Built normally it is a TAP test that replays the seeds in t/corpus/qcow2/ (found via
 * $TBLK_SRC) and seeded mutations of them ($TBLK_FUZZ_MUTATIONS, default 3000), or, given
 * file names, just those inputs (a libFuzzer artifact, say). Seeds named v* are images made
 * by qemu-img (make-seeds.sh) and must open and read; crash-* reproduce fixed bugs. With
 * libFuzzer: `make check-fuzz`, or by hand in a build configured with --enable-fuzzer:
 *   make fuzz/fuzz-qcow2 && ./fuzz/fuzz-qcow2 CORPUS-COPY-DIR
 */
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "tblk/tblk.h"
#include "common/common.h"
#ifndef TBLK_LIBFUZZER
#include "t/tap.h"
#endif

#define DATA_FILE_SIZE	(256u << 10)
#define IO_MAX		(64u << 10)
#define STATUS_STEPS	64
#define FILE_MAX	(1ull << 30)

static char *dir, *img_path, *rw_path, *data_path, *rw_data_path, *base_path;
static uint8_t *data_pattern;

static void cleanup(void)
{
	const char *const files[] = { img_path, rw_path, data_path, rw_data_path, base_path };

	for (size_t i = 0; i < TBLK_ARRAY_SIZE(files); i++)
		if (files[i])
			unlink(files[i]);
	if (dir)
		rmdir(dir);
	g_free(img_path);
	g_free(rw_path);
	g_free(data_path);
	g_free(rw_data_path);
	g_free(base_path);
	g_free(dir);
	g_free(data_pattern);
}

static int put_file(const char *path, const uint8_t *data, size_t size)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	size_t done = 0;

	if (fd < 0)
		return -1;
	while (done < size) {
		ssize_t n = write(fd, data + done, size - done);

		if (n <= 0) {
			close(fd);
			return -1;
		}
		done += (size_t)n;
	}
	return close(fd);
}

/* True if the file at @path holds exactly @size bytes equal to @data. */
static bool same_file(const char *path, const uint8_t *data, size_t size)
{
	gchar *buf;
	gsize len;
	bool same;

	if (!g_file_get_contents(path, &buf, &len, NULL))
		return false;
	same = len == size && !memcmp(buf, data, size);
	g_free(buf);
	return same;
}

static void setup(void)
{
	GError *err = NULL;
	struct tblk_blk *blk;
	struct rlimit lim;
	GHashTable *o;

	if (dir)
		return;
	/*
	 * A write through a corrupt L2 entry goes where the entry says, as in qemu: up to
	 * 2^56 into a sparse file, which a disk filesystem refuses (ext4: EFBIG past 16 TiB)
	 * but tmpfs takes, and a check then sizes its tables by the file. Files here stop at
	 * 1 GiB (writes past it fail with EFBIG instead of raising SIGXFSZ).
	 */
	signal(SIGXFSZ, SIG_IGN);
	if (getrlimit(RLIMIT_FSIZE, &lim) < 0)
		abort();
	if (lim.rlim_cur > FILE_MAX) {
		lim.rlim_cur = FILE_MAX;
		if (setrlimit(RLIMIT_FSIZE, &lim) < 0)
			abort();
	}
	/* tmpfs if there is one: truncating files on a disk costs more than a run. */
	if (access("/dev/shm", W_OK) == 0) {
		dir = g_strdup("/dev/shm/tblk-fuzz-qcow2.XXXXXX");
		if (!g_mkdtemp(dir))
			g_clear_pointer(&dir, g_free);
	}
	if (!dir)
		dir = g_dir_make_tmp("tblk-fuzz-qcow2.XXXXXX", NULL);
	if (!dir)
		abort();
	atexit(cleanup);
	img_path = g_build_filename(dir, "image.qcow2", NULL);
	rw_path = g_build_filename(dir, "rw.qcow2", NULL);
	data_path = g_build_filename(dir, "data.raw", NULL);
	rw_data_path = g_build_filename(dir, "rw-data.raw", NULL);
	base_path = g_build_filename(dir, "base.qcow2", NULL);
	data_pattern = g_malloc(DATA_FILE_SIZE);
	for (size_t i = 0; i < DATA_FILE_SIZE; i++)
		data_pattern[i] = (uint8_t)(i * 7 + (i >> 9));
	if (put_file(data_path, data_pattern, DATA_FILE_SIZE) < 0)
		abort();
	/* The one backing file an image may name: 64 KiB, 512-byte clusters, half written. */
	o = tblk_opts_new();
	g_hash_table_insert(o, g_strdup("cluster_size"), g_strdup("512"));
	if (tblk_img_create(base_path, "qcow2", 64 << 10, o, &err) < 0)
		abort();
	g_hash_table_remove_all(o);
	g_hash_table_insert(o, g_strdup("driver"), g_strdup("qcow2"));
	if (tblk_blk_open(&blk, base_path, o, TBLK_OPEN_RDWR | TBLK_OPEN_NO_FLUSH, NULL, &err) < 0 ||
	    tblk_blk_pwrite(blk, 0, data_pattern, 32 << 10, 0) < 0)
		abort();
	tblk_blk_close(blk);
	g_hash_table_destroy(o);
}

static uint32_t be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Open options for the input: our data file if the header asks for one; no backing file
 * unless it is our base.qcow2. The header is read here only to choose them. */
static GHashTable *open_opts(const uint8_t *data, size_t size, const char *path,
			     const char *dpath)
{
	GHashTable *o = tblk_opts_new();
	uint64_t boff = size >= 20 ? (uint64_t)be32(data + 8) << 32 | be32(data + 12) : 0;
	uint32_t blen = size >= 20 ? be32(data + 16) : 0;

	g_hash_table_insert(o, g_strdup("driver"), g_strdup("qcow2"));
	g_hash_table_insert(o, g_strdup("file.driver"), g_strdup("file"));
	g_hash_table_insert(o, g_strdup("file.filename"), g_strdup(path));
	if (!(blen == 10 && boff < size && size - boff >= 10 &&
	      !memcmp(data + boff, "base.qcow2", 10)))
		g_hash_table_insert(o, g_strdup("backing"), g_strdup(""));
	/* Incompatible feature bit 2 of a v3 header: an external data file. */
	if (size >= 80 && be32(data + 4) == 3 && (data[79] & 4))
		g_hash_table_insert(o, g_strdup("data-file.filename"), g_strdup(dpath));
	return o;
}

struct outcome {
	bool opened_ro;		/* the read-only open succeeded */
	bool opened_rw;
	bool read_ok;		/* the first read succeeded */
	const char *why;	/* an invariant broken, or NULL */
};

static void do_check(struct tblk_blk *blk, int fix)
{
	struct tblk_check_result res = { .messages = g_string_new(NULL) };

	(void)tblk_blk_check(blk, fix, &res);
	g_string_free(res.messages, TRUE);
}

/* Reads, block status and a check without repair, as `qemu-img check/map/convert` would. */
static void exercise_ro(struct tblk_blk *blk, struct outcome *out)
{
	static uint8_t buf[IO_MAX];
	struct tblk_format_info info;
	struct tblk_snapshot_info *sn = NULL;
	int64_t len = tblk_blk_getlength(blk);
	uint64_t size = len > 0 ? (uint64_t)len : 0, off;
	const uint64_t at[] = { 0, size / 2 & ~511ull, size > IO_MAX ? size - IO_MAX : 0 };
	int nsn = 0;

	(void)tblk_blk_get_format_info(blk, &info);
	if (tblk_blk_snapshot_list(blk, &sn, &nsn) >= 0)
		tblk_snapshot_list_free(sn, nsn);
	for (size_t i = 0; i < TBLK_ARRAY_SIZE(at); i++) {
		int ret = tblk_blk_pread(blk, at[i], buf, TBLK_MIN(size - at[i], (uint64_t)IO_MAX),
					 0);

		if (i == 0)
			out->read_ok = ret >= 0;
	}
	if (size > 1000)	/* unaligned: the core reads around it */
		(void)tblk_blk_pread(blk, 1, buf, 999, 0);
	off = 0;
	for (int i = 0; i < STATUS_STEPS && off < size; i++) {
		uint64_t pnum = 0, map = 0;
		int depth;

		if (tblk_blk_block_status_depth(blk, off, size - off, &pnum, &map, &depth) < 0 ||
		    !pnum)
			break;
		off += pnum;
	}
	do_check(blk, 0);
}

/* Internal snapshots: revert to the first one and delete it, then take a new one. */
static void exercise_snapshots(struct tblk_blk *blk)
{
	struct tblk_snapshot_info *sn = NULL, mine = { .name = (char *)"fuzz" };
	GError *err = NULL;
	int nsn = 0;

	if (tblk_blk_snapshot_list(blk, &sn, &nsn) < 0)
		return;
	if (nsn) {
		(void)tblk_blk_snapshot_goto(blk, sn[0].id, &err);
		g_clear_error(&err);
		(void)tblk_blk_snapshot_delete(blk, sn[0].id, NULL, &err);
		g_clear_error(&err);
	}
	tblk_snapshot_list_free(sn, nsn);
	(void)tblk_blk_snapshot_create(blk, &mine, &err);
	g_clear_error(&err);
}

/* On a private copy: a write, zero writes, a discard, snapshots, then `check -r all`. */
static void exercise_rw(struct tblk_blk *blk)
{
	static uint8_t buf[8192];
	int64_t len = tblk_blk_getlength(blk);
	uint64_t size = len > 0 ? (uint64_t)len : 0;
	uint32_t cs = tblk_blk_cluster_size(blk);

	memset(buf, 0xa5, sizeof(buf));
	if (size >= sizeof(buf)) {
		(void)tblk_blk_pwrite(blk, 0, buf, 4096, 0);
		(void)tblk_blk_pwrite(blk, (size / 2) & ~511ull, buf, 512, 0);
		(void)tblk_blk_pwrite_zeroes(blk, size - 4096, 4096, TBLK_REQ_MAY_UNMAP);
		(void)tblk_blk_pdiscard(blk, 4096, 4096);
		if (cs && cs <= sizeof(buf) && size >= 4ull * cs)
			(void)tblk_blk_pwrite(blk, 2ull * cs, buf, cs, TBLK_REQ_COMPRESSED);
	}
	exercise_snapshots(blk);
	(void)tblk_blk_pwrite(blk, 0, buf, TBLK_MIN(size, (uint64_t)512), 0);
	(void)tblk_blk_flush(blk);
	do_check(blk, TBLK_CHECK_FIX_LEAKS | TBLK_CHECK_FIX_ERRORS);
}

static struct outcome run_one(const uint8_t *data, size_t size)
{
	struct outcome out = { 0 };
	struct tblk_blk *blk = NULL;
	GError *err = NULL;
	GHashTable *o;

	setup();
	if (put_file(img_path, data, size) < 0)
		abort();
	o = open_opts(data, size, img_path, data_path);
	if (tblk_blk_open(&blk, NULL, o, 0, NULL, &err) >= 0) {
		out.opened_ro = true;
		exercise_ro(blk, &out);
		tblk_blk_close(blk);
	}
	g_clear_error(&err);
	g_hash_table_destroy(o);
	if (!same_file(img_path, data, size))
		out.why = "the read-only pass changed the image";
	else if (!same_file(data_path, data_pattern, DATA_FILE_SIZE))
		out.why = "the read-only pass changed the data file";
	if (out.why)
		return out;

	if (put_file(rw_path, data, size) < 0 ||
	    put_file(rw_data_path, data_pattern, DATA_FILE_SIZE) < 0)
		abort();
	o = open_opts(data, size, rw_path, rw_data_path);
	if (tblk_blk_open(&blk, NULL, o, TBLK_OPEN_RDWR | TBLK_OPEN_NO_FLUSH, NULL, &err) >= 0) {
		out.opened_rw = true;
		exercise_rw(blk);
		tblk_blk_close(blk);
	}
	g_clear_error(&err);
	g_hash_table_destroy(o);
	return out;
}

#ifdef TBLK_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct outcome out = run_one(data, size);

	if (out.why) {
		fprintf(stderr, "invariant broken: %s\n", out.why);
		abort();
	}
	return 0;
}
#else
struct seed {
	char *name;
	GBytes *bytes;
};

static void seed_free(gpointer p)
{
	struct seed *s = p;

	g_free(s->name);
	g_bytes_unref(s->bytes);
	g_free(s);
}

static gint seed_cmp(gconstpointer a, gconstpointer b)
{
	const struct seed *x = *(struct seed *const *)a, *y = *(struct seed *const *)b;

	return strcmp(x->name, y->name);
}

static GPtrArray *load_corpus(void)
{
	const char *src = getenv("TBLK_SRC");
	GPtrArray *seeds = g_ptr_array_new_with_free_func(seed_free);
	char *cdir = g_strdup_printf("%s/t/corpus/qcow2", src ? src : "..");
	GDir *d = g_dir_open(cdir, 0, NULL);
	const char *name;

	while (d && (name = g_dir_read_name(d))) {
		char *path = g_build_filename(cdir, name, NULL);
		gchar *buf;
		gsize len;

		if (!g_str_has_suffix(name, ".sh") && g_file_get_contents(path, &buf, &len, NULL)) {
			struct seed *s = g_new0(struct seed, 1);

			s->name = g_strdup(name);
			s->bytes = g_bytes_new_take(buf, len);
			g_ptr_array_add(seeds, s);
		}
		g_free(path);
	}
	if (d)
		g_dir_close(d);
	g_free(cdir);
	g_ptr_array_sort(seeds, seed_cmp);
	return seeds;
}

static void put_be(uint8_t *p, uint64_t v, int bytes)
{
	for (int i = bytes - 1; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

/* A seeded mutation of @m (@len bytes, @cap allocated): header fields set to interesting
 * values, bytes flipped anywhere (mostly in metadata near the start), or truncation. */
static size_t mutate(uint8_t *m, size_t len, uint64_t *rnd)
{
	/* Header fields: offset and width. */
	static const uint8_t fields[][2] = {
		{ 4, 4 }, { 8, 8 }, { 16, 4 }, { 20, 4 }, { 24, 8 }, { 32, 4 }, { 36, 4 },
		{ 40, 8 }, { 48, 8 }, { 56, 4 }, { 60, 4 }, { 64, 8 }, { 72, 8 }, { 80, 8 },
		{ 88, 8 }, { 96, 4 }, { 100, 4 },
	};
	static const uint64_t values[] = {
		0, 1, 2, 3, 7, 9, 16, 21, 64, 511, 512, 4096, 65536, 1ull << 20, 1ull << 30,
		1ull << 40, 1ull << 62, 0x7fffffff, 0xffffffff, 0x8000000000000000ull, UINT64_MAX,
		0x00fffffffffffe00ull,
	};
	size_t nflips = 1 + tap_rand(rnd) % 6;

	for (size_t k = 0; k < nflips && len; k++) {
		size_t at = tap_rand(rnd) % (tap_rand(rnd) % 2 ? TBLK_MIN(len, (size_t)4096) : len);

		switch (tap_rand(rnd) % 6) {
		case 0:
			m[at] ^= (uint8_t)(1u << (tap_rand(rnd) % 8));
			break;
		case 1:
			m[at] = (uint8_t)tap_rand(rnd);
			break;
		case 2:
			if (tap_rand(rnd) % 4 == 0)
				len = at + 1;
			break;
		case 3: {	/* a header field */
			size_t f = tap_rand(rnd) % TBLK_ARRAY_SIZE(fields);

			if (fields[f][0] + fields[f][1] <= len)
				put_be(m + fields[f][0],
				       values[tap_rand(rnd) % TBLK_ARRAY_SIZE(values)],
				       fields[f][1]);
			break;
		}
		default:	/* a 64-bit metadata entry somewhere */
			at &= ~(size_t)7;
			if (at + 8 <= len)
				put_be(m + at, values[tap_rand(rnd) % TBLK_ARRAY_SIZE(values)] |
				       (tap_rand(rnd) % 2 ? 1ull << 63 : 0), 8);
			break;
		}
	}
	return len;
}

/* Replays the inputs named on the command line (a libFuzzer artifact, say). */
static int replay(int argc, char **argv)
{
	tap_plan(argc - 1);
	for (int i = 1; i < argc; i++) {
		gchar *buf;
		gsize len;
		struct outcome out = { .why = "cannot read the file" };

		if (g_file_get_contents(argv[i], &buf, &len, NULL)) {
			out = run_one((const uint8_t *)buf, len);
			g_free(buf);
		}
		ok(!out.why, "%s: %s (opened %s)", argv[i], out.why ? out.why : "invariants hold",
		   out.opened_rw ? "read-write" : out.opened_ro ? "read-only" : "not");
	}
	return tap_done();
}

int main(int argc, char **argv)
{
	uint64_t seed, rnd;
	GPtrArray *seeds;
	unsigned int i, bad = 0, ro = 0, unread = 0, mutations = 3000, opened = 0;
	const char *mut = getenv("TBLK_FUZZ_MUTATIONS");

	if (argc > 1)
		return replay(argc, argv);
	seed = rnd = tap_seed(0x71c0f2);
	if (mut)
		mutations = (unsigned int)strtoul(mut, NULL, 0);
	seeds = load_corpus();
	tap_plan(4);
	ok(seeds->len >= 15, "corpus found (%u seeds)", seeds->len);
	for (i = 0; i < seeds->len; i++) {
		const struct seed *s = seeds->pdata[i];
		gsize len;
		const uint8_t *p = g_bytes_get_data(s->bytes, &len);
		struct outcome out = run_one(p, len);

		if (out.why) {
			tap_diag("%s: %s", s->name, out.why);
			bad++;
		}
		/* Images made by qemu-img (v*) open and read; regression seeds need not. */
		if (s->name[0] == 'v' && (!out.opened_ro || !out.read_ok)) {
			tap_diag("%s: %s", s->name, out.opened_ro ? "unreadable" : "does not open");
			unread++;
		}
		ro += out.opened_ro;
	}
	ok(!bad, "every seed keeps the invariants");
	ok(!unread, "every image made by qemu-img opens and reads (%u of %u seeds open)", ro,
	   seeds->len);
	bad = 0;
	for (i = 0; i < mutations && seeds->len; i++) {
		const struct seed *s = seeds->pdata[tap_rand(&rnd) % seeds->len];
		gsize len;
		const uint8_t *p = g_bytes_get_data(s->bytes, &len);
		uint8_t *m = g_memdup2(p, len);
		size_t mlen = mutate(m, len, &rnd);
		struct outcome out = run_one(m, mlen);

		opened += out.opened_ro;
		if (out.why && bad++ < 5)
			tap_diag("mutation %u of %s: %s", i, s->name, out.why);
		g_free(m);
	}
	ok(!bad, "%u mutations keep the invariants (%u opened; seed %" PRIu64 ")", mutations,
	   opened, seed);
	g_ptr_array_free(seeds, TRUE);
	return tap_done();
}
#endif
