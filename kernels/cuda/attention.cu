/* kernels/cuda/attention.cu — causal attention over the paged KV pool, FlashAttention-2 style:
 * a block owns up to 32 query rows (tokens x heads of one GQA group, so every head of the group
 * shares each K/V load), split across its 4 warps, 8 rows each. It walks its KV positions one
 * pool block (16 positions) at a time: the block's K and V go to shared memory as f32, each warp
 * scores its rows, and each row keeps a running max m, sum l and unnormalized output (online
 * softmax: a rising max rescales l and the output by exp(m_old - m_new)). Positions past a
 * tile's last token are never loaded, so blocks above the diagonal are skipped.
 * The host (cuda_backend.cu) cuts the work into units: prefill tiles several tokens per unit;
 * decode one token per unit and, when few units would leave SMs idle on a long context, splits
 * the KV range (split-K) into parts merged by log-sum-exp in attn_merge_kernel. */
#include "ops.cuh"

#define ATT_WARPS 4
#define ATT_THREADS (ATT_WARPS * DUET_CU_WARP)
#define ATT_ROWS DUET_CU_ATTN_ROWS
#define ATT_ROWS_PER_WARP (ATT_ROWS / ATT_WARPS)   /* 8 */
#define ATT_DPL (DUET_CU_ATTN_MAX_HD / DUET_CU_WARP) /* head dims per lane, at most 8 */
#define ATT_T DUET_KV_BLOCK_TOKENS /* 16 positions per tile */

/* Shared memory, in floats: K [16][hd + 1] (padded: the 16 lanes scoring one row read 16
 * different K rows, which then fall in different banks), V [16][hd], Q [32][hd], P [32][16],
 * and per row m, l and the last rescale factor. */
static size_t attn_smem_bytes(int hd)
{
    return sizeof(float) * ((size_t)ATT_T * (hd + 1) + (size_t)ATT_T * hd + (size_t)ATT_ROWS * hd +
                            (size_t)ATT_ROWS * ATT_T + 3 * ATT_ROWS);
}

static __global__ void __launch_bounds__(ATT_THREADS)
attn_kernel(duet_cu_attn_args_t a, const duet_cu_attn_unit_t *units)
{
    const duet_cu_attn_unit_t u = units[blockIdx.x];
    const int hd = a.head_dim;
    float *Ks = duet_dyn_smem<float>();
    float *Vs = Ks + ATT_T * (hd + 1);
    float *Qs = Vs + ATT_T * hd;
    float *P = Qs + ATT_ROWS * hd;
    float *row_m = P + ATT_ROWS * ATT_T;
    float *row_l = row_m + ATT_ROWS;
    float *row_c = row_l + ATT_ROWS;

    const int tid = threadIdx.x, warp = tid / DUET_CU_WARP, lane = tid % DUET_CU_WARP;
    const int first = a.tok_start[u.seq];
    const int n_new = a.tok_start[u.seq + 1] - first;
    const int first_pos = a.kv_len[u.seq] - n_new;
    const int rows = u.ntok * u.nh;
    /* Positions this unit reads: up to its last token's own, within [p_lo, p_hi). */
    const int hi = duet_cu_min(u.p_hi, first_pos + u.tok0 + u.ntok);

    for (int idx = tid; idx < ATT_ROWS * hd; idx += ATT_THREADS) {
        int r = idx / hd, d = idx % hd;
        float v = 0.0f;
        if (r < rows) {
            size_t tok = (size_t)(first + u.tok0 + r / u.nh);
            v = a.q[(tok * a.n_head + u.head0 + r % u.nh) * hd + d];
        }
        Qs[idx] = v;
    }
    if (tid < ATT_ROWS) {
        row_m[tid] = -INFINITY;
        row_l[tid] = 0.0f;
    }
    float acc[ATT_ROWS_PER_WARP][ATT_DPL];
    for (int i = 0; i < ATT_ROWS_PER_WARP; i++)
        for (int k = 0; k < ATT_DPL; k++)
            acc[i][k] = 0.0f;

    const size_t slice = (size_t)a.n_kv_head * ATT_T * hd;
    for (int p0 = u.p_lo; p0 < hi; p0 += ATT_T) {
        int block = a.block_table[(size_t)u.seq * a.max_blocks + p0 / ATT_T];
        const uint16_t *ks = a.pool + (((size_t)block * a.n_layer + a.layer) * 2) * slice +
                             (size_t)u.kvh * ATT_T * hd;
        const uint16_t *vs = ks + slice;
        __syncthreads();  /* the previous tile's K/V (and, first time, Q and m/l) are settled */
        /* Rows past hi are not read from the pool at all: they may hold anything (another
         * sequence's stale data, NaN), and a zero V row keeps p * V finite where p is 0. */
        for (int idx = tid; idx < ATT_T * hd; idx += ATT_THREADS) {
            int j = idx / hd, d = idx % hd;
            bool ok = p0 + j < hi;
            Ks[j * (hd + 1) + d] = ok ? duet_cu_h2f(ks[idx]) : 0.0f;
            Vs[idx] = ok ? duet_cu_h2f(vs[idx]) : 0.0f;
        }
        __syncthreads();

        /* Scores: lanes 0-15 take rows 0-3 of this warp, lanes 16-31 rows 4-7, one position
         * (lane % 16) each. */
        {
            int j = lane % ATT_T, r0 = warp * ATT_ROWS_PER_WARP + (lane / ATT_T) * 4;
            const float *kr = Ks + j * (hd + 1);
            for (int i = 0; i < 4; i++) {
                int r = r0 + i;
                float s = -INFINITY;
                int pos = first_pos + u.tok0 + r / u.nh;
                if (r < rows && p0 + j <= pos && p0 + j < hi) {
                    const float *qr = Qs + r * hd;
                    float dot = 0.0f;
                    for (int d = 0; d < hd; d++)
                        dot += qr[d] * kr[d];
                    s = dot * a.scale;
                }
                P[r * ATT_T + j] = s;
            }
        }
        __syncwarp();
        /* Row statistics: lane i < 8 updates row i of this warp and turns its scores into
         * probabilities in place. */
        if (lane < ATT_ROWS_PER_WARP) {
            int r = warp * ATT_ROWS_PER_WARP + lane;
            float *pr = P + r * ATT_T;
            float mx = -INFINITY;
            for (int j = 0; j < ATT_T; j++)
                mx = fmaxf(mx, pr[j]);
            float m_old = row_m[r], m_new = fmaxf(m_old, mx);
            float corr = 1.0f, sum = 0.0f;
            if (m_new != -INFINITY) {
                corr = expf(m_old - m_new);  /* 0 when m_old is -inf; the output is still 0 */
                for (int j = 0; j < ATT_T; j++) {
                    float p = expf(pr[j] - m_new);
                    pr[j] = p;
                    sum += p;
                }
            } else {
                for (int j = 0; j < ATT_T; j++)
                    pr[j] = 0.0f;
            }
            row_m[r] = m_new;
            row_l[r] = row_l[r] * corr + sum;
            row_c[r] = corr;
        }
        __syncwarp();
        /* Output: lane owns dims lane, lane + 32, ... of each of the warp's rows. */
        for (int i = 0; i < ATT_ROWS_PER_WARP; i++) {
            int r = warp * ATT_ROWS_PER_WARP + i;
            const float *pr = P + r * ATT_T;
            float c = row_c[r];
            for (int k = 0; k < ATT_DPL; k++) {
                int d = lane + k * DUET_CU_WARP;
                if (d < hd) {
                    float o = acc[i][k] * c;
                    for (int j = 0; j < ATT_T; j++)
                        o += pr[j] * Vs[j * hd + d];
                    acc[i][k] = o;
                }
            }
        }
    }
    __syncthreads();  /* m/l written by lanes 0-7 (or at init by warp 0) are visible to all */

    for (int i = 0; i < ATT_ROWS_PER_WARP; i++) {
        int r = warp * ATT_ROWS_PER_WARP + i;
        if (r >= rows)
            continue;
        if (u.part < 0) {
            size_t tok = (size_t)(first + u.tok0 + r / u.nh);
            float *o = a.out + (tok * a.n_head + u.head0 + r % u.nh) * hd;
            float l = row_l[r], inv = l > 0.0f ? 1.0f / l : 0.0f;  /* no position: output 0 */
            for (int k = 0; k < ATT_DPL; k++) {
                int d = lane + k * DUET_CU_WARP;
                if (d < hd)
                    o[d] = acc[i][k] * inv;
            }
        } else {
            float *o = a.part_acc + ((size_t)u.part * ATT_ROWS + r) * hd;
            for (int k = 0; k < ATT_DPL; k++) {
                int d = lane + k * DUET_CU_WARP;
                if (d < hd)
                    o[d] = acc[i][k];
            }
            if (lane == 0) {
                a.part_ml[((size_t)u.part * 2) * ATT_ROWS + r] = row_m[r];
                a.part_ml[((size_t)u.part * 2 + 1) * ATT_ROWS + r] = row_l[r];
            }
        }
    }
}

