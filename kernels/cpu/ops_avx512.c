/* kernels/cpu/ops_avx512.c — the row kernels that gain from 512-bit registers (attention scores,
 * the V accumulation and whole attention over f16 KV blocks), put over a copy of the AVX2 table
 * for the AVX-512 ISA (this file alone is built with AVX-512 flags; cpu_backend.c uses it only
 * after checking the CPU). */
#include "ops.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#define INLINE static inline __attribute__((always_inline))

INLINE float lanes_sum(__m256 v)  /* ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)), as ops_avx2.c */
{
    __m256 h = _mm256_hadd_ps(v, v);
    h = _mm256_hadd_ps(h, h);
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}

INLINE __m256 fold(__m512 v)  /* lanes i and i + 8 added */
{
    return _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

/* Eight K rows at a time into 16-lane accumulators, each folded to 8 lanes and reduced by one
 * hadd tree; a lone row is folded and reduced in the same lane order. Lengths that are not a
 * multiple of 16 go to the AVX2 kernel (the choice depends on n only, fixed per model). */
static void dot_rows(float *s, const float *q, const float *k, int nk, int n)
{
    if (n % 16 != 0) {
        duet_cpu_ops_avx2()->dot_rows(s, q, k, nk, n);
        return;
    }
    int j = 0;
    for (; j + 8 <= nk; j += 8) {
        const float *kj = k + (size_t)j * n;
        __m512 a[8];
        _Pragma("GCC unroll 8")
        for (int r = 0; r < 8; r++)
            a[r] = _mm512_setzero_ps();
        for (int i = 0; i < n; i += 16) {
            __m512 qv = _mm512_loadu_ps(q + i);
            _Pragma("GCC unroll 8")
            for (int r = 0; r < 8; r++)
                a[r] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(kj + (size_t)r * n + i), a[r]);
        }
        __m256 h01 = _mm256_hadd_ps(fold(a[0]), fold(a[1])), h23 = _mm256_hadd_ps(fold(a[2]), fold(a[3]));
        __m256 h45 = _mm256_hadd_ps(fold(a[4]), fold(a[5])), h67 = _mm256_hadd_ps(fold(a[6]), fold(a[7]));
        __m256 h0123 = _mm256_hadd_ps(h01, h23), h4567 = _mm256_hadd_ps(h45, h67);
        __m256 lo = _mm256_permute2f128_ps(h0123, h4567, 0x20), hi = _mm256_permute2f128_ps(h0123, h4567, 0x31);
        _mm256_storeu_ps(s + j, _mm256_add_ps(lo, hi));
    }
    for (; j < nk; j++) {
        const float *kj = k + (size_t)j * n;
        __m512 a = _mm512_setzero_ps();
        for (int i = 0; i < n; i += 16)
            a = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_loadu_ps(kj + i), a);
        s[j] = lanes_sum(fold(a));
    }
}

/* 64 outputs in four registers while the V rows stream past; each output sees the rows in order,
 * one FMA each, exactly as the AVX2 kernel does. Lengths that are not a multiple of 64 go to it. */
static void axpy_rows(float *acc, const float *p, const float *v, int nv, int n)
{
    if (n % 64 != 0) {
        duet_cpu_ops_avx2()->axpy_rows(acc, p, v, nv, n);
        return;
    }
    for (int i = 0; i < n; i += 64) {
        __m512 a0 = _mm512_loadu_ps(acc + i), a1 = _mm512_loadu_ps(acc + i + 16);
        __m512 a2 = _mm512_loadu_ps(acc + i + 32), a3 = _mm512_loadu_ps(acc + i + 48);
        for (int j = 0; j < nv; j++) {
            const float *vj = v + (size_t)j * n + i;
            __m512 pj = _mm512_set1_ps(p[j]);
            a0 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj), a0);
            a1 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 16), a1);
            a2 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 32), a2);
            a3 = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 48), a3);
        }
        _mm512_storeu_ps(acc + i, a0);
        _mm512_storeu_ps(acc + i + 16, a1);
        _mm512_storeu_ps(acc + i + 32, a2);
        _mm512_storeu_ps(acc + i + 48, a3);
    }
}


