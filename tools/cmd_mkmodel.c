/* tools/cmd_mkmodel.c — `duet mkmodel`: writes a llama- or qwen2-shaped GGUF with random weights
 * and a small byte-level BPE vocabulary, for tests and benchmarks that need no real model. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "conf.h"
#include "dtype.h"
#include "gguf.h"
#include "quant.h"

typedef struct {
    const char *out;
    const char *preset;
    const char *arch;
    const char *type;
    const char *embd_type;
    int dim, layers, heads, kv_heads, ffn, vocab, ctx;
    float rope_theta;
    long long seed;
} mkmodel_conf_t;

#define OPT(flag, type, field, def, help) {flag, NULL, type, offsetof(mkmodel_conf_t, field), def, help}
static const duet_conf_opt_t mkmodel_opts[] = {
    OPT("out", DUET_CONF_STR, out, NULL, "output path (required)"),
    OPT("preset", DUET_CONF_STR, preset, NULL, "'smollm2': the default model's shape (overrides shape options)"),
    OPT("arch", DUET_CONF_STR, arch, "llama", "llama or qwen2 (adds q/k/v biases)"),
    OPT("type", DUET_CONF_STR, type, "q8_0", "weight type: f32, f16, bf16, q8_0, q4_0, q4_1"),
    OPT("embd-type", DUET_CONF_STR, embd_type, NULL, "token embedding type (default: --type)"),
    OPT("dim", DUET_CONF_INT, dim, "64", "hidden size (a multiple of 32)"),
    OPT("layers", DUET_CONF_INT, layers, "2", "transformer layers"),
    OPT("heads", DUET_CONF_INT, heads, "4", "query heads"),
    OPT("kv-heads", DUET_CONF_INT, kv_heads, "2", "KV heads (divides --heads)"),
    OPT("ffn", DUET_CONF_INT, ffn, "128", "feed-forward size (a multiple of 32)"),
    OPT("vocab", DUET_CONF_INT, vocab, "512", "vocabulary size (at least 259)"),
    OPT("ctx", DUET_CONF_INT, ctx, "1024", "context length"),
    OPT("rope-theta", DUET_CONF_FLOAT, rope_theta, "10000", "RoPE base"),
    OPT("seed", DUET_CONF_I64, seed, "1", "random seed of the weights"),
};
#undef OPT
#define N_OPTS ((int)(sizeof mkmodel_opts / sizeof mkmodel_opts[0]))

#define N_SPECIAL 3
static const char *const special_tokens[N_SPECIAL] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
static const char chatml_template[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

typedef struct {
    uint64_t state;
} rng_t;

static double rng_uniform(rng_t *r)
{
    r->state ^= r->state << 13;
    r->state ^= r->state >> 7;
    r->state ^= r->state << 17;
    return ((r->state >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

static float rng_normal(rng_t *r)
{
    return (float)(sqrt(-2.0 * log(rng_uniform(r))) * cos(6.283185307179586 * rng_uniform(r)));
}

/* GPT-2's byte-level alphabet: printable bytes stand for themselves, the others are shifted to
 * code points 256 and up, so every byte has a visible character. Writes UTF-8, returns its length. */
static int byte_char(int b, char *out)
{
    int cp;
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) {
        cp = b;
    } else {
        int n = 0;
        for (int i = 0; i < b; i++)
            if (!((i >= 33 && i <= 126) || (i >= 161 && i <= 172) || i >= 174))
                n++;
        cp = 256 + n;
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xc0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
}

