/* lib/engine/engine.c — continuous batching. A request moves through
 *
 *   QUEUED ──admit (blocks for its prompt)──▶ PREFILL ──last chunk sampled──▶ RUNNING ──▶ finished
 *      ▲  submit                                  │                              │
 *      │                                          └────── preempt (no block) ────┤
 *      └──────────────────────── kv_failed ◀── WAITING_KV ◀── submit_remote       │
 *                                       kv_retry (new blocks) ⟲ └── kv_ready ────┘
 *
 * Each step takes one decode token of every RUNNING request first (cheap, keeps time per output
 * token low), then prompt chunks of PREFILL requests, then admits QUEUED ones in arrival order
 * while blocks, the token budget and the sequence slots last. A RUNNING request that needs a new
 * block when none is free takes it from the newest request, whose KV is dropped and recomputed
 * later (its tokens so far become its prompt). */
#include "engine.h"

#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#include "clock.h"
#include "log.h"

typedef enum { SEQ_QUEUED, SEQ_WAITING_KV, SEQ_PREFILL, SEQ_RUNNING } seq_state_t;

struct duet_engine_seq {
    TAILQ_ENTRY(duet_engine_seq) link; /* the engine's list, in arrival order */
    seq_state_t state;
    duet_kv_seq_t kv;
    int32_t *tokens;                 /* prompt, then generated tokens */
    int n_tokens;
    int n_prompt;
    int max_tokens;
    int ignore_eos;
    duet_sampling_t sampling;
    duet_gen_sink_t sink;
    duet_gen_result_t result;
    int64_t t_submit;
};

