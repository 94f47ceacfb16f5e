/* kernels/emu/emu.h — the CUDA device dialect for host C++ (tests only): the .cu files of kernels/cuda compiled
 * by g++ run here with one OS thread per CUDA thread, so ThreadSanitizer sees their races.
 *
 * What a kernel may use (the subset kernels/cuda keeps to):
 *   __global__, __device__, __host__, __forceinline__, __launch_bounds__, __restrict__;
 *   __shared__ variables (static storage: blocks run one after another, so one copy serves each
 *   block in turn), dynamic shared memory only through duet_dyn_smem<T>();
 *   threadIdx, blockIdx, blockDim, gridDim; __syncthreads(), __syncwarp();
 *   __shfl_sync, __shfl_xor_sync, __shfl_down_sync with the full mask, every lane of a full warp
 *   taking part; __fmul_rn, __fadd_rn, __fsub_rn; launches only through DUET_LAUNCH.
 * Not emulated: atomics, cooperative groups, inline PTX, partial-warp shuffles, memory fences
 * beyond what a barrier gives. A misuse the emulator can see (a shuffle by a partial warp, a grid
 * past the hardware limits, a barrier that never completes) prints what went wrong and aborts:
 * this is a test harness, and a silently wrong emulation would be worse. */
#ifndef DUET_KERNELS_EMU_EMU_H
#define DUET_KERNELS_EMU_EMU_H

#ifdef __CUDACC__
#error "kernels/emu/emu.h is for host compilers; nvcc uses the real CUDA dialect"
#endif

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <functional>

#include "emu_runtime.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

/* Constant-initialized: without it GCC reaches an extern thread_local through a wrapper function
 * (in case its definition runs a constructor), and its UndefinedBehaviorSanitizer reports every
 * access through that wrapper as a member access within a null pointer. */
#if defined(__GNUC__) && !defined(__clang__)
#define DUET_EMU_CONSTINIT __constinit
#else
#define DUET_EMU_CONSTINIT
#endif

/* Per emulated thread, set by the launcher before the kernel body runs. */
extern thread_local DUET_EMU_CONSTINIT uint3 threadIdx;
extern thread_local DUET_EMU_CONSTINIT uint3 blockIdx;
extern thread_local DUET_EMU_CONSTINIT dim3 blockDim;
extern thread_local DUET_EMU_CONSTINIT dim3 gridDim;

/* Runs fn for every thread of every block of the grid and returns when all are done: blocks one
 * after another, the threads of a block as OS threads. smem bytes of dynamic shared memory, at
 * most 48 KiB unless cudaFuncSetAttribute raised the kernel's limit. */
void duet_emu_launch(const void *kernel, dim3 grid, dim3 block, size_t smem,
                     const std::function<void()> &fn);

void duet_emu_syncthreads(void);
void duet_emu_syncwarp(void);
/* Lane `src` of this warp's value of the 8-byte slot every lane publishes; all 32 lanes call it. */
uint64_t duet_emu_shfl(uint64_t value, int src_lane);
int duet_emu_lane(void);
void *duet_emu_dyn_smem(void);
/* Aborts unless mask is the full warp: the emulator supports full-warp shuffles only. */
void duet_emu_check_mask(unsigned mask);

#define DUET_LAUNCH(kernel, grid, block, smem, stream, ...) \
    duet_emu_launch(reinterpret_cast<const void *>(&kernel), (grid), (block), (smem), \
                    [=]() { kernel(__VA_ARGS__); })

static inline void __syncthreads(void) { duet_emu_syncthreads(); }
static inline void __syncwarp(unsigned mask = 0xffffffffu) { (void)mask; duet_emu_syncwarp(); }

template <class T>
static inline T *duet_dyn_smem(void)
{
    return static_cast<T *>(duet_emu_dyn_smem());
}

template <class T>
static inline T duet_emu_shfl_t(unsigned mask, T v, int src)
{
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    duet_emu_check_mask(mask);
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    bits = duet_emu_shfl(bits, src);
    T out;
    memcpy(&out, &bits, sizeof out);
    return out;
}

template <class T>
static inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32)
{
    (void)width;
    return duet_emu_shfl_t(mask, v, src_lane & 31);
}

template <class T>
static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32)
{
    (void)width;
    return duet_emu_shfl_t(mask, v, (duet_emu_lane() ^ lane_mask) & 31);
}

template <class T>
static inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32)
{
    (void)width;
    int src = duet_emu_lane() + (int)delta;
    return duet_emu_shfl_t(mask, v, src < 32 ? src : duet_emu_lane());
}

/* Round-to-nearest arithmetic that nvcc never fuses into an FMA; plain operations on the host
 * (the emulator is built with -ffp-contract=off). */
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }

#endif
