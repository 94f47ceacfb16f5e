/* kernels/sample.h — the arithmetic of drawing a token, shared by the host sampler
 * (lib/engine/sampler.c) and the device sampler (kernels/cuda/sample.cu) so that both pick the
 * same token for the same logits, seed and draw index. Everything here is integer arithmetic or
 * single IEEE operations (add, multiply, divide, fused multiply-add, conversions), each correctly
 * rounded on the CPU and on the GPU alike; nothing calls libm's expf, whose last bit differs
 * between glibc and CUDA, and no sum depends on the order of its terms (weights are integers).
 *
 * The draw, for logits l[n_vocab] after the repetition penalty:
 *   best = argmax l (lowest id on ties); temperature <= 0 stops here;
 *   z_i = (l_i - l_best) * (1 / temperature) (float); candidates: z_i > DUET_SAMPLE_CUTOFF;
 *   e_i = duet_sample_exp(z_i) in (0, 1] (e_best = 1 exactly);
 *   order: key_i = (bits of e_i, id descending), larger first: e descending, ties by lower id;
 *   top_k keeps the first k; min_p keeps those with e_i >= min_p (a prefix of the order);
 *   w_i = floor(e_i * 2^40), S = their sum (exact: needs n_vocab < 2^24);
 *   top_p < 1 keeps the shortest prefix whose weight reaches L = top_p * S (in double, at least 1);
 *   the token is the first in order whose running weight exceeds T = floor(r * S / 2^53), r the
 *   53 random bits of draw draw_index of the seed (splitmix64 of the pair). */
#ifndef DUET_KERNELS_SAMPLE_H
#define DUET_KERNELS_SAMPLE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define DUET_SAMPLE_FN static __host__ __device__ inline
#elif defined(__cplusplus)
#define DUET_SAMPLE_FN static inline  /* kernels/emu: __host__/__device__ are empty there */
#else
#define DUET_SAMPLE_FN static inline
#endif

/* One row to draw from, for a backend's sample op. */
typedef struct {
    int row;                  /* the logits row ([row][n_vocab]) */
    float temperature;        /* <= 0: greedy */
    int top_k;                /* <= 0: all */
    float top_p;              /* >= 1: all */
    float min_p;              /* <= 0: none */
    float repeat_penalty;     /* 1: off */
    int repeat_last_n;
    const int32_t *history;   /* host [n_history]: the tokens so far, for the penalty */
    int n_history;
    uint64_t seed;
    uint64_t draw_index;      /* the request's draw counter (0 for its first token) */
} duet_sample_req_t;

#define DUET_SAMPLE_CUTOFF (-25.0f)          /* e^-25 of the best: never survives a sane filter */
#define DUET_SAMPLE_WEIGHT_SCALE 1099511627776.0f  /* 2^40 */

DUET_SAMPLE_FN uint64_t duet_sample_splitmix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* The 53 random bits of draw n of a seed. */
DUET_SAMPLE_FN uint64_t duet_sample_bits53(uint64_t seed, uint64_t n)
{
    return duet_sample_splitmix64(duet_sample_splitmix64(seed) ^ n) >> 11;
}

/* The repetition penalty of one logit: divides a positive one, multiplies the others. */
DUET_SAMPLE_FN float duet_sample_penalize(float l, float penalty)
{
    return l > 0.0f ? l / penalty : l * penalty;
}

/* Whether history[i] is penalized: a valid id not already seen in history[from .. i-1] (a token
 * repeated in the window is penalized once). */
DUET_SAMPLE_FN int duet_sample_penalty_first(const int32_t *history, int from, int i, int n_vocab)
{
    int32_t t = history[i];
    if (t < 0 || t >= n_vocab)
        return 0;
    for (int j = from; j < i; j++)
        if (history[j] == t)
            return 0;
    return 1;
}

DUET_SAMPLE_FN float duet_sample_z(float l, float max_l, float inv_t)
{
    float d = l - max_l;
    return d * inv_t;
}

