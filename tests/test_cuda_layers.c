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
    int *order = (int *)mallocCheck(sizeof(int) * N), *seg = (int *)mallocCheck(sizeof(int) * (N + 1));
    int *seg_tok = (int *)mallocCheck(sizeof(int) * N), *count = (int *)mallocCheck(sizeof(int) * (V + 1));
    int ns = cu_encoder_backward_plan(tok, N, V, order, seg, seg_tok, count);
    // the plan: every distinct token once, ascending, its positions ascending
    int distinct = 0, bad = 0;
    for (int v = 0; v < V; v++) {
        int any = 0;
        for (int n = 0; n < N; n++) any |= tok[n] == v;
        distinct += any;
    }
    for (int s = 0; s < ns; s++)
        for (int p = seg[s]; p < seg[s + 1]; p++)
            bad += tok[order[p]] != seg_tok[s] || (p > seg[s] && order[p] <= order[p - 1]) || (s && seg_tok[s] <= seg_tok[s - 1]);
    CHECK(ns == distinct && seg[0] == 0 && seg[ns] == N && !bad, "plan: %d segments for %d distinct tokens, %d bad", ns,
          distinct, bad);
    int *d_order = (int *)to_dev(order, sizeof(int) * N), *d_seg = (int *)to_dev(seg, sizeof(int) * (ns + 1));
    int *d_segtok = (int *)to_dev(seg_tok, sizeof(int) * ns);
    cu_encoder_backward(d_dwte, d_dout, d_order, d_seg, d_segtok, ns, C);
    check_dev("dwte (bit for bit)", d_dwte, dwte, (size_t)V * C, 0, 0);
    cu_free(d_order), cu_free(d_seg), cu_free(d_segtok);
    free(order), free(seg), free(seg_tok), free(count);
    cu_free(d_tok), cu_free(d_wte), cu_free(d_dout), cu_free(d_dwte), cu_free(d_out);
    free(tok), free(wte), free(dout), free(dwte), free(out);
    test_end();
}

static const int DTS[3] = {CU_F32, CU_BF16, CU_F16};

// tolerance of a result stored in dt (one rounding) on top of fp32 noise
static double rt(int dt) { return RTOL + (dt == CU_F32 ? 0.0 : eps_dt(dt)); }

