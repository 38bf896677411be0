// Compares two checkpoints bit for bit: config, parameters, AdamW moments, balancing
// biases and training state (the run name excepted). Exit 0 when identical.
// --tol X: parameters, moments and biases may differ by |a - b| <= X * (|a| + |b| + max |a|)
// (max over the array: values near 0 are compared on the array's scale)
// (runs whose sums were taken in another order, e.g. data parallelism against gradient
// accumulation), and the training states are compared with the global accumulation
// grad_accum x world in place of the two fields and the best validation loss within X; the
// largest differences are printed. --model-only: config, parameters, moments and biases only.
#include <math.h>

#include "../train/checkpoint.h"

static int load(const char *path, Model *m, CkptTrainState *st) {
    ModelConfig cfg;
    MoeErr err;
    if (ckpt_read_header(path, &cfg, st, &err) != 0 || model_init(m, &cfg, 1, 1, 0, &err) != 0 ||
        ckpt_load(path, m, st, 1, &err) != 0) {
        fprintf(stderr, "error: %s\n", err.msg);
        return -1;
    }
    return 0;
}

// 1 when a and b differ (beyond tol when tol > 0); the largest |a - b| into *maxd
static int differs(const float *a, const float *b, size_t n, double tol, double *maxd) {
    if (tol <= 0) return memcmp(a, b, n * sizeof(float)) != 0;
    int bad = 0;
    double scale = 0;  // values near 0 are compared against the array's largest
    for (size_t i = 0; i < n; i++) scale = fabs(a[i]) > scale ? fabs(a[i]) : scale;
    *maxd = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > *maxd || isnan(d)) *maxd = isnan(d) ? INFINITY : d;
        if (!(d <= tol * (fabs(a[i]) + fabs(b[i]) + scale))) bad = 1;
    }
    return bad;
}

int main(int argc, char **argv) {
    double tol = 0;
    int model_only = 0;
    for (;;) {
        if (argc >= 4 && !strcmp(argv[1], "--tol")) {
            tol = atof(argv[2]);
            argv += 2, argc -= 2;
        } else if (argc >= 3 && !strcmp(argv[1], "--model-only")) {
            model_only = 1;
            argv += 1, argc -= 1;
        } else break;
    }
    if (argc != 3 || (tol < 0)) {
        fprintf(stderr, "usage: %s [--tol X] [--model-only] A.ckpt B.ckpt\n", argv[0]);
        return 2;
    }
    Model a, b;
    CkptTrainState sa, sb;
    if (load(argv[1], &a, &sa) != 0 || load(argv[2], &b, &sb) != 0) return 2;
    int diff = 0;
    if (memcmp(&a.cfg, &b.cfg, sizeof(ModelConfig)) != 0) diff = printf("configs differ\n");
    else {
        size_t E = (size_t)a.n_blocks * a.cfg.n_routed_experts;
        double dp = 0, dm = 0, dv = 0, db = 0;
        if (differs(a.params, b.params, a.num_params, tol, &dp)) diff = printf("parameters differ\n");
        if (differs(a.m, b.m, a.num_params, tol, &dm)) diff = printf("AdamW m differs\n");
        if (differs(a.v, b.v, a.num_params, tol, &dv)) diff = printf("AdamW v differs\n");
        if (differs(a.bias, b.bias, E, tol, &db)) diff = printf("biases differ\n");
        if (tol > 0)
            printf("max |difference|: parameters %.3g, AdamW m %.3g, v %.3g, biases %.3g (tolerance %g relative)\n", dp,
                   dm, dv, db, tol);
    }
    memset(sa.run_name, 0, sizeof sa.run_name);
    memset(sb.run_name, 0, sizeof sb.run_name);
    if (tol > 0 && !model_only) {  // the same global batch in another split
        sa.grad_accum *= sa.world > 0 ? sa.world : 1, sa.world = 0;
        sb.grad_accum *= sb.world > 0 ? sb.world : 1, sb.world = 0;
        double dl = 0;
        if (differs(&sa.best_val_loss, &sb.best_val_loss, 1, tol, &dl)) diff = printf("best validation losses differ\n");
        sb.best_val_loss = sa.best_val_loss;
    }
    if (!model_only && memcmp(&sa, &sb, sizeof sa)) diff = printf("training states differ (step %lld vs %lld)\n", (long long)sa.step, (long long)sb.step);
    model_free(&a);
    model_free(&b);
    return diff ? 1 : 0;
}
