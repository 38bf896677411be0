// A whole training step of a tiny config on the CUDA backend (model/cuda/model.cu) against
// the CPU reference model (model/cpu/model.c): loss, every gradient tensor, the grad norm,
// parameters and AdamW moments after the update, routing loads, biases after the loss-free
// update, and a second step that uses the updated biases. Through the CUDA-on-CPU harness in
// make test, on a real GPU in make test-gpu.
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../common/util.h"
#include "../model/cuda/cuda_model.h"
#include "../model/cuda/cuda_ops.h"
#include "../model/cuda/plan.h"
#include "../model/model.h"
#include "test.h"

// compare a whole buffer tensor by tensor; one line per bad tensor
static int check_tensors(const char *what, const Model *cpu, const float *got, const float *ref, double atol,
                         double rtol) {
    int bad_tensors = 0;
    for (int ti = 0; ti < cpu->n_tensors; ti++) {
        const TensorInfo *t = &cpu->tensors[ti];
        int bad = 0;
        size_t worst = 0;
        double worst_ex = -1.0, maxref = 0.0;
        for (size_t i = 0; i < t->numel; i++) {
            double a = got[t->offset + i], b = ref[t->offset + i];
            maxref = fabs(b) > maxref ? fabs(b) : maxref;
            double d = fabs(a - b), lim = atol + rtol * fabs(b);
            if (!(d <= lim)) {
                bad++;
                double ex = isnan(d) ? 1e30 : d - lim;
                if (ex > worst_ex) worst_ex = ex, worst = i;
            }
        }
        if (bad) {
            bad_tensors++;
            CHECK(0, "%s %s: %d of %zu differ; worst [%zu] got %.9g expected %.9g (max |ref| %.3g)", what, t->name, bad,
                  t->numel, worst, got[t->offset + worst], ref[t->offset + worst], maxref);
        }
    }
    return bad_tensors;
}

