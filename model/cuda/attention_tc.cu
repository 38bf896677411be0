// Causal flash attention on tensor cores (FlashAttention-2 style) for bf16 / fp16 q, k, v with
// nvcuda::wmma m16n16k16 fragments and fp32 accumulation. Interface and semantics: attention_tc.h
// (exactly those of cu_attention_forward / _backward in cuda_ops.h). Layouts as model/layers.h:
// q, k (B, T, H, dqk), v, out (B, T, H, dv); lse, Dsum (B, H, T). Inside the kernels the sequence
// length is T_ (T is the element type).
//
// Three kernels, each a loop over 32-row tiles of the other operand, every product on tensor cores:
//   forward  per 64 query rows (4 warps x 16 rows): S = Q K^T, online softmax in fp32, O += P V;
//            out = O / l (rounded to dt once), lse = m + log l
//   dq       per 64 query rows: S = Q K^T, P = exp(scale S - lse), dP = dO V^T,
//            dS = P (dP - D) scale, dQ += dS K; D = rowsum(dout * out) (fp32 dout, out as
//            stored) is computed here and left in the scratch for
//   dk / dv  per 16W key rows (W warps x 16 rows): S^T = K Q^T, P^T, dP^T = V dO^T, dS^T,
//            dV += P^T dO, dK += dS^T Q
// Each kernel recomputes P (no T x T buffer); every output element is summed by one warp in a fixed
// order: deterministic, no atomics. Causal: a block visits only the tiles at or below the diagonal,
// a warp skips (warp-uniform) the tiles that are entirely above its 16 rows, the diagonal tiles are
// masked elementwise (s > t, and rows / keys past T).
//
// Operands in shared memory, dt, row stride d + 8 (a multiple of 8 elements = 16 bytes, as wmma
// needs; 16 rows of it are a multiple of 32 bytes, and the rows of one ldmatrix phase fall in
// distinct banks for d = 64, 96, 128). Tiles are loaded bounds-checked and zero-padded (rows past
// T are 0, so no NaN enters a product; 16-byte copies when the base pointer is 16-byte aligned:
// d is a multiple of 16, so every row then is). dout is fp32 in global memory and rounded to dt
// as it is loaded (it is a GEMM operand). The fragment layouts read the tiles as they are:
//   S  = Q K^T    a = Q [t][d] row_major (registers, loaded once),  b = K [s][d] col_major
//   O += P V      a = P [t][s] row_major (per-warp tile),           b = V [s][d] row_major
//   dP = dO V^T   a = dO [t][d] row_major (registers),              b = V [s][d] col_major
//   dQ += dS K    a = dS [t][s] row_major (per-warp tile),          b = K [s][d] row_major
//   S^T = K Q^T   a = K [s][d] row_major (shared, own rows),        b = Q [t][d] col_major
//   dP^T = V dO^T a = V [s][d] row_major (shared, own rows),        b = dO [t][d] col_major
//   dV += P^T dO  a = P^T [s][t] row_major (per-warp tile),         b = dO [t][d] row_major
//   dK += dS^T Q  a = dS^T [s][t] row_major (per-warp tile),        b = Q [t][d] row_major
// Elementwise work goes through a per-warp fp32 staging tile (store_matrix_sync, __syncwarp, each
// lane pair owns one of the 16 rows: lane 2r and 2r+1 hold row r, columns 16 (hf) .. 16 hf + 15 of
// a 32-wide tile, or 8 hf .. 8 hf + 7 of a 16-wide fragment in the epilogues); fragment elements are
// never accessed directly.
//
// Online softmax with a lazy rescale: a row's running maximum m moves only when a tile's maximum
// exceeds it by more than ATC_TAU (8, natural-log units), so p = exp(x - m) <= e^8 ~ 2981 (fits
// fp16, rounds with the same relative error) and the O accumulators (registers) are rescaled, through
// the staging tile, only when some row of the warp moved; l is rescaled with it. out = O / l and
// lse = m + log l are the same quantities as with the exact running maximum.
//
// Head sizes: template <NQ, NV> = the largest dqk / 16 and dv / 16 of a bucket, (4, 4), (6, 4) and
// (8, 8); the run-time nq, nv <= NQ, NV guard the (fully unrolled) fragment loops, so every fragment
// array stays in registers. The dk/dv kernel keeps its own K and V rows in shared memory; it runs 4
// warps (64 key rows) for the first two buckets and 2 warps (32 key rows) for (8, 8), so that every
// kernel stays within 48 KiB of static shared memory (no opt-in): see the sizes below.
// bf16 WMMA needs sm_80: the bf16 kernels are empty in the sm_75 image and
// cu_attention_tc_available(., ., CU_BF16) is 0 there.
#include <mma.h>

