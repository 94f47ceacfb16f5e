/* loadtest/run.h — one load-test run: a dispatcher thread sends requests at their arrival times
 * (open loop) or keeps a fixed number in flight (closed loop), workers stream the answers, and
 * the calling thread prints a progress line a second until everything has finished. */
#ifndef DUET_LOAD_RUN_H
#define DUET_LOAD_RUN_H

#include <signal.h>
#include <stddef.h>

#include "client.h"
#include "stats.h"
#include "workload.h"

typedef struct {
    duet_load_client_t *client;
    duet_load_workload_t *workload;        /* consumed by the run */
    const duet_load_tokens_t *tokens;      /* prompt token range */
    uint64_t seed;
    int concurrency;                       /* > 0: closed loop with this many in flight */
    int max_inflight;                      /* open loop: arrivals beyond this are dropped */
    double duration_s;                     /* stop sending after this; 0: no limit */
    long requests;                         /* stop after this many; 0: no limit */
    double rate;                           /* recorded in each result (0: closed loop/trace) */
    int probe;                             /* recorded in each result; part of request ids */
    int progress;                          /* print a progress line on stderr every second */
    int retries;                           /* sends again after a retriable failure, at most */
    volatile sig_atomic_t *stop;           /* set (e.g. by SIGINT): stop sending, cancel all */
} duet_load_run_conf_t;

typedef struct {
    duet_load_result_t *results;  /* owned; in arrival order; free() it */
    size_t n;
    double duration_s;            /* start to the last completion */
    int interrupted;              /* *stop was set */
} duet_load_run_t;

/* Runs until the workload, the duration or the request count ends and every stream has
 * finished. Failed requests are results, not errors. NOMEM or INTERNAL (a thread could not
 * start) stop the run early; run is still filled with what was sent (results may be NULL only
 * when nothing started). */
duet_status_t duet_load_run(const duet_load_run_conf_t *conf, duet_load_run_t *run);

#endif
