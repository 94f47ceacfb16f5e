/* tests/integration/test_mesh_device.c — the mesh with --device cuda: prefill and decode keep their
 * KV pools in device memory and the prompt's KV crosses between them (through host mirrors, or
 * GPU to GPU where UCX has CUDA). Decode runs with --kv-verify, so every received prompt is read
 * back from the decode's device pool and checked against the checksum the prefill computed over
 * its own: a missed copy or a wrong offset anywhere on the way fails the count of verified
 * transfers, whatever the tokens look like. The streams must also give in-process greedy text.
 *   emu: the services built against kernels/emu (emu-bin/), a small random model; runs anywhere
 *        (ctest runs it twice: prefill sending layer by layer, and DUET_KV_SEND=prompt).
 *   gpu: the real services on a GPU; exit 77 (skipped) without a usable CUDA device or backend.
 * usage: test_mesh_device DUET_BINARY emu EMU_BIN_DIR | DUET_BINARY gpu */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "gateway_call.h"
#include "mesh_harness.h"
#include "rpc.h"

#define SKIP_CODE  77
#define MAX_TOKENS 6
#define N_PROMPTS  3

/* Lengths that end inside the first block, across a block boundary, and over several blocks. */
static const char *const prompts[N_PROMPTS] = {
    "Hi",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the old gate.",
    "Write down every step of making bread: weigh the flour, add water and salt, knead the dough "
    "until it is smooth, let it rise in a warm room for two hours, shape it, let it rise again, "
    "then bake it in a hot oven until the crust is brown and it sounds hollow when tapped.",
};

static const char *duet_bin, *mode, *emu_bin_dir;
static char run_dir[] = "/tmp/duet-mesh-device-XXXXXX";
static char model[512], bin_dir[600];
static int port;
static pid_t mesh = -1;
static char *expected[N_PROMPTS];
static duet_rpc_client_t *client;

static int run_quiet(char *const argv[])
{
    pid_t pid = fork();
    if (pid == 0) {
        freopen("/dev/null", "w", stdout);
        freopen("/dev/null", "w", stderr);
        execv(argv[0], argv);
        _exit(127);
    }
    int status;
    return pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* emu: a directory with the gateway and scheduler of this build and the emulated decode and
 * prefill, for duet up --bin-dir. */
static int make_bin_dir(void)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s", duet_bin);
    *strrchr(dir, '/') = '\0';
    snprintf(bin_dir, sizeof bin_dir, "%s/bin", run_dir);
    if (mkdir(bin_dir, 0755) != 0)
        return -1;
    static const char *const from_build[] = {"duet", "duet-gateway", "duet-scheduler"};
    static const char *const from_emu[] = {"duet-decode", "duet-prefill"};
    char src[1100], dst[700];
    for (int i = 0; i < 3; i++) {
        snprintf(src, sizeof src, "%s/%s", dir, from_build[i]);
        snprintf(dst, sizeof dst, "%s/%s", bin_dir, from_build[i]);
        if (symlink(src, dst) != 0)
            return -1;
    }
    for (int i = 0; i < 2; i++) {
        snprintf(src, sizeof src, "%s/%s", emu_bin_dir, from_emu[i]);
        snprintf(dst, sizeof dst, "%s/%s", bin_dir, from_emu[i]);
        if (access(src, X_OK) != 0 || symlink(src, dst) != 0)
            return -1;
    }
    return 0;
}

static void test_streams_match_in_process(void)
{
    for (int i = 0; i < N_PROMPTS; i++) {
        gateway_call_t c = {.prompt = prompts[i], .max_tokens = MAX_TOKENS, .temperature = 0,
                            .seed = -1, .ignore_eos = 1, .timeout_ms = 300000};
        char address[32];
        snprintf(address, sizeof address, "127.0.0.1:%d", port);
        gateway_generate(client, address, &c);
        CHECK_MSG(c.status == DUET_OK, "prompt %d: %s: %s", i, duet_status_str(c.status), c.error);
        CHECK_MSG(c.n_tokens == MAX_TOKENS, "prompt %d: %d tokens, expected %d", i, c.n_tokens, MAX_TOKENS);
        CHECK_MSG(expected[i] && strcmp(c.text, expected[i]) == 0,
                  "prompt %d differs:\n  mesh:       [%s]\n  in process: [%s]", i, c.text,
                  expected[i] ? expected[i] : "(none)");
        fprintf(stderr, "  prompt %d: %d tokens, first token %.0f ms, total %.0f ms\n", i, c.n_tokens,
                c.first_ns / 1e6, c.done_ns / 1e6);
        free(c.text);
    }
}

/* duet up numbers metrics ports from port + 1: scheduler, prefill-0, decode-0, gateway. */
static void test_every_transfer_verified(void)
{
    char *text = mesh_metrics_get(port + 3);
    CHECK_MSG(text != NULL, "decode-0 serves no /metrics on port %d", port + 3);
    if (!text)
        return;
    double ok = mesh_metric_value(text, "duet_kv_verify_total{result=\"ok\"}");
    double bad = mesh_metric_value(text, "duet_kv_verify_total{result=\"mismatch\"}");
    double bytes = mesh_metric_value(text, "duet_kv_transfer_bytes_total");
    fprintf(stderr, "  decode: %.0f transfers verified, %.0f mismatched, %.0f KV bytes received\n", ok, bad, bytes);
    CHECK_MSG(ok == N_PROMPTS, "%.0f prompt KV transfers verified, expected %d", ok, N_PROMPTS);
    CHECK_MSG(bad == 0, "%.0f prompt KV transfers did not match the prefill's checksum", bad);
    CHECK_MSG(bytes > 0, "no KV bytes reached decode (was the prefill done locally?)");
    free(text);
}

