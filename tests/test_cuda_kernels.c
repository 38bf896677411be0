// Every CUDA kernel (model/cuda, C interface cuda_ops.h) against the CPU reference
// (model/layers.h, model/cpu/moe.c, model/cpu/model.c) on random inputs of awkward sizes.
// Built twice: through the CUDA-on-CPU harness (make test) and with nvcc for a real GPU
// (make test-gpu); the test code only uses the cu_* interface and device buffers.
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "../model/cpu/moe.h"
#include "../model/cuda/cuda_ops.h"
#include "../model/layers.h"
#include "../model/model.h"
#include "test.h"

static uint64_t rng;

static float *rand_buf(size_t n, float scale) {
    float *p = (float *)mallocCheck(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) p[i] = scale * (2.0f * rng_uniform(&rng) - 1.0f);
    return p;
}
static float *dup_buf(const float *src, size_t n) {
    float *p = (float *)mallocCheck(sizeof(float) * (n ? n : 1));
    memcpy(p, src, sizeof(float) * n);
    return p;
}
// device copy of a host array
static void *to_dev(const void *src, size_t bytes) {
    void *d = cu_malloc(bytes);
    cu_upload(d, src, bytes);
    return d;
}
static float *from_dev(const float *d, size_t n) {
    float *h = (float *)mallocCheck(sizeof(float) * (n ? n : 1));
    cu_download(h, d, sizeof(float) * n);
    return h;
}

// compares n floats; one failure line with the worst element
static void check_arr(const char *what, const float *got, const float *ref, size_t n, double atol, double rtol) {
    size_t worst = 0;
    double worst_excess = 0.0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - (double)ref[i]), lim = atol + rtol * fabs((double)ref[i]);
        if (!(d <= lim)) {  // NaN fails too
            double ex = isnan(d) ? 1e30 : d - lim;
            if (!bad || ex > worst_excess) worst = i, worst_excess = ex;
            bad++;
        }
    }
    CHECK(!bad, "%s: %d of %zu differ; worst [%zu] got %.9g expected %.9g", what, bad, n, worst, got[worst],
          ref[worst]);
}
static void check_dev(const char *what, const float *dev, const float *ref, size_t n, double atol, double rtol) {
    float *h = from_dev(dev, n);
    check_arr(what, h, ref, n, atol, rtol);
    free(h);
}
static void check_dev_int(const char *what, const int *dev, const int *ref, size_t n) {
    int *h = (int *)mallocCheck(sizeof(int) * (n ? n : 1));
    cu_download(h, dev, sizeof(int) * n);
    int bad = 0;
    size_t first = 0;
    for (size_t i = 0; i < n; i++)
        if (h[i] != ref[i]) {
            if (!bad) first = i;
            bad++;
        }
    CHECK(!bad, "%s: %d of %zu differ; first [%zu] got %d expected %d", what, bad, n, first, h[first], ref[first]);
    free(h);
}

#define ATOL 2e-5
#define RTOL 2e-4

// ---------------------------------------------------------------------------------------

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

