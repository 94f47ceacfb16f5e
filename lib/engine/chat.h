/* lib/engine/chat.h — chat templates: the model's tokenizer.chat_template recognised as one of the
 * forms duet renders (ChatML, Llama-3) and messages rendered into a prompt. */
#ifndef DUET_ENGINE_CHAT_H
#define DUET_ENGINE_CHAT_H

#include "../base/status.h"
#include "gguf.h"

typedef enum {
    DUET_CHAT_NONE = 0,   /* no template, or one duet does not recognise */
    DUET_CHAT_CHATML,     /* <|im_start|>role\ncontent<|im_end|>\n */
    DUET_CHAT_LLAMA3,     /* <|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|> */
} duet_chat_style_t;

typedef struct {
    duet_chat_style_t style;
    char *default_system;   /* system message the template adds when none is given, or NULL */
} duet_chat_template_t;

typedef struct {
    const char *role;     /* "system", "user", "assistant" */
    const char *content;
} duet_chat_msg_t;

/* Reads tokenizer.chat_template. A missing or unrecognised template gives style NONE, not an error. */
duet_status_t duet_chat_template_init(duet_chat_template_t *tpl, const duet_gguf_t *gguf);
void          duet_chat_template_cleanup(duet_chat_template_t *tpl);

/* Renders messages into a prompt that opens the assistant's turn when add_generation_prompt.
 * *text_p is malloc'd; the caller frees it. DUET_ERR_UNSUPPORTED for style NONE. */
duet_status_t duet_chat_render(const duet_chat_template_t *tpl, const duet_chat_msg_t *msgs, int n,
                               int add_generation_prompt, char **text_p);

/* A byte range [start, end) of a rendered prompt that is a message's content. */
typedef struct {
    size_t start, end;
} duet_chat_span_t;

/* Like duet_chat_render, and lists where each message's content landed (*spans_p malloc'd, in
 * text order, *n_spans_p of them, NULL/0 when there are none). Contents are to be tokenized as
 * plain text: special-token text inside a message must not become a control token (a user could
 * otherwise close their turn and open a system one). */
duet_status_t duet_chat_render_spans(const duet_chat_template_t *tpl, const duet_chat_msg_t *msgs, int n,
                                     int add_generation_prompt, char **text_p, duet_chat_span_t **spans_p,
                                     int *n_spans_p);

#endif
