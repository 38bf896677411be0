// The CUDA flash-style causal attention (model/cuda/attention.cu) against the CPU reference
// (model/layers.h attention_forward / attention_backward) on awkward sizes: tiled and
// untiled kernels, T shorter than a tile. Built through the harness (make test) and with nvcc
// (make test-gpu).
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
        test_skip("cuda_attention", "no CUDA device visible");
        return test_summary();
    }
    test_attention_case("cuda_attention_T37_dqk10_dv7", 2, 37, 3, 10, 7);
    test_attention_case("cuda_attention_T70_dqk40_dv36", 1, 70, 2, 40, 36);
    test_attention_case("cuda_attention_T5_shorter_than_a_tile", 3, 5, 2, 12, 8);
    // head sizes whose K/V chunk does not fit 48 KiB: the untiled forward kernel
    test_attention_case("cuda_attention_untiled_dqk256_dv200", 1, 35, 1, 256, 200);
    return test_summary();
}
