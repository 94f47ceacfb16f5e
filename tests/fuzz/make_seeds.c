/* tests/fuzz/make_seeds.c — writes the committed seed inputs of the fuzz targets (a few valid
 * requests each) into corpus/<target>/. Built with the fuzz targets as fuzz_make_seeds; run
 * `fuzz_make_seeds tests/fuzz/corpus` from the repository root after changing a message. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "duet/v1/decode.pb-c.h"
#include "duet/v1/gateway.pb-c.h"
#include "duet/v1/prefill.pb-c.h"
#include "duet/v1/scheduler.pb-c.h"

static const char *root;

/* Writes prefix (n_prefix bytes) then the packed message, or then raw bytes when msg is NULL. */
static void put(const char *target, const char *name, const uint8_t *prefix, size_t n_prefix,
                const ProtobufCMessage *msg, const void *raw, size_t n_raw)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s/%s", root, target, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        perror(path);
        exit(1);
    }
    fwrite(prefix, 1, n_prefix, f);
    if (msg) {
        size_t n = protobuf_c_message_get_packed_size(msg);
        uint8_t *buf = malloc(n ? n : 1);
        protobuf_c_message_pack(msg, buf);
        fwrite(buf, 1, n, f);
        free(buf);
    } else {
        fwrite(raw, 1, n_raw, f);
    }
    fclose(f);
}

static void text_seed(const char *name, uint8_t mode, const char *text, size_t len)
{
    put("tokenizer", name, &mode, 1, NULL, text, len);
}

static void tokenizer_seeds(void)
{
    static const char hello[] = "Hello, world! The quick brown fox jumps over the lazy dog.";
    static const char chat[] = "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n";
    static const char intl[] = "naïve café — 日本語のテキスト 🎉 Ünïcödé 123 4567 89012";
    static const char code[] = "def f(x):\n    return x**2  # square\n\n\tif a != b: print('ok')\r\n";
    static const char bad[] = "abc \xff\xfe def \xe2\x82 ghi \xc0\xaf \xed\xa0\x80 end \xf0\x9f";
    text_seed("encode_plain", 0, hello, sizeof hello - 1);
    text_seed("encode_chat_special", 1, chat, sizeof chat - 1);
    text_seed("encode_chat_plain", 0, chat, sizeof chat - 1);
    text_seed("encode_intl_bos", 2, intl, sizeof intl - 1);
    text_seed("encode_code", 0, code, sizeof code - 1);
    text_seed("encode_invalid_utf8", 1, bad, sizeof bad - 1);
    static const uint16_t ids[] = {1, 2, 100, 504, 1000, 2000, 30000, 49151, 49155, 0xFFFF, 236, 256, 300};
    uint8_t buf[sizeof ids];
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        buf[2 * i] = (uint8_t)ids[i], buf[2 * i + 1] = (uint8_t)(ids[i] >> 8);
    put("tokenizer", "decode_ids", (const uint8_t[]){3}, 1, NULL, buf, sizeof buf);
    put("tokenizer", "decode_ids_special", (const uint8_t[]){7}, 1, NULL, buf, sizeof buf);
}

