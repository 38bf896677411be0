// bench_gemm: single-precision GEMM throughput of the linked backend on the shapes the
// default CPU model runs (forward NT, backward NN and TN), best of R runs each. `make bench`
// runs it once per backend, each in its own process (two OpenMP-using GEMM libraries in one
// process slow each other down), so the backend can be chosen by measurement.
#include <omp.h>

#include "../common/gemm.h"
#include "../common/util.h"

typedef struct {
    const char *what;
    int M, N, K, ta, tb;
} Shape;

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 5;
    if (reps <= 0) reps = 5;
    // default config: N = B*T = 2048 tokens, C 256, V 8192, H 4 x (64+32), kv_lora 128, inter 768, expert 256,
    // ~512 tokens per expert (8 experts, top-2)
    Shape shapes[] = {
        {"head fwd      (N,V,C) NT", 2048, 8192, 256, 0, 1},
        {"head bwd dX   (N,C,V) NN", 2048, 256, 8192, 0, 0},
        {"head bwd dW   (V,C,N) TN", 8192, 256, 2048, 1, 0},
        {"head dW^T     (C,V,N) TN", 256, 8192, 2048, 1, 0},
        {"head dW from transposed dlogits (V,C,N) NN", 8192, 256, 2048, 0, 0},
        {"wq fwd        (N,384,C) NT", 2048, 384, 256, 0, 1},
        {"wkv_b fwd     (N,512,128) NT", 2048, 512, 128, 0, 1},
        {"dense w1 fwd  (N,768,C) NT", 2048, 768, 256, 0, 1},
        {"dense w2 bwd  (768,C,N) TN", 768, 256, 2048, 1, 0},
        {"expert w1 fwd (512,256,C) NT", 512, 256, 256, 0, 1},
        {"expert bwd dW (256,C,512) TN", 256, 256, 512, 1, 0},
        {"attn QK^T     (T,T,96) NT", 256, 256, 96, 0, 1},
        {"large         4096x1408x2048 NT", 4096, 1408, 2048, 0, 1},
    };
    int ns = (int)(sizeof(shapes) / sizeof(shapes[0]));
    printf("GEMM backend %s, %d threads, best of %d\n", gemm_backend(), omp_get_max_threads(), reps);
    uint64_t r = rng_seed(1);
    for (int s = 0; s < ns; s++) {
        Shape *sh = &shapes[s];
        size_t na = (size_t)sh->M * sh->K, nb = (size_t)sh->K * sh->N, nc = (size_t)sh->M * sh->N;
        float *A = mallocCheck(na * sizeof(float)), *B = mallocCheck(nb * sizeof(float)), *C = mallocCheck(nc * sizeof(float));
        for (size_t i = 0; i < na; i++) A[i] = rng_uniform(&r) - 0.5f;
        for (size_t i = 0; i < nb; i++) B[i] = rng_uniform(&r) - 0.5f;
        double best = 0;
        for (int i = 0; i < reps + 1; i++) {
            double t0 = wall_seconds();
            gemm(sh->ta, sh->tb, sh->M, sh->N, sh->K, 1.0f, A, sh->ta ? sh->M : sh->K, B, sh->tb ? sh->K : sh->N, 0.0f,
                 C, sh->N);
            double g = 2.0 * sh->M * sh->N * sh->K / (wall_seconds() - t0) / 1e9;
            if (i > 0 && g > best) best = g;  // the first call JIT-compiles / warms up
        }
        printf("  %-34s %8.1f GFLOP/s\n", sh->what, best);
        free(A), free(B), free(C);
    }
    return 0;
}
