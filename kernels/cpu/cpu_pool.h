/* kernels/cpu/cpu_pool.h — the CPU backend's persistent worker threads (internal to kernels/cpu).
 *
 * Unlike a fork-join that needs every thread for every op, a run here is joined only by the
 * workers that wake up while it is still open: the task claims its work from counters of its own,
 * so the caller alone can finish it. On a machine shared with other processes a descheduled
 * worker then costs one thread's share of speed, not a scheduler time slice per op. */
#ifndef DUET_KERNELS_CPU_POOL_H
#define DUET_KERNELS_CPU_POOL_H

#include "../../lib/base/status.h"

typedef struct duet_cpu_pool duet_cpu_pool_t;

/* fn must claim its work (from atomic counters in arg) until none is left, so that any number
 * of threads calling it at once, one included, completes the task. */
typedef void (*duet_cpu_task_fn)(void *arg);

/* n_threads counts the caller; 1 means no workers. */
duet_status_t duet_cpu_pool_create(int n_threads, duet_cpu_pool_t **pool_p);
/* Joins the workers; the pool must be idle. */
void duet_cpu_pool_destroy(duet_cpu_pool_t *pool);
int  duet_cpu_pool_size(const duet_cpu_pool_t *pool);
/* Runs fn(arg) on the caller and on each worker that arrives before the caller has finished it;
 * returns once every thread that entered fn has left it. One run at a time, from one thread. */
void duet_cpu_pool_run(duet_cpu_pool_t *pool, duet_cpu_task_fn fn, void *arg);

/* Waits for a condition another thread will make true soon: a pause first, a yield of the CPU
 * once the wait gets long (on a loaded machine that thread may need this very core). */
void duet_cpu_relax(int *spins);

#endif