static void gateway_seeds(void)
{
    Duet__V1__SamplingParams sp = DUET__V1__SAMPLING_PARAMS__INIT;
    sp.temperature = 0.7f, sp.top_p = 0.9f, sp.top_k = 40, sp.min_p = 0.05f, sp.repetition_penalty = 1.1f;
    sp.seed = 42, sp.has_seed = 1;
    Duet__V1__StopParams stop = DUET__V1__STOP_PARAMS__INIT;
    char *stops[] = {"\n\n", "User:"};
    uint32_t stop_ids[] = {2};
    stop.max_tokens = 16, stop.n_stop = 2, stop.stop = stops, stop.n_stop_token_ids = 1, stop.stop_token_ids = stop_ids;

    Duet__V1__GenerateRequest g = DUET__V1__GENERATE_REQUEST__INIT;
    g.prompt = "Once upon a time";
    g.sampling = &sp;
    g.stop = &stop;
    put("gateway", "generate_prompt", (const uint8_t[]){0}, 1, &g.base, NULL, 0);

    Duet__V1__ChatMessage sys = DUET__V1__CHAT_MESSAGE__INIT, user = DUET__V1__CHAT_MESSAGE__INIT;
    sys.role = "system", sys.content = "You are a helpful assistant.";
    user.role = "user", user.content = "What is the capital of France?";
    Duet__V1__ChatMessage *msgs[] = {&sys, &user};
    Duet__V1__GenerateRequest c = DUET__V1__GENERATE_REQUEST__INIT;
    c.request_id = "chat-1";
    c.n_messages = 2, c.messages = msgs;
    c.stop = &stop;
    put("gateway", "generate_chat", (const uint8_t[]){0}, 1, &c.base, NULL, 0);

    uint32_t ids[] = {1, 504, 3493, 28, 2};
    Duet__V1__GenerateRequest t = DUET__V1__GENERATE_REQUEST__INIT;
    t.request_id = "req-abc.1:x";
    t.model = "SmolLM2-135M-Instruct.Q4_1";
    t.n_prompt_token_ids = 5, t.prompt_token_ids = ids;
    put("gateway", "generate_token_ids", (const uint8_t[]){0}, 1, &t.base, NULL, 0);
    put("gateway", "generate_token_ids_ctx8", (const uint8_t[]){4}, 1, &t.base, NULL, 0);

    Duet__V1__GenerateRequest s = DUET__V1__GENERATE_REQUEST__INIT;
    s.prompt = "Hi";
    put("gateway", "generate_bare_ctx64", (const uint8_t[]){2}, 1, &s.base, NULL, 0);

    Duet__V1__TokenizeRequest tk = DUET__V1__TOKENIZE_REQUEST__INIT;
    tk.text = "Hello world, <|im_start|> is text here.";
    tk.add_special_tokens = 1;
    put("gateway", "tokenize_text", (const uint8_t[]){1}, 1, &tk.base, NULL, 0);
    Duet__V1__TokenizeRequest tc = DUET__V1__TOKENIZE_REQUEST__INIT;
    tc.n_messages = 2, tc.messages = msgs;
    put("gateway", "tokenize_chat", (const uint8_t[]){1}, 1, &tc.base, NULL, 0);
}

static void decode_seeds(void)
{
    Duet__V1__SamplingParams sp = DUET__V1__SAMPLING_PARAMS__INIT;
    sp.temperature = 0.8f, sp.top_k = 50, sp.seed = 7, sp.has_seed = 1;
    Duet__V1__StopParams stop = DUET__V1__STOP_PARAMS__INIT;
    uint32_t stop_ids[] = {2, 0};
    stop.max_tokens = 10, stop.n_stop_token_ids = 2, stop.stop_token_ids = stop_ids;
    uint32_t prompt[] = {1, 504, 3493, 28};
    Duet__V1__DecodeRequest q = DUET__V1__DECODE_REQUEST__INIT;
    q.request_id = "req-1";
    q.n_prompt_token_ids = 4, q.prompt_token_ids = prompt;
    q.sampling = &sp;
    q.stop = &stop;
    q.prefill_instance_id = "host-1-abcd";
    q.prefill_address = "127.0.0.1:7001";
    put("decode_request", "fresh", (const uint8_t[]){0}, 1, &q.base, NULL, 0);

    uint32_t gen[] = {17, 18};
    Duet__V1__DecodeRequest r = q;
    r.attempt = 1;
    r.n_generated_token_ids = 2, r.generated_token_ids = gen;
    r.prefill_instance_id = "", r.prefill_address = "";
    put("decode_request", "resumed", (const uint8_t[]){0}, 1, &r.base, NULL, 0);

    uint32_t many[60];
    for (int i = 0; i < 60; i++)
        many[i] = (uint32_t)(i * 7 % 250);
    Duet__V1__StopParams st2 = DUET__V1__STOP_PARAMS__INIT;
    st2.max_tokens = 4;
    Duet__V1__DecodeRequest l = DUET__V1__DECODE_REQUEST__INIT;
    l.request_id = "long";
    l.n_prompt_token_ids = 60, l.prompt_token_ids = many;
    l.stop = &st2;
    put("decode_request", "near_ctx64_vocab256", (const uint8_t[]){5}, 1, &l.base, NULL, 0);
}

