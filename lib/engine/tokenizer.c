/* lib/engine/tokenizer.c — byte-level BPE (GPT-2 style) built from a GGUF file's tokenizer.*
 * metadata: vocabulary and merge hash tables, special-token splitting, and UTF-8-safe decoding. */
#include "tokenizer.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hash.h"
#include "pretokenizer.h"

/* tokenizer.ggml.token_type values. */
enum { TT_UNDEFINED = 0, TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER = 4, TT_UNUSED = 5,
       TT_BYTE = 6 };

#define ATTR_TYPE_MASK 0x07
#define ATTR_END       0x08   /* generation stops here */

/* Bounds that keep the size arithmetic far from overflow; real vocabularies are ~10^5. */
#define MAX_VOCAB  (1 << 24)
#define MAX_MERGES (1 << 26)

typedef struct {
    int32_t left, right;   /* -1 marks an empty slot */
    int32_t rank;
    int32_t result;
} merge_slot_t;

struct duet_tokenizer {
    int n_vocab;
    const char **text;      /* [n_vocab] NUL-terminated vocabulary strings, in text_blob */
    uint32_t *text_len;     /* [n_vocab] */
    const char **bytes;     /* [n_vocab] what each token decodes to (not NUL-terminated) */
    uint32_t *bytes_len;    /* [n_vocab] */
    uint8_t *attr;          /* [n_vocab] token type | ATTR_END */
    char *text_blob, *bytes_blob;

    int32_t *vocab_ht;      /* [vocab_mask + 1] token ids by text hash, -1 empty */
    uint64_t vocab_mask;
    merge_slot_t *merge_ht; /* [merge_mask + 1] by (left, right) */
    uint64_t merge_mask;

    int32_t byte_id[256];   /* token of each byte's byte-level character, -1 if absent */
    char byte_char[256][3]; /* that character in UTF-8, NUL-terminated */
    int16_t cp_byte[324];   /* byte-level code point -> byte, -1 for code points no byte maps to */

    int32_t *specials;      /* ids of the tokens split out of the text, by first byte then longest */
    int n_specials;
    int special_start[257]; /* specials[special_start[b] .. special_start[b+1]) begin with byte b */

    int32_t bos, eos, eot, eom, unk, pad;
    int add_bos;
    int ignore_merges;      /* a word already in the vocabulary is taken whole (Llama 3) */
    duet_pretok_t *pretok;
};

static duet_status_t fail(char *err, size_t err_len, duet_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static duet_status_t fail(char *err, size_t err_len, duet_status_t st, const char *fmt, ...)
{
    if (err && err_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_len, fmt, ap);
        va_end(ap);
    }
    return st;
}

/* Copies hostile text into an error message as printable ASCII (\xNN for the rest), cut short,
 * so the message stays one readable line. */
static const char *quote(char *dst, size_t cap, const char *s, size_t n)
{
    size_t w = 0, i = 0;
    for (; i < n && w + 8 < cap; i++) {   /* room for one escape plus "..." and the NUL */
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\')
            dst[w++] = (char)c;
        else
            w += (size_t)snprintf(dst + w, cap - w, "\\x%02X", c);
    }
    if (i < n) {
        memcpy(dst + w, "...", 3);
        w += 3;
    }
    dst[w] = 0;
    return dst;
}

static uint64_t hash_pair(int32_t a, int32_t b)
{
    uint64_t h = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

static uint64_t table_size(uint64_t n)
{
    uint64_t size = 64;
    while (size < 2 * n)
        size *= 2;
    return size;
}

static int32_t vocab_lookup(const duet_tokenizer_t *tok, const char *s, size_t n)
{
    for (uint64_t i = duet_hash_bytes(s, n) & tok->vocab_mask;; i = (i + 1) & tok->vocab_mask) {
        int32_t id = tok->vocab_ht[i];
        if (id < 0)
            return -1;
        if (tok->text_len[id] == n && memcmp(tok->text[id], s, n) == 0)
            return id;
    }
}

static const merge_slot_t *merge_lookup(const duet_tokenizer_t *tok, int32_t a, int32_t b)
{
    for (uint64_t i = hash_pair(a, b) & tok->merge_mask;; i = (i + 1) & tok->merge_mask) {
        const merge_slot_t *m = &tok->merge_ht[i];
        if (m->left < 0)
            return NULL;
        if (m->left == a && m->right == b)
            return m;
    }
}

/* GPT-2's reversible byte -> printable character map: printable Latin-1 bytes stand for
 * themselves, the other 68 are shifted to U+0100.. in byte order (space becomes U+0120 'Ġ'). */
static void init_byte_map(duet_tokenizer_t *tok)
{
    int next = 256;
    for (int i = 0; i < 324; i++)
        tok->cp_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        int cp = printable ? b : next++;
        tok->cp_byte[cp] = (int16_t)b;
        if (cp < 0x80) {
            tok->byte_char[b][0] = (char)cp;
            tok->byte_char[b][1] = 0;
        } else {
            tok->byte_char[b][0] = (char)(0xC0 | (cp >> 6));
            tok->byte_char[b][1] = (char)(0x80 | (cp & 0x3F));
            tok->byte_char[b][2] = 0;
        }
    }
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Writes what a token's text decodes to into out (which has room for len bytes: decoding never
 * grows a string); returns the length. */
