/* services/gateway/request.h — turns a GenerateRequest into a validated, tokenized request, or
 * INVALID_ARGUMENT with the offending field named first in the error text; and a TokenizeRequest
 * into tokens. Pure functions of the request and the model's vocabulary: no gateway state. */
#ifndef DUET_SERVICES_GATEWAY_REQUEST_H
#define DUET_SERVICES_GATEWAY_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "chat.h"
#include "duet/v1/decode.pb-c.h"
#include "duet/v1/gateway.pb-c.h"
#include "state.h"
#include "status.h"
#include "tokenizer.h"

#define DUET_GATEWAY_REQ_ID_MAX    63     /* a client's request id, bytes */
#define DUET_GATEWAY_STOP_MAX      16     /* stop strings per request */
#define DUET_GATEWAY_STOP_LEN_MAX  256    /* bytes per stop string */

/* What a request is checked against. Borrowed: the gateway owns every pointer. */
typedef struct {
    const duet_tokenizer_t *tok;
    const duet_chat_template_t *chat;
    const char *model_id;       /* a request's model may be "", this, */
    const char *model_file;     /* or the file's base name, with or without ".gguf" */
    int ctx;                    /* prompt + generated tokens */
    int n_vocab;
} duet_gateway_model_t;

/* An accepted Generate/Complete request. */
typedef struct {
    char id[DUET_STATE_ID_MAX];     /* the client's request_id, or a fresh "req-<hex>" */
    uint32_t *prompt;               /* [n_prompt], malloc'd: the caller frees it */
    int n_prompt;                   /* 1 .. ctx - 1 */
    uint32_t max_tokens;            /* resolved: 1 .. ctx - n_prompt, never 0 */
} duet_gateway_request_t;

/* Checks a Generate/Complete request and tokenizes its prompt. Sets *out only on success.
 * On failure returns INVALID (or NOMEM) with the field named first in err. */
duet_status_t duet_gateway_request_prepare(const duet_gateway_model_t *m, const Duet__V1__GenerateRequest *req,
                                           duet_gateway_request_t *out, char *err, size_t cap);

/* What the gateway asks decode for on behalf of an accepted request: the prompt, the client's
 * sampling and stop-token settings, max_tokens the resolved budget (decode counts re-sent tokens
 * against it on a retry). Stop strings stay at the gateway: decode never sees text. The messages
 * are filled into the caller's storage and point into req, id and prompt; the caller sets
 * attempt, the tokens generated so far and the prefill placement. */
typedef struct {
    Duet__V1__DecodeRequest decode;
    Duet__V1__SamplingParams sampling;
    Duet__V1__StopParams stop;
} duet_gateway_decode_msg_t;

void duet_gateway_decode_request(const Duet__V1__GenerateRequest *req, const char *id, const uint32_t *prompt,
                                 int n_prompt, uint32_t max_tokens, duet_gateway_decode_msg_t *msg);

/* Renders chat messages with the model's template into *text_p (malloc'd: the caller frees it).
 * INVALID (unknown role, no template, cannot render) or NOMEM, with the reason in err. */
duet_status_t duet_gateway_render_messages(const duet_gateway_model_t *m, Duet__V1__ChatMessage *const *msgs,
                                           size_t n, char **text_p, char *err, size_t cap);

/* Tokenizes a TokenizeRequest's text or chat into *tokens_p (malloc'd, [*n_p]: the caller frees
 * it); sets the outputs only on success. INVALID or NOMEM with the reason in err. */
duet_status_t duet_gateway_tokenize(const duet_gateway_model_t *m, const Duet__V1__TokenizeRequest *req,
                                    int32_t **tokens_p, int *n_p, char *err, size_t cap);

#endif
