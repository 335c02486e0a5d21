/* Saturating int64 money arithmetic for the decision kernel.
 *
 * Products that do not fit in 64 bits are formed exactly in 128 bits (GCC and Clang
 * provide __int128), so nothing here can overflow; results are clamped to the int64 range.
 * 128-bit division is a libgcc call, so the helpers take the 64-bit path whenever the
 * product fits (the usual case for real prices and values): there a division by a constant
 * divisor inlines to a multiply and a shift.
 */
#ifndef SYNTRA_KERNEL_MATH_H
#define SYNTRA_KERNEL_MATH_H
#include <stdint.h>

static inline int64_t syntra_clamp_i128(__int128 x) {
    if (x > INT64_MAX) return INT64_MAX;
    if (x < INT64_MIN) return INT64_MIN;
    return (int64_t)x;
}

/* floor(a * b / d), saturated; d > 0. C division truncates, so step down on a negative
 * remainder. */
static inline int64_t syntra_mul_div_floor(int64_t a, int64_t b, int64_t d) {
    int64_t n;
    if (!__builtin_mul_overflow(a, b, &n)) {
        int64_t q = n / d;
        return q - (n % d < 0);
    }
    __int128 p = (__int128)a * b;
    __int128 q = p / d;
    return syntra_clamp_i128(q - (p % d < 0));
}

/* ceil(a * b / d), saturated to INT64_MAX; a, b >= 0 and d > 0. */
static inline int64_t syntra_mul_div_ceil(uint64_t a, uint64_t b, uint64_t d) {
    uint64_t n;
    unsigned __int128 q;
    if (!__builtin_mul_overflow(a, b, &n)) {
        q = n / d + (n % d != 0);
    } else {
        unsigned __int128 p = (unsigned __int128)a * b;
        q = p / d + (p % d != 0);
    }
    return q > INT64_MAX ? INT64_MAX : (int64_t)q;
}

/* a * b, saturated. */
static inline int64_t syntra_mul_sat(int64_t a, int64_t b) {
    return syntra_clamp_i128((__int128)a * b);
}

/* a + b, saturated. */
static inline int64_t syntra_add_sat(int64_t a, int64_t b) {
    return syntra_clamp_i128((__int128)a + b);
}

/* gain - c1 - c2 - c3, formed exactly and saturated once, so the result does not depend
 * on the order of the terms. If no partial difference overflows, 64 bits are exact. */
static inline int64_t syntra_net_sat(int64_t gain, int64_t c1, int64_t c2, int64_t c3) {
    int64_t x;
    if (!__builtin_sub_overflow(gain, c1, &x) && !__builtin_sub_overflow(x, c2, &x)
            && !__builtin_sub_overflow(x, c3, &x))
        return x;
    return syntra_clamp_i128((__int128)gain - c1 - c2 - c3);
}

#endif
