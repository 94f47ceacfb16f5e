/* lib/engine/chat.c — recognises the model's Jinja chat template as ChatML or Llama 3 and renders
 * messages exactly as that template would, without a Jinja interpreter. */
#include "chat.h"

#include <stdlib.h>
#include <string.h>

#define CHATML_SYSTEM "<|im_start|>system"
#define CHATML_END    "<|im_end|>"

/* The first occurrence of needle in s[0..len), or NULL (memmem, which strict C11 lacks). */
static const char *find(const char *s, size_t len, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; n <= len && i <= len - n; i++)
        if (s[i] == needle[0] && memcmp(s + i, needle, n) == 0)
            return s + i;
    return NULL;
}

/* Reads the body of a Jinja string literal from s up to end, undoing backslash escapes.
 * Returns NULL when the text is not a plain literal (it closes a quote or opens an expression
 * before end), so that only a constant default system message is taken. */
static char *literal_text(const char *s, const char *end)
{
    char *out = malloc((size_t)(end - s) + 1);
    if (!out)
        return NULL;
    size_t w = 0;
    for (const char *p = s; p < end; p++) {
        char c = *p;
        if (c == '\'' || c == '"' || c == '{' || c == '}') {
            free(out);
            return NULL;
        }
        if (c == '\\' && p + 1 < end) {
            char e = *++p;
            c = e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
        }
        out[w++] = c;
    }
    out[w] = 0;
    return out;
}

/* Finds the system message a ChatML template writes when the conversation has none: a literal
 * '<|im_start|>system\n...<|im_end|>' (SmolLM2, Qwen2.5). The system turn that copies the user's
 * own message is skipped because its text is not a plain literal. */
static char *chatml_default_system(const char *tpl, size_t len)
{
    const char *end = tpl + len;
    const char *p = tpl;
    while ((p = find(p, (size_t)(end - p), CHATML_SYSTEM)) != NULL) {
        p += strlen(CHATML_SYSTEM);
        const char *body = NULL;
        if (p < end && *p == '\n')
            body = p + 1;
        else if (end - p >= 2 && p[0] == '\\' && p[1] == 'n')
            body = p + 2;
        if (!body)
            continue;
        const char *close = find(body, (size_t)(end - body), CHATML_END);
        if (!close)
            return NULL;
        char *text = literal_text(body, close);
        if (text)
            return text;
    }
    return NULL;
}

duet_status_t duet_chat_template_init(duet_chat_template_t *tpl, const duet_gguf_t *gguf)
{
    duet_gguf_str_t s;
    duet_status_t st = duet_gguf_get_str(gguf, "tokenizer.chat_template", &s);
    if (st == DUET_ERR_NOT_FOUND) {
        tpl->style = DUET_CHAT_NONE;
        tpl->default_system = NULL;
        return DUET_OK;
    }
    if (st != DUET_OK)
        return DUET_ERR_FORMAT;
    duet_chat_style_t style = DUET_CHAT_NONE;
    char *def = NULL;
    size_t len = (size_t)s.len;
    if (find(s.ptr, len, "<|start_header_id|>")) {
        style = DUET_CHAT_LLAMA3;
    } else if (find(s.ptr, len, "<|im_start|>")) {
        style = DUET_CHAT_CHATML;
        def = chatml_default_system(s.ptr, len);
    }
    tpl->style = style;
    tpl->default_system = def;
    return DUET_OK;
}

void duet_chat_template_cleanup(duet_chat_template_t *tpl)
{
    free(tpl->default_system);
    tpl->default_system = NULL;
    tpl->style = DUET_CHAT_NONE;
}

typedef struct {
    char *buf;                 /* NULL while measuring */
    size_t n;
    duet_chat_span_t *spans;   /* NULL while measuring */
    int n_spans;
} out_t;

static void put(out_t *o, const char *s, size_t n)
{
    if (o->buf)
        memcpy(o->buf + o->n, s, n);
    o->n += n;
}

static void puts_(out_t *o, const char *s)
{
    put(o, s, strlen(s));
}

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* A message's content, remembered as a span. */
static void put_content(out_t *o, const char *s, size_t n)
{
    if (o->spans)
        o->spans[o->n_spans] = (duet_chat_span_t){o->n, o->n + n};
    o->n_spans++;
    put(o, s, n);
}

