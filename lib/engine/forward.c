/* lib/engine/forward.c — one step of a llama-family transformer, top to bottom:
 *   x = embed(tokens)
 *   per layer: x += Wo · attn(rope(Wq·norm(x)), kv_write(rope(Wk·norm(x)), Wv·norm(x)))
 *              x += Wdown · (silu(Wgate·norm(x)) * Wup·norm(x))
 *   logits = Wout · norm(x) for each sequence's last token. */
#include "forward.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

struct duet_forward {
    const duet_model_t *model;
    duet_kv_cache_t *cache;
    duet_backend_t *be;
    int max_tokens;
    int max_seqs;

    /* Backend memory, T = max_tokens, S = max_seqs. */
    float *x;        /* [T][dim] residual stream */
    float *xb;       /* [T][dim] normed input of a sublayer */
    float *q;        /* [T][n_head][head_dim] */
    float *k, *v;    /* [T][n_kv_head][head_dim] */
    float *att;      /* [T][n_head][head_dim] */
    float *proj;     /* [T][dim] sublayer output */
    float *gate;     /* [T][ffn_dim] */
    float *up;       /* [T][ffn_dim] */
    float *last;     /* [S][dim] normed last token of each sequence */
    float *logits;   /* [S][n_vocab] */

    /* Host memory, per step. */
    int32_t *pos;         /* [T] */
    int32_t *slots;       /* [T] block * 16 + row */
    int32_t *tok_start;   /* [S + 1] */
    int32_t *kv_len;      /* [S] */
    int32_t *block_table; /* [S][table_cap / S] */
    size_t table_cap;

    duet_forward_layer_fn layer_hook;
    void *layer_user;
};

void duet_forward_set_layer_hook(duet_forward_t *f, duet_forward_layer_fn fn, void *user)
{
    f->layer_hook = fn;
    f->layer_user = user;
}

duet_status_t duet_forward_create(const duet_model_t *model, duet_kv_cache_t *cache,
                                  int max_tokens, int max_seqs, duet_forward_t **fwd_p)
{
    if (max_tokens < 1 || max_seqs < 1 || max_seqs > max_tokens || max_tokens > (1 << 20))
        return DUET_ERR_INVALID;
    const duet_hparams_t *hp = &model->hp;
    const duet_kv_pool_view_t *view = duet_kv_cache_view(cache);
    if (view->n_layer != hp->n_layer || view->n_kv_head != hp->n_kv_head || view->head_dim != hp->head_dim)
        return DUET_ERR_INVALID;
    duet_forward_t *f = calloc(1, sizeof *f);
    if (!f)
        return DUET_ERR_NOMEM;
    duet_backend_t *be = model->be;
    f->model = model;
    f->cache = cache;
    f->be = be;
    f->max_tokens = max_tokens;
    f->max_seqs = max_seqs;
    size_t T = (size_t)max_tokens, S = (size_t)max_seqs;
    size_t q_dim = (size_t)hp->n_head * hp->head_dim, kv_dim = (size_t)hp->n_kv_head * hp->head_dim;
    f->x = be->alloc(be, T * hp->dim * sizeof(float));
    f->xb = be->alloc(be, T * hp->dim * sizeof(float));
    f->q = be->alloc(be, T * q_dim * sizeof(float));
    f->k = be->alloc(be, T * kv_dim * sizeof(float));
    f->v = be->alloc(be, T * kv_dim * sizeof(float));
    f->att = be->alloc(be, T * q_dim * sizeof(float));
    f->proj = be->alloc(be, T * hp->dim * sizeof(float));
    f->gate = be->alloc(be, T * hp->ffn_dim * sizeof(float));
    f->up = be->alloc(be, T * hp->ffn_dim * sizeof(float));
    f->last = be->alloc(be, S * hp->dim * sizeof(float));
    f->logits = be->alloc(be, S * hp->n_vocab * sizeof(float));
    f->pos = malloc(T * sizeof *f->pos);
    f->slots = malloc(T * sizeof *f->slots);
    f->tok_start = malloc((S + 1) * sizeof *f->tok_start);
    f->kv_len = malloc(S * sizeof *f->kv_len);
    if (!f->x || !f->xb || !f->q || !f->k || !f->v || !f->att || !f->proj || !f->gate || !f->up ||
        !f->last || !f->logits || !f->pos || !f->slots || !f->tok_start || !f->kv_len) {
        duet_forward_destroy(f);
        return DUET_ERR_NOMEM;
    }
    *fwd_p = f;
    return DUET_OK;
}

