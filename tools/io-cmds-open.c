/* SPDX-License-Identifier: MIT */
/*
 * io-cmds-open.c - opening and closing the image: the option letters the program and the
 * "open" command share, opening with qemu-io's messages, and the "open", "close" and
 * "reopen" commands.
 *
 * The library has no reopen of its own: "reopen" checks the requested changes the way
 * qemu-io refuses the ones its drivers cannot make, then drains and closes the image and
 * opens it again with the new flags and options; if that fails, the image is opened again
 * as it was.
 *
 * Threading: the tool's single thread, which runs the backend's loop.
 */
#include <errno.h>
#include <getopt.h>
#include <string.h>
#include <unistd.h>

#include "tools/io-int.h"

int io_open_flag_opt(int c, const char *arg, unsigned int *flags)
{
	static const char *const discard_modes[] = { "ignore", "off", "unmap", "on", NULL };
	unsigned int i;

	switch (c) {
	case 'r':
		*flags &= ~TBLK_OPEN_RDWR;
		return 0;
	case 'n':
		/* "-t none": no host cache, and the guest's cache is writeback. */
		*flags |= TBLK_OPEN_NOCACHE;
		*flags &= ~TBLK_OPEN_WRITETHROUGH;
		return 0;
	case 'k':
		*flags |= TBLK_OPEN_AIO_NATIVE;
		return 0;
	case 'U':
		*flags |= TBLK_OPEN_SHARE_RW;
		return 0;
	case 'C':
		*flags |= TBLK_OPEN_COPY_ON_READ;
		return 0;
	case 't':
		if (tblk_parse_cache_mode(arg, flags, NULL) == 0)
			return 0;
		tool_error("Invalid cache option: %s", arg);
		return -EINVAL;
	case 'i':
		if (tblk_parse_aio_mode(arg, flags, NULL) == 0)
			return 0;
		tool_error("Invalid aio option: %s", arg);
		return -EINVAL;
	case 'd':
		for (i = 0; discard_modes[i]; i++) {
			if (strcmp(discard_modes[i], arg))
				continue;
			/* ignore and off come first */
			*flags = i < 2 ? *flags | TBLK_OPEN_NO_UNMAP : *flags & ~TBLK_OPEN_NO_UNMAP;
			return 0;
		}
		tool_error("Invalid discard option: %s", arg);
		return -EINVAL;
	}
	return 1;
}

static GHashTable *opts_copy(GHashTable *src)
{
	GHashTable *dst = tblk_opts_new();
	GHashTableIter it;
	gpointer k, v;

	if (!src)
		return dst;
	g_hash_table_iter_init(&it, src);
	while (g_hash_table_iter_next(&it, &k, &v))
		g_hash_table_insert(dst, g_strdup(k), g_strdup(v));
	return dst;
}

/* qemu's boolean option values; 0 or -EINVAL. */
static int parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = { "on", "yes", "true", "y" };
	static const char *const no[] = { "off", "no", "false", "n" };
	unsigned int i;

	for (i = 0; i < 4; i++) {
		if (!strcmp(s, yes[i]) || !strcmp(s, no[i])) {
			*out = !strcmp(s, yes[i]);
			return 0;
		}
	}
	return -EINVAL;
}

/*
 * Moves the boolean option @key of @opts into bit @bit of *flags (set when the value is
 * @set_when); 0, or -EINVAL (after printing qemu's message if @report; the option is left
 * in @opts then).
 */
static int take_flag_opt(GHashTable *opts, const char *key, unsigned int bit, bool set_when,
			 unsigned int *flags, bool report)
{
	const char *v = g_hash_table_lookup(opts, key);
	bool b;

	if (!v)
		return 0;
	if (parse_bool(v, &b) < 0) {
		if (report)
			tool_error("Parameter '%s' expects 'on' or 'off'", key);
		return -EINVAL;
	}
	*flags = b == set_when ? *flags | bit : *flags & ~bit;
	g_hash_table_remove(opts, key);
	return 0;
}

