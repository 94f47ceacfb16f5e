/* services/gateway/gateway.c — duet-gateway, the public face: authenticates and validates a
 * request, tokenizes it, records it in Redis, asks the scheduler for a placement, opens
 * Decode.Generate on the chosen decode instance and relays its tokens as text (incremental,
 * UTF-8 safe, stop strings honoured). Also Tokenize and ModelInfo, from the model's vocabulary
 * alone (the weights are never loaded here).
 *
 * Threads: handlers run on gRPC completion-queue threads and do only quick work (auth,
 * validation, tokenization); each accepted Generate/Complete gets one of --max-streams slots and
 * a worker thread of its own, which does everything that blocks (Redis, Route, reading the
 * decode stream) and finishes the call. A client's cancel arrives on a completion-queue thread
 * and only cancels the slot's decode stream, which wakes the worker. A watchdog thread cancels
 * decode streams that have kept a worker waiting longer than --decode-idle-timeout-ms, which the
 * worker treats as the instance being down.
 *
 * The request record (DESIGN.md §1): this file makes QUEUED (create) → ROUTED; → FAILED or
 * CANCELLED while no decode instance has taken the request; X → ROUTED (attempt + 1) when the
 * decode instance became unreachable and the request is placed again; and → FAILED when it gave
 * up on an unreachable one. Every other transition belongs to the decode service. */
#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "chat.h"
#include "clock.h"
#include "duet/v1/decode.pb-c.h"
#include "duet/v1/gateway.pb-c.h"
#include "duet/v1/scheduler.pb-c.h"
#include "apikeys.h"
#include "gateway.h"
#include "gguf.h"
#include "log.h"
#include "model.h"
#include "ratelimit.h"
#include "request.h"
#include "service.h"
#include "state.h"
#include "text.h"
#include "tokenizer.h"

#define PENDING_MAX_MSGS   256    /* queued messages to a slow client before the worker waits */
#define MSG_MAX            512    /* error texts */

typedef struct {
    duet_service_common_t common;
    const char *model;          /* GGUF path; empty: $DUET_MODEL or the cached default */
    int ctx;                    /* context limit; 0 or more than the model's: the model's */
    const char *api_keys;       /* "sha256:<hex>" digests or plain keys; both empty: no authentication */
    const char *api_keys_file;  /* the same, one per line */
    const char *scheduler;      /* host:port; empty: a live scheduler found in Redis */
    int route_timeout_ms;
    int max_streams;            /* concurrent Generate/Complete calls */
    int redis_timeout_ms;
    int max_retries;            /* new placements after a decode instance fails mid-request */
    int decode_idle_timeout_ms; /* a decode stream silent this long is given up */
    int max_prompt_tokens;      /* prompt tokens after tokenization; 0: only the context limits */
    int max_queued;             /* accepted requests without a first token yet; 0: no limit */
    int busy_retry_ms;          /* retry hint when --max-streams or --max-queued is reached */
    float rate_limit;           /* Generate/Complete requests per second per API key; 0: none */
    float rate_burst;           /* bucket size; 0: max(1, rate) */
} gw_conf_t;

#define OPT(flag, env, type, field, def, help) \
    {flag, env, type, offsetof(gw_conf_t, field), def, help}
static const duet_conf_opt_t gw_opts[] = {
    OPT("model", "DUET_MODEL", DUET_CONF_STR, model, "", "GGUF model file: vocabulary, chat template, context (default: ~/.cache/duet/models/" DUET_DEFAULT_MODEL_FILE ")"),
    OPT("ctx", "DUET_CTX", DUET_CONF_INT, ctx, "2048", "context limit in tokens (prompt + generated); capped at the model's; 0: the model's"),
    OPT("api-keys", "DUET_API_KEYS", DUET_CONF_STR, api_keys, "", "comma-separated API keys clients send as 'authorization: Bearer <key>', as sha256:<hex> digests (printf %s KEY | sha256sum) or plain (hashed at start, then wiped); empty: no auth"),
    OPT("api-keys-file", "DUET_API_KEYS_FILE", DUET_CONF_STR, api_keys_file, "", "file of API keys, one sha256:<hex> (or plain key) per line, # comments"),
    OPT("scheduler", "DUET_SCHEDULER", DUET_CONF_STR, scheduler, "", "scheduler host:port; empty: a live scheduler registered in Redis"),
    OPT("route-timeout-ms", "DUET_ROUTE_TIMEOUT_MS", DUET_CONF_INT, route_timeout_ms, "2000", "how long to wait for the scheduler's placement"),
    OPT("max-streams", "DUET_MAX_STREAMS", DUET_CONF_INT, max_streams, "256", "concurrent Generate/Complete calls; more get RESOURCE_EXHAUSTED"),
    OPT("redis-timeout-ms", "DUET_REDIS_TIMEOUT_MS", DUET_CONF_INT, redis_timeout_ms, "500", "timeout of one Redis command"),
    OPT("max-retries", "DUET_MAX_RETRIES", DUET_CONF_INT, max_retries, "2", "times a request moves to another decode instance when its own becomes unreachable"),
    OPT("decode-idle-timeout-ms", "DUET_DECODE_IDLE_TIMEOUT_MS", DUET_CONF_INT, decode_idle_timeout_ms, "10000", "a decode stream that sends nothing this long counts as a hung instance and the request moves to another one (decode sends a keepalive every second while a request waits)"),
    OPT("max-prompt-tokens", "DUET_MAX_PROMPT_TOKENS", DUET_CONF_INT, max_prompt_tokens, "0", "longest prompt accepted, in tokens after tokenization (RESOURCE_EXHAUSTED beyond); 0: only the context limit"),
    OPT("max-queued", "DUET_MAX_QUEUED", DUET_CONF_INT, max_queued, "0", "accepted requests still waiting for their first token; more get RESOURCE_EXHAUSTED; 0: no limit"),
    OPT("busy-retry-ms", "DUET_BUSY_RETRY_MS", DUET_CONF_INT, busy_retry_ms, "1000", "retry-after-ms hint sent when --max-streams or --max-queued is reached"),
    OPT("rate-limit", "DUET_RATE_LIMIT", DUET_CONF_FLOAT, rate_limit, "0", "Generate/Complete requests per second per API key (one shared bucket without keys); 0: no limit"),
    OPT("rate-burst", "DUET_RATE_BURST", DUET_CONF_FLOAT, rate_burst, "0", "requests a key may send at once above --rate-limit; 0: max(1, rate)"),
};
#undef OPT

typedef struct gw gw_t;

/* One accepted Generate or Complete. The slot outlives the request (slots live as long as the
 * gateway), which is what makes the cancel callback safe: a late callback finds either nothing or
 * a newer request whose call is not cancelled, and leaves it alone. */
typedef struct {
    gw_t *gw;
    pthread_mutex_t mu;                     /* guards call and dstream against the cancel callback */
    duet_rpc_call_t *call;                  /* the client's call while a worker serves it */
    duet_rpc_client_stream_t *dstream;      /* the decode stream while open */
    _Atomic int64_t progress_ns;            /* monotonic: since when the worker waits on decode;
                                               INT64_MAX while it does not */
    int idle_cut;                           /* the watchdog cancelled dstream (under mu) */
    pthread_t thread;
    int joinable;                           /* thread not joined yet (under gw->mu) */
    int busy;                               /* under gw->mu */
    int queued;                             /* counted in gw->queued (under gw->mu) */

    /* The request, set by the handler before the worker starts; the worker's alone after. */
    int unary;                              /* Complete: accumulate, reply once */
    const Duet__V1__GenerateRequest *req;   /* the runtime's until the call is finished */
    char id[DUET_STATE_ID_MAX];
    uint32_t *prompt;                       /* [n_prompt] */
    int n_prompt;
    uint32_t max_tokens;                    /* resolved: never 0 */
    int64_t deadline_ms;                    /* monotonic ms; INT64_MAX: none */
    int64_t t_begin_ns, t_first_ns, t_last_ns;  /* monotonic: accepted, first and last token */
    uint32_t n_out;                         /* tokens relayed */
    int64_t retry_after_ms;                 /* the scheduler's hint with RESOURCE_EXHAUSTED; -1: none */
} slot_t;

