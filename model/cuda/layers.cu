// CUDA layers: embedding, RMSNorm (with the fused residual add), elementwise ops, RoPE,
// SwiGLU, cross-entropy. Semantics of model/layers.h; formulas from model/layer_math.h.
#include "cuda_common.cuh"
#include "cuda_ops.h"

// ---- embedding ------------------------------------------------------------------------------

__global__ void encoder_forward_kernel(float *out, const int *inp, const float *wte, int N, int C) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * C) return;
    long n = i / C, c = i % C;
    out[i] = wte[(long)inp[n] * C + c];
}

// one block per distinct token (segment s of the plan), threads over channels; the token's
// positions are added in position order: the CPU reference's sums, bit for bit
__global__ void encoder_backward_kernel(float *dwte, const float *dout, const int *order, const int *seg,
                                        const int *seg_tok, int C) {
    int s = blockIdx.x, p0 = seg[s], p1 = seg[s + 1];
    float *row = dwte + (long)seg_tok[s] * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = row[c];
        for (int p = p0; p < p1; p++) acc += dout[(long)order[p] * C + c];
        row[c] = acc;
    }
}

// ---- RMSNorm: one warp per row ---------------------------------------------------------------

template <typename To, typename Ti>
__global__ void rmsnorm_forward_kernel(To *out, float *rstd, const Ti *inp, int in_stride, const float *weight, int N,
                                       int C, float eps) {
    int lane = threadIdx.x % 32;
    int n = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (n >= N) return;  // whole warps only
    const Ti *x = inp + (long)n * in_stride;
    float ss = 0.0f;
    for (int c = lane; c < C; c += 32) ss += ldf(x[c]) * ldf(x[c]);
    ss = warp_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)C + eps);
    if (lane == 0) rstd[n] = r;
    To *o = out + (long)n * C;
    for (int c = lane; c < C; c += 32) o[c] = stf<To>(ldf(x[c]) * r * weight[c]);
}

template <typename To>
__global__ void residual_rmsnorm_forward_kernel(float *x_out, To *out, float *rstd, const float *a, const float *b,
                                                const float *weight, int N, int C, float eps) {
    int lane = threadIdx.x % 32;
    int n = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (n >= N) return;
    const float *ar = a + (long)n * C, *br = b + (long)n * C;
    float *xr = x_out + (long)n * C;
    float ss = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float x = ar[c] + br[c];
        xr[c] = x;
        ss += x * x;
    }
    ss = warp_sum(ss);
    float r = 1.0f / sqrtf(ss / (float)C + eps);
    if (lane == 0) rstd[n] = r;
    To *o = out + (long)n * C;
    for (int c = lane; c < C; c += 32) o[c] = stf<To>(xr[c] * r * weight[c]);  // a lane reads only what it wrote
}

// dx += r * dy * w - r^3 / C * x * sum(dy * w * x)
template <typename Ti>
__global__ void rmsnorm_backward_dx_kernel(float *dinp, int dinp_stride, const float *dout, const Ti *inp,
                                           int in_stride, const float *weight, const float *rstd, int N, int C) {
    int lane = threadIdx.x % 32;
    int n = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (n >= N) return;
    const Ti *x = inp + (long)n * in_stride;
    const float *dy = dout + (long)n * C;
    float *dx = dinp + (long)n * dinp_stride;
    float r = rstd[n], dot = 0.0f;
    for (int c = lane; c < C; c += 32) dot += dy[c] * weight[c] * ldf(x[c]);
    dot = warp_sum(dot);
    float k = r * r * r * dot / (float)C;
    for (int c = lane; c < C; c += 32) dx[c] += r * dy[c] * weight[c] - k * ldf(x[c]);
}

