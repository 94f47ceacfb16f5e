/* loadtest/load.c — duet-load: load for a duet gateway (Poisson arrivals, a fixed concurrency or
 * a replayed trace), with TTFT/TPOT/E2E percentiles, SLO attainment and a goodput sweep.
 * This file holds the options and the flow; the work is in workload/trace/run/stats/report. */
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "conf.h"
#include "report.h"
#include "run.h"
#include "stats.h"
#include "sweep.h"
#include "trace.h"
#include "workload.h"

typedef struct {
    const char *gateway;
    const char *api_key;
    float rate;
    int concurrency;
    float duration;
    int requests;
    const char *trace;
    int trace_offset;
    float time_scale;
    float length_scale;
    int ctx;
    int prompt_tokens;
    int prompt_tokens_max;
    int output_tokens;
    long long seed;
    int vocab;
    int max_inflight;
    float timeout;
    float slo_ttft;
    float slo_tpot;
    const char *out;
    int json;
    int sweep;
    float sweep_target;
    int sweep_probes;
    float sweep_precision;
    const char *plot;
    int retries;
    int quiet;
} load_conf_t;

#define OPT(flag, env, type, field, def, help) {flag, env, type, offsetof(load_conf_t, field), def, help}
static const duet_conf_opt_t load_opts[] = {
    OPT("gateway", "DUET_GATEWAY", DUET_CONF_STR, gateway, "127.0.0.1:50051", "HOST:PORT of the duet gateway"),
    OPT("api-key", "DUET_API_KEY", DUET_CONF_STR, api_key, NULL, "API key, sent as 'authorization: Bearer KEY'"),
    OPT("rate", NULL, DUET_CONF_FLOAT, rate, "0", "open loop: Poisson arrivals at this many req/s (with --trace: rescale the trace's time to this mean rate; with --sweep: the first probe, default 1)"),
    OPT("concurrency", NULL, DUET_CONF_INT, concurrency, "0", "closed loop instead: keep this many requests in flight"),
    OPT("duration", NULL, DUET_CONF_FLOAT, duration, "0", "seconds to send for (each probe of a sweep); 0: no limit"),
    OPT("requests", NULL, DUET_CONF_INT, requests, "0", "requests to send (each probe of a sweep; with --trace: the first N rows); 0: no limit"),
    OPT("trace", NULL, DUET_CONF_STR, trace, NULL, "replay a CSV trace (TIMESTAMP,ContextTokens,GeneratedTokens)"),
    OPT("trace-offset", NULL, DUET_CONF_INT, trace_offset, "0", "skip this many trace rows"),
    OPT("time-scale", NULL, DUET_CONF_FLOAT, time_scale, "1", "multiply the trace's inter-arrival gaps (2: half the rate)"),
    OPT("length-scale", NULL, DUET_CONF_FLOAT, length_scale, "1", "multiply the trace's prompt and output lengths"),
    OPT("ctx", NULL, DUET_CONF_INT, ctx, "2048", "prompt + output must fit this (and the model's context); longer ones shrink in proportion"),
    OPT("prompt-tokens", NULL, DUET_CONF_INT, prompt_tokens, "128", "synthetic prompt length in tokens"),
    OPT("prompt-tokens-max", NULL, DUET_CONF_INT, prompt_tokens_max, "0", "when above --prompt-tokens: prompt lengths uniform in between"),
    OPT("output-tokens", NULL, DUET_CONF_INT, output_tokens, "32", "synthetic output length (forced: ignore_eos, max_tokens)"),
    OPT("seed", NULL, DUET_CONF_I64, seed, "1", "seed of arrivals, lengths and prompt token ids"),
    OPT("vocab", NULL, DUET_CONF_INT, vocab, "0", "vocabulary size for prompt ids; 0: ask the gateway's ModelInfo (32000 if it cannot answer)"),
    OPT("max-inflight", NULL, DUET_CONF_INT, max_inflight, "256", "open loop: streams in flight at most; later arrivals are dropped by the client (reported as dropped, SLO misses)"),
    OPT("timeout", NULL, DUET_CONF_FLOAT, timeout, "300", "deadline of each request in seconds; 0: none"),
    OPT("slo-ttft", NULL, DUET_CONF_FLOAT, slo_ttft, "0", "TTFT limit in ms for SLO attainment; 0: none"),
    OPT("slo-tpot", NULL, DUET_CONF_FLOAT, slo_tpot, "0", "TPOT limit in ms for SLO attainment; 0: none"),
    OPT("out", NULL, DUET_CONF_STR, out, NULL, "write per-request results to FILE.csv or FILE.json"),
    OPT("json", NULL, DUET_CONF_BOOL, json, "false", "print the summary (or the sweep) as one JSON object"),
    OPT("sweep", NULL, DUET_CONF_BOOL, sweep, "false", "search for goodput: the highest rate with attainment >= --sweep-target"),
    OPT("sweep-target", NULL, DUET_CONF_FLOAT, sweep_target, "0.9", "attainment a rate needs to count as good"),
    OPT("sweep-probes", NULL, DUET_CONF_INT, sweep_probes, "10", "probes at most (doubling, then bisection)"),
    OPT("sweep-precision", NULL, DUET_CONF_FLOAT, sweep_precision, "0.1", "stop bisecting when bad and good rates are this close (relative)"),
    OPT("plot", NULL, DUET_CONF_STR, plot, NULL, "draw attainment vs rate (sweep) and TTFT/TPOT CDFs into FILE.png with gnuplot"),
    OPT("retries", NULL, DUET_CONF_INT, retries, "0", "send a request again, up to N times, after a retriable failure (UNAVAILABLE, RESOURCE_EXHAUSTED, ABORTED, finish error); back-off 200 ms doubling to 5 s; its TTFT and E2E count from the first send"),
    OPT("quiet", NULL, DUET_CONF_BOOL, quiet, "false", "no progress line on stderr"),
};
#undef OPT
#define N_OPTS ((int)(sizeof load_opts / sizeof load_opts[0]))

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static void usage(FILE *out)
{
    fputs("usage: duet-load [options]\n"
          "Load for a duet gateway: open-loop Poisson arrivals (--rate), a closed loop (--concurrency)\n"
          "or a replayed trace (--trace); prompts of exact token counts, outputs forced to length.\n"
          "Reports TTFT, TPOT, E2E (DistServe's definitions, at the client), throughput and the share of\n"
          "all offered requests that met --slo-ttft and --slo-tpot (failures and drops count as misses).\n\n",
          out);
    duet_conf_usage(out, load_opts, N_OPTS);
    fputs("\nExit status: 0 done; 1 bad options or setup; 2 no request succeeded; 3 --plot could not\n"
          "be drawn (gnuplot missing or failing; the results are still printed and written);\n"
          "130 interrupted (Ctrl-C: stops sending, cancels streams in flight, reports what it has).\n",
          out);
}