struct gw {
    const gw_conf_t *conf;
    duet_gguf_t *gguf;                      /* kept open: the tokenizer's strings live in it */
    duet_tokenizer_t *tok;
    duet_chat_template_t chat;
    char model_id[DUET_STATE_NAME_MAX];
    char model_file[DUET_STATE_NAME_MAX];   /* the file's base name */
    char arch[64];
    int ctx, n_vocab;
    uint32_t *eos_ids;                      /* [n_eos]: every token that ends generation */
    int n_eos;

    duet_apikeys_t keys;                    /* SHA-256 digests only */
    duet_ratelimit_t rate;                  /* one bucket per key (or one for all) */

    duet_rpc_client_t *client;
    pthread_mutex_t store_mu;               /* one Redis connection shared by the workers */
    duet_state_t *store;

    pthread_mutex_t mu;                     /* guards the slots' busy/joinable and active */
    pthread_cond_t idle;
    pthread_t watchdog;                     /* cuts decode streams silent too long */
    int watchdog_running, watchdog_stop;    /* under mu */
    pthread_cond_t watchdog_cv;
    slot_t *slots;                          /* [max_streams] */
    int active;
    int queued;                             /* accepted, no first token yet (--max-queued) */

    duet_rpc_method_t methods[4];

    /* Metrics, as the client sees them (DESIGN §8). */
    duet_metric_t *ttft, *tpot, *e2e;
    duet_metrics_outcomes_t outcomes;
};

/* ---- small helpers -------------------------------------------------------------------------- */

static int64_t mono_ms(void)
{
    return duet_clock_ns() / 1000000;
}

static const char *str_or_empty(const char *s)
{
    return s ? s : "";
}

/* DUET_OK when no keys are configured or the call carries one of them (its index in *key_p, -1
 * without keys). The key is hashed and compared with every digest in constant time. */
static duet_status_t authenticate_key(const gw_t *gw, duet_rpc_call_t *call, int *key_p)
{
    *key_p = -1;
    if (gw->keys.n == 0)
        return DUET_OK;
    const char *got = duet_rpc_call_bearer(call);
    int i = got ? duet_apikeys_match(&gw->keys, got, strlen(got)) : -1;
    if (i >= 0) {
        *key_p = i;
        return DUET_OK;
    }
    duet_rpc_call_set_error(call, got ? "invalid API key" : "missing API key (authorization: Bearer <key>)");
    return DUET_ERR_UNAUTHENTICATED;
}

static duet_status_t authenticate(const gw_t *gw, duet_rpc_call_t *call)
{
    int key;
    return authenticate_key(gw, call, &key);
}

/* Leaves the --max-queued count once the request has its first token or has ended. */
static void queue_leave(slot_t *s)
{
    gw_t *gw = s->gw;
    pthread_mutex_lock(&gw->mu);
    if (s->queued) {
        s->queued = 0;
        gw->queued--;
    }
    pthread_mutex_unlock(&gw->mu);
}

/* ---- Redis ---------------------------------------------------------------------------------- */

/* The shared store, connected on first use and again after a failure; call under store_mu. */
static duet_state_t *store_locked(gw_t *gw)
{
    if (!gw->store &&
        duet_state_connect(gw->conf->common.redis, gw->conf->redis_timeout_ms, &gw->store) != DUET_OK)
        gw->store = NULL;
    return gw->store;
}

/* A connection that broke while idle (Redis restarted) fails its first command and is remade by
 * the next, so each Redis operation below is tried twice when the first says UNAVAILABLE. */
#define REDIS_TRIES 2

/* Records the request in QUEUED. INVALID when a client's id is already in use. */
static duet_status_t record_create(gw_t *gw, const slot_t *s, int own_id, char *err, size_t err_cap)
{
    duet_state_req_new_t rn = {
        .id = s->id, .model = gw->model_id, .prompt_tokens = s->n_prompt,
        .max_tokens = s->max_tokens, .arrival_ms = duet_clock_wall_ms(),
    };
    pthread_mutex_lock(&gw->store_mu);
    duet_state_t *st = NULL;
    duet_status_t status = DUET_ERR_UNAVAILABLE;
    for (int attempt = 0; attempt < REDIS_TRIES && status == DUET_ERR_UNAVAILABLE; attempt++) {
        st = store_locked(gw);
        status = st ? duet_state_req_create(st, &rn) : DUET_ERR_UNAVAILABLE;
        /* A retried create of our own random id that exists was applied by the first try. */
        if (attempt > 0 && own_id && status == DUET_ERR_INVALID)
            status = DUET_OK;
    }
    if (status == DUET_ERR_INVALID)
        snprintf(err, err_cap, "request_id: \"%s\" is already in use", s->id);
    else if (status != DUET_OK) {
        /* The detail (a socket path, a host) is for the operator, not the client. */
        duet_log_warn("gateway: request %s: Redis unavailable: %s", s->id,
                      st ? duet_state_last_error(st) : "cannot connect");
        snprintf(err, err_cap, "gateway: Redis unavailable");
    }
    pthread_mutex_unlock(&gw->store_mu);
    return status == DUET_ERR_INVALID ? DUET_ERR_INVALID : status == DUET_OK ? DUET_OK : DUET_ERR_UNAVAILABLE;
}

/* Moves the record from `from` to `to`; errors are logged here, once. */
static duet_status_t record_move(gw_t *gw, const char *id, duet_req_state_t from, duet_req_state_t to,
                                 const duet_state_req_update_t *up, duet_req_state_t *found_p)
{
    pthread_mutex_lock(&gw->store_mu);
    duet_state_t *st = NULL;
    duet_status_t status = DUET_ERR_UNAVAILABLE;
    for (int attempt = 0; attempt < REDIS_TRIES && status == DUET_ERR_UNAVAILABLE; attempt++) {
        st = store_locked(gw);
        status = st ? duet_state_req_transition(st, id, from, to, up, found_p) : DUET_ERR_UNAVAILABLE;
    }
    if (status != DUET_OK && status != DUET_ERR_INVALID)   /* a refusal is the caller's to judge */
        duet_log_warn("gateway: request %s: %s -> %s: %s (%s)", id, duet_state_req_state_name(from),
                      duet_state_req_state_name(to), duet_status_str(status),
                      st ? duet_state_last_error(st) : "Redis unreachable");
    pthread_mutex_unlock(&gw->store_mu);
    return status;
}

/* Moves the record to `to` from `from`, or from the non-terminal state it is found in when that
 * differs (the decode side may have moved it meanwhile). *found_p: the state last found. */
static duet_status_t record_follow(gw_t *gw, const char *id, duet_req_state_t from, duet_req_state_t to,
                                   const duet_state_req_update_t *up, duet_req_state_t *found_p)
{
    duet_status_t status = DUET_ERR_INVALID;
    for (int tries = 0; tries < 3; tries++) {
        *found_p = DUET_REQ_NONE;
        status = record_move(gw, id, from, to, up, found_p);
        if (status != DUET_ERR_INVALID || *found_p == DUET_REQ_NONE || *found_p == from ||
            duet_state_req_state_is_terminal(*found_p))
            break;
        from = *found_p;
    }
    return status;
}

/* Ends a record the decode service did not end (never reached, or gone). Best effort: refused
 * when the record has ended already. */
static void record_end(gw_t *gw, const char *id, duet_req_state_t from, duet_req_state_t to,
                       const char *error)
{
    duet_state_req_update_t up = DUET_STATE_REQ_UPDATE_INIT;
    up.error = error;
    up.finish_reason = to == DUET_REQ_CANCELLED ? "cancelled" : "error";
    duet_req_state_t found;
    record_follow(gw, id, from, to, &up, &found);
}

