// Compares two checkpoints bit for bit: config, parameters, AdamW moments, balancing
// biases and training state (the run name excepted). Exit 0 when identical.
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

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s A.ckpt B.ckpt\n", argv[0]);
        return 2;
    }
    Model a, b;
    CkptTrainState sa, sb;
    if (load(argv[1], &a, &sa) != 0 || load(argv[2], &b, &sb) != 0) return 2;
    int diff = 0;
    if (memcmp(&a.cfg, &b.cfg, sizeof(ModelConfig)) != 0) diff = printf("configs differ\n");
    else {
        size_t E = (size_t)a.n_blocks * a.cfg.n_routed_experts;
        if (memcmp(a.params, b.params, a.num_params * sizeof(float))) diff = printf("parameters differ\n");
        if (memcmp(a.m, b.m, a.num_params * sizeof(float))) diff = printf("AdamW m differs\n");
        if (memcmp(a.v, b.v, a.num_params * sizeof(float))) diff = printf("AdamW v differs\n");
        if (memcmp(a.bias, b.bias, E * sizeof(float))) diff = printf("biases differ\n");
    }
    memset(sa.run_name, 0, sizeof sa.run_name);
    memset(sb.run_name, 0, sizeof sb.run_name);
    if (memcmp(&sa, &sb, sizeof sa)) diff = printf("training states differ (step %lld vs %lld)\n", (long long)sa.step, (long long)sb.step);
    model_free(&a);
    model_free(&b);
    return diff ? 1 : 0;
}