#include "attention_tc.h"
#include "cuda_common.cuh"
#include "cuda_ops.h"

namespace wmma = nvcuda::wmma;

#define ATC_BM 64               // own rows per block of the forward and dq kernels (4 warps x 16)
#define ATC_BN 32               // rows of the streamed tiles (keys in forward / dq, queries in dk / dv)
#define ATC_PAD 8               // elements of padding per shared row
#define ATC_SLD (ATC_BN + 4)    // ldm (floats) of a 16 x 32 staging tile
#define ATC_SLD2 (2 * ATC_BN + 4)  // ldm of the dq kernel's 16 x 64 staging tile (S | dP)
#define ATC_PLD (ATC_BN + 8)    // ldm (elements) of a warp's 16 x 32 P / dS tile
#define ATC_TAU 8.0f            // lazy rescale threshold of the running maximum

#if defined(__CUDACC__)
#define ATC_UNROLL _Pragma("unroll")
#else
#define ATC_UNROLL
#endif

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define ATC_HAS_BF16 0
#else
#define ATC_HAS_BF16 1
#endif
template <typename T> __host__ __device__ constexpr bool atc_is_bf16() { return false; }
template <> __host__ __device__ constexpr bool atc_is_bf16<bf16>() { return true; }

// warps of the dk / dv kernel for a bucket (2 for (8, 8): 48 KiB)
template <int NQ, int NV> __host__ __device__ constexpr int atc_dkdv_warps() { return NQ + NV > 10 ? 2 : 4; }
__host__ __device__ constexpr int atc_max(int a, int b) { return a > b ? a : b; }

typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> atc_acc;

// 16 bytes, both addresses 16-byte aligned
static __device__ inline void atc_copy16(void *dst, const void *src) {
#if defined(MOE_CUDA_HARNESS)
    if (((uintptr_t)dst | (uintptr_t)src) % 16u != 0)
        moe_hx_kernel_error(__FILE__, __LINE__, "16-byte copy from %p to %p is misaligned", src, dst);
    memcpy(dst, src, 16);
#else
    *(uint4 *)dst = *(const uint4 *)src;
#endif
}

// s[i * lds + c] = g[(row0 + i) * gld + c] for i < R, c < d (d a multiple of 16); rows with
// row0 + i >= T_ are 0. By every thread of the block. vec: g 16-byte aligned (then every row is).
template <typename T>
static __device__ inline void atc_load(T *s, int lds, const T *g, long gld, int row0, int R, int T_, int d, int vec) {
    if (vec) {
        int cpr = d / 8;
        for (int idx = threadIdx.x; idx < R * cpr; idx += blockDim.x) {
            int i = idx / cpr, c = (idx - i * cpr) * 8, r = row0 + i;
            T *dst = s + i * lds + c;
            if (r < T_) atc_copy16(dst, g + (long)r * gld + c);
            else
                for (int e = 0; e < 8; e++) dst[e] = stf<T>(0.0f);
        }
    } else {
        for (int idx = threadIdx.x; idx < R * d; idx += blockDim.x) {
            int i = idx / d, c = idx - i * d, r = row0 + i;
            s[i * lds + c] = r < T_ ? g[(long)r * gld + c] : stf<T>(0.0f);
        }
    }
}
// the same from fp32 (dout), rounded to T (round to nearest even)
template <typename T>
static __device__ inline void atc_load_f32(T *s, int lds, const float *g, long gld, int row0, int R, int T_, int d) {
    for (int idx = threadIdx.x; idx < R * d; idx += blockDim.x) {
        int i = idx / d, c = idx - i * d, r = row0 + i;
        s[i * lds + c] = stf<T>(r < T_ ? g[(long)r * gld + c] : 0.0f);
    }
}

