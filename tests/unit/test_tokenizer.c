/* tests/unit/test_tokenizer.c — the byte-level BPE tokenizer on small synthetic vocabularies
 * written with the GGUF writer: merge order, special tokens, pre-tokenizers, odd input,
 * incremental decoding, and metadata that must be refused with a clear error. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "gguf.h"
#include "pretokenizer.h"
#include "tokenizer.h"

/* The synthetic vocabulary: ids 0..255 are the byte-level characters of bytes 0..255, then the
 * merge results, then the special tokens. */
static const char *const merges[] = {
    "b c",     /* rank 0: "abc" must become a + bc, not ab + c */
    "a b",     /* rank 1 */
    "a a",     /* rank 2: "aaa" must become aa + a (leftmost first) */
    "h e", "l l", "he ll", "hell o",
    "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
    "1 2",
};
#define N_MERGES ((int)(sizeof(merges) / sizeof(merges[0])))
enum { ID_BC = 256, ID_AB, ID_AA, ID_HE, ID_LL, ID_HELL, ID_HELLO, ID_GW, ID_OR, ID_GWOR, ID_LD,
       ID_GWORLD, ID_12, ID_ENDOFTEXT, ID_IM_START, ID_IM_END, ID_A_SPECIAL, ID_A_SPECIAL_LONG,
       ID_USER, N_VOCAB };
static const char *const merged[] = { "bc", "ab", "aa", "he", "ll", "hell", "hello", "Ġw", "or",
                                      "Ġwor", "ld", "Ġworld", "12" };
static const char *const specials[] = { "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|a|>",
                                        "<|a|>b", "@user@" };

