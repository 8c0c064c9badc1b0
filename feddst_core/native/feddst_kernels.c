/* FedDST Edge native CPU kernels: direct sparse convolution, CSR linear layer, max-pooling.
 *
 * Plain C11 + OpenMP, no Python or torch headers: loaded with ctypes by feddst_core/native/__init__.py,
 * which checks every shape, dtype and contiguity before calling in. All tensors are float32,
 * C-contiguous, NCHW; index arrays are int32 (int16 where a signature says so). Compiled by the package install (setup.py); when the
 * library is absent, callers fall back to torch kernels.
 *
 * OpenMP: the library links libgomp.so.1, the same soname as the OpenMP runtime torch ships and has
 * already loaded, so these parallel regions run on torch's own thread pool (no second pool, no
 * oversubscription). Every entry point takes the thread count to use (torch.get_num_threads()).
 *
 * Sparse convolution ("valid", stride 1, square kernel K): the weight is CSR over the 2-D matrix
 * (O, C*K*K); entry j of row o has column c*K*K + kh*K + kw. The trick that makes it fast: with the
 * output laid out at the *input's* row stride W (output (y, x) at y*W + x, columns x >= Wo unused),
 * every active weight (o, c, kh, kw) is ONE contiguous axpy over the plane,
 *     out_o[i] += w * in_c[i + kh*W + kw],    i in [0, (Ho-1)*W + Wo),
 * so the inner loop is long, unit-stride and vectorised, and a block of 32 outputs stays in registers
 * while all of row o's weights stream past it. FLOPs scale with the number of active weights.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#define omp_get_thread_num_or_0() omp_get_thread_num()
#define omp_get_num_threads_or_1() omp_get_num_threads()
#else
#define omp_get_thread_num_or_0() 0
#define omp_get_num_threads_or_1() 1
#endif

#define VL 32 /* outputs kept in registers per block: 4 x 8 floats */

typedef float v8 __attribute__((vector_size(32)));

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
/* Built once for every x86-64 CPU; the loader picks the AVX2/FMA or AVX-512 clone at run time. */
#define FEDDST_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FEDDST_CLONES
#endif

/* Helpers are always inlined: each then runs as the clone (AVX-512, AVX2/FMA, baseline) that calls it. A helper
 * gcc chose not to inline is compiled once, for the baseline (SSE2, no FMA), whatever CPU runs it: so was
 * plane_dots_add until ABI 7 (the convolutions' weight gradient, 4-wide without FMA on AVX-512 machines: 2x slower
 * than inlined; inlining it was slower only together with Python's -fwrapv, which build_flags.py now undoes). */
#define FEDDST_INLINE static inline __attribute__((always_inline))

