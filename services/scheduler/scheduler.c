/* services/scheduler/scheduler.c — duet-scheduler: places each request on a decode instance (by
 * free KV blocks, then batch size) and a prefill instance (by queued prompt tokens), reading live
 * load from Redis; answers Cluster with every live instance. Stateless apart from Redis.
 *
 * Threads: handlers run on gRPC completion-queue threads and only queue the call (deferred);
 * a few worker threads, each with its own Redis connection, answer them, so a slow or absent
 * Redis never stalls the completion queue. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "duet/v1/scheduler.pb-c.h"
#include "log.h"
#include "placement.h"
#include "scheduler.h"
#include "service.h"
#include "state.h"

typedef struct {
    duet_service_common_t common;
    int workers;              /* worker threads, each with one Redis connection */
    int redis_timeout_ms;     /* per Redis command */
    int queue_max;            /* calls waiting for a worker before RESOURCE_EXHAUSTED */
    int busy_retry_ms;        /* the retry-after-ms hint of a RESOURCE_EXHAUSTED answer */
} sched_conf_t;

#define OPT(flag, env, type, field, def, help) \
    {flag, env, type, offsetof(sched_conf_t, field), def, help}
static const duet_conf_opt_t sched_opts[] = {
    OPT("workers", "DUET_SCHED_WORKERS", DUET_CONF_INT, workers, "4", "worker threads (each holds one Redis connection)"),
    OPT("redis-timeout-ms", "DUET_REDIS_TIMEOUT_MS", DUET_CONF_INT, redis_timeout_ms, "500", "timeout of one Redis command"),
    OPT("queue-max", "DUET_SCHED_QUEUE_MAX", DUET_CONF_INT, queue_max, "1024", "calls waiting for a worker before RESOURCE_EXHAUSTED"),
    OPT("busy-retry-ms", "DUET_BUSY_RETRY_MS", DUET_CONF_INT, busy_retry_ms, "500",
        "retry-after-ms hint sent with RESOURCE_EXHAUSTED (queue full, or no decode instance with free KV blocks)"),
};
#undef OPT

typedef enum { JOB_ROUTE, JOB_CLUSTER } job_kind_t;

typedef struct job {
    struct job *next;
    job_kind_t kind;
    duet_rpc_call_t *call;                  /* deferred; finished by the worker */
    const ProtobufCMessage *request;        /* owned by the runtime until the finish */
} job_t;

typedef struct {
    const sched_conf_t *conf;
    pthread_t *threads;
    int n_threads;
    pthread_mutex_t mu;                     /* guards the queue and stopping */
    pthread_cond_t wake;
    job_t *head, *tail;
    int queued;
    int stopping;
    duet_rpc_method_t methods[2];
    duet_metrics_outcomes_t routes;         /* duet_requests_total: Route calls by outcome */
} sched_t;

/* ---- the two methods, run by a worker ------------------------------------------------------- */

/* A Redis connection for this worker, (re)made on demand; NULL while Redis is unreachable. */
static duet_state_t *worker_store(sched_t *s, duet_state_t **store)
{
    if (!*store && duet_state_connect(s->conf->common.redis, s->conf->redis_timeout_ms, store) != DUET_OK)
        *store = NULL;
    return *store;
}

/* Lists every live instance. A connection that broke while idle (Redis restarted) fails its
 * first command and is then remade, so an UNAVAILABLE is tried once more. */
static duet_status_t list_all(sched_t *s, duet_state_t **store, duet_state_t **st_p,
                              duet_state_inst_t **insts_p, int *n_p)
{
    duet_status_t status = DUET_ERR_UNAVAILABLE;
    for (int attempt = 0; attempt < 2 && status == DUET_ERR_UNAVAILABLE; attempt++) {
        *st_p = worker_store(s, store);
        status = *st_p ? duet_state_inst_list(*st_p, DUET_ROLE_ANY, insts_p, n_p) : DUET_ERR_UNAVAILABLE;
    }
    return status;
}

