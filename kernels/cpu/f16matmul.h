/* kernels/cpu/f16matmul.h — the F16 matmul of the CPU backend (internal to kernels/cpu): F16
 * weights repacked at load so that one 256-bit load holds one column of 16 rows, against f32
 * activations as they are.
 *
 * Every output is one chain of f32 fused multiply-adds over k in order, acc = fma(w[k], x[k], acc)
 * from acc = 0, then + bias: the same steps in the plain C reference and in every tile shape of
 * the vector kernel, so a row's result for a token is bit for bit the same however tokens, rows
 * and threads are split. */
#ifndef DUET_KERNELS_CPU_F16MATMUL_H
#define DUET_KERNELS_CPU_F16MATMUL_H

#include <stddef.h>
#include <stdint.h>

#include "../../lib/base/status.h"
#include "../backend.h"

#define DUET_F16M_ROWS 16   /* rows per group: one f32 lane each in 512 bits */
/* The vector kernel's tiles: DUET_F16M_TILE_GROUPS row groups, or DUET_F16M_DECODE_GROUPS for
 * calls of at most DUET_F16M_DECODE_TOKENS tokens; callers that split the groups between threads
 * split them in these units, so that no tile is cut short. */
#define DUET_F16M_TILE_GROUPS 2
#define DUET_F16M_DECODE_TOKENS 3
#define DUET_F16M_DECODE_GROUPS 4

/* A repacked F16 weight: group g holds rows 16g .. 16g+15 (missing rows of the last group are
 * zero) as [cols][16] f16, element (k, r) = w[16g + r][k], and starts on a 64-byte boundary. */
typedef struct {
    int rows, cols;
    int groups;          /* ceil(rows / 16) */
    size_t group_elems;  /* f16 values from one group to the next: cols * 16, rounded up to 32 */
    uint16_t *data;      /* [groups][group_elems], 64-byte aligned */
} duet_cpu_f16packed_t;

/* Repacks w (an F16 weight, rows as in the GGUF file); *p_out is freed with
 * duet_cpu_f16packed_free. w->data is only read. */
duet_status_t duet_cpu_f16_pack(const duet_weight_t *w, duet_cpu_f16packed_t **p_out);
void duet_cpu_f16packed_free(duet_cpu_f16packed_t *p);

/* out[t * ldo + r] = row r of w times x[t * ldx + 0 .. cols) (+ bias[r] when bias is not NULL)
 * for the rows of groups g0 .. g1-1 and tokens t < n. */
typedef void (*duet_cpu_f16gemm_fn)(const duet_cpu_f16packed_t *w, int g0, int g1, const float *x,
                                    size_t ldx, int n, const float *bias, float *out, size_t ldo);

/* The plain C version: the reference the vectorized one must match bit for bit. */
void duet_cpu_f16gemm_ref(const duet_cpu_f16packed_t *w, int g0, int g1, const float *x, size_t ldx,
                          int n, const float *bias, float *out, size_t ldo);

/* The AVX-512 version, or NULL when this build has none (the caller checks the CPU). */
duet_cpu_f16gemm_fn duet_cpu_f16gemm_avx512(void);

#endif