static uint32_t decode_token_text(const duet_tokenizer_t *tok, int type, const char *s, uint32_t len,
                                  char *out)
{
    if (type == TT_BYTE && len == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' &&
        hexval(s[3]) >= 0 && hexval(s[4]) >= 0) {
        out[0] = (char)(hexval(s[3]) * 16 + hexval(s[4]));
        return 1;
    }
    if (type != TT_NORMAL && type != TT_UNDEFINED && type != TT_BYTE) {
        memcpy(out, s, len);
        return len;
    }
    /* The text is valid UTF-8 (checked at load). Characters outside the byte-level alphabet are
     * kept as they are, so odd vocabularies still decode to something readable. */
    uint32_t w = 0;
    for (uint32_t i = 0; i < len;) {
        int n = duet_pretok_utf8_seq_len(s + i, len - i);
        uint32_t cp = (unsigned char)s[i];
        if (n == 2)
            cp = ((cp & 0x1F) << 6) | ((unsigned char)s[i + 1] & 0x3F);
        if (n <= 2 && cp < 324 && tok->cp_byte[cp] >= 0) {
            out[w++] = (char)tok->cp_byte[cp];
        } else {
            memcpy(out + w, s + i, (size_t)n);
            w += (uint32_t)n;
        }
        i += (uint32_t)(n > 0 ? n : 1);
    }
    return w;
}

void duet_tokenizer_destroy(duet_tokenizer_t *tok)
{
    if (!tok)
        return;
    duet_pretok_destroy(tok->pretok);
    free(tok->specials);
    free(tok->merge_ht);
    free(tok->vocab_ht);
    free(tok->bytes_blob);
    free(tok->text_blob);
    free(tok->attr);
    free(tok->bytes_len);
    free(tok->bytes);
    free(tok->text_len);
    free(tok->text);
    free(tok);
}

/* An optional token id key: absent gives -1; present must name a token. */
static duet_status_t load_id(const duet_gguf_t *gguf, const char *key, int n_vocab, int32_t *id_p,
                             char *err, size_t err_len)
{
    uint32_t v;
    duet_status_t st = duet_gguf_get_u32(gguf, key, &v);
    if (st == DUET_ERR_NOT_FOUND) {
        *id_p = -1;
        return DUET_OK;
    }
    if (st != DUET_OK)
        return fail(err, err_len, DUET_ERR_FORMAT, "tokenizer: %s is not an unsigned integer", key);
    if (v >= (uint32_t)n_vocab)
        return fail(err, err_len, DUET_ERR_FORMAT, "tokenizer: %s = %u is outside the %d-token vocabulary",
                    key, v, n_vocab);
    *id_p = (int32_t)v;
    return DUET_OK;
}

