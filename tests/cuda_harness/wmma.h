// CUDA-on-CPU harness: a model of the WMMA subset of <mma.h> (namespace nvcuda::wmma) that the
// project uses, included by cuda_harness.h (the real <mma.h> declares nothing outside nvcc).
//
// Modelled, exactly these and nothing else (anything else is a compile error):
//   fragment<matrix_a, 16, 16, 16, T, row_major | col_major>     T = __half or __nv_bfloat16
//   fragment<matrix_b, 16, 16, 16, T, row_major | col_major>
//   fragment<accumulator, 16, 16, 16, float>
//   fill_fragment(f, v)                                            any of the three
//   load_matrix_sync(a_or_b, const T *p, unsigned ldm)
//   load_matrix_sync(acc, const float *p, unsigned ldm, layout_t)  mem_row_major | mem_col_major
//   mma_sync(d, a, b, c)                                            d = a b + c (d may be c)
//   store_matrix_sync(float *p, acc, unsigned ldm, layout_t)
// Rules the GPU imposes and this model enforces (a violation fails the launch with one line):
//   - warp-collective: every call is a warp operation of all 32 lanes of the warp, from the same
//     call site, with the same pointer, ldm, layout and fill value in every lane (a divergent
//     call, a partial warp, an exited lane or differing arguments fail);
//   - load / store: the pointer 32-byte (256-bit) aligned, ldm a multiple of 8 elements for
//     __half / __nv_bfloat16 and of 4 for float (16 bytes).
// Numerics: a and b hold their element type's values (fill_fragment rounds to nearest even);
// every product of two 16-bit values is exact in fp32; mma_sync adds the 16 products of each
// output to the accumulator one after another in k order, in fp32. (On the GPU the order and
// the internal precision of that sum are unspecified: tests need fp32-accumulation tolerances,
// not bit equality.)
// Element layout: opaque to the program (fragment.x[] / num_elements are not provided), so each
// lane's fragment holds the whole 16x16 tile. load_matrix_sync reads the tile in each lane when
// that lane resumes; store_matrix_sync writes from each lane only the elements that lane holds
// on the GPU (row g or g+8, columns 2t, 2t+1, 2t+8, 2t+9 for lane 4g+t: the m16n8k16 accumulator
// layout), each lane at its own time, so a lane that reads elements another lane stored without
// a __syncwarp / __syncthreads in between reads poison. A fragment is NaN until written.
#ifndef MOE_HX_WMMA_H
#define MOE_HX_WMMA_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace nvcuda {
namespace wmma {

struct row_major;
struct col_major;
struct matrix_a;
struct matrix_b;
struct accumulator;
enum layout_t { mem_row_major, mem_col_major };

// ---- internals (moe_hx_ prefix) --------------------------------------------------------------

// the 16-bit operand types; any other T has no definition and does not compile
template <typename T> struct moe_hx_ab;
template <> struct moe_hx_ab<__half> {
    static float ld(__half x) { return __half2float(x); }
};
template <> struct moe_hx_ab<__nv_bfloat16> {
    static float ld(__nv_bfloat16 x) { return __bfloat162float(x); }
};
// the operand layouts; no other layout (void, a layout_t) compiles
template <typename L> struct moe_hx_layout;
template <> struct moe_hx_layout<row_major> { enum { col = 0 }; };
template <> struct moe_hx_layout<col_major> { enum { col = 1 }; };
// a non-deduced context (the fill value converts to the fragment's element type)
template <typename T> struct moe_hx_ident { typedef T type; };

struct moe_hx_tile {
    float v[16][16];  // [row][col] of the 16x16 tile (a: [m][k], b: [k][n], accumulator: [m][n])
    moe_hx_tile() {
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 16; j++) v[i][j] = __builtin_nanf("");
    }
};

static inline int moe_hx_lane(void) {
    unsigned linear = moe_hx_state.tid.x + moe_hx_state.bdim.x * (moe_hx_state.tid.y + moe_hx_state.bdim.y * moe_hx_state.tid.z);
    return (int)(linear % 32u);
}
static inline void moe_hx_check_mem(const void *p, unsigned ldm, unsigned elem_bytes, const char *what,
                                    const char *file, int line) {
    if ((uintptr_t)p % 32u != 0)
        moe_hx_kernel_error(file, line, "wmma::%s: pointer %p is not 32-byte aligned (the GPU requires 256-bit "
                            "alignment; shared tiles need SHARED_ARRAY_ALIGNED(..., 32))", what, p);
    unsigned mult = 16u / elem_bytes;
    if (ldm == 0 || ldm % mult != 0)
        moe_hx_kernel_error(file, line, "wmma::%s: ldm %u is not a multiple of %u elements (16 bytes) of %u-byte "
                            "elements", what, ldm, mult, elem_bytes);
}

// ---- fragments ---------------------------------------------------------------------------------

template <typename Use, int m, int n, int k, typename T, typename Layout = void> class fragment;  // only these:

template <typename T, typename L> class fragment<matrix_a, 16, 16, 16, T, L> {
    static_assert(sizeof(moe_hx_ab<T>) > 0 && moe_hx_layout<L>::col >= 0, "wmma: modelled operands: __half, __nv_bfloat16");
  public:
    moe_hx_tile moe_hx_t;
};
template <typename T, typename L> class fragment<matrix_b, 16, 16, 16, T, L> {
    static_assert(sizeof(moe_hx_ab<T>) > 0 && moe_hx_layout<L>::col >= 0, "wmma: modelled operands: __half, __nv_bfloat16");
  public:
    moe_hx_tile moe_hx_t;
};
template <> class fragment<accumulator, 16, 16, 16, float, void> {
  public:
    moe_hx_tile moe_hx_t;
};

