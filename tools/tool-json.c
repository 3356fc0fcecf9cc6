/* SPDX-License-Identifier: MIT */
/*
 * tool-json.c - JSON string escaping as QEMU's JSON writer does it: ASCII control
 * characters, DEL and every non-ASCII character become \uXXXX (upper-case hex, UTF-16
 * surrogate pairs above U+FFFF), each byte of invalid UTF-8 becomes \uFFFD.
 *
 * Pure functions; any thread.
 */
#include "tools/tool-util.h"

/* Decodes one UTF-8 character at @s; returns its length, or 0 if invalid (*cp undefined). */
static int utf8_decode(const unsigned char *s, uint32_t *cp)
{
	int len, i;
	uint32_t c = s[0], min;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if ((c & 0xe0) == 0xc0)
		len = 2, c &= 0x1f, min = 0x80;
	else if ((c & 0xf0) == 0xe0)
		len = 3, c &= 0x0f, min = 0x800;
	else if ((c & 0xf8) == 0xf0)
		len = 4, c &= 0x07, min = 0x10000;
	else
		return 0;
	for (i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		c = (c << 6) | (s[i] & 0x3f);
	}
	if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
		return 0;
	*cp = c;
	return len;
}

static void append_codepoint(GString *out, uint32_t c)
{
	switch (c) {
	case '"': g_string_append(out, "\\\""); return;
	case '\\': g_string_append(out, "\\\\"); return;
	case '\b': g_string_append(out, "\\b"); return;
	case '\f': g_string_append(out, "\\f"); return;
	case '\n': g_string_append(out, "\\n"); return;
	case '\r': g_string_append(out, "\\r"); return;
	case '\t': g_string_append(out, "\\t"); return;
	}
	if (c >= 0x20 && c < 0x7f) {
		g_string_append_c(out, (char)c);
	} else if (c >= 0x10000) {
		c -= 0x10000;
		g_string_append_printf(out, "\\u%04X\\u%04X", 0xd800 | (c >> 10),
				       0xdc00 | (c & 0x3ff));
	} else {
		g_string_append_printf(out, "\\u%04X", c);
	}
}

void tool_json_string(GString *out, const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	uint32_t c;
	int n;

	g_string_append_c(out, '"');
	while (*p) {
		n = utf8_decode(p, &c);
		if (n == 0) {
			c = 0xfffd;
			n = 1;
		}
		append_codepoint(out, c);
		p += n;
	}
	g_string_append_c(out, '"');
}