static duet_status_t load_vocab(duet_tokenizer_t *tok, const duet_gguf_t *gguf, char *err, size_t err_len)
{
    duet_gguf_str_t *strs = NULL;
    uint64_t n = 0;
    duet_status_t st = duet_gguf_get_str_array(gguf, "tokenizer.ggml.tokens", &strs, &n);
    if (st == DUET_ERR_NOT_FOUND)
        return fail(err, err_len, DUET_ERR_FORMAT, "tokenizer: tokenizer.ggml.tokens is missing");
    if (st != DUET_OK)
        return fail(err, err_len, DUET_ERR_FORMAT, "tokenizer: tokenizer.ggml.tokens is not an array of strings");
    if (n == 0 || n > MAX_VOCAB) {
        free(strs);
        return fail(err, err_len, DUET_ERR_FORMAT, "tokenizer: vocabulary of %llu tokens (1..%d supported)",
                    (unsigned long long)n, MAX_VOCAB);
    }
    tok->n_vocab = (int)n;

    const void *types = NULL;
    uint64_t n_types = 0;
    st = duet_gguf_get_array(gguf, "tokenizer.ggml.token_type", DUET_GGUF_INT32, &types, &n_types);
    if (st == DUET_OK && n_types != n) {
        free(strs);
        return fail(err, err_len, DUET_ERR_FORMAT,
                    "tokenizer: tokenizer.ggml.token_type has %llu entries for %llu tokens",
                    (unsigned long long)n_types, (unsigned long long)n);
    }
    if (st != DUET_OK && st != DUET_ERR_NOT_FOUND) {
        free(strs);
        return fail(err, err_len, DUET_ERR_FORMAT, "tokenizer: tokenizer.ggml.token_type is not an int32 array");
    }
    if (st == DUET_ERR_NOT_FOUND)
        types = NULL;   /* every token is then a normal one */

    uint64_t total = 0;
    for (uint64_t i = 0; i < n; i++) {
        if (strs[i].len > UINT32_MAX / 2 || total > ((uint64_t)SIZE_MAX >> 2) - strs[i].len) {
            free(strs);
            return fail(err, err_len, DUET_ERR_FORMAT, "tokenizer: token %llu is too long",
                        (unsigned long long)i);
        }
        total += strs[i].len + 1;
    }
    tok->text = calloc(n, sizeof(*tok->text));
    tok->text_len = calloc(n, sizeof(*tok->text_len));
    tok->bytes = calloc(n, sizeof(*tok->bytes));
    tok->bytes_len = calloc(n, sizeof(*tok->bytes_len));
    tok->attr = calloc(n, 1);
    tok->text_blob = malloc(total);
    tok->bytes_blob = malloc(total);
    tok->vocab_mask = table_size(n) - 1;
    tok->vocab_ht = malloc((tok->vocab_mask + 1) * sizeof(*tok->vocab_ht));
    if (!tok->text || !tok->text_len || !tok->bytes || !tok->bytes_len || !tok->attr ||
        !tok->text_blob || !tok->bytes_blob || !tok->vocab_ht) {
        free(strs);
        return fail(err, err_len, DUET_ERR_NOMEM, "tokenizer: out of memory for %llu tokens",
                    (unsigned long long)n);
    }
    memset(tok->vocab_ht, 0xFF, (tok->vocab_mask + 1) * sizeof(*tok->vocab_ht));

    size_t off = 0, boff = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s = strs[i].ptr;
        uint32_t len = (uint32_t)strs[i].len;
        if (memchr(s, 0, len) || duet_pretok_utf8_prefix(s, len) != len) {
            free(strs);
            return fail(err, err_len, DUET_ERR_FORMAT, "tokenizer: token %llu is not valid UTF-8 text",
                        (unsigned long long)i);
        }
        int32_t type = TT_NORMAL;
        if (types) {
            memcpy(&type, (const char *)types + i * 4, 4);   /* may be unaligned in the image */
            if (type < TT_UNDEFINED || type > TT_BYTE) {
                free(strs);
                return fail(err, err_len, DUET_ERR_FORMAT, "tokenizer: token %llu has unknown type %d",
                            (unsigned long long)i, (int)type);
            }
            if (type == TT_UNDEFINED)
                type = TT_NORMAL;
        }
        tok->attr[i] = (uint8_t)type;
        memcpy(tok->text_blob + off, s, len);
        tok->text_blob[off + len] = 0;
        tok->text[i] = tok->text_blob + off;
        tok->text_len[i] = len;
        off += len + 1;
        tok->bytes[i] = tok->bytes_blob + boff;
        tok->bytes_len[i] = decode_token_text(tok, type, s, len, tok->bytes_blob + boff);
        boff += tok->bytes_len[i];

        /* Duplicated strings keep the first id, as a dictionary built in order would. */
        if (len > 0 && vocab_lookup(tok, s, len) < 0) {
            uint64_t h = duet_hash_bytes(s, len) & tok->vocab_mask;
            while (tok->vocab_ht[h] >= 0)
                h = (h + 1) & tok->vocab_mask;
            tok->vocab_ht[h] = (int32_t)i;
        }
    }
    free(strs);
    return DUET_OK;
}