/* ---- attention over f16 KV blocks (attn_rows) ----
 * FlashAttention-2 over one KV block (16 positions) at a time: per query row a running max m and
 * sum l, the accumulator rescaled by e^(m_old - m_new) when m rises. Two kernels, one arithmetic:
 *   wide (many rows, prefill): lanes are query rows. Q is transposed once per call; a block's 16
 *     positions then take 16 x head_dim FMAs against broadcast K values, the softmax runs down
 *     the 16 score registers, and V goes in by FMAs of the weight registers against broadcast V
 *     values: no horizontal sums at all;
 *   narrow (a few rows, decode): lanes are positions. Each K block is transposed once for all
 *     rows, so a row's 16 scores are FMAs of broadcast q values against the transposed K; V goes
 *     in with lanes over head_dim, straight from f16, four rows per V load.
 * Both compute every value of a row the same way: a score as four partial sums over d mod 4,
 * each in order of d, added as (p0 + p1) + (p2 + p3), then times scale; the weights as exp512;
 * their sum by the tree of hsum16; the accumulator as o * corr, then one FMA per position in
 * order. Positions a row cannot see get no FMA (masked) or weigh exactly 0 against V rows that
 * were written (or zeroed, past the last visible position), so extra positions and blocks change
 * nothing: a row's result is the same bits in either kernel, whatever rows share the call, and
 * prefill agrees with decode exactly. */

#define ATTN_MAX_HD 256
/* Up to this many rows go to the narrow kernel: its cost grows with the rows, the wide one's
 * does not (one 16-lane register per position either way). */
#define ATTN_NARROW_MAX_ROWS 8

/* e^x as exp256 in ops_avx2.c (the Cephes polynomial), 16 lanes; e^0 is exactly 1. */
INLINE __m512 exp512(__m512 x)
{
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3365f)), _mm512_set1_ps(88.3762f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_mul_ps(p, _mm512_castsi512_ps(e));
}

/* The sum of the 16 lanes as ((v_i + v_i+8) pairwise halves, then quarters, pairs, neighbours):
 * the order the wide kernel follows down its registers (sum16_down). */
INLINE float hsum16(__m512 v)
{
    __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), hi);
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    __m128 p = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(p, _mm_movehdup_ps(p)));
}

/* Lane-wise e[0] + ... + e[15] in the order of hsum16. */
INLINE __m512 sum16_down(const __m512 e[16])
{
    __m512 h[8], q[4];
    _Pragma("GCC unroll 8")
    for (int i = 0; i < 8; i++)
        h[i] = _mm512_add_ps(e[i], e[i + 8]);
    _Pragma("GCC unroll 4")
    for (int i = 0; i < 4; i++)
        q[i] = _mm512_add_ps(h[i], h[i + 4]);
    return _mm512_add_ps(_mm512_add_ps(q[0], q[2]), _mm512_add_ps(q[1], q[3]));
}

/* Transposes 16 rows of 16 floats in place: unpacks, in-lane shuffles, then two rounds of
 * 128-bit lane shuffles. */
INLINE void transpose16(__m512 r[16])
{
    __m512 t[16];
    _Pragma("GCC unroll 8")
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    _Pragma("GCC unroll 4")
    for (int i = 0; i < 4; i++) {
        r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
    }
    /* r[4i + c] now holds, in 128-bit lane L, column 4L + c of rows 4i .. 4i+3. */
    _Pragma("GCC unroll 4")
    for (int c = 0; c < 4; c++) {
        __m512 v0 = _mm512_shuffle_f32x4(r[c], r[4 + c], _MM_SHUFFLE(2, 0, 2, 0));
        __m512 v1 = _mm512_shuffle_f32x4(r[c], r[4 + c], _MM_SHUFFLE(3, 1, 3, 1));
        __m512 w0 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], _MM_SHUFFLE(2, 0, 2, 0));
        __m512 w1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], _MM_SHUFFLE(3, 1, 3, 1));
        t[c] = _mm512_shuffle_f32x4(v0, w0, _MM_SHUFFLE(2, 0, 2, 0));
        t[4 + c] = _mm512_shuffle_f32x4(v1, w1, _MM_SHUFFLE(2, 0, 2, 0));
        t[8 + c] = _mm512_shuffle_f32x4(v0, w0, _MM_SHUFFLE(3, 1, 3, 1));
        t[12 + c] = _mm512_shuffle_f32x4(v1, w1, _MM_SHUFFLE(3, 1, 3, 1));
    }
    _Pragma("GCC unroll 16")
    for (int i = 0; i < 16; i++)
        r[i] = t[i];
}

