/* lib/engine/sampler.c — filtering and drawing. Candidates whose probability is below e^-25 of
 * the best are dropped before sorting: they cannot survive any filter at a sane temperature, and
 * sorting 50k logits per token would cost more than the draw itself. */
#include "sampler.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct duet_sampler {
    int n_vocab;
    int32_t *ids;     /* [n_vocab] candidate ids */
    float *vals;      /* [n_vocab] candidate logits, then probabilities */
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
    sp->ids = malloc((size_t)n_vocab * sizeof *sp->ids);
    sp->vals = malloc((size_t)n_vocab * sizeof *sp->vals);
    if (!sp->ids || !sp->vals) {
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
    free(sp->ids);
    free(sp->vals);
    free(sp);
}

static uint64_t splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

double duet_sampler_uniform(uint64_t seed, uint64_t n)
{
    uint64_t r = splitmix64(splitmix64(seed) ^ n);
    return (double)(r >> 11) * (1.0 / 9007199254740992.0);  /* 53 random bits */
}

static void apply_penalty(const duet_sampling_t *s, float *logits, int n_vocab,
                          const int32_t *history, int n_history)
{
    if (s->repeat_penalty == 1.0f || s->repeat_last_n == 0 || n_history == 0)
        return;
    int from = n_history > s->repeat_last_n ? n_history - s->repeat_last_n : 0;
    /* A token repeated in the window is penalized once: mark it by making the pass idempotent. */
    for (int i = from; i < n_history; i++) {
        int32_t t = history[i];
        if (t < 0 || t >= n_vocab)
            continue;
        int seen = 0;
        for (int j = from; j < i && !seen; j++)
            seen = history[j] == t;
        if (seen)
            continue;
        logits[t] = logits[t] > 0 ? logits[t] / s->repeat_penalty : logits[t] * s->repeat_penalty;
    }
}

static int32_t argmax(const float *logits, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best])
            best = i;
    return best;
}

/* Sorts candidates by logit, descending, ties by id (so the order never depends on the sort). */
static void sort_candidates(int32_t *ids, float *vals, int n)
{
    /* Insertion sort on the (usually short) survivor list; a shell gap sequence keeps long lists fast. */
    static const int gaps[] = {701, 301, 132, 57, 23, 10, 4, 1};
    for (size_t g = 0; g < sizeof gaps / sizeof gaps[0]; g++) {
        int gap = gaps[g];
        for (int i = gap; i < n; i++) {
            float v = vals[i];
            int32_t id = ids[i];
            int j = i;
            while (j >= gap && (vals[j - gap] < v || (vals[j - gap] == v && ids[j - gap] > id))) {
                vals[j] = vals[j - gap];
                ids[j] = ids[j - gap];
                j -= gap;
            }
            vals[j] = v;
            ids[j] = id;
        }
    }
}

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
    int n = 0;
    for (int i = 0; i < n_vocab; i++) {
        float z = (logits[i] - max_l) * inv_t;
        if (z > -25.0f) {
            sp->ids[n] = i;
            sp->vals[n] = z;
            n++;
        }
    }
    sort_candidates(sp->ids, sp->vals, n);
    if (s->top_k > 0 && s->top_k < n)
        n = s->top_k;
    double sum = 0;
    for (int i = 0; i < n; i++) {
        sp->vals[i] = expf(sp->vals[i]);  /* vals[0] is exp(0) = 1, the best token */
        sum += sp->vals[i];
    }
    if (s->min_p > 0.0f) {
        /* p_i >= min_p * p_0 with p_0 = 1 / sum, i.e. vals[i] >= min_p. */
        int keep = 1;
        while (keep < n && sp->vals[keep] >= s->min_p)
            keep++;
        for (int i = keep; i < n; i++)
            sum -= sp->vals[i];
        n = keep;
    }
    if (s->top_p < 1.0f) {
        double acc = 0, limit = s->top_p * sum;
        int keep = 0;
        while (keep < n) {
            acc += sp->vals[keep++];
            if (acc >= limit)
                break;
        }
        sum = acc;
        n = keep;
    }
    double u = duet_sampler_uniform(s->seed, draw_index) * sum;
    double acc = 0;
    for (int i = 0; i < n; i++) {
        acc += sp->vals[i];
        if (u < acc)
            return sp->ids[i];
    }
    return sp->ids[n - 1];
}
