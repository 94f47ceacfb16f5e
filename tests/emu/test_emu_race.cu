/* tests/emu/test_emu_race.cu — the emulator itself, built with ThreadSanitizer: a kernel that reads
 * a neighbour's shared-memory slot without __syncthreads must be reported as a data race (mode
 * "racy"), and the same kernel with the barrier, plus shuffles, dynamic shared memory and a block
 * reduction, must run clean and right (mode "fixed"). Compiled as host C++ against kernels/emu
 * only; a .cu so it keeps to the kernels' dialect. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda/common.cuh"

#define N_THREADS 128
#define N_BLOCKS 3

/* out[i] = in[i + 1] within each block, through shared memory. */
static __global__ void shift_racy(const float *in, float *out)
{
    __shared__ float s[N_THREADS];
    int i = blockIdx.x * N_THREADS + threadIdx.x;
    s[threadIdx.x] = in[i];
    /* missing __syncthreads(): thread t reads slot t + 1 before thread t + 1 may have written it */
    out[i] = s[(threadIdx.x + 1) % N_THREADS];
}

static __global__ void shift_fixed(const float *in, float *out)
{
    __shared__ float s[N_THREADS];
    int i = blockIdx.x * N_THREADS + threadIdx.x;
    s[threadIdx.x] = in[i];
    __syncthreads();
    out[i] = s[(threadIdx.x + 1) % N_THREADS];
}

/* Per warp: the lane sum by xor shuffles, lane 0's value by broadcast, and the next lane's by
 * shuffle-down (the last lane keeps its own); per block: the sum through dynamic shared memory. */
static __global__ void shuffles(const float *in, float *out)
{
    float *warp_sums = duet_dyn_smem<float>();
    int i = blockIdx.x * N_THREADS + threadIdx.x, lane = threadIdx.x % 32;
    float v = in[i];
    float sum = duet_cu_warp_sum(v);
    float first = __shfl_sync(0xffffffffu, v, 0);
    float down = __shfl_down_sync(0xffffffffu, v, 1);
    if (lane == 0)
        warp_sums[threadIdx.x / 32] = sum;
    __syncthreads();
    float block = 0.0f;
    for (int w = 0; w < N_THREADS / 32; w++)
        block += warp_sums[w];
    out[4 * i] = sum;
    out[4 * i + 1] = first;
    out[4 * i + 2] = down;
    out[4 * i + 3] = block;
}

int main(int argc, char **argv)
{
    int racy = argc == 2 && strcmp(argv[1], "racy") == 0;
    if (argc != 2 || (!racy && strcmp(argv[1], "fixed") != 0)) {
        fprintf(stderr, "usage: %s racy|fixed\n", argv[0]);
        return 2;
    }
    enum { N = N_THREADS * N_BLOCKS };
    static float in[N], out[4 * N];
    for (int i = 0; i < N; i++)
        in[i] = (float)(i % 61);  /* small integers: every sum is exact in any order */
    if (racy) {
        DUET_LAUNCH(shift_racy, dim3(N_BLOCKS), dim3(N_THREADS), 0, 0, in, out);
        /* The values may well come out right: the point is that TSan reports the race. */
        fprintf(stderr, "racy kernel ran; ThreadSanitizer must have reported a data race above\n");
        return 0;
    }
    int bad = 0;
    DUET_LAUNCH(shift_fixed, dim3(N_BLOCKS), dim3(N_THREADS), 0, 0, in, out);
    for (int i = 0; i < N; i++) {
        int b = i / N_THREADS, t = i % N_THREADS;
        bad += out[i] != in[b * N_THREADS + (t + 1) % N_THREADS];
    }
    DUET_LAUNCH(shuffles, dim3(N_BLOCKS), dim3(N_THREADS), (N_THREADS / 32) * sizeof(float), 0, in, out);
    for (int i = 0; i < N; i++) {
        int w0 = i / 32 * 32, b0 = i / N_THREADS * N_THREADS, lane = i % 32;
        float sum = 0, block = 0;
        for (int j = 0; j < 32; j++)
            sum += in[w0 + j];
        for (int j = 0; j < N_THREADS; j++)
            block += in[b0 + j];
        bad += out[4 * i] != sum || out[4 * i + 1] != in[w0] ||
               out[4 * i + 2] != in[lane < 31 ? i + 1 : i] || out[4 * i + 3] != block;
    }
    fprintf(stderr, "%s: %d wrong values\n", bad ? "FAILED" : "ok", bad);
    return bad ? 1 : 0;
}
