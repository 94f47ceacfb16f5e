/* kernels/cpu/ops_scalar.c — the row-level kernels in plain C: the reference that every
 * vectorized table is tested against, and the fallback on CPUs without AVX2. */
#include "ops.h"

#include <math.h>

#include "../dtype.h"

/* One weight row against nx activation rows; each dot runs in element order, as written. */
static void dot_f32(int k, const void *w_row, const float *x, size_t ldx, int nx, float *out,
                    size_t ldo)
{
    const float *w = w_row;
    for (int t = 0; t < nx; t++) {
        const float *xt = x + (size_t)t * ldx;
        float sum = 0.0f;
        for (int i = 0; i < k; i++)
            sum += w[i] * xt[i];
        out[(size_t)t * ldo] = sum;
    }
}

static void dot_f16(int k, const void *w_row, const float *x, size_t ldx, int nx, float *out,
                    size_t ldo)
{
    const uint16_t *w = w_row;
    for (int t = 0; t < nx; t++) {
        const float *xt = x + (size_t)t * ldx;
        float sum = 0.0f;
        for (int i = 0; i < k; i++)
            sum += duet_fp16_to_fp32(w[i]) * xt[i];
        out[(size_t)t * ldo] = sum;
    }
}

static void dot_bf16(int k, const void *w_row, const float *x, size_t ldx, int nx, float *out,
                     size_t ldo)
{
    const uint16_t *w = w_row;
    for (int t = 0; t < nx; t++) {
        const float *xt = x + (size_t)t * ldx;
        float sum = 0.0f;
        for (int i = 0; i < k; i++)
            sum += duet_bf16_to_fp32(w[i]) * xt[i];
        out[(size_t)t * ldo] = sum;
    }
}

/* Quantized rows: x = d * q (+ m), dotted block by block. */
static void dot_q8_0(int k, const void *w_row, const float *x, size_t ldx, int nx, float *out,
                     size_t ldo)
{
    const duet_block_q8_0_t *w = w_row;
    int nb = k / DUET_QK;
    for (int t = 0; t < nx; t++) {
        const float *xt = x + (size_t)t * ldx;
        float sum = 0.0f;
        for (int b = 0; b < nb; b++, xt += DUET_QK) {
            float bsum = 0.0f;
            for (int j = 0; j < DUET_QK; j++)
                bsum += (float)w[b].qs[j] * xt[j];
            sum += duet_fp16_to_fp32(w[b].d) * bsum;
        }
        out[(size_t)t * ldo] = sum;
    }
}

static void dot_q4_0(int k, const void *w_row, const float *x, size_t ldx, int nx, float *out,
                     size_t ldo)
{
    const duet_block_q4_0_t *w = w_row;
    int nb = k / DUET_QK;
    for (int t = 0; t < nx; t++) {
        const float *xt = x + (size_t)t * ldx;
        float sum = 0.0f;
        for (int b = 0; b < nb; b++, xt += DUET_QK) {
            float bsum = 0.0f;
            for (int j = 0; j < DUET_QK / 2; j++) {
                bsum += (float)((w[b].qs[j] & 0x0f) - 8) * xt[j];
                bsum += (float)((w[b].qs[j] >> 4) - 8) * xt[j + DUET_QK / 2];
            }
            sum += duet_fp16_to_fp32(w[b].d) * bsum;
        }
        out[(size_t)t * ldo] = sum;
    }
}

static void dot_q4_1(int k, const void *w_row, const float *x, size_t ldx, int nx, float *out,
                     size_t ldo)
{
    const duet_block_q4_1_t *w = w_row;
    int nb = k / DUET_QK;
    for (int t = 0; t < nx; t++) {
        const float *xt = x + (size_t)t * ldx;
        float sum = 0.0f;
        for (int b = 0; b < nb; b++, xt += DUET_QK) {
            float qx = 0.0f, xs = 0.0f;  /* sum q*x and sum x: the block is d*q + m */
            for (int j = 0; j < DUET_QK / 2; j++) {
                qx += (float)(w[b].qs[j] & 0x0f) * xt[j];
                qx += (float)(w[b].qs[j] >> 4) * xt[j + DUET_QK / 2];
                xs += xt[j] + xt[j + DUET_QK / 2];
            }
            sum += duet_fp16_to_fp32(w[b].d) * qx + duet_fp16_to_fp32(w[b].m) * xs;
        }
        out[(size_t)t * ldo] = sum;
    }
}

static void dot_rows(float *s, const float *q, const float *k, int nk, int n)
{
    for (int j = 0; j < nk; j++)
        dot_f32(n, k + (size_t)j * n, q, 0, 1, s + j, 0);
}

/* In double: the reference should not lose precision on long rows. */
static float sum_sq(const float *x, int n)
{
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += (double)x[i] * x[i];
    return (float)sum;
}

static void scale_mul(float *out, const float *x, float s, const float *w, int n)
{
    for (int i = 0; i < n; i++)
        out[i] = x[i] * s * w[i];
}

static void scale(float *out, const float *x, float s, int n)
{
    for (int i = 0; i < n; i++)
        out[i] = x[i] * s;
}

static float exp_shift_sum(float *s, int n, float shift)
{
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        s[i] = expf(s[i] - shift);
        sum += s[i];
    }
    return sum;
}

static void axpy_f16(float *acc, float a, const uint16_t *v, int n)
{
    for (int i = 0; i < n; i++)
        acc[i] += a * duet_fp16_to_fp32(v[i]);
}

static void axpy_rows(float *acc, const float *p, const float *v, int nv, int n)
{
    for (int j = 0; j < nv; j++)
        for (int i = 0; i < n; i++)
            acc[i] += p[j] * v[(size_t)j * n + i];
}

static void f16_to_f32(float *dst, const uint16_t *src, int n)
{
    for (int i = 0; i < n; i++)
        dst[i] = duet_fp16_to_fp32(src[i]);
}

static void f32_to_f16(uint16_t *dst, const float *src, int n)
{
    for (int i = 0; i < n; i++)
        dst[i] = duet_fp32_to_fp16(src[i]);
}

static void rope_row(float *x, const float *cos_t, const float *sin_t, int half, int neox)
{
    for (int j = 0; j < half; j++) {
        int i0 = neox ? j : 2 * j;
        int i1 = neox ? j + half : 2 * j + 1;
        float a = x[i0], b = x[i1];
        x[i0] = a * cos_t[j] - b * sin_t[j];
        x[i1] = b * cos_t[j] + a * sin_t[j];
    }
}

static void silu_mul(float *out, const float *g, const float *u, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void add(float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] += y[i];
}

const duet_cpu_ops_t duet_cpu_ops_scalar = {
    .name = "scalar",
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