// ---- operations ----------------------------------------------------------------------------------

template <typename T, typename L>
static inline void fill_fragment(fragment<matrix_a, 16, 16, 16, T, L> &f, const typename moe_hx_ident<T>::type &v,
                                 const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    float x = moe_hx_ab<T>::ld(v);
    uint32_t bits;
    memcpy(&bits, &x, 4);
    moe_hx_warp_op(MOE_HX_OP_WMMA_FILL, 0xffffffffu, bits, 1, 32, file, line);
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) f.moe_hx_t.v[i][j] = x;
}
template <typename T, typename L>
static inline void fill_fragment(fragment<matrix_b, 16, 16, 16, T, L> &f, const typename moe_hx_ident<T>::type &v,
                                 const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    float x = moe_hx_ab<T>::ld(v);
    uint32_t bits;
    memcpy(&bits, &x, 4);
    moe_hx_warp_op(MOE_HX_OP_WMMA_FILL, 0xffffffffu, bits, 2, 32, file, line);
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) f.moe_hx_t.v[i][j] = x;
}
static inline void fill_fragment(fragment<accumulator, 16, 16, 16, float> &f, float v,
                                 const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    uint32_t bits;
    memcpy(&bits, &v, 4);
    moe_hx_warp_op(MOE_HX_OP_WMMA_FILL, 0xffffffffu, bits, 3, 32, file, line);
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) f.moe_hx_t.v[i][j] = v;
}

// a (m, k): row_major p[m * ldm + k], col_major p[k * ldm + m]
template <typename T, typename L>
static inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, L> &a, const T *p, unsigned ldm,
                                    const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    moe_hx_check_mem(p, ldm, (unsigned)sizeof(T), "load_matrix_sync", file, line);
    moe_hx_warp_op(MOE_HX_OP_WMMA_LOAD_A, 0xffffffffu, (uint64_t)(uintptr_t)p, (int)ldm, 32, file, line);
    for (int i = 0; i < 16; i++)
        for (int k = 0; k < 16; k++)
            a.moe_hx_t.v[i][k] = moe_hx_ab<T>::ld(moe_hx_layout<L>::col ? p[(size_t)k * ldm + i] : p[(size_t)i * ldm + k]);
}
// b (k, n): row_major p[k * ldm + n], col_major p[n * ldm + k]
template <typename T, typename L>
static inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, L> &b, const T *p, unsigned ldm,
                                    const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    moe_hx_check_mem(p, ldm, (unsigned)sizeof(T), "load_matrix_sync", file, line);
    moe_hx_warp_op(MOE_HX_OP_WMMA_LOAD_B, 0xffffffffu, (uint64_t)(uintptr_t)p, (int)ldm, 32, file, line);
    for (int k = 0; k < 16; k++)
        for (int j = 0; j < 16; j++)
            b.moe_hx_t.v[k][j] = moe_hx_ab<T>::ld(moe_hx_layout<L>::col ? p[(size_t)j * ldm + k] : p[(size_t)k * ldm + j]);
}
static inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &c, const float *p, unsigned ldm,
                                    layout_t layout, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    moe_hx_check_mem(p, ldm, 4u, "load_matrix_sync", file, line);
    moe_hx_warp_op(MOE_HX_OP_WMMA_LOAD_C, 0xffffffffu, (uint64_t)(uintptr_t)p, (int)(ldm * 2u + (layout == mem_col_major)),
                   32, file, line);
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++)
            c.moe_hx_t.v[i][j] = layout == mem_col_major ? p[(size_t)j * ldm + i] : p[(size_t)i * ldm + j];
}

template <typename T, typename LA, typename LB>
static inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d, const fragment<matrix_a, 16, 16, 16, T, LA> &a,
                            const fragment<matrix_b, 16, 16, 16, T, LB> &b,
                            const fragment<accumulator, 16, 16, 16, float> &c, const char *file = __builtin_FILE(),
                            int line = __builtin_LINE()) {
    moe_hx_warp_op(MOE_HX_OP_WMMA_MMA, 0xffffffffu, 0, 0, 32, file, line);
    moe_hx_tile r;
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            float s = c.moe_hx_t.v[i][j];
            // the product of two 16-bit values is exact in fp32 (away from fp32 underflow), so a
            // contraction to fmaf gives the same sum
            for (int k = 0; k < 16; k++) s += a.moe_hx_t.v[i][k] * b.moe_hx_t.v[k][j];
            r.v[i][j] = s;
        }
    d.moe_hx_t = r;  // d may be c
}

static inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &c, unsigned ldm,
                                     layout_t layout, const char *file = __builtin_FILE(), int line = __builtin_LINE()) {
    moe_hx_check_mem(p, ldm, 4u, "store_matrix_sync", file, line);
    moe_hx_warp_op(MOE_HX_OP_WMMA_STORE, 0xffffffffu, (uint64_t)(uintptr_t)p, (int)(ldm * 2u + (layout == mem_col_major)),
                   32, file, line);
    int lane = moe_hx_lane(), g = lane / 4, t = lane % 4;
    for (int hi = 0; hi < 2; hi++)
        for (int q = 0; q < 4; q++) {
            int i = g + 8 * hi, j = 2 * t + (q & 1) + 8 * (q >> 1);
            size_t idx = layout == mem_col_major ? (size_t)j * ldm + i : (size_t)i * ldm + j;
            p[idx] = c.moe_hx_t.v[i][j];
        }
}

}  // namespace wmma
}  // namespace nvcuda

#endif
