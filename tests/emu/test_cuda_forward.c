/* tests/emu/test_cuda_forward.c — whole forward passes through the CUDA backend give the CPU
 * backend's greedy tokens: small random models (llama with Q4_1 weights and Q8_0 embeddings; qwen2
 * with biases, neox RoPE and F16 weights) run by the engine on both backends, prompts long enough
 * that prefill takes the cuBLAS path and decode splits its context. mkmodel's random models tie
 * the output to the embeddings and mostly echo their last token, so greedy tokens alone would
 * miss a broken attention: the logits of every step (two sequences, prefill then decode, the same
 * tokens fed to both backends) are compared too, |cuda - cpu| <= 2e-3 (1 + max |cpu|) per step.
 * Built against kernels/emu (ctest -L emu) and the real backend (ctest -L gpu; exit 77 without a
 * GPU).
 * usage: test_cuda_forward DUET_BINARY */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "mkmodel.h"

#define SKIP_CODE 77

#ifdef DUET_TEST_NO_CUDA
int main(void)
{
    fprintf(stderr, "SKIP: this build has no nvcc, so there is no CUDA backend to run on a GPU\n");
    return SKIP_CODE;
}
#else

#include "cpu/cpu_backend.h"
#include "cuda/cuda_backend.h"
#include "engine.h"

#define N_REQ 3
#define N_GEN 10

typedef struct {
    int32_t tokens[N_REQ][N_GEN];
    int n[N_REQ];
} outputs_t;

static int record(void *user, int request, int32_t token)
{
    outputs_t *o = user;
    if (o->n[request] < N_GEN)
        o->tokens[request][o->n[request]++] = token;
    return 0;
}

/* Greedy generation of N_REQ prompts of 9, 40 and 70 tokens (ids drawn from the vocabulary, so
 * the tokenizer is not what is tested) in one engine run. */
static int generate(const char *path, duet_backend_t *be, outputs_t *out)
{
    duet_model_t *m;
    char err[512] = "";
    if (duet_model_load(path, be, &m, err, sizeof err) != DUET_OK) {
        fprintf(stderr, "cannot load %s on %s: %s\n", path, be->name, err);
        return -1;
    }
    static const int lens[N_REQ] = {9, 40, 70};
    int32_t prompts[N_REQ][70];
    duet_gen_request_t reqs[N_REQ];
    for (int r = 0; r < N_REQ; r++) {
        for (int i = 0; i < lens[r]; i++)
            prompts[r][i] = (int32_t)((i * 37 + r * 101 + 11) % m->hp.n_vocab);
        reqs[r] = (duet_gen_request_t){.prompt = prompts[r], .n_prompt = lens[r], .max_tokens = N_GEN,
                                       .ignore_eos = 1};
        duet_sampling_defaults(&reqs[r].sampling);
        reqs[r].sampling.temperature = 0.0f;
    }
    duet_engine_conf_t ec = {.n_ctx = 128, .max_batch_tokens = 64, .max_seqs = 4};
    duet_engine_t *e;
    duet_gen_result_t res[N_REQ];
    memset(out, 0, sizeof *out);
    CHECK_EQ_INT(duet_engine_create(m, &ec, &e), DUET_OK);
    CHECK_EQ_INT(duet_engine_generate(e, reqs, N_REQ, record, out, res), DUET_OK);
    for (int r = 0; r < N_REQ; r++)
        CHECK_EQ_INT(res[r].n_generated, N_GEN);
    duet_engine_destroy(e);
    duet_model_free(m);
    return 0;
}

/* Runs the same steps on both backends through duet_forward and compares logits. */
static void compare_logits(const char *path, const char *what, duet_backend_t *cpu, duet_backend_t *cu)
{
    duet_backend_t *bes[2] = {cpu, cu};
    duet_model_t *m[2] = {NULL, NULL};
    duet_kv_cache_t *cache[2] = {NULL, NULL};
    duet_forward_t *fwd[2] = {NULL, NULL};
    duet_kv_seq_t seq[2][2];
    char err[512];
    for (int b = 0; b < 2; b++)
        for (int s = 0; s < 2; s++)
            duet_kv_seq_init(&seq[b][s]);
    for (int b = 0; b < 2; b++) {
        if (duet_model_load(path, bes[b], &m[b], err, sizeof err) != DUET_OK) {
            CHECK_MSG(0, "cannot load %s: %s", path, err);
            goto out;
        }
        duet_kv_cache_conf_t kc = {.n_layer = m[b]->hp.n_layer, .n_kv_head = m[b]->hp.n_kv_head, .head_dim = m[b]->hp.head_dim,
                                   .n_blocks = 24};
        CHECK_EQ_INT(duet_kv_cache_create(&kc, bes[b], &cache[b]), DUET_OK);
        CHECK_EQ_INT(duet_forward_create(m[b], cache[b], 64, 2, &fwd[b]), DUET_OK);
    }
    if (check_failures)
        goto out;
    int n_vocab = m[0]->hp.n_vocab;
    float *logits[2] = {malloc(2 * (size_t)n_vocab * sizeof(float)), malloc(2 * (size_t)n_vocab * sizeof(float))};
    int32_t tokens[64], n_new[2] = {45, 12};
    double worst_step = 0;
    for (int stepi = 0; stepi < 8 && logits[0] && logits[1]; stepi++) {
        int n = n_new[0] + n_new[1];
        for (int i = 0; i < n; i++)
            tokens[i] = stepi == 0 ? (int32_t)((i * 53 + 7) % n_vocab) : tokens[i];
        for (int b = 0; b < 2; b++) {
            duet_kv_seq_t *ps[2] = {&seq[b][0], &seq[b][1]};
            for (int s = 0; s < 2; s++)
                CHECK_EQ_INT(duet_kv_seq_reserve(cache[b], ps[s], ps[s]->n_tokens + n_new[s]), DUET_OK);
            duet_batch_t batch = {2, ps, n_new, tokens};
            CHECK_EQ_INT(duet_forward_run(fwd[b], &batch, logits[b]), DUET_OK);
        }
        double mx = 0, diff = 0;
        for (size_t i = 0; i < 2 * (size_t)n_vocab; i++) {
            double a = logits[0][i], d = fabs((double)logits[1][i] - a);
            mx = fabs(a) > mx ? fabs(a) : mx;
            diff = d > diff || isnan(d) ? d : diff;
        }
        double r = diff / (2e-3 * (1.0 + mx));
        worst_step = r > worst_step || isnan(r) ? r : worst_step;
        /* Next step: one decode token per sequence, not the echoed argmax. */
        n_new[0] = n_new[1] = 1;
        tokens[0] = (int32_t)((stepi * 31 + 5) % n_vocab);
        tokens[1] = (int32_t)((stepi * 17 + 9) % n_vocab);
    }
    CHECK_MSG(worst_step <= 1.0, "%s: logits of the CUDA backend differ from the CPU's (%.3g of tolerance)",
              what, worst_step);
    if (getenv("DUET_TEST_VERBOSE"))
        fprintf(stderr, "  %s: worst logits difference %.3g of tolerance\n", what, worst_step);
    free(logits[0]);
    free(logits[1]);
out:
    for (int b = 0; b < 2; b++) {
        if (cache[b])
            for (int s = 0; s < 2; s++)
                duet_kv_seq_cleanup(cache[b], &seq[b][s]);
        duet_forward_destroy(fwd[b]);
        duet_kv_cache_destroy(cache[b]);
        duet_model_free(m[b]);
    }
}

