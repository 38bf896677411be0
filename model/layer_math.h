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

// global-norm clipping: the factor on the gradients whose norm is `norm` (clip <= 0: none)
static inline MOE_HD float lm_clip_scale(float norm, float clip) {
    return (clip > 0.0f && norm > clip) ? clip / norm : 1.0f;
}

// ---- routing (one definition for the CPU reference and the CUDA kernels) ---------------

// scores (E) of one token from its gate logits: sigmoid, or softmax over all experts
static inline MOE_HD void lm_gate_scores(float *s, const float *logits, int E, int softmax) {
    if (!softmax) {
        for (int e = 0; e < E; e++) s[e] = lm_sigmoid(logits[e]);
        return;
    }
    float mx = logits[0], sum = 0.0f;
    for (int e = 1; e < E; e++) mx = logits[e] > mx ? logits[e] : mx;
    for (int e = 0; e < E; e++) sum += (s[e] = expf(logits[e] - mx));
    for (int e = 0; e < E; e++) s[e] /= sum;
}

// top-k of v over allowed entries (allowed may be NULL), descending; ties go to the lower index
static inline MOE_HD void lm_topk(const float *v, const unsigned char *allowed, int n, int k, int *out) {
    for (int j = 0; j < k; j++) {
        int best = -1;
        for (int i = 0; i < n; i++) {
            if (allowed && !allowed[i]) continue;
            int taken = 0;
            for (int q = 0; q < j; q++) taken |= (out[q] == i);
            if (taken) continue;
            if (best < 0 || v[i] > v[best]) best = i;
        }
        out[j] = best;
    }
}

// DeepSeek-V3 routing of one token: experts = top-K of scores + bias (bias may be NULL),
// limited to the best topG of G groups when G > 1 (group score: sum of the top-2 biased scores,
// the max score without a bias); weights = the chosen unbiased scores, renormalised to sum 1
// for the sigmoid gate (not for softmax), times route_scale.
// Scratch: biased (E) floats, allowed (E) bytes, group_scores (G) floats, keep (G) ints.
static inline MOE_HD void lm_route_token(const float *scores, const float *bias, int E, int K, int G, int topG,
                                         int softmax, float route_scale, int *sel, float *w, float *biased,
                                         unsigned char *allowed, float *group_scores, int *keep) {
    for (int e = 0; e < E; e++) biased[e] = scores[e] + (bias ? bias[e] : 0.0f);
    const unsigned char *mask = 0;
    if (G > 1) {
        int per = E / G;
        for (int g = 0; g < G; g++) {
            const float *v = biased + g * per;
            if (bias) {
                int t2[2];
                lm_topk(v, 0, per, 2, t2);
                group_scores[g] = v[t2[0]] + v[t2[1]];
            } else {
                float mx = v[0];
                for (int i = 1; i < per; i++) mx = v[i] > mx ? v[i] : mx;
                group_scores[g] = mx;
            }
        }
        lm_topk(group_scores, 0, G, topG, keep);
        for (int e = 0; e < E; e++) allowed[e] = 0;
        for (int j = 0; j < topG; j++)
            for (int i = 0; i < per; i++) allowed[keep[j] * per + i] = 1;
        mask = allowed;
    }
    lm_topk(biased, mask, E, K, sel);
    float sum = 0.0f;
    for (int k = 0; k < K; k++) sum += (w[k] = scores[sel[k]]);
    float norm = softmax ? 1.0f : 1.0f / sum;
    for (int k = 0; k < K; k++) w[k] *= norm * route_scale;
}

#endif
