// The deepseek_v3 path against our own trainer's CPU model: a model of model/ (random init,
// random balancing biases) is exported to the HF deepseek_v3 layout (pretrained/export.c),
// loaded by pretrained/ and run on the same tokens: logits and routed experts must equal
// model_forward's (fp32: ~1e-5; NF4: the same routing on most tokens, bounded logit drift).
// Variants: q_lora on/off, softmax gate, groups, no bias, bf16 export.
#include <unistd.h>

#include "../model/model.h"
#include "../pretrained/export.h"
#include "../pretrained/ptmodel.h"
#include "test.h"

static char tmpdir[256];

typedef struct {
    const char *name;
    int q_lora, softmax, balance, groups, mtp;
} Variant;

static void run_variant(const Variant *v) {
    MoeErr err = {{0}};
    char name[128], dir[512];
    ModelConfig cfg;
    config_tiny(&cfg);
    cfg.q_lora_rank = v->q_lora ? cfg.q_lora_rank : 0;
    cfg.score_func = v->softmax ? SCORE_SOFTMAX : SCORE_SIGMOID;
    cfg.balance = v->balance;
    cfg.mtp_depth = v->mtp;
    if (!v->groups) cfg.n_expert_groups = cfg.n_limited_groups = 1;
    const int B = 2, T = 9, N = B * T;
    Model m;
    snprintf(name, sizeof(name), "%s_fp32_equals_model_forward", v->name);
    test_begin(name);
    if (model_init(&m, &cfg, B, T, 7, &err) != 0) {
        CHECK(0, "model_init: %s", err.msg);
        test_end();
        return;
    }
    uint64_t rng = rng_seed(3);
    if (cfg_uses_bias(&cfg))
        for (int i = 0; i < m.n_blocks * cfg.n_routed_experts; i++) m.bias[i] = 0.05f * rng_normal(&rng);
    int inputs[18];
    for (int i = 0; i < N; i++) inputs[i] = (int)(rng_next_u64(&rng) % (uint64_t)cfg.vocab_size);
    model_forward(&m, inputs, NULL, B, T, 0);
    snprintf(dir, sizeof(dir), "%s/%s", tmpdir, v->name);
    int rc = pt_export(&m, dir, ST_F32, NULL, -1, -1, &err);
    CHECK(rc == 0, "export: %s", err.msg);
    PtModel pm;
    PtLoadOptions lo = {PT_QUANT_NONE, 0, 0};
    if (rc == 0 && pt_model_load(&pm, dir, &lo, &err) != 0) {
        CHECK(0, "load: %s", err.msg);
        rc = -1;
    }
    float *logits = (float *)mallocCheck((size_t)N * cfg.vocab_size * sizeof(float));
    if (rc == 0) {
        int32_t tok[18];
        int64_t ss[3] = {0, T, 2 * T};
        for (int i = 0; i < N; i++) tok[i] = inputs[i];
        PtRouting rt;
        CHECK(pt_routing_alloc(&rt, &pm, N, 0, &err) == 0, "%s", err.msg);
        CHECK(pt_forward(&pm, tok, ss, B, logits, &rt, PT_REUSE_MID, &err) == 0, "%s", err.msg);
        double md = 0, mx = 0;
        for (int i = 0; i < N * cfg.vocab_size; i++) {
            md = fmax(md, fabs((double)logits[i] - m.logits[i]));
            mx = fmax(mx, fabs((double)m.logits[i]));
        }
        int64_t bad = 0;
        for (int mi = 0; mi < rt.n_moe; mi++) {
            int l = rt.moe_block[mi];
            for (int i = 0; i < N; i++) {
                // as sets: the two implementations may list the K experts in another order
                for (int k = 0; k < cfg.top_k; k++) {
                    int found = 0;
                    for (int k2 = 0; k2 < cfg.top_k; k2++) found |= m.acts[l].sel[i * cfg.top_k + k2] == rt.ids[((size_t)mi * N + i) * cfg.top_k + k];
                    bad += !found;
                }
            }
        }
        printf("  %s: max |logit diff| %.3g (logits up to %.3g), routed ids differing %lld\n", v->name, md, mx, (long long)bad);
        CHECK(md < 1e-5 * (1 + mx), "logits differ by %g", md);
        CHECK(bad == 0, "%lld routed experts differ from model_forward", (long long)bad);
        pt_routing_free(&rt);
        pt_model_free(&pm);
    }
    test_end();
    if (rc == 0) {
        snprintf(name, sizeof(name), "%s_nf4_close_to_model_forward", v->name);
        test_begin(name);
        PtLoadOptions l4 = {PT_QUANT_NF4, 1, 0};
        if (pt_model_load(&pm, dir, &l4, &err) != 0) {
            CHECK(0, "%s", err.msg);
        } else {
            int32_t tok[18];
            int64_t ss[3] = {0, T, 2 * T};
            for (int i = 0; i < N; i++) tok[i] = inputs[i];
            CHECK(pt_forward(&pm, tok, ss, B, logits, NULL, PT_REUSE_MID, &err) == 0, "%s", err.msg);
            double num = 0, den = 0;
            for (int i = 0; i < N * cfg.vocab_size; i++) {
                num += ((double)logits[i] - m.logits[i]) * ((double)logits[i] - m.logits[i]);
                den += (double)m.logits[i] * m.logits[i];
            }
            double rel = sqrt(num / (den + 1e-30));
            printf("  %s: NF4 relative RMS logit difference %.4f\n", v->name, rel);
            CHECK(rel < 0.6, "NF4 drift %.3f", rel);
            pt_model_free(&pm);
        }
        test_end();
    }
    free(logits);
    model_free(&m);
}

