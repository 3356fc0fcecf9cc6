/* SPDX-License-Identifier: MIT */
/*
 * tool-object.c - the checks qemu-img and qemu-io make of an --object definition before
 * creating it: a known type, an identifier as id, no property the type does not have, a
 * secret with its data, one object per id; with qemu's messages. Only throttle groups are
 * then created (tool-util.c); the other types are accepted and unused.
 *
 * Threading: the tool's main thread, while parsing the command line.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <tblk/tblk.h>

#include "tools/tool-util.h"

/* What `--object help` lists in qemu 7.2's tools. */
static const char *const creatable[] = {
	"authz-list", "authz-list-file", "authz-simple", "main-loop", "pr-manager-helper",
	"secret", "secret_keyring", "thread-context", "throttle-group", "tls-cipher-suites",
	"tls-creds-anon", "tls-creds-psk", "tls-creds-x509", NULL,
};

/* Types qemu knows but its tools cannot create. */
static const char *const other_types[] = { "iothread", "memory-backend-ram", NULL };

static bool in_list(const char *const *list, const char *s)
{
	for (; *list; list++)
		if (!strcmp(*list, s))
			return true;
	return false;
}

/* qemu's identifiers: letters, digits, '-', '.', '_', starting with a letter. */
static bool is_identifier(const char *s)
{
	if (!isalpha((unsigned char)*s))
		return false;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && !strchr("-._", *s))
			return false;
	return true;
}

/* The first key of @opts that @type does not have, or NULL; types not checked have none. */
static const char *unexpected_key(const char *type, GHashTable *opts)
{
	static const char *const secret[] = { "qom-type", "id", "data", "file", "format", "keyid",
					      "iv", "loaded", NULL };
	GHashTableIter it;
	gpointer k, v;

	if (strcmp(type, "secret"))
		return NULL;
	g_hash_table_iter_init(&it, opts);
	while (g_hash_table_iter_next(&it, &k, &v))
		if (!in_list(secret, k))
			return k;
	return NULL;
}

static int check_secret(GHashTable *opts)
{
	const char *format = g_hash_table_lookup(opts, "format");
	const char *file = g_hash_table_lookup(opts, "file");
	g_autofree char *data = NULL;
	GError *err = NULL;

	if (format && strcmp(format, "raw") && strcmp(format, "base64")) {
		tool_error("Parameter 'format' does not accept value '%s'", format);
		return -EINVAL;
	}
	if (!file && !g_hash_table_contains(opts, "data")) {
		tool_error("Either 'file' or 'data' must be provided");
		return -EINVAL;
	}
	if (file && !g_file_get_contents(file, &data, NULL, &err)) {
		tool_error("Unable to read %s: %s", file, err->message);
		g_error_free(err);
		return -EINVAL;
	}
	return 0;
}

int tool_object_check(GHashTable *opts)
{
	static GHashTable *ids;
	const char *type = g_hash_table_lookup(opts, "qom-type");
	const char *id = g_hash_table_lookup(opts, "id");
	const char *bad;

	if (!type) {
		tool_error("Parameter 'qom-type' is missing");
		return -EINVAL;
	}
	if (!strcmp(type, "help")) {
		printf("List of user creatable objects:\n");
		for (const char *const *t = creatable; *t; t++)
			printf("  %s\n", *t);
		return 1;
	}
	/* An object type of qemu's, but not one its tools can create. */
	if (!in_list(creatable, type) && !in_list(other_types, type)) {
		tool_error("Parameter 'qom-type' does not accept value '%s'", type);
		return -EINVAL;
	}
	if (!id) {
		tool_error("Parameter 'id' is missing");
		return -EINVAL;
	}
	if (!is_identifier(id)) {
		tool_error("Parameter 'id' expects an identifier");
		fprintf(stderr, "Identifiers consist of letters, digits, '-', '.', '_', starting "
			"with a letter.\n");
		return -EINVAL;
	}
	bad = unexpected_key(type, opts);
	if (bad) {
		tool_error("Parameter '%s' is unexpected", bad);
		return -EINVAL;
	}
	if (in_list(other_types, type)) {
		tool_error("invalid object type: %s", type);
		return -EINVAL;
	}
	if (!strcmp(type, "secret") && check_secret(opts) < 0)
		return -EINVAL;
	if (!ids)
		ids = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
	if (g_hash_table_contains(ids, id)) {
		tool_error("attempt to add duplicate property '%s' to object (type 'container')",
			   id);
		return -EINVAL;
	}
	g_hash_table_add(ids, g_strdup(id));
	return 0;
}
