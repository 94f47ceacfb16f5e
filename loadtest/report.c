/* loadtest/report.c — duet-load's summary (text or JSON), per-request output and the machine. */
#include "report.h"

#include <errno.h>
#include <math.h>
#include <sched.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

void duet_load_machine_get(duet_load_machine_t *m)
{
    snprintf(m->cpu, sizeof m->cpu, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[1024];
        while (fgets(line, sizeof line, f)) {
            if (strncmp(line, "model name", 10) == 0) {
                char *colon = strchr(line, ':');
                if (colon) {
                    colon += colon[1] == ' ' ? 2 : 1;
                    colon[strcspn(colon, "\n")] = '\0';
                    snprintf(m->cpu, sizeof m->cpu, "%s", colon);
                }
                break;
            }
        }
        fclose(f);
    }
    cpu_set_t set;
    m->nproc = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set)
                                                           : (int)sysconf(_SC_NPROCESSORS_ONLN);
}

void duet_load_json_string(FILE *out, const char *s)
{
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        switch (*p) {
        case '"':  fputs("\\\"", out); break;
        case '\\': fputs("\\\\", out); break;
        case '\n': fputs("\\n", out); break;
        case '\r': fputs("\\r", out); break;
        case '\t': fputs("\\t", out); break;
        default:
            if (*p < 0x20)
                fprintf(out, "\\u%04x", *p);
            else
                fputc(*p, out);  /* UTF-8 passes through */
        }
    }
    fputc('"', out);
}

void duet_load_json_number(FILE *out, double v)
{
    if (isfinite(v))
        fprintf(out, "%.6g", v);
    else
        fputs("null", out);
}

static void text_dist_row(FILE *out, const char *name, const duet_load_dist_t *d)
{
    if (d->n == 0) {
        fprintf(out, "  %-10s %10s\n", name, "-");
        return;
    }
    fprintf(out, "  %-10s %10.1f %10.1f %10.1f %10.1f %10.1f  (%zu)\n", name, d->mean, d->p50,
            d->p90, d->p99, d->max, d->n);
}

static void text_header(FILE *out, const duet_load_info_t *info, const duet_load_machine_t *m)
{
    fprintf(out, "gateway:     %s%s%s\n", info->gateway ? info->gateway : "?",
            info->model_id && *info->model_id ? ", model " : "", info->model_id ? info->model_id : "");
    fprintf(out, "workload:    %s", info->mode ? info->mode : "?");
    if (info->concurrency > 0)
        fprintf(out, ", %d in flight", info->concurrency);
    else if (info->rate > 0)
        fprintf(out, " at %.3g req/s%s", info->rate, info->trace ? " on average" : "");
    if (info->trace)
        fprintf(out, "\n             trace %s (rows from %ld), time x%g, lengths x%g", info->trace,
                info->trace_offset, info->time_scale, info->length_scale);
    else if (info->prompt_tokens_max > info->prompt_tokens)
        fprintf(out, ", prompt %d..%d tokens, output %d", info->prompt_tokens,
                info->prompt_tokens_max, info->output_tokens);
    else
        fprintf(out, ", prompt %d tokens, output %d", info->prompt_tokens, info->output_tokens);
    fprintf(out, "\n             context %d tokens (%zu requests clipped to it), seed %llu, greedy, ignore_eos\n",
            info->ctx, info->clipped, info->seed);
    fprintf(out, "machine:     %s, %d CPUs (client side)\n", m->cpu, m->nproc);
}

void duet_load_report_text(FILE *out, const duet_load_summary_t *s, const duet_load_info_t *info,
                           const duet_load_machine_t *m)
{
    text_header(out, info, m);
    if (info->interrupted)
        fprintf(out, "interrupted: partial results\n");
    fprintf(out, "duration:    %.2f s\n", s->duration_s);
    fprintf(out, "requests:    %zu offered, %zu sent, %zu ok, %zu failed, %zu dropped by the client\n",
            s->requests, s->sent, s->ok, s->failed, s->dropped);
    if (s->retries)
        fprintf(out, "retries:     %zu requests sent again after a retriable failure, %zu extra sends\n",
                s->retried, s->retries);
    for (int i = 0; i < s->n_status; i++)
        fprintf(out, "  %-20s %6zu  %s\n", s->by_status[i].status, s->by_status[i].count,
                s->by_status[i].error ? s->by_status[i].error : "");
    if (s->short_outputs)
        fprintf(out, "  note: %zu ok requests returned fewer tokens than asked for\n", s->short_outputs);
    fprintf(out, "throughput:  %.3f req/s ok, %.1f output tok/s\n", s->rps, s->output_tps);
    fprintf(out, "send lag:    %.1f ms at worst behind schedule\n", s->max_lag_ms);
    fprintf(out, "latency (ms)      mean        p50        p90        p99        max\n");
    text_dist_row(out, "TTFT", &s->ttft);
    text_dist_row(out, "TPOT", &s->tpot);
    text_dist_row(out, "E2E", &s->e2e);
    fprintf(out, "SLO:         %.1f %% attainment (", 100 * s->attainment);
    if (s->slo.ttft_ms > 0)
        fprintf(out, "TTFT <= %g ms", s->slo.ttft_ms);
    else
        fprintf(out, "no TTFT limit");
    if (s->slo.tpot_ms > 0)
        fprintf(out, ", TPOT <= %g ms", s->slo.tpot_ms);
    else
        fprintf(out, ", no TPOT limit");
    fprintf(out, "; %zu of %zu, failures count as misses)\n", s->slo_met, s->requests);
}

