#include "moe.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "../../common/gemm.h"
#include "../layers.h"

static int uses_bias(const ModelConfig *c) { return cfg_uses_bias(c); }

void moe_scores(const ModelConfig *c, float *scores, const float *logits, int N) {
    int E = c->n_routed_experts;
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        lm_gate_scores(scores + (size_t)n * E, logits + (size_t)n * E, E, c->score_func == SCORE_SOFTMAX);
}

void moe_route_token(const ModelConfig *c, const float *scores, const float *bias, int *sel, float *w) {
    // config_validate bounds E <= 1024 and G <= 256
    float biased[1024], gs[256];
    unsigned char allowed[1024];
    int keep[256];
    lm_route_token(scores, bias, c->n_routed_experts, c->top_k, c->n_expert_groups, c->n_limited_groups,
                   c->score_func == SCORE_SOFTMAX, c->route_scale, sel, w, biased, allowed, gs, keep);
}

static void swiglu_mlp_forward(float *y, float *h1, float *h3, float *g, const float *x, const float *w1,
                               const float *w2, const float *w3, int n, int C, int I) {
    matmul_forward(h1, x, w1, n, C, I);
    matmul_forward(h3, x, w3, n, C, I);
    swiglu_forward(g, h1, h3, (long)n * I);
    matmul_forward(y, g, w2, n, I, C);
}

static void swiglu_mlp_backward(float *dx, float *dw1, float *dw2, float *dw3, float *dg, float *dh1, float *dh3,
                                const float *dy, const float *x, const float *h1, const float *h3, const float *g,
                                const float *w1, const float *w2, const float *w3, int n, int C, int I) {
    // dg, dh1, dh3 are scratch (n, I), zeroed here
    memset(dg, 0, sizeof(float) * (size_t)n * I);
    memset(dh1, 0, sizeof(float) * (size_t)n * I);
    memset(dh3, 0, sizeof(float) * (size_t)n * I);
    matmul_backward(dg, dw2, dy, g, w2, n, I, C);
    swiglu_backward(dh1, dh3, dg, h1, h3, (long)n * I);
    matmul_backward(dx, dw1, dh1, x, w1, n, C, I);
    matmul_backward(dx, dw3, dh3, x, w3, n, C, I);
}

static int has_seqaux(const ModelConfig *c) { return c->balance == BALANCE_SEQAUX || c->balance == BALANCE_BIAS_SEQAUX; }

