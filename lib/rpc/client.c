/* lib/rpc/client.c — the gRPC client: one cached channel per address (plaintext or TLS), blocking unary
 * calls and server-streaming reads. Each call gets its own completion queue, so callers on many
 * threads never wait on one another's events. */
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include "log.h"
#include "rpc_internal.h"

typedef struct {
    char         *address;
    grpc_channel *channel;
} chan_t;

struct duet_rpc_client {
    grpc_channel_credentials *creds;   /* shared by every channel */
    duet_rpc_tls_pem_t        pem;     /* the TLS files the credentials were made from */
    grpc_arg                  args[2]; /* message size limits */
    grpc_channel_args         chargs;
    char                     *server_name;  /* TLS name override, or NULL */
    pthread_mutex_t mu;   /* guards the channel cache */
    chan_t         *chans;
    int             n_chans, cap_chans;
};

struct duet_rpc_client_stream {
    grpc_call                        *call;
    grpc_completion_queue            *cq;
    const ProtobufCMessageDescriptor *type;
    grpc_metadata                    *md;         /* sent metadata, copied slices */
    int                               n_md;
    grpc_metadata_array               initial_md, trailing_md;
    grpc_status_code                  status;
    grpc_slice                        details;
    grpc_byte_buffer                 *recv;
    int                               start_pending, status_pending, recv_pending;
    int                               ended;        /* read returned end or an error */
    duet_status_t                     final;
    /* Tags are the addresses of these bytes: no allocation per event. */
    char                              t_start, t_status, t_recv;
    char                              error[512];
};

duet_status_t duet_rpc_client_create_conf(const duet_rpc_client_conf_t *conf, duet_rpc_client_t **client_p)
{
    const duet_rpc_tls_t *tls = conf ? conf->tls : NULL;
    duet_rpc_client_t *c = calloc(1, sizeof *c);
    if (!c)
        return DUET_ERR_NOMEM;
    if (tls && tls->server_name && tls->server_name[0] && !(c->server_name = strdup(tls->server_name))) {
        free(c);
        return DUET_ERR_NOMEM;
    }
    grpc_init();
    duet_status_t st = duet_rpc__channel_creds(tls, &c->pem, &c->creds);
    if (st != DUET_OK) {
        grpc_shutdown();
        free(c->server_name);
        free(c);
        return st;
    }
    size_t max_msg = conf && conf->max_message_bytes ? conf->max_message_bytes : DUET_RPC_MAX_MESSAGE_DEFAULT;
    int max_msg_int = max_msg > INT_MAX ? INT_MAX : (int)max_msg;
    c->args[0] = (grpc_arg){ .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
                             .value.integer = max_msg_int };
    c->args[1] = (grpc_arg){ .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH,
                             .value.integer = max_msg_int };
    c->chargs = (grpc_channel_args){ 2, c->args };
    pthread_mutex_init(&c->mu, NULL);
    *client_p = c;
    return DUET_OK;
}

duet_status_t duet_rpc_client_create(duet_rpc_client_t **client_p)
{
    return duet_rpc_client_create_conf(NULL, client_p);
}

void duet_rpc_client_destroy(duet_rpc_client_t *client)
{
    if (!client)
        return;
    for (int i = 0; i < client->n_chans; i++) {
        grpc_channel_destroy(client->chans[i].channel);
        free(client->chans[i].address);
    }
    free(client->chans);
    grpc_channel_credentials_release(client->creds);
    duet_rpc__tls_pem_free(&client->pem);
    free(client->server_name);
    pthread_mutex_destroy(&client->mu);
    free(client);
    grpc_shutdown();
}