FEDDST_INLINE v8 load8(const float *p) {
    v8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

FEDDST_INLINE void store8(float *p, v8 v) { memcpy(p, &v, sizeof v); }

/* All eight lanes = w. A macro, not a helper returning a vector: such a helper is compiled for the baseline target
 * (its vector return lowered to SSE halves), and inlined into an AVX clone it still built every splat from 7
 * vinsertps + vinsertf128 instead of one vbroadcastss. x - (+0) = x for every float (-0 and NaN included). */
#define splat8(w) ((float)(w) - (v8){0})

int feddst_abi_version(void) { return 9; }

/* Every entry point returns FEDDST_OK, or FEDDST_ENOMEM when a scratch allocation failed (outputs are
 * then incomplete: the Python wrapper raises MemoryError and drops them). */
#define FEDDST_OK 0
#define FEDDST_ENOMEM 1

/* A thread's scratch buffer, allocated inside a parallel region: n elements of `size` bytes, zeroed if `zeroed`.
 * NULL when n == 0 (nothing asked: not a failure) or when the allocation failed, which also sets *failed (shared
 * by the team; the entry point then returns FEDDST_ENOMEM). free(NULL) is fine either way. Inlined like the other
 * helpers (kept out of line, it changed how gcc contracted the SDDMM next to it: no longer bit-equal to csr_sddmm). */
FEDDST_INLINE void *thread_scratch(size_t n, size_t size, int zeroed, int *failed) {
    if (n == 0) return NULL;
    void *p = zeroed ? calloc(n, size) : malloc(n * size);
    if (!p) {
        #pragma omp atomic write
        *failed = 1;
    }
    return p;
}

/* acc[0:VL] = start + sum_{j0 <= j < j1} w[j] * src[idx[j] * ld + 0:VL]; idx int32 or int16 (the other NULL),
 * w = val[j], or val[perm[j]] when perm is given. Inlined with constant arguments at each call site, so
 * the NULL tests fold away. The VL outputs stay in four vector registers while the weights stream past. */
FEDDST_INLINE void gather_axpy_block(float *acc, float start, const float *src, long ld, const int32_t *idx32,
                                     const int16_t *idx16, const float *val, const int32_t *perm, int j0, int j1) {
    v8 a0 = splat8(start), a1 = a0, a2 = a0, a3 = a0;
    for (int j = j0; j < j1; j++) {
        const long r = idx32 ? idx32[j] : idx16[j];
        const float *p = src + r * ld;
        const v8 s = splat8(perm ? val[perm[j]] : val[j]);
        a0 += s * load8(p);
        a1 += s * load8(p + 8);
        a2 += s * load8(p + 16);
        a3 += s * load8(p + 24);
    }
    store8(acc, a0);
    store8(acc + 8, a1);
    store8(acc + 16, a2);
    store8(acc + 24, a3);
}

/* One output plane of the sparse convolution at the input's row stride: tmp[i] = start + sum_{j0 <= j < j1}
 * val[j] * xb[off[j] + i] for i < Lv, in blocks of VL; the last block ends at Lv (overlapping the one before it
 * and recomputing the same values), so there is no scalar tail and no read beyond the input plane. A plane
 * shorter than one block is computed element by element (the same sums). */
FEDDST_INLINE void conv_plane(const float *xb, const int32_t *off, const float *val, int j0, int j1, float start,
                              int Lv, float *tmp) {
    int i0 = 0;
    for (; i0 + VL <= Lv; i0 += VL) gather_axpy_block(tmp + i0, start, xb + i0, 1, off, NULL, val, NULL, j0, j1);
    if (i0 < Lv && Lv >= VL) {
        gather_axpy_block(tmp + Lv - VL, start, xb + Lv - VL, 1, off, NULL, val, NULL, j0, j1);
        return;
    }
    for (int i = i0; i < Lv; i++) {
        float a = start;
        for (int j = j0; j < j1; j++) a += val[j] * xb[off[j] + i];
        tmp[i] = a;
    }
}

/* y (B, O, Ho, Wo) = bias + sparse W (*) x (B, C, H, W).  off: scratch (nnz,) int32. */
FEDDST_CLONES
int feddst_sconv_forward(const float *x, int B, int C, int H, int W, const int32_t *crow, const int32_t *col,
                          const float *val, const float *bias, int O, int K, float *y, int nthreads) {
    const int Ho = H - K + 1, Wo = W - K + 1, KK = K * K, plane = H * W;
    const int Lv = (Ho - 1) * W + Wo; /* last valid padded-layout output + 1 */
    const int nnz = crow[O];
    int32_t *off = malloc(sizeof(int32_t) * (size_t)(nnz > 0 ? nnz : 1));
    if (!off) return FEDDST_ENOMEM;
    for (int j = 0; j < nnz; j++) {
        int c = col[j] / KK, r = col[j] % KK;
        off[j] = c * plane + (r / K) * W + (r % K);
    }
    int failed = 0;
    #pragma omp parallel num_threads(nthreads)
    {
        float *tmp = thread_scratch((size_t)(Lv + VL), sizeof(float), 0, &failed);
        #pragma omp for schedule(static)
        for (long task = 0; task < (long)B * O; task++) {
            if (!tmp) continue;
            const int b = (int)(task / O), o = (int)(task % O);
            const float *xb = x + (size_t)b * C * plane;
            const int j0 = crow[o], n = crow[o + 1] - j0;
            conv_plane(xb, off, val, j0, j0 + n, bias[o], Lv, tmp);
            float *yo = y + ((size_t)b * O + o) * Ho * Wo;
            for (int r = 0; r < Ho; r++) memcpy(yo + r * Wo, tmp + r * W, sizeof(float) * Wo);
        }
        free(tmp);
    }
    free(off);
    return failed ? FEDDST_ENOMEM : FEDDST_OK;
}

/* gx (B, C, H, W) = W^T (*) gy (B, O, Ho, Wo), the full correlation, from W^T's CSR:
 * t_crow (C*K*K + 1,), t_row (nnz,) = o of each entry, t_val (nnz,) values in W^T order. */
FEDDST_CLONES
int feddst_sconv_backward_input(const float *gy, int B, int O, const int32_t *t_crow, const int32_t *t_row,
                                 const float *t_val, int C, int H, int W, int K, float *gx, int nthreads) {
    const int Ho = H - K + 1, Wo = W - K + 1, KK = K * K, plane = H * W;
    const int P = (K - 1) * W + (K - 1); /* zeros before each padded gy plane: largest shift */
    const int stride = P + plane + VL;    /* one padded gy plane: P zeros, Ho rows of W, zeros */
    const int nnz = t_crow[C * KK];
    int32_t *off = malloc(sizeof(int32_t) * (size_t)(nnz > 0 ? nnz : 1));
    if (!off) return FEDDST_ENOMEM;
    for (int c = 0; c < C; c++)
        for (int r = 0; r < KK; r++)
            for (int e = t_crow[c * KK + r]; e < t_crow[c * KK + r + 1]; e++)
                off[e] = t_row[e] * stride + P - ((r / K) * W + (r % K));
    int failed = 0;
    #pragma omp parallel num_threads(nthreads)
    {
        float *pad = thread_scratch((size_t)O * stride, sizeof(float), 1, &failed); /* zeros off the rows stay 0 */
        float tmp[VL];
        #pragma omp for schedule(static)
        for (int b = 0; b < B; b++) {
            if (!pad) continue;
            const float *gyb = gy + (size_t)b * O * Ho * Wo;
            for (int o = 0; o < O; o++)
                for (int r = 0; r < Ho; r++)
                    memcpy(pad + (size_t)o * stride + P + r * W, gyb + ((size_t)o * Ho + r) * Wo, sizeof(float) * Wo);
            for (int c = 0; c < C; c++) {
                const int e0 = t_crow[c * KK], n = t_crow[(c + 1) * KK] - e0;
                float *gxc = gx + ((size_t)b * C + c) * plane;
                for (int i0 = 0; i0 < plane; i0 += VL) {
                    /* reads pad[o*stride + P - shift + i0 + 0:VL]: inside the plane's padding */
                    gather_axpy_block(tmp, 0.0f, pad + i0, 1, off, NULL, t_val, NULL, e0, e0 + n);
                    const int m = plane - i0 < VL ? plane - i0 : VL;
                    memcpy(gxc + i0, tmp, sizeof(float) * m);
                }
            }
        }
        free(pad);
    }
    free(off);
    return failed ? FEDDST_ENOMEM : FEDDST_OK;
}

/* v[0] + ... + v[n-1] as 8 lane sums (element i in lane i mod 8), the lanes added in order, then the tail: a
 * convolution's bias gradient over a gy plane at the input's row stride (its columns >= Wo hold zeros), a linear
 * layer's over a row of dy^T; the same order in every kernel, so they agree bit for bit (one chain of 8-wide adds,
 * not n dependent scalar adds). */
FEDDST_INLINE float plane_sum(const float *v, int n) {
    v8 a = splat8(0.0f);
    int i = 0;
    for (; i + 8 <= n; i += 8) a += load8(v + i);
    float s = 0.0f;
    for (int q = 0; q < 8; q++) s += a[q];
    for (; i < n; i++) s += v[i];
    return s;
}

/* Final sum of one weight-gradient dot: one more 8-wide step if 8 elements remain, the two accumulators, their
 * 8 lanes in order, then the scalar tail (< 8 elements). */
FEDDST_INLINE float dot_finish(v8 a0, v8 a1, const float *row, const float *p, int i, int Lv) {
    if (i + 8 <= Lv) { /* one more 8-wide step before the scalar tail */
        a0 += load8(row + i) * load8(p + i);
        i += 8;
    }
    a0 += a1;
    float d = 0.0f;
    for (int q = 0; q < 8; q++) d += a0[q];
    for (; i < Lv; i++) d += row[i] * p[i];
    return d;
}

/* pg[j] += row[0:Lv] . xb[off[j] + 0:Lv] for j0 <= j < j1: the convolution's weight gradient for one (b, o)
 * plane (row: gy at the input's row stride W, zero in columns >= Wo). Four weights at a time share each load
 * of row; every dot keeps its own two accumulators, so each sum is the same as computed one at a time. */
FEDDST_INLINE void plane_dots_add(const float *row, int Lv, const float *xb, const int32_t *off, int j0, int j1,
                                  float *pg) {
    int j = j0;
    for (; j + 4 <= j1; j += 4) {
        const float *p0 = xb + off[j], *p1 = xb + off[j + 1], *p2 = xb + off[j + 2], *p3 = xb + off[j + 3];
        v8 a0 = splat8(0.0f), a1 = a0, b0 = a0, b1 = a0, c0 = a0, c1 = a0, d0 = a0, d1 = a0;
        int i = 0;
        for (; i + 16 <= Lv; i += 16) {
            const v8 r0 = load8(row + i), r1 = load8(row + i + 8);
            a0 += r0 * load8(p0 + i);
            a1 += r1 * load8(p0 + i + 8);
            b0 += r0 * load8(p1 + i);
            b1 += r1 * load8(p1 + i + 8);
            c0 += r0 * load8(p2 + i);
            c1 += r1 * load8(p2 + i + 8);
            d0 += r0 * load8(p3 + i);
            d1 += r1 * load8(p3 + i + 8);
        }
        pg[j] += dot_finish(a0, a1, row, p0, i, Lv);
        pg[j + 1] += dot_finish(b0, b1, row, p1, i, Lv);
        pg[j + 2] += dot_finish(c0, c1, row, p2, i, Lv);
        pg[j + 3] += dot_finish(d0, d1, row, p3, i, Lv);
    }
    for (; j < j1; j++) {
        const float *p = xb + off[j];
        v8 a0 = splat8(0.0f), a1 = a0;
        int i = 0;
        for (; i + 16 <= Lv; i += 16) {
            a0 += load8(row + i) * load8(p + i);
            a1 += load8(row + i + 8) * load8(p + i + 8);
        }
        pg[j] += dot_finish(a0, a1, row, p, i, Lv);
    }
}

/* gval[j] (nnz) and gbias[o] (O, when given) = the sum over threads of their rows of partial
   (nthreads, nnz + O), in thread order: the weight and bias gradients each thread accumulated apart. */
static void reduce_thread_partials(const float *partial, int nthreads, int nnz, int O, float *gval,
                                   float *gbias) {
    for (int j = 0; j < nnz; j++) {
        float s = 0.0f;
        for (int t = 0; t < nthreads; t++) s += partial[(size_t)t * (nnz + O) + j];
        gval[j] = s;
    }
    if (gbias)
        for (int o = 0; o < O; o++) {
            float s = 0.0f;
            for (int t = 0; t < nthreads; t++) s += partial[(size_t)t * (nnz + O) + nnz + o];
            gbias[o] = s;
        }
}

/* gval[j] (nnz) and gbias[o] (O, when given) from per-image partial sums partial (B, nnz + O), added exactly as
 * feddst_sconv_backward_weight's nthreads threads add them: each of nthreads runs of images (the static split
 * b0 = B * t / nthreads) summed image by image from 0, then the runs' sums in run order from 0. So a kernel that
 * hands its images to threads dynamically (whichever thread is free takes the next image) still gives the bits
 * of the static split, whatever thread ran which image. */
static void reduce_image_partials(const float *partial, int B, int nthreads, int nnz, int O, float *gval,
                                  float *gbias) {
    const int width = nnz + O, n = gbias ? width : nnz;
    for (int j = 0; j < n; j++) {
        float total = 0.0f;
        for (int t = 0; t < nthreads; t++) {
            const int b0 = (int)((long)B * t / nthreads), b1 = (int)((long)B * (t + 1) / nthreads);
            float run = 0.0f;
            for (int b = b0; b < b1; b++) run += partial[(size_t)b * width + j];
            total += run;
        }
        if (j < nnz)
            gval[j] = total;
        else
            gbias[j - nnz] = total;
    }
}

/* gval (nnz,) = dL/dW at the active positions; gbias (O,) = sum of gy (skipped if NULL).
 * Deterministic for a given nthreads: per-thread partial sums over a static batch split, reduced in order. */
FEDDST_CLONES
int feddst_sconv_backward_weight(const float *x, const float *gy, int B, int C, int H, int W, int O, int K,
                                  const int32_t *crow, const int32_t *col, float *gval, float *gbias,
                                  int nthreads) {
    const int Ho = H - K + 1, Wo = W - K + 1, KK = K * K, plane = H * W;
    const int Lv = (Ho - 1) * W + Wo;
    const int nnz = crow[O];
    if (nthreads < 1) nthreads = 1;
    int32_t *off = malloc(sizeof(int32_t) * (size_t)(nnz > 0 ? nnz : 1));
    float *partial = calloc((size_t)nthreads * (nnz + O), sizeof(float));
    if (!off || !partial) {
        free(off);
        free(partial);
        return FEDDST_ENOMEM;
    }
    for (int j = 0; j < nnz; j++) {
        int c = col[j] / KK, r = col[j] % KK;
        off[j] = c * plane + (r / K) * W + (r % K);
    }
    int failed = 0;
    #pragma omp parallel num_threads(nthreads)
    {
        float *row = thread_scratch((size_t)Lv + VL, sizeof(float), 1, &failed); /* gy plane at stride W, 0-padded */
        #pragma omp for schedule(static)
        for (int t = 0; t < nthreads; t++) {
            if (!row) continue;
            float *pg = partial + (size_t)t * (nnz + O), *pb = pg + nnz;
            const int b0 = (int)((long)B * t / nthreads), b1 = (int)((long)B * (t + 1) / nthreads);
            for (int b = b0; b < b1; b++) {
                const float *xb = x + (size_t)b * C * plane;
                for (int o = 0; o < O; o++) {
                    const float *gyo = gy + ((size_t)b * O + o) * Ho * Wo;
                    for (int r = 0; r < Ho; r++) /* columns >= Wo stay 0 */
                        memcpy(row + r * W, gyo + r * Wo, sizeof(float) * Wo);
                    pb[o] += plane_sum(row, Lv);
                    plane_dots_add(row, Lv, xb, off, crow[o], crow[o + 1], pg);
                }
            }
        }
        free(row);
    }
    reduce_thread_partials(partial, nthreads, nnz, O, gval, gbias);
    free(partial);
    free(off);
    return failed ? FEDDST_ENOMEM : FEDDST_OK;
}

/* ---- sparse linear layer: W (O, I) in CSR, activations transposed (features, B) ---------------------- */

/* Row r of out (R, B) = [bias +] M @ src (see feddst_csr_matmul); gathered: a per-thread buffer of the longest
 * row's length when perm is given (each row's values are first gathered into it: the independent random reads
 * run ahead instead of inside the multiply-add chain). */
FEDDST_INLINE void csr_matmul_row(int r, const int32_t *crow, const int32_t *idx32, const int16_t *idx16,
                                  const float *val, const int32_t *perm, const float *bias, const float *src, int B,
                                  float *out, float *gathered) {
    const int j0 = crow[r], n = crow[r + 1] - j0;
    const int32_t *c32 = idx32 ? idx32 + j0 : NULL;
    const int16_t *c16 = idx16 ? idx16 + j0 : NULL;
    const float *rv = val + (perm ? 0 : j0);
    if (perm) {
        for (int j = 0; j < n; j++) gathered[j] = val[perm[j0 + j]];
        rv = gathered;
    }
    const float start = bias ? bias[r] : 0.0f;
    float *o = out + (long)r * B;
    int b0 = 0;
    for (; b0 + VL <= B; b0 += VL)
        gather_axpy_block(o + b0, start, src + b0, B, c32, c16, rv, NULL, 0, n);
    for (; b0 + 8 <= B; b0 += 8) { /* batch tail of 8-31 columns (e.g. a round's last batch): one vector */
        v8 acc = splat8(start);
        for (int j = 0; j < n; j++)
            acc += splat8(rv[j]) * load8(src + (long)(c32 ? c32[j] : c16[j]) * B + b0);
        store8(o + b0, acc);
    }
    for (int b = b0; b < B; b++) { /* batch tail */
        float a = start;
        for (int j = 0; j < n; j++) a += rv[j] * src[(long)(c32 ? c32[j] : c16[j]) * B + b];
        o[b] = a;
    }
}

static int csr_longest_row(const int32_t *crow, int R) {
    int longest = 1;
    for (int r = 0; r < R; r++)
        if (crow[r + 1] - crow[r] > longest) longest = crow[r + 1] - crow[r];
    return longest;
}

/* out (R, B) = [bias +] M @ src, M a CSR (R, Cn) given by crow, column idx (int32 or int16) and values
 * (val[j], or val[perm[j]] when perm is given); src (Cn, B) row-major. Used for y^T = b + W x^T (M = W)
 * and dx^T = W^T dy^T (M = W^T: its CSR indices plus the permutation into W's value order). */
FEDDST_CLONES
int feddst_csr_matmul(const int32_t *crow, const int32_t *idx32, const int16_t *idx16, const float *val,
                       const int32_t *perm, const float *bias, int R, const float *src, int B, float *out,
                       int nthreads) {
    const int longest = perm ? csr_longest_row(crow, R) : 1;
    int failed = 0;
    #pragma omp parallel num_threads(nthreads)
    {
        float *gathered = thread_scratch(perm ? (size_t)longest : 0, sizeof(float), 0, &failed);
        const int missing = perm && !gathered;
        #pragma omp for schedule(dynamic, 16)
        for (int r = 0; r < R; r++)
            if (!missing) csr_matmul_row(r, crow, idx32, idx16, val, perm, bias, src, B, out, gathered);
        free(gathered);
    }
    return failed ? FEDDST_ENOMEM : FEDDST_OK;
}

/* r[k] = sum of the 8 lanes of a[k], k < 8 (a transposition tree of shuffles instead of 8 scalar sums). */
FEDDST_INLINE v8 hsum8x8(const v8 *a) {
    typedef int32_t m8 __attribute__((vector_size(32)));
    const m8 s1a = {0, 8, 1, 9, 4, 12, 5, 13}, s1b = {2, 10, 3, 11, 6, 14, 7, 15};
    const m8 s2a = {0, 1, 8, 9, 4, 5, 12, 13}, s2b = {2, 3, 10, 11, 6, 7, 14, 15};
    const m8 s3a = {0, 1, 2, 3, 8, 9, 10, 11}, s3b = {4, 5, 6, 7, 12, 13, 14, 15};
    v8 u[4], w[2];
    for (int k = 0; k < 4; k++)
        u[k] = __builtin_shuffle(a[2 * k], a[2 * k + 1], s1a) + __builtin_shuffle(a[2 * k], a[2 * k + 1], s1b);
    for (int k = 0; k < 2; k++)
        w[k] = __builtin_shuffle(u[2 * k], u[2 * k + 1], s2a) + __builtin_shuffle(u[2 * k], u[2 * k + 1], s2b);
    return __builtin_shuffle(w[0], w[1], s3a) + __builtin_shuffle(w[0], w[1], s3b);
}

/* The SGD step feddst_sgd_step applies (no mask: CSR values are all active), fused into the SDDMM so that the
 * weight gradient is never written: buf (nnz,) the momentum (unused when momentum == 0), anchor (nnz,) FedProx's
 * (NULL: mu unused). */
typedef struct {
    float *buf;
    const float *anchor;
    float lr, momentum, weight_decay, mu;
    int first;
} sgd_params;

/* p[j] -= lr * (momentum buffer of) the gradient g of p[j]: feddst_sgd_step's formula for one value. */
FEDDST_INLINE void sgd_value(float *p, long j, float g, const sgd_params *sgd) {
    float d = g;
    if (sgd->anchor) d = d + sgd->mu * (p[j] - sgd->anchor[j]);
    if (sgd->weight_decay != 0.0f) d = d + sgd->weight_decay * p[j];
    if (sgd->momentum != 0.0f) {
        const float b = sgd->first ? d : d + sgd->momentum * sgd->buf[j];
        sgd->buf[j] = b;
        p[j] = p[j] - sgd->lr * b;
    } else {
        p[j] = p[j] - sgd->lr * d;
    }
}

/* The same for the 8 values p[j:j+8] with their gradients g (one vector per term). */
FEDDST_INLINE void sgd_values8(float *p, long j, v8 g, const sgd_params *sgd) {
    const v8 pv = load8(p + j);
    v8 d = g;
    if (sgd->anchor) d = d + sgd->mu * (pv - load8(sgd->anchor + j));
    if (sgd->weight_decay != 0.0f) d = d + sgd->weight_decay * pv;
    if (sgd->momentum != 0.0f) {
        const v8 b = sgd->first ? d : d + sgd->momentum * load8(sgd->buf + j);
        store8(sgd->buf + j, b);
        store8(p + j, pv - sgd->lr * b);
    } else {
        store8(p + j, pv - sgd->lr * d);
    }
}

/* The SDDMM sums of m <= 8 active weights of one row: sums[q] = d . p[q] (d: the row of dy^T, p[q]: the x^T row of
 * weight q), each as 8-wide partial sums over the batch, their lanes added by hsum8x8's tree, then the batch tail
 * (B not a multiple of 8) in order; lanes q >= m are 0. Each lane of the tree is one weight's own sum, so a weight's
 * gradient is the same bits whatever group of a row it falls in: kernels that cut a row into groups at different
 * places (feddst_csr_sddmm from the row start, feddst_csr_linear_backward_sgd per column tile) agree bit for bit.
 * Inlined with m = 8 at the full groups (the loops over q then unroll). */
FEDDST_INLINE v8 group_dots(const float *d, const float *const *p, int m, int B) {
    v8 acc[8];
    for (int q = 0; q < 8; q++) acc[q] = splat8(0.0f);
    const int B8 = B & ~7;
    for (int b = 0; b < B8; b += 8) {
        const v8 dv = load8(d + b);
        for (int q = 0; q < m; q++) acc[q] += dv * load8(p[q] + b);
    }
    v8 sums = hsum8x8(acc);
    for (int b = B8; b < B; b++)
        for (int q = 0; q < m; q++) sums[q] += d[b] * p[q][b];
    return sums;
}

/* Row r of the SDDMM (see feddst_csr_sddmm): gval[j] = the gradient, or (sgd given) the SGD step of val[j] with
 * it (gval unused). Eight weights at a time (group_dots), then the last < 8 as one group. */
FEDDST_INLINE void sddmm_row(int r, const int32_t *crow, const int32_t *col, const float *dyt, const float *xt, int B,
                             float *gval, float *gbias, float *val, const sgd_params *sgd_given) {
    /* a copy: the stores into val cannot then alias the parameters (kept in registers across the row) */
    const sgd_params sgd_copy = sgd_given ? *sgd_given : (sgd_params){0};
    const sgd_params *sgd = sgd_given ? &sgd_copy : NULL;
    const float *d = dyt + (long)r * B;
    if (gbias) gbias[r] = plane_sum(d, B);
    const int j1 = crow[r + 1];
    int j = crow[r];
    const float *p[8];
    for (; j + 8 <= j1; j += 8) {
        for (int q = 0; q < 8; q++) p[q] = xt + (long)col[j + q] * B;
        const v8 sums = group_dots(d, p, 8, B);
        if (sgd)
            sgd_values8(val, j, sums, sgd);
        else
            store8(gval + j, sums);
    }
    if (j < j1) {
        const int m = j1 - j;
        for (int q = 0; q < m; q++) p[q] = xt + (long)col[j + q] * B;
        const v8 sums = group_dots(d, p, m, B);
        for (int q = 0; q < m; q++)
            if (sgd)
                sgd_value(val, j + q, sums[q], sgd);
            else
                gval[j + q] = sums[q];
    }
}

/* SDDMM: gval[j] = dy^T[r] . x^T[col[j]] for every active (r, col[j]) of W's CSR; dy^T (R, B), x^T (Cn, B);
 * gbias[r] = sum_b dy^T[r, b] (skipped if NULL). Eight active weights at a time share each dy^T load. */
FEDDST_CLONES
int feddst_csr_sddmm(const int32_t *crow, const int32_t *col, int R, const float *dyt, const float *xt, int B,
                      float *gval, float *gbias, int nthreads) {
    #pragma omp parallel for num_threads(nthreads) schedule(dynamic, 16)
    for (int r = 0; r < R; r++) sddmm_row(r, crow, col, dyt, xt, B, gval, gbias, NULL, NULL);
    return FEDDST_OK;
}

/* The whole backward of a CSR linear layer W (R, Cn) in ONE parallel region: gx^T (Cn, B) = W^T dy^T (skipped
 * if NULL; W^T's CSR t_crow, t_row (int16 or int32, the other NULL), perm into W's values val) and the SDDMM
 * gval (nnz,), gbias (R,) (skipped if NULL) from dy^T (R, B) and x^T (Cn, B). Without sgd the two loops share no
 * output, so threads go from the first to the second without a barrier ("nowait"); with sgd the SDDMM updates val
 * in place (gval unused), so it waits until every input-gradient row has read val. Each sum is computed exactly as
 * by feddst_csr_matmul and feddst_csr_sddmm (bit for bit the same outputs).
 * This is one thread's part, called inside the entry point's parallel region (orphaned worksharing loops): a
 * parallel region inside an inlined helper is outlined from the helper, i.e. compiled once for the baseline
 * target, not for the entry point's AVX clone. */
FEDDST_INLINE void csr_linear_backward_team(const int32_t *crow, const int32_t *col, const int32_t *t_crow,
                                            const int32_t *t_row32, const int16_t *t_row16, const int32_t *perm,
                                            float *val, int R, int Cn, const float *dyt, const float *xt, int B,
                                            float *gxt, float *gval, float *gbias, const sgd_params *sgd,
                                            int longest, int *failed) {
    float *gathered = thread_scratch(gxt ? (size_t)longest : 0, sizeof(float), 0, failed);
    const int missing = gxt && !gathered;
    if (gxt) {
        #pragma omp for schedule(dynamic, 16) nowait
        for (int r = 0; r < Cn; r++)
            if (!missing) csr_matmul_row(r, t_crow, t_row32, t_row16, val, perm, NULL, dyt, B, gxt, gathered);
    }
    if (sgd && gxt) {
        #pragma omp barrier
    }
    #pragma omp for schedule(dynamic, 16) nowait
    for (int r = 0; r < R; r++) sddmm_row(r, crow, col, dyt, xt, B, gval, gbias, val, sgd);
    free(gathered);
}

FEDDST_CLONES
int feddst_csr_linear_backward(const int32_t *crow, const int32_t *col, const int32_t *t_crow, const int32_t *t_row32,
                               const int16_t *t_row16, const int32_t *perm, const float *val, int R, int Cn,
                               const float *dyt, const float *xt, int B, float *gxt, float *gval, float *gbias,
                               int nthreads) {
    const int longest = gxt ? csr_longest_row(t_crow, Cn) : 1;
    int failed = 0;
    #pragma omp parallel num_threads(nthreads)
    csr_linear_backward_team(crow, col, t_crow, t_row32, t_row16, perm, (float *)val, R, Cn, dyt, xt, B, gxt, gval,
                             gbias, NULL, longest, &failed);
    return failed ? FEDDST_ENOMEM : FEDDST_OK;
}

/* One group of m <= 8 entries j..j+m-1 of row d (= dy^T[r]) in the single-pass backward: the SDDMM gradient of
 * each value (summed as group_dots: the same bits as feddst_csr_sddmm), its term of the input gradient
 * gx[col[j]] += val[j] * dy^T[r] (the value before its step; gx NULL: none), then the SGD step of the values (as
 * sddmm_row with sgd). col int32 or int16 (the other NULL). Inlined with m = 8 for full groups (loops unrolled). */
FEDDST_INLINE void sddmm_scatter_group(const float *d, int j, int m, const int32_t *col32, const int16_t *col16,
                                       const float *xt, int B, float *gx, float *val, const sgd_params *sgd) {
    const int B8 = B & ~7;
    long c[8];
    v8 w = splat8(0.0f), acc[8];
    for (int q = 0; q < 8; q++) acc[q] = splat8(0.0f);
    if (m == 8)
        w = load8(val + j); /* the values before the step */
    for (int q = 0; q < m; q++) {
        c[q] = col32 ? col32[j + q] : col16[j + q];
        if (m < 8) w[q] = val[j + q];
    }
    for (int b = 0; b < B8; b += 8) {
        const v8 dv = load8(d + b);
        for (int q = 0; q < m; q++) acc[q] += dv * load8(xt + c[q] * B + b);
        if (gx)
            for (int q = 0; q < m; q++) {
                float *g = gx + c[q] * B + b;
                store8(g, load8(g) + splat8(w[q]) * dv);
            }
    }
    v8 sums = hsum8x8(acc);
    for (int b = B8; b < B; b++)
        for (int q = 0; q < m; q++) {
            sums[q] += d[b] * xt[c[q] * B + b];
            if (gx) gx[c[q] * B + b] += w[q] * d[b];
        }
    if (m == 8)
        sgd_values8(val, j, sums, sgd);
    else
        for (int q = 0; q < m; q++) sgd_value(val, j + q, sums[q], sgd);
}

/* Entries j0 <= j < j1 of row d in the single-pass backward (feddst_csr_linear_backward_sgd): groups of 8 from j0,
 * the rest as one smaller group (sddmm_scatter_group). */
FEDDST_INLINE void sddmm_scatter_segment(const float *d, int j0, int j1, const int32_t *col32, const int16_t *col16,
                                         const float *xt, int B, float *gx, float *val, const sgd_params *sgd_given) {
    const sgd_params sgd_copy = *sgd_given; /* a copy: the stores into val cannot alias the parameters */
    int j = j0;
    for (; j + 8 <= j1; j += 8) sddmm_scatter_group(d, j, 8, col32, col16, xt, B, gx, val, &sgd_copy);
    if (j < j1) sddmm_scatter_group(d, j, j1 - j, col32, col16, xt, B, gx, val, &sgd_copy);
}

/* First entry of row [j0, j1) of a CSR with column >= c (j1 if none): a binary search of the sorted columns. */
FEDDST_INLINE int first_column_at_least(const int32_t *col32, const int16_t *col16, int j0, int j1, int c) {
    while (j0 < j1) {
        const int mid = j0 + (j1 - j0) / 2;
        if ((col32 ? col32[mid] : col16[mid]) < c)
            j0 = mid + 1;
        else
            j1 = mid;
    }
    return j0;
}

/* Bytes of x^T and gx^T rows (2 * 4 * B per column) one column tile of the single-pass backward covers: while every
 * row of W passes over a tile, its x^T and gx^T rows stay in a 1 MB L2 cache (a Raspberry Pi 4's shared L2, a Zen 4
 * core's own). fc1's (5120 x 32) x^T and gx^T are 1.3 MB; 2 threads own 0.65 MB each, one tile. Measured on one
 * thread (2026-12-04, Zen 4, fc1 at density 0.1, the whole FC-heavy step): two 1 MB tiles 0.955x main's step, no
 * tiling 0.991x; on two threads no difference (one tile each). 256 KB tiles were slower than 1 MB (kernel alone). */
#ifndef LINEAR_TILE_BYTES
#define LINEAR_TILE_BYTES (1024 * 1024)
#endif

/* The backward of a CSR linear layer W (R, Cn) with the values' SGD step fused in, in ONE pass over W's CSR:
 * for every active weight, the SDDMM's gradient of its value (the same bits as feddst_csr_sddmm), its term of the
 * input gradient gx^T (Cn, B) += val[j] * dy^T[r] (skipped if gxt is NULL), then the value's SGD step, in place, as
 * feddst_sgd_step would take it with that gradient (buf the momentum, anchor FedProx's or NULL, first: the buffer
 * starts as the gradient); gbias (skipped if NULL). gx and gbias come from the values before the step. No W^T, no
 * permutation, no gathered values: each value, its column and its momentum are read once.
 * Thread t owns the columns [Cn t / team, Cn (t + 1) / team) (their gx^T rows: no per-thread copies, no reduction)
 * and walks them in tiles of LINEAR_TILE_BYTES, each tile over all rows of W in order (a cursor per row). So every
 * gx^T element is summed over the rows in row order, from 0: the same sums as feddst_csr_matmul on W^T, whatever the
 * thread count. col int32 or int16 (the other NULL: int16 halves the index bytes read when Cn < 2^15). */
FEDDST_CLONES
int feddst_csr_linear_backward_sgd(const int32_t *crow, const int32_t *col32, const int16_t *col16, float *val, int R,
                                   int Cn, const float *dyt, const float *xt, int B, float *gxt, float *gbias,
                                   float *buf, const float *anchor, float lr, float momentum, float weight_decay,
                                   float mu, int first, int nthreads) {
    const sgd_params sgd = {buf, anchor, lr, momentum, weight_decay, mu, first};
    if (nthreads < 1) nthreads = 1;
    int *cursors = malloc(sizeof(int) * (size_t)(R > 0 ? R : 1) * (size_t)nthreads);
    if (!cursors) return FEDDST_ENOMEM;
    const int tile = LINEAR_TILE_BYTES / (8 * (B > 0 ? B : 1)) > 8 ? LINEAR_TILE_BYTES / (8 * (B > 0 ? B : 1)) : 8;
    #pragma omp parallel num_threads(nthreads)
    {
        const int t = omp_get_thread_num_or_0(), team = omp_get_num_threads_or_1();
        const int c0 = (int)((long)Cn * t / team), c1 = (int)((long)Cn * (t + 1) / team);
        int *cur = cursors + (size_t)t * R;
        if (gxt) memset(gxt + (size_t)c0 * B, 0, sizeof(float) * (size_t)(c1 - c0) * (size_t)B);
        for (int r = 0; r < R; r++)
            cur[r] = c0 == 0 ? crow[r] : first_column_at_least(col32, col16, crow[r], crow[r + 1], c0);
        const int tiles = (c1 - c0 + tile - 1) / tile; /* as few as fit, of equal width (not 4096 + 1024) */
        for (int k = 0; k < tiles; k++) {
            const int e = c0 + (int)((long)(c1 - c0) * (k + 1) / tiles); /* this tile: columns < e from the cursors */
            for (int r = 0; r < R; r++) {
                const int j0 = cur[r], end = crow[r + 1];
                int j1 = j0;
                while (j1 < end && (col32 ? col32[j1] : col16[j1]) < e) j1++;
                if (j1 > j0) sddmm_scatter_segment(dyt + (long)r * B, j0, j1, col32, col16, xt, B, gxt, val, &sgd);
                cur[r] = j1;
            }
        }
        if (gbias) {
            #pragma omp for schedule(static)
            for (int r = 0; r < R; r++) gbias[r] = plane_sum(dyt + (long)r * B, B);
        }
    }
    free(cursors);
    return FEDDST_OK;
}

typedef int32_t v8i __attribute__((vector_size(32)));

typedef uint8_t v8u8 __attribute__((vector_size(8)));

/* dst[k * dst_step] = src[k * src_step] for k < n (one side is the batch-last layout's stride B), unrolled. */
FEDDST_INLINE void strided_copy(const float *restrict src, long src_step, float *restrict dst, long dst_step, int n) {
    int k = 0;
    for (; k + 4 <= n; k += 4, src += 4 * src_step, dst += 4 * dst_step) {
        const float v0 = src[0], v1 = src[src_step], v2 = src[2 * src_step], v3 = src[3 * src_step];
        dst[0] = v0;
        dst[dst_step] = v1;
        dst[2 * dst_step] = v2;
        dst[3 * dst_step] = v3;
    }
    for (; k < n; k++, src += src_step, dst += dst_step) *dst = *src;
}

/* One output row of a stride-1 max-pool: yr[q], ar[q] for q < Wo from the input rows starting at x0.
 * Blocks of 8 outputs stay in registers across the K*K window offsets; the last block overlaps the one
 * before it when Wo is not a multiple of 8 (recomputing the same outputs), so there is no scalar tail. */
#define POOL_CLIPPED 255 /* argmax sentinel: the fused ReLU zeroed this output, no gradient flows */

FEDDST_INLINE void maxpool_row_s1(const float *x0, int W, int K, int Wo, int relu, float *yr, uint8_t *ar) {
    if (Wo < 8) {
        for (int q = 0; q < Wo; q++) {
            float mv = x0[q];
            int av = 0;
            for (int kh = 0; kh < K; kh++)
                for (int kw = (kh == 0); kw < K; kw++) {
                    const float v = x0[kh * W + q + kw];
                    if (v > mv || v != v) {
                        mv = v;
                        av = kh * K + kw;
                    }
                }
            if (relu && mv <= 0.0f) { /* ReLU (NaN passes, as torch.relu) */
                mv = 0.0f;
                av = POOL_CLIPPED;
            }
            yr[q] = mv;
            ar[q] = (uint8_t)av;
        }
        return;
    }
    for (int q0 = 0; q0 < Wo; q0 += 8) {
        const int q = q0 + 8 <= Wo ? q0 : Wo - 8;
        v8 vm = load8(x0 + q);
        v8i va = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int kh = 0; kh < K; kh++)
            for (int kw = (kh == 0); kw < K; kw++) {
                const v8 v = load8(x0 + kh * W + kw + q); /* <= row r+K-1, column W-1 */
                const v8i take = (v > vm) | (v != v);
                const int32_t d = kh * K + kw;
                vm = (v8)(((v8i)v & take) | ((v8i)vm & ~take));
                va = ((v8i){d, d, d, d, d, d, d, d} & take) | (va & ~take);
            }
        if (relu) {
            const v8i clip = vm <= splat8(0.0f);
            vm = (v8)((v8i)vm & ~clip);
            va = ((v8i){POOL_CLIPPED, POOL_CLIPPED, POOL_CLIPPED, POOL_CLIPPED, POOL_CLIPPED, POOL_CLIPPED,
                        POOL_CLIPPED, POOL_CLIPPED} & clip) | (va & ~clip);
        }
        store8(yr + q, vm);
        const v8u8 bytes = __builtin_convertvector(va, v8u8);
        memcpy(ar + q, &bytes, sizeof bytes);
    }
}

