/* tests/fuzz/fuzz_model.h — the real model's vocabulary and chat template for the fuzz targets
 * that tokenize, loaded once from $DUET_FUZZ_MODEL (set by ctest from DUET_MODEL_PATH). */
#ifndef DUET_TESTS_FUZZ_MODEL_H
#define DUET_TESTS_FUZZ_MODEL_H

#include "chat.h"
#include "gguf.h"
#include "tokenizer.h"

typedef struct {
    duet_gguf_t *gguf;          /* kept open: the tokenizer's strings live in it */
    duet_tokenizer_t *tok;
    duet_chat_template_t chat;
    char model_id[128];
    char model_file[128];
    int n_vocab;
    int spellable[256];         /* whether the vocabulary has the byte's own token: encoding
                                 * drops the others (SmolLM2: 0xC0 0xC1 0xF1 0xF2 0xF5-0xFF) */
} fuzz_model_t;

/* Loads the model the first time; exits the process when it cannot (a setup error, not a finding). */
const fuzz_model_t *fuzz_model_get(void);

#endif
