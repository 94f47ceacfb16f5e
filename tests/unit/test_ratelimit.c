/* tests/unit/test_ratelimit.c — the gateway's token bucket: a full start, the burst, refill at the
 * rate, the wait reported when empty, the cap at burst, and one bucket per key. */
#include "check.h"
#include "ratelimit.h"

#define S 1000000000ll   /* ns per second */

static void test_burst_then_refused_with_wait(void)
{
    duet_bucket_t b = {0};
    int64_t t = 5 * S;
    /* 2/s, burst 3: three at once, the fourth waits for half a second. */
    CHECK_EQ_INT(duet_bucket_take(&b, 2.0, 3.0, t), 0);
    CHECK_EQ_INT(duet_bucket_take(&b, 2.0, 3.0, t), 0);
    CHECK_EQ_INT(duet_bucket_take(&b, 2.0, 3.0, t), 0);
    CHECK_EQ_INT(duet_bucket_take(&b, 2.0, 3.0, t), 500);
    /* A refusal takes nothing: 100 ms later the wait is 400 ms. */
    CHECK_EQ_INT(duet_bucket_take(&b, 2.0, 3.0, t + S / 10), 400);
    /* At 500 ms one token is there, and then none. */
    CHECK_EQ_INT(duet_bucket_take(&b, 2.0, 3.0, t + S / 2), 0);
    CHECK_EQ_INT(duet_bucket_take(&b, 2.0, 3.0, t + S / 2), 500);
}

static void test_refill_is_capped_at_burst(void)
{
    duet_bucket_t b = {0};
    int64_t t = S;
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(duet_bucket_take(&b, 10.0, 4.0, t), 0);
    CHECK(duet_bucket_take(&b, 10.0, 4.0, t) > 0);
    /* An hour idle gives back only the burst. */
    t += 3600 * S;
    for (int i = 0; i < 4; i++)
        CHECK_EQ_INT(duet_bucket_take(&b, 10.0, 4.0, t), 0);
    CHECK_EQ_INT(duet_bucket_take(&b, 10.0, 4.0, t), 100);
}

static void test_slow_rate_wait_rounds_up(void)
{
    duet_bucket_t b = {0};
    /* 1 request every 3 s: after the one of the burst, the wait is 3000 ms, then 1 ms short of
     * a token it still says 1 ms, never 0. */
    CHECK_EQ_INT(duet_bucket_take(&b, 1.0 / 3.0, 1.0, S), 0);
    CHECK_EQ_INT(duet_bucket_take(&b, 1.0 / 3.0, 1.0, S), 3000);
    CHECK_EQ_INT(duet_bucket_take(&b, 1.0 / 3.0, 1.0, S + 3 * S - S / 1000), 1);
    CHECK_EQ_INT(duet_bucket_take(&b, 1.0 / 3.0, 1.0, S + 3 * S), 0);
}

static void test_sustained_rate(void)
{
    /* 50/s burst 1 over 10 s of requests every 5 ms: about 500 + 1 get through. */
    duet_bucket_t b = {0};
    int ok = 0;
    for (int64_t t = S; t < 11 * S; t += S / 200)
        ok += duet_bucket_take(&b, 50.0, 1.0, t) == 0;
    CHECK_MSG(ok >= 499 && ok <= 502, "%d passed", ok);
}

static void test_limiter_per_key_and_off(void)
{
    duet_ratelimit_t rl;
    CHECK_EQ_INT(duet_ratelimit_init(&rl, 1.0, 0, 2), DUET_OK);   /* burst 0: max(1, rate) = 1 */
    CHECK_EQ_INT(duet_ratelimit_take(&rl, 0, S), 0);
    CHECK_EQ_INT(duet_ratelimit_take(&rl, 0, S), 1000);
    CHECK_EQ_INT(duet_ratelimit_take(&rl, 1, S), 0);      /* another key has its own bucket */
    CHECK_EQ_INT(duet_ratelimit_take(&rl, 1, S), 1000);
    duet_ratelimit_cleanup(&rl);

    CHECK_EQ_INT(duet_ratelimit_init(&rl, 0, 0, 3), DUET_OK);     /* off */
    for (int i = 0; i < 100; i++)
        CHECK_EQ_INT(duet_ratelimit_take(&rl, 0, S), 0);
    duet_ratelimit_cleanup(&rl);
}

int main(void)
{
    RUN_TEST(test_burst_then_refused_with_wait);
    RUN_TEST(test_refill_is_capped_at_burst);
    RUN_TEST(test_slow_rate_wait_rounds_up);
    RUN_TEST(test_sustained_rate);
    RUN_TEST(test_limiter_per_key_and_off);
    return check_report();
}
