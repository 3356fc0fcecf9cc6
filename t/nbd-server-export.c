/* SPDX-License-Identifier: MIT */
/*
 * t/nbd-server-export.c - the "nbd" export type (tools/export-nbd-daemon.c) through the
 * tools/export.h interface, without tblk-daemon: the type registers itself, its
 * --nbd-server option is parsed (qemu-storage-daemon's errors for missing and unknown keys),
 * exports are added with name, description, allocation-depth and writable, nbdinfo (libnbd,
 * a client we did not write) sees them, and shutting an export down removes it.
 * The registry helpers of export-common.c are stood in for here so that this test depends on
 * nothing but the NBD server's files.
 *
 * Threading: the main thread adds and removes exports (export.h's contract) while a second
 * thread runs the main loop the server listens on.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tools/export-nbd-proto.c"
#include "tools/export-nbd.c"
#include "tools/export-nbd-conn.c"
#include "tools/export-nbd-daemon.c"
#include "t/tap.h"

static const struct export_type *registered;

void export_type_register(const struct export_type *type)
{
	if (!strcmp(type->name, "nbd"))
		registered = type;
}

int export_take_bool(GHashTable *opts, const char *key, bool *val, GError **errp)
{
	g_autofree char *v = nbd_take(opts, key);

	if (!v)
		return 0;
	if (tblk_parse_bool(v, val) < 0)
		return tblk_error_set(errp, EINVAL, "Parameter '%s' expects 'on' or 'off'", key);
	return 0;
}

int export_take_uint(GHashTable *opts, const char *key, uint64_t *val, GError **errp)
{
	g_autofree char *v = nbd_take(opts, key);

	if (!v)
		return 0;
	if (tblk_parse_uint64(v, val) < 0)
		return tblk_error_set(errp, EINVAL, "Parameter '%s' expects a number", key);
	return 0;
}

static GHashTable *opts_of(const char *s)
{
	GHashTable *o = tblk_opts_new();

	if (tblk_opts_parse(o, s, NULL, NULL) < 0)
		tap_bail("option string");
	return o;
}

/* Calls server() with @s; returns the error message or "" on success (caller frees). */
static char *server_err(struct export_host *host, const char *s)
{
	GHashTable *o = opts_of(s);
	GError *err = NULL;
	char *msg;

	msg = g_strdup(registered->server(host, o, &err) < 0 && err ? err->message : "");
	g_clear_error(&err);
	g_hash_table_unref(o);
	return msg;
}

static char *add_err(struct export *exp, const char *s)
{
	GHashTable *o = opts_of(s);
	GError *err = NULL;
	char *msg;

	msg = g_strdup(registered->add(exp, o, &err) < 0 && err ? err->message : "");
	if (!*msg && g_hash_table_size(o))
		msg = g_strdup("option left over");
	g_clear_error(&err);
	g_hash_table_unref(o);
	return msg;
}

static void *loop_thread(void *opaque)
{
	tblk_loop_run(opaque);
	return NULL;
}

/* Runs a program, returns its exit status and stdout. */
static int prog(char **out, const char *const *argv)
{
	int status = -1;
	GError *err = NULL;

	if (!g_spawn_sync(NULL, (char **)argv, NULL, G_SPAWN_SEARCH_PATH |
			  G_SPAWN_STDERR_TO_DEV_NULL, NULL, NULL, out, NULL, &status, &err)) {
		g_clear_error(&err);
		*out = g_strdup("");
		return -1;
	}
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

#define IS_MSG(got, want, ...) do { char *g_ = (got); is_str(g_, want, __VA_ARGS__); \
				    g_free(g_); } while (0)

