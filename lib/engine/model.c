/* lib/engine/model.c — reading hyperparameters and binding weight tensors of llama and qwen2
 * GGUF files, checking every shape against the hyperparameters before anything runs. */
#include "model.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "quant.h"

typedef struct {
    duet_model_t *m;
    char *err;
    size_t err_len;
} loader_t;

static duet_status_t fail(loader_t *ld, duet_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static duet_status_t fail(loader_t *ld, duet_status_t st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ld->err, ld->err_len, fmt, ap);
    va_end(ap);
    return st;
}

/* Reads <arch>.<suffix> as an integer; def < 0 means the key is required. */
static duet_status_t arch_u32(loader_t *ld, const char *suffix, long def, int *out)
{
    char key[128];
    uint32_t v;
    snprintf(key, sizeof key, "%s.%s", ld->m->arch_name, suffix);
    duet_status_t st = duet_gguf_get_u32(ld->m->gguf, key, &v);
    if (st == DUET_ERR_NOT_FOUND && def >= 0) {
        *out = (int)def;
        return DUET_OK;
    }
    if (st != DUET_OK)
        return fail(ld, DUET_ERR_FORMAT, "model: metadata '%s' is %s", key,
                    st == DUET_ERR_NOT_FOUND ? "missing" : "not an integer that fits");
    if (v > (1u << 30))
        return fail(ld, DUET_ERR_FORMAT, "model: metadata '%s' = %u is absurd", key, v);
    *out = (int)v;
    return DUET_OK;
}

static duet_status_t arch_f32(loader_t *ld, const char *suffix, float def, float *out)
{
    char key[128];
    snprintf(key, sizeof key, "%s.%s", ld->m->arch_name, suffix);
    duet_status_t st = duet_gguf_get_f32(ld->m->gguf, key, out);
    if (st == DUET_ERR_NOT_FOUND) {
        *out = def;
        return DUET_OK;
    }
    if (st != DUET_OK)
        return fail(ld, DUET_ERR_FORMAT, "model: metadata '%s' is not a float", key);
    return DUET_OK;
}

static duet_status_t read_hparams(loader_t *ld)
{
    duet_model_t *m = ld->m;
    duet_hparams_t *hp = &m->hp;
    duet_gguf_str_t s;
    if (duet_gguf_get_str(m->gguf, "general.architecture", &s) != DUET_OK)
        return fail(ld, DUET_ERR_FORMAT, "model: 'general.architecture' is missing");
    snprintf(m->arch_name, sizeof m->arch_name, "%.*s", (int)(s.len < 31 ? s.len : 31), s.ptr);
    if (strcmp(m->arch_name, "llama") == 0) {
        hp->arch = DUET_ARCH_LLAMA;
        /* llama.cpp's converter permutes Q/K rows so the interleaved pairing is right for llama. */
        hp->rope_neox = 0;
    } else if (strcmp(m->arch_name, "qwen2") == 0) {
        hp->arch = DUET_ARCH_QWEN2;
        hp->rope_neox = 1;
    } else {
        return fail(ld, DUET_ERR_UNSUPPORTED,
                    "model: architecture '%s' is not supported (llama, qwen2 are)", m->arch_name);
    }
    if (duet_gguf_get_str(m->gguf, "general.name", &s) == DUET_OK)
        snprintf(m->name, sizeof m->name, "%.*s", (int)(s.len < 127 ? s.len : 127), s.ptr);

    duet_status_t st;
    if ((st = arch_u32(ld, "block_count", -1, &hp->n_layer)) ||
        (st = arch_u32(ld, "embedding_length", -1, &hp->dim)) ||
        (st = arch_u32(ld, "feed_forward_length", -1, &hp->ffn_dim)) ||
        (st = arch_u32(ld, "attention.head_count", -1, &hp->n_head)) ||
        (st = arch_u32(ld, "context_length", 2048, &hp->n_ctx_train)))
        return st;
    if (hp->n_layer < 1 || hp->dim < 1 || hp->ffn_dim < 1 || hp->n_head < 1 || hp->n_ctx_train < 1)
        return fail(ld, DUET_ERR_FORMAT, "model: a layer count, size or head count is zero");
    if ((st = arch_u32(ld, "attention.head_count_kv", hp->n_head, &hp->n_kv_head)) ||
        (st = arch_u32(ld, "attention.key_length", hp->dim / hp->n_head, &hp->head_dim)))
        return st;
    int value_len;
    if ((st = arch_u32(ld, "attention.value_length", hp->head_dim, &value_len)))
        return st;
    if ((st = arch_u32(ld, "rope.dimension_count", hp->head_dim, &hp->rot_dim)) ||
        (st = arch_f32(ld, "rope.freq_base", 10000.0f, &hp->rope_theta)) ||
        (st = arch_f32(ld, "attention.layer_norm_rms_epsilon", 1e-5f, &hp->norm_eps)))
        return st;
    if (hp->n_kv_head < 1 || hp->n_head % hp->n_kv_head != 0)
        return fail(ld, DUET_ERR_FORMAT, "model: %d query heads cannot share %d KV heads",
                    hp->n_head, hp->n_kv_head);
    if (value_len != hp->head_dim)
        return fail(ld, DUET_ERR_UNSUPPORTED, "model: key length %d differs from value length %d",
                    hp->head_dim, value_len);
    if (hp->head_dim < 2 || hp->head_dim > DUET_MAX_HEAD_DIM || hp->head_dim % 2)
        return fail(ld, DUET_ERR_UNSUPPORTED, "model: head dimension %d (must be even, at most %d)",
                    hp->head_dim, DUET_MAX_HEAD_DIM);
    if (hp->rot_dim < 2 || hp->rot_dim > hp->head_dim || hp->rot_dim % 2)
        return fail(ld, DUET_ERR_FORMAT, "model: RoPE dimension %d does not fit head dimension %d",
                    hp->rot_dim, hp->head_dim);
    if (!(hp->rope_theta > 0) || !(hp->norm_eps > 0))
        return fail(ld, DUET_ERR_FORMAT, "model: RoPE base and norm epsilon must be positive");
    return DUET_OK;
}

