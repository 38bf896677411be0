// CUDA-on-CPU harness: compiles unmodified project .cu files as host C++ and runs their
// kernels on the CPU. Included BEFORE any CUDA header (g++ -include), for example:
//   g++ -x c++ -std=c++17 -DMOE_CUDA_HARNESS -include tests/cuda_harness/cuda_harness.h
//       -I/usr/local/cuda/include -c model/cuda/x.cu
// The CUDA headers define __device__/__global__/__host__ only where they are not defined yet
// (crt/host_defines.h), so defining them here first makes them host code; cuda_bf16.h then
// gives host-side bf16 conversions.
//
// Model of execution (one launch at a time, synchronous):
//   - blocks run one after another (blockIdx.x fastest);
//   - the threads of a block are cooperative fibers (ucontext, one stack each) scheduled
//     round-robin; a thread runs until it reaches a synchronisation point (__syncthreads,
//     __syncwarp, a shuffle, a vote) or exits. The round-robin direction alternates from one
//     launch to the next (forward, reverse), so a missing barrier between a write by one thread
//     and a read by a neighbour shows up in one of two consecutive launches;
//   - warps are lanes 32w..32w+31 of the linear thread index; a warp operation waits for every
//     lane named in its mask, and all of them must call the same kind of operation with the
//     same mask, else the launch fails;
//   - shared memory (SHARED_ARRAY / SHARED_ARRAY2 / DYNAMIC_SHARED, see below) is fresh for every
//     block and filled with 0xFF bytes (a NaN for float, -1 for int): a kernel that reads shared
//     memory before writing it gives NaN / garbage, not a plausible value left by the previous
//     block. Its alignment is what a GPU guarantees: 16 bytes and deliberately never 32, unless
//     declared with SHARED_ARRAY_ALIGNED / SHARED_ARRAY2_ALIGNED (the alignment asked);
//   - tensor cores: the WMMA subset of wmma.h (nvcuda::wmma, m16n16k16, __half / __nv_bfloat16
//     operands, fp32 accumulators; fill_fragment, load_matrix_sync, mma_sync, store_matrix_sync).
//     Each call is a warp operation of the whole warp (all 32 lanes, the same call site, the same
//     pointer, ldm, layout and fill value, else the launch fails); load/store check the 32-byte
//     pointer alignment and the ldm rule (a multiple of 8 elements for 16-bit types, of 4 for
//     float) and fail loudly when violated. Every lane's fragment holds the whole 16x16 tile
//     (the element layout is opaque to the program); mma_sync sums the 16 exact products of each
//     output in k order in fp32 onto the accumulator; store_matrix_sync writes from each lane
//     only the elements that lane holds on the GPU (the m16n8k16 accumulator layout), each lane
//     at its own time, so reading another lane's part without __syncwarp shows up. Unfilled
//     fragments are NaN;
//   - atomics are plain read-modify-write (fibers never interleave inside one);
//   - errors (a barrier that some threads never reach, threads exiting while others wait at
//     __syncthreads, divergent warp operations, too many threads, too much shared memory) print
//     one line naming the kernel, its launch site and the barrier site, then abort(); tests of
//     the harness switch this to "record and return" with moe_hx_set_error_mode(1).
// What it does NOT model: data races between threads between two synchronisation points (a
// non-atomic read-modify-write by many threads looks atomic here), memory ordering / fences,
// warp-synchronous code without __syncwarp, streams (everything is synchronous), textures,
// cooperative groups, clusters, async copies, tensor cores beyond the WMMA subset above (other
// shapes, int8 / tf32 / fp64 / sub-byte / half-accumulator fragments, fragment element access
// (x[], num_elements), mma.sync / wgmma PTX), and the GPU's own order and internal precision of
// the sum inside one mma_sync (a test of tensor-core code needs a tolerance for any fp32 order).
// Any such construct without a definition here is a compile or link error, never a silent pass.
#ifndef MOE_CUDA_HARNESS_H
#define MOE_CUDA_HARNESS_H

#ifdef __CUDACC__
#error "cuda_harness.h is for g++ builds of .cu files; nvcc must not include it"
#endif
#ifndef __cplusplus
#error "cuda_harness.h must be compiled as C++ (g++ -x c++)"
#endif
#ifndef MOE_CUDA_HARNESS
#define MOE_CUDA_HARNESS 1
#endif

#define __global__
#define __device__
#define __host__
// Raw __shared__ is not modelled (static variables would persist between blocks and escape
// poisoning): use SHARED_ARRAY / SHARED_ARRAY2 / DYNAMIC_SHARED from model/cuda/cuda_common.cuh.
#define __shared__ __shared___is_not_modelled_by_the_harness_use_SHARED_ARRAY
#define __constant__ __constant___is_not_modelled_by_the_harness
#define __managed__ __managed___is_not_modelled_by_the_harness

