/* tests/fuzz/fuzz_decode_request.c — libFuzzer target for the decode service's input path:
 * bytes → DecodeRequest unpack → duet_decode_request_check (services/decode/decode_request.c).
 *
 * Input: byte 0 chooses the instance (context 2048, 64, 16 or 1; vocabulary 49152 or 256), the
 * rest is a serialized DecodeRequest.
 * Invariants of an accepted request, written from the engine's needs rather than from the
 * checker: a request id that fits the registry; 1 <= prompt < ctx; every prompt, generated and
 * stop id below n_vocab; prompt + max_tokens <= ctx; fewer generated tokens than max_tokens;
 * addresses that fit their buffers; sampling numbers finite and inside the sampler's ranges.
 * A refusal sets INVALID with a message. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "decode_request.h"
#include "duet/v1/decode.pb-c.h"
#include "fuzz_check.h"
#include "state.h"

static void check_sampling(const duet_sampling_t *s)
{
    FUZZ_CHECK(isfinite(s->temperature) && s->temperature >= 0.0f && s->temperature <= 100.0f, "temperature %g",
               (double)s->temperature);
    FUZZ_CHECK(isfinite(s->top_p) && s->top_p > 0.0f && s->top_p <= 1.0f, "top_p %g", (double)s->top_p);
    FUZZ_CHECK(s->top_k >= 0, "top_k %d", s->top_k);
    FUZZ_CHECK(isfinite(s->min_p) && s->min_p >= 0.0f && s->min_p <= 1.0f, "min_p %g", (double)s->min_p);
    FUZZ_CHECK(isfinite(s->repeat_penalty) && s->repeat_penalty > 0.0f && s->repeat_penalty <= 100.0f,
               "repeat_penalty %g", (double)s->repeat_penalty);
    FUZZ_CHECK(s->repeat_last_n >= 0, "repeat_last_n %d", s->repeat_last_n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int ctxs[4] = {2048, 64, 16, 1};
    if (size < 1)
        return 0;
    int n_ctx = ctxs[data[0] & 3];
    int n_vocab = data[0] & 4 ? 256 : 49152;
    Duet__V1__DecodeRequest *q = duet__v1__decode_request__unpack(NULL, size - 1, data + 1);
    if (!q)
        return 0;
    int max_tokens = -12345;
    duet_sampling_t s;
    memset(&s, 0xA5, sizeof s);
    char err[256] = "";
    duet_status_t st = duet_decode_request_check(q, n_vocab, n_ctx, &max_tokens, &s, err, sizeof err);
    if (st != DUET_OK) {
        FUZZ_CHECK(st == DUET_ERR_INVALID && err[0], "status %d, error \"%s\"", st, err);
        FUZZ_CHECK(max_tokens == -12345, "an output set on failure");
        duet__v1__decode_request__free_unpacked(q, NULL);
        return 0;
    }
    size_t id_len = strlen(q->request_id);
    FUZZ_CHECK(id_len >= 1 && id_len < DUET_STATE_ID_MAX, "request id of %zu bytes", id_len);
    FUZZ_CHECK(q->n_prompt_token_ids >= 1 && q->n_prompt_token_ids < (size_t)n_ctx, "%zu prompt tokens, ctx %d",
               q->n_prompt_token_ids, n_ctx);
    for (size_t i = 0; i < q->n_prompt_token_ids; i++)
        FUZZ_CHECK(q->prompt_token_ids[i] < (uint32_t)n_vocab, "prompt[%zu] = %u", i, q->prompt_token_ids[i]);
    for (size_t i = 0; i < q->n_generated_token_ids; i++)
        FUZZ_CHECK(q->generated_token_ids[i] < (uint32_t)n_vocab, "generated[%zu] = %u", i,
                   q->generated_token_ids[i]);
    if (q->stop)
        for (size_t i = 0; i < q->stop->n_stop_token_ids; i++)
            FUZZ_CHECK(q->stop->stop_token_ids[i] < (uint32_t)n_vocab, "stop id %u", q->stop->stop_token_ids[i]);
    FUZZ_CHECK(max_tokens >= 1 && (int64_t)q->n_prompt_token_ids + max_tokens <= n_ctx,
               "max_tokens %d with %zu prompt tokens, ctx %d", max_tokens, q->n_prompt_token_ids, n_ctx);
    if (q->stop && q->stop->max_tokens)
        FUZZ_CHECK(max_tokens == (int)q->stop->max_tokens, "max_tokens %d, asked %u", max_tokens, q->stop->max_tokens);
    FUZZ_CHECK((int64_t)q->n_generated_token_ids < max_tokens, "%zu generated of max %d", q->n_generated_token_ids,
               max_tokens);
    FUZZ_CHECK(strlen(q->prefill_address) < DUET_STATE_ADDR_MAX && strlen(q->prefill_instance_id) < DUET_STATE_ID_MAX,
               "prefill address or id too long");
    check_sampling(&s);
    duet__v1__decode_request__free_unpacked(q, NULL);
    return 0;
}
