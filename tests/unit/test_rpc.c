/* tests/unit/test_rpc.c — lib/rpc over real loopback gRPC: unary and streaming calls with the duet
 * protos, writes from other threads, cancellation, deadlines, status mapping, health, fail-fast
 * on an unreachable address, many concurrent streams and shutdown with calls still running. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "duet/v1/decode.pb-c.h"
#include "duet/v1/gateway.pb-c.h"
#include "duet/v1/scheduler.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "rpc.h"

#define GEN_PATH    "/duet.v1.Gateway/Generate"
#define TOK_PATH    "/duet.v1.Gateway/Tokenize"
#define ROUTE_PATH  "/duet.v1.Scheduler/Route"
#define DECODE_PATH "/duet.v1.Decode/Generate"
#define HEALTH_PATH "/grpc.health.v1.Health/Check"
#define INFO_PATH   "/duet.v1.Gateway/ModelInfo"

/* ---- handlers ------------------------------------------------------------------------------- */

/* Tokenize echoes each byte of the text as a token; it also reports what it saw of the call. */
static char        seen_bearer[64];
static atomic_long seen_remaining_ms;

static duet_status_t tokenize(duet_rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    const Duet__V1__TokenizeRequest *req = (const void *)request;
    Duet__V1__TokenizeResponse resp = DUET__V1__TOKENIZE_RESPONSE__INIT;
    uint32_t ids[256];
    const char *bearer = duet_rpc_call_bearer(call);

    snprintf(seen_bearer, sizeof seen_bearer, "%s", bearer ? bearer : "");
    atomic_store(&seen_remaining_ms, (long)duet_rpc_call_remaining_ms(call));
    if (!req->text || !req->text[0]) {
        duet_rpc_call_set_error(call, "text: must not be empty");
        return DUET_ERR_INVALID;
    }
    if (strcmp(req->text, "busy") == 0) {
        duet_rpc_call_set_retry_after(call, 1234);
        duet_rpc_call_set_error(call, "busy; retry after 1234 ms");
        return DUET_ERR_EXHAUSTED;
    }
    size_t n = strlen(req->text);
    if (n > 256) {
        duet_rpc_call_set_error(call, "text: longer than 256 bytes");
        return DUET_ERR_EXHAUSTED;
    }
    for (size_t i = 0; i < n; i++)
        ids[i] = (unsigned char)req->text[i];
    resp.n_token_ids = n;
    resp.token_ids = ids;
    return duet_rpc_call_reply(call, &resp.base);
}

/* Route never answers by itself: it defers and ends only when cancelled (deadline test). */
static atomic_int route_cancelled;

static void route_on_cancel(void *arg)
{
    atomic_store(&route_cancelled, 1);
    duet_rpc_call_finish(arg, DUET_ERR_CANCELLED, "gave up");
}

static duet_status_t route(duet_rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    duet_rpc_call_defer(call);
    duet_rpc_stream_on_cancel(call, route_on_cancel, call);
    return DUET_OK;
}

/* ModelInfo answers later, from a thread of its own (a deferred unary call). */
static pthread_t info_thread;
static atomic_int info_started;

static void *info_main(void *arg)
{
    Duet__V1__ModelInfoResponse resp = DUET__V1__MODEL_INFO_RESPONSE__INIT;
    usleep(20000);
    resp.model_id = "smollm2-135m";
    resp.vocab_size = 49152;
    duet_rpc_call_reply(arg, &resp.base);
    duet_rpc_call_finish(arg, DUET_OK, NULL);
    return NULL;
}

static duet_status_t model_info(duet_rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    duet_rpc_call_defer(call);
    if (pthread_create(&info_thread, NULL, info_main, call) != 0) {
        duet_rpc_call_finish(call, DUET_ERR_EXHAUSTED, "no thread");
        return DUET_OK;
    }
    atomic_store(&info_started, 1);
    return DUET_OK;
}

/* Gateway.Generate: a writer thread per stream sends max_tokens messages, token i = i. */
typedef struct {
    duet_rpc_stream_t *stream;
    uint32_t           n;
} writer_t;

