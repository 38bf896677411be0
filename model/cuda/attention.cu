// Causal self-attention, flash style: one warp per query row (forward, dq) or key row (dk,
// dv); keys are visited in chunks of 32 (one per lane) with an online softmax, so nothing of
// size T x T is stored: forward saves lse (B, H, T) and backward recomputes the probabilities.
// Layouts as model/layers.h: q, k (B, T, H, dqk), v and out (B, T, H, dv).
// q, k, v and out are of the element type T (float, bf16 or f16: the dt of cuda_ops.h); every
// value is converted to fp32 on load (ldf) and all arithmetic is fp32; out is rounded once on
// store (stf<T>). lse, dout, Dsum and the gradients are fp32. The shared-memory tiles hold fp32
// (converted on load), so the choice tiled / untiled depends on the head sizes only, not on T.
// Inside the kernels the sequence length is T_ (T is the element type).
// A simple correct version (no tensor cores); deterministic (no atomics: every output element
// is summed by one thread in a fixed order). The C entry points at the end send bf16 / fp16
// with head sizes that are multiples of 16 up to 128 to the tensor-core kernels of
// attention_tc.cu where the device runs them (cu_attention_set_tensor_cores(0): these kernels
// for every case, for tests of both paths).
#include "attention_tc.h"
#include "cuda_common.cuh"
#include "cuda_ops.h"

#define ATT_MAXD 256              // largest head size (dqk and dv)
#define ATT_PER_LANE (ATT_MAXD / 32)
#define ATT_WARPS 4               // rows per block (untiled kernels)
#define ATT_TW 8                  // rows per block (tiled kernels)
#define ATT_SMEM_MAX (48 * 1024)  // the tiled kernels run when their tiles fit this

// a (fp32, shared) . b (global, any element type)
template <typename T> static __device__ inline float dot_global(const float *a, const T *b, int d) {
    float s = 0.0f;
    for (int i = 0; i < d; i++) s += a[i] * ldf(b[i]);
    return s;
}

// dst[i] = src[i] as fp32 for i < n, by the lanes of one warp (0 for the whole row when !valid)
template <typename T> static __device__ inline void load_row(float *dst, const T *src, int n, int lane, int valid) {
    for (int i = lane; i < n; i += 32) dst[i] = valid ? ldf(src[i]) : 0.0f;
}

// rows [r0, r0 + nr) of a (T, ld) global matrix (width n) into a shared tile (nr, stride),
// converted to fp32, by every thread of the block
template <typename T>
static __device__ inline void load_tile(float *dst, int stride, const T *src, long ld, int nr, int n) {
    for (int i = threadIdx.x; i < nr * n; i += blockDim.x) {
        int r = i / n, c = i - r * n;
        dst[r * stride + c] = ldf(src[(long)r * ld + c]);
    }
}

// D = dout_row . out_row (fp32) by one warp; the same order for the tiled and untiled kernels
template <typename T> static __device__ inline float row_dsum(const float *dout_row, const T *out_row, int dv, int lane) {
    float s = 0.0f;
    for (int d = lane; d < dv; d += 32) s += dout_row[d] * ldf(out_row[d]);
    return warp_sum(s);
}

