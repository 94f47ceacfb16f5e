/* kernels/cpu/cpu_backend.c — the CPU backend: each op of backend.h partitioned over a persistent
 * thread pool, with the row-level work done by one ops table (scalar or AVX2, picked at create). */
#include "cpu_backend.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "../../lib/base/threadpool.h"
#include "../quant.h"
#include "ops.h"

/* Attention keeps one f32 accumulator row per query row on the stack: head_dim is bounded here.
 * The engine refuses models with head_dim > 256 at load; the ops, which cannot return a status,
 * write NaN rather than overflow if that check is ever missed. */
#define CPU_MAX_HEAD_DIM 256
/* Query rows (token, head) that one attention work unit carries through the KV blocks. */
#define ATTN_UNIT_ROWS 16
/* Weight rows one thread runs all tokens over before moving on, so they stay in cache. */
#define MATMUL_ROW_BLOCK 32

typedef struct {
    duet_backend_t be;   /* first, so a duet_backend_t * is a cpu_backend_t * */
    duet_pool_t *pool;
    const duet_cpu_ops_t *ops;
} cpu_backend_t;

static const duet_cpu_ops_t *ops_of(duet_backend_t *be)
{
    return ((cpu_backend_t *)be)->ops;
}

/* Runs fn over the pool, or on the caller alone when the op is too small to pay for waking it. */
static void run(duet_backend_t *be, duet_pool_fn fn, void *arg, int parallel)
{
    if (parallel)
        duet_pool_run(((cpu_backend_t *)be)->pool, fn, arg);
    else
        fn(arg, 0, 1);
}

static int min_int(int a, int b)
{
    return a < b ? a : b;
}

static void fill_nan(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = NAN;
}

/* ---- memory ---- */

static void *cpu_alloc(duet_backend_t *be, size_t bytes)
{
    (void)be;
    size_t rounded = (bytes + 63) & ~(size_t)63;  /* aligned_alloc wants a multiple of 64 */
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (p)
        memset(p, 0, rounded);
    return p;
}

static void cpu_free(duet_backend_t *be, void *ptr)
{
    (void)be;
    free(ptr);
}

static void cpu_copy(duet_backend_t *be, void *dst, const void *src, size_t bytes)
{
    (void)be;
    memcpy(dst, src, bytes);
}

/* ---- embed ---- */

typedef struct {
    const duet_weight_t *table;
    const int32_t *tokens;
    int n;
    float *out;
} embed_task_t;

static void embed_worker(void *arg, int ith, int nth)
{
    const embed_task_t *t = arg;
    int b, e;
    duet_pool_split(t->n, 1, ith, nth, &b, &e);
    const uint8_t *data = t->table->data;
    for (int i = b; i < e; i++)
        duet_dequantize_row(t->table->type, data + (size_t)t->tokens[i] * t->table->row_bytes,
                            t->out + (size_t)i * t->table->cols, t->table->cols);
}

/* Both ISAs share this: every conversion is exact, so there is nothing for AVX2 to differ in. */
static void cpu_embed(duet_backend_t *be, const duet_weight_t *table, const int32_t *tokens, int n,
                      float *out)
{
    embed_task_t t = {table, tokens, n, out};
    run(be, embed_worker, &t, n >= 8);
}

/* ---- rmsnorm ---- */

typedef struct {
    const duet_cpu_ops_t *ops;
    const float *x, *w;
    float eps;
    int n, dim;
    float *out;
} rmsnorm_task_t;

static void rmsnorm_worker(void *arg, int ith, int nth)
{
    const rmsnorm_task_t *t = arg;
    int b, e;
    duet_pool_split(t->n, 1, ith, nth, &b, &e);
    for (int i = b; i < e; i++) {
        const float *x = t->x + (size_t)i * t->dim;
        float ms = t->ops->sum_sq(x, t->dim) / (float)t->dim;
        t->ops->scale_mul(t->out + (size_t)i * t->dim, x, 1.0f / sqrtf(ms + t->eps), t->w, t->dim);
    }
}