/* Fused sparse convolution + stride-1 max-pool (+ ReLU): the convolution's output plane of each (b, o)
 * is computed into a per-thread scratch (padded layout, row stride W, as in feddst_sconv_forward) and
 * pooled from there while it is in cache, so the (B, O, Ho, Wo) convolution output is never written.
 * y (B, O, Hp, Wp) and arg (B, O, Hp, Wp) uint8 are exactly feddst_maxpool_forward's outputs on
 * feddst_sconv_forward's output (the same sums in the same order): Hp = Ho - Kp + 1, Wp = Wo - Kp + 1.
 * batch_last != 0 writes y batch-last instead, (O, Hp, Wp, B) (the (features, B) layout the CSR linear layer
 * reads, so a following Flatten needs no transposing copy); arg stays (B, O, Hp, Wp). */
FEDDST_CLONES
int feddst_sconv_pool_forward(const float *x, int B, int C, int H, int W, const int32_t *crow, const int32_t *col,
                               const float *val, const float *bias, int O, int K, int Kp, int relu, int batch_last,
                               float *y, uint8_t *arg, int nthreads) {
    const int Ho = H - K + 1, Wo = W - K + 1, KK = K * K, plane = H * W;
    const int Hp = Ho - Kp + 1, Wp = Wo - Kp + 1;
    const int Lv = (Ho - 1) * W + Wo;
    const int nnz = crow[O];
    int32_t *off = malloc(sizeof(int32_t) * (size_t)(nnz > 0 ? nnz : 1));
    if (!off) return FEDDST_ENOMEM;
    for (int j = 0; j < nnz; j++) {
        int c = col[j] / KK, r = col[j] % KK;
        off[j] = c * plane + (r / K) * W + (r % K);
    }
    /* Tasks are (b, o) planes, image by image (each image's planes reuse it from L1), handed out dynamically in
     * chunks (a thread that starts late no longer holds up a fixed share): NCHW, one image's Og = O planes a chunk.
     * Batch-last, the output channels are first split into G groups (about 4 per thread) and a chunk is 16 images
     * of one group: a chunk then writes whole 64-byte lines of each (o, r, q) row (16 floats of the batch), so no
     * two threads write one line (threads that wrote the same row's batch halves at once made two cores fight over
     * neighbouring cache lines: 2 threads ran no faster than one). */
    const int G = batch_last ? (4 * nthreads < O ? 4 * (nthreads > 1 ? nthreads : 1) : O) : 1, Og = (O + G - 1) / G;
    const int chunk = batch_last ? 16 * Og : Og;
    int failed = 0;
    #pragma omp parallel num_threads(nthreads)
    {
        float *tmp = thread_scratch((size_t)(Lv + VL + Wp), sizeof(float), 0, &failed); /* conv plane, pooled row */
        #pragma omp for schedule(dynamic, chunk)
        for (long task = 0; task < (long)G * B * Og; task++) {
            const long in_group = task % ((long)B * Og);
            const int b = (int)(in_group / Og), o = (int)(task / ((long)B * Og)) * Og + (int)(in_group % Og);
            if (!tmp || o >= O) continue;
            const float *xb = x + (size_t)b * C * plane;
            const int j0 = crow[o], n = crow[o + 1] - j0;
            conv_plane(xb, off, val, j0, j0 + n, bias[o], Lv, tmp);
            const size_t out0 = ((size_t)b * O + o) * Hp * Wp;
            float *pooled = tmp + Lv + VL;
            for (int r = 0; r < Hp; r++) { /* reads tmp rows r..r+Kp-1, columns < Wo: all computed */
                float *yr = batch_last ? pooled : y + out0 + (size_t)r * Wp;
                maxpool_row_s1(tmp + (size_t)r * W, W, Kp, Wp, relu, yr, arg + out0 + (size_t)r * Wp);
                if (batch_last)
                    strided_copy(pooled, 1, y + (((size_t)o * Hp + r) * Wp) * B + b, B, Wp);
            }
        }
        free(tmp);
    }
    free(off);
    return failed ? FEDDST_ENOMEM : FEDDST_OK;
}

