/* tests/integration/test_gateway_limits.c — the gateway's limits and API keys against a real
 * duet-gateway process, a real redis-server and a stand-in scheduler whose Route never answers
 * (so an accepted request stays accepted, waiting for its placement):
 *   - API keys given as sha256:<hex> and as plain text both work; a wrong key, no key, or the
 *     digest itself sent as the key get UNAUTHENTICATED; the plain key is gone from the
 *     process's command line;
 *   - a prompt over --max-prompt-tokens gets RESOURCE_EXHAUSTED without a retry hint;
 *   - over --max-streams, over --max-queued and over --rate-limit, RESOURCE_EXHAUSTED with a
 *     retry-after-ms trailer and the same number in the message;
 *   - a RESOURCE_EXHAUSTED from the scheduler (no decode instance has the blocks) reaches the
 *     client with the scheduler's retry-after-ms;
 *   - with --tls-cert/--tls-key/--tls-ca/--tls-client-auth (certificates made by the openssl CLI)
 *     the gateway answers only TLS clients that present a certificate of the CA, and its own call
 *     to a scheduler that requires client certificates goes through (mutual TLS both ways).
 * usage: test_gateway_limits DUET_GATEWAY_BINARY MODEL.gguf */
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "duet/v1/gateway.pb-c.h"
#include "duet/v1/scheduler.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "mesh_harness.h"
#include "rpc.h"
#include "tls_certs.h"

#define KEY_HASHED "key-one-0123"
#define KEY_PLAIN  "key-two-4567"
#define BUSY_MS    "777"

static const char *gateway_bin, *model;
static char redis_sock[108];
static pid_t redis_pid = -1;
static duet_rpc_client_t *client;

/* ---- the stand-in scheduler: Route waits until cancelled -------------------------------------- */

/* Requests for this many tokens are refused at once, as a full cluster would, with this hint. */
#define EXHAUSTED_MAX_TOKENS 3
#define SCHED_RETRY_MS       1234

static atomic_int routes_seen;

static void route_cancelled(void *arg)
{
    duet_rpc_call_finish(arg, DUET_ERR_CANCELLED, "gave up");
}

static duet_status_t route(duet_rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    atomic_fetch_add(&routes_seen, 1);
    if (((const Duet__V1__RouteRequest *)request)->max_tokens == EXHAUSTED_MAX_TOKENS) {
        duet_rpc_call_set_error(call, "no decode instance has 2 free KV blocks");
        duet_rpc_call_set_retry_after(call, SCHED_RETRY_MS);
        return DUET_ERR_EXHAUSTED;
    }
    duet_rpc_call_defer(call);
    duet_rpc_stream_on_cancel(call, route_cancelled, call);
    return DUET_OK;
}

static const duet_rpc_method_t sched_methods[] = {
    { .path = "/duet.v1.Scheduler/Route", .kind = DUET_RPC_UNARY,
      .request = &duet__v1__route_request__descriptor, .unary = route },
};

/* ---- processes ---------------------------------------------------------------------------------- */