// ---- forward ----------------------------------------------------------------------------------
// grid: ceil(T / 64) * B * H blocks of 128 threads; the query tile of the block is counted from
// the end (the longest causal rows are scheduled first).
template <typename T, int NQ, int NV>
__global__ void att_tc_forward_kernel(T *out, float *lse, const T *q, const T *k, const T *v, int BH, int T_, int H,
                                      int dqk, int dv, float scale, int vec) {
#if !ATC_HAS_BF16
    if constexpr (atc_is_bf16<T>()) {
        return;  // not launched: cu_attention_tc_available(., ., CU_BF16) is 0 below sm_80
    } else
#endif
    {
        constexpr int LQ = 16 * NQ + ATC_PAD, LV = 16 * NV + ATC_PAD;
        // the Q tile (64 rows) is loaded through the K | V area before the loop
        constexpr int KV_EL = atc_max(ATC_BM * LQ, ATC_BN * (LQ + LV));
        SHARED_ARRAY_ALIGNED(T, kv, KV_EL, 32);
        SHARED_ARRAY_ALIGNED(float, stg, 4 * 16 * ATC_SLD, 32);
        SHARED_ARRAY_ALIGNED(T, pt, 4 * 16 * ATC_PLD, 32);
        const int nq = dqk / 16, nv = dv / 16, ldq = dqk + ATC_PAD, ldv = dv + ATC_PAD;
        const int lane = threadIdx.x % 32, w = threadIdx.x / 32, r = lane / 2, hf = lane % 2;
        const int tiles = (T_ + ATC_BM - 1) / ATC_BM;
        const int tile = tiles - 1 - (int)(blockIdx.x / BH), bh = (int)(blockIdx.x % BH), h = bh % H, b = bh / H;
        const int t0 = tile * ATC_BM, tw = t0 + 16 * w, t = tw + r;
        const int active = tw < T_;  // warp-uniform: the warp has rows to compute
        const long qs = (long)H * dqk, vs = (long)H * dv;
        const T *qb = q + (long)b * T_ * qs + (long)h * dqk, *kb = k + (long)b * T_ * qs + (long)h * dqk;
        const T *vb = v + (long)b * T_ * vs + (long)h * dv;
        float *st = stg + w * 16 * ATC_SLD;
        T *pw = pt + w * 16 * ATC_PLD;
        T *kt = kv, *vt = kv + ATC_BN * ldq;

        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qa[NQ];
        atc_acc oacc[NV];
        atc_load(kv, ldq, qb, qs, t0, ATC_BM, T_, dqk, vec);
        __syncthreads();
        if (active) {
            ATC_UNROLL
            for (int j = 0; j < NQ; j++)
                if (j < nq) wmma::load_matrix_sync(qa[j], kv + 16 * w * ldq + 16 * j, ldq);
            ATC_UNROLL
            for (int j = 0; j < NV; j++) wmma::fill_fragment(oacc[j], 0.0f);
        }
        float m = -INFINITY, l = 0.0f;  // of row t (both lanes of the pair hold the same)
        const int s_last = t0 + ATC_BM - 1 < T_ - 1 ? t0 + ATC_BM - 1 : T_ - 1;
        for (int s0 = 0; s0 <= s_last; s0 += ATC_BN) {
            __syncthreads();  // the previous tiles (and the Q tile) are consumed
            atc_load(kt, ldq, kb, qs, s0, ATC_BN, T_, dqk, vec);
            atc_load(vt, ldv, vb, vs, s0, ATC_BN, T_, dv, vec);
            __syncthreads();
            if (!active || s0 > tw + 15) continue;  // warp-uniform: every key above the warp's rows
            // S (16 x 32) = Q K^T -> staging
            ATC_UNROLL
            for (int kn = 0; kn < 2; kn++) {
                atc_acc sacc;
                wmma::fill_fragment(sacc, 0.0f);
                ATC_UNROLL
                for (int j = 0; j < NQ; j++)
                    if (j < nq) {
                        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kf;
                        wmma::load_matrix_sync(kf, kt + 16 * kn * ldq + 16 * j, ldq);
                        wmma::mma_sync(sacc, qa[j], kf, sacc);
                    }
                wmma::store_matrix_sync(st + 16 * kn, sacc, ATC_SLD, wmma::mem_row_major);
            }
            __syncwarp();
            // online softmax of row t over keys s0 + 16 hf .. + 15 (fp32); P rounded to dt
            float x[16], mt = -INFINITY;
            const float *srow = st + r * ATC_SLD + 16 * hf;
            ATC_UNROLL
            for (int c = 0; c < 16; c++) {
                int s = s0 + 16 * hf + c;
                x[c] = s <= t && s < T_ ? srow[c] * scale : -INFINITY;
                mt = fmaxf(mt, x[c]);
            }
            mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, 1));
            int upd = mt > m + ATC_TAU;  // m = -inf: the row's first valid key
            float mnew = upd ? mt : m, corr = upd ? expf(m - mnew) : 1.0f;
            float ps = 0.0f;
            T *prow = pw + r * ATC_PLD + 16 * hf;
            ATC_UNROLL
            for (int c = 0; c < 16; c++) {
                float p = x[c] == -INFINITY ? 0.0f : expf(x[c] - mnew);
                ps += p;
                prow[c] = stf<T>(p);
            }
            ps += __shfl_xor_sync(0xffffffffu, ps, 1);
            l = l * corr + ps;
            // O needs rescaling only where a row had a finite maximum before (O is 0 otherwise)
            int rescale = __any_sync(0xffffffffu, upd && m != -INFINITY);
            m = mnew;
            __syncwarp();  // P written, the staging tile read
            if (rescale) {
                ATC_UNROLL
                for (int j = 0; j < NV; j++)
                    if (j < nv) {
                        wmma::store_matrix_sync(st, oacc[j], ATC_SLD, wmma::mem_row_major);
                        __syncwarp();
                        float *o = st + r * ATC_SLD + 8 * hf;
                        for (int e = 0; e < 8; e++) o[e] *= corr;
                        __syncwarp();
                        wmma::load_matrix_sync(oacc[j], st, ATC_SLD, wmma::mem_row_major);
                        __syncwarp();
                    }
            }
            // O += P V
            ATC_UNROLL
            for (int kk = 0; kk < 2; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pa;
                wmma::load_matrix_sync(pa, pw + 16 * kk, ATC_PLD);
                ATC_UNROLL
                for (int j = 0; j < NV; j++)
                    if (j < nv) {
                        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vf;
                        wmma::load_matrix_sync(vf, vt + 16 * kk * ldv + 16 * j, ldv);
                        wmma::mma_sync(oacc[j], pa, vf, oacc[j]);
                    }
            }
        }
        if (active) {  // after the last barrier
            float inv = 1.0f / l;
            T *orow = out + ((long)b * T_ + t) * vs + (long)h * dv + 8 * hf;
            ATC_UNROLL
            for (int j = 0; j < NV; j++)
                if (j < nv) {
                    wmma::store_matrix_sync(st, oacc[j], ATC_SLD, wmma::mem_row_major);
                    __syncwarp();
                    const float *o = st + r * ATC_SLD + 8 * hf;
                    if (t < T_)
                        for (int e = 0; e < 8; e++) orow[16 * j + e] = stf<T>(o[e] * inv);
                    __syncwarp();
                }
            if (hf == 0 && t < T_) lse[(long)bh * T_ + t] = m + logf(l);
        }
    }
}