void duet_forward_destroy(duet_forward_t *f)
{
    if (!f)
        return;
    duet_backend_t *be = f->be;
    float *bufs[] = {f->x, f->xb, f->q, f->k, f->v, f->att, f->proj, f->gate, f->up, f->last, f->logits};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i])
            be->free(be, bufs[i]);
    free(f->pos);
    free(f->slots);
    free(f->tok_start);
    free(f->kv_len);
    free(f->block_table);
    free(f);
}

/* Fills positions, slots and the attention batch; checks the batch against limits and blocks. */
static duet_status_t plan_step(duet_forward_t *f, const duet_batch_t *b, duet_attn_batch_t *ab,
                               int *n_tok_p, int *all_single_p)
{
    if (b->n_seq < 1 || b->n_seq > f->max_seqs)
        return DUET_ERR_INVALID;
    int n_tok = 0, max_blocks = 0, all_single = 1;
    for (int s = 0; s < b->n_seq; s++) {
        const duet_kv_seq_t *seq = b->seqs[s];
        int n_new = b->n_new[s];
        if (n_new < 1 || n_new > f->max_tokens - n_tok)
            return DUET_ERR_INVALID;
        if (duet_kv_blocks_for(seq->n_tokens + n_new) > seq->n_blocks)
            return DUET_ERR_INVALID;
        f->tok_start[s] = n_tok;
        f->kv_len[s] = seq->n_tokens + n_new;
        for (int i = 0; i < n_new; i++) {
            int p = seq->n_tokens + i;
            f->pos[n_tok + i] = p;
            f->slots[n_tok + i] = seq->blocks[p / DUET_KV_BLOCK_TOKENS] * DUET_KV_BLOCK_TOKENS +
                                  p % DUET_KV_BLOCK_TOKENS;
        }
        n_tok += n_new;
        all_single &= n_new == 1;
        int nb = duet_kv_blocks_for(f->kv_len[s]);
        if (nb > max_blocks)
            max_blocks = nb;
    }
    f->tok_start[b->n_seq] = n_tok;
    for (int i = 0; i < n_tok; i++)
        if (b->tokens[i] < 0 || b->tokens[i] >= f->model->hp.n_vocab)
            return DUET_ERR_INVALID;

    size_t need = (size_t)b->n_seq * (size_t)max_blocks;
    if (need > f->table_cap) {
        int32_t *t = realloc(f->block_table, need * sizeof *t);
        if (!t)
            return DUET_ERR_NOMEM;
        f->block_table = t;
        f->table_cap = need;
    }
    for (int s = 0; s < b->n_seq; s++) {
        int nb = duet_kv_blocks_for(f->kv_len[s]);
        memcpy(f->block_table + (size_t)s * max_blocks, b->seqs[s]->blocks, (size_t)nb * sizeof(int32_t));
    }
    *ab = (duet_attn_batch_t){
        .n_seq = b->n_seq,
        .tok_start = f->tok_start,
        .kv_len = f->kv_len,
        .block_table = f->block_table,
        .max_blocks = max_blocks,
    };
    *n_tok_p = n_tok;
    *all_single_p = all_single;
    return DUET_OK;
}

/* The matmuls of one input, in one backend call where the backend can share their work. */
static void matmuls_of_x(duet_backend_t *be, int n_w, const duet_weight_t *const *w,
                         const float *const *bias, const float *x, int n, float *const *out)
{
    if (be->matmul_shared_x) {
        be->matmul_shared_x(be, n_w, w, bias, x, n, out);
        return;
    }
    for (int i = 0; i < n_w; i++)
        be->matmul(be, w[i], bias[i], x, n, out[i]);
}