static void prefill_seeds(void)
{
    static const struct {
        const char *name;
        uint8_t mode;
        uint32_t n_layer, n_kv_head, head_dim;
    } layouts[] = {{"smollm2", 0, 30, 3, 64}, {"tiny_ctx64", 5, 2, 1, 8}};
    for (size_t k = 0; k < 2; k++) {
        uint32_t tokens[20];
        for (int i = 0; i < 20; i++)
            tokens[i] = (uint32_t)(1 + i * 11 % 200);
        uint32_t blocks[] = {3, 4}, gens[] = {1, 2};
        uint64_t block_bytes = (uint64_t)layouts[k].n_layer * 2 * layouts[k].n_kv_head * 16 * layouts[k].head_dim * 2;
        Duet__V1__KvTarget t = DUET__V1__KV_TARGET__INIT;
        t.decode_instance_id = "decode-host-42-0badcafe";
        t.ucx_worker_address.len = 8, t.ucx_worker_address.data = (uint8_t *)"ucxaddr!";
        t.rkey.len = 4, t.rkey.data = (uint8_t *)"rkey";
        t.remote_base = 0x7f0000000000ull;
        t.pool_bytes = 64 * block_bytes;
        t.n_block_ids = 2, t.block_ids = blocks;
        t.n_block_generations = 2, t.block_generations = gens;
        t.n_layer = layouts[k].n_layer, t.n_kv_head = layouts[k].n_kv_head, t.head_dim = layouts[k].head_dim;
        t.block_tokens = 16, t.elem_bytes = 2;
        Duet__V1__SamplingParams sp = DUET__V1__SAMPLING_PARAMS__INIT;
        sp.temperature = 0.5f, sp.top_p = 0.95f, sp.has_seed = 1, sp.seed = 99;
        Duet__V1__PrefillRequest q = DUET__V1__PREFILL_REQUEST__INIT;
        q.request_id = "req-7";
        q.n_token_ids = 20, q.token_ids = tokens;
        q.sampling = &sp;
        q.kv_target = &t;
        put("prefill_request", layouts[k].name, &layouts[k].mode, 1, &q.base, NULL, 0);
    }
}

static void route_seeds(void)
{
    /* Instances: role, id, has address, kv_blocks_free (int16 LE), running, queued (uint16 LE). */
    static const uint8_t pair[] = {3,
                                   1, 0, 1, 100, 0, 3, 0, 0,     /* decode i0, 100 free */
                                   0, 1, 1, 0, 0, 0, 10, 0,      /* prefill i1, 10 queued */
                                   2, 2, 1, 50, 0, 1, 0, 0};     /* mixed i2, 50 free */
    static const uint8_t tied[] = {4,
                                   1, 0, 1, 20, 0, 2, 0, 0,
                                   1, 3, 1, 20, 0, 2, 0, 0,
                                   0, 1, 1, 0, 0, 0, 5, 0,
                                   0, 4, 1, 0, 0, 0, 5, 0};
    Duet__V1__RouteRequest rq = DUET__V1__ROUTE_REQUEST__INIT;
    rq.request_id = "req-1";
    rq.prompt_tokens = 20, rq.max_tokens = 100;
    uint8_t buf[256];
    size_t n = protobuf_c_message_pack(&rq.base, buf);
    put("route", "pair", pair, sizeof pair, &rq.base, NULL, 0);
    put("route", "tied", tied, sizeof tied, &rq.base, NULL, 0);
    char *ex[] = {"i0"};
    Duet__V1__RouteRequest retry = rq;
    retry.attempt = 1, retry.n_exclude_instances = 1, retry.exclude_instances = ex;
    put("route", "retry_excluding", pair, sizeof pair, &retry.base, NULL, 0);
    put("route", "no_instances", (const uint8_t[]){0}, 1, NULL, buf, n);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR (tests/fuzz/corpus)\n", argv[0]);
        return 2;
    }
    root = argv[1];
    tokenizer_seeds();
    gateway_seeds();
    decode_seeds();
    prefill_seeds();
    route_seeds();
    return 0;
}
