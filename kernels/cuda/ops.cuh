/* kernels/cuda/ops.cuh — the launchers of the CUDA kernels (internal to kernels/cuda): each takes
 * device pointers and a stream and queues its kernels; cuda_backend.cu turns backend.h calls
 * (with their host-memory arguments) into these. */
#ifndef DUET_KERNELS_CUDA_OPS_CUH
#define DUET_KERNELS_CUDA_OPS_CUH

#include "common.cuh"

/* ---- elementwise.cu ---- */
void duet_cu_embed(cudaStream_t st, uint32_t type, const void *table, size_t row_bytes, int cols,
                   const int32_t *tokens /* device [n] */, int n, float *out /* [n][cols] */);
void duet_cu_rmsnorm(cudaStream_t st, const float *x, const float *w, float eps, int n, int dim,
                     float *out);
void duet_cu_rope(cudaStream_t st, float *x, const int32_t *pos /* device [n] */, int n, int n_head,
                  int head_dim, int rot_dim, float theta, int neox);
void duet_cu_kv_write(cudaStream_t st, uint16_t *pool_base, int n_layer, int n_kv_head,
                      int head_dim, int layer, const float *k, const float *v,
                      const int32_t *slots /* device [n] */, int n);
void duet_cu_swiglu(cudaStream_t st, const float *gate, const float *up, size_t n, float *out);
void duet_cu_add(cudaStream_t st, float *x, const float *y, size_t n);
/* out[i][r] += bias[r] for i < n, r < rows. */
void duet_cu_add_bias(cudaStream_t st, float *out, const float *bias, int n, int rows);

/* ---- matmul.cu ---- */
/* out[n][rows] = x[n][cols] W^T (+ bias), one warp per weight row, reading the stored blocks. */
void duet_cu_gemv(cudaStream_t st, int n_sm, uint32_t type, const void *w, size_t row_bytes,
                  int rows, int cols, const float *bias, const float *x, int n, float *out);
/* out[rows][cols] = the weight rows as f32 (exactly duet_dequantize_row). */
void duet_cu_dequant(cudaStream_t st, uint32_t type, const void *w, size_t row_bytes, int rows,
                     int cols, float *out);

/* ---- attention.cu ---- */
#define DUET_CU_ATTN_ROWS 32     /* query rows (token, head) per block */
#define DUET_CU_ATTN_MAX_HD 256

/* One block's work: query rows (token tok0 + r / nh, head head0 + r % nh) for r < ntok * nh of
 * sequence seq, over KV positions [p_lo, p_hi) (p_lo a multiple of 16), each row also limited to
 * its own position. part < 0: write the normalized output; else write the unnormalized
 * accumulator and the row max and sum to partial slot part, for duet_cu_attn_merge. */
typedef struct {
    int seq, tok0, ntok, head0, nh, kvh, p_lo, p_hi, part;
} duet_cu_attn_unit_t;

/* A query row group whose KV range was split: parts first .. first + n_parts - 1 (ntok = 1). */
typedef struct {
    int first, n_parts, tok, head0, nh;
} duet_cu_attn_merge_t;

typedef struct {
    const uint16_t *pool;        /* the paged pool, layout of backend.h */
    int n_layer, n_kv_head, head_dim, layer;
    const float *q;              /* [n_tok][n_head][head_dim] */
    int n_head;
    const int32_t *tok_start;    /* device [n_seq + 1] */
    const int32_t *kv_len;       /* device [n_seq] */
    const int32_t *block_table;  /* device [n_seq][max_blocks] */
    int max_blocks;
    float scale;
    float *out;                  /* [n_tok][n_head][head_dim] */
    float *part_acc;             /* [n_parts][DUET_CU_ATTN_ROWS][head_dim] */
    float *part_ml;              /* [n_parts][2][DUET_CU_ATTN_ROWS]: row max, row sum */
} duet_cu_attn_args_t;

/* Raises the kernel's shared-memory limit once (head_dim 256 needs ~67 KiB). */
cudaError_t duet_cu_attn_init(void);
void duet_cu_attn(cudaStream_t st, const duet_cu_attn_args_t *a,
                  const duet_cu_attn_unit_t *units /* device */, int n_units);
void duet_cu_attn_merge(cudaStream_t st, const duet_cu_attn_args_t *a,
                        const duet_cu_attn_merge_t *merges /* device */, int n_merges);

/* ---- sample.cu ---- */
/* One row of a sample launch, in device memory; pen[pen_off .. pen_off + n_pen - 1] are the
 * distinct token ids the repetition penalty applies to. */
typedef struct {
    int row, top_k, pen_off, n_pen;
    float temperature, top_p, min_p, repeat_penalty;
    uint64_t seed, draw_index;
} duet_cu_sample_row_t;

/* out[i] = the token drawn from logits row rows[i].row (penalized in place) as kernels/sample.h
 * specifies; scratch holds [n][n_vocab] floats. */
void duet_cu_sample(cudaStream_t st, float *logits, int n_vocab, const duet_cu_sample_row_t *rows,
                    int n, const int32_t *pen, float *scratch, int32_t *out);

#endif
