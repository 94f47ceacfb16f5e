/* services/decode/decode.c — the decode service: owns a paged KV pool registered with UCX, has
 * each prompt prefilled into it (by a prefill instance over UCX, or locally), and streams every
 * token of its continuous batch to Decode.Generate callers.
 *
 * Threads. gRPC completion-queue threads run the Generate handler: it validates, copies the
 * request and queues it. ONE engine thread owns the engine, the kvx (worker, pool) and a Redis
 * store, and is the only one to touch a request after it is queued: it submits, steps the
 * batch, writes and finishes streams, and moves the request record in Redis. Prefill calls
 * block, so each runs on a helper thread of its own that hands its result back through the
 * command queue. Cancellation never crosses threads by pointer: the on_cancel callback only
 * wakes the engine thread, which looks at the streams it owns (duet_rpc_stream_cancelled).
 *
 * A request, on the engine thread (Redis states in brackets, DESIGN.md §1):
 *
 *   queued ─┬─ remote ─▶ WAIT_BLOCKS ─submit_remote─▶ REMOTE ─reply ok─▶ kv_ready ─┐ [PREFILLING]
 *           │             (FIFO)        [PREFILLING]     └─failed─▶ kv_failed ─────┤ (local)
 *           └─ local (mixed, no prefill address, retry with tokens) ─▶ submit ─────┤
 *                                                                                  ▼
 *                                  ENGINE ─first token─▶ [DECODING] ─stop─▶ [DONE]; or
 *                                  [CANCELLED] (client gone) / [FAILED] (error), from any state
 *
 * A failed Prefill call is tried again on another prefill instance (--prefill-retries; the record
 * goes PREFILLING → ROUTED → PREFILLING, attempt + 1) with fresh blocks, else prefilled locally.
 *
 * A request cancelled while its prefill call is out stays in the engine, blocks held, as a
 * "zombie" (stream already finished) until the call returns: the prefill instance may still be
 * writing into those blocks. Blocks of a failed call are quarantined for the same reason: held
 * until that instance answers Prefill.Release with idle (it has no write for the call in flight
 * and will refuse the call if it arrives late), asked twice a second (quarantine.c); one that never
 * answers (dead, or cut off) has its blocks back after --quarantine-max-ms, logged as unproven. */
#include "decode.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <unistd.h>

#include "clock.h"
#include "decode_request.h"
#include "device.h"
#include "duet/v1/decode.pb-c.h"
#include "duet/v1/prefill.pb-c.h"
#include "engine.h"
#include "engine_thread.h"
#include "kvx.h"
#include "log.h"
#include "model.h"
#include "quarantine.h"
#include "state.h"

#define IDLE_WAIT_MS       200   /* longest sleep of an idle engine thread (quarantine expiry) */
#define PREFILL_TRIES_MAX  4     /* prefill instances one request tries at most */
#define KEEPALIVE_MS       1000  /* an empty message on a stream silent this long (queued, prefilling),
                                    so the gateway can tell a waiting request from a hung instance */
#define REDIS_TIMEOUT_MS   500
#define REDIS_RETRY_NS     (1000LL * 1000000)

typedef struct {
    duet_service_common_t common;   /* first: the runtime's options */
    const char *model;
    const char *device;
    int threads;
    int ctx;
    int kv_blocks;
    int max_seqs;
    int max_batch_tokens;
    const char *role;
    const char *ucx_err_mode;
    int prefill_timeout_ms;
    int prefill_retries;
    int quarantine_max_ms;
    const char *kv_transfer;
    int kv_verify;
} decode_conf_t;

#define OPT(flag, env, type, field, def, help) {flag, env, type, offsetof(decode_conf_t, field), def, help}
static const duet_conf_opt_t decode_opts[] = {
    OPT("model", "DUET_MODEL", DUET_CONF_STR, model, NULL,
        "GGUF model file (default: ~/.cache/duet/models/" DUET_DEFAULT_MODEL_FILE ")"),
    OPT("device", "DUET_DEVICE", DUET_CONF_STR, device, "cpu", "compute device: cpu, cuda or cuda:N"),
    OPT("threads", "DUET_THREADS", DUET_CONF_INT, threads, "1", "compute threads (cpu)"),
    OPT("ctx", "DUET_CTX", DUET_CONF_INT, ctx, "2048", "context length (prompt + output); at most the model's"),
    OPT("kv-blocks", "DUET_KV_BLOCKS", DUET_CONF_INT, kv_blocks, "0",
        "KV pool size in 16-token blocks (0: max-seqs requests of ctx/4 tokens each)"),
    OPT("max-seqs", "DUET_MAX_SEQS", DUET_CONF_INT, max_seqs, "64", "sequences in one batch (>= 32)"),
    OPT("max-batch-tokens", "DUET_MAX_BATCH_TOKENS", DUET_CONF_INT, max_batch_tokens, "512",
        "new tokens per step (local prompt chunks are cut to fit)"),
    OPT("role", "DUET_ROLE", DUET_CONF_STR, role, "decode",
        "decode (prompts prefilled remotely) or mixed (also prefills locally)"),
    OPT("ucx-err-mode", "DUET_UCX_ERR_MODE", DUET_CONF_STR, ucx_err_mode, "none",
        "UCX endpoint error handling: none (one host, shared memory) or peer (across hosts)"),
    OPT("prefill-timeout-ms", "DUET_PREFILL_TIMEOUT_MS", DUET_CONF_INT, prefill_timeout_ms, "30000",
        "deadline of a Prefill call"),
    OPT("prefill-retries", "DUET_PREFILL_RETRIES", DUET_CONF_INT, prefill_retries, "1",
        "other prefill instances tried after a Prefill call fails, before prefilling locally (at most 3)"),
    OPT("quarantine-max-ms", "DUET_QUARANTINE_MAX_MS", DUET_CONF_INT, quarantine_max_ms, "60000",
        "blocks of a failed Prefill call come back when its instance proves it stopped writing, or after this long"),
    OPT("kv-transfer", "DUET_KV_TRANSFER", DUET_CONF_STR, kv_transfer, "auto",
        "with a GPU pool: auto (GPU to GPU when UCX has CUDA, else through host memory) or staged (always through host memory)"),
    OPT("kv-verify", "DUET_KV_VERIFY", DUET_CONF_BOOL, kv_verify, "false",
        "check each received prompt KV against the prefill's checksum (reads it back: costs time)"),
};
#undef OPT

typedef enum { PHASE_WAIT_BLOCKS, PHASE_REMOTE, PHASE_ENGINE } phase_t;

/* One Generate call. Built by the handler, owned by the engine thread from the moment it is
 * queued; freed in sink_finish (or where it ends before reaching the engine). */
