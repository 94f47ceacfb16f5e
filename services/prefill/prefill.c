/* services/prefill/prefill.c — the prefill service: batches prompts under a token budget (the
 * engine chunks long ones), computes their KV, samples each first token, puts the prompt's KV
 * into the decode instance's blocks over UCX, and answers Prefill once the puts are flushed.
 *
 * Threads. gRPC completion-queue threads run the Prefill handler: it validates, copies the
 * request, defers the call and queues it. ONE engine thread owns the engine, the kvx with its
 * pool and the peers (one per decode instance, connected on first use and kept), and answers
 * every call. The on_cancel callback only wakes it; it finds cancelled calls itself.
 * Release (a decode instance asking whether a failed call may still write into its blocks) is
 * answered at once from the fence (fence.c): a call is in it from acceptance until it is freed,
 * after its puts are flushed or its endpoint dropped.
 *
 * A request on the engine thread:
 *
 *   queued ─submit (max_tokens 1)─▶ ENGINE ─first token (sink_token): post puts─▶ SENT
 *      │                               │ error / cancel                           │ after the step:
 *      ▼                               ▼                                          ▼ one flush per peer
 *   refused                      answered with the status                 answered OK, or
 *                                                                         UNAVAILABLE / DEADLINE
 *
 * Bytes moved are exactly prompt tokens × KV bytes per token: whole blocks go as one put each,
 * the last partial block only as its filled rows (one put per layer, K|V and KV head).
 * This first build sends after the prompt's last chunk; layer-by-layer puts that overlap the
 * forward pass (DESIGN.md §1) are the next step. */
#include "prefill.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <unistd.h>

#include "clock.h"
#include "device.h"
#include "duet/v1/prefill.pb-c.h"
#include "engine.h"
#include "engine_thread.h"
#include "fence.h"
#include "kvx.h"
#include "log.h"
#include "model.h"
#include "prefill_request.h"

#define IDLE_WAIT_MS       1000
#define PEER_CLOSE_MS      1000   /* flushing a healthy peer when it is dropped */
#define PEER_IDLE_MS       60000  /* an endpoint unused this long is dropped: its decode instance may
                                     be gone, and with shared memory the endpoint keeps that dead
                                     instance's pool mapped (and its touched pages resident) */
#define ID_MAX             DUET_PREFILL_ID_MAX

typedef struct {
    duet_service_common_t common;   /* first: the runtime's options */
    const char *model;
    const char *device;
    int threads;
    int ctx;
    int max_batch_tokens;
    int kv_blocks;
    const char *ucx_err_mode;
    int flush_timeout_ms;
    const char *kv_send;
    const char *kv_transfer;
} prefill_conf_t;

#define OPT(flag, env, type, field, def, help) {flag, env, type, offsetof(prefill_conf_t, field), def, help}
static const duet_conf_opt_t prefill_opts[] = {
    OPT("model", "DUET_MODEL", DUET_CONF_STR, model, NULL,
        "GGUF model file (default: ~/.cache/duet/models/" DUET_DEFAULT_MODEL_FILE ")"),
    OPT("device", "DUET_DEVICE", DUET_CONF_STR, device, "cpu", "compute device: cpu, cuda or cuda:N"),
    OPT("threads", "DUET_THREADS", DUET_CONF_INT, threads, "1", "compute threads (cpu)"),
    OPT("ctx", "DUET_CTX", DUET_CONF_INT, ctx, "2048", "longest prompt + 1; at most the model's context"),
    OPT("max-batch-tokens", "DUET_MAX_BATCH_TOKENS", DUET_CONF_INT, max_batch_tokens, "512",
        "prompt tokens per step (longer prompts are chunked)"),
    OPT("kv-blocks", "DUET_KV_BLOCKS", DUET_CONF_INT, kv_blocks, "0",
        "local KV pool in 16-token blocks (0: four full contexts)"),
    OPT("ucx-err-mode", "DUET_UCX_ERR_MODE", DUET_CONF_STR, ucx_err_mode, "none",
        "UCX endpoint error handling: none (one host, shared memory) or peer (across hosts)"),
    OPT("flush-timeout-ms", "DUET_FLUSH_TIMEOUT_MS", DUET_CONF_INT, flush_timeout_ms, "5000",
        "longest wait for a decode instance to confirm a request's KV"),
    OPT("kv-send", "DUET_KV_SEND", DUET_CONF_STR, kv_send, "layer",
        "when KV goes to decode: layer (each layer as it is computed) or prompt (after the last layer)"),
    OPT("kv-transfer", "DUET_KV_TRANSFER", DUET_CONF_STR, kv_transfer, "auto",
        "with a GPU pool: auto (GPU to GPU when UCX has CUDA, else through host memory) or staged (always through host memory)"),
};
#undef OPT

/* An endpoint to one decode instance's pool, kept across requests. */
typedef struct peer {
    struct peer *next;
    char decode_id[ID_MAX];
    uint8_t *addr, *rkey;           /* what it was connected with, to notice a restarted decode */
    size_t addr_len, rkey_len;
    uint64_t base, size;
    duet_kvx_peer_t *kp;
    bool failed;                    /* a put or flush failed: dropped after the step */
    bool touched;                   /* puts posted since the last flush */
    duet_status_t flush_status;
    int64_t last_used_ns;           /* monotonic: last puts posted */
} peer_t;

