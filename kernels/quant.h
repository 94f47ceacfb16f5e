/* kernels/quant.h — conversion of rows between f32 and every stored type (reference code, used to
 * write models and to check kernels; not on any hot path). */
#ifndef DUET_KERNELS_QUANT_H
#define DUET_KERNELS_QUANT_H

#include <stdint.h>

#include "../lib/base/status.h"
#include "dtype.h"

/* dst gets duet_type_row_bytes(type, n) bytes. n must be a multiple of the block size. */
duet_status_t duet_quantize_row(uint32_t type, const float *src, void *dst, int64_t n);
/* dst gets n floats. */
duet_status_t duet_dequantize_row(uint32_t type, const void *src, float *dst, int64_t n);

#endif
