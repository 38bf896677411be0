// Layer tests: known values (RMSNorm, RoPE, gates, group-limited routing, bias semantics,
// auxiliary-loss value, bias update) and finite-difference checks of every layer's backward
// (embedding, RMSNorm, linear, RoPE, attention, SwiGLU, cross-entropy) in isolation.
#include "../model/cpu/moe.h"
#include "../model/layers.h"
#include "../model/model.h"
#include "test.h"

static uint64_t rng;
static void fill(float *x, long n, float s) {
    for (long i = 0; i < n; i++) x[i] = s * rng_normal(&rng);
}
static float *fnew(long n) { return callocCheck((size_t)n, sizeof(float)); }
static double dot(const float *a, const float *b, long n) {
    double s = 0;
    for (long i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

// Check d/dx of L = sum(w * f(x)) against central differences for every element of x.
// f writes its output into out; grad holds the analytic dL/dx.
typedef void (*fwd_fn)(void *ctx, float *out);
static void fd_check(const char *what, void *ctx, fwd_fn f, float *x, long nx, const float *grad, const float *w,
                     float *out, long nout, float eps, double tol) {
    double num2 = 0, diff2 = 0;
    for (long i = 0; i < nx; i++) {
        float o = x[i];
        x[i] = o + eps;
        f(ctx, out);
        double lp = dot(out, w, nout);
        x[i] = o - eps;
        f(ctx, out);
        double lm = dot(out, w, nout);
        x[i] = o;
        double fd = (lp - lm) / (2 * eps);
        num2 += fd * fd;
        diff2 += (fd - grad[i]) * (fd - grad[i]);
    }
    double rel = sqrt(diff2) / (sqrt(num2) + 1e-12);
    CHECK(rel < tol, "%s: relative error %.3g (|grad| %.3g)", what, rel, sqrt(num2));
}

// ---- RMSNorm -------------------------------------------------------------------------
typedef struct {
    float *x, *w, *rstd;
    int N, C, stride;
} RmsCtx;
static void rms_f(void *c, float *out) {
    RmsCtx *r = c;
    rmsnorm_forward(out, r->rstd, r->x, r->stride, r->w, r->N, r->C, 1e-6f);
}
static void test_rmsnorm(void) {
    test_begin("rmsnorm_known_value");
    float x[4] = {1, 2, 3, 4}, w[4] = {1, 1, 2, 1}, out[4], rstd[1];
    rmsnorm_forward(out, rstd, x, 4, w, 1, 4, 0.0f);
    float r = 1.0f / sqrtf(30.0f / 4.0f);
    for (int i = 0; i < 4; i++) CHECK_CLOSE(out[i], x[i] * r * w[i], 1e-6, 1e-6, "rmsnorm");
    test_end();

    test_begin("rmsnorm_backward_fd");
    int N = 5, C = 7, S = 9;
    RmsCtx c = {fnew(N * S), fnew(C), fnew(N), N, C, S};
    fill(c.x, N * S, 1.0f);
    fill(c.w, C, 1.0f);
    float *o = fnew(N * C), *wo = fnew(N * C), *dx = fnew(N * S), *dw = fnew(C);
    fill(wo, N * C, 1.0f);
    rms_f(&c, o);
    rmsnorm_backward(dx, S, dw, wo, c.x, S, c.w, c.rstd, N, C);
    fd_check("rmsnorm dx", &c, rms_f, c.x, N * S, dx, wo, o, N * C, 1e-2f, 1e-2);
    fd_check("rmsnorm dw", &c, rms_f, c.w, C, dw, wo, o, N * C, 1e-2f, 1e-2);
    free(c.x), free(c.w), free(c.rstd), free(o), free(wo), free(dx), free(dw);
    test_end();
}

// ---- linear, embedding, swiglu ---------------------------------------------------------
typedef struct {
    float *x, *w;
    int N, IC, OC;
} MmCtx;
static void mm_f(void *c, float *out) {
    MmCtx *m = c;
    matmul_forward(out, m->x, m->w, m->N, m->IC, m->OC);
}
typedef struct {
    float *a, *b;
    long n;
} SwCtx;
static void sw_f(void *c, float *out) {
    SwCtx *s = c;
    swiglu_forward(out, s->a, s->b, s->n);
}
typedef struct {
    float *wte;
    int *inp;
    int N, C;
} EncCtx;
static void enc_f(void *c, float *out) {
    EncCtx *e = c;
    encoder_forward(out, e->inp, e->wte, e->N, e->C);
}
static void test_simple_layers(void) {
    test_begin("matmul_backward_fd");
    MmCtx m = {fnew(6 * 5), fnew(4 * 5), 6, 5, 4};
    fill(m.x, 30, 1), fill(m.w, 20, 1);
    float *out = fnew(24), *wo = fnew(24), *dx = fnew(30), *dw = fnew(20);
    fill(wo, 24, 1);
    matmul_backward(dx, dw, wo, m.x, m.w, 6, 5, 4);
    fd_check("matmul dx", &m, mm_f, m.x, 30, dx, wo, out, 24, 1e-2f, 1e-3);
    fd_check("matmul dw", &m, mm_f, m.w, 20, dw, wo, out, 24, 1e-2f, 1e-3);
    free(m.x), free(m.w), free(out), free(wo), free(dx), free(dw);
    test_end();

    test_begin("swiglu_backward_fd");
    long n = 37;
    SwCtx s = {fnew(n), fnew(n), n};
    fill(s.a, n, 2), fill(s.b, n, 1);
    float *o2 = fnew(n), *w2 = fnew(n), *da = fnew(n), *db = fnew(n);
    fill(w2, n, 1);
    swiglu_backward(da, db, w2, s.a, s.b, n);
    fd_check("swiglu dh1", &s, sw_f, s.a, n, da, w2, o2, n, 1e-2f, 1e-3);
    fd_check("swiglu dh3", &s, sw_f, s.b, n, db, w2, o2, n, 1e-2f, 1e-3);
    CHECK_CLOSE(lm_silu(1.0f), 1.0f / (1.0f + expf(-1.0f)), 1e-7, 0, "silu(1)");
    free(s.a), free(s.b), free(o2), free(w2), free(da), free(db);
    test_end();

    test_begin("embedding_backward_fd");
    int inp[6] = {3, 1, 3, 0, 2, 3};
    EncCtx e = {fnew(4 * 5), inp, 6, 5};
    fill(e.wte, 20, 1);
    float *o3 = fnew(30), *w3 = fnew(30), *dw3 = fnew(20);
    fill(w3, 30, 1);
    encoder_backward(dw3, w3, inp, 6, 5);
    fd_check("embedding dwte", &e, enc_f, e.wte, 20, dw3, w3, o3, 30, 1e-2f, 1e-4);
    free(e.wte), free(o3), free(w3), free(dw3);
    test_end();
}

// ---- RoPE ------------------------------------------------------------------------------
typedef struct {
    float *x;
    float *buf;
    int *pos;
    int N, H, d;
} RopeCtx;
static void rope_f(void *c, float *out) {
    RopeCtx *r = c;
    memcpy(out, r->x, sizeof(float) * (size_t)r->N * r->H * r->d);
    rope_apply(out, r->N, r->H, r->H * r->d, r->d, r->d, r->pos, 10000.0f, 0);
}
static void test_rope(void) {
    test_begin("rope_known_rotation");
    // one head, d = 4: pair 0 rotates by pos * 1, pair 1 by pos * theta^(-1/2)
    float x[4] = {1, 0, 0, 1};
    int pos[1] = {3};
    rope_apply(x, 1, 1, 4, 4, 4, pos, 100.0f, 0);
    CHECK_CLOSE(x[0], cosf(3.0f), 1e-6, 0, "pair0.x");
    CHECK_CLOSE(x[1], sinf(3.0f), 1e-6, 0, "pair0.y");
    float a1 = 3.0f * powf(100.0f, -0.5f);
    CHECK_CLOSE(x[2], -sinf(a1), 1e-6, 0, "pair1.x");
    CHECK_CLOSE(x[3], cosf(a1), 1e-6, 0, "pair1.y");
    rope_apply(x, 1, 1, 4, 4, 4, pos, 100.0f, 1);  // inverse restores
    CHECK_CLOSE(x[0], 1, 1e-6, 0, "inverse");
    CHECK_CLOSE(x[3], 1, 1e-6, 0, "inverse");
    test_end();

    test_begin("rope_backward_is_inverse_rotation_fd");
    int N = 4, H = 2, d = 6, p[4] = {0, 1, 2, 7};
    RopeCtx r = {fnew(N * H * d), NULL, p, N, H, d};
    fill(r.x, N * H * d, 1);
    float *out = fnew(N * H * d), *w = fnew(N * H * d), *g = fnew(N * H * d);
    fill(w, N * H * d, 1);
    memcpy(g, w, sizeof(float) * (size_t)N * H * d);
    rope_apply(g, N, H, H * d, d, d, p, 10000.0f, 1);
    fd_check("rope", &r, rope_f, r.x, N * H * d, g, w, out, N * H * d, 1e-2f, 1e-3);
    free(r.x), free(out), free(w), free(g);
    test_end();

    test_begin("rope_table_matches_direct");
    {
        int T = 9, d = 8, n = 6, h = 3, ps[6] = {0, 8, 3, 3, 1, 5};
        float *ct = fnew(T * d / 2), *st = fnew(T * d / 2), *a = fnew(n * h * d), *b = fnew(n * h * d);
        rope_tables(ct, st, T, d, 500.0f);
        fill(a, n * h * d, 1);
        memcpy(b, a, sizeof(float) * (size_t)n * h * d);
        for (int inv = 0; inv < 2; inv++) {
            rope_apply(a, n, h, h * d, d, d, ps, 500.0f, inv);
            rope_apply_table(b, n, h, h * d, d, d, ps, ct, st, inv);
            for (int i = 0; i < n * h * d; i++) CHECK_CLOSE(b[i], a[i], 1e-5, 1e-5, "table rope");
        }
        free(ct), free(st), free(a), free(b);
    }
    test_end();

    test_begin("transpose");
    {
        int R = 37, C2 = 70;
        float *a = fnew(R * C2), *b = fnew(R * C2);
        fill(a, R * C2, 1);
        transpose(b, a, R, C2);
        int ok = 1;
        for (int r = 0; r < R; r++)
            for (int c = 0; c < C2; c++) ok &= b[c * R + r] == a[r * C2 + c];
        CHECK(ok, "transpose");
        free(a), free(b);
    }
    test_end();
}

// ---- attention ---------------------------------------------------------------------------
typedef struct {
    float *q, *k, *v, *att;
    int B, T, H, dqk, dv;
} AttCtx;
static void att_f(void *c, float *out) {
    AttCtx *a = c;
    attention_forward(out, a->att, a->q, a->k, a->v, a->B, a->T, a->H, a->dqk, a->dv, 0.4f);
}
static void test_attention(void) {
    test_begin("attention_causal_known");
    // T = 2, one head: position 0 attends only to itself
    float q[4] = {1, 0, 0, 1}, k[4] = {1, 0, 0, 1}, v[2] = {3, 5}, out[2], att[4];
    attention_forward(out, att, q, k, v, 1, 2, 1, 2, 1, 1.0f);
    CHECK_CLOSE(out[0], 3.0, 1e-6, 0, "first position sees itself only");
    float p1 = expf(1.0f) / (expf(1.0f) + 1.0f);  // scores at t=1: (q1.k0, q1.k1) = (0, 1)
    CHECK_CLOSE(out[1], (1 - p1) * 3 + p1 * 5, 1e-5, 0, "second position");
    test_end();

    test_begin("attention_backward_fd");
    int B = 2, T = 5, H = 2, dqk = 3, dv = 4;
    long nq = B * T * H * dqk, nv = B * T * H * dv;
    AttCtx a = {fnew(nq), fnew(nq), fnew(nv), fnew(B * H * T * T), B, T, H, dqk, dv};
    fill(a.q, nq, 1), fill(a.k, nq, 1), fill(a.v, nv, 1);
    float *o = fnew(nv), *w = fnew(nv), *dq = fnew(nq), *dk = fnew(nq), *dvv = fnew(nv), *scr = fnew(B * H * T * T);
    fill(w, nv, 1);
    att_f(&a, o);
    attention_backward(dq, dk, dvv, scr, w, a.att, a.q, a.k, a.v, B, T, H, dqk, dv, 0.4f);
    fd_check("attention dq", &a, att_f, a.q, nq, dq, w, o, nv, 1e-2f, 1e-2);
    fd_check("attention dk", &a, att_f, a.k, nq, dk, w, o, nv, 1e-2f, 1e-2);
    fd_check("attention dv", &a, att_f, a.v, nv, dvv, w, o, nv, 1e-2f, 1e-3);
    free(a.q), free(a.k), free(a.v), free(a.att), free(o), free(w), free(dq), free(dk), free(dvv), free(scr);
    test_end();
}

// ---- cross-entropy -------------------------------------------------------------------------
static void test_crossentropy(void) {
    test_begin("crossentropy_known_and_fd");
    float logits[6] = {0, 0, 0, 1, 2, 3};
    int targets[2] = {1, 2};
    float lse[2];
    int nv = 0;
    float loss = crossentropy_forward(lse, logits, targets, 2, 3, &nv);
    double l1 = log(3.0), l2 = log(expf(1) + expf(2) + expf(3)) - 3;
    CHECK_CLOSE(loss, (l1 + l2) / 2, 1e-6, 1e-6, "mean loss");
    CHECK(nv == 2, "n_valid");
    int t2[2] = {-1, 2};
    loss = crossentropy_forward(lse, logits, t2, 2, 3, &nv);
    CHECK_CLOSE(loss, l2, 1e-6, 1e-6, "ignored target");
    CHECK(nv == 1, "n_valid with an ignored target");
    // gradient by finite differences
    int N = 4, V = 7;
    float *lg = fnew(N * V), *g = fnew(N * V), *ls = fnew(N);
    int tg[4] = {3, -1, 0, 6};
    fill(lg, N * V, 2);
    memcpy(g, lg, sizeof(float) * (size_t)N * V);
    crossentropy_forward(ls, g, tg, N, V, &nv);
    crossentropy_backward(g, ls, tg, N, V, 1.0f, nv);
    double num2 = 0, diff2 = 0;
    for (int i = 0; i < N * V; i++) {
        float o = lg[i];
        lg[i] = o + 1e-2f;
        double lp = crossentropy_forward(ls, lg, tg, N, V, NULL);
        lg[i] = o - 1e-2f;
        double lm = crossentropy_forward(ls, lg, tg, N, V, NULL);
        lg[i] = o;
        double fd = (lp - lm) / 2e-2;
        num2 += fd * fd;
        diff2 += (fd - g[i]) * (fd - g[i]);
    }
    CHECK(sqrt(diff2) / sqrt(num2) < 1e-3, "cross-entropy gradient relative error %.3g", sqrt(diff2) / sqrt(num2));
    free(lg), free(g), free(ls);
    test_end();
}

// ---- gates --------------------------------------------------------------------------------
static void test_gates(void) {
    ModelConfig c;
    config_tiny(&c);
    test_begin("sigmoid_gate_known");
    c.n_routed_experts = 4, c.top_k = 2, c.n_expert_groups = 1, c.n_limited_groups = 1, c.route_scale = 2.0f;
    c.score_func = SCORE_SIGMOID;
    float logits[4] = {0.0f, 2.0f, -1.0f, 1.0f}, s[4];
    moe_scores(&c, s, logits, 1);
    CHECK_CLOSE(s[1], 1.0 / (1.0 + exp(-2.0)), 1e-6, 0, "sigmoid score");
    int sel[2];
    float w[2];
    moe_route_token(&c, s, NULL, sel, w);
    CHECK(sel[0] == 1 && sel[1] == 3, "top-2 = experts 1, 3 (got %d %d)", sel[0], sel[1]);
    double s1 = 1 / (1 + exp(-2.0)), s3 = 1 / (1 + exp(-1.0));
    CHECK_CLOSE(w[0], 2.0 * s1 / (s1 + s3), 1e-6, 0, "renormalised weight 0 times route_scale");
    CHECK_CLOSE(w[1], 2.0 * s3 / (s1 + s3), 1e-6, 0, "renormalised weight 1 times route_scale");
    test_end();

    test_begin("softmax_gate_not_renormalised");
    c.score_func = SCORE_SOFTMAX;
    c.route_scale = 1.0f;
    moe_scores(&c, s, logits, 1);
    double Z = exp(0.0) + exp(2.0) + exp(-1.0) + exp(1.0);
    CHECK_CLOSE(s[1], exp(2.0) / Z, 1e-6, 0, "softmax score");
    moe_route_token(&c, s, NULL, sel, w);
    CHECK(sel[0] == 1 && sel[1] == 3, "top-2");
    CHECK_CLOSE(w[0], exp(2.0) / Z, 1e-6, 0, "weight = softmax prob (no renormalisation)");
    CHECK_CLOSE(w[1], exp(1.0) / Z, 1e-6, 0, "weight = softmax prob (no renormalisation)");
    test_end();

    test_begin("bias_changes_selection_not_weights");
    c.score_func = SCORE_SIGMOID;
    c.route_scale = 1.0f;
    moe_scores(&c, s, logits, 1);
    float bias[4] = {0.0f, 0.0f, 5.0f, 0.0f};
    moe_route_token(&c, s, bias, sel, w);
    CHECK(sel[0] == 2 && sel[1] == 1, "bias pulls expert 2 in (got %d %d)", sel[0], sel[1]);
    double s2 = 1 / (1 + exp(1.0));
    CHECK_CLOSE(w[0], s2 / (s2 + s1), 1e-6, 0, "weight from the unbiased score");
    CHECK_CLOSE(w[1], s1 / (s2 + s1), 1e-6, 0, "weight from the unbiased score");
    test_end();

    test_begin("group_limited_routing");
    // 8 experts in 4 groups of 2, keep 2 groups, top-3
    c.n_routed_experts = 8, c.n_expert_groups = 4, c.n_limited_groups = 2, c.top_k = 3;
    float sc[8] = {0.9f, 0.1f, 0.5f, 0.5f, 0.95f, 0.0f, 0.3f, 0.3f};
    // without bias: group score = max: {0.9, 0.5, 0.95, 0.3} -> groups 2 and 0 -> experts {4, 0, 1}
    int sel3[3];
    float w3[3];
    moe_route_token(&c, sc, NULL, sel3, w3);
    CHECK(sel3[0] == 4 && sel3[1] == 0 && sel3[2] == 1, "max-group routing got %d %d %d", sel3[0], sel3[1], sel3[2]);
    // with a (zero) bias: group score = sum of top-2: {1.0, 1.0, 0.95, 0.6} -> groups 0 and 1 -> {0, 2, 3}
    float zb[8] = {0};
    moe_route_token(&c, sc, zb, sel3, w3);
    CHECK(sel3[0] == 0 && sel3[1] == 2 && sel3[2] == 3, "top-2-sum group routing got %d %d %d", sel3[0], sel3[1], sel3[2]);
    test_end();
}

// ---- balancing loss value and the bias update ------------------------------------------------
static void test_balancing(void) {
    test_begin("seqaux_loss_known_value");
    ModelConfig c;
    config_tiny(&c);
    c.balance = BALANCE_SEQAUX;
    c.aux_alpha = 0.5f;
    c.n_expert_groups = 1, c.n_limited_groups = 1;
    Model m;
    MoeErr err;
    CHECK(model_init(&m, &c, 2, 8, 1, &err) == 0, "init: %s", err.msg);
    // zero gates: all scores equal, ties pick experts 0..K-1: f = E/K for those, P = 1/E:
    // L = alpha * sum_{i<K} (E/K)(1/E) = alpha per MoE layer
    for (int l = 0; l < c.n_layers; l++)
        if (m.p.layers[l].gate) memset(m.p.layers[l].gate, 0, sizeof(float) * (size_t)c.n_routed_experts * c.dim);
    int inp[16] = {0}, tg[16] = {0};
    model_forward(&m, inp, tg, 2, 8, 0);
    CHECK_CLOSE(m.aux_loss, c.aux_alpha * (c.n_layers - c.n_dense_layers), 1e-6, 1e-5, "aux loss");
    model_free(&m);
    test_end();

    test_begin("bias_update_moves_load_toward_balance");
    config_tiny(&c);
    c.balance = BALANCE_BIAS;
    c.bias_update_speed = 0.02f;
    c.n_expert_groups = 1, c.n_limited_groups = 1;
    CHECK(model_init(&m, &c, 4, 16, 3, &err) == 0, "init: %s", err.msg);
    // a skewed router: random gates, and selection pushed onto expert 0 by a large initial bias
    // (as a router that has drifted would); the update must pull the load back toward balance
    int E = c.n_routed_experts, N = 64;
    int in2[64];
    uint64_t r2 = rng_seed(9);
    for (int i = 0; i < N; i++) in2[i] = (int)(rng_next_u64(&r2) % c.vocab_size);
    for (int l = 0; l < c.n_layers; l++) {
        float *g = m.p.layers[l].gate;
        if (!g) continue;
        for (int e = 0; e < E; e++)
            for (int i = 0; i < c.dim; i++) g[e * c.dim + i] = 0.05f * rng_normal(&r2);
        m.bias[(size_t)l * E + 0] = 0.5f;
    }
    double first = 0, last = 0;
    for (int it = 0; it < 60; it++) {
        routing_stats_reset(&m);
        model_forward(&m, in2, NULL, 4, 16, 1);
        double vio = 0;
        for (int i = 0; i < m.n_moe; i++) {
            double mx = 0, tot = 0;
            for (int e = 0; e < E; e++) {
                tot += m.stats[i].load[e];
                mx = m.stats[i].load[e] > mx ? m.stats[i].load[e] : mx;
            }
            vio += (mx - tot / E) / (tot / E) / m.n_moe;
        }
        if (it == 0) first = vio;
        last = vio;
        model_update_bias(&m);
    }
    CHECK(first > 1.0, "the synthetic router should start skewed (MaxVio %.3f)", first);
    CHECK(last < first * 0.5, "MaxVio did not fall: %.3f -> %.3f", first, last);
    // the bias of the overloaded expert went down, and the update is exactly +-gamma per step
    CHECK(m.bias[(size_t)m.moe_block[0] * E + 0] < 0.3f, "overloaded expert's bias should decrease (%.3f)",
          m.bias[(size_t)m.moe_block[0] * E + 0]);
    model_free(&m);
    test_end();
}

int main(void) {
    rng = rng_seed(2024);
    test_rmsnorm();
    test_simple_layers();
    test_rope();
    test_attention();
    test_crossentropy();
    test_gates();
    test_balancing();
    return test_summary();
}
