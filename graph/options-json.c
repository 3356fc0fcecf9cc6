/* SPDX-License-Identifier: MIT */
/*
 * options-json.c - "json:{...}" file names flattened to dotted option keys ("file.filename"),
 * with qemu 7.2's reading of the text and its error messages, as observed: a lexer cuts the
 * text into tokens (an invalid character ends the token being read and makes it a "stray"
 * one), the tokens of one top-level value are collected until its brackets close, and only
 * then parsed; a second top-level value, even a broken one, is "Expecting at most one JSON
 * value". Strings may be single-quoted. Lists flatten to "key.0", "key.1"; null leaves the
 * key out, except "backing": null (no backing file), kept as TBLK__OPTS_NULL.
 *
 * Control path only; no shared state.
 */
#include <string.h>

#include "graph/graph.h"

#define JSON_MAX_NESTING	1024	/* qemu's limit on open brackets */

enum jtype {
	J_STRING = 256,
	J_NUMBER,
	J_KEYWORD,
};

struct jtok {
	int type;		/* a bracket, ':' or ',' itself, or enum jtype */
	char *text;		/* as written (strings with their quotes) */
};

struct jlex {
	const char *p;
	char *stray;		/* the text of an invalid token, once found */
};

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static bool is_ws(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* The invalid token: what was read of it, and the character that did not fit, if any. */
static int lex_stray(struct jlex *l, const char *start, const char *end)
{
	if (*end)
		end++;
	l->stray = g_strndup(start, (size_t)(end - start));
	l->p = end;
	return -1;
}

/* A number as JSON has it; what follows a complete one starts the next token. */
static int lex_number(struct jlex *l, const char *s, struct jtok *t)
{
	const char *p = s;

	if (*p == '-')
		p++;
	if (*p == '0') {
		p++;
		if (is_digit(*p))
			return lex_stray(l, s, p);
	} else if (is_digit(*p)) {
		while (is_digit(*p))
			p++;
	} else {
		return lex_stray(l, s, p);
	}
	if (*p == '.') {
		p++;
		if (!is_digit(*p))
			return lex_stray(l, s, p);
		while (is_digit(*p))
			p++;
	}
	if (*p == 'e' || *p == 'E') {
		p++;
		if (*p == '+' || *p == '-')
			p++;
		if (!is_digit(*p))
			return lex_stray(l, s, p);
		while (is_digit(*p))
			p++;
	}
	t->type = J_NUMBER;
	t->text = g_strndup(s, (size_t)(p - s));
	l->p = p;
	return 1;
}

/* A string: escapes are only checked by the parser; control bytes, 0xfe and 0xff are not
 * allowed in one. */
static int lex_string(struct jlex *l, const char *s, struct jtok *t)
{
	const char *p = s + 1;
	char quote = *s;

	for (;;) {
		unsigned char c = (unsigned char)*p;

		if (!c)
			return lex_stray(l, s, p);
		if (c < 0x20 || c >= 0xfe)
			return lex_stray(l, s, p);
		if (c == (unsigned char)quote)
			break;
		if (c == '\\') {
			p++;
			c = (unsigned char)*p;
			if (!c || c < 0x20 || c >= 0xfe)
				return lex_stray(l, s, p);
		}
		p++;
	}
	p++;
	t->type = J_STRING;
	t->text = g_strndup(s, (size_t)(p - s));
	l->p = p;
	return 1;
}

/* The next token: 1, 0 at the end, -1 for an invalid one (l->stray). */
static int lex(struct jlex *l, struct jtok *t)
{
	const char *s;

	while (is_ws(*l->p))
		l->p++;
	s = l->p;
	if (!*s)
		return 0;
	if (strchr("{}[]:,", *s)) {
		t->type = *s;
		t->text = g_strndup(s, 1);
		l->p = s + 1;
		return 1;
	}
	if (*s == '"' || *s == '\'')
		return lex_string(l, s, t);
	if (*s == '-' || is_digit(*s))
		return lex_number(l, s, t);
	if (*s >= 'a' && *s <= 'z') {
		const char *p = s;

		while (*p >= 'a' && *p <= 'z')
			p++;
		t->type = J_KEYWORD;
		t->text = g_strndup(s, (size_t)(p - s));
		l->p = p;
		return 1;
	}
	return lex_stray(l, s, s);
}

/* ---------------------------------------------------------------- the parser */

struct jparse {
	struct jtok *toks;
	guint n, pos;
	GHashTable *out;	/* flattened keys of this value */
	char *err;		/* "JSON parse error, ..." once failed */
	bool is_object;		/* the top-level value is an object */
};

static int perr(struct jparse *j, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

static int perr(struct jparse *j, const char *fmt, ...)
{
	va_list ap;

	if (!j->err) {
		va_start(ap, fmt);
		j->err = g_strdup_vprintf(fmt, ap);
		va_end(ap);
	}
	return -1;
}

static struct jtok *next(struct jparse *j)
{
	return j->pos < j->n ? &j->toks[j->pos++] : NULL;
}

static int hex4(const char *p, unsigned int *v)
{
	*v = 0;
	for (int i = 0; i < 4; i++) {
		int d = g_ascii_xdigit_value(p[i]);

		if (d < 0)
			return -1;
		*v = *v << 4 | (unsigned int)d;
	}
	return 0;
}

/* "\u" and what follows of the token, at most 4 characters, as qemu quotes a bad escape. */
static int bad_unicode(struct jparse *j, const char *esc)
{
	return perr(j, "JSON parse error, \\u%.4s is not a valid Unicode character", esc + 2);
}

/* One \uXXXX escape (two for a surrogate pair) at @p, appended as UTF-8; *pp moves past. */
static int unescape_u(struct jparse *j, const char **pp, GString *out)
{
	const char *p = *pp;
	unsigned int cp, lo;

	if (hex4(p + 2, &cp) < 0 || (cp >= 0xdc00 && cp <= 0xdfff))
		return bad_unicode(j, p);
	p += 6;
	if (cp >= 0xd800 && cp <= 0xdbff) {
		if (p[0] != '\\' || p[1] != 'u' || hex4(p + 2, &lo) < 0 || lo < 0xdc00 ||
		    lo > 0xdfff)
			return bad_unicode(j, *pp);
		cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
		p += 6;
	}
	if (cp == 0)
		g_string_append(out, "\xc0\x80");	/* qemu keeps a NUL as its long form */
	else
		g_string_append_unichar(out, cp);
	*pp = p;
	return 0;
}

/* The value of a string token, escapes resolved; NULL with j->err set. */
static char *unquote(struct jparse *j, const char *text)
{
	GString *s = g_string_new(NULL);
	const char *p = text + 1, *end = text + strlen(text) - 1;

	while (p < end) {
		if (*p != '\\') {
			g_string_append_c(s, *p++);
			continue;
		}
		switch (p[1]) {
		case '"': case '\'': case '\\': case '/':
			g_string_append_c(s, p[1]);
			break;
		case 'b': g_string_append_c(s, '\b'); break;
		case 'f': g_string_append_c(s, '\f'); break;
		case 'n': g_string_append_c(s, '\n'); break;
		case 'r': g_string_append_c(s, '\r'); break;
		case 't': g_string_append_c(s, '\t'); break;
		case 'u':
			if (unescape_u(j, &p, s) < 0)
				goto fail;
			continue;
		default:
			perr(j, "JSON parse error, invalid escape sequence in string");
			goto fail;
		}
		p += 2;
	}
	return g_string_free(s, FALSE);
fail:
	g_string_free(s, TRUE);
	return NULL;
}

static int parse_value(struct jparse *j, const char *key, int depth);

static char *join(const char *prefix, const char *key)
{
	return *prefix ? g_strdup_printf("%s.%s", prefix, key) : g_strdup(key);
}

static int parse_object(struct jparse *j, const char *prefix, int depth)
{
	g_autoptr(GHashTable) seen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
	struct jtok *t;

	if (j->pos < j->n && j->toks[j->pos].type == '}') {
		j->pos++;
		return 0;
	}
	for (;;) {
		g_autofree char *key = NULL, *full = NULL;
		guint at = j->pos;

		/* The key is read as any value, then must be a string. */
		if (parse_value(j, NULL, depth) < 0)
			return -1;
		if (j->toks[at].type != J_STRING)
			return perr(j, "JSON parse error, key is not a string in object");
		key = unquote(j, j->toks[at].text);
		if (!key)
			return -1;
		t = next(j);
		if (!t)
			return perr(j, "JSON parse error, premature EOI");
		if (t->type != ':')
			return perr(j, "JSON parse error, missing : in object pair");
		full = join(prefix, key);
		if (parse_value(j, full, depth) < 0)
			return -1;
		if (!g_hash_table_add(seen, g_steal_pointer(&key)))
			return perr(j, "JSON parse error, duplicate key");
		t = next(j);
		if (!t)
			return perr(j, "JSON parse error, premature EOI");
		if (t->type == '}')
			return 0;
		if (t->type != ',')
			return perr(j, "JSON parse error, expected separator in dict");
	}
}

static int parse_array(struct jparse *j, const char *prefix, int depth)
{
	struct jtok *t;

	if (j->pos < j->n && j->toks[j->pos].type == ']') {
		j->pos++;
		return 0;
	}
	for (unsigned int i = 0;; i++) {
		g_autofree char *idx = g_strdup_printf("%u", i);
		g_autofree char *full = prefix ? join(prefix, idx) : NULL;

		if (parse_value(j, full, depth) < 0)
			return -1;
		t = next(j);
		if (!t)
			return perr(j, "JSON parse error, premature EOI");
		if (t->type == ']')
			return 0;
		if (t->type != ',')
			return perr(j, "JSON parse error, expected separator in list");
	}
}

/* Whether @key names a child (its last component): only a string refers to a node, qemu
 * drops a number or a boolean there. */
static bool is_child_key(const char *key)
{
	const char *last = strrchr(key, '.');

	last = last ? last + 1 : key;
	/* (not "backing": qemu leaves a number there to the unsupported-option check) */
	return !strcmp(last, "file") || !strcmp(last, "data-file");
}

/* Whether @key names a backing child (its last component). */
static bool is_backing_key(const char *key)
{
	const char *last = key ? strrchr(key, '.') : NULL;

	return key && !strcmp(last ? last + 1 : key, "backing");
}

/* "backing" given a number, a boolean, {} or []: kept, but as no reference (see graph.h) */
static void add_not_string(struct jparse *j, const char *key)
{
	g_hash_table_insert(j->out, g_strdup(key), g_strdup(TBLK__OPTS_NOT_STRING));
}

/* A value, its scalars stored under @key (NULL: only checked, as an object key is). */
static int parse_value(struct jparse *j, const char *key, int depth)
{
	struct jtok *t = next(j);
	char *val;

	if (!t)
		return perr(j, "JSON parse error, premature EOI");
	switch (t->type) {
	case '{':
		if (depth == 0)
			j->is_object = true;
		if (is_backing_key(key) && j->pos < j->n && j->toks[j->pos].type == '}')
			add_not_string(j, key);
		return parse_object(j, key ? key : "", depth + 1);
	case '[':
		if (is_backing_key(key) && j->pos < j->n && j->toks[j->pos].type == ']')
			add_not_string(j, key);
		return parse_array(j, key, depth + 1);
	case J_STRING:
		val = unquote(j, t->text);
		if (!val)
			return -1;
		break;
	case J_NUMBER:
		if (key && is_child_key(key))
			return 0;	/* not a reference: qemu drops it */
		val = g_strdup(is_backing_key(key) ? TBLK__OPTS_NOT_STRING : t->text);
		break;
	case J_KEYWORD:
		if (strcmp(t->text, "true") && strcmp(t->text, "false") && strcmp(t->text, "null"))
			return perr(j, "JSON parse error, invalid keyword '%s'", t->text);
		/* null leaves the key out, but for "backing" it means no backing file */
		if (!strcmp(t->text, "null") && (!key || (strcmp(key, "backing") &&
							 !g_str_has_suffix(key, ".backing"))))
			return 0;
		if (key && strcmp(t->text, "null") && is_child_key(key))
			return 0;
		if (!strcmp(t->text, "null"))
			val = g_strdup(TBLK__OPTS_NULL);
		else
			val = g_strdup(is_backing_key(key) ? TBLK__OPTS_NOT_STRING : t->text);
		break;
	default:
		return perr(j, "JSON parse error, expecting value");
	}
	if (key)
		g_hash_table_insert(j->out, g_strdup(key), val);
	else
		g_free(val);
	return 0;
}

/* ---------------------------------------------------------------- the top level */

struct jstream {
	GArray *toks;		/* struct jtok of the value being collected */
	int depth;		/* open brackets of it */
	int emitted;		/* values (or errors) handed on so far */
	char *err;		/* the first error, as the message qemu prints */
	GHashTable *result;	/* the first value's keys, if it was an object */
	bool not_object;
};

static void toks_clear(struct jstream *s)
{
	for (guint i = 0; i < s->toks->len; i++)
		g_free(g_array_index(s->toks, struct jtok, i).text);
	g_array_set_size(s->toks, 0);
	s->depth = 0;
}

/* One top-level value (or an error in it) is complete: qemu keeps only the first. */
static void emit(struct jstream *s, char *err)
{
	struct jparse j = { 0 };

	if (s->emitted++) {
		g_free(err);
		if (!s->err)
			s->err = g_strdup("Could not parse the JSON options: Expecting at most one "
					  "JSON value");
		toks_clear(s);
		return;
	}
	if (!err) {
		j.toks = (struct jtok *)(void *)s->toks->data;
		j.n = s->toks->len;
		j.out = tblk_opts_new();
		if (parse_value(&j, "", 0) < 0) {
			err = g_steal_pointer(&j.err);
			g_hash_table_unref(j.out);
		} else {
			s->result = j.out;
			s->not_object = !j.is_object;
		}
	}
	if (err)
		s->err = g_strdup_printf("Could not parse the JSON options: %s", err);
	g_free(err);
	toks_clear(s);
}

/* Feeds the tokens of @json to the collector; stops at the second value. */
static void stream(struct jstream *s, const char *json)
{
	struct jlex l = { .p = json };
	struct jtok t;
	int r;

	while (s->emitted < 2 && (r = lex(&l, &t)) != 0) {
		if (r < 0) {
			emit(s, g_strdup_printf("JSON parse error, stray '%s'", l.stray));
			g_clear_pointer(&l.stray, g_free);
			continue;
		}
		g_array_append_val(s->toks, t);
		if (t.type == '{' || t.type == '[') {
			if (++s->depth > JSON_MAX_NESTING) {
				emit(s, g_strdup("JSON nesting depth limit exceeded"));
				continue;
			}
		} else if (t.type == '}' || t.type == ']') {
			s->depth--;
		}
		if (s->depth <= 0)
			emit(s, NULL);
	}
	if (s->emitted < 2 && s->toks->len)
		emit(s, NULL);
}

int tblk__json_flatten(GHashTable *opts, const char *json, GError **errp)
{
	struct jstream s = { .toks = g_array_new(FALSE, FALSE, sizeof(struct jtok)) };
	GHashTableIter it;
	gpointer k, v;
	int ret = 0;

	stream(&s, json);
	toks_clear(&s);
	g_array_free(s.toks, TRUE);
	if (s.err)
		ret = tblk_error_set(errp, EINVAL, "%s", s.err);
	else if (!s.result)
		ret = tblk_error_set(errp, EINVAL, "Could not parse the JSON options: Expecting a "
				     "JSON value");
	else if (s.not_object)
		ret = tblk_error_set(errp, EINVAL, "Invalid JSON object given");
	if (ret == 0) {
		g_hash_table_iter_init(&it, s.result);
		while (g_hash_table_iter_next(&it, &k, &v))
			g_hash_table_insert(opts, g_strdup(k), g_strdup(v));
	}
	g_free(s.err);
	if (s.result)
		g_hash_table_unref(s.result);
	return ret;
}
