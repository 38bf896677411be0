// Helpers shared by the CUDA comparison tests (test_cuda_layers, test_cuda_attention,
// test_cuda_moe): random host buffers, device copies, comparisons with one failure line,
// and host-side bf16 / fp16 conversions (round to nearest even, as cu_convert), so that a
// test builds an input in the element type dt (CU_F32, CU_BF16, CU_F16 of cuda_ops.h) and
// compares a result of any type with an fp32 reference.
// Every function is static inline: the header belongs to test programs (one .c file each).
#ifndef MOE_CUDA_TEST_UTIL_H
#define MOE_CUDA_TEST_UTIL_H

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "../model/cuda/cuda_ops.h"
#include "test.h"

static uint64_t rng __attribute__((unused));

static inline float *rand_buf(size_t n, float scale) {
    float *p = (float *)mallocCheck(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) p[i] = scale * (2.0f * rng_uniform(&rng) - 1.0f);
    return p;
}
static inline float *dup_buf(const float *src, size_t n) {
    float *p = (float *)mallocCheck(sizeof(float) * (n ? n : 1));
    memcpy(p, src, sizeof(float) * n);
    return p;
}
// device copy of a host array
static inline void *to_dev(const void *src, size_t bytes) {
    void *d = cu_malloc(bytes);
    cu_upload(d, src, bytes);
    return d;
}
static inline float *from_dev(const float *d, size_t n) {
    float *h = (float *)mallocCheck(sizeof(float) * (n ? n : 1));
    cu_download(h, d, sizeof(float) * n);
    return h;
}