static duet_status_t load_merges(duet_tokenizer_t *tok, const duet_gguf_t *gguf, char *err, size_t err_len)
{
    duet_gguf_str_t *strs = NULL;
    uint64_t n = 0;
    duet_status_t st = duet_gguf_get_str_array(gguf, "tokenizer.ggml.merges", &strs, &n);
    if (st == DUET_ERR_NOT_FOUND)
        return fail(err, err_len, DUET_ERR_FORMAT, "tokenizer: tokenizer.ggml.merges is missing");
    if (st != DUET_OK)
        return fail(err, err_len, DUET_ERR_FORMAT, "tokenizer: tokenizer.ggml.merges is not an array of strings");
    if (n > MAX_MERGES) {
        free(strs);
        return fail(err, err_len, DUET_ERR_FORMAT, "tokenizer: %llu merges (at most %d supported)",
                    (unsigned long long)n, MAX_MERGES);
    }
    tok->merge_mask = table_size(n) - 1;
    tok->merge_ht = malloc((tok->merge_mask + 1) * sizeof(*tok->merge_ht));
    char *joined = NULL;
    size_t joined_cap = 0;
    char q[80];
    if (!tok->merge_ht) {
        free(strs);
        return fail(err, err_len, DUET_ERR_NOMEM, "tokenizer: out of memory for %llu merges",
                    (unsigned long long)n);
    }
    memset(tok->merge_ht, 0xFF, (tok->merge_mask + 1) * sizeof(*tok->merge_ht));

    for (uint64_t i = 0; i < n; i++) {
        const char *s = strs[i].ptr;
        size_t len = strs[i].len;
        /* The separator is the first space after the first byte: a left part is never empty. */
        const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
        if (!sp || sp + 1 == s + len) {
            st = fail(err, err_len, DUET_ERR_FORMAT, "tokenizer: merge %llu is not two tokens separated by a space",
                      (unsigned long long)i);
            goto out;
        }
        size_t la = (size_t)(sp - s), lb = len - la - 1;
        int32_t a = vocab_lookup(tok, s, la), b = vocab_lookup(tok, sp + 1, lb);
        if (a < 0 || b < 0) {
            st = fail(err, err_len, DUET_ERR_FORMAT, "tokenizer: merge %llu \"%s\" names a token not in the vocabulary",
                      (unsigned long long)i, quote(q, sizeof(q), s, len));
            goto out;
        }
        if (la + lb > joined_cap) {
            size_t cap = (la + lb) * 2 + 16;
            char *p = realloc(joined, cap);
            if (!p) {
                st = fail(err, err_len, DUET_ERR_NOMEM, "tokenizer: out of memory");
                goto out;
            }
            joined = p;
            joined_cap = cap;
        }
        memcpy(joined, s, la);
        memcpy(joined + la, sp + 1, lb);
        int32_t r = vocab_lookup(tok, joined, la + lb);
        if (r < 0) {
            st = fail(err, err_len, DUET_ERR_FORMAT, "tokenizer: merge %llu \"%s\" makes a token not in the vocabulary",
                      (unsigned long long)i, quote(q, sizeof(q), s, len));
            goto out;
        }
        uint64_t h = hash_pair(a, b) & tok->merge_mask;
        while (tok->merge_ht[h].left >= 0 && !(tok->merge_ht[h].left == a && tok->merge_ht[h].right == b))
            h = (h + 1) & tok->merge_mask;
        if (tok->merge_ht[h].left < 0) {   /* a repeated pair keeps its first, lowest rank */
            tok->merge_ht[h].left = a;
            tok->merge_ht[h].right = b;
            tok->merge_ht[h].rank = (int32_t)i;
            tok->merge_ht[h].result = r;
        }
    }
    st = DUET_OK;
out:
    free(joined);
    free(strs);
    return st;
}

typedef struct {
    unsigned char first;
    uint32_t len;
    int32_t id;
} special_key_t;

static int special_cmp(const void *pa, const void *pb)
{
    const special_key_t *a = pa, *b = pb;
    if (a->first != b->first)
        return a->first < b->first ? -1 : 1;
    if (a->len != b->len)
        return a->len > b->len ? -1 : 1;   /* longest first */
    return a->id < b->id ? -1 : a->id > b->id;
}

static int is_split_type(int type)
{
    return type == TT_CONTROL || type == TT_USER || type == TT_UNKNOWN;
}

/* Collects the tokens that can be split out of text, grouped by first byte, longest first. */
static duet_status_t load_specials(duet_tokenizer_t *tok, char *err, size_t err_len)
{
    int n = 0;
    for (int i = 0; i < tok->n_vocab; i++)
        if (is_split_type(tok->attr[i] & ATTR_TYPE_MASK) && tok->text_len[i] > 0)
            n++;
    tok->specials = malloc((size_t)(n ? n : 1) * sizeof(*tok->specials));
    if (!tok->specials)
        return fail(err, err_len, DUET_ERR_NOMEM, "tokenizer: out of memory");
    special_key_t *keys = malloc((size_t)(n ? n : 1) * sizeof(*keys));
    if (!keys)
        return fail(err, err_len, DUET_ERR_NOMEM, "tokenizer: out of memory");
    n = 0;
    for (int i = 0; i < tok->n_vocab; i++)
        if (is_split_type(tok->attr[i] & ATTR_TYPE_MASK) && tok->text_len[i] > 0)
            keys[n++] = (special_key_t){ (unsigned char)tok->text[i][0], tok->text_len[i], i };
    qsort(keys, (size_t)n, sizeof(*keys), special_cmp);
    for (int i = 0; i < n; i++)
        tok->specials[i] = keys[i].id;
    free(keys);
    tok->n_specials = n;
    int j = 0;
    for (int b = 0; b < 256; b++) {
        tok->special_start[b] = j;
        while (j < n && (unsigned char)tok->text[tok->specials[j]][0] == b)
            j++;
    }
    tok->special_start[256] = n;
    return DUET_OK;
}