typedef struct dreq {
    struct decode *d;
    TAILQ_ENTRY(dreq) live_entry;   /* d->live (engine thread) */
    TAILQ_ENTRY(dreq) wait_entry;   /* d->waiting, while phase is PHASE_WAIT_BLOCKS */
    uint64_t serial;                /* unique in this process: prefill results name it */
    char id[DUET_STATE_ID_MAX];
    uint32_t attempt;
    duet_rpc_stream_t *stream;      /* NULL once finished (a zombie waits for its prefill reply) */
    duet_status_t reject;           /* != OK: the handler refused it; message in reject_msg */
    char reject_msg[160];
    int32_t *tokens;                /* [n_prompt + n_resume]: prompt, then earlier output */
    int n_prompt, n_resume;
    uint32_t *stop_ids;             /* [n_stop] */
    int n_stop;
    duet_sampling_t sampling;
    int max_tokens, ignore_eos;
    char prefill_id[DUET_STATE_ID_MAX];
    char prefill_addr[DUET_STATE_ADDR_MAX];
    bool local;                     /* prefill in this engine */
    char tried[PREFILL_TRIES_MAX][DUET_STATE_ID_MAX];   /* prefill instances that failed it */
    int n_tried;

    phase_t phase;
    duet_engine_seq_t *seq;
    int32_t *blocks;                /* [n_blocks] reserved for the remote prefill, and their */
    uint32_t *gens;                 /* generations when handed out */
    int n_blocks;
    duet_req_state_t rstate;        /* where we believe the Redis record is */
    bool redis_warned;
    int64_t kv_bytes;               /* moved into our pool for this request */
    int n_sent;                     /* tokens streamed by this attempt */
    int64_t t_arrival_ns;           /* monotonic: when the handler took it */
    int64_t last_write_ns;          /* monotonic: last message on the stream (or arrival) */
    bool stopped;                   /* a stop token ended it */
    bool client_gone;
} dreq_t;

/* A Prefill call on its helper thread; its result comes back as a command. */
typedef struct pjob {
    struct decode *d;
    pthread_t thread;
    uint64_t serial;
    char id[DUET_STATE_ID_MAX];
    uint32_t attempt;
    char prefill_id[DUET_STATE_ID_MAX];
    char addr[DUET_STATE_ADDR_MAX];
    uint32_t *tokens;
    int n_tokens;
    duet_sampling_t sampling;
    uint32_t *blocks, *gens;
    int n_blocks;
    /* result */
    duet_status_t status;
    int32_t first_token;
    uint64_t kv_bytes;
    uint64_t kv_checksum;
    bool has_kv_checksum;
    char error[256];
} pjob_t;

/* Kinds of duet_cmd_t; arg: a dreq_t (NEW), a pjob_t (PREFILL_DONE), a duet_release_job_t
 * (RELEASE_DONE). */
typedef enum { CMD_NEW, CMD_PREFILL_DONE, CMD_RELEASE_DONE, CMD_DRAIN, CMD_STOP } cmd_kind_t;

typedef struct decode {
    duet_service_t *svc;
    const decode_conf_t *conf;
    duet_inst_role_t role;
    duet_kvx_err_mode_t err_mode;
    duet_backend_t *be;
    duet_model_t *model;
    duet_rpc_client_t *client;
    duet_rpc_method_t methods[1];
    int n_ctx, n_blocks, n_vocab;
    size_t kv_token_bytes;
    atomic_uint_fast64_t next_serial;

    duet_engine_thread_t *thread;   /* owns the engine, the UCX worker and the pool */
    pthread_mutex_t mu;
    pthread_cond_t drained_cv;
    atomic_int cancel_check;        /* a stream was cancelled: look at them all */
    atomic_int stopping;            /* stop() began: new calls are refused */

    /* Published by the engine thread at start (immutable afterwards) and for load(). */
    int drained;                    /* CMD_DRAIN done (under mu, signalled on drained_cv) */
    uint8_t *ucx_addr, *rkey;
    size_t ucx_addr_len, rkey_len;
    uint64_t pool_base;
    uint64_t pool_bytes;
    duet_state_load_t load;         /* under mu */

    /* Engine thread only (the first three are the thread's, kept here for brevity). */
    duet_kvx_t *kvx;
    duet_kvx_pool_t *pool;
    duet_engine_t *engine;
    duet_state_t *store;
    int64_t store_retry_ns;
    bool redis_down;
    bool draining;                  /* CMD_DRAIN seen: new requests are refused */
    bool stop_seen;                 /* CMD_STOP seen: the thread ends once no helper is out */
    TAILQ_HEAD(dreq_list, dreq) live;    /* every request the engine thread holds */
    struct dreq_list waiting;       /* waiting for blocks for a remote prefill, in arrival order */
    int n_helpers;
    int64_t next_keepalive_ns;

    /* Metrics (registered in start, updated by the engine thread). */
    duet_metric_t *m_blocks_free, *m_batch, *m_queue, *m_kv_bytes;
    duet_metric_t *m_kv_verified, *m_kv_mismatch;   /* --kv-verify outcomes */
    duet_metrics_outcomes_t outcomes;
    duet_quarantine_t *quarantine;  /* blocks of failed Prefill calls */
} decode_t;

/* ---- small helpers ------------------------------------------------------------------------ */

/* Queues a command that must not be lost (a helper's result: the blocks depend on it). */
static void push_result(decode_t *d, cmd_kind_t kind, void *arg)
{
    duet_cmd_t *c;
    while (!(c = calloc(1, sizeof *c)))
        usleep(1000);
    c->kind = kind;
    c->arg = arg;
    duet_engine_thread_push(d->thread, c);
}

static void dreq_free(dreq_t *r)
{
    if (!r)
        return;
    free(r->tokens);
    free(r->stop_ids);
    free(r->blocks);
    free(r->gens);
    free(r);
}

static void pjob_free(pjob_t *j)
{
    free(j->tokens);
    free(j->blocks);
    free(j->gens);
    free(j);
}

/* ---- Redis (engine thread) ---------------------------------------------------------------- */

static duet_state_t *store_get(decode_t *d)
{
    if (d->store)
        return d->store;
    int64_t now = duet_clock_ns();
    if (now < d->store_retry_ns)
        return NULL;
    d->store_retry_ns = now + REDIS_RETRY_NS;
    if (duet_state_connect(d->conf->common.redis, REDIS_TIMEOUT_MS, &d->store) != DUET_OK) {
        d->store = NULL;
        if (!d->redis_down)
            duet_log_warn("decode: Redis at %s is unavailable; request records are not updated",
                          d->conf->common.redis);
        d->redis_down = true;
    }
    return d->store;
}

/* Moves the request record to `to`. Never fatal: Redis being down or the record being elsewhere
 * is logged (once per outage, once per request) and the request goes on. */
static void req_move(decode_t *d, dreq_t *r, duet_req_state_t to, const duet_state_req_update_t *u)
{
    if (!r->id[0])
        return;
    duet_state_t *store = store_get(d);
    if (!store)
        return;
    duet_req_state_t found = DUET_REQ_NONE;
    duet_status_t st = duet_state_req_transition(store, r->id, r->rstate, to, u, &found);
    /* Refused because an earlier move was lost (Redis was down): try once more from where the
     * record really is, when that is not already an end. */
    if (st == DUET_ERR_INVALID && found != DUET_REQ_NONE && found != r->rstate &&
        !duet_state_req_state_is_terminal(found))
        st = duet_state_req_transition(store, r->id, found, to, u, &found);
    if (st == DUET_OK) {
        r->rstate = to;
        if (d->redis_down)
            duet_log_info("decode: Redis is back");
        d->redis_down = false;
        return;
    }
    if (st == DUET_ERR_UNAVAILABLE) {
        if (!d->redis_down)
            duet_log_warn("decode: request %s: Redis unavailable (%s); record not moved to %s",
                          r->id, duet_state_last_error(store), duet_state_req_state_name(to));
        d->redis_down = true;
        return;
    }
    if (to == DUET_REQ_CANCELLED && found == DUET_REQ_DONE)
        return;   /* the gateway ended it first (a stop string): the cancel that follows is expected */
    if (!r->redis_warned)
        duet_log_warn("decode: request %s: record not moved to %s: %s (it is %s)", r->id,
                      duet_state_req_state_name(to), duet_status_str(st),
                      found == DUET_REQ_NONE ? "absent" : duet_state_req_state_name(found));
    r->redis_warned = true;
}

