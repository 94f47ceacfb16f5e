/* services/gateway/text.c — the relay's text: buffer, escaping of token bytes, stop strings. */
#include "text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pretokenizer.h"

int duet_text_buf_append(duet_text_buf_t *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return -1;
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

void duet_text_buf_consume(duet_text_buf_t *b, size_t n)
{
    if (n == 0)
        return;
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
    b->p[b->len] = '\0';
}

void duet_text_buf_free(duet_text_buf_t *b)
{
    free(b->p);
    *b = (duet_text_buf_t){0};
}

char *duet_text_escape(const char *bytes, size_t n)
{
    char *out = malloc(n * 4 + 1), *o = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n;) {
        int len = duet_pretok_utf8_seq_len(bytes + i, n - i);
        if (len > 0) {
            memcpy(o, bytes + i, (size_t)len);
            o += len;
            i += (size_t)len;
        } else {
            o += sprintf(o, "\\x%02X", (unsigned char)bytes[i]);
            i++;
        }
    }
    *o = '\0';
    return out;
}

size_t duet_text_stop_scan(char *const *stops, size_t n_stops, const char *text, size_t len,
                           int *matched_p)
{
    size_t cut = len;
    *matched_p = 0;
    if (n_stops == 0 || len == 0)
        return cut;
    for (size_t k = 0; k < n_stops; k++) {
        const char *m = memmem(text, len, stops[k], strlen(stops[k]));
        if (m && (size_t)(m - text) <= cut) {
            cut = (size_t)(m - text);
            *matched_p = 1;
        }
    }
    if (*matched_p)
        return cut;
    /* No match yet: hold back from the first position whose tail is a proper prefix of a stop. */
    for (size_t i = 0; i < len; i++) {
        size_t tail = len - i;
        for (size_t k = 0; k < n_stops; k++) {
            size_t sl = strlen(stops[k]);
            if (tail < sl && memcmp(text + i, stops[k], tail) == 0)
                return i;
        }
    }
    return cut;
}
