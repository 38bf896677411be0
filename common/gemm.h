// The one GEMM entry point of the project (CPU). Row-major, BLAS semantics:
//   C (M, N) = alpha * op(A) (M, K) * op(B) (K, N) + beta * C
// op(A) = A (M, K) with leading dimension lda when transA == 0, else A is stored (K, M).
// op(B) = B (K, N) with leading dimension ldb when transB == 0, else B is stored (N, K).
// Backend chosen at build time (GEMM=dnnl, the default, or GEMM=openblas); both run on the
// process's one OpenMP runtime.
#ifndef MOE_GEMM_H
#define MOE_GEMM_H

void gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
          const float *B, int ldb, float beta, float *C, int ldc);
// Name of the backend, for logs and benchmarks.
const char *gemm_backend(void);

#endif
