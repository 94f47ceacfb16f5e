/* lib/service/service.c — the service runtime: options, signals, server, registration,
 * heartbeat, shutdown. Signals are blocked in every thread and taken by the main thread with
 * sigwait, so no handler ever runs in the middle of library code. */
#include "service.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"

#define HEARTBEAT_MS 1000

struct duet_service {
    const duet_service_def_t *def;
    void *conf;                       /* the service's struct; starts with duet_service_common_t */
    const duet_service_common_t *common;
    char id[DUET_STATE_ID_MAX];
    char address[DUET_STATE_ADDR_MAX];
    duet_inst_role_t role;
    void *state;
    duet_rpc_server_t *server;
    duet_metrics_t *metrics;
    duet_rpc_tls_t server_tls, client_tls;
    duet_rpc_client_conf_t client_conf;

    pthread_t heartbeat;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int stopping;
};

#define COMMON(flag, env, type, field, def, help) \
    {flag, env, type, offsetof(duet_service_common_t, field), def, help}
static const duet_conf_opt_t common_opts[] = {
    COMMON("listen", "DUET_LISTEN", DUET_CONF_STR, listen, "127.0.0.1:0", "gRPC address to bind (port 0: any free port)"),
    COMMON("advertise", "DUET_ADVERTISE", DUET_CONF_STR, advertise, "127.0.0.1", "host other services use to reach this one"),
    COMMON("redis", "DUET_REDIS", DUET_CONF_STR, redis, "redis://127.0.0.1:6379", "Redis URL (redis://host:port, unix:///path)"),
    COMMON("id", "DUET_ID", DUET_CONF_STR, id, "", "instance id (default: hostname-pid-random)"),
    COMMON("log-level", "DUET_LOG_LEVEL", DUET_CONF_STR, log_level, "info", "error, warn, info or debug"),
    COMMON("cq-threads", "DUET_CQ_THREADS", DUET_CONF_INT, cq_threads, "2", "gRPC completion-queue threads"),
    COMMON("metrics-port", "DUET_METRICS_PORT", DUET_CONF_INT, metrics_port, "-1", "Prometheus /metrics HTTP port (0: any free port, -1: off)"),
    COMMON("max-message-mb", "DUET_MAX_MESSAGE_MB", DUET_CONF_INT, max_message_mb, "16", "largest gRPC message sent or received, MiB (a 128k-token prompt with its text fits in ~9)"),
    COMMON("tls-cert", "DUET_TLS_CERT", DUET_CONF_STR, tls_cert, "", "PEM certificate: serve TLS on --listen (with --tls-key); also the client certificate of outgoing calls"),
    COMMON("tls-key", "DUET_TLS_KEY", DUET_CONF_STR, tls_key, "", "PEM private key of --tls-cert"),
    COMMON("tls-ca", "DUET_TLS_CA", DUET_CONF_STR, tls_ca, "", "PEM CA bundle: calls to other services use TLS and verify them with it; verifies client certificates"),
    COMMON("tls-client-auth", "DUET_TLS_CLIENT_AUTH", DUET_CONF_BOOL, tls_client_auth, "false", "require client certificates signed by --tls-ca (mutual TLS)"),
};
#undef COMMON
#define N_COMMON ((int)(sizeof common_opts / sizeof common_opts[0]))

const char *duet_service_instance_id(const duet_service_t *svc) { return svc->id; }
const char *duet_service_address(const duet_service_t *svc) { return svc->address; }
duet_inst_role_t duet_service_role(const duet_service_t *svc) { return svc->role; }
void duet_service_set_role(duet_service_t *svc, duet_inst_role_t role) { svc->role = role; }
const duet_service_common_t *duet_service_common(const duet_service_t *svc) { return svc->common; }
duet_metrics_t *duet_service_metrics(const duet_service_t *svc) { return svc->metrics; }
const duet_rpc_client_conf_t *duet_service_client_conf(const duet_service_t *svc) { return &svc->client_conf; }

static int set(const char *s)
{
    return s && s[0];
}

/* The host part of a listen address ("127.0.0.1:0" → "127.0.0.1", "[::1]:50051" → "::1",
 * ":50051" → "", meaning every interface). */
static void listen_host(const char *listen, char *out, size_t cap)
{
    const char *end = listen ? strrchr(listen, ':') : NULL;
    const char *start = listen;
    if (!end) {
        snprintf(out, cap, "%s", listen ? listen : "");
        return;
    }
    if (*start == '[' && end > start && end[-1] == ']') {
        start++;
        end--;
    }
    snprintf(out, cap, "%.*s", (int)(end - start), start);
}