static void do_route(sched_t *s, duet_state_t **store, duet_rpc_call_t *call,
                     const Duet__V1__RouteRequest *rq, uint32_t *seed)
{
    const char *rid = rq->request_id && rq->request_id[0] ? rq->request_id : "-";
    duet_state_inst_t *insts = NULL;
    int n = 0;
    duet_state_t *st = NULL;
    duet_status_t status = list_all(s, store, &st, &insts, &n);
    if (status != DUET_OK) {
        duet_log_warn("scheduler: request %s: Redis unavailable: %s", rid,
                      st ? duet_state_last_error(st) : "cannot connect");
        duet_metrics_outcome(&s->routes, DUET_ERR_UNAVAILABLE);
        duet_rpc_call_finish(call, DUET_ERR_UNAVAILABLE, "scheduler: Redis unavailable");
        return;
    }
    duet_sched_placement_t p;
    char msg[256];
    status = duet_sched_place(insts, n, rq, seed, &p, msg, sizeof msg);
    if (status != DUET_OK) {
        duet_log_debug("scheduler: request %s: %s", rid, msg);   /* the gateway logs it once */
        duet_state_inst_list_free(insts);
        duet_metrics_outcome(&s->routes, status);
        if (status == DUET_ERR_EXHAUSTED)   /* blocks free up as running requests finish */
            duet_rpc_call_set_retry_after(call, s->conf->busy_retry_ms);
        duet_rpc_call_finish(call, status, "%s", msg);
        return;
    }
    Duet__V1__RouteResponse resp = DUET__V1__ROUTE_RESPONSE__INIT;
    resp.decode_instance_id = (char *)p.decode->id;
    resp.decode_address = (char *)p.decode->grpc_addr;
    resp.prefill_instance_id = p.prefill ? (char *)p.prefill->id : "";
    resp.prefill_address = p.prefill ? (char *)p.prefill->grpc_addr : "";
    duet_log_debug("scheduler: request %s (%u+%u tokens, attempt %u) -> decode %s, prefill %s", rid,
                   rq->prompt_tokens, rq->max_tokens, rq->attempt, p.decode->id,
                   p.prefill ? p.prefill->id : "(local)");
    status = duet_rpc_call_reply(call, &resp.base);
    duet_state_inst_list_free(insts);
    duet_metrics_outcome(&s->routes, status);
    duet_rpc_call_finish(call, status, NULL);
}

static Duet__V1__InstanceRole role_to_proto(duet_inst_role_t role)
{
    switch (role) {
    case DUET_ROLE_PREFILL: return DUET__V1__INSTANCE_ROLE__INSTANCE_ROLE_PREFILL;
    case DUET_ROLE_DECODE:  return DUET__V1__INSTANCE_ROLE__INSTANCE_ROLE_DECODE;
    case DUET_ROLE_MIXED:   return DUET__V1__INSTANCE_ROLE__INSTANCE_ROLE_MIXED;
    default:                return DUET__V1__INSTANCE_ROLE__INSTANCE_ROLE_UNSPECIFIED;
    }
}

static uint32_t clamp_u32(int64_t v)
{
    return v < 0 ? 0 : v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

static void do_cluster(sched_t *s, duet_state_t **store, duet_rpc_call_t *call)
{
    duet_state_inst_t *insts = NULL;
    int n = 0;
    duet_state_t *st = NULL;
    duet_status_t status = list_all(s, store, &st, &insts, &n);
    if (status != DUET_OK) {
        duet_log_warn("scheduler: Cluster: Redis unavailable: %s", st ? duet_state_last_error(st) : "cannot connect");
        duet_rpc_call_finish(call, DUET_ERR_UNAVAILABLE, "scheduler: Redis unavailable");
        return;
    }
    Duet__V1__InstanceInfo *infos = n ? calloc((size_t)n, sizeof *infos) : NULL;
    Duet__V1__InstanceInfo **ptrs = n ? calloc((size_t)n, sizeof *ptrs) : NULL;
    if (n && (!infos || !ptrs)) {
        free(infos);
        free(ptrs);
        duet_state_inst_list_free(insts);
        duet_rpc_call_finish(call, DUET_ERR_NOMEM, "scheduler: out of memory");
        return;
    }
    for (int i = 0; i < n; i++) {
        Duet__V1__InstanceInfo init = DUET__V1__INSTANCE_INFO__INIT;
        infos[i] = init;
        infos[i].id = insts[i].id;
        infos[i].role = role_to_proto(insts[i].role);
        infos[i].address = insts[i].grpc_addr;
        infos[i].model_id = insts[i].model;
        infos[i].kv_blocks_total = clamp_u32(insts[i].kv_blocks_total);
        infos[i].kv_blocks_free = clamp_u32(insts[i].load.kv_blocks_free);
        infos[i].queued_tokens = insts[i].load.queued_tokens < 0 ? 0 : (uint64_t)insts[i].load.queued_tokens;
        infos[i].running_seqs = clamp_u32(insts[i].load.running_seqs);
        infos[i].last_heartbeat_ms = insts[i].last_heartbeat_ms;
        ptrs[i] = &infos[i];
    }
    Duet__V1__ClusterResponse resp = DUET__V1__CLUSTER_RESPONSE__INIT;
    resp.n_instances = (size_t)n;
    resp.instances = ptrs;
    status = duet_rpc_call_reply(call, &resp.base);
    free(ptrs);
    free(infos);
    duet_state_inst_list_free(insts);
    duet_rpc_call_finish(call, status, NULL);
}

static void *worker_main(void *arg)
{
    sched_t *s = arg;
    duet_state_t *store = NULL;
    uint32_t seed = 0;
    if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed)
        seed = (uint32_t)(uintptr_t)&seed;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        /* Drain the queue before stopping: every deferred call must be finished. */
        while (!s->head && !s->stopping)
            pthread_cond_wait(&s->wake, &s->mu);
        job_t *j = s->head;
        if (!j)
            break;
        s->head = j->next;
        if (!s->head)
            s->tail = NULL;
        s->queued--;
        pthread_mutex_unlock(&s->mu);
        if (j->kind == JOB_ROUTE)
            do_route(s, &store, j->call, (const Duet__V1__RouteRequest *)j->request, &seed);
        else
            do_cluster(s, &store, j->call);
        free(j);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    duet_state_close(store);
    return NULL;
}

