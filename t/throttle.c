/* SPDX-License-Identifier: MIT */
/*
 * throttle.c - I/O limits: the leaky-bucket arithmetic with explicit timestamps, option
 * parsing and validation, round-robin release between the members of a group under an
 * injected clock, and backends and throttle filters whose requests (asynchronous, from
 * several threads synchronously, a group of three backends) all complete under limits.
 * No assertion depends on timing: rates are measured by bench/throttle.py.
 */
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "tracked/throttle.h"
#include "tracked/tracked.h"
#include "threadpool/threadpool.h"
#include "t/tap.h"

static struct tblk__thr_cfg cfg_from(const char *str, int *ret)
{
	g_autoptr(GHashTable) opts = tblk_opts_new();
	struct tblk__thr_cfg cfg;

	tblk_opts_parse(opts, str, NULL, NULL);
	*ret = tblk__thr_cfg_parse(&cfg, opts, "", NULL);
	if (*ret == 0 && g_hash_table_size(opts))
		*ret = -EEXIST;
	return cfg;
}

static void test_bucket_math(void)
{
	struct tblk__thr_cfg cfg;
	int ret;

	/* 100 IOPS: a bucket of 10 ops; the 11th charge makes the next wait 10 ms. */
	cfg = cfg_from("iops-total=100", &ret);
	is_int(ret, 0, "iops-total parses");
	for (int i = 0; i < 10; i++)
		tblk__thr_account(&cfg, i & 1, 4096);
	is_int(tblk__thr_wait_ns(&cfg, false), 0, "10 ops fit the bucket of 100 IOPS");
	tblk__thr_account(&cfg, false, 4096);
	ok(tblk__thr_wait_ns(&cfg, false) >= 10000000 && tblk__thr_wait_ns(&cfg, false) <= 10000002,
	   "the 11th op leaves a 10 ms wait (%" PRIu64 " ns)", tblk__thr_wait_ns(&cfg, false));
	is_int(tblk__thr_wait_ns(&cfg, true), tblk__thr_wait_ns(&cfg, false),
	       "a total limit holds back writes too");
	tblk__thr_leak(&cfg, 5000000);
	ok(tblk__thr_wait_ns(&cfg, false) >= 5000000 && tblk__thr_wait_ns(&cfg, false) <= 5000002,
	   "after 5 ms of leak, 5 ms are left");
	tblk__thr_leak(&cfg, 5000000);
	is_int(tblk__thr_wait_ns(&cfg, false), 0, "after 10 ms the op may go");
	tblk__thr_leak(&cfg, 10000000000ull);
	ok(cfg.b[TBLK_THR_OPS_TOTAL].level == 0, "the level never goes below empty");

	/* Read and write limits are separate buckets. */
	cfg = cfg_from("bps-read=1000,iops-write=10", &ret);
	is_int(ret, 0, "bps-read and iops-write parse together");
	tblk__thr_account(&cfg, true, 1 << 20);
	tblk__thr_account(&cfg, true, 1 << 20);
	is_int(tblk__thr_wait_ns(&cfg, false), 0, "writes do not charge the read bucket");
	ok(tblk__thr_wait_ns(&cfg, true) > 0, "two writes fill a bucket of 1 op");
	tblk__thr_account(&cfg, false, 1100);
	ok(tblk__thr_wait_ns(&cfg, false) >= 1000000000 && tblk__thr_wait_ns(&cfg, false) <= 1000000002,
	   "1100 bytes against 1000 B/s (bucket 100) wait a second");

	/* iops-size: a 16 KiB request counts as four 4 KiB ops. */
	cfg = cfg_from("iops-total=10,iops-size=4096", &ret);
	tblk__thr_account(&cfg, false, 16384);
	ok(cfg.b[TBLK_THR_OPS_TOTAL].level == 4, "16 KiB with iops-size=4096 counts 4 ops");
	tblk__thr_account(&cfg, false, 512);
	ok(cfg.b[TBLK_THR_OPS_TOTAL].level == 5, "a small request counts one op");

	/* Bursts: 100 IOPS, 1000 for up to 2 s: bucket of 2000, burst rate capped at 1000/s. */
	cfg = cfg_from("iops-total=100,iops-total-max=1000,iops-total-max-length=2", &ret);
	is_int(ret, 0, "burst options parse");
	for (int i = 0; i < 100; i++)
		tblk__thr_account(&cfg, false, 512);
	is_int(tblk__thr_wait_ns(&cfg, false), 0, "100 ops fit the burst rate's tenth");
	tblk__thr_account(&cfg, false, 512);
	ok(tblk__thr_wait_ns(&cfg, false) >= 1000000 && tblk__thr_wait_ns(&cfg, false) <= 1000002,
	   "the 101st waits 1 ms at the burst rate");
	tblk__thr_leak(&cfg, 1000000);
	is_int(tblk__thr_wait_ns(&cfg, false), 0, "the burst level leaks at max per second");
}