static void json_dist(FILE *out, const char *key, const duet_load_dist_t *d)
{
    fprintf(out, "\"%s\":{\"n\":%zu,\"mean\":", key, d->n);
    duet_load_json_number(out, d->mean);
    fputs(",\"p50\":", out);
    duet_load_json_number(out, d->p50);
    fputs(",\"p90\":", out);
    duet_load_json_number(out, d->p90);
    fputs(",\"p99\":", out);
    duet_load_json_number(out, d->p99);
    fputs(",\"min\":", out);
    duet_load_json_number(out, d->min);
    fputs(",\"max\":", out);
    duet_load_json_number(out, d->max);
    fputc('}', out);
}

/* The fields of a summary, without braces, so a sweep can embed them. */
static void json_summary_fields(FILE *out, const duet_load_summary_t *s, double rate)
{
    fprintf(out, "\"rate\":");
    duet_load_json_number(out, rate);
    fprintf(out, ",\"requests\":%zu,\"sent\":%zu,\"ok\":%zu,\"failed\":%zu,\"dropped\":%zu,"
                 "\"retried\":%zu,\"retries\":%zu,",
            s->requests, s->sent, s->ok, s->failed, s->dropped, s->retried, s->retries);
    fputs("\"by_status\":{", out);
    for (int i = 0; i < s->n_status; i++) {
        if (i)
            fputc(',', out);
        duet_load_json_string(out, s->by_status[i].status);
        fprintf(out, ":%zu", s->by_status[i].count);
    }
    fputs("},\"errors\":{", out);
    for (int i = 0; i < s->n_status; i++) {
        if (i)
            fputc(',', out);
        duet_load_json_string(out, s->by_status[i].status);
        fputc(':', out);
        duet_load_json_string(out, s->by_status[i].error);
    }
    fprintf(out, "},\"short_outputs\":%zu,\"duration_s\":", s->short_outputs);
    duet_load_json_number(out, s->duration_s);
    fputs(",\"rps\":", out);
    duet_load_json_number(out, s->rps);
    fputs(",\"output_tps\":", out);
    duet_load_json_number(out, s->output_tps);
    fprintf(out, ",\"output_tokens\":%zu,\"max_send_lag_ms\":", s->output_tokens);
    duet_load_json_number(out, s->max_lag_ms);
    fputc(',', out);
    json_dist(out, "ttft_ms", &s->ttft);
    fputc(',', out);
    json_dist(out, "tpot_ms", &s->tpot);
    fputc(',', out);
    json_dist(out, "e2e_ms", &s->e2e);
    fputs(",\"slo_ttft_ms\":", out);
    duet_load_json_number(out, s->slo.ttft_ms > 0 ? s->slo.ttft_ms : NAN);
    fputs(",\"slo_tpot_ms\":", out);
    duet_load_json_number(out, s->slo.tpot_ms > 0 ? s->slo.tpot_ms : NAN);
    fprintf(out, ",\"slo_met\":%zu,\"slo_attainment\":", s->slo_met);
    duet_load_json_number(out, s->attainment);
}

