// bf16 variants (mixed precision: bf16 storage of weights and activations, fp32 accumulation,
// fp32 master weights): conversions, embedding, RMSNorm, SwiGLU, GEMM, and the AdamW update
// that writes the bf16 working copy of the weights with stochastic rounding.
// In the C interface bf16 tensors are uint16_t (the raw bits of __nv_bfloat16).
#include "cuda_common.cuh"
#include "cuda_ops.h"

#if defined(MOE_CUDA_HARNESS)
extern "C" {
#include "../../common/gemm.h"
}
#else
#include <cublas_v2.h>
#endif

typedef __nv_bfloat16 bf16;

static __device__ inline float ld(const bf16 *p, long i) { return __bfloat162float(p[i]); }

// stochastic rounding of x to bf16 with a uniform 16-bit value r: add r to the bits that are
// cut, truncate (unbiased: E[result] = x for finite x away from overflow)
static __device__ inline bf16 round_stochastic(float x, unsigned r) {
    unsigned bits = __float_as_uint(x);
    if ((bits & 0x7f800000u) == 0x7f800000u) return __float2bfloat16(x);  // inf / NaN unchanged
    bits += r & 0xffffu;
    bits &= 0xffff0000u;
    return __float2bfloat16(__uint_as_float(bits));
}
// a hash of (index, seed) -> 32 bits (deterministic, no state)
static __device__ inline unsigned hash32(unsigned long long i, unsigned seed) {
    unsigned long long z = i * 0x9E3779B97F4A7C15ull + seed;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (unsigned)(z ^ (z >> 31));
}

__global__ void f32_to_bf16_kernel(bf16 *out, const float *in, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16(in[i]);
}
__global__ void bf16_to_f32_kernel(float *out, const bf16 *in, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __bfloat162float(in[i]);
}
__global__ void f32_to_bf16_stochastic_kernel(bf16 *out, const float *in, long n, unsigned seed) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = round_stochastic(in[i], hash32((unsigned long long)i, seed));
}

__global__ void encoder_forward_bf16_kernel(bf16 *out, const int *inp, const bf16 *wte, int N, int C) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * C) return;
    out[i] = wte[(long)inp[i / C] * C + i % C];
}

// one warp per row, fp32 sums
__global__ void rmsnorm_forward_bf16_kernel(bf16 *out, float *rstd, const bf16 *inp, const bf16 *weight, int N, int C,
                                            float eps) {
    int lane = threadIdx.x % 32;
    int n = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (n >= N) return;
    const bf16 *x = inp + (long)n * C;
    float ss = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float v = ld(x, c);
        ss += v * v;
    }
    ss = warp_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)C + eps);
    if (lane == 0) rstd[n] = r;
    for (int c = lane; c < C; c += 32) out[(long)n * C + c] = __float2bfloat16(ld(x, c) * r * ld(weight, c));
}

__global__ void swiglu_forward_bf16_kernel(bf16 *out, const bf16 *h1, const bf16 *h3, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16(lm_silu(ld(h1, i)) * ld(h3, i));
}

// gradients of activations in bf16 are written (not accumulated)
__global__ void swiglu_backward_bf16_kernel(bf16 *dh1, bf16 *dh3, const bf16 *dout, const bf16 *h1, const bf16 *h3,
                                            long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float d = ld(dout, i), a = ld(h1, i), b = ld(h3, i);
    dh1[i] = __float2bfloat16(d * b * lm_dsilu(a));
    dh3[i] = __float2bfloat16(d * lm_silu(a));
}

// AdamW on the fp32 master weights, then the bf16 working copy with stochastic rounding
__global__ void adamw_bf16_kernel(bf16 *pw, float *master, const float *g, float *m, float *v, long n, float lr,
                                  float beta1, float beta2, float eps, float wd, float grad_scale, float b1c, float b2c,
                                  unsigned seed) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float mm = m[i], vv = v[i];
    float p = lm_adamw(master[i], g[i] * grad_scale, &mm, &vv, lr, beta1, beta2, eps, wd, b1c, b2c);
    m[i] = mm;
    v[i] = vv;
    master[i] = p;
    pw[i] = round_stochastic(p, hash32((unsigned long long)i, seed));
}

#if defined(MOE_CUDA_HARNESS)
// under the harness: widen to fp32, the CPU gemm, round the result to bf16
static void gemm_bf16_host(int transA, int transB, int M, int N, int K, float alpha, const bf16 *A, int lda,
                           const bf16 *B, int ldb, float beta, bf16 *C, int ldc) {
    long na = transA ? (long)K * lda : (long)M * lda, nb = transB ? (long)N * ldb : (long)K * ldb;
    float *a = (float *)malloc(sizeof(float) * na), *b = (float *)malloc(sizeof(float) * nb);
    float *c = (float *)malloc(sizeof(float) * (long)M * ldc);
    if (!a || !b || !c) {
        fprintf(stderr, "error: out of memory in the harness bf16 GEMM\n");
        exit(EXIT_FAILURE);
    }
    for (long i = 0; i < na; i++) a[i] = __bfloat162float(A[i]);
    for (long i = 0; i < nb; i++) b[i] = __bfloat162float(B[i]);
    for (long i = 0; i < (long)M * ldc; i++) c[i] = beta != 0.0f ? __bfloat162float(C[i]) : 0.0f;
    gemm(transA, transB, M, N, K, alpha, a, lda, b, ldb, beta, c, ldc);
    for (int r = 0; r < M; r++)
        for (int j = 0; j < N; j++) C[(long)r * ldc + j] = __float2bfloat16(c[(long)r * ldc + j]);
    free(a), free(b), free(c);
}
#endif

