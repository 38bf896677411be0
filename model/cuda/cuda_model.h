// The whole model on the GPU (model/cuda/model.cu): the same parameter layout as the CPU
// reference (model_layout / model_point of model/model.h), fp32 parameters, gradients and
// AdamW state on the device, forward / backward / AdamW / loss-free bias update built from
// the kernels of cuda_ops.h. Per step the only device-to-host copies are the loss (forward)
// and what the caller asks for (grad norm, routing loads).
// Supported: MLA (with or without q_lora), dense and MoE layers, shared experts, group-limited
// routing, sigmoid/softmax gates, capacity, every balance mode (bias, sequence-wise and batch
// auxiliary losses), MTP depth 1, routing statistics. Not yet: bf16/fp16 whole-model training
// (the bf16 kernels exist in cuda_ops.h), MTP depth > 1 (refused with a message).
#ifndef MOE_CUDA_MODEL_H
#define MOE_CUDA_MODEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "../config.h"

typedef struct CudaModel CudaModel;

int cuda_model_create(CudaModel **out, const ModelConfig *cfg, int B_max, int T_max, MoeErr *err);
void cuda_model_free(CudaModel *m);
size_t cuda_model_num_params(const CudaModel *m);
// host <-> device copies of whole buffers (num_params floats, CPU layout)
void cuda_model_upload_params(CudaModel *m, const float *params);
void cuda_model_download_params(const CudaModel *m, float *params);
void cuda_model_download_grads(const CudaModel *m, float *grads);
void cuda_model_upload_grads(CudaModel *m, const float *grads);
void cuda_model_download_adam(const CudaModel *m, float *mm, float *vv);
void cuda_model_upload_adam(CudaModel *m, const float *mm, const float *vv);  // resume from a checkpoint
// balancing bias (n_blocks, E), as Model.bias
void cuda_model_upload_bias(CudaModel *m, const float *bias);
void cuda_model_download_bias(const CudaModel *m, float *bias);

// bf16 GEMMs (mixed precision): the dense matmuls of every block (not the output head, the
// router or the experts' grouped GEMM) take bf16 copies of their inputs and a bf16 working copy of the weights
// (refreshed from the fp32 master by AdamW with stochastic rounding), accumulating and writing
// fp32. Activations, gradients, master weights and AdamW state stay fp32.
// Returns -1 (nothing changed) when the device has no bf16 tensor cores (before sm_80).
int cuda_model_set_bf16(CudaModel *m, int on);
void cuda_model_download_params16(const CudaModel *m, uint16_t *p16);

// inputs, targets: host arrays (B, T); targets may be NULL. Returns the loss (0 without targets).
float cuda_model_forward(CudaModel *m, const int *inputs, const int *targets, int B, int T);
// logits (B, T, V) of the last forward (before backward, which overwrites them with gradients)
void cuda_model_download_logits(const CudaModel *m, float *logits);
void cuda_model_backward(CudaModel *m);
void cuda_model_zero_grad(CudaModel *m);
// loss scale of the following backward passes (Model.grad_scale of the CPU model): gradients
// come out multiplied by it; pass 1/scale as grad_scale to cuda_model_adamw
void cuda_model_set_grad_scale(CudaModel *m, float scale);
// 1 when any gradient is inf or NaN (one device-to-host copy of an int)
int cuda_model_grads_nonfinite(CudaModel *m);
float cuda_model_grad_norm(CudaModel *m);
void cuda_model_adamw(CudaModel *m, float lr, float beta1, float beta2, float eps, float weight_decay,
                      float grad_scale, int t);
// b_i += gamma * sign(mean_load - load_i) from the loads accumulated since the last reset
void cuda_model_update_bias(CudaModel *m);
void cuda_model_routing_reset(CudaModel *m);
// routing statistics of MoE block number i (0 .. n_moe-1) accumulated since the last reset:
// loads (E), dropped assignments, sums over tokens of the router entropy and of the top-1
// weight (any pointer may be NULL); returns n_moe
int cuda_model_routing_stats(const CudaModel *m, int i, float *load, float *dropped, float *entropy_sum,
                             float *top1_sum);
// the parts of the last forward's loss: main cross-entropy, balancing losses, MTP cross-entropy
void cuda_model_losses(const CudaModel *m, float *ce, float *aux, float *mtp);

#ifdef __cplusplus
}
#endif

#endif