/* Binds a 2-D weight of shape [rows][cols] (GGUF ne = {cols, rows}). */
static duet_status_t bind_weight(loader_t *ld, const char *name, int rows, int cols, int optional,
                                 duet_weight_t *w)
{
    const duet_gguf_tensor_t *t = duet_gguf_find_tensor(ld->m->gguf, name);
    if (!t) {
        if (optional)
            return DUET_ERR_NOT_FOUND;
        return fail(ld, DUET_ERR_FORMAT, "model: tensor '%s' is missing", name);
    }
    if (t->ne[0] != cols || t->ne[1] != rows || t->ne[2] != 1 || t->ne[3] != 1)
        return fail(ld, DUET_ERR_FORMAT,
                    "model: tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%d, %d]",
                    name, (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2],
                    (long long)t->ne[3], cols, rows);
    *w = (duet_weight_t){
        .type = t->type,
        .rows = rows,
        .cols = cols,
        .row_bytes = duet_type_row_bytes(t->type, cols),
        .data = t->data,
    };
    ld->m->weight_bytes += t->bytes;
    duet_backend_t *be = ld->m->be;
    if (be->prepare_weight) {
        duet_status_t st = be->prepare_weight(be, w);
        if (st != DUET_OK)
            return fail(ld, st, "model: backend %s cannot prepare tensor '%s'", be->name, name);
    }
    return DUET_OK;
}