/* 16 f16 values as f32 (exact). */
INLINE __m512 load_f16(const uint16_t *src)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)src));
}

/* Rows j < n of a block slice (16 x hd f16) as f32 into dst ([16][hd]), the rest zero: positions
 * past the sequence's end may hold anything (NaN) and must not reach a sum, even times zero. */
INLINE void block_to_f32(float *dst, const uint16_t *src, int n, int hd)
{
    for (int j = 0; j < 16; j++)
        for (int c = 0; c < hd; c += 16)
            _mm512_store_ps(dst + (size_t)j * hd + c,
                            j < n ? load_f16(src + (size_t)j * hd + c) : _mm512_setzero_ps());
}

/* The same, transposed: dst[d * 16 + j] = row j, element d. */
INLINE void block_to_f32_t(float *dst, const uint16_t *src, int n, int hd)
{
    for (int c = 0; c < hd; c += 16) {
        __m512 r[16];
        _Pragma("GCC unroll 16")
        for (int j = 0; j < 16; j++)
            r[j] = j < n ? load_f16(src + (size_t)j * hd + c) : _mm512_setzero_ps();
        transpose16(r);
        _Pragma("GCC unroll 16")
        for (int i = 0; i < 16; i++)
            _mm512_store_ps(dst + (size_t)(c + i) * 16, r[i]);
    }
}

INLINE void prefetch_bytes(const uint16_t *src, size_t bytes, int to_l1)
{
    const char *b = (const char *)src;
    for (size_t off = 0; off < bytes; off += 64) {
        if (to_l1)
            _mm_prefetch(b + off, _MM_HINT_T0);
        else
            _mm_prefetch(b + off, _MM_HINT_T1);
    }
}

/* The K and V slices of the block at position p0 for a, with prefetches: the next block into L1
 * and, when far, the one after into L2. Decode reads every sequence's KV from memory once per
 * step, and one block ahead left half of its attention time waiting; prefill, whose KV was just
 * written and mostly sits in cache, runs slower with the second prefetch. */
INLINE void block_slices(const duet_cpu_attn_rows_t *a, int p0, int last_max, int far,
                         const uint16_t **ks, const uint16_t **vs)
{
    const duet_kv_pool_view_t *pool = a->pool;
    size_t head_elems = (size_t)DUET_KV_BLOCK_TOKENS * (size_t)pool->head_dim;
    size_t head_off = (size_t)a->kv_head * head_elems, bytes = head_elems * sizeof(uint16_t);
    int blk = p0 / DUET_KV_BLOCK_TOKENS;
    *ks = duet_kv_slice(pool, a->blocks[blk], a->layer, 0) + head_off;
    *vs = duet_kv_slice(pool, a->blocks[blk], a->layer, 1) + head_off;
    for (int ahead = 1; ahead <= 1 + far && p0 + ahead * DUET_KV_BLOCK_TOKENS <= last_max; ahead++) {
        int next = a->blocks[blk + ahead];
        prefetch_bytes(duet_kv_slice(pool, next, a->layer, 0) + head_off, bytes, ahead == 1);
        prefetch_bytes(duet_kv_slice(pool, next, a->layer, 1) + head_off, bytes, ahead == 1);
    }
}

/* out = o / l, or zero for a row that saw no position (a malformed batch). */
INLINE void store_row(float *out, const float *o, float l, int hd)
{
    if (l > 0.0f) {
        __m512 inv = _mm512_set1_ps(1.0f / l);
        for (int c = 0; c < hd; c += 16)
            _mm512_storeu_ps(out + c, _mm512_mul_ps(_mm512_load_ps(o + c), inv));
    } else {
        memset(out, 0, (size_t)hd * sizeof(float));
    }
}

