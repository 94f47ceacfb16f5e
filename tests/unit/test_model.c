/* tests/unit/test_model.c — model loading refuses files that are valid GGUF but not a usable
 * model (wrong architecture, missing metadata or tensors, wrong shapes), each with a message
 * naming the problem, and loads a random model made by `duet mkmodel`.
 * usage: test_model DUET_BINARY */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "mkmodel.h"
#include "cpu/cpu_backend.h"
#include "model.h"

static const char *duet_bin;
static duet_backend_t *be;
static char path[128];

/* Writes a GGUF with llama metadata for a 1-layer dim-32 model and the given architecture;
 * with_tensors adds every tensor but one named skip (NULL: none), and gives ffn_up bad_rows rows. */
static void write_model(const char *arch, int with_tensors, const char *skip, int bad_rows)
{
    duet_gguf_writer_t *w;
    CHECK_EQ_INT(duet_gguf_writer_create(&w), DUET_OK);
    char key[64];
    duet_gguf_writer_add_str(w, "general.architecture", arch);
#define K(s) (snprintf(key, sizeof key, "%s.%s", arch, s), key)
    duet_gguf_writer_add_u32(w, K("block_count"), 1);
    duet_gguf_writer_add_u32(w, K("embedding_length"), 32);
    duet_gguf_writer_add_u32(w, K("feed_forward_length"), 64);
    duet_gguf_writer_add_u32(w, K("attention.head_count"), 2);
#undef K
    const char *tokens[300];
    char store[300][8];
    int32_t types[300];
    for (int i = 0; i < 300; i++) {
        snprintf(store[i], sizeof store[i], "t%d", i);
        tokens[i] = store[i];
        types[i] = 1;
    }
    duet_gguf_writer_add_str(w, "tokenizer.ggml.model", "gpt2");
    duet_gguf_writer_add_str_array(w, "tokenizer.ggml.tokens", tokens, 300);
    duet_gguf_writer_add_array(w, "tokenizer.ggml.token_type", DUET_GGUF_INT32, types, 300);
    duet_gguf_writer_add_str_array(w, "tokenizer.ggml.merges", tokens, 0);
    if (with_tensors) {
        static float data[300 * 64];
        struct { const char *name; int rows, cols; } t[] = {
            {"token_embd.weight", 300, 32}, {"output_norm.weight", 1, 32},
            {"blk.0.attn_norm.weight", 1, 32}, {"blk.0.attn_q.weight", 32, 32},
            {"blk.0.attn_k.weight", 32, 32}, {"blk.0.attn_v.weight", 32, 32},
            {"blk.0.attn_output.weight", 32, 32}, {"blk.0.ffn_norm.weight", 1, 32},
            {"blk.0.ffn_gate.weight", 64, 32}, {"blk.0.ffn_up.weight", 64, 32},
            {"blk.0.ffn_down.weight", 32, 64},
        };
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
            if (skip && strcmp(skip, t[i].name) == 0)
                continue;
            int rows = strcmp(t[i].name, "blk.0.ffn_up.weight") == 0 && bad_rows ? bad_rows : t[i].rows;
            int64_t ne[2] = {t[i].cols, rows};
            CHECK_EQ_INT(duet_gguf_writer_add_tensor(w, t[i].name, DUET_TYPE_F32, rows == 1 ? 1 : 2, ne,
                                                     data, (size_t)rows * t[i].cols * sizeof(float)), DUET_OK);
        }
    }
    CHECK_EQ_INT(duet_gguf_writer_write(w, path), DUET_OK);
    duet_gguf_writer_destroy(w);
}

static void expect_refusal(const char *needle)
{
    duet_model_t *m = NULL;
    char err[512] = "";
    duet_status_t st = duet_model_load(path, be, &m, err, sizeof err);
    CHECK(st != DUET_OK);
    CHECK(m == NULL);
    CHECK_STR_CONTAINS(err, needle);
}

static void test_refuses_unknown_architecture(void)
{
    write_model("gpt2", 1, NULL, 0);
    expect_refusal("architecture 'gpt2' is not supported");
}

static void test_refuses_missing_tensor(void)
{
    write_model("llama", 1, "blk.0.ffn_down.weight", 0);
    expect_refusal("tensor 'blk.0.ffn_down.weight' is missing");
    write_model("llama", 0, NULL, 0);
    expect_refusal("tensor 'token_embd.weight' is missing");
}

static void test_refuses_wrong_shape(void)
{
    write_model("llama", 1, NULL, 48);
    expect_refusal("tensor 'blk.0.ffn_up.weight' has shape [32, 48, 1, 1], expected [32, 64]");
}

static void test_loads_a_complete_model(void)
{
    write_model("llama", 1, NULL, 0);
    duet_model_t *m = NULL;
    char err[512] = "";
    CHECK_EQ_INT(duet_model_load(path, be, &m, err, sizeof err), DUET_OK);
    if (m) {
        CHECK_EQ_INT(m->hp.n_kv_head, 2);   /* defaults to the head count */
        CHECK_EQ_INT(m->hp.head_dim, 16);
        CHECK(m->output.data == m->tok_embd.data);  /* tied embeddings */
        duet_model_free(m);
    }
}

static void test_loads_mkmodel_output(void)
{
    CHECK_EQ_INT(test_mkmodel(duet_bin, path, "--arch qwen2 --type q4_0"), 0);
    duet_model_t *m = NULL;
    char err[512] = "";
    CHECK_EQ_INT(duet_model_load(path, be, &m, err, sizeof err), DUET_OK);
    if (m) {
        CHECK_EQ_INT(m->hp.arch, DUET_ARCH_QWEN2);
        CHECK_EQ_INT(m->hp.rope_neox, 1);
        CHECK(m->layers[0].bq != NULL);
        duet_model_free(m);
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DUET_BINARY\n", argv[0]);
        return 2;
    }
    duet_bin = argv[1];
    snprintf(path, sizeof path, "/tmp/duet-test-model-%d.gguf", (int)getpid());
    duet_cpu_conf_t cc = {.n_threads = 1, .isa = DUET_CPU_ISA_AUTO};
    CHECK_EQ_INT(duet_backend_cpu_create(&cc, &be), DUET_OK);
    RUN_TEST(test_refuses_unknown_architecture);
    RUN_TEST(test_refuses_missing_tensor);
    RUN_TEST(test_refuses_wrong_shape);
    RUN_TEST(test_loads_a_complete_model);
    RUN_TEST(test_loads_mkmodel_output);
    be->destroy(be);
    unlink(path);
    return check_report();
}
