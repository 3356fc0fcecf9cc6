/* SPDX-License-Identifier: MIT */
/*
 * tap.h - a tiny TAP producer for the C tests: plan first, typed checks that print both
 * values on failure, diagnostics, skips, bail out. A failed check does not stop the run.
 * Single-threaded use (checks from worker threads must be collected and asserted on the
 * main thread).
 */
#ifndef TBLK_TAP_H
#define TBLK_TAP_H

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tap_n, tap_failed, tap_planned = -1;

static inline void tap_plan(int n)
{
	tap_planned = n;
	printf("1..%d\n", n);
	fflush(stdout);
}

static inline void tap_diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void tap_diag(const char *fmt, ...)
{
	va_list ap;

	fputs("# ", stdout);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	fflush(stdout);
}

static inline int tap_ok(int cond, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static inline int tap_ok(int cond, const char *fmt, ...)
{
	va_list ap;

	tap_n++;
	printf("%sok %d - ", cond ? "" : "not ", tap_n);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	if (!cond)
		tap_failed++;
	fflush(stdout);
	return cond;
}

#define ok(cond, ...) tap_ok(!!(cond), __VA_ARGS__)

#define is_int(got, want, ...) do {						\
	long long got_ = (long long)(got), want_ = (long long)(want);		\
	if (!tap_ok(got_ == want_, __VA_ARGS__))				\
		tap_diag("  %s:%d: got %lld, want %lld", __FILE__, __LINE__,	\
			 got_, want_);						\
} while (0)

#define is_str(got, want, ...) do {						\
	const char *got_ = (got), *want_ = (want);				\
	int same_ = (got_ && want_) ? strcmp(got_, want_) == 0 : got_ == want_;	\
	if (!tap_ok(same_, __VA_ARGS__))					\
		tap_diag("  %s:%d: got '%s', want '%s'", __FILE__, __LINE__,	\
			 got_ ? got_ : "(null)", want_ ? want_ : "(null)");	\
} while (0)

static inline void tap_skip(int n, const char *why)
{
	while (n-- > 0) {
		printf("ok %d # skip %s\n", ++tap_n, why);
	}
	fflush(stdout);
}

static inline void tap_bail(const char *why)
{
	printf("Bail out! %s\n", why);
	fflush(stdout);
	exit(255);
}

/* Call at the end of main: checks the plan and returns the exit status. */
static inline int tap_done(void)
{
	if (tap_planned < 0)
		printf("1..%d\n", tap_n);
	else if (tap_planned != tap_n)
		tap_diag("planned %d tests but ran %d", tap_planned, tap_n);
	fflush(stdout);
	return tap_failed || (tap_planned >= 0 && tap_planned != tap_n) ? 1 : 0;
}

/* A deterministic PRNG (xorshift64*) for tests; print the seed on failure. */
static inline uint64_t tap_rand(uint64_t *state)
{
	uint64_t x = *state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*state = x;
	return x * 0x2545F4914F6CDD1DULL;
}

/* The seed: $TBLK_SEED if set, else @dflt. Printed as a diagnostic. */
static inline uint64_t tap_seed(uint64_t dflt)
{
	const char *s = getenv("TBLK_SEED");
	uint64_t seed = s ? strtoull(s, NULL, 0) : dflt;

	if (!seed)
		seed = 1;
	tap_diag("seed %" PRIu64 " (set TBLK_SEED to repeat)", seed);
	return seed;
}

#endif /* TBLK_TAP_H */