typedef enum { PHASE_QUEUED, PHASE_ENGINE, PHASE_SENT } phase_t;

/* One Prefill call: built by the handler, owned by the engine thread once queued. */
typedef struct preq {
    struct prefill *p;
    TAILQ_ENTRY(preq) live_entry;   /* p->live (engine thread) */
    duet_rpc_call_t *call;
    char id[ID_MAX];
    uint32_t attempt;
    bool fenced;                    /* in p->fence's running set until freed */
    int32_t *tokens;                /* [n_tokens] */
    int n_tokens;
    duet_sampling_t sampling;
    char decode_id[ID_MAX];
    uint8_t *addr, *rkey;
    size_t addr_len, rkey_len;
    uint64_t base, size;            /* the decode pool: puts outside it are refused locally */
    uint32_t *dst;                  /* [n_dst] decode's block ids */
    int n_dst;

    phase_t phase;
    duet_engine_seq_t *seq;
    int32_t *src;                   /* [n_src] our blocks, referenced until the flush */
    int n_src;
    peer_t *peer;
    int32_t first_token;
    uint64_t kv_bytes;
    duet_status_t fail;             /* set when sending failed before the flush */
    bool logged;                    /* that failure is already in the log */
    bool want_checksum;             /* decode asked for kv_checksum */
    int64_t t_arrival, t_submit, t_first;
    bool prepared;                  /* peer and source blocks taken for the send */
} preq_t;

typedef enum { CMD_NEW, CMD_STOP } cmd_kind_t;   /* kinds of duet_cmd_t; CMD_NEW's arg: a preq_t */

typedef struct prefill {
    const prefill_conf_t *conf;
    duet_kvx_err_mode_t err_mode;
    duet_backend_t *be;
    duet_model_t *model;
    duet_rpc_method_t methods[2];
    int n_ctx, n_blocks, n_vocab;
    duet_fence_t *fence;            /* calls that may still write, and released ones */

    pthread_mutex_t mu;
    duet_engine_thread_t *thread;   /* owns the engine, the UCX worker and the pool */
    atomic_int cancel_check;
    atomic_int stopping;
    int64_t queued_tokens;          /* in the command queue, under mu */
    duet_state_load_t load;         /* under mu */

    /* Engine thread only (the first three are the thread's, kept here for brevity). */
    duet_kvx_t *kvx;
    duet_kvx_pool_t *pool;
    duet_engine_t *engine;
    peer_t *peers;
    TAILQ_HEAD(preq_list, preq) live;    /* every request the engine thread holds */
    int n_sent;                     /* requests waiting for the flush */
    bool by_layer;                  /* --kv-send layer */
    bool stop_seen;                 /* CMD_STOP arrived */

    /* Metrics (registered in start, updated by the engine thread). */
    duet_metric_t *m_transfer, *m_kv_bytes, *m_queue_tokens, *m_queue;
    duet_metrics_outcomes_t outcomes;
} prefill_t;

/* ---- small helpers ------------------------------------------------------------------------ */

/* Queues a command for the engine thread; tokens: prompt tokens it brings (the load report). */
static void push_cmd(prefill_t *p, duet_cmd_t *c, int64_t tokens)
{
    pthread_mutex_lock(&p->mu);
    p->queued_tokens += tokens;
    pthread_mutex_unlock(&p->mu);
    duet_engine_thread_push(p->thread, c);
}

/* Frees a call once nothing it issued can still land in the decode pool. */
static void preq_free(preq_t *r)
{
    if (!r)
        return;
    if (r->fenced)
        duet_fence_leave(r->p->fence, r->decode_id, r->id, r->attempt);
    free(r->tokens);
    free(r->addr);
    free(r->rkey);
    free(r->dst);
    free(r->src);
    free(r);
}

/* Answers the call with an error and frees the request. */
static void end_error(prefill_t *p, preq_t *r, duet_status_t st, const char *msg)
{
    duet_metrics_outcome(&p->outcomes, st);
    TAILQ_REMOVE(&p->live, r, live_entry);
    duet_rpc_call_finish(r->call, st, "%s", msg);
    preq_free(r);
}

/* ---- peers (engine thread) ---------------------------------------------------------------- */

static void peer_drop(prefill_t *p, peer_t *e)
{
    peer_t **pp = &p->peers;
    while (*pp && *pp != e)
        pp = &(*pp)->next;
    if (*pp)
        *pp = e->next;
    duet_kvx_peer_destroy(e->kp, PEER_CLOSE_MS);
    free(e->addr);
    free(e->rkey);
    free(e);
}

/* The endpoint to the request's decode pool: the cached one when the decode instance is the
 * same process (same worker address, rkey and base), else a new connection. NULL on failure. */
