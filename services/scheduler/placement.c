/* services/scheduler/placement.c — the scheduler's placement rule: most free KV blocks among
 * the decode instances with room (ties at random), then the least-queued prefill instance. */
#include "placement.h"

#include <stdio.h>
#include <string.h>

static int excluded(const Duet__V1__RouteRequest *rq, const char *id)
{
    for (size_t i = 0; i < rq->n_exclude_instances; i++)
        if (rq->exclude_instances[i] && strcmp(rq->exclude_instances[i], id) == 0)
            return 1;
    return 0;
}

static uint32_t next_rand(uint32_t *seed)
{
    *seed = *seed * 1664525u + 1013904223u;
    return *seed >> 8;
}

duet_status_t duet_sched_place(const duet_state_inst_t *insts, int n, const Duet__V1__RouteRequest *rq,
                               uint32_t *seed, duet_sched_placement_t *out, char *msg, size_t msg_cap)
{
    uint64_t need = ((uint64_t)rq->prompt_tokens + rq->max_tokens + DUET_SCHED_BLOCK_TOKENS - 1) / DUET_SCHED_BLOCK_TOKENS;
    const duet_state_inst_t *best = NULL;
    int n_decode = 0, n_best = 0;
    int64_t most_free = -1;
    for (int i = 0; i < n; i++) {
        const duet_state_inst_t *in = &insts[i];
        if ((in->role != DUET_ROLE_DECODE && in->role != DUET_ROLE_MIXED) || excluded(rq, in->id) ||
            !in->grpc_addr[0])
            continue;
        n_decode++;
        if (in->load.kv_blocks_free > most_free)
            most_free = in->load.kv_blocks_free;
        if (in->load.kv_blocks_free < 0 || (uint64_t)in->load.kv_blocks_free < need)
            continue;
        int better = !best || in->load.kv_blocks_free > best->load.kv_blocks_free ||
                     (in->load.kv_blocks_free == best->load.kv_blocks_free &&
                      in->load.running_seqs < best->load.running_seqs);
        int tie = best && in->load.kv_blocks_free == best->load.kv_blocks_free &&
                  in->load.running_seqs == best->load.running_seqs;
        if (better) {
            best = in;
            n_best = 1;
        } else if (tie && next_rand(seed) % (uint32_t)++n_best == 0) {
            best = in;   /* reservoir sampling over the equal ones */
        }
    }
    if (n_decode == 0) {
        snprintf(msg, msg_cap, "no live decode instance");
        return DUET_ERR_UNAVAILABLE;
    }
    if (!best) {
        snprintf(msg, msg_cap, "no decode instance has %llu free KV blocks for %u prompt + %u new tokens "
                 "(most free: %lld)", (unsigned long long)need, rq->prompt_tokens, rq->max_tokens,
                 (long long)most_free);
        return DUET_ERR_EXHAUSTED;
    }
    out->decode = best;
    out->prefill = NULL;
    if (best->role == DUET_ROLE_MIXED)
        return DUET_OK;   /* a mixed instance prefills its own requests */
    int n_tied = 0;
    for (int i = 0; i < n; i++) {
        const duet_state_inst_t *in = &insts[i];
        if (in->role != DUET_ROLE_PREFILL || excluded(rq, in->id) || !in->grpc_addr[0])
            continue;
        if (!out->prefill || in->load.queued_tokens < out->prefill->load.queued_tokens) {
            out->prefill = in;
            n_tied = 1;
        } else if (in->load.queued_tokens == out->prefill->load.queued_tokens &&
                   next_rand(seed) % (uint32_t)++n_tied == 0) {
            out->prefill = in;
        }
    }
    return DUET_OK;   /* no prefill instance: the decode instance falls back to local prefill */
}
