/* tests/integration/test_mesh.c — the disaggregated mesh end to end, with real processes: `duet up`
 * (redis-server, scheduler, prefill, decode or mixed instances, gateway), real gRPC on loopback,
 * real UCX transfers (UCX_TLS comes from the environment), real Redis records.
 * usage: test_mesh DUET_BINARY MODEL pair|mixed|nodecode
 *   pair, mixed: greedy text through the gateway equals in-process `duet generate` byte for byte;
 *     32 concurrent streams; Redis records end DONE with every timestamp and the KV bytes moved;
 *     a cancelled stream ends CANCELLED and the decode pool's free blocks come back; bad requests
 *     get INVALID_ARGUMENT naming the field; a wrong API key gets UNAUTHENTICATED.
 *   nodecode: with no decode instance alive, Generate gets UNAVAILABLE before its deadline. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "clock.h"
#include "cpu/cpu_backend.h"
#include "duet/v1/gateway.pb-c.h"
#include "gateway_call.h"
#include "grpc/health/v1/health.pb-c.h"
#include "mesh_harness.h"
#include "model.h"
#include "rpc.h"
#include "state.h"

#define API_KEY "duet-test-key"
#define CTX 1024
#define MAX_TOKENS 32
#define N_PROMPTS 10

static const char *const prompts[N_PROMPTS] = {
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The three primary colors are",
    "Here is a list of fruits:\n1. Apple\n2.",
    "Question: What is 15 multiplied by 4?\nAnswer:",
    "La tour Eiffel se trouve à",
    "In 1969, the first humans to walk on the Moon were",
    "Water boils at",
    "The quick brown fox",
};

static const char *duet_bin, *model_path, *mode;
static char run_dir[256], gateway[64], redis_url[300];
static char *expected[N_PROMPTS];
static size_t kv_bytes_per_token;
static duet_rpc_client_t *client;
static pid_t up_pid;

/* ---- processes ----------------------------------------------------------------------------- */

/* Starts `duet up` with this mode's instances (one prefill and one decode, or one mixed). */
static int start_mesh(int port)
{
    int mixed = strcmp(mode, "mixed") == 0;
    const char *extra[] = {"--log-level", "info", "--prefill", mixed ? "0" : "1", "--decode",
                           mixed ? "0" : "1", "--mixed", mixed ? "1" : "0", NULL};
    up_pid = mesh_start(duet_bin, model_path, port, run_dir, extra);
    return up_pid > 0 ? 0 : -1;
}

static void stop_mesh(void)
{
    int st = mesh_stop(up_pid);
    CHECK_MSG(st != -1, "duet up did not stop within 30 s of SIGTERM");
    CHECK_MSG(st == 0 || st == -1, "duet up exited with status %d", st);
    up_pid = 0;
}

/* ---- gateway calls ------------------------------------------------------------------------- */

typedef gateway_call_t call_t;

static void generate(call_t *c)
{
    gateway_generate(client, gateway, c);
}

static call_t make_call(const char *prompt, const char *id)
{
    return (call_t){.prompt = prompt, .request_id = id, .max_tokens = MAX_TOKENS, .temperature = 0, .seed = -1,
                    .key = API_KEY};
}

/* ---- Redis ----------------------------------------------------------------------------------- */

static duet_state_t *store;

static int decode_free_blocks(void)
{
    return mesh_decode_free_blocks(store);
}

static int wait_record(const char *id, duet_req_state_t want, duet_state_req_t *r)
{
    for (int i = 0; i < 100; i++) {
        if (duet_state_req_get(store, id, r) == DUET_OK && r->state == want)
            return 1;
        usleep(50000);
    }
    return 0;
}