/* What every run of this invocation shares. */
typedef struct {
    const load_conf_t *c;
    duet_load_client_t client;
    duet_load_tokens_t tokens;
    duet_load_trace_t trace;
    int ctx;
    duet_load_slo_t slo;
    duet_load_run_t runs[DUET_LOAD_SWEEP_MAX_PROBES];
    duet_load_summary_t summaries[DUET_LOAD_SWEEP_MAX_PROBES];
    int n_runs;
    size_t clipped;
} load_t;

/* One run at `rate` (0: as configured); appends it to L->runs. */
static duet_status_t run_once(load_t *L, double rate)
{
    const load_conf_t *c = L->c;
    if (L->n_runs == DUET_LOAD_SWEEP_MAX_PROBES)
        return DUET_ERR_EXHAUSTED;
    duet_load_workload_t wl;
    if (c->trace) {
        double ts = c->time_scale;
        double natural = duet_load_trace_rate(&L->trace);
        if (rate > 0 && natural > 0)
            ts = natural / rate;
        /* Recorded as the trace's mean rate after scaling. */
        rate = natural / ts;
        duet_load_workload_trace(&wl, &L->trace, ts, c->length_scale, L->ctx);
    } else {
        duet_load_workload_synthetic(&wl, c->concurrency > 0 ? 0 : rate, c->prompt_tokens,
                                     c->prompt_tokens_max, c->output_tokens, L->ctx, (uint64_t)c->seed);
    }
    duet_load_run_conf_t rc = {
        .client = &L->client, .workload = &wl, .tokens = &L->tokens, .seed = (uint64_t)c->seed,
        .concurrency = c->concurrency, .max_inflight = c->max_inflight, .duration_s = c->duration,
        .requests = c->requests, .rate = c->concurrency > 0 ? 0 : rate, .probe = L->n_runs,
        .progress = !c->quiet, .stop = &stop_flag, .retries = c->retries,
    };
    duet_load_run_t *run = &L->runs[L->n_runs];
    duet_status_t st = duet_load_run(&rc, run);
    if (st != DUET_OK && !run->results)
        return st;
    L->n_runs++;
    L->clipped = wl.clipped > L->clipped ? wl.clipped : L->clipped;
    if (duet_load_summarize(run->results, run->n, run->duration_s, &L->slo,
                            &L->summaries[L->n_runs - 1]) != 0)
        return DUET_ERR_NOMEM;
    return st;
}