// out row t = sum_{s <= t} softmax(scale q_t . k_s) v_s (untiled: K and V read from global)
template <typename T>
__global__ void attention_forward_kernel(T *out, float *lse, const T *q, const T *k, const T *v, int B, int T_,
                                         int H, int dqk, int dv, float scale) {
    DYNAMIC_SHARED(float, smem);  // (ATT_WARPS, dqk): the query row of each warp
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    long row = (long)blockIdx.x * ATT_WARPS + w;  // (b, h, t) with t fastest
    if (row >= (long)B * H * T_) return;  // whole warp (no block barrier in this kernel)
    int t = (int)(row % T_), h = (int)((row / T_) % H), b = (int)(row / ((long)T_ * H));
    long qs = (long)H * dqk, vs = (long)H * dv;
    const T *kb = k + (long)b * T_ * qs + (long)h * dqk;
    const T *vb = v + (long)b * T_ * vs + (long)h * dv;
    float *qsm = smem + w * dqk;
    load_row(qsm, q + ((long)b * T_ + t) * qs + (long)h * dqk, dqk, lane, 1);
    __syncwarp();
    float acc[ATT_PER_LANE];
    for (int j = 0; j < ATT_PER_LANE; j++) acc[j] = 0.0f;
    float m = -FLT_MAX, l = 0.0f;
    for (int s0 = 0; s0 <= t; s0 += 32) {
        int s = s0 + lane;
        float sc = s <= t ? scale * dot_global(qsm, kb + (long)s * qs, dqk) : -FLT_MAX;
        float mnew = fmaxf(m, warp_max(sc));
        float p = s <= t ? expf(sc - mnew) : 0.0f;
        float corr = expf(m - mnew);
        l = l * corr + warp_sum(p);
        for (int j = 0; j < ATT_PER_LANE; j++) acc[j] *= corr;
        int n = t - s0 + 1 < 32 ? t - s0 + 1 : 32;  // keys of this chunk, the same for the whole warp
        for (int jj = 0; jj < n; jj++) {
            float pj = __shfl_sync(0xffffffffu, p, jj);
            const T *vr = vb + (long)(s0 + jj) * vs;
            for (int j = 0; j < ATT_PER_LANE; j++) {
                int d = lane + 32 * j;
                if (d < dv) acc[j] += pj * ldf(vr[d]);
            }
        }
        m = mnew;
    }
    float inv = 1.0f / l;
    T *orow = out + ((long)b * T_ + t) * vs + (long)h * dv;
    for (int j = 0; j < ATT_PER_LANE; j++) {
        int d = lane + 32 * j;
        if (d < dv) orow[d] = stf<T>(acc[j] * inv);
    }
    if (lane == 0) lse[row] = m + logf(l);
}

// The same computation with K and V shared by the block: ATT_TW warps take ATT_TW consecutive
// query rows of one (b, h); each chunk of 32 keys is loaded once into shared memory for all of
// them (ATT_TW times less K/V traffic). Every warp takes part in every load and barrier (the
// chunk loop is uniform over the block); a warp whose row is past T or before the chunk only
// skips the arithmetic.
template <typename T>
__global__ void attention_forward_tiled_kernel(T *out, float *lse, const T *q, const T *k, const T *v, int T_,
                                               int H, int dqk, int dv, float scale) {
    DYNAMIC_SHARED(float, smem);  // K chunk (32, dqk + 1) | V chunk (32, dv) | q rows (ATT_TW, dqk)
    int kst = dqk + 1;            // padded: lane j reads row j, stride dqk + 1 avoids bank conflicts
    float *ks = smem, *vsm = ks + 32 * kst, *qsm = vsm + 32 * dv;
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    int tiles = (T_ + ATT_TW - 1) / ATT_TW;  // the grid covers B * H * tiles
    int tile = blockIdx.x % tiles, bh = blockIdx.x / tiles, h = bh % H, b = bh / H;
    int t0 = tile * ATT_TW, t = t0 + w;
    int t_last = t0 + ATT_TW - 1 < T_ - 1 ? t0 + ATT_TW - 1 : T_ - 1;
    int valid = t < T_;
    long qs = (long)H * dqk, vs = (long)H * dv;
    const T *kb = k + (long)b * T_ * qs + (long)h * dqk;
    const T *vb = v + (long)b * T_ * vs + (long)h * dv;
    float *qrow = qsm + w * dqk;
    load_row(qrow, q + ((long)b * T_ + (valid ? t : 0)) * qs + (long)h * dqk, dqk, lane, valid);
    float acc[ATT_PER_LANE];
    for (int j = 0; j < ATT_PER_LANE; j++) acc[j] = 0.0f;
    float m = -FLT_MAX, l = 0.0f;
    for (int s0 = 0; s0 <= t_last; s0 += 32) {
        int nk = t_last - s0 + 1 < 32 ? t_last - s0 + 1 : 32;  // keys of the chunk any row needs
        __syncthreads();  // the previous chunk is consumed (and, the first time, q rows are written)
        load_tile(ks, kst, kb + (long)s0 * qs, qs, nk, dqk);
        load_tile(vsm, dv, vb + (long)s0 * vs, vs, nk, dv);
        __syncthreads();
        if (!valid || s0 > t) continue;  // uniform over the warp
        int s = s0 + lane;
        float sc = -FLT_MAX;
        if (s <= t) {
            const float *kr = ks + lane * kst;
            float d = 0.0f;
            for (int i = 0; i < dqk; i++) d += qrow[i] * kr[i];
            sc = scale * d;
        }
        float mnew = fmaxf(m, warp_max(sc));
        float p = s <= t ? expf(sc - mnew) : 0.0f;
        float corr = expf(m - mnew);
        l = l * corr + warp_sum(p);
        for (int j = 0; j < ATT_PER_LANE; j++) acc[j] *= corr;
        int n = t - s0 + 1 < 32 ? t - s0 + 1 : 32;
        for (int jj = 0; jj < n; jj++) {
            float pj = __shfl_sync(0xffffffffu, p, jj);
            const float *vr = vsm + jj * dv;
            for (int j = 0; j < ATT_PER_LANE; j++) {
                int d = lane + 32 * j;
                if (d < dv) acc[j] += pj * vr[d];
            }
        }
        m = mnew;
    }
    if (!valid) return;  // after the last barrier
    float inv = 1.0f / l;
    T *orow = out + ((long)b * T_ + t) * vs + (long)h * dv;
    for (int j = 0; j < ATT_PER_LANE; j++) {
        int d = lane + 32 * j;
        if (d < dv) orow[d] = stf<T>(acc[j] * inv);
    }
    if (lane == 0) lse[((long)b * H + h) * T_ + t] = m + logf(l);
}

