/* SPDX-License-Identifier: MIT */
/*
 * tblk-nbd.c - serves one image over NBD with qemu-nbd's command line: options, opening the
 * image, listening on TCP or a Unix socket, --fork and --pid-file, and exiting after the last
 * client unless -t. The server itself is tools/export-nbd*.c.
 *
 * Threading: one thread runs the loop that owns the listeners, the connections and the
 * backend; requests run on the worker pool and complete on that loop.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "config-host.h"
#include "common/nbd-wire.h"
#include "tblk/tblk.h"
#include "tools/export-nbd.h"
#include "tools/tool-util.h"
#include "threadpool/threadpool.h"

#ifndef TBLK_VERSION
#define TBLK_VERSION "0"
#endif

struct nbd_opts {
	const char *filename;
	const char *fmt;
	const char *port;
	const char *bind;
	const char *sockpath;
	const char *name;
	const char *description;
	const char *pid_file;
	unsigned int flags;		/* TBLK_OPEN_* */
	unsigned long shared;
	bool persistent;
	bool image_opts;
	bool fork;
	bool alloc_depth;
	bool discard;
	enum nbds_detect_zeroes detect_zeroes;
};

struct nbd_state {
	struct tblk_loop *loop;
	bool persistent;
	int sigfd;
};

enum { OPT_CACHE = 256, OPT_AIO, OPT_DISCARD, OPT_DETECT_ZEROES, OPT_FORK, OPT_PID_FILE,
       OPT_IMAGE_OPTS, OPT_OBJECT, OPT_TLS_CREDS, OPT_TLS_AUTHZ, OPT_SELINUX };

static const struct option long_opts[] = {
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, 'V' },
	{ "port", required_argument, NULL, 'p' },
	{ "bind", required_argument, NULL, 'b' },
	{ "socket", required_argument, NULL, 'k' },
	{ "shared", required_argument, NULL, 'e' },
	{ "persistent", no_argument, NULL, 't' },
	{ "verbose", no_argument, NULL, 'v' },
	{ "export-name", required_argument, NULL, 'x' },
	{ "description", required_argument, NULL, 'D' },
	{ "allocation-depth", no_argument, NULL, 'A' },
	{ "format", required_argument, NULL, 'f' },
	{ "read-only", no_argument, NULL, 'r' },
	{ "nocache", no_argument, NULL, 'n' },
	{ "cache", required_argument, NULL, OPT_CACHE },
	{ "aio", required_argument, NULL, OPT_AIO },
	{ "discard", required_argument, NULL, OPT_DISCARD },
	{ "detect-zeroes", required_argument, NULL, OPT_DETECT_ZEROES },
	{ "fork", no_argument, NULL, OPT_FORK },
	{ "pid-file", required_argument, NULL, OPT_PID_FILE },
	{ "image-opts", no_argument, NULL, OPT_IMAGE_OPTS },
	{ "object", required_argument, NULL, OPT_OBJECT },
	{ "trace", required_argument, NULL, 'T' },
	{ NULL, 0, NULL, 0 },
};

static void usage(void)
{
	printf("Usage: %s [OPTIONS] FILE\n"
	       "Serve an image over NBD (tblk).\n\n"
	       "  -h, --help                display this help and exit\n"
	       "  -V, --version             output version information and exit\n\n"
	       "Connection properties:\n"
	       "  -p, --port=PORT           port to listen on (default `10809')\n"
	       "  -b, --bind=IFACE          interface to bind to (default `0.0.0.0')\n"
	       "  -k, --socket=PATH         path to the unix socket\n"
	       "  -e, --shared=NUM          device can be shared by NUM clients (default '1')\n"
	       "  -t, --persistent          don't exit on the last connection\n"
	       "  -v, --verbose             accepted, ignored\n"
	       "  -x, --export-name=NAME    expose export by name (default is empty string)\n"
	       "  -D, --description=TEXT    export a human-readable description\n\n"
	       "Exposing part of the image:\n"
	       "  -A, --allocation-depth    expose the allocation depth\n\n"
	       "General purpose options:\n"
	       "  --object type,id=ID,...   accepted, ignored\n"
	       "  -T, --trace OPTS          accepted, ignored\n"
	       "  --fork                    fork off the server process and exit the parent\n"
	       "                            once the server is running\n"
	       "  --pid-file=PATH           store the server's process ID in the given file\n\n"
	       "Block device options:\n"
	       "  -f, --format=FORMAT       set image format (raw, qcow2, ...)\n"
	       "  -r, --read-only           export read-only\n"
	       "  -n, --nocache             disable host cache\n"
	       "      --cache=MODE          'none', 'writeback' (default), 'writethrough',\n"
	       "                            'directsync' and 'unsafe'\n"
	       "      --aio=MODE            set AIO mode (native, io_uring or threads)\n"
	       "      --discard=MODE        set discard mode (ignore, unmap)\n"
	       "      --detect-zeroes=MODE  set detect-zeroes mode (off, on, unmap)\n"
	       "      --image-opts          treat FILE as a full set of image options\n",
	       tool_progname);
}

