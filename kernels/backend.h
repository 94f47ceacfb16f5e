/* kernels/backend.h — the one interface every compute backend fills (CPU now, CUDA next):
 * a struct of function pointers over buffers in the backend's memory. */
#ifndef DUET_KERNELS_BACKEND_H
#define DUET_KERNELS_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "../lib/base/status.h"
#include "dtype.h"
#include "sample.h"

#define DUET_KV_BLOCK_TOKENS 16

/* The most matmuls one matmul_shared_x call takes. */
#define DUET_MATMUL_SHARED_MAX 3

/* A weight matrix y = W x with W of shape [rows][cols], rows stored in GGUF order. */
typedef struct {
    uint32_t type;       /* duet_type_t of the stored rows */
    int rows;            /* output features */
    int cols;            /* input features; a multiple of the type's block size */
    size_t row_bytes;
    const void *data;    /* [rows][row_bytes], host memory (usually the mmapped file) */
    void *packed;        /* the backend's own copy or layout, made by prepare_weight; else NULL */
} duet_weight_t;

/* The paged KV pool, f16:
 *   base[n_blocks][n_layer][2 (K, V)][n_kv_head][DUET_KV_BLOCK_TOKENS][head_dim]
 * One (block, layer, K|V) slice is contiguous, and so is one (block, layer) pair of slices. */
typedef struct {
    uint16_t *base;
    int n_blocks;
    int n_layer;
    int n_kv_head;
    int head_dim;
} duet_kv_pool_view_t;

/* Elements in one K (or V) slice of one block and layer. */
static inline size_t duet_kv_slice_elems(const duet_kv_pool_view_t *p)
{
    return (size_t)p->n_kv_head * DUET_KV_BLOCK_TOKENS * (size_t)p->head_dim;
}

/* Address of the K (kv = 0) or V (kv = 1) slice of a block and layer. */
static inline uint16_t *duet_kv_slice(const duet_kv_pool_view_t *p, int block, int layer, int kv)
{
    size_t slice = duet_kv_slice_elems(p);
    return p->base + (((size_t)block * (size_t)p->n_layer + (size_t)layer) * 2 + (size_t)kv) * slice;
}

/* Which rows of q/out belong to which sequence, and where each sequence's KV lives.
 * Sequence s owns rows tok_start[s] .. tok_start[s+1]-1; they are its newest tokens, at positions
 * kv_len[s] - n_new .. kv_len[s] - 1, and their K/V are already in the pool (kv_write first).
 * Position p of sequence s lives in block block_table[s * max_blocks + p / 16], row p % 16. */
typedef struct {
    int n_seq;
    const int32_t *tok_start;    /* [n_seq + 1] */
    const int32_t *kv_len;       /* [n_seq] */
    const int32_t *block_table;  /* [n_seq][max_blocks] */
    int max_blocks;
} duet_attn_batch_t;

typedef struct duet_backend duet_backend_t;

/* Every pointer argument is backend memory (alloc) unless it says host. Ops may run in
 * parallel inside; each returns when its result is complete (or, for a backend with a queue,
 * ordered before the next op; synchronize waits). Outputs never alias inputs unless stated. */
struct duet_backend {
    const char *name;   /* "cpu-avx2", "cpu-scalar", "cuda" */
    void *ctx;
    /* 1: alloc's memory is host memory, which the CPU (and so UCX) reads and writes directly;
     * 0: device memory, reached only through upload and download (or a transport that knows it). */
    int host_memory;

    void *(*alloc)(duet_backend_t *be, size_t bytes);                  /* zeroed; NULL when out of memory */
    void  (*free)(duet_backend_t *be, void *ptr);
    void  (*upload)(duet_backend_t *be, void *dst, const void *host_src, size_t bytes);
    void  (*download)(duet_backend_t *be, void *host_dst, const void *src, size_t bytes);
    void  (*synchronize)(duet_backend_t *be);                           /* optional */
    /* Optional: page-lock host memory that upload and download will use often (a KV staging
     * buffer), so copies run at full bus speed without a bounce; unpin undoes it before the
     * memory is freed. A failed pin is not an error: the copies still work, only slower. */
    duet_status_t (*pin_host)(duet_backend_t *be, void *host_ptr, size_t bytes);
    void          (*unpin_host)(duet_backend_t *be, void *host_ptr);

    /* Optional: make w->packed (a copy in backend memory or a faster layout). */
    duet_status_t (*prepare_weight)(duet_backend_t *be, duet_weight_t *w);
    void          (*release_weight)(duet_backend_t *be, duet_weight_t *w); /* optional, pairs with prepare */

