// Optional cuDNN scaled-dot-product attention (the fused flash-attention engines of cuDNN 9,
// reached through the backend graph C API) for the CUDA backend: causal, with the same
// semantics and layouts as cu_attention_forward / cu_attention_backward of cuda_ops.h.
// Built with cuDNN when module.mk finds its header and library (-DMOE_WITH_CUDNN); otherwise,
// and always under the CUDA-on-CPU harness, every entry point refuses ("unavailable").
// Nothing here prints or exits: a refusal is a return value, and cu_cudnn_attention_reason()
// says why. The caller answers a refusal by using the project's flash kernels (attention.cu).
#ifndef MOE_ATTENTION_CUDNN_H
#define MOE_ATTENTION_CUDNN_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

// 1 when this build has cuDNN and the installed cuDNN builds and finalises a forward and a
// backward SDPA execution plan for these sizes, element type dt (CU_BF16 or CU_F16; CU_F32 is
// not supported by cuDNN's flash attention -> 0) and the current device. Plans are cached per
// shape (refusals too), so asking again is cheap. Prints nothing.
int cu_cudnn_attention_supported(int B, int T, int H, int dqk, int dv, int dt);
// why the last call refused (or "ok"); static storage, overwritten by the next call
const char *cu_cudnn_attention_reason(void);
// The semantics of cu_attention_forward: q, k (B, T, H, dqk), v and out (B, T, H, dv) of type
// dt; lse (B, H, T) fp32, the log-sum-exp of the scaled causal scores of each query row; causal.
// 0 on success, -1 when cuDNN refused (nothing written; the caller falls back). Asynchronous
// on the default stream.
int cu_cudnn_attention_forward(void *out, float *lse, const void *q, const void *k, const void *v, int B, int T,
                               int H, int dqk, int dv, float scale, int dt);
// The semantics of cu_attention_backward: dq, dk, dv (fp32) ACCUMULATE (+=); dout fp32; out,
// q, k, v of type dt; lse from either forward (the same definition). cuDNN reads dO and writes
// dQ, dK, dV in dt: dout is rounded to dt first and the gradients are rounded to dt before they
// are added (device scratch of this file, grown as needed). 0 on success, -1 when cuDNN
// refused (the fp32 gradients are then untouched).
int cu_cudnn_attention_backward(float *dq, float *dk, float *dv, const float *dout, const void *out, const float *lse,
                                const void *q, const void *k, const void *v, int B, int T, int H, int dqk, int dv_dim,
                                float scale, int dt);
// cudnnGetVersion() of the loaded library (e.g. 91900), 0 when built without cuDNN
size_t cu_cudnn_version(void);
// For tests without a GPU: creates and finalises every tensor and operation descriptor of the
// forward and backward graphs and the two operation graphs (without a handle when there is
// none; no heuristics, no plan). 0 when everything finalises, -1 otherwise (reason set; the
// builds without cuDNN always refuse).
int cu_cudnn_attention_check_graphs(int B, int T, int H, int dqk, int dv, int dt);
// frees the cached plans, the scratch and the cuDNN handle (optional, e.g. before exit)
void cu_cudnn_attention_release(void);
// acc (n, fp32) += x (n, of type dt): the accumulation step of the backward, exposed for tests
void cu_accumulate_dt(float *acc, const void *x, long n, int dt);

#ifdef __cplusplus
}
#endif

#endif