/* ---- routing -------------------------------------------------------------------------------- */

/* The scheduler to ask: --scheduler, or a live one from Redis, picked at random. */
static duet_status_t find_scheduler(gw_t *gw, char *addr, size_t cap)
{
    if (gw->conf->scheduler && gw->conf->scheduler[0]) {
        snprintf(addr, cap, "%s", gw->conf->scheduler);
        return DUET_OK;
    }
    duet_state_inst_t *insts = NULL;
    int n = 0;
    duet_status_t status = DUET_ERR_UNAVAILABLE;
    pthread_mutex_lock(&gw->store_mu);
    for (int attempt = 0; attempt < REDIS_TRIES && status == DUET_ERR_UNAVAILABLE; attempt++) {
        duet_state_t *st = store_locked(gw);
        status = st ? duet_state_inst_list(st, DUET_ROLE_SCHEDULER, &insts, &n) : DUET_ERR_UNAVAILABLE;
    }
    pthread_mutex_unlock(&gw->store_mu);
    if (status != DUET_OK)
        return DUET_ERR_UNAVAILABLE;
    if (n == 0)
        return DUET_ERR_NOT_FOUND;
    uint32_t r = 0;
    if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r)
        r = (uint32_t)mono_ms();
    snprintf(addr, cap, "%s", insts[r % (uint32_t)n].grpc_addr);
    duet_state_inst_list_free(insts);
    return DUET_OK;
}

static int64_t ms_left(const slot_t *s)
{
    return s->deadline_ms == INT64_MAX ? INT64_MAX : s->deadline_ms - mono_ms();
}

/* Asks the scheduler for a placement. On failure returns the status for the client and the
 * reason in err. */
static duet_status_t route(gw_t *gw, slot_t *s, uint32_t attempt, uint32_t n_generated, char **exclude,
                           size_t n_exclude, Duet__V1__RouteResponse **resp_p, char *err, size_t err_cap)
{
    char addr[DUET_STATE_ADDR_MAX];
    duet_status_t status = find_scheduler(gw, addr, sizeof addr);
    if (status != DUET_OK) {
        snprintf(err, err_cap, status == DUET_ERR_NOT_FOUND ? "no live scheduler" : "gateway: Redis unavailable");
        return DUET_ERR_UNAVAILABLE;
    }
    int64_t timeout = gw->conf->route_timeout_ms, left = ms_left(s);
    if (left <= 0) {
        snprintf(err, err_cap, "deadline exceeded before routing");
        return DUET_ERR_DEADLINE;
    }
    if (left < timeout)
        timeout = left;
    Duet__V1__RouteRequest rq = DUET__V1__ROUTE_REQUEST__INIT;
    rq.request_id = s->id;
    rq.prompt_tokens = (uint32_t)s->n_prompt + n_generated;   /* a retry recomputes those too */
    rq.max_tokens = s->max_tokens - n_generated;
    rq.attempt = attempt;
    rq.n_exclude_instances = n_exclude;
    rq.exclude_instances = exclude;
    char msg[MSG_MAX] = "";
    duet_rpc_opts_t opts = {.timeout_ms = timeout, .error = msg, .error_size = sizeof msg,
                            .retry_after_ms = &s->retry_after_ms};
    ProtobufCMessage *resp = NULL;
    status = duet_rpc_client_unary(gw->client, addr, "/duet.v1.Scheduler/Route", &rq.base,
                                   &duet__v1__route_response__descriptor, &opts, &resp);
    if (status == DUET_OK) {
        Duet__V1__RouteResponse *r = (Duet__V1__RouteResponse *)resp;
        if (r->decode_address && r->decode_address[0]) {
            *resp_p = r;
            return DUET_OK;
        }
        protobuf_c_message_free_unpacked(resp, NULL);
        snprintf(err, err_cap, "scheduler at %s returned no decode instance", addr);
        return DUET_ERR_UNAVAILABLE;
    }
    if (status == DUET_ERR_EXHAUSTED && s->retry_after_ms >= 0) {
        snprintf(err, err_cap, "%s; retry after %lld ms", msg[0] ? msg : duet_status_str(status),
                 (long long)s->retry_after_ms);
        return status;
    }
    if (status == DUET_ERR_EXHAUSTED || status == DUET_ERR_UNAVAILABLE) {
        snprintf(err, err_cap, "%s", msg[0] ? msg : duet_status_str(status));
        return status;
    }
    if (status == DUET_ERR_DEADLINE && ms_left(s) <= 0) {
        snprintf(err, err_cap, "deadline exceeded while routing");
        return DUET_ERR_DEADLINE;
    }
    /* Our own route timeout, or the scheduler failing otherwise: it is a dependency being down. */
    snprintf(err, err_cap, "scheduler at %s: %s%s%s", addr, duet_status_str(status), msg[0] ? ": " : "", msg);
    return DUET_ERR_UNAVAILABLE;
}

/* ---- the relay ------------------------------------------------------------------------------ */

/* Where the held-back text may be released (text.h), with the request's stop strings. */
static size_t stop_scan(const Duet__V1__GenerateRequest *req, const duet_text_buf_t *text, int *matched_p)
{
    const Duet__V1__StopParams *sp = req->stop;
    return duet_text_stop_scan(sp ? sp->stop : NULL, sp ? sp->n_stop : 0, text->p, text->len, matched_p);
}

typedef struct {
    duet_text_buf_t text;  /* detokenized, not yet released (held back for stop strings) */
    duet_text_buf_t all;   /* Complete: everything released */
    uint32_t *ids;         /* Complete: every token; Generate: this step's */
    size_t n_ids, cap_ids;
    duet_detok_t detok;
    uint32_t *gen;         /* [n_generated]: every token so far, re-sent to decode on a retry */
    uint32_t n_generated, cap_gen;
} relay_t;

static int relay_add_gen(relay_t *r, const uint32_t *ids, size_t n)
{
    if (r->n_generated + n > r->cap_gen) {
        size_t cap = r->cap_gen ? r->cap_gen * 2 : 64;
        while (cap < r->n_generated + n)
            cap *= 2;
        uint32_t *p = realloc(r->gen, cap * sizeof *p);
        if (!p)
            return -1;
        r->gen = p;
        r->cap_gen = (uint32_t)cap;
    }
    memcpy(r->gen + r->n_generated, ids, n * sizeof *ids);
    return 0;   /* n_generated grows as the tokens are detokenized */
}

static int relay_add_ids(relay_t *r, const uint32_t *ids, size_t n)
{
    if (n == 0)
        return 0;   /* a message may carry no token (ids is then NULL) */
    if (relay_add_gen(r, ids, n) != 0)
        return -1;
    if (r->n_ids + n > r->cap_ids) {
        size_t cap = r->cap_ids ? r->cap_ids * 2 : 64;
        while (cap < r->n_ids + n)
            cap *= 2;
        uint32_t *p = realloc(r->ids, cap * sizeof *p);
        if (!p)
            return -1;
        r->ids = p;
        r->cap_ids = cap;
    }
    memcpy(r->ids + r->n_ids, ids, n * sizeof *ids);
    r->n_ids += n;
    return 0;
}

/* Sends one step to a streaming client: text[0..n) and this step's token ids. A slow client makes
 * the worker wait here (and so the decode stream, through gRPC flow control) rather than queue
 * without bound. */
static duet_status_t send_step(slot_t *s, relay_t *r, size_t n, Duet__V1__FinishReason finish,
                               Duet__V1__Usage *usage)
{
    char save = r->text.p ? r->text.p[n] : '\0';
    Duet__V1__GenerateResponse m = DUET__V1__GENERATE_RESPONSE__INIT;
    m.request_id = s->id;
    if (r->text.p)
        r->text.p[n] = '\0';
    m.text = r->text.p ? r->text.p : "";
    m.n_token_ids = r->n_ids;
    m.token_ids = r->ids;
    m.finish_reason = finish;
    m.usage = usage;
    duet_status_t status = duet_rpc_stream_write(s->call, &m.base);
    if (r->text.p)
        r->text.p[n] = save;
    duet_text_buf_consume(&r->text, n);
    r->n_ids = 0;
    while (status == DUET_OK && duet_rpc_stream_pending(s->call) > PENDING_MAX_MSGS &&
           !duet_rpc_stream_cancelled(s->call)) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return status;
}

