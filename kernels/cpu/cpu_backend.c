/* kernels/cpu/cpu_backend.c — the CPU backend: each op of backend.h cut into chunks that the
 * threads of a persistent pool (cpu_pool.c) claim, with the row-level work done by one ops table
 * (scalar, AVX2 or AVX-512, picked at create), and, where the CPU has AVX-512 VNNI, matmuls on
 * packed weights: block types with integer dot products (qmatmul.h), F16 with f32 FMAs
 * (f16matmul.h). */
#include "cpu_backend.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "../../lib/base/cpu.h"
#include "../quant.h"
#include "cpu_pool.h"
#include "f16matmul.h"
#include "ops.h"
#include "qmatmul.h"

/* Attention keeps one f32 accumulator row per query row on the stack: head_dim is bounded here.
 * The engine refuses models with head_dim > 256 at load; the ops, which cannot return a status,
 * write NaN rather than overflow if that check is ever missed. */
#define CPU_MAX_HEAD_DIM 256
/* Query rows (token, head) that one attention work unit carries through the KV blocks. */
#define ATTN_UNIT_ROWS 16
/* KV positions (whole blocks) per step of the online softmax: one max, exp and rescale per up
 * to 64 positions rather than per block of 16, as many as fit 16 KiB of f32 K (and as much V)
 * on the stack: 64 at head_dim 64, 16 at 256. */
#define ATTN_TILE 64
#define ATTN_TILE_FLOATS (ATTN_TILE * 64)
/* Weight rows one thread runs all tokens over before moving on, so they stay in cache. */
#define MATMUL_ROW_BLOCK 32

typedef struct {
    duet_backend_t be;   /* first, so a duet_backend_t * is a cpu_backend_t * */
    duet_cpu_pool_t *pool;
    const duet_cpu_ops_t *ops;
    duet_cpu_ops_t ops_avx512;   /* the table ops points to on the AVX-512 ISA */
    /* The integer matmul over packed weights; NULL on ISAs without it (weights stay as stored). */
    duet_cpu_qact_fn qact, qact8;   /* 16-bit and 8-bit activations */
    duet_cpu_qgemm_fn qgemm;
    int act_bits;                   /* 16 or 8: the activations of every packed weight */
    duet_cpu_f16gemm_fn f16gemm;    /* F16 weights, packed likewise; NULL with qgemm */
    /* RoPE cos/sin by position (see rope_table): [rope_n][rope_rot_dim] (cos of the rot_dim / 2
     * pairs, then sin) for angles of rope_theta; rope_cap floats allocated. */
    float *rope_tab;
    size_t rope_cap;
    int rope_n, rope_rot_dim;
    float rope_theta;
    /* Quantized activations of the current matmul, grown to the largest batch seen and then
     * reused, so a step allocates nothing. */
    void *act;
    size_t act_cap;
} cpu_backend_t;

static const duet_cpu_ops_t *ops_of(duet_backend_t *be)
{
    return ((cpu_backend_t *)be)->ops;
}

/* Runs fn over the pool, or on the caller alone when the op is too small to pay for waking it. */
static void run(duet_backend_t *be, duet_cpu_task_fn fn, void *arg, int parallel)
{
    if (parallel)
        duet_cpu_pool_run(((cpu_backend_t *)be)->pool, fn, arg);
    else
        fn(arg);
}

/* Work items [0, n) handed out `chunk` at a time to whichever threads come for them (see
 * cpu_pool.h: a task must not count on any thread but the caller). */
typedef struct {
    atomic_int next;
    int n, chunk;
} claim_t;

/* About four chunks per thread, a multiple of align: enough to rebalance when a thread is slow
 * or late, few enough to keep the claims cheap. */
static void claim_init(duet_backend_t *be, claim_t *c, int n, int align)
{
    int nth = duet_cpu_pool_size(((cpu_backend_t *)be)->pool);
    int units = (n + align - 1) / align;
    int per = (units + 4 * nth - 1) / (4 * nth);
    atomic_init(&c->next, 0);
    c->n = n;
    c->chunk = (per > 0 ? per : 1) * align;
}

/* Takes the next chunk [*b, *e); 0 when the work is all taken. */
static int claim_next(claim_t *c, int *b, int *e)
{
    int i = atomic_fetch_add_explicit(&c->next, c->chunk, memory_order_relaxed);
    if (i >= c->n)
        return 0;
    *b = i;
    *e = i + c->chunk < c->n ? i + c->chunk : c->n;
    return 1;
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
    claim_t work;   /* tokens */
} embed_task_t;

