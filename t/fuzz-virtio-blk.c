/* SPDX-License-Identifier: MIT */
/*
 * fuzz-virtio-blk.c - fuzz target for the virtio-blk device model: an input is a guest's
 * whole view of one queue (features, a 16-entry descriptor table, the heads put in the avail
 * ring, and 4 KiB of guest memory holding headers, indirect tables and segments), run against
 * a null-aio disk. Invariants: no access outside guest memory (ASan), every chain taken is
 * answered once or the queue is broken, nothing stays in flight, the used index never runs
 * ahead of what was taken.
 *
 * Built normally it is a TAP test running a few thousand seeded inputs (structured seeds and
 * their mutations). With libFuzzer (from a configured build directory):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -DTBLK_LIBFUZZER -I. -I.. -I../include \
 *     $(pkg-config --cflags glib-2.0) ../t/fuzz-virtio-blk.c libtblk.a \
 *     $(pkg-config --libs glib-2.0) -laio -luring -lz -lzstd -o fuzz-virtio-blk
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "virtio-blk/virtio-blk.h"
#ifndef TBLK_LIBFUZZER
#include "t/tap.h"
#endif

#define QN		16
#define GPA		0x10000ull
#define MEMSZ		(64u << 10)
#define DESC_GPA	GPA
#define AVAIL_GPA	(GPA + 0x1000)
#define USED_GPA	(GPA + 0x2000)
#define HEAP_GPA	(GPA + 0x4000)
#define HEAP_SZ		4096u

static struct tblk_loop *loop;
static struct tblk_blk *blk;
static uint8_t *mem;
static uint64_t total_requests, total_errors, total_broken;

static void setup(void)
{
	GHashTable *opts;

	if (loop)
		return;
	loop = tblk_loop_new(NULL);
	opts = tblk_opts_new();
	tblk_opts_parse(opts, "driver=raw,file.driver=null-aio,file.size=1M", NULL, NULL);
	if (tblk_blk_open(&blk, NULL, opts, TBLK_OPEN_RDWR, loop, NULL) < 0)
		abort();
	g_hash_table_destroy(opts);
	mem = aligned_alloc(4096, MEMSZ);
}

/* Turns a fuzzed address into one near guest memory most of the time. */
static uint64_t near(uint64_t raw)
{
	if ((raw & 3) == 3)
		return raw;
	return GPA + (raw >> 2) % (MEMSZ + 512) - 256;
}

/* Runs one input; NULL or what went wrong. */
static const char *run(const uint8_t *data, size_t size)
{
	struct tblk_vblk_opts o = { .num_queues = 1, .logical_block_size = 512,
				    .writable = true, .serial = "fuzz" };
	struct tblk_vblk_stats st;
	struct tblk_vblk *dev;
	struct tblk_vmem *vmem;
	struct vring_desc *desc;
	struct vring_avail *avail;
	struct vring_used *used;
	uint64_t features = 1ull << VIRTIO_F_VERSION_1 | 1ull << VIRTIO_BLK_F_FLUSH |
			    1ull << VIRTIO_BLK_F_DISCARD | 1ull << VIRTIO_BLK_F_WRITE_ZEROES;
	unsigned int nheads;
	const char *why = NULL;

	setup();
	desc = (void *)(mem + (DESC_GPA - GPA));
	avail = (void *)(mem + (AVAIL_GPA - GPA));
	used = (void *)(mem + (USED_GPA - GPA));
	memset(mem, 0, MEMSZ);
	if (size < 1 + QN * 16 + 1)
		return NULL;
	if (data[0] & 1)
		features |= 1ull << VIRTIO_RING_F_EVENT_IDX;
	if (data[0] & 2)
		features |= 1ull << VIRTIO_RING_F_INDIRECT_DESC;
	data++;
	size--;
	for (unsigned int i = 0; i < QN; i++) {
		struct vring_desc d;

		memcpy(&d, data + 16 * i, 16);
		d.addr = near(d.addr);
		d.len = (d.len & 0x80000000u) ? d.len : d.len % 8192;
		desc[i] = d;
	}
	data += QN * 16;
	size -= QN * 16;
	nheads = data[0] % (2 * QN + 2);
	data++;
	size--;
	for (unsigned int i = 0; i < nheads; i++)
		avail->ring[i % QN] = i < size ? (uint16_t)(data[i] % (QN + 2)) : 0;
	avail->idx = (uint16_t)nheads;
	if (size > nheads)
		memcpy(mem + (HEAP_GPA - GPA), data + nheads, TBLK_MIN(size - nheads, HEAP_SZ));

	if (tblk_vblk_new(&dev, blk, &o, NULL) < 0)
		abort();
	vmem = tblk__vmem_new();
	tblk__vmem_add(vmem, GPA, MEMSZ, GPA, mem, NULL);
	tblk_vblk_set_mem(dev, vmem);
	tblk_vblk_set_features(dev, features);
	tblk_vblk_vq_set_num(dev, 0, QN);
	tblk_vblk_vq_set_addr(dev, 0, DESC_GPA, AVAIL_GPA, USED_GPA);
	if (tblk_vblk_vq_start(dev, 0) < 0)
		abort();
	tblk_vblk_vq_enable(dev, 0, true);
	tblk_vblk_vq_kick(dev, 0);
	for (;;) {
		tblk_vblk_get_stats(dev, &st);
		if (!st.inflight)
			break;
		tblk_loop_iterate(loop, true);
	}
	while (tblk_loop_iterate(loop, false))
		;
	tblk_vblk_get_stats(dev, &st);
	total_requests += st.requests;
	total_errors += st.errors;
	total_broken += tblk_vblk_vq_is_broken(dev, 0);
	if (used->idx > st.requests)
		why = "more used entries than requests taken";
	else if (!tblk_vblk_vq_is_broken(dev, 0) && (nheads > QN ? st.requests > nheads :
						       st.requests != nheads))
		why = "a healthy queue did not take every head";
	else if (!tblk_vblk_vq_is_broken(dev, 0) && used->idx != st.requests)
		why = "a request taken was not answered";
	tblk_vblk_detach(dev);
	tblk_vblk_unref(dev);
	return why;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *why = run(data, size);

	if (why) {
		fprintf(stderr, "invariant broken: %s\n", why);
		abort();
	}
	return 0;
}

