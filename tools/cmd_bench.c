/* tools/cmd_bench.c — `duet bench`: prompt processing (pp512), generation (tg128) and batched
 * decode speed of a model on this machine, each as a median over repetitions with its spread and
 * its share of the machine limit measured in the same run (memory bandwidth for decode; for
 * prefill, the f32 FMA or int8 dot-product peak, whichever its matmuls run on). --json prints the
 * same as one JSON object. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "commands.h"
#include "conf.h"
#include "cpu/cpu_backend.h"
#include "cpu/probe.h"
#include "forward.h"
#include "kvcache.h"
#include "cpu.h"

typedef struct {
    const char *model;
    int threads;
    int n_prompt;
    int n_gen;
    int reps;
    const char *batch;   /* comma-separated sequence counts */
    int batch_prompt;
    int batch_gen;
    int json;
    const char *device;
} bench_conf_t;

#define OPT(flag, env, type, field, def, help) {flag, env, type, offsetof(bench_conf_t, field), def, help}
static const duet_conf_opt_t bench_opts[] = {
    OPT("model", "DUET_MODEL", DUET_CONF_STR, model, NULL, "GGUF model file (default: the cached default model)"),
    OPT("threads", "DUET_THREADS", DUET_CONF_INT, threads, "0", "compute threads; 0 uses every CPU"),
    OPT("device", "DUET_DEVICE", DUET_CONF_STR, device, "cpu", "compute device: cpu, cuda or cuda:N"),
    OPT("n-prompt", NULL, DUET_CONF_INT, n_prompt, "512", "prompt tokens of the pp test"),
    OPT("n-gen", NULL, DUET_CONF_INT, n_gen, "128", "generated tokens of the tg test"),
    OPT("reps", NULL, DUET_CONF_INT, reps, "5", "repetitions of each test (the median is reported)"),
    OPT("batch", NULL, DUET_CONF_STR, batch, "1,4,16,32", "sequence counts of the batched decode test; empty skips it"),
    OPT("batch-prompt", NULL, DUET_CONF_INT, batch_prompt, "128", "prompt tokens of each sequence in the batched test"),
    OPT("batch-gen", NULL, DUET_CONF_INT, batch_gen, "32", "decode steps timed in the batched test"),
    OPT("json", NULL, DUET_CONF_BOOL, json, "false", "print one JSON object instead of tables"),
};
#undef OPT
#define N_OPTS ((int)(sizeof bench_opts / sizeof bench_opts[0]))

#define MAX_BATCHES 8
#define MAX_REPS 101

/* The value of the first /proc/cpuinfo line starting with key, or "unknown". */
static void cpuinfo_field(const char *key, char *buf, size_t cap)
{
    snprintf(buf, cap, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[8192];
    size_t klen = strlen(key);
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, key, klen) == 0) {
            char *colon = strchr(line, ':');
            if (colon) {
                colon += colon[1] == ' ' ? 2 : 1;
                colon[strcspn(colon, "\n")] = '\0';
                snprintf(buf, cap, "%s", colon);
            }
            break;
        }
    }
    fclose(f);
}

