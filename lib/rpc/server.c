/* lib/rpc/server.c — the gRPC server runtime: a method table served by completion-queue threads,
 * unary and server-streaming calls, writes from any thread, cancellation and graceful shutdown.
 *
 * One call's life (all fields under call->mu):
 *
 *   request slot completes ─▶ call_start: RECV_CLOSE_ON_SERVER posted at once (ref), handler ref
 *      │
 *      ├─ write/reply ─▶ queue ─▶ kick: on a CQ thread pump() at once, elsewhere an empty batch
 *      │                          wakes a CQ thread that pumps (gRPC notes, machine-facts.md)
 *      ├─ pump: at most one send batch in flight: [initial md] [message] [status when finished
 *      │        and the queue is empty]; its completion pumps again
 *      ├─ RECV_CLOSE completes (status sent, or cancelled by client/deadline/shutdown):
 *      │        cancelled ⇒ queue dropped, nothing more sent, on_cancel fires
 *      └─ finish (handler ref dropped) ─▶ when no ref is left: call_destroy
 *
 * Refs: the handler (until finish), the RECV_CLOSE op, a send batch, a wake batch.
 */
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include "log.h"
#include "rpc_internal.h"

#define SLOTS_PER_METHOD 4   /* calls the server can accept per method before a CQ thread re-arms */
#define STATUS_MSG_MAX   512
#define TRAILERS_MAX     4
#define SHUTDOWN_GRACE_S 1   /* seconds finished calls get to deliver their status at shutdown */

typedef enum { TAG_SLOT, TAG_RECV_CLOSE, TAG_SEND, TAG_WAKE, TAG_SHUTDOWN } tag_kind_t;

typedef struct {
    tag_kind_t kind;
    void      *owner;   /* the slot, call or server */
} tag_t;

/* One outstanding grpc_server_request_(registered_)call. method < 0: any unregistered method. */
typedef struct {
    tag_t               tag;
    duet_rpc_server_t  *server;
    int                 method;
    grpc_call          *call;
    gpr_timespec        deadline;
    grpc_metadata_array md;
    grpc_byte_buffer   *payload;
    grpc_call_details   details;   /* unregistered methods only */
} slot_t;

typedef struct outmsg {
    grpc_byte_buffer *bb;
    struct outmsg    *next;
} outmsg_t;

struct duet_rpc_call {
    duet_rpc_server_t       *server;
    const duet_rpc_method_t *method;     /* NULL: an unknown method */
    grpc_call               *call;
    gpr_timespec             deadline;
    char                    *path;
    char                   **md_keys, **md_vals;  /* copied request metadata, NUL-terminated */
    int                      n_md;
    ProtobufCMessage        *request;

    pthread_mutex_t          mu;
    int                      refs;
    tag_t                    t_close, t_send, t_wake;
    int                      recv_cancelled;     /* written by RECV_CLOSE_ON_SERVER */
    atomic_int               cancelled;
    int                      close_done;
    outmsg_t                *q_head, *q_tail;
    size_t                   q_len;
    grpc_byte_buffer        *in_flight;          /* the message of the send batch in flight */
    int                      send_busy, wake_busy, initial_md_sent, status_sent;
    int                      finished, deferred, replied;
    grpc_status_code         status;
    grpc_slice               status_details;
    char                     error[STATUS_MSG_MAX];
    grpc_metadata            trailers[TRAILERS_MAX];   /* sent with the status; copied slices */
    int                      n_trailers;
    void                   (*on_cancel)(void *arg);
    void                    *on_cancel_arg;
    int                      cb_running;         /* on_cancel is running on cb_thread */
    pthread_t                cb_thread;
    pthread_cond_t           cb_done;
};

struct duet_rpc_server {
    grpc_server           *server;
    grpc_completion_queue *cq;
    pthread_t             *threads;
    int                    n_threads;
    int                    port;
    duet_rpc_tls_pem_t     pem;        /* the TLS files, kept while the credentials may use them */
    duet_rpc_method_t     *methods;    /* the conf's table plus Health/Check */
    void                 **handles;    /* grpc_server_register_method handles */
    int                    n_methods;
    atomic_int             serving;
    tag_t                  t_shutdown;

