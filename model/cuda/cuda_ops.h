// C interface of the CUDA backend (model/cuda/*.cu). Every pointer argument is DEVICE memory
// (under the CUDA-on-CPU harness device memory is host memory). Shapes and semantics follow
// the CPU reference (model/layers.h, model/cpu/moe.c): same names, same row-major layouts,
// backward functions ACCUMULATE (+=) into parameter and input gradients unless said.
// Every function is asynchronous on the default stream unless it says it synchronises (only
// cu_download and cu_sync do).
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
// nothing is printed); name, free and total memory of the current device (device 0 unless
// cu_select_device chose another). Any output pointer may be NULL.
int cu_device_info(char *name, size_t name_len, size_t *free_bytes, size_t *total_bytes);
// number of visible devices without creating a context (0 when none; 1 under the harness)
int cu_device_count(void);
// make device `index` current for this process (call before any other CUDA call, cuBLAS
// included, so that no context is created on device 0); 0, or -1 when there is no such
// device. Under the harness every process stands for a device of its own: always 0.
int cu_select_device(int index);
// compute capability major * 10 + minor of the current device (0 when none; 90 under the harness)
int cu_compute_capability(void);

// ---- element types ---------------------------------------------------------------------
// Activations and the working copy of the weights are stored in one of three element types
// (the run's precision); every accumulation is fp32. A buffer of "type dt" is a void pointer
// to fp32 (float), bf16 or fp16 values (raw bits, uint16_t on the host). Fixed fp32 buffers
// stay float *. Rule of the model: a tensor that is a GEMM operand (inputs, weights, the
// output gradients a GEMM reads) is of type dt; a tensor a GEMM or a reduction accumulates
// into (parameter gradients, input gradients, the residual stream, statistics) is fp32.
typedef enum { CU_F32 = 0, CU_BF16 = 1, CU_F16 = 2 } CuDtype;  // the same values as Precision (plan.h)
size_t cu_dtype_size(int dt);                                   // 4, 2, 2
const char *cu_dtype_name(int dt);                              // "fp32", "bf16", "fp16"
// 1 when the device has tensor cores for dt (bf16: compute capability 8.0+, fp16: 7.0+; fp32:
// always); under the harness always 1
int cu_supports_dtype(int dt);
// 1 when a tensor-core kernel of half type dt can run here: the device has the tensor cores
// (cu_supports_dtype) and this build holds an image of `kernel` (a __global__ function) for it
int cu_tensor_core_kernel_ready(int dt, const void *kernel);
// out (n, of out_dt) = in (n, of in_dt), round to nearest even; the same type is a copy
void cu_convert(void *out, int out_dt, const void *in, int in_dt, long n);
// fp32 -> bf16 with stochastic rounding (unbiased), deterministic for a seed
void cu_f32_to_bf16_stochastic(uint16_t *out, const float *in, long n, unsigned seed);

// ---- GEMM (row-major, the semantics of common/gemm.h; cuBLAS under nvcc, the CPU gemm()
// under the harness) -------------------------------------------------------------------------
void cu_gemm(int transA, int transB, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
             int ldb, float beta, float *C, int ldc);
// A and B of type ab_dt, C of type c_dt (CU_F32 or ab_dt), fp32 accumulation (cublasGemmEx,
// CUBLAS_COMPUTE_32F; fp32 inputs run exact fp32, no TF32). beta != 0 reads C.
void cu_gemm_ex(int transA, int transB, int M, int N, int K, float alpha, const void *A, int lda, const void *B,
                int ldb, int ab_dt, float beta, void *C, int ldc, int c_dt);
// out (N, OC) of out_dt = inp (N, IC) @ weight (OC, IC)^T; inp and weight of type dt
void cu_matmul_forward(void *out, int out_dt, const void *inp, const void *weight, int N, int IC, int OC, int dt);
// dinp (N, IC) += dout @ weight; dweight (OC, IC) += dout^T @ inp; both fp32 (either may be
// NULL); dout, inp, weight of type dt
void cu_matmul_backward(float *dinp, float *dweight, const void *dout, const void *inp, const void *weight, int N,
                        int IC, int OC, int dt);

