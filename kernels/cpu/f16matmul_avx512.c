/* kernels/cpu/f16matmul_avx512.c — the F16 matmul of f16matmul.h with AVX-512 F (this file alone is
 * built with those flags; cpu_backend.c calls it only after checking the CPU). */
#include "f16matmul.h"

#if defined(__AVX512F__)
#include <immintrin.h>

#include "avx512_store.h"

#define INLINE static inline __attribute__((always_inline))

/* A tile is TILE_G row groups by up to TILE_T tokens: 28 accumulators and the 2 converted weight
 * vectors in 30 of the 32 registers, one conversion per 14 FMAs. On the 2-core EPYC (Zen 4) this
 * was written on, one thread, the default model's shapes at 512 tokens: 98-104 GFLOP/s, against
 * an FMA peak of 117; 28 tokens by 1 group made 88-97, and f32 weights with no conversion at all
 * (an upper bound) 105-109. */
#define TILE_T 14
#define TILE_G DUET_F16M_TILE_GROUPS
/* Up to NARROW_T tokens (decode), NARROW_G groups a tile instead: four independent FMA chains
 * per token rather than two. */
#define NARROW_T DUET_F16M_DECODE_TOKENS
#define NARROW_G DUET_F16M_DECODE_GROUPS
#define MAX_G (NARROW_G > TILE_G ? NARROW_G : TILE_G)
/* Tokens whose activations one pass over a thread's groups reuses from cache (64 x 1536 floats
 * fit L2 with room to spare). */
#define TOKEN_CHUNK 64

/* Where a tile reads and writes: row groups from gw on, gstride f16 apart, and tokens from x and
 * out on. */
typedef struct {
    const uint16_t *gw;
    size_t gstride;
    int cols;
    const float *x;       /* [t * ldx + k] */
    size_t ldx;
    const float *bias;
    float *out;           /* [t * ldo + row] */
    size_t ldo;
    int row0, rows;       /* the tile's first row; the weight's rows */
} tile_at_t;

/* G row groups against T tokens: G * T accumulators, and per column G conversions of 16 weights,
 * each used T times against broadcast activations. */
INLINE void tile(int T, int G, const tile_at_t *a)
{
    __m512 acc[MAX_G][TILE_T];
    _Pragma("GCC unroll 4")
    for (int g = 0; g < G; g++)
        _Pragma("GCC unroll 16")
        for (int t = 0; t < T; t++)
            acc[g][t] = _mm512_setzero_ps();
    for (int k = 0; k < a->cols; k++) {
        __m512 wv[MAX_G];
        _Pragma("GCC unroll 4")
        for (int g = 0; g < G; g++)
            wv[g] = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(a->gw + g * a->gstride + (size_t)k * 16)));
        _Pragma("GCC unroll 16")
        for (int t = 0; t < T; t++) {
            __m512 xb = _mm512_set1_ps(a->x[(size_t)t * a->ldx + k]);
            _Pragma("GCC unroll 4")
            for (int g = 0; g < G; g++)
                acc[g][t] = _mm512_fmadd_ps(wv[g], xb, acc[g][t]);
        }
    }
    _Pragma("GCC unroll 4")
    for (int g = 0; g < G; g++)
        _Pragma("GCC unroll 16")
        for (int t = 0; t < T; t++)
            duet_avx512_store_rows(acc[g][t], a->bias, a->out + (size_t)t * a->ldo, a->row0 + 16 * g, a->rows);
}

/* nt tokens (1 .. TILE_T) by ng groups (TILE_G or 1). */
static void tile_wide(int nt, int ng, const tile_at_t *a)
{
#define CASE(T) \
    case T: if (ng == TILE_G) tile(T, TILE_G, a); else tile(T, 1, a); break
    switch (nt) {
    CASE(1); CASE(2); CASE(3); CASE(4); CASE(5); CASE(6); CASE(7);
    CASE(8); CASE(9); CASE(10); CASE(11); CASE(12); CASE(13);
    default: CASE(TILE_T);
    }
#undef CASE
}

/* nt tokens (1 .. NARROW_T) by NARROW_G groups. */
static void tile_narrow(int nt, const tile_at_t *a)
{
    switch (nt) {
    case 1:  tile(1, NARROW_G, a); break;
    case 2:  tile(2, NARROW_G, a); break;
    default: tile(NARROW_T, NARROW_G, a); break;
    }
}

static void f16gemm(const duet_cpu_f16packed_t *w, int g0, int g1, const float *x, size_t ldx,
                    int n, const float *bias, float *out, size_t ldo)
{
    tile_at_t a = {.gstride = w->group_elems, .cols = w->cols, .ldx = ldx, .bias = bias, .ldo = ldo,
                   .rows = w->rows};
    for (int c0 = 0; c0 < n; c0 += TOKEN_CHUNK) {
        int c1 = n - c0 < TOKEN_CHUNK ? n : c0 + TOKEN_CHUNK;
        int tiles = (c1 - c0 + TILE_T - 1) / TILE_T;
        for (int g = g0; g < g1;) {
            int narrow = c1 - c0 <= NARROW_T && g1 - g >= NARROW_G;
            int ng = narrow ? NARROW_G : g1 - g >= TILE_G ? TILE_G : 1;
            a.gw = w->data + (size_t)g * w->group_elems;
            a.row0 = g * DUET_F16M_ROWS;
            /* Tiles of nearly equal size: 64 tokens as 13, 13, 13, 13, 12 rather than 14 x 4 + 8. */
            for (int i = 0, t0 = c0; i < tiles; i++) {
                int nt = (c1 - t0) / (tiles - i) + ((c1 - t0) % (tiles - i) != 0);
                a.x = x + (size_t)t0 * ldx;
                a.out = out + (size_t)t0 * ldo;
                if (narrow)
                    tile_narrow(nt, &a);
                else
                    tile_wide(nt, ng, &a);
                t0 += nt;
            }
            g += ng;
        }
    }
}

duet_cpu_f16gemm_fn duet_cpu_f16gemm_avx512(void)
{
    return f16gemm;
}

#else

duet_cpu_f16gemm_fn duet_cpu_f16gemm_avx512(void)
{
    return NULL;
}

#endif
