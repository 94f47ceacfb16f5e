/* kernels/cpu/probe.h — measures this machine's limits for the benchmark: the f32 FMA peak and
 * the memory read bandwidth with a given number of threads (what a roofline compares against). */
#ifndef DUET_KERNELS_CPU_PROBE_H
#define DUET_KERNELS_CPU_PROBE_H

#include <stddef.h>

/* Peak f32 GFLOP/s of n_threads running independent FMAs (512-bit when the CPU has AVX-512,
 * else 256-bit, else scalar), best of a few short runs; 0 on failure. */
double duet_cpu_probe_peak_gflops(int n_threads);
/* Peak int8 dot-product GOP/s (one multiply and one add per byte pair, VNNI vpdpbusd) with
 * n_threads; 0 when the CPU has no AVX-512 VNNI. */
double duet_cpu_probe_peak_int8_gops(int n_threads);
/* Read bandwidth in GB/s (1e9 bytes) of n_threads streaming over `bytes` (split between them),
 * best of a few passes; 0 on failure. */
double duet_cpu_probe_read_gbs(int n_threads, size_t bytes);

#endif
