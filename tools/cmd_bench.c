/* tools/cmd_bench.c — `duet bench`: prompt processing (pp512) and generation (tg128) speed of a
 * model on this machine, llama-bench style: mean and spread over repetitions. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "commands.h"
#include "conf.h"
#include "forward.h"
#include "kvcache.h"
#include "threadpool.h"

typedef struct {
    const char *model;
    int threads;
    int n_prompt;
    int n_gen;
    int reps;
} bench_conf_t;

#define OPT(flag, env, type, field, def, help) {flag, env, type, offsetof(bench_conf_t, field), def, help}
static const duet_conf_opt_t bench_opts[] = {
    OPT("model", "DUET_MODEL", DUET_CONF_STR, model, NULL, "GGUF model file (default: the cached default model)"),
    OPT("threads", "DUET_THREADS", DUET_CONF_INT, threads, "0", "compute threads; 0 uses every CPU"),
    OPT("n-prompt", NULL, DUET_CONF_INT, n_prompt, "512", "prompt tokens of the pp test"),
    OPT("n-gen", NULL, DUET_CONF_INT, n_gen, "128", "generated tokens of the tg test"),
    OPT("reps", NULL, DUET_CONF_INT, reps, "5", "repetitions of each test"),
};
#undef OPT
#define N_OPTS ((int)(sizeof bench_opts / sizeof bench_opts[0]))

static void cpu_name(char *buf, size_t cap)
{
    snprintf(buf, cap, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) == 0) {
            char *colon = strchr(line, ':');
            if (colon) {
                colon += 2;
                colon[strcspn(colon, "\n")] = '\0';
                snprintf(buf, cap, "%s", colon);
            }
            break;
        }
    }
    fclose(f);
}

/* One test: n_prompt tokens in one step (pp) or n_gen single-token steps (tg). Returns tok/s. */
static double run_test(duet_forward_t *fwd, duet_kv_cache_t *cache, int n_prompt, int n_gen, float *logits, int32_t *tokens)
{
    duet_kv_seq_t seq;
    duet_kv_seq_init(&seq);
    duet_kv_seq_t *seqs[1] = {&seq};
    int64_t t0 = duet_clock_ns();
    int n_done = 0;
    if (n_prompt > 0) {
        int32_t n_new = n_prompt;
        duet_kv_seq_reserve(cache, &seq, n_prompt);
        duet_batch_t b = {.n_seq = 1, .seqs = seqs, .n_new = &n_new, .tokens = tokens};
        if (duet_forward_run(fwd, &b, logits) == DUET_OK)
            n_done = n_prompt;
    } else {
        int32_t one = 1;
        for (int i = 0; i < n_gen; i++) {
            duet_kv_seq_reserve(cache, &seq, seq.n_tokens + 1);
            duet_batch_t b = {.n_seq = 1, .seqs = seqs, .n_new = &one, .tokens = tokens + i};
            if (duet_forward_run(fwd, &b, logits) != DUET_OK)
                break;
            n_done++;
        }
    }
    double secs = (duet_clock_ns() - t0) / 1e9;
    duet_kv_seq_cleanup(cache, &seq);
    return n_done / secs;
}

int duet_cmd_bench(int argc, char **argv)
{
    bench_conf_t c;
    int rc = duet_tool_parse("duet bench [OPTIONS]", bench_opts, N_OPTS, &c, argc, argv);
    if (rc >= 0)
        return rc;
    if (c.n_prompt < 1 || c.n_gen < 1 || c.reps < 1 || c.threads < 0) {
        fprintf(stderr, "duet bench: --n-prompt, --n-gen and --reps must be at least 1\n");
        return 2;
    }
    duet_backend_t *be;
    duet_model_t *m;
    if (duet_tool_open_model(c.model, c.threads, &be, &m))
        return 1;
    int n_ctx = c.n_prompt > c.n_gen ? c.n_prompt : c.n_gen;
    duet_kv_cache_conf_t kc = {m->hp.n_layer, m->hp.n_kv_head, m->hp.head_dim, duet_kv_blocks_for(n_ctx), NULL};
    duet_kv_cache_t *cache = NULL;
    duet_forward_t *fwd = NULL;
    float *logits = malloc((size_t)m->hp.n_vocab * sizeof *logits);
    int32_t *tokens = malloc((size_t)n_ctx * sizeof *tokens);
    rc = 1;
    if (!logits || !tokens || duet_kv_cache_create(&kc, be, &cache) != DUET_OK ||
        duet_forward_create(m, cache, c.n_prompt, 1, &fwd) != DUET_OK) {
        fprintf(stderr, "duet bench: out of memory\n");
        goto done;
    }
    /* Random tokens, as llama-bench uses: the content does not change the work. */
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < n_ctx; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        tokens[i] = (int32_t)(x % (uint64_t)m->hp.n_vocab);
    }
    char cpu[256];
    cpu_name(cpu, sizeof cpu);
    int threads = c.threads ? c.threads : duet_cpu_count();
    printf("model: %s (%s, %.1f MiB of weights)\ncpu: %s, %d threads, backend %s\n\n", m->name,
           m->arch_name, m->weight_bytes / 1048576.0, cpu, threads, be->name);
    printf("| %-16s | %8s | %14s |\n", "test", "threads", "tok/s");
    printf("| %-16s | %8s | %14s |\n", "----------------", "--------", "--------------");
    run_test(fwd, cache, 0, 8, logits, tokens);  /* warm-up: page in the weights */
    for (int t = 0; t < 2; t++) {
        int pp = t == 0;
        double sum = 0, sum2 = 0;
        for (int r = 0; r < c.reps; r++) {
            double tps = run_test(fwd, cache, pp ? c.n_prompt : 0, c.n_gen, logits, tokens);
            sum += tps;
            sum2 += tps * tps;
        }
        double mean = sum / c.reps;
        double sd = c.reps > 1 ? sqrt(fmax(0, (sum2 - sum * mean) / (c.reps - 1))) : 0;
        char name[32];
        snprintf(name, sizeof name, pp ? "pp%d" : "tg%d", pp ? c.n_prompt : c.n_gen);
        printf("| %-16s | %8d | %7.1f ± %4.1f |\n", name, threads, mean, sd);
    }
    rc = 0;
done:
    duet_forward_destroy(fwd);
    duet_kv_cache_destroy(cache);
    free(logits);
    free(tokens);
    duet_tool_close_model(be, m);
    return rc;
}
