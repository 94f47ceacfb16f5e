/* lib/engine/kvcache.h — the paged KV cache: one pool of 16-token blocks (layout in
 * kernels/backend.h), a reference-counted block allocator, and per-sequence block tables.
 * Not thread-safe: one engine loop owns a cache. */
#ifndef DUET_ENGINE_KVCACHE_H
#define DUET_ENGINE_KVCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "../base/status.h"
#include "backend.h"

typedef struct duet_kv_cache duet_kv_cache_t;

typedef struct {
    int n_layer;
    int n_kv_head;
    int head_dim;
    int n_blocks;
    /* Memory for the pool, at least duet_kv_cache_pool_bytes(); NULL: allocated from the backend.
     * Decode instances pass memory allocated and registered by UCX. Must be zeroed. */
    void *external_base;
    /* Host memory of the pool's size and layout that KV moves through when the pool itself is in
     * device memory the transfer cannot reach (a GPU pool, a UCX without CUDA); NULL: none, the
     * pool is what transfers read and write. */
    void *host_mirror;
} duet_kv_cache_conf_t;

size_t duet_kv_cache_pool_bytes(const duet_kv_cache_conf_t *conf);
/* Bytes of KV one token occupies across all layers (K and V). */
size_t duet_kv_cache_token_bytes(const duet_kv_cache_conf_t *conf);

duet_status_t duet_kv_cache_create(const duet_kv_cache_conf_t *conf, duet_backend_t *be,
                                   duet_kv_cache_t **cache_p);
void          duet_kv_cache_destroy(duet_kv_cache_t *cache);

const duet_kv_pool_view_t *duet_kv_cache_view(const duet_kv_cache_t *cache);
/* The pool as KV transfers see it: the host mirror when there is one, else the pool itself. */
const duet_kv_pool_view_t *duet_kv_cache_transfer_view(const duet_kv_cache_t *cache);

/* Makes what the backend wrote into blocks[0..n) visible to a transfer that reads the transfer
 * view: copies the blocks' K and V of one layer (or of every layer when layer < 0) to the mirror,
 * or, with no mirror, waits until a device backend has finished writing. Returns the backend's
 * status afterwards (a failed copy is a failed device). */
duet_status_t duet_kv_cache_stage_out(duet_kv_cache_t *cache, const int32_t *blocks, int n, int layer);
/* Makes what a transfer wrote into the mirror's blocks[0..n) (every layer) the pool's: copies
 * them in; nothing to do without a mirror. Returns the backend's status afterwards. */
duet_status_t duet_kv_cache_stage_in(duet_kv_cache_t *cache, const int32_t *blocks, int n);
/* A 64-bit checksum of the K and V of positions 0..n_tokens-1 held in blocks (position p in
 * blocks[p / 16]), read from the pool itself (downloaded from a device): what both ends of a
 * transfer compute to show the KV a decode step reads is the KV the prefill computed. */
duet_status_t duet_kv_cache_checksum(duet_kv_cache_t *cache, const int32_t *blocks, int n_tokens,
                                     uint64_t *sum_p);
int      duet_kv_cache_n_free(const duet_kv_cache_t *cache);
int      duet_kv_cache_n_blocks(const duet_kv_cache_t *cache);

/* Takes a free block with reference count 1 and a new generation. DUET_ERR_EXHAUSTED if none. */
duet_status_t duet_kv_block_alloc(duet_kv_cache_t *cache, int32_t *block_p);
void          duet_kv_block_ref(duet_kv_cache_t *cache, int32_t block);
/* Drops one reference; the block is free again when the count reaches 0. */
void          duet_kv_block_unref(duet_kv_cache_t *cache, int32_t block);
int           duet_kv_block_refcount(const duet_kv_cache_t *cache, int32_t block);
/* Bumped on every allocation, so a reference made before a block was reused can be told apart. */
uint32_t      duet_kv_block_generation(const duet_kv_cache_t *cache, int32_t block);

/* One sequence's blocks: position p lives in blocks[p / 16], row p % 16. */
typedef struct {
    int32_t *blocks;
    int n_blocks;
    int cap;
    int n_tokens;   /* tokens whose K/V are in the cache */
} duet_kv_seq_t;

void duet_kv_seq_init(duet_kv_seq_t *seq);
/* Makes room for n_tokens positions in total; all or nothing (DUET_ERR_EXHAUSTED leaves seq as it was). */
duet_status_t duet_kv_seq_reserve(duet_kv_cache_t *cache, duet_kv_seq_t *seq, int n_tokens);
/* Blocks needed to hold n_tokens positions. */
static inline int duet_kv_blocks_for(int n_tokens)
{
    return (n_tokens + DUET_KV_BLOCK_TOKENS - 1) / DUET_KV_BLOCK_TOKENS;
}
/* Drops the sequence's references and empties it (its table memory is kept for reuse). */
void duet_kv_seq_release(duet_kv_cache_t *cache, duet_kv_seq_t *seq);
/* release, then frees the table memory. */
void duet_kv_seq_cleanup(duet_kv_cache_t *cache, duet_kv_seq_t *seq);

#endif
