/* tests/unit/test_sampler.c — greedy, the filters, the repetition penalty, and seeds: the same
 * seed gives the same draws, and draws follow the filtered distribution. */
#include "check.h"
#include "sampler.h"

#define V 10

static void fill(float *l)
{
    /* Logits 9, 8, ..., 0 for tokens 0..9: token 0 is the most likely. */
    for (int i = 0; i < V; i++)
        l[i] = (float)(V - 1 - i);
}

static void test_greedy_takes_argmax_lowest_id_on_ties(void)
{
    duet_sampler_t *sp;
    CHECK_EQ_INT(duet_sampler_create(V, &sp), DUET_OK);
    duet_sampling_t s;
    duet_sampling_defaults(&s);
    float l[V] = {1, 5, 3, 5, 0, 0, 0, 0, 0, 0};
    CHECK_EQ_INT(duet_sampler_sample(sp, &s, l, NULL, 0, 0), 1);
    duet_sampler_destroy(sp);
}

static void test_same_seed_same_tokens(void)
{
    duet_sampler_t *sp;
    duet_sampler_create(V, &sp);
    duet_sampling_t s;
    duet_sampling_defaults(&s);
    s.temperature = 1.5f;
    s.seed = 42;
    int32_t a[64], b[64];
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < 64; i++) {
            float l[V];
            fill(l);
            (pass ? b : a)[i] = duet_sampler_sample(sp, &s, l, NULL, 0, (uint64_t)i);
        }
    CHECK(memcmp(a, b, sizeof a) == 0);
    s.seed = 43;
    int differ = 0;
    for (int i = 0; i < 64; i++) {
        float l[V];
        fill(l);
        differ |= duet_sampler_sample(sp, &s, l, NULL, 0, (uint64_t)i) != a[i];
    }
    CHECK(differ);
    duet_sampler_destroy(sp);
}

static void test_top_k_top_p_min_p_restrict_the_draw(void)
{
    duet_sampler_t *sp;
    duet_sampler_create(V, &sp);
    duet_sampling_t s;
    duet_sampling_defaults(&s);
    s.temperature = 5.0f;  /* nearly flat, so only the filters keep the tail out */
    s.top_k = 3;
    for (int i = 0; i < 2000; i++) {
        float l[V];
        fill(l);
        CHECK(duet_sampler_sample(sp, &s, l, NULL, 0, (uint64_t)i) < 3);
    }
    duet_sampling_defaults(&s);
    s.temperature = 1.0f;
    s.top_p = 0.7f;  /* p(0) = 0.632, p(0) + p(1) = 0.865: tokens 0 and 1 only */
    int seen[V] = {0};
    for (int i = 0; i < 4000; i++) {
        float l[V];
        fill(l);
        seen[duet_sampler_sample(sp, &s, l, NULL, 0, (uint64_t)i)]++;
    }
    CHECK(seen[0] > 0 && seen[1] > 0);
    for (int t = 2; t < V; t++)
        CHECK_EQ_INT(seen[t], 0);
    /* Relative frequency of token 0 among {0, 1}: e/(e+1) = 0.731. */
    double f0 = (double)seen[0] / (seen[0] + seen[1]);
    CHECK_MSG(f0 > 0.70 && f0 < 0.76, "frequency of token 0 is %.3f", f0);
    duet_sampling_defaults(&s);
    s.temperature = 1.0f;
    s.min_p = 0.3f;  /* p(1)/p(0) = 0.37 stays, p(2)/p(0) = 0.135 goes */
    for (int i = 0; i < 2000; i++) {
        float l[V];
        fill(l);
        CHECK(duet_sampler_sample(sp, &s, l, NULL, 0, (uint64_t)i) < 2);
    }
    duet_sampler_destroy(sp);
}

static void test_repetition_penalty(void)
{
    duet_sampler_t *sp;
    duet_sampler_create(V, &sp);
    duet_sampling_t s;
    duet_sampling_defaults(&s);
    s.repeat_penalty = 2.0f;
    float l[V];
    fill(l);
    int32_t hist[] = {0, 0, 0};
    /* 9 / 2 = 4.5 < 8: token 1 wins, and token 0 was penalized once, not three times. */
    CHECK_EQ_INT(duet_sampler_sample(sp, &s, l, hist, 3, 0), 1);
    CHECK(fabsf(l[0] - 4.5f) < 1e-6f);
    duet_sampler_destroy(sp);
}

static void test_validation_names_the_field(void)
{
    duet_sampling_t s;
    char err[128];
    duet_sampling_defaults(&s);
    CHECK_EQ_INT(duet_sampling_validate(&s, err, sizeof err), DUET_OK);
    s.temperature = -1;
    CHECK_EQ_INT(duet_sampling_validate(&s, err, sizeof err), DUET_ERR_INVALID);
    CHECK_STR_CONTAINS(err, "temperature");
    duet_sampling_defaults(&s);
    s.top_p = 0;
    CHECK_EQ_INT(duet_sampling_validate(&s, err, sizeof err), DUET_ERR_INVALID);
    CHECK_STR_CONTAINS(err, "top_p");
    s.top_p = 1.5f;
    CHECK_EQ_INT(duet_sampling_validate(&s, err, sizeof err), DUET_ERR_INVALID);
    duet_sampling_defaults(&s);
    s.top_k = -2;
    CHECK_EQ_INT(duet_sampling_validate(&s, err, sizeof err), DUET_ERR_INVALID);
    CHECK_STR_CONTAINS(err, "top_k");
}

int main(void)
{
    RUN_TEST(test_greedy_takes_argmax_lowest_id_on_ties);
    RUN_TEST(test_same_seed_same_tokens);
    RUN_TEST(test_top_k_top_p_min_p_restrict_the_draw);
    RUN_TEST(test_repetition_penalty);
    RUN_TEST(test_validation_names_the_field);
    return check_report();
}
