/* tests/unit/test_kernels.c — the CPU backend: every op of backend.h run by the AVX2 kernels and by
 * the scalar reference on odd shapes and compared, the reference checked against naive double
 * precision code written here, the reference quantizers checked for layout and error bounds, and
 * the integer and F16 matmuls over packed weights (AVX-512) checked bit for bit against their plain
 * C references, which are checked against double precision. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include <stdatomic.h>

#include "cpu/cpu_backend.h"
#include "cpu/cpu_pool.h"
#include "cpu/f16matmul.h"
#include "cpu/ops.h"
#include "cpu/qmatmul.h"
#include "quant.h"

static duet_backend_t *be_scalar, *be_avx2;  /* be_avx2 is NULL on a CPU without AVX2 */
static duet_backend_t *be_avx512;            /* NULL on a CPU without AVX-512 VNNI */

/* ---- helpers ---- */

#define TEST_RAND_SEED 0x9e3779b97f4a7c15ull
#include "test_rand.h"

/* Largest |a - b| / (abs_tol + rel_tol * |ref|) over n values; <= 1 passes. */
static double worst_ratio(const float *a, const float *b, const float *ref, size_t n, double abs_tol,
                          double rel_tol)
{
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (isnan(a[i]) != isnan(b[i]) || isnan(d))
            return INFINITY;
        double r = d / (abs_tol + rel_tol * fabs((double)ref[i]));
        if (r > worst)
            worst = r;
    }
    return worst;
}

static const uint32_t all_types[] = {DUET_TYPE_F32, DUET_TYPE_F16, DUET_TYPE_BF16,
                                     DUET_TYPE_Q8_0, DUET_TYPE_Q4_0, DUET_TYPE_Q4_1};
#define N_TYPES (sizeof all_types / sizeof all_types[0])

static const char *type_name(uint32_t type)
{
    return duet_type_traits(type)->name;
}

/* ---- backend basics ---- */

static void test_backend_create(void)
{
    duet_backend_t *be = NULL;
    CHECK_EQ_INT(duet_backend_cpu_create(&(duet_cpu_conf_t){.n_threads = 2, .isa = DUET_CPU_ISA_AUTO}, &be),
                 DUET_OK);
    CHECK(be && strcmp(be->name, duet_cpu_isa_supported(DUET_CPU_ISA_AVX512) ? "cpu-avx512"
                               : duet_cpu_isa_supported(DUET_CPU_ISA_AVX2)   ? "cpu-avx2"
                                                                             : "cpu-scalar") == 0);
    CHECK(be->alloc && be->free && be->upload && be->download && be->embed && be->rmsnorm &&
          be->matmul && be->rope && be->kv_write && be->attn_prefill && be->attn_decode &&
          be->swiglu && be->add && be->destroy);
    unsigned char *p = be->alloc(be, 1000);
    CHECK(p && ((uintptr_t)p & 63) == 0);
    int zero = 1;
    for (int i = 0; i < 1000; i++)
        zero &= p[i] == 0;
    CHECK_MSG(zero, "alloc must return zeroed memory");
    unsigned char host[1000];
    for (int i = 0; i < 1000; i++)
        host[i] = (unsigned char)i;
    be->upload(be, p, host, sizeof host);
    memset(host, 0, sizeof host);
    be->download(be, host, p, sizeof host);
    CHECK(host[999] == (unsigned char)999 && host[1] == 1);
    be->free(be, p);
    be->destroy(be);
    CHECK_EQ_INT(duet_backend_cpu_create(&(duet_cpu_conf_t){.n_threads = -1}, &be), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_backend_cpu_create(&(duet_cpu_conf_t){.act_bits = 12}, &be), DUET_ERR_INVALID);
    CHECK(duet_cpu_isa_supported(DUET_CPU_ISA_SCALAR));
}

/* ---- quantization ---- */

/* Hand-made blocks: the stored bits must be exactly ggml's, nibble order included. */
static void test_quant_layout(void)
{
    float x[DUET_QK], y[DUET_QK];
    /* Q4_1: 0 in the first half, 15 in the second: d = 1, m = 0, every byte 0xf0 (element j in
     * the low nibble, element j + 16 in the high one). */
    for (int j = 0; j < DUET_QK; j++)
        x[j] = j < 16 ? 0.0f : 15.0f;
    duet_block_q4_1_t b41;
    CHECK_EQ_INT(duet_quantize_row(DUET_TYPE_Q4_1, x, &b41, DUET_QK), DUET_OK);
    CHECK_EQ_INT(b41.d, 0x3c00);
    CHECK_EQ_INT(b41.m, 0x0000);
    int ok = 1;
    for (int j = 0; j < 16; j++)
        ok &= b41.qs[j] == 0xf0;
    CHECK_MSG(ok, "Q4_1 nibble order");
    /* Q4_0: -8 (largest magnitude, negative) gives d = 1 and q = 0; 7 gives q = 15. */
    for (int j = 0; j < DUET_QK; j++)
        x[j] = j < 16 ? -8.0f : 7.0f;
    duet_block_q4_0_t b40;
    CHECK_EQ_INT(duet_quantize_row(DUET_TYPE_Q4_0, x, &b40, DUET_QK), DUET_OK);
    CHECK_EQ_INT(b40.d, 0x3c00);
    ok = 1;
    for (int j = 0; j < 16; j++)
        ok &= b40.qs[j] == 0xf0;
    CHECK_MSG(ok, "Q4_0 nibble order");
    CHECK_EQ_INT(duet_dequantize_row(DUET_TYPE_Q4_0, &b40, y, DUET_QK), DUET_OK);
    CHECK(y[0] == -8.0f && y[31] == 7.0f);
    /* Q4_0 with the largest magnitude positive: d = -1, and the value itself maps to q = 0. */
    for (int j = 0; j < DUET_QK; j++)
        x[j] = j == 5 ? 8.0f : 0.0f;
    CHECK_EQ_INT(duet_quantize_row(DUET_TYPE_Q4_0, x, &b40, DUET_QK), DUET_OK);
    CHECK_EQ_INT(b40.d, 0xbc00);
    CHECK_EQ_INT(b40.qs[5] & 0x0f, 0);
    CHECK_EQ_INT(b40.qs[0], 0x88);
    /* Q8_0: amax 127 gives d = 1, so q is x itself. */
    for (int j = 0; j < DUET_QK; j++)
        x[j] = (float)(j - 16);
    x[0] = -127.0f;
    duet_block_q8_0_t b80;
    CHECK_EQ_INT(duet_quantize_row(DUET_TYPE_Q8_0, x, &b80, DUET_QK), DUET_OK);
    CHECK_EQ_INT(b80.d, 0x3c00);
    ok = 1;
    for (int j = 0; j < DUET_QK; j++)
        ok &= b80.qs[j] == (int8_t)x[j];
    CHECK_MSG(ok, "Q8_0 values");
    /* Q4_1 by hand: elements 1, 2, ... 32: d = 31/15, m = 1. */
    for (int j = 0; j < DUET_QK; j++)
        x[j] = (float)(j + 1);
    CHECK_EQ_INT(duet_quantize_row(DUET_TYPE_Q4_1, x, &b41, DUET_QK), DUET_OK);
    CHECK_EQ_INT(b41.d, duet_fp32_to_fp16(31.0f / 15.0f));
    CHECK_EQ_INT(b41.m, 0x3c00);
    CHECK_EQ_INT(b41.qs[0], 8 << 4 | 0);             /* 1 -> 0; 17 -> (16 * 15/31 + .5) = 8 */
    CHECK_EQ_INT(b41.qs[15], 15 << 4 | 7);           /* 16 -> (15 * 15/31 + .5) = 7; 32 -> 15 */
    /* Errors. */
    CHECK_EQ_INT(duet_quantize_row(DUET_TYPE_Q4_1, x, &b41, 31), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_dequantize_row(DUET_TYPE_Q8_0, &b80, y, 33), DUET_ERR_INVALID);
    CHECK_EQ_INT(duet_quantize_row(77, x, &b41, 32), DUET_ERR_UNSUPPORTED);
    CHECK_EQ_INT(duet_dequantize_row(77, &b41, y, 32), DUET_ERR_UNSUPPORTED);
}

/* dequantize(quantize(x)) stays within these bounds, per block of 32 with amax = max |x|:
 *   F32  exact
 *   F16  |e| <= |x| * 2^-11 + 2^-25 (half a unit in the last place, or of the subnormal step)
 *   BF16 |e| <= |x| * 2^-8
 *   Q8_0 |e| <= 0.57 d, d = amax / 127 (half a step, plus 127 steps of d's own f16 rounding)
 *   Q4_0 |e| <= 0.51 d, d = amax / 8, except 1.01 d for values past 7.5 d on the side opposite
 *        the largest magnitude (they clamp at q = 15, i.e. 7 d)
 *   Q4_1 |e| <= 0.52 d + |min| * 2^-10, d = (max - min) / 15 (half a step, f16 rounding of d, m)
 * The bounds are checked on blocks whose scale ranges over 1e-2 .. 1e3. */
