/* lib/base/threadpool.h — a persistent pool of worker threads that run one function on every
 * thread at once (fork-join), as the kernels need once or a few times per layer. */
#ifndef DUET_BASE_THREADPOOL_H
#define DUET_BASE_THREADPOOL_H

#include "status.h"

typedef struct duet_pool duet_pool_t;

/* fn runs once on each of the nth threads, ith = 0 .. nth-1 (ith 0 is the calling thread). */
typedef void (*duet_pool_fn)(void *arg, int ith, int nth);

/* n_threads counts the caller; 1 means no worker threads at all. */
duet_status_t duet_pool_create(int n_threads, duet_pool_t **pool_p);
/* Joins the workers; the pool must be idle. */
void          duet_pool_destroy(duet_pool_t *pool);
int           duet_pool_size(const duet_pool_t *pool);
/* Runs fn on every thread and returns when all have finished. Not re-entrant: one run at a time,
 * from one thread. A NULL pool runs fn(arg, 0, 1) on the caller. */
void          duet_pool_run(duet_pool_t *pool, duet_pool_fn fn, void *arg);

/* The number of CPUs this process may run on. */
int           duet_cpu_count(void);

/* Splits [0, n) into nth nearly equal ranges aligned to `align` and gives thread ith its own. */
static inline void duet_pool_split(int n, int align, int ith, int nth, int *begin_p, int *end_p)
{
    int units = (n + align - 1) / align;
    int per = units / nth, extra = units % nth;
    int b = ith * per + (ith < extra ? ith : extra);
    int e = b + per + (ith < extra ? 1 : 0);
    b *= align;
    e *= align;
    *begin_p = b < n ? b : n;
    *end_p = e < n ? e : n;
}

#endif
