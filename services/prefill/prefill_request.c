/* services/prefill/prefill_request.c — validation of a Prefill request: token ids below the
 * vocabulary, the prompt within the context, a KV target laid out like this model with one block
 * id per 16 tokens inside the decode pool, sampling the engine accepts. */
#include "prefill_request.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../sampling_params.h"
#include "kvcache.h"

static duet_status_t validate(const Duet__V1__PrefillRequest *q, const duet_prefill_limits_t *lim,
                              char *err, size_t cap)
{
    const Duet__V1__KvTarget *t = q->kv_target;
    if (strlen(q->request_id) >= DUET_PREFILL_ID_MAX) {
        snprintf(err, cap, "request_id: longer than %d bytes", DUET_PREFILL_ID_MAX - 1);
        return DUET_ERR_INVALID;
    }
    if (q->n_token_ids == 0) {
        snprintf(err, cap, "token_ids: empty");
        return DUET_ERR_INVALID;
    }
    if (q->n_token_ids >= (size_t)lim->n_ctx) {
        snprintf(err, cap, "token_ids: %zu tokens do not fit the context of %d", q->n_token_ids, lim->n_ctx);
        return DUET_ERR_INVALID;
    }
    for (size_t i = 0; i < q->n_token_ids; i++)
        if (q->token_ids[i] >= (uint32_t)lim->n_vocab) {
            snprintf(err, cap, "token_ids[%zu]: %u is not below the vocabulary size %d", i,
                     q->token_ids[i], lim->n_vocab);
            return DUET_ERR_INVALID;
        }
    if (!t) {
        snprintf(err, cap, "kv_target: missing");
        return DUET_ERR_INVALID;
    }
    /* The layout must be ours, or the bytes would land in the wrong places. */
    const struct {
        const char *name;
        uint32_t got;
        int want;
    } layout[] = {
        {"n_layer", t->n_layer, lim->n_layer},
        {"n_kv_head", t->n_kv_head, lim->n_kv_head},
        {"head_dim", t->head_dim, lim->head_dim},
        {"block_tokens", t->block_tokens, DUET_KV_BLOCK_TOKENS},
        {"elem_bytes", t->elem_bytes, 2},
    };
    for (size_t i = 0; i < sizeof layout / sizeof layout[0]; i++)
        if (layout[i].got != (uint32_t)layout[i].want) {
            snprintf(err, cap, "kv_target.%s: %u, this model has %d", layout[i].name, layout[i].got,
                     layout[i].want);
            return DUET_ERR_INVALID;
        }
    size_t want = (size_t)duet_kv_blocks_for((int)q->n_token_ids);
    if (t->n_block_ids != want) {
        snprintf(err, cap, "kv_target.block_ids: %zu blocks for %zu tokens, need %zu", t->n_block_ids,
                 q->n_token_ids, want);
        return DUET_ERR_INVALID;
    }
    uint64_t block_bytes = (uint64_t)t->n_layer * 2 * t->n_kv_head * t->block_tokens * t->head_dim * t->elem_bytes;
    uint64_t pool_blocks = t->pool_bytes / block_bytes;
    if (pool_blocks == 0) {
        snprintf(err, cap, "kv_target.pool_bytes: %llu does not hold one %llu-byte block",
                 (unsigned long long)t->pool_bytes, (unsigned long long)block_bytes);
        return DUET_ERR_INVALID;
    }
    for (size_t i = 0; i < t->n_block_ids; i++)
        if (t->block_ids[i] >= pool_blocks) {
            snprintf(err, cap, "kv_target.block_ids[%zu]: block %u is outside the decode pool of %llu blocks",
                     i, t->block_ids[i], (unsigned long long)pool_blocks);
            return DUET_ERR_INVALID;
        }
    if (t->n_block_generations != t->n_block_ids) {
        snprintf(err, cap, "kv_target.block_generations: %zu, one per block id (%zu) needed",
                 t->n_block_generations, t->n_block_ids);
        return DUET_ERR_INVALID;
    }
    if (!t->decode_instance_id[0] || strlen(t->decode_instance_id) >= DUET_PREFILL_ID_MAX) {
        snprintf(err, cap, "kv_target.decode_instance_id: must be 1 to %d bytes", DUET_PREFILL_ID_MAX - 1);
        return DUET_ERR_INVALID;
    }
    if (!t->ucx_worker_address.len || !t->rkey.len) {
        snprintf(err, cap, "kv_target.%s: empty", t->rkey.len ? "ucx_worker_address" : "rkey");
        return DUET_ERR_INVALID;
    }
    return DUET_OK;
}

duet_status_t duet_prefill_request_check(const Duet__V1__PrefillRequest *q, const duet_prefill_limits_t *lim,
                                         duet_sampling_t *sampling_p, char *err, size_t cap)
{
    duet_status_t st = validate(q, lim, err, cap);
    if (st != DUET_OK)
        return st;
    duet_sampling_t s;
    duet_sampling_from_proto(q->sampling, &s);
    if ((st = duet_sampling_validate(&s, err, cap)) != DUET_OK)
        return st;
    *sampling_p = s;
    return DUET_OK;
}
