/* SPDX-License-Identifier: MIT */
/*
 * vhost-user-load - drives any vhost-user-blk back-end at full speed without a guest: the
 * test front-end (t/vhost-user-frontend.h) with fixed descriptor chains per slot, one thread
 * per queue keeping --depth requests in flight for --time seconds. Prints one line:
 *   ios=N secs=S iops=I cpu_us_per_io=C ios_per_kick=K ios_per_wait=W features=0xF
 * where C is the back-end's user+system CPU time (from /proc/--pid/stat) over the run
 * divided by the I/Os, K and W the requests per kick the driver sent and per wait for a call
 * (how much each side batches), F the negotiated features. Built by bench/vhost-user.sh
 * (cc -O2 -pthread -I<src> -I<build>).
 *
 * usage: vhost-user-load --socket PATH [--pid PID] [--queues N] [--depth D] [--bs BYTES]
 *        [--rw randread|randwrite|read|write] [--time SECS] [--size BYTES]
 *        [--event-idx | --no-event-idx]
 *
 * By default the driver negotiates VIRTIO_RING_F_EVENT_IDX, as a Linux guest's virtio-blk
 * driver does with any device that offers it (QEMU's vhost-user-blk-pci passes it on): it
 * kicks only when the device's avail event asks for it, and sets its used event to the
 * entry it waits for before it sleeps. With --no-event-idx it kicks after every batch it
 * adds and wants a call after every batch the device completes. The driver refuses to run
 * if the back-end does not offer every feature it asks for, so that two back-ends are
 * always measured with the same negotiated features.
 */
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "t/vhost-user-frontend.h"

static unsigned int depth = 32, bs = 4096, secs = 5;
static uint64_t disk = 1 << 30;
static bool rnd = true, wr, event_idx = true;
static struct fe f;
static volatile bool stop_flag;

struct qstate {
	unsigned int q;
	uint64_t ios, seed, next_off;
	uint64_t kicks, sleeps;		/* kick eventfd writes, waits for a call */
	int err;
};

static void slot_setup(struct drv *d, unsigned int slot, uint64_t *hdr_gpa)
{
	uint64_t h = drv_alloc(d, 16), st = drv_alloc(d, 1);
	/* Page-aligned data, as a guest's block layer gives it (O_DIRECT needs no bounce). */
	uint64_t data = (drv_alloc(d, bs + 4096) + 4095) & ~4095ull;
	unsigned int base = slot * 3;

	d->desc[base] = (struct vring_desc){ h, 16, VRING_DESC_F_NEXT, (uint16_t)(base + 1) };
	d->desc[base + 1] = (struct vring_desc){ data, bs, (uint16_t)(VRING_DESC_F_NEXT |
					(wr ? 0 : VRING_DESC_F_WRITE)), (uint16_t)(base + 2) };
	d->desc[base + 2] = (struct vring_desc){ st, 1, VRING_DESC_F_WRITE, 0 };
	memset(g2h(d, data), 0x5a, bs);
	*hdr_gpa = h;
}

static void slot_submit(struct qstate *qs, struct drv *d, uint64_t hdr_gpa, unsigned int slot)
{
	struct virtio_blk_outhdr *h = g2h(d, hdr_gpa);
	uint64_t blocks = disk / bs, off;

	if (rnd) {
		qs->seed ^= qs->seed << 13;
		qs->seed ^= qs->seed >> 7;
		qs->seed ^= qs->seed << 17;
		off = (qs->seed % blocks) * bs;
	} else {
		off = qs->next_off;
		qs->next_off = (qs->next_off + bs) % (blocks * bs);
	}
	*h = (struct virtio_blk_outhdr){ wr ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, 0, off / 512 };
	drv_add_head(d, (uint16_t)(slot * 3));
}

/* The virtio spec's vring_need_event(): did [old, new) pass event? */
static bool need_event(uint16_t event, uint16_t new_idx, uint16_t old)
{
	return (uint16_t)(new_idx - event - 1) < (uint16_t)(new_idx - old);
}

/* Publishes what was added since @old and kicks if the device wants it. */
static void kick(struct qstate *qs, struct drv *d, unsigned int q, uint16_t old)
{
	uint16_t ev;

	if (!event_idx) {
		qs->kicks++;
		fe_kick(&f, q);
		return;
	}
	/* Index store, then event load: both sequentially consistent (store-load order). */
	__atomic_store_n(&d->avail->idx, d->avail_idx, __ATOMIC_SEQ_CST);
	ev = __atomic_load_n((uint16_t *)&d->used->ring[d->num], __ATOMIC_SEQ_CST);
	if (!need_event(ev, d->avail_idx, old))
		return;
	qs->kicks++;
	if (write(f.kick[q], &(uint64_t){ 1 }, 8) < 0)
		abort();
}

/* EVENT_IDX: asks for a call at the next used entry; false if one is there already. */
static bool want_call(struct drv *d)
{
	if (!event_idx)
		return true;
	__atomic_store_n(&d->avail->ring[d->num], d->last_used, __ATOMIC_SEQ_CST);
	return __atomic_load_n(&d->used->idx, __ATOMIC_SEQ_CST) == d->last_used;
}

