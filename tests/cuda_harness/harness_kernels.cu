// Kernels that exercise the CUDA-on-CPU harness itself (tests/test_cuda_harness.c): warp
// shuffles and votes, block reductions, shared memory poisoning, barrier errors, atomics, the
// WMMA model (tests/cuda_harness/wmma.h) and its errors.
// Plain CUDA: compiles with nvcc as well (and runs the same checks on a real GPU, except the
// error cases, which are undefined behaviour or hangs there).
#include <mma.h>

#include "../../model/cuda/cuda_common.cuh"
#include "harness_kernels.h"

namespace wmma = nvcuda::wmma;

// out[i] for 4 ops per thread: xor-sum, down-reduce, up-scan, width-8 broadcast of lane 3
__global__ void shuffle_kernel(int *out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    int lane = threadIdx.x % 32;
    int v = lane + 1;
    int x = v;
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    int d = v;
    for (int o = 16; o > 0; o >>= 1) d += __shfl_down_sync(0xffffffffu, d, o);
    int u = v;
    for (int o = 1; o < 32; o <<= 1) {
        int t = __shfl_up_sync(0xffffffffu, u, o);
        if (lane >= o) u += t;
    }
    int b = __shfl_sync(0xffffffffu, v * 10, 3, 8);
    float f = __shfl_xor_sync(0xffffffffu, (float)lane * 0.5f, 1);
    if (i < n) {
        out[5 * i + 0] = x;
        out[5 * i + 1] = d;
        out[5 * i + 2] = u;
        out[5 * i + 3] = b;
        out[5 * i + 4] = (int)(f * 2.0f);
    }
}

// ballot over the lanes that exist: block of `blockDim.x` threads, last warp partial
__global__ void ballot_kernel(unsigned *out) {
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int nl = blockDim.x - warp * 32;
    unsigned mask = nl >= 32 ? 0xffffffffu : ((1u << nl) - 1u);
    unsigned b = __ballot_sync(mask, lane % 3 == 0);
    int any = __any_sync(mask, lane == 2);
    int all = __all_sync(mask, lane < 40);
    if (lane == 0) {
        out[3 * warp + 0] = b;
        out[3 * warp + 1] = (unsigned)any;
        out[3 * warp + 2] = (unsigned)all;
    }
}

// per-block sums with block_sum (blockDim a multiple of 32)
__global__ void block_sum_kernel(float *out, const float *in, int n) {
    SHARED_ARRAY(float, scratch, 32);
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? in[i] : 0.0f;
    float s = block_sum(v, scratch);
    float m = block_max(v, scratch);
    if (threadIdx.x == 0) {
        out[2 * blockIdx.x] = s;
        out[2 * blockIdx.x + 1] = m;
    }
}

// BUG on purpose: reads shared memory that nobody wrote in this block
__global__ void read_before_write_kernel(float *out) {
    SHARED_ARRAY(float, buf, 64);
    float old = buf[threadIdx.x];
    buf[threadIdx.x] = (float)threadIdx.x;
    out[blockIdx.x * blockDim.x + threadIdx.x] = old;
}

// neighbour exchange through shared memory, with or without the barrier between write and read
__global__ void neighbour_kernel(float *out, int with_barrier) {
    SHARED_ARRAY(float, buf, 256);
    int t = threadIdx.x, n = blockDim.x;
    buf[t] = (float)(t + blockIdx.x);
    if (with_barrier) __syncthreads();
    float a = buf[(t + 1) % n], b = buf[(t + n - 1) % n];
    out[blockIdx.x * n + t] = a + b;
}

// reverse within the block through dynamic shared memory
__global__ void dyn_reverse_kernel(float *out, const float *in, int n) {
    DYNAMIC_SHARED(float, buf);
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    buf[threadIdx.x] = i < n ? in[i] : -1.0f;
    __syncthreads();
    float v = buf[blockDim.x - 1 - threadIdx.x];
    if (i < n) out[i] = v;
}

