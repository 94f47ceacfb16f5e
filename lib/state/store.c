/* lib/state/store.c — the store's connection: url parsing, connect and transparent reconnect,
 * one-round-trip pipelines, and Lua scripts run by EVALSHA with a NOSCRIPT fallback. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"
#include "state_internal.h"

static const char *const *script_source(state_script_t script)
{
    static const char *const *const sources[STATE_SCRIPT_COUNT] = {
        [STATE_SCRIPT_REQ_CREATE]     = &state_script_req_create,
        [STATE_SCRIPT_REQ_TRANSITION] = &state_script_req_transition,
        [STATE_SCRIPT_INST_REGISTER]  = &state_script_inst_register,
        [STATE_SCRIPT_INST_HEARTBEAT] = &state_script_inst_heartbeat,
        [STATE_SCRIPT_INST_LIST]      = &state_script_inst_list,
    };
    return sources[script];
}

/* ---- small helpers shared by the other files ------------------------------------------- */

void state_set_error(duet_state_t *s, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->err, sizeof s->err, fmt, ap);
    va_end(ap);
}

void state_copy_str(char *dst, size_t cap, const char *src, size_t len)
{
    if (len >= cap)
        len = cap - 1;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

uint64_t state_parse_uint(const char *s, size_t len)
{
    char buf[32];
    if (!s || len == 0 || len >= sizeof buf || s[0] == '-')
        return 0;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *end;
    errno = 0;
    unsigned long long v = strtoull(buf, &end, 10);
    if (errno || *end)
        return 0;
    return v;
}

int64_t state_parse_int(const char *s, size_t len)
{
    char buf[32];
    if (!s || len == 0 || len >= sizeof buf)
        return 0;
    memcpy(buf, s, len);
    buf[len] = '\0';
    char *end;
    errno = 0;
    long long v = strtoll(buf, &end, 10);
    if (errno || *end)
        return 0;
    return v;
}

int state_id_valid(const char *id)
{
    if (!id || !*id)
        return 0;
    size_t n = 0;
    for (const char *p = id; *p; p++, n++)
        if ((unsigned char)*p <= ' ' || (unsigned char)*p >= 0x7f)
            return 0;
    return n < DUET_STATE_ID_MAX;
}

void state_args_bin(state_args_t *a, const void *p, size_t n)
{
    if (a->argc == STATE_ARGS_MAX) {
        a->overflow = 1;
        return;
    }
    /* hiredis sends a zero-length argument fine but wants a non-NULL pointer for it. */
    a->argv[a->argc] = p ? p : "";
    a->len[a->argc] = n;
    a->argc++;
}

void state_args_str(state_args_t *a, const char *s)
{
    state_args_bin(a, s, strlen(s));
}

void state_args_int(state_args_t *a, int64_t v)
{
    if (a->argc == STATE_ARGS_MAX) {
        a->overflow = 1;
        return;
    }
    int n = snprintf(a->num[a->argc], sizeof a->num[0], "%" PRId64, v);
    state_args_bin(a, a->num[a->argc], (size_t)n);
}

void state_args_uint(state_args_t *a, uint64_t v)
{
    if (a->argc == STATE_ARGS_MAX) {
        a->overflow = 1;
        return;
    }
    int n = snprintf(a->num[a->argc], sizeof a->num[0], "%" PRIu64, v);
    state_args_bin(a, a->num[a->argc], (size_t)n);
}

/* ---- url ------------------------------------------------------------------------------- */

/* Reads "[user]:password" from p up to `at` (the '@'). */
static duet_status_t parse_userinfo(duet_state_t *s, const char *p, const char *at)
{
    const char *colon = memchr(p, ':', (size_t)(at - p));
    if (!colon)
        return DUET_ERR_INVALID;         /* "user@" without a password means nothing to AUTH */
    size_t ulen = (size_t)(colon - p), plen = (size_t)(at - colon - 1);
    if (ulen >= sizeof s->user || plen >= sizeof s->password || plen == 0)
        return DUET_ERR_INVALID;
    memcpy(s->user, p, ulen);
    s->user[ulen] = '\0';
    memcpy(s->password, colon + 1, plen);
    s->password[plen] = '\0';
    return DUET_OK;
}

/* Splits the url into the store's host/port/path/user/password/db. */
static duet_status_t parse_url(duet_state_t *s, const char *url)
{
    s->port = 6379;
    s->db = 0;
    if (url[0] == '/') {
        if (strlen(url) >= sizeof s->path)
            return DUET_ERR_INVALID;
        strcpy(s->path, url);
        return DUET_OK;
    }
    if (strncmp(url, "unix://", 7) == 0) {
        const char *p = url + 7;
        const char *at = p[0] != '/' ? strstr(p, "@/") : NULL;   /* the path starts at "@/" */
        if (at) {
            if (parse_userinfo(s, p, at) != DUET_OK)
                return DUET_ERR_INVALID;
            p = at + 1;
        }
        if (p[0] != '/' || strlen(p) >= sizeof s->path)
            return DUET_ERR_INVALID;
        strcpy(s->path, p);
        return DUET_OK;
    }
    if (strncmp(url, "rediss://", 9) == 0)
        return DUET_ERR_UNSUPPORTED;      /* hiredis 0.14 has no TLS */
    if (strncmp(url, "redis://", 8) != 0)
        return DUET_ERR_INVALID;

    const char *p = url + 8;
    const char *at = strrchr(p, '@');
    if (at) {
        if (parse_userinfo(s, p, at) != DUET_OK)
            return DUET_ERR_INVALID;
        p = at + 1;
    }
    const char *host_end;
    if (*p == '[') {                      /* [ipv6]:port */
        const char *close = strchr(p, ']');
        if (!close)
            return DUET_ERR_INVALID;
        if ((size_t)(close - p - 1) >= sizeof s->host)
            return DUET_ERR_INVALID;
        memcpy(s->host, p + 1, (size_t)(close - p - 1));
        s->host[close - p - 1] = '\0';
        host_end = close + 1;
    } else {
        host_end = p + strcspn(p, ":/");
        if ((size_t)(host_end - p) >= sizeof s->host)
            return DUET_ERR_INVALID;
        memcpy(s->host, p, (size_t)(host_end - p));
        s->host[host_end - p] = '\0';
    }
    if (!s->host[0])
        strcpy(s->host, "127.0.0.1");
    p = host_end;
    if (*p == ':') {
        char *end;
        errno = 0;
        long port = strtol(p + 1, &end, 10);
        if (errno || end == p + 1 || port <= 0 || port > 65535 || (*end && *end != '/'))
            return DUET_ERR_INVALID;
        s->port = (int)port;
        p = end;
    }
    if (*p == '/' && p[1]) {
        char *end;
        errno = 0;
        long db = strtol(p + 1, &end, 10);
        if (errno || *end || db < 0 || db > INT_MAX)
            return DUET_ERR_INVALID;
        s->db = (int)db;
    } else if (*p && strcmp(p, "/") != 0) {
        return DUET_ERR_INVALID;
    }
    return DUET_OK;
}

/* ---- connection ------------------------------------------------------------------------ */

static void drop_connection(duet_state_t *s)
{
    if (!s->ctx)
        return;
    if (s->was_connected)
        duet_log_warn("state: lost Redis connection: %s", s->err);
    s->was_connected = 0;
    redisFree(s->ctx);
    s->ctx = NULL;
}

/* Runs one command on the fresh connection (AUTH, SELECT) and checks it answered OK. */
static duet_status_t setup_command(duet_state_t *s, state_args_t *a)
{
    redisReply *r = redisCommandArgv(s->ctx, a->argc, a->argv, a->len);
    if (!r) {
        state_set_error(s, "redis: %s", s->ctx->errstr);
        return DUET_ERR_UNAVAILABLE;
    }
    duet_status_t st = DUET_OK;
    if (r->type == REDIS_REPLY_ERROR)
        st = state_reply_error(s, r);
    freeReplyObject(r);
    return st;
}

/* One bounded attempt to (re)connect; at most one every DUET_STATE_RECONNECT_MS. */
static duet_status_t ensure_connected(duet_state_t *s)
{
    if (s->ctx)
        return DUET_OK;
    int64_t now = duet_clock_ns();
    if (now < s->next_connect_ns) {
        /* keep the error of the attempt that failed */
        return DUET_ERR_UNAVAILABLE;
    }
    s->next_connect_ns = now + (int64_t)DUET_STATE_RECONNECT_MS * 1000000;

    struct timeval tv = {s->timeout_ms / 1000, (s->timeout_ms % 1000) * 1000};
    redisContext *c = s->path[0] ? redisConnectUnixWithTimeout(s->path, tv)
                                 : redisConnectWithTimeout(s->host, s->port, tv);
    if (!c) {
        state_set_error(s, "redis: out of memory connecting");
        return DUET_ERR_UNAVAILABLE;
    }
    if (c->err) {
        state_set_error(s, "redis %s: %s", s->path[0] ? s->path : s->host, c->errstr);
        redisFree(c);
        return DUET_ERR_UNAVAILABLE;
    }
    /* The connect timeout does not bound reads and writes; this does. */
    if (redisSetTimeout(c, tv) != REDIS_OK) {
        state_set_error(s, "redis: setting timeout: %s", c->errstr);
        redisFree(c);
        return DUET_ERR_UNAVAILABLE;
    }
    if (!s->path[0])
        redisEnableKeepAlive(c);
    s->ctx = c;

    duet_status_t st = DUET_OK;
    if (s->password[0]) {
        state_args_t a = {0};
        state_args_str(&a, "AUTH");
        if (s->user[0])
            state_args_str(&a, s->user);
        state_args_str(&a, s->password);
        st = setup_command(s, &a);
        if (st == DUET_ERR_UNAUTHENTICATED)
            duet_log_error("state: Redis at %s refused the credentials of user \"%s\": %s",
                           s->path[0] ? s->path : s->host, s->user[0] ? s->user : "default", s->err);
    }
    if (st == DUET_OK && s->db) {
        state_args_t a = {0};
        state_args_str(&a, "SELECT");
        state_args_int(&a, s->db);
        st = setup_command(s, &a);
    }
    if (st != DUET_OK) {
        redisFree(s->ctx);
        s->ctx = NULL;
        return st;
    }
    return DUET_OK;
}

duet_status_t state_pipeline(duet_state_t *s, int n, const state_args_t *cmds,
                             redisReply **replies)
{
    for (int i = 0; i < n; i++)
        if (cmds[i].overflow) {
            state_set_error(s, "state: too many command arguments");
            return DUET_ERR_INTERNAL;
        }
    int had_ctx = s->ctx != NULL;
    duet_status_t st = ensure_connected(s);
    if (st != DUET_OK)
        return st;
    if (!had_ctx && s->stats.round_trips)
        s->stats.reconnects++;

    /* A write to a socket whose peer died raises SIGPIPE, which would kill a process that did
     * not ignore it; block it around our I/O and swallow the one our write caused. */
    sigset_t pipe_set, old_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);

    int got = 0;
    for (int i = 0; i < n; i++)
        /* hiredis 0.14 declares argv `const char **` but only reads it. */
        if (redisAppendCommandArgv(s->ctx, cmds[i].argc, (const char **)cmds[i].argv,
                                   cmds[i].len) != REDIS_OK)
            goto err_drop;
    for (; got < n; got++) {
        void *r = NULL;
        if (redisGetReply(s->ctx, &r) != REDIS_OK || !r)
            goto err_drop;
        replies[got] = r;
    }
    pthread_sigmask(SIG_SETMASK, &old_set, NULL);
    s->stats.round_trips++;
    s->was_connected = 1;                 /* only a connection that answered is "lost" later */
    return DUET_OK;

err_drop:
    state_set_error(s, "redis: %s", s->ctx->errstr[0] ? s->ctx->errstr : "connection lost");
    {
        struct timespec zero = {0, 0};
        while (sigtimedwait(&pipe_set, NULL, &zero) == SIGPIPE) {
        }
    }
    pthread_sigmask(SIG_SETMASK, &old_set, NULL);
    for (int i = 0; i < got; i++)
        freeReplyObject(replies[i]);
    drop_connection(s);
    return DUET_ERR_UNAVAILABLE;
}