static void embed_worker(void *arg)
{
    embed_task_t *t = arg;
    int b, e;
    const uint8_t *data = t->table->data;
    while (claim_next(&t->work, &b, &e))
        for (int i = b; i < e; i++)
            duet_dequantize_row(t->table->type, data + (size_t)t->tokens[i] * t->table->row_bytes,
                                t->out + (size_t)i * t->table->cols, t->table->cols);
}

/* Both ISAs share this: every conversion is exact, so there is nothing for AVX2 to differ in. */
static void cpu_embed(duet_backend_t *be, const duet_weight_t *table, const int32_t *tokens, int n,
                      float *out)
{
    embed_task_t t = {table, tokens, n, out, {0}};
    claim_init(be, &t.work, n, 1);
    run(be, embed_worker, &t, n >= 8);
}

/* ---- rmsnorm ---- */

typedef struct {
    const duet_cpu_ops_t *ops;
    const float *x, *w;
    float eps;
    int n, dim;
    float *out;
    claim_t work;   /* rows */
} rmsnorm_task_t;

static void rmsnorm_worker(void *arg)
{
    rmsnorm_task_t *t = arg;
    int b, e;
    while (claim_next(&t->work, &b, &e))
        for (int i = b; i < e; i++) {
            const float *x = t->x + (size_t)i * t->dim;
            float ms = t->ops->sum_sq(x, t->dim) / (float)t->dim;
            t->ops->scale_mul(t->out + (size_t)i * t->dim, x, 1.0f / sqrtf(ms + t->eps), t->w, t->dim);
        }
}

static void cpu_rmsnorm(duet_backend_t *be, const float *x, const float *w, float eps, int n,
                        int dim, float *out)
{
    rmsnorm_task_t t = {ops_of(be), x, w, eps, n, dim, out, {0}};
    claim_init(be, &t.work, n, 1);
    run(be, rmsnorm_worker, &t, n >= 4 && (size_t)n * (size_t)dim >= 8192);
}

/* ---- matmul ---- */

