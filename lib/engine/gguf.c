/* lib/engine/gguf.c — the GGUF v2/v3 reader: maps a file (or takes a caller-held image), checks
 * every count, length, offset and type against the image, and indexes keys and tensors by name. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "dtype.h"
#include "hash.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the GGUF reader reads little-endian values in place; port it before building big-endian"
#endif

#define MAX_KEY_LEN   65536u  /* a longer key is corruption, not a real model */
#define MAX_NAME_LEN  65536u
#define DEFAULT_ALIGN 32u

/* The smallest encodings, used to bound a count by the bytes left before trusting it:
 * a kv is a key length, a 1-byte key, a type and a 1-byte value; a tensor info is a name length,
 * a 1-byte name, n_dims (0), a type and an offset. */
#define MIN_KV_BYTES     (8u + 1u + 4u + 1u)
#define MIN_TENSOR_BYTES (8u + 1u + 4u + 4u + 8u)

/* Open-addressed name index: slots hold entry index + 1, 0 is empty. */
typedef struct {
    uint32_t *slots;
    size_t mask;       /* capacity - 1; capacity is a power of two, 0 when unallocated */
    size_t count;
} name_index_t;

struct duet_gguf {
    const uint8_t *image;
    size_t size;
    int mapped;                    /* munmap the image on close */
    uint32_t version;
    uint32_t alignment;
    size_t data_offset;            /* file offset of the data section */
    duet_gguf_kv_t *kvs;           /* [n_kv] */
    int n_kv;
    duet_gguf_tensor_t *tensors;   /* [n_tensors] */
    int n_tensors;
    name_index_t kv_index, tensor_index;
};

typedef struct {
    const uint8_t *base;
    size_t size;
    size_t pos;
    const char *path;   /* prefixes error messages when set */
    char *err;
    size_t err_len;
} parser_t;

/* ---- errors ---------------------------------------------------------------------------------- */

#define NO_OFFSET SIZE_MAX  /* for errors about the file as a whole (open, stat, map) */

/* Writes the one error line: "<path or gguf>: <problem> at offset N". */
static duet_status_t fail(parser_t *p, duet_status_t status, size_t offset, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static duet_status_t fail(parser_t *p, duet_status_t status, size_t offset, const char *fmt, ...)
{
    if (p->err && p->err_len > 0) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        const char *who = p->path ? p->path : "gguf";
        if (offset == NO_OFFSET)
            snprintf(p->err, p->err_len, "%s: %s", who, msg);
        else
            snprintf(p->err, p->err_len, "%s: %s at offset %zu", who, msg, offset);
    }
    return status;
}

/* A name from the file made safe to print on one line: escaped and cut short. */
typedef struct { char s[80]; } shown_t;

static shown_t show(duet_gguf_str_t str)
{
    shown_t out;
    size_t o = 0;
    for (uint64_t i = 0; i < str.len; i++) {
        unsigned char c = (unsigned char)str.ptr[i];
        if (o + 8 >= sizeof out.s) {
            memcpy(out.s + o, "...", 4);
            return out;
        }
        if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\')
            out.s[o++] = (char)c;
        else
            o += (size_t)snprintf(out.s + o, sizeof out.s - o, "\\x%02x", c);
    }
    out.s[o] = '\0';
    return out;
}

/* Names of ggml type ids this build cannot read, so the message says what the file holds. */
static const char *ggml_type_name(uint32_t type)
{
    static const char *const names[] = {
        [6] = "Q5_0", [7] = "Q5_1", [9] = "Q8_1", [10] = "Q2_K", [11] = "Q3_K", [12] = "Q4_K",
        [13] = "Q5_K", [14] = "Q6_K", [15] = "Q8_K", [16] = "IQ2_XXS", [17] = "IQ2_XS",
        [18] = "IQ3_XXS", [19] = "IQ1_S", [20] = "IQ4_NL", [21] = "IQ3_S", [22] = "IQ2_S",
        [23] = "IQ4_XS", [24] = "I8", [25] = "I16", [26] = "I32", [27] = "I64", [28] = "F64",
        [29] = "IQ1_M", [34] = "TQ1_0", [35] = "TQ2_0", [39] = "MXFP4",
    };
    return type < sizeof names / sizeof names[0] ? names[type] : NULL;
}

/* ---- primitive reads ------------------------------------------------------------------------- */

static size_t left(const parser_t *p)
{
    return p->size - p->pos;
}

/* what names the section for "truncated <what>". */
static duet_status_t need(parser_t *p, size_t n, const char *what)
{
    if (left(p) < n)
        return fail(p, DUET_ERR_FORMAT, p->pos, "truncated %s (need %zu bytes, %zu left)", what, n,
                    left(p));
    return DUET_OK;
}

