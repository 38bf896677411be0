// Causal self-attention, flash style: one warp per query row (forward, dq) or key row (dk,
// dv); keys are visited in chunks of 32 (one per lane) with an online softmax, so nothing of
// size T x T is stored: forward saves lse (B, H, T) and backward recomputes the probabilities.
// Layouts as model/layers.h: q, k (B, T, H, dqk), v and out (B, T, H, dv).
// A simple correct version (no tensor cores, no K/V tiles in shared memory).
#include "cuda_common.cuh"
#include "cuda_ops.h"

#define ATT_MAXD 256              // largest head size (dqk and dv)
#define ATT_PER_LANE (ATT_MAXD / 32)
#define ATT_WARPS 4               // rows per block

static __device__ inline float dot_global(const float *a, const float *b, int d) {
    float s = 0.0f;
    for (int i = 0; i < d; i++) s += a[i] * b[i];
    return s;
}

// out row t = sum_{s <= t} softmax(scale q_t . k_s) v_s
__global__ void attention_forward_kernel(float *out, float *lse, const float *q, const float *k, const float *v,
                                         int B, int T, int H, int dqk, int dv, float scale) {
    DYNAMIC_SHARED(float, smem);  // (ATT_WARPS, dqk): the query row of each warp
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    long row = (long)blockIdx.x * ATT_WARPS + w;  // (b, h, t) with t fastest
    if (row >= (long)B * H * T) return;  // whole warp
    int t = (int)(row % T), h = (int)((row / T) % H), b = (int)(row / ((long)T * H));
    long qs = (long)H * dqk, vs = (long)H * dv;
    const float *qrow = q + ((long)b * T + t) * qs + (long)h * dqk;
    const float *kb = k + (long)b * T * qs + (long)h * dqk;
    const float *vb = v + (long)b * T * vs + (long)h * dv;
    float *qsm = smem + w * dqk;
    for (int i = lane; i < dqk; i += 32) qsm[i] = qrow[i];
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
            const float *vr = vb + (long)(s0 + jj) * vs;
            for (int j = 0; j < ATT_PER_LANE; j++) {
                int d = lane + 32 * j;
                if (d < dv) acc[j] += pj * vr[d];
            }
        }
        m = mnew;
    }
    float inv = 1.0f / l;
    float *orow = out + ((long)b * T + t) * vs + (long)h * dv;
    for (int j = 0; j < ATT_PER_LANE; j++) {
        int d = lane + 32 * j;
        if (d < dv) orow[d] = acc[j] * inv;
    }
    if (lane == 0) lse[row] = m + logf(l);
}

