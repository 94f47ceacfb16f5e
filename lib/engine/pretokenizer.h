/* lib/engine/pretokenizer.h — the pre-tokenizer named by tokenizer.ggml.pre: a sequence of PCRE2
 * regexes that split text into the words byte-level BPE then merges within. */
#ifndef DUET_ENGINE_PRETOKENIZER_H
#define DUET_ENGINE_PRETOKENIZER_H

#include <stddef.h>

#include "../base/status.h"

typedef struct duet_pretok duet_pretok_t;

/* One word: text[off .. off+len). */
typedef struct {
    size_t off;
    size_t len;
} duet_pretok_piece_t;

/* Compiles the regexes for a tokenizer.ggml.pre name ("smollm", "llama3", "qwen2", ...; NULL means
 * "default", the GPT-2 regex). An unknown name is not an error: it falls back to GPT-2 and writes a
 * one-line warning into warn (warn[0] is 0 when there is nothing to say). warn may be NULL.
 * The result is read-only afterwards and may be shared by threads. */
duet_status_t duet_pretok_create(const char *name, duet_pretok_t **pt_p, char *warn, size_t warn_len);
void          duet_pretok_destroy(duet_pretok_t *pt);

/* The canonical name of the regex set in use ("gpt2", "llama3", "qwen2", "smollm"). */
const char   *duet_pretok_name(const duet_pretok_t *pt);

/* Splits len bytes of text into pieces that cover it in order. Each regex splits every piece the
 * previous one produced; matches and the gaps between them both become pieces.
 * text must be valid UTF-8 (DUET_ERR_INVALID otherwise). *pieces_p is malloc'd (NULL when
 * *n_p is 0); the caller frees it. */
duet_status_t duet_pretok_split(const duet_pretok_t *pt, const char *text, size_t len,
                                duet_pretok_piece_t **pieces_p, size_t *n_p);

/* Length in bytes of the longest prefix of s[0..len) that is valid UTF-8 (no overlong forms,
 * surrogates or code points above U+10FFFF: the same rules PCRE2 checks). */
size_t duet_pretok_utf8_prefix(const char *s, size_t len);
/* Length of the valid UTF-8 sequence starting at s (1..4), or 0 when s[0] starts none. */
int    duet_pretok_utf8_seq_len(const char *s, size_t len);

#endif
