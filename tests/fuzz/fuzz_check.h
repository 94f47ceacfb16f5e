/* tests/fuzz/fuzz_check.h — what the fuzz targets share: a broken invariant is a crash (so
 * libFuzzer keeps the input, and the regression replay fails), and a UTF-8 reference. */
#ifndef DUET_TESTS_FUZZ_CHECK_H
#define DUET_TESTS_FUZZ_CHECK_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Prints what broke and aborts: libFuzzer saves the input as a crash. */
#define FUZZ_CHECK(cond, ...)                                                  \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: invariant broken: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                      \
            fputc('\n', stderr);                                               \
            abort();                                                           \
        }                                                                      \
    } while (0)

/* The length of the well-formed UTF-8 sequence at s[0..n) (Unicode Table 3-7), or 0 when the
 * bytes there are not one; *sub_p is then the length of the maximal subpart (at least 1), the
 * bytes one U+FFFD replaces. Written from the standard, independently of lib/engine. */
static inline size_t fuzz_utf8_seq(const unsigned char *s, size_t n, size_t *sub_p)
{
    unsigned char c = s[0];
    size_t need;
    unsigned char lo = 0x80, hi = 0xBF;
    *sub_p = 1;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        need = 2;
    else if (c >= 0xE0 && c <= 0xEF)
        need = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
    else if (c >= 0xF0 && c <= 0xF4)
        need = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
    else
        return 0;
    size_t k = 1;
    if (k < n && s[k] >= lo && s[k] <= hi) {
        k++;
        while (k < need && k < n && s[k] >= 0x80 && s[k] <= 0xBF)
            k++;
    }
    if (k == need)
        return need;
    *sub_p = k;
    return 0;
}

static inline int fuzz_utf8_valid(const char *s, size_t n)
{
    size_t sub;
    for (size_t i = 0; i < n;) {
        size_t k = fuzz_utf8_seq((const unsigned char *)s + i, n - i, &sub);
        if (!k)
            return 0;
        i += k;
    }
    return 1;
}

/* Writes s[0..n) with every maximal invalid subpart replaced by U+FFFD into out (room for 3n
 * bytes); returns the bytes written. */
static inline size_t fuzz_utf8_sanitize(const char *s, size_t n, char *out)
{
    size_t w = 0, sub;
    for (size_t i = 0; i < n;) {
        size_t k = fuzz_utf8_seq((const unsigned char *)s + i, n - i, &sub);
        if (k) {
            for (size_t j = 0; j < k; j++)
                out[w++] = s[i + j];
            i += k;
        } else {
            out[w++] = (char)0xEF, out[w++] = (char)0xBF, out[w++] = (char)0xBD;
            i += sub;
        }
    }
    return w;
}

#endif
