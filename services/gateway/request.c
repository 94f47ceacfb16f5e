/* services/gateway/request.c — validation and tokenization of the gateway's requests
 * (Generate/Complete and Tokenize), as pure functions of the request and the model. */
#include "request.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "clock.h"

static const char *str_or_empty(const char *s)
{
    return s ? s : "";
}

static int valid_request_id(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > DUET_GATEWAY_REQ_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)id[i]) && !strchr("._:-", id[i]))
            return 0;
    return 1;
}

static void make_request_id(char *id, size_t cap)
{
    unsigned char rnd[12];
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) {
        /* No entropy (very early boot): the clock, the pid and a stack address still differ. */
        uint64_t v = (uint64_t)duet_clock_ns() ^ (uint64_t)(uintptr_t)id;
        uint32_t pid = (uint32_t)getpid();
        memcpy(rnd, &v, sizeof v);
        memcpy(rnd + 8, &pid, sizeof pid);
    }
    int o = snprintf(id, cap, "req-");
    for (size_t i = 0; i < sizeof rnd && (size_t)o + 2 < cap; i++)
        o += snprintf(id + o, cap - (size_t)o, "%02x", rnd[i]);
}

static int model_matches(const duet_gateway_model_t *m, const char *model)
{
    if (!model[0] || strcmp(model, m->model_id) == 0 || strcmp(model, m->model_file) == 0)
        return 1;
    size_t n = strlen(m->model_file);
    return n > 5 && strncmp(model, m->model_file, n - 5) == 0 && model[n - 5] == '\0' &&
           strcmp(m->model_file + n - 5, ".gguf") == 0;
}

static duet_status_t check_roles(Duet__V1__ChatMessage *const *msgs, size_t n, char *err, size_t cap)
{
    for (size_t i = 0; i < n; i++) {
        const char *role = msgs[i] ? str_or_empty(msgs[i]->role) : "";
        if (strcmp(role, "system") && strcmp(role, "user") && strcmp(role, "assistant")) {
            snprintf(err, cap, "messages[%zu].role: unknown role \"%.40s\" (system, user or assistant)", i, role);
            return DUET_ERR_INVALID;
        }
    }
    return DUET_OK;
}

/* Renders msgs into *text_p, with the spans of their contents when spans_p is set. */
static duet_status_t render(const duet_gateway_model_t *m, Duet__V1__ChatMessage *const *msgs, size_t n,
                            char **text_p, duet_chat_span_t **spans_p, int *n_spans_p, char *err, size_t cap)
{
    if (check_roles(msgs, n, err, cap) != DUET_OK)
        return DUET_ERR_INVALID;
    if (m->chat->style == DUET_CHAT_NONE) {
        snprintf(err, cap, "messages: the model has no chat template the gateway can render; send prompt instead");
        return DUET_ERR_INVALID;
    }
    duet_chat_msg_t *cm = malloc(n * sizeof *cm);
    if (!cm) {
        snprintf(err, cap, "gateway: out of memory");
        return DUET_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++)
        cm[i] = (duet_chat_msg_t){str_or_empty(msgs[i]->role), str_or_empty(msgs[i]->content)};
    duet_status_t status = duet_chat_render_spans(m->chat, cm, (int)n, 1, text_p, spans_p, n_spans_p);
    free(cm);
    if (status == DUET_ERR_NOMEM) {
        snprintf(err, cap, "gateway: out of memory");
        return DUET_ERR_NOMEM;
    }
    if (status != DUET_OK)
        snprintf(err, cap, "messages: cannot render the chat: %s", duet_status_str(status));
    return status == DUET_OK ? DUET_OK : DUET_ERR_INVALID;
}

duet_status_t duet_gateway_render_messages(const duet_gateway_model_t *m, Duet__V1__ChatMessage *const *msgs,
                                           size_t n, char **text_p, char *err, size_t cap)
{
    return render(m, msgs, n, text_p, NULL, NULL, err, cap);
}

