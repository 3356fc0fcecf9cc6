/* SPDX-License-Identifier: MIT */
/*
 * vhost-user-tools.c - the programs, driven by the test front-end: tblk-vhost-user-blk
 * over --socket-path and over --fd (a socket already connected), --print-capabilities;
 * tblk-daemon with two exports on two iothreads at once and one on a listening socket
 * passed as addr.type=fd. Each writes through the socket, finds its data in the image file,
 * and ends with exit status 0 on SIGTERM, its socket removed. A front-end that truncates
 * the memory it shared (request buffers, then the rings too) breaks its queue but neither
 * kills the daemon nor writes its image. Skipped where the programs are not built (the
 * sanitizer builds build only the tests).
 */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "virtio-blk/virtio-blk.h"
#include "t/tap.h"
#include "t/vhost-user-frontend.h"

#define DISK	(4u << 20)
#define MEM	(16u << 20)

static char dir[200], tool_vub[300], tool_daemon[300];
static struct fe f;

static uint64_t features(void)
{
	return 1ull << VIRTIO_F_VERSION_1 | 1ull << VIRTIO_RING_F_EVENT_IDX |
	       1ull << VIRTIO_RING_F_INDIRECT_DESC | 1ull << VIRTIO_BLK_F_FLUSH |
	       1ull << VIRTIO_BLK_F_MQ;
}

static pid_t spawn(char *const argv[], int keep_fd, int as_fd)
{
	pid_t pid = fork();

	if (pid == 0) {
		if (keep_fd >= 0) {
			dup2(keep_fd, as_fd);
			fcntl(as_fd, F_SETFD, 0);
		}
		execv(argv[0], argv);
		_exit(127);
	}
	return pid;
}

static int stop(pid_t pid)
{
	int status = -1;

	kill(pid, SIGTERM);
	for (int i = 0; i < 1000; i++) {
		if (waitpid(pid, &status, WNOHANG) == pid)
			return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		usleep(10000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	return -1;
}

static void make_image(const char *path)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);

	if (fd < 0 || ftruncate(fd, DISK) < 0)
		tap_bail("cannot create an image");
	close(fd);
}

static bool image_has(const char *path, uint64_t off, int byte, size_t len)
{
	uint8_t *buf = malloc(len);
	int fd = open(path, O_RDONLY);
	bool ok = pread(fd, buf, len, (off_t)off) == (ssize_t)len;

	for (size_t i = 0; ok && i < len; i++)
		ok = buf[i] == byte;
	close(fd);
	free(buf);
	return ok;
}

/* Writes @byte at sector 8 on every queue (sock already connected in f.sock or by path). */
static bool write_through(const char *sock, unsigned int nq, int byte)
{
	bool good = true;

	if (fe_setup(&f, sock, nq, features()) != 0)
		return false;
	for (unsigned int q = 0; q < nq; q++) {
		struct drv *d = &f.d[q];
		struct vreq r;
		uint32_t id, len;

		drv_req(d, &r, VIRTIO_BLK_T_OUT, 8 + q * 8, 4096, 2, q & 1);
		memset(g2h(d, r.data), byte, 4096);
		fe_kick(&f, q);
		good = good && fe_wait(&f, q, 1) == 0 && drv_status(d, &r) == 0;
		drv_get_used(d, &id, &len);
		drv_reset_heap(d);
	}
	fe_close(&f);
	return good;
}

static void test_vub_socket(void)
{
	char img[300], sock[300], nq[] = "2";
	char *argv[] = { tool_vub, "--socket-path", sock, "--blk-file", img, "--num-queues", nq,
			 NULL };
	pid_t pid;

	snprintf(img, sizeof(img), "%s/a.img", dir);
	snprintf(sock, sizeof(sock), "%s/a.sock", dir);
	make_image(img);
	pid = spawn(argv, -1, -1);
	ok(write_through(sock, 2, 0x31), "tblk-vhost-user-blk --socket-path: writes on 2 queues");
	ok(write_through(sock, 1, 0x32), "... and again after a reconnect");
	is_int(stop(pid), 0, "SIGTERM: exit status 0");
	ok(image_has(img, 8 * 512, 0x32, 4096) && image_has(img, 16 * 512, 0x31, 4096),
	   "the image holds the writes");
	ok(access(sock, F_OK) < 0, "the socket is removed");
}

