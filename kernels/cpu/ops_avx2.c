/* kernels/cpu/ops_avx2.c — the row-level kernels with AVX2, FMA and F16C (this file alone is
 * built with -mavx2 -mfma -mf16c; cpu_backend.c calls it only after checking the CPU). */
#include "ops.h"

#include <math.h>

#include "../dtype.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

#define INLINE static inline __attribute__((always_inline))

INLINE float hsum(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* e^x to about 2 ulp: x = n ln2 + r with |r| <= ln2/2, e^r by a degree-6 polynomial (the Cephes
 * expf coefficients), 2^n put into the exponent bits. Inputs are clamped to the range where
 * 2^n stays a normal float, so e^-inf gives ~1e-38 rather than 0; callers only feed it
 * finite values or tolerate that. */
INLINE __m256 exp256(__m256 x)
{
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3365f)), _mm256_set1_ps(88.3762f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

/* ---- dot products of one weight row with NX activation rows ----
 * The weight vectors are decoded once per 8 (plain types) or 32 (block types) elements and
 * FMA'd into two or four accumulators per activation row (independent chains hide the FMA
 * latency). NX is a compile-time constant in each instance below, and the small loops are
 * unrolled by pragma so the accumulator arrays live in registers (GCC -O2 keeps them in memory
 * otherwise). */

enum { PLAIN_F32, PLAIN_F16, PLAIN_BF16 };

INLINE __m256 load8(int kind, const void *w, int i)
{
    switch (kind) {
    case PLAIN_F16:
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
    case PLAIN_BF16: {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    default:
        return _mm256_loadu_ps((const float *)w + i);
    }
}

INLINE float load1(int kind, const void *w, int i)
{
    switch (kind) {
    case PLAIN_F16:  return _cvtsh_ss(((const uint16_t *)w)[i]);
    case PLAIN_BF16: return duet_bf16_to_fp32(((const uint16_t *)w)[i]);
    default:         return ((const float *)w)[i];
    }
}

INLINE void dot_plain(int kind, int NX, int k, const void *w, const float *x, size_t ldx,
                      float *out, size_t ldo)
{
    __m256 acc0[DUET_CPU_DOT_MAX_NX], acc1[DUET_CPU_DOT_MAX_NX];
    _Pragma("GCC unroll 4")
    for (int t = 0; t < NX; t++)
        acc0[t] = acc1[t] = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= k; i += 16) {
        __m256 w0 = load8(kind, w, i), w1 = load8(kind, w, i + 8);
        _Pragma("GCC unroll 4")
        for (int t = 0; t < NX; t++) {
            const float *xt = x + (size_t)t * ldx + i;
            acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xt), acc0[t]);
            acc1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xt + 8), acc1[t]);
        }
    }
    for (; i + 8 <= k; i += 8) {
        __m256 w0 = load8(kind, w, i);
        _Pragma("GCC unroll 4")
        for (int t = 0; t < NX; t++)
            acc0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + (size_t)t * ldx + i), acc0[t]);
    }
    _Pragma("GCC unroll 4")
    for (int t = 0; t < NX; t++) {
        const float *xt = x + (size_t)t * ldx;
        float sum = hsum(_mm256_add_ps(acc0[t], acc1[t]));
        for (int j = i; j < k; j++)
            sum += load1(kind, w, j) * xt[j];
        out[(size_t)t * ldo] = sum;
    }
}

enum { BLOCK_Q8_0, BLOCK_Q4_0, BLOCK_Q4_1 };

/* Decodes block b of a row into 32 floats w[0..3] (elements 8i .. 8i+7 in w[i]). */
INLINE void decode_block(int kind, const void *row, int b, __m256 w[4])
{
    if (kind == BLOCK_Q8_0) {
        const duet_block_q8_0_t *blk = (const duet_block_q8_0_t *)row + b;
        __m256 d = _mm256_set1_ps(_cvtsh_ss(blk->d));
        _Pragma("GCC unroll 4")
        for (int i = 0; i < 4; i++) {
            __m128i q = _mm_loadl_epi64((const __m128i *)(blk->qs + 8 * i));
            w[i] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q)));
        }
        return;
    }
    const __m128i m4 = _mm_set1_epi8(0x0f);
    const uint8_t *qs;
    uint16_t dh;
    if (kind == BLOCK_Q4_0) {
        const duet_block_q4_0_t *blk = (const duet_block_q4_0_t *)row + b;
        qs = blk->qs;
        dh = blk->d;
    } else {
        const duet_block_q4_1_t *blk = (const duet_block_q4_1_t *)row + b;
        qs = blk->qs;
        dh = blk->d;
    }
    __m128i raw = _mm_loadu_si128((const __m128i *)qs);
    __m128i lo = _mm_and_si128(raw, m4);                     /* elements 0..15 */
    __m128i hi = _mm_and_si128(_mm_srli_epi16(raw, 4), m4);  /* elements 16..31 */
    __m256 d = _mm256_set1_ps(_cvtsh_ss(dh));
    if (kind == BLOCK_Q4_0) {
        const __m128i eight = _mm_set1_epi8(8);
        lo = _mm_sub_epi8(lo, eight);
        hi = _mm_sub_epi8(hi, eight);
        w[0] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)));
        w[1] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))));
        w[2] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)));
        w[3] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))));
    } else {
        __m256 m = _mm256_set1_ps(_cvtsh_ss(((const duet_block_q4_1_t *)row + b)->m));
        w[0] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), m);
        w[1] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), m);
        w[2] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), m);
        w[3] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), m);
    }
}

