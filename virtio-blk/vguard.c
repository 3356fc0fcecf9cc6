/* SPDX-License-Identifier: MIT */
/*
 * vguard.c - surviving a front-end that shrinks the memory it shared with us.
 *
 * Guest memory is a file the front-end passed (a memfd, usually) that we map. If the
 * front-end truncates that file, touching a page past its new end raises SIGBUS, whose
 * default action would kill the daemon and every other export with it. The kernel's own
 * accesses (Linux AIO, preadv into guest buffers) only fail with EFAULT; ours (ring
 * indexes, request headers, status bytes, bounce copies) would be fatal.
 *
 * So every map of a file that is not sealed against shrinking (F_SEAL_SHRINK, which
 * qemu's memory-backend-memfd sets by default) is registered here. A SIGBUS inside a
 * registered map replaces the faulting page with a private zero page (mmap MAP_FIXED, safe
 * in a signal handler), raises the map's `faulted` flag and the global fault count, and
 * returns: the access is retried and reads zeroes. The device checks the count as it
 * takes and completes requests, and marks the queues of a faulted memory table broken:
 * the front-end must reset them, as a device would need after a DMA fault. A SIGBUS
 * anywhere else goes to the handler that was installed before ours (or kills us as before).
 *
 * Threading: add/del under guard_lock, from any thread. The handler runs in whichever
 * thread faulted and reads the slots with atomics only; a slot is published by storing its
 * len last, and a map is deregistered before it is unmapped. A thread that faults in a map
 * holds a reference to it, so the map and its flag outlive the handler's use of them.
 */
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "virtio-blk/virtio-blk.h"

#define VGUARD_SLOTS	1024

struct vguard_slot {
	uintptr_t base;		/* [guard_lock] written, [atomic] read by the handler */
	size_t len;		/* as base; 0: free. Stored last (release) when published */
	int *flag;		/* as base: the map's faulted flag */
};

static pthread_mutex_t guard_lock = PTHREAD_MUTEX_INITIALIZER;
static struct vguard_slot slots[VGUARD_SLOTS];
static unsigned int fault_count;	/* [atomic] */
static struct sigaction prev_action;	/* [const] once the handler is installed */
static uintptr_t page_size;		/* [const] once the handler is installed */
static pthread_once_t install_once = PTHREAD_ONCE_INIT;

static bool fix_fault(uintptr_t addr)
{
	uintptr_t page = addr & ~(page_size - 1);

	for (unsigned int i = 0; i < VGUARD_SLOTS; i++) {
		size_t len = __atomic_load_n(&slots[i].len, __ATOMIC_ACQUIRE);
		uintptr_t base = __atomic_load_n(&slots[i].base, __ATOMIC_RELAXED);

		if (!len || addr < base || addr - base >= len)
			continue;
		if (mmap((void *)page, page_size, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
			return false;
		__atomic_store_n(__atomic_load_n(&slots[i].flag, __ATOMIC_RELAXED), 1,
				 __ATOMIC_RELEASE);
		__atomic_fetch_add(&fault_count, 1, __ATOMIC_RELEASE);
		return true;
	}
	return false;
}

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
	if (fix_fault((uintptr_t)si->si_addr))
		return;
	if ((prev_action.sa_flags & SA_SIGINFO) && prev_action.sa_sigaction) {
		prev_action.sa_sigaction(sig, si, uc);
		return;
	}
	if (prev_action.sa_handler != SIG_DFL && prev_action.sa_handler != SIG_IGN) {
		prev_action.sa_handler(sig);
		return;
	}
	/* Not ours: the default action, on the retried access (or now, if it was sent). */
	signal(SIGBUS, SIG_DFL);
	if (si->si_code <= 0)
		raise(SIGBUS);
}

static void install(void)
{
	struct sigaction sa;

	/* sysconf() is not async-signal-safe: the handler uses this copy. */
	page_size = (uintptr_t)sysconf(_SC_PAGESIZE);
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_sigbus;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, &prev_action);
}

int tblk__vguard_add(void *base, size_t len, int *flag)
{
	int slot = -ENOSPC;

	pthread_once(&install_once, install);
	pthread_mutex_lock(&guard_lock);
	for (unsigned int i = 0; i < VGUARD_SLOTS; i++) {
		if (slots[i].len)
			continue;
		__atomic_store_n(&slots[i].base, (uintptr_t)base, __ATOMIC_RELAXED);
		__atomic_store_n(&slots[i].flag, flag, __ATOMIC_RELAXED);
		__atomic_store_n(&slots[i].len, len, __ATOMIC_RELEASE);
		slot = (int)i;
		break;
	}
	pthread_mutex_unlock(&guard_lock);
	return slot;
}

void tblk__vguard_del(int slot)
{
	if (slot < 0)
		return;
	pthread_mutex_lock(&guard_lock);
	__atomic_store_n(&slots[slot].len, 0, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&guard_lock);
}

unsigned int tblk__vguard_faults(void)
{
	return __atomic_load_n(&fault_count, __ATOMIC_ACQUIRE);
}
