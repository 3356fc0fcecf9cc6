/* SPDX-License-Identifier: MIT */
/*
 * fuzz-nbd-server.c - fuzz target for the NBD server's protocol engine
 * (tools/export-nbd-proto.c, included here so the target needs no sockets): an input is a
 * client's byte stream, fed in pieces of varying size through the handshake and then, once
 * an export is chosen, through the request header checks with payload skipping as the
 * connection does it. Invariants: the engine consumes no more than it was given, replies stay
 * bounded, and a request it accepts is in range, aligned, of a known type with allowed flags.
 *
 * Built normally it is a TAP test that replays the seeds in t/corpus/nbd-server/ (found via
 * $TBLK_SRC) and a few thousand seeded mutations of them. With libFuzzer:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -DTBLK_LIBFUZZER -I. -I.. -I../include \
 *     $(pkg-config --cflags glib-2.0) ../t/fuzz-nbd-server.c $(pkg-config --libs glib-2.0) \
 *     -o fuzz-nbd-server && ./fuzz-nbd-server ../t/corpus/nbd-server
 * (from a configured build directory, for config-host.h).
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tools/export-nbd-proto.c"

#ifndef TBLK_LIBFUZZER
#include "t/tap.h"
#endif

static const struct nbds_proto_export exports[] = {
	{ .name = "", .description = "the default", .size = 64 << 20,
	  .tflags = TBLK_NBD_FLAG_HAS_FLAGS | TBLK_NBD_FLAG_SEND_FLUSH | TBLK_NBD_FLAG_SEND_TRIM |
		    TBLK_NBD_FLAG_SEND_WRITE_ZEROES | TBLK_NBD_FLAG_SEND_FAST_ZERO,
	  .min_block = 512, .pref_block = 4096, .max_block = 32 << 20, .alloc_depth = true },
	{ .name = "ro", .size = 1 << 20,
	  .tflags = TBLK_NBD_FLAG_HAS_FLAGS | TBLK_NBD_FLAG_READ_ONLY,
	  .min_block = 1, .pref_block = 4096, .max_block = 32 << 20 },
};

static const struct nbds_proto_export *lookup(void *opaque, const char *name)
{
	size_t i;

	(void)opaque;
	for (i = 0; i < TBLK_ARRAY_SIZE(exports); i++)
		if (!strcmp(exports[i].name, name))
			return &exports[i];
	return NULL;
}

static const struct nbds_proto_export *nth(void *opaque, unsigned int i)
{
	(void)opaque;
	return i < TBLK_ARRAY_SIZE(exports) ? &exports[i] : NULL;
}

static const struct nbds_export_table table = { lookup, nth, NULL };

/* Why an input broke an invariant, or NULL. */
static const char *fuzz_check(const struct nbds_tx *tx, const struct nbds_request *r)
{
	if (r->error)
		return r->payload && !r->skip_payload && !r->close_after ?
		       "refused WRITE payload neither skipped nor closed" : NULL;
	if (r->type > TBLK_NBD_CMD_BLOCK_STATUS)
		return "unknown command accepted";
	if (r->type == TBLK_NBD_CMD_FLUSH || r->type == TBLK_NBD_CMD_DISC)
		return r->flags ? "flags accepted on FLUSH/DISC" : NULL;
	if (r->offset > tx->size || r->len > tx->size - r->offset)
		return "out-of-range request accepted";
	if (r->offset % tx->align || r->len % tx->align)
		return "misaligned request accepted";
	if ((r->type == TBLK_NBD_CMD_READ || r->type == TBLK_NBD_CMD_WRITE) &&
	    r->len > TBLK_NBD_MAX_BUFFER)
		return "oversized request accepted";
	if (tx->read_only && (r->type == TBLK_NBD_CMD_WRITE || r->type == TBLK_NBD_CMD_TRIM ||
			      r->type == TBLK_NBD_CMD_WRITE_ZEROES))
		return "write accepted on a read-only export";
	if (r->flags & ~(TBLK_NBD_CMD_FLAG_FUA | TBLK_NBD_CMD_FLAG_NO_HOLE |
			 TBLK_NBD_CMD_FLAG_DF | TBLK_NBD_CMD_FLAG_REQ_ONE |
			 TBLK_NBD_CMD_FLAG_FAST_ZERO))
		return "unknown flag accepted";
	if ((r->flags & TBLK_NBD_CMD_FLAG_DF) && !tx->structured)
		return "DF accepted without structured replies";
	if (r->type == TBLK_NBD_CMD_BLOCK_STATUS && !tx->meta_base && !tx->meta_depth)
		return "BLOCK_STATUS accepted without contexts";
	return NULL;
}