static duet_status_t read_u32(parser_t *p, const char *what, uint32_t *out_p)
{
    duet_status_t st = need(p, 4, what);
    if (st != DUET_OK)
        return st;
    memcpy(out_p, p->base + p->pos, 4);
    p->pos += 4;
    return DUET_OK;
}

static duet_status_t read_u64(parser_t *p, const char *what, uint64_t *out_p)
{
    duet_status_t st = need(p, 8, what);
    if (st != DUET_OK)
        return st;
    memcpy(out_p, p->base + p->pos, 8);
    p->pos += 8;
    return DUET_OK;
}

/* A length-prefixed string; kind ("key", "string", "tensor name") names it in messages. */
static duet_status_t read_str(parser_t *p, const char *what, const char *kind,
                              duet_gguf_str_t *out_p)
{
    size_t at = p->pos;
    uint64_t len;
    duet_status_t st = read_u64(p, what, &len);
    if (st != DUET_OK)
        return st;
    if (len > left(p))
        return fail(p, DUET_ERR_FORMAT, at,
                    "%s length %llu runs past the end of the file (%zu bytes left)", kind,
                    (unsigned long long)len, left(p));
    out_p->ptr = (const char *)p->base + p->pos;
    out_p->len = len;
    p->pos += (size_t)len;
    return DUET_OK;
}

/* Keys and tensor names are looked up by C strings, so they must be non-empty, bounded and NUL-free. */
static duet_status_t check_name(parser_t *p, size_t at, const char *kind, duet_gguf_str_t s,
                                uint64_t max_len)
{
    if (s.len == 0)
        return fail(p, DUET_ERR_FORMAT, at, "invalid %s: empty", kind);
    if (s.len > max_len)
        return fail(p, DUET_ERR_FORMAT, at, "invalid %s: length %llu exceeds %llu", kind,
                    (unsigned long long)s.len, (unsigned long long)max_len);
    if (memchr(s.ptr, '\0', (size_t)s.len))
        return fail(p, DUET_ERR_FORMAT, at, "invalid %s '%s': contains a NUL byte", kind,
                    show(s).s);
    return DUET_OK;
}

/* ---- name index ------------------------------------------------------------------------------ */

/* name_of(entries, i) gives the name of entry i; kvs and tensors keep it at different places. */
typedef duet_gguf_str_t (*name_of_fn)(const void *entries, uint32_t i);

static duet_gguf_str_t kv_name(const void *entries, uint32_t i)
{
    return ((const duet_gguf_kv_t *)entries)[i].key;
}

static duet_gguf_str_t tensor_name(const void *entries, uint32_t i)
{
    return ((const duet_gguf_tensor_t *)entries)[i].name;
}

/* The entry index of name, or -1. */
static long index_find(const name_index_t *ix, const void *entries, name_of_fn name_of,
                       const char *name, size_t len)
{
    if (!ix->slots)
        return -1;
    for (size_t s = (size_t)duet_hash_bytes(name, len) & ix->mask;; s = (s + 1) & ix->mask) {
        uint32_t v = ix->slots[s];
        if (v == 0)
            return -1;
        duet_gguf_str_t e = name_of(entries, v - 1);
        if (e.len == len && memcmp(e.ptr, name, len) == 0)
            return (long)(v - 1);
    }
}

static void index_place(name_index_t *ix, duet_gguf_str_t name, uint32_t i)
{
    size_t s = (size_t)duet_hash_bytes(name.ptr, (size_t)name.len) & ix->mask;
    while (ix->slots[s] != 0)
        s = (s + 1) & ix->mask;
    ix->slots[s] = i + 1;
}

/* Adds entry i (already stored in entries), growing the table to stay at most half full. */
static duet_status_t index_add(name_index_t *ix, const void *entries, name_of_fn name_of,
                               uint32_t i)
{
    if ((ix->count + 1) * 2 > (ix->slots ? ix->mask + 1 : 0)) {
        size_t cap = ix->slots ? (ix->mask + 1) * 2 : 16;
        uint32_t *slots = calloc(cap, sizeof *slots);
        if (!slots)
            return DUET_ERR_NOMEM;
        name_index_t grown = {slots, cap - 1, ix->count};
        if (ix->slots)
            for (size_t s = 0; s <= ix->mask; s++)
                if (ix->slots[s])
                    index_place(&grown, name_of(entries, ix->slots[s] - 1), ix->slots[s] - 1);
        free(ix->slots);
        *ix = grown;
    }
    index_place(ix, name_of(entries, i), i);
    ix->count++;
    return DUET_OK;
}