/* Max-pooling over N planes (H, W) with a K x K window and stride S, no padding:
 * y (N, Ho, Wo), arg (N, Ho, Wo) uint8 = kh*K + kw of the window's maximum (the first in row-major
 * window order; NaN wins, the last NaN as in torch). Ho = (H-K)/S + 1. K <= 15.
 * relu != 0 fuses a following ReLU: outputs <= 0 become 0 with arg = POOL_CLIPPED (no gradient).
 * Stride 1 (the paper CNNs' pools) keeps blocks of 8 outputs in registers. */
FEDDST_CLONES
int feddst_maxpool_forward(const float *x, long N, int H, int W, int K, int S, int relu, float *y, uint8_t *arg,
                            int nthreads) {
    const int Ho = (H - K) / S + 1, Wo = (W - K) / S + 1;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
        for (long n = 0; n < N; n++) {
            const float *xp = x + n * H * W;
            if (S == 1) {
                for (int r = 0; r < Ho; r++)
                    maxpool_row_s1(xp + (long)r * W, W, K, Wo, relu, y + (n * Ho + r) * Wo,
                                   arg + (n * Ho + r) * Wo);
                continue;
            }
            for (int r = 0; r < Ho; r++) { /* general stride: one output row at a time */
                const float *x0 = xp + (long)r * S * W;
                for (int q = 0; q < Wo; q++) {
                    float mv = x0[q * S];
                    int32_t av = 0;
                    for (int kh = 0; kh < K; kh++)
                        for (int kw = (kh == 0); kw < K; kw++) {
                            const float v = x0[kh * W + q * S + kw];
                            if (v > mv || v != v) {
                                mv = v;
                                av = kh * K + kw;
                            }
                        }
                    if (relu && mv <= 0.0f) {
                        mv = 0.0f;
                        av = POOL_CLIPPED;
                    }
                    y[(n * Ho + r) * Wo + q] = mv;
                    arg[(n * Ho + r) * Wo + q] = (uint8_t)av;
                }
            }
        }
    return FEDDST_OK;
}