/* Copies a 1-D tensor of n elements into an f32 backend buffer owned by the model. */
static duet_status_t bind_vector(loader_t *ld, const char *name, int n, int optional, const float **out)
{
    duet_model_t *m = ld->m;
    const duet_gguf_tensor_t *t = duet_gguf_find_tensor(m->gguf, name);
    if (!t) {
        if (optional) {
            *out = NULL;
            return DUET_OK;
        }
        return fail(ld, DUET_ERR_FORMAT, "model: tensor '%s' is missing", name);
    }
    if (t->ne[0] != n || t->ne[1] != 1 || t->ne[2] != 1 || t->ne[3] != 1)
        return fail(ld, DUET_ERR_FORMAT, "model: tensor '%s' has %lld elements, expected %d",
                    name, (long long)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]), n);
    float *host = malloc((size_t)n * sizeof *host);
    if (!host)
        return fail(ld, DUET_ERR_NOMEM, "model: out of memory");
    duet_status_t st = duet_dequantize_row(t->type, t->data, host, n);
    if (st != DUET_OK) {
        free(host);
        return fail(ld, st, "model: cannot convert tensor '%s' to f32", name);
    }
    float *buf = m->be->alloc(m->be, (size_t)n * sizeof *buf);
    float **owned = realloc(m->owned, (size_t)(m->n_owned + 1) * sizeof *owned);
    if (!buf || !owned) {
        free(host);
        if (buf)
            m->be->free(m->be, buf);
        if (owned)
            m->owned = owned;
        return fail(ld, DUET_ERR_NOMEM, "model: out of memory");
    }
    m->be->upload(m->be, buf, host, (size_t)n * sizeof *buf);
    free(host);
    m->owned = owned;
    m->owned[m->n_owned++] = buf;
    m->weight_bytes += t->bytes;
    *out = buf;
    return DUET_OK;
}

static duet_status_t bind_layer(loader_t *ld, int il)
{
    const duet_hparams_t *hp = &ld->m->hp;
    duet_layer_t *L = &ld->m->layers[il];
    int q_dim = hp->n_head * hp->head_dim, kv_dim = hp->n_kv_head * hp->head_dim;
    int qwen = hp->arch == DUET_ARCH_QWEN2;
    char name[96];
    duet_status_t st;
#define NAME(suffix) (snprintf(name, sizeof name, "blk.%d.%s", il, suffix), name)
    if ((st = bind_vector(ld, NAME("attn_norm.weight"), hp->dim, 0, &L->attn_norm)) ||
        (st = bind_weight(ld, NAME("attn_q.weight"), q_dim, hp->dim, 0, &L->wq)) ||
        (st = bind_weight(ld, NAME("attn_k.weight"), kv_dim, hp->dim, 0, &L->wk)) ||
        (st = bind_weight(ld, NAME("attn_v.weight"), kv_dim, hp->dim, 0, &L->wv)) ||
        (st = bind_vector(ld, NAME("attn_q.bias"), q_dim, !qwen, &L->bq)) ||
        (st = bind_vector(ld, NAME("attn_k.bias"), kv_dim, !qwen, &L->bk)) ||
        (st = bind_vector(ld, NAME("attn_v.bias"), kv_dim, !qwen, &L->bv)) ||
        (st = bind_weight(ld, NAME("attn_output.weight"), hp->dim, q_dim, 0, &L->wo)) ||
        (st = bind_vector(ld, NAME("ffn_norm.weight"), hp->dim, 0, &L->ffn_norm)) ||
        (st = bind_weight(ld, NAME("ffn_gate.weight"), hp->ffn_dim, hp->dim, 0, &L->w_gate)) ||
        (st = bind_weight(ld, NAME("ffn_up.weight"), hp->ffn_dim, hp->dim, 0, &L->w_up)) ||
        (st = bind_weight(ld, NAME("ffn_down.weight"), hp->dim, hp->ffn_dim, 0, &L->w_down)))
        return st;
#undef NAME
    return DUET_OK;
}

