/* tools/cmd_generate.c — `duet generate`: text from a prompt with the in-process engine. Only the
 * generated text goes to stdout, as it is produced; statistics go to stderr. Without --prompt it
 * reads prompts line by line (a chat, when the model has a template). */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat.h"
#include "commands.h"
#include "conf.h"
#include "engine.h"
#include "log.h"

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
};
#undef OPT
#define N_OPTS ((int)(sizeof generate_opts / sizeof generate_opts[0]))

typedef struct {
    const duet_tokenizer_t *tok;
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
static int run_one(const generate_conf_t *c, duet_model_t *model, duet_engine_t *engine,
                   const char *text, stream_t *out)
{
    int cap = duet_engine_n_ctx(engine);
    int32_t *prompt = malloc((size_t)cap * sizeof *prompt);
    if (!prompt)
        return 1;
    int n_prompt = 0;
    /* A Llama-3 chat rendering already starts with <|begin_of_text|>: no second BOS. */
    int add_bos = !(c->chat && model->chat.style == DUET_CHAT_LLAMA3);
    duet_status_t st = duet_tokenizer_encode(model->tok, text, strlen(text), add_bos, c->chat, prompt, cap, &n_prompt);
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

/* Renders the conversation so far plus the new user turn; *text_p is malloc'd. */
static int render_chat(const duet_model_t *model, const char *system, duet_chat_msg_t **history,
                       int *n_history, const char *user_text, char **text_p)
{
    duet_chat_msg_t *h = realloc(*history, (size_t)(*n_history + 2) * sizeof *h);
    if (!h)
        return 1;
    *history = h;
    h[(*n_history)++] = (duet_chat_msg_t){"user", strdup(user_text)};
    duet_chat_msg_t *msgs = malloc((size_t)(*n_history + 1) * sizeof *msgs);
    if (!msgs)
        return 1;
    int n = 0;
    if (system)
        msgs[n++] = (duet_chat_msg_t){"system", system};
    memcpy(msgs + n, h, (size_t)*n_history * sizeof *msgs);
    n += *n_history;
    duet_status_t st = duet_chat_render(&model->chat, msgs, n, 1, text_p);
    free(msgs);
    if (st != DUET_OK) {
        fprintf(stderr, "duet: this model has no chat template duet can render; drop --chat\n");
        return 1;
    }
    return 0;
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
    duet_backend_t *be;
    duet_model_t *model;
    if (duet_tool_open_model(c.model, c.threads, &be, &model))
        return 1;
    duet_engine_conf_t ec = {.n_ctx = c.ctx, .max_seqs = 1};
    duet_engine_t *engine;
    duet_status_t st = duet_engine_create(model, &ec, &engine);
    if (st != DUET_OK) {
        fprintf(stderr, "duet generate: cannot create the engine: %s\n", duet_status_str(st));
        duet_tool_close_model(be, model);
        return 1;
    }
    stream_t out = {.tok = model->tok};
    const char *system = c.system ? c.system : model->chat.default_system;
    rc = 0;
    if (c.prompt) {
        char *text = NULL;
        duet_chat_msg_t *history = NULL;
        int n_history = 0;
        if (c.chat && (rc = render_chat(model, system, &history, &n_history, c.prompt, &text)) != 0)
            goto done;
        rc = run_one(&c, model, engine, text ? text : c.prompt, &out);
        free(text);
        for (int i = 0; i < n_history; i++)
            free((char *)history[i].content);
        free(history);
    } else {
        /* Interactive: a conversation when the model has a chat template, else plain completions. */
        int chat = c.chat || model->chat.style != DUET_CHAT_NONE;
        c.chat = chat;
        duet_chat_msg_t *history = NULL;
        int n_history = 0;
        char *line = NULL;
        size_t line_cap = 0;
        ssize_t len;
        fprintf(stderr, "duet: %s loaded; type a prompt and Enter (Ctrl-D ends)\n", model->name);
        while (fprintf(stderr, "> "), (len = getline(&line, &line_cap, stdin)) >= 0) {
            while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
                line[--len] = '\0';
            if (len == 0)
                continue;
            char *text = NULL;
            if (chat && render_chat(model, system, &history, &n_history, line, &text) != 0)
                break;
            run_one(&c, model, engine, text ? text : line, &out);
            free(text);
            if (chat && out.reply) {
                duet_chat_msg_t *h = realloc(history, (size_t)(n_history + 1) * sizeof *h);
                if (h) {
                    history = h;
                    history[n_history++] = (duet_chat_msg_t){"assistant", strdup(out.reply)};
                }
            }
        }
        free(line);
        for (int i = 0; i < n_history; i++)
            free((char *)history[i].content);
        free(history);
    }
done:
    free(out.reply);
    duet_engine_destroy(engine);
    duet_tool_close_model(be, model);
    return rc;
}
