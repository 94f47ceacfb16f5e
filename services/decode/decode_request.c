/* services/decode/decode_request.c — validation of a Decode.Generate request: token ids below
 * the vocabulary, prompt + max_tokens within the context, ids and addresses that fit, sampling
 * the engine accepts. */
#include "decode_request.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../sampling_params.h"
#include "state.h"

static duet_status_t validate(const Duet__V1__DecodeRequest *q, int n_vocab, int n_ctx, int max_tokens,
                              char *err, size_t cap)
{
    if (!q->request_id[0] || strlen(q->request_id) >= DUET_STATE_ID_MAX) {
        snprintf(err, cap, "request_id: must be 1 to %d bytes", DUET_STATE_ID_MAX - 1);
        return DUET_ERR_INVALID;
    }
    if (q->n_prompt_token_ids == 0) {
        snprintf(err, cap, "prompt_token_ids: empty");
        return DUET_ERR_INVALID;
    }
    for (size_t i = 0; i < q->n_prompt_token_ids; i++)
        if (q->prompt_token_ids[i] >= (uint32_t)n_vocab) {
            snprintf(err, cap, "prompt_token_ids[%zu]: %u is not below the vocabulary size %d", i,
                     q->prompt_token_ids[i], n_vocab);
            return DUET_ERR_INVALID;
        }
    for (size_t i = 0; i < q->n_generated_token_ids; i++)
        if (q->generated_token_ids[i] >= (uint32_t)n_vocab) {
            snprintf(err, cap, "generated_token_ids[%zu]: %u is not below the vocabulary size %d", i,
                     q->generated_token_ids[i], n_vocab);
            return DUET_ERR_INVALID;
        }
    if (q->n_prompt_token_ids >= (size_t)n_ctx) {
        snprintf(err, cap, "prompt_token_ids: %zu tokens leave no room for output in the context of %d",
                 q->n_prompt_token_ids, n_ctx);
        return DUET_ERR_INVALID;
    }
    if ((int64_t)q->n_prompt_token_ids + max_tokens > n_ctx) {
        snprintf(err, cap, "stop.max_tokens: %d prompt tokens + %lld exceed the context of %d",
                 (int)q->n_prompt_token_ids,
                 q->stop && q->stop->max_tokens ? (long long)q->stop->max_tokens : (long long)max_tokens,
                 n_ctx);
        return DUET_ERR_INVALID;
    }
    if ((int64_t)q->n_generated_token_ids >= max_tokens) {
        snprintf(err, cap, "generated_token_ids: %zu tokens already reach max_tokens %d",
                 q->n_generated_token_ids, max_tokens);
        return DUET_ERR_INVALID;
    }
    if (strlen(q->prefill_address) >= DUET_STATE_ADDR_MAX ||
        strlen(q->prefill_instance_id) >= DUET_STATE_ID_MAX) {
        snprintf(err, cap, "prefill_address: too long");
        return DUET_ERR_INVALID;
    }
    if (q->stop)
        for (size_t i = 0; i < q->stop->n_stop_token_ids; i++)
            if (q->stop->stop_token_ids[i] >= (uint32_t)n_vocab) {
                snprintf(err, cap, "stop.stop_token_ids[%zu]: %u is not below the vocabulary size %d",
                         i, q->stop->stop_token_ids[i], n_vocab);
                return DUET_ERR_INVALID;
            }
    return DUET_OK;
}

duet_status_t duet_decode_request_check(const Duet__V1__DecodeRequest *q, int n_vocab, int n_ctx,
                                        int *max_tokens_p, duet_sampling_t *sampling_p,
                                        char *err, size_t cap)
{
    int n_prompt = (int)q->n_prompt_token_ids;
    /* 0: up to the context. Larger than the context is clamped only far enough to be refused. */
    uint32_t want = q->stop ? q->stop->max_tokens : 0;
    int max_tokens = want == 0 ? n_ctx - n_prompt
                   : want > (uint32_t)n_ctx ? n_ctx + 1 : (int)want;
    duet_status_t st = validate(q, n_vocab, n_ctx, max_tokens, err, cap);
    if (st != DUET_OK)
        return st;
    duet_sampling_t s;
    duet_sampling_from_proto(q->sampling, &s);
    if ((st = duet_sampling_validate(&s, err, cap)) != DUET_OK)
        return st;
    *max_tokens_p = max_tokens;
    *sampling_p = s;
    return DUET_OK;
}
