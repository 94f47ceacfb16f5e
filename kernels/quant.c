/* kernels/quant.c — reference conversion of rows between f32 and every stored type, with the
 * block semantics of GGUF files (so rows we write load in other readers and vice versa). */
#include "quant.h"

#include <math.h>
#include <string.h>

static void quantize_q8_0(const float *x, duet_block_q8_0_t *y, int64_t nb)
{
    for (int64_t b = 0; b < nb; b++, x += DUET_QK) {
        float amax = 0.0f;
        for (int j = 0; j < DUET_QK; j++)
            amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = duet_fp32_to_fp16(d);
        for (int j = 0; j < DUET_QK; j++)
            y[b].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

/* d is the signed value of largest magnitude over -8, so that value maps exactly to q = 0 and
 * the other side keeps 7.5 steps: one more level of precision than symmetric rounding. */
static void quantize_q4_0(const float *x, duet_block_q4_0_t *y, int64_t nb)
{
    for (int64_t b = 0; b < nb; b++, x += DUET_QK) {
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < DUET_QK; j++) {
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        }
        float d = max / -8.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = duet_fp32_to_fp16(d);
        for (int j = 0; j < DUET_QK / 2; j++) {
            int q0 = (int)(x[j] * id + 8.5f);
            int q1 = (int)(x[j + DUET_QK / 2] * id + 8.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            y[b].qs[j] = (uint8_t)(q0 | q1 << 4);
        }
    }
}

static void quantize_q4_1(const float *x, duet_block_q4_1_t *y, int64_t nb)
{
    for (int64_t b = 0; b < nb; b++, x += DUET_QK) {
        float min = x[0], max = x[0];
        for (int j = 1; j < DUET_QK; j++) {
            min = fminf(min, x[j]);
            max = fmaxf(max, x[j]);
        }
        float d = (max - min) / 15.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        y[b].d = duet_fp32_to_fp16(d);
        y[b].m = duet_fp32_to_fp16(min);
        for (int j = 0; j < DUET_QK / 2; j++) {
            int q0 = (int)((x[j] - min) * id + 0.5f);
            int q1 = (int)((x[j + DUET_QK / 2] - min) * id + 0.5f);
            q0 = q0 < 15 ? q0 : 15;
            q1 = q1 < 15 ? q1 : 15;
            y[b].qs[j] = (uint8_t)(q0 | q1 << 4);
        }
    }
}

duet_status_t duet_quantize_row(uint32_t type, const float *src, void *dst, int64_t n)
{
    const duet_type_traits_t *t = duet_type_traits(type);
    if (!t)
        return DUET_ERR_UNSUPPORTED;
    if (n < 0 || n % t->block_elems != 0)
        return DUET_ERR_INVALID;
    int64_t nb = n / t->block_elems;
    switch (type) {
    case DUET_TYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case DUET_TYPE_F16:
        for (int64_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = duet_fp32_to_fp16(src[i]);
        break;
    case DUET_TYPE_BF16:
        for (int64_t i = 0; i < n; i++)
            ((uint16_t *)dst)[i] = duet_fp32_to_bf16(src[i]);
        break;
    case DUET_TYPE_Q8_0: quantize_q8_0(src, dst, nb); break;
    case DUET_TYPE_Q4_0: quantize_q4_0(src, dst, nb); break;
    case DUET_TYPE_Q4_1: quantize_q4_1(src, dst, nb); break;
    default: return DUET_ERR_UNSUPPORTED;
    }
    return DUET_OK;
}

duet_status_t duet_dequantize_row(uint32_t type, const void *src, float *dst, int64_t n)
{
    const duet_type_traits_t *t = duet_type_traits(type);
    if (!t)
        return DUET_ERR_UNSUPPORTED;
    if (n < 0 || n % t->block_elems != 0)
        return DUET_ERR_INVALID;
    int64_t nb = n / t->block_elems;
    switch (type) {
    case DUET_TYPE_F32:
        memcpy(dst, src, (size_t)n * sizeof(float));
        break;
    case DUET_TYPE_F16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = duet_fp16_to_fp32(((const uint16_t *)src)[i]);
        break;
    case DUET_TYPE_BF16:
        for (int64_t i = 0; i < n; i++)
            dst[i] = duet_bf16_to_fp32(((const uint16_t *)src)[i]);
        break;
    case DUET_TYPE_Q8_0:
        for (int64_t b = 0; b < nb; b++, dst += DUET_QK) {
            const duet_block_q8_0_t *x = (const duet_block_q8_0_t *)src + b;
            float d = duet_fp16_to_fp32(x->d);
            for (int j = 0; j < DUET_QK; j++)
                dst[j] = d * (float)x->qs[j];
        }
        break;
    case DUET_TYPE_Q4_0:
        for (int64_t b = 0; b < nb; b++, dst += DUET_QK) {
            const duet_block_q4_0_t *x = (const duet_block_q4_0_t *)src + b;
            float d = duet_fp16_to_fp32(x->d);
            for (int j = 0; j < DUET_QK / 2; j++) {
                dst[j] = d * (float)((x->qs[j] & 0x0f) - 8);
                dst[j + DUET_QK / 2] = d * (float)((x->qs[j] >> 4) - 8);
            }
        }
        break;
    case DUET_TYPE_Q4_1:
        for (int64_t b = 0; b < nb; b++, dst += DUET_QK) {
            const duet_block_q4_1_t *x = (const duet_block_q4_1_t *)src + b;
            float d = duet_fp16_to_fp32(x->d), m = duet_fp16_to_fp32(x->m);
            for (int j = 0; j < DUET_QK / 2; j++) {
                dst[j] = d * (float)(x->qs[j] & 0x0f) + m;
                dst[j + DUET_QK / 2] = d * (float)(x->qs[j] >> 4) + m;
            }
        }
        break;
    default: return DUET_ERR_UNSUPPORTED;
    }
    return DUET_OK;
}
