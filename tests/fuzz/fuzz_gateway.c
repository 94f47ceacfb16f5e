/* tests/fuzz/fuzz_gateway.c — libFuzzer target for the gateway's input path: bytes → protobuf
 * unpack → services/gateway/request.c, with the real model's vocabulary ($DUET_FUZZ_MODEL).
 *
 * Input: byte 0 chooses; the rest is a serialized message.
 *   bit 0: 0 GenerateRequest (Generate and Complete) → duet_gateway_request_prepare;
 *          1 TokenizeRequest → duet_gateway_tokenize.
 *   bits 1-2: the context limit, one of 2048 (the default --ctx), 64, 8, 2.
 * Invariants of an accepted Generate: a request id of the allowed characters that fits the
 * registry; 1 <= prompt tokens < ctx, each below n_vocab; 1 <= max_tokens <= ctx - prompt;
 * prompt_token_ids kept as sent, a text prompt's tokens spell the text again, a chat's spell its
 * rendering; and the DecodeRequest the gateway would send for it passes the decode service's own
 * check (a request the gateway accepts must not be refused downstream). Of an accepted Tokenize: ids below
 * n_vocab, and a text's (or chat's rendering's) tokens spell it. */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "decode_request.h"
#include "duet/v1/decode.pb-c.h"
#include "duet/v1/gateway.pb-c.h"
#include "fuzz_check.h"
#include "fuzz_model.h"
#include "request.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_model_get();
    return 0;
}

/* Whether ids[from..n) spell text[0..len) exactly, less the bytes the vocabulary cannot spell
 * (the tokenizer drops those; fuzz_tokenizer checks that in detail). */
static int spells(const fuzz_model_t *m, const int32_t *ids, int from, int n, const char *text, size_t len)
{
    size_t off = 0;
    char buf[DUET_DETOK_MAX_PIECE];
    for (int i = from; i < n; i++) {
        int b = duet_tokenizer_token_bytes(m->tok, ids[i], buf, sizeof buf);
        if (b < 0 || (size_t)b > sizeof buf)
            return 0;
        for (int j = 0; j < b; j++) {
            while (off < len && !m->spellable[(unsigned char)text[off]])
                off++;
            if (off == len || text[off] != buf[j])
                return 0;
            off++;
        }
    }
    while (off < len && !m->spellable[(unsigned char)text[off]])
        off++;
    return off == len;
}

static int bos_first(const fuzz_model_t *m)
{
    return duet_tokenizer_adds_bos(m->tok) && duet_tokenizer_bos(m->tok) >= 0;
}

/* A chat's tokens spell its rendering (special tokens as their text), after the BOS that is
 * added unless the template writes its own. */
static void check_chat(const fuzz_model_t *m, const duet_gateway_model_t *gm, Duet__V1__ChatMessage *const *msgs,
                       size_t n_msgs, const int32_t *ids, int n, int add_bos)
{
    char *text = NULL, err[256];
    FUZZ_CHECK(duet_gateway_render_messages(gm, msgs, n_msgs, &text, err, sizeof err) == DUET_OK,
               "an accepted chat does not render: %s", err);
    int from = add_bos && gm->chat->style != DUET_CHAT_LLAMA3 && bos_first(m) ? 1 : 0;
    FUZZ_CHECK(n >= from, "no BOS");
    FUZZ_CHECK(spells(m, ids, from, n, text, strlen(text)), "the chat's tokens do not spell its rendering");
    free(text);
}

