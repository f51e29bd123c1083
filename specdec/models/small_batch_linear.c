/* y = x W^T (+ b) for a few rows of x: the linear layers of a decode step or a verification pass.
 *
 * Loaded by specdec/models/kernels.py (compiled on first use with the machine's C compiler).
 * Two properties matter:
 *   - speed: each weight row is read from memory once for all rows of x (a small tile of rows of W
 *     against up to 12 rows of x, the next rows prefetched), so verifying 2-4 tokens costs about
 *     what decoding one does, as long as the weights stream from DRAM;
 *   - batch invariance: every output element is one dot product summed in the same fixed order
 *     (8 lanes over k, the lanes added pairwise, then the k % 8 tail, then the bias) whatever the
 *     number of rows or threads, so a row's result does not depend on the rows beside it.
 * GCC/Clang vector extensions keep it portable (AVX2 + FMA intrinsics on x86-64, fused lanes
 * elsewhere, e.g. NEON on aarch64).
 * Weights come as float32 (small_batch_linear) or as bfloat16 (small_batch_linear_bf16: half the
 * bytes to stream, widened to float32 exactly on load, summed in float32 in the same order): for
 * drafts, whose proposals only decide speed, never the output. */
#include <stddef.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));

static inline v8 load8(const float *p) { v8 v; memcpy(&v, p, sizeof v); return v; }

/* bfloat16 is the top half of a float32: widening is a 16-bit shift, exact. */
typedef unsigned short bf16;
typedef unsigned short u16x8 __attribute__((vector_size(16)));
typedef unsigned int u32x8 __attribute__((vector_size(32)));
static inline v8 load8_bf16(const bf16 *p) {
    u16x8 h;
    memcpy(&h, p, sizeof h);
    u32x8 u = __builtin_convertvector(h, u32x8) << 16;
    v8 v;
    memcpy(&v, &u, sizeof v);
    return v;
}
static inline float load1(const float *p) { return *p; }
static inline float load1_bf16(const bf16 *p) {
    unsigned int u = (unsigned int)*p << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Explicitly fused: a multiply-add the compiler may or may not contract would round differently
 * in different tiles (built with -ffp-contract=off so nothing else is fused either). */
#if defined(__FMA__) && defined(__AVX__)
#include <immintrin.h>
static inline v8 fma8(v8 a, v8 b, v8 c) { return (v8)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c); }
#else
static inline v8 fma8(v8 a, v8 b, v8 c) {
    v8 r;
    for (int l = 0; l < 8; l++) r[l] = __builtin_fmaf(a[l], b[l], c[l]);
    return r;
}
#endif

static inline float lanes_sum(v8 a) { return ((a[0] + a[4]) + (a[2] + a[6])) + ((a[1] + a[5]) + (a[3] + a[7])); }

/* NB weight rows (of type WT, read with LOAD8 / LOAD1) from n0 against MB rows of x from m0. */
#define TILE(SUFFIX, WT, LOAD8, LOAD1, NB, MB)                                                     \
    static void tile##SUFFIX##_##NB##_##MB(const float *x, const WT *w, float *y, int K, int N,    \
                                           int n0, int m0) {                                       \
        v8 acc[NB][MB];                                                                            \
        for (int i = 0; i < NB; i++)                                                               \
            for (int j = 0; j < MB; j++) acc[i][j] = (v8){0};                                      \
        const WT *wr = w + (size_t)n0 * K;                                                         \
        const float *xr = x + (size_t)m0 * K;                                                      \
        int k8 = K - K % 8;                                                                        \
        for (int k = 0; k < k8; k += 8) {                                                          \
            v8 wv[NB];                                                                             \
            for (int i = 0; i < NB; i++) {                                                         \
                wv[i] = LOAD8(wr + (size_t)i * K + k);                                             \
                __builtin_prefetch(wr + (size_t)(i + NB) * K + k); /* the next tile's rows */      \
            }                                                                                      \
            for (int j = 0; j < MB; j++) {                                                         \
                v8 xv = load8(xr + (size_t)j * K + k);                                             \
                for (int i = 0; i < NB; i++) acc[i][j] = fma8(xv, wv[i], acc[i][j]);               \
            }                                                                                      \
        }                                                                                          \
        for (int i = 0; i < NB; i++)                                                               \
            for (int j = 0; j < MB; j++) {                                                         \
                float s = lanes_sum(acc[i][j]);                                                    \
                for (int k = k8; k < K; k++)                                                       \
                    s = __builtin_fmaf(xr[(size_t)j * K + k], LOAD1(wr + (size_t)i * K + k), s);   \
                y[(size_t)(m0 + j) * N + n0 + i] = s;                                              \
            }                                                                                      \
    }

