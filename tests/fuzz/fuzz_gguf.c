/* tests/fuzz/fuzz_gguf.c — libFuzzer target for the GGUF reader: parses the input as an image and,
 * when it is accepted, reads every kv through every getter and touches every tensor's bytes. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"

/* Reports a broken invariant the sanitizers would not see on their own. */
static void invariant(int ok)
{
    if (!ok)
        __builtin_trap();
}

static void walk_kv(const duet_gguf_t *g, const duet_gguf_kv_t *kv, const uint8_t *base,
                    size_t size)
{
    /* Keys are NUL-free and bounded by the reader, so a C-string copy finds the same entry. */
    char *key = malloc((size_t)kv->key.len + 1);
    if (!key)
        return;
    memcpy(key, kv->key.ptr, (size_t)kv->key.len);
    key[kv->key.len] = '\0';
    invariant(duet_gguf_find_kv(g, key) == kv);
    invariant(kv->value >= base && kv->value <= base + size);

    uint32_t u;
    float f;
    int b;
    duet_gguf_str_t s;
    (void)duet_gguf_get_u32(g, key, &u);
    (void)duet_gguf_get_f32(g, key, &f);
    (void)duet_gguf_get_bool(g, key, &b);
    if (duet_gguf_get_str(g, key, &s) == DUET_OK && s.len > 0)
        invariant(((const volatile char *)s.ptr)[s.len - 1] == s.ptr[s.len - 1]);

    duet_gguf_str_t *strs;
    uint64_t n;
    if (duet_gguf_get_str_array(g, key, &strs, &n) == DUET_OK) {
        invariant(n == kv->n_elems);
        size_t sum = 0;
        for (uint64_t i = 0; i < n; i++)
            for (uint64_t j = 0; j < strs[i].len; j++)
                sum += (unsigned char)strs[i].ptr[j];
        invariant(sum != SIZE_MAX);
        free(strs);
    }
    for (uint32_t t = 0; t <= DUET_GGUF_FLOAT64 + 1; t++) {
        const void *data;
        if (duet_gguf_get_array(g, key, t, &data, &n) == DUET_OK && n > 0) {
            invariant(t == kv->elem_type);
            const volatile uint8_t *last = (const uint8_t *)data;
            (void)last[0];
        }
    }
    free(key);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    duet_gguf_t *g = NULL;
    char err[256];
    if (duet_gguf_open_memory(data, size, &g, err, sizeof err) != DUET_OK) {
        invariant(g == NULL && err[0] != '\0' && strchr(err, '\n') == NULL);
        return 0;
    }
    invariant(duet_gguf_file_size(g) == size);
    invariant(duet_gguf_version(g) == 2 || duet_gguf_version(g) == 3);
    for (int i = 0; i < duet_gguf_n_kv(g); i++)
        walk_kv(g, duet_gguf_kv_at(g, i), data, size);
    for (int i = 0; i < duet_gguf_n_tensors(g); i++) {
        const duet_gguf_tensor_t *t = duet_gguf_tensor_at(g, i);
        char name[256];
        if (t->name.len < sizeof name) {
            memcpy(name, t->name.ptr, (size_t)t->name.len);
            name[t->name.len] = '\0';
            invariant(duet_gguf_find_tensor(g, name) == t);
        }
        invariant(t->n_dims <= DUET_GGUF_MAX_DIMS && t->bytes > 0);
        const uint8_t *p = t->data;
        invariant(p >= data && t->bytes <= size && p - data <= (ptrdiff_t)(size - t->bytes));
        /* First and last byte: ASan flags either if the bounds check above were wrong. */
        const volatile uint8_t *v = p;
        (void)v[0];
        (void)v[t->bytes - 1];
    }
    duet_gguf_close(g);
    return 0;
}