duet_status_t state_reply_error(duet_state_t *s, const redisReply *r)
{
    state_set_error(s, "redis: %.*s", (int)r->len, r->str);
    static const struct {
        const char *prefix;
        duet_status_t status;
    } map[] = {
        {"LOADING", DUET_ERR_UNAVAILABLE},   {"BUSY", DUET_ERR_UNAVAILABLE},
        {"MASTERDOWN", DUET_ERR_UNAVAILABLE}, {"TRYAGAIN", DUET_ERR_UNAVAILABLE},
        {"READONLY", DUET_ERR_UNAVAILABLE},   {"NOAUTH", DUET_ERR_UNAUTHENTICATED},
        {"WRONGPASS", DUET_ERR_UNAUTHENTICATED}, {"NOPERM", DUET_ERR_UNAUTHENTICATED},
        {"OOM", DUET_ERR_EXHAUSTED},
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strncmp(r->str, map[i].prefix, strlen(map[i].prefix)) == 0)
            return map[i].status;
    return DUET_ERR_INTERNAL;             /* a script or command of ours is wrong */
}

/* Fills cmd with EVALSHA sha nkeys args... */
static void build_evalsha(state_args_t *cmd, const char *sha, int nkeys, const state_args_t *args)
{
    state_args_str(cmd, "EVALSHA");
    state_args_str(cmd, sha);
    state_args_int(cmd, nkeys);
    for (int i = 0; i < args->argc; i++)
        state_args_bin(cmd, args->argv[i], args->len[i]);
    cmd->overflow |= args->overflow;
}

