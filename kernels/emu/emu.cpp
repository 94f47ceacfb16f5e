/* kernels/emu/emu.cpp — the emulator's launcher: every CUDA thread of a block is an OS thread,
 * blocks run one after another, __syncthreads and __syncwarp are mutex/condition-variable
 * barriers and shuffles go through a per-warp exchange buffer between two warp barriers. All
 * ordering between emulated threads comes from those barriers, so ThreadSanitizer reports a
 * kernel that reads shared memory another thread wrote without a barrier in between. */
#include "emu.h"

#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>

thread_local DUET_EMU_CONSTINIT uint3 threadIdx;
thread_local DUET_EMU_CONSTINIT uint3 blockIdx;
thread_local DUET_EMU_CONSTINIT dim3 blockDim;
thread_local DUET_EMU_CONSTINIT dim3 gridDim;

namespace {

/* A barrier for a set of threads whose members may leave (a thread that returned from the
 * kernel no longer counts, as on the GPU where exited threads do not hold up __syncthreads).
 * Arrivals are counted under a mutex; waiters sleep on the generation word itself (a futex), so
 * the last arrival wakes them all without each one queueing for the mutex again. The release
 * store and the waiters' acquire loads order every arrival's work before every departure. */
struct barrier {
    std::mutex m;
    int active = 0;
    int arrived = 0;
    std::atomic<unsigned> gen{0};
};

[[noreturn]] void emu_fail(const char *what)
{
    fprintf(stderr, "duet-emu: %s\n", what);
    fflush(stderr);
    abort();
}

static_assert(sizeof(std::atomic<unsigned>) == sizeof(unsigned), "futex word");

void futex_wake_all(std::atomic<unsigned> *word)
{
    syscall(SYS_futex, reinterpret_cast<unsigned *>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr, nullptr, 0);
}

/* Sleeps while *word == old. A barrier that does not complete within a minute is a kernel bug
 * (a barrier inside a branch some threads skip): reported, not waited out. */
void futex_wait_change(std::atomic<unsigned> *word, unsigned old)
{
    auto start = std::chrono::steady_clock::now();
    while (word->load(std::memory_order_acquire) == old) {
        struct timespec ts = {1, 0};
        syscall(SYS_futex, reinterpret_cast<unsigned *>(word), FUTEX_WAIT_PRIVATE, old, &ts, nullptr, 0);
        if (std::chrono::steady_clock::now() - start > std::chrono::seconds(60))
            emu_fail("a barrier did not complete in 60 s: __syncthreads/__syncwarp/shuffle reached "
                     "by only some threads of a block or warp");
    }
}

/* With b->m held: lets everyone waiting go. */
void release_locked(barrier *b, std::unique_lock<std::mutex> &lock)
{
    b->arrived = 0;
    b->gen.fetch_add(1, std::memory_order_release);
    lock.unlock();
    futex_wake_all(&b->gen);
}

void barrier_wait(barrier *b)
{
    std::unique_lock<std::mutex> lock(b->m);
    unsigned gen = b->gen.load(std::memory_order_relaxed);
    if (++b->arrived == b->active) {
        release_locked(b, lock);
        return;
    }
    lock.unlock();
    futex_wait_change(&b->gen, gen);
}

void barrier_leave(barrier *b)
{
    std::unique_lock<std::mutex> lock(b->m);
    b->active--;
    if (b->arrived > 0 && b->arrived == b->active)
        release_locked(b, lock);
}

void barrier_reset(barrier *b, int members)
{
    std::lock_guard<std::mutex> lock(b->m);
    b->active = members;
    b->arrived = 0;
}

constexpr int kMaxThreads = 1024;
constexpr int kWarp = 32;

struct launch_state {
    dim3 grid, block;
    int n_threads;
    const std::function<void()> *fn;
    unsigned char *dyn_smem;
    barrier block_bar;                 /* __syncthreads */
    barrier warp_bar[kMaxThreads / kWarp];
    uint64_t xchg[kMaxThreads / kWarp][kWarp];
    /* Between blocks: every thread arrives, the last one resets the block's barriers. */
    barrier step_bar;
};

thread_local launch_state *cur;
thread_local int cur_tid;

int warp_members(const launch_state *L, int warp)
{
    int left = L->n_threads - warp * kWarp;
    return left < kWarp ? left : kWarp;
}

void reset_block(launch_state *L)
{
    barrier_reset(&L->block_bar, L->n_threads);
    for (int w = 0; w * kWarp < L->n_threads; w++)
        barrier_reset(&L->warp_bar[w], warp_members(L, w));
}

void step(launch_state *L)
{
    barrier *b = &L->step_bar;
    std::unique_lock<std::mutex> lock(b->m);
    unsigned gen = b->gen.load(std::memory_order_relaxed);
    if (++b->arrived == b->active) {
        reset_block(L);
        release_locked(b, lock);
        return;
    }
    lock.unlock();
    futex_wait_change(&b->gen, gen);
}

/* Runs thread t of every block of the launch. */
void run_thread(launch_state *L, int t)
{
    cur = L;
    cur_tid = t;
    blockDim = L->block;
    gridDim = L->grid;
    threadIdx = {t % L->block.x, (t / L->block.x) % L->block.y, t / (L->block.x * L->block.y)};
    for (unsigned z = 0; z < L->grid.z; z++)
        for (unsigned y = 0; y < L->grid.y; y++)
            for (unsigned x = 0; x < L->grid.x; x++) {
                blockIdx = {x, y, z};
                (*L->fn)();
                barrier_leave(&L->block_bar);
                barrier_leave(&L->warp_bar[t / kWarp]);
                step(L);
            }
    cur = nullptr;
}

/* The OS threads, created as launches need them and kept: creating 128 threads per launch cost
 * more than the kernels. Every worker wakes for every launch; those past the block size report
 * done at once. The pool's mutex orders a launch's setup before, and its results after, the
 * emulated threads' work, as a kernel boundary does on the GPU. */
struct worker_pool {
    std::mutex m;
    std::condition_variable start_cv, done_cv;
    int n_workers = 0;
    unsigned long gen = 0;
    int n_done = 0;
    launch_state *L = nullptr;
};

/* Never destroyed: at exit the workers still wait on its condition variable, and destroying a
 * condition variable with waiters blocks. */
worker_pool &pool = *new worker_pool;

struct worker_arg {
    int index;
    unsigned long gen;  /* the last launch generation this worker has seen */
};

void *worker_main(void *p)
{
    worker_arg a = *static_cast<worker_arg *>(p);
    delete static_cast<worker_arg *>(p);
    for (;;) {
        launch_state *L;
        {
            std::unique_lock<std::mutex> lock(pool.m);
            pool.start_cv.wait(lock, [&] { return pool.gen != a.gen; });
            a.gen = pool.gen;
            L = pool.L;
        }
        if (a.index < L->n_threads)
            run_thread(L, a.index);
        std::lock_guard<std::mutex> lock(pool.m);
        if (++pool.n_done == pool.n_workers)
            pool.done_cv.notify_all();
    }
    return nullptr;
}

/* Called with pool.m held, between launches. */
void grow_pool(int n)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 1 << 20);
    while (pool.n_workers < n) {
        pthread_t th;
        worker_arg *a = new worker_arg{pool.n_workers, pool.gen};
        if (pthread_create(&th, &attr, worker_main, a) != 0)
            emu_fail("launch: cannot create a thread");
        pthread_detach(th);
        pool.n_workers++;
    }
    pthread_attr_destroy(&attr);
}