static peer_t *peer_get(prefill_t *p, const preq_t *r)
{
    for (peer_t *e = p->peers; e; e = e->next) {
        if (strcmp(e->decode_id, r->decode_id) != 0)
            continue;
        if (e->addr_len == r->addr_len && !memcmp(e->addr, r->addr, r->addr_len) &&
            e->rkey_len == r->rkey_len && !memcmp(e->rkey, r->rkey, r->rkey_len) && e->base == r->base &&
            e->size == r->size)
            return e->failed ? NULL : e;
        if (e->touched)
            return NULL;   /* its old puts are not flushed yet: refuse rather than mix */
        duet_log_info("prefill: decode instance %s restarted; reconnecting", e->decode_id);
        peer_drop(p, e);
        break;
    }
    peer_t *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->addr = malloc(r->addr_len);
    e->rkey = malloc(r->rkey_len);
    if (!e->addr || !e->rkey) {
        free(e->addr);
        free(e->rkey);
        free(e);
        return NULL;
    }
    memcpy(e->addr, r->addr, r->addr_len);
    memcpy(e->rkey, r->rkey, r->rkey_len);
    e->addr_len = r->addr_len;
    e->rkey_len = r->rkey_len;
    e->base = r->base;
    e->size = r->size;
    snprintf(e->decode_id, sizeof e->decode_id, "%s", r->decode_id);
    duet_kvx_remote_t rem = {
        .worker_addr = e->addr, .worker_addr_len = e->addr_len,
        .rkey = e->rkey, .rkey_len = e->rkey_len,
        .base = e->base, .size = (size_t)e->size,
    };
    if (duet_kvx_peer_connect(p->kvx, &rem, &e->kp) != DUET_OK) {
        free(e->addr);
        free(e->rkey);
        free(e);
        return NULL;
    }
    e->next = p->peers;
    p->peers = e;
    return e;
}

/* Posts one layer of the prompt's KV: the (block, layer) K and V slices of the full blocks, and
 * of the last partial block only the filled rows of each head. Adds the bytes to r->kv_bytes. */
static duet_status_t post_layer(prefill_t *p, preq_t *r, int layer)
{
    duet_kv_cache_t *cache = duet_engine_cache(p->engine);
    duet_status_t st = duet_kv_cache_stage_out(cache, r->src, r->n_src, layer);
    if (st != DUET_OK)
        return st;
    const duet_kv_pool_view_t *view = duet_kv_cache_transfer_view(cache);
    int n = r->n_tokens;
    int full = n / DUET_KV_BLOCK_TOKENS, rows = n % DUET_KV_BLOCK_TOKENS;
    size_t slice_bytes = duet_kv_slice_elems(view) * sizeof(uint16_t);
    size_t block_bytes = (size_t)view->n_layer * 2 * slice_bytes;
    size_t head_bytes = (size_t)DUET_KV_BLOCK_TOKENS * (size_t)view->head_dim * sizeof(uint16_t);
    size_t row_bytes = (size_t)view->head_dim * sizeof(uint16_t);
    if (full > 0) {
        if ((st = duet_kvx_put_layer(r->peer->kp, view, layer, (const uint32_t *)r->src, r->dst, full)) != DUET_OK)
            return st;
        r->kv_bytes += (uint64_t)full * 2 * slice_bytes;
    }
    if (rows > 0) {
        int b = r->src[full];
        uint64_t dst = (uint64_t)r->dst[full] * block_bytes;
        for (int k = 0; k < 2; k++)
            for (int h = 0; h < view->n_kv_head; h++) {
                const uint8_t *src = (const uint8_t *)duet_kv_slice(view, b, layer, k) + (size_t)h * head_bytes;
                uint64_t off = dst + ((size_t)layer * 2 + (size_t)k) * slice_bytes + (size_t)h * head_bytes;
                if ((st = duet_kvx_put(r->peer->kp, src, (size_t)rows * row_bytes, off)) != DUET_OK)
                    return st;
                r->kv_bytes += (uint64_t)rows * row_bytes;
            }
    }
    return DUET_OK;
}

/* Posts the puts of the prompt's KV after its last layer (--kv-send prompt): full blocks whole,
 * the last partial block row range by row range. The bytes posted go to *bytes_p. */
static duet_status_t post_kv(prefill_t *p, preq_t *r, const duet_kv_seq_t *kv, uint64_t *bytes_p)
{
    duet_kv_cache_t *cache = duet_engine_cache(p->engine);
    duet_status_t st = duet_kv_cache_stage_out(cache, kv->blocks, r->n_dst, -1);
    if (st != DUET_OK)
        return st;
    const duet_kv_pool_view_t *view = duet_kv_cache_transfer_view(cache);
    int n = r->n_tokens;
    int full = n / DUET_KV_BLOCK_TOKENS, rows = n % DUET_KV_BLOCK_TOKENS;
    size_t slice_bytes = duet_kv_slice_elems(view) * sizeof(uint16_t);     /* one (layer, K|V) */
    size_t block_bytes = (size_t)view->n_layer * 2 * slice_bytes;
    size_t head_bytes = (size_t)DUET_KV_BLOCK_TOKENS * (size_t)view->head_dim * sizeof(uint16_t);
    size_t row_bytes = (size_t)view->head_dim * sizeof(uint16_t);
    uint64_t bytes = 0;
    if (full > 0) {
        uint32_t *src = malloc((size_t)full * sizeof *src);
        if (!src)
            return DUET_ERR_NOMEM;
        for (int i = 0; i < full; i++)
            src[i] = (uint32_t)kv->blocks[i];
        st = duet_kvx_put_blocks(r->peer->kp, view, src, r->dst, full);
        free(src);
        if (st != DUET_OK)
            return st;
        bytes += (uint64_t)full * block_bytes;
    }
    if (rows > 0) {
        int b = kv->blocks[full];
        uint64_t dst = (uint64_t)r->dst[full] * block_bytes;
        for (int layer = 0; layer < view->n_layer; layer++)
            for (int k = 0; k < 2; k++)
                for (int h = 0; h < view->n_kv_head; h++) {
                    const uint8_t *src = (const uint8_t *)duet_kv_slice(view, b, layer, k) + (size_t)h * head_bytes;
                    uint64_t off = dst + ((size_t)layer * 2 + (size_t)k) * slice_bytes + (size_t)h * head_bytes;
                    if ((st = duet_kvx_put(r->peer->kp, src, (size_t)rows * row_bytes, off)) != DUET_OK)
                        return st;
                    bytes += (uint64_t)rows * row_bytes;
                }
    }
    *bytes_p = bytes;
    return DUET_OK;
}

