/* loadtest/workload.h — what duet-load sends: a deterministic random generator, Poisson
 * arrivals, synthetic or trace-driven request lengths, and prompts of exact token counts. */
#ifndef DUET_LOAD_WORKLOAD_H
#define DUET_LOAD_WORKLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "trace.h"

/* One request to send. */
typedef struct {
    double arrival_s;     /* offset from the run's start (open loop); 0 in closed loop */
    int    prompt_tokens; /* >= 1 */
    int    output_tokens; /* >= 1; prompt + output <= the context limit */
} duet_load_spec_t;

/* splitmix64: tiny, fast, and the same sequence on every machine for a seed. */
typedef struct {
    uint64_t state;
} duet_load_rng_t;

void     duet_load_rng_seed(duet_load_rng_t *rng, uint64_t seed);
uint64_t duet_load_rng_next(duet_load_rng_t *rng);
/* Uniform in [0, 1). */
double   duet_load_rng_uniform(duet_load_rng_t *rng);
/* An exponential gap of mean 1/rate: the inter-arrival time of a Poisson process. */
double   duet_load_rng_exp(duet_load_rng_t *rng, double rate);

/* The ordinary token ids prompts are drawn from: [lo, hi) minus a few special ids. */
typedef struct {
    uint32_t lo, hi;
    uint32_t exclude[8];  /* BOS/EOS ids that happen to fall inside the range */
    int      n_exclude;
} duet_load_tokens_t;

/* A safe range for a vocabulary: 1000..vocab-1000 (special and byte tokens tend to sit at the
 * ends); a middle half for tiny test vocabularies. */
void duet_load_tokens_for_vocab(uint32_t vocab, duet_load_tokens_t *tokens);
/* Fills ids[0..n-1] with the prompt of request `index`: the same (seed, index) always gives the
 * same prompt, and different requests differ (no accidental prefix sharing). */
void duet_load_prompt_ids(const duet_load_tokens_t *tokens, uint64_t seed, uint64_t index,
                          uint32_t *ids, int n);

/* Scales a trace row's lengths by `scale` (rounding, at least 1 each) and clips them to fit
 * ctx: when prompt + output > ctx both shrink in proportion, keeping the prefill:decode ratio.
 * Returns 1 when clipped, 0 when not. ctx must be >= 2. */
int duet_load_scale_lengths(int prompt, int output, double scale, int ctx,
                            int *prompt_p, int *output_p);

/* A generator of specs, consumed by one thread (the dispatcher). */
typedef struct {
    int kind;                          /* DUET_LOAD_SYNTHETIC or DUET_LOAD_TRACE */
    int ctx;
    /* synthetic */
    double rate;                       /* req/s; 0: closed loop, every arrival at 0 */
    int prompt_min, prompt_max, output;
    duet_load_rng_t rng;
    double t;
    /* trace */
    const duet_load_trace_t *trace;    /* borrowed; must outlive the workload */
    size_t next;
    double time_scale, length_scale;
    size_t clipped;                    /* requests whose lengths were clipped to ctx */
} duet_load_workload_t;

enum { DUET_LOAD_SYNTHETIC, DUET_LOAD_TRACE };

/* Poisson arrivals at `rate` (0: closed loop) with prompt lengths uniform in
 * [prompt_min, prompt_max] and a fixed output length. */
void duet_load_workload_synthetic(duet_load_workload_t *wl, double rate, int prompt_min,
                                  int prompt_max, int output, int ctx, uint64_t seed);
/* The trace's rows in order: arrival gaps times time_scale, lengths times length_scale. */
void duet_load_workload_trace(duet_load_workload_t *wl, const duet_load_trace_t *trace,
                              double time_scale, double length_scale, int ctx);
/* The next spec: 1 when one was produced, 0 at the end of a trace (synthetic never ends). */
int  duet_load_workload_next(duet_load_workload_t *wl, duet_load_spec_t *spec);

#endif
