/* kernels/cpu/ops_avx512.c — the row kernels that gain from 512-bit registers (attention scores
 * and the V accumulation), put over a copy of the AVX2 table for the AVX-512 ISA (this file alone
 * is built with AVX-512 flags; cpu_backend.c uses it only after checking the CPU). */
#include "ops.h"

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

int duet_cpu_ops_avx512_fill(duet_cpu_ops_t *ops)
{
    const duet_cpu_ops_t *base = duet_cpu_ops_avx2();
    if (!base)
        return 0;
    *ops = *base;
    ops->name = "avx512";
    ops->dot_rows = dot_rows;
    ops->axpy_rows = axpy_rows;
    return 1;
}

#else

int duet_cpu_ops_avx512_fill(duet_cpu_ops_t *ops)
{
    (void)ops;
    return 0;
}

#endif