/* ---- values ---------------------------------------------------------------------------------- */

/* Bytes of a fixed-size value type; 0 for STRING and ARRAY; -1 for an unknown type. */
static int value_size(uint32_t type)
{
    switch (type) {
    case DUET_GGUF_UINT8: case DUET_GGUF_INT8: case DUET_GGUF_BOOL:       return 1;
    case DUET_GGUF_UINT16: case DUET_GGUF_INT16:                          return 2;
    case DUET_GGUF_UINT32: case DUET_GGUF_INT32: case DUET_GGUF_FLOAT32:  return 4;
    case DUET_GGUF_UINT64: case DUET_GGUF_INT64: case DUET_GGUF_FLOAT64:  return 8;
    case DUET_GGUF_STRING: case DUET_GGUF_ARRAY:                          return 0;
    }
    return -1;
}

/* Parses the value of kv (whose key and type are set), filling elem_type, n_elems and value. */
static duet_status_t parse_value(parser_t *p, duet_gguf_kv_t *kv)
{
    size_t at = p->pos;
    int size = value_size(kv->type);
    duet_status_t st;
    if (size < 0)
        return fail(p, DUET_ERR_FORMAT, at - 4, "unknown value type %u for key '%s'", kv->type,
                    show(kv->key).s);
    kv->n_elems = 1;
    kv->value = p->base + p->pos;
    if (size > 0) {
        if ((st = need(p, (size_t)size, "kv")) != DUET_OK)
            return st;
        p->pos += (size_t)size;
        return DUET_OK;
    }
    if (kv->type == DUET_GGUF_STRING) {
        duet_gguf_str_t s;
        return read_str(p, "kv", "string", &s);
    }

    uint32_t elem_type;
    uint64_t n;
    if ((st = read_u32(p, "kv", &elem_type)) != DUET_OK)
        return st;
    int elem_size = value_size(elem_type);
    if (elem_type == DUET_GGUF_ARRAY)
        return fail(p, DUET_ERR_UNSUPPORTED, at, "nested arrays are not supported (key '%s')",
                    show(kv->key).s);
    if (elem_size < 0)
        return fail(p, DUET_ERR_FORMAT, at, "unknown value type %u for elements of key '%s'",
                    elem_type, show(kv->key).s);
    size_t n_at = p->pos;
    if ((st = read_u64(p, "kv", &n)) != DUET_OK)
        return st;
    /* A string element takes at least its 8-byte length. */
    size_t min_elem = elem_size > 0 ? (size_t)elem_size : 8;
    if (n > left(p) / min_elem)
        return fail(p, DUET_ERR_FORMAT, n_at,
                    "array length %llu of key '%s' is more than the file can hold (%zu bytes left)",
                    (unsigned long long)n, show(kv->key).s, left(p));
    kv->elem_type = elem_type;
    kv->n_elems = n;
    kv->value = p->base + p->pos;
    if (elem_size > 0) {
        p->pos += (size_t)n * (size_t)elem_size;
        return DUET_OK;
    }
    for (uint64_t i = 0; i < n; i++) {
        duet_gguf_str_t s;
        if ((st = read_str(p, "kv", "string", &s)) != DUET_OK)
            return st;
    }
    return DUET_OK;
}

/* The integer value of kv when it has an integer type; returns 0 otherwise. */
static int kv_integer(const duet_gguf_kv_t *kv, int64_t *s_p, uint64_t *u_p, int *is_signed_p)
{
    union { uint8_t u8; int8_t i8; uint16_t u16; int16_t i16; uint32_t u32; int32_t i32;
            uint64_t u64; int64_t i64; } v;
    int sz = value_size(kv->type);
    if (sz <= 0)
        return 0;
    memcpy(&v, kv->value, (size_t)sz);
    *is_signed_p = 1;
    switch (kv->type) {
    case DUET_GGUF_UINT8:  *is_signed_p = 0; *u_p = v.u8;  return 1;
    case DUET_GGUF_UINT16: *is_signed_p = 0; *u_p = v.u16; return 1;
    case DUET_GGUF_UINT32: *is_signed_p = 0; *u_p = v.u32; return 1;
    case DUET_GGUF_UINT64: *is_signed_p = 0; *u_p = v.u64; return 1;
    case DUET_GGUF_INT8:   *s_p = v.i8;  return 1;
    case DUET_GGUF_INT16:  *s_p = v.i16; return 1;
    case DUET_GGUF_INT32:  *s_p = v.i32; return 1;
    case DUET_GGUF_INT64:  *s_p = v.i64; return 1;
    }
    return 0;
}