static void test_parse_errors(void)
{
	static const char *const bad[] = {
		"iops-total=10,iops-read=5",
		"bps-total=10,bps-write-max=20",
		"iops-total=100,iops-total-max=50",
		"iops-read-max=50",
		"iops-total=100,iops-total-max=200,iops-total-max-length=0",
		"iops-total=100,iops-total-max-length=3",
		"bps-total=abc",
		"bps-total=2000000000000000",
	};
	int ret;

	for (size_t i = 0; i < TBLK_ARRAY_SIZE(bad); i++) {
		cfg_from(bad[i], &ret);
		is_int(ret, -EINVAL, "rejected: %s", bad[i]);
	}
	cfg_from("", &ret);
	is_int(ret, 0, "no limits parse");
}

/* ---------------------------------------------------------------- round-robin */

static uint64_t fake_now = 1000000000ull;

static uint64_t fake_clock(void)
{
	return __atomic_load_n(&fake_now, __ATOMIC_RELAXED);
}

struct rr_waiter {
	struct tblk__thr_waiter w;
	int id;
};

static int released[16];
static int nr_released;

static void rr_release(struct tblk__thr_waiter *w)
{
	released[nr_released++] = tblk_container_of(w, struct rr_waiter, w)->id;
}

static void test_round_robin(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	struct tblk__thr_member *a, *b;
	struct rr_waiter wa[4], wb[3];
	struct tblk__thr_cfg cfg;
	char order[32] = "";
	int ret, passed = 0;

	cfg = cfg_from("iops-total=10", &ret);	/* bucket of 1 op, one op per 100 ms */
	ret = tblk__thr_member_new(&a, "t-rr", &cfg, loop, NULL);
	is_int(ret, 0, "first member creates the group");
	ret = tblk__thr_member_new(&b, "t-rr", NULL, loop, NULL);
	is_int(ret, 0, "second member joins it");
	tblk__thr_set_clock(a, fake_clock);
	for (int i = 0; i < 4; i++) {
		wa[i] = (struct rr_waiter){ .w = { .write = false, .bytes = 512,
						     .release = rr_release }, .id = 10 + i };
		if (i < 3)
			wb[i] = (struct rr_waiter){ .w = { .write = false, .bytes = 512,
							     .release = rr_release }, .id = 20 + i };
	}
	/* The bucket takes two ops at once (level 1 is still "not over"); then queue. */
	passed += tblk__thr_submit(a, &wa[0].w);
	passed += tblk__thr_submit(a, &wa[1].w);
	passed += tblk__thr_submit(a, &wa[2].w);
	passed += tblk__thr_submit(a, &wa[3].w);
	for (int i = 0; i < 3; i++)
		passed += tblk__thr_submit(b, &wb[i].w);
	is_int(passed, 2, "two ops pass at once, the rest wait");
	for (int i = 0; i < 4; i++)
		tblk_loop_iterate(loop, false);
	is_int(nr_released, 0, "nothing is released while the clock stands still");
	for (int step = 0; step < 10 && nr_released < 5; step++) {
		__atomic_add_fetch(&fake_now, 100000000ull, __ATOMIC_RELAXED);
		tblk__thr_run_timer(a);
		/* Bounded: under the fake clock the real timer keeps finding work. */
		for (int i = 0; i < 4; i++)
			tblk_loop_iterate(loop, false);
	}
	for (int i = 0; i < nr_released; i++)
		snprintf(order + strlen(order), sizeof(order) - strlen(order), "%d ", released[i]);
	is_str(order, "12 20 13 21 22 ", "released one per 100 ms, members taking turns");
	tblk__thr_member_free(b);
	tblk__thr_member_free(a);
	tblk_loop_free(loop);
}

/* ---------------------------------------------------------------- backends */

struct acb {
	int *done;
	int *order;
	int idx;
	int ret;
};

