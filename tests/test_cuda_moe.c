// The CUDA MoE kernels (model/cuda/moe.cu: gate scores, routing, dispatch with capacity,
// grouped GEMMs, combine, backward, balancing losses, routing statistics) against the CPU
// reference (model/cpu/moe.c) on awkward sizes. Built through the harness (make test) and
// with nvcc (make test-gpu).
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
        test_skip("cuda_moe", "no CUDA device visible");
        return test_summary();
    }
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
    return test_summary();
}
