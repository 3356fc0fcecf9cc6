/* SPDX-License-Identifier: MIT */
/*
 * tblk-daemon - serves images to emulators, with qemu-storage-daemon's command line:
 * --blockdev, --object iothread, --export (vhost-user-blk, and every other export type
 * linked in, with its program-wide option such as --nbd-server), --pidfile, --daemonize.
 * Options are applied in order, so an export names nodes and iothreads given before it.
 *
 * SIGTERM, SIGINT and SIGHUP stop it: exports stop taking requests, what is in flight
 * completes, images are flushed and closed, sockets and the pid file removed, exit 0.
 *
 * Threading: the main thread parses, runs the main loop (exports without an iothread and
 * the signal fd) and shuts down; iothreads run their exports' loops.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/common.h"
#include "threadpool/threadpool.h"
#include "tools/daemon-int.h"
#include "tools/tool-util.h"

#ifndef TBLK_VERSION
#define TBLK_VERSION "0"
#endif

static void usage(void)
{
	printf("Usage: %s [options]\n"
	       "tblk storage daemon (qemu-storage-daemon's command line)\n"
	       "\n"
	       "  -h, --help             display this help and exit\n"
	       "  -V, --version          output version information and exit\n"
	       "\n"
	       "  --blockdev [driver=]<driver>,node-name=<N>[,cache.direct=on|off]\n"
	       "             [,cache.no-flush=on|off][,read-only=on|off]\n"
	       "             [,force-share=on|off][,driver specific parameters...]\n"
	       "                         configure a block backend\n"
	       "\n"
	       "  --daemonize            daemonize the process, and have the parent exit\n"
	       "                         once startup is complete\n"
	       "\n"
	       "  --export [type=]vhost-user-blk,id=<id>,node-name=<node-name>,\n"
	       "           addr.type=unix,addr.path=<socket-path>[,writable=on|off]\n"
	       "           [,logical-block-size=<block-size>][,num-queues=<num-queues>]\n"
	       "           [,iothread=<id>]\n"
	       "                         export the specified block node as a\n"
	       "                         vhost-user-blk device over UNIX domain socket\n"
	       "  --export [type=]vhost-user-blk,id=<id>,node-name=<node-name>,\n"
	       "           addr.type=fd,addr.str=<fd>[,writable=on|off]\n"
	       "           [,logical-block-size=<block-size>][,num-queues=<num-queues>]\n"
	       "                         export the specified block node as a\n"
	       "                         vhost-user-blk device over file descriptor\n"
	       "\n"
	       "  --object iothread,id=<id>\n"
	       "                         create an iothread\n"
	       "\n"
	       "  --pidfile <path>       write process ID to a file after startup\n",
	       tool_progname);
	if (daemon_server_type("nbd-server"))
		printf("\n  --nbd-server addr.type=inet,addr.host=<host>,addr.port=<port>\n"
		       "  --nbd-server addr.type=unix,addr.path=<path>\n"
		       "                         start an NBD server for exporting block nodes\n");
}

static char *pidfile_path;
static int pidfile_fd = -1;

static int write_pidfile(const char *path, GError **errp)
{
	char buf[32];
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);

	if (fd < 0)
		return tblk_error_set_errno(errp, errno, "Cannot open pid file");
	if (lockf(fd, F_TLOCK, 0) < 0) {
		int err = errno;

		close(fd);
		return tblk_error_set_errno(errp, err, "Cannot lock pid file");
	}
	snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
	if (ftruncate(fd, 0) < 0 || write(fd, buf, strlen(buf)) != (ssize_t)strlen(buf)) {
		int err = errno;

		close(fd);
		return tblk_error_set_errno(errp, err, "Failed to write pid file");
	}
	pidfile_fd = fd;
	pidfile_path = realpath(path, NULL);
	return 0;
}

static int ready_fd = -1;

/* Forks; the parent waits for the child to be ready and exits with its verdict. */
static void daemonize_start(void)
{
	int p[2];
	pid_t pid;
	char c = 1;

	if (pipe(p) < 0) {
		tool_error("pipe: %s", strerror(errno));
		exit(1);
	}
	pid = fork();
	if (pid < 0) {
		tool_error("fork: %s", strerror(errno));
		exit(1);
	}
	if (pid > 0) {
		int status;

		close(p[1]);
		if (read(p[0], &c, 1) == 1 && c == 0)
			_exit(0);
		waitpid(pid, &status, 0);
		_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 1);
	}
	close(p[0]);
	ready_fd = p[1];
	setsid();
}

static void daemonize_finish(void)
{
	char c = 0;
	int null;

	if (ready_fd < 0)
		return;
	null = open("/dev/null", O_RDWR);
	if (null >= 0) {
		dup2(null, 0);
		dup2(null, 1);
		dup2(null, 2);
		close(null);
	}
	if (write(ready_fd, &c, 1) < 0) {
		/* The parent is gone; nothing to tell. */
	}
	close(ready_fd);
	ready_fd = -1;
}