/* Tokenizes a chat: the template's text with its special tokens, each message's content as plain
 * text, so "<|im_end|>" typed by a user stays characters and cannot end their turn. A BOS first
 * unless the template writes its own. Returns the encoder's status (EXHAUSTED: *n_p is what the
 * whole chat would need); err is set for INVALID/NOMEM from rendering only. */
static duet_status_t encode_chat(const duet_gateway_model_t *m, Duet__V1__ChatMessage *const *msgs, size_t n,
                                 int add_bos, int32_t *tokens, int max, int *n_p, char *err, size_t cap)
{
    char *text = NULL;
    duet_chat_span_t *spans = NULL;
    int n_spans = 0;
    duet_status_t status = render(m, msgs, n, &text, &spans, &n_spans, err, cap);
    if (status != DUET_OK)
        return status;
    add_bos = add_bos && m->chat->style != DUET_CHAT_LLAMA3;
    size_t len = strlen(text), pos = 0;
    int total = 0;
    duet_status_t worst = DUET_OK;
    for (int k = 0; k <= n_spans && (worst == DUET_OK || worst == DUET_ERR_EXHAUSTED); k++) {
        /* The template's text before span k (or after the last), then span k itself. */
        size_t tpl_end = k < n_spans ? spans[k].start : len;
        for (int part = 0; part < 2; part++) {
            size_t a = part == 0 ? pos : tpl_end, b = part == 0 ? tpl_end : (k < n_spans ? spans[k].end : len);
            if (b <= a && !(add_bos && total == 0 && part == 0))
                continue;
            int got = 0, room = max - total > 0 ? max - total : 0;
            status = duet_tokenizer_encode(m->tok, text + a, b - a, add_bos && total == 0 && part == 0,
                                           part == 0, room ? tokens + total : NULL, room, &got);
            if (status != DUET_OK && status != DUET_ERR_EXHAUSTED) {
                worst = status;
                break;
            }
            if (status == DUET_ERR_EXHAUSTED)
                worst = DUET_ERR_EXHAUSTED;
            total += got;
        }
        pos = k < n_spans ? spans[k].end : len;
    }
    free(text);
    free(spans);
    *n_p = total;
    return worst;
}

