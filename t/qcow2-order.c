/* SPDX-License-Identifier: MIT */
/*
 * qcow2-order.c - compressed writes submitted together place their clusters in the order of
 * submission, per image: every cluster of an image written at once by asynchronous
 * compressed writes whose data compresses at very different speeds, then the L2 entries read
 * from the file must be compressed and their host offsets rise with the guest offset. Images
 * are opened and closed one after the other (the next image's state likely where the last
 * one's was: its turns must start afresh), then two images at once with their writes
 * interleaved on one loop (each keeps its own turns). The data reads back, qemu-img check
 * finds no errors or leaks, and the sanitizer builds find no race and no leak.
 */
#include <endian.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <tblk/tblk.h>
#include "t/tap.h"

#define CLUSTER_BITS	16
#define CLUSTER		(1u << CLUSTER_BITS)
#define NR_CLUSTERS	48
#define IMG_SIZE	((uint64_t)NR_CLUSTERS * CLUSTER)
#define ROUNDS		4

struct image {
	char path[256];
	struct tblk_blk *blk;
	uint8_t *data;		/* what the image should hold */
	int done, errors;
};

static uint64_t rng;

static void write_cb(void *opaque, int ret)
{
	struct image *im = opaque;

	im->done++;
	if (ret < 0) {
		tap_diag("%s: compressed write: %s", im->path, strerror(-ret));
		im->errors++;
	}
}

/*
 * Cluster i: some random bytes (slow to compress, and they make the compressed size vary),
 * the rest a short repeating pattern; never so random that it would be stored uncompressed.
 */
static void fill(struct image *im)
{
	for (unsigned int i = 0; i < NR_CLUSTERS; i++) {
		uint8_t *c = im->data + (uint64_t)i * CLUSTER;
		unsigned int nrand = (unsigned int)(tap_rand(&rng) % (CLUSTER / 2));

		for (unsigned int j = 0; j < CLUSTER; j++)
			c[j] = j < nrand ? (uint8_t)tap_rand(&rng) : (uint8_t)(j % 7 + i);
	}
}

static struct tblk_blk *open_image(const char *path, struct tblk_loop *loop)
{
	GHashTable *opts = tblk_opts_new();
	struct tblk_blk *blk = NULL;
	GError *err = NULL;
	char spec[400];

	snprintf(spec, sizeof(spec), "driver=qcow2,file.driver=file,file.filename=%s", path);
	tblk_opts_parse(opts, spec, NULL, NULL);
	if (tblk_blk_open(&blk, NULL, opts, TBLK_OPEN_RDWR, loop, &err) < 0) {
		tap_diag("open %s: %s", path, err ? err->message : "?");
		g_clear_error(&err);
		blk = NULL;
	}
	g_hash_table_destroy(opts);
	return blk;
}

static void image_create(struct image *im, const char *name)
{
	GHashTable *copts = tblk_opts_new();
	GError *err = NULL;
	int fd;

	snprintf(im->path, sizeof(im->path), "%s/tblk-qcow2-order-%s-XXXXXX",
		 getenv("TMPDIR") ?: "/tmp", name);
	fd = mkstemp(im->path);
	if (fd < 0)
		tap_bail("mkstemp");
	close(fd);
	g_hash_table_insert(copts, g_strdup("cluster_size"), g_strdup("65536"));
	if (tblk_img_create(im->path, "qcow2", IMG_SIZE, copts, &err) < 0)
		tap_bail(err->message);
	g_hash_table_destroy(copts);
	im->data = g_malloc(IMG_SIZE);
	fill(im);
	im->done = im->errors = 0;
}

static void submit(struct image *im, unsigned int i, struct iovec *iov)
{
	iov->iov_base = im->data + (uint64_t)i * CLUSTER;
	iov->iov_len = CLUSTER;
	tblk_blk_pwritev(im->blk, (uint64_t)i * CLUSTER, iov, 1, TBLK_REQ_COMPRESSED, write_cb,
			 im);
}

static uint64_t be64_at(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return be64toh(v);
}

/*
 * Reads the image's L2 table from the file: 0 if every cluster is compressed and their host
 * offsets rise with the guest offset, else the first guest cluster out of place plus one.
 */
