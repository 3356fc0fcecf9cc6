/* SPDX-License-Identifier: MIT */
/*
 * options.c - qemu-style option strings ("driver=raw,file.filename=x,,y.img"; "json:{...}"
 * file names are read by options-json.c), typed option getters, sizes with suffixes, and the
 * cache and aio mode names. Control path only; no shared state.
 */
#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "graph/graph.h"

GHashTable *tblk_opts_new(void)
{
	return g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
}

GHashTable *tblk__opts_copy(GHashTable *opts)
{
	GHashTable *copy = tblk_opts_new();
	GHashTableIter it;
	gpointer k, v;

	if (!opts)
		return copy;
	g_hash_table_iter_init(&it, opts);
	while (g_hash_table_iter_next(&it, &k, &v))
		g_hash_table_insert(copy, g_strdup(k), g_strdup(v));
	return copy;
}

/*
 * qemu's dictionary hash (the one of Samba's TDB): the key's length seeds it, each byte is
 * added shifted by 5 bits more than the last (mod 24), then a linear congruential step. 512
 * buckets, iterated from the first.
 */
unsigned int tblk__qdict_bucket(const char *key)
{
	uint32_t h = 0x238F13AFu * (uint32_t)strlen(key);

	for (uint32_t i = 0; key[i]; i++)
		h += (uint32_t)(unsigned char)key[i] << (i * 5 % 24);
	return (1103515243u * h + 12345u) % 512;
}

const char *tblk__opts_first_key(GHashTable *opts)
{
	const char *best = NULL;
	unsigned int best_b = 0;
	GHashTableIter it;
	gpointer k, v;

	g_hash_table_iter_init(&it, opts);
	while (g_hash_table_iter_next(&it, &k, &v)) {
		unsigned int b = tblk__qdict_bucket(k);

		/* Two keys in one bucket: qemu names the one added last; ours have no order. */
		if (!best || b < best_b || (b == best_b && strcmp(k, best) < 0)) {
			best = k;
			best_b = b;
		}
	}
	return best;
}

int tblk__opts_child_reference(const char *ref, GHashTable *copts, GError **errp)
{
	if (copts && g_hash_table_size(copts))
		return tblk_error_set(errp, EINVAL, "Cannot reference an existing block device "
				      "with additional options or a new filename");
	return tblk_error_set(errp, EINVAL, "Cannot find device='%s' nor node-name='%s'", ref,
			      ref);
}

/* Reads one element up to an unescaped @stop (or the end); ",," is a literal comma. */
static char *read_elem(const char **p, char stop)
{
	GString *out = g_string_new(NULL);
	const char *s = *p;

	while (*s) {
		if (*s == ',' && s[1] == ',') {
			g_string_append_c(out, ',');
			s += 2;
			continue;
		}
		if (*s == ',' || *s == stop)
			break;
		g_string_append_c(out, *s++);
	}
	*p = s;
	return g_string_free(out, FALSE);
}

/*
 * key=value,... into @opts. A bare word is the value of @implied_key if it comes first;
 * elsewhere it is an error (@qemu false), or qemu's short form of a boolean (@qemu true:
 * "foo" is foo=on, "nofoo" foo=off, each recorded in @short_forms; "help" and "?" ask for
 * help).
 */
static int parse_opts(GHashTable *opts, const char *str, const char *implied_key, bool qemu,
		      GPtrArray *short_forms, GError **errp)
{
	const char *p = str;
	bool first = true;

	if (g_str_has_prefix(str, "json:"))
		return tblk__json_flatten(opts, str + 5, errp);
	while (*p) {
		char *key = read_elem(&p, '='), *val;

		if (*p == '=') {
			p++;
			val = read_elem(&p, '\0');
		} else if (first && implied_key) {
			val = key;
			key = g_strdup(implied_key);
		} else if (!qemu) {
			int r = tblk_error_set(errp, EINVAL, "Invalid parameter '%s'", key);

			g_free(key);
			return r;
		} else if (!strcmp(key, "help") || !strcmp(key, "?")) {
			val = g_strdup("on");	/* qemu asks for help here: no warning */
		} else {
			if (short_forms)
				g_ptr_array_add(short_forms, g_strdup(key));
			if (g_str_has_prefix(key, "no")) {
				memmove(key, key + 2, strlen(key + 2) + 1);
				val = g_strdup("off");
			} else {
				val = g_strdup("on");
			}
		}
		if (!qemu && !*key) {
			g_free(key);
			g_free(val);
			return tblk_error_set(errp, EINVAL, "Invalid parameter ''");
		}
		g_hash_table_insert(opts, key, val);
		first = false;
		if (*p == ',')
			p++;
	}
	return 0;
}

int tblk_opts_parse(GHashTable *opts, const char *str, const char *implied_key, GError **errp)
{
	return parse_opts(opts, str, implied_key, false, NULL, errp);
}

int tblk_opts_parse_qemu(GHashTable *opts, const char *str, const char *implied_key,
			 GPtrArray *short_forms, GError **errp)
{
	return parse_opts(opts, str, implied_key, true, short_forms, errp);
}

/* ---------------------------------------------------------------- typed getters */