static void cpu_rmsnorm(duet_backend_t *be, const float *x, const float *w, float eps, int n,
                        int dim, float *out)
{
    rmsnorm_task_t t = {ops_of(be), x, w, eps, n, dim, out};
    run(be, rmsnorm_worker, &t, n >= 4 && (size_t)n * (size_t)dim >= 8192);
}

/* ---- matmul ---- */

typedef struct {
    duet_cpu_dot_fn dot;
    const duet_weight_t *w;
    const float *bias;
    const float *x;
    int n;
    float *out;
} matmul_task_t;

static duet_cpu_dot_fn dot_for_type(const duet_cpu_ops_t *ops, uint32_t type)
{
    switch (type) {
    case DUET_TYPE_F32:  return ops->dot_f32;
    case DUET_TYPE_F16:  return ops->dot_f16;
    case DUET_TYPE_BF16: return ops->dot_bf16;
    case DUET_TYPE_Q8_0: return ops->dot_q8_0;
    case DUET_TYPE_Q4_0: return ops->dot_q4_0;
    case DUET_TYPE_Q4_1: return ops->dot_q4_1;
    }
    return NULL;
}

/* Each thread owns a range of output rows (aligned to 16 floats so no two threads write one
 * cache line of out) and runs every token over them: a block of weight rows is read from
 * memory once and reused from cache by each group of DUET_CPU_DOT_MAX_NX tokens. */
static void matmul_worker(void *arg, int ith, int nth)
{
    const matmul_task_t *t = arg;
    const duet_weight_t *w = t->w;
    const uint8_t *data = w->data;
    size_t rows = (size_t)w->rows, cols = (size_t)w->cols;
    int r0, r1;
    duet_pool_split(w->rows, 16, ith, nth, &r0, &r1);
    for (int rb = r0; rb < r1; rb += MATMUL_ROW_BLOCK) {
        int re = min_int(rb + MATMUL_ROW_BLOCK, r1);
        for (int i = 0; i < t->n; i += DUET_CPU_DOT_MAX_NX) {
            int nx = min_int(DUET_CPU_DOT_MAX_NX, t->n - i);
            for (int r = rb; r < re; r++)
                t->dot(w->cols, data + (size_t)r * w->row_bytes, t->x + (size_t)i * cols, cols, nx,
                       t->out + (size_t)i * rows + (size_t)r, rows);
        }
        if (t->bias)
            for (int i = 0; i < t->n; i++)
                for (int r = rb; r < re; r++)
                    t->out[(size_t)i * rows + (size_t)r] += t->bias[r];
    }
}

static void cpu_matmul(duet_backend_t *be, const duet_weight_t *w, const float *bias,
                       const float *x, int n, float *out)
{
    matmul_task_t t = {dot_for_type(ops_of(be), w->type), w, bias, x, n, out};
    if (!t.dot) {  /* the engine checks weight types at load; never silently wrong */
        fill_nan(out, (size_t)n * (size_t)w->rows);
        return;
    }
    run(be, matmul_worker, &t, (size_t)w->rows * (size_t)w->cols * (size_t)n >= 32768 && w->rows >= 32);
}

/* ---- rope ---- */

typedef struct {
    const duet_cpu_ops_t *ops;
    float *x;
    const int32_t *pos;
    int n, n_head, head_dim, rot_dim;
    float theta;
    int neox;
} rope_task_t;

static void rope_worker(void *arg, int ith, int nth)
{
    const rope_task_t *t = arg;
    int half = t->rot_dim / 2;
    float cos_t[CPU_MAX_HEAD_DIM / 2], sin_t[CPU_MAX_HEAD_DIM / 2];
    int b, e;
    duet_pool_split(t->n, 1, ith, nth, &b, &e);
    for (int i = b; i < e; i++) {
        /* Angles in double, once per token, shared by every head: large positions keep their
         * precision and both ISAs rotate by the very same cos/sin. */
        for (int j = 0; j < half; j++) {
            double freq = pow((double)t->theta, -2.0 * j / (double)t->rot_dim);
            double angle = (double)t->pos[i] * freq;
            cos_t[j] = (float)cos(angle);
            sin_t[j] = (float)sin(angle);
        }
        for (int h = 0; h < t->n_head; h++)
            t->ops->rope_row(t->x + ((size_t)i * t->n_head + h) * t->head_dim, cos_t, sin_t, half,
                             t->neox);
    }
}