#include <cuda_runtime.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

// ---------------------------------------------------------------------------------------
// Built-in variables: the state of the fiber that is running.

struct MoeHxThreadState {
    uint3 tid, bid;
    dim3 bdim, gdim;
};
extern thread_local MoeHxThreadState moe_hx_state;
#define threadIdx (moe_hx_state.tid)
#define blockIdx (moe_hx_state.bid)
#define blockDim (moe_hx_state.bdim)
#define gridDim (moe_hx_state.gdim)
#define warpSize 32

// ---------------------------------------------------------------------------------------
// Synchronisation and warp operations (implemented in harness.cc).

enum { MOE_HX_OP_SYNCWARP = 1, MOE_HX_OP_SHFL, MOE_HX_OP_SHFL_XOR, MOE_HX_OP_SHFL_DOWN, MOE_HX_OP_SHFL_UP,
       MOE_HX_OP_BALLOT,
       // wmma.h; from MOE_HX_OP_WMMA_FILL on: full mask, the same call site and the same value / arg
       // in every lane
       MOE_HX_OP_WMMA_FILL, MOE_HX_OP_WMMA_LOAD_A, MOE_HX_OP_WMMA_LOAD_B, MOE_HX_OP_WMMA_LOAD_C, MOE_HX_OP_WMMA_MMA,
       MOE_HX_OP_WMMA_STORE };

