/* kernels/cpu/f16matmul.c — repacking of F16 weights into 16-row groups, and the plain C reference
 * of the F16 matmul; see f16matmul.h. */
#include "f16matmul.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../dtype.h"

duet_status_t duet_cpu_f16_pack(const duet_weight_t *w, duet_cpu_f16packed_t **p_out)
{
    if (w->type != DUET_TYPE_F16 || w->rows < 1 || w->cols < 1)
        return DUET_ERR_INVALID;
    duet_cpu_f16packed_t *p = calloc(1, sizeof *p);
    if (!p)
        return DUET_ERR_NOMEM;
    p->rows = w->rows;
    p->cols = w->cols;
    p->groups = (w->rows + DUET_F16M_ROWS - 1) / DUET_F16M_ROWS;
    /* 32 values are 64 bytes: every group starts on a cache line, so the 256-bit loads of the
     * kernel never split one. */
    p->group_elems = ((size_t)w->cols * DUET_F16M_ROWS + 31) & ~(size_t)31;
    size_t bytes = (size_t)p->groups * p->group_elems * sizeof *p->data;
    p->data = aligned_alloc(64, bytes);
    if (!p->data) {
        free(p);
        return DUET_ERR_NOMEM;
    }
    memset(p->data, 0, bytes);  /* missing rows: zero weights, zero outputs, never read back */
    const uint8_t *src = w->data;
    for (int r = 0; r < w->rows; r++) {
        const uint16_t *row = (const uint16_t *)(src + (size_t)r * w->row_bytes);
        uint16_t *dst = p->data + (size_t)(r / DUET_F16M_ROWS) * p->group_elems + r % DUET_F16M_ROWS;
        for (int k = 0; k < w->cols; k++)
            dst[(size_t)k * DUET_F16M_ROWS] = row[k];
    }
    *p_out = p;
    return DUET_OK;
}

void duet_cpu_f16packed_free(duet_cpu_f16packed_t *p)
{
    if (!p)
        return;
    free(p->data);
    free(p);
}

void duet_cpu_f16gemm_ref(const duet_cpu_f16packed_t *w, int g0, int g1, const float *x, size_t ldx,
                          int n, const float *bias, float *out, size_t ldo)
{
    for (int g = g0; g < g1; g++) {
        const uint16_t *gw = w->data + (size_t)g * w->group_elems;
        for (int r = 0; r < DUET_F16M_ROWS && g * DUET_F16M_ROWS + r < w->rows; r++) {
            int row = g * DUET_F16M_ROWS + r;
            for (int t = 0; t < n; t++) {
                const float *xt = x + (size_t)t * ldx;
                float acc = 0.0f;
                for (int k = 0; k < w->cols; k++)
                    acc = fmaf(duet_fp16_to_fp32(gw[(size_t)k * DUET_F16M_ROWS + r]), xt[k], acc);
                out[(size_t)t * ldo + row] = bias ? acc + bias[row] : acc;
            }
        }
    }
}
