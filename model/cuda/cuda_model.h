// The whole model on the GPU (model/cuda/model.cu): the same parameter layout as the CPU
// reference (model_layout / model_point of model/model.h), forward / backward / AdamW /
// loss-free bias update built from the kernels of cuda_ops.h.
//
// Precision (fixed at creation): CU_F32, CU_BF16 or CU_F16 (the PREC_* values of plan.h) is
// the type of the activations and of the working copy of the weights that the GEMMs read
// (refreshed from the fp32 master by AdamW: bf16 with stochastic rounding, fp16 rounded to
// nearest). Always fp32: master weights, AdamW moments, parameter gradients, the residual
// stream, the gradients that GEMMs accumulate into, norms' weights and statistics, the router
// (its logits, scores and weights, and its GEMM on an fp32 image of its input), softmax and
// cross-entropy arithmetic. fp16 needs a loss scale (cuda_model_set_grad_scale; LossScaler of
// plan.h). recompute = 1: RMSNorm outputs (ln1, q_norm, kv_norm, ln2) and SwiGLU outputs are
// not kept for backward but recomputed there (less memory, identical results).
//
// Per training step the device-to-host copies are the loss (cuda_model_forward) and one block
// of statistics (cuda_model_step: gradient norm, routing statistics, biases); nothing is
// synchronised per layer or per expert.
// Supported: MLA (with or without q_lora), dense and MoE layers, shared experts, group-limited
// routing, sigmoid/softmax gates, capacity, every balance mode (bias, sequence-wise and batch
// auxiliary losses), MTP depth 1, routing statistics. MTP depth > 1 is refused with a message.
#ifndef MOE_CUDA_MODEL_H
#define MOE_CUDA_MODEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "../config.h"
#include "plan.h"

typedef struct CudaModel CudaModel;

// buffers for micro-batches up to B_max x T_max; precision CU_F32 / CU_BF16 / CU_F16. -1 with
// err for a config, batch or precision the backend does not support (bf16 needs compute
// capability 8.0, fp16 7.0).
int cuda_model_create(CudaModel **out, const ModelConfig *cfg, int B_max, int T_max, int precision, int recompute,
                      MoeErr *err);
void cuda_model_free(CudaModel *m);
size_t cuda_model_num_params(const CudaModel *m);
// on = 1: causal attention through cuDNN's fused SDPA (attention_cudnn.h) when the installed
// cuDNN accepts micro-batches B x T of this model in its precision (bf16 / fp16 only); any call
// it refuses later falls back to the flash kernels of attention.cu. Returns 1 when cuDNN will be
// used, 0 otherwise with *reason (may be NULL) saying why.
int cuda_model_use_cudnn_attention(CudaModel *m, int on, int B, int T, const char **reason);
int cuda_model_precision(const CudaModel *m);
// the device bytes the model allocated, in the categories of the planner (plan.h): the test
// that cuda_plan() predicts them; workspace and overhead are 0 (not the model's allocations)
void cuda_model_allocated(const CudaModel *m, CudaPlan *p);

// host <-> device copies of whole buffers (num_params floats, CPU layout)
// uploading the master weights also rounds the working copy to nearest (a fresh start)
void cuda_model_upload_params(CudaModel *m, const float *params);
void cuda_model_download_params(const CudaModel *m, float *params);
void cuda_model_download_grads(const CudaModel *m, float *grads);
void cuda_model_upload_grads(CudaModel *m, const float *grads);
void cuda_model_download_adam(const CudaModel *m, float *mm, float *vv);
void cuda_model_upload_adam(CudaModel *m, const float *mm, const float *vv);  // resume from a checkpoint
// balancing bias (n_blocks, E), as Model.bias
void cuda_model_upload_bias(CudaModel *m, const float *bias);
void cuda_model_download_bias(const CudaModel *m, float *bias);
// the working copy (num_params raw bf16/fp16 values; nothing is written in fp32)
void cuda_model_download_working(const CudaModel *m, uint16_t *w);
// the working copy as AdamW step t wrote it from the current master weights (the same
// stochastic rounding); t = 0 rounds to nearest. After uploading the master weights of a
// checkpoint saved after step t, this makes a resumed run continue bit for bit.
void cuda_model_refresh_working(CudaModel *m, int t);

