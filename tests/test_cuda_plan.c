// GPU memory planner and peak table (model/cuda/plan.c): plain C, runs everywhere.
#include <string.h>

#include "../model/cuda/plan.h"
#include "../model/model.h"
#include "test.h"

int main(void) {
    ModelConfig c;
    int B = 0, T = 0;
    MoeErr err = {{0}};
    CudaPlan p, p32, prc;

    test_begin("cuda_plan_default_config_under_11GB");
    cuda_default_config(&c, &B, &T);
    CHECK(config_validate(&c, &err) == 0, "default GPU config invalid: %s", err.msg);
    CHECK(c.dim == 768 && c.n_layers == 10 && c.n_routed_experts == 8 && c.n_shared_experts == 1 && c.top_k == 2 &&
              c.max_seq_len == 1024 && T == 1024,
          "default GPU config is not dim 768, 10 layers, 8+1 experts, top-2, context 1024");
    CHECK(cuda_plan(&c, B, T, PREC_BF16, 0, &p, &err) == 0, "plan failed: %s", err.msg);
    cuda_plan_print(&p, stdout);
    double G = 1024.0 * 1024.0 * 1024.0;
    CHECK(p.total < (size_t)(11.0 * G), "default plan %.2f GiB >= 11 GiB", p.total / G);
    CHECK(p.num_params == model_layout(&c, NULL, NULL), "param count differs from model_layout");
    CHECK(p.total == p.params + p.master + p.optimizer + p.grads + p.acts + p.logits + p.scratch + p.workspace + p.overhead,
          "breakdown does not sum to the total");
    CHECK(p.master == 4 * p.num_params && p.optimizer == 8 * p.num_params && p.params == 2 * p.num_params,
          "weights/master/AdamW sizes wrong for bf16");
    test_end();

    test_begin("cuda_plan_scaling");
    CHECK(cuda_plan(&c, B, T, PREC_FP32, 0, &p32, &err) == 0, "fp32 plan failed");
    CHECK(p32.acts > p.acts && p32.params == 0, "fp32 activations must be larger, with no separate working copy");
    CHECK(cuda_plan(&c, B, T, PREC_BF16, 1, &prc, &err) == 0, "recompute plan failed");
    CHECK(prc.acts < p.acts, "recomputation must reduce activations");
    CudaPlan p2;
    CHECK(cuda_plan(&c, 2 * B, T, PREC_BF16, 0, &p2, &err) == 0, "plan failed");
    // per token, plus a few fixed buffers per block (expert offsets, balancing-loss segments)
    CHECK(fabs((double)p2.acts - 2.0 * p.acts) < 1e-4 * p.acts, "activations must scale with the batch: %zu vs 2 x %zu",
          p2.acts, p.acts);
    CudaPlan p16;
    CHECK(cuda_plan(&c, B, T, PREC_FP16, 0, &p16, &err) == 0 && p16.total == p.total, "fp16 and bf16 plans differ");
    CHECK(p.grads == 4 * p.num_params && p32.grads == p.grads, "parameter gradients are fp32 in every precision");
    test_end();

    test_begin("cuda_plan_check_suggests_micro_batch");
    CHECK(cuda_plan_check(&p, (size_t)(11.0 * G), B, 0, &err) == 0, "the default plan must fit in 11 GiB");
    CHECK(cuda_plan_check(&p, (size_t)(6.0 * G), B, 0, &err) != 0, "must refuse 6 GiB");
    CHECK(strstr(err.msg, "micro-batch") && strstr(err.msg, "gradient accumulation"), "message: %s", err.msg);
    printf("# %s\n", err.msg);
    CHECK(cuda_plan_check(&p, (size_t)(1.0 * G), B, 0, &err) != 0 && strstr(err.msg, "smaller model"), "message: %s",
          err.msg);
    test_end();

    test_begin("cuda_plan_rejects_bad_batch");
    CHECK(cuda_plan(&c, 0, T, PREC_BF16, 0, &p, &err) != 0, "B = 0 accepted");
    CHECK(cuda_plan(&c, 1, 4096, PREC_BF16, 0, &p, &err) != 0 && strstr(err.msg, "sequence length"),
          "T > max_seq_len accepted");
    ModelConfig bad = c;
    bad.dim = 0;
    CHECK(cuda_plan(&bad, 1, 8, PREC_BF16, 0, &p, &err) != 0, "dim 0 accepted");
    test_end();

    test_begin("gpu_peak_table");
    CHECK(gpu_peak_tflops("NVIDIA GeForce RTX 3060", PREC_BF16) == 25.6, "3060");
    CHECK(gpu_peak_tflops("NVIDIA GeForce RTX 3090", PREC_BF16) == 71.0, "3090");
    CHECK(gpu_peak_tflops("NVIDIA GeForce RTX 4090", PREC_BF16) == 165.2, "4090");
    CHECK(gpu_peak_tflops("NVIDIA A100-SXM4-80GB", PREC_BF16) == 312.0, "A100");
    CHECK(gpu_peak_tflops("NVIDIA H100 80GB HBM3", PREC_BF16) == 989.4, "H100 SXM");
    CHECK(gpu_peak_tflops("NVIDIA H100 PCIe", PREC_BF16) == 756.0, "H100 PCIe");
    CHECK(gpu_peak_tflops("NVIDIA GeForce RTX 3090", PREC_FP32) == 35.6, "3090 fp32");
    CHECK(gpu_peak_tflops("Some Future GPU", PREC_BF16) < 0, "unknown must be -1");
    CHECK(fabs(gpu_mfu(12.8e12, "NVIDIA GeForce RTX 3060", PREC_BF16) - 0.5) < 1e-9, "mfu");
    test_end();
    test_begin("loss_scaler_dynamic");
    LossScaler ls;
    loss_scaler_init(&ls, 1024.0f, 3);
    CHECK(loss_scaler_update(&ls, 1) == 0 && ls.scale == 512.0f && ls.skipped == 1, "overflow must skip and halve");
    CHECK(loss_scaler_update(&ls, 0) == 1 && loss_scaler_update(&ls, 0) == 1 && ls.scale == 512.0f, "no growth yet");
    CHECK(loss_scaler_update(&ls, 0) == 1 && ls.scale == 1024.0f && ls.good_steps == 0, "growth after 3 good steps");
    for (int i = 0; i < 40; i++) loss_scaler_update(&ls, 1);
    CHECK(ls.scale == 1.0f, "scale must not go below 1: %g", ls.scale);
    test_end();
    return test_summary();
}
