/* kernels/cpu/cpu_backend.h — the CPU backend: scalar reference kernels, AVX2/FMA kernels, and an
 * AVX-512 VNNI integer matmul over repacked weights, chosen at run time from what the CPU has. */
#ifndef DUET_KERNELS_CPU_BACKEND_H
#define DUET_KERNELS_CPU_BACKEND_H

#include "../backend.h"

typedef enum {
    DUET_CPU_ISA_AUTO = 0,   /* the best this CPU supports */
    DUET_CPU_ISA_SCALAR,     /* plain C: the reference every vectorized kernel is tested against */
    DUET_CPU_ISA_AVX2,       /* AVX2 + FMA + F16C; refused on a CPU without them */
    DUET_CPU_ISA_AVX512,     /* AVX2 kernels, plus block-type weights repacked at load and an
                              * integer matmul with AVX-512 F/BW/VL + VNNI (16-bit activations,
                              * or 8-bit ones when asked for) */
} duet_cpu_isa_t;

typedef struct {
    int n_threads;           /* 0: every CPU this process may use */
    duet_cpu_isa_t isa;
    /* Activation precision of the AVX-512 integer matmul: 16 (the default) or 8, which is up to
     * twice as fast in prefill and batched decode but moves the default model's logits by ~1.2,
     * beyond what tests/reference accepts (cpu_backend.c has the measurements). 0: 8 when the
     * environment has DUET_CPU_ACT_BITS=8, else 16. Other values are refused. */
    int act_bits;
} duet_cpu_conf_t;

/* Creates a CPU backend; *be_p is destroyed with be->destroy(be).
 * DUET_ERR_UNSUPPORTED when the requested ISA is missing on this CPU. */
duet_status_t duet_backend_cpu_create(const duet_cpu_conf_t *conf, duet_backend_t **be_p);

/* The activation bits (16 or 8) with which be multiplies w on its integer matmul, or 0 when w does
 * not run there (be is not a CPU backend, has no integer matmul, or w is not a packed block-type
 * weight: it then runs on f32 FMAs). Benchmarks use it to measure prefill against the peak of the
 * arithmetic it actually runs on. */
int duet_backend_cpu_act_bits(const duet_backend_t *be, const duet_weight_t *w);

/* Whether this CPU can run the given ISA. */
int duet_cpu_isa_supported(duet_cpu_isa_t isa);

#endif
