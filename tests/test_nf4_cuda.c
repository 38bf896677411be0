// The CUDA NF4 matmul (pretrained/nf4_cuda.cu) against the CPU kernel, run through the
// CUDA-on-CPU harness (g++ build) or on a GPU (nvcc build): plain and double-quantized
// absmax, rows of whole and partial 64-blocks, 1..17 tokens, bias.
#include "../pretrained/nf4.h"
#include "../pretrained/nf4_cuda.h"
#include "test.h"

int main(void) {
    MoeErr err = {{0}};
    uint64_t rng = rng_seed(17);
    int shapes[4][4] = {{37, 130, 64, 0}, {64, 256, 64, 1}, {70, 384, 128, 1}, {5, 2, 2, 0}};  // rows, cols, bs, dq
    int ntoks[5] = {1, 3, 8, 9, 17};
    char name[96];
    for (int s = 0; s < 4; s++) {
        int rows = shapes[s][0], cols = shapes[s][1];
        snprintf(name, sizeof(name), "nf4_cuda_%dx%d_bs%d_%s_vs_cpu", rows, cols, shapes[s][2], shapes[s][3] ? "dq" : "plain");
        test_begin(name);
        float *w = (float *)mallocCheck((size_t)rows * cols * sizeof(float));
        float *bias = (float *)mallocCheck((size_t)rows * sizeof(float));
        for (int i = 0; i < rows * cols; i++) w[i] = (0.1f + (float)(i % 7)) * rng_normal(&rng);
        for (int r = 0; r < rows; r++) bias[r] = rng_normal(&rng);
        Nf4Tensor t;
        CHECK(nf4_quantize(&t, w, rows, cols, shapes[s][2], shapes[s][3], &err) == 0, "%s", err.msg);
        Nf4Cuda d;
        int rc = nf4cu_upload(&d, rows, cols, t.blocksize, t.q, t.code, t.nested ? NULL : t.absmax, t.qabsmax,
                              t.nested_absmax, t.nested_code, t.nested_blocksize, t.nested_offset, s % 2 ? bias : NULL);
        CHECK(rc == 0, "upload refused");
        for (int k = 0; k < 5 && rc == 0; k++) {
            int n = ntoks[k];
            float *x = (float *)mallocCheck((size_t)n * cols * sizeof(float));
            float *y = (float *)mallocCheck((size_t)n * rows * sizeof(float));
            float *yr = (float *)mallocCheck((size_t)n * rows * sizeof(float));
            for (int i = 0; i < n * cols; i++) x[i] = rng_normal(&rng);
            float *dx = (float *)nf4cu_malloc((size_t)n * cols * sizeof(float));
            float *dy = (float *)nf4cu_malloc((size_t)n * rows * sizeof(float));
            nf4cu_upload_bytes(dx, x, (size_t)n * cols * sizeof(float));
            nf4cu_matmul(&d, dx, n, dy);
            nf4cu_download_bytes(y, dy, (size_t)n * rows * sizeof(float));
            nf4_matmul(&t, x, n, yr, s % 2 ? bias : NULL);
            double md = 0, mx = 0;
            for (int i = 0; i < n * rows; i++) {
                md = fmax(md, fabs((double)y[i] - yr[i]));
                mx = fmax(mx, fabs((double)yr[i]));
            }
            CHECK(md <= 1e-5 * (1 + mx), "n=%d: max diff %g (outputs up to %g)", n, md, mx);
            nf4cu_free_ptr(dx);
            nf4cu_free_ptr(dy);
            free(x); free(y); free(yr);
        }
        if (rc == 0) nf4cu_free(&d);
        nf4_free(&t);
        free(w); free(bias);
        test_end();
    }
    test_begin("nf4_cuda_rejects_odd_columns");
    {
        uint8_t q[8] = {0};
        float code[16] = {0}, am[4] = {1, 1, 1, 1};
        Nf4Cuda d;
        CHECK(nf4cu_upload(&d, 3, 5, 64, q, code, am, NULL, NULL, NULL, 0, 0, NULL) == -1, "odd cols accepted");
        CHECK(nf4cu_upload(&d, 2, 4, 64, q, code, NULL, NULL, NULL, NULL, 0, 0, NULL) == -1, "missing absmax accepted");
    }
    test_end();
    printf("  backend: %s\n", nf4cu_backend());
    return test_summary();
}
