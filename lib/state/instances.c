/* lib/state/instances.c — the instance registry: duet:inst:<id> hashes that live
 * DUET_STATE_INST_TTL_MS past their last heartbeat, and the duet:insts sorted set of ids scored
 * by that heartbeat (Redis clock), pruned whenever it is listed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "state_internal.h"

static const char *const role_names[DUET_ROLE_COUNT] = {
    [DUET_ROLE_PREFILL] = "prefill", [DUET_ROLE_DECODE] = "decode", [DUET_ROLE_MIXED] = "mixed",
    [DUET_ROLE_GATEWAY] = "gateway", [DUET_ROLE_SCHEDULER] = "scheduler",
};

const char *duet_state_role_name(duet_inst_role_t role)
{
    if (role < 0 || role >= DUET_ROLE_COUNT)
        return "";
    return role_names[role];
}

duet_inst_role_t duet_state_role_parse(const char *name)
{
    for (int i = 0; i < DUET_ROLE_COUNT; i++)
        if (strcmp(name, role_names[i]) == 0)
            return (duet_inst_role_t)i;
    return DUET_ROLE_ANY;
}

static void inst_key(char *key, size_t cap, const char *id)
{
    snprintf(key, cap, "duet:inst:%s", id);
}

/* KEYS: inst, insts. ARGV: id, ttl ms, field/value pairs. Replaces the record whole. */
const char *const state_script_inst_register =
    "local t = redis.call('TIME')\n"
    "local now = string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000))\n"
    "local f = {'last_heartbeat_ms', now}\n"
    "for i = 3, #ARGV do f[#f + 1] = ARGV[i] end\n"
    "redis.call('DEL', KEYS[1])\n"
    "redis.call('HSET', KEYS[1], unpack(f))\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
    "redis.call('ZADD', KEYS[2], now, ARGV[1])\n"
    "return now\n";

/* KEYS: inst, insts. ARGV: id, ttl ms, field/value pairs.
 * HSET + PEXPIRE + ZADD only while the record exists: a heartbeat that arrives after expiry
 * would otherwise recreate a record holding load but no address. Returns 1, or 0 if expired. */
const char *const state_script_inst_heartbeat =
    "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end\n"
    "local t = redis.call('TIME')\n"
    "local now = string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000))\n"
    "local f = {'last_heartbeat_ms', now}\n"
    "for i = 3, #ARGV do f[#f + 1] = ARGV[i] end\n"
    "redis.call('HSET', KEYS[1], unpack(f))\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
    "redis.call('ZADD', KEYS[2], now, ARGV[1])\n"
    "return 1\n";

/* KEYS: insts. ARGV: ttl ms, role ('': any), key prefix.
 * Drops ids whose heartbeat is older than the TTL, then returns the flat HGETALL of every live
 * record of that role. Reads the hashes by a prefix, not KEYS, so it needs one Redis, not a
 * cluster — which is what duet runs. */
const char *const state_script_inst_list =
    "local t = redis.call('TIME')\n"
    "local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"
    "redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf',\n"
    "           '(' .. string.format('%d', now - tonumber(ARGV[1])))\n"
    "local out = {}\n"
    "for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do\n"
    "  local key = ARGV[3] .. id\n"
    "  if ARGV[2] == '' or redis.call('HGET', key, 'role') == ARGV[2] then\n"
    "    local h = redis.call('HGETALL', key)\n"
    "    if #h > 0 then out[#out + 1] = h end\n"
    "  end\n"
    "end\n"
    "return out\n";

