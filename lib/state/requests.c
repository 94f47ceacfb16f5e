/* lib/state/requests.c — request records (duet:req:<id>) and their state machine, every change
 * made by a Lua compare-and-set so a stale or duplicated message cannot undo a newer state.
 *
 *                    duet_state_req_create (gateway)
 *                               │
 *                               ▼
 *                            QUEUED
 *                               │ duet_state_req_transition(QUEUED→ROUTED): scheduler placed it
 *                               ▼                                          (sets routed_ms)
 *        ┌────────────────▶  ROUTED  ◀──────────────┬───────────────┐
 *        │ retry:               │ (ROUTED→PREFILLING): decode reserved blocks, called Prefill
 *        │ ROUTED→ROUTED,       ▼                   │               (sets prefill_start_ms)
 *        │ attempt+1        PREFILLING ─────────────┘ retry: PREFILLING→ROUTED, attempt+1
 *        │                      │ (PREFILLING→DECODING): prefill replied, first token out
 *        │                      ▼                                     (sets first_token_ms)
 *        └───────────────── DECODING ─────────────── retry: DECODING→ROUTED, attempt+1
 *                               │ (DECODING→DONE): stop condition
 *                               ▼
 *                             DONE
 *
 *   QUEUED, ROUTED, PREFILLING, DECODING ──(X→FAILED | X→CANCELLED)──▶ FAILED | CANCELLED
 *
 * Every transition is duet_state_req_transition(from, to), refused unless the record is in
 * `from`; entering DONE, FAILED or CANCELLED sets done_ms and the record's TTL. Each one also
 * appends {req, from, to, attempt, ms} to duet:events inside the same script. Times come from
 * Redis's clock (TIME), so every service's timestamps share one clock. */
#include <string.h>

#include "state_internal.h"

static const char *const state_names[DUET_REQ_STATE_COUNT] = {
    [DUET_REQ_QUEUED] = "QUEUED",         [DUET_REQ_ROUTED] = "ROUTED",
    [DUET_REQ_PREFILLING] = "PREFILLING", [DUET_REQ_DECODING] = "DECODING",
    [DUET_REQ_DONE] = "DONE",             [DUET_REQ_FAILED] = "FAILED",
    [DUET_REQ_CANCELLED] = "CANCELLED",
};

/* The hash field each state's entry time goes to. */
static const char *const state_time_field[DUET_REQ_STATE_COUNT] = {
    [DUET_REQ_QUEUED] = "arrival_ms",           [DUET_REQ_ROUTED] = "routed_ms",
    [DUET_REQ_PREFILLING] = "prefill_start_ms", [DUET_REQ_DECODING] = "first_token_ms",
    [DUET_REQ_DONE] = "done_ms",                [DUET_REQ_FAILED] = "done_ms",
    [DUET_REQ_CANCELLED] = "done_ms",
};

const char *duet_state_req_state_name(duet_req_state_t state)
{
    if (state < 0 || state >= DUET_REQ_STATE_COUNT)
        return "";
    return state_names[state];
}

duet_req_state_t duet_state_req_state_parse(const char *name)
{
    for (int i = 0; i < DUET_REQ_STATE_COUNT; i++)
        if (strcmp(name, state_names[i]) == 0)
            return (duet_req_state_t)i;
    return DUET_REQ_NONE;
}

int duet_state_req_state_is_terminal(duet_req_state_t state)
{
    return state == DUET_REQ_DONE || state == DUET_REQ_FAILED || state == DUET_REQ_CANCELLED;
}

/* The edges of the drawing above. */
static int edge_allowed(duet_req_state_t from, duet_req_state_t to)
{
    if (from < 0 || from >= DUET_REQ_STATE_COUNT || to < 0 || to >= DUET_REQ_STATE_COUNT)
        return 0;
    if (duet_state_req_state_is_terminal(from))
        return 0;
    if (to == DUET_REQ_FAILED || to == DUET_REQ_CANCELLED)
        return 1;
    if (to == DUET_REQ_ROUTED)            /* first placement, or a retry */
        return 1;
    return (from == DUET_REQ_ROUTED && to == DUET_REQ_PREFILLING) ||
           (from == DUET_REQ_PREFILLING && to == DUET_REQ_DECODING) ||
           (from == DUET_REQ_DECODING && to == DUET_REQ_DONE);
}

