// bench_train: training throughput of the CPU reference on the default config, against the
// machine's practical single-precision peak measured in the same run (the best large-GEMM
// throughput of the GEMM backend). Prints tokens/s, achieved GFLOP/s (forward + backward of
// the active parameters and causal attention, model_flops_per_token) and the ratio.
// usage: bench_train [STEPS=10] [B=8] [T=256]
#include <omp.h>

#include "../common/gemm.h"
#include "../common/util.h"
#include "../model/model.h"

static double gemm_peak(int M, int N, int K, int ta, int tb, int reps) {
    float *A = mallocCheck(sizeof(float) * (size_t)M * K), *B = mallocCheck(sizeof(float) * (size_t)K * N);
    float *C = mallocCheck(sizeof(float) * (size_t)M * N);
    uint64_t r = rng_seed(5);
    for (long i = 0; i < (long)M * K; i++) A[i] = rng_uniform(&r) - 0.5f;
    for (long i = 0; i < (long)K * N; i++) B[i] = rng_uniform(&r) - 0.5f;
    double best = 0;
    for (int i = 0; i < reps; i++) {
        double t0 = wall_seconds();
        gemm(ta, tb, M, N, K, 1.0f, A, ta ? M : K, B, tb ? K : N, 0.0f, C, N);
        double g = 2.0 * M * N * K / (wall_seconds() - t0) / 1e9;
        best = g > best ? g : best;
    }
    free(A), free(B), free(C);
    return best;
}

int main(int argc, char **argv) {
    int steps = argc > 1 ? atoi(argv[1]) : 10;
    int B = argc > 2 ? atoi(argv[2]) : 8;
    int T = argc > 3 ? atoi(argv[3]) : 256;
    if (steps <= 0 || B <= 0 || T <= 0) {
        fprintf(stderr, "usage: %s [STEPS=10] [B=8] [T=256]\n", argv[0]);
        return 2;
    }
    ModelConfig c;
    config_default(&c);
    if (T > c.max_seq_len) c.max_seq_len = T;
    Model m;
    MoeErr err;
    if (model_init(&m, &c, B, T, 1, &err) != 0) {
        fprintf(stderr, "error: %s\n", err.msg);
        return 1;
    }
    int N = B * T;
    int *in = mallocCheck(sizeof(int) * (size_t)N), *tg = mallocCheck(sizeof(int) * (size_t)N);
    uint64_t r = rng_seed(3);
    for (int i = 0; i < N; i++) in[i] = (int)(rng_next_u64(&r) % c.vocab_size);
    for (int i = 0; i < N; i++) tg[i] = i + 1 < N ? in[i + 1] : 0;
    printf("bench_train: default CPU config, batch %d x %d, %d threads, GEMM backend %s\n", B, T, omp_get_max_threads(),
           gemm_backend());
    config_print(&c, stdout);
    double tf = 0, tb = 0, to = 0;
    for (int s = 0; s < steps + 2; s++) {
        double t0 = wall_seconds();
        model_zero_grad(&m);
        routing_stats_reset(&m);
        model_forward(&m, in, tg, B, T, 1);
        double t1 = wall_seconds();
        model_backward(&m);
        double t2 = wall_seconds();
        float norm = model_grad_norm(&m);
        model_adamw(&m, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, norm > 1 ? 1 / norm : 1, s + 1);
        model_update_bias(&m);
        double t3 = wall_seconds();
        if (s >= 2) {  // two warm-up steps
            tf += t1 - t0;
            tb += t2 - t1;
            to += t3 - t2;
        }
    }
    double total = tf + tb + to;
    double tps = (double)N * steps / total;
    double fpt = model_flops_per_token(&c, T);
    double achieved = tps * fpt / 1e9;
    double peak = gemm_peak(4096, 1408, 2048, 0, 1, 7);
    double peak2 = gemm_peak(2048, 768, 256, 0, 0, 7);
    if (peak2 > peak) peak = peak2;
    printf("time per step: forward %.1f ms, backward %.1f ms, optimizer %.1f ms\n", 1e3 * tf / steps, 1e3 * tb / steps,
           1e3 * to / steps);
    printf("model FLOPs per token (fwd+bwd, active params + causal attention): %.1f MFLOP\n", fpt / 1e6);
    printf("training: %.0f tokens/s, %.1f GFLOP/s\n", tps, achieved);
    printf("practical peak (best large sgemm, %s, same run): %.1f GFLOP/s\n", gemm_backend(), peak);
    printf("ratio to peak: %.1f %%\n", 100.0 * achieved / peak);
    model_free(&m);
    free(in), free(tg);
    return 0;
}
