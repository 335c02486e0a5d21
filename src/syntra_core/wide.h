/* 128-bit helpers that Cython cannot spell itself. GCC and Clang provide __int128. */
#ifndef SYNTRA_WIDE_H
#define SYNTRA_WIDE_H
#include <stdint.h>

/* High 64 bits of a*b; the low 64 bits go to *lo. */
static inline uint64_t syntra_mul_u64(uint64_t a, uint64_t b, uint64_t *lo) {
    unsigned __int128 m = (unsigned __int128)a * b;
    *lo = (uint64_t)m;
    return (uint64_t)(m >> 64);
}

#endif
