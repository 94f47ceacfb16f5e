/* tests/emu/test_cuda_ops.c — every op of the CUDA backend against the CPU scalar reference, on odd
 * shapes: lengths off the tile sizes, GQA groups of 1, 3, 8 and 40, block tables with holes and
 * NaN in every pool row no sequence owns, contexts long enough for decode split-K, both matmul
 * paths (GEMV and dequantize + cuBLAS). Built twice from this file: against kernels/emu (ctest -L
 * emu, the kernels run on the host) and against the real backend (ctest -L gpu, which skips with
 * exit 77 when there is no GPU, or when the build had no nvcc). Tolerances are stated per op. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"

#define SKIP_CODE 77

#ifdef DUET_TEST_NO_CUDA
int main(void)
{
    fprintf(stderr, "SKIP: this build has no nvcc (DUET_CUDA=OFF or no CUDA toolkit), so there is no "
                    "CUDA backend to run on a GPU; the kernels are tested under the emulator (ctest -L emu)\n");
    return SKIP_CODE;
}
#else

#include "cpu/cpu_backend.h"
#include "cuda/cuda_backend.h"
#include "quant.h"
#include "sample.h"
#include "sampler.h"

static duet_backend_t *ref;  /* CPU scalar, one thread */
static duet_backend_t *cu;   /* CUDA (or emulated): GEMV for every matmul, split-K off */
static duet_backend_t *cu2;  /* CUDA: cuBLAS from 16 tokens, split-K from 64 positions */

#define TEST_RAND_SEED 0x2545f4914f6cdd1dull
#include "test_rand.h"

/* Backend memory holding a copy of host data. */
static void *dev_copy(duet_backend_t *be, const void *host, size_t bytes)
{
    void *d = be->alloc(be, bytes ? bytes : 1);
    if (!d) {
        fprintf(stderr, "backend %s: out of memory\n", be->name);
        exit(1);
    }
    if (bytes)
        be->upload(be, d, host, bytes);
    return d;
}

static void *host_copy(duet_backend_t *be, const void *dev, size_t bytes)
{
    void *h = xmalloc(bytes);
    be->download(be, h, dev, bytes);
    return h;
}

/* Largest |a - b| / (tol * (1 + |b|)); NaN anywhere (in one but not the other) is infinite. */
static double worst(const float *a, const float *b, size_t n, double tol)
{
    double w = 0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(a[i]) || isnan(b[i]))
            return INFINITY;
        double r = fabs((double)a[i] - b[i]) / (tol * (1.0 + fabs((double)b[i])));
        w = r > w ? r : w;
    }
    return w;
}

static const uint32_t all_types[] = {DUET_TYPE_F32, DUET_TYPE_F16, DUET_TYPE_BF16,
                                     DUET_TYPE_Q8_0, DUET_TYPE_Q4_0, DUET_TYPE_Q4_1};
#define N_TYPES 6

static duet_weight_t make_weight(uint32_t type, int rows, int cols)
{
    size_t rb = duet_type_row_bytes(type, cols);
    float *src = xmalloc((size_t)rows * cols * sizeof *src);
    uint8_t *data = xmalloc((size_t)rows * rb);
    fill_rand(src, (size_t)rows * cols, -1.0f, 1.0f);
    for (int r = 0; r < rows; r++)
        duet_quantize_row(type, src + (size_t)r * cols, data + (size_t)r * rb, cols);
    free(src);
    return (duet_weight_t){.type = type, .rows = rows, .cols = cols, .row_bytes = rb, .data = data};
}

/* ---- embed: exact ---- */

