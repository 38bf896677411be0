// Whole-model gradient checks: the analytic gradient of every parameter tensor against
// central finite differences of the loss, on tiny configs covering each feature: MLA with
// and without query compression, sigmoid and softmax gates, group-limited routing, shared
// experts on/off, each balancing loss, capacity dropping, MTP.
// Samples whose perturbation changes any routing decision (top-K is piecewise constant)
// are skipped, so the comparison is between smooth functions.
#include <omp.h>

#include "../model/model.h"
#include "test.h"

#define B_ 2
#define T_ 7

static void snapshot_sel(const Model *m, int *buf) {
    int N = m->B * m->T, K = m->cfg.top_k, off = 0;
    for (int l = 0; l < m->n_blocks; l++) {
        if (!m->acts[l].sel) continue;
        memcpy(buf + off, m->acts[l].sel, sizeof(int) * (size_t)N * K);
        off += N * K;
        memcpy(buf + off, m->acts[l].row_of, sizeof(int) * (size_t)N * K);
        off += N * K;
    }
}
static int sel_equal(const Model *m, const int *a, int *scratch) {
    snapshot_sel(m, scratch);
    int total = 2 * m->B * m->T * m->cfg.top_k * m->n_blocks;
    return memcmp(a, scratch, sizeof(int) * (size_t)total) == 0;
}

static void check_config(const char *name, const ModelConfig *cfg, int samples_per_tensor) {
    test_begin(name);
    Model m;
    MoeErr err;
    if (model_init(&m, cfg, B_, T_, 42, &err) != 0) {
        CHECK(0, "model_init: %s", err.msg);
        test_end();
        return;
    }
    // larger weights than the training init so that every path carries signal
    uint64_t rng = rng_seed(7);
    for (size_t i = 0; i < m.num_params; i++) m.params[i] = 0.3f * rng_normal(&rng) + (m.params[i] == 1.0f ? 1.0f : 0.0f);
    for (size_t i = 0; i < (size_t)m.n_blocks * cfg->n_routed_experts; i++) m.bias[i] = 0.05f * rng_normal(&rng);
    int inputs[B_ * T_], targets[B_ * T_];
    for (int i = 0; i < B_ * T_; i++) {
        inputs[i] = (int)(rng_next_u64(&rng) % cfg->vocab_size);
        targets[i] = (int)(rng_next_u64(&rng) % cfg->vocab_size);
    }
    targets[3] = -1;  // an ignored target
    model_zero_grad(&m);
    model_forward(&m, inputs, targets, B_, T_, 0);
    model_backward(&m);
    int selsz = 2 * B_ * T_ * cfg->top_k * m.n_blocks;
    int *sel0 = calloc((size_t)selsz, sizeof(int)), *sel1 = calloc((size_t)selsz, sizeof(int));
    snapshot_sel(&m, sel0);
    float eps = 1e-2f;
    int skipped = 0, checked = 0;
    for (int ti = 0; ti < m.n_tensors; ti++) {
        const TensorInfo *t = &m.tensors[ti];
        double num2 = 0, diff2 = 0;
        int n = 0;
        for (int s = 0; s < samples_per_tensor; s++) {
            size_t i = t->offset + (size_t)(rng_next_u64(&rng) % t->numel);
            float orig = m.params[i];
            m.params[i] = orig + eps;
            double lp = model_forward(&m, inputs, targets, B_, T_, 0);
            int same = sel_equal(&m, sel0, sel1);
            m.params[i] = orig - eps;
            double lm = model_forward(&m, inputs, targets, B_, T_, 0);
            same &= sel_equal(&m, sel0, sel1);
            m.params[i] = orig;
            if (!same) {
                skipped++;
                continue;
            }
            double fd = (lp - lm) / (2.0 * eps);
            double an = m.grads[i];
            num2 += fd * fd;
            diff2 += (fd - an) * (fd - an);
            n++;
        }
        checked += n;
        if (n == 0) continue;
        double rel = sqrt(diff2) / (sqrt(num2) + 1e-6);
        CHECK(rel < 2e-2 || sqrt(diff2) < 2e-4, "%s: relative gradient error %.3g (|fd| %.3g) over %d samples", t->name,
              rel, sqrt(num2), n);
    }
    CHECK(checked > m.n_tensors * samples_per_tensor / 2, "too many samples skipped (%d of %d)", skipped,
          m.n_tensors * samples_per_tensor);
    free(sel0);
    free(sel1);
    model_free(&m);
    test_end();
}

int main(void) {
    // thousands of tiny forwards: one thread avoids paying OpenMP fork/join per layer call
    // (the threaded paths are exercised by the training tests)
    omp_set_num_threads(1);
    ModelConfig c;
    config_tiny(&c);
    c.balance = BALANCE_BIAS;
    check_config("grad_sigmoid_qlora_groups_bias", &c, 12);

    config_tiny(&c);
    c.q_lora_rank = 0;
    c.n_expert_groups = 1;
    c.n_limited_groups = 1;
    c.score_func = SCORE_SOFTMAX;
    c.balance = BALANCE_AUX;
    c.aux_alpha = 0.1f;
    check_config("grad_softmax_noqlora_aux", &c, 12);

    config_tiny(&c);
    c.balance = BALANCE_SEQAUX;
    c.aux_alpha = 0.1f;
    check_config("grad_sigmoid_seqaux", &c, 12);

    config_tiny(&c);
    c.balance = BALANCE_BIAS_SEQAUX;
    c.aux_alpha = 0.1f;
    c.n_shared_experts = 0;
    c.score_func = SCORE_SOFTMAX;
    check_config("grad_softmax_bias_seqaux_noshared", &c, 12);

    config_tiny(&c);
    c.capacity_factor = 0.6f;
    check_config("grad_capacity_dropping", &c, 12);

    config_tiny(&c);
    c.mtp_depth = 1;
    c.mtp_lambda = 0.5f;
    check_config("grad_mtp", &c, 10);

    config_tiny(&c);
    c.n_dense_layers = 0;
    c.top_k = 1;
    c.n_expert_groups = 1;
    c.n_limited_groups = 1;
    c.score_func = SCORE_SOFTMAX;
    check_config("grad_all_moe_top1_softmax", &c, 12);

    config_tiny(&c);
    c.n_dense_layers = c.n_layers;
    c.mtp_depth = 1;
    check_config("grad_dense_only_mtp", &c, 12);
    return test_summary();
}
