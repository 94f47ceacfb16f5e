/* kernels/cpu/qmatmul_avx512.c — the integer matmul with AVX-512 (F, BW, VL) and VNNI: activation
 * quantization and the 16-row group kernel of qmatmul.h (this file alone is built with those
 * flags; cpu_backend.c calls it only after checking the CPU). */
#include "qmatmul.h"

#include <string.h>

#include "../dtype.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__)
#include <immintrin.h>

#include "avx512_store.h"

#define INLINE static inline __attribute__((always_inline))

/* Tokens per tile: 8, whose accumulators (16-bit: hi, lo and float, 24 registers; 8-bit: 16)
 * stay in registers with the weights. 8 rather than 4 for 16-bit activations measured +6 % (Q8_0)
 * and +15 % (Q4_1) in a one-thread microbenchmark of 1536 x 576 x 512 (fewer float steps per dot). */
#define TILE_T 8
/* Tiles with fewer integer sums than this run each sum as two chains (see group_tile). */
#define SPLIT_CHAINS 9
/* Tokens whose activations one pass over a thread's row groups reuses from cache. */
#define TOKEN_CHUNK 64

/* ---- activation quantization ----
 * Sixteen blocks at a time, so that the per-block reductions (the max |x| and the sum of the
 * integers) and the divisions run across blocks, one lane each, rather than as a chain per block.
 * The values are the reference's: max and integer sums are exact in any order, and the divisions
 * and products are the same single IEEE operations. */

enum { FOLD_MAX_PS, FOLD_ADD_EPI32 };

INLINE __m512 fold(int op, __m512 x, __m512 y)
{
    if (op == FOLD_MAX_PS)
        return _mm512_max_ps(x, y);
    return _mm512_castsi512_ps(_mm512_add_epi32(_mm512_castps_si512(x), _mm512_castps_si512(y)));
}

/* Lane b of the result = the max (or integer sum) of the 16 lanes of a[b]: a transposing tree
 * (256-bit halves, 128-bit quarters, 64-bit pairs, neighbours) and one permute into order. */
