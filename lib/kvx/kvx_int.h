/* lib/kvx/kvx_int.h — the structures behind kvx.h, shared by context.c, pool.c and peer.c only. */
#ifndef DUET_KVX_KVX_INT_H
#define DUET_KVX_KVX_INT_H

#include <stdbool.h>
#include <stdint.h>

#include <ucp/api/ucp.h>

#include "kvx.h"

struct duet_kvx {
    duet_kvx_err_mode_t err_mode;
    ucp_context_h ctx;
    ucp_worker_h worker;
    ucp_address_t *addr; /* released at destroy */
    size_t addr_len;
    int efd;
    duet_kvx_pool_t *pools; /* registered pools, so puts can pass their memh */
    int n_peers;            /* live peers: destroy checks none is left */
};

struct duet_kvx_pool {
    duet_kvx_t *kvx;
    duet_kvx_pool_t *next; /* in kvx->pools */
    ucp_mem_h memh;
    void *base;
    size_t size;
    void *rkey;            /* packed, released with ucp_rkey_buffer_release */
    size_t rkey_len;
};

/* The registered pool holding [ptr, ptr + len), or NULL. */
duet_kvx_pool_t *duet_kvx__pool_find(const duet_kvx_t *kvx, const void *ptr, size_t len);
/* Progresses until *done is set or the deadline (monotonic ns) passes; returns *done. */
bool duet_kvx__progress_until(duet_kvx_t *kvx, const bool *done, int64_t deadline_ns);

#endif
