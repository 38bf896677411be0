// The CUDA layer kernels (model/cuda/layers.cu, bf16.cu, optim.cu, runtime.cu: embedding,
// RMSNorm, RoPE, SwiGLU, cross-entropy, GEMMs, optimizer, element-type conversions) against
// the CPU reference (model/layers.h) on random inputs of awkward sizes. Built twice: through
// the CUDA-on-CPU harness (make test) and with nvcc for a real GPU (make test-gpu).
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


static void test_encoder(void) {
    test_begin("cuda_encoder_fwd_bwd");
    int N = 37, C = 45, V = 11;
    int *tok = (int *)mallocCheck(sizeof(int) * N);
    for (int n = 0; n < N; n++) tok[n] = (n * 7 + 3) % V;  // repeats
    float *wte = rand_buf((size_t)V * C, 1.0f), *dout = rand_buf((size_t)N * C, 1.0f);
    float *dwte = rand_buf((size_t)V * C, 0.5f);
    float *out = (float *)mallocCheck(sizeof(float) * N * C);
    int *d_tok = (int *)to_dev(tok, sizeof(int) * N);
    float *d_wte = (float *)to_dev(wte, sizeof(float) * V * C), *d_dout = (float *)to_dev(dout, sizeof(float) * N * C);
    float *d_dwte = (float *)to_dev(dwte, sizeof(float) * V * C), *d_out = (float *)cu_malloc(sizeof(float) * N * C);
    encoder_forward(out, tok, wte, N, C);
    cu_encoder_forward(d_out, d_tok, d_wte, N, C);
    check_dev("out", d_out, out, (size_t)N * C, 0, 0);
    encoder_backward(dwte, dout, tok, N, C);
    cu_encoder_backward(d_dwte, d_dout, d_tok, N, C);
    check_dev("dwte", d_dwte, dwte, (size_t)V * C, 1e-6, 1e-6);
    cu_free(d_tok), cu_free(d_wte), cu_free(d_dout), cu_free(d_dwte), cu_free(d_out);
    free(tok), free(wte), free(dout), free(dwte), free(out);
    test_end();
}

static void test_rmsnorm(void) {
    test_begin("cuda_rmsnorm_fwd_bwd_strided");
    int N = 37, C = 45, S = 50;  // rows S apart, as c_kv inside [c_kv, k_pe]
    float eps = 1e-6f;
    float *x = rand_buf((size_t)N * S, 2.0f), *w = rand_buf(C, 1.0f), *dout = rand_buf((size_t)N * C, 1.0f);
    float *dinp = rand_buf((size_t)N * S, 0.3f), *dw = rand_buf(C, 0.3f);
    float *out = (float *)mallocCheck(sizeof(float) * N * C), *rstd = (float *)mallocCheck(sizeof(float) * N);
    float *d_x = (float *)to_dev(x, sizeof(float) * N * S), *d_w = (float *)to_dev(w, sizeof(float) * C);
    float *d_dout = (float *)to_dev(dout, sizeof(float) * N * C), *d_dinp = (float *)to_dev(dinp, sizeof(float) * N * S);
    float *d_dw = (float *)to_dev(dw, sizeof(float) * C);
    float *d_out = (float *)cu_malloc(sizeof(float) * N * C), *d_rstd = (float *)cu_malloc(sizeof(float) * N);
    rmsnorm_forward(out, rstd, x, S, w, N, C, eps);
    cu_rmsnorm_forward(d_out, d_rstd, d_x, S, d_w, N, C, eps);
    check_dev("out", d_out, out, (size_t)N * C, ATOL, RTOL);
    check_dev("rstd", d_rstd, rstd, N, ATOL, RTOL);
    rmsnorm_backward(dinp, S, dw, dout, x, S, w, rstd, N, C);
    cu_rmsnorm_backward(d_dinp, S, d_dw, d_dout, d_x, S, d_w, d_rstd, N, C);
    check_dev("dinp", d_dinp, dinp, (size_t)N * S, ATOL, RTOL);
    check_dev("dweight", d_dw, dw, C, ATOL, RTOL);
    test_end();

    test_begin("cuda_residual_rmsnorm_fused");
    float *a = rand_buf((size_t)N * C, 1.0f), *b = rand_buf((size_t)N * C, 1.0f);
    float *sum = (float *)mallocCheck(sizeof(float) * N * C);
    for (int i = 0; i < N * C; i++) sum[i] = a[i] + b[i];
    rmsnorm_forward(out, rstd, sum, C, w, N, C, eps);
    float *d_a = (float *)to_dev(a, sizeof(float) * N * C), *d_b = (float *)to_dev(b, sizeof(float) * N * C);
    float *d_sum = (float *)cu_malloc(sizeof(float) * N * C);
    cu_residual_rmsnorm_forward(d_sum, d_out, d_rstd, d_a, d_b, d_w, N, C, eps);
    check_dev("x_out", d_sum, sum, (size_t)N * C, 0, 0);
    check_dev("out", d_out, out, (size_t)N * C, ATOL, RTOL);
    check_dev("rstd", d_rstd, rstd, N, ATOL, RTOL);
    cu_add(d_sum, d_a, d_b, (long)N * C);
    check_dev("add", d_sum, sum, (size_t)N * C, 0, 0);
    cu_free(d_a), cu_free(d_b), cu_free(d_sum);
    free(a), free(b), free(sum);
    cu_free(d_x), cu_free(d_w), cu_free(d_dout), cu_free(d_dinp), cu_free(d_dw), cu_free(d_out), cu_free(d_rstd);
    free(x), free(w), free(dout), free(dinp), free(dw), free(out), free(rstd);
    test_end();
}