/* The cached channel for an address, created on first use. Channels live as long as the client. */
static grpc_channel *channel_get(duet_rpc_client_t *c, const char *address)
{
    grpc_channel *ch = NULL;
    pthread_mutex_lock(&c->mu);
    for (int i = 0; i < c->n_chans; i++) {
        if (strcmp(c->chans[i].address, address) == 0) {
            ch = c->chans[i].channel;
            goto out_unlock;
        }
    }
    if (c->n_chans == c->cap_chans) {
        int cap = c->cap_chans ? c->cap_chans * 2 : 8;
        chan_t *grown = realloc(c->chans, (size_t)cap * sizeof *grown);
        if (!grown)
            goto out_unlock;
        c->chans = grown;
        c->cap_chans = cap;
    }
    char *addr = strdup(address);
    if (!addr)
        goto out_unlock;
    if (c->server_name) {
        /* Its own args: the override is per channel, the limits are shared. */
        grpc_arg args[3] = { c->args[0], c->args[1],
                             { .type = GRPC_ARG_STRING, .key = GRPC_SSL_TARGET_NAME_OVERRIDE_ARG,
                               .value.string = c->server_name } };
        grpc_channel_args chargs = { 3, args };
        ch = grpc_channel_create(address, c->creds, &chargs);
    } else {
        ch = grpc_channel_create(address, c->creds, &c->chargs);
    }
    c->chans[c->n_chans++] = (chan_t){ addr, ch };
out_unlock:
    pthread_mutex_unlock(&c->mu);
    return ch;
}

static gpr_timespec deadline_of(const duet_rpc_opts_t *opts)
{
    if (!opts || opts->timeout_ms <= 0)
        return gpr_inf_future(GPR_CLOCK_REALTIME);
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                        gpr_time_from_millis(opts->timeout_ms, GPR_TIMESPAN));
}

static void set_error(const duet_rpc_opts_t *opts, const char *msg)
{
    if (opts && opts->error && opts->error_size)
        snprintf(opts->error, opts->error_size, "%s", msg);
}

/* Creates the call; NULL when the channel cannot be had. */
static grpc_call *call_create(duet_rpc_client_t *client, const char *address, const char *path,
                              grpc_completion_queue *cq, gpr_timespec deadline)
{
    grpc_channel *ch = channel_get(client, address);
    if (!ch)
        return NULL;
    grpc_slice method = grpc_slice_from_copied_string(path);
    grpc_call *call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, method, NULL,
                                               deadline, NULL);
    grpc_slice_unref(method);
    return call;
}

/* Waits for one tag on a per-call queue. */
static void cq_wait(grpc_completion_queue *cq, void *tag)
{
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_OP_COMPLETE && ev.tag == tag)
            return;
    }
}

static void cq_drain_destroy(grpc_completion_queue *cq)
{
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type != GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(cq);
}

duet_status_t duet_rpc_client_unary(duet_rpc_client_t *client, const char *address, const char *path,
                                    const ProtobufCMessage *request,
                                    const ProtobufCMessageDescriptor *response_type,
                                    const duet_rpc_opts_t *opts, ProtobufCMessage **response_p)
{
    duet_status_t status;
    grpc_metadata md[16];
    grpc_metadata_array initial_md, trailing_md;
    grpc_byte_buffer *send = NULL, *recv = NULL;
    grpc_status_code code = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    grpc_op ops[6];
    int n_md = opts ? opts->n_metadata : 0;
    char tag;

    if (!client || !address || !path || !request || !response_type || !response_p || n_md < 0 ||
        n_md > (int)(sizeof md / sizeof md[0]))
        return DUET_ERR_INVALID;
    if (opts && opts->retry_after_ms)
        *opts->retry_after_ms = -1;
    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    grpc_call *call = call_create(client, address, path, cq, deadline_of(opts));
    if (!call) {
        status = DUET_ERR_NOMEM;
        goto out_destroy_cq;
    }
    send = duet_rpc__pack(request);
    memset(md, 0, sizeof md);
    for (int i = 0; i < n_md; i++) {
        /* Static slices: the strings outlive the batch, which completes before we return. */
        md[i].key = grpc_slice_from_static_string(opts->metadata[i].key);
        md[i].value = grpc_slice_from_static_string(opts->metadata[i].value);
    }
    grpc_metadata_array_init(&initial_md);
    grpc_metadata_array_init(&trailing_md);

    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = (size_t)n_md;
    ops[0].data.send_initial_metadata.metadata = md;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &recv;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &trailing_md;
    ops[5].data.recv_status_on_client.status = &code;
    ops[5].data.recv_status_on_client.status_details = &details;
    grpc_call_error err = grpc_call_start_batch(call, ops, 6, &tag, NULL);
    if (err != GRPC_CALL_OK) {
        duet_log_error("rpc: %s to %s: batch refused: %s", path, address, grpc_call_error_to_string(err));
        status = DUET_ERR_INTERNAL;
        goto out_free_batch;
    }
    cq_wait(cq, &tag);

    if (opts && opts->retry_after_ms)
        *opts->retry_after_ms = duet_rpc__retry_after(&trailing_md);
    status = duet_rpc_status_from_grpc(code);
    if (status != DUET_OK) {
        char msg[512];
        duet_rpc__slice_to_str(details, msg, sizeof msg);
        set_error(opts, msg);
        goto out_free_batch;
    }
    ProtobufCMessage *resp = recv ? duet_rpc__unpack(recv, response_type) : NULL;
    if (!resp) {
        set_error(opts, recv ? "response does not parse" : "no response message");
        status = DUET_ERR_FORMAT;
        goto out_free_batch;
    }
    *response_p = resp;

out_free_batch:
    if (recv)
        grpc_byte_buffer_destroy(recv);
    grpc_byte_buffer_destroy(send);
    grpc_slice_unref(details);
    grpc_metadata_array_destroy(&initial_md);
    grpc_metadata_array_destroy(&trailing_md);
    grpc_call_unref(call);
out_destroy_cq:
    cq_drain_destroy(cq);
    return status;
}