typedef struct {
    duet_cpu_dot_fn dot;           /* weights as stored (matmul_worker) */
    duet_cpu_f16gemm_fn f16gemm;   /* or F16 weights packed in w->packed (f16matmul_worker) */
    const duet_weight_t *w;
    const float *bias;
    const float *x;
    int n;
    float *out;
    claim_t work;   /* output rows, in multiples of 16; for f16gemm, row groups */
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

/* Rows r0 .. r1-1 for every token: a block of weight rows is read from memory once and reused
 * from cache by each group of DUET_CPU_DOT_MAX_NX tokens. Chunks are multiples of 16 rows, so no
 * two threads write one cache line of out. */
static void matmul_rows(const matmul_task_t *t, int r0, int r1)
{
    const duet_weight_t *w = t->w;
    const uint8_t *data = w->data;
    size_t rows = (size_t)w->rows, cols = (size_t)w->cols;
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

static void matmul_worker(void *arg)
{
    matmul_task_t *t = arg;
    int r0, r1;
    while (claim_next(&t->work, &r0, &r1))
        matmul_rows(t, r0, r1);
}

/* Packed F16 weights: the f32 activations are read as they are, so there is no step before the
 * row groups, which are claimed in multiples of the kernel's tile (f16matmul.h). */
static void f16matmul_worker(void *arg)
{
    matmul_task_t *t = arg;
    const duet_cpu_f16packed_t *p = t->w->packed;
    int g0, g1;
    while (claim_next(&t->work, &g0, &g1))
        t->f16gemm(p, g0, g1, t->x, (size_t)p->cols, t->n, t->bias, t->out, (size_t)p->rows);
}

/* ---- matmul over packed weights ----
 * Activations are quantized once per matmul: a few tokens by the caller before the run; more by
 * the threads, token chunks claimed like any work, and each thread waits until every token is
 * done before it takes row groups (a wait for the work, not for the threads: a late thread skips
 * it). Row groups are claimed in chunks too.
 *
 * Activation precision (conf.act_bits). 16 bits by default, because the default model is too
 * sensitive for 8: tests/reference/test_reference_logits (top-5 logits of 14 prompts x 32 steps
 * against an f32 numpy forward, tolerance 0.1) measured, on SmolLM2-135M Q4_1:
 *   16-bit per block of 32 (the default)                    0.020, 14/14 continuations identical
 *   8-bit per block of 32, every matmul                     1.19,  3/14
 *   8-bit on one kind of matmul only, the rest 16-bit: q,k,v 0.76; attn out 0.31; gate,up 0.80;
 *     down 0.45; output head 0.22
 *   8-bit everywhere but the first 4 or the last 4 layers    1.12, 1.14
 * and, rounding the activations in f32 before the 16-bit path (an upper bound on what a kernel
 * with that format could do): 8-bit per 16 values 0.61, per 8 values 0.60; 12-bit per 32 0.11;
 * 16-bit with one scale per row 0.047; 14-bit per row 0.14. So no 8-bit format, per block or
 * per layer or per kind of matmul, comes near the tolerance on this model; 8 bits stay an option
 * for callers that accept the error (DUET_CPU_ACT_BITS=8). */

/* Quantizing this many tokens on the caller costs less than the wait. */
#define QMM_CALLER_QUANT_MAX 4

/* One task may hold several weights of one input (matmul_shared_x): they share the quantized
 * activations, which is why they must have the same type (its zero point is in them), columns
 * and activation format; their row groups are claimed as one range, weight after weight. */
typedef struct {
    const cpu_backend_t *cpu;
    int n_w;
    const duet_cpu_packed_t *p[DUET_MATMUL_SHARED_MAX];
    const float *bias[DUET_MATMUL_SHARED_MAX];
    float *out[DUET_MATMUL_SHARED_MAX];
    int first_group[DUET_MATMUL_SHARED_MAX + 1];  /* weight i: claims first_group[i] .. [i+1]-1 */
    const float *x;
    int n;
    claim_t quant;       /* tokens to quantize; none when the caller has done it */
    atomic_int quantized;/* tokens quantized so far */
    claim_t groups;      /* row groups of all the weights */
} qmatmul_task_t;

static void qmatmul_worker(void *arg)
{
    qmatmul_task_t *t = arg;
    const duet_cpu_packed_t *p = t->p[0];
    size_t arb = duet_qact_row_bytes(p->cols, p->act_vb);
    duet_cpu_qact_fn qact = p->act_vb == 1 ? t->cpu->qact8 : t->cpu->qact;
    uint8_t *act = t->cpu->act;
    int b, e;
    while (claim_next(&t->quant, &b, &e)) {
        for (int i = b; i < e; i++)
            qact(t->x + (size_t)i * p->cols, p->cols, duet_cpu_packed_zero(p), act + (size_t)i * arb);
        atomic_fetch_add_explicit(&t->quantized, e - b, memory_order_release);
    }
    for (int spins = 0; atomic_load_explicit(&t->quantized, memory_order_acquire) < t->quant.n;)
        duet_cpu_relax(&spins);
    while (claim_next(&t->groups, &b, &e))
        for (int i = 0; i < t->n_w; i++) {
            int g0 = b > t->first_group[i] ? b : t->first_group[i];
            int g1 = e < t->first_group[i + 1] ? e : t->first_group[i + 1];
            if (g0 < g1)
                t->cpu->qgemm(t->p[i], g0 - t->first_group[i], g1 - t->first_group[i], act, p->act_vb,
                              t->n, t->bias[i], t->out[i], (size_t)t->p[i]->rows);
        }
}

/* Makes cpu->act hold at least bytes; 0 when out of memory. */
static int reserve_act(cpu_backend_t *cpu, size_t bytes)
{
    if (bytes <= cpu->act_cap)
        return 1;
    void *a = aligned_alloc(64, (bytes + 63) & ~(size_t)63);
    if (!a)
        return 0;
    free(cpu->act);
    cpu->act = a;
    cpu->act_cap = bytes;
    return 1;
}

/* Whether the matmul is worth the threads' hand-off: rows x cols x tokens in all, and rows. */
static int matmul_parallel(size_t rows, size_t cols, int n)
{
    return rows * cols * (size_t)n >= 32768 && rows >= 32;
}

/* The integer matmul of n_w packed weights of one x (see qmatmul_task_t); 0 when it cannot run
 * them together (the caller then takes another path). */
static int qmatmul_run(cpu_backend_t *cpu, int n_w, const duet_weight_t *const *w,
                       const float *const *bias, const float *x, int n, float *const *out)
{
    duet_backend_t *be = &cpu->be;
    const duet_cpu_packed_t *p0 = w[0]->packed;
    if (!cpu->qgemm || n <= 0 || n_w > DUET_MATMUL_SHARED_MAX || !p0 || !duet_cpu_packable(w[0]->type))
        return 0;
    qmatmul_task_t q = {.cpu = cpu, .n_w = n_w, .x = x, .n = n};
    size_t rows = 0;
    for (int i = 0; i < n_w; i++) {
        const duet_cpu_packed_t *p = w[i]->packed;
        if (!p || w[i]->type != w[0]->type || p->cols != p0->cols || p->act_vb != p0->act_vb)
            return 0;
        q.p[i] = p;
        q.bias[i] = bias[i];
        q.out[i] = out[i];
        q.first_group[i + 1] = q.first_group[i] + p->groups;
        rows += (size_t)p->rows;
    }
    size_t arb = duet_qact_row_bytes(p0->cols, p0->act_vb);
    if (!reserve_act(cpu, (size_t)n * arb))
        return 0;
    int parallel = matmul_parallel(rows, (size_t)p0->cols, n);
    int by_caller = n <= QMM_CALLER_QUANT_MAX || !parallel;
    if (by_caller) {
        duet_cpu_qact_fn qact = p0->act_vb == 1 ? cpu->qact8 : cpu->qact;
        for (int i = 0; i < n; i++)
            qact(x + (size_t)i * p0->cols, p0->cols, duet_cpu_packed_zero(p0), (uint8_t *)cpu->act + (size_t)i * arb);
    }
    claim_init(be, &q.quant, by_caller ? 0 : n, 1);
    atomic_init(&q.quantized, 0);
    claim_init(be, &q.groups, q.first_group[n_w], 1);
    run(be, qmatmul_worker, &q, parallel);
    return 1;
}

static void cpu_matmul(duet_backend_t *be, const duet_weight_t *w, const float *bias,
                       const float *x, int n, float *out)
{
    cpu_backend_t *cpu = (cpu_backend_t *)be;
    int parallel = matmul_parallel((size_t)w->rows, (size_t)w->cols, n);
    if (w->packed && w->type == DUET_TYPE_F16 && cpu->f16gemm) {
        matmul_task_t f = {.f16gemm = cpu->f16gemm, .w = w, .bias = bias, .x = x, .n = n, .out = out};
        claim_init(be, &f.work, ((const duet_cpu_f16packed_t *)w->packed)->groups,
                   n <= DUET_F16M_DECODE_TOKENS ? DUET_F16M_DECODE_GROUPS : DUET_F16M_TILE_GROUPS);
        run(be, f16matmul_worker, &f, parallel);
        return;
    }
    if (qmatmul_run(cpu, 1, &w, &bias, x, n, &out))
        return;
    matmul_task_t t = {.dot = dot_for_type(ops_of(be), w->type), .w = w, .bias = bias, .x = x, .n = n,
                       .out = out};
    if (!t.dot) {  /* the engine checks weight types at load; never silently wrong */
        fill_nan(out, (size_t)n * (size_t)w->rows);
        return;
    }
    claim_init(be, &t.work, w->rows, 16);
    run(be, matmul_worker, &t, parallel);
}

static void cpu_matmul_shared_x(duet_backend_t *be, int n_w, const duet_weight_t *const *w,
                                const float *const *bias, const float *x, int n, float *const *out)
{
    if (qmatmul_run((cpu_backend_t *)be, n_w, w, bias, x, n, out))
        return;
    for (int i = 0; i < n_w; i++)
        cpu_matmul(be, w[i], bias[i], x, n, out[i]);
}

/* ---- rope ----
 * The angles depend only on the position, rot_dim and theta, so the cos/sin of each position are
 * computed once (in double, as below) into a table the backend keeps while rot_dim and theta stay
 * the same, rather than again in every layer: the values are the very same floats. */

/* Positions the table grows to at most (2 MiB of floats at rot_dim 64); beyond, angles are computed
 * per call. */
#define ROPE_TABLE_MAX_POS 8192

typedef struct {
    const duet_cpu_ops_t *ops;
    float *x;
    const int32_t *pos;
    int n, n_head, head_dim, rot_dim;
    float theta;
    int neox;
    const float *table;   /* [pos][rot_dim]: cos of the pairs, then sin, covering every pos; or NULL */
    claim_t work;   /* tokens */
} rope_task_t;

static void rope_angles(int32_t pos, float theta, int rot_dim, float *cos_t, float *sin_t)
{
    /* Angles in double, once per token, shared by every head: large positions keep their
     * precision and both ISAs rotate by the very same cos/sin. */
    for (int j = 0; j < rot_dim / 2; j++) {
        double freq = pow((double)theta, -2.0 * j / (double)rot_dim);
        double angle = (double)pos * freq;
        cos_t[j] = (float)cos(angle);
        sin_t[j] = (float)sin(angle);
    }
}

static void rope_worker(void *arg)
{
    rope_task_t *t = arg;
    int half = t->rot_dim / 2;
    float cos_buf[CPU_MAX_HEAD_DIM / 2], sin_buf[CPU_MAX_HEAD_DIM / 2];
    int b, e;
    while (claim_next(&t->work, &b, &e))
        for (int i = b; i < e; i++) {
            const float *cos_t = cos_buf, *sin_t = sin_buf;
            if (t->table) {
                cos_t = t->table + (size_t)t->pos[i] * 2 * (size_t)half;
                sin_t = cos_t + half;
            } else {
                rope_angles(t->pos[i], t->theta, t->rot_dim, cos_buf, sin_buf);
            }
            for (int h = 0; h < t->n_head; h++)
                t->ops->rope_row(t->x + ((size_t)i * t->n_head + h) * t->head_dim, cos_t, sin_t, half,
                                 t->neox);
        }
}

/* The table covering positions 0 .. max_pos for rot_dim and theta, or NULL when a position is out
 * of its range or memory is short (the caller then computes the angles itself). */
static const float *rope_table(cpu_backend_t *cpu, const int32_t *pos, int n, int rot_dim, float theta)
{
    int max_pos = -1;
    for (int i = 0; i < n; i++) {
        if (pos[i] < 0 || pos[i] >= ROPE_TABLE_MAX_POS)
            return NULL;
        max_pos = pos[i] > max_pos ? pos[i] : max_pos;
    }
    if (cpu->rope_rot_dim != rot_dim || memcmp(&cpu->rope_theta, &theta, sizeof theta) != 0)
        cpu->rope_n = 0;  /* other angles: start again */
    if (max_pos >= cpu->rope_n) {
        int want = max_pos + 1 > 2 * cpu->rope_n ? max_pos + 1 : 2 * cpu->rope_n;
        want = want < 256 ? 256 : want > ROPE_TABLE_MAX_POS ? ROPE_TABLE_MAX_POS : want;
        size_t floats = (size_t)want * (size_t)rot_dim;
        if (floats > cpu->rope_cap) {
            float *tab = realloc(cpu->rope_tab, floats * sizeof *tab);
            if (!tab)
                return NULL;
            cpu->rope_tab = tab;
            cpu->rope_cap = floats;
        }
        int half = rot_dim / 2;
        for (int p = cpu->rope_n; p < want; p++) {
            float *row = cpu->rope_tab + (size_t)p * (size_t)rot_dim;
            rope_angles(p, theta, rot_dim, row, row + half);
        }
        cpu->rope_n = want;
        cpu->rope_rot_dim = rot_dim;
        cpu->rope_theta = theta;
    }
    return cpu->rope_tab;
}

static void cpu_rope(duet_backend_t *be, float *x, const int32_t *pos, int n, int n_head,
                     int head_dim, int rot_dim, float theta, int neox)
{
    if (head_dim > CPU_MAX_HEAD_DIM) {
        fill_nan(x, (size_t)n * (size_t)n_head * (size_t)head_dim);
        return;
    }
    rot_dim = min_int(rot_dim, head_dim);
    rope_task_t t = {ops_of(be), x, pos, n, n_head, head_dim, rot_dim, theta, neox,
                     rope_table((cpu_backend_t *)be, pos, n, rot_dim, theta), {0}};
    claim_init(be, &t.work, n, 1);
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
    claim_t work;   /* tokens */
} kv_write_task_t;

static void kv_write_worker(void *arg)
{
    kv_write_task_t *t = arg;
    int nkv = t->pool->n_kv_head, hd = t->pool->head_dim;
    int b, e;
    while (claim_next(&t->work, &b, &e))
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
    kv_write_task_t t = {ops_of(be), pool, layer, k, v, slots, n, {0}};
    claim_init(be, &t.work, n, 1);
    run(be, kv_write_worker, &t, n >= 16);
}

/* ---- attention ----
 * Work is cut into units of (sequence, token tile, KV head, slice of that head's query heads),
 * at most ATTN_UNIT_ROWS query rows each; threads take units from a shared counter. A unit walks
 * its sequence's KV blocks in order (through the block table), 16 positions at a time, keeping
 * per query row the running max m, the running sum l and the unnormalized output acc
 * (FlashAttention-2's online softmax): a block that raises the max rescales l and acc by
 * exp(m_old - m_new) first. Each block's K and V are converted to f32 once for all the unit's
 * rows, so the heads of a GQA group (and the tokens of a prefill tile) share that work. Prefill
 * tiles several tokens per unit; decode one token, so many sequences spread over the threads.
 * Where the ops table has attn_rows (AVX-512), a unit is one call to it, which keeps every row's
 * result independent of the unit, so prefill and decode agree bit for bit; otherwise the unit is
 * built here from the row kernels. */

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

_Static_assert(ATTN_UNIT_ROWS <= DUET_CPU_ATTN_MAX_ROWS, "a unit's rows must fit one attn_rows call");

/* attn_unit through the ops table's attn_rows (ops.h), for ISAs that have one: the rows token by
 * token, the heads of each token in order. */
static void attn_unit_rows(const attn_task_t *t, int s, int tok0, int ntok, int kvh, int h0, int nh)
{
    const duet_attn_batch_t *bt = t->batch;
    int hd = t->pool->head_dim;
    int first = bt->tok_start[s];
    int first_pos = bt->kv_len[s] - (bt->tok_start[s + 1] - first);
    int head0 = kvh * t->group + h0;
    const float *q[ATTN_UNIT_ROWS];
    float *out[ATTN_UNIT_ROWS];
    int32_t last[ATTN_UNIT_ROWS];
    int n = 0;
    for (int ti = 0; ti < ntok; ti++)
        for (int hh = 0; hh < nh; hh++, n++) {
            size_t row = ((size_t)(first + tok0 + ti) * t->n_head + head0 + hh) * hd;
            q[n] = t->q + row;
            out[n] = t->out + row;
            last[n] = first_pos + tok0 + ti;
        }
    duet_cpu_attn_rows_t a = {
        .n_rows = n, .q = q, .out = out, .last = last, .pool = t->pool, .layer = t->layer,
        .kv_head = kvh, .blocks = bt->block_table + (size_t)s * bt->max_blocks, .scale = t->scale,
    };
    t->ops->attn_rows(&a);
}

/* Query rows of tokens tok0 .. tok0+ntok-1 of sequence s (indices within the sequence's new
 * tokens) and heads h0 .. h0+nh-1 of KV head kvh's group; ntok * nh <= ATTN_UNIT_ROWS. */
static void attn_unit(const attn_task_t *t, int s, int tok0, int ntok, int kvh, int h0, int nh)
{
    const duet_cpu_ops_t *ops = t->ops;
    if (ops->attn_rows && t->pool->head_dim % 16 == 0) {
        attn_unit_rows(t, s, tok0, ntok, kvh, h0, nh);
        return;
    }
    const duet_attn_batch_t *bt = t->batch;
    int hd = t->pool->head_dim;
    int first = bt->tok_start[s];
    int first_pos = bt->kv_len[s] - (bt->tok_start[s + 1] - first);
    int pos_last = first_pos + tok0 + ntok - 1;
    int head0 = kvh * t->group + h0;
    float acc[ATTN_UNIT_ROWS][CPU_MAX_HEAD_DIM];
    float m[ATTN_UNIT_ROWS], l[ATTN_UNIT_ROWS];
    float sc[ATTN_UNIT_ROWS][ATTN_TILE];
    /* The tile's K and V rows as f32, converted once for all the unit's query rows. */
    float kf[ATTN_TILE_FLOATS], vf[ATTN_TILE_FLOATS];
    int tile = ATTN_TILE_FLOATS / (DUET_KV_BLOCK_TOKENS * hd) * DUET_KV_BLOCK_TOKENS;
    tile = tile < ATTN_TILE ? tile : ATTN_TILE;

    for (int r = 0; r < ntok * nh; r++) {
        memset(acc[r], 0, (size_t)hd * sizeof(float));
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }
    for (int tile0 = 0; tile0 <= pos_last; tile0 += tile) {
        int nconv = min_int(tile, pos_last - tile0 + 1);
        for (int jb = 0; jb * DUET_KV_BLOCK_TOKENS < nconv; jb++) {
            int blk = tile0 / DUET_KV_BLOCK_TOKENS + jb;
            int block = bt->block_table[(size_t)s * bt->max_blocks + blk];
            const uint16_t *ks = duet_kv_slice(t->pool, block, t->layer, 0) +
                                 (size_t)kvh * DUET_KV_BLOCK_TOKENS * hd;
            const uint16_t *vs = duet_kv_slice(t->pool, block, t->layer, 1) +
                                 (size_t)kvh * DUET_KV_BLOCK_TOKENS * hd;
            int rows = min_int(DUET_KV_BLOCK_TOKENS, nconv - jb * DUET_KV_BLOCK_TOKENS);
            size_t at = (size_t)jb * DUET_KV_BLOCK_TOKENS * hd;
            ops->f16_to_f32(kf + at, ks, rows * hd);
            ops->f16_to_f32(vf + at, vs, rows * hd);
        }
        for (int ti = 0; ti < ntok; ti++) {
            /* Causal: this token sees positions up to its own. */
            int lim = min_int(tile, first_pos + tok0 + ti - tile0 + 1);
            if (lim <= 0)
                continue;
            const float *qt = t->q + ((size_t)(first + tok0 + ti) * t->n_head + head0) * hd;
            for (int hh = 0; hh < nh; hh++)
                ops->dot_rows(sc[ti * nh + hh], qt + (size_t)hh * hd, kf, lim, hd);
            for (int hh = 0; hh < nh; hh++) {
                int r = ti * nh + hh;
                float *p = sc[r];
                float mx = -INFINITY;
                for (int j = 0; j < lim; j++) {
                    p[j] *= t->scale;
                    mx = p[j] > mx ? p[j] : mx;  /* fmaxf was a library call; same for non-NaN */
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
                ops->axpy_rows(acc[r], p, vf, lim, hd);
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

static void attn_worker(void *arg)
{
    attn_task_t *t = arg;
    int n_kv = t->pool->n_kv_head;
    int per_tile = n_kv * t->head_splits;
    int s = 0, seq_base = 0;  /* units before sequence s; only grows, as the counter does */
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
    claim_t work;      /* cache lines of 16 floats, so threads never share a line of the output */
} elem_task_t;

static void elem_worker(void *arg)
{
    elem_task_t *t = arg;
    int lb, le;
    while (claim_next(&t->work, &lb, &le)) {
        size_t b = (size_t)lb * 16, e = (size_t)le * 16 < t->n ? (size_t)le * 16 : t->n;
        if (t->swiglu)
            t->ops->silu_mul(t->x + b, t->a + b, t->b + b, e - b);
        else
            t->ops->add(t->x + b, t->a + b, e - b);
    }
}

/* Lines of 16 floats in n; the ops are built for activation sizes, far below 2^31 lines. */
static int elem_lines(size_t n)
{
    return (int)((n + 15) / 16);
}

static void cpu_swiglu(duet_backend_t *be, const float *gate, const float *up, size_t n, float *out)
{
    elem_task_t t = {ops_of(be), out, gate, up, n, 1, {0}};
    claim_init(be, &t.work, elem_lines(n), 1);
    run(be, elem_worker, &t, n >= 16384);
}

static void cpu_add(duet_backend_t *be, float *x, const float *y, size_t n)
{
    elem_task_t t = {ops_of(be), x, y, NULL, n, 0, {0}};
    claim_init(be, &t.work, elem_lines(n), 1);
    run(be, elem_worker, &t, n >= 65536);
}

/* ---- weights ---- */

/* Block-type weights are repacked for the integer matmul and F16 weights for the F16 one when this
 * ISA has them; other types, and every weight on other ISAs, are read as stored. The type tells
 * which form w->packed is. The GGUF rows stay valid (embed reads them). */
static duet_status_t cpu_prepare_weight(duet_backend_t *be, duet_weight_t *w)
{
    cpu_backend_t *cpu = (cpu_backend_t *)be;
    if (w->packed)
        return DUET_OK;
    if (w->type == DUET_TYPE_F16 && cpu->f16gemm) {
        duet_cpu_f16packed_t *f;
        duet_status_t st = duet_cpu_f16_pack(w, &f);
        if (st == DUET_OK)
            w->packed = f;
        return st;
    }
    if (!cpu->qgemm || !duet_cpu_packable(w->type))
        return DUET_OK;
    duet_cpu_packed_t *p;
    duet_status_t st = duet_cpu_pack(w, &p);
    if (st != DUET_OK)
        return st;
    p->act_vb = cpu->act_bits == 8 ? 1 : 2;
    w->packed = p;
    return DUET_OK;
}

static void cpu_release_weight(duet_backend_t *be, duet_weight_t *w)
{
    (void)be;
    if (w->type == DUET_TYPE_F16)
        duet_cpu_f16packed_free(w->packed);
    else
        duet_cpu_packed_free(w->packed);
    w->packed = NULL;
}

/* ---- create / destroy ---- */

static void cpu_destroy(duet_backend_t *be)
{
    cpu_backend_t *cpu = (cpu_backend_t *)be;
    duet_cpu_pool_destroy(cpu->pool);
    free(cpu->act);
    free(cpu->rope_tab);
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

/* AVX-512 F/BW/VL and VNNI from CPUID leaf 7, and the OS saving the opmask and all 512-bit
 * registers (XCR0 bits 1, 2, 5, 6, 7). */
static int cpu_has_avx512_vnni(void)
{
    unsigned eax, ebx, ecx, edx;
    if (!cpu_has_avx2_fma_f16c() || !__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & bit_OSXSAVE))
        return 0;
    unsigned xcr0_lo, xcr0_hi;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    if ((xcr0_lo & 0xe6) != 0xe6)
        return 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx))
        return 0;
    return (ebx & (1u << 16)) && (ebx & (1u << 30)) && (ebx & (1u << 31)) && (ecx & (1u << 11));
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
    case DUET_CPU_ISA_AVX512:
#if defined(__x86_64__) || defined(__i386__)
        return duet_cpu_ops_avx2() != NULL && duet_cpu_qgemm_avx512() != NULL && cpu_has_avx512_vnni();
#else
        return 0;
#endif
    }
    return 0;
}

static const char *isa_name(duet_cpu_isa_t isa)
{
    switch (isa) {
    case DUET_CPU_ISA_AVX512: return "cpu-avx512";
    case DUET_CPU_ISA_AVX2:   return "cpu-avx2";
    default:                  return "cpu-scalar";
    }
}

int duet_backend_cpu_act_bits(const duet_backend_t *be, const duet_weight_t *w)
{
    if (!be || be->destroy != cpu_destroy || !w->packed || !duet_cpu_packable(w->type))
        return 0;
    const cpu_backend_t *cpu = (const cpu_backend_t *)be;
    return cpu->qgemm ? cpu->act_bits : 0;
}

duet_status_t duet_backend_cpu_create(const duet_cpu_conf_t *conf, duet_backend_t **be_p)
{
    duet_cpu_conf_t c = conf ? *conf : (duet_cpu_conf_t){0};
    if (c.n_threads < 0 || (c.act_bits != 0 && c.act_bits != 8 && c.act_bits != 16))
        return DUET_ERR_INVALID;
    int act_bits = c.act_bits;
    if (act_bits == 0) {
        const char *env = getenv("DUET_CPU_ACT_BITS");
        act_bits = env && strcmp(env, "8") == 0 ? 8 : 16;
    }
    if (c.isa == DUET_CPU_ISA_AUTO)
        c.isa = duet_cpu_isa_supported(DUET_CPU_ISA_AVX512) ? DUET_CPU_ISA_AVX512
              : duet_cpu_isa_supported(DUET_CPU_ISA_AVX2)   ? DUET_CPU_ISA_AVX2
                                                            : DUET_CPU_ISA_SCALAR;
    else if (c.isa != DUET_CPU_ISA_SCALAR && c.isa != DUET_CPU_ISA_AVX2 && c.isa != DUET_CPU_ISA_AVX512)
        return DUET_ERR_INVALID;
    if (!duet_cpu_isa_supported(c.isa))
        return DUET_ERR_UNSUPPORTED;

    cpu_backend_t *cpu = calloc(1, sizeof *cpu);
    if (!cpu)
        return DUET_ERR_NOMEM;
    duet_status_t st = duet_cpu_pool_create(c.n_threads ? c.n_threads : duet_cpu_count(), &cpu->pool);
    if (st != DUET_OK) {
        free(cpu);
        return st;
    }
    cpu->ops = c.isa == DUET_CPU_ISA_SCALAR ? &duet_cpu_ops_scalar : duet_cpu_ops_avx2();
    if (c.isa == DUET_CPU_ISA_AVX512 && duet_cpu_ops_avx512_fill(&cpu->ops_avx512))
        cpu->ops = &cpu->ops_avx512;
    if (c.isa == DUET_CPU_ISA_AVX512) {
        cpu->qact = duet_cpu_qact_avx512();
        cpu->qact8 = duet_cpu_qact8_avx512();
        cpu->act_bits = act_bits;
        cpu->qgemm = duet_cpu_qgemm_avx512();
        cpu->f16gemm = duet_cpu_f16gemm_avx512();
    }
    cpu->be = (duet_backend_t){
        .name = isa_name(c.isa),
        .ctx = cpu,
        .host_memory = 1,
        .alloc = cpu_alloc,
        .free = cpu_free,
        .upload = cpu_copy,
        .download = cpu_copy,
        .synchronize = NULL,      /* every op is complete when it returns */
        .prepare_weight = cpu_prepare_weight,
        .release_weight = cpu_release_weight,
        .embed = cpu_embed,
        .rmsnorm = cpu_rmsnorm,
        .matmul = cpu_matmul,
        .matmul_shared_x = cpu_matmul_shared_x,
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