void moe_hx_syncthreads(const char *file, int line);
// One warp operation: publishes 8 bytes and a predicate, waits for the lanes of mask, returns
// the 8 bytes of the source lane (shuffles) or the ballot (votes).
uint64_t moe_hx_warp_op(int op, unsigned mask, uint64_t value, int arg, int width, const char *file, int line);
// an error of a device-side operation modelled in a header (wmma.h): fails the launch like the
// scheduler's errors; the calling thread does not return
void moe_hx_kernel_error(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define __syncthreads() moe_hx_syncthreads(__FILE__, __LINE__)
#define __syncwarp(...) moe_hx_syncwarp_(__FILE__, __LINE__, moe_hx_mask_(__VA_ARGS__))
static inline unsigned moe_hx_mask_(unsigned mask = 0xffffffffu) { return mask; }
static inline void moe_hx_syncwarp_(const char *file, int line, unsigned mask) {
    moe_hx_warp_op(MOE_HX_OP_SYNCWARP, mask, 0, 0, 32, file, line);
}

template <typename T>
static inline T moe_hx_shfl_(int op, unsigned mask, T var, int arg, int width, const char *file, int line) {
    static_assert(sizeof(T) <= 8, "shuffle of a type larger than 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &var, sizeof(T));
    bits = moe_hx_warp_op(op, mask, bits, arg, width, file, line);
    T out;
    memcpy(&out, &bits, sizeof(T));
    return out;
}
#define __shfl_sync(mask, var, src, ...) moe_hx_shfl_(MOE_HX_OP_SHFL, (mask), (var), (src), moe_hx_width_(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_xor_sync(mask, var, lm, ...) moe_hx_shfl_(MOE_HX_OP_SHFL_XOR, (mask), (var), (lm), moe_hx_width_(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_down_sync(mask, var, d, ...) moe_hx_shfl_(MOE_HX_OP_SHFL_DOWN, (mask), (var), (d), moe_hx_width_(__VA_ARGS__), __FILE__, __LINE__)
#define __shfl_up_sync(mask, var, d, ...) moe_hx_shfl_(MOE_HX_OP_SHFL_UP, (mask), (var), (d), moe_hx_width_(__VA_ARGS__), __FILE__, __LINE__)
static inline int moe_hx_width_(int w = 32) { return w; }
#define __ballot_sync(mask, pred) \
    ((unsigned)moe_hx_warp_op(MOE_HX_OP_BALLOT, (mask), (pred) ? 1u : 0u, 0, 32, __FILE__, __LINE__))
#define __any_sync(mask, pred) (__ballot_sync((mask), (pred)) != 0u)
#define __all_sync(mask, pred) (__ballot_sync((mask), (pred)) == (mask))
// the lanes of the calling warp that exist and have not exited
unsigned moe_hx_activemask(void);
#define __activemask() moe_hx_activemask()

// ---------------------------------------------------------------------------------------
// Shared memory. key: the address of a static marker unique to the declaration site, so all
// threads of a block get the same buffer; fresh (poisoned) for each block.

void *moe_hx_shared_alloc(const void *key, size_t bytes, const char *file, int line);
// the same with an alignment in bytes (a power of two, 16..256)
void *moe_hx_shared_alloc_aligned(const void *key, size_t bytes, size_t align, const char *file, int line);
void *moe_hx_dynamic_shared(void);
#define SHARED_ARRAY(type, name, n)  \
    static const char moe_hx_key_##name = 0; \
    type *name = (type *)moe_hx_shared_alloc(&moe_hx_key_##name, sizeof(type) * (size_t)(n), __FILE__, __LINE__)
#define SHARED_ARRAY2(type, name, n0, n1) \
    static const char moe_hx_key_##name = 0; \
    type(*name)[n1] = (type(*)[n1])moe_hx_shared_alloc(&moe_hx_key_##name, sizeof(type) * (size_t)(n0) * (n1), __FILE__, __LINE__)
#define DYNAMIC_SHARED(type, name) type *name = (type *)moe_hx_dynamic_shared()
#define SHARED_ARRAY_ALIGNED(type, name, n, align) \
    static const char moe_hx_key_##name = 0; \
    type *name = (type *)moe_hx_shared_alloc_aligned(&moe_hx_key_##name, sizeof(type) * (size_t)(n), (align), __FILE__, __LINE__)
#define SHARED_ARRAY2_ALIGNED(type, name, n0, n1, align) \
    static const char moe_hx_key_##name = 0; \
    type(*name)[n1] = (type(*)[n1])moe_hx_shared_alloc_aligned(&moe_hx_key_##name, sizeof(type) * (size_t)(n0) * (n1), (align), __FILE__, __LINE__)

// ---------------------------------------------------------------------------------------
// Atomics (fibers are cooperative: a read-modify-write is never interleaved).

template <typename T> static inline T atomicAdd(T *p, T v) { T old = *p; *p = old + v; return old; }
template <typename T> static inline T atomicSub(T *p, T v) { T old = *p; *p = old - v; return old; }
template <typename T> static inline T atomicMax(T *p, T v) { T old = *p; *p = old > v ? old : v; return old; }
template <typename T> static inline T atomicMin(T *p, T v) { T old = *p; *p = old < v ? old : v; return old; }
template <typename T> static inline T atomicExch(T *p, T v) { T old = *p; *p = v; return old; }
template <typename T> static inline T atomicCAS(T *p, T cmp, T v) { T old = *p; if (old == cmp) *p = v; return old; }

// ---------------------------------------------------------------------------------------
// Device intrinsics that glibc lacks (the CUDA math headers declare them for nvcc only).

static inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
#define __expf(x) expf(x)  // glibc declares its own __expf/__logf: macros, not functions
#define __logf(x) logf(x)
static inline float __fdividef(float a, float b) { return a / b; }
static inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
static inline int __float_as_int(float x) { int i; memcpy(&i, &x, 4); return i; }
static inline float __int_as_float(int i) { float x; memcpy(&x, &i, 4); return x; }
static inline unsigned __float_as_uint(float x) { unsigned i; memcpy(&i, &x, 4); return i; }
static inline float __uint_as_float(unsigned i) { float x; memcpy(&x, &i, 4); return x; }
static inline int __popc(unsigned x) { return __builtin_popcount(x); }
static inline int __ffs(int x) { return __builtin_ffs(x); }
static inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
template <typename T> static inline T __ldg(const T *p) { return *p; }

// ---------------------------------------------------------------------------------------
// Launch: the project's LAUNCH macro (model/cuda/cuda_common.cuh) expands to this.

typedef void (*MoeHxFn)(void *);
void moe_hx_launch_impl(const char *kernel, const char *file, int line, dim3 grid, dim3 block, size_t smem,
                        MoeHxFn fn, void *arg);
template <typename F> static void moe_hx_call_(void *f) { (*(F *)f)(); }
template <typename F>
static inline void moe_hx_launch(const char *kernel, const char *file, int line, dim3 grid, dim3 block, size_t smem,
                                 F f) {
    moe_hx_launch_impl(kernel, file, line, grid, block, smem, moe_hx_call_<F>, (void *)&f);
}

// ---------------------------------------------------------------------------------------
// Control for tests of the harness itself.

// mode 0 (default): print the error and abort(); mode 1: record it, stop the launch, return.
extern "C" void moe_hx_set_error_mode(int record);
// the last recorded error ("" when none); cleared by moe_hx_clear_error
extern "C" const char *moe_hx_last_error(void);
extern "C" void moe_hx_clear_error(void);
// number of kernel launches so far, and fiber context switches (for timing reports)
extern "C" long moe_hx_launch_count(void);
extern "C" long moe_hx_switch_count(void);

// ---------------------------------------------------------------------------------------
// Tensor cores: the WMMA subset (nvcuda::wmma; <mma.h> declares nothing outside nvcc).
#include "wmma.h"

#endif