static void mark_end_tokens(duet_tokenizer_t *tok)
{
    static const char *const end_texts[] = { "<|im_end|>", "<|eot_id|>", "<|endoftext|>",
                                             "<|end_of_text|>", "<|eom_id|>", "</s>" };
    int32_t ids[] = { tok->eos, tok->eot, tok->eom };
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++)
        if (ids[i] >= 0)
            tok->attr[ids[i]] |= ATTR_END;
    for (size_t i = 0; i < sizeof(end_texts) / sizeof(end_texts[0]); i++) {
        int32_t id = vocab_lookup(tok, end_texts[i], strlen(end_texts[i]));
        if (id >= 0 && (tok->attr[id] & ATTR_TYPE_MASK) == TT_CONTROL)
            tok->attr[id] |= ATTR_END;
    }
}

duet_status_t duet_tokenizer_create(const duet_gguf_t *gguf, duet_tokenizer_t **tok_p,
                                    char *err, size_t err_len)
{
    if (err && err_len)
        err[0] = 0;
    duet_gguf_str_t model;
    duet_status_t st = duet_gguf_get_str(gguf, "tokenizer.ggml.model", &model);
    if (st == DUET_ERR_NOT_FOUND)
        return fail(err, err_len, DUET_ERR_FORMAT, "tokenizer: tokenizer.ggml.model is missing");
    if (st != DUET_OK)
        return fail(err, err_len, DUET_ERR_FORMAT, "tokenizer: tokenizer.ggml.model is not a string");
    if (model.len != 4 || memcmp(model.ptr, "gpt2", 4) != 0) {
        char q[48];
        return fail(err, err_len, DUET_ERR_UNSUPPORTED,
                    "tokenizer: tokenizer.ggml.model \"%s\" is not supported (only byte-level BPE \"gpt2\")",
                    quote(q, sizeof(q), model.ptr, (size_t)model.len));
    }

    char pre[64] = "default";
    duet_gguf_str_t pre_str;
    st = duet_gguf_get_str(gguf, "tokenizer.ggml.pre", &pre_str);
    if (st == DUET_OK) {
        size_t n = pre_str.len < sizeof(pre) - 1 ? pre_str.len : sizeof(pre) - 1;
        /* Only printable names can match; others are cleaned for the warning that names them. */
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)pre_str.ptr[i];
            pre[i] = c >= 0x20 && c < 0x7F ? (char)c : '?';
        }
        pre[n] = 0;
    } else if (st != DUET_ERR_NOT_FOUND) {
        return fail(err, err_len, DUET_ERR_FORMAT, "tokenizer: tokenizer.ggml.pre is not a string");
    }

    duet_tokenizer_t *tok = calloc(1, sizeof(*tok));
    if (!tok)
        return fail(err, err_len, DUET_ERR_NOMEM, "tokenizer: out of memory");
    init_byte_map(tok);

    /* An unknown pre-tokenizer is not fatal: the GPT-2 regex is the closest general choice. The
     * warning lands in err with success, for the caller to log. */
    char warn[160];
    st = duet_pretok_create(pre, &tok->pretok, warn, sizeof(warn));
    if (st != DUET_OK) {
        fail(err, err_len, st, "tokenizer: compiling the \"%s\" pre-tokenizer failed", pre);
        goto err_destroy;
    }
    tok->ignore_merges = strcmp(duet_pretok_name(tok->pretok), "llama3") == 0;

    if ((st = load_vocab(tok, gguf, err, err_len)) != DUET_OK ||
        (st = load_merges(tok, gguf, err, err_len)) != DUET_OK ||
        (st = load_specials(tok, err, err_len)) != DUET_OK)
        goto err_destroy;

    if ((st = load_id(gguf, "tokenizer.ggml.bos_token_id", tok->n_vocab, &tok->bos, err, err_len)) ||
        (st = load_id(gguf, "tokenizer.ggml.eos_token_id", tok->n_vocab, &tok->eos, err, err_len)) ||
        (st = load_id(gguf, "tokenizer.ggml.eot_token_id", tok->n_vocab, &tok->eot, err, err_len)) ||
        (st = load_id(gguf, "tokenizer.ggml.eom_token_id", tok->n_vocab, &tok->eom, err, err_len)) ||
        (st = load_id(gguf, "tokenizer.ggml.unknown_token_id", tok->n_vocab, &tok->unk, err, err_len)) ||
        (st = load_id(gguf, "tokenizer.ggml.padding_token_id", tok->n_vocab, &tok->pad, err, err_len)))
        goto err_destroy;

    st = duet_gguf_get_bool(gguf, "tokenizer.ggml.add_bos_token", &tok->add_bos);
    if (st == DUET_ERR_NOT_FOUND) {
        tok->add_bos = 0;
    } else if (st != DUET_OK) {
        st = fail(err, err_len, DUET_ERR_FORMAT, "tokenizer: tokenizer.ggml.add_bos_token is not a bool");
        goto err_destroy;
    }
    if (tok->add_bos && tok->bos < 0) {
        st = fail(err, err_len, DUET_ERR_FORMAT, "tokenizer: add_bos_token is set but bos_token_id is missing");
        goto err_destroy;
    }

    for (int b = 0; b < 256; b++)
        tok->byte_id[b] = vocab_lookup(tok, tok->byte_char[b], strlen(tok->byte_char[b]));
    mark_end_tokens(tok);

    if (err && err_len)
        snprintf(err, err_len, "%s", warn);
    *tok_p = tok;
    return DUET_OK;