#ifndef TBLK_LIBFUZZER
/* A structured seed: @n requests of varied types laid out properly, some indirect. */
static size_t make_seed(uint8_t *buf, size_t cap, uint64_t *rng, unsigned int n)
{
	struct vring_desc desc[QN];
	uint8_t heap[HEAP_SZ];
	unsigned int nd = 0, heads[QN], nh = 0;
	size_t off = 0, hoff = 0;

	memset(desc, 0, sizeof(desc));
	memset(heap, 0, sizeof(heap));
	for (unsigned int r = 0; r < n && nd + 3 <= QN && hoff + 1200 < HEAP_SZ; r++) {
		static const uint32_t types[] = { VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
						  VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
						  VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES, 99 };
		uint32_t type = types[tap_rand(rng) % 7];
		struct virtio_blk_outhdr h = { type, 0, tap_rand(rng) % 2100 };
		uint32_t dlen = type == VIRTIO_BLK_T_GET_ID ? 20 :
				type >= VIRTIO_BLK_T_DISCARD ? 16 : 512 * (uint32_t)(tap_rand(rng) % 2);
		uint64_t hg = HEAP_GPA + hoff, dg = hg + 64, sg = dg + 1024;
		bool dw = type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID;
		/* near() keeps in-range values when the low two bits are clear */
#define ENC(g) ((((g) - GPA + 256) << 2))
		memcpy(heap + hoff, &h, sizeof(h));
		if (type >= VIRTIO_BLK_T_DISCARD) {
			struct virtio_blk_discard_write_zeroes s = { tap_rand(rng) % 2000, 8,
								     (uint32_t)(tap_rand(rng) % 2) };
			memcpy(heap + hoff + 64, &s, sizeof(s));
		}
		heads[nh++] = nd;
		desc[nd] = (struct vring_desc){ ENC(hg), 16, VRING_DESC_F_NEXT, (uint16_t)(nd + 1) };
		nd++;
		if (dlen) {
			desc[nd] = (struct vring_desc){ ENC(dg), dlen, (uint16_t)(VRING_DESC_F_NEXT |
						(dw ? VRING_DESC_F_WRITE : 0)), (uint16_t)(nd + 1) };
			nd++;
		}
		desc[nd] = (struct vring_desc){ ENC(sg), 1, VRING_DESC_F_WRITE, 0 };
		nd++;
		hoff += 1200;
#undef ENC
	}
	buf[off++] = (uint8_t)(tap_rand(rng) & 3);
	memcpy(buf + off, desc, sizeof(desc));
	off += sizeof(desc);
	buf[off++] = (uint8_t)nh;
	for (unsigned int i = 0; i < nh; i++)
		buf[off++] = (uint8_t)heads[i];
	memcpy(buf + off, heap, TBLK_MIN(hoff, cap - off));
	return off + TBLK_MIN(hoff, cap - off);
}

int main(void)
{
	uint64_t rng = tap_seed(0xf022);
	static uint8_t buf[8192];
	int failures = 0, runs = 0;
	unsigned int clean = 0;
	const char *out = getenv("TBLK_FUZZ_SEED_DIR");

	if (out) {	/* a starting corpus for libFuzzer (t/corpus/virtio-blk/) */
		for (unsigned int i = 0; i < 8; i++) {
			size_t n = make_seed(buf, sizeof(buf), &rng, 1 + i % 5);
			char *path = g_strdup_printf("%s/seed-%u-req%u", out, i, 1 + i % 5);

			g_file_set_contents(path, (const char *)buf, (gssize)n, NULL);
			g_free(path);
		}
	}

	for (int i = 0; i < 3000; i++) {
		size_t n = make_seed(buf, sizeof(buf), &rng, 1 + (unsigned int)(i % 5));
		const char *why;

		/* Mutate most of them: flip bytes, the way a fuzzer starts. */
		for (int m = (int)(i % 4 == 0 ? 0 : 1 + tap_rand(&rng) % 8); m > 0; m--)
			buf[tap_rand(&rng) % n] ^= (uint8_t)(1u << (tap_rand(&rng) % 8));
		why = run(buf, n);
		runs++;
		clean += i % 4 == 0;
		if (why && failures++ < 5)
			tap_diag("input %d: %s", i, why);
	}
	is_int(failures, 0, "%d inputs (%u unmutated seeds): invariants hold, no crash", runs,
	       clean);
	ok(total_requests > (uint64_t)runs && total_errors < total_requests && total_broken > 0,
	   "the inputs reach the device: %" PRIu64 " requests, %" PRIu64 " errors, %" PRIu64
	   " broken queues", total_requests, total_errors, total_broken);
	tblk_blk_close(blk);
	tblk_loop_free(loop);
	free(mem);
	return tap_done();
}
#endif