// inputs, targets: host arrays (B, T); targets may be NULL. Returns the loss (0 without
// targets): one device-to-host copy.
float cuda_model_forward(CudaModel *m, const int *inputs, const int *targets, int B, int T);
// logits (B, T, V) of the last forward as fp32 (before backward, which overwrites them)
void cuda_model_download_logits(const CudaModel *m, float *logits);
// the experts chosen (B*T, K) in MoE block number i (0 .. n_moe-1) by the last forward
void cuda_model_download_routing(const CudaModel *m, int i, int *sel);
void cuda_model_backward(CudaModel *m);
void cuda_model_zero_grad(CudaModel *m);
// loss scale of the following backward passes (Model.grad_scale of the CPU model): gradients
// come out multiplied by it; pass 1/scale as grad_scale to the optimizer
void cuda_model_set_grad_scale(CudaModel *m, float scale);

// The optimizer step without host round trips: the global gradient norm on the device, AdamW
// of every tensor with the clipping of the CPU trainer (lm_clip_scale of the unscaled norm
// against grad_clip; grad_clip <= 0: none) on g * grad_scale, the loss-free bias update; a
// non-finite norm skips all of it on the device. Then ONE download of the statistics block:
// returns the unscaled gradient norm (not finite: the step was skipped) and refreshes the host
// copies read by cuda_model_routing_stats and cuda_model_last_bias.
float cuda_model_step(CudaModel *m, float lr, float beta1, float beta2, float eps, float weight_decay, float grad_clip,
                      float grad_scale, int t);
// the same statistics download without a step (routing statistics after a forward, in tests)
void cuda_model_fetch_stats(CudaModel *m);
// routing statistics of MoE block number i (0 .. n_moe-1) accumulated since the last reset, as
// of the last cuda_model_step / cuda_model_fetch_stats: loads (E), dropped assignments, sums
// over tokens of the router entropy and of the top-1 weight (any pointer may be NULL); returns n_moe
int cuda_model_routing_stats(const CudaModel *m, int i, float *load, float *dropped, float *entropy_sum,
                             float *top1_sum);
// the biases (n_blocks, E) as of the last cuda_model_step / cuda_model_fetch_stats
void cuda_model_last_bias(const CudaModel *m, float *bias);
void cuda_model_routing_reset(CudaModel *m);

// Data parallelism: the device buffers that the ranks sum between the micro-batches and
// cuda_model_step (comm.h), so that every rank applies the same step: the fp32 parameter
// gradients (*n = num_params floats), and the routing statistics accumulated since the last
// reset (loads, dropped assignments, entropy and top-1 sums of every MoE block: *n floats; the
// bias update then sees the global loads). Device pointers, owned by the model.
float *cuda_model_grads_device(CudaModel *m, size_t *n);
float *cuda_model_routing_device(CudaModel *m, size_t *n);

// the pieces of the step, one at a time (tests, benchmarks): each synchronises where it returns a value
int cuda_model_grads_nonfinite(CudaModel *m);  // 1 when any gradient is inf or NaN
float cuda_model_grad_norm(CudaModel *m);
void cuda_model_adamw(CudaModel *m, float lr, float beta1, float beta2, float eps, float weight_decay,
                      float grad_scale, int t);
// b_i += gamma * sign(mean_load - load_i) from the loads accumulated since the last reset
void cuda_model_update_bias(CudaModel *m);
// the parts of the last forward's loss: main cross-entropy, balancing losses, MTP cross-entropy
void cuda_model_losses(const CudaModel *m, float *ce, float *aux, float *mtp);

#ifdef __cplusplus
}
#endif

#endif
