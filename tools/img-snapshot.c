/* SPDX-License-Identifier: MIT */
/*
 * img-snapshot.c - "tblk-img snapshot": qemu-img snapshot's command line (-l, -a, -c, -d),
 * its messages and exit codes; and the snapshot table as qemu-img prints it, shared with
 * "tblk-img info" (human table and JSON array).
 *
 * Threading: single-threaded.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <string.h>
#include <time.h>

#include "tools/img-int.h"

/* qemu keeps ids and names in fixed buffers: longer ones show cut to these lengths. */
#define ID_SHOWN	127
#define NAME_SHOWN	255

/* One row (or the header with @sn NULL) of qemu's snapshot table, without the newline. */
static void dump_row(const struct tblk_snapshot_info *sn)
{
	char clock[128], icount[32] = "", size[64], date[64];
	uint64_t secs;
	struct tm tm;
	time_t t;

	if (!sn) {
		printf("%-10s%-17s%8s%20s%13s%11s", "ID", "TAG", "VM SIZE", "DATE", "VM CLOCK",
		       "ICOUNT");
		return;
	}
	t = (time_t)sn->date_sec;
	localtime_r(&t, &tm);
	strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S", &tm);
	secs = sn->vm_clock_nsec / 1000000000;
	snprintf(clock, sizeof(clock), "%02d:%02d:%02d.%03d", (int)(secs / 3600),
		 (int)((secs / 60) % 60), (int)(secs % 60),
		 (int)((sn->vm_clock_nsec / 1000000) % 1000));
	tool_fmt_size_img(size, sizeof(size), sn->vm_state_size);
	if (sn->icount != UINT64_MAX)
		snprintf(icount, sizeof(icount), "%" PRId64, (int64_t)sn->icount);
	printf("%-9.*s %-16.*s %8s%20s%13s%11s", ID_SHOWN, sn->id, NAME_SHOWN, sn->name, size,
	       date, clock, icount);
}

void img_snapshot_dump(const struct tblk_snapshot_info *sn, int n)
{
	if (n <= 0)
		return;
	printf("Snapshot list:\n");
	dump_row(NULL);
	printf("\n");
	for (int i = 0; i < n; i++) {
		dump_row(&sn[i]);
		printf("\n");
	}
}

void img_snapshot_json(GString *out, const struct tblk_snapshot_info *sn, int n, int indent)
{
	int in = indent + 4, in2 = indent + 8;

	g_string_append(out, "[\n");
	for (int i = 0; i < n; i++) {
		g_autofree char *id = g_strndup(sn[i].id, ID_SHOWN);
		g_autofree char *name = g_strndup(sn[i].name, NAME_SHOWN);

		/* QEMU's dictionary order for SnapshotInfo's keys. */
		g_string_append_printf(out, "%*s{\n", in, "");
		if (sn[i].icount != UINT64_MAX)
			g_string_append_printf(out, "%*s\"icount\": %" PRId64 ",\n", in2, "",
					       (int64_t)sn[i].icount);
		g_string_append_printf(out, "%*s\"vm-clock-nsec\": %" PRIu64 ",\n%*s\"name\": ",
				       in2, "", sn[i].vm_clock_nsec % 1000000000, in2, "");
		tool_json_string(out, name);
		g_string_append_printf(out, ",\n%*s\"date-sec\": %" PRIu32 ",\n%*s\"date-nsec\": %"
				       PRIu32 ",\n%*s\"vm-clock-sec\": %" PRIu64 ",\n%*s\"id\": ",
				       in2, "", sn[i].date_sec, in2, "", sn[i].date_nsec, in2, "",
				       sn[i].vm_clock_nsec / 1000000000, in2, "");
		tool_json_string(out, id);
		g_string_append_printf(out, ",\n%*s\"vm-state-size\": %" PRIu64 "\n%*s}%s\n", in2,
				       "", sn[i].vm_state_size, in, "", i + 1 < n ? "," : "");
	}
	g_string_append_printf(out, "%*s]", indent, "");
}

/* ---------------------------------------------------------------- the subcommand */

enum { SN_NONE, SN_LIST, SN_APPLY, SN_CREATE, SN_DELETE };
struct snapshot_args {
	struct img_open_opts open;
	int action;
	const char *name;
	bool quiet;
};

static void set_action(struct snapshot_args *a, int action, const char *name)
{
	if (a->action != SN_NONE)
		img_error_exit("Cannot mix '-l', '-a', '-c', '-d'");
	a->action = action;
	a->name = name;
}

