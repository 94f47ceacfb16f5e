/* loadtest/run.c — dispatching a load test's requests over a lazily grown pool of worker threads
 * (one per in-flight stream, reused) and watching its progress. */
#include "run.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"

/* Shared state; every field below `lock` is guarded by it. */
typedef struct {
    const duet_load_run_conf_t *conf;
    int64_t t0_ns;
    _Atomic int64_t tokens;            /* received so far, for progress lines */
    uint64_t id_stamp;                 /* makes request ids unique across runs */

    pthread_mutex_t lock;
    pthread_cond_t work;               /* a job was queued, or stop */
    pthread_cond_t done;               /* a job finished, or dispatching ended */
    duet_load_result_t *results;
    size_t n, cap;
    size_t *queue;                     /* result indices waiting for a worker */
    size_t q_head, q_len;
    int max_threads;
    pthread_t *threads;
    duet_load_slot_t *slots;           /* slot i belongs to thread i */
    int n_threads, n_idle;
    int inflight;                      /* queued + running */
    size_t n_done, n_failed;
    int dispatching;                   /* the dispatcher has not finished */
    int quit;                          /* workers exit once the queue is empty */
    int dropping_warned;
    duet_status_t error;               /* a thread could not start */
} run_state_t;

typedef struct {
    run_state_t *s;
    int id;
} worker_arg_t;

/* A failure the same request may succeed after: the mesh was briefly without an instance, over
 * a limit, or lost a stream it could not re-place. The request is sent again whole, under the
 * same id prefix, after a back-off that doubles from 200 ms to 5 s; its times keep the first
 * send, so a retry's delay counts against TTFT and E2E. */
static int retriable(const duet_load_result_t *r)
{
    return strcmp(r->status, "UNAVAILABLE") == 0 || strcmp(r->status, "RESOURCE_EXHAUSTED") == 0 ||
           strcmp(r->status, "ABORTED") == 0 || strcmp(r->status, "finish_error") == 0;
}

static void send_with_retries(const duet_load_run_conf_t *conf, run_state_t *s, duet_load_slot_t *slot,
                              const uint32_t *ids, const char *rid, duet_load_result_t *r)
{
    int64_t first_send = -1, backoff_ms = 200;
    for (int attempt = 0;; attempt++) {
        char id[96];
        if (attempt == 0)
            snprintf(id, sizeof id, "%s", rid);
        else
            snprintf(id, sizeof id, "%s.r%d", rid, attempt);
        duet_load_client_generate(conf->client, ids, r->prompt_tokens, id, s->t0_ns, slot, &s->tokens, r);
        if (first_send < 0)
            first_send = r->send_ns;
        r->send_ns = first_send;
        r->retries = attempt;
        if (attempt >= conf->retries || !retriable(r) || (conf->stop && *conf->stop))
            return;
        struct timespec ts = {(time_t)(backoff_ms / 1000), (long)(backoff_ms % 1000) * 1000000};
        nanosleep(&ts, NULL);
        if (backoff_ms < 5000)
            backoff_ms *= 2;
    }
}

static void *worker_main(void *p)
{
    worker_arg_t *wa = p;
    run_state_t *s = wa->s;
    duet_load_slot_t *slot = &s->slots[wa->id];
    free(wa);
    const duet_load_run_conf_t *conf = s->conf;
    uint32_t *ids = NULL;
    int ids_cap = 0;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (s->q_len == 0 && !s->quit)
            pthread_cond_wait(&s->work, &s->lock);
        if (s->q_len == 0)
            break;
        size_t idx = s->queue[s->q_head];
        s->q_head = (s->q_head + 1) % (size_t)s->max_threads;
        s->q_len--;
        s->n_idle--;
        duet_load_result_t r = s->results[idx];  /* a copy: the array may move while we run */
        pthread_mutex_unlock(&s->lock);

        if (r.prompt_tokens > ids_cap) {
            uint32_t *n_ids = realloc(ids, (size_t)r.prompt_tokens * sizeof *ids);
            if (n_ids) {
                ids = n_ids;
                ids_cap = r.prompt_tokens;
            }
        }
        if (r.prompt_tokens > ids_cap) {
            r.send_ns = duet_clock_ns() - s->t0_ns;
            r.first_ns = r.last_ns = -1;
            r.status = "client_nomem";
        } else {
            char rid[64];
            snprintf(rid, sizeof rid, "load-%llx-%d-%zu", (unsigned long long)s->id_stamp,
                     conf->probe, r.index);
            duet_load_prompt_ids(conf->tokens, conf->seed, r.index, ids, r.prompt_tokens);
            send_with_retries(conf, s, slot, ids, rid, &r);
        }

        pthread_mutex_lock(&s->lock);
        s->results[idx] = r;
        s->inflight--;
        s->n_idle++;
        s->n_done++;
        s->n_failed += strcmp(r.status, "ok") != 0;
        pthread_cond_broadcast(&s->done);
    }
    pthread_mutex_unlock(&s->lock);
    free(ids);
    return NULL;
}