struct duet_engine {
    duet_model_t *model;
    duet_engine_conf_t conf;
    duet_kv_cache_t *cache;
    duet_forward_t *fwd;
    duet_sampler_t *sampler;
    float *logits;                   /* [max_seqs][n_vocab] host; NULL with a device sampler */
    TAILQ_HEAD(seq_list, duet_engine_seq) seqs;
    int n_seqs;
    /* Per-step scratch. */
    duet_kv_seq_t **step_kv;         /* [max_seqs] */
    duet_engine_seq_t **step_seq;    /* [max_seqs] */
    int32_t *step_new;               /* [max_seqs] */
    int32_t *step_tokens;            /* [max_batch_tokens] */
    duet_sample_req_t *step_draws;   /* [max_seqs] for be->sample */
    int32_t *step_picks;             /* [max_seqs] its tokens */
    int n_step;                      /* requests in the step being run */
    duet_engine_layer_fn layer_hook;
    void *layer_user;
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

static void apply_defaults(const duet_model_t *model, duet_engine_conf_t *c)
{
    if (c->n_ctx <= 0 || c->n_ctx > model->hp.n_ctx_train)
        c->n_ctx = model->hp.n_ctx_train;
    if (c->max_batch_tokens <= 0)
        c->max_batch_tokens = 512;
    if (c->max_seqs <= 0)
        c->max_seqs = 64;
    if (c->max_seqs > c->max_batch_tokens)
        c->max_seqs = c->max_batch_tokens;
    if (c->n_blocks <= 0)
        c->n_blocks = duet_kv_blocks_for(c->n_ctx) * c->max_seqs;
}

size_t duet_engine_pool_bytes(const duet_model_t *model, const duet_engine_conf_t *conf)
{
    duet_engine_conf_t c = *conf;
    apply_defaults(model, &c);
    return (size_t)c.n_blocks * DUET_KV_BLOCK_TOKENS * duet_model_kv_bytes_per_token(model);
}

duet_status_t duet_engine_create(duet_model_t *model, const duet_engine_conf_t *conf,
                                 duet_engine_t **engine_p)
{
    duet_engine_t *e = calloc(1, sizeof *e);
    if (!e)
        return DUET_ERR_NOMEM;
    e->model = model;
    e->conf = *conf;
    TAILQ_INIT(&e->seqs);
    apply_defaults(model, &e->conf);
    const duet_hparams_t *hp = &model->hp;
    duet_kv_cache_conf_t kc = {
        .n_layer = hp->n_layer,
        .n_kv_head = hp->n_kv_head,
        .head_dim = hp->head_dim,
        .n_blocks = e->conf.n_blocks,
        .external_base = e->conf.pool_memory,
        .host_mirror = e->conf.kv_mirror,
    };
    duet_status_t st;
    if ((st = duet_kv_cache_create(&kc, model->be, &e->cache)) != DUET_OK ||
        (st = duet_forward_create(model, e->cache, e->conf.max_batch_tokens, e->conf.max_seqs, &e->fwd)) != DUET_OK ||
        (st = duet_sampler_create(hp->n_vocab, &e->sampler)) != DUET_OK)
        goto err_destroy;
    size_t S = (size_t)e->conf.max_seqs;
    e->logits = model->be->sample ? NULL : malloc(S * hp->n_vocab * sizeof *e->logits);
    e->step_kv = malloc(S * sizeof *e->step_kv);
    e->step_seq = malloc(S * sizeof *e->step_seq);
    e->step_new = malloc(S * sizeof *e->step_new);
    e->step_tokens = malloc((size_t)e->conf.max_batch_tokens * sizeof *e->step_tokens);
    e->step_draws = malloc(S * sizeof *e->step_draws);
    e->step_picks = malloc(S * sizeof *e->step_picks);
    if ((!e->logits && !model->be->sample) || !e->step_kv || !e->step_seq || !e->step_new ||
        !e->step_tokens || !e->step_draws || !e->step_picks) {
        st = DUET_ERR_NOMEM;
        goto err_destroy;
    }
    *engine_p = e;
    return DUET_OK;

err_destroy:
    duet_engine_destroy(e);
    return st;
}

static void finish(duet_engine_t *e, duet_engine_seq_t *s, duet_finish_t why, duet_status_t st)
{
    s->result.finish = why;
    s->result.status = st;
    s->result.done_ns = duet_clock_ns() - s->t_submit;
    duet_kv_seq_cleanup(e->cache, &s->kv);
    TAILQ_REMOVE(&e->seqs, s, link);
    e->n_seqs--;
    duet_gen_sink_t sink = s->sink;
    duet_gen_result_t result = s->result;
    free(s->tokens);
    free(s);
    if (sink.on_finish)
        sink.on_finish(sink.user, &result);
}

void duet_engine_destroy(duet_engine_t *e)
{
    if (!e)
        return;
    for (duet_engine_seq_t *s; (s = TAILQ_FIRST(&e->seqs));)
        finish(e, s, DUET_FINISH_CANCELLED, DUET_ERR_CANCELLED);
    free(e->logits);
    free(e->step_kv);
    free(e->step_seq);
    free(e->step_new);
    free(e->step_tokens);
    free(e->step_draws);
    free(e->step_picks);
    duet_sampler_destroy(e->sampler);
    duet_forward_destroy(e->fwd);
    duet_kv_cache_destroy(e->cache);
    free(e);
}

duet_kv_cache_t *duet_engine_cache(duet_engine_t *e) { return e->cache; }
int duet_engine_n_ctx(const duet_engine_t *e) { return e->conf.n_ctx; }

static duet_status_t make_seq(duet_engine_t *e, const duet_gen_request_t *q, const duet_gen_sink_t *sink,
                              duet_engine_seq_t **seq_p)
{
    if (!q || !q->prompt || q->n_prompt < 1 || q->max_tokens < 1 || q->n_resume < 0 ||
        (q->n_resume > 0 && !q->resume) || q->n_resume >= q->max_tokens ||
        (int64_t)q->n_prompt + q->max_tokens > e->conf.n_ctx)
        return DUET_ERR_INVALID;
    for (int i = 0; i < q->n_prompt; i++)
        if (q->prompt[i] < 0 || q->prompt[i] >= e->model->hp.n_vocab)
            return DUET_ERR_INVALID;
    for (int i = 0; i < q->n_resume; i++)
        if (q->resume[i] < 0 || q->resume[i] >= e->model->hp.n_vocab)
            return DUET_ERR_INVALID;
    duet_engine_seq_t *s = calloc(1, sizeof *s);
    if (!s)
        return DUET_ERR_NOMEM;
    s->tokens = malloc(((size_t)q->n_prompt + (size_t)q->max_tokens) * sizeof *s->tokens);
    if (!s->tokens) {
        free(s);
        return DUET_ERR_NOMEM;
    }
    memcpy(s->tokens, q->prompt, (size_t)q->n_prompt * sizeof *s->tokens);
    if (q->n_resume)
        memcpy(s->tokens + q->n_prompt, q->resume, (size_t)q->n_resume * sizeof *s->tokens);
    s->n_prompt = q->n_prompt;
    s->n_tokens = q->n_prompt + q->n_resume;
    s->max_tokens = q->max_tokens;
    s->ignore_eos = q->ignore_eos;
    s->sampling = q->sampling;
    s->result.n_generated = q->n_resume;
    s->sink = sink ? *sink : (duet_gen_sink_t){0};
    s->t_submit = duet_clock_ns();
    duet_kv_seq_init(&s->kv);
    TAILQ_INSERT_TAIL(&e->seqs, s, link);
    e->n_seqs++;
    *seq_p = s;
    return DUET_OK;
}

duet_status_t duet_engine_submit(duet_engine_t *e, const duet_gen_request_t *req,
                                 const duet_gen_sink_t *sink, duet_engine_seq_t **seq_p)
{
    duet_engine_seq_t *s;
    duet_status_t st = make_seq(e, req, sink, &s);
    if (st != DUET_OK)
        return st;
    s->state = SEQ_QUEUED;
    if (seq_p)
        *seq_p = s;
    return DUET_OK;
}

/* Unlinks a sequence that never became visible to its caller. */
static void drop_unreported(duet_engine_t *e, duet_engine_seq_t *s)
{
    s->sink = (duet_gen_sink_t){0};
    finish(e, s, DUET_FINISH_ERROR, DUET_ERR_EXHAUSTED);
}

duet_status_t duet_engine_submit_remote(duet_engine_t *e, const duet_gen_request_t *req,
                                        const duet_gen_sink_t *sink, duet_engine_seq_t **seq_p,
                                        const int32_t **blocks_p, int *n_blocks_p)
{
    if (req && req->n_resume > 0)
        return DUET_ERR_INVALID;  /* a retry with tokens recomputes locally: use submit */
    duet_engine_seq_t *s;
    duet_status_t st = make_seq(e, req, sink, &s);
    if (st != DUET_OK)
        return st;
    /* One block beyond the prompt is not reserved: the first decode step takes it like any other. */
    st = duet_kv_seq_reserve(e->cache, &s->kv, s->n_tokens);
    if (st != DUET_OK) {
        drop_unreported(e, s);
        return st;
    }
    s->state = SEQ_WAITING_KV;
    *seq_p = s;
    *blocks_p = s->kv.blocks;
    *n_blocks_p = s->kv.n_blocks;
    return DUET_OK;
}

/* Feeds a sampled (or remotely sampled) token to the request; 1 when the request ended. */
static int accept_token(duet_engine_t *e, duet_engine_seq_t *s, int32_t tok)
{
    s->tokens[s->n_tokens++] = tok;
    if (s->result.n_generated++ == 0 || s->result.first_token_ns == 0)
        s->result.first_token_ns = duet_clock_ns() - s->t_submit;
    int cancel = s->sink.on_token ? s->sink.on_token(s->sink.user, tok) : 0;
    if (cancel)
        finish(e, s, DUET_FINISH_CANCELLED, DUET_OK);
    else if (!s->ignore_eos && duet_tokenizer_is_end(e->model->tok, tok))
        finish(e, s, DUET_FINISH_STOP, DUET_OK);
    else if (s->result.n_generated >= s->max_tokens)
        finish(e, s, DUET_FINISH_LENGTH, DUET_OK);
    else
        return 0;
    return 1;
}

void duet_engine_kv_ready(duet_engine_t *e, duet_engine_seq_t *s, int32_t first_token)
{
    if (s->state != SEQ_WAITING_KV)
        return;
    if (first_token < 0 || first_token >= e->model->hp.n_vocab) {
        finish(e, s, DUET_FINISH_ERROR, DUET_ERR_FORMAT);
        return;
    }
    s->kv.n_tokens = s->n_tokens;
    s->state = SEQ_RUNNING;
    accept_token(e, s, first_token);
}

void duet_engine_kv_failed(duet_engine_t *e, duet_engine_seq_t *s)
{
    if (s->state != SEQ_WAITING_KV)
        return;
    duet_kv_seq_release(e->cache, &s->kv);
    s->state = SEQ_QUEUED;
}

duet_status_t duet_engine_kv_retry(duet_engine_t *e, duet_engine_seq_t *s, const int32_t **blocks_p,
                                   int *n_blocks_p)
{
    if (s->state != SEQ_WAITING_KV)
        return DUET_ERR_INVALID;
    duet_kv_seq_release(e->cache, &s->kv);
    duet_status_t st = duet_kv_seq_reserve(e->cache, &s->kv, s->n_tokens);
    if (st != DUET_OK) {
        duet_kv_seq_release(e->cache, &s->kv);
        return st;
    }
    *blocks_p = s->kv.blocks;
    *n_blocks_p = s->kv.n_blocks;
    return DUET_OK;
}

const duet_kv_seq_t *duet_engine_seq_kv(const duet_engine_seq_t *s)
{
    return &s->kv;
}

void *duet_engine_seq_user(const duet_engine_seq_t *s)
{
    return s->sink.user;
}

static void on_layer(void *user, int layer)
{
    duet_engine_t *e = user;
    e->layer_hook(e->layer_user, layer, e->step_seq, e->step_new, e->n_step);
}

void duet_engine_set_layer_hook(duet_engine_t *e, duet_engine_layer_fn fn, void *user)
{
    e->layer_hook = fn;
    e->layer_user = user;
    duet_forward_set_layer_hook(e->fwd, fn ? on_layer : NULL, e);
}

void duet_engine_cancel(duet_engine_t *e, duet_engine_seq_t *s)
{
    finish(e, s, DUET_FINISH_CANCELLED, DUET_ERR_CANCELLED);
}

/* Drops the KV of the newest request that holds blocks and can give them back (not `keep`, not one
 * whose KV is being written remotely); it will be prefilled again from its tokens so far. */
static int preempt_newest(duet_engine_t *e, const duet_engine_seq_t *keep)
{
    duet_engine_seq_t *s;
    TAILQ_FOREACH_REVERSE(s, &e->seqs, seq_list, link) {
        if (s == keep || s->kv.n_blocks == 0 || s->state == SEQ_WAITING_KV)
            continue;
        duet_kv_seq_release(e->cache, &s->kv);
        s->state = SEQ_QUEUED;
        s->result.n_preempted++;
        return 1;
    }
    return 0;
}

/* Adds up to `want` pending tokens of s to the step; returns how many it added. */
static int take(duet_engine_t *e, duet_engine_seq_t *s, int want, int *n_step, int *used)
{
    int n = want < e->conf.max_batch_tokens - *used ? want : e->conf.max_batch_tokens - *used;
    if (n <= 0 || *n_step >= e->conf.max_seqs)
        return 0;
    memcpy(e->step_tokens + *used, s->tokens + s->kv.n_tokens, (size_t)n * sizeof(int32_t));
    e->step_kv[*n_step] = &s->kv;
    e->step_seq[*n_step] = s;
    e->step_new[*n_step] = n;
    (*n_step)++;
    *used += n;
    return n;
}

int duet_engine_step(duet_engine_t *e)
{
    int n_step = 0, used = 0;
    /* Decode tokens of running requests, taking blocks from the newest when the pool is dry. */
    for (duet_engine_seq_t *s = TAILQ_FIRST(&e->seqs), *next; s; s = next) {
        next = TAILQ_NEXT(s, link);
        if (s->state != SEQ_RUNNING)
            continue;
        if (n_step >= e->conf.max_seqs || used >= e->conf.max_batch_tokens)
            break;
        while (duet_kv_seq_reserve(e->cache, &s->kv, s->n_tokens) == DUET_ERR_EXHAUSTED)
            if (!preempt_newest(e, s))
                break;
        if (s->state != SEQ_RUNNING)
            continue;  /* preempted itself: nothing newer could give */
        if (duet_kv_blocks_for(s->n_tokens) > s->kv.n_blocks) {
            duet_log_error("engine: the KV pool cannot hold one more token of a request");
            finish(e, s, DUET_FINISH_ERROR, DUET_ERR_EXHAUSTED);
            continue;
        }
        take(e, s, s->n_tokens - s->kv.n_tokens, &n_step, &used);
    }
    /* Prompt chunks of admitted requests, then admissions in arrival order. */
    for (duet_engine_seq_t *s = TAILQ_FIRST(&e->seqs); s && used < e->conf.max_batch_tokens;
         s = TAILQ_NEXT(s, link)) {
        if (s->state == SEQ_PREFILL) {
            take(e, s, s->n_tokens - s->kv.n_tokens, &n_step, &used);
        } else if (s->state == SEQ_QUEUED) {
            if (duet_kv_seq_reserve(e->cache, &s->kv, s->n_tokens) != DUET_OK)
                break;  /* first come, first served: later requests wait behind this one */
            s->state = SEQ_PREFILL;
            take(e, s, s->n_tokens, &n_step, &used);
        }
    }
    if (n_step == 0) {
        /* Nothing could run. A queued request that cannot fit even in an empty pool never will. */
        duet_engine_seq_t *first = TAILQ_FIRST(&e->seqs);
        if (first && first->state == SEQ_QUEUED &&
            duet_kv_blocks_for(first->n_tokens) > duet_kv_cache_n_blocks(e->cache)) {
            duet_log_error("engine: a request needs more KV blocks than the pool has");
            finish(e, first, DUET_FINISH_ERROR, DUET_ERR_EXHAUSTED);
        }
        return e->n_seqs;
    }
    duet_batch_t batch = {.n_seq = n_step, .seqs = e->step_kv, .n_new = e->step_new, .tokens = e->step_tokens};
    e->n_step = n_step;
    /* A backend that samples keeps the logits where they are and sends back only the token ids
     * (4 bytes each): a logits row is n_vocab * 4 bytes per sequence per step (192 KiB at 49k
     * tokens, 12 MiB for a step of 64 sequences), to be copied from the device and then scanned
     * by one host thread. Same tokens either way (kernels/sample.h). */
    duet_backend_t *be = e->model->be;
    int n_vocab = e->model->hp.n_vocab;
    duet_status_t st = duet_forward_run(e->fwd, &batch, be->sample ? NULL : e->logits);
    e->n_step = 0;
    int n_draws = 0;
    if (st == DUET_OK && be->sample) {
        for (int k = 0; k < n_step; k++) {
            const duet_engine_seq_t *s = e->step_seq[k];
            if (s->kv.n_tokens < s->n_tokens)
                continue;
            const duet_sampling_t *sp = &s->sampling;
            e->step_draws[n_draws++] = (duet_sample_req_t){
                .row = k, .temperature = sp->temperature, .top_k = sp->top_k, .top_p = sp->top_p,
                .min_p = sp->min_p, .repeat_penalty = sp->repeat_penalty,
                .repeat_last_n = sp->repeat_last_n, .history = s->tokens, .n_history = s->n_tokens,
                .seed = sp->seed, .draw_index = (uint64_t)s->result.n_generated,
            };
        }
        be->sample(be, duet_forward_logits(e->fwd), n_vocab, e->step_draws, n_draws, e->step_picks);
    }
    /* Ops report no errors of their own; a backend that failed says so here, not with bad tokens. */
    char why[256];
    if (st != DUET_OK)
        duet_log_error("engine: forward pass failed: %s", duet_status_str(st));
    else if ((st = duet_backend_status(be, why, sizeof why)) != DUET_OK)
        duet_log_error("engine: the %s backend failed: %s", be->name, why);
    if (st != DUET_OK) {
        for (int k = 0; k < n_step; k++)
            finish(e, e->step_seq[k], DUET_FINISH_ERROR, st);
        return st;
    }
    n_draws = 0;
    for (int k = 0; k < n_step; k++) {
        duet_engine_seq_t *s = e->step_seq[k];
        if (s->kv.n_tokens < s->n_tokens)
            continue;  /* a prompt chunk that is not the last one */
        s->state = SEQ_RUNNING;
        int32_t tok;
        if (be->sample) {
            tok = e->step_picks[n_draws++];
        } else {
            float *lg = e->logits + (size_t)k * n_vocab;
            tok = duet_sampler_sample(e->sampler, &s->sampling, lg, s->tokens, s->n_tokens,
                                      (uint64_t)s->result.n_generated);
        }
        accept_token(e, s, tok);
    }
    return e->n_seqs;
}

void duet_engine_load(const duet_engine_t *e, duet_engine_load_t *load)
{
    memset(load, 0, sizeof *load);
    const duet_engine_seq_t *s;
    TAILQ_FOREACH(s, &e->seqs, link) {
        if (s->state == SEQ_RUNNING || s->state == SEQ_PREFILL)
            load->n_running++;
        else
            load->n_queued++;
        if (s->state != SEQ_RUNNING)
            load->queued_tokens += s->n_tokens - s->kv.n_tokens;
    }
    load->blocks_free = duet_kv_cache_n_free(e->cache);
    load->blocks_total = duet_kv_cache_n_blocks(e->cache);
}

typedef struct {
    duet_gen_token_fn on_token;
    void *user;
    int index;
    duet_gen_result_t *result;
} batch_slot_t;

static int slot_token(void *p, int32_t token)
{
    batch_slot_t *slot = p;
    return slot->on_token ? slot->on_token(slot->user, slot->index, token) : 0;
}

static void slot_finish(void *p, const duet_gen_result_t *result)
{
    batch_slot_t *slot = p;
    *slot->result = *result;
}

duet_status_t duet_engine_generate(duet_engine_t *e, const duet_gen_request_t *reqs, int n,
                                   duet_gen_token_fn on_token, void *user,
                                   duet_gen_result_t *results)
{
    if (n < 0 || (n > 0 && (!reqs || !results)))
        return DUET_ERR_INVALID;
    batch_slot_t *slots = calloc((size_t)n + 1, sizeof *slots);
    if (!slots)
        return DUET_ERR_NOMEM;
    for (int i = 0; i < n; i++) {
        slots[i] = (batch_slot_t){on_token, user, i, &results[i]};
        memset(&results[i], 0, sizeof results[i]);
        duet_gen_sink_t sink = {slot_token, slot_finish, &slots[i]};
        duet_status_t st = duet_engine_submit(e, &reqs[i], &sink, NULL);
        if (st != DUET_OK) {
            results[i].finish = DUET_FINISH_ERROR;
            results[i].status = st;
        }
    }
    duet_status_t status = DUET_OK;
    int left;
    while ((left = duet_engine_step(e)) > 0)
        ;
    if (left < 0)
        status = (duet_status_t)left;
    /* A failed step already ended the requests it held; end any left by it too. */
    for (duet_engine_seq_t *s; (s = TAILQ_FIRST(&e->seqs));)
        finish(e, s, DUET_FINISH_ERROR, status ? status : DUET_ERR_INTERNAL);
    free(slots);
    return status;
}