err_destroy:
    duet_tokenizer_destroy(tok);
    return st;
}

int duet_tokenizer_n_vocab(const duet_tokenizer_t *tok) { return tok->n_vocab; }
int32_t duet_tokenizer_bos(const duet_tokenizer_t *tok) { return tok->bos; }
int32_t duet_tokenizer_eos(const duet_tokenizer_t *tok) { return tok->eos; }
int duet_tokenizer_adds_bos(const duet_tokenizer_t *tok) { return tok->add_bos; }

static int valid_id(const duet_tokenizer_t *tok, int32_t id)
{
    return id >= 0 && id < tok->n_vocab;
}

int duet_tokenizer_is_end(const duet_tokenizer_t *tok, int32_t id)
{
    return valid_id(tok, id) && (tok->attr[id] & ATTR_END) != 0;
}

const char *duet_tokenizer_token_text(const duet_tokenizer_t *tok, int32_t id)
{
    return valid_id(tok, id) ? tok->text[id] : NULL;
}

static int is_special_type(int type)
{
    return type == TT_CONTROL || type == TT_UNKNOWN || type == TT_UNUSED;
}

int duet_tokenizer_is_special(const duet_tokenizer_t *tok, int32_t id)
{
    return valid_id(tok, id) && is_special_type(tok->attr[id] & ATTR_TYPE_MASK);
}

int32_t duet_tokenizer_find(const duet_tokenizer_t *tok, const char *text)
{
    size_t n = strlen(text);
    return n ? vocab_lookup(tok, text, n) : -1;
}

int duet_tokenizer_token_bytes(const duet_tokenizer_t *tok, int32_t id, char *buf, size_t cap)
{
    if (!valid_id(tok, id))
        return -1;
    size_t n = tok->bytes_len[id];
    memcpy(buf, tok->bytes[id], n < cap ? n : cap);
    return n > INT_MAX ? INT_MAX : (int)n;
}

/* ---- encoding ---- */

typedef struct {
    int32_t id;
    int prev, next;   /* neighbours in the word, -1 at the ends */
    int alive;
} symbol_t;

typedef struct {
    int32_t rank;
    int left, right;         /* symbol positions */
    int32_t left_id, right_id;  /* their tokens when queued: a changed one makes the entry stale */
} pair_t;

/* Scratch memory of one encode call; tokens go to the caller's array or are only counted. */
typedef struct {
    const duet_tokenizer_t *tok;
    int32_t *out;
    int max;
    int n;
    symbol_t *sym;
    size_t sym_cap;
    pair_t *heap;
    size_t heap_n, heap_cap;
    char *word;           /* byte-level text of a word, for ignore_merges */
    size_t word_cap;
} encoder_t;

static duet_status_t emit(encoder_t *e, int32_t id)
{
    if (e->n == INT_MAX)
        return DUET_ERR_INVALID;
    if (e->n < e->max)
        e->out[e->n] = id;
    e->n++;
    return DUET_OK;
}

static int pair_less(const pair_t *a, const pair_t *b)
{
    return a->rank != b->rank ? a->rank < b->rank : a->left < b->left;
}

static void heap_push(encoder_t *e, pair_t p)
{
    size_t i = e->heap_n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!pair_less(&p, &e->heap[parent]))
            break;
        e->heap[i] = e->heap[parent];
        i = parent;
    }
    e->heap[i] = p;
}

static pair_t heap_pop(encoder_t *e)
{
    pair_t top = e->heap[0], last = e->heap[--e->heap_n];
    size_t i = 0, n = e->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && pair_less(&e->heap[c + 1], &e->heap[c]))
            c++;
        if (!pair_less(&e->heap[c], &last))
            break;
        e->heap[i] = e->heap[c];
        i = c;
    }
    if (n > 0)
        e->heap[i] = last;
    return top;
}

static void queue_pair(encoder_t *e, int left)
{
    int right = e->sym[left].next;
    if (right < 0)
        return;
    const merge_slot_t *m = merge_lookup(e->tok, e->sym[left].id, e->sym[right].id);
    if (!m)
        return;
    pair_t p = { m->rank, left, right, e->sym[left].id, e->sym[right].id };
    heap_push(e, p);
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t cap2 = *cap ? *cap : 64;
    while (cap2 < need)
        cap2 *= 2;
    void *q = realloc(*p, cap2 * elem);
    if (!q)
        return -1;
    *p = q;
    *cap = cap2;
    return 0;
}

