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
    int dev = 0;
    cudaDeviceProp prop;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) return 0;
    if (name && name_len) snprintf(name, name_len, "%s", prop.name);
#endif
    size_t f = 0, t = 0;
    if (cudaMemGetInfo(&f, &t) != cudaSuccess) return 0;
    if (free_bytes) *free_bytes = f;
    if (total_bytes) *total_bytes = t;
    return n;
}

int cu_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return n;
}

#if defined(MOE_CUDA_HARNESS)
// every process of the harness models a GPU of its own (data parallelism runs as processes)
int cu_select_device(int index) { return index >= 0 ? 0 : -1; }
#else
int cu_select_device(int index) {
    int n = cu_device_count();
    if (index < 0 || index >= n) return -1;
    if (cudaSetDevice(index) != cudaSuccess) {
        cudaGetLastError();
        return -1;
    }
    return 0;
}
#endif

int cu_compute_capability(void) {
#if defined(MOE_CUDA_HARNESS)
    return 90;
#else
    int dev = 0, major = 0, minor = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return major * 10 + minor;
#endif
}

int cu_tensor_core_kernel_ready(int dt, const void *kernel) {
    if ((dt != CU_BF16 && dt != CU_F16) || !cu_supports_dtype(dt)) return 0;
#if defined(MOE_CUDA_HARNESS)
    (void)kernel;
    return 1;
#else
    cudaFuncAttributes fa;  // fails when the build has no image of the kernel for this device
    if (cudaFuncGetAttributes(&fa, kernel) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return 1;
#endif
}

int cu_supports_dtype(int dt) {
    int cc = cu_compute_capability();
    if (dt == CU_F32) return cc > 0;
    if (dt == CU_BF16) return cc >= 80;  // bf16 tensor cores: Ampere (sm_80) and later
    if (dt == CU_F16) return cc >= 70;   // fp16 tensor cores: Volta (sm_70) and later
    return 0;
}

#if defined(MOE_CUDA_HARNESS)
const char *cu_backend(void) { return "cuda-harness"; }

void cu_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
             int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    gemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// widen n values of type dt to a new fp32 host buffer (device memory is host memory here)
static float *widen(const void *p, int dt, long n) {
    float *f = (float *)malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (!f) {
        fprintf(stderr, "error: out of memory in the harness GEMM (%ld values)\n", n);
        exit(EXIT_FAILURE);
    }
    for (long i = 0; i < n; i++)
        f[i] = dt == CU_F32 ? ((const float *)p)[i] : dt == CU_BF16 ? ldf(((const bf16 *)p)[i]) : ldf(((const f16 *)p)[i]);
    return f;
}

// the CPU gemm on fp32 images of the inputs: the same values as a GPU GEMM with fp32
// accumulation sees (the order of the sums differs, as between two GPU kernels)
void cu_gemm_ex(int transA, int transB, int M, int N, int K, float alpha, const void *A, int lda, const void *B,
                int ldb, int ab_dt, float beta, void *C, int ldc, int c_dt) {
    if (M <= 0 || N <= 0) return;
    if (ab_dt == CU_F32 && c_dt == CU_F32) {
        gemm(transA, transB, M, N, K, alpha, (const float *)A, lda, (const float *)B, ldb, beta, (float *)C, ldc);
        return;
    }
    long na = transA ? (long)K * lda : (long)M * lda, nb = transB ? (long)N * ldb : (long)K * ldb;
    long nc = (long)(M - 1) * ldc + N;
    float *a = widen(A, ab_dt, K > 0 ? na : 0), *b = widen(B, ab_dt, K > 0 ? nb : 0);
    float *c = beta != 0.0f ? widen(C, c_dt, nc) : (float *)calloc((size_t)nc, sizeof(float));
    if (!c) {
        fprintf(stderr, "error: out of memory in the harness GEMM\n");
        exit(EXIT_FAILURE);
    }
    gemm(transA, transB, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
    for (int r = 0; r < M; r++)
        for (int j = 0; j < N; j++) {
            long i = (long)r * ldc + j;
            if (c_dt == CU_F32) ((float *)C)[i] = c[i];
            else if (c_dt == CU_BF16) ((bf16 *)C)[i] = stf<bf16>(c[i]);
            else ((f16 *)C)[i] = stf<f16>(c[i]);
        }
    free(a), free(b), free(c);
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
        // by default cuBLAS may sum split-K partial products in a 16-bit OUTPUT type (several
        // bf16/fp16 roundings per output); keep every reduction in the fp32 compute type
        cublasMath_t mode = (cublasMath_t)(CUBLAS_DEFAULT_MATH | CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION);
        if (cublasSetMathMode(h, mode) != CUBLAS_STATUS_SUCCESS) {
            fprintf(stderr, "error: cuBLAS: cublasSetMathMode failed\n");
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

static cudaDataType_t cublas_type(int dt) { return dt == CU_BF16 ? CUDA_R_16BF : dt == CU_F16 ? CUDA_R_16F : CUDA_R_32F; }

void cu_gemm_ex(int transA, int transB, int M, int N, int K, float alpha, const void *A, int lda, const void *B,
                int ldb, int ab_dt, float beta, void *C, int ldc, int c_dt) {
    if (M <= 0 || N <= 0) return;
    if (ab_dt == CU_F32 && c_dt == CU_F32) {
        cu_gemm(transA, transB, M, N, K, alpha, (const float *)A, lda, (const float *)B, ldb, beta, (float *)C, ldc);
        return;
    }
    cublasStatus_t s = cublasGemmEx(cublas_handle(), transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N,
                                    N, M, K, &alpha, B, cublas_type(ab_dt), ldb, A, cublas_type(ab_dt), lda, &beta, C,
                                    cublas_type(c_dt), ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "error: cuBLAS: %s x %s -> %s gemm %dx%dx%d failed (status %d)\n", cu_dtype_name(ab_dt),
                cu_dtype_name(ab_dt), cu_dtype_name(c_dt), M, N, K, (int)s);
        exit(EXIT_FAILURE);
    }
}
#endif

void cu_matmul_forward(void *out, int out_dt, const void *inp, const void *weight, int N, int IC, int OC, int dt) {
    cu_gemm_ex(0, 1, N, OC, IC, 1.0f, inp, IC, weight, IC, dt, 0.0f, out, OC, out_dt);
}

void cu_matmul_backward(float *dinp, float *dweight, const void *dout, const void *inp, const void *weight, int N,
                        int IC, int OC, int dt) {
    if (dinp) cu_gemm_ex(0, 0, N, IC, OC, 1.0f, dout, OC, weight, IC, dt, 1.0f, dinp, IC, CU_F32);
    if (dweight) cu_gemm_ex(1, 0, OC, IC, N, 1.0f, dout, OC, inp, IC, dt, 1.0f, dweight, IC, CU_F32);
}

}  // extern "C"