// ---- embedding (the residual stream is fp32; wte is the fp32 master) ------------------------
void cu_encoder_forward(float *out, const int *inp, const float *wte, int N, int C);
// The backward of the embedding in two parts. On the HOST: the positions grouped by token (a
// stable counting sort of tok (N) in [0, V)): order (N) = positions, segment s holds
// order[seg[s] .. seg[s+1]) (seg: n_seg + 1 ints) of token seg_tok[s] (n_seg ints); count:
// V + 1 ints of scratch. Returns n_seg (the distinct tokens).
int cu_encoder_backward_plan(const int *tok, int N, int V, int *order, int *seg, int *seg_tok, int *count);
// On the device (order, seg, seg_tok uploaded): dwte[seg_tok[s]] += dout of each position of
// segment s, in position order: one block per distinct token, deterministic, the CPU
// reference's sums bit for bit
void cu_encoder_backward(float *dwte, const float *dout, const int *order, const int *seg, const int *seg_tok, int n_seg,
                         int C);

// ---- RMSNorm (weights: the fp32 master; rstd fp32) -------------------------------------------
// out (N, C) of out_dt = rmsnorm(inp), inp (N rows of in_stride) of in_dt
void cu_rmsnorm_forward(void *out, int out_dt, float *rstd, const void *inp, int in_stride, int in_dt,
                        const float *weight, int N, int C, float eps);
// fused residual: x_out (N, C) = a + b (fp32; x_out may alias a or b), then out (out_dt) = rmsnorm(x_out)
void cu_residual_rmsnorm_forward(float *x_out, void *out, int out_dt, float *rstd, const float *a, const float *b,
                                 const float *weight, int N, int C, float eps);
// dinp (fp32, row stride dinp_stride) += ..., dweight (fp32) += ...; dout fp32; inp of in_dt
void cu_rmsnorm_backward(float *dinp, int dinp_stride, float *dweight, const float *dout, const void *inp,
                         int in_stride, int in_dt, const float *weight, const float *rstd, int N, int C);

// ---- elementwise --------------------------------------------------------------------------------
// y (n) = a + b (out-of-place residual add; y may alias a)
void cu_add(float *y, const float *a, const float *b, long n);
// interleaved-pair RoPE in place on x of type dt (inverse: the transpose, for backward)
void cu_rope_apply(void *x, int dt, int N, int n_heads, int tok_stride, int head_stride, int d, const int *pos,
                   float theta, int inverse);
// out = silu(h1) * h3, all of type dt
void cu_swiglu_forward(void *out, const void *h1, const void *h3, long n, int dt);
// dh1, dh3 (type dt) are WRITTEN (not accumulated: they are GEMM operands) from dout (fp32)
// and h1, h3 (type dt)
void cu_swiglu_backward(void *dh1, void *dh3, const float *dout, const void *h1, const void *h3, long n, int dt);

// ---- causal attention, flash style (online softmax; saves lse instead of the probabilities) --
// q, k (B, T, H, dqk), v (B, T, H, dv), out (B, T, H, dv), all of type dt; lse (B, H, T) fp32:
// log-sum-exp of the scaled scores of each query row. fp32 arithmetic inside. dqk, dv <= 256.
// bf16 / fp16 with dqk, dv multiples of 16 up to 128 run on tensor cores (attention_tc.cu: fp32
// accumulation and softmax; P, dS and dout rounded to dt as GEMM operands) where the device has
// them, the SIMT kernels otherwise (fp32 always). Either forward combines with either backward.
void cu_attention_forward(void *out, float *lse, const void *q, const void *k, const void *v, int B, int T, int H,
                          int dqk, int dv, float scale, int dt);
// dq, dk, dv (fp32) accumulate; dout fp32; out, q, k, v of type dt; scratch: B*H*T floats.
void cu_attention_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout, const void *out,
                           const float *lse, const void *q, const void *k, const void *v, int B, int T, int H,
                           int dqk, int dv_dim, float scale, int dt);
// 0: the SIMT kernels for every type (tests of both paths); 1 (default): tensor cores where available
void cu_attention_set_tensor_cores(int on);

