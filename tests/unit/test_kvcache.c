/* tests/unit/test_kvcache.c — the block allocator and block tables: all-or-nothing reservation,
 * reference counts, generations, and every block back in the pool at the end; the host mirror's
 * staging copies and the KV checksum both ends of a transfer compute. */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "cpu/cpu_backend.h"
#include "kvcache.h"

static duet_backend_t *backend(void)
{
    duet_cpu_conf_t cc = {.n_threads = 1, .isa = DUET_CPU_ISA_SCALAR};
    duet_backend_t *be = NULL;
    duet_backend_cpu_create(&cc, &be);
    return be;
}

static void test_sizes_follow_layout(void)
{
    duet_kv_cache_conf_t kc = {.n_layer = 30, .n_kv_head = 3, .head_dim = 64, .n_blocks = 10};
    /* SmolLM2: 30 layers x (K + V) x 3 heads x 64 dims x 2 bytes = 23040 bytes per token. */
    CHECK_EQ_INT(duet_kv_cache_token_bytes(&kc), 23040);
    CHECK_EQ_INT(duet_kv_cache_pool_bytes(&kc), 23040 * 16 * 10);
    duet_backend_t *be = backend();
    duet_kv_cache_t *c;
    CHECK_EQ_INT(duet_kv_cache_create(&kc, be, &c), DUET_OK);
    const duet_kv_pool_view_t *v = duet_kv_cache_view(c);
    /* One (block, layer) K slice is n_kv_head x 16 x head_dim, V follows it, then the next layer. */
    CHECK(duet_kv_slice(v, 0, 0, 1) - duet_kv_slice(v, 0, 0, 0) == 3 * 16 * 64);
    CHECK(duet_kv_slice(v, 0, 1, 0) - duet_kv_slice(v, 0, 0, 0) == 2 * 3 * 16 * 64);
    CHECK(duet_kv_slice(v, 1, 0, 0) - duet_kv_slice(v, 0, 0, 0) == 30 * 2 * 3 * 16 * 64);
    duet_kv_cache_destroy(c);
    be->destroy(be);
}

static void test_reserve_is_all_or_nothing(void)
{
    duet_backend_t *be = backend();
    duet_kv_cache_conf_t kc = {.n_layer = 2, .n_kv_head = 1, .head_dim = 8, .n_blocks = 5};
    duet_kv_cache_t *c;
    CHECK_EQ_INT(duet_kv_cache_create(&kc, be, &c), DUET_OK);
    duet_kv_seq_t a, b;
    duet_kv_seq_init(&a);
    duet_kv_seq_init(&b);
    CHECK_EQ_INT(duet_kv_seq_reserve(c, &a, 17), DUET_OK);   /* 2 blocks */
    CHECK_EQ_INT(a.n_blocks, 2);
    CHECK_EQ_INT(duet_kv_seq_reserve(c, &a, 32), DUET_OK);   /* still 2 */
    CHECK_EQ_INT(a.n_blocks, 2);
    CHECK_EQ_INT(duet_kv_cache_n_free(c), 3);
    CHECK_EQ_INT(duet_kv_seq_reserve(c, &b, 16 * 4), DUET_ERR_EXHAUSTED);
    CHECK_EQ_INT(b.n_blocks, 0);
    CHECK_EQ_INT(duet_kv_cache_n_free(c), 3);
    CHECK_EQ_INT(duet_kv_seq_reserve(c, &b, 16 * 3), DUET_OK);
    CHECK_EQ_INT(duet_kv_cache_n_free(c), 0);
    int32_t x;
    CHECK_EQ_INT(duet_kv_block_alloc(c, &x), DUET_ERR_EXHAUSTED);
    duet_kv_seq_cleanup(c, &a);
    duet_kv_seq_cleanup(c, &b);
    CHECK_EQ_INT(duet_kv_cache_n_free(c), 5);
    duet_kv_cache_destroy(c);
    be->destroy(be);
}

static void test_refcounts_and_generations(void)
{
    duet_backend_t *be = backend();
    duet_kv_cache_conf_t kc = {.n_layer = 1, .n_kv_head = 1, .head_dim = 8, .n_blocks = 2};
    duet_kv_cache_t *c;
    CHECK_EQ_INT(duet_kv_cache_create(&kc, be, &c), DUET_OK);
    int32_t b;
    CHECK_EQ_INT(duet_kv_block_alloc(c, &b), DUET_OK);
    uint32_t gen = duet_kv_block_generation(c, b);
    duet_kv_block_ref(c, b);
    CHECK_EQ_INT(duet_kv_block_refcount(c, b), 2);
    duet_kv_block_unref(c, b);
    CHECK_EQ_INT(duet_kv_cache_n_free(c), 1);   /* still held once */
    duet_kv_block_unref(c, b);
    CHECK_EQ_INT(duet_kv_cache_n_free(c), 2);
    duet_kv_block_unref(c, b);                  /* a double release is refused, not counted */
    CHECK_EQ_INT(duet_kv_cache_n_free(c), 2);
    int32_t again;
    CHECK_EQ_INT(duet_kv_block_alloc(c, &again), DUET_OK);
    CHECK_EQ_INT(again, b);                     /* LIFO: the warm block comes back first */
    CHECK(duet_kv_block_generation(c, again) != gen);
    duet_kv_block_unref(c, again);
    duet_kv_cache_destroy(c);
    be->destroy(be);
}