duet_status_t duet_model_load(const char *path, duet_backend_t *be, duet_model_t **model_p,
                              char *err, size_t err_len)
{
    duet_model_t *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, err_len, "model: out of memory");
        return DUET_ERR_NOMEM;
    }
    m->be = be;
    loader_t ld = {m, err, err_len};
    duet_status_t st = duet_gguf_open(path, &m->gguf, err, err_len);
    if (st != DUET_OK)
        goto err_free;
    const char *slash = strrchr(path, '/');
    snprintf(m->name, sizeof m->name, "%s", slash ? slash + 1 : path);
    if ((st = read_hparams(&ld)) != DUET_OK)
        goto err_free;

    const duet_gguf_tensor_t *embd = duet_gguf_find_tensor(m->gguf, "token_embd.weight");
    if (!embd) {
        st = fail(&ld, DUET_ERR_FORMAT, "model: tensor 'token_embd.weight' is missing");
        goto err_free;
    }
    if (embd->ne[1] < 1 || embd->ne[1] > (1 << 24)) {
        st = fail(&ld, DUET_ERR_FORMAT, "model: vocabulary of %lld tokens", (long long)embd->ne[1]);
        goto err_free;
    }
    m->hp.n_vocab = (int)embd->ne[1];
    err[0] = '\0';
    if ((st = duet_tokenizer_create(m->gguf, &m->tok, err, err_len)) != DUET_OK)
        goto err_free;
    if (err[0]) {  /* a warning, such as an unknown pre-tokenizer name */
        duet_log_warn("model: %s", err);
        err[0] = '\0';
    }
    if (duet_tokenizer_n_vocab(m->tok) > m->hp.n_vocab) {
        st = fail(&ld, DUET_ERR_FORMAT, "model: tokenizer has %d tokens but the embedding only %d",
                  duet_tokenizer_n_vocab(m->tok), m->hp.n_vocab);
        goto err_free;
    }
    if ((st = duet_chat_template_init(&m->chat, m->gguf)) != DUET_OK) {
        fail(&ld, st, "model: cannot read the chat template");
        goto err_free;
    }

    if ((st = bind_weight(&ld, "token_embd.weight", m->hp.n_vocab, m->hp.dim, 0, &m->tok_embd)) ||
        (st = bind_vector(&ld, "output_norm.weight", m->hp.dim, 0, &m->output_norm)))
        goto err_free;
    st = bind_weight(&ld, "output.weight", m->hp.n_vocab, m->hp.dim, 1, &m->output);
    if (st == DUET_ERR_NOT_FOUND) {
        m->output = m->tok_embd;  /* tied embeddings share the table (and its prepared form) */
        m->output.packed = m->tok_embd.packed;
    } else if (st != DUET_OK) {
        goto err_free;
    }
    m->layers = calloc((size_t)m->hp.n_layer, sizeof *m->layers);
    if (!m->layers) {
        st = fail(&ld, DUET_ERR_NOMEM, "model: out of memory");
        goto err_free;
    }
    for (int il = 0; il < m->hp.n_layer; il++)
        if ((st = bind_layer(&ld, il)) != DUET_OK)
            goto err_free;
    *model_p = m;
    return DUET_OK;

err_free:
    duet_model_free(m);
    return st;
}

static void release(duet_model_t *m, duet_weight_t *w)
{
    if (w->packed && m->be->release_weight)
        m->be->release_weight(m->be, w);
}

void duet_model_free(duet_model_t *m)
{
    if (!m)
        return;
    if (m->layers) {
        for (int il = 0; il < m->hp.n_layer; il++) {
            duet_layer_t *L = &m->layers[il];
            duet_weight_t *ws[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
            for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
                release(m, ws[i]);
        }
        free(m->layers);
    }
    if (m->output.packed != m->tok_embd.packed)
        release(m, &m->output);
    release(m, &m->tok_embd);
    for (int i = 0; i < m->n_owned; i++)
        m->be->free(m->be, m->owned[i]);
    free(m->owned);
    duet_chat_template_cleanup(&m->chat);
    duet_tokenizer_destroy(m->tok);
    duet_gguf_close(m->gguf);
    free(m);
}

const char *duet_model_resolve_path(const char *path, char *buf, size_t cap)
{
    if (path && *path)
        return path;
    const char *env = getenv("DUET_MODEL");
    if (env && *env)
        return env;
    const char *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    if (xdg && *xdg)
        snprintf(buf, cap, "%s/duet/models/%s", xdg, DUET_DEFAULT_MODEL_FILE);
    else
        snprintf(buf, cap, "%s/.cache/duet/models/%s", home ? home : ".", DUET_DEFAULT_MODEL_FILE);
    return buf;
}

size_t duet_model_kv_bytes_per_token(const duet_model_t *m)
{
    return (size_t)m->hp.n_layer * 2 * (size_t)m->hp.n_kv_head * (size_t)m->hp.head_dim * 2;
}
