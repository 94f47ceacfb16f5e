/* tests/chaos/test_chaos.c — one fault injected into a real mesh (`duet up`: redis-server, gRPC on
 * loopback, UCX, the default model) while requests run, and the outcome asserted: completed with
 * the text a fault-free run gives, or a specific retriable error.
 * usage: test_chaos DUET_BINARY MODEL SCENARIO
 *   decode_kill    SIGKILL the decode instance serving a stream: every stream completes with the
 *                  fault-free greedy text (the gateway re-places it with the tokens so far); the
 *                  dead instance leaves the registry within 3 s; duet up starts it again.
 *   decode_stop    SIGTERM the decode instance serving a stream (a rolling restart): it ends its
 *                  streams with UNAVAILABLE and every one completes elsewhere, text unchanged.
 *   decode_hang    SIGSTOP the decode instance serving a stream: the gateway gives up on it after
 *                  --decode-idle-timeout-ms and the stream completes elsewhere, text unchanged.
 *   prefill_kill   SIGKILL the prefill instance computing a long prompt: decode retries the
 *                  prefill on the other instance; the text is unchanged; no KV block is leaked.
 *   kv_timeout     SIGSTOP the prefill instance computing a long prompt, so the KV transfer times
 *                  out: decode quarantines the blocks, retries on the other instance (text
 *                  unchanged), and returns the blocks once the stopped instance, continued,
 *                  proves it is no longer writing them.
 *   redis_restart  kill Redis under load: running streams finish; a new request gets UNAVAILABLE
 *                  quickly; after Redis is back new requests succeed. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "clock.h"
#include "gateway_call.h"
#include "mesh_harness.h"
#include "rpc.h"
#include "state.h"

#define CTX 1024
#define N_STREAMS 4
#define STREAM_TOKENS 96

static const char *const prompts[N_STREAMS] = {
    "The capital of France is",
    "Once upon a time, in a small village by the sea,",
    "Here is a list of fruits:\n1. Apple\n2.",
    "In 1969, the first humans to walk on the Moon were",
};

static const char *duet_bin, *model_path;
static char run_dir[256], gateway[64], redis_url[400];
static duet_rpc_client_t *client;
static duet_state_t *store;
static pid_t up_pid;

/* ---- helpers ----------------------------------------------------------------------------------- */

static double secs_since(int64_t t0) { return (duet_clock_ns() - t0) / 1e9; }

/* In-process `duet generate` greedy output: what every faulted run must still produce. */
static char *expected_text(const char *prompt, int max_tokens)
{
    char max_s[16];
    snprintf(max_s, sizeof max_s, "%d", max_tokens);
    char *argv[] = {(char *)duet_bin, "generate", "--model", (char *)model_path, "--temperature", "0",
                    "--max-tokens", max_s, "--ignore-eos", "--ctx", "1024", "--threads", "1",
                    "--prompt", (char *)prompt, NULL};
    char *out = gateway_capture(argv);
    CHECK_MSG(out != NULL, "duet generate failed for [%s]", prompt);
    return out;
}

/* A prompt of about n_words words, long enough that its prefill takes a while. */
static char *long_prompt(int n_words)
{
    static const char *const words[] = {"the", "river", "carried", "old", "boats", "past", "quiet",
                                        "towns,", "and", "every", "evening", "people", "watched."};
    size_t cap = (size_t)n_words * 10 + 1, len = 0;
    char *p = malloc(cap);
    for (int i = 0; i < n_words; i++)
        len += (size_t)snprintf(p + len, cap - len, "%s%s", i ? " " : "", words[(i * 7) % 13]);
    return p;
}

/* The pid in an instance id, "<host>-<pid>-<hex>". */
static pid_t pid_of_instance(const char *id)
{
    const char *end = strrchr(id, '-');
    if (!end)
        return -1;
    const char *start = end - 1;
    while (start > id && start[-1] != '-')
        start--;
    return (pid_t)strtol(start, NULL, 10);
}