/* One block per split row group: out = sum_i e^(m_i - M) acc_i / sum_i e^(m_i - M) l_i. */
static __global__ void attn_merge_kernel(duet_cu_attn_args_t a, const duet_cu_attn_merge_t *merges)
{
    const duet_cu_attn_merge_t g = merges[blockIdx.x];
    const int hd = a.head_dim;
    for (int idx = threadIdx.x; idx < g.nh * hd; idx += blockDim.x) {
        int r = idx / hd, d = idx % hd;
        float M = -INFINITY;
        for (int i = 0; i < g.n_parts; i++)
            M = fmaxf(M, a.part_ml[((size_t)(g.first + i) * 2) * ATT_ROWS + r]);
        float L = 0.0f, A = 0.0f;
        if (M != -INFINITY)
            for (int i = 0; i < g.n_parts; i++) {
                size_t part = (size_t)(g.first + i);
                float w = expf(a.part_ml[(part * 2) * ATT_ROWS + r] - M);
                L += w * a.part_ml[(part * 2 + 1) * ATT_ROWS + r];
                A += w * a.part_acc[(part * ATT_ROWS + r) * hd + d];
            }
        a.out[((size_t)g.tok * a.n_head + g.head0 + r) * hd + d] = L > 0.0f ? A * (1.0f / L) : 0.0f;
    }
}

cudaError_t duet_cu_attn_init(void)
{
    return cudaFuncSetAttribute(attn_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)attn_smem_bytes(DUET_CU_ATTN_MAX_HD));
}

void duet_cu_attn(cudaStream_t st, const duet_cu_attn_args_t *a, const duet_cu_attn_unit_t *units,
                  int n_units)
{
    if (n_units > 0)
        DUET_LAUNCH(attn_kernel, dim3(n_units), dim3(ATT_THREADS), attn_smem_bytes(a->head_dim), st,
                    *a, units);
}

void duet_cu_attn_merge(cudaStream_t st, const duet_cu_attn_args_t *a,
                        const duet_cu_attn_merge_t *merges, int n_merges)
{
    if (n_merges > 0)
        DUET_LAUNCH(attn_merge_kernel, dim3(n_merges), dim3(128), 0, st, *a, merges);
}