/* ---- engine callbacks (engine thread, inside step / cancel / destroy) ---------------------- */

/* The first token is sampled and the prompt's KV is complete in our blocks: post the puts now
 * and hold the blocks (one reference each) until the flush after this step. */
/* Takes what sending the request's KV needs: its peer, and a reference on each of its blocks
 * until the flush. kv_filled: positions whose K/V will be in the cache once this step is done.
 * Failures are left in r->fail; the answer comes after the step's flush either way. */
static void prepare_send(prefill_t *p, preq_t *r, int kv_filled)
{
    r->prepared = true;
    if (duet_rpc_stream_cancelled(r->call)) {
        r->fail = DUET_ERR_CANCELLED;
        return;
    }
    if (duet_rpc_call_remaining_ms(r->call) <= 0) {
        r->fail = DUET_ERR_DEADLINE;   /* decode has given up on these blocks: never write them */
        return;
    }
    const duet_kv_seq_t *kv = duet_engine_seq_kv(r->seq);
    if (kv_filled < r->n_tokens || kv->n_blocks < r->n_dst) {
        duet_log_error("prefill: request %s: KV of %d tokens in %d blocks, expected %d in %d", r->id,
                       kv_filled, kv->n_blocks, r->n_tokens, r->n_dst);
        r->fail = DUET_ERR_INTERNAL;
        r->logged = true;
        return;
    }
    r->peer = peer_get(p, r);
    if (!r->peer) {
        duet_log_error("prefill: request %s: no connection to decode instance %s", r->id, r->decode_id);
        r->fail = DUET_ERR_UNAVAILABLE;
        r->logged = true;
        return;
    }
    r->src = malloc((size_t)r->n_dst * sizeof *r->src);
    if (!r->src) {
        r->fail = DUET_ERR_NOMEM;
        r->peer = NULL;
        return;
    }
    duet_kv_cache_t *cache = duet_engine_cache(p->engine);
    for (int i = 0; i < r->n_dst; i++) {
        r->src[i] = kv->blocks[i];
        duet_kv_block_ref(cache, r->src[i]);
    }
    r->n_src = r->n_dst;
    r->peer->touched = true;
    r->peer->last_used_ns = duet_clock_ns();
}

static void send_failed(preq_t *r, duet_status_t st)
{
    duet_log_error("prefill: request %s: posting KV puts to %s failed: %s", r->id, r->decode_id,
                   duet_status_str(st));
    r->fail = st == DUET_ERR_INVALID ? DUET_ERR_INVALID : DUET_ERR_UNAVAILABLE;
    r->logged = true;
    r->peer->failed = true;
}

/* The engine's layer hook (--kv-send layer): once a layer of a prompt's last chunk is computed,
 * that layer goes to the decode pool while the next layers compute. */
static void on_layer(void *user, int layer, duet_engine_seq_t *const *seqs, const int32_t *n_new, int n)
{
    prefill_t *p = user;
    for (int i = 0; i < n; i++) {
        preq_t *r = duet_engine_seq_user(seqs[i]);
        int filled = duet_engine_seq_kv(seqs[i])->n_tokens + n_new[i];
        if (filled < r->n_tokens)
            continue;   /* not the prompt's last chunk: its KV goes with the last one */
        if (layer == 0)
            prepare_send(p, r, filled);
        if (r->fail != DUET_OK || !r->peer)
            continue;
        duet_status_t st = post_layer(p, r, layer);
        if (st != DUET_OK)
            send_failed(r, st);
    }
}

static int sink_token(void *user, int32_t token)
{
    preq_t *r = user;
    prefill_t *p = r->p;
    r->first_token = token;
    r->t_first = duet_clock_ns();
    r->phase = PHASE_SENT;
    p->n_sent++;
    if (r->prepared)
        return 0;   /* sent layer by layer during the step */
    prepare_send(p, r, duet_engine_seq_kv(r->seq)->n_tokens);
    if (r->fail != DUET_OK || !r->peer)
        return 0;
    duet_status_t st = post_kv(p, r, duet_engine_seq_kv(r->seq), &r->kv_bytes);
    if (st != DUET_OK)
        send_failed(r, st);
    return 0;
}

static void sink_finish(void *user, const duet_gen_result_t *res)
{
    preq_t *r = user;
    r->seq = NULL;
    if (r->phase == PHASE_SENT)
        return;   /* answered after the flush */
    prefill_t *p = r->p;
    duet_status_t st = res->finish == DUET_FINISH_CANCELLED ? DUET_ERR_CANCELLED
                     : res->status != DUET_OK              ? res->status
                                                           : DUET_ERR_INTERNAL;
    if (st != DUET_ERR_CANCELLED)
        duet_log_error("prefill: request %s: prefill failed: %s", r->id, duet_status_str(st));
    end_error(p, r, st, st == DUET_ERR_CANCELLED ? "cancelled" : "prefill: the forward pass failed");
}