/* Takes the options that map to open flags out of @opts; see take_flag_opt(). */
static int take_flag_opts(GHashTable *opts, unsigned int *flags, bool report)
{
	static const struct {
		const char *key;
		unsigned int bit;
		bool set_when;
	} map[] = {
		{ "read-only", TBLK_OPEN_RDWR, false },
		{ "cache.direct", TBLK_OPEN_NOCACHE, true },
		{ "cache.no-flush", TBLK_OPEN_NO_FLUSH, true },
	};
	unsigned int i;
	int ret = 0;

	for (i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
		if (take_flag_opt(opts, map[i].key, map[i].bit, map[i].set_when, flags,
				  report) < 0) {
			ret = -EINVAL;
			if (report)
				break;
		}
	}
	return ret;
}

/*
 * The flag options in the values qemu takes (on, yes, true, y and their opposites), made
 * "on" or "off" for the library. 0 or -EINVAL and *errp.
 */
static int normalise_flag_opts(GHashTable *opts, GError **errp)
{
	static const char *const keys[] = { "read-only", "cache.direct", "cache.no-flush" };
	const char *v;
	unsigned int i;
	bool b;

	for (i = 0; i < 3; i++) {
		v = g_hash_table_lookup(opts, keys[i]);
		if (!v)
			continue;
		if (parse_bool(v, &b) < 0) {
			g_set_error(errp, tblk_error_quark(), EINVAL,
				    "Parameter '%s' expects 'on' or 'off'", keys[i]);
			return -EINVAL;
		}
		g_hash_table_insert(opts, g_strdup(keys[i]), g_strdup(b ? "on" : "off"));
	}
	return 0;
}

/*
 * Checks and drops the options a reopen accepts that change nothing here (detect-zeroes:
 * never done; auto-read-only), and moves the discard mode into *flags: it stays in effect
 * over later reopens that do not name it, as qemu's does. 0 or -EINVAL after printing
 * qemu's message.
 */
static int take_ignored_opts(GHashTable *opts, unsigned int *flags)
{
	static const char *const discard[] = { "ignore", "off", "unmap", "on", NULL };
	static const char *const zeroes[] = { "off", "on", "unmap", NULL };
	const char *v;
	unsigned int i;
	bool b;

	v = g_hash_table_lookup(opts, "discard");
	for (i = 0; v && discard[i] && strcmp(v, discard[i]); i++)
		;
	if (v && !discard[i]) {
		tool_error("Invalid discard option");
		return -EINVAL;
	}
	if (v)	/* ignore and off come first */
		*flags = i < 2 ? *flags | TBLK_OPEN_NO_UNMAP : *flags & ~TBLK_OPEN_NO_UNMAP;
	v = g_hash_table_lookup(opts, "detect-zeroes");
	for (i = 0; v && zeroes[i] && strcmp(v, zeroes[i]); i++)
		;
	if (v && !zeroes[i]) {
		tool_error("invalid parameter value: %s", v);
		return -EINVAL;
	}
	v = g_hash_table_lookup(opts, "auto-read-only");
	if (v && parse_bool(v, &b) < 0) {
		tool_error("Parameter 'auto-read-only' expects 'on' or 'off'");
		return -EINVAL;
	}
	g_hash_table_remove(opts, "discard");
	g_hash_table_remove(opts, "detect-zeroes");
	g_hash_table_remove(opts, "auto-read-only");
	return 0;
}

/* The flag options are folded into the flags: a reopen starts from what is in effect. */
void io_save_open_state(struct io_ctx *io, const char *filename, GHashTable *opts,
			unsigned int flags)
{
	struct io_open_state *st = &io->open;

	st->filename = g_strdup(filename);
	st->opts = opts_copy(opts);
	/* Values the library took and we do not know stay options, for the library again. */
	take_flag_opts(st->opts, &flags, false);
	if (tblk_blk_is_read_only(io->blk))
		flags &= ~TBLK_OPEN_RDWR;
	st->flags = flags;
	st->snapshot_fd = -1;
}