/* kv's integer value if it lies in [0, UINT32_MAX]. */
static int kv_as_u32(const duet_gguf_kv_t *kv, uint32_t *out_p)
{
    int64_t s = 0;
    uint64_t u = 0;
    int is_signed;
    if (!kv_integer(kv, &s, &u, &is_signed))
        return 0;
    if (is_signed) {
        if (s < 0 || (uint64_t)s > UINT32_MAX)
            return 0;
        *out_p = (uint32_t)s;
    } else {
        if (u > UINT32_MAX)
            return 0;
        *out_p = (uint32_t)u;
    }
    return 1;
}

/* ---- parsing --------------------------------------------------------------------------------- */

static duet_status_t parse_header(parser_t *p, duet_gguf_t *g, uint64_t *n_tensors_p,
                                  uint64_t *n_kv_p)
{
    duet_status_t st;
    if (p->size == 0)
        return fail(p, DUET_ERR_FORMAT, 0, "empty file (0 bytes)");
    if (p->size < 4 || memcmp(p->base, "GGUF", 4) != 0) {
        if (p->size < 4 && memcmp(p->base, "GGUF", p->size) == 0)
            return fail(p, DUET_ERR_FORMAT, p->size, "truncated header (file is %zu bytes)",
                        p->size);
        char shown[20];
        size_t n = p->size < 4 ? p->size : 4;
        for (size_t i = 0; i < n; i++) {
            unsigned char c = p->base[i];
            shown[i] = (c >= 0x20 && c < 0x7f) ? (char)c : '.';
        }
        shown[n] = '\0';
        return fail(p, DUET_ERR_FORMAT, 0, "not a GGUF file (bad magic \"%s\", expected \"GGUF\")",
                    shown);
    }
    p->pos = 4;
    if ((st = read_u32(p, "header", &g->version)) != DUET_OK)
        return st;
    if (g->version != 2 && g->version != 3) {
        uint32_t swapped = __builtin_bswap32(g->version);
        if (swapped == 2 || swapped == 3)
            return fail(p, DUET_ERR_UNSUPPORTED, 4,
                        "unsupported GGUF version: big-endian files are not supported");
        return fail(p, DUET_ERR_UNSUPPORTED, 4, "unsupported GGUF version %u (duet reads 2 and 3)",
                    g->version);
    }
    if ((st = read_u64(p, "header", n_tensors_p)) != DUET_OK)
        return st;
    if ((st = read_u64(p, "header", n_kv_p)) != DUET_OK)
        return st;
    /* Bound both counts by the bytes left before anything is allocated for them. */
    if (*n_kv_p > left(p) / MIN_KV_BYTES || *n_kv_p > INT_MAX)
        return fail(p, DUET_ERR_FORMAT, 16, "n_kv %llu is more than the file can hold (%zu bytes)",
                    (unsigned long long)*n_kv_p, p->size);
    if (*n_tensors_p > left(p) / MIN_TENSOR_BYTES || *n_tensors_p > INT_MAX)
        return fail(p, DUET_ERR_FORMAT, 8,
                    "n_tensors %llu is more than the file can hold (%zu bytes)",
                    (unsigned long long)*n_tensors_p, p->size);
    return DUET_OK;
}

static duet_status_t parse_kvs(parser_t *p, duet_gguf_t *g, uint64_t n_kv)
{
    duet_status_t st;
    size_t cap = 0;
    for (uint64_t i = 0; i < n_kv; i++) {
        if ((size_t)g->n_kv == cap) {
            /* Grown as entries parse, so memory follows what the file holds, not its claim. */
            size_t ncap = cap ? cap * 2 : 16;
            duet_gguf_kv_t *kvs = realloc(g->kvs, ncap * sizeof *kvs);
            if (!kvs)
                return fail(p, DUET_ERR_NOMEM, p->pos, "out of memory for %zu kvs", ncap);
            g->kvs = kvs;
            cap = ncap;
        }
        duet_gguf_kv_t *kv = &g->kvs[g->n_kv];
        memset(kv, 0, sizeof *kv);
        size_t at = p->pos;
        if ((st = read_str(p, "kv", "key", &kv->key)) != DUET_OK)
            return st;
        if ((st = check_name(p, at, "key", kv->key, MAX_KEY_LEN)) != DUET_OK)
            return st;
        if (index_find(&g->kv_index, g->kvs, kv_name, kv->key.ptr, (size_t)kv->key.len) >= 0)
            return fail(p, DUET_ERR_FORMAT, at, "duplicate key '%s'", show(kv->key).s);
        if ((st = read_u32(p, "kv", &kv->type)) != DUET_OK)
            return st;
        if ((st = parse_value(p, kv)) != DUET_OK)
            return st;
        if (index_add(&g->kv_index, g->kvs, kv_name, (uint32_t)g->n_kv) != DUET_OK)
            return fail(p, DUET_ERR_NOMEM, at, "out of memory indexing keys");
        g->n_kv++;
    }
    return DUET_OK;
}

