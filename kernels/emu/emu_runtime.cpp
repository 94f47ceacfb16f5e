/* kernels/emu/emu_runtime.cpp — the CUDA runtime and cuBLAS subset of emu_runtime.h on host
 * memory. Every launch has finished when DUET_LAUNCH returns, so streams have nothing to wait
 * for. */
#include "emu_runtime.h"

#include <stdlib.h>
#include <string.h>

struct duet_emu_stream {
    int unused;
};
struct duet_emu_blas {
    cudaStream_t stream;
};

cudaError_t cudaGetDeviceCount(int *count)
{
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaSetDevice(int device)
{
    return device == 0 ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t cudaGetDevice(int *device)
{
    *device = 0;
    return cudaSuccess;
}

/* A small "GPU", so the heuristics that fill the SMs (decode split-K) engage at test sizes. */
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device)
{
    (void)device;
    if (attr != cudaDevAttrMultiProcessorCount)
        return cudaErrorInvalidValue;
    *value = 4;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **ptr, size_t bytes)
{
    size_t rounded = (bytes + 255) & ~(size_t)255;
    void *p = aligned_alloc(256, rounded ? rounded : 256);
    if (!p)
        return cudaErrorMemoryAllocation;
    /* Like cudaMalloc, not zeroed: fill with a NaN pattern so code relying on zeroes fails. */
    memset(p, 0xff, rounded ? rounded : 256);
    *ptr = p;
    return cudaSuccess;
}

cudaError_t cudaFree(void *ptr)
{
    free(ptr);
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
    (void)kind;
    if (bytes)
        memmove(dst, src, bytes);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream)
{
    (void)stream;
    return cudaMemcpy(dst, src, bytes, kind);
}

cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t stream)
{
    (void)stream;
    memset(dst, value, bytes);
    return cudaSuccess;
}

cudaError_t cudaHostRegister(void *ptr, size_t bytes, unsigned int flags)
{
    return ptr && bytes > 0 && flags == cudaHostRegisterDefault ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t cudaHostUnregister(void *ptr)
{
    return ptr ? cudaSuccess : cudaErrorInvalidValue;
}

cudaError_t cudaStreamCreate(cudaStream_t *stream)
{
    *stream = new duet_emu_stream();
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream)
{
    delete stream;
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream)
{
    (void)stream;
    return cudaSuccess;
}

cudaError_t cudaGetLastError(void)
{
    return cudaSuccess;
}

const char *cudaGetErrorString(cudaError_t err)
{
    switch (err) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    }
    return "unknown error";
}

cublasStatus_t cublasCreate(cublasHandle_t *handle)
{
    *handle = new duet_emu_blas();
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy(cublasHandle_t handle)
{
    delete handle;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream(cublasHandle_t handle, cudaStream_t stream)
{
    handle->stream = stream;
    return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode)
{
    (void)handle;
    (void)mode;
    return CUBLAS_STATUS_SUCCESS;
}

/* Element (i, j) of op(X) for a column-major X with leading dimension ld. */
static float op_at(const float *X, int ld, cublasOperation_t op, int i, int j)
{
    return op == CUBLAS_OP_N ? X[(size_t)j * ld + i] : X[(size_t)i * ld + j];
}

cublasStatus_t cublasSgemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                           int m, int n, int k, const float *alpha, const float *A, int lda,
                           const float *B, int ldb, const float *beta, float *C, int ldc)
{
    (void)handle;
    /* The argument checks cuBLAS makes (lda >= rows of A as stored, and so on). */
    if (m < 0 || n < 0 || k < 0 || ldc < (m > 1 ? m : 1) ||
        lda < ((transa == CUBLAS_OP_N ? m : k) > 1 ? (transa == CUBLAS_OP_N ? m : k) : 1) ||
        ldb < ((transb == CUBLAS_OP_N ? k : n) > 1 ? (transb == CUBLAS_OP_N ? k : n) : 1))
        return CUBLAS_STATUS_INVALID_VALUE;
    for (int j = 0; j < n; j++)
        for (int i = 0; i < m; i++) {
            float sum = 0.0f;
            for (int p = 0; p < k; p++)
                sum += op_at(A, lda, transa, i, p) * op_at(B, ldb, transb, p, j);
            float *c = &C[(size_t)j * ldc + i];
            *c = *beta == 0.0f ? *alpha * sum : *alpha * sum + *beta * *c;
        }
    return CUBLAS_STATUS_SUCCESS;
}
