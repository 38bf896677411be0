// Optimizer kernels: global gradient norm (two passes, fixed order: deterministic), fused
// AdamW on fp32 master weights (lm_adamw of model/layer_math.h), loss-free bias update.
#include "cuda_common.cuh"
#include "cuda_ops.h"

#define NORM_BLOCKS 256
#define NORM_THREADS 256

// partial sums of squares: block b covers a fixed chunk, threads stride inside it
__global__ void sumsq_partial_kernel(float *partial, const float *g, size_t n) {
    SHARED_ARRAY(float, scratch, 32);
    size_t per = (n + gridDim.x - 1) / gridDim.x;
    size_t i0 = (size_t)blockIdx.x * per, i1 = i0 + per < n ? i0 + per : n;
    float s = 0.0f;
    for (size_t i = i0 + threadIdx.x; i < i1; i += blockDim.x) s += g[i] * g[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) partial[blockIdx.x] = s;
}

__global__ void sumsq_final_kernel(float *out, const float *partial, int np) {
    SHARED_ARRAY(float, scratch, 32);
    float s = 0.0f;
    for (int i = threadIdx.x; i < np; i += blockDim.x) s += partial[i];
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) out[0] = sqrtf(s);
}

// the working copy of a new master weight: bf16 with stochastic rounding, fp16 rounded to nearest
static __device__ inline void store_working(bf16 *pw, size_t i, float p, unsigned seed) {
    pw[i] = round_stochastic_bf16(p, hash32((unsigned long long)i, seed));
}
static __device__ inline void store_working(f16 *pw, size_t i, float p, unsigned seed) {
    (void)seed;
    pw[i] = __float2half(p);
}

static __device__ inline void store_working(float *pw, size_t i, float p, unsigned seed) {
    (void)seed;
    pw[i] = p;
}

// W = the working-copy type, or float for none (pw is then NULL and unused). norm (device,
// may be NULL): the global norm of g as stored; not finite -> no change (a skipped step),
// else the gradients are also clipped to grad_clip after unscaling.
template <typename W>
__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1,
                             float beta2, float eps, float wd, float grad_scale, float b1c, float b2c, W *pw,
                             unsigned seed, const float *norm, float grad_clip) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    if (norm) {
        float nrm = norm[0];
        if (!isfinite(nrm)) return;
        grad_scale *= lm_clip_scale(nrm * grad_scale, grad_clip);
    }
    float mm = m[i], vv = v[i];
    float np = lm_adamw(p[i], g[i] * grad_scale, &mm, &vv, lr, beta1, beta2, eps, wd, b1c, b2c);
    p[i] = np;
    m[i] = mm;
    v[i] = vv;
    if (pw) store_working(pw, i, np, seed);
}

// one thread per expert; the mean in double as the CPU reference
__global__ void bias_update_kernel(float *bias, const float *load, int E, float gamma, const float *guard) {
    int e = blockIdx.x * blockDim.x + threadIdx.x;
    if (e >= E || (guard && !isfinite(guard[0]))) return;
    double mean = 0.0;
    for (int i = 0; i < E; i++) mean += (double)load[i];
    mean /= E;
    double d = mean - (double)load[e];
    bias[e] += gamma * (float)((d > 0) - (d < 0));
}

__global__ void nonfinite_kernel(int *flag, const float *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t stride = (size_t)gridDim.x * blockDim.x;
    int bad = 0;
    for (; i < n; i += stride) bad |= !isfinite(x[i]);
    if (bad) flag[0] = 1;  // benign race: every writer writes 1
}

extern "C" {

void cu_nonfinite_flag(int *flag, const float *x, size_t n) {
    if (n == 0) return;
    long want = ((long)n + 256 * 16 - 1) / (256 * 16);
    int blocks = want < 1 ? 1 : (want > 1024 ? 1024 : (int)want);
    LAUNCH(nonfinite_kernel, blocks, 256, 0, 0, flag, x, n);
}

void cu_global_norm(float *out, const float *g, size_t n, float *scratch) {
    // enough blocks to fill a large GPU, no more than the work needs (scratch: NORM_BLOCKS floats)
    long want = ((long)n + NORM_THREADS * 16 - 1) / (NORM_THREADS * 16);
    int blocks = want < 1 ? 1 : (want > NORM_BLOCKS ? NORM_BLOCKS : (int)want);
    LAUNCH(sumsq_partial_kernel, blocks, NORM_THREADS, 0, 0, scratch, g, n);
    LAUNCH(sumsq_final_kernel, 1, NORM_THREADS, 0, 0, out, scratch, blocks);
}

void cu_adamw(float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2, float eps,
              float wd, float grad_scale, float b1c, float b2c, void *pw, int pw_dt, unsigned seed, const float *norm,
              float grad_clip) {
    if (n == 0) return;
    if (!pw) pw_dt = CU_F32;
    DISPATCH_DT(pw_dt, W,
                LAUNCH(adamw_kernel<W>, ceil_div((long)n, 256), 256, 0, 0, p, g, m, v, n, lr, beta1, beta2, eps, wd,
                       grad_scale, b1c, b2c, (W *)pw, seed, norm, grad_clip));
}

void cu_bias_update(float *bias, const float *load, int E, float gamma, const float *guard) {
    LAUNCH(bias_update_kernel, ceil_div(E, 64), 64, 0, 0, bias, load, E, gamma, guard);
}

}  // extern "C"
