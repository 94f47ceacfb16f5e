/* tests/unit/test_gguf.c — the GGUF writer and reader: a round trip of every value and tensor type,
 * then valid images corrupted one field at a time, each refused with its own message. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "dtype.h"
#include "gguf.h"

/* ---- helpers --------------------------------------------------------------------------------- */

typedef struct {
    uint8_t *p;
    size_t len;
} image_t;

static char tmp_dir[64];

static void tmp_path(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", tmp_dir, name);
}

static image_t read_file(const char *path)
{
    image_t im = {0};
    FILE *f = fopen(path, "rb");
    if (!f)
        return im;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    im.p = malloc(n > 0 ? (size_t)n : 1);
    if (im.p && fread(im.p, 1, (size_t)n, f) == (size_t)n)
        im.len = (size_t)n;
    fclose(f);
    return im;
}

/* A copy in a buffer of exactly len bytes, so ASan catches any read past the image. */
static uint8_t *exact_copy(const uint8_t *p, size_t len)
{
    uint8_t *c = malloc(len ? len : 1);
    if (len)
        memcpy(c, p, len);
    return c;
}

static duet_status_t open_mem(const uint8_t *p, size_t len, char *err, size_t err_len)
{
    uint8_t *c = exact_copy(p, len);
    duet_gguf_t *g = NULL;
    err[0] = '\0';
    duet_status_t st = duet_gguf_open_memory(c, len, &g, err, err_len);
    duet_gguf_close(g);
    free(c);
    return st;
}

/* Opens a corrupted image and checks it is refused with status st (0: any error) and a message
 * holding each substring (NULL ends the list). */
#define EXPECT_FAIL(im, st, ...) expect_fail(__LINE__, (im), (st), (const char *[]){__VA_ARGS__, NULL})

static void expect_fail(int line, image_t im, duet_status_t st, const char **subs)
{
    char err[512];
    duet_status_t got = open_mem(im.p, im.len, err, sizeof err);
    CHECK_MSG(got != DUET_OK, "line %d: corrupted image accepted", line);
    if (st != DUET_OK)
        CHECK_MSG(got == st, "line %d: status %d, want %d (%s)", line, got, st, err);
    for (const char **s = subs; *s; s++)
        CHECK_MSG(strstr(err, *s) != NULL, "line %d: \"%s\" does not contain \"%s\"", line, err, *s);
    CHECK_MSG(strchr(err, '\n') == NULL, "line %d: error is not one line", line);
}

static image_t dup_image(image_t im)
{
    image_t c = {exact_copy(im.p, im.len), im.len};
    return c;
}

static void put_u32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}

static void put_u64(uint8_t *p, uint64_t v)
{
    memcpy(p, &v, 8);
}

/* Position of the bytes of a key or tensor name (just after its u64 length). */
static size_t find_name(image_t im, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 8; i + n <= im.len; i++) {
        uint64_t len;
        memcpy(&len, im.p + i - 8, 8);
        if (len == n && memcmp(im.p + i, name, n) == 0)
            return i;
    }
    fprintf(stderr, "test bug: name %s not in image\n", name);
    abort();
}

/* Offsets of the fields of tensor info `name`. */
typedef struct {
    size_t len, name, n_dims, ne, type, offset;
} tinfo_t;

static tinfo_t find_tensor_info(image_t im, const char *name)
{
    tinfo_t t;
    t.name = find_name(im, name);
    t.len = t.name - 8;
    t.n_dims = t.name + strlen(name);
    uint32_t n_dims;
    memcpy(&n_dims, im.p + t.n_dims, 4);
    t.ne = t.n_dims + 4;
    t.type = t.ne + 8 * n_dims;
    t.offset = t.type + 4;
    return t;
}

/* ---- the small valid image the corruption tests start from ----------------------------------- */

/* Keys: "a.u32" (u32 7), "b.str" (string "hello"), "c.arr" (i32[3]), "d.str" (string "xy"),
 * "general.alignment" (u32 32), "e.strs" (string[2]).
 * Tensors: "w1" Q8_0 [64, 2], "w2" F32 [3], "w3" F16 [8, 2]; w3 is last and fills whole
 * 32-byte units, so the file has no trailing padding and every shorter prefix is broken. */
static image_t small_image(void)
{
    char path[128];
    tmp_path(path, sizeof path, "small.gguf");
    duet_gguf_writer_t *w;
    CHECK_EQ_INT(duet_gguf_writer_create(&w), DUET_OK);
    int32_t arr[3] = {1, -2, 3};
    const char *strs[2] = {"x", "yz"};
    CHECK_EQ_INT(duet_gguf_writer_add_u32(w, "a.u32", 7), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_str(w, "b.str", "hello"), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_array(w, "c.arr", DUET_GGUF_INT32, arr, 3), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_str(w, "d.str", "xy"), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_u32(w, "general.alignment", 32), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_str_array(w, "e.strs", strs, 2), DUET_OK);
    uint8_t q8[4 * 34];
    for (size_t i = 0; i < sizeof q8; i++)
        q8[i] = (uint8_t)i;
    float f32[3] = {1, 2, 3};
    uint16_t f16[16];
    for (int i = 0; i < 16; i++)
        f16[i] = (uint16_t)(0x3c00 + i);
    CHECK_EQ_INT(duet_gguf_writer_add_tensor(w, "w1", DUET_TYPE_Q8_0, 2, (int64_t[]){64, 2}, q8,
                                             sizeof q8), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_tensor(w, "w2", DUET_TYPE_F32, 1, (int64_t[]){3}, f32,
                                             sizeof f32), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_tensor(w, "w3", DUET_TYPE_F16, 2, (int64_t[]){8, 2}, f16,
                                             sizeof f16), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_write(w, path), DUET_OK);
    duet_gguf_writer_destroy(w);
    image_t im = read_file(path);
    CHECK(im.len > 0);
    unlink(path);
    return im;
}