/* Runs on a completion-queue thread: only queues the call for a worker. */
static duet_status_t enqueue(sched_t *s, job_kind_t kind, duet_rpc_call_t *call, const ProtobufCMessage *request)
{
    job_t *j = calloc(1, sizeof *j);
    if (!j)
        return DUET_ERR_NOMEM;
    j->kind = kind;
    j->call = call;
    j->request = request;
    pthread_mutex_lock(&s->mu);
    if (s->queued >= s->conf->queue_max) {
        pthread_mutex_unlock(&s->mu);
        free(j);
        duet_rpc_call_set_error(call, "scheduler: %d calls already waiting", s->conf->queue_max);
        duet_rpc_call_set_retry_after(call, s->conf->busy_retry_ms);
        return DUET_ERR_EXHAUSTED;
    }
    duet_rpc_call_defer(call);
    if (s->tail)
        s->tail->next = j;
    else
        s->head = j;
    s->tail = j;
    s->queued++;
    pthread_cond_signal(&s->wake);
    pthread_mutex_unlock(&s->mu);
    return DUET_OK;
}

static duet_status_t on_route(duet_rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    return enqueue(arg, JOB_ROUTE, call, request);
}

static duet_status_t on_cluster(duet_rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    return enqueue(arg, JOB_CLUSTER, call, request);
}

/* ---- service definition --------------------------------------------------------------------- */

static void sched_stop(void *state);

static duet_status_t sched_start(duet_service_t *svc, const void *conf, void **state_p,
                                 const duet_rpc_method_t **methods_p, int *n_methods_p)
{
    const sched_conf_t *c = conf;
    if (c->workers < 1 || c->workers > 256 || c->redis_timeout_ms < 1 || c->queue_max < 1) {
        duet_log_error("scheduler: --workers must be in 1..256, --redis-timeout-ms and --queue-max at least 1");
        return DUET_ERR_INVALID;
    }
    sched_t *s = calloc(1, sizeof *s);
    if (!s)
        return DUET_ERR_NOMEM;
    s->conf = c;
    duet_metrics_outcomes_init(&s->routes, duet_service_metrics(svc));
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->wake, NULL);
    s->threads = calloc((size_t)c->workers, sizeof *s->threads);
    if (!s->threads) {
        sched_stop(s);
        return DUET_ERR_NOMEM;
    }
    for (int i = 0; i < c->workers; i++) {
        if (pthread_create(&s->threads[i], NULL, worker_main, s) != 0) {
            duet_log_error("scheduler: cannot start worker thread %d", i);
            sched_stop(s);
            return DUET_ERR_NOMEM;
        }
        s->n_threads++;
    }
    s->methods[0] = (duet_rpc_method_t){"/duet.v1.Scheduler/Route", DUET_RPC_UNARY,
                                        &duet__v1__route_request__descriptor, on_route, NULL, s};
    s->methods[1] = (duet_rpc_method_t){"/duet.v1.Scheduler/Cluster", DUET_RPC_UNARY,
                                        &duet__v1__cluster_request__descriptor, on_cluster, NULL, s};
    *state_p = s;
    *methods_p = s->methods;
    *n_methods_p = 2;
    return DUET_OK;
}

/* Runs after the server has stopped, so no call is queued any more: the workers drain and exit. */
static void sched_stop(void *state)
{
    sched_t *s = state;
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_broadcast(&s->wake);
    pthread_mutex_unlock(&s->mu);
    for (int i = 0; i < s->n_threads; i++)
        pthread_join(s->threads[i], NULL);
    free(s->threads);
    pthread_cond_destroy(&s->wake);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

const duet_service_def_t duet_scheduler_service = {
    .name = "scheduler",
    .summary = "Places requests on prefill and decode instances from their live load in Redis.",
    .opts = sched_opts,
    .n_opts = (int)(sizeof sched_opts / sizeof sched_opts[0]),
    .conf_size = sizeof(sched_conf_t),
    .start = sched_start,
    .stop = sched_stop,
};