static void run_case(const char *name, ModelConfig *c, int B, int T) {
    test_begin(name);
    MoeErr err = {{0}};
    Model cpu;
    if (model_init(&cpu, c, B, T, 42, &err) != 0) {
        CHECK(0, "model_init: %s", err.msg);
        test_end();
        return;
    }
    CudaModel *gm = NULL;
    // the device model is allocated for a larger batch than it runs (buffers sized B_max x T_max)
    int T_alloc = T + 2 <= c->max_seq_len ? T + 2 : T;
    if (cuda_model_create(&gm, c, B + 1, T_alloc, &err) != 0) {
        CHECK(0, "cuda_model_create: %s", err.msg);
        model_free(&cpu);
        test_end();
        return;
    }
    size_t np = cpu.num_params;
    CHECK(cuda_model_num_params(gm) == np, "param count %zu vs %zu", cuda_model_num_params(gm), np);
    cuda_model_upload_params(gm, cpu.params);
    int N = B * T, E = c->n_routed_experts > 0 ? c->n_routed_experts : 1;
    // a non-zero bias, so that selection by score + bias is exercised
    for (int i = 0; i < cpu.n_blocks * E; i++) cpu.bias[i] = 0.02f * (float)((i * 5) % 7 - 3);
    cuda_model_upload_bias(gm, cpu.bias);
    uint64_t rng = rng_seed(7);
    int *in = (int *)mallocCheck(sizeof(int) * N), *tg = (int *)mallocCheck(sizeof(int) * N);
    float *buf = (float *)mallocCheck(sizeof(float) * np), *buf2 = (float *)mallocCheck(sizeof(float) * np);
    float *bias = (float *)mallocCheck(sizeof(float) * cpu.n_blocks * E);
    for (int step = 1; step <= 2; step++) {
        for (int n = 0; n < N; n++) {
            in[n] = (int)(rng_next_u64(&rng) % (uint64_t)c->vocab_size);
            tg[n] = n % 5 == 4 ? -1 : (int)(rng_next_u64(&rng) % (uint64_t)c->vocab_size);
        }
        // step 2 runs with a loss scale (as fp16 training does): gradients come out scaled
        float gscale = step == 2 ? 256.0f : 1.0f;
        cpu.grad_scale = gscale;
        cuda_model_set_grad_scale(gm, gscale);
        routing_stats_reset(&cpu);
        cuda_model_routing_reset(gm);
        model_zero_grad(&cpu);
        cuda_model_zero_grad(gm);
        float lc = model_forward(&cpu, in, tg, B, T, 1);
        float lg = cuda_model_forward(gm, in, tg, B, T);
        CHECK(fabsf(lc - lg) <= 1e-5f + 1e-5f * fabsf(lc), "step %d loss: cuda %.9g cpu %.9g", step, lg, lc);
        float ce_g, aux_g, mtp_g;
        cuda_model_losses(gm, &ce_g, &aux_g, &mtp_g);
        CHECK(fabsf(mtp_g - cpu.mtp_loss) <= 1e-5f * fabsf(cpu.mtp_loss) + 1e-6f, "step %d MTP loss: cuda %.9g cpu %.9g",
              step, mtp_g, cpu.mtp_loss);
        CHECK(c->mtp_depth == 0 || cpu.mtp_loss > 0.0f, "MTP on with a zero MTP loss");
        CHECK(fabsf(aux_g - cpu.aux_loss) <= 1e-5f * fabsf(cpu.aux_loss) + 1e-9f, "step %d aux loss: cuda %.9g cpu %.9g",
              step, aux_g, cpu.aux_loss);
        CHECK(c->balance == BALANCE_NONE || c->balance == BALANCE_BIAS || cpu.aux_loss > 0.0f,
              "aux mode with a zero aux loss: the test does not test it");
        // logits of the last forward (what generation reads)
        float *lg_dev = (float *)mallocCheck(sizeof(float) * (size_t)N * c->vocab_size);
        cuda_model_download_logits(gm, lg_dev);
        int badl = 0;
        for (size_t i = 0; i < (size_t)N * c->vocab_size; i++)
            badl += !(fabsf(lg_dev[i] - cpu.logits[i]) <= 1e-5f + 1e-4f * fabsf(cpu.logits[i]));
        CHECK(!badl, "step %d: %d logits differ", step, badl);
        free(lg_dev);
        model_backward(&cpu);
        cuda_model_backward(gm);
        cuda_model_download_grads(gm, buf);
        check_tensors("grad", &cpu, buf, cpu.grads, 1e-6 * gscale, 2e-3);
        CHECK(cuda_model_grads_nonfinite(gm) == 0, "step %d: finite gradients flagged", step);
        float nc = model_grad_norm(&cpu), ng = cuda_model_grad_norm(gm);
        CHECK(fabsf(nc - ng) <= 1e-5f * nc + 1e-7f, "step %d grad norm: cuda %.9g cpu %.9g", step, ng, nc);
        // routing loads
        for (int i = 0; i < cpu.n_moe; i++) {
            float load[256], dropped = 0.0f, ent = 0.0f, top1 = 0.0f;
            cuda_model_routing_stats(gm, i, load, &dropped, &ent, &top1);
            CHECK(fabs(ent - cpu.stats[i].entropy_sum) <= 1e-4 * fabs(cpu.stats[i].entropy_sum) + 1e-5,
                  "step %d entropy sum %.7g vs %.7g", step, ent, cpu.stats[i].entropy_sum);
            CHECK(fabs(top1 - cpu.stats[i].top1_sum) <= 1e-5 * fabs(cpu.stats[i].top1_sum) + 1e-6,
                  "step %d top-1 sum %.7g vs %.7g", step, top1, cpu.stats[i].top1_sum);
            int bad = 0;
            for (int e = 0; e < E; e++) bad += load[e] != (float)cpu.stats[i].load[e];
            CHECK(!bad, "step %d moe block %d: loads differ in %d experts", step, cpu.moe_block[i], bad);
            CHECK(dropped == (float)cpu.stats[i].dropped, "step %d dropped %g vs %g", step, dropped, cpu.stats[i].dropped);
        }
        // AdamW from identical gradients (they were compared above): Adam's step is ~lr * g / |g| per
        // element, so the rounding differences of tiny gradients would otherwise move parameters by
        // a good fraction of lr; this way the update itself is compared tightly
        cuda_model_upload_grads(gm, cpu.grads);
        model_adamw(&cpu, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f / gscale, step);
        cuda_model_adamw(gm, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f / gscale, step);
        cuda_model_download_params(gm, buf);
        check_tensors("param", &cpu, buf, cpu.params, 1e-7, 1e-6);
        cuda_model_download_adam(gm, buf, buf2);
        check_tensors("adam m", &cpu, buf, cpu.m, 1e-9, 1e-5);
        check_tensors("adam v", &cpu, buf2, cpu.v, 1e-12, 1e-5);
        model_update_bias(&cpu);
        cuda_model_update_bias(gm);
        cuda_model_download_bias(gm, bias);
        int bad = 0;
        for (int i = 0; i < cpu.n_blocks * E; i++) bad += bias[i] != cpu.bias[i];
        CHECK(!bad, "step %d: %d biases differ after the update", step, bad);
        // continue from identical parameters so that step 2 tests the same computation again
        cuda_model_download_params(gm, buf);
        cuda_model_upload_params(gm, cpu.params);
    }
    // an inf/NaN gradient is flagged (fp16 loss scaling skips such a step)
    memcpy(buf, cpu.grads, sizeof(float) * np);
    buf[np / 3] = NAN;
    cuda_model_upload_grads(gm, buf);
    CHECK(cuda_model_grads_nonfinite(gm) == 1, "NaN gradient not flagged");
    buf[np / 3] = 0.0f;
    buf[np - 1] = INFINITY;
    cuda_model_upload_grads(gm, buf);
    CHECK(cuda_model_grads_nonfinite(gm) == 1, "inf gradient not flagged");
    free(in), free(tg), free(buf), free(buf2), free(bias);
    cuda_model_free(gm);
    model_free(&cpu);
    test_end();
}