/* ---- round trip ------------------------------------------------------------------------------ */

static void fill(void *p, size_t n, unsigned seed)
{
    uint8_t *b = p;
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(seed * 31 + i * 7);
}

static void test_roundtrip(void)
{
    char path[128];
    tmp_path(path, sizeof path, "roundtrip.gguf");
    duet_gguf_writer_t *w;
    CHECK_EQ_INT(duet_gguf_writer_create(&w), DUET_OK);

    uint8_t u8[3] = {1, 2, 255};
    int8_t i8[2] = {-128, 127};
    uint16_t u16[2] = {0, 65535};
    int16_t i16[3] = {-1, 0, 1};
    uint32_t u32[2] = {0, 4000000000u};
    int32_t i32[4] = {-5, 6, -7, 8};
    float f32[2] = {1.5f, -2.25f};
    uint8_t bools[3] = {1, 0, 1};
    uint64_t u64[1] = {0x123456789abcdef0ull};
    int64_t i64[2] = {-1, 1ll << 40};
    double f64[2] = {3.25, -1e300};
    const char *vocab[4] = {"a", "", "<|end|>", "\xc4\xa0the"};

    CHECK_EQ_INT(duet_gguf_writer_add_str(w, "general.architecture", "llama"), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_u32(w, "llama.block_count", 30), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_f32(w, "llama.rope.freq_base", 10000.5f), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", 1), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_bool(w, "b.false", 0), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_str(w, "s.empty", ""), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_str_array(w, "tokenizer.ggml.tokens", vocab, 4), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_str_array(w, "strs.empty", NULL, 0), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_array(w, "arr.u8", DUET_GGUF_UINT8, u8, 3), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_array(w, "arr.i8", DUET_GGUF_INT8, i8, 2), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_array(w, "arr.u16", DUET_GGUF_UINT16, u16, 2), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_array(w, "arr.i16", DUET_GGUF_INT16, i16, 3), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_array(w, "arr.u32", DUET_GGUF_UINT32, u32, 2), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_array(w, "arr.i32", DUET_GGUF_INT32, i32, 4), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_array(w, "arr.f32", DUET_GGUF_FLOAT32, f32, 2), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_array(w, "arr.bool", DUET_GGUF_BOOL, bools, 3), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_array(w, "arr.u64", DUET_GGUF_UINT64, u64, 1), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_array(w, "arr.i64", DUET_GGUF_INT64, i64, 2), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_array(w, "arr.f64", DUET_GGUF_FLOAT64, f64, 2), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_array(w, "arr.empty", DUET_GGUF_FLOAT32, NULL, 0), DUET_OK);
    const int n_kv = 20;

    /* Odd shapes: rows of block types are whole blocks, everything else is odd. */
    struct {
        const char *name;
        uint32_t type, n_dims;
        int64_t ne[4];
        size_t bytes;
    } ts[] = {
        {"t.f32", DUET_TYPE_F32, 2, {3, 5, 1, 1}, 3 * 5 * 4},
        {"t.f16", DUET_TYPE_F16, 1, {7, 1, 1, 1}, 7 * 2},
        {"t.bf16", DUET_TYPE_BF16, 3, {5, 3, 3, 1}, 5 * 3 * 3 * 2},
        {"t.q8_0", DUET_TYPE_Q8_0, 2, {96, 3, 1, 1}, 3 * 3 * 34},
        {"t.q4_0", DUET_TYPE_Q4_0, 3, {32, 1, 3, 1}, 3 * 18},
        {"t.q4_1", DUET_TYPE_Q4_1, 4, {64, 3, 1, 5}, 2 * 3 * 5 * 20},
    };
    const int n_t = (int)(sizeof ts / sizeof ts[0]);
    uint8_t *datas[6];
    for (int i = 0; i < n_t; i++) {
        datas[i] = malloc(ts[i].bytes);
        fill(datas[i], ts[i].bytes, (unsigned)i);
        CHECK_EQ_INT(duet_gguf_writer_add_tensor(w, ts[i].name, ts[i].type, ts[i].n_dims, ts[i].ne,
                                                 datas[i], ts[i].bytes), DUET_OK);
    }
    CHECK_EQ_INT(duet_gguf_writer_write(w, path), DUET_OK);
    duet_gguf_writer_destroy(w);

    char err[256];
    duet_gguf_t *g = NULL;
    CHECK_EQ_INT(duet_gguf_open(path, &g, err, sizeof err), DUET_OK);
    if (!g) {
        fprintf(stderr, "open: %s\n", err);
        return;
    }
    CHECK_EQ_INT(duet_gguf_version(g), 3);
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && (size_t)sb.st_size == duet_gguf_file_size(g));
    CHECK_EQ_INT(duet_gguf_n_kv(g), n_kv);
    CHECK_EQ_INT(duet_gguf_n_tensors(g), n_t);
    CHECK(duet_gguf_kv_at(g, -1) == NULL && duet_gguf_kv_at(g, n_kv) == NULL);
    CHECK(duet_gguf_tensor_at(g, -1) == NULL && duet_gguf_tensor_at(g, n_t) == NULL);
    const duet_gguf_kv_t *kv0 = duet_gguf_kv_at(g, 0);
    CHECK(kv0 && kv0->key.len == 20 && memcmp(kv0->key.ptr, "general.architecture", 20) == 0);
    CHECK(duet_gguf_find_kv(g, "general.architecture") == kv0);
    CHECK(duet_gguf_find_kv(g, "general.arch") == NULL);

    duet_gguf_str_t s;
    CHECK_EQ_INT(duet_gguf_get_str(g, "general.architecture", &s), DUET_OK);
    CHECK(s.len == 5 && memcmp(s.ptr, "llama", 5) == 0);
    CHECK_EQ_INT(duet_gguf_get_str(g, "s.empty", &s), DUET_OK);
    CHECK_EQ_INT(s.len, 0);
    uint32_t u = 0;
    CHECK_EQ_INT(duet_gguf_get_u32(g, "llama.block_count", &u), DUET_OK);
    CHECK_EQ_INT(u, 30);
    float f = 0;
    CHECK_EQ_INT(duet_gguf_get_f32(g, "llama.rope.freq_base", &f), DUET_OK);
    CHECK(f == 10000.5f);
    int b = -1;
    CHECK_EQ_INT(duet_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &b), DUET_OK);
    CHECK_EQ_INT(b, 1);
    CHECK_EQ_INT(duet_gguf_get_bool(g, "b.false", &b), DUET_OK);
    CHECK_EQ_INT(b, 0);

    /* Wrong types and missing keys leave outputs alone. */
    u = 99;
    CHECK_EQ_INT(duet_gguf_get_u32(g, "llama.rope.freq_base", &u), DUET_ERR_FORMAT);
    CHECK_EQ_INT(duet_gguf_get_u32(g, "general.architecture", &u), DUET_ERR_FORMAT);
    CHECK_EQ_INT(duet_gguf_get_u32(g, "arr.u32", &u), DUET_ERR_FORMAT);
    CHECK_EQ_INT(duet_gguf_get_u32(g, "no.such.key", &u), DUET_ERR_NOT_FOUND);
    CHECK_EQ_INT(u, 99);
    CHECK_EQ_INT(duet_gguf_get_f32(g, "llama.block_count", &f), DUET_ERR_FORMAT);
    CHECK_EQ_INT(duet_gguf_get_bool(g, "llama.block_count", &b), DUET_ERR_FORMAT);
    CHECK_EQ_INT(duet_gguf_get_str(g, "tokenizer.ggml.tokens", &s), DUET_ERR_FORMAT);
    CHECK_EQ_INT(duet_gguf_get_str(g, NULL, &s), DUET_ERR_INVALID);

    duet_gguf_str_t *strs = NULL;
    uint64_t n = 0;
    CHECK_EQ_INT(duet_gguf_get_str_array(g, "tokenizer.ggml.tokens", &strs, &n), DUET_OK);
    CHECK_EQ_INT(n, 4);
    for (uint64_t i = 0; strs && i < n && i < 4; i++)
        CHECK(strs[i].len == strlen(vocab[i]) && memcmp(strs[i].ptr, vocab[i], strs[i].len) == 0);
    free(strs);
    strs = NULL;
    CHECK_EQ_INT(duet_gguf_get_str_array(g, "strs.empty", &strs, &n), DUET_OK);
    CHECK_EQ_INT(n, 0);
    free(strs);
    CHECK_EQ_INT(duet_gguf_get_str_array(g, "arr.u8", &strs, &n), DUET_ERR_FORMAT);
    CHECK_EQ_INT(duet_gguf_get_str_array(g, "nope", &strs, &n), DUET_ERR_NOT_FOUND);

    const void *data = NULL;
    struct {
        const char *key;
        uint32_t type;
        const void *v;
        uint64_t n;
        size_t size;
    } arrs[] = {
        {"arr.u8", DUET_GGUF_UINT8, u8, 3, 1},       {"arr.i8", DUET_GGUF_INT8, i8, 2, 1},
        {"arr.u16", DUET_GGUF_UINT16, u16, 2, 2},    {"arr.i16", DUET_GGUF_INT16, i16, 3, 2},
        {"arr.u32", DUET_GGUF_UINT32, u32, 2, 4},    {"arr.i32", DUET_GGUF_INT32, i32, 4, 4},
        {"arr.f32", DUET_GGUF_FLOAT32, f32, 2, 4},   {"arr.bool", DUET_GGUF_BOOL, bools, 3, 1},
        {"arr.u64", DUET_GGUF_UINT64, u64, 1, 8},    {"arr.i64", DUET_GGUF_INT64, i64, 2, 8},
        {"arr.f64", DUET_GGUF_FLOAT64, f64, 2, 8},   {"arr.empty", DUET_GGUF_FLOAT32, NULL, 0, 4},
    };
    for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) {
        data = NULL;
        n = 99;
        CHECK_EQ_INT(duet_gguf_get_array(g, arrs[i].key, arrs[i].type, &data, &n), DUET_OK);
        CHECK_EQ_INT(n, arrs[i].n);
        if (arrs[i].n)
            CHECK_MSG(data && memcmp(data, arrs[i].v, arrs[i].n * arrs[i].size) == 0, "%s",
                      arrs[i].key);
        const duet_gguf_kv_t *kv = duet_gguf_find_kv(g, arrs[i].key);
        CHECK(kv && kv->type == DUET_GGUF_ARRAY && kv->elem_type == arrs[i].type &&
              kv->n_elems == arrs[i].n);
    }
    CHECK_EQ_INT(duet_gguf_get_array(g, "arr.u8", DUET_GGUF_INT8, &data, &n), DUET_ERR_FORMAT);
    CHECK_EQ_INT(duet_gguf_get_array(g, "llama.block_count", DUET_GGUF_UINT32, &data, &n),
                 DUET_ERR_FORMAT);
    CHECK_EQ_INT(duet_gguf_get_array(g, "tokenizer.ggml.tokens", DUET_GGUF_STRING, &data, &n),
                 DUET_ERR_INVALID);

    for (int i = 0; i < n_t; i++) {
        const duet_gguf_tensor_t *t = duet_gguf_find_tensor(g, ts[i].name);
        CHECK_MSG(t == duet_gguf_tensor_at(g, i), "%s", ts[i].name);
        if (!t)
            continue;
        CHECK_EQ_INT(t->type, ts[i].type);
        CHECK_EQ_INT(t->n_dims, ts[i].n_dims);
        for (int d = 0; d < 4; d++)
            CHECK_EQ_INT(t->ne[d], ts[i].ne[d]);
        CHECK_EQ_INT(t->bytes, ts[i].bytes);
        CHECK_EQ_INT(t->offset % 32, 0);
        CHECK_EQ_INT(((uintptr_t)t->data) % 32, 0);  /* the mapping is page aligned */
        CHECK(memcmp(t->data, datas[i], ts[i].bytes) == 0);
        free(datas[i]);
    }
    CHECK(duet_gguf_find_tensor(g, "t.f3") == NULL);
    CHECK(duet_gguf_find_tensor(g, "") == NULL);
    duet_gguf_close(g);
    unlink(path);
}