static duet_status_t parse_alignment(parser_t *p, duet_gguf_t *g)
{
    g->alignment = DEFAULT_ALIGN;
    long i = index_find(&g->kv_index, g->kvs, kv_name, "general.alignment", 17);
    if (i < 0)
        return DUET_OK;
    const duet_gguf_kv_t *kv = &g->kvs[i];
    size_t at = (size_t)((const uint8_t *)kv->key.ptr - p->base) - 8;
    uint32_t a;
    if (!kv_as_u32(kv, &a))
        return fail(p, DUET_ERR_FORMAT, at,
                    "invalid general.alignment (value type %u is not an unsigned 32-bit integer)",
                    kv->type);
    if (a == 0 || (a & (a - 1)) != 0)
        return fail(p, DUET_ERR_FORMAT, at,
                    "invalid general.alignment %u (must be a nonzero power of two)", a);
    g->alignment = a;
    return DUET_OK;
}

/* Parses one tensor info: name, shape and type, checked; the offset is checked later. */
static duet_status_t parse_tensor_info(parser_t *p, duet_gguf_t *g, duet_gguf_tensor_t *t)
{
    duet_status_t st;
    size_t at = p->pos;
    memset(t, 0, sizeof *t);
    if ((st = read_str(p, "tensor info", "tensor name", &t->name)) != DUET_OK)
        return st;
    if ((st = check_name(p, at, "tensor name", t->name, MAX_NAME_LEN)) != DUET_OK)
        return st;
    if (index_find(&g->tensor_index, g->tensors, tensor_name, t->name.ptr,
                   (size_t)t->name.len) >= 0)
        return fail(p, DUET_ERR_FORMAT, at, "duplicate tensor name '%s'", show(t->name).s);
    shown_t name = show(t->name);

    size_t dims_at = p->pos;
    if ((st = read_u32(p, "tensor info", &t->n_dims)) != DUET_OK)
        return st;
    if (t->n_dims > DUET_GGUF_MAX_DIMS)
        return fail(p, DUET_ERR_FORMAT, dims_at, "tensor '%s' has %u dimensions (at most %d)",
                    name.s, t->n_dims, DUET_GGUF_MAX_DIMS);
    int64_t elems = 1;
    for (uint32_t d = 0; d < DUET_GGUF_MAX_DIMS; d++) {
        uint64_t ne = 1;
        size_t ne_at = p->pos;
        if (d < t->n_dims && (st = read_u64(p, "tensor info", &ne)) != DUET_OK)
            return st;
        if (ne == 0 || ne > INT64_MAX)
            return fail(p, DUET_ERR_FORMAT, ne_at,
                        "invalid dimension %u of tensor '%s': %lld (must be > 0)", d, name.s,
                        (long long)ne);
        if ((int64_t)ne > INT64_MAX / elems)
            return fail(p, DUET_ERR_FORMAT, ne_at, "element count of tensor '%s' overflows",
                        name.s);
        elems *= (int64_t)ne;
        t->ne[d] = (int64_t)ne;
    }

    size_t type_at = p->pos;
    if ((st = read_u32(p, "tensor info", &t->type)) != DUET_OK)
        return st;
    const duet_type_traits_t *tr = duet_type_traits(t->type);
    if (!tr) {
        const char *known = ggml_type_name(t->type);
        if (known)
            return fail(p, DUET_ERR_UNSUPPORTED, type_at,
                        "unsupported tensor type %u (%s) of tensor '%s'", t->type, known, name.s);
        return fail(p, DUET_ERR_FORMAT, type_at, "unknown tensor type %u of tensor '%s'", t->type,
                    name.s);
    }
    if (t->ne[0] % tr->block_elems != 0)
        return fail(p, DUET_ERR_FORMAT, dims_at,
                    "row length %lld of tensor '%s' is not a multiple of the %s block size %d",
                    (long long)t->ne[0], name.s, tr->name, tr->block_elems);
    /* Row bytes and the total, each checked against size_t before multiplying. */
    uint64_t blocks = (uint64_t)(t->ne[0] / tr->block_elems);
    uint64_t rows = (uint64_t)(elems / t->ne[0]);
    if (blocks > SIZE_MAX / (uint64_t)tr->block_bytes ||
        blocks * (uint64_t)tr->block_bytes > SIZE_MAX / rows)
        return fail(p, DUET_ERR_FORMAT, dims_at, "element count of tensor '%s' overflows "
                    "(its size in bytes does not fit in memory)", name.s);
    size_t row_bytes = duet_type_row_bytes(t->type, t->ne[0]);
    t->bytes = row_bytes * (size_t)rows;

    size_t off_at = p->pos;
    if ((st = read_u64(p, "tensor info", &t->offset)) != DUET_OK)
        return st;
    if (t->offset % g->alignment != 0)
        return fail(p, DUET_ERR_FORMAT, off_at,
                    "misaligned tensor offset %llu of tensor '%s' (alignment %u)",
                    (unsigned long long)t->offset, name.s, g->alignment);
    return DUET_OK;
}