/* One plane of a stride-1 max-pool's backward: gx[i] for i < Hi * ld (rows of the pool's input, Hi x Wi, at row
 * stride ld >= Wi; columns >= Wi come out 0) = the sum of the pooled gradients whose window's maximum is at i. The
 * pooled gradient's element (r, q) is gy[(r*Wo + q) * gy_step] (1: one contiguous plane; B: a batch-last tensor).
 * A scatter, window by window from the last: the windows adding into one input element then come in increasing
 * window offset d = (kh, kw), so each element is summed in the order of the gather over offsets it replaces
 * (gx[i] = sum over d in (kh, kw) order of gy[i - d] where arg == d; up to ABI 9): the same bits, without the
 * K*K passes over the plane (branch step6: ~10 % less for conv2's backward, measured with one thread). */
FEDDST_INLINE void maxpool_backward_plane_s1(const float *gy, long gy_step, const uint8_t *arg, int Hi, int Wi,
                                             int ld, int K, float *restrict gx) {
    const int Ho = Hi - K + 1, Wo = Wi - K + 1;
    int32_t shift[POOL_CLIPPED];
    for (int d = 0; d < K * K; d++) shift[d] = (d / K) * ld + d % K;
    memset(gx, 0, sizeof(float) * (size_t)Hi * (size_t)ld);
    for (int r = Ho - 1; r >= 0; r--) {
        const uint8_t *ar = arg + (long)r * Wo;
        const float *gr = gy + (long)r * Wo * gy_step;
        float *xr = gx + (long)r * ld;
        for (int q = Wo - 1; q >= 0; q--) {
            const int d = ar[q];
            if (d != POOL_CLIPPED) xr[q + shift[d]] += gr[q * gy_step];
        }
    }
}

