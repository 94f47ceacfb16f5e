/* kernels/cpu/qmatmul.h — the integer matmul of the CPU backend (internal to kernels/cpu): block-type
 * weights repacked at load, 16 rows interleaved, against activations quantized once per matmul.
 *
 * Activations are quantized per block of 32, per row (a row's bytes depend on that row alone), in
 * one of two formats:
 *   16-bit: integers q (|q| <= 32639, x ~ d * q), each split into two signed bytes,
 *           q = 256 * hi + lo, so that an unsigned-by-signed byte dot product instruction (VNNI
 *           vpdpbusd) runs them against unsigned weight bytes at full 16-bit accuracy: two dot
 *           products per weight byte, within a few thousandths of the f32 result on the default
 *           model's logits;
 *   8-bit:  integers q (|q| <= 127), one byte each: half the dot products, so up to twice the
 *           prefill speed, but a coarser rounding (amax / 254 per value) that the callers use only
 *           where the logits allow it (cpu_backend.c says where and why).
 *
 * Weights become unsigned bytes u = q + z, with the zero point z = 128 for Q8_0 (q + 128), 8 for
 * Q4_0 and 0 for Q4_1 (their nibbles as stored). With S = sum of the 32 activation integers of a
 * block, per row and block (either format):
 *   Q8_0, Q4_0: d_w d_x (sum u q_x - z S)     Q4_1: d_w d_x sum u q_x + m_w d_x S
 * Activations are quantized for one weight type, so -z S comes precomputed with them: the kernels
 * start each block's integer sum from it, a broadcast from memory.
 * Integer sums are exact, so the result of a row for a token does not depend on how tokens or
 * rows are tiled: the float steps per (row, token) are the same in every kernel, block by block. */
#ifndef DUET_KERNELS_CPU_QMATMUL_H
#define DUET_KERNELS_CPU_QMATMUL_H

#include <stddef.h>
#include <stdint.h>

#include "../../lib/base/status.h"
#include "../backend.h"

#define DUET_QM_ROWS 16     /* rows per interleaved group: one int32 lane each in 512 bits */
#define DUET_QM_QMAX 32639  /* largest |q| of a 16-bit activation: 127 * 256 + 127 splits into bytes */
#define DUET_QM_QMAX8 127   /* largest |q| of an 8-bit activation */

/* A repacked weight. Group g (rows 16g .. 16g+15, missing rows of the last group are zero) is
 * contiguous and starts on a 64-byte boundary: first quants[nb][qbytes], then scales[nb][sbytes].
 *   quants of a block, Q8_0: [8 chunks][16 rows][4 bytes], chunk c = elements 4c .. 4c+3;
 *                      Q4_*: [4][16 rows][4 bytes], the low nibble of byte j of (k, row) is
 *                            element 8k + j, the high nibble element 8k + 4 + j;
 *   scales of a block: f16 d[16] (Q4_1: then f16 m[16]). */
typedef struct {
    uint32_t type;      /* DUET_TYPE_Q8_0, Q4_0 or Q4_1 */
    int rows, cols;
    int groups;         /* ceil(rows / 16) */
    int nb;             /* blocks of 32 per row */
    int qbytes;         /* 512 (Q8_0) or 256 */
    int sbytes;         /* 32, or 64 for Q4_1 */
    size_t group_bytes; /* nb * (qbytes + sbytes), rounded up to 64 */
    int act_vb;         /* activation bytes per value the backend multiplies it with: 2 (16-bit,
                         * the default of duet_cpu_pack) or 1 (8-bit) */
    uint8_t *data;      /* [groups][group_bytes], 64-byte aligned */
} duet_cpu_packed_t;

/* Whether a weight type has a packed form. */
int duet_cpu_packable(uint32_t type);
/* Repacks w (rows as in the GGUF file); *p_out is freed with duet_cpu_packed_free. */
duet_status_t duet_cpu_pack(const duet_weight_t *w, duet_cpu_packed_t **p_out);
void duet_cpu_packed_free(duet_cpu_packed_t *p);

/* One quantized activation row of k values (k a multiple of 32), nb = k / 32 blocks, vb bytes per
 * value (2: the 16-bit format, 1: the 8-bit one):
 *   int8 q[nb][32 * vb]   16-bit: the hi bytes of the block's 32 values, then the lo bytes;
 *                         8-bit: the 32 values
 *   float d[nb]           the scale, x ~ d * q (q = 256 hi + lo in the 16-bit format)
 *   float ds[nb]          d * S, S the sum of the block's 32 integers
 *   int32 zs[nb]          -z * S, z the zero point of the weights it is quantized for
 * padded to 64 bytes. */
static inline size_t duet_qact_row_bytes(int k, int vb)
{
    size_t nb = (size_t)k / 32;
    return (nb * 32 * (size_t)vb + nb * 12 + 63) & ~(size_t)63;
}

static inline const float *duet_qact_d(const void *row, int nb, int vb)
{
    return (const float *)((const uint8_t *)row + (size_t)nb * 32 * (size_t)vb);
}

/* The zero point z of a packed weight's bytes (see above). */
static inline int32_t duet_cpu_packed_zero(const duet_cpu_packed_t *p)
{
    return p->type == DUET_TYPE_Q8_0 ? 128 : p->type == DUET_TYPE_Q4_0 ? 8 : 0;
}

/* Quantizes one activation row into dst (duet_qact_row_bytes(k, vb) bytes, vb fixed per function)
 * for weights of zero point z. */
typedef void (*duet_cpu_qact_fn)(const float *x, int k, int32_t z, void *dst);

/* out[t * ldo + r] = row r of w times activation row t (+ bias[r] when bias is not NULL) for the
 * rows of groups g0 .. g1-1 and tokens t < n; act holds n rows of duet_qact_row_bytes(w->cols, vb),
 * vb = 2 (16-bit activations) or 1 (8-bit). */
typedef void (*duet_cpu_qgemm_fn)(const duet_cpu_packed_t *w, int g0, int g1, const void *act,
                                  int vb, int n, const float *bias, float *out, size_t ldo);

/* The plain C versions: the reference the vectorized ones must match bit for bit. */
void duet_cpu_qact_ref(const float *x, int k, int32_t z, void *dst);    /* 16-bit */
void duet_cpu_qact8_ref(const float *x, int k, int32_t z, void *dst);   /* 8-bit */
void duet_cpu_qgemm_ref(const duet_cpu_packed_t *w, int g0, int g1, const void *act, int vb, int n,
                        const float *bias, float *out, size_t ldo);

/* The AVX-512 VNNI versions, or NULL when this build has none (the caller checks the CPU). */
duet_cpu_qact_fn  duet_cpu_qact_avx512(void);
duet_cpu_qact_fn  duet_cpu_qact8_avx512(void);
duet_cpu_qgemm_fn duet_cpu_qgemm_avx512(void);

#endif
