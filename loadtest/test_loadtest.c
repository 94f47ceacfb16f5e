/* loadtest/test_loadtest.c — duet-load's logic on known data: percentiles, TPOT edge cases and
 * SLO attainment, trace CSV parsing (the Azure format, malformed lines), length scaling and
 * clipping, Poisson arrivals on a fixed seed, prompt ids, the goodput search, JSON escaping, and
 * whole runs against an in-process fake gateway (counts and statuses, never timings). */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "client.h"
#include "duet/v1/gateway.pb-c.h"
#include "report.h"
#include "rpc.h"
#include "run.h"
#include "stats.h"
#include "sweep.h"
#include "trace.h"
#include "workload.h"

#define NEAR(a, b, tol) (fabs((a) - (b)) <= (tol))

/* A successful result with the given times in ms. */
static duet_load_result_t res(double send, double first, double last, int tokens)
{
    duet_load_result_t r = {0};
    r.status = "ok";
    r.send_ns = (int64_t)(send * 1e6);
    r.first_ns = (int64_t)(first * 1e6);
    r.last_ns = (int64_t)(last * 1e6);
    r.scheduled_ns = r.send_ns;
    r.tokens = tokens;
    r.output_tokens = tokens;
    return r;
}

static duet_load_result_t failed(const char *status)
{
    duet_load_result_t r = {0};
    r.status = status;
    r.send_ns = 0;
    r.first_ns = r.last_ns = -1;
    snprintf(r.error, sizeof r.error, "why: %s", status);
    return r;
}

static size_t status_count(const duet_load_summary_t *s, const char *status)
{
    for (int i = 0; i < s->n_status; i++)
        if (strcmp(s->by_status[i].status, status) == 0)
            return s->by_status[i].count;
    return 0;
}

