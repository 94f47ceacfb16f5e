/* tests/reference/test_reference_tokens.c — the tokenizer against ids from Hugging Face's
 * tokenizers on the real model: every fixture line must encode to the same ids and decode back.
 * usage: test_reference_tokens MODEL.gguf tokens.txt */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "gguf.h"
#include "tokenizer.h"

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Parses "<hex>\t<ids>" into bytes and ids; returns -1 on a malformed line. */
static int parse_line(const char *line, char *bytes, size_t *n_bytes, int32_t *ids, int max_ids,
                      int *n_ids)
{
    const char *tab = strchr(line, '\t');
    if (!tab || (tab - line) % 2)
        return -1;
    size_t n = 0;
    for (const char *p = line; p < tab; p += 2) {
        int hi = hexval(p[0]), lo = hexval(p[1]);
        if (hi < 0 || lo < 0)
            return -1;
        bytes[n++] = (char)(hi * 16 + lo);
    }
    *n_bytes = n;
    int k = 0;
    const char *p = tab + 1;
    for (;;) {
        while (*p == ' ')
            p++;
        if (*p == 0 || *p == '\n' || *p == '\r')
            break;
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || k == max_ids)
            return -1;
        ids[k++] = (int32_t)v;
        p = end;
    }
    *n_ids = k;
    return 0;
}

static void print_ids(const char *label, const int32_t *ids, int n)
{
    fprintf(stderr, "  %s:", label);
    for (int i = 0; i < n; i++)
        fprintf(stderr, " %d", ids[i]);
    fputc('\n', stderr);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL.gguf tokens.txt\n", argv[0]);
        return 2;
    }
    char err[256];
    duet_gguf_t *gguf;
    duet_tokenizer_t *tok;
    if (duet_gguf_open(argv[1], &gguf, err, sizeof(err)) != DUET_OK) {
        fprintf(stderr, "%s: %s\n", argv[1], err);
        return 1;
    }
    if (duet_tokenizer_create(gguf, &tok, err, sizeof(err)) != DUET_OK) {
        fprintf(stderr, "%s: %s\n", argv[1], err);
        duet_gguf_close(gguf);
        return 1;
    }
    FILE *f = fopen(argv[2], "r");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", argv[2]);
        duet_tokenizer_destroy(tok);
        duet_gguf_close(gguf);
        return 1;
    }

    enum { MAX_LINE = 1 << 20, MAX_IDS = 1 << 18 };
    char *line = malloc(MAX_LINE), *bytes = malloc(MAX_LINE / 2 + 1);
    char *decoded = malloc((size_t)MAX_IDS * DUET_DETOK_MAX_PIECE / 64 + 2 * DUET_DETOK_MAX_PIECE);
    size_t decoded_cap = (size_t)MAX_IDS * DUET_DETOK_MAX_PIECE / 64;
    int32_t *want = malloc(MAX_IDS * sizeof(int32_t)), *got = malloc(MAX_IDS * sizeof(int32_t));
    int lineno = 0, n_cases = 0;
    while (line && bytes && decoded && want && got && fgets(line, MAX_LINE, f)) {
        lineno++;
        if (line[0] == '#' || line[0] == '\n')
            continue;
        size_t n_bytes;
        int n_want, n_got;
        if (parse_line(line, bytes, &n_bytes, want, MAX_IDS, &n_want) != 0) {
            CHECK_MSG(0, "%s:%d: malformed line", argv[2], lineno);
            continue;
        }
        n_cases++;
        duet_status_t st = duet_tokenizer_encode(tok, bytes, n_bytes, 1, 1, got, MAX_IDS, &n_got);
        CHECK_MSG(st == DUET_OK, "%s:%d: encode failed: %s", argv[2], lineno, duet_status_str(st));
        if (st != DUET_OK)
            continue;
        int same = n_got == n_want && memcmp(got, want, (size_t)n_got * sizeof(int32_t)) == 0;
        CHECK_MSG(same, "%s:%d: ids differ for \"%.*s\"", argv[2], lineno, (int)n_bytes, bytes);
        if (!same) {
            print_ids("want", want, n_want);
            print_ids("got ", got, n_got);
        }

        /* Decoding the reference ids piece by piece must give back the input bytes. */
        duet_detok_t d;
        duet_detok_init(&d);
        size_t n_dec = 0;
        for (int i = 0; i < n_want && n_dec < decoded_cap; i++)
            n_dec += duet_detok_push(&d, tok, want[i], 1, decoded + n_dec);
        n_dec += duet_detok_flush(&d, decoded + n_dec);
        CHECK_MSG(n_dec == n_bytes && memcmp(decoded, bytes, n_bytes) == 0,
                  "%s:%d: decoding gives \"%.*s\", not the input", argv[2], lineno, (int)n_dec, decoded);
    }
    CHECK_MSG(n_cases > 0, "%s: no test lines", argv[2]);
    fprintf(stderr, "%d fixture strings\n", n_cases);
    free(got);
    free(want);
    free(decoded);
    free(bytes);
    free(line);
    fclose(f);
    duet_tokenizer_destroy(tok);
    duet_gguf_close(gguf);
    return check_report();
}
