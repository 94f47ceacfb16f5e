/* tests/unit/test_engine.c — continuous batching beyond the batched-equals-alone test: preemption
 * by recompute when the pool runs dry, cancellation, remote prefill (KV written into reserved
 * blocks by someone else, as prefill instances do over UCX), its fallback, and resumed requests.
 * Every case checks that the pool's free-block count returns to where it started.
 * usage: test_engine DUET_BINARY (makes a small random model with `duet mkmodel`) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "mkmodel.h"
#include "cpu/cpu_backend.h"
#include "engine.h"

#define N_GEN 24

static duet_model_t *model;

typedef struct {
    int32_t tokens[N_GEN];
    int n;
    int cancel_after;   /* 0: never */
    duet_gen_result_t result;
    int finished;
} out_t;

static int on_token(void *user, int32_t token)
{
    out_t *o = user;
    if (o->n < N_GEN)
        o->tokens[o->n++] = token;
    return o->cancel_after && o->n >= o->cancel_after;
}

static void on_finish(void *user, const duet_gen_result_t *r)
{
    out_t *o = user;
    o->result = *r;
    o->finished++;
}

static duet_gen_request_t request(const int32_t *prompt, int n_prompt)
{
    duet_gen_request_t q = {.prompt = prompt, .n_prompt = n_prompt, .max_tokens = N_GEN, .ignore_eos = 1};
    duet_sampling_defaults(&q.sampling);
    return q;
}

static void make_prompt(int32_t *p, int n, int salt)
{
    for (int i = 0; i < n; i++)
        p[i] = (int32_t)((i * 7 + salt * 13) % 250 + 3);
}

/* Greedy continuation of a prompt run alone in a roomy engine. */
static void run_alone(const int32_t *prompt, int n_prompt, out_t *o)
{
    duet_engine_conf_t ec = {.n_ctx = 256, .max_seqs = 4};
    duet_engine_t *e;
    CHECK_EQ_INT(duet_engine_create(model, &ec, &e), DUET_OK);
    duet_gen_request_t q = request(prompt, n_prompt);
    duet_gen_sink_t sink = {on_token, on_finish, o};
    CHECK_EQ_INT(duet_engine_submit(e, &q, &sink, NULL), DUET_OK);
    while (duet_engine_step(e) > 0)
        ;
    duet_engine_destroy(e);
}

static void test_preemption_recomputes_and_matches(void)
{
    /* Four requests of 40 + 24 tokens need 4 blocks each at the end; the pool has 10. */
    enum { N = 4, PROMPT = 40 };
    int32_t prompts[N][PROMPT];
    out_t alone[N] = {0}, shared[N] = {0};
    for (int i = 0; i < N; i++) {
        make_prompt(prompts[i], PROMPT, i);
        run_alone(prompts[i], PROMPT, &alone[i]);
    }
    duet_engine_conf_t ec = {.n_ctx = 256, .n_blocks = 10, .max_seqs = 8};
    duet_engine_t *e;
    CHECK_EQ_INT(duet_engine_create(model, &ec, &e), DUET_OK);
    for (int i = 0; i < N; i++) {
        duet_gen_request_t q = request(prompts[i], PROMPT);
        duet_gen_sink_t sink = {on_token, on_finish, &shared[i]};
        CHECK_EQ_INT(duet_engine_submit(e, &q, &sink, NULL), DUET_OK);
    }
    int steps = 0;
    while (duet_engine_step(e) > 0 && steps < 10000)
        steps++;
    int preempted = 0;
    for (int i = 0; i < N; i++) {
        CHECK_EQ_INT(shared[i].finished, 1);
        CHECK_EQ_INT(shared[i].result.finish, DUET_FINISH_LENGTH);
        CHECK_MSG(shared[i].n == alone[i].n && memcmp(shared[i].tokens, alone[i].tokens, sizeof alone[i].tokens) == 0,
                  "request %d differs from its run alone after preemption", i);
        preempted += shared[i].result.n_preempted;
    }
    CHECK_MSG(preempted > 0, "the pool was meant to run dry, but nothing was preempted");
    CHECK_EQ_INT(duet_kv_cache_n_free(duet_engine_cache(e)), 10);
    duet_engine_destroy(e);
}

