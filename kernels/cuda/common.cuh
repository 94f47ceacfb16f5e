/* kernels/cuda/common.cuh — what every duet CUDA kernel file includes: the dialect (real CUDA under
 * nvcc, the kernels/emu shim under a host compiler) and the small device helpers they share.
 * The kernels keep to the subset kernels/emu/emu.h lists: launches through DUET_LAUNCH, dynamic
 * shared memory through duet_dyn_smem<T>(), full-warp shuffles, no inline PTX. */
#ifndef DUET_KERNELS_CUDA_COMMON_CUH
#define DUET_KERNELS_CUDA_COMMON_CUH

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define DUET_LAUNCH(kernel, grid, block, smem, stream, ...) \
    kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)

/* One extern array for every kernel; each casts it to what it keeps there. */
template <class T>
__device__ __forceinline__ T *duet_dyn_smem(void)
{
    extern __shared__ __align__(16) unsigned char duet_smem_[];
    return reinterpret_cast<T *>(duet_smem_);
}
#else
#include "../emu/emu.h"
#endif

extern "C" {
#include "../backend.h"
#include "../dtype.h"
}

#define DUET_CU_WARP 32

static __device__ __forceinline__ int duet_cu_min(int a, int b)
{
    return a < b ? a : b;
}

/* Half and bfloat16 to f32 are exact; f32 to half rounds to nearest even on both sides, so the
 * GPU and the CPU reference store the same bits. */
static __device__ __forceinline__ float duet_cu_h2f(uint16_t h)
{
#ifdef __CUDACC__
    return __half2float(__ushort_as_half(h));
#else
    return duet_fp16_to_fp32(h);
#endif
}

static __device__ __forceinline__ uint16_t duet_cu_f2h(float f)
{
#ifdef __CUDACC__
    return __half_as_ushort(__float2half_rn(f));
#else
    return duet_fp32_to_fp16(f);
#endif
}

static __device__ __forceinline__ float duet_cu_bf2f(uint16_t h)
{
#ifdef __CUDACC__
    return __uint_as_float((uint32_t)h << 16);
#else
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
#endif
}

/* Element j of a stored row, exactly as duet_dequantize_row gives it (the products and sums are
 * rounded ones, never fused, so the GPU matches the CPU bit for bit). */
static __device__ __forceinline__ float duet_cu_load_elem(uint32_t type, const uint8_t *row, int j)
{
    switch (type) {
    case DUET_TYPE_F32:
        return reinterpret_cast<const float *>(row)[j];
    case DUET_TYPE_F16:
        return duet_cu_h2f(reinterpret_cast<const uint16_t *>(row)[j]);
    case DUET_TYPE_BF16:
        return duet_cu_bf2f(reinterpret_cast<const uint16_t *>(row)[j]);
    case DUET_TYPE_Q8_0: {
        const duet_block_q8_0_t *b = reinterpret_cast<const duet_block_q8_0_t *>(row) + j / DUET_QK;
        return __fmul_rn(duet_cu_h2f(b->d), (float)b->qs[j % DUET_QK]);
    }
    case DUET_TYPE_Q4_0: {
        const duet_block_q4_0_t *b = reinterpret_cast<const duet_block_q4_0_t *>(row) + j / DUET_QK;
        int e = j % DUET_QK, byte = b->qs[e % (DUET_QK / 2)];
        int q = e < DUET_QK / 2 ? (byte & 0x0f) : (byte >> 4);
        return __fmul_rn(duet_cu_h2f(b->d), (float)(q - 8));
    }
    case DUET_TYPE_Q4_1: {
        const duet_block_q4_1_t *b = reinterpret_cast<const duet_block_q4_1_t *>(row) + j / DUET_QK;
        int e = j % DUET_QK, byte = b->qs[e % (DUET_QK / 2)];
        int q = e < DUET_QK / 2 ? (byte & 0x0f) : (byte >> 4);
        return __fadd_rn(__fmul_rn(duet_cu_h2f(b->d), (float)q), duet_cu_h2f(b->m));
    }
    }
    return 0.0f;
}

/* Sum over the warp; every lane gets the same value. */
static __device__ __forceinline__ float duet_cu_warp_sum(float v)
{
    for (int off = DUET_CU_WARP / 2; off > 0; off /= 2)
        v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

#endif
