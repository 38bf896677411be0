// Shared by every .cu file of the CUDA backend: error checks, the ONE launch macro, shared
// memory declarations, warp/block reductions. The same sources build with nvcc (real GPU)
// and with g++ under the CUDA-on-CPU harness (tests/cuda_harness/cuda_harness.h, which then
// is force-included first and defines MOE_CUDA_HARNESS).
#ifndef MOE_CUDA_COMMON_CUH
#define MOE_CUDA_COMMON_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <float.h>
#include <stdio.h>
#include <stdlib.h>

#include "../layer_math.h"

// ---- errors ------------------------------------------------------------------------------
static inline void cuda_check_(cudaError_t e, const char *file, int line) {
    if (e != cudaSuccess) {
        fprintf(stderr, "error: CUDA: %s at %s:%d\n", cudaGetErrorString(e), file, line);
        exit(EXIT_FAILURE);
    }
}
#define cudaCheck(call) cuda_check_((call), __FILE__, __LINE__)

// ---- launch --------------------------------------------------------------------------------
// LAUNCH(kernel, grid, block, smem, stream, args...): kernel<<<grid, block, smem, stream>>>(args)
// under nvcc; the harness scheduler under g++ (arguments are captured by value).
#if defined(MOE_CUDA_HARNESS)
#define LAUNCH(kernel, grid, block, smem, stream, ...)                                                       \
    do {                                                                                                     \
        (void)(stream);                                                                                      \
        moe_hx_launch(#kernel, __FILE__, __LINE__, dim3(grid), dim3(block), (size_t)(smem),                  \
                      [=]() { kernel(__VA_ARGS__); });                                                       \
    } while (0)
#else
#define LAUNCH(kernel, grid, block, smem, stream, ...)            \
    do {                                                          \
        kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__); \
        cudaCheck(cudaGetLastError());                            \
    } while (0)
#endif

// ---- shared memory ---------------------------------------------------------------------------
// Declare shared memory only through these (raw __shared__ is a compile error under the harness,
// which gives every block fresh, poisoned shared memory instead). SHARED_ARRAY / SHARED_ARRAY2 /
// DYNAMIC_SHARED are only guaranteed the alignment of their type (under the harness: 16 bytes,
// never 32); the _ALIGNED forms take an alignment in bytes (a power of two, 16..256; wmma tiles
// need 32).
#if !defined(MOE_CUDA_HARNESS)
#define SHARED_ARRAY(type, name, n) __shared__ type name[n]
#define SHARED_ARRAY2(type, name, n0, n1) __shared__ type name[n0][n1]
#define DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#define SHARED_ARRAY_ALIGNED(type, name, n, align) __shared__ __align__(align) type name[n]
#define SHARED_ARRAY2_ALIGNED(type, name, n0, n1, align) __shared__ __align__(align) type name[n0][n1]
#endif

// ---- helpers ----------------------------------------------------------------------------------
static inline int ceil_div(long a, long b) { return (int)((a + b - 1) / b); }

// ---- element types (CuDtype of cuda_ops.h: CU_F32, CU_BF16, CU_F16) -----------------------------
typedef __nv_bfloat16 bf16;
typedef __half f16;
// an element of any of the three types as fp32, and fp32 into one (round to nearest even)
static __device__ inline float ldf(float x) { return x; }
static __device__ inline float ldf(bf16 x) { return __bfloat162float(x); }
static __device__ inline float ldf(f16 x) { return __half2float(x); }
template <typename T> __device__ inline T stf(float x);
template <> __device__ inline float stf<float>(float x) { return x; }
template <> __device__ inline bf16 stf<bf16>(float x) { return __float2bfloat16(x); }
template <> __device__ inline f16 stf<f16>(float x) { return __float2half(x); }

// stochastic rounding of x to bf16 with a uniform 16-bit value r: add r to the bits that are
// cut, truncate (unbiased: E[result] = x for finite x away from overflow)
static __device__ inline bf16 round_stochastic_bf16(float x, unsigned r) {
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

// DISPATCH_DT(dt, T, statements): the statements with the type T = float, bf16 or f16 for
// dt = CU_F32, CU_BF16, CU_F16 (an unknown dt is an internal error that exits). A kernel
// template of one type is launched as LAUNCH(kernel<T>, ...); one of two types through a
// pointer first: `auto *kfn = kernel<T, float>; LAUNCH(kfn, ...)`.
#define DISPATCH_DT(dt, T, ...)                                                                  \
    do {                                                                                         \
        switch (dt) {                                                                            \
        case 0: { typedef float T; __VA_ARGS__; } break;                                         \
        case 1: { typedef bf16 T; __VA_ARGS__; } break;                                          \
        case 2: { typedef f16 T; __VA_ARGS__; } break;                                           \
        default:                                                                                 \
            fprintf(stderr, "error: internal: unknown element type %d at %s:%d\n", (int)(dt), __FILE__, \
                    __LINE__);                                                                   \
            exit(EXIT_FAILURE);                                                                  \
        }                                                                                        \
    } while (0)

static __device__ inline float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ inline float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// Sum over the block (blockDim.x a multiple of 32, <= 1024); every thread gets the result.
// scratch: 32 floats of shared memory; safe to call repeatedly (the trailing barrier).
static __device__ inline float block_sum(float v, float *scratch) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = lane < nw ? scratch[lane] : 0.0f;
    r = warp_sum(r);
    __syncthreads();
    return r;
}
static __device__ inline float block_max(float v, float *scratch) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
    v = warp_max(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = lane < nw ? scratch[lane] : -FLT_MAX;
    r = warp_max(r);
    __syncthreads();
    return r;
}

#endif
