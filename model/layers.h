// Layer math of the CPU reference, forward and backward side by side (llm.c style).
// N = number of tokens (B*T). All buffers are row-major fp32.
// Backward functions ACCUMULATE (+=) into parameter gradients and into input gradients;
// the caller zeroes activation-gradient buffers when needed.
// The CUDA backend implements the same functions and is compared against these.
#ifndef MOE_LAYERS_H
#define MOE_LAYERS_H

#include <math.h>

#include "layer_math.h"

// ---- embedding -------------------------------------------------------------------------
// out (N, C) = wte[inp[n]]
void encoder_forward(float *out, const int *inp, const float *wte, int N, int C);
void encoder_backward(float *dwte, const float *dout, const int *inp, int N, int C);

// ---- RMSNorm ----------------------------------------------------------------------------
// out (N, C) = inp * rstd * weight, rstd (N) = 1 / sqrt(mean(inp^2) + eps).
// inp rows are in_stride apart (in_stride >= C), out and dout are contiguous (N, C).
void rmsnorm_forward(float *out, float *rstd, const float *inp, int in_stride, const float *weight, int N, int C,
                     float eps);
void rmsnorm_backward(float *dinp, int dinp_stride, float *dweight, const float *dout, const float *inp,
                      int in_stride, const float *weight, const float *rstd, int N, int C);

// ---- linear (no bias) -------------------------------------------------------------------
// out (N, OC) = inp (N, IC) @ weight (OC, IC)^T
void matmul_forward(float *out, const float *inp, const float *weight, int N, int IC, int OC);
void matmul_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight, int N,
                     int IC, int OC);

// ---- RoPE (DeepSeek-V3: interleaved pairs, rotated as complex numbers) -------------------
// In place on x: token n, head h, the d values at x + n*tok_stride + h*head_stride.
// pos (N): position of each token in its sequence. inverse = 1 rotates by -angle (the
// backward of a rotation is its transpose).
void rope_apply(float *x, int N, int n_heads, int tok_stride, int head_stride, int d, const int *pos, float theta,
                int inverse);

// The same rotation with precomputed tables cos_tab, sin_tab (T, d/2) indexed by position
// (rope_tables fills them with lm_rope_angle): no transcendental functions per element.
void rope_tables(float *cos_tab, float *sin_tab, int T, int d, float theta);
void rope_apply_table(float *x, int N, int n_heads, int tok_stride, int head_stride, int d, const int *pos,
                      const float *cos_tab, const float *sin_tab, int inverse);

// out (cols, rows) = in (rows, cols) transposed
void transpose(float *out, const float *in, int rows, int cols);

// ---- causal self-attention core ----------------------------------------------------------
// q, k (B, T, H, dqk), v (B, T, H, dv) -> out (B, T, H, dv); att (B, H, T, T) keeps the
// softmax probabilities for backward (upper triangle zero).
void attention_forward(float *out, float *att, const float *q, const float *k, const float *v, int B, int T, int H,
                       int dqk, int dv, float scale);
// dq, dk, dv accumulate; scratch (B, H, T, T) is overwritten.
void attention_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout, const float *att,
                        const float *q, const float *k, const float *v, int B, int T, int H, int dqk, int dv_dim,
                        float scale);

// ---- SwiGLU -------------------------------------------------------------------------------
// out (n) = silu(h1) * h3
void swiglu_forward(float *out, const float *h1, const float *h3, long n);
void swiglu_backward(float *dh1, float *dh3, const float *dout, const float *h1, const float *h3, long n);

// ---- cross-entropy over the vocabulary --------------------------------------------------
// logits (N, V); targets (N), -1 = ignored. Returns the mean loss over non-ignored targets
// (0 when none); lse (N) keeps log-sum-exp per row. n_valid_out: count of non-ignored targets.
float crossentropy_forward(float *lse, const float *logits, const int *targets, int N, int V, int *n_valid_out);
// In place: logits becomes dlogits = (softmax - onehot) * dloss / n_valid (0 rows for ignored).
void crossentropy_backward(float *logits, const float *lse, const int *targets, int N, int V, float dloss,
                           int n_valid);

#endif
