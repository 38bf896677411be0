// MoE on the GPU: gate scores, routing (lm_route_token of model/layer_math.h, as the CPU: same
// selection order and tie-breaking), dispatch into contiguous per-expert row blocks with the
// capacity rule in token order, grouped GEMMs whose per-expert row counts stay on the device
// (no host synchronisation per expert), combine, and the backward pieces.
#include "cuda_common.cuh"
#include "cuda_ops.h"

#define MOE_MAX_E 256
#define MOE_MAX_G 64
#define MOE_MAX_K 16

// ---- gate ---------------------------------------------------------------------------------

// the scalar routing math is lm_gate_scores / lm_route_token of model/layer_math.h, the one
// definition shared with the CPU reference (model/cpu/moe.c)
__global__ void moe_scores_kernel(float *scores, const float *logits, int N, int E, int score_func) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    lm_gate_scores(scores + (long)n * E, logits + (long)n * E, E, score_func == 1);
}

// one thread per token
__global__ void moe_route_kernel(int *sel_out, float *wts_out, const float *scores_all, const float *bias, int N, int E,
                                 int K, int G, int topG, int score_func, float route_scale) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    float biased[MOE_MAX_E], group_scores[MOE_MAX_G];
    unsigned char allowed[MOE_MAX_E];
    int keep[MOE_MAX_G];
    lm_route_token(scores_all + (long)n * E, bias, E, K, G, topG, score_func == 1, route_scale, sel_out + (long)n * K,
                   wts_out + (long)n * K, biased, allowed, group_scores, keep);
}

// ---- dispatch ---------------------------------------------------------------------------------

// One block, one thread per expert: each expert takes its assignments in token order up to the
// capacity (deterministic, as the CPU reference); thread 0 then writes the offsets.
// expert_off[e + 1] holds counts until the prefix sum. No early return: every thread reaches
// the barrier.
__global__ void moe_dispatch_count_kernel(int *row_of, int *expert_off, float *load, float *dropped, const int *sel,
                                          int NK, int E, long cap) {
    SHARED_ARRAY(int, drop, 1024);
    int e = threadIdx.x;
    if (e < E) {
        int cnt = 0, total = 0, dr = 0;
        for (int a = 0; a < NK; a++) {
            if (sel[a] != e) continue;
            total++;
            if (cnt >= cap) {
                row_of[a] = -1;
                dr++;
            } else {
                row_of[a] = cnt++;
            }
        }
        expert_off[e + 1] = cnt;
        load[e] += (float)total;
        drop[e] = dr;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        expert_off[0] = 0;
        int d = 0;
        for (int i = 0; i < E; i++) {
            expert_off[i + 1] += expert_off[i];
            d += drop[i];
        }
        dropped[0] += (float)d;
    }
}

__global__ void moe_dispatch_finalize_kernel(int *row_of, int *perm, const int *expert_off, const int *sel, int NK) {
    int a = blockIdx.x * blockDim.x + threadIdx.x;
    if (a >= NK || row_of[a] < 0) return;
    int r = expert_off[sel[a]] + row_of[a];
    row_of[a] = r;
    perm[r] = a;
}

__global__ void moe_gather_kernel(float *xe, const float *x, const int *perm, const int *expert_off, int NK, int K,
                                  int C, int E) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)NK * C) return;
    int r = (int)(i / C), c = (int)(i % C);
    if (r >= expert_off[E]) return;
    xe[i] = x[(long)(perm[r] / K) * C + c];
}

