/* lib/engine/gguf_writer.c — the GGUF v3 writer: collects copied metadata and tensors, then writes
 * one little-endian file with 32-byte aligned tensor data (general.alignment left at its default). */
#include "gguf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dtype.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the GGUF writer stores values in host order; port it before building big-endian"
#endif

#define WRITE_ALIGN  32u
#define MAX_KEY_LEN  65536u

/* A growable byte buffer. */
typedef struct {
    uint8_t *p;
    size_t len, cap;
} buf_t;

typedef struct {
    char *key;
    buf_t value;       /* the encoded type and value, exactly as written after the key */
} wkv_t;

typedef struct {
    char *name;
    uint32_t type;
    uint32_t n_dims;
    int64_t ne[DUET_GGUF_MAX_DIMS];
    void *data;
    size_t bytes;
} wtensor_t;

struct duet_gguf_writer {
    wkv_t *kvs;            /* [n_kv] */
    size_t n_kv, cap_kv;
    wtensor_t *tensors;    /* [n_tensors] */
    size_t n_tensors, cap_tensors;
};

static duet_status_t buf_put(buf_t *b, const void *p, size_t n)
{
    if (n > SIZE_MAX - b->len)
        return DUET_ERR_NOMEM;
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n)
            cap = cap > SIZE_MAX / 2 ? b->len + n : cap * 2;
        uint8_t *np = realloc(b->p, cap);
        if (!np)
            return DUET_ERR_NOMEM;
        b->p = np;
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
    return DUET_OK;
}

static duet_status_t buf_u32(buf_t *b, uint32_t v)
{
    return buf_put(b, &v, sizeof v);
}

static duet_status_t buf_u64(buf_t *b, uint64_t v)
{
    return buf_put(b, &v, sizeof v);
}

static duet_status_t buf_str(buf_t *b, const char *s)
{
    size_t n = strlen(s);
    duet_status_t st = buf_u64(b, n);
    return st != DUET_OK ? st : buf_put(b, s, n);
}

/* Bytes of a fixed-size element type; 0 for STRING, ARRAY and unknown types. */
static size_t elem_size(uint32_t type)
{
    switch (type) {
    case DUET_GGUF_UINT8: case DUET_GGUF_INT8: case DUET_GGUF_BOOL:       return 1;
    case DUET_GGUF_UINT16: case DUET_GGUF_INT16:                          return 2;
    case DUET_GGUF_UINT32: case DUET_GGUF_INT32: case DUET_GGUF_FLOAT32:  return 4;
    case DUET_GGUF_UINT64: case DUET_GGUF_INT64: case DUET_GGUF_FLOAT64:  return 8;
    }
    return 0;
}

duet_status_t duet_gguf_writer_create(duet_gguf_writer_t **w_p)
{
    if (!w_p)
        return DUET_ERR_INVALID;
    duet_gguf_writer_t *w = calloc(1, sizeof *w);
    if (!w)
        return DUET_ERR_NOMEM;
    *w_p = w;
    return DUET_OK;
}

void duet_gguf_writer_destroy(duet_gguf_writer_t *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n_kv; i++) {
        free(w->kvs[i].key);
        free(w->kvs[i].value.p);
    }
    for (size_t i = 0; i < w->n_tensors; i++) {
        free(w->tensors[i].name);
        free(w->tensors[i].data);
    }
    free(w->kvs);
    free(w->tensors);
    free(w);
}

/* A key the reader will accept and that is not already taken. */
static duet_status_t check_key(const duet_gguf_writer_t *w, const char *key)
{
    if (!w || !key)
        return DUET_ERR_INVALID;
    size_t n = strlen(key);
    if (n == 0 || n > MAX_KEY_LEN)
        return DUET_ERR_INVALID;
    for (size_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->kvs[i].key, key) == 0)
            return DUET_ERR_INVALID;
    return DUET_OK;
}

/* Takes ownership of value (its buffer is freed on failure too). */
static duet_status_t add_kv(duet_gguf_writer_t *w, const char *key, buf_t *value)
{
    duet_status_t st;
    if (w->n_kv == w->cap_kv) {
        size_t cap = w->cap_kv ? w->cap_kv * 2 : 16;
        wkv_t *kvs = realloc(w->kvs, cap * sizeof *kvs);
        if (!kvs) {
            st = DUET_ERR_NOMEM;
            goto err_free_value;
        }
        w->kvs = kvs;
        w->cap_kv = cap;
    }
    char *k = strdup(key);
    if (!k) {
        st = DUET_ERR_NOMEM;
        goto err_free_value;
    }
    w->kvs[w->n_kv].key = k;
    w->kvs[w->n_kv].value = *value;
    w->n_kv++;
    return DUET_OK;

err_free_value:
    free(value->p);
    return st;
}