char *tblk__opts_take(GHashTable *opts, const char *key)
{
	gpointer k, v;

	if (!opts || !g_hash_table_steal_extended(opts, key, &k, &v))
		return NULL;
	g_free(k);
	return v;
}

int tblk__opts_take_bool(GHashTable *opts, const char *key, bool *out, GError **errp)
{
	g_autofree char *v = tblk__opts_take(opts, key);

	if (!v)
		return 0;
	if (tblk_parse_bool(v, out) < 0)
		return tblk_error_set(errp, EINVAL,
				      "Parameter '%s' expects 'on' or 'off'", key);
	return 0;
}

int tblk__opts_take_uint64(GHashTable *opts, const char *key, uint64_t *out, GError **errp)
{
	g_autofree char *v = tblk__opts_take(opts, key);

	if (!v)
		return 0;
	if (tblk_parse_uint64(v, out) < 0)
		return tblk_error_set(errp, EINVAL,
				      "Parameter '%s' expects a non-negative number below 2^64",
				      key);
	return 0;
}

int tblk__opts_take_size(GHashTable *opts, const char *key, uint64_t *out, GError **errp)
{
	g_autofree char *v = tblk__opts_take(opts, key);

	if (!v)
		return 0;
	if (tblk__parse_size(v, out) < 0)
		return tblk_error_set(errp, EINVAL,
				      "Parameter '%s' expects a non-negative number below 2^64\n"
				      "Optional suffix k, M, G, T, P or E means kilo-, mega-, "
				      "giga-, tera-, peta-\nand exabytes, respectively.", key);
	return 0;
}

GHashTable *tblk__opts_extract_prefix(GHashTable *opts, const char *prefix)
{
	GHashTable *out = tblk_opts_new();
	size_t plen = strlen(prefix);
	GHashTableIter it;
	gpointer k, v;

	if (!opts)
		return out;
	g_hash_table_iter_init(&it, opts);
	while (g_hash_table_iter_next(&it, &k, &v)) {
		const char *key = k;

		if (strncmp(key, prefix, plen) || key[plen] != '.')
			continue;
		g_hash_table_insert(out, g_strdup(key + plen + 1), g_strdup(v));
		g_hash_table_iter_remove(&it);
	}
	return out;
}

int tblk__parse_size(const char *s, uint64_t *out)
{
	static const char suffixes[] = "BKMGTPE";
	size_t numlen = s ? strspn(s, "0123456789.") : 0;
	g_autofree char *num = NULL;
	const char *sfx = NULL;
	char *end;
	double d, mult = 1;

	/* Digits with at most one point, then at most one suffix letter: nothing else. */
	if (numlen == 0 || strchr(s, '.') != strrchr(s, '.'))
		return -EINVAL;
	if (s[numlen]) {
		sfx = strchr(suffixes, toupper((unsigned char)s[numlen]));
		if (!sfx || s[numlen + 1])
			return -EINVAL;
	}
	num = g_strndup(s, numlen);
	if (!sfx && !strchr(num, '.'))
		return tblk_parse_uint64(num, out);	/* exact, no float rounding */
	d = g_ascii_strtod(num, &end);
	if (*end || !isfinite(d))
		return -EINVAL;
	for (long i = sfx ? sfx - suffixes : 0; i > 0; i--)
		mult *= 1024;
	if (!sfx && d != floor(d))
		return -EINVAL;	/* a fraction of a byte */
	d *= mult;
	if (d >= 18446744073709551616.0)
		return -ERANGE;
	*out = (uint64_t)d;
	return 0;
}

/* ---------------------------------------------------------------- modes */

int tblk_parse_cache_mode(const char *mode, unsigned int *flags, GError **errp)
{
	unsigned int f = *flags & ~(TBLK_OPEN_NOCACHE | TBLK_OPEN_NO_FLUSH |
				    TBLK_OPEN_WRITETHROUGH);

	if (!strcmp(mode, "none") || !strcmp(mode, "off"))
		f |= TBLK_OPEN_NOCACHE;
	else if (!strcmp(mode, "directsync"))
		f |= TBLK_OPEN_NOCACHE | TBLK_OPEN_WRITETHROUGH;
	else if (!strcmp(mode, "writeback"))
		;
	else if (!strcmp(mode, "unsafe"))
		f |= TBLK_OPEN_NO_FLUSH;
	else if (!strcmp(mode, "writethrough"))
		f |= TBLK_OPEN_WRITETHROUGH;
	else
		return tblk_error_set(errp, EINVAL, "Invalid cache option: %s", mode);
	*flags = f;
	return 0;
}

int tblk_parse_aio_mode(const char *mode, unsigned int *flags, GError **errp)
{
	unsigned int f = *flags & ~(TBLK_OPEN_AIO_NATIVE | TBLK_OPEN_AIO_URING);

	if (!strcmp(mode, "native"))
		f |= TBLK_OPEN_AIO_NATIVE;
	else if (!strcmp(mode, "io_uring"))
		f |= TBLK_OPEN_AIO_URING;
	else if (strcmp(mode, "threads"))
		return tblk_error_set(errp, EINVAL, "Invalid aio option: %s", mode);
	*flags = f;
	return 0;
}
