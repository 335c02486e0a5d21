/* Atomic steps on the 8-byte words of a budget arena (docs/budget-arena.md).
 *
 * GCC/Clang __atomic builtins: lock-free and address-free for aligned 8-byte words on every
 * supported target, so processes sharing a MAP_SHARED mapping see one another's steps.
 * Loads acquire, stores release, read-modify-writes are acq_rel.
 */
#ifndef SYNTRA_BUDGET_ATOMICS_H
#define SYNTRA_BUDGET_ATOMICS_H
#include <stdint.h>
#include <time.h>

#define SYN_MAX_RESERVATION_ID 0x1FFFFFFFFFFFFFFFULL  /* ids use the top 61 bits of a word */
/* How long to wait on a word another caller is changing. A journaled caller holds a word
 * across its journal sync, a Python writer (the atomics2 path) or a preempted one for
 * milliseconds; running out means that caller died mid-operation, which the owner's rebuild
 * from the journal repairs. */
#define SYN_WAIT_NS 10000000000LL

static inline int64_t syn_load(int64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline void syn_store(int64_t *p, int64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
/* On failure *expected is refreshed with the current value, ready for the next try. */
static inline int syn_cas(int64_t *p, int64_t *expected, int64_t desired) {
    return __atomic_compare_exchange_n(p, expected, desired, 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
static inline int64_t syn_fetch_add(int64_t *p, int64_t v) {
    return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL);
}
static inline uint64_t syn_load_u(uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline void syn_store_u(uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline int syn_cas_u(uint64_t *p, uint64_t *expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, expected, desired, 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}
static inline uint64_t syn_fetch_add_u(uint64_t *p, uint64_t v) {
    return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL);
}
static inline void syn_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}
static inline int64_t syn_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
/* Wait a little for a word to move; 0 once wait_ns has passed since the first call. Past
 * the first thousand spins the thread sleeps, so a long wait costs no CPU. */
static inline int syn_backoff(int64_t *spins, int64_t *deadline, int64_t wait_ns) {
    if (*spins == 0) *deadline = syn_monotonic_ns() + wait_ns;
    *spins += 1;
    if (*spins < 1024) {
        syn_pause();
        return 1;
    }
    struct timespec nap = {0, 20000};
    nanosleep(&nap, NULL);
    return syn_monotonic_ns() <= *deadline;
}
static inline int64_t syn_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
#endif
