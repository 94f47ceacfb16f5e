/* services/gateway/ratelimit.h — token buckets for the gateway's per-API-key request rate limit.
 * A bucket holds up to `burst` tokens and gains `rate` tokens a second; a request takes one.
 * When none is left the request is refused with the time until the next token. */
#ifndef DUET_SERVICES_GATEWAY_RATELIMIT_H
#define DUET_SERVICES_GATEWAY_RATELIMIT_H

#include <pthread.h>
#include <stdint.h>

#include "status.h"

typedef struct {
    double  tokens;    /* available now (as of last_ns), 0..burst */
    int64_t last_ns;   /* when tokens was last brought up to date; 0: never (starts full) */
} duet_bucket_t;

/* Takes one token at now_ns (monotonic). Returns 0 when taken; otherwise the milliseconds until
 * a token is available (at least 1), and takes nothing. rate > 0, burst >= 1. */
int64_t duet_bucket_take(duet_bucket_t *b, double rate, double burst, int64_t now_ns);

typedef struct {
    double          rate, burst;   /* rate <= 0: no limit */
    duet_bucket_t  *buckets;       /* [n]: one per API key, or one for everybody */
    int             n;
    pthread_mutex_t mu;
} duet_ratelimit_t;

/* rate requests/s (<= 0: off); burst 0 means max(1, rate). NOMEM. */
duet_status_t duet_ratelimit_init(duet_ratelimit_t *rl, double rate, double burst, int n_buckets);
/* duet_bucket_take on bucket i (out of range: the last), thread-safe; 0 when off. */
int64_t       duet_ratelimit_take(duet_ratelimit_t *rl, int i, int64_t now_ns);
void          duet_ratelimit_cleanup(duet_ratelimit_t *rl);

#endif