static void bad_usage(void)
{
	tool_error("Try `%s --help' for more information.", tool_progname);
	exit(1);
}

static void parse_args(int argc, char **argv, struct nbd_opts *o)
{
	const char *detect_zeroes = NULL;
	int c;

	while ((c = getopt_long(argc, argv, "hVp:b:k:e:tvx:D:Af:rnT:", long_opts, NULL)) != -1) {
		switch (c) {
		case 'h':
			usage();
			exit(0);
		case 'V':
			printf("%s 7.2.22 (tblk %s)\n", tool_progname, TBLK_VERSION);
			exit(0);
		case 'p':
			o->port = optarg;
			break;
		case 'b':
			o->bind = optarg;
			break;
		case 'k':
			o->sockpath = optarg;
			break;
		case 'e':
			if (tool_strtoul(optarg, &o->shared) < 0 || o->shared > INT32_MAX) {
				tool_error("Invalid shared device number '%s'", optarg);
				exit(1);
			}
			break;
		case 't':
			o->persistent = true;
			break;
		case 'x':
			o->name = optarg;
			if (strlen(optarg) > TBLK_NBD_MAX_STRING) {
				tool_error("export name '%s' too long", optarg);
				exit(1);
			}
			break;
		case 'D':
			o->description = optarg;
			if (strlen(optarg) > TBLK_NBD_MAX_STRING) {
				tool_error("export description '%s' too long", optarg);
				exit(1);
			}
			break;
		case 'A':
			o->alloc_depth = true;
			break;
		case 'f':
			o->fmt = optarg;
			break;
		case 'r':
			o->flags &= ~TBLK_OPEN_RDWR;
			break;
		case 'n':
			tblk_parse_cache_mode("none", &o->flags, NULL);
			break;
		case OPT_CACHE:
			if (tblk_parse_cache_mode(optarg, &o->flags, NULL) < 0) {
				tool_error("Invalid cache mode `%s'", optarg);
				exit(1);
			}
			break;
		case OPT_AIO:
			if (tblk_parse_aio_mode(optarg, &o->flags, NULL) < 0) {
				tool_error("Invalid aio mode '%s'", optarg);
				exit(1);
			}
			break;
		case OPT_DISCARD:
			if (!strcmp(optarg, "ignore") || !strcmp(optarg, "off")) {
				o->discard = false;
			} else if (!strcmp(optarg, "unmap") || !strcmp(optarg, "on")) {
				o->discard = true;
			} else {
				tool_error("Invalid discard mode `%s'", optarg);
				exit(1);
			}
			break;
		case OPT_DETECT_ZEROES:
			if (strcmp(optarg, "off") && strcmp(optarg, "on") &&
			    strcmp(optarg, "unmap")) {
				tool_error("Failed to parse detect_zeroes mode: "
					   "invalid parameter value: %s", optarg);
				exit(1);
			}
			detect_zeroes = optarg;
			o->detect_zeroes = !strcmp(optarg, "off") ? NBDS_DETECT_ZEROES_OFF :
					   !strcmp(optarg, "on") ? NBDS_DETECT_ZEROES_ON :
					   NBDS_DETECT_ZEROES_UNMAP;
			break;
		case OPT_FORK:
			o->fork = true;
			break;
		case OPT_PID_FILE:
			o->pid_file = optarg;
			break;
		case OPT_IMAGE_OPTS:
			o->image_opts = true;
			break;
		case 'v':
		case 'T':
		case OPT_OBJECT:
			break;
		default:
			bad_usage();
		}
	}
	if (argc - optind != 1) {
		tool_error("Invalid number of arguments");
		fprintf(stderr, "Try `%s --help' for more information.\n", tool_progname);
		exit(1);
	}
	o->filename = argv[optind];
	if (detect_zeroes && !strcmp(detect_zeroes, "unmap") && !o->discard) {
		tool_error("setting detect-zeroes to unmap is not allowed without setting "
			   "discard operation to unmap");
		exit(1);
	}
	if (o->image_opts && o->fmt) {
		tool_error("--image-opts and -f are mutually exclusive");
		exit(1);
	}
}

static int open_image(struct nbd_opts *o, struct tblk_loop *loop, struct tblk_blk **pblk)
{
	GHashTable *opts = tblk_opts_new();
	GError *err = NULL;
	const char *filename = o->filename;
	int ret = 0;

	if (o->image_opts) {
		ret = tblk_opts_parse(opts, o->filename, NULL, &err);
		filename = NULL;
	} else if (o->fmt) {
		g_hash_table_insert(opts, g_strdup("driver"), g_strdup(o->fmt));
	}
	if (ret == 0)
		ret = tblk_blk_open(pblk, filename, opts, o->flags, loop, &err);
	if (ret < 0)
		tool_error_gerror(err, "Failed to blk_new_open '%s': ", o->filename);
	else if (!o->image_opts && !o->fmt && tblk_blk_format_probed(*pblk))
		tool_warn_probed_raw(*pblk, o->filename);
	g_hash_table_unref(opts);
	return ret;
}