// many tokens: the weight gradient is summed in several segments
static void test_rmsnorm_long(void) {
    test_begin("cuda_rmsnorm_bwd_many_tokens");
    int N = 700, C = 33;
    float *x = rand_buf((size_t)N * C, 2.0f), *w = rand_buf(C, 1.0f), *dout = rand_buf((size_t)N * C, 1.0f);
    float *dinp = rand_buf((size_t)N * C, 0.3f), *dw = rand_buf(C, 0.3f);
    float *out = (float *)mallocCheck(sizeof(float) * N * C), *rstd = (float *)mallocCheck(sizeof(float) * N);
    float *d_x = (float *)to_dev(x, sizeof(float) * N * C), *d_w = (float *)to_dev(w, sizeof(float) * C);
    float *d_dout = (float *)to_dev(dout, sizeof(float) * N * C), *d_dinp = (float *)to_dev(dinp, sizeof(float) * N * C);
    float *d_dw = (float *)to_dev(dw, sizeof(float) * C), *d_rstd = (float *)cu_malloc(sizeof(float) * N);
    rmsnorm_forward(out, rstd, x, C, w, N, C, 1e-6f);
    cu_upload(d_rstd, rstd, sizeof(float) * N);
    rmsnorm_backward(dinp, C, dw, dout, x, C, w, rstd, N, C);
    cu_rmsnorm_backward(d_dinp, C, d_dw, d_dout, d_x, C, d_w, d_rstd, N, C);
    check_dev("dinp", d_dinp, dinp, (size_t)N * C, ATOL, RTOL);
    check_dev("dweight", d_dw, dw, C, 1e-4, 1e-4);
    cu_free(d_x), cu_free(d_w), cu_free(d_dout), cu_free(d_dinp), cu_free(d_dw), cu_free(d_rstd);
    free(x), free(w), free(dout), free(dinp), free(dw), free(out), free(rstd);
    test_end();
}