/* ---- streams ---------------------------------------------------------------------------------- */

duet_status_t duet_rpc_client_stream_open(duet_rpc_client_t *client, const char *address,
                                          const char *path, const ProtobufCMessage *request,
                                          const ProtobufCMessageDescriptor *response_type,
                                          const duet_rpc_opts_t *opts,
                                          duet_rpc_client_stream_t **stream_p)
{
    duet_status_t status;
    grpc_op ops[4];
    int n_md = opts ? opts->n_metadata : 0;

    if (!client || !address || !path || !request || !response_type || !stream_p || n_md < 0)
        return DUET_ERR_INVALID;
    duet_rpc_client_stream_t *s = calloc(1, sizeof *s);
    if (!s)
        return DUET_ERR_NOMEM;
    s->type = response_type;
    s->details = grpc_empty_slice();
    grpc_metadata_array_init(&s->initial_md);
    grpc_metadata_array_init(&s->trailing_md);
    s->cq = grpc_completion_queue_create_for_next(NULL);
    s->call = call_create(client, address, path, s->cq, deadline_of(opts));
    if (!s->call) {
        status = DUET_ERR_NOMEM;
        goto err_free_stream;
    }
    if (n_md) {
        s->md = calloc((size_t)n_md, sizeof *s->md);
        if (!s->md) {
            status = DUET_ERR_NOMEM;
            goto err_unref_call;
        }
        /* Copied: the caller's strings need not outlive open. */
        for (int i = 0; i < n_md; i++) {
            s->md[i].key = grpc_slice_from_copied_string(opts->metadata[i].key);
            s->md[i].value = grpc_slice_from_copied_string(opts->metadata[i].value);
        }
        s->n_md = n_md;
    }
    grpc_byte_buffer *send = duet_rpc__pack(request);

    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[0].data.send_initial_metadata.count = (size_t)s->n_md;
    ops[0].data.send_initial_metadata.metadata = s->md;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &s->initial_md;
    grpc_call_error err = grpc_call_start_batch(s->call, ops, 4, &s->t_start, NULL);
    /* The call took its own reference to the message buffer. */
    grpc_byte_buffer_destroy(send);
    if (err != GRPC_CALL_OK) {
        status = DUET_ERR_INTERNAL;
        goto err_unref_call;
    }
    s->start_pending = 1;

    /* Posted now so the final status is collected whatever the reads do. */
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[0].data.recv_status_on_client.trailing_metadata = &s->trailing_md;
    ops[0].data.recv_status_on_client.status = &s->status;
    ops[0].data.recv_status_on_client.status_details = &s->details;
    if (grpc_call_start_batch(s->call, ops, 1, &s->t_status, NULL) != GRPC_CALL_OK) {
        grpc_call_cancel(s->call, NULL);
        duet_rpc_client_stream_close(s);
        return DUET_ERR_INTERNAL;
    }
    s->status_pending = 1;
    *stream_p = s;
    return DUET_OK;

err_unref_call:
    for (int i = 0; i < s->n_md; i++) {
        grpc_slice_unref(s->md[i].key);
        grpc_slice_unref(s->md[i].value);
    }
    free(s->md);
    grpc_call_unref(s->call);
err_free_stream:
    cq_drain_destroy(s->cq);
    grpc_metadata_array_destroy(&s->initial_md);
    grpc_metadata_array_destroy(&s->trailing_md);
    free(s);
    return status;
}

