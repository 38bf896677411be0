// bench_nf4: NF4 x fp32 kernels against the fp32 GEMM on one DeepSeek-MoE-16B expert
// projection (1408 x 2048) and the quantization speed. Prints GFLOP/s and weight GB/s.
#include <omp.h>

#include "../common/gemm.h"
#include "nf4.h"

static double best_of(int reps, void (*fn)(void *), void *arg) {
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = wall_seconds();
        fn(arg);
        double t = wall_seconds() - t0;
        if (t < best) best = t;
    }
    return best;
}

typedef struct {
    const Nf4Tensor *W;
    const float *wf, *x;
    float *y;
    int n, kind;
} Job;

static void run(void *p) {
    Job *j = (Job *)p;
    if (j->kind == 0) nf4_matmul_fused(j->W, j->x, j->n, j->y, NULL);
    else if (j->kind == 1) nf4_matmul_tiled(j->W, j->x, j->n, j->y, NULL);
    else gemm(0, 1, j->n, (int)j->W->rows, (int)j->W->cols, 1.0f, j->x, (int)j->W->cols, j->wf, (int)j->W->cols, 0.0f, j->y,
              (int)j->W->rows);
}

int main(int argc, char **argv) {
    int rows = 1408, cols = 2048, reps = 5;
    if (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        printf("usage: bench_nf4 [--rows R (1408)] [--cols C (2048)] [--reps N (5)]\n");
        return 0;
    }
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--rows")) rows = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--cols")) cols = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
        else { fprintf(stderr, "bench_nf4: error: unknown flag %s\n", argv[i]); return 1; }
    }
    if (rows < 1 || cols < 1 || reps < 1 || argc % 2 == 0) { fprintf(stderr, "bench_nf4: error: bad arguments\n"); return 1; }
    uint64_t rng = rng_seed(1);
    float *w = (float *)mallocCheck((size_t)rows * cols * sizeof(float));
    for (size_t i = 0; i < (size_t)rows * cols; i++) w[i] = 0.02f * rng_normal(&rng);
    MoeErr err;
    Nf4Tensor W;
    double t0 = wall_seconds();
    if (nf4_quantize(&W, w, rows, cols, NF4_BLOCK, 1, &err) != 0) { fprintf(stderr, "%s\n", err.msg); return 1; }
    double tq = wall_seconds() - t0;
    printf("bench_nf4: W %d x %d, %d threads, gemm %s%s\n", rows, cols, omp_get_max_threads(), gemm_backend(),
#if defined(__AVX512F__)
           ", AVX-512 decode"
#elif defined(__AVX2__) && defined(__FMA__)
           ", AVX2 decode"
#else
           ", scalar decode"
#endif
    );
    printf("quantize (double quant): %.1f M values/s\n", (double)rows * cols / tq / 1e6);
    int ns[] = {1, 4, 8, 16, 24, 32, 64, 256};
    float *x = (float *)mallocCheck((size_t)256 * cols * sizeof(float));
    float *y = (float *)mallocCheck((size_t)256 * rows * sizeof(float));
    for (size_t i = 0; i < (size_t)256 * cols; i++) x[i] = rng_normal(&rng);
    printf("%6s %16s %16s %16s   (GFLOP/s; NF4 weight GB/s in brackets)\n", "tokens", "nf4 fused", "nf4 tiled+gemm", "fp32 gemm");
    for (size_t k = 0; k < sizeof(ns) / sizeof(ns[0]); k++) {
        int n = ns[k];
        double fl = 2.0 * n * rows * cols, gb = (double)nf4_bytes(&W) / 1e9;
        double t[3];
        for (int kind = 0; kind < 3; kind++) {
            Job j = {&W, w, x, y, n, kind};
            run(&j);
            t[kind] = best_of(reps, run, &j);
        }
        printf("%6d %8.1f [%5.1f] %8.1f [%5.1f] %16.1f\n", n, fl / t[0] / 1e9, gb / t[0], fl / t[1] / 1e9, gb / t[1],
               fl / t[2] / 1e9);
    }
    nf4_free(&W);
    free(w); free(x); free(y);
    return 0;
}