// dweight[c] += sum_n dy x r, deterministic in two passes: segment s of the tokens -> partial
// (S, C), then the segments summed in order
template <typename Ti>
__global__ void rmsnorm_backward_dw_partial_kernel(float *partial, const float *dout, const Ti *inp, int in_stride,
                                                   const float *rstd, int N, int C, int per) {
    int c = blockIdx.x * blockDim.x + threadIdx.x, sgm = blockIdx.y;
    if (c >= C) return;
    int n0 = sgm * per, n1 = n0 + per < N ? n0 + per : N;
    float acc = 0.0f;
    for (int n = n0; n < n1; n++) acc += dout[(long)n * C + c] * ldf(inp[(long)n * in_stride + c]) * rstd[n];
    partial[(long)sgm * C + c] = acc;
}
__global__ void rmsnorm_backward_dw_final_kernel(float *dweight, const float *partial, int S, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float acc = 0.0f;
    for (int sgm = 0; sgm < S; sgm++) acc += partial[(long)sgm * C + c];
    dweight[c] += acc;
}

// device scratch for the partial sums, grown on demand (first steps only), one per device: a
// buffer of device 0 used from device 1 is an illegal address (or, with peer access, a race
// between the two devices' backward passes)
#define DW_MAX_DEVICES 64
static float *dw_scratch[DW_MAX_DEVICES];
static size_t dw_scratch_floats[DW_MAX_DEVICES];
static float *get_dw_scratch(size_t n) {
    int dev = 0;
#if !defined(MOE_CUDA_HARNESS)  // the harness has one device
    cudaCheck(cudaGetDevice(&dev));
#endif
    if (dev < 0 || dev >= DW_MAX_DEVICES) {
        fprintf(stderr, "error: internal: cu_rmsnorm_backward on device %d (at most %d devices)\n", dev, DW_MAX_DEVICES);
        exit(EXIT_FAILURE);
    }
    if (n > dw_scratch_floats[dev]) {
        if (dw_scratch[dev]) cudaCheck(cudaFree(dw_scratch[dev]));  // cudaFree waits for the kernels using it
        cudaCheck(cudaMalloc((void **)&dw_scratch[dev], sizeof(float) * n));
        dw_scratch_floats[dev] = n;
    }
    return dw_scratch[dev];
}

// ---- elementwise -------------------------------------------------------------------------------

__global__ void add_kernel(float *y, const float *a, const float *b, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a[i] + b[i];
}

// one thread per (token, head, pair)
template <typename T>
__global__ void rope_kernel(T *x, int N, int n_heads, int tok_stride, int head_stride, int d, const int *pos,
                            float theta, float sign) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    int half = d / 2;
    if (i >= (long)N * n_heads * half) return;
    int p = (int)(i % half);
    long nh = i / half;
    int h = (int)(nh % n_heads);
    long n = nh / n_heads;
    T *v = x + n * tok_stride + (long)h * head_stride;
    float a = ldf(v[2 * p]), b = ldf(v[2 * p + 1]);
    lm_rotate(&a, &b, lm_rope_angle(pos[n], p, d, theta), sign);
    v[2 * p] = stf<T>(a);
    v[2 * p + 1] = stf<T>(b);
}

template <typename T>
__global__ void swiglu_forward_kernel(T *out, const T *h1, const T *h3, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = stf<T>(lm_silu(ldf(h1[i])) * ldf(h3[i]));
}

// the gradients are GEMM operands: written in the activation type, not accumulated
template <typename T>
__global__ void swiglu_backward_kernel(T *dh1, T *dh3, const float *dout, const T *h1, const T *h3, long n) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float a = ldf(h1[i]), b = ldf(h3[i]), d = dout[i];
    dh1[i] = stf<T>(d * b * lm_dsilu(a));
    dh3[i] = stf<T>(d * lm_silu(a));
}

// ---- cross-entropy: one block per row ------------------------------------------------------------

template <typename T>
__global__ void crossentropy_forward_kernel(float *lse, float *row_loss, const T *logits, const int *targets, int V) {
    SHARED_ARRAY(float, scratch, 32);
    int n = blockIdx.x;
    const T *row = logits + (long)n * V;
    float mx = -FLT_MAX;
    for (int i = threadIdx.x; i < V; i += blockDim.x) mx = fmaxf(mx, ldf(row[i]));
    mx = block_max(mx, scratch);
    float sum = 0.0f;
    for (int i = threadIdx.x; i < V; i += blockDim.x) sum += expf(ldf(row[i]) - mx);
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) {
        float l = mx + logf(sum);
        lse[n] = l;
        row_loss[n] = targets[n] >= 0 ? l - ldf(row[targets[n]]) : 0.0f;
    }
}