duet_status_t duet_state_inst_make_id(char *id, size_t cap)
{
    char host[64];
    if (gethostname(host, sizeof host) != 0)
        strcpy(host, "host");
    host[sizeof host - 1] = '\0';
    /* Keep the id a single printable token whatever the hostname holds. */
    for (char *p = host; *p; p++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f)
            *p = '_';
    uint32_t rnd;
    if (getrandom(&rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
        return DUET_ERR_IO;
    char buf[DUET_STATE_ID_MAX];
    snprintf(buf, sizeof buf, "%.40s-%ld-%08x", host, (long)getpid(), rnd);
    if (!id || strlen(buf) >= cap)
        return DUET_ERR_INVALID;
    strcpy(id, buf);
    return DUET_OK;
}

static void add_load(state_args_t *a, const duet_state_load_t *load)
{
    state_args_str(a, "kv_blocks_free");
    state_args_int(a, load->kv_blocks_free);
    state_args_str(a, "queued_tokens");
    state_args_int(a, load->queued_tokens);
    state_args_str(a, "running_seqs");
    state_args_int(a, load->running_seqs);
}

duet_status_t duet_state_inst_register(duet_state_t *store, const duet_state_inst_t *info)
{
    if (!info || !state_id_valid(info->id) || info->role < 0 || info->role >= DUET_ROLE_COUNT ||
        strnlen(info->grpc_addr, sizeof info->grpc_addr) == sizeof info->grpc_addr ||
        strnlen(info->model, sizeof info->model) == sizeof info->model ||
        strnlen(info->version, sizeof info->version) == sizeof info->version ||
        (info->ucx_addr_len && !info->ucx_addr) || (info->rkey_len && !info->rkey)) {
        state_set_error(store, "state: bad instance record");
        return DUET_ERR_INVALID;
    }
    char key[DUET_STATE_ID_MAX + 16];
    inst_key(key, sizeof key, info->id);
    state_args_t a = {0};
    state_args_str(&a, key);
    state_args_str(&a, "duet:insts");
    state_args_str(&a, info->id);
    state_args_int(&a, DUET_STATE_INST_TTL_MS);
    state_args_str(&a, "id");
    state_args_str(&a, info->id);
    state_args_str(&a, "role");
    state_args_str(&a, role_names[info->role]);
    state_args_str(&a, "grpc_addr");
    state_args_str(&a, info->grpc_addr);
    state_args_str(&a, "model");
    state_args_str(&a, info->model);
    state_args_str(&a, "version");
    state_args_str(&a, info->version);
    state_args_str(&a, "ucx_addr");
    state_args_bin(&a, info->ucx_addr, info->ucx_addr_len);
    state_args_str(&a, "rkey");
    state_args_bin(&a, info->rkey, info->rkey_len);
    state_args_str(&a, "pool_base");
    state_args_uint(&a, info->pool_base);
    state_args_str(&a, "kv_blocks_total");
    state_args_int(&a, info->kv_blocks_total);
    add_load(&a, &info->load);

    redisReply *r;
    duet_status_t st = state_script(store, STATE_SCRIPT_INST_REGISTER, 2, &a, &r);
    if (st != DUET_OK)
        return st;
    freeReplyObject(r);
    return DUET_OK;
}

duet_status_t duet_state_inst_heartbeat(duet_state_t *store, const char *id,
                                        const duet_state_load_t *load)
{
    if (!state_id_valid(id) || !load) {
        state_set_error(store, "state: bad heartbeat arguments");
        return DUET_ERR_INVALID;
    }
    char key[DUET_STATE_ID_MAX + 16];
    inst_key(key, sizeof key, id);
    state_args_t a = {0};
    state_args_str(&a, key);
    state_args_str(&a, "duet:insts");
    state_args_str(&a, id);
    state_args_int(&a, DUET_STATE_INST_TTL_MS);
    add_load(&a, load);

    redisReply *r;
    duet_status_t st = state_script(store, STATE_SCRIPT_INST_HEARTBEAT, 2, &a, &r);
    if (st != DUET_OK)
        return st;
    if (r->type != REDIS_REPLY_INTEGER) {
        state_set_error(store, "state: unexpected reply to heartbeat");
        st = DUET_ERR_INTERNAL;
    } else if (r->integer == 0) {
        state_set_error(store, "state: instance %s expired; register it again", id);
        st = DUET_ERR_NOT_FOUND;
    }
    freeReplyObject(r);
    return st;
}

static const redisReply *hash_field(const redisReply *h, const char *name)
{
    for (size_t i = 0; i + 1 < h->elements; i += 2)
        if (h->element[i]->type == REDIS_REPLY_STRING && strcmp(h->element[i]->str, name) == 0 &&
            h->element[i + 1]->type == REDIS_REPLY_STRING)
            return h->element[i + 1];
    return NULL;
}

static int64_t hash_int(const redisReply *h, const char *name)
{
    const redisReply *v = hash_field(h, name);
    return v ? state_parse_int(v->str, v->len) : 0;
}

static void hash_str(const redisReply *h, const char *name, char *dst, size_t cap)
{
    const redisReply *v = hash_field(h, name);
    if (v)
        state_copy_str(dst, cap, v->str, v->len);
    else
        dst[0] = '\0';
}

/* Copies blob `name` of h to *cursor, points *ptr_p at it and advances the cursor. */
static void hash_blob(const redisReply *h, const char *name, uint8_t **cursor,
                      const uint8_t **ptr_p, size_t *len_p)
{
    const redisReply *v = hash_field(h, name);
    *ptr_p = NULL;
    *len_p = 0;
    if (!v || v->len == 0)
        return;
    memcpy(*cursor, v->str, v->len);
    *ptr_p = *cursor;
    *len_p = v->len;
    *cursor += v->len;
}

duet_status_t duet_state_inst_list(duet_state_t *store, duet_inst_role_t role,
                                   duet_state_inst_t **insts_p, int *n_p)
{
    if (role < DUET_ROLE_ANY || role >= DUET_ROLE_COUNT || !insts_p || !n_p) {
        state_set_error(store, "state: bad list arguments");
        return DUET_ERR_INVALID;
    }
    state_args_t a = {0};
    state_args_str(&a, "duet:insts");
    state_args_int(&a, DUET_STATE_INST_TTL_MS);
    state_args_str(&a, role == DUET_ROLE_ANY ? "" : role_names[role]);
    state_args_str(&a, "duet:inst:");
    redisReply *r;
    duet_status_t st = state_script(store, STATE_SCRIPT_INST_LIST, 1, &a, &r);
    if (st != DUET_OK)
        return st;
    if (r->type != REDIS_REPLY_ARRAY) {
        state_set_error(store, "state: unexpected reply to list");
        st = DUET_ERR_INTERNAL;
        goto out_free_reply;
    }
    /* One allocation: the array, then every blob it points to. */
    size_t n = 0, blob_bytes = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *h = r->element[i];
        if (h->type != REDIS_REPLY_ARRAY || h->elements % 2)
            continue;
        const redisReply *u = hash_field(h, "ucx_addr"), *k = hash_field(h, "rkey");
        blob_bytes += (u ? u->len : 0) + (k ? k->len : 0);
        n++;
    }
    duet_state_inst_t *insts = NULL;
    if (n) {
        insts = calloc(1, n * sizeof *insts + blob_bytes);
        if (!insts) {
            st = DUET_ERR_NOMEM;
            goto out_free_reply;
        }
    }
    uint8_t *cursor = insts ? (uint8_t *)(insts + n) : NULL;
    size_t j = 0;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *h = r->element[i];
        if (h->type != REDIS_REPLY_ARRAY || h->elements % 2)
            continue;
        duet_state_inst_t *in = &insts[j++];
        hash_str(h, "id", in->id, sizeof in->id);
        char role_name[32];
        hash_str(h, "role", role_name, sizeof role_name);
        in->role = duet_state_role_parse(role_name);
        hash_str(h, "grpc_addr", in->grpc_addr, sizeof in->grpc_addr);
        hash_str(h, "model", in->model, sizeof in->model);
        hash_str(h, "version", in->version, sizeof in->version);
        hash_blob(h, "ucx_addr", &cursor, &in->ucx_addr, &in->ucx_addr_len);
        hash_blob(h, "rkey", &cursor, &in->rkey, &in->rkey_len);
            const redisReply *base = hash_field(h, "pool_base");
        in->pool_base = base ? state_parse_uint(base->str, base->len) : 0;
        in->kv_blocks_total = hash_int(h, "kv_blocks_total");
        in->load.kv_blocks_free = hash_int(h, "kv_blocks_free");
        in->load.queued_tokens = hash_int(h, "queued_tokens");
        in->load.running_seqs = hash_int(h, "running_seqs");
        in->last_heartbeat_ms = hash_int(h, "last_heartbeat_ms");
    }
    *insts_p = insts;
    *n_p = (int)n;
out_free_reply:
    freeReplyObject(r);
    return st;
}

void duet_state_inst_list_free(duet_state_inst_t *insts)
{
    free(insts);
}

duet_status_t duet_state_inst_remove(duet_state_t *store, const char *id)
{
    if (!state_id_valid(id)) {
        state_set_error(store, "state: bad instance id");
        return DUET_ERR_INVALID;
    }
    char key[DUET_STATE_ID_MAX + 16];
    inst_key(key, sizeof key, id);
    state_args_t cmds[2];
    memset(cmds, 0, sizeof cmds);
    state_args_str(&cmds[0], "DEL");
    state_args_str(&cmds[0], key);
    state_args_str(&cmds[1], "ZREM");
    state_args_str(&cmds[1], "duet:insts");
    state_args_str(&cmds[1], id);
    redisReply *r[2];
    duet_status_t st = state_pipeline(store, 2, cmds, r);
    if (st != DUET_OK)
        return st;
    for (int i = 0; i < 2; i++) {
        if (st == DUET_OK && r[i]->type == REDIS_REPLY_ERROR)
            st = state_reply_error(store, r[i]);
        freeReplyObject(r[i]);
    }
    return st;
}