/* The wide kernel (see above): up to 16 rows, one lane each. */
static void attn_wide(const duet_cpu_attn_rows_t *a)
{
    int hd = a->pool->head_dim, nr = a->n_rows;
    _Alignas(64) float qt[ATTN_MAX_HD * 16], ot[ATTN_MAX_HD * 16];   /* [d][row] */
    _Alignas(64) float kf[16 * ATTN_MAX_HD], vf[16 * ATTN_MAX_HD];   /* [position][d] */
    _Alignas(64) int32_t last[16];
    int last_max = -1, last_min = INT32_MAX;
    for (int r = 0; r < 16; r++) {
        last[r] = r < nr ? a->last[r] : -1;
        last_max = r < nr && last[r] > last_max ? last[r] : last_max;
        last_min = r < nr && last[r] < last_min ? last[r] : last_min;
    }
    for (int c = 0; c < hd; c += 16) {
        __m512 r[16];
        _Pragma("GCC unroll 16")
        for (int i = 0; i < 16; i++)
            r[i] = i < nr ? _mm512_loadu_ps(a->q[i] + c) : _mm512_setzero_ps();
        transpose16(r);
        _Pragma("GCC unroll 16")
        for (int i = 0; i < 16; i++)
            _mm512_store_ps(qt + (size_t)(c + i) * 16, r[i]);
    }
    memset(ot, 0, (size_t)hd * 16 * sizeof(float));
    const __m512i lastv = _mm512_load_si512(last);
    const __m512 scale = _mm512_set1_ps(a->scale), neg_inf = _mm512_set1_ps(-INFINITY);
    __m512 m = neg_inf, l = _mm512_setzero_ps();
    for (int p0 = 0; p0 <= last_max; p0 += DUET_KV_BLOCK_TOKENS) {
        const uint16_t *ks, *vs;
        block_slices(a, p0, last_max, 0, &ks, &vs);
        int n_valid = last_max - p0 + 1 < 16 ? last_max - p0 + 1 : 16;
        block_to_f32(kf, ks, n_valid, hd);
        block_to_f32(vf, vs, n_valid, hd);

        /* s[j], lane r: q_r . k_j, four positions at a time (16 partial sums in registers). */
        __m512 s[16];
        for (int j0 = 0; j0 < 16; j0 += 4) {
            const float *k0 = kf + (size_t)j0 * hd;
            __m512 acc[4][4];
            _Pragma("GCC unroll 4")
            for (int i = 0; i < 4; i++) {
                __m512 qd = _mm512_load_ps(qt + i * 16);
                _Pragma("GCC unroll 4")
                for (int jj = 0; jj < 4; jj++)
                    acc[jj][i] = _mm512_mul_ps(qd, _mm512_set1_ps(k0[(size_t)jj * hd + i]));
            }
            for (int d = 4; d < hd; d += 4) {
                _Pragma("GCC unroll 4")
                for (int i = 0; i < 4; i++) {
                    __m512 qd = _mm512_load_ps(qt + (size_t)(d + i) * 16);
                    _Pragma("GCC unroll 4")
                    for (int jj = 0; jj < 4; jj++) {
                        __m512 k = _mm512_set1_ps(k0[(size_t)jj * hd + d + i]);
                        acc[jj][i] = _mm512_fmadd_ps(qd, k, acc[jj][i]);
                    }
                }
            }
            _Pragma("GCC unroll 4")
            for (int jj = 0; jj < 4; jj++)
                s[j0 + jj] = _mm512_mul_ps(_mm512_add_ps(_mm512_add_ps(acc[jj][0], acc[jj][1]),
                                                         _mm512_add_ps(acc[jj][2], acc[jj][3])), scale);
        }
        /* Rows that cannot see position p0 + j: -inf, and a weight of exactly 0 below. */
        __mmask16 vis[16];
        int masked = p0 + 15 > last_min;
        _Pragma("GCC unroll 16")
        for (int j = 0; j < 16; j++) {
            vis[j] = masked ? _mm512_cmpge_epi32_mask(lastv, _mm512_set1_epi32(p0 + j)) : 0xffff;
            s[j] = _mm512_mask_mov_ps(neg_inf, vis[j], s[j]);
        }
        __m512 mx = m;
        _Pragma("GCC unroll 16")
        for (int j = 0; j < 16; j++)
            mx = _mm512_max_ps(mx, s[j]);
        __m512 corr = exp512(_mm512_sub_ps(m, mx));
        _Pragma("GCC unroll 16")
        for (int j = 0; j < 16; j++)
            s[j] = _mm512_maskz_mov_ps(vis[j], exp512(_mm512_sub_ps(s[j], mx)));
        l = _mm512_fmadd_ps(l, corr, sum16_down(s));
        m = mx;

        /* ot[d] = ot[d] * corr + sum_j s[j] v_j[d], eight d at a time. */
        for (int d = 0; d < hd; d += 8) {
            __m512 o[8];
            _Pragma("GCC unroll 8")
            for (int i = 0; i < 8; i++)
                o[i] = _mm512_mul_ps(_mm512_load_ps(ot + (size_t)(d + i) * 16), corr);
            /* Masked: a row takes no FMA at all for a position it cannot see (not even 0 * v,
             * which an overflowed, infinite V value would turn into NaN). */
            _Pragma("GCC unroll 16")
            for (int j = 0; j < 16; j++)
                _Pragma("GCC unroll 8")
                for (int i = 0; i < 8; i++) {
                    __m512 v = _mm512_set1_ps(vf[(size_t)j * hd + d + i]);
                    o[i] = _mm512_mask3_fmadd_ps(s[j], v, o[i], vis[j]);
                }
            _Pragma("GCC unroll 8")
            for (int i = 0; i < 8; i++)
                _mm512_store_ps(ot + (size_t)(d + i) * 16, o[i]);
        }
    }
    _Alignas(64) float l_row[16];
    _mm512_store_ps(l_row, l);
    for (int c = 0; c < hd; c += 16) {
        __m512 r[16];
        _Pragma("GCC unroll 16")
        for (int i = 0; i < 16; i++)
            r[i] = _mm512_load_ps(ot + (size_t)(c + i) * 16);
        transpose16(r);
        for (int i = 0; i < nr; i++) {
            if (l_row[i] > 0.0f)
                _mm512_storeu_ps(a->out[i] + c, _mm512_mul_ps(r[i], _mm512_set1_ps(1.0f / l_row[i])));
            else  /* a row that saw no position (a malformed batch) */
                _mm512_storeu_ps(a->out[i] + c, _mm512_setzero_ps());
        }
    }
}

