/* tests/fuzz/fuzz_route.c — libFuzzer target for the scheduler's Route input path: bytes →
 * RouteRequest unpack → duet_sched_place (services/scheduler/placement.c) over a fuzzed set of
 * live instances.
 *
 * Input: byte 0: instance count (mod 9); then 8 bytes per instance: role (mod 5), id "i<k>" with
 * k mod 8 (so exclusions and duplicates happen), whether it has a gRPC address, kv_blocks_free as
 * int16 (negative included), running_seqs, queued_tokens as uint16; the rest is a serialized
 * RouteRequest.
 * Invariants, checked against a direct reading of the rule: UNAVAILABLE exactly when no decode or
 * mixed instance is eligible (address set, not excluded); EXHAUSTED exactly when none of those
 * has ceil((prompt + max_tokens) / 16) free blocks; otherwise the decode instance is eligible,
 * has room, has the most free blocks and, among those, the fewest running sequences; a mixed one
 * gets no prefill instance, a decode one gets an eligible prefill instance with the fewest queued
 * tokens, or none only when there is none. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "duet/v1/scheduler.pb-c.h"
#include "fuzz_check.h"
#include "placement.h"

#define MAX_INSTS 8

static int is_excluded(const Duet__V1__RouteRequest *rq, const char *id)
{
    for (size_t i = 0; i < rq->n_exclude_instances; i++)
        if (strcmp(rq->exclude_instances[i], id) == 0)
            return 1;
    return 0;
}

static int eligible(const Duet__V1__RouteRequest *rq, const duet_state_inst_t *in, int decode)
{
    int role_ok = decode ? in->role == DUET_ROLE_DECODE || in->role == DUET_ROLE_MIXED : in->role == DUET_ROLE_PREFILL;
    return role_ok && in->grpc_addr[0] && !is_excluded(rq, in->id);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int n = data[0] % (MAX_INSTS + 1);
    if (size < 1 + (size_t)n * 8)
        return 0;
    duet_state_inst_t insts[MAX_INSTS];
    memset(insts, 0, sizeof insts);
    for (int i = 0; i < n; i++) {
        const uint8_t *p = data + 1 + 8 * i;
        duet_state_inst_t *in = &insts[i];
        in->role = (duet_inst_role_t)(p[0] % 5);
        snprintf(in->id, sizeof in->id, "i%d", p[1] % 8);
        if (p[2] & 1)
            snprintf(in->grpc_addr, sizeof in->grpc_addr, "127.0.0.1:%d", 5000 + i);
        in->load.kv_blocks_free = (int16_t)(p[3] | p[4] << 8);
        in->load.running_seqs = p[5];
        in->load.queued_tokens = p[6] | p[7] << 8;
    }
    size_t off = 1 + (size_t)n * 8;
    Duet__V1__RouteRequest *rq = duet__v1__route_request__unpack(NULL, size - off, data + off);
    if (!rq)
        return 0;
    uint32_t seed = 12345;
    duet_sched_placement_t pl = {NULL, NULL};
    char msg[256] = "";
    duet_status_t st = duet_sched_place(insts, n, rq, &seed, &pl, msg, sizeof msg);

    uint64_t need = ((uint64_t)rq->prompt_tokens + rq->max_tokens + DUET_SCHED_BLOCK_TOKENS - 1) /
                    DUET_SCHED_BLOCK_TOKENS;
    int n_decode = 0, n_room = 0, n_prefill = 0;
    int64_t most_free = -1, fewest_running = INT64_MAX, fewest_queued = INT64_MAX;
    for (int i = 0; i < n; i++) {
        const duet_state_inst_t *in = &insts[i];
        if (eligible(rq, in, 1)) {
            n_decode++;
            if (in->load.kv_blocks_free >= 0 && (uint64_t)in->load.kv_blocks_free >= need) {
                n_room++;
                if (in->load.kv_blocks_free > most_free)
                    most_free = in->load.kv_blocks_free;
            }
        }
        if (eligible(rq, in, 0)) {
            n_prefill++;
            if (in->load.queued_tokens < fewest_queued)
                fewest_queued = in->load.queued_tokens;
        }
    }
    for (int i = 0; i < n; i++)
        if (eligible(rq, &insts[i], 1) && insts[i].load.kv_blocks_free == most_free &&
            insts[i].load.running_seqs < fewest_running)
            fewest_running = insts[i].load.running_seqs;

    if (n_decode == 0) {
        FUZZ_CHECK(st == DUET_ERR_UNAVAILABLE && msg[0], "no eligible decode instance, status %d", st);
    } else if (n_room == 0) {
        FUZZ_CHECK(st == DUET_ERR_EXHAUSTED && msg[0], "no decode instance with %llu free blocks, status %d",
                   (unsigned long long)need, st);
    } else {
        FUZZ_CHECK(st == DUET_OK, "status %d (%s) with %d instances that have room", st, msg, n_room);
        const duet_state_inst_t *d = pl.decode;
        FUZZ_CHECK(d && d >= insts && d < insts + n, "the decode instance is not one of the list");
        FUZZ_CHECK(eligible(rq, d, 1), "decode instance %s is not eligible", d->id);
        FUZZ_CHECK(d->load.kv_blocks_free == most_free, "decode instance %s has %lld free blocks, the most is %lld",
                   d->id, (long long)d->load.kv_blocks_free, (long long)most_free);
        FUZZ_CHECK(d->load.running_seqs == fewest_running, "decode instance %s runs %lld, the fewest is %lld", d->id,
                   (long long)d->load.running_seqs, (long long)fewest_running);
        if (d->role == DUET_ROLE_MIXED) {
            FUZZ_CHECK(!pl.prefill, "a mixed instance got a prefill instance");
        } else if (n_prefill == 0) {
            FUZZ_CHECK(!pl.prefill, "a prefill instance where none is eligible");
        } else {
            const duet_state_inst_t *p = pl.prefill;
            FUZZ_CHECK(p && p >= insts && p < insts + n, "no prefill instance though %d are eligible", n_prefill);
            FUZZ_CHECK(eligible(rq, p, 0), "prefill instance %s is not eligible", p->id);
            FUZZ_CHECK(p->load.queued_tokens == fewest_queued, "prefill instance %s queues %lld, the fewest is %lld",
                       p->id, (long long)p->load.queued_tokens, (long long)fewest_queued);
        }
    }
    duet__v1__route_request__free_unpacked(rq, NULL);
    return 0;
}
