/* lib/engine/sampler.h — choosing the next token from logits: greedy, temperature, top-k, top-p,
 * min-p and repetition penalty, with a counter-based random stream so that the same seed gives the
 * same tokens on any instance and after any restart (the n-th draw depends only on seed and n). */
#ifndef DUET_ENGINE_SAMPLER_H
#define DUET_ENGINE_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

#include "../base/status.h"

typedef struct {
    float temperature;     /* <= 0: greedy (argmax, lowest id on ties) */
    int top_k;             /* keep the k most likely; <= 0: all */
    float top_p;           /* keep the smallest set with this much probability; 1: all */
    float min_p;           /* drop tokens below min_p * p(most likely); 0: none */
    float repeat_penalty;  /* divides positive (multiplies negative) logits of recent tokens; 1: off */
    int repeat_last_n;     /* how many recent tokens the penalty looks at */
    uint64_t seed;
} duet_sampling_t;

/* Greedy, penalty off. */
void duet_sampling_defaults(duet_sampling_t *s);

/* Checks ranges; on error writes the offending field's name into err. */
duet_status_t duet_sampling_validate(const duet_sampling_t *s, char *err, size_t err_len);

typedef struct duet_sampler duet_sampler_t;

duet_status_t duet_sampler_create(int n_vocab, duet_sampler_t **sampler_p);
void          duet_sampler_destroy(duet_sampler_t *sampler);

/* Picks a token from logits[n_vocab] (modified in place by the penalty). history holds the tokens
 * so far (prompt and generated), draw_index counts this request's draws (0 for its first token). */
int32_t duet_sampler_sample(duet_sampler_t *sampler, const duet_sampling_t *s, float *logits,
                            const int32_t *history, int n_history, uint64_t draw_index);

/* The uniform [0, 1) number of draw n of a seed: splitmix64 of the pair. */
double duet_sampler_uniform(uint64_t seed, uint64_t n);

#endif
