/* kernels/cuda/sample.cu — drawing tokens on the device: one block per row, the steps of
 * kernels/sample.h (which lib/engine/sampler.c follows on the host), so both pick the same token.
 *
 * The host sorts its candidates; here no sort is needed, because each filter and the draw only
 * ask where a boundary falls in the order of keys (sample.h): the top_k-th key, the key where
 * the running weight reaches the top_p limit, the key where it passes the draw threshold. Each is
 * the largest K for which a monotone block-wide sum over {key >= K} still holds, found one bit at
 * a time from the top (30 + id bits block sums). Weights are integers, so those sums are exact
 * whatever the order the threads add them in, and equal the host's sequential ones. */
#include "ops.cuh"

#include "../sample.h"

#define SAMPLE_THREADS 128

/* Sum of v over the block, the same in every thread. buf[2][SAMPLE_THREADS] alternates between
 * calls (*phase), so one barrier per sum suffices: a thread writes a half only after the barrier
 * of the previous sum, which every thread reaches after reading the half used two sums ago. */
static __device__ uint64_t block_sum(uint64_t v, uint64_t (*buf)[SAMPLE_THREADS], int *phase)
{
    uint64_t *b = buf[*phase];
    b[threadIdx.x] = v;
    __syncthreads();
    uint64_t s = 0;
    for (unsigned i = 0; i < blockDim.x; i++)
        s += b[i];
    *phase ^= 1;
    return s;
}

/* Over candidates (e > 0) with key >= lo: mass = 0 counts them, 1 sums their weights. */
static __device__ uint64_t part_sum(const float *e, int n_vocab, int idb, uint64_t lo, int mass)
{
    uint64_t acc = 0;
    for (int i = threadIdx.x; i < n_vocab; i += blockDim.x) {
        float ev = e[i];
        if (ev > 0.0f) {
            uint64_t key = duet_sample_key(ev, i, idb);
            if (key >= lo)
                acc += mass ? duet_sample_weight(ev) : 1;
        }
    }
    return acc;
}

/* The largest K >= floor with F(K) = (count or weight of candidates with key >= K) >= need
 * (strict: > need); F(floor) must hold. *f_p gets F(K). */
static __device__ uint64_t search(const float *e, int n_vocab, int idb, uint64_t floor, int mass,
                                  uint64_t need, int strict, uint64_t (*buf)[SAMPLE_THREADS],
                                  int *phase, uint64_t f_floor, uint64_t *f_p)
{
    uint64_t k = 0, f = f_floor;
    for (int bit = 29 + idb; bit >= 0; bit--) {
        uint64_t cand = k | ((uint64_t)1 << bit);
        uint64_t lo = cand > floor ? cand : floor;
        uint64_t fc = block_sum(part_sum(e, n_vocab, idb, lo, mass), buf, phase);
        if (strict ? fc > need : fc >= need) {
            k = cand;
            f = fc;
        }
    }
    *f_p = f;
    return k > floor ? k : floor;
}

static __global__ void __launch_bounds__(SAMPLE_THREADS)
sample_kernel(float *logits, int n_vocab, const duet_cu_sample_row_t *rows, const int32_t *pen,
              float *scratch, int32_t *out)
{
    __shared__ uint64_t sums[2][SAMPLE_THREADS];
    __shared__ float best_v[SAMPLE_THREADS];
    __shared__ int best_i[SAMPLE_THREADS];
    const duet_cu_sample_row_t r = rows[blockIdx.x];
    float *l = logits + (size_t)r.row * n_vocab;
    float *e = scratch + (size_t)blockIdx.x * n_vocab;
    int tid = threadIdx.x, nt = blockDim.x, phase = 0;

    /* The penalized ids are distinct, so no two threads touch one logit. */
    for (int i = tid; i < r.n_pen; i += nt) {
        int32_t t = pen[r.pen_off + i];
        l[t] = duet_sample_penalize(l[t], r.repeat_penalty);
    }
    __syncthreads();

    /* argmax, lowest id on ties: each thread's first maximum, then the lowest id among those. */
    float bv = 0.0f;
    int bi = -1;
    for (int i = tid; i < n_vocab; i += nt)
        if (bi < 0 || l[i] > bv) {
            bv = l[i];
            bi = i;
        }
    best_v[tid] = bv;
    best_i[tid] = bi;
    __syncthreads();
    int best = -1;
    float max_l = 0.0f;
    for (int t = 0; t < nt; t++)
        if (best_i[t] >= 0 && (best < 0 || best_v[t] > max_l || (best_v[t] == max_l && best_i[t] < best))) {
            max_l = best_v[t];
            best = best_i[t];
        }
    if (r.temperature <= 0.0f) {
        if (tid == 0)
            out[blockIdx.x] = best;
        return;
    }

    float inv_t = 1.0f / r.temperature;
    int idb = duet_sample_id_bits(n_vocab);
    uint64_t n_cand = 0;
    for (int i = tid; i < n_vocab; i += nt) {
        float z = duet_sample_z(l[i], max_l, inv_t);
        float ev = z > DUET_SAMPLE_CUTOFF ? duet_sample_exp(z) : 0.0f;
        e[i] = ev;
        n_cand += ev > 0.0f;
    }
    n_cand = block_sum(n_cand, sums, &phase);  /* its barrier also publishes e[] */
    if (n_cand == 0) {  /* only when the best logit is not finite */
        if (tid == 0)
            out[blockIdx.x] = best;
        return;
    }

    uint64_t cut = 0, f;
    if (r.top_k > 0 && (uint64_t)r.top_k < n_cand)
        cut = search(e, n_vocab, idb, 0, 0, (uint64_t)r.top_k, 0, sums, &phase, n_cand, &f);
    uint64_t min_cut = duet_sample_min_p_cut(r.min_p, idb);
    if (min_cut > cut)
        cut = min_cut;
    uint64_t total = block_sum(part_sum(e, n_vocab, idb, cut, 1), sums, &phase);
    if (r.top_p < 1.0f) {
        uint64_t limit = duet_sample_top_p_limit(r.top_p, total);
        cut = search(e, n_vocab, idb, cut, 1, limit, 0, sums, &phase, total, &total);
    }
    uint64_t t = duet_sample_threshold(r.seed, r.draw_index, total);
    uint64_t key = search(e, n_vocab, idb, cut, 1, t, 1, sums, &phase, total, &f);
    if (tid == 0)
        out[blockIdx.x] = duet_sample_key_id(key, idb);
}

void duet_cu_sample(cudaStream_t st, float *logits, int n_vocab, const duet_cu_sample_row_t *rows,
                    int n, const int32_t *pen, float *scratch, int32_t *out)
{
    if (n > 0)
        DUET_LAUNCH(sample_kernel, dim3(n), dim3(SAMPLE_THREADS), 0, st, logits, n_vocab, rows, pen,
                    scratch, out);
}
