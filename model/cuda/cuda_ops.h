// C interface of the CUDA backend (model/cuda/*.cu). Every pointer argument is DEVICE memory
// (under the CUDA-on-CPU harness device memory is host memory). Shapes and semantics follow
// the CPU reference (model/layers.h, model/cpu/moe.c): same names, same row-major layouts,
// backward functions ACCUMULATE (+=) into parameter and input gradients unless said.
// fp32 throughout; every function is asynchronous on the default stream unless it says it
// synchronises (only cu_download and cu_sync do).
#ifndef MOE_CUDA_OPS_H
#define MOE_CUDA_OPS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---- device memory ----------------------------------------------------------------------
void *cu_malloc(size_t bytes);  // exits with a message on failure
void cu_free(void *p);
void cu_upload(void *dst, const void *src, size_t bytes);
void cu_download(void *dst, const void *src, size_t bytes);  // synchronises
void cu_zero(void *p, size_t bytes);
void cu_sync(void);
// "cuda" (nvcc build) or "cuda-harness" (g++ build through tests/cuda_harness)
const char *cu_backend(void);
// number of visible devices (0 when none or no driver: the caller falls back to the CPU, and
// nothing is printed); name, free and total memory of device 0. Any output pointer may be NULL.
int cu_device_info(char *name, size_t name_len, size_t *free_bytes, size_t *total_bytes);
// 1 when the device computes bf16 GEMMs (compute capability 8.0 or later; always under the harness)
int cu_supports_bf16(void);

// ---- GEMM (row-major, the semantics of common/gemm.h; cuBLAS under nvcc, the CPU gemm()
// under the harness) -------------------------------------------------------------------------
void cu_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
             int ldb, float beta, float *C, int ldc);
// out (N, OC) = inp (N, IC) @ weight (OC, IC)^T
void cu_matmul_forward(float *out, const float *inp, const float *weight, int N, int IC, int OC);
// dinp (N, IC) += dout @ weight; dweight (OC, IC) += dout^T @ inp; either may be NULL
void cu_matmul_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight, int N,
                        int IC, int OC);

// ---- embedding ------------------------------------------------------------------------------
void cu_encoder_forward(float *out, const int *inp, const float *wte, int N, int C);
// deterministic: one thread per channel adds the tokens in order (as the CPU reference)
void cu_encoder_backward(float *dwte, const float *dout, const int *inp, int N, int C);

// ---- RMSNorm ----------------------------------------------------------------------------------
void cu_rmsnorm_forward(float *out, float *rstd, const float *inp, int in_stride, const float *weight, int N, int C,
                        float eps);
// fused residual: x_out (N, C) = a + b, then out = rmsnorm(x_out)
void cu_residual_rmsnorm_forward(float *x_out, float *out, float *rstd, const float *a, const float *b,
                                 const float *weight, int N, int C, float eps);
void cu_rmsnorm_backward(float *dinp, int dinp_stride, float *dweight, const float *dout, const float *inp,
                         int in_stride, const float *weight, const float *rstd, int N, int C);

// ---- elementwise --------------------------------------------------------------------------------
// y (n) = a + b (out-of-place residual add; y may alias a)
void cu_add(float *y, const float *a, const float *b, long n);
void cu_rope_apply(float *x, int N, int n_heads, int tok_stride, int head_stride, int d, const int *pos,
                   float theta, int inverse);
void cu_swiglu_forward(float *out, const float *h1, const float *h3, long n);
void cu_swiglu_backward(float *dh1, float *dh3, const float *dout, const float *h1, const float *h3, long n);

// ---- causal attention, flash style (online softmax; saves lse instead of the probabilities) --
// q, k (B, T, H, dqk), v (B, T, H, dv) -> out (B, T, H, dv); lse (B, H, T): log-sum-exp of the
// scaled scores of each query row. dqk, dv <= 256.
void cu_attention_forward(float *out, float *lse, const float *q, const float *k, const float *v, int B, int T, int H,
                          int dqk, int dv, float scale);
