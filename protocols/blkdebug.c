/* SPDX-License-Identifier: MIT */
/*
 * blkdebug.c - the fault-injection protocol: a filter over one child ("image") that passes
 * requests through unless a rule says otherwise. Formats raise events on their file child
 * (tblk_node_debug_event()); an event activates the inject-error rules written for it (in
 * the current state), which then fail every matching request until another event activates
 * others or, with once=on, after failing one; set-state rules move the state machine;
 * breakpoints stop the request that raised the event until resume.
 *
 * Opened as "blkdebug:CONFIG:IMAGE" or with options config=, image.*=, inject-error.N.*=,
 * set-state.N.*=, align=, max-transfer=, as qemu's blkdebug.
 *
 * Threading: rules, state and stopped requests are under s->lock, a leaf: it is never held
 * across child I/O or the notifier. A stopped request waits on s->cv through the pool's
 * wait service, so the pool starts another worker meanwhile.
 */
#include <string.h>

#include "protocols/blkdebug-int.h"

/*
 * A request stopped at the breakpoints of one event (all of them at once, as qemu's): it goes
 * on once each was resumed. Lives on the request thread's stack.
 */
struct bd_stop {
	unsigned int pending;		/* [s->lock] breakpoints not resumed yet */
	unsigned int resumers;		/* [s->lock] resumers still looking at this */
	bool gone;			/* [s->lock] the request goes on */
};

/* One breakpoint a request stopped at; on s->stopped until resumed. */
struct bd_stopped {
	char *tag;			/* [const] */
	struct bd_stop *stop;		/* [const] */
	struct tblk_list link;		/* [s->lock] on s->stopped */
};

struct bd_state {
	struct tblk_mutex lock;		/* a leaf */
	struct tblk_cond cv;		/* [lock] a stopped request is resumed or went on */
	GPtrArray *rules;		/* [lock] struct bd_rule, in definition order */
	GPtrArray *active;		/* [lock] inject-error rules of the last event with some */
	int state;			/* [lock] starts at 1 */
	struct tblk_list stopped;	/* [lock] struct bd_stopped */
};

/* Splits "blkdebug:CONFIG:IMAGE" into the config and image.filename options. */
static int parse_filename(const char *filename, GHashTable *opts, GError **errp)
{
	const char *p = filename + strlen("blkdebug:"), *colon = strchr(p, ':');

	if (!colon)
		return tblk_error_set(errp, EINVAL, "blkdebug requires both config file and "
				      "image path");
	if (colon > p && !g_hash_table_contains(opts, "config"))
		g_hash_table_insert(opts, g_strdup("config"), g_strndup(p, colon - p));
	if (colon[1] && !g_hash_table_contains(opts, "image.filename"))
		g_hash_table_insert(opts, g_strdup("image.filename"), g_strdup(colon + 1));
	return 0;
}

static int take_limits(struct tblk_node *node, GHashTable *opts, GError **errp)
{
	uint64_t align = 0, max_transfer = 0;

	if (tblk__opts_take_size(opts, "align", &align, errp) < 0 ||
	    tblk__opts_take_size(opts, "max-transfer", &max_transfer, errp) < 0)
		return -EINVAL;
	node->limits = node->file->limits;
	if (align) {
		if (align & (align - 1) || align > INT32_MAX)
			return tblk_error_set(errp, EINVAL, "Cannot meet constraints with align %"
					      PRIu64, align);
		node->limits.request_alignment = TBLK_MAX(node->limits.request_alignment,
							  (uint32_t)align);
	}
	if (max_transfer) {
		if (max_transfer % node->limits.request_alignment)
			return tblk_error_set(errp, EINVAL, "Cannot meet constraints with "
					      "max-transfer %" PRIu64, max_transfer);
		node->limits.max_transfer = node->limits.max_transfer ?
			TBLK_MIN(node->limits.max_transfer, max_transfer) : max_transfer;
	}
	return 0;
}

static void state_destroy(struct bd_state *s)
{
	if (s->rules)
		g_ptr_array_free(s->rules, TRUE);
	if (s->active)
		g_ptr_array_free(s->active, TRUE);
	tblk_cond_destroy(&s->cv);
	tblk_mutex_destroy(&s->lock);
}

static void bd_debug_event(struct tblk_node *node, enum tblk_debug_event ev);