/* The SIMD flags that decide which kernels run, out of the full list. */
static void simd_flags(char *buf, size_t cap)
{
    static const char *wanted[] = {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                                   "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni",
                                   "amx_int8", "amx_bf16"};
    char all[8192];
    cpuinfo_field("flags", all, sizeof all);
    buf[0] = '\0';
    size_t len = 0;
    for (size_t i = 0; i < sizeof wanted / sizeof wanted[0]; i++) {
        size_t wl = strlen(wanted[i]);
        for (const char *p = all; (p = strstr(p, wanted[i])) != NULL; p += wl) {
            if ((p == all || p[-1] == ' ') && (p[wl] == ' ' || p[wl] == '\0')) {
                int w = snprintf(buf + len, cap - len, "%s%s", len ? " " : "", wanted[i]);
                if (w > 0 && (size_t)w < cap - len)
                    len += (size_t)w;
                break;
            }
        }
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    double median, min, max;
} stat_t;

static stat_t stats(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    stat_t s = {n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2, v[0], v[n - 1]};
    return s;
}

/* Bytes a decode step reads from weights: every matmul weight once (as stored; the packed form
 * of the CPU backend has the same size up to alignment). The embedding table is read one row per
 * token, which is negligible, unless it doubles as the output matrix. */
static double weight_read_bytes(const duet_model_t *m)
{
    double sum = (double)m->output.rows * (double)m->output.row_bytes;
    for (int l = 0; l < m->hp.n_layer; l++) {
        const duet_layer_t *L = &m->layers[l];
        const duet_weight_t *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
            sum += (double)ws[i]->rows * (double)ws[i]->row_bytes;
    }
    return sum;
}

/* FLOPs of a forward pass of one token at context position pos (0-based), logits excluded:
 * 2 per weight of the layer matmuls, and q.k plus p.v over pos + 1 positions per head. */
static double token_flops(const duet_model_t *m, double pos)
{
    const duet_hparams_t *hp = &m->hp;
    double q = (double)hp->n_head * hp->head_dim, kv = (double)hp->n_kv_head * hp->head_dim;
    double per_layer = 2.0 * hp->dim * (q + 2 * kv) + 2.0 * q * hp->dim + 2.0 * 3 * hp->dim * hp->ffn_dim;
    double attn = 4.0 * q * (pos + 1);
    return hp->n_layer * (per_layer + attn);
}

/* The FLOP/s prefill can reach at most: the peak of the arithmetic its layer matmuls run on.
 * Block-type weights on the CPU's integer matmul take one int8 dot product (2 ops in the probe's
 * count) per byte of activation and weight, so a multiply-add (2 FLOPs) costs 4 ops with 16-bit
 * activations and 2 with 8-bit ones; everything else runs on f32 FMAs. */
static double prefill_limit(const duet_backend_t *be, const duet_model_t *m, double peak_f32,
                            double peak_i8, const char **name)
{
    int act_bits = duet_backend_cpu_act_bits(be, &m->layers[0].w_gate);
    if (act_bits && peak_i8 > 0) {
        *name = act_bits == 16 ? "int8 peak/2" : "int8 peak";
        return act_bits == 16 ? peak_i8 / 2 : peak_i8;
    }
    *name = "f32 peak";
    return peak_f32;
}

/* One test: n_prompt tokens in one step (pp) or n_gen single-token steps (tg). Returns tok/s. */
static double run_single(duet_forward_t *fwd, duet_kv_cache_t *cache, int n_prompt, int n_gen,
                         float *logits, const int32_t *tokens)
{
    duet_kv_seq_t seq;
    duet_kv_seq_init(&seq);
    duet_kv_seq_t *seqs[1] = {&seq};
    int n_done = 0;
    int64_t t0 = duet_clock_ns();
    if (n_prompt > 0) {
        int32_t n_new = n_prompt;
        if (duet_kv_seq_reserve(cache, &seq, n_prompt) == DUET_OK) {
            duet_batch_t b = {.n_seq = 1, .seqs = seqs, .n_new = &n_new, .tokens = tokens};
            if (duet_forward_run(fwd, &b, logits) == DUET_OK)
                n_done = n_prompt;
        }
    } else {
        int32_t one = 1;
        for (int i = 0; i < n_gen; i++) {
            if (duet_kv_seq_reserve(cache, &seq, seq.n_tokens + 1) != DUET_OK)
                break;
            duet_batch_t b = {.n_seq = 1, .seqs = seqs, .n_new = &one, .tokens = tokens + i};
            if (duet_forward_run(fwd, &b, logits) != DUET_OK)
                break;
            n_done++;
        }
    }
    double secs = (duet_clock_ns() - t0) / 1e9;
    duet_kv_seq_cleanup(cache, &seq);
    return n_done > 0 ? n_done / secs : 0;
}

/* n_gen decode steps of the first n_seq of seqs, each rewound to n_prompt tokens first (their
 * K/V for the prompt stay valid; later positions are overwritten). Returns aggregate tok/s. */
static double run_batched(duet_forward_t *fwd, duet_kv_seq_t *seqs, int n_seq, int n_prompt, int n_gen,
                          float *logits, const int32_t *tokens)
{
    duet_kv_seq_t *ptrs[64];
    int32_t ones[64];
    for (int s = 0; s < n_seq; s++) {
        seqs[s].n_tokens = n_prompt;
        ptrs[s] = &seqs[s];
        ones[s] = 1;
    }
    int64_t t0 = duet_clock_ns();
    int steps = 0;
    for (int i = 0; i < n_gen; i++) {
        duet_batch_t b = {.n_seq = n_seq, .seqs = ptrs, .n_new = ones, .tokens = tokens + i * n_seq};
        if (duet_forward_run(fwd, &b, logits) != DUET_OK)
            break;
        steps++;
    }
    double secs = (duet_clock_ns() - t0) / 1e9;
    return steps > 0 ? (double)steps * n_seq / secs : 0;
}

static int parse_batches(const char *s, int *out, int max)
{
    int n = 0;
    while (s && *s && n < max) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 64)
            return -1;
        out[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return n;
}

int duet_cmd_bench(int argc, char **argv)
{
    bench_conf_t c;
    int rc = duet_tool_parse("duet bench [OPTIONS]", bench_opts, N_OPTS, &c, argc, argv);
    if (rc >= 0)
        return rc;
    int batches[MAX_BATCHES];
    int n_batches = parse_batches(c.batch, batches, MAX_BATCHES);
    if (c.n_prompt < 1 || c.n_gen < 1 || c.reps < 1 || c.reps > MAX_REPS || c.threads < 0 ||
        c.batch_prompt < 1 || c.batch_gen < 1 || n_batches < 0) {
        fprintf(stderr, "duet bench: --n-prompt, --n-gen, --batch-prompt, --batch-gen must be at least 1, "
                        "--reps 1..%d, --batch a list of counts 1..64\n", MAX_REPS);
        return 2;
    }
    duet_backend_t *be;
    duet_model_t *m;
    if (duet_tool_open_model(c.model, c.device, c.threads, &be, &m))
        return 1;
    int max_seq = 1;
    for (int i = 0; i < n_batches; i++)
        max_seq = batches[i] > max_seq ? batches[i] : max_seq;
    int n_ctx = c.n_prompt > c.n_gen ? c.n_prompt : c.n_gen;
    int batch_ctx = c.batch_prompt + c.batch_gen;
    int max_tokens = c.n_prompt > c.batch_prompt ? c.n_prompt : c.batch_prompt;
    max_tokens = max_tokens > max_seq ? max_tokens : max_seq;
    int n_blocks = duet_kv_blocks_for(n_ctx) + (n_batches ? max_seq * duet_kv_blocks_for(batch_ctx) : 0);
    duet_kv_cache_conf_t kc = {.n_layer = m->hp.n_layer, .n_kv_head = m->hp.n_kv_head, .head_dim = m->hp.head_dim,
                               .n_blocks = n_blocks};
    duet_kv_cache_t *cache = NULL;
    duet_forward_t *fwd = NULL;
    int n_tok = n_ctx > max_seq * c.batch_gen ? n_ctx : max_seq * c.batch_gen;
    n_tok = n_tok > max_seq * c.batch_prompt ? n_tok : max_seq * c.batch_prompt;
    float *logits = malloc((size_t)max_seq * m->hp.n_vocab * sizeof *logits);
    int32_t *tokens = malloc((size_t)n_tok * sizeof *tokens);
    duet_kv_seq_t *seqs = calloc((size_t)max_seq, sizeof *seqs);
    rc = 1;
    if (!logits || !tokens || !seqs || duet_kv_cache_create(&kc, be, &cache) != DUET_OK ||
        duet_forward_create(m, cache, max_tokens, max_seq, &fwd) != DUET_OK) {
        fprintf(stderr, "duet bench: out of memory\n");
        goto done;
    }
    for (int s = 0; s < max_seq; s++)
        duet_kv_seq_init(&seqs[s]);
    /* Random tokens, as llama-bench uses: the content does not change the work. */
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < n_tok; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        tokens[i] = (int32_t)(x % (uint64_t)m->hp.n_vocab);
    }
    int threads = c.threads ? c.threads : duet_cpu_count();

    /* The machine's limits, measured now, under the same load as the tests below. Decode reads
     * the weights once per step: that many bytes may stay in a large L3, so the bandwidth that
     * bounds it is measured on a buffer of that size (and DRAM's, on 512 MiB, is shown too). */
    double wbytes = weight_read_bytes(m);
    double bw = duet_cpu_probe_read_gbs(threads, (size_t)wbytes);
    double bw_dram = duet_cpu_probe_read_gbs(threads, (size_t)512 << 20);
    double peak = duet_cpu_probe_peak_gflops(threads);
    double peak_i8 = duet_cpu_probe_peak_int8_gops(threads);

    double kv_tok = (double)duet_model_kv_bytes_per_token(m);
    double v[MAX_REPS];
    run_single(fwd, cache, 0, 8, logits, tokens);  /* warm-up: page in the weights */
    for (int r = 0; r < c.reps; r++)
        v[r] = run_single(fwd, cache, c.n_prompt, 0, logits, tokens);
    stat_t pp = stats(v, c.reps);
    for (int r = 0; r < c.reps; r++)
        v[r] = run_single(fwd, cache, 0, c.n_gen, logits, tokens);
    stat_t tg = stats(v, c.reps);

    /* Prefill: FLOPs per token averaged over the prompt's positions. Decode: weights plus the
     * K/V of the average context, per step. */
    double pp_flops = token_flops(m, (c.n_prompt - 1) / 2.0);
    const char *pp_limit_name;
    double pp_limit = prefill_limit(be, m, peak, peak_i8, &pp_limit_name);
    double pp_share = pp_limit > 0 ? pp.median * pp_flops / 1e9 / pp_limit : 0;
    double tg_bytes = wbytes + kv_tok * (c.n_gen + 1) / 2.0;
    double tg_share = bw > 0 ? tg.median * tg_bytes / 1e9 / bw : 0;

    stat_t bt[MAX_BATCHES];
    double bt_share[MAX_BATCHES];
    if (n_batches > 0) {
        /* Every sequence gets its prompt once (not timed); each count decodes its first n. */
        for (int s = 0; s < max_seq; s++) {
            int32_t n_new = c.batch_prompt;
            duet_kv_seq_t *sp = &seqs[s];
            if (duet_kv_seq_reserve(cache, sp, batch_ctx) != DUET_OK) {
                fprintf(stderr, "duet bench: KV cache too small\n");
                goto done;
            }
            duet_batch_t b = {.n_seq = 1, .seqs = &sp, .n_new = &n_new, .tokens = tokens + (size_t)s * c.batch_prompt};
            if (duet_forward_run(fwd, &b, logits) != DUET_OK) {
                fprintf(stderr, "duet bench: batched prompt failed\n");
                goto done;
            }
        }
        for (int i = 0; i < n_batches; i++) {
            for (int r = 0; r < c.reps; r++)
                v[r] = run_batched(fwd, seqs, batches[i], c.batch_prompt, c.batch_gen, logits, tokens);
            bt[i] = stats(v, c.reps);
            double step_bytes = wbytes + batches[i] * kv_tok * (c.batch_prompt + c.batch_gen / 2.0);
            bt_share[i] = bw > 0 ? bt[i].median / batches[i] * step_bytes / 1e9 / bw : 0;
        }
    }

    char cpu[256], flags[512];
    cpuinfo_field("model name", cpu, sizeof cpu);
    simd_flags(flags, sizeof flags);
    if (c.json) {
        printf("{\"model\": \"%s\", \"arch\": \"%s\", \"weight_mib\": %.1f, \"cpu\": \"%s\", \"cpu_flags\": \"%s\", "
               "\"threads\": %d, \"backend\": \"%s\", \"reps\": %d, \"bandwidth_gbs\": %.2f, \"bandwidth_dram_gbs\": %.2f, "
               "\"peak_gflops\": %.1f, "
               "\"peak_int8_gops\": %.1f, \"pp512_tps\": %.2f, \"pp512_min\": %.2f, \"pp512_max\": %.2f, "
               "\"pp512_limit\": \"%s\", \"pp512_limit_gflops\": %.1f, \"pp512_flop_share\": %.4f, \"tg128_tps\": %.2f, \"tg128_min\": %.2f, \"tg128_max\": %.2f, "
               "\"tg128_bytes_per_token\": %.0f, \"tg128_bandwidth_share\": %.4f, \"n_prompt\": %d, \"n_gen\": %d, "
               "\"batch_prompt\": %d, \"batch_gen\": %d, \"batched_tps\": {",
               m->name, m->arch_name, m->weight_bytes / 1048576.0, cpu, flags, threads, be->name, c.reps,
               bw, bw_dram, peak, peak_i8, pp.median, pp.min, pp.max, pp_limit_name, pp_limit, pp_share, tg.median, tg.min, tg.max, tg_bytes,
               tg_share, c.n_prompt, c.n_gen, c.batch_prompt, c.batch_gen);
        for (int i = 0; i < n_batches; i++)
            printf("%s\"%d\": %.2f", i ? ", " : "", batches[i], bt[i].median);
        printf("}, \"batched_bandwidth_share\": {");
        for (int i = 0; i < n_batches; i++)
            printf("%s\"%d\": %.4f", i ? ", " : "", batches[i], bt_share[i]);
        printf("}}\n");
    } else {
        printf("model: %s (%s, %.1f MiB of weights)\n", m->name, m->arch_name, m->weight_bytes / 1048576.0);
        printf("cpu: %s, %d threads, backend %s\nflags: %s\n", cpu, threads, be->name, flags);
        printf("measured now: read bandwidth %.1f GB/s over the weights' %.0f MB (%.1f GB/s over 512 MiB),\n"
               "f32 FMA peak %.0f GFLOP/s, int8 dot peak %.0f GOP/s\n\n",
               bw, wbytes / 1e6, bw_dram, peak, peak_i8);
        printf("| %-22s | %7s | %8s | %17s | %-36s |\n", "test", "threads", "tok/s", "min - max", "share of limit");
        printf("| %-22s | %7s | %8s | %17s | %-36s |\n", "----------------------", "-------", "--------",
               "-----------------", "------------------------------------");
        char name[64], share[96];
        snprintf(name, sizeof name, "pp%d", c.n_prompt);
        snprintf(share, sizeof share, "%.0f%% of %s (%.0f GFLOP/s)", 100 * pp_share, pp_limit_name,
                 pp.median * pp_flops / 1e9);
        printf("| %-22s | %7d | %8.1f | %7.1f - %7.1f | %-36s |\n", name, threads, pp.median, pp.min, pp.max, share);
        snprintf(name, sizeof name, "tg%d", c.n_gen);
        snprintf(share, sizeof share, "%.0f%% of bandwidth (%.1f MB/token)", 100 * tg_share, tg_bytes / 1e6);
        printf("| %-22s | %7d | %8.1f | %7.1f - %7.1f | %-36s |\n", name, threads, tg.median, tg.min, tg.max, share);
        for (int i = 0; i < n_batches; i++) {
            snprintf(name, sizeof name, "batched %d x tg (pp%d)", batches[i], c.batch_prompt);
            snprintf(share, sizeof share, "%.0f%% of bandwidth", 100 * bt_share[i]);
            printf("| %-22s | %7d | %8.1f | %7.1f - %7.1f | %-36s |\n", name, threads, bt[i].median, bt[i].min,
                   bt[i].max, share);
        }
        printf("\nmedians of %d runs; batched: aggregate tok/s of %d decode steps after a %d-token prompt each\n",
               c.reps, c.batch_gen, c.batch_prompt);
    }
    rc = 0;
done:
    if (seqs)
        for (int s = 0; s < max_seq; s++)
            duet_kv_seq_cleanup(cache, &seqs[s]);
    free(seqs);
    duet_forward_destroy(fwd);
    duet_kv_cache_destroy(cache);
    free(logits);
    free(tokens);
    duet_tool_close_model(be, m);
    return rc;
}