// The same computation with K and V shared by the block: ATT_TW warps take ATT_TW consecutive
// query rows of one (b, h); each chunk of 32 keys is loaded once into shared memory for all of
// them (ATT_TW times less K/V traffic). Every warp takes part in every load and barrier (the
// chunk loop is uniform over the block); a warp whose row is past T or before the chunk only
// skips the arithmetic.
#define ATT_TW 8
__global__ void attention_forward_tiled_kernel(float *out, float *lse, const float *q, const float *k, const float *v,
                                               int B, int T, int H, int dqk, int dv, float scale) {
    DYNAMIC_SHARED(float, smem);  // K chunk (32, dqk + 1) | V chunk (32, dv) | q rows (ATT_TW, dqk)
    (void)B;  // the grid covers B * H * tiles
    int kst = dqk + 1;            // padded: lane j reads row j, stride dqk + 1 avoids bank conflicts
    float *ks = smem, *vsm = ks + 32 * kst, *qsm = vsm + 32 * dv;
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    int tiles = (T + ATT_TW - 1) / ATT_TW;
    int tile = blockIdx.x % tiles, bh = blockIdx.x / tiles, h = bh % H, b = bh / H;
    int t0 = tile * ATT_TW, t = t0 + w;
    int t_last = t0 + ATT_TW - 1 < T - 1 ? t0 + ATT_TW - 1 : T - 1;
    int valid = t < T;
    long qs = (long)H * dqk, vs = (long)H * dv;
    const float *kb = k + (long)b * T * qs + (long)h * dqk;
    const float *vb = v + (long)b * T * vs + (long)h * dv;
    float *qrow = qsm + w * dqk;
    for (int i = lane; i < dqk; i += 32) qrow[i] = valid ? q[((long)b * T + t) * qs + (long)h * dqk + i] : 0.0f;
    float acc[ATT_PER_LANE];
    for (int j = 0; j < ATT_PER_LANE; j++) acc[j] = 0.0f;
    float m = -FLT_MAX, l = 0.0f;
    for (int s0 = 0; s0 <= t_last; s0 += 32) {
        int nk = t_last - s0 + 1 < 32 ? t_last - s0 + 1 : 32;  // keys of the chunk any row needs
        __syncthreads();  // the previous chunk is consumed
        for (int i = threadIdx.x; i < nk * dqk; i += blockDim.x) ks[(i / dqk) * kst + i % dqk] = kb[(long)(s0 + i / dqk) * qs + i % dqk];
        for (int i = threadIdx.x; i < nk * dv; i += blockDim.x) vsm[i] = vb[(long)(s0 + i / dv) * vs + i % dv];
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
    float *orow = out + ((long)b * T + t) * vs + (long)h * dv;
    for (int j = 0; j < ATT_PER_LANE; j++) {
        int d = lane + 32 * j;
        if (d < dv) orow[d] = acc[j] * inv;
    }
    if (lane == 0) lse[((long)b * H + h) * T + t] = m + logf(l);
}

static size_t tiled_smem(int dqk, int dv) { return sizeof(float) * (32 * (size_t)(dqk + 1) + 32 * (size_t)dv + ATT_TW * (size_t)dqk); }

// Dsum (B, H, T) = sum_d dout * out per query row
__global__ void attention_dsum_kernel(float *dsum, const float *dout, const float *out, int B, int T, int H, int dv) {
    int lane = threadIdx.x % 32;
    long row = (long)blockIdx.x * ATT_WARPS + threadIdx.x / 32;
    if (row >= (long)B * H * T) return;
    int t = (int)(row % T), h = (int)((row / T) % H), b = (int)(row / ((long)T * H));
    long off = ((long)b * T + t) * H * dv + (long)h * dv;
    float s = 0.0f;
    for (int d = lane; d < dv; d += 32) s += dout[off + d] * out[off + d];
    s = warp_sum(s);
    if (lane == 0) dsum[row] = s;
}

// dq_t += sum_{s <= t} ds_ts k_s, ds = p (dout_t . v_s - Dsum_t) scale
__global__ void attention_dq_kernel(float *dq, const float *dout, const float *lse, const float *dsum, const float *q,
                                    const float *k, const float *v, int B, int T, int H, int dqk, int dv,
                                    float scale) {
    DYNAMIC_SHARED(float, smem);  // (ATT_WARPS, dqk + dv): q row and dout row
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    long row = (long)blockIdx.x * ATT_WARPS + w;
    if (row >= (long)B * H * T) return;
    int t = (int)(row % T), h = (int)((row / T) % H), b = (int)(row / ((long)T * H));
    long qs = (long)H * dqk, vs = (long)H * dv;
    float *qsm = smem + w * (dqk + dv), *dosm = qsm + dqk;
    for (int i = lane; i < dqk; i += 32) qsm[i] = q[((long)b * T + t) * qs + (long)h * dqk + i];
    for (int i = lane; i < dv; i += 32) dosm[i] = dout[((long)b * T + t) * vs + (long)h * dv + i];
    __syncwarp();
    const float *kb = k + (long)b * T * qs + (long)h * dqk;
    const float *vb = v + (long)b * T * vs + (long)h * dv;
    float L = lse[row], D = dsum[row];
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
            const float *kr = kb + (long)(s0 + jj) * qs;
            for (int j = 0; j < ATT_PER_LANE; j++) {
                int d = lane + 32 * j;
                if (d < dqk) acc[j] += dsj * kr[d];
            }
        }
    }
    float *dqr = dq + ((long)b * T + t) * qs + (long)h * dqk;
    for (int j = 0; j < ATT_PER_LANE; j++) {
        int d = lane + 32 * j;
        if (d < dqk) dqr[d] += acc[j];
    }
}

