/* lib/engine/model.h — a loaded model: hyperparameters from GGUF metadata, weights as views into
 * the mmapped file (prepared by the backend), the tokenizer and the chat template.
 * Architectures: llama and qwen2. */
#ifndef DUET_ENGINE_MODEL_H
#define DUET_ENGINE_MODEL_H

#include <stddef.h>

#include "../base/status.h"
#include "backend.h"
#include "chat.h"
#include "gguf.h"
#include "tokenizer.h"

typedef enum { DUET_ARCH_LLAMA, DUET_ARCH_QWEN2 } duet_arch_t;

#define DUET_MAX_HEAD_DIM 256

typedef struct {
    duet_arch_t arch;
    int n_vocab;
    int n_ctx_train;   /* context length the model was trained for */
    int dim;           /* hidden size */
    int n_layer;
    int n_head;
    int n_kv_head;
    int head_dim;      /* dim / n_head unless the file says otherwise */
    int ffn_dim;
    int rot_dim;       /* leading dims of each head that RoPE rotates */
    int rope_neox;     /* 1: pairs (j, j + rot_dim/2); 0: pairs (2j, 2j+1) */
    float rope_theta;
    float norm_eps;
} duet_hparams_t;

typedef struct {
    const float *attn_norm;            /* [dim], backend memory */
    duet_weight_t wq;                  /* [n_head * head_dim][dim] */
    duet_weight_t wk, wv;              /* [n_kv_head * head_dim][dim] */
    const float *bq, *bk, *bv;         /* qwen2 biases, else NULL */
    duet_weight_t wo;                  /* [dim][n_head * head_dim] */
    const float *ffn_norm;             /* [dim] */
    duet_weight_t w_gate, w_up;        /* [ffn_dim][dim] */
    duet_weight_t w_down;              /* [dim][ffn_dim] */
} duet_layer_t;

typedef struct {
    char name[128];          /* general.name, or the file name */
    char arch_name[32];
    duet_hparams_t hp;
    duet_gguf_t *gguf;       /* owns the mapping every weight points into */
    duet_backend_t *be;      /* borrowed */
    duet_tokenizer_t *tok;
    duet_chat_template_t chat;
    duet_weight_t tok_embd;  /* [n_vocab][dim] */
    duet_weight_t output;    /* [n_vocab][dim]; tok_embd again when embeddings are tied */
    const float *output_norm;/* [dim] */
    duet_layer_t *layers;    /* [n_layer] */
    size_t weight_bytes;     /* bytes of all weight tensors, as stored */
    float **owned;           /* backend buffers made at load (f32 norms and biases) */
    int n_owned;
} duet_model_t;

/* The default model, as scripts/get-model caches it. */
#define DUET_DEFAULT_MODEL_FILE "SmolLM2-135M-Instruct.Q4_1.gguf"

/* path when it is non-empty; else $DUET_MODEL; else the default model in $XDG_CACHE_HOME/duet/models
 * or ~/.cache/duet/models (where scripts/get-model puts it). May write into buf. */
const char *duet_model_resolve_path(const char *path, char *buf, size_t cap);

/* Loads path for backend be (which must outlive the model). Errors go to err as one line. */
duet_status_t duet_model_load(const char *path, duet_backend_t *be, duet_model_t **model_p,
                              char *err, size_t err_len);
void          duet_model_free(duet_model_t *model);

/* KV bytes per token of context, over all layers (f16 K and V). */
size_t duet_model_kv_bytes_per_token(const duet_model_t *model);

#endif