    pthread_mutex_t        mu;         /* guards the fields below */
    pthread_cond_t         cv;
    int                    shutting_down, shutdown_done;
    int                    live_calls;  /* calls created and not yet destroyed */
};

/* Set on completion-queue threads: there a call starts its send batches directly; any other
 * thread posts an empty batch instead (machine-facts.md). Thread-local, so no shared state. */
static _Thread_local int tls_on_cq_thread;

/* ---- request slots ------------------------------------------------------------------------ */

static int slot_arm(slot_t *slot)
{
    duet_rpc_server_t *s = slot->server;
    grpc_call_error err;

    slot->call = NULL;
    slot->payload = NULL;
    grpc_metadata_array_init(&slot->md);
    if (slot->method >= 0) {
        err = grpc_server_request_registered_call(s->server, s->handles[slot->method], &slot->call,
                                                  &slot->deadline, &slot->md, &slot->payload,
                                                  s->cq, s->cq, &slot->tag);
    } else {
        grpc_call_details_init(&slot->details);
        err = grpc_server_request_call(s->server, &slot->call, &slot->details, &slot->md,
                                       s->cq, s->cq, &slot->tag);
    }
    if (err != GRPC_CALL_OK) {
        duet_log_error("rpc: requesting a call failed: %s", grpc_call_error_to_string(err));
        grpc_metadata_array_destroy(&slot->md);
        if (slot->method < 0)
            grpc_call_details_destroy(&slot->details);
        return -1;
    }
    return 0;
}

static void slot_release(slot_t *slot)
{
    grpc_metadata_array_destroy(&slot->md);
    if (slot->method < 0)
        grpc_call_details_destroy(&slot->details);
}

/* ---- one call ------------------------------------------------------------------------------- */

static char *dup_slice(grpc_slice s)
{
    size_t n = GRPC_SLICE_LENGTH(s);
    char *out = malloc(n + 1);
    if (out) {
        memcpy(out, GRPC_SLICE_START_PTR(s), n);
        out[n] = '\0';
    }
    return out;
}

static void call_destroy(duet_rpc_call_t *c)
{
    duet_rpc_server_t *s = c->server;
    outmsg_t *m, *next;

    for (m = c->q_head; m; m = next) {
        next = m->next;
        grpc_byte_buffer_destroy(m->bb);
        free(m);
    }
    if (c->request)
        protobuf_c_message_free_unpacked(c->request, NULL);
    for (int i = 0; i < c->n_md; i++) {
        free(c->md_keys[i]);
        free(c->md_vals[i]);
    }
    free(c->md_keys);
    free(c->md_vals);
    free(c->path);
    grpc_slice_unref(c->status_details);
    for (int i = 0; i < c->n_trailers; i++) {
        grpc_slice_unref(c->trailers[i].key);
        grpc_slice_unref(c->trailers[i].value);
    }
    grpc_call_unref(c->call);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cb_done);
    free(c);

    pthread_mutex_lock(&s->mu);
    s->live_calls--;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Drops one ref with mu held; unlocks; destroys the call when it was the last. */
static void call_unref_unlock(duet_rpc_call_t *c)
{
    int last = --c->refs == 0;
    pthread_mutex_unlock(&c->mu);
    if (last)
        call_destroy(c);
}

static void queue_drop(duet_rpc_call_t *c)
{
    outmsg_t *m, *next;
    for (m = c->q_head; m; m = next) {
        next = m->next;
        grpc_byte_buffer_destroy(m->bb);
        free(m);
    }
    c->q_head = c->q_tail = NULL;
    c->q_len = 0;
}