    /* out[i] = row tokens[i] of table, as f32. tokens is host memory; ids are < table->rows. */
    void (*embed)(duet_backend_t *be, const duet_weight_t *table, const int32_t *tokens, int n,
                  float *out /* [n][table->cols] */);
    /* out = x / sqrt(mean(x^2) + eps) * w, row by row; out may be x. */
    void (*rmsnorm)(duet_backend_t *be, const float *x /* [n][dim] */, const float *w /* [dim] */,
                    float eps, int n, int dim, float *out /* [n][dim] */);
    /* out = x W^T (+ bias when not NULL). */
    void (*matmul)(duet_backend_t *be, const duet_weight_t *w, const float *bias /* [rows] or NULL */,
                   const float *x /* [n][cols] */, int n, float *out /* [n][rows] */);
    /* Optional: n_w <= DUET_MATMUL_SHARED_MAX matmuls of one x (a layer's q, k and v; its gate and
     * up), out[i] = x W[i]^T (+ bias[i] when bias[i] is not NULL): the same values as n_w matmul
     * calls, with the work they share done once (the CPU backend quantizes x once and splits the
     * rows of all of them between its threads in one hand-off). NULL: the caller calls matmul. */
    void (*matmul_shared_x)(duet_backend_t *be, int n_w, const duet_weight_t *const *w,
                            const float *const *bias, const float *x /* [n][cols] */, int n,
                            float *const *out /* [n_w] -> [n][w[i]->rows] */);
    /* Rotates the first rot_dim dims of each head in place, by position pos[i] (host memory).
     * neox = 0 pairs (2j, 2j+1) (llama); neox = 1 pairs (j, j + rot_dim/2) (qwen2, HF llama). */
    void (*rope)(duet_backend_t *be, float *x /* [n][n_head][head_dim] */, const int32_t *pos, int n,
                 int n_head, int head_dim, int rot_dim, float theta, int neox);
    /* Stores token i's K and V (rounded to f16) at slot[i] = block * 16 + row (host memory). */
    void (*kv_write)(duet_backend_t *be, const duet_kv_pool_view_t *pool, int layer,
                     const float *k /* [n][n_kv_head][head_dim] */, const float *v /* same */,
                     const int32_t *slots, int n);
    /* Causal attention of each new token over its sequence's pool positions 0..its own position,
     * softmax(q k^T * scale) v, query head h reading KV head h / (n_head / n_kv_head).
     * attn_prefill is built for many new tokens per sequence, attn_decode for one; both give the
     * same result for any batch. batch is host memory. */
    void (*attn_prefill)(duet_backend_t *be, const duet_kv_pool_view_t *pool, int layer,
                         const float *q /* [n_tok][n_head][head_dim] */, int n_head,
                         const duet_attn_batch_t *batch, float scale,
                         float *out /* [n_tok][n_head][head_dim] */);
    void (*attn_decode)(duet_backend_t *be, const duet_kv_pool_view_t *pool, int layer,
                        const float *q, int n_head, const duet_attn_batch_t *batch, float scale,
                        float *out);
    /* out = silu(gate) * up, elementwise; out may be gate. */
    void (*swiglu)(duet_backend_t *be, const float *gate, const float *up, size_t n, float *out);
    /* x += y, elementwise. */
    void (*add)(duet_backend_t *be, float *x, const float *y, size_t n);

    /* Optional (NULL: the caller downloads the logits and samples on the host). tokens[i] (host)
     * = the token drawn from logits row reqs[i].row (reqs host memory; rows distinct) exactly as
     * sample.h specifies, so the same token lib/engine/sampler.c picks from the same row; the
     * penalty is applied to the row in place, as there. n_vocab < 2^24. Only the n token ids
     * cross to the host, not the n_vocab * 4 bytes of each row. */
    void (*sample)(duet_backend_t *be, float *logits /* [rows][n_vocab] */, int n_vocab,
                   const duet_sample_req_t *reqs, int n, int32_t *tokens);
    /* Optional (NULL: always usable). DUET_OK while the backend can run; else the error that made
     * it unusable (a failed op or a lost device; sticky, and the results of ops since then are
     * undefined), with a one-line reason written to why (why_len > 0). Ops return nothing, so a
     * caller asks here once per step. A backend that cannot start at all (no device, a driver too
     * old) fails its create function instead, with the reason logged. */
    duet_status_t (*status)(duet_backend_t *be, char *why, size_t why_len);

    void (*destroy)(duet_backend_t *be);
};

/* be->status, or DUET_OK for a backend without one. */
static inline duet_status_t duet_backend_status(duet_backend_t *be, char *why, size_t why_len)
{
    if (why_len > 0)
        why[0] = '\0';
    return be->status ? be->status(be, why, why_len) : DUET_OK;
}

#endif