/* After a step: one flush per peer that got puts, then the answers. */
static void flush_sent(prefill_t *p)
{
    for (peer_t *e = p->peers; e; e = e->next) {
        e->flush_status = DUET_OK;
        if (e->touched) {
            e->flush_status = duet_kvx_flush(e->kp, p->conf->flush_timeout_ms);
            e->touched = false;
            if (e->flush_status != DUET_OK)
                e->failed = true;
        } else if (e->failed) {
            e->flush_status = DUET_ERR_UNAVAILABLE;
        }
    }
    /* Failed peers go before any answer: destroying the endpoint ends what it still had in
     * flight, and decode may reuse the blocks once it hears back. */
    for (peer_t *e = p->peers, *next; e; e = next) {
        next = e->next;
        if (!e->failed)
            continue;
        duet_log_warn("prefill: dropping the connection to decode instance %s", e->decode_id);
        for (preq_t *r = TAILQ_FIRST(&p->live); r; r = TAILQ_NEXT(r, live_entry))
            if (r->peer == e) {
                if (r->fail == DUET_OK)
                    r->fail = e->flush_status == DUET_ERR_DEADLINE ? DUET_ERR_DEADLINE : DUET_ERR_UNAVAILABLE;
                r->peer = NULL;
            }
        peer_drop(p, e);
    }
    duet_kv_cache_t *cache = duet_engine_cache(p->engine);
    int64_t now = duet_clock_ns();
    for (preq_t *r = TAILQ_FIRST(&p->live), *next; r; r = next) {
        next = TAILQ_NEXT(r, live_entry);
        if (r->phase != PHASE_SENT || r->seq)
            continue;   /* not sent yet (a sent request has always been finished by the engine) */
        uint64_t checksum = 0;
        if (r->fail == DUET_OK && r->want_checksum &&
            (r->fail = duet_kv_cache_checksum(cache, r->src, r->n_tokens, &checksum)) != DUET_OK)
            duet_log_error("prefill: request %s: cannot read back its KV for the checksum: %s", r->id,
                           duet_status_str(r->fail));
        for (int i = 0; i < r->n_src; i++)
            duet_kv_block_unref(cache, r->src[i]);
        r->n_src = 0;
        p->n_sent--;
        if (r->fail != DUET_OK) {
            if (r->fail != DUET_ERR_CANCELLED && !r->logged)
                duet_log_error("prefill: request %s: KV to %s not delivered: %s", r->id, r->decode_id,
                               duet_status_str(r->fail));
            end_error(p, r, r->fail, "prefill: the KV transfer to the decode instance failed");
            continue;
        }
        Duet__V1__PrefillTimings tm = DUET__V1__PREFILL_TIMINGS__INIT;
        tm.queue_us = (uint64_t)(r->t_submit - r->t_arrival) / 1000;
        tm.compute_us = (uint64_t)(r->t_first - r->t_submit) / 1000;
        tm.transfer_us = (uint64_t)(now - r->t_first) / 1000;
        Duet__V1__PrefillResponse resp = DUET__V1__PREFILL_RESPONSE__INIT;
        resp.first_token = (uint32_t)r->first_token;
        resp.kv_bytes = r->kv_bytes;
        resp.timings = &tm;
        resp.kv_checksum = checksum;
        resp.has_kv_checksum = r->want_checksum;
        duet_status_t st = duet_rpc_call_reply(r->call, &resp.base);
        /* The transfer's share that compute did not hide: from the last chunk to the flush. */
        duet_metric_observe(p->m_transfer, (now - r->t_first) / 1e9);
        duet_metric_add(p->m_kv_bytes, (double)r->kv_bytes);
        duet_metric_observe(p->m_queue, (r->t_submit - r->t_arrival) / 1e9);
        duet_metrics_outcome(&p->outcomes, st);
        TAILQ_REMOVE(&p->live, r, live_entry);
        duet_rpc_call_finish(r->call, st, st == DUET_OK ? NULL : "prefill: cannot send the reply");
        preq_free(r);
    }
}

/* ---- commands, cancellation, the loop ----------------------------------------------------- */

static void new_request(prefill_t *p, preq_t *r, bool stopping)
{
    r->p = p;
    TAILQ_INSERT_TAIL(&p->live, r, live_entry);
    if (stopping) {
        end_error(p, r, DUET_ERR_UNAVAILABLE, "prefill instance stopping");
        return;
    }
    if (duet_rpc_stream_cancelled(r->call)) {
        end_error(p, r, DUET_ERR_CANCELLED, "cancelled");
        return;
    }
    duet_gen_request_t q = {
        .prompt = r->tokens,
        .n_prompt = r->n_tokens,
        .max_tokens = 1,       /* the first token only: decode samples the rest */
        .ignore_eos = 1,
        .sampling = r->sampling,
    };
    duet_gen_sink_t sink = {sink_token, sink_finish, r};
    r->phase = PHASE_ENGINE;
    r->t_submit = duet_clock_ns();
    duet_status_t st = duet_engine_submit(p->engine, &q, &sink, &r->seq);
    if (st != DUET_OK) {
        duet_log_error("prefill: request %s: the engine refused it: %s", r->id, duet_status_str(st));
        end_error(p, r, st, "prefill: the engine refused the request");
    }
}

