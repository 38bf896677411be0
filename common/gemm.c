#include "gemm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// MOE_GEMM_PROFILE=1: time every call, grouped by shape, and print the table at exit.
typedef struct {
    int M, N, K, ta, tb;
    long calls;
    double seconds, flops;
} GemmProf;
#define PROF_MAX 512
static GemmProf prof[PROF_MAX];
static int prof_n = 0, prof_on = -1;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
static int cmp_prof(const void *a, const void *b) {
    double x = ((const GemmProf *)a)->seconds, y = ((const GemmProf *)b)->seconds;
    return (x < y) - (x > y);
}
static void prof_report(void) {
    qsort(prof, (size_t)prof_n, sizeof(GemmProf), cmp_prof);
    double total = 0;
    for (int i = 0; i < prof_n; i++) total += prof[i].seconds;
    fprintf(stderr, "gemm profile (%s): %.3f s in %d shapes\n     M      N      K op   calls   seconds  GFLOP/s\n",
            gemm_backend(), total, prof_n);
    for (int i = 0; i < prof_n && i < 30; i++)
        fprintf(stderr, "%6d %6d %6d %c%c %7ld %9.4f %8.1f\n", prof[i].M, prof[i].N, prof[i].K, prof[i].ta ? 'T' : 'N',
                prof[i].tb ? 'T' : 'N', prof[i].calls, prof[i].seconds, prof[i].flops / prof[i].seconds / 1e9);
}
static void prof_add(int M, int N, int K, int ta, int tb, double sec) {
#pragma omp critical(moe_gemm_prof)
    {
        int i = 0;
        for (; i < prof_n; i++)
            if (prof[i].M == M && prof[i].N == N && prof[i].K == K && prof[i].ta == ta && prof[i].tb == tb) break;
        if (i == prof_n && prof_n < PROF_MAX) prof[prof_n++] = (GemmProf){M, N, K, ta, tb, 0, 0.0, 0.0};
        if (i < prof_n) {
            prof[i].calls++;
            prof[i].seconds += sec;
            prof[i].flops += 2.0 * M * N * K;
        }
    }
}
static void gemm_backend_call(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
                              const float *B, int ldb, float beta, float *C, int ldc);

void gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B, int ldb,
          float beta, float *C, int ldc) {
    if (prof_on < 0) {
        const char *e = getenv("MOE_GEMM_PROFILE");
        prof_on = e && *e && strcmp(e, "0") != 0;
        if (prof_on) atexit(prof_report);
    }
    if (!prof_on) {
        gemm_backend_call(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    double t0 = now_s();
    gemm_backend_call(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    prof_add(M, N, K, transA, transB, now_s() - t0);
}

#if defined(MOE_GEMM_OPENBLAS)
#include <cblas.h>
const char *gemm_backend(void) { return "openblas"; }
static void gemm_backend_call(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
          const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, M, N, K,
                alpha, A, lda, B, ldb, beta, C, ldc);
}
#else
#include <dnnl.h>
const char *gemm_backend(void) { return "onednn"; }
static void gemm_backend_call(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda,
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
