/* tests/unit/test_metrics.c — the metrics registry: types, labels, lock-free updates from many
 * threads, cumulative histogram buckets in the text format, and /metrics served over real HTTP. */
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "check.h"
#include "metrics.h"

static duet_metrics_t *m;
static duet_metric_t *ok_total, *hist;

static void *hammer(void *arg)
{
    for (int i = 0; i < 10000; i++) {
        duet_metric_add(ok_total, 1);
        duet_metric_observe(hist, (i % 100) / 1000.0);  /* 0 .. 99 ms */
    }
    return arg;
}

/* The value on the sample line "<prefix><value>" (not a HELP or TYPE line), or -1. */
static double value_of(const char *text, const char *prefix)
{
    for (const char *p = strstr(text, prefix); p; p = strstr(p + 1, prefix))
        if (p == text || p[-1] == '\n')
            return strtod(p + strlen(prefix), NULL);
    return -1;
}

static void test_render_after_concurrent_updates(void)
{
    CHECK_EQ_INT(duet_metrics_create(&m), DUET_OK);
    ok_total = duet_metrics_counter(m, "duet_requests_total", "Requests by outcome.", "outcome=\"ok\"");
    duet_metric_t *failed = duet_metrics_counter(m, "duet_requests_total", "Requests by outcome.", "outcome=\"failed\"");
    duet_metric_t *gauge = duet_metrics_gauge(m, "duet_kv_blocks_free", "Free KV blocks.", NULL);
    hist = duet_metrics_histogram(m, "duet_time_to_first_token_seconds", "TTFT.",
                                  duet_metrics_latency_buckets, duet_metrics_n_latency_buckets);
    CHECK(ok_total && failed && gauge && hist);
    CHECK(duet_metrics_gauge(m, "duet_requests_total", "clash", NULL) == NULL);  /* a name keeps its type */
    CHECK(duet_metrics_counter(m, "9bad name", "", NULL) == NULL);
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&t[i], NULL, hammer, NULL);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    duet_metric_add(failed, 2);
    duet_metric_add(failed, -5);  /* counters never go down */
    duet_metric_set(gauge, 123);
    duet_metric_add(NULL, 1);     /* optional metrics may be NULL */
    char *text;
    size_t len;
    CHECK_EQ_INT(duet_metrics_render(m, &text, &len), DUET_OK);
    CHECK_EQ_INT(strlen(text), len);
    CHECK_STR_CONTAINS(text, "# TYPE duet_requests_total counter\n");
    CHECK_STR_CONTAINS(text, "# TYPE duet_kv_blocks_free gauge\n");
    CHECK_STR_CONTAINS(text, "# TYPE duet_time_to_first_token_seconds histogram\n");
    CHECK(value_of(text, "duet_requests_total{outcome=\"ok\"} ") == 40000);
    CHECK(value_of(text, "duet_requests_total{outcome=\"failed\"} ") == 2);
    CHECK(value_of(text, "duet_kv_blocks_free ") == 123);
    CHECK(value_of(text, "duet_time_to_first_token_seconds_count ") == 40000);
    /* 0 .. 99 ms in equal shares: le=0.01 holds 0..10 ms (11 of 100 values), le=0.1 all of them. */
    CHECK(value_of(text, "duet_time_to_first_token_seconds_bucket{le=\"0.01\"} ") == 4400);
    CHECK(value_of(text, "duet_time_to_first_token_seconds_bucket{le=\"0.10000000000000001\"} ") == 40000 ||
          value_of(text, "duet_time_to_first_token_seconds_bucket{le=\"0.1\"} ") == 40000);
    CHECK(value_of(text, "duet_time_to_first_token_seconds_bucket{le=\"+Inf\"} ") == 40000);
    /* One HELP/TYPE per family, even with two label sets. */
    const char *first = strstr(text, "# TYPE duet_requests_total");
    CHECK(first && !strstr(first + 1, "# TYPE duet_requests_total"));
    free(text);
}

/* 0 when a TCP connection to addr:port is accepted. */
static int try_connect(const char *addr, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, addr, &a.sin_addr);
    int rc = connect(fd, (struct sockaddr *)&a, sizeof a);
    close(fd);
    return rc;
}

/* Bound to loopback, /metrics is not reachable through this machine's other addresses. */
static void test_bound_to_loopback_only(void)
{
    duet_metrics_t *lm = NULL;
    int port = 0;
    CHECK_EQ_INT(duet_metrics_create(&lm), DUET_OK);
    CHECK_EQ_INT(duet_metrics_serve_on(lm, "127.0.0.1", 0, &port), DUET_OK);
    CHECK(port > 0);
    CHECK_EQ_INT(try_connect("127.0.0.1", port), 0);
    struct ifaddrs *ifs = NULL, *i;
    int tried = 0;
    if (getifaddrs(&ifs) == 0) {
        for (i = ifs; i; i = i->ifa_next) {
            if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET)
                continue;
            char ip[INET_ADDRSTRLEN];
            inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, ip, sizeof ip);
            if (strncmp(ip, "127.", 4) == 0)
                continue;
            CHECK_MSG(try_connect(ip, port) != 0, "metrics on 127.0.0.1 reachable at %s", ip);
            tried++;
        }
        freeifaddrs(ifs);
    }
    if (!tried)
        fprintf(stderr, "  (no non-loopback IPv4 address here: only the loopback side was checked)\n");
    duet_metrics_destroy(lm);
    CHECK_EQ_INT(duet_metrics_create(&lm), DUET_OK);
    CHECK_EQ_INT(duet_metrics_serve_on(lm, "no-such-host.invalid", 0, &port), DUET_ERR_INVALID);
    duet_metrics_destroy(lm);
}

static void test_served_over_http(void)
{
    int port = 0;
    CHECK_EQ_INT(duet_metrics_serve(m, 0, &port), DUET_OK);
    CHECK(port > 0);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
    CHECK_EQ_INT(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    const char req[] = "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n";
    CHECK(write(fd, req, sizeof req - 1) == (ssize_t)(sizeof req - 1));
    static char resp[65536];
    size_t len = 0;
    ssize_t n;
    while ((n = read(fd, resp + len, sizeof resp - 1 - len)) > 0)
        len += (size_t)n;
    resp[len] = '\0';
    close(fd);
    CHECK_STR_CONTAINS(resp, " 200 OK\r\n");
    CHECK_STR_CONTAINS(resp, "text/plain; version=0.0.4");
    CHECK_STR_CONTAINS(resp, "duet_kv_blocks_free 123");
    duet_metrics_destroy(m);
}

int main(void)
{
    RUN_TEST(test_render_after_concurrent_updates);
    RUN_TEST(test_bound_to_loopback_only);
    RUN_TEST(test_served_over_http);
    return check_report();
}