static void on_command(void *user, duet_cmd_t *c)
{
    prefill_t *p = user;
    if (c->kind == CMD_NEW) {
        preq_t *r = c->arg;
        pthread_mutex_lock(&p->mu);
        p->queued_tokens -= r->n_tokens;
        pthread_mutex_unlock(&p->mu);
        new_request(p, r, p->stop_seen);
    } else {
        p->stop_seen = true;
    }
    free(c);
}

static void scan_cancels(prefill_t *p)
{
    for (preq_t *r = TAILQ_FIRST(&p->live), *next; r; r = next) {
        next = TAILQ_NEXT(r, live_entry);
        if (r->phase == PHASE_ENGINE && r->seq && duet_rpc_stream_cancelled(r->call))
            duet_engine_cancel(p->engine, r->seq);   /* answers and frees r through sink_finish */
    }
}

static void publish_load(prefill_t *p, duet_engine_load_t *el)
{
    duet_engine_load(p->engine, el);
    pthread_mutex_lock(&p->mu);
    p->load.kv_blocks_free = el->blocks_free;
    p->load.queued_tokens = el->queued_tokens + p->queued_tokens;
    p->load.running_seqs = el->n_running;
    int64_t queued = p->load.queued_tokens;
    pthread_mutex_unlock(&p->mu);
    duet_metric_set(p->m_queue_tokens, (double)queued);
}

/* Between steps no request holds a peer: drops those unused for PEER_IDLE_MS. */
static void drop_idle_peers(prefill_t *p)
{
    int64_t now = duet_clock_ns();
    for (peer_t *e = p->peers, *next; e; e = next) {
        next = e->next;
        if (e->touched || now - e->last_used_ns < (int64_t)PEER_IDLE_MS * 1000000)
            continue;
        duet_log_info("prefill: closing the idle connection to decode instance %s", e->decode_id);
        peer_drop(p, e);
    }
}

/* On the engine thread once it has the engine: the layer hook, and a first load report. */
static duet_status_t on_start(void *user, duet_engine_thread_t *t)
{
    prefill_t *p = user;
    p->kvx = duet_engine_thread_kvx(t);
    p->pool = duet_engine_thread_pool(t);
    p->engine = duet_engine_thread_engine(t);
    if (p->by_layer)
        duet_engine_set_layer_hook(p->engine, on_layer, p);
    p->n_ctx = duet_engine_n_ctx(p->engine);
    duet_engine_load_t el;
    publish_load(p, &el);
    duet_log_info("prefill: %s, ctx %d, %d KV blocks (%.1f MiB), %d tokens per step", p->model->name,
                  p->n_ctx, p->n_blocks, duet_engine_thread_pool_bytes(t) / 1048576.0, p->conf->max_batch_tokens);
    return DUET_OK;
}

static int on_iteration(void *user)
{
    prefill_t *p = user;
    if (atomic_exchange(&p->cancel_check, 0))
        scan_cancels(p);
    if (p->stop_seen)
        return -1;
    while (duet_kvx_progress(p->kvx))
        ;
    int held = duet_engine_step(p->engine);
    if (held < 0)
        duet_log_error("prefill: engine step failed: %s", duet_status_str((duet_status_t)held));
    if (p->n_sent)
        flush_sent(p);
    duet_engine_load_t el;
    publish_load(p, &el);
    if (el.n_running > 0)
        return 1;
    drop_idle_peers(p);
    return 0;
}

/* Every call still held is answered before the engine goes: those computing end through their
 * sinks, those sent are flushed, the rest are refused. */
static void on_stop(void *user)
{
    prefill_t *p = user;
    for (preq_t *r = TAILQ_FIRST(&p->live), *next; r; r = next) {
        next = TAILQ_NEXT(r, live_entry);
        if (r->seq)
            duet_engine_cancel(p->engine, r->seq);   /* answers and frees r through sink_finish */
    }
    if (p->n_sent)
        flush_sent(p);
    while (p->peers)
        peer_drop(p, p->peers);
    for (preq_t *r; (r = TAILQ_FIRST(&p->live));)
        end_error(p, r, DUET_ERR_UNAVAILABLE, "prefill instance stopping");
}

/* ---- the Prefill handler (completion-queue threads) --------------------------------------- */

static void on_call_cancel(void *arg)
{
    prefill_t *p = arg;
    atomic_store(&p->cancel_check, 1);
    duet_engine_thread_wake(p->thread);
}

