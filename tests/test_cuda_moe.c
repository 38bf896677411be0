// The CUDA MoE kernels (model/cuda/moe.cu: gate scores, routing, dispatch with capacity,
// grouped GEMMs, combine, backward, balancing losses, routing statistics) against the CPU
// reference (model/cpu/moe.c) on awkward sizes: the MoE FFN forward / backward and the grouped
// GEMM in fp32, bf16 and fp16; the parallel dispatch bit for bit on 10 to 70000 assignments,
// 7 to 256 experts, skewed selections, an empty expert, with and without capacity. Built
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

static const int DTS[3] = {CU_F32, CU_BF16, CU_F16};

// tolerance of a result stored in dt after ONE rounding (exact inputs, fp32 accumulation)
static double rt(int dt) { return RTOL + (dt == CU_F32 ? 0.0 : eps_dt(dt)); }

// relative L2 error of the device buffer (n values of type dt) against ref, at most bound
static double check_rel_dt(const char *what, const void *dev, int dt, const float *ref, size_t n, double bound) {
    float *h = from_dev_dt(dev, n, dt);
    double e = rel_l2(h, ref, n);
    CHECK(e <= bound, "%s: relative L2 error %.3g above %.3g", what, e, bound);
    free(h);
    return e;
}

// The whole MoE FFN composed from the device ops, against moe_forward / moe_backward, with the
// activations and the working copy of the weights of type dt (fp32 gradients, as the model).
// The inputs (ln2, weights, dy) are rounded to dt first, so the fp32 CPU reference sees the
// values the device sees; what differs is only the device's rounding of its intermediate
// activations to dt (eh1, eh3, eg, ey, sh*, sg; dey, deh*, dsh*, dlogits in backward).
// Tolerances: fp32: elementwise ATOL / RTOL everywhere. bf16 / fp16: xe is a copy (exact); eh1
// is one GEMM of exact inputs, rounded once: elementwise RTOL + eps_dt. Every other result
// goes through a chain of such roundings (ey: h1, h3, g, ey: 4; a gradient: fewer than 8 on
// any path, e.g. dgate: h1, h3, g, ey, dlogits; dew1: h1, h3, dey, deh1) that each change a
// value by at most eps relative, with an rms of eps / sqrt(3) (round to nearest); independent
// roundings add in quadrature in an L2 norm: sqrt(8 / 3) eps = 1.6 eps for 8 of them. Bound:
// relative L2 <= 3 eps (measured 0.5 - 1.2 eps, printed; an extra bf16 rounding of dy in the
// fp16 run gives 3.4 eps and fails). A half run must also differ from fp32 (ey above fp32 noise).
// "" while bf16 / fp16 grouped GEMMs run on the tensor-core kernels, "_simt" for the SIMT ones
static const char *gemm_path = "";