// bf16 GEMMs against the fp32 CPU model: bf16 tolerances (relative L2 error per tensor)
static void test_bf16_case(void) {
    test_begin("cuda_model_step_bf16_gemms");
    ModelConfig c;
    config_tiny(&c);
    c.mtp_depth = 0;
    int B = 2, T = 7, N = B * T;
    MoeErr err = {{0}};
    Model cpu;
    CudaModel *gm = NULL;
    if (model_init(&cpu, &c, B, T, 42, &err) != 0 || cuda_model_create(&gm, &c, B, T, &err) != 0) {
        CHECK(0, "init: %s", err.msg);
        test_end();
        return;
    }
    size_t np = cpu.num_params;
    cuda_model_upload_params(gm, cpu.params);
    cuda_model_set_bf16(gm, 1);
    int *in = (int *)mallocCheck(sizeof(int) * N), *tg = (int *)mallocCheck(sizeof(int) * N);
    uint64_t rng = rng_seed(11);
    for (int n = 0; n < N; n++) {
        in[n] = (int)(rng_next_u64(&rng) % (uint64_t)c.vocab_size);
        tg[n] = (int)(rng_next_u64(&rng) % (uint64_t)c.vocab_size);
    }
    model_zero_grad(&cpu);
    cuda_model_zero_grad(gm);
    float lc = model_forward(&cpu, in, tg, B, T, 1), lg = cuda_model_forward(gm, in, tg, B, T);
    CHECK(fabsf(lc - lg) <= 1e-2f * fabsf(lc), "bf16 loss %.6f vs fp32 %.6f", lg, lc);
    model_backward(&cpu);
    cuda_model_backward(gm);
    float *g = (float *)mallocCheck(sizeof(float) * np);
    cuda_model_download_grads(gm, g);
    double worst = 0.0;
    const char *worst_name = "";
    for (int ti = 0; ti < cpu.n_tensors; ti++) {
        const TensorInfo *t = &cpu.tensors[ti];
        double num = 0.0, den = 0.0;
        for (size_t i = 0; i < t->numel; i++) {
            double d = (double)g[t->offset + i] - cpu.grads[t->offset + i];
            num += d * d;
            den += (double)cpu.grads[t->offset + i] * cpu.grads[t->offset + i];
        }
        double rel = den > 1e-20 ? sqrt(num / den) : sqrt(num);
        if (rel > worst) worst = rel, worst_name = t->name;
    }
    printf("# bf16 GEMMs: loss %.6f vs %.6f, worst relative gradient error %.4f (%s)\n", lg, lc, worst, worst_name);
    CHECK(worst < 0.05, "gradient %s differs by %.4f (relative L2)", worst_name, worst);
    CHECK(worst > 1e-4, "gradients match fp32 to %.2g: the bf16 GEMMs were not used", worst);
    // AdamW from identical gradients: the fp32 master matches, the bf16 copy is a neighbour of it
    cuda_model_upload_grads(gm, cpu.grads);
    model_adamw(&cpu, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, 1);
    cuda_model_adamw(gm, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, 1);
    cuda_model_download_params(gm, g);
    check_tensors("master", &cpu, g, cpu.params, 1e-7, 1e-6);
    uint16_t *p16 = (uint16_t *)mallocCheck(sizeof(uint16_t) * np);
    cuda_model_download_params16(gm, p16);
    int bad = 0;
    for (size_t i = 0; i < np; i++) {
        uint32_t b;
        memcpy(&b, &g[i], 4);
        uint16_t lo = (uint16_t)(b >> 16);
        bad += !(p16[i] == lo || (p16[i] == (uint16_t)(lo + 1) && (b & 0xffffu)));
    }
    CHECK(!bad, "%d bf16 weights are not a neighbour of their master", bad);
    free(in), free(tg), free(g), free(p16);
    cuda_model_free(gm);
    model_free(&cpu);
    test_end();
}