/* Specials, the 256 bytes, then merged letter pairs ("Ġa", "ab", ...) and unused fillers. */
static int add_vocab(duet_gguf_writer_t *w, int vocab)
{
    char **tokens = calloc((size_t)vocab, sizeof *tokens);
    int32_t *types = calloc((size_t)vocab, sizeof *types);
    char **merges = calloc((size_t)vocab, sizeof *merges);
    int n_merges = 0, rc = 1;
    if (!tokens || !types || !merges)
        goto done;
    int n = 0;
    for (int i = 0; i < N_SPECIAL; i++, n++) {
        tokens[n] = strdup(special_tokens[i]);
        types[n] = 3;  /* control */
    }
    for (int b = 0; b < 256; b++, n++) {
        char buf[4] = {0};
        byte_char(b, buf);
        tokens[n] = strdup(buf);
        types[n] = 1;
    }
    char space[4] = {0};
    byte_char(' ', space);
    /* Merges: "Ġ"+letter, then letter+letter, as long as the vocabulary has room. */
    for (int a = -1; a < 26 && n < vocab; a++) {
        for (int b = 0; b < 26 && n < vocab; b++) {
            char left[8], right[2] = {(char)('a' + b), 0}, merged[16], rule[24];
            if (a < 0)
                snprintf(left, sizeof left, "%s", space);
            else
                snprintf(left, sizeof left, "%c", 'a' + a);
            snprintf(merged, sizeof merged, "%s%s", left, right);
            snprintf(rule, sizeof rule, "%s %s", left, right);
            tokens[n] = strdup(merged);
            types[n++] = 1;
            merges[n_merges++] = strdup(rule);
        }
    }
    for (; n < vocab; n++) {
        char buf[32];
        snprintf(buf, sizeof buf, "<unused_%d>", n);
        tokens[n] = strdup(buf);
        types[n] = 5;  /* unused */
    }
    for (int i = 0; i < vocab; i++)
        if (!tokens[i])
            goto done;
    if (duet_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2") ||
        duet_gguf_writer_add_str(w, "tokenizer.ggml.pre", "smollm") ||
        duet_gguf_writer_add_str_array(w, "tokenizer.ggml.tokens", (const char *const *)tokens, (uint64_t)vocab) ||
        duet_gguf_writer_add_array(w, "tokenizer.ggml.token_type", DUET_GGUF_INT32, types, (uint64_t)vocab) ||
        duet_gguf_writer_add_str_array(w, "tokenizer.ggml.merges", (const char *const *)merges, (uint64_t)n_merges) ||
        duet_gguf_writer_add_u32(w, "tokenizer.ggml.bos_token_id", 0) ||
        duet_gguf_writer_add_u32(w, "tokenizer.ggml.eos_token_id", 0) ||
        duet_gguf_writer_add_bool(w, "tokenizer.ggml.add_bos_token", 0) ||
        duet_gguf_writer_add_str(w, "tokenizer.chat_template", chatml_template))
        goto done;
    rc = 0;
done:
    for (int i = 0; tokens && i < vocab; i++)
        free(tokens[i]);
    for (int i = 0; i < n_merges; i++)
        free(merges[i]);
    free(tokens);
    free(types);
    free(merges);
    return rc;
}

/* A [rows][cols] tensor of N(0, scale^2) values (or all `fill` when scale is 0) stored as type. */
static int add_tensor(duet_gguf_writer_t *w, rng_t *rng, const char *name, uint32_t type, int rows,
                      int cols, float scale, float fill)
{
    size_t row_bytes = duet_type_row_bytes(type, cols);
    if (!row_bytes) {
        fprintf(stderr, "duet mkmodel: %s: %d columns do not fit type %s\n", name, cols,
                duet_type_traits(type)->name);
        return 1;
    }
    float *row = malloc((size_t)cols * sizeof *row);
    unsigned char *data = malloc(row_bytes * (size_t)rows);
    int rc = 1;
    if (!row || !data)
        goto done;
    for (int r = 0; r < rows; r++) {
        for (int i = 0; i < cols; i++)
            row[i] = scale > 0 ? scale * rng_normal(rng) : fill;
        duet_quantize_row(type, row, data + (size_t)r * row_bytes, cols);
    }
    int64_t ne[2] = {cols, rows};
    rc = duet_gguf_writer_add_tensor(w, name, type, rows == 1 ? 1 : 2, ne, data, row_bytes * (size_t)rows) != DUET_OK;
done:
    free(row);
    free(data);
    return rc;
}

