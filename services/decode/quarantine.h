/* services/decode/quarantine.h — KV blocks a failed Prefill call may still write into, held out
 * of the pool (a reference each) until that prefill instance proves it will not (Prefill.Release
 * answers idle) or the longest hold passes. The owner's thread calls everything; the Release calls
 * run on helper threads and come back through conf.post. */
#ifndef DUET_SERVICES_DECODE_QUARANTINE_H
#define DUET_SERVICES_DECODE_QUARANTINE_H

#include <stdbool.h>
#include <stdint.h>

#include "kvcache.h"
#include "rpc.h"

typedef struct duet_quarantine duet_quarantine_t;
typedef struct duet_release_job duet_release_job_t;

typedef struct {
    duet_kv_cache_t *cache;
    duet_rpc_client_t *client;
    const char *decode_id;      /* ours, named in every Release; must outlive the quarantine */
    int max_ms;                 /* blocks come back unproven after this long */
    /* From a helper thread: hand job to the owner's thread, which passes it to _answer. */
    void (*post)(void *user, duet_release_job_t *job);
    void *user;
} duet_quarantine_conf_t;

duet_quarantine_t *duet_quarantine_create(const duet_quarantine_conf_t *conf);   /* NULL: no memory */
/* Gives every block back; no Release call may be out. */
void duet_quarantine_destroy(duet_quarantine_t *q);

/* Holds blocks[0..n) of the call (request_id, attempt) to the prefill instance prefill_id at addr. */
void duet_quarantine_hold(duet_quarantine_t *q, const int32_t *blocks, int n, const char *request_id,
                          uint32_t attempt, const char *prefill_id, const char *addr);
/* Gives back the groups past the longest hold and, with may_ask, starts the Release calls that are
 * due. Returns how many calls it started (each comes back through post). */
int  duet_quarantine_tick(duet_quarantine_t *q, bool may_ask);
/* A call is back: an idle answer gives its blocks back, any other is asked again later. */
void duet_quarantine_answer(duet_quarantine_t *q, duet_release_job_t *job);
bool duet_quarantine_empty(const duet_quarantine_t *q);

#endif
