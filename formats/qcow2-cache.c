/* SPDX-License-Identifier: MIT */
/*
 * qcow2-cache.c - the L2 table and refcount block caches: whole-cluster tables kept in
 * memory, written back on flush or eviction in an order that keeps the image consistent at
 * every point a crash could hit: refcount blocks reach the disk (and are flushed) before any
 * L2 table that points at clusters they count.
 *
 * Threading: every function runs under the image lock (qcow2_state.meta), which may be held
 * across the metadata I/O done here; qcow2_cache_peek() may also run under qcow2_state.mu
 * alone while nobody holds the image lock (the fast path), which excludes every other user.
 */
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2-int.h"

struct cache_entry {
	uint64_t offset;	/* [meta] host offset of the table, 0 = free slot */
	void *table;		/* [meta] cluster_size bytes, big-endian as on disk */
	bool dirty;		/* [meta] */
	uint64_t lru;		/* [meta] last use */
};

struct qcow2_cache {
	struct qcow2_state *s;		/* [const] */
	unsigned int nr;		/* [const] */
	struct cache_entry *e;		/* [meta] nr entries */
	void *tables;			/* [const] nr tables of cluster_size bytes, e[i].table */
	GHashTable *index;		/* [meta] offset -> entry index + 1 */
	uint64_t clock;			/* [meta] */
};

struct qcow2_cache *qcow2_cache_new(struct qcow2_state *s, unsigned int nr_entries)
{
	struct qcow2_cache *c = g_new0(struct qcow2_cache, 1);

	c->s = s;
	c->nr = TBLK_MAX(nr_entries, 2u);
	c->e = g_new0(struct cache_entry, c->nr);
	c->index = g_hash_table_new(g_int64_hash, g_int64_equal);
	/*
	 * One region for all tables, not one allocation each: a large region is mapped and
	 * left untouched until a table is loaded, while tens of thousands of small aligned
	 * allocations (a large image with 512-byte clusters) touch a page each at open.
	 * Tables are cluster_size apart: 4 KiB-aligned from 4 KiB clusters up, otherwise
	 * as aligned as their size, and the I/O layer bounces what the file needs more of.
	 */
	if (posix_memalign(&c->tables, 4096, (size_t)c->nr * s->cluster_size))
		abort();	/* out of memory: as g_malloc would */
	for (unsigned int i = 0; i < c->nr; i++)
		c->e[i].table = (char *)c->tables + (size_t)i * s->cluster_size;
	return c;
}

void qcow2_cache_free(struct qcow2_cache *c)
{
	if (!c)
		return;
	free(c->tables);
	g_hash_table_destroy(c->index);
	g_free(c->e);
	g_free(c);
}

/* An L2 table may only reach the disk after the refcounts it relies on. */
static int write_dependencies(struct qcow2_cache *c)
{
	struct qcow2_state *s = c->s;
	int ret;

	if (c != s->l2_cache)	/* only L2 tables depend on the refcount cache */
		return 0;
	s->l2_needs_rc = false;
	ret = qcow2_cache_write(s->rc_cache);
	if (ret < 0)
		return ret;
	if (s->meta_dirty) {
		ret = tblk_node_flush(s->node->file);
		if (ret < 0)
			return ret;
		s->meta_dirty = false;
	}
	return 0;
}

static int entry_write(struct qcow2_cache *c, struct cache_entry *e)
{
	int ret;

	if (!e->dirty)
		return 0;
	ret = write_dependencies(c);
	if (ret < 0)
		return ret;
	tblk_node_debug_event(c->s->node->file, c == c->s->l2_cache ? TBLK_DBG_L2_UPDATE :
			      TBLK_DBG_REFBLOCK_UPDATE_PART);
	/* A table may overwrite itself (the kind of its cache), nothing else. */
	ret = qcow2_meta_pwrite(c->s, c == c->s->l2_cache ? QCOW2_OL_ACTIVE_L2 : QCOW2_OL_REFBLOCK,
				e->offset, e->table, c->s->cluster_size);
	if (ret < 0)
		return ret;
	e->dirty = false;
	c->s->meta_dirty = true;
	return 0;
}

int qcow2_cache_write(struct qcow2_cache *c)
{
	int ret = 0;

	for (unsigned int i = 0; i < c->nr && ret >= 0; i++)
		ret = entry_write(c, &c->e[i]);
	return ret;
}

static struct cache_entry *lookup(struct qcow2_cache *c, uint64_t offset)
{
	gpointer v = g_hash_table_lookup(c->index, &offset);

	return v ? &c->e[GPOINTER_TO_UINT(v) - 1] : NULL;
}

static void entry_forget(struct qcow2_cache *c, struct cache_entry *e)
{
	if (e->offset)
		g_hash_table_remove(c->index, &e->offset);
	e->offset = 0;
	e->dirty = false;
}

int qcow2_cache_peek(struct qcow2_cache *c, uint64_t offset, void **table)
{
	struct cache_entry *e = lookup(c, offset);

	if (!e)
		return -ENOENT;
	e->lru = ++c->clock;
	*table = e->table;
	return 0;
}

int qcow2_cache_get(struct qcow2_cache *c, uint64_t offset, bool fresh, void **table)
{
	struct cache_entry *e = lookup(c, offset), *victim = NULL;
	int ret;

	if (e) {
		e->lru = ++c->clock;
		if (fresh) {
			memset(e->table, 0, c->s->cluster_size);
			e->dirty = true;
		}
		*table = e->table;
		return 0;
	}
	for (unsigned int i = 0; i < c->nr; i++) {
		if (!c->e[i].offset) {
			victim = &c->e[i];
			break;
		}
		if (!victim || c->e[i].lru < victim->lru)
			victim = &c->e[i];
	}
	ret = entry_write(c, victim);
	if (ret < 0)
		return ret;
	entry_forget(c, victim);
	if (fresh) {
		memset(victim->table, 0, c->s->cluster_size);
		victim->dirty = true;
	} else {
		ret = tblk_node_pread(c->s->node->file, offset, victim->table, c->s->cluster_size);
		if (ret < 0)
			return ret;
	}
	victim->offset = offset;
	victim->lru = ++c->clock;
	g_hash_table_insert(c->index, &victim->offset,
			    GUINT_TO_POINTER((unsigned int)(victim - c->e) + 1));
	*table = victim->table;
	return 0;
}

void qcow2_cache_mark_dirty(struct qcow2_cache *c, void *table)
{
	for (unsigned int i = 0; i < c->nr; i++) {
		if (c->e[i].table == table) {
			c->e[i].dirty = true;
			return;
		}
	}
	abort();	/* not a table of this cache: our bug */
}

void qcow2_cache_discard(struct qcow2_cache *c, uint64_t offset)
{
	struct cache_entry *e = lookup(c, offset);

	if (e)
		entry_forget(c, e);
}

void qcow2_cache_clear(struct qcow2_cache *c)
{
	for (unsigned int i = 0; i < c->nr; i++)
		entry_forget(c, &c->e[i]);
}

int qcow2_flush_metadata(struct qcow2_state *s)
{
	int ret = qcow2_cache_write(s->l2_cache);

	if (ret >= 0)
		ret = qcow2_cache_write(s->rc_cache);
	/* Freed clusters become reusable only once nothing on disk points at them. */
	if (ret >= 0 && s->nr_pending_free) {
		ret = tblk_node_flush(s->node->file);
		s->meta_dirty = false;
		if (ret >= 0)
			ret = qcow2_apply_pending_frees(s);
		if (ret >= 0)
			ret = qcow2_cache_write(s->rc_cache);
	}
	return ret;
}