/* Releases text[0..n): to the client (Generate) or to the accumulated answer (Complete). */
static duet_status_t release(slot_t *s, relay_t *r, size_t n, Duet__V1__FinishReason finish,
                             Duet__V1__Usage *usage)
{
    if (!s->unary)
        return send_step(s, r, n, finish, usage);
    if (duet_text_buf_append(&r->all, r->text.p ? r->text.p : "", n) != 0)
        return DUET_ERR_NOMEM;
    duet_text_buf_consume(&r->text, n);
    return DUET_OK;
}

/* Opens the decode stream and relays it until the end. Returns the call's final status; err
 * holds a message for a failure; *produced_p says whether any token arrived. */
static duet_status_t relay(gw_t *gw, slot_t *s, const Duet__V1__RouteResponse *rr, uint32_t attempt,
                           relay_t *r, Duet__V1__FinishReason *finish_p, Duet__V1__Usage *usage,
                           int *produced_p, char *err, size_t err_cap)
{
    const Duet__V1__GenerateRequest *req = s->req;
    duet_gateway_decode_msg_t dmsg;
    duet_gateway_decode_request(req, s->id, s->prompt, s->n_prompt, s->max_tokens, &dmsg);
    Duet__V1__DecodeRequest dr = dmsg.decode;
    dr.attempt = attempt;
    dr.n_generated_token_ids = r->n_generated;
    dr.generated_token_ids = r->gen;
    dr.prefill_instance_id = (char *)str_or_empty(rr->prefill_instance_id);
    dr.prefill_address = (char *)str_or_empty(rr->prefill_address);

    int64_t left = ms_left(s);
    duet_rpc_opts_t opts = {.timeout_ms = left == INT64_MAX ? 0 : left > 0 ? left : 1};
    duet_rpc_client_stream_t *ds = NULL;
    duet_status_t status = duet_rpc_client_stream_open(gw->client, rr->decode_address, "/duet.v1.Decode/Generate",
                                                       &dr.base, &duet__v1__decode_response__descriptor, &opts, &ds);
    if (status != DUET_OK) {
        snprintf(err, err_cap, "cannot open the decode stream to %s: %s", rr->decode_address, duet_status_str(status));
        return DUET_ERR_UNAVAILABLE;
    }
    /* Publish the stream to the cancel callback, then look once ourselves: whichever of the two
     * comes second sees the other's write, so a cancel is never lost. */
    pthread_mutex_lock(&s->mu);
    s->dstream = ds;
    s->idle_cut = 0;
    pthread_mutex_unlock(&s->mu);
    if (duet_rpc_stream_cancelled(s->call))
        duet_rpc_client_stream_cancel(ds);

    Duet__V1__FinishReason finish = DUET__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED;
    int cut_by_stop = 0;
    for (;;) {
        ProtobufCMessage *msg = NULL;
        atomic_store(&s->progress_ns, duet_clock_ns());   /* waiting on decode from now */
        status = duet_rpc_client_stream_read(ds, &msg);
        atomic_store(&s->progress_ns, INT64_MAX);         /* not waiting (a slow client is not decode's fault) */
        if (status != DUET_OK) {
            pthread_mutex_lock(&s->mu);
            int idle_cut = s->idle_cut;
            pthread_mutex_unlock(&s->mu);
            if (duet_rpc_stream_cancelled(s->call)) {
                status = DUET_ERR_CANCELLED;
            } else if (idle_cut) {
                snprintf(err, err_cap, "decode %s sent nothing for %d ms", rr->decode_instance_id,
                         gw->conf->decode_idle_timeout_ms);
                status = DUET_ERR_UNAVAILABLE;
                break;
            } else if (status == DUET_ERR_CANCELLED) {
                status = DUET_ERR_UNAVAILABLE;   /* not by us or the client: the decode server is going away */
            }
            snprintf(err, err_cap, "decode %s: %s", rr->decode_instance_id,
                     duet_rpc_client_stream_error(ds)[0] ? duet_rpc_client_stream_error(ds) : duet_status_str(status));
            break;
        }
        if (!msg) {   /* ended OK without a last message naming the reason */
            if (finish == DUET__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED)
                finish = DUET__V1__FINISH_REASON__FINISH_REASON_STOP;
            break;
        }
        const Duet__V1__DecodeResponse *dm = (const Duet__V1__DecodeResponse *)msg;
        if (relay_add_ids(r, dm->token_ids, dm->n_token_ids) != 0)
            status = DUET_ERR_NOMEM;
        for (size_t i = 0; i < dm->n_token_ids && status == DUET_OK; i++) {
            char piece[DUET_DETOK_MAX_PIECE];
            size_t len = duet_detok_push(&r->detok, gw->tok, (int32_t)dm->token_ids[i], 0, piece);
            r->n_generated++;
            if (duet_text_buf_append(&r->text, piece, len) != 0)
                status = DUET_ERR_NOMEM;
        }
        if (dm->n_token_ids) {
            *produced_p = 1;
            s->t_last_ns = duet_clock_ns();
            if (!s->t_first_ns) {
                s->t_first_ns = s->t_last_ns;
                queue_leave(s);   /* streaming now: no longer counts against --max-queued */
            }
            s->n_out += (uint32_t)dm->n_token_ids;
        }
        if (dm->finish_reason != DUET__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED) {
            finish = dm->finish_reason;
            if (dm->usage) {
                usage->completion_tokens = dm->usage->completion_tokens;
                usage->cached_prompt_tokens = dm->usage->cached_prompt_tokens;
            }
        }
        protobuf_c_message_free_unpacked(msg, NULL);
        if (status != DUET_OK) {
            snprintf(err, err_cap, "gateway: out of memory");
            break;
        }
        int matched;
        size_t safe = stop_scan(req, &r->text, &matched);
        if (matched) {
            r->text.len = safe;   /* the stop string and all after it are dropped */
            if (r->text.p)
                r->text.p[safe] = '\0';
            finish = DUET__V1__FINISH_REASON__FINISH_REASON_STOP;
            cut_by_stop = 1;
            /* The request is done: say so in its record before the cancel, which decode would
             * otherwise record as CANCELLED (it refuses to once the record has ended). */
            duet_state_req_update_t up = DUET_STATE_REQ_UPDATE_INIT;
            up.generated_tokens = r->n_generated;
            up.finish_reason = "stop";
            record_move(gw, s->id, DUET_REQ_DECODING, DUET_REQ_DONE, &up, NULL);
            duet_rpc_client_stream_cancel(ds);
            break;
        }
        if (finish != DUET__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED)
            break;
        if (!s->unary && safe == 0 && r->n_ids == 0)
            continue;   /* nothing to say yet */
        if ((status = release(s, r, safe, DUET__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED, NULL)) != DUET_OK) {
            snprintf(err, err_cap, "client gone");
            break;
        }
    }
    pthread_mutex_lock(&s->mu);
    s->dstream = NULL;
    pthread_mutex_unlock(&s->mu);
    duet_rpc_client_stream_close(ds);
    if (status != DUET_OK)
        return status;
    if (!cut_by_stop) {
        char tail[8];
        size_t n = duet_detok_flush(&r->detok, tail);
        if (duet_text_buf_append(&r->text, tail, n) != 0) {
            snprintf(err, err_cap, "gateway: out of memory");
            return DUET_ERR_NOMEM;
        }
        int matched;
        size_t safe = stop_scan(req, &r->text, &matched);
        if (matched) {
            r->text.len = safe;
            r->text.p[safe] = '\0';
            finish = DUET__V1__FINISH_REASON__FINISH_REASON_STOP;
            cut_by_stop = 1;
        }
    }
    if (cut_by_stop || attempt > 0 || usage->completion_tokens == 0)
        usage->completion_tokens = r->n_generated;   /* decode's count misses a cut or a retry */
    *finish_p = finish;
    return DUET_OK;
}