/* For NR rows and 16 * ND columns from d0: o = o * corr + p[j] v[j] for j < nvis of each row, in
 * order of j, one FMA each, v the f16 V rows of the block (vs, head_dim hd apart), converted in
 * registers. The V rows up to the smallest nvis serve all NR rows per load. */
INLINE void pv_rows(int NR, int ND, float *const *o, const float *const *p, const float *corr,
                    const int *nvis, const uint16_t *vs, int hd, int d0)
{
    __m512 acc[4][4];
    int jmin = 16;
    _Pragma("GCC unroll 4")
    for (int r = 0; r < NR; r++) {
        jmin = nvis[r] < jmin ? nvis[r] : jmin;
        __m512 cr = _mm512_set1_ps(corr[r]);
        _Pragma("GCC unroll 4")
        for (int c = 0; c < ND; c++)
            acc[r][c] = _mm512_mul_ps(_mm512_load_ps(o[r] + d0 + 16 * c), cr);
    }
    for (int j = 0; j < jmin; j++) {
        const uint16_t *vj = vs + (size_t)j * hd + d0;
        __m512 v[4];
        _Pragma("GCC unroll 4")
        for (int c = 0; c < ND; c++)
            v[c] = load_f16(vj + 16 * c);
        _Pragma("GCC unroll 4")
        for (int r = 0; r < NR; r++) {
            __m512 pr = _mm512_set1_ps(p[r][j]);
            _Pragma("GCC unroll 4")
            for (int c = 0; c < ND; c++)
                acc[r][c] = _mm512_fmadd_ps(pr, v[c], acc[r][c]);
        }
    }
    _Pragma("GCC unroll 4")
    for (int r = 0; r < NR; r++) {
        for (int j = jmin; j < nvis[r]; j++) {
            __m512 pr = _mm512_set1_ps(p[r][j]);
            _Pragma("GCC unroll 4")
            for (int c = 0; c < ND; c++)
                acc[r][c] = _mm512_fmadd_ps(pr, load_f16(vs + (size_t)j * hd + d0 + 16 * c), acc[r][c]);
        }
        _Pragma("GCC unroll 4")
        for (int c = 0; c < ND; c++)
            _mm512_store_ps(o[r] + d0 + 16 * c, acc[r][c]);
    }
}