static void test_rope(void) {
    test_begin("cuda_rope_interleaved_fwd_inverse");
    int N = 13, H = 3, nope = 6, rope = 4, dqk = nope + rope;
    float theta = 10000.0f;
    int *pos = (int *)mallocCheck(sizeof(int) * N);
    for (int n = 0; n < N; n++) pos[n] = n % 5 * 3;
    float *x = rand_buf((size_t)N * H * dqk, 1.0f), *ref = dup_buf(x, (size_t)N * H * dqk);
    float *d_x = (float *)to_dev(x, sizeof(float) * N * H * dqk);
    int *d_pos = (int *)to_dev(pos, sizeof(int) * N);
    rope_apply(ref + nope, N, H, H * dqk, dqk, rope, pos, theta, 0);
    cu_rope_apply(d_x + nope, N, H, H * dqk, dqk, rope, d_pos, theta, 0);
    check_dev("rotated", d_x, ref, (size_t)N * H * dqk, 1e-6, 1e-5);
    rope_apply(ref + nope, N, H, H * dqk, dqk, rope, pos, theta, 1);
    cu_rope_apply(d_x + nope, N, H, H * dqk, dqk, rope, d_pos, theta, 1);
    check_dev("inverse", d_x, ref, (size_t)N * H * dqk, 1e-6, 1e-5);
    check_dev("round trip", d_x, x, (size_t)N * H * dqk, 1e-5, 1e-5);
    cu_free(d_x), cu_free(d_pos);
    free(x), free(ref), free(pos);
    test_end();
}

static void test_swiglu(void) {
    test_begin("cuda_swiglu_fwd_bwd");
    long n = 1001;
    float *h1 = rand_buf(n, 4.0f), *h3 = rand_buf(n, 2.0f), *dout = rand_buf(n, 1.0f);
    float *dh1 = rand_buf(n, 0.1f), *dh3 = rand_buf(n, 0.1f), *out = (float *)mallocCheck(sizeof(float) * n);
    float *d_h1 = (float *)to_dev(h1, sizeof(float) * n), *d_h3 = (float *)to_dev(h3, sizeof(float) * n);
    float *d_dout = (float *)to_dev(dout, sizeof(float) * n), *d_dh1 = (float *)to_dev(dh1, sizeof(float) * n);
    float *d_dh3 = (float *)to_dev(dh3, sizeof(float) * n), *d_out = (float *)cu_malloc(sizeof(float) * n);
    swiglu_forward(out, h1, h3, n);
    cu_swiglu_forward(d_out, d_h1, d_h3, n);
    check_dev("out", d_out, out, n, 1e-6, 1e-5);
    swiglu_backward(dh1, dh3, dout, h1, h3, n);
    cu_swiglu_backward(d_dh1, d_dh3, d_dout, d_h1, d_h3, n);
    check_dev("dh1", d_dh1, dh1, n, 1e-6, 1e-5);
    check_dev("dh3", d_dh3, dh3, n, 1e-6, 1e-5);
    cu_free(d_h1), cu_free(d_h3), cu_free(d_dout), cu_free(d_dh1), cu_free(d_dh3), cu_free(d_out);
    free(h1), free(h3), free(dout), free(dh1), free(dh3), free(out);
    test_end();
}