static void test_vub_fd(void)
{
	char img[300];
	char *argv[] = { tool_vub, "--fd", "7", "--blk-file", img, NULL };
	int sv[2];
	pid_t pid;

	snprintf(img, sizeof(img), "%s/b.img", dir);
	make_image(img);
	socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv);
	pid = spawn(argv, sv[1], 7);
	close(sv[1]);
	/* fe_setup connects by path; hand it the connected end instead. */
	{
		uint64_t v;

		f.sock = sv[0];
		f.proto = 0;
		ok(fe_get_u64(&f, VHOST_USER_GET_QUEUE_NUM, &v) == 0 && v == 1,
		   "tblk-vhost-user-blk --fd: a connected socket is served");
		close(sv[0]);
	}
	is_int(stop(pid), 0, "SIGTERM: exit status 0");
}

static void test_caps(void)
{
	char *argv[] = { tool_vub, "--print-capabilities", NULL };
	char buf[256] = { 0 };
	int p[2];
	pid_t pid;
	int status;

	if (pipe(p) < 0)
		tap_bail("pipe");
	pid = spawn(argv, p[1], 1);
	close(p[1]);
	if (read(p[0], buf, sizeof(buf) - 1) < 0)
		buf[0] = 0;
	close(p[0]);
	waitpid(pid, &status, 0);
	ok(strstr(buf, "\"type\": \"block\"") && strstr(buf, "\"read-only\"") &&
	   WIFEXITED(status) && WEXITSTATUS(status) == 0,
	   "--print-capabilities: type block, read-only");
}

static void test_daemon(void)
{
	char img1[300], img2[300], img3[300], s1[300], s2[300], s3[300];
	char bd1[400], bd2[400], bd3[400], e1[600], e2[600], e3[600];
	char *argv[] = { tool_daemon, "--object", "iothread,id=a", "--object", "iothread,id=b",
			 "--blockdev", bd1, "--blockdev", bd2, "--blockdev", bd3,
			 "--export", e1, "--export", e2, "--export", e3, NULL };
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int lfd;
	pid_t pid;

	snprintf(img1, sizeof(img1), "%s/d1.img", dir);
	snprintf(img2, sizeof(img2), "%s/d2.img", dir);
	snprintf(img3, sizeof(img3), "%s/d3.img", dir);
	snprintf(s1, sizeof(s1), "%s/d1.sock", dir);
	snprintf(s2, sizeof(s2), "%s/d2.sock", dir);
	snprintf(s3, sizeof(s3), "%s/d3.sock", dir);
	make_image(img1);
	make_image(img2);
	make_image(img3);
	snprintf(bd1, sizeof(bd1), "driver=raw,node-name=n1,file.driver=file,file.filename=%s",
		 img1);
	snprintf(bd2, sizeof(bd2), "driver=file,node-name=n2,filename=%s,aio=native,"
		 "cache.direct=on", img2);
	snprintf(bd3, sizeof(bd3), "driver=file,node-name=n3,filename=%s", img3);
	snprintf(e1, sizeof(e1), "type=vhost-user-blk,id=e1,node-name=n1,addr.type=unix,"
		 "addr.path=%s,writable=on,num-queues=2,iothread=a", s1);
	snprintf(e2, sizeof(e2), "type=vhost-user-blk,id=e2,node-name=n2,addr.type=unix,"
		 "addr.path=%s,writable=on,iothread=b", s2);
	snprintf(e3, sizeof(e3), "type=vhost-user-blk,id=e3,node-name=n3,addr.type=fd,"
		 "addr.str=9,writable=on");
	lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	memcpy(sa.sun_path, s3, strlen(s3) + 1);
	if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(lfd, 4) < 0)
		tap_bail("listen");
	pid = spawn(argv, lfd, 9);
	close(lfd);
	ok(write_through(s1, 2, 0x51), "tblk-daemon: export 1 (iothread a, 2 queues)");
	ok(write_through(s2, 1, 0x52), "tblk-daemon: export 2 (iothread b, O_DIRECT + native)");
	ok(write_through(s3, 1, 0x53), "tblk-daemon: export 3 (main loop, addr.type=fd)");
	is_int(stop(pid), 0, "SIGTERM: exit status 0");
	ok(image_has(img1, 16 * 512, 0x51, 4096) && image_has(img2, 8 * 512, 0x52, 4096) &&
	   image_has(img3, 8 * 512, 0x53, 4096), "each image holds its export's writes");
	ok(access(s1, F_OK) < 0 && access(s2, F_OK) < 0, "the sockets it created are removed");
	unlink(s3);
}