/* ---- streams (engine thread) -------------------------------------------------------------- */

/* Ends the client's side of a request that did not finish normally: the record goes to
 * CANCELLED (client gone) or FAILED, and the stream is finished with the status. */
static void end_stream_error(decode_t *d, dreq_t *r, duet_status_t st, const char *msg)
{
    if (!r->stream)
        return;
    duet_metrics_outcome(&d->outcomes, st);
    if (st == DUET_ERR_CANCELLED) {
        req_move(d, r, DUET_REQ_CANCELLED, NULL);
        duet_rpc_stream_finish(r->stream, DUET_ERR_CANCELLED, "%s", msg);
    } else {
        duet_state_req_update_t u = DUET_STATE_REQ_UPDATE_INIT;
        u.error = msg;
        req_move(d, r, DUET_REQ_FAILED, &u);
        duet_rpc_stream_finish(r->stream, st, "%s", msg);
    }
    r->stream = NULL;
}

/* ---- the engine's callbacks (engine thread, inside step / kv_ready / cancel / destroy) ---- */

static int sink_token(void *user, int32_t token)
{
    dreq_t *r = user;
    decode_t *d = r->d;
    if (!r->stream || r->client_gone)
        return 1;
    if (r->n_sent == 0) {
        duet_state_req_update_t u = DUET_STATE_REQ_UPDATE_INIT;
        u.kv_bytes = r->kv_bytes;
        req_move(d, r, DUET_REQ_DECODING, &u);
    }
    uint32_t t = (uint32_t)token;
    Duet__V1__DecodeResponse msg = DUET__V1__DECODE_RESPONSE__INIT;
    msg.n_token_ids = 1;
    msg.token_ids = &t;
    if (duet_rpc_stream_write(r->stream, &msg.base) != DUET_OK) {
        r->client_gone = true;
        return 1;
    }
    r->last_write_ns = duet_clock_ns();
    r->n_sent++;
    for (int i = 0; i < r->n_stop; i++)
        if (r->stop_ids[i] == t) {
            r->stopped = true;   /* streamed like an end-of-generation token, then the end */
            return 1;
        }
    return 0;
}

static void sink_finish(void *user, const duet_gen_result_t *res)
{
    dreq_t *r = user;
    decode_t *d = r->d;
    TAILQ_REMOVE(&d->live, r, live_entry);
    duet_finish_t fin = res->finish;
    if (fin == DUET_FINISH_CANCELLED && r->stopped && !r->client_gone)
        fin = DUET_FINISH_STOP;
    if (r->stream) {
        if (fin == DUET_FINISH_STOP || fin == DUET_FINISH_LENGTH) {
            const char *why = fin == DUET_FINISH_STOP ? "stop" : "length";
            Duet__V1__Usage usage = DUET__V1__USAGE__INIT;
            usage.prompt_tokens = (uint32_t)r->n_prompt;
            usage.completion_tokens = (uint32_t)res->n_generated;
            Duet__V1__DecodeResponse msg = DUET__V1__DECODE_RESPONSE__INIT;
            msg.finish_reason = fin == DUET_FINISH_STOP ? DUET__V1__FINISH_REASON__FINISH_REASON_STOP
                                                        : DUET__V1__FINISH_REASON__FINISH_REASON_LENGTH;
            msg.usage = &usage;
            duet_status_t st = duet_rpc_stream_write(r->stream, &msg.base);
            duet_state_req_update_t u = DUET_STATE_REQ_UPDATE_INIT;
            u.generated_tokens = res->n_generated;
            u.finish_reason = why;
            req_move(d, r, DUET_REQ_DONE, &u);
            duet_metrics_outcome(&d->outcomes, st == DUET_OK ? DUET_OK : DUET_ERR_CANCELLED);
            duet_rpc_stream_finish(r->stream, st == DUET_OK ? DUET_OK : DUET_ERR_CANCELLED, NULL);
            r->stream = NULL;
        } else if (fin == DUET_FINISH_CANCELLED) {
            end_stream_error(d, r, DUET_ERR_CANCELLED, r->client_gone ? "cancelled by the client"
                                                                      : "decode instance stopping");
        } else {
            char msg[160];
            snprintf(msg, sizeof msg, "decode: generation failed: %s", duet_status_str(res->status));
            duet_log_error("decode: request %s: generation failed: %s", r->id, duet_status_str(res->status));
            end_stream_error(d, r, res->status == DUET_OK ? DUET_ERR_INTERNAL : res->status, msg);
        }
    }
    dreq_free(r);
}

/* ---- prefill: local, or remote through a helper thread ------------------------------------ */

static duet_gen_request_t gen_request(const dreq_t *r, bool with_resume)
{
    return (duet_gen_request_t){
        .prompt = r->tokens,
        .n_prompt = r->n_prompt,
        .max_tokens = r->max_tokens,
        .ignore_eos = r->ignore_eos,
        .sampling = r->sampling,
        .resume = with_resume && r->n_resume ? r->tokens + r->n_prompt : NULL,
        .n_resume = with_resume ? r->n_resume : 0,
    };
}

/* Ends a request that never got into the engine. */
static void end_unsubmitted(decode_t *d, dreq_t *r, duet_status_t st, const char *msg)
{
    TAILQ_REMOVE(&d->live, r, live_entry);
    end_stream_error(d, r, st, msg);
    dreq_free(r);
}

static void submit_local(decode_t *d, dreq_t *r)
{
    duet_gen_request_t q = gen_request(r, true);
    duet_gen_sink_t sink = {sink_token, sink_finish, r};
    r->phase = PHASE_ENGINE;
    r->kv_bytes = 0;
    duet_status_t st = duet_engine_submit(d->engine, &q, &sink, &r->seq);
    if (st != DUET_OK) {
        duet_log_error("decode: request %s: the engine refused it: %s", r->id, duet_status_str(st));
        end_unsubmitted(d, r, st, "decode: the engine refused the request");
        return;
    }
    duet_metric_observe(d->m_queue, (duet_clock_ns() - r->t_arrival_ns) / 1e9);
    req_move(d, r, DUET_REQ_PREFILLING, NULL);
}

/* The prefill's KV is in our blocks (or in their host mirror): move it into the pool the engine
 * reads, and with --kv-verify check it against the prefill's checksum. */
