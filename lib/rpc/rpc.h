/* lib/rpc/rpc.h — the one gRPC wrapper of duet (gRPC C core + protobuf-c): a server run from a
 * method table (unary and server-streaming handlers, health check built in) and a client with a
 * channel cache, unary calls and stream reads. The only place duet_status_t meets gRPC codes.
 *
 * Ownership, in one place:
 *  - Requests a handler receives are unpacked by the runtime and freed by it: after a unary
 *    handler returns (or, for a deferred one, after duet_rpc_call_finish), and after a stream's
 *    duet_rpc_stream_finish. Handlers never free them and must not keep pointers into them.
 *  - Messages handed to duet_rpc_call_reply / duet_rpc_stream_write / the client calls are
 *    packed before the function returns: build them on the stack, keep ownership.
 *  - Responses a client call returns are the caller's: free each with
 *    protobuf_c_message_free_unpacked(msg, NULL).
 *  - Every call handed to a handler is finished exactly once by it (unary: by returning, unless
 *    deferred); the server waits for that on destroy.
 */
#ifndef DUET_RPC_RPC_H
#define DUET_RPC_RPC_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/status.h>
#include <protobuf-c/protobuf-c.h>

#include "status.h"

/* ---- status mapping (status_map.c) ---------------------------------------------------------- */

/* INVALID→INVALID_ARGUMENT, UNAUTHENTICATED, EXHAUSTED→RESOURCE_EXHAUSTED, UNAVAILABLE,
 * DEADLINE→DEADLINE_EXCEEDED, CANCELLED, NOT_FOUND, UNSUPPORTED→UNIMPLEMENTED, OK; the rest INTERNAL. */
grpc_status_code duet_rpc_status_to_grpc(duet_status_t status);
/* The inverse; codes with no duet counterpart map to the nearest one (PERMISSION_DENIED →
 * UNAUTHENTICATED, FAILED_PRECONDITION/OUT_OF_RANGE → INVALID, ABORTED → UNAVAILABLE) or INTERNAL. */
duet_status_t    duet_rpc_status_from_grpc(grpc_status_code code);

/* ---- server (server.c, health.c) ------------------------------------------------------------ */

typedef struct duet_rpc_server duet_rpc_server_t;
/* One incoming call. A stream is a call too: every duet_rpc_call_* accessor takes a stream. */
typedef struct duet_rpc_call   duet_rpc_call_t;
typedef struct duet_rpc_call   duet_rpc_stream_t;

typedef enum { DUET_RPC_UNARY, DUET_RPC_SERVER_STREAM } duet_rpc_kind_t;

/* Runs on a completion-queue thread, so it must not block for long. It answers with
 * duet_rpc_call_reply() and returns the status (DUET_OK needs a reply); an error message may be
 * set with duet_rpc_call_set_error(). To answer later from another thread, call
 * duet_rpc_call_defer() and return (the return value is then ignored). */
typedef duet_status_t (*duet_rpc_unary_fn)(duet_rpc_call_t *call, const ProtobufCMessage *request,
                                           void *arg);
/* Runs on a completion-queue thread and should return soon; the stream is written and finished
 * from any thread, now or later. */
typedef void (*duet_rpc_stream_fn)(duet_rpc_stream_t *stream, const ProtobufCMessage *request,
                                   void *arg);

typedef struct {
    const char                        *path;     /* "/duet.v1.Gateway/Generate" */
    duet_rpc_kind_t                    kind;
    const ProtobufCMessageDescriptor  *request;  /* how to unpack the request */
    duet_rpc_unary_fn                  unary;    /* set for DUET_RPC_UNARY */
    duet_rpc_stream_fn                 stream;   /* set for DUET_RPC_SERVER_STREAM */
    void                              *arg;      /* passed to the handler */
} duet_rpc_method_t;

/* The largest message a server or client sends or receives unless told otherwise. The biggest
 * messages duet sends are a prompt (Gateway.Generate with up to ctx prompt_token_ids, or its text)
 * and its relay (Decode.Generate: prompt + generated ids, KV target with one block id per 16
 * tokens), and Complete's reply (text + ids): for a 128k-token context that is ~0.7 MB of varint
 * ids, plus text at up to ~64 bytes a token in the worst case, ~9 MB. 16 MiB covers it with room;
 * gRPC's own 4 MiB does not. A per-service option (--max-message-mb) overrides it. */
#define DUET_RPC_MAX_MESSAGE_DEFAULT ((size_t)16 << 20)

/* Trailing metadata key of the retry hint sent with RESOURCE_EXHAUSTED (milliseconds, decimal). */
#define DUET_RPC_RETRY_AFTER_KEY "retry-after-ms"