// one block: the mean over valid rows, in a fixed order (deterministic)
__global__ void crossentropy_mean_kernel(float *loss_out, int *n_valid_out, const float *row_loss, const int *targets,
                                         int N) {
    SHARED_ARRAY(float, scratch, 32);
    float s = 0.0f, cnt = 0.0f;
    for (int n = threadIdx.x; n < N; n += blockDim.x) {
        s += row_loss[n];
        cnt += targets[n] >= 0 ? 1.0f : 0.0f;
    }
    s = block_sum(s, scratch);
    cnt = block_sum(cnt, scratch);
    if (threadIdx.x == 0) {
        int nv = (int)(cnt + 0.5f);
        n_valid_out[0] = nv;
        loss_out[0] = nv ? s / (float)nv : 0.0f;
    }
}

template <typename T>
__global__ void crossentropy_backward_kernel(T *logits, const float *lse, const int *targets, int N, int V, float dloss,
                                             const int *n_valid) {
    long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long)N * V) return;
    int n = (int)(i / V), c = (int)(i % V);
    int nv = n_valid[0];
    float scale = nv ? dloss / (float)nv : 0.0f;
    int t = targets[n];
    if (t < 0) {
        logits[i] = stf<T>(0.0f);
        return;
    }
    float g = expf(ldf(logits[i]) - lse[n]) * scale;
    if (c == t) g -= scale;
    logits[i] = stf<T>(g);
}

// ---- C interface ------------------------------------------------------------------------------------

template <typename To>
static void rmsnorm_forward_to(To *out, float *rstd, const void *inp, int in_stride, int in_dt, const float *weight,
                               int N, int C, float eps) {
    DISPATCH_DT(in_dt, Ti, auto *kfn = rmsnorm_forward_kernel<To, Ti>;
                LAUNCH(kfn, ceil_div(N, 4), 128, 0, 0, out, rstd, (const Ti *)inp, in_stride, weight, N, C, eps));
}

