/* tests/unit/test_state.c — lib/state against a real redis-server that the test starts on its own
 * unix socket: the request state machine, events, instance liveness, and Redis dying. */
#include <errno.h>
#include <hiredis.h>
#include <signal.h>
#include <stdint.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "check.h"
#include "clock.h"
#include "state.h"

#define TIMEOUT_MS 300

static char sock_path[108];
static pid_t redis_pid = -1;

/* ---- the redis-server under test ------------------------------------------------------- */

static redisContext *raw_connect(void)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectUnixWithTimeout(sock_path, tv);
    if (c && c->err) {
        redisFree(c);
        return NULL;
    }
    if (c)
        redisSetTimeout(c, tv);
    return c;
}

/* Runs one command on a fresh connection of our own; returns its integer reply or -999. */
static long long raw_int(const char *fmt, const char *arg)
{
    redisContext *c = raw_connect();
    if (!c)
        return -999;
    redisReply *r = redisCommand(c, fmt, arg);
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -999;
    if (r && r->type == REDIS_REPLY_STATUS)
        v = 0;
    if (r)
        freeReplyObject(r);
    redisFree(c);
    return v;
}

static void stop_redis(int sig)
{
    if (redis_pid <= 0)
        return;
    kill(redis_pid, sig);
    waitpid(redis_pid, NULL, 0);
    redis_pid = -1;
    unlink(sock_path);
}

static void stop_redis_at_exit(void)
{
    if (redis_pid > 0)
        kill(redis_pid, SIGCONT);
    stop_redis(SIGKILL);
}

/* Starts redis-server on sock_path and waits (at most 5 s) until it answers PING. */
static int start_redis(void)
{
    unlink(sock_path);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        freopen("/dev/null", "w", stdout);
        execlp("redis-server", "redis-server", "--port", "0", "--unixsocket", sock_path,
               "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
               (char *)NULL);
        _exit(127);
    }
    redis_pid = pid;
    for (int i = 0; i < 500; i++) {
        redisContext *c = raw_connect();
        if (c) {
            redisReply *r = redisCommand(c, "PING");
            int ok = r && r->type == REDIS_REPLY_STATUS;
            if (r)
                freeReplyObject(r);
            redisFree(c);
            if (ok)
                return 0;
        }
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            redis_pid = -1;
            return -1;
        }
        usleep(10000);
    }
    return -1;
}