static int bd_open(struct tblk_node *node, GHashTable *opts, unsigned int flags, GError **errp)
{
	struct bd_state *s = node->opaque;
	g_autofree char *filename = tblk__opts_take(opts, "filename");
	g_autofree char *config = NULL;
	int ret;

	tblk_mutex_init(&s->lock);
	tblk_cond_init(&s->cv);
	tblk_list_init(&s->stopped);
	s->rules = g_ptr_array_new_with_free_func((GDestroyNotify)bd_rule_free);
	s->active = g_ptr_array_new();
	s->state = 1;
	if (filename && g_str_has_prefix(filename, "blkdebug:")) {
		ret = parse_filename(filename, opts, errp);
		if (ret < 0)
			goto out_destroy;
	}
	config = tblk__opts_take(opts, "config");
	if (config) {
		ret = bd_config_read(config, s->rules, errp);
		if (ret < 0)
			goto out_destroy;
	}
	ret = bd_options_take(opts, s->rules, errp);
	if (ret < 0)
		goto out_destroy;
	if (!g_hash_table_contains(opts, "image.filename") &&
	    !g_hash_table_contains(opts, "image.driver") && !g_hash_table_contains(opts, "image")) {
		ret = tblk_error_set(errp, EINVAL,
				     "A block device must be specified for \"image\"");
		goto out_destroy;
	}
	ret = tblk__node_open_child(node, "image", opts, flags, &node->file, errp);
	if (ret < 0)
		goto out_destroy;
	ret = take_limits(node, opts, errp);
	if (ret < 0)
		goto out_close_child;
	/* Errors and relative backing names refer to the image below. */
	node->filename = g_strdup(node->file->filename);
	/* As qemu's, rules on the event "none" are active from the start. */
	bd_debug_event(node, TBLK_DBG_NONE);
	return 0;

out_close_child:
	tblk__node_close(node->file);
	node->file = NULL;
out_destroy:
	state_destroy(s);
	return ret;
}

static void bd_close(struct tblk_node *node)
{
	struct bd_state *s = node->opaque;

	/* Drained by now: nothing is stopped. */
	state_destroy(s);
}

/* Removes @rule from the rules and the active list, and frees it. */
static void rule_remove_locked(struct bd_state *s, struct bd_rule *rule)
{
	g_ptr_array_remove(s->active, rule);
	g_ptr_array_remove(s->rules, rule);
}

/*
 * Stops the calling request at the breakpoints @tags (the newest first, as qemu reports
 * them) until each was resumed.
 */
static void stop_here(struct bd_state *s, GPtrArray *tags)
{
	g_autofree struct bd_stopped *st = g_new0(struct bd_stopped, tags->len);
	struct bd_stop stop = { .pending = tags->len };

	/* Reported before they can be seen stopped, so a waiter prints after the reports. */
	for (guint i = 0; i < tags->len; i++)
		tblk__debug_notify(tags->pdata[i], true);
	tblk_mutex_lock(&s->lock);
	for (guint i = 0; i < tags->len; i++) {
		st[i].tag = tags->pdata[i];
		st[i].stop = &stop;
		tblk_list_add_tail(&s->stopped, &st[i].link);
	}
	tblk_cond_broadcast(&s->cv);
	while (stop.pending)
		tblk_pool_wait(&s->cv, &s->lock);
	stop.gone = true;
	tblk_cond_broadcast(&s->cv);
	/* The last resumer still reads stop until it saw gone: wait for it to let go. */
	while (stop.resumers)
		tblk_pool_wait(&s->cv, &s->lock);
	tblk_mutex_unlock(&s->lock);
	for (guint i = 0; i < tags->len; i++)
		g_free(tags->pdata[i]);
}

