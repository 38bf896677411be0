// MoE on the GPU: gate scores, routing (lm_route_token of model/layer_math.h, as the CPU: same
// selection order and tie-breaking), dispatch into contiguous per-expert row blocks with the
// capacity rule in token order (parallel over chunks of assignments, deterministic), grouped
// GEMMs whose per-expert row counts stay on the device (no host synchronisation per expert),
// combine, and the backward pieces. Router logits, scores, weights, statistics: fp32. The
// expert activations (xe, expert GEMM outputs, ey, dey) are of the run's element type dt
// (fp32, bf16, fp16: kernels templated on T, fp32 arithmetic through ldf / stf<T>); gradients
// accumulated into (dinp, dw, dy, dwts) are fp32.
#include "cuda_common.cuh"
#include "cuda_ops.h"
#include "grouped_tc.h"

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

// Per-thread scratch arrays live in local memory, and a GPU reserves a kernel's local memory
// for every thread it can hold at once (H100: 132 SMs x 2048 threads) on its first launch and
// keeps it: 1.8 KB per thread at E = 256 is ~480 MB of device memory that no plan counts. The
// kernels that need such arrays are instantiated for ME = MOE_SMALL_E (E <= 32, the usual
// sizes: ~0.4 KB) and ME = MOE_MAX_E.
#define MOE_SMALL_E 32
#define MOE_ME_G(ME) ((ME) < MOE_MAX_G ? (ME) : MOE_MAX_G)  // groups <= experts

// one thread per token; E <= ME
template <int ME>
__global__ void moe_route_kernel(int *sel_out, float *wts_out, const float *scores_all, const float *bias, int N, int E,
                                 int K, int G, int topG, int score_func, float route_scale) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    float biased[ME], group_scores[MOE_ME_G(ME)];
    unsigned char allowed[ME];
    int keep[MOE_ME_G(ME)];
    lm_route_token(scores_all + (long)n * E, bias, E, K, G, topG, score_func == 1, route_scale, sel_out + (long)n * K,
                   wts_out + (long)n * K, biased, allowed, group_scores, keep);
}

// ---- dispatch ---------------------------------------------------------------------------------
// The rule (model/cpu/moe.c, moe_forward): the assignments a = n*K + k are taken in token order;
// the j-th assignment (0-based) to expert e gets row off[e] + j when j < cap and is dropped
// (row_of[a] = -1) otherwise; off is the exclusive prefix sum over experts of min(count_e, cap).
// In parallel, with the same result bit for bit and no host synchronisation:
//   chunks   the NK assignments are cut into nc = ceil(NK / DCH) chunks of DCH in order; chunk 0
//            takes the remainder (1..DCH assignments: [0, L0)), chunks c >= 1 are full
//            ([L0 + (c-1) DCH, L0 + c DCH)). One warp handles one chunk.
//   (1) count  each warp counts its chunk's assignments per expert (warp ballots find the lanes
//            with the same expert; the lowest of them adds the group's size to a per-warp shared
//            counter, so nothing is atomic and nothing depends on timing). The E counts of chunk
//            c >= 1 are stored in row_of[start_c .. start_c + E) (a full chunk owns DCH >= E
//            slots of row_of, which it overwrites only in step (4)); those of chunk 0 in
//            expert_off[1 .. E].
//   (2) scan   one block per expert: exclusive scan over the chunks of that expert's counts,
//            in place (chunk c's base = assignments to e before chunk c; chunk 0's is 0 and is
//            not stored), and the expert's total into expert_off[e + 1].
//   (3) offsets one block: load[e] += total_e, kept_e = min(total_e, cap), expert_off = exclusive
//            scan of kept, dropped += sum(total_e - kept_e) (integers: exact).
//   (4) rank   each warp reloads its chunk's E bases into shared memory, then walks its chunk 32
//            assignments at a time in order: rank j = base[e] + (lanes below with the same e);
//            j < cap gives row r = off[e] + j (row_of[a] = r, perm[r] = a), else -1; then the
//            group's lowest lane advances base[e] by the group's size.
// Work: O(NK * log2 E / 32) warp steps for (1) and (4), O(E * nc) for (2); four launches.
#define DCH 256    // assignments per chunk (one warp); >= MOE_MAX_E: see (1)
#define DWARPS 8   // chunks (warps) per block of the count and rank kernels
static_assert(DCH >= MOE_MAX_E, "a full dispatch chunk must hold the counts of every expert");