// ---- grouped GEMM --------------------------------------------------------------------------------
// For expert e = blockIdx.z and its rows [off[e], off[e+1]):
//   Cm[r, col] (+)= sum_kk A[r, kk] * Bm(kk, col),  Bm(kk, col) = transB ? B_e[col, kk] : B_e[kk, col]
// A (rows, Kd) ld Kd; Cm (rows, Nc) ld Nc; B_e = B + e * Kd * Nc.
// 64 x 64 output tiles, 256 threads with 4 x 4 outputs each, k in steps of 16 through shared
// memory. Blocks past the expert's last row leave at once (uniformly, before any barrier).
#define GM 64
#define GK 16
#define GPAD 4
__global__ void grouped_rows_kernel(float *Cm, const float *A, const float *B, const int *off, int Kd, int Nc,
                                    int transB, int accumulate) {
    SHARED_ARRAY2(float, As, GK, GM + GPAD);  // As[k][row]
    SHARED_ARRAY2(float, Bs, GK, GM + GPAD);  // Bs[k][col]
    int e = blockIdx.z;
    int rend = off[e + 1], r0 = off[e] + blockIdx.y * GM, c0 = blockIdx.x * GM;
    if (r0 >= rend) return;
    int tid = threadIdx.x, tr = tid / 16, tc = tid % 16;
    const float *Be = B + (long)e * Kd * Nc;
    float acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < Kd; k0 += GK) {
        for (int q = 0; q < 4; q++) {
            int idx = tid + 256 * q;
            int rr = idx / GK, kk = idx % GK, r = r0 + rr, k = k0 + kk;
            As[kk][rr] = (r < rend && k < Kd) ? A[(long)r * Kd + k] : 0.0f;
            int col, bk;
            if (transB) col = idx / GK, bk = idx % GK;  // consecutive threads walk k: coalesced
            else bk = idx / GM, col = idx % GM;          // consecutive threads walk columns
            int cc = c0 + col, kb = k0 + bk;
            float bv = 0.0f;
            if (cc < Nc && kb < Kd) bv = transB ? Be[(long)cc * Kd + kb] : Be[(long)kb * Nc + cc];
            Bs[bk][col] = bv;
        }
        __syncthreads();
        for (int kk = 0; kk < GK; kk++) {
            float a[4], b[4];
            for (int i = 0; i < 4; i++) a[i] = As[kk][tr * 4 + i];
            for (int j = 0; j < 4; j++) b[j] = Bs[kk][tc * 4 + j];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; i++) {
        int r = r0 + tr * 4 + i;
        if (r >= rend) break;
        for (int j = 0; j < 4; j++) {
            int col = c0 + tc * 4 + j;
            if (col >= Nc) break;
            float *c = Cm + (long)r * Nc + col;
            *c = accumulate ? *c + acc[i][j] : acc[i][j];
        }
    }
}

// dW_e (OC, IC) += dout_e^T (OC, rows) @ inp_e (rows, IC): 64 x 64 tiles of dW, the expert's
// rows in steps of 16
__global__ void grouped_wgrad_kernel(float *dW, const float *dout, const float *inp, const int *off, int IC, int OC) {
    SHARED_ARRAY2(float, Ds, GK, GM + GPAD);  // Ds[row][o]
    SHARED_ARRAY2(float, Is, GK, GM + GPAD);  // Is[row][i]
    int e = blockIdx.z;
    int rbeg = off[e], rend = off[e + 1];
    int o0 = blockIdx.y * GM, i0 = blockIdx.x * GM;
    int tid = threadIdx.x, tr = tid / 16, tc = tid % 16;
    float acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
    for (int r0 = rbeg; r0 < rend; r0 += GK) {
        for (int q = 0; q < 4; q++) {
            int idx = tid + 256 * q;
            int kk = idx / GM, col = idx % GM, r = r0 + kk;
            Ds[kk][col] = (r < rend && o0 + col < OC) ? dout[(long)r * OC + o0 + col] : 0.0f;
            Is[kk][col] = (r < rend && i0 + col < IC) ? inp[(long)r * IC + i0 + col] : 0.0f;
        }
        __syncthreads();
        for (int kk = 0; kk < GK; kk++) {
            float a[4], b[4];
            for (int i = 0; i < 4; i++) a[i] = Ds[kk][tr * 4 + i];
            for (int j = 0; j < 4; j++) b[j] = Is[kk][tc * 4 + j];
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) acc[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
    if (rend == rbeg) return;  // nothing to add
    for (int i = 0; i < 4; i++) {
        int o = o0 + tr * 4 + i;
        if (o >= OC) break;
        for (int j = 0; j < 4; j++) {
            int ii = i0 + tc * 4 + j;
            if (ii >= IC) break;
            dW[(long)e * OC * IC + (long)o * IC + ii] += acc[i][j];
        }
    }
}

// ---- combine ----------------------------------------------------------------------------------------

__global__ void moe_combine_kernel(float *y, const float *ey, const float *wts, const int *row_of, int N, int K,
                                   int C) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * C) return;
    int n = (int)(i / C), c = (int)(i % C);
    float acc = y[i];
    for (int k = 0; k < K; k++) {
        int r = row_of[n * K + k];
        if (r >= 0) acc += wts[n * K + k] * ey[(long)r * C + c];
    }
    y[i] = acc;
}

