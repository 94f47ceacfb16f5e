/* tests/unit/test_threadpool.c — the fork-join pool runs every thread exactly once per run, many
 * runs in a row, and partitions ranges without gaps or overlaps. */
#include <stdatomic.h>

#include "check.h"
#include "threadpool.h"

typedef struct {
    atomic_int calls[8];
    int hits[1000];
} run_arg_t;

static void mark(void *p, int ith, int nth)
{
    run_arg_t *a = p;
    atomic_fetch_add(&a->calls[ith], 1);
    int b, e;
    duet_pool_split(1000, 7, ith, nth, &b, &e);
    for (int i = b; i < e; i++)
        a->hits[i]++;
}

static void test_every_thread_runs_once_per_run(void)
{
    for (int n = 1; n <= 4; n++) {
        duet_pool_t *pool;
        CHECK_EQ_INT(duet_pool_create(n, &pool), DUET_OK);
        CHECK_EQ_INT(duet_pool_size(pool), n);
        static run_arg_t a;
        memset(&a, 0, sizeof a);
        for (int r = 0; r < 2000; r++)
            duet_pool_run(pool, mark, &a);
        for (int t = 0; t < n; t++)
            CHECK_EQ_INT(atomic_load(&a.calls[t]), 2000);
        for (int i = 0; i < 1000; i++)
            CHECK_EQ_INT(a.hits[i], 2000);
        duet_pool_destroy(pool);
    }
}

static void test_split_covers_range(void)
{
    int lens[] = {0, 1, 5, 31, 32, 33, 1000};
    for (size_t l = 0; l < sizeof lens / sizeof lens[0]; l++) {
        for (int nth = 1; nth <= 5; nth++) {
            int next = 0;
            for (int ith = 0; ith < nth; ith++) {
                int b, e;
                duet_pool_split(lens[l], 4, ith, nth, &b, &e);
                CHECK_EQ_INT(b, next);
                CHECK(e >= b);
                CHECK(b % 4 == 0 || b == lens[l]);
                next = e;
            }
            CHECK_EQ_INT(next, lens[l]);
        }
    }
}

static void test_rejects_bad_sizes(void)
{
    duet_pool_t *pool;
    CHECK_EQ_INT(duet_pool_create(0, &pool), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_pool_create(-3, &pool), DUET_ERR_INVALID);
}

int main(void)
{
    RUN_TEST(test_every_thread_runs_once_per_run);
    RUN_TEST(test_split_covers_range);
    RUN_TEST(test_rejects_bad_sizes);
    return check_report();
}