static duet_state_t *connect_store(void)
{
    char url[128];
    snprintf(url, sizeof url, "unix://%s", sock_path);
    duet_state_t *s = NULL;
    duet_status_t st = duet_state_connect(url, TIMEOUT_MS, &s);
    CHECK_EQ_INT(st, DUET_OK);
    return s;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void new_req(duet_state_t *s, const char *id)
{
    duet_state_req_new_t n = {.id = id, .model = "smollm2", .prompt_tokens = 17, .max_tokens = 64};
    CHECK_EQ_INT(duet_state_req_create(s, &n), DUET_OK);
}

/* ---- tests ----------------------------------------------------------------------------- */

static void test_connect_rejects_bad_urls(void)
{
    duet_state_t *s = (duet_state_t *)0x1;
    CHECK_EQ_INT(duet_state_connect("http://x", TIMEOUT_MS, &s), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_state_connect("redis://h:notaport", TIMEOUT_MS, &s), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_state_connect("redis://h:70000", TIMEOUT_MS, &s), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_state_connect("redis://h:1/x", TIMEOUT_MS, &s), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_state_connect("rediss://h", TIMEOUT_MS, &s), DUET_ERR_UNSUPPORTED);
    int64_t t0 = duet_clock_ns();
    CHECK_EQ_INT(duet_state_connect("unix:///nonexistent/duet.sock", TIMEOUT_MS, &s),
                 DUET_ERR_UNAVAILABLE);
    CHECK(duet_clock_ns() - t0 < (int64_t)TIMEOUT_MS * 2 * 1000000);
    /* A closed TCP port on loopback: refused at once. */
    CHECK_EQ_INT(duet_state_connect("redis://127.0.0.1:1", TIMEOUT_MS, &s), DUET_ERR_UNAVAILABLE);
    CHECK(s == (duet_state_t *)0x1);      /* outputs only on success */
}

static void test_happy_path_sets_every_timestamp(void)
{
    duet_state_t *s = connect_store();
    if (!s)
        return;
    duet_state_set_req_ttl(s, 60);
    duet_state_req_new_t n = {.id = "req-happy", .model = "smollm2", .prompt_tokens = 17,
                              .max_tokens = 64, .arrival_ms = 0};
    CHECK_EQ_INT(duet_state_req_create(s, &n), DUET_OK);
    CHECK_EQ_INT(duet_state_req_create(s, &n), DUET_ERR_INVALID);   /* id taken */

    duet_state_req_t q;
    CHECK_EQ_INT(duet_state_req_get(s, "req-happy", &q), DUET_OK);
    CHECK_EQ_INT(q.state, DUET_REQ_QUEUED);
    CHECK_EQ_INT(q.attempt, 0);
    CHECK_EQ_INT(q.prompt_tokens, 17);
    CHECK_EQ_INT(q.max_tokens, 64);
    CHECK(strcmp(q.model, "smollm2") == 0);
    int64_t now = duet_clock_wall_ms();
    CHECK_MSG(q.arrival_ms > now - 5000 && q.arrival_ms <= now + 5000, "arrival %lld",
              (long long)q.arrival_ms);
    CHECK_EQ_INT(q.routed_ms, 0);

    duet_state_req_update_t u = DUET_STATE_REQ_UPDATE_INIT;
    u.prefill_inst = "p-1";
    u.decode_inst = "d-1";
    duet_req_state_t found = DUET_REQ_NONE;
    CHECK_EQ_INT(duet_state_req_transition(s, "req-happy", DUET_REQ_QUEUED, DUET_REQ_ROUTED, &u,
                                           &found), DUET_OK);
    CHECK_EQ_INT(found, DUET_REQ_QUEUED);
    CHECK_EQ_INT(duet_state_req_transition(s, "req-happy", DUET_REQ_ROUTED, DUET_REQ_PREFILLING,
                                           NULL, NULL), DUET_OK);
    duet_state_req_update_t u2 = DUET_STATE_REQ_UPDATE_INIT;
    u2.kv_bytes = 123456;
    u2.generated_tokens = 1;
    CHECK_EQ_INT(duet_state_req_transition(s, "req-happy", DUET_REQ_PREFILLING,
                                           DUET_REQ_DECODING, &u2, NULL), DUET_OK);
    duet_state_req_update_t u3 = DUET_STATE_REQ_UPDATE_INIT;
    u3.generated_tokens = 64;
    u3.finish_reason = "length";
    CHECK_EQ_INT(duet_state_req_transition(s, "req-happy", DUET_REQ_DECODING, DUET_REQ_DONE, &u3,
                                           NULL), DUET_OK);

    CHECK_EQ_INT(duet_state_req_get(s, "req-happy", &q), DUET_OK);
    CHECK_EQ_INT(q.state, DUET_REQ_DONE);
    CHECK(strcmp(q.id, "req-happy") == 0);
    CHECK(strcmp(q.prefill_inst, "p-1") == 0);
    CHECK(strcmp(q.decode_inst, "d-1") == 0);
    CHECK_EQ_INT(q.kv_bytes, 123456);
    CHECK_EQ_INT(q.generated_tokens, 64);
    CHECK(strcmp(q.finish_reason, "length") == 0);
    CHECK(q.error[0] == '\0');
    CHECK(q.routed_ms >= q.arrival_ms);
    CHECK(q.prefill_start_ms >= q.routed_ms);
    CHECK(q.first_token_ms >= q.prefill_start_ms);
    CHECK(q.done_ms >= q.first_token_ms);
    CHECK(q.done_ms > 0);
    long long pttl = raw_int("PTTL %s", "duet:req:req-happy");
    CHECK_MSG(pttl > 50000 && pttl <= 60000, "pttl %lld", pttl);

    /* A record still running has no TTL. */
    new_req(s, "req-running");
    CHECK_EQ_INT(raw_int("PTTL %s", "duet:req:req-running"), -1);
    CHECK_EQ_INT(duet_state_req_get(s, "req-absent", &q), DUET_ERR_NOT_FOUND);
    duet_state_close(s);
}

static void test_stale_transition_is_refused_and_changes_nothing(void)
{
    duet_state_t *s = connect_store();
    if (!s)
        return;
    new_req(s, "req-stale");
    CHECK_EQ_INT(duet_state_req_transition(s, "req-stale", DUET_REQ_QUEUED, DUET_REQ_ROUTED, NULL,
                                           NULL), DUET_OK);
    CHECK_EQ_INT(duet_state_req_transition(s, "req-stale", DUET_REQ_ROUTED, DUET_REQ_PREFILLING,
                                           NULL, NULL), DUET_OK);
    duet_state_req_t before, after;
    CHECK_EQ_INT(duet_state_req_get(s, "req-stale", &before), DUET_OK);
    long long events_before = raw_int("XLEN %s", "duet:events");

    /* The same ROUTED→PREFILLING delivered twice. */
    duet_state_req_update_t u = DUET_STATE_REQ_UPDATE_INIT;
    u.decode_inst = "d-other";
    duet_req_state_t found = DUET_REQ_NONE;
    CHECK_EQ_INT(duet_state_req_transition(s, "req-stale", DUET_REQ_ROUTED, DUET_REQ_PREFILLING,
                                           &u, &found), DUET_ERR_INVALID);
    CHECK_EQ_INT(found, DUET_REQ_PREFILLING);
    CHECK_STR_CONTAINS(duet_state_last_error(s), "refused");
    CHECK_EQ_INT(duet_state_req_get(s, "req-stale", &after), DUET_OK);
    CHECK(memcmp(&before, &after, sizeof before) == 0);

    /* Finished: a late prefill reply must not resurrect it. */
    CHECK_EQ_INT(duet_state_req_transition(s, "req-stale", DUET_REQ_PREFILLING,
                                           DUET_REQ_CANCELLED, NULL, NULL), DUET_OK);
    CHECK_EQ_INT(duet_state_req_get(s, "req-stale", &before), DUET_OK);
    CHECK_EQ_INT(duet_state_req_transition(s, "req-stale", DUET_REQ_PREFILLING,
                                           DUET_REQ_DECODING, &u, &found), DUET_ERR_INVALID);
    CHECK_EQ_INT(found, DUET_REQ_CANCELLED);
    /* DONE→DECODING is no edge at all: refused before it reaches Redis. */
    CHECK_EQ_INT(duet_state_req_transition(s, "req-stale", DUET_REQ_DONE, DUET_REQ_DECODING, &u,
                                           NULL), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_state_req_transition(s, "req-stale", DUET_REQ_QUEUED, DUET_REQ_DONE, &u,
                                           NULL), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_state_req_get(s, "req-stale", &after), DUET_OK);
    CHECK(memcmp(&before, &after, sizeof before) == 0);
    CHECK_EQ_INT(raw_int("XLEN %s", "duet:events"), events_before + 1);   /* the cancel only */

    CHECK_EQ_INT(duet_state_req_transition(s, "req-nobody", DUET_REQ_QUEUED, DUET_REQ_ROUTED, NULL,
                                           NULL), DUET_ERR_NOT_FOUND);
    CHECK_EQ_INT(duet_state_req_transition(s, "bad id", DUET_REQ_QUEUED, DUET_REQ_ROUTED, NULL,
                                           NULL), DUET_ERR_INVALID);
    duet_state_close(s);
}

static void test_retry_increments_attempt(void)
{
    duet_state_t *s = connect_store();
    if (!s)
        return;
    new_req(s, "req-retry");
    duet_state_req_t q;
    CHECK_EQ_INT(duet_state_req_transition(s, "req-retry", DUET_REQ_QUEUED, DUET_REQ_ROUTED, NULL,
                                           NULL), DUET_OK);
    CHECK_EQ_INT(duet_state_req_transition(s, "req-retry", DUET_REQ_ROUTED, DUET_REQ_PREFILLING,
                                           NULL, NULL), DUET_OK);
    duet_state_req_update_t u = DUET_STATE_REQ_UPDATE_INIT;
    u.prefill_inst = "p-2";
    CHECK_EQ_INT(duet_state_req_transition(s, "req-retry", DUET_REQ_PREFILLING, DUET_REQ_ROUTED,
                                           &u, NULL), DUET_OK);
    CHECK_EQ_INT(duet_state_req_get(s, "req-retry", &q), DUET_OK);
    CHECK_EQ_INT(q.state, DUET_REQ_ROUTED);
    CHECK_EQ_INT(q.attempt, 1);
    CHECK(strcmp(q.prefill_inst, "p-2") == 0);
    CHECK_EQ_INT(duet_state_req_transition(s, "req-retry", DUET_REQ_ROUTED, DUET_REQ_ROUTED, NULL,
                                           NULL), DUET_OK);
    CHECK_EQ_INT(duet_state_req_transition(s, "req-retry", DUET_REQ_ROUTED, DUET_REQ_PREFILLING,
                                           NULL, NULL), DUET_OK);
    CHECK_EQ_INT(duet_state_req_transition(s, "req-retry", DUET_REQ_PREFILLING, DUET_REQ_DECODING,
                                           NULL, NULL), DUET_OK);
    CHECK_EQ_INT(duet_state_req_transition(s, "req-retry", DUET_REQ_DECODING, DUET_REQ_ROUTED,
                                           NULL, NULL), DUET_OK);
    CHECK_EQ_INT(duet_state_req_get(s, "req-retry", &q), DUET_OK);
    CHECK_EQ_INT(q.attempt, 3);
    /* Failing keeps the attempt count and records the error. */
    duet_state_req_update_t f = DUET_STATE_REQ_UPDATE_INIT;
    f.error = "decode instance d-1 lost";
    CHECK_EQ_INT(duet_state_req_transition(s, "req-retry", DUET_REQ_ROUTED, DUET_REQ_FAILED, &f,
                                           NULL), DUET_OK);
    CHECK_EQ_INT(duet_state_req_get(s, "req-retry", &q), DUET_OK);
    CHECK_EQ_INT(q.state, DUET_REQ_FAILED);
    CHECK_EQ_INT(q.attempt, 3);
    CHECK(strcmp(q.error, "decode instance d-1 lost") == 0);
    CHECK(q.done_ms > 0);
    /* No retry out of a terminal state. */
    CHECK_EQ_INT(duet_state_req_transition(s, "req-retry", DUET_REQ_FAILED, DUET_REQ_ROUTED, NULL,
                                           NULL), DUET_ERR_INVALID);
    duet_state_close(s);
}

static void test_events_arrive_in_order(void)
{
    duet_state_t *s = connect_store();
    if (!s)
        return;
    /* Start after whatever the stream already holds. */
    duet_state_event_t ev[64];
    char last[32] = "";
    int n;
    do {
        CHECK_EQ_INT(duet_state_events_read(s, last, ev, 64, &n), DUET_OK);
        if (n > 0)
            strcpy(last, ev[n - 1].stream_id);
    } while (n == 64);

    new_req(s, "req-events");
    static const duet_req_state_t chain[] = {DUET_REQ_QUEUED, DUET_REQ_ROUTED,
                                             DUET_REQ_PREFILLING, DUET_REQ_DECODING,
                                             DUET_REQ_DONE};
    for (int i = 0; i + 1 < 5; i++)
        CHECK_EQ_INT(duet_state_req_transition(s, "req-events", chain[i], chain[i + 1], NULL,
                                               NULL), DUET_OK);
    CHECK_EQ_INT(duet_state_events_read(s, last, ev, 64, &n), DUET_OK);
    CHECK_EQ_INT(n, 5);
    for (int i = 0; i < n && i < 5; i++) {
        CHECK(strcmp(ev[i].req_id, "req-events") == 0);
        CHECK_EQ_INT(ev[i].from, i == 0 ? DUET_REQ_NONE : chain[i - 1]);
        CHECK_EQ_INT(ev[i].to, chain[i]);
        CHECK_EQ_INT(ev[i].attempt, 0);
        CHECK(ev[i].ms > 0);
        if (i > 0)
            CHECK(ev[i].ms >= ev[i - 1].ms);
    }
    /* Reading on from the last one gives nothing new. */
    CHECK_EQ_INT(duet_state_events_read(s, ev[4].stream_id, ev, 64, &n), DUET_OK);
    CHECK_EQ_INT(n, 0);
    duet_state_close(s);
}

static const duet_state_inst_t *find_inst(const duet_state_inst_t *a, int n, const char *id)
{
    for (int i = 0; i < n; i++)
        if (strcmp(a[i].id, id) == 0)
            return &a[i];
    return NULL;
}

static void test_instances_register_list_expire(void)
{
    duet_state_t *s = connect_store();
    if (!s)
        return;
    char id_p[DUET_STATE_ID_MAX], id_d[DUET_STATE_ID_MAX];
    CHECK_EQ_INT(duet_state_inst_make_id(id_p, sizeof id_p), DUET_OK);
    CHECK_EQ_INT(duet_state_inst_make_id(id_d, sizeof id_d), DUET_OK);
    CHECK(strcmp(id_p, id_d) != 0);
    char pid_part[32];
    snprintf(pid_part, sizeof pid_part, "-%ld-", (long)getpid());
    CHECK_STR_CONTAINS(id_p, pid_part);
    char tiny[4];
    CHECK_EQ_INT(duet_state_inst_make_id(tiny, sizeof tiny), DUET_ERR_INVALID);

    /* Every byte value, NULs and 0xff included. */
    uint8_t ucx[300], rkey[37];
    for (int i = 0; i < 300; i++)
        ucx[i] = (uint8_t)(i * 7);
    for (int i = 0; i < 37; i++)
        rkey[i] = (uint8_t)(255 - i);
    rkey[5] = 0;

    duet_state_inst_t p = {.role = DUET_ROLE_PREFILL, .ucx_addr = ucx, .ucx_addr_len = sizeof ucx,
                           .rkey = rkey, .rkey_len = sizeof rkey,
                           .pool_base = 0xffff800012345000ull, .kv_blocks_total = 4096,
                           .load = {.kv_blocks_free = 4000, .queued_tokens = 12}};
    strcpy(p.id, id_p);
    strcpy(p.grpc_addr, "127.0.0.1:7001");
    strcpy(p.model, "smollm2-135m");
    strcpy(p.version, "0.1.0");
    duet_state_inst_t d = {.role = DUET_ROLE_DECODE, .kv_blocks_total = 100};
    strcpy(d.id, id_d);
    strcpy(d.grpc_addr, "127.0.0.1:7002");
    CHECK_EQ_INT(duet_state_inst_register(s, &p), DUET_OK);
    CHECK_EQ_INT(duet_state_inst_register(s, &d), DUET_OK);

    duet_state_inst_t *list = (duet_state_inst_t *)0x1;
    int n = -1;
    CHECK_EQ_INT(duet_state_inst_list(s, DUET_ROLE_ANY, &list, &n), DUET_OK);
    CHECK_EQ_INT(n, 2);
    const duet_state_inst_t *got = find_inst(list, n, id_p);
    CHECK(got != NULL);
    if (got) {
        CHECK_EQ_INT(got->role, DUET_ROLE_PREFILL);
        CHECK(strcmp(got->grpc_addr, "127.0.0.1:7001") == 0);
        CHECK(strcmp(got->model, "smollm2-135m") == 0);
        CHECK(strcmp(got->version, "0.1.0") == 0);
        CHECK_EQ_INT(got->ucx_addr_len, sizeof ucx);
        CHECK(got->ucx_addr && memcmp(got->ucx_addr, ucx, sizeof ucx) == 0);
        CHECK_EQ_INT(got->rkey_len, sizeof rkey);
        CHECK(got->rkey && memcmp(got->rkey, rkey, sizeof rkey) == 0);
        CHECK(got->pool_base == 0xffff800012345000ull);
        CHECK_EQ_INT(got->kv_blocks_total, 4096);
        CHECK_EQ_INT(got->load.kv_blocks_free, 4000);
        CHECK_EQ_INT(got->load.queued_tokens, 12);
        CHECK(got->last_heartbeat_ms > 0);
    }
    got = find_inst(list, n, id_d);
    CHECK(got && got->ucx_addr == NULL && got->ucx_addr_len == 0);
    duet_state_inst_list_free(list);

    CHECK_EQ_INT(duet_state_inst_list(s, DUET_ROLE_PREFILL, &list, &n), DUET_OK);
    CHECK_EQ_INT(n, 1);
    if (n == 1)
        CHECK(strcmp(list[0].id, id_p) == 0);
    duet_state_inst_list_free(list);
    CHECK_EQ_INT(duet_state_inst_list(s, DUET_ROLE_GATEWAY, &list, &n), DUET_OK);
    CHECK_EQ_INT(n, 0);
    CHECK(list == NULL);

    /* Heartbeats update the load; the prefill instance stops heartbeating and must vanish
     * within TTL + 0.5 s while the decode one, still beating, stays. */
    duet_state_load_t load = {.kv_blocks_free = 42, .queued_tokens = 0, .running_seqs = 3};
    CHECK_EQ_INT(duet_state_inst_heartbeat(s, id_d, &load), DUET_OK);
    CHECK_EQ_INT(duet_state_inst_list(s, DUET_ROLE_DECODE, &list, &n), DUET_OK);
    CHECK(n == 1 && list[0].load.kv_blocks_free == 42 && list[0].load.running_seqs == 3 &&
          list[0].kv_blocks_total == 100 && strcmp(list[0].grpc_addr, "127.0.0.1:7002") == 0);
    duet_state_inst_list_free(list);

    int64_t t0 = duet_clock_ns();
    int gone_ms = -1;
    while (duet_clock_ns() - t0 < (int64_t)(DUET_STATE_INST_TTL_MS + 500) * 1000000) {
        CHECK_EQ_INT(duet_state_inst_heartbeat(s, id_d, &load), DUET_OK);
        if (duet_state_inst_list(s, DUET_ROLE_ANY, &list, &n) == DUET_OK) {
            int has_p = find_inst(list, n, id_p) != NULL, has_d = find_inst(list, n, id_d) != NULL;
            duet_state_inst_list_free(list);
            CHECK(has_d);
            if (!has_p) {
                gone_ms = (int)((duet_clock_ns() - t0) / 1000000);
                break;
            }
        }
        sleep_ms(250);
    }
    CHECK_MSG(gone_ms >= 0, "instance still listed after %d ms", DUET_STATE_INST_TTL_MS + 500);
    CHECK_MSG(gone_ms >= DUET_STATE_INST_TTL_MS - 1000, "vanished too early: %d ms", gone_ms);
    fprintf(stderr, "  silent instance left the list after %d ms\n", gone_ms);
    /* Its stale zset member was pruned, and a late heartbeat does not resurrect it. */
    CHECK_EQ_INT(raw_int("ZSCORE duet:insts %s", id_p), -999);
    CHECK_EQ_INT(duet_state_inst_heartbeat(s, id_p, &load), DUET_ERR_NOT_FOUND);
    CHECK_EQ_INT(raw_int("EXISTS duet:inst:%s", id_p), 0);

    CHECK_EQ_INT(duet_state_inst_remove(s, id_d), DUET_OK);
    CHECK_EQ_INT(duet_state_inst_remove(s, id_d), DUET_OK);
    CHECK_EQ_INT(duet_state_inst_list(s, DUET_ROLE_ANY, &list, &n), DUET_OK);
    CHECK_EQ_INT(n, 0);
    duet_state_close(s);
}

static void test_flushed_scripts_are_reloaded(void)
{
    duet_state_t *s = connect_store();
    if (!s)
        return;
    CHECK_EQ_INT(raw_int("SCRIPT %s", "FLUSH"), 0);
    duet_state_stats_t before, after;
    duet_state_stats(s, &before);
    new_req(s, "req-noscript");
    CHECK_EQ_INT(duet_state_req_transition(s, "req-noscript", DUET_REQ_QUEUED, DUET_REQ_ROUTED,
                                           NULL, NULL), DUET_OK);
    duet_state_stats(s, &after);
    CHECK_EQ_INT(after.script_loads, before.script_loads + 2);   /* create, then transition */
    duet_state_close(s);
}

static void test_password_is_sent(void)
{
    redisContext *c = raw_connect();
    CHECK(c != NULL);
    if (!c)
        return;
    redisReply *r = redisCommand(c, "CONFIG SET requirepass duet-pw");
    CHECK(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);

    char url[192];
    duet_state_t *s = NULL;
    snprintf(url, sizeof url, "unix://:wrong@%s", sock_path);
    CHECK_EQ_INT(duet_state_connect(url, TIMEOUT_MS, &s), DUET_ERR_UNAUTHENTICATED);
    snprintf(url, sizeof url, "unix://default:duet-pw@%s", sock_path);
    CHECK_EQ_INT(duet_state_connect(url, TIMEOUT_MS, &s), DUET_OK);
    if (s) {
        CHECK_EQ_INT(duet_state_ping(s), DUET_OK);
        duet_state_close(s);
    }
    r = redisCommand(c, "CONFIG SET requirepass %s", "");
    CHECK(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    redisFree(c);
}

/* Runs f and checks it answered UNAVAILABLE within the timeout (plus scheduling slack). */
#define CHECK_UNAVAILABLE_FAST(call)                                                      \
    do {                                                                                  \
        int64_t _t0 = duet_clock_ns();                                                    \
        CHECK_EQ_INT((call), DUET_ERR_UNAVAILABLE);                                       \
        int64_t _ms = (duet_clock_ns() - _t0) / 1000000;                                  \
        CHECK_MSG(_ms <= 2 * TIMEOUT_MS + 200, "%s took %lld ms", #call, (long long)_ms); \
    } while (0)

/* Polls until a call succeeds again, for at most 3 s. */
static duet_status_t wait_ping(duet_state_t *s)
{
    duet_status_t st = DUET_ERR_UNAVAILABLE;
    for (int i = 0; i < 60 && st != DUET_OK; i++) {
        st = duet_state_ping(s);
        if (st != DUET_OK)
            sleep_ms(50);
    }
    return st;
}

static void test_redis_down_then_back(void)
{
    duet_state_t *s = connect_store();
    if (!s)
        return;
    new_req(s, "req-down");
    duet_state_load_t load = {0};
    duet_state_req_t q;
    duet_state_inst_t *list;
    int n;

    /* Hung: Redis stopped, its socket still accepting. Calls time out instead of hanging. */
    kill(redis_pid, SIGSTOP);
    CHECK_UNAVAILABLE_FAST(duet_state_req_get(s, "req-down", &q));
    CHECK_UNAVAILABLE_FAST(duet_state_req_transition(s, "req-down", DUET_REQ_QUEUED,
                                                     DUET_REQ_ROUTED, NULL, NULL));
    kill(redis_pid, SIGCONT);
    CHECK_EQ_INT(wait_ping(s), DUET_OK);

    /* Dead: every call answers UNAVAILABLE, none crashes (SIGPIPE included). */
    stop_redis(SIGKILL);
    CHECK_UNAVAILABLE_FAST(duet_state_req_get(s, "req-down", &q));
    CHECK_UNAVAILABLE_FAST(duet_state_req_transition(s, "req-down", DUET_REQ_QUEUED,
                                                     DUET_REQ_ROUTED, NULL, NULL));
    CHECK_UNAVAILABLE_FAST(duet_state_inst_heartbeat(s, "i-1", &load));
    CHECK_UNAVAILABLE_FAST(duet_state_inst_list(s, DUET_ROLE_ANY, &list, &n));
    CHECK_UNAVAILABLE_FAST(duet_state_ping(s));
    sleep_ms(DUET_STATE_RECONNECT_MS + 20);
    CHECK_UNAVAILABLE_FAST(duet_state_ping(s));
    CHECK(duet_state_last_error(s)[0] != '\0');

    /* Back on the same socket, empty (no persistence): reconnects and re-sends its scripts. */
    CHECK_EQ_INT(start_redis(), 0);
    duet_state_stats_t before, after;
    duet_state_stats(s, &before);
    CHECK_EQ_INT(wait_ping(s), DUET_OK);
    new_req(s, "req-down");
    CHECK_EQ_INT(duet_state_req_transition(s, "req-down", DUET_REQ_QUEUED, DUET_REQ_ROUTED, NULL,
                                           NULL), DUET_OK);
    CHECK_EQ_INT(duet_state_req_get(s, "req-down", &q), DUET_OK);
    CHECK_EQ_INT(q.state, DUET_REQ_ROUTED);
    duet_state_stats(s, &after);
    CHECK(after.reconnects > before.reconnects);
    CHECK_EQ_INT(after.script_loads, before.script_loads + 2);
    duet_state_close(s);
}

/* Rates on this machine, printed for the record and never asserted. */
static void test_throughput_is_reported(void)
{
    duet_state_t *s = connect_store();
    if (!s)
        return;
    duet_state_inst_t in = {.role = DUET_ROLE_DECODE};
    strcpy(in.id, "bench-inst");
    CHECK_EQ_INT(duet_state_inst_register(s, &in), DUET_OK);
    duet_state_load_t load = {0};
    const int n_hb = 5000;
    int64_t t0 = duet_clock_ns();
    int fails = 0;
    for (int i = 0; i < n_hb; i++) {
        load.kv_blocks_free = i;
        fails += duet_state_inst_heartbeat(s, "bench-inst", &load) != DUET_OK;
    }
    double hb_s = (double)(duet_clock_ns() - t0) / 1e9;
    CHECK_EQ_INT(fails, 0);

    const int n_req = 1000;
    static const duet_req_state_t chain[] = {DUET_REQ_QUEUED, DUET_REQ_ROUTED,
                                             DUET_REQ_PREFILLING, DUET_REQ_DECODING,
                                             DUET_REQ_DONE};
    for (int i = 0; i < n_req; i++) {
        char id[32];
        snprintf(id, sizeof id, "bench-%d", i);
        new_req(s, id);
    }
    t0 = duet_clock_ns();
    for (int i = 0; i < n_req; i++) {
        char id[32];
        snprintf(id, sizeof id, "bench-%d", i);
        for (int k = 0; k < 4; k++)
            fails += duet_state_req_transition(s, id, chain[k], chain[k + 1], NULL, NULL) !=
                     DUET_OK;
    }
    double tr_s = (double)(duet_clock_ns() - t0) / 1e9;
    CHECK_EQ_INT(fails, 0);
    fprintf(stderr, "  heartbeat: %.0f ops/s; transition: %.0f ops/s (one round trip each, "
                    "unix socket, one connection)\n",
            n_hb / hb_s, 4 * n_req / tr_s);
    duet_state_close(s);
}

/* A second redis-server started with --requirepass and an ACL user (the way a deployment runs
 * it): the right credentials work, from the url or from DUET_REDIS_PASSWORD / DUET_REDIS_USER;
 * wrong ones are UNAUTHENTICATED; AUTH is sent again after the connection is killed. */
static void test_requirepass_and_acl_user(void)
{
    char auth_sock[128], url[256];
    snprintf(auth_sock, sizeof auth_sock, "/tmp/duet-test-auth-%ld.sock", (long)getpid());
    unlink(auth_sock);
    pid_t pid = fork();
    if (pid == 0) {
        freopen("/dev/null", "w", stdout);
        execlp("redis-server", "redis-server", "--port", "0", "--unixsocket", auth_sock, "--save", "",
               "--appendonly", "no", "--loglevel", "warning", "--requirepass", "main-pw",
               "--user", "duet-svc", "on", ">svc-pw", "~*", "&*", "+@all", (char *)NULL);
        _exit(127);
    }
    CHECK(pid > 0);
    if (pid <= 0)
        return;
    duet_state_t *s = NULL;
    snprintf(url, sizeof url, "unix://:main-pw@%s", auth_sock);
    duet_status_t st = DUET_ERR_UNAVAILABLE;
    for (int i = 0; i < 300 && st == DUET_ERR_UNAVAILABLE; i++) {
        st = duet_state_connect(url, TIMEOUT_MS, &s);
        if (st == DUET_ERR_UNAVAILABLE)
            sleep_ms(10);
    }
    CHECK_EQ_INT(st, DUET_OK);   /* the default user, --requirepass */
    if (s) {
        CHECK_EQ_INT(duet_state_ping(s), DUET_OK);
        duet_state_close(s);
        s = NULL;
    }
    snprintf(url, sizeof url, "unix://:not-it@%s", auth_sock);
    CHECK_EQ_INT(duet_state_connect(url, TIMEOUT_MS, &s), DUET_ERR_UNAUTHENTICATED);
    snprintf(url, sizeof url, "unix://%s", auth_sock);
    CHECK_EQ_INT(duet_state_connect(url, TIMEOUT_MS, &s), DUET_ERR_UNAUTHENTICATED);   /* none at all */
    snprintf(url, sizeof url, "unix://duet-svc:not-it@%s", auth_sock);
    CHECK_EQ_INT(duet_state_connect(url, TIMEOUT_MS, &s), DUET_ERR_UNAUTHENTICATED);
    snprintf(url, sizeof url, "unix://duet-svc:main-pw@%s", auth_sock);   /* another user's password */
    CHECK_EQ_INT(duet_state_connect(url, TIMEOUT_MS, &s), DUET_ERR_UNAUTHENTICATED);

    /* The ACL user, from the url; its connection killed, the next call logs in again. */
    snprintf(url, sizeof url, "unix://duet-svc:svc-pw@%s", auth_sock);
    CHECK_EQ_INT(duet_state_connect(url, TIMEOUT_MS, &s), DUET_OK);
    if (s) {
        CHECK_EQ_INT(duet_state_ping(s), DUET_OK);
        redisContext *admin = redisConnectUnix(auth_sock);
        redisReply *r = admin ? redisCommand(admin, "AUTH main-pw") : NULL;
        CHECK(r && r->type == REDIS_REPLY_STATUS);
        if (r)
            freeReplyObject(r);
        r = admin ? redisCommand(admin, "CLIENT KILL USER duet-svc") : NULL;
        CHECK_MSG(r && r->type == REDIS_REPLY_INTEGER && r->integer == 1, "CLIENT KILL: %s",
                  r && r->str ? r->str : "no reply");
        if (r)
            freeReplyObject(r);
        if (admin)
            redisFree(admin);
        CHECK_EQ_INT(wait_ping(s), DUET_OK);
        duet_state_stats_t stats;
        duet_state_stats(s, &stats);
        CHECK_EQ_INT(stats.reconnects, 1);
        duet_state_close(s);
        s = NULL;
    }

    /* From the environment, so the password is on no command line. */
    snprintf(url, sizeof url, "unix://%s", auth_sock);
    setenv("DUET_REDIS_PASSWORD", "main-pw", 1);
    CHECK_EQ_INT(duet_state_connect(url, TIMEOUT_MS, &s), DUET_OK);
    duet_state_close(s);
    s = NULL;
    setenv("DUET_REDIS_USER", "duet-svc", 1);
    setenv("DUET_REDIS_PASSWORD", "svc-pw", 1);
    CHECK_EQ_INT(duet_state_connect(url, TIMEOUT_MS, &s), DUET_OK);
    duet_state_close(s);
    s = NULL;
    setenv("DUET_REDIS_PASSWORD", "wrong", 1);
    CHECK_EQ_INT(duet_state_connect(url, TIMEOUT_MS, &s), DUET_ERR_UNAUTHENTICATED);
    /* A password in the url wins over the environment. */
    snprintf(url, sizeof url, "unix://:main-pw@%s", auth_sock);
    CHECK_EQ_INT(duet_state_connect(url, TIMEOUT_MS, &s), DUET_OK);
    duet_state_close(s);
    unsetenv("DUET_REDIS_USER");
    unsetenv("DUET_REDIS_PASSWORD");

    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    unlink(auth_sock);
}

static void test_url_redacted_for_logs(void)
{
    char out[128];
    duet_state_url_redact("redis://duet-svc:s3cret@redis:6379/2", out, sizeof out);
    CHECK(strcmp(out, "redis://duet-svc:***@redis:6379/2") == 0);
    duet_state_url_redact("redis://:s3cret@10.0.0.5:6380", out, sizeof out);
    CHECK(strcmp(out, "redis://:***@10.0.0.5:6380") == 0);
    duet_state_url_redact("unix://u:p@ss@/run/redis.sock", out, sizeof out);
    CHECK(strcmp(out, "unix://u:***@/run/redis.sock") == 0);
    duet_state_url_redact("redis://127.0.0.1:6379", out, sizeof out);
    CHECK(strcmp(out, "redis://127.0.0.1:6379") == 0);
    duet_state_url_redact("/run/redis.sock", out, sizeof out);
    CHECK(strcmp(out, "/run/redis.sock") == 0);
}

int main(void)
{
    snprintf(sock_path, sizeof sock_path, "/tmp/duet-test-%ld.sock", (long)getpid());
    atexit(stop_redis_at_exit);
    RUN_TEST(test_connect_rejects_bad_urls);
    if (start_redis() != 0) {
        fprintf(stderr, "test_state: could not start redis-server on %s\n", sock_path);
        return 1;
    }
    RUN_TEST(test_happy_path_sets_every_timestamp);
    RUN_TEST(test_stale_transition_is_refused_and_changes_nothing);
    RUN_TEST(test_retry_increments_attempt);
    RUN_TEST(test_events_arrive_in_order);
    RUN_TEST(test_flushed_scripts_are_reloaded);
    RUN_TEST(test_instances_register_list_expire);
    RUN_TEST(test_password_is_sent);
    RUN_TEST(test_requirepass_and_acl_user);
    RUN_TEST(test_url_redacted_for_logs);
    RUN_TEST(test_redis_down_then_back);
    RUN_TEST(test_throughput_is_reported);
    stop_redis(SIGTERM);
    return check_report();
}