static void *queue_main(void *arg)
{
	struct qstate *qs = arg;
	struct drv *d = &f.d[qs->q];
	uint64_t *hdr = calloc(depth, sizeof(*hdr));

	uint16_t old = d->avail_idx;

	for (unsigned int s = 0; s < depth; s++) {
		slot_setup(d, s, &hdr[s]);
		slot_submit(qs, d, hdr[s], s);
	}
	kick(qs, d, qs->q, old);
	while (!stop_flag) {
		struct pollfd pfd = { f.call[qs->q], POLLIN, 0 };
		uint32_t id, len;
		uint64_t cnt;
		bool any = false;

		if (want_call(d)) {
			qs->sleeps++;
			if (poll(&pfd, 1, 100) == 1 && read(f.call[qs->q], &cnt, 8) < 0)
				break;
		}
		old = d->avail_idx;
		while (drv_get_used(d, &id, &len)) {
			unsigned int s = id / 3;

			if (id % 3 || s >= depth) {
				qs->err = 1;
				stop_flag = true;
				break;
			}
			qs->ios++;
			slot_submit(qs, d, hdr[s], s);
			any = true;
		}
		if (any)
			kick(qs, d, qs->q, old);
	}
	free(hdr);
	return NULL;
}

static double cpu_secs(long pid)
{
	char path[64], buf[1024];
	unsigned long ut, st;
	FILE *fp;
	char *p;

	snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
	fp = fopen(path, "r");
	if (!fp || !fgets(buf, sizeof(buf), fp)) {
		if (fp)
			fclose(fp);
		return 0;
	}
	fclose(fp);
	p = strrchr(buf, ')');
	/* fields after ")": state(3) ... utime(14) stime(15) */
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
			 &ut, &st) != 2)
		return 0;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* The features the back-end offers, asked on a connection of its own; 0 on failure. */
static uint64_t offered_features(const char *sock)
{
	struct fe probe = { .sock = fe_connect(sock) };
	uint64_t v = 0;

	if (probe.sock < 0)
		return 0;
	if (fe_get_u64(&probe, VHOST_USER_GET_FEATURES, &v) < 0)
		v = 0;
	close(probe.sock);
	return v;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "socket", 1, NULL, 's' }, { "pid", 1, NULL, 'p' }, { "queues", 1, NULL, 'q' },
		{ "depth", 1, NULL, 'd' }, { "bs", 1, NULL, 'b' }, { "rw", 1, NULL, 'r' },
		{ "time", 1, NULL, 't' }, { "size", 1, NULL, 'S' }, { "event-idx", 0, NULL, 'e' },
		{ "no-event-idx", 0, NULL, 'E' }, { NULL, 0, NULL, 0 },
	};
	const char *sock = NULL;
	unsigned int nq = 1;
	struct qstate qs[FE_MAXQ];
	pthread_t th[FE_MAXQ];
	uint64_t ios = 0, kicks = 0, sleeps = 0, want, offered;
	double t0, t1, c0, c1;
	long pid = 0;
	int opt, err = 0;

	while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (opt) {
		case 's': sock = optarg; break;
		case 'p': pid = atol(optarg); break;
		case 'q': nq = (unsigned int)atoi(optarg); break;
		case 'd': depth = (unsigned int)atoi(optarg); break;
		case 'b': bs = (unsigned int)atoi(optarg); break;
		case 't': secs = (unsigned int)atoi(optarg); break;
		case 'S': disk = strtoull(optarg, NULL, 0); break;
		case 'e': event_idx = true; break;
		case 'E': event_idx = false; break;
		case 'r':
			rnd = !strncmp(optarg, "rand", 4);
			wr = strstr(optarg, "write") != NULL;
			break;
		default: return 2;
		}
	}
	if (!sock || nq < 1 || nq > FE_MAXQ || depth < 1 || depth * 3 > FE_QSIZE || bs % 512) {
		fprintf(stderr, "vhost-user-load: bad arguments\n");
		return 2;
	}
	want = 1ull << VIRTIO_F_VERSION_1 | 1ull << VIRTIO_BLK_F_MQ | 1ull << VIRTIO_BLK_F_FLUSH |
	       (event_idx ? 1ull << VIRTIO_RING_F_EVENT_IDX : 0);
	offered = offered_features(sock);
	if ((offered & want) != want) {
		fprintf(stderr, "vhost-user-load: %s does not offer features 0x%llx\n", sock,
			(unsigned long long)(want & ~offered));
		return 1;
	}
	if (fe_mem_init(&f, 256u << 20) < 0 || fe_setup(&f, sock, nq, want) != 0) {
		fprintf(stderr, "vhost-user-load: cannot set up %s\n", sock);
		return 1;
	}
	c0 = pid ? cpu_secs(pid) : 0;
	t0 = now();
	for (unsigned int q = 0; q < nq; q++) {
		qs[q] = (struct qstate){ .q = q, .seed = 0x9e3779b97f4a7c15ull * (q + 1),
					 .next_off = (disk / nq) * q / bs * bs };
		pthread_create(&th[q], NULL, queue_main, &qs[q]);
	}
	usleep(secs * 1000000u);
	stop_flag = true;
	for (unsigned int q = 0; q < nq; q++) {
		pthread_join(th[q], NULL);
		ios += qs[q].ios;
		kicks += qs[q].kicks;
		sleeps += qs[q].sleeps;
		err |= qs[q].err;
	}
	t1 = now();
	c1 = pid ? cpu_secs(pid) : 0;
	printf("ios=%llu secs=%.3f iops=%.0f cpu_us_per_io=%.2f ios_per_kick=%.1f "
	       "ios_per_wait=%.1f features=0x%llx\n", (unsigned long long)ios, t1 - t0,
	       (double)ios / (t1 - t0), ios ? (c1 - c0) * 1e6 / (double)ios : 0.0,
	       kicks ? (double)ios / kicks : 0.0, sleeps ? (double)ios / sleeps : 0.0,
	       (unsigned long long)want);
	fe_close(&f);
	return err;
}
