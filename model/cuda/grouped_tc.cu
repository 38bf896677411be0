// Tensor-core grouped GEMMs of the MoE experts (interface and semantics: grouped_tc.h, the same
// as cu_grouped_matmul_forward / _backward of cuda_ops.h) for bf16 / fp16 operands with fp32
// accumulation, on nvcuda::wmma m16n16k16 fragments.
//
// One kernel template, three GEMMs. Block tile 64 x 64 outputs, 4 warps in 2 x 2, each warp 32 x
// 32 outputs = 2 x 2 accumulator fragments; k in steps of 32 through shared memory:
//   forward  out (rows, OC)   = inp (rows, IC) @ W_e^T    M rows of the expert, N = OC, K = IC
//   dinp     dinp (rows, IC) += dout (rows, OC) @ W_e      M rows of the expert, N = IC, K = OC
//   wgrad    dW_e (OC, IC)   += dout_e^T @ inp_e           M = OC, N = IC, K = the expert's rows
// grid (N tiles, M tiles, E); blockIdx.z is the expert, whose row block [off[e], off[e+1]) is read
// on the device (a block past the expert's rows leaves at once, all its threads together).
// Global -> shared: every operand tile is a block of a row-major matrix copied into a
// [rows][cols + 8] tile (bounds-checked, zero-padded, so rows, IC, OC and the offsets need no
// alignment; 16-byte vector copies when the row length is a multiple of 8 and the base 16-byte
// aligned). The fragment layouts read those tiles as they are:
//   forward  a = inp tile [m][k] row_major,  b = W tile [n][k] col_major
//   dinp     a = dout tile [m][k] row_major, b = W tile [k][n] row_major
//   wgrad    a = dout tile [k][m] col_major, b = inp tile [k][n] row_major
// Epilogue: each accumulator fragment goes to a per-warp 16 x 16 fp32 staging tile, then every
// lane writes 8 outputs of it to global memory, bounds-checked (forward: written in out_dt;
// dinp, dW: += in fp32). Every output element belongs to one thread of the grid: deterministic,
// no atomics. Shared memory: 15 KiB per block (two 5 KiB operand tiles, 5 KiB of staging).
// bf16 WMMA needs sm_80: the bf16 kernels are empty in the sm_75 image and
// cu_grouped_tc_available(CU_BF16) is 0 there.
#include <mma.h>

#include "cuda_common.cuh"
#include "cuda_ops.h"
#include "grouped_tc.h"

namespace wmma = nvcuda::wmma;

#define TC_BM 64        // block tile rows (M)
#define TC_BN 64        // block tile columns (N)
#define TC_BK 32        // k step through shared memory
#define TC_PAD 8        // elements of padding per shared row (ldm stays a multiple of 8; rows shift banks)
#define TC_THREADS 128  // 4 warps (2 x 2), 32 x 32 outputs each
#define TC_SLD 20       // ldm (floats) of a warp's 16 x 16 staging tile (a multiple of 4)
#define TC_TILE 2560    // elements of an operand tile: max(64 * (32 + 8), 32 * (64 + 8))

enum { TC_FWD = 0, TC_DINP = 1, TC_WGRAD = 2 };

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define TC_HAS_BF16 0
#else
#define TC_HAS_BF16 1
#endif
template <typename T> __host__ __device__ constexpr bool tc_is_bf16() { return false; }
template <> __host__ __device__ constexpr bool tc_is_bf16<bf16>() { return true; }

// 16 bytes, both addresses 16-byte aligned
static __device__ inline void tc_copy16(void *dst, const void *src) {
#if defined(MOE_CUDA_HARNESS)
    if (((uintptr_t)dst | (uintptr_t)src) % 16u != 0)
        moe_hx_kernel_error(__FILE__, __LINE__, "16-byte copy from %p to %p is misaligned", src, dst);
    memcpy(dst, src, 16);  // (a uint4 access through a T pointer would break g++'s aliasing rules)
#else
    *(uint4 *)dst = *(const uint4 *)src;
#endif
}