static void check_done_record(const char *id, int n_generated, int prompt_tokens_expected)
{
    duet_state_req_t r;
    CHECK_MSG(wait_record(id, DUET_REQ_DONE, &r), "request %s did not end DONE (state %s, error '%s')",
              id, duet_state_req_state_name(r.state), r.error);
    CHECK(r.arrival_ms > 0 && r.routed_ms >= r.arrival_ms && r.prefill_start_ms >= r.routed_ms &&
          r.first_token_ms >= r.prefill_start_ms && r.done_ms >= r.first_token_ms);
    CHECK_EQ_INT(r.generated_tokens, n_generated);
    if (prompt_tokens_expected > 0)
        CHECK_EQ_INT(r.prompt_tokens, prompt_tokens_expected);
    int64_t want_kv = strcmp(mode, "mixed") == 0 ? 0 : r.prompt_tokens * (int64_t)kv_bytes_per_token;
    CHECK_MSG(r.kv_bytes == want_kv, "request %s moved %lld KV bytes, expected %lld (%lld prompt tokens)",
              id, (long long)r.kv_bytes, (long long)want_kv, (long long)r.prompt_tokens);
}

/* ---- the checks ------------------------------------------------------------------------------ */

static void test_greedy_equals_in_process(void)
{
    for (int i = 0; i < N_PROMPTS; i++) {
        char id[64];
        snprintf(id, sizeof id, "mesh-%s-%d-%d", mode, (int)getpid(), i);
        call_t c = make_call(prompts[i], id);
        generate(&c);
        CHECK_MSG(c.status == DUET_OK, "prompt %d: %s: %s", i, duet_status_str(c.status), c.error);
        CHECK_MSG(expected[i] && c.text && strcmp(c.text, expected[i]) == 0,
                  "prompt %d differs:\n  mesh:       [%s]\n  in process: [%s]", i, c.text ? c.text : "",
                  expected[i] ? expected[i] : "(none)");
        if (c.status == DUET_OK)
            check_done_record(id, c.n_tokens, 0);
        fprintf(stderr, "  prompt %d: %d tokens, first token %.0f ms, total %.0f ms\n", i, c.n_tokens,
                c.first_ns / 1e6, c.done_ns / 1e6);
        free(c.text);
    }
}

static void *concurrent_main(void *p)
{
    generate(p);
    return NULL;
}

static void test_32_concurrent_streams(void)
{
    enum { N = 32 };
    call_t calls[N];
    pthread_t threads[N];
    char ids[N][64];
    for (int i = 0; i < N; i++) {
        snprintf(ids[i], sizeof ids[i], "mesh-%s-%d-c%d", mode, (int)getpid(), i);
        calls[i] = make_call(prompts[i % N_PROMPTS], ids[i]);
        pthread_create(&threads[i], NULL, concurrent_main, &calls[i]);
    }
    int ok = 0;
    for (int i = 0; i < N; i++) {
        pthread_join(threads[i], NULL);
        int same = calls[i].status == DUET_OK && expected[i % N_PROMPTS] &&
                   strcmp(calls[i].text, expected[i % N_PROMPTS]) == 0;
        CHECK_MSG(same, "stream %d: %s %s [%s]", i, duet_status_str(calls[i].status), calls[i].error,
                  calls[i].text ? calls[i].text : "");
        ok += same;
        if (calls[i].status == DUET_OK)
            check_done_record(ids[i], calls[i].n_tokens, 0);
        free(calls[i].text);
    }
    fprintf(stderr, "  %d of %d concurrent streams complete with the right text\n", ok, N);
}

static void test_cancel_frees_blocks(void)
{
    usleep(1500000);  /* one heartbeat after the last request, so the published count is settled */
    int before = decode_free_blocks();
    CHECK(before > 0);
    char id[64];
    snprintf(id, sizeof id, "mesh-%s-%d-cancel", mode, (int)getpid());
    call_t c = make_call("Write a very long story about a dragon who learns to code.", id);
    c.max_tokens = 600;
    c.ignore_eos = 1;  /* it must still be running when the cancel comes */
    c.cancel_after = 3;
    generate(&c);
    free(c.text);
    duet_state_req_t r;
    CHECK_MSG(wait_record(id, DUET_REQ_CANCELLED, &r), "cancelled request ended %s",
              duet_state_req_state_name(r.state));
    int after = -1;
    for (int i = 0; i < 60 && after != before; i++) {
        usleep(100000);
        after = decode_free_blocks();
    }
    CHECK_MSG(after == before, "free KV blocks %d before the cancelled stream, %d after", before, after);
}