/* BPE on one pre-tokenized word: start from one symbol per byte and repeatedly apply the
 * lowest-ranked merge (leftmost first among equal ranks) until none applies. */
static duet_status_t encode_word(encoder_t *e, const char *s, size_t len)
{
    const duet_tokenizer_t *tok = e->tok;
    if (tok->ignore_merges) {
        size_t w = 0;
        if (grow((void **)&e->word, &e->word_cap, 2 * len, 1))
            return DUET_ERR_NOMEM;
        for (size_t i = 0; i < len; i++) {
            const char *c = tok->byte_char[(unsigned char)s[i]];
            while (*c)
                e->word[w++] = *c++;
        }
        int32_t id = vocab_lookup(tok, e->word, w);
        if (id >= 0)
            return emit(e, id);
    }
    if (len > (size_t)INT_MAX / 2)
        return DUET_ERR_INVALID;
    if (grow((void **)&e->sym, &e->sym_cap, len, sizeof(symbol_t)) ||
        grow((void **)&e->heap, &e->heap_cap, 2 * len + 1, sizeof(pair_t)))
        return DUET_ERR_NOMEM;

    int n = 0;
    for (size_t i = 0; i < len; i++) {
        /* A byte the vocabulary cannot spell is dropped, as Hugging Face's BPE does without an
         * unk token. GGUF files often name one (SmolLM2: <|endoftext|>), but putting it into
         * the text would change what the model reads far more than losing the byte. */
        int32_t id = tok->byte_id[(unsigned char)s[i]];
        if (id < 0)
            continue;
        e->sym[n] = (symbol_t){ id, n - 1, n + 1, 1 };
        n++;
    }
    if (n == 0)
        return DUET_OK;
    e->sym[n - 1].next = -1;

    e->heap_n = 0;
    for (int i = 0; i + 1 < n; i++)
        queue_pair(e, i);
    while (e->heap_n > 0) {
        pair_t p = heap_pop(e);
        symbol_t *l = &e->sym[p.left], *r = &e->sym[p.right];
        if (!l->alive || !r->alive || l->next != p.right || l->id != p.left_id || r->id != p.right_id)
            continue;
        l->id = merge_lookup(tok, p.left_id, p.right_id)->result;
        l->next = r->next;
        if (r->next >= 0)
            e->sym[r->next].prev = p.left;
        r->alive = 0;
        /* Each merge removes one symbol and queues at most two pairs, so the heap stays < 2n+1. */
        if (l->prev >= 0)
            queue_pair(e, l->prev);
        queue_pair(e, p.left);
    }
    for (int i = 0; i >= 0; i = e->sym[i].next) {
        duet_status_t st = emit(e, e->sym[i].id);
        if (st != DUET_OK)
            return st;
    }
    return DUET_OK;
}

/* Text between special tokens: valid UTF-8 runs go through the pre-tokenizer; each byte that is
 * not valid UTF-8 is a word of its own. */
static duet_status_t encode_text(encoder_t *e, const char *s, size_t len)
{
    size_t pos = 0;
    while (pos < len) {
        size_t run = duet_pretok_utf8_prefix(s + pos, len - pos);
        if (run > 0) {
            duet_pretok_piece_t *pieces = NULL;
            size_t n = 0;
            duet_status_t st = duet_pretok_split(e->tok->pretok, s + pos, run, &pieces, &n);
            for (size_t i = 0; i < n && st == DUET_OK; i++)
                st = encode_word(e, s + pos + pieces[i].off, pieces[i].len);
            free(pieces);
            if (st != DUET_OK)
                return st;
            pos += run;
        }
        if (pos < len) {
            duet_status_t st = encode_word(e, s + pos, 1);
            if (st != DUET_OK)
                return st;
            pos++;
        }
    }
    return DUET_OK;
}

/* The leftmost special token in s[from..len), longest where several start at the same byte.
 * Control tokens count only when parse_special; user-defined ones are plain added words and
 * are always split out (as Hugging Face's tokenizers does). */
static int32_t find_special(const duet_tokenizer_t *tok, const char *s, size_t len, size_t from,
                            int parse_special, size_t *at_p)
{
    for (size_t i = from; i < len; i++) {
        unsigned char b = (unsigned char)s[i];
        for (int j = tok->special_start[b]; j < tok->special_start[b + 1]; j++) {
            int32_t id = tok->specials[j];
            if (!parse_special && (tok->attr[id] & ATTR_TYPE_MASK) != TT_USER)
                continue;
            size_t n = tok->text_len[id];
            if (n <= len - i && memcmp(s + i, tok->text[id], n) == 0) {
                *at_p = i;
                return id;
            }
        }
    }
    return -1;
}

