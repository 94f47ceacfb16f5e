/* kernels/cuda/elementwise.cu — the row-wise and elementwise ops: embed, rmsnorm, rope, kv_write,
 * swiglu, add and bias. Each keeps the CPU reference's order of rounded operations where that is
 * cheap (embed, rope, kv_write and add give the same bits). */
#include "ops.cuh"

#define EW_THREADS 256
/* Grid-stride loops: enough blocks to fill a large GPU, no more. */
#define EW_MAX_BLOCKS 4096

static unsigned ew_blocks(size_t n)
{
    size_t b = (n + EW_THREADS - 1) / EW_THREADS;
    return (unsigned)(b < 1 ? 1 : b > EW_MAX_BLOCKS ? EW_MAX_BLOCKS : b);
}

/* ---- embed: one block per token ---- */

static __global__ void embed_kernel(uint32_t type, const uint8_t *table, size_t row_bytes, int cols,
                                    const int32_t *tokens, float *out)
{
    const uint8_t *row = table + (size_t)tokens[blockIdx.x] * row_bytes;
    float *o = out + (size_t)blockIdx.x * cols;
    for (int j = threadIdx.x; j < cols; j += blockDim.x)
        o[j] = duet_cu_load_elem(type, row, j);
}

void duet_cu_embed(cudaStream_t st, uint32_t type, const void *table, size_t row_bytes, int cols,
                   const int32_t *tokens, int n, float *out)
{
    if (n > 0)
        DUET_LAUNCH(embed_kernel, dim3(n), dim3(EW_THREADS), 0, st, type,
                    static_cast<const uint8_t *>(table), row_bytes, cols, tokens, out);
}

/* ---- rmsnorm: one block per row; warp sums, then the warps' sums in a fixed order ---- */

static __global__ void rmsnorm_kernel(const float *x, const float *w, float eps, int dim, float *out)
{
    __shared__ float warp_sums[EW_THREADS / DUET_CU_WARP];
    const float *xr = x + (size_t)blockIdx.x * dim;
    float *o = out + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < dim; j += blockDim.x)
        ss += xr[j] * xr[j];
    ss = duet_cu_warp_sum(ss);
    if (threadIdx.x % DUET_CU_WARP == 0)
        warp_sums[threadIdx.x / DUET_CU_WARP] = ss;
    __syncthreads();  /* every read of x is done before any write (out may be x) */
    float total = 0.0f;
    for (int i = 0; i < EW_THREADS / DUET_CU_WARP; i++)
        total += warp_sums[i];
    float s = 1.0f / sqrtf(total / (float)dim + eps);
    for (int j = threadIdx.x; j < dim; j += blockDim.x)
        o[j] = __fmul_rn(__fmul_rn(xr[j], s), w[j]);
}

void duet_cu_rmsnorm(cudaStream_t st, const float *x, const float *w, float eps, int n, int dim,
                     float *out)
{
    if (n > 0)
        DUET_LAUNCH(rmsnorm_kernel, dim3(n), dim3(EW_THREADS), 0, st, x, w, eps, dim, out);
}

/* ---- rope: one block per token; the angles once per token, in double as the CPU does ---- */

#define ROPE_THREADS 128

static __global__ void rope_kernel(float *x, const int32_t *pos, int n_head, int head_dim,
                                   int rot_dim, float theta, int neox)
{
    __shared__ float cos_t[DUET_CU_ATTN_MAX_HD / 2], sin_t[DUET_CU_ATTN_MAX_HD / 2];
    int half = rot_dim / 2;
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        double freq = pow((double)theta, -2.0 * j / (double)rot_dim);
        double angle = (double)pos[blockIdx.x] * freq;
        cos_t[j] = (float)cos(angle);
        sin_t[j] = (float)sin(angle);
    }
    __syncthreads();
    float *xt = x + (size_t)blockIdx.x * n_head * head_dim;
    for (int idx = threadIdx.x; idx < n_head * half; idx += blockDim.x) {
        int h = idx / half, j = idx % half;
        float *xh = xt + (size_t)h * head_dim;
        int i0 = neox ? j : 2 * j, i1 = neox ? j + half : 2 * j + 1;
        float a = xh[i0], b = xh[i1];
        xh[i0] = __fsub_rn(__fmul_rn(a, cos_t[j]), __fmul_rn(b, sin_t[j]));
        xh[i1] = __fadd_rn(__fmul_rn(b, cos_t[j]), __fmul_rn(a, sin_t[j]));
    }
}