/* A stop string cuts the text before it, ends the stream with finish STOP and the record DONE
 * (the gateway ends it before cancelling the decode stream). */
static void test_stop_string_ends_done(void)
{
    const char *want = expected[1];
    size_t len = want ? strlen(want) : 0;
    CHECK(len > 24);
    if (len <= 24)
        return;
    char stop[9];
    memcpy(stop, want + len / 2, 8);   /* from the middle of the fault-free text */
    stop[8] = '\0';
    size_t cut = (size_t)(strstr(want, stop) - want);
    char id[64];
    snprintf(id, sizeof id, "mesh-%s-%d-stop", mode, (int)getpid());
    call_t c = make_call(prompts[1], id);
    c.stop = stop;
    generate(&c);
    CHECK_MSG(c.status == DUET_OK, "%s %s", duet_status_str(c.status), c.error);
    CHECK_MSG(strlen(c.text) == cut && strncmp(c.text, want, cut) == 0, "stop [%s]: got [%s], want the first %zu bytes of [%s]",
              stop, c.text, cut, want);
    CHECK_EQ_INT(c.finish_reason, DUET__V1__FINISH_REASON__FINISH_REASON_STOP);
    duet_state_req_t r;
    CHECK_MSG(wait_record(id, DUET_REQ_DONE, &r), "a request ended by a stop string: record %s (%s)",
              duet_state_req_state_name(r.state), r.error);
    CHECK_MSG(strcmp(r.finish_reason, "stop") == 0, "record finish_reason '%s'", r.finish_reason);
    free(c.text);
}

static void expect_invalid(call_t *c, const char *field)
{
    generate(c);
    CHECK_MSG(c->status == DUET_ERR_INVALID, "bad %s: got %s (%s)", field, duet_status_str(c->status), c->error);
    CHECK_STR_CONTAINS(c->error, field);
    free(c->text);
}

static void test_bad_requests_name_the_field(void)
{
    call_t c = make_call("", NULL);
    expect_invalid(&c, "prompt");
    c = make_call("Hello", NULL);
    c.max_tokens = CTX + 100;
    expect_invalid(&c, "max_tokens");
    c = make_call("Hello", NULL);
    c.temperature = -1;
    expect_invalid(&c, "temperature");
    c = make_call("Hello", NULL);
    c.top_p = 1.5f;
    expect_invalid(&c, "top_p");
    c = make_call("Hello", NULL);
    c.top_p = -0.5f;
    expect_invalid(&c, "top_p");
    size_t n = 6 * CTX;
    char *huge = malloc(n + 1);
    for (size_t i = 0; i < n; i += 6)
        memcpy(huge + i, " word,", 6);
    huge[n] = '\0';
    c = make_call(huge, NULL);
    expect_invalid(&c, "prompt");
    free(huge);
}

static void test_wrong_api_key(void)
{
    call_t c = make_call("Hello", NULL);
    c.key = "not-the-key";
    generate(&c);
    CHECK_MSG(c.status == DUET_ERR_UNAUTHENTICATED, "wrong key: %s", duet_status_str(c.status));
    free(c.text);
    c = make_call("Hello", NULL);
    c.key = "";
    generate(&c);
    CHECK_MSG(c.status == DUET_ERR_UNAUTHENTICATED, "no key: %s", duet_status_str(c.status));
    free(c.text);
}

/* ---- metrics ----------------------------------------------------------------------------------- */

#define MAX_SAMPLES 512
typedef struct {
    char name[512];     /* the sample's name with its labels */
    char family[96];
    char type[96];
    double value;
} sample_t;

/* Parses the text format strictly enough to catch malformed output: every sample belongs to a
 * family with a TYPE line; histogram buckets are cumulative and end in +Inf equal to _count. */
