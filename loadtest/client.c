/* loadtest/client.c — one timed Generate stream against the gateway, and ModelInfo. */
#include "client.h"

#include <stdio.h>
#include <string.h>

#include "clock.h"
#include "duet/v1/gateway.pb-c.h"

#define GENERATE_PATH "/duet.v1.Gateway/Generate"
#define MODEL_INFO_PATH "/duet.v1.Gateway/ModelInfo"

duet_status_t duet_load_client_init(duet_load_client_t *c, const char *address, const char *api_key,
                                    int64_t timeout_ms)
{
    memset(c, 0, sizeof *c);
    c->address = address;
    c->timeout_ms = timeout_ms;
    if (api_key && *api_key)
        snprintf(c->bearer, sizeof c->bearer, "Bearer %s", api_key);
    return duet_rpc_client_create(&c->rpc);
}

void duet_load_client_cleanup(duet_load_client_t *c)
{
    if (c->rpc)
        duet_rpc_client_destroy(c->rpc);
    c->rpc = NULL;
}

const char *duet_load_status_name(duet_status_t status)
{
    switch (duet_rpc_status_to_grpc(status)) {
    case GRPC_STATUS_OK:                 return "OK";
    case GRPC_STATUS_CANCELLED:          return "CANCELLED";
    case GRPC_STATUS_INVALID_ARGUMENT:   return "INVALID_ARGUMENT";
    case GRPC_STATUS_DEADLINE_EXCEEDED:  return "DEADLINE_EXCEEDED";
    case GRPC_STATUS_NOT_FOUND:          return "NOT_FOUND";
    case GRPC_STATUS_RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case GRPC_STATUS_UNIMPLEMENTED:      return "UNIMPLEMENTED";
    case GRPC_STATUS_UNAVAILABLE:        return "UNAVAILABLE";
    case GRPC_STATUS_UNAUTHENTICATED:    return "UNAUTHENTICATED";
    default:                             return "INTERNAL";
    }
}

static void fill_opts(duet_load_client_t *c, duet_rpc_metadata_t *md, duet_rpc_opts_t *opts,
                      int64_t timeout_ms, char *err, size_t err_len)
{
    md->key = "authorization";
    md->value = c->bearer;
    *opts = (duet_rpc_opts_t){.timeout_ms = timeout_ms, .metadata = md,
                              .n_metadata = c->bearer[0] ? 1 : 0, .error = err,
                              .error_size = err_len};
}

duet_status_t duet_load_client_model_info(duet_load_client_t *c, duet_load_model_info_t *info,
                                          char *err, size_t err_len)
{
    Duet__V1__ModelInfoRequest req = DUET__V1__MODEL_INFO_REQUEST__INIT;
    duet_rpc_metadata_t md;
    duet_rpc_opts_t opts;
    ProtobufCMessage *resp = NULL;
    err[0] = '\0';
    fill_opts(c, &md, &opts, 5000, err, err_len);
    duet_status_t st = duet_rpc_client_unary(c->rpc, c->address, MODEL_INFO_PATH, &req.base,
                                             &duet__v1__model_info_response__descriptor, &opts, &resp);
    if (st != DUET_OK)
        return st;
    const Duet__V1__ModelInfoResponse *m = (const Duet__V1__ModelInfoResponse *)resp;
    memset(info, 0, sizeof *info);
    snprintf(info->model_id, sizeof info->model_id, "%s", m->model_id ? m->model_id : "");
    info->vocab_size = m->vocab_size;
    info->context_length = m->context_length;
    info->special[info->n_special++] = m->bos_token_id;
    for (size_t i = 0; i < m->n_eos_token_ids && info->n_special < 8; i++)
        info->special[info->n_special++] = m->eos_token_ids[i];
    protobuf_c_message_free_unpacked(resp, NULL);
    return DUET_OK;
}

void duet_load_slot_init(duet_load_slot_t *slot)
{
    pthread_mutex_init(&slot->lock, NULL);
    slot->stream = NULL;
    slot->cancelled = 0;
}

void duet_load_slot_cleanup(duet_load_slot_t *slot)
{
    pthread_mutex_destroy(&slot->lock);
}