static size_t tiled_smem(int dqk, int dv) { return sizeof(float) * (32 * (size_t)(dqk + 1) + 32 * (size_t)dv + ATT_TW * (size_t)dqk); }

// Backward. ds_ts = p_ts (dout_t . v_s - Dsum_t) scale with Dsum_t = dout_t . out_t:
//   dq_t += sum_{s <= t} ds_ts k_s          (the dq kernels, one warp per query row t)
//   dv_s += sum_{t >= s} p_ts dout_t ; dk_s += sum_{t >= s} ds_ts q_t   (the dk/dv kernels)
// The dq kernel computes Dsum of its row and writes it to dsum (B, H, T) (the caller's
// scratch); the dk/dv kernel, launched after it, reads it (no separate Dsum pass).

template <typename T>
__global__ void attention_dq_kernel(float *dq, float *dsum, const float *dout, const T *out, const float *lse,
                                    const T *q, const T *k, const T *v, int B, int T_, int H, int dqk, int dv,
                                    float scale) {
    DYNAMIC_SHARED(float, smem);  // (ATT_WARPS, dqk + dv): q row and dout row
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    long row = (long)blockIdx.x * ATT_WARPS + w;
    if (row >= (long)B * H * T_) return;  // whole warp (no block barrier in this kernel)
    int t = (int)(row % T_), h = (int)((row / T_) % H), b = (int)(row / ((long)T_ * H));
    long qs = (long)H * dqk, vs = (long)H * dv;
    float *qsm = smem + w * (dqk + dv), *dosm = qsm + dqk;
    long vo = ((long)b * T_ + t) * vs + (long)h * dv;
    load_row(qsm, q + ((long)b * T_ + t) * qs + (long)h * dqk, dqk, lane, 1);
    load_row(dosm, dout + vo, dv, lane, 1);
    float D = row_dsum(dout + vo, out + vo, dv, lane);
    if (lane == 0) dsum[row] = D;
    __syncwarp();
    const T *kb = k + (long)b * T_ * qs + (long)h * dqk;
    const T *vb = v + (long)b * T_ * vs + (long)h * dv;
    float L = lse[row];
    float acc[ATT_PER_LANE];
    for (int j = 0; j < ATT_PER_LANE; j++) acc[j] = 0.0f;
    for (int s0 = 0; s0 <= t; s0 += 32) {
        int s = s0 + lane;
        float ds = 0.0f;
        if (s <= t) {
            float p = expf(scale * dot_global(qsm, kb + (long)s * qs, dqk) - L);
            float dp = dot_global(dosm, vb + (long)s * vs, dv);
            ds = p * (dp - D) * scale;
        }
        int n = t - s0 + 1 < 32 ? t - s0 + 1 : 32;
        for (int jj = 0; jj < n; jj++) {
            float dsj = __shfl_sync(0xffffffffu, ds, jj);
            const T *kr = kb + (long)(s0 + jj) * qs;
            for (int j = 0; j < ATT_PER_LANE; j++) {
                int d = lane + 32 * j;
                if (d < dqk) acc[j] += dsj * ldf(kr[d]);
            }
        }
    }
    float *dqr = dq + ((long)b * T_ + t) * qs + (long)h * dqk;
    for (int j = 0; j < ATT_PER_LANE; j++) {
        int d = lane + 32 * j;
        if (d < dqk) dqr[d] += acc[j];
    }
}

