/* SPDX-License-Identifier: MIT */
/*
 * options.c - option parsing: dotted key=value strings with ",," escapes and implied keys,
 * json: filenames, sizes with suffixes, booleans, cache and aio modes, and malformed input
 * of each kind (rejected with a message, never a crash).
 */
#include <stdlib.h>
#include <string.h>

#include "graph/graph.h"
#include "t/tap.h"

static const char *get(GHashTable *h, const char *k)
{
	return g_hash_table_lookup(h, k);
}

static void test_keyval(void)
{
	GHashTable *o = tblk_opts_new();
	GError *err = NULL;

	is_int(tblk_opts_parse(o, "driver=raw,file.filename=a,,b.img,offset=4096", NULL, &err),
	       0, "parse key=value list");
	is_str(get(o, "driver"), "raw", "driver");
	is_str(get(o, "file.filename"), "a,b.img", "',,' is a literal comma");
	is_str(get(o, "offset"), "4096", "offset");
	g_hash_table_remove_all(o);
	is_int(tblk_opts_parse(o, "x.img,cache.direct=on", "filename", &err), 0, "implied key");
	is_str(get(o, "filename"), "x.img", "implied key takes the first bare element");
	ok(tblk_opts_parse(o, "a=1,bare", NULL, &err) < 0 && err, "bare element later rejected");
	g_clear_error(&err);
	ok(tblk_opts_parse(o, "=x", NULL, &err) < 0 && err, "empty key rejected");
	g_clear_error(&err);
	g_hash_table_destroy(o);
}

/* qemu's command-line lists: bare keys are deprecated short forms of key=on / key=off. */
static void test_keyval_qemu(void)
{
	g_autoptr(GPtrArray) shorts = g_ptr_array_new_with_free_func(g_free);
	GHashTable *o = tblk_opts_new();
	GError *err = NULL;

	is_int(tblk_opts_parse_qemu(o, ",driver=raw,ro,noa,help,=x,f=a,,b,", NULL, shorts, &err),
	       0, "qemu list parses");
	is_str(get(o, "ro"), "on", "bare key is key=on");
	is_str(get(o, "a"), "off", "bare nokey is key=off");
	is_str(get(o, "help"), "on", "help is a key");
	is_str(get(o, ""), "x", "empty key kept, last value wins");
	is_str(get(o, "f"), "a,b", "',,' still a literal comma");
	is_int(shorts->len, 3, "three short forms reported");
	is_str(shorts->len == 3 ? shorts->pdata[0] : NULL, "", "the empty one first");
	is_str(shorts->len == 3 ? shorts->pdata[2] : NULL, "noa", "as written");
	g_hash_table_remove_all(o);
	is_int(tblk_opts_parse_qemu(o, "x.img,a", "filename", NULL, &err), 0, "implied key");
	is_str(get(o, "filename"), "x.img", "implied key takes the first bare element");
	is_str(get(o, "a"), "on", "later bare element is a short form");
	g_hash_table_destroy(o);
}

static void test_json(void)
{
	GHashTable *o = tblk_opts_new();
	GError *err = NULL;

	is_int(tblk_opts_parse(o, "json:{\"driver\": \"raw\", \"file\": {\"driver\": \"file\", "
			       "\"filename\": \"a\\\"b\"}, \"size\": 1024, \"read-only\": true}",
			       NULL, &err), 0, "parse json:");
	is_str(get(o, "file.driver"), "file", "nested object flattened");
	is_str(get(o, "file.filename"), "a\"b", "escaped quote");
	is_str(get(o, "size"), "1024", "number");
	is_str(get(o, "read-only"), "true", "boolean");
	static const char *const bad[] = {
		"json:", "json:[1]", "json:{\"a\":}", "json:{\"a\" 1}", "json:{\"a\":1",
		"json:{\"a\":\"x}", "json:{\"a\":1}}", "json:{{",
	};
	for (size_t i = 0; i < TBLK_ARRAY_SIZE(bad); i++) {
		ok(tblk_opts_parse(o, bad[i], NULL, &err) < 0 && err, "malformed %s rejected",
		   bad[i]);
		g_clear_error(&err);
	}
	/* Deep nesting is refused rather than recursing without bound. */
	GString *deep = g_string_new("json:");
	for (int i = 0; i < 10000; i++)
		g_string_append(deep, "{\"a\":");
	ok(tblk_opts_parse(o, deep->str, NULL, &err) < 0, "deep nesting rejected");
	g_clear_error(&err);
	g_string_free(deep, TRUE);
	g_hash_table_destroy(o);
}

static void test_sizes(void)
{
	static const struct { const char *s; uint64_t v; } good[] = {
		{ "0", 0 }, { "512", 512 }, { "1k", 1024 }, { "1K", 1024 }, { "64M", 64 << 20 },
		{ "1.5G", 3ull << 29 }, { "2T", 2ull << 40 }, { "1E", 1ull << 60 },
		{ "18446744073709551615", UINT64_MAX },
	};
	static const char *const bad[] = { "", "-1", "1x", "1.5", "k", " 1", "1kk", "16E",
					  "1e3", "nan", "nanK", "inf", ".", "1.2.3K", "0x10" };
	uint64_t v;

	for (size_t i = 0; i < TBLK_ARRAY_SIZE(good); i++) {
		v = 0;
		ok(tblk__parse_size(good[i].s, &v) == 0 && v == good[i].v, "size %s = %" PRIu64,
		   good[i].s, good[i].v);
	}
	for (size_t i = 0; i < TBLK_ARRAY_SIZE(bad); i++)
		ok(tblk__parse_size(bad[i], &v) < 0, "size '%s' rejected", bad[i]);
}

static void test_modes(void)
{
	unsigned int f = 0;
	bool b;
	GError *err = NULL;

	is_int(tblk_parse_cache_mode("none", &f, NULL), 0, "cache=none");
	is_int(f, TBLK_OPEN_NOCACHE, "none is O_DIRECT");
	tblk_parse_cache_mode("directsync", &f, NULL);
	is_int(f, TBLK_OPEN_NOCACHE | TBLK_OPEN_WRITETHROUGH, "directsync");
	tblk_parse_cache_mode("unsafe", &f, NULL);
	is_int(f, TBLK_OPEN_NO_FLUSH, "unsafe");
	tblk_parse_cache_mode("writethrough", &f, NULL);
	is_int(f, TBLK_OPEN_WRITETHROUGH, "writethrough");
	tblk_parse_cache_mode("writeback", &f, NULL);
	is_int(f, 0, "writeback");
	ok(tblk_parse_cache_mode("fast", &f, &err) < 0 && err &&
	   !strcmp(err->message, "Invalid cache option: fast"), "bad cache mode");
	g_clear_error(&err);
	is_int(tblk_parse_aio_mode("io_uring", &f, NULL), 0, "aio=io_uring");
	is_int(f, TBLK_OPEN_AIO_URING, "io_uring flag");
	ok(tblk_parse_aio_mode("posix", &f, &err) < 0 && err, "bad aio mode");
	g_clear_error(&err);
	ok(tblk_parse_bool("on", &b) == 0 && b, "on");
	ok(tblk_parse_bool("off", &b) == 0 && !b, "off");
	ok(tblk_parse_bool("maybe", &b) < 0, "maybe rejected");
}

int main(void)
{
	test_keyval();
	test_keyval_qemu();
	test_json();
	test_sizes();
	test_modes();
	return tap_done();
}
