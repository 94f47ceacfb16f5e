/* lib/service/engine_thread.h — the one thread of a compute service (prefill, decode) that owns
 * its engine, its UCX worker and the UCX-allocated KV pool: started with a handshake, fed by a
 * command queue any thread may push to, and asleep only when there is nothing to do (woken by a
 * command, by UCX, or after idle_ms). The service supplies what happens on it through hooks. */
#ifndef DUET_SERVICE_ENGINE_THREAD_H
#define DUET_SERVICE_ENGINE_THREAD_H

#include <stdbool.h>

#include "engine.h"
#include "kvx.h"
#include "model.h"
#include "status.h"

/* A command; a service embeds it first in its own, or uses kind and arg. */
typedef struct duet_cmd {
    struct duet_cmd *next;
    int kind;     /* the service's */
    void *arg;
} duet_cmd_t;

typedef struct duet_engine_thread duet_engine_thread_t;

/* Where the KV pool lives and how transfers reach it; chosen at start from the model's backend and
 * what the UCX in use can move. */
typedef enum {
    DUET_KV_PATH_HOST = 0,  /* a host backend: the pool is UCX-allocated memory, read and written in place */
    DUET_KV_PATH_DEVICE,    /* a device pool registered with a UCX built with CUDA: GPU to GPU */
    DUET_KV_PATH_STAGED,    /* a device pool, UCX without CUDA: KV goes through a pinned host mirror */
} duet_kv_path_t;

const char *duet_kv_path_str(duet_kv_path_t path);
/* A service's --kv-transfer value: "auto" (false) or "staged" (true); DUET_ERR_INVALID otherwise,
 * with the reason logged under the service's name. */
duet_status_t duet_kv_transfer_parse(const char *service, const char *value, bool *staged_p);

typedef struct {
    const char *name;              /* "decode", "prefill": log prefix and the UCX worker's name */
    duet_model_t *model;
    duet_engine_conf_t engine;     /* pool_memory or kv_mirror is set to the UCX pool */
    duet_kvx_err_mode_t err_mode;
    bool kv_staged;                /* a device pool goes through the host mirror even when UCX has CUDA */
    int idle_ms;                   /* the longest sleep of an idle thread */
    void *user;
    /* On the thread once the engine exists; non-OK fails the start. Optional. */
    duet_status_t (*on_start)(void *user, duet_engine_thread_t *t);
    /* Each command, in push order; the hook owns (and frees) it. */
    void (*on_command)(void *user, duet_cmd_t *cmd);
    /* After the commands of each wake-up: the service's work. Returns > 0 when there is more
     * at once (no sleep), 0 to sleep until woken, < 0 to end the thread. */
    int (*on_iteration)(void *user);
    /* On the thread at the end, before the engine is destroyed (its requests then finish through
     * their sinks). Optional. */
    void (*on_stop)(void *user);
} duet_engine_thread_conf_t;

/* Starts the thread and waits until it has made the UCX worker, the pool and the engine and
 * run on_start; returns their status (the thread is gone again on failure). conf is copied. */
duet_status_t duet_engine_thread_start(const duet_engine_thread_conf_t *conf, duet_engine_thread_t **t_p);
/* Queues cmd and wakes the thread. Any thread. */
void          duet_engine_thread_push(duet_engine_thread_t *t, duet_cmd_t *cmd);
/* Wakes the thread without a command (it looks at what changed: a cancelled call). Any thread. */
void          duet_engine_thread_wake(duet_engine_thread_t *t);
/* Waits for the thread to end (on_iteration returned < 0) and frees it. */
void          duet_engine_thread_join(duet_engine_thread_t *t);

/* Owned by the thread; for its hooks, and read-only facts for others after the start. */
duet_engine_t   *duet_engine_thread_engine(const duet_engine_thread_t *t);
duet_kvx_t      *duet_engine_thread_kvx(const duet_engine_thread_t *t);
/* The memory transfers use (the pool, or its host mirror on the STAGED path), registered. */
duet_kvx_pool_t *duet_engine_thread_pool(const duet_engine_thread_t *t);
size_t           duet_engine_thread_pool_bytes(const duet_engine_thread_t *t);

#endif
