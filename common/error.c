/* SPDX-License-Identifier: MIT */
/*
 * error.c - control-path error reporting (GError in the TBLK_ERROR domain) and small
 * parsers for option values. Thread-safe; no state of its own.
 */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include <tblk/tblk.h>

#include "common/common.h"

GQuark tblk_error_quark(void)
{
	return g_quark_from_static_string("tblk-error");
}

static int error_setv(GError **errp, int err, bool with_errno, const char *fmt, va_list ap)
{
	char *msg;

	if (err < 0)
		err = -err;
	/* Zero would turn an error into success for the caller returning our value. */
	assert(err > 0);
	if (!errp || *errp)
		return -err;
	msg = g_strdup_vprintf(fmt, ap);
	if (with_errno)
		g_set_error(errp, TBLK_ERROR, err, "%s: %s", msg, g_strerror(err));
	else
		g_set_error_literal(errp, TBLK_ERROR, err, msg);
	g_free(msg);
	return -err;
}

int tblk_error_set(GError **errp, int err, const char *fmt, ...)
{
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = error_setv(errp, err, false, fmt, ap);
	va_end(ap);
	return r;
}

int tblk_error_set_errno(GError **errp, int err, const char *fmt, ...)
{
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = error_setv(errp, err, true, fmt, ap);
	va_end(ap);
	return r;
}

void tblk_error_prepend(GError **errp, const char *fmt, ...)
{
	va_list ap;
	char *prefix, *msg;

	if (!errp || !*errp)
		return;
	va_start(ap, fmt);
	prefix = g_strdup_vprintf(fmt, ap);
	va_end(ap);
	msg = g_strconcat(prefix, (*errp)->message, NULL);
	g_free((*errp)->message);
	(*errp)->message = msg;
	g_free(prefix);
}

int tblk_parse_uint64(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!s || !*s || *s == '-' || *s == ' ')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno == ERANGE)
		return -ERANGE;
	if (errno || *end)
		return -EINVAL;
	*out = v;
	return 0;
}

int tblk_parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = { "on", "true", "yes", "1" };
	static const char *const no[] = { "off", "false", "no", "0" };

	for (size_t i = 0; i < TBLK_ARRAY_SIZE(yes); i++) {
		if (!strcmp(s, yes[i])) {
			*out = true;
			return 0;
		}
		if (!strcmp(s, no[i])) {
			*out = false;
			return 0;
		}
	}
	return -EINVAL;
}

static tblk_warn_fn *warn_fn;	/* [atomic] */
static void *warn_opaque;	/* [atomic], set before warn_fn */

void tblk_set_warning_handler(tblk_warn_fn *fn, void *opaque)
{
	__atomic_store_n(&warn_opaque, opaque, __ATOMIC_RELAXED);
	__atomic_store_n(&warn_fn, fn, __ATOMIC_RELEASE);
}

void tblk__warn(const char *fmt, ...)
{
	tblk_warn_fn *fn = __atomic_load_n(&warn_fn, __ATOMIC_ACQUIRE);
	g_autofree char *msg = NULL;
	va_list ap;

	if (!fn)
		return;
	va_start(ap, fmt);
	msg = g_strdup_vprintf(fmt, ap);
	va_end(ap);
	fn(msg, __atomic_load_n(&warn_opaque, __ATOMIC_RELAXED));
}