static void cpu_rope(duet_backend_t *be, float *x, const int32_t *pos, int n, int n_head,
                     int head_dim, int rot_dim, float theta, int neox)
{
    if (head_dim > CPU_MAX_HEAD_DIM) {
        fill_nan(x, (size_t)n * (size_t)n_head * (size_t)head_dim);
        return;
    }
    rope_task_t t = {ops_of(be), x, pos, n, n_head, head_dim, min_int(rot_dim, head_dim), theta,
                     neox};
    run(be, rope_worker, &t, n >= 4);
}

/* ---- kv_write ---- */

typedef struct {
    const duet_cpu_ops_t *ops;
    const duet_kv_pool_view_t *pool;
    int layer;
    const float *k, *v;
    const int32_t *slots;
    int n;
} kv_write_task_t;

static void kv_write_worker(void *arg, int ith, int nth)
{
    const kv_write_task_t *t = arg;
    int nkv = t->pool->n_kv_head, hd = t->pool->head_dim;
    int b, e;
    duet_pool_split(t->n, 1, ith, nth, &b, &e);
    for (int i = b; i < e; i++) {
        int block = t->slots[i] / DUET_KV_BLOCK_TOKENS, row = t->slots[i] % DUET_KV_BLOCK_TOKENS;
        uint16_t *ks = duet_kv_slice(t->pool, block, t->layer, 0);
        uint16_t *vs = duet_kv_slice(t->pool, block, t->layer, 1);
        for (int h = 0; h < nkv; h++) {
            size_t dst = ((size_t)h * DUET_KV_BLOCK_TOKENS + (size_t)row) * (size_t)hd;
            size_t src = ((size_t)i * nkv + h) * (size_t)hd;
            t->ops->f32_to_f16(ks + dst, t->k + src, hd);
            t->ops->f32_to_f16(vs + dst, t->v + src, hd);
        }
    }
}

static void cpu_kv_write(duet_backend_t *be, const duet_kv_pool_view_t *pool, int layer,
                         const float *k, const float *v, const int32_t *slots, int n)
{
    kv_write_task_t t = {ops_of(be), pool, layer, k, v, slots, n};
    run(be, kv_write_worker, &t, n >= 16);
}

/* ---- attention ----
 * Work is cut into units of (sequence, token tile, KV head, slice of that head's query heads),
 * at most ATTN_UNIT_ROWS query rows each; threads take units from a shared counter. A unit walks
 * its sequence's KV blocks in order (through the block table), 16 positions at a time, keeping
 * per query row the running max m, the running sum l and the unnormalized output acc
 * (FlashAttention-2's online softmax): a block that raises the max rescales l and acc by
 * exp(m_old - m_new) first. Each K row is dotted with all the unit's heads of a token in one
 * call, so the heads of a GQA group share its load. Prefill tiles several tokens per unit;
 * decode one token, so many sequences spread over the threads. */

typedef struct {
    const duet_cpu_ops_t *ops;
    const duet_kv_pool_view_t *pool;
    int layer;
    const float *q;                /* [n_tok][n_head][head_dim] */
    int n_head;
    const duet_attn_batch_t *batch;
    float scale;
    float *out;                    /* [n_tok][n_head][head_dim] */
    int group;                     /* query heads per KV head */
    int heads_per_unit, head_splits, tokens_per_unit;
    atomic_int next;               /* the next unit to take */
} attn_task_t;

static int attn_seq_tiles(const attn_task_t *t, int s)
{
    int n_new = t->batch->tok_start[s + 1] - t->batch->tok_start[s];
    return (n_new + t->tokens_per_unit - 1) / t->tokens_per_unit;
}

