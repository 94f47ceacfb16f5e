/* kernels/cuda/cuda_backend.cu — the CUDA backend's duet_backend_t: device memory, one stream, and
 * each op of backend.h turned into kernel launches (ops.cuh), its host-memory arguments (token
 * ids, positions, slots, the attention batch) staged into device scratch on the same stream. */
#include "cuda_backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.cuh"

#ifdef __CUDACC__
#include <cublas_v2.h>
#endif

extern "C" {
#include "../../lib/base/log.h"
}

#define DEFAULT_GEMM_MIN_TOKENS 32
#define DEFAULT_SPLIT_MIN_POSITIONS 256

/* Device scratch buffers, each grown on demand and reused by every op. */
enum { SCR_ARGS, SCR_PARTS, SCR_DEQ, SCR_SAMPLE, N_SCRATCH };

typedef struct {
    duet_backend_t be;   /* first, so a duet_backend_t * is a cuda_backend_t * */
    int device;
    int n_sm;
    int gemm_min_tokens;
    int split_min;       /* positions per decode part, a multiple of 16; 0: never split */
    cudaStream_t stream;
    cublasHandle_t blas;
    void *scratch[N_SCRATCH];
    size_t scratch_cap[N_SCRATCH];
    unsigned char *stage;  /* host staging for the op arguments that arrive in host memory */
    size_t stage_cap;
    duet_status_t status;  /* the first error, sticky */
    char why[192];         /* its reason */
    duet_cuda_stats_t stats;
} cuda_backend_t;

/* The backend behind be, with its device made current on the calling thread: the current device
 * is per thread, and a service creates the backend on one thread and computes on another. */
static cuda_backend_t *cb(duet_backend_t *be)
{
    cuda_backend_t *c = (cuda_backend_t *)be;
    int current;
    if (cudaGetDevice(&current) != cudaSuccess || current != c->device)
        cudaSetDevice(c->device);
    return c;
}

/* Records and logs the first failure; later ones are consequences and stay quiet. */
static void fail(cuda_backend_t *c, duet_status_t st, const char *what, const char *why)
{
    if (c->status == DUET_OK) {
        duet_log_error("cuda: %s failed: %s", what, why);
        snprintf(c->why, sizeof c->why, "%s failed: %s", what, why);
        c->status = st;
    }
}

static bool ok(cuda_backend_t *c, cudaError_t e, const char *what)
{
    if (e == cudaSuccess)
        return true;
    fail(c, e == cudaErrorMemoryAllocation ? DUET_ERR_NOMEM : DUET_ERR_INTERNAL, what,
         cudaGetErrorString(e));
    return false;
}

/* After a launch: a bad configuration shows up only here. */
static void launched(cuda_backend_t *c, const char *what)
{
    ok(c, cudaGetLastError(), what);
}

static void *scratch(cuda_backend_t *c, int which, size_t bytes)
{
    if (bytes <= c->scratch_cap[which])
        return c->scratch[which];
    size_t cap = bytes + bytes / 2;
    void *p = NULL;
    /* The old buffer may still be read by queued kernels. */
    if (!ok(c, cudaStreamSynchronize(c->stream), "synchronize before growing scratch"))
        return NULL;
    if (c->scratch[which])
        cudaFree(c->scratch[which]);
    c->scratch[which] = NULL;
    c->scratch_cap[which] = 0;
    if (!ok(c, cudaMalloc(&p, cap), "allocating scratch"))
        return NULL;
    c->scratch[which] = p;
    c->scratch_cap[which] = cap;
    return p;
}

static unsigned char *stage(cuda_backend_t *c, size_t bytes)
{
    if (bytes > c->stage_cap) {
        unsigned char *p = (unsigned char *)realloc(c->stage, bytes + bytes / 2);
        if (!p) {
            fail(c, DUET_ERR_NOMEM, "staging op arguments", "out of host memory");
            return NULL;
        }
        c->stage = p;
        c->stage_cap = bytes + bytes / 2;
    }
    return c->stage;
}

