/* loadtest/stats.c — latency metrics, percentiles and SLO attainment of a load test. */
#include "stats.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int ok(const duet_load_result_t *r)
{
    return strcmp(r->status, "ok") == 0 && r->send_ns >= 0 && r->first_ns >= 0 && r->tokens > 0;
}

int duet_load_ttft_ms(const duet_load_result_t *r, double *ms)
{
    if (!ok(r))
        return 0;
    *ms = (double)(r->first_ns - r->send_ns) / 1e6;
    return 1;
}

int duet_load_tpot_ms(const duet_load_result_t *r, double *ms)
{
    if (!ok(r) || r->tokens < 2)
        return 0;
    *ms = (double)(r->last_ns - r->first_ns) / 1e6 / (r->tokens - 1);
    return 1;
}

int duet_load_e2e_ms(const duet_load_result_t *r, double *ms)
{
    if (!ok(r))
        return 0;
    *ms = (double)(r->last_ns - r->send_ns) / 1e6;
    return 1;
}

int duet_load_meets_slo(const duet_load_result_t *r, const duet_load_slo_t *slo)
{
    double ttft, tpot;
    if (!duet_load_ttft_ms(r, &ttft))
        return 0;
    if (slo->ttft_ms > 0 && ttft > slo->ttft_ms)
        return 0;
    if (slo->tpot_ms > 0 && duet_load_tpot_ms(r, &tpot) && tpot > slo->tpot_ms)
        return 0;
    return 1;
}

double duet_load_percentile(const double *sorted, size_t n, double p)
{
    if (n == 0)
        return NAN;
    double pos = p / 100.0 * (double)(n - 1);
    if (pos <= 0)
        return sorted[0];
    if (pos >= (double)(n - 1))
        return sorted[n - 1];
    size_t i = (size_t)pos;
    double f = pos - (double)i;
    return sorted[i] + (sorted[i + 1] - sorted[i]) * f;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

void duet_load_dist_of(double *v, size_t n, duet_load_dist_t *dist)
{
    dist->n = n;
    if (n == 0) {
        dist->mean = dist->min = dist->max = dist->p50 = dist->p90 = dist->p99 = NAN;
        return;
    }
    qsort(v, n, sizeof *v, cmp_double);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += v[i];
    dist->mean = sum / (double)n;
    dist->min = v[0];
    dist->max = v[n - 1];
    dist->p50 = duet_load_percentile(v, n, 50);
    dist->p90 = duet_load_percentile(v, n, 90);
    dist->p99 = duet_load_percentile(v, n, 99);
}

static void count_status(duet_load_summary_t *s, const duet_load_result_t *r)
{
    for (int i = 0; i < s->n_status; i++)
        if (strcmp(s->by_status[i].status, r->status) == 0) {
            s->by_status[i].count++;
            return;
        }
    /* More distinct statuses than slots cannot happen with the fixed set client.c uses; the
     * last slot absorbs them anyway. */
    int i = s->n_status < DUET_LOAD_MAX_STATUSES ? s->n_status++ : DUET_LOAD_MAX_STATUSES - 1;
    if (s->by_status[i].count == 0) {
        s->by_status[i].status = r->status;
        s->by_status[i].error = r->error;
    }
    s->by_status[i].count++;
}

int duet_load_summarize(const duet_load_result_t *results, size_t n, double duration_s,
                        const duet_load_slo_t *slo, duet_load_summary_t *summary)
{
    double *buf = malloc((n ? n : 1) * 3 * sizeof *buf);
    if (!buf)
        return -1;
    double *ttft = buf, *tpot = buf + n, *e2e = buf + 2 * n;
    size_t n_ttft = 0, n_tpot = 0, n_e2e = 0;
    duet_load_summary_t s = {.slo = *slo, .duration_s = duration_s};
    for (size_t i = 0; i < n; i++) {
        const duet_load_result_t *r = &results[i];
        s.requests++;
        s.output_tokens += (size_t)r->tokens;
        if (strcmp(r->status, "dropped") == 0) {
            s.dropped++;
            count_status(&s, r);
            continue;
        }
        s.sent++;
        s.retried += r->retries > 0;
        s.retries += (size_t)r->retries;
        double lag = (double)(r->send_ns - r->scheduled_ns) / 1e6;
        if (lag > s.max_lag_ms)
            s.max_lag_ms = lag;
        if (duet_load_ttft_ms(r, &ttft[n_ttft])) {
            n_ttft++;
            s.ok++;
            if (r->tokens < r->output_tokens)
                s.short_outputs++;
        } else {
            s.failed++;
            count_status(&s, r);
        }
        n_tpot += (size_t)duet_load_tpot_ms(r, &tpot[n_tpot]);
        n_e2e += (size_t)duet_load_e2e_ms(r, &e2e[n_e2e]);
        s.slo_met += (size_t)duet_load_meets_slo(r, slo);
    }
    duet_load_dist_of(ttft, n_ttft, &s.ttft);
    duet_load_dist_of(tpot, n_tpot, &s.tpot);
    duet_load_dist_of(e2e, n_e2e, &s.e2e);
    free(buf);
    s.rps = duration_s > 0 ? (double)s.ok / duration_s : 0;
    s.output_tps = duration_s > 0 ? (double)s.output_tokens / duration_s : 0;
    s.attainment = s.requests ? (double)s.slo_met / (double)s.requests : 0;
    *summary = s;
    return 0;
}