static duet_status_t prefill_call(duet_rpc_call_t *call, const ProtobufCMessage *msg, void *arg)
{
    prefill_t *p = arg;
    const Duet__V1__PrefillRequest *q = (const Duet__V1__PrefillRequest *)msg;
    char err[256];
    if (atomic_load(&p->stopping)) {
        duet_rpc_call_set_error(call, "prefill instance stopping");
        return DUET_ERR_UNAVAILABLE;
    }
    const duet_hparams_t *hp = &p->model->hp;
    const duet_prefill_limits_t lim = {p->n_ctx, p->n_vocab, hp->n_layer, hp->n_kv_head, hp->head_dim};
    duet_sampling_t sampling;
    duet_status_t st = duet_prefill_request_check(q, &lim, &sampling, err, sizeof err);
    if (st == DUET_OK && (!q->sampling || !q->sampling->has_seed))
        sampling.seed = (uint64_t)duet_clock_ns();
    if (st != DUET_OK) {
        duet_log_info("prefill: request %s: refused: %s", q->request_id, err);
        duet_rpc_call_set_error(call, "%s", err);
        return st;
    }
    const Duet__V1__KvTarget *t = q->kv_target;
    preq_t *r = calloc(1, sizeof *r);
    duet_cmd_t *c = calloc(1, sizeof *c);
    if (r) {
        r->tokens = malloc(q->n_token_ids * sizeof *r->tokens);
        r->dst = malloc(t->n_block_ids * sizeof *r->dst);
        r->addr = malloc(t->ucx_worker_address.len);
        r->rkey = malloc(t->rkey.len);
    }
    if (!c || !r || !r->tokens || !r->dst || !r->addr || !r->rkey) {
        free(c);
        preq_free(r);
        duet_rpc_call_set_error(call, "prefill: out of memory");
        return DUET_ERR_NOMEM;
    }
    r->call = call;
    r->p = p;
    r->t_arrival = duet_clock_ns();
    snprintf(r->id, sizeof r->id, "%s", q->request_id);
    r->attempt = q->attempt;
    r->n_tokens = (int)q->n_token_ids;
    for (int i = 0; i < r->n_tokens; i++)
        r->tokens[i] = (int32_t)q->token_ids[i];
    r->sampling = sampling;
    r->want_checksum = q->want_kv_checksum;
    snprintf(r->decode_id, sizeof r->decode_id, "%s", t->decode_instance_id);
    memcpy(r->addr, t->ucx_worker_address.data, t->ucx_worker_address.len);
    r->addr_len = t->ucx_worker_address.len;
    memcpy(r->rkey, t->rkey.data, t->rkey.len);
    r->rkey_len = t->rkey.len;
    r->base = t->remote_base;
    r->size = t->pool_bytes;
    r->n_dst = (int)t->n_block_ids;
    memcpy(r->dst, t->block_ids, t->n_block_ids * sizeof *r->dst);
    if (duet_fence_enter(p->fence, r->decode_id, r->id, r->attempt) != 0) {
        free(c);
        preq_free(r);
        duet_log_warn("prefill: request %s attempt %u: refused: its decode instance released it", q->request_id,
                      q->attempt);
        duet_rpc_call_set_error(call, "prefill: this call was released by its decode instance");
        return DUET_ERR_CANCELLED;
    }
    r->fenced = true;
    duet_rpc_call_defer(call);
    duet_rpc_stream_on_cancel(call, on_call_cancel, p);   /* its argument outlives every call */
    c->kind = CMD_NEW;
    c->arg = r;
    push_cmd(p, c, r->n_tokens);
    return DUET_OK;
}

/* ---- the service definition --------------------------------------------------------------- */

/* Release: whether a call of a decode instance may still write into its blocks. Answered from
 * the fence at once (on a completion-queue thread); an idle answer is final. */
static duet_status_t release_call(duet_rpc_call_t *call, const ProtobufCMessage *msg, void *arg)
{
    prefill_t *p = arg;
    const Duet__V1__ReleaseRequest *q = (const Duet__V1__ReleaseRequest *)msg;
    if (!q->request_id || !q->request_id[0] || !q->decode_instance_id || !q->decode_instance_id[0]) {
        duet_rpc_call_set_error(call, "request_id and decode_instance_id: required");
        return DUET_ERR_INVALID;
    }
    Duet__V1__ReleaseResponse resp = DUET__V1__RELEASE_RESPONSE__INIT;
    resp.idle = duet_fence_release(p->fence, q->decode_instance_id, q->request_id, q->attempt);
    return duet_rpc_call_reply(call, &resp.base);
}

static void prefill_free(prefill_t *p)
{
    if (p->model)
        duet_model_free(p->model);
    if (p->be)
        p->be->destroy(p->be);
    pthread_mutex_destroy(&p->mu);
    duet_fence_destroy(p->fence);
    free(p);
}

