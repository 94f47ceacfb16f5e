/* loadtest/workload.c — the requests of a load test: Poisson or trace arrivals, lengths scaled
 * and clipped to the context, and deterministic prompts of exact token counts. */
#include "workload.h"

#include <math.h>

void duet_load_rng_seed(duet_load_rng_t *rng, uint64_t seed)
{
    rng->state = seed;
}

uint64_t duet_load_rng_next(duet_load_rng_t *rng)
{
    uint64_t z = (rng->state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double duet_load_rng_uniform(duet_load_rng_t *rng)
{
    return (double)(duet_load_rng_next(rng) >> 11) * 0x1.0p-53;
}

double duet_load_rng_exp(duet_load_rng_t *rng, double rate)
{
    /* 1 - u lies in (0, 1], so the log is finite. */
    return -log(1.0 - duet_load_rng_uniform(rng)) / rate;
}

void duet_load_tokens_for_vocab(uint32_t vocab, duet_load_tokens_t *tokens)
{
    tokens->n_exclude = 0;
    if (vocab >= 4000) {
        tokens->lo = 1000;
        tokens->hi = vocab - 1000;
    } else {
        tokens->lo = vocab / 4;
        tokens->hi = vocab - vocab / 4;
        if (tokens->hi <= tokens->lo)
            tokens->hi = tokens->lo + 1;
    }
}

void duet_load_prompt_ids(const duet_load_tokens_t *tokens, uint64_t seed, uint64_t index,
                          uint32_t *ids, int n)
{
    duet_load_rng_t rng;
    /* Mix the index through one generator step so neighbouring requests are unrelated. */
    duet_load_rng_seed(&rng, seed ^ (index * 0xD1B54A32D192ED03ull));
    duet_load_rng_next(&rng);
    uint32_t span = tokens->hi - tokens->lo;
    for (int i = 0; i < n; i++) {
        uint32_t id;
        int excluded;
        do {
            id = tokens->lo + (uint32_t)(duet_load_rng_next(&rng) % span);
            excluded = 0;
            for (int e = 0; e < tokens->n_exclude; e++)
                excluded |= id == tokens->exclude[e];
        } while (excluded && span > (uint32_t)tokens->n_exclude);
        ids[i] = id;
    }
}

int duet_load_scale_lengths(int prompt, int output, double scale, int ctx,
                            int *prompt_p, int *output_p)
{
    double p = floor(prompt * scale + 0.5), o = floor(output * scale + 0.5);
    if (p < 1)
        p = 1;
    if (o < 1)
        o = 1;
    int clipped = 0;
    if (p + o > ctx) {
        /* Shrink both in proportion; the output gets the rounding remainder. */
        double np = floor(p * ctx / (p + o));
        if (np < 1)
            np = 1;
        if (np > ctx - 1)
            np = ctx - 1;
        o = ctx - np;
        p = np;
        clipped = 1;
    }
    *prompt_p = (int)p;
    *output_p = (int)o;
    return clipped;
}

void duet_load_workload_synthetic(duet_load_workload_t *wl, double rate, int prompt_min,
                                  int prompt_max, int output, int ctx, uint64_t seed)
{
    *wl = (duet_load_workload_t){.kind = DUET_LOAD_SYNTHETIC, .ctx = ctx, .rate = rate,
                                 .prompt_min = prompt_min,
                                 .prompt_max = prompt_max > prompt_min ? prompt_max : prompt_min,
                                 .output = output};
    duet_load_rng_seed(&wl->rng, seed);
}

void duet_load_workload_trace(duet_load_workload_t *wl, const duet_load_trace_t *trace,
                              double time_scale, double length_scale, int ctx)
{
    *wl = (duet_load_workload_t){.kind = DUET_LOAD_TRACE, .ctx = ctx, .trace = trace,
                                 .time_scale = time_scale, .length_scale = length_scale};
}

int duet_load_workload_next(duet_load_workload_t *wl, duet_load_spec_t *spec)
{
    int p, o;
    if (wl->kind == DUET_LOAD_TRACE) {
        if (wl->next >= wl->trace->n)
            return 0;
        const duet_load_trace_row_t *row = &wl->trace->rows[wl->next++];
        spec->arrival_s = row->t_s * wl->time_scale;
        wl->clipped += (size_t)duet_load_scale_lengths(row->context_tokens, row->generated_tokens,
                                                       wl->length_scale, wl->ctx, &p, &o);
    } else {
        if (wl->rate > 0)
            wl->t += duet_load_rng_exp(&wl->rng, wl->rate);
        spec->arrival_s = wl->rate > 0 ? wl->t : 0;
        int prompt = wl->prompt_min;
        if (wl->prompt_max > wl->prompt_min)
            prompt += (int)(duet_load_rng_next(&wl->rng) %
                            (uint64_t)(wl->prompt_max - wl->prompt_min + 1));
        wl->clipped += (size_t)duet_load_scale_lengths(prompt, wl->output, 1.0, wl->ctx, &p, &o);
    }
    spec->prompt_tokens = p;
    spec->output_tokens = o;
    return 1;
}