/* Starts the next send batch if none is in flight. mu held. */
static void pump(duet_rpc_call_t *c)
{
    grpc_op ops[3];
    int n = 0;

    if (c->send_busy || c->status_sent || atomic_load(&c->cancelled))
        return;
    memset(ops, 0, sizeof ops);
    if (!c->initial_md_sent && (c->q_head || c->finished)) {
        ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
        n++;
        c->initial_md_sent = 1;
    }
    if (c->q_head) {
        outmsg_t *m = c->q_head;
        c->q_head = m->next;
        if (!c->q_head)
            c->q_tail = NULL;
        c->q_len--;
        c->in_flight = m->bb;
        free(m);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = c->in_flight;
        n++;
    }
    if (c->finished && !c->q_head) {
        ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
        ops[n].data.send_status_from_server.status = c->status;
        ops[n].data.send_status_from_server.status_details =
            c->status == GRPC_STATUS_OK ? NULL : &c->status_details;
        ops[n].data.send_status_from_server.trailing_metadata_count = (size_t)c->n_trailers;
        ops[n].data.send_status_from_server.trailing_metadata = c->n_trailers ? c->trailers : NULL;
        n++;
        c->status_sent = 1;
    }
    if (n == 0)
        return;
    c->send_busy = 1;
    c->refs++;
    grpc_call_error err = grpc_call_start_batch(c->call, ops, (size_t)n, &c->t_send, NULL);
    if (err != GRPC_CALL_OK) {
        /* Only a bug in this file gets here; give up on the call rather than hang it. */
        duet_log_error("rpc: %s: send batch refused: %s", c->path, grpc_call_error_to_string(err));
        c->send_busy = 0;
        c->refs--;
        if (c->in_flight) {
            grpc_byte_buffer_destroy(c->in_flight);
            c->in_flight = NULL;
        }
        grpc_call_cancel(c->call, NULL);
    }
}

/* Gets queued sends going. mu held. Off the CQ threads, an empty batch makes a CQ thread pump. */
static void kick(duet_rpc_call_t *c)
{
    if (tls_on_cq_thread) {
        pump(c);
        return;
    }
    if (c->send_busy || c->wake_busy || c->status_sent || atomic_load(&c->cancelled))
        return;
    c->wake_busy = 1;
    c->refs++;
    if (grpc_call_start_batch(c->call, NULL, 0, &c->t_wake, NULL) != GRPC_CALL_OK) {
        c->wake_busy = 0;
        c->refs--;
    }
}

static void set_finished(duet_rpc_call_t *c, duet_status_t status, const char *msg)
{
    c->finished = 1;
    c->status = duet_rpc_status_to_grpc(status);
    if (c->status != GRPC_STATUS_OK) {
        const char *text = msg && *msg ? msg : duet_status_str(status);
        c->status_details = grpc_slice_from_copied_string(text);
        /* A failed unary call sends no response message. */
        if (c->method && c->method->kind == DUET_RPC_UNARY)
            queue_drop(c);
    }
}

/* Finishes with the handler's ref: queues the status, sends what is left, drops the ref. */
static void call_finish_locked(duet_rpc_call_t *c, duet_status_t status, const char *msg)
{
    if (c->finished) {
        pthread_mutex_unlock(&c->mu);
        return;
    }
    if (status == DUET_OK && c->method && c->method->kind == DUET_RPC_UNARY && !c->replied) {
        status = DUET_ERR_INTERNAL;
        msg = "the handler returned no response";
        duet_log_error("rpc: %s: %s", c->path, msg);
    }
    set_finished(c, status, msg);
    kick(c);
    call_unref_unlock(c);
}

static void call_finish_v(duet_rpc_call_t *c, duet_status_t status, const char *fmt, va_list ap)
{
    char msg[STATUS_MSG_MAX];
    msg[0] = '\0';
    if (fmt)
        vsnprintf(msg, sizeof msg, fmt, ap);
    pthread_mutex_lock(&c->mu);
    while (c->cb_running && !pthread_equal(c->cb_thread, pthread_self()))
        pthread_cond_wait(&c->cb_done, &c->mu);
    call_finish_locked(c, status, msg[0] ? msg : c->error);
}