duet_status_t state_script(duet_state_t *s, state_script_t script, int nkeys,
                           const state_args_t *args, redisReply **reply_p)
{
    state_args_t cmd[2];
    memset(cmd, 0, sizeof cmd);
    build_evalsha(&cmd[0], s->sha[script], nkeys, args);
    redisReply *r;
    duet_status_t st = state_pipeline(s, 1, cmd, &r);
    if (st != DUET_OK)
        return st;
    if (r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0) {
        /* Redis restarted or its script cache was flushed: load and run in one round trip.
         * The sha is the script's SHA1, so it is the same as before. */
        freeReplyObject(r);
        s->stats.script_loads++;
        memset(cmd, 0, sizeof cmd);
        state_args_str(&cmd[0], "SCRIPT");
        state_args_str(&cmd[0], "LOAD");
        state_args_str(&cmd[0], *script_source(script));
        build_evalsha(&cmd[1], s->sha[script], nkeys, args);
        redisReply *rs[2];
        st = state_pipeline(s, 2, cmd, rs);
        if (st != DUET_OK)
            return st;
        freeReplyObject(rs[0]);
        r = rs[1];
    }
    if (r->type == REDIS_REPLY_ERROR) {
        st = state_reply_error(s, r);
        freeReplyObject(r);
        return st;
    }
    *reply_p = r;
    return DUET_OK;
}

