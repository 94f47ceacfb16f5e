/* kernels/dtype.h — the tensor element types duet reads (GGUF/ggml type ids) and their block
 * geometry: a row of n elements of a block type takes n / block_elems * block_bytes bytes. */
#ifndef DUET_KERNELS_DTYPE_H
#define DUET_KERNELS_DTYPE_H

#include <stddef.h>
#include <stdint.h>

/* Values are the ggml type ids stored in GGUF files. */
typedef enum {
    DUET_TYPE_F32  = 0,
    DUET_TYPE_F16  = 1,
    DUET_TYPE_Q4_0 = 2,
    DUET_TYPE_Q4_1 = 3,
    DUET_TYPE_Q8_0 = 8,
    DUET_TYPE_BF16 = 30,
} duet_type_t;

#define DUET_QK 32  /* elements per block of Q4_0, Q4_1 and Q8_0 */

/* Block layouts, as in GGUF files (little-endian, packed). */
typedef struct { uint16_t d; uint8_t qs[DUET_QK / 2]; } duet_block_q4_0_t;            /* x = d * (q - 8); low nibbles are elements 0..15, high 16..31 */
typedef struct { uint16_t d, m; uint8_t qs[DUET_QK / 2]; } duet_block_q4_1_t;         /* x = d * q + m */
typedef struct { uint16_t d; int8_t qs[DUET_QK]; } duet_block_q8_0_t;                 /* x = d * q */

typedef struct {
    const char *name;   /* "Q4_1" */
    int block_elems;    /* elements per block (1 for plain types) */
    int block_bytes;    /* bytes per block */
} duet_type_traits_t;

/* Traits of a type this build supports, or NULL for an unknown or unsupported type id. */
const duet_type_traits_t *duet_type_traits(uint32_t type);

/* Bytes of a row of n elements; 0 if n is not a multiple of the block size or the type is unknown. */
size_t duet_type_row_bytes(uint32_t type, int64_t n);

/* Parses "F32", "f16", "q4_1", ...; returns -1 when the name is unknown. */
int duet_type_parse(const char *name);

/* IEEE half and bfloat16 conversions (round to nearest even). */
float    duet_fp16_to_fp32(uint16_t h);
uint16_t duet_fp32_to_fp16(float f);
float    duet_bf16_to_fp32(uint16_t h);
uint16_t duet_fp32_to_bf16(float f);

#endif
