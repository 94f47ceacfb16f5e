/* tools/cmd_generate.c — `duet generate`: text from a prompt with the in-process engine. Only the
 * generated text goes to stdout, as it is produced; statistics go to stderr. Without --prompt it
 * reads prompts line by line (a chat, when the model has a template). */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat.h"
#include "clock.h"
#include "commands.h"
#include "conf.h"
#include "engine.h"
#include "duet/v1/gateway.pb-c.h"
#include "log.h"
#include "rpc.h"

typedef struct {
    const char *model;
    const char *prompt;
    const char *system;
    int max_tokens;
    float temperature;
    float top_p;
    int top_k;
    float min_p;
    float repeat_penalty;
    long long seed;
    int chat;
    int ignore_eos;
    int threads;
    int ctx;
    const char *log_level;
    const char *gateway;
    const char *api_key;
    const char *device;
    const char *tls_ca, *tls_cert, *tls_key, *tls_server_name;
} generate_conf_t;

#define OPT(flag, env, type, field, def, help) \
    {flag, env, type, offsetof(generate_conf_t, field), def, help}
static const duet_conf_opt_t generate_opts[] = {
    OPT("model", "DUET_MODEL", DUET_CONF_STR, model, NULL, "GGUF model file (default: the cached default model)"),
    OPT("prompt", NULL, DUET_CONF_STR, prompt, NULL, "prompt text; without it, read prompts from stdin"),
    OPT("system", NULL, DUET_CONF_STR, system, NULL, "system message for --chat (default: the template's)"),
    OPT("max-tokens", NULL, DUET_CONF_INT, max_tokens, "256", "most tokens to generate"),
    OPT("temperature", NULL, DUET_CONF_FLOAT, temperature, "0.8", "sampling temperature; 0 is greedy"),
    OPT("top-p", NULL, DUET_CONF_FLOAT, top_p, "0.95", "nucleus sampling mass, in (0, 1]"),
    OPT("top-k", NULL, DUET_CONF_INT, top_k, "40", "keep the k most likely tokens; 0 keeps all"),
    OPT("min-p", NULL, DUET_CONF_FLOAT, min_p, "0.05", "drop tokens below this share of the best one"),
    OPT("repeat-penalty", NULL, DUET_CONF_FLOAT, repeat_penalty, "1.0", "penalty for the last 64 tokens; 1 is off"),
    OPT("seed", NULL, DUET_CONF_I64, seed, "-1", "random seed; -1 picks one (printed with the stats)"),
    OPT("chat", NULL, DUET_CONF_BOOL, chat, "0", "wrap the prompt in the model's chat template"),
    OPT("ignore-eos", NULL, DUET_CONF_BOOL, ignore_eos, "0", "keep generating past end-of-sequence tokens"),
    OPT("threads", "DUET_THREADS", DUET_CONF_INT, threads, "0", "compute threads; 0 uses every CPU"),
    OPT("ctx", NULL, DUET_CONF_INT, ctx, "0", "context length; 0 is the model's"),
    OPT("log-level", "DUET_LOG_LEVEL", DUET_CONF_STR, log_level, "warn", "error, warn, info or debug"),
    OPT("gateway", "DUET_GATEWAY", DUET_CONF_STR, gateway, NULL, "HOST:PORT of a duet gateway: generate there instead of in process"),
    OPT("api-key", "DUET_API_KEY", DUET_CONF_STR, api_key, NULL, "API key sent to the gateway as a bearer token"),
    OPT("device", "DUET_DEVICE", DUET_CONF_STR, device, "cpu", "compute device in process: cpu, cuda or cuda:N"),
    OPT("tls-ca", "DUET_TLS_CA", DUET_CONF_STR, tls_ca, NULL, "PEM CA bundle: talk TLS to the gateway and verify it with this (\"system\": the system's roots)"),
    OPT("tls-cert", "DUET_TLS_CERT", DUET_CONF_STR, tls_cert, NULL, "PEM client certificate, for a gateway that requires one (with --tls-key)"),
    OPT("tls-key", "DUET_TLS_KEY", DUET_CONF_STR, tls_key, NULL, "PEM private key of --tls-cert"),
    OPT("tls-server-name", NULL, DUET_CONF_STR, tls_server_name, NULL, "name expected in the gateway's certificate (default: the --gateway host)"),
};
#undef OPT
#define N_OPTS ((int)(sizeof generate_opts / sizeof generate_opts[0]))

typedef struct {
    const duet_tokenizer_t *tok;   /* in process: the detokenizer's vocabulary */
    duet_detok_t detok;
    char *reply;          /* the text so far, kept for chat history */
    size_t reply_len, reply_cap;
} stream_t;