/* Appends a result for spec; returns its index or (size_t)-1 when out of memory. Locked. */
static size_t add_result(run_state_t *s, const duet_load_spec_t *spec, int64_t scheduled_ns)
{
    if (s->n == s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 1024;
        duet_load_result_t *nr = realloc(s->results, ncap * sizeof *nr);
        if (!nr)
            return (size_t)-1;
        s->results = nr;
        s->cap = ncap;
    }
    duet_load_result_t *r = &s->results[s->n];
    memset(r, 0, sizeof *r);
    r->index = s->n;
    r->probe = s->conf->probe;
    r->rate = s->conf->rate;
    r->prompt_tokens = spec->prompt_tokens;
    r->output_tokens = spec->output_tokens;
    r->scheduled_ns = scheduled_ns;
    r->send_ns = r->first_ns = r->last_ns = -1;
    r->status = "pending";
    return s->n++;
}

/* Hands result idx to a worker, starting one when none is idle. Locked. */
static int submit(run_state_t *s, size_t idx)
{
    if (s->q_len >= (size_t)s->n_idle && s->n_threads < s->max_threads) {
        worker_arg_t *wa = malloc(sizeof *wa);
        if (!wa)
            return -1;
        *wa = (worker_arg_t){s, s->n_threads};
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        /* Hundreds of threads that only block in gRPC reads: a small stack each. */
        pthread_attr_setstacksize(&attr, 512 * 1024);
        int rc = pthread_create(&s->threads[s->n_threads], &attr, worker_main, wa);
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            free(wa);
            return -1;
        }
        s->n_threads++;
        s->n_idle++;
    }
    s->queue[(s->q_head + s->q_len) % (size_t)s->max_threads] = idx;
    s->q_len++;
    s->inflight++;
    pthread_cond_signal(&s->work);
    return 0;
}

/* Waits on cond for at most ms milliseconds (condition variables time out on the wall clock). */
static void wait_ms(pthread_cond_t *cond, pthread_mutex_t *lock, int ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += (long)ms * 1000000;
    ts.tv_sec += ts.tv_nsec / 1000000000;
    ts.tv_nsec %= 1000000000;
    pthread_cond_timedwait(cond, lock, &ts);
}

/* Sleeps until the monotonic time `at` (ns), waking every 100 ms to check *stop. */
static void sleep_until(int64_t at, volatile sig_atomic_t *stop)
{
    for (;;) {
        int64_t now = duet_clock_ns();
        if (now >= at || (stop && *stop))
            return;
        int64_t until = at - now > 100000000 ? now + 100000000 : at;
        struct timespec ts = {until / 1000000000, until % 1000000000};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
            ;
    }
}

