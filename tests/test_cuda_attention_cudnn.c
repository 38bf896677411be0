// The optional cuDNN attention path (model/cuda/attention_cudnn.cu) against the CPU reference
// (model/layers.h attention_forward / attention_backward, fp32 on the rounded inputs, lse in
// double) and against the project's flash kernels (cu_attention_forward / _backward of
// attention.cu, the same typed interface), in bf16 and fp16, for several shapes: the model's
// MLA head sizes (dqk 96, dv 64; DeepSeek-V3's 192 / 128), T not a multiple of 64, T shorter
// than any tile. The backward is also run from the flash kernel's out and lse (the two lse
// must mean the same). Cases cuDNN refuses (supported() == 0) are skipped with its reason;
// when it refuses all of them (no GPU, the CUDA-on-CPU harness, a build without cuDNN) one
// SKIP line says why. The accumulation kernel of the backward runs everywhere, the harness
// included. Built through the harness (make test) and with nvcc (make test-gpu).
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "../model/cuda/attention_cudnn.h"
#include "../model/cuda/cuda_ops.h"
#include "../model/layers.h"
#include "cuda_test_util.h"
#include "test.h"

// acc += x (type dt) is one fp32 addition per element of the value x holds: bit-exact against
// the same addition on the host, on a length that is not a multiple of the block
static void test_accumulate(int dt) {
    char name[64];
    snprintf(name, sizeof name, "cudnn_accumulate_%s", cu_dtype_name(dt));
    test_begin(name);
    long n = 4099;
    float *acc = rand_buf((size_t)n, 2.0f), *x = rand_buf((size_t)n, 3.0f);
    float *d_acc = (float *)to_dev(acc, sizeof(float) * n);
    void *d_x = to_dev_dt(x, (size_t)n, dt, 1);  // x becomes its rounded value
    cu_accumulate_dt(d_acc, d_x, n, dt);
    float *got = from_dev(d_acc, (size_t)n);
    long bad = 0;
    for (long i = 0; i < n; i++) {
        float want = acc[i] + x[i];
        bad += memcmp(&want, &got[i], sizeof want) != 0;
    }
    CHECK(!bad, "%ld of %ld sums differ from the host's fp32 addition", bad, n);
    cu_free(d_acc), cu_free(d_x);
    free(acc), free(x), free(got);
    test_end();
}

// lse (B, H, T) in double from the (rounded) q, k: log sum_{s <= t} exp(scale q_t . k_s)
// relative L2 distance of two increments (got - init, ref - init): the gradient's error without
// the accumulator it was added to
static double inc_rel_l2(const float *got, const float *ref, const float *init, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double g = (double)got[i] - init[i], r = (double)ref[i] - init[i];
        num += (g - r) * (g - r), den += r * r;
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}
static double max_abs_inc(const float *ref, const float *init, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)ref[i] - init[i]));
    return m;
}

// Tolerances of the backward. cuDNN reads dO rounded to dt (we round dout), recomputes P in
// fp32 and rounds P and dS to dt for the P^T dO, dS^T Q and dS K products (tensor cores),
// derives D = rowsum(dO * O) from the stored (rounded) out, and writes dQ, dK, dV rounded to
// dt: about four roundings of half an ulp (eps_dt) each, in sums of terms of mixed signs, so
// the relative L2 error of a gradient is about eps_dt (each rounding adds an rms of
// 2 eps / sqrt(12)). Bound: 4 eps_dt in L2 (bf16 1.6 %, fp16 0.2 %: a wrong scale, mask,
// layout or transpose is off by tens of percent), every element within 8 eps_dt of the largest
// increment plus 8 eps_dt relative, and above 1e-5 in L2 (really computed in half precision).
static double check_grad(const char *what, const float *d_got, const float *ref, const float *init, size_t n,
                         int dt) {
    float *got = from_dev(d_got, n);
    double eps = eps_dt(dt), e = inc_rel_l2(got, ref, init, n), m = max_abs_inc(ref, init, n);
    CHECK(e <= 4 * eps, "%s: relative L2 error %.3g of the gradient above 4 eps_dt = %.3g", what, e, 4 * eps);
    CHECK(e > 1e-5, "%s: relative L2 error %.3g: equal to fp32, not computed in %s?", what, e, cu_dtype_name(dt));
    check_arr(what, got, ref, n, 8 * eps * m, 8 * eps);
    free(got);
    return e;
}

