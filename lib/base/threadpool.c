/* lib/base/threadpool.c — fork-join pool: workers spin briefly on a generation counter (a run
 * is often only tens of microseconds away), then sleep on a condition variable. */
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

enum { SPIN_ROUNDS = 20000 };

struct duet_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    atomic_uint generation;   /* bumped by each run; workers run once per new value */
    atomic_int pending;       /* workers still inside the current run */
    atomic_int sleepers;
    atomic_bool stop;
    duet_pool_fn fn;
    void *arg;
};

typedef struct {
    duet_pool_t *pool;
    int ith;
} worker_arg_t;

static void *worker_main(void *p)
{
    worker_arg_t wa = *(worker_arg_t *)p;
    free(p);
    duet_pool_t *pool = wa.pool;
    unsigned seen = 0;
    for (;;) {
        unsigned gen;
        int spins = 0;
        while ((gen = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen &&
               !atomic_load(&pool->stop)) {
            if (++spins < SPIN_ROUNDS) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&pool->lock);
            atomic_fetch_add(&pool->sleepers, 1);
            while (atomic_load(&pool->generation) == seen && !atomic_load(&pool->stop))
                pthread_cond_wait(&pool->wake, &pool->lock);
            atomic_fetch_sub(&pool->sleepers, 1);
            pthread_mutex_unlock(&pool->lock);
        }
        if (atomic_load(&pool->stop))
            return NULL;
        seen = gen;
        pool->fn(pool->arg, wa.ith, pool->n_threads);
        atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_release);
    }
}

int duet_cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

duet_status_t duet_pool_create(int n_threads, duet_pool_t **pool_p)
{
    if (n_threads < 1 || n_threads > 1024)
        return DUET_ERR_INVALID;
    duet_pool_t *pool = calloc(1, sizeof *pool);
    if (!pool)
        return DUET_ERR_NOMEM;
    pool->n_threads = n_threads;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pool->threads = calloc((size_t)n_threads, sizeof *pool->threads);
    if (!pool->threads)
        goto err_free_pool;
    for (int i = 1; i < n_threads; i++) {
        worker_arg_t *wa = malloc(sizeof *wa);
        if (!wa)
            goto err_stop_workers;
        wa->pool = pool;
        wa->ith = i;
        if (pthread_create(&pool->threads[i], NULL, worker_main, wa) != 0) {
            free(wa);
            pool->n_threads = i;  /* only threads 1..i-1 exist */
            goto err_stop_workers;
        }
    }
    *pool_p = pool;
    return DUET_OK;

err_stop_workers:
    duet_pool_destroy(pool);
    return DUET_ERR_NOMEM;
err_free_pool:
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->lock);
    free(pool);
    return DUET_ERR_NOMEM;
}

void duet_pool_destroy(duet_pool_t *pool)
{
    if (!pool)
        return;
    pthread_mutex_lock(&pool->lock);
    atomic_store(&pool->stop, 1);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 1; i < pool->n_threads; i++)
        if (pool->threads[i])
            pthread_join(pool->threads[i], NULL);
    free(pool->threads);
    pthread_cond_destroy(&pool->wake);
    pthread_mutex_destroy(&pool->lock);
    free(pool);
}

int duet_pool_size(const duet_pool_t *pool)
{
    return pool ? pool->n_threads : 1;
}

void duet_pool_run(duet_pool_t *pool, duet_pool_fn fn, void *arg)
{
    if (!pool || pool->n_threads == 1) {
        fn(arg, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    atomic_store_explicit(&pool->pending, pool->n_threads - 1, memory_order_relaxed);
    atomic_fetch_add(&pool->generation, 1);  /* seq_cst: ordered before the sleepers load */
    if (atomic_load(&pool->sleepers) > 0) {
        pthread_mutex_lock(&pool->lock);
        pthread_cond_broadcast(&pool->wake);
        pthread_mutex_unlock(&pool->lock);
    }
    fn(arg, 0, pool->n_threads);
    /* Spin, but yield once the wait gets long: on a loaded machine the worker we wait for may
     * need this very core. */
    for (int spins = 0; atomic_load_explicit(&pool->pending, memory_order_acquire) > 0; spins++) {
        if (spins < SPIN_ROUNDS)
            cpu_relax();
        else
            sched_yield();
    }
}