extern "C" {

void cu_f32_to_bf16(uint16_t *out, const float *in, long n) {
    if (n > 0) LAUNCH(f32_to_bf16_kernel, ceil_div(n, 256), 256, 0, 0, (bf16 *)out, in, n);
}
void cu_bf16_to_f32(float *out, const uint16_t *in, long n) {
    if (n > 0) LAUNCH(bf16_to_f32_kernel, ceil_div(n, 256), 256, 0, 0, out, (const bf16 *)in, n);
}
void cu_f32_to_bf16_stochastic(uint16_t *out, const float *in, long n, unsigned seed) {
    if (n > 0) LAUNCH(f32_to_bf16_stochastic_kernel, ceil_div(n, 256), 256, 0, 0, (bf16 *)out, in, n, seed);
}
void cu_encoder_forward_bf16(uint16_t *out, const int *inp, const uint16_t *wte, int N, int C) {
    LAUNCH(encoder_forward_bf16_kernel, ceil_div((long)N * C, 256), 256, 0, 0, (bf16 *)out, inp, (const bf16 *)wte, N,
           C);
}
void cu_rmsnorm_forward_bf16(uint16_t *out, float *rstd, const uint16_t *inp, const uint16_t *weight, int N, int C,
                             float eps) {
    LAUNCH(rmsnorm_forward_bf16_kernel, ceil_div(N, 4), 128, 0, 0, (bf16 *)out, rstd, (const bf16 *)inp,
           (const bf16 *)weight, N, C, eps);
}
void cu_swiglu_forward_bf16(uint16_t *out, const uint16_t *h1, const uint16_t *h3, long n) {
    if (n > 0)
        LAUNCH(swiglu_forward_bf16_kernel, ceil_div(n, 256), 256, 0, 0, (bf16 *)out, (const bf16 *)h1,
               (const bf16 *)h3, n);
}
void cu_swiglu_backward_bf16(uint16_t *dh1, uint16_t *dh3, const uint16_t *dout, const uint16_t *h1,
                             const uint16_t *h3, long n) {
    if (n > 0)
        LAUNCH(swiglu_backward_bf16_kernel, ceil_div(n, 256), 256, 0, 0, (bf16 *)dh1, (bf16 *)dh3,
               (const bf16 *)dout, (const bf16 *)h1, (const bf16 *)h3, n);
}
void cu_adamw_bf16(uint16_t *pw, float *master, const float *g, float *m, float *v, size_t n, float lr, float beta1,
                   float beta2, float eps, float wd, float grad_scale, float b1c, float b2c, unsigned seed) {
    if (n > 0)
        LAUNCH(adamw_bf16_kernel, ceil_div((long)n, 256), 256, 0, 0, (bf16 *)pw, master, g, m, v, (long)n, lr, beta1,
               beta2, eps, wd, grad_scale, b1c, b2c, seed);
}

void cu_gemm_bf16_f32(int transA, int transB, int M, int N, int K, float alpha, const uint16_t *A, int lda,
                      const uint16_t *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
#if defined(MOE_CUDA_HARNESS)
    long na = transA ? (long)K * lda : (long)M * lda, nb = transB ? (long)N * ldb : (long)K * ldb;
    float *a = (float *)malloc(sizeof(float) * (na ? na : 1)), *b = (float *)malloc(sizeof(float) * (nb ? nb : 1));
    if (!a || !b) {
        fprintf(stderr, "error: out of memory in the harness bf16 GEMM\n");
        exit(EXIT_FAILURE);
    }
    for (long i = 0; i < na; i++) a[i] = __bfloat162float(((const bf16 *)A)[i]);
    for (long i = 0; i < nb; i++) b[i] = __bfloat162float(((const bf16 *)B)[i]);
    gemm(transA, transB, M, N, K, alpha, a, lda, b, ldb, beta, C, ldc);
    free(a), free(b);
#else
    static cublasHandle_t h = NULL;
    if (!h && cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "error: cuBLAS: cublasCreate failed\n");
        exit(EXIT_FAILURE);
    }
    cublasStatus_t s = cublasGemmEx(h, transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K,
                                    &alpha, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda, &beta, C, CUDA_R_32F, ldc,
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "error: cuBLAS: bf16 x bf16 -> fp32 gemm %dx%dx%d failed (status %d)\n", M, N, K, (int)s);
        exit(EXIT_FAILURE);
    }
#endif
}

void cu_gemm_bf16(int transA, int transB, int M, int N, int K, float alpha, const uint16_t *A, int lda,
                  const uint16_t *B, int ldb, float beta, uint16_t *C, int ldc) {
    if (M <= 0 || N <= 0) return;
#if defined(MOE_CUDA_HARNESS)
    gemm_bf16_host(transA, transB, M, N, K, alpha, (const bf16 *)A, lda, (const bf16 *)B, ldb, beta, (bf16 *)C, ldc);
#else
    static cublasHandle_t h = NULL;
    if (!h && cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "error: cuBLAS: cublasCreate failed\n");
        exit(EXIT_FAILURE);
    }
    cublasStatus_t s = cublasGemmEx(h, transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K,
                                    &alpha, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda, &beta, C, CUDA_R_16BF, ldc,
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "error: cuBLAS: bf16 gemm %dx%dx%d failed (status %d)\n", M, N, K, (int)s);
        exit(EXIT_FAILURE);
    }
#endif
}

}  // extern "C"