static int parse_metrics(const char *text, sample_t *out, int max, const char *who)
{
    char families[64][96], types[64][96];
    int n_fam = 0, n = 0;
    const char *p = text;
    double last_bucket = -1;
    char bucket_family[96] = "";
    while (*p) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        char line[512];
        snprintf(line, sizeof line, "%.*s", (int)(len < 511 ? len : 511), p);
        p += len + (eol ? 1 : 0);
        if (!line[0] || strncmp(line, "# HELP ", 7) == 0)
            continue;
        if (strncmp(line, "# TYPE ", 7) == 0) {
            if (n_fam < 64 && sscanf(line + 7, "%95s %95s", families[n_fam], types[n_fam]) == 2)
                n_fam++;
            continue;
        }
        if (n == max)
            break;
        sample_t *s = &out[n];
        char *space = strrchr(line, ' ');
        CHECK_MSG(space != NULL, "%s: malformed line '%s'", who, line);
        if (!space)
            continue;
        *space = '\0';
        snprintf(s->name, sizeof s->name, "%s", line);
        s->value = strtod(space + 1, NULL);
        const char *fam = NULL;
        for (int f = 0; f < n_fam; f++) {
            size_t fl = strlen(families[f]);
            if (strncmp(s->name, families[f], fl) == 0 &&
                (s->name[fl] == '\0' || s->name[fl] == '{' || strncmp(s->name + fl, "_bucket", 7) == 0 ||
                 strncmp(s->name + fl, "_sum", 4) == 0 || strncmp(s->name + fl, "_count", 6) == 0)) {
                fam = families[f];
                memcpy(s->type, types[f], sizeof s->type);  /* both 96 bytes, NUL-terminated */
            }
        }
        CHECK_MSG(fam != NULL, "%s: sample '%s' has no TYPE line", who, s->name);
        if (!fam)
            continue;
        snprintf(s->family, sizeof s->family, "%s", fam);
        if (strstr(s->name, "_bucket{le=")) {
            if (strcmp(bucket_family, fam) != 0) {
                snprintf(bucket_family, sizeof bucket_family, "%s", fam);
                last_bucket = -1;
            }
            CHECK_MSG(s->value >= last_bucket, "%s: %s buckets are not cumulative", who, fam);
            last_bucket = s->value;
        } else if (strstr(s->name, "_count") && strcmp(bucket_family, fam) == 0) {
            CHECK_MSG(s->value == last_bucket, "%s: %s_count differs from its +Inf bucket", who, fam);
        }
        n++;
    }
    return n;
}

static const sample_t *find_family(const sample_t *s, int n, const char *family)
{
    for (int i = 0; i < n; i++)
        if (strcmp(s[i].family, family) == 0)
            return &s[i];
    return NULL;
}

typedef struct {
    const char *service;
    const char *names[6];
    const char *types[6];
} expected_metrics_t;

static const expected_metrics_t expected_metrics[] = {
    {"scheduler", {"duet_requests_total"}, {"counter"}},
    {"prefill", {"duet_kv_transfer_seconds", "duet_kv_transfer_bytes_total", "duet_prefill_queue_tokens",
                 "duet_request_queue_seconds", "duet_requests_total"},
     {"histogram", "counter", "gauge", "histogram", "counter"}},
    {"decode", {"duet_kv_blocks_free", "duet_batch_size", "duet_request_queue_seconds", "duet_requests_total",
                "duet_kv_transfer_bytes_total"},
     {"gauge", "gauge", "histogram", "counter", "counter"}},
    {"gateway", {"duet_time_to_first_token_seconds", "duet_time_per_output_token_seconds",
                 "duet_e2e_request_latency_seconds", "duet_requests_total"},
     {"histogram", "histogram", "histogram", "counter"}},
};

static sample_t first_scrape[4][MAX_SAMPLES];
static int n_first[4];

/* The services in the order duet up gives them metrics ports: scheduler, prefill, decode or
 * mixed, gateway (the prefill slot is absent with a mixed instance). */
static int metrics_port_of(int kind)
{
    int mixed = strcmp(mode, "mixed") == 0;
    int base = atoi(strrchr(gateway, ':') + 1) + 1;
    if (mixed)
        return kind == 0 ? base : kind == 2 ? base + 1 : kind == 3 ? base + 2 : 0;
    return base + kind;
}