static void test_attention_case(const char *name, int B, int T, int H, int dqk, int dv) {
    test_begin(name);
    float scale = 1.0f / sqrtf((float)dqk);
    size_t nq = (size_t)B * T * H * dqk, nv = (size_t)B * T * H * dv, na = (size_t)B * H * T * T;
    float *q = rand_buf(nq, 1.5f), *k = rand_buf(nq, 1.5f), *v = rand_buf(nv, 1.0f), *dout = rand_buf(nv, 1.0f);
    float *dq = rand_buf(nq, 0.1f), *dk = rand_buf(nq, 0.1f), *dvv = rand_buf(nv, 0.1f);
    float *out = (float *)mallocCheck(sizeof(float) * nv), *att = (float *)mallocCheck(sizeof(float) * na);
    float *scr = (float *)mallocCheck(sizeof(float) * na);
    float *d_q = (float *)to_dev(q, sizeof(float) * nq), *d_k = (float *)to_dev(k, sizeof(float) * nq);
    float *d_v = (float *)to_dev(v, sizeof(float) * nv), *d_dout = (float *)to_dev(dout, sizeof(float) * nv);
    float *d_dq = (float *)to_dev(dq, sizeof(float) * nq), *d_dk = (float *)to_dev(dk, sizeof(float) * nq);
    float *d_dv = (float *)to_dev(dvv, sizeof(float) * nv), *d_out = (float *)cu_malloc(sizeof(float) * nv);
    float *d_lse = (float *)cu_malloc(sizeof(float) * B * H * T), *d_scr = (float *)cu_malloc(sizeof(float) * B * H * T);
    attention_forward(out, att, q, k, v, B, T, H, dqk, dv, scale);
    cu_attention_forward(d_out, d_lse, d_q, d_k, d_v, B, T, H, dqk, dv, scale);
    check_dev("out", d_out, out, nv, ATOL, RTOL);
    // lse against the probabilities: att[t][t] = exp(scale q_t.k_t - lse_t)
    float *lse = from_dev(d_lse, (size_t)B * H * T);
    int bad = 0;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int t = 0; t < T; t++) {
                const float *qt = q + (((size_t)b * T + t) * H + h) * dqk, *kt = k + (((size_t)b * T + t) * H + h) * dqk;
                float s = 0.0f;
                for (int i = 0; i < dqk; i++) s += qt[i] * kt[i];
                float p = expf(scale * s - lse[((size_t)b * H + h) * T + t]);
                float ref = att[(((size_t)b * H + h) * T + t) * T + t];
                bad += !(fabsf(p - ref) <= 1e-5f + 1e-4f * ref);
            }
    CHECK(!bad, "lse inconsistent with the probabilities in %d rows", bad);
    free(lse);
    attention_backward(dq, dk, dvv, scr, dout, att, q, k, v, B, T, H, dqk, dv, scale);
    cu_attention_backward(d_dq, d_dk, d_dv, d_scr, d_dout, d_out, d_lse, d_q, d_k, d_v, B, T, H, dqk, dv, scale);
    check_dev("dq", d_dq, dq, nq, ATOL, RTOL);
    check_dev("dk", d_dk, dk, nq, ATOL, RTOL);
    check_dev("dv", d_dv, dvv, nv, ATOL, RTOL);
    cu_free(d_q), cu_free(d_k), cu_free(d_v), cu_free(d_dout), cu_free(d_dq), cu_free(d_dk), cu_free(d_dv);
    cu_free(d_out), cu_free(d_lse), cu_free(d_scr);
    free(q), free(k), free(v), free(dout), free(dq), free(dk), free(dvv), free(out), free(att), free(scr);
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

// ---- MoE --------------------------------------------------------------------------------------

static void moe_config(ModelConfig *c, int E, int K, int G, int topG, int score_func, int balance, float cf) {
    config_tiny(c);
    c->dim = 19;
    c->moe_inter_dim = 11;
    c->n_routed_experts = E;
    c->top_k = K;
    c->n_expert_groups = G;
    c->n_limited_groups = topG;
    c->n_shared_experts = 1;
    c->score_func = score_func;
    c->balance = balance;
    c->capacity_factor = cf;
    c->route_scale = 1.5f;
    c->aux_alpha = 0.0f;
}

static void test_route(const char *name, int E, int K, int G, int topG, int score_func, int with_bias) {
    test_begin(name);
    ModelConfig c;
    moe_config(&c, E, K, G, topG, score_func, with_bias ? BALANCE_BIAS : BALANCE_NONE, 0.0f);
    int N = 41;
    float *logits = rand_buf((size_t)N * E, 2.0f), *bias = rand_buf(E, 0.3f);
    float *scores = (float *)mallocCheck(sizeof(float) * N * E), *wts = (float *)mallocCheck(sizeof(float) * N * K);
    int *sel = (int *)mallocCheck(sizeof(int) * N * K);
    moe_scores(&c, scores, logits, N);
    for (int n = 0; n < N; n++)
        moe_route_token(&c, scores + (size_t)n * E, with_bias ? bias : NULL, sel + (size_t)n * K, wts + (size_t)n * K);
    float *d_logits = (float *)to_dev(logits, sizeof(float) * N * E), *d_bias = (float *)to_dev(bias, sizeof(float) * E);
    float *d_scores = (float *)cu_malloc(sizeof(float) * N * E), *d_wts = (float *)cu_malloc(sizeof(float) * N * K);
    int *d_sel = (int *)cu_malloc(sizeof(int) * N * K);
    cu_moe_scores(d_scores, d_logits, N, E, score_func);
    check_dev("scores", d_scores, scores, (size_t)N * E, 1e-7, 1e-6);
    // route from the CPU's scores so that the selection is compared bit for bit
    cu_upload(d_scores, scores, sizeof(float) * N * E);
    int rc = cu_moe_route(d_sel, d_wts, d_scores, with_bias ? d_bias : NULL, N, E, K, G, topG, score_func, c.route_scale);
    CHECK(rc == 0, "cu_moe_route refused E %d K %d G %d", E, K, G);
    check_dev_int("sel", d_sel, sel, (size_t)N * K);
    check_dev("wts", d_wts, wts, (size_t)N * K, 1e-7, 1e-6);
    cu_free(d_logits), cu_free(d_bias), cu_free(d_scores), cu_free(d_wts), cu_free(d_sel);
    free(logits), free(bias), free(scores), free(wts), free(sel);
    test_end();
}

