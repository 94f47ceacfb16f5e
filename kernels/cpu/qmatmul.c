/* kernels/cpu/qmatmul.c — repacking of block-type weights into 16-row groups, and the plain C
 * reference of the integer matmul (activation quantization and the group kernel); see qmatmul.h. */
#include "qmatmul.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../dtype.h"

int duet_cpu_packable(uint32_t type)
{
    return type == DUET_TYPE_Q8_0 || type == DUET_TYPE_Q4_0 || type == DUET_TYPE_Q4_1;
}

/* The unsigned weight byte of element e (0..31) of a GGUF block, as the packed form keeps it. */
static uint8_t src_u8(uint32_t type, const uint8_t *row, int b, int e)
{
    switch (type) {
    case DUET_TYPE_Q8_0:
        return (uint8_t)(((const duet_block_q8_0_t *)row)[b].qs[e] + 128);
    case DUET_TYPE_Q4_0: {
        const uint8_t *qs = ((const duet_block_q4_0_t *)row)[b].qs;
        return e < 16 ? qs[e] & 0x0f : qs[e - 16] >> 4;
    }
    default: {
        const uint8_t *qs = ((const duet_block_q4_1_t *)row)[b].qs;
        return e < 16 ? qs[e] & 0x0f : qs[e - 16] >> 4;
    }
    }
}

/* Byte offset of element e of row r within a block's quants, and whether it is the high nibble. */
static size_t quant_offset(uint32_t type, int r, int e, int *high_p)
{
    if (type == DUET_TYPE_Q8_0) {
        *high_p = 0;
        return (size_t)(e / 4) * 64 + (size_t)r * 4 + (size_t)(e % 4);
    }
    int within = e % 8;
    *high_p = within >= 4;
    return (size_t)(e / 8) * 64 + (size_t)r * 4 + (size_t)(within % 4);
}

duet_status_t duet_cpu_pack(const duet_weight_t *w, duet_cpu_packed_t **p_out)
{
    if (!duet_cpu_packable(w->type) || w->rows < 1 || w->cols < 32 || w->cols % 32 != 0)
        return DUET_ERR_INVALID;
    duet_cpu_packed_t *p = calloc(1, sizeof *p);
    if (!p)
        return DUET_ERR_NOMEM;
    p->type = w->type;
    p->rows = w->rows;
    p->cols = w->cols;
    p->groups = (w->rows + DUET_QM_ROWS - 1) / DUET_QM_ROWS;
    p->nb = w->cols / 32;
    p->qbytes = w->type == DUET_TYPE_Q8_0 ? 512 : 256;
    p->sbytes = w->type == DUET_TYPE_Q4_1 ? 64 : 32;
    p->act_vb = 2;
    /* Groups start on a cache line, so the kernels' 64-byte loads are aligned. */
    p->group_bytes = ((size_t)p->nb * (size_t)(p->qbytes + p->sbytes) + 63) & ~(size_t)63;
    size_t bytes = (size_t)p->groups * p->group_bytes;
    p->data = aligned_alloc(64, bytes);
    if (!p->data) {
        free(p);
        return DUET_ERR_NOMEM;
    }
    memset(p->data, 0, bytes);  /* missing rows: zero quants and zero scales add nothing */
    const uint8_t *src = w->data;
    for (int g = 0; g < p->groups; g++) {
        uint8_t *gq = p->data + (size_t)g * p->group_bytes;
        uint16_t *gs = (uint16_t *)(gq + (size_t)p->nb * p->qbytes);
        for (int r = 0; r < DUET_QM_ROWS && g * DUET_QM_ROWS + r < w->rows; r++) {
            const uint8_t *row = src + (size_t)(g * DUET_QM_ROWS + r) * w->row_bytes;
            for (int b = 0; b < p->nb; b++) {
                uint8_t *bq = gq + (size_t)b * p->qbytes;
                uint16_t *bs = gs + (size_t)b * (p->sbytes / 2);
                for (int e = 0; e < 32; e++) {
                    int high;
                    size_t off = quant_offset(p->type, r, e, &high);
                    uint8_t u = src_u8(p->type, row, b, e);
                    bq[off] |= high ? (uint8_t)(u << 4) : u;
                }
                switch (p->type) {
                case DUET_TYPE_Q8_0: bs[r] = ((const duet_block_q8_0_t *)row)[b].d; break;
                case DUET_TYPE_Q4_0: bs[r] = ((const duet_block_q4_0_t *)row)[b].d; break;
                default:
                    bs[r] = ((const duet_block_q4_1_t *)row)[b].d;
                    bs[16 + r] = ((const duet_block_q4_1_t *)row)[b].m;
                    break;
                }
            }
        }
    }
    *p_out = p;
    return DUET_OK;
}

