/* loadtest/client.h — duet-load's side of the gateway: ModelInfo, and one Generate stream timed
 * token by token. Thread-safe: any number of workers share one client. */
#ifndef DUET_LOAD_CLIENT_H
#define DUET_LOAD_CLIENT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "rpc.h"
#include "stats.h"
#include "status.h"

typedef struct {
    duet_rpc_client_t *rpc;
    const char *address;   /* borrowed */
    char bearer[512];      /* "Bearer <key>", or "" */
    int64_t timeout_ms;    /* deadline of each request; 0: none */
} duet_load_client_t;

typedef struct {
    char     model_id[128];
    uint32_t vocab_size, context_length;
    uint32_t special[8];    /* BOS and EOS ids */
    int      n_special;
} duet_load_model_info_t;

/* address and api_key (NULL: none) must outlive the client. */
duet_status_t duet_load_client_init(duet_load_client_t *c, const char *address, const char *api_key,
                                    int64_t timeout_ms);
void          duet_load_client_cleanup(duet_load_client_t *c);
/* Gateway.ModelInfo, with a 5 s deadline; the gRPC message goes to err on failure. */
duet_status_t duet_load_client_model_info(duet_load_client_t *c, duet_load_model_info_t *info,
                                          char *err, size_t err_len);

/* Where a worker parks its open stream, so another thread can cancel it (Ctrl-C). */
typedef struct {
    pthread_mutex_t lock;
    duet_rpc_client_stream_t *stream;  /* set while a stream is open */
    int cancelled;                     /* sticky: a later open is cancelled at once */
} duet_load_slot_t;

void duet_load_slot_init(duet_load_slot_t *slot);
void duet_load_slot_cleanup(duet_load_slot_t *slot);
void duet_load_slot_cancel(duet_load_slot_t *slot);

/* Sends prompt ids[0..n_ids-1] asking for exactly r->output_tokens greedy tokens (ignore_eos),
 * reads the stream to its end and fills r's send/first/last times (relative to t0_ns), tokens,
 * finish reason, status, error and request id. live_tokens, when set, is bumped per token for
 * progress lines. slot may be NULL. */
void duet_load_client_generate(duet_load_client_t *c, const uint32_t *ids, int n_ids,
                               const char *request_id, int64_t t0_ns, duet_load_slot_t *slot,
                               _Atomic int64_t *live_tokens, duet_load_result_t *r);

/* "UNAVAILABLE", "RESOURCE_EXHAUSTED", ...: the gRPC name of a duet status. */
const char *duet_load_status_name(duet_status_t status);

#endif