static struct tblk_loop *main_loop;
static int sig_fd = -1;
static int got_signal;

static void on_signal(void *opaque)
{
	struct signalfd_siginfo si;

	if (read(sig_fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
		got_signal = (int)si.ssi_signo;
	tblk_loop_stop(main_loop);
}

enum { OPT_BLOCKDEV = 256, OPT_OBJECT, OPT_EXPORT, OPT_PIDFILE, OPT_DAEMONIZE, OPT_SERVER,
       OPT_CHARDEV, OPT_MONITOR };

/* Applies one option; false (after printing) on error. */
static bool apply(int opt, const char *name, const char *arg)
{
	GError *err = NULL;
	int ret = 0;

	switch (opt) {
	case OPT_BLOCKDEV:
		ret = daemon_add_blockdev(arg, &err);
		break;
	case OPT_OBJECT:
		ret = daemon_add_object(arg, &err);
		break;
	case OPT_EXPORT:
		ret = daemon_add_export(arg, &err);
		break;
	case OPT_SERVER:
		ret = daemon_add_server(daemon_server_type(name), arg, &err);
		break;
	}
	if (ret < 0) {
		tool_error("--%s %s: %s", name, arg, err ? err->message : strerror(-ret));
		g_clear_error(&err);
		return false;
	}
	return true;
}

int main(int argc, char **argv)
{
	struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ "blockdev", required_argument, NULL, OPT_BLOCKDEV },
		{ "object", required_argument, NULL, OPT_OBJECT },
		{ "export", required_argument, NULL, OPT_EXPORT },
		{ "pidfile", required_argument, NULL, OPT_PIDFILE },
		{ "daemonize", no_argument, NULL, OPT_DAEMONIZE },
		{ "chardev", required_argument, NULL, OPT_CHARDEV },
		{ "monitor", required_argument, NULL, OPT_MONITOR },
		{ "nbd-server", required_argument, NULL, OPT_SERVER },
		{ NULL, 0, NULL, 0 },
	};
	const char *pidfile = NULL;
	bool daemonize = false;
	GError *err = NULL;
	sigset_t sigs;
	int opt, failures;

	tool_set_progname(argv[0]);
	/* First pass: the options that change how we start. */
	opterr = 0;
	while ((opt = getopt_long(argc, argv, "+hV", longopts, NULL)) != -1) {
		if (opt == 'h') {
			usage();
			return 0;
		}
		if (opt == 'V') {
			printf("%s version %s\n", tool_progname, TBLK_VERSION);
			return 0;
		}
		if (opt == OPT_PIDFILE)
			pidfile = optarg;
		if (opt == OPT_DAEMONIZE)
			daemonize = true;
	}
	if (daemonize)
		daemonize_start();
	/* Signals are read from a signalfd; block them before any thread starts. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);
	main_loop = tblk_loop_new(NULL);
	daemon_objects_init(main_loop);

	optind = 1;
	while ((opt = getopt_long(argc, argv, "+:hV", longopts, NULL)) != -1) {
		const char *name = NULL;

		for (struct option *o = longopts; o->name; o++)
			if (o->val == opt)
				name = o->name;
		switch (opt) {
		case OPT_BLOCKDEV:
		case OPT_OBJECT:
		case OPT_EXPORT:
			if (!apply(opt, name, optarg))
				goto out_fail;
			break;
		case OPT_SERVER:
			if (!daemon_server_type(name)) {
				tool_error("--%s: this build has no such export type", name);
				goto out_fail;
			}
			if (!apply(opt, name, optarg))
				goto out_fail;
			break;
		case OPT_CHARDEV:
		case OPT_MONITOR:
			tool_error("--%s %s: not supported", name, optarg);
			goto out_fail;
		case OPT_PIDFILE:
		case OPT_DAEMONIZE:
			break;
		case ':':
			tool_error("option '%s' requires an argument", argv[optind - 1]);
			goto out_fail;
		default:
			tool_error("unrecognized option '%s'", argv[optind - 1]);
			goto out_fail;
		}
	}
	if (optind < argc) {
		tool_error("%s: Unexpected argument", argv[optind]);
		goto out_fail;
	}
	if (pidfile && write_pidfile(pidfile, &err) < 0) {
		tool_error("%s", err->message);
		g_clear_error(&err);
		goto out_fail;
	}
	sig_fd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
	tblk_loop_set_fd_handler(main_loop, sig_fd, on_signal, NULL, NULL, NULL);
	daemonize_finish();
	tblk_loop_run(main_loop);

	tblk_loop_set_fd_handler(main_loop, sig_fd, NULL, NULL, NULL, NULL);
	close(sig_fd);
	failures = daemon_shutdown();
	if (pidfile_path) {
		unlink(pidfile_path);
		free(pidfile_path);
		close(pidfile_fd);
	}
	tblk_loop_free(main_loop);
	return failures ? 1 : 0;
out_fail:
	daemon_shutdown();
	return 1;
}
