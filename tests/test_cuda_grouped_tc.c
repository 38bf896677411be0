// The tensor-core grouped GEMMs of the MoE experts (model/cuda/grouped_tc.cu: WMMA m16n16k16,
// fp32 accumulation) against a double-precision reference computed on the host from the same
// rounded inputs: forward with an fp32 and a half output, backward into non-zero dinp / dW (the
// += is checked), with dinp or dW NULL; bf16 and fp16; awkward sizes (IC, OC not multiples of
// 16, both below and above one 64 x 64 block tile), experts with 0, 1, 15, 17, 64, 65, 100
// rows, a first offset that is not 0 and rows before / after the experts' blocks (which must be
// untouched), max_rows above the largest block. Built through the harness (make test) and with
// nvcc (make test-gpu).
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "../model/cuda/cuda_ops.h"
#include "../model/cuda/grouped_tc.h"
#include "cuda_test_util.h"
#include "test.h"

#define U32 (1.0 / 16777216.0)  // unit roundoff of fp32 (2^-24)

// Tolerance of one output. The products of two 16-bit values are exact in fp32; the sum of K of
// them in fp32 (any order) is within K u S of the exact sum, S = sum |products|, u = 2^-24, for
// round-to-nearest additions; the factor 2 covers tensor cores whose internal additions
// truncate (error up to 2u each). A += into fp32 (dinp, dW) adds one rounding of the result
// (u |init + sum| <= u (|init| + S)); a half output adds one rounding to dt (eps_dt relative,
// plus half the smallest fp16 subnormal, 2^-25, near zero).
static double tol_sum(int K, double S) { return 2.0 * K * U32 * S + 1e-30; }

// |got - ref| <= bound elementwise (NaN fails); one line with the worst element; returns the
// largest |got - ref| / bound (for the report line)
static double check_bound(const char *what, const float *got, const double *ref, const double *bound, size_t n) {
    size_t worst = 0;
    double worst_ratio = 0.0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - ref[i]);
        double ratio = bound[i] > 0 ? d / bound[i] : (d == 0 ? 0.0 : INFINITY);
        if (isnan(d)) ratio = INFINITY;
        if (!(d <= bound[i])) bad++;
        if (ratio > worst_ratio) worst_ratio = ratio, worst = i;
    }
    CHECK(!bad, "%s: %d of %zu outside the bound; worst [%zu] got %.9g expected %.9g (bound %.3g)", what, bad, n,
          worst, got[worst], ref[worst], bound[worst]);
    return worst_ratio;
}

typedef struct {
    const char *name;
    int E;
    int rows[8];
    int lead, tail;  // rows before the first expert's block and after the last one
    int IC, OC;
    int max_rows;
} Case;