/* Tiles sized so accumulators, weight vectors and one x vector fit 16 vector registers; one kernel
 * per weight type. x: M x K, w: N x K (row-major, PyTorch's Linear layout), b: N or NULL, y: M x N. */
#define KERNEL(SUFFIX, WT, LOAD8, LOAD1)                                                           \
    TILE(SUFFIX, WT, LOAD8, LOAD1, 8, 1) TILE(SUFFIX, WT, LOAD8, LOAD1, 6, 2)                      \
    TILE(SUFFIX, WT, LOAD8, LOAD1, 3, 3) TILE(SUFFIX, WT, LOAD8, LOAD1, 2, 4)                      \
    TILE(SUFFIX, WT, LOAD8, LOAD1, 2, 5) TILE(SUFFIX, WT, LOAD8, LOAD1, 2, 6)                      \
    TILE(SUFFIX, WT, LOAD8, LOAD1, 1, 7) TILE(SUFFIX, WT, LOAD8, LOAD1, 1, 8)                      \
    TILE(SUFFIX, WT, LOAD8, LOAD1, 1, 9) TILE(SUFFIX, WT, LOAD8, LOAD1, 1, 10)                     \
    TILE(SUFFIX, WT, LOAD8, LOAD1, 1, 11) TILE(SUFFIX, WT, LOAD8, LOAD1, 1, 12)                    \
    TILE(SUFFIX, WT, LOAD8, LOAD1, 1, 1)                                                           \
    typedef void (*tile##SUFFIX##_fn)(const float *, const WT *, float *, int, int, int, int);     \
    static const tile##SUFFIX##_fn TILES##SUFFIX[MAX_TILE + 1] = {                                 \
        0, tile##SUFFIX##_8_1, tile##SUFFIX##_6_2, tile##SUFFIX##_3_3, tile##SUFFIX##_2_4,         \
        tile##SUFFIX##_2_5, tile##SUFFIX##_2_6, tile##SUFFIX##_1_7, tile##SUFFIX##_1_8,            \
        tile##SUFFIX##_1_9, tile##SUFFIX##_1_10, tile##SUFFIX##_1_11, tile##SUFFIX##_1_12};        \
    void small_batch_linear##SUFFIX(const float *x, const WT *w, const float *b, float *y, int M,  \
                                    int K, int N, int threads) {                                   \
        for (int m0 = 0; m0 < M;) {                                                                \
            int mb = M - m0 > MAX_TILE ? MAX_TILE : M - m0;                                        \
            int nb = TILE_ROWS[mb], tiles = N / nb;                                                \
            tile##SUFFIX##_fn tile = TILES##SUFFIX[mb];                                            \
            _Pragma("omp parallel for num_threads(threads) schedule(static)")                      \
            for (int t = 0; t < tiles; t++) tile(x, w, y, K, N, t * nb, m0);                       \
            for (int n = tiles * nb; n < N; n++)                                                   \
                for (int j = 0; j < mb; j++) tile##SUFFIX##_1_1(x, w, y, K, N, n, m0 + j);         \
            m0 += mb;                                                                              \
        }                                                                                          \
        if (b)                                                                                     \
            for (int m = 0; m < M; m++)                                                            \
                for (int n = 0; n < N; n++) y[(size_t)m * N + n] += b[n];                          \
    }

#define MAX_TILE 12
static const int TILE_ROWS[MAX_TILE + 1] = {0, 8, 6, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1};

KERNEL(, float, load8, load1)
KERNEL(_bf16, bf16, load8_bf16, load1_bf16)