static void snapshot_parse(int argc, char **argv, struct snapshot_args *a)
{
	int c;

	while ((c = getopt_long(argc, argv, ":la:c:d:hqU", img_long_opts, NULL)) != -1) {
		if (img_common_opt(c, argv, &a->open.image_opts))
			continue;
		switch (c) {
		case 'l': set_action(a, SN_LIST, NULL); break;
		case 'a': set_action(a, SN_APPLY, optarg); break;
		case 'c': set_action(a, SN_CREATE, optarg); break;
		case 'd': set_action(a, SN_DELETE, optarg); break;
		case 'q': a->quiet = true; break;
		case 'U': a->open.flags |= TBLK_OPEN_SHARE_RW; break;
		}
	}
	if (optind != argc - 1)
		img_error_exit("Expecting one image file name");
	a->open.filename = argv[optind];
}

static int do_create(struct tblk_blk *blk, const char *name)
{
	gint64 now = g_get_real_time();
	g_autofree char *cut = g_strndup(name, NAME_SHOWN);
	struct tblk_snapshot_info sn = {
		.name = cut,
		.date_sec = (uint32_t)(now / G_USEC_PER_SEC),
		.date_nsec = (uint32_t)(now % G_USEC_PER_SEC * 1000),
		.icount = 0,
	};
	GError *err = NULL;
	int ret = tblk_blk_snapshot_create(blk, &sn, &err);

	g_clear_error(&err);
	if (ret < 0) {
		tool_error("Could not create snapshot '%s': %d (%s)", name, ret, strerror(-ret));
		return 1;
	}
	return 0;
}

static int do_delete(struct tblk_blk *blk, const char *name)
{
	struct tblk_snapshot_info *sn = NULL;
	GError *err = NULL;
	int n = 0, i, ret;

	/* qemu-img finds the snapshot by its name, then deletes it by id and name. */
	ret = tblk_blk_snapshot_list(blk, &sn, &n);
	for (i = 0; ret >= 0 && i < n; i++)
		if (!strncmp(sn[i].name, name, NAME_SHOWN) && strlen(name) <= NAME_SHOWN &&
		    strlen(sn[i].name) <= NAME_SHOWN)
			break;
	if (ret < 0 || i == n) {
		tool_error("Could not delete snapshot '%s': snapshot not found", name);
		tblk_snapshot_list_free(sn, n);
		return 1;
	}
	ret = tblk_blk_snapshot_delete(blk, sn[i].id, sn[i].name, &err);
	tblk_snapshot_list_free(sn, n);
	if (ret < 0) {
		tool_error_gerror(err, "Could not delete snapshot '%s': ", name);
		return 1;
	}
	return 0;
}

/*
 * qemu-img reports a snapshot that fails its checks on a line of its own, then the failure
 * of the load with the errno; other failures of the load come as they are.
 */
static void apply_error(GError *err, const char *name)
{
	if (err && err->domain == tblk_error_quark() &&
	    strncmp(err->message, "Failed to load snapshot", 23) &&
	    strncmp(err->message, "Block driver", 12) && err->code != EBUSY) {
		int code = err->code;

		tool_error_gerror(err, NULL);
		tool_error("Could not apply snapshot '%s': Failed to load snapshot: %s", name,
			   strerror(code));
		return;
	}
	tool_error_gerror(err, "Could not apply snapshot '%s': ", name);
}

int img_snapshot(int argc, char **argv)
{
	struct snapshot_args a = { .action = SN_NONE };
	struct tblk_snapshot_info *sn = NULL;
	struct tblk_blk *blk;
	GError *err = NULL;
	int ret = 0, n = 0;

	snapshot_parse(argc, argv, &a);
	if (a.action != SN_LIST)
		a.open.flags |= TBLK_OPEN_RDWR;
	if (img_open(&blk, &a.open, NULL) < 0)
		return 1;
	switch (a.action) {
	case SN_LIST:
		if (tblk_blk_snapshot_list(blk, &sn, &n) >= 0)
			img_snapshot_dump(sn, n);
		tblk_snapshot_list_free(sn, n);
		break;
	case SN_CREATE:
		ret = do_create(blk, a.name);
		break;
	case SN_APPLY:
		if (tblk_blk_snapshot_goto(blk, a.name, &err) < 0) {
			/* qemu reopens a format without snapshots to try its file: warns again. */
			if (g_error_matches(err, tblk_error_quark(), ENOTSUP) &&
			    !a.open.image_opts && tblk_blk_format_probed(blk))
				tool_warn_probed_raw(blk, a.open.filename);
			apply_error(err, a.name);
			ret = 1;
		}
		break;
	case SN_DELETE:
		ret = do_delete(blk, a.name);
		break;
	}
	tblk_blk_close(blk);
	return ret;
}