/* Loads every script in one round trip and keeps the sha1 Redis answers with. */
static duet_status_t load_scripts(duet_state_t *s)
{
    state_args_t cmds[STATE_SCRIPT_COUNT];
    redisReply *r[STATE_SCRIPT_COUNT];
    memset(cmds, 0, sizeof cmds);
    for (int i = 0; i < STATE_SCRIPT_COUNT; i++) {
        state_args_str(&cmds[i], "SCRIPT");
        state_args_str(&cmds[i], "LOAD");
        state_args_str(&cmds[i], *script_source((state_script_t)i));
    }
    duet_status_t st = state_pipeline(s, STATE_SCRIPT_COUNT, cmds, r);
    if (st != DUET_OK)
        return st;
    for (int i = 0; i < STATE_SCRIPT_COUNT; i++) {
        if (st == DUET_OK) {
            if (r[i]->type == REDIS_REPLY_ERROR)
                st = state_reply_error(s, r[i]);
            else if (r[i]->type != REDIS_REPLY_STRING || r[i]->len != 40)
                st = DUET_ERR_INTERNAL;
            else
                memcpy(s->sha[i], r[i]->str, 41);
        }
        freeReplyObject(r[i]);
    }
    return st;
}

duet_status_t duet_state_connect(const char *url, int timeout_ms, duet_state_t **store_p)
{
    if (!url || !store_p || timeout_ms <= 0)
        return DUET_ERR_INVALID;
    duet_state_t *s = calloc(1, sizeof *s);
    if (!s)
        return DUET_ERR_NOMEM;
    s->timeout_ms = timeout_ms;
    s->req_ttl_s = DUET_STATE_REQ_TTL_S;

    duet_status_t st = parse_url(s, url);
    if (st != DUET_OK)
        goto err_free_store;
    /* Credentials kept off the command line: used when the url carries none. */
    const char *env_pw = getenv("DUET_REDIS_PASSWORD"), *env_user = getenv("DUET_REDIS_USER");
    if (!s->password[0] && env_pw && env_pw[0]) {
        if (strlen(env_pw) >= sizeof s->password || (env_user && strlen(env_user) >= sizeof s->user)) {
            st = DUET_ERR_INVALID;
            goto err_free_store;
        }
        strcpy(s->password, env_pw);
        if (env_user)
            strcpy(s->user, env_user);
    }
    st = ensure_connected(s);
    if (st != DUET_OK)
        goto err_free_store;
    st = load_scripts(s);
    if (st == DUET_ERR_UNAUTHENTICATED && !s->password[0])
        duet_log_error("state: Redis at %s wants a password (%s): give it in the url "
                       "(redis://[user]:password@host) or in DUET_REDIS_PASSWORD", s->path[0] ? s->path : s->host, s->err);
    if (st != DUET_OK)
        goto err_close_connection;
    *store_p = s;
    return DUET_OK;

err_close_connection:
    if (s->ctx)
        redisFree(s->ctx);
err_free_store:
    explicit_bzero(s->password, sizeof s->password);
    free(s);
    return st;
}