/* A hand-built image, for fields the writer never produces. */
typedef struct {
    uint8_t *p;
    size_t len, cap;
} raw_t;

static void raw_bytes(raw_t *r, const void *p, size_t n)
{
    if (r->len + n > r->cap) {
        r->cap = (r->len + n) * 2;
        r->p = realloc(r->p, r->cap);
    }
    memcpy(r->p + r->len, p, n);
    r->len += n;
}

static void raw_u32(raw_t *r, uint32_t v)
{
    raw_bytes(r, &v, 4);
}

static void raw_u64(raw_t *r, uint64_t v)
{
    raw_bytes(r, &v, 8);
}

static void raw_str(raw_t *r, const char *s)
{
    raw_u64(r, strlen(s));
    raw_bytes(r, s, strlen(s));
}

static void raw_header(raw_t *r, uint32_t version, uint64_t n_tensors, uint64_t n_kv)
{
    raw_bytes(r, "GGUF", 4);
    raw_u32(r, version);
    raw_u64(r, n_tensors);
    raw_u64(r, n_kv);
}

/* A key and a scalar of type with the given bytes. */
static void raw_kv(raw_t *r, const char *key, uint32_t type, const void *v, size_t n)
{
    raw_str(r, key);
    raw_u32(r, type);
    raw_bytes(r, v, n);
}