DUET_SAMPLE_FN float duet_sample_bits_float(uint32_t b)
{
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

DUET_SAMPLE_FN uint32_t duet_sample_float_bits(float f)
{
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return b;
}

/* e^z for z in (DUET_SAMPLE_CUTOFF, 0], within 2 ulp of the true value: 2^k e^r with
 * k = round(z log2 e), r = z - k ln 2 (two-part ln 2, by fma) and Cephes' degree-7 polynomial,
 * every step an fmaf, a product or a sum of two floats, so the CPU and the GPU get the same bits.
 * e^0 = 1 exactly. */
DUET_SAMPLE_FN float duet_sample_exp(float z)
{
    float k = rintf(z * 1.44269504088896341f);
    float r = fmaf(k, -0.693359375f, z);
    r = fmaf(k, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    float r2 = r * r;
    float y = fmaf(p, r2, r);
    y = y + 1.0f;
    /* 2^k, k in [-37, 0]: a normal float, so the product is exact. */
    return y * duet_sample_bits_float((uint32_t)((int)k + 127) << 23);
}

/* Bits the ids of a vocabulary take in a key. */
DUET_SAMPLE_FN int duet_sample_id_bits(int n_vocab)
{
    int b = 0;
    while (b < 31 && ((int64_t)1 << b) < (int64_t)n_vocab)
        b++;
    return b;
}

/* The order of candidates as one integer, larger first: e descending, then id ascending. e > 0,
 * so its bits order as the floats do and stay below 2^30 (e <= 1): keys are below 2^(30 + idb). */
DUET_SAMPLE_FN uint64_t duet_sample_key(float e, int id, int idb)
{
    uint64_t mask = ((uint64_t)1 << idb) - 1;
    return ((uint64_t)duet_sample_float_bits(e) << idb) | (mask - (uint64_t)id);
}

DUET_SAMPLE_FN int32_t duet_sample_key_id(uint64_t key, int idb)
{
    uint64_t mask = ((uint64_t)1 << idb) - 1;
    return (int32_t)(mask - (key & mask));
}

DUET_SAMPLE_FN uint64_t duet_sample_weight(float e)
{
    return (uint64_t)(e * DUET_SAMPLE_WEIGHT_SCALE);
}

DUET_SAMPLE_FN uint64_t duet_sample_key_weight(uint64_t key, int idb)
{
    return duet_sample_weight(duet_sample_bits_float((uint32_t)(key >> idb)));
}

/* Keys at or above this have e >= min_p (min_p above 1 counts as 1, so the best stays). */
DUET_SAMPLE_FN uint64_t duet_sample_min_p_cut(float min_p, int idb)
{
    if (!(min_p > 0.0f))
        return 0;
    if (min_p > 1.0f)
        min_p = 1.0f;
    return (uint64_t)duet_sample_float_bits(min_p) << idb;
}

/* The weight top_p (< 1) of a total s must reach; at least 1, so one candidate always stays. */
DUET_SAMPLE_FN uint64_t duet_sample_top_p_limit(float top_p, uint64_t s)
{
    double l = (double)top_p * (double)s;
    uint64_t lim = l >= 1.0 ? (uint64_t)l : 1;
    return lim < s ? lim : s;
}

/* floor(bits53 * s / 2^53), exactly (a 117-bit product in 32-bit pieces): below s. */
DUET_SAMPLE_FN uint64_t duet_sample_threshold(uint64_t seed, uint64_t n, uint64_t s)
{
    uint64_t a = duet_sample_bits53(seed, n);
    uint64_t a0 = a & 0xffffffffu, a1 = a >> 32, b0 = s & 0xffffffffu, b1 = s >> 32;
    uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    uint64_t mid = (p00 >> 32) + (p01 & 0xffffffffu) + (p10 & 0xffffffffu);
    uint64_t lo = (mid << 32) | (p00 & 0xffffffffu);
    uint64_t hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
    return (hi << 11) | (lo >> 53);
}

#endif
