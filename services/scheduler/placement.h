/* services/scheduler/placement.h — where a RouteRequest goes: the decode instance with the most
 * free KV blocks that can hold it, and the least-queued prefill instance beside it. A pure
 * function of the request and the live instances (no Redis, no service state). */
#ifndef DUET_SERVICES_SCHEDULER_PLACEMENT_H
#define DUET_SERVICES_SCHEDULER_PLACEMENT_H

#include <stddef.h>
#include <stdint.h>

#include "duet/v1/scheduler.pb-c.h"
#include "state.h"
#include "status.h"

#define DUET_SCHED_BLOCK_TOKENS 16   /* KV block size (DESIGN.md §3) */

typedef struct {
    const duet_state_inst_t *decode;        /* NULL when no placement */
    const duet_state_inst_t *prefill;       /* NULL: the decode instance prefills locally */
} duet_sched_placement_t;

/* Chooses from insts[n] (pointers into it go to *out). Exact ties are broken at random (*seed
 * is advanced) so that requests arriving between two heartbeats (same reported load) spread over
 * equal instances instead of piling onto the first. Returns UNAVAILABLE (no decode instance at
 * all) or EXHAUSTED (none with room), with the reason in msg; sets *out only on success. */
duet_status_t duet_sched_place(const duet_state_inst_t *insts, int n, const Duet__V1__RouteRequest *rq,
                               uint32_t *seed, duet_sched_placement_t *out, char *msg, size_t msg_cap);

#endif
