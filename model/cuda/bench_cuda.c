// cuda_bench: training steps of a config on the CUDA backend with random tokens; prints the
// memory plan, then per step the loss, time, tokens/s and model FLOPs utilisation against the
// GPU's peak. Built with nvcc objects as $(BUILD)/gpu/cuda_bench (make bench-gpu), and through
// the CUDA-on-CPU harness as $(BUILD)/cuda_bench_hx (a smoke test with the tiny config).
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/util.h"
#include "../model.h"
#include "cuda_model.h"
#include "cuda_ops.h"
#include "plan.h"

static void usage(FILE *fp) {
    fprintf(fp,
            "usage: cuda_bench [flags]\n"
            "  -config NAME   tiny | gpu (dim 768, 10 layers, 8+1 experts, top-2, context 1024)   default gpu\n"
            "  -B N           micro-batch (sequences)                                              default: the config's\n"
            "  -T N           sequence length                                                      default: the config's\n"
            "  -steps N       training steps to time (0: print the memory plan and exit)          default 10\n"
            "  -prec P        fp32 | bf16 | fp16 (activations and GEMM operands; fp32 master)    default bf16 (fp16 before sm_80)\n"
            "  -recompute N   1: recompute norms and SwiGLU in backward                          default 0\n"
            "  -seed N        weights and tokens                                                   default 1\n"
            "  -h             this help\n");
}

static int parse_int(const char *flag, const char *s, int lo, int hi) {
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (!s[0] || *end || v < lo || v > hi) {
        fprintf(stderr, "error: %s expects an integer in %d..%d, got '%s'\n", flag, lo, hi, s);
        exit(EXIT_FAILURE);
    }
    return (int)v;
}