/* Two caches of the same shape, one with a host mirror (as a GPU instance has): what stage_out
 * copies from the pool is exactly the asked (block, layer) pairs or whole blocks, what stage_in
 * brings back is whole blocks, and the checksum sees the filled rows only. */
static void test_mirror_staging_and_checksum(void)
{
    duet_backend_t *be = backend();
    duet_kv_cache_conf_t kc = {.n_layer = 3, .n_kv_head = 2, .head_dim = 8, .n_blocks = 6};
    size_t bytes = duet_kv_cache_pool_bytes(&kc), block = bytes / 6, pair = block / 3;
    uint8_t *mirror = calloc(1, bytes);
    kc.host_mirror = mirror;
    duet_kv_cache_t *c;
    CHECK_EQ_INT(duet_kv_cache_create(&kc, be, &c), DUET_OK);
    CHECK(duet_kv_cache_transfer_view(c)->base == (uint16_t *)mirror);
    CHECK(duet_kv_cache_view(c)->base != (uint16_t *)mirror);
    uint8_t *pool = (uint8_t *)duet_kv_cache_view(c)->base;
    for (size_t i = 0; i < bytes; i++)
        pool[i] = (uint8_t)(i * 7 + 1);

    /* Layer 1 of blocks 4 and 2: those two pairs and nothing else. */
    int32_t blocks[2] = {4, 2};
    CHECK_EQ_INT(duet_kv_cache_stage_out(c, blocks, 2, 1), DUET_OK);
    size_t copied = 0;
    for (size_t i = 0; i < bytes; i++)
        copied += mirror[i] != 0;
    size_t expect = 0;
    for (size_t i = 4 * block + pair; i < 4 * block + 2 * pair; i++)
        expect += pool[i] != 0;
    for (size_t i = 2 * block + pair; i < 2 * block + 2 * pair; i++)
        expect += pool[i] != 0;
    CHECK_MSG(copied == expect, "stage_out of one layer copied %zu bytes, expected %zu", copied, expect);
    CHECK(memcmp(mirror + 4 * block + pair, pool + 4 * block + pair, pair) == 0);
    CHECK(memcmp(mirror + 2 * block + pair, pool + 2 * block + pair, pair) == 0);

    /* Every layer of the adjacent blocks 2 and 3 (one copy), then back into a cleared pool. */
    int32_t run[2] = {2, 3};
    CHECK_EQ_INT(duet_kv_cache_stage_out(c, run, 2, -1), DUET_OK);
    CHECK(memcmp(mirror + 2 * block, pool + 2 * block, 2 * block) == 0);
    uint8_t *saved = malloc(bytes);
    memcpy(saved, pool, bytes);
    memset(pool, 0, bytes);
    CHECK_EQ_INT(duet_kv_cache_stage_in(c, run, 2), DUET_OK);
    CHECK(memcmp(pool + 2 * block, saved + 2 * block, 2 * block) == 0);
    CHECK(pool[block - 1] == 0 && pool[4 * block] == 0);

    /* 20 positions: block 2 whole, 4 rows of block 3. Rows past the 20th do not count. */
    uint64_t sum, again, changed;
    CHECK_EQ_INT(duet_kv_cache_checksum(c, run, 20, &sum), DUET_OK);
    size_t row = 8 * sizeof(uint16_t), head = 16 * row;
    pool[3 * block + 5 * row] ^= 1;                 /* block 3, layer 0, K, head 0, row 5 */
    pool[3 * block + pair + head + 15 * row] ^= 1;  /* layer 1, K, head 1, row 15 */
    CHECK_EQ_INT(duet_kv_cache_checksum(c, run, 20, &again), DUET_OK);
    CHECK_MSG(again == sum, "a change past the filled rows changed the checksum");
    pool[3 * block + pair + head + 3 * row + 1] ^= 1;   /* layer 1, K, head 1, row 3: filled */
    CHECK_EQ_INT(duet_kv_cache_checksum(c, run, 20, &changed), DUET_OK);
    CHECK_MSG(changed != sum, "a one-bit change in a filled row left the checksum as it was");

    duet_kv_cache_destroy(c);
    free(saved);
    free(mirror);
    be->destroy(be);
}

int main(void)
{
    RUN_TEST(test_sizes_follow_layout);
    RUN_TEST(test_reserve_is_all_or_nothing);
    RUN_TEST(test_refcounts_and_generations);
    RUN_TEST(test_mirror_staging_and_checksum);
    return check_report();
}
