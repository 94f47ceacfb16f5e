/* lib/engine/forward.h — the forward pass over a batch: any mix of sequences, each adding one or
 * many tokens (prefill, chunked prefill and decode in one step), KV kept in the paged cache. */
#ifndef DUET_ENGINE_FORWARD_H
#define DUET_ENGINE_FORWARD_H

#include <stdint.h>

#include "../base/status.h"
#include "kvcache.h"
#include "model.h"

typedef struct duet_forward duet_forward_t;

typedef struct {
    int n_seq;
    duet_kv_seq_t *const *seqs;   /* [n_seq]; seqs[s]->n_tokens = positions already in the cache */
    const int32_t *n_new;         /* [n_seq] new tokens of each sequence, each >= 1 */
    const int32_t *tokens;        /* [sum n_new] the new tokens, sequence after sequence */
} duet_batch_t;

/* Scratch for up to max_tokens new tokens and max_seqs sequences per step. The model and cache
 * are borrowed and must outlive the forward pass. */
duet_status_t duet_forward_create(const duet_model_t *model, duet_kv_cache_t *cache,
                                  int max_tokens, int max_seqs, duet_forward_t **fwd_p);
void          duet_forward_destroy(duet_forward_t *fwd);

/* Called after each layer's K/V of the step are in the pool (a prefill instance sends them to
 * the decode instance from here, so the transfer overlaps the rest of the forward pass). On a
 * backend with a queue the hook runs after a synchronize. */
typedef void (*duet_forward_layer_fn)(void *user, int layer);
void duet_forward_set_layer_hook(duet_forward_t *fwd, duet_forward_layer_fn fn, void *user);

/* Runs one step. Blocks for seqs[s]->n_tokens + n_new[s] positions must be reserved already.
 * Writes each sequence's logits after its last new token to logits[n_seq][n_vocab] (host memory),
 * or, when logits is NULL, leaves them in backend memory (duet_forward_logits). On success each seqs[s]->n_tokens grows by n_new[s]. DUET_ERR_INVALID for a batch over the
 * limits, a token id outside the vocabulary, or missing blocks. */
duet_status_t duet_forward_run(duet_forward_t *fwd, const duet_batch_t *batch, float *logits);

/* The last step's logits in backend memory, [n_seq][n_vocab]; valid until the next step. */
float *duet_forward_logits(duet_forward_t *fwd);

#endif