/* Jinja's trim: whitespace off both ends. */
static void put_content_trimmed(out_t *o, const char *s)
{
    size_t a = 0, b = strlen(s);
    while (a < b && is_ws(s[a]))
        a++;
    while (b > a && is_ws(s[b - 1]))
        b--;
    put_content(o, s + a, b - a);
}

/* ChatML as SmolLM2's template writes it: content is not trimmed, and the default system turn
 * comes first only when there are messages and the first is not a system one. */
static void render_chatml(const duet_chat_template_t *tpl, const duet_chat_msg_t *msgs, int n,
                          int add_generation_prompt, out_t *o)
{
    if (tpl->default_system && n > 0 && strcmp(msgs[0].role, "system") != 0) {
        puts_(o, CHATML_SYSTEM "\n");
        puts_(o, tpl->default_system);
        puts_(o, CHATML_END "\n");
    }
    for (int i = 0; i < n; i++) {
        puts_(o, "<|im_start|>");
        puts_(o, msgs[i].role);
        puts_(o, "\n");
        put_content(o, msgs[i].content ? msgs[i].content : "", msgs[i].content ? strlen(msgs[i].content) : 0);
        puts_(o, CHATML_END "\n");
    }
    if (add_generation_prompt)
        puts_(o, "<|im_start|>assistant\n");
}

/* Llama 3 as Meta's template writes it: BOS text before the first message, content trimmed. */
static void render_llama3(const duet_chat_msg_t *msgs, int n, int add_generation_prompt, out_t *o)
{
    for (int i = 0; i < n; i++) {
        if (i == 0)
            puts_(o, "<|begin_of_text|>");
        puts_(o, "<|start_header_id|>");
        puts_(o, msgs[i].role);
        puts_(o, "<|end_header_id|>\n\n");
        put_content_trimmed(o, msgs[i].content ? msgs[i].content : "");
        puts_(o, "<|eot_id|>");
    }
    if (add_generation_prompt)
        puts_(o, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static void render(const duet_chat_template_t *tpl, const duet_chat_msg_t *msgs, int n,
                   int add_generation_prompt, out_t *o)
{
    if (tpl->style == DUET_CHAT_CHATML)
        render_chatml(tpl, msgs, n, add_generation_prompt, o);
    else
        render_llama3(msgs, n, add_generation_prompt, o);
}

duet_status_t duet_chat_render_spans(const duet_chat_template_t *tpl, const duet_chat_msg_t *msgs, int n,
                                     int add_generation_prompt, char **text_p, duet_chat_span_t **spans_p,
                                     int *n_spans_p)
{
    if (tpl->style != DUET_CHAT_CHATML && tpl->style != DUET_CHAT_LLAMA3)
        return DUET_ERR_UNSUPPORTED;
    if (n < 0 || (n > 0 && !msgs))
        return DUET_ERR_INVALID;
    for (int i = 0; i < n; i++)
        if (!msgs[i].role)
            return DUET_ERR_INVALID;
    /* Two passes: measure, then write, so the prompt is one exact allocation. */
    out_t o = {NULL, 0, NULL, 0};
    render(tpl, msgs, n, add_generation_prompt, &o);
    char *buf = malloc(o.n + 1);
    duet_chat_span_t *spans = spans_p && o.n_spans ? malloc((size_t)o.n_spans * sizeof *spans) : NULL;
    if (!buf || (spans_p && o.n_spans && !spans)) {
        free(buf);
        free(spans);
        return DUET_ERR_NOMEM;
    }
    o = (out_t){buf, 0, spans, 0};
    render(tpl, msgs, n, add_generation_prompt, &o);
    buf[o.n] = 0;
    *text_p = buf;
    if (spans_p) {
        *spans_p = spans;
        *n_spans_p = o.n_spans;
    }
    return DUET_OK;
}

duet_status_t duet_chat_render(const duet_chat_template_t *tpl, const duet_chat_msg_t *msgs, int n,
                               int add_generation_prompt, char **text_p)
{
    return duet_chat_render_spans(tpl, msgs, n, add_generation_prompt, text_p, NULL, NULL);
}