/* Query rows of tokens tok0 .. tok0+ntok-1 of sequence s (indices within the sequence's new
 * tokens) and heads h0 .. h0+nh-1 of KV head kvh's group; ntok * nh <= ATTN_UNIT_ROWS. */
static void attn_unit(const attn_task_t *t, int s, int tok0, int ntok, int kvh, int h0, int nh)
{
    const duet_cpu_ops_t *ops = t->ops;
    const duet_attn_batch_t *bt = t->batch;
    int hd = t->pool->head_dim;
    int first = bt->tok_start[s];
    int first_pos = bt->kv_len[s] - (bt->tok_start[s + 1] - first);
    int pos_last = first_pos + tok0 + ntok - 1;
    int head0 = kvh * t->group + h0;
    float acc[ATTN_UNIT_ROWS][CPU_MAX_HEAD_DIM];
    float m[ATTN_UNIT_ROWS], l[ATTN_UNIT_ROWS];
    float sc[ATTN_UNIT_ROWS][DUET_KV_BLOCK_TOKENS];

    for (int r = 0; r < ntok * nh; r++) {
        memset(acc[r], 0, (size_t)hd * sizeof(float));
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }
    for (int blk = 0; blk * DUET_KV_BLOCK_TOKENS <= pos_last; blk++) {
        int block = bt->block_table[(size_t)s * bt->max_blocks + blk];
        const uint16_t *ks = duet_kv_slice(t->pool, block, t->layer, 0) +
                             (size_t)kvh * DUET_KV_BLOCK_TOKENS * hd;
        const uint16_t *vs = duet_kv_slice(t->pool, block, t->layer, 1) +
                             (size_t)kvh * DUET_KV_BLOCK_TOKENS * hd;
        for (int ti = 0; ti < ntok; ti++) {
            /* Causal: this token sees positions up to its own. */
            int lim = min_int(DUET_KV_BLOCK_TOKENS, first_pos + tok0 + ti - blk * DUET_KV_BLOCK_TOKENS + 1);
            if (lim <= 0)
                continue;
            const float *qt = t->q + ((size_t)(first + tok0 + ti) * t->n_head + head0) * hd;
            for (int j = 0; j < lim; j++)
                for (int hh = 0; hh < nh; hh += DUET_CPU_DOT_MAX_NX)
                    ops->dot_f16(hd, ks + (size_t)j * hd, qt + (size_t)hh * hd, hd,
                                 min_int(DUET_CPU_DOT_MAX_NX, nh - hh), &sc[ti * nh + hh][j],
                                 DUET_KV_BLOCK_TOKENS);
            for (int hh = 0; hh < nh; hh++) {
                int r = ti * nh + hh;
                float *p = sc[r];
                float mx = -INFINITY;
                for (int j = 0; j < lim; j++) {
                    p[j] *= t->scale;
                    mx = fmaxf(mx, p[j]);
                }
                if (mx > m[r]) {
                    if (m[r] != -INFINITY) {
                        float corr = expf(m[r] - mx);
                        l[r] *= corr;
                        ops->scale(acc[r], acc[r], corr, hd);
                    }
                    m[r] = mx;
                }
                l[r] += ops->exp_shift_sum(p, lim, m[r]);
                for (int j = 0; j < lim; j++)
                    ops->axpy_f16(acc[r], p[j], vs + (size_t)j * hd, hd);
            }
        }
    }
    for (int ti = 0; ti < ntok; ti++)
        for (int hh = 0; hh < nh; hh++) {
            int r = ti * nh + hh;
            float *o = t->out + ((size_t)(first + tok0 + ti) * t->n_head + head0 + hh) * hd;
            if (l[r] > 0.0f)
                ops->scale(o, acc[r], 1.0f / l[r], hd);
            else  /* a token with no position (a malformed batch): nothing to attend to */
                memset(o, 0, (size_t)hd * sizeof(float));
        }
}