static void test_rmsnorm(int dt) {
    char name[96];
    snprintf(name, sizeof name, "cuda_rmsnorm_fwd_bwd_strided_%s", cu_dtype_name(dt));
    test_begin(name);
    int N = 37, C = 45, S = 50;  // rows S apart, as c_kv inside [c_kv, k_pe]
    float eps = 1e-6f;
    float *x = rand_buf((size_t)N * S, 2.0f), *w = rand_buf(C, 1.0f), *dout = rand_buf((size_t)N * C, 1.0f);
    float *dinp = rand_buf((size_t)N * S, 0.3f), *dw = rand_buf(C, 0.3f);
    float *out = (float *)mallocCheck(sizeof(float) * N * C), *rstd = (float *)mallocCheck(sizeof(float) * N);
    void *d_x = to_dev_dt(x, (size_t)N * S, dt, 1);  // x now holds the rounded values the device sees
    float *d_w = (float *)to_dev(w, sizeof(float) * C);
    float *d_dout = (float *)to_dev(dout, sizeof(float) * N * C), *d_dinp = (float *)to_dev(dinp, sizeof(float) * N * S);
    float *d_dw = (float *)to_dev(dw, sizeof(float) * C);
    void *d_out = cu_malloc(cu_dtype_size(dt) * N * C);
    float *d_rstd = (float *)cu_malloc(sizeof(float) * N);
    rmsnorm_forward(out, rstd, x, S, w, N, C, eps);
    cu_rmsnorm_forward(d_out, dt, d_rstd, d_x, S, dt, d_w, N, C, eps);
    check_dev_dt("out", d_out, dt, out, (size_t)N * C, ATOL, rt(dt));
    check_dev("rstd", d_rstd, rstd, N, ATOL, RTOL);
    rmsnorm_backward(dinp, S, dw, dout, x, S, w, rstd, N, C);
    cu_rmsnorm_backward(d_dinp, S, d_dw, d_dout, d_x, S, dt, d_w, d_rstd, N, C);
    check_dev("dinp", d_dinp, dinp, (size_t)N * S, ATOL, RTOL);
    check_dev("dweight", d_dw, dw, C, ATOL, RTOL);
    // fp32 input, output of type dt (the norms that read the fp32 residual stream)
    float *x32 = rand_buf((size_t)N * C, 2.0f);
    float *d_x32 = (float *)to_dev(x32, sizeof(float) * N * C);
    rmsnorm_forward(out, rstd, x32, C, w, N, C, eps);
    cu_rmsnorm_forward(d_out, dt, d_rstd, d_x32, C, CU_F32, d_w, N, C, eps);
    check_dev_dt("out from fp32", d_out, dt, out, (size_t)N * C, ATOL, rt(dt));
    if (dt != CU_F32) {
        float *got = from_dev_dt(d_out, (size_t)N * C, dt);
        double e = rel_l2(got, out, (size_t)N * C);
        CHECK(e > 1e-6, "rmsnorm output in %s equals fp32 to %.2g: not stored in %s", cu_dtype_name(dt), e,
              cu_dtype_name(dt));
        free(got);
    }
    test_end();

    snprintf(name, sizeof name, "cuda_residual_rmsnorm_fused_%s", cu_dtype_name(dt));
    test_begin(name);
    float *a = rand_buf((size_t)N * C, 1.0f), *b = rand_buf((size_t)N * C, 1.0f);
    float *sum = (float *)mallocCheck(sizeof(float) * N * C);
    for (int i = 0; i < N * C; i++) sum[i] = a[i] + b[i];
    rmsnorm_forward(out, rstd, sum, C, w, N, C, eps);
    float *d_a = (float *)to_dev(a, sizeof(float) * N * C), *d_b = (float *)to_dev(b, sizeof(float) * N * C);
    float *d_sum = (float *)cu_malloc(sizeof(float) * N * C);
    cu_residual_rmsnorm_forward(d_sum, d_out, dt, d_rstd, d_a, d_b, d_w, N, C, eps);
    check_dev("x_out", d_sum, sum, (size_t)N * C, 0, 0);
    check_dev_dt("out", d_out, dt, out, (size_t)N * C, ATOL, rt(dt));
    check_dev("rstd", d_rstd, rstd, N, ATOL, RTOL);
    // in place: x_out aliases a
    cu_residual_rmsnorm_forward(d_a, d_out, dt, d_rstd, d_a, d_b, d_w, N, C, eps);
    check_dev("x_out in place", d_a, sum, (size_t)N * C, 0, 0);
    cu_add(d_sum, d_b, d_b, (long)N * C);
    for (int i = 0; i < N * C; i++) sum[i] = b[i] + b[i];
    check_dev("add", d_sum, sum, (size_t)N * C, 0, 0);
    cu_free(d_a), cu_free(d_b), cu_free(d_sum), cu_free(d_x32);
    free(a), free(b), free(sum), free(x32);
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
    cu_rmsnorm_backward(d_dinp, C, d_dw, d_dout, d_x, C, CU_F32, d_w, d_rstd, N, C);
    check_dev("dinp", d_dinp, dinp, (size_t)N * C, ATOL, RTOL);
    check_dev("dweight", d_dw, dw, C, 1e-4, 1e-4);
    cu_free(d_x), cu_free(d_w), cu_free(d_dout), cu_free(d_dinp), cu_free(d_dw), cu_free(d_rstd);
    free(x), free(w), free(dout), free(dinp), free(dw), free(out), free(rstd);
    test_end();
}

