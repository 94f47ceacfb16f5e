/* services/sampling_params.h — the wire's SamplingParams as the engine's duet_sampling_t, one
 * conversion for every service that receives them (zero fields mean "off"). */
#ifndef DUET_SERVICES_SAMPLING_PARAMS_H
#define DUET_SERVICES_SAMPLING_PARAMS_H

#include "duet/v1/common.pb-c.h"
#include "sampler.h"

static inline void duet_sampling_from_proto(const Duet__V1__SamplingParams *p, duet_sampling_t *s)
{
    duet_sampling_defaults(s);
    if (!p)
        return;
    s->temperature = p->temperature;
    s->top_k = p->top_k;
    s->top_p = p->top_p == 0.0f ? 1.0f : p->top_p;
    s->min_p = p->min_p;
    s->repeat_penalty = p->repetition_penalty == 0.0f ? 1.0f : p->repetition_penalty;
    s->seed = p->seed;
}

#endif
