/* SPDX-License-Identifier: MIT */
/*
 * img-name.c - the name qemu-img info gives an image that options describe ("--image-opts
 * driver=raw,file.filename=x,offset=4k", a "json:{...}" file name): as observed of qemu 7.2,
 * a node has a plain name when its driver can spell one (a file's path, "null-co://",
 * "blkdebug:CONF:IMAGE", a format's file child's name) and no option of the node changes
 * what the name would mean ("strong" options: raw's offset and size, null's size and
 * read-zeroes, blkdebug's rules and limits, a throttle group); otherwise it is "json:" and a
 * dictionary of the node's driver, filename, strong options (flat keys, as given: a string
 * from an option string, a number or boolean from JSON) and each child's dictionary under the
 * child's name. Other options (cache modes, aio, locking, qcow2's caches) do not count.
 * Keys come out in qemu's dictionary order (hash buckets, see graph/options.c).
 *
 * Threading: the tool's single thread.
 */
#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "graph/graph.h"
#include "tools/img-int.h"

/* A flattened option: its value's text and whether JSON gave it as a string. */
struct nval {
	char *text;
	bool is_string;
};

static void nval_free(gpointer p)
{
	struct nval *v = p;

	g_free(v->text);
	g_free(v);
}

static GHashTable *flat_new(void)
{
	return g_hash_table_new_full(g_str_hash, g_str_equal, g_free, nval_free);
}

static void flat_put(GHashTable *flat, const char *key, char *text, bool is_string)
{
	struct nval *v = g_new(struct nval, 1);

	v->text = text;
	v->is_string = is_string;
	g_hash_table_replace(flat, g_strdup(key), v);
}

/* ---------------------------------------------------------------- JSON, typed */

/*
 * A small reader for JSON the library has accepted already (so errors only give up):
 * scalars flattened to dotted keys with their type, null left out, lists as "key.N".
 */
struct jr {
	const char *p;
	GHashTable *flat;
};