static void test_rope(int dt) {
    char name[96];
    snprintf(name, sizeof name, "cuda_rope_interleaved_fwd_inverse_%s", cu_dtype_name(dt));
    test_begin(name);
    int N = 13, H = 3, nope = 6, rope = 4, dqk = nope + rope;
    size_t n = (size_t)N * H * dqk;
    float theta = 10000.0f;
    int *pos = (int *)mallocCheck(sizeof(int) * N);
    for (int i = 0; i < N; i++) pos[i] = i % 5 * 3;
    float *x = rand_buf(n, 1.0f);
    void *d_x = to_dev_dt(x, n, dt, 1);
    float *ref = dup_buf(x, n);
    int *d_pos = (int *)to_dev(pos, sizeof(int) * N);
    size_t es = cu_dtype_size(dt);
    rope_apply(ref + nope, N, H, H * dqk, dqk, rope, pos, theta, 0);
    cu_rope_apply((char *)d_x + es * nope, dt, N, H, H * dqk, dqk, rope, d_pos, theta, 0);
    check_dev_dt("rotated", d_x, dt, ref, n, 1e-6, 1e-5 + (dt == CU_F32 ? 0 : eps_dt(dt)));
    // the inverse of what the device holds now
    float *held = from_dev_dt(d_x, n, dt);
    rope_apply(held + nope, N, H, H * dqk, dqk, rope, pos, theta, 1);
    cu_rope_apply((char *)d_x + es * nope, dt, N, H, H * dqk, dqk, rope, d_pos, theta, 1);
    check_dev_dt("inverse", d_x, dt, held, n, 1e-6, 1e-5 + (dt == CU_F32 ? 0 : eps_dt(dt)));
    // two roundings of the rotated pair away from the start at most: an absolute error of a few
    // rounding units of the pair's magnitude (|x| <= 1), whatever the size of the element itself
    check_dev_dt("round trip", d_x, dt, x, n, dt == CU_F32 ? 1e-5 : 3 * eps_dt(dt), 1e-5);
    cu_free(d_x), cu_free(d_pos);
    free(x), free(ref), free(pos), free(held);
    test_end();
}

static void test_swiglu(int dt) {
    char name[96];
    snprintf(name, sizeof name, "cuda_swiglu_fwd_bwd_%s", cu_dtype_name(dt));
    test_begin(name);
    long n = 1001;
    float *h1 = rand_buf(n, 4.0f), *h3 = rand_buf(n, 2.0f), *dout = rand_buf(n, 1.0f);
    float *dh1 = (float *)calloc((size_t)n, sizeof(float)), *dh3 = (float *)calloc((size_t)n, sizeof(float));
    float *out = (float *)mallocCheck(sizeof(float) * n);
    void *d_h1 = to_dev_dt(h1, n, dt, 1), *d_h3 = to_dev_dt(h3, n, dt, 1);
    float *d_dout = (float *)to_dev(dout, sizeof(float) * n);
    // the outputs are written, not accumulated: start from garbage
    float *junk = rand_buf(n, 9.0f);
    void *d_dh1 = to_dev_dt(junk, n, dt, 0), *d_dh3 = to_dev_dt(junk, n, dt, 0), *d_out = to_dev_dt(junk, n, dt, 0);
    swiglu_forward(out, h1, h3, n);
    cu_swiglu_forward(d_out, d_h1, d_h3, n, dt);
    check_dev_dt("out", d_out, dt, out, n, 1e-6, rt(dt));
    swiglu_backward(dh1, dh3, dout, h1, h3, n);
    cu_swiglu_backward(d_dh1, d_dh3, d_dout, d_h1, d_h3, n, dt);
    check_dev_dt("dh1", d_dh1, dt, dh1, n, 1e-6, rt(dt));
    check_dev_dt("dh3", d_dh3, dt, dh3, n, 1e-6, rt(dt));
    cu_free(d_h1), cu_free(d_h3), cu_free(d_dout), cu_free(d_dh1), cu_free(d_dh3), cu_free(d_out);
    free(h1), free(h3), free(dout), free(dh1), free(dh3), free(out), free(junk);
    test_end();
}

