/* lib/engine/pretokenizer.c — pre-tokenizer regex sets (from the public Hugging Face tokenizer.json
 * pre_tokenizer patterns) compiled once by PCRE2 and applied in sequence. */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "pretokenizer.h"

#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_REGEXES 4

/* Whitespace is spelled out as the Unicode White_Space property, the set Hugging Face's regex
 * engine uses for \s. PCRE2's own \s also takes U+180E (whitespace before Unicode 6.3), which
 * would split words differently. WS is the inside of a character class. */
#define WS "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

/* GPT-2's ByteLevel pattern: contractions, optionally space-led letter/number/other runs, and
 * whitespace where a run before a word leaves its last space to lead that word. */
#define RE_GPT2                                                                                \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+"                    \
    "|[" WS "]+(?![^" WS "])|[" WS "]+"

/* Llama 3 (also dbrx, smaug): case-insensitive contractions, one non-letter may lead a word,
 * numbers in groups of up to three, newlines kept with the punctuation or whitespace before. */
#define RE_LLAMA3                                                                              \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"                  \
    "| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n]*|[" WS "]*[\\r\\n]+|[" WS "]+(?![^" WS "])|[" WS "]+"

/* Qwen2: the Llama 3 pattern with every digit on its own. */
#define RE_QWEN2                                                                               \
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"                       \
    "| ?[^" WS "\\p{L}\\p{N}]+[\\r\\n]*|[" WS "]*[\\r\\n]+|[" WS "]+(?![^" WS "])|[" WS "]+"

/* HF Digits(individual_digits=true): each numeric character is a piece of its own. */
#define RE_DIGITS "\\p{N}"

typedef struct {
    const char *names[6];       /* tokenizer.ggml.pre values that select this set, NULL-ended */
    const char *regexes[MAX_REGEXES];
} regex_set_t;

static const regex_set_t regex_sets[] = {
    { { "gpt2", "default", NULL }, { RE_GPT2 } },
    { { "llama3", "llama-bpe", "llama-v3", "dbrx", "smaug-bpe", NULL }, { RE_LLAMA3 } },
    { { "qwen2", NULL }, { RE_QWEN2 } },
    { { "smollm", "starcoder", "refact", NULL }, { RE_DIGITS, RE_GPT2 } },
};

struct duet_pretok {
    const regex_set_t *set;
    int n_regex;
    pcre2_code *code[MAX_REGEXES];
};

int duet_pretok_utf8_seq_len(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    if (len == 0)
        return 0;
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    int n;
    unsigned char lo = 0x80, hi = 0xBF;   /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0)
            lo = 0xA0;                    /* overlong */
        else if (c == 0xED)
            hi = 0x9F;                    /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0)
            lo = 0x90;                    /* overlong */
        else if (c == 0xF4)
            hi = 0x8F;                    /* above U+10FFFF */
    } else {
        return 0;
    }
    if (len < (size_t)n || s[1] < lo || s[1] > hi)
        return 0;
    for (int i = 2; i < n; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return n;
}

size_t duet_pretok_utf8_prefix(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if ((unsigned char)s[i] < 0x80) {
            i++;
            continue;
        }
        int n = duet_pretok_utf8_seq_len(s + i, len - i);
        if (n == 0)
            break;
        i += (size_t)n;
    }
    return i;
}

static const regex_set_t *find_set(const char *name)
{
    for (size_t i = 0; i < sizeof(regex_sets) / sizeof(regex_sets[0]); i++)
        for (int j = 0; regex_sets[i].names[j]; j++)
            if (strcmp(regex_sets[i].names[j], name) == 0)
                return &regex_sets[i];
    return NULL;
}

void duet_pretok_destroy(duet_pretok_t *pt)
{
    if (!pt)
        return;
    for (int i = 0; i < pt->n_regex; i++)
        pcre2_code_free(pt->code[i]);
    free(pt);
}