/* TLS of a server or a client; every path names a PEM file, read once at create. */
typedef struct {
    const char *cert;         /* certificate chain: the server's (required), a client's (for mTLS) */
    const char *key;          /* its private key */
    const char *ca;           /* CA bundle: a server verifies client certificates with it, a client
                               * the server's; NULL or "": a client uses the system's roots */
    int         client_auth;  /* server: require a client certificate signed by ca (mutual TLS) */
    const char *server_name;  /* client: the name expected in server certificates instead of the
                               * address's host; NULL or "": the host */
} duet_rpc_tls_t;

typedef struct {
    const char              *address;    /* "0.0.0.0:50051"; port 0 picks a free port */
    const duet_rpc_method_t *methods;    /* copied; the strings and descriptors must outlive the server */
    int                      n_methods;
    int                      n_threads;  /* completion-queue threads; 0 means 2 */
    size_t                   max_message_bytes;  /* send and receive limit; 0: DUET_RPC_MAX_MESSAGE_DEFAULT */
    const duet_rpc_tls_t    *tls;        /* NULL: plaintext; else cert and key are required */
} duet_rpc_server_conf_t;

/* Binds, starts the completion-queue threads and answers calls at once, including
 * grpc.health.v1.Health/Check (SERVING). UNAVAILABLE when the address cannot be bound, INVALID
 * when a TLS file cannot be read. */
duet_status_t duet_rpc_server_create(const duet_rpc_server_conf_t *conf, duet_rpc_server_t **server_p);
/* The bound port (the chosen one when the address asked for port 0). */
int           duet_rpc_server_port(const duet_rpc_server_t *server);
/* What Health/Check answers: serving = 0 gives NOT_SERVING (e.g. while draining). Thread-safe. */
void          duet_rpc_server_set_serving(duet_rpc_server_t *server, int serving);
/* Graceful stop: refuses new calls, cancels running ones (their cancel callbacks fire), waits
 * until every handler has finished its call, then frees everything. */
void          duet_rpc_server_destroy(duet_rpc_server_t *server);

/* Request metadata value for a lower-case key ("authorization"), or NULL. Valid for the call. */
const char   *duet_rpc_call_metadata(const duet_rpc_call_t *call, const char *key);
/* The token of an "authorization: Bearer <token>" header, or NULL. Valid for the call. */
const char   *duet_rpc_call_bearer(const duet_rpc_call_t *call);
/* Milliseconds left before the client's deadline (may be <= 0), or INT64_MAX with no deadline. */
int64_t       duet_rpc_call_remaining_ms(const duet_rpc_call_t *call);
/* The method path the call was made to. */
const char   *duet_rpc_call_path(const duet_rpc_call_t *call);

