/* kernels/cuda/cuda_backend.h — the CUDA backend: every op of backend.h as CUDA kernels on one
 * stream of one device (cuBLAS for large prefill matmuls). The same sources built against
 * kernels/emu give a backend of the same name that runs the kernels on the host (tests only). */
#ifndef DUET_KERNELS_CUDA_BACKEND_H
#define DUET_KERNELS_CUDA_BACKEND_H

#ifdef __cplusplus
extern "C" {
#endif

#include "../backend.h"

typedef struct {
    int device;               /* CUDA device ordinal */
    /* Matmuls over at least this many tokens dequantize the weight to f32 and call cuBLAS SGEMM;
     * fewer run the quantized GEMV kernel. 0: 32; negative: never cuBLAS. */
    int gemm_min_tokens;
    /* Decode splits a context into parts of at least this many positions (rounded up to 16)
     * when its units alone would leave SMs idle. 0: 256; negative: never split. */
    int split_min_positions;
} duet_cuda_conf_t;

/* Creates the backend on conf->device (conf may be NULL: device 0, defaults); *be_p is destroyed
 * with be->destroy(be). DUET_ERR_UNAVAILABLE when there is no usable CUDA device or driver (the
 * reason is logged), DUET_ERR_NOMEM when the stream or cuBLAS cannot be set up.
 * Memory from be->alloc is device memory; weights are uploaded by be->prepare_weight into
 * w->packed (device), and ops read w->packed only. Ops are queued on the backend's stream and
 * return before they finish; be->download, be->synchronize and be->sample wait. be->status reports
 * the first CUDA error any op met (ops return nothing), with its reason; it was logged then. */
duet_status_t duet_backend_cuda_create(const duet_cuda_conf_t *conf, duet_backend_t **be_p);

/* How the ops ran so far: which matmul path, whether decode split any context (tests use these to
 * show a path was taken). */
typedef struct {
    uint64_t gemv_calls;        /* matmuls run by the quantized GEMV kernel */
    uint64_t gemm_calls;        /* matmuls run as dequantize + cuBLAS SGEMM */
    uint64_t attn_calls;
    uint64_t attn_split_calls;  /* attention calls that split some context (split-K + merge) */
} duet_cuda_stats_t;

void duet_backend_cuda_stats(duet_backend_t *be, duet_cuda_stats_t *stats_p);

/* 1 when this is the host emulation of the kernels (kernels/emu), 0 on a real GPU. */
int duet_backend_cuda_emulated(void);

#ifdef __cplusplus
}
#endif

#endif
