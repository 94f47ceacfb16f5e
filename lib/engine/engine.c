/* lib/engine/engine.c — the batching loop: admit, build a step under the token budget, run the
 * forward pass, sample, stream, retire. */
#include "engine.h"

#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"

struct duet_engine {
    duet_model_t *model;
    duet_engine_conf_t conf;
    duet_kv_cache_t *cache;
    duet_forward_t *fwd;
    duet_sampler_t *sampler;
    float *logits;           /* [max_seqs][n_vocab] host */
};

const char *duet_finish_str(duet_finish_t finish)
{
    switch (finish) {
    case DUET_FINISH_NONE:      return "none";
    case DUET_FINISH_LENGTH:    return "length";
    case DUET_FINISH_STOP:      return "stop";
    case DUET_FINISH_CANCELLED: return "cancelled";
    case DUET_FINISH_ERROR:     return "error";
    }
    return "unknown";
}

duet_status_t duet_engine_create(duet_model_t *model, const duet_engine_conf_t *conf,
                                 duet_engine_t **engine_p)
{
    duet_engine_t *e = calloc(1, sizeof *e);
    if (!e)
        return DUET_ERR_NOMEM;
    e->model = model;
    e->conf = *conf;
    const duet_hparams_t *hp = &model->hp;
    if (e->conf.n_ctx <= 0 || e->conf.n_ctx > hp->n_ctx_train)
        e->conf.n_ctx = hp->n_ctx_train;
    if (e->conf.max_batch_tokens <= 0)
        e->conf.max_batch_tokens = 512;
    if (e->conf.max_seqs <= 0)
        e->conf.max_seqs = 64;
    if (e->conf.max_seqs > e->conf.max_batch_tokens)
        e->conf.max_seqs = e->conf.max_batch_tokens;
    if (e->conf.n_blocks <= 0)
        e->conf.n_blocks = duet_kv_blocks_for(e->conf.n_ctx) * e->conf.max_seqs;
    duet_kv_cache_conf_t kc = {
        .n_layer = hp->n_layer,
        .n_kv_head = hp->n_kv_head,
        .head_dim = hp->head_dim,
        .n_blocks = e->conf.n_blocks,
    };
    duet_status_t st;
    if ((st = duet_kv_cache_create(&kc, model->be, &e->cache)) != DUET_OK ||
        (st = duet_forward_create(model, e->cache, e->conf.max_batch_tokens, e->conf.max_seqs, &e->fwd)) != DUET_OK ||
        (st = duet_sampler_create(hp->n_vocab, &e->sampler)) != DUET_OK)
        goto err_destroy;
    e->logits = malloc((size_t)e->conf.max_seqs * hp->n_vocab * sizeof *e->logits);
    if (!e->logits) {
        st = DUET_ERR_NOMEM;
        goto err_destroy;
    }
    *engine_p = e;
    return DUET_OK;

err_destroy:
    duet_engine_destroy(e);
    return st;
}

void duet_engine_destroy(duet_engine_t *e)
{
    if (!e)
        return;
    free(e->logits);
    duet_sampler_destroy(e->sampler);
    duet_forward_destroy(e->fwd);
    duet_kv_cache_destroy(e->cache);
    free(e);
}

duet_kv_cache_t *duet_engine_cache(duet_engine_t *e) { return e->cache; }
int duet_engine_n_ctx(const duet_engine_t *e) { return e->conf.n_ctx; }

typedef struct {
    duet_kv_seq_t kv;
    int32_t *tokens;     /* prompt, then generated tokens */
    int n_tokens;
    int running;
} seq_t;

static void finish(duet_engine_t *e, seq_t *s, duet_gen_result_t *r, duet_finish_t why,
                   duet_status_t st, int64_t t0)
{
    r->finish = why;
    r->status = st;
    r->done_ns = duet_clock_ns() - t0;
    s->running = 0;
    duet_kv_seq_release(e->cache, &s->kv);
}

