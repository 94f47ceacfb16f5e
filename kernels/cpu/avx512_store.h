/* kernels/cpu/avx512_store.h — the output store shared by the AVX-512 matmul kernels (internal to
 * kernels/cpu; include it only from files built with AVX-512 flags). */
#ifndef DUET_KERNELS_CPU_AVX512_STORE_H
#define DUET_KERNELS_CPU_AVX512_STORE_H

#include <immintrin.h>

/* out[row0 + i] = v[i] (+ bias[row0 + i]) for the i < 16 with row0 + i < rows: the 16 rows of one
 * group for one token, the missing rows of a last group neither read nor written. */
static inline __attribute__((always_inline)) void duet_avx512_store_rows(__m512 v, const float *bias,
                                                                         float *out, int row0, int rows)
{
    int live = rows - row0 < 16 ? rows - row0 : 16;
    __mmask16 m = (__mmask16)((1u << live) - 1);
    if (bias)
        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, bias + row0));
    _mm512_mask_storeu_ps(out + row0, m, v);
}

#endif