static void test_crossentropy(void) {
    test_begin("cuda_crossentropy_fwd_bwd_ignored");
    int N = 19, V = 77;
    float *logits = rand_buf((size_t)N * V, 5.0f);
    int *tg = (int *)mallocCheck(sizeof(int) * N);
    for (int n = 0; n < N; n++) tg[n] = n % 6 == 2 ? -1 : (n * 13) % V;
    float *lse = (float *)mallocCheck(sizeof(float) * N);
    float *d_logits = (float *)to_dev(logits, sizeof(float) * N * V);
    int *d_tg = (int *)to_dev(tg, sizeof(int) * N);
    float *d_lse = (float *)cu_malloc(sizeof(float) * N), *d_loss = (float *)cu_malloc(sizeof(float));
    float *d_scr = (float *)cu_malloc(sizeof(float) * N);
    int *d_nv = (int *)cu_malloc(sizeof(int));
    int nv = 0;
    float loss = crossentropy_forward(lse, logits, tg, N, V, &nv);
    cu_crossentropy_forward(d_lse, d_loss, d_nv, d_scr, d_logits, d_tg, N, V);
    float got_loss;
    int got_nv;
    cu_download(&got_loss, d_loss, sizeof(float));
    cu_download(&got_nv, d_nv, sizeof(int));
    CHECK(got_nv == nv, "n_valid %d expected %d", got_nv, nv);
    CHECK_CLOSE(got_loss, loss, 1e-5, 1e-5, "loss");
    check_dev("lse", d_lse, lse, N, ATOL, RTOL);
    crossentropy_backward(logits, lse, tg, N, V, 0.7f, nv);
    cu_crossentropy_backward(d_logits, d_lse, d_tg, N, V, 0.7f, d_nv);
    check_dev("dlogits", d_logits, logits, (size_t)N * V, 1e-6, 1e-4);
    cu_free(d_logits), cu_free(d_tg), cu_free(d_lse), cu_free(d_loss), cu_free(d_scr), cu_free(d_nv);
    free(logits), free(tg), free(lse);
    test_end();
}

static void test_matmul(void) {
    test_begin("cuda_matmul_fwd_bwd");
    int N = 23, IC = 17, OC = 29;
    float *x = rand_buf((size_t)N * IC, 1.0f), *w = rand_buf((size_t)OC * IC, 1.0f), *dout = rand_buf((size_t)N * OC, 1.0f);
    float *dx = rand_buf((size_t)N * IC, 0.1f), *dw = rand_buf((size_t)OC * IC, 0.1f);
    float *out = (float *)mallocCheck(sizeof(float) * N * OC);
    float *d_x = (float *)to_dev(x, sizeof(float) * N * IC), *d_w = (float *)to_dev(w, sizeof(float) * OC * IC);
    float *d_dout = (float *)to_dev(dout, sizeof(float) * N * OC), *d_dx = (float *)to_dev(dx, sizeof(float) * N * IC);
    float *d_dw = (float *)to_dev(dw, sizeof(float) * OC * IC), *d_out = (float *)cu_malloc(sizeof(float) * N * OC);
    matmul_forward(out, x, w, N, IC, OC);
    cu_matmul_forward(d_out, d_x, d_w, N, IC, OC);
    check_dev("out", d_out, out, (size_t)N * OC, ATOL, RTOL);
    matmul_backward(dx, dw, dout, x, w, N, IC, OC);
    cu_matmul_backward(d_dx, d_dw, d_dout, d_x, d_w, N, IC, OC);
    check_dev("dinp", d_dx, dx, (size_t)N * IC, ATOL, RTOL);
    check_dev("dweight", d_dw, dw, (size_t)OC * IC, ATOL, RTOL);
    cu_free(d_x), cu_free(d_w), cu_free(d_dout), cu_free(d_dx), cu_free(d_dw), cu_free(d_out);
    free(x), free(w), free(dout), free(dx), free(dw), free(out);
    test_end();
}

// ---- optimizer --------------------------------------------------------------------------------