static void test_crossentropy(int dt) {
    char name[96];
    snprintf(name, sizeof name, "cuda_crossentropy_fwd_bwd_ignored_%s", cu_dtype_name(dt));
    test_begin(name);
    int N = 19, V = 77;
    float *logits = rand_buf((size_t)N * V, 5.0f);
    int *tg = (int *)mallocCheck(sizeof(int) * N);
    for (int n = 0; n < N; n++) tg[n] = n % 6 == 2 ? -1 : (n * 13) % V;
    float *lse = (float *)mallocCheck(sizeof(float) * N);
    void *d_logits = to_dev_dt(logits, (size_t)N * V, dt, 1);
    int *d_tg = (int *)to_dev(tg, sizeof(int) * N);
    float *d_lse = (float *)cu_malloc(sizeof(float) * N), *d_loss = (float *)cu_malloc(sizeof(float));
    float *d_scr = (float *)cu_malloc(sizeof(float) * N);
    int *d_nv = (int *)cu_malloc(sizeof(int));
    int nv = 0;
    float loss = crossentropy_forward(lse, logits, tg, N, V, &nv);
    cu_crossentropy_forward(d_lse, d_loss, d_nv, d_scr, d_logits, d_tg, N, V, dt);
    float got_loss;
    int got_nv;
    cu_download(&got_loss, d_loss, sizeof(float));
    cu_download(&got_nv, d_nv, sizeof(int));
    CHECK(got_nv == nv, "n_valid %d expected %d", got_nv, nv);
    CHECK_CLOSE(got_loss, loss, 1e-5, 1e-5, "loss");
    check_dev("lse", d_lse, lse, N, ATOL, RTOL);
    crossentropy_backward(logits, lse, tg, N, V, 0.7f, nv);
    cu_crossentropy_backward(d_logits, d_lse, d_tg, N, V, 0.7f, d_nv, dt);
    // fp16 keeps gradients below 2^-14 as subnormals, 2^-24 apart
    check_dev_dt("dlogits", d_logits, dt, logits, (size_t)N * V, dt == CU_F16 ? 6e-8 : 1e-9, 1e-4 + eps_dt(dt));
    cu_free(d_logits), cu_free(d_tg), cu_free(d_lse), cu_free(d_loss), cu_free(d_scr), cu_free(d_nv);
    free(logits), free(tg), free(lse);
    test_end();
}

static void test_matmul(int dt, int out_dt) {
    char name[96];
    snprintf(name, sizeof name, "cuda_matmul_fwd_bwd_%s_out_%s", cu_dtype_name(dt), cu_dtype_name(out_dt));
    test_begin(name);
    int N = 23, IC = 17, OC = 29;
    float *x = rand_buf((size_t)N * IC, 1.0f), *w = rand_buf((size_t)OC * IC, 1.0f), *dout = rand_buf((size_t)N * OC, 1.0f);
    float *dx = rand_buf((size_t)N * IC, 0.1f), *dw = rand_buf((size_t)OC * IC, 0.1f);
    float *out = (float *)mallocCheck(sizeof(float) * N * OC);
    void *d_x = to_dev_dt(x, (size_t)N * IC, dt, 1), *d_w = to_dev_dt(w, (size_t)OC * IC, dt, 1);
    void *d_dout = to_dev_dt(dout, (size_t)N * OC, dt, 1);
    float *d_dx = (float *)to_dev(dx, sizeof(float) * N * IC), *d_dw = (float *)to_dev(dw, sizeof(float) * OC * IC);
    void *d_out = cu_malloc(cu_dtype_size(out_dt) * N * OC);
    matmul_forward(out, x, w, N, IC, OC);
    cu_matmul_forward(d_out, out_dt, d_x, d_w, N, IC, OC, dt);
    check_dev_dt("out", d_out, out_dt, out, (size_t)N * OC, ATOL, rt(out_dt));
    matmul_backward(dx, dw, dout, x, w, N, IC, OC);
    cu_matmul_backward(d_dx, d_dw, d_dout, d_x, d_w, N, IC, OC, dt);
    check_dev("dinp", d_dx, dx, (size_t)N * IC, ATOL, RTOL);
    check_dev("dweight", d_dw, dw, (size_t)OC * IC, ATOL, RTOL);
    cu_matmul_backward(NULL, d_dw, d_dout, d_x, d_w, N, IC, OC, dt);  // either may be NULL
    cu_matmul_backward(d_dx, NULL, d_dout, d_x, d_w, N, IC, OC, dt);
    cu_free(d_x), cu_free(d_w), cu_free(d_dout), cu_free(d_dx), cu_free(d_dw), cu_free(d_out);
    free(x), free(w), free(dout), free(dx), free(dw), free(out);
    test_end();
}

