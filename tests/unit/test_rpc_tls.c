/* tests/unit/test_rpc_tls.c — lib/rpc with TLS over real loopback gRPC. The certificates are made
 * at test time with the openssl CLI in a temporary directory: a CA, a server certificate for
 * 127.0.0.1 and a client certificate signed by it, and a second CA nobody trusts. Checks that a
 * TLS call works, that plaintext and TLS do not mix, that a mutual-TLS server refuses a client
 * without a certificate or with one from the wrong CA, and that a server with a certificate the
 * client does not trust is refused. Skipped (exit 77) where no openssl CLI is installed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "duet/v1/gateway.pb-c.h"
#include "rpc.h"
#include "tls_certs.h"

#define TOK_PATH "/duet.v1.Gateway/Tokenize"

static char dir[64];

static duet_status_t tokenize(duet_rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    Duet__V1__TokenizeResponse resp = DUET__V1__TOKENIZE_RESPONSE__INIT;
    uint32_t id = 42;
    (void)request;
    (void)arg;
    resp.n_token_ids = 1;
    resp.token_ids = &id;
    return duet_rpc_call_reply(call, &resp.base);
}

static const duet_rpc_method_t methods[] = {
    { .path = TOK_PATH, .kind = DUET_RPC_UNARY,
      .request = &duet__v1__tokenize_request__descriptor, .unary = tokenize },
};

static char *path(const char *file)
{
    static char bufs[16][128];
    static int next;
    char *b = bufs[next++ % 16];
    snprintf(b, sizeof bufs[0], "%s/%s", dir, file);
    return b;
}

static duet_rpc_server_t *serve(const duet_rpc_tls_t *tls, char *addr, size_t cap)
{
    duet_rpc_server_conf_t conf = { .address = "127.0.0.1:0", .methods = methods, .n_methods = 1,
                                    .tls = tls };
    duet_rpc_server_t *s = NULL;
    if (duet_rpc_server_create(&conf, &s) != DUET_OK)
        return NULL;
    snprintf(addr, cap, "127.0.0.1:%d", duet_rpc_server_port(s));
    return s;
}

/* One Tokenize call through a fresh client with the given TLS (NULL: plaintext). */
static duet_status_t call(const duet_rpc_tls_t *tls, const char *addr, char *err, size_t cap)
{
    duet_rpc_client_conf_t cc = { .tls = tls };
    duet_rpc_client_t *c = NULL;
    duet_status_t st = duet_rpc_client_create_conf(&cc, &c);
    if (st != DUET_OK)
        return st;
    Duet__V1__TokenizeRequest req = DUET__V1__TOKENIZE_REQUEST__INIT;
    req.text = "x";
    err[0] = '\0';
    duet_rpc_opts_t opts = { .timeout_ms = 5000, .error = err, .error_size = cap };
    ProtobufCMessage *msg = NULL;
    st = duet_rpc_client_unary(c, addr, TOK_PATH, &req.base, &duet__v1__tokenize_response__descriptor,
                               &opts, &msg);
    if (st == DUET_OK) {
        if (((Duet__V1__TokenizeResponse *)msg)->n_token_ids != 1)
            st = DUET_ERR_FORMAT;
        protobuf_c_message_free_unpacked(msg, NULL);
    }
    duet_rpc_client_destroy(c);
    return st;
}