// dq, dk, dv accumulate; scratch: B*H*T floats.
void cu_attention_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout, const float *out,
                           const float *lse, const float *q, const float *k, const float *v, int B, int T, int H,
                           int dqk, int dv_dim, float scale);

// ---- cross-entropy ------------------------------------------------------------------------------
// lse (N); loss_out (1): mean loss over targets >= 0 (0 when none); n_valid_out (1); scratch: N
// floats. Nothing is copied to the host.
void cu_crossentropy_forward(float *lse, float *loss_out, int *n_valid_out, float *scratch, const float *logits,
                             const int *targets, int N, int V);
// In place: logits -> (softmax - onehot) * dloss / n_valid (n_valid read from device memory)
void cu_crossentropy_backward(float *logits, const float *lse, const int *targets, int N, int V, float dloss,
                              const int *n_valid);

// ---- MoE routing, dispatch, combine ---------------------------------------------------------
// scores (N, E) from logits with sigmoid (score_func 0) or softmax (1)
void cu_moe_scores(float *scores, const float *logits, int N, int E, int score_func);
// moe_route_token for every token: sel (N, K), wts (N, K); bias (E) or NULL; E <= 256,
// n_groups <= 64, E % n_groups == 0. Returns -1 (and prints nothing) when a size is unsupported.
int cu_moe_route(int *sel, float *wts, const float *scores, const float *bias, int N, int E, int K, int n_groups,
                 int n_limited_groups, int score_func, float route_scale);
// capacity in token order (cap = max rows per expert), expert_off (E + 1), row_of (N*K, -1 when
// dropped), perm (N*K: assignment of each sorted row), load (E): assignments before dropping
// (float counts, ADDED to), dropped (1, ADDED to). No host synchronisation.
void cu_moe_dispatch(int *row_of, int *perm, int *expert_off, float *load, float *dropped, const int *sel, int N,
                     int K, int E, long cap);
// xe (rows, C) = x[perm[r] / K] for r < expert_off[E] (rows beyond are left alone)
void cu_moe_gather(float *xe, const float *x, const int *perm, const int *expert_off, int N, int K, int C, int E);
// grouped GEMM over the experts' contiguous row blocks (sizes read on device):
//   out[r] = inp[r] @ W_e^T for r in [off[e], off[e+1]), W_e = w + e*OC*IC (OC, IC)
void cu_grouped_matmul_forward(float *out, const float *inp, const float *w, const int *expert_off, int E,
                               int max_rows, int IC, int OC);
// dinp[r] += dout[r] @ W_e; dw_e += dout_e^T @ inp_e (either may be NULL)
void cu_grouped_matmul_backward(float *dinp, float *dw, const float *dout, const float *inp, const float *w,
                                const int *expert_off, int E, int max_rows, int IC, int OC);
// y (N, C) += sum_k wts[n,k] * ey[row_of[n,k]] (skipping dropped)
void cu_moe_combine(float *y, const float *ey, const float *wts, const int *row_of, int N, int K, int C);
// dey (rows, C) = w * dy[token]; dwts (N, K) = dy[token] . ey[row] (0 for dropped)
void cu_moe_combine_backward(float *dey, float *dwts, const float *dy, const float *ey, const float *wts,
                             const int *perm, const int *row_of, const int *expert_off, int N, int K, int C, int E);
// dx (N, C) += sum_k dxe[row_of[n,k]]
void cu_moe_scatter_add(float *dx, const float *dxe, const int *row_of, int N, int K, int C);
// gate backward (no auxiliary loss): dlogits (N, E) from dwts through the renormalisation and
// the score function (moe_backward's per-token block without the aux term)
void cu_moe_gate_backward(float *dlogits, const float *dwts, const float *scores, const int *sel, int N, int E,
                          int K, int score_func, float route_scale);