static void test_moe_ffn(const char *name, int E, int K, int G, int topG, int score_func, float cf, int dt) {
    char full[128];
    snprintf(full, sizeof full, "%s_%s%s", name, cu_dtype_name(dt), dt == CU_F32 ? "" : gemm_path);
    test_begin(full);
    ModelConfig c;
    moe_config(&c, E, K, G, topG, score_func, BALANCE_BIAS, cf);
    int B = 2, T = 9, N = B * T, C = c.dim, I = c.moe_inter_dim, SI = c.n_shared_experts * I, NK = N * K;
    long cap = cf > 0.0f ? (long)ceil((double)cf * N * K / E) : (long)N * K;
    int half = dt != CU_F32;
    double fwd_rel = 3 * eps_dt(dt), bwd_rel = 3 * eps_dt(dt);
    size_t es = cu_dtype_size(dt);
    // parameters (the working copy of type dt: rounded in place by to_dev_dt)
    size_t n_gate = (size_t)E * C, n_e = (size_t)E * I * C, n_s = (size_t)SI * C;
    LayerParams lp, gp;
    memset(&lp, 0, sizeof lp), memset(&gp, 0, sizeof gp);
    lp.is_moe = 1;
    lp.gate = rand_buf(n_gate, 0.5f), lp.ew1 = rand_buf(n_e, 0.3f), lp.ew2 = rand_buf(n_e, 0.3f);
    lp.ew3 = rand_buf(n_e, 0.3f), lp.sw1 = rand_buf(n_s, 0.3f), lp.sw2 = rand_buf(n_s, 0.3f), lp.sw3 = rand_buf(n_s, 0.3f);
    gp.gate = rand_buf(n_gate, 0.01f), gp.ew1 = rand_buf(n_e, 0.01f), gp.ew2 = rand_buf(n_e, 0.01f);
    gp.ew3 = rand_buf(n_e, 0.01f), gp.sw1 = rand_buf(n_s, 0.01f), gp.sw2 = rand_buf(n_s, 0.01f), gp.sw3 = rand_buf(n_s, 0.01f);
    float *bias = rand_buf(E, 0.05f);
    void *d_gate = to_dev_dt(lp.gate, n_gate, dt, 1);
    void *d_ew1 = to_dev_dt(lp.ew1, n_e, dt, 1), *d_ew2 = to_dev_dt(lp.ew2, n_e, dt, 1);
    void *d_ew3 = to_dev_dt(lp.ew3, n_e, dt, 1);
    void *d_sw1 = to_dev_dt(lp.sw1, n_s, dt, 1), *d_sw2 = to_dev_dt(lp.sw2, n_s, dt, 1);
    void *d_sw3 = to_dev_dt(lp.sw3, n_s, dt, 1);
    // CPU activations
    BlockActs ba;
    memset(&ba, 0, sizeof ba);
    ba.ln2 = rand_buf((size_t)N * C, 1.0f);
    void *d_ln2 = to_dev_dt(ba.ln2, (size_t)N * C, dt, 1);
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
    // device
    float *d_bias = (float *)to_dev(bias, sizeof(float) * E);
    float *d_logits = (float *)cu_malloc(sizeof(float) * N * E), *d_scores = (float *)cu_malloc(sizeof(float) * N * E);
    float *d_wts = (float *)cu_malloc(sizeof(float) * NK);
    int *d_sel = (int *)cu_malloc(sizeof(int) * NK), *d_row_of = (int *)cu_malloc(sizeof(int) * NK);
    int *d_perm = (int *)cu_malloc(sizeof(int) * NK), *d_off = (int *)cu_malloc(sizeof(int) * (E + 1));
    float *d_load = (float *)cu_malloc(sizeof(float) * E), *d_dropped = (float *)cu_malloc(sizeof(float));
    void *d_xe = cu_malloc(es * NK * C), *d_ey = cu_malloc(es * NK * C);
    void *d_eh1 = cu_malloc(es * NK * I), *d_eh3 = cu_malloc(es * NK * I), *d_eg = cu_malloc(es * NK * I);
    void *d_sh1 = cu_malloc(es * N * SI), *d_sh3 = cu_malloc(es * N * SI), *d_sg = cu_malloc(es * N * SI);
    float *d_y = (float *)cu_malloc(sizeof(float) * N * C);
    cu_zero(d_load, sizeof(float) * E);
    cu_zero(d_dropped, sizeof(float));
    cu_matmul_forward(d_logits, CU_F32, d_ln2, d_gate, N, C, E, dt);
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
    cu_moe_gather(d_xe, d_ln2, d_perm, d_off, N, K, C, E, dt);
    check_dev_dt("xe", d_xe, dt, ba.xe, (size_t)rows * C, 0, 0);
    cu_grouped_matmul_forward(d_eh1, dt, d_xe, d_ew1, d_off, E, N, C, I, dt);
    cu_grouped_matmul_forward(d_eh3, dt, d_xe, d_ew3, d_off, E, N, C, I, dt);
    cu_swiglu_forward(d_eg, d_eh1, d_eh3, (long)NK * I, dt);
    cu_grouped_matmul_forward(d_ey, dt, d_eg, d_ew2, d_off, E, N, I, C, dt);
    check_dev_dt("eh1", d_eh1, dt, ba.eh1, (size_t)rows * I, ATOL, rt(dt));
    cu_matmul_forward(d_sh1, dt, d_ln2, d_sw1, N, C, SI, dt);
    cu_matmul_forward(d_sh3, dt, d_ln2, d_sw3, N, C, SI, dt);
    cu_swiglu_forward(d_sg, d_sh1, d_sh3, (long)N * SI, dt);
    cu_matmul_forward(d_y, CU_F32, d_sg, d_sw2, N, SI, C, dt);
    cu_moe_combine(d_y, d_ey, d_wts, d_row_of, N, K, C, dt);
    if (!half) {
        check_dev("ey", (const float *)d_ey, ba.ey, (size_t)rows * C, ATOL, RTOL);
        check_dev("ffn_y", d_y, ba.ffn_y, (size_t)N * C, ATOL, RTOL);
    } else {
        double e_ey = check_rel_dt("ey", d_ey, dt, ba.ey, (size_t)rows * C, fwd_rel);
        double e_y = check_rel_dt("ffn_y", d_y, CU_F32, ba.ffn_y, (size_t)N * C, fwd_rel);
        CHECK(e_ey > 1e-6, "ey in %s equals fp32 to %.2g: not computed in %s", cu_dtype_name(dt), e_ey,
              cu_dtype_name(dt));
        printf("#   %s forward rel L2 / eps: ey %.2f ffn_y %.2f\n", full, e_ey / eps_dt(dt), e_y / eps_dt(dt));
    }

    // backward (no auxiliary loss): against moe_backward; dy rounded to dt (the GEMMs read it in dt)
    float *dy = rand_buf((size_t)N * C, 1.0f), *dln2 = rand_buf((size_t)N * C, 0.1f);
    void *d_dy_dt = to_dev_dt(dy, (size_t)N * C, dt, 1);
    size_t cap_s = 2 * (size_t)N * E + NK + 2 * (size_t)NK * C + 3 * (size_t)NK * I + 3 * (size_t)N * SI + 64;
    float *scratch = (float *)mallocCheck(sizeof(float) * cap_s);
    float *d_dy = (float *)to_dev(dy, sizeof(float) * N * C), *d_dln2 = (float *)to_dev(dln2, sizeof(float) * N * C);
    float *d_ggate = (float *)to_dev(gp.gate, sizeof(float) * n_gate);
    float *d_gew1 = (float *)to_dev(gp.ew1, sizeof(float) * n_e), *d_gew2 = (float *)to_dev(gp.ew2, sizeof(float) * n_e);
    float *d_gew3 = (float *)to_dev(gp.ew3, sizeof(float) * n_e);
    float *d_gsw1 = (float *)to_dev(gp.sw1, sizeof(float) * n_s), *d_gsw2 = (float *)to_dev(gp.sw2, sizeof(float) * n_s);
    float *d_gsw3 = (float *)to_dev(gp.sw3, sizeof(float) * n_s);
    moe_backward(&c, &lp, &gp, &ba, dy, dln2, B, T, 1.0f, scratch, cap_s);
    float *d_dsg = (float *)cu_malloc(sizeof(float) * N * SI);
    void *d_dsh1 = cu_malloc(es * N * SI), *d_dsh3 = cu_malloc(es * N * SI);
    void *d_dey = cu_malloc(es * NK * C);
    float *d_dxe = (float *)cu_malloc(sizeof(float) * NK * C), *d_deg = (float *)cu_malloc(sizeof(float) * NK * I);
    void *d_deh1 = cu_malloc(es * NK * I), *d_deh3 = cu_malloc(es * NK * I);
    float *d_dwts = (float *)cu_malloc(sizeof(float) * NK), *d_dlogits = (float *)cu_malloc(sizeof(float) * N * E);
    void *d_dlogits_dt = cu_malloc(es * N * E);
    // shared expert
    cu_zero(d_dsg, sizeof(float) * N * SI);
    cu_matmul_backward(d_dsg, d_gsw2, d_dy_dt, d_sg, d_sw2, N, SI, C, dt);
    cu_swiglu_backward(d_dsh1, d_dsh3, d_dsg, d_sh1, d_sh3, (long)N * SI, dt);
    cu_matmul_backward(d_dln2, d_gsw1, d_dsh1, d_ln2, d_sw1, N, C, SI, dt);
    cu_matmul_backward(d_dln2, d_gsw3, d_dsh3, d_ln2, d_sw3, N, C, SI, dt);
    // routed experts (dey, deh1, deh3 are written; deg and dxe accumulate)
    cu_moe_combine_backward(d_dey, d_dwts, d_dy, d_ey, d_wts, d_perm, d_row_of, d_off, N, K, C, E, dt);
    cu_zero(d_deg, sizeof(float) * NK * I), cu_zero(d_dxe, sizeof(float) * NK * C);
    cu_grouped_matmul_backward(d_deg, d_gew2, d_dey, d_eg, d_ew2, d_off, E, N, I, C, dt);
    cu_swiglu_backward(d_deh1, d_deh3, d_deg, d_eh1, d_eh3, (long)NK * I, dt);
    cu_grouped_matmul_backward(d_dxe, d_gew1, d_deh1, d_xe, d_ew1, d_off, E, N, C, I, dt);
    cu_grouped_matmul_backward(d_dxe, d_gew3, d_deh3, d_xe, d_ew3, d_off, E, N, C, I, dt);
    cu_moe_scatter_add(d_dln2, d_dxe, d_row_of, N, K, C);
    // gate (the router GEMM reads dlogits in dt)
    cu_moe_gate_backward(d_dlogits, d_dwts, d_scores, d_sel, N, E, K, score_func, c.route_scale);
    cu_convert(d_dlogits_dt, dt, d_dlogits, CU_F32, (long)N * E);
    cu_matmul_backward(d_dln2, d_ggate, d_dlogits_dt, d_ln2, d_gate, N, C, E, dt);
    const char *gname[] = {"dwts", "dlogits", "dln2", "dgate", "dew1", "dew2", "dew3", "dsw1", "dsw2", "dsw3"};
    const float *gdev[] = {d_dwts, d_dlogits, d_dln2, d_ggate, d_gew1, d_gew2, d_gew3, d_gsw1, d_gsw2, d_gsw3};
    const float *gref[] = {scratch + 2 * (size_t)N * E, scratch + (size_t)N * E, dln2, gp.gate, gp.ew1, gp.ew2,
                           gp.ew3, gp.sw1, gp.sw2, gp.sw3};
    size_t gn[] = {(size_t)NK, (size_t)N * E, (size_t)N * C, n_gate, n_e, n_e, n_e, n_s, n_s, n_s};
    char msg[512];
    int len = snprintf(msg, sizeof msg, "#   %s backward rel L2 / eps:", full);
    for (int i = 0; i < 10; i++) {
        if (!half) {
            check_dev(gname[i], gdev[i], gref[i], gn[i], ATOL, RTOL);
        } else {
            double e = check_rel_dt(gname[i], gdev[i], CU_F32, gref[i], gn[i], bwd_rel);
            if (len < (int)sizeof msg) len += snprintf(msg + len, sizeof msg - len, " %s %.2f", gname[i], e / eps_dt(dt));
        }
    }
    if (half) printf("%s\n", msg);

    void *dev[] = {d_ln2, d_bias, d_gate, d_ew1, d_ew2, d_ew3, d_sw1, d_sw2, d_sw3, d_logits, d_scores, d_wts, d_sel,
                   d_row_of, d_perm, d_off, d_load, d_dropped, d_xe, d_ey, d_eh1, d_eh3, d_eg, d_sh1, d_sh3, d_sg, d_y,
                   d_dy, d_dy_dt, d_dln2, d_ggate, d_gew1, d_gew2, d_gew3, d_gsw1, d_gsw2, d_gsw3, d_dsg, d_dsh1,
                   d_dsh3, d_dey, d_dxe, d_deg, d_deh1, d_deh3, d_dwts, d_dlogits, d_dlogits_dt};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) cu_free(dev[i]);
    void *host[] = {lp.gate, lp.ew1, lp.ew2, lp.ew3, lp.sw1, lp.sw2, lp.sw3, gp.gate, gp.ew1, gp.ew2, gp.ew3, gp.sw1,
                    gp.sw2, gp.sw3, bias, ba.ln2, ba.logits, ba.scores, ba.sel, ba.wts, ba.row_of, ba.perm,
                    ba.expert_off, ba.xe, ba.ey, ba.eh1, ba.eh3, ba.eg, ba.sh1, ba.sh3, ba.sg, ba.aux_f, ba.ffn_y, dy,
                    dln2, scratch};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(host[i]);
    test_end();
}