/* GPT-2's byte -> character map, written out independently of the tokenizer. */
static void byte_char(int b, char out[3])
{
    int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    int cp = b;
    if (!printable) {
        int k = 0;
        for (int x = 0; x < b; x++)
            if (!((x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174)))
                k++;
        cp = 256 + k;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

/* Ways to damage the metadata, for the hostile-file tests. */
typedef struct {
    const char *model;       /* tokenizer.ggml.model, default "gpt2" */
    const char *pre;         /* tokenizer.ggml.pre, NULL: absent */
    int omit_tokens, omit_merges;
    int types_delta;         /* token_type array length minus the vocabulary size */
    const char *extra_merge; /* appended to the merges */
    const char *bad_token;   /* replaces token 'z' */
    int32_t bad_type;        /* when nonzero, the type of token 'z' */
    uint32_t eos;            /* default ID_IM_END */
    int add_bos;
} spec_t;

static char path[64];

static void write_vocab(const spec_t *spec)
{
    static char bytes[256][3];
    const char *tokens[N_VOCAB];
    int32_t types[N_VOCAB + 4];
    for (int b = 0; b < 256; b++) {
        byte_char(b, bytes[b]);
        tokens[b] = bytes[b];
        types[b] = 1;
    }
    for (int i = 0; i < N_MERGES; i++) {
        tokens[256 + i] = merged[i];
        types[256 + i] = 1;
    }
    for (int i = 0; i < (int)(sizeof(specials) / sizeof(specials[0])); i++) {
        tokens[ID_ENDOFTEXT + i] = specials[i];
        types[ID_ENDOFTEXT + i] = ID_ENDOFTEXT + i == ID_USER ? 4 : 3;
    }
    types[N_VOCAB] = types[N_VOCAB + 1] = 1;
    if (spec->bad_token)
        tokens['z'] = spec->bad_token;
    if (spec->bad_type)
        types['z'] = spec->bad_type;
    const char *m[N_MERGES + 1];
    memcpy(m, merges, sizeof(merges));
    int n_m = N_MERGES;
    if (spec->extra_merge)
        m[n_m++] = spec->extra_merge;

    duet_gguf_writer_t *w;
    CHECK(duet_gguf_writer_create(&w) == DUET_OK);
    duet_gguf_writer_add_str(w, "general.architecture", "llama");
    duet_gguf_writer_add_str(w, "tokenizer.ggml.model", spec->model ? spec->model : "gpt2");
    if (spec->pre)
        duet_gguf_writer_add_str(w, "tokenizer.ggml.pre", spec->pre);
    if (!spec->omit_tokens)
        duet_gguf_writer_add_str_array(w, "tokenizer.ggml.tokens", tokens, N_VOCAB);
    duet_gguf_writer_add_array(w, "tokenizer.ggml.token_type", DUET_GGUF_INT32, types,
                               (uint64_t)(N_VOCAB + spec->types_delta));
    if (!spec->omit_merges)
        duet_gguf_writer_add_str_array(w, "tokenizer.ggml.merges", m, (uint64_t)n_m);
    duet_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", ID_IM_START);
    duet_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", spec->eos ? spec->eos : ID_IM_END);
    duet_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", spec->add_bos);
    CHECK(duet_gguf_writer_write(w, path) == DUET_OK);
    duet_gguf_writer_destroy(w);
}

/* Builds a tokenizer from the spec; returns its status, with the tokenizer (or NULL) and the
 * message left in err. */
static duet_status_t build(const spec_t *spec, duet_gguf_t **gguf_p, duet_tokenizer_t **tok_p,
                           char *err, size_t err_len)
{
    write_vocab(spec);
    *tok_p = NULL;
    duet_status_t st = duet_gguf_open(path, gguf_p, err, err_len);
    CHECK_MSG(st == DUET_OK, "gguf_open: %s", err);
    if (st != DUET_OK)
        return st;
    st = duet_tokenizer_create(*gguf_p, tok_p, err, err_len);
    if (st != DUET_OK)
        *tok_p = NULL;
    return st;
}

static duet_tokenizer_t *tok_good;   /* the default vocabulary, "smollm" pre-tokenizer */
static duet_gguf_t *gguf_good;

static int encode(const duet_tokenizer_t *tok, const char *s, int parse_special, int32_t *ids, int max)
{
    int n = -1;
    duet_status_t st = duet_tokenizer_encode(tok, s, strlen(s), 0, parse_special, ids, max, &n);
    CHECK_MSG(st == DUET_OK, "encode \"%s\": %s", s, duet_status_str(st));
    return n;
}

static int ids_equal(const int32_t *got, int n, const int32_t *want, int n_want)
{
    if (n != n_want) {
        fprintf(stderr, "  got %d ids, want %d:", n, n_want);
        for (int i = 0; i < n; i++)
            fprintf(stderr, " %d", got[i]);
        fputc('\n', stderr);
        return 0;
    }
    return memcmp(got, want, (size_t)n * sizeof(int32_t)) == 0;
}

#define CHECK_IDS(text, parse_special, ...)                                        \
    do {                                                                          \
        const int32_t _want[] = { __VA_ARGS__ };                                  \
        int32_t _got[64];                                                         \
        int _n = encode(tok_good, text, parse_special, _got, 64);                 \
        CHECK_MSG(ids_equal(_got, _n, _want, (int)(sizeof(_want) / sizeof(_want[0]))), \
                  "ids of \"%s\"", text);                                         \
    } while (0)

static void test_merge_order(void)
{
    CHECK_IDS("abc", 1, 'a', ID_BC);              /* rank 0 "b c" beats rank 1 "a b" */
    CHECK_IDS("ab", 1, ID_AB);
    CHECK_IDS("aaa", 1, ID_AA, 'a');              /* equal ranks: leftmost first */
    CHECK_IDS("aaaa", 1, ID_AA, ID_AA);
    CHECK_IDS("hello", 1, ID_HELLO);
    CHECK_IDS("hello world", 1, ID_HELLO, ID_GWORLD);
    CHECK_IDS("hellx", 1, ID_HELL, 'x');
    /* Pre-tokenization keeps merges inside words: "o" and " w" are in different words. */
    CHECK_IDS("ho world", 1, 'h', 'o', ID_GWORLD);
    /* A run of spaces leaves its last space to lead the next word. */
    char sp[3];
    byte_char(' ', sp);
    int32_t space = duet_tokenizer_find(tok_good, sp);
    CHECK_EQ_INT(space, ' ');
    CHECK_IDS("  world", 1, space, ID_GWORLD);
    /* add_bos_token is set in this vocabulary: BOS comes first when the caller allows it. */
    int32_t ids[4];
    int n = -1;
    CHECK(duet_tokenizer_encode(tok_good, "", 0, 1, 1, ids, 4, &n) == DUET_OK);
    CHECK_EQ_INT(n, 1);
    CHECK_EQ_INT(ids[0], ID_IM_START);
    CHECK(duet_tokenizer_encode(tok_good, "ab", 2, 1, 1, ids, 4, &n) == DUET_OK);
    CHECK_EQ_INT(n, 2);
    CHECK_EQ_INT(ids[1], ID_AB);
}

static void test_special_tokens(void)
{
    CHECK_IDS("<|im_start|>hello<|im_end|>", 1, ID_IM_START, ID_HELLO, ID_IM_END);
    /* Longest special first where two start at the same byte. */
    CHECK_IDS("<|a|>bc", 1, ID_A_SPECIAL_LONG, 'c');
    CHECK_IDS("<|a|>", 1, ID_A_SPECIAL);
    /* Without parse_special the text is plain bytes; user-defined words are still split out. */
    int32_t ids[64];
    int n = encode(tok_good, "<|im_end|>x@user@", 0, ids, 64);
    CHECK_EQ_INT(n, 11 + 1);
    for (int i = 0; i < n - 1; i++)
        CHECK(ids[i] < 256);
    CHECK_EQ_INT(ids[n - 1], ID_USER);
    /* A broken special is plain text. */
    n = encode(tok_good, "<|im_end", 1, ids, 64);
    CHECK_EQ_INT(n, 8);
}

static void test_digits_pretokenizers(void)
{
    /* "smollm" isolates each digit, so "1 2" can never merge. */
    CHECK_IDS("12345", 1, '1', '2', '3', '4', '5');
    /* The GPT-2 regex keeps digits together. */
    char err[256];
    duet_gguf_t *g;
    duet_tokenizer_t *t;
    spec_t spec = { .pre = "gpt2" };
    CHECK(build(&spec, &g, &t, err, sizeof(err)) == DUET_OK);
    if (t) {
        int32_t ids[16];
        int n = encode(t, "12345", 1, ids, 16);
        const int32_t want[] = { ID_12, '3', '4', '5' };
        CHECK(ids_equal(ids, n, want, 4));
        duet_tokenizer_destroy(t);
    }
    duet_gguf_close(g);

    /* The pre-tokenizer alone, on the sets that differ. */
    duet_pretok_t *pt;
    char warn[128];
    duet_pretok_piece_t *p;
    size_t np;
    CHECK(duet_pretok_create("llama3", &pt, warn, sizeof(warn)) == DUET_OK);
    CHECK_EQ_INT(warn[0], 0);
    CHECK(duet_pretok_split(pt, "12345 I'M", 9, &p, &np) == DUET_OK);
    CHECK_EQ_INT(np, 4);   /* "123" "45" " I" "'M" */
    CHECK_EQ_INT(p[0].len, 3);
    CHECK_EQ_INT(p[3].off, 7);
    free(p);
    duet_pretok_destroy(pt);
    CHECK(duet_pretok_create("qwen2", &pt, warn, sizeof(warn)) == DUET_OK);
    CHECK(duet_pretok_split(pt, "123\n\n  x", 8, &p, &np) == DUET_OK);
    CHECK_EQ_INT(np, 6);   /* "1" "2" "3" "\n\n" " " " x" */
    free(p);
    CHECK(duet_pretok_split(pt, "\xff", 1, &p, &np) == DUET_ERR_INVALID);
    duet_pretok_destroy(pt);
    CHECK(duet_pretok_create("no-such-pre", &pt, warn, sizeof(warn)) == DUET_OK);
    CHECK_STR_CONTAINS(warn, "no-such-pre");
    CHECK(strcmp(duet_pretok_name(pt), "gpt2") == 0);
    duet_pretok_destroy(pt);
}

static void test_invalid_utf8_input(void)
{
    /* Invalid bytes are encoded one by one; the valid text around them as usual. */
    CHECK_IDS("hello\xff" "abc", 1, ID_HELLO, 0xff, 'a', ID_BC);
    CHECK_IDS("\xe2\x82", 1, 0xe2, 0x82);
    CHECK_IDS("\xc0\xaf", 1, 0xc0, 0xaf);           /* overlong '/' */
    CHECK_IDS("\xed\xa0\x80", 1, 0xed, 0xa0, 0x80);  /* a surrogate */
    /* NUL is an ordinary character inside the given length. */
    int32_t ids[8];
    int n = -1;
    CHECK(duet_tokenizer_encode(tok_good, "a\0b", 3, 0, 1, ids, 8, &n) == DUET_OK);
    const int32_t want[] = { 'a', 0, 'b' };
    CHECK(ids_equal(ids, n, want, 3));
}

static void test_exhausted(void)
{
    int32_t ids[2];
    int n = -1;
    CHECK(duet_tokenizer_encode(tok_good, "aaaaaaaa", 8, 0, 1, ids, 2, &n) == DUET_ERR_EXHAUSTED);
    CHECK_EQ_INT(n, 4);
    CHECK(duet_tokenizer_encode(tok_good, "aaaaaaaa", 8, 0, 1, NULL, 0, &n) == DUET_ERR_EXHAUSTED);
    CHECK_EQ_INT(n, 4);
    CHECK(duet_tokenizer_encode(tok_good, "ab", 2, 0, 1, ids, 1, &n) == DUET_OK);
    CHECK_EQ_INT(n, 1);
}

static void test_lookups(void)
{
    CHECK_EQ_INT(duet_tokenizer_n_vocab(tok_good), N_VOCAB);
    CHECK_EQ_INT(duet_tokenizer_bos(tok_good), ID_IM_START);
    CHECK_EQ_INT(duet_tokenizer_eos(tok_good), ID_IM_END);
    CHECK_EQ_INT(duet_tokenizer_adds_bos(tok_good), 1);
    CHECK_EQ_INT(duet_tokenizer_find(tok_good, "Ġworld"), ID_GWORLD);
    CHECK_EQ_INT(duet_tokenizer_find(tok_good, "<|im_end|>"), ID_IM_END);
    CHECK_EQ_INT(duet_tokenizer_find(tok_good, "nope"), -1);
    CHECK(strcmp(duet_tokenizer_token_text(tok_good, ID_GWORLD), "Ġworld") == 0);
    CHECK(duet_tokenizer_token_text(tok_good, N_VOCAB) == NULL);
    CHECK(duet_tokenizer_is_end(tok_good, ID_IM_END));
    CHECK(duet_tokenizer_is_end(tok_good, ID_ENDOFTEXT));   /* by its text */
    CHECK(!duet_tokenizer_is_end(tok_good, ID_IM_START));
    CHECK(!duet_tokenizer_is_end(tok_good, -1));
    CHECK(duet_tokenizer_is_special(tok_good, ID_IM_START));
    CHECK(!duet_tokenizer_is_special(tok_good, ID_USER));
    CHECK(!duet_tokenizer_is_special(tok_good, 'a'));

    char buf[32];
    CHECK_EQ_INT(duet_tokenizer_token_bytes(tok_good, ID_GWORLD, buf, sizeof(buf)), 6);
    CHECK(memcmp(buf, " world", 6) == 0);
    CHECK_EQ_INT(duet_tokenizer_token_bytes(tok_good, 0xff, buf, sizeof(buf)), 1);
    CHECK_EQ_INT((unsigned char)buf[0], 0xff);
    CHECK_EQ_INT(duet_tokenizer_token_bytes(tok_good, ID_IM_END, buf, sizeof(buf)), 10);
    CHECK(memcmp(buf, "<|im_end|>", 10) == 0);
    CHECK_EQ_INT(duet_tokenizer_token_bytes(tok_good, N_VOCAB, buf, sizeof(buf)), -1);
}

static void test_detok(void)
{
    char out[DUET_DETOK_MAX_PIECE];
    duet_detok_t d;
    duet_detok_init(&d);
    /* U+1F600 as four byte tokens: nothing comes out until the last. */
    const int32_t emoji[] = { 0xf0, 0x9f, 0x98, 0x80 };
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(duet_detok_push(&d, tok_good, emoji[i], 0, out), 0);
    CHECK_EQ_INT(duet_detok_push(&d, tok_good, emoji[3], 0, out), 4);
    CHECK(memcmp(out, "\xf0\x9f\x98\x80", 4) == 0);
    CHECK_EQ_INT(duet_detok_flush(&d, out), 0);

    /* A whole token after a partial one completes it. */
    CHECK_EQ_INT(duet_detok_push(&d, tok_good, 0xc3, 0, out), 0);
    CHECK_EQ_INT(duet_detok_push(&d, tok_good, 0xa9, 0, out), 2);   /* é */
    CHECK_EQ_INT(duet_detok_push(&d, tok_good, ID_GWORLD, 0, out), 6);

    /* An unfinished sequence at the end becomes U+FFFD. */
    CHECK_EQ_INT(duet_detok_push(&d, tok_good, 0xf0, 0, out), 0);
    CHECK_EQ_INT(duet_detok_push(&d, tok_good, 0x9f, 0, out), 0);
    CHECK_EQ_INT(duet_detok_flush(&d, out), 3);
    CHECK(memcmp(out, "\xef\xbf\xbd", 3) == 0);
    CHECK_EQ_INT(duet_detok_flush(&d, out), 0);

    /* Bytes that can never be UTF-8 are replaced at once; a broken sequence is one U+FFFD. */
    CHECK_EQ_INT(duet_detok_push(&d, tok_good, 0xff, 0, out), 3);
    CHECK_EQ_INT(duet_detok_push(&d, tok_good, 0xe2, 0, out), 0);
    CHECK_EQ_INT(duet_detok_push(&d, tok_good, 0x82, 0, out), 0);
    size_t n = duet_detok_push(&d, tok_good, 'a', 0, out);
    CHECK_EQ_INT(n, 4);
    CHECK(memcmp(out, "\xef\xbf\xbd" "a", 4) == 0);

    /* Control tokens only when asked; user-defined ones are text. */
    CHECK_EQ_INT(duet_detok_push(&d, tok_good, ID_IM_END, 0, out), 0);
    CHECK_EQ_INT(duet_detok_push(&d, tok_good, ID_IM_END, 1, out), 10);
    CHECK(memcmp(out, "<|im_end|>", 10) == 0);
    CHECK_EQ_INT(duet_detok_push(&d, tok_good, ID_USER, 0, out), 6);
    CHECK_EQ_INT(duet_detok_push(&d, tok_good, -5, 1, out), 0);
    CHECK_EQ_INT(duet_detok_push(&d, tok_good, N_VOCAB, 1, out), 0);

    /* Encode then decode round-trips valid text, special tokens included. */
    const char *text = "<|im_start|>user\nhéllo 😀 world 12<|im_end|>\n";
    int32_t ids[128];
    int k = encode(tok_good, text, 1, ids, 128);
    char dec[4096];
    size_t w = 0;
    duet_detok_init(&d);
    for (int i = 0; i < k; i++)
        w += duet_detok_push(&d, tok_good, ids[i], 1, dec + w);
    w += duet_detok_flush(&d, dec + w);
    CHECK(w == strlen(text) && memcmp(dec, text, w) == 0);
}

/* Each damaged file is refused with a status and a message naming the problem. */
static void expect_error(const spec_t *spec, duet_status_t want, const char *msg)
{
    char err[256] = "";
    duet_gguf_t *g = NULL;
    duet_tokenizer_t *t = NULL;
    duet_status_t st = build(spec, &g, &t, err, sizeof(err));
    CHECK_MSG(st == want, "want %s, got %s (%s)", duet_status_str(want), duet_status_str(st), err);
    CHECK(t == NULL);
    CHECK_STR_CONTAINS(err, msg);
    CHECK(strchr(err, '\n') == NULL);
    duet_tokenizer_destroy(t);
    duet_gguf_close(g);
}

static void test_hostile_metadata(void)
{
    expect_error(&(spec_t){ .pre = "smollm", .extra_merge = "q nosuchtoken" }, DUET_ERR_FORMAT,
                 "not in the vocabulary");
    expect_error(&(spec_t){ .pre = "smollm", .extra_merge = "q z" }, DUET_ERR_FORMAT,
                 "makes a token not in the vocabulary");
    expect_error(&(spec_t){ .pre = "smollm", .extra_merge = "qz" }, DUET_ERR_FORMAT, "merge 13");
    expect_error(&(spec_t){ .pre = "smollm", .extra_merge = "q " }, DUET_ERR_FORMAT, "merge 13");
    expect_error(&(spec_t){ .pre = "smollm", .types_delta = -1 }, DUET_ERR_FORMAT, "token_type");
    expect_error(&(spec_t){ .pre = "smollm", .types_delta = 2 }, DUET_ERR_FORMAT, "token_type");
    expect_error(&(spec_t){ .pre = "smollm", .bad_type = 9 }, DUET_ERR_FORMAT, "type 9");
    expect_error(&(spec_t){ .pre = "smollm", .omit_tokens = 1 }, DUET_ERR_FORMAT, "tokens is missing");
    expect_error(&(spec_t){ .pre = "smollm", .omit_merges = 1 }, DUET_ERR_FORMAT, "merges is missing");
    expect_error(&(spec_t){ .pre = "smollm", .bad_token = "\xff\xfe" }, DUET_ERR_FORMAT, "UTF-8");
    expect_error(&(spec_t){ .pre = "smollm", .bad_token = "\xed\xa0\x80" }, DUET_ERR_FORMAT, "UTF-8");
    expect_error(&(spec_t){ .pre = "smollm", .eos = N_VOCAB }, DUET_ERR_FORMAT, "eos_token_id");
    expect_error(&(spec_t){ .pre = "smollm", .model = "llama" }, DUET_ERR_UNSUPPORTED, "llama");

    /* An unknown pre-tokenizer works, with a warning. */
    char err[256] = "";
    duet_gguf_t *g;
    duet_tokenizer_t *t;
    CHECK(build(&(spec_t){ .pre = "martian" }, &g, &t, err, sizeof(err)) == DUET_OK);
    CHECK_STR_CONTAINS(err, "martian");
    duet_tokenizer_destroy(t);
    duet_gguf_close(g);
    /* No pre-tokenizer key at all is the GPT-2 default, silently. */
    CHECK(build(&(spec_t){ 0 }, &g, &t, err, sizeof(err)) == DUET_OK);
    CHECK_EQ_INT(err[0], 0);
    duet_tokenizer_destroy(t);
    duet_gguf_close(g);
}

/* A long text of mixed words, spaces and digits encodes quickly and as its parts do. */
static void test_long_text(void)
{
    size_t len = 100000;
    char *text = malloc(len + 1);
    const char *words[] = { "hello ", "world ", "  ", "12 ", "abc\n", "aaa ", "é ", "😀" };
    size_t n = 0;
    for (int i = 0; n < len - 8; i++) {
        const char *wd = words[(i * 7) % 8];
        memcpy(text + n, wd, strlen(wd));
        n += strlen(wd);
    }
    text[n] = 0;
    int32_t *ids = malloc((n + 1) * sizeof(int32_t));
    int k = -1;
    CHECK(duet_tokenizer_encode(tok_good, text, n, 0, 1, ids, (int)n + 1, &k) == DUET_OK);
    CHECK(k > 0 && k < (int)n);
    char *dec = malloc(n + DUET_DETOK_MAX_PIECE);
    size_t w = 0;
    duet_detok_t d;
    duet_detok_init(&d);
    for (int i = 0; i < k; i++)
        w += duet_detok_push(&d, tok_good, ids[i], 1, dec + w);
    w += duet_detok_flush(&d, dec + w);
    CHECK(w == n && memcmp(dec, text, n) == 0);
    free(dec);
    free(ids);
    free(text);
}

int main(void)
{
    snprintf(path, sizeof(path), "/tmp/duet_test_tokenizer_%d.gguf", (int)getpid());
    char err[256];
    spec_t spec = { .pre = "smollm", .add_bos = 1 };
    if (build(&spec, &gguf_good, &tok_good, err, sizeof(err)) != DUET_OK) {
        fprintf(stderr, "building the test vocabulary failed: %s\n", err);
        unlink(path);
        return 1;
    }
    RUN_TEST(test_merge_order);
    RUN_TEST(test_special_tokens);
    RUN_TEST(test_digits_pretokenizers);
    RUN_TEST(test_invalid_utf8_input);
    RUN_TEST(test_exhausted);
    RUN_TEST(test_lookups);
    RUN_TEST(test_detok);
    RUN_TEST(test_hostile_metadata);
    RUN_TEST(test_long_text);
    duet_tokenizer_destroy(tok_good);
    duet_gguf_close(gguf_good);
    unlink(path);
    return check_report();
}
