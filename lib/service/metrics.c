/* lib/service/metrics.c — the metric registry and its text rendering. Values are doubles kept as
 * 64-bit atomics (bit patterns, updated by compare-and-swap), so updates never take a lock and a
 * scrape never blocks a hot path. */
#include "metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>
#include <netdb.h>
#include <sys/socket.h>

#include "log.h"

typedef enum { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM } metric_type_t;

struct duet_metric {
    duet_metric_t *next;
    metric_type_t type;
    char *name;
    char *help;
    char *labels;              /* NULL or 'k="v",...' */
    _Atomic uint64_t value;    /* counter, gauge: a double's bits */
    int n_bounds;              /* histogram */
    double *bounds;
    _Atomic uint64_t *buckets; /* [n_bounds + 1] counts, not cumulative; the last is +Inf */
    _Atomic uint64_t sum;      /* a double's bits */
    _Atomic uint64_t count;
};

struct duet_metrics {
    duet_metric_t *head, *tail;
    struct MHD_Daemon *daemon;
};

const double duet_metrics_latency_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                               0.5, 1, 2.5, 5, 10, 30, 60};
const int duet_metrics_n_latency_buckets = (int)(sizeof duet_metrics_latency_buckets / sizeof(double));

static uint64_t bits_of(double v)
{
    uint64_t b;
    memcpy(&b, &v, sizeof b);
    return b;
}

static double double_of(uint64_t b)
{
    double v;
    memcpy(&v, &b, sizeof v);
    return v;
}

static void atomic_add_double(_Atomic uint64_t *cell, double delta)
{
    uint64_t old = atomic_load_explicit(cell, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(cell, &old, bits_of(double_of(old) + delta),
                                                  memory_order_relaxed, memory_order_relaxed))
        ;
}

duet_status_t duet_metrics_create(duet_metrics_t **metrics_p)
{
    duet_metrics_t *m = calloc(1, sizeof *m);
    if (!m)
        return DUET_ERR_NOMEM;
    *metrics_p = m;
    return DUET_OK;
}

void duet_metrics_destroy(duet_metrics_t *m)
{
    if (!m)
        return;
    if (m->daemon)
        MHD_stop_daemon(m->daemon);
    for (duet_metric_t *x = m->head, *next; x; x = next) {
        next = x->next;
        free(x->name);
        free(x->help);
        free(x->labels);
        free(x->bounds);
        free((void *)x->buckets);
        free(x);
    }
    free(m);
}