/* Ends the client's call (stream or deferred unary) with status and an optional message. The
 * slot forgets the call first: once finished it may be freed at any moment, and a late cancel
 * callback of an earlier request must not look at it. */
static void finish_call(slot_t *s, duet_status_t status, const char *msg)
{
    gw_t *gw = s->gw;
    duet_metrics_outcome(&gw->outcomes, status);
    if (status == DUET_OK && s->t_first_ns) {
        duet_metric_observe(gw->ttft, (s->t_first_ns - s->t_begin_ns) / 1e9);
        duet_metric_observe(gw->e2e, (duet_clock_ns() - s->t_begin_ns) / 1e9);
        if (s->n_out > 1)
            duet_metric_observe(gw->tpot, (s->t_last_ns - s->t_first_ns) / 1e9 / (s->n_out - 1));
    }
    duet_rpc_call_t *call = s->call;
    pthread_mutex_lock(&s->mu);
    s->call = NULL;
    pthread_mutex_unlock(&s->mu);
    if (status == DUET_ERR_EXHAUSTED && s->retry_after_ms >= 0)   /* passed on from the scheduler */
        duet_rpc_call_set_retry_after(call, s->retry_after_ms);
    if (s->unary)
        duet_rpc_call_finish(call, status, msg && *msg ? "%s" : NULL, msg);
    else
        duet_rpc_stream_finish(call, status, msg && *msg ? "%s" : NULL, msg);
}

/* The worker: everything after validation, up to finishing the call. A decode instance that
 * becomes unreachable mid-request is excluded and the request placed again (up to --max-retries
 * times), with the tokens already streamed re-sent so the new instance continues after them. */
static void serve(gw_t *gw, slot_t *s)
{
    char err[MSG_MAX] = "";
    Duet__V1__RouteResponse *rr = NULL;
    relay_t r;
    memset(&r, 0, sizeof r);
    duet_detok_init(&r.detok);
    Duet__V1__Usage usage = DUET__V1__USAGE__INIT;
    usage.prompt_tokens = (uint32_t)s->n_prompt;
    Duet__V1__FinishReason finish = DUET__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED;
    char **exclude = calloc((size_t)gw->conf->max_retries + 1, sizeof *exclude);
    size_t n_exclude = 0;
    duet_req_state_t at = DUET_REQ_QUEUED;   /* where the record is, as far as we know */

    duet_status_t status = exclude ? record_create(gw, s, !s->req->request_id || !s->req->request_id[0], err, sizeof err)
                                   : DUET_ERR_NOMEM;
    if (status != DUET_OK) {
        duet_log_warn("gateway: request %s: %s", s->id, status == DUET_ERR_NOMEM ? "out of memory" : err);
        finish_call(s, status, err);
        free(exclude);
        return;
    }
    for (uint32_t attempt = 0;; attempt++) {
        status = route(gw, s, attempt, r.n_generated, exclude, n_exclude, &rr, err, sizeof err);
        if (status == DUET_OK && duet_rpc_stream_cancelled(s->call)) {
            status = DUET_ERR_CANCELLED;
            snprintf(err, sizeof err, "cancelled by the client");
        }
        if (status != DUET_OK) {
            duet_log_warn("gateway: request %s: not routed: %s", s->id, err);
            record_end(gw, s->id, at, status == DUET_ERR_CANCELLED ? DUET_REQ_CANCELLED : DUET_REQ_FAILED, err);
            goto out;
        }
        duet_state_req_update_t up = DUET_STATE_REQ_UPDATE_INIT;
        up.decode_inst = rr->decode_instance_id;
        /* Local prefill (mixed instance, or no prefill instance up): the decode instance prefills. */
        up.prefill_inst = rr->prefill_instance_id && rr->prefill_instance_id[0] ? rr->prefill_instance_id
                                                                                : rr->decode_instance_id;
        duet_req_state_t found = DUET_REQ_NONE;
        status = record_follow(gw, s->id, at, DUET_REQ_ROUTED, &up, &found);
        if (status != DUET_OK) {
            /* On a retry a refusal means the record has ended meanwhile (the decode side failed
             * it): the request is over, with the error that made us retry. */
            if (attempt == 0 || found == DUET_REQ_NONE || !duet_state_req_state_is_terminal(found))
                snprintf(err, sizeof err, "gateway: cannot record the placement: %s", duet_status_str(status));
            duet_log_warn("gateway: request %s: %s", s->id, err);
            record_end(gw, s->id, at, DUET_REQ_FAILED, err);
            status = DUET_ERR_UNAVAILABLE;
            goto out;
        }
        at = DUET_REQ_ROUTED;
        duet_log_debug("gateway: request %s: attempt %u, %d prompt + %u generated tokens -> decode %s, prefill %s",
                       s->id, attempt, s->n_prompt, r.n_generated, rr->decode_instance_id,
                       rr->prefill_instance_id[0] ? rr->prefill_instance_id : "(local)");
        int produced = 0;
        status = relay(gw, s, rr, attempt, &r, &finish, &usage, &produced, err, sizeof err);
        if (status == DUET_OK)
            break;
        if (status == DUET_ERR_CANCELLED) {
            duet_log_info("gateway: request %s: cancelled (client gone, deadline passed or shutting down)", s->id);
            if (!produced)   /* else decode has seen the cancel and ends the record itself */
                record_end(gw, s->id, at, DUET_REQ_CANCELLED, "cancelled by the client");
            goto out;
        }
        if (status == DUET_ERR_UNAVAILABLE && (int)attempt < gw->conf->max_retries &&
            r.n_generated < s->max_tokens && !duet_rpc_stream_cancelled(s->call)) {
            duet_log_warn("gateway: request %s: %s; placing it again (%u tokens so far)", s->id, err, r.n_generated);
            exclude[n_exclude++] = strdup(rr->decode_instance_id);
            if (!exclude[n_exclude - 1])
                n_exclude--;
            protobuf_c_message_free_unpacked(&rr->base, NULL);
            rr = NULL;
            at = DUET_REQ_DECODING;   /* a guess: record_follow moves it from wherever it is */
            continue;
        }
        /* A dead decode instance cannot end its record: do it here (refused if it already did). */
        duet_log_warn("gateway: request %s: %s", s->id, err);
        record_end(gw, s->id, at, DUET_REQ_FAILED, err);
        goto out;
    }
    if (s->unary) {
        if ((status = release(s, &r, r.text.len, finish, &usage)) != DUET_OK)
            goto out;
        Duet__V1__CompleteResponse cr = DUET__V1__COMPLETE_RESPONSE__INIT;
        cr.request_id = s->id;
        cr.text = r.all.p ? r.all.p : "";
        cr.n_token_ids = r.n_ids;
        cr.token_ids = r.ids;
        cr.finish_reason = finish;
        cr.usage = &usage;
        status = duet_rpc_call_reply(s->call, &cr.base);
    } else {
        status = send_step(s, &r, r.text.len, finish, &usage);
    }
    err[0] = '\0';
out:
    finish_call(s, status, err);
    if (rr)
        protobuf_c_message_free_unpacked(&rr->base, NULL);
    for (size_t i = 0; i < n_exclude; i++)
        free(exclude[i]);
    free(exclude);
    duet_text_buf_free(&r.text);
    duet_text_buf_free(&r.all);
    free(r.ids);
    free(r.gen);
}

/* Cuts every decode stream that has been silent for --decode-idle-timeout-ms: a hung instance
 * (stopped, livelocked, cut off without a reset) would otherwise hold its requests forever. The
 * worker reading it sees the cut and moves the request elsewhere. */
