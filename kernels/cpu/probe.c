/* kernels/cpu/probe.c — peak f32 FLOP/s, int8 dot-product rate and memory read bandwidth of this
 * machine, measured with plain threads. The vector loops carry their ISA as a function target
 * (the file itself is built for the baseline) and run only after a CPU check. */
#include "probe.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../lib/base/clock.h"
#include "cpu_backend.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define PROBE_X86 1
#define TARGET_AVX512 __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni")))
#define TARGET_AVX2 __attribute__((target("avx2,fma")))
#endif

enum { PROBE_FMA, PROBE_INT8, PROBE_READ };

typedef struct {
    int kind;
    int wide;               /* AVX-512 usable */
    long iters;
    const uint8_t *buf;     /* PROBE_READ: this thread's share */
    size_t bytes;
    atomic_int *go;         /* threads start together once it is set */
    double sink;            /* keeps the result alive */
    int64_t ns;
} probe_arg_t;

/* 12 independent chains: enough to cover FMA latency times two FMA ports. */
#ifdef PROBE_X86
TARGET_AVX512 static double fma_loop_avx512(long iters)
{
    __m512 a[12], m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++)
        a[i] = _mm512_set1_ps((float)i);
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 12; i++)
            a[i] = _mm512_fmadd_ps(a[i], m, c);
    __m512 s = a[0];
    for (int i = 1; i < 12; i++)
        s = _mm512_add_ps(s, a[i]);
    return _mm512_reduce_add_ps(s);
}

TARGET_AVX2 static double fma_loop_avx2(long iters)
{
    __m256 a[12], m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++)
        a[i] = _mm256_set1_ps((float)i);
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 12; i++)
            a[i] = _mm256_fmadd_ps(a[i], m, c);
    float out[8];
    __m256 s = a[0];
    for (int i = 1; i < 12; i++)
        s = _mm256_add_ps(s, a[i]);
    _mm256_storeu_ps(out, s);
    return out[0];
}
#endif

static double fma_loop(int wide, long iters)
{
#ifdef PROBE_X86
    return wide ? fma_loop_avx512(iters) : fma_loop_avx2(iters);
#else
    float a[12] = {0};
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 12; i++)
            a[i] = a[i] * 0.999999f + 1e-7f;
    return a[0] + a[11];
#endif
}

#ifdef PROBE_X86
TARGET_AVX512
#endif
static double int8_loop(long iters)
{
#ifdef PROBE_X86
    __m512i a[12], x = _mm512_set1_epi8(3), y = _mm512_set1_epi8(-2);
    for (int i = 0; i < 12; i++)
        a[i] = _mm512_set1_epi32(i);
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < 12; i++)
            a[i] = _mm512_dpbusd_epi32(a[i], x, y);
    __m512i s = a[0];
    for (int i = 1; i < 12; i++)
        s = _mm512_xor_si512(s, a[i]);
    return (double)_mm512_reduce_or_epi32(s);  /* a sink, free of overflow */
#else
    (void)iters;
    return 0;
#endif
}

#ifdef PROBE_X86
TARGET_AVX512 static double read_loop_avx512(const uint8_t *buf, size_t bytes)
{
    /* xor, not add: the sink only has to depend on every byte, and cannot overflow. */
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i + 256 <= bytes; i += 256) {
        s0 = _mm512_xor_si512(s0, _mm512_load_si512((const void *)(buf + i)));
        s1 = _mm512_xor_si512(s1, _mm512_load_si512((const void *)(buf + i + 64)));
        s2 = _mm512_xor_si512(s2, _mm512_load_si512((const void *)(buf + i + 128)));
        s3 = _mm512_xor_si512(s3, _mm512_load_si512((const void *)(buf + i + 192)));
    }
    __m512i x = _mm512_xor_si512(_mm512_xor_si512(s0, s1), _mm512_xor_si512(s2, s3));
    return (double)(uint64_t)_mm512_reduce_or_epi64(x);
}
#endif

