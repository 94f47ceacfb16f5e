/* lib/kvx/kvx.h — KV-cache transfer between a prefill instance and a decode instance over UCX:
 * the decode side owns a UCX-allocated, registered pool; the prefill side puts KV slices into it. */
#ifndef DUET_KVX_KVX_H
#define DUET_KVX_KVX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../../kernels/backend.h"
#include "../base/status.h"

/* How endpoints react to a dead peer. UCX 1.13 disables every shared-memory transport on an
 * endpoint created with PEER, so one host uses NONE (liveness then comes from Redis heartbeats)
 * and only cross-host deployments, which run over TCP or RDMA anyway, use PEER. */
typedef enum {
    /* Shared memory allowed. A dead peer over TCP fails puts and flushes (or they time out);
     * over shared memory it is not seen at all: puts land in its still-mapped segment and the
     * flush succeeds, so liveness must come from elsewhere (Redis heartbeats). */
    DUET_KVX_ERR_NONE = 0,
    /* UCX tracks the peer and fails outstanding puts and the flush promptly; TCP/RDMA only. */
    DUET_KVX_ERR_PEER = 1,
} duet_kvx_err_mode_t;

typedef struct {
    duet_kvx_err_mode_t err_mode; /* for endpoints this kvx creates */
    const char *name;             /* shows up in UCX's own logs; NULL: "duet" */
} duet_kvx_conf_t;

/* One UCP context and one worker.
 * Threads: UCS_THREAD_MODE_SINGLE. A kvx and every pool and peer made from it belong to one
 * thread (the instance's event-loop thread); a second thread wanting transfers makes its own kvx. */
typedef struct duet_kvx duet_kvx_t;
/* Memory registered with a kvx: either allocated by UCX (decode's pool, one-sided puts land there
 * at shared-memory speed) or caller memory registered in place (a prefill pool that is malloc'd). */
typedef struct duet_kvx_pool duet_kvx_pool_t;
/* An endpoint to one remote pool. */
typedef struct duet_kvx_peer duet_kvx_peer_t;

/* What a decode instance publishes so prefill instances can write into its pool.
 * The byte buffers belong to whoever filled the struct. */
typedef struct {
    const void *worker_addr; /* duet_kvx_worker_address() of the decode instance */
    size_t worker_addr_len;
    const void *rkey;        /* duet_kvx_pool_rkey() of its pool */
    size_t rkey_len;
    uint64_t base;           /* duet_kvx_pool_base() of its pool, as a remote address */
    size_t size;             /* duet_kvx_pool_size(): puts beyond it are refused locally */
} duet_kvx_remote_t;

typedef struct {
    uint64_t puts;            /* ucp_put_nbx calls posted */
    uint64_t bytes_posted;    /* bytes in those puts */
    uint64_t bytes_completed; /* bytes proven visible at the remote by a successful flush */
    uint64_t flushes_failed;  /* flushes that returned an error or timed out */
} duet_kvx_peer_stats_t;

duet_status_t duet_kvx_create(const duet_kvx_conf_t *conf, duet_kvx_t **kvx_p);
/* Every pool and peer of this kvx must be destroyed first. */
void duet_kvx_destroy(duet_kvx_t *kvx);

/* This worker's address, to publish; the bytes stay owned by kvx and valid until its destroy. */
void duet_kvx_worker_address(const duet_kvx_t *kvx, const void **bytes_p, size_t *len_p);

/* Moves UCX's work along once; returns how many events it handled (0: nothing to do). */
unsigned duet_kvx_progress(duet_kvx_t *kvx);
/* A file descriptor that becomes readable when the worker has work; put it in the event loop.
 * A receiver must progress: TCP and emulated puts only move while the target worker does. */
int duet_kvx_event_fd(const duet_kvx_t *kvx);
/* Arms the event fd before sleeping on it. *armed_p = true: safe to sleep until the fd fires;
 * false: events are pending, so progress (until it returns 0) and arm again.
 * The loop is: progress until 0 → arm → if armed, wait on the fd → repeat. */
duet_status_t duet_kvx_arm(duet_kvx_t *kvx, bool *armed_p);

/* Decode side: allocates `bytes` of memory with ucp_mem_map(UCP_MEM_MAP_ALLOCATE) — in UCX 1.13
 * the only memory that takes true one-sided puts over shared memory — zeroes and so pre-touches
 * every page (the first transfer into fresh pages is otherwise slow), and packs its rkey once.
 * The memory is zero on return; pass duet_kvx_pool_base() as kvcache's external_base. */