static duet_status_t probe(double rate, void *arg, double *attainment)
{
    load_t *L = arg;
    if (!L->c->quiet)
        fprintf(stderr, "duet-load: probe %d at %.3f req/s\n", L->n_runs + 1, rate);
    duet_status_t st = run_once(L, rate);
    if (st != DUET_OK)
        return st;
    const duet_load_summary_t *s = &L->summaries[L->n_runs - 1];
    *attainment = s->attainment;
    fprintf(stderr, "duet-load: probe %d: %.3f req/s -> %.1f %% attainment (%zu ok of %zu)\n",
            L->n_runs, rate, 100 * s->attainment, s->ok, s->requests);
    return stop_flag ? DUET_ERR_CANCELLED : DUET_OK;
}

/* Checks option combinations; one line into err when they make no sense. */
static int check_conf(const load_conf_t *c, char *err, size_t n)
{
    if (c->rate < 0 || c->concurrency < 0 || c->duration < 0 || c->requests < 0 || c->trace_offset < 0 ||
        c->retries < 0)
        snprintf(err, n, "--rate, --concurrency, --duration, --requests and --trace-offset cannot be negative");
    else if (c->rate > 0 && c->concurrency > 0)
        snprintf(err, n, "--rate (open loop) and --concurrency (closed loop) exclude each other");
    else if (c->sweep && c->concurrency > 0)
        snprintf(err, n, "--sweep searches over open-loop rates: drop --concurrency");
    else if (!c->trace && !c->sweep && c->rate <= 0 && c->concurrency <= 0)
        snprintf(err, n, "say how to load: --rate R, --concurrency C, --trace FILE or --sweep");
    else if (!c->trace && c->duration <= 0 && c->requests <= 0)
        snprintf(err, n, "give --duration S or --requests N (a synthetic load never ends by itself)");
    else if (c->prompt_tokens < 1 || c->output_tokens < 1)
        snprintf(err, n, "--prompt-tokens and --output-tokens must be at least 1");
    else if (c->ctx < 2)
        snprintf(err, n, "--ctx must be at least 2");
    else if (c->time_scale <= 0 || c->length_scale <= 0)
        snprintf(err, n, "--time-scale and --length-scale must be positive");
    else if (c->max_inflight < 1)
        snprintf(err, n, "--max-inflight must be at least 1");
    else if (c->sweep && (c->sweep_target <= 0 || c->sweep_target > 1))
        snprintf(err, n, "--sweep-target is a share between 0 and 1");
    else if (c->slo_ttft < 0 || c->slo_tpot < 0 || c->timeout < 0)
        snprintf(err, n, "--slo-ttft, --slo-tpot and --timeout cannot be negative");
    else
        return 0;
    return -1;
}

