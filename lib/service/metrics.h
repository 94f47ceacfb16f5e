/* lib/service/metrics.h — Prometheus metrics: a registry of counters, gauges and histograms that
 * any thread updates without locks, rendered in the text exposition format and served over HTTP
 * (libmicrohttpd) at /metrics. */
#ifndef DUET_SERVICE_METRICS_H
#define DUET_SERVICE_METRICS_H

#include <stddef.h>

#include "status.h"

typedef struct duet_metrics duet_metrics_t;
typedef struct duet_metric duet_metric_t;

duet_status_t duet_metrics_create(duet_metrics_t **metrics_p);
/* Stops serving first. Metric handles are invalid afterwards. */
void          duet_metrics_destroy(duet_metrics_t *metrics);

/* Registration (not thread-safe: register at start-up, update from anywhere). name follows
 * Prometheus rules ([a-zA-Z_:][a-zA-Z0-9_:]*); labels is NULL or a rendered label set such as
 * "outcome=\"ok\"", so one name may be registered once per label set. Returns NULL when out of
 * memory or the name is registered with another type. */
duet_metric_t *duet_metrics_counter(duet_metrics_t *m, const char *name, const char *help, const char *labels);
duet_metric_t *duet_metrics_gauge(duet_metrics_t *m, const char *name, const char *help, const char *labels);
/* bounds: ascending upper bounds (the +Inf bucket is implicit). */
duet_metric_t *duet_metrics_histogram(duet_metrics_t *m, const char *name, const char *help,
                                      const double *bounds, int n_bounds);

/* Updates: lock-free, any thread; a NULL metric is ignored (so optional metrics need no checks). */
void duet_metric_add(duet_metric_t *counter, double delta);   /* delta >= 0 */
void duet_metric_set(duet_metric_t *gauge, double value);
void duet_metric_observe(duet_metric_t *histogram, double value);

/* Bucket bounds for latencies in seconds, 1 ms .. 60 s. */
extern const double duet_metrics_latency_buckets[];
extern const int duet_metrics_n_latency_buckets;

/* duet_requests_total{outcome="..."}: one counter per outcome a duet status maps to. */
typedef struct {
    duet_metric_t *by_outcome[8];
} duet_metrics_outcomes_t;

/* Registers the family (a service calls it once, in start). */
void duet_metrics_outcomes_init(duet_metrics_outcomes_t *o, duet_metrics_t *m);
/* Counts one finished request: ok, invalid, unauthenticated, exhausted, unavailable, cancelled,
 * deadline or error. */
void duet_metrics_outcome(duet_metrics_outcomes_t *o, duet_status_t status);

/* The whole registry in the Prometheus text format; *text_p is malloc'd. */
duet_status_t duet_metrics_render(duet_metrics_t *m, char **text_p, size_t *len_p);

/* Serves GET /metrics on 0.0.0.0:port (0 picks one) until destroy; *port_p gets the bound port. */
duet_status_t duet_metrics_serve(duet_metrics_t *m, int port, int *port_p);
/* The same, listening only on host's address (a name or a literal; NULL, "", 0.0.0.0 or :: for
 * every interface). */
duet_status_t duet_metrics_serve_on(duet_metrics_t *m, const char *host, int port, int *port_p);

#endif
