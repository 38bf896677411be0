// The CUDA flash-style causal attention (model/cuda/attention.cu) against the CPU reference
// (model/layers.h attention_forward / attention_backward) on awkward sizes: tiled and
// untiled kernels, T shorter than a tile, row widths H*dqk not a multiple of 8; every case in
// fp32, bf16 and fp16 (q, k, v, out of that type; lse, dout and the gradients fp32). Built
// through the harness (make test) and with nvcc (make test-gpu).
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "../model/cpu/moe.h"
#include "../model/cuda/cuda_ops.h"
#include "../model/layers.h"
#include "../model/model.h"
#include "cuda_test_util.h"
#include "test.h"

// lse (B, H, T) in double from the (rounded) q, k: log sum_{s <= t} exp(scale q_t . k_s)
// The device backward reads the forward output it stored, rounded to dt: its softmax term
// D_t = dout_t . out_t then differs from the reference's (which sums p * dp in fp32, i.e.
// dout_t . out_t with the unrounded out) by dD_t = dout_t . (out_dev_t - out_ref_t), one
// rounding of dt per element of out. Everything else it computes in fp32 from the same
// (rounded) q, k, v, dout. ds_ts = p_ts (dp_ts - D_t) scale, so the reference gradients move by
//   dq_t -= scale dD_t sum_s p_ts k_s,   dk_s -= scale sum_t p_ts dD_t q_t   (dv does not use D)
// This adds exactly that (in double) to the reference, which then matches the device to fp32
// noise: the half-precision backward is checked with the fp32 tolerances. Returns max |dD_t|.
static double apply_rounded_out(float *dq, float *dk, const float *att, const float *dout, const float *out_dev,
                                const float *out_ref, const float *q, const float *k, int B, int T, int H, int dqk,
                                int dv, float scale) {
    double worst = 0.0;
    double *dD = (double *)mallocCheck(sizeof(double) * T);
    double *acc = (double *)mallocCheck(sizeof(double) * dqk);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            for (int t = 0; t < T; t++) {
                size_t o = (((size_t)b * T + t) * H + h) * dv;
                double s = 0.0;
                for (int d = 0; d < dv; d++) s += (double)dout[o + d] * ((double)out_dev[o + d] - out_ref[o + d]);
                dD[t] = s;
                worst = fabs(s) > worst ? fabs(s) : worst;
            }
            const float *A = att + ((size_t)b * H + h) * T * T;
            for (int t = 0; t < T; t++) {  // dq_t
                for (int i = 0; i < dqk; i++) acc[i] = 0.0;
                for (int s = 0; s <= t; s++) {
                    const float *ks = k + (((size_t)b * T + s) * H + h) * dqk;
                    for (int i = 0; i < dqk; i++) acc[i] += (double)A[(size_t)t * T + s] * ks[i];
                }
                float *g = dq + (((size_t)b * T + t) * H + h) * dqk;
                for (int i = 0; i < dqk; i++) g[i] = (float)(g[i] - scale * dD[t] * acc[i]);
            }
            for (int s = 0; s < T; s++) {  // dk_s
                for (int i = 0; i < dqk; i++) acc[i] = 0.0;
                for (int t = s; t < T; t++) {
                    const float *qt = q + (((size_t)b * T + t) * H + h) * dqk;
                    for (int i = 0; i < dqk; i++) acc[i] += (double)A[(size_t)t * T + s] * dD[t] * qt[i];
                }
                float *g = dk + (((size_t)b * T + s) * H + h) * dqk;
                for (int i = 0; i < dqk; i++) g[i] = (float)(g[i] - scale * acc[i]);
            }
        }
    free(dD), free(acc);
    return worst;
}