static void test_quant_roundtrip(void)
{
    enum { NB = 64, N = NB * DUET_QK };
    float *x = xmalloc(N * sizeof *x), *y = xmalloc(N * sizeof *y);
    void *q = xmalloc(N * sizeof(float));
    for (int b = 0; b < NB; b++) {
        float s = powf(10.0f, frand(-2.0f, 3.0f));
        float off = b % 3 == 0 ? frand(-s, s) : 0.0f;  /* Q4_1 blocks not centred on 0 */
        fill_rand(x + b * DUET_QK, DUET_QK, off - s, off + s);
    }
    for (size_t ti = 0; ti < N_TYPES; ti++) {
        uint32_t type = all_types[ti];
        CHECK_EQ_INT(duet_quantize_row(type, x, q, N), DUET_OK);
        CHECK_EQ_INT(duet_dequantize_row(type, q, y, N), DUET_OK);
        int bad = 0;
        for (int b = 0; b < NB; b++) {
            const float *xb = x + b * DUET_QK, *yb = y + b * DUET_QK;
            float amax = 0, mn = xb[0], mx = xb[0], sign_of_max = 1;
            for (int j = 0; j < DUET_QK; j++) {
                if (fabsf(xb[j]) > amax)
                    sign_of_max = xb[j] < 0 ? -1.0f : 1.0f;
                amax = fmaxf(amax, fabsf(xb[j]));
                mn = fminf(mn, xb[j]);
                mx = fmaxf(mx, xb[j]);
            }
            for (int j = 0; j < DUET_QK; j++) {
                double e = fabs((double)xb[j] - yb[j]), bound = 0;
                switch (type) {
                case DUET_TYPE_F32:  bound = 0; break;
                case DUET_TYPE_F16:  bound = fabsf(xb[j]) * 0x1p-11 + 0x1p-25; break;
                case DUET_TYPE_BF16: bound = fabsf(xb[j]) * 0x1p-8; break;
                case DUET_TYPE_Q8_0: bound = 0.57 * amax / 127; break;
                case DUET_TYPE_Q4_0:  /* only the value opposite the extreme can clamp */
                    bound = (xb[j] * sign_of_max < -7.49f * amax / 8 ? 1.01 : 0.51) * amax / 8;
                    break;
                case DUET_TYPE_Q4_1: bound = 0.52 * (mx - mn) / 15 + fabsf(mn) * 0x1p-10; break;
                }
                if (e > bound && bad++ < 3)
                    fprintf(stderr, "  %s block %d elem %d: x %g -> %g, error %g > bound %g\n",
                            type_name(type), b, j, xb[j], yb[j], e, bound);
            }
        }
        CHECK_MSG(bad == 0, "%s round trip: %d values over the bound", type_name(type), bad);
    }
    free(x);
    free(y);
    free(q);
}

/* ---- matmul ---- */

typedef struct {
    duet_weight_t w;
    float *deq;   /* [rows][cols], the dequantized weights */
} test_weight_t;

static test_weight_t make_weight(uint32_t type, int rows, int cols)
{
    test_weight_t t;
    size_t rb = duet_type_row_bytes(type, cols);
    float *src = xmalloc((size_t)rows * cols * sizeof *src);
    uint8_t *data = xmalloc((size_t)rows * rb);
    t.deq = xmalloc((size_t)rows * cols * sizeof *t.deq);
    fill_rand(src, (size_t)rows * cols, -1.0f, 1.0f);
    for (int r = 0; r < rows; r++) {
        duet_quantize_row(type, src + (size_t)r * cols, data + (size_t)r * rb, cols);
        duet_dequantize_row(type, data + (size_t)r * rb, t.deq + (size_t)r * cols, cols);
    }
    free(src);
    t.w = (duet_weight_t){.type = type, .rows = rows, .cols = cols, .row_bytes = rb, .data = data};
    return t;
}

static void free_weight(test_weight_t *t)
{
    free((void *)t->w.data);
    free(t->deq);
}

/* Reference: the dequantized weights times x in double. Tolerance, per output: every f32 path
 * must be within 5e-6 * sum_i |w_i x_i| + 1e-6 of it (f32 accumulation over <= 1536 terms; the
 * observed worst is ~1.3e-7); AVX2 and scalar are compared with twice that. */
static void test_matmul(void)
{
    /* 40 and 100 (plain types only) leave tails of 8 and 4 after the 16-wide loop. */
    static const int cols_list[] = {32, 96, 576, 1536, 40, 100};
    static const int rows_list[] = {1, 7, 33, 192};
    static const int n_list[] = {1, 3, 17};
    int cases = 0, failed = 0;
    for (size_t ti = 0; ti < N_TYPES; ti++)
        for (size_t ci = 0; ci < 6; ci++)
            for (size_t ri = 0; ri < 4; ri++) {
                uint32_t type = all_types[ti];
                int cols = cols_list[ci], rows = rows_list[ri];
                if (cols % DUET_QK != 0 && duet_type_traits(type)->block_elems != 1)
                    continue;
                test_weight_t tw = make_weight(type, rows, cols);
                float *bias = xmalloc((size_t)rows * sizeof *bias);
                fill_rand(bias, rows, -2.0f, 2.0f);
                for (size_t ni = 0; ni < 3; ni++)
                    for (int with_bias = 0; with_bias < 2; with_bias++) {
                        int n = n_list[ni];
                        size_t no = (size_t)n * rows;
                        float *x = xmalloc((size_t)n * cols * sizeof *x);
                        float *ref = xmalloc(no * sizeof *ref), *tol = xmalloc(no * sizeof *tol);
                        float *os = xmalloc(no * sizeof *os), *oa = xmalloc(no * sizeof *oa);
                        fill_rand(x, (size_t)n * cols, -1.0f, 1.0f);
                        for (int i = 0; i < n; i++)
                            for (int r = 0; r < rows; r++) {
                                double sum = with_bias ? bias[r] : 0.0, mag = 0.0;
                                for (int c = 0; c < cols; c++) {
                                    double p = (double)tw.deq[(size_t)r * cols + c] * x[(size_t)i * cols + c];
                                    sum += p;
                                    mag += fabs(p);
                                }
                                ref[(size_t)i * rows + r] = (float)sum;
                                tol[(size_t)i * rows + r] = (float)(5e-6 * mag + 1e-6);
                            }
                        const float *b = with_bias ? bias : NULL;
                        be_scalar->matmul(be_scalar, &tw.w, b, x, n, os);
                        double worst_s = 0, worst_a = 0;
                        for (size_t k = 0; k < no; k++) {
                            double rs = fabs((double)os[k] - ref[k]) / tol[k];
                            worst_s = rs > worst_s || isnan(rs) ? rs : worst_s;
                        }
                        if (be_avx2) {
                            be_avx2->matmul(be_avx2, &tw.w, b, x, n, oa);
                            for (size_t k = 0; k < no; k++) {
                                double ra = fabs((double)oa[k] - os[k]) / (2 * tol[k]);
                                worst_a = ra > worst_a || isnan(ra) ? ra : worst_a;
                            }
                        }
                        cases++;
                        if (!(worst_s <= 1.0) || !(worst_a <= 1.0)) {
                            failed++;
                            fprintf(stderr, "  matmul %s rows %d cols %d n %d bias %d: scalar/ref %.3g, avx2/scalar %.3g (of tolerance)\n",
                                    type_name(type), rows, cols, n, with_bias, worst_s, worst_a);
                        }
                        free(x);
                        free(ref);
                        free(tol);
                        free(os);
                        free(oa);
                    }
                free(bias);
                free_weight(&tw);
            }
    CHECK_MSG(failed == 0, "%d of %d matmul cases out of tolerance", failed, cases);
}

/* ---- integer matmul over packed weights ---- */

/* Activations for the integer path: mostly uniform, with a zero block, a block of tiny values and
 * a block with one large outlier, so the per-block scales range widely. */
static void fill_act(float *x, int n, int cols)
{
    fill_rand(x, (size_t)n * cols, -1.0f, 1.0f);
    for (int i = 0; i < n; i++) {
        float *row = x + (size_t)i * cols;
        int nb = cols / DUET_QK;
        if (nb > 1)
            memset(row + DUET_QK, 0, DUET_QK * sizeof *row);
        if (nb > 2)
            for (int j = 0; j < DUET_QK; j++)
                row[2 * DUET_QK + j] *= 1e-6f;
        row[(i * 7) % cols] = 300.0f * (i % 2 ? -1.0f : 1.0f);
    }
}

/* The plain C reference (quantize, then the packed group kernel) against double precision on the
 * dequantized weights, for 16-bit and 8-bit activations: within f32 accumulation error plus the
 * activation rounding, which is at most half a step, amax / (2 * 32639) or amax / (2 * 127), per
 * value of each block (times 1.01 for the f32 scale). The AVX-512 kernels must then give exactly
 * the reference's quantized bytes and outputs, for every tile shape (tiles of up to 8 tokens),
 * token count (1..9, 17, and 70, past one 64-token chunk), row tail
 * (rows not a multiple of 16) and group range. */