/* The writer always aligns to 32, so general.alignment may only restate that, as a u32. */
static int is_alignment_key(const char *key)
{
    return key && strcmp(key, "general.alignment") == 0;
}

/* Adds a scalar of a fixed-size type. */
static duet_status_t add_scalar(duet_gguf_writer_t *w, const char *key, uint32_t type,
                                const void *v, size_t size)
{
    if (is_alignment_key(key)) {
        uint32_t a = 0;
        if (type != DUET_GGUF_UINT32 || (memcpy(&a, v, sizeof a), a != WRITE_ALIGN))
            return DUET_ERR_INVALID;
    }
    duet_status_t st = check_key(w, key);
    if (st != DUET_OK)
        return st;
    buf_t b = {0};
    if ((st = buf_u32(&b, type)) != DUET_OK || (st = buf_put(&b, v, size)) != DUET_OK) {
        free(b.p);
        return st;
    }
    return add_kv(w, key, &b);
}

duet_status_t duet_gguf_writer_add_u32(duet_gguf_writer_t *w, const char *key, uint32_t v)
{
    return add_scalar(w, key, DUET_GGUF_UINT32, &v, sizeof v);
}

duet_status_t duet_gguf_writer_add_f32(duet_gguf_writer_t *w, const char *key, float v)
{
    return add_scalar(w, key, DUET_GGUF_FLOAT32, &v, sizeof v);
}

duet_status_t duet_gguf_writer_add_bool(duet_gguf_writer_t *w, const char *key, int v)
{
    uint8_t b = v != 0;
    return add_scalar(w, key, DUET_GGUF_BOOL, &b, sizeof b);
}

duet_status_t duet_gguf_writer_add_str(duet_gguf_writer_t *w, const char *key, const char *v)
{
    if (!v || is_alignment_key(key))
        return DUET_ERR_INVALID;
    duet_status_t st = check_key(w, key);
    if (st != DUET_OK)
        return st;
    buf_t b = {0};
    if ((st = buf_u32(&b, DUET_GGUF_STRING)) != DUET_OK || (st = buf_str(&b, v)) != DUET_OK) {
        free(b.p);
        return st;
    }
    return add_kv(w, key, &b);
}

duet_status_t duet_gguf_writer_add_str_array(duet_gguf_writer_t *w, const char *key,
                                             const char *const *v, uint64_t n)
{
    if ((n > 0 && !v) || is_alignment_key(key))
        return DUET_ERR_INVALID;
    for (uint64_t i = 0; i < n; i++)
        if (!v[i])
            return DUET_ERR_INVALID;
    duet_status_t st = check_key(w, key);
    if (st != DUET_OK)
        return st;
    buf_t b = {0};
    if ((st = buf_u32(&b, DUET_GGUF_ARRAY)) != DUET_OK ||
        (st = buf_u32(&b, DUET_GGUF_STRING)) != DUET_OK || (st = buf_u64(&b, n)) != DUET_OK)
        goto err_free_buf;
    for (uint64_t i = 0; i < n; i++)
        if ((st = buf_str(&b, v[i])) != DUET_OK)
            goto err_free_buf;
    return add_kv(w, key, &b);

err_free_buf:
    free(b.p);
    return st;
}

duet_status_t duet_gguf_writer_add_array(duet_gguf_writer_t *w, const char *key, uint32_t elem_type,
                                         const void *v, uint64_t n)
{
    size_t size = elem_size(elem_type);
    if (size == 0 || (n > 0 && !v) || is_alignment_key(key) || n > SIZE_MAX / size)
        return DUET_ERR_INVALID;
    duet_status_t st = check_key(w, key);
    if (st != DUET_OK)
        return st;
    buf_t b = {0};
    if ((st = buf_u32(&b, DUET_GGUF_ARRAY)) != DUET_OK || (st = buf_u32(&b, elem_type)) != DUET_OK ||
        (st = buf_u64(&b, n)) != DUET_OK || (st = buf_put(&b, v, (size_t)n * size)) != DUET_OK) {
        free(b.p);
        return st;
    }
    return add_kv(w, key, &b);
}

