/* lib/engine/engine.h — the in-process engine: a model, its paged KV cache, a forward pass and a
 * sampler, running many requests together with iteration-level batching (each step mixes prompt
 * chunks of new requests with one decode token of every running one). */
#ifndef DUET_ENGINE_ENGINE_H
#define DUET_ENGINE_ENGINE_H

#include <stdint.h>

#include "../base/status.h"
#include "forward.h"
#include "kvcache.h"
#include "model.h"
#include "sampler.h"

typedef struct {
    int n_ctx;             /* longest sequence (prompt + output) accepted; 0: the model's */
    int n_blocks;          /* KV pool size in 16-token blocks; 0: enough for max_seqs full contexts */
    int max_batch_tokens;  /* new tokens per step (prompt chunks are cut to fit); 0: 512 */
    int max_seqs;          /* sequences per step; 0: 64 */
} duet_engine_conf_t;

typedef struct duet_engine duet_engine_t;

duet_status_t duet_engine_create(duet_model_t *model, const duet_engine_conf_t *conf,
                                 duet_engine_t **engine_p);
void          duet_engine_destroy(duet_engine_t *engine);
duet_kv_cache_t *duet_engine_cache(duet_engine_t *engine);
int           duet_engine_n_ctx(const duet_engine_t *engine);

typedef enum {
    DUET_FINISH_NONE = 0,
    DUET_FINISH_LENGTH,     /* max_tokens reached */
    DUET_FINISH_STOP,       /* an end-of-generation token */
    DUET_FINISH_CANCELLED,  /* the token callback asked to stop */
    DUET_FINISH_ERROR,
} duet_finish_t;

const char *duet_finish_str(duet_finish_t finish);

typedef struct {
    const int32_t *prompt;
    int n_prompt;            /* >= 1 */
    int max_tokens;          /* >= 1 */
    int ignore_eos;          /* keep going past end-of-generation tokens */
    duet_sampling_t sampling;
} duet_gen_request_t;

typedef struct {
    duet_finish_t finish;
    duet_status_t status;    /* why, when finish is ERROR */
    int n_generated;
    int64_t first_token_ns;  /* from the start of the call */
    int64_t done_ns;
} duet_gen_result_t;

/* Called for every generated token (the end token included) in order; returning non-zero cancels
 * that request. */
typedef int (*duet_gen_token_fn)(void *user, int request, int32_t token);

/* Runs the requests to completion together. Request errors (a prompt past the context, no KV
 * blocks) end that request with finish ERROR and a status; the call itself fails only for
 * arguments it cannot run at all. Blocks are returned to the pool when each request ends. */
duet_status_t duet_engine_generate(duet_engine_t *engine, const duet_gen_request_t *reqs, int n,
                                   duet_gen_token_fn on_token, void *user,
                                   duet_gen_result_t *results);

#endif