static void jr_ws(struct jr *j)
{
	while (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')
		j->p++;
}

static char *jr_string(struct jr *j)
{
	char q = *j->p++;
	GString *s = g_string_new(NULL);

	while (*j->p && *j->p != q) {
		if (*j->p != '\\') {
			g_string_append_c(s, *j->p++);
			continue;
		}
		j->p++;
		switch (*j->p) {
		case 'b': g_string_append_c(s, '\b'); break;
		case 'f': g_string_append_c(s, '\f'); break;
		case 'n': g_string_append_c(s, '\n'); break;
		case 'r': g_string_append_c(s, '\r'); break;
		case 't': g_string_append_c(s, '\t'); break;
		case 'u': {
			char hex[5] = { 0 };
			unsigned int cp;

			memcpy(hex, j->p + 1, 4);
			if (strlen(hex) != 4 || sscanf(hex, "%x", &cp) != 1)
				goto fail;
			/* (pairs and NUL are rare in option values: kept as the code points) */
			g_string_append_unichar(s, cp);
			j->p += 4;
			break;
		}
		case '\0':
			goto fail;
		default: g_string_append_c(s, *j->p); break;
		}
		j->p++;
	}
	if (*j->p != q)
		goto fail;
	j->p++;
	return g_string_free(s, FALSE);
fail:
	g_string_free(s, TRUE);
	return NULL;
}

/* A number as qemu prints it back: an integer as such, anything else with 17 digits. */
static char *jr_number(struct jr *j)
{
	const char *s = j->p;
	g_autofree char *text = NULL;
	char *end;

	j->p += strspn(j->p, "-+0123456789.eE");
	text = g_strndup(s, (size_t)(j->p - s));
	if (!strpbrk(text, ".eE")) {
		errno = 0;
		long long ll = strtoll(text, &end, 10);

		if (!errno && !*end)
			return g_strdup_printf("%lld", ll);
		errno = 0;
		unsigned long long ull = strtoull(text, &end, 10);

		if (!errno && !*end && text[0] != '-')
			return g_strdup_printf("%llu", ull);
	}
	return g_strdup_printf("%.17g", g_ascii_strtod(text, NULL));
}

static int jr_value(struct jr *j, const char *key, int depth);

static char *jr_join(const char *prefix, const char *key)
{
	return *prefix ? g_strdup_printf("%s.%s", prefix, key) : g_strdup(key);
}

static int jr_container(struct jr *j, const char *key, int depth)
{
	bool obj = *j->p++ == '{';
	char close = obj ? '}' : ']';

	jr_ws(j);
	if (*j->p == close) {
		j->p++;
		return 0;
	}
	for (unsigned int i = 0;; i++) {
		g_autofree char *name = NULL, *full = NULL;

		jr_ws(j);
		if (obj) {
			if (*j->p != '"' && *j->p != '\'')
				return -1;
			name = jr_string(j);
			if (!name)
				return -1;
			jr_ws(j);
			if (*j->p++ != ':')
				return -1;
		} else {
			name = g_strdup_printf("%u", i);
		}
		full = jr_join(key, name);
		if (jr_value(j, full, depth + 1) < 0)
			return -1;
		jr_ws(j);
		if (*j->p == close) {
			j->p++;
			return 0;
		}
		if (*j->p++ != ',')
			return -1;
	}
}

static int jr_value(struct jr *j, const char *key, int depth)
{
	char *text;

	jr_ws(j);
	if (depth > 64)
		return -1;
	if (*j->p == '{' || *j->p == '[')
		return jr_container(j, key, depth);
	if (*j->p == '"' || *j->p == '\'') {
		text = jr_string(j);
		if (!text)
			return -1;
		flat_put(j->flat, key, text, true);
		return 0;
	}
	for (const char *const *kw = (const char *const[]){ "true", "false", "null", NULL }; *kw;
	     kw++) {
		if (strncmp(j->p, *kw, strlen(*kw)))
			continue;
		j->p += strlen(*kw);
		if (strcmp(*kw, "null"))
			flat_put(j->flat, key, g_strdup(*kw), false);
		return 0;
	}
	if (*j->p == '-' || (*j->p >= '0' && *j->p <= '9')) {
		flat_put(j->flat, key, jr_number(j), false);
		return 0;
	}
	return -1;
}

/* ---------------------------------------------------------------- the drivers' rules */

enum exact_rule {
	EXACT_CHILD,		/* a format: its file child's name, if nothing strong is set */
	EXACT_FILENAME,		/* a file: its path */
	EXACT_PROTOCOL,		/* "NAME://", if nothing strong is set */
	EXACT_BLKDEBUG,		/* "blkdebug:CONF:IMAGE", if only the config is set */
	EXACT_ALWAYS,		/* the library's name is qemu's (nbd's URL) */
	EXACT_NEVER,		/* a filter: always a json: name */
};

struct name_rule {
	const char *driver;
	enum exact_rule exact;
	const char *strong[10];		/* option names, also as prefixes ("server" "server.x") */
	const char *child;		/* the child's option name, or NULL */
};

static const struct name_rule rules[] = {
	{ "raw", EXACT_CHILD, { "offset", "size" }, "file" },
	{ "qcow2", EXACT_CHILD, { NULL }, "file" },
	{ "file", EXACT_FILENAME, { NULL }, NULL },
	{ "host_device", EXACT_FILENAME, { NULL }, NULL },
	{ "null-co", EXACT_PROTOCOL, { "size", "read-zeroes" }, NULL },
	{ "null-aio", EXACT_PROTOCOL, { "size", "read-zeroes" }, NULL },
	{ "blkdebug", EXACT_BLKDEBUG, { "config", "inject-error", "set-state", "align",
					"max-transfer", "opt-write-zero", "max-write-zero",
					"opt-discard", "max-discard" }, "image" },
	{ "nbd", EXACT_ALWAYS, { "server", "export", "tls-creds", "tls-hostname" }, NULL },
	{ "throttle", EXACT_NEVER, { "throttle-group", "limits" }, "file" },
	{ "copy-on-read", EXACT_NEVER, { NULL }, "file" },
};

static const struct name_rule *rule_find(const char *driver)
{
	for (size_t i = 0; i < G_N_ELEMENTS(rules); i++)
		if (!strcmp(rules[i].driver, driver))
			return &rules[i];
	return NULL;
}

static bool is_strong(const struct name_rule *r, const char *key)
{
	for (size_t i = 0; i < G_N_ELEMENTS(r->strong) && r->strong[i]; i++) {
		size_t n = strlen(r->strong[i]);

		if (!strncmp(key, r->strong[i], n) && (!key[n] || key[n] == '.'))
			return true;
	}
	return false;
}

/* ---------------------------------------------------------------- one node */

struct entry {
	const char *key;
	char *json;		/* the value, written as JSON */
};

static gint entry_cmp(gconstpointer a, gconstpointer b)
{
	const struct entry *x = *(struct entry *const *)a, *y = *(struct entry *const *)b;
	unsigned int bx = tblk__qdict_bucket(x->key), by = tblk__qdict_bucket(y->key);

	/* (two keys in one bucket: qemu's order depends on insertion; by name here) */
	return bx != by ? (bx < by ? -1 : 1) : strcmp(x->key, y->key);
}

static void entry_free(gpointer p)
{
	struct entry *e = p;

	g_free(e->json);
	g_free(e);
}

static void entry_add(GPtrArray *dict, const char *key, char *json)
{
	struct entry *e = g_new(struct entry, 1);

	e->key = key;
	e->json = json;
	g_ptr_array_add(dict, e);
}

static char *json_str(const char *s)
{
	GString *out = g_string_new(NULL);

	tool_json_string(out, s);
	return g_string_free(out, FALSE);
}

static char *dict_text(GPtrArray *dict)
{
	GString *out = g_string_new("{");

	g_ptr_array_sort(dict, entry_cmp);
	for (guint i = 0; i < dict->len; i++) {
		const struct entry *e = dict->pdata[i];

		if (i)
			g_string_append(out, ", ");
		tool_json_string(out, e->key);
		g_string_append_printf(out, ": %s", e->json);
	}
	g_string_append_c(out, '}');
	return g_string_free(out, FALSE);
}

/* The "@prefix.*" keys of @flat, without the prefix (the values are borrowed). */
static GHashTable *child_opts(GHashTable *flat, const char *prefix)
{
	GHashTable *out = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
	size_t n = strlen(prefix);
	GHashTableIter it;
	gpointer k, v;

	g_hash_table_iter_init(&it, flat);
	while (g_hash_table_iter_next(&it, &k, &v))
		if (!strncmp(k, prefix, n) && ((char *)k)[n] == '.')
			g_hash_table_insert(out, g_strdup((char *)k + n + 1), v);
	return out;
}

/* The driver a child without "driver" gets: the protocol its filename names. */
static const char *default_driver(GHashTable *opts)
{
	const struct nval *fn = g_hash_table_lookup(opts, "filename");

	/* (a protocol prefix, "nbd://" or "blkdebug:", is not modelled: give up) */
	if (!fn || strchr(fn->text, ':'))
		return NULL;
	return "file";
}

/*
 * The name of the node @opts describe (@driver, or the one they name): *exact gets the plain
 * name (NULL: none, *dict is the json dictionary), *dict the dictionary's text. -1 if the
 * node is not one this file models.
 */
static int node_name(GHashTable *opts, const char *driver, char **exact, char **dict,
		     int depth)
{
	g_autoptr(GPtrArray) d = g_ptr_array_new_with_free_func(entry_free);
	g_autoptr(GHashTable) copts = NULL;
	g_autofree char *cexact = NULL, *cdict = NULL;
	const struct nval *dv = g_hash_table_lookup(opts, "driver");
	const struct nval *fn = g_hash_table_lookup(opts, "filename");
	const struct name_rule *r;
	bool strong = false;
	GHashTableIter it;
	gpointer k, v;

	if (depth > 16)
		return -1;
	if (dv)
		driver = dv->text;
	r = driver ? rule_find(driver) : NULL;
	if (!r)
		return -1;
	/* nbd's legacy keys and URLs become server.* in qemu: not modelled */
	if (r->exact == EXACT_ALWAYS && (fn || g_hash_table_contains(opts, "host") ||
					 g_hash_table_contains(opts, "port") ||
					 g_hash_table_contains(opts, "path")))
		return -1;
	entry_add(d, "driver", dv && !dv->is_string ? g_strdup(dv->text) : json_str(driver));
	if (fn)
		entry_add(d, "filename", fn->is_string ? json_str(fn->text) : g_strdup(fn->text));
	g_hash_table_iter_init(&it, opts);
	while (g_hash_table_iter_next(&it, &k, &v)) {
		const struct nval *val = v;

		if (!is_strong(r, k))
			continue;
		/* (blkdebug's config is in its plain name) */
		if (strcmp(k, "config"))
			strong = true;
		entry_add(d, k, val->is_string ? json_str(val->text) : g_strdup(val->text));
	}
	if (r->child) {
		copts = child_opts(opts, r->child);
		if (node_name(copts, default_driver(copts), &cexact, &cdict, depth + 1) < 0)
			return -1;
		entry_add(d, r->child, g_strdup(cdict));
	}
	*exact = NULL;
	switch (r->exact) {
	case EXACT_CHILD:
		if (!strong && cexact)
			*exact = g_strdup(cexact);
		break;
	case EXACT_FILENAME:
		if (!fn)
			return -1;
		*exact = g_strdup(fn->text);
		break;
	case EXACT_PROTOCOL:
		if (!strong)
			*exact = g_strdup_printf("%s://", driver);
		break;
	case EXACT_BLKDEBUG: {
		const struct nval *conf = g_hash_table_lookup(opts, "config");

		if (!strong && cexact)
			*exact = g_strdup_printf("blkdebug:%s:%s", conf ? conf->text : "", cexact);
		break;
	}
	case EXACT_ALWAYS:
		*exact = g_strdup("");
		break;
	case EXACT_NEVER:
		break;
	}
	*dict = dict_text(d);
	return 0;
}

/* ---------------------------------------------------------------- the image */

char *img_node_name(const struct img_open_opts *o, struct tblk_blk *blk)
{
	g_autoptr(GHashTable) flat = flat_new();
	g_autofree char *exact = NULL, *dict = NULL;

	if (o->image_opts && strncmp(o->filename, "json:", 5)) {
		g_autoptr(GHashTable) opts = tblk_opts_new();
		GHashTableIter it;
		gpointer k, v;

		/* (already parsed once by img_open(): no warnings a second time) */
		if (tblk_opts_parse_qemu(opts, o->filename, "file", NULL, NULL) < 0)
			goto plain;
		g_hash_table_iter_init(&it, opts);
		while (g_hash_table_iter_next(&it, &k, &v))
			flat_put(flat, k, g_strdup(v), true);
	} else if (!strncmp(o->filename, "json:", 5)) {
		struct jr j = { .p = o->filename + 5, .flat = flat };

		jr_ws(&j);
		if (*j.p != '{' || jr_value(&j, "", 0) < 0)
			goto plain;
	} else {
		goto plain;
	}
	if (o->fmt)
		flat_put(flat, "driver", g_strdup(o->fmt), true);
	/* a file name at the top is probed for its format: not modelled */
	if (g_hash_table_contains(flat, "filename") || g_hash_table_contains(flat, "file"))
		goto plain;
	if (node_name(flat, tblk_blk_format_name(blk), &exact, &dict, 0) < 0)
		goto plain;
	if (exact)
		return *exact ? g_steal_pointer(&exact) : g_strdup(tblk_blk_filename(blk));
	return g_strdup_printf("json:%s", dict);
plain:
	return g_strdup(tblk_blk_filename(blk));
}