void duet_cu_rope(cudaStream_t st, float *x, const int32_t *pos, int n, int n_head, int head_dim,
                  int rot_dim, float theta, int neox)
{
    if (n > 0)
        DUET_LAUNCH(rope_kernel, dim3(n), dim3(ROPE_THREADS), 0, st, x, pos, n_head, head_dim,
                    rot_dim, theta, neox);
}

/* ---- kv_write: one block per token, K and V of every KV head ---- */

static __global__ void kv_write_kernel(uint16_t *pool, int n_layer, int n_kv_head, int head_dim,
                                       int layer, const float *k, const float *v,
                                       const int32_t *slots)
{
    int slot = slots[blockIdx.x];
    int block = slot / DUET_KV_BLOCK_TOKENS, row = slot % DUET_KV_BLOCK_TOKENS;
    size_t slice = (size_t)n_kv_head * DUET_KV_BLOCK_TOKENS * head_dim;
    uint16_t *ks = pool + (((size_t)block * n_layer + layer) * 2) * slice;
    uint16_t *vs = ks + slice;
    size_t src0 = (size_t)blockIdx.x * n_kv_head * head_dim;
    for (int idx = threadIdx.x; idx < n_kv_head * head_dim; idx += blockDim.x) {
        int h = idx / head_dim, d = idx % head_dim;
        size_t dst = ((size_t)h * DUET_KV_BLOCK_TOKENS + row) * head_dim + d;
        ks[dst] = duet_cu_f2h(k[src0 + idx]);
        vs[dst] = duet_cu_f2h(v[src0 + idx]);
    }
}

void duet_cu_kv_write(cudaStream_t st, uint16_t *pool_base, int n_layer, int n_kv_head,
                      int head_dim, int layer, const float *k, const float *v,
                      const int32_t *slots, int n)
{
    if (n > 0)
        DUET_LAUNCH(kv_write_kernel, dim3(n), dim3(ROPE_THREADS), 0, st, pool_base, n_layer,
                    n_kv_head, head_dim, layer, k, v, slots);
}

/* ---- swiglu, add, bias ---- */

static __global__ void swiglu_kernel(const float *g, const float *u, size_t n, float *out)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static __global__ void add_kernel(float *x, const float *y, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        x[i] += y[i];
}

static __global__ void add_bias_kernel(float *out, const float *bias, size_t n, int rows)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] += bias[i % (size_t)rows];
}

void duet_cu_swiglu(cudaStream_t st, const float *gate, const float *up, size_t n, float *out)
{
    if (n > 0)
        DUET_LAUNCH(swiglu_kernel, dim3(ew_blocks(n)), dim3(EW_THREADS), 0, st, gate, up, n, out);
}

void duet_cu_add(cudaStream_t st, float *x, const float *y, size_t n)
{
    if (n > 0)
        DUET_LAUNCH(add_kernel, dim3(ew_blocks(n)), dim3(EW_THREADS), 0, st, x, y, n);
}

void duet_cu_add_bias(cudaStream_t st, float *out, const float *bias, int n, int rows)
{
    size_t total = (size_t)n * (size_t)rows;
    if (total > 0)
        DUET_LAUNCH(add_bias_kernel, dim3(ew_blocks(total)), dim3(EW_THREADS), 0, st, out, bias,
                    total, rows);
}
