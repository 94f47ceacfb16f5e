/* tests/fuzz/fuzz_model.c — loads $DUET_FUZZ_MODEL's vocabulary for the tokenizing fuzz targets. */
#include "fuzz_model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static fuzz_model_t model;
static int loaded;

/* GPT-2's byte → character map (bytes_to_unicode): printable Latin-1 maps to itself, the rest
 * to U+0100 onwards in byte order. Written here independently of lib/engine. */
static void init_spellable(const duet_tokenizer_t *tok, int *spellable)
{
    int next = 256;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        int cp = printable ? b : next++;
        char s[3] = {0};
        if (cp < 0x80)
            s[0] = (char)cp;
        else
            s[0] = (char)(0xC0 | cp >> 6), s[1] = (char)(0x80 | (cp & 0x3F));
        spellable[b] = duet_tokenizer_find(tok, s) >= 0;
    }
}

const fuzz_model_t *fuzz_model_get(void)
{
    if (loaded)
        return &model;
    const char *path = getenv("DUET_FUZZ_MODEL");
    char err[512] = "";
    if (!path || !path[0]) {
        fprintf(stderr, "fuzz: set DUET_FUZZ_MODEL to a GGUF model (ctest sets it from DUET_MODEL_PATH)\n");
        exit(2);
    }
    if (duet_gguf_open(path, &model.gguf, err, sizeof err) != DUET_OK ||
        duet_tokenizer_create(model.gguf, &model.tok, err, sizeof err) != DUET_OK ||
        duet_chat_template_init(&model.chat, model.gguf) != DUET_OK) {
        fprintf(stderr, "fuzz: %s: cannot load: %s\n", path, err);
        exit(2);
    }
    const char *base = strrchr(path, '/');
    snprintf(model.model_file, sizeof model.model_file, "%.127s", base ? base + 1 : path);
    duet_gguf_str_t s;
    if (duet_gguf_get_str(model.gguf, "general.name", &s) == DUET_OK && s.len > 0)
        snprintf(model.model_id, sizeof model.model_id, "%.*s", (int)(s.len < 127 ? s.len : 127), s.ptr);
    else
        snprintf(model.model_id, sizeof model.model_id, "%s", model.model_file);
    model.n_vocab = duet_tokenizer_n_vocab(model.tok);
    init_spellable(model.tok, model.spellable);
    loaded = 1;
    return &model;
}
