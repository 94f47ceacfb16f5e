/* lib/kvx/peer.c — an endpoint to one remote pool: puts (raw, per layer, per block), the flush that
 * proves remote completion, byte counters, and closing. */
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "kvx_int.h"
#include "log.h"

struct duet_kvx_peer {
    duet_kvx_t *kvx;
    ucp_ep_h ep;
    ucp_rkey_h rkey;
    uint64_t remote_base;
    size_t remote_size;
    /* Set once a flush failed or timed out, or UCX reported the endpoint dead (err mode PEER):
     * from then on nothing is posted, and what was posted is in an unknown state. */
    bool failed;
    ucs_status_t ep_error; /* from the error handler; UCS_OK while none */
    uint64_t bytes_unflushed;
    duet_kvx_peer_stats_t stats;
};

/* A request waited on with progress; lives on the waiter's stack, and the waiter frees the
 * request before returning so that no callback can reach it afterwards. */
typedef struct {
    bool done;
    ucs_status_t status;
} wait_t;

static void on_request_done(void *request, ucs_status_t status, void *user_data)
{
    (void)request; /* the waiter holds it */
    wait_t *w = user_data;
    w->status = status;
    w->done = true;
}

static void on_ep_error(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    (void)ep;
    duet_kvx_peer_t *peer = arg;
    duet_log_error("kvx: endpoint to the peer failed: %s", ucs_status_string(status));
    peer->ep_error = status;
    peer->failed = true;
}

/* Waits for a request returned by an _nbx call that was given on_request_done and w.
 * Returns UCS_ERR_TIMED_OUT when it did not complete by the deadline. */
static ucs_status_t request_wait(duet_kvx_t *kvx, ucs_status_ptr_t req, wait_t *w,
                                 int64_t deadline_ns)
{
    if (req == NULL) {
        return UCS_OK;
    }
    if (UCS_PTR_IS_ERR(req)) {
        return UCS_PTR_STATUS(req);
    }
    ucs_status_t st = duet_kvx__progress_until(kvx, &w->done, deadline_ns) ? w->status
                                                                            : UCS_ERR_TIMED_OUT;
    /* An unfinished request goes on inside UCX, but calls back no more once freed. */
    ucp_request_free(req);
    return st;
}

/* Closes the endpoint: gracefully while healthy, else forced where the err mode allows it. */
static void ep_close(duet_kvx_peer_t *peer, int timeout_ms)
{
    duet_kvx_t *kvx = peer->kvx;
    int64_t deadline = duet_clock_ns() + (int64_t)timeout_ms * 1000000;
    ucs_status_t st = UCS_ERR_CANCELED;

    if (!peer->failed) {
        wait_t w = {0};
        ucp_request_param_t param = {
            .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
            .cb.send = on_request_done,
            .user_data = &w,
            .flags = 0, /* flush first */
        };
        st = request_wait(kvx, ucp_ep_close_nbx(peer->ep, &param), &w, deadline);
        if (st == UCS_OK) {
            return;
        }
    }
    if (kvx->err_mode != DUET_KVX_ERR_PEER) {
        /* FORCE needs err mode PEER on both sides; without it the endpoint is left to
         * ucp_worker_destroy, which releases every endpoint of the worker. */
        duet_log_warn("kvx: endpoint not closed cleanly (%s); left to the worker's teardown",
                      peer->failed ? "peer failed" : ucs_status_string(st));
        return;
    }
    wait_t w = {0};
    ucp_request_param_t param = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                        UCP_OP_ATTR_FIELD_FLAGS,
        .cb.send = on_request_done,
        .user_data = &w,
        .flags = UCP_EP_CLOSE_FLAG_FORCE,
    };
    /* A forced close completes locally; a short grace keeps a bad peer from stalling us. */
    int64_t force_deadline = duet_clock_ns() + 1000000000;
    request_wait(kvx, ucp_ep_close_nbx(peer->ep, &param), &w,
                 deadline > force_deadline ? deadline : force_deadline);
}

