/* SPDX-License-Identifier: MIT */
/*
 * img-open.c - opening the image of a tblk-img subcommand, with qemu-img's messages:
 * "Could not open 'F': <why>", the --image-opts/-f conflict, and the warning about writing
 * to an image whose raw format was only probed.
 *
 * Threading: the tool's single thread.
 */
#include <errno.h>
#include <string.h>

#include "tools/img-int.h"

/* Builds the open options; sets *probe_name to the name to warn about if probing. */
static int build_opts(GHashTable *opts, const struct img_open_opts *o, const char **probe_name,
		      GError **errp)
{
	*probe_name = o->filename;
	if (o->image_opts) {
		if (tblk_opts_parse(opts, o->filename, NULL, errp) < 0)
			return -EINVAL;
		*probe_name = g_hash_table_lookup(opts, "driver") ? NULL :
			      g_hash_table_lookup(opts, "file.filename");
	} else if (o->fmt) {
		g_hash_table_insert(opts, g_strdup("driver"), g_strdup(o->fmt));
		*probe_name = NULL;
	}
	if ((o->flags & TBLK_OPEN_SHARE_RW) && (o->flags & TBLK_OPEN_RDWR)) {
		g_set_error(errp, tblk_error_quark(), EINVAL,
			    "force-share=on can only be used with read-only images");
		return -EINVAL;
	}
	return 0;
}

int img_open(struct tblk_blk **pblk, const struct img_open_opts *o, struct tblk_loop *loop)
{
	GHashTable *opts;
	const char *probe_name;
	GError *err = NULL;
	int ret;

	if (o->image_opts && o->fmt) {
		tool_error("--image-opts and --format are mutually exclusive");
		return -EINVAL;
	}
	opts = tblk_opts_new();
	ret = build_opts(opts, o, &probe_name, &err);
	if (ret == 0)
		ret = tblk_blk_open(pblk, o->image_opts ? NULL : o->filename, opts, o->flags, loop,
				    &err);
	if (ret < 0) {
		tool_error_gerror(err, "Could not open '%s': ", o->filename);
	} else if (probe_name) {
		tool_warn_probed_raw(*pblk, probe_name);
	}
	g_hash_table_unref(opts);
	return ret;
}
