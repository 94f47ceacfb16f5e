/* tests/unit/test_bench.c — `duet bench` runs end to end on a tiny model and prints every figure
 * the benchmark docs rely on (tables and --json). It checks that figures are there and sane,
 * never how fast they are: timings are reported by benchmarks, not asserted. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "mkmodel.h"

static const char *duet_bin;
static char model_path[128];

/* The whole stdout of a command, or NULL; *rc gets its exit status. */
static char *run(const char *cmd, int *rc)
{
    FILE *f = popen(cmd, "r");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, len = 0, n;
    char *buf = malloc(cap);
    while (buf && (n = fread(buf + len, 1, cap - 1 - len, f)) > 0)
        if ((len += n) == cap - 1) {
            char *bigger = realloc(buf, cap *= 2);
            if (!bigger)
                free(buf);
            buf = bigger;
        }
    *rc = pclose(f);
    if (buf)
        buf[len] = '\0';
    return buf;
}

/* The number after "key": in a JSON text, or -1 when absent. */
static double json_number(const char *json, const char *key)
{
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(json, pat);
    double v;
    return p && sscanf(p + strlen(pat), "%lf", &v) == 1 ? v : -1;
}

#define BENCH_ARGS "--threads 2 --reps 2 --n-prompt 24 --n-gen 6 --batch 1,3 --batch-prompt 8 --batch-gen 4"

static void test_json_has_every_figure(void)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "'%s' bench --model '%s' " BENCH_ARGS " --json", duet_bin, model_path);
    int rc;
    char *out = run(cmd, &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK(out != NULL);
    if (!out)
        return;
    const char *positive[] = {"pp512_tps", "tg128_tps", "bandwidth_gbs", "peak_gflops", "pp512_limit_gflops",
                              "tg128_bytes_per_token"};
    for (size_t i = 0; i < sizeof positive / sizeof positive[0]; i++)
        CHECK_MSG(json_number(out, positive[i]) > 0, "%s in %s", positive[i], out);
    /* A share above 1 would mean the limit is not one. Tiny matmuls make shares small, not large;
     * 2 leaves room for a probe disturbed by other work on the machine. */
    double pp_share = json_number(out, "pp512_flop_share");
    CHECK_MSG(pp_share > 0 && pp_share < 2, "pp512_flop_share %g", pp_share);
    double tg_share = json_number(out, "tg128_bandwidth_share");
    CHECK_MSG(tg_share > 0 && tg_share < 2, "tg128_bandwidth_share %g", tg_share);
    CHECK_STR_CONTAINS(out, "\"pp512_limit\": \"");
    const char *bt = strstr(out, "\"batched_tps\": {");
    CHECK(bt != NULL);
    if (bt) {
        CHECK(json_number(bt, "1") > 0);
        CHECK(json_number(bt, "3") > 0);
    }
    CHECK_STR_CONTAINS(out, "\"cpu\": \"");
    CHECK(out[0] == '{' && strchr(out, '\n') == strrchr(out, '\n'));   /* one object, one line */
    free(out);
}

static void test_tables_name_the_limits(void)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "'%s' bench --model '%s' " BENCH_ARGS, duet_bin, model_path);
    int rc;
    char *out = run(cmd, &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK_STR_CONTAINS(out, "| pp24 ");
    CHECK_STR_CONTAINS(out, "| tg6 ");
    CHECK_STR_CONTAINS(out, "| batched 3 x tg (pp8)");
    CHECK_STR_CONTAINS(out, "of bandwidth");
    CHECK_STR_CONTAINS(out, " peak");
    CHECK_STR_CONTAINS(out, "cpu: ");
    CHECK_STR_CONTAINS(out, "flags: ");
    free(out);
}

static void test_refuses_a_broken_model(void)
{
    char bad[128], cmd[512];
    snprintf(bad, sizeof bad, "/tmp/duet-test-bench-bad-%d.gguf", (int)getpid());
    FILE *f = fopen(bad, "w");
    CHECK(f != NULL);
    if (!f)
        return;
    fputs("GGUF not really", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "'%s' bench --model '%s' --json 2>&1", duet_bin, bad);
    int rc;
    char *out = run(cmd, &rc);
    CHECK(rc != 0);
    CHECK(out && !strstr(out, "pp512_tps"));
    free(out);
    unlink(bad);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s DUET_BINARY\n", argv[0]);
        return 2;
    }
    duet_bin = argv[1];
    snprintf(model_path, sizeof model_path, "/tmp/duet-test-bench-%d.gguf", (int)getpid());
    if (test_mkmodel(duet_bin, model_path, "--layers 2 --dim 64 --heads 4 --kv-heads 2 --ffn 128 --vocab 300 --type q8_0"))
        return 1;
    RUN_TEST(test_json_has_every_figure);
    RUN_TEST(test_tables_name_the_limits);
    RUN_TEST(test_refuses_a_broken_model);
    unlink(model_path);
    return check_report();
}