static void test_qmatmul(void)
{
    static const uint32_t types[] = {DUET_TYPE_Q8_0, DUET_TYPE_Q4_0, DUET_TYPE_Q4_1};
    static const int cols_list[] = {32, 96, 576, 1536};
    static const int rows_list[] = {1, 7, 16, 33, 192};
    static const int n_list[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 70};
    int avx512 = duet_cpu_isa_supported(DUET_CPU_ISA_AVX512);
    duet_cpu_qgemm_fn qgemm = avx512 ? duet_cpu_qgemm_avx512() : NULL;
    if (!qgemm)
        fprintf(stderr, "  (no AVX-512 VNNI on this CPU: only the reference is checked)\n");
    int cases = 0, failed = 0;
    for (int vb = 2; vb >= 1; vb--)
    for (size_t ti = 0; ti < 3; ti++)
        for (size_t ci = 0; ci < 4; ci++)
            for (size_t ri = 0; ri < 5; ri++) {
                uint32_t type = types[ti];
                int cols = cols_list[ci], rows = rows_list[ri];
                test_weight_t tw = make_weight(type, rows, cols);
                duet_cpu_packed_t *p = NULL;
                CHECK_EQ_INT(duet_cpu_pack(&tw.w, &p), DUET_OK);
                if (!p) {
                    free_weight(&tw);
                    continue;
                }
                float *bias = xmalloc((size_t)rows * sizeof *bias);
                fill_rand(bias, rows, -2.0f, 2.0f);
                size_t arb = duet_qact_row_bytes(cols, vb);
                duet_cpu_qact_fn qact_ref = vb == 2 ? duet_cpu_qact_ref : duet_cpu_qact8_ref;
                duet_cpu_qact_fn qact = !avx512 ? NULL : vb == 2 ? duet_cpu_qact_avx512() : duet_cpu_qact8_avx512();
                double qmax = vb == 2 ? DUET_QM_QMAX : DUET_QM_QMAX8;
                for (size_t ni = 0; ni < 11; ni++) {
                    int n = n_list[ni];
                    const float *b = ni % 2 ? bias : NULL;
                    size_t no = (size_t)n * rows;
                    float *x = xmalloc((size_t)n * cols * sizeof *x);
                    uint8_t *ar = xmalloc(n * arb), *av = xmalloc(n * arb);
                    float *ref = xmalloc(no * sizeof *ref), *os = xmalloc(no * sizeof *os);
                    float *ov = xmalloc(no * sizeof *ov);
                    fill_act(x, n, cols);
                    memset(ar, 0, n * arb);
                    memset(av, 0, n * arb);
                    for (int i = 0; i < n; i++)
                        qact_ref(x + (size_t)i * cols, cols, duet_cpu_packed_zero(p), ar + i * arb);
                    duet_cpu_qgemm_ref(p, 0, p->groups, ar, vb, n, b, os, (size_t)rows);
                    double worst = 0;
                    for (int i = 0; i < n; i++)
                        for (int r = 0; r < rows; r++) {
                            const float *xi = x + (size_t)i * cols;
                            const float *wr = tw.deq + (size_t)r * cols;
                            double sum = b ? b[r] : 0.0, mag = 0.0, qerr = 0.0;
                            for (int c0 = 0; c0 < cols; c0 += DUET_QK) {
                                double amax = 0, wabs = 0;
                                for (int c = c0; c < c0 + DUET_QK; c++) {
                                    sum += (double)wr[c] * xi[c];
                                    mag += fabs((double)wr[c] * xi[c]);
                                    amax = fmax(amax, fabs(xi[c]));
                                    wabs += fabs(wr[c]);
                                }
                                qerr += wabs * amax / (2.0 * qmax) * 1.01;
                            }
                            double tol = 5e-6 * mag + qerr + 1e-6;
                            double e = fabs((double)os[(size_t)i * rows + r] - sum) / tol;
                            worst = e > worst || isnan(e) ? e : worst;
                        }
                    int exact = 1;
                    if (qact) {
                        for (int i = 0; i < n; i++)
                            qact(x + (size_t)i * cols, cols, duet_cpu_packed_zero(p), av + i * arb);
                        exact &= memcmp(ar, av, n * arb) == 0;
                        /* Two calls over a split of the groups, as two threads would make. */
                        int half = p->groups / 2;
                        qgemm(p, 0, half, av, vb, n, b, ov, (size_t)rows);
                        qgemm(p, half, p->groups, av, vb, n, b, ov, (size_t)rows);
                        exact &= memcmp(os, ov, no * sizeof *os) == 0;
                        /* Each token alone gives the same bits as in the batch. */
                        for (int i = 0; i < n && exact; i += 3) {
                            qgemm(p, 0, p->groups, av + i * arb, vb, 1, b, ov, (size_t)rows);
                            exact &= memcmp(os + (size_t)i * rows, ov, (size_t)rows * sizeof *ov) == 0;
                        }
                    }
                    cases++;
                    if (!(worst <= 1.0) || !exact) {
                        failed++;
                        fprintf(stderr, "  qmatmul %s %d-bit rows %d cols %d n %d: reference/double %.3g of tolerance, avx512 %s\n",
                                type_name(type), 8 * vb, rows, cols, n, worst, exact ? "exact" : "DIFFERS");
                    }
                    free(x);
                    free(ar);
                    free(av);
                    free(ref);
                    free(os);
                    free(ov);
                }
                free(bias);
                duet_cpu_packed_free(p);
                free_weight(&tw);
            }
    CHECK_MSG(failed == 0, "%d of %d qmatmul cases wrong", failed, cases);
    /* Types without a packed form are refused. */
    test_weight_t tw = make_weight(DUET_TYPE_F16, 4, 32);
    duet_cpu_packed_t *p = NULL;
    CHECK_EQ_INT(duet_cpu_pack(&tw.w, &p), DUET_ERR_INVALID);
    free_weight(&tw);
}

/* ---- F16 matmul over packed weights ---- */

/* One case of test_f16matmul: n tokens, activation rows ldx floats apart; 1 when it passes, else
 * it says why. */
static int f16matmul_case(const test_weight_t *tw, const duet_cpu_f16packed_t *p, duet_cpu_f16gemm_fn gemm,
                          int n, size_t ldx, const float *b)
{
    int rows = p->rows, cols = p->cols;
    size_t no = (size_t)n * rows;
    float *x = xmalloc((size_t)n * ldx * sizeof *x);
    float *os = xmalloc(no * sizeof *os), *ov = xmalloc(no * sizeof *ov);
    fill_rand(x, (size_t)n * ldx, -1.0f, 1.0f);
    duet_cpu_f16gemm_ref(p, 0, p->groups, x, ldx, n, b, os, (size_t)rows);
    double worst = 0;
    for (int i = 0; i < n; i++)
        for (int r = 0; r < rows; r++) {
            double sum = b ? b[r] : 0.0, mag = 0.0;
            for (int c = 0; c < cols; c++) {
                double v = (double)tw->deq[(size_t)r * cols + c] * x[(size_t)i * ldx + c];
                sum += v;
                mag += fabs(v);
            }
            double e = fabs((double)os[(size_t)i * rows + r] - sum) / (5e-6 * mag + 1e-6);
            worst = e > worst || isnan(e) ? e : worst;
        }
    int exact = 1;
    if (gemm) {
        /* Two calls, as two threads would make, cut at an odd group: a pair of groups split. */
        int cut = (p->groups / 2) | 1;
        cut = cut < p->groups ? cut : p->groups;
        memset(ov, 0xff, no * sizeof *ov);  /* NaN: a row left unwritten shows */
        gemm(p, 0, cut, x, ldx, n, b, ov, (size_t)rows);
        gemm(p, cut, p->groups, x, ldx, n, b, ov, (size_t)rows);
        exact &= memcmp(os, ov, no * sizeof *os) == 0;
        for (int i = 0; i < n && exact; i += 5) {  /* a token alone: the bits it has in the batch */
            gemm(p, 0, p->groups, x + (size_t)i * ldx, ldx, 1, b, ov, (size_t)rows);
            exact &= memcmp(os + (size_t)i * rows, ov, (size_t)rows * sizeof *ov) == 0;
        }
    }
    free(x);
    free(os);
    free(ov);
    if (worst <= 1.0 && exact)
        return 1;
    fprintf(stderr, "  f16matmul rows %d cols %d n %d ldx %zu bias %d: reference/double %.3g of tolerance, avx512 %s\n",
            rows, cols, n, ldx, b != NULL, worst, exact ? "exact" : "DIFFERS");
    return 0;
}