duet_status_t duet_kvx_peer_connect(duet_kvx_t *kvx, const duet_kvx_remote_t *remote,
                                    duet_kvx_peer_t **peer_p)
{
    duet_status_t status;
    ucs_status_t st;

    if (!kvx || !remote || !remote->worker_addr || !remote->rkey || !peer_p) {
        return DUET_ERR_INVALID;
    }
    duet_kvx_peer_t *peer = calloc(1, sizeof(*peer));
    if (!peer) {
        return DUET_ERR_NOMEM;
    }
    peer->kvx = kvx;
    peer->remote_base = remote->base;
    peer->remote_size = remote->size;

    ucp_ep_params_t params = {
        .field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE,
        .address = remote->worker_addr,
        .err_mode = kvx->err_mode == DUET_KVX_ERR_PEER ? UCP_ERR_HANDLING_MODE_PEER
                                                       : UCP_ERR_HANDLING_MODE_NONE,
    };
    if (kvx->err_mode == DUET_KVX_ERR_PEER) {
        params.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
        params.err_handler.cb = on_ep_error;
        params.err_handler.arg = peer;
    }
    st = ucp_ep_create(kvx->worker, &params, &peer->ep);
    if (st != UCS_OK) {
        duet_log_error("kvx: connecting to the peer failed: %s", ucs_status_string(st));
        status = DUET_ERR_UNAVAILABLE;
        goto err_free_peer;
    }
    st = ucp_ep_rkey_unpack(peer->ep, remote->rkey, &peer->rkey);
    if (st != UCS_OK) {
        duet_log_error("kvx: unpacking the peer's %zu-byte rkey failed: %s", remote->rkey_len,
                       ucs_status_string(st));
        status = DUET_ERR_UNAVAILABLE;
        goto err_close_ep;
    }
    kvx->n_peers++;
    *peer_p = peer;
    return DUET_OK;

err_close_ep:
    peer->failed = true;
    ep_close(peer, 1000);
err_free_peer:
    free(peer);
    return status;
}

void duet_kvx_peer_destroy(duet_kvx_peer_t *peer, int timeout_ms)
{
    if (!peer) {
        return;
    }
    /* The rkey refers to the endpoint's transports, so it goes first. */
    ucp_rkey_destroy(peer->rkey);
    ep_close(peer, timeout_ms);
    peer->kvx->n_peers--;
    free(peer);
}

duet_status_t duet_kvx_put(duet_kvx_peer_t *peer, const void *ptr, size_t len,
                           uint64_t remote_offset)
{
    if (peer->failed) {
        return DUET_ERR_UNAVAILABLE;
    }
    if (remote_offset > peer->remote_size || len > peer->remote_size - remote_offset) {
        duet_log_error("kvx: put of %zu bytes at offset %llu is outside the peer's %zu-byte pool",
                       len, (unsigned long long)remote_offset, peer->remote_size);
        return DUET_ERR_INVALID;
    }
    if (len == 0) {
        return DUET_OK;
    }
    ucp_request_param_t param = {0};
    duet_kvx_pool_t *src = duet_kvx__pool_find(peer->kvx, ptr, len);
    if (src) {
        param.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
        param.memh = src->memh;
    }
    ucs_status_ptr_t req = ucp_put_nbx(peer->ep, ptr, len, peer->remote_base + remote_offset,
                                       peer->rkey, &param);
    if (UCS_PTR_IS_ERR(req)) {
        duet_log_error("kvx: posting a %zu-byte put failed: %s", len,
                       ucs_status_string(UCS_PTR_STATUS(req)));
        peer->failed = true;
        return DUET_ERR_UNAVAILABLE;
    }
    if (req) {
        /* Completion is learnt from the flush; the put itself goes on after the free. */
        ucp_request_free(req);
    }
    peer->stats.puts++;
    peer->stats.bytes_posted += len;
    peer->bytes_unflushed += len;
    return DUET_OK;
}