template <typename T>
__global__ void attention_dkdv_kernel(float *dk, float *dvv, const float *dout, const float *lse, const float *dsum,
                                      const T *q, const T *k, const T *v, int B, int T_, int H, int dqk, int dv,
                                      float scale) {
    DYNAMIC_SHARED(float, smem);  // (ATT_WARPS, dqk + dv): k row and v row
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    long row = (long)blockIdx.x * ATT_WARPS + w;  // (b, h, s)
    if (row >= (long)B * H * T_) return;  // whole warp (no block barrier in this kernel)
    int s = (int)(row % T_), h = (int)((row / T_) % H), b = (int)(row / ((long)T_ * H));
    long qs = (long)H * dqk, vs = (long)H * dv;
    float *ksm = smem + w * (dqk + dv), *vsm = ksm + dqk;
    load_row(ksm, k + ((long)b * T_ + s) * qs + (long)h * dqk, dqk, lane, 1);
    load_row(vsm, v + ((long)b * T_ + s) * vs + (long)h * dv, dv, lane, 1);
    __syncwarp();
    const T *qb = q + (long)b * T_ * qs + (long)h * dqk;
    const float *dob = dout + (long)b * T_ * vs + (long)h * dv;
    const float *lb = lse + ((long)b * H + h) * T_, *db = dsum + ((long)b * H + h) * T_;
    float ak[ATT_PER_LANE], av[ATT_PER_LANE];
    for (int j = 0; j < ATT_PER_LANE; j++) ak[j] = av[j] = 0.0f;
    for (int t0 = s; t0 < T_; t0 += 32) {
        int t = t0 + lane;
        float p = 0.0f, ds = 0.0f;
        if (t < T_) {
            p = expf(scale * dot_global(ksm, qb + (long)t * qs, dqk) - lb[t]);
            float dp = dot_global(vsm, dob + (long)t * vs, dv);
            ds = p * (dp - db[t]) * scale;
        }
        int n = T_ - t0 < 32 ? T_ - t0 : 32;
        for (int jj = 0; jj < n; jj++) {
            float pj = __shfl_sync(0xffffffffu, p, jj);
            float dsj = __shfl_sync(0xffffffffu, ds, jj);
            const T *qr = qb + (long)(t0 + jj) * qs;
            const float *dr = dob + (long)(t0 + jj) * vs;
            for (int j = 0; j < ATT_PER_LANE; j++) {
                int d = lane + 32 * j;
                if (d < dqk) ak[j] += dsj * ldf(qr[d]);
                if (d < dv) av[j] += pj * dr[d];
            }
        }
    }
    float *dkr = dk + ((long)b * T_ + s) * qs + (long)h * dqk;
    float *dvr = dvv + ((long)b * T_ + s) * vs + (long)h * dv;
    for (int j = 0; j < ATT_PER_LANE; j++) {
        int d = lane + 32 * j;
        if (d < dqk) dkr[d] += ak[j];
        if (d < dv) dvr[d] += av[j];
    }
}