// s[i][j] (R x C, row stride C + TC_PAD) = g[(row0 + i) * ld + col0 + j], 0 where row0 + i >= row_end
// or col0 + j >= ld. vec: ld % 8 == 0 and g 16-byte aligned (col0 is a multiple of 8): 8 at a time.
template <typename T, int R, int C>
static __device__ inline void tc_load_tile(T *s, const T *g, int ld, int row0, int row_end, int col0, int vec) {
    const int lds = C + TC_PAD;
    if (vec) {
        for (int idx = threadIdx.x; idx < R * C / 8; idx += TC_THREADS) {
            int i = idx / (C / 8), j = idx % (C / 8) * 8, r = row0 + i, c = col0 + j;
            T *d = s + i * lds + j;
            if (r < row_end && c < ld) tc_copy16(d, g + (long)r * ld + c);
            else
                for (int q = 0; q < 8; q++) d[q] = stf<T>(0.0f);
        }
    } else {
        for (int idx = threadIdx.x; idx < R * C; idx += TC_THREADS) {
            int i = idx / C, j = idx % C, r = row0 + i, c = col0 + j;
            s[i * lds + j] = (r < row_end && c < ld) ? g[(long)r * ld + c] : stf<T>(0.0f);
        }
    }
}

// MODE TC_FWD: C = out (TO), A = inp, B = w. TC_DINP: C = dinp (float), A = dout, B = w.
// TC_WGRAD: C = dw (float), A = dout, B = inp. LA, LB: the fragment layouts of the table above.
template <typename T, typename TO, int MODE, typename LA, typename LB>
__global__ void grouped_tc_kernel(TO *C, const T *A, const T *B, const int *off, int IC, int OC, int vecA, int vecB) {
#if !TC_HAS_BF16
    if constexpr (tc_is_bf16<T>()) {
        return;  // not launched: cu_grouped_tc_available(CU_BF16) is 0 below sm_80
    } else
#endif
    {
        SHARED_ARRAY_ALIGNED(T, As, TC_TILE, 32);
        SHARED_ARRAY_ALIGNED(T, Bs, TC_TILE, 32);
        SHARED_ARRAY_ALIGNED(float, Cs, TC_THREADS / 32 * 16 * TC_SLD, 32);
        int e = blockIdx.z, rbeg = off[e], rend = off[e + 1];
        int m0, n0 = blockIdx.x * TC_BN, kbeg, kend, m_end, n_end;
        if constexpr (MODE == TC_WGRAD) {
            m0 = blockIdx.y * TC_BM, kbeg = rbeg, kend = rend, m_end = OC, n_end = IC;
            if (rend <= rbeg) return;  // no rows: nothing to add (the whole block)
        } else {
            m0 = rbeg + blockIdx.y * TC_BM, kbeg = 0, kend = MODE == TC_FWD ? IC : OC;
            m_end = rend, n_end = MODE == TC_FWD ? OC : IC;
            if (m0 >= rend) return;  // past the expert's rows (the whole block)
        }
        const T *Bm = MODE == TC_WGRAD ? B : B + (long)e * OC * IC;
        int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
        // warp-uniform: a warp whose 32 x 32 outputs are all out of range skips its fragments
        int active = m0 + wm * 32 < m_end && n0 + wn * 32 < n_end;
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 2; j++) wmma::fill_fragment(acc[i][j], 0.0f);
        for (int k0 = kbeg; k0 < kend; k0 += TC_BK) {
            if constexpr (MODE == TC_WGRAD) {
                tc_load_tile<T, TC_BK, TC_BM>(As, A, OC, k0, kend, m0, vecA);  // dout[k][m]
                tc_load_tile<T, TC_BK, TC_BN>(Bs, Bm, IC, k0, kend, n0, vecB); // inp[k][n]
            } else if constexpr (MODE == TC_DINP) {
                tc_load_tile<T, TC_BM, TC_BK>(As, A, OC, m0, m_end, k0, vecA);  // dout[m][k]
                tc_load_tile<T, TC_BK, TC_BN>(Bs, Bm, IC, k0, OC, n0, vecB);    // W[k][n]
            } else {
                tc_load_tile<T, TC_BM, TC_BK>(As, A, IC, m0, m_end, k0, vecA);  // inp[m][k]
                tc_load_tile<T, TC_BN, TC_BK>(Bs, Bm, IC, n0, OC, k0, vecB);    // W[n][k]
            }
            __syncthreads();
            if (active) {
                for (int kk = 0; kk < TC_BK / 16; kk++) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LA> fa[2];
                    wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LB> fb[2];
                    for (int f = 0; f < 2; f++) {
                        int m = wm * 32 + 16 * f, n = wn * 32 + 16 * f;
                        if constexpr (MODE == TC_WGRAD)
                            wmma::load_matrix_sync(fa[f], As + kk * 16 * (TC_BM + TC_PAD) + m, TC_BM + TC_PAD);
                        else
                            wmma::load_matrix_sync(fa[f], As + m * (TC_BK + TC_PAD) + kk * 16, TC_BK + TC_PAD);
                        if constexpr (MODE == TC_FWD)
                            wmma::load_matrix_sync(fb[f], Bs + n * (TC_BK + TC_PAD) + kk * 16, TC_BK + TC_PAD);
                        else
                            wmma::load_matrix_sync(fb[f], Bs + kk * 16 * (TC_BN + TC_PAD) + n, TC_BN + TC_PAD);
                    }
                    for (int i = 0; i < 2; i++)
                        for (int j = 0; j < 2; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
                }
            }
            __syncthreads();  // the tiles are overwritten by the next step
        }
        if (active) {
            float *st = Cs + warp * 16 * TC_SLD;
            int lane = threadIdx.x % 32, sr = lane / 2, sc = lane % 2 * 8;
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 2; j++) {
                    wmma::store_matrix_sync(st, acc[i][j], TC_SLD, wmma::mem_row_major);
                    __syncwarp();  // the lanes read each other's parts of the staging tile
                    int m = m0 + wm * 32 + 16 * i + sr, n = n0 + wn * 32 + 16 * j + sc;
                    if (m < m_end) {
                        const float *v = st + sr * TC_SLD + sc;
                        for (int q = 0; q < 8 && n + q < n_end; q++) {
                            if constexpr (MODE == TC_FWD) C[(long)m * OC + n + q] = stf<TO>(v[q]);
                            else if constexpr (MODE == TC_DINP) C[(long)m * IC + n + q] += v[q];
                            else C[((long)e * OC + m) * IC + n + q] += v[q];
                        }
                    }
                    __syncwarp();  // before the next fragment overwrites the staging tile
                }
        }
    }
}