// grouped GEMM with expert blocks larger than a tile, an empty expert, k not a multiple of 16;
// operands of type dt (rounded first: the CPU reference sees the same values), out of out_dt.
// Exact inputs and fp32 accumulation: out in fp32, dinp and dweight (fp32) to ATOL / RTOL; out
// in dt one rounding more (RTOL + eps_dt), and then it must differ from fp32.
static void test_grouped_gemm(int dt, int out_dt) {
    char name[96];
    snprintf(name, sizeof name, "cuda_grouped_gemm_multi_tile_%s_out_%s%s", cu_dtype_name(dt), cu_dtype_name(out_dt),
             dt == CU_F32 ? "" : gemm_path);
    test_begin(name);
    int E = 3, IC = 37, OC = 70, cnt[3] = {70, 0, 133}, off[4] = {0, 70, 70, 203}, rows = off[E];
    float *x = rand_buf((size_t)rows * IC, 1.0f), *w = rand_buf((size_t)E * OC * IC, 1.0f);
    float *dout = rand_buf((size_t)rows * OC, 1.0f), *dx = rand_buf((size_t)rows * IC, 0.1f);
    float *dw = rand_buf((size_t)E * OC * IC, 0.1f), *out = (float *)mallocCheck(sizeof(float) * rows * OC);
    void *d_x = to_dev_dt(x, (size_t)rows * IC, dt, 1), *d_w = to_dev_dt(w, (size_t)E * OC * IC, dt, 1);
    void *d_dout = to_dev_dt(dout, (size_t)rows * OC, dt, 1);
    float *d_dx = (float *)to_dev(dx, sizeof(float) * rows * IC);
    float *d_dw = (float *)to_dev(dw, sizeof(float) * E * OC * IC);
    void *d_out = cu_malloc(cu_dtype_size(out_dt) * rows * OC);
    int *d_off = (int *)to_dev(off, sizeof off);
    for (int e = 0; e < E; e++) {
        if (!cnt[e]) continue;
        matmul_forward(out + (size_t)off[e] * OC, x + (size_t)off[e] * IC, w + (size_t)e * OC * IC, cnt[e], IC, OC);
        matmul_backward(dx + (size_t)off[e] * IC, dw + (size_t)e * OC * IC, dout + (size_t)off[e] * OC,
                        x + (size_t)off[e] * IC, w + (size_t)e * OC * IC, cnt[e], IC, OC);
    }
    cu_grouped_matmul_forward(d_out, out_dt, d_x, d_w, d_off, E, 140, IC, OC, dt);
    cu_grouped_matmul_backward(d_dx, d_dw, d_dout, d_x, d_w, d_off, E, 140, IC, OC, dt);
    check_dev_dt("out", d_out, out_dt, out, (size_t)rows * OC, ATOL, rt(out_dt));
    if (out_dt != CU_F32) {
        float *got = from_dev_dt(d_out, (size_t)rows * OC, out_dt);
        double e = rel_l2(got, out, (size_t)rows * OC);
        CHECK(e > 1e-6, "out in %s equals fp32 to %.2g: not stored in %s", cu_dtype_name(out_dt), e,
              cu_dtype_name(out_dt));
        free(got);
    }
    check_dev("dinp", d_dx, dx, (size_t)rows * IC, ATOL, RTOL);
    check_dev("dweight", d_dw, dw, (size_t)E * OC * IC, ATOL, RTOL);
    // only dinp, then only dweight (the other NULL)
    float *d_dx2 = (float *)to_dev(dx, sizeof(float) * rows * IC), *d_dw2 = (float *)to_dev(dw, sizeof(float) * E * OC * IC);
    cu_grouped_matmul_backward(NULL, d_dw2, d_dout, d_x, d_w, d_off, E, 140, IC, OC, dt);
    cu_grouped_matmul_backward(d_dx2, NULL, d_dout, d_x, d_w, d_off, E, 140, IC, OC, dt);
    for (int e = 0; e < E; e++) {
        if (!cnt[e]) continue;
        matmul_backward(dx + (size_t)off[e] * IC, dw + (size_t)e * OC * IC, dout + (size_t)off[e] * OC,
                        x + (size_t)off[e] * IC, w + (size_t)e * OC * IC, cnt[e], IC, OC);
    }
    check_dev("dinp twice", d_dx2, dx, (size_t)rows * IC, ATOL, RTOL);
    check_dev("dweight twice", d_dw2, dw, (size_t)E * OC * IC, ATOL, RTOL);
    cu_free(d_x), cu_free(d_w), cu_free(d_dout), cu_free(d_dx), cu_free(d_dw), cu_free(d_out), cu_free(d_off);
    cu_free(d_dx2), cu_free(d_dw2);
    free(x), free(w), free(dout), free(dx), free(dw), free(out);
    test_end();
}