static void *watchdog_main(void *arg)
{
    gw_t *gw = arg;
    int64_t limit_ns = (int64_t)gw->conf->decode_idle_timeout_ms * 1000000;
    pthread_mutex_lock(&gw->mu);
    while (!gw->watchdog_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200 * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&gw->watchdog_cv, &gw->mu, &ts);
        if (gw->watchdog_stop)
            break;
        pthread_mutex_unlock(&gw->mu);
        int64_t now = duet_clock_ns();
        for (int i = 0; i < gw->conf->max_streams; i++) {
            slot_t *s = &gw->slots[i];
            int64_t since = atomic_load(&s->progress_ns);
            if (since == INT64_MAX || now - since < limit_ns)
                continue;
            pthread_mutex_lock(&s->mu);
            since = atomic_load(&s->progress_ns);
            if (s->dstream && !s->idle_cut && since != INT64_MAX && now - since >= limit_ns) {
                s->idle_cut = 1;
                duet_log_warn("gateway: request %s: its decode stream sent nothing for %d ms; giving it up",
                              s->id, gw->conf->decode_idle_timeout_ms);
                duet_rpc_client_stream_cancel(s->dstream);
            }
            pthread_mutex_unlock(&s->mu);
        }
        pthread_mutex_lock(&gw->mu);
    }
    pthread_mutex_unlock(&gw->mu);
    return NULL;
}

static void *worker_main(void *arg)
{
    slot_t *s = arg;
    gw_t *gw = s->gw;
    serve(gw, s);   /* finishes the call */
    free(s->prompt);
    s->prompt = NULL;
    s->req = NULL;
    pthread_mutex_lock(&gw->mu);
    gw->queued -= s->queued;
    s->queued = 0;
    s->busy = 0;
    gw->active--;
    pthread_cond_broadcast(&gw->idle);
    pthread_mutex_unlock(&gw->mu);
    return NULL;
}

/* Runs on a completion-queue thread. A callback for an earlier request of this slot finds the
 * current call not cancelled (or no call) and does nothing. */
static void on_client_cancel(void *arg)
{
    slot_t *s = arg;
    pthread_mutex_lock(&s->mu);
    if (s->call && duet_rpc_stream_cancelled(s->call) && s->dstream)
        duet_rpc_client_stream_cancel(s->dstream);
    pthread_mutex_unlock(&s->mu);
}

/* ---- validation and tokenization (request.c) ----------------------------------------------- */

/* What request.c checks a request against: borrowed from gw. */
static duet_gateway_model_t model_of(const gw_t *gw)
{
    return (duet_gateway_model_t){gw->tok, &gw->chat, gw->model_id, gw->model_file, gw->ctx, gw->n_vocab};
}

/* ---- handlers ------------------------------------------------------------------------------- */

/* Takes a free slot (joining the thread that last used it, which has finished or is just
 * returning), counted as queued until its first token; NULL when --max-streams are busy or
 * --max-queued requests are already waiting (the refusal's text in err). */
static slot_t *slot_acquire(gw_t *gw, char *err, size_t cap)
{
    slot_t *s = NULL;
    pthread_mutex_lock(&gw->mu);
    if (gw->conf->max_queued > 0 && gw->queued >= gw->conf->max_queued) {
        snprintf(err, cap, "gateway: %d requests already waiting for their first token (--max-queued)",
                 gw->queued);
        pthread_mutex_unlock(&gw->mu);
        return NULL;
    }
    for (int i = 0; i < gw->conf->max_streams && !s; i++)
        if (!gw->slots[i].busy)
            s = &gw->slots[i];
    if (s) {
        s->busy = 1;
        s->queued = 1;
        gw->active++;
        gw->queued++;
    } else {
        snprintf(err, cap, "gateway: %d streams already active (--max-streams)", gw->conf->max_streams);
    }
    pthread_mutex_unlock(&gw->mu);
    if (s && s->joinable) {
        pthread_join(s->thread, NULL);
        s->joinable = 0;
    }
    return s;
}

static void slot_release(gw_t *gw, slot_t *s)
{
    free(s->prompt);
    s->prompt = NULL;
    pthread_mutex_lock(&s->mu);
    s->call = NULL;
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_lock(&gw->mu);
    gw->queued -= s->queued;
    s->queued = 0;
    s->busy = 0;
    gw->active--;
    pthread_cond_broadcast(&gw->idle);
    pthread_mutex_unlock(&gw->mu);
}

/* Validates and starts a Generate (unary = 0) or Complete (unary = 1). On failure returns the
 * status with the message set on the call; DUET_OK means a worker now owns the call. */
static duet_status_t begin(gw_t *gw, duet_rpc_call_t *call, const Duet__V1__GenerateRequest *req, int unary)
{
    int key;
    duet_status_t status = authenticate_key(gw, call, &key);
    if (status != DUET_OK)
        return status;
    int64_t wait_ms = duet_ratelimit_take(&gw->rate, key, duet_clock_ns());
    if (wait_ms > 0) {
        duet_rpc_call_set_retry_after(call, wait_ms);
        duet_rpc_call_set_error(call, "gateway: rate limit of %g requests/s (burst %g) reached; retry after %lld ms",
                                gw->rate.rate, gw->rate.burst, (long long)wait_ms);
        return DUET_ERR_EXHAUSTED;
    }
    duet_gateway_request_t tmp;
    char err[MSG_MAX];
    duet_gateway_model_t m = model_of(gw);
    memset(&tmp, 0, sizeof tmp);
    if ((status = duet_gateway_request_prepare(&m, req, &tmp, err, sizeof err)) != DUET_OK) {
        duet_rpc_call_set_error(call, "%s", status == DUET_ERR_NOMEM ? "gateway: out of memory" : err);
        return status;
    }
    if (gw->conf->max_prompt_tokens > 0 && tmp.n_prompt > gw->conf->max_prompt_tokens) {
        /* No retry hint: the same prompt will never fit. */
        duet_rpc_call_set_error(call, "prompt: %d tokens, more than this gateway's limit of %d (--max-prompt-tokens)",
                                tmp.n_prompt, gw->conf->max_prompt_tokens);
        free(tmp.prompt);
        return DUET_ERR_EXHAUSTED;
    }
    slot_t *s = slot_acquire(gw, err, sizeof err);
    if (!s) {
        free(tmp.prompt);
        duet_log_warn("gateway: request %s: refused: %s", tmp.id, err);
        duet_rpc_call_set_retry_after(call, gw->conf->busy_retry_ms);
        duet_rpc_call_set_error(call, "%s; retry after %d ms", err, gw->conf->busy_retry_ms);
        return DUET_ERR_EXHAUSTED;
    }
    s->unary = unary;
    s->req = req;
    s->t_begin_ns = duet_clock_ns();
    s->t_first_ns = s->t_last_ns = 0;
    s->n_out = 0;
    s->retry_after_ms = -1;
    memcpy(s->id, tmp.id, sizeof s->id);
    s->prompt = tmp.prompt;
    s->n_prompt = tmp.n_prompt;
    s->max_tokens = tmp.max_tokens;
    int64_t left = duet_rpc_call_remaining_ms(call);
    s->deadline_ms = left == INT64_MAX ? INT64_MAX : mono_ms() + left;
    pthread_mutex_lock(&s->mu);
    s->call = call;
    pthread_mutex_unlock(&s->mu);
    if (unary)
        duet_rpc_call_defer(call);
    duet_rpc_stream_on_cancel(call, on_client_cancel, s);
    /* Created under gw->mu, which the worker takes to release the slot: whoever acquires the
     * slot next sees thread and joinable as written here. */
    pthread_mutex_lock(&gw->mu);
    int failed = pthread_create(&s->thread, NULL, worker_main, s) != 0;
    s->joinable = !failed;
    pthread_mutex_unlock(&gw->mu);
    if (failed) {
        duet_log_error("gateway: request %s: cannot start a worker thread", s->id);
        slot_release(gw, s);
        if (!unary)
            duet_rpc_call_set_error(call, "gateway: cannot start a worker thread");
        else
            duet_rpc_call_finish(call, DUET_ERR_EXHAUSTED, "gateway: cannot start a worker thread");
        return DUET_ERR_EXHAUSTED;
    }
    return DUET_OK;
}