duet_status_t duet_engine_generate(duet_engine_t *e, const duet_gen_request_t *reqs, int n,
                                   duet_gen_token_fn on_token, void *user,
                                   duet_gen_result_t *results)
{
    if (n < 0 || (n > 0 && (!reqs || !results)))
        return DUET_ERR_INVALID;
    int64_t t0 = duet_clock_ns();
    seq_t *seqs = calloc((size_t)n + 1, sizeof *seqs);
    duet_kv_seq_t **step_seqs = malloc((size_t)e->conf.max_seqs * sizeof *step_seqs);
    int32_t *step_new = malloc((size_t)e->conf.max_seqs * sizeof *step_new);
    int *step_req = malloc((size_t)e->conf.max_seqs * sizeof *step_req);
    int32_t *step_tokens = malloc((size_t)e->conf.max_batch_tokens * sizeof *step_tokens);
    duet_status_t status = DUET_OK;
    if (!seqs || !step_seqs || !step_new || !step_req || !step_tokens) {
        status = DUET_ERR_NOMEM;
        goto out;
    }
    int n_running = 0;
    for (int i = 0; i < n; i++) {
        const duet_gen_request_t *q = &reqs[i];
        memset(&results[i], 0, sizeof results[i]);
        duet_kv_seq_init(&seqs[i].kv);
        if (q->n_prompt < 1 || q->max_tokens < 1 || !q->prompt ||
            (int64_t)q->n_prompt + q->max_tokens > e->conf.n_ctx) {
            finish(e, &seqs[i], &results[i], DUET_FINISH_ERROR, DUET_ERR_INVALID, t0);
            continue;
        }
        seqs[i].tokens = malloc(((size_t)q->n_prompt + (size_t)q->max_tokens) * sizeof(int32_t));
        if (!seqs[i].tokens) {
            finish(e, &seqs[i], &results[i], DUET_FINISH_ERROR, DUET_ERR_NOMEM, t0);
            continue;
        }
        memcpy(seqs[i].tokens, q->prompt, (size_t)q->n_prompt * sizeof(int32_t));
        seqs[i].n_tokens = q->n_prompt;
        seqs[i].running = 1;
        n_running++;
    }

    while (n_running > 0) {
        /* Build a step: decode tokens first (they are cheap and keep TPOT low), then prompt chunks. */
        int n_step = 0, budget = e->conf.max_batch_tokens;
        for (int pass = 0; pass < 2; pass++) {
            for (int i = 0; i < n && n_step < e->conf.max_seqs && budget > 0; i++) {
                seq_t *s = &seqs[i];
                if (!s->running)
                    continue;
                int pending = s->n_tokens - s->kv.n_tokens;
                if ((pass == 0) != (pending == 1))
                    continue;
                int take = pending < budget ? pending : budget;
                duet_status_t st = duet_kv_seq_reserve(e->cache, &s->kv, s->kv.n_tokens + take);
                if (st != DUET_OK) {
                    if (n_step > 0)
                        continue;  /* others in this step will finish and free blocks */
                    duet_log_error("engine: request %d needs KV blocks and none are free", i);
                    finish(e, s, &results[i], DUET_FINISH_ERROR, st, t0);
                    n_running--;
                    continue;
                }
                memcpy(step_tokens + (e->conf.max_batch_tokens - budget), s->tokens + s->kv.n_tokens,
                       (size_t)take * sizeof(int32_t));
                step_seqs[n_step] = &s->kv;
                step_new[n_step] = take;
                step_req[n_step] = i;
                n_step++;
                budget -= take;
            }
        }
        if (n_step == 0)
            break;
        duet_batch_t batch = {.n_seq = n_step, .seqs = step_seqs, .n_new = step_new, .tokens = step_tokens};
        duet_status_t st = duet_forward_run(e->fwd, &batch, e->logits);
        if (st != DUET_OK) {
            duet_log_error("engine: forward pass failed: %s", duet_status_str(st));
            status = st;
            break;
        }
        for (int k = 0; k < n_step; k++) {
            int i = step_req[k];
            seq_t *s = &seqs[i];
            const duet_gen_request_t *q = &reqs[i];
            duet_gen_result_t *r = &results[i];
            if (s->kv.n_tokens < s->n_tokens)
                continue;  /* a prompt chunk that is not the last one */
            float *lg = e->logits + (size_t)k * e->model->hp.n_vocab;
            int32_t tok = duet_sampler_sample(e->sampler, &q->sampling, lg, s->tokens, s->n_tokens,
                                              (uint64_t)r->n_generated);
            s->tokens[s->n_tokens++] = tok;
            if (r->n_generated++ == 0)
                r->first_token_ns = duet_clock_ns() - t0;
            int cancel = on_token ? on_token(user, i, tok) : 0;
            if (cancel)
                finish(e, s, r, DUET_FINISH_CANCELLED, DUET_OK, t0);
            else if (!q->ignore_eos && duet_tokenizer_is_end(e->model->tok, tok))
                finish(e, s, r, DUET_FINISH_STOP, DUET_OK, t0);
            else if (r->n_generated >= q->max_tokens)
                finish(e, s, r, DUET_FINISH_LENGTH, DUET_OK, t0);
            else
                continue;
            n_running--;
        }
    }

out:
    for (int i = 0; seqs && i < n; i++) {
        if (seqs[i].running)
            finish(e, &seqs[i], &results[i], DUET_FINISH_ERROR, status ? status : DUET_ERR_INTERNAL, t0);
        duet_kv_seq_cleanup(e->cache, &seqs[i].kv);
        free(seqs[i].tokens);
    }
    free(seqs);
    free(step_seqs);
    free(step_new);
    free(step_req);
    free(step_tokens);
    return status;
}