static duet_status_t parse_tensors(parser_t *p, duet_gguf_t *g, uint64_t n_tensors)
{
    duet_status_t st;
    size_t cap = 0;
    for (uint64_t i = 0; i < n_tensors; i++) {
        if ((size_t)g->n_tensors == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            duet_gguf_tensor_t *ts = realloc(g->tensors, ncap * sizeof *ts);
            if (!ts)
                return fail(p, DUET_ERR_NOMEM, p->pos, "out of memory for %zu tensors", ncap);
            g->tensors = ts;
            cap = ncap;
        }
        size_t at = p->pos;
        if ((st = parse_tensor_info(p, g, &g->tensors[g->n_tensors])) != DUET_OK)
            return st;
        if (index_add(&g->tensor_index, g->tensors, tensor_name, (uint32_t)g->n_tensors) !=
            DUET_OK)
            return fail(p, DUET_ERR_NOMEM, at, "out of memory indexing tensors");
        g->n_tensors++;
    }
    if (g->n_tensors == 0) {
        g->data_offset = p->pos;  /* no data section is needed: padding may be absent */
        return DUET_OK;
    }

    size_t pad = (g->alignment - p->pos % g->alignment) % g->alignment;
    if (pad > left(p))
        return fail(p, DUET_ERR_FORMAT, p->pos,
                    "truncated tensor data (the data section starts past the end of the file, "
                    "%zu bytes)", p->size);
    g->data_offset = p->pos + pad;
    size_t data_size = p->size - g->data_offset;
    for (int i = 0; i < g->n_tensors; i++) {
        duet_gguf_tensor_t *t = &g->tensors[i];
        if (t->offset >= data_size) {
            size_t at = t->offset >= SIZE_MAX - g->data_offset ? SIZE_MAX - 1
                                                               : g->data_offset + (size_t)t->offset;
            return fail(p, DUET_ERR_FORMAT, at,
                        "tensor data of '%s' is out of range of the file (offset %llu, data "
                        "section is %zu bytes)", show(t->name).s, (unsigned long long)t->offset,
                        data_size);
        }
        if (t->bytes > data_size - (size_t)t->offset)
            return fail(p, DUET_ERR_FORMAT, g->data_offset + (size_t)t->offset,
                        "truncated tensor data: tensor '%s' needs %zu bytes, the file has %zu",
                        show(t->name).s, t->bytes, data_size - (size_t)t->offset);
        t->data = p->base + g->data_offset + t->offset;
    }
    return DUET_OK;
}

static void free_parsed(duet_gguf_t *g)
{
    free(g->kv_index.slots);
    free(g->tensor_index.slots);
    free(g->kvs);
    free(g->tensors);
}

static duet_status_t parse(const void *image, size_t size, const char *path, int mapped,
                           duet_gguf_t **gguf_p, char *err, size_t err_len)
{
    parser_t p = {image, size, 0, path, err, err_len};
    duet_gguf_t *g = calloc(1, sizeof *g);
    if (!g)
        return fail(&p, DUET_ERR_NOMEM, 0, "out of memory");
    g->image = image;
    g->size = size;
    g->mapped = mapped;

    uint64_t n_tensors = 0, n_kv = 0;
    duet_status_t st = parse_header(&p, g, &n_tensors, &n_kv);
    if (st == DUET_OK)
        st = parse_kvs(&p, g, n_kv);
    if (st == DUET_OK)
        st = parse_alignment(&p, g);
    if (st == DUET_OK)
        st = parse_tensors(&p, g, n_tensors);
    if (st != DUET_OK) {
        free_parsed(g);
        free(g);
        return st;
    }
    *gguf_p = g;
    return DUET_OK;
}