static void test_cancel_returns_blocks(void)
{
    int32_t prompt[30];
    make_prompt(prompt, 30, 1);
    duet_engine_conf_t ec = {.n_ctx = 256, .max_seqs = 4};
    duet_engine_t *e;
    CHECK_EQ_INT(duet_engine_create(model, &ec, &e), DUET_OK);
    int free_before = duet_kv_cache_n_free(duet_engine_cache(e));
    out_t by_callback = {.cancel_after = 5}, by_call = {0};
    duet_gen_request_t q = request(prompt, 30);
    duet_gen_sink_t s1 = {on_token, on_finish, &by_callback}, s2 = {on_token, on_finish, &by_call};
    duet_engine_seq_t *seq2;
    CHECK_EQ_INT(duet_engine_submit(e, &q, &s1, NULL), DUET_OK);
    CHECK_EQ_INT(duet_engine_submit(e, &q, &s2, &seq2), DUET_OK);
    for (int i = 0; i < 3; i++)
        duet_engine_step(e);
    CHECK_EQ_INT(by_call.finished, 0);
    duet_engine_cancel(e, seq2);
    CHECK_EQ_INT(by_call.finished, 1);
    CHECK_EQ_INT(by_call.result.finish, DUET_FINISH_CANCELLED);
    while (duet_engine_step(e) > 0)
        ;
    CHECK_EQ_INT(by_callback.finished, 1);
    CHECK_EQ_INT(by_callback.result.finish, DUET_FINISH_CANCELLED);
    CHECK_EQ_INT(by_callback.n, 5);
    CHECK_EQ_INT(duet_kv_cache_n_free(duet_engine_cache(e)), free_before);
    duet_engine_destroy(e);
}

/* Computes a prompt's KV in a cache of its own, as a prefill instance does; returns the greedy
 * first token and leaves the KV in *seq. */
static int32_t prefill_elsewhere(duet_kv_cache_t *cache, duet_kv_seq_t *seq, const int32_t *prompt, int n)
{
    duet_forward_t *fwd;
    CHECK_EQ_INT(duet_forward_create(model, cache, 256, 1, &fwd), DUET_OK);
    CHECK_EQ_INT(duet_kv_seq_reserve(cache, seq, n), DUET_OK);
    float *logits = malloc((size_t)model->hp.n_vocab * sizeof *logits);
    duet_kv_seq_t *seqs[1] = {seq};
    int32_t n_new = n;
    duet_batch_t b = {.n_seq = 1, .seqs = seqs, .n_new = &n_new, .tokens = prompt};
    CHECK_EQ_INT(duet_forward_run(fwd, &b, logits), DUET_OK);
    int32_t best = 0;
    for (int i = 1; i < model->hp.n_vocab; i++)
        if (logits[i] > logits[best])
            best = i;
    free(logits);
    duet_forward_destroy(fwd);
    return best;
}