// ---- dispatch ------------------------------------------------------------------------------------

// the rule of moe_forward (model/cpu/moe.c), which has it inline: assignments in token order,
// the j-th to expert e gets row off[e] + j when j < cap, else -1; off = prefix sum of min(n_e, cap)
static void ref_dispatch(const int *sel, int NK, int E, long cap, int *row_of, int *perm, int *off, long *count,
                         long *dropped) {
    memset(off, 0, sizeof(int) * (E + 1));
    memset(count, 0, sizeof(long) * E);
    *dropped = 0;
    for (int a = 0; a < NK; a++) {
        int e = sel[a];
        count[e]++;
        if (off[e + 1] >= cap) row_of[a] = -1, ++*dropped;
        else row_of[a] = off[e + 1]++;
    }
    for (int e = 0; e < E; e++) off[e + 1] += off[e];
    for (int a = 0; a < NK; a++)
        if (row_of[a] >= 0) row_of[a] += off[sel[a]], perm[row_of[a]] = a;
}

// N tokens with K distinct experts each; expert `cold` is never chosen (zero rows); skew: the
// first choice of 90% of the tokens is expert `hot`. cf 0: dropless, else cap = ceil(cf NK / E).
// Outputs must equal the reference bit for bit; load and dropped are ADDED to (start nonzero).
static void test_dispatch(int N, int K, int E, int skew, float cf) {
    char name[128];
    int NK = N * K, hot = E / 3, cold = E - 1;
    snprintf(name, sizeof name, "cuda_moe_dispatch_nk%d_e%d_k%d_%s_%s", NK, E, K, skew ? "skewed" : "uniform",
             cf > 0.0f ? "capacity" : "dropless");
    test_begin(name);
    long cap = cf > 0.0f ? (long)ceil((double)cf * NK / E) : (long)NK;
    int *sel = (int *)mallocCheck(sizeof(int) * NK), *row_of = (int *)mallocCheck(sizeof(int) * NK);
    int *perm = (int *)mallocCheck(sizeof(int) * NK), *off = (int *)mallocCheck(sizeof(int) * (E + 1));
    long *count = (long *)mallocCheck(sizeof(long) * E), dropped;
    for (int n = 0; n < N; n++) {
        int *s = sel + (size_t)n * K;
        for (int k = 0; k < K; k++) {
            int e, dup;
            do {
                e = (k == 0 && skew && rng_uniform(&rng) < 0.9f) ? hot : (int)(rng_uniform(&rng) * (E - 1));
                if (e >= E - 1) e = E - 2;  // never cold (= E - 1)
                dup = 0;
                for (int j = 0; j < k; j++) dup |= s[j] == e;
            } while (dup);
            s[k] = e;
        }
    }
    ref_dispatch(sel, NK, E, cap, row_of, perm, off, count, &dropped);
    CHECK(count[cold] == 0 && off[cold + 1] == off[cold], "expert %d has rows: the test lacks an empty expert", cold);
    CHECK(cf == 0.0f ? dropped == 0 : dropped > 0, "%ld dropped with cf %g: the case does not test what it says",
          dropped, cf);
    float *load0 = (float *)mallocCheck(sizeof(float) * E), *load = (float *)mallocCheck(sizeof(float) * E);
    for (int e = 0; e < E; e++) load0[e] = (float)(e % 5);
    float dropped0 = 3.0f, dropped_got;
    int *d_sel = (int *)to_dev(sel, sizeof(int) * NK), *d_row_of = (int *)cu_malloc(sizeof(int) * NK);
    int *d_perm = (int *)cu_malloc(sizeof(int) * NK), *d_off = (int *)cu_malloc(sizeof(int) * (E + 1));
    float *d_load = (float *)to_dev(load0, sizeof(float) * E), *d_dropped = (float *)to_dev(&dropped0, sizeof(float));
    cu_moe_dispatch(d_row_of, d_perm, d_off, d_load, d_dropped, d_sel, N, K, E, cap);
    check_dev_int("expert_off", d_off, off, E + 1);
    check_dev_int("row_of", d_row_of, row_of, NK);
    check_dev_int("perm", d_perm, perm, off[E]);
    cu_download(load, d_load, sizeof(float) * E);
    cu_download(&dropped_got, d_dropped, sizeof(float));
    int bad = 0;
    for (int e = 0; e < E; e++) bad += load[e] != load0[e] + (float)count[e];
    CHECK(!bad, "load differs in %d experts", bad);
    CHECK(dropped_got == dropped0 + (float)dropped, "dropped %g expected %g", dropped_got, dropped0 + (float)dropped);
    cu_free(d_sel), cu_free(d_row_of), cu_free(d_perm), cu_free(d_off), cu_free(d_load), cu_free(d_dropped);
    free(sel), free(row_of), free(perm), free(off), free(count), free(load0), free(load);
    test_end();
}