static void test_embed(void)
{
    for (int ti = 0; ti < N_TYPES; ti++) {
        int cols = duet_type_traits(all_types[ti])->block_elems == 1 ? 100 : 96;
        duet_weight_t w = make_weight(all_types[ti], 50, cols);
        duet_weight_t wc = w;
        CHECK_EQ_INT(cu->prepare_weight(cu, &wc), DUET_OK);
        int32_t tokens[17];
        for (int i = 0; i < 17; i++)
            tokens[i] = (i * 7 + 3) % 50;
        tokens[5] = tokens[6];  /* a repeat */
        size_t no = (size_t)17 * cols;
        float *want = xmalloc(no * sizeof *want);
        ref->embed(ref, &w, tokens, 17, want);
        float *d = cu->alloc(cu, no * sizeof(float));
        cu->embed(cu, &wc, tokens, 17, d);
        float *got = host_copy(cu, d, no * sizeof *got);
        CHECK_MSG(memcmp(got, want, no * sizeof *got) == 0, "embed %s differs from the CPU's bits",
                  duet_type_traits(w.type)->name);
        cu->free(cu, d);
        cu->release_weight(cu, &wc);
        CHECK(wc.packed == NULL);
        free(got);
        free(want);
        free((void *)w.data);
    }
}

/* ---- matmul ----
 * Tolerance per output: |got - cpu| <= 2e-5 * sum_i |w_i x_i| + 1e-5 (f32 sums over <= 576 terms
 * in different orders, plus quantized rows scaled once per block on the CPU and per four
 * elements here). Both the GEMV kernel (every n on cu) and dequantize + SGEMM (n >= 16 on cu2). */
static void test_matmul(void)
{
    static const int rows_list[] = {7, 130};
    static const int cols_q[] = {32, 576}, cols_plain[] = {40, 100, 576};
    static const int n_list[] = {1, 5, 17};
    int cases = 0, failed = 0;
    duet_cuda_stats_t s0, s1;
    duet_backend_cuda_stats(cu2, &s0);
    for (int ti = 0; ti < N_TYPES; ti++) {
        uint32_t type = all_types[ti];
        int plain = duet_type_traits(type)->block_elems == 1;
        const int *cols_list = plain ? cols_plain : cols_q;
        int n_cols = plain ? 3 : 2;
        for (int ri = 0; ri < 2; ri++)
            for (int ci = 0; ci < n_cols; ci++) {
                int rows = rows_list[ri], cols = cols_list[ci];
                duet_weight_t w = make_weight(type, rows, cols), wc = w, wc2 = w;
                CHECK_EQ_INT(cu->prepare_weight(cu, &wc), DUET_OK);
                CHECK_EQ_INT(cu2->prepare_weight(cu2, &wc2), DUET_OK);
                float *deq = xmalloc((size_t)rows * cols * sizeof *deq);
                for (int r = 0; r < rows; r++)
                    duet_dequantize_row(type, (const uint8_t *)w.data + (size_t)r * w.row_bytes,
                                        deq + (size_t)r * cols, cols);
                float *bias = xmalloc((size_t)rows * sizeof *bias);
                fill_rand(bias, rows, -2.0f, 2.0f);
                float *dbias = dev_copy(cu, bias, rows * sizeof(float));
                for (int ni = 0; ni < 3; ni++) {
                    int n = n_list[ni], with_bias = (ni + ri + ci) % 2;
                    size_t no = (size_t)n * rows;
                    float *x = xmalloc((size_t)n * cols * sizeof *x), *want = xmalloc(no * sizeof *want);
                    fill_rand(x, (size_t)n * cols, -1.0f, 1.0f);
                    ref->matmul(ref, &w, with_bias ? bias : NULL, x, n, want);
                    float *dx = dev_copy(cu, x, (size_t)n * cols * sizeof *x);
                    float *dout = cu->alloc(cu, no * sizeof(float));
                    for (int path = 0; path < 2; path++) {
                        duet_backend_t *be = path ? cu2 : cu;
                        be->matmul(be, path ? &wc2 : &wc, with_bias ? dbias : NULL, dx, n, dout);
                        float *got = host_copy(be, dout, no * sizeof *got);
                        double wr = 0;
                        for (int i = 0; i < n; i++)
                            for (int r = 0; r < rows; r++) {
                                double mag = 0;
                                for (int c = 0; c < cols; c++)
                                    mag += fabs((double)deq[(size_t)r * cols + c] * x[(size_t)i * cols + c]);
                                size_t k = (size_t)i * rows + r;
                                double e = fabs((double)got[k] - want[k]) / (2e-5 * mag + 1e-5);
                                wr = e > wr || isnan(e) ? e : wr;
                            }
                        cases++;
                        if (!(wr <= 1.0)) {
                            failed++;
                            fprintf(stderr, "  matmul %s %s rows %d cols %d n %d bias %d: %.3g of tolerance\n",
                                    path ? "cublas-path" : "gemv", duet_type_traits(type)->name, rows,
                                    cols, n, with_bias, wr);
                        }
                        free(got);
                    }
                    cu->free(cu, dx);
                    cu->free(cu, dout);
                    free(x);
                    free(want);
                }
                cu->free(cu, dbias);
                cu->release_weight(cu, &wc);
                cu2->release_weight(cu2, &wc2);
                free(bias);
                free(deq);
                free((void *)w.data);
            }
    }
    CHECK_MSG(failed == 0, "%d of %d matmul cases out of tolerance", failed, cases);
    duet_backend_cuda_stats(cu2, &s1);
    CHECK_MSG(s1.gemm_calls > s0.gemm_calls && s1.gemv_calls > s0.gemv_calls,
              "both matmul paths ran (gemm %llu, gemv %llu)",
              (unsigned long long)(s1.gemm_calls - s0.gemm_calls), (unsigned long long)(s1.gemv_calls - s0.gemv_calls));
}