/*
 * qemu probes the format once the protocol is open and warns about a probed raw image
 * before the format's own options are checked: after a failed open, find out whether the
 * file alone opens and probes as raw, and warn then, before the error is printed.
 */
static void warn_probed_raw_before_error(struct io_ctx *io, const struct io_open_req *r,
					 const char *probe_name)
{
	GHashTable *popts = tblk_opts_new();
	struct tblk_blk *blk = NULL;
	GHashTableIter it;
	gpointer k, v;

	g_hash_table_iter_init(&it, r->opts);
	while (g_hash_table_iter_next(&it, &k, &v))
		if (!strncmp(k, "file.", 5) || !strncmp(k, "cache.", 6))
			g_hash_table_insert(popts, g_strdup(k), g_strdup(v));
	/* Opened as qemu opens the protocol it probes: read-write, as asked. */
	if (tblk_blk_open(&blk, r->filename, popts, r->flags | TBLK_OPEN_NODE_OPTS, io->loop,
			  NULL) == 0) {
		tool_warn_probed_raw(blk, probe_name);
		tblk_blk_close(blk);
	}
	g_hash_table_unref(popts);
}

/* Whether @opts name a file or a driver: without either, nothing can be opened. */
static bool opts_name_something(GHashTable *opts)
{
	GHashTableIter it;
	gpointer k, v;

	g_hash_table_iter_init(&it, opts);
	while (g_hash_table_iter_next(&it, &k, &v))
		if (!strcmp(k, "driver") || !strcmp(k, "filename") || !strcmp(k, "file") ||
		    !strncmp(k, "file.", 5))
			return true;
	return false;
}

int io_open_image(struct io_ctx *io, const struct io_open_req *r)
{
	const char *probe_name = NULL;
	GError *err = NULL;
	int ret;

	/* qemu warns before it looks at anything else */
	tool_warn_empty_backing(r->opts, r->filename);
	/* -U against the options' own force-share: refused before anything is opened. */
	if ((r->flags & TBLK_OPEN_SHARE_RW) && !tool_opts_force_share_ok(r->opts)) {
		tool_error("-U conflicts with image options");
		return -EINVAL;
	}
	if (!g_hash_table_contains(r->opts, "driver") && !tool_json_names_driver(r->filename))
		probe_name = r->filename ? r->filename : g_hash_table_lookup(r->opts,
									    "file.filename");
	if (!r->filename && !opts_name_something(r->opts)) {
		ret = -EINVAL;
		g_set_error(&err, tblk_error_quark(), EINVAL, "Must specify either driver or file");
		goto fail;
	}
	ret = normalise_flag_opts(r->opts, &err);
	if (ret < 0)
		goto fail;
	/*
	 * -U on a writable open: qemu refuses it after looking the driver up by name, before
	 * opening any file; the node does the same once it knows its driver. With -s the image
	 * is opened read-only under the overlay, and -U is for it.
	 */
	if (r->snapshot && (r->flags & TBLK_OPEN_SHARE_RW)) {
		g_hash_table_replace(r->opts, g_strdup("force-share"), g_strdup("on"));
	} else if ((r->flags & TBLK_OPEN_SHARE_RW) && (r->flags & TBLK_OPEN_RDWR)) {
		if (!g_hash_table_contains(r->opts, "driver") &&
		    !tool_json_names_driver(r->filename)) {
			ret = -EINVAL;
			g_set_error(&err, tblk_error_quark(), EINVAL,
				    "force-share=on can only be used with read-only images");
			goto fail;
		}
		g_hash_table_replace(r->opts, g_strdup("force-share"), g_strdup("on"));
	}
	/* The image is opened read-only under the overlay: qemu does not warn then. */
	if (r->snapshot) {
		ret = io_open_snapshot(io, r, &err);
		if (ret < 0)
			goto fail;
		return 0;
	}
	ret = tblk_blk_open(&io->blk, r->filename, r->opts, r->flags | TBLK_OPEN_NODE_OPTS,
			    io->loop, &err);
	if (ret < 0) {
		if (probe_name && (r->flags & TBLK_OPEN_RDWR))
			warn_probed_raw_before_error(io, r, probe_name);
		goto fail;
	}
	/* Without -r the image is used read-write: a read-only node ("read-only=on") cannot. */
	if ((r->flags & TBLK_OPEN_RDWR) && tblk_blk_is_read_only(io->blk)) {
		tblk_blk_close(io->blk);
		io->blk = NULL;
		ret = -EACCES;
		g_set_error(&err, tblk_error_quark(), EACCES, "Block node is read-only");
		goto fail;
	}
	if (probe_name)
		tool_warn_probed_raw(io->blk, probe_name);
	io_save_open_state(io, r->filename, r->opts, r->flags);
	return 0;
fail:
	if (r->filename)
		tool_error_gerror(err, "can't open device %s: ", r->filename);
	else
		tool_error_gerror(err, "can't open: ");
	return ret;
}