static duet_status_t kv_arrived(decode_t *d, dreq_t *r, pjob_t *j)
{
    duet_kv_cache_t *cache = duet_engine_cache(d->engine);
    duet_status_t st = duet_kv_cache_stage_in(cache, r->blocks, r->n_blocks);
    if (st != DUET_OK) {
        snprintf(j->error, sizeof j->error, "copying its KV into the device pool failed: %s", duet_status_str(st));
        return st;
    }
    if (!d->conf->kv_verify)
        return DUET_OK;
    if (!j->has_kv_checksum) {
        snprintf(j->error, sizeof j->error, "--kv-verify: the prefill instance sent no KV checksum");
        return DUET_ERR_UNSUPPORTED;
    }
    uint64_t sum;
    if ((st = duet_kv_cache_checksum(cache, r->blocks, r->n_prompt, &sum)) != DUET_OK) {
        snprintf(j->error, sizeof j->error, "reading back its KV failed: %s", duet_status_str(st));
        return st;
    }
    if (sum != j->kv_checksum) {
        duet_metric_add(d->m_kv_mismatch, 1);
        snprintf(j->error, sizeof j->error, "the KV in our pool (checksum %016llx) is not what prefill computed (%016llx)",
                 (unsigned long long)sum, (unsigned long long)j->kv_checksum);
        return DUET_ERR_FORMAT;
    }
    duet_metric_add(d->m_kv_verified, 1);
    return DUET_OK;
}

