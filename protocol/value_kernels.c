/* Optional compiled helpers for protocol/value_kernels.py: plain C11, no Python or numpy headers, loaded
 * with ctypes.PyDLL (the calls keep the GIL: each is a few microseconds, shorter than a GIL hand-off).
 * Every function has a numpy fallback in value_kernels.py that gives the same bytes / results. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FEDDST_VALUE_KERNELS_ABI 2

int feddst_value_kernels_abi(void) { return FEDDST_VALUE_KERNELS_ABI; }

/* Undo the byte shuffle: planes holds `width` planes of `count` bytes; out[i * width + b] = planes[b * count + i]. */
void feddst_unshuffle(const uint8_t *restrict planes, int64_t count, int32_t width, uint8_t *restrict out) {
    if (width == 4) {
        const uint8_t *p0 = planes, *p1 = planes + count, *p2 = planes + 2 * count, *p3 = planes + 3 * count;
        for (int64_t i = 0; i < count; i++) {
            out[4 * i] = p0[i];
            out[4 * i + 1] = p1[i];
            out[4 * i + 2] = p2[i];
            out[4 * i + 3] = p3[i];
        }
        return;
    }
    if (width == 2) {
        const uint8_t *p0 = planes, *p1 = planes + count;
        for (int64_t i = 0; i < count; i++) {
            out[2 * i] = p0[i];
            out[2 * i + 1] = p1[i];
        }
        return;
    }
    for (int32_t b = 0; b < width; b++)
        for (int64_t i = 0; i < count; i++) out[i * width + b] = planes[b * count + i];
}

/* 1 if every one of the n float32 values is finite (no NaN, no +-Inf), else 0. */
int32_t feddst_all_finite_f32(const float *restrict values, int64_t n) {
    /* a float32 is not finite exactly when its exponent bits are all set (read as bits: memcpy, no aliasing) */
    uint32_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, values + i, sizeof bits);
        bad |= (bits & 0x7F800000u) == 0x7F800000u;
    }
    return bad ? 0 : 1;
}

/* acc[i] += weight * (double)values[i] for i < n: a float64 product, then a float64 sum, each rounded, as numpy's
 * multiply(values, weight, dtype=float64) followed by add (built with -ffp-contract=off: no fused multiply-add). */
void feddst_add_scaled_f32(double *restrict acc, const float *restrict values, int64_t n, double weight) {
    for (int64_t i = 0; i < n; i++) acc[i] += weight * (double)values[i];
}

/* feddst_add_scaled_f32 over `count` (accumulator, values, size) triples in one call: accs[k][i] += weight *
 * (double)values[k][i] for i < sizes[k], k < count, each triple in turn (the same sums, bit for bit, as one
 * feddst_add_scaled_f32 per triple; one ctypes call per update instead of one per tensor). */
void feddst_add_scaled_many_f32(double *const *accs, const float *const *values, const int64_t *sizes,
                                int64_t count, double weight) {
    for (int64_t k = 0; k < count; k++) feddst_add_scaled_f32(accs[k], values[k], sizes[k], weight);
}