/* ---- rmsnorm: |got - cpu| <= 1e-5 (1 + |cpu|) (f32 tree sum vs the CPU's double sum) ---- */

static void test_rmsnorm(void)
{
    static const int dims[] = {64, 96, 576, 1000};
    static const int ns[] = {1, 3, 7};
    for (int di = 0; di < 4; di++)
        for (int ni = 0; ni < 3; ni++) {
            int n = ns[ni], dim = dims[di];
            size_t sz = (size_t)n * dim;
            float *x = xmalloc(sz * sizeof *x), *w = xmalloc(dim * sizeof *w), *want = xmalloc(sz * sizeof *want);
            fill_rand(x, sz, -3.0f, 3.0f);
            fill_rand(w, dim, 0.5f, 1.5f);
            ref->rmsnorm(ref, x, w, 1e-5f, n, dim, want);
            float *dx = dev_copy(cu, x, sz * sizeof *x), *dw = dev_copy(cu, w, dim * sizeof *w);
            cu->rmsnorm(cu, dx, dw, 1e-5f, n, dim, dx);  /* in place, as allowed */
            float *got = host_copy(cu, dx, sz * sizeof *got);
            double wr = worst(got, want, sz, 1e-5);
            CHECK_MSG(wr <= 1.0, "rmsnorm n %d dim %d: %.3g of tolerance", n, dim, wr);
            cu->free(cu, dx);
            cu->free(cu, dw);
            free(x);
            free(w);
            free(want);
            free(got);
        }
}

/* ---- rope: the CPU's double-precision angles and its rounded products, so within 1e-6 ---- */

static void test_rope(void)
{
    static const int32_t pos[] = {0, 1, 17, 1000, 100000};
    static const int shapes[][2] = {{64, 64}, {80, 80}, {64, 32}, {36, 36}};  /* head_dim, rot_dim */
    for (int si = 0; si < 4; si++)
        for (int neox = 0; neox < 2; neox++) {
            int hd = shapes[si][0], rot = shapes[si][1], n = 5, nh = 3;
            size_t sz = (size_t)n * nh * hd;
            float *x = xmalloc(sz * sizeof *x), *want = xmalloc(sz * sizeof *want);
            fill_rand(x, sz, -2.0f, 2.0f);
            memcpy(want, x, sz * sizeof *x);
            ref->rope(ref, want, pos, n, nh, hd, rot, 10000.0f, neox);
            float *dx = dev_copy(cu, x, sz * sizeof *x);
            cu->rope(cu, dx, pos, n, nh, hd, rot, 10000.0f, neox);
            float *got = host_copy(cu, dx, sz * sizeof *got);
            double wr = worst(got, want, sz, 1e-6);
            CHECK_MSG(wr <= 1.0, "rope hd %d rot %d neox %d: %.3g of tolerance", hd, rot, neox, wr);
            cu->free(cu, dx);
            free(x);
            free(want);
            free(got);
        }
}