/* Integers of every width through get_u32, and f64 through get_f32, from a hand-built image. */
static void test_getter_widths(void)
{
    raw_t r = {0};
    uint8_t u8 = 200, bool2 = 2;
    int8_t i8 = -1;
    uint16_t u16 = 60000;
    int16_t i16 = 300;
    int32_t i32 = -7;
    uint64_t u64big = 1ull << 33, u64 = 12;
    int64_t i64 = 4000000000ll;
    double f64 = 0.5, f64big = 1e300;
    raw_header(&r, 2, 0, 11);  /* v2 reads like v3 */
    raw_kv(&r, "u8", DUET_GGUF_UINT8, &u8, 1);
    raw_kv(&r, "i8", DUET_GGUF_INT8, &i8, 1);
    raw_kv(&r, "u16", DUET_GGUF_UINT16, &u16, 2);
    raw_kv(&r, "i16", DUET_GGUF_INT16, &i16, 2);
    raw_kv(&r, "i32", DUET_GGUF_INT32, &i32, 4);
    raw_kv(&r, "u64big", DUET_GGUF_UINT64, &u64big, 8);
    raw_kv(&r, "u64", DUET_GGUF_UINT64, &u64, 8);
    raw_kv(&r, "i64", DUET_GGUF_INT64, &i64, 8);
    raw_kv(&r, "f64", DUET_GGUF_FLOAT64, &f64, 8);
    raw_kv(&r, "f64big", DUET_GGUF_FLOAT64, &f64big, 8);
    raw_kv(&r, "bool2", DUET_GGUF_BOOL, &bool2, 1);
    uint8_t *c = exact_copy(r.p, r.len);
    char err[256];
    duet_gguf_t *g = NULL;
    CHECK_EQ_INT(duet_gguf_open_memory(c, r.len, &g, err, sizeof err), DUET_OK);
    free(r.p);
    if (!g) {
        fprintf(stderr, "open: %s\n", err);
        free(c);
        return;
    }
    CHECK_EQ_INT(duet_gguf_version(g), 2);
    CHECK_EQ_INT(duet_gguf_n_tensors(g), 0);
    uint32_t u = 0;
    CHECK(duet_gguf_get_u32(g, "u8", &u) == DUET_OK && u == 200);
    CHECK_EQ_INT(duet_gguf_get_u32(g, "i8", &u), DUET_ERR_FORMAT);
    CHECK(duet_gguf_get_u32(g, "u16", &u) == DUET_OK && u == 60000);
    CHECK(duet_gguf_get_u32(g, "i16", &u) == DUET_OK && u == 300);
    CHECK_EQ_INT(duet_gguf_get_u32(g, "i32", &u), DUET_ERR_FORMAT);
    CHECK_EQ_INT(duet_gguf_get_u32(g, "u64big", &u), DUET_ERR_FORMAT);
    CHECK(duet_gguf_get_u32(g, "u64", &u) == DUET_OK && u == 12);
    CHECK(duet_gguf_get_u32(g, "i64", &u) == DUET_OK && u == 4000000000u);
    CHECK_EQ_INT(duet_gguf_get_u32(g, "bool2", &u), DUET_ERR_FORMAT);
    float f = 0;
    CHECK(duet_gguf_get_f32(g, "f64", &f) == DUET_OK && f == 0.5f);
    CHECK_EQ_INT(duet_gguf_get_f32(g, "f64big", &f), DUET_ERR_FORMAT);
    CHECK_EQ_INT(duet_gguf_get_f32(g, "u8", &f), DUET_ERR_FORMAT);
    int b = 0;
    CHECK(duet_gguf_get_bool(g, "bool2", &b) == DUET_OK && b == 1);
    duet_gguf_close(g);
    free(c);
}