static void on_recv_close(duet_rpc_call_t *c)
{
    void (*fn)(void *) = NULL;
    void *arg = NULL;

    pthread_mutex_lock(&c->mu);
    c->close_done = 1;
    if (c->recv_cancelled) {
        atomic_store(&c->cancelled, 1);
        queue_drop(c);
        fn = c->on_cancel;
        arg = c->on_cancel_arg;
        c->on_cancel = NULL;
        if (fn) {
            c->cb_running = 1;
            c->cb_thread = pthread_self();
        }
    }
    pthread_mutex_unlock(&c->mu);
    /* Outside the lock: the callback may finish the stream. Our ref keeps the call alive, and
     * a finish from another thread waits for the callback (see call_finish_v), so the handler
     * cannot free what the callback's argument points to while it runs. */
    if (fn)
        fn(arg);
    pthread_mutex_lock(&c->mu);
    if (fn) {
        c->cb_running = 0;
        pthread_cond_broadcast(&c->cb_done);
    }
    call_unref_unlock(c);
}

static void on_send_done(duet_rpc_call_t *c)
{
    pthread_mutex_lock(&c->mu);
    c->send_busy = 0;
    if (c->in_flight) {
        grpc_byte_buffer_destroy(c->in_flight);
        c->in_flight = NULL;
    }
    pump(c);
    call_unref_unlock(c);
}

static void on_wake(duet_rpc_call_t *c)
{
    pthread_mutex_lock(&c->mu);
    c->wake_busy = 0;
    pump(c);
    call_unref_unlock(c);
}

/* Builds the call from a completed slot, posts RECV_CLOSE_ON_SERVER and runs the handler. */
static void call_start(duet_rpc_server_t *s, slot_t *slot)
{
    duet_rpc_call_t *c = calloc(1, sizeof *c);
    const duet_rpc_method_t *m = slot->method >= 0 ? &s->methods[slot->method] : NULL;
    grpc_op op;

    if (!c) {
        duet_log_error("rpc: out of memory for a call");
        grpc_call_cancel_with_status(slot->call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory", NULL);
        grpc_call_unref(slot->call);
        if (slot->payload)
            grpc_byte_buffer_destroy(slot->payload);
        return;
    }
    c->server = s;
    c->method = m;
    c->call = slot->call;
    c->deadline = slot->deadline;
    c->status_details = grpc_empty_slice();
    c->path = m ? strdup(m->path) : dup_slice(slot->details.method);
    if (!m)
        c->deadline = slot->details.deadline;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cb_done, NULL);
    c->t_close = (tag_t){ TAG_RECV_CLOSE, c };
    c->t_send = (tag_t){ TAG_SEND, c };
    c->t_wake = (tag_t){ TAG_WAKE, c };
    c->refs = 2;   /* the handler and RECV_CLOSE_ON_SERVER */

    if (slot->md.count) {
        c->md_keys = calloc(slot->md.count, sizeof *c->md_keys);
        c->md_vals = calloc(slot->md.count, sizeof *c->md_vals);
        if (c->md_keys && c->md_vals) {
            for (size_t i = 0; i < slot->md.count; i++) {
                c->md_keys[c->n_md] = dup_slice(slot->md.metadata[i].key);
                c->md_vals[c->n_md] = dup_slice(slot->md.metadata[i].value);
                c->n_md++;
            }
        }
    }
    pthread_mutex_lock(&s->mu);
    s->live_calls++;
    pthread_mutex_unlock(&s->mu);

    /* Posted first, so cancellation by the client, the deadline or shutdown is always seen. */
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->recv_cancelled;
    if (grpc_call_start_batch(c->call, &op, 1, &c->t_close, NULL) != GRPC_CALL_OK) {
        duet_log_error("rpc: %s: could not watch the call for cancellation", c->path);
        c->refs--;
        atomic_store(&c->cancelled, 1);
    }

    if (!m) {
        pthread_mutex_lock(&c->mu);
        call_finish_locked(c, DUET_ERR_UNSUPPORTED, "unknown method");
        return;
    }
    if (slot->payload)
        c->request = duet_rpc__unpack(slot->payload, m->request);
    if (slot->payload)
        grpc_byte_buffer_destroy(slot->payload);
    if (!c->request) {
        char msg[STATUS_MSG_MAX];
        snprintf(msg, sizeof msg, "request does not parse as %s", m->request->name);
        pthread_mutex_lock(&c->mu);
        call_finish_locked(c, DUET_ERR_INVALID, msg);
        return;
    }

    if (m->kind == DUET_RPC_UNARY) {
        duet_status_t st = m->unary(c, c->request, m->arg);
        pthread_mutex_lock(&c->mu);
        if (c->deferred) {
            call_unref_unlock(c);   /* the ref defer took: the call may be finished already */
            return;
        }
        call_finish_locked(c, st, c->error);
    } else {
        m->stream(c, c->request, m->arg);
    }
}