// ---- host side ----------------------------------------------------------------------------------

// the 16-byte path of tc_load_tile: rows of a multiple of 8 elements from a 16-byte aligned base
static int tc_vec(const void *p, int ld) { return ld % 8 == 0 && (uintptr_t)p % 16u == 0; }

static void tc_require(int dt, const char *fn) {
    if (!cu_grouped_tc_available(dt)) {
        fprintf(stderr, "error: internal: %s: no tensor-core kernel for element type %d on this device\n", fn, dt);
        exit(EXIT_FAILURE);
    }
}

int cu_grouped_tc_available(int dt) {
    if (dt != CU_BF16 && dt != CU_F16) return 0;
    static int known[3] = {-1, -1, -1};
    if (known[dt] >= 0) return known[dt];
    int ok = cu_tensor_core_kernel_ready(
        dt, dt == CU_BF16 ? (const void *)grouped_tc_kernel<bf16, float, TC_FWD, wmma::row_major, wmma::col_major>
                          : (const void *)grouped_tc_kernel<f16, float, TC_FWD, wmma::row_major, wmma::col_major>);
    known[dt] = ok;
    return ok;
}

template <typename T>
static void tc_forward(void *out, int out_dt, const T *inp, const T *w, const int *off, int E, int max_rows, int IC,
                       int OC) {
    dim3 grid(ceil_div(OC, TC_BN), ceil_div(max_rows, TC_BM), E);
    int va = tc_vec(inp, IC), vb = tc_vec(w, IC);
    if (out_dt == CU_F32) {
        auto *kfn = grouped_tc_kernel<T, float, TC_FWD, wmma::row_major, wmma::col_major>;
        LAUNCH(kfn, grid, TC_THREADS, 0, 0, (float *)out, inp, w, off, IC, OC, va, vb);
    } else {
        auto *kfn = grouped_tc_kernel<T, T, TC_FWD, wmma::row_major, wmma::col_major>;
        LAUNCH(kfn, grid, TC_THREADS, 0, 0, (T *)out, inp, w, off, IC, OC, va, vb);
    }
}