// one warp per sorted row
__global__ void moe_combine_backward_kernel(float *dey, float *dwts, const float *dy, const float *ey, const float *wts,
                                            const int *perm, const int *expert_off, int NK, int K, int C, int E) {
    int lane = threadIdx.x % 32;
    int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= NK || r >= expert_off[E]) return;  // whole warp
    int a = perm[r], n = a / K;
    const float *g = dy + (long)n * C, *eyr = ey + (long)r * C;
    float w = wts[a], dot = 0.0f;
    float *d = dey + (long)r * C;
    for (int i = lane; i < C; i += 32) {
        d[i] = w * g[i];
        dot += g[i] * eyr[i];
    }
    dot = warp_sum(dot);
    if (lane == 0) dwts[a] = dot;
}

__global__ void moe_scatter_add_kernel(float *dx, const float *dxe, const int *row_of, int N, int K, int C) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * C) return;
    int n = (int)(i / C), c = (int)(i % C);
    float acc = dx[i];
    for (int k = 0; k < K; k++) {
        int r = row_of[n * K + k];
        if (r >= 0) acc += dxe[(long)r * C + c];
    }
    dx[i] = acc;
}

// per token: weights -> scores (renormalisation for sigmoid), plus the balancing-loss term
// when aux_f != NULL (f of the token's segment: seg_len tokens per segment) -> logits
__global__ void moe_gate_backward_kernel(float *dlogits, const float *dwts, const float *scores, const int *sel_all,
                                         int N, int E, int K, int score_func, float route_scale, const float *aux_f,
                                         int seg_len, float coef, float aux_scale) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const float *s = scores + (long)n * E;
    const int *sel = sel_all + (long)n * K;
    const float *dw = dwts + (long)n * K;
    float ds[MOE_MAX_E];
    for (int e = 0; e < E; e++) ds[e] = 0.0f;
    if (score_func == 0) {
        float S = 0.0f, dot = 0.0f;
        for (int k = 0; k < K; k++) {
            S += s[sel[k]];
            dot += dw[k] * s[sel[k]];
        }
        for (int k = 0; k < K; k++) ds[sel[k]] += route_scale * (dw[k] / S - dot / (S * S));
    } else {
        for (int k = 0; k < K; k++) ds[sel[k]] += route_scale * dw[k];
    }
    if (aux_f) {
        const float *f = aux_f + (long)(n / seg_len) * E;
        float sum = 0.0f, dot = 0.0f;
        for (int e = 0; e < E; e++) sum += s[e];
        for (int e = 0; e < E; e++) dot += coef * f[e] * (s[e] / sum);
        for (int e = 0; e < E; e++) ds[e] += aux_scale * (coef * f[e] - dot) / sum;
    }
    float *dl = dlogits + (long)n * E;
    if (score_func == 0) {
        for (int e = 0; e < E; e++) dl[e] = ds[e] * s[e] * (1.0f - s[e]);
    } else {
        float dot = 0.0f;
        for (int e = 0; e < E; e++) dot += ds[e] * s[e];
        for (int e = 0; e < E; e++) dl[e] = s[e] * (ds[e] - dot);
    }
}

// ---- balancing loss and routing statistics ------------------------------------------------

