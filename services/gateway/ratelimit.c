/* services/gateway/ratelimit.c — token buckets (see ratelimit.h). */
#include "ratelimit.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int64_t duet_bucket_take(duet_bucket_t *b, double rate, double burst, int64_t now_ns)
{
    if (b->last_ns == 0) {
        b->tokens = burst;        /* a new bucket starts full */
        b->last_ns = now_ns;
    } else if (now_ns > b->last_ns) {
        b->tokens += (double)(now_ns - b->last_ns) * 1e-9 * rate;
        if (b->tokens > burst)
            b->tokens = burst;
        b->last_ns = now_ns;
    }
    if (b->tokens >= 1.0) {
        b->tokens -= 1.0;
        return 0;
    }
    double ms = ceil((1.0 - b->tokens) / rate * 1000.0);
    return ms < 1.0 ? 1 : (int64_t)ms;
}

duet_status_t duet_ratelimit_init(duet_ratelimit_t *rl, double rate, double burst, int n_buckets)
{
    memset(rl, 0, sizeof *rl);
    rl->rate = rate;
    rl->burst = burst > 0 ? burst : (rate > 1.0 ? rate : 1.0);
    if (rl->burst < 1.0)
        rl->burst = 1.0;
    rl->n = n_buckets > 0 ? n_buckets : 1;
    pthread_mutex_init(&rl->mu, NULL);
    if (rate > 0 && !(rl->buckets = calloc((size_t)rl->n, sizeof *rl->buckets)))
        return DUET_ERR_NOMEM;
    return DUET_OK;
}

int64_t duet_ratelimit_take(duet_ratelimit_t *rl, int i, int64_t now_ns)
{
    if (rl->rate <= 0 || !rl->buckets)
        return 0;
    if (i < 0 || i >= rl->n)
        i = rl->n - 1;
    pthread_mutex_lock(&rl->mu);
    int64_t wait = duet_bucket_take(&rl->buckets[i], rl->rate, rl->burst, now_ns);
    pthread_mutex_unlock(&rl->mu);
    return wait;
}

void duet_ratelimit_cleanup(duet_ratelimit_t *rl)
{
    if (rl->n)
        pthread_mutex_destroy(&rl->mu);
    free(rl->buckets);
    memset(rl, 0, sizeof *rl);
}