/* The plain C reference against double precision on the f16 weights: within 5e-6 * sum |w x| +
 * 1e-6 per output, as test_matmul (f32 accumulation, no other rounding). The AVX-512 kernel must
 * give exactly the reference's outputs for every tile shape: 1 .. 14 tokens (the counts 1, 2, 3,
 * 4, 5, 7, 13 and 14 directly; 15, 29, 33 and 70, past the 64-token chunk, split into tiles of 6
 * and 8 .. 13) by 1, 2 or 4 row groups; row tails (rows not a multiple of 16); any cols (1, 7,
 * 40 and 100 as well as the model's 64, 96, 576 and 1536); activation rows wider than cols; with
 * and without bias; over a split of the groups; and each token alone. */
static void test_f16matmul(void)
{
    static const int cols_list[] = {1, 7, 40, 64, 96, 100, 576, 1536};
    static const int rows_list[] = {1, 7, 16, 33, 72, 200};
    static const int n_list[] = {1, 2, 3, 4, 5, 7, 13, 14, 15, 29, 33, 70};
    duet_cpu_f16gemm_fn gemm = duet_cpu_isa_supported(DUET_CPU_ISA_AVX512) ? duet_cpu_f16gemm_avx512() : NULL;
    if (!gemm)
        fprintf(stderr, "  (no AVX-512 on this CPU: only the F16 reference is checked)\n");
    int cases = 0, failed = 0;
    for (size_t ci = 0; ci < sizeof cols_list / sizeof *cols_list; ci++)
        for (size_t ri = 0; ri < sizeof rows_list / sizeof *rows_list; ri++) {
            test_weight_t tw = make_weight(DUET_TYPE_F16, rows_list[ri], cols_list[ci]);
            duet_cpu_f16packed_t *p = NULL;
            CHECK_EQ_INT(duet_cpu_f16_pack(&tw.w, &p), DUET_OK);
            float *bias = xmalloc((size_t)tw.w.rows * sizeof *bias);
            fill_rand(bias, tw.w.rows, -2.0f, 2.0f);
            for (size_t ni = 0; p && ni < sizeof n_list / sizeof *n_list; ni++) {
                size_t ldx = (size_t)tw.w.cols + (ni % 3 == 2 ? 3 : 0);
                cases++;
                failed += !f16matmul_case(&tw, p, gemm, n_list[ni], ldx, (ci + ni) % 2 ? bias : NULL);
            }
            free(bias);
            duet_cpu_f16packed_free(p);
            free_weight(&tw);
        }
    CHECK_MSG(failed == 0, "%d of %d f16matmul cases wrong", failed, cases);
    test_weight_t tw = make_weight(DUET_TYPE_BF16, 4, 32);  /* other types are refused */
    duet_cpu_f16packed_t *p = NULL;
    CHECK_EQ_INT(duet_cpu_f16_pack(&tw.w, &p), DUET_ERR_INVALID);
    free_weight(&tw);
}

/* The AVX-512 backend end to end: prepare_weight packs the block types and F16 (and leaves the
 * others as they are), matmul then runs the packed path on the pool, embed still reads the rows as
 * stored (tied embeddings share the weight), and release_weight frees the copy. Outputs match the
 * scalar backend within f32 error plus, for block types, the activation rounding, with 16-bit
 * activations (be_avx512) and with 8-bit ones (a backend made with act_bits 8). */
static void test_matmul_packed(void)
{
    if (!be_avx512)
        return;
    static const int n_list[] = {1, 4, 5, 33};
    int cases = 0, failed = 0;
    duet_backend_t *be8 = NULL;
    CHECK_EQ_INT(duet_backend_cpu_create(&(duet_cpu_conf_t){.n_threads = 2, .isa = DUET_CPU_ISA_AVX512,
                                                            .act_bits = 8},
                                         &be8), DUET_OK);
    if (!be8)
        return;
    for (int bits = 16; bits >= 8; bits -= 8)
    for (size_t ti = 0; ti < N_TYPES; ti++) {
        duet_backend_t *be = bits == 16 ? be_avx512 : be8;
        double qmax = bits == 16 ? DUET_QM_QMAX : DUET_QM_QMAX8;
        uint32_t type = all_types[ti];
        test_weight_t tw = make_weight(type, 200, 576);
        CHECK_EQ_INT(be->prepare_weight(be, &tw.w), DUET_OK);
        int packs = duet_cpu_packable(type) || type == DUET_TYPE_F16;
        CHECK_MSG((tw.w.packed != NULL) == packs, "%s packed", type_name(type));
        {
            int32_t tokens[5] = {0, 199, 17, 17, 100};
            float *es = xmalloc(5 * 576 * sizeof *es), *ea = xmalloc(5 * 576 * sizeof *ea);
            be_scalar->embed(be_scalar, &tw.w, tokens, 5, es);
            be->embed(be, &tw.w, tokens, 5, ea);
            CHECK_MSG(memcmp(es, ea, 5 * 576 * sizeof *es) == 0, "embed %s after prepare", type_name(type));
            free(es);
            free(ea);
        }
        for (size_t ni = 0; ni < 4; ni++) {
            int n = n_list[ni];
            size_t no = (size_t)n * 200;
            float *x = xmalloc((size_t)n * 576 * sizeof *x);
            float *os = xmalloc(no * sizeof *os), *oa = xmalloc(no * sizeof *oa);
            fill_act(x, n, 576);
            be_scalar->matmul(be_scalar, &tw.w, NULL, x, n, os);
            be->matmul(be, &tw.w, NULL, x, n, oa);
            double worst = 0;
            for (int i = 0; i < n; i++)
                for (int r = 0; r < 200; r++) {
                    double mag = 0, qerr = 0;
                    for (int c0 = 0; c0 < 576; c0 += DUET_QK) {
                        double amax = 0, wabs = 0;
                        for (int c = c0; c < c0 + DUET_QK; c++) {
                            double xv = x[(size_t)i * 576 + c], wv = tw.deq[(size_t)r * 576 + c];
                            mag += fabs(xv * wv);
                            amax = fmax(amax, fabs(xv));
                            wabs += fabs(wv);
                        }
                        if (duet_cpu_packable(type))  /* F16 keeps the activations as they are */
                            qerr += wabs * amax / (2.0 * qmax) * 1.01;
                    }
                    size_t k = (size_t)i * 200 + r;
                    double e = fabs((double)oa[k] - os[k]) / (1e-5 * mag + qerr + 2e-6);
                    worst = e > worst || isnan(e) ? e : worst;
                }
            cases++;
            if (!(worst <= 1.0)) {
                failed++;
                fprintf(stderr, "  packed matmul %s %d-bit n %d: %.3g of tolerance\n", type_name(type), bits, n,
                        worst);
            }
            free(x);
            free(os);
            free(oa);
        }
        if (tw.w.packed)
            be->release_weight(be, &tw.w);
        CHECK(tw.w.packed == NULL);
        free_weight(&tw);
    }
    be8->destroy(be8);
    CHECK_MSG(failed == 0, "%d of %d packed matmul cases out of tolerance", failed, cases);
}

/* matmul_shared_x gives every weight the very bits that its own matmul call gives (the same
 * kernels over the same quantized x), on each backend, for every type, with biases on some,
 * row counts that end groups early, token counts either side of the caller-quantizes limit, and
 * a mix of types (which the CPU backend cannot share: it falls back to one call each). */
static void test_matmul_shared_x(void)
{
    static const int rows[] = {576, 200, 33};
    static const int n_list[] = {1, 3, 5, 40};
    duet_backend_t *bes[] = {be_scalar, be_avx2, be_avx512};
    int cases = 0, failed = 0;
    for (size_t bi = 0; bi < 3; bi++) {
        duet_backend_t *be = bes[bi];
        if (!be)
            continue;
        CHECK(be->matmul_shared_x != NULL);
        for (size_t ti = 0; ti <= N_TYPES; ti++) {
            test_weight_t tw[3];
            const duet_weight_t *w[3];
            float *bias[3];
            for (int i = 0; i < 3; i++) {
                /* ti == N_TYPES: a Q8_0, a Q4_1 and an F16 weight together. */
                uint32_t type = ti < N_TYPES ? all_types[ti]
                                             : (uint32_t[]){DUET_TYPE_Q8_0, DUET_TYPE_Q4_1, DUET_TYPE_F16}[i];
                tw[i] = make_weight(type, rows[i], 576);
                CHECK_EQ_INT(be->prepare_weight ? be->prepare_weight(be, &tw[i].w) : DUET_OK, DUET_OK);
                w[i] = &tw[i].w;
                bias[i] = NULL;
                if (i != 1) {
                    bias[i] = xmalloc((size_t)rows[i] * sizeof *bias[i]);
                    fill_rand(bias[i], (size_t)rows[i], -1.0f, 1.0f);
                }
            }
            for (size_t ni = 0; ni < sizeof n_list / sizeof n_list[0]; ni++) {
                int n = n_list[ni];
                float *x = xmalloc((size_t)n * 576 * sizeof *x);
                fill_act(x, n, 576);
                for (int n_w = 1; n_w <= 3; n_w++) {
                    float *sep[3], *shared[3];
                    for (int i = 0; i < n_w; i++) {
                        sep[i] = xmalloc((size_t)n * rows[i] * sizeof *sep[i]);
                        shared[i] = xmalloc((size_t)n * rows[i] * sizeof *shared[i]);
                        be->matmul(be, w[i], bias[i], x, n, sep[i]);
                    }
                    be->matmul_shared_x(be, n_w, w, (const float *const *)bias, x, n, shared);
                    for (int i = 0; i < n_w; i++) {
                        cases++;
                        if (memcmp(sep[i], shared[i], (size_t)n * rows[i] * sizeof *sep[i]) != 0) {
                            failed++;
                            fprintf(stderr, "  %s: shared matmul %d of %d (%s), %d tokens differs\n", be->name,
                                    i, n_w, type_name(w[i]->type), n);
                        }
                        free(sep[i]);
                        free(shared[i]);
                    }
                }
                free(x);
            }
            for (int i = 0; i < 3; i++) {
                if (be->release_weight)
                    be->release_weight(be, &tw[i].w);
                free_weight(&tw[i]);
                free(bias[i]);
            }
        }
    }
    CHECK_MSG(failed == 0, "%d of %d shared matmuls differ from their own call", failed, cases);
}