static void json_info_fields(FILE *out, const duet_load_info_t *info, const duet_load_machine_t *m)
{
    fputs("\"gateway\":", out);
    duet_load_json_string(out, info->gateway);
    fputs(",\"model\":", out);
    duet_load_json_string(out, info->model_id);
    fputs(",\"workload\":{\"mode\":", out);
    duet_load_json_string(out, info->mode);
    fprintf(out, ",\"concurrency\":%d", info->concurrency);
    if (info->trace) {
        fputs(",\"trace\":", out);
        duet_load_json_string(out, info->trace);
        fprintf(out, ",\"trace_offset\":%ld,\"time_scale\":", info->trace_offset);
        duet_load_json_number(out, info->time_scale);
        fputs(",\"length_scale\":", out);
        duet_load_json_number(out, info->length_scale);
    } else {
        fprintf(out, ",\"prompt_tokens\":%d,\"prompt_tokens_max\":%d,\"output_tokens\":%d",
                info->prompt_tokens,
                info->prompt_tokens_max > info->prompt_tokens ? info->prompt_tokens_max : info->prompt_tokens,
                info->output_tokens);
    }
    fprintf(out, ",\"ctx\":%d,\"clipped\":%zu,\"seed\":%llu},\"interrupted\":%s,", info->ctx,
            info->clipped, info->seed, info->interrupted ? "true" : "false");
    fputs("\"machine\":{\"cpu\":", out);
    duet_load_json_string(out, m->cpu);
    fprintf(out, ",\"nproc\":%d}", m->nproc);
}

void duet_load_report_json(FILE *out, const duet_load_summary_t *s, const duet_load_info_t *info,
                           const duet_load_machine_t *m)
{
    fputc('{', out);
    json_summary_fields(out, s, info->rate > 0 ? info->rate : NAN);
    fputc(',', out);
    json_info_fields(out, info, m);
    fputc('}', out);
}

void duet_load_report_sweep_text(FILE *out, const duet_load_sweep_t *sw,
                                 const duet_load_summary_t *probes, double target,
                                 const duet_load_info_t *info, const duet_load_machine_t *m)
{
    text_header(out, info, m);
    fprintf(out, "sweep:       target %.0f %% attainment (TTFT <= %g ms, TPOT <= %g ms; 0: no limit)\n",
            100 * target, probes[0].slo.ttft_ms, probes[0].slo.tpot_ms);
    fprintf(out, "  probe   rate req/s  attainment   ok/offered  TTFT p90 ms  TPOT p90 ms\n");
    for (int i = 0; i < sw->n; i++)
        fprintf(out, "  %5d %12.3f %10.1f %% %6zu/%-6zu %12.1f %12.1f  %s\n", i + 1,
                sw->probes[i].rate, 100 * sw->probes[i].attainment, probes[i].ok,
                probes[i].requests, probes[i].ttft.p90, probes[i].tpot.p90,
                sw->probes[i].attainment >= target ? "good" : "bad");
    if (info->interrupted)
        fprintf(out, "interrupted: the search did not finish\n");
    if (sw->goodput > 0 && sw->bad_rate > 0)
        fprintf(out, "goodput:     %.3f req/s (the lowest rate that missed: %.3f req/s)\n",
                sw->goodput, sw->bad_rate);
    else if (sw->goodput > 0)
        fprintf(out, "goodput:     >= %.3f req/s (every probed rate met the target)\n", sw->goodput);
    else
        fprintf(out, "goodput:     0 (no probed rate reached the target)\n");
}

void duet_load_report_sweep_json(FILE *out, const duet_load_sweep_t *sw,
                                 const duet_load_summary_t *probes, double target,
                                 const duet_load_info_t *info, const duet_load_machine_t *m)
{
    fputs("{\"sweep\":{\"target\":", out);
    duet_load_json_number(out, target);
    fputs(",\"goodput_rps\":", out);
    duet_load_json_number(out, sw->goodput);
    fputs(",\"lowest_bad_rate\":", out);
    duet_load_json_number(out, sw->bad_rate > 0 ? sw->bad_rate : NAN);
    fputs(",\"probes\":[", out);
    for (int i = 0; i < sw->n; i++) {
        if (i)
            fputc(',', out);
        fputc('{', out);
        json_summary_fields(out, &probes[i], sw->probes[i].rate);
        fputc('}', out);
    }
    fputs("]},", out);
    json_info_fields(out, info, m);
    fputc('}', out);
}

static const char *finish_name(int f)
{
    static const char *names[] = {"", "stop", "length", "cancelled", "error"};
    return f >= 0 && f < 5 ? names[f] : "?";
}

/* A CSV field: quoted (with doubled quotes) only when it needs to be. */
static void csv_field(FILE *out, const char *s)
{
    if (!strpbrk(s, ",\"\n\r")) {
        fputs(s, out);
        return;
    }
    fputc('"', out);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', out);
        fputc(*s, out);
    }
    fputc('"', out);
}

static double ms_or_nan(int64_t a, int64_t b)
{
    return a >= 0 && b >= 0 ? (double)(a - b) / 1e6 : NAN;
}

static void csv_number(FILE *out, double v)
{
    if (isfinite(v))
        fprintf(out, "%.3f", v);
}