static pthread_mutex_t writers_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_t       writers[64];
static int             n_writers;
static atomic_int      writer_failures;

static void *writer_main(void *arg)
{
    writer_t *w = arg;
    for (uint32_t i = 0; i < w->n; i++) {
        Duet__V1__GenerateResponse r = DUET__V1__GENERATE_RESPONSE__INIT;
        uint32_t tok = i;
        r.n_token_ids = 1;
        r.token_ids = &tok;
        r.text = "x";
        if (i + 1 == w->n)
            r.finish_reason = DUET__V1__FINISH_REASON__FINISH_REASON_LENGTH;
        if (duet_rpc_stream_write(w->stream, &r.base) != DUET_OK)
            atomic_fetch_add(&writer_failures, 1);
    }
    duet_rpc_stream_finish(w->stream, DUET_OK, NULL);
    free(w);
    return NULL;
}

static void generate(duet_rpc_stream_t *stream, const ProtobufCMessage *request, void *arg)
{
    const Duet__V1__GenerateRequest *req = (const void *)request;
    writer_t *w;
    int ok = 0;

    if (req->request_id && strcmp(req->request_id, "busy") == 0) {
        duet_rpc_call_set_retry_after(stream, 250);
        duet_rpc_stream_finish(stream, DUET_ERR_EXHAUSTED, "busy; retry after 250 ms");
        return;
    }
    w = malloc(sizeof *w);
    if (w) {
        w->stream = stream;
        w->n = req->stop ? req->stop->max_tokens : 0;
        pthread_mutex_lock(&writers_mu);
        if (n_writers < 64 && pthread_create(&writers[n_writers], NULL, writer_main, w) == 0) {
            n_writers++;
            ok = 1;
        }
        pthread_mutex_unlock(&writers_mu);
    }
    if (!ok) {
        free(w);
        duet_rpc_stream_finish(stream, DUET_ERR_EXHAUSTED, "no writer thread");
    }
}

static void writers_join(void)
{
    pthread_mutex_lock(&writers_mu);
    for (int i = 0; i < n_writers; i++)
        pthread_join(writers[i], NULL);
    n_writers = 0;
    pthread_mutex_unlock(&writers_mu);
}

/* Decode.Generate: one token, then waits for the client to go; finishes from on_cancel. */
static atomic_int decode_cancelled;

static void decode_on_cancel(void *arg)
{
    atomic_store(&decode_cancelled, 1);
    duet_rpc_stream_finish(arg, DUET_ERR_CANCELLED, NULL);
}

static void decode(duet_rpc_stream_t *stream, const ProtobufCMessage *request, void *arg)
{
    Duet__V1__DecodeResponse r = DUET__V1__DECODE_RESPONSE__INIT;
    uint32_t tok = 7;
    r.n_token_ids = 1;
    r.token_ids = &tok;
    duet_rpc_stream_write(stream, &r.base);
    duet_rpc_stream_on_cancel(stream, decode_on_cancel, stream);
}

static const duet_rpc_method_t methods[] = {
    { .path = TOK_PATH, .kind = DUET_RPC_UNARY,
      .request = &duet__v1__tokenize_request__descriptor, .unary = tokenize },
    { .path = INFO_PATH, .kind = DUET_RPC_UNARY,
      .request = &duet__v1__model_info_request__descriptor, .unary = model_info },
    { .path = ROUTE_PATH, .kind = DUET_RPC_UNARY,
      .request = &duet__v1__route_request__descriptor, .unary = route },
    { .path = GEN_PATH, .kind = DUET_RPC_SERVER_STREAM,
      .request = &duet__v1__generate_request__descriptor, .stream = generate },
    { .path = DECODE_PATH, .kind = DUET_RPC_SERVER_STREAM,
      .request = &duet__v1__decode_request__descriptor, .stream = decode },
};

static duet_rpc_server_t *server;
static duet_rpc_client_t *client;
static char               addr[64];