// ---- cross-entropy (logits of type dt) --------------------------------------------------------
// lse (N); loss_out (1): mean loss over targets >= 0 (0 when none); n_valid_out (1); scratch: N
// floats. Nothing is copied to the host.
void cu_crossentropy_forward(float *lse, float *loss_out, int *n_valid_out, float *scratch, const void *logits,
                             const int *targets, int N, int V, int dt);
// In place: logits -> (softmax - onehot) * dloss / n_valid (n_valid read from device memory),
// written in type dt
void cu_crossentropy_backward(void *logits, const float *lse, const int *targets, int N, int V, float dloss,
                              const int *n_valid, int dt);

// ---- MoE routing, dispatch, combine (router logits, scores, weights: fp32) ---------------------
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
// xe (rows, C) = x[perm[r] / K] for r < expert_off[E] (rows beyond are left alone); x, xe of type dt
void cu_moe_gather(void *xe, const void *x, const int *perm, const int *expert_off, int N, int K, int C, int E, int dt);
// grouped GEMM over the experts' contiguous row blocks (sizes read on device):
//   out[r] = inp[r] @ W_e^T for r in [off[e], off[e+1]), W_e = w + e*OC*IC (OC, IC)
// inp, w of type dt; out of out_dt (CU_F32 or dt), written; rows past off[E] untouched.
void cu_grouped_matmul_forward(void *out, int out_dt, const void *inp, const void *w, const int *expert_off, int E,
                               int max_rows, int IC, int OC, int dt);
// dinp[r] += dout[r] @ W_e; dw_e += dout_e^T @ inp_e; dinp, dw fp32 (either may be NULL);
// dout, inp, w of type dt. Both run bf16 / fp16 on tensor cores (grouped_tc.cu) where the
// device has them, the SIMT kernels otherwise (fp32 always).
void cu_grouped_matmul_backward(float *dinp, float *dw, const void *dout, const void *inp, const void *w,
                                const int *expert_off, int E, int max_rows, int IC, int OC, int dt);
// 0: the SIMT kernels for every type (tests of both paths); 1 (default): tensor cores where available
void cu_grouped_set_tensor_cores(int on);
// y (N, C, fp32) += sum_k wts[n,k] * ey[row_of[n,k]] (skipping dropped); ey of type dt
void cu_moe_combine(float *y, const void *ey, const float *wts, const int *row_of, int N, int K, int C, int dt);
// dey (rows, C, type dt) = w * dy[token] (written); dwts (N, K, fp32) = dy[token] . ey[row] (0
// for dropped); dy fp32; ey of type dt
void cu_moe_combine_backward(void *dey, float *dwts, const float *dy, const void *ey, const float *wts,
                             const int *perm, const int *row_of, const int *expert_off, int N, int K, int C, int E,
                             int dt);
// dx (N, C) += sum_k dxe[row_of[n,k]] (fp32)
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
// AdamW on a contiguous range (one tensor) of fp32 master weights p: lm_adamw of
// model/layer_math.h per element on g * grad_scale. pw != NULL: also writes the working copy
// pw (type pw_dt, CU_BF16 with stochastic rounding from seed, CU_F16 rounded to nearest) of
// the new p. norm != NULL (device, 1 float): the global norm of g as stored; when it is not
// finite nothing changes (the step is skipped without a host round trip), else the gradients
// are also clipped: grad_scale *= lm_clip_scale(norm * grad_scale, grad_clip).
void cu_adamw(float *p, const float *g, float *m, float *v, size_t n, float lr, float beta1, float beta2, float eps,
              float wd, float grad_scale, float b1c, float b2c, void *pw, int pw_dt, unsigned seed, const float *norm,
              float grad_clip);
// flag[0] = 1 when any of x[0..n) is inf or NaN (flag untouched otherwise)
void cu_nonfinite_flag(int *flag, const float *x, size_t n);
// loss-free balancing: b_i += gamma * sign(mean(load) - load_i), for one MoE layer; skipped
// when guard (device, may be NULL) holds a non-finite value (the gradient norm of a skipped step)
void cu_bias_update(float *bias, const float *load, int E, float gamma, const float *guard);

#ifdef __cplusplus
}
#endif

#endif
