/* lib/kvx/context.c — the UCP context and worker of a kvx, its address, and progress driven by
 * the worker's event fd. */
#include <stdlib.h>

#include "clock.h"
#include "kvx_int.h"
#include "log.h"

duet_status_t duet_kvx_create(const duet_kvx_conf_t *conf, duet_kvx_t **kvx_p)
{
    duet_status_t status;
    ucs_status_t st;
    ucp_config_t *config;

    if (!conf || !kvx_p ||
        (conf->err_mode != DUET_KVX_ERR_NONE && conf->err_mode != DUET_KVX_ERR_PEER)) {
        return DUET_ERR_INVALID;
    }
    duet_kvx_t *kvx = calloc(1, sizeof(*kvx));
    if (!kvx) {
        return DUET_ERR_NOMEM;
    }
    kvx->err_mode = conf->err_mode;
    kvx->efd = -1;

    /* UCX_* environment variables (UCX_TLS above all) still apply on top of this. */
    st = ucp_config_read(NULL, NULL, &config);
    if (st != UCS_OK) {
        duet_log_error("kvx: reading UCX configuration failed: %s", ucs_status_string(st));
        status = DUET_ERR_UNAVAILABLE;
        goto err_free_kvx;
    }
    ucp_params_t params = {
        .field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED |
                      UCP_PARAM_FIELD_NAME,
        /* RMA for puts, WAKEUP for the event fd a receiver sleeps on. */
        .features = UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP,
        .mt_workers_shared = 0,
        .name = conf->name ? conf->name : "duet",
    };
    st = ucp_init(&params, config, &kvx->ctx);
    ucp_config_release(config);
    if (st != UCS_OK) {
        duet_log_error("kvx: ucp_init failed: %s", ucs_status_string(st));
        status = DUET_ERR_UNAVAILABLE;
        goto err_free_kvx;
    }

    ucp_worker_params_t wparams = {
        .field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
        .thread_mode = UCS_THREAD_MODE_SINGLE, /* one kvx per thread, see kvx.h */
    };
    st = ucp_worker_create(kvx->ctx, &wparams, &kvx->worker);
    if (st != UCS_OK) {
        duet_log_error("kvx: creating the UCP worker failed: %s", ucs_status_string(st));
        status = DUET_ERR_UNAVAILABLE;
        goto err_cleanup_ctx;
    }
    st = ucp_worker_get_address(kvx->worker, &kvx->addr, &kvx->addr_len);
    if (st != UCS_OK) {
        duet_log_error("kvx: getting the worker address failed: %s", ucs_status_string(st));
        status = DUET_ERR_UNAVAILABLE;
        goto err_destroy_worker;
    }
    st = ucp_worker_get_efd(kvx->worker, &kvx->efd);
    if (st != UCS_OK) {
        duet_log_error("kvx: getting the worker event fd failed: %s", ucs_status_string(st));
        status = DUET_ERR_UNAVAILABLE;
        goto err_release_addr;
    }
    *kvx_p = kvx;
    return DUET_OK;

err_release_addr:
    ucp_worker_release_address(kvx->worker, kvx->addr);
err_destroy_worker:
    ucp_worker_destroy(kvx->worker);
err_cleanup_ctx:
    ucp_cleanup(kvx->ctx);
err_free_kvx:
    free(kvx);
    return status;
}

void duet_kvx_destroy(duet_kvx_t *kvx)
{
    if (!kvx) {
        return;
    }
    if (kvx->pools || kvx->n_peers) {
        /* A caller bug; tearing the worker down under them would leave dangling handles. */
        duet_log_error("kvx: destroyed with %d peers and %s pools still open; leaking it",
                       kvx->n_peers, kvx->pools ? "some" : "no");
        return;
    }
    /* The efd belongs to the worker and is closed by it. */
    ucp_worker_release_address(kvx->worker, kvx->addr);
    ucp_worker_destroy(kvx->worker);
    ucp_cleanup(kvx->ctx);
    free(kvx);
}

bool duet_kvx_cuda_memory(const duet_kvx_t *kvx)
{
    ucp_context_attr_t attr = {.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES};
    if (ucp_context_query(kvx->ctx, &attr) != UCS_OK) {
        return false;
    }
    return (attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
}

void duet_kvx_worker_address(const duet_kvx_t *kvx, const void **bytes_p, size_t *len_p)
{
    *bytes_p = kvx->addr;
    *len_p = kvx->addr_len;
}

unsigned duet_kvx_progress(duet_kvx_t *kvx)
{
    return ucp_worker_progress(kvx->worker);
}

int duet_kvx_event_fd(const duet_kvx_t *kvx)
{
    return kvx->efd;
}

duet_status_t duet_kvx_arm(duet_kvx_t *kvx, bool *armed_p)
{
    ucs_status_t st = ucp_worker_arm(kvx->worker);
    if (st == UCS_OK) {
        *armed_p = true;
        return DUET_OK;
    }
    if (st == UCS_ERR_BUSY) {
        *armed_p = false;
        return DUET_OK;
    }
    duet_log_error("kvx: arming the worker event fd failed: %s", ucs_status_string(st));
    return DUET_ERR_INTERNAL;
}

bool duet_kvx__progress_until(duet_kvx_t *kvx, const bool *done, int64_t deadline_ns)
{
    /* Busy-polls: a sender waiting for a flush wants the lowest latency, and waits are short.
     * *done is set by a callback run inside ucp_worker_progress, on this thread. */
    while (!*done && duet_clock_ns() < deadline_ns) {
        ucp_worker_progress(kvx->worker);
    }
    return *done;
}