/* ---- handler API ---------------------------------------------------------------------------- */

const char *duet_rpc_call_metadata(const duet_rpc_call_t *call, const char *key)
{
    for (int i = 0; i < call->n_md; i++)
        if (call->md_keys[i] && call->md_vals[i] && strcmp(call->md_keys[i], key) == 0)
            return call->md_vals[i];
    return NULL;
}

const char *duet_rpc_call_bearer(const duet_rpc_call_t *call)
{
    const char *v = duet_rpc_call_metadata(call, "authorization");
    if (!v || strncasecmp(v, "Bearer ", 7) != 0)
        return NULL;
    v += 7;
    while (*v == ' ')
        v++;
    return *v ? v : NULL;
}

int64_t duet_rpc_call_remaining_ms(const duet_rpc_call_t *call)
{
    gpr_timespec d = call->deadline;
    if (d.clock_type == GPR_TIMESPAN || gpr_time_cmp(d, gpr_inf_future(d.clock_type)) == 0)
        return INT64_MAX;
    gpr_timespec left = gpr_time_sub(d, gpr_now(d.clock_type));
    return left.tv_sec * 1000 + left.tv_nsec / 1000000;
}

const char *duet_rpc_call_path(const duet_rpc_call_t *call)
{
    return call->path ? call->path : "";
}

duet_status_t duet_rpc_call_reply(duet_rpc_call_t *call, const ProtobufCMessage *response)
{
    duet_status_t st = DUET_OK;
    pthread_mutex_lock(&call->mu);
    if (call->replied || call->finished || call->method->kind != DUET_RPC_UNARY) {
        st = DUET_ERR_INVALID;
        goto out_unlock;
    }
    grpc_byte_buffer *bb = duet_rpc__pack(response);
    outmsg_t *m = malloc(sizeof *m);
    if (!bb || !m) {
        if (bb)
            grpc_byte_buffer_destroy(bb);
        free(m);
        st = DUET_ERR_NOMEM;
        goto out_unlock;
    }
    /* Queued, not sent: a unary response goes out with the status in one batch. */
    m->bb = bb;
    m->next = NULL;
    call->q_head = call->q_tail = m;
    call->q_len = 1;
    call->replied = 1;
out_unlock:
    pthread_mutex_unlock(&call->mu);
    return st;
}

void duet_rpc_call_set_error(duet_rpc_call_t *call, const char *fmt, ...)
{
    va_list ap;
    pthread_mutex_lock(&call->mu);
    va_start(ap, fmt);
    vsnprintf(call->error, sizeof call->error, fmt, ap);
    va_end(ap);
    pthread_mutex_unlock(&call->mu);
}

duet_status_t duet_rpc_call_set_trailer(duet_rpc_call_t *call, const char *key, const char *value)
{
    duet_status_t st = DUET_OK;
    if (!key || !key[0] || !value)
        return DUET_ERR_INVALID;
    pthread_mutex_lock(&call->mu);
    if (call->finished || call->n_trailers == TRAILERS_MAX) {
        st = DUET_ERR_INVALID;
    } else {
        grpc_metadata *md = &call->trailers[call->n_trailers++];
        memset(md, 0, sizeof *md);
        md->key = grpc_slice_from_copied_string(key);
        md->value = grpc_slice_from_copied_string(value);
    }
    pthread_mutex_unlock(&call->mu);
    return st;
}

duet_status_t duet_rpc_call_set_retry_after(duet_rpc_call_t *call, int64_t ms)
{
    char v[24];
    snprintf(v, sizeof v, "%lld", (long long)(ms < 0 ? 0 : ms));
    return duet_rpc_call_set_trailer(call, DUET_RPC_RETRY_AFTER_KEY, v);
}