static void test_cudnn_case(int B, int T, int H, int dqk, int dv, int dt) {
    char name[160];
    snprintf(name, sizeof name, "cudnn_attention_B%d_T%d_H%d_dqk%d_dv%d_%s", B, T, H, dqk, dv, cu_dtype_name(dt));
    test_begin(name);
    float scale = 1.0f / sqrtf((float)dqk);
    size_t nq = (size_t)B * T * H * dqk, nv = (size_t)B * T * H * dv, na = (size_t)B * H * T * T;
    size_t nl = (size_t)B * H * T, es = cu_dtype_size(dt);
    double eps = eps_dt(dt);
    float *q = rand_buf(nq, 1.5f), *k = rand_buf(nq, 1.5f), *v = rand_buf(nv, 1.0f), *dout = rand_buf(nv, 1.0f);
    float *dq0 = rand_buf(nq, 0.1f), *dk0 = rand_buf(nq, 0.1f), *dv0 = rand_buf(nv, 0.1f);
    float *dq = dup_buf(dq0, nq), *dk = dup_buf(dk0, nq), *dvv = dup_buf(dv0, nv);
    float *out = (float *)mallocCheck(sizeof(float) * nv), *att = (float *)mallocCheck(sizeof(float) * na);
    float *scr = (float *)mallocCheck(sizeof(float) * na);
    // q, k, v of type dt; the host copies become the rounded values, so the reference sees them
    void *d_q = to_dev_dt(q, nq, dt, 1), *d_k = to_dev_dt(k, nq, dt, 1), *d_v = to_dev_dt(v, nv, dt, 1);
    float *d_dout = (float *)to_dev(dout, sizeof(float) * nv);
    void *d_out = cu_malloc(es * nv), *d_outf = cu_malloc(es * nv);
    float *d_lse = (float *)cu_malloc(sizeof(float) * nl), *d_lsef = (float *)cu_malloc(sizeof(float) * nl);
    float *d_scr = (float *)cu_malloc(sizeof(float) * nl);
    attention_forward(out, att, q, k, v, B, T, H, dqk, dv, scale);
    attention_backward(dq, dk, dvv, scr, dout, att, q, k, v, B, T, H, dqk, dv, scale);

    // ---- forward: cuDNN, then the project's flash kernel on the same inputs
    int rc = cu_cudnn_attention_forward(d_out, d_lse, d_q, d_k, d_v, B, T, H, dqk, dv, scale, dt);
    CHECK(rc == 0, "cu_cudnn_attention_forward refused after supported() == 1: %s", cu_cudnn_attention_reason());
    cu_attention_forward(d_outf, d_lsef, d_q, d_k, d_v, B, T, H, dqk, dv, scale, dt);
    // out: cuDNN rounds P to dt before P V (|error| <= eps sum_s p |v| <= eps, |v| <= 1) and O
    // to dt (eps |O|); fp32 accumulation otherwise: within 2 eps + 2 eps |O| of the fp32
    // reference (twice the bound). The flash kernel rounds O, and on tensor cores (attention_tc.cu:
    // dqk, dv multiples of 16 up to 128) P as cuDNN does: within eps + eps |O| of the reference
    // (the same bound), so the two are within 3 eps + 3 eps |O| either way.
    float *o_c = from_dev_dt(d_out, nv, dt), *o_f = from_dev_dt(d_outf, nv, dt);
    check_arr("out vs reference", o_c, out, nv, 2 * eps, 2 * eps);
    check_arr("out vs flash kernel", o_c, o_f, nv, 3 * eps, 3 * eps);
    double e_out = rel_l2(o_c, out, nv);
    CHECK(e_out > 1e-5, "out equals the fp32 result to %.2g: not computed in %s", e_out, cu_dtype_name(dt));
    // lse: fp32 scores from the same rounded inputs, exp / log in fp32: 1e-4 absolute covers the
    // fp32 noise of scores up to ~10 with a wide margin, while a wrong scale or mask moves lse by
    // far more; the flash kernel's lse is the same quantity
    float *lse = from_dev(d_lse, nl), *lsef = from_dev(d_lsef, nl);
    int bad = 0, badf = 0;
    double worst = 0.0;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                size_t i = ((size_t)b * H + h) * T + t;
                double lr = lse_ref(q, k, T, H, dqk, scale, b, h, t), d = fabs(lse[i] - lr);
                worst = d > worst || isnan(d) ? d : worst;
                bad += !(d <= 1e-4 + 1e-5 * fabs(lr));
                badf += !(fabs((double)lse[i] - lsef[i]) <= 1e-4 + 1e-5 * fabs(lr));
            }
    CHECK(!bad, "lse off the double-precision log-sum-exp in %d of %zu rows (worst %.3g)", bad, nl, worst);
    CHECK(!badf, "lse off the flash kernel's in %d of %zu rows", badf, nl);

    // ---- backward: cuDNN from its own forward, the flash kernel, cuDNN from the flash forward
    float *d_dq = (float *)to_dev(dq0, sizeof(float) * nq), *d_dk = (float *)to_dev(dk0, sizeof(float) * nq);
    float *d_dv = (float *)to_dev(dv0, sizeof(float) * nv);
    rc = cu_cudnn_attention_backward(d_dq, d_dk, d_dv, d_dout, d_out, d_lse, d_q, d_k, d_v, B, T, H, dqk, dv, scale,
                                     dt);
    CHECK(rc == 0, "cu_cudnn_attention_backward refused after supported() == 1: %s", cu_cudnn_attention_reason());
    double e_dq = check_grad("dq", d_dq, dq, dq0, nq, dt);
    double e_dk = check_grad("dk", d_dk, dk, dk0, nq, dt);
    double e_dv = check_grad("dv", d_dv, dvv, dv0, nv, dt);
    printf("# %s: relative L2 errors out %.2g, dq %.2g, dk %.2g, dv %.2g (eps_dt %.2g); worst lse error %.2g\n", name,
           e_out, e_dq, e_dk, e_dv, eps, worst);
    // the flash kernel's gradients (fp32 arithmetic from the same rounded inputs; on tensor cores
    // with P, dS and dout rounded to dt as GEMM operands, as cuDNN does: relative L2 ~0.5 eps_dt
    // against the reference in test_cuda_attention) and cuDNN's: the same 4 eps_dt relative bound
    float *f_dq = (float *)to_dev(dq0, sizeof(float) * nq), *f_dk = (float *)to_dev(dk0, sizeof(float) * nq);
    float *f_dv = (float *)to_dev(dv0, sizeof(float) * nv);
    cu_attention_backward(f_dq, f_dk, f_dv, d_scr, d_dout, d_outf, d_lsef, d_q, d_k, d_v, B, T, H, dqk, dv, scale, dt);
    float *g_c[3] = {from_dev(d_dq, nq), from_dev(d_dk, nq), from_dev(d_dv, nv)};
    float *g_f[3] = {from_dev(f_dq, nq), from_dev(f_dk, nq), from_dev(f_dv, nv)};
    const float *g0[3] = {dq0, dk0, dv0};
    size_t gn[3] = {nq, nq, nv};
    const char *gname[3] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; i++) {
        double e = inc_rel_l2(g_c[i], g_f[i], g0[i], gn[i]);
        CHECK(e <= 4 * eps, "%s: cuDNN vs flash kernel relative L2 %.3g above %.3g", gname[i], e, 4 * eps);
    }
    // cuDNN's backward from the flash kernel's out and lse (the lead may mix the two paths)
    cu_upload(d_dq, dq0, sizeof(float) * nq), cu_upload(d_dk, dk0, sizeof(float) * nq);
    cu_upload(d_dv, dv0, sizeof(float) * nv);
    rc = cu_cudnn_attention_backward(d_dq, d_dk, d_dv, d_dout, d_outf, d_lsef, d_q, d_k, d_v, B, T, H, dqk, dv, scale,
                                     dt);
    CHECK(rc == 0, "cu_cudnn_attention_backward (flash forward) refused: %s", cu_cudnn_attention_reason());
    check_grad("dq (from the flash forward)", d_dq, dq, dq0, nq, dt);
    check_grad("dk (from the flash forward)", d_dk, dk, dk0, nq, dt);
    check_grad("dv (from the flash forward)", d_dv, dvv, dv0, nv, dt);

    for (int i = 0; i < 3; i++) free(g_c[i]), free(g_f[i]);
    cu_free(d_q), cu_free(d_k), cu_free(d_v), cu_free(d_dout), cu_free(d_out), cu_free(d_outf);
    cu_free(d_lse), cu_free(d_lsef), cu_free(d_scr), cu_free(d_dq), cu_free(d_dk), cu_free(d_dv);
    cu_free(f_dq), cu_free(f_dk), cu_free(f_dv);
    free(q), free(k), free(v), free(dout), free(dq0), free(dk0), free(dv0), free(dq), free(dk), free(dvv);
    free(out), free(att), free(scr), free(o_c), free(o_f), free(lse), free(lsef);
    test_end();
}