int main(int argc, char **argv)
{
    load_conf_t c;
    int help = 0;
    char err[512];
    if (duet_conf_parse(load_opts, N_OPTS, &c, argc, argv, 1, &help, err, sizeof err) != DUET_OK) {
        fprintf(stderr, "duet-load: %s\n", err);
        return 1;
    }
    if (help) {
        usage(stdout);
        return 0;
    }
    if (check_conf(&c, err, sizeof err) != 0) {
        fprintf(stderr, "duet-load: %s\n", err);
        return 1;
    }

    load_t *L = calloc(1, sizeof *L);
    if (!L)
        return 1;
    L->c = &c;
    L->slo = (duet_load_slo_t){c.slo_ttft, c.slo_tpot};
    int rc = 1;
    if (c.trace && duet_load_trace_load(c.trace, (size_t)c.trace_offset, (size_t)c.requests,
                                        &L->trace, err, sizeof err) != DUET_OK) {
        fprintf(stderr, "duet-load: %s\n", err);
        goto out_free;
    }
    if (duet_load_client_init(&L->client, c.gateway, c.api_key,
                              (int64_t)(c.timeout * 1000)) != DUET_OK) {
        fprintf(stderr, "duet-load: cannot create the gRPC client\n");
        goto out_trace;
    }

    /* The model decides which token ids are ordinary and how long a request may be. */
    duet_load_model_info_t mi = {0};
    uint32_t vocab = (uint32_t)c.vocab;
    L->ctx = c.ctx;
    duet_status_t st = duet_load_client_model_info(&L->client, &mi, err, sizeof err);
    if (st == DUET_OK) {
        if (!vocab)
            vocab = mi.vocab_size;
        if (mi.context_length > 0 && (int)mi.context_length < L->ctx) {
            fprintf(stderr, "duet-load: the model's context is %u tokens: --ctx %d lowered to it\n",
                    mi.context_length, c.ctx);
            L->ctx = (int)mi.context_length;
        }
    } else {
        fprintf(stderr, "duet-load: ModelInfo from %s failed (%s%s%s)%s\n", c.gateway,
                duet_load_status_name(st), *err ? ": " : "", err,
                vocab ? "" : "; assuming a 32000-token vocabulary");
    }
    if (!vocab)
        vocab = 32000;
    duet_load_tokens_for_vocab(vocab, &L->tokens);
    for (int i = 0; i < mi.n_special && L->tokens.n_exclude < 8; i++)
        if (mi.special[i] >= L->tokens.lo && mi.special[i] < L->tokens.hi)
            L->tokens.exclude[L->tokens.n_exclude++] = mi.special[i];

    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESETHAND};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    duet_load_machine_t machine;
    duet_load_machine_get(&machine);
    duet_load_info_t info = {
        .gateway = c.gateway, .model_id = mi.model_id, .concurrency = c.concurrency,
        .trace = c.trace, .time_scale = c.time_scale, .length_scale = c.length_scale,
        .trace_offset = c.trace_offset, .prompt_tokens = c.prompt_tokens,
        .prompt_tokens_max = c.prompt_tokens_max, .output_tokens = c.output_tokens,
        .ctx = L->ctx, .seed = (unsigned long long)c.seed,
    };
    info.mode = c.concurrency > 0 ? "closed loop" : c.trace ? "trace replay" : "open loop (Poisson)";
    info.rate = c.concurrency > 0 ? 0 : c.rate;
    if (c.trace && c.rate > 0)
        info.time_scale = duet_load_trace_rate(&L->trace) / c.rate;
    else if (c.trace && c.concurrency == 0)
        info.rate = duet_load_trace_rate(&L->trace) / c.time_scale;

    duet_load_sweep_t sw = {0};
    int sweep_ok = 1;
    if (c.sweep) {
        duet_load_sweep_conf_t sc = {
            .start_rate = c.rate > 0 ? c.rate : 1, .target = c.sweep_target,
            .precision = c.sweep_precision, .max_probes = c.sweep_probes,
        };
        sc.min_rate = sc.start_rate / 64;
        st = duet_load_sweep_run(&sc, probe, L, &sw);
        if (st != DUET_OK && st != DUET_ERR_CANCELLED) {
            fprintf(stderr, "duet-load: sweep stopped: %s\n", duet_status_str(st));
            sweep_ok = 0;
        }
        info.rate = 0;
    } else {
        st = run_once(L, c.rate);
        if (st != DUET_OK)
            fprintf(stderr, "duet-load: the run stopped early: %s\n", duet_status_str(st));
    }
    info.clipped = L->clipped;
    info.interrupted = stop_flag;
    if (L->n_runs == 0)
        goto out_client;

    if (c.sweep) {
        if (c.json)
            duet_load_report_sweep_json(stdout, &sw, L->summaries, c.sweep_target, &info, &machine);
        else
            duet_load_report_sweep_text(stdout, &sw, L->summaries, c.sweep_target, &info, &machine);
    } else {
        if (c.json)
            duet_load_report_json(stdout, &L->summaries[0], &info, &machine);
        else
            duet_load_report_text(stdout, &L->summaries[0], &info, &machine);
    }
    if (c.json)
        fputc('\n', stdout);
    fflush(stdout);

    rc = 0;
    size_t ok = 0;
    for (int i = 0; i < L->n_runs; i++)
        ok += L->summaries[i].ok;
    if (ok == 0 || !sweep_ok) {
        if (ok == 0)
            fprintf(stderr, "duet-load: no request succeeded\n");
        rc = 2;
    }
    if (c.out) {
        if (duet_load_write_results(c.out, L->runs, L->n_runs, err, sizeof err) != DUET_OK) {
            fprintf(stderr, "duet-load: %s\n", err);
            rc = 1;
        }
    }
    if (c.plot) {
        if (duet_load_plot(c.plot, L->runs, L->n_runs, c.sweep ? &sw : NULL, c.sweep_target,
                           &L->slo, err, sizeof err) != DUET_OK) {
            fprintf(stderr, "duet-load: %s\n", err);
            if (rc == 0)
                rc = 3;
        }
    }
    if (stop_flag)
        rc = 130;

out_client:
    for (int i = 0; i < L->n_runs; i++)
        free(L->runs[i].results);
    duet_load_client_cleanup(&L->client);
out_trace:
    duet_load_trace_cleanup(&L->trace);
out_free:
    free(L);
    return rc;
}
