/* lib/kvx/pool.c — memory registered with a kvx: a UCX-allocated pool that remote puts land in,
 * or caller memory registered in place as a put source; the rkey is packed once at creation. */
#include <stdlib.h>
#include <string.h>

#include "kvx_int.h"
#include "log.h"

/* Maps (allocating when base is NULL), packs the rkey and links the pool into kvx. cuda: base is
 * CUDA device memory. */
static duet_status_t pool_map(duet_kvx_t *kvx, void *base, size_t bytes, bool cuda,
                              duet_kvx_pool_t **pool_p)
{
    duet_status_t status;
    ucs_status_t st;

    if (!kvx || bytes == 0 || !pool_p) {
        return DUET_ERR_INVALID;
    }
    duet_kvx_pool_t *pool = calloc(1, sizeof(*pool));
    if (!pool) {
        return DUET_ERR_NOMEM;
    }
    pool->kvx = kvx;

    ucp_mem_map_params_t params = {
        .field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                      UCP_MEM_MAP_PARAM_FIELD_FLAGS,
        .address = base,
        .length = bytes,
        /* ALLOCATE lets UCX pick memory that shared-memory transports can map into the writer
         * (posix shm); malloc'd memory only gets emulated puts that need this side's progress. */
        .flags = base ? 0 : UCP_MEM_MAP_ALLOCATE,
    };
    if (cuda) {
        /* Said, not detected: UCX's own detection needs its CUDA memory hooks, which a process
         * that allocated before ucp_init may have bypassed. */
        params.field_mask |= UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
        params.memory_type = UCS_MEMORY_TYPE_CUDA;
    }
    st = ucp_mem_map(kvx->ctx, &params, &pool->memh);
    if (st != UCS_OK) {
        duet_log_error("kvx: registering a %zu-byte %spool failed: %s", bytes, cuda ? "CUDA " : "",
                       ucs_status_string(st));
        status = st == UCS_ERR_NO_MEMORY ? DUET_ERR_NOMEM : DUET_ERR_UNAVAILABLE;
        goto err_free_pool;
    }
    ucp_mem_attr_t attr = {.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH};
    st = ucp_mem_query(pool->memh, &attr);
    if (st != UCS_OK) {
        duet_log_error("kvx: querying a %zu-byte pool failed: %s", bytes, ucs_status_string(st));
        status = DUET_ERR_INTERNAL;
        goto err_unmap;
    }
    pool->base = attr.address;
    pool->size = bytes; /* UCX may round the mapping up; the caller asked for bytes */
    st = ucp_rkey_pack(kvx->ctx, pool->memh, &pool->rkey, &pool->rkey_len);
    if (st != UCS_OK) {
        duet_log_error("kvx: packing the rkey of a %zu-byte pool failed: %s", bytes,
                       ucs_status_string(st));
        status = DUET_ERR_UNAVAILABLE;
        goto err_unmap;
    }
    pool->next = kvx->pools;
    kvx->pools = pool;
    *pool_p = pool;
    return DUET_OK;

err_unmap:
    ucp_mem_unmap(kvx->ctx, pool->memh);
err_free_pool:
    free(pool);
    return status;
}

duet_status_t duet_kvx_pool_create(duet_kvx_t *kvx, size_t bytes, duet_kvx_pool_t **pool_p)
{
    duet_kvx_pool_t *pool;
    duet_status_t status = pool_map(kvx, NULL, bytes, false, &pool);
    if (status != DUET_OK) {
        return status;
    }
    /* Zeroing writes every page now, so the first transfer does not pay the page faults, and
     * kvcache's external_base gets the zeroed memory it requires. */
    memset(pool->base, 0, pool->size);
    *pool_p = pool;
    return DUET_OK;
}

duet_status_t duet_kvx_pool_register(duet_kvx_t *kvx, void *base, size_t bytes,
                                     duet_kvx_pool_t **pool_p)
{
    if (!base) {
        return DUET_ERR_INVALID;
    }
    return pool_map(kvx, base, bytes, false, pool_p);
}

duet_status_t duet_kvx_pool_register_cuda(duet_kvx_t *kvx, void *base, size_t bytes,
                                          duet_kvx_pool_t **pool_p)
{
    if (!base) {
        return DUET_ERR_INVALID;
    }
    if (!duet_kvx_cuda_memory(kvx)) {
        duet_log_error("kvx: this UCX cannot move CUDA memory (it was built without CUDA support)");
        return DUET_ERR_UNSUPPORTED;
    }
    return pool_map(kvx, base, bytes, true, pool_p);
}

void duet_kvx_pool_destroy(duet_kvx_pool_t *pool)
{
    if (!pool) {
        return;
    }
    duet_kvx_t *kvx = pool->kvx;
    for (duet_kvx_pool_t **link = &kvx->pools; *link; link = &(*link)->next) {
        if (*link == pool) {
            *link = pool->next;
            break;
        }
    }
    ucp_rkey_buffer_release(pool->rkey);
    ucp_mem_unmap(kvx->ctx, pool->memh);
    free(pool);
}

void *duet_kvx_pool_base(const duet_kvx_pool_t *pool)
{
    return pool->base;
}

size_t duet_kvx_pool_size(const duet_kvx_pool_t *pool)
{
    return pool->size;
}

void duet_kvx_pool_rkey(const duet_kvx_pool_t *pool, const void **bytes_p, size_t *len_p)
{
    *bytes_p = pool->rkey;
    *len_p = pool->rkey_len;
}

void duet_kvx_pool_remote(const duet_kvx_t *kvx, const duet_kvx_pool_t *pool,
                          duet_kvx_remote_t *remote_p)
{
    *remote_p = (duet_kvx_remote_t){
        .worker_addr = kvx->addr,
        .worker_addr_len = kvx->addr_len,
        .rkey = pool->rkey,
        .rkey_len = pool->rkey_len,
        .base = (uint64_t)(uintptr_t)pool->base,
        .size = pool->size,
    };
}

duet_kvx_pool_t *duet_kvx__pool_find(const duet_kvx_t *kvx, const void *ptr, size_t len)
{
    uintptr_t p = (uintptr_t)ptr;
    for (duet_kvx_pool_t *pool = kvx->pools; pool; pool = pool->next) {
        uintptr_t b = (uintptr_t)pool->base;
        if (p >= b && p - b <= pool->size && len <= pool->size - (p - b)) {
            return pool;
        }
    }
    return NULL;
}