// ---- backward: dq (and D) -----------------------------------------------------------------------
// grid and block as the forward
template <typename T, int NQ, int NV>
__global__ void att_tc_dq_kernel(float *dq, float *dsum, const float *dout, const T *out, const float *lse, const T *q,
                                 const T *k, const T *v, int BH, int T_, int H, int dqk, int dv, float scale, int vec) {
#if !ATC_HAS_BF16
    if constexpr (atc_is_bf16<T>()) {
        return;
    } else
#endif
    {
        constexpr int LQ = 16 * NQ + ATC_PAD, LV = 16 * NV + ATC_PAD;
        // the Q and dO tiles (64 rows each, one after the other) go through the K | V area
        constexpr int KV_EL = atc_max(ATC_BM * atc_max(LQ, LV), ATC_BN * (LQ + LV));
        SHARED_ARRAY_ALIGNED(T, kv, KV_EL, 32);
        SHARED_ARRAY_ALIGNED(float, stg, 4 * 16 * ATC_SLD2, 32);
        SHARED_ARRAY_ALIGNED(T, pt, 4 * 16 * ATC_PLD, 32);
        const int nq = dqk / 16, nv = dv / 16, ldq = dqk + ATC_PAD, ldv = dv + ATC_PAD;
        const int lane = threadIdx.x % 32, w = threadIdx.x / 32, r = lane / 2, hf = lane % 2;
        const int tiles = (T_ + ATC_BM - 1) / ATC_BM;
        const int tile = tiles - 1 - (int)(blockIdx.x / BH), bh = (int)(blockIdx.x % BH), h = bh % H, b = bh / H;
        const int t0 = tile * ATC_BM, tw = t0 + 16 * w, t = tw + r;
        const int active = tw < T_;
        const long qs = (long)H * dqk, vs = (long)H * dv;
        const T *qb = q + (long)b * T_ * qs + (long)h * dqk, *kb = k + (long)b * T_ * qs + (long)h * dqk;
        const T *vb = v + (long)b * T_ * vs + (long)h * dv;
        const float *dob = dout + (long)b * T_ * vs + (long)h * dv;
        float *st = stg + w * 16 * ATC_SLD2;
        T *pw = pt + w * 16 * ATC_PLD;
        T *kt = kv, *vt = kv + ATC_BN * ldq;

        // D_t = dout_t . out_t (fp32 dout, out as stored) and lse_t of row t
        float D = 0.0f, L = 0.0f;
        if (active) {
            if (t < T_) {
                const float *dr = dob + (long)t * vs;
                const T *orow = out + ((long)b * T_ + t) * vs + (long)h * dv;
                for (int d = hf; d < dv; d += 2) D += dr[d] * ldf(orow[d]);
                L = lse[(long)bh * T_ + t];
            }
            D += __shfl_xor_sync(0xffffffffu, D, 1);
            if (hf == 0 && t < T_) dsum[(long)bh * T_ + t] = D;
        }
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qa[NQ], da[NV];
        atc_acc dqacc[NQ];
        atc_load(kv, ldq, qb, qs, t0, ATC_BM, T_, dqk, vec);
        __syncthreads();
        if (active) {
            ATC_UNROLL
            for (int j = 0; j < NQ; j++)
                if (j < nq) wmma::load_matrix_sync(qa[j], kv + 16 * w * ldq + 16 * j, ldq);
            ATC_UNROLL
            for (int j = 0; j < NQ; j++) wmma::fill_fragment(dqacc[j], 0.0f);
        }
        __syncthreads();
        atc_load_f32(kv, ldv, dob, vs, t0, ATC_BM, T_, dv);
        __syncthreads();
        if (active) {
            ATC_UNROLL
            for (int j = 0; j < NV; j++)
                if (j < nv) wmma::load_matrix_sync(da[j], kv + 16 * w * ldv + 16 * j, ldv);
        }
        const int s_last = t0 + ATC_BM - 1 < T_ - 1 ? t0 + ATC_BM - 1 : T_ - 1;
        for (int s0 = 0; s0 <= s_last; s0 += ATC_BN) {
            __syncthreads();
            atc_load(kt, ldq, kb, qs, s0, ATC_BN, T_, dqk, vec);
            atc_load(vt, ldv, vb, vs, s0, ATC_BN, T_, dv, vec);
            __syncthreads();
            if (!active || s0 > tw + 15) continue;
            // S = Q K^T -> staging columns 0..31, dP = dO V^T -> columns 32..63
            ATC_UNROLL
            for (int kn = 0; kn < 2; kn++) {
                atc_acc sacc, pacc;
                wmma::fill_fragment(sacc, 0.0f);
                wmma::fill_fragment(pacc, 0.0f);
                ATC_UNROLL
                for (int j = 0; j < NQ; j++)
                    if (j < nq) {
                        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kf;
                        wmma::load_matrix_sync(kf, kt + 16 * kn * ldq + 16 * j, ldq);
                        wmma::mma_sync(sacc, qa[j], kf, sacc);
                    }
                ATC_UNROLL
                for (int j = 0; j < NV; j++)
                    if (j < nv) {
                        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> vf;
                        wmma::load_matrix_sync(vf, vt + 16 * kn * ldv + 16 * j, ldv);
                        wmma::mma_sync(pacc, da[j], vf, pacc);
                    }
                wmma::store_matrix_sync(st + 16 * kn, sacc, ATC_SLD2, wmma::mem_row_major);
                wmma::store_matrix_sync(st + ATC_BN + 16 * kn, pacc, ATC_SLD2, wmma::mem_row_major);
            }
            __syncwarp();
            // dS = P (dP - D) scale (fp32), rounded to dt
            const float *srow = st + r * ATC_SLD2 + 16 * hf;
            T *dsrow = pw + r * ATC_PLD + 16 * hf;
            ATC_UNROLL
            for (int c = 0; c < 16; c++) {
                int s = s0 + 16 * hf + c;
                float p = s <= t && s < T_ ? expf(srow[c] * scale - L) : 0.0f;
                dsrow[c] = stf<T>(p * (srow[ATC_BN + c] - D) * scale);
            }
            __syncwarp();
            // dQ += dS K
            ATC_UNROLL
            for (int kk = 0; kk < 2; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> sa;
                wmma::load_matrix_sync(sa, pw + 16 * kk, ATC_PLD);
                ATC_UNROLL
                for (int j = 0; j < NQ; j++)
                    if (j < nq) {
                        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> kf;
                        wmma::load_matrix_sync(kf, kt + 16 * kk * ldq + 16 * j, ldq);
                        wmma::mma_sync(dqacc[j], sa, kf, dqacc[j]);
                    }
            }
        }
        if (active) {
            float *dqr = dq + ((long)b * T_ + t) * qs + (long)h * dqk + 8 * hf;
            ATC_UNROLL
            for (int j = 0; j < NQ; j++)
                if (j < nq) {
                    wmma::store_matrix_sync(st, dqacc[j], ATC_SLD2, wmma::mem_row_major);
                    __syncwarp();
                    const float *g = st + r * ATC_SLD2 + 8 * hf;
                    if (t < T_)
                        for (int e = 0; e < 8; e++) dqr[16 * j + e] += g[e];
                    __syncwarp();
                }
        }
    }
}