static void *prefill_call_main(void *arg)
{
    pjob_t *j = arg;
    decode_t *d = j->d;
    Duet__V1__SamplingParams sp = DUET__V1__SAMPLING_PARAMS__INIT;
    sp.temperature = j->sampling.temperature;
    sp.top_p = j->sampling.top_p;
    sp.top_k = j->sampling.top_k;
    sp.min_p = j->sampling.min_p;
    sp.repetition_penalty = j->sampling.repeat_penalty;
    sp.seed = j->sampling.seed;
    sp.has_seed = 1;   /* our seed, chosen once, so the first token and the rest agree */
    const duet_hparams_t *hp = &d->model->hp;
    Duet__V1__KvTarget kt = DUET__V1__KV_TARGET__INIT;
    kt.decode_instance_id = (char *)duet_service_instance_id(d->svc);
    kt.ucx_worker_address = (ProtobufCBinaryData){d->ucx_addr_len, d->ucx_addr};
    kt.rkey = (ProtobufCBinaryData){d->rkey_len, d->rkey};
    kt.remote_base = d->pool_base;
    kt.pool_bytes = d->pool_bytes;
    kt.n_block_ids = (size_t)j->n_blocks;
    kt.block_ids = j->blocks;
    kt.n_block_generations = (size_t)j->n_blocks;
    kt.block_generations = j->gens;
    kt.n_layer = (uint32_t)hp->n_layer;
    kt.n_kv_head = (uint32_t)hp->n_kv_head;
    kt.head_dim = (uint32_t)hp->head_dim;
    kt.block_tokens = DUET_KV_BLOCK_TOKENS;
    kt.elem_bytes = 2;
    Duet__V1__PrefillRequest req = DUET__V1__PREFILL_REQUEST__INIT;
    req.request_id = j->id;
    req.attempt = j->attempt;
    req.n_token_ids = (size_t)j->n_tokens;
    req.token_ids = j->tokens;
    req.sampling = &sp;
    req.kv_target = &kt;
    req.want_kv_checksum = d->conf->kv_verify;
    duet_rpc_opts_t opts = {.timeout_ms = d->conf->prefill_timeout_ms, .error = j->error,
                            .error_size = sizeof j->error};
    ProtobufCMessage *resp = NULL;
    j->status = duet_rpc_client_unary(d->client, j->addr, "/duet.v1.Prefill/Prefill", &req.base,
                                      &duet__v1__prefill_response__descriptor, &opts, &resp);
    if (j->status == DUET_OK) {
        const Duet__V1__PrefillResponse *pr = (const Duet__V1__PrefillResponse *)resp;
        j->first_token = pr->first_token > INT32_MAX ? -1 : (int32_t)pr->first_token;
        j->kv_bytes = pr->kv_bytes;
        j->kv_checksum = pr->kv_checksum;
        j->has_kv_checksum = pr->has_kv_checksum;
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    push_result(d, CMD_PREFILL_DONE, j);
    return NULL;
}

/* Blocks are reserved: record them and start the Prefill call. */
static void start_remote(decode_t *d, dreq_t *r, const int32_t *blocks, int n_blocks)
{
    duet_kv_cache_t *cache = duet_engine_cache(d->engine);
    pjob_t *j = calloc(1, sizeof *j);
    r->blocks = malloc((size_t)n_blocks * sizeof *r->blocks);
    r->gens = malloc((size_t)n_blocks * sizeof *r->gens);
    if (j) {
        j->tokens = malloc((size_t)r->n_prompt * sizeof *j->tokens);
        j->blocks = malloc((size_t)n_blocks * sizeof *j->blocks);
        j->gens = malloc((size_t)n_blocks * sizeof *j->gens);
    }
    r->phase = PHASE_REMOTE;
    duet_metric_observe(d->m_queue, (duet_clock_ns() - r->t_arrival_ns) / 1e9);
    req_move(d, r, DUET_REQ_PREFILLING, NULL);
    if (!r->blocks || !r->gens || !j || !j->tokens || !j->blocks || !j->gens) {
        if (j)
            pjob_free(j);
        duet_log_error("decode: request %s: out of memory for the prefill call; prefilling locally", r->id);
        r->phase = PHASE_ENGINE;
        duet_engine_kv_failed(d->engine, r->seq);
        return;
    }
    r->n_blocks = n_blocks;
    for (int i = 0; i < n_blocks; i++) {
        r->blocks[i] = blocks[i];
        r->gens[i] = duet_kv_block_generation(cache, blocks[i]);
        j->blocks[i] = (uint32_t)blocks[i];
        j->gens[i] = r->gens[i];
    }
    for (int i = 0; i < r->n_prompt; i++)
        j->tokens[i] = (uint32_t)r->tokens[i];
    j->d = d;
    j->serial = r->serial;
    snprintf(j->id, sizeof j->id, "%s", r->id);
    j->attempt = r->attempt;
    snprintf(j->prefill_id, sizeof j->prefill_id, "%s", r->prefill_id);
    snprintf(j->addr, sizeof j->addr, "%s", r->prefill_addr);
    j->n_tokens = r->n_prompt;
    j->n_blocks = n_blocks;
    j->sampling = r->sampling;
    if (pthread_create(&j->thread, NULL, prefill_call_main, j) != 0) {
        duet_log_error("decode: request %s: cannot start a prefill call thread; prefilling locally", r->id);
        pjob_free(j);
        r->phase = PHASE_ENGINE;
        duet_engine_kv_failed(d->engine, r->seq);
        return;
    }
    d->n_helpers++;
}

/* Reserves blocks for the requests waiting for a remote prefill, first come first served. */
static void admit_waiting(decode_t *d)
{
    for (dreq_t *r; (r = TAILQ_FIRST(&d->waiting));) {
        duet_gen_request_t q = gen_request(r, false);
        duet_gen_sink_t sink = {sink_token, sink_finish, r};
        const int32_t *blocks;
        int n_blocks;
        duet_status_t st = duet_engine_submit_remote(d->engine, &q, &sink, &r->seq, &blocks, &n_blocks);
        if (st == DUET_ERR_EXHAUSTED)
            return;   /* blocks come back when a request ends; we are woken then */
        TAILQ_REMOVE(&d->waiting, r, wait_entry);
        if (st != DUET_OK) {
            duet_log_error("decode: request %s: the engine refused it: %s", r->id, duet_status_str(st));
            end_unsubmitted(d, r, st, "decode: the engine refused the request");
            continue;
        }
        start_remote(d, r, blocks, n_blocks);
    }
}

/* A live prefill instance other than those r has tried, the least loaded; 0 when none. */
static int pick_prefill(decode_t *d, const dreq_t *r, char *id, char *addr)
{
    duet_state_t *store = store_get(d);
    duet_state_inst_t *insts;
    int n;
    if (!store || duet_state_inst_list(store, DUET_ROLE_PREFILL, &insts, &n) != DUET_OK)
        return 0;
    int best = -1;
    for (int i = 0; i < n; i++) {
        bool tried = false;
        for (int k = 0; k < r->n_tried; k++)
            tried |= strcmp(insts[i].id, r->tried[k]) == 0;
        if (!tried && strcmp(insts[i].model, d->model->name) == 0 &&
            (best < 0 || insts[i].load.queued_tokens < insts[best].load.queued_tokens))
            best = i;
    }
    if (best >= 0) {
        snprintf(id, DUET_STATE_ID_MAX, "%s", insts[best].id);
        snprintf(addr, DUET_STATE_ADDR_MAX, "%s", insts[best].grpc_addr);
    }
    duet_state_inst_list_free(insts);
    return best >= 0;
}

static void start_remote(decode_t *d, dreq_t *r, const int32_t *blocks, int n_blocks);

/* r's Prefill call failed: places it on another prefill instance with fresh blocks (the old ones
 * are quarantined). 0 when there is none or no retry is left: the caller prefills locally. */
static int retry_prefill(decode_t *d, dreq_t *r)
{
    char id[DUET_STATE_ID_MAX], addr[DUET_STATE_ADDR_MAX];
    if (r->n_tried >= PREFILL_TRIES_MAX || r->n_tried > d->conf->prefill_retries || !pick_prefill(d, r, id, addr))
        return 0;
    const int32_t *blocks;
    int n_blocks;
    if (duet_engine_kv_retry(d->engine, r->seq, &blocks, &n_blocks) != DUET_OK)
        return 0;
    free(r->blocks);
    free(r->gens);
    r->blocks = NULL;
    r->gens = NULL;
    r->n_blocks = 0;
    snprintf(r->prefill_id, sizeof r->prefill_id, "%s", id);
    snprintf(r->prefill_addr, sizeof r->prefill_addr, "%s", addr);
    r->attempt++;
    duet_state_req_update_t up = DUET_STATE_REQ_UPDATE_INIT;
    up.prefill_inst = id;
    req_move(d, r, DUET_REQ_ROUTED, &up);
    duet_log_info("decode: request %s: prefill again on %s (attempt %u)", r->id, id, r->attempt);
    start_remote(d, r, blocks, n_blocks);
    return 1;
}

static dreq_t *find_serial(decode_t *d, uint64_t serial)
{
    for (dreq_t *r = TAILQ_FIRST(&d->live); r; r = TAILQ_NEXT(r, live_entry))
        if (r->serial == serial)
            return r;
    return NULL;
}

/* The Prefill call returned: the KV is in our blocks (check their generations), or it is not
 * and the engine prefills the prompt itself. */
static void prefill_done(decode_t *d, pjob_t *j)
{
    pthread_join(j->thread, NULL);
    d->n_helpers--;
    dreq_t *r = find_serial(d, j->serial);
    if (!r || r->phase != PHASE_REMOTE) {
        duet_log_error("decode: request %s: prefill reply for a request not waiting for one", j->id);
        pjob_free(j);
        return;
    }
    r->phase = PHASE_ENGINE;
    duet_status_t st = j->status;
    const duet_kv_seq_t *kv = duet_engine_seq_kv(r->seq);
    duet_kv_cache_t *cache = duet_engine_cache(d->engine);
    if (st == DUET_OK) {
        bool same = kv->n_blocks == r->n_blocks;
        for (int i = 0; same && i < r->n_blocks; i++)
            same = kv->blocks[i] == r->blocks[i] &&
                   duet_kv_block_generation(cache, r->blocks[i]) == r->gens[i];
        if (!same) {
            st = DUET_ERR_INTERNAL;
            snprintf(j->error, sizeof j->error, "its blocks changed during the prefill");
        } else if (j->first_token < 0 || j->first_token >= d->n_vocab) {
            st = DUET_ERR_FORMAT;
            snprintf(j->error, sizeof j->error, "first token %d is not in the vocabulary", j->first_token);
        } else {
            st = kv_arrived(d, r, j);
        }
    }
    if (st == DUET_OK) {
        uint64_t want = (uint64_t)r->n_prompt * d->kv_token_bytes;
        if (j->kv_bytes != want)
            duet_log_warn("decode: request %s: prefill %s reports %llu KV bytes, expected %llu", r->id,
                          j->prefill_id, (unsigned long long)j->kv_bytes, (unsigned long long)want);
        r->kv_bytes = (int64_t)j->kv_bytes;
        duet_metric_add(d->m_kv_bytes, (double)j->kv_bytes);
        int32_t first = j->first_token;
        pjob_free(j);
        if (!r->stream)
            duet_engine_cancel(d->engine, r->seq);   /* a zombie: the client left meanwhile */
        else
            duet_engine_kv_ready(d->engine, r->seq, first);  /* may finish (and free) r */
        return;
    }
    /* The prefill side may still be writing (a deadline, a failed flush): hold the blocks back
     * unless it refused before touching them. */
    if (st != DUET_ERR_INVALID)
        duet_quarantine_hold(d->quarantine, r->blocks, r->n_blocks, j->id, j->attempt, j->prefill_id, j->addr);
    if (!r->stream) {
        pjob_free(j);
        duet_engine_cancel(d->engine, r->seq);
        return;
    }
    if (r->n_tried < PREFILL_TRIES_MAX)
        snprintf(r->tried[r->n_tried++], sizeof r->tried[0], "%s", j->prefill_id);
    duet_log_warn("decode: request %s: prefill on %s (%s) failed: %s%s%s", r->id, j->prefill_id, j->addr,
                  duet_status_str(st), j->error[0] ? ": " : "", j->error);
    pjob_free(j);
    if (retry_prefill(d, r))
        return;
    duet_log_warn("decode: request %s: no other prefill instance to try; prefilling locally", r->id);
    duet_engine_kv_failed(d->engine, r->seq);
}

/* ---- commands, cancellation, the loop ----------------------------------------------------- */

static void new_request(decode_t *d, dreq_t *r, bool stopping)
{
    r->d = d;
    r->rstate = DUET_REQ_ROUTED;
    TAILQ_INSERT_TAIL(&d->live, r, live_entry);
    if (r->reject != DUET_OK) {
        end_unsubmitted(d, r, r->reject, r->reject_msg);
        return;
    }
    if (stopping) {
        end_unsubmitted(d, r, DUET_ERR_UNAVAILABLE, "decode instance stopping");
        return;
    }
    if (r->local) {
        submit_local(d, r);
        return;
    }
    if (duet_kv_blocks_for(r->n_prompt) > d->n_blocks) {
        char msg[160];
        snprintf(msg, sizeof msg, "prompt_token_ids: %d tokens need more KV blocks than this instance has (%d)",
                 r->n_prompt, d->n_blocks);
        end_unsubmitted(d, r, DUET_ERR_EXHAUSTED, msg);
        return;
    }
    r->phase = PHASE_WAIT_BLOCKS;
    TAILQ_INSERT_TAIL(&d->waiting, r, wait_entry);
    admit_waiting(d);
}


/* The instance is going away: every stream ends now with UNAVAILABLE and its record is left where
 * it is, so the gateway places the request again (attempt + 1) with the tokens it has relayed.
 * Requests whose prefill call is out stay as zombies until it returns (they may be written). */
static void drain_streams(decode_t *d)
{
    for (dreq_t *r = TAILQ_FIRST(&d->live), *next; r; r = next) {
        next = TAILQ_NEXT(r, live_entry);
        if (!r->stream)
            continue;
        duet_metrics_outcome(&d->outcomes, DUET_ERR_UNAVAILABLE);
        duet_rpc_stream_finish(r->stream, DUET_ERR_UNAVAILABLE, "decode instance stopping");
        r->stream = NULL;
        switch (r->phase) {
        case PHASE_WAIT_BLOCKS:
            TAILQ_REMOVE(&d->waiting, r, wait_entry);
            TAILQ_REMOVE(&d->live, r, live_entry);
            dreq_free(r);
            break;
        case PHASE_REMOTE:
            break;
        case PHASE_ENGINE:
            duet_engine_cancel(d->engine, r->seq);   /* frees r through sink_finish */
            break;
        }
    }
    pthread_mutex_lock(&d->mu);
    d->drained = 1;
    pthread_cond_broadcast(&d->drained_cv);
    pthread_mutex_unlock(&d->mu);
}

static void on_command(void *user, duet_cmd_t *c)
{
    decode_t *d = user;
    switch ((cmd_kind_t)c->kind) {
    case CMD_NEW:
        new_request(d, c->arg, d->stop_seen || d->draining);
        break;
    case CMD_PREFILL_DONE:
        prefill_done(d, c->arg);
        break;
    case CMD_RELEASE_DONE:
        duet_quarantine_answer(d->quarantine, c->arg);
        d->n_helpers--;
        break;
    case CMD_DRAIN:
        d->draining = true;   /* the thread goes on until CMD_STOP: the server still runs */
        drain_streams(d);
        break;
    case CMD_STOP:
        d->stop_seen = true;
        break;
    }
    free(c);
}

/* An empty message on every stream silent for KEEPALIVE_MS: a request waiting for blocks or for
 * its prefill is alive, and the gateway's idle watchdog must see that. */
static void keepalive(decode_t *d)
{
    int64_t now = duet_clock_ns();
    if (now < d->next_keepalive_ns)
        return;
    d->next_keepalive_ns = now + (int64_t)KEEPALIVE_MS * 1000000 / 4;
    for (dreq_t *r = TAILQ_FIRST(&d->live); r; r = TAILQ_NEXT(r, live_entry)) {
        if (!r->stream || r->client_gone || now - r->last_write_ns < (int64_t)KEEPALIVE_MS * 1000000)
            continue;
        Duet__V1__DecodeResponse msg = DUET__V1__DECODE_RESPONSE__INIT;
        if (duet_rpc_stream_write(r->stream, &msg.base) == DUET_OK)
            r->last_write_ns = now;
    }
}

/* Some stream was cancelled (or the server is stopping): end every request whose stream is. */
static void scan_cancels(decode_t *d)
{
    for (dreq_t *r = TAILQ_FIRST(&d->live), *next; r; r = next) {
        next = TAILQ_NEXT(r, live_entry);
        if (!r->stream || !duet_rpc_stream_cancelled(r->stream))
            continue;
        r->client_gone = true;
        switch (r->phase) {
        case PHASE_WAIT_BLOCKS:
            TAILQ_REMOVE(&d->waiting, r, wait_entry);
            end_unsubmitted(d, r, DUET_ERR_CANCELLED, "cancelled by the client");
            break;
        case PHASE_REMOTE:
            /* Blocks stay reserved until the prefill call returns (it may be writing them). */
            end_stream_error(d, r, DUET_ERR_CANCELLED, "cancelled by the client");
            break;
        case PHASE_ENGINE:
            duet_engine_cancel(d->engine, r->seq);   /* frees r through sink_finish */
            break;
        }
    }
}

static void publish_load(decode_t *d, duet_engine_load_t *el)
{
    duet_engine_load(d->engine, el);
    int64_t waiting = 0;
    for (dreq_t *r = TAILQ_FIRST(&d->waiting); r; r = TAILQ_NEXT(r, wait_entry))
        waiting += r->n_prompt;
    pthread_mutex_lock(&d->mu);
    d->load.kv_blocks_free = el->blocks_free;
    d->load.queued_tokens = el->queued_tokens + waiting;
    d->load.running_seqs = el->n_running;
    pthread_mutex_unlock(&d->mu);
    duet_metric_set(d->m_blocks_free, el->blocks_free);
    duet_metric_set(d->m_batch, el->n_running);
}

static void post_release(void *user, duet_release_job_t *job)
{
    push_result(user, CMD_RELEASE_DONE, job);
}

/* On the engine thread once it has the engine: what peers need to reach the pool. */
static duet_status_t on_start(void *user, duet_engine_thread_t *t)
{
    decode_t *d = user;
    d->kvx = duet_engine_thread_kvx(t);
    d->pool = duet_engine_thread_pool(t);
    d->engine = duet_engine_thread_engine(t);
    duet_quarantine_conf_t qc = {
        .cache = duet_engine_cache(d->engine),
        .client = d->client,
        .decode_id = duet_service_instance_id(d->svc),
        .max_ms = d->conf->quarantine_max_ms,
        .post = post_release,
        .user = d,
    };
    if (!(d->quarantine = duet_quarantine_create(&qc)))
        return DUET_ERR_NOMEM;
    const void *addr, *rkey;
    size_t addr_len, rkey_len;
    duet_kvx_worker_address(d->kvx, &addr, &addr_len);
    duet_kvx_pool_rkey(d->pool, &rkey, &rkey_len);
    d->ucx_addr = malloc(addr_len);
    d->rkey = malloc(rkey_len);
    if (!d->ucx_addr || !d->rkey)
        return DUET_ERR_NOMEM;
    memcpy(d->ucx_addr, addr, addr_len);
    memcpy(d->rkey, rkey, rkey_len);
    d->ucx_addr_len = addr_len;
    d->rkey_len = rkey_len;
    d->pool_base = (uint64_t)(uintptr_t)duet_kvx_pool_base(d->pool);
    d->pool_bytes = duet_kvx_pool_size(d->pool);
    d->n_ctx = duet_engine_n_ctx(d->engine);
    store_get(d);
    duet_engine_load_t el;
    publish_load(d, &el);
    duet_log_info("decode: %s, ctx %d, %d KV blocks (%.1f MiB, %zu bytes/token), max %d seqs, role %s",
                  d->model->name, d->n_ctx, d->n_blocks, duet_engine_thread_pool_bytes(t) / 1048576.0,
                  d->kv_token_bytes, d->conf->max_seqs, duet_state_role_name(d->role));
    return DUET_OK;
}

static int on_iteration(void *user)
{
    decode_t *d = user;
    if (atomic_exchange(&d->cancel_check, 0))
        scan_cancels(d);
    if (d->stop_seen && d->n_helpers == 0)
        return -1;   /* every stream is finished by now: the server is gone */
    if (!duet_quarantine_empty(d->quarantine))
        d->n_helpers += duet_quarantine_tick(d->quarantine, !atomic_load(&d->stopping));
    keepalive(d);
    admit_waiting(d);
    while (duet_kvx_progress(d->kvx))
        ;
    int held = duet_engine_step(d->engine);
    if (held < 0)
        duet_log_error("decode: engine step failed: %s", duet_status_str((duet_status_t)held));
    admit_waiting(d);   /* blocks freed by requests that just ended */
    duet_engine_load_t el;
    publish_load(d, &el);
    return el.n_running > 0;   /* more batch work: no sleep */
}

/* Before the engine goes (and finishes the requests it holds through their sinks): the ones
 * waiting for blocks end here, quarantined blocks come back. */
static void on_stop(void *user)
{
    decode_t *d = user;
    for (dreq_t *r; (r = TAILQ_FIRST(&d->waiting));) {
        TAILQ_REMOVE(&d->waiting, r, wait_entry);
        end_unsubmitted(d, r, DUET_ERR_UNAVAILABLE, "decode instance stopping");
    }
    duet_quarantine_destroy(d->quarantine);   /* no Release call is out: the thread waited for them */
    d->quarantine = NULL;
}

/* ---- the Generate handler (completion-queue threads) -------------------------------------- */

static void on_stream_cancel(void *arg)
{
    decode_t *d = arg;
    atomic_store(&d->cancel_check, 1);
    duet_engine_thread_wake(d->thread);
}

static void generate(duet_rpc_stream_t *stream, const ProtobufCMessage *msg, void *arg)
{
    decode_t *d = arg;
    const Duet__V1__DecodeRequest *q = (const Duet__V1__DecodeRequest *)msg;
    if (atomic_load(&d->stopping)) {
        duet_rpc_stream_finish(stream, DUET_ERR_UNAVAILABLE, "decode instance stopping");
        return;
    }
    dreq_t *r = calloc(1, sizeof *r);
    duet_cmd_t *c = calloc(1, sizeof *c);
    if (!r || !c) {
        free(r);
        free(c);
        duet_rpc_stream_finish(stream, DUET_ERR_NOMEM, "decode: out of memory");
        return;
    }
    r->serial = atomic_fetch_add(&d->next_serial, 1);
    r->t_arrival_ns = r->last_write_ns = duet_clock_ns();
    r->stream = stream;
    snprintf(r->id, sizeof r->id, "%s", q->request_id);
    r->attempt = q->attempt;
    int n_prompt = (int)q->n_prompt_token_ids;
    int max_tokens = 0;
    char err[sizeof r->reject_msg];
    r->reject = duet_decode_request_check(q, d->n_vocab, d->n_ctx, &max_tokens, &r->sampling, err, sizeof err);
    if (r->reject == DUET_OK && (!q->sampling || !q->sampling->has_seed))   /* one seed for prefill and decode alike */
        r->sampling.seed = (uint64_t)duet_clock_ns() ^ (r->serial * 0x9e3779b97f4a7c15ULL);
    if (r->reject != DUET_OK) {
        snprintf(r->reject_msg, sizeof r->reject_msg, "%s", err);
        duet_log_info("decode: request %s: refused: %s", r->id[0] ? r->id : "(no id)", err);
    } else {
        r->n_prompt = n_prompt;
        r->n_resume = (int)q->n_generated_token_ids;
        r->max_tokens = max_tokens;
        r->ignore_eos = q->stop && q->stop->ignore_eos;
        r->tokens = malloc((size_t)(r->n_prompt + r->n_resume) * sizeof *r->tokens);
        r->n_stop = q->stop ? (int)q->stop->n_stop_token_ids : 0;
        r->stop_ids = r->n_stop ? malloc((size_t)r->n_stop * sizeof *r->stop_ids) : NULL;
        if (!r->tokens || (r->n_stop && !r->stop_ids)) {
            dreq_free(r);
            free(c);
            duet_rpc_stream_finish(stream, DUET_ERR_NOMEM, "decode: out of memory");
            return;
        }
        for (int i = 0; i < r->n_prompt; i++)
            r->tokens[i] = (int32_t)q->prompt_token_ids[i];
        for (int i = 0; i < r->n_resume; i++)
            r->tokens[r->n_prompt + i] = (int32_t)q->generated_token_ids[i];
        if (r->n_stop)
            memcpy(r->stop_ids, q->stop->stop_token_ids, (size_t)r->n_stop * sizeof *r->stop_ids);
        snprintf(r->prefill_id, sizeof r->prefill_id, "%s", q->prefill_instance_id);
        snprintf(r->prefill_addr, sizeof r->prefill_addr, "%s", q->prefill_address);
        r->local = d->role == DUET_ROLE_MIXED || !r->prefill_addr[0] || r->n_resume > 0;
    }
    /* Registered before the request is queued, so it is in place before anyone can finish the
     * stream. Its argument is the service, which outlives every call. */
    duet_rpc_stream_on_cancel(stream, on_stream_cancel, d);
    c->kind = CMD_NEW;
    c->arg = r;
    duet_engine_thread_push(d->thread, c);
}

/* ---- the service definition --------------------------------------------------------------- */

static void decode_free(decode_t *d)
{
    if (d->client)
        duet_rpc_client_destroy(d->client);
    if (d->model)
        duet_model_free(d->model);
    if (d->be)
        d->be->destroy(d->be);
    if (d->store)
        duet_state_close(d->store);   /* the engine thread's, which has ended */
    duet_quarantine_destroy(d->quarantine);   /* set only when the start failed after making it */
    pthread_cond_destroy(&d->drained_cv);
    pthread_mutex_destroy(&d->mu);
    free(d->ucx_addr);
    free(d->rkey);
    free(d);
}

static duet_status_t decode_start(duet_service_t *svc, const void *conf, void **state_p,
                                  const duet_rpc_method_t **methods_p, int *n_methods_p)
{
    const decode_conf_t *c = conf;
    duet_inst_role_t role;
    if (!strcmp(c->role, "decode"))
        role = DUET_ROLE_DECODE;
    else if (!strcmp(c->role, "mixed"))
        role = DUET_ROLE_MIXED;
    else {
        duet_log_error("decode: --role: '%s' is neither decode nor mixed", c->role);
        return DUET_ERR_INVALID;
    }
    duet_kvx_err_mode_t err_mode;
    if (!strcmp(c->ucx_err_mode, "none"))
        err_mode = DUET_KVX_ERR_NONE;
    else if (!strcmp(c->ucx_err_mode, "peer"))
        err_mode = DUET_KVX_ERR_PEER;
    else {
        duet_log_error("decode: --ucx-err-mode: '%s' is neither none nor peer", c->ucx_err_mode);
        return DUET_ERR_INVALID;
    }
    bool kv_staged;
    if (duet_kv_transfer_parse("decode", c->kv_transfer, &kv_staged) != DUET_OK)
        return DUET_ERR_INVALID;
    if (c->max_seqs < 32 || c->threads < 1 || c->ctx < 16 || c->max_batch_tokens < c->max_seqs ||
        c->kv_blocks < 0 || c->prefill_timeout_ms < 1 || c->prefill_retries < 0 ||
        c->prefill_retries > PREFILL_TRIES_MAX - 1 || c->quarantine_max_ms < 1) {
        duet_log_error("decode: need --max-seqs >= 32, --threads >= 1, --ctx >= 16, "
                       "--max-batch-tokens >= --max-seqs, --kv-blocks >= 0, --prefill-timeout-ms >= 1, "
                       "--prefill-retries in 0..%d, --quarantine-max-ms >= 1", PREFILL_TRIES_MAX - 1);
        return DUET_ERR_INVALID;
    }
    decode_t *d = calloc(1, sizeof *d);
    if (!d)
        return DUET_ERR_NOMEM;
    TAILQ_INIT(&d->live);
    TAILQ_INIT(&d->waiting);
    d->svc = svc;
    d->conf = c;
    duet_metrics_t *m = duet_service_metrics(svc);
    d->m_blocks_free = duet_metrics_gauge(m, "duet_kv_blocks_free", "Free blocks in the KV pool.", NULL);
    d->m_batch = duet_metrics_gauge(m, "duet_batch_size", "Requests in the running batch.", NULL);
    d->m_queue = duet_metrics_histogram(m, "duet_request_queue_seconds",
                                        "Time from arrival to the start of the request's prefill.",
                                        duet_metrics_latency_buckets, duet_metrics_n_latency_buckets);
    d->m_kv_bytes = duet_metrics_counter(m, "duet_kv_transfer_bytes_total",
                                         "KV-cache bytes received from prefill instances.", NULL);
    d->m_kv_verified = duet_metrics_counter(m, "duet_kv_verify_total", "Received prompt KV checked against the prefill's checksum (--kv-verify).",
                                            "result=\"ok\"");
    d->m_kv_mismatch = duet_metrics_counter(m, "duet_kv_verify_total", "Received prompt KV checked against the prefill's checksum (--kv-verify).",
                                            "result=\"mismatch\"");
    duet_metrics_outcomes_init(&d->outcomes, m);
    d->role = role;
    d->err_mode = err_mode;
    atomic_init(&d->next_serial, 1);
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->drained_cv, NULL);
    duet_status_t st;
    char path_buf[4096], err[512] = "";
    const char *path = duet_model_resolve_path(c->model, path_buf, sizeof path_buf);
    if ((st = duet_device_open(c->device, c->threads, &d->be, err, sizeof err)) != DUET_OK) {
        duet_log_error("decode: --device %s: %s", c->device, err);
        goto err_free;
    }
    if ((st = duet_model_load(path, d->be, &d->model, err, sizeof err)) != DUET_OK) {
        duet_log_error("decode: %s: %s", path, err[0] ? err : duet_status_str(st));
        d->model = NULL;
        goto err_free;
    }
    d->n_vocab = d->model->hp.n_vocab;
    d->n_ctx = c->ctx > d->model->hp.n_ctx_train ? d->model->hp.n_ctx_train : c->ctx;
    d->kv_token_bytes = duet_model_kv_bytes_per_token(d->model);
    /* Default pool: every batch slot holding a request of a quarter context, which is what a
     * typical chat mix needs; longer ones borrow from shorter ones (or preempt). */
    d->n_blocks = c->kv_blocks > 0 ? c->kv_blocks : c->max_seqs * duet_kv_blocks_for(d->n_ctx / 4);
    if (d->n_blocks < duet_kv_blocks_for(d->n_ctx))
        d->n_blocks = duet_kv_blocks_for(d->n_ctx);   /* at least one full context fits */
    if ((st = duet_rpc_client_create_conf(duet_service_client_conf(svc), &d->client)) != DUET_OK) {
        duet_log_error("decode: cannot create the gRPC client: %s", duet_status_str(st));
        goto err_free;
    }
    duet_engine_thread_conf_t tc = {
        .name = "decode",
        .model = d->model,
        .engine = {.n_ctx = d->n_ctx, .n_blocks = d->n_blocks, .max_batch_tokens = c->max_batch_tokens,
                   .max_seqs = c->max_seqs},
        .err_mode = err_mode,
        .kv_staged = kv_staged,
        .idle_ms = IDLE_WAIT_MS,
        .user = d,
        .on_start = on_start,
        .on_command = on_command,
        .on_iteration = on_iteration,
        .on_stop = on_stop,
    };
    if ((st = duet_engine_thread_start(&tc, &d->thread)) != DUET_OK)
        goto err_free;
    duet_service_set_role(svc, role);
    d->methods[0] = (duet_rpc_method_t){
        .path = "/duet.v1.Decode/Generate",
        .kind = DUET_RPC_SERVER_STREAM,
        .request = &duet__v1__decode_request__descriptor,
        .stream = generate,
        .arg = d,
    };
    *state_p = d;
    *methods_p = d->methods;
    *n_methods_p = 1;
    return DUET_OK;

err_free:
    decode_free(d);
    return st;
}

