// Tensor-core (WMMA) grouped GEMMs of the MoE experts (model/cuda/grouped_tc.cu): the semantics
// of cu_grouped_matmul_forward / cu_grouped_matmul_backward (model/cuda/cuda_ops.h) for operands
// of a 16-bit type (CU_BF16, CU_F16), fp32 accumulation. Every pointer is DEVICE memory.
// Experts own contiguous row blocks [off[e], off[e+1]) with off (E + 1 ints) on the device: no
// host synchronisation, no host read of off; max_rows >= the largest off[e+1] - off[e] (it sizes
// the grid). W_e = w + e*OC*IC is (OC, IC) row-major. Deterministic (no atomics).
#ifndef MOE_GROUPED_TC_H
#define MOE_GROUPED_TC_H

#ifdef __cplusplus
extern "C" {
#endif

// 1 when the tensor-core kernels run element type dt on this device (CU_BF16: compute
// capability >= 8.0, CU_F16: >= 7.0, and a kernel image for the device in this build; never
// CU_F32); under the harness 1 for both half types
int cu_grouped_tc_available(int dt);
// out[r] = inp[r] @ W_e^T for r in [off[e], off[e+1]), written in out_dt (CU_F32 or dt); rows
// outside the blocks untouched; inp (rows, IC) and w (E, OC, IC) of type dt
void cu_grouped_tc_forward(void *out, int out_dt, const void *inp, const void *w, const int *expert_off, int E,
                           int max_rows, int IC, int OC, int dt);
// dinp[r] += dout[r] @ W_e (rows, IC) and dw_e += dout_e^T @ inp_e (E, OC, IC), both fp32, either
// may be NULL; dout (rows, OC), inp, w of type dt
void cu_grouped_tc_backward(float *dinp, float *dw, const void *dout, const void *inp, const void *w,
                            const int *expert_off, int E, int max_rows, int IC, int OC, int dt);

#ifdef __cplusplus
}
#endif
#endif