void duet_state_close(duet_state_t *store)
{
    if (!store)
        return;
    if (store->ctx)
        redisFree(store->ctx);
    explicit_bzero(store->password, sizeof store->password);
    free(store);
}

void duet_state_url_redact(const char *url, char *out, size_t cap)
{
    if (!cap)
        return;
    const char *scheme = url ? strstr(url, "://") : NULL;
    const char *at = scheme ? (strncmp(url, "unix://", 7) == 0 ? strstr(scheme + 3, "@/") : strrchr(scheme + 3, '@'))
                            : NULL;
    const char *colon = at ? memchr(scheme + 3, ':', (size_t)(at - scheme - 3)) : NULL;
    if (!colon) {
        snprintf(out, cap, "%s", url ? url : "");
        return;
    }
    /* scheme://user:***@rest */
    snprintf(out, cap, "%.*s:***%s", (int)(colon - url), url, at);
}

void duet_state_set_req_ttl(duet_state_t *store, int ttl_s)
{
    if (ttl_s > 0)
        store->req_ttl_s = ttl_s;
}

duet_status_t duet_state_ping(duet_state_t *store)
{
    state_args_t a = {0};
    state_args_str(&a, "PING");
    redisReply *r;
    duet_status_t st = state_pipeline(store, 1, &a, &r);
    if (st != DUET_OK)
        return st;
    if (r->type == REDIS_REPLY_ERROR)
        st = state_reply_error(store, r);
    freeReplyObject(r);
    return st;
}

const char *duet_state_last_error(const duet_state_t *store)
{
    return store->err;
}

void duet_state_stats(const duet_state_t *store, duet_state_stats_t *stats_p)
{
    *stats_p = store->stats;
}
