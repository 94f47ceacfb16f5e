/* tests/unit/check.h — the minimal assertion helpers every duet unit test uses: a failed check
 * prints where and why, and the test exits non-zero at the end. */
#ifndef DUET_TESTS_CHECK_H
#define DUET_TESTS_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_failures;
static int check_count;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        check_count++;                                                               \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            check_failures++;                                                        \
        }                                                                            \
    } while (0)

#define CHECK_MSG(cond, ...)                                                              \
    do {                                                                                  \
        check_count++;                                                                    \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);      \
            fprintf(stderr, __VA_ARGS__);                                                 \
            fputc('\n', stderr);                                                          \
            check_failures++;                                                             \
        }                                                                                 \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                  \
    do {                                                                                    \
        long long _a = (long long)(a), _b = (long long)(b);                                 \
        check_count++;                                                                      \
        if (_a != _b) {                                                                     \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld != %lld)\n", __FILE__,     \
                    __LINE__, #a, #b, _a, _b);                                              \
            check_failures++;                                                               \
        }                                                                                   \
    } while (0)

#define CHECK_STR_CONTAINS(haystack, needle)                                                \
    do {                                                                                    \
        const char *_h = (haystack), *_n = (needle);                                        \
        check_count++;                                                                      \
        if (!_h || !strstr(_h, _n)) {                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: \"%s\" does not contain \"%s\"\n",        \
                    __FILE__, __LINE__, _h ? _h : "(null)", _n);                            \
            check_failures++;                                                               \
        }                                                                                   \
    } while (0)

/* Runs one test function and reports it. */
#define RUN_TEST(fn)                                        \
    do {                                                    \
        int _before = check_failures;                       \
        fn();                                               \
        fprintf(stderr, "%-48s %s\n", #fn,                  \
                check_failures == _before ? "ok" : "FAILED"); \
    } while (0)

/* Ends main: prints the totals and gives the exit status. */
static inline int check_report(void)
{
    fprintf(stderr, "%d checks, %d failed\n", check_count, check_failures);
    return check_failures ? 1 : 0;
}

#endif