static duet_status_t prefill_start(duet_service_t *svc, const void *conf, void **state_p,
                                   const duet_rpc_method_t **methods_p, int *n_methods_p)
{
    const prefill_conf_t *c = conf;
    duet_kvx_err_mode_t err_mode;
    if (!strcmp(c->ucx_err_mode, "none"))
        err_mode = DUET_KVX_ERR_NONE;
    else if (!strcmp(c->ucx_err_mode, "peer"))
        err_mode = DUET_KVX_ERR_PEER;
    else {
        duet_log_error("prefill: --ucx-err-mode: '%s' is neither none nor peer", c->ucx_err_mode);
        return DUET_ERR_INVALID;
    }
    if (strcmp(c->kv_send, "layer") != 0 && strcmp(c->kv_send, "prompt") != 0) {
        duet_log_error("prefill: --kv-send: '%s' is neither layer nor prompt", c->kv_send);
        return DUET_ERR_INVALID;
    }
    bool kv_staged;
    if (duet_kv_transfer_parse("prefill", c->kv_transfer, &kv_staged) != DUET_OK)
        return DUET_ERR_INVALID;
    if (c->threads < 1 || c->ctx < 16 || c->max_batch_tokens < 16 || c->kv_blocks < 0 ||
        c->flush_timeout_ms < 1) {
        duet_log_error("prefill: need --threads >= 1, --ctx >= 16, --max-batch-tokens >= 16, "
                       "--kv-blocks >= 0, --flush-timeout-ms >= 1");
        return DUET_ERR_INVALID;
    }
    prefill_t *p = calloc(1, sizeof *p);
    if (!p)
        return DUET_ERR_NOMEM;
    TAILQ_INIT(&p->live);
    p->conf = c;
    p->err_mode = err_mode;
    if (!(p->fence = duet_fence_create(4096))) {
        free(p);
        return DUET_ERR_NOMEM;
    }
    p->by_layer = strcmp(c->kv_send, "layer") == 0;
    duet_metrics_t *m = duet_service_metrics(svc);
    p->m_transfer = duet_metrics_histogram(m, "duet_kv_transfer_seconds",
                                           "KV transfer time not hidden by compute: last chunk to proven flush.",
                                           duet_metrics_latency_buckets, duet_metrics_n_latency_buckets);
    p->m_kv_bytes = duet_metrics_counter(m, "duet_kv_transfer_bytes_total", "KV-cache bytes sent to decode instances.", NULL);
    p->m_queue_tokens = duet_metrics_gauge(m, "duet_prefill_queue_tokens", "Prompt tokens waiting for prefill.", NULL);
    p->m_queue = duet_metrics_histogram(m, "duet_request_queue_seconds", "Time from arrival to the engine taking the prompt.",
                                        duet_metrics_latency_buckets, duet_metrics_n_latency_buckets);
    duet_metrics_outcomes_init(&p->outcomes, m);
    pthread_mutex_init(&p->mu, NULL);
    duet_status_t st;
    char path_buf[4096], err[512] = "";
    const char *path = duet_model_resolve_path(c->model, path_buf, sizeof path_buf);
    if ((st = duet_device_open(c->device, c->threads, &p->be, err, sizeof err)) != DUET_OK) {
        duet_log_error("prefill: --device %s: %s", c->device, err);
        goto err_free;
    }
    if ((st = duet_model_load(path, p->be, &p->model, err, sizeof err)) != DUET_OK) {
        duet_log_error("prefill: %s: %s", path, err[0] ? err : duet_status_str(st));
        p->model = NULL;
        goto err_free;
    }
    p->n_vocab = p->model->hp.n_vocab;
    p->n_ctx = c->ctx > p->model->hp.n_ctx_train ? p->model->hp.n_ctx_train : c->ctx;
    /* Blocks live only from admission to the flush, so a few contexts' worth keeps the batch full. */
    p->n_blocks = c->kv_blocks > 0 ? c->kv_blocks : 4 * duet_kv_blocks_for(p->n_ctx);
    if (p->n_blocks < duet_kv_blocks_for(p->n_ctx))
        p->n_blocks = duet_kv_blocks_for(p->n_ctx);
    duet_engine_thread_conf_t tc = {
        .name = "prefill",
        .model = p->model,
        .engine = {.n_ctx = p->n_ctx, .n_blocks = p->n_blocks, .max_batch_tokens = c->max_batch_tokens,
                   .max_seqs = 64},
        .err_mode = err_mode,
        .kv_staged = kv_staged,
        .idle_ms = IDLE_WAIT_MS,
        .user = p,
        .on_start = on_start,
        .on_command = on_command,
        .on_iteration = on_iteration,
        .on_stop = on_stop,
    };
    if ((st = duet_engine_thread_start(&tc, &p->thread)) != DUET_OK)
        goto err_free;
    p->methods[0] = (duet_rpc_method_t){
        .path = "/duet.v1.Prefill/Prefill",
        .kind = DUET_RPC_UNARY,
        .request = &duet__v1__prefill_request__descriptor,
        .unary = prefill_call,
        .arg = p,
    };
    p->methods[1] = (duet_rpc_method_t){
        .path = "/duet.v1.Prefill/Release",
        .kind = DUET_RPC_UNARY,
        .request = &duet__v1__release_request__descriptor,
        .unary = release_call,
        .arg = p,
    };
    *state_p = p;
    *methods_p = p->methods;
    *n_methods_p = 2;
    return DUET_OK;

err_free:
    prefill_free(p);
    return st;
}

static void prefill_describe(void *state, duet_state_inst_t *info)
{
    prefill_t *p = state;
    snprintf(info->model, sizeof info->model, "%s", p->model->name);
    info->kv_blocks_total = p->n_blocks;
}

static void prefill_load(void *state, duet_state_load_t *load)
{
    prefill_t *p = state;
    pthread_mutex_lock(&p->mu);
    *load = p->load;
    pthread_mutex_unlock(&p->mu);
}

/* The server has stopped and every call is answered: stop the engine thread, then free. */
static void prefill_stop(void *state)
{
    prefill_t *p = state;
    if (!p)
        return;
    atomic_store(&p->stopping, 1);
    duet_cmd_t *c = calloc(1, sizeof *c);
    if (!c) {
        duet_log_error("prefill: out of memory while stopping; the engine thread is left running");
        return;
    }
    c->kind = CMD_STOP;
    push_cmd(p, c, 0);
    duet_engine_thread_join(p->thread);
    prefill_free(p);
}

const duet_service_def_t duet_prefill_service = {
    .name = "prefill",
    .summary = "duet prefill instance: batched, chunked prompt processing; KV put into decode pools over UCX",
    .opts = prefill_opts,
    .n_opts = (int)(sizeof prefill_opts / sizeof prefill_opts[0]),
    .conf_size = sizeof(prefill_conf_t),
    .start = prefill_start,
    .describe = prefill_describe,
    .load = prefill_load,
    .stop = prefill_stop,
};
