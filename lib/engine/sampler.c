/* lib/engine/sampler.c — filtering and drawing on the host, by the arithmetic of kernels/sample.h
 * (which the device sampler shares, so both pick the same token). Candidates whose probability is
 * below e^-25 of the best are dropped before sorting: they cannot survive any filter at a sane
 * temperature, and sorting 50k logits per token would cost more than the draw itself. */
#include "sampler.h"

#include "sample.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct duet_sampler {
    int n_vocab;
    uint64_t *keys;   /* [n_vocab] candidate keys (sample.h): order, id and weight in one */
};

void duet_sampling_defaults(duet_sampling_t *s)
{
    *s = (duet_sampling_t){
        .temperature = 0.0f,
        .top_k = 0,
        .top_p = 1.0f,
        .min_p = 0.0f,
        .repeat_penalty = 1.0f,
        .repeat_last_n = 64,
        .seed = 0,
    };
}

duet_status_t duet_sampling_validate(const duet_sampling_t *s, char *err, size_t err_len)
{
    const char *field = NULL;
    if (!(s->temperature >= 0.0f) || s->temperature > 100.0f)
        field = "temperature (must be in [0, 100])";
    else if (s->top_k < 0)
        field = "top_k (must be >= 0)";
    else if (!(s->top_p > 0.0f && s->top_p <= 1.0f))
        field = "top_p (must be in (0, 1])";
    else if (!(s->min_p >= 0.0f && s->min_p <= 1.0f))
        field = "min_p (must be in [0, 1])";
    else if (!(s->repeat_penalty > 0.0f) || s->repeat_penalty > 100.0f)
        field = "repeat_penalty (must be in (0, 100])";
    else if (s->repeat_last_n < 0)
        field = "repeat_last_n (must be >= 0)";
    if (field) {
        snprintf(err, err_len, "invalid %s", field);
        return DUET_ERR_INVALID;
    }
    return DUET_OK;
}

duet_status_t duet_sampler_create(int n_vocab, duet_sampler_t **sampler_p)
{
    if (n_vocab < 1)
        return DUET_ERR_INVALID;
    duet_sampler_t *sp = calloc(1, sizeof *sp);
    if (!sp)
        return DUET_ERR_NOMEM;
    sp->n_vocab = n_vocab;
    sp->keys = malloc((size_t)n_vocab * sizeof *sp->keys);
    if (!sp->keys) {
        duet_sampler_destroy(sp);
        return DUET_ERR_NOMEM;
    }
    *sampler_p = sp;
    return DUET_OK;
}

void duet_sampler_destroy(duet_sampler_t *sp)
{
    if (!sp)
        return;
    free(sp->keys);
    free(sp);
}

double duet_sampler_uniform(uint64_t seed, uint64_t n)
{
    return (double)duet_sample_bits53(seed, n) * (1.0 / 9007199254740992.0);  /* 53 random bits */
}

static void apply_penalty(const duet_sampling_t *s, float *logits, int n_vocab,
                          const int32_t *history, int n_history)
{
    if (s->repeat_penalty == 1.0f || s->repeat_last_n == 0 || n_history == 0)
        return;
    int from = n_history > s->repeat_last_n ? n_history - s->repeat_last_n : 0;
    for (int i = from; i < n_history; i++)
        if (duet_sample_penalty_first(history, from, i, n_vocab))
            logits[history[i]] = duet_sample_penalize(logits[history[i]], s->repeat_penalty);
}

static int32_t argmax(const float *logits, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best])
            best = i;
    return best;
}

/* Sorts keys descending (they are distinct: each holds its id). */
static void sort_keys(uint64_t *keys, int n)
{
    /* Shell sort: insertion sort on the (usually short) survivor list, the gaps keep long lists fast. */
    static const int gaps[] = {701, 301, 132, 57, 23, 10, 4, 1};
    for (size_t g = 0; g < sizeof gaps / sizeof gaps[0]; g++) {
        int gap = gaps[g];
        for (int i = gap; i < n; i++) {
            uint64_t k = keys[i];
            int j = i;
            while (j >= gap && keys[j - gap] < k) {
                keys[j] = keys[j - gap];
                j -= gap;
            }
            keys[j] = k;
        }
    }
}

/* The steps are those of kernels/sample.h, in its order; kernels/cuda/sample.cu finds the same
 * boundaries by search instead of sorting. */
int32_t duet_sampler_sample(duet_sampler_t *sp, const duet_sampling_t *s, float *logits,
                            const int32_t *history, int n_history, uint64_t draw_index)
{
    int n_vocab = sp->n_vocab;
    apply_penalty(s, logits, n_vocab, history, n_history);
    int32_t best = argmax(logits, n_vocab);
    if (s->temperature <= 0.0f)
        return best;

    float inv_t = 1.0f / s->temperature;
    float max_l = logits[best];
    int idb = duet_sample_id_bits(n_vocab);
    uint64_t *keys = sp->keys;
    int n = 0;
    for (int i = 0; i < n_vocab; i++) {
        float z = duet_sample_z(logits[i], max_l, inv_t);
        if (z > DUET_SAMPLE_CUTOFF)
            keys[n++] = duet_sample_key(duet_sample_exp(z), i, idb);
    }
    if (n == 0)
        return best;  /* only when the best logit is not finite */
    sort_keys(keys, n);
    if (s->top_k > 0 && s->top_k < n)
        n = s->top_k;
    /* min_p: p_i >= min_p * p_best with p_best = 1 / sum, i.e. e_i >= min_p; the best has e = 1. */
    uint64_t cut = duet_sample_min_p_cut(s->min_p, idb);
    int keep = 1;
    while (keep < n && keys[keep] >= cut)
        keep++;
    n = keep;
    uint64_t sum = 0;
    for (int i = 0; i < n; i++)
        sum += duet_sample_key_weight(keys[i], idb);
    if (s->top_p < 1.0f) {
        uint64_t limit = duet_sample_top_p_limit(s->top_p, sum), acc = 0;
        keep = 0;
        while (keep < n) {
            acc += duet_sample_key_weight(keys[keep++], idb);
            if (acc >= limit)
                break;
        }
        sum = acc;
        n = keep;
    }
    uint64_t t = duet_sample_threshold(s->seed, draw_index, sum), acc = 0;
    for (int i = 0; i < n; i++) {
        acc += duet_sample_key_weight(keys[i], idb);
        if (acc > t)
            return duet_sample_key_id(keys[i], idb);
    }
    return duet_sample_key_id(keys[n - 1], idb);  /* not reached: t < sum */
}
