/* services/decode/decode_request.h — checks a DecodeRequest against the instance's model
 * (vocabulary, context) and turns its sampling into the engine's. Pure: no service state. */
#ifndef DUET_SERVICES_DECODE_REQUEST_H
#define DUET_SERVICES_DECODE_REQUEST_H

#include <stddef.h>

#include "duet/v1/decode.pb-c.h"
#include "sampler.h"
#include "status.h"

/* Checks q for a model of n_vocab tokens and a context of n_ctx. On success sets *max_tokens_p
 * (generated tokens allowed, the resumed ones included: 1 .. n_ctx - prompt) and *sampling_p
 * (zero fields "off"; the seed is the request's, 0 when it has none). On failure returns INVALID
 * with the field named first in err, and sets no output. */
duet_status_t duet_decode_request_check(const Duet__V1__DecodeRequest *q, int n_vocab, int n_ctx,
                                        int *max_tokens_p, duet_sampling_t *sampling_p,
                                        char *err, size_t cap);

#endif
