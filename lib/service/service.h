/* lib/service/service.h — the one service runtime every duet service runs in: the option table
 * (common options plus the service's own), logging, signals, the gRPC server with health, the
 * instance's registration and heartbeat in Redis, and an orderly shutdown. A service's main() is
 * one call to duet_service_main with its definition; everything that differs lives in the def. */
#ifndef DUET_SERVICE_SERVICE_H
#define DUET_SERVICE_SERVICE_H

#include <stddef.h>

#include "conf.h"
#include "metrics.h"
#include "rpc.h"
#include "state.h"
#include "status.h"

/* Options every service has. A service's own config struct starts with this member, so the
 * common table's offsets are valid for it too. */
typedef struct {
    const char *listen;        /* gRPC address to bind, "127.0.0.1:0" picks a port */
    const char *advertise;     /* host the other services reach this one at (port: the bound one) */
    const char *redis;         /* Redis URL or unix socket path */
    const char *id;            /* instance id; empty: hostname-pid-random */
    const char *log_level;
    int cq_threads;            /* gRPC completion-queue threads */
    int metrics_port;          /* Prometheus /metrics port; 0 picks one, -1 serves none */
    int max_message_mb;        /* gRPC send/receive limit per message, MiB (server and clients) */
    const char *tls_cert;      /* PEM certificate chain: set (with tls_key) = serve TLS, and the
                                * client certificate of outgoing calls */
    const char *tls_key;       /* its private key */
    const char *tls_ca;        /* PEM CA bundle: set = outgoing calls use TLS and verify servers
                                * with it; also verifies client certificates */
    int tls_client_auth;       /* require client certificates signed by tls_ca (mutual TLS) */
} duet_service_common_t;

typedef struct duet_service duet_service_t;

typedef struct {
    const char *name;                 /* "decode": logs, --help, the binary is duet-<name> */
    const char *summary;              /* one line for --help */
    const duet_conf_opt_t *opts;      /* the service's own options, offsets into its conf struct */
    int n_opts;
    size_t conf_size;                 /* sizeof its conf struct (which starts with the common part) */
    /* Builds the service from its parsed options and returns the methods to serve (they must
     * outlive the service) and its state. Runs before the server starts. */
    duet_status_t (*start)(duet_service_t *svc, const void *conf, void **state_p,
                           const duet_rpc_method_t **methods_p, int *n_methods_p);
    /* Fills what the instance publishes in Redis beyond id, address and role; called once after
     * start, on the heartbeat thread. Optional. */
    void (*describe)(void *state, duet_state_inst_t *info);
    /* Current load, once per heartbeat (every second). Optional; thread-safe in the service. */
    void (*load)(void *state, duet_state_load_t *load);
    /* On SIGTERM/SIGINT, while the server still runs (its health already NOT_SERVING): refuse new
     * calls and end the running ones so their clients can go elsewhere (UNAVAILABLE, not
     * CANCELLED). Returns once every call it had is finished. Optional: without it the server's
     * shutdown cancels running calls. */
    void (*drain)(void *state);
    /* Tears the service down after the server has stopped and every call has finished. */
    void (*stop)(void *state);
} duet_service_def_t;

/* Parses options, runs the service until SIGINT or SIGTERM, and shuts it down. Returns the
 * process exit status: 0 after a clean stop, 1 when it could not start, 2 for bad options. */
int duet_service_main(const duet_service_def_t *def, int argc, char **argv);

/* For a service's start and handlers: */
const char       *duet_service_instance_id(const duet_service_t *svc);
/* "host:port" the other services reach this one at; valid once start has returned. */
const char       *duet_service_address(const duet_service_t *svc);
duet_inst_role_t  duet_service_role(const duet_service_t *svc);
/* Sets the role the instance registers with (default from the def's name). Call from start. */
void              duet_service_set_role(duet_service_t *svc, duet_inst_role_t role);
const duet_service_common_t *duet_service_common(const duet_service_t *svc);
/* How the service's own gRPC clients must connect (TLS per --tls-*, the message limit): pass it
 * to duet_rpc_client_create_conf. Valid for the service's life, from start on. */
const duet_rpc_client_conf_t *duet_service_client_conf(const duet_service_t *svc);
/* The service's metric registry (exists even when --metrics-port is -1): register in start. */
duet_metrics_t   *duet_service_metrics(const duet_service_t *svc);

#endif