/*
 * The front-end truncates its memory file just after the first queue's rings, with a write
 * request laid out in its (now gone) buffers and then published, or truncates everything,
 * rings included; then it kicks. The queue must be reported broken, the daemon must live on,
 * and nothing may reach the image. (Published only after the truncation: the daemon polls
 * its rings and could otherwise serve the request while the memory is still whole.)
 */
static void shrink_once(const char *sock, pid_t pid, const char *img, bool rings_too,
			const char *what)
{
	struct pollfd pfd;
	struct drv *d;
	struct vreq r;
	int status;

	if (fe_setup(&f, sock, 1, features()) != 0) {
		ok(false, "%s: set-up", what);
		return;
	}
	d = &f.d[0];
	if (!rings_too) {
		drv_req(d, &r, VIRTIO_BLK_T_OUT, 64, 4096, 2, false);
		memset(g2h(d, r.data), 0x77, 4096);
	}
	if (ftruncate(f.memfd, rings_too ? 0 : (off_t)d->heap_gpa) < 0)
		tap_bail("ftruncate");
	if (!rings_too)
		drv_publish(d);
	{
		uint64_t one = 1;

		if (write(f.kick[0], &one, sizeof(one)) < 0)
			tap_bail("kick");
	}
	pfd = (struct pollfd){ f.err[0], POLLIN, 0 };
	ok(poll(&pfd, 1, 10000) == 1, "%s: the queue is reported broken (error eventfd)", what);
	ok(waitpid(pid, &status, WNOHANG) == 0, "%s: the daemon lives on", what);
	fe_close(&f);
	if (ftruncate(f.memfd, MEM) < 0)
		tap_bail("ftruncate");
	ok(image_has(img, 64 * 512, 0, 4096), "%s: the image is untouched", what);
}

static void test_shrink(void)
{
	char img[300], sock[300], bd[400], ex[600];
	char *argv[] = { tool_daemon, "--blockdev", bd, "--export", ex, NULL };
	pid_t pid;

	snprintf(img, sizeof(img), "%s/s.img", dir);
	snprintf(sock, sizeof(sock), "%s/s.sock", dir);
	make_image(img);
	snprintf(bd, sizeof(bd), "driver=raw,node-name=n,file.driver=file,file.filename=%s",
		 img);
	snprintf(ex, sizeof(ex), "type=vhost-user-blk,id=e,node-name=n,addr.type=unix,"
		 "addr.path=%s,writable=on", sock);
	pid = spawn(argv, -1, -1);
	shrink_once(sock, pid, img, false, "buffers truncated");
	shrink_once(sock, pid, img, true, "everything truncated");
	ok(write_through(sock, 1, 0x61), "a new connection with intact memory is served");
	is_int(stop(pid), 0, "SIGTERM: exit status 0");
	ok(image_has(img, 8 * 512, 0x61, 4096), "its write is in the image");
}

int main(void)
{
	const char *build = getenv("TBLK_BUILD");
	const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";

	snprintf(tool_vub, sizeof(tool_vub), "%s/tools/tblk-vhost-user-blk", build ? build : ".");
	snprintf(tool_daemon, sizeof(tool_daemon), "%s/tools/tblk-daemon", build ? build : ".");
	if (access(tool_vub, X_OK) < 0 || access(tool_daemon, X_OK) < 0) {
		printf("1..0 # SKIP the programs are not built here\n");
		return 0;
	}
	signal(SIGPIPE, SIG_IGN);
	snprintf(dir, sizeof(dir), "%s/tblk-vut-XXXXXX", tmp);
	if (!mkdtemp(dir) || fe_mem_init(&f, MEM) < 0)
		tap_bail("setup");
	test_vub_socket();
	test_vub_fd();
	test_caps();
	test_daemon();
	test_shrink();
	{
		char cmd[300];

		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			tap_diag("cleanup failed");
	}
	return tap_done();
}
