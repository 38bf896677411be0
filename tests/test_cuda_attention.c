// The CUDA flash-style causal attention (model/cuda/attention.cu, attention_tc.cu) against the
// CPU reference (model/layers.h attention_forward / attention_backward) on awkward sizes: tiled
// and untiled SIMT kernels, T shorter than a tile, row widths H*dqk not a multiple of 8; every
// case in fp32, bf16 and fp16 (q, k, v, out of that type; lse, dout and the gradients fp32).
// Half-precision cases run through both paths, named apart: `_simt` (cu_attention_set_tensor_cores(0))
// and `_tc` (the tensor-core kernels, for head sizes that are multiples of 16 up to 128: 96 / 64
// at T 37, 70 and 129, 16 / 16, 64 / 64, 128 / 128, 32 / 96, B > 1, H > 1), plus a forward of one
// path with the backward of the other. Built through the harness (make test) and with nvcc
// (make test-gpu).
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "../model/cpu/moe.h"
#include "../model/cuda/attention_tc.h"
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

#define U32 (1.0 / 16777216.0)  // unit roundoff of fp32 (2^-24)

// Elementwise error bounds of the tensor-core path (attention_tc.cu) against the fp32 CPU
// reference computed from the same rounded q, k, v (and, for the gradients, corrected for the
// rounded out by apply_rounded_out). With u = eps_dt(dt) (one rounding to dt, relative) and
// sub = 2^-25 for fp16 (half its smallest subnormal: the absolute error of rounding a tiny
// value; 0 for bf16, whose range is fp32's), the TC path differs from the SIMT path in:
//   forward: the probabilities p = exp(x - m) (m the running maximum, so p <= e^8) are rounded
//     to dt for P V: each term P_ts v_s moves by u P_ts |v_s| (+ sub |v_s| / l, l >= 1);
//   backward: dout is rounded to dt as the operand of dP = dout V^T and dV = P^T dout, P is
//     rounded for dV, dS = P (dP - D) scale is rounded for dQ = dS K and dK = dS^T Q:
//       dV_s:  sum_t ((2u + u^2) P_ts |dout_t| + sub (|dout_t| + P_ts))
//       dS_ts: e1 = P_ts scale (u A_ts + sub |v_s|_1), A_ts = sum_d |dout_td| |v_sd|, then
//              E_ts = e1 + u (|dS_ts| + e1) + sub;  dQ_t: sum_s E_ts |k_s|,  dK_s: sum_t E_ts |q_t|
// fp32 terms, as in tests/test_cuda_grouped_tc.c (2 n u32 per sum of n terms, for any order
// and truncating adders): the score x = scale q.k is off by 2 dqk u32 scale Q_ts (Q_ts =
// sum_i |q_ti| |k_si|), which moves P by that relative amount (in out, dV, dS); dP by
// 2 dv u32 A_ts; the sums over keys / queries by 2 (T + 1) u32 times their absolute sums. On
// top, ATOL + RTOL |ref| (the fp32 tolerance of the SIMT path) and, for out, its final
// rounding to dt (u |ref|). Every term is a worst case; the errors seen are far below (the
// report line "# ... err/bound" shows the largest ratio), and they are far above the SIMT path's
// (which is checked with the fp32 tolerances), so the two paths are told apart.
typedef struct {
    double *out, *dq, *dk, *dv;
} TcBounds;