duet_status_t duet_gateway_request_prepare(const duet_gateway_model_t *m, const Duet__V1__GenerateRequest *req,
                                           duet_gateway_request_t *out, char *err, size_t cap)
{
    const char *rid = str_or_empty(req->request_id);
    if (rid[0] && !valid_request_id(rid)) {
        snprintf(err, cap, "request_id: at most %d characters of A-Z a-z 0-9 . _ : -", DUET_GATEWAY_REQ_ID_MAX);
        return DUET_ERR_INVALID;
    }
    if (!model_matches(m, str_or_empty(req->model))) {
        snprintf(err, cap, "model: \"%.64s\" is not served here (this gateway serves \"%s\")", str_or_empty(req->model), m->model_id);
        return DUET_ERR_INVALID;
    }
    const char *prompt = str_or_empty(req->prompt);
    int forms = (prompt[0] != '\0') + (req->n_messages > 0) + (req->n_prompt_token_ids > 0);
    if (forms == 0) {
        snprintf(err, cap, "prompt: empty; set one of prompt, messages or prompt_token_ids");
        return DUET_ERR_INVALID;
    }
    if (forms > 1) {
        snprintf(err, cap, "prompt: set only one of prompt, messages and prompt_token_ids");
        return DUET_ERR_INVALID;
    }
    /* The engine's limits (duet_sampling_validate): a request accepted here must not be refused
     * by the decode instance after it was routed. */
    const Duet__V1__SamplingParams *sp = req->sampling;
    if (sp) {
        if (!(sp->temperature >= 0.0f && sp->temperature <= 100.0f)) {
            snprintf(err, cap, "temperature: must be in [0, 100] (0: greedy)");
            return DUET_ERR_INVALID;
        }
        if (sp->top_p != 0.0f && !(sp->top_p > 0.0f && sp->top_p <= 1.0f)) {
            snprintf(err, cap, "top_p: must be in (0, 1] (0: off)");
            return DUET_ERR_INVALID;
        }
        if (sp->top_k < 0) {
            snprintf(err, cap, "top_k: must be >= 0 (0: off)");
            return DUET_ERR_INVALID;
        }
        if (!(sp->min_p >= 0.0f && sp->min_p <= 1.0f)) {
            snprintf(err, cap, "min_p: must be in [0, 1] (0: off)");
            return DUET_ERR_INVALID;
        }
        if (!(sp->repetition_penalty >= 0.0f && sp->repetition_penalty <= 100.0f)) {
            snprintf(err, cap, "repetition_penalty: must be in [0, 100] (0 or 1: off)");
            return DUET_ERR_INVALID;
        }
    }
    const Duet__V1__StopParams *stp = req->stop;
    if (stp) {
        if (stp->n_stop > DUET_GATEWAY_STOP_MAX) {
            snprintf(err, cap, "stop: at most %d stop strings", DUET_GATEWAY_STOP_MAX);
            return DUET_ERR_INVALID;
        }
        for (size_t i = 0; i < stp->n_stop; i++) {
            size_t len = strlen(str_or_empty(stp->stop[i]));
            if (len == 0 || len > DUET_GATEWAY_STOP_LEN_MAX) {
                snprintf(err, cap, "stop[%zu]: must be 1 to %d bytes", i, DUET_GATEWAY_STOP_LEN_MAX);
                return DUET_ERR_INVALID;
            }
        }
        for (size_t i = 0; i < stp->n_stop_token_ids; i++) {
            if (stp->stop_token_ids[i] >= (uint32_t)m->n_vocab) {
                snprintf(err, cap, "stop_token_ids[%zu]: %u is not below the vocabulary size %d", i,
                         stp->stop_token_ids[i], m->n_vocab);
                return DUET_ERR_INVALID;
            }
        }
    }

    /* The prompt, as tokens: at most ctx - 1 of them, so that one token can still be generated. */
    int32_t *tokens = malloc((size_t)m->ctx * sizeof *tokens);
    if (!tokens) {
        snprintf(err, cap, "gateway: out of memory");
        return DUET_ERR_NOMEM;
    }
    int n = 0;
    duet_status_t status = DUET_OK;
    const char *field = "prompt";
    if (req->n_prompt_token_ids) {
        field = "prompt_token_ids";
        if (req->n_prompt_token_ids >= (size_t)m->ctx) {
            snprintf(err, cap, "prompt_token_ids: %zu tokens do not fit the context of %d (at most %d)",
                     req->n_prompt_token_ids, m->ctx, m->ctx - 1);
            free(tokens);
            return DUET_ERR_INVALID;
        }
        n = (int)req->n_prompt_token_ids;
        for (int i = 0; i < n; i++) {
            if (req->prompt_token_ids[i] >= (uint32_t)m->n_vocab) {
                snprintf(err, cap, "prompt_token_ids[%d]: %u is not below the vocabulary size %d", i,
                         req->prompt_token_ids[i], m->n_vocab);
                free(tokens);
                return DUET_ERR_INVALID;
            }
            tokens[i] = (int32_t)req->prompt_token_ids[i];
        }
    } else if (req->n_messages) {
        field = "messages";
        status = encode_chat(m, req->messages, req->n_messages, 1, tokens, m->ctx, &n, err, cap);
        if (status == DUET_ERR_INVALID || status == DUET_ERR_NOMEM) {
            free(tokens);
            return status;
        }
    } else {
        status = duet_tokenizer_encode(m->tok, prompt, strlen(prompt), 1, 0, tokens, m->ctx, &n);
    }
    if (status != DUET_OK && status != DUET_ERR_EXHAUSTED) {
        snprintf(err, cap, "%s: cannot be tokenized: %s", field, duet_status_str(status));
        free(tokens);
        return DUET_ERR_INVALID;
    }
    if (status == DUET_ERR_EXHAUSTED || n >= m->ctx) {
        snprintf(err, cap, "%s: %d tokens do not fit the context of %d (at most %d)", field, n, m->ctx, m->ctx - 1);
        free(tokens);
        return DUET_ERR_INVALID;
    }
    if (n == 0) {
        snprintf(err, cap, "%s: empty after tokenization", field);
        free(tokens);
        return DUET_ERR_INVALID;
    }
    uint32_t room = (uint32_t)(m->ctx - n);
    uint32_t max_tokens = stp ? stp->max_tokens : 0;
    if (max_tokens > room) {
        snprintf(err, cap, "max_tokens: %u exceeds the %u tokens left in the context (%d - %d prompt tokens)",
                 max_tokens, room, m->ctx, n);
        free(tokens);
        return DUET_ERR_INVALID;
    }
    /* int32 → uint32 in place: the same bits for ids below the vocabulary size. */
    out->prompt = (uint32_t *)tokens;
    out->n_prompt = n;
    out->max_tokens = max_tokens ? max_tokens : room;
    if (rid[0])
        snprintf(out->id, sizeof out->id, "%s", rid);
    else
        make_request_id(out->id, sizeof out->id);
    return DUET_OK;
}