/* The server's and the clients' TLS and limits from the common options; -1 when they do not fit. */
static int transport_setup(duet_service_t *svc)
{
    const duet_service_common_t *c = svc->common;
    if (c->max_message_mb < 1 || c->max_message_mb > 2047) {
        duet_log_error("%s: --max-message-mb must be in 1..2047", svc->def->name);
        return -1;
    }
    if (set(c->tls_cert) != set(c->tls_key)) {
        duet_log_error("%s: --tls-cert and --tls-key go together", svc->def->name);
        return -1;
    }
    if (c->tls_client_auth && !(set(c->tls_cert) && set(c->tls_ca))) {
        duet_log_error("%s: --tls-client-auth needs --tls-cert, --tls-key and --tls-ca", svc->def->name);
        return -1;
    }
    svc->server_tls = (duet_rpc_tls_t){ .cert = c->tls_cert, .key = c->tls_key, .ca = c->tls_ca,
                                        .client_auth = c->tls_client_auth };
    svc->client_tls = (duet_rpc_tls_t){ .cert = c->tls_cert, .key = c->tls_key, .ca = c->tls_ca };
    svc->client_conf = (duet_rpc_client_conf_t){
        .tls = set(c->tls_ca) ? &svc->client_tls : NULL,
        .max_message_bytes = (size_t)c->max_message_mb << 20,
    };
    return 0;
}

static duet_status_t register_instance(duet_service_t *svc, duet_state_t *store)
{
    duet_state_inst_t info;
    memset(&info, 0, sizeof info);
    snprintf(info.id, sizeof info.id, "%s", svc->id);
    snprintf(info.grpc_addr, sizeof info.grpc_addr, "%s", svc->address);
    snprintf(info.version, sizeof info.version, "duet %s", DUET_VERSION);
    info.role = svc->role;
    if (svc->def->describe)
        svc->def->describe(svc->state, &info);
    if (svc->def->load)
        svc->def->load(svc->state, &info.load);
    return duet_state_inst_register(store, &info);
}

/* Keeps the instance alive in Redis: registers, then heartbeats every second; registers again
 * when the record expired or Redis came back empty. Redis being down is logged once per outage. */
static void *heartbeat_main(void *arg)
{
    duet_service_t *svc = arg;
    duet_state_t *store = NULL;
    int registered = 0, down_logged = 0;
    pthread_mutex_lock(&svc->lock);
    while (!svc->stopping) {
        pthread_mutex_unlock(&svc->lock);
        duet_status_t st = DUET_OK;
        if (!store)
            st = duet_state_connect(svc->common->redis, 1000, &store);
        if (st == DUET_OK && !registered) {
            st = register_instance(svc, store);
            registered = st == DUET_OK;
            if (registered)
                duet_log_info("%s: registered as %s (%s) at %s", svc->def->name, svc->id,
                              duet_state_role_name(svc->role), svc->address);
        } else if (st == DUET_OK) {
            duet_state_load_t load = {0};
            if (svc->def->load)
                svc->def->load(svc->state, &load);
            st = duet_state_inst_heartbeat(store, svc->id, &load);
            if (st == DUET_ERR_NOT_FOUND)
                registered = 0;  /* expired (a long pause, or Redis restarted): register again */
        }
        if (st != DUET_OK && st != DUET_ERR_NOT_FOUND && !down_logged) {
            char url[256];
            duet_state_url_redact(svc->common->redis, url, sizeof url);
            duet_log_warn("%s: Redis at %s is unavailable (%s); retrying", svc->def->name,
                          url, store ? duet_state_last_error(store) : duet_status_str(st));
            down_logged = 1;
            registered = 0;
        } else if (st == DUET_OK && down_logged) {
            duet_log_info("%s: Redis is back", svc->def->name);
            down_logged = 0;
        }
        pthread_mutex_lock(&svc->lock);
        if (svc->stopping)
            break;
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        int64_t ns = until.tv_nsec + (int64_t)(registered ? HEARTBEAT_MS : 250) * 1000000;
        until.tv_sec += ns / 1000000000;
        until.tv_nsec = ns % 1000000000;
        pthread_cond_timedwait(&svc->wake, &svc->lock, &until);
    }
    pthread_mutex_unlock(&svc->lock);
    if (store) {
        if (registered)
            duet_state_inst_remove(store, svc->id);  /* others stop routing here at once */
        duet_state_close(store);
    }
    return NULL;
}

/* Combines the common options with the service's own into one table. */
static duet_conf_opt_t *all_options(const duet_service_def_t *def, int *n_p)
{
    duet_conf_opt_t *opts = malloc((size_t)(N_COMMON + def->n_opts) * sizeof *opts);
    if (!opts)
        return NULL;
    memcpy(opts, common_opts, sizeof common_opts);
    if (def->n_opts)
        memcpy(opts + N_COMMON, def->opts, (size_t)def->n_opts * sizeof *opts);
    *n_p = N_COMMON + def->n_opts;
    return opts;
}

static duet_inst_role_t default_role(const char *name)
{
    duet_inst_role_t role = duet_state_role_parse(name);
    return role == DUET_ROLE_ANY ? DUET_ROLE_GATEWAY : role;
}