// Tiled backward: the dq kernel shares K/V chunks among ATT_TW query rows, the dk/dv kernel
// shares Q / dout chunks (and their lse, Dsum) among ATT_TW key rows. Same rules as the tiled
// forward: uniform chunk loops, every warp at every barrier.
template <typename T>
__global__ void attention_dq_tiled_kernel(float *dq, float *dsum, const float *dout, const T *out, const float *lse,
                                          const T *q, const T *k, const T *v, int T_, int H, int dqk, int dv,
                                          float scale) {
    DYNAMIC_SHARED(float, smem);  // K (32, dqk+1) | V (32, dv+1) | q rows (TW, dqk) | dout rows (TW, dv)
    int kst = dqk + 1, vst = dv + 1;
    float *ks = smem, *vsm = ks + 32 * kst, *qsm = vsm + 32 * vst, *dosm = qsm + ATT_TW * dqk;
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    int tiles = (T_ + ATT_TW - 1) / ATT_TW;
    int tile = blockIdx.x % tiles, bh = blockIdx.x / tiles, h = bh % H, b = bh / H;
    int t0 = tile * ATT_TW, t = t0 + w;
    int t_last = t0 + ATT_TW - 1 < T_ - 1 ? t0 + ATT_TW - 1 : T_ - 1;
    int valid = t < T_;
    long qs = (long)H * dqk, vs = (long)H * dv;
    const T *kb = k + (long)b * T_ * qs + (long)h * dqk;
    const T *vb = v + (long)b * T_ * vs + (long)h * dv;
    float *qrow = qsm + w * dqk, *drow = dosm + w * dv;
    int tv = valid ? t : 0;  // an address inside the arrays for a row past T (not read)
    long vo = ((long)b * T_ + tv) * vs + (long)h * dv;
    load_row(qrow, q + ((long)b * T_ + tv) * qs + (long)h * dqk, dqk, lane, valid);
    load_row(drow, dout + vo, dv, lane, valid);
    long row = ((long)b * H + h) * T_ + t;
    float D = 0.0f, L = 0.0f;
    if (valid) {  // uniform over the warp
        D = row_dsum(dout + vo, out + vo, dv, lane);
        L = lse[row];
        if (lane == 0) dsum[row] = D;
    }
    float acc[ATT_PER_LANE];
    for (int j = 0; j < ATT_PER_LANE; j++) acc[j] = 0.0f;
    for (int s0 = 0; s0 <= t_last; s0 += 32) {
        int nk = t_last - s0 + 1 < 32 ? t_last - s0 + 1 : 32;
        __syncthreads();
        load_tile(ks, kst, kb + (long)s0 * qs, qs, nk, dqk);
        load_tile(vsm, vst, vb + (long)s0 * vs, vs, nk, dv);
        __syncthreads();
        if (!valid || s0 > t) continue;
        int s = s0 + lane;
        float ds = 0.0f;
        if (s <= t) {
            const float *kr = ks + lane * kst, *vr = vsm + lane * vst;
            float d1 = 0.0f, d2 = 0.0f;
            for (int i = 0; i < dqk; i++) d1 += qrow[i] * kr[i];
            for (int i = 0; i < dv; i++) d2 += drow[i] * vr[i];
            float p = expf(scale * d1 - L);
            ds = p * (d2 - D) * scale;
        }
        int n = t - s0 + 1 < 32 ? t - s0 + 1 : 32;
        for (int jj = 0; jj < n; jj++) {
            float dsj = __shfl_sync(0xffffffffu, ds, jj);
            const float *kr = ks + jj * kst;
            for (int j = 0; j < ATT_PER_LANE; j++) {
                int d = lane + 32 * j;
                if (d < dqk) acc[j] += dsj * kr[d];
            }
        }
    }
    if (!valid) return;
    float *dqr = dq + ((long)b * T_ + t) * qs + (long)h * dqk;
    for (int j = 0; j < ATT_PER_LANE; j++) {
        int d = lane + 32 * j;
        if (d < dqk) dqr[d] += acc[j];
    }
}