static void check_generate(const fuzz_model_t *m, const duet_gateway_model_t *gm,
                           const Duet__V1__GenerateRequest *req, const duet_gateway_request_t *r)
{
    size_t id_len = strlen(r->id);
    FUZZ_CHECK(id_len > 0 && id_len < DUET_STATE_ID_MAX, "request id of %zu bytes", id_len);
    for (size_t i = 0; i < id_len; i++)
        FUZZ_CHECK(isalnum((unsigned char)r->id[i]) || strchr("._:-", r->id[i]), "request id byte 0x%02x",
                   (unsigned char)r->id[i]);
    if (req->request_id && req->request_id[0])
        FUZZ_CHECK(strcmp(req->request_id, r->id) == 0, "the client's request id was not kept");
    FUZZ_CHECK(r->n_prompt >= 1 && r->n_prompt < gm->ctx, "%d prompt tokens, ctx %d", r->n_prompt, gm->ctx);
    for (int i = 0; i < r->n_prompt; i++)
        FUZZ_CHECK(r->prompt[i] < (uint32_t)gm->n_vocab, "prompt[%d] = %u", i, r->prompt[i]);
    FUZZ_CHECK(r->max_tokens >= 1 && r->max_tokens <= (uint32_t)(gm->ctx - r->n_prompt),
               "max_tokens %u with %d prompt tokens, ctx %d", r->max_tokens, r->n_prompt, gm->ctx);
    if (req->stop && req->stop->max_tokens)
        FUZZ_CHECK(r->max_tokens == req->stop->max_tokens, "max_tokens %u, asked %u", r->max_tokens,
                   req->stop->max_tokens);
    if (req->n_prompt_token_ids) {
        FUZZ_CHECK((size_t)r->n_prompt == req->n_prompt_token_ids &&
                   memcmp(r->prompt, req->prompt_token_ids, req->n_prompt_token_ids * sizeof *r->prompt) == 0,
                   "prompt_token_ids changed");
    } else if (req->n_messages == 0) {
        int from = bos_first(m) ? 1 : 0;
        if (from)
            FUZZ_CHECK(r->prompt[0] == (uint32_t)duet_tokenizer_bos(m->tok), "no BOS first");
        FUZZ_CHECK(spells(m, (const int32_t *)r->prompt, from, r->n_prompt, req->prompt, strlen(req->prompt)),
                   "the prompt's tokens do not spell the prompt");
    } else {
        check_chat(m, gm, req->messages, req->n_messages, (const int32_t *)r->prompt, r->n_prompt, 1);
    }
    if (req->stop) {
        FUZZ_CHECK(req->stop->n_stop <= DUET_GATEWAY_STOP_MAX, "%zu stop strings", req->stop->n_stop);
        for (size_t i = 0; i < req->stop->n_stop; i++) {
            size_t len = strlen(req->stop->stop[i]);
            FUZZ_CHECK(len >= 1 && len <= DUET_GATEWAY_STOP_LEN_MAX, "stop[%zu] of %zu bytes", i, len);
        }
    }

    /* The DecodeRequest the gateway sends on the first attempt. */
    duet_gateway_decode_msg_t msg;
    duet_gateway_decode_request(req, r->id, r->prompt, r->n_prompt, r->max_tokens, &msg);
    Duet__V1__DecodeRequest dr = msg.decode;
    int max_tokens = 0;
    duet_sampling_t s;
    char err[256] = "";
    duet_status_t st = duet_decode_request_check(&dr, gm->n_vocab, gm->ctx, &max_tokens, &s, err, sizeof err);
    FUZZ_CHECK(st == DUET_OK, "the gateway accepted what decode refuses: %s", err);
    FUZZ_CHECK(max_tokens == (int)r->max_tokens, "decode resolves max_tokens to %d, the gateway to %u", max_tokens,
               r->max_tokens);
}

static void check_tokenize(const fuzz_model_t *m, const duet_gateway_model_t *gm,
                           const Duet__V1__TokenizeRequest *req, const int32_t *ids, int n)
{
    FUZZ_CHECK(n >= 0, "%d tokens", n);
    for (int i = 0; i < n; i++)
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < gm->n_vocab, "id %d at %d", ids[i], i);
    if (req->n_messages == 0) {
        int from = req->add_special_tokens && bos_first(m) ? 1 : 0;
        FUZZ_CHECK(n >= from, "no BOS");
        FUZZ_CHECK(spells(m, ids, from, n, req->text, strlen(req->text)),
                   "the text's tokens do not spell the text");
    } else {
        check_chat(m, gm, req->messages, req->n_messages, ids, n, req->add_special_tokens);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int ctxs[4] = {2048, 64, 8, 2};
    const fuzz_model_t *m = fuzz_model_get();
    if (size < 1)
        return 0;
    duet_gateway_model_t gm = {m->tok, &m->chat, m->model_id, m->model_file, ctxs[(data[0] >> 1) & 3], m->n_vocab};
    char err[512];
    if ((data[0] & 1) == 0) {
        Duet__V1__GenerateRequest *req = duet__v1__generate_request__unpack(NULL, size - 1, data + 1);
        if (!req)
            return 0;
        duet_gateway_request_t r;
        memset(&r, 0, sizeof r);
        err[0] = '\0';
        duet_status_t st = duet_gateway_request_prepare(&gm, req, &r, err, sizeof err);
        if (st == DUET_OK)
            check_generate(m, &gm, req, &r);
        else
            FUZZ_CHECK(st == DUET_ERR_INVALID && err[0] && !r.prompt, "refused with status %d, error \"%s\"", st, err);
        free(r.prompt);
        duet__v1__generate_request__free_unpacked(req, NULL);
    } else {
        Duet__V1__TokenizeRequest *req = duet__v1__tokenize_request__unpack(NULL, size - 1, data + 1);
        if (!req)
            return 0;
        int32_t *ids = NULL;
        int n = -1;
        err[0] = '\0';
        duet_status_t st = duet_gateway_tokenize(&gm, req, &ids, &n, err, sizeof err);
        if (st == DUET_OK)
            check_tokenize(m, &gm, req, ids, n);
        else
            FUZZ_CHECK(st == DUET_ERR_INVALID && err[0] && !ids, "refused with status %d, error \"%s\"", st, err);
        free(ids);
        duet__v1__tokenize_request__free_unpacked(req, NULL);
    }
    return 0;
}