duet_status_t duet_gateway_tokenize(const duet_gateway_model_t *m, const Duet__V1__TokenizeRequest *req,
                                    int32_t **tokens_p, int *n_p, char *err, size_t cap)
{
    const char *text = str_or_empty(req->text);
    int add_bos = req->add_special_tokens;
    duet_status_t status;
    if (text[0] && req->n_messages) {
        snprintf(err, cap, "text: set only one of text and messages");
        return DUET_ERR_INVALID;
    }
    size_t len = strlen(text);
    int max = 1024, n = 0;
    int32_t *tokens = NULL;
    for (int pass = 0; pass < 2; pass++) {
        free(tokens);
        tokens = malloc((size_t)max * sizeof *tokens);
        if (!tokens) {
            status = DUET_ERR_NOMEM;
            break;
        }
        if (req->n_messages) {   /* as Generate tokenizes a chat */
            status = encode_chat(m, req->messages, req->n_messages, add_bos, tokens, max, &n, err, cap);
            if (status == DUET_ERR_INVALID || status == DUET_ERR_NOMEM) {
                free(tokens);
                return status;
            }
        } else {
            status = duet_tokenizer_encode(m->tok, text, len, add_bos, 0, tokens, max, &n);
        }
        if (status != DUET_ERR_EXHAUSTED)
            break;
        max = n;
    }
    if (status != DUET_OK) {
        free(tokens);
        snprintf(err, cap, "text: cannot be tokenized: %s", duet_status_str(status));
        return status == DUET_ERR_NOMEM ? DUET_ERR_NOMEM : DUET_ERR_INVALID;
    }
    *tokens_p = tokens;
    *n_p = n;
    return DUET_OK;
}

void duet_gateway_decode_request(const Duet__V1__GenerateRequest *req, const char *id, const uint32_t *prompt,
                                 int n_prompt, uint32_t max_tokens, duet_gateway_decode_msg_t *msg)
{
    duet__v1__sampling_params__init(&msg->sampling);
    duet__v1__stop_params__init(&msg->stop);
    duet__v1__decode_request__init(&msg->decode);
    if (req->sampling)
        msg->sampling = *req->sampling;
    if (req->stop) {
        msg->stop.ignore_eos = req->stop->ignore_eos;
        msg->stop.n_stop_token_ids = req->stop->n_stop_token_ids;
        msg->stop.stop_token_ids = req->stop->stop_token_ids;
    }
    msg->stop.max_tokens = max_tokens;
    msg->decode.request_id = (char *)id;
    msg->decode.n_prompt_token_ids = (size_t)n_prompt;
    msg->decode.prompt_token_ids = (uint32_t *)prompt;
    msg->decode.sampling = &msg->sampling;
    msg->decode.stop = &msg->stop;
}