static void run_case(const Case *c, int dt) {
    char name[128];
    snprintf(name, sizeof name, "grouped_tc_%s_%s", cu_dtype_name(dt), c->name);
    if (!cu_grouped_tc_available(dt)) {
        test_skip(name, "no tensor-core kernel for %s on this device", cu_dtype_name(dt));
        return;
    }
    test_begin(name);
    int E = c->E, IC = c->IC, OC = c->OC;
    int off[9];
    off[0] = c->lead;
    for (int e = 0; e < E; e++) off[e + 1] = off[e] + c->rows[e];
    int R = off[E] + c->tail;
    size_t nx = (size_t)R * IC, ny = (size_t)R * OC, nw = (size_t)E * OC * IC;
    // inputs: fp32 originals, rounded to dt (the reference uses the rounded values)
    float *x0 = rand_buf(nx, 1.0f), *w0 = rand_buf(nw, 1.0f), *dy0 = rand_buf(ny, 1.0f);
    float *x = dup_buf(x0, nx), *w = dup_buf(w0, nw), *dy = dup_buf(dy0, ny);
    void *d_x = to_dev_dt(x, nx, dt, 1), *d_w = to_dev_dt(w, nw, dt, 1), *d_dy = to_dev_dt(dy, ny, dt, 1);
    int *d_off = (int *)to_dev(off, sizeof(int) * (E + 1));
    float *dinp0 = rand_buf(nx, 0.5f), *dw0 = rand_buf(nw, 0.5f);

    // ---- references (double) and bounds ----
    double *fy = (double *)mallocCheck(sizeof(double) * ny), *fyS = (double *)mallocCheck(sizeof(double) * ny);
    double *fyu = (double *)mallocCheck(sizeof(double) * ny);  // from the unrounded inputs
    double *gx = (double *)mallocCheck(sizeof(double) * nx), *gxS = (double *)mallocCheck(sizeof(double) * nx);
    double *gw = (double *)mallocCheck(sizeof(double) * nw), *gwS = (double *)mallocCheck(sizeof(double) * nw);
    for (size_t i = 0; i < ny; i++) fy[i] = 7.0, fyS[i] = -1.0, fyu[i] = 7.0;  // sentinel rows: untouched
    for (size_t i = 0; i < nx; i++) gx[i] = 0.0, gxS[i] = -1.0;
    for (size_t i = 0; i < nw; i++) gw[i] = 0.0, gwS[i] = 0.0;
    for (int e = 0; e < E; e++) {
        const float *We = w + (size_t)e * OC * IC, *We0 = w0 + (size_t)e * OC * IC;
        for (int r = off[e]; r < off[e + 1]; r++) {
            for (int o = 0; o < OC; o++) {
                double s = 0, sa = 0, su = 0;
                for (int i = 0; i < IC; i++) {
                    double p = (double)x[(size_t)r * IC + i] * We[(size_t)o * IC + i];
                    s += p, sa += fabs(p), su += (double)x0[(size_t)r * IC + i] * We0[(size_t)o * IC + i];
                }
                fy[(size_t)r * OC + o] = s, fyS[(size_t)r * OC + o] = sa, fyu[(size_t)r * OC + o] = su;
            }
            for (int i = 0; i < IC; i++) {
                double s = 0, sa = 0;
                for (int o = 0; o < OC; o++) {
                    double p = (double)dy[(size_t)r * OC + o] * We[(size_t)o * IC + i];
                    s += p, sa += fabs(p);
                }
                gx[(size_t)r * IC + i] = s, gxS[(size_t)r * IC + i] = sa;
            }
        }
        for (int o = 0; o < OC; o++)
            for (int i = 0; i < IC; i++) {
                double s = 0, sa = 0;
                for (int r = off[e]; r < off[e + 1]; r++) {
                    double p = (double)dy[(size_t)r * OC + o] * x[(size_t)r * IC + i];
                    s += p, sa += fabs(p);
                }
                gw[((size_t)e * OC + o) * IC + i] = s, gwS[((size_t)e * OC + o) * IC + i] = sa;
            }
    }
    double *ref = (double *)mallocCheck(sizeof(double) * (nw > nx ? (nw > ny ? nw : ny) : (nx > ny ? nx : ny)));
    double *bnd = (double *)mallocCheck(sizeof(double) * (nw > nx ? (nw > ny ? nw : ny) : (nx > ny ? nx : ny)));

    // ---- forward, fp32 out and half out (sentinel 7 outside the experts' rows) ----
    double ratio_f32 = 0, ratio_half = 0, e_rnd = 0, e_unr = 0;
    for (int half_out = 0; half_out < 2; half_out++) {
        int odt = half_out ? dt : CU_F32;
        float *init = (float *)mallocCheck(sizeof(float) * ny);
        for (size_t i = 0; i < ny; i++) init[i] = 7.0f;
        void *d_out = to_dev_dt(init, ny, odt, 0);
        cu_grouped_tc_forward(d_out, odt, d_x, d_w, d_off, E, c->max_rows, IC, OC, dt);
        float *got = from_dev_dt(d_out, ny, odt);
        for (size_t i = 0; i < ny; i++) {
            ref[i] = fy[i];
            if (fyS[i] < 0) bnd[i] = 0;  // untouched
            else {
                bnd[i] = tol_sum(IC, fyS[i]);
                if (half_out) bnd[i] += eps_dt(dt) * (fabs(fy[i]) + bnd[i]) + (dt == CU_F16 ? 3e-8 : 0.0);
            }
        }
        double r = check_bound(half_out ? "forward, half out" : "forward, fp32 out", got, ref, bnd, ny);
        if (half_out) ratio_half = r;
        else {
            ratio_f32 = r;
            // it really ran on 16-bit inputs: against the unrounded inputs the error is far above
            // fp32 noise (bf16 ~ 3e-3, fp16 ~ 4e-4), against the rounded ones at fp32 noise
            float *gf = (float *)mallocCheck(sizeof(float) * ny), *uf = (float *)mallocCheck(sizeof(float) * ny);
            size_t m = 0;
            for (int rr = off[0]; rr < off[E]; rr++)
                for (int o = 0; o < OC; o++, m++)
                    gf[m] = (float)fy[(size_t)rr * OC + o], uf[m] = (float)fyu[(size_t)rr * OC + o];
            float *gm = got + (size_t)off[0] * OC;
            e_rnd = rel_l2(gm, gf, m), e_unr = rel_l2(gm, uf, m);
            if (m > 0)
                CHECK(e_unr > 1e-5 && e_unr > 30.0 * e_rnd,
                      "half-precision inputs not visible: rel. L2 %.3g vs unrounded, %.3g vs rounded", e_unr, e_rnd);
            free(gf), free(uf);
        }
        free(got), free(init), cu_free(d_out);
    }

    // ---- backward: both, dinp only, dW only; from non-zero dinp / dW (+=) ----
    double ratio_dx = 0, ratio_dw = 0;
    for (int which = 0; which < 3; which++) {  // 0 both, 1 dinp only (dw NULL), 2 dW only (dinp NULL)
        float *d_dinp = which != 2 ? (float *)to_dev(dinp0, sizeof(float) * nx) : NULL;
        float *d_dw = which != 1 ? (float *)to_dev(dw0, sizeof(float) * nw) : NULL;
        cu_grouped_tc_backward(d_dinp, d_dw, d_dy, d_x, d_w, d_off, E, c->max_rows, IC, OC, dt);
        if (d_dinp) {
            float *got = from_dev(d_dinp, nx);
            for (size_t i = 0; i < nx; i++) {
                ref[i] = (double)dinp0[i] + gx[i];
                bnd[i] = gxS[i] < 0 ? 0 : tol_sum(OC, gxS[i]) + 2.0 * U32 * (fabs(dinp0[i]) + gxS[i]);
            }
            double r = check_bound(which == 0 ? "dinp (with dW)" : "dinp (dW NULL)", got, ref, bnd, nx);
            ratio_dx = r > ratio_dx ? r : ratio_dx;
            free(got), cu_free(d_dinp);
        }
        if (d_dw) {
            float *got = from_dev(d_dw, nw);
            for (int e = 0; e < E; e++)
                for (size_t i = (size_t)e * OC * IC; i < (size_t)(e + 1) * OC * IC; i++) {
                    ref[i] = (double)dw0[i] + gw[i];
                    bnd[i] = tol_sum(c->rows[e], gwS[i]) + 2.0 * U32 * (fabs(dw0[i]) + gwS[i]);
                    if (c->rows[e] == 0) bnd[i] = 0;  // an expert without rows: dW_e untouched
                }
            double r = check_bound(which == 0 ? "dW (with dinp)" : "dW (dinp NULL)", got, ref, bnd, nw);
            ratio_dw = r > ratio_dw ? r : ratio_dw;
            free(got), cu_free(d_dw);
        }
    }
    printf("# %s: error / bound at most: fwd fp32 %.3f, fwd %s %.3f, dinp %.3f, dW %.3f; fwd rel. L2 %.2g vs the "
           "rounded inputs, %.2g vs the unrounded\n", name, ratio_f32, cu_dtype_name(dt), ratio_half, ratio_dx,
           ratio_dw, e_rnd, e_unr);
    cu_free(d_x), cu_free(d_w), cu_free(d_dy), cu_free(d_off);
    free(x0), free(w0), free(dy0), free(x), free(w), free(dy), free(dinp0), free(dw0);
    free(fy), free(fyS), free(fyu), free(gx), free(gxS), free(gw), free(gwS), free(ref), free(bnd);
    test_end();
}