static void attn_worker(void *arg, int ith, int nth)
{
    attn_task_t *t = arg;
    int n_kv = t->pool->n_kv_head;
    int per_tile = n_kv * t->head_splits;
    int s = 0, seq_base = 0;  /* units before sequence s; only grows, as the counter does */
    (void)ith;
    (void)nth;
    for (;;) {
        int u = atomic_fetch_add_explicit(&t->next, 1, memory_order_relaxed);
        while (s < t->batch->n_seq && u >= seq_base + attn_seq_tiles(t, s) * per_tile) {
            seq_base += attn_seq_tiles(t, s) * per_tile;
            s++;
        }
        if (s >= t->batch->n_seq)
            return;
        int local = u - seq_base;
        int hs = local % t->head_splits;
        int kvh = (local / t->head_splits) % n_kv;
        /* Last tiles first: they attend over the most positions, so big units start early. */
        int tile = attn_seq_tiles(t, s) - 1 - local / per_tile;
        int n_new = t->batch->tok_start[s + 1] - t->batch->tok_start[s];
        int tok0 = tile * t->tokens_per_unit;
        int h0 = hs * t->heads_per_unit;
        attn_unit(t, s, tok0, min_int(t->tokens_per_unit, n_new - tok0), kvh, h0,
                  min_int(t->heads_per_unit, t->group - h0));
    }
}

static void attn_run(duet_backend_t *be, const duet_kv_pool_view_t *pool, int layer,
                     const float *q, int n_head, const duet_attn_batch_t *batch, float scale,
                     float *out, int tile_tokens)
{
    size_t n_tok = batch->n_seq > 0 ? (size_t)batch->tok_start[batch->n_seq] : 0;
    if (pool->head_dim > CPU_MAX_HEAD_DIM || pool->n_kv_head <= 0 || n_head % pool->n_kv_head != 0) {
        fill_nan(out, n_tok * (size_t)n_head * (size_t)pool->head_dim);
        return;
    }
    attn_task_t t = {
        .ops = ops_of(be), .pool = pool, .layer = layer, .q = q, .n_head = n_head,
        .batch = batch, .scale = scale, .out = out, .group = n_head / pool->n_kv_head,
    };
    t.heads_per_unit = min_int(t.group, ATTN_UNIT_ROWS);
    t.head_splits = (t.group + t.heads_per_unit - 1) / t.heads_per_unit;
    t.tokens_per_unit = tile_tokens ? ATTN_UNIT_ROWS / t.heads_per_unit : 1;
    atomic_init(&t.next, 0);
    run(be, attn_worker, &t, n_tok * (size_t)n_head > 1);
}

static void cpu_attn_prefill(duet_backend_t *be, const duet_kv_pool_view_t *pool, int layer,
                             const float *q, int n_head, const duet_attn_batch_t *batch,
                             float scale, float *out)
{
    attn_run(be, pool, layer, q, n_head, batch, scale, out, 1);
}

static void cpu_attn_decode(duet_backend_t *be, const duet_kv_pool_view_t *pool, int layer,
                            const float *q, int n_head, const duet_attn_batch_t *batch,
                            float scale, float *out)
{
    attn_run(be, pool, layer, q, n_head, batch, scale, out, 0);
}

/* ---- elementwise: swiglu, add ---- */

typedef struct {
    const duet_cpu_ops_t *ops;
    float *x;          /* add: x += y; swiglu: out */
    const float *a, *b;
    size_t n;
    int swiglu;
} elem_task_t;

static void elem_worker(void *arg, int ith, int nth)
{
    const elem_task_t *t = arg;
    /* Chunks of 16 floats (one cache line) so threads never share a line of the output. */
    size_t lines = (t->n + 15) / 16;
    size_t b = lines * (size_t)ith / (size_t)nth * 16, e = lines * (size_t)(ith + 1) / (size_t)nth * 16;
    if (e > t->n)
        e = t->n;
    if (b >= e)
        return;
    if (t->swiglu)
        t->ops->silu_mul(t->x + b, t->a + b, t->b + b, e - b);
    else
        t->ops->add(t->x + b, t->a + b, e - b);
}

