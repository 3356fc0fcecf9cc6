/* SPDX-License-Identifier: MIT */
/*
 * file-extend.c - the file protocol's growing ahead of O_DIRECT writes (protocols/file.c,
 * "extending ahead"): the file is grown by fallocate() ahead of writes past its end, the
 * node's length is where the data ends, and the close gives the rest back.
 * - A write that fails (past RLIMIT_FSIZE: EFBIG) does not lengthen the node, and the close
 *   still gives the extension back.
 * - Zeroes past the end inside the extension read as zeroes and count in the length.
 * - Two opens of the same file writing it (locking=off, as share-rw or two processes would):
 *   neither close cuts what the other wrote, in either order of closing, whether the second
 *   open wrote inside the first one's extension, past it, or inside the file system block
 *   where the first one's data ends.
 */
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tracked/tracked.h"
#include "t/tap.h"

#define MiB		(1ull << 20)
#define START_SIZE	MiB

static char path[256];

static struct tblk_node *node_open(void)
{
	GHashTable *opts = tblk_opts_new();
	struct tblk_node *node = NULL;
	char spec[400];
	GError *err = NULL;

	snprintf(spec, sizeof(spec), "driver=file,filename=%s,locking=off", path);
	tblk_opts_parse(opts, spec, NULL, NULL);
	if (tblk__node_open(&node, NULL, opts, TBLK_OPEN_RDWR | TBLK_OPEN_NOCACHE |
			    TBLK_OPEN_PROTOCOL, &err) < 0) {
		tap_diag("open: %s", err ? err->message : "?");
		g_clear_error(&err);
		node = NULL;
	}
	g_hash_table_unref(opts);
	return node;
}

static void file_reset(void)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);

	if (fd < 0 || ftruncate(fd, START_SIZE) < 0)
		tap_bail("cannot create the test file");
	close(fd);
}

static int64_t file_size(void)
{
	struct stat st;

	return stat(path, &st) < 0 ? -1 : (int64_t)st.st_size;
}

static int node_write(struct tblk_node *node, uint64_t off, size_t len, int c)
{
	void *buf = aligned_alloc(4096, TBLK_ALIGN_UP(len, 4096));
	int ret;

	memset(buf, c, len);
	ret = tblk_node_pwrite(node, off, buf, len, 0);
	free(buf);
	return ret;
}

/* True if [off, off + len) of the file holds @c only (read without the node). */
static bool file_holds(uint64_t off, size_t len, int c)
{
	uint8_t *buf = g_malloc(len);
	int fd = open(path, O_RDONLY);
	bool same = fd >= 0 && pread(fd, buf, len, (off_t)off) == (ssize_t)len;

	for (size_t i = 0; same && i < len; i++)
		same = buf[i] == c;
	if (fd >= 0)
		close(fd);
	g_free(buf);
	return same;
}

static void test_failed_write(void)
{
	struct rlimit old, lim;
	struct tblk_node *node;
	int ret;

	file_reset();
	node = node_open();
	if (!node)
		tap_bail("cannot open the file node");
	is_int(node_write(node, START_SIZE, 4096, 0xa1), 0, "failed write: a write past the end");
	ok(file_size() > (int64_t)(START_SIZE + 4096), "failed write: the file grew ahead (%lld)",
	   (long long)file_size());
	/* Writes past 256 MiB fail with EFBIG (the signal ignored), before any data goes. */
	getrlimit(RLIMIT_FSIZE, &old);
	lim = old;
	lim.rlim_cur = 256 * MiB;
	signal(SIGXFSZ, SIG_IGN);
	setrlimit(RLIMIT_FSIZE, &lim);
	ret = node_write(node, 512 * MiB, 4096, 0xa2);
	setrlimit(RLIMIT_FSIZE, &old);
	signal(SIGXFSZ, SIG_DFL);
	ok(ret < 0, "failed write: a write past RLIMIT_FSIZE fails (%d)", ret);
	is_int(tblk_node_getlength(node), (int64_t)(START_SIZE + 4096),
	       "failed write: the length is where the last good write ended");
	ret = tblk_node_pwrite_zeroes(node, START_SIZE + 4096, 8192, 0);
	is_int(ret, 0, "failed write: zeroes past the end, inside the extension");
	is_int(tblk_node_getlength(node), (int64_t)(START_SIZE + 3 * 4096),
	       "failed write: the zeroes count in the length");
	tblk__node_close(node);
	is_int(file_size(), (int64_t)(START_SIZE + 3 * 4096),
	       "failed write: the close gives the extension back");
	ok(file_holds(START_SIZE, 4096, 0xa1) && file_holds(START_SIZE + 4096, 8192, 0),
	   "failed write: data and zeroes read back");
}

/*
 * Two opens: A writes @a_len at @a_off first (growing the file ahead), then B (opened after)
 * @b_len at @b_off. Closed in the order @a_first says; nobody's data may be cut.
 */
static void two_writers(const char *name, uint64_t a_off, size_t a_len, uint64_t b_off,
			size_t b_len, bool a_first)
{
	struct tblk_node *a, *b;
	uint64_t end = TBLK_MAX(a_off + a_len, b_off + b_len);
	int64_t size;

	file_reset();
	a = node_open();
	if (!a)
		tap_bail("cannot open the file node");
	is_int(node_write(a, a_off, a_len, 0xaa), 0, "%s: A writes", name);
	b = node_open();
	if (!b)
		tap_bail("cannot open the file node");
	is_int(node_write(b, b_off, b_len, 0xbb), 0, "%s: B writes", name);
	tblk__node_close(a_first ? a : b);
	tblk__node_close(a_first ? b : a);
	size = file_size();
	ok(size >= (int64_t)end && size < (int64_t)(end + 4096),
	   "%s: the file ends where the data does (%lld, data up to %llu)", name,
	   (long long)size, (unsigned long long)end);
	ok(file_holds(a_off, a_len, 0xaa), "%s: A's data is intact", name);
	ok(file_holds(b_off, b_len, 0xbb), "%s: B's data is intact", name);
}

int main(void)
{
	int fd;

	alarm(60);
	snprintf(path, sizeof(path), "%s/tblk-extend-XXXXXX", getenv("TMPDIR") ?: "/tmp");
	fd = mkstemp(path);
	if (fd < 0)
		tap_bail("mkstemp");
	close(fd);
	/* O_DIRECT is what turns extending ahead on: without it (tmpfs) there is nothing here. */
	fd = open(path, O_RDWR | O_DIRECT);
	if (fd < 0) {
		tap_skip(1, "no O_DIRECT where TMPDIR is");
		unlink(path);
		return tap_done();
	}
	close(fd);
	tap_plan(8 + 5 * 5);
	test_failed_write();
	/* B writes inside A's extension, which B counts as its own length. */
	two_writers("inside, A closes last", START_SIZE, 4096, 10 * MiB, 65536, false);
	two_writers("inside, A closes first", START_SIZE, 4096, 10 * MiB, 65536, true);
	/* B writes past A's extension and grows the file ahead itself. */
	two_writers("past, A closes last", START_SIZE, 4096, 200 * MiB, 4096, false);
	two_writers("past, A closes first", START_SIZE, 4096, 200 * MiB, 4096, true);
	/* B writes right after A's end, inside the same file system block. */
	two_writers("same block", START_SIZE, 512, START_SIZE + 512, 512, false);
	unlink(path);
	return tap_done();
}
