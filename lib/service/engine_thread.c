/* lib/service/engine_thread.c — a compute service's engine thread. Commands go on a mutex-guarded
 * list and an eventfd wakes the thread; it sleeps in epoll on that eventfd and the UCX worker's
 * fd, after arming the worker (UCX only signals its fd once armed, and arming fails while events
 * are pending, so progress runs until it succeeds). */
#include "engine_thread.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "log.h"

struct duet_engine_thread {
    duet_engine_thread_conf_t conf;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t started_cv;
    int started;                   /* under mu */
    duet_status_t start_status;
    duet_cmd_t *head, *tail;       /* under mu */
    int efd;

    /* The thread's own. */
    duet_kvx_t *kvx;
    duet_kvx_pool_t *pool;
    size_t pool_bytes;
    duet_kv_path_t kv_path;
    void *pinned;                  /* the mirror, when the backend pinned it */
    duet_engine_t *engine;
    int epfd;
};

duet_engine_t *duet_engine_thread_engine(const duet_engine_thread_t *t) { return t->engine; }
duet_kvx_t *duet_engine_thread_kvx(const duet_engine_thread_t *t) { return t->kvx; }
duet_kvx_pool_t *duet_engine_thread_pool(const duet_engine_thread_t *t) { return t->pool; }
size_t duet_engine_thread_pool_bytes(const duet_engine_thread_t *t) { return t->pool_bytes; }

const char *duet_kv_path_str(duet_kv_path_t path)
{
    switch (path) {
    case DUET_KV_PATH_HOST:   return "host memory, transfers in place";
    case DUET_KV_PATH_DEVICE: return "device memory, transfers GPU to GPU by UCX";
    case DUET_KV_PATH_STAGED: return "device memory, transfers through a host mirror";
    }
    return "unknown";
}

duet_status_t duet_kv_transfer_parse(const char *service, const char *value, bool *staged_p)
{
    if (strcmp(value, "auto") == 0 || strcmp(value, "staged") == 0) {
        *staged_p = value[0] == 's';
        return DUET_OK;
    }
    duet_log_error("%s: --kv-transfer: '%s' is neither auto nor staged", service, value);
    return DUET_ERR_INVALID;
}

static duet_status_t setup(duet_engine_thread_t *t)
{
    const duet_engine_thread_conf_t *c = &t->conf;
    duet_status_t st;
    char name[64];
    snprintf(name, sizeof name, "duet-%s", c->name);
    duet_kvx_conf_t kc = {.err_mode = c->err_mode, .name = name};
    if ((st = duet_kvx_create(&kc, &t->kvx)) != DUET_OK) {
        duet_log_error("%s: cannot start UCX: %s", c->name, duet_status_str(st));
        return st;
    }
    duet_engine_conf_t ec = c->engine;
    duet_backend_t *be = c->model->be;
    t->pool_bytes = duet_engine_pool_bytes(c->model, &ec);
    if (be->host_memory)
        t->kv_path = DUET_KV_PATH_HOST;
    else if (!c->kv_staged && duet_kvx_cuda_memory(t->kvx))
        t->kv_path = DUET_KV_PATH_DEVICE;
    else
        t->kv_path = DUET_KV_PATH_STAGED;
    if (t->kv_path != DUET_KV_PATH_DEVICE) {
        /* Allocated by UCX (the pool itself, or the device pool's mirror), so puts into it or from
         * it need no registration per call and run at shared-memory speed on one host. */
        if ((st = duet_kvx_pool_create(t->kvx, t->pool_bytes, &t->pool)) != DUET_OK) {
            duet_log_error("%s: cannot allocate a %zu-byte KV %s with UCX: %s", c->name, t->pool_bytes,
                           t->kv_path == DUET_KV_PATH_HOST ? "pool" : "staging mirror", duet_status_str(st));
            return st;
        }
        void *base = duet_kvx_pool_base(t->pool);
        if (t->kv_path == DUET_KV_PATH_HOST) {
            ec.pool_memory = base;
        } else {
            ec.kv_mirror = base;
            if (be->pin_host && be->pin_host(be, base, t->pool_bytes) == DUET_OK)
                t->pinned = base;
        }
    }
    if ((st = duet_engine_create(c->model, &ec, &t->engine)) != DUET_OK) {
        duet_log_error("%s: cannot create the engine: %s", c->name, duet_status_str(st));
        return st;
    }
    if (t->kv_path == DUET_KV_PATH_DEVICE) {
        void *base = duet_kv_cache_view(duet_engine_cache(t->engine))->base;
        if ((st = duet_kvx_pool_register_cuda(t->kvx, base, t->pool_bytes, &t->pool)) != DUET_OK) {
            duet_log_error("%s: cannot register the %zu-byte GPU KV pool with UCX: %s (--kv-transfer "
                           "staged avoids this)", c->name, t->pool_bytes, duet_status_str(st));
            return st;
        }
    }
    duet_log_info("%s: KV pool of %.1f MiB on %s: %s", c->name, t->pool_bytes / 1048576.0, be->name,
                  duet_kv_path_str(t->kv_path));
    t->epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event e1 = {.events = EPOLLIN, .data.fd = t->efd};
    struct epoll_event e2 = {.events = EPOLLIN, .data.fd = duet_kvx_event_fd(t->kvx)};
    if (t->epfd < 0 || epoll_ctl(t->epfd, EPOLL_CTL_ADD, t->efd, &e1) != 0 ||
        epoll_ctl(t->epfd, EPOLL_CTL_ADD, e2.data.fd, &e2) != 0) {
        duet_log_error("%s: epoll: %s", c->name, strerror(errno));
        return DUET_ERR_IO;
    }
    return c->on_start ? c->on_start(c->user, t) : DUET_OK;
}

