/* SPDX-License-Identifier: MIT */
/*
 * tool-size.c - qemu-compatible number parsing ("1.5M", "0x1000", "512b") and the two ways
 * qemu's tools print sizes (qemu-io's "%.3f"-trimmed, qemu-img's "%0.3g").
 *
 * Pure functions; any thread.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tools/tool-util.h"

/* Multiplier of a size suffix, 0 if @c is none. */
static uint64_t suffix_mul(char c)
{
	switch (c) {
	case 'b': case 'B': return 1;
	case 'k': case 'K': return 1ull << 10;
	case 'm': case 'M': return 1ull << 20;
	case 'g': case 'G': return 1ull << 30;
	case 't': case 'T': return 1ull << 40;
	case 'p': case 'P': return 1ull << 50;
	case 'e': case 'E': return 1ull << 60;
	}
	return 0;
}

/*
 * Parses ".digits" at @p into a 0.64 fixed-point fraction. Returns the end, or NULL if the
 * fraction carries an exponent (which makes the whole number invalid). A lone "." is allowed.
 */
static const char *parse_fraction(const char *p, uint64_t *frac)
{
	char *end;
	double d;

	*frac = 0;
	errno = 0;
	d = strtod(p, &end);
	if (end == p || errno)
		return p + 1;
	if (memchr(p, 'e', end - p) || memchr(p, 'E', end - p))
		return NULL;
	if (d >= 1.0)
		*frac = UINT64_MAX;
	else if (d > 0)
		*frac = (uint64_t)ldexp(d, 64);
	return end;
}

/* The integral part: decimal, or hex after "0x". Returns 0, -EINVAL or -ERANGE. */
static int parse_integral(const char *s, const char **endp, uint64_t *val, bool *hex)
{
	char *end;

	errno = 0;
	*val = strtoull(s, &end, 10);
	*endp = end;
	*hex = false;
	if (end == s)
		return -EINVAL;
	if (memchr(s, '-', end - s)) {
		*endp = s;
		return -EINVAL;
	}
	if (errno == ERANGE)
		return -ERANGE;
	if (*val == 0 && (*end == 'x' || *end == 'X')) {
		errno = 0;
		*val = strtoull(s, &end, 16);
		*endp = end;
		*hex = true;
		if (errno == ERANGE)
			return -ERANGE;
	}
	return 0;
}

static int scale(uint64_t *val, uint64_t frac, uint64_t mul)
{
	unsigned __int128 r = (unsigned __int128)*val * mul;
	unsigned __int128 f = (unsigned __int128)frac * mul;

	/* f is a 64.64 number: add its integral part, rounding half up. */
	r += (f >> 64) + ((f >> 63) & 1);
	if (r > UINT64_MAX)
		return -ERANGE;
	*val = (uint64_t)r;
	return 0;
}

int tool_strtosz(const char *s, uint64_t *val, bool *hex_suffix)
{
	const char *end;
	uint64_t v, frac = 0, mul;
	bool hex;
	int ret;

	*hex_suffix = false;
	ret = parse_integral(s, &end, &v, &hex);
	if (ret == 0 && *end == '.') {
		end = hex ? s : parse_fraction(end, &frac);
		if (!end) {
			end = s;
			ret = -EINVAL;
		} else if (hex) {
			ret = -EINVAL;
		}
	}
	if (ret == 0) {
		mul = suffix_mul(*end);
		if (mul) {
			*hex_suffix = hex;
			end++;
		} else {
			mul = 1;
		}
		if (mul == 1 && frac)
			ret = -EINVAL, end = s;
		else
			ret = scale(&v, frac, mul);
	}
	if (*end)
		return -EINVAL;
	if (ret == 0)
		*val = v;
	return ret;
}

int tool_strtoul(const char *s, unsigned long *val)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 0);
	if (end == s || *end)
		return -EINVAL;
	if (errno == ERANGE)
		return -ERANGE;
	*val = v;
	return 0;
}

/* Removes a fraction made only of zeros ("1.000" -> "1"). */
static void trim_zero_fraction(char *buf)
{
	char *dot = strrchr(buf, '.');
	char *p;

	if (!dot)
		return;
	for (p = dot + 1; *p == '0'; p++)
		;
	if (*p == '\0' || *p == ' ')
		memmove(dot, p, strlen(p) + 1);
}

void tool_fmt_size_io(char *buf, size_t len, double value)
{
	static const char *const units[] = { "EiB", "PiB", "TiB", "GiB", "MiB", "KiB" };
	int i;

	for (i = 0; i < 6; i++) {
		double unit = ldexp(1.0, 10 * (6 - i));

		if (value >= unit) {
			snprintf(buf, len, "%.3f %s", value / unit, units[i]);
			trim_zero_fraction(buf);
			return;
		}
	}
	snprintf(buf, len, "%f bytes", value);
	trim_zero_fraction(buf);
}

void tool_fmt_size_img(char *buf, size_t len, uint64_t value)
{
	static const char *const units[] = { "", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei" };
	int exp, i;

	/* The unit is the one under which the number is below 1000 (not 1024). */
	frexp((double)value / (1000.0 / 1024.0), &exp);
	i = (exp - 1) / 10;
	if (i < 0)
		i = 0;
	if (i > 6)
		i = 6;
	snprintf(buf, len, "%0.3g %sB", (double)value / (double)(1ull << (i * 10)), units[i]);
}