static void acb_cb(void *opaque, int ret)
{
	struct acb *c = opaque;

	c->ret = ret;
	c->order[(*c->done)++] = c->idx;
}

static struct tblk_blk *open_blk(const char *str, struct tblk_loop *loop, GError **err)
{
	g_autoptr(GHashTable) opts = tblk_opts_new();
	struct tblk_blk *blk = NULL;

	if (tblk_opts_parse(opts, str, NULL, err) < 0)
		return NULL;
	if (tblk_blk_open(&blk, NULL, opts, TBLK_OPEN_RDWR, loop, err) < 0)
		return NULL;
	return blk;
}

#define NR_ASYNC	160

static void test_async_backend(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	struct tblk_blk *blk = open_blk("driver=null-co,size=1M,read-zeroes=on,"
					"throttling.iops-total=1000", loop, NULL);
	static char buf[NR_ASYNC][512];
	struct iovec iov[NR_ASYNC];
	struct acb cbs[NR_ASYNC];
	int order[NR_ASYNC], done = 0, errors = 0;
	struct tblk_stats st;

	ok(blk != NULL, "a backend opens with throttling.iops-total");
	if (!blk) {
		tblk_loop_free(loop);
		return;
	}
	for (int i = 0; i < NR_ASYNC; i++) {
		iov[i] = (struct iovec){ buf[i], 512 };
		cbs[i] = (struct acb){ .done = &done, .order = order, .idx = i, .ret = 1 };
		if (i % 2)
			tblk_blk_pwritev(blk, (uint64_t)i * 512, &iov[i], 1, 0, acb_cb, &cbs[i]);
		else
			tblk_blk_preadv(blk, (uint64_t)i * 512, &iov[i], 1, 0, acb_cb, &cbs[i]);
	}
	/* A drain waits for throttled requests too: it lets them go at once. */
	tblk_blk_drain(blk);
	is_int(done, NR_ASYNC, "after drain every request completed");
	for (int i = 0; i < NR_ASYNC; i++)
		errors += cbs[i].ret != 0;
	is_int(errors, 0, "all succeeded");
	tblk_blk_get_stats(blk, &st);
	is_int(st.ops[TBLK_STAT_READ] + st.ops[TBLK_STAT_WRITE], NR_ASYNC,
	       "statistics count each request once");
	tblk_blk_close(blk);
	tblk_loop_free(loop);
}

struct sync_arg {
	struct tblk_blk *blk;
	int errors;
};

static void *sync_main(void *opaque)
{
	struct sync_arg *a = opaque;
	char buf[4096];

	for (int i = 0; i < 20; i++) {
		if (tblk_blk_pread(a->blk, (uint64_t)i * 4096, buf, sizeof(buf), 0) < 0)
			a->errors++;
		if (tblk_blk_pwrite(a->blk, (uint64_t)i * 4096, buf, sizeof(buf), 0) < 0)
			a->errors++;
	}
	return NULL;
}

/* A group of three backends driven synchronously from three threads at once. */
static void test_group_sync(void)
{
	struct sync_arg args[3];
	pthread_t th[3];
	int opened = 0, errors = 0;
	uint64_t ops = 0;

	for (int i = 0; i < 3; i++) {
		args[i].blk = open_blk("driver=null-co,size=1M,throttling.group=t-g3,"
				       "throttling.iops-total=600,throttling.bps-total=100000000",
				       NULL, NULL);
		args[i].errors = 0;
		opened += args[i].blk != NULL;
	}
	is_int(opened, 3, "three backends join one group");
	if (opened != 3)
		return;
	for (int i = 0; i < 3; i++)
		pthread_create(&th[i], NULL, sync_main, &args[i]);
	for (int i = 0; i < 3; i++) {
		struct tblk_stats st;

		pthread_join(th[i], NULL);
		errors += args[i].errors;
		tblk_blk_get_stats(args[i].blk, &st);
		ops += st.ops[TBLK_STAT_READ] + st.ops[TBLK_STAT_WRITE];
		tblk_blk_close(args[i].blk);
	}
	is_int(errors, 0, "synchronous requests of the group all succeed");
	is_int(ops, 120, "and each ran once");
}