static void stream_write(stream_t *s, const char *text, size_t len)
{
    fwrite(text, 1, len, stdout);
    fflush(stdout);
    if (s->reply_len + len + 1 > s->reply_cap) {
        size_t cap = (s->reply_cap + len + 1) * 2;
        char *r = realloc(s->reply, cap);
        if (!r)
            return;
        s->reply = r;
        s->reply_cap = cap;
    }
    memcpy(s->reply + s->reply_len, text, len);
    s->reply_len += len;
    s->reply[s->reply_len] = '\0';
}

static int on_token(void *user, int request, int32_t token)
{
    stream_t *s = user;
    char piece[DUET_DETOK_MAX_PIECE];
    size_t len = duet_detok_push(&s->detok, s->tok, token, 0, piece);
    stream_write(s, piece, len);
    return 0;
}

/* Generates one reply to text; returns 0 or an exit status. */
static int run_one(const generate_conf_t *c, const duet_model_t *model, duet_engine_t *engine,
                   const char *text, int chat, stream_t *out)
{
    int cap = duet_engine_n_ctx(engine);
    int32_t *prompt = malloc((size_t)cap * sizeof *prompt);
    if (!prompt)
        return 1;
    int n_prompt = 0;
    /* A Llama-3 chat rendering already starts with <|begin_of_text|>: no second BOS. */
    int add_bos = !(chat && model->chat.style == DUET_CHAT_LLAMA3);
    duet_status_t st = duet_tokenizer_encode(model->tok, text, strlen(text), add_bos, chat, prompt, cap, &n_prompt);
    if (st == DUET_ERR_EXHAUSTED || n_prompt >= cap) {
        fprintf(stderr, "duet: the prompt is %d tokens; the context holds %d\n", n_prompt, cap);
        free(prompt);
        return 1;
    }
    if (st != DUET_OK || n_prompt == 0) {
        fprintf(stderr, "duet: the prompt is empty\n");
        free(prompt);
        return 1;
    }
    duet_gen_request_t req = {
        .prompt = prompt,
        .n_prompt = n_prompt,
        .max_tokens = c->max_tokens < cap - n_prompt ? c->max_tokens : cap - n_prompt,
        .ignore_eos = c->ignore_eos,
        .sampling = {
            .temperature = c->temperature,
            .top_k = c->top_k,
            .top_p = c->top_p,
            .min_p = c->min_p,
            .repeat_penalty = c->repeat_penalty,
            .repeat_last_n = 64,
            .seed = (uint64_t)c->seed,
        },
    };
    duet_detok_init(&out->detok);
    out->reply_len = 0;
    duet_gen_result_t res;
    st = duet_engine_generate(engine, &req, 1, on_token, out, &res);
    char tail[8];
    size_t tail_len = duet_detok_flush(&out->detok, tail);
    stream_write(out, tail, tail_len);
    fputc('\n', stdout);
    fflush(stdout);
    free(prompt);
    if (st != DUET_OK || res.finish == DUET_FINISH_ERROR) {
        fprintf(stderr, "duet: generation failed: %s\n", duet_status_str(st ? st : res.status));
        return 1;
    }
    double first_s = res.first_token_ns / 1e9, decode_s = (res.done_ns - res.first_token_ns) / 1e9;
    fprintf(stderr, "prompt tokens: %d, prefill: %.1f tok/s, decode: %.1f tok/s (%d tokens, finish %s, seed %lld)\n",
            n_prompt, first_s > 0 ? n_prompt / first_s : 0.0,
            res.n_generated > 1 && decode_s > 0 ? (res.n_generated - 1) / decode_s : 0.0,
            res.n_generated, duet_finish_str(res.finish), c->seed);
    return 0;
}

/* One way of producing a reply: the in-process engine, or a gateway over gRPC. */
typedef struct {
    const generate_conf_t *c;
    duet_model_t *model;          /* in process */
    duet_engine_t *engine;
    duet_rpc_client_t *client;    /* through a gateway */
} runner_t;

static void fill_sampling(const generate_conf_t *c, Duet__V1__SamplingParams *sp, Duet__V1__StopParams *stop)
{
    sp->temperature = c->temperature;
    sp->top_p = c->top_p;
    sp->top_k = c->top_k;
    sp->min_p = c->min_p;
    sp->repetition_penalty = c->repeat_penalty;
    sp->seed = (uint64_t)c->seed;
    sp->has_seed = 1;
    stop->max_tokens = (uint32_t)c->max_tokens;
    stop->ignore_eos = c->ignore_eos;
}