void duet_rpc_call_defer(duet_rpc_call_t *call)
{
    pthread_mutex_lock(&call->mu);
    if (!call->deferred)
        call->refs++;   /* held by call_start until the handler has returned */
    call->deferred = 1;
    pthread_mutex_unlock(&call->mu);
}

void duet_rpc_call_finish(duet_rpc_call_t *call, duet_status_t status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    call_finish_v(call, status, fmt, ap);
    va_end(ap);
}

duet_status_t duet_rpc_stream_write(duet_rpc_stream_t *stream, const ProtobufCMessage *message)
{
    duet_rpc_call_t *c = stream;
    if (atomic_load(&c->cancelled))
        return DUET_ERR_CANCELLED;
    /* Packed before taking the lock, so writers on other threads do not wait on each other's packing. */
    grpc_byte_buffer *bb = duet_rpc__pack(message);
    outmsg_t *m = malloc(sizeof *m);
    if (!bb || !m) {
        if (bb)
            grpc_byte_buffer_destroy(bb);
        free(m);
        return DUET_ERR_NOMEM;
    }
    m->bb = bb;
    m->next = NULL;

    pthread_mutex_lock(&c->mu);
    duet_status_t st = DUET_OK;
    if (c->finished)
        st = DUET_ERR_INVALID;
    else if (atomic_load(&c->cancelled))
        st = DUET_ERR_CANCELLED;
    if (st != DUET_OK) {
        pthread_mutex_unlock(&c->mu);
        grpc_byte_buffer_destroy(bb);
        free(m);
        return st;
    }
    if (c->q_tail)
        c->q_tail->next = m;
    else
        c->q_head = m;
    c->q_tail = m;
    c->q_len++;
    kick(c);
    pthread_mutex_unlock(&c->mu);
    return DUET_OK;
}

void duet_rpc_stream_finish(duet_rpc_stream_t *stream, duet_status_t status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    call_finish_v(stream, status, fmt, ap);
    va_end(ap);
}

size_t duet_rpc_stream_pending(duet_rpc_stream_t *stream)
{
    pthread_mutex_lock(&stream->mu);
    size_t n = stream->q_len;
    pthread_mutex_unlock(&stream->mu);
    return n;
}

int duet_rpc_stream_cancelled(const duet_rpc_stream_t *stream)
{
    return atomic_load(&((duet_rpc_call_t *)stream)->cancelled);
}

void duet_rpc_stream_on_cancel(duet_rpc_stream_t *stream, void (*fn)(void *arg), void *arg)
{
    duet_rpc_call_t *c = stream;
    int now;
    pthread_mutex_lock(&c->mu);
    now = atomic_load(&c->cancelled);
    if (!now) {
        c->on_cancel = fn;
        c->on_cancel_arg = arg;
    }
    pthread_mutex_unlock(&c->mu);
    if (now && fn)
        fn(arg);
}

/* ---- the server ----------------------------------------------------------------------------- */

int duet_rpc__server_serving(const duet_rpc_server_t *server)
{
    return atomic_load(&((duet_rpc_server_t *)server)->serving);
}

int duet_rpc__server_has_service(const duet_rpc_server_t *server, const char *service)
{
    size_t n = strlen(service);
    for (int i = 0; i < server->n_methods; i++) {
        const char *p = server->methods[i].path;
        if (p[0] == '/' && strncmp(p + 1, service, n) == 0 && p[1 + n] == '/')
            return 1;
    }
    return 0;
}

static void on_slot(duet_rpc_server_t *s, slot_t *slot, int success)
{
    int shutting_down;
    if (!success) {
        /* The server is shutting down: this slot will not be armed again. */
        slot_release(slot);
        free(slot);
        return;
    }
    call_start(s, slot);
    slot_release(slot);
    pthread_mutex_lock(&s->mu);
    shutting_down = s->shutting_down;
    pthread_mutex_unlock(&s->mu);
    if (shutting_down || slot_arm(slot) != 0)
        free(slot);
}

