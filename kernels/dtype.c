/* kernels/dtype.c — type traits and scalar half/bfloat16 conversions. */
#include "dtype.h"

#include <string.h>
#include <strings.h>

static const duet_type_traits_t traits_f32  = {"F32", 1, 4};
static const duet_type_traits_t traits_f16  = {"F16", 1, 2};
static const duet_type_traits_t traits_bf16 = {"BF16", 1, 2};
static const duet_type_traits_t traits_q4_0 = {"Q4_0", DUET_QK, sizeof(duet_block_q4_0_t)};
static const duet_type_traits_t traits_q4_1 = {"Q4_1", DUET_QK, sizeof(duet_block_q4_1_t)};
static const duet_type_traits_t traits_q8_0 = {"Q8_0", DUET_QK, sizeof(duet_block_q8_0_t)};

_Static_assert(sizeof(duet_block_q4_0_t) == 18, "Q4_0 block is 18 bytes");
_Static_assert(sizeof(duet_block_q4_1_t) == 20, "Q4_1 block is 20 bytes");
_Static_assert(sizeof(duet_block_q8_0_t) == 34, "Q8_0 block is 34 bytes");

const duet_type_traits_t *duet_type_traits(uint32_t type)
{
    switch (type) {
    case DUET_TYPE_F32:  return &traits_f32;
    case DUET_TYPE_F16:  return &traits_f16;
    case DUET_TYPE_BF16: return &traits_bf16;
    case DUET_TYPE_Q4_0: return &traits_q4_0;
    case DUET_TYPE_Q4_1: return &traits_q4_1;
    case DUET_TYPE_Q8_0: return &traits_q8_0;
    }
    return NULL;
}

size_t duet_type_row_bytes(uint32_t type, int64_t n)
{
    const duet_type_traits_t *t = duet_type_traits(type);
    if (!t || n < 0 || n % t->block_elems != 0)
        return 0;
    return (size_t)(n / t->block_elems) * (size_t)t->block_bytes;
}

int duet_type_parse(const char *name)
{
    static const uint32_t all[] = {DUET_TYPE_F32, DUET_TYPE_F16, DUET_TYPE_BF16,
                                   DUET_TYPE_Q4_0, DUET_TYPE_Q4_1, DUET_TYPE_Q8_0};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (strcasecmp(name, duet_type_traits(all[i])->name) == 0)
            return (int)all[i];
    return -1;
}

float duet_fp16_to_fp32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {  /* subnormal: normalize */
            int e = -1;
            do {
                mant <<= 1;
                e++;
            } while (!(mant & 0x400));
            bits = sign | (uint32_t)(127 - 15 - e) << 23 | (mant & 0x3ff) << 13;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | mant << 13;
    } else {
        bits = sign | (exp + 127 - 15) << 23 | mant << 13;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t duet_fp32_to_fp16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffff;
    if (absx >= 0x7f800000)  /* inf or nan */
        return (uint16_t)(sign | 0x7c00 | (absx > 0x7f800000 ? 0x200 : 0));
    if (absx >= 0x477ff000)  /* rounds past the largest half */
        return (uint16_t)(sign | 0x7c00);
    if (absx < 0x38800000) {  /* subnormal half or zero */
        if (absx < 0x33000000)
            return (uint16_t)sign;
        uint32_t mant = (absx & 0x7fffff) | 0x800000;
        int shift = 126 - (int)(absx >> 23);  /* 14..24 */
        uint32_t half = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        uint32_t mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1)))
            half++;
        return (uint16_t)(sign | half);
    }
    uint32_t h = ((absx >> 13) - ((127 - 15) << 10));
    uint32_t rem = absx & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1)))
        h++;
    return (uint16_t)(sign | h);
}

float duet_bf16_to_fp32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t duet_fp32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if ((x & 0x7fffffff) > 0x7f800000)
        return (uint16_t)((x >> 16) | 0x40);  /* keep nan a nan */
    x += 0x7fff + ((x >> 16) & 1);
    return (uint16_t)(x >> 16);
}