static __device__ inline void dispatch_chunk(int c, int NK, int nc, int *start, int *end) {
    int l0 = NK - (nc - 1) * DCH;  // length of chunk 0, 1..DCH
    *start = c == 0 ? 0 : l0 + (c - 1) * DCH;
    *end = c == 0 ? l0 : *start + DCH;
}

// the lanes of the warp whose (valid) assignment goes to the same expert e as this lane's
// (e < 2^nbits); every lane of the warp calls it
static __device__ inline unsigned match_expert(int e, int valid, int nbits) {
    unsigned m = __ballot_sync(0xffffffffu, valid);
    for (int b = 0; b < nbits; b++) {
        unsigned ones = __ballot_sync(0xffffffffu, (e >> b) & 1);
        m &= ((e >> b) & 1) ? ones : ~ones;
    }
    return m;
}

// exclusive prefix sum over the block (blockDim.x a multiple of 32, <= 1024); *total: the sum of
// all; scratch: 32 ints of shared memory; every thread must call it
static __device__ inline int block_exclusive_scan(int v, int *scratch, int *total) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    int x = v;
    for (int o = 1; o < 32; o <<= 1) {
        int y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) scratch[warp] = x;
    __syncthreads();
    int t = lane < nw ? scratch[lane] : 0;
    for (int o = 1; o < 32; o <<= 1) {
        int y = __shfl_up_sync(0xffffffffu, t, o);
        if (lane >= o) t += y;
    }
    int before = __shfl_sync(0xffffffffu, t, warp > 0 ? warp - 1 : 0);
    *total = __shfl_sync(0xffffffffu, t, nw - 1);
    __syncthreads();  // scratch may be reused
    return (warp > 0 ? before : 0) + x - v;
}

// (1) per-chunk per-expert counts. A warp without a chunk leaves at once (no block barrier here).
__global__ void moe_dispatch_count_kernel(int *row_of, int *expert_off, const int *sel, int NK, int nc, int E,
                                          int nbits) {
    SHARED_ARRAY2(int, cnt, DWARPS, MOE_MAX_E);
    int lane = threadIdx.x % 32, w = threadIdx.x / 32, c = blockIdx.x * DWARPS + w;
    if (c >= nc) return;  // the whole warp
    int start, end;
    dispatch_chunk(c, NK, nc, &start, &end);
    int *ct = cnt[w];
    for (int e = lane; e < E; e += 32) ct[e] = 0;
    __syncwarp();
    for (int a0 = start; a0 < end; a0 += 32) {
        int a = a0 + lane, valid = a < end, e = valid ? sel[a] : 0;
        unsigned m = match_expert(e, valid, nbits);
        if (valid && lane == __ffs((int)m) - 1) ct[e] += __popc(m);
        __syncwarp();
    }
    int *dst = c == 0 ? expert_off + 1 : row_of + start;
    for (int e = lane; e < E; e += 32) dst[e] = ct[e];
}

// (2) block e: exclusive scan over the chunks of expert e's counts, in place; total -> expert_off[e+1]
__global__ void moe_dispatch_scan_kernel(int *row_of, int *expert_off, int NK, int nc) {
    SHARED_ARRAY(int, scratch, 32);
    int e = blockIdx.x;
    int per = (nc + (int)blockDim.x - 1) / (int)blockDim.x;
    int c0 = threadIdx.x * per, c1 = c0 + per < nc ? c0 + per : nc;
    int sum = 0;
    for (int c = c0; c < c1; c++) {
        int start, end;
        dispatch_chunk(c, NK, nc, &start, &end);
        sum += c == 0 ? expert_off[e + 1] : row_of[start + e];
    }
    int total;
    int before = block_exclusive_scan(sum, scratch, &total);
    for (int c = c0; c < c1; c++) {
        int start, end;
        dispatch_chunk(c, NK, nc, &start, &end);
        if (c == 0) {
            before += expert_off[e + 1];
        } else {
            int v = row_of[start + e];
            row_of[start + e] = before;
            before += v;
        }
    }
    if (threadIdx.x == 0) expert_off[e + 1] = total;  // chunk 0 is thread 0's: it alone read this slot
}