/* pv_rows with NR and ND as constants, so the accumulators stay in registers. */
static void pv_dispatch(int nr, int nd, float *const *o, const float *const *p, const float *corr,
                        const int *nvis, const uint16_t *vs, int hd, int d0)
{
#define PV_CASE(R, D) \
    case (R) * 8 + (D): pv_rows(R, D, o, p, corr, nvis, vs, hd, d0); break
    switch (nr * 8 + nd) {
    PV_CASE(1, 1); PV_CASE(1, 2); PV_CASE(1, 3); PV_CASE(1, 4);
    PV_CASE(2, 1); PV_CASE(2, 2); PV_CASE(2, 3); PV_CASE(2, 4);
    PV_CASE(3, 1); PV_CASE(3, 2); PV_CASE(3, 3); PV_CASE(3, 4);
    PV_CASE(4, 1); PV_CASE(4, 2); PV_CASE(4, 3); PV_CASE(4, 4);
    }
#undef PV_CASE
}

/* The 16 scores of NR rows (q pointers) against a transposed K block kt ([d][16]), in the order
 * of the wide kernel, times scale. */
INLINE void scores_t(int NR, const float *const *q, const float *kt, int hd, __m512 scale, __m512 *s)
{
    __m512 acc[4][4];
    _Pragma("GCC unroll 4")
    for (int i = 0; i < 4; i++) {
        __m512 kd = _mm512_load_ps(kt + i * 16);
        _Pragma("GCC unroll 4")
        for (int r = 0; r < NR; r++)
            acc[r][i] = _mm512_mul_ps(_mm512_set1_ps(q[r][i]), kd);
    }
    for (int d = 4; d < hd; d += 4) {
        _Pragma("GCC unroll 4")
        for (int i = 0; i < 4; i++) {
            __m512 kd = _mm512_load_ps(kt + (size_t)(d + i) * 16);
            _Pragma("GCC unroll 4")
            for (int r = 0; r < NR; r++)
                acc[r][i] = _mm512_fmadd_ps(_mm512_set1_ps(q[r][d + i]), kd, acc[r][i]);
        }
    }
    _Pragma("GCC unroll 4")
    for (int r = 0; r < NR; r++)
        s[r] = _mm512_mul_ps(_mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]),
                                           _mm512_add_ps(acc[r][2], acc[r][3])), scale);
}

/* The given rows (n of them) against the block at p0, its K transposed into kt, its V rows vs as
 * stored: scores, the online softmax step of each row, then V, four rows at a time (only the rows
 * a row sees are read: past them, a block may hold anything). */