INLINE __m512 reduce16(int op, const __m512 a[16])
{
    __m512 x[8], y[4], z[2];
    _Pragma("GCC unroll 8")
    for (int j = 0; j < 8; j++)
        x[j] = fold(op, _mm512_shuffle_f32x4(a[j], a[j + 8], _MM_SHUFFLE(1, 0, 1, 0)),
                    _mm512_shuffle_f32x4(a[j], a[j + 8], _MM_SHUFFLE(3, 2, 3, 2)));
    _Pragma("GCC unroll 4")
    for (int j = 0; j < 4; j++)
        y[j] = fold(op, _mm512_shuffle_f32x4(x[j], x[j + 4], _MM_SHUFFLE(2, 0, 2, 0)),
                    _mm512_shuffle_f32x4(x[j], x[j + 4], _MM_SHUFFLE(3, 1, 3, 1)));
    _Pragma("GCC unroll 2")
    for (int j = 0; j < 2; j++)
        z[j] = fold(op, _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(y[j]), _mm512_castps_pd(y[j + 2]))),
                    _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(y[j]), _mm512_castps_pd(y[j + 2]))));
    __m512 w = fold(op, _mm512_shuffle_ps(z[0], z[1], _MM_SHUFFLE(2, 0, 2, 0)),
                    _mm512_shuffle_ps(z[0], z[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512i order = _mm512_setr_epi32(0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15);
    return _mm512_permutexvar_ps(order, w);
}

/* Quantizes one row, vb = 2 (16-bit) or 1 (8-bit); qmax is the format's largest |q|. */
INLINE void qact_row(int vb, int32_t qmax_i, const float *x, int k, int32_t z, void *dst)
{
    int nb = k / 32;
    int8_t *q = dst;
    float *d = (float *)((uint8_t *)dst + (size_t)nb * 32 * vb), *ds = d + nb;
    int32_t *zs = (int32_t *)(ds + nb);
    const __m512i qmax = _mm512_set1_epi32(qmax_i), qmin = _mm512_set1_epi32(-qmax_i);
    const __m512 qmax_f = _mm512_set1_ps((float)qmax_i);
    for (int b0 = 0; b0 < nb; b0 += 16) {
        int n = nb - b0 < 16 ? nb - b0 : 16;
        __mmask16 live = (__mmask16)((1u << n) - 1);
        const float *xb = x + (size_t)b0 * 32;
        __m512 part[16];
        _Pragma("GCC unroll 16")
        for (int i = 0; i < 16; i++)
            part[i] = i < n ? _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(xb + 32 * i)),
                                            _mm512_abs_ps(_mm512_loadu_ps(xb + 32 * i + 16)))
                            : _mm512_setzero_ps();
        __m512 amax = reduce16(FOLD_MAX_PS, part);
        /* id = qmax / amax, 0 for an all-zero block (as the reference) */
        __mmask16 nz = _mm512_cmp_ps_mask(amax, _mm512_setzero_ps(), _CMP_GT_OQ);
        _Alignas(64) float id[16];
        _mm512_store_ps(id, _mm512_maskz_div_ps(nz, qmax_f, amax));
        __m512 dv = _mm512_div_ps(amax, qmax_f);
        _mm512_mask_storeu_ps(d + b0, live, dv);
        _Pragma("GCC unroll 16")
        for (int i = 0; i < 16; i++) {
            if (i >= n) {
                part[i] = _mm512_setzero_ps();
                continue;
            }
            __m512 vid = _mm512_set1_ps(id[i]);
            /* cvtps rounds to nearest even under the default MXCSR, as lrintf does in the reference. */
            __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + 32 * i), vid));
            __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xb + 32 * i + 16), vid));
            q0 = _mm512_max_epi32(_mm512_min_epi32(q0, qmax), qmin);
            q1 = _mm512_max_epi32(_mm512_min_epi32(q1, qmax), qmin);
            int8_t *qb = q + (size_t)(b0 + i) * 32 * vb;
            if (vb == 2) {
                /* q = 256 hi + lo with lo in [-128, 127]: lo is q's low byte (what the narrowing
                 * store keeps), hi = (q + 128) >> 8. */
                const __m512i c128 = _mm512_set1_epi32(128);
                __m512i hi0 = _mm512_srai_epi32(_mm512_add_epi32(q0, c128), 8);
                __m512i hi1 = _mm512_srai_epi32(_mm512_add_epi32(q1, c128), 8);
                _mm_storeu_si128((__m128i *)qb, _mm512_cvtepi32_epi8(hi0));
                _mm_storeu_si128((__m128i *)(qb + 16), _mm512_cvtepi32_epi8(hi1));
                _mm_storeu_si128((__m128i *)(qb + 32), _mm512_cvtepi32_epi8(q0));
                _mm_storeu_si128((__m128i *)(qb + 48), _mm512_cvtepi32_epi8(q1));
            } else {
                _mm_storeu_si128((__m128i *)qb, _mm512_cvtepi32_epi8(q0));
                _mm_storeu_si128((__m128i *)(qb + 16), _mm512_cvtepi32_epi8(q1));
            }
            part[i] = _mm512_castsi512_ps(_mm512_add_epi32(q0, q1));
        }
        __m512i sum = _mm512_castps_si512(reduce16(FOLD_ADD_EPI32, part));
        _mm512_mask_storeu_ps(ds + b0, live, _mm512_mul_ps(dv, _mm512_cvtepi32_ps(sum)));
        _mm512_mask_storeu_epi32(zs + b0, live, _mm512_mullo_epi32(sum, _mm512_set1_epi32(-z)));
    }
}

static void qact(const float *x, int k, int32_t z, void *dst)
{
    qact_row(2, DUET_QM_QMAX, x, k, z, dst);
}

static void qact8(const float *x, int k, int32_t z, void *dst)
{
    qact_row(1, DUET_QM_QMAX8, x, k, z, dst);
}