// (3) one block, one thread per expert: loads, capacity, offsets, dropped
__global__ void moe_dispatch_offsets_kernel(int *expert_off, float *load, float *dropped, int E, long cap) {
    SHARED_ARRAY(int, scratch, 32);
    int e = threadIdx.x;
    int total = e < E ? expert_off[e + 1] : 0;
    int kept = (long)total > cap ? (int)cap : total;
    int all_kept, all_dropped;
    int before = block_exclusive_scan(kept, scratch, &all_kept);
    block_exclusive_scan(total - kept, scratch, &all_dropped);
    if (e < E) {
        expert_off[e + 1] = before + kept;
        load[e] += (float)total;
    }
    if (e == 0) {
        expert_off[0] = 0;
        dropped[0] += (float)all_dropped;
    }
}

// (4) ranks in order within each chunk, rows, perm
__global__ void moe_dispatch_rank_kernel(int *row_of, int *perm, const int *expert_off, const int *sel, int NK, int nc,
                                         int E, int nbits, long cap) {
    SHARED_ARRAY2(int, run, DWARPS, MOE_MAX_E);
    int lane = threadIdx.x % 32, w = threadIdx.x / 32, c = blockIdx.x * DWARPS + w;
    if (c >= nc) return;  // the whole warp
    int start, end;
    dispatch_chunk(c, NK, nc, &start, &end);
    int *rn = run[w];
    for (int e = lane; e < E; e += 32) rn[e] = c == 0 ? 0 : row_of[start + e];
    __syncwarp();  // every base is read before this chunk's row_of slots are overwritten
    for (int a0 = start; a0 < end; a0 += 32) {
        int a = a0 + lane, valid = a < end, e = valid ? sel[a] : 0;
        unsigned m = match_expert(e, valid, nbits);
        if (valid) {
            long j = (long)rn[e] + __popc(m & ((1u << lane) - 1u));
            if (j < cap) {
                int r = expert_off[e] + (int)j;
                row_of[a] = r;
                perm[r] = a;
            } else {
                row_of[a] = -1;
            }
        }
        __syncwarp();
        if (valid && lane == __ffs((int)m) - 1) rn[e] += __popc(m);
        __syncwarp();
    }
}

template <typename T>
__global__ void moe_gather_kernel(T *xe, const T *x, const int *perm, const int *expert_off, int NK, int K, int C,
                                  int E) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)NK * C) return;
    int r = (int)(i / C), c = (int)(i % C);
    if (r >= expert_off[E]) return;
    xe[i] = x[(long)(perm[r] / K) * C + c];
}