// histogram with atomics over a 2D grid and 2D blocks
__global__ void histogram_kernel(int *hist, const int *vals, int n, int nbins) {
    int tid = threadIdx.y * blockDim.x + threadIdx.x;
    int bid = blockIdx.y * gridDim.x + blockIdx.x;
    int i = bid * blockDim.x * blockDim.y + tid;
    if (i < n) atomicAdd(&hist[vals[i] % nbins], 1);
    if (i < n) atomicMax(&hist[nbins], vals[i]);
}

// BUG on purpose: half the block skips the barrier
__global__ void divergent_barrier_kernel(float *out) {
    if (threadIdx.x < 16) __syncthreads();
    out[threadIdx.x] = 1.0f;
}

// BUG on purpose: two different barriers
__global__ void two_barriers_kernel(float *out) {
    if (threadIdx.x % 2) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1.0f;
}

// BUG on purpose: one lane goes to a block barrier while its warp waits for it in a shuffle
__global__ void warp_deadlock_kernel(float *out) {
    float v = (float)threadIdx.x;
    if (threadIdx.x != 5) v += __shfl_xor_sync(0xffffffffu, v, 1);
    __syncthreads();
    out[threadIdx.x] = v;
}

// BUG on purpose: full mask in a partial warp (block of 40 threads)
__global__ void partial_mask_kernel(float *out) {
    float v = __shfl_down_sync(0xffffffffu, (float)threadIdx.x, 1);
    out[threadIdx.x] = v;
}

// ---- tensor cores (WMMA m16n16k16) -----------------------------------------------------------

// bf16 WMMA exists from sm_80 on (fp16 from sm_70): the bf16 kernel is empty below that
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define HK_BF16_WMMA 1
#else
#define HK_BF16_WMMA 0
#endif

// one warp: d = a b + c (16 x 16 x 16) through 32-byte aligned shared tiles. flags: 1 a is
// column-major in memory, 2 b column-major, 4 c column-major, 8 d stored column-major, 16 the a
// fragment filled with 0.1 (rounded to T) instead of loaded
template <typename T, typename LA, typename LB>
__device__ void wmma_product(float *out, const T *a, const T *b, const float *c, int flags) {
    SHARED_ARRAY_ALIGNED(T, As, 256, 32);
    SHARED_ARRAY_ALIGNED(T, Bs, 256, 32);
    SHARED_ARRAY_ALIGNED(float, Cs, 256, 32);
    for (int i = threadIdx.x; i < 256; i += 32) As[i] = a[i], Bs[i] = b[i], Cs[i] = c[i];
    __syncwarp();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LA> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LB> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    if (flags & 16) wmma::fill_fragment(fa, stf<T>(0.1f));
    else wmma::load_matrix_sync(fa, As, 16);
    wmma::load_matrix_sync(fb, Bs, 16);
    wmma::load_matrix_sync(fc, Cs, 16, (flags & 4) ? wmma::mem_col_major : wmma::mem_row_major);
    wmma::mma_sync(fc, fa, fb, fc);
    __syncwarp();  // every lane has read Cs before it is overwritten
    wmma::store_matrix_sync(Cs, fc, 16, (flags & 8) ? wmma::mem_col_major : wmma::mem_row_major);
    __syncwarp();
    for (int i = threadIdx.x; i < 256; i += 32) out[i] = Cs[i];
}
template <typename T> __device__ void wmma_product_any(float *out, const T *a, const T *b, const float *c, int flags) {
    if (flags & 1) {
        if (flags & 2) wmma_product<T, wmma::col_major, wmma::col_major>(out, a, b, c, flags);
        else wmma_product<T, wmma::col_major, wmma::row_major>(out, a, b, c, flags);
    } else {
        if (flags & 2) wmma_product<T, wmma::row_major, wmma::col_major>(out, a, b, c, flags);
        else wmma_product<T, wmma::row_major, wmma::row_major>(out, a, b, c, flags);
    }
}
__global__ void wmma_product_f16_kernel(float *out, const f16 *a, const f16 *b, const float *c, int flags) {
    wmma_product_any<f16>(out, a, b, c, flags);
}
__global__ void wmma_product_bf16_kernel(float *out, const bf16 *a, const bf16 *b, const float *c, int flags) {
#if HK_BF16_WMMA
    wmma_product_any<bf16>(out, a, b, c, flags);
#endif
}