// cu_gemm_ex: every transpose combination, leading dimensions larger than the rows, beta != 0,
// against a double loop on the rounded inputs
static void test_gemm_ex(int dt, int c_dt) {
    char name[96];
    snprintf(name, sizeof name, "cuda_gemm_ex_transposes_%s_to_%s", cu_dtype_name(dt), cu_dtype_name(c_dt));
    test_begin(name);
    int M = 19, N = 23, K = 41, pad = 3;
    for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
            int lda = (ta ? M : K) + pad, ldb = (tb ? K : N) + pad, ldc = N + pad;
            size_t na = (size_t)(ta ? K : M) * lda, nb = (size_t)(tb ? N : K) * ldb, nc = (size_t)M * ldc;
            float *a = rand_buf(na, 1.0f), *b = rand_buf(nb, 1.0f), *c = rand_buf(nc, 1.0f);
            void *d_a = to_dev_dt(a, na, dt, 1), *d_b = to_dev_dt(b, nb, dt, 1), *d_c = to_dev_dt(c, nc, c_dt, 1);
            float alpha = 0.75f, beta = -0.5f;
            float *ref = dup_buf(c, nc);
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) {
                    double s = 0.0;
                    for (int k = 0; k < K; k++) {
                        double av = ta ? a[(size_t)k * lda + i] : a[(size_t)i * lda + k];
                        double bv = tb ? b[(size_t)j * ldb + k] : b[(size_t)k * ldb + j];
                        s += av * bv;
                    }
                    ref[(size_t)i * ldc + j] = (float)(alpha * s + beta * c[(size_t)i * ldc + j]);
                }
            cu_gemm_ex(ta, tb, M, N, K, alpha, d_a, lda, d_b, ldb, dt, beta, d_c, ldc, c_dt);
            char what[64];
            snprintf(what, sizeof what, "C (transA %d transB %d)", ta, tb);
            check_dev_dt(what, d_c, c_dt, ref, nc, 1e-4, rt(c_dt));  // the padding columns keep their values
            cu_free(d_a), cu_free(d_b), cu_free(d_c);
            free(a), free(b), free(c), free(ref);
        }
    test_end();
}

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
    cu_adamw(d_p, d_g, d_m, d_v, n, lr, b1, b2, eps, wd, gs, b1c, b2c, NULL, CU_F32, 0u, NULL, 0.0f);
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
    cu_bias_update(d_bias, d_load, E, mod.cfg.bias_update_speed, NULL);
    check_dev("bias", d_bias, bias, E, 0, 0);
    cu_free(d_bias), cu_free(d_load);
    test_end();
}

// AdamW and the bias update driven by the gradient norm on the device: clipping of the unscaled
// norm (the loss scale divided out), and a non-finite norm skips both without a host round trip
static void test_adamw_device_norm(void) {
    test_begin("cuda_adamw_clip_and_skip_from_device_norm");
    size_t n = 777;
    float *p = rand_buf(n, 1.0f), *g = rand_buf(n, 100.0f), *m = rand_buf(n, 0.01f), *v = rand_buf(n, 0.01f);
    for (size_t i = 0; i < n; i++) v[i] = fabsf(v[i]);
    float *p0 = dup_buf(p, n), *m0 = dup_buf(m, n), *v0 = dup_buf(v, n);
    float *d_p = (float *)to_dev(p, 4 * n), *d_g = (float *)to_dev(g, 4 * n), *d_m = (float *)to_dev(m, 4 * n);
    float *d_v = (float *)to_dev(v, 4 * n), *d_norm = (float *)cu_malloc(sizeof(float));
    float *d_scr = (float *)cu_malloc(sizeof(float) * 1024);
    float gs = 1.0f / 64.0f, clip = 1.0f, b1c = 0.1f, b2c = 0.05f;  // gradients stored x64 (a loss scale)
    cu_global_norm(d_norm, d_g, n, d_scr);
    float norm;
    cu_download(&norm, d_norm, sizeof(float));
    float f = gs * lm_clip_scale(norm * gs, clip);
    CHECK(lm_clip_scale(norm * gs, clip) < 0.5f, "the test must clip (unscaled norm %g)", norm * gs);
    for (size_t i = 0; i < n; i++) p[i] = lm_adamw(p[i], g[i] * f, &m[i], &v[i], 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, b1c, b2c);
    cu_adamw(d_p, d_g, d_m, d_v, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, gs, b1c, b2c, NULL, CU_F32, 0u, d_norm, clip);
    check_dev("clipped params", d_p, p, n, 1e-7, 1e-6);
    check_dev("clipped m", d_m, m, n, 1e-9, 1e-5);
    float bad = NAN;
    cu_upload(d_norm, &bad, sizeof(float));
    cu_upload(d_p, p0, 4 * n), cu_upload(d_m, m0, 4 * n), cu_upload(d_v, v0, 4 * n);
    cu_adamw(d_p, d_g, d_m, d_v, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, gs, b1c, b2c, NULL, CU_F32, 0u, d_norm, clip);
    check_dev("skipped params", d_p, p0, n, 0, 0);
    check_dev("skipped m", d_m, m0, n, 0, 0);
    check_dev("skipped v", d_v, v0, n, 0, 0);
    float bias[5] = {0.1f, 0.2f, 0.3f, 0.4f, 0.5f}, load[5] = {1, 9, 3, 3, 0};
    float *d_bias = (float *)to_dev(bias, sizeof bias), *d_load = (float *)to_dev(load, sizeof load);
    cu_bias_update(d_bias, d_load, 5, 0.01f, d_norm);
    check_dev("bias after a skipped step", d_bias, bias, 5, 0, 0);
    cu_free(d_p), cu_free(d_g), cu_free(d_m), cu_free(d_v), cu_free(d_norm), cu_free(d_scr), cu_free(d_bias),
        cu_free(d_load);
    free(p), free(g), free(m), free(v), free(p0), free(m0), free(v0);
    test_end();
}