/* qemu-nbd without -t: exit once the last client is gone. */
static void on_clients(void *opaque, unsigned int nr, uint64_t total)
{
	struct nbd_state *st = opaque;

	if (!nr && total && !st->persistent)
		tblk_loop_stop(st->loop);
}

static void on_signal(void *opaque)
{
	struct nbd_state *st = opaque;
	struct signalfd_siginfo si;

	if (read(st->sigfd, &si, sizeof(si)) > 0)
		tblk_loop_stop(st->loop);
}

/*
 * --fork: the parent waits until the child listens (one byte on a pipe) and exits 0, or 1
 * if the child died first. Returns the pipe's write end in the child.
 */
static int do_fork(void)
{
	int p[2];
	pid_t pid;
	char c;

	if (pipe(p) < 0) {
		tool_error("Failed to create pipe: %s", strerror(errno));
		exit(1);
	}
	pid = fork();
	if (pid < 0) {
		tool_error("Failed to fork: %s", strerror(errno));
		exit(1);
	}
	if (pid > 0) {
		close(p[1]);
		exit(read(p[0], &c, 1) == 1 ? 0 : 1);
	}
	close(p[0]);
	setsid();
	return p[1];
}

static void detach(int ready_fd)
{
	int null = open("/dev/null", O_RDWR);
	char c = 0;

	if (null >= 0) {
		dup2(null, 0);
		dup2(null, 1);
		dup2(null, 2);	/* as qemu-nbd: the parent's pipes must see EOF */
		if (null > 2)
			close(null);
	}
	if (write(ready_fd, &c, 1) < 0) {
		/* The parent is gone; nobody to tell. */
	}
	close(ready_fd);
}

static int write_pid_file(const char *path)
{
	FILE *f = fopen(path, "w");

	if (!f || fprintf(f, "%d\n", (int)getpid()) < 0 || fclose(f) != 0) {
		tool_error("Failed to write pid file '%s': %s", path, strerror(errno));
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct nbd_opts o = { .port = "10809", .bind = "0.0.0.0", .name = "",
			      .flags = TBLK_OPEN_RDWR | TBLK_OPEN_NO_SHARE_RESIZE, .shared = 1 };
	struct nbds_export_opts eo = { 0 };
	struct nbd_state st = { 0 };
	struct nbds_server *srv;
	struct tblk_blk *blk = NULL;
	GError *err = NULL;
	int ready_fd = -1, ret = 1;
	sigset_t mask;

	tool_set_progname(argv[0]);
	argv[0] = (char *)tool_progname;	/* getopt's messages name the program as qemu's do */
	parse_args(argc, argv, &o);
	signal(SIGPIPE, SIG_IGN);
	/* Before any thread exists, so that every thread inherits the mask. */
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &mask, NULL);
	if (o.fork)
		ready_fd = do_fork();

	st.loop = tblk_loop_new(&err);
	if (!st.loop) {
		tool_error_gerror(err, NULL);
		return 1;
	}
	srv = nbds_server_new(st.loop);
	st.persistent = o.persistent;
	nbds_server_set_clients_cb(srv, on_clients, &st);
	nbds_server_set_max_clients(srv, (unsigned int)o.shared);
	/* As qemu-nbd: the socket first, then the image. */
	if (o.sockpath)
		ret = nbds_server_listen_unix(srv, o.sockpath, &err);
	else
		ret = nbds_server_listen_inet(srv, o.bind, o.port, &err);
	if (ret < 0) {
		ret = 1;
		tool_error_gerror(err, NULL);
		goto out_srv;
	}
	ret = 1;
	if (open_image(&o, st.loop, &blk) < 0)
		goto out_srv;
	eo.name = o.name;
	eo.description = o.description;
	eo.writable = o.flags & TBLK_OPEN_RDWR;
	eo.allocation_depth = o.alloc_depth;
	eo.multi_conn = o.shared != 1;	/* qemu-nbd: multi-conn when shared by several */
	eo.discard = o.discard;
	eo.detect_zeroes = o.detect_zeroes;
	if (nbds_server_add_export(srv, blk, &eo, &err) < 0) {
		tool_error_gerror(err, NULL);
		goto out_srv;
	}
	ret = 1;
	if (o.pid_file && write_pid_file(o.pid_file) < 0)
		goto out_srv;

	st.sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	if (st.sigfd >= 0)
		tblk_loop_set_fd_handler(st.loop, st.sigfd, on_signal, NULL, NULL, &st);
	if (ready_fd >= 0)
		detach(ready_fd);

	tblk_loop_run(st.loop);
	ret = 0;
	if (st.sigfd >= 0) {
		tblk_loop_set_fd_handler(st.loop, st.sigfd, NULL, NULL, NULL, NULL);
		close(st.sigfd);
	}
out_srv:
	nbds_server_free(srv);
	tblk_blk_close(blk);
	if (o.pid_file && ret == 0)
		unlink(o.pid_file);
	tblk_loop_free(st.loop);
	return ret;
}