static int count_role(duet_inst_role_t role, const char *id_or_null, int *found_p)
{
    duet_state_inst_t *insts;
    int n, count = 0;
    if (found_p)
        *found_p = 0;
    if (duet_state_inst_list(store, role, &insts, &n) != DUET_OK)
        return -1;
    for (int i = 0; i < n; i++) {
        count++;
        if (id_or_null && found_p && strcmp(insts[i].id, id_or_null) == 0)
            *found_p = 1;
    }
    duet_state_inst_list_free(insts);
    return count;
}

static int decode_free_blocks(void)
{
    return mesh_decode_free_blocks(store);
}

/* Waits up to timeout_s for the record of id to be in state want (or, with want NONE, to name an
 * instance of the given kind: 'p' prefill, 'd' decode). */
static int wait_record(const char *id, duet_req_state_t want, double timeout_s, duet_state_req_t *r)
{
    int64_t t0 = duet_clock_ns();
    memset(r, 0, sizeof *r);
    while (secs_since(t0) < timeout_s) {
        if (duet_state_req_get(store, id, r) == DUET_OK && r->state == want)
            return 1;
        usleep(10000);
    }
    return 0;
}

static int start_mesh(const char *const *extra)
{
    int port = mesh_free_port();
    snprintf(gateway, sizeof gateway, "127.0.0.1:%d", port);
    up_pid = mesh_start(duet_bin, model_path, port, run_dir, extra);
    if (up_pid <= 0) {
        fprintf(stderr, "duet up did not come up; logs are in %s\n", run_dir);
        return -1;
    }
    if (duet_state_connect(redis_url, 2000, &store) != DUET_OK) {
        fprintf(stderr, "cannot reach the mesh's Redis at %s\n", redis_url);
        return -1;
    }
    return 0;
}

static void stop_mesh(void)
{
    if (store)
        duet_state_close(store);
    store = NULL;
    int st = mesh_stop(up_pid);
    CHECK_MSG(st == 0, "duet up did not stop cleanly (status %d)", st);
}

/* ---- streams under a decode fault ------------------------------------------------------------- */

typedef struct {
    gateway_call_t call;
    char id[64];
    pthread_t thread;
    pthread_mutex_t *mu;
    pthread_cond_t *cv;
    int *n_flowing;        /* streams that have reached the threshold */
    int threshold;
    int counted;
} stream_t;

static void on_progress(void *arg, int n_tokens)
{
    stream_t *s = arg;
    if (s->counted || n_tokens < s->threshold)
        return;
    s->counted = 1;
    pthread_mutex_lock(s->mu);
    (*s->n_flowing)++;
    pthread_cond_broadcast(s->cv);
    pthread_mutex_unlock(s->mu);
}

static void *stream_main(void *arg)
{
    stream_t *s = arg;
    gateway_generate(client, gateway, &s->call);
    on_progress(s, 1 << 30);   /* a stream that ended early must not hold the waiter */
    return NULL;
}

/* Starts N_STREAMS greedy streams and returns once each has produced `threshold` tokens. */
static void start_streams(stream_t *s, pthread_mutex_t *mu, pthread_cond_t *cv, int *n_flowing,
                          const char *tag, int threshold)
{
    *n_flowing = 0;
    for (int i = 0; i < N_STREAMS; i++) {
        memset(&s[i], 0, sizeof s[i]);
        snprintf(s[i].id, sizeof s[i].id, "chaos-%s-%d-%d", tag, (int)getpid(), i);
        s[i].call = (gateway_call_t){.prompt = prompts[i], .request_id = s[i].id, .max_tokens = STREAM_TOKENS,
                                     .temperature = 0, .seed = -1, .ignore_eos = 1,
                                     .on_progress = on_progress, .progress_arg = &s[i]};
        s[i].mu = mu;
        s[i].cv = cv;
        s[i].n_flowing = n_flowing;
        s[i].threshold = threshold;
        pthread_create(&s[i].thread, NULL, stream_main, &s[i]);
    }
    pthread_mutex_lock(mu);
    while (*n_flowing < N_STREAMS)
        pthread_cond_wait(cv, mu);
    pthread_mutex_unlock(mu);
}