void io_close_image(struct io_ctx *io)
{
	if (!io->blk)
		return;
	/* Requests still in flight complete, and print, before the image closes. */
	io_drain_all(io);
	tblk_blk_close(io->blk);
	io->blk = NULL;
	if (io->open.snapshot_fd >= 0)
		close(io->open.snapshot_fd);
	g_free(io->open.filename);
	g_hash_table_unref(io->open.opts);
	memset(&io->open, 0, sizeof(io->open));
	io->open.snapshot_fd = -1;
}

int io_open_f(struct io_ctx *io, int argc, char **argv)
{
	struct io_open_req r = { .flags = TBLK_OPEN_RDWR | TBLK_OPEN_WRITETHROUGH };
	GHashTable *opts = tblk_opts_new();
	GError *err = NULL;
	int c, ret = -EINVAL;

	while ((c = getopt(argc, argv, "snCro:kt:d:i:U")) != -1) {
		if (c == 's') {
			r.snapshot = true;
		} else if (c == 'o') {
			if (tool_opts_parse(opts, optarg, &err) < 0) {
				tool_error_gerror(err, NULL);
				goto out;
			}
		} else if (c == '?' || c == ':') {
			ret = io_usage_of("open");
			goto out;
		} else if (io_open_flag_opt(c, optarg, &r.flags) < 0) {
			goto out;
		}
	}
	if (optind == argc - 1) {
		r.filename = argv[optind];
	} else if (optind != argc) {
		ret = io_usage_of("open");
		goto out;
	}
	if (io->blk) {
		tool_error("file open already, try 'help close'");
		goto out;
	}
	r.opts = opts;
	ret = io_open_image(io, &r);
out:
	g_hash_table_unref(opts);
	return ret;
}

int io_close_f(struct io_ctx *io, int argc, char **argv)
{
	(void)argc, (void)argv;
	io_close_image(io);
	return 0;
}

/*
 * Options a reopen may change besides the flag options and the ignored ones (taken out
 * before): those the format re-reads (raw's window, qcow2's caches and policies). Any other
 * option must keep its current value.
 */
static bool reopen_can_change(const char *fmt, const char *key)
{
	static const char *const raw[] = { "offset", "size", NULL };
	static const char *const qcow2[] = {
		"lazy-refcounts", "pass-discard-request", "pass-discard-snapshot",
		"pass-discard-other", "overlap-check", "cache-size", "l2-cache-size",
		"l2-cache-entry-size", "refcount-cache-size", "cache-clean-interval", NULL
	};
	const char *const *lists[] = { !strcmp(fmt, "raw") ? raw : NULL,
				       !strcmp(fmt, "qcow2") ? qcow2 : NULL };
	unsigned int i, j;

	for (i = 0; i < 2; i++)
		for (j = 0; lists[i] && lists[i][j]; j++)
			if (!strcmp(key, lists[i][j]))
				return true;
	/* Every cache mode can be switched, also on the protocol node. */
	return !strcmp(key, "file.cache.direct") || !strcmp(key, "file.cache.no-flush");
}