// ---- element types --------------------------------------------------------------------------

static void test_convert(void) {
    test_begin("cuda_convert_all_pairs_round_to_nearest_even");
    long n = 1003;
    float *x = rand_buf(n, 3.0f);
    // edge values: exact halfway cases, fp16 overflow and subnormals, signed zero, inf
    float edge[] = {1.0f + 1.0f / 256.0f, 1.0f + 3.0f / 256.0f, 65504.0f, 65519.0f, 65520.0f, 1e6f, -1e6f,
                    3e-5f, 6e-8f, 2.9e-8f, 1e-9f, -0.0f, INFINITY, -INFINITY, 1.0f + 1.0f / 2048.0f};
    memcpy(x, edge, sizeof edge);
    float *d_x = (float *)to_dev(x, sizeof(float) * n);
    int bad = 0;
    for (int t = 1; t < 3; t++) {
        int dt = DTS[t];
        void *d_h = cu_malloc(2 * n), *d_o = cu_malloc(2 * n);
        float *d_back = (float *)cu_malloc(sizeof(float) * n);
        cu_convert(d_h, dt, d_x, CU_F32, n);
        uint16_t *h = (uint16_t *)mallocCheck(2 * n);
        cu_download(h, d_h, 2 * n);
        for (long i = 0; i < n; i++) {
            uint16_t want = dt == CU_BF16 ? f2bf(x[i]) : f2h(x[i]);
            if (h[i] != want) {
                if (bad < 5) printf("# %s(%.9g): got 0x%04x want 0x%04x\n", cu_dtype_name(dt), x[i], h[i], want);
                bad++;
            }
        }
        float *back = (float *)mallocCheck(sizeof(float) * n);
        for (long i = 0; i < n; i++) back[i] = dt == CU_BF16 ? bf2f(h[i]) : h2f(h[i]);
        cu_convert(d_back, CU_F32, d_h, dt, n);
        check_dev("widen", d_back, back, n, 0, 0);
        // to the other half type: exact widening, one rounding
        int ot = dt == CU_BF16 ? CU_F16 : CU_BF16;
        cu_convert(d_o, ot, d_h, dt, n);
        uint16_t *o = (uint16_t *)mallocCheck(2 * n);
        cu_download(o, d_o, 2 * n);
        for (long i = 0; i < n; i++) {
            uint16_t want = ot == CU_BF16 ? f2bf(back[i]) : f2h(back[i]);
            if (o[i] != want && !(isnan(back[i]))) bad++;
        }
        // same type: a copy
        cu_convert(d_o, dt, d_h, dt, n);
        cu_download(o, d_o, 2 * n);
        bad += memcmp(o, h, 2 * n) != 0;
        cu_free(d_h), cu_free(d_o), cu_free(d_back), free(h), free(back), free(o);
    }
    CHECK(!bad, "%d conversions differ from the host reference", bad);
    cu_free(d_x), free(x);
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
    // 4096 Bernoulli(0.3) draws: the standard deviation of the mean is 0.0072 * 2^-7 = 5.6e-5
    CHECK(fabs(mean - v) < 3e-4, "mean %.7f expected %.7f (%d of %ld rounded up)", mean, v, up, m);
    cu_free(d_vs), cu_free(d_r), free(vs), free(r);
    test_end();
}