static void test_remote_prefill_matches_local(void)
{
    enum { PROMPT = 37 };
    int32_t prompt[PROMPT];
    make_prompt(prompt, PROMPT, 5);
    out_t alone = {0}, remote = {0}, fallback = {0};
    run_alone(prompt, PROMPT, &alone);

    /* The "prefill instance": its own cache, blocks laid out differently from the decode side. */
    duet_kv_cache_conf_t kc = {.n_layer = model->hp.n_layer, .n_kv_head = model->hp.n_kv_head, .head_dim = model->hp.head_dim,
                               .n_blocks = 16};
    duet_kv_cache_t *pcache;
    CHECK_EQ_INT(duet_kv_cache_create(&kc, model->be, &pcache), DUET_OK);
    int32_t dummy;
    duet_kv_block_alloc(pcache, &dummy);  /* so its block ids differ from the decode side's */
    duet_kv_seq_t pseq;
    duet_kv_seq_init(&pseq);
    int32_t first = prefill_elsewhere(pcache, &pseq, prompt, PROMPT);

    duet_engine_conf_t ec = {.n_ctx = 256, .max_seqs = 4};
    duet_engine_t *e;
    CHECK_EQ_INT(duet_engine_create(model, &ec, &e), DUET_OK);
    int free_before = duet_kv_cache_n_free(duet_engine_cache(e));
    duet_gen_request_t q = request(prompt, PROMPT);
    duet_gen_sink_t sink = {on_token, on_finish, &remote};
    duet_engine_seq_t *seq;
    const int32_t *blocks;
    int n_blocks;
    CHECK_EQ_INT(duet_engine_submit_remote(e, &q, &sink, &seq, &blocks, &n_blocks), DUET_OK);
    CHECK_EQ_INT(n_blocks, duet_kv_blocks_for(PROMPT));
    /* Whole blocks are contiguous in both pools: one copy per block stands in for a UCX put. */
    const duet_kv_pool_view_t *src = duet_kv_cache_view(pcache), *dst = duet_kv_cache_view(duet_engine_cache(e));
    size_t block_elems = 2 * (size_t)src->n_layer * duet_kv_slice_elems(src);
    for (int i = 0; i < n_blocks; i++)
        memcpy(duet_kv_slice(dst, blocks[i], 0, 0), duet_kv_slice(src, pseq.blocks[i], 0, 0),
               block_elems * sizeof(uint16_t));
    duet_engine_step(e);  /* a waiting request does not run before its KV is ready */
    CHECK_EQ_INT(remote.n, 0);
    duet_engine_kv_ready(e, seq, first);
    while (duet_engine_step(e) > 0)
        ;
    CHECK_EQ_INT(remote.result.finish, DUET_FINISH_LENGTH);
    CHECK_MSG(remote.n == alone.n && memcmp(remote.tokens, alone.tokens, sizeof alone.tokens) == 0,
              "remote prefill + local decode differs from a local run");

    /* A failed remote prefill falls back to a local one with the same result. */
    sink.user = &fallback;
    CHECK_EQ_INT(duet_engine_submit_remote(e, &q, &sink, &seq, &blocks, &n_blocks), DUET_OK);
    duet_engine_kv_failed(e, seq);
    while (duet_engine_step(e) > 0)
        ;
    CHECK(fallback.n == alone.n && memcmp(fallback.tokens, alone.tokens, sizeof alone.tokens) == 0);
    CHECK_EQ_INT(duet_kv_cache_n_free(duet_engine_cache(e)), free_before);

    /* A retry on another writer: the old blocks, held by the caller (quarantine), are not handed
     * out again; the KV written into the new ones gives the same result. */
    out_t retried = {0};
    sink.user = &retried;
    duet_kv_cache_t *dcache = duet_engine_cache(e);
    CHECK_EQ_INT(duet_engine_submit_remote(e, &q, &sink, &seq, &blocks, &n_blocks), DUET_OK);
    int32_t held[8];
    int n_held = n_blocks;
    for (int i = 0; i < n_held; i++) {
        held[i] = blocks[i];
        duet_kv_block_ref(dcache, held[i]);
    }
    CHECK_EQ_INT(duet_engine_kv_retry(e, seq, &blocks, &n_blocks), DUET_OK);
    CHECK_EQ_INT(n_blocks, n_held);
    for (int i = 0; i < n_blocks; i++)
        for (int k = 0; k < n_held; k++)
            CHECK_MSG(blocks[i] != held[k], "block %d handed out again while held", held[k]);
    for (int i = 0; i < n_blocks; i++)
        memcpy(duet_kv_slice(dst, blocks[i], 0, 0), duet_kv_slice(src, pseq.blocks[i], 0, 0),
               block_elems * sizeof(uint16_t));
    duet_engine_kv_ready(e, seq, first);
    while (duet_engine_step(e) > 0)
        ;
    CHECK(retried.n == alone.n && memcmp(retried.tokens, alone.tokens, sizeof alone.tokens) == 0);
    for (int i = 0; i < n_held; i++)
        duet_kv_block_unref(dcache, held[i]);
    CHECK_EQ_INT(duet_kv_cache_n_free(dcache), free_before);

    /* No blocks for the prompt: refused at once, nothing held. */
    duet_engine_conf_t tiny = {.n_ctx = 256, .n_blocks = 2, .max_seqs = 2};
    duet_engine_t *small;
    CHECK_EQ_INT(duet_engine_create(model, &tiny, &small), DUET_OK);
    CHECK_EQ_INT(duet_engine_submit_remote(small, &q, &sink, &seq, &blocks, &n_blocks), DUET_ERR_EXHAUSTED);
    CHECK_EQ_INT(duet_kv_cache_n_free(duet_engine_cache(small)), 2);
    CHECK_EQ_INT(duet_engine_step(small), 0);
    duet_engine_destroy(small);

    duet_kv_seq_cleanup(pcache, &pseq);
    duet_kv_cache_destroy(pcache);
    duet_engine_destroy(e);
}