static void test_optim(void) {
    test_begin("cuda_global_norm");
    size_t n = 70001;
    float *g = rand_buf(n, 1.0f);
    double ss = 0.0;
    for (size_t i = 0; i < n; i++) ss += (double)g[i] * g[i];
    float *d_g = (float *)to_dev(g, sizeof(float) * n), *d_out = (float *)cu_malloc(sizeof(float));
    float *d_scr = (float *)cu_malloc(sizeof(float) * 1024);
    cu_global_norm(d_out, d_g, n, d_scr);
    float norm;
    cu_download(&norm, d_out, sizeof(float));
    CHECK_CLOSE(norm, sqrt(ss), 0.0, 1e-5, "norm");
    test_end();

    test_begin("cuda_nonfinite_flag");
    int flag = 0, *d_flag = (int *)cu_malloc(sizeof(int));
    cu_zero(d_flag, sizeof(int));
    cu_nonfinite_flag(d_flag, d_g, n);
    cu_download(&flag, d_flag, sizeof(int));
    CHECK(flag == 0, "finite values flagged");
    float bad_vals[2] = {NAN, -INFINITY};
    for (int b = 0; b < 2; b++) {
        float *tmp = dup_buf(g, n);
        tmp[n - 2 - b * 30000] = bad_vals[b];
        float *d_tmp = (float *)to_dev(tmp, sizeof(float) * n);
        cu_zero(d_flag, sizeof(int));
        cu_nonfinite_flag(d_flag, d_tmp, n);
        cu_download(&flag, d_flag, sizeof(int));
        CHECK(flag == 1, "%s not flagged", b ? "-inf" : "NaN");
        cu_free(d_tmp), free(tmp);
    }
    cu_free(d_flag);
    test_end();

    test_begin("cuda_adamw");
    float *p = rand_buf(n, 1.0f), *m = rand_buf(n, 0.01f), *v = rand_buf(n, 0.01f);
    for (size_t i = 0; i < n; i++) v[i] = fabsf(v[i]);
    float *d_p = (float *)to_dev(p, sizeof(float) * n), *d_m = (float *)to_dev(m, sizeof(float) * n);
    float *d_v = (float *)to_dev(v, sizeof(float) * n);
    float lr = 3e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f, gs = 0.5f;
    int t = 7;
    float b1c = 1.0f - powf(b1, (float)t), b2c = 1.0f - powf(b2, (float)t);
    for (size_t i = 0; i < n; i++) p[i] = lm_adamw(p[i], g[i] * gs, &m[i], &v[i], lr, b1, b2, eps, wd, b1c, b2c);
    cu_adamw(d_p, d_g, d_m, d_v, n, lr, b1, b2, eps, wd, gs, b1c, b2c);
    check_dev("params", d_p, p, n, 1e-7, 1e-6);
    check_dev("m", d_m, m, n, 1e-9, 1e-6);
    check_dev("v", d_v, v, n, 1e-12, 1e-6);
    cu_free(d_p), cu_free(d_m), cu_free(d_v), cu_free(d_g), cu_free(d_out), cu_free(d_scr);
    free(p), free(m), free(v), free(g);
    test_end();

    test_begin("cuda_bias_update_matches_model_update_bias");
    // the CPU reference: model_update_bias on a minimal Model with one MoE block
    int E = 7;
    Model mod;
    memset(&mod, 0, sizeof mod);
    config_tiny(&mod.cfg);
    mod.cfg.n_routed_experts = E;
    mod.cfg.balance = BALANCE_BIAS;
    mod.cfg.bias_update_speed = 1e-3f;
    double load[7] = {5, 9, 7, 7, 0, 12, 2};  // mean 6
    float loadf[7], bias[7];
    for (int e = 0; e < E; e++) loadf[e] = (float)load[e], bias[e] = 0.01f * (float)e;
    float *d_bias = (float *)to_dev(bias, sizeof bias), *d_load = (float *)to_dev(loadf, sizeof loadf);
    mod.n_moe = 1;
    mod.stats[0].layer = 0;
    mod.stats[0].load = load;
    mod.bias = bias;
    model_update_bias(&mod);
    cu_bias_update(d_bias, d_load, E, mod.cfg.bias_update_speed);
    check_dev("bias", d_bias, bias, E, 0, 0);
    cu_free(d_bias), cu_free(d_load);
    test_end();
}

// ---- bf16 --------------------------------------------------------------------------------------