// The whole MoE FFN composed from the device ops, against moe_forward / moe_backward
static void test_moe_ffn(const char *name, int E, int K, int G, int topG, int score_func, float cf) {
    test_begin(name);
    ModelConfig c;
    moe_config(&c, E, K, G, topG, score_func, BALANCE_BIAS, cf);
    int B = 2, T = 9, N = B * T, C = c.dim, I = c.moe_inter_dim, SI = c.n_shared_experts * I, NK = N * K;
    long cap = cf > 0.0f ? (long)ceil((double)cf * N * K / E) : (long)N * K;
    // parameters
    size_t n_gate = (size_t)E * C, n_e = (size_t)E * I * C, n_s = (size_t)SI * C;
    LayerParams lp, gp;
    memset(&lp, 0, sizeof lp), memset(&gp, 0, sizeof gp);
    lp.is_moe = 1;
    lp.gate = rand_buf(n_gate, 0.5f), lp.ew1 = rand_buf(n_e, 0.3f), lp.ew2 = rand_buf(n_e, 0.3f);
    lp.ew3 = rand_buf(n_e, 0.3f), lp.sw1 = rand_buf(n_s, 0.3f), lp.sw2 = rand_buf(n_s, 0.3f), lp.sw3 = rand_buf(n_s, 0.3f);
    gp.gate = rand_buf(n_gate, 0.01f), gp.ew1 = rand_buf(n_e, 0.01f), gp.ew2 = rand_buf(n_e, 0.01f);
    gp.ew3 = rand_buf(n_e, 0.01f), gp.sw1 = rand_buf(n_s, 0.01f), gp.sw2 = rand_buf(n_s, 0.01f), gp.sw3 = rand_buf(n_s, 0.01f);
    float *bias = rand_buf(E, 0.05f);
    // CPU activations
    BlockActs ba;
    memset(&ba, 0, sizeof ba);
    ba.ln2 = rand_buf((size_t)N * C, 1.0f);
    ba.logits = rand_buf((size_t)N * E, 0), ba.scores = rand_buf((size_t)N * E, 0);
    ba.sel = (int *)mallocCheck(sizeof(int) * NK), ba.wts = rand_buf(NK, 0);
    ba.row_of = (int *)mallocCheck(sizeof(int) * NK), ba.perm = (int *)mallocCheck(sizeof(int) * NK);
    ba.expert_off = (int *)mallocCheck(sizeof(int) * (E + 1));
    ba.xe = rand_buf((size_t)NK * C, 0), ba.ey = rand_buf((size_t)NK * C, 0);
    ba.eh1 = rand_buf((size_t)NK * I, 0), ba.eh3 = rand_buf((size_t)NK * I, 0), ba.eg = rand_buf((size_t)NK * I, 0);
    ba.sh1 = rand_buf((size_t)N * SI, 0), ba.sh3 = rand_buf((size_t)N * SI, 0), ba.sg = rand_buf((size_t)N * SI, 0);
    ba.aux_f = rand_buf((size_t)(B + 1) * E, 0);
    ba.ffn_y = rand_buf((size_t)N * C, 0);
    double load[256] = {0};
    RoutingStats st;
    memset(&st, 0, sizeof st);
    st.load = load;
    MoeAux aux;
    moe_forward(&c, &lp, &ba, bias, B, T, &aux, &st);
    // device: same parameters and input
    float *d_ln2 = (float *)to_dev(ba.ln2, sizeof(float) * N * C), *d_bias = (float *)to_dev(bias, sizeof(float) * E);
    float *d_gate = (float *)to_dev(lp.gate, sizeof(float) * n_gate);
    float *d_ew1 = (float *)to_dev(lp.ew1, sizeof(float) * n_e), *d_ew2 = (float *)to_dev(lp.ew2, sizeof(float) * n_e);
    float *d_ew3 = (float *)to_dev(lp.ew3, sizeof(float) * n_e);
    float *d_sw1 = (float *)to_dev(lp.sw1, sizeof(float) * n_s), *d_sw2 = (float *)to_dev(lp.sw2, sizeof(float) * n_s);
    float *d_sw3 = (float *)to_dev(lp.sw3, sizeof(float) * n_s);
    float *d_logits = (float *)cu_malloc(sizeof(float) * N * E), *d_scores = (float *)cu_malloc(sizeof(float) * N * E);
    float *d_wts = (float *)cu_malloc(sizeof(float) * NK);
    int *d_sel = (int *)cu_malloc(sizeof(int) * NK), *d_row_of = (int *)cu_malloc(sizeof(int) * NK);
    int *d_perm = (int *)cu_malloc(sizeof(int) * NK), *d_off = (int *)cu_malloc(sizeof(int) * (E + 1));
    float *d_load = (float *)cu_malloc(sizeof(float) * E), *d_dropped = (float *)cu_malloc(sizeof(float));
    float *d_xe = (float *)cu_malloc(sizeof(float) * NK * C), *d_ey = (float *)cu_malloc(sizeof(float) * NK * C);
    float *d_eh1 = (float *)cu_malloc(sizeof(float) * NK * I), *d_eh3 = (float *)cu_malloc(sizeof(float) * NK * I);
    float *d_eg = (float *)cu_malloc(sizeof(float) * NK * I);
    float *d_sh1 = (float *)cu_malloc(sizeof(float) * N * SI), *d_sh3 = (float *)cu_malloc(sizeof(float) * N * SI);
    float *d_sg = (float *)cu_malloc(sizeof(float) * N * SI), *d_y = (float *)cu_malloc(sizeof(float) * N * C);
    cu_zero(d_load, sizeof(float) * E);
    cu_zero(d_dropped, sizeof(float));
    cu_matmul_forward(d_logits, d_ln2, d_gate, N, C, E);
    cu_moe_scores(d_scores, d_logits, N, E, score_func);
    // routing decisions are discontinuous: route from the CPU's scores (compared above)
    check_dev("scores", d_scores, ba.scores, (size_t)N * E, 1e-6, 1e-5);
    cu_upload(d_scores, ba.scores, sizeof(float) * N * E);
    int rc = cu_moe_route(d_sel, d_wts, d_scores, d_bias, N, E, K, G, topG, score_func, c.route_scale);
    CHECK(rc == 0, "cu_moe_route refused the config");
    cu_moe_dispatch(d_row_of, d_perm, d_off, d_load, d_dropped, d_sel, N, K, E, cap);
    check_dev_int("sel", d_sel, ba.sel, NK);
    check_dev_int("expert_off", d_off, ba.expert_off, E + 1);
    check_dev_int("row_of", d_row_of, ba.row_of, NK);
    int rows = ba.expert_off[E];
    check_dev_int("perm", d_perm, ba.perm, rows);
    float loadf[256], dropped;
    cu_download(loadf, d_load, sizeof(float) * E);
    cu_download(&dropped, d_dropped, sizeof(float));
    int bad = 0;
    for (int e = 0; e < E; e++) bad += loadf[e] != (float)load[e];
    CHECK(!bad, "load differs in %d experts", bad);
    CHECK(dropped == (float)st.dropped, "dropped %g expected %g", dropped, st.dropped);
    CHECK(cf == 0.0f || st.dropped > 0, "capacity case drops nothing: the test does not test dropping");
    cu_moe_gather(d_xe, d_ln2, d_perm, d_off, N, K, C, E);
    check_dev("xe", d_xe, ba.xe, (size_t)rows * C, 0, 0);
    cu_grouped_matmul_forward(d_eh1, d_xe, d_ew1, d_off, E, N, C, I);
    cu_grouped_matmul_forward(d_eh3, d_xe, d_ew3, d_off, E, N, C, I);
    cu_swiglu_forward(d_eg, d_eh1, d_eh3, (long)NK * I);
    cu_grouped_matmul_forward(d_ey, d_eg, d_ew2, d_off, E, N, I, C);
    check_dev("eh1", d_eh1, ba.eh1, (size_t)rows * I, ATOL, RTOL);
    check_dev("ey", d_ey, ba.ey, (size_t)rows * C, ATOL, RTOL);
    cu_matmul_forward(d_sh1, d_ln2, d_sw1, N, C, SI);
    cu_matmul_forward(d_sh3, d_ln2, d_sw3, N, C, SI);
    cu_swiglu_forward(d_sg, d_sh1, d_sh3, (long)N * SI);
    cu_matmul_forward(d_y, d_sg, d_sw2, N, SI, C);
    cu_moe_combine(d_y, d_ey, d_wts, d_row_of, N, K, C);
    check_dev("ffn_y", d_y, ba.ffn_y, (size_t)N * C, ATOL, RTOL);

    // backward (no auxiliary loss): against moe_backward
    float *dy = rand_buf((size_t)N * C, 1.0f), *dln2 = rand_buf((size_t)N * C, 0.1f);
    size_t cap_s = 2 * (size_t)N * E + NK + 2 * (size_t)NK * C + 3 * (size_t)NK * I + 3 * (size_t)N * SI + 64;
    float *scratch = (float *)mallocCheck(sizeof(float) * cap_s);
    float *d_dy = (float *)to_dev(dy, sizeof(float) * N * C), *d_dln2 = (float *)to_dev(dln2, sizeof(float) * N * C);
    float *d_ggate = (float *)to_dev(gp.gate, sizeof(float) * n_gate);
    float *d_gew1 = (float *)to_dev(gp.ew1, sizeof(float) * n_e), *d_gew2 = (float *)to_dev(gp.ew2, sizeof(float) * n_e);
    float *d_gew3 = (float *)to_dev(gp.ew3, sizeof(float) * n_e);
    float *d_gsw1 = (float *)to_dev(gp.sw1, sizeof(float) * n_s), *d_gsw2 = (float *)to_dev(gp.sw2, sizeof(float) * n_s);
    float *d_gsw3 = (float *)to_dev(gp.sw3, sizeof(float) * n_s);
    moe_backward(&c, &lp, &gp, &ba, dy, dln2, B, T, 1.0f, scratch, cap_s);
    float *d_dsg = (float *)cu_malloc(sizeof(float) * N * SI), *d_dsh1 = (float *)cu_malloc(sizeof(float) * N * SI);
    float *d_dsh3 = (float *)cu_malloc(sizeof(float) * N * SI);
    float *d_dey = (float *)cu_malloc(sizeof(float) * NK * C), *d_dxe = (float *)cu_malloc(sizeof(float) * NK * C);
    float *d_deg = (float *)cu_malloc(sizeof(float) * NK * I), *d_deh1 = (float *)cu_malloc(sizeof(float) * NK * I);
    float *d_deh3 = (float *)cu_malloc(sizeof(float) * NK * I), *d_dwts = (float *)cu_malloc(sizeof(float) * NK);
    float *d_dlogits = (float *)cu_malloc(sizeof(float) * N * E);
    // shared expert
    cu_zero(d_dsg, sizeof(float) * N * SI), cu_zero(d_dsh1, sizeof(float) * N * SI), cu_zero(d_dsh3, sizeof(float) * N * SI);
    cu_matmul_backward(d_dsg, d_gsw2, d_dy, d_sg, d_sw2, N, SI, C);
    cu_swiglu_backward(d_dsh1, d_dsh3, d_dsg, d_sh1, d_sh3, (long)N * SI);
    cu_matmul_backward(d_dln2, d_gsw1, d_dsh1, d_ln2, d_sw1, N, C, SI);
    cu_matmul_backward(d_dln2, d_gsw3, d_dsh3, d_ln2, d_sw3, N, C, SI);
    // routed experts
    cu_moe_combine_backward(d_dey, d_dwts, d_dy, d_ey, d_wts, d_perm, d_row_of, d_off, N, K, C, E);
    cu_zero(d_deg, sizeof(float) * NK * I), cu_zero(d_deh1, sizeof(float) * NK * I), cu_zero(d_deh3, sizeof(float) * NK * I);
    cu_zero(d_dxe, sizeof(float) * NK * C);
    cu_grouped_matmul_backward(d_deg, d_gew2, d_dey, d_eg, d_ew2, d_off, E, N, I, C);
    cu_swiglu_backward(d_deh1, d_deh3, d_deg, d_eh1, d_eh3, (long)NK * I);
    cu_grouped_matmul_backward(d_dxe, d_gew1, d_deh1, d_xe, d_ew1, d_off, E, N, C, I);
    cu_grouped_matmul_backward(d_dxe, d_gew3, d_deh3, d_xe, d_ew3, d_off, E, N, C, I);
    cu_moe_scatter_add(d_dln2, d_dxe, d_row_of, N, K, C);
    // gate
    cu_moe_gate_backward(d_dlogits, d_dwts, d_scores, d_sel, N, E, K, score_func, c.route_scale);
    cu_matmul_backward(d_dln2, d_ggate, d_dlogits, d_ln2, d_gate, N, C, E);
    check_dev("dwts", d_dwts, scratch + 2 * (size_t)N * E, NK, ATOL, RTOL);
    check_dev("dlogits", d_dlogits, scratch + (size_t)N * E, (size_t)N * E, ATOL, RTOL);
    check_dev("dln2", d_dln2, dln2, (size_t)N * C, ATOL, RTOL);
    check_dev("dgate", d_ggate, gp.gate, n_gate, ATOL, RTOL);
    check_dev("dew1", d_gew1, gp.ew1, n_e, ATOL, RTOL);
    check_dev("dew2", d_gew2, gp.ew2, n_e, ATOL, RTOL);
    check_dev("dew3", d_gew3, gp.ew3, n_e, ATOL, RTOL);
    check_dev("dsw1", d_gsw1, gp.sw1, n_s, ATOL, RTOL);
    check_dev("dsw2", d_gsw2, gp.sw2, n_s, ATOL, RTOL);
    check_dev("dsw3", d_gsw3, gp.sw3, n_s, ATOL, RTOL);

    void *dev[] = {d_ln2, d_bias, d_gate, d_ew1, d_ew2, d_ew3, d_sw1, d_sw2, d_sw3, d_logits, d_scores, d_wts, d_sel,
                   d_row_of, d_perm, d_off, d_load, d_dropped, d_xe, d_ey, d_eh1, d_eh3, d_eg, d_sh1, d_sh3, d_sg, d_y,
                   d_dy, d_dln2, d_ggate, d_gew1, d_gew2, d_gew3, d_gsw1, d_gsw2, d_gsw3, d_dsg, d_dsh1, d_dsh3, d_dey,
                   d_dxe, d_deg, d_deh1, d_deh3, d_dwts, d_dlogits};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cu_free(dev[i]);
    void *host[] = {lp.gate, lp.ew1, lp.ew2, lp.ew3, lp.sw1, lp.sw2, lp.sw3, gp.gate, gp.ew1, gp.ew2, gp.ew3, gp.sw1,
                    gp.sw2, gp.sw3, bias, ba.ln2, ba.logits, ba.scores, ba.sel, ba.wts, ba.row_of, ba.perm,
                    ba.expert_off, ba.xe, ba.ey, ba.eh1, ba.eh3, ba.eg, ba.sh1, ba.sh3, ba.sg, ba.aux_f, ba.ffn_y, dy,
                    dln2, scratch};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    test_end();
}