// `test_pretrained_export --write DIR`: a random tiny model of our trainer (biases set),
// exported to DIR (for tests/test_collect_hf.sh).
static int write_export(const char *dir) {
    MoeErr err;
    ModelConfig cfg;
    config_tiny(&cfg);
    // sizes that are multiples of 4 floats: transformers' grouped expert GEMM needs 16-byte strides
    cfg.vocab_size = 40;
    cfg.moe_inter_dim = 8;
    cfg.v_head_dim = 8;
    cfg.qk_nope_dim = 8;
    cfg.kv_lora_rank = 12;
    Model m;
    if (model_init(&m, &cfg, 1, 4, 11, &err) != 0) { fprintf(stderr, "%s\n", err.msg); return 1; }
    uint64_t rng = rng_seed(9);
    for (int i = 0; i < m.n_blocks * cfg.n_routed_experts; i++) m.bias[i] = 0.05f * rng_normal(&rng);
    int rc = pt_export(&m, dir, ST_F32, NULL, -1, -1, &err);
    if (rc) fprintf(stderr, "%s\n", err.msg);
    model_free(&m);
    return rc ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--write") == 0) return write_export(argv[2]);
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_pretrained_export_XXXXXX");
    if (!mkdtemp(tmpdir)) return 1;
    Variant vs[] = {
        {"v3_qlora_groups_bias", 1, 0, BALANCE_BIAS, 1, 0},
        {"v3_plain_q_no_groups", 0, 0, BALANCE_BIAS, 0, 0},
        {"v3_softmax_gate", 1, 1, BALANCE_AUX, 0, 0},
        {"v3_groups_no_bias", 1, 0, BALANCE_NONE, 1, 0},
        {"v3_with_mtp_block", 1, 0, BALANCE_BIAS, 1, 1},
    };
    for (size_t i = 0; i < sizeof(vs) / sizeof(vs[0]); i++) run_variant(&vs[i]);

    test_begin("export_bf16_and_tokenizer");
    {
        MoeErr err = {{0}};
        ModelConfig cfg;
        config_tiny(&cfg);
        Model m;
        char dir[512], tj[600];
        CHECK(model_init(&m, &cfg, 1, 4, 1, &err) == 0, "%s", err.msg);
        snprintf(tj, sizeof(tj), "%s/tok.json", tmpdir);
        FILE *fp = fopenCheck(tj, "w");
        fputs("{\"version\": \"1.0\"}", fp);
        fclose(fp);
        snprintf(dir, sizeof(dir), "%s/bf16", tmpdir);
        CHECK(pt_export(&m, dir, ST_BF16, tj, 0, 1, &err) == 0, "%s", err.msg);
        PtConfig pc;
        CHECK(pt_config_load(&pc, dir, &err) == 0, "%s", err.msg);
        CHECK(pc.arch == PT_DEEPSEEK_V3 && pc.bos_token_id == 0 && pc.eos_token_id == 1 && pc.n_group == 3 &&
                  pc.topk_group == 2 && pc.routed_scaling_factor == 1.5f && pc.norm_topk_prob,
              "config fields");
        char p2[700];
        snprintf(p2, sizeof(p2), "%s/tokenizer.json", dir);
        CHECK(file_exists(p2), "tokenizer copied");
        PtModel pm;
        PtLoadOptions lo = {PT_QUANT_NF4, 1, 0};
        CHECK(pt_model_load(&pm, dir, &lo, &err) == 0, "%s", err.msg);
        pt_model_free(&pm);
        model_free(&m);
    }
    test_end();
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "warning: cannot remove %s\n", tmpdir);
    return test_summary();
}
