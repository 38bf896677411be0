// Tensor-core (WMMA) causal flash attention (model/cuda/attention_tc.cu): exactly the semantics
// of cu_attention_forward / cu_attention_backward (model/cuda/cuda_ops.h) for q, k, v, out of a
// 16-bit type (CU_BF16, CU_F16) and head sizes dqk, dv that are multiples of 16 up to 128; fp32
// accumulation, fp32 softmax, the probabilities P (forward: for P V; backward: for P^T dout)
// and dS (for dS K, dS^T Q) rounded to dt as GEMM operands, dout rounded to dt as a GEMM operand.
// Every pointer is DEVICE memory; layouts q, k (B, T, H, dqk), v, out (B, T, H, dv), lse and
// scratch (B, H, T). The lse is the same quantity as the SIMT kernels' (the log-sum-exp of the
// scaled causal scores, fp32), so a forward of one path and a backward of the other combine.
// Deterministic (no atomics).
#ifndef MOE_ATTENTION_TC_H
#define MOE_ATTENTION_TC_H

#ifdef __cplusplus
extern "C" {
#endif

// 1 when the tensor-core kernels run these head sizes and element type on this device: dt
// CU_BF16 (compute capability >= 8.0) or CU_F16 (>= 7.0) with a kernel image for the device in
// this build, dqk and dv multiples of 16 in 16..128; never CU_F32. Under the harness 1 for both
// half types (and those head sizes).
int cu_attention_tc_available(int dqk, int dv, int dt);
// out (type dt), lse (fp32) from q, k, v (type dt); exits when !cu_attention_tc_available
void cu_attention_tc_forward(void *out, float *lse, const void *q, const void *k, const void *v, int B, int T, int H,
                             int dqk, int dv, float scale, int dt);
// dq, dk, dv (fp32) accumulate (+=); dout fp32; out, q, k, v of type dt; lse from either
// forward; scratch: B*H*T floats (holds D = rowsum(dout * out) between the two kernels)
void cu_attention_tc_backward(float *dq, float *dk, float *dv, float *scratch, const float *dout, const void *out,
                              const float *lse, const void *q, const void *k, const void *v, int B, int T, int H,
                              int dqk, int dv_dim, float scale, int dt);

#ifdef __cplusplus
}
#endif
#endif
