/* SPDX-License-Identifier: MIT */
/*
 * blkdebug-config.c - blkdebug's rules from qemu's config file syntax and from options.
 *
 * The file is qemu's -readconfig format as Debian's qemu 7.2 reads it (observed): a line
 * "[group]" or "[group "id"]" opens a section, "key = "value"" sets an option (the key is
 * the first word; anything but " = "value"" after it leaves the value empty), a line that
 * starts with '#' or is empty is skipped, and any other line is a parse error. Groups are
 * inject-error (event, state, iotype, errno, sector, once, immediately) and set-state
 * (event, state, new_state). The same rules come as options "inject-error.N.KEY" and
 * "set-state.N.KEY" with N counting from 0.
 *
 * Threading: control path only.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocols/blkdebug-int.h"

enum bd_group { BD_GROUP_INJECT, BD_GROUP_SET_STATE, BD_GROUP_NR };

static const char *const group_names[BD_GROUP_NR] = { "inject-error", "set-state" };

static const char *const inject_keys[] = {
	"event", "state", "iotype", "errno", "sector", "once", "immediately", NULL
};
static const char *const set_state_keys[] = { "event", "state", "new_state", NULL };

static const char *const iotype_names[] = {
	[BD_IO_READ] = "read", [BD_IO_WRITE] = "write", [BD_IO_WRITE_ZEROES] = "write-zeroes",
	[BD_IO_DISCARD] = "discard", [BD_IO_FLUSH] = "flush",
	[BD_IO_BLOCK_STATUS] = "block-status",
};

void bd_rule_free(struct bd_rule *rule)
{
	if (!rule)
		return;
	g_free(rule->tag);
	g_free(rule);
}

static bool key_known(enum bd_group g, const char *key)
{
	const char *const *keys = g == BD_GROUP_INJECT ? inject_keys : set_state_keys;

	for (size_t i = 0; keys[i]; i++)
		if (!strcmp(keys[i], key))
			return true;
	return false;
}

/* A number as qemu's options take it: C syntax in any base, leading blanks allowed. */
static int get_number(GHashTable *sec, const char *key, int64_t *out, GError **errp)
{
	const char *v = g_hash_table_lookup(sec, key);
	char *end;

	if (!v)
		return 0;
	errno = 0;
	*out = (int64_t)strtoull(v, &end, 0);
	if (end == v || *end || errno)
		return tblk_error_set(errp, EINVAL, "Parameter '%s' expects a number", key);
	return 0;
}

static int get_bool(GHashTable *sec, const char *key, bool *out, GError **errp)
{
	const char *v = g_hash_table_lookup(sec, key);

	if (!v)
		return 0;
	if (!strcmp(v, "on") || !strcmp(v, "yes") || !strcmp(v, "true") || !strcmp(v, "y"))
		*out = true;
	else if (!strcmp(v, "off") || !strcmp(v, "no") || !strcmp(v, "false") || !strcmp(v, "n"))
		*out = false;
	else
		return tblk_error_set(errp, EINVAL, "Parameter '%s' expects 'on' or 'off'", key);
	return 0;
}

/* Builds the rule of one section; the values were checked against the group's keys. */
static int rule_from_section(enum bd_group g, GHashTable *sec, GPtrArray *rules,
			     GError **errp)
{
	const char *event = g_hash_table_lookup(sec, "event");
	const char *iotype = g_hash_table_lookup(sec, "iotype");
	struct bd_rule *rule;
	int64_t state = 0, err = EIO, sector = -1, new_state = 0;
	bool once = false, immediately = false;
	int ev;

	if (!event)
		return tblk_error_set(errp, EINVAL, "Missing event name for rule");
	ev = tblk__debug_event_find(event);
	if (ev < 0)
		return tblk_error_set(errp, EINVAL, "invalid parameter value: %s", event);
	if (get_number(sec, "state", &state, errp) < 0 ||
	    get_number(sec, "errno", &err, errp) < 0 ||
	    get_number(sec, "sector", &sector, errp) < 0 ||
	    get_number(sec, "new_state", &new_state, errp) < 0 ||
	    get_bool(sec, "once", &once, errp) < 0 ||
	    get_bool(sec, "immediately", &immediately, errp) < 0)
		return -EINVAL;
	rule = g_new0(struct bd_rule, 1);
	rule->event = ev;
	rule->state = (int)state;
	if (g == BD_GROUP_SET_STATE) {
		rule->action = BD_SET_STATE;
		rule->new_state = (int)new_state;
		g_ptr_array_add(rules, rule);
		return 0;
	}
	rule->action = BD_INJECT_ERROR;
	rule->error = (int)err;
	rule->once = once;
	rule->immediately = immediately;
	rule->offset = sector < 0 ? -1 : sector * 512;
	rule->iotype_mask = BD_IOTYPE_DEFAULT;
	if (iotype) {
		size_t i;

		for (i = 0; i < TBLK_ARRAY_SIZE(iotype_names); i++)
			if (!strcmp(iotype, iotype_names[i]))
				break;
		if (i == TBLK_ARRAY_SIZE(iotype_names)) {
			bd_rule_free(rule);
			return tblk_error_set(errp, EINVAL, "invalid parameter value: %s", iotype);
		}
		rule->iotype_mask = 1u << i;
	}
	g_ptr_array_add(rules, rule);
	return 0;
}