int main(void) {
    // tiny sizes: one OpenMP thread (idle OpenMP workers spinning between the CPU reference's
    // calls would take the cores from the harness's fibers)
    omp_set_num_threads(1);
    printf("# backend %s\n", cu_backend());
    if (cu_device_info(NULL, 0, NULL, NULL) < 1) {
        test_skip("cuda_model", "no CUDA device visible");
        return test_summary();
    }
    ModelConfig c;
    config_tiny(&c);  // q_lora, shared experts, 3 groups of 2, top-2, sigmoid
    c.balance = BALANCE_BIAS;
    c.mtp_depth = 0;
    run_case("cuda_model_step_tiny_sigmoid_groups", &c, 2, 7);

    config_tiny(&c);
    c.q_lora_rank = 0;
    c.score_func = SCORE_SOFTMAX;
    c.n_expert_groups = 1;
    c.n_limited_groups = 1;
    c.capacity_factor = 0.75f;  // drops
    c.balance = BALANCE_BIAS;
    c.route_scale = 1.0f;
    run_case("cuda_model_step_tiny_softmax_capacity_no_qlora", &c, 3, 5);

    config_tiny(&c);
    c.balance = BALANCE_BIAS_SEQAUX;
    c.aux_alpha = 0.01f;  // large enough to matter in the gradients
    run_case("cuda_model_step_tiny_bias_seqaux", &c, 2, 6);

    config_tiny(&c);
    c.balance = BALANCE_AUX;
    c.aux_alpha = 0.01f;
    c.score_func = SCORE_SOFTMAX;
    c.n_expert_groups = 1;
    c.n_limited_groups = 1;
    run_case("cuda_model_step_tiny_batch_aux_softmax", &c, 2, 5);

    config_tiny(&c);
    c.mtp_depth = 1;
    c.mtp_lambda = 0.3f;
    c.balance = BALANCE_BIAS_SEQAUX;
    c.aux_alpha = 0.01f;
    run_case("cuda_model_step_tiny_mtp_seqaux", &c, 2, 6);

    // the memory planner against what the device model really allocates (fp32)
    test_begin("cuda_model_allocation_matches_plan");
    {
        ModelConfig pc;
        config_default(&pc);
        pc.vocab_size = 2048;
        pc.dim = 128;
        pc.n_layers = 3;
        pc.kv_lora_rank = 64;
        pc.inter_dim = 384;
        pc.moe_inter_dim = 96;
        pc.max_seq_len = 64;
        pc.mtp_depth = 1;
        int PB = 4, PT = 64;
        MoeErr perr = {{0}};
        CudaPlan plan;
        CHECK(cuda_plan(&pc, PB, PT, PREC_FP32, 0, &plan, &perr) == 0, "plan: %s", perr.msg);
        size_t free0 = 0, free1 = 0;
        cu_device_info(NULL, 0, &free0, NULL);
        CudaModel *pm = NULL;
        CHECK(cuda_model_create(&pm, &pc, PB, PT, &perr) == 0, "create: %s", perr.msg);
        cu_device_info(NULL, 0, &free1, NULL);
        double used = (double)(free0 - free1);
        double planned = (double)(plan.total - plan.workspace - plan.overhead);
        printf("# device bytes: allocated %.2f MiB, planned %.2f MiB\n", used / 1048576.0, planned / 1048576.0);
        CHECK(used <= 1.10 * planned && used >= 0.80 * planned, "allocated %.0f bytes, plan %.0f", used, planned);
        cuda_model_free(pm);
    }
    test_end();

    test_bf16_case();

    // what a checkpoint saves and restores: params, AdamW moments, biases (exact round trips)
    test_begin("cuda_model_state_round_trip");
    {
        ModelConfig rc;
        config_tiny(&rc);
        MoeErr rerr = {{0}};
        CudaModel *rm = NULL;
        CHECK(cuda_model_create(&rm, &rc, 1, 4, &rerr) == 0, "create: %s", rerr.msg);
        size_t np = cuda_model_num_params(rm);
        int nb = (rc.n_layers + rc.mtp_depth) * rc.n_routed_experts;
        float *a = (float *)mallocCheck(sizeof(float) * np), *b = (float *)mallocCheck(sizeof(float) * np);
        float *a2 = (float *)mallocCheck(sizeof(float) * np), *b2 = (float *)mallocCheck(sizeof(float) * np);
        uint64_t r = rng_seed(5);
        for (size_t i = 0; i < np; i++) a[i] = rng_normal(&r), b[i] = rng_uniform(&r);
        cuda_model_upload_params(rm, a);
        cuda_model_download_params(rm, a2);
        CHECK(!memcmp(a, a2, sizeof(float) * np), "params differ after a round trip");
        cuda_model_upload_adam(rm, b, a);
        cuda_model_download_adam(rm, b2, a2);
        CHECK(!memcmp(b, b2, sizeof(float) * np) && !memcmp(a, a2, sizeof(float) * np), "AdamW state differs");
        cuda_model_upload_bias(rm, a);
        cuda_model_download_bias(rm, b2);
        CHECK(!memcmp(a, b2, sizeof(float) * nb), "biases differ");
        free(a), free(b), free(a2), free(b2);
        cuda_model_free(rm);
    }
    test_end();

    test_begin("cuda_model_refuses_unsupported");
    MoeErr err = {{0}};
    CudaModel *gm = NULL;
    config_tiny(&c);
    c.mtp_depth = 2;
    CHECK(cuda_model_create(&gm, &c, 1, 4, &err) != 0, "MTP depth 2 accepted");
    config_tiny(&c);
    CHECK(cuda_model_create(&gm, &c, 1, 100, &err) != 0, "T > max_seq_len accepted");
    test_end();
    return test_summary();
}