template <typename T>
static void tc_backward(float *dinp, float *dw, const T *dout, const T *inp, const T *w, const int *off, int E,
                        int max_rows, int IC, int OC) {
    if (dinp && max_rows > 0) {
        dim3 grid(ceil_div(IC, TC_BN), ceil_div(max_rows, TC_BM), E);
        auto *kfn = grouped_tc_kernel<T, float, TC_DINP, wmma::row_major, wmma::row_major>;
        LAUNCH(kfn, grid, TC_THREADS, 0, 0, dinp, dout, w, off, IC, OC, tc_vec(dout, OC), tc_vec(w, IC));
    }
    if (dw && OC > 0) {
        dim3 grid(ceil_div(IC, TC_BN), ceil_div(OC, TC_BM), E);
        auto *kfn = grouped_tc_kernel<T, float, TC_WGRAD, wmma::col_major, wmma::row_major>;
        LAUNCH(kfn, grid, TC_THREADS, 0, 0, dw, dout, inp, off, IC, OC, tc_vec(dout, OC), tc_vec(inp, IC));
    }
}

void cu_grouped_tc_forward(void *out, int out_dt, const void *inp, const void *w, const int *expert_off, int E,
                           int max_rows, int IC, int OC, int dt) {
    tc_require(dt, "cu_grouped_tc_forward");
    if (out_dt != CU_F32 && out_dt != dt) {
        fprintf(stderr, "error: internal: cu_grouped_tc_forward: output type %d for inputs of type %d\n", out_dt, dt);
        exit(EXIT_FAILURE);
    }
    if (E <= 0 || max_rows <= 0 || OC <= 0) return;
    if (dt == CU_BF16)
        tc_forward<bf16>(out, out_dt, (const bf16 *)inp, (const bf16 *)w, expert_off, E, max_rows, IC, OC);
    else
        tc_forward<f16>(out, out_dt, (const f16 *)inp, (const f16 *)w, expert_off, E, max_rows, IC, OC);
}

void cu_grouped_tc_backward(float *dinp, float *dw, const void *dout, const void *inp, const void *w,
                            const int *expert_off, int E, int max_rows, int IC, int OC, int dt) {
    tc_require(dt, "cu_grouped_tc_backward");
    if (E <= 0 || IC <= 0) return;
    if (dt == CU_BF16)
        tc_backward<bf16>(dinp, dw, (const bf16 *)dout, (const bf16 *)inp, (const bf16 *)w, expert_off, E, max_rows,
                          IC, OC);
    else
        tc_backward<f16>(dinp, dw, (const f16 *)dout, (const f16 *)inp, (const f16 *)w, expert_off, E, max_rows, IC,
                         OC);
}