static void check_model(const char *duet, const char *what, const char *args, duet_backend_t *cpu,
                        duet_backend_t *cu)
{
    char path[256];
    snprintf(path, sizeof path, "/tmp/duet-test-cuda-fwd-%d.gguf", (int)getpid());
    if (test_mkmodel(duet, path, args) != 0) {
        CHECK_MSG(0, "no model for %s", what);
        return;
    }
    outputs_t want, got;
    duet_cuda_stats_t s0, s1;
    duet_backend_cuda_stats(cu, &s0);
    if (generate(path, cpu, &want) == 0 && generate(path, cu, &got) == 0) {
        for (int r = 0; r < N_REQ; r++) {
            int same = want.n[r] == got.n[r] && memcmp(want.tokens[r], got.tokens[r], sizeof want.tokens[r]) == 0;
            CHECK_MSG(same, "%s: request %d: the CUDA backend's greedy tokens differ from the CPU's", what, r);
            if (!same || getenv("DUET_TEST_VERBOSE")) {
                fprintf(stderr, "  %s request %d cpu:", what, r);
                for (int i = 0; i < want.n[r]; i++)
                    fprintf(stderr, " %d", want.tokens[r][i]);
                fprintf(stderr, "\n  %s request %d cu: ", what, r);
                for (int i = 0; i < got.n[r]; i++)
                    fprintf(stderr, " %d", got.tokens[r][i]);
                fprintf(stderr, "\n");
            }
        }
    } else {
        CHECK_MSG(0, "%s: generation failed", what);
    }
    compare_logits(path, what, cpu, cu);
    duet_backend_cuda_stats(cu, &s1);
    CHECK_MSG(s1.gemm_calls > s0.gemm_calls, "%s: prefill used cuBLAS", what);
    CHECK_MSG(s1.attn_split_calls > s0.attn_split_calls, "%s: decode split a context", what);
    char why[256];
    CHECK_EQ_INT(duet_backend_status(cu, why, sizeof why), DUET_OK);
    unlink(path);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DUET_BINARY\n", argv[0]);
        return 2;
    }
    duet_backend_t *cpu, *cu;
    if (duet_backend_cpu_create(&(duet_cpu_conf_t){.n_threads = 1, .isa = DUET_CPU_ISA_SCALAR}, &cpu) != DUET_OK)
        return 1;
    /* cuBLAS from 8 tokens, split-K from 32 positions: both paths run at these small sizes. */
    duet_status_t st = duet_backend_cuda_create(
        &(duet_cuda_conf_t){.device = 0, .gemm_min_tokens = 8, .split_min_positions = 32}, &cu);
    if (st == DUET_ERR_UNAVAILABLE) {
        fprintf(stderr, "SKIP: no usable CUDA device here; the forward pass was NOT run on a GPU\n");
        cpu->destroy(cpu);
        return SKIP_CODE;
    }
    CHECK_EQ_INT(st, DUET_OK);
    if (st != DUET_OK)
        return check_report();
    check_model(argv[1], "llama q4_1", "--layers 2 --dim 96 --heads 6 --kv-heads 2 --ffn 160 --vocab 600 "
                "--type q4_1 --embd-type q8_0 --seed 7", cpu, cu);
    check_model(argv[1], "qwen2 f16", "--arch qwen2 --layers 2 --dim 128 --heads 8 --kv-heads 1 --ffn 192 "
                "--vocab 400 --type f16 --seed 3", cpu, cu);
    cu->destroy(cu);
    cpu->destroy(cpu);
    return check_report();
}

#endif