// compares n floats; one failure line with the worst element
static inline void check_arr(const char *what, const float *got, const float *ref, size_t n, double atol, double rtol) {
    size_t worst = 0;
    double worst_excess = 0.0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (got[i] == ref[i]) continue;  // also equal infinities
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
static inline void check_dev(const char *what, const float *dev, const float *ref, size_t n, double atol, double rtol) {
    float *h = from_dev(dev, n);
    check_arr(what, h, ref, n, atol, rtol);
    free(h);
}
static inline void check_dev_int(const char *what, const int *dev, const int *ref, size_t n) {
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

// ---- bf16 / fp16 on the host ------------------------------------------------------------------

static inline uint16_t f2bf(float x) {  // round to nearest even (finite inputs)
    uint32_t b;
    memcpy(&b, &x, 4);
    b += 0x7fffu + ((b >> 16) & 1u);
    return (uint16_t)(b >> 16);
}
static inline float bf2f(uint16_t h) {
    uint32_t b = (uint32_t)h << 16;
    float x;
    memcpy(&x, &b, 4);
    return x;
}
// IEEE binary16, round to nearest even; overflow to inf, subnormals kept
static inline uint16_t f2h(float x) {
    uint32_t b;
    memcpy(&b, &x, 4);
    uint32_t sign = (b >> 16) & 0x8000u, absb = b & 0x7fffffffu;
    if (absb >= 0x7f800000u) return (uint16_t)(sign | 0x7c00u | (absb > 0x7f800000u ? 0x200u : 0u));
    float a;
    memcpy(&a, &absb, 4);
    if (a >= 65520.0f) return (uint16_t)(sign | 0x7c00u);  // rounds to inf
    if (a < 6.103515625e-05f) {                           // subnormal: multiples of 2^-24
        float q = a * 16777216.0f;                         // exact scaling
        float r = nearbyintf(q);                           // default rounding mode: to nearest even
        return (uint16_t)(sign | (uint32_t)r);
    }
    uint32_t e = (absb >> 23) - 127 + 15, m = absb & 0x7fffffu;
    uint32_t h = (e << 10) | (m >> 13), rest = m & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;  // carries into the exponent correctly
    return (uint16_t)(sign | h);
}
static inline float h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    float v;
    if (e == 0) v = (float)m * 5.9604644775390625e-08f;  // 2^-24
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = ldexpf((float)(m | 0x400u), (int)e - 25);
    uint32_t b;
    memcpy(&b, &v, 4);
    b |= sign;
    memcpy(&v, &b, 4);
    return v;
}
// x rounded to element type dt and back (what a device buffer of type dt holds)
static inline float round_dt(float x, int dt) {
    return dt == CU_BF16 ? bf2f(f2bf(x)) : dt == CU_F16 ? h2f(f2h(x)) : x;
}
// relative tolerance of one rounding to dt (half an ulp), for tolerances of results stored in dt
static inline double eps_dt(int dt) { return dt == CU_BF16 ? 1.0 / 256.0 : dt == CU_F16 ? 1.0 / 2048.0 : 1e-7; }

// device buffer of type dt holding x (n values) rounded to dt; when x_rounded is not NULL the
// host values are replaced by their rounded images (so the fp32 reference sees what the device sees)
static inline void *to_dev_dt(float *x, size_t n, int dt, int x_rounded) {
    size_t es = cu_dtype_size(dt);
    unsigned char *h = (unsigned char *)mallocCheck(es * (n ? n : 1));
    for (size_t i = 0; i < n; i++) {
        if (dt == CU_F32) memcpy(h + 4 * i, &x[i], 4);
        else {
            uint16_t v = dt == CU_BF16 ? f2bf(x[i]) : f2h(x[i]);
            memcpy(h + 2 * i, &v, 2);
        }
        if (x_rounded) x[i] = round_dt(x[i], dt);
    }
    void *d = to_dev(h, es * (n ? n : 1));
    free(h);
    return d;
}
// n values of type dt from the device, as fp32 (caller frees)
static inline float *from_dev_dt(const void *d, size_t n, int dt) {
    size_t es = cu_dtype_size(dt);
    unsigned char *h = (unsigned char *)mallocCheck(es * (n ? n : 1));
    cu_download(h, d, es * n);
    float *f = (float *)mallocCheck(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) {
        uint16_t v;
        if (dt == CU_F32) memcpy(&f[i], h + 4 * i, 4);
        else memcpy(&v, h + 2 * i, 2), f[i] = dt == CU_BF16 ? bf2f(v) : h2f(v);
    }
    free(h);
    return f;
}
static inline void check_dev_dt(const char *what, const void *dev, int dt, const float *ref, size_t n, double atol,
                         double rtol) {
    float *h = from_dev_dt(dev, n, dt);
    check_arr(what, h, ref, n, atol, rtol);
    free(h);
}
// relative L2 error of got against ref
static inline double rel_l2(const float *got, const float *ref, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)got[i] - ref[i];
        num += d * d, den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

// The start of a CUDA test program: one OpenMP thread (idle OpenMP workers spinning between
// the CPU reference's calls would take the cores from the harness's fibers), the test RNG, one
// line naming the backend and the device. 0 when no device is visible: the program then
// records one SKIP named `name` and returns test_summary().
static inline int cuda_test_start(const char *name, uint64_t seed) {
    omp_set_num_threads(1);
    rng = rng_seed(seed);
    char dev[256];
    size_t free_b = 0, total_b = 0;
    int ndev = cu_device_info(dev, sizeof dev, &free_b, &total_b);
    printf("# backend %s, %d device(s): %s, compute capability %d, %.0f MiB free of %.0f MiB\n", cu_backend(), ndev, dev,
           cu_compute_capability(), free_b / 1048576.0, total_b / 1048576.0);
    if (ndev < 1) test_skip(name, "no CUDA device visible");
    return ndev >= 1;
}

// log-sum-exp of the scaled causal scores of query row (b, h, t), in double: the reference of
// the attention kernels' lse; q, k (B, T, H, dqk)
static inline double lse_ref(const float *q, const float *k, int T, int H, int dqk, float scale, int b, int h, int t) {
    const float *qt = q + (((size_t)b * T + t) * H + h) * dqk;
    double mx = -1e300, sum = 0.0;
    for (int pass = 0; pass < 2; pass++)  // the maximum, then the sum
        for (int s = 0; s <= t; s++) {
            const float *ks = k + (((size_t)b * T + s) * H + h) * dqk;
            double d = 0.0;
            for (int i = 0; i < dqk; i++) d += (double)qt[i] * ks[i];
            d *= scale;
            if (pass == 0) mx = d > mx ? d : mx;
            else sum += exp(d - mx);
        }
    return mx + log(sum);
}

#endif