INLINE void dot_block(int kind, int NX, int k, const void *w_row, const float *x, size_t ldx,
                      float *out, size_t ldo)
{
    /* Four FMA chains per row when one or two rows run (else the FMA latency, not the decode,
     * bounds a single-token matmul); two when more rows give independent chains anyway. */
    const int CH = NX <= 2 ? 4 : 2;
    __m256 acc[DUET_CPU_DOT_MAX_NX][4];
    _Pragma("GCC unroll 4")
    for (int t = 0; t < NX; t++)
        _Pragma("GCC unroll 4")
        for (int c = 0; c < 4; c++)
            acc[t][c] = _mm256_setzero_ps();
    int nb = k / DUET_QK;
    for (int b = 0; b < nb; b++) {
        __m256 w[4];
        decode_block(kind, w_row, b, w);
        _Pragma("GCC unroll 4")
        for (int t = 0; t < NX; t++) {
            const float *xt = x + (size_t)t * ldx + (size_t)b * DUET_QK;
            _Pragma("GCC unroll 4")
            for (int i = 0; i < 4; i++)
                acc[t][i % CH] = _mm256_fmadd_ps(w[i], _mm256_loadu_ps(xt + 8 * i), acc[t][i % CH]);
        }
    }
    _Pragma("GCC unroll 4")
    for (int t = 0; t < NX; t++) {
        __m256 sum = _mm256_add_ps(acc[t][0], acc[t][1]);
        if (CH == 4)
            sum = _mm256_add_ps(sum, _mm256_add_ps(acc[t][2], acc[t][3]));
        out[(size_t)t * ldo] = hsum(sum);
    }
}

/* Picks the instance compiled for nx rows; blocked says which family kind belongs to. */
INLINE void dot_nx(int blocked, int kind, int k, const void *w, const float *x, size_t ldx, int nx,
                   float *out, size_t ldo)
{
    switch (nx) {
    case 1:
        blocked ? dot_block(kind, 1, k, w, x, ldx, out, ldo) : dot_plain(kind, 1, k, w, x, ldx, out, ldo);
        break;
    case 2:
        blocked ? dot_block(kind, 2, k, w, x, ldx, out, ldo) : dot_plain(kind, 2, k, w, x, ldx, out, ldo);
        break;
    case 3:
        blocked ? dot_block(kind, 3, k, w, x, ldx, out, ldo) : dot_plain(kind, 3, k, w, x, ldx, out, ldo);
        break;
    default:
        blocked ? dot_block(kind, 4, k, w, x, ldx, out, ldo) : dot_plain(kind, 4, k, w, x, ldx, out, ldo);
        break;
    }
}

static void dot_f32(int k, const void *w, const float *x, size_t ldx, int nx, float *out, size_t ldo)
{
    dot_nx(0, PLAIN_F32, k, w, x, ldx, nx, out, ldo);
}

static void dot_f16(int k, const void *w, const float *x, size_t ldx, int nx, float *out, size_t ldo)
{
    dot_nx(0, PLAIN_F16, k, w, x, ldx, nx, out, ldo);
}

static void dot_bf16(int k, const void *w, const float *x, size_t ldx, int nx, float *out, size_t ldo)
{
    dot_nx(0, PLAIN_BF16, k, w, x, ldx, nx, out, ldo);
}

static void dot_q8_0(int k, const void *w, const float *x, size_t ldx, int nx, float *out, size_t ldo)
{
    dot_nx(1, BLOCK_Q8_0, k, w, x, ldx, nx, out, ldo);
}

static void dot_q4_0(int k, const void *w, const float *x, size_t ldx, int nx, float *out, size_t ldo)
{
    dot_nx(1, BLOCK_Q4_0, k, w, x, ldx, nx, out, ldo);
}

static void dot_q4_1(int k, const void *w, const float *x, size_t ldx, int nx, float *out, size_t ldo)
{
    dot_nx(1, BLOCK_Q4_1, k, w, x, ldx, nx, out, ldo);
}