void duet_cpu_packed_free(duet_cpu_packed_t *p)
{
    if (!p)
        return;
    free(p->data);
    free(p);
}

void duet_cpu_qact_ref(const float *x, int k, int32_t z, void *dst)
{
    int nb = k / 32;
    int8_t *q = dst;
    float *d = (float *)((uint8_t *)dst + (size_t)nb * 64), *ds = d + nb;
    int32_t *zs = (int32_t *)(ds + nb);
    for (int b = 0; b < nb; b++, x += 32) {
        float amax = 0.0f;
        for (int e = 0; e < 32; e++)
            amax = fmaxf(amax, fabsf(x[e]));
        float id = amax > 0.0f ? (float)DUET_QM_QMAX / amax : 0.0f;
        int32_t s = 0;
        for (int e = 0; e < 32; e++) {
            long v = lrintf(x[e] * id);  /* round to nearest even, as the vector conversion */
            int qi = (int)(v > DUET_QM_QMAX ? DUET_QM_QMAX : v < -DUET_QM_QMAX ? -DUET_QM_QMAX : v);
            int lo = ((qi + 128) & 255) - 128;
            q[b * 64 + e] = (int8_t)((qi - lo) / 256);
            q[b * 64 + 32 + e] = (int8_t)lo;
            s += qi;
        }
        d[b] = amax / (float)DUET_QM_QMAX;
        ds[b] = d[b] * (float)s;
        zs[b] = -z * s;
    }
}

void duet_cpu_qact8_ref(const float *x, int k, int32_t z, void *dst)
{
    int nb = k / 32;
    int8_t *q = dst;
    float *d = (float *)((uint8_t *)dst + (size_t)nb * 32), *ds = d + nb;
    int32_t *zs = (int32_t *)(ds + nb);
    for (int b = 0; b < nb; b++, x += 32) {
        float amax = 0.0f;
        for (int e = 0; e < 32; e++)
            amax = fmaxf(amax, fabsf(x[e]));
        float id = amax > 0.0f ? (float)DUET_QM_QMAX8 / amax : 0.0f;
        int32_t s = 0;
        for (int e = 0; e < 32; e++) {
            long v = lrintf(x[e] * id);
            int qi = (int)(v > DUET_QM_QMAX8 ? DUET_QM_QMAX8 : v < -DUET_QM_QMAX8 ? -DUET_QM_QMAX8 : v);
            q[b * 32 + e] = (int8_t)qi;
            s += qi;
        }
        d[b] = amax / (float)DUET_QM_QMAX8;
        ds[b] = d[b] * (float)s;
        zs[b] = -z * s;
    }
}

void duet_cpu_qgemm_ref(const duet_cpu_packed_t *w, int g0, int g1, const void *act, int vb, int n,
                        const float *bias, float *out, size_t ldo)
{
    int nb = w->nb;
    size_t arb = duet_qact_row_bytes(w->cols, vb);
    for (int g = g0; g < g1; g++) {
        const uint8_t *gq = w->data + (size_t)g * w->group_bytes;
        const uint16_t *gs = (const uint16_t *)(gq + (size_t)nb * w->qbytes);
        for (int r = 0; r < DUET_QM_ROWS && g * DUET_QM_ROWS + r < w->rows; r++) {
            int row = g * DUET_QM_ROWS + r;
            for (int t = 0; t < n; t++) {
                const int8_t *aq = (const int8_t *)((const uint8_t *)act + (size_t)t * arb);
                const float *ad = duet_qact_d(aq, nb, vb), *ads = ad + nb;
                const int32_t *azs = (const int32_t *)(ads + nb);
                float acc = 0.0f;
                for (int b = 0; b < nb; b++) {
                    const uint8_t *bq = gq + (size_t)b * w->qbytes;
                    const uint16_t *bs = gs + (size_t)b * (w->sbytes / 2);
                    const int8_t *xb = aq + (size_t)b * 32 * (size_t)vb;
                    int32_t ah = 0, al = azs[b];
                    for (int e = 0; e < 32; e++) {
                        int high;
                        uint8_t byte = bq[quant_offset(w->type, r, e, &high)];
                        int32_t u = w->type == DUET_TYPE_Q8_0 ? byte : high ? byte >> 4 : byte & 0x0f;
                        if (vb == 2) {
                            ah += u * xb[e];
                            al += u * xb[32 + e];
                        } else {
                            al += u * xb[e];
                        }
                    }
                    float s = duet_fp16_to_fp32(bs[r]) * ad[b];
                    acc = fmaf((float)(ah * 256 + al), s, acc);
                    if (w->type == DUET_TYPE_Q4_1)
                        acc = fmaf(duet_fp16_to_fp32(bs[16 + r]), ads[b], acc);
                }
                out[(size_t)t * ldo + row] = bias ? acc + bias[row] : acc;
            }
        }
    }
}