/* Smallest and boundary images: the header alone, a 0-dim tensor, keys at the length limit. */
static void test_edge_images(void)
{
    char err[512];
    raw_t r = {0};
    raw_header(&r, 3, 0, 0);
    uint8_t *c = exact_copy(r.p, r.len);
    duet_gguf_t *g = NULL;
    CHECK_EQ_INT(duet_gguf_open_memory(c, r.len, &g, err, sizeof err), DUET_OK);
    if (g) {
        CHECK(duet_gguf_n_kv(g) == 0 && duet_gguf_n_tensors(g) == 0);
        CHECK(duet_gguf_find_kv(g, "x") == NULL && duet_gguf_find_tensor(g, "x") == NULL);
        uint32_t u;
        CHECK_EQ_INT(duet_gguf_get_u32(g, "x", &u), DUET_ERR_NOT_FOUND);
        duet_gguf_close(g);
    }
    free(c);

    /* A scalar: no dims means every ne is 1. */
    r.len = 0;
    raw_header(&r, 3, 1, 0);
    raw_str(&r, "scalar");
    raw_u32(&r, 0);
    raw_u32(&r, DUET_TYPE_F32);
    raw_u64(&r, 0);
    while (r.len % 32)
        raw_bytes(&r, "", 1);
    float one = 1.0f;
    raw_bytes(&r, &one, 4);
    c = exact_copy(r.p, r.len);
    g = NULL;
    CHECK_EQ_INT(duet_gguf_open_memory(c, r.len, &g, err, sizeof err), DUET_OK);
    if (g) {
        const duet_gguf_tensor_t *t = duet_gguf_find_tensor(g, "scalar");
        CHECK(t && t->n_dims == 0 && t->ne[0] == 1 && t->ne[3] == 1 && t->bytes == 4);
        CHECK(t && memcmp(t->data, &one, 4) == 0);
        duet_gguf_close(g);
    }
    free(c);
    /* A file of tensors whose last padding is missing is still whole: padding is not data. */
    image_t im = small_image();
    put_u64(im.p + find_tensor_info(im, "w3").ne, 2);  /* w3 becomes F16 [2, 2]: 8 bytes */
    CHECK_EQ_INT(open_mem(im.p, im.len - 24, err, sizeof err), DUET_OK);
    CHECK_EQ_INT(open_mem(im.p, im.len - 25, err, sizeof err), DUET_ERR_FORMAT);
    CHECK_STR_CONTAINS(err, "truncated tensor data: tensor 'w3' needs 8 bytes, the file has 7");
    free(im.p);

    /* Keys up to 64 KiB are keys; longer ones are corruption. */
    size_t big = 65537;
    char *key = malloc(big + 1);
    memset(key, 'k', big);
    uint32_t v = 1;
    for (size_t len = 65536; len <= big; len++) {
        key[len] = '\0';
        r.len = 0;
        raw_header(&r, 3, 0, 1);
        raw_kv(&r, key, DUET_GGUF_UINT32, &v, 4);
        duet_status_t st = open_mem(r.p, r.len, err, sizeof err);
        if (len == 65536)
            CHECK_EQ_INT(st, DUET_OK);
        else
            CHECK_STR_CONTAINS(err, "invalid key: length 65537 exceeds 65536");
        key[len] = 'k';
    }
    free(key);
    free(r.p);
}

/* ---- the writer refuses bad input ------------------------------------------------------------ */