/* Joins the streams and checks each completed with the fault-free text. */
static int join_streams(stream_t *s, char *const *expected)
{
    int ok = 0;
    for (int i = 0; i < N_STREAMS; i++) {
        pthread_join(s[i].thread, NULL);
        gateway_call_t *c = &s[i].call;
        int same = c->status == DUET_OK && expected[i] && strcmp(c->text, expected[i]) == 0;
        CHECK_MSG(same, "stream %d: %s %s\n  got:      [%s]\n  expected: [%s]", i, duet_status_str(c->status),
                  c->error, c->text, expected[i] ? expected[i] : "");
        ok += same;
        free(c->text);
    }
    return ok;
}

/* The decode instance serving stream 0 right now. */
static int serving_decode(const char *request_id, char *inst, size_t cap)
{
    duet_state_req_t r;
    if (!wait_record(request_id, DUET_REQ_DECODING, 10, &r))
        return -1;
    snprintf(inst, cap, "%s", r.decode_inst);
    return 0;
}

static void decode_fault(int sig)
{
    char *expected[N_STREAMS];
    for (int i = 0; i < N_STREAMS; i++)
        expected[i] = expected_text(prompts[i], STREAM_TOKENS);
    const char *extra[] = {"--prefill", "1", "--decode", "2", NULL};
    if (start_mesh(extra) != 0) {
        CHECK_MSG(0, "mesh did not start");
        for (int i = 0; i < N_STREAMS; i++)
            free(expected[i]);
        return;
    }
    stream_t s[N_STREAMS];
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    int n_flowing;
    start_streams(s, &mu, &cv, &n_flowing, sig == SIGKILL ? "kill" : sig == SIGTERM ? "term" : "hang", 8);
    char victim[DUET_STATE_ID_MAX];
    CHECK_EQ_INT(serving_decode(s[0].id, victim, sizeof victim), 0);
    pid_t pid = pid_of_instance(victim);
    CHECK_MSG(pid > 0, "no pid in instance id %s", victim);
    int64_t t_fault = duet_clock_ns();
    fprintf(stderr, "  %s decode instance %s (pid %d) with every stream flowing\n",
            sig == SIGKILL ? "killing" : sig == SIGTERM ? "terminating" : "stopping", victim, (int)pid);
    kill(pid, sig);

    if (sig == SIGKILL) {
        /* The registry notices through the heartbeat TTL. */
        double gone_s = -1;
        while (secs_since(t_fault) < 10) {
            int found;
            if (count_role(DUET_ROLE_DECODE, victim, &found) >= 0 && !found) {
                gone_s = secs_since(t_fault);
                break;
            }
            usleep(20000);
        }
        CHECK_MSG(gone_s >= 0 && gone_s <= 3.1, "the dead instance left the registry after %.2f s (limit 3 s)",
                  gone_s);
        fprintf(stderr, "  the dead instance left the registry %.2f s after the kill\n", gone_s);
    }
    int ok = join_streams(s, expected);
    fprintf(stderr, "  %d of %d streams completed with the fault-free text in %.1f s after the fault\n", ok,
            N_STREAMS, secs_since(t_fault));
    /* The stream on the victim was placed again. */
    duet_state_req_t r;
    CHECK_MSG(wait_record(s[0].id, DUET_REQ_DONE, 5, &r), "stream 0's record ended %s (%s)",
              duet_state_req_state_name(r.state), r.error);
    CHECK_MSG(r.attempt >= 1 && strcmp(r.decode_inst, victim) != 0,
              "stream 0: attempt %d on %s; expected a retry away from %s", r.attempt, r.decode_inst, victim);
    if (sig == SIGSTOP)
        kill(pid, SIGCONT);
    /* duet up starts a killed instance again; a stopped one comes back by itself. */
    int back = 0;
    int64_t t0 = duet_clock_ns();
    while (!back && secs_since(t0) < 60) {
        back = count_role(DUET_ROLE_DECODE, NULL, NULL) == 2;
        usleep(100000);
    }
    CHECK_MSG(back, "two decode instances were not registered again within 60 s");
    gateway_call_t c = {.prompt = prompts[0], .max_tokens = 8, .seed = -1};
    gateway_generate(client, gateway, &c);
    CHECK_MSG(c.status == DUET_OK, "a request after recovery: %s %s", duet_status_str(c.status), c.error);
    free(c.text);
    stop_mesh();
    for (int i = 0; i < N_STREAMS; i++)
        free(expected[i]);
}

