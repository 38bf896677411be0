#include "gemm.h"

#include <stdio.h>
#include <stdlib.h>

#if defined(MOE_GEMM_OPENBLAS)
#include <cblas.h>
const char *gemm_backend(void) { return "openblas"; }
void gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
          const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, M, N, K,
                alpha, A, lda, B, ldb, beta, C, ldc);
}
#else
#include <dnnl.h>
const char *gemm_backend(void) { return "onednn"; }
void gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
          const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {  // C = beta * C, which dnnl_sgemm would reject
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
        return;
    }
    dnnl_status_t st = dnnl_sgemm(transA ? 'T' : 'N', transB ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    if (st != dnnl_success) {
        fprintf(stderr, "error: dnnl_sgemm failed (status %d) for M=%d N=%d K=%d lda=%d ldb=%d ldc=%d\n", (int)st, M,
                N, K, lda, ldb, ldc);
        exit(EXIT_FAILURE);
    }
}
#endif