static void write_csv(FILE *out, const duet_load_run_t *runs, int n_runs)
{
    fputs("probe,rate,index,request_id,status,prompt_tokens,output_tokens,tokens,finish_reason,"
          "scheduled_s,send_s,first_token_s,last_token_s,ttft_ms,tpot_ms,e2e_ms,error\n", out);
    for (int k = 0; k < n_runs; k++)
        for (size_t i = 0; i < runs[k].n; i++) {
            const duet_load_result_t *r = &runs[k].results[i];
            double tpot = NAN, v;
            if (duet_load_tpot_ms(r, &v))
                tpot = v;
            fprintf(out, "%d,%g,%zu,", r->probe, r->rate, r->index);
            csv_field(out, r->request_id);
            fprintf(out, ",%s,%d,%d,%d,%s,", r->status, r->prompt_tokens, r->output_tokens,
                    r->tokens, finish_name(r->finish_reason));
            fprintf(out, "%.6f,", (double)r->scheduled_ns / 1e9);
            int64_t ts[3] = {r->send_ns, r->first_ns, r->last_ns};
            for (int j = 0; j < 3; j++) {
                if (ts[j] >= 0)
                    fprintf(out, "%.6f", (double)ts[j] / 1e9);
                fputc(',', out);
            }
            /* TTFT and E2E are written for failed requests too when they had tokens. */
            csv_number(out, ms_or_nan(r->first_ns, r->send_ns));
            fputc(',', out);
            csv_number(out, tpot);
            fputc(',', out);
            csv_number(out, ms_or_nan(r->last_ns, r->send_ns));
            fputc(',', out);
            csv_field(out, r->error);
            fputc('\n', out);
        }
}

static void json_time(FILE *out, const char *key, int64_t ns)
{
    fprintf(out, ",\"%s\":", key);
    duet_load_json_number(out, ns >= 0 ? (double)ns / 1e9 : NAN);
}

static void write_json(FILE *out, const duet_load_run_t *runs, int n_runs)
{
    fputs("[\n", out);
    int first = 1;
    for (int k = 0; k < n_runs; k++)
        for (size_t i = 0; i < runs[k].n; i++) {
            const duet_load_result_t *r = &runs[k].results[i];
            double v;
            fprintf(out, "%s{\"probe\":%d,\"rate\":", first ? "" : ",\n", r->probe);
            first = 0;
            duet_load_json_number(out, r->rate);
            fprintf(out, ",\"index\":%zu,\"request_id\":", r->index);
            duet_load_json_string(out, r->request_id);
            fputs(",\"status\":", out);
            duet_load_json_string(out, r->status);
            fprintf(out, ",\"prompt_tokens\":%d,\"output_tokens\":%d,\"tokens\":%d,\"finish_reason\":",
                    r->prompt_tokens, r->output_tokens, r->tokens);
            duet_load_json_string(out, finish_name(r->finish_reason));
            json_time(out, "scheduled_s", r->scheduled_ns);
            json_time(out, "send_s", r->send_ns);
            json_time(out, "first_token_s", r->first_ns);
            json_time(out, "last_token_s", r->last_ns);
            fputs(",\"ttft_ms\":", out);
            duet_load_json_number(out, ms_or_nan(r->first_ns, r->send_ns));
            fputs(",\"tpot_ms\":", out);
            duet_load_json_number(out, duet_load_tpot_ms(r, &v) ? v : NAN);
            fputs(",\"e2e_ms\":", out);
            duet_load_json_number(out, ms_or_nan(r->last_ns, r->send_ns));
            fputs(",\"error\":", out);
            duet_load_json_string(out, r->error);
            fputc('}', out);
        }
    fputs("\n]\n", out);
}

static int ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcasecmp(s + n - m, suffix) == 0;
}

duet_status_t duet_load_write_results(const char *path, const duet_load_run_t *runs, int n_runs,
                                      char *err, size_t err_len)
{
    int csv = ends_with(path, ".csv");
    if (!csv && !ends_with(path, ".json")) {
        snprintf(err, err_len, "--out %s: the name must end in .csv or .json", path);
        return DUET_ERR_INVALID;
    }
    FILE *f = fopen(path, "w");
    if (!f) {
        snprintf(err, err_len, "--out %s: %s", path, strerror(errno));
        return DUET_ERR_IO;
    }
    if (csv)
        write_csv(f, runs, n_runs);
    else
        write_json(f, runs, n_runs);
    if (fclose(f) != 0) {
        snprintf(err, err_len, "--out %s: %s", path, strerror(errno));
        return DUET_ERR_IO;
    }
    return DUET_OK;
}