void moe_forward(const ModelConfig *c, const LayerParams *lp, BlockActs *ba, const float *bias, int B, int T,
                 MoeAux *aux, RoutingStats *stats) {
    int N = B * T, C = c->dim, E = c->n_routed_experts, K = c->top_k, I = c->moe_inter_dim;
    int SI = c->n_shared_experts * I;
    const float *sel_bias = uses_bias(c) ? bias : NULL;
    // gate
    matmul_forward(ba->logits, ba->ln2, lp->gate, N, C, E);
    moe_scores(c, ba->scores, ba->logits, N);
#pragma omp parallel for
    for (int n = 0; n < N; n++)
        moe_route_token(c, ba->scores + (size_t)n * E, sel_bias, ba->sel + (size_t)n * K, ba->wts + (size_t)n * K);
    // capacity (token order) and dispatch into contiguous per-expert blocks
    long cap = c->capacity_factor > 0.0f ? (long)ceil((double)c->capacity_factor * N * K / E) : (long)N * K;
    int *count = ba->expert_off;  // reuse: counts then offsets
    memset(count, 0, sizeof(int) * (size_t)(E + 1));
    long dropped = 0;
    for (int a = 0; a < N * K; a++) {
        int e = ba->sel[a];
        if (count[e + 1] >= cap) {
            ba->row_of[a] = -1;
            dropped++;
        } else {
            ba->row_of[a] = count[e + 1]++;  // row within the expert for now
        }
    }
    for (int e = 0; e < E; e++) count[e + 1] += count[e];
    for (int a = 0; a < N * K; a++) {
        if (ba->row_of[a] < 0) continue;
        int r = ba->expert_off[ba->sel[a]] + ba->row_of[a];
        ba->row_of[a] = r;
        ba->perm[r] = a;
    }
    int rows = ba->expert_off[E];
#pragma omp parallel for
    for (int r = 0; r < rows; r++)
        memcpy(ba->xe + (size_t)r * C, ba->ln2 + (size_t)(ba->perm[r] / K) * C, sizeof(float) * C);
    // one GEMM chain per expert
    for (int e = 0; e < E; e++) {
        int r0 = ba->expert_off[e], ne = ba->expert_off[e + 1] - r0;
        if (ne == 0) continue;
        swiglu_mlp_forward(ba->ey + (size_t)r0 * C, ba->eh1 + (size_t)r0 * I, ba->eh3 + (size_t)r0 * I,
                           ba->eg + (size_t)r0 * I, ba->xe + (size_t)r0 * C, lp->ew1 + (size_t)e * I * C,
                           lp->ew2 + (size_t)e * C * I, lp->ew3 + (size_t)e * I * C, ne, C, I);
    }
    // shared experts, then combine
    if (SI > 0)
        swiglu_mlp_forward(ba->ffn_y, ba->sh1, ba->sh3, ba->sg, ba->ln2, lp->sw1, lp->sw2, lp->sw3, N, C, SI);
    else
        memset(ba->ffn_y, 0, sizeof(float) * (size_t)N * C);
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float *y = ba->ffn_y + (size_t)n * C;
        for (int k = 0; k < K; k++) {
            int r = ba->row_of[n * K + k];
            if (r < 0) continue;
            float w = ba->wts[n * K + k];
            const float *ey = ba->ey + (size_t)r * C;
            for (int i = 0; i < C; i++) y[i] += w * ey[i];
        }
    }
    // balancing losses: alpha * sum_i f_i P_i, s' = s / sum(s)
    aux->loss = 0.0f;
    int seq = has_seqaux(c), batch = c->balance == BALANCE_AUX;
    if ((seq || batch) && c->aux_alpha > 0.0f) {
        int nseg = seq ? B : 1, seglen = seq ? T : N;
        double total = 0.0;
        for (int s = 0; s < nseg; s++) {
            float *f = ba->aux_f + (size_t)s * E;
            memset(f, 0, sizeof(float) * E);
            double P[1024] = {0};
            for (int t = 0; t < seglen; t++) {
                int n = s * seglen + t;
                for (int k = 0; k < K; k++) f[ba->sel[n * K + k]] += 1.0f;
                const float *sc = ba->scores + (size_t)n * E;
                double sum = 0.0;
                for (int e = 0; e < E; e++) sum += sc[e];
                for (int e = 0; e < E; e++) P[e] += sc[e] / sum;
            }
            double Ls = 0.0;
            for (int e = 0; e < E; e++) {
                f[e] *= (float)E / ((float)K * seglen);
                Ls += f[e] * (P[e] / seglen);
            }
            total += c->aux_alpha * Ls;
        }
        aux->loss = (float)(total / nseg);
    }
    // routing statistics
    if (stats) {
        double ent = 0.0, top1 = 0.0;
        for (int n = 0; n < N; n++) {
            const float *sc = ba->scores + (size_t)n * E;
            double sum = 0.0, h = 0.0;
            for (int e = 0; e < E; e++) sum += sc[e];
            for (int e = 0; e < E; e++) {
                double p = sc[e] / sum;
                if (p > 0) h -= p * log(p);
            }
            ent += h;
            float mx = 0.0f;
            for (int k = 0; k < K; k++) {
                stats->load[ba->sel[n * K + k]] += 1.0;
                mx = ba->wts[n * K + k] > mx ? ba->wts[n * K + k] : mx;
            }
            top1 += mx;
        }
        stats->entropy_sum += ent;
        stats->top1_sum += top1;
        stats->dropped += (double)dropped;
        stats->tokens += N;
    }
}

