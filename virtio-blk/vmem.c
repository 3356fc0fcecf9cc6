/* SPDX-License-Identifier: MIT */
/*
 * vmem.c - guest memory maps: the regions a front-end shared, and translation of guest
 * (and front-end) addresses to ours with every byte checked to lie inside one region.
 *
 * Threading: a map is built by one thread, then published and never changed; references
 * are atomic, so the last request holding an old map may drop it from any thread.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "virtio-blk/virtio-blk.h"

struct tblk_vmap *tblk__vmap_open(int fd, uint64_t offset, uint64_t len, int *perr)
{
	struct tblk_vmap *map;
	struct stat st;
	int seals;
	void *p;

	if (len == 0 || len > SIZE_MAX || offset > (uint64_t)INT64_MAX - len) {
		*perr = -EINVAL;
		return NULL;
	}
	/*
	 * Touching a page past the end of the file would kill us with SIGBUS: the file must
	 * be a regular one (memfd, shm, hugetlbfs) at least as long as the region.
	 */
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size < offset + len) {
		*perr = -EINVAL;
		return NULL;
	}
	p = mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, (off_t)offset);
	if (p == MAP_FAILED) {
		*perr = -errno;
		return NULL;
	}
	map = g_new0(struct tblk_vmap, 1);
	map->refcnt = 1;
	map->base = p;
	map->len = (size_t)len;
	map->guard = -1;
	/* Unless the front-end sealed it, it can still truncate the file under us. */
	seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0 || !(seals & F_SEAL_SHRINK))
		map->guard = tblk__vguard_add(p, (size_t)len, &map->faulted);
	return map;
}

static struct tblk_vmap *vmap_ref(struct tblk_vmap *map)
{
	if (map)
		__atomic_add_fetch(&map->refcnt, 1, __ATOMIC_RELAXED);
	return map;
}

void tblk__vmap_unref(struct tblk_vmap *map)
{
	if (!map || __atomic_sub_fetch(&map->refcnt, 1, __ATOMIC_ACQ_REL) > 0)
		return;
	tblk__vguard_del(map->guard);
	munmap(map->base, map->len);
	g_free(map);
}

struct tblk_vmem *tblk__vmem_new(void)
{
	struct tblk_vmem *vmem = g_new0(struct tblk_vmem, 1);

	vmem->refcnt = 1;
	return vmem;
}

struct tblk_vmem *tblk__vmem_ref(struct tblk_vmem *vmem)
{
	__atomic_add_fetch(&vmem->refcnt, 1, __ATOMIC_RELAXED);
	return vmem;
}

void tblk__vmem_unref(struct tblk_vmem *vmem)
{
	if (!vmem || __atomic_sub_fetch(&vmem->refcnt, 1, __ATOMIC_ACQ_REL) > 0)
		return;
	for (unsigned int i = 0; i < vmem->nr; i++)
		tblk__vmap_unref(vmem->r[i].map);
	g_free(vmem);
}

struct tblk_vmem *tblk__vmem_clone(struct tblk_vmem *vmem)
{
	struct tblk_vmem *n = tblk__vmem_new();

	if (!vmem)
		return n;
	n->nr = vmem->nr;
	for (unsigned int i = 0; i < vmem->nr; i++) {
		n->r[i] = vmem->r[i];
		vmap_ref(n->r[i].map);
	}
	return n;
}

bool tblk__vmem_faulted(struct tblk_vmem *vmem)
{
	if (!vmem)
		return false;
	for (unsigned int i = 0; i < vmem->nr; i++)
		if (vmem->r[i].map && __atomic_load_n(&vmem->r[i].map->faulted, __ATOMIC_ACQUIRE))
			return true;
	return false;
}

static bool ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return a < b + blen && b < a + alen;
}

int tblk__vmem_add(struct tblk_vmem *vmem, uint64_t gpa, uint64_t size, uint64_t uva,
		   void *host, struct tblk_vmap *map)
{
	struct tblk_vmem_region *r;

	if (size == 0 || gpa + size < gpa || uva + size < uva ||
	    (uintptr_t)host + size < (uintptr_t)host)
		goto out_inval;
	for (unsigned int i = 0; i < vmem->nr; i++)
		if (ranges_overlap(gpa, size, vmem->r[i].gpa, vmem->r[i].size) ||
		    ranges_overlap(uva, size, vmem->r[i].uva, vmem->r[i].size))
			goto out_inval;
	if (vmem->nr == TBLK_VMEM_MAX_REGIONS) {
		tblk__vmap_unref(map);
		return -ENOSPC;
	}
	r = &vmem->r[vmem->nr++];
	r->gpa = gpa;
	r->size = size;
	r->uva = uva;
	r->host = host;
	r->map = map;
	return 0;
out_inval:
	tblk__vmap_unref(map);
	return -EINVAL;
}

int tblk__vmem_remove(struct tblk_vmem *vmem, uint64_t gpa, uint64_t size)
{
	for (unsigned int i = 0; i < vmem->nr; i++) {
		if (vmem->r[i].gpa != gpa || vmem->r[i].size != size)
			continue;
		tblk__vmap_unref(vmem->r[i].map);
		vmem->r[i] = vmem->r[--vmem->nr];
		return 0;
	}
	return -ENOENT;
}

void *tblk__vmem_uva(struct tblk_vmem *vmem, uint64_t uva, uint64_t len)
{
	if (!vmem)
		return NULL;
	for (unsigned int i = 0; i < vmem->nr; i++) {
		const struct tblk_vmem_region *r = &vmem->r[i];

		if (uva >= r->uva && uva - r->uva < r->size && len <= r->size - (uva - r->uva))
			return r->host + (uva - r->uva);
	}
	return NULL;
}

void *tblk__vmem_gpa(struct tblk_vmem *vmem, uint64_t gpa, uint64_t len)
{
	if (!vmem)
		return NULL;
	for (unsigned int i = 0; i < vmem->nr; i++) {
		const struct tblk_vmem_region *r = &vmem->r[i];

		if (gpa >= r->gpa && gpa - r->gpa < r->size && len <= r->size - (gpa - r->gpa))
			return r->host + (gpa - r->gpa);
	}
	return NULL;
}

int tblk__vmem_map(struct tblk_vmem *vmem, uint64_t gpa, uint64_t len, struct iovec *iov,
		   unsigned int *cnt, unsigned int max)
{
	while (len > 0) {
		const struct tblk_vmem_region *r = NULL;
		uint64_t off, n;

		for (unsigned int i = 0; i < vmem->nr; i++) {
			if (gpa >= vmem->r[i].gpa && gpa - vmem->r[i].gpa < vmem->r[i].size) {
				r = &vmem->r[i];
				break;
			}
		}
		if (!r)
			return -EFAULT;
		if (*cnt >= max)
			return -E2BIG;
		off = gpa - r->gpa;
		n = TBLK_MIN(len, r->size - off);
		iov[*cnt].iov_base = r->host + off;
		iov[*cnt].iov_len = (size_t)n;
		(*cnt)++;
		gpa += n;
		len -= n;
	}
	return 0;
}
