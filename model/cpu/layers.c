// CPU reference layers: forward and backward side by side. See model/layers.h.
#include "../layers.h"

#include <float.h>
#include <string.h>

#include "../../common/gemm.h"

// ---- embedding ---------------------------------------------------------------------------

void encoder_forward(float *out, const int *inp, const float *wte, int N, int C) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) memcpy(out + (size_t)n * C, wte + (size_t)inp[n] * C, sizeof(float) * C);
}

void encoder_backward(float *dwte, const float *dout, const int *inp, int N, int C) {
    // serial over tokens (rows may repeat), parallel over channels
#pragma omp parallel for
    for (int c0 = 0; c0 < C; c0 += 16) {
        int c1 = c0 + 16 < C ? c0 + 16 : C;
        for (int n = 0; n < N; n++) {
            float *d = dwte + (size_t)inp[n] * C;
            const float *g = dout + (size_t)n * C;
            for (int c = c0; c < c1; c++) d[c] += g[c];
        }
    }
}

// ---- RMSNorm -------------------------------------------------------------------------------

void rmsnorm_forward(float *out, float *rstd, const float *inp, int in_stride, const float *weight, int N, int C,
                     float eps) {
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * in_stride;
        float ss = 0.0f;
        for (int c = 0; c < C; c++) ss += x[c] * x[c];
        float r = 1.0f / sqrtf(ss / (float)C + eps);
        rstd[n] = r;
        float *o = out + (size_t)n * C;
        for (int c = 0; c < C; c++) o[c] = x[c] * r * weight[c];
    }
}

void rmsnorm_backward(float *dinp, int dinp_stride, float *dweight, const float *dout, const float *inp,
                      int in_stride, const float *weight, const float *rstd, int N, int C) {
    // y = x * r * w, r = (mean(x^2) + eps)^-1/2
    // dx = r * (dy*w) - r^3 / C * x * sum(dy*w*x);  dw += dy * x * r
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t)n * in_stride;
        const float *dy = dout + (size_t)n * C;
        float *dx = dinp + (size_t)n * dinp_stride;
        float r = rstd[n];
        float dot = 0.0f;
        for (int c = 0; c < C; c++) dot += dy[c] * weight[c] * x[c];
        float k = r * r * r * dot / (float)C;
        for (int c = 0; c < C; c++) dx[c] += r * dy[c] * weight[c] - k * x[c];
    }
    // parameter gradient: reduce over tokens, parallel over channels
#pragma omp parallel for
    for (int c0 = 0; c0 < C; c0 += 16) {
        int c1 = c0 + 16 < C ? c0 + 16 : C;
        for (int n = 0; n < N; n++) {
            const float *x = inp + (size_t)n * in_stride;
            const float *dy = dout + (size_t)n * C;
            float r = rstd[n];
            for (int c = c0; c < c1; c++) dweight[c] += dy[c] * x[c] * r;
        }
    }
}

// ---- linear ---------------------------------------------------------------------------------

void matmul_forward(float *out, const float *inp, const float *weight, int N, int IC, int OC) {
    gemm(0, 1, N, OC, IC, 1.0f, inp, IC, weight, IC, 0.0f, out, OC);
}

void matmul_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight, int N,
                     int IC, int OC) {
    if (dinp) gemm(0, 0, N, IC, OC, 1.0f, dout, OC, weight, IC, 1.0f, dinp, IC);
    if (dweight) gemm(1, 0, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f, dweight, IC);
}

// ---- RoPE -------------------------------------------------------------------------------------

void rope_apply(float *x, int N, int n_heads, int tok_stride, int head_stride, int d, const int *pos, float theta,
                int inverse) {
    float sign = inverse ? -1.0f : 1.0f;
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        for (int h = 0; h < n_heads; h++) {
            float *p = x + (size_t)n * tok_stride + (size_t)h * head_stride;
            for (int i = 0; i < d / 2; i++) lm_rotate(&p[2 * i], &p[2 * i + 1], lm_rope_angle(pos[n], i, d, theta), sign);
        }
    }
}

void rope_tables(float *cos_tab, float *sin_tab, int T, int d, float theta) {
    for (int t = 0; t < T; t++)
        for (int i = 0; i < d / 2; i++) {
            float a = lm_rope_angle(t, i, d, theta);
            cos_tab[t * (d / 2) + i] = cosf(a);
            sin_tab[t * (d / 2) + i] = sinf(a);
        }
}

void rope_apply_table(float *x, int N, int n_heads, int tok_stride, int head_stride, int d, const int *pos,
                      const float *cos_tab, const float *sin_tab, int inverse) {
    float sign = inverse ? -1.0f : 1.0f;
    int half = d / 2;
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *cs = cos_tab + (size_t)pos[n] * half, *sn = sin_tab + (size_t)pos[n] * half;
        for (int h = 0; h < n_heads; h++) {
            float *p = x + (size_t)n * tok_stride + (size_t)h * head_stride;
            for (int i = 0; i < half; i++) {
                float c = cs[i], s = sign * sn[i];
                float a0 = p[2 * i], a1 = p[2 * i + 1];
                p[2 * i] = a0 * c - a1 * s;
                p[2 * i + 1] = a0 * s + a1 * c;
            }
        }
    }
}

void transpose(float *out, const float *in, int rows, int cols) {
    enum { TB = 32 };
#pragma omp parallel for collapse(2)
    for (int r0 = 0; r0 < rows; r0 += TB)
        for (int c0 = 0; c0 < cols; c0 += TB) {
            int r1 = r0 + TB < rows ? r0 + TB : rows, c1 = c0 + TB < cols ? c0 + TB : cols;
            for (int c = c0; c < c1; c++)
                for (int r = r0; r < r1; r++) out[(size_t)c * rows + r] = in[(size_t)r * cols + c];
        }
}