void moe_backward(const ModelConfig *c, const LayerParams *lp, LayerParams *gp, BlockActs *ba, const float *dy,
                  float *dln2, int B, int T, float aux_scale, float *scratch, size_t cap) {
    int N = B * T, C = c->dim, E = c->n_routed_experts, K = c->top_k, I = c->moe_inter_dim;
    int SI = c->n_shared_experts * I;
    int rows = ba->expert_off[E];
    size_t need = 2 * (size_t)N * E + (size_t)N * K + 2 * (size_t)rows * C + 3 * (size_t)rows * I +
                  3 * (size_t)N * (SI > 0 ? SI : 0);
    if (need > cap) {
        fprintf(stderr, "error: internal: MoE backward scratch too small (%zu > %zu floats)\n", need, cap);
        exit(EXIT_FAILURE);
    }
    float *dscores = scratch;
    float *dlogits = dscores + (size_t)N * E;
    float *dwts = dlogits + (size_t)N * E;
    float *dey = dwts + (size_t)N * K;
    float *dxe = dey + (size_t)rows * C;
    float *deg = dxe + (size_t)rows * C;
    float *deh1 = deg + (size_t)rows * I;
    float *deh3 = deh1 + (size_t)rows * I;
    float *dsh = deh3 + (size_t)rows * I;
    // shared experts
    if (SI > 0)
        swiglu_mlp_backward(dln2, gp->sw1, gp->sw2, gp->sw3, dsh, dsh + (size_t)N * SI, dsh + 2 * (size_t)N * SI, dy,
                            ba->ln2, ba->sh1, ba->sh3, ba->sg, lp->sw1, lp->sw2, lp->sw3, N, C, SI);
    // routed: gradient of each kept assignment's output and of its weight
    memset(dwts, 0, sizeof(float) * (size_t)N * K);
#pragma omp parallel for
    for (int r = 0; r < rows; r++) {
        int a = ba->perm[r], n = a / K;
        const float *g = dy + (size_t)n * C;
        const float *ey = ba->ey + (size_t)r * C;
        float w = ba->wts[a], dot = 0.0f;
        float *d = dey + (size_t)r * C;
        for (int i = 0; i < C; i++) {
            d[i] = w * g[i];
            dot += g[i] * ey[i];
        }
        dwts[a] = dot;
    }
    memset(dxe, 0, sizeof(float) * (size_t)rows * C);
    for (int e = 0; e < E; e++) {
        int r0 = ba->expert_off[e], ne = ba->expert_off[e + 1] - r0;
        if (ne == 0) continue;
        swiglu_mlp_backward(dxe + (size_t)r0 * C, gp->ew1 + (size_t)e * I * C, gp->ew2 + (size_t)e * C * I,
                            gp->ew3 + (size_t)e * I * C, deg + (size_t)r0 * I, deh1 + (size_t)r0 * I,
                            deh3 + (size_t)r0 * I, dey + (size_t)r0 * C, ba->xe + (size_t)r0 * C,
                            ba->eh1 + (size_t)r0 * I, ba->eh3 + (size_t)r0 * I, ba->eg + (size_t)r0 * I,
                            lp->ew1 + (size_t)e * I * C, lp->ew2 + (size_t)e * C * I, lp->ew3 + (size_t)e * I * C, ne,
                            C, I);
    }
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float *d = dln2 + (size_t)n * C;
        for (int k = 0; k < K; k++) {
            int r = ba->row_of[n * K + k];
            if (r < 0) continue;
            const float *x = dxe + (size_t)r * C;
            for (int i = 0; i < C; i++) d[i] += x[i];
        }
    }
    // gate: weights -> scores
    int seq = has_seqaux(c), batch = c->balance == BALANCE_AUX;
    int with_aux = (seq || batch) && c->aux_alpha > 0.0f;
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *s = ba->scores + (size_t)n * E;
        float *ds = dscores + (size_t)n * E;
        const int *sel = ba->sel + (size_t)n * K;
        const float *dw = dwts + (size_t)n * K;
        memset(ds, 0, sizeof(float) * E);
        if (c->score_func == SCORE_SIGMOID) {
            float S = 0.0f, dot = 0.0f;
            for (int k = 0; k < K; k++) {
                S += s[sel[k]];
                dot += dw[k] * s[sel[k]];
            }
            for (int k = 0; k < K; k++) ds[sel[k]] += c->route_scale * (dw[k] / S - dot / (S * S));
        } else {
            for (int k = 0; k < K; k++) ds[sel[k]] += c->route_scale * dw[k];
        }
        if (with_aux) {
            // L = alpha * sum_i f_i * (1/len) sum_t s'_{i,t}, averaged over segments
            const float *f = ba->aux_f + (size_t)(seq ? n / T : 0) * E;
            float coef = seq ? c->aux_alpha / ((float)T * B) : c->aux_alpha / (float)N;
            float sum = 0.0f, dot = 0.0f;
            for (int e = 0; e < E; e++) sum += s[e];
            for (int e = 0; e < E; e++) dot += coef * f[e] * (s[e] / sum);
            for (int e = 0; e < E; e++) ds[e] += aux_scale * (coef * f[e] - dot) / sum;
        }
        float *dl = dlogits + (size_t)n * E;
        if (c->score_func == SCORE_SIGMOID) {
            for (int e = 0; e < E; e++) dl[e] = ds[e] * s[e] * (1.0f - s[e]);
        } else {
            float dot = 0.0f;
            for (int e = 0; e < E; e++) dot += ds[e] * s[e];
            for (int e = 0; e < E; e++) dl[e] = s[e] * (ds[e] - dot);
        }
    }
    matmul_backward(dln2, gp->gate, dlogits, ba->ln2, lp->gate, N, C, E);
}