static void req_key(char *key, size_t cap, const char *id)
{
    snprintf(key, cap, "duet:req:%s", id);
}

/* KEYS: req, events. ARGV: id, arrival_ms ('0': now), events maxlen, field/value pairs.
 * Returns {1, arrival} when created, {0, state} when the id is taken. */
const char *const state_script_req_create =
    "if redis.call('EXISTS', KEYS[1]) == 1 then\n"
    "  return {0, redis.call('HGET', KEYS[1], 'state') or ''}\n"
    "end\n"
    "local t = redis.call('TIME')\n"
    "local now = string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000))\n"
    "local arrival = ARGV[2]\n"
    "if arrival == '0' then arrival = now end\n"
    "local f = {'id', ARGV[1], 'state', 'QUEUED', 'attempt', '0', 'arrival_ms', arrival}\n"
    "for i = 4, #ARGV do f[#f + 1] = ARGV[i] end\n"
    "redis.call('HSET', KEYS[1], unpack(f))\n"
    "redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'req', ARGV[1], 'from', '',\n"
    "           'to', 'QUEUED', 'attempt', '0', 'ms', now)\n"
    "return {1, arrival}\n";

/* KEYS: req, events. ARGV: id, from, to, retry ('1': attempt+1), time field, ttl ms ('0':
 * none), events maxlen, field/value pairs.
 * Returns {0} when there is no record, {1, state} when refused, {2, state, attempt, now}. */
const char *const state_script_req_transition =
    "local cur = redis.call('HGET', KEYS[1], 'state')\n"
    "if not cur then return {0} end\n"
    "if cur ~= ARGV[2] then return {1, cur} end\n"
    "local t = redis.call('TIME')\n"
    "local now = string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000))\n"
    "local attempt\n"
    "if ARGV[4] == '1' then\n"
    "  attempt = redis.call('HINCRBY', KEYS[1], 'attempt', 1)\n"
    "else\n"
    "  attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')\n"
    "end\n"
    "local f = {'state', ARGV[3], ARGV[5], now}\n"
    "for i = 8, #ARGV do f[#f + 1] = ARGV[i] end\n"
    "redis.call('HSET', KEYS[1], unpack(f))\n"
    "if ARGV[6] ~= '0' then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end\n"
    "redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'req', ARGV[1], 'from', cur,\n"
    "           'to', ARGV[3], 'attempt', attempt, 'ms', now)\n"
    "return {2, cur, attempt, now}\n";

duet_status_t duet_state_req_create(duet_state_t *store, const duet_state_req_new_t *req)
{
    if (!req || !state_id_valid(req->id) || req->prompt_tokens < 0 || req->max_tokens < 0 ||
        req->arrival_ms < 0 || (req->model && strlen(req->model) >= DUET_STATE_NAME_MAX)) {
        state_set_error(store, "state: bad request record");
        return DUET_ERR_INVALID;
    }
    char key[DUET_STATE_ID_MAX + 16];
    req_key(key, sizeof key, req->id);
    state_args_t a = {0};
    state_args_str(&a, key);
    state_args_str(&a, "duet:events");
    state_args_str(&a, req->id);
    state_args_int(&a, req->arrival_ms);
    state_args_int(&a, DUET_STATE_EVENTS_MAXLEN);
    state_args_str(&a, "prompt_tokens");
    state_args_int(&a, req->prompt_tokens);
    state_args_str(&a, "max_tokens");
    state_args_int(&a, req->max_tokens);
    if (req->model) {
        state_args_str(&a, "model");
        state_args_str(&a, req->model);
    }
    redisReply *r;
    duet_status_t st = state_script(store, STATE_SCRIPT_REQ_CREATE, 2, &a, &r);
    if (st != DUET_OK)
        return st;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != REDIS_REPLY_INTEGER) {
        state_set_error(store, "state: unexpected reply to create");
        st = DUET_ERR_INTERNAL;
    } else if (r->element[0]->integer == 0) {
        state_set_error(store, "state: request %s already exists", req->id);
        st = DUET_ERR_INVALID;
    }
    freeReplyObject(r);
    return st;
}