// determinism: run forward and backward a second time (the harness reverses the thread order
// from one launch to the next) and require identical bits
static void test_attention_case(const char *label, int B, int T, int H, int dqk, int dv, int dt, int repeat) {
    char name[160];
    snprintf(name, sizeof name, "%s_%s", label, cu_dtype_name(dt));
    test_begin(name);
    float scale = 1.0f / sqrtf((float)dqk);
    size_t nq = (size_t)B * T * H * dqk, nv = (size_t)B * T * H * dv, na = (size_t)B * H * T * T;
    size_t nl = (size_t)B * H * T, es = cu_dtype_size(dt);
    float *q = rand_buf(nq, 1.5f), *k = rand_buf(nq, 1.5f), *v = rand_buf(nv, 1.0f), *dout = rand_buf(nv, 1.0f);
    float *dq = rand_buf(nq, 0.1f), *dk = rand_buf(nq, 0.1f), *dvv = rand_buf(nv, 0.1f);
    float *out = (float *)mallocCheck(sizeof(float) * nv), *att = (float *)mallocCheck(sizeof(float) * na);
    float *scr = (float *)mallocCheck(sizeof(float) * na);
    // q, k, v of type dt; the host copies become the rounded values, so the reference sees them
    void *d_q = to_dev_dt(q, nq, dt, 1), *d_k = to_dev_dt(k, nq, dt, 1), *d_v = to_dev_dt(v, nv, dt, 1);
    float *d_dout = (float *)to_dev(dout, sizeof(float) * nv);
    float *d_dq = (float *)to_dev(dq, sizeof(float) * nq), *d_dk = (float *)to_dev(dk, sizeof(float) * nq);
    float *d_dv = (float *)to_dev(dvv, sizeof(float) * nv);
    void *d_out = cu_malloc(es * nv);
    float *d_lse = (float *)cu_malloc(sizeof(float) * nl), *d_scr = (float *)cu_malloc(sizeof(float) * nl);
    attention_forward(out, att, q, k, v, B, T, H, dqk, dv, scale);
    cu_attention_forward(d_out, d_lse, d_q, d_k, d_v, B, T, H, dqk, dv, scale, dt);
    // out: fp32 arithmetic on the same inputs, then one rounding to dt (half an ulp, eps_dt
    // relative) on top of the fp32 accumulation noise
    check_dev_dt("out", d_out, dt, out, nv, ATOL, RTOL + (dt == CU_F32 ? 0.0 : eps_dt(dt)));
    float *out_dev = from_dev_dt(d_out, nv, dt);
    if (dt != CU_F32) {  // the output really is stored in dt: off the fp32 result by its rounding
        double e = rel_l2(out_dev, out, nv);
        CHECK(e > 1e-5, "out in %s equals the fp32 result to %.2g: not stored in %s", cu_dtype_name(dt), e,
              cu_dtype_name(dt));
    }
    // lse is fp32 from the same inputs: tight against a double-precision loop, and consistent
    // with the reference's probabilities (att[t][t] = exp(scale q_t.k_t - lse_t))
    float *lse = from_dev(d_lse, nl);
    int bad = 0, bad_ref = 0;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                const float *qt = q + (((size_t)b * T + t) * H + h) * dqk, *kt = k + (((size_t)b * T + t) * H + h) * dqk;
                float s = 0.0f, L = lse[((size_t)b * H + h) * T + t];
                for (int i = 0; i < dqk; i++) s += qt[i] * kt[i];
                float p = expf(scale * s - L);
                float ref = att[(((size_t)b * H + h) * T + t) * T + t];
                bad += !(fabsf(p - ref) <= 1e-5f + 1e-4f * ref);
                double lr = lse_ref(q, k, T, H, dqk, scale, b, h, t);
                bad_ref += !(fabs(L - lr) <= ATOL + RTOL * fabs(lr));
            }
    CHECK(!bad, "lse inconsistent with the probabilities in %d rows", bad);
    CHECK(!bad_ref, "lse off the double-precision log-sum-exp in %d of %zu rows", bad_ref, nl);
    attention_backward(dq, dk, dvv, scr, dout, att, q, k, v, B, T, H, dqk, dv, scale);
    if (dt != CU_F32) {
        double dD = apply_rounded_out(dq, dk, att, dout, out_dev, out, q, k, B, T, H, dqk, dv, scale);
        CHECK(dD > 0.0, "the rounded out changes no softmax term D (max |dD| %.3g)", dD);
    }
    cu_attention_backward(d_dq, d_dk, d_dv, d_scr, d_dout, d_out, d_lse, d_q, d_k, d_v, B, T, H, dqk, dv, scale, dt);
    check_dev("dq", d_dq, dq, nq, ATOL, RTOL);
    check_dev("dk", d_dk, dk, nq, ATOL, RTOL);
    check_dev("dv", d_dv, dvv, nv, ATOL, RTOL);
    if (repeat) {
        void *d_out2 = cu_malloc(es * nv);
        float *d_lse2 = (float *)cu_malloc(sizeof(float) * nl);
        cu_attention_forward(d_out2, d_lse2, d_q, d_k, d_v, B, T, H, dqk, dv, scale, dt);
        unsigned char *o1 = (unsigned char *)mallocCheck(es * nv), *o2 = (unsigned char *)mallocCheck(es * nv);
        cu_download(o1, d_out, es * nv), cu_download(o2, d_out2, es * nv);
        float *lse2 = from_dev(d_lse2, nl);
        CHECK(!memcmp(o1, o2, es * nv) && !memcmp(lse, lse2, sizeof(float) * nl), "forward not deterministic");
        // backward again from zero gradients, twice: bitwise equal
        float *g[2][3];
        for (int r = 0; r < 2; r++) {
            float *z[3] = {(float *)cu_malloc(sizeof(float) * nq), (float *)cu_malloc(sizeof(float) * nq),
                           (float *)cu_malloc(sizeof(float) * nv)};
            cu_zero(z[0], sizeof(float) * nq), cu_zero(z[1], sizeof(float) * nq), cu_zero(z[2], sizeof(float) * nv);
            cu_attention_backward(z[0], z[1], z[2], d_scr, d_dout, d_out, d_lse, d_q, d_k, d_v, B, T, H, dqk, dv,
                                  scale, dt);
            g[r][0] = from_dev(z[0], nq), g[r][1] = from_dev(z[1], nq), g[r][2] = from_dev(z[2], nv);
            cu_free(z[0]), cu_free(z[1]), cu_free(z[2]);
        }
        CHECK(!memcmp(g[0][0], g[1][0], sizeof(float) * nq) && !memcmp(g[0][1], g[1][1], sizeof(float) * nq) &&
                  !memcmp(g[0][2], g[1][2], sizeof(float) * nv),
              "backward not deterministic");
        for (int r = 0; r < 2; r++) free(g[r][0]), free(g[r][1]), free(g[r][2]);
        free(o1), free(o2), free(lse2);
        cu_free(d_out2), cu_free(d_lse2);
    }
    free(lse), free(out_dev);
    cu_free(d_q), cu_free(d_k), cu_free(d_v), cu_free(d_dout), cu_free(d_dq), cu_free(d_dk), cu_free(d_dv);
    cu_free(d_out), cu_free(d_lse), cu_free(d_scr);
    free(q), free(k), free(v), free(dout), free(dq), free(dk), free(dvv), free(out), free(att), free(scr);
    test_end();
}