/* ---- public ---------------------------------------------------------------------------------- */

duet_status_t duet_gguf_open_memory(const void *image, size_t size, duet_gguf_t **gguf_p,
                                    char *err, size_t err_len)
{
    if (!gguf_p || (!image && size > 0)) {
        if (err && err_len)
            snprintf(err, err_len, "gguf: invalid argument (no image or no output)");
        return DUET_ERR_INVALID;
    }
    static const uint8_t empty[1];
    return parse(image ? image : empty, size, NULL, 0, gguf_p, err, err_len);
}

duet_status_t duet_gguf_open(const char *path, duet_gguf_t **gguf_p, char *err, size_t err_len)
{
    if (!path || !gguf_p) {
        if (err && err_len)
            snprintf(err, err_len, "gguf: invalid argument (no path or no output)");
        return DUET_ERR_INVALID;
    }
    parser_t p = {NULL, 0, 0, path, err, err_len};
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(&p, DUET_ERR_IO, NO_OFFSET, "cannot open: %s", strerror(errno));
    struct stat sb;
    duet_status_t st;
    if (fstat(fd, &sb) != 0) {
        st = fail(&p, DUET_ERR_IO, NO_OFFSET, "cannot stat: %s", strerror(errno));
        goto err_close;
    }
    if (S_ISDIR(sb.st_mode)) {
        st = fail(&p, DUET_ERR_IO, NO_OFFSET, "is a directory, not a GGUF file");
        goto err_close;
    }
    if (!S_ISREG(sb.st_mode)) {
        st = fail(&p, DUET_ERR_IO, NO_OFFSET, "is not a regular file");
        goto err_close;
    }
    if (sb.st_size == 0) {
        st = fail(&p, DUET_ERR_FORMAT, 0, "empty file (0 bytes)");
        goto err_close;
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        st = fail(&p, DUET_ERR_UNSUPPORTED, NO_OFFSET, "file too large to map");
        goto err_close;
    }
    size_t size = (size_t)sb.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        st = fail(&p, DUET_ERR_IO, NO_OFFSET, "cannot map %zu bytes: %s", size, strerror(errno));
        goto err_close;
    }
    close(fd);  /* the mapping keeps the file */
    st = parse(map, size, path, 1, gguf_p, err, err_len);
    if (st != DUET_OK)
        munmap(map, size);
    return st;

err_close:
    close(fd);
    return st;
}

void duet_gguf_close(duet_gguf_t *gguf)
{
    if (!gguf)
        return;
    if (gguf->mapped)
        munmap((void *)gguf->image, gguf->size);
    free_parsed(gguf);
    free(gguf);
}

uint32_t duet_gguf_version(const duet_gguf_t *gguf)
{
    return gguf->version;
}

size_t duet_gguf_file_size(const duet_gguf_t *gguf)
{
    return gguf->size;
}

int duet_gguf_n_kv(const duet_gguf_t *gguf)
{
    return gguf->n_kv;
}

const duet_gguf_kv_t *duet_gguf_kv_at(const duet_gguf_t *gguf, int i)
{
    return i >= 0 && i < gguf->n_kv ? &gguf->kvs[i] : NULL;
}

const duet_gguf_kv_t *duet_gguf_find_kv(const duet_gguf_t *gguf, const char *key)
{
    if (!gguf || !key)
        return NULL;
    long i = index_find(&gguf->kv_index, gguf->kvs, kv_name, key, strlen(key));
    return i >= 0 ? &gguf->kvs[i] : NULL;
}

/* Finds key for a getter: DUET_ERR_INVALID for bad arguments, DUET_ERR_NOT_FOUND when absent. */
static duet_status_t lookup(const duet_gguf_t *gguf, const char *key, const void *out,
                            const duet_gguf_kv_t **kv_p)
{
    if (!gguf || !key || !out)
        return DUET_ERR_INVALID;
    const duet_gguf_kv_t *kv = duet_gguf_find_kv(gguf, key);
    if (!kv)
        return DUET_ERR_NOT_FOUND;
    *kv_p = kv;
    return DUET_OK;
}

duet_status_t duet_gguf_get_u32(const duet_gguf_t *gguf, const char *key, uint32_t *out_p)
{
    const duet_gguf_kv_t *kv;
    duet_status_t st = lookup(gguf, key, out_p, &kv);
    if (st != DUET_OK)
        return st;
    uint32_t v;
    if (!kv_as_u32(kv, &v))
        return DUET_ERR_FORMAT;
    *out_p = v;
    return DUET_OK;
}