static void decode_describe(void *state, duet_state_inst_t *info)
{
    decode_t *d = state;
    snprintf(info->model, sizeof info->model, "%s", d->model->name);
    info->ucx_addr = d->ucx_addr;
    info->ucx_addr_len = d->ucx_addr_len;
    info->rkey = d->rkey;
    info->rkey_len = d->rkey_len;
    info->pool_base = d->pool_base;
    info->kv_blocks_total = d->n_blocks;
}

static void decode_load(void *state, duet_state_load_t *load)
{
    decode_t *d = state;
    pthread_mutex_lock(&d->mu);
    *load = d->load;
    pthread_mutex_unlock(&d->mu);
}

/* SIGTERM, the server still running: every stream ends with UNAVAILABLE (drain_streams). */
static void decode_drain(void *state)
{
    decode_t *d = state;
    atomic_store(&d->stopping, 1);   /* the handler refuses new calls from now on */
    duet_cmd_t *c = calloc(1, sizeof *c);
    if (!c)
        return;   /* the server's shutdown cancels the streams instead */
    c->kind = CMD_DRAIN;
    duet_engine_thread_push(d->thread, c);
    pthread_mutex_lock(&d->mu);
    while (!d->drained)
        pthread_cond_wait(&d->drained_cv, &d->mu);
    pthread_mutex_unlock(&d->mu);
    duet_log_info("decode: every stream ended with UNAVAILABLE for its gateway to place it again");
}

/* The server has stopped and every stream is finished: the engine thread waits for prefill calls
 * still out, then the engine, pool and UCX worker go. */
static void decode_stop(void *state)
{
    decode_t *d = state;
    if (!d)
        return;
    atomic_store(&d->stopping, 1);
    duet_cmd_t *c = calloc(1, sizeof *c);
    if (!c) {
        duet_log_error("decode: out of memory while stopping; the engine thread is left running");
        return;
    }
    c->kind = CMD_STOP;
    duet_engine_thread_push(d->thread, c);
    duet_engine_thread_join(d->thread);
    decode_free(d);
}

const duet_service_def_t duet_decode_service = {
    .name = "decode",
    .summary = "duet decode instance: KV pool over UCX, continuous batching, token streams",
    .opts = decode_opts,
    .n_opts = (int)(sizeof decode_opts / sizeof decode_opts[0]),
    .conf_size = sizeof(decode_conf_t),
    .start = decode_start,
    .describe = decode_describe,
    .load = decode_load,
    .drain = decode_drain,
    .stop = decode_stop,
};