/* ---- attention scores ----
 * Eight K rows at a time, each into its own accumulator, then one transposing reduction (hadd
 * tree) gives the eight sums in one register instead of eight horizontal sums. A lone row is
 * reduced in the very same lane order, so s[j] does not depend on which path it took. */

INLINE float lanes_sum(__m256 v)  /* ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)) */
{
    __m256 h = _mm256_hadd_ps(v, v);
    h = _mm256_hadd_ps(h, h);
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}

static void dot_rows(float *s, const float *q, const float *k, int nk, int n)
{
    int n8 = n & ~7, j = 0;
    for (; j + 8 <= nk; j += 8) {
        const float *kj = k + (size_t)j * n;
        __m256 a[8];
        _Pragma("GCC unroll 8")
        for (int r = 0; r < 8; r++)
            a[r] = _mm256_setzero_ps();
        for (int i = 0; i < n8; i += 8) {
            __m256 qv = _mm256_loadu_ps(q + i);
            _Pragma("GCC unroll 8")
            for (int r = 0; r < 8; r++)
                a[r] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kj + (size_t)r * n + i), a[r]);
        }
        __m256 h01 = _mm256_hadd_ps(a[0], a[1]), h23 = _mm256_hadd_ps(a[2], a[3]);
        __m256 h45 = _mm256_hadd_ps(a[4], a[5]), h67 = _mm256_hadd_ps(a[6], a[7]);
        __m256 h0123 = _mm256_hadd_ps(h01, h23), h4567 = _mm256_hadd_ps(h45, h67);
        __m256 lo = _mm256_permute2f128_ps(h0123, h4567, 0x20), hi = _mm256_permute2f128_ps(h0123, h4567, 0x31);
        _mm256_storeu_ps(s + j, _mm256_add_ps(lo, hi));
        for (int r = 0; r < 8 && n8 < n; r++)
            for (int i = n8; i < n; i++)
                s[j + r] += q[i] * kj[(size_t)r * n + i];
    }
    for (; j < nk; j++) {
        const float *kj = k + (size_t)j * n;
        __m256 a = _mm256_setzero_ps();
        for (int i = 0; i < n8; i += 8)
            a = _mm256_fmadd_ps(_mm256_loadu_ps(q + i), _mm256_loadu_ps(kj + i), a);
        s[j] = lanes_sum(a);
        for (int i = n8; i < n; i++)
            s[j] += q[i] * kj[i];
    }
}

/* ---- elementwise and row kernels; each ends with a scalar tail for n % 8 ---- */

static float sum_sq(const float *x, int n)
{
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
        acc0 = _mm256_fmadd_ps(a, a, acc0);
        acc1 = _mm256_fmadd_ps(b, b, acc1);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 a = _mm256_loadu_ps(x + i);
        acc0 = _mm256_fmadd_ps(a, a, acc0);
    }
    float sum = hsum(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++)
        sum += x[i] * x[i];
    return sum;
}

static void scale_mul(float *out, const float *x, float s, const float *w, int n)
{
    __m256 vs = _mm256_set1_ps(s);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs),
                                                _mm256_loadu_ps(w + i)));
    for (; i < n; i++)
        out[i] = x[i] * s * w[i];
}

static void scale(float *out, const float *x, float s, int n)
{
    __m256 vs = _mm256_set1_ps(s);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), vs));
    for (; i < n; i++)
        out[i] = x[i] * s;
}

static float exp_shift_sum(float *s, int n, float shift)
{
    __m256 vshift = _mm256_set1_ps(shift), acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + i), vshift));
        _mm256_storeu_ps(s + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    float sum = hsum(acc);
    for (; i < n; i++) {
        s[i] = expf(s[i] - shift);
        sum += s[i];
    }
    return sum;
}

static void axpy_f16(float *acc, float a, const uint16_t *v, int n)
{
    __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 vv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + i)));
        _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(va, vv, _mm256_loadu_ps(acc + i)));
    }
    for (; i < n; i++)
        acc[i] += a * _cvtsh_ss(v[i]);
}

/* Up to 32 outputs stay in registers while the V rows stream past; each output still sees the
 * rows in order, one FMA each, as axpy would do. */