/* The current value of option @key: as given at open, or what the open implied. */
static const char *current_opt(struct io_ctx *io, const char *key)
{
	const char *v = g_hash_table_lookup(io->open.opts, key);
	const char *fmt = tblk_blk_format_name(io->blk);
	bool protocol_only = !strcmp(fmt, tblk_blk_protocol_name(io->blk));

	if (v)
		return v;
	if (!strcmp(key, "driver"))
		return fmt;
	if (!strcmp(key, protocol_only ? "filename" : "file.filename"))
		return io->open.filename;
	if (!protocol_only && !strcmp(key, "file.driver"))
		return tblk_blk_protocol_name(io->blk);
	return NULL;
}

/* qemu names an option it cannot change without the prefix of the node it belongs to. */
static const char *opt_display_name(const char *key)
{
	return !strncmp(key, "file.", 5) ? key + 5 : key;
}

/*
 * An option of a backing file ("backing.driver" for depth 1, "backing.backing.x" for 2):
 * qemu reopens that node with it and compares it with that node's; its flag options may
 * change. *shown is the key as qemu names it, without the prefixes.
 */
static bool backing_opt_unchanged(struct io_ctx *io, const char *key, const char *val,
				  const char **shown)
{
	struct tblk_chain_layer l;
	const char *cur = NULL;
	int depth = 0;

	/* (past the end of the chain, the last image has the rest as an option of its own) */
	while (!strncmp(key, "backing.", 8) && tblk_blk_chain_layer(io->blk, depth + 1, &l) == 0) {
		key += 8;
		depth++;
	}
	*shown = opt_display_name(key);
	if (!strncmp(key, "backing.", 8) || tblk_blk_chain_layer(io->blk, depth, &l) < 0)
		return false;
	if (!strcmp(key, "driver"))
		cur = l.format;
	else if (!strcmp(key, "file.filename"))
		cur = l.filename;
	else if (!strcmp(key, "file.driver"))
		cur = "file";
	if (cur)
		return !strcmp(cur, val);
	return reopen_can_change(l.format, key) || !strcmp(key, "cache.direct") ||
	       !strcmp(key, "cache.no-flush") || !strcmp(key, "read-only");
}

/* Refuses what a reopen cannot change; 0 or -EINVAL after printing. */
static int reopen_check_opts(struct io_ctx *io, GHashTable *opts)
{
	const char *fmt = tblk_blk_format_name(io->blk);
	GHashTableIter it;
	gpointer k, v;

	g_hash_table_iter_init(&it, opts);
	while (g_hash_table_iter_next(&it, &k, &v)) {
		const char *cur = current_opt(io, k), *shown;

		/* a new backing file is a node of that name, which there is none of */
		if (!strcmp(k, "backing")) {
			tool_error("Cannot find device='' nor node-name='%s'", (char *)v);
			return -EINVAL;
		}
		if (!strncmp(k, "backing.", 8)) {
			if (backing_opt_unchanged(io, k, v, &shown))
				continue;
			tool_error("Cannot change the option '%s'", shown);
			return -EINVAL;
		}
		if (reopen_can_change(fmt, k) || (cur && !strcmp(cur, v)))
			continue;
		tool_error("Cannot change the option '%s'", opt_display_name(k));
		return -EINVAL;
	}
	return 0;
}

/* Opens the image again with @opts (takes ownership) and @flags; on failure, as it was. */
static int reopen_image(struct io_ctx *io, GHashTable *opts, unsigned int flags)
{
	char *filename = g_strdup(io->open.filename);
	GHashTable *old_opts = g_hash_table_ref(io->open.opts);
	unsigned int old_flags = io->open.flags;
	/* The -s overlay is opened through this descriptor: it must outlive the close. */
	int snapshot_fd = io->open.snapshot_fd;
	GError *err = NULL, *err2 = NULL;
	int ret;

	io->open.snapshot_fd = -1;
	io_close_image(io);
	ret = tblk_blk_open(&io->blk, filename, opts, flags | TBLK_OPEN_NODE_OPTS, io->loop, &err);
	if (ret == 0) {
		io_save_open_state(io, filename, opts, flags);
		io->open.snapshot_fd = snapshot_fd;
		goto out;
	}
	tool_error_gerror(err, NULL);
	if (tblk_blk_open(&io->blk, filename, old_opts, old_flags | TBLK_OPEN_NODE_OPTS,
			  io->loop, &err2) == 0) {
		io_save_open_state(io, filename, old_opts, old_flags);
		io->open.snapshot_fd = snapshot_fd;
	} else {
		if (filename)
			tool_error_gerror(err2, "can't open device %s: ", filename);
		else
			tool_error_gerror(err2, "can't open: ");
		if (snapshot_fd >= 0)
			close(snapshot_fd);
	}
out:
	g_hash_table_unref(old_opts);
	g_hash_table_unref(opts);
	g_free(filename);
	return ret;
}