/* Appends the update's fields as field/value pairs. */
static void add_update(state_args_t *a, const duet_state_req_update_t *u)
{
    if (!u)
        return;
    if (u->prefill_inst) {
        state_args_str(a, "prefill_inst");
        state_args_str(a, u->prefill_inst);
    }
    if (u->decode_inst) {
        state_args_str(a, "decode_inst");
        state_args_str(a, u->decode_inst);
    }
    if (u->kv_bytes >= 0) {
        state_args_str(a, "kv_bytes");
        state_args_int(a, u->kv_bytes);
    }
    if (u->generated_tokens >= 0) {
        state_args_str(a, "generated_tokens");
        state_args_int(a, u->generated_tokens);
    }
    if (u->finish_reason) {
        state_args_str(a, "finish_reason");
        state_args_str(a, u->finish_reason);
    }
    if (u->error) {
        state_args_str(a, "error");
        state_args_str(a, u->error);
    }
}

static int update_valid(const duet_state_req_update_t *u)
{
    if (!u)
        return 1;
    return (!u->prefill_inst || state_id_valid(u->prefill_inst)) &&
           (!u->decode_inst || state_id_valid(u->decode_inst)) &&
           (!u->finish_reason || strlen(u->finish_reason) < DUET_STATE_NAME_MAX) &&
           (!u->error || strlen(u->error) < DUET_STATE_ERROR_MAX);
}

duet_status_t duet_state_req_transition(duet_state_t *store, const char *id,
                                        duet_req_state_t from, duet_req_state_t to,
                                        const duet_state_req_update_t *update,
                                        duet_req_state_t *state_p)
{
    if (!state_id_valid(id) || !update_valid(update)) {
        state_set_error(store, "state: bad transition arguments");
        return DUET_ERR_INVALID;
    }
    if (!edge_allowed(from, to)) {
        state_set_error(store, "state: %s: %s -> %s is not a transition", id,
                        duet_state_req_state_name(from), duet_state_req_state_name(to));
        return DUET_ERR_INVALID;
    }
    int retry = to == DUET_REQ_ROUTED && from != DUET_REQ_QUEUED;
    int64_t ttl_ms = duet_state_req_state_is_terminal(to) ? (int64_t)store->req_ttl_s * 1000 : 0;

    char key[DUET_STATE_ID_MAX + 16];
    req_key(key, sizeof key, id);
    state_args_t a = {0};
    state_args_str(&a, key);
    state_args_str(&a, "duet:events");
    state_args_str(&a, id);
    state_args_str(&a, state_names[from]);
    state_args_str(&a, state_names[to]);
    state_args_str(&a, retry ? "1" : "0");
    state_args_str(&a, state_time_field[to]);
    state_args_int(&a, ttl_ms);
    state_args_int(&a, DUET_STATE_EVENTS_MAXLEN);
    add_update(&a, update);

    redisReply *r;
    duet_status_t st = state_script(store, STATE_SCRIPT_REQ_TRANSITION, 2, &a, &r);
    if (st != DUET_OK)
        return st;
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 1 ||
        r->element[0]->type != REDIS_REPLY_INTEGER ||
        (r->element[0]->integer != 0 &&
         (r->elements < 2 || r->element[1]->type != REDIS_REPLY_STRING))) {
        state_set_error(store, "state: unexpected reply to transition");
        st = DUET_ERR_INTERNAL;
        goto out_free_reply;
    }
    if (r->element[0]->integer == 0) {
        state_set_error(store, "state: request %s not found", id);
        st = DUET_ERR_NOT_FOUND;
        goto out_free_reply;
    }
    duet_req_state_t found = duet_state_req_state_parse(r->element[1]->str);
    if (r->element[0]->integer == 1) {
        state_set_error(store, "state: %s: refused %s -> %s, request is %s", id,
                        state_names[from], state_names[to], r->element[1]->str);
        st = DUET_ERR_INVALID;
    }
    if (state_p)
        *state_p = found;