static void test_resume_continues_where_it_stopped(void)
{
    int32_t prompt[20];
    make_prompt(prompt, 20, 9);
    out_t alone = {0}, resumed = {0};
    run_alone(prompt, 20, &alone);
    duet_engine_conf_t ec = {.n_ctx = 256, .max_seqs = 4};
    duet_engine_t *e;
    CHECK_EQ_INT(duet_engine_create(model, &ec, &e), DUET_OK);
    duet_gen_request_t q = request(prompt, 20);
    q.resume = alone.tokens;
    q.n_resume = 10;
    duet_gen_sink_t sink = {on_token, on_finish, &resumed};
    CHECK_EQ_INT(duet_engine_submit(e, &q, &sink, NULL), DUET_OK);
    while (duet_engine_step(e) > 0)
        ;
    CHECK_EQ_INT(resumed.n, N_GEN - 10);
    CHECK_EQ_INT(resumed.result.n_generated, N_GEN);
    CHECK(memcmp(resumed.tokens, alone.tokens + 10, (N_GEN - 10) * sizeof(int32_t)) == 0);
    duet_engine_destroy(e);
}

static void test_refuses_impossible_requests(void)
{
    duet_engine_conf_t ec = {.n_ctx = 64, .max_seqs = 2};
    duet_engine_t *e;
    CHECK_EQ_INT(duet_engine_create(model, &ec, &e), DUET_OK);
    int32_t prompt[60] = {0};
    duet_gen_request_t q = request(prompt, 60);   /* 60 + 24 > 64 */
    CHECK_EQ_INT(duet_engine_submit(e, &q, NULL, NULL), DUET_ERR_INVALID);
    q = request(prompt, 0);
    CHECK_EQ_INT(duet_engine_submit(e, &q, NULL, NULL), DUET_ERR_INVALID);
    prompt[0] = 1 << 30;                           /* not in the vocabulary */
    q = request(prompt, 5);
    CHECK_EQ_INT(duet_engine_submit(e, &q, NULL, NULL), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_engine_step(e), 0);
    duet_engine_destroy(e);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DUET_BINARY\n", argv[0]);
        return 2;
    }
    char path[128];
    snprintf(path, sizeof path, "/tmp/duet-test-engine-%d.gguf", (int)getpid());
    if (test_mkmodel(argv[1], path, "--layers 2 --dim 64 --heads 4 --kv-heads 2 --ffn 128 --vocab 300 --type q8_0"))
        return 1;
    duet_cpu_conf_t cc = {.n_threads = 0, .isa = DUET_CPU_ISA_AUTO};
    duet_backend_t *be;
    CHECK_EQ_INT(duet_backend_cpu_create(&cc, &be), DUET_OK);
    char err[512] = "";
    if (duet_model_load(path, be, &model, err, sizeof err) != DUET_OK) {
        fprintf(stderr, "cannot load %s: %s\n", path, err);
        return 1;
    }
    RUN_TEST(test_preemption_recomputes_and_matches);
    RUN_TEST(test_cancel_returns_blocks);
    RUN_TEST(test_remote_prefill_matches_local);
    RUN_TEST(test_resume_continues_where_it_stopped);
    RUN_TEST(test_refuses_impossible_requests);
    duet_model_free(model);
    be->destroy(be);
    unlink(path);
    return check_report();
}