/* ---- the backend's pool and the attention score kernel ---- */

typedef struct {
    atomic_int next;
    int n;
    atomic_int *hits;   /* [n] times each item was done */
    atomic_int done;    /* set once the run has returned: the task must never be entered again */
} pool_task_t;

static atomic_int late_entries;  /* tasks entered after their run returned */

static void pool_task(void *arg)
{
    pool_task_t *t = arg;
    if (atomic_load(&t->done))
        atomic_fetch_add(&late_entries, 1);
    for (int i; (i = atomic_fetch_add(&t->next, 1)) < t->n;)
        atomic_fetch_add(&t->hits[i], 1);
}

/* Every item of every run is done exactly once, by however many threads join, over many short
 * runs in a row (the close/join handshake) and with more threads than CPUs; and no task is
 * entered after its run has returned (a worker that saw an old run late must stay out). Each
 * run's task is a distinct struct, kept and marked done afterwards, so a late entry is seen. */
static void test_cpu_pool(void)
{
    enum { N = 257, RUNS = 50000 };
    static atomic_int hits[N];
    pool_task_t *tasks = xmalloc(RUNS * sizeof *tasks);
    duet_cpu_pool_t *pool = NULL;
    CHECK_EQ_INT(duet_cpu_pool_create(5, &pool), DUET_OK);
    CHECK_EQ_INT(duet_cpu_pool_size(pool), 5);
    atomic_init(&late_entries, 0);
    int bad = 0;
    for (int r = 0; r < RUNS; r++) {
        int n = r % 7 == 0 ? N : r % 5;
        for (int i = 0; i < n; i++)
            atomic_init(&hits[i], 0);
        pool_task_t *t = &tasks[r];
        t->n = n;
        t->hits = hits;
        atomic_init(&t->next, 0);
        atomic_init(&t->done, 0);
        duet_cpu_pool_run(pool, pool_task, t);
        atomic_store(&t->done, 1);
        for (int i = 0; i < n; i++)
            bad += atomic_load(&hits[i]) != 1;
    }
    CHECK_MSG(bad == 0, "%d items not done exactly once", bad);
    CHECK_MSG(atomic_load(&late_entries) == 0, "%d tasks entered after their run returned",
              atomic_load(&late_entries));
    duet_cpu_pool_destroy(pool);
    free(tasks);
    CHECK_EQ_INT(duet_cpu_pool_create(0, &pool), DUET_ERR_INVALID);
}

/* dot_rows and axpy_rows, the attention kernels: the AVX2 and AVX-512 tables against the scalar
 * one on odd lengths and key counts; each score bit-identical whether its row came in a group of
 * eight or alone (nk decides the path); the vector axpy_rows tables bit-identical to each other
 * (one FMA per row, in row order, in both). */
static void test_attn_rows(void)
{
    duet_cpu_ops_t avx512;
    const duet_cpu_ops_t *tables[2] = {
        be_avx2 ? duet_cpu_ops_avx2() : NULL,
        be_avx512 && duet_cpu_ops_avx512_fill(&avx512) ? &avx512 : NULL,
    };
    static const int n_list[] = {64, 1, 7, 8, 16, 40, 100, 128, 256};
    int bad = 0, unstable = 0, axpy_bad = 0, axpy_differ = 0;
    float q[256], k[16 * 256], s_ref[16], s_a[16], s_b[16];
    float acc0[256], acc_ref[256], acc_t[2][256], p[16];
    for (size_t ni = 0; ni < sizeof n_list / sizeof n_list[0]; ni++) {
        int n = n_list[ni];
        fill_rand(q, (size_t)n, -2.0f, 2.0f);
        fill_rand(k, (size_t)16 * n, -2.0f, 2.0f);
        fill_rand(acc0, (size_t)n, -2.0f, 2.0f);
        fill_rand(p, 16, 0.0f, 1.0f);
        for (int nk = 1; nk <= 16; nk++) {
            duet_cpu_ops_scalar.dot_rows(s_ref, q, k, nk, n);
            memcpy(acc_ref, acc0, (size_t)n * sizeof *acc_ref);
            duet_cpu_ops_scalar.axpy_rows(acc_ref, p, k, nk, n);
            for (int ti = 0; ti < 2; ti++) {
                const duet_cpu_ops_t *ops = tables[ti];
                if (!ops)
                    continue;
                ops->dot_rows(s_a, q, k, nk, n);
                for (int j = 0; j < nk; j++) {
                    double mag = 0;
                    for (int i = 0; i < n; i++)
                        mag += fabs((double)q[i] * k[(size_t)j * n + i]);
                    bad += fabs((double)s_a[j] - s_ref[j]) > 2e-6 * mag + 1e-6;
                    ops->dot_rows(s_b, q, k + (size_t)j * n, 1, n);
                    unstable += memcmp(&s_a[j], &s_b[0], sizeof(float)) != 0;
                }
                memcpy(acc_t[ti], acc0, (size_t)n * sizeof *acc0);
                ops->axpy_rows(acc_t[ti], p, k, nk, n);
                for (int i = 0; i < n; i++)
                    axpy_bad += fabs((double)acc_t[ti][i] - acc_ref[i]) > 1e-5 * (1 + fabs(acc_ref[i]));
            }
            if (tables[0] && tables[1])
                axpy_differ += memcmp(acc_t[0], acc_t[1], (size_t)n * sizeof(float)) != 0;
        }
    }
    CHECK_MSG(bad == 0, "%d dot_rows scores out of tolerance", bad);
    CHECK_MSG(unstable == 0, "%d dot_rows scores depend on nk", unstable);
    CHECK_MSG(axpy_bad == 0, "%d axpy_rows outputs out of tolerance", axpy_bad);
    CHECK_MSG(axpy_differ == 0, "%d axpy_rows cases differ between AVX2 and AVX-512", axpy_differ);
}

/* ---- embed ---- */

/* Rows are converted exactly, so both ISAs must give the dequantized rows bit for bit. */
static void test_embed(void)
{
    for (size_t ti = 0; ti < N_TYPES; ti++) {
        test_weight_t tw = make_weight(all_types[ti], 50, 96);
        int32_t tokens[17];
        for (int i = 0; i < 17; i++)
            tokens[i] = (i * 31 + 7) % 50;
        float *os = xmalloc(17 * 96 * sizeof *os), *oa = xmalloc(17 * 96 * sizeof *oa);
        int n_list[] = {1, 3, 17};
        for (int k = 0; k < 3; k++) {
            int n = n_list[k];
            be_scalar->embed(be_scalar, &tw.w, tokens, n, os);
            int ok = 1;
            for (int i = 0; i < n; i++)
                ok &= memcmp(os + i * 96, tw.deq + tokens[i] * 96, 96 * sizeof(float)) == 0;
            CHECK_MSG(ok, "embed %s n %d: rows differ from dequantize", type_name(all_types[ti]), n);
            if (be_avx2) {
                be_avx2->embed(be_avx2, &tw.w, tokens, n, oa);
                CHECK_MSG(memcmp(os, oa, (size_t)n * 96 * sizeof(float)) == 0, "embed %s n %d: avx2 differs",
                          type_name(all_types[ti]), n);
            }
        }
        free(os);
        free(oa);
        free_weight(&tw);
    }
}

/* ---- rmsnorm ---- */

/* Reference in double; tolerance |a - ref| <= 1e-7 + 2e-6 |ref| (a few f32 roundings). Also in
 * place (out = x). */