static void test_filter(void)
{
	g_autoptr(GHashTable) props = tblk_opts_new();
	struct tblk_loop *loop = tblk_loop_new(NULL);
	struct tblk_blk *blk;
	GError *err = NULL;
	char buf[512];
	int errors = 0, ret;

	tblk_opts_parse(props, "x-iops-total=400,limits.bps-total=100000000", NULL, NULL);
	ret = tblk_throttle_group_new("t-obj", props, NULL);
	is_int(ret, 0, "--object throttle-group with x- and limits. names");
	ret = tblk_throttle_group_new("t-obj", props, NULL);
	is_int(ret, -EEXIST, "a second group of the same id is refused");
	g_hash_table_insert(props, g_strdup("x-bogus"), g_strdup("1"));
	ret = tblk_throttle_group_new("t-obj2", props, &err);
	is_int(ret, -EINVAL, "an unknown property is refused");
	g_clear_error(&err);

	blk = open_blk("driver=throttle,throttle-group=t-obj,file.driver=null-co,file.size=1M",
		       loop, NULL);
	ok(blk != NULL, "a throttle filter opens on the group");
	if (blk) {
		struct iovec iov = { buf, sizeof(buf) };
		struct acb cbs[30];
		int order[30], done = 0;

		for (int i = 0; i < 30; i++)
			errors += tblk_blk_pread(blk, 0, buf, sizeof(buf), 0) < 0;
		for (int i = 0; i < 30; i++) {
			cbs[i] = (struct acb){ .done = &done, .order = order, .idx = i, .ret = 1 };
			tblk_blk_preadv(blk, 0, &iov, 1, 0, acb_cb, &cbs[i]);
		}
		tblk_blk_drain(blk);
		for (int i = 0; i < 30; i++)
			errors += cbs[i].ret != 0;
		is_int(errors, 0, "synchronous and asynchronous reads through the filter succeed");
		tblk_blk_close(blk);
	}
	blk = open_blk("driver=throttle,throttle-group=nonesuch,file.driver=null-co", NULL, &err);
	ok(!blk && err && strstr(err->message, "nonesuch"), "an unknown group is an error: %s",
	   err ? err->message : "(none)");
	g_clear_error(&err);
	blk = open_blk("driver=throttle,file.driver=null-co", NULL, &err);
	ok(!blk && err && strstr(err->message, "throttle group"), "the group is required: %s",
	   err ? err->message : "(none)");
	g_clear_error(&err);
	blk = open_blk("driver=null-co,throttling.iops-totl=5", NULL, &err);
	ok(!blk && err && strstr(err->message, "iops-totl"), "an unknown limit is named: %s",
	   err ? err->message : "(none)");
	g_clear_error(&err);
	blk = open_blk("driver=null-co,throttling.iops-total=5,throttling.iops-read=5", NULL, &err);
	ok(!blk && err, "conflicting limits are refused: %s", err ? err->message : "(none)");
	g_clear_error(&err);
	tblk_loop_free(loop);
}

/* ---------------------------------------------------------------- drain and the pool */

/*
 * Drains must not wait out the limits: with the group's clock frozen no budget ever comes
 * back, so only the drain itself can let the queued requests go. alarm() only turns a hang
 * (the bug) into a failure; nothing here depends on timing.
 */
#define NR_DRAIN	20

static void test_drain_backend(void)
{
	struct tblk_loop *loop = tblk_loop_new(NULL);
	struct tblk_blk *blk = open_blk("driver=null-co,size=1M,throttling.group=t-drain,"
					"throttling.iops-total=10", loop, NULL);
	static char buf[NR_DRAIN][512];
	struct iovec iov[NR_DRAIN];
	struct acb cbs[NR_DRAIN];
	struct tblk__thr_member *clock_m = NULL;
	int order[NR_DRAIN], done = 0, errors = 0;

	ok(blk && tblk__thr_member_new(&clock_m, "t-drain", NULL, NULL, NULL) == 0,
	   "a backend with limits and a member to freeze its group's clock");
	if (!blk || !clock_m) {
		tblk_loop_free(loop);
		return;
	}
	tblk__thr_set_clock(clock_m, fake_clock);
	alarm(60);
	for (int i = 0; i < NR_DRAIN; i++) {
		iov[i] = (struct iovec){ buf[i], 512 };
		cbs[i] = (struct acb){ .done = &done, .order = order, .idx = i, .ret = 1 };
		tblk_blk_preadv(blk, (uint64_t)i * 512, &iov[i], 1, 0, acb_cb, &cbs[i]);
	}
	for (int i = 0; i < 20; i++)
		tblk_loop_iterate(loop, false);
	ok(done < NR_DRAIN, "with the clock frozen, requests wait for budget (%d of %d done)",
	   done, NR_DRAIN);
	tblk_blk_drain(blk);
	is_int(done, NR_DRAIN, "a drain lets every waiting request go");
	for (int i = 0; i < NR_DRAIN; i++)
		errors += cbs[i].ret != 0;
	is_int(errors, 0, "and they all succeed");
	/* After the drain the limits hold again. */
	done = 0;
	for (int i = 0; i < 3; i++) {
		cbs[i] = (struct acb){ .done = &done, .order = order, .idx = i, .ret = 1 };
		tblk_blk_preadv(blk, (uint64_t)i * 512, &iov[i], 1, 0, acb_cb, &cbs[i]);
	}
	for (int i = 0; i < 20; i++)
		tblk_loop_iterate(loop, false);
	is_int(done, 0, "after the drain new requests wait for budget again");
	tblk_blk_close(blk);	/* drains: must not wait either */
	is_int(done, 3, "closing the backend drains them");
	alarm(0);
	tblk__thr_member_free(clock_m);
	tblk_loop_free(loop);
}