static void test_decode_kill(void) { decode_fault(SIGKILL); }
static void test_decode_hang(void) { decode_fault(SIGSTOP); }
static void test_decode_stop(void) { decode_fault(SIGTERM); }

/* ---- a prefill fault ---------------------------------------------------------------------------- */

typedef struct {
    gateway_call_t call;
    pthread_t thread;
} single_t;

static void *single_main(void *arg)
{
    single_t *s = arg;
    gateway_generate(client, gateway, &s->call);
    return NULL;
}

static void prefill_fault(int sig)
{
    char *prompt = long_prompt(500);
    char *expected = expected_text(prompt, 16);
    const char *extra[] = {"--prefill", "2", "--decode", "1", NULL};
    if (start_mesh(extra) != 0) {
        CHECK_MSG(0, "mesh did not start");
        free(prompt);
        free(expected);
        return;
    }
    usleep(1500000);   /* a heartbeat after start-up, so the published free count is settled */
    int baseline = decode_free_blocks();
    CHECK(baseline > 0);

    char id[64];
    snprintf(id, sizeof id, "chaos-prefill-%d", (int)getpid());
    single_t s = {.call = {.prompt = prompt, .request_id = id, .max_tokens = 16, .seed = -1, .ignore_eos = 1}};
    pthread_create(&s.thread, NULL, single_main, &s);
    duet_state_req_t r;
    CHECK_MSG(wait_record(id, DUET_REQ_PREFILLING, 30, &r), "the request never reached PREFILLING (%s)",
              duet_state_req_state_name(r.state));
    char victim[DUET_STATE_ID_MAX];
    snprintf(victim, sizeof victim, "%s", r.prefill_inst);
    pid_t pid = pid_of_instance(victim);
    CHECK_MSG(pid > 0, "no pid in the prefill instance id '%s'", victim);
    int64_t t_fault = duet_clock_ns();
    fprintf(stderr, "  %s prefill instance %s (pid %d) during the prompt's prefill\n",
            sig == SIGKILL ? "killing" : "stopping", victim, (int)pid);
    kill(pid, sig);
    pthread_join(s.thread, NULL);
    CHECK_MSG(s.call.status == DUET_OK && strcmp(s.call.text, expected) == 0,
              "%s %s\n  got:      [%s]\n  expected: [%s]", duet_status_str(s.call.status), s.call.error,
              s.call.text, expected);
    fprintf(stderr, "  completed %.1f s after the fault\n", secs_since(t_fault));
    CHECK_MSG(wait_record(id, DUET_REQ_DONE, 5, &r), "the record ended %s (%s)", duet_state_req_state_name(r.state),
              r.error);
    CHECK_MSG(r.prefill_inst[0] && strcmp(r.prefill_inst, victim) != 0 && r.attempt >= 1,
              "the prompt was prefilled by '%s' (attempt %d); expected a retry on another instance than %s",
              r.prefill_inst, r.attempt, victim);
    /* KV moved over UCX: the retry ran remotely, not as the decode instance's local fallback. */
    CHECK_MSG(r.kv_bytes > 0 && r.kv_bytes % r.prompt_tokens == 0,
              "%lld KV bytes moved for %lld prompt tokens: the prompt was not prefilled remotely",
              (long long)r.kv_bytes, (long long)r.prompt_tokens);
    free(s.call.text);

    if (sig == SIGSTOP) {
        /* Quarantined: while the stopped instance might still write, its blocks stay out of use. */
        usleep(1500000);
        int held = decode_free_blocks();
        CHECK_MSG(held < baseline, "free blocks %d with the stopped prefill's blocks held, %d before", held,
                  baseline);
        fprintf(stderr, "  %d blocks quarantined while the prefill instance is stopped\n", baseline - held);
        kill(pid, SIGCONT);
        t_fault = duet_clock_ns();
    }
    int after = -1;
    double limit_s = sig == SIGSTOP ? 15 : 30;   /* SIGSTOP: well before the 120 s hold */
    while (after != baseline && secs_since(t_fault) < limit_s) {
        usleep(200000);
        after = decode_free_blocks();
    }
    CHECK_MSG(after == baseline, "free KV blocks %d after, %d before: blocks leaked", after, baseline);
    fprintf(stderr, "  every block back in the pool %.1f s after the %s\n", secs_since(t_fault),
            sig == SIGSTOP ? "prefill instance continued" : "kill");
    stop_mesh();
    free(prompt);
    free(expected);
}

