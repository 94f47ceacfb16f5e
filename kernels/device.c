/* kernels/device.c — device names to backends. Built twice: against the CUDA backend (when nvcc
 * was found) for what ships, and against kernels/emu for the tests that run services on the
 * emulated CUDA backend; without either, "cuda" is refused with the reason. */
#include "device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu_backend.h"
#ifdef DUET_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

/* The N of "cuda:N", or -1 when what follows the colon is not a small non-negative integer. */
static int cuda_ordinal(const char *s)
{
    char *end;
    long n = strtol(s, &end, 10);
    return end != s && *end == '\0' && n >= 0 && n < 1024 ? (int)n : -1;
}

duet_status_t duet_device_open(const char *device, int n_threads, duet_backend_t **be_p, char *why,
                               size_t why_len)
{
    duet_status_t st;
    if (why_len > 0)
        why[0] = '\0';
    if (!device || strcmp(device, "cpu") == 0) {
        duet_cpu_conf_t cc = {.n_threads = n_threads, .isa = DUET_CPU_ISA_AUTO};
        if ((st = duet_backend_cpu_create(&cc, be_p)) != DUET_OK)
            snprintf(why, why_len, "cannot start the CPU backend with %d threads: %s", n_threads,
                     duet_status_str(st));
        return st;
    }
    if (strncmp(device, "cuda", 4) == 0 && (device[4] == '\0' || device[4] == ':')) {
        int ordinal = device[4] == ':' ? cuda_ordinal(device + 5) : 0;
        if (ordinal < 0) {
            snprintf(why, why_len, "device '%s': expected cuda:N with N a device number", device);
            return DUET_ERR_INVALID;
        }
#ifdef DUET_HAVE_CUDA
        duet_cuda_conf_t cc = {.device = ordinal};
        if ((st = duet_backend_cuda_create(&cc, be_p)) != DUET_OK)
            snprintf(why, why_len, "cannot start the CUDA backend on device %d: %s (the log says why)",
                     ordinal, duet_status_str(st));
        return st;
#else
        snprintf(why, why_len, "this build has no CUDA backend (nvcc was not found when it was built)");
        return DUET_ERR_UNSUPPORTED;
#endif
    }
    snprintf(why, why_len, "unknown device '%s' (cpu, cuda or cuda:N)", device);
    return DUET_ERR_INVALID;
}