static void on_generate(duet_rpc_stream_t *stream, const ProtobufCMessage *request, void *arg)
{
    gw_t *gw = arg;
    duet_status_t status = begin(gw, stream, (const Duet__V1__GenerateRequest *)request, 0);
    if (status != DUET_OK) {
        duet_metrics_outcome(&gw->outcomes, status);
        duet_rpc_stream_finish(stream, status, NULL);
    }
}

static duet_status_t on_complete(duet_rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    duet_status_t status = begin(arg, call, (const Duet__V1__GenerateRequest *)request, 1);
    if (status != DUET_OK)
        duet_metrics_outcome(&((gw_t *)arg)->outcomes, status);
    return status;
}

static duet_status_t on_tokenize(duet_rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    gw_t *gw = arg;
    const Duet__V1__TokenizeRequest *req = (const Duet__V1__TokenizeRequest *)request;
    duet_status_t status = authenticate(gw, call);
    if (status != DUET_OK)
        return status;
    char err[MSG_MAX];
    int32_t *tokens = NULL;
    int n = 0;
    duet_gateway_model_t m = model_of(gw);
    if ((status = duet_gateway_tokenize(&m, req, &tokens, &n, err, sizeof err)) != DUET_OK) {
        duet_rpc_call_set_error(call, "%s", err);
        return status;
    }
    Duet__V1__TokenizeResponse resp = DUET__V1__TOKENIZE_RESPONSE__INIT;
    char **pieces = calloc((size_t)n + 1, sizeof *pieces);
    status = pieces ? DUET_OK : DUET_ERR_NOMEM;
    for (int i = 0; i < n && status == DUET_OK; i++) {
        char bytes[DUET_DETOK_MAX_PIECE];
        int b = duet_tokenizer_token_bytes(gw->tok, tokens[i], bytes, sizeof bytes);
        if (b < 0)
            b = 0;
        if ((size_t)b > sizeof bytes)
            b = (int)sizeof bytes;
        if (!(pieces[i] = duet_text_escape(bytes, (size_t)b)))
            status = DUET_ERR_NOMEM;
    }
    if (status == DUET_OK) {
        resp.n_token_ids = (size_t)n;
        resp.token_ids = (uint32_t *)tokens;
        resp.n_pieces = (size_t)n;
        resp.pieces = pieces;
        status = duet_rpc_call_reply(call, &resp.base);
    }
    for (int i = 0; pieces && i < n; i++)
        free(pieces[i]);
    free(pieces);
    free(tokens);
    return status;
}

static duet_status_t on_model_info(duet_rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    gw_t *gw = arg;
    (void)request;   /* ModelInfoRequest has no fields */
    duet_status_t status = authenticate(gw, call);
    if (status != DUET_OK)
        return status;
    Duet__V1__ModelInfoResponse resp = DUET__V1__MODEL_INFO_RESPONSE__INIT;
    resp.model_id = gw->model_id;
    resp.architecture = gw->arch;
    resp.vocab_size = (uint32_t)gw->n_vocab;
    resp.context_length = (uint32_t)gw->ctx;
    resp.n_eos_token_ids = (size_t)gw->n_eos;
    resp.eos_token_ids = gw->eos_ids;
    int32_t bos = duet_tokenizer_bos(gw->tok);
    resp.bos_token_id = bos < 0 ? 0 : (uint32_t)bos;
    resp.has_chat_template = gw->chat.style != DUET_CHAT_NONE;
    return duet_rpc_call_reply(call, &resp.base);
}

/* ---- service definition --------------------------------------------------------------------- */

/* Loads --api-keys and --api-keys-file as digests. Plain keys are hashed and their text wiped
 * where it lies: in argv or the environment (which hides them from /proc/PID/cmdline too). */
static duet_status_t parse_keys(gw_t *gw, const gw_conf_t *c)
{
    char err[256] = "";
    duet_status_t st = DUET_OK;
    /* The strings point into argv or the environment (the default is empty): writable. */
    if (c->api_keys && c->api_keys[0])
        st = duet_apikeys_add_list(&gw->keys, (char *)c->api_keys, err, sizeof err);
    if (st == DUET_OK && c->api_keys_file && c->api_keys_file[0])
        st = duet_apikeys_add_file(&gw->keys, c->api_keys_file, err, sizeof err);
    if (st != DUET_OK) {
        duet_log_error("gateway: %s", st == DUET_ERR_NOMEM ? "out of memory for the API keys" : err);
        return st;
    }
    if (gw->keys.n_plain)
        duet_log_warn("gateway: %d API key(s) given in plain text: hashed and wiped; configure "
                      "sha256:<hex> digests instead (printf %%s KEY | sha256sum)", gw->keys.n_plain);
    return DUET_OK;
}

/* The vocabulary, chat template and context length; the weights stay untouched on disk. */
static duet_status_t load_model(gw_t *gw, const gw_conf_t *c)
{
    char path_buf[4096], err[512] = "";
    const char *path = duet_model_resolve_path(c->model, path_buf, sizeof path_buf);
    duet_status_t status = duet_gguf_open(path, &gw->gguf, err, sizeof err);
    if (status != DUET_OK) {
        duet_log_error("gateway: %s: %s", path, err[0] ? err : duet_status_str(status));
        return status;
    }
    if ((status = duet_tokenizer_create(gw->gguf, &gw->tok, err, sizeof err)) != DUET_OK) {
        duet_log_error("gateway: %s: tokenizer: %s", path, err[0] ? err : duet_status_str(status));
        return status;
    }
    if ((status = duet_chat_template_init(&gw->chat, gw->gguf)) != DUET_OK) {
        duet_log_error("gateway: %s: chat template: %s", path, duet_status_str(status));
        return status;
    }
    duet_gguf_str_t s;
    const char *base = strrchr(path, '/');
    snprintf(gw->model_file, sizeof gw->model_file, "%.127s", base ? base + 1 : path);
    if (duet_gguf_get_str(gw->gguf, "general.architecture", &s) == DUET_OK)
        snprintf(gw->arch, sizeof gw->arch, "%.*s", (int)(s.len < 63 ? s.len : 63), s.ptr);
    if (duet_gguf_get_str(gw->gguf, "general.name", &s) == DUET_OK && s.len > 0)
        snprintf(gw->model_id, sizeof gw->model_id, "%.*s", (int)(s.len < 127 ? s.len : 127), s.ptr);
    else
        snprintf(gw->model_id, sizeof gw->model_id, "%s", gw->model_file);
    char key[128];
    uint32_t model_ctx = 0;
    snprintf(key, sizeof key, "%s.context_length", gw->arch);
    if (duet_gguf_get_u32(gw->gguf, key, &model_ctx) != DUET_OK || model_ctx == 0 || model_ctx > INT32_MAX / 2) {
        duet_log_warn("gateway: %s: no %s; assuming the configured --ctx", path, key);
        model_ctx = c->ctx > 0 ? (uint32_t)c->ctx : 2048;
    }
    gw->ctx = c->ctx > 0 && (uint32_t)c->ctx < model_ctx ? c->ctx : (int)model_ctx;
    gw->n_vocab = duet_tokenizer_n_vocab(gw->tok);
    for (int pass = 0; pass < 2; pass++) {
        int n = 0;
        for (int32_t id = 0; id < gw->n_vocab; id++) {
            if (duet_tokenizer_is_end(gw->tok, id)) {
                if (pass)
                    gw->eos_ids[n] = (uint32_t)id;
                n++;
            }
        }
        if (!pass && !(gw->eos_ids = calloc((size_t)n + 1, sizeof *gw->eos_ids)))
            return DUET_ERR_NOMEM;
        gw->n_eos = n;
    }
    duet_log_info("gateway: model %s (%s, vocabulary %d, context %d of %u, chat template: %s)", gw->model_id,
                  gw->arch, gw->n_vocab, gw->ctx, model_ctx, gw->chat.style == DUET_CHAT_NONE ? "none" : "yes");
    return DUET_OK;
}