// for key row s: dv_s += sum_{t >= s} p_ts dout_t ; dk_s += sum_{t >= s} ds_ts q_t
__global__ void attention_dkdv_kernel(float *dk, float *dvv, const float *dout, const float *lse, const float *dsum,
                                      const float *q, const float *k, const float *v, int B, int T, int H, int dqk,
                                      int dv, float scale) {
    DYNAMIC_SHARED(float, smem);  // (ATT_WARPS, dqk + dv): k row and v row
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    long row = (long)blockIdx.x * ATT_WARPS + w;  // (b, h, s)
    if (row >= (long)B * H * T) return;
    int s = (int)(row % T), h = (int)((row / T) % H), b = (int)(row / ((long)T * H));
    long qs = (long)H * dqk, vs = (long)H * dv;
    float *ksm = smem + w * (dqk + dv), *vsm = ksm + dqk;
    for (int i = lane; i < dqk; i += 32) ksm[i] = k[((long)b * T + s) * qs + (long)h * dqk + i];
    for (int i = lane; i < dv; i += 32) vsm[i] = v[((long)b * T + s) * vs + (long)h * dv + i];
    __syncwarp();
    const float *qb = q + (long)b * T * qs + (long)h * dqk;
    const float *dob = dout + (long)b * T * vs + (long)h * dv;
    const float *lb = lse + ((long)b * H + h) * T, *db = dsum + ((long)b * H + h) * T;
    float ak[ATT_PER_LANE], av[ATT_PER_LANE];
    for (int j = 0; j < ATT_PER_LANE; j++) ak[j] = av[j] = 0.0f;
    for (int t0 = s; t0 < T; t0 += 32) {
        int t = t0 + lane;
        float p = 0.0f, ds = 0.0f;
        if (t < T) {
            p = expf(scale * dot_global(qb + (long)t * qs, ksm, dqk) - lb[t]);
            float dp = dot_global(dob + (long)t * vs, vsm, dv);
            ds = p * (dp - db[t]) * scale;
        }
        int n = T - t0 < 32 ? T - t0 : 32;
        for (int jj = 0; jj < n; jj++) {
            float pj = __shfl_sync(0xffffffffu, p, jj);
            float dsj = __shfl_sync(0xffffffffu, ds, jj);
            const float *qr = qb + (long)(t0 + jj) * qs;
            const float *dr = dob + (long)(t0 + jj) * vs;
            for (int j = 0; j < ATT_PER_LANE; j++) {
                int d = lane + 32 * j;
                if (d < dqk) ak[j] += dsj * qr[d];
                if (d < dv) av[j] += pj * dr[d];
            }
        }
    }
    float *dkr = dk + ((long)b * T + s) * qs + (long)h * dqk;
    float *dvr = dvv + ((long)b * T + s) * vs + (long)h * dv;
    for (int j = 0; j < ATT_PER_LANE; j++) {
        int d = lane + 32 * j;
        if (d < dqk) dkr[d] += ak[j];
        if (d < dv) dvr[d] += av[j];
    }
}