template <typename T>
__global__ void attention_dkdv_tiled_kernel(float *dk, float *dvv, const float *dout, const float *lse,
                                            const float *dsum, const T *q, const T *k, const T *v, int T_, int H,
                                            int dqk, int dv, float scale) {
    DYNAMIC_SHARED(float, smem);  // Q (32, dqk+1) | dout (32, dv+1) | lse, Dsum (32 each) | k rows (TW, dqk) | v rows (TW, dv)
    int qst = dqk + 1, dst = dv + 1;
    float *qsm = smem, *dsm = qsm + 32 * qst, *lsm = dsm + 32 * dst, *Dsm = lsm + 32;
    float *ksm = Dsm + 32, *vsm = ksm + ATT_TW * dqk;
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    int tiles = (T_ + ATT_TW - 1) / ATT_TW;
    int tile = blockIdx.x % tiles, bh = blockIdx.x / tiles, h = bh % H, b = bh / H;
    int sb = tile * ATT_TW, s = sb + w;  // key rows of the block start at sb
    int valid = s < T_;
    long qs = (long)H * dqk, vs = (long)H * dv;
    const T *qb = q + (long)b * T_ * qs + (long)h * dqk;
    const float *dob = dout + (long)b * T_ * vs + (long)h * dv;
    const float *lb = lse + ((long)b * H + h) * T_, *db = dsum + ((long)b * H + h) * T_;
    float *krow = ksm + w * dqk, *vrow = vsm + w * dv;
    int sv = valid ? s : 0;
    load_row(krow, k + ((long)b * T_ + sv) * qs + (long)h * dqk, dqk, lane, valid);
    load_row(vrow, v + ((long)b * T_ + sv) * vs + (long)h * dv, dv, lane, valid);
    float ak[ATT_PER_LANE], av[ATT_PER_LANE];
    for (int j = 0; j < ATT_PER_LANE; j++) ak[j] = av[j] = 0.0f;
    for (int t0 = sb; t0 < T_; t0 += 32) {
        int nq = T_ - t0 < 32 ? T_ - t0 : 32;
        __syncthreads();
        load_tile(qsm, qst, qb + (long)t0 * qs, qs, nq, dqk);
        load_tile(dsm, dst, dob + (long)t0 * vs, vs, nq, dv);
        if ((int)threadIdx.x < nq) {
            lsm[threadIdx.x] = lb[t0 + threadIdx.x];
            Dsm[threadIdx.x] = db[t0 + threadIdx.x];
        }
        __syncthreads();
        if (!valid || t0 + 31 < s) continue;  // uniform over the warp
        int t = t0 + lane;
        float p = 0.0f, ds = 0.0f;
        if (t < T_ && t >= s) {
            const float *qr = qsm + lane * qst, *dr = dsm + lane * dst;
            float d1 = 0.0f, d2 = 0.0f;
            for (int i = 0; i < dqk; i++) d1 += qr[i] * krow[i];
            for (int i = 0; i < dv; i++) d2 += dr[i] * vrow[i];
            p = expf(scale * d1 - lsm[lane]);
            ds = p * (d2 - Dsm[lane]) * scale;
        }
        for (int jj = 0; jj < nq; jj++) {
            float pj = __shfl_sync(0xffffffffu, p, jj);
            float dsj = __shfl_sync(0xffffffffu, ds, jj);
            const float *qr = qsm + jj * qst, *dr = dsm + jj * dst;
            for (int j = 0; j < ATT_PER_LANE; j++) {
                int d = lane + 32 * j;
                if (d < dqk) ak[j] += dsj * qr[d];
                if (d < dv) av[j] += pj * dr[d];
            }
        }
    }
    if (!valid) return;
    float *dkr = dk + ((long)b * T_ + s) * qs + (long)h * dqk;
    float *dvr = dvv + ((long)b * T_ + s) * vs + (long)h * dv;
    for (int j = 0; j < ATT_PER_LANE; j++) {
        int d = lane + 32 * j;
        if (d < dqk) dkr[d] += ak[j];
        if (d < dv) dvr[d] += av[j];
    }
}

static size_t tiled_bwd_smem(int dqk, int dv) {
    return sizeof(float) * (32 * (size_t)(dqk + 1) + 32 * (size_t)(dv + 1) + 64 + ATT_TW * (size_t)(dqk + dv));
}

static void check_head_dims(int dqk, int dv) {
    if (dqk < 1 || dqk > ATT_MAXD || dv < 1 || dv > ATT_MAXD) {
        fprintf(stderr, "error: cuda attention: head sizes dqk %d dv %d must be in 1..%d\n", dqk, dv, ATT_MAXD);
        exit(EXIT_FAILURE);
    }
}