/* gx (N, H, W) = each window's gradient added at its argmax (none for POOL_CLIPPED outputs: the window
 * offsets d compared against are < K*K <= 225).
 * Stride 1: maxpool_backward_plane_s1 (each element's terms added in window-offset (kh, kw) order). */
FEDDST_CLONES
int feddst_maxpool_backward(const float *gy, const uint8_t *arg, long N, int H, int W, int K, int S, float *gx,
                             int nthreads) {
    const int Ho = (H - K) / S + 1, Wo = (W - K) / S + 1, plane = H * W;
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (long n = 0; n < N; n++) {
        float *restrict gp = gx + n * plane;
        const float *gyp = gy + n * Ho * Wo;
        const uint8_t *ap = arg + n * Ho * Wo;
        if (S != 1) {
            memset(gp, 0, sizeof(float) * (size_t)plane);
            for (int r = 0; r < Ho; r++)
                for (int q = 0; q < Wo; q++) {
                    const int d = ap[r * Wo + q];
                    if (d == POOL_CLIPPED) continue;
                    gp[(r * S + d / K) * W + q * S + d % K] += gyp[r * Wo + q];
                }
            continue;
        }
        maxpool_backward_plane_s1(gyp, 1, ap, H, W, W, K, gp);
    }
    return FEDDST_OK;
}