// Tiled backward: the dq kernel shares K/V chunks among ATT_TW query rows, the dk/dv kernel
// shares Q / dout chunks (and their lse, Dsum) among ATT_TW key rows. Same rules as the tiled
// forward: uniform chunk loops, every warp at every barrier.
__global__ void attention_dq_tiled_kernel(float *dq, const float *dout, const float *lse, const float *dsum,
                                          const float *q, const float *k, const float *v, int T, int H, int dqk,
                                          int dv, float scale) {
    DYNAMIC_SHARED(float, smem);  // K (32, dqk+1) | V (32, dv+1) | q rows (TW, dqk) | dout rows (TW, dv)
    int kst = dqk + 1, vst = dv + 1;
    float *ks = smem, *vsm = ks + 32 * kst, *qsm = vsm + 32 * vst, *dosm = qsm + ATT_TW * dqk;
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    int tiles = (T + ATT_TW - 1) / ATT_TW;
    int tile = blockIdx.x % tiles, bh = blockIdx.x / tiles, h = bh % H, b = bh / H;
    int t0 = tile * ATT_TW, t = t0 + w;
    int t_last = t0 + ATT_TW - 1 < T - 1 ? t0 + ATT_TW - 1 : T - 1;
    int valid = t < T;
    long qs = (long)H * dqk, vs = (long)H * dv;
    const float *kb = k + (long)b * T * qs + (long)h * dqk;
    const float *vb = v + (long)b * T * vs + (long)h * dv;
    float *qrow = qsm + w * dqk, *drow = dosm + w * dv;
    for (int i = lane; i < dqk; i += 32) qrow[i] = valid ? q[((long)b * T + t) * qs + (long)h * dqk + i] : 0.0f;
    for (int i = lane; i < dv; i += 32) drow[i] = valid ? dout[((long)b * T + t) * vs + (long)h * dv + i] : 0.0f;
    long row = ((long)b * H + h) * T + t;
    float L = valid ? lse[row] : 0.0f, D = valid ? dsum[row] : 0.0f;
    float acc[ATT_PER_LANE];
    for (int j = 0; j < ATT_PER_LANE; j++) acc[j] = 0.0f;
    for (int s0 = 0; s0 <= t_last; s0 += 32) {
        int nk = t_last - s0 + 1 < 32 ? t_last - s0 + 1 : 32;
        __syncthreads();
        for (int i = threadIdx.x; i < nk * dqk; i += blockDim.x) ks[(i / dqk) * kst + i % dqk] = kb[(long)(s0 + i / dqk) * qs + i % dqk];
        for (int i = threadIdx.x; i < nk * dv; i += blockDim.x) vsm[(i / dv) * vst + i % dv] = vb[(long)(s0 + i / dv) * vs + i % dv];
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
    float *dqr = dq + ((long)b * T + t) * qs + (long)h * dqk;
    for (int j = 0; j < ATT_PER_LANE; j++) {
        int d = lane + 32 * j;
        if (d < dqk) dqr[d] += acc[j];
    }
}

__global__ void attention_dkdv_tiled_kernel(float *dk, float *dvv, const float *dout, const float *lse,
                                            const float *dsum, const float *q, const float *k, const float *v, int T,
                                            int H, int dqk, int dv, float scale) {
    DYNAMIC_SHARED(float, smem);  // Q (32, dqk+1) | dout (32, dv+1) | lse, Dsum (32 each) | k rows (TW, dqk) | v rows (TW, dv)
    int qst = dqk + 1, dst = dv + 1;
    float *qsm = smem, *dsm = qsm + 32 * qst, *lsm = dsm + 32 * dst, *Dsm = lsm + 32;
    float *ksm = Dsm + 32, *vsm = ksm + ATT_TW * dqk;
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    int tiles = (T + ATT_TW - 1) / ATT_TW;
    int tile = blockIdx.x % tiles, bh = blockIdx.x / tiles, h = bh % H, b = bh / H;
    int sb = tile * ATT_TW, s = sb + w;  // key rows of the block start at sb
    int valid = s < T;
    long qs = (long)H * dqk, vs = (long)H * dv;
    const float *qb = q + (long)b * T * qs + (long)h * dqk;
    const float *dob = dout + (long)b * T * vs + (long)h * dv;
    const float *lb = lse + ((long)b * H + h) * T, *db = dsum + ((long)b * H + h) * T;
    float *krow = ksm + w * dqk, *vrow = vsm + w * dv;
    for (int i = lane; i < dqk; i += 32) krow[i] = valid ? k[((long)b * T + s) * qs + (long)h * dqk + i] : 0.0f;
    for (int i = lane; i < dv; i += 32) vrow[i] = valid ? v[((long)b * T + s) * vs + (long)h * dv + i] : 0.0f;
    float ak[ATT_PER_LANE], av[ATT_PER_LANE];
    for (int j = 0; j < ATT_PER_LANE; j++) ak[j] = av[j] = 0.0f;
    for (int t0 = sb; t0 < T; t0 += 32) {
        int nq = T - t0 < 32 ? T - t0 : 32;
        __syncthreads();
        for (int i = threadIdx.x; i < nq * dqk; i += blockDim.x) qsm[(i / dqk) * qst + i % dqk] = qb[(long)(t0 + i / dqk) * qs + i % dqk];
        for (int i = threadIdx.x; i < nq * dv; i += blockDim.x) dsm[(i / dv) * dst + i % dv] = dob[(long)(t0 + i / dv) * vs + i % dv];
        if ((int)threadIdx.x < nq) {
            lsm[threadIdx.x] = lb[t0 + threadIdx.x];
            Dsm[threadIdx.x] = db[t0 + threadIdx.x];
        }
        __syncthreads();
        if (!valid || t0 + 31 < s) continue;  // uniform over the warp
        int t = t0 + lane;
        float p = 0.0f, ds = 0.0f;
        if (t < T && t >= s) {
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
    float *dkr = dk + ((long)b * T + s) * qs + (long)h * dqk;
    float *dvr = dvv + ((long)b * T + s) * vs + (long)h * dv;
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

void cu_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T, int H,
                          int dqk, int dv, float scale) {
    check_head_dims(dqk, dv);
    long rows = (long)B * H * T;
    size_t smem = tiled_smem(dqk, dv);
    if (smem <= 48 * 1024) {  // MLA head sizes fit; larger heads take the untiled kernel
        long blocks = (long)B * H * ((T + ATT_TW - 1) / ATT_TW);
        LAUNCH(attention_forward_tiled_kernel, (int)blocks, 32 * ATT_TW, smem, 0, out, lse, q, k, v, B, T, H, dqk, dv,
               scale);
        return;
    }
    LAUNCH(attention_forward_kernel, ceil_div(rows, ATT_WARPS), 32 * ATT_WARPS, sizeof(float) * ATT_WARPS * dqk, 0,
           out, lse, q, k, v, B, T, H, dqk, dv, scale);
}

void cu_attention_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout, const float *out,
                           const float *lse, const float *q, const float *k, const float *v, int B, int T, int H,
                           int dqk, int dv_dim, float scale) {
    check_head_dims(dqk, dv_dim);
    long rows = (long)B * H * T;
    int grid = ceil_div(rows, ATT_WARPS);
    size_t smem = sizeof(float) * ATT_WARPS * (dqk + dv_dim);
    LAUNCH(attention_dsum_kernel, grid, 32 * ATT_WARPS, 0, 0, scratch, dout, out, B, T, H, dv_dim);
    size_t tsmem = tiled_bwd_smem(dqk, dv_dim);
    if (tsmem <= 48 * 1024) {
        int blocks = (int)((long)B * H * ((T + ATT_TW - 1) / ATT_TW));
        LAUNCH(attention_dq_tiled_kernel, blocks, 32 * ATT_TW, tsmem, 0, dq, dout, lse, scratch, q, k, v, T, H, dqk,
               dv_dim, scale);
        LAUNCH(attention_dkdv_tiled_kernel, blocks, 32 * ATT_TW, tsmem, 0, dk, dv, dout, lse, scratch, q, k, v, T, H,
               dqk, dv_dim, scale);
        return;
    }
    LAUNCH(attention_dq_kernel, grid, 32 * ATT_WARPS, smem, 0, dq, dout, lse, scratch, q, k, v, B, T, H, dqk, dv_dim,
           scale);
    LAUNCH(attention_dkdv_kernel, grid, 32 * ATT_WARPS, smem, 0, dk, dv, dout, lse, scratch, q, k, v, B, T, H, dqk,
           dv_dim, scale);
}

}  // extern "C"