// the same with the balancing-loss term (moe_backward's with_aux branch): aux_f (n_seg, E),
// seg_len tokens per segment (T for the sequence-wise loss, N for the batch loss)
void cu_moe_gate_backward_aux(float *dlogits, const float *dwts, const float *scores, const int *sel, int N, int E,
                              int K, int score_func, float route_scale, const float *aux_f, int seg_len, int n_seg,
                              float alpha, float aux_scale);
// balancing loss alpha * mean over segments of sum_i f_i P_i: writes aux_f (n_seg, E) and ADDS
// the loss to loss_acc[0]; scratch: n_seg floats
void cu_moe_aux_forward(float *aux_f, float *loss_acc, float *scratch, const float *scores, const int *sel, int n_seg,
                        int seg_len, int E, int K, float alpha);
// routing statistics: ADDS the sum over tokens of the entropy of the normalised scores to
// ent_sum[0] and of the largest weight to top1_sum[0]; scratch: 2N floats
void cu_moe_routing_stats(float *ent_sum, float *top1_sum, float *scratch, const float *scores, const float *wts,
                          int N, int E, int K);
// acc[0] += scale * sum(x) (fixed order)
void cu_sum_into(float *acc, const float *x, int n, float scale);

// ---- optimizer ----------------------------------------------------------------------------------
// out (1) = sqrt(sum g^2) over n values; scratch >= 1024 floats
void cu_global_norm(float *out, const float *g, size_t n, float *scratch);
// AdamW on a contiguous range (one tensor): lm_adamw of model/layer_math.h per element
void cu_adamw(float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2, float eps,
              float wd, float grad_scale, float b1c, float b2c);
// flag[0] = 1 when any of x[0..n) is inf or NaN (flag untouched otherwise)
void cu_nonfinite_flag(int *flag, const float *x, size_t n);
// loss-free balancing: b_i += gamma * sign(mean(load) - load_i), for one MoE layer
void cu_bias_update(float *bias, const float *load, int E, float gamma);

// ---- bf16 (model/cuda/bf16.cu): uint16_t = raw bf16 bits; fp32 accumulation everywhere ------
void cu_f32_to_bf16(uint16_t *out, const float *in, long n);  // round to nearest even
void cu_bf16_to_f32(float *out, const uint16_t *in, long n);
// stochastic rounding (unbiased), deterministic for a given seed
void cu_f32_to_bf16_stochastic(uint16_t *out, const float *in, long n, unsigned seed);
void cu_encoder_forward_bf16(uint16_t *out, const int *inp, const uint16_t *wte, int N, int C);
void cu_rmsnorm_forward_bf16(uint16_t *out, float *rstd, const uint16_t *inp, const uint16_t *weight, int N, int C,
                             float eps);
void cu_swiglu_forward_bf16(uint16_t *out, const uint16_t *h1, const uint16_t *h3, long n);
// writes (does not accumulate) dh1, dh3
void cu_swiglu_backward_bf16(uint16_t *dh1, uint16_t *dh3, const uint16_t *dout, const uint16_t *h1,
                             const uint16_t *h3, long n);
// AdamW on fp32 master weights, then pw (bf16 working copy) = stochastic_round(master)
void cu_adamw_bf16(uint16_t *pw, float *master, const float *g, float *m, float *v, size_t n, float lr, float beta1,
                   float beta2, float eps, float wd, float grad_scale, float b1c, float b2c, unsigned seed);
// row-major GEMM as cu_gemm with bf16 A, B, C and fp32 compute (cublasGemmEx)
void cu_gemm_bf16(int transA, int transB, int M, int N, int K, float alpha, const uint16_t *A, int lda,
                  const uint16_t *B, int ldb, float beta, uint16_t *C, int ldc);

// the same with bf16 A and B and an fp32 C (tensor cores, fp32 accumulation and output)
void cu_gemm_bf16_f32(int transA, int transB, int M, int N, int K, float alpha, const uint16_t *A, int lda,
                      const uint16_t *B, int ldb, float beta, float *C, int ldc);

#ifdef __cplusplus
}
#endif

#endif