static void *cq_thread(void *arg)
{
    duet_rpc_server_t *s = arg;
    tls_on_cq_thread = 1;
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            break;
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        tag_t *tag = ev.tag;
        switch (tag->kind) {
        case TAG_SLOT:       on_slot(s, tag->owner, ev.success); break;
        case TAG_RECV_CLOSE: on_recv_close(tag->owner); break;
        case TAG_SEND:       on_send_done(tag->owner); break;
        case TAG_WAKE:       on_wake(tag->owner); break;
        case TAG_SHUTDOWN:
            pthread_mutex_lock(&s->mu);
            s->shutdown_done = 1;
            pthread_cond_broadcast(&s->cv);
            pthread_mutex_unlock(&s->mu);
            break;
        }
    }
    return NULL;
}

/* Shuts the completion queue down and takes every event left off it (no threads running). */
static void cq_drain_destroy(grpc_completion_queue *cq)
{
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type != GRPC_QUEUE_SHUTDOWN)
        ;
    grpc_completion_queue_destroy(cq);
}

duet_status_t duet_rpc_server_create(const duet_rpc_server_conf_t *conf, duet_rpc_server_t **server_p)
{
    duet_status_t status = DUET_OK;
    duet_rpc_server_t *s;
    grpc_arg args[3];
    grpc_channel_args chargs = { 0, args };
    int n_slots = 0, i;

    if (!conf || !conf->address || conf->n_methods < 0 || (conf->n_methods && !conf->methods))
        return DUET_ERR_INVALID;
    for (i = 0; i < conf->n_methods; i++) {
        const duet_rpc_method_t *m = &conf->methods[i];
        int ok = m->path && m->path[0] == '/' && m->request &&
                 (m->kind == DUET_RPC_UNARY ? m->unary != NULL : m->stream != NULL);
        if (!ok) {
            duet_log_error("rpc: method %d (%s) is incomplete", i, m->path ? m->path : "no path");
            return DUET_ERR_INVALID;
        }
    }

    s = calloc(1, sizeof *s);
    if (!s)
        return DUET_ERR_NOMEM;
    s->n_methods = conf->n_methods + 1;
    s->methods = calloc((size_t)s->n_methods, sizeof *s->methods);
    s->handles = calloc((size_t)s->n_methods, sizeof *s->handles);
    s->n_threads = conf->n_threads > 0 ? conf->n_threads : 2;
    s->threads = calloc((size_t)s->n_threads, sizeof *s->threads);
    if (!s->methods || !s->handles || !s->threads) {
        status = DUET_ERR_NOMEM;
        goto err_free;
    }
    if (conf->n_methods)
        memcpy(s->methods, conf->methods, (size_t)conf->n_methods * sizeof *s->methods);
    s->methods[conf->n_methods] = duet_rpc__health_method(s);
    atomic_store(&s->serving, 1);
    s->t_shutdown = (tag_t){ TAG_SHUTDOWN, s };
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);

    grpc_init();
    /* gRPC turns SO_REUSEPORT on by default, which lets a second server "bind" a taken port. */
    args[chargs.num_args++] = (grpc_arg){ .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_ALLOW_REUSEPORT,
                                          .value.integer = 0 };
    size_t max_msg = conf->max_message_bytes ? conf->max_message_bytes : DUET_RPC_MAX_MESSAGE_DEFAULT;
    int max_msg_int = max_msg > INT_MAX ? INT_MAX : (int)max_msg;
    args[chargs.num_args++] = (grpc_arg){ .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
                                          .value.integer = max_msg_int };
    args[chargs.num_args++] = (grpc_arg){ .type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH,
                                          .value.integer = max_msg_int };
    s->server = grpc_server_create(&chargs, NULL);
    s->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(s->server, s->cq, NULL);
    for (i = 0; i < s->n_methods; i++) {
        s->handles[i] = grpc_server_register_method(s->server, s->methods[i].path, NULL,
                                                    GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
        if (!s->handles[i]) {
            duet_log_error("rpc: method %s registered twice", s->methods[i].path);
            status = DUET_ERR_INVALID;
            goto err_destroy_server;
        }
    }
    grpc_server_credentials *creds = NULL;
    if ((status = duet_rpc__server_creds(conf->tls, &s->pem, &creds)) != DUET_OK)
        goto err_destroy_server;
    s->port = grpc_server_add_http2_port(s->server, conf->address, creds);
    grpc_server_credentials_release(creds);
    if (s->port == 0) {
        duet_log_error("rpc: cannot listen on %s", conf->address);
        status = DUET_ERR_UNAVAILABLE;
        goto err_destroy_server;
    }
    grpc_server_start(s->server);

    /* Slots before threads: a failure here still leaves a server nobody has called. */
    for (i = -1; i < s->n_methods; i++) {
        for (int k = 0; k < (i < 0 ? 1 : SLOTS_PER_METHOD); k++) {
            slot_t *slot = calloc(1, sizeof *slot);
            if (!slot) {
                status = DUET_ERR_NOMEM;
                goto err_shutdown;
            }
            slot->tag = (tag_t){ TAG_SLOT, slot };
            slot->server = s;
            slot->method = i;
            if (slot_arm(slot) != 0) {
                free(slot);
                status = DUET_ERR_INTERNAL;
                goto err_shutdown;
            }
            n_slots++;
        }
    }
    for (i = 0; i < s->n_threads; i++) {
        if (pthread_create(&s->threads[i], NULL, cq_thread, s) != 0) {
            duet_log_error("rpc: cannot start completion-queue thread %d", i);
            if (i == 0) {
                status = DUET_ERR_NOMEM;
                goto err_shutdown;
            }
            /* The threads already running take the server down the ordinary way. */
            s->n_threads = i;
            duet_rpc_server_destroy(s);
            return DUET_ERR_NOMEM;
        }
    }
    *server_p = s;
    return DUET_OK;

err_shutdown:
    /* No thread runs yet: shut down on this one, taking the armed slots back as they fail. */
    grpc_server_shutdown_and_notify(s->server, s->cq, &s->t_shutdown);
    grpc_server_cancel_all_calls(s->server);
    while (n_slots > 0 || !s->shutdown_done) {
        grpc_event ev = grpc_completion_queue_next(s->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        tag_t *tag = ev.tag;
        if (tag->kind == TAG_SHUTDOWN) {
            s->shutdown_done = 1;
        } else {
            slot_release(tag->owner);
            free(tag->owner);
            n_slots--;
        }
    }
err_destroy_server:
    grpc_server_destroy(s->server);
    cq_drain_destroy(s->cq);
    grpc_shutdown();
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    duet_rpc__tls_pem_free(&s->pem);
err_free:
    free(s->threads);
    free(s->handles);
    free(s->methods);
    free(s);
    return status;
}

int duet_rpc_server_port(const duet_rpc_server_t *server)
{
    return server->port;
}

void duet_rpc_server_set_serving(duet_rpc_server_t *server, int serving)
{
    atomic_store(&server->serving, serving ? 1 : 0);
}

void duet_rpc_server_destroy(duet_rpc_server_t *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->shutting_down = 1;
    pthread_mutex_unlock(&s->mu);
    atomic_store(&s->serving, 0);

    grpc_server_shutdown_and_notify(s->server, s->cq, &s->t_shutdown);
    /* Calls a service has just finished (a drain) get a moment to deliver their status; then
     * running calls end: their RECV_CLOSE completes cancelled and on_cancel callbacks run. */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += SHUTDOWN_GRACE_S;
    pthread_mutex_lock(&s->mu);
    while (s->live_calls > 0 && pthread_cond_timedwait(&s->cv, &s->mu, &until) == 0)
        ;
    pthread_mutex_unlock(&s->mu);
    grpc_server_cancel_all_calls(s->server);
    pthread_mutex_lock(&s->mu);
    while (!s->shutdown_done || s->live_calls > 0)
        pthread_cond_wait(&s->cv, &s->mu);
    pthread_mutex_unlock(&s->mu);

    grpc_server_destroy(s->server);
    grpc_completion_queue_shutdown(s->cq);
    for (int i = 0; i < s->n_threads; i++)
        pthread_join(s->threads[i], NULL);
    grpc_completion_queue_destroy(s->cq);
    grpc_shutdown();

    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    duet_rpc__tls_pem_free(&s->pem);
    free(s->threads);
    free(s->handles);
    free(s->methods);
    free(s);
}