/* Takes one event off the stream's queue and notes which batch finished. */
static void stream_next_event(duet_rpc_client_stream_t *s)
{
    grpc_event ev = grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (ev.type != GRPC_OP_COMPLETE)
        return;
    if (ev.tag == &s->t_start)
        s->start_pending = 0;
    else if (ev.tag == &s->t_status)
        s->status_pending = 0;
    else if (ev.tag == &s->t_recv)
        s->recv_pending = 0;
}

duet_status_t duet_rpc_client_stream_read(duet_rpc_client_stream_t *s, ProtobufCMessage **message_p)
{
    grpc_op op;

    if (s->ended)
        goto out_final;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &s->recv;
    s->recv = NULL;
    if (grpc_call_start_batch(s->call, &op, 1, &s->t_recv, NULL) != GRPC_CALL_OK) {
        snprintf(s->error, sizeof s->error, "read refused by gRPC");
        s->final = DUET_ERR_INTERNAL;
        s->ended = 1;
        goto out_final;
    }
    s->recv_pending = 1;
    while (s->recv_pending)
        stream_next_event(s);

    if (s->recv) {
        ProtobufCMessage *msg = duet_rpc__unpack(s->recv, s->type);
        grpc_byte_buffer_destroy(s->recv);
        s->recv = NULL;
        if (msg) {
            *message_p = msg;
            return DUET_OK;
        }
        /* A message we cannot read ends the stream: what follows cannot be trusted either. */
        grpc_call_cancel(s->call, NULL);
        while (s->status_pending)
            stream_next_event(s);
        snprintf(s->error, sizeof s->error, "response does not parse as %s", s->type->name);
        s->final = DUET_ERR_FORMAT;
        s->ended = 1;
        goto out_final;
    }
    /* No message: the stream is over; its status says how. */
    while (s->status_pending)
        stream_next_event(s);
    s->final = duet_rpc_status_from_grpc(s->status);
    if (s->final != DUET_OK)
        duet_rpc__slice_to_str(s->details, s->error, sizeof s->error);
    s->ended = 1;

out_final:
    if (s->final == DUET_OK)
        *message_p = NULL;
    return s->final;
}

const char *duet_rpc_client_stream_error(const duet_rpc_client_stream_t *stream)
{
    return stream->error;
}

int64_t duet_rpc_client_stream_retry_after_ms(const duet_rpc_client_stream_t *stream)
{
    /* The trailers are filled once the status batch has completed. */
    return stream->ended && !stream->status_pending ? duet_rpc__retry_after(&stream->trailing_md) : -1;
}

void duet_rpc_client_stream_cancel(duet_rpc_client_stream_t *stream)
{
    grpc_call_cancel(stream->call, NULL);
}

void duet_rpc_client_stream_close(duet_rpc_client_stream_t *s)
{
    if (!s)
        return;
    if (s->status_pending)
        grpc_call_cancel(s->call, NULL);
    while (s->start_pending || s->status_pending || s->recv_pending)
        stream_next_event(s);
    if (s->recv)
        grpc_byte_buffer_destroy(s->recv);
    grpc_call_unref(s->call);
    cq_drain_destroy(s->cq);
    for (int i = 0; i < s->n_md; i++) {
        grpc_slice_unref(s->md[i].key);
        grpc_slice_unref(s->md[i].value);
    }
    free(s->md);
    grpc_slice_unref(s->details);
    grpc_metadata_array_destroy(&s->initial_md);
    grpc_metadata_array_destroy(&s->trailing_md);
    free(s);
}