static void axpy_rows(float *acc, const float *p, const float *v, int nv, int n)
{
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        __m256 a0 = _mm256_loadu_ps(acc + i), a1 = _mm256_loadu_ps(acc + i + 8);
        __m256 a2 = _mm256_loadu_ps(acc + i + 16), a3 = _mm256_loadu_ps(acc + i + 24);
        for (int j = 0; j < nv; j++) {
            const float *vj = v + (size_t)j * n + i;
            __m256 pj = _mm256_set1_ps(p[j]);
            a0 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj), a0);
            a1 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8), a1);
            a2 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 16), a2);
            a3 = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 24), a3);
        }
        _mm256_storeu_ps(acc + i, a0);
        _mm256_storeu_ps(acc + i + 8, a1);
        _mm256_storeu_ps(acc + i + 16, a2);
        _mm256_storeu_ps(acc + i + 24, a3);
    }
    for (; i + 8 <= n; i += 8) {
        __m256 a0 = _mm256_loadu_ps(acc + i);
        for (int j = 0; j < nv; j++)
            a0 = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_loadu_ps(v + (size_t)j * n + i), a0);
        _mm256_storeu_ps(acc + i, a0);
    }
    for (; i < n; i++)
        for (int j = 0; j < nv; j++)
            acc[i] += p[j] * v[(size_t)j * n + i];
}

static void f16_to_f32(float *dst, const uint16_t *src, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
    for (; i < n; i++)
        dst[i] = _cvtsh_ss(src[i]);
}

/* F16C rounds to nearest even, as duet_fp32_to_fp16 does, so both paths store the same bits. */
static void f32_to_f16(uint16_t *dst, const float *src, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        dst[i] = duet_fp32_to_fp16(src[i]);
}

static void rope_row(float *x, const float *cos_t, const float *sin_t, int half, int neox)
{
    int j = 0;
    if (neox) {
        for (; j + 8 <= half; j += 8) {
            __m256 a = _mm256_loadu_ps(x + j), b = _mm256_loadu_ps(x + j + half);
            __m256 c = _mm256_loadu_ps(cos_t + j), s = _mm256_loadu_ps(sin_t + j);
            _mm256_storeu_ps(x + j, _mm256_fmsub_ps(a, c, _mm256_mul_ps(b, s)));
            _mm256_storeu_ps(x + j + half, _mm256_fmadd_ps(b, c, _mm256_mul_ps(a, s)));
        }
        for (; j < half; j++) {
            float a = x[j], b = x[j + half];
            x[j] = a * cos_t[j] - b * sin_t[j];
            x[j + half] = b * cos_t[j] + a * sin_t[j];
        }
        return;
    }
    /* Interleaved pairs: 8 floats hold 4 pairs (a0 b0 a1 b1 ...); cos/sin are spread to
     * (c0 c0 c1 c1 ...), and fmaddsub gives a*c - b*s in even lanes, b*c + a*s in odd ones. */
    const __m256i dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
    for (; j + 4 <= half; j += 4) {
        __m256 v = _mm256_loadu_ps(x + 2 * j);
        __m256 c = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(cos_t + j)), dup);
        __m256 s = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_loadu_ps(sin_t + j)), dup);
        __m256 swapped = _mm256_permute_ps(v, 0xb1);  /* b0 a0 b1 a1 ... */
        _mm256_storeu_ps(x + 2 * j, _mm256_fmaddsub_ps(v, c, _mm256_mul_ps(swapped, s)));
    }
    for (; j < half; j++) {
        float a = x[2 * j], b = x[2 * j + 1];
        x[2 * j] = a * cos_t[j] - b * sin_t[j];
        x[2 * j + 1] = b * cos_t[j] + a * sin_t[j];
    }
}

static void silu_mul(float *out, const float *g, const float *u, size_t n)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 vg = _mm256_loadu_ps(g + i);
        __m256 den = _mm256_add_ps(one, exp256(_mm256_sub_ps(_mm256_setzero_ps(), vg)));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(vg, den), _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++)
        out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void add(float *x, const float *y, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_add_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++)
        x[i] += y[i];
}

static const duet_cpu_ops_t ops_avx2 = {
    .name = "avx2",
    .dot_f32 = dot_f32,
    .dot_f16 = dot_f16,
    .dot_bf16 = dot_bf16,
    .dot_q8_0 = dot_q8_0,
    .dot_q4_0 = dot_q4_0,
    .dot_q4_1 = dot_q4_1,
    .dot_rows = dot_rows,
    .sum_sq = sum_sq,
    .scale_mul = scale_mul,
    .scale = scale,
    .exp_shift_sum = exp_shift_sum,
    .axpy_f16 = axpy_f16,
    .axpy_rows = axpy_rows,
    .f16_to_f32 = f16_to_f32,
    .f32_to_f16 = f32_to_f16,
    .rope_row = rope_row,
    .silu_mul = silu_mul,
    .add = add,
};

const duet_cpu_ops_t *duet_cpu_ops_avx2(void)
{
    return &ops_avx2;
}

#else

const duet_cpu_ops_t *duet_cpu_ops_avx2(void)
{
    return NULL;
}

#endif
