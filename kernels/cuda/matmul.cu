/* kernels/cuda/matmul.cu — quantized GEMV for decode (and any matmul without cuBLAS): the weight
 * rows are read in their GGUF block formats directly, one warp per row, every token of a group of
 * GEMV_NX sharing each decoded block. Also the dequantizer feeding cuBLAS for prefill. */
#include "ops.cuh"

#define GEMV_WARPS 4
#define GEMV_THREADS (GEMV_WARPS * DUET_CU_WARP)
#define GEMV_NX 4   /* tokens per pass over a row */

/* acc[t] += this lane's share of dot(row, x_t) for t < nx. Block types: lane l takes block
 * l / 8 of each group of four and four of its elements ((l % 8) * 4.. for Q8_0; bytes
 * (l % 8) * 2, +1 and their high nibbles for Q4_*), so a warp reads four blocks at a time. */
template <int TYPE>
static __device__ __forceinline__ void gemv_row(const uint8_t *row, int cols, const float *x,
                                                int nx, int lane, float acc[GEMV_NX])
{
    if (TYPE == DUET_TYPE_F32 || TYPE == DUET_TYPE_F16 || TYPE == DUET_TYPE_BF16) {
        for (int j = lane; j < cols; j += DUET_CU_WARP) {
            float w = duet_cu_load_elem(TYPE, row, j);
            for (int t = 0; t < GEMV_NX; t++)
                if (t < nx)
                    acc[t] += w * x[(size_t)t * cols + j];
        }
        return;
    }
    int nb = cols / DUET_QK, sub = lane % 8;
    for (int b = lane / 8; b < nb; b += 4) {
        const float *xb = x + (size_t)b * DUET_QK;
        if (TYPE == DUET_TYPE_Q8_0) {
            const duet_block_q8_0_t *blk = reinterpret_cast<const duet_block_q8_0_t *>(row) + b;
            float d = duet_cu_h2f(blk->d);
            float q0 = blk->qs[sub * 4], q1 = blk->qs[sub * 4 + 1];
            float q2 = blk->qs[sub * 4 + 2], q3 = blk->qs[sub * 4 + 3];
            for (int t = 0; t < GEMV_NX; t++)
                if (t < nx) {
                    const float *xt = xb + (size_t)t * cols + sub * 4;
                    acc[t] += d * (q0 * xt[0] + q1 * xt[1] + q2 * xt[2] + q3 * xt[3]);
                }
        } else {
            /* Q4_0 and Q4_1 share the nibble layout: low nibbles are elements 0..15. */
            const uint8_t *qs;
            float d, m = 0.0f;
            if (TYPE == DUET_TYPE_Q4_0) {
                const duet_block_q4_0_t *blk = reinterpret_cast<const duet_block_q4_0_t *>(row) + b;
                qs = blk->qs;
                d = duet_cu_h2f(blk->d);
            } else {
                const duet_block_q4_1_t *blk = reinterpret_cast<const duet_block_q4_1_t *>(row) + b;
                qs = blk->qs;
                d = duet_cu_h2f(blk->d);
                m = duet_cu_h2f(blk->m);
            }
            int e = sub * 2, off = TYPE == DUET_TYPE_Q4_0 ? 8 : 0;
            float q0 = (float)((qs[e] & 0x0f) - off), q1 = (float)((qs[e + 1] & 0x0f) - off);
            float q2 = (float)((qs[e] >> 4) - off), q3 = (float)((qs[e + 1] >> 4) - off);
            for (int t = 0; t < GEMV_NX; t++)
                if (t < nx) {
                    const float *xt = xb + (size_t)t * cols;
                    float x0 = xt[e], x1 = xt[e + 1], x2 = xt[e + 16], x3 = xt[e + 17];
                    acc[t] += d * (q0 * x0 + q1 * x1 + q2 * x2 + q3 * x3);
                    if (TYPE == DUET_TYPE_Q4_1)
                        acc[t] += m * (x0 + x1 + x2 + x3);
                }
        }
    }
}

/* Warps take rows in a grid-stride loop; the per-lane sums of each token are added by one lane
 * from shared memory (one warp barrier per group of tokens rather than a shuffle tree per token). */
