/* tests/unit/test_gateway_text.c — the relay's text (services/gateway/text.c): stop strings hold
 * back exactly the text that could still become a match and cut at the earliest one; token bytes
 * that are not valid UTF-8 are escaped, valid ones kept; the buffer appends and consumes. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "text.h"

static size_t scan(const char *text, char *const *stops, size_t n, int *matched)
{
    return duet_text_stop_scan(stops, n, text, strlen(text), matched);
}

static void test_stop_scan(void)
{
    char *stops[] = {"END", "\n\nUser:"};
    int m;
    CHECK_EQ_INT(scan("hello", stops, 0, &m), 5);               /* no stop strings: all */
    CHECK_EQ_INT(m, 0);
    CHECK_EQ_INT(scan("hello wor", stops, 2, &m), 9);           /* nothing could grow into one */
    CHECK_EQ_INT(scan("hello EN", stops, 2, &m), 6);            /* "EN" may become "END" */
    CHECK_EQ_INT(m, 0);
    CHECK_EQ_INT(scan("hello\n\nUs", stops, 2, &m), 5);         /* a longer stop's prefix */
    CHECK_EQ_INT(scan("hello END and more", stops, 2, &m), 6);  /* a match cuts before it */
    CHECK_EQ_INT(m, 1);
    CHECK_EQ_INT(scan("a\n\nUser: b END", stops, 2, &m), 1);    /* the earliest of two matches */
    CHECK_EQ_INT(m, 1);
    CHECK_EQ_INT(scan("", stops, 2, &m), 0);
    CHECK_EQ_INT(m, 0);
    char *same[] = {"aa"};
    CHECK_EQ_INT(scan("baaa", same, 1, &m), 1);                 /* overlapping: first occurrence */
    CHECK_EQ_INT(m, 1);
}

static void test_escape(void)
{
    char *s = duet_text_escape("h\xC3\xA9llo", 6);              /* é kept */
    CHECK(s && strcmp(s, "h\xC3\xA9llo") == 0);
    free(s);
    s = duet_text_escape("a\xC3", 2);                           /* a cut sequence */
    CHECK(s && strcmp(s, "a\\xC3") == 0);
    free(s);
    s = duet_text_escape("\xED\xA0\x80", 3);                    /* a surrogate is not UTF-8 */
    CHECK(s && strcmp(s, "\\xED\\xA0\\x80") == 0);
    free(s);
    s = duet_text_escape("x\0y", 3);                            /* NUL is valid UTF-8: kept */
    CHECK(s && s[0] == 'x' && s[1] == '\0' && s[2] == 'y');
    free(s);
}

static void test_buffer(void)
{
    duet_text_buf_t b = {0};
    for (int i = 0; i < 100; i++)
        CHECK_EQ_INT(duet_text_buf_append(&b, "0123456789", 10), 0);
    CHECK_EQ_INT(b.len, 1000);
    duet_text_buf_consume(&b, 995);
    CHECK(b.len == 5 && strcmp(b.p, "56789") == 0);
    duet_text_buf_consume(&b, 0);
    CHECK_EQ_INT(b.len, 5);
    duet_text_buf_free(&b);
    CHECK(b.p == NULL && b.len == 0);
}

int main(void)
{
    RUN_TEST(test_stop_scan);
    RUN_TEST(test_escape);
    RUN_TEST(test_buffer);
    return check_report();
}