// ---- backward: dk, dv ---------------------------------------------------------------------------
// grid: ceil(T / (16 W)) * B * H blocks of 32 W threads, W = atc_dkdv_warps; the key tile of the
// block is counted from the start (the longest causal columns first). Reads D (dsum) that the dq
// kernel, launched before it, wrote.
template <typename T, int NQ, int NV>
__global__ void att_tc_dkdv_kernel(float *dk, float *dvv, const float *dout, const float *lse, const float *dsum,
                                   const T *q, const T *k, const T *v, int BH, int T_, int H, int dqk, int dv,
                                   float scale, int vec) {
#if !ATC_HAS_BF16
    if constexpr (atc_is_bf16<T>()) {
        return;
    } else
#endif
    {
        constexpr int W = atc_dkdv_warps<NQ, NV>(), BK = 16 * W;
        constexpr int LQ = 16 * NQ + ATC_PAD, LV = 16 * NV + ATC_PAD;
        SHARED_ARRAY_ALIGNED(T, kown, BK * LQ, 32);
        SHARED_ARRAY_ALIGNED(T, vown, BK * LV, 32);
        SHARED_ARRAY_ALIGNED(T, qt, ATC_BN * LQ, 32);
        SHARED_ARRAY_ALIGNED(T, dot, ATC_BN * LV, 32);
        SHARED_ARRAY_ALIGNED(float, stg, W * 16 * ATC_SLD, 32);
        SHARED_ARRAY_ALIGNED(T, pt, W * 16 * ATC_PLD, 32);
        SHARED_ARRAY(float, lsm, ATC_BN);
        SHARED_ARRAY(float, dsm, ATC_BN);
        const int nq = dqk / 16, nv = dv / 16, ldq = dqk + ATC_PAD, ldv = dv + ATC_PAD;
        const int lane = threadIdx.x % 32, w = threadIdx.x / 32, r = lane / 2, hf = lane % 2;
        const int tile = (int)(blockIdx.x / BH), bh = (int)(blockIdx.x % BH), h = bh % H, b = bh / H;
        const int sb = tile * BK, sw = sb + 16 * w, s = sw + r;
        const int active = sw < T_;
        const long qs = (long)H * dqk, vs = (long)H * dv;
        const T *qb = q + (long)b * T_ * qs + (long)h * dqk, *kb = k + (long)b * T_ * qs + (long)h * dqk;
        const T *vb = v + (long)b * T_ * vs + (long)h * dv;
        const float *dob = dout + (long)b * T_ * vs + (long)h * dv;
        const float *lb = lse + (long)bh * T_, *db = dsum + (long)bh * T_;
        float *st = stg + w * 16 * ATC_SLD;
        T *pw = pt + w * 16 * ATC_PLD;
        const T *kw = kown + 16 * w * ldq, *vw = vown + 16 * w * ldv;

        atc_load(kown, ldq, kb, qs, sb, BK, T_, dqk, vec);  // read after the loop's first barrier
        atc_load(vown, ldv, vb, vs, sb, BK, T_, dv, vec);
        atc_acc dkacc[NQ], dvacc[NV];
        if (active) {
            ATC_UNROLL
            for (int j = 0; j < NQ; j++) wmma::fill_fragment(dkacc[j], 0.0f);
            ATC_UNROLL
            for (int j = 0; j < NV; j++) wmma::fill_fragment(dvacc[j], 0.0f);
        }
        for (int t0 = sb; t0 < T_; t0 += ATC_BN) {
            __syncthreads();
            atc_load(qt, ldq, qb, qs, t0, ATC_BN, T_, dqk, vec);
            atc_load_f32(dot, ldv, dob, vs, t0, ATC_BN, T_, dv);
            if ((int)threadIdx.x < ATC_BN) {
                int tq = t0 + threadIdx.x;
                lsm[threadIdx.x] = tq < T_ ? lb[tq] : 0.0f;
                dsm[threadIdx.x] = tq < T_ ? db[tq] : 0.0f;
            }
            __syncthreads();
            if (!active || t0 + ATC_BN - 1 < sw) continue;  // warp-uniform: every query before the warp's keys
            // S^T (16 keys x 32 queries) = K Q^T -> staging
            atc_acc sacc[2];
            wmma::fill_fragment(sacc[0], 0.0f);
            wmma::fill_fragment(sacc[1], 0.0f);
            ATC_UNROLL
            for (int j = 0; j < NQ; j++)
                if (j < nq) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> ka;
                    wmma::load_matrix_sync(ka, kw + 16 * j, ldq);
                    ATC_UNROLL
                    for (int kn = 0; kn < 2; kn++) {
                        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> qf;
                        wmma::load_matrix_sync(qf, qt + 16 * kn * ldq + 16 * j, ldq);
                        wmma::mma_sync(sacc[kn], ka, qf, sacc[kn]);
                    }
                }
            wmma::store_matrix_sync(st, sacc[0], ATC_SLD, wmma::mem_row_major);
            wmma::store_matrix_sync(st + 16, sacc[1], ATC_SLD, wmma::mem_row_major);
            __syncwarp();
            // P^T of key s over queries t0 + 16 hf .. + 15 (fp32, kept), rounded to dt for dV
            float p[16];
            const float *srow = st + r * ATC_SLD + 16 * hf;
            T *prow = pw + r * ATC_PLD + 16 * hf;
            ATC_UNROLL
            for (int c = 0; c < 16; c++) {
                int tq = t0 + 16 * hf + c;
                p[c] = tq >= s && tq < T_ ? expf(srow[c] * scale - lsm[16 * hf + c]) : 0.0f;
                prow[c] = stf<T>(p[c]);
            }
            __syncwarp();
            // dV += P^T dO
            ATC_UNROLL
            for (int kk = 0; kk < 2; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pa;
                wmma::load_matrix_sync(pa, pw + 16 * kk, ATC_PLD);
                ATC_UNROLL
                for (int j = 0; j < NV; j++)
                    if (j < nv) {
                        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> df;
                        wmma::load_matrix_sync(df, dot + 16 * kk * ldv + 16 * j, ldv);
                        wmma::mma_sync(dvacc[j], pa, df, dvacc[j]);
                    }
            }
            // dP^T = V dO^T -> staging (S^T was read before the last __syncwarp)
            wmma::fill_fragment(sacc[0], 0.0f);
            wmma::fill_fragment(sacc[1], 0.0f);
            ATC_UNROLL
            for (int j = 0; j < NV; j++)
                if (j < nv) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> va;
                    wmma::load_matrix_sync(va, vw + 16 * j, ldv);
                    ATC_UNROLL
                    for (int kn = 0; kn < 2; kn++) {
                        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> df;
                        wmma::load_matrix_sync(df, dot + 16 * kn * ldv + 16 * j, ldv);
                        wmma::mma_sync(sacc[kn], va, df, sacc[kn]);
                    }
                }
            wmma::store_matrix_sync(st, sacc[0], ATC_SLD, wmma::mem_row_major);
            wmma::store_matrix_sync(st + 16, sacc[1], ATC_SLD, wmma::mem_row_major);
            __syncwarp();  // and every lane's P^T loads for dV are done: the tile takes dS^T
            // dS^T = P^T (dP^T - D) scale, rounded to dt
            ATC_UNROLL
            for (int c = 0; c < 16; c++) prow[c] = stf<T>(p[c] * (srow[c] - dsm[16 * hf + c]) * scale);
            __syncwarp();
            // dK += dS^T Q
            ATC_UNROLL
            for (int kk = 0; kk < 2; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> sa;
                wmma::load_matrix_sync(sa, pw + 16 * kk, ATC_PLD);
                ATC_UNROLL
                for (int j = 0; j < NQ; j++)
                    if (j < nq) {
                        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> qf;
                        wmma::load_matrix_sync(qf, qt + 16 * kk * ldq + 16 * j, ldq);
                        wmma::mma_sync(dkacc[j], sa, qf, dkacc[j]);
                    }
            }
        }
        if (active) {
            float *dkr = dk + ((long)b * T_ + s) * qs + (long)h * dqk + 8 * hf;
            float *dvr = dvv + ((long)b * T_ + s) * vs + (long)h * dv + 8 * hf;
            const float *g = st + r * ATC_SLD + 8 * hf;
            ATC_UNROLL
            for (int j = 0; j < NQ; j++)
                if (j < nq) {
                    wmma::store_matrix_sync(st, dkacc[j], ATC_SLD, wmma::mem_row_major);
                    __syncwarp();
                    if (s < T_)
                        for (int e = 0; e < 8; e++) dkr[16 * j + e] += g[e];
                    __syncwarp();
                }
            ATC_UNROLL
            for (int j = 0; j < NV; j++)
                if (j < nv) {
                    wmma::store_matrix_sync(st, dvacc[j], ATC_SLD, wmma::mem_row_major);
                    __syncwarp();
                    if (s < T_)
                        for (int e = 0; e < 8; e++) dvr[16 * j + e] += g[e];
                    __syncwarp();
                }
        }
    }
}