duet_status_t duet_tokenizer_encode(const duet_tokenizer_t *tok, const char *text, size_t len,
                                    int add_bos, int parse_special,
                                    int32_t *tokens, int max, int *n_p)
{
    if (max < 0 || (max > 0 && !tokens) || (len > 0 && !text))
        return DUET_ERR_INVALID;
    encoder_t e = { .tok = tok, .out = tokens, .max = max };
    duet_status_t st = DUET_OK;
    if (add_bos && tok->add_bos && tok->bos >= 0)
        st = emit(&e, tok->bos);
    size_t pos = 0;
    while (st == DUET_OK && pos < len) {
        size_t at = len;
        int32_t id = tok->n_specials ? find_special(tok, text, len, pos, parse_special, &at) : -1;
        st = encode_text(&e, text + pos, at - pos);
        if (st == DUET_OK && id >= 0) {
            st = emit(&e, id);
            at += tok->text_len[id];
        }
        pos = at;
    }
    free(e.sym);
    free(e.heap);
    free(e.word);
    if (st != DUET_OK)
        return st;
    *n_p = e.n;
    return e.n > max ? DUET_ERR_EXHAUSTED : DUET_OK;
}

/* ---- decoding ---- */

void duet_detok_init(duet_detok_t *d)
{
    memset(d, 0, sizeof(*d));
}

/* Classifies the UTF-8 at s[0..len): a complete sequence (its length), a truncated one that later
 * bytes could still complete (-1), or invalid (0, with *bad_p the length of the maximal invalid
 * subpart that one U+FFFD replaces, as the Unicode standard recommends). */
static int utf8_classify(const unsigned char *s, size_t len, size_t *bad_p)
{
    int n = duet_pretok_utf8_seq_len((const char *)s, len);
    if (n > 0)
        return n;
    unsigned char c = s[0];
    int need = c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
    size_t ok = 1;   /* bytes of a valid prefix of a sequence */
    if (need) {
        unsigned char lo = 0x80, hi = 0xBF;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
        if (len > 1 && s[1] >= lo && s[1] <= hi) {
            ok = 2;
            while (ok < len && ok < (size_t)need && (s[ok] & 0xC0) == 0x80)
                ok++;
        }
        if (ok == len && ok < (size_t)need)
            return -1;
    }
    *bad_p = ok;
    return 0;
}

static const char replacement[3] = { (char)0xEF, (char)0xBF, (char)0xBD };

size_t duet_detok_push(duet_detok_t *d, const duet_tokenizer_t *tok, int32_t id, int show_special,
                       char *out)
{
    if (!valid_id(tok, id) || d->n_pending < 0 || d->n_pending > 3)
        return 0;
    int type = tok->attr[id] & ATTR_TYPE_MASK;
    const unsigned char *src = (const unsigned char *)tok->bytes[id];
    size_t src_len = tok->bytes_len[id];
    size_t w = 0;
    if (is_special_type(type)) {
        if (!show_special)
            return 0;
        /* A special token cannot complete a held-back sequence, so that sequence is lost. */
        if (d->n_pending) {
            memcpy(out, replacement, 3);
            w = 3;
            d->n_pending = 0;
        }
    }

    /* Output is capped at DUET_DETOK_MAX_PIECE: a token longer than that (none in real
     * vocabularies, which stay far below it) loses its tail rather than overrunning out. */
    unsigned char buf[8 + DUET_DETOK_MAX_PIECE];
    size_t n = (size_t)d->n_pending;
    memcpy(buf, d->pending, n);
    if (src_len > DUET_DETOK_MAX_PIECE)
        src_len = DUET_DETOK_MAX_PIECE;
    memcpy(buf + n, src, src_len);
    n += src_len;
    d->n_pending = 0;

    for (size_t i = 0; i < n;) {
        size_t bad = 1;
        int k = utf8_classify(buf + i, n - i, &bad);
        if ((k > 0 && w + (size_t)k > DUET_DETOK_MAX_PIECE) || (k == 0 && w + 3 > DUET_DETOK_MAX_PIECE))
            break;
        if (k > 0) {
            memcpy(out + w, buf + i, (size_t)k);
            w += (size_t)k;
            i += (size_t)k;
        } else if (k < 0) {
            memcpy(d->pending, buf + i, n - i);   /* at most 3 bytes */
            d->n_pending = (int)(n - i);
            break;
        } else {
            memcpy(out + w, replacement, 3);
            w += 3;
            i += bad;
        }
    }
    return w;
}

size_t duet_detok_flush(duet_detok_t *d, char *out)
{
    if (d->n_pending == 0)
        return 0;
    d->n_pending = 0;
    memcpy(out, replacement, 3);
    return 3;
}