// every lane stores its part of a 2.0-filled accumulator, then reads the WHOLE tile; without
// the __syncwarp in between it reads elements other lanes have not stored yet (a bug on purpose)
__global__ void wmma_store_race_kernel(float *out, int with_syncwarp) {
    SHARED_ARRAY_ALIGNED(float, Cs, 256, 32);
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    wmma::fill_fragment(fc, 2.0f);
    wmma::store_matrix_sync(Cs, fc, 16, wmma::mem_row_major);
    if (with_syncwarp) __syncwarp();
    float s = 0.0f;
    for (int i = 0; i < 256; i++) s += Cs[i];
    out[threadIdx.x] = s;
}

// BUG on purpose: lanes 0-15 fill the accumulator while lanes 16-31 load it
__global__ void wmma_divergent_kernel(float *out) {
    SHARED_ARRAY_ALIGNED(float, Cs, 256, 32);
    for (int i = threadIdx.x; i < 256; i += 32) Cs[i] = 1.0f;
    __syncwarp();
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    if (threadIdx.x < 16) wmma::fill_fragment(fc, 0.0f);
    else wmma::load_matrix_sync(fc, Cs, 16, wmma::mem_row_major);
    __syncwarp();
    wmma::store_matrix_sync(Cs, fc, 16, wmma::mem_row_major);
    __syncwarp();
    out[threadIdx.x] = Cs[threadIdx.x];
}

// the a tile of wmma_bad_kernel, loaded with a bad argument (a bug on purpose)
//   mode 0: ldm 12 (not a multiple of 8 halves); 1: pointer 16 bytes past a 32-byte boundary;
//   2: a plain SHARED_ARRAY (only 16-byte aligned); 3: a different pointer in odd lanes
__global__ void wmma_bad_kernel(float *out, int mode) {
    SHARED_ARRAY_ALIGNED(f16, As, 1024, 32);
    SHARED_ARRAY(f16, Plain, 256);
    for (int i = threadIdx.x; i < 1024; i += 32) As[i] = stf<f16>(1.0f);
    for (int i = threadIdx.x; i < 256; i += 32) Plain[i] = stf<f16>(1.0f);
    __syncwarp();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, f16, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, f16, wmma::row_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    const f16 *p = As;
    unsigned ldm = 16;
    if (mode == 0) ldm = 12;
    if (mode == 1) p = As + 8;
    if (mode == 2) p = Plain;
    if (mode == 3) p = As + 16 * (threadIdx.x % 2), ldm = 32;
    wmma::load_matrix_sync(fa, p, ldm);
    wmma::load_matrix_sync(fb, As, 16);
    wmma::fill_fragment(fc, 0.0f);
    wmma::mma_sync(fc, fa, fb, fc);
    SHARED_ARRAY_ALIGNED(float, Cs, 256, 32);
    wmma::store_matrix_sync(Cs, fc, 16, wmma::mem_row_major);
    __syncwarp();
    out[threadIdx.x] = Cs[threadIdx.x];
}

// BUG on purpose: a wmma operation in a block of 48 threads (warp 1 has 16 lanes)
__global__ void wmma_partial_warp_kernel(float *out) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
    wmma::fill_fragment(fc, 1.0f);
    out[threadIdx.x] = 1.0f;
}