static double read_loop(int wide, const uint8_t *buf, size_t bytes)
{
#ifdef PROBE_X86
    if (wide)
        return read_loop_avx512(buf, bytes);
#endif
    (void)wide;
    uint64_t s[4] = {0};
    for (size_t i = 0; i + 32 <= bytes; i += 32)
        for (int j = 0; j < 4; j++) {
            uint64_t v;
            memcpy(&v, buf + i + 8 * j, 8);
            s[j] += v;
        }
    return (double)(s[0] + s[1] + s[2] + s[3]);
}

static void *probe_thread(void *p)
{
    probe_arg_t *a = p;
    while (!atomic_load(a->go))
        sched_yield();
    int64_t t0 = duet_clock_ns();
    switch (a->kind) {
    case PROBE_FMA:  a->sink = fma_loop(a->wide, a->iters); break;
    case PROBE_INT8: a->sink = int8_loop(a->iters); break;
    default:         a->sink = read_loop(a->wide, a->buf, a->bytes); break;
    }
    a->ns = duet_clock_ns() - t0;
    return NULL;
}

/* Runs the probe on n threads at once; returns the longest thread time in seconds, or 0. */
static double run_threads(int n, int kind, int wide, long iters, const uint8_t *buf, size_t bytes)
{
    if (n < 1 || n > 256)
        return 0;
    pthread_t th[256];
    probe_arg_t args[256];
    atomic_int go;
    atomic_init(&go, 0);
    size_t share = bytes / (size_t)n & ~(size_t)255;
    int started = 1;
    for (int i = 0; i < n; i++)
        args[i] = (probe_arg_t){kind, wide, iters, buf ? buf + (size_t)i * share : NULL, share, &go, 0, 0};
    for (int i = 1; i < n && started == i; i++)
        if (pthread_create(&th[i], NULL, probe_thread, &args[i]) == 0)
            started++;
    atomic_store(&go, 1);
    probe_thread(&args[0]);
    int64_t worst = args[0].ns;
    for (int i = 1; i < started; i++) {
        pthread_join(th[i], NULL);
        if (args[i].ns > worst)
            worst = args[i].ns;
    }
    return started == n ? worst / 1e9 : 0;
}

double duet_cpu_probe_peak_gflops(int n_threads)
{
    int wide = duet_cpu_isa_supported(DUET_CPU_ISA_AVX512);
#ifndef PROBE_X86
    wide = 0;
#else
    if (!wide && !duet_cpu_isa_supported(DUET_CPU_ISA_AVX2))
        return 0;
#endif
    long iters = 4000000;
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        double s = run_threads(n_threads, PROBE_FMA, wide, iters, NULL, 0);
        double lanes = wide ? 16 : 8;
#ifndef PROBE_X86
        lanes = 1;  /* the plain loop: 12 scalar FMAs per iteration */
#endif
        double flops = (double)n_threads * (double)iters * 12 * lanes * 2;
        if (s > 0 && flops / s / 1e9 > best)
            best = flops / s / 1e9;
    }
    return best;
}

double duet_cpu_probe_peak_int8_gops(int n_threads)
{
#ifdef PROBE_X86
    if (!duet_cpu_isa_supported(DUET_CPU_ISA_AVX512))
        return 0;
    long iters = 4000000;
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        double s = run_threads(n_threads, PROBE_INT8, 1, iters, NULL, 0);
        double ops = (double)n_threads * (double)iters * 12 * 64 * 2;
        if (s > 0 && ops / s / 1e9 > best)
            best = ops / s / 1e9;
    }
    return best;
#else
    (void)n_threads;
    return 0;
#endif
}

double duet_cpu_probe_read_gbs(int n_threads, size_t bytes)
{
    bytes &= ~(size_t)4095;
    uint8_t *buf = aligned_alloc(4096, bytes);
    if (!buf)
        return 0;
    memset(buf, 1, bytes);  /* fault every page in before timing */
    double best = 0;
    for (int rep = 0; rep < 5; rep++) {
        double s = run_threads(n_threads, PROBE_READ, duet_cpu_isa_supported(DUET_CPU_ISA_AVX512), 0,
                               buf, bytes);
        size_t moved = bytes / (size_t)n_threads & ~(size_t)255;
        if (s > 0 && (double)moved * n_threads / s / 1e9 > best)
            best = (double)moved * n_threads / s / 1e9;
    }
    free(buf);
    return best;
}
