// One source of truth for the scalar formulas shared by the CPU reference (C) and the CUDA
// kernels (compiled by nvcc or by the CUDA-on-CPU harness). Plain inline functions.
#ifndef MOE_LAYER_MATH_H
#define MOE_LAYER_MATH_H

#include <math.h>

#if defined(__CUDACC__) || defined(MOE_CUDA_HARNESS)
#define MOE_HD __host__ __device__
#else
#define MOE_HD
#endif

static inline MOE_HD float lm_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
static inline MOE_HD float lm_silu(float x) { return x / (1.0f + expf(-x)); }
// d silu(x) / dx = s (1 + x (1 - s)), s = sigmoid(x)
static inline MOE_HD float lm_dsilu(float x) {
    float s = lm_sigmoid(x);
    return s * (1.0f + x * (1.0f - s));
}
// RoPE angle of pair i (0 <= i < d/2) at position pos: pos * theta^(-2i/d)
static inline MOE_HD float lm_rope_angle(int pos, int i, int d, float theta) {
    return (float)pos * powf(theta, -2.0f * (float)i / (float)d);
}
// rotate the pair (x0, x1) by angle a (sign = -1 for the inverse)
static inline MOE_HD void lm_rotate(float *x0, float *x1, float a, float sign) {
    float c = cosf(a), s = sign * sinf(a);
    float a0 = *x0, a1 = *x1;
    *x0 = a0 * c - a1 * s;
    *x1 = a0 * s + a1 * c;
}
// learning-rate schedule: linear warmup then cosine decay to min_lr at max_steps
static inline MOE_HD float lm_lr_schedule(int step, int warmup, int max_steps, float lr, float min_lr) {
    if (step < warmup) return lr * (float)(step + 1) / (float)warmup;
    if (step >= max_steps) return min_lr;
    float ratio = (float)(step - warmup) / (float)(max_steps - warmup > 0 ? max_steps - warmup : 1);
    float coeff = 0.5f * (1.0f + cosf(3.14159265358979f * ratio));
    return min_lr + coeff * (lr - min_lr);
}
// one AdamW update of a single parameter; returns the new value, updates m and v
static inline MOE_HD float lm_adamw(float p, float g, float *m, float *v, float lr, float b1, float b2, float eps,
                                    float wd, float b1c, float b2c) {
    float mm = b1 * *m + (1.0f - b1) * g;
    float vv = b2 * *v + (1.0f - b2) * g * g;
    *m = mm;
    *v = vv;
    float mhat = mm / b1c, vhat = vv / b2c;
    return p - lr * (mhat / (sqrtf(vhat) + eps) + wd * p);
}

#endif