// ---- attention ---------------------------------------------------------------------------------

void attention_forward(float *out, float *att, const float *q, const float *k, const float *v, int B, int T, int H,
                       int dqk, int dv, float scale) {
    int qs = H * dqk, vs = H * dv;
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            float *A = att + ((size_t)b * H + h) * T * T;
            const float *qb = q + (size_t)b * T * qs + h * dqk;
            const float *kb = k + (size_t)b * T * qs + h * dqk;
            const float *vb = v + (size_t)b * T * vs + h * dv;
            // scores (T, T) = scale * Q K^T; only the lower triangle is used
            gemm(0, 1, T, T, dqk, scale, qb, qs, kb, qs, 0.0f, A, T);
            for (int t = 0; t < T; t++) {
                float *row = A + (size_t)t * T;
                float mx = -FLT_MAX;
                for (int s = 0; s <= t; s++) mx = row[s] > mx ? row[s] : mx;
                float sum = 0.0f;
                for (int s = 0; s <= t; s++) {
                    row[s] = expf(row[s] - mx);
                    sum += row[s];
                }
                float inv = 1.0f / sum;
                for (int s = 0; s <= t; s++) row[s] *= inv;
                for (int s = t + 1; s < T; s++) row[s] = 0.0f;
            }
            gemm(0, 0, T, dv, T, 1.0f, A, T, vb, vs, 0.0f, out + (size_t)b * T * vs + h * dv, vs);
        }
}

void attention_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout, const float *att,
                        const float *q, const float *k, const float *v, int B, int T, int H, int dqk, int dv_dim,
                        float scale) {
    int qs = H * dqk, vs = H * dv_dim;
#pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const float *A = att + ((size_t)b * H + h) * T * T;
            float *dA = scratch + ((size_t)b * H + h) * T * T;
            const float *dob = dout + (size_t)b * T * vs + h * dv_dim;
            const float *vb = v + (size_t)b * T * vs + h * dv_dim;
            const float *qb = q + (size_t)b * T * qs + h * dqk;
            const float *kb = k + (size_t)b * T * qs + h * dqk;
            // dV += A^T dO ; dA = dO V^T
            gemm(1, 0, T, dv_dim, T, 1.0f, A, T, dob, vs, 1.0f, dv + (size_t)b * T * vs + h * dv_dim, vs);
            gemm(0, 1, T, T, dv_dim, 1.0f, dob, vs, vb, vs, 0.0f, dA, T);
            // softmax backward: dS = A * (dA - sum(dA * A)), times scale
            for (int t = 0; t < T; t++) {
                const float *a = A + (size_t)t * T;
                float *d = dA + (size_t)t * T;
                float dot = 0.0f;
                for (int s = 0; s <= t; s++) dot += a[s] * d[s];
                for (int s = 0; s <= t; s++) d[s] = a[s] * (d[s] - dot) * scale;
                for (int s = t + 1; s < T; s++) d[s] = 0.0f;
            }
            // dQ += dS K ; dK += dS^T Q
            gemm(0, 0, T, dqk, T, 1.0f, dA, T, kb, qs, 1.0f, dq + (size_t)b * T * qs + h * dqk, qs);
            gemm(1, 0, T, dqk, T, 1.0f, dA, T, qb, qs, 1.0f, dk + (size_t)b * T * qs + h * dqk, qs);
        }
}

// ---- SwiGLU -------------------------------------------------------------------------------------

void swiglu_forward(float *out, const float *h1, const float *h3, long n) {
#pragma omp parallel for
    for (long i = 0; i < n; i++) out[i] = lm_silu(h1[i]) * h3[i];
}

void swiglu_backward(float *dh1, float *dh3, const float *dout, const float *h1, const float *h3, long n) {
#pragma omp parallel for
    for (long i = 0; i < n; i++) {
        dh1[i] += dout[i] * h3[i] * lm_dsilu(h1[i]);
        dh3[i] += dout[i] * lm_silu(h1[i]);
    }
}

// ---- cross-entropy ---------------------------------------------------------------------------------

float crossentropy_forward(float *lse, const float *logits, const int *targets, int N, int V, int *n_valid_out) {
    double total = 0.0;
    int n_valid = 0;
#pragma omp parallel for reduction(+ : total, n_valid)
    for (int n = 0; n < N; n++) {
        const float *row = logits + (size_t)n * V;
        float mx = -FLT_MAX;
        for (int i = 0; i < V; i++) mx = row[i] > mx ? row[i] : mx;
        float sum = 0.0f;
        for (int i = 0; i < V; i++) sum += expf(row[i] - mx);
        lse[n] = mx + logf(sum);
        if (targets[n] >= 0) {
            total += (double)(lse[n] - row[targets[n]]);
            n_valid++;
        }
    }
    if (n_valid_out) *n_valid_out = n_valid;
    return n_valid ? (float)(total / n_valid) : 0.0f;
}

void crossentropy_backward(float *logits, const float *lse, const int *targets, int N, int V, float dloss,
                           int n_valid) {
    float scale = n_valid ? dloss / (float)n_valid : 0.0f;
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float *row = logits + (size_t)n * V;
        if (targets[n] < 0) {
            memset(row, 0, sizeof(float) * V);
            continue;
        }
        for (int i = 0; i < V; i++) row[i] = expf(row[i] - lse[n]) * scale;
        row[targets[n]] -= scale;
    }
}