/* One launch at a time: shared memory is static storage and the kernels' __shared__ arrays
 * would be shared by two grids running at once. */
std::mutex launch_mutex;
std::mutex smem_limit_mutex;
std::map<const void *, int> &smem_limits = *new std::map<const void *, int>;

}  // namespace

void duet_emu_launch(const void *kernel, dim3 grid, dim3 block, size_t smem,
                     const std::function<void()> &fn)
{
    /* The limits of sm_80/sm_90, so a launch the GPU would refuse fails here too. */
    unsigned long long n_threads = (unsigned long long)block.x * block.y * block.z;
    if (n_threads == 0 || n_threads > kMaxThreads || block.z > 64)
        emu_fail("launch: a block has 1..1024 threads (z at most 64)");
    if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 ||
        grid.z > 65535)
        emu_fail("launch: grid out of range (x < 2^31, y and z <= 65535, none 0)");
    if (smem > 227 * 1024)
        emu_fail("launch: more than 227 KiB of dynamic shared memory");
    if (smem > 48 * 1024) {
        std::lock_guard<std::mutex> lock(smem_limit_mutex);
        auto it = smem_limits.find(kernel);
        if (it == smem_limits.end() || (size_t)it->second < smem)
            emu_fail("launch: more than 48 KiB of dynamic shared memory without "
                     "cudaFuncSetAttribute(MaxDynamicSharedMemorySize)");
    }

    std::lock_guard<std::mutex> lock(launch_mutex);
    launch_state *L = new launch_state;
    L->grid = grid;
    L->block = block;
    L->n_threads = (int)n_threads;
    L->fn = &fn;
    L->dyn_smem = static_cast<unsigned char *>(calloc(smem ? smem : 1, 1));
    if (!L->dyn_smem)
        emu_fail("launch: out of memory for shared memory");
    reset_block(L);
    barrier_reset(&L->step_bar, L->n_threads);

    {
        std::unique_lock<std::mutex> plock(pool.m);
        grow_pool(L->n_threads);
        pool.L = L;
        pool.n_done = 0;
        pool.gen++;
        pool.start_cv.notify_all();
        pool.done_cv.wait(plock, [&] { return pool.n_done == pool.n_workers; });
        pool.L = nullptr;
    }
    free(L->dyn_smem);
    delete L;
}

void duet_emu_syncthreads(void)
{
    barrier_wait(&cur->block_bar);
}

void duet_emu_syncwarp(void)
{
    barrier_wait(&cur->warp_bar[cur_tid / kWarp]);
}

int duet_emu_lane(void)
{
    return cur_tid % kWarp;
}

void duet_emu_check_mask(unsigned mask)
{
    if (mask != 0xffffffffu)
        emu_fail("shuffle: only full-warp masks (0xffffffff) are emulated");
}

uint64_t duet_emu_shfl(uint64_t value, int src_lane)
{
    int warp = cur_tid / kWarp;
    barrier *b = &cur->warp_bar[warp];
    {
        std::lock_guard<std::mutex> lock(b->m);
        if (b->active != kWarp)
            emu_fail("shuffle: every lane of a full warp must take part (a partial warp, or lanes "
                     "that already returned)");
    }
    cur->xchg[warp][cur_tid % kWarp] = value;
    barrier_wait(b);
    uint64_t got = cur->xchg[warp][src_lane];
    barrier_wait(b);  /* nobody overwrites a slot before every lane has read it */
    return got;
}

void *duet_emu_dyn_smem(void)
{
    return cur->dyn_smem;
}

cudaError_t duet_emu_func_set_smem(const void *func, int bytes)
{
    std::lock_guard<std::mutex> lock(smem_limit_mutex);
    smem_limits[func] = bytes;
    return cudaSuccess;
}