// One block per segment, one thread per expert: f_e = E/(K len) * #(assignments to e) and
// P_e = 1/len sum_t s_te / sum_j s_tj; seg_loss[s] = sum_e f_e P_e. No early return.
__global__ void moe_aux_segment_kernel(float *aux_f, float *seg_loss, const float *scores, const int *sel, int seg_len,
                                       int E, int K) {
    SHARED_ARRAY(float, part, 256);
    int s = blockIdx.x, e = threadIdx.x;
    float fe = 0.0f, pe = 0.0f;
    if (e < E) {
        int cnt = 0;
        for (int t = 0; t < seg_len; t++) {
            long n = (long)s * seg_len + t;
            const float *sc = scores + n * E;
            for (int k = 0; k < K; k++) cnt += sel[n * K + k] == e;
            float sum = 0.0f;
            for (int j = 0; j < E; j++) sum += sc[j];
            pe += sc[e] / sum;
        }
        fe = (float)cnt * ((float)E / ((float)K * (float)seg_len));
        aux_f[(long)s * E + e] = fe;
    }
    part[threadIdx.x] = e < E ? fe * (pe / (float)seg_len) : 0.0f;
    __syncthreads();
    if (threadIdx.x == 0) {
        float tot = 0.0f;
        for (int i = 0; i < (int)blockDim.x; i++) tot += part[i];
        seg_loss[s] = tot;
    }
}

// acc[0] += scale * sum(x[0..n)) in a fixed order (one block)
__global__ void sum_into_kernel(float *acc, const float *x, int n, float scale) {
    SHARED_ARRAY(float, scratch, 32);
    float v = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) v += x[i];
    v = block_sum(v, scratch);
    if (threadIdx.x == 0) acc[0] += scale * v;
}

// per token: entropy of the normalised scores and the largest routing weight
__global__ void moe_token_stats_kernel(float *ent, float *top1, const float *scores, const float *wts, int N, int E,
                                       int K) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const float *sc = scores + (long)n * E;
    float sum = 0.0f, h = 0.0f, mx = 0.0f;
    for (int e = 0; e < E; e++) sum += sc[e];
    for (int e = 0; e < E; e++) {
        float p = sc[e] / sum;
        if (p > 0.0f) h -= p * logf(p);
    }
    for (int k = 0; k < K; k++) mx = wts[(long)n * K + k] > mx ? wts[(long)n * K + k] : mx;
    ent[n] = h;
    top1[n] = mx;
}

// ---- C interface -----------------------------------------------------------------------------------

extern "C" {

void cu_moe_scores(float *scores, const float *logits, int N, int E, int score_func) {
    LAUNCH(moe_scores_kernel, ceil_div(N, 64), 64, 0, 0, scores, logits, N, E, score_func);
}

int cu_moe_route(int *sel, float *wts, const float *scores, const float *bias, int N, int E, int K, int n_groups,
                 int n_limited_groups, int score_func, float route_scale) {
    if (E < 1 || E > MOE_MAX_E || K < 1 || K > E || K > MOE_MAX_K || n_groups < 1 || n_groups > MOE_MAX_G ||
        E % n_groups != 0 || n_limited_groups < 1 || n_limited_groups > n_groups)
        return -1;
    if (n_groups > 1 && bias && E / n_groups < 2) return -1;
    LAUNCH(moe_route_kernel, ceil_div(N, 64), 64, 0, 0, sel, wts, scores, bias, N, E, K, n_groups, n_limited_groups,
           score_func, route_scale);
    return 0;
}

void cu_moe_dispatch(int *row_of, int *perm, int *expert_off, float *load, float *dropped, const int *sel, int N,
                     int K, int E, long cap) {
    int NK = N * K;
    int threads = ((E + 31) / 32) * 32;
    LAUNCH(moe_dispatch_count_kernel, 1, threads, 0, 0, row_of, expert_off, load, dropped, sel, NK, E, cap);
    LAUNCH(moe_dispatch_finalize_kernel, ceil_div(NK, 256), 256, 0, 0, row_of, perm, expert_off, sel, NK);
}

void cu_moe_gather(float *xe, const float *x, const int *perm, const int *expert_off, int N, int K, int C, int E) {
    LAUNCH(moe_gather_kernel, ceil_div((long)N * K * C, 256), 256, 0, 0, xe, x, perm, expert_off, N * K, K, C, E);
}

void cu_grouped_matmul_forward(float *out, const float *inp, const float *w, const int *expert_off, int E,
                               int max_rows, int IC, int OC) {
    dim3 grid(ceil_div(OC, GM), ceil_div(max_rows, GM), E);
    LAUNCH(grouped_rows_kernel, grid, 256, 0, 0, out, inp, w, expert_off, IC, OC, 1, 0);
}

void cu_grouped_matmul_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                                const int *expert_off, int E, int max_rows, int IC, int OC) {
    if (dinp) {
        dim3 grid(ceil_div(IC, GM), ceil_div(max_rows, GM), E);
        LAUNCH(grouped_rows_kernel, grid, 256, 0, 0, dinp, dout, w, expert_off, OC, IC, 0, 1);
    }
    if (dw) {
        dim3 grid(ceil_div(IC, GM), ceil_div(OC, GM), E);
        LAUNCH(grouped_wgrad_kernel, grid, 256, 0, 0, dw, dout, inp, expert_off, IC, OC);
    }
}