duet_status_t duet_pretok_create(const char *name, duet_pretok_t **pt_p, char *warn, size_t warn_len)
{
    if (warn && warn_len)
        warn[0] = 0;
    const regex_set_t *set = find_set(name ? name : "default");
    if (!set) {
        if (warn && warn_len)
            snprintf(warn, warn_len, "pretokenizer: unknown tokenizer.ggml.pre \"%.64s\", using the GPT-2 regex",
                     name);
        set = &regex_sets[0];
    }
    duet_pretok_t *pt = calloc(1, sizeof(*pt));
    if (!pt)
        return DUET_ERR_NOMEM;
    pt->set = set;
    for (int i = 0; i < MAX_REGEXES && set->regexes[i]; i++) {
        int errcode;
        PCRE2_SIZE erroff;
        pcre2_code *code = pcre2_compile((PCRE2_SPTR)set->regexes[i], PCRE2_ZERO_TERMINATED,
                                         PCRE2_UTF | PCRE2_UCP, &errcode, &erroff, NULL);
        if (!code) {
            /* Our own patterns are constant, so this is a broken build, not bad input. */
            duet_pretok_destroy(pt);
            return DUET_ERR_INTERNAL;
        }
        /* JIT is an optimisation: when it is unavailable pcre2_match interprets. */
        (void)pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
        pt->code[pt->n_regex++] = code;
    }
    *pt_p = pt;
    return DUET_OK;
}

const char *duet_pretok_name(const duet_pretok_t *pt)
{
    return pt->set->names[0];
}

typedef struct {
    duet_pretok_piece_t *v;
    size_t n, cap;
} piece_vec_t;

static int push_piece(piece_vec_t *pv, size_t off, size_t len)
{
    if (len == 0)
        return 0;
    if (pv->n == pv->cap) {
        size_t cap = pv->cap ? pv->cap * 2 : 64;
        duet_pretok_piece_t *v = realloc(pv->v, cap * sizeof(*v));
        if (!v)
            return -1;
        pv->v = v;
        pv->cap = cap;
    }
    pv->v[pv->n].off = off;
    pv->v[pv->n].len = len;
    pv->n++;
    return 0;
}

/* Splits one piece by one regex; matches are searched inside the piece alone so lookarounds do
 * not see the neighbouring pieces (a split string in Hugging Face's tokenizers is independent). */
static duet_status_t split_piece(pcre2_code *code, pcre2_match_data *md, const char *text,
                                 duet_pretok_piece_t in, piece_vec_t *out)
{
    PCRE2_SPTR subject = (PCRE2_SPTR)(text + in.off);
    size_t start = 0, gap = 0;
    while (start < in.len) {
        int rc = pcre2_match(code, subject, in.len, start, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0)
            return DUET_ERR_INTERNAL;   /* e.g. a match limit: our patterns never reach one */
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t m0 = ov[0], m1 = ov[1];
        if (m1 <= m0) {
            /* An empty match consumes nothing; step over one character so the loop ends. */
            int n = duet_pretok_utf8_seq_len((const char *)subject + m0, in.len - m0);
            start = m0 + (size_t)(n > 0 ? n : 1);
            continue;
        }
        if (push_piece(out, in.off + gap, m0 - gap) || push_piece(out, in.off + m0, m1 - m0))
            return DUET_ERR_NOMEM;
        gap = start = m1;
    }
    if (push_piece(out, in.off + gap, in.len - gap))
        return DUET_ERR_NOMEM;
    return DUET_OK;
}

duet_status_t duet_pretok_split(const duet_pretok_t *pt, const char *text, size_t len,
                                duet_pretok_piece_t **pieces_p, size_t *n_p)
{
    if (duet_pretok_utf8_prefix(text, len) != len)
        return DUET_ERR_INVALID;
    piece_vec_t cur = { 0 }, next = { 0 };
    duet_status_t st = DUET_OK;
    if (push_piece(&cur, 0, len)) {
        st = DUET_ERR_NOMEM;
        goto out;
    }
    for (int r = 0; r < pt->n_regex; r++) {
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(pt->code[r], NULL);
        if (!md) {
            st = DUET_ERR_NOMEM;
            goto out;
        }
        next.n = 0;
        for (size_t i = 0; i < cur.n && st == DUET_OK; i++)
            st = split_piece(pt->code[r], md, text, cur.v[i], &next);
        pcre2_match_data_free(md);
        if (st != DUET_OK)
            goto out;
        piece_vec_t t = cur;
        cur = next;
        next = t;
    }
    *pieces_p = cur.v;
    *n_p = cur.n;
    cur.v = NULL;
out:
    free(cur.v);
    free(next.v);
    return st;
}
