/* tests/fuzz/fuzz_prefill_request.c — libFuzzer target for the prefill service's input path:
 * bytes → PrefillRequest unpack → duet_prefill_request_check (services/prefill/prefill_request.c).
 *
 * Input: byte 0 chooses the instance (SmolLM2-135M's layout or a tiny one; context 2048, 64, 17
 * or 1), the rest is a serialized PrefillRequest.
 * Invariants of an accepted request, from what the engine and the KV puts rely on: 1 <= tokens
 * < ctx, each below n_vocab; a KV target with this model's layout, exactly one block per 16
 * tokens, each block (id + 1) * block bytes inside pool_bytes, one generation per block, ids that
 * fit the buffers they are copied to, a non-empty worker address and rkey; sampling numbers
 * finite and inside the sampler's ranges. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "duet/v1/prefill.pb-c.h"
#include "fuzz_check.h"
#include "kvcache.h"
#include "prefill_request.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int ctxs[4] = {2048, 64, 17, 1};
    static const duet_prefill_limits_t models[2] = {
        {0, 49152, 30, 3, 64},   /* SmolLM2-135M */
        {0, 256, 2, 1, 8},
    };
    if (size < 1)
        return 0;
    duet_prefill_limits_t lim = models[(data[0] >> 2) & 1];
    lim.n_ctx = ctxs[data[0] & 3];
    Duet__V1__PrefillRequest *q = duet__v1__prefill_request__unpack(NULL, size - 1, data + 1);
    if (!q)
        return 0;
    duet_sampling_t s;
    memset(&s, 0xA5, sizeof s);
    char err[256] = "";
    duet_status_t st = duet_prefill_request_check(q, &lim, &s, err, sizeof err);
    if (st != DUET_OK) {
        FUZZ_CHECK(st == DUET_ERR_INVALID && err[0], "status %d, error \"%s\"", st, err);
        duet__v1__prefill_request__free_unpacked(q, NULL);
        return 0;
    }
    FUZZ_CHECK(strlen(q->request_id) < DUET_PREFILL_ID_MAX, "request id too long");
    FUZZ_CHECK(q->n_token_ids >= 1 && q->n_token_ids < (size_t)lim.n_ctx, "%zu tokens, ctx %d", q->n_token_ids,
               lim.n_ctx);
    for (size_t i = 0; i < q->n_token_ids; i++)
        FUZZ_CHECK(q->token_ids[i] < (uint32_t)lim.n_vocab, "token[%zu] = %u", i, q->token_ids[i]);
    const Duet__V1__KvTarget *t = q->kv_target;
    FUZZ_CHECK(t, "no kv_target");
    FUZZ_CHECK(t->n_layer == (uint32_t)lim.n_layer && t->n_kv_head == (uint32_t)lim.n_kv_head &&
               t->head_dim == (uint32_t)lim.head_dim && t->block_tokens == DUET_KV_BLOCK_TOKENS && t->elem_bytes == 2,
               "another KV layout");
    FUZZ_CHECK(t->n_block_ids == (q->n_token_ids + DUET_KV_BLOCK_TOKENS - 1) / DUET_KV_BLOCK_TOKENS,
               "%zu blocks for %zu tokens", t->n_block_ids, q->n_token_ids);
    FUZZ_CHECK(t->n_block_generations == t->n_block_ids, "%zu generations for %zu blocks", t->n_block_generations,
               t->n_block_ids);
    uint64_t block_bytes = (uint64_t)lim.n_layer * 2 * (uint64_t)lim.n_kv_head * DUET_KV_BLOCK_TOKENS *
                           (uint64_t)lim.head_dim * 2;
    for (size_t i = 0; i < t->n_block_ids; i++)
        FUZZ_CHECK(((uint64_t)t->block_ids[i] + 1) * block_bytes <= t->pool_bytes,
                   "block %u of %llu bytes is outside a %llu-byte pool", t->block_ids[i],
                   (unsigned long long)block_bytes, (unsigned long long)t->pool_bytes);
    size_t did = strlen(t->decode_instance_id);
    FUZZ_CHECK(did >= 1 && did < DUET_PREFILL_ID_MAX, "decode instance id of %zu bytes", did);
    FUZZ_CHECK(t->ucx_worker_address.len > 0 && t->rkey.len > 0, "empty worker address or rkey");
    FUZZ_CHECK(isfinite(s.temperature) && s.temperature >= 0.0f && s.temperature <= 100.0f, "temperature %g",
               (double)s.temperature);
    FUZZ_CHECK(isfinite(s.top_p) && s.top_p > 0.0f && s.top_p <= 1.0f, "top_p %g", (double)s.top_p);
    FUZZ_CHECK(s.top_k >= 0, "top_k %d", s.top_k);
    FUZZ_CHECK(isfinite(s.min_p) && s.min_p >= 0.0f && s.min_p <= 1.0f, "min_p %g", (double)s.min_p);
    FUZZ_CHECK(isfinite(s.repeat_penalty) && s.repeat_penalty > 0.0f && s.repeat_penalty <= 100.0f,
               "repeat_penalty %g", (double)s.repeat_penalty);
    duet__v1__prefill_request__free_unpacked(q, NULL);
    return 0;
}