duet_status_t duet_forward_run(duet_forward_t *f, const duet_batch_t *b, float *logits)
{
    const duet_model_t *m = f->model;
    const duet_hparams_t *hp = &m->hp;
    duet_backend_t *be = f->be;
    const duet_kv_pool_view_t *pool = duet_kv_cache_view(f->cache);
    duet_attn_batch_t ab;
    int n, all_single;
    duet_status_t st = plan_step(f, b, &ab, &n, &all_single);
    if (st != DUET_OK)
        return st;
    float scale = 1.0f / sqrtf((float)hp->head_dim);
    /* Decode steps (one new token per sequence) take the kernel built for them. */
    void (*attention)(duet_backend_t *, const duet_kv_pool_view_t *, int, const float *, int,
                      const duet_attn_batch_t *, float, float *) =
        all_single ? be->attn_decode : be->attn_prefill;

    be->embed(be, &m->tok_embd, b->tokens, n, f->x);
    for (int il = 0; il < hp->n_layer; il++) {
        const duet_layer_t *L = &m->layers[il];
        be->rmsnorm(be, f->x, L->attn_norm, hp->norm_eps, n, hp->dim, f->xb);
        const duet_weight_t *qkv_w[] = {&L->wq, &L->wk, &L->wv};
        const float *qkv_b[] = {L->bq, L->bk, L->bv};
        float *qkv_out[] = {f->q, f->k, f->v};
        matmuls_of_x(be, 3, qkv_w, qkv_b, f->xb, n, qkv_out);
        be->rope(be, f->q, f->pos, n, hp->n_head, hp->head_dim, hp->rot_dim, hp->rope_theta, hp->rope_neox);
        be->rope(be, f->k, f->pos, n, hp->n_kv_head, hp->head_dim, hp->rot_dim, hp->rope_theta, hp->rope_neox);
        be->kv_write(be, pool, il, f->k, f->v, f->slots, n);
        if (f->layer_hook) {
            if (be->synchronize)
                be->synchronize(be);
            f->layer_hook(f->layer_user, il);
        }
        attention(be, pool, il, f->q, hp->n_head, &ab, scale, f->att);
        be->matmul(be, &L->wo, NULL, f->att, n, f->proj);
        be->add(be, f->x, f->proj, (size_t)n * hp->dim);

        be->rmsnorm(be, f->x, L->ffn_norm, hp->norm_eps, n, hp->dim, f->xb);
        const duet_weight_t *ffn_w[] = {&L->w_gate, &L->w_up};
        const float *ffn_b[] = {NULL, NULL};
        float *ffn_out[] = {f->gate, f->up};
        matmuls_of_x(be, 2, ffn_w, ffn_b, f->xb, n, ffn_out);
        be->swiglu(be, f->gate, f->up, (size_t)n * hp->ffn_dim, f->gate);
        be->matmul(be, &L->w_down, NULL, f->gate, n, f->proj);
        be->add(be, f->x, f->proj, (size_t)n * hp->dim);
    }
    /* The final norm of each sequence's last token doubles as the gather of those rows. */
    for (int s = 0; s < b->n_seq; s++) {
        int row = f->tok_start[s + 1] - 1;
        be->rmsnorm(be, f->x + (size_t)row * hp->dim, m->output_norm, hp->norm_eps, 1, hp->dim,
                    f->last + (size_t)s * hp->dim);
    }
    be->matmul(be, &m->output, NULL, f->last, b->n_seq, f->logits);
    if (logits)
        be->download(be, logits, f->logits, (size_t)b->n_seq * hp->n_vocab * sizeof(float));
    for (int s = 0; s < b->n_seq; s++)
        b->seqs[s]->n_tokens += b->n_new[s];
    return DUET_OK;
}

float *duet_forward_logits(duet_forward_t *f)
{
    return f->logits;
}
