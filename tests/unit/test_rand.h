/* tests/unit/test_rand.h — the kernel tests' data: deterministic pseudo-random floats (xorshift64*,
 * the same numbers on every run from a test's own seed) and an allocation that ends the test when
 * memory runs out. */
#ifndef DUET_TESTS_TEST_RAND_H
#define DUET_TESTS_TEST_RAND_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Each test program defines its seed: TEST_RAND_SEED before including this. */
static uint64_t rng_state = TEST_RAND_SEED;

static inline float frand(float lo, float hi)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t r = rng_state * 0x2545f4914f6cdd1dull;
    return lo + (hi - lo) * (float)((r >> 40) / (double)(1ull << 24));
}

static inline void fill_rand(float *x, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++)
        x[i] = frand(lo, hi);
}

static inline void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    return p;
}

#endif