/* Copies the staged bytes to the argument scratch. cudaMemcpyAsync from pageable memory returns
 * once the source has been read, so the staging buffer may be refilled by the next op; the
 * device copy is ordered on the stream before the kernels that read it and after those that
 * read the previous contents. */
static unsigned char *send_stage(cuda_backend_t *c, size_t bytes)
{
    unsigned char *dev = (unsigned char *)scratch(c, SCR_ARGS, bytes);
    if (!dev || !ok(c, cudaMemcpyAsync(dev, c->stage, bytes, cudaMemcpyHostToDevice, c->stream),
                    "copying op arguments"))
        return NULL;
    return dev;
}

static const int32_t *send_ints(cuda_backend_t *c, const int32_t *host, int n)
{
    size_t bytes = (size_t)(n > 0 ? n : 1) * sizeof(int32_t);
    unsigned char *s = stage(c, bytes);
    if (!s)
        return NULL;
    memcpy(s, host, (size_t)n * sizeof(int32_t));
    return (const int32_t *)send_stage(c, bytes);
}

/* ---- memory ---- */

static void *cu_alloc(duet_backend_t *be, size_t bytes)
{
    cuda_backend_t *c = cb(be);
    void *p = NULL;
    if (cudaMalloc(&p, bytes ? bytes : 1) != cudaSuccess)
        return NULL;  /* out of memory is the caller's to report, not a sticky op error */
    if (!ok(c, cudaMemsetAsync(p, 0, bytes, c->stream), "zeroing new memory") ||
        !ok(c, cudaStreamSynchronize(c->stream), "zeroing new memory")) {
        cudaFree(p);
        return NULL;
    }
    return p;
}

static void cu_free(duet_backend_t *be, void *ptr)
{
    (void)be;
    if (ptr)
        cudaFree(ptr);  /* waits for the device to be done with it */
}

static void cu_upload(duet_backend_t *be, void *dst, const void *host_src, size_t bytes)
{
    cuda_backend_t *c = cb(be);
    if (ok(c, cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, c->stream), "upload"))
        ok(c, cudaStreamSynchronize(c->stream), "upload");
}

static void cu_download(duet_backend_t *be, void *host_dst, const void *src, size_t bytes)
{
    cuda_backend_t *c = cb(be);
    if (ok(c, cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, c->stream), "download"))
        ok(c, cudaStreamSynchronize(c->stream), "download");
}

static void cu_synchronize(duet_backend_t *be)
{
    cuda_backend_t *c = cb(be);
    ok(c, cudaStreamSynchronize(c->stream), "synchronize");
}

static duet_status_t cu_pin_host(duet_backend_t *be, void *host_ptr, size_t bytes)
{
    (void)be;
    cudaError_t e = cudaHostRegister(host_ptr, bytes, cudaHostRegisterDefault);
    if (e != cudaSuccess) {
        cudaGetLastError();   /* not sticky: the copies work unpinned, so no op should fail for it */
        duet_log_warn("cuda: cannot pin %zu bytes of host memory (%s); copies through it are slower",
                      bytes, cudaGetErrorString(e));
        return DUET_ERR_UNAVAILABLE;
    }
    return DUET_OK;
}

static void cu_unpin_host(duet_backend_t *be, void *host_ptr)
{
    (void)be;
    cudaHostUnregister(host_ptr);
}

static duet_status_t cu_prepare_weight(duet_backend_t *be, duet_weight_t *w)
{
    cuda_backend_t *c = cb(be);
    size_t bytes = (size_t)w->rows * w->row_bytes;
    void *p = NULL;
    if (!duet_type_traits(w->type) || bytes == 0 || !w->data)
        return DUET_ERR_UNSUPPORTED;
    if (cudaMalloc(&p, bytes) != cudaSuccess)
        return DUET_ERR_NOMEM;
    if (cudaMemcpy(p, w->data, bytes, cudaMemcpyHostToDevice) != cudaSuccess) {
        cudaFree(p);
        (void)c;
        return DUET_ERR_INTERNAL;
    }
    w->packed = p;
    return DUET_OK;
}

static void cu_release_weight(duet_backend_t *be, duet_weight_t *w)
{
    (void)be;
    if (w->packed)
        cudaFree(w->packed);
    w->packed = NULL;
}