int main(void) {
    if (!cuda_test_start("cuda_moe", 1234)) return test_summary();
    test_route("cuda_moe_route_sigmoid_bias_groups", 12, 3, 4, 2, SCORE_SIGMOID, 1);
    test_route("cuda_moe_route_sigmoid_nobias_groups", 12, 3, 4, 2, SCORE_SIGMOID, 0);
    test_route("cuda_moe_route_softmax", 9, 2, 1, 1, SCORE_SOFTMAX, 0);
    // more than 32 experts: the kernels instantiated for MOE_MAX_E (E <= 32 has smaller scratch)
    test_route("cuda_moe_route_sigmoid_bias_groups_e40", 40, 6, 8, 3, SCORE_SIGMOID, 1);
    test_begin("cuda_moe_route_rejects_unsupported_sizes");
    CHECK(cu_moe_route(NULL, NULL, NULL, NULL, 4, 300, 2, 1, 1, 0, 1.0f) != 0, "E 300 accepted");
    CHECK(cu_moe_route(NULL, NULL, NULL, NULL, 4, 8, 9, 1, 1, 0, 1.0f) != 0, "K > E accepted");
    CHECK(cu_moe_route(NULL, NULL, NULL, NULL, 4, 10, 2, 3, 1, 0, 1.0f) != 0, "E not divisible by groups accepted");
    CHECK(cu_moe_route(NULL, NULL, NULL, NULL, 4, 8, 2, 4, 5, 0, 1.0f) != 0, "limited groups > groups accepted");
    test_end();
    // half types: through cu_grouped_matmul_* on the tensor-core kernels (the model's path where
    // the device has them), then on the SIMT kernels
    for (int tc = 1; tc >= 0; tc--) {
        cu_grouped_set_tensor_cores(tc);
        gemm_path = tc ? "" : "_simt";
        for (int i = 0; i < 3; i++) {
            if (!tc && DTS[i] == CU_F32) continue;
            test_moe_ffn("cuda_moe_ffn_fwd_bwd_dropless", 6, 2, 3, 2, SCORE_SIGMOID, 0.0f, DTS[i]);
            test_moe_ffn("cuda_moe_ffn_fwd_bwd_capacity", 5, 2, 1, 1, SCORE_SOFTMAX, 0.6f, DTS[i]);
            test_grouped_gemm(DTS[i], CU_F32);
            if (DTS[i] != CU_F32) test_grouped_gemm(DTS[i], DTS[i]);
        }
    }
    cu_grouped_set_tensor_cores(1);
    test_moe_ffn("cuda_moe_ffn_fwd_bwd_e40", 40, 4, 4, 2, SCORE_SIGMOID, 0.0f, CU_F32);  // routing and gate backward, E > 32
    // dispatch: around 5000 and 70000 assignments (more than 256 chunks of 256), E 7, 64, 256;
    // every case has an expert without tokens; small cases: fewer assignments than experts, and
    // a first (partial) chunk of 2 assignments with E = 256
    static const struct { int N, K, E; } DC[] = {{2500, 2, 7}, {1250, 4, 64}, {625, 8, 256},
                                                 {35000, 2, 7}, {8750, 8, 64}, {8750, 8, 256},
                                                 {5, 2, 64}, {129, 2, 256}};
    for (size_t i = 0; i < sizeof DC / sizeof DC[0]; i++)
        for (int skew = 0; skew < 2; skew++)
            for (int capf = 0; capf < 2; capf++) {
                // the capacity that drops: 1.0 drops a little of uniform selections, much of skewed ones;
                // the tiny case (10 assignments over 63 experts) needs cap 1 with a hot expert
                if (DC[i].N == 5 && capf && !skew) continue;
                test_dispatch(DC[i].N, DC[i].K, DC[i].E, skew, capf ? 1.0f : 0.0f);
            }
    return test_summary();
}