static void wait_for(atomic_int *flag)
{
    for (int i = 0; i < 500 && !atomic_load(flag); i++)
        usleep(10000);
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void test_status_map_round_trip(void)
{
    duet_status_t all[] = { DUET_OK, DUET_ERR_INVALID, DUET_ERR_UNAUTHENTICATED, DUET_ERR_EXHAUSTED,
                            DUET_ERR_UNAVAILABLE, DUET_ERR_DEADLINE, DUET_ERR_CANCELLED,
                            DUET_ERR_NOT_FOUND, DUET_ERR_UNSUPPORTED, DUET_ERR_INTERNAL };
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        CHECK_EQ_INT(duet_rpc_status_from_grpc(duet_rpc_status_to_grpc(all[i])), all[i]);
    CHECK_EQ_INT(duet_rpc_status_to_grpc(DUET_ERR_INVALID), GRPC_STATUS_INVALID_ARGUMENT);
    CHECK_EQ_INT(duet_rpc_status_to_grpc(DUET_ERR_EXHAUSTED), GRPC_STATUS_RESOURCE_EXHAUSTED);
    CHECK_EQ_INT(duet_rpc_status_to_grpc(DUET_ERR_UNSUPPORTED), GRPC_STATUS_UNIMPLEMENTED);
    CHECK_EQ_INT(duet_rpc_status_to_grpc(DUET_ERR_NOMEM), GRPC_STATUS_INTERNAL);
    CHECK_EQ_INT(duet_rpc_status_to_grpc(DUET_ERR_FORMAT), GRPC_STATUS_INTERNAL);
    CHECK_EQ_INT(duet_rpc_status_from_grpc(GRPC_STATUS_PERMISSION_DENIED), DUET_ERR_UNAUTHENTICATED);
    CHECK_EQ_INT(duet_rpc_status_from_grpc(GRPC_STATUS_DATA_LOSS), DUET_ERR_INTERNAL);
}

static void test_unary_echo(void)
{
    Duet__V1__TokenizeRequest req = DUET__V1__TOKENIZE_REQUEST__INIT;
    duet_rpc_metadata_t md[] = { { "authorization", "Bearer sk-test-123" } };
    duet_rpc_opts_t opts = { .timeout_ms = 5000, .metadata = md, .n_metadata = 1 };
    ProtobufCMessage *msg = NULL;

    req.text = "hi!";
    duet_status_t st = duet_rpc_client_unary(client, addr, TOK_PATH, &req.base,
                                             &duet__v1__tokenize_response__descriptor, &opts, &msg);
    CHECK_EQ_INT(st, DUET_OK);
    if (st != DUET_OK)
        return;
    Duet__V1__TokenizeResponse *resp = (void *)msg;
    CHECK_EQ_INT(resp->n_token_ids, 3);
    if (resp->n_token_ids == 3) {
        CHECK_EQ_INT(resp->token_ids[0], 'h');
        CHECK_EQ_INT(resp->token_ids[2], '!');
    }
    protobuf_c_message_free_unpacked(msg, NULL);
    CHECK(strcmp(seen_bearer, "sk-test-123") == 0);
    long left = atomic_load(&seen_remaining_ms);
    CHECK_MSG(left > 0 && left <= 5000, "remaining %ld ms", left);

    /* Without a deadline the handler sees none. */
    st = duet_rpc_client_unary(client, addr, TOK_PATH, &req.base,
                               &duet__v1__tokenize_response__descriptor, NULL, &msg);
    CHECK_EQ_INT(st, DUET_OK);
    if (st == DUET_OK)
        protobuf_c_message_free_unpacked(msg, NULL);
    CHECK_EQ_INT(atomic_load(&seen_remaining_ms), INT64_MAX);
    CHECK(seen_bearer[0] == '\0');
}

static void test_deferred_unary_from_thread(void)
{
    Duet__V1__ModelInfoRequest req = DUET__V1__MODEL_INFO_REQUEST__INIT;
    duet_rpc_opts_t opts = { .timeout_ms = 5000 };
    ProtobufCMessage *msg = NULL;

    duet_status_t st = duet_rpc_client_unary(client, addr, INFO_PATH, &req.base,
                                             &duet__v1__model_info_response__descriptor, &opts, &msg);
    CHECK_EQ_INT(st, DUET_OK);
    if (st == DUET_OK) {
        Duet__V1__ModelInfoResponse *r = (void *)msg;
        CHECK(strcmp(r->model_id, "smollm2-135m") == 0);
        CHECK_EQ_INT(r->vocab_size, 49152);
        protobuf_c_message_free_unpacked(msg, NULL);
    }
    if (atomic_load(&info_started))
        pthread_join(info_thread, NULL);
}

static void test_error_status_both_ways(void)
{
    Duet__V1__TokenizeRequest req = DUET__V1__TOKENIZE_REQUEST__INIT;
    char err[256] = "";
    duet_rpc_opts_t opts = { .timeout_ms = 5000, .error = err, .error_size = sizeof err };
    ProtobufCMessage *msg = NULL;

    req.text = "";
    duet_status_t st = duet_rpc_client_unary(client, addr, TOK_PATH, &req.base,
                                             &duet__v1__tokenize_response__descriptor, &opts, &msg);
    CHECK_EQ_INT(st, DUET_ERR_INVALID);
    CHECK(msg == NULL);
    CHECK(strcmp(err, "text: must not be empty") == 0);

    char big[300];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    req.text = big;
    st = duet_rpc_client_unary(client, addr, TOK_PATH, &req.base,
                               &duet__v1__tokenize_response__descriptor, &opts, &msg);
    CHECK_EQ_INT(st, DUET_ERR_EXHAUSTED);
    CHECK_STR_CONTAINS(err, "longer than 256");

    /* A method nobody registered. */
    st = duet_rpc_client_unary(client, addr, "/duet.v1.Gateway/Nope", &req.base,
                               &duet__v1__tokenize_response__descriptor, &opts, &msg);
    CHECK_EQ_INT(st, DUET_ERR_UNSUPPORTED);
}

/* RESOURCE_EXHAUSTED carries its retry hint as trailing metadata, unary and streaming. */
static void test_retry_after_trailer(void)
{
    Duet__V1__TokenizeRequest req = DUET__V1__TOKENIZE_REQUEST__INIT;
    char err[256] = "";
    int64_t retry = 0;
    duet_rpc_opts_t opts = { .timeout_ms = 5000, .error = err, .error_size = sizeof err,
                             .retry_after_ms = &retry };
    ProtobufCMessage *msg = NULL;

    req.text = "busy";
    CHECK_EQ_INT(duet_rpc_client_unary(client, addr, TOK_PATH, &req.base,
                                       &duet__v1__tokenize_response__descriptor, &opts, &msg),
                 DUET_ERR_EXHAUSTED);
    CHECK_EQ_INT(retry, 1234);
    CHECK_STR_CONTAINS(err, "retry after 1234 ms");
    req.text = "ok";
    CHECK_EQ_INT(duet_rpc_client_unary(client, addr, TOK_PATH, &req.base,
                                       &duet__v1__tokenize_response__descriptor, &opts, &msg),
                 DUET_OK);
    CHECK_EQ_INT(retry, -1);   /* none sent */
    if (msg)
        protobuf_c_message_free_unpacked(msg, NULL);

    Duet__V1__GenerateRequest g = DUET__V1__GENERATE_REQUEST__INIT;
    duet_rpc_client_stream_t *s = NULL;
    g.request_id = "busy";
    CHECK_EQ_INT(duet_rpc_client_stream_open(client, addr, GEN_PATH, &g.base,
                                             &duet__v1__generate_response__descriptor, NULL, &s),
                 DUET_OK);
    if (!s)
        return;
    CHECK_EQ_INT(duet_rpc_client_stream_retry_after_ms(s), -1);   /* not ended yet */
    msg = NULL;
    CHECK_EQ_INT(duet_rpc_client_stream_read(s, &msg), DUET_ERR_EXHAUSTED);
    CHECK_EQ_INT(duet_rpc_client_stream_retry_after_ms(s), 250);
    CHECK_STR_CONTAINS(duet_rpc_client_stream_error(s), "retry after 250 ms");
    duet_rpc_client_stream_close(s);
}

/* The default message limit is duet's 16 MiB, not gRPC's 4 MiB, both ways; a server and client
 * configured smaller refuse a bigger message with RESOURCE_EXHAUSTED. */
static void test_message_size_limits(void)
{
    size_t big_n = 6u << 20;   /* over gRPC's default, under duet's */
    char *big = malloc(big_n + 1);
    char err[256] = "";
    duet_rpc_opts_t opts = { .timeout_ms = 10000, .error = err, .error_size = sizeof err };
    ProtobufCMessage *msg = NULL;
    Duet__V1__TokenizeRequest req = DUET__V1__TOKENIZE_REQUEST__INIT;
    if (!big)
        return;
    memset(big, 'a', big_n);
    big[big_n] = '\0';
    req.text = big;
    /* Received whole: the handler itself refuses it for its length. */
    CHECK_EQ_INT(duet_rpc_client_unary(client, addr, TOK_PATH, &req.base,
                                       &duet__v1__tokenize_response__descriptor, &opts, &msg),
                 DUET_ERR_EXHAUSTED);
    CHECK_STR_CONTAINS(err, "longer than 256");

    duet_rpc_server_conf_t sc = { .address = "127.0.0.1:0", .methods = methods, .n_methods = 1,
                                  .max_message_bytes = 1u << 20 };
    duet_rpc_server_t *small = NULL;
    duet_rpc_client_t *small_client = NULL;
    duet_rpc_client_conf_t cc = { .max_message_bytes = 1u << 20 };
    CHECK_EQ_INT(duet_rpc_server_create(&sc, &small), DUET_OK);
    CHECK_EQ_INT(duet_rpc_client_create_conf(&cc, &small_client), DUET_OK);
    if (small && small_client) {
        char small_addr[64];
        snprintf(small_addr, sizeof small_addr, "127.0.0.1:%d", duet_rpc_server_port(small));
        big[2u << 20] = '\0';
        /* The big client sends it; the small server refuses to receive it. */
        err[0] = '\0';
        CHECK_EQ_INT(duet_rpc_client_unary(client, small_addr, TOK_PATH, &req.base,
                                           &duet__v1__tokenize_response__descriptor, &opts, &msg),
                     DUET_ERR_EXHAUSTED);
        CHECK_MSG(strstr(err, "longer than 256") == NULL, "the handler saw it: %s", err);
        /* The small client refuses to send it. */
        err[0] = '\0';
        CHECK_EQ_INT(duet_rpc_client_unary(small_client, addr, TOK_PATH, &req.base,
                                           &duet__v1__tokenize_response__descriptor, &opts, &msg),
                     DUET_ERR_EXHAUSTED);
        CHECK_MSG(strstr(err, "longer than 256") == NULL, "the handler saw it: %s", err);
        fprintf(stderr, "  over the limit: \"%s\"\n", err);
    }
    duet_rpc_client_destroy(small_client);
    duet_rpc_server_destroy(small);
    free(big);
}

static void test_malformed_request_is_invalid(void)
{
    /* A TokenizeRequest whose field 1 (string) is sent as a varint: it does not parse. */
    Duet__V1__RouteRequest bad = DUET__V1__ROUTE_REQUEST__INIT;
    char err[256] = "";
    duet_rpc_opts_t opts = { .timeout_ms = 5000, .error = err, .error_size = sizeof err };
    ProtobufCMessage *msg = NULL;
    bad.request_id = NULL;
    bad.prompt_tokens = 5;  /* field 2 varint, where TokenizeRequest has repeated messages */
    duet_status_t st = duet_rpc_client_unary(client, addr, TOK_PATH, &bad.base,
                                             &duet__v1__tokenize_response__descriptor, &opts, &msg);
    CHECK_EQ_INT(st, DUET_ERR_INVALID);
    CHECK_STR_CONTAINS(err, "does not parse");
}

static void test_health(void)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *msg = NULL;
    duet_rpc_opts_t opts = { .timeout_ms = 5000 };

    duet_status_t st = duet_rpc_client_unary(client, addr, HEALTH_PATH, &req.base,
                                             &grpc__health__v1__health_check_response__descriptor,
                                             &opts, &msg);
    CHECK_EQ_INT(st, DUET_OK);
    if (st == DUET_OK) {
        CHECK_EQ_INT(((Grpc__Health__V1__HealthCheckResponse *)msg)->status,
                     GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
        protobuf_c_message_free_unpacked(msg, NULL);
    }

    req.service = "duet.v1.Gateway";
    duet_rpc_server_set_serving(server, 0);
    st = duet_rpc_client_unary(client, addr, HEALTH_PATH, &req.base,
                               &grpc__health__v1__health_check_response__descriptor, &opts, &msg);
    duet_rpc_server_set_serving(server, 1);
    CHECK_EQ_INT(st, DUET_OK);
    if (st == DUET_OK) {
        CHECK_EQ_INT(((Grpc__Health__V1__HealthCheckResponse *)msg)->status,
                     GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
        protobuf_c_message_free_unpacked(msg, NULL);
    }

    req.service = "duet.v1.Nothing";
    st = duet_rpc_client_unary(client, addr, HEALTH_PATH, &req.base,
                               &grpc__health__v1__health_check_response__descriptor, &opts, &msg);
    CHECK_EQ_INT(st, DUET_ERR_NOT_FOUND);
}

static void test_stream_100_from_thread(void)
{
    Duet__V1__GenerateRequest req = DUET__V1__GENERATE_REQUEST__INIT;
    Duet__V1__StopParams stop = DUET__V1__STOP_PARAMS__INIT;
    duet_rpc_opts_t opts = { .timeout_ms = 10000 };
    duet_rpc_client_stream_t *s = NULL;
    ProtobufCMessage *msg;
    int n = 0, in_order = 1, last_reason = -1;
    duet_status_t st;

    req.prompt = "hello";
    stop.max_tokens = 100;
    req.stop = &stop;
    CHECK_EQ_INT(duet_rpc_client_stream_open(client, addr, GEN_PATH, &req.base,
                                             &duet__v1__generate_response__descriptor, &opts, &s),
                 DUET_OK);
    if (!s)
        return;
    while ((st = duet_rpc_client_stream_read(s, &msg)) == DUET_OK && msg) {
        Duet__V1__GenerateResponse *r = (void *)msg;
        if (r->n_token_ids != 1 || r->token_ids[0] != (uint32_t)n)
            in_order = 0;
        last_reason = r->finish_reason;
        n++;
        protobuf_c_message_free_unpacked(msg, NULL);
    }
    CHECK_EQ_INT(st, DUET_OK);
    CHECK_EQ_INT(n, 100);
    CHECK(in_order);
    CHECK_EQ_INT(last_reason, DUET__V1__FINISH_REASON__FINISH_REASON_LENGTH);
    /* Reading past the end keeps saying "ended, OK". */
    CHECK_EQ_INT(duet_rpc_client_stream_read(s, &msg), DUET_OK);
    CHECK(msg == NULL);
    duet_rpc_client_stream_close(s);
    writers_join();
    CHECK_EQ_INT(atomic_load(&writer_failures), 0);
}

static void test_client_cancel_seen_by_server(void)
{
    Duet__V1__DecodeRequest req = DUET__V1__DECODE_REQUEST__INIT;
    duet_rpc_client_stream_t *s = NULL;
    ProtobufCMessage *msg = NULL;

    atomic_store(&decode_cancelled, 0);
    req.request_id = "r1";
    CHECK_EQ_INT(duet_rpc_client_stream_open(client, addr, DECODE_PATH, &req.base,
                                             &duet__v1__decode_response__descriptor, NULL, &s),
                 DUET_OK);
    if (!s)
        return;
    CHECK_EQ_INT(duet_rpc_client_stream_read(s, &msg), DUET_OK);
    CHECK(msg != NULL);
    if (msg) {
        CHECK_EQ_INT(((Duet__V1__DecodeResponse *)msg)->token_ids[0], 7);
        protobuf_c_message_free_unpacked(msg, NULL);
    }
    duet_rpc_client_stream_cancel(s);
    CHECK_EQ_INT(duet_rpc_client_stream_read(s, &msg), DUET_ERR_CANCELLED);
    duet_rpc_client_stream_close(s);
    wait_for(&decode_cancelled);
    CHECK(atomic_load(&decode_cancelled));
}

static void test_deadline_exceeded(void)
{
    Duet__V1__RouteRequest req = DUET__V1__ROUTE_REQUEST__INIT;
    duet_rpc_opts_t opts = { .timeout_ms = 100 };
    ProtobufCMessage *msg = NULL;

    atomic_store(&route_cancelled, 0);
    req.request_id = "r2";
    duet_status_t st = duet_rpc_client_unary(client, addr, ROUTE_PATH, &req.base,
                                             &duet__v1__route_response__descriptor, &opts, &msg);
    CHECK_EQ_INT(st, DUET_ERR_DEADLINE);
    wait_for(&route_cancelled);
    CHECK(atomic_load(&route_cancelled));

    /* A stream whose deadline passes mid-way: the read ends with DEADLINE. */
    Duet__V1__DecodeRequest dreq = DUET__V1__DECODE_REQUEST__INIT;
    duet_rpc_client_stream_t *s = NULL;
    atomic_store(&decode_cancelled, 0);
    CHECK_EQ_INT(duet_rpc_client_stream_open(client, addr, DECODE_PATH, &dreq.base,
                                             &duet__v1__decode_response__descriptor, &opts, &s),
                 DUET_OK);
    if (!s)
        return;
    st = duet_rpc_client_stream_read(s, &msg);
    if (st == DUET_OK && msg) {
        protobuf_c_message_free_unpacked(msg, NULL);
        st = duet_rpc_client_stream_read(s, &msg);
    }
    CHECK_EQ_INT(st, DUET_ERR_DEADLINE);
    duet_rpc_client_stream_close(s);
    wait_for(&decode_cancelled);
    CHECK(atomic_load(&decode_cancelled));
}

static void test_unreachable_fails_fast(void)
{
    Duet__V1__TokenizeRequest req = DUET__V1__TOKENIZE_REQUEST__INIT;
    duet_rpc_opts_t opts = { .timeout_ms = 30000 };  /* fail fast means well before this */
    ProtobufCMessage *msg = NULL;
    char dead[64];

    /* A port that was just free: bind a server, note its port, destroy it. */
    duet_rpc_server_t *tmp = NULL;
    duet_rpc_server_conf_t conf = { .address = "127.0.0.1:0", .n_threads = 1 };
    CHECK_EQ_INT(duet_rpc_server_create(&conf, &tmp), DUET_OK);
    if (!tmp)
        return;
    snprintf(dead, sizeof dead, "127.0.0.1:%d", duet_rpc_server_port(tmp));
    duet_rpc_server_destroy(tmp);

    req.text = "x";
    duet_status_t st = duet_rpc_client_unary(client, dead, TOK_PATH, &req.base,
                                             &duet__v1__tokenize_response__descriptor, &opts, &msg);
    CHECK_EQ_INT(st, DUET_ERR_UNAVAILABLE);

    duet_rpc_client_stream_t *s = NULL;
    Duet__V1__GenerateRequest g = DUET__V1__GENERATE_REQUEST__INIT;
    CHECK_EQ_INT(duet_rpc_client_stream_open(client, dead, GEN_PATH, &g.base,
                                             &duet__v1__generate_response__descriptor, &opts, &s),
                 DUET_OK);
    if (s) {
        CHECK_EQ_INT(duet_rpc_client_stream_read(s, &msg), DUET_ERR_UNAVAILABLE);
        duet_rpc_client_stream_close(s);
    }
}

static void test_bind_taken_port_is_unavailable(void)
{
    duet_rpc_server_t *tmp = NULL;
    duet_rpc_server_conf_t conf = { .address = addr, .n_threads = 1 };
    CHECK_EQ_INT(duet_rpc_server_create(&conf, &tmp), DUET_ERR_UNAVAILABLE);
    CHECK(tmp == NULL);
}

#define N_CONCURRENT 32
#define PER_STREAM   50

static atomic_int concurrent_ok;

static void *stream_client_main(void *arg)
{
    Duet__V1__GenerateRequest req = DUET__V1__GENERATE_REQUEST__INIT;
    Duet__V1__StopParams stop = DUET__V1__STOP_PARAMS__INIT;
    duet_rpc_opts_t opts = { .timeout_ms = 60000 };
    duet_rpc_client_stream_t *s = NULL;
    ProtobufCMessage *msg;
    duet_status_t st;
    int n = 0;

    stop.max_tokens = PER_STREAM;
    req.stop = &stop;
    if (duet_rpc_client_stream_open(client, addr, GEN_PATH, &req.base,
                                    &duet__v1__generate_response__descriptor, &opts, &s) != DUET_OK)
        return NULL;
    while ((st = duet_rpc_client_stream_read(s, &msg)) == DUET_OK && msg) {
        n++;
        protobuf_c_message_free_unpacked(msg, NULL);
    }
    duet_rpc_client_stream_close(s);
    if (st == DUET_OK && n == PER_STREAM)
        atomic_fetch_add(&concurrent_ok, 1);
    return NULL;
}

static void test_32_concurrent_streams(void)
{
    pthread_t t[N_CONCURRENT];
    int started = 0;
    for (int i = 0; i < N_CONCURRENT; i++)
        if (pthread_create(&t[i], NULL, stream_client_main, NULL) == 0)
            started++;
    CHECK_EQ_INT(started, N_CONCURRENT);
    for (int i = 0; i < started; i++)
        pthread_join(t[i], NULL);
    CHECK_EQ_INT(atomic_load(&concurrent_ok), N_CONCURRENT);
    writers_join();
    CHECK_EQ_INT(atomic_load(&writer_failures), 0);
}

/* Last: destroying the server with a stream still running cancels it and returns. */
static void test_shutdown_with_open_stream(void)
{
    Duet__V1__DecodeRequest req = DUET__V1__DECODE_REQUEST__INIT;
    duet_rpc_client_stream_t *s = NULL;
    ProtobufCMessage *msg = NULL;

    atomic_store(&decode_cancelled, 0);
    CHECK_EQ_INT(duet_rpc_client_stream_open(client, addr, DECODE_PATH, &req.base,
                                             &duet__v1__decode_response__descriptor, NULL, &s),
                 DUET_OK);
    if (!s)
        return;
    CHECK_EQ_INT(duet_rpc_client_stream_read(s, &msg), DUET_OK);
    if (msg)
        protobuf_c_message_free_unpacked(msg, NULL);
    duet_rpc_server_destroy(server);
    server = NULL;
    CHECK(atomic_load(&decode_cancelled));
    duet_status_t st = duet_rpc_client_stream_read(s, &msg);
    CHECK_MSG(st == DUET_ERR_CANCELLED || st == DUET_ERR_UNAVAILABLE, "status %d", st);
    duet_rpc_client_stream_close(s);
}

int main(void)
{
    duet_rpc_server_conf_t conf = {
        .address = "127.0.0.1:0",
        .methods = methods,
        .n_methods = (int)(sizeof methods / sizeof methods[0]),
        .n_threads = 2,
    };
    if (duet_rpc_server_create(&conf, &server) != DUET_OK || duet_rpc_client_create(&client) != DUET_OK) {
        fprintf(stderr, "cannot start the server or the client\n");
        return 1;
    }
    snprintf(addr, sizeof addr, "127.0.0.1:%d", duet_rpc_server_port(server));

    RUN_TEST(test_status_map_round_trip);
    RUN_TEST(test_unary_echo);
    RUN_TEST(test_deferred_unary_from_thread);
    RUN_TEST(test_error_status_both_ways);
    RUN_TEST(test_retry_after_trailer);
    RUN_TEST(test_message_size_limits);
    RUN_TEST(test_malformed_request_is_invalid);
    RUN_TEST(test_health);
    RUN_TEST(test_stream_100_from_thread);
    RUN_TEST(test_client_cancel_seen_by_server);
    RUN_TEST(test_deadline_exceeded);
    RUN_TEST(test_unreachable_fails_fast);
    RUN_TEST(test_bind_taken_port_is_unavailable);
    RUN_TEST(test_32_concurrent_streams);
    RUN_TEST(test_shutdown_with_open_stream);

    duet_rpc_server_destroy(server);
    duet_rpc_client_destroy(client);
    return check_report();
}