/* ---- ops ---- */

static bool have_weight(cuda_backend_t *c, const duet_weight_t *w, const char *op)
{
    if (w->packed)
        return true;
    fail(c, DUET_ERR_INVALID, op, "the weight was not uploaded with prepare_weight");
    return false;
}

static void cu_embed(duet_backend_t *be, const duet_weight_t *table, const int32_t *tokens, int n,
                     float *out)
{
    cuda_backend_t *c = cb(be);
    if (n <= 0 || !have_weight(c, table, "embed"))
        return;
    const int32_t *dt = send_ints(c, tokens, n);
    if (!dt)
        return;
    duet_cu_embed(c->stream, table->type, table->packed, table->row_bytes, table->cols, dt, n, out);
    launched(c, "embed");
}

static void cu_rmsnorm(duet_backend_t *be, const float *x, const float *w, float eps, int n, int dim,
                       float *out)
{
    cuda_backend_t *c = cb(be);
    duet_cu_rmsnorm(c->stream, x, w, eps, n, dim, out);
    launched(c, "rmsnorm");
}

static void cu_matmul(duet_backend_t *be, const duet_weight_t *w, const float *bias, const float *x,
                      int n, float *out)
{
    cuda_backend_t *c = cb(be);
    if (n <= 0 || !have_weight(c, w, "matmul"))
        return;
    if (c->gemm_min_tokens > 0 && n >= c->gemm_min_tokens) {
        /* Prefill: f32 weights (exact, so the result is what the GEMV would give up to summation
         * order) times the activations on cuBLAS. Column-major view: W^T (rows x cols) is the
         * stored row-major W read transposed, x^T (cols x n) is x as stored, out^T (rows x n)
         * is out as stored. */
        float *deq = (float *)scratch(c, SCR_DEQ, (size_t)w->rows * w->cols * sizeof(float));
        if (!deq)
            return;
        duet_cu_dequant(c->stream, w->type, w->packed, w->row_bytes, w->rows, w->cols, deq);
        launched(c, "dequantize");
        const float one = 1.0f, zero = 0.0f;
        cublasStatus_t bs = cublasSgemm(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, w->rows, n, w->cols, &one,
                                        deq, w->cols, x, w->cols, &zero, out, w->rows);
        if (bs != CUBLAS_STATUS_SUCCESS) {
            fail(c, DUET_ERR_INTERNAL, "cublasSgemm", "cuBLAS returned an error");
            return;
        }
        if (bias) {
            duet_cu_add_bias(c->stream, out, bias, n, w->rows);
            launched(c, "bias");
        }
        c->stats.gemm_calls++;
        return;
    }
    c->stats.gemv_calls++;
    duet_cu_gemv(c->stream, c->n_sm, w->type, w->packed, w->row_bytes, w->rows, w->cols, bias, x, n, out);
    launched(c, "gemv");
}

static void cu_rope(duet_backend_t *be, float *x, const int32_t *pos, int n, int n_head, int head_dim,
                    int rot_dim, float theta, int neox)
{
    cuda_backend_t *c = cb(be);
    if (n <= 0)
        return;
    if (head_dim > DUET_CU_ATTN_MAX_HD) {
        fail(c, DUET_ERR_UNSUPPORTED, "rope", "head_dim above 256");
        return;
    }
    const int32_t *dp = send_ints(c, pos, n);
    if (!dp)
        return;
    duet_cu_rope(c->stream, x, dp, n, n_head, head_dim, rot_dim < head_dim ? rot_dim : head_dim,
                 theta, neox);
    launched(c, "rope");
}

static void cu_kv_write(duet_backend_t *be, const duet_kv_pool_view_t *pool, int layer,
                        const float *k, const float *v, const int32_t *slots, int n)
{
    cuda_backend_t *c = cb(be);
    if (n <= 0)
        return;
    const int32_t *ds = send_ints(c, slots, n);
    if (!ds)
        return;
    duet_cu_kv_write(c->stream, pool->base, pool->n_layer, pool->n_kv_head, pool->head_dim, layer,
                     k, v, ds, n);
    launched(c, "kv_write");
}