static void check_metrics(int round)
{
    for (int k = 0; k < 4; k++) {
        int port = metrics_port_of(k);
        if (!port)
            continue;
        char *text = mesh_metrics_get(port);
        CHECK_MSG(text != NULL, "%s: no /metrics on port %d", expected_metrics[k].service, port);
        if (!text)
            continue;
        static sample_t now[MAX_SAMPLES];
        int n = parse_metrics(text, now, MAX_SAMPLES, expected_metrics[k].service);
        for (int i = 0; i < 6 && expected_metrics[k].names[i]; i++) {
            const sample_t *s = find_family(now, n, expected_metrics[k].names[i]);
            CHECK_MSG(s != NULL, "%s: metric %s is missing", expected_metrics[k].service, expected_metrics[k].names[i]);
            if (s)
                CHECK_MSG(strcmp(s->type, expected_metrics[k].types[i]) == 0, "%s: %s is a %s, expected %s",
                          expected_metrics[k].service, s->family, s->type, expected_metrics[k].types[i]);
        }
        if (round == 0) {
            memcpy(first_scrape[k], now, sizeof now);
            n_first[k] = n;
        } else {
            /* Counters (and histogram counts) never go down between scrapes. */
            for (int i = 0; i < n_first[k]; i++) {
                const sample_t *was = &first_scrape[k][i];
                int monotonic = strcmp(was->type, "counter") == 0 || strcmp(was->type, "histogram") == 0;
                for (int j = 0; monotonic && j < n; j++)
                    if (strcmp(now[j].name, was->name) == 0)
                        CHECK_MSG(now[j].value >= was->value, "%s: %s went from %g down to %g",
                                  expected_metrics[k].service, was->name, was->value, now[j].value);
            }
        }
        free(text);
    }
}

static void test_metrics_first_scrape(void) { check_metrics(0); }
static void test_metrics_second_scrape(void) { check_metrics(1); }

/* ---- no decode instance ---------------------------------------------------------------------- */

static pid_t spawn_service(const char *name, char *const argv[])
{
    char path[PATH_MAX], log[PATH_MAX];
    snprintf(path, sizeof path, "%s", duet_bin);
    char *slash = strrchr(path, '/');
    snprintf(slash + 1, sizeof path - (size_t)(slash + 1 - path), "%s", name);
    snprintf(log, sizeof log, "%s/%s.log", run_dir, name);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        execv(strcmp(name, "redis-server") == 0 ? "/usr/bin/redis-server" : path, argv);
        _exit(127);
    }
    return pid;
}

static int gateway_serving(void)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    ProtobufCMessage *resp = NULL;
    duet_rpc_opts_t opts = {.timeout_ms = 500};
    int ok = duet_rpc_client_unary(client, gateway, "/grpc.health.v1.Health/Check", &req.base,
                                   &grpc__health__v1__health_check_response__descriptor, &opts, &resp) == DUET_OK;
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
    return ok;
}

static void test_no_decode_is_unavailable(void)
{
    char sock[300], listen_s[64];
    snprintf(sock, sizeof sock, "%s/redis.sock", run_dir);
    snprintf(listen_s, sizeof listen_s, "%s", gateway);
    char *rargv[] = {"redis-server", "--port", "0", "--unixsocket", sock, "--save", "", NULL};
    char *sargv[] = {"duet-scheduler", "--redis", redis_url, NULL};
    char *gargv[] = {"duet-gateway", "--redis", redis_url, "--listen", listen_s, "--model", (char *)model_path,
                     "--ctx", "1024", NULL};
    pid_t pids[3];
    pids[0] = spawn_service("redis-server", rargv);
    usleep(300000);
    pids[1] = spawn_service("duet-scheduler", sargv);
    pids[2] = spawn_service("duet-gateway", gargv);
    int up = 0;
    for (int i = 0; i < 200 && !up; i++) {
        usleep(100000);
        up = gateway_serving();
    }
    CHECK_MSG(up, "gateway did not come up");
    call_t c = make_call("Hello", NULL);
    generate(&c);  /* deadline 120 s */
    CHECK_MSG(c.status == DUET_ERR_UNAVAILABLE, "no decode instance: got %s (%s)", duet_status_str(c.status), c.error);
    CHECK_MSG(c.done_ns < 10 * 1000000000ll, "UNAVAILABLE took %.1f s", c.done_ns / 1e9);
    free(c.text);
    for (int i = 2; i >= 0; i--) {
        kill(pids[i], SIGTERM);
        waitpid(pids[i], NULL, 0);
    }
}