/* Checks that every src block is in the local pool and layer (if >= 0) is a layer of it. */
static duet_status_t blocks_check(const duet_kv_pool_view_t *src, int layer,
                                  const uint32_t *src_blocks, const uint32_t *dst_blocks, int n)
{
    if (!src || !src->base || n < 0 || (n > 0 && (!src_blocks || !dst_blocks)) ||
        layer >= src->n_layer) {
        return DUET_ERR_INVALID;
    }
    for (int i = 0; i < n; i++) {
        if (src_blocks[i] >= (uint32_t)src->n_blocks) {
            duet_log_error("kvx: source block %u is outside the %d-block pool", src_blocks[i],
                           src->n_blocks);
            return DUET_ERR_INVALID;
        }
    }
    return DUET_OK;
}

duet_status_t duet_kvx_put_layer(duet_kvx_peer_t *peer, const duet_kv_pool_view_t *src, int layer,
                                 const uint32_t *src_blocks, const uint32_t *dst_blocks, int n)
{
    if (layer < 0) {
        return DUET_ERR_INVALID;
    }
    duet_status_t status = blocks_check(src, layer, src_blocks, dst_blocks, n);
    if (status != DUET_OK) {
        return status;
    }
    /* K and V of one (block, layer) are adjacent: one put of 2 slices per block. */
    size_t pair_bytes = 2 * duet_kv_slice_elems(src) * sizeof(uint16_t);
    for (int i = 0; i < n; i++) {
        uint64_t off = ((uint64_t)dst_blocks[i] * (uint64_t)src->n_layer + (uint64_t)layer) *
                       pair_bytes;
        status = duet_kvx_put(peer, duet_kv_slice(src, (int)src_blocks[i], layer, 0), pair_bytes,
                              off);
        if (status != DUET_OK) {
            return status;
        }
    }
    return DUET_OK;
}

duet_status_t duet_kvx_put_blocks(duet_kvx_peer_t *peer, const duet_kv_pool_view_t *src,
                                  const uint32_t *src_blocks, const uint32_t *dst_blocks, int n)
{
    duet_status_t status = blocks_check(src, 0, src_blocks, dst_blocks, n);
    if (status != DUET_OK) {
        return status;
    }
    size_t block_bytes =
        (size_t)src->n_layer * 2 * duet_kv_slice_elems(src) * sizeof(uint16_t);
    for (int i = 0; i < n;) {
        /* Runs of blocks consecutive on both sides are one region each: one put per run. */
        int run = 1;
        while (i + run < n && src_blocks[i + run] == src_blocks[i] + (uint32_t)run &&
               dst_blocks[i + run] == dst_blocks[i] + (uint32_t)run) {
            run++;
        }
        status = duet_kvx_put(peer, duet_kv_slice(src, (int)src_blocks[i], 0, 0),
                              (size_t)run * block_bytes, (uint64_t)dst_blocks[i] * block_bytes);
        if (status != DUET_OK) {
            return status;
        }
        i += run;
    }
    return DUET_OK;
}

duet_status_t duet_kvx_flush(duet_kvx_peer_t *peer, int timeout_ms)
{
    if (peer->failed) {
        return DUET_ERR_UNAVAILABLE;
    }
    int64_t deadline = duet_clock_ns() + (int64_t)timeout_ms * 1000000;
    wait_t w = {0};
    ucp_request_param_t param = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
        .cb.send = on_request_done,
        .user_data = &w,
    };
    ucs_status_t st = request_wait(peer->kvx, ucp_ep_flush_nbx(peer->ep, &param), &w, deadline);
    if (st == UCS_OK && !peer->failed) {
        peer->stats.bytes_completed += peer->bytes_unflushed;
        peer->bytes_unflushed = 0;
        return DUET_OK;
    }
    peer->failed = true;
    peer->stats.flushes_failed++;
    if (st == UCS_ERR_TIMED_OUT) {
        duet_log_error("kvx: flush of %llu bytes not completed within %d ms",
                       (unsigned long long)peer->bytes_unflushed, timeout_ms);
        return DUET_ERR_DEADLINE;
    }
    duet_log_error("kvx: flush of %llu bytes failed: %s", (unsigned long long)peer->bytes_unflushed,
                   ucs_status_string(st != UCS_OK ? st : peer->ep_error));
    return DUET_ERR_UNAVAILABLE;
}

void duet_kvx_peer_stats(const duet_kvx_peer_t *peer, duet_kvx_peer_stats_t *stats_p)
{
    *stats_p = peer->stats;
}