static TcBounds tc_bounds(const float *att, const float *q, const float *k, const float *v, const float *dout,
                          const float *out_ref, const float *dq_ref, const float *dk_ref, const float *dv_ref, int B,
                          int T, int H, int dqk, int dv, float scale, int dt) {
    size_t nq = (size_t)B * T * H * dqk, nv = (size_t)B * T * H * dv;
    TcBounds bd;
    bd.out = (double *)mallocCheck(sizeof(double) * nv), bd.dv = (double *)mallocCheck(sizeof(double) * nv);
    bd.dq = (double *)mallocCheck(sizeof(double) * nq), bd.dk = (double *)mallocCheck(sizeof(double) * nq);
    for (size_t i = 0; i < nv; i++) bd.out[i] = bd.dv[i] = 0.0;
    for (size_t i = 0; i < nq; i++) bd.dq[i] = bd.dk[i] = 0.0;
    double u = eps_dt(dt), sub = dt == CU_F16 ? 1.0 / 33554432.0 : 0.0, nsum = 2.0 * (T + 1) * U32;
    double *E = (double *)mallocCheck(sizeof(double) * T * T), *dS = (double *)mallocCheck(sizeof(double) * T * T);
    double *Pe = (double *)mallocCheck(sizeof(double) * T * T);  // fp32 relative error of P
    double *D = (double *)mallocCheck(sizeof(double) * T);
#define QROW(x, t) ((x) + (((size_t)b * T + (t)) * H + h) * dqk)
#define VROW(x, t) ((x) + (((size_t)b * T + (t)) * H + h) * dv)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const float *P = att + ((size_t)b * H + h) * T * T;
            for (int t = 0; t < T; t++) {
                double s = 0.0;
                for (int d = 0; d < dv; d++) s += (double)VROW(dout, t)[d] * VROW(out_ref, t)[d];
                D[t] = s;
            }
            for (int t = 0; t < T; t++)
                for (int s = 0; s <= t; s++) {
                    double p = P[(size_t)t * T + s], dp = 0.0, A = 0.0, Q = 0.0, v1 = 0.0;
                    for (int d = 0; d < dv; d++) {
                        dp += (double)VROW(dout, t)[d] * VROW(v, s)[d];
                        A += fabs((double)VROW(dout, t)[d] * VROW(v, s)[d]);
                        v1 += fabs((double)VROW(v, s)[d]);
                    }
                    for (int i = 0; i < dqk; i++) Q += fabs((double)QROW(q, t)[i] * QROW(k, s)[i]);
                    double pe = 2.0 * dqk * U32 * scale * Q, ds = p * (dp - D[t]) * scale;
                    double e1 = p * scale * (u * A + sub * v1 + 2.0 * dv * U32 * A) + pe * fabs(ds);
                    size_t o = (size_t)t * T + s;
                    Pe[o] = pe, dS[o] = ds, E[o] = e1 + u * (fabs(ds) + e1) + sub;
                }
            for (int t = 0; t < T; t++)  // out_t and dq_t: sums over keys s <= t
                for (int s = 0; s <= t; s++) {
                    size_t o = (size_t)t * T + s;
                    double p = P[o];
                    for (int d = 0; d < dv; d++) {
                        double av = fabs((double)VROW(v, s)[d]);
                        VROW(bd.out, t)[d] += (1.0 + u) * (u * p * av + sub * av + Pe[o] * p * av + nsum * p * av);
                    }
                    for (int i = 0; i < dqk; i++) {
                        double ak = fabs((double)QROW(k, s)[i]);
                        QROW(bd.dq, t)[i] += E[o] * ak + nsum * fabs(dS[o]) * ak;
                        double aq = fabs((double)QROW(q, t)[i]);
                        QROW(bd.dk, s)[i] += E[o] * aq + nsum * fabs(dS[o]) * aq;
                    }
                    for (int d = 0; d < dv; d++) {
                        double ad = fabs((double)VROW(dout, t)[d]);
                        VROW(bd.dv, s)[d] += (2.0 * u + u * u) * p * ad + sub * (ad + p) + (Pe[o] + nsum) * p * ad;
                    }
                }
        }
#undef QROW
#undef VROW
    for (size_t i = 0; i < nv; i++) {
        bd.out[i] += ATOL + (RTOL + u) * fabs((double)out_ref[i]);
        bd.dv[i] += ATOL + RTOL * fabs((double)dv_ref[i]);
    }
    for (size_t i = 0; i < nq; i++) {
        bd.dq[i] += ATOL + RTOL * fabs((double)dq_ref[i]);
        bd.dk[i] += ATOL + RTOL * fabs((double)dk_ref[i]);
    }
    free(E), free(dS), free(Pe), free(D);
    return bd;
}
static void tc_bounds_free(TcBounds *bd) { free(bd->out), free(bd->dq), free(bd->dk), free(bd->dv); }

