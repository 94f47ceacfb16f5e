/* lib/engine/kvcache.c — block allocator (a LIFO free list, so recently freed, cache-warm blocks
 * are reused first) and block tables over one paged KV pool. */
#include "kvcache.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"

struct duet_kv_cache {
    duet_kv_pool_view_t view;
    duet_kv_pool_view_t mirror;   /* base NULL: no host mirror */
    duet_backend_t *be;
    int owns_pool;
    int32_t *free_list;   /* [n_blocks], the first n_free entries are free block ids */
    int n_free;
    int32_t *refcount;    /* [n_blocks] */
    uint32_t *generation; /* [n_blocks] */
};

size_t duet_kv_cache_token_bytes(const duet_kv_cache_conf_t *conf)
{
    return (size_t)conf->n_layer * 2 * (size_t)conf->n_kv_head * (size_t)conf->head_dim * sizeof(uint16_t);
}

size_t duet_kv_cache_pool_bytes(const duet_kv_cache_conf_t *conf)
{
    return (size_t)conf->n_blocks * DUET_KV_BLOCK_TOKENS * duet_kv_cache_token_bytes(conf);
}

duet_status_t duet_kv_cache_create(const duet_kv_cache_conf_t *conf, duet_backend_t *be,
                                   duet_kv_cache_t **cache_p)
{
    if (conf->n_layer <= 0 || conf->n_kv_head <= 0 || conf->head_dim <= 0 || conf->n_blocks <= 0 ||
        conf->n_blocks > (1 << 30))
        return DUET_ERR_INVALID;
    duet_kv_cache_t *c = calloc(1, sizeof *c);
    if (!c)
        return DUET_ERR_NOMEM;
    c->be = be;
    c->view = (duet_kv_pool_view_t){
        .n_blocks = conf->n_blocks,
        .n_layer = conf->n_layer,
        .n_kv_head = conf->n_kv_head,
        .head_dim = conf->head_dim,
    };
    size_t bytes = duet_kv_cache_pool_bytes(conf);
    if (conf->external_base) {
        c->view.base = conf->external_base;
    } else {
        c->view.base = be->alloc(be, bytes);
        if (!c->view.base) {
            duet_log_error("kvcache: cannot allocate a %zu-byte pool of %d blocks", bytes, conf->n_blocks);
            goto err_free_cache;
        }
        c->owns_pool = 1;
    }
    c->mirror = c->view;
    c->mirror.base = conf->host_mirror;
    c->free_list = malloc((size_t)conf->n_blocks * sizeof *c->free_list);
    c->refcount = calloc((size_t)conf->n_blocks, sizeof *c->refcount);
    c->generation = calloc((size_t)conf->n_blocks, sizeof *c->generation);
    if (!c->free_list || !c->refcount || !c->generation)
        goto err_free_tables;
    /* Pushed in reverse so that block 0 is handed out first. */
    for (int i = 0; i < conf->n_blocks; i++)
        c->free_list[i] = conf->n_blocks - 1 - i;
    c->n_free = conf->n_blocks;
    *cache_p = c;
    return DUET_OK;

err_free_tables:
    free(c->free_list);
    free(c->refcount);
    free(c->generation);
    if (c->owns_pool)
        be->free(be, c->view.base);
err_free_cache:
    free(c);
    return DUET_ERR_NOMEM;
}

void duet_kv_cache_destroy(duet_kv_cache_t *c)
{
    if (!c)
        return;
    if (c->owns_pool)
        c->be->free(c->be, c->view.base);
    free(c->free_list);
    free(c->refcount);
    free(c->generation);
    free(c);
}

const duet_kv_pool_view_t *duet_kv_cache_view(const duet_kv_cache_t *c) { return &c->view; }
const duet_kv_pool_view_t *duet_kv_cache_transfer_view(const duet_kv_cache_t *c)
{
    return c->mirror.base ? &c->mirror : &c->view;
}

/* Bytes of one block across every layer (K and V), and of one (block, layer) pair of slices. */
static size_t block_bytes(const duet_kv_cache_t *c)
{
    return (size_t)c->view.n_layer * 2 * duet_kv_slice_elems(&c->view) * sizeof(uint16_t);
}

static size_t layer_pair_bytes(const duet_kv_cache_t *c)
{
    return 2 * duet_kv_slice_elems(&c->view) * sizeof(uint16_t);
}

/* Runs of consecutive block ids are one copy each: a sequence's blocks are often adjacent. */
static int run_length(const int32_t *blocks, int i, int n)
{
    int len = 1;
    while (i + len < n && blocks[i + len] == blocks[i] + len)
        len++;
    return len;
}

duet_status_t duet_kv_cache_stage_out(duet_kv_cache_t *c, const int32_t *blocks, int n, int layer)
{
    if (!c->mirror.base) {
        if (!c->be->host_memory && c->be->synchronize)
            c->be->synchronize(c->be);
        return duet_backend_status(c->be, NULL, 0);
    }
    uint8_t *dev = (uint8_t *)c->view.base, *host = (uint8_t *)c->mirror.base;
    size_t bb = block_bytes(c);
    for (int i = 0; i < n;) {
        if (layer < 0) {
            int len = run_length(blocks, i, n);
            size_t off = (size_t)blocks[i] * bb;
            c->be->download(c->be, host + off, dev + off, (size_t)len * bb);
            i += len;
        } else {
            size_t off = (size_t)blocks[i] * bb + (size_t)layer * layer_pair_bytes(c);
            c->be->download(c->be, host + off, dev + off, layer_pair_bytes(c));
            i++;
        }
    }
    return duet_backend_status(c->be, NULL, 0);
}