static void test_tls_server(void)
{
    duet_rpc_tls_t stls = { .cert = path("server.crt"), .key = path("server.key") };
    char addr[64], err[512];
    duet_rpc_server_t *s = serve(&stls, addr, sizeof addr);
    CHECK(s != NULL);
    if (!s)
        return;
    duet_rpc_tls_t trusting = { .ca = path("ca.crt") };
    CHECK_EQ_INT(call(&trusting, addr, err, sizeof err), DUET_OK);
    /* The certificate names 127.0.0.1 and localhost: another expected name fails the check. */
    duet_rpc_tls_t other_name = { .ca = path("ca.crt"), .server_name = "gateway.example" };
    CHECK(call(&other_name, addr, err, sizeof err) != DUET_OK);
    duet_rpc_tls_t localhost = { .ca = path("ca.crt"), .server_name = "localhost" };
    CHECK_EQ_INT(call(&localhost, addr, err, sizeof err), DUET_OK);
    /* Plaintext to a TLS port fails. */
    duet_status_t st = call(NULL, addr, err, sizeof err);
    CHECK_MSG(st == DUET_ERR_UNAVAILABLE, "plaintext client to a TLS server: %d (%s)", st, err);
    /* A client that trusts another CA refuses this server. */
    duet_rpc_tls_t distrusting = { .ca = path("rogue-ca.crt") };
    st = call(&distrusting, addr, err, sizeof err);
    CHECK_MSG(st == DUET_ERR_UNAVAILABLE, "untrusted server: %d (%s)", st, err);
    duet_rpc_server_destroy(s);

    /* TLS to a plaintext port fails too. */
    s = serve(NULL, addr, sizeof addr);
    CHECK(s != NULL);
    if (s) {
        CHECK_EQ_INT(call(NULL, addr, err, sizeof err), DUET_OK);
        CHECK(call(&trusting, addr, err, sizeof err) != DUET_OK);
        duet_rpc_server_destroy(s);
    }
}

static void test_mutual_tls(void)
{
    duet_rpc_tls_t stls = { .cert = path("server.crt"), .key = path("server.key"), .ca = path("ca.crt"),
                            .client_auth = 1 };
    char addr[64], err[512];
    duet_rpc_server_t *s = serve(&stls, addr, sizeof addr);
    CHECK(s != NULL);
    if (!s)
        return;
    duet_rpc_tls_t with_cert = { .cert = path("client.crt"), .key = path("client.key"), .ca = path("ca.crt") };
    CHECK_EQ_INT(call(&with_cert, addr, err, sizeof err), DUET_OK);
    duet_rpc_tls_t no_cert = { .ca = path("ca.crt") };
    duet_status_t st = call(&no_cert, addr, err, sizeof err);
    CHECK_MSG(st == DUET_ERR_UNAVAILABLE, "mTLS server, client without a certificate: %d (%s)", st, err);
    duet_rpc_tls_t rogue_cert = { .cert = path("rogue.crt"), .key = path("rogue.key"), .ca = path("ca.crt") };
    st = call(&rogue_cert, addr, err, sizeof err);
    CHECK_MSG(st == DUET_ERR_UNAVAILABLE, "mTLS server, client certificate of another CA: %d (%s)", st, err);
    CHECK(call(NULL, addr, err, sizeof err) != DUET_OK);
    duet_rpc_server_destroy(s);
}

static void test_bad_settings_refused(void)
{
    char addr[64];
    duet_rpc_tls_t missing = { .cert = path("nope.crt"), .key = path("server.key") };
    CHECK(serve(&missing, addr, sizeof addr) == NULL);
    duet_rpc_tls_t no_key = { .cert = path("server.crt") };
    CHECK(serve(&no_key, addr, sizeof addr) == NULL);
    duet_rpc_tls_t auth_no_ca = { .cert = path("server.crt"), .key = path("server.key"), .client_auth = 1 };
    CHECK(serve(&auth_no_ca, addr, sizeof addr) == NULL);
    duet_rpc_client_t *c = NULL;
    duet_rpc_tls_t bad_ca = { .ca = path("nope.crt") };
    duet_rpc_client_conf_t cc = { .tls = &bad_ca };
    CHECK_EQ_INT(duet_rpc_client_create_conf(&cc, &c), DUET_ERR_INVALID);
}

int main(void)
{
    if (!tls_have_openssl()) {
        fprintf(stderr, "test_rpc_tls: SKIPPED: no openssl CLI to make certificates with\n");
        return 77;
    }
    snprintf(dir, sizeof dir, "/tmp/duet-tls-XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    if (tls_make_ca(dir, "ca") || tls_make_cert(dir, "server", "ca") || tls_make_cert(dir, "client", "ca") ||
        tls_make_ca(dir, "rogue-ca") || tls_make_cert(dir, "rogue", "rogue-ca")) {
        fprintf(stderr, "test_rpc_tls: making certificates in %s failed\n", dir);
        tls_sh("rm -rf %s", dir);
        return 1;
    }
    RUN_TEST(test_tls_server);
    RUN_TEST(test_mutual_tls);
    RUN_TEST(test_bad_settings_refused);
    tls_sh("rm -rf %s", dir);
    return check_report();
}