static void test_percentiles(void)
{
    double v[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    CHECK(NEAR(duet_load_percentile(v, 10, 50), 5.5, 1e-12));
    CHECK(NEAR(duet_load_percentile(v, 10, 90), 9.1, 1e-12));   /* numpy: 9.1 */
    CHECK(NEAR(duet_load_percentile(v, 10, 99), 9.91, 1e-12));  /* numpy: 9.91 */
    CHECK(NEAR(duet_load_percentile(v, 10, 0), 1, 0));
    CHECK(NEAR(duet_load_percentile(v, 10, 100), 10, 0));
    double one[] = {42};
    CHECK(NEAR(duet_load_percentile(one, 1, 99), 42, 0));
    CHECK(isnan(duet_load_percentile(v, 0, 50)));

    double u[] = {9, 1, 5, 3, 7};  /* unsorted: dist_of sorts */
    duet_load_dist_t d;
    duet_load_dist_of(u, 5, &d);
    CHECK_EQ_INT(d.n, 5);
    CHECK(NEAR(d.mean, 5, 1e-12) && NEAR(d.p50, 5, 1e-12) && NEAR(d.min, 1, 0) && NEAR(d.max, 9, 0));
    CHECK(NEAR(d.p90, 8.2, 1e-12));
    duet_load_dist_of(u, 0, &d);
    CHECK(d.n == 0 && isnan(d.p50) && isnan(d.mean));
}

static void test_metric_definitions(void)
{
    double ms;
    /* 5 tokens: first at 100 ms, last at 180 ms: 4 gaps of 20 ms. */
    duet_load_result_t r = res(0, 100, 180, 5);
    CHECK(duet_load_ttft_ms(&r, &ms) && NEAR(ms, 100, 1e-9));
    CHECK(duet_load_tpot_ms(&r, &ms) && NEAR(ms, 20, 1e-9));
    CHECK(duet_load_e2e_ms(&r, &ms) && NEAR(ms, 180, 1e-9));
    /* TTFT is measured from the send, not from the schedule. */
    r = res(50, 120, 120, 2);
    r.scheduled_ns = 0;
    CHECK(duet_load_ttft_ms(&r, &ms) && NEAR(ms, 70, 1e-9));
    CHECK(duet_load_tpot_ms(&r, &ms) && NEAR(ms, 0, 1e-9));  /* 2 tokens in one message */
    /* One token: TTFT and E2E, but no TPOT. */
    r = res(0, 40, 40, 1);
    CHECK(duet_load_ttft_ms(&r, &ms) && NEAR(ms, 40, 1e-9));
    CHECK(!duet_load_tpot_ms(&r, &ms));
    CHECK(duet_load_e2e_ms(&r, &ms) && NEAR(ms, 40, 1e-9));
    /* Failures have no metrics, even with tokens received before the failure. */
    r = res(0, 10, 30, 3);
    r.status = "UNAVAILABLE";
    CHECK(!duet_load_ttft_ms(&r, &ms) && !duet_load_tpot_ms(&r, &ms) && !duet_load_e2e_ms(&r, &ms));
    r = failed("dropped");
    r.send_ns = -1;
    CHECK(!duet_load_ttft_ms(&r, &ms));
}

static void test_slo_and_summary(void)
{
    duet_load_slo_t slo = {.ttft_ms = 100, .tpot_ms = 20};
    duet_load_result_t rs[8] = {
        res(0, 50, 130, 5),      /* TTFT 50, TPOT 20: meets (limits are inclusive) */
        res(0, 100, 100, 1),     /* TTFT 100, no TPOT: judged on TTFT alone: meets */
        res(0, 101, 101, 1),     /* TTFT 101: misses */
        res(0, 10, 50, 2),       /* TPOT 40: misses */
        res(0, 20, 60, 5),       /* TPOT 10: meets */
        failed("UNAVAILABLE"),
        failed("RESOURCE_EXHAUSTED"),
        failed("UNAVAILABLE"),
    };
    rs[4].output_tokens = 8;     /* got 5 of 8: ok but short */
    CHECK(duet_load_meets_slo(&rs[0], &slo));
    CHECK(duet_load_meets_slo(&rs[1], &slo));
    CHECK(!duet_load_meets_slo(&rs[2], &slo));
    CHECK(!duet_load_meets_slo(&rs[3], &slo));
    CHECK(!duet_load_meets_slo(&rs[5], &slo));
    duet_load_slo_t none = {0, 0};
    CHECK(duet_load_meets_slo(&rs[3], &none));
    CHECK(!duet_load_meets_slo(&rs[5], &none));

    duet_load_summary_t s;
    CHECK(duet_load_summarize(rs, 8, 2.0, &slo, &s) == 0);
    CHECK_EQ_INT(s.requests, 8);
    CHECK_EQ_INT(s.ok, 5);
    CHECK_EQ_INT(s.failed, 3);
    CHECK_EQ_INT(s.slo_met, 3);
    CHECK(NEAR(s.attainment, 3.0 / 8, 1e-12));  /* over all requests: failures are misses */
    CHECK_EQ_INT(s.n_status, 2);
    CHECK(strcmp(s.by_status[0].status, "UNAVAILABLE") == 0 && s.by_status[0].count == 2);
    CHECK(strcmp(s.by_status[1].status, "RESOURCE_EXHAUSTED") == 0 && s.by_status[1].count == 1);
    CHECK_STR_CONTAINS(s.by_status[0].error, "UNAVAILABLE");
    CHECK_EQ_INT(s.short_outputs, 1);
    CHECK_EQ_INT(s.ttft.n, 5);
    CHECK_EQ_INT(s.tpot.n, 3);                  /* the two 1-token requests have none */
    CHECK(NEAR(s.ttft.p50, 50, 1e-9));          /* 10, 20, 50, 100, 101 */
    CHECK_EQ_INT(s.output_tokens, 5 + 1 + 1 + 2 + 5);
    CHECK(NEAR(s.rps, 2.5, 1e-12));
    CHECK(NEAR(s.output_tps, 7, 1e-12));

    /* Client drops count as offered but not sent, and as misses. */
    duet_load_result_t d[2] = {res(0, 10, 10, 1), failed("dropped")};
    d[1].send_ns = -1;
    CHECK(duet_load_summarize(d, 2, 1.0, &none, &s) == 0);
    CHECK(s.requests == 2 && s.sent == 1 && s.dropped == 1 && s.failed == 0 && s.ok == 1);
    CHECK(NEAR(s.attainment, 0.5, 1e-12));
    CHECK(duet_load_summarize(NULL, 0, 0, &none, &s) == 0);
    CHECK(s.requests == 0 && s.attainment == 0 && s.ttft.n == 0);
}

static void test_timestamps(void)
{
    double t;
    CHECK(duet_load_parse_timestamp("1970-01-01 00:00:00", &t) == 0 && t == 0);
    CHECK(duet_load_parse_timestamp("2023-11-16 18:15:46.6805900", &t) == 0);
    CHECK(NEAR(t, 1700158546.68059, 1e-5));     /* date -u -d '2023-11-16 18:15:46' +%s */
    CHECK(duet_load_parse_timestamp("2000-03-01T00:00:00Z", &t) == 0 && NEAR(t, 951868800, 0));
    CHECK(duet_load_parse_timestamp("12.5", &t) == 0 && NEAR(t, 12.5, 0));
    CHECK(duet_load_parse_timestamp("2023-11-16 18:15", &t) != 0);
    CHECK(duet_load_parse_timestamp("2023-13-16 18:15:46", &t) != 0);
    CHECK(duet_load_parse_timestamp("2023-11-16 18:15:46.", &t) != 0);
    CHECK(duet_load_parse_timestamp("yesterday", &t) != 0);
    CHECK(duet_load_parse_timestamp("", &t) != 0);
}

static duet_status_t parse_text(const char *text, size_t skip, size_t max, duet_load_trace_t *t,
                                char *err, size_t n)
{
    FILE *f = fmemopen((void *)text, strlen(text), "r");
    if (!f)
        return DUET_ERR_IO;
    duet_status_t st = duet_load_trace_parse(f, "t.csv", skip, max, t, err, n);
    fclose(f);
    return st;
}

static void test_trace_parse(void)
{
    /* The first lines of azure-llm-2023-conv.csv, verbatim. */
    static const char azure[] =
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n"
        "2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:15:51.2395460,879,29\n";
    duet_load_trace_t t = {0};
    char err[256] = "";
    CHECK_MSG(parse_text(azure, 0, 0, &t, err, sizeof err) == DUET_OK, "%s", err);
    CHECK_EQ_INT(t.n, 3);
    if (t.n == 3) {
        CHECK(t.rows[0].t_s == 0 && t.rows[0].context_tokens == 374 && t.rows[0].generated_tokens == 44);
        CHECK(NEAR(t.rows[1].t_s, 4.314579, 1e-6) && t.rows[1].context_tokens == 396);
        CHECK(NEAR(t.rows[2].t_s, 4.558956, 1e-6) && t.rows[2].generated_tokens == 29);
        CHECK(NEAR(duet_load_trace_rate(&t), 2 / 4.558956, 1e-6));
    }
    duet_load_trace_cleanup(&t);

    /* Offset and count: times restart at the first kept row. */
    CHECK(parse_text(azure, 1, 1, &t, err, sizeof err) == DUET_OK);
    CHECK(t.n == 1 && t.rows[0].t_s == 0 && t.rows[0].context_tokens == 396);
    CHECK(duet_load_trace_rate(&t) == 0);
    duet_load_trace_cleanup(&t);

    /* Columns in another order, CRLF, a trailing blank line and an extra column. */
    CHECK(parse_text("GeneratedTokens,extra,TIMESTAMP,ContextTokens\r\n7,x,1.5,10\r\n9,y,3.5,20\r\n\r\n",
                     0, 0, &t, err, sizeof err) == DUET_OK);
    CHECK(t.n == 2 && t.rows[1].t_s == 2 && t.rows[1].context_tokens == 20 && t.rows[1].generated_tokens == 9);
    duet_load_trace_cleanup(&t);

    /* Malformed input: a clear error naming the line, and nothing returned. */
    struct {
        const char *text, *want;
    } bad[] = {
        {"", "empty file"},
        {"time,in,out\n1,2,3\n", "header must name"},
        {"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374\n", "t.csv:2: expected 3"},
        {"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,374,44\n2023-11-16 18:15:47,12a,4\n", "t.csv:3: ContextTokens"},
        {"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,-3,44\n", "t.csv:2: ContextTokens"},
        {"TIMESTAMP,ContextTokens,GeneratedTokens\n16/11/2023 18:15,3,44\n", "t.csv:2: bad TIMESTAMP"},
        {"TIMESTAMP,ContextTokens,GeneratedTokens\n5,1,1\n4,1,1\n", "t.csv:3: TIMESTAMP goes back"},
        {"TIMESTAMP,ContextTokens,GeneratedTokens\n", "no requests"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        duet_load_trace_t tb = {0};
        err[0] = '\0';
        CHECK_MSG(parse_text(bad[i].text, 0, 0, &tb, err, sizeof err) == DUET_ERR_FORMAT, "case %zu", i);
        CHECK_STR_CONTAINS(err, bad[i].want);
        CHECK(tb.rows == NULL && tb.n == 0);
    }
    CHECK(duet_load_trace_load("/nonexistent/trace.csv", 0, 0, &t, err, sizeof err) == DUET_ERR_IO);
    CHECK_STR_CONTAINS(err, "/nonexistent/trace.csv");
}

static void test_length_scaling(void)
{
    int p, o;
    CHECK(duet_load_scale_lengths(374, 44, 1.0, 2048, &p, &o) == 0 && p == 374 && o == 44);
    CHECK(duet_load_scale_lengths(374, 44, 0.1, 2048, &p, &o) == 0 && p == 37 && o == 4);
    CHECK(duet_load_scale_lengths(375, 45, 0.1, 2048, &p, &o) == 0 && p == 38 && o == 5);  /* rounds */
    /* Never below one token each. */
    CHECK(duet_load_scale_lengths(3, 2, 0.1, 2048, &p, &o) == 0 && p == 1 && o == 1);
    CHECK(duet_load_scale_lengths(0, 0, 1.0, 2048, &p, &o) == 0 && p == 1 && o == 1);
    /* Too long: both shrink in proportion to fit exactly. */
    CHECK(duet_load_scale_lengths(3000, 1000, 1.0, 2048, &p, &o) == 1 && p == 1536 && o == 512);
    CHECK(duet_load_scale_lengths(1500, 1000, 2.0, 1000, &p, &o) == 1 && p == 600 && o == 400);
    CHECK(duet_load_scale_lengths(5000, 1, 1.0, 100, &p, &o) == 1 && p == 99 && o == 1);
    CHECK(duet_load_scale_lengths(1, 5000, 1.0, 100, &p, &o) == 1 && p == 1 && o == 99);
    CHECK(duet_load_scale_lengths(2048, 0, 1.0, 2048, &p, &o) == 1 && p + o == 2048 && o >= 1);
    /* Exactly fitting is not clipped. */
    CHECK(duet_load_scale_lengths(2000, 48, 1.0, 2048, &p, &o) == 0 && p == 2000 && o == 48);

    /* Through a trace workload: time and length scales, clipping counted. */
    duet_load_trace_row_t rows[] = {{0, 374, 44}, {2, 3000, 1000}, {5, 10, 10}};
    duet_load_trace_t t = {rows, 3};
    duet_load_workload_t wl;
    duet_load_spec_t s;
    duet_load_workload_trace(&wl, &t, 0.5, 1.0, 2048);
    CHECK(duet_load_workload_next(&wl, &s) && s.arrival_s == 0 && s.prompt_tokens == 374);
    CHECK(duet_load_workload_next(&wl, &s) && s.arrival_s == 1 && s.prompt_tokens == 1536 && s.output_tokens == 512);
    CHECK(duet_load_workload_next(&wl, &s) && s.arrival_s == 2.5);
    CHECK(!duet_load_workload_next(&wl, &s));
    CHECK_EQ_INT(wl.clipped, 1);
}

static void test_poisson(void)
{
    /* Mean rate over 20000 arrivals at 4 req/s: the relative error of n/T is about 1/sqrt(n)
     * (0.7 %); 5 % can only fail if the generator is wrong (and the seed is fixed anyway). */
    duet_load_workload_t wl;
    duet_load_spec_t s;
    duet_load_workload_synthetic(&wl, 4.0, 128, 128, 32, 2048, 42);
    double prev = 0, sum_sq = 0, sum = 0;
    int monotonic = 1, produced = 1, n = 20000;
    for (int i = 0; i < n; i++) {
        produced &= duet_load_workload_next(&wl, &s);
        double gap = s.arrival_s - prev;
        monotonic &= gap > 0;
        sum += gap;
        sum_sq += gap * gap;
        prev = s.arrival_s;
    }
    CHECK(produced && monotonic);
    double rate = n / prev, mean = sum / n, var = sum_sq / n - mean * mean;
    CHECK_MSG(NEAR(rate, 4.0, 0.2), "rate %f", rate);
    /* Exponential gaps: the standard deviation equals the mean (coefficient of variation 1). */
    CHECK_MSG(NEAR(sqrt(var) / mean, 1.0, 0.05), "cv %f", sqrt(var) / mean);
    CHECK(s.prompt_tokens == 128 && s.output_tokens == 32);

    /* The same seed, the same arrivals. */
    duet_load_workload_t a, b;
    duet_load_spec_t sa, sb;
    duet_load_workload_synthetic(&a, 2.0, 10, 20, 5, 2048, 7);
    duet_load_workload_synthetic(&b, 2.0, 10, 20, 5, 2048, 7);
    int same = 1, in_range = 1;
    for (int i = 0; i < 100; i++) {
        duet_load_workload_next(&a, &sa);
        duet_load_workload_next(&b, &sb);
        same &= sa.arrival_s == sb.arrival_s && sa.prompt_tokens == sb.prompt_tokens;
        in_range &= sa.prompt_tokens >= 10 && sa.prompt_tokens <= 20 && sa.output_tokens == 5;
    }
    CHECK(same && in_range);
    /* Closed loop: no arrival times. */
    duet_load_workload_synthetic(&a, 0, 10, 10, 5, 2048, 7);
    CHECK(duet_load_workload_next(&a, &sa) && sa.arrival_s == 0);
}

static void test_prompt_ids(void)
{
    duet_load_tokens_t tok;
    duet_load_tokens_for_vocab(32000, &tok);
    CHECK(tok.lo == 1000 && tok.hi == 31000);
    duet_load_tokens_for_vocab(256, &tok);
    CHECK(tok.lo == 64 && tok.hi == 192);
    duet_load_tokens_for_vocab(32000, &tok);
    tok.exclude[tok.n_exclude++] = 1500;
    uint32_t a[4096], b[4096], c[4096];
    duet_load_prompt_ids(&tok, 1, 0, a, 4096);
    duet_load_prompt_ids(&tok, 1, 0, b, 4096);
    duet_load_prompt_ids(&tok, 1, 1, c, 4096);
    int in_range = 1, excluded = 1;
    for (int i = 0; i < 4096; i++) {
        in_range &= a[i] >= 1000 && a[i] < 31000;
        excluded &= a[i] != 1500 && c[i] != 1500;
    }
    CHECK(in_range && excluded);
    CHECK(memcmp(a, b, sizeof a) == 0);   /* deterministic */
    CHECK(memcmp(a, c, 64) != 0);         /* another request, another prompt */
}

/* Attainment falls as the rate passes 5.3 req/s. */
static duet_status_t fake_probe(double rate, void *arg, double *attainment)
{
    int *calls = arg;
    (*calls)++;
    *attainment = rate <= 5.3 ? 0.95 : 0.5;
    return DUET_OK;
}

static void test_sweep(void)
{
    duet_load_sweep_conf_t sc = {.start_rate = 1, .target = 0.9, .precision = 0.05, .min_rate = 1.0 / 64,
                                 .max_probes = 20};
    duet_load_sweep_t sw;
    int calls = 0;
    CHECK(duet_load_sweep_run(&sc, fake_probe, &calls, &sw) == DUET_OK);
    /* 1, 2, 4, 8 bracket it; bisection narrows [4, 8] to within 5 %. */
    CHECK(sw.n == calls && sw.n <= 20);
    CHECK(sw.probes[0].rate == 1 && sw.probes[3].rate == 8);
    CHECK_MSG(sw.goodput <= 5.3 && sw.goodput >= 5.3 / 1.05, "goodput %f", sw.goodput);
    CHECK(sw.bad_rate > 5.3 && (sw.bad_rate - sw.goodput) <= 0.05 * sw.goodput);

    /* Starting too high: halving until good. */
    sc.start_rate = 40;
    calls = 0;
    CHECK(duet_load_sweep_run(&sc, fake_probe, &calls, &sw) == DUET_OK);
    CHECK(sw.probes[1].rate == 20 && sw.goodput <= 5.3 && sw.goodput >= 5.3 / 1.05);

    /* Nothing good down to min_rate: goodput 0. */
    sc.start_rate = 100;
    sc.min_rate = 10;
    CHECK(duet_load_sweep_run(&sc, fake_probe, &calls, &sw) == DUET_OK);
    CHECK(sw.goodput == 0 && sw.n == 4);  /* 100, 50, 25, 12.5 */

    /* The probe budget is honoured. */
    sc = (duet_load_sweep_conf_t){.start_rate = 1, .target = 0.9, .precision = 0.0001, .max_probes = 6};
    CHECK(duet_load_sweep_run(&sc, fake_probe, &calls, &sw) == DUET_OK && sw.n == 6);
    sc.start_rate = 0;
    CHECK(duet_load_sweep_run(&sc, fake_probe, &calls, &sw) == DUET_ERR_INVALID);
}

static void test_json_escape(void)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    duet_load_json_string(f, "a\"b\\c\nd\x01 é");
    fputc(' ', f);
    duet_load_json_number(f, NAN);
    fputc(' ', f);
    duet_load_json_number(f, 2.5);
    fclose(f);
    CHECK(strcmp(buf, "\"a\\\"b\\\\c\\nd\\u0001 é\" null 2.5") == 0);
    free(buf);
}

/* ---- a fake gateway: counts, statuses and the request's fields, end to end ------------------ */

static atomic_int bad_requests, held;

static void finish_cancelled(void *stream)
{
    duet_rpc_stream_finish(stream, DUET_ERR_CANCELLED, "client went away");
}

/* Streams max_tokens tokens (two per message, so TPOT counts tokens, not messages); a prompt of
 * exactly 7 tokens is refused with RESOURCE_EXHAUSTED; output 99 holds the stream until cancelled;
 * output 5 fails with UNAVAILABLE but on a request's third send (its id ends ".r2"). */
static void fake_generate(duet_rpc_stream_t *stream, const ProtobufCMessage *request, void *arg)
{
    (void)arg;
    const Duet__V1__GenerateRequest *req = (const void *)request;
    if (!req->stop || !req->stop->ignore_eos || !req->sampling || req->sampling->temperature != 0 ||
        req->n_prompt_token_ids == 0 || (req->prompt && *req->prompt))
        atomic_fetch_add(&bad_requests, 1);
    for (size_t i = 0; i < req->n_prompt_token_ids; i++)
        if (req->prompt_token_ids[i] < 1000 || req->prompt_token_ids[i] >= 3000 ||
            req->prompt_token_ids[i] == 2000)
            atomic_fetch_add(&bad_requests, 1);
    if (req->n_prompt_token_ids == 7) {
        duet_rpc_stream_finish(stream, DUET_ERR_EXHAUSTED, "no room for %zu tokens", req->n_prompt_token_ids);
        return;
    }
    uint32_t n = req->stop ? req->stop->max_tokens : 1;
    const char *rid = req->request_id ? req->request_id : "";
    if (n == 5 && (strlen(rid) < 3 || strcmp(rid + strlen(rid) - 3, ".r2") != 0)) {
        duet_rpc_stream_finish(stream, DUET_ERR_UNAVAILABLE, "no decode instance");
        return;
    }
    if (n == 99) {
        atomic_fetch_add(&held, 1);
        duet_rpc_stream_on_cancel(stream, finish_cancelled, stream);
        return;
    }
    for (uint32_t i = 0; i < n; i += 2) {
        Duet__V1__GenerateResponse r = DUET__V1__GENERATE_RESPONSE__INIT;
        uint32_t toks[2] = {i, i + 1};
        r.request_id = req->request_id;
        r.n_token_ids = n - i >= 2 ? 2 : 1;
        r.token_ids = toks;
        if (i + r.n_token_ids >= n)
            r.finish_reason = DUET__V1__FINISH_REASON__FINISH_REASON_LENGTH;
        duet_rpc_stream_write(stream, &r.base);
    }
    duet_rpc_stream_finish(stream, DUET_OK, NULL);
}

static duet_status_t fake_model_info(duet_rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    (void)request;
    (void)arg;
    Duet__V1__ModelInfoResponse r = DUET__V1__MODEL_INFO_RESPONSE__INIT;
    uint32_t eos[1] = {2000};
    r.model_id = "fake";
    r.vocab_size = 4000;
    r.context_length = 512;
    r.n_eos_token_ids = 1;
    r.eos_token_ids = eos;
    return duet_rpc_call_reply(call, &r.base);
}

/* Sets the stop flag once two streams are held (and the other arrivals have had time to come). */
static void *stop_when_held(void *arg)
{
    volatile sig_atomic_t *stop = arg;
    for (int i = 0; i < 1000 && atomic_load(&held) < 2; i++)
        usleep(10000);
    usleep(200000);
    *stop = 1;
    return NULL;
}

static void test_runs_against_fake_gateway(void)
{
    duet_rpc_method_t methods[] = {
        {"/duet.v1.Gateway/Generate", DUET_RPC_SERVER_STREAM, &duet__v1__generate_request__descriptor,
         NULL, fake_generate, NULL},
        {"/duet.v1.Gateway/ModelInfo", DUET_RPC_UNARY, &duet__v1__model_info_request__descriptor,
         fake_model_info, NULL, NULL},
    };
    duet_rpc_server_conf_t sconf = {.address = "127.0.0.1:0", .methods = methods, .n_methods = 2};
    duet_rpc_server_t *server;
    if (duet_rpc_server_create(&sconf, &server) != DUET_OK) {
        CHECK_MSG(0, "cannot start the fake gateway");
        return;
    }
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", duet_rpc_server_port(server));
    duet_load_client_t client;
    CHECK(duet_load_client_init(&client, addr, "sekret", 10000) == DUET_OK);
    duet_load_model_info_t mi;
    char err[256];
    CHECK(duet_load_client_model_info(&client, &mi, err, sizeof err) == DUET_OK);
    CHECK(mi.vocab_size == 4000 && mi.context_length == 512 && strcmp(mi.model_id, "fake") == 0);
    CHECK(mi.n_special == 2 && mi.special[1] == 2000);
    duet_load_tokens_t tok;
    duet_load_tokens_for_vocab(mi.vocab_size, &tok);
    tok.exclude[tok.n_exclude++] = 2000;

    /* Open loop, prompts of 5..8 tokens: those of 7 fail, the rest return all 9 tokens. */
    volatile sig_atomic_t stop = 0;
    duet_load_workload_t wl;
    duet_load_workload_synthetic(&wl, 500, 5, 8, 9, 512, 3);
    duet_load_run_conf_t rc = {.client = &client, .workload = &wl, .tokens = &tok, .seed = 3,
                               .max_inflight = 64, .requests = 40, .rate = 500, .stop = &stop};
    duet_load_run_t run = {0};
    CHECK(duet_load_run(&rc, &run) == DUET_OK);
    CHECK_EQ_INT(run.n, 40);
    int n7 = 0, ok_full = 1, ids_ok = 1;
    for (size_t i = 0; i < run.n; i++) {
        const duet_load_result_t *r = &run.results[i];
        if (r->prompt_tokens == 7) {
            n7++;
            ok_full &= strcmp(r->status, "RESOURCE_EXHAUSTED") == 0 && strstr(r->error, "no room") != NULL;
        } else {
            ok_full &= strcmp(r->status, "ok") == 0 && r->tokens == 9 && r->first_ns >= r->send_ns &&
                       r->last_ns >= r->first_ns && r->send_ns >= 0;
        }
        ids_ok &= r->index == i && strncmp(r->request_id, "load-", 5) == 0;
    }
    CHECK(ok_full && ids_ok);
    CHECK(n7 > 0 && n7 < 40);
    CHECK_EQ_INT(atomic_load(&bad_requests), 0);
    duet_load_summary_t s;
    duet_load_slo_t none = {0, 0};
    CHECK(duet_load_summarize(run.results, run.n, run.duration_s, &none, &s) == 0);
    CHECK(s.ok == 40 - (size_t)n7 && s.failed == (size_t)n7 && s.output_tokens == 9 * s.ok);
    CHECK(s.tpot.n == s.ok && s.n_status == 1);
    CHECK(NEAR(s.attainment, (40.0 - n7) / 40, 1e-12));

    /* Per-request output, both formats. */
    char path[] = "/tmp/duet-load-test-XXXXXX";
    int fd = mkstemp(path);
    if (fd >= 0)
        close(fd);
    char csv[64], json[64];
    snprintf(csv, sizeof csv, "%s.csv", path);
    snprintf(json, sizeof json, "%s.json", path);
    CHECK(duet_load_write_results(csv, &run, 1, err, sizeof err) == DUET_OK);
    CHECK(duet_load_write_results(json, &run, 1, err, sizeof err) == DUET_OK);
    CHECK(duet_load_write_results(path, &run, 1, err, sizeof err) == DUET_ERR_INVALID);
    FILE *f = fopen(csv, "r");
    int lines = 0;
    char line[1024];
    while (f && fgets(line, sizeof line, f))
        lines++;
    CHECK_EQ_INT(lines, 41);
    if (f)
        fclose(f);
    unlink(csv);
    unlink(json);
    unlink(path);
    free(run.results);

    /* Closed loop: 4 in flight, 12 requests, all ok. */
    duet_load_workload_synthetic(&wl, 0, 16, 16, 4, 512, 3);
    rc = (duet_load_run_conf_t){.client = &client, .workload = &wl, .tokens = &tok, .seed = 3,
                                .concurrency = 4, .requests = 12, .stop = &stop};
    CHECK(duet_load_run(&rc, &run) == DUET_OK);
    CHECK(duet_load_summarize(run.results, run.n, run.duration_s, &none, &s) == 0);
    CHECK(run.n == 12 && s.ok == 12 && s.output_tokens == 48);
    free(run.results);

    /* Retriable failures: sent again up to --retries times; the times count from the first send. */
    for (int retries = 1; retries <= 2; retries++) {
        duet_load_workload_synthetic(&wl, 0, 16, 16, 5, 512, 3);
        rc = (duet_load_run_conf_t){.client = &client, .workload = &wl, .tokens = &tok, .seed = 3,
                                    .concurrency = 2, .requests = 3, .stop = &stop, .retries = retries};
        CHECK(duet_load_run(&rc, &run) == DUET_OK);
        CHECK(duet_load_summarize(run.results, run.n, run.duration_s, &none, &s) == 0);
        int all = 1;
        for (size_t i = 0; i < run.n; i++)
            all &= run.results[i].retries == retries &&
                   strcmp(run.results[i].status, retries == 2 ? "ok" : "UNAVAILABLE") == 0;
        CHECK_MSG(run.n == 3 && all && s.retried == 3 && s.retries == 3 * (size_t)retries &&
                  s.ok == (retries == 2 ? 3u : 0u), "retries %d: ok %zu retried %zu retries %zu", retries,
                  s.ok, s.retried, s.retries);
        if (retries == 2)   /* two back-offs (200 + 400 ms) before the first token */
            CHECK(run.results[0].first_ns - run.results[0].send_ns >= 600000000ll);
        free(run.results);
    }

    /* Held streams: 2 in flight at most, the other arrivals dropped by the client; a stop
     * cancels the held ones, which end CANCELLED. */
    duet_load_workload_synthetic(&wl, 1000, 16, 16, 99, 512, 3);
    rc = (duet_load_run_conf_t){.client = &client, .workload = &wl, .tokens = &tok, .seed = 3,
                                .max_inflight = 2, .requests = 5, .rate = 1000, .stop = &stop};
    atomic_store(&held, 0);
    pthread_t stopper;
    CHECK(pthread_create(&stopper, NULL, stop_when_held, (void *)&stop) == 0);
    CHECK(duet_load_run(&rc, &run) == DUET_OK);
    pthread_join(stopper, NULL);
    CHECK(duet_load_summarize(run.results, run.n, run.duration_s, &none, &s) == 0);
    CHECK_MSG(run.n == 5 && s.dropped == 3 && s.sent == 2 && s.ok == 0 && run.interrupted,
              "n %zu dropped %zu sent %zu", run.n, s.dropped, s.sent);
    CHECK(s.n_status == 2 && status_count(&s, "dropped") == 3 && status_count(&s, "CANCELLED") == 2);
    CHECK(s.attainment == 0);
    free(run.results);
    duet_load_client_cleanup(&client);
    duet_rpc_server_destroy(server);
}

int main(void)
{
    RUN_TEST(test_percentiles);
    RUN_TEST(test_metric_definitions);
    RUN_TEST(test_slo_and_summary);
    RUN_TEST(test_timestamps);
    RUN_TEST(test_trace_parse);
    RUN_TEST(test_length_scaling);
    RUN_TEST(test_poisson);
    RUN_TEST(test_prompt_ids);
    RUN_TEST(test_sweep);
    RUN_TEST(test_json_escape);
    RUN_TEST(test_runs_against_fake_gateway);
    return check_report();
}