/* ---- kv_write: the same f16 bits in the same pool places, nothing else touched ---- */

static uint16_t *make_pool_host(const duet_kv_pool_view_t *v)
{
    size_t elems = (size_t)v->n_blocks * v->n_layer * 2 * duet_kv_slice_elems(v);
    uint16_t *p = xmalloc(elems * sizeof *p);
    for (size_t i = 0; i < elems; i++)
        p[i] = 0x7e00;  /* f16 NaN: a read of a row nobody wrote shows up */
    return p;
}

static void test_kv_write(void)
{
    duet_kv_pool_view_t hv = {NULL, 9, 3, 3, 80};
    size_t bytes = (size_t)hv.n_blocks * hv.n_layer * 2 * duet_kv_slice_elems(&hv) * sizeof(uint16_t);
    hv.base = make_pool_host(&hv);
    duet_kv_pool_view_t dv = hv;
    dv.base = dev_copy(cu, hv.base, bytes);
    int n = 21;
    int32_t slots[21];
    for (int i = 0; i < n; i++)
        slots[i] = ((i * 5) % 9) * 16 + (i * 7) % 16;
    size_t sz = (size_t)n * hv.n_kv_head * hv.head_dim;
    float *k = xmalloc(sz * sizeof *k), *v = xmalloc(sz * sizeof *v);
    fill_rand(k, sz, -70000.0f, 70000.0f);  /* past the f16 range too: both round to inf */
    fill_rand(v, sz, -1e-6f, 1e-6f);        /* f16 subnormals */
    float *dk = dev_copy(cu, k, sz * sizeof *k), *dvv = dev_copy(cu, v, sz * sizeof *v);
    ref->kv_write(ref, &hv, 2, k, v, slots, n);
    cu->kv_write(cu, &dv, 2, dk, dvv, slots, n);
    uint16_t *got = host_copy(cu, dv.base, bytes);
    CHECK_MSG(memcmp(got, hv.base, bytes) == 0, "kv_write: the pools differ");
    cu->free(cu, dv.base);
    cu->free(cu, dk);
    cu->free(cu, dvv);
    free(got);
    free(hv.base);
    free(k);
    free(v);
}

/* ---- attention ---- */

typedef struct {
    int n_seq;
    int kv_len[6];
    int n_new[6];
} attn_shape_t;

/* One batch on a shuffled, sparse block table (holes, ids out of order), the pool's other rows
 * NaN. The CUDA prefill and decode kernels are compared with the CPU scalar prefill:
 * |got - cpu| <= tol (1 + |cpu|). */