/* Four activation bytes broadcast to every 32-bit lane. */
INLINE __m512i bcast4(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

enum { KIND_Q8_0, KIND_Q4_0, KIND_Q4_1 };

/* One row group against T tokens over every block; token t's 16 results go to out[t * ldo +
 * row0 ..] (+ bias). a[t] points at token t's quantized row, vb bytes per value (2: a hi and a lo
 * sum per token, 1: one sum). The accumulators never leave registers (returning them through
 * memory made GCC keep them there). VNNI has a latency of several cycles and two ports: when a
 * tile has fewer than SPLIT_CHAINS sums, each runs as two chains (even and odd chunks, or low
 * and high nibbles) so that enough are in flight; integer sums are exact, so this changes
 * nothing in the result. */
INLINE void group_tile(int kind, int vb, int T, const uint8_t *gq, int nb, const int8_t *const *a,
                       const float *bias, float *out, size_t ldo, int row0, int rows,
                       const uint8_t *next, int pf_phase, int pf_step)
{
    __m512 facc[TILE_T];
    const int qbytes = kind == KIND_Q8_0 ? 512 : 256;
    const int sbytes = kind == KIND_Q4_1 ? 64 : 32;
    const size_t ab = (size_t)32 * (size_t)vb;   /* activation bytes per block */
    const int split = T * vb < SPLIT_CHAINS;
    const uint16_t *gs = (const uint16_t *)(gq + (size_t)nb * qbytes);
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    const float *ad[TILE_T], *ads[TILE_T];
    const int32_t *azs[TILE_T];
    _Pragma("GCC unroll 8")
    for (int t = 0; t < T; t++) {
        ad[t] = duet_qact_d(a[t], nb, vb);
        ads[t] = ad[t] + nb;
        azs[t] = (const int32_t *)(ads[t] + nb);
        facc[t] = _mm512_setzero_ps();
    }
    for (int b = 0; b < nb; b++) {
        const uint8_t *bq = gq + (size_t)b * qbytes;
        if (next && b % pf_step == pf_phase) {  /* this block of the next group (see qgemm_kind) */
            _Pragma("GCC unroll 8")
            for (int i = 0; i < qbytes; i += 64)
                _mm_prefetch((const char *)(next + (size_t)b * qbytes + i), _MM_HINT_T0);
            _mm_prefetch((const char *)(next + (size_t)nb * qbytes + (size_t)b * sbytes), _MM_HINT_T0);
        }
        /* 16-bit: ah += hi dots, al += lo dots; 8-bit: al alone. ah2, al2: the second chains. */
        __m512i ah[TILE_T], al[TILE_T], ah2[TILE_T], al2[TILE_T];
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++) {
            ah[t] = ah2[t] = al2[t] = _mm512_setzero_si512();
            al[t] = kind == KIND_Q4_1 ? _mm512_setzero_si512() : _mm512_set1_epi32(azs[t][b]);
        }
        if (kind == KIND_Q8_0) {
            _Pragma("GCC unroll 8")
            for (int c = 0; c < 8; c++) {
                __m512i w = _mm512_load_si512((const void *)(bq + 64 * c));
                _Pragma("GCC unroll 8")
                for (int t = 0; t < T; t++) {
                    const int8_t *x = a[t] + (size_t)b * ab + 4 * c;
                    int second = split && (c & 1);
                    __m512i *h = second ? &ah2[t] : &ah[t], *l = second ? &al2[t] : &al[t];
                    if (vb == 2)
                        *h = _mm512_dpbusd_epi32(*h, w, bcast4(x));
                    *l = _mm512_dpbusd_epi32(*l, w, bcast4(x + (vb == 2 ? 32 : 0)));
                }
            }
        } else {
            _Pragma("GCC unroll 4")
            for (int k = 0; k < 4; k++) {
                __m512i raw = _mm512_load_si512((const void *)(bq + 64 * k));
                __m512i w0 = _mm512_and_si512(raw, m4);
                __m512i w1 = _mm512_and_si512(_mm512_srli_epi16(raw, 4), m4);
                _Pragma("GCC unroll 8")
                for (int t = 0; t < T; t++) {
                    const int8_t *x = a[t] + (size_t)b * ab + 8 * k;
                    __m512i *h = split ? &ah2[t] : &ah[t], *l = split ? &al2[t] : &al[t];
                    if (vb == 2) {
                        ah[t] = _mm512_dpbusd_epi32(ah[t], w0, bcast4(x));
                        *h = _mm512_dpbusd_epi32(*h, w1, bcast4(x + 4));
                    }
                    al[t] = _mm512_dpbusd_epi32(al[t], w0, bcast4(x + (vb == 2 ? 32 : 0)));
                    *l = _mm512_dpbusd_epi32(*l, w1, bcast4(x + (vb == 2 ? 36 : 4)));
                }
            }
        }
        const uint16_t *bs = gs + (size_t)b * (sbytes / 2);
        __m512 dw = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)bs));
        __m512 mw = kind == KIND_Q4_1 ? _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(bs + 16)))
                                      : _mm512_setzero_ps();
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++) {
            __m512i i = split ? _mm512_add_epi32(al[t], al2[t]) : al[t];
            if (vb == 2)
                i = _mm512_add_epi32(_mm512_slli_epi32(split ? _mm512_add_epi32(ah[t], ah2[t]) : ah[t], 8), i);
            __m512 s = _mm512_mul_ps(dw, _mm512_set1_ps(ad[t][b]));
            facc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i), s, facc[t]);
            if (kind == KIND_Q4_1)
                facc[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(ads[t][b]), facc[t]);
        }
    }
    _Pragma("GCC unroll 8")
    for (int t = 0; t < T; t++)
        duet_avx512_store_rows(facc[t], bias, out + (size_t)t * ldo, row0, rows);
}