int duet_cmd_mkmodel(int argc, char **argv)
{
    mkmodel_conf_t c;
    int rc = duet_tool_parse("duet mkmodel --out PATH [OPTIONS]", mkmodel_opts, N_OPTS, &c, argc, argv);
    if (rc >= 0)
        return rc;
    if (c.preset) {
        if (strcmp(c.preset, "smollm2") != 0) {
            fprintf(stderr, "duet mkmodel: unknown preset '%s' (smollm2)\n", c.preset);
            return 2;
        }
        c.dim = 576, c.layers = 30, c.heads = 9, c.kv_heads = 3, c.ffn = 1536, c.vocab = 49152;
        c.ctx = 8192, c.rope_theta = 100000;
    }
    int type = duet_type_parse(c.type);
    int embd_type = c.embd_type ? duet_type_parse(c.embd_type) : type;
    int qwen = c.arch && strcmp(c.arch, "qwen2") == 0;
    const char *problem = !c.out ? "--out is required"
        : type < 0 || embd_type < 0 ? "unknown --type or --embd-type"
        : !qwen && strcmp(c.arch, "llama") != 0 ? "--arch must be llama or qwen2"
        : c.dim < 32 || c.dim % 32 || c.ffn < 32 || c.ffn % 32 ? "--dim and --ffn must be positive multiples of 32"
        : c.layers < 1 || c.layers > 256 ? "--layers must be in 1..256"
        : c.heads < 1 || c.kv_heads < 1 || c.heads % c.kv_heads || c.dim % c.heads ? "--heads must divide --dim and be a multiple of --kv-heads"
        : (c.dim / c.heads) % 2 || c.dim / c.heads > 256 ? "head size (dim / heads) must be even and at most 256"
        : c.vocab < 256 + N_SPECIAL || c.vocab > (1 << 20) ? "--vocab must be in 259..1048576"
        : c.ctx < 16 ? "--ctx must be at least 16" : NULL;
    if (problem) {
        fprintf(stderr, "duet mkmodel: %s\n", problem);
        return 2;
    }
    int head_dim = c.dim / c.heads, kv_dim = c.kv_heads * head_dim;
    const char *arch = qwen ? "qwen2" : "llama";
    duet_gguf_writer_t *w;
    if (duet_gguf_writer_create(&w) != DUET_OK)
        return 1;
    rng_t rng = {(uint64_t)c.seed * 0x9e3779b97f4a7c15ull + 1};
    char key[128], name[128];
    rc = 1;
#define KEY(suffix) (snprintf(key, sizeof key, "%s.%s", arch, suffix), key)
    if (duet_gguf_writer_add_str(w, "general.architecture", arch) ||
        duet_gguf_writer_add_str(w, "general.name", "duet random test model") ||
        duet_gguf_writer_add_u32(w, KEY("block_count"), (uint32_t)c.layers) ||
        duet_gguf_writer_add_u32(w, KEY("context_length"), (uint32_t)c.ctx) ||
        duet_gguf_writer_add_u32(w, KEY("embedding_length"), (uint32_t)c.dim) ||
        duet_gguf_writer_add_u32(w, KEY("feed_forward_length"), (uint32_t)c.ffn) ||
        duet_gguf_writer_add_u32(w, KEY("attention.head_count"), (uint32_t)c.heads) ||
        duet_gguf_writer_add_u32(w, KEY("attention.head_count_kv"), (uint32_t)c.kv_heads) ||
        duet_gguf_writer_add_f32(w, KEY("rope.freq_base"), c.rope_theta) ||
        duet_gguf_writer_add_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-5f) ||
        add_vocab(w, c.vocab))
        goto done;
#undef KEY
    /* Scales keep activations O(1) through a deep random stack. */
    float ws = 1.0f / sqrtf((float)c.dim), ws_ffn = 1.0f / sqrtf((float)c.ffn);
    if (add_tensor(w, &rng, "token_embd.weight", (uint32_t)embd_type, c.vocab, c.dim, 1.0f, 0) ||
        add_tensor(w, &rng, "output_norm.weight", DUET_TYPE_F32, 1, c.dim, 0, 1.0f))
        goto done;
    for (int il = 0; il < c.layers; il++) {
#define T(suffix) (snprintf(name, sizeof name, "blk.%d.%s", il, suffix), name)
        if (add_tensor(w, &rng, T("attn_norm.weight"), DUET_TYPE_F32, 1, c.dim, 0, 1.0f) ||
            add_tensor(w, &rng, T("attn_q.weight"), (uint32_t)type, c.dim, c.dim, ws, 0) ||
            add_tensor(w, &rng, T("attn_k.weight"), (uint32_t)type, kv_dim, c.dim, ws, 0) ||
            add_tensor(w, &rng, T("attn_v.weight"), (uint32_t)type, kv_dim, c.dim, ws, 0) ||
            add_tensor(w, &rng, T("attn_output.weight"), (uint32_t)type, c.dim, c.dim, ws, 0) ||
            add_tensor(w, &rng, T("ffn_norm.weight"), DUET_TYPE_F32, 1, c.dim, 0, 1.0f) ||
            add_tensor(w, &rng, T("ffn_gate.weight"), (uint32_t)type, c.ffn, c.dim, ws, 0) ||
            add_tensor(w, &rng, T("ffn_up.weight"), (uint32_t)type, c.ffn, c.dim, ws, 0) ||
            add_tensor(w, &rng, T("ffn_down.weight"), (uint32_t)type, c.dim, c.ffn, ws_ffn, 0))
            goto done;
        if (qwen && (add_tensor(w, &rng, T("attn_q.bias"), DUET_TYPE_F32, 1, c.dim, 0.1f, 0) ||
                     add_tensor(w, &rng, T("attn_k.bias"), DUET_TYPE_F32, 1, kv_dim, 0.1f, 0) ||
                     add_tensor(w, &rng, T("attn_v.bias"), DUET_TYPE_F32, 1, kv_dim, 0.1f, 0)))
            goto done;
#undef T
    }
    duet_status_t st = duet_gguf_writer_write(w, c.out);
    if (st != DUET_OK) {
        fprintf(stderr, "duet mkmodel: cannot write %s: %s\n", c.out, duet_status_str(st));
        goto done;
    }
    fprintf(stderr, "duet mkmodel: wrote %s (%s, %d layers, dim %d, %s weights)\n", c.out, arch,
            c.layers, c.dim, duet_type_traits((uint32_t)type)->name);
    rc = 0;
done:
    duet_gguf_writer_destroy(w);
    return rc;
}