static void cpu_swiglu(duet_backend_t *be, const float *gate, const float *up, size_t n, float *out)
{
    elem_task_t t = {ops_of(be), out, gate, up, n, 1};
    run(be, elem_worker, &t, n >= 16384);
}

static void cpu_add(duet_backend_t *be, float *x, const float *y, size_t n)
{
    elem_task_t t = {ops_of(be), x, y, NULL, n, 0};
    run(be, elem_worker, &t, n >= 65536);
}

/* ---- create / destroy ---- */

static void cpu_destroy(duet_backend_t *be)
{
    cpu_backend_t *cpu = (cpu_backend_t *)be;
    duet_pool_destroy(cpu->pool);
    free(cpu);
}

#if defined(__x86_64__) || defined(__i386__)
/* __builtin_cpu_supports also checks that the OS saves the YMM registers; F16C is read from
 * CPUID leaf 1 directly because clang (14) has no "f16c" name for that builtin. */
static int cpu_has_avx2_fma_f16c(void)
{
    unsigned eax, ebx, ecx, edx;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
        return 0;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx))
        return 0;
    return (ecx & bit_F16C) != 0;
}
#endif

int duet_cpu_isa_supported(duet_cpu_isa_t isa)
{
    switch (isa) {
    case DUET_CPU_ISA_AUTO:
    case DUET_CPU_ISA_SCALAR:
        return 1;
    case DUET_CPU_ISA_AVX2:
#if defined(__x86_64__) || defined(__i386__)
        return duet_cpu_ops_avx2() != NULL && cpu_has_avx2_fma_f16c();
#else
        return 0;
#endif
    }
    return 0;
}

duet_status_t duet_backend_cpu_create(const duet_cpu_conf_t *conf, duet_backend_t **be_p)
{
    duet_cpu_conf_t c = conf ? *conf : (duet_cpu_conf_t){0};
    if (c.n_threads < 0)
        return DUET_ERR_INVALID;
    if (c.isa == DUET_CPU_ISA_AUTO)
        c.isa = duet_cpu_isa_supported(DUET_CPU_ISA_AVX2) ? DUET_CPU_ISA_AVX2 : DUET_CPU_ISA_SCALAR;
    else if (c.isa != DUET_CPU_ISA_SCALAR && c.isa != DUET_CPU_ISA_AVX2)
        return DUET_ERR_INVALID;
    if (!duet_cpu_isa_supported(c.isa))
        return DUET_ERR_UNSUPPORTED;

    cpu_backend_t *cpu = calloc(1, sizeof *cpu);
    if (!cpu)
        return DUET_ERR_NOMEM;
    duet_status_t st = duet_pool_create(c.n_threads ? c.n_threads : duet_cpu_count(), &cpu->pool);
    if (st != DUET_OK) {
        free(cpu);
        return st;
    }
    cpu->ops = c.isa == DUET_CPU_ISA_AVX2 ? duet_cpu_ops_avx2() : &duet_cpu_ops_scalar;
    cpu->be = (duet_backend_t){
        .name = c.isa == DUET_CPU_ISA_AVX2 ? "cpu-avx2" : "cpu-scalar",
        .ctx = cpu,
        .alloc = cpu_alloc,
        .free = cpu_free,
        .upload = cpu_copy,
        .download = cpu_copy,
        .synchronize = NULL,      /* every op is complete when it returns */
        .prepare_weight = NULL,   /* matmul reads the GGUF rows as they are */
        .release_weight = NULL,
        .embed = cpu_embed,
        .rmsnorm = cpu_rmsnorm,
        .matmul = cpu_matmul,
        .rope = cpu_rope,
        .kv_write = cpu_kv_write,
        .attn_prefill = cpu_attn_prefill,
        .attn_decode = cpu_attn_decode,
        .swiglu = cpu_swiglu,
        .add = cpu_add,
        .destroy = cpu_destroy,
    };
    *be_p = &cpu->be;
    return DUET_OK;
}