/* Backward of feddst_sconv_pool_forward, one pass per image: the pooled gradient gp (B, O, Hp, Wp) goes back
 * through the saved argmax arg (B, O, Hp, Wp) into each (b, o) convolution-gradient plane, laid out at the
 * input's row stride W in a per-thread scratch (never a (B, O, Ho, Wo) tensor), and while the image's planes
 * are in cache they give gx (B, C, H, W) (skipped if NULL: W^T's CSR t_crow, t_row with perm (nnz,) = the
 * position of each W^T entry in W's values val) and the per-thread partial gval (nnz,), gbias (O,) (skipped
 * if NULL). The same sums in the same order as feddst_maxpool_backward, then feddst_sconv_backward_input
 * (values val[perm]) and feddst_sconv_backward_weight, for the same nthreads: gx and gbias bit-identical, gval
 * to float rounding (the compiler may contract multiply-adds differently where the dot loop is inlined).
 * gp_batch_last != 0: gp is batch-last, (O, Hp, Wp, B) (what feddst_sconv_pool_forward's batch_last writes). */
FEDDST_CLONES
int feddst_sconv_pool_backward(const float *x, const float *gp, int gp_batch_last, const uint8_t *arg, int B, int C,
                               int H, int W,
                               int O, int K, int Kp, const int32_t *crow, const int32_t *col, const float *val,
                               const int32_t *t_crow, const int32_t *t_row, const int32_t *perm, float *gx,
                               float *gval, float *gbias, int nthreads) {
    const int Ho = H - K + 1, Wo = W - K + 1, KK = K * K, plane = H * W;
    const int Hp = Ho - Kp + 1, Wp = Wo - Kp + 1, Lv = (Ho - 1) * W + Wo;
    const int P = (K - 1) * W + (K - 1), stride = P + plane + VL; /* padded gy planes, as in backward_input */
    const int nnz = crow[O];
    if (nthreads < 1) nthreads = 1;
    int32_t *off = malloc(sizeof(int32_t) * (size_t)(nnz > 0 ? nnz : 1));
    int32_t *t_off = malloc(sizeof(int32_t) * (size_t)(nnz > 0 ? nnz : 1));
    float *partial = calloc((size_t)(B > 0 ? B : 1) * (nnz + O), sizeof(float)); /* per image, reduced in order */
    if (!off || !t_off || !partial) {
        free(off);
        free(t_off);
        free(partial);
        return FEDDST_ENOMEM;
    }
    for (int j = 0; j < nnz; j++) {
        int c = col[j] / KK, r = col[j] % KK;
        off[j] = c * plane + (r / K) * W + (r % K);
    }
    if (gx)
        for (int c = 0; c < C; c++)
            for (int r = 0; r < KK; r++)
                for (int e = t_crow[c * KK + r]; e < t_crow[c * KK + r + 1]; e++)
                    t_off[e] = t_row[e] * stride + P - ((r / K) * W + (r % K));
    int failed = 0;
    #pragma omp parallel num_threads(nthreads)
    {
        float *pad = thread_scratch((size_t)O * stride, sizeof(float), 1, &failed); /* zeros off the rows stay 0 */
        float tmp[VL];
        const int missing = !pad;
        /* image by image to whichever thread is free (a thread that starts late, or loses its core for a while,
         * no longer holds up a fixed half of the batch); each image's sums go to its own partial row */
        #pragma omp for schedule(dynamic, 1)
        for (int b = 0; b < B; b++) {
            if (missing) continue;
            float *pg = partial + (size_t)b * (nnz + O), *pb = pg + nnz;
            for (int o = 0; o < O; o++) {
                const size_t po = ((size_t)b * O + o) * Hp * Wp;
                const float *gpo = gp_batch_last ? gp + (size_t)o * Hp * Wp * B + b : gp + po;
                maxpool_backward_plane_s1(gpo, gp_batch_last ? B : 1, arg + po, Ho, Wo, W, Kp,
                                          pad + (size_t)o * stride + P);
            }
            if (gx)
                for (int c = 0; c < C; c++) {
                    const int e0 = t_crow[c * KK], e1 = t_crow[(c + 1) * KK];
                    float *gxc = gx + ((size_t)b * C + c) * plane;
                    for (int i0 = 0; i0 < plane; i0 += VL) {
                        gather_axpy_block(tmp, 0.0f, pad + i0, 1, t_off, NULL, val, perm, e0, e1);
                        const int m = plane - i0 < VL ? plane - i0 : VL;
                        memcpy(gxc + i0, tmp, sizeof(float) * m);
                    }
                }
            const float *xb = x + (size_t)b * C * plane;
            for (int o = 0; o < O; o++) {
                const float *row = pad + (size_t)o * stride + P;
                pb[o] += plane_sum(row, Lv); /* columns >= Wo are 0 */
                plane_dots_add(row, Lv, xb, off, crow[o], crow[o + 1], pg);
            }
        }
        free(pad);
    }
    reduce_image_partials(partial, B, nthreads, nnz, O, gval, gbias);
    free(partial);
    free(t_off);
    free(off);
    return failed ? FEDDST_ENOMEM : FEDDST_OK;
}