static void test_writer_rejects(void)
{
    duet_gguf_writer_t *w;
    CHECK_EQ_INT(duet_gguf_writer_create(NULL), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_create(&w), DUET_OK);
    float data[64] = {0};
    CHECK_EQ_INT(duet_gguf_writer_add_u32(NULL, "k", 1), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_add_u32(w, NULL, 1), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_add_u32(w, "", 1), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_add_u32(w, "k", 1), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_f32(w, "k", 1), DUET_ERR_INVALID);  /* duplicate */
    CHECK_EQ_INT(duet_gguf_writer_add_str(w, "s", NULL), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_add_str_array(w, "sa", NULL, 2), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_add_str_array(w, "sa", (const char *[]){"a", NULL}, 2),
                 DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_add_array(w, "a", DUET_GGUF_STRING, data, 1), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_add_array(w, "a", DUET_GGUF_ARRAY, data, 1), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_add_array(w, "a", 77, data, 1), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_add_array(w, "a", DUET_GGUF_FLOAT32, NULL, 1), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_add_u32(w, "general.alignment", 64), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_add_str(w, "general.alignment", "32"), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_add_f32(w, "general.alignment", 32), DUET_ERR_INVALID);

    int64_t ne[4] = {4, 2, 1, 1};
    CHECK_EQ_INT(duet_gguf_writer_add_tensor(w, "t", DUET_TYPE_F32, 2, ne, data, 32), DUET_OK);
    CHECK_EQ_INT(duet_gguf_writer_add_tensor(w, "t", DUET_TYPE_F32, 2, ne, data, 32),
                 DUET_ERR_INVALID);  /* duplicate name */
    CHECK_EQ_INT(duet_gguf_writer_add_tensor(w, "u", DUET_TYPE_F32, 2, ne, data, 31),
                 DUET_ERR_INVALID);  /* bytes mismatch */
    CHECK_EQ_INT(duet_gguf_writer_add_tensor(w, "u", DUET_TYPE_F16, 2, ne, data, 32),
                 DUET_ERR_INVALID);  /* bytes mismatch for the type */
    CHECK_EQ_INT(duet_gguf_writer_add_tensor(w, "u", 14, 2, ne, data, 32), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_add_tensor(w, "u", 99, 2, ne, data, 32), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_add_tensor(w, "u", DUET_TYPE_Q8_0, 1, (int64_t[]){16}, data, 17),
                 DUET_ERR_INVALID);  /* row is not whole blocks */
    CHECK_EQ_INT(duet_gguf_writer_add_tensor(w, "u", DUET_TYPE_F32, 0, ne, data, 4),
                 DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_add_tensor(w, "u", DUET_TYPE_F32, 5, ne, data, 32),
                 DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_add_tensor(w, "u", DUET_TYPE_F32, 2, (int64_t[]){4, 0}, data, 0),
                 DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_add_tensor(w, "u", DUET_TYPE_F32, 2, (int64_t[]){-4, -2}, data,
                                             32), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_add_tensor(w, "u", DUET_TYPE_F32, 4,
                                             (int64_t[]){1ll << 40, 1ll << 40, 1ll << 40, 1}, data,
                                             32), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_add_tensor(w, "u", DUET_TYPE_F32, 2, ne, NULL, 32),
                 DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_add_tensor(w, "", DUET_TYPE_F32, 2, ne, data, 32),
                 DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_write(w, NULL), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_writer_write(w, "/nonexistent-dir/x.gguf"), DUET_ERR_IO);

    /* What was accepted still writes a readable file. */
    char path[128];
    tmp_path(path, sizeof path, "rejects.gguf");
    CHECK_EQ_INT(duet_gguf_writer_write(w, path), DUET_OK);
    duet_gguf_writer_destroy(w);
    char err[256];
    duet_gguf_t *g = NULL;
    CHECK_EQ_INT(duet_gguf_open(path, &g, err, sizeof err), DUET_OK);
    CHECK(g && duet_gguf_n_kv(g) == 1 && duet_gguf_n_tensors(g) == 1);
    duet_gguf_close(g);
    unlink(path);
    duet_gguf_writer_destroy(NULL);
}

/* ---- files ----------------------------------------------------------------------------------- */

static void test_open_file_errors(void)
{
    char err[512], path[128];
    duet_gguf_t *g = NULL;
    tmp_path(path, sizeof path, "missing.gguf");
    CHECK_EQ_INT(duet_gguf_open(path, &g, err, sizeof err), DUET_ERR_IO);
    CHECK_STR_CONTAINS(err, "cannot open");
    CHECK_STR_CONTAINS(err, "missing.gguf");
    CHECK(g == NULL);

    CHECK_EQ_INT(duet_gguf_open(tmp_dir, &g, err, sizeof err), DUET_ERR_IO);
    CHECK_STR_CONTAINS(err, "is a directory");

    tmp_path(path, sizeof path, "empty.gguf");
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (f)
        fclose(f);
    CHECK_EQ_INT(duet_gguf_open(path, &g, err, sizeof err), DUET_ERR_FORMAT);
    CHECK_STR_CONTAINS(err, "empty file");

    /* A corrupted file is named in the message. */
    f = fopen(path, "wb");
    if (f) {
        fputs("GGML junk", f);
        fclose(f);
    }
    CHECK_EQ_INT(duet_gguf_open(path, &g, err, sizeof err), DUET_ERR_FORMAT);
    CHECK_STR_CONTAINS(err, "empty.gguf: not a GGUF file (bad magic");
    CHECK(g == NULL);
    unlink(path);

    /* A tiny err buffer is cut, not overrun; no err buffer is fine too. */
    char tiny[8];
    CHECK_EQ_INT(duet_gguf_open(tmp_dir, &g, tiny, sizeof tiny), DUET_ERR_IO);
    CHECK_EQ_INT(strlen(tiny), 7);
    CHECK_EQ_INT(duet_gguf_open(tmp_dir, &g, NULL, 0), DUET_ERR_IO);
    CHECK_EQ_INT(duet_gguf_open(NULL, &g, err, sizeof err), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_open_memory(NULL, 10, &g, err, sizeof err), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_gguf_open_memory(NULL, 0, &g, err, sizeof err), DUET_ERR_FORMAT);
    CHECK_STR_CONTAINS(err, "empty file");
}

/* ---- corruption ------------------------------------------------------------------------------ */

static void test_small_image_valid(void)
{
    image_t im = small_image();
    char err[512];
    CHECK_EQ_INT(open_mem(im.p, im.len, err, sizeof err), DUET_OK);
    free(im.p);
}