static pid_t spawn(char *const argv[], const char *log)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execvp(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static void stop(pid_t pid)
{
    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    for (int i = 0; i < 200; i++) {
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return;
        usleep(50000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
}

static int free_port(void)
{
    static int next;
    if (!next)
        next = 20000 + (int)(getpid() % 20000);
    return next++;
}

/* Waits until the gateway answers Health/Check (at most 20 s). */
static int wait_serving(duet_rpc_client_t *via, const char *addr, pid_t pid)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    duet_rpc_opts_t opts = { .timeout_ms = 500 };
    for (int i = 0; i < 200; i++) {
        ProtobufCMessage *msg = NULL;
        if (duet_rpc_client_unary(via, addr, "/grpc.health.v1.Health/Check", &req.base,
                                  &grpc__health__v1__health_check_response__descriptor, &opts, &msg) == DUET_OK) {
            protobuf_c_message_free_unpacked(msg, NULL);
            return 0;
        }
        if (waitpid(pid, NULL, WNOHANG) == pid)
            return -1;
        usleep(100000);
    }
    return -1;
}

typedef struct {
    pid_t pid;
    char addr[64];
    char log[128];
} gateway_t;

/* Starts a gateway with the common arguments plus extra (NULL-ended). */
static int gateway_start_via(duet_rpc_client_t *via, gateway_t *g, const char *name, const char *sched_addr,
                             const char *const *extra)
{
    char redis_url[160], listen[64];
    snprintf(redis_url, sizeof redis_url, "unix://%s", redis_sock);
    snprintf(listen, sizeof listen, "127.0.0.1:%d", free_port());
    snprintf(g->addr, sizeof g->addr, "%s", listen);
    snprintf(g->log, sizeof g->log, "/tmp/duet-gwlim-%d-%s.log", (int)getpid(), name);
    const char *argv[40] = { gateway_bin, "--model", model, "--redis", redis_url, "--listen", listen,
                             "--scheduler", sched_addr, "--route-timeout-ms", "3000",
                             "--busy-retry-ms", BUSY_MS };
    int n = 13;
    for (int i = 0; extra[i] && n < 39; i++)
        argv[n++] = extra[i];
    argv[n] = NULL;
    g->pid = spawn((char *const *)argv, g->log);
    if (g->pid < 0 || wait_serving(via, g->addr, g->pid) != 0) {
        fprintf(stderr, "gateway %s did not come up; its log %s:\n", name, g->log);
        char cmd[200];
        snprintf(cmd, sizeof cmd, "tail -20 %s >&2", g->log);
        (void)!system(cmd);
        return -1;
    }
    return 0;
}

static int gateway_start(gateway_t *g, const char *name, const char *sched_addr, const char *const *extra)
{
    return gateway_start_via(client, g, name, sched_addr, extra);
}

/* ---- calls ---------------------------------------------------------------------------------- */

typedef struct {
    duet_status_t status;
    int64_t retry_after;
    char error[512];
} result_t;

static result_t tokenize_via(duet_rpc_client_t *via, const char *addr, const char *key)
{
    result_t r = { 0 };
    char bearer[128];
    snprintf(bearer, sizeof bearer, "Bearer %s", key ? key : "");
    duet_rpc_metadata_t md = { "authorization", bearer };
    duet_rpc_opts_t opts = { .timeout_ms = 5000, .metadata = &md, .n_metadata = key ? 1 : 0,
                             .error = r.error, .error_size = sizeof r.error };
    Duet__V1__TokenizeRequest req = DUET__V1__TOKENIZE_REQUEST__INIT;
    req.text = "hello";
    ProtobufCMessage *msg = NULL;
    r.status = duet_rpc_client_unary(via, addr, "/duet.v1.Gateway/Tokenize", &req.base,
                                     &duet__v1__tokenize_response__descriptor, &opts, &msg);
    if (msg)
        protobuf_c_message_free_unpacked(msg, NULL);
    return r;
}

static result_t tokenize(const char *addr, const char *key)
{
    return tokenize_via(client, addr, key);
}

static result_t complete_n(const char *addr, const char *key, const char *prompt, uint32_t max_tokens)
{
    result_t r = { 0 };
    char bearer[128];
    snprintf(bearer, sizeof bearer, "Bearer %s", key ? key : "");
    duet_rpc_metadata_t md = { "authorization", bearer };
    duet_rpc_opts_t opts = { .timeout_ms = 10000, .metadata = &md, .n_metadata = key ? 1 : 0,
                             .error = r.error, .error_size = sizeof r.error, .retry_after_ms = &r.retry_after };
    Duet__V1__GenerateRequest req = DUET__V1__GENERATE_REQUEST__INIT;
    Duet__V1__StopParams stop_p = DUET__V1__STOP_PARAMS__INIT;
    stop_p.max_tokens = max_tokens;
    req.prompt = (char *)prompt;
    req.stop = &stop_p;
    ProtobufCMessage *msg = NULL;
    r.status = duet_rpc_client_unary(client, addr, "/duet.v1.Gateway/Complete", &req.base,
                                     &duet__v1__complete_response__descriptor, &opts, &msg);
    if (msg)
        protobuf_c_message_free_unpacked(msg, NULL);
    return r;
}

static result_t complete(const char *addr, const char *key, const char *prompt)
{
    return complete_n(addr, key, prompt, 4);
}

/* Opens a Generate that the stand-in scheduler holds; returns once the gateway has asked it. */
static duet_rpc_client_stream_t *hold_one_via(duet_rpc_client_t *via, const char *addr, const char *key)
{
    char bearer[128];
    snprintf(bearer, sizeof bearer, "Bearer %s", key ? key : "");
    duet_rpc_metadata_t md = { "authorization", bearer };
    duet_rpc_opts_t opts = { .timeout_ms = 20000, .metadata = &md, .n_metadata = key ? 1 : 0 };
    Duet__V1__GenerateRequest req = DUET__V1__GENERATE_REQUEST__INIT;
    req.prompt = "Hi";
    duet_rpc_client_stream_t *s = NULL;
    int before = atomic_load(&routes_seen);
    if (duet_rpc_client_stream_open(via, addr, "/duet.v1.Gateway/Generate", &req.base,
                                    &duet__v1__generate_response__descriptor, &opts, &s) != DUET_OK)
        return NULL;
    for (int i = 0; i < 200 && atomic_load(&routes_seen) == before; i++)
        usleep(10000);
    CHECK_MSG(atomic_load(&routes_seen) > before, "the held request never reached the scheduler");
    return s;
}

static duet_rpc_client_stream_t *hold_one(const char *addr, const char *key)
{
    return hold_one_via(client, addr, key);
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void test_keys_and_streams(const char *sched_addr)
{
    char hashed[] = "sha256:"
                    "0000000000000000000000000000000000000000000000000000000000000000";
    FILE *p = popen("printf %s " KEY_HASHED " | sha256sum", "r");
    char line[128] = "";
    if (!p || !fgets(line, sizeof line, p) || strlen(line) < 64) {
        CHECK_MSG(0, "sha256sum did not run");
        if (p)
            pclose(p);
        return;
    }
    pclose(p);
    memcpy(hashed + 7, line, 64);
    char keys[200];
    snprintf(keys, sizeof keys, "%s," KEY_PLAIN, hashed);
    const char *extra[] = { "--api-keys", keys, "--max-prompt-tokens", "8", "--max-streams", "1", NULL };
    gateway_t g;
    if (gateway_start(&g, "keys", sched_addr, extra) != 0) {
        CHECK(0);
        stop(g.pid);
        return;
    }

    /* Keys. */
    CHECK_EQ_INT(tokenize(g.addr, KEY_HASHED).status, DUET_OK);
    CHECK_EQ_INT(tokenize(g.addr, KEY_PLAIN).status, DUET_OK);
    result_t r = tokenize(g.addr, "key-three");
    CHECK_EQ_INT(r.status, DUET_ERR_UNAUTHENTICATED);
    CHECK_STR_CONTAINS(r.error, "invalid API key");
    CHECK_EQ_INT(tokenize(g.addr, NULL).status, DUET_ERR_UNAUTHENTICATED);
    CHECK_EQ_INT(tokenize(g.addr, hashed).status, DUET_ERR_UNAUTHENTICATED);
    /* The plain key is no longer readable from the command line (ps, /proc/PID/cmdline). */
    char path[64], cmdline[4096];
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)g.pid);
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(cmdline, 1, sizeof cmdline - 1, f) : 0;
    if (f)
        fclose(f);
    CHECK(n > 0);
    for (size_t i = 0; i < n; i++)
        if (!cmdline[i])
            cmdline[i] = ' ';
    cmdline[n] = '\0';
    CHECK_MSG(strstr(cmdline, KEY_PLAIN) == NULL, "plain key still in %s", cmdline);
    CHECK(strstr(cmdline, hashed) != NULL);

    /* --max-prompt-tokens 8: a longer prompt is refused for good (no retry hint). */
    r = complete(g.addr, KEY_HASHED, "one two three four five six seven eight nine ten eleven twelve");
    CHECK_EQ_INT(r.status, DUET_ERR_EXHAUSTED);
    CHECK_STR_CONTAINS(r.error, "--max-prompt-tokens");
    CHECK_EQ_INT(r.retry_after, -1);

    /* The scheduler refuses (a full cluster): its hint reaches the client. */
    r = complete_n(g.addr, KEY_HASHED, "Hi", EXHAUSTED_MAX_TOKENS);
    CHECK_EQ_INT(r.status, DUET_ERR_EXHAUSTED);
    CHECK_EQ_INT(r.retry_after, SCHED_RETRY_MS);
    CHECK_STR_CONTAINS(r.error, "free KV blocks");
    CHECK_STR_CONTAINS(r.error, "retry after 1234 ms");
    fprintf(stderr, "  scheduler full: \"%s\", retry-after-ms %lld\n", r.error, (long long)r.retry_after);

    /* --max-streams 1: one held request, the next one is refused with the hint. */
    duet_rpc_client_stream_t *held = hold_one(g.addr, KEY_PLAIN);
    CHECK(held != NULL);
    r = complete(g.addr, KEY_HASHED, "Hi");
    CHECK_EQ_INT(r.status, DUET_ERR_EXHAUSTED);
    CHECK_EQ_INT(r.retry_after, atoi(BUSY_MS));
    CHECK_STR_CONTAINS(r.error, "--max-streams");
    CHECK_STR_CONTAINS(r.error, "retry after " BUSY_MS " ms");
    fprintf(stderr, "  over --max-streams: \"%s\", retry-after-ms %lld\n", r.error, (long long)r.retry_after);
    if (held) {
        duet_rpc_client_stream_cancel(held);
        duet_rpc_client_stream_close(held);
    }
    stop(g.pid);
}

static void test_queue_and_rate(const char *sched_addr)
{
    const char *extra[] = { "--max-streams", "8", "--max-queued", "1", "--rate-limit", "1",
                            "--rate-burst", "2", NULL };
    gateway_t g;
    if (gateway_start(&g, "rate", sched_addr, extra) != 0) {
        CHECK(0);
        stop(g.pid);
        return;
    }
    /* Token 1 of the burst: a request held waiting for placement, which fills the queue. */
    duet_rpc_client_stream_t *held = hold_one(g.addr, NULL);
    CHECK(held != NULL);
    /* Token 2: passes the rate limit, meets --max-queued 1. */
    result_t r = complete(g.addr, NULL, "Hi");
    CHECK_EQ_INT(r.status, DUET_ERR_EXHAUSTED);
    CHECK_STR_CONTAINS(r.error, "--max-queued");
    CHECK_EQ_INT(r.retry_after, atoi(BUSY_MS));
    fprintf(stderr, "  over --max-queued: \"%s\", retry-after-ms %lld\n", r.error, (long long)r.retry_after);
    /* No token left: the rate limit answers, with the time until the next token (<= 1 s). */
    r = complete(g.addr, NULL, "Hi");
    CHECK_EQ_INT(r.status, DUET_ERR_EXHAUSTED);
    CHECK_STR_CONTAINS(r.error, "rate limit");
    CHECK_MSG(r.retry_after >= 1 && r.retry_after <= 1000, "retry-after-ms %lld", (long long)r.retry_after);
    char want[64];
    snprintf(want, sizeof want, "retry after %lld ms", (long long)r.retry_after);
    CHECK_STR_CONTAINS(r.error, want);
    fprintf(stderr, "  over --rate-limit: \"%s\", retry-after-ms %lld\n", r.error, (long long)r.retry_after);
    /* After the hint, a token is there again (the queue is still full: --max-queued answers). */
    usleep((useconds_t)(r.retry_after + 20) * 1000);
    r = complete(g.addr, NULL, "Hi");
    CHECK_STR_CONTAINS(r.error, "--max-queued");
    if (held) {
        duet_rpc_client_stream_cancel(held);
        duet_rpc_client_stream_close(held);
    }
    stop(g.pid);
}

/* Mutual TLS on both sides of the gateway. */
static void test_mutual_tls(void)
{
    char dir[] = "/tmp/duet-gwtls-XXXXXX";
    if (!tls_have_openssl()) {
        fprintf(stderr, "  SKIPPED: no openssl CLI to make certificates with\n");
        return;
    }
    if (!mkdtemp(dir) || tls_make_ca(dir, "ca") || tls_make_cert(dir, "gateway", "ca") ||
        tls_make_cert(dir, "scheduler", "ca") || tls_make_cert(dir, "client", "ca")) {
        CHECK_MSG(0, "making certificates in %s failed", dir);
        return;
    }
    char f[8][160];
    const char *names[8] = { "ca.crt", "gateway.crt", "gateway.key", "scheduler.crt", "scheduler.key",
                             "client.crt", "client.key" };
    for (int i = 0; i < 7; i++)
        snprintf(f[i], sizeof f[i], "%s/%s", dir, names[i]);

    /* The stand-in scheduler, requiring client certificates of the CA. */
    duet_rpc_tls_t stls = { .cert = f[3], .key = f[4], .ca = f[0], .client_auth = 1 };
    duet_rpc_server_conf_t sc = { .address = "127.0.0.1:0", .methods = sched_methods, .n_methods = 1,
                                  .tls = &stls };
    duet_rpc_server_t *sched = NULL;
    duet_rpc_tls_t ctls = { .cert = f[5], .key = f[6], .ca = f[0] };
    duet_rpc_client_conf_t cc = { .tls = &ctls };
    duet_rpc_tls_t nocert = { .ca = f[0] };
    duet_rpc_client_conf_t nc = { .tls = &nocert };
    duet_rpc_client_t *mtls = NULL, *tls_nocert = NULL;
    CHECK_EQ_INT(duet_rpc_server_create(&sc, &sched), DUET_OK);
    CHECK_EQ_INT(duet_rpc_client_create_conf(&cc, &mtls), DUET_OK);
    CHECK_EQ_INT(duet_rpc_client_create_conf(&nc, &tls_nocert), DUET_OK);
    if (!sched || !mtls || !tls_nocert)
        goto out;
    char sched_addr[64];
    snprintf(sched_addr, sizeof sched_addr, "127.0.0.1:%d", duet_rpc_server_port(sched));

    const char *extra[] = { "--tls-cert", f[1], "--tls-key", f[2], "--tls-ca", f[0], "--tls-client-auth", NULL };
    gateway_t g;
    if (gateway_start_via(mtls, &g, "tls", sched_addr, extra) != 0) {
        CHECK(0);
        stop(g.pid);
        goto out;
    }
    CHECK_EQ_INT(tokenize_via(mtls, g.addr, NULL).status, DUET_OK);
    result_t r = tokenize_via(tls_nocert, g.addr, NULL);
    CHECK_MSG(r.status == DUET_ERR_UNAVAILABLE, "TLS client without a certificate: %s (%s)",
              duet_status_str(r.status), r.error);
    r = tokenize(g.addr, NULL);   /* plaintext */
    CHECK_MSG(r.status == DUET_ERR_UNAVAILABLE, "plaintext client: %s (%s)", duet_status_str(r.status), r.error);
    /* The gateway's own Route call reaches the scheduler that demands its certificate. */
    duet_rpc_client_stream_t *held = hold_one_via(mtls, g.addr, NULL);
    CHECK(held != NULL);
    if (held) {
        duet_rpc_client_stream_cancel(held);
        duet_rpc_client_stream_close(held);
    }
    stop(g.pid);
out:
    duet_rpc_client_destroy(mtls);
    duet_rpc_client_destroy(tls_nocert);
    duet_rpc_server_destroy(sched);
    tls_sh("rm -rf %s", dir);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s DUET_GATEWAY MODEL.gguf\n", argv[0]);
        return 2;
    }
    gateway_bin = argv[1];
    model = argv[2];
    signal(SIGPIPE, SIG_IGN);
    char reports[64];   /* the gateways' sanitizer reports, if any */
    snprintf(reports, sizeof reports, "/tmp/duet-gwlim-%d.d", (int)getpid());
    mkdir(reports, 0755);
    mesh_sanitizer_setup(reports);
    snprintf(redis_sock, sizeof redis_sock, "/tmp/duet-gwlim-%d.sock", (int)getpid());
    char *rargv[] = { "redis-server", "--port", "0", "--unixsocket", redis_sock, "--save", "",
                      "--appendonly", "no", NULL };
    char rlog[96];
    snprintf(rlog, sizeof rlog, "/tmp/duet-gwlim-%d-redis.log", (int)getpid());
    redis_pid = spawn(rargv, rlog);
    for (int i = 0; i < 100 && access(redis_sock, F_OK) != 0; i++)
        usleep(50000);

    duet_rpc_server_t *sched = NULL;
    duet_rpc_server_conf_t sc = { .address = "127.0.0.1:0", .methods = sched_methods, .n_methods = 1 };
    if (duet_rpc_server_create(&sc, &sched) != DUET_OK || duet_rpc_client_create(&client) != DUET_OK) {
        fprintf(stderr, "cannot start the stand-in scheduler\n");
        stop(redis_pid);
        return 1;
    }
    char sched_addr[64];
    snprintf(sched_addr, sizeof sched_addr, "127.0.0.1:%d", duet_rpc_server_port(sched));

    int before = check_failures;
    test_keys_and_streams(sched_addr);
    fprintf(stderr, "%-48s %s\n", "test_keys_and_streams", check_failures == before ? "ok" : "FAILED");
    before = check_failures;
    test_queue_and_rate(sched_addr);
    fprintf(stderr, "%-48s %s\n", "test_queue_and_rate", check_failures == before ? "ok" : "FAILED");
    RUN_TEST(test_mutual_tls);
    duet_rpc_server_destroy(sched);
    duet_rpc_client_destroy(client);
    stop(redis_pid);
    unlink(redis_sock);
    int n = mesh_sanitizer_reports(reports);
    CHECK_MSG(n == 0, "%d sanitizer report%s (above) in %s", n, n == 1 ? "" : "s", reports);
    rmdir(reports);   /* kept when it holds reports */
    return check_report();
}