int io_reopen_f(struct io_ctx *io, int argc, char **argv)
{
	GHashTable *opts = tblk_opts_new();
	unsigned int flags = io->open.flags, cache = 0;
	bool has_rw = false, has_cache = false;
	GError *err = NULL;
	GHashTableIter it;
	gpointer k, v;
	int c;

	while ((c = getopt(argc, argv, "c:o:rw")) != -1) {
		switch (c) {
		case 'c':
			if (tblk_parse_cache_mode(optarg, &cache, NULL) < 0) {
				tool_error("Invalid cache option: %s", optarg);
				goto fail;
			}
			has_cache = true;
			break;
		case 'o':
			if (tool_opts_parse(opts, optarg, &err) < 0) {
				tool_error_gerror(err, NULL);
				goto fail;
			}
			break;
		case 'r':
		case 'w':
			if (has_rw) {
				tool_error("Only one -r/-w option may be given");
				goto fail;
			}
			has_rw = true;
			flags = c == 'w' ? flags | TBLK_OPEN_RDWR : flags & ~TBLK_OPEN_RDWR;
			break;
		default:
			io_usage_of("reopen");
			goto fail;
		}
	}
	if (optind != argc) {
		io_usage_of("reopen");
		goto fail;
	}
	if (has_rw && g_hash_table_contains(opts, "read-only")) {
		tool_error("Cannot set both -r/-w and 'read-only'");
		goto fail;
	}
	if (has_cache && (g_hash_table_contains(opts, "cache.direct") ||
			  g_hash_table_contains(opts, "cache.no-flush"))) {
		tool_error("Cannot set both -c and the cache options");
		goto fail;
	}
	if (has_cache) {
		flags &= ~(TBLK_OPEN_NOCACHE | TBLK_OPEN_NO_FLUSH | TBLK_OPEN_WRITETHROUGH);
		flags |= cache;
	}
	if (take_flag_opts(opts, &flags, true) < 0 || take_ignored_opts(opts, &flags) < 0)
		goto fail;
	/* Only -r makes the image read-only: the image is still in use read-write. */
	if (!has_rw && (io->open.flags & TBLK_OPEN_RDWR) && !(flags & TBLK_OPEN_RDWR)) {
		tool_error("Read-only block node '#block%03u' cannot support read-write users",
			   (unsigned int)g_random_int_range(0, 1000));
		goto fail;
	}
	if (reopen_check_opts(io, opts) < 0)
		goto fail;
	/* The options given before, overridden by the new ones. */
	g_hash_table_iter_init(&it, io->open.opts);
	while (g_hash_table_iter_next(&it, &k, &v))
		if (!g_hash_table_contains(opts, k))
			g_hash_table_insert(opts, g_strdup(k), g_strdup(v));
	/* The file name is given as it was (a same file name option changes nothing). */
	if (io->open.filename) {
		g_hash_table_remove(opts, "file.filename");
		g_hash_table_remove(opts, "filename");
	}
	/* The format stays what it is, even if the image's first bytes changed meanwhile. */
	if (!g_hash_table_contains(opts, "driver"))
		g_hash_table_insert(opts, g_strdup("driver"),
				    g_strdup(tblk_blk_format_name(io->blk)));
	return reopen_image(io, opts, flags);
fail:
	g_hash_table_unref(opts);
	return -EINVAL;
}