/* Every process the test started left no AddressSanitizer, LeakSanitizer or UBSan report. */
static void test_no_sanitizer_reports(void)
{
    int n = mesh_sanitizer_reports(run_dir);
    CHECK_MSG(n == 0, "%d sanitizer report%s (above) from the processes in %s", n, n == 1 ? "" : "s", run_dir);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s DUET_BINARY MODEL pair|mixed|nodecode\n", argv[0]);
        return 2;
    }
    duet_bin = argv[1];
    model_path = argv[2];
    mode = argv[3];
    signal(SIGPIPE, SIG_IGN);
    setenv("DUET_API_KEYS", API_KEY, 1);
    snprintf(run_dir, sizeof run_dir, "/tmp/duet-test-mesh-%s-%d", mode, (int)getpid());
    mkdir(run_dir, 0755);
    mesh_sanitizer_setup(run_dir);
    snprintf(redis_url, sizeof redis_url, "unix://%s/redis.sock", run_dir);
    int port = mesh_free_port();
    snprintf(gateway, sizeof gateway, "127.0.0.1:%d", port);
    CHECK_EQ_INT(duet_rpc_client_create(&client), DUET_OK);

    if (strcmp(mode, "nodecode") == 0) {
        RUN_TEST(test_no_decode_is_unavailable);
        RUN_TEST(test_no_sanitizer_reports);
        duet_rpc_client_destroy(client);
        return check_report();
    }

    duet_cpu_conf_t cc = {.n_threads = 1};
    duet_backend_t *be;
    duet_model_t *m;
    char err[256];
    CHECK_EQ_INT(duet_backend_cpu_create(&cc, &be), DUET_OK);
    if (duet_model_load(model_path, be, &m, err, sizeof err) != DUET_OK) {
        fprintf(stderr, "cannot load %s: %s\n", model_path, err);
        return 1;
    }
    kv_bytes_per_token = duet_model_kv_bytes_per_token(m);
    duet_model_free(m);
    be->destroy(be);

    /* What in-process `duet generate` writes, minus the newline it ends with. */
    for (int i = 0; i < N_PROMPTS; i++) {
        char *gargv[] = {(char *)duet_bin, "generate", "--model", (char *)model_path, "--temperature", "0",
                         "--max-tokens", "32", "--ctx", "1024", "--prompt", (char *)prompts[i], NULL};
        expected[i] = gateway_capture(gargv);
        CHECK_MSG(expected[i] != NULL, "duet generate failed for prompt %d", i);
    }

    if (start_mesh(port) != 0) {
        fprintf(stderr, "duet up did not come up; logs are in %s\n", run_dir);
        stop_mesh();
        mesh_sanitizer_reports(run_dir);
        return 1;
    }
    if (duet_state_connect(redis_url, 2000, &store) != DUET_OK) {
        fprintf(stderr, "cannot reach the mesh's Redis at %s\n", redis_url);
        stop_mesh();
        return 1;
    }
    RUN_TEST(test_metrics_first_scrape);
    RUN_TEST(test_greedy_equals_in_process);
    RUN_TEST(test_32_concurrent_streams);
    RUN_TEST(test_cancel_frees_blocks);
    RUN_TEST(test_stop_string_ends_done);
    RUN_TEST(test_bad_requests_name_the_field);
    RUN_TEST(test_wrong_api_key);
    RUN_TEST(test_metrics_second_scrape);
    duet_state_close(store);
    stop_mesh();
    RUN_TEST(test_no_sanitizer_reports);
    duet_rpc_client_destroy(client);
    for (int i = 0; i < N_PROMPTS; i++)
        free(expected[i]);
    if (check_failures)
        fprintf(stderr, "service logs are in %s\n", run_dir);
    return check_report();
}
