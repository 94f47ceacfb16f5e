/* lib/engine/tokenizer.h — the vocabulary of a GGUF model: byte-level BPE (gpt2 style) with the
 * pre-tokenizer named by tokenizer.ggml.pre run by PCRE2, special tokens, and incremental
 * UTF-8-safe detokenization. */
#ifndef DUET_ENGINE_TOKENIZER_H
#define DUET_ENGINE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "../base/status.h"
#include "gguf.h"

typedef struct duet_tokenizer duet_tokenizer_t;

/* Builds the tokenizer from tokenizer.* metadata. Errors are written as one line into err. */
duet_status_t duet_tokenizer_create(const duet_gguf_t *gguf, duet_tokenizer_t **tok_p,
                                    char *err, size_t err_len);
void          duet_tokenizer_destroy(duet_tokenizer_t *tok);

int     duet_tokenizer_n_vocab(const duet_tokenizer_t *tok);
int32_t duet_tokenizer_bos(const duet_tokenizer_t *tok);   /* -1 when the model has none */
int32_t duet_tokenizer_eos(const duet_tokenizer_t *tok);
/* Whether generation ends at this token: eos, eot, <|im_end|>, <|eot_id|>, <|endoftext|>... */
int     duet_tokenizer_is_end(const duet_tokenizer_t *tok, int32_t id);
/* Whether add_bos_token asks for a BOS token before the text. */
int     duet_tokenizer_adds_bos(const duet_tokenizer_t *tok);
/* The vocabulary string of a token, NUL-terminated (byte-level encoded, e.g. "Ġthe"). */
const char *duet_tokenizer_token_text(const duet_tokenizer_t *tok, int32_t id);
/* Whether the token is a control/special token (not plain text). */
int     duet_tokenizer_is_special(const duet_tokenizer_t *tok, int32_t id);
/* The token id of an exact vocabulary string, or -1. */
int32_t duet_tokenizer_find(const duet_tokenizer_t *tok, const char *text);

/* Encodes len bytes of text (any bytes; invalid UTF-8 is encoded byte by byte).
 * add_bos: prepend BOS when the model asks for it. parse_special: text like "<|im_start|>" becomes
 * its special token; otherwise it is encoded as plain text.
 * Writes at most max tokens; *n_p is the full count. DUET_ERR_EXHAUSTED when max was too small. */
duet_status_t duet_tokenizer_encode(const duet_tokenizer_t *tok, const char *text, size_t len,
                                    int add_bos, int parse_special,
                                    int32_t *tokens, int max, int *n_p);

/* The bytes a token stands for (byte-level decoded), or its text for a special token.
 * Returns the byte count, or -1 for an id out of range; writes at most cap bytes. */
int duet_tokenizer_token_bytes(const duet_tokenizer_t *tok, int32_t id, char *buf, size_t cap);

/* Incremental detokenizer: holds back an incomplete UTF-8 sequence until a later token
 * completes it, so every piece written is valid UTF-8. */
typedef struct {
    unsigned char pending[8];
    int n_pending;
} duet_detok_t;

void duet_detok_init(duet_detok_t *d);
/* Appends what token adds to the text; returns bytes written to out. out must have room for
 * DUET_DETOK_MAX_PIECE bytes. Special tokens are written as their text when show_special. */
#define DUET_DETOK_MAX_PIECE 1024
size_t duet_detok_push(duet_detok_t *d, const duet_tokenizer_t *tok, int32_t id, int show_special,
                       char *out);
/* Writes any held-back bytes (an unfinished sequence becomes U+FFFD); returns bytes written. */
size_t duet_detok_flush(duet_detok_t *d, char *out);

#endif