int main(void) {
    if (!cuda_test_start("cuda_attention", 1234)) return test_summary();
    const int dts[3] = {CU_F32, CU_BF16, CU_F16};
    for (int i = 0; i < 3; i++) {
        int dt = dts[i];
        if (!cu_supports_dtype(dt)) {
            test_skip(cu_dtype_name(dt), "element type not supported by the device");
            continue;
        }
        test_attention_case("cuda_attention_T37_dqk10_dv7", 2, 37, 3, 10, 7, dt, 0);
        test_attention_case("cuda_attention_T70_dqk40_dv36", 1, 70, 2, 40, 36, dt, 0);
        test_attention_case("cuda_attention_T5_shorter_than_a_tile", 3, 5, 2, 12, 8, dt, 0);
        // head sizes whose K/V chunk does not fit 48 KiB: the untiled kernels
        test_attention_case("cuda_attention_untiled_dqk256_dv200", 1, 35, 1, 256, 200, dt, 0);
        // DeepSeek-V3 head sizes: tiled forward (46 KiB), untiled backward (50.5 KiB)
        test_attention_case("cuda_attention_fwd_tiled_bwd_untiled_dqk192_dv128", 1, 19, 1, 192, 128, dt, 0);
    }
    // odd row widths (H*dqk = 39, H*dv = 33: 2-byte rows start at odd element offsets), T not
    // a multiple of the tile (8) nor of the key chunk (32); run twice for determinism
    test_attention_case("cuda_attention_T45_H3_dqk13_dv11", 2, 45, 3, 13, 11, CU_BF16, 1);
    return test_summary();
}