/* Unary: packs the response (call once). NOMEM, or INVALID when already replied or on a stream. */
duet_status_t duet_rpc_call_reply(duet_rpc_call_t *call, const ProtobufCMessage *response);
/* The message sent with a non-OK status; printf-style. */
void          duet_rpc_call_set_error(duet_rpc_call_t *call, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Adds trailing metadata sent with the final status (any status, OK included); key lower case,
 * value printable ASCII; both copied. At most 4 per call (INVALID beyond, or after finish). Call
 * before the call is finished (for a unary handler: before returning). */
duet_status_t duet_rpc_call_set_trailer(duet_rpc_call_t *call, const char *key, const char *value);
/* The retry hint of a RESOURCE_EXHAUSTED answer: trailer DUET_RPC_RETRY_AFTER_KEY = ms. */
duet_status_t duet_rpc_call_set_retry_after(duet_rpc_call_t *call, int64_t ms);
/* Unary: the handler answers later, from any thread, with duet_rpc_call_reply (when OK) and
 * then duet_rpc_call_finish. */
void          duet_rpc_call_defer(duet_rpc_call_t *call);
/* Ends a deferred unary call; the call and its request are invalid afterwards. fmt may be NULL. */
void          duet_rpc_call_finish(duet_rpc_call_t *call, duet_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Streams: thread-safe, any thread. write packs the message and queues it (messages go out in
 * order, one at a time; the queue is unbounded). CANCELLED once the client has gone or the
 * deadline passed; INVALID after finish. */
duet_status_t duet_rpc_stream_write(duet_rpc_stream_t *stream, const ProtobufCMessage *message);
/* Sends the queued messages, then the status (fmt may be NULL). Call exactly once, also after
 * cancellation; the stream and its request are invalid afterwards. */
void          duet_rpc_stream_finish(duet_rpc_stream_t *stream, duet_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Messages written and not yet handed to gRPC: a slow client shows here (the caller decides
 * whether to wait or give up; the runtime never drops a message of a live stream). */
size_t        duet_rpc_stream_pending(duet_rpc_stream_t *stream);
/* 1 once the client cancelled, the deadline passed or the server is shutting down. */
int           duet_rpc_stream_cancelled(const duet_rpc_stream_t *stream);
/* fn(arg) runs once, on a completion-queue thread, when the stream is cancelled (at once, on
 * the calling thread, if it already is); it must not block and must not free the stream (finish
 * it instead). One per stream; call before finish. Also works on deferred unary calls. */
void          duet_rpc_stream_on_cancel(duet_rpc_stream_t *stream, void (*fn)(void *arg), void *arg);

/* ---- client (client.c) ---------------------------------------------------------------------- */

typedef struct duet_rpc_client        duet_rpc_client_t;
typedef struct duet_rpc_client_stream duet_rpc_client_stream_t;

typedef struct {
    const char *key;    /* lower case, e.g. "authorization" */
    const char *value;
} duet_rpc_metadata_t;

typedef struct {
    int64_t                    timeout_ms;  /* deadline from now; 0: none */
    const duet_rpc_metadata_t *metadata;   /* unary calls take at most 16 */
    int                        n_metadata;
    char                      *error;       /* optional: receives the status message on failure */
    size_t                     error_size;
    int64_t                   *retry_after_ms;  /* optional: the server's retry-after-ms trailer
                                                 * of a unary call, -1 when it sent none */
} duet_rpc_opts_t;

typedef struct {
    const duet_rpc_tls_t *tls;            /* NULL: plaintext channels; else TLS (cert + key: mTLS) */
    size_t                max_message_bytes;  /* 0: DUET_RPC_MAX_MESSAGE_DEFAULT */
} duet_rpc_client_conf_t;

/* A client holds one channel per address, created on first use and kept until destroy.
 * Thread-safe: any number of threads may call through one client. The plain create makes
 * plaintext channels with the default message limit. */
duet_status_t duet_rpc_client_create(duet_rpc_client_t **client_p);
/* INVALID when a TLS file cannot be read; conf may be NULL. */
duet_status_t duet_rpc_client_create_conf(const duet_rpc_client_conf_t *conf, duet_rpc_client_t **client_p);
/* All streams opened through the client must be closed first. */
void          duet_rpc_client_destroy(duet_rpc_client_t *client);

/* One unary call; blocks until the answer, the deadline or a failure. Fails fast: an
 * unreachable address gives UNAVAILABLE in milliseconds. On success *response_p is the
 * unpacked response (caller frees); on failure the mapped status (FORMAT when the response
 * does not unpack) and opts->error holds the message. opts may be NULL. */
duet_status_t duet_rpc_client_unary(duet_rpc_client_t *client, const char *address, const char *path,
                                    const ProtobufCMessage *request,
                                    const ProtobufCMessageDescriptor *response_type,
                                    const duet_rpc_opts_t *opts, ProtobufCMessage **response_p);

/* Opens a server-streaming call (the request is sent at once). Open itself does not wait for
 * the server: a failure to connect shows in the first read. */
duet_status_t duet_rpc_client_stream_open(duet_rpc_client_t *client, const char *address,
                                          const char *path, const ProtobufCMessage *request,
                                          const ProtobufCMessageDescriptor *response_type,
                                          const duet_rpc_opts_t *opts,
                                          duet_rpc_client_stream_t **stream_p);
/* Blocks for the next message. DUET_OK with *message_p set (caller frees) for a message;
 * DUET_OK with *message_p NULL when the stream ended with OK; otherwise the mapped final status
 * (see duet_rpc_client_stream_error). Call from one thread at a time. */
duet_status_t duet_rpc_client_stream_read(duet_rpc_client_stream_t *stream, ProtobufCMessage **message_p);
/* The final status message once a read returned an error ("" before). */
const char   *duet_rpc_client_stream_error(const duet_rpc_client_stream_t *stream);
/* The retry-after-ms trailer once a read returned the final status; -1 when none was sent. */
int64_t       duet_rpc_client_stream_retry_after_ms(const duet_rpc_client_stream_t *stream);
/* Cancels the call; any thread, also while another thread is blocked in read (which then
 * returns CANCELLED). */
void          duet_rpc_client_stream_cancel(duet_rpc_client_stream_t *stream);
/* Cancels the call if it is still running and frees the stream. */
void          duet_rpc_client_stream_close(duet_rpc_client_stream_t *stream);

#endif