static int valid_name(const char *s)
{
    if (!s || !*s || !((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_' || *s == ':'))
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == ':'))
            return 0;
    return 1;
}

static duet_metric_t *add(duet_metrics_t *m, metric_type_t type, const char *name, const char *help,
                          const char *labels)
{
    if (!valid_name(name))
        return NULL;
    for (duet_metric_t *x = m->head; x; x = x->next)
        if (strcmp(x->name, name) == 0 && x->type != type)
            return NULL;
    duet_metric_t *x = calloc(1, sizeof *x);
    if (!x)
        return NULL;
    x->type = type;
    x->name = strdup(name);
    x->help = strdup(help ? help : "");
    x->labels = labels && *labels ? strdup(labels) : NULL;
    if (!x->name || !x->help || (labels && *labels && !x->labels)) {
        free(x->name);
        free(x->help);
        free(x->labels);
        free(x);
        return NULL;
    }
    /* Same-name metrics stay next to each other, so the family is rendered once with its HELP. */
    duet_metric_t *after = NULL;
    for (duet_metric_t *y = m->head; y; y = y->next)
        if (strcmp(y->name, name) == 0)
            after = y;
    if (after) {
        x->next = after->next;
        after->next = x;
        if (m->tail == after)
            m->tail = x;
    } else {
        if (m->tail)
            m->tail->next = x;
        else
            m->head = x;
        m->tail = x;
    }
    return x;
}

duet_metric_t *duet_metrics_counter(duet_metrics_t *m, const char *name, const char *help, const char *labels)
{
    return add(m, METRIC_COUNTER, name, help, labels);
}

duet_metric_t *duet_metrics_gauge(duet_metrics_t *m, const char *name, const char *help, const char *labels)
{
    return add(m, METRIC_GAUGE, name, help, labels);
}

duet_metric_t *duet_metrics_histogram(duet_metrics_t *m, const char *name, const char *help,
                                      const double *bounds, int n_bounds)
{
    if (n_bounds < 1)
        return NULL;
    for (int i = 1; i < n_bounds; i++)
        if (!(bounds[i] > bounds[i - 1]))
            return NULL;
    duet_metric_t *x = add(m, METRIC_HISTOGRAM, name, help, NULL);
    if (!x)
        return NULL;
    x->n_bounds = n_bounds;
    x->bounds = malloc((size_t)n_bounds * sizeof *x->bounds);
    x->buckets = calloc((size_t)n_bounds + 1, sizeof *x->buckets);
    if (!x->bounds || !x->buckets)
        return NULL;  /* freed with the registry */
    memcpy(x->bounds, bounds, (size_t)n_bounds * sizeof *x->bounds);
    return x;
}

void duet_metric_add(duet_metric_t *x, double delta)
{
    if (x && delta >= 0)
        atomic_add_double(&x->value, delta);
}

void duet_metric_set(duet_metric_t *x, double value)
{
    if (x)
        atomic_store_explicit(&x->value, bits_of(value), memory_order_relaxed);
}

void duet_metric_observe(duet_metric_t *x, double v)
{
    if (!x || !x->buckets || isnan(v))
        return;
    int b = 0;
    while (b < x->n_bounds && v > x->bounds[b])
        b++;
    atomic_fetch_add_explicit(&x->buckets[b], 1, memory_order_relaxed);
    atomic_add_double(&x->sum, v);
    atomic_fetch_add_explicit(&x->count, 1, memory_order_relaxed);
}

static const char *const outcome_names[8] = {"ok", "invalid", "unauthenticated", "exhausted",
                                             "unavailable", "cancelled", "deadline", "error"};

static int outcome_index(duet_status_t st)
{
    switch (st) {
    case DUET_OK:                  return 0;
    case DUET_ERR_INVALID:         return 1;
    case DUET_ERR_UNAUTHENTICATED: return 2;
    case DUET_ERR_EXHAUSTED:       return 3;
    case DUET_ERR_UNAVAILABLE:     return 4;
    case DUET_ERR_CANCELLED:       return 5;
    case DUET_ERR_DEADLINE:        return 6;
    default:                       return 7;
    }
}

void duet_metrics_outcomes_init(duet_metrics_outcomes_t *o, duet_metrics_t *m)
{
    for (int i = 0; i < 8; i++) {
        char labels[64];
        snprintf(labels, sizeof labels, "outcome=\"%s\"", outcome_names[i]);
        o->by_outcome[i] = duet_metrics_counter(m, "duet_requests_total", "Requests finished, by outcome.", labels);
    }
}

void duet_metrics_outcome(duet_metrics_outcomes_t *o, duet_status_t status)
{
    duet_metric_add(o->by_outcome[outcome_index(status)], 1);
}

typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} out_t;

static void outf(out_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void outf(out_t *o, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = o->buf ? vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap) : -1;
        va_end(ap);
        if (n >= 0 && (size_t)n < o->cap - o->len) {
            o->len += (size_t)n;
            return;
        }
        size_t cap = o->cap ? o->cap * 2 : 4096;
        char *b = realloc(o->buf, cap);
        if (!b) {
            o->failed = 1;
            return;
        }
        o->buf = b;
        o->cap = cap;
    }
}

static const char *type_name(metric_type_t t)
{
    return t == METRIC_COUNTER ? "counter" : t == METRIC_GAUGE ? "gauge" : "histogram";
}