/* Both compute services said where their pool is: on the device, not in host memory. */
static void test_pools_on_the_device(void)
{
    static const char *const logs[] = {"decode-0.log", "prefill-0.log"};
    for (int i = 0; i < 2; i++) {
        char path[600], line[1024];
        snprintf(path, sizeof path, "%s/%s", run_dir, logs[i]);
        FILE *f = fopen(path, "r");
        CHECK_MSG(f != NULL, "no log %s", path);
        if (!f)
            continue;
        int found = 0;
        while (fgets(line, sizeof line, f))
            if (strstr(line, "KV pool of") && strstr(line, ": device memory, transfers"))
                found = 1;
        fclose(f);
        CHECK_MSG(found, "%s does not report a KV pool in device memory", logs[i]);
    }
}

#ifdef DUET_TEST_NO_CUDA
static int gpu_available(void)
{
    fprintf(stderr, "SKIP: this build has no nvcc, so there is no CUDA backend to run the mesh on a GPU\n");
    return 0;
}
#else
static int gpu_available(void)
{
    char *argv[] = {(char *)duet_bin, "generate", "--device", "cuda", "--model", model, "--max-tokens", "1",
                    "--prompt", "x", NULL};
    if (run_quiet(argv) == 0)
        return 1;
    fprintf(stderr, "SKIP: no usable CUDA device (duet generate --device cuda failed)\n");
    return 0;
}
#endif

int main(int argc, char **argv)
{
    if (argc < 3 || (strcmp(argv[2], "emu") == 0 && argc < 4) ||
        (strcmp(argv[2], "emu") != 0 && strcmp(argv[2], "gpu") != 0)) {
        fprintf(stderr, "usage: %s DUET_BINARY emu EMU_BIN_DIR | DUET_BINARY gpu\n", argv[0]);
        return 2;
    }
    /* Absolute, since the emu bin directory holds symbolic links to them. */
    static char duet_abs[PATH_MAX], emu_abs[PATH_MAX];
    if (!realpath(argv[1], duet_abs) || (argc > 3 && !realpath(argv[3], emu_abs))) {
        perror("realpath");
        return 2;
    }
    duet_bin = duet_abs;
    mode = argv[2];
    emu_bin_dir = argc > 3 ? emu_abs : NULL;
    int gpu = strcmp(mode, "gpu") == 0;
    if (!mkdtemp(run_dir)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(model, sizeof model, "%s/model.gguf", run_dir);
    char *mk[] = {(char *)duet_bin, "mkmodel", "--out", model, NULL};
    if (run_quiet(mk) != 0) {
        fprintf(stderr, "duet mkmodel failed\n");
        return 1;
    }
    if (gpu && !gpu_available())
        return SKIP_CODE;
    if (!gpu && make_bin_dir() != 0) {
        fprintf(stderr, "cannot set up %s with the emulated services of %s\n", bin_dir, emu_bin_dir);
        return 1;
    }
    /* What in-process greedy generation writes (on the CPU here; on the GPU in gpu mode, where
     * the in-process run uses the same kernels as the services). */
    for (int i = 0; i < N_PROMPTS; i++) {
        char *gargv[] = {(char *)duet_bin, "generate", "--device", gpu ? "cuda" : "cpu", "--model", model,
                         "--temperature", "0", "--ignore-eos", "--max-tokens", "6", "--ctx", "1024",
                         "--prompt", (char *)prompts[i], NULL};
        expected[i] = gateway_capture(gargv);
        CHECK_MSG(expected[i] != NULL, "duet generate failed for prompt %d", i);
    }
    if (duet_rpc_client_create(&client) != DUET_OK) {
        fprintf(stderr, "cannot create a gRPC client\n");
        return 1;
    }
    mesh_sanitizer_setup(run_dir);
    setenv("DUET_KV_VERIFY", "1", 1);   /* read by decode */
    port = mesh_free_port();
    const char *extra[] = {"--device", "cuda", "--prefill", "1", "--decode", "1", "--start-timeout", "180",
                           gpu ? NULL : "--bin-dir", bin_dir, NULL};
    mesh = mesh_start(duet_bin, model, port, run_dir, extra);
    if (mesh < 0) {
        fprintf(stderr, "duet up did not come up; logs are in %s\n", run_dir);
        return 1;
    }
    RUN_TEST(test_pools_on_the_device);
    RUN_TEST(test_streams_match_in_process);
    RUN_TEST(test_every_transfer_verified);
    CHECK_MSG(mesh_stop(mesh) == 0, "duet up did not stop cleanly");
    CHECK_MSG(mesh_sanitizer_reports(run_dir) == 0, "sanitizer reports (above)");
    duet_rpc_client_destroy(client);
    for (int i = 0; i < N_PROMPTS; i++)
        free(expected[i]);
    if (check_failures)
        fprintf(stderr, "service logs are in %s\n", run_dir);
    return check_report();
}