extern "C" {

// 16-bit q, k, v go to the tensor-core kernels (attention_tc.cu) where they take the head sizes
// and the device runs them, unless a test asked for the SIMT kernels
static int use_tensor_cores = 1;
void cu_attention_set_tensor_cores(int on) { use_tensor_cores = on; }
static int tc_path(int dqk, int dv, int dt) {
    return dt != CU_F32 && use_tensor_cores && cu_attention_tc_available(dqk, dv, dt);
}

void cu_attention_forward(void *out, float *lse, const void *q, const void *k, const void *v, int B, int T, int H,
                          int dqk, int dv, float scale, int dt) {
    check_head_dims(dqk, dv);
    if (tc_path(dqk, dv, dt)) {
        cu_attention_tc_forward(out, lse, q, k, v, B, T, H, dqk, dv, scale, dt);
        return;
    }
    long rows = (long)B * H * T;
    size_t smem = tiled_smem(dqk, dv);
    if (smem <= ATT_SMEM_MAX) {  // MLA head sizes fit; larger heads take the untiled kernel
        int blocks = (int)((long)B * H * ((T + ATT_TW - 1) / ATT_TW));
        DISPATCH_DT(dt, E,
                    LAUNCH(attention_forward_tiled_kernel<E>, blocks, 32 * ATT_TW, smem, 0, (E *)out, lse,
                           (const E *)q, (const E *)k, (const E *)v, T, H, dqk, dv, scale));
        return;
    }
    DISPATCH_DT(dt, E,
                LAUNCH(attention_forward_kernel<E>, ceil_div(rows, ATT_WARPS), 32 * ATT_WARPS,
                       sizeof(float) * ATT_WARPS * dqk, 0, (E *)out, lse, (const E *)q, (const E *)k, (const E *)v, B,
                       T, H, dqk, dv, scale));
}

void cu_attention_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout, const void *out,
                           const float *lse, const void *q, const void *k, const void *v, int B, int T, int H,
                           int dqk, int dv_dim, float scale, int dt) {
    check_head_dims(dqk, dv_dim);
    if (tc_path(dqk, dv_dim, dt)) {
        cu_attention_tc_backward(dq, dk, dv, scratch, dout, out, lse, q, k, v, B, T, H, dqk, dv_dim, scale, dt);
        return;
    }
    long rows = (long)B * H * T;
    size_t tsmem = tiled_bwd_smem(dqk, dv_dim);
    if (tsmem <= ATT_SMEM_MAX) {
        int blocks = (int)((long)B * H * ((T + ATT_TW - 1) / ATT_TW));
        DISPATCH_DT(dt, E, {
            LAUNCH(attention_dq_tiled_kernel<E>, blocks, 32 * ATT_TW, tsmem, 0, dq, scratch, dout, (const E *)out,
                   lse, (const E *)q, (const E *)k, (const E *)v, T, H, dqk, dv_dim, scale);
            LAUNCH(attention_dkdv_tiled_kernel<E>, blocks, 32 * ATT_TW, tsmem, 0, dk, dv, dout, lse,
                   (const float *)scratch, (const E *)q, (const E *)k, (const E *)v, T, H, dqk, dv_dim, scale);
        });
        return;
    }
    int grid = ceil_div(rows, ATT_WARPS);
    size_t smem = sizeof(float) * ATT_WARPS * (dqk + dv_dim);
    DISPATCH_DT(dt, E, {
        LAUNCH(attention_dq_kernel<E>, grid, 32 * ATT_WARPS, smem, 0, dq, scratch, dout, (const E *)out, lse,
               (const E *)q, (const E *)k, (const E *)v, B, T, H, dqk, dv_dim, scale);
        LAUNCH(attention_dkdv_kernel<E>, grid, 32 * ATT_WARPS, smem, 0, dk, dv, dout, lse, (const float *)scratch,
               (const E *)q, (const E *)k, (const E *)v, B, T, H, dqk, dv_dim, scale);
    });
}

}  // extern "C"
