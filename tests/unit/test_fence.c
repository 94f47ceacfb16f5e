/* tests/unit/test_fence.c — the prefill side of the quarantine proof (services/prefill/fence.c):
 * a running call is never reported idle, an idle answer is final (a late copy of the call is
 * refused), and the released set forgets only its oldest entries. */
#include <stdio.h>

#include "check.h"
#include "fence.h"

static void test_running_call_is_not_idle(void)
{
    duet_fence_t *f = duet_fence_create(8);
    CHECK(f != NULL);
    CHECK_EQ_INT(duet_fence_enter(f, "dec-1", "req-a", 0), 0);
    CHECK_EQ_INT(duet_fence_release(f, "dec-1", "req-a", 0), 0);
    /* Another attempt, another decode instance: different calls. */
    CHECK_EQ_INT(duet_fence_release(f, "dec-1", "req-a", 1), 1);
    CHECK_EQ_INT(duet_fence_release(f, "dec-2", "req-a", 0), 1);
    duet_fence_leave(f, "dec-1", "req-a", 0);
    CHECK_EQ_INT(duet_fence_release(f, "dec-1", "req-a", 0), 1);
    duet_fence_destroy(f);
}

static void test_released_call_is_refused_later(void)
{
    duet_fence_t *f = duet_fence_create(8);
    CHECK_EQ_INT(duet_fence_release(f, "dec-1", "req-b", 2), 1);   /* the call has not arrived yet */
    CHECK_EQ_INT(duet_fence_enter(f, "dec-1", "req-b", 2), -1);     /* ... and when it does, it must not run */
    CHECK_EQ_INT(duet_fence_enter(f, "dec-1", "req-b", 3), 0);
    duet_fence_leave(f, "dec-1", "req-b", 3);
    duet_fence_destroy(f);
}

static void test_ring_forgets_the_oldest(void)
{
    duet_fence_t *f = duet_fence_create(4);
    char id[32];
    for (int i = 0; i < 6; i++) {
        snprintf(id, sizeof id, "req-%d", i);
        CHECK_EQ_INT(duet_fence_release(f, "dec", id, 0), 1);
    }
    CHECK_EQ_INT(duet_fence_enter(f, "dec", "req-0", 0), 0);   /* forgotten */
    CHECK_EQ_INT(duet_fence_enter(f, "dec", "req-1", 0), 0);
    for (int i = 2; i < 6; i++) {
        snprintf(id, sizeof id, "req-%d", i);
        CHECK_EQ_INT(duet_fence_enter(f, "dec", id, 0), -1);
    }
    /* Many calls at once: the running set grows. */
    for (int i = 0; i < 300; i++) {
        snprintf(id, sizeof id, "many-%d", i);
        CHECK_EQ_INT(duet_fence_enter(f, "dec", id, 0), 0);
    }
    CHECK_EQ_INT(duet_fence_release(f, "dec", "many-299", 0), 0);
    duet_fence_destroy(f);
}

int main(void)
{
    RUN_TEST(test_running_call_is_not_idle);
    RUN_TEST(test_released_call_is_refused_later);
    RUN_TEST(test_ring_forgets_the_oldest);
    return check_report();
}