static int check_layout(const struct image *im)
{
	g_autofree uint8_t *file = NULL;
	unsigned int off_bits = 62 - (CLUSTER_BITS - 8);
	uint64_t l1, l2, prev = 0;
	gsize len;

	if (!g_file_get_contents(im->path, (gchar **)&file, &len, NULL) || len < 512)
		return -1;
	l1 = be64_at(file + 40);
	if (l1 + 8 > len)
		return -1;
	l2 = be64_at(file + l1) & 0x00fffffffffffe00ull;
	if (l2 == 0 || l2 + NR_CLUSTERS * 8 > len)
		return -1;
	for (unsigned int i = 0; i < NR_CLUSTERS; i++) {
		uint64_t e = be64_at(file + l2 + 8 * i), host = e & ((1ull << off_bits) - 1);

		if (!(e & (1ull << 62)) || host <= prev) {
			tap_diag("%s: cluster %u: L2 entry %#" PRIx64 " after host offset %#" PRIx64,
				 im->path, i, e, prev);
			return (int)i + 1;
		}
		prev = host;
	}
	return 0;
}

/* After the writes: the layout, the data through a fresh open, qemu-img check. */
static void verify(struct image *im, const char *what)
{
	g_autofree uint8_t *back = g_malloc(IMG_SIZE);
	struct tblk_blk *blk;
	char cmd[400];

	is_int(im->errors, 0, "%s: %d compressed writes complete", what, NR_CLUSTERS);
	is_int(check_layout(im), 0, "%s: clusters placed in the order of submission", what);
	blk = open_image(im->path, NULL);
	ok(blk && tblk_blk_pread(blk, 0, back, IMG_SIZE, 0) == 0 &&
	   memcmp(back, im->data, IMG_SIZE) == 0, "%s: the data reads back", what);
	if (blk)
		tblk_blk_close(blk);
	snprintf(cmd, sizeof(cmd), "qemu-img check -q '%s'", im->path);
	is_int(system(cmd), 0, "%s: qemu-img check finds no errors and no leaks", what);
	unlink(im->path);
	g_free(im->data);
}

/* One image at a time, all its clusters submitted at once, closed before the next. */
static void test_one_after_another(struct tblk_loop *loop)
{
	for (int r = 0; r < ROUNDS; r++) {
		struct iovec iov[NR_CLUSTERS];
		struct image im;
		char what[32];

		image_create(&im, "seq");
		snprintf(what, sizeof(what), "image %d of %d", r + 1, ROUNDS);
		im.blk = open_image(im.path, loop);
		if (!im.blk)
			tap_bail("cannot open the image");
		for (unsigned int i = 0; i < NR_CLUSTERS; i++)
			submit(&im, i, &iov[i]);
		while (im.done < NR_CLUSTERS)
			tblk_loop_iterate(loop, true);
		tblk_blk_close(im.blk);
		verify(&im, what);
	}
}

/* Two images open at once, their writes interleaved: each keeps its own order. */
static void test_two_at_once(struct tblk_loop *loop)
{
	struct iovec iov[2][NR_CLUSTERS];
	struct image im[2];

	image_create(&im[0], "a");
	image_create(&im[1], "b");
	for (int k = 0; k < 2; k++) {
		im[k].blk = open_image(im[k].path, loop);
		if (!im[k].blk)
			tap_bail("cannot open the image");
	}
	for (unsigned int i = 0; i < NR_CLUSTERS; i++) {
		submit(&im[0], i, &iov[0][i]);
		submit(&im[1], i, &iov[1][i]);
	}
	while (im[0].done < NR_CLUSTERS || im[1].done < NR_CLUSTERS)
		tblk_loop_iterate(loop, true);
	tblk_blk_close(im[0].blk);
	tblk_blk_close(im[1].blk);
	verify(&im[0], "two at once, the first");
	verify(&im[1], "two at once, the second");
}

int main(void)
{
	struct tblk_loop *loop;

	rng = tap_seed(0x6f72646572);
	tap_plan(4 * (ROUNDS + 2));
	loop = tblk_loop_new(NULL);
	if (!loop)
		tap_bail("tblk_loop_new");
	test_one_after_another(loop);
	test_two_at_once(loop);
	tblk_loop_free(loop);
	return tap_done();
}