static void gw_stop(void *state);

static duet_status_t gw_start(duet_service_t *svc, const void *conf, void **state_p,
                              const duet_rpc_method_t **methods_p, int *n_methods_p)
{
    const gw_conf_t *c = conf;
    if (c->ctx < 0 || c->route_timeout_ms < 1 || c->max_streams < 1 || c->max_streams > 65536 ||
        c->redis_timeout_ms < 1 || c->max_retries < 0 || c->max_retries > 16 || c->decode_idle_timeout_ms < 1) {
        duet_log_error("gateway: --ctx must be >= 0, --max-streams in 1..65536, --max-retries in 0..16, "
                       "the timeouts at least 1 ms");
        return DUET_ERR_INVALID;
    }
    if (c->max_prompt_tokens < 0 || c->max_queued < 0 || c->busy_retry_ms < 0 || !(c->rate_limit >= 0) ||
        !(c->rate_burst >= 0)) {
        duet_log_error("gateway: --max-prompt-tokens, --max-queued, --busy-retry-ms, --rate-limit and "
                       "--rate-burst must be >= 0");
        return DUET_ERR_INVALID;
    }
    gw_t *gw = calloc(1, sizeof *gw);
    if (!gw)
        return DUET_ERR_NOMEM;
    gw->conf = c;
    duet_metrics_t *m = duet_service_metrics(svc);
    gw->ttft = duet_metrics_histogram(m, "duet_time_to_first_token_seconds",
                                      "Time from accepting a request to its first token.",
                                      duet_metrics_latency_buckets, duet_metrics_n_latency_buckets);
    gw->tpot = duet_metrics_histogram(m, "duet_time_per_output_token_seconds",
                                      "(last token - first token) / (output tokens - 1), per request.",
                                      duet_metrics_latency_buckets, duet_metrics_n_latency_buckets);
    gw->e2e = duet_metrics_histogram(m, "duet_e2e_request_latency_seconds",
                                     "Time from accepting a request to its end.",
                                     duet_metrics_latency_buckets, duet_metrics_n_latency_buckets);
    duet_metrics_outcomes_init(&gw->outcomes, m);
    pthread_mutex_init(&gw->store_mu, NULL);
    pthread_mutex_init(&gw->mu, NULL);
    pthread_cond_init(&gw->idle, NULL);
    pthread_cond_init(&gw->watchdog_cv, NULL);
    duet_status_t status = DUET_ERR_NOMEM;
    gw->slots = calloc((size_t)c->max_streams, sizeof *gw->slots);
    if (!gw->slots)
        goto err;
    for (int i = 0; i < c->max_streams; i++) {
        gw->slots[i].gw = gw;
        atomic_init(&gw->slots[i].progress_ns, INT64_MAX);
        pthread_mutex_init(&gw->slots[i].mu, NULL);
    }
    if ((status = parse_keys(gw, c)) != DUET_OK)
        goto err;
    if ((status = duet_ratelimit_init(&gw->rate, c->rate_limit, c->rate_burst, gw->keys.n)) != DUET_OK)
        goto err;
    if ((status = load_model(gw, c)) != DUET_OK)
        goto err;
    if ((status = duet_rpc_client_create_conf(duet_service_client_conf(svc), &gw->client)) != DUET_OK)
        goto err;
    /* Redis may come later: a failure here is retried on the first request. */
    if (duet_state_connect(c->common.redis, c->redis_timeout_ms, &gw->store) != DUET_OK) {
        gw->store = NULL;
        char url[256];
        duet_state_url_redact(c->common.redis, url, sizeof url);
        duet_log_warn("gateway: Redis at %s is unavailable for now", url);
    }
    gw->methods[0] = (duet_rpc_method_t){"/duet.v1.Gateway/Generate", DUET_RPC_SERVER_STREAM,
                                         &duet__v1__generate_request__descriptor, NULL, on_generate, gw};
    gw->methods[1] = (duet_rpc_method_t){"/duet.v1.Gateway/Complete", DUET_RPC_UNARY,
                                         &duet__v1__generate_request__descriptor, on_complete, NULL, gw};
    gw->methods[2] = (duet_rpc_method_t){"/duet.v1.Gateway/Tokenize", DUET_RPC_UNARY,
                                         &duet__v1__tokenize_request__descriptor, on_tokenize, NULL, gw};
    gw->methods[3] = (duet_rpc_method_t){"/duet.v1.Gateway/ModelInfo", DUET_RPC_UNARY,
                                         &duet__v1__model_info_request__descriptor, on_model_info, NULL, gw};
    if (gw->keys.n == 0)
        duet_log_info("gateway: no API keys configured: every client is accepted");
    else
        duet_log_info("gateway: %d API key(s) (SHA-256 digests)", gw->keys.n);
    if (c->rate_limit > 0)
        duet_log_info("gateway: rate limit %g requests/s, burst %g, %s", gw->rate.rate, gw->rate.burst,
                      gw->keys.n ? "per API key" : "shared by all clients");
    if (pthread_create(&gw->watchdog, NULL, watchdog_main, gw) != 0) {
        status = DUET_ERR_INTERNAL;
        goto err;
    }
    gw->watchdog_running = 1;
    *state_p = gw;
    *methods_p = gw->methods;
    *n_methods_p = 4;
    return DUET_OK;
err:
    gw_stop(gw);
    return status;
}

static void gw_describe(void *state, duet_state_inst_t *info)
{
    gw_t *gw = state;
    snprintf(info->model, sizeof info->model, "%s", gw->model_id);
}

static void gw_load(void *state, duet_state_load_t *load)
{
    gw_t *gw = state;
    pthread_mutex_lock(&gw->mu);
    load->running_seqs = gw->active;
    pthread_mutex_unlock(&gw->mu);
}

/* Runs after the server has stopped: every call is finished, so the workers are returning. */
static void gw_stop(void *state)
{
    gw_t *gw = state;
    if (!gw)
        return;
    pthread_mutex_lock(&gw->mu);
    while (gw->active > 0)
        pthread_cond_wait(&gw->idle, &gw->mu);
    gw->watchdog_stop = 1;
    pthread_cond_signal(&gw->watchdog_cv);
    pthread_mutex_unlock(&gw->mu);
    if (gw->watchdog_running)
        pthread_join(gw->watchdog, NULL);
    for (int i = 0; gw->slots && i < gw->conf->max_streams; i++) {
        if (gw->slots[i].joinable)
            pthread_join(gw->slots[i].thread, NULL);
        pthread_mutex_destroy(&gw->slots[i].mu);
    }
    free(gw->slots);
    duet_state_close(gw->store);
    duet_rpc_client_destroy(gw->client);
    free(gw->eos_ids);
    duet_chat_template_cleanup(&gw->chat);
    duet_tokenizer_destroy(gw->tok);
    duet_gguf_close(gw->gguf);
    duet_apikeys_cleanup(&gw->keys);
    duet_ratelimit_cleanup(&gw->rate);
    pthread_cond_destroy(&gw->idle);
    pthread_cond_destroy(&gw->watchdog_cv);
    pthread_mutex_destroy(&gw->mu);
    pthread_mutex_destroy(&gw->store_mu);
    free(gw);
}

const duet_service_def_t duet_gateway_service = {
    .name = "gateway",
    .summary = "The public gRPC face of duet: validates, tokenizes, routes and relays generation.",
    .opts = gw_opts,
    .n_opts = (int)(sizeof gw_opts / sizeof gw_opts[0]),
    .conf_size = sizeof(gw_conf_t),
    .start = gw_start,
    .describe = gw_describe,
    .load = gw_load,
    .stop = gw_stop,
};