void cu_moe_combine(float *y, const float *ey, const float *wts, const int *row_of, int N, int K, int C) {
    LAUNCH(moe_combine_kernel, ceil_div((long)N * C, 256), 256, 0, 0, y, ey, wts, row_of, N, K, C);
}

void cu_moe_combine_backward(float *dey, float *dwts, const float *dy, const float *ey, const float *wts,
                             const int *perm, const int *row_of, const int *expert_off, int N, int K, int C, int E) {
    (void)row_of;
    cu_zero(dwts, sizeof(float) * (size_t)N * K);
    LAUNCH(moe_combine_backward_kernel, ceil_div((long)N * K, 4), 128, 0, 0, dey, dwts, dy, ey, wts, perm, expert_off,
           N * K, K, C, E);
}

void cu_moe_scatter_add(float *dx, const float *dxe, const int *row_of, int N, int K, int C) {
    LAUNCH(moe_scatter_add_kernel, ceil_div((long)N * C, 256), 256, 0, 0, dx, dxe, row_of, N, K, C);
}

void cu_moe_gate_backward(float *dlogits, const float *dwts, const float *scores, const int *sel, int N, int E,
                          int K, int score_func, float route_scale) {
    LAUNCH(moe_gate_backward_kernel, ceil_div(N, 64), 64, 0, 0, dlogits, dwts, scores, sel, N, E, K, score_func,
           route_scale, (const float *)NULL, 1, 0.0f, 0.0f);
}

void cu_moe_gate_backward_aux(float *dlogits, const float *dwts, const float *scores, const int *sel, int N, int E,
                              int K, int score_func, float route_scale, const float *aux_f, int seg_len, int n_seg,
                              float alpha, float aux_scale) {
    float coef = alpha / ((float)seg_len * (float)n_seg);
    LAUNCH(moe_gate_backward_kernel, ceil_div(N, 64), 64, 0, 0, dlogits, dwts, scores, sel, N, E, K, score_func,
           route_scale, aux_f, seg_len, coef, aux_scale);
}

void cu_moe_aux_forward(float *aux_f, float *loss_acc, float *scratch, const float *scores, const int *sel, int n_seg,
                        int seg_len, int E, int K, float alpha) {
    int threads = ((E + 31) / 32) * 32;
    LAUNCH(moe_aux_segment_kernel, n_seg, threads, 0, 0, aux_f, scratch, scores, sel, seg_len, E, K);
    LAUNCH(sum_into_kernel, 1, 256, 0, 0, loss_acc, scratch, n_seg, alpha / (float)n_seg);
}

void cu_moe_routing_stats(float *ent_sum, float *top1_sum, float *scratch, const float *scores, const float *wts,
                          int N, int E, int K) {
    LAUNCH(moe_token_stats_kernel, ceil_div(N, 64), 64, 0, 0, scratch, scratch + N, scores, wts, N, E, K);
    LAUNCH(sum_into_kernel, 1, 256, 0, 0, ent_sum, scratch, N, 1.0f);
    LAUNCH(sum_into_kernel, 1, 256, 0, 0, top1_sum, scratch + N, N, 1.0f);
}

void cu_sum_into(float *acc, const float *x, int n, float scale) {
    LAUNCH(sum_into_kernel, 1, 256, 0, 0, acc, x, n, scale);
}

}  // extern "C"