static void *dispatcher_main(void *p)
{
    run_state_t *s = p;
    const duet_load_run_conf_t *conf = s->conf;
    int64_t end_ns = conf->duration_s > 0 ? s->t0_ns + (int64_t)(conf->duration_s * 1e9) : INT64_MAX;
    long sent = 0;
    duet_load_spec_t spec;
    while ((conf->requests == 0 || sent < conf->requests) && !(conf->stop && *conf->stop) &&
           duet_load_workload_next(conf->workload, &spec)) {
        int64_t at;
        if (conf->concurrency > 0) {
            /* Closed loop: the next request goes when one of C finishes. */
            pthread_mutex_lock(&s->lock);
            while (s->inflight >= conf->concurrency && !(conf->stop && *conf->stop) &&
                   duet_clock_ns() < end_ns)
                wait_ms(&s->done, &s->lock, 100);
            pthread_mutex_unlock(&s->lock);
            at = duet_clock_ns();
            if (at >= end_ns || (conf->stop && *conf->stop))
                break;
        } else {
            /* Open loop: absolute times, so a slow request never shifts later arrivals. */
            at = s->t0_ns + (int64_t)(spec.arrival_s * 1e9);
            if (at >= end_ns)
                break;
            sleep_until(at, conf->stop);
            if (conf->stop && *conf->stop)
                break;
        }
        pthread_mutex_lock(&s->lock);
        size_t idx = add_result(s, &spec, at - s->t0_ns);
        if (idx == (size_t)-1) {
            s->error = DUET_ERR_NOMEM;
            pthread_mutex_unlock(&s->lock);
            break;
        }
        sent++;
        if (s->inflight >= s->max_threads) {
            /* The server is not keeping up and the client will not pile up more threads:
             * the arrival is lost, and counts as an SLO miss. */
            s->results[idx].status = "dropped";
            snprintf(s->results[idx].error, sizeof s->results[idx].error,
                     "client at --max-inflight %d", s->max_threads);
            s->n_done++;
            s->n_failed++;
            if (!s->dropping_warned) {
                fprintf(stderr, "duet-load: %d requests in flight (--max-inflight): dropping arrivals "
                        "until some finish; they count as failed\n", s->max_threads);
                s->dropping_warned = 1;
            }
        } else if (submit(s, idx) != 0) {
            s->results[idx].status = "client_thread";
            s->n_done++;
            s->n_failed++;
            s->error = DUET_ERR_INTERNAL;
            pthread_mutex_unlock(&s->lock);
            break;
        }
        pthread_mutex_unlock(&s->lock);
    }
    pthread_mutex_lock(&s->lock);
    s->dispatching = 0;
    pthread_cond_broadcast(&s->done);
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* One line: counts so far, the achieved send rate, and tokens/s over the last interval (over the
 * whole run for the final line). */
static void progress_line(run_state_t *s, int64_t now, int64_t *last_ns, int64_t *last_tokens, int final)
{
    double el = (double)(now - s->t0_ns) / 1e9;
    int64_t tok = atomic_load(&s->tokens);
    if (final) {
        *last_ns = s->t0_ns;
        *last_tokens = 0;
    }
    double dt = (double)(now - *last_ns) / 1e9;
    fprintf(stderr, "[%6.1fs] sent %zu  done %zu  failed %zu  in flight %d  %.2f req/s  %.0f tok/s\n",
            el, s->n, s->n_done, s->n_failed, s->inflight,
            el > 0 ? (double)s->n / el : 0.0, dt > 0 ? (double)(tok - *last_tokens) / dt : 0.0);
    *last_ns = now;
    *last_tokens = tok;
}

duet_status_t duet_load_run(const duet_load_run_conf_t *conf, duet_load_run_t *run)
{
    run_state_t *s = calloc(1, sizeof *s);
    if (!s)
        return DUET_ERR_NOMEM;
    duet_status_t status = DUET_OK;
    s->conf = conf;
    s->max_threads = conf->concurrency > 0 ? conf->concurrency : conf->max_inflight;
    if (s->max_threads < 1)
        s->max_threads = 1;
    s->threads = calloc((size_t)s->max_threads, sizeof *s->threads);
    s->slots = calloc((size_t)s->max_threads, sizeof *s->slots);
    s->queue = calloc((size_t)s->max_threads, sizeof *s->queue);
    if (!s->threads || !s->slots || !s->queue) {
        status = DUET_ERR_NOMEM;
        goto err_free_state;
    }
    for (int i = 0; i < s->max_threads; i++)
        duet_load_slot_init(&s->slots[i]);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->work, NULL);
    pthread_cond_init(&s->done, NULL);
    s->id_stamp = (uint64_t)duet_clock_wall_ms();
    s->dispatching = 1;
    s->t0_ns = duet_clock_ns();

    pthread_t dispatcher;
    if (pthread_create(&dispatcher, NULL, dispatcher_main, s) != 0) {
        status = DUET_ERR_INTERNAL;
        goto err_destroy_sync;
    }

    int64_t last_ns = s->t0_ns, last_tokens = 0, next_line = s->t0_ns + 1000000000;
    int cancelled = 0;
    pthread_mutex_lock(&s->lock);
    while (s->dispatching || s->inflight > 0) {
        wait_ms(&s->done, &s->lock, 200);  /* often enough to notice Ctrl-C */
        if (conf->stop && *conf->stop && !cancelled) {
            /* Streams in flight end with CANCELLED; their partial results stay. */
            for (int i = 0; i < s->n_threads; i++)
                duet_load_slot_cancel(&s->slots[i]);
            cancelled = 1;
        }
        int64_t now = duet_clock_ns();
        if (conf->progress && now >= next_line) {
            progress_line(s, now, &last_ns, &last_tokens, 0);
            next_line += 1000000000;
            if (next_line < now)
                next_line = now + 1000000000;
        }
    }
    int64_t end = duet_clock_ns();
    s->quit = 1;
    pthread_cond_broadcast(&s->work);
    pthread_mutex_unlock(&s->lock);
    pthread_join(dispatcher, NULL);
    for (int i = 0; i < s->n_threads; i++)
        pthread_join(s->threads[i], NULL);
    if (conf->progress)
        progress_line(s, end, &last_ns, &last_tokens, 1);

    /* The run ends at the last completion (or the last send, when nothing completed). */
    int64_t last = 0;
    for (size_t i = 0; i < s->n; i++) {
        const duet_load_result_t *r = &s->results[i];
        int64_t t = r->last_ns > r->send_ns ? r->last_ns : r->send_ns;
        if (t > last)
            last = t;
    }
    if (last == 0)
        last = end - s->t0_ns;
    run->results = s->results;
    run->n = s->n;
    run->duration_s = (double)last / 1e9;
    run->interrupted = conf->stop && *conf->stop;
    s->results = NULL;
    status = s->error;

err_destroy_sync:
    pthread_cond_destroy(&s->done);
    pthread_cond_destroy(&s->work);
    pthread_mutex_destroy(&s->lock);
    for (int i = 0; i < s->max_threads; i++)
        duet_load_slot_cleanup(&s->slots[i]);
err_free_state:
    free(s->results);
    free(s->queue);
    free(s->slots);
    free(s->threads);
    free(s);
    return status;
}