duet_status_t duet_kvx_pool_create(duet_kvx_t *kvx, size_t bytes, duet_kvx_pool_t **pool_p);
/* Prefill side: registers existing memory in place (a malloc'd KV pool) once, so puts from it
 * skip per-call registration. The memory stays the caller's and must outlive the pool. */
duet_status_t duet_kvx_pool_register(duet_kvx_t *kvx, void *base, size_t bytes,
                                     duet_kvx_pool_t **pool_p);
/* Whether this UCX moves CUDA device memory itself (built with CUDA support, so cuda_copy /
 * cuda_ipc / gdr_copy transports exist): asked at run time, since the same binary may meet
 * either the distribution's libucx (host memory only) or one built with CUDA. */
bool duet_kvx_cuda_memory(const duet_kvx_t *kvx);
/* Either side, with duet_kvx_cuda_memory(): registers a KV pool in CUDA device memory in place,
 * so puts go from one GPU's pool straight into another's. DUET_ERR_UNSUPPORTED without it. */
duet_status_t duet_kvx_pool_register_cuda(duet_kvx_t *kvx, void *base, size_t bytes,
                                          duet_kvx_pool_t **pool_p);
/* Unmaps (and for pool_create, frees) the memory. No peer may still be writing into it. */
void duet_kvx_pool_destroy(duet_kvx_pool_t *pool);
void *duet_kvx_pool_base(const duet_kvx_pool_t *pool);
size_t duet_kvx_pool_size(const duet_kvx_pool_t *pool);
/* The packed rkey to publish; owned by the pool. */
void duet_kvx_pool_rkey(const duet_kvx_pool_t *pool, const void **bytes_p, size_t *len_p);
/* Fills everything a prefill instance needs to reach this pool (pointers borrowed from both). */
void duet_kvx_pool_remote(const duet_kvx_t *kvx, const duet_kvx_pool_t *pool,
                          duet_kvx_remote_t *remote_p);

/* Prefill side: an endpoint to a remote pool. The remote's bytes are copied; `remote` may go. */
duet_status_t duet_kvx_peer_connect(duet_kvx_t *kvx, const duet_kvx_remote_t *remote,
                                    duet_kvx_peer_t **peer_p);
/* Closes the endpoint: flushes it when healthy (up to timeout_ms), otherwise forces it closed
 * (err mode PEER) or abandons it to the worker's teardown (err mode NONE). */
void duet_kvx_peer_destroy(duet_kvx_peer_t *peer, int timeout_ms);

/* Posts one put of local [ptr, ptr + len) to remote base + remote_offset. Returns once posted,
 * not delivered: the source must stay unchanged until duet_kvx_flush() returns DUET_OK.
 * Local memory may be anything; inside a pool of this kvx it skips registration.
 * DUET_ERR_UNAVAILABLE: the peer has failed (a flush failed or timed out); destroy it. */
duet_status_t duet_kvx_put(duet_kvx_peer_t *peer, const void *ptr, size_t len,
                           uint64_t remote_offset);
/* Puts the K and V slices of `layer` of each src_blocks[i] of the local pool `src` to
 * dst_blocks[i] of the remote pool, which has the same layout (same model). The K and V slices of
 * a (block, layer) are adjacent, so it is one put per block. Posted, not delivered.
 * Block generations are the caller's: decode checks them before handing blocks out and after the
 * transfer; kvx only moves bytes. */
duet_status_t duet_kvx_put_layer(duet_kvx_peer_t *peer, const duet_kv_pool_view_t *src, int layer,
                                 const uint32_t *src_blocks, const uint32_t *dst_blocks, int n);
/* Puts whole blocks (every layer, K and V): one contiguous put per block. Posted, not delivered. */
duet_status_t duet_kvx_put_blocks(duet_kvx_peer_t *peer, const duet_kv_pool_view_t *src,
                                  const uint32_t *src_blocks, const uint32_t *dst_blocks, int n);
/* Waits until every put posted so far is visible in the remote memory (ucp_ep_flush_nbx).
 * DUET_OK only when UCX reported that completion. DUET_ERR_DEADLINE after timeout_ms,
 * DUET_ERR_UNAVAILABLE when the endpoint failed; either way the peer is failed from then on and
 * the destination blocks are in an unknown state until the peer is destroyed. */
duet_status_t duet_kvx_flush(duet_kvx_peer_t *peer, int timeout_ms);
void duet_kvx_peer_stats(const duet_kvx_peer_t *peer, duet_kvx_peer_stats_t *stats_p);

#endif