static void test_prefill_kill(void) { prefill_fault(SIGKILL); }
static void test_kv_timeout(void) { prefill_fault(SIGSTOP); }

/* ---- Redis ------------------------------------------------------------------------------------- */

static pid_t start_redis(const char *sock)
{
    pid_t pid = fork();
    if (pid == 0) {
        char log[400];
        snprintf(log, sizeof log, "%s/redis.log", run_dir);
        FILE *f = freopen(log, "a", stdout);
        (void)f;
        dup2(STDOUT_FILENO, STDERR_FILENO);
        execlp("redis-server", "redis-server", "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700",
               "--save", "", "--appendonly", "no", (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 100 && access(sock, F_OK) != 0; i++)
        usleep(20000);
    return pid;
}

static void test_redis_restart(void)
{
    char *expected[N_STREAMS];
    for (int i = 0; i < N_STREAMS; i++)
        expected[i] = expected_text(prompts[i], STREAM_TOKENS);
    char sock[300];
    snprintf(sock, sizeof sock, "%s/own-redis.sock", run_dir);
    snprintf(redis_url, sizeof redis_url, "unix://%s", sock);
    pid_t redis = start_redis(sock);
    CHECK(redis > 0);
    const char *extra[] = {"--prefill", "1", "--decode", "1", "--redis", redis_url, NULL};
    if (start_mesh(extra) != 0) {
        CHECK_MSG(0, "mesh did not start");
        kill(redis, SIGKILL);
        waitpid(redis, NULL, 0);
        for (int i = 0; i < N_STREAMS; i++)
            free(expected[i]);
        return;
    }
    stream_t s[N_STREAMS];
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
    int n_flowing;
    start_streams(s, &mu, &cv, &n_flowing, "redis", 8);
    fprintf(stderr, "  killing Redis with every stream flowing\n");
    kill(redis, SIGKILL);
    waitpid(redis, NULL, 0);
    unlink(sock);

    gateway_call_t c = {.prompt = prompts[0], .max_tokens = 8, .seed = -1};
    gateway_generate(client, gateway, &c);
    CHECK_MSG(c.status == DUET_ERR_UNAVAILABLE, "a new request with Redis down: %s (%s); expected UNAVAILABLE",
              duet_status_str(c.status), c.error);
    CHECK_MSG(c.done_ns < 5000000000ll, "UNAVAILABLE took %.1f s", c.done_ns / 1e9);
    fprintf(stderr, "  new request with Redis down: %s in %.0f ms (%s)\n", duet_status_str(c.status),
            c.done_ns / 1e6, c.error);
    free(c.text);

    int ok = join_streams(s, expected);
    fprintf(stderr, "  %d of %d running streams finished with the fault-free text\n", ok, N_STREAMS);

    redis = start_redis(sock);
    int64_t t0 = duet_clock_ns();
    duet_status_t last = DUET_ERR_UNAVAILABLE;
    char last_err[512] = "";
    while (last != DUET_OK && secs_since(t0) < 20) {
        gateway_call_t c2 = {.prompt = prompts[1], .max_tokens = 8, .seed = -1};
        gateway_generate(client, gateway, &c2);
        last = c2.status;
        snprintf(last_err, sizeof last_err, "%s", c2.error);
        free(c2.text);
        if (last != DUET_OK) {
            CHECK_MSG(last == DUET_ERR_UNAVAILABLE, "while Redis comes back: %s (%s)", duet_status_str(last),
                      last_err);
            usleep(200000);
        }
    }
    CHECK_MSG(last == DUET_OK, "no request succeeded within 20 s of Redis coming back: %s (%s)",
              duet_status_str(last), last_err);
    fprintf(stderr, "  requests succeed again %.1f s after Redis restarted\n", secs_since(t0));
    stop_mesh();
    kill(redis, SIGTERM);
    waitpid(redis, NULL, 0);
    for (int i = 0; i < N_STREAMS; i++)
        free(expected[i]);
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: %s DUET_BINARY MODEL decode_kill|decode_stop|decode_hang|prefill_kill|kv_timeout|redis_restart\n",
                argv[0]);
        return 2;
    }
    duet_bin = argv[1];
    model_path = argv[2];
    const char *scenario = argv[3];
    signal(SIGPIPE, SIG_IGN);
    snprintf(run_dir, sizeof run_dir, "/tmp/duet-test-chaos-%s-%d", scenario, (int)getpid());
    mkdir(run_dir, 0755);
    mesh_sanitizer_setup(run_dir);   /* in a sanitizer build, every process's report lands here */
    snprintf(redis_url, sizeof redis_url, "unix://%s/redis.sock", run_dir);
    CHECK_EQ_INT(duet_rpc_client_create(&client), DUET_OK);
    /* Short fault timeouts so each scenario ends in seconds; the services read them from the
     * environment duet up passes on. */
    /* kv_timeout: the stopped instance's call times out; the retry must fit in the same limit,
     * and a prompt's prefill takes several times as long under AddressSanitizer. */
#ifdef __SANITIZE_ADDRESS__
    const char *kv_timeout_ms = "24000";
#else
    const char *kv_timeout_ms = "6000";
#endif
    setenv("DUET_PREFILL_TIMEOUT_MS", strcmp(scenario, "kv_timeout") == 0 ? kv_timeout_ms : "30000", 1);
    /* decode_hang: the stopped instance is noticed this fast; elsewhere the default, so that a
     * loaded machine's slow keepalives are not taken for a hung instance. */
    setenv("DUET_DECODE_IDLE_TIMEOUT_MS", strcmp(scenario, "decode_hang") == 0 ? "3000" : "10000", 1);
    /* A killed prefill instance can never prove it stopped writing: its blocks come back after
     * the longest hold. A stopped one that continues proves it, long before that hold ends. */
    setenv("DUET_QUARANTINE_MAX_MS", strcmp(scenario, "kv_timeout") == 0 ? "120000" : "8000", 1);
    if (strcmp(scenario, "decode_kill") == 0)
        RUN_TEST(test_decode_kill);
    else if (strcmp(scenario, "decode_hang") == 0)
        RUN_TEST(test_decode_hang);
    else if (strcmp(scenario, "decode_stop") == 0)
        RUN_TEST(test_decode_stop);
    else if (strcmp(scenario, "prefill_kill") == 0)
        RUN_TEST(test_prefill_kill);
    else if (strcmp(scenario, "kv_timeout") == 0)
        RUN_TEST(test_kv_timeout);
    else if (strcmp(scenario, "redis_restart") == 0)
        RUN_TEST(test_redis_restart);
    else {
        fprintf(stderr, "unknown scenario %s\n", scenario);
        return 2;
    }
    duet_rpc_client_destroy(client);
    if (up_pid > 0 && store)
        stop_mesh();
    int n = mesh_sanitizer_reports(run_dir);
    CHECK_MSG(n == 0, "%d sanitizer report%s (above) from the processes in %s", n, n == 1 ? "" : "s", run_dir);
    return check_report();
}