duet_status_t duet_kv_cache_stage_in(duet_kv_cache_t *c, const int32_t *blocks, int n)
{
    if (!c->mirror.base)
        return DUET_OK;
    uint8_t *dev = (uint8_t *)c->view.base, *host = (uint8_t *)c->mirror.base;
    size_t bb = block_bytes(c);
    for (int i = 0; i < n;) {
        int len = run_length(blocks, i, n);
        size_t off = (size_t)blocks[i] * bb;
        c->be->upload(c->be, dev + off, host + off, (size_t)len * bb);
        i += len;
    }
    return duet_backend_status(c->be, NULL, 0);
}

/* FNV-1a over 64-bit words (a byte tail is folded in on its own), with a shift so high bits
 * reach low ones; fast enough to run over a whole prompt's KV. */
static uint64_t checksum_update(uint64_t h, const uint8_t *p, size_t n)
{
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 1099511628211ull;
        h ^= h >> 29;
    }
    for (; i < n; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

duet_status_t duet_kv_cache_checksum(duet_kv_cache_t *c, const int32_t *blocks, int n_tokens,
                                     uint64_t *sum_p)
{
    const duet_kv_pool_view_t *v = &c->view;
    size_t bb = block_bytes(c);
    size_t head_bytes = (size_t)DUET_KV_BLOCK_TOKENS * (size_t)v->head_dim * sizeof(uint16_t);
    size_t row_bytes = (size_t)v->head_dim * sizeof(uint16_t);
    uint8_t *scratch = NULL;
    if (!c->be->host_memory && !(scratch = malloc(bb)))
        return DUET_ERR_NOMEM;
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i * DUET_KV_BLOCK_TOKENS < n_tokens; i++) {
        int rows = n_tokens - i * DUET_KV_BLOCK_TOKENS;
        if (rows > DUET_KV_BLOCK_TOKENS)
            rows = DUET_KV_BLOCK_TOKENS;
        const uint8_t *block = (const uint8_t *)v->base + (size_t)blocks[i] * bb;
        if (scratch) {
            c->be->download(c->be, scratch, block, bb);
            block = scratch;
        }
        /* Only the filled rows: the rest of a last block is whatever its previous owner left. */
        for (size_t slice = 0; slice < (size_t)v->n_layer * 2; slice++)
            for (int head = 0; head < v->n_kv_head; head++)
                h = checksum_update(h, block + (slice * (size_t)v->n_kv_head + (size_t)head) * head_bytes,
                                    (size_t)rows * row_bytes);
    }
    free(scratch);
    *sum_p = h;
    return duet_backend_status(c->be, NULL, 0);
}

int duet_kv_cache_n_free(const duet_kv_cache_t *c) { return c->n_free; }
int duet_kv_cache_n_blocks(const duet_kv_cache_t *c) { return c->view.n_blocks; }

duet_status_t duet_kv_block_alloc(duet_kv_cache_t *c, int32_t *block_p)
{
    if (c->n_free == 0)
        return DUET_ERR_EXHAUSTED;
    int32_t b = c->free_list[--c->n_free];
    c->refcount[b] = 1;
    c->generation[b]++;
    *block_p = b;
    return DUET_OK;
}

void duet_kv_block_ref(duet_kv_cache_t *c, int32_t block)
{
    c->refcount[block]++;
}

void duet_kv_block_unref(duet_kv_cache_t *c, int32_t block)
{
    if (c->refcount[block] <= 0) {
        /* A double free would hand one block to two sequences: refuse and say so. */
        duet_log_error("kvcache: block %d released more often than taken", block);
        return;
    }
    if (--c->refcount[block] == 0)
        c->free_list[c->n_free++] = block;
}

int duet_kv_block_refcount(const duet_kv_cache_t *c, int32_t block) { return c->refcount[block]; }
uint32_t duet_kv_block_generation(const duet_kv_cache_t *c, int32_t block) { return c->generation[block]; }

void duet_kv_seq_init(duet_kv_seq_t *seq)
{
    memset(seq, 0, sizeof *seq);
}

duet_status_t duet_kv_seq_reserve(duet_kv_cache_t *c, duet_kv_seq_t *seq, int n_tokens)
{
    int need = duet_kv_blocks_for(n_tokens);
    if (need <= seq->n_blocks)
        return DUET_OK;
    if (need - seq->n_blocks > c->n_free)
        return DUET_ERR_EXHAUSTED;
    if (need > seq->cap) {
        int cap = seq->cap ? seq->cap : 8;
        while (cap < need)
            cap *= 2;
        int32_t *blocks = realloc(seq->blocks, (size_t)cap * sizeof *blocks);
        if (!blocks)
            return DUET_ERR_NOMEM;
        seq->blocks = blocks;
        seq->cap = cap;
    }
    while (seq->n_blocks < need) {
        int32_t b = -1;
        duet_kv_block_alloc(c, &b);  /* cannot fail: n_free was checked above */
        seq->blocks[seq->n_blocks++] = b;
    }
    return DUET_OK;
}

void duet_kv_seq_release(duet_kv_cache_t *c, duet_kv_seq_t *seq)
{
    for (int i = 0; i < seq->n_blocks; i++)
        duet_kv_block_unref(c, seq->blocks[i]);
    seq->n_blocks = 0;
    seq->n_tokens = 0;
}

void duet_kv_seq_cleanup(duet_kv_cache_t *c, duet_kv_seq_t *seq)
{
    duet_kv_seq_release(c, seq);
    free(seq->blocks);
    duet_kv_seq_init(seq);
}