/* Streams a reply from the gateway: a plain prompt, or chat messages it renders itself. */
static int run_remote(runner_t *r, const char *prompt, const duet_chat_msg_t *msgs, int n_msgs, stream_t *out)
{
    const generate_conf_t *c = r->c;
    Duet__V1__GenerateRequest req = DUET__V1__GENERATE_REQUEST__INIT;
    Duet__V1__SamplingParams sp = DUET__V1__SAMPLING_PARAMS__INIT;
    Duet__V1__StopParams stop = DUET__V1__STOP_PARAMS__INIT;
    fill_sampling(c, &sp, &stop);
    req.sampling = &sp;
    req.stop = &stop;
    Duet__V1__ChatMessage *cm = calloc((size_t)n_msgs + 1, sizeof *cm);
    Duet__V1__ChatMessage **cmp = calloc((size_t)n_msgs + 1, sizeof *cmp);
    if (!cm || !cmp) {
        free(cm);
        free(cmp);
        return 1;
    }
    if (msgs) {
        for (int i = 0; i < n_msgs; i++) {
            duet__v1__chat_message__init(&cm[i]);
            cm[i].role = (char *)msgs[i].role;
            cm[i].content = (char *)msgs[i].content;
            cmp[i] = &cm[i];
        }
        req.messages = cmp;
        req.n_messages = (size_t)n_msgs;
    } else {
        req.prompt = (char *)prompt;
    }
    char bearer[512], errbuf[512] = "";
    duet_rpc_metadata_t md = {"authorization", bearer};
    if (c->api_key)
        snprintf(bearer, sizeof bearer, "Bearer %s", c->api_key);
    duet_rpc_opts_t opts = {.metadata = &md, .n_metadata = c->api_key ? 1 : 0, .error = errbuf,
                            .error_size = sizeof errbuf};
    duet_rpc_client_stream_t *stream;
    int64_t t0 = duet_clock_ns(), t_first = 0;
    duet_status_t st = duet_rpc_client_stream_open(r->client, c->gateway, "/duet.v1.Gateway/Generate",
                                                   &req.base, &duet__v1__generate_response__descriptor,
                                                   &opts, &stream);
    free(cm);
    free(cmp);
    if (st != DUET_OK) {
        fprintf(stderr, "duet: cannot reach the gateway at %s: %s\n", c->gateway, duet_status_str(st));
        return 1;
    }
    out->reply_len = 0;
    int prompt_tokens = 0, completion_tokens = 0, rc = 0;
    const char *finish = "none";
    for (;;) {
        ProtobufCMessage *msg = NULL;
        st = duet_rpc_client_stream_read(stream, &msg);
        if (st != DUET_OK) {
            fprintf(stderr, "\nduet: %s: %s\n", duet_status_str(st), duet_rpc_client_stream_error(stream));
            rc = 1;
            break;
        }
        if (!msg)
            break;
        Duet__V1__GenerateResponse *g = (Duet__V1__GenerateResponse *)msg;
        if (!t_first && g->n_token_ids > 0)
            t_first = duet_clock_ns();
        if (g->text && *g->text)
            stream_write(out, g->text, strlen(g->text));
        if (g->usage) {
            prompt_tokens = (int)g->usage->prompt_tokens;
            completion_tokens = (int)g->usage->completion_tokens;
        }
        if (g->finish_reason == DUET__V1__FINISH_REASON__FINISH_REASON_STOP)
            finish = "stop";
        else if (g->finish_reason == DUET__V1__FINISH_REASON__FINISH_REASON_LENGTH)
            finish = "length";
        protobuf_c_message_free_unpacked(msg, NULL);
    }
    duet_rpc_client_stream_close(stream);
    fputc('\n', stdout);
    fflush(stdout);
    if (rc == 0) {
        double first_s = t_first ? (t_first - t0) / 1e9 : 0, decode_s = t_first ? (duet_clock_ns() - t_first) / 1e9 : 0;
        fprintf(stderr, "prompt tokens: %d, time to first token: %.0f ms, decode: %.1f tok/s (%d tokens, finish %s, seed %lld)\n",
                prompt_tokens, first_s * 1e3, completion_tokens > 1 && decode_s > 0 ? (completion_tokens - 1) / decode_s : 0.0,
                completion_tokens, finish, c->seed);
    }
    return rc;
}

/* One reply to a prompt, or to a conversation when msgs is given. */
static int run_turn(runner_t *r, const char *prompt, const duet_chat_msg_t *msgs, int n_msgs, stream_t *out)
{
    if (r->client)
        return run_remote(r, prompt, msgs, n_msgs, out);
    if (!msgs)
        return run_one(r->c, r->model, r->engine, prompt, 0, out);
    char *text = NULL;
    if (duet_chat_render(&r->model->chat, msgs, n_msgs, 1, &text) != DUET_OK) {
        fprintf(stderr, "duet: this model has no chat template duet can render; drop --chat\n");
        return 1;
    }
    int rc = run_one(r->c, r->model, r->engine, text, 1, out);
    free(text);
    return rc;
}