duet_status_t duet_metrics_render(duet_metrics_t *m, char **text_p, size_t *len_p)
{
    out_t o = {0};
    const char *family = NULL;
    outf(&o, "%s", "");  /* an empty registry still renders as an empty, valid text */
    for (duet_metric_t *x = m->head; x && !o.failed; x = x->next) {
        if (!family || strcmp(family, x->name) != 0) {
            outf(&o, "# HELP %s %s\n# TYPE %s %s\n", x->name, x->help, x->name, type_name(x->type));
            family = x->name;
        }
        if (x->type != METRIC_HISTOGRAM) {
            double v = double_of(atomic_load_explicit(&x->value, memory_order_relaxed));
            if (x->labels)
                outf(&o, "%s{%s} %.17g\n", x->name, x->labels, v);
            else
                outf(&o, "%s %.17g\n", x->name, v);
            continue;
        }
        uint64_t cum = 0;
        for (int b = 0; b <= x->n_bounds; b++) {
            cum += atomic_load_explicit(&x->buckets[b], memory_order_relaxed);
            if (b < x->n_bounds)
                outf(&o, "%s_bucket{le=\"%.17g\"} %llu\n", x->name, x->bounds[b], (unsigned long long)cum);
            else
                outf(&o, "%s_bucket{le=\"+Inf\"} %llu\n", x->name, (unsigned long long)cum);
        }
        /* Count is the +Inf bucket, so the two always agree even while others observe. */
        outf(&o, "%s_sum %.17g\n%s_count %llu\n", x->name,
             double_of(atomic_load_explicit(&x->sum, memory_order_relaxed)), x->name,
             (unsigned long long)cum);
    }
    if (o.failed) {
        free(o.buf);
        return DUET_ERR_NOMEM;
    }
    *text_p = o.buf;
    *len_p = o.len;
    return DUET_OK;
}

static enum MHD_Result answer(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                              const char *version, const char *upload_data, size_t *upload_size, void **con_cls)
{
    duet_metrics_t *m = cls;
    struct MHD_Response *resp;
    unsigned int code;
    char *text = NULL;
    size_t len = 0;
    if (strcmp(method, "GET") != 0) {
        static const char msg[] = "only GET\n";
        resp = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
        code = MHD_HTTP_METHOD_NOT_ALLOWED;
    } else if (strcmp(url, "/metrics") != 0) {
        static const char msg[] = "not found: metrics are at /metrics\n";
        resp = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
        code = MHD_HTTP_NOT_FOUND;
    } else if (duet_metrics_render(m, &text, &len) != DUET_OK) {
        static const char msg[] = "out of memory\n";
        resp = MHD_create_response_from_buffer(sizeof msg - 1, (void *)msg, MHD_RESPMEM_PERSISTENT);
        code = MHD_HTTP_INTERNAL_SERVER_ERROR;
    } else {
        resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
        MHD_add_response_header(resp, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
        code = MHD_HTTP_OK;
    }
    if (!resp)
        return MHD_NO;
    enum MHD_Result r = MHD_queue_response(conn, code, resp);
    MHD_destroy_response(resp);
    return r;
}

duet_status_t duet_metrics_serve(duet_metrics_t *m, int port, int *port_p)
{
    return duet_metrics_serve_on(m, NULL, port, port_p);
}

duet_status_t duet_metrics_serve_on(duet_metrics_t *m, const char *host, int port, int *port_p)
{
    if (m->daemon || port < 0 || port > 65535)
        return DUET_ERR_INVALID;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *ai = NULL;
    char port_s[8];
    snprintf(port_s, sizeof port_s, "%d", port);
    int any = !host || !host[0] || strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0;
    if (!any && getaddrinfo(host, port_s, &hints, &ai) != 0) {
        duet_log_error("metrics: cannot resolve %s to listen on", host);
        return DUET_ERR_INVALID;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    if (ai && ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    if (ai)
        m->daemon = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, answer, m,
                                     MHD_OPTION_CONNECTION_TIMEOUT, 10u,
                                     MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_END);
    else
        m->daemon = MHD_start_daemon(flags, (uint16_t)port, NULL, NULL, answer, m,
                                     MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
    if (ai)
        freeaddrinfo(ai);
    if (!m->daemon) {
        duet_log_error("metrics: cannot serve HTTP on %s port %d", any ? "every interface," : host, port);
        return DUET_ERR_UNAVAILABLE;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(m->daemon, MHD_DAEMON_INFO_BIND_PORT);
    if (port_p)
        *port_p = info ? info->port : port;
    return DUET_OK;
}