// ---- host side ----------------------------------------------------------------------------------

// the bucket of (dqk, dv): 0 (4, 4), 1 (6, 4), 2 (8, 8); -1: not handled here
static int atc_bucket(int dqk, int dv) {
    if (dqk < 16 || dv < 16 || dqk > 128 || dv > 128 || dqk % 16 || dv % 16) return -1;
    if (dqk <= 64 && dv <= 64) return 0;
    if (dqk <= 96 && dv <= 64) return 1;
    return 2;
}

// ATC_DISPATCH(dt, bucket, T, NQ, NV, statements): the statements with the element type and the
// bucket's fragment counts as compile-time constants
#define ATC_BUCKETS(bucket, NQ, NV, ...)                                  \
    do {                                                                  \
        switch (bucket) {                                                 \
        case 0: { constexpr int NQ = 4, NV = 4; __VA_ARGS__; } break;     \
        case 1: { constexpr int NQ = 6, NV = 4; __VA_ARGS__; } break;     \
        default: { constexpr int NQ = 8, NV = 8; __VA_ARGS__; } break;    \
        }                                                                 \
    } while (0)
#define ATC_DISPATCH(dt, bucket, T, NQ, NV, ...)                                                 \
    do {                                                                                         \
        if ((dt) == CU_BF16) { typedef bf16 T; ATC_BUCKETS(bucket, NQ, NV, __VA_ARGS__); }        \
        else { typedef f16 T; ATC_BUCKETS(bucket, NQ, NV, __VA_ARGS__); }                         \
    } while (0)

