// GPU memory planner and model-FLOPs-utilisation table (plain C, no CUDA needed): what the
// CUDA trainer will allocate for a config and micro-batch, computed before allocating, and
// the peak throughput of known GPUs by device name (as llm.c's mfu.h).
#ifndef MOE_CUDA_PLAN_H
#define MOE_CUDA_PLAN_H

#include <stddef.h>
#include <stdio.h>

#include "../config.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { PREC_FP32 = 0, PREC_BF16 = 1, PREC_FP16 = 2 } Precision;

typedef struct {
    size_t num_params;
    size_t params;      // working copy of the weights (bf16/fp16; 0 in fp32, the master is used)
    size_t master;      // fp32 master weights
    size_t optimizer;   // AdamW m and v, fp32
    size_t grads;       // parameter gradients, fp32
    size_t acts;        // activations kept for backward (all blocks), in the activation type or fp32
    size_t logits;      // logits (N, V) and lse, twice with MTP
    size_t scratch;     // buffers shared by the blocks: forward scratch, backward gradients, statistics
    size_t workspace;   // cuBLAS workspace, routing statistics, small buffers
    size_t overhead;    // CUDA context and allocator slack (an estimate)
    size_t total;
} CudaPlan;

// The default GPU config (~dim 768, 10 layers, 8 routed + 1 shared experts, top-2,
// context 1024) and its micro-batch.
void cuda_default_config(ModelConfig *c, int *B, int *T);
// Bytes for a config and micro-batch B x T. recompute = 1: norms and SwiGLU outputs are
// recomputed in backward instead of stored. Returns -1 with err for a bad config or batch.
int cuda_plan(const ModelConfig *c, int B, int T, int precision, int recompute, CudaPlan *p, MoeErr *err);
void cuda_plan_print(const CudaPlan *p, FILE *fp);
// 0 when the plan fits in free_bytes; otherwise -1 with a message that suggests a smaller
// micro-batch with gradient accumulation, or activation recomputation.
int cuda_plan_check(const CudaPlan *p, size_t free_bytes, int B, int recompute, MoeErr *err);

// Dynamic loss scaling for fp16 (plain C): backward runs with the loss multiplied by scale;
// a step whose gradients hold inf/NaN is skipped and the scale halved; after `interval` good
// steps in a row the scale doubles (up to 2^24).
typedef struct {
    float scale;
    int good_steps, interval;
    long skipped;
} LossScaler;
void loss_scaler_init(LossScaler *ls, float initial_scale, int interval);
// after backward: found_nonfinite from cuda_model_grads_nonfinite. Returns 1 when the step
// should be applied (with grad_scale = 1 / the scale used in backward), 0 when skipped.
int loss_scaler_update(LossScaler *ls, int found_nonfinite);

// Peak dense throughput in TFLOP/s of a GPU by its name (cudaGetDeviceProperties().name),
// tensor cores with fp32 accumulation for bf16/fp16, CUDA cores for fp32; -1 when unknown.
double gpu_peak_tflops(const char *device_name, int precision);
// Model FLOPs utilisation in [0, 1]: achieved / peak; -1 when the peak is unknown.
double gpu_mfu(double flops_per_second, const char *device_name, int precision);

#ifdef __cplusplus
}
#endif

#endif