/* Plans the attention units (see attention.cu) on the host, where the batch is, and sends them
 * with the batch in one copy. Prefill tiles up to 32 / heads-per-unit tokens per unit, last
 * tiles first (they attend over the most positions); decode takes one token per unit and, when
 * all units together would not fill the SMs twice over, splits each long context into parts of
 * at least split_min positions. */
static void attn_run(duet_backend_t *be, const duet_kv_pool_view_t *pool, int layer, const float *q,
                     int n_head, const duet_attn_batch_t *b, float scale, float *out, int decode)
{
    cuda_backend_t *c = cb(be);
    int n_kv = pool->n_kv_head, hd = pool->head_dim;
    if (b->n_seq <= 0)
        return;
    if (hd > DUET_CU_ATTN_MAX_HD || hd < 1 || n_kv <= 0 || n_head % n_kv != 0) {
        fail(c, DUET_ERR_UNSUPPORTED, "attention", "head_dim above 256 or heads not a multiple of KV heads");
        return;
    }
    int group = n_head / n_kv;
    int hpu = group < DUET_CU_ATTN_ROWS ? group : DUET_CU_ATTN_ROWS;
    int hsplits = (group + hpu - 1) / hpu;
    int tpu = decode ? 1 : DUET_CU_ATTN_ROWS / hpu;

    long base_units = 0;
    for (int s = 0; s < b->n_seq; s++) {
        int n_new = b->tok_start[s + 1] - b->tok_start[s];
        base_units += (long)((n_new + tpu - 1) / tpu) * n_kv * hsplits;
    }
    int want_parts = 1;
    if (decode && c->split_min > 0 && base_units < 2L * c->n_sm)
        want_parts = (int)((2L * c->n_sm + base_units - 1) / base_units);

    /* Count, then fill: units and merges into the staging buffer after the batch arrays. */
    long n_units = 0, n_merges = 0;
    for (int pass = 0; pass < 2; pass++) {
        size_t off_start = 0;
        size_t off_len = off_start + (size_t)(b->n_seq + 1) * sizeof(int32_t);
        size_t off_table = off_len + (size_t)b->n_seq * sizeof(int32_t);
        size_t off_units = (off_table + (size_t)b->n_seq * b->max_blocks * sizeof(int32_t) + 15) & ~(size_t)15;
        size_t off_merges = (off_units + (size_t)n_units * sizeof(duet_cu_attn_unit_t) + 15) & ~(size_t)15;
        size_t total = off_merges + (size_t)n_merges * sizeof(duet_cu_attn_merge_t);
        unsigned char *s = NULL;
        if (pass == 1) {
            if (!(s = stage(c, total)))
                return;
            memcpy(s + off_start, b->tok_start, (size_t)(b->n_seq + 1) * sizeof(int32_t));
            memcpy(s + off_len, b->kv_len, (size_t)b->n_seq * sizeof(int32_t));
            memcpy(s + off_table, b->block_table, (size_t)b->n_seq * b->max_blocks * sizeof(int32_t));
        }
        duet_cu_attn_unit_t *units = s ? (duet_cu_attn_unit_t *)(s + off_units) : NULL;
        duet_cu_attn_merge_t *merges = s ? (duet_cu_attn_merge_t *)(s + off_merges) : NULL;
        long nu = 0, nm = 0;
        for (int sq = 0; sq < b->n_seq; sq++) {
            int first = b->tok_start[sq], n_new = b->tok_start[sq + 1] - first;
            int first_pos = b->kv_len[sq] - n_new;
            int tiles = (n_new + tpu - 1) / tpu;
            for (int tile = tiles - 1; tile >= 0; tile--) {
                int tok0 = tile * tpu, ntok = n_new - tok0 < tpu ? n_new - tok0 : tpu;
                int positions = first_pos + tok0 + ntok;  /* the tile's last token sees these */
                int parts = 1, chunk = positions;
                if (want_parts > 1 && positions > c->split_min) {
                    parts = (positions + c->split_min - 1) / c->split_min;
                    parts = parts < want_parts ? parts : want_parts;
                    chunk = ((positions + parts - 1) / parts + 15) & ~15;
                    parts = (positions + chunk - 1) / chunk;
                }
                for (int kvh = 0; kvh < n_kv; kvh++)
                    for (int hs = 0; hs < hsplits; hs++) {
                        int h0 = hs * hpu, nh = group - h0 < hpu ? group - h0 : hpu;
                        if (parts > 1 && merges)
                            merges[nm] = (duet_cu_attn_merge_t){(int)nu, parts, first + tok0,
                                                                kvh * group + h0, nh};
                        if (parts > 1)
                            nm++;
                        for (int p = 0; p < parts; p++, nu++)
                            if (units)
                                units[nu] = (duet_cu_attn_unit_t){
                                    sq, tok0, ntok, kvh * group + h0, nh, kvh, p * chunk,
                                    parts > 1 ? (p + 1) * chunk : positions, parts > 1 ? (int)nu : -1};
                    }
            }
        }
        n_units = nu;
        n_merges = nm;
        if (pass == 0)
            continue;
        if (n_units > 2147483647L) {
            fail(c, DUET_ERR_UNSUPPORTED, "attention", "batch too large for one grid");
            return;
        }
        unsigned char *dev = send_stage(c, total);
        if (!dev)
            return;
        duet_cu_attn_args_t a;
        a.pool = pool->base;
        a.n_layer = pool->n_layer;
        a.n_kv_head = n_kv;
        a.head_dim = hd;
        a.layer = layer;
        a.q = q;
        a.n_head = n_head;
        a.tok_start = (const int32_t *)(dev + off_start);
        a.kv_len = (const int32_t *)(dev + off_len);
        a.block_table = (const int32_t *)(dev + off_table);
        a.max_blocks = b->max_blocks;
        a.scale = scale;
        a.out = out;
        a.part_acc = NULL;
        a.part_ml = NULL;
        if (n_merges > 0) {
            /* Only split units write parts; their slot is their unit index. */
            size_t acc_floats = (size_t)n_units * DUET_CU_ATTN_ROWS * hd;
            float *parts = (float *)scratch(c, SCR_PARTS,
                                            (acc_floats + (size_t)n_units * 2 * DUET_CU_ATTN_ROWS) * sizeof(float));
            if (!parts)
                return;
            a.part_acc = parts;
            a.part_ml = parts + acc_floats;
        }
        duet_cu_attn(c->stream, &a, (const duet_cu_attn_unit_t *)(dev + off_units), (int)n_units);
        launched(c, "attention");
        c->stats.attn_calls++;
        if (n_merges > 0) {
            c->stats.attn_split_calls++;
            duet_cu_attn_merge(c->stream, &a, (const duet_cu_attn_merge_t *)(dev + off_merges), (int)n_merges);
            launched(c, "attention merge");
        }
    }
}

