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

/* libzstd's functions as the caller found them (protocol/value_kernels.py loads libzstd.so.1 with ctypes and passes
 * their addresses): this file needs neither zstd.h nor a link against libzstd. */
typedef size_t (*zstd_decompress_dctx_fn)(void *dctx, void *dst, size_t capacity, const void *src, size_t src_size);
typedef size_t (*zstd_frame_size_fn)(const void *src, size_t src_size);
typedef unsigned (*zstd_is_error_fn)(size_t code);

/* One zstd value block: the frame (which must fill frame_len exactly: one frame, nothing after it) decompresses to
 * exactly `count * width` bytes of byte planes, written unshuffled to out (count values of width bytes). scratch
 * holds the planes (count * width bytes; unused when width is 1: the frame decompresses straight into out).
 * Returns 0, or -1 when the frame is invalid, not alone in frame_len, or of another content size (the caller then
 * decodes it again to say why). One call for the whole block, so a caller may release the GIL around it. */
int32_t feddst_zstd_unshuffle(void *decompress_dctx, void *frame_size, void *is_error, void *dctx,
                              const uint8_t *frame, int64_t frame_len, uint8_t *scratch, int64_t count,
                              int32_t width, uint8_t *out) {
    zstd_decompress_dctx_fn decompress = (zstd_decompress_dctx_fn)decompress_dctx;
    zstd_frame_size_fn compressed_size = (zstd_frame_size_fn)frame_size;
    zstd_is_error_fn failed = (zstd_is_error_fn)is_error;
    size_t size = (size_t)count * (size_t)width;
    size_t used = compressed_size(frame, (size_t)frame_len);
    if (failed(used) || used != (size_t)frame_len) return -1;
    uint8_t *planes = width == 1 ? out : scratch;
    size_t got = decompress(dctx, planes, size, frame, (size_t)frame_len);
    if (failed(got) || got != size) return -1;
    if (width > 1) feddst_unshuffle(planes, count, width, out);
    return 0;
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
