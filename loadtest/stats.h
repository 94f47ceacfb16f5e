/* loadtest/stats.h — per-request results and the numbers a load test reports: TTFT, TPOT and
 * end-to-end latency (DistServe's definitions, measured at the client), percentiles, throughput
 * and SLO attainment. */
#ifndef DUET_LOAD_STATS_H
#define DUET_LOAD_STATS_H

#include <stddef.h>
#include <stdint.h>

/* One request, as the client saw it. Times are nanoseconds since the run's start; -1: never. */
typedef struct {
    size_t      index;            /* order of arrival within its run */
    int         probe;            /* which run of a sweep (0 otherwise) */
    double      rate;             /* offered rate of that run (0: closed loop or trace) */
    char        request_id[64];   /* as the gateway named it ("" when it never answered) */
    int         prompt_tokens;    /* sent */
    int         output_tokens;    /* asked for (max_tokens with ignore_eos) */
    int64_t     scheduled_ns;     /* when the arrival process wanted it sent */
    int64_t     send_ns;          /* when the stream was opened; -1 when dropped by the client */
    int64_t     first_ns;         /* first message carrying tokens */
    int64_t     last_ns;          /* last message carrying tokens */
    int         tokens;           /* output tokens received */
    int         finish_reason;    /* duet.v1.FinishReason of the last message */
    const char *status;           /* "ok", "dropped" (client at --max-inflight), or a gRPC
                                     status name / "finish_error" / "no_tokens"; static text */
    char        error[128];       /* the server's message for a failure */
    int         retries;          /* times it was sent again after a retriable failure (--retries) */
} duet_load_result_t;

/* Latency metrics in milliseconds; each returns 1 and sets *ms when defined for r, else 0.
 * Only successful requests have them. TPOT needs at least two tokens: with one token there is
 * no inter-token interval, so such requests are left out of TPOT statistics. */
int duet_load_ttft_ms(const duet_load_result_t *r, double *ms);
int duet_load_tpot_ms(const duet_load_result_t *r, double *ms);
int duet_load_e2e_ms(const duet_load_result_t *r, double *ms);

/* SLO limits in milliseconds; 0 means no limit on that metric. */
typedef struct {
    double ttft_ms, tpot_ms;
} duet_load_slo_t;

/* 1 when r succeeded and met both limits (a request without TPOT is judged on TTFT alone). */
int duet_load_meets_slo(const duet_load_result_t *r, const duet_load_slo_t *slo);

/* The value at percentile p (0..100) of sorted values, interpolating linearly between closest
 * ranks (numpy's default). NaN for n == 0. */
double duet_load_percentile(const double *sorted, size_t n, double p);

typedef struct {
    size_t n;
    double mean, min, max, p50, p90, p99;  /* NaN when n == 0 */
} duet_load_dist_t;

/* Sorts v in place and summarizes it. */
void duet_load_dist_of(double *v, size_t n, duet_load_dist_t *dist);

#define DUET_LOAD_MAX_STATUSES 16

typedef struct {
    size_t requests;        /* offered: sent + dropped by the client */
    size_t sent, ok, failed, dropped;
    size_t retried, retries;   /* requests sent more than once, and the extra sends */
    struct {
        const char *status;
        size_t count;
        const char *error;  /* the first message seen with this status */
    } by_status[DUET_LOAD_MAX_STATUSES];  /* failures only, in order of first appearance */
    int n_status;
    size_t short_outputs;   /* ok, but fewer tokens than asked for */
    double duration_s;      /* start of the run to the last completion */
    double rps;             /* ok requests per second */
    double output_tps;      /* output tokens received per second (all requests) */
    size_t output_tokens;
    double max_lag_ms;      /* worst delay of a send behind its scheduled time */
    duet_load_dist_t ttft, tpot, e2e;  /* ms, over ok requests */
    duet_load_slo_t slo;
    size_t slo_met;
    double attainment;      /* slo_met / requests: failures and drops count as misses */
} duet_load_summary_t;

/* Summarizes n results of one run that lasted duration_s. NOMEM is the only error. */
int duet_load_summarize(const duet_load_result_t *results, size_t n, double duration_s,
                        const duet_load_slo_t *slo, duet_load_summary_t *summary);

#endif
