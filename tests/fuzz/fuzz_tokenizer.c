/* tests/fuzz/fuzz_tokenizer.c — libFuzzer target for the tokenizer (lib/engine/tokenizer.c and the
 * PCRE2 pre-tokenizer) with the real model's vocabulary ($DUET_FUZZ_MODEL).
 *
 * Input: byte 0 chooses; the rest is the payload.
 *   bit 0-1 == 3: decode. The payload is little-endian uint16 token ids (some beyond the
 *             vocabulary) pushed through the incremental detokenizer; bit 2: show_special.
 *   otherwise: encode the payload as text; bit 0: parse_special, bit 1: add_bos.
 * Invariants, beyond "no crash":
 *   - encoding: every id is below n_vocab; the count is the same with a buffer too small
 *     (EXHAUSTED, same prefix); BOS comes first exactly when asked and the model adds it; the
 *     bytes of the ids are the input again, less the bytes the vocabulary cannot spell (byte-level
 *     BPE loses nothing else, special tokens or not; SmolLM2 has no token for 0xC0 0xC1 0xF1 0xF2
 *     0xF5-0xFF, bytes no assigned character's UTF-8 holds, and the tokenizer drops them as Hugging
 *     Face does without an unk token);
 *     without parse_special no control token appears; detokenizing the ids gives the input when
 *     it is valid UTF-8, else the input with each maximal invalid subpart as U+FFFD.
 *   - decoding: every piece is valid UTF-8, and the pieces plus the flush are the tokens' bytes
 *     (specials only when shown) with invalid subparts as U+FFFD. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "fuzz_model.h"
#include "tokenizer.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_model_get();
    return 0;
}

/* The concatenated bytes of ids[from..n) (specials included when with_special) into a malloc'd
 * buffer, *len_p its length. */
static char *ids_bytes(const duet_tokenizer_t *tok, const int32_t *ids, int from, int n, int with_special,
                       size_t *len_p)
{
    size_t cap = 64, len = 0;
    char *out = malloc(cap);
    FUZZ_CHECK(out, "out of memory");
    for (int i = from; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= duet_tokenizer_n_vocab(tok))
            continue;
        if (!with_special && duet_tokenizer_is_special(tok, ids[i]))
            continue;
        char probe;
        int b = duet_tokenizer_token_bytes(tok, ids[i], &probe, 0);
        FUZZ_CHECK(b >= 0, "token %d has no bytes", ids[i]);
        while (len + (size_t)b > cap) {
            cap *= 2;
            out = realloc(out, cap);
            FUZZ_CHECK(out, "out of memory");
        }
        int b2 = duet_tokenizer_token_bytes(tok, ids[i], out + len, (size_t)b);
        FUZZ_CHECK(b2 == b, "token %d: %d bytes, then %d", ids[i], b, b2);
        len += (size_t)b;
    }
    *len_p = len;
    return out;
}

/* Detokenizes ids[from..n) piece by piece plus the flush; checks every piece is valid UTF-8 and
 * the whole is the sanitized bytes. */
static void check_detok(const duet_tokenizer_t *tok, const int32_t *ids, int from, int n, int show_special)
{
    size_t raw_len;
    char *raw = ids_bytes(tok, ids, from, n, show_special, &raw_len);
    char *want = malloc(3 * raw_len + 1);
    char *got = malloc((size_t)(n - from + 1) * DUET_DETOK_MAX_PIECE + 3);
    FUZZ_CHECK(want && got, "out of memory");
    size_t want_len = fuzz_utf8_sanitize(raw, raw_len, want);
    size_t got_len = 0;
    duet_detok_t d;
    duet_detok_init(&d);
    for (int i = from; i < n; i++) {
        size_t w = duet_detok_push(&d, tok, ids[i], show_special, got + got_len);
        FUZZ_CHECK(w <= DUET_DETOK_MAX_PIECE, "piece of %zu bytes", w);
        FUZZ_CHECK(fuzz_utf8_valid(got + got_len, w), "token %d (#%d) gave invalid UTF-8", ids[i], i);
        got_len += w;
    }
    size_t w = duet_detok_flush(&d, got + got_len);
    FUZZ_CHECK(fuzz_utf8_valid(got + got_len, w), "the flush gave invalid UTF-8");
    got_len += w;
    FUZZ_CHECK(got_len == want_len && memcmp(got, want, got_len) == 0,
               "detokenized %zu bytes, the sanitized token bytes are %zu", got_len, want_len);
    if (fuzz_utf8_valid(raw, raw_len))
        FUZZ_CHECK(got_len == raw_len && memcmp(got, raw, raw_len) == 0, "valid UTF-8 changed");
    free(raw);
    free(want);
    free(got);
}