#if defined(MOE_CUDA_HARNESS)
// BUG on purpose (harness only: nvcc warns about recursion): overflows a 64 KiB fiber stack
static __device__ __attribute__((noinline)) int deep_recursion(int n) {
    volatile char buf[1024];
    buf[0] = (char)n;
    return n ? deep_recursion(n - 1) + buf[0] : 0;
}
__global__ void stack_overflow_kernel(int *out) { out[threadIdx.x] = deep_recursion(10000); }
extern "C" void hk_stack_overflow(int *out) { LAUNCH(stack_overflow_kernel, 1, 32, 0, 0, out); }
#endif

extern "C" {
void hk_shuffle(int *out, int n, int block) { LAUNCH(shuffle_kernel, ceil_div(n, block), block, 0, 0, out, n); }
void hk_ballot(unsigned *out, int block) { LAUNCH(ballot_kernel, 1, block, 0, 0, out); }
void hk_block_sum(float *out, const float *in, int n, int block) {
    LAUNCH(block_sum_kernel, ceil_div(n, block), block, 0, 0, out, in, n);
}
void hk_read_before_write(float *out, int nblocks) { LAUNCH(read_before_write_kernel, nblocks, 64, 0, 0, out); }
void hk_neighbour(float *out, int nblocks, int block, int with_barrier) {
    LAUNCH(neighbour_kernel, nblocks, block, 0, 0, out, with_barrier);
}
void hk_dyn_reverse(float *out, const float *in, int n, int block) {
    LAUNCH(dyn_reverse_kernel, ceil_div(n, block), block, sizeof(float) * block, 0, out, in, n);
}
void hk_histogram(int *hist, const int *vals, int n, int nbins) {
    dim3 block(8, 4), grid(3, ceil_div(n, 3 * 32));
    LAUNCH(histogram_kernel, grid, block, 0, 0, hist, vals, n, nbins);
}
void hk_divergent_barrier(float *out) { LAUNCH(divergent_barrier_kernel, 1, 32, 0, 0, out); }
void hk_two_barriers(float *out) { LAUNCH(two_barriers_kernel, 1, 32, 0, 0, out); }
void hk_warp_deadlock(float *out) { LAUNCH(warp_deadlock_kernel, 1, 64, 0, 0, out); }
void hk_partial_mask(float *out) { LAUNCH(partial_mask_kernel, 1, 40, 0, 0, out); }
void hk_bad_launch(float *out) { LAUNCH(divergent_barrier_kernel, 1, 2048, 0, 0, out); }
void hk_wmma_product(float *out, const uint16_t *a, const uint16_t *b, const float *c, int is_bf16, int flags) {
    if (is_bf16) LAUNCH(wmma_product_bf16_kernel, 1, 32, 0, 0, out, (const bf16 *)a, (const bf16 *)b, c, flags);
    else LAUNCH(wmma_product_f16_kernel, 1, 32, 0, 0, out, (const f16 *)a, (const f16 *)b, c, flags);
}
void hk_wmma_store_race(float *out, int with_syncwarp) { LAUNCH(wmma_store_race_kernel, 1, 32, 0, 0, out, with_syncwarp); }
void hk_wmma_divergent(float *out) { LAUNCH(wmma_divergent_kernel, 1, 32, 0, 0, out); }
void hk_wmma_bad_ldm(float *out) { LAUNCH(wmma_bad_kernel, 1, 32, 0, 0, out, 0); }
void hk_wmma_misaligned(float *out) { LAUNCH(wmma_bad_kernel, 1, 32, 0, 0, out, 1); }
void hk_wmma_plain_shared(float *out) { LAUNCH(wmma_bad_kernel, 1, 32, 0, 0, out, 2); }
void hk_wmma_nonuniform(float *out) { LAUNCH(wmma_bad_kernel, 1, 32, 0, 0, out, 3); }
void hk_wmma_partial_warp(float *out) { LAUNCH(wmma_partial_warp_kernel, 1, 48, 0, 0, out); }
}