static void bd_debug_event(struct tblk_node *node, enum tblk_debug_event ev)
{
	struct bd_state *s = node->opaque;
	g_autoptr(GPtrArray) tags = g_ptr_array_new();
	bool injected = false;
	int new_state;

	tblk_mutex_lock(&s->lock);
	new_state = s->state;
	for (guint i = 0; i < s->rules->len; i++) {
		struct bd_rule *rule = s->rules->pdata[i];

		if (rule->event != ev || (rule->state && rule->state != s->state))
			continue;
		switch (rule->action) {
		case BD_INJECT_ERROR:
			if (!injected)
				g_ptr_array_set_size(s->active, 0);
			injected = true;
			g_ptr_array_add(s->active, rule);
			break;
		case BD_SET_STATE:
			new_state = rule->new_state;
			break;
		case BD_SUSPEND:
			/* A breakpoint fires once. */
			g_ptr_array_add(tags, rule->tag);
			rule->tag = NULL;
			g_ptr_array_remove_index(s->rules, i--);
			break;
		}
	}
	tblk_mutex_unlock(&s->lock);
	if (tags->len) {
		/* qemu keeps each event's rules newest first */
		for (guint i = 0; i < tags->len / 2; i++) {
			gpointer t = tags->pdata[i];

			tags->pdata[i] = tags->pdata[tags->len - 1 - i];
			tags->pdata[tags->len - 1 - i] = t;
		}
		stop_here(s, tags);
	}
	tblk_mutex_lock(&s->lock);
	s->state = new_state;
	tblk_mutex_unlock(&s->lock);
}

/* The error an active rule injects into a request of @type over [offset, offset + bytes). */
static int check_rules(struct tblk_node *node, enum bd_iotype type, uint64_t offset,
		       uint64_t bytes)
{
	struct bd_state *s = node->opaque;
	int err = 0;

	tblk_mutex_lock(&s->lock);
	for (guint i = 0; i < s->active->len; i++) {
		struct bd_rule *rule = s->active->pdata[i];

		if (!(rule->iotype_mask & (1u << type)))
			continue;
		if (rule->offset >= 0 && !(bytes && (uint64_t)rule->offset >= offset &&
					   (uint64_t)rule->offset - offset < bytes))
			continue;
		err = rule->error;
		if (rule->once)
			rule_remove_locked(s, rule);
		break;
	}
	tblk_mutex_unlock(&s->lock);
	return err > 0 ? -err : 0;
}

static int bd_preadv(struct tblk_node *node, uint64_t offset, uint64_t bytes,
		     const struct iovec *iov, int iovcnt, unsigned int flags)
{
	int ret = check_rules(node, BD_IO_READ, offset, bytes);

	return ret ?: tblk_node_preadv(node->file, offset, bytes, iov, iovcnt, flags);
}

/*
 * As qemu's block layer, a write raises pwritev (pwritev_zero) on the node it is written to
 * just before the driver runs, and pwritev_done after: on this node itself, too.
 */
static int bd_pwritev(struct tblk_node *node, uint64_t offset, uint64_t bytes,
		      const struct iovec *iov, int iovcnt, unsigned int flags)
{
	int ret;

	bd_debug_event(node, TBLK_DBG_PWRITEV);
	ret = check_rules(node, BD_IO_WRITE, offset, bytes);
	if (!ret)
		ret = tblk_node_pwritev(node->file, offset, bytes, iov, iovcnt, flags);
	bd_debug_event(node, TBLK_DBG_PWRITEV_DONE);
	return ret;
}

/* The core flushes the image child after this. */
static int bd_flush(struct tblk_node *node)
{
	return check_rules(node, BD_IO_FLUSH, 0, 0);
}

static int bd_pdiscard(struct tblk_node *node, uint64_t offset, uint64_t bytes)
{
	int ret = check_rules(node, BD_IO_DISCARD, offset, bytes);

	return ret ?: tblk_node_pdiscard(node->file, offset, bytes);
}

static int bd_pwrite_zeroes(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			    unsigned int flags)
{
	int ret;

	bd_debug_event(node, TBLK_DBG_PWRITEV_ZERO);
	ret = check_rules(node, BD_IO_WRITE_ZEROES, offset, bytes);
	if (!ret)
		ret = tblk_node_pwrite_zeroes(node->file, offset, bytes, flags);
	bd_debug_event(node, TBLK_DBG_PWRITEV_DONE);
	return ret;
}

static int bd_block_status(struct tblk_node *node, uint64_t offset, uint64_t bytes,
			   uint64_t *pnum, uint64_t *map)
{
	int ret = check_rules(node, BD_IO_BLOCK_STATUS, offset, bytes);

	return ret ?: tblk_node_block_status(node->file, offset, bytes, pnum, map);
}

static int64_t bd_getlength(struct tblk_node *node)
{
	return tblk_node_getlength(node->file);
}