// random bf16 values and their exact fp32 images
static uint16_t *rand_bf16(size_t n, float scale, float **as_f32) {
    uint16_t *h = (uint16_t *)mallocCheck(sizeof(uint16_t) * (n ? n : 1));
    float *f = (float *)mallocCheck(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) {
        h[i] = f2bf(scale * (2.0f * rng_uniform(&rng) - 1.0f));
        f[i] = bf2f(h[i]);
    }
    *as_f32 = f;
    return h;
}
static void check_dev_bf16(const char *what, const uint16_t *dev, const float *ref, size_t n, double atol, double rtol) {
    uint16_t *h = (uint16_t *)mallocCheck(sizeof(uint16_t) * (n ? n : 1));
    float *f = (float *)mallocCheck(sizeof(float) * (n ? n : 1));
    cu_download(h, dev, sizeof(uint16_t) * n);
    for (size_t i = 0; i < n; i++) f[i] = bf2f(h[i]);
    check_arr(what, f, ref, n, atol, rtol);
    free(h), free(f);
}
#define BF_RTOL (1.0 / 128.0)  // two roundings of 2^-9 each, plus fp32 noise

static void test_bf16(void) {
    test_begin("cuda_bf16_conversions");
    long n = 1003;
    float *x = rand_buf(n, 3.0f), *back = (float *)mallocCheck(sizeof(float) * n);
    float *d_x = (float *)to_dev(x, sizeof(float) * n), *d_back = (float *)cu_malloc(sizeof(float) * n);
    uint16_t *d_h = (uint16_t *)cu_malloc(sizeof(uint16_t) * n);
    cu_f32_to_bf16(d_h, d_x, n);
    uint16_t *h = (uint16_t *)mallocCheck(sizeof(uint16_t) * n);
    cu_download(h, d_h, sizeof(uint16_t) * n);
    int bad = 0;
    for (long i = 0; i < n; i++) bad += h[i] != f2bf(x[i]);
    CHECK(!bad, "round-to-nearest-even differs from the reference in %d values", bad);
    cu_bf16_to_f32(d_back, d_h, n);
    for (long i = 0; i < n; i++) back[i] = bf2f(h[i]);
    check_dev("widen", d_back, back, n, 0, 0);
    test_end();

    test_begin("cuda_bf16_stochastic_rounding_unbiased");
    // many copies of one value between two bf16 neighbours: every result is a neighbour, the mean is the value
    long m = 4096;
    float v = 1.0f + 0.3f / 128.0f;  // 30 % of the way from 1 to the next bf16 (1 + 2^-7)
    float *vs = (float *)mallocCheck(sizeof(float) * m);
    for (long i = 0; i < m; i++) vs[i] = v;
    float *d_vs = (float *)to_dev(vs, sizeof(float) * m);
    uint16_t *d_r = (uint16_t *)cu_malloc(sizeof(uint16_t) * m), *r = (uint16_t *)mallocCheck(sizeof(uint16_t) * m);
    cu_f32_to_bf16_stochastic(d_r, d_vs, m, 1234u);
    cu_download(r, d_r, sizeof(uint16_t) * m);
    double mean = 0.0;
    int outside = 0, up = 0;
    for (long i = 0; i < m; i++) {
        float f = bf2f(r[i]);
        outside += f != 1.0f && f != 1.0f + 1.0f / 128.0f;
        up += f != 1.0f;
        mean += f;
    }
    mean /= m;
    CHECK(!outside, "%d results are not a neighbour of the value", outside);
    CHECK(fabs(mean - v) < 3e-4, "mean %.7f expected %.7f (%d of %ld rounded up)", mean, v, up, m);
    cu_free(d_vs), cu_free(d_r), free(vs), free(r);
    test_end();

    test_begin("cuda_bf16_encoder_rmsnorm_swiglu");
    int N = 21, C = 37, V = 9;
    float *wte_f, *w_f, *xin_f;
    uint16_t *wte = rand_bf16((size_t)V * C, 1.0f, &wte_f), *w = rand_bf16(C, 1.0f, &w_f);
    uint16_t *xin = rand_bf16((size_t)N * C, 2.0f, &xin_f);
    int *tok = (int *)mallocCheck(sizeof(int) * N);
    for (int i = 0; i < N; i++) tok[i] = (i * 4 + 1) % V;
    float *ref = (float *)mallocCheck(sizeof(float) * N * C), *rstd = (float *)mallocCheck(sizeof(float) * N);
    int *d_tok = (int *)to_dev(tok, sizeof(int) * N);
    uint16_t *d_wte = (uint16_t *)to_dev(wte, 2 * (size_t)V * C), *d_w = (uint16_t *)to_dev(w, 2 * (size_t)C);
    uint16_t *d_xin = (uint16_t *)to_dev(xin, 2 * (size_t)N * C), *d_out = (uint16_t *)cu_malloc(2 * (size_t)N * C);
    float *d_rstd = (float *)cu_malloc(sizeof(float) * N);
    encoder_forward(ref, tok, wte_f, N, C);
    cu_encoder_forward_bf16(d_out, d_tok, d_wte, N, C);
    check_dev_bf16("embedding", d_out, ref, (size_t)N * C, 0, 0);
    rmsnorm_forward(ref, rstd, xin_f, C, w_f, N, C, 1e-6f);
    cu_rmsnorm_forward_bf16(d_out, d_rstd, d_xin, d_w, N, C, 1e-6f);
    check_dev_bf16("rmsnorm", d_out, ref, (size_t)N * C, 1e-3, BF_RTOL);
    check_dev("rmsnorm rstd (fp32)", d_rstd, rstd, N, 1e-6, 1e-5);
    float *h3_f, *dout_f;
    uint16_t *h3 = rand_bf16((size_t)N * C, 2.0f, &h3_f), *dout = rand_bf16((size_t)N * C, 1.0f, &dout_f);
    uint16_t *d_h3 = (uint16_t *)to_dev(h3, 2 * (size_t)N * C), *d_dout = (uint16_t *)to_dev(dout, 2 * (size_t)N * C);
    uint16_t *d_dh1 = (uint16_t *)cu_malloc(2 * (size_t)N * C), *d_dh3 = (uint16_t *)cu_malloc(2 * (size_t)N * C);
    long nn = (long)N * C;
    swiglu_forward(ref, xin_f, h3_f, nn);
    cu_swiglu_forward_bf16(d_out, d_xin, d_h3, nn);
    check_dev_bf16("swiglu", d_out, ref, nn, 1e-3, BF_RTOL);
    float *dh1 = (float *)calloc((size_t)nn, sizeof(float)), *dh3 = (float *)calloc((size_t)nn, sizeof(float));
    swiglu_backward(dh1, dh3, dout_f, xin_f, h3_f, nn);
    cu_swiglu_backward_bf16(d_dh1, d_dh3, d_dout, d_xin, d_h3, nn);
    check_dev_bf16("swiglu dh1", d_dh1, dh1, nn, 1e-3, BF_RTOL);
    check_dev_bf16("swiglu dh3", d_dh3, dh3, nn, 1e-3, BF_RTOL);
    void *dv[] = {d_tok, d_wte, d_w, d_xin, d_out, d_rstd, d_h3, d_dout, d_dh1, d_dh3};
    for (size_t i = 0; i < sizeof dv / sizeof dv[0]; i++) cu_free(dv[i]);
    void *hv[] = {wte, w, xin, wte_f, w_f, xin_f, tok, ref, rstd, h3, h3_f, dout, dout_f, dh1, dh3};
    for (size_t i = 0; i < sizeof hv / sizeof hv[0]; i++) free(hv[i]);
    test_end();

    test_begin("cuda_bf16_gemm");
    int M = 19, Nn = 23, K = 41;
    float *a_f, *b_f;
    uint16_t *a = rand_bf16((size_t)M * K, 1.0f, &a_f), *b = rand_bf16((size_t)Nn * K, 1.0f, &b_f);
    float *c = (float *)mallocCheck(sizeof(float) * M * Nn);
    uint16_t *d_a = (uint16_t *)to_dev(a, 2 * (size_t)M * K), *d_b = (uint16_t *)to_dev(b, 2 * (size_t)Nn * K);
    uint16_t *d_c = (uint16_t *)cu_malloc(2 * (size_t)M * Nn);
    matmul_forward(c, a_f, b_f, M, K, Nn);  // C = A B^T
    cu_gemm_bf16(0, 1, M, Nn, K, 1.0f, d_a, K, d_b, K, 0.0f, d_c, Nn);
    check_dev_bf16("A B^T", d_c, c, (size_t)M * Nn, 2e-2, BF_RTOL);
    cu_free(d_a), cu_free(d_b), cu_free(d_c);
    free(a), free(b), free(a_f), free(b_f), free(c);
    test_end();

    test_begin("cuda_bf16_adamw_master_and_stochastic_copy");
    size_t np = 999;
    float *p = rand_buf(np, 1.0f), *g = rand_buf(np, 1.0f), *mm = rand_buf(np, 0.01f), *vv = rand_buf(np, 0.01f);
    for (size_t i = 0; i < np; i++) vv[i] = fabsf(vv[i]);
    float *d_p = (float *)to_dev(p, 4 * np), *d_g = (float *)to_dev(g, 4 * np), *d_m = (float *)to_dev(mm, 4 * np);
    float *d_v = (float *)to_dev(vv, 4 * np);
    uint16_t *d_pw = (uint16_t *)cu_malloc(2 * np), *pw = (uint16_t *)mallocCheck(2 * np);
    float b1c = 1.0f - powf(0.9f, 3.0f), b2c = 1.0f - powf(0.95f, 3.0f);
    for (size_t i = 0; i < np; i++) p[i] = lm_adamw(p[i], g[i], &mm[i], &vv[i], 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, b1c, b2c);
    cu_adamw_bf16(d_pw, d_p, d_g, d_m, d_v, np, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, b1c, b2c, 99u);
    check_dev("master", d_p, p, np, 1e-7, 1e-6);
    cu_download(pw, d_pw, 2 * np);
    int nbad = 0;
    for (size_t i = 0; i < np; i++) {
        uint32_t lo;
        memcpy(&lo, &p[i], 4);
        float down = bf2f((uint16_t)(lo >> 16)), upv = bf2f((uint16_t)((lo >> 16) + 1));
        float got = bf2f(pw[i]);
        nbad += !(got == down || (got == upv && (lo & 0xffffu) != 0));
    }
    CHECK(!nbad, "%d bf16 copies are not one of the two neighbours of the master value", bad);
    cu_free(d_p), cu_free(d_g), cu_free(d_m), cu_free(d_v), cu_free(d_pw);
    free(p), free(g), free(mm), free(vv), free(pw);
    free(x), free(back), free(h);
    cu_free(d_x), cu_free(d_back), cu_free(d_h);
    test_end();
}

int main(void) {
    // tiny sizes: one OpenMP thread (idle OpenMP workers spinning between the CPU reference's
    // calls would take the cores from the harness's fibers)
    omp_set_num_threads(1);
    rng = rng_seed(1234);
    char dev[256];
    size_t free_b = 0, total_b = 0;
    int ndev = cu_device_info(dev, sizeof dev, &free_b, &total_b);
    printf("# backend %s, %d device(s): %s, %.0f MiB free of %.0f MiB\n", cu_backend(), ndev, dev,
           free_b / 1048576.0, total_b / 1048576.0);
    if (ndev < 1) {
        test_skip("cuda_layers", "no CUDA device visible");
        return test_summary();
    }
    test_encoder();
    test_rmsnorm();
    test_rmsnorm_long();
    test_rope();
    test_swiglu();
    test_crossentropy();
    test_matmul();
    test_optim();
    test_bf16();
    return test_summary();
}