/* ---------------------------------------------------------------- config file */

struct section {
	enum bd_group group;
	GHashTable *values;
};

static void section_free(gpointer p)
{
	struct section *sec = p;

	g_hash_table_unref(sec->values);
	g_free(sec);
}

/* Parses one line into @sections; @ids holds "group\nid" of the named sections. */
static int parse_line(char *line, GPtrArray *sections, GHashTable *ids, GError **errp)
{
	char group[64], id[64], key[64], value[1024];
	struct section *cur = sections->len ? sections->pdata[sections->len - 1] : NULL;
	bool have_id;
	int g;

	if (line[0] == '\n' || line[0] == '#')
		return 0;
	have_id = sscanf(line, "[%63s \"%63[^\"]\"]", group, id) == 2;
	if (have_id || sscanf(line, "[%63[^]]]", group) == 1) {
		for (g = 0; g < BD_GROUP_NR; g++)
			if (!strcmp(group, group_names[g]))
				break;
		if (g == BD_GROUP_NR)
			return tblk_error_set(errp, EINVAL, "There is no option group '%s'", group);
		if (have_id) {
			char *k = g_strdup_printf("%s\n%s", group, id);

			if (g_hash_table_contains(ids, k)) {
				g_free(k);
				return tblk_error_set(errp, EINVAL, "Duplicate ID '%s' for %s", id,
						      group);
			}
			g_hash_table_add(ids, k);
		}
		cur = g_new0(struct section, 1);
		cur->group = g;
		cur->values = tblk_opts_new();
		g_ptr_array_add(sections, cur);
		return 0;
	}
	value[0] = '\0';
	if (sscanf(line, " %63s = \"%1023[^\"]\"", key, value) != 2 &&
	    sscanf(line, " %63s = \"\"", key) != 1)
		return tblk_error_set(errp, EINVAL, "parse error");
	if (!cur)
		return tblk_error_set(errp, EINVAL, "no group defined");
	if (!key_known(cur->group, key))
		return tblk_error_set(errp, EINVAL, "Invalid parameter '%s'", key);
	g_hash_table_insert(cur->values, g_strdup(key), g_strdup(value));
	return 0;
}

int bd_config_read(const char *path, GPtrArray *rules, GError **errp)
{
	g_autoptr(GPtrArray) sections = g_ptr_array_new_with_free_func(section_free);
	g_autoptr(GHashTable) ids = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
	char *line = NULL;
	size_t cap = 0;
	int ret = 0;
	FILE *f;

	f = fopen(path, "re");
	if (!f)
		return tblk_error_set_errno(errp, errno, "Could not read blkdebug config file");
	while (getline(&line, &cap, f) > 0) {
		ret = parse_line(line, sections, ids, errp);
		if (ret < 0)
			break;
	}
	free(line);
	fclose(f);
	/* qemu makes the rules group by group: every inject-error, then every set-state. */
	for (int g = 0; ret == 0 && g < BD_GROUP_NR; g++) {
		for (guint i = 0; ret == 0 && i < sections->len; i++) {
			struct section *sec = sections->pdata[i];

			if (sec->group == (enum bd_group)g)
				ret = rule_from_section(g, sec->values, rules, errp);
		}
	}
	return ret;
}

/* ---------------------------------------------------------------- options */

static int take_group(GHashTable *opts, enum bd_group g, GPtrArray *rules, GError **errp)
{
	const char *name = group_names[g];
	g_autoptr(GHashTable) all = tblk__opts_extract_prefix(opts, name);
	GHashTableIter it;
	gpointer k, v;

	for (unsigned int n = 0;; n++) {
		g_autofree char *idx = g_strdup_printf("%u", n);
		g_autoptr(GHashTable) sec = tblk__opts_extract_prefix(all, idx);
		int ret;

		if (!g_hash_table_size(sec))
			break;
		g_hash_table_iter_init(&it, sec);
		while (g_hash_table_iter_next(&it, &k, &v))
			if (!key_known(g, k))
				return tblk_error_set(errp, EINVAL, "[%s] section doesn't support "
						      "the option '%s'", name, (char *)k);
		ret = rule_from_section(g, sec, rules, errp);
		if (ret < 0)
			return ret;
	}
	g_hash_table_iter_init(&it, all);
	if (g_hash_table_iter_next(&it, &k, &v))
		return tblk_error_set(errp, EINVAL, "Unused option '%s' for [%s]", (char *)k,
				      name);
	return 0;
}

int bd_options_take(GHashTable *opts, GPtrArray *rules, GError **errp)
{
	for (int g = 0; g < BD_GROUP_NR; g++) {
		int ret = take_group(opts, g, rules, errp);

		if (ret < 0)
			return ret;
	}
	return 0;
}