duet_status_t duet_gguf_writer_add_tensor(duet_gguf_writer_t *w, const char *name, uint32_t type,
                                          uint32_t n_dims, const int64_t *ne, const void *data,
                                          size_t bytes)
{
    if (!w || !name || !ne || !data || name[0] == '\0' || strlen(name) > MAX_KEY_LEN ||
        n_dims < 1 || n_dims > DUET_GGUF_MAX_DIMS)
        return DUET_ERR_INVALID;
    const duet_type_traits_t *tr = duet_type_traits(type);
    if (!tr)
        return DUET_ERR_INVALID;
    for (size_t i = 0; i < w->n_tensors; i++)
        if (strcmp(w->tensors[i].name, name) == 0)
            return DUET_ERR_INVALID;

    /* The expected size, with every product checked so a wild shape cannot wrap to a match. */
    wtensor_t t = {.type = type, .n_dims = n_dims, .ne = {1, 1, 1, 1}, .bytes = bytes};
    for (uint32_t d = 0; d < n_dims; d++) {
        if (ne[d] <= 0)
            return DUET_ERR_INVALID;
        t.ne[d] = ne[d];
    }
    if (t.ne[0] % tr->block_elems != 0)
        return DUET_ERR_INVALID;
    if ((uint64_t)(t.ne[0] / tr->block_elems) > SIZE_MAX / (size_t)tr->block_bytes)
        return DUET_ERR_INVALID;
    size_t want = duet_type_row_bytes(type, t.ne[0]);
    for (uint32_t d = 1; d < DUET_GGUF_MAX_DIMS; d++) {
        if ((uint64_t)t.ne[d] > SIZE_MAX / want)
            return DUET_ERR_INVALID;
        want *= (size_t)t.ne[d];
    }
    if (want != bytes)
        return DUET_ERR_INVALID;

    if (w->n_tensors == w->cap_tensors) {
        size_t cap = w->cap_tensors ? w->cap_tensors * 2 : 16;
        wtensor_t *ts = realloc(w->tensors, cap * sizeof *ts);
        if (!ts)
            return DUET_ERR_NOMEM;
        w->tensors = ts;
        w->cap_tensors = cap;
    }
    t.name = strdup(name);
    if (!t.name)
        return DUET_ERR_NOMEM;
    t.data = malloc(bytes);
    if (!t.data) {
        free(t.name);
        return DUET_ERR_NOMEM;
    }
    memcpy(t.data, data, bytes);
    w->tensors[w->n_tensors++] = t;
    return DUET_OK;
}

static size_t pad_to(size_t n)
{
    return (WRITE_ALIGN - n % WRITE_ALIGN) % WRITE_ALIGN;
}

/* Encodes everything before the data section: header, kvs, tensor infos, padding. */
static duet_status_t encode_head(const duet_gguf_writer_t *w, buf_t *b)
{
    static const uint8_t zeros[WRITE_ALIGN];
    duet_status_t st;
    if ((st = buf_put(b, "GGUF", 4)) != DUET_OK || (st = buf_u32(b, 3)) != DUET_OK ||
        (st = buf_u64(b, w->n_tensors)) != DUET_OK || (st = buf_u64(b, w->n_kv)) != DUET_OK)
        return st;
    for (size_t i = 0; i < w->n_kv; i++)
        if ((st = buf_str(b, w->kvs[i].key)) != DUET_OK ||
            (st = buf_put(b, w->kvs[i].value.p, w->kvs[i].value.len)) != DUET_OK)
            return st;
    uint64_t offset = 0;
    for (size_t i = 0; i < w->n_tensors; i++) {
        const wtensor_t *t = &w->tensors[i];
        if ((st = buf_str(b, t->name)) != DUET_OK || (st = buf_u32(b, t->n_dims)) != DUET_OK)
            return st;
        for (uint32_t d = 0; d < t->n_dims; d++)
            if ((st = buf_u64(b, (uint64_t)t->ne[d])) != DUET_OK)
                return st;
        if ((st = buf_u32(b, t->type)) != DUET_OK || (st = buf_u64(b, offset)) != DUET_OK)
            return st;
        offset += t->bytes + pad_to(t->bytes);
    }
    return buf_put(b, zeros, pad_to(b->len));
}

duet_status_t duet_gguf_writer_write(duet_gguf_writer_t *w, const char *path)
{
    static const uint8_t zeros[WRITE_ALIGN];
    if (!w || !path)
        return DUET_ERR_INVALID;
    buf_t head = {0};
    duet_status_t st = encode_head(w, &head);
    if (st != DUET_OK)
        goto err_free_head;
    FILE *f = fopen(path, "wb");
    if (!f) {
        st = DUET_ERR_IO;
        goto err_free_head;
    }
    int ok = fwrite(head.p, 1, head.len, f) == head.len;
    for (size_t i = 0; ok && i < w->n_tensors; i++) {
        const wtensor_t *t = &w->tensors[i];
        size_t pad = pad_to(t->bytes);
        ok = fwrite(t->data, 1, t->bytes, f) == t->bytes && fwrite(zeros, 1, pad, f) == pad;
    }
    if (fclose(f) != 0)
        ok = 0;
    if (!ok) {
        st = DUET_ERR_IO;
        goto err_remove_file;
    }
    free(head.p);
    return DUET_OK;

err_remove_file:
    unlink(path);  /* a partial file would only fail later, further from the cause */
err_free_head:
    free(head.p);
    return st;
}