int main(void) {
    if (!cuda_test_start("cuda_grouped_tc", 4321)) return test_summary();
    test_begin("grouped_tc_available");
    int cc = cu_compute_capability();
    CHECK(cu_grouped_tc_available(CU_F32) == 0, "fp32 reported available");
    CHECK(!cu_grouped_tc_available(CU_BF16) || cc >= 80, "bf16 available at compute capability %d", cc);
    CHECK(!cu_grouped_tc_available(CU_F16) || cc >= 70, "fp16 available at compute capability %d", cc);
    if (strcmp(cu_backend(), "cuda-harness") == 0)
        CHECK(cu_grouped_tc_available(CU_BF16) && cu_grouped_tc_available(CU_F16), "the harness models both types");
    test_end();
    // 40 x 72 and 136 x 20: rows of a multiple of 8 elements (16-byte copies, except dout at OC
    // 20); 33 x 50: element copies. OC 72 and IC 136 span 2 and 3 block tiles; OC 20 leaves warps
    // without outputs; 64 / 65 rows end on / one past a block tile.
    static const Case cases[] = {
        {"40x72", 5, {0, 1, 15, 17, 100}, 2, 3, 40, 72, 100},
        {"33x50", 6, {17, 0, 100, 1, 15, 0}, 0, 1, 33, 50, 130},
        {"136x20", 3, {64, 65, 3}, 1, 0, 136, 20, 65},
    };
    for (int k = 0; k < (int)(sizeof cases / sizeof cases[0]); k++) {
        run_case(&cases[k], CU_BF16);
        run_case(&cases[k], CU_F16);
    }
    return test_summary();
}