/* Runs one input through the engine as a connection would. */
static const char *run_one(const uint8_t *data, size_t size)
{
	struct nbds_handshake hs;
	GByteArray *out = g_byte_array_new();
	const char *why = NULL;
	size_t pos = 0, piece = 1;
	struct nbds_tx tx;
	uint64_t skip = 0;

	nbds_hs_init(&hs, &table, out);
	/* Handshake: feed in pieces of 1, 2, 3, ... bytes to exercise partial reads. */
	while (pos < size && hs.state != NBDS_HS_DONE && hs.state != NBDS_HS_CLOSE) {
		size_t n = TBLK_MIN(piece++ % 29 + 1, size - pos);
		size_t used = nbds_hs_feed(&hs, data + pos, n);

		if (used > n) {
			why = "handshake consumed more than it was given";
			goto out;
		}
		if (used < n && hs.state != NBDS_HS_DONE && hs.state != NBDS_HS_CLOSE) {
			why = "handshake stopped early";
			goto out;
		}
		pos += used;
		if (out->len > (1u << 20)) {
			why = "handshake replies unbounded";
			goto out;
		}
		g_byte_array_set_size(out, 0);
	}
	if (hs.state != NBDS_HS_DONE)
		goto out;
	if (!hs.exp) {
		why = "transmission without an export";
		goto out;
	}
	nbds_tx_from_hs(&tx, &hs);
	while (pos < size) {
		struct nbds_request r;

		if (skip) {
			size_t n = TBLK_MIN(skip, size - pos);

			skip -= n;
			pos += n;
			continue;
		}
		if (size - pos < TBLK_NBD_REQUEST_SIZE)
			break;
		if (nbds_request_parse(data + pos, &tx, &r) < 0)
			break;
		pos += TBLK_NBD_REQUEST_SIZE;
		why = fuzz_check(&tx, &r);
		if (why || r.close_after || r.type == TBLK_NBD_CMD_DISC)
			break;
		if (r.payload)
			skip = r.payload;
	}
out:
	nbds_hs_destroy(&hs);
	g_byte_array_free(out, TRUE);
	return why;
}

#ifdef TBLK_LIBFUZZER
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *why = run_one(data, size);

	if (why) {
		fprintf(stderr, "invariant broken: %s\n", why);
		abort();
	}
	return 0;
}
#else
static GPtrArray *load_corpus(void)
{
	const char *src = getenv("TBLK_SRC");
	GPtrArray *seeds = g_ptr_array_new_with_free_func((GDestroyNotify)g_bytes_unref);
	char *dir = g_strdup_printf("%s/t/corpus/nbd-server", src ? src : "..");
	GDir *d = g_dir_open(dir, 0, NULL);
	const char *name;

	while (d && (name = g_dir_read_name(d))) {
		char *path = g_build_filename(dir, name, NULL);
		gchar *buf;
		gsize len;

		if (g_file_get_contents(path, &buf, &len, NULL))
			g_ptr_array_add(seeds, g_bytes_new_take(buf, len));
		g_free(path);
	}
	if (d)
		g_dir_close(d);
	g_free(dir);
	return seeds;
}

int main(void)
{
	uint64_t seed = tap_seed(0x6e6264), rnd = seed;
	GPtrArray *seeds = load_corpus();
	unsigned int i, bad = 0, mutations = 4000;

	tap_plan(3);
	ok(seeds->len >= 4, "corpus found (%u seeds)", seeds->len);
	for (i = 0; i < seeds->len; i++) {
		gsize len;
		const uint8_t *p = g_bytes_get_data(seeds->pdata[i], &len);
		const char *why = run_one(p, len);

		if (why) {
			tap_diag("seed %u: %s", i, why);
			bad++;
		}
	}
	ok(!bad, "every seed keeps the invariants");
	bad = 0;
	for (i = 0; i < mutations && seeds->len; i++) {
		gsize len;
		const uint8_t *p = g_bytes_get_data(seeds->pdata[tap_rand(&rnd) % seeds->len], &len);
		uint8_t *m = g_malloc(len + 64);
		size_t mlen = len, k, nflips = 1 + tap_rand(&rnd) % 8;
		const char *why;

		memcpy(m, p, len);
		for (k = 0; k < nflips && mlen; k++) {
			size_t at = tap_rand(&rnd) % mlen;

			switch (tap_rand(&rnd) % 4) {
			case 0:
				m[at] ^= (uint8_t)(1u << (tap_rand(&rnd) % 8));
				break;
			case 1:
				m[at] = (uint8_t)tap_rand(&rnd);
				break;
			case 2:
				mlen = at + 1;	/* truncate */
				break;
			default:	/* an interesting 32-bit value */
				if (at + 4 <= mlen) {
					static const uint32_t v[] = { 0, 1, 0xffffffff, 0x7fffffff,
								      512, 4096, 0x02000001 };
					uint32_t x = v[tap_rand(&rnd) % TBLK_ARRAY_SIZE(v)];

					m[at] = x >> 24;
					m[at + 1] = x >> 16;
					m[at + 2] = x >> 8;
					m[at + 3] = x;
				}
				break;
			}
		}
		why = run_one(m, mlen);
		if (why && bad++ < 5)
			tap_diag("mutation %u: %s", i, why);
		g_free(m);
	}
	ok(!bad, "%u mutations keep the invariants (seed %" PRIu64 ")", mutations, seed);
	g_ptr_array_free(seeds, TRUE);
	return tap_done();
}
#endif