static void test_truncation_every_prefix(void)
{
    image_t im = small_image();
    char err[512];
    for (size_t len = 0; len < im.len; len++) {
        duet_status_t st = open_mem(im.p, len, err, sizeof err);
        CHECK_MSG(st != DUET_OK, "prefix of %zu/%zu bytes accepted", len, im.len);
        CHECK_MSG(err[0] != '\0' && strchr(err, '\n') == NULL, "prefix %zu: bad message", len);
        if (len > 0)
            CHECK_MSG(strstr(err, " at offset ") != NULL, "prefix %zu: %s", len, err);
    }
    /* One of each section, with its own message. */
    EXPECT_FAIL(((image_t){im.p, 2}), DUET_ERR_FORMAT, "truncated header");
    EXPECT_FAIL(((image_t){im.p, 12}), DUET_ERR_FORMAT, "truncated header", "at offset 8");
    /* Cuts late enough that the counts in the header still fit what is left. */
    size_t kv = find_name(im, "e.strs") + 6 + 4 + 4;
    EXPECT_FAIL(((image_t){im.p, kv + 3}), DUET_ERR_FORMAT, "truncated kv", "at offset");
    tinfo_t t = find_tensor_info(im, "w2");
    EXPECT_FAIL(((image_t){im.p, t.offset + 3}), DUET_ERR_FORMAT, "truncated tensor info");
    EXPECT_FAIL(((image_t){im.p, im.len - 1}), DUET_ERR_FORMAT, "truncated tensor data", "'w3'");
    size_t str = find_name(im, "d.str") + 5 + 4;
    EXPECT_FAIL(((image_t){im.p, str + 8 + 1}), DUET_ERR_FORMAT, "string length 2 runs past the end");
    /* Early cuts leave more entries claimed than bytes to hold them. */
    EXPECT_FAIL(((image_t){im.p, 40}), DUET_ERR_FORMAT, "n_kv 6 is more than the file can hold");
    free(im.p);
}

static void test_bad_magic_and_version(void)
{
    image_t im = small_image();
    image_t c = dup_image(im);
    memcpy(c.p, "GGML", 4);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "not a GGUF file (bad magic \"GGML\"", "at offset 0");
    EXPECT_FAIL(((image_t){(uint8_t *)"GGX", 3}), DUET_ERR_FORMAT, "not a GGUF file (bad magic");
    memcpy(c.p, "GGUF", 4);
    put_u32(c.p + 4, 1);
    EXPECT_FAIL(c, DUET_ERR_UNSUPPORTED, "unsupported GGUF version 1", "at offset 4");
    put_u32(c.p + 4, 4);
    EXPECT_FAIL(c, DUET_ERR_UNSUPPORTED, "unsupported GGUF version 4");
    put_u32(c.p + 4, 0x03000000u);
    EXPECT_FAIL(c, DUET_ERR_UNSUPPORTED, "unsupported GGUF version", "big-endian");
    free(c.p);
    free(im.p);
}

static void test_absurd_counts(void)
{
    image_t im = small_image();
    image_t c = dup_image(im);
    put_u64(c.p + 8, 1ull << 62);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "n_tensors 4611686018427387904 is more than the file can hold",
                "at offset 8");
    put_u64(c.p + 8, 3);
    put_u64(c.p + 16, 1ull << 62);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "n_kv 4611686018427387904 is more than the file can hold",
                "at offset 16");
    put_u64(c.p + 16, UINT64_MAX);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "n_kv 18446744073709551615 is more than the file can hold");
    /* A count the file could just about hold is refused by what follows, not by allocation. */
    put_u64(c.p + 16, c.len / 14);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "");
    memcpy(c.p, im.p, im.len);

    size_t arr = find_name(im, "c.arr") + 5 + 4 + 4;  /* the length of the i32 array */
    put_u64(c.p + arr, 1ull << 61);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "array length 2305843009213693952 of key 'c.arr' is more than "
                "the file can hold");
    memcpy(c.p, im.p, im.len);
    size_t sarr = find_name(im, "e.strs") + 6 + 4 + 4;
    put_u64(c.p + sarr, c.len);  /* string elements need at least 8 bytes each */
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "array length", "'e.strs'", "more than the file can hold");
    memcpy(c.p, im.p, im.len);

    size_t key = find_name(im, "a.u32") - 8;
    put_u64(c.p + key, 1ull << 62);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "key length 4611686018427387904 runs past the end of the file",
                "at offset 24");
    memcpy(c.p, im.p, im.len);
    size_t str = find_name(im, "b.str") + 5 + 4;
    put_u64(c.p + str, UINT64_MAX);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "string length 18446744073709551615 runs past the end of the file");
    memcpy(c.p, im.p, im.len);
    put_u64(c.p + sarr + 8, c.len);  /* first string of e.strs */
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "string length", "runs past the end of the file");
    memcpy(c.p, im.p, im.len);
    tinfo_t t = find_tensor_info(im, "w1");
    put_u64(c.p + t.len, 1ull << 40);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "tensor name length 1099511627776 runs past the end of the file");
    free(c.p);
    free(im.p);
}