typedef struct {
    duet_chat_msg_t *msgs;
    int n, cap;
} history_t;

static int history_add(history_t *h, const char *role, const char *content)
{
    if (h->n == h->cap) {
        int cap = h->cap ? h->cap * 2 : 8;
        duet_chat_msg_t *m = realloc(h->msgs, (size_t)cap * sizeof *m);
        if (!m)
            return 1;
        h->msgs = m;
        h->cap = cap;
    }
    char *copy = strdup(content);
    if (!copy)
        return 1;
    h->msgs[h->n++] = (duet_chat_msg_t){role, copy};
    return 0;
}

static void history_free(history_t *h)
{
    for (int i = 0; i < h->n; i++)
        free((char *)h->msgs[i].content);
    free(h->msgs);
}

int duet_cmd_generate(int argc, char **argv)
{
    generate_conf_t c;
    char err[512];
    int rc = duet_tool_parse("duet generate [OPTIONS]", generate_opts, N_OPTS, &c, argc, argv);
    if (rc >= 0)
        return rc;
    int level = duet_log_level_parse(c.log_level);
    duet_log_configure(level < 0 ? DUET_LOG_WARN : (duet_log_level_t)level, NULL);
    if (c.seed < 0)
        c.seed = (long long)time(NULL);
    duet_sampling_t sp = {c.temperature, c.top_k, c.top_p, c.min_p, c.repeat_penalty, 64, (uint64_t)c.seed};
    if (duet_sampling_validate(&sp, err, sizeof err) != DUET_OK || c.max_tokens < 1 || c.threads < 0 || c.ctx < 0) {
        fprintf(stderr, "duet generate: %s\n", c.max_tokens < 1 ? "--max-tokens must be at least 1"
                                                : c.threads < 0 ? "--threads must be >= 0"
                                                : c.ctx < 0 ? "--ctx must be >= 0" : err);
        return 2;
    }
    runner_t r = {.c = &c};
    duet_backend_t *be = NULL;
    stream_t out = {0};
    int has_template;
    if (c.gateway) {
        /* TLS when a CA (or a client certificate) is given. */
        int system_roots = c.tls_ca && strcmp(c.tls_ca, "system") == 0;
        duet_rpc_tls_t tls = {.ca = system_roots ? NULL : c.tls_ca, .cert = c.tls_cert, .key = c.tls_key,
                              .server_name = c.tls_server_name};
        duet_rpc_client_conf_t cc = {.tls = c.tls_ca || c.tls_cert ? &tls : NULL};
        if (duet_rpc_client_create_conf(&cc, &r.client) != DUET_OK) {
            fprintf(stderr, "duet generate: cannot set up the gateway client (TLS files?)\n");
            return 1;
        }
        has_template = 1;  /* the gateway renders with its model's template */
    } else {
        if (duet_tool_open_model(c.model, c.device, c.threads, &be, &r.model))
            return 1;
        duet_engine_conf_t ec = {.n_ctx = c.ctx, .max_seqs = 1};
        duet_status_t st = duet_engine_create(r.model, &ec, &r.engine);
        if (st != DUET_OK) {
            fprintf(stderr, "duet generate: cannot create the engine: %s\n", duet_status_str(st));
            duet_tool_close_model(be, r.model);
            return 1;
        }
        out.tok = r.model->tok;
        has_template = r.model->chat.style != DUET_CHAT_NONE;
    }
    history_t h = {0};
    if (c.system)
        history_add(&h, "system", c.system);
    if (c.prompt) {
        if (c.chat && history_add(&h, "user", c.prompt) != 0)
            rc = 1;
        else
            rc = run_turn(&r, c.prompt, c.chat ? h.msgs : NULL, h.n, &out);
    } else {
        /* Interactive: a conversation when the model has a chat template, else plain completions. */
        int chat = c.chat || has_template;
        char *line = NULL;
        size_t line_cap = 0;
        ssize_t len;
        fprintf(stderr, "duet: %s; type a prompt and Enter (Ctrl-D ends)\n",
                c.gateway ? c.gateway : r.model->name);
        while (fprintf(stderr, "> "), (len = getline(&line, &line_cap, stdin)) >= 0) {
            while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
                line[--len] = '\0';
            if (len == 0)
                continue;
            if (chat && history_add(&h, "user", line) != 0)
                break;
            if (run_turn(&r, line, chat ? h.msgs : NULL, h.n, &out) == 0 && chat && out.reply)
                history_add(&h, "assistant", out.reply);
        }
        free(line);
    }
    history_free(&h);
    free(out.reply);
    if (r.client)
        duet_rpc_client_destroy(r.client);
    if (r.engine)
        duet_engine_destroy(r.engine);
    if (r.model)
        duet_tool_close_model(be, r.model);
    return rc;
}