int main(int argc, char **argv)
{
	char *dir;
	struct export_host host = { 0 };
	struct export exp = { 0 }, exp2 = { 0 };
	struct tblk_loop *loop;
	struct tblk_blk *blk;
	GError *err = NULL;
	char *img, *sock, *uri, *opt, *out = NULL;
	pthread_t lt;
	int fd;

	/* See t/nbd-server-loops.c: glib's slice magazines confuse ThreadSanitizer. */
	(void)argc;
	if (!getenv("G_SLICE")) {
		setenv("G_SLICE", "always-malloc", 1);
		execv("/proc/self/exe", argv);
	}
	tap_plan(19);
	dir = g_dir_make_tmp("tblk-nbdexp-XXXXXX", NULL);
	ok(registered && registered->server_option &&
	   !strcmp(registered->server_option, "nbd-server"),
	   "the nbd type registers itself with the nbd-server option");
	if (!registered || !dir)
		tap_bail("no nbd export type");
	img = g_strdup_printf("%s/img.raw", dir);
	sock = g_strdup_printf("%s/s", dir);
	fd = open(img, O_CREAT | O_RDWR, 0600);
	if (fd < 0 || ftruncate(fd, 4 << 20) < 0 || pwrite(fd, "x", 1, 0) != 1)
		tap_bail("image");
	close(fd);
	loop = tblk_loop_new(&err);
	host.main_loop = loop;
	exp.common.id = "e0";
	exp.common.node_name = "disk";
	exp.common.writable = true;
	exp.loop = loop;
	if (tblk_blk_open(&blk, img, NULL, TBLK_OPEN_RDWR | TBLK_OPEN_NO_PROBE, loop, &err) < 0)
		tap_bail("open");
	exp.blk = blk;

	IS_MSG(add_err(&exp, "name=x"), "NBD server not running", "export before the server");
	IS_MSG(server_err(&host, "max-connections=2"), "Parameter 'addr.type' is missing",
	       "no addr.type");
	IS_MSG(server_err(&host, "addr.type=foo"), "Parameter 'type' does not accept value 'foo'",
	       "unknown addr.type");
	IS_MSG(server_err(&host, "addr.type=inet"), "Parameter 'addr.host' is missing",
	       "inet without host");
	IS_MSG(server_err(&host, "addr.type=unix"), "Parameter 'addr.path' is missing",
	       "unix without path");
	opt = g_strdup_printf("addr.type=unix,addr.path=%s,bogus=1", sock);
	IS_MSG(server_err(&host, opt), "Parameter 'bogus' is unexpected", "unknown key");
	g_free(opt);
	opt = g_strdup_printf("addr.type=unix,addr.path=%s", sock);
	IS_MSG(server_err(&host, opt), "", "unix server starts");
	IS_MSG(server_err(&host, opt), "NBD server already running", "only one server");
	g_free(opt);
	IS_MSG(add_err(&exp, "name=vol,multi-conn=maybe"),
	       "Parameter 'multi-conn' does not accept value 'maybe'", "bad multi-conn");
	IS_MSG(add_err(&exp, "name=vol,description=the volume,allocation-depth=on"), "",
	       "export added");
	exp2 = exp;
	exp2.common.id = "e1";
	exp2.common.writable = false;
	IS_MSG(add_err(&exp2, "name=vol"), "NBD server already has export named 'vol'",
	       "export names are unique");
	IS_MSG(add_err(&exp2, ""), "", "a second export named after its node");

	pthread_create(&lt, NULL, loop_thread, loop);
	uri = g_strdup_printf("nbd+unix:///vol?socket=%s", sock);
	{
		const char *cmd[] = { "nbdinfo", "--json", uri, NULL };

		ok(prog(&out, cmd) == 0 && strstr(out, "\"description\": \"the volume\"") &&
		   strstr(out, "\"qemu:allocation-depth\"") &&
		   strstr(out, "\"is_read_only\": false") &&
		   strstr(out, "\"can_multi_conn\": true"),
		   "nbdinfo sees the export as configured");
		if (!strstr(out ? out : "", "the volume"))
			tap_diag("%s", out ? out : "");
		g_free(out);
	}
	{
		char *u2 = g_strdup_printf("nbd+unix:///disk?socket=%s", sock);
		const char *cmd[] = { "nbdinfo", "--json", u2, NULL };

		ok(prog(&out, cmd) == 0 && strstr(out, "\"is_read_only\": true"),
		   "the writable=off export is read-only");
		g_free(out);
		g_free(u2);
	}
	{
		const char *cmd[] = { "qemu-io", "-f", "raw", "-c", "write -P 0x61 64k 64k",
				       "-c", "read -P 0x61 64k 64k", uri, NULL };

		ok(prog(&out, cmd) == 0 && !strstr(out, "failed"), "qemu-io writes and reads");
		g_free(out);
	}
	registered->shutdown(&exp);
	registered->free(&exp);
	{
		const char *cmd[] = { "nbdinfo", "--size", uri, NULL };

		ok(prog(&out, cmd) != 0, "after shutdown the export is gone");
		g_free(out);
	}
	registered->shutdown(&exp2);
	registered->free(&exp2);
	tblk_loop_stop(loop);
	pthread_join(lt, NULL);
	registered->server_free();
	ok(access(sock, F_OK) != 0, "the server's socket is removed");
	{
		char buf[4];

		ok(tblk_blk_pread(blk, 64 << 10, buf, 4, 0) == 0 && !memcmp(buf, "aaaa", 4),
		   "the data reached the image");
	}
	tblk_blk_close(blk);
	tblk_loop_free(loop);
	unlink(img);
	rmdir(dir);
	g_free(dir);
	g_free(img);
	g_free(sock);
	g_free(uri);
	return tap_done();
}