int main(void) {
    if (!cuda_test_start("cuda_attention_cudnn", 4321)) return test_summary();
    printf("# cuDNN %zu\n", cu_cudnn_version());
    test_accumulate(CU_F32);
    test_accumulate(CU_BF16);
    test_accumulate(CU_F16);

    // B, T, H, dqk, dv
    static const int cases[][5] = {
        {2, 37, 3, 64, 64},    // T not a multiple of 64
        {1, 70, 2, 96, 64},    // the model's MLA head sizes (qk 96 = 64 nope + 32 rope, v 64)
        {1, 200, 3, 96, 64},   // the same over several 64-row tiles, the last one partial
        {2, 128, 4, 128, 128}, // a common case
        {3, 5, 2, 32, 32},     // T shorter than any tile
        {1, 64, 2, 192, 128},  // DeepSeek-V3's head sizes (Hopper and newer)
    };
    const int n_cases = (int)(sizeof cases / sizeof cases[0]);
    const int dts[2] = {CU_BF16, CU_F16};
    int n_supported = 0;
    char first_reason[400] = "";
    int ok[sizeof cases / sizeof cases[0]][2];
    char why[sizeof cases / sizeof cases[0]][2][400];
    for (int c = 0; c < n_cases; c++)
        for (int j = 0; j < 2; j++) {
            ok[c][j] = cu_cudnn_attention_supported(cases[c][0], cases[c][1], cases[c][2], cases[c][3], cases[c][4],
                                                    dts[j]);
            snprintf(why[c][j], sizeof why[c][j], "%s", cu_cudnn_attention_reason());
            if (ok[c][j]) n_supported++;
            else if (!first_reason[0]) snprintf(first_reason, sizeof first_reason, "%s", why[c][j]);
        }
    if (n_supported == 0) {
        test_skip("cuda_attention_cudnn", "cuDNN attention unavailable: %s", first_reason);
    } else {
        for (int c = 0; c < n_cases; c++)
            for (int j = 0; j < 2; j++) {
                if (ok[c][j]) {
                    test_cudnn_case(cases[c][0], cases[c][1], cases[c][2], cases[c][3], cases[c][4], dts[j]);
                } else {
                    char name[160];
                    snprintf(name, sizeof name, "cudnn_attention_B%d_T%d_H%d_dqk%d_dv%d_%s", cases[c][0], cases[c][1],
                             cases[c][2], cases[c][3], cases[c][4], cu_dtype_name(dts[j]));
                    test_skip(name, "cuDNN refuses: %s", why[c][j]);
                }
            }
    }
    cu_cudnn_attention_release();
    return test_summary();
}