// ---- grouped GEMM (SIMT; fp32 arithmetic on operands of type T) ------------------------------------
// For expert e = blockIdx.z and its rows [off[e], off[e+1]):
//   Cm[r, col] (+)= sum_kk A[r, kk] * Bm(kk, col),  Bm(kk, col) = transB ? B_e[col, kk] : B_e[kk, col]
// A (rows, Kd) ld Kd, B of type T; Cm (rows, Nc) ld Nc of type TC (accumulate: read and written
// back, TC = float); B_e = B + e * Kd * Nc.
// 64 x 64 output tiles, 256 threads with 4 x 4 outputs each, k in steps of 16 through shared
// memory (fp32). Blocks past the expert's last row leave at once (uniformly, before any barrier).
#define GM 64
#define GK 16
#define GPAD 4
template <typename T, typename TC>
__global__ void grouped_rows_kernel(TC *Cm, const T *A, const T *B, const int *off, int Kd, int Nc, int transB,
                                    int accumulate) {
    SHARED_ARRAY2(float, As, GK, GM + GPAD);  // As[k][row]
    SHARED_ARRAY2(float, Bs, GK, GM + GPAD);  // Bs[k][col]
    int e = blockIdx.z;
    int rend = off[e + 1], r0 = off[e] + blockIdx.y * GM, c0 = blockIdx.x * GM;
    if (r0 >= rend) return;
    int tid = threadIdx.x, tr = tid / 16, tc = tid % 16;
    const T *Be = B + (long)e * Kd * Nc;
    float acc[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < Kd; k0 += GK) {
        for (int q = 0; q < 4; q++) {
            int idx = tid + 256 * q;
            int rr = idx / GK, kk = idx % GK, r = r0 + rr, k = k0 + kk;
            As[kk][rr] = (r < rend && k < Kd) ? ldf(A[(long)r * Kd + k]) : 0.0f;
            int col, bk;
            if (transB) col = idx / GK, bk = idx % GK;  // consecutive threads walk k: coalesced
            else bk = idx / GM, col = idx % GM;          // consecutive threads walk columns
            int cc = c0 + col, kb = k0 + bk;
            float bv = 0.0f;
            if (cc < Nc && kb < Kd) bv = ldf(transB ? Be[(long)cc * Kd + kb] : Be[(long)kb * Nc + cc]);
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
            TC *c = Cm + (long)r * Nc + col;
            *c = stf<TC>(accumulate ? ldf(*c) + acc[i][j] : acc[i][j]);
        }
    }
}

// dW_e (OC, IC, fp32) += dout_e^T (OC, rows) @ inp_e (rows, IC), dout and inp of type T: 64 x 64
// tiles of dW, the expert's rows in steps of 16
template <typename T>
__global__ void grouped_wgrad_kernel(float *dW, const T *dout, const T *inp, const int *off, int IC, int OC) {
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
            Ds[kk][col] = (r < rend && o0 + col < OC) ? ldf(dout[(long)r * OC + o0 + col]) : 0.0f;
            Is[kk][col] = (r < rend && i0 + col < IC) ? ldf(inp[(long)r * IC + i0 + col]) : 0.0f;
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

template <typename T>
__global__ void moe_combine_kernel(float *y, const T *ey, const float *wts, const int *row_of, int N, int K, int C) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * C) return;
    int n = (int)(i / C), c = (int)(i % C);
    float acc = y[i];
    for (int k = 0; k < K; k++) {
        int r = row_of[n * K + k];
        if (r >= 0) acc += wts[n * K + k] * ldf(ey[(long)r * C + c]);
    }
    y[i] = acc;
}