static void narrow_rows(const duet_cpu_attn_rows_t *a, const int *rows, int n, int p0, const float *kt,
                        const uint16_t *vs, float (*o)[ATTN_MAX_HD], float (*p)[16], float *m, float *l)
{
    int hd = a->pool->head_dim;
    const __m512 scale = _mm512_set1_ps(a->scale), neg_inf = _mm512_set1_ps(-INFINITY);
    for (int i0 = 0; i0 < n; i0 += 4) {
        int nr = n - i0 < 4 ? n - i0 : 4;
        const float *q[4], *prow[4];
        float *orow[4], corr[4];
        int nvis[4];
        __m512 s[4];
        for (int i = 0; i < nr; i++) {
            q[i] = a->q[rows[i0 + i]];
            orow[i] = o[rows[i0 + i]];
            prow[i] = p[rows[i0 + i]];
        }
        switch (nr) {
        case 1: scores_t(1, q, kt, hd, scale, s); break;
        case 2: scores_t(2, q, kt, hd, scale, s); break;
        case 3: scores_t(3, q, kt, hd, scale, s); break;
        default: scores_t(4, q, kt, hd, scale, s); break;
        }
        for (int i = 0; i < nr; i++) {
            int r = rows[i0 + i];
            nvis[i] = a->last[r] - p0 + 1 < 16 ? a->last[r] - p0 + 1 : 16;
            __mmask16 vis = (__mmask16)((1u << nvis[i]) - 1);
            __m512 sr = _mm512_mask_mov_ps(neg_inf, vis, s[i]);
            float mx = _mm512_reduce_max_ps(sr);
            mx = mx > m[r] ? mx : m[r];
            __m512 mxv = _mm512_set1_ps(mx);
            __m512 cr = exp512(_mm512_sub_ps(_mm512_set1_ps(m[r]), mxv));
            __m512 e = _mm512_maskz_mov_ps(vis, exp512(_mm512_sub_ps(sr, mxv)));
            l[r] = _mm512_cvtss_f32(_mm512_fmadd_ps(_mm512_set1_ps(l[r]), cr, _mm512_set1_ps(hsum16(e))));
            m[r] = mx;
            corr[i] = _mm512_cvtss_f32(cr);
            _mm512_store_ps(p[r], e);
        }
        for (int d0 = 0; d0 < hd; d0 += 64) {
            int nd = (hd - d0) / 16 < 4 ? (hd - d0) / 16 : 4;
            pv_dispatch(nr, nd, orow, prow, corr, nvis, vs, hd, d0);
        }
    }
}

/* The narrow kernel (see above): up to ATTN_NARROW_MAX_ROWS rows, one lane per position. */
static void attn_narrow(const duet_cpu_attn_rows_t *a)
{
    int hd = a->pool->head_dim, nr = a->n_rows;
    _Alignas(64) float o[ATTN_NARROW_MAX_ROWS][ATTN_MAX_HD];
    _Alignas(64) float kt[ATTN_MAX_HD * 16];
    _Alignas(64) float p[ATTN_NARROW_MAX_ROWS][16];
    float m[ATTN_NARROW_MAX_ROWS], l[ATTN_NARROW_MAX_ROWS];
    int last_max = -1;
    for (int r = 0; r < nr; r++) {
        memset(o[r], 0, (size_t)hd * sizeof(float));
        m[r] = -INFINITY;
        l[r] = 0.0f;
        last_max = a->last[r] > last_max ? a->last[r] : last_max;
    }
    for (int p0 = 0; p0 <= last_max; p0 += DUET_KV_BLOCK_TOKENS) {
        const uint16_t *ks, *vs;
        block_slices(a, p0, last_max, 1, &ks, &vs);
        int n_valid = last_max - p0 + 1 < 16 ? last_max - p0 + 1 : 16;
        block_to_f32_t(kt, ks, n_valid, hd);
        int rows[ATTN_NARROW_MAX_ROWS], n = 0;  /* the rows that see some of this block */
        for (int r = 0; r < nr; r++)
            if (a->last[r] >= p0)
                rows[n++] = r;
        narrow_rows(a, rows, n, p0, kt, vs, o, p, m, l);
    }
    for (int r = 0; r < nr; r++)
        store_row(a->out[r], o[r], l[r], hd);
}

static void attn_rows(const duet_cpu_attn_rows_t *a)
{
    if (a->n_rows <= ATTN_NARROW_MAX_ROWS)
        attn_narrow(a);
    else
        attn_wide(a);
}

int duet_cpu_ops_avx512_fill(duet_cpu_ops_t *ops)
{
    const duet_cpu_ops_t *base = duet_cpu_ops_avx2();
    if (!base)
        return 0;
    *ops = *base;
    ops->name = "avx512";
    ops->dot_rows = dot_rows;
    ops->axpy_rows = axpy_rows;
    ops->attn_rows = attn_rows;
    return 1;
}

#else

int duet_cpu_ops_avx512_fill(duet_cpu_ops_t *ops)
{
    (void)ops;
    return 0;
}

#endif