// |got - ref| <= bound elementwise (NaN fails): one failure line with the worst element; prints
// the largest |got - ref| / bound and the relative L2 error
static void check_bound(const char *what, const float *got, const float *ref, const double *bound, size_t n) {
    size_t worst = 0;
    double worst_ratio = 0.0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]), ratio = isnan(d) ? INFINITY : d / bound[i];
        if (!(d <= bound[i])) bad++;
        if (ratio > worst_ratio) worst_ratio = ratio, worst = i;
    }
    CHECK(!bad, "%s: %d of %zu outside the bound; worst [%zu] got %.9g expected %.9g (bound %.3g)", what, bad, n,
          worst, got[worst], ref[worst], bound[worst]);
    printf("#   %-4s max err/bound %.3f, rel L2 %.3g\n", what, worst_ratio, rel_l2(got, ref, n));
}

// some element differs (the tensor-core path ran, not the SIMT one)
static void check_differs(const char *what, const void *a, const void *b, size_t bytes) {
    CHECK(memcmp(a, b, bytes) != 0, "%s of the tensor-core path equals the SIMT path's bit for bit: the TC path "
          "did not run", what);
}

// determinism: run forward and backward a second time (the harness reverses the thread order
// from one launch to the next) and require identical bits
// the paths of one case: PATH_SIMT, PATH_TC, or a forward of one with the backward of the other
enum { PATH_SIMT = 0, PATH_TC = 1, PATH_TC_FWD = 2, PATH_TC_BWD = 3 };
static const char *path_names[4] = {"_simt", "_tc", "_tcfwd_simtbwd", "_simtfwd_tcbwd"};

// variants of the inputs (bits):
//   VAR_SPREAD: q scaled by 4 and key row s by 1 + 3 s / 16, so that the scaled scores grow along
//     the keys (standard deviation ~3 (1 + 3 s / 16)): each row's running maximum then moves by
//     more than the forward's lazy-rescale threshold (8) again and again, which the random scores
//     of the plain cases (standard deviation ~0.6) never do (a forward without the rescale fails
//     only these cases);
//   VAR_MISALIGN: q, k, v, out start 2 bytes after a 16-byte boundary (the tensor-core kernels
//     then load their tiles element by element instead of by 16-byte copies)
enum { VAR_SPREAD = 1, VAR_MISALIGN = 2 };

// a copy of the device buffer (n elements of es bytes) that starts one element later in a new
// allocation (freed through *base)
static void *misaligned_copy(const void *d, size_t n, size_t es, void **base) {
    unsigned char *h = (unsigned char *)mallocCheck(es * n);
    cu_download(h, d, es * n);
    *base = cu_malloc(es * (n + 1));
    void *p = (unsigned char *)*base + es;
    cu_upload(p, h, es * n);
    free(h);
    return p;
}