template <int TYPE>
static __global__ void __launch_bounds__(GEMV_THREADS)
gemv_kernel(const uint8_t *w, size_t row_bytes, int rows, int cols, const float *bias,
            const float *x, int n, float *out)
{
    __shared__ float part[GEMV_WARPS][GEMV_NX][DUET_CU_WARP + 1];
    int warp = threadIdx.x / DUET_CU_WARP, lane = threadIdx.x % DUET_CU_WARP;
    for (int r0 = blockIdx.x * GEMV_WARPS; r0 < rows; r0 += gridDim.x * GEMV_WARPS) {
        int r = r0 + warp;
        for (int t0 = 0; t0 < n; t0 += GEMV_NX) {
            int nx = duet_cu_min(GEMV_NX, n - t0);
            float acc[GEMV_NX] = {0.0f, 0.0f, 0.0f, 0.0f};
            if (r < rows)
                gemv_row<TYPE>(w + (size_t)r * row_bytes, cols, x + (size_t)t0 * cols, nx, lane, acc);
            for (int t = 0; t < GEMV_NX; t++)
                part[warp][t][lane] = acc[t];
            __syncwarp();
            if (r < rows && lane < nx) {
                float sum = 0.0f;
                for (int i = 0; i < DUET_CU_WARP; i++)
                    sum += part[warp][lane][i];
                if (bias)
                    sum += bias[r];
                out[(size_t)(t0 + lane) * rows + r] = sum;
            }
            __syncwarp();  /* part is rewritten by the next group */
        }
    }
}

void duet_cu_gemv(cudaStream_t st, int n_sm, uint32_t type, const void *w, size_t row_bytes,
                  int rows, int cols, const float *bias, const float *x, int n, float *out)
{
    if (rows <= 0 || n <= 0)
        return;
    int blocks = (rows + GEMV_WARPS - 1) / GEMV_WARPS, cap = 16 * (n_sm > 0 ? n_sm : 1);
    dim3 grid(blocks < cap ? blocks : cap), block(GEMV_THREADS);
    const uint8_t *wb = static_cast<const uint8_t *>(w);
    switch (type) {
    case DUET_TYPE_F32:
        DUET_LAUNCH(gemv_kernel<DUET_TYPE_F32>, grid, block, 0, st, wb, row_bytes, rows, cols, bias, x, n, out);
        break;
    case DUET_TYPE_F16:
        DUET_LAUNCH(gemv_kernel<DUET_TYPE_F16>, grid, block, 0, st, wb, row_bytes, rows, cols, bias, x, n, out);
        break;
    case DUET_TYPE_BF16:
        DUET_LAUNCH(gemv_kernel<DUET_TYPE_BF16>, grid, block, 0, st, wb, row_bytes, rows, cols, bias, x, n, out);
        break;
    case DUET_TYPE_Q8_0:
        DUET_LAUNCH(gemv_kernel<DUET_TYPE_Q8_0>, grid, block, 0, st, wb, row_bytes, rows, cols, bias, x, n, out);
        break;
    case DUET_TYPE_Q4_0:
        DUET_LAUNCH(gemv_kernel<DUET_TYPE_Q4_0>, grid, block, 0, st, wb, row_bytes, rows, cols, bias, x, n, out);
        break;
    case DUET_TYPE_Q4_1:
        DUET_LAUNCH(gemv_kernel<DUET_TYPE_Q4_1>, grid, block, 0, st, wb, row_bytes, rows, cols, bias, x, n, out);
        break;
    }
}

/* ---- dequantize for cuBLAS: one block per row ---- */

static __global__ void dequant_kernel(uint32_t type, const uint8_t *w, size_t row_bytes, int cols,
                                      float *out)
{
    const uint8_t *row = w + (size_t)blockIdx.x * row_bytes;
    float *o = out + (size_t)blockIdx.x * cols;
    for (int j = threadIdx.x; j < cols; j += blockDim.x)
        o[j] = duet_cu_load_elem(type, row, j);
}

void duet_cu_dequant(cudaStream_t st, uint32_t type, const void *w, size_t row_bytes, int rows,
                     int cols, float *out)
{
    if (rows > 0)
        DUET_LAUNCH(dequant_kernel, dim3(rows), dim3(256), 0, st, type,
                    static_cast<const uint8_t *>(w), row_bytes, cols, out);
}
