/* kernels/cpu/cpu_pool.c — persistent workers that join a run only while it is open (see
 * cpu_pool.h). Runs are numbered; a worker counts itself in (active), then checks that the run it
 * saw is the open one (the newest closed run is the one before it), and only then calls the
 * task. The caller, done with the task, closes the run and waits for active to drop to zero:
 * either a worker sees the close and stays out, or the caller sees it counted in and waits for
 * it (both sides use sequentially consistent atomics, so one of the two always sees the other).
 * Idle workers spin, then yield, then sleep. */
#include "cpu_pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_pause() _mm_pause()
#else
#define cpu_pause() ((void)0)
#endif

enum {
    PAUSE_SPINS = 2000,   /* then yield between checks */
    IDLE_YIELDS = 2000,   /* a worker sleeps after this many yields without a run */
};

struct duet_cpu_pool {
    int n_threads;
    pthread_t *threads;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    duet_cpu_task_fn fn;
    void *arg;
    _Alignas(64) atomic_uint run;      /* number of the newest run */
    _Alignas(64) atomic_uint closed;   /* number of the newest run the caller has finished */
    _Alignas(64) atomic_int active;    /* workers inside the current run's task */
    atomic_int sleepers;
    atomic_bool stop;
};

void duet_cpu_relax(int *spins)
{
    if (++*spins < PAUSE_SPINS)
        cpu_pause();
    else
        sched_yield();
}

/* Waits for a run newer than seen; returns it, or seen when the pool stops. */
static unsigned wait_run(duet_cpu_pool_t *p, unsigned seen)
{
    unsigned r;
    for (int spins = 0; (r = atomic_load(&p->run)) == seen && !atomic_load(&p->stop);) {
        if (spins < PAUSE_SPINS + IDLE_YIELDS) {
            duet_cpu_relax(&spins);
            continue;
        }
        pthread_mutex_lock(&p->lock);
        atomic_fetch_add(&p->sleepers, 1);
        while (atomic_load(&p->run) == seen && !atomic_load(&p->stop))
            pthread_cond_wait(&p->wake, &p->lock);
        atomic_fetch_sub(&p->sleepers, 1);
        pthread_mutex_unlock(&p->lock);
    }
    return r;
}

static void *worker_main(void *arg)
{
    duet_cpu_pool_t *p = arg;
    unsigned seen = 0;
    for (;;) {
        unsigned r = wait_run(p, seen);
        if (atomic_load(&p->stop))
            return NULL;
        seen = r;
        atomic_fetch_add(&p->active, 1);
        /* Open only while the newest closed run is the one before: a worker slow to count
         * itself in may have seen a run that closed since, with later runs closed after it, and
         * fn and arg then belong to another run (whose task may be gone). */
        if (atomic_load(&p->closed) == r - 1u)
            p->fn(p->arg);
        atomic_fetch_sub(&p->active, 1);
    }
}

duet_status_t duet_cpu_pool_create(int n_threads, duet_cpu_pool_t **pool_p)
{
    if (n_threads < 1 || n_threads > 1024)
        return DUET_ERR_INVALID;
    duet_cpu_pool_t *p = calloc(1, sizeof *p);
    if (!p)
        return DUET_ERR_NOMEM;
    p->threads = calloc((size_t)n_threads, sizeof *p->threads);
    if (!p->threads) {
        free(p);
        return DUET_ERR_NOMEM;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    p->n_threads = 1;
    for (int i = 1; i < n_threads; i++) {
        if (pthread_create(&p->threads[i], NULL, worker_main, p) != 0) {
            duet_cpu_pool_destroy(p);  /* joins the workers started so far */
            return DUET_ERR_NOMEM;
        }
        p->n_threads = i + 1;
    }
    *pool_p = p;
    return DUET_OK;
}

void duet_cpu_pool_destroy(duet_cpu_pool_t *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int i = 1; i < p->n_threads; i++)
        pthread_join(p->threads[i], NULL);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    free(p->threads);
    free(p);
}

int duet_cpu_pool_size(const duet_cpu_pool_t *p)
{
    return p ? p->n_threads : 1;
}

void duet_cpu_pool_run(duet_cpu_pool_t *p, duet_cpu_task_fn fn, void *arg)
{
    if (!p || p->n_threads == 1) {
        fn(arg);
        return;
    }
    /* No worker is inside a task now (the last run waited for that), so fn and arg are free. */
    p->fn = fn;
    p->arg = arg;
    unsigned r = atomic_load(&p->run) + 1;
    atomic_store(&p->run, r);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->lock);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
    }
    fn(arg);
    atomic_store(&p->closed, r);
    for (int spins = 0; atomic_load(&p->active) > 0;)
        duet_cpu_relax(&spins);
}