static void test_rmsnorm(void)
{
    static const int dims[] = {33, 100, 576, 1000};
    static const int ns[] = {1, 3, 17};
    for (int di = 0; di < 4; di++)
        for (int ni = 0; ni < 3; ni++) {
            int dim = dims[di], n = ns[ni];
            size_t sz = (size_t)n * dim;
            float *x = xmalloc(sz * sizeof *x), *w = xmalloc(dim * sizeof *w), *ref = xmalloc(sz * sizeof *ref);
            float *os = xmalloc(sz * sizeof *os), *oa = xmalloc(sz * sizeof *oa);
            fill_rand(x, sz, -3.0f, 3.0f);
            fill_rand(w, dim, -2.0f, 2.0f);
            float eps = 1e-5f;
            for (int i = 0; i < n; i++) {
                double ss = 0;
                for (int j = 0; j < dim; j++)
                    ss += (double)x[i * dim + j] * x[i * dim + j];
                double s = 1.0 / sqrt(ss / dim + eps);
                for (int j = 0; j < dim; j++)
                    ref[i * dim + j] = (float)(x[i * dim + j] * s * w[j]);
            }
            be_scalar->rmsnorm(be_scalar, x, w, eps, n, dim, os);
            CHECK_MSG(worst_ratio(os, ref, ref, sz, 1e-7, 2e-6) <= 1.0, "rmsnorm scalar dim %d n %d", dim, n);
            if (be_avx2) {
                memcpy(oa, x, sz * sizeof *oa);
                be_avx2->rmsnorm(be_avx2, oa, w, eps, n, dim, oa);  /* in place */
                CHECK_MSG(worst_ratio(oa, os, ref, sz, 2e-7, 4e-6) <= 1.0, "rmsnorm avx2 dim %d n %d", dim, n);
            }
            free(x);
            free(w);
            free(ref);
            free(os);
            free(oa);
        }
}

/* ---- rope ---- */

/* Reference with double angles and rotation; tolerance |a - ref| <= 2e-6 (1 + |ref|) (inputs in
 * [-1, 1]: cos/sin rounded to f32, then two products). Dims past rot_dim must be untouched, bit
 * for bit. */
static void test_rope(void)
{
    static const int hds[] = {64, 80};
    static const int ns[] = {1, 3, 17};
    int n_head = 3;
    for (int hi = 0; hi < 2; hi++)
        for (int ri = 0; ri < 4; ri++)
            for (int ni = 0; ni < 3; ni++)
                for (int neox = 0; neox < 2; neox++) {
                    int hd = hds[hi], n = ns[ni];
                    int rot = ri == 0 ? hd : ri == 1 ? 32 : ri == 2 ? 24 : 18;  /* 18: 9 pairs, a tail */
                    float theta = ri % 2 ? 1e6f : 1e4f;
                    size_t sz = (size_t)n * n_head * hd;
                    float *x = xmalloc(sz * sizeof *x), *ref = xmalloc(sz * sizeof *ref);
                    float *os = xmalloc(sz * sizeof *os), *oa = xmalloc(sz * sizeof *oa);
                    int32_t pos[17];
                    fill_rand(x, sz, -1.0f, 1.0f);
                    for (int i = 0; i < n; i++)
                        pos[i] = i == 0 ? 0 : (int32_t)frand(0, 5000);
                    memcpy(ref, x, sz * sizeof *ref);
                    for (int i = 0; i < n; i++)
                        for (int h = 0; h < n_head; h++) {
                            float *v = ref + ((size_t)i * n_head + h) * hd;
                            const float *src = x + ((size_t)i * n_head + h) * hd;
                            for (int j = 0; j < rot / 2; j++) {
                                double ang = pos[i] * pow(theta, -2.0 * j / rot);
                                int i0 = neox ? j : 2 * j, i1 = neox ? j + rot / 2 : 2 * j + 1;
                                v[i0] = (float)(src[i0] * cos(ang) - src[i1] * sin(ang));
                                v[i1] = (float)(src[i1] * cos(ang) + src[i0] * sin(ang));
                            }
                        }
                    memcpy(os, x, sz * sizeof *os);
                    memcpy(oa, x, sz * sizeof *oa);
                    be_scalar->rope(be_scalar, os, pos, n, n_head, hd, rot, theta, neox);
                    CHECK_MSG(worst_ratio(os, ref, ref, sz, 2e-6, 2e-6) <= 1.0,
                              "rope scalar hd %d rot %d n %d neox %d", hd, rot, n, neox);
                    int untouched = 1;
                    for (size_t k = 0; k < sz; k++)
                        if ((int)(k % hd) >= rot)
                            untouched &= os[k] == x[k];
                    CHECK_MSG(untouched, "rope touched dims past rot_dim");
                    if (be_avx2) {
                        be_avx2->rope(be_avx2, oa, pos, n, n_head, hd, rot, theta, neox);
                        CHECK_MSG(worst_ratio(oa, os, ref, sz, 1e-6, 1e-6) <= 1.0,
                                  "rope avx2 hd %d rot %d n %d neox %d", hd, rot, n, neox);
                    }
                    free(x);
                    free(ref);
                    free(os);
                    free(oa);
                }
    /* The backend keeps the angles of positions below 8192 in a table; a call with a position past
     * it computes them directly. Both give the very same bits for a token. */
    duet_backend_t *bes[] = {be_scalar, be_avx2, be_avx512};
    for (int bi = 0; bi < 3; bi++) {
        duet_backend_t *be = bes[bi];
        if (!be)
            continue;
        float a[2 * 64], b[2 * 64];
        fill_rand(a, 2 * 64, -1.0f, 1.0f);
        memcpy(b, a, sizeof a);
        int32_t tab_pos[1] = {4321}, mixed_pos[2] = {4321, 20000};
        be->rope(be, a, tab_pos, 1, 1, 64, 64, 1e4f, 0);
        be->rope(be, b, mixed_pos, 2, 1, 64, 64, 1e4f, 0);
        CHECK_MSG(memcmp(a, b, 64 * sizeof *a) == 0, "rope %s: table and direct angles differ", be->name);
    }
}

/* ---- kv_write ---- */

static duet_kv_pool_view_t make_pool(int n_blocks, int n_layer, int n_kv_head, int head_dim,
                                     uint16_t fill)
{
    duet_kv_pool_view_t p = {NULL, n_blocks, n_layer, n_kv_head, head_dim};
    size_t n = (size_t)n_blocks * n_layer * 2 * duet_kv_slice_elems(&p);
    p.base = xmalloc(n * sizeof(uint16_t));
    for (size_t i = 0; i < n; i++)
        p.base[i] = fill;
    return p;
}

static size_t pool_elems(const duet_kv_pool_view_t *p)
{
    return (size_t)p->n_blocks * p->n_layer * 2 * duet_kv_slice_elems(p);
}

/* Exact: both ISAs round to f16 to nearest even, so the pools must match bit for bit, hold
 * duet_fp32_to_fp16 of each value where the layout says, and nothing else may change. */
static void test_kv_write(void)
{
    static const int hds[] = {33, 64, 80};
    static const int ns[] = {1, 3, 17};
    for (int hi = 0; hi < 3; hi++)
        for (int ni = 0; ni < 3; ni++) {
            int hd = hds[hi], n = ns[ni], nkv = 3, layer = 1;
            duet_kv_pool_view_t ps = make_pool(7, 2, nkv, hd, 0x7e00), pa = make_pool(7, 2, nkv, hd, 0x7e00);
            size_t sz = (size_t)n * nkv * hd;
            float *k = xmalloc(sz * sizeof *k), *v = xmalloc(sz * sizeof *v);
            fill_rand(k, sz, -70000.0f, 70000.0f);  /* some overflow to inf in f16 */
            fill_rand(v, sz, -1e-5f, 1e-5f);        /* some subnormal in f16 */
            int32_t slots[17];
            for (int i = 0; i < n; i++)
                slots[i] = (i * 37 + 5) % (7 * DUET_KV_BLOCK_TOKENS);  /* distinct, scattered */
            be_scalar->kv_write(be_scalar, &ps, layer, k, v, slots, n);
            int ok = 1;
            size_t written = 0;
            for (int i = 0; i < n; i++)
                for (int h = 0; h < nkv; h++)
                    for (int d = 0; d < hd; d++) {
                        int blk = slots[i] / 16, row = slots[i] % 16;
                        size_t off = ((size_t)h * 16 + row) * hd + d;
                        size_t src = ((size_t)i * nkv + h) * hd + d;
                        ok &= duet_kv_slice(&ps, blk, layer, 0)[off] == duet_fp32_to_fp16(k[src]);
                        ok &= duet_kv_slice(&ps, blk, layer, 1)[off] == duet_fp32_to_fp16(v[src]);
                        written += 2;
                    }
            size_t changed = 0;
            for (size_t e = 0; e < pool_elems(&ps); e++)
                changed += ps.base[e] != 0x7e00;
            CHECK_MSG(ok && changed <= written, "kv_write scalar hd %d n %d", hd, n);
            if (be_avx2) {
                be_avx2->kv_write(be_avx2, &pa, layer, k, v, slots, n);
                CHECK_MSG(memcmp(ps.base, pa.base, pool_elems(&ps) * sizeof(uint16_t)) == 0,
                          "kv_write avx2 differs, hd %d n %d", hd, n);
            }
            free(k);
            free(v);
            free(ps.base);
            free(pa.base);
        }
}

