/* tests/unit/test_kvcache.c — the block allocator and block tables: all-or-nothing reservation,
 * reference counts, generations, and every block back in the pool at the end. */
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

int main(void)
{
    RUN_TEST(test_sizes_follow_layout);
    RUN_TEST(test_reserve_is_all_or_nothing);
    RUN_TEST(test_refcounts_and_generations);
    return check_report();
}