/*
 * The throttle filter waits in the thread carrying the request: for an asynchronous request
 * that is a pool worker, which must be counted as blocked (the pool then starts another for
 * queued work). Its drain, directly or through a format node above it, must not wait out
 * the limits either.
 */
static void test_drain_filter(void)
{
	g_autoptr(GHashTable) props = tblk_opts_new();
	struct tblk_loop *loop = tblk_loop_new(NULL);
	struct tblk__thr_member *clock_m = NULL;
	static char buf[NR_DRAIN][512];
	struct iovec iov[NR_DRAIN];
	struct acb cbs[NR_DRAIN];
	struct tblk_pool_stats ps = { 0 };
	int order[NR_DRAIN], done = 0, errors = 0;
	struct tblk_blk *blk;

	tblk_opts_parse(props, "iops-total=10", NULL, NULL);
	ok(tblk_throttle_group_new("t-fdrain", props, NULL) == 0 &&
	   tblk__thr_member_new(&clock_m, "t-fdrain", NULL, NULL, NULL) == 0,
	   "a throttle group with its clock frozen");
	if (!clock_m) {
		tblk_loop_free(loop);
		return;
	}
	tblk__thr_set_clock(clock_m, fake_clock);
	blk = open_blk("driver=raw,file.driver=throttle,file.throttle-group=t-fdrain,"
		       "file.file.driver=null-co,file.file.size=1M", loop, NULL);
	ok(blk != NULL, "raw over a throttle filter opens");
	if (!blk) {
		tblk__thr_member_free(clock_m);
		tblk_loop_free(loop);
		return;
	}
	alarm(60);
	for (int i = 0; i < NR_DRAIN; i++) {
		iov[i] = (struct iovec){ buf[i], 512 };
		cbs[i] = (struct acb){ .done = &done, .order = order, .idx = i, .ret = 1 };
		tblk_blk_preadv(blk, (uint64_t)i * 512, &iov[i], 1, 0, acb_cb, &cbs[i]);
	}
	/* Bounded only so that a broken count fails instead of hanging. */
	for (int i = 0; i < 10000 && ps.nr_blocked == 0; i++) {
		tblk_loop_iterate(loop, false);
		tblk_pool_get_stats(tblk_pool_default(), &ps);
		if (!ps.nr_blocked)
			usleep(1000);
	}
	ok(ps.nr_blocked > 0, "a worker waiting in the filter counts as blocked in the pool "
	   "(%u blocked of %u)", ps.nr_blocked, ps.nr_threads);
	ok(done < NR_DRAIN, "with the clock frozen, requests wait in the filter (%d of %d done)",
	   done, NR_DRAIN);
	tblk_blk_drain(blk);
	is_int(done, NR_DRAIN, "a drain of the format above lets every waiting request go");
	for (int i = 0; i < NR_DRAIN; i++)
		errors += cbs[i].ret != 0;
	is_int(errors, 0, "and they all succeed");
	tblk_blk_close(blk);
	alarm(0);
	tblk__thr_member_free(clock_m);
	tblk_loop_free(loop);
}

int main(void)
{
	tap_plan(59);
	test_bucket_math();
	test_parse_errors();
	test_round_robin();
	test_async_backend();
	test_group_sync();
	test_filter();
	test_drain_backend();
	test_drain_filter();
	return tap_done();
}