/* One torch.optim.SGD step (dampening 0, no Nesterov) of n parameters p in place, from the gradient g, as
 * feddst_core.training.sgd_update does it in torch ops, in one pass and one thread (no OpenMP region: a
 * step updates a few small tensors and one of ~10^5-10^6 values, memory-bound either way):
 *     g' = g + mu * (p - anchor)      (FedProx; skipped when anchor is NULL)
 *     g' = g' * mask                  (mask uint8 0/1; skipped when NULL)
 *     g' = g' + weight_decay * p      (skipped when weight_decay == 0)
 *     buf = g' (first != 0) or momentum * buf + g'; p -= lr * buf   (momentum != 0; buf (n,) required)
 *     p -= lr * g'                    (momentum == 0; buf unused)
 * Chunks of SGD_CHUNK values go through each term's own loop (each vectorises) in an L1-resident scratch. */
#define SGD_CHUNK 512
FEDDST_CLONES
int feddst_sgd_step(float *restrict p, const float *restrict g, float *restrict buf, const uint8_t *restrict mask,
                    const float *restrict anchor, long n, float lr, float momentum, float weight_decay, float mu,
                    int first) {
    float d[SGD_CHUNK];
    for (long i0 = 0; i0 < n; i0 += SGD_CHUNK) {
        const int m = n - i0 < SGD_CHUNK ? (int)(n - i0) : SGD_CHUNK;
        float *restrict pc = p + i0;
        memcpy(d, g + i0, sizeof(float) * (size_t)m);
        if (anchor)
            for (int k = 0; k < m; k++) d[k] = d[k] + mu * (pc[k] - anchor[i0 + k]);
        if (mask)
            for (int k = 0; k < m; k++) d[k] = d[k] * (float)mask[i0 + k];
        if (weight_decay != 0.0f)
            for (int k = 0; k < m; k++) d[k] = d[k] + weight_decay * pc[k];
        if (momentum != 0.0f) {
            float *restrict bc = buf + i0;
            if (first)
                memcpy(bc, d, sizeof(float) * (size_t)m);
            else
                for (int k = 0; k < m; k++) bc[k] = d[k] + momentum * bc[k];
            for (int k = 0; k < m; k++) pc[k] = pc[k] - lr * bc[k];
        } else {
            for (int k = 0; k < m; k++) pc[k] = pc[k] - lr * d[k];
        }
    }
    return FEDDST_OK;
}