void duet_load_slot_cancel(duet_load_slot_t *slot)
{
    pthread_mutex_lock(&slot->lock);
    slot->cancelled = 1;
    if (slot->stream)
        duet_rpc_client_stream_cancel(slot->stream);
    pthread_mutex_unlock(&slot->lock);
}

/* Publishes s in the slot (NULL: withdraws it); cancels at once when the slot already is. */
static void slot_set(duet_load_slot_t *slot, duet_rpc_client_stream_t *s)
{
    if (!slot)
        return;
    pthread_mutex_lock(&slot->lock);
    slot->stream = s;
    if (s && slot->cancelled)
        duet_rpc_client_stream_cancel(s);
    pthread_mutex_unlock(&slot->lock);
}

void duet_load_client_generate(duet_load_client_t *c, const uint32_t *ids, int n_ids,
                               const char *request_id, int64_t t0_ns, duet_load_slot_t *slot,
                               _Atomic int64_t *live_tokens, duet_load_result_t *r)
{
    Duet__V1__GenerateRequest req = DUET__V1__GENERATE_REQUEST__INIT;
    Duet__V1__SamplingParams sp = DUET__V1__SAMPLING_PARAMS__INIT;  /* temperature 0: greedy */
    Duet__V1__StopParams stop = DUET__V1__STOP_PARAMS__INIT;
    req.request_id = (char *)request_id;
    req.prompt_token_ids = (uint32_t *)ids;
    req.n_prompt_token_ids = (size_t)n_ids;
    req.sampling = &sp;
    /* Outputs of exactly the asked length, whatever the model would say. */
    stop.max_tokens = (uint32_t)r->output_tokens;
    stop.ignore_eos = 1;
    req.stop = &stop;

    duet_rpc_metadata_t md;
    duet_rpc_opts_t opts;
    fill_opts(c, &md, &opts, c->timeout_ms, r->error, sizeof r->error);
    r->error[0] = '\0';
    r->first_ns = r->last_ns = -1;
    r->tokens = 0;
    snprintf(r->request_id, sizeof r->request_id, "%s", request_id);

    duet_rpc_client_stream_t *stream;
    r->send_ns = duet_clock_ns() - t0_ns;
    duet_status_t st = duet_rpc_client_stream_open(c->rpc, c->address, GENERATE_PATH, &req.base,
                                                   &duet__v1__generate_response__descriptor,
                                                   &opts, &stream);
    if (st != DUET_OK) {
        r->status = duet_load_status_name(st);
        return;
    }
    slot_set(slot, stream);
    for (;;) {
        ProtobufCMessage *msg = NULL;
        st = duet_rpc_client_stream_read(stream, &msg);
        if (st != DUET_OK) {
            snprintf(r->error, sizeof r->error, "%s", duet_rpc_client_stream_error(stream));
            break;
        }
        if (!msg)
            break;
        const Duet__V1__GenerateResponse *g = (const Duet__V1__GenerateResponse *)msg;
        if (g->n_token_ids > 0) {
            int64_t now = duet_clock_ns() - t0_ns;
            if (r->first_ns < 0)
                r->first_ns = now;
            r->last_ns = now;
            r->tokens += (int)g->n_token_ids;
            if (live_tokens)
                atomic_fetch_add(live_tokens, (int64_t)g->n_token_ids);
        }
        if (g->request_id && *g->request_id)
            snprintf(r->request_id, sizeof r->request_id, "%s", g->request_id);
        if (g->finish_reason != DUET__V1__FINISH_REASON__FINISH_REASON_UNSPECIFIED)
            r->finish_reason = (int)g->finish_reason;
        protobuf_c_message_free_unpacked(msg, NULL);
    }
    slot_set(slot, NULL);
    duet_rpc_client_stream_close(stream);

    if (st != DUET_OK)
        r->status = duet_load_status_name(st);
    else if (r->finish_reason == DUET__V1__FINISH_REASON__FINISH_REASON_ERROR)
        r->status = "finish_error";
    else if (r->finish_reason == DUET__V1__FINISH_REASON__FINISH_REASON_CANCELLED)
        r->status = "finish_cancelled";
    else if (r->tokens == 0)
        r->status = "no_tokens";
    else
        r->status = "ok";
}