// AdamW with a working copy: the fp32 master matches lm_adamw, the copy is a neighbour of the
// master (bf16, stochastic rounding) or the master rounded to nearest (fp16)
static void test_adamw_working_copy(int dt) {
    char name[96];
    snprintf(name, sizeof name, "cuda_adamw_master_and_%s_copy", cu_dtype_name(dt));
    test_begin(name);
    size_t np = 999;
    float *p = rand_buf(np, 1.0f), *g = rand_buf(np, 1.0f), *mm = rand_buf(np, 0.01f), *vv = rand_buf(np, 0.01f);
    for (size_t i = 0; i < np; i++) vv[i] = fabsf(vv[i]);
    float *d_p = (float *)to_dev(p, 4 * np), *d_g = (float *)to_dev(g, 4 * np), *d_m = (float *)to_dev(mm, 4 * np);
    float *d_v = (float *)to_dev(vv, 4 * np);
    uint16_t *d_pw = (uint16_t *)cu_malloc(2 * np), *pw = (uint16_t *)mallocCheck(2 * np);
    float b1c = 1.0f - powf(0.9f, 3.0f), b2c = 1.0f - powf(0.95f, 3.0f);
    for (size_t i = 0; i < np; i++) p[i] = lm_adamw(p[i], g[i], &mm[i], &vv[i], 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, b1c, b2c);
    cu_adamw(d_p, d_g, d_m, d_v, np, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, b1c, b2c, d_pw, dt, 99u, NULL, 0.0f);
    check_dev("master", d_p, p, np, 1e-7, 1e-6);
    check_dev("m", d_m, mm, np, 1e-9, 1e-6);
    cu_download(pw, d_pw, 2 * np);
    int nbad = 0, nup = 0;
    for (size_t i = 0; i < np; i++) {
        if (dt == CU_F16) {
            nbad += pw[i] != f2h(p[i]);
            continue;
        }
        uint32_t lo;
        memcpy(&lo, &p[i], 4);
        // truncation toward zero and one bf16 step further from zero: the two neighbours
        float down = bf2f((uint16_t)(lo >> 16)), upv = bf2f((uint16_t)((lo >> 16) + 1));
        float got = bf2f(pw[i]);
        nbad += !(got == down || (got == upv && (lo & 0xffffu) != 0));
        nup += got == upv;
    }
    CHECK(!nbad, "%d %s copies are not what the master rounds to", nbad, cu_dtype_name(dt));
    if (dt == CU_BF16) CHECK(nup > 100 && nup < (int)np - 100, "stochastic rounding went up %d of %zu times", nup, np);
    cu_free(d_p), cu_free(d_g), cu_free(d_m), cu_free(d_v), cu_free(d_pw);
    free(p), free(g), free(mm), free(vv), free(pw);
    test_end();
}

int main(void) {
    if (!cuda_test_start("cuda_layers", 1234)) return test_summary();
    test_encoder();
    for (int t = 0; t < 3; t++) {
        int dt = DTS[t];
        if (!cu_supports_dtype(dt)) {
            test_skip(cu_dtype_name(dt), "the device has no %s tensor cores", cu_dtype_name(dt));
            continue;
        }
        test_rmsnorm(dt);
        test_rope(dt);
        test_swiglu(dt);
        test_crossentropy(dt);
        test_matmul(dt, CU_F32);
        test_gemm_ex(dt, CU_F32);
        if (dt != CU_F32) {
            test_matmul(dt, dt);
            test_gemm_ex(dt, dt);
            test_adamw_working_copy(dt);
        }
    }
    test_rmsnorm_long();
    test_optim();
    test_adamw_device_norm();
    test_convert();
    return test_summary();
}