int main(int argc, char **argv) {
    omp_set_num_threads(1);  // the host only launches (under the harness: keeps the fibers on one core)
    const char *config = "gpu";
    int B = 0, T = 0, steps = 10, seed = 1, prec = -1, recompute = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "error: unknown flag or missing value: '%s' (see -h)\n", a);
            return EXIT_FAILURE;
        }
        const char *v = argv[++i];
        if (!strcmp(a, "-config")) config = v;
        else if (!strcmp(a, "-B")) B = parse_int(a, v, 1, 4096);
        else if (!strcmp(a, "-T")) T = parse_int(a, v, 1, 1 << 20);
        else if (!strcmp(a, "-steps")) steps = parse_int(a, v, 0, 1000000);
        else if (!strcmp(a, "-seed")) seed = parse_int(a, v, 0, 1 << 30);
        else if (!strcmp(a, "-recompute")) recompute = parse_int(a, v, 0, 1);
        else if (!strcmp(a, "-prec")) {
            prec = !strcmp(v, "fp32") ? PREC_FP32 : !strcmp(v, "bf16") ? PREC_BF16 : !strcmp(v, "fp16") ? PREC_FP16 : -1;
            if (prec < 0) {
                fprintf(stderr, "error: -prec must be fp32, bf16 or fp16, got '%s'\n", v);
                return EXIT_FAILURE;
            }
        }
        else {
            fprintf(stderr, "error: unknown flag '%s' (see -h)\n", a);
            return EXIT_FAILURE;
        }
    }
    ModelConfig c;
    int defB = 0, defT = 0;
    if (!strcmp(config, "gpu")) {
        cuda_default_config(&c, &defB, &defT);
    } else if (!strcmp(config, "tiny")) {
        config_tiny(&c);
        defB = 2, defT = 8;
    } else {
        fprintf(stderr, "error: -config must be tiny or gpu, got '%s'\n", config);
        return EXIT_FAILURE;
    }
    if (!B) B = defB;
    if (!T) T = defT;
    char dev[256];
    size_t free_b = 0, total_b = 0;
    if (cu_device_info(dev, sizeof dev, &free_b, &total_b) < 1) {
        fprintf(stderr, "error: no CUDA device visible (backend %s)\n", cu_backend());
        return EXIT_FAILURE;
    }
    if (prec < 0) prec = cu_supports_dtype(PREC_BF16) ? PREC_BF16 : cu_supports_dtype(PREC_FP16) ? PREC_FP16 : PREC_FP32;
    if (!cu_supports_dtype(prec)) {
        fprintf(stderr, "error: %s (compute capability %d) has no %s tensor cores; use -prec fp32\n", dev,
                cu_compute_capability(), cu_dtype_name(prec));
        return EXIT_FAILURE;
    }
    printf("device: %s (%s, compute capability %d), %.0f MiB free of %.0f MiB, precision %s%s\n", dev, cu_backend(),
           cu_compute_capability(), free_b / 1048576.0, total_b / 1048576.0, cu_dtype_name(prec),
           recompute ? ", recompute" : "");
    MoeErr err = {{0}};
    CudaPlan plan;
    if (cuda_plan(&c, B, T, prec, recompute, &plan, &err) != 0) {
        fprintf(stderr, "error: %s\n", err.msg);
        return EXIT_FAILURE;
    }
    cuda_plan_print(&plan, stdout);
    if (cuda_plan_check(&plan, free_b, B, 0, &err) != 0) {
        fprintf(stderr, "error: %s\n", err.msg);
        return EXIT_FAILURE;
    }
    if (steps == 0) return 0;
    CudaModel *m = NULL;
    if (cuda_model_create(&m, &c, B, T, prec, recompute, &err) != 0) {
        fprintf(stderr, "error: %s\n", err.msg);
        return EXIT_FAILURE;
    }
    // weights as model_init: N(0, 0.02), output projections scaled by 1/sqrt(2 L), norms 1
    int nt = 0;
    size_t np = model_layout(&c, NULL, &nt);
    TensorInfo *ti = (TensorInfo *)mallocCheck(sizeof(TensorInfo) * (size_t)nt);
    model_layout(&c, ti, &nt);
    float *params = (float *)mallocCheck(sizeof(float) * np);
    uint64_t rng = rng_seed((uint64_t)seed);
    float resid = 1.0f / sqrtf(2.0f * (float)(c.n_layers + c.mtp_depth));
    for (int t = 0; t < nt; t++) {
        size_t len = strlen(ti[t].name);
        int is_out = (len >= 7 && !strcmp(ti[t].name + len - 7, "attn.wo")) || (len >= 2 && !strcmp(ti[t].name + len - 2, "w2"));
        for (size_t j = 0; j < ti[t].numel; j++)
            params[ti[t].offset + j] = ti[t].ndim == 1 ? 1.0f : 0.02f * (is_out ? resid : 1.0f) * rng_normal(&rng);
    }
    cuda_model_upload_params(m, params);
    float loss_scale = prec == PREC_FP16 ? 1024.0f : 1.0f;
    int N = B * T;
    int *tok = (int *)mallocCheck(sizeof(int) * (size_t)(N + 1));
    double flops_tok = model_flops_per_token(&c, T), total_time = 0.0;
    printf("config %s: %.3fM params, B %d, T %d, %.2f GFLOP per token (forward + backward)\n", config, np / 1e6, B, T,
           flops_tok / 1e9);
    for (int s = 1; s <= steps; s++) {
        for (int i = 0; i <= N; i++) tok[i] = (int)(rng_next_u64(&rng) % (uint64_t)c.vocab_size);
        cu_sync();
        double t0 = wall_seconds();
        cuda_model_routing_reset(m);
        cuda_model_zero_grad(m);
        cuda_model_set_grad_scale(m, loss_scale);
        float loss = cuda_model_forward(m, tok, tok + 1, B, T);
        cuda_model_backward(m);
        float norm = cuda_model_step(m, 3e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, 1.0f / loss_scale, s);
        cu_sync();
        double dt = wall_seconds() - t0;
        if (s > 1) total_time += dt;  // the first step warms up
        double tps = N / dt, mfu = gpu_mfu(tps * flops_tok, dev, prec);
        printf("step %d: loss %.4f, grad norm %.3f, %.1f ms, %.0f tokens/s", s, loss, norm, dt * 1e3, tps);
        if (mfu >= 0) printf(", MFU %.1f%% of the %s peak", 100.0 * mfu, prec == PREC_FP32 ? "fp32" : "16-bit tensor");
        printf("\n");
        fflush(stdout);
    }
    if (steps > 1) printf("mean after warm-up: %.0f tokens/s\n", (double)N * (steps - 1) / total_time);
    free(tok), free(params), free(ti);
    cuda_model_free(m);
    return 0;
}