int duet_service_main(const duet_service_def_t *def, int argc, char **argv)
{
    int n_opts, help, rc = 1;
    char err[512];
    duet_conf_opt_t *opts = all_options(def, &n_opts);
    void *conf = calloc(1, def->conf_size);
    if (!opts || !conf) {
        fprintf(stderr, "duet-%s: out of memory\n", def->name);
        goto out_free;
    }
    if (duet_conf_parse(opts, n_opts, conf, argc, argv, 1, &help, err, sizeof err) != DUET_OK) {
        fprintf(stderr, "duet-%s: %s\n", def->name, err);
        rc = 2;
        goto out_free;
    }
    if (help) {
        printf("usage: duet-%s [OPTIONS]\n%s\n\noptions (flags beat DUET_* variables, which beat defaults):\n",
               def->name, def->summary);
        duet_conf_usage(stdout, opts, n_opts);
        rc = 0;
        goto out_free;
    }
    duet_service_t svc = {.def = def, .conf = conf, .common = conf, .role = default_role(def->name)};
    int level = duet_log_level_parse(svc.common->log_level);
    duet_log_configure(level < 0 ? DUET_LOG_INFO : (duet_log_level_t)level, NULL);
    if (svc.common->id && *svc.common->id)
        snprintf(svc.id, sizeof svc.id, "%s", svc.common->id);
    else if (duet_state_inst_make_id(svc.id, sizeof svc.id) != DUET_OK)
        snprintf(svc.id, sizeof svc.id, "%s-%d", def->name, (int)getpid());

    /* Blocked before any thread exists, so every thread inherits the mask and only sigwait
     * below receives them. SIGPIPE: a dead peer's socket must give an error, not kill us. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    const duet_rpc_method_t *methods = NULL;
    int n_methods = 0;
    if (transport_setup(&svc) != 0) {
        rc = 2;
        goto out_free;
    }
    if (duet_metrics_create(&svc.metrics) != DUET_OK)
        goto out_free;
    duet_status_t st = def->start(&svc, conf, &svc.state, &methods, &n_methods);
    if (st != DUET_OK) {
        duet_log_error("%s: cannot start: %s", def->name, duet_status_str(st));
        goto out_metrics;
    }
    if (svc.common->metrics_port >= 0) {
        int port;
        /* On the interface gRPC listens on: a service bound to loopback is not exposed by its
         * metrics either. */
        char host[256];
        listen_host(svc.common->listen, host, sizeof host);
        if (duet_metrics_serve_on(svc.metrics, host, svc.common->metrics_port, &port) != DUET_OK)
            goto out_stop;
        duet_log_info("%s: metrics at http://%s:%d/metrics", def->name, svc.common->advertise, port);
    }
    duet_rpc_server_conf_t sc = {
        .address = svc.common->listen,
        .methods = methods,
        .n_methods = n_methods,
        .n_threads = svc.common->cq_threads,
        .max_message_bytes = svc.client_conf.max_message_bytes,
        .tls = set(svc.common->tls_cert) ? &svc.server_tls : NULL,
    };
    if ((st = duet_rpc_server_create(&sc, &svc.server)) != DUET_OK) {
        duet_log_error("%s: cannot listen on %s: %s", def->name, svc.common->listen, duet_status_str(st));
        goto out_stop;
    }
    snprintf(svc.address, sizeof svc.address, "%s:%d", svc.common->advertise,
             duet_rpc_server_port(svc.server));
    pthread_mutex_init(&svc.lock, NULL);
    pthread_cond_init(&svc.wake, NULL);
    if (pthread_create(&svc.heartbeat, NULL, heartbeat_main, &svc) != 0) {
        duet_log_error("%s: cannot start the heartbeat thread", def->name);
        goto out_server;
    }
    duet_log_info("%s: serving on %s as %s (%s)", def->name, svc.address, svc.id,
                  !set(svc.common->tls_cert) ? "plaintext"
                  : svc.common->tls_client_auth ? "mutual TLS" : "TLS");

    int sig = 0;
    sigwait(&sigs, &sig);
    duet_log_info("%s: %s received, stopping", def->name, sig == SIGINT ? "SIGINT" : "SIGTERM");
    rc = 0;

    duet_rpc_server_set_serving(svc.server, 0);
    if (def->drain)
        def->drain(svc.state);
    pthread_mutex_lock(&svc.lock);
    svc.stopping = 1;
    pthread_cond_signal(&svc.wake);
    pthread_mutex_unlock(&svc.lock);
    pthread_join(svc.heartbeat, NULL);
out_server:
    duet_rpc_server_destroy(svc.server);
    pthread_cond_destroy(&svc.wake);
    pthread_mutex_destroy(&svc.lock);
out_stop:
    def->stop(svc.state);
out_metrics:
    duet_metrics_destroy(svc.metrics);
out_free:
    free(conf);
    free(opts);
    return rc;
}
