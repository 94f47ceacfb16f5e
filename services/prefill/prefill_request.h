/* services/prefill/prefill_request.h — checks a PrefillRequest against the instance's model
 * (vocabulary, context, KV layout) and turns its sampling into the engine's. Pure: no service state. */
#ifndef DUET_SERVICES_PREFILL_REQUEST_H
#define DUET_SERVICES_PREFILL_REQUEST_H

#include <stddef.h>

#include "duet/v1/prefill.pb-c.h"
#include "sampler.h"
#include "status.h"

#define DUET_PREFILL_ID_MAX 64   /* request and decode instance ids, with the NUL */

/* What a request is checked against: this instance's model and context. */
typedef struct {
    int n_ctx;                  /* a prompt has at most n_ctx - 1 tokens */
    int n_vocab;
    int n_layer, n_kv_head, head_dim;   /* the KV layout kv_target must repeat */
} duet_prefill_limits_t;

/* Checks q. On success sets *sampling_p (zero fields "off"; the seed is the request's, 0 when it
 * has none). On failure returns INVALID with the field named first in err, and sets no output. */
duet_status_t duet_prefill_request_check(const Duet__V1__PrefillRequest *q, const duet_prefill_limits_t *lim,
                                         duet_sampling_t *sampling_p, char *err, size_t cap);

#endif