/* ---- attention ---- */

typedef struct {
    int n_seq;
    int kv_len[6], n_new[6];
} attn_shape_t;

/* Reference: per query row, a softmax in double over the f16 K/V that the pool holds. */
static void attn_naive(const duet_kv_pool_view_t *pool, int layer, const float *q, int n_head,
                       const duet_attn_batch_t *b, float scale, float *out)
{
    int hd = pool->head_dim, group = n_head / pool->n_kv_head;
    double *sc = xmalloc(4096 * sizeof *sc), *acc = xmalloc((size_t)hd * sizeof *acc);
    for (int s = 0; s < b->n_seq; s++) {
        int n_new = b->tok_start[s + 1] - b->tok_start[s];
        for (int i = 0; i < n_new; i++) {
            int tok = b->tok_start[s] + i, pos = b->kv_len[s] - n_new + i;
            for (int h = 0; h < n_head; h++) {
                const float *qr = q + ((size_t)tok * n_head + h) * hd;
                int kvh = h / group;
                double mx = -INFINITY, sum = 0;
                for (int p = 0; p <= pos; p++) {
                    int blk = b->block_table[s * b->max_blocks + p / 16];
                    const uint16_t *kr = duet_kv_slice(pool, blk, layer, 0) + ((size_t)kvh * 16 + p % 16) * hd;
                    double d = 0;
                    for (int j = 0; j < hd; j++)
                        d += (double)qr[j] * duet_fp16_to_fp32(kr[j]);
                    sc[p] = d * scale;
                    mx = sc[p] > mx ? sc[p] : mx;
                }
                memset(acc, 0, (size_t)hd * sizeof *acc);
                for (int p = 0; p <= pos; p++) {
                    int blk = b->block_table[s * b->max_blocks + p / 16];
                    const uint16_t *vr = duet_kv_slice(pool, blk, layer, 1) + ((size_t)kvh * 16 + p % 16) * hd;
                    double e = exp(sc[p] - mx);
                    sum += e;
                    for (int j = 0; j < hd; j++)
                        acc[j] += e * duet_fp16_to_fp32(vr[j]);
                }
                for (int j = 0; j < hd; j++)
                    out[((size_t)tok * n_head + h) * hd + j] = (float)(acc[j] / sum);
            }
        }
    }
    free(sc);
    free(acc);
}

/* One batch: sequences with the given kv_len / n_new, block tables drawn as a shuffled, sparse
 * subset of the pool (holes, ids out of order), every other pool entry NaN so a stray read shows.
 * q in [-q_amp, q_amp], K, V in [-1, 1]. Tolerances:
 *   scalar vs naive double, avx2 vs scalar: |a - b| <= tol (1 + |ref|); 1e-5 for ordinary scores
 *   (q_amp 2, scale 1/sqrt(head_dim): up to ~10, so the running max still moves)
 *   attn_decode vs attn_prefill on the same backend: |a - b| <= 1e-6 (1 + |ref|); on AVX-512
 *   (attn_rows for head_dim a multiple of 16) bit for bit, as the engine mixes the two */