out_free_reply:
    freeReplyObject(r);
    return st;
}

duet_status_t duet_state_req_get(duet_state_t *store, const char *id, duet_state_req_t *req_p)
{
    if (!state_id_valid(id) || !req_p) {
        state_set_error(store, "state: bad request id");
        return DUET_ERR_INVALID;
    }
    char key[DUET_STATE_ID_MAX + 16];
    req_key(key, sizeof key, id);
    state_args_t a = {0};
    state_args_str(&a, "HGETALL");
    state_args_str(&a, key);
    redisReply *r;
    duet_status_t st = state_pipeline(store, 1, &a, &r);
    if (st != DUET_OK)
        return st;
    if (r->type == REDIS_REPLY_ERROR) {
        st = state_reply_error(store, r);
        goto out_free_reply;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements % 2) {
        state_set_error(store, "state: unexpected reply to HGETALL");
        st = DUET_ERR_INTERNAL;
        goto out_free_reply;
    }
    if (r->elements == 0) {
        state_set_error(store, "state: request %s not found", id);
        st = DUET_ERR_NOT_FOUND;
        goto out_free_reply;
    }
    duet_state_req_t q;
    memset(&q, 0, sizeof q);
    q.state = DUET_REQ_NONE;
    state_copy_str(q.id, sizeof q.id, id, strlen(id));
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *f = r->element[i], *v = r->element[i + 1];
        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        const char *n = f->str;
        int64_t iv = state_parse_int(v->str, v->len);
        if (strcmp(n, "state") == 0)                 q.state = duet_state_req_state_parse(v->str);
        else if (strcmp(n, "attempt") == 0)          q.attempt = (int)iv;
        else if (strcmp(n, "model") == 0)            state_copy_str(q.model, sizeof q.model, v->str, v->len);
        else if (strcmp(n, "prefill_inst") == 0)     state_copy_str(q.prefill_inst, sizeof q.prefill_inst, v->str, v->len);
        else if (strcmp(n, "decode_inst") == 0)      state_copy_str(q.decode_inst, sizeof q.decode_inst, v->str, v->len);
        else if (strcmp(n, "prompt_tokens") == 0)    q.prompt_tokens = iv;
        else if (strcmp(n, "max_tokens") == 0)       q.max_tokens = iv;
        else if (strcmp(n, "generated_tokens") == 0) q.generated_tokens = iv;
        else if (strcmp(n, "kv_bytes") == 0)         q.kv_bytes = iv;
        else if (strcmp(n, "arrival_ms") == 0)       q.arrival_ms = iv;
        else if (strcmp(n, "routed_ms") == 0)        q.routed_ms = iv;
        else if (strcmp(n, "prefill_start_ms") == 0) q.prefill_start_ms = iv;
        else if (strcmp(n, "first_token_ms") == 0)   q.first_token_ms = iv;
        else if (strcmp(n, "done_ms") == 0)          q.done_ms = iv;
        else if (strcmp(n, "finish_reason") == 0)    state_copy_str(q.finish_reason, sizeof q.finish_reason, v->str, v->len);
        else if (strcmp(n, "error") == 0)            state_copy_str(q.error, sizeof q.error, v->str, v->len);
    }
    if (q.state == DUET_REQ_NONE) {
        state_set_error(store, "state: request %s has no valid state", id);
        st = DUET_ERR_FORMAT;
        goto out_free_reply;
    }
    *req_p = q;
out_free_reply:
    freeReplyObject(r);
    return st;
}