// grouped GEMM with expert blocks larger than a tile, an empty expert, k not a multiple of 16
static void test_grouped_gemm(void) {
    test_begin("cuda_grouped_gemm_multi_tile");
    int E = 3, IC = 37, OC = 70, cnt[3] = {70, 0, 133}, off[4] = {0, 70, 70, 203}, rows = off[E];
    float *x = rand_buf((size_t)rows * IC, 1.0f), *w = rand_buf((size_t)E * OC * IC, 1.0f);
    float *dout = rand_buf((size_t)rows * OC, 1.0f), *dx = rand_buf((size_t)rows * IC, 0.1f);
    float *dw = rand_buf((size_t)E * OC * IC, 0.1f), *out = (float *)mallocCheck(sizeof(float) * rows * OC);
    float *d_x = (float *)to_dev(x, sizeof(float) * rows * IC), *d_w = (float *)to_dev(w, sizeof(float) * E * OC * IC);
    float *d_dout = (float *)to_dev(dout, sizeof(float) * rows * OC), *d_dx = (float *)to_dev(dx, sizeof(float) * rows * IC);
    float *d_dw = (float *)to_dev(dw, sizeof(float) * E * OC * IC), *d_out = (float *)cu_malloc(sizeof(float) * rows * OC);
    int *d_off = (int *)to_dev(off, sizeof off);
    for (int e = 0; e < E; e++) {
        if (!cnt[e]) continue;
        matmul_forward(out + (size_t)off[e] * OC, x + (size_t)off[e] * IC, w + (size_t)e * OC * IC, cnt[e], IC, OC);
        matmul_backward(dx + (size_t)off[e] * IC, dw + (size_t)e * OC * IC, dout + (size_t)off[e] * OC,
                        x + (size_t)off[e] * IC, w + (size_t)e * OC * IC, cnt[e], IC, OC);
    }
    cu_grouped_matmul_forward(d_out, d_x, d_w, d_off, E, 140, IC, OC);
    cu_grouped_matmul_backward(d_dx, d_dw, d_dout, d_x, d_w, d_off, E, 140, IC, OC);
    check_dev("out", d_out, out, (size_t)rows * OC, ATOL, RTOL);
    check_dev("dinp", d_dx, dx, (size_t)rows * IC, ATOL, RTOL);
    check_dev("dweight", d_dw, dw, (size_t)E * OC * IC, ATOL, RTOL);
    cu_free(d_x), cu_free(d_w), cu_free(d_dout), cu_free(d_dx), cu_free(d_dw), cu_free(d_out), cu_free(d_off);
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

static uint16_t f2bf(float x) {  // round to nearest even (finite inputs)
    uint32_t b;
    memcpy(&b, &x, 4);
    b += 0x7fffu + ((b >> 16) & 1u);
    return (uint16_t)(b >> 16);
}
static float bf2f(uint16_t h) {
    uint32_t b = (uint32_t)h << 16;
    float x;
    memcpy(&x, &b, 4);
    return x;
}
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
        test_skip("cuda_kernels", "no CUDA device visible");
        return test_summary();
    }
    test_encoder();
    test_rmsnorm();
    test_rmsnorm_long();
    test_rope();
    test_swiglu();
    test_crossentropy();
    test_matmul();
    test_attention_case("cuda_attention_T37_dqk10_dv7", 2, 37, 3, 10, 7);
    test_attention_case("cuda_attention_T70_dqk40_dv36", 1, 70, 2, 40, 36);
    test_attention_case("cuda_attention_T5_shorter_than_a_tile", 3, 5, 2, 12, 8);
    // head sizes whose K/V chunk does not fit 48 KiB: the untiled forward kernel
    test_attention_case("cuda_attention_untiled_dqk256_dv200", 1, 35, 1, 256, 200);
    test_route("cuda_moe_route_sigmoid_bias_groups", 12, 3, 4, 2, SCORE_SIGMOID, 1);
    test_route("cuda_moe_route_sigmoid_nobias_groups", 12, 3, 4, 2, SCORE_SIGMOID, 0);
    test_route("cuda_moe_route_softmax", 9, 2, 1, 1, SCORE_SOFTMAX, 0);
    test_begin("cuda_moe_route_rejects_unsupported_sizes");
    CHECK(cu_moe_route(NULL, NULL, NULL, NULL, 4, 300, 2, 1, 1, 0, 1.0f) != 0, "E 300 accepted");
    CHECK(cu_moe_route(NULL, NULL, NULL, NULL, 4, 8, 9, 1, 1, 0, 1.0f) != 0, "K > E accepted");
    CHECK(cu_moe_route(NULL, NULL, NULL, NULL, 4, 10, 2, 3, 1, 0, 1.0f) != 0, "E not divisible by groups accepted");
    CHECK(cu_moe_route(NULL, NULL, NULL, NULL, 4, 8, 2, 4, 5, 0, 1.0f) != 0, "limited groups > groups accepted");
    test_end();
    test_moe_ffn("cuda_moe_ffn_fwd_bwd_dropless", 6, 2, 3, 2, SCORE_SIGMOID, 0.0f);
    test_moe_ffn("cuda_moe_ffn_fwd_bwd_capacity", 5, 2, 1, 1, SCORE_SOFTMAX, 0.6f);
    test_grouped_gemm();
    test_optim();
    test_bf16();
    return test_summary();
}
