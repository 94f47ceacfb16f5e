/* kernels/cpu/ops.h — the row-level inner kernels of the CPU backend (internal to kernels/cpu):
 * one table filled by ops_scalar.c (plain C, the reference) and ops_avx2.c, and for AVX-512 CPUs
 * the AVX2 table with a few entries from ops_avx512.c. */
#ifndef DUET_KERNELS_CPU_OPS_H
#define DUET_KERNELS_CPU_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "../backend.h"

/* A weight row is dotted with up to this many activation rows per call, so one decode of the
 * row (nibbles to floats) serves several tokens. */
#define DUET_CPU_DOT_MAX_NX 4

/* out[t * ldo] = dot(w_row[0..k), x[t * ldx + 0..k)) for t < nx (1 <= nx <= DUET_CPU_DOT_MAX_NX).
 * k is a multiple of the type's block size; any k >= 0 for the plain types. */
typedef void (*duet_cpu_dot_fn)(int k, const void *w_row, const float *x, size_t ldx, int nx,
                                float *out, size_t ldo);

/* Query rows that share one KV head and one block table, for attn_rows: row r sees positions
 * 0 .. last[r] of the sequence (last[r] < 0: none; its output is zero). */
typedef struct {
    int n_rows;                    /* 1 .. DUET_CPU_ATTN_MAX_ROWS */
    const float *const *q;         /* [n_rows] -> head_dim floats */
    float *const *out;             /* [n_rows] -> head_dim floats */
    const int32_t *last;           /* [n_rows] */
    const duet_kv_pool_view_t *pool;
    int layer, kv_head;
    const int32_t *blocks;         /* the sequence's block table: position p in blocks[p / 16] */
    float scale;
} duet_cpu_attn_rows_t;

#define DUET_CPU_ATTN_MAX_ROWS 16

typedef struct {
    const char *name;

    /* Weight rows of each type against f32 activations (matmul), and an f16 K row against
     * query rows (attention scores). */
    duet_cpu_dot_fn dot_f32, dot_f16, dot_bf16, dot_q8_0, dot_q4_0, dot_q4_1;

    /* s[j] = dot(q[0..n), k[j * n + 0..n)) for j < nk (attention scores of one query row against
     * a block of f32 K rows). Each s[j] is computed the same way whatever nk is. */
    void  (*dot_rows)(float *s, const float *q, const float *k, int nk, int n);

    /* sum of x[i]^2 (rmsnorm). */
    float (*sum_sq)(const float *x, int n);
    /* out[i] = x[i] * s * w[i]; out may be x. */
    void  (*scale_mul)(float *out, const float *x, float s, const float *w, int n);
    /* out[i] = x[i] * s; out may be x. */
    void  (*scale)(float *out, const float *x, float s, int n);
    /* s[i] = exp(s[i] - shift); returns the sum of the new s[i] (softmax). */
    float (*exp_shift_sum)(float *s, int n, float shift);
    /* acc[i] += a * f16 v[i] (attention: one V row into the output accumulator). */
    void  (*axpy_f16)(float *acc, float a, const uint16_t *v, int n);
    /* acc[i] += p[j] * v[j * n + i] for j = 0 .. nv-1 in that order, i < n: the same sums as nv
     * axpy calls (attention: a block of V rows, already f32, into one output accumulator). */
    void  (*axpy_rows)(float *acc, const float *p, const float *v, int nv, int n);
    /* Optional (NULL: the backend builds attention from dot_rows, exp_shift_sum and axpy_rows):
     * softmax(q k^T * scale) v of each row of a over its visible positions, for head_dim a
     * multiple of 16 up to 256 (other sizes take the same fallback). A row's output depends on
     * that row alone, bit for bit, whatever rows share the call: prefill and decode, which group
     * rows differently, agree exactly. */
    void  (*attn_rows)(const duet_cpu_attn_rows_t *a);
    /* dst[i] = src[i] as f32 (exact; attention converts each K/V block once). */
    void  (*f16_to_f32)(float *dst, const uint16_t *src, int n);
    /* dst[i] = f16(src[i]), round to nearest even (kv_write). */
    void  (*f32_to_f16)(uint16_t *dst, const float *src, int n);
    /* Rotates pairs by angles whose cos/sin are given, half = rot_dim / 2 pairs:
     * neox = 0 pairs (2j, 2j+1), neox = 1 pairs (j, j + half). */
    void  (*rope_row)(float *x, const float *cos_t, const float *sin_t, int half, int neox);
    /* out[i] = silu(g[i]) * u[i] = g / (1 + exp(-g)) * u; out may be g. */
    void  (*silu_mul)(float *out, const float *g, const float *u, size_t n);
    /* x[i] += y[i]. */
    void  (*add)(float *x, const float *y, size_t n);
} duet_cpu_ops_t;

extern const duet_cpu_ops_t duet_cpu_ops_scalar;
/* The AVX2/FMA/F16C table, or NULL when this build has no such kernels (a non-x86 target). The
 * caller checks the CPU first. */
const duet_cpu_ops_t *duet_cpu_ops_avx2(void);
/* Fills *ops with the AVX2 table and the AVX-512 kernels over it (attention's dot_rows, axpy_rows
 * and attn_rows); 0 when this build has none. The caller checks the CPU first. */
int duet_cpu_ops_avx512_fill(duet_cpu_ops_t *ops);

#endif