int cu_attention_tc_available(int dqk, int dv, int dt) {
    if (dt != CU_BF16 && dt != CU_F16) return 0;
    if (atc_bucket(dqk, dv) < 0) return 0;
    static int known[3] = {-1, -1, -1};
    if (known[dt] >= 0) return known[dt];
    int ok = cu_tensor_core_kernel_ready(dt, dt == CU_BF16 ? (const void *)att_tc_forward_kernel<bf16, 4, 4>
                                                           : (const void *)att_tc_forward_kernel<f16, 4, 4>);
    known[dt] = ok;
    return ok;
}

static int atc_require(int dqk, int dv, int dt, const char *fn) {
    int bucket = atc_bucket(dqk, dv);
    if (!cu_attention_tc_available(dqk, dv, dt)) {
        fprintf(stderr, "error: internal: %s: no tensor-core kernel for head sizes %d / %d, element type %d\n", fn,
                dqk, dv, dt);
        exit(EXIT_FAILURE);
    }
    return bucket;
}

// the 16-byte copies of atc_load: every operand 16-byte aligned
static int atc_vec(const void *a, const void *b, const void *c) {
    return ((uintptr_t)a | (uintptr_t)b | (uintptr_t)c) % 16u == 0;
}

extern "C" void cu_attention_tc_forward(void *out, float *lse, const void *q, const void *k, const void *v, int B,
                                        int T, int H, int dqk, int dv, float scale, int dt) {
    int bucket = atc_require(dqk, dv, dt, "cu_attention_tc_forward");
    if ((long)B * H * T == 0) return;
    int BH = B * H, blocks = (int)((long)BH * ceil_div(T, ATC_BM)), vec = atc_vec(q, k, v);
    ATC_DISPATCH(dt, bucket, E, NQ, NV, {
        auto *kfn = att_tc_forward_kernel<E, NQ, NV>;
        LAUNCH(kfn, blocks, 128, 0, 0, (E *)out, lse, (const E *)q, (const E *)k, (const E *)v, BH, T, H, dqk, dv,
               scale, vec);
    });
}