INLINE void qgemm_kind(int kind, int vb, const duet_cpu_packed_t *w, int g0, int g1, const void *act,
                       int n, const float *bias, float *out, size_t ldo)
{
    size_t arb = duet_qact_row_bytes(w->cols, vb);
    const int tile = TILE_T;
    for (int c0 = 0; c0 < n; c0 += TOKEN_CHUNK) {
        int c1 = n - c0 < TOKEN_CHUNK ? n : c0 + TOKEN_CHUNK;
        for (int g = g0; g < g1; g++) {
            const uint8_t *gq = w->data + (size_t)g * w->group_bytes;
            /* The next group's weights are fetched into cache while this group computes, so
             * they do not stall it (decode streams every weight from memory once per step):
             * block b of the next group during tile b % tiles of this one, a few lines at a time
             * (all at once, the fetches wait on each other and hold up the tile). */
            const uint8_t *next = g + 1 < w->groups ? gq + w->group_bytes : NULL;
            int tiles = (c1 - c0 + tile - 1) / tile, ti = 0;
            for (int t0 = c0; t0 < c1; t0 += tile, ti++) {
                int nt = c1 - t0 < tile ? c1 - t0 : tile;
                const int8_t *a[TILE_T];
                for (int t = 0; t < nt; t++)
                    a[t] = (const int8_t *)act + (size_t)(t0 + t) * arb;
                float *o = out + (size_t)t0 * ldo;
                int row0 = g * DUET_QM_ROWS;
#define TILE_CASE(T) \
    case T: group_tile(kind, vb, T, gq, w->nb, a, bias, o, ldo, row0, w->rows, next, ti, tiles); break
                switch (nt) {
                TILE_CASE(1); TILE_CASE(2); TILE_CASE(3); TILE_CASE(4);
                TILE_CASE(5); TILE_CASE(6); TILE_CASE(7);
                default: TILE_CASE(TILE_T);
                }
#undef TILE_CASE
            }
        }
    }
}

static void qgemm(const duet_cpu_packed_t *w, int g0, int g1, const void *act, int vb, int n,
                  const float *bias, float *out, size_t ldo)
{
    if (vb == 1) {
        switch (w->type) {
        case DUET_TYPE_Q8_0: qgemm_kind(KIND_Q8_0, 1, w, g0, g1, act, n, bias, out, ldo); break;
        case DUET_TYPE_Q4_0: qgemm_kind(KIND_Q4_0, 1, w, g0, g1, act, n, bias, out, ldo); break;
        default:             qgemm_kind(KIND_Q4_1, 1, w, g0, g1, act, n, bias, out, ldo); break;
        }
        return;
    }
    switch (w->type) {
    case DUET_TYPE_Q8_0: qgemm_kind(KIND_Q8_0, 2, w, g0, g1, act, n, bias, out, ldo); break;
    case DUET_TYPE_Q4_0: qgemm_kind(KIND_Q4_0, 2, w, g0, g1, act, n, bias, out, ldo); break;
    default:             qgemm_kind(KIND_Q4_1, 2, w, g0, g1, act, n, bias, out, ldo); break;
    }
}

duet_cpu_qact_fn duet_cpu_qact_avx512(void)
{
    return qact;
}

duet_cpu_qact_fn duet_cpu_qact8_avx512(void)
{
    return qact8;
}

duet_cpu_qgemm_fn duet_cpu_qgemm_avx512(void)
{
    return qgemm;
}

#else

duet_cpu_qact_fn duet_cpu_qact_avx512(void)
{
    return NULL;
}

duet_cpu_qact_fn duet_cpu_qact8_avx512(void)
{
    return NULL;
}

duet_cpu_qgemm_fn duet_cpu_qgemm_avx512(void)
{
    return NULL;
}

#endif