static void cu_attn_prefill(duet_backend_t *be, const duet_kv_pool_view_t *pool, int layer,
                            const float *q, int n_head, const duet_attn_batch_t *batch, float scale,
                            float *out)
{
    attn_run(be, pool, layer, q, n_head, batch, scale, out, 0);
}

static void cu_attn_decode(duet_backend_t *be, const duet_kv_pool_view_t *pool, int layer,
                           const float *q, int n_head, const duet_attn_batch_t *batch, float scale,
                           float *out)
{
    attn_run(be, pool, layer, q, n_head, batch, scale, out, 1);
}

static void cu_swiglu(duet_backend_t *be, const float *gate, const float *up, size_t n, float *out)
{
    cuda_backend_t *c = cb(be);
    duet_cu_swiglu(c->stream, gate, up, n, out);
    launched(c, "swiglu");
}

static void cu_add(duet_backend_t *be, float *x, const float *y, size_t n)
{
    cuda_backend_t *c = cb(be);
    duet_cu_add(c->stream, x, y, n);
    launched(c, "add");
}

/* ---- sampling ---- */

/* The rows' parameters and penalized ids go over in one staged copy; the kernel writes the
 * tokens after the e values in the sample scratch, and only those n ints come back. */
static void cu_sample(duet_backend_t *be, float *logits, int n_vocab, const duet_sample_req_t *reqs,
                      int n, int32_t *tokens)
{
    cuda_backend_t *c = cb(be);
    if (n <= 0)
        return;
    memset(tokens, 0, (size_t)n * sizeof *tokens);  /* defined, should an error stop the draw */
    size_t n_pen = 0;
    for (int i = 0; i < n; i++)
        if (reqs[i].repeat_penalty != 1.0f && reqs[i].repeat_last_n > 0)
            n_pen += (size_t)(reqs[i].n_history < reqs[i].repeat_last_n ? reqs[i].n_history
                                                                         : reqs[i].repeat_last_n);
    size_t off_pen = (size_t)n * sizeof(duet_cu_sample_row_t);
    unsigned char *s = stage(c, off_pen + (n_pen + 1) * sizeof(int32_t));
    if (!s)
        return;
    duet_cu_sample_row_t *rows = (duet_cu_sample_row_t *)s;
    int32_t *pen = (int32_t *)(s + off_pen);
    int n_used = 0;
    for (int i = 0; i < n; i++) {
        const duet_sample_req_t *q = &reqs[i];
        duet_cu_sample_row_t *r = &rows[i];
        r->row = q->row;
        r->top_k = q->top_k;
        r->temperature = q->temperature;
        r->top_p = q->top_p;
        r->min_p = q->min_p;
        r->repeat_penalty = q->repeat_penalty;
        r->seed = q->seed;
        r->draw_index = q->draw_index;
        r->pen_off = n_used;
        if (q->repeat_penalty != 1.0f && q->repeat_last_n > 0 && q->n_history > 0) {
            int from = q->n_history > q->repeat_last_n ? q->n_history - q->repeat_last_n : 0;
            for (int j = from; j < q->n_history; j++)
                if (duet_sample_penalty_first(q->history, from, j, n_vocab))
                    pen[n_used++] = q->history[j];
        }
        r->n_pen = n_used - r->pen_off;
    }
    unsigned char *dev = send_stage(c, off_pen + (n_pen + 1) * sizeof(int32_t));
    if (!dev)
        return;
    size_t e_bytes = (size_t)n * (size_t)n_vocab * sizeof(float);
    unsigned char *scr = (unsigned char *)scratch(c, SCR_SAMPLE, e_bytes + (size_t)n * sizeof(int32_t));
    if (!scr)
        return;
    int32_t *dev_tokens = (int32_t *)(scr + e_bytes);
    duet_cu_sample(c->stream, logits, n_vocab, (const duet_cu_sample_row_t *)dev,
                   n, (const int32_t *)(dev + off_pen), (float *)scr, dev_tokens);
    launched(c, "sample");
    if (ok(c, cudaMemcpyAsync(tokens, dev_tokens, (size_t)n * sizeof(int32_t), cudaMemcpyDeviceToHost,
                              c->stream), "copying sampled tokens"))
        ok(c, cudaStreamSynchronize(c->stream), "copying sampled tokens");
}

