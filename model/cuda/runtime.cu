// Device memory helpers and the thin GEMM wrapper: cuBLAS under nvcc, the project's CPU
// gemm() (common/gemm.h) under the CUDA-on-CPU harness, where device memory is host memory.
#include "cuda_common.cuh"
#include "cuda_ops.h"

#if defined(MOE_CUDA_HARNESS)
extern "C" {
#include "../../common/gemm.h"
}
#else
#include <cublas_v2.h>
#endif

extern "C" {

void *cu_malloc(size_t bytes) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        fprintf(stderr, "error: CUDA: cannot allocate %.1f MB of device memory (%.1f MB free of %.1f MB): %s\n",
                (double)bytes / 1e6, (double)free_b / 1e6, (double)total_b / 1e6, cudaGetErrorString(e));
        exit(EXIT_FAILURE);
    }
    return p;
}
void cu_free(void *p) {
    if (p) cudaCheck(cudaFree(p));
}
void cu_upload(void *dst, const void *src, size_t bytes) { cudaCheck(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice)); }
void cu_download(void *dst, const void *src, size_t bytes) {
    cudaCheck(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
void cu_zero(void *p, size_t bytes) { cudaCheck(cudaMemsetAsync(p, 0, bytes, 0)); }
void cu_sync(void) { cudaCheck(cudaDeviceSynchronize()); }

int cu_device_info(char *name, size_t name_len, size_t *free_bytes, size_t *total_bytes) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n < 1) {
        cudaGetLastError();  // clear the sticky "no device" error
        if (name && name_len) name[0] = 0;
        return 0;
    }
#if defined(MOE_CUDA_HARNESS)
    if (name && name_len) snprintf(name, name_len, "CUDA-on-CPU harness");
#else
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return 0;
    if (name && name_len) snprintf(name, name_len, "%s", prop.name);
#endif
    size_t f = 0, t = 0;
    if (cudaMemGetInfo(&f, &t) != cudaSuccess) return 0;
    if (free_bytes) *free_bytes = f;
    if (total_bytes) *total_bytes = t;
    return n;
}

int cu_supports_bf16(void) {
#if defined(MOE_CUDA_HARNESS)
    return 1;
#else
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) return 0;
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) return 0;
    return major >= 8;  // bf16 tensor cores: Ampere (sm_80) and later
#endif
}

#if defined(MOE_CUDA_HARNESS)
const char *cu_backend(void) { return "cuda-harness"; }

void cu_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
             int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    gemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
#else
const char *cu_backend(void) { return "cuda"; }

static cublasHandle_t cublas_handle(void) {
    static cublasHandle_t h = NULL;
    if (!h) {
        if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
            fprintf(stderr, "error: cuBLAS: cublasCreate failed\n");
            exit(EXIT_FAILURE);
        }
    }
    return h;
}

// row-major C = A B is column-major C^T = B^T A^T: swap the operands
void cu_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
             int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    cublasStatus_t s = cublasSgemm(cublas_handle(), transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N,
                                   N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc);
    if (s != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "error: cuBLAS: sgemm %dx%dx%d failed (status %d)\n", M, N, K, (int)s);
        exit(EXIT_FAILURE);
    }
}
#endif

void cu_matmul_forward(float *out, const float *inp, const float *weight, int N, int IC, int OC) {
    cu_gemm(0, 1, N, OC, IC, 1.0f, inp, IC, weight, IC, 0.0f, out, OC);
}

void cu_matmul_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight, int N,
                        int IC, int OC) {
    if (dinp) cu_gemm(0, 0, N, IC, OC, 1.0f, dout, OC, weight, IC, 1.0f, dinp, IC);
    if (dweight) cu_gemm(1, 0, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f, dweight, IC);
}

}  // extern "C"