static void attn_case(duet_backend_t *be, int n_head, int n_kv, int hd, const attn_shape_t *shape,
                      float q_amp, float scale, double tol)
{
    enum { N_BLOCKS = 120, MAX_BLOCKS = 48, N_LAYER = 2, LAYER = 1 };
    duet_kv_pool_view_t hv = {NULL, N_BLOCKS, N_LAYER, n_kv, hd};
    size_t pool_bytes = (size_t)N_BLOCKS * N_LAYER * 2 * duet_kv_slice_elems(&hv) * sizeof(uint16_t);
    hv.base = make_pool_host(&hv);
    int32_t tok_start[7], kv_len[6], table[6 * MAX_BLOCKS];
    int perm[N_BLOCKS];
    for (int i = 0; i < N_BLOCKS; i++)
        perm[i] = i;
    for (int i = N_BLOCKS - 1; i > 0; i--) {
        int j = (int)frand(0, (float)i + 0.999f), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int next = 0, n_tok = 0;
    tok_start[0] = 0;
    for (int s = 0; s < shape->n_seq; s++) {
        kv_len[s] = shape->kv_len[s];
        n_tok += shape->n_new[s];
        tok_start[s + 1] = n_tok;
        for (int b = 0; b < MAX_BLOCKS; b++)
            table[s * MAX_BLOCKS + b] = b * 16 < kv_len[s] ? perm[next++] : -1;
        next++;  /* a hole */
    }
    for (int s = 0; s < shape->n_seq; s++) {
        int len = kv_len[s];
        size_t sz = (size_t)len * n_kv * hd;
        float *k = xmalloc(sz * sizeof *k), *v = xmalloc(sz * sizeof *v);
        int32_t *slots = xmalloc((size_t)len * sizeof *slots);
        fill_rand(k, sz, -1.0f, 1.0f);
        fill_rand(v, sz, -1.0f, 1.0f);
        for (int p = 0; p < len; p++)
            slots[p] = table[s * MAX_BLOCKS + p / 16] * 16 + p % 16;
        ref->kv_write(ref, &hv, LAYER, k, v, slots, len);
        free(k);
        free(v);
        free(slots);
    }
    duet_attn_batch_t batch = {shape->n_seq, tok_start, kv_len, table, MAX_BLOCKS};
    size_t sz = (size_t)n_tok * n_head * hd;
    float *q = xmalloc(sz * sizeof *q), *want = xmalloc(sz * sizeof *want);
    fill_rand(q, sz, -q_amp, q_amp);
    ref->attn_prefill(ref, &hv, LAYER, q, n_head, &batch, scale, want);

    duet_kv_pool_view_t dv = hv;
    dv.base = dev_copy(be, hv.base, pool_bytes);
    float *dq = dev_copy(be, q, sz * sizeof *q), *dout = be->alloc(be, sz * sizeof(float));
    for (int dec = 0; dec < 2; dec++) {
        (dec ? be->attn_decode : be->attn_prefill)(be, &dv, LAYER, dq, n_head, &batch, scale, dout);
        float *got = host_copy(be, dout, sz * sizeof *got);
        double wr = worst(got, want, sz, tol);
        CHECK_MSG(wr <= 1.0, "attn_%s on %s: heads %d/%d hd %d seqs %d tokens %d: %.3g of tolerance",
                  dec ? "decode" : "prefill", be == cu ? "cu" : "cu2", n_head, n_kv, hd,
                  shape->n_seq, n_tok, wr);
        free(got);
    }
    be->free(be, dv.base);
    be->free(be, dq);
    be->free(be, dout);
    free(hv.base);
    free(q);
    free(want);
}

static void test_attention(void)
{
    /* kv_len crossing block boundaries, 1 .. 40 new tokens (more than one 32-row tile). */
    static const attn_shape_t prefill = {5, {17, 50, 1, 33, 100}, {17, 13, 1, 2, 40}};
    static const attn_shape_t decode = {6, {1, 16, 17, 33, 50, 128}, {1, 1, 1, 1, 1, 1}};
    /* Few long contexts: decode splits them (cu2: parts of >= 64 positions), and the last
     * sequence's 3 new tokens go through the decode kernel one token per unit. */
    static const attn_shape_t longctx = {3, {700, 300, 257}, {1, 1, 3}};
    static const int heads[][2] = {{3, 3}, {9, 3}, {16, 2}, {40, 1}};  /* groups 1, 3, 8, 40 */
    static const int hds[] = {64, 80};
    for (int hi = 0; hi < 4; hi++)
        for (int di = 0; di < 2; di++) {
            float scale = 1.0f / sqrtf((float)hds[di]);
            attn_case(cu, heads[hi][0], heads[hi][1], hds[di], &prefill, 2.0f, scale, 1e-5);
            attn_case(cu, heads[hi][0], heads[hi][1], hds[di], &decode, 2.0f, scale, 1e-5);
        }
    duet_cuda_stats_t s0, s1;
    duet_backend_cuda_stats(cu2, &s0);
    attn_case(cu2, 8, 1, 64, &longctx, 2.0f, 0.125f, 1e-5);
    attn_case(cu2, 6, 2, 128, &longctx, 2.0f, 1.0f / sqrtf(128.0f), 1e-5);
    duet_backend_cuda_stats(cu2, &s1);
    CHECK_MSG(s1.attn_split_calls > s0.attn_split_calls, "long decode contexts were split (split-K)");
    attn_case(cu, 9, 3, 36, &prefill, 2.0f, 1.0f / 6.0f, 1e-5);      /* head_dim off the warp size */
    attn_case(cu2, 4, 2, 256, &longctx, 2.0f, 1.0f / 16.0f, 1e-5);   /* the largest head_dim */
    /* Scores in the hundreds, rising past the first block's max by more than exp's range: wrong
     * without the running-max rescale. Looser, as in the CPU test (f32 scores of that size). */
    attn_case(cu, 9, 3, 64, &prefill, 40.0f, 1.0f, 2e-3);
    attn_case(cu2, 16, 2, 64, &longctx, 40.0f, 1.0f, 2e-3);
}

/* ---- swiglu: |got - cpu| <= 1e-6 (1 + |cpu|) (expf to a few ulp); add: exact ---- */

static void test_elementwise(void)
{
    static const size_t ns[] = {1, 7, 33, 1000, 70001};
    for (int k = 0; k < 5; k++) {
        size_t n = ns[k];
        float *g = xmalloc(n * sizeof *g), *u = xmalloc(n * sizeof *u), *want = xmalloc(n * sizeof *want);
        fill_rand(g, n, -12.0f, 12.0f);
        fill_rand(u, n, -3.0f, 3.0f);
        float *dg = dev_copy(cu, g, n * sizeof *g), *du = dev_copy(cu, u, n * sizeof *u);
        ref->swiglu(ref, g, u, n, want);
        cu->swiglu(cu, dg, du, n, dg);  /* in place: out = gate */
        float *got = host_copy(cu, dg, n * sizeof *got);
        double wr = worst(got, want, n, 1e-6);
        CHECK_MSG(wr <= 1.0, "swiglu n %zu: %.3g of tolerance", n, wr);
        free(got);
        cu->upload(cu, dg, g, n * sizeof *g);
        memcpy(want, g, n * sizeof *g);
        ref->add(ref, want, u, n);
        cu->add(cu, dg, du, n);
        got = host_copy(cu, dg, n * sizeof *got);
        CHECK_MSG(memcmp(got, want, n * sizeof *got) == 0, "add n %zu is not exact", n);
        free(got);
        cu->free(cu, dg);
        cu->free(cu, du);
        free(g);
        free(u);
        free(want);
    }
}

/* ---- sampling: the device sampler against lib/engine/sampler.c ---- */

typedef struct {
    const char *name;
    float temperature;
    int top_k;
    float top_p, min_p, penalty;
    int last_n;
} sample_setting_t;

static const sample_setting_t sample_settings[] = {
    {"greedy", 0.0f, 0, 1.0f, 0.0f, 1.0f, 64},
    {"greedy, penalty 1.5 over 16", 0.0f, 0, 1.0f, 0.0f, 1.5f, 16},
    {"t 1", 1.0f, 0, 1.0f, 0.0f, 1.0f, 64},
    {"t 0.7, top_k 40", 0.7f, 40, 1.0f, 0.0f, 1.0f, 64},
    {"t 1.3, top_p 0.9", 1.3f, 0, 0.9f, 0.0f, 1.0f, 64},
    {"t 1, min_p 0.05", 1.0f, 0, 1.0f, 0.05f, 1.0f, 64},
    {"t 0.8, top_k 50, top_p 0.95, min_p 0.02, penalty 1.3", 0.8f, 50, 0.95f, 0.02f, 1.3f, 32},
    {"t 2, top_p 0.3", 2.0f, 0, 0.3f, 0.0f, 1.0f, 64},
    {"t 0.5, top_k 1", 0.5f, 1, 1.0f, 0.0f, 1.0f, 64},
    {"t 100 (nearly flat: every token a candidate)", 100.0f, 0, 1.0f, 0.0f, 1.0f, 64},
};

/* Logits in [-8, 8) with ties: the maximum at three ids (the lowest must win), runs of equal
 * values (ties in the candidate order, broken by id). */
static void sample_logits(float *l, int n_vocab)
{
    fill_rand(l, (size_t)n_vocab, -8.0f, 8.0f);
    for (int i = 7; i < n_vocab; i += 13)
        l[i] = l[i - 1];
    int best = 0;
    for (int i = 1; i < n_vocab; i++)
        best = l[i] > l[best] ? i : best;
    l[n_vocab / 3] = l[n_vocab - 1] = l[best];
}

/* The same seed, draw index and logits give the same token on the device as on the host, for
 * every setting, vocabulary size and draw: exact by construction (kernels/sample.h), so no
 * tolerance. The rows of one launch are draws with different seeds and draw indices. */
static void test_sample(void)
{
    static const int vocabs[] = {1, 31, 1000, 49152 + 7};
    static const uint64_t seeds[] = {0, 42, 0x9e3779b97f4a7c15ull};
    enum { MAX_ROWS = 32, N_HIST = 48 };
    for (size_t vi = 0; vi < sizeof vocabs / sizeof vocabs[0]; vi++) {
        int n_vocab = vocabs[vi];
        /* Each draw costs the device up to ~140 barriers and passes over the row, which the
         * emulator under ThreadSanitizer (ctest -L emu in CI) pays dearly: 32 draws per setting,
         * 4 for the big vocabulary, keep this test near a minute there. */
        int n_rows = n_vocab > 5000 ? 4 : MAX_ROWS;
        duet_sampler_t *sp;
        CHECK_EQ_INT(duet_sampler_create(n_vocab, &sp), DUET_OK);
        float *base = xmalloc((size_t)n_vocab * sizeof *base);
        float *rows = xmalloc((size_t)n_rows * n_vocab * sizeof *rows);
        float *host = xmalloc((size_t)n_vocab * sizeof *host);
        float *penalized = xmalloc((size_t)n_vocab * sizeof *penalized);
        int32_t hist[N_HIST], want[MAX_ROWS], got[MAX_ROWS];
        for (int i = 0; i < N_HIST; i++)  /* repeats, and one id outside the vocabulary */
            hist[i] = i == 5 ? n_vocab : (int32_t)((i * i * 7 + 3) % n_vocab);
        float *dl = cu->alloc(cu, (size_t)n_rows * n_vocab * sizeof(float));
        CHECK(dl != NULL);
        for (size_t si = 0; si < sizeof sample_settings / sizeof sample_settings[0] && dl; si++) {
            const sample_setting_t *st = &sample_settings[si];
            sample_logits(base, n_vocab);
            duet_sample_req_t reqs[MAX_ROWS];
            for (int r = 0; r < n_rows; r++) {
                memcpy(rows + (size_t)r * n_vocab, base, (size_t)n_vocab * sizeof *base);
                reqs[r] = (duet_sample_req_t){
                    .row = r, .temperature = st->temperature, .top_k = st->top_k, .top_p = st->top_p,
                    .min_p = st->min_p, .repeat_penalty = st->penalty, .repeat_last_n = st->last_n,
                    .history = hist, .n_history = N_HIST, .seed = seeds[r % 3] + si,
                    .draw_index = (uint64_t)r * 7 + 1,
                };
                duet_sampling_t s = {
                    .temperature = st->temperature, .top_k = st->top_k, .top_p = st->top_p,
                    .min_p = st->min_p, .repeat_penalty = st->penalty, .repeat_last_n = st->last_n,
                    .seed = reqs[r].seed,
                };
                memcpy(host, base, (size_t)n_vocab * sizeof *base);
                want[r] = duet_sampler_sample(sp, &s, host, hist, N_HIST, reqs[r].draw_index);
            }
            cu->upload(cu, dl, rows, (size_t)n_rows * n_vocab * sizeof *rows);
            cu->sample(cu, dl, n_vocab, reqs, n_rows, got);
            int same = 0, distinct = 0;
            for (int r = 0; r < n_rows; r++) {
                same += got[r] == want[r];
                int first = 1;
                for (int q = 0; q < r; q++)
                    first &= want[q] != want[r];
                distinct += first;
            }
            CHECK_MSG(same == n_rows, "vocab %d, %s: %d of %d draws differ from the host sampler's",
                      n_vocab, st->name, n_rows - same, n_rows);
            for (int r = 0; r < n_rows && same != n_rows; r++)
                if (got[r] != want[r])
                    fprintf(stderr, "  row %d (seed %llu, draw %llu): device %d, host %d\n", r,
                            (unsigned long long)reqs[r].seed, (unsigned long long)reqs[r].draw_index,
                            got[r], want[r]);
            /* The penalty was applied to each row in place, as the host sampler does. */
            cu->download(cu, penalized, dl + (size_t)(n_rows - 1) * n_vocab, (size_t)n_vocab * sizeof *penalized);
            CHECK_MSG(memcmp(penalized, host, (size_t)n_vocab * sizeof *host) == 0,
                      "vocab %d, %s: the penalized logits differ from the host's", n_vocab, st->name);
            /* Not degenerate: a nearly flat distribution over 1000+ tokens gives distinct draws. */
            if (st->temperature >= 100.0f && n_vocab >= 1000)
                CHECK_MSG(distinct > n_rows / 2, "vocab %d, %s: only %d distinct tokens in %d draws",
                          n_vocab, st->name, distinct, n_rows);
            if (getenv("DUET_TEST_VERBOSE"))
                fprintf(stderr, "  sample vocab %d, %s: %d draws, %d distinct tokens\n", n_vocab,
                        st->name, n_rows, distinct);
        }
        cu->free(cu, dl);
        free(base);
        free(rows);
        free(host);
        free(penalized);
        duet_sampler_destroy(sp);
    }
}

/* duet_sample_exp is e^z to within 2 ulp over the candidates' range: it stands in for libm's
 * expf (whose last bit differs between glibc and CUDA) and must still be exp. */
static void test_sample_exp(void)
{
    int worst = 0;
    for (int i = 0; i <= 250000; i++) {
        float z = -25.0f * (float)i / 250000.0f;
        double want = exp((double)z);
        double ulp = (double)nextafterf((float)want, INFINITY) - (double)(float)want;
        int err = (int)ceil(fabs((double)duet_sample_exp(z) - want) / ulp - 0.5);
        worst = err > worst ? err : worst;
    }
    CHECK_MSG(worst <= 2, "duet_sample_exp is %d ulp off e^z", worst);
    CHECK(duet_sample_exp(0.0f) == 1.0f);
}

int main(void)
{
    if (duet_backend_cpu_create(&(duet_cpu_conf_t){.n_threads = 1, .isa = DUET_CPU_ISA_SCALAR}, &ref) != DUET_OK) {
        fprintf(stderr, "cannot create the CPU reference backend\n");
        return 1;
    }
    duet_status_t st = duet_backend_cuda_create(
        &(duet_cuda_conf_t){.device = 0, .gemm_min_tokens = -1, .split_min_positions = -1}, &cu);
    if (st == DUET_ERR_UNAVAILABLE) {
        fprintf(stderr, "SKIP: no usable CUDA device here (see the error above); these kernels were "
                        "NOT run on a GPU\n");
        ref->destroy(ref);
        return SKIP_CODE;
    }
    CHECK_EQ_INT(st, DUET_OK);
    CHECK_EQ_INT(duet_backend_cuda_create(
                     &(duet_cuda_conf_t){.device = 0, .gemm_min_tokens = 16, .split_min_positions = 64}, &cu2),
                 DUET_OK);
    if (check_failures)
        return check_report();
    fprintf(stderr, "backend under test: %s (%s)\n", cu->name,
            duet_backend_cuda_emulated() ? "kernels emulated on the host" : "a real GPU");
    RUN_TEST(test_embed);
    RUN_TEST(test_matmul);
    RUN_TEST(test_rmsnorm);
    RUN_TEST(test_rope);
    RUN_TEST(test_kv_write);
    RUN_TEST(test_attention);
    RUN_TEST(test_elementwise);
    RUN_TEST(test_sample_exp);
    RUN_TEST(test_sample);
    char why[256];
    CHECK_EQ_INT(duet_backend_status(cu, why, sizeof why), DUET_OK);
    CHECK_EQ_INT(duet_backend_status(cu2, why, sizeof why), DUET_OK);
    cu->destroy(cu);
    cu2->destroy(cu2);
    ref->destroy(ref);
    return check_report();
}

#endif