static duet_status_t cu_status(duet_backend_t *be, char *why, size_t why_len)
{
    cuda_backend_t *c = cb(be);
    if (c->status != DUET_OK && why_len > 0)
        snprintf(why, why_len, "cuda device %d: %s", c->device, c->why);
    return c->status;
}

/* ---- create / destroy ---- */

static void cu_destroy(duet_backend_t *be)
{
    cuda_backend_t *c = cb(be);
    if (c->stream)
        cudaStreamSynchronize(c->stream);
    for (int i = 0; i < N_SCRATCH; i++)
        if (c->scratch[i])
            cudaFree(c->scratch[i]);
    if (c->blas)
        cublasDestroy(c->blas);
    if (c->stream)
        cudaStreamDestroy(c->stream);
    free(c->stage);
    free(c);
}

extern "C" duet_status_t duet_backend_cuda_create(const duet_cuda_conf_t *conf, duet_backend_t **be_p)
{
    duet_cuda_conf_t cf = conf ? *conf : duet_cuda_conf_t{0, 0, 0};
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0) {
        duet_log_error("cuda: no usable CUDA device: %s",
                       e != cudaSuccess ? cudaGetErrorString(e) : "the driver reports none");
        return DUET_ERR_UNAVAILABLE;
    }
    if (cf.device < 0 || cf.device >= count) {
        duet_log_error("cuda: device %d requested, %d present", cf.device, count);
        return DUET_ERR_INVALID;
    }
    if ((e = cudaSetDevice(cf.device)) != cudaSuccess) {
        duet_log_error("cuda: cannot use device %d: %s", cf.device, cudaGetErrorString(e));
        return DUET_ERR_UNAVAILABLE;
    }
    cuda_backend_t *c = (cuda_backend_t *)calloc(1, sizeof *c);
    if (!c)
        return DUET_ERR_NOMEM;
    c->device = cf.device;
    c->gemm_min_tokens = cf.gemm_min_tokens == 0 ? DEFAULT_GEMM_MIN_TOKENS : cf.gemm_min_tokens;
    c->split_min = cf.split_min_positions == 0 ? DEFAULT_SPLIT_MIN_POSITIONS
                   : cf.split_min_positions < 0 ? 0 : (cf.split_min_positions + 15) & ~15;
    if (cudaDeviceGetAttribute(&c->n_sm, cudaDevAttrMultiProcessorCount, cf.device) != cudaSuccess ||
        c->n_sm < 1)
        c->n_sm = 1;
    duet_status_t st = DUET_ERR_NOMEM;
    if ((e = cudaStreamCreate(&c->stream)) != cudaSuccess) {
        duet_log_error("cuda: cannot create a stream: %s", cudaGetErrorString(e));
        goto err_free;
    }
    if (cublasCreate(&c->blas) != CUBLAS_STATUS_SUCCESS) {
        duet_log_error("cuda: cannot initialize cuBLAS");
        goto err_stream;
    }
    /* Plain f32 SGEMM (no TF32), so prefill logits stay close to the CPU's. */
    if (cublasSetStream(c->blas, c->stream) != CUBLAS_STATUS_SUCCESS ||
        cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH) != CUBLAS_STATUS_SUCCESS) {
        duet_log_error("cuda: cannot configure cuBLAS");
        st = DUET_ERR_INTERNAL;
        goto err_blas;
    }
    if ((e = duet_cu_attn_init()) != cudaSuccess) {
        duet_log_error("cuda: cannot raise the attention kernel's shared memory: %s", cudaGetErrorString(e));
        st = DUET_ERR_UNSUPPORTED;
        goto err_blas;
    }
    c->be.name = duet_backend_cuda_emulated() ? "cuda-emu" : "cuda";
    c->be.ctx = c;
    c->be.alloc = cu_alloc;
    c->be.free = cu_free;
    c->be.upload = cu_upload;
    c->be.download = cu_download;
    c->be.synchronize = cu_synchronize;
    c->be.pin_host = cu_pin_host;
    c->be.unpin_host = cu_unpin_host;
    c->be.prepare_weight = cu_prepare_weight;
    c->be.release_weight = cu_release_weight;
    c->be.embed = cu_embed;
    c->be.rmsnorm = cu_rmsnorm;
    c->be.matmul = cu_matmul;
    c->be.rope = cu_rope;
    c->be.kv_write = cu_kv_write;
    c->be.attn_prefill = cu_attn_prefill;
    c->be.attn_decode = cu_attn_decode;
    c->be.swiglu = cu_swiglu;
    c->be.add = cu_add;
    c->be.sample = cu_sample;
    c->be.status = cu_status;
    c->be.destroy = cu_destroy;
    *be_p = &c->be;
    return DUET_OK;

err_blas:
    cublasDestroy(c->blas);
err_stream:
    cudaStreamDestroy(c->stream);
err_free:
    free(c);
    return st;
}

extern "C" void duet_backend_cuda_stats(duet_backend_t *be, duet_cuda_stats_t *stats_p)
{
    *stats_p = cb(be)->stats;
}

extern "C" int duet_backend_cuda_emulated(void)
{
#ifdef __CUDACC__
    return 0;
#else
    return 1;
#endif
}