extern "C" {

void cu_encoder_forward(float *out, const int *inp, const float *wte, int N, int C) {
    LAUNCH(encoder_forward_kernel, ceil_div((long)N * C, 256), 256, 0, 0, out, inp, wte, N, C);
}
int cu_encoder_backward_plan(const int *tok, int N, int V, int *order, int *seg, int *seg_tok, int *count) {
    for (int v = 0; v <= V; v++) count[v] = 0;
    for (int n = 0; n < N; n++) count[tok[n] + 1]++;
    for (int v = 0; v < V; v++) count[v + 1] += count[v];  // count[v] = first slot of token v
    int n_seg = 0;
    for (int v = 0; v < V; v++)
        if (count[v + 1] > count[v]) seg[n_seg] = count[v], seg_tok[n_seg++] = v;
    seg[n_seg] = N;
    for (int n = 0; n < N; n++) order[count[tok[n]]++] = n;  // stable: positions in order
    return n_seg;
}

void cu_encoder_backward(float *dwte, const float *dout, const int *order, const int *seg, const int *seg_tok, int n_seg,
                         int C) {
    if (n_seg > 0) LAUNCH(encoder_backward_kernel, n_seg, 128, 0, 0, dwte, dout, order, seg, seg_tok, C);
}

void cu_rmsnorm_forward(void *out, int out_dt, float *rstd, const void *inp, int in_stride, int in_dt,
                        const float *weight, int N, int C, float eps) {
    if (N <= 0) return;
    DISPATCH_DT(out_dt, To, rmsnorm_forward_to<To>((To *)out, rstd, inp, in_stride, in_dt, weight, N, C, eps));
}
void cu_residual_rmsnorm_forward(float *x_out, void *out, int out_dt, float *rstd, const float *a, const float *b,
                                 const float *weight, int N, int C, float eps) {
    if (N <= 0) return;
    DISPATCH_DT(out_dt, To,
                LAUNCH(residual_rmsnorm_forward_kernel<To>, ceil_div(N, 4), 128, 0, 0, x_out, (To *)out, rstd, a, b,
                       weight, N, C, eps));
}
void cu_rmsnorm_backward(float *dinp, int dinp_stride, float *dweight, const float *dout, const void *inp,
                         int in_stride, int in_dt, const float *weight, const float *rstd, int N, int C) {
    if (N <= 0) return;
    int S = N / 128 < 1 ? 1 : (N / 128 > 64 ? 64 : N / 128);  // token segments: parallelism for long batches
    int per = (N + S - 1) / S;
    S = (N + per - 1) / per;
    float *partial = get_dw_scratch((size_t)S * C);
    dim3 grid(ceil_div(C, 128), S);
    DISPATCH_DT(in_dt, Ti,
                LAUNCH(rmsnorm_backward_dx_kernel<Ti>, ceil_div(N, 4), 128, 0, 0, dinp, dinp_stride, dout,
                       (const Ti *)inp, in_stride, weight, rstd, N, C);
                LAUNCH(rmsnorm_backward_dw_partial_kernel<Ti>, grid, 128, 0, 0, partial, dout, (const Ti *)inp,
                       in_stride, rstd, N, C, per));
    LAUNCH(rmsnorm_backward_dw_final_kernel, ceil_div(C, 128), 128, 0, 0, dweight, partial, S, C);
}

void cu_add(float *y, const float *a, const float *b, long n) {
    if (n > 0) LAUNCH(add_kernel, ceil_div(n, 256), 256, 0, 0, y, a, b, n);
}
void cu_rope_apply(void *x, int dt, int N, int n_heads, int tok_stride, int head_stride, int d, const int *pos,
                   float theta, int inverse) {
    long total = (long)N * n_heads * (d / 2);
    if (total > 0)
        DISPATCH_DT(dt, T,
                    LAUNCH(rope_kernel<T>, ceil_div(total, 256), 256, 0, 0, (T *)x, N, n_heads, tok_stride,
                           head_stride, d, pos, theta, inverse ? -1.0f : 1.0f));
}
void cu_swiglu_forward(void *out, const void *h1, const void *h3, long n, int dt) {
    if (n > 0)
        DISPATCH_DT(dt, T,
                    LAUNCH(swiglu_forward_kernel<T>, ceil_div(n, 256), 256, 0, 0, (T *)out, (const T *)h1,
                           (const T *)h3, n));
}
void cu_swiglu_backward(void *dh1, void *dh3, const float *dout, const void *h1, const void *h3, long n, int dt) {
    if (n > 0)
        DISPATCH_DT(dt, T,
                    LAUNCH(swiglu_backward_kernel<T>, ceil_div(n, 256), 256, 0, 0, (T *)dh1, (T *)dh3, dout,
                           (const T *)h1, (const T *)h3, n));
}

void cu_crossentropy_forward(float *lse, float *loss_out, int *n_valid_out, float *scratch, const void *logits,
                             const int *targets, int N, int V, int dt) {
    if (N > 0)
        DISPATCH_DT(dt, T,
                    LAUNCH(crossentropy_forward_kernel<T>, N, 256, 0, 0, lse, scratch, (const T *)logits, targets, V));
    LAUNCH(crossentropy_mean_kernel, 1, 256, 0, 0, loss_out, n_valid_out, scratch, targets, N);
}
void cu_crossentropy_backward(void *logits, const float *lse, const int *targets, int N, int V, float dloss,
                              const int *n_valid, int dt) {
    if (N <= 0) return;
    DISPATCH_DT(dt, T,
                LAUNCH(crossentropy_backward_kernel<T>, ceil_div((long)N * V, 256), 256, 0, 0, (T *)logits, lse,
                       targets, N, V, dloss, n_valid));
}

}  // extern "C"