static void test_attention_case(const char *label, int B, int T, int H, int dqk, int dv, int dt, int repeat,
                                int path, int variant) {
    char name[160];
    snprintf(name, sizeof name, "%s_%s%s", label, cu_dtype_name(dt), dt == CU_F32 ? "" : path_names[path]);
    int tc_fwd = path == PATH_TC || path == PATH_TC_FWD, tc_bwd = path == PATH_TC || path == PATH_TC_BWD;
    if ((tc_fwd || tc_bwd) && !cu_attention_tc_available(dqk, dv, dt)) {
        test_skip(name, "no tensor-core attention for %s, head sizes %d / %d on this device", cu_dtype_name(dt), dqk,
                  dv);
        return;
    }
    test_begin(name);
    printf("# %s\n", name);
    // the setting for each stage: the tensor cores on for a TC stage, off for a SIMT stage of head
    // sizes the TC kernels take; left on (the default) where they do not take them, so that the
    // SIMT cases of those head sizes also go through the fallback of the dispatch
    int avail = cu_attention_tc_available(dqk, dv, dt);
    int on_fwd = avail ? tc_fwd : 1, on_bwd = avail ? tc_bwd : 1;
    float scale = 1.0f / sqrtf((float)dqk);
    size_t nq = (size_t)B * T * H * dqk, nv = (size_t)B * T * H * dv, na = (size_t)B * H * T * T;
    size_t nl = (size_t)B * H * T, es = cu_dtype_size(dt);
    float *q = rand_buf(nq, 1.5f), *k = rand_buf(nq, 1.5f), *v = rand_buf(nv, 1.0f), *dout = rand_buf(nv, 1.0f);
    float *dq = rand_buf(nq, 0.1f), *dk = rand_buf(nq, 0.1f), *dvv = rand_buf(nv, 0.1f);
    float *dq_init = dup_buf(dq, nq), *dk_init = dup_buf(dk, nq), *dv_init = dup_buf(dvv, nv);
    if (variant & VAR_SPREAD)
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++)
                for (int i = 0; i < H * dqk; i++) {
                    q[((size_t)b * T + t) * H * dqk + i] *= 4.0f;
                    k[((size_t)b * T + t) * H * dqk + i] *= 1.0f + 3.0f * t / 16.0f;
                }
    float *out = (float *)mallocCheck(sizeof(float) * nv), *att = (float *)mallocCheck(sizeof(float) * na);
    float *scr = (float *)mallocCheck(sizeof(float) * na);
    // q, k, v of type dt; the host copies become the rounded values, so the reference sees them
    void *d_q = to_dev_dt(q, nq, dt, 1), *d_k = to_dev_dt(k, nq, dt, 1), *d_v = to_dev_dt(v, nv, dt, 1);
    float *d_dout = (float *)to_dev(dout, sizeof(float) * nv);
    float *d_dq = (float *)to_dev(dq, sizeof(float) * nq), *d_dk = (float *)to_dev(dk, sizeof(float) * nq);
    float *d_dv = (float *)to_dev(dvv, sizeof(float) * nv);
    void *d_out = cu_malloc(es * nv), *base[4] = {NULL, NULL, NULL, NULL};
    if (variant & VAR_MISALIGN) {
        void *mq = misaligned_copy(d_q, nq, es, &base[0]), *mk = misaligned_copy(d_k, nq, es, &base[1]);
        void *mv = misaligned_copy(d_v, nv, es, &base[2]);
        cu_free(d_q), cu_free(d_k), cu_free(d_v), cu_free(d_out);
        d_q = mq, d_k = mk, d_v = mv;
        base[3] = cu_malloc(es * (nv + 1));
        d_out = (unsigned char *)base[3] + es;
    }
    float *d_lse = (float *)cu_malloc(sizeof(float) * nl), *d_scr = (float *)cu_malloc(sizeof(float) * nl);
    attention_forward(out, att, q, k, v, B, T, H, dqk, dv, scale);
    cu_attention_set_tensor_cores(on_fwd);
    cu_attention_forward(d_out, d_lse, d_q, d_k, d_v, B, T, H, dqk, dv, scale, dt);
    float *out_dev = from_dev_dt(d_out, nv, dt);
    // the reference gradients (before the correction for the rounded out) and, for a TC path,
    // its bounds
    attention_backward(dq, dk, dvv, scr, dout, att, q, k, v, B, T, H, dqk, dv, scale);
    TcBounds bd = {NULL, NULL, NULL, NULL};
    if (tc_fwd || tc_bwd) bd = tc_bounds(att, q, k, v, dout, out, dq, dk, dvv, B, T, H, dqk, dv, scale, dt);
    if (tc_fwd) {
        check_bound("out", out_dev, out, bd.out, nv);
        void *d_o2 = cu_malloc(es * nv);
        float *d_l2 = (float *)cu_malloc(sizeof(float) * nl);
        cu_attention_set_tensor_cores(0);
        cu_attention_forward(d_o2, d_l2, d_q, d_k, d_v, B, T, H, dqk, dv, scale, dt);
        float *o2 = from_dev_dt(d_o2, nv, dt);
        check_differs("out", out_dev, o2, sizeof(float) * nv);
        free(o2), cu_free(d_o2), cu_free(d_l2);
    } else {
        // out: fp32 arithmetic on the same inputs, then one rounding to dt (half an ulp, eps_dt
        // relative) on top of the fp32 accumulation noise
        check_dev_dt("out", d_out, dt, out, nv, ATOL, RTOL + (dt == CU_F32 ? 0.0 : eps_dt(dt)));
    }
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
    if (dt != CU_F32) {
        double dD = apply_rounded_out(dq, dk, att, dout, out_dev, out, q, k, B, T, H, dqk, dv, scale);
        CHECK(dD > 0.0, "the rounded out changes no softmax term D (max |dD| %.3g)", dD);
    }
    cu_attention_set_tensor_cores(on_bwd);
    cu_attention_backward(d_dq, d_dk, d_dv, d_scr, d_dout, d_out, d_lse, d_q, d_k, d_v, B, T, H, dqk, dv, scale, dt);
    if (tc_bwd) {
        float *g[3] = {from_dev(d_dq, nq), from_dev(d_dk, nq), from_dev(d_dv, nv)};
        check_bound("dq", g[0], dq, bd.dq, nq);
        check_bound("dk", g[1], dk, bd.dk, nq);
        check_bound("dv", g[2], dvv, bd.dv, nv);
        // the same backward through the SIMT kernels onto the same initial gradients: some
        // element of each differs
        cu_attention_set_tensor_cores(0);
        float *z[3] = {(float *)to_dev(dq_init, sizeof(float) * nq), (float *)to_dev(dk_init, sizeof(float) * nq),
                       (float *)to_dev(dv_init, sizeof(float) * nv)};
        cu_attention_backward(z[0], z[1], z[2], d_scr, d_dout, d_out, d_lse, d_q, d_k, d_v, B, T, H, dqk, dv, scale, dt);
        const char *nm[3] = {"dq", "dk", "dv"};
        for (int i = 0; i < 3; i++) {
            size_t n = i < 2 ? nq : nv;
            float *c = from_dev(z[i], n);
            check_differs(nm[i], g[i], c, sizeof(float) * n);
            free(c), cu_free(z[i]), free(g[i]);
        }
    } else {
        check_dev("dq", d_dq, dq, nq, ATOL, RTOL);
        check_dev("dk", d_dk, dk, nq, ATOL, RTOL);
        check_dev("dv", d_dv, dvv, nv, ATOL, RTOL);
    }
    if (tc_fwd || tc_bwd) tc_bounds_free(&bd);
    cu_attention_set_tensor_cores(on_fwd && on_bwd);  // the repeat: the case's path (PATH_SIMT or PATH_TC)
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
    if (variant & VAR_MISALIGN)
        for (int i = 0; i < 4; i++) cu_free(base[i]);
    else
        cu_free(d_q), cu_free(d_k), cu_free(d_v), cu_free(d_out);
    cu_free(d_dout), cu_free(d_dq), cu_free(d_dk), cu_free(d_dv), cu_free(d_lse), cu_free(d_scr);
    free(q), free(k), free(v), free(dout), free(dq), free(dk), free(dvv), free(out), free(att), free(scr);
    free(dq_init), free(dk_init), free(dv_init);
    cu_attention_set_tensor_cores(1);
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
        // head sizes the tensor-core kernels do not take: the SIMT kernels in every type
        test_attention_case("cuda_attention_T37_dqk10_dv7", 2, 37, 3, 10, 7, dt, 0, PATH_SIMT, 0);
        test_attention_case("cuda_attention_T70_dqk40_dv36", 1, 70, 2, 40, 36, dt, 0, PATH_SIMT, 0);
        test_attention_case("cuda_attention_T5_shorter_than_a_tile", 3, 5, 2, 12, 8, dt, 0, PATH_SIMT, 0);
        // head sizes whose K/V chunk does not fit 48 KiB: the untiled kernels
        test_attention_case("cuda_attention_untiled_dqk256_dv200", 1, 35, 1, 256, 200, dt, 0, PATH_SIMT, 0);
        // DeepSeek-V3 head sizes: tiled forward (46 KiB), untiled backward (50.5 KiB)
        test_attention_case("cuda_attention_fwd_tiled_bwd_untiled_dqk192_dv128", 1, 19, 1, 192, 128, dt, 0,
                            PATH_SIMT, 0);
        if (dt == CU_F32) continue;
        // head sizes of the tensor-core kernels (multiples of 16 up to 128) through both paths.
        // The model's 96 / 64 (bucket (6, 4)): T 37 (one query tile, partial), 70, 129 (not a
        // multiple of the 64-row or the 32-row tiles), B > 1, H > 1
        for (int p = PATH_SIMT; p <= PATH_TC; p++) {
            test_attention_case("cuda_attention_T37_B2_H3_dqk96_dv64", 2, 37, 3, 96, 64, dt, 0, p, 0);
            test_attention_case("cuda_attention_T70_H2_dqk96_dv64", 1, 70, 2, 96, 64, dt, 0, p, 0);
            test_attention_case("cuda_attention_T129_dqk96_dv64", 1, 129, 1, 96, 64, dt, 0, p, 0);
            // bucket (4, 4) with its smallest and largest heads, bucket (8, 8) (2-warp dk/dv
            // kernel) with 128 / 128 and with dv > dqk
            test_attention_case("cuda_attention_T50_B3_H2_dqk16_dv16", 3, 50, 2, 16, 16, dt, 0, p, 0);
            test_attention_case("cuda_attention_T33_B2_dqk64_dv64", 2, 33, 1, 64, 64, dt, 0, p, 0);
            test_attention_case("cuda_attention_T45_H2_dqk128_dv128", 1, 45, 2, 128, 128, dt, 0, p, 0);
            test_attention_case("cuda_attention_T40_dqk32_dv96", 1, 40, 1, 32, 96, dt, 0, p, 0);
        }
        // a forward of one path with the backward of the other (the same lse)
        test_attention_case("cuda_attention_T70_H2_dqk96_dv64", 1, 70, 2, 96, 64, dt, 0, PATH_TC_FWD, 0);
        test_attention_case("cuda_attention_T70_H2_dqk96_dv64", 1, 70, 2, 96, 64, dt, 0, PATH_TC_BWD, 0);
        // scores that grow along the keys: the forward's rescale of O (bucket (6, 4) and (8, 8))
        test_attention_case("cuda_attention_T129_spread_dqk96_dv64", 1, 129, 1, 96, 64, dt, 0, PATH_TC, VAR_SPREAD);
        test_attention_case("cuda_attention_T90_spread_dqk128_dv128", 1, 90, 1, 128, 128, dt, 0, PATH_TC, VAR_SPREAD);
        // q, k, v, out not 16-byte aligned: the element-wise tile loads
        test_attention_case("cuda_attention_T60_H2_misaligned_dqk96_dv64", 1, 60, 2, 96, 64, dt, 0, PATH_TC,
                            VAR_MISALIGN);
        // determinism of the tensor-core kernels (the harness reverses the thread order between
        // launches)
        test_attention_case("cuda_attention_T77_B2_dqk96_dv64", 2, 77, 1, 96, 64, dt, 1, PATH_TC, 0);
    }
    // odd row widths (H*dqk = 39, H*dv = 33: 2-byte rows start at odd element offsets), T not
    // a multiple of the tile (8) nor of the key chunk (32); run twice for determinism; the
    // default setting (tensor cores on) falls back to the SIMT kernels for these head sizes
    test_attention_case("cuda_attention_T45_H3_dqk13_dv11", 2, 45, 3, 13, 11, CU_BF16, 1, PATH_SIMT, 0);
    return test_summary();
}