extern "C" void cu_attention_tc_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout,
                                         const void *out, const float *lse, const void *q, const void *k,
                                         const void *v, int B, int T, int H, int dqk, int dv_dim, float scale,
                                         int dt) {
    int bucket = atc_require(dqk, dv_dim, dt, "cu_attention_tc_backward");
    if ((long)B * H * T == 0) return;
    int BH = B * H, vec = atc_vec(q, k, v);
    int qblocks = (int)((long)BH * ceil_div(T, ATC_BM));
    ATC_DISPATCH(dt, bucket, E, NQ, NV, {
        constexpr int W = atc_dkdv_warps<NQ, NV>();
        int kblocks = (int)((long)BH * ceil_div(T, 16 * W));
        auto *kdq = att_tc_dq_kernel<E, NQ, NV>;
        auto *kdkdv = att_tc_dkdv_kernel<E, NQ, NV>;
        LAUNCH(kdq, qblocks, 128, 0, 0, dq, scratch, dout, (const E *)out, lse, (const E *)q, (const E *)k,
               (const E *)v, BH, T, H, dqk, dv_dim, scale, vec);
        LAUNCH(kdkdv, kblocks, 32 * W, 0, 0, dk, dv, dout, lse, (const float *)scratch, (const E *)q, (const E *)k,
               (const E *)v, BH, T, H, dqk, dv_dim, scale, vec);
    });
}