static int bd_truncate(struct tblk_node *node, uint64_t size, const char *prealloc,
		       GError **errp)
{
	struct tblk_node *f = node->file;

	if (!f->drv->truncate)
		return tblk_error_set(errp, ENOTSUP, "Image format driver does not support "
				      "resize");
	return f->drv->truncate(f, size, prealloc, errp);
}

static int bd_breakpoint(struct tblk_node *node, const char *event, const char *tag)
{
	struct bd_state *s = node->opaque;
	int ev = tblk__debug_event_find(event);
	struct bd_rule *rule;

	if (ev < 0)
		return -ENOENT;
	rule = g_new0(struct bd_rule, 1);
	rule->action = BD_SUSPEND;
	rule->event = ev;
	rule->tag = g_strdup(tag);
	tblk_mutex_lock(&s->lock);
	g_ptr_array_add(s->rules, rule);
	tblk_mutex_unlock(&s->lock);
	return 0;
}

/*
 * Resumes the first breakpoint a request stopped at @tag (qemu's resume wakes one per call):
 * reports it, and if it was the request's last one waits until the request goes on, as
 * qemu's runs on at once. false if none is stopped there. Drops s->lock meanwhile.
 */
static bool resume_locked(struct bd_state *s, const char *tag) TBLK_REQUIRES(s->lock)
{
	struct bd_stopped *st = NULL;
	struct bd_stop *stop;
	struct tblk_list *pos;

	tblk_list_for_each(pos, &s->stopped) {
		struct bd_stopped *c = tblk_list_entry(pos, struct bd_stopped, link);

		if (!strcmp(c->tag, tag)) {
			st = c;
			break;
		}
	}
	if (!st)
		return false;
	stop = st->stop;
	tblk_list_del(&st->link);
	stop->resumers++;
	tblk_mutex_unlock(&s->lock);
	tblk__debug_notify(tag, false);
	tblk_mutex_lock(&s->lock);
	stop->pending--;
	tblk_cond_broadcast(&s->cv);
	while (!stop->pending && !stop->gone)
		tblk_cond_wait(&s->cv, &s->lock);
	stop->resumers--;
	tblk_cond_broadcast(&s->cv);
	return true;
}

static int bd_resume(struct tblk_node *node, const char *tag)
{
	struct bd_state *s = node->opaque;
	bool found;

	tblk_mutex_lock(&s->lock);
	found = resume_locked(s, tag);
	tblk_mutex_unlock(&s->lock);
	return found ? 0 : -ENOENT;
}

static int bd_remove_breakpoint(struct tblk_node *node, const char *tag)
{
	struct bd_state *s = node->opaque;
	unsigned int n = 0;

	tblk_mutex_lock(&s->lock);
	for (guint i = 0; i < s->rules->len; i++) {
		struct bd_rule *rule = s->rules->pdata[i];

		if (rule->action == BD_SUSPEND && !strcmp(rule->tag, tag)) {
			g_ptr_array_remove_index(s->rules, i--);
			n++;
		}
	}
	/* The requests stopped there go on; only a removed breakpoint counts as found. */
	while (resume_locked(s, tag))
		;
	tblk_mutex_unlock(&s->lock);
	return n ? 0 : -ENOENT;
}

static bool bd_is_suspended(struct tblk_node *node, const char *tag)
{
	struct bd_state *s = node->opaque;
	struct tblk_list *pos;
	bool found = false;

	tblk_mutex_lock(&s->lock);
	tblk_list_for_each(pos, &s->stopped) {
		struct bd_stopped *st = tblk_list_entry(pos, struct bd_stopped, link);

		if (!strcmp(st->tag, tag))
			found = true;
	}
	tblk_mutex_unlock(&s->lock);
	return found;
}

const struct tblk_driver tblk__drv_blkdebug = {
	.name = "blkdebug",
	.is_protocol = true,
	.instance_size = sizeof(struct bd_state),
	.open = bd_open,
	.close = bd_close,
	.preadv = bd_preadv,
	.pwritev = bd_pwritev,
	.flush = bd_flush,
	.pdiscard = bd_pdiscard,
	.pwrite_zeroes = bd_pwrite_zeroes,
	.block_status = bd_block_status,
	.getlength = bd_getlength,
	.truncate = bd_truncate,
	.debug_event = bd_debug_event,
	.debug_breakpoint = bd_breakpoint,
	.debug_remove_breakpoint = bd_remove_breakpoint,
	.debug_resume = bd_resume,
	.debug_is_suspended = bd_is_suspended,
};