duet_status_t duet_gguf_get_f32(const duet_gguf_t *gguf, const char *key, float *out_p)
{
    const duet_gguf_kv_t *kv;
    duet_status_t st = lookup(gguf, key, out_p, &kv);
    if (st != DUET_OK)
        return st;
    if (kv->type == DUET_GGUF_FLOAT32) {
        float f;
        memcpy(&f, kv->value, sizeof f);
        *out_p = f;
        return DUET_OK;
    }
    if (kv->type == DUET_GGUF_FLOAT64) {
        double d;
        memcpy(&d, kv->value, sizeof d);
        /* A finite double beyond float range does not fit; inf and nan carry over. */
        if (isfinite(d) && (d > FLT_MAX || d < -FLT_MAX))
            return DUET_ERR_FORMAT;
        *out_p = (float)d;
        return DUET_OK;
    }
    return DUET_ERR_FORMAT;
}

duet_status_t duet_gguf_get_bool(const duet_gguf_t *gguf, const char *key, int *out_p)
{
    const duet_gguf_kv_t *kv;
    duet_status_t st = lookup(gguf, key, out_p, &kv);
    if (st != DUET_OK)
        return st;
    if (kv->type != DUET_GGUF_BOOL)
        return DUET_ERR_FORMAT;
    *out_p = kv->value[0] != 0;
    return DUET_OK;
}

/* Reads a string already bounds-checked by the parser. */
static duet_gguf_str_t str_at(const uint8_t *at, const uint8_t **next_p)
{
    uint64_t len;
    memcpy(&len, at, sizeof len);
    duet_gguf_str_t s = {(const char *)at + 8, len};
    *next_p = at + 8 + len;
    return s;
}

duet_status_t duet_gguf_get_str(const duet_gguf_t *gguf, const char *key, duet_gguf_str_t *out_p)
{
    const duet_gguf_kv_t *kv;
    duet_status_t st = lookup(gguf, key, out_p, &kv);
    if (st != DUET_OK)
        return st;
    if (kv->type != DUET_GGUF_STRING)
        return DUET_ERR_FORMAT;
    const uint8_t *next;
    *out_p = str_at(kv->value, &next);
    return DUET_OK;
}

duet_status_t duet_gguf_get_str_array(const duet_gguf_t *gguf, const char *key,
                                      duet_gguf_str_t **strs_p, uint64_t *n_p)
{
    const duet_gguf_kv_t *kv;
    duet_status_t st = lookup(gguf, key, strs_p, &kv);
    if (st != DUET_OK)
        return st;
    if (!n_p)
        return DUET_ERR_INVALID;
    if (kv->type != DUET_GGUF_ARRAY || kv->elem_type != DUET_GGUF_STRING)
        return DUET_ERR_FORMAT;
    /* n_elems was bounded by the file size at parse time; one extra slot keeps n == 0 non-NULL. */
    duet_gguf_str_t *strs = malloc(((size_t)kv->n_elems + 1) * sizeof *strs);
    if (!strs)
        return DUET_ERR_NOMEM;
    const uint8_t *at = kv->value;
    for (uint64_t i = 0; i < kv->n_elems; i++)
        strs[i] = str_at(at, &at);
    *strs_p = strs;
    *n_p = kv->n_elems;
    return DUET_OK;
}

duet_status_t duet_gguf_get_array(const duet_gguf_t *gguf, const char *key, uint32_t elem_type,
                                  const void **data_p, uint64_t *n_p)
{
    const duet_gguf_kv_t *kv;
    duet_status_t st = lookup(gguf, key, data_p, &kv);
    if (st != DUET_OK)
        return st;
    if (!n_p || value_size(elem_type) <= 0)
        return DUET_ERR_INVALID;
    if (kv->type != DUET_GGUF_ARRAY || kv->elem_type != elem_type)
        return DUET_ERR_FORMAT;
    *data_p = kv->value;
    *n_p = kv->n_elems;
    return DUET_OK;
}

int duet_gguf_n_tensors(const duet_gguf_t *gguf)
{
    return gguf->n_tensors;
}

const duet_gguf_tensor_t *duet_gguf_tensor_at(const duet_gguf_t *gguf, int i)
{
    return i >= 0 && i < gguf->n_tensors ? &gguf->tensors[i] : NULL;
}

const duet_gguf_tensor_t *duet_gguf_find_tensor(const duet_gguf_t *gguf, const char *name)
{
    if (!gguf || !name)
        return NULL;
    long i = index_find(&gguf->tensor_index, gguf->tensors, tensor_name, name, strlen(name));
    return i >= 0 ? &gguf->tensors[i] : NULL;
}