static void attn_case(int n_head, int n_kv, int hd, const attn_shape_t *shape, float q_amp, float scale,
                      double tol)
{
    enum { N_BLOCKS = 40, MAX_BLOCKS = 8, N_LAYER = 2, LAYER = 1 };
    duet_kv_pool_view_t pool = make_pool(N_BLOCKS, N_LAYER, n_kv, hd, 0x7e00);
    int32_t tok_start[7], kv_len[6], table[6 * MAX_BLOCKS];
    int perm[N_BLOCKS];
    for (int i = 0; i < N_BLOCKS; i++)
        perm[i] = i;
    for (int i = N_BLOCKS - 1; i > 0; i--) {
        int j = (int)frand(0, (float)i + 0.999f);
        int t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int next_block = 0, n_tok = 0;
    tok_start[0] = 0;
    for (int s = 0; s < shape->n_seq; s++) {
        kv_len[s] = shape->kv_len[s];
        n_tok += shape->n_new[s];
        tok_start[s + 1] = n_tok;
        for (int b = 0; b < MAX_BLOCKS; b++)
            table[s * MAX_BLOCKS + b] = b * 16 < kv_len[s] ? perm[next_block++] : -1;
        next_block++;  /* a hole: one pool block no sequence owns */
    }
    /* Fill K/V of every position through kv_write (scalar, checked above). */
    for (int s = 0; s < shape->n_seq; s++) {
        int len = kv_len[s];
        float *k = xmalloc((size_t)len * n_kv * hd * sizeof *k), *v = xmalloc((size_t)len * n_kv * hd * sizeof *v);
        int32_t *slots = xmalloc((size_t)len * sizeof *slots);
        fill_rand(k, (size_t)len * n_kv * hd, -1.0f, 1.0f);
        fill_rand(v, (size_t)len * n_kv * hd, -1.0f, 1.0f);
        for (int p = 0; p < len; p++)
            slots[p] = table[s * MAX_BLOCKS + p / 16] * 16 + p % 16;
        be_scalar->kv_write(be_scalar, &pool, LAYER, k, v, slots, len);
        free(k);
        free(v);
        free(slots);
    }
    duet_attn_batch_t batch = {shape->n_seq, tok_start, kv_len, table, MAX_BLOCKS};
    size_t sz = (size_t)n_tok * n_head * hd;
    float *q = xmalloc(sz * sizeof *q), *ref = xmalloc(sz * sizeof *ref);
    float *ps = xmalloc(sz * sizeof *ps), *ds = xmalloc(sz * sizeof *ds);
    float *pa = xmalloc(sz * sizeof *pa), *da = xmalloc(sz * sizeof *da);
    float *px = xmalloc(sz * sizeof *px), *dx = xmalloc(sz * sizeof *dx);
    fill_rand(q, sz, -q_amp, q_amp);
    attn_naive(&pool, LAYER, q, n_head, &batch, scale, ref);
    be_scalar->attn_prefill(be_scalar, &pool, LAYER, q, n_head, &batch, scale, ps);
    be_scalar->attn_decode(be_scalar, &pool, LAYER, q, n_head, &batch, scale, ds);
    char what[128];
    snprintf(what, sizeof what, "heads %d/%d hd %d seqs %d tokens %d", n_head, n_kv, hd, shape->n_seq, n_tok);
    double w;
    CHECK_MSG((w = worst_ratio(ps, ref, ref, sz, tol, tol)) <= 1.0, "attn_prefill scalar vs naive, %s (%.3g)", what, w);
    CHECK_MSG((w = worst_ratio(ds, ps, ref, sz, 1e-6, 1e-6)) <= 1.0, "attn_decode vs prefill scalar, %s (%.3g)", what, w);
    if (be_avx2) {
        be_avx2->attn_prefill(be_avx2, &pool, LAYER, q, n_head, &batch, scale, pa);
        be_avx2->attn_decode(be_avx2, &pool, LAYER, q, n_head, &batch, scale, da);
        CHECK_MSG((w = worst_ratio(pa, ps, ref, sz, tol, tol)) <= 1.0, "attn_prefill avx2 vs scalar, %s (%.3g)", what, w);
        CHECK_MSG((w = worst_ratio(da, pa, ref, sz, 1e-6, 1e-6)) <= 1.0, "attn_decode vs prefill avx2, %s (%.3g)", what, w);
    }
    if (be_avx512) {
        be_avx512->attn_prefill(be_avx512, &pool, LAYER, q, n_head, &batch, scale, px);
        be_avx512->attn_decode(be_avx512, &pool, LAYER, q, n_head, &batch, scale, dx);
        CHECK_MSG((w = worst_ratio(px, ps, ref, sz, tol, tol)) <= 1.0, "attn_prefill avx512 vs scalar, %s (%.3g)", what, w);
        if (hd % 16 == 0)
            CHECK_MSG(memcmp(px, dx, sz * sizeof *px) == 0, "attn_decode vs prefill avx512 not identical, %s", what);
        else
            CHECK_MSG((w = worst_ratio(dx, px, ref, sz, 1e-6, 1e-6)) <= 1.0, "attn_decode vs prefill avx512, %s (%.3g)", what, w);
    }
    free(q);
    free(ref);
    free(ps);
    free(ds);
    free(pa);
    free(da);
    free(px);
    free(dx);
    free(pool.base);
}

static void test_attention(void)
{
    /* Several sequences of different lengths; kv_len crossing block boundaries (1, 16, 17, 33,
     * 50, 100); new tokens 1 .. 40, the newest positions of each. */
    static const attn_shape_t prefill = {5, {17, 50, 1, 33, 100}, {17, 13, 1, 2, 40}};
    static const attn_shape_t decode = {6, {1, 16, 17, 33, 50, 128}, {1, 1, 1, 1, 1, 1}};
    static const int heads[][2] = {{3, 3}, {9, 3}, {16, 2}, {32, 1}};  /* GQA groups 1, 3, 8, 32 */
    static const int hds[] = {64, 80, 16, 48, 256};  /* AVX-512: 4, 5, 1, 3 and 16 registers a row */
    for (int hi = 0; hi < 4; hi++)
        for (int di = 0; di < 5; di++) {
            float scale = 1.0f / sqrtf((float)hds[di]);
            attn_case(heads[hi][0], heads[hi][1], hds[di], &prefill, 2.0f, scale, 1e-5);
            attn_case(heads[hi][0], heads[hi][1], hds[di], &decode, 2.0f, scale, 1e-5);
        }
    attn_case(9, 3, 36, &prefill, 2.0f, 1.0f / 6.0f, 1e-5);  /* a tail after the 8-wide loops */
    /* Scores in the hundreds, rising past the first block's max by more than exp's range: wrong
     * without the running-max rescale (overflow). Looser, as f32 scores of that size carry
     * absolute errors near 1e-5 that exp turns into relative ones. */
    attn_case(9, 3, 64, &prefill, 40.0f, 1.0f, 2e-3);
    attn_case(16, 2, 64, &decode, 40.0f, 1.0f, 2e-3);
}

/* A V value that overflowed to inf at the newest position: every row that cannot see it (all
 * earlier tokens) must come out exactly as without it, in prefill and in decode, and still match
 * the scalar backend; attn_rows' wide kernel must not multiply it by a zero weight. */
static void test_attention_inf_v(void)
{
    enum { N = 40, N_HEAD = 9, N_KV = 3, HD = 64, LAYER = 0 };
    if (!be_avx512)
        return;
    duet_kv_pool_view_t pool = make_pool(4, 1, N_KV, HD, 0x7e00);
    int32_t tok_start[2] = {0, N}, kv_len[1] = {N}, table[4] = {2, 0, 3, 1}, slots[N];
    size_t kv = (size_t)N * N_KV * HD, sz = (size_t)N * N_HEAD * HD;
    float *k = xmalloc(kv * sizeof *k), *v = xmalloc(kv * sizeof *v), *q = xmalloc(sz * sizeof *q);
    float *ref = xmalloc(sz * sizeof *ref), *pf = xmalloc(sz * sizeof *pf), *dc = xmalloc(sz * sizeof *dc);
    float *sc = xmalloc(sz * sizeof *sc);
    fill_rand(k, kv, -1.0f, 1.0f);
    fill_rand(v, kv, -1.0f, 1.0f);
    fill_rand(q, sz, -2.0f, 2.0f);
    for (int p = 0; p < N; p++)
        slots[p] = table[p / 16] * 16 + p % 16;
    duet_attn_batch_t batch = {1, tok_start, kv_len, table, 4};
    be_scalar->kv_write(be_scalar, &pool, LAYER, k, v, slots, N);
    be_avx512->attn_prefill(be_avx512, &pool, LAYER, q, N_HEAD, &batch, 0.125f, ref);
    be_scalar->attn_prefill(be_scalar, &pool, LAYER, q, N_HEAD, &batch, 0.125f, sc);
    v[(size_t)(N - 1) * N_KV * HD + 5] = INFINITY;  /* KV head 0, the last position */
    be_scalar->kv_write(be_scalar, &pool, LAYER, k, v, slots, N);
    be_avx512->attn_prefill(be_avx512, &pool, LAYER, q, N_HEAD, &batch, 0.125f, pf);
    be_avx512->attn_decode(be_avx512, &pool, LAYER, q, N_HEAD, &batch, 0.125f, dc);
    size_t before_last = (size_t)(N - 1) * N_HEAD * HD;
    CHECK_MSG(memcmp(pf, ref, before_last * sizeof *pf) == 0, "attn_prefill avx512: an unseen inf V changed earlier rows");
    CHECK_MSG(memcmp(dc, ref, before_last * sizeof *dc) == 0, "attn_decode avx512: an unseen inf V changed earlier rows");
    double w = worst_ratio(ref, sc, sc, before_last, 1e-5, 1e-5);
    CHECK_MSG(w <= 1.0, "attn_prefill avx512 vs scalar before the inf (%.3g)", w);
    free(k);
    free(v);
    free(q);
    free(ref);
    free(pf);
    free(dc);
    free(sc);
    free(pool.base);
}

/* ---- swiglu, add ---- */

/* swiglu vs double: |a - ref| <= 1e-8 + 1e-6 |ref| (avx2's exp is a polynomial good to a few
 * ulp, plus a division); add must be exact (one f32 rounding in both). Lengths cover tails and
 * the threaded path; swiglu also runs in place (out = gate). */
static void test_elementwise(void)
{
    static const size_t ns[] = {1, 7, 33, 100, 576, 70001};
    for (int k = 0; k < 6; k++) {
        size_t n = ns[k];
        float *g = xmalloc(n * sizeof *g), *u = xmalloc(n * sizeof *u), *ref = xmalloc(n * sizeof *ref);
        float *os = xmalloc(n * sizeof *os), *oa = xmalloc(n * sizeof *oa);
        fill_rand(g, n, -12.0f, 12.0f);
        fill_rand(u, n, -3.0f, 3.0f);
        for (size_t i = 0; i < n; i++)
            ref[i] = (float)((double)g[i] / (1.0 + exp(-(double)g[i])) * u[i]);
        be_scalar->swiglu(be_scalar, g, u, n, os);
        CHECK_MSG(worst_ratio(os, ref, ref, n, 1e-8, 1e-6) <= 1.0, "swiglu scalar n %zu", n);
        if (be_avx2) {
            memcpy(oa, g, n * sizeof *oa);
            be_avx2->swiglu(be_avx2, oa, u, n, oa);
            CHECK_MSG(worst_ratio(oa, ref, ref, n, 1e-8, 1e-6) <= 1.0, "swiglu avx2 n %zu", n);
        }
        memcpy(os, g, n * sizeof *os);
        memcpy(oa, g, n * sizeof *oa);
        be_scalar->add(be_scalar, os, u, n);
        int ok = 1;
        for (size_t i = 0; i < n; i++)
            ok &= os[i] == g[i] + u[i];
        CHECK_MSG(ok, "add scalar n %zu", n);
        if (be_avx2) {
            be_avx2->add(be_avx2, oa, u, n);
            CHECK_MSG(memcmp(os, oa, n * sizeof *os) == 0, "add avx2 n %zu", n);
        }
        free(g);
        free(u);
        free(ref);
        free(os);
        free(oa);
    }
}

int main(void)
{
    /* Different thread counts on purpose: results must not depend on the partition. */
    if (duet_backend_cpu_create(&(duet_cpu_conf_t){.n_threads = 3, .isa = DUET_CPU_ISA_SCALAR}, &be_scalar) != DUET_OK) {
        fprintf(stderr, "cannot create the scalar CPU backend\n");
        return 1;
    }
    if (duet_cpu_isa_supported(DUET_CPU_ISA_AVX2)) {
        CHECK_EQ_INT(duet_backend_cpu_create(&(duet_cpu_conf_t){.n_threads = 4, .isa = DUET_CPU_ISA_AVX2}, &be_avx2),
                     DUET_OK);
    } else {
        fprintf(stderr, "\n*** THIS CPU HAS NO AVX2/FMA/F16C: the AVX2 kernels are NOT tested, only the "
                        "scalar reference ***\n\n");
        duet_backend_t *be = NULL;
        CHECK_EQ_INT(duet_backend_cpu_create(&(duet_cpu_conf_t){.isa = DUET_CPU_ISA_AVX2}, &be),
                     DUET_ERR_UNSUPPORTED);
    }
    if (duet_cpu_isa_supported(DUET_CPU_ISA_AVX512))
        CHECK_EQ_INT(duet_backend_cpu_create(&(duet_cpu_conf_t){.n_threads = 2, .isa = DUET_CPU_ISA_AVX512,
                                                                .act_bits = 16},
                                             &be_avx512), DUET_OK);
    else
        fprintf(stderr, "\n*** THIS CPU HAS NO AVX-512 VNNI: the integer matmul kernels are NOT tested, "
                        "only their reference ***\n\n");
    RUN_TEST(test_backend_create);
    RUN_TEST(test_quant_layout);
    RUN_TEST(test_quant_roundtrip);
    RUN_TEST(test_embed);
    RUN_TEST(test_matmul);
    RUN_TEST(test_qmatmul);
    RUN_TEST(test_f16matmul);
    RUN_TEST(test_matmul_packed);
    RUN_TEST(test_matmul_shared_x);
    RUN_TEST(test_cpu_pool);
    RUN_TEST(test_attn_rows);
    RUN_TEST(test_rmsnorm);
    RUN_TEST(test_rope);
    RUN_TEST(test_kv_write);
    RUN_TEST(test_attention);
    RUN_TEST(test_attention_inf_v);
    RUN_TEST(test_elementwise);
    be_scalar->destroy(be_scalar);
    if (be_avx2)
        be_avx2->destroy(be_avx2);
    if (be_avx512)
        be_avx512->destroy(be_avx512);
    return check_report();
}
