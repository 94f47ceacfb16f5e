/* tests/unit/test_batch.c — batched equals unbatched: prompts run alone and together in one batch
 * (also with chunked prefill mixed into decode steps, and with fewer batch slots than requests)
 * give identical tokens, greedy and seeded. Every KV block is back in the pool afterwards.
 * usage: test_batch MODEL | test_batch --mkmodel DUET_BINARY (makes a small random model) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "mkmodel.h"
#include "cpu/cpu_backend.h"
#include "engine.h"

#define N_REQ 6
#define MAX_GEN 20

static const char *const prompts[N_REQ] = {
    "The capital of France is",
    "Write a haiku about the sea.",
    "def fibonacci(n):\n    ",
    "1, 2, 3, 4,",
    "Hi",
    "In the beginning the Universe was created. This has made a lot of people very angry and been "
    "widely regarded as a bad move. Many races believe that it was created by some sort of God,",
};

typedef struct {
    int32_t tokens[N_REQ][MAX_GEN];
    int n[N_REQ];
} outputs_t;

static int record(void *user, int request, int32_t token)
{
    outputs_t *o = user;
    if (o->n[request] < MAX_GEN)
        o->tokens[request][o->n[request]++] = token;
    return 0;
}

/* Runs requests [first, first + n) in one call to a fresh engine with the given limits. */
static void run(duet_model_t *m, duet_gen_request_t *reqs, int first, int n, int budget,
                int max_seqs, outputs_t *out)
{
    duet_engine_conf_t ec = {.n_ctx = 256, .max_batch_tokens = budget, .max_seqs = max_seqs};
    duet_engine_t *e;
    CHECK_EQ_INT(duet_engine_create(m, &ec, &e), DUET_OK);
    int free_before = duet_kv_cache_n_free(duet_engine_cache(e));
    outputs_t part = {0};
    duet_gen_result_t res[N_REQ];
    CHECK_EQ_INT(duet_engine_generate(e, reqs + first, n, record, &part, res), DUET_OK);
    for (int i = 0; i < n; i++) {
        CHECK_EQ_INT(res[i].finish, DUET_FINISH_LENGTH);
        CHECK_EQ_INT(res[i].n_generated, reqs[first + i].max_tokens);
        out->n[first + i] = part.n[i];
        memcpy(out->tokens[first + i], part.tokens[i], sizeof part.tokens[i]);
    }
    CHECK_EQ_INT(duet_kv_cache_n_free(duet_engine_cache(e)), free_before);
    duet_engine_destroy(e);
}

static void compare(const outputs_t *a, const outputs_t *b, const char *what)
{
    for (int i = 0; i < N_REQ; i++) {
        int same = a->n[i] == b->n[i] && memcmp(a->tokens[i], b->tokens[i], sizeof a->tokens[i]) == 0;
        CHECK_MSG(same, "%s: request %d differs from its run alone", what, i);
    }
}

static void check_batched_equals_alone(duet_model_t *m, int sampled)
{
    int32_t ids[N_REQ][128];
    duet_gen_request_t reqs[N_REQ];
    for (int i = 0; i < N_REQ; i++) {
        int n = 0;
        CHECK_EQ_INT(duet_tokenizer_encode(m->tok, prompts[i], strlen(prompts[i]), 1, 0, ids[i], 128, &n), DUET_OK);
        reqs[i] = (duet_gen_request_t){.prompt = ids[i], .n_prompt = n, .max_tokens = MAX_GEN - i, .ignore_eos = 1};
        duet_sampling_defaults(&reqs[i].sampling);
        if (sampled) {
            reqs[i].sampling.temperature = 0.9f;
            reqs[i].sampling.top_p = 0.95f;
            reqs[i].sampling.seed = 1000 + (uint64_t)i;
        }
    }
    outputs_t alone = {0}, together = {0}, chunked = {0}, queued = {0};
    for (int i = 0; i < N_REQ; i++)
        run(m, reqs, i, 1, 512, 8, &alone);
    run(m, reqs, 0, N_REQ, 512, 8, &together);
    compare(&alone, &together, "one batch");
    /* A 16-token budget cuts the long prompts into chunks that share steps with decodes. */
    run(m, reqs, 0, N_REQ, 16, 8, &chunked);
    compare(&alone, &chunked, "chunked prefill");
    /* Two slots for six requests: later requests wait for earlier ones. */
    run(m, reqs, 0, N_REQ, 512, 2, &queued);
    compare(&alone, &queued, "two slots");
}

static duet_model_t *model;

static void test_greedy_batched_equals_alone(void) { check_batched_equals_alone(model, 0); }
static void test_seeded_batched_equals_alone(void) { check_batched_equals_alone(model, 1); }

int main(int argc, char **argv)
{
    char path[256] = "";
    if (argc == 3 && strcmp(argv[1], "--mkmodel") == 0) {
        snprintf(path, sizeof path, "/tmp/duet-test-batch-%d.gguf", (int)getpid());
        if (test_mkmodel(argv[2], path, "--layers 3 --dim 96 --heads 6 --kv-heads 2 --ffn 160 --vocab 600 "
                                        "--type q4_1 --embd-type q8_0"))
            return 1;
    } else if (argc == 2) {
        snprintf(path, sizeof path, "%s", argv[1]);
    } else {
        fprintf(stderr, "usage: %s MODEL | --mkmodel DUET_BINARY\n", argv[0]);
        return 2;
    }
    duet_cpu_conf_t cc = {.n_threads = 0, .isa = DUET_CPU_ISA_AUTO};
    duet_backend_t *be;
    CHECK_EQ_INT(duet_backend_cpu_create(&cc, &be), DUET_OK);
    char err[512] = "";
    if (duet_model_load(path, be, &model, err, sizeof err) != DUET_OK) {
        fprintf(stderr, "cannot load %s: %s\n", path, err);
        return 1;
    }
    RUN_TEST(test_greedy_batched_equals_alone);
    RUN_TEST(test_seeded_batched_equals_alone);
    duet_model_free(model);
    be->destroy(be);
    if (argc == 3)
        unlink(path);
    return check_report();
}