static void test_bad_keys_and_values(void)
{
    image_t im = small_image();
    image_t c = dup_image(im);
    size_t k = find_name(im, "a.u32");
    size_t type = k + 5;

    put_u32(c.p + type, 13);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "unknown value type 13 for key 'a.u32'");
    put_u32(c.p + type, 0xffffffffu);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "unknown value type 4294967295");
    memcpy(c.p, im.p, im.len);

    size_t arr = find_name(im, "c.arr") + 5 + 4;  /* the element type */
    put_u32(c.p + arr, DUET_GGUF_ARRAY);
    EXPECT_FAIL(c, DUET_ERR_UNSUPPORTED, "nested arrays are not supported (key 'c.arr')");
    put_u32(c.p + arr, 42);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "unknown value type 42 for elements of key 'c.arr'");
    memcpy(c.p, im.p, im.len);

    memcpy(c.p + find_name(im, "d.str"), "b.str", 5);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "duplicate key 'b.str'");
    memcpy(c.p, im.p, im.len);

    put_u64(c.p + k - 8, 0);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "invalid key: empty", "at offset 24");
    memcpy(c.p, im.p, im.len);
    c.p[k + 1] = '\0';
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "invalid key 'a\\x00u32': contains a NUL byte");
    memcpy(c.p, im.p, im.len);
    c.p[k + 1] = '\n';  /* a valid key, but printed escaped so the message stays one line */
    put_u32(c.p + type, 13);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "unknown value type 13 for key 'a\\x0au32'");
    memcpy(c.p, im.p, im.len);

    size_t align = find_name(im, "general.alignment") + 17;
    put_u32(c.p + align + 4, 0);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "invalid general.alignment 0 (must be a nonzero power of two)");
    put_u32(c.p + align + 4, 48);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "invalid general.alignment 48");
    memcpy(c.p, im.p, im.len);
    put_u32(c.p + align, DUET_GGUF_FLOAT32);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "invalid general.alignment (value type 6");
    memcpy(c.p, im.p, im.len);
    /* 16 is valid: every tensor offset (multiples of 32) stays aligned, data may start earlier. */
    put_u32(c.p + align + 4, 16);
    char err[512];
    duet_status_t st = open_mem(c.p, c.len, err, sizeof err);
    CHECK(st == DUET_OK || strstr(err, "tensor data") != NULL);
    free(c.p);
    free(im.p);
}

static void test_bad_tensor_infos(void)
{
    image_t im = small_image();
    image_t c = dup_image(im);
    tinfo_t w1 = find_tensor_info(im, "w1");  /* Q8_0 [64, 2] */
    tinfo_t w2 = find_tensor_info(im, "w2");  /* F32 [3] */

    put_u32(c.p + w1.type, 99);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "unknown tensor type 99 of tensor 'w1'");
    put_u32(c.p + w1.type, 14);
    EXPECT_FAIL(c, DUET_ERR_UNSUPPORTED, "unsupported tensor type 14 (Q6_K) of tensor 'w1'");
    memcpy(c.p, im.p, im.len);

    put_u32(c.p + w1.n_dims, 5);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "tensor 'w1' has 5 dimensions (at most 4)");
    memcpy(c.p, im.p, im.len);
    put_u64(c.p + w1.ne + 8, 0);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "invalid dimension 1 of tensor 'w1': 0 (must be > 0)");
    put_u64(c.p + w1.ne + 8, UINT64_MAX);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "invalid dimension 1 of tensor 'w1': -1");
    memcpy(c.p, im.p, im.len);
    put_u64(c.p + w1.ne, 1ull << 40);
    put_u64(c.p + w1.ne + 8, 1ull << 40);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "element count of tensor 'w1' overflows");
    memcpy(c.p, im.p, im.len);
    put_u64(c.p + w2.ne, 1ull << 62);  /* fits in int64 elements, not in bytes of F32 */
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "element count of tensor 'w2' overflows");
    memcpy(c.p, im.p, im.len);
    put_u64(c.p + w1.ne, 33);
    EXPECT_FAIL(c, DUET_ERR_FORMAT,
                "row length 33 of tensor 'w1' is not a multiple of the Q8_0 block size 32");
    memcpy(c.p, im.p, im.len);

    put_u64(c.p + w2.offset, 16);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "misaligned tensor offset 16 of tensor 'w2' (alignment 32)");
    put_u64(c.p + w2.offset, 1ull << 40);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "tensor data of 'w2' is out of range of the file");
    put_u64(c.p + w2.offset, UINT64_MAX - 31);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "tensor data of 'w2' is out of range of the file");
    memcpy(c.p, im.p, im.len);
    /* Bigger than the data left after its offset, but the offset itself is inside. */
    put_u64(c.p + w2.ne, 1000);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "truncated tensor data: tensor 'w2' needs 4000 bytes");
    memcpy(c.p, im.p, im.len);

    memcpy(c.p + w2.name, "w1", 2);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "duplicate tensor name 'w1'");
    memcpy(c.p, im.p, im.len);
    put_u64(c.p + w2.len, 0);
    EXPECT_FAIL(c, DUET_ERR_FORMAT, "invalid tensor name: empty");
    free(c.p);
    free(im.p);
}

int main(void)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(tmp_dir, sizeof tmp_dir, "%s/test_gguf_XXXXXX", tmp && strlen(tmp) < 40 ? tmp : "/tmp");
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN_TEST(test_roundtrip);
    RUN_TEST(test_getter_widths);
    RUN_TEST(test_edge_images);
    RUN_TEST(test_writer_rejects);
    RUN_TEST(test_open_file_errors);
    RUN_TEST(test_small_image_valid);
    RUN_TEST(test_truncation_every_prefix);
    RUN_TEST(test_bad_magic_and_version);
    RUN_TEST(test_absurd_counts);
    RUN_TEST(test_bad_keys_and_values);
    RUN_TEST(test_bad_tensor_infos);
    rmdir(tmp_dir);
    return check_report();
}