static void fuzz_encode(const fuzz_model_t *m, const char *text, size_t len, int parse_special,
                        int add_bos)
{
    const duet_tokenizer_t *tok = m->tok;
    int n_vocab = duet_tokenizer_n_vocab(tok);
    int n = -1;
    duet_status_t st = duet_tokenizer_encode(tok, text, len, add_bos, parse_special, NULL, 0, &n);
    FUZZ_CHECK(st == DUET_OK || st == DUET_ERR_EXHAUSTED, "counting: status %d", st);
    FUZZ_CHECK(n >= 0 && (st == DUET_OK) == (n == 0), "counting: %d tokens, status %d", n, st);
    int32_t *ids = malloc(((size_t)n + 1) * sizeof *ids);
    FUZZ_CHECK(ids, "out of memory");
    int n2 = -1;
    st = duet_tokenizer_encode(tok, text, len, add_bos, parse_special, ids, n, &n2);
    FUZZ_CHECK(st == DUET_OK && n2 == n, "encoding: status %d, %d tokens, counted %d", st, n2, n);
    if (n > 1) {
        /* Too small a buffer: the same count, the same prefix, EXHAUSTED. */
        int half = n / 2, n3 = -1;
        int32_t *part = malloc((size_t)half * sizeof *part);
        FUZZ_CHECK(part, "out of memory");
        st = duet_tokenizer_encode(tok, text, len, add_bos, parse_special, part, half, &n3);
        FUZZ_CHECK(st == DUET_ERR_EXHAUSTED && n3 == n, "half buffer: status %d, %d tokens", st, n3);
        FUZZ_CHECK(memcmp(part, ids, (size_t)half * sizeof *part) == 0, "half buffer: another prefix");
        free(part);
    }
    for (int i = 0; i < n; i++)
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < n_vocab, "id %d at %d of %d", ids[i], i, n);
    int from = 0;
    int32_t bos = duet_tokenizer_bos(tok);
    if (add_bos && duet_tokenizer_adds_bos(tok) && bos >= 0) {
        FUZZ_CHECK(n >= 1 && ids[0] == bos, "no BOS first");
        from = 1;
    }
    if (!parse_special)
        for (int i = from; i < n; i++)
            FUZZ_CHECK(!duet_tokenizer_is_special(tok, ids[i]), "control token %d without parse_special", ids[i]);
    /* The text less the bytes the vocabulary cannot spell. Inside a special token's text no
     * byte is dropped, but special token texts are ASCII here, always spellable. */
    char *want = malloc(len + 1);
    FUZZ_CHECK(want, "out of memory");
    size_t want_len = 0;
    for (size_t i = 0; i < len; i++)
        if (m->spellable[(unsigned char)text[i]])
            want[want_len++] = text[i];
    size_t back_len;
    char *back = ids_bytes(tok, ids, from, n, 1, &back_len);
    FUZZ_CHECK(back_len == want_len && memcmp(back, want, want_len) == 0,
               "round trip: %zu bytes in, %zu spellable, %zu bytes out (parse_special %d)", len, want_len,
               back_len, parse_special);
    free(back);
    free(want);
    check_detok(tok, ids, from, n, 1);
    free(ids);
}

static void fuzz_decode(const duet_tokenizer_t *tok, const uint8_t *p, size_t len, int show_special)
{
    int n_vocab = duet_tokenizer_n_vocab(tok);
    int n = (int)(len / 2);
    int32_t *ids = malloc(((size_t)n + 1) * sizeof *ids);
    FUZZ_CHECK(ids, "out of memory");
    for (int i = 0; i < n; i++) {
        uint32_t v = (uint32_t)p[2 * i] | (uint32_t)p[2 * i + 1] << 8;
        /* Mostly real ids; a few past the end, and -1. */
        ids[i] = v == 0xFFFF ? -1 : (int32_t)(v % (uint32_t)(n_vocab + 8));
    }
    check_detok(tok, ids, 0, n, show_special);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const fuzz_model_t *m = fuzz_model_get();
    if (size < 1)
        return 0;
    uint8_t mode = data[0];
    if ((mode & 3) == 3)
        fuzz_decode(m->tok, data + 1, size - 1, (mode >> 2) & 1);
    else
        fuzz_encode(m, (const char *)data + 1, size - 1, mode & 1, (mode >> 1) & 1);
    return 0;
}