// one warp per sorted row: dey (type T) written, dwts[a] = dy[token] . ey[row]
template <typename T>
__global__ void moe_combine_backward_kernel(T *dey, float *dwts, const float *dy, const T *ey, const float *wts,
                                            const int *perm, const int *expert_off, int NK, int K, int C, int E) {
    int lane = threadIdx.x % 32;
    int r = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (r >= NK || r >= expert_off[E]) return;  // whole warp
    int a = perm[r], n = a / K;
    const float *g = dy + (long)n * C;
    const T *eyr = ey + (long)r * C;
    float w = wts[a], dot = 0.0f;
    T *d = dey + (long)r * C;
    for (int i = lane; i < C; i += 32) {
        d[i] = stf<T>(w * g[i]);
        dot += g[i] * ldf(eyr[i]);
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
// when aux_f != NULL (f of the token's segment: seg_len tokens per segment) -> logits; E <= ME
template <int ME>
__global__ void moe_gate_backward_kernel(float *dlogits, const float *dwts, const float *scores, const int *sel_all,
                                         int N, int E, int K, int score_func, float route_scale, const float *aux_f,
                                         int seg_len, float coef, float aux_scale) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    const float *s = scores + (long)n * E;
    const int *sel = sel_all + (long)n * K;
    const float *dw = dwts + (long)n * K;
    float ds[ME];
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
    if (E <= MOE_SMALL_E)
        LAUNCH(moe_route_kernel<MOE_SMALL_E>, ceil_div(N, 64), 64, 0, 0, sel, wts, scores, bias, N, E, K, n_groups,
               n_limited_groups, score_func, route_scale);
    else
        LAUNCH(moe_route_kernel<MOE_MAX_E>, ceil_div(N, 64), 64, 0, 0, sel, wts, scores, bias, N, E, K, n_groups,
               n_limited_groups, score_func, route_scale);
    return 0;
}

void cu_moe_dispatch(int *row_of, int *perm, int *expert_off, float *load, float *dropped, const int *sel, int N,
                     int K, int E, long cap) {
    if (E < 1 || E > MOE_MAX_E) {
        fprintf(stderr, "error: internal: cu_moe_dispatch: %d experts (1..%d supported)\n", E, MOE_MAX_E);
        exit(EXIT_FAILURE);
    }
    int NK = N * K;
    if (NK <= 0) {
        cu_zero(expert_off, sizeof(int) * (size_t)(E + 1));
        return;
    }
    int nc = ceil_div(NK, DCH), nbits = 0;
    while ((1 << nbits) < E) nbits++;
    int scan_threads = nc < 256 ? ((nc + 31) / 32) * 32 : 256;
    LAUNCH(moe_dispatch_count_kernel, ceil_div(nc, DWARPS), 32 * DWARPS, 0, 0, row_of, expert_off, sel, NK, nc, E,
           nbits);
    LAUNCH(moe_dispatch_scan_kernel, E, scan_threads, 0, 0, row_of, expert_off, NK, nc);
    LAUNCH(moe_dispatch_offsets_kernel, 1, ((E + 31) / 32) * 32, 0, 0, expert_off, load, dropped, E, cap);
    LAUNCH(moe_dispatch_rank_kernel, ceil_div(nc, DWARPS), 32 * DWARPS, 0, 0, row_of, perm, expert_off, sel, NK, nc, E,
           nbits, cap);
}

void cu_moe_gather(void *xe, const void *x, const int *perm, const int *expert_off, int N, int K, int C, int E,
                   int dt) {
    DISPATCH_DT(dt, T,
                LAUNCH(moe_gather_kernel<T>, ceil_div((long)N * K * C, 256), 256, 0, 0, (T *)xe, (const T *)x, perm,
                       expert_off, N * K, K, C, E));
}

// 16-bit operands go to the tensor-core kernels (grouped_tc.cu) where the device runs them,
// unless a test asked for the SIMT kernels
static int use_tensor_cores = 1;
void cu_grouped_set_tensor_cores(int on) { use_tensor_cores = on; }
static int tc_path(int dt) { return dt != CU_F32 && use_tensor_cores && cu_grouped_tc_available(dt); }

void cu_grouped_matmul_forward(void *out, int out_dt, const void *inp, const void *w, const int *expert_off, int E,
                               int max_rows, int IC, int OC, int dt) {
    if (out_dt != CU_F32 && out_dt != dt) {
        fprintf(stderr, "error: internal: cu_grouped_matmul_forward: output type %d for inputs of type %d\n", out_dt,
                dt);
        exit(EXIT_FAILURE);
    }
    if (tc_path(dt)) {
        cu_grouped_tc_forward(out, out_dt, inp, w, expert_off, E, max_rows, IC, OC, dt);
        return;
    }
    dim3 grid(ceil_div(OC, GM), ceil_div(max_rows, GM), E);
    DISPATCH_DT(dt, T, {
        if (out_dt == CU_F32) {
            auto *kfn = grouped_rows_kernel<T, float>;
            LAUNCH(kfn, grid, 256, 0, 0, (float *)out, (const T *)inp, (const T *)w, expert_off, IC, OC, 1, 0);
        } else {
            auto *kfn = grouped_rows_kernel<T, T>;
            LAUNCH(kfn, grid, 256, 0, 0, (T *)out, (const T *)inp, (const T *)w, expert_off, IC, OC, 1, 0);
        }
    });
}

void cu_grouped_matmul_backward(float *dinp, float *dw, const void *dout, const void *inp, const void *w,
                                const int *expert_off, int E, int max_rows, int IC, int OC, int dt) {
    if (tc_path(dt)) {
        cu_grouped_tc_backward(dinp, dw, dout, inp, w, expert_off, E, max_rows, IC, OC, dt);
        return;
    }
    DISPATCH_DT(dt, T, {
        if (dinp) {
            dim3 grid(ceil_div(IC, GM), ceil_div(max_rows, GM), E);
            auto *kfn = grouped_rows_kernel<T, float>;
            LAUNCH(kfn, grid, 256, 0, 0, dinp, (const T *)dout, (const T *)w, expert_off, OC, IC, 0, 1);
        }
        if (dw) {
            dim3 grid(ceil_div(IC, GM), ceil_div(OC, GM), E);
            LAUNCH(grouped_wgrad_kernel<T>, grid, 256, 0, 0, dw, (const T *)dout, (const T *)inp, expert_off, IC, OC);
        }
    });
}

void cu_moe_combine(float *y, const void *ey, const float *wts, const int *row_of, int N, int K, int C, int dt) {
    DISPATCH_DT(dt, T,
                LAUNCH(moe_combine_kernel<T>, ceil_div((long)N * C, 256), 256, 0, 0, y, (const T *)ey, wts, row_of, N,
                       K, C));
}

void cu_moe_combine_backward(void *dey, float *dwts, const float *dy, const void *ey, const float *wts,
                             const int *perm, const int *row_of, const int *expert_off, int N, int K, int C, int E,
                             int dt) {
    (void)row_of;
    cu_zero(dwts, sizeof(float) * (size_t)N * K);  // dropped assignments keep 0
    DISPATCH_DT(dt, T,
                LAUNCH(moe_combine_backward_kernel<T>, ceil_div((long)N * K, 4), 128, 0, 0, (T *)dey, dwts, dy,
                       (const T *)ey, wts, perm, expert_off, N * K, K, C, E));
}

void cu_moe_scatter_add(float *dx, const float *dxe, const int *row_of, int N, int K, int C) {
    LAUNCH(moe_scatter_add_kernel, ceil_div((long)N * C, 256), 256, 0, 0, dx, dxe, row_of, N, K, C);
}

static void gate_backward(float *dlogits, const float *dwts, const float *scores, const int *sel, int N, int E, int K,
                          int score_func, float route_scale, const float *aux_f, int seg_len, float coef,
                          float aux_scale) {
    if (E <= MOE_SMALL_E)
        LAUNCH(moe_gate_backward_kernel<MOE_SMALL_E>, ceil_div(N, 64), 64, 0, 0, dlogits, dwts, scores, sel, N, E, K,
               score_func, route_scale, aux_f, seg_len, coef, aux_scale);
    else
        LAUNCH(moe_gate_backward_kernel<MOE_MAX_E>, ceil_div(N, 64), 64, 0, 0, dlogits, dwts, scores, sel, N, E, K,
               score_func, route_scale, aux_f, seg_len, coef, aux_scale);
}

void cu_moe_gate_backward(float *dlogits, const float *dwts, const float *scores, const int *sel, int N, int E,
                          int K, int score_func, float route_scale) {
    gate_backward(dlogits, dwts, scores, sel, N, E, K, score_func, route_scale, NULL, 1, 0.0f, 0.0f);
}

void cu_moe_gate_backward_aux(float *dlogits, const float *dwts, const float *scores, const int *sel, int N, int E,
                              int K, int score_func, float route_scale, const float *aux_f, int seg_len, int n_seg,
                              float alpha, float aux_scale) {
    float coef = alpha / ((float)seg_len * (float)n_seg);
    gate_backward(dlogits, dwts, scores, sel, N, E, K, score_func, route_scale, aux_f, seg_len, coef, aux_scale);
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