static void teardown(duet_engine_thread_t *t)
{
    /* A registered GPU pool is unregistered before the engine frees it; a host pool or mirror
     * outlives the engine that uses it. */
    if (t->kv_path == DUET_KV_PATH_DEVICE && t->pool) {
        duet_kvx_pool_destroy(t->pool);
        t->pool = NULL;
    }
    if (t->engine)
        duet_engine_destroy(t->engine);
    if (t->pinned) {
        duet_backend_t *be = t->conf.model->be;
        be->unpin_host(be, t->pinned);
        t->pinned = NULL;
    }
    if (t->pool)
        duet_kvx_pool_destroy(t->pool);
    if (t->kvx)
        duet_kvx_destroy(t->kvx);
    if (t->epfd >= 0)
        close(t->epfd);
    t->engine = NULL;
    t->pool = NULL;
    t->kvx = NULL;
    t->epfd = -1;
}

static void run_commands(duet_engine_thread_t *t)
{
    uint64_t v;
    ssize_t n = read(t->efd, &v, sizeof v);
    (void)n;   /* EAGAIN: nothing was signalled; the list is read either way */
    pthread_mutex_lock(&t->mu);
    duet_cmd_t *c = t->head;
    t->head = t->tail = NULL;
    pthread_mutex_unlock(&t->mu);
    while (c) {
        duet_cmd_t *next = c->next;
        t->conf.on_command(t->conf.user, c);
        c = next;
    }
}

static void idle_wait(duet_engine_thread_t *t)
{
    for (;;) {
        while (duet_kvx_progress(t->kvx))
            ;
        bool armed = false;
        if (duet_kvx_arm(t->kvx, &armed) != DUET_OK || armed)
            break;
    }
    struct epoll_event ev[4];
    int n = epoll_wait(t->epfd, ev, 4, t->conf.idle_ms);
    (void)n;
}

static void *thread_main(void *arg)
{
    duet_engine_thread_t *t = arg;
    duet_status_t st = setup(t);
    pthread_mutex_lock(&t->mu);
    t->start_status = st;
    t->started = 1;
    pthread_cond_signal(&t->started_cv);
    pthread_mutex_unlock(&t->mu);
    if (st != DUET_OK) {
        teardown(t);
        return NULL;
    }
    for (;;) {
        run_commands(t);
        int more = t->conf.on_iteration(t->conf.user);
        if (more < 0)
            break;
        if (more == 0)
            idle_wait(t);
    }
    if (t->conf.on_stop)
        t->conf.on_stop(t->conf.user);
    teardown(t);
    return NULL;
}

duet_status_t duet_engine_thread_start(const duet_engine_thread_conf_t *conf, duet_engine_thread_t **t_p)
{
    duet_engine_thread_t *t = calloc(1, sizeof *t);
    if (!t)
        return DUET_ERR_NOMEM;
    t->conf = *conf;
    t->epfd = -1;
    t->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (t->efd < 0) {
        duet_log_error("%s: eventfd: %s", conf->name, strerror(errno));
        free(t);
        return DUET_ERR_IO;
    }
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->started_cv, NULL);
    if (pthread_create(&t->thread, NULL, thread_main, t) != 0) {
        duet_log_error("%s: cannot start the engine thread", conf->name);
        t->start_status = DUET_ERR_NOMEM;
    } else {
        pthread_mutex_lock(&t->mu);
        while (!t->started)
            pthread_cond_wait(&t->started_cv, &t->mu);
        pthread_mutex_unlock(&t->mu);
        if (t->start_status != DUET_OK)
            pthread_join(t->thread, NULL);
    }
    duet_status_t st = t->start_status;
    if (st != DUET_OK) {
        close(t->efd);
        pthread_cond_destroy(&t->started_cv);
        pthread_mutex_destroy(&t->mu);
        free(t);
        return st;
    }
    *t_p = t;
    return DUET_OK;
}

void duet_engine_thread_wake(duet_engine_thread_t *t)
{
    uint64_t one = 1;
    ssize_t n = write(t->efd, &one, sizeof one);
    (void)n;   /* EAGAIN: the counter is already non-zero, the thread wakes anyway */
}

void duet_engine_thread_push(duet_engine_thread_t *t, duet_cmd_t *cmd)
{
    cmd->next = NULL;
    pthread_mutex_lock(&t->mu);
    if (t->tail)
        t->tail->next = cmd;
    else
        t->head = cmd;
    t->tail = cmd;
    pthread_mutex_unlock(&t->mu);
    duet_engine_thread_wake(t);
}

void duet_engine_thread_join(duet_engine_thread_t *t)
{
    if (!t)
        return;
    pthread_join(t->thread, NULL);
    /* Commands pushed after the thread ended are the pusher's loss: free what is left. */
    for (duet_cmd_t *c = t->head, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    close(t->efd);
    pthread_cond_destroy(&t->started_cv);
    pthread_mutex_destroy(&t->mu);
    free(t);
}
