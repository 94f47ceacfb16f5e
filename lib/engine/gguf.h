/* lib/engine/gguf.h — GGUF v2/v3 model files: a reader over an mmapped (or caller-held) image
 * that checks every count, length, offset and type against the file before use, and a writer. */
#ifndef DUET_ENGINE_GGUF_H
#define DUET_ENGINE_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "../base/status.h"

typedef enum {
    DUET_GGUF_UINT8 = 0, DUET_GGUF_INT8 = 1, DUET_GGUF_UINT16 = 2, DUET_GGUF_INT16 = 3,
    DUET_GGUF_UINT32 = 4, DUET_GGUF_INT32 = 5, DUET_GGUF_FLOAT32 = 6, DUET_GGUF_BOOL = 7,
    DUET_GGUF_STRING = 8, DUET_GGUF_ARRAY = 9, DUET_GGUF_UINT64 = 10, DUET_GGUF_INT64 = 11,
    DUET_GGUF_FLOAT64 = 12,
} duet_gguf_vtype_t;

/* A string inside the file image: not NUL-terminated. */
typedef struct {
    const char *ptr;
    uint64_t len;
} duet_gguf_str_t;

typedef struct {
    duet_gguf_str_t key;
    uint32_t type;            /* duet_gguf_vtype_t */
    uint32_t elem_type;       /* element type when type is ARRAY */
    uint64_t n_elems;         /* element count when type is ARRAY, else 1 */
    const uint8_t *value;     /* the value (or an array's first element) in the image */
} duet_gguf_kv_t;

#define DUET_GGUF_MAX_DIMS 4

typedef struct {
    duet_gguf_str_t name;
    uint32_t n_dims;
    int64_t ne[DUET_GGUF_MAX_DIMS];  /* ne[0] is the row length; unused dims are 1 */
    uint32_t type;                   /* duet_type_t, known to this build */
    uint64_t offset;                 /* from the start of the data section */
    const void *data;                /* in the image, aligned, bounds checked */
    size_t bytes;
} duet_gguf_tensor_t;

typedef struct duet_gguf duet_gguf_t;

/* Maps and parses path. On failure returns an error status and writes one line naming the problem
 * (and the file offset where it was found) into err. */
duet_status_t duet_gguf_open(const char *path, duet_gguf_t **gguf_p, char *err, size_t err_len);
/* Parses an image the caller keeps alive and unchanged until close (used by tests and fuzzing). */
duet_status_t duet_gguf_open_memory(const void *image, size_t size, duet_gguf_t **gguf_p,
                                    char *err, size_t err_len);
void          duet_gguf_close(duet_gguf_t *gguf);

uint32_t duet_gguf_version(const duet_gguf_t *gguf);
size_t   duet_gguf_file_size(const duet_gguf_t *gguf);

int                   duet_gguf_n_kv(const duet_gguf_t *gguf);
const duet_gguf_kv_t *duet_gguf_kv_at(const duet_gguf_t *gguf, int i);
const duet_gguf_kv_t *duet_gguf_find_kv(const duet_gguf_t *gguf, const char *key);  /* NULL if absent */

/* Typed getters: DUET_ERR_NOT_FOUND when the key is absent, DUET_ERR_FORMAT when it has another
 * type or the value does not fit. Integers accept any integer type whose value fits; floats accept
 * FLOAT32 and FLOAT64. Outputs are set only on success. */
duet_status_t duet_gguf_get_u32(const duet_gguf_t *gguf, const char *key, uint32_t *out_p);
duet_status_t duet_gguf_get_f32(const duet_gguf_t *gguf, const char *key, float *out_p);
duet_status_t duet_gguf_get_bool(const duet_gguf_t *gguf, const char *key, int *out_p);
duet_status_t duet_gguf_get_str(const duet_gguf_t *gguf, const char *key, duet_gguf_str_t *out_p);
/* An array of strings as views into the image; *strs_p is malloc'd, the caller frees it. */
duet_status_t duet_gguf_get_str_array(const duet_gguf_t *gguf, const char *key,
                                      duet_gguf_str_t **strs_p, uint64_t *n_p);
/* A numeric array of exactly elem_type; *data_p points into the image (may be unaligned). */
duet_status_t duet_gguf_get_array(const duet_gguf_t *gguf, const char *key, uint32_t elem_type,
                                  const void **data_p, uint64_t *n_p);

int                       duet_gguf_n_tensors(const duet_gguf_t *gguf);
const duet_gguf_tensor_t *duet_gguf_tensor_at(const duet_gguf_t *gguf, int i);
const duet_gguf_tensor_t *duet_gguf_find_tensor(const duet_gguf_t *gguf, const char *name);

/* Writer: collects metadata and tensors, then writes a GGUF v3 file (alignment 32). */
typedef struct duet_gguf_writer duet_gguf_writer_t;

duet_status_t duet_gguf_writer_create(duet_gguf_writer_t **w_p);
void          duet_gguf_writer_destroy(duet_gguf_writer_t *w);
/* Keys and values are copied. */
duet_status_t duet_gguf_writer_add_u32(duet_gguf_writer_t *w, const char *key, uint32_t v);
duet_status_t duet_gguf_writer_add_f32(duet_gguf_writer_t *w, const char *key, float v);
duet_status_t duet_gguf_writer_add_bool(duet_gguf_writer_t *w, const char *key, int v);
duet_status_t duet_gguf_writer_add_str(duet_gguf_writer_t *w, const char *key, const char *v);
duet_status_t duet_gguf_writer_add_str_array(duet_gguf_writer_t *w, const char *key,
                                             const char *const *v, uint64_t n);
/* elem_type is a fixed-size numeric type (not STRING, not ARRAY). */
duet_status_t duet_gguf_writer_add_array(duet_gguf_writer_t *w, const char *key, uint32_t elem_type,
                                         const void *v, uint64_t n);
/* data is copied; bytes must equal the size the type and shape give. */
duet_status_t duet_gguf_writer_add_tensor(duet_gguf_writer_t *w, const char *name, uint32_t type,
                                          uint32_t n_dims, const int64_t *ne, const void *data,
                                          size_t bytes);
duet_status_t duet_gguf_writer_write(duet_gguf_writer_t *w, const char *path);

#endif
