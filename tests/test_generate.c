// Generation with the absorbed MLA KV cache: cached single-token decoding must give the same
// logits as model_forward on the whole sequence at every position (two configs: config_tiny
// with q_lora, sigmoid gate, groups and the balancing bias; and q_lora_rank 0, softmax gate,
// more heads, no shared expert, MTP on), the cache-size report, error paths, and sampling
// (deterministic for a seed, greedy = argmax, top-k and top-p keep exactly the right sets).
#include "../model/generate.h"

#include "test.h"

// Weights of a trained-looking scale so that the logits are far from flat: matrices
// N(0, gain^2 / fan_in), norm weights 1 + N(0, 0.2^2), balancing biases N(0, 0.05^2).
static void randomize(Model *m, uint64_t seed, float gain) {
    uint64_t rng = rng_seed(seed);
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const TensorInfo *t = &m->tensors[ti];
        float *p = m->params + t->offset;
        if (t->ndim == 1) {
            for (size_t j = 0; j < t->numel; j++) p[j] = 1.0f + 0.2f * rng_normal(&rng);
            continue;
        }
        int fan_in = t->shape[t->ndim - 1];
        float std = gain / sqrtf((float)fan_in);
        if (ti == 0) std = 1.0f;  // embedding
        for (size_t j = 0; j < t->numel; j++) p[j] = std * rng_normal(&rng);
    }
    int E = m->cfg.n_routed_experts;
    for (int i = 0; i < m->n_blocks * E; i++) m->bias[i] = 0.05f * rng_normal(&rng);
}

static void second_config(ModelConfig *c) {
    config_tiny(c);
    c->q_lora_rank = 0;
    c->score_func = SCORE_SOFTMAX;
    c->n_heads = 4;
    c->n_expert_groups = 1;
    c->n_limited_groups = 1;
    c->n_shared_experts = 0;
    c->top_k = 3;
    c->route_scale = 1.0f;
    c->balance = BALANCE_SEQAUX;  // no bias in the selection: the nonzero m->bias must be ignored
    c->mtp_depth = 1;             // the MTP block plays no part in generation
    c->n_layers = 3;
    c->n_dense_layers = 1;
    c->max_seq_len = 24;
}

// cached decoding vs the full forward, at every position of B sequences of length T
static void check_cached_equals_full(const char *name, const ModelConfig *cfg, uint64_t seed) {
    test_begin(name);
    int B = 2, T = cfg->max_seq_len, V = cfg->vocab_size;
    Model m;
    MoeErr err;
    if (model_init(&m, cfg, B, T, seed, &err) != 0) {
        CHECK(0, "model_init: %s", err.msg);
        test_end();
        return;
    }
    randomize(&m, seed + 1, 1.5f);
    int *inputs = (int *)malloc(sizeof(int) * (size_t)B * T);
    uint64_t rng = rng_seed(seed + 2);
    for (int i = 0; i < B * T; i++) inputs[i] = (int)(rng_next_u64(&rng) % (uint64_t)V);
    model_forward(&m, inputs, NULL, B, T, 0);
    Generator g;
    if (gen_init(&g, &m, T, &err) != 0) {
        CHECK(0, "gen_init: %s", err.msg);
        free(inputs);
        model_free(&m);
        test_end();
        return;
    }
    double max_rel = 0.0, min_spread = 1e30;
    int bad = 0;
    for (int b = 0; b < B; b++) {
        gen_reset(&g);
        for (int t = 0; t < T; t++) {
            const float *lg = NULL;
            if (gen_step(&g, inputs[b * T + t], &lg, &err) != 0) {
                CHECK(0, "gen_step: %s", err.msg);
                bad = 1;
                break;
            }
            const float *ref = m.logits + ((size_t)b * T + t) * V;
            double mx = 0.0, lo = 1e30, hi = -1e30, diff = 0.0;
            for (int v = 0; v < V; v++) {
                mx = fmax(mx, fabs(ref[v]));
                lo = fmin(lo, ref[v]);
                hi = fmax(hi, ref[v]);
                diff = fmax(diff, fabs((double)lg[v] - ref[v]));
            }
            double rel = diff / (mx > 1e-6 ? mx : 1e-6);
            max_rel = fmax(max_rel, rel);
            min_spread = fmin(min_spread, hi - lo);
            if (rel > 1e-4 && bad < 5) {
                CHECK(0, "sequence %d position %d: cached logits differ by %.3g relative (max |logit| %.3g)", b, t, rel,
                      mx);
                bad++;
            }
        }
        CHECK(g.len == T, "cache holds %d positions, expected %d", g.len, T);
        // the cache holds exactly the training forward's kv_norm(c_kv) and RoPE'd k_pe
        int kvr = cfg->kv_lora_rank, rope = cfg->qk_rope_dim, H = cfg->n_heads, dqk = cfg_qk_head_dim(cfg);
        double dc = 0.0, dk = 0.0;
        for (int l = 0; l < cfg->n_layers; l++)
            for (int t = 0; t < T; t++) {
                size_t n = (size_t)b * T + t;
                const float *ck = g.ckv + ((size_t)l * g.max_len + t) * kvr, *kp = g.kpe + ((size_t)l * g.max_len + t) * rope;
                for (int i = 0; i < kvr; i++) dc = fmax(dc, fabs(ck[i] - m.acts[l].ckvn[n * kvr + i]));
                for (int i = 0; i < rope; i++)
                    dk = fmax(dk, fabs(kp[i] - m.acts[l].kf[(n * H + H - 1) * dqk + cfg->qk_nope_dim + i]));
            }
        CHECK(dc < 1e-4 && dk < 1e-4, "sequence %d: cached c_kv / k_pe differ from the forward's by %.3g / %.3g", b,
              dc, dk);
    }
    // the comparison means something only when the logits vary
    CHECK(min_spread > 1.0, "logits too flat for a meaningful comparison (min spread %.3g)", min_spread);
    printf("  [%s] max relative logit difference %.2e over %d positions (min logit spread %.2f)\n", name, max_rel,
           B * T, min_spread);
    gen_free(&g);
    free(inputs);
    model_free(&m);
    test_end();
}

// greedy generation through the cache = argmax of the full forward at every generated position
static void check_greedy_matches_full(void) {
    test_begin("greedy generation = argmax of model_forward");
    ModelConfig cfg;
    config_tiny(&cfg);
    int T = cfg.max_seq_len, V = cfg.vocab_size;
    Model m;
    MoeErr err;
    CHECK(model_init(&m, &cfg, 1, T, 5, &err) == 0, "model_init: %s", err.msg);
    randomize(&m, 6, 1.5f);
    Generator g;
    CHECK(gen_init(&g, &m, T, &err) == 0, "gen_init: %s", err.msg);
    int prompt[3] = {1, 7, 30}, out[32];
    SampleOpts o = {0.0f, 0, 1.0f};
    int n = gen_generate(&g, prompt, 3, 100, &o, 1, out, NULL, NULL, &err);
    // the cache holds T positions: the last token is sampled from the logits after T tokens
    CHECK(n == T - 3 + 1, "generated %d tokens, expected %d (cache-limited)", n, T - 2);
    int seq[32];
    memcpy(seq, prompt, sizeof prompt);
    memcpy(seq + 3, out, sizeof(int) * (size_t)(T - 3));
    model_forward(&m, seq, NULL, 1, T, 0);
    for (int i = 0; i < n; i++) {
        const float *row = m.logits + (size_t)(2 + i) * V;
        int best = 0;
        for (int v = 1; v < V; v++)
            if (row[v] > row[best]) best = v;
        CHECK(out[i] == best, "generated token %d is %d, argmax of the full forward is %d", i, out[i], best);
    }
    gen_free(&g);
    model_free(&m);
    test_end();
}

static void check_errors(void) {
    test_begin("generate errors: bad token, full cache, bad cache length, NaN weights");
    ModelConfig cfg;
    config_tiny(&cfg);
    Model m;
    MoeErr err;
    CHECK(model_init(&m, &cfg, 1, 4, 5, &err) == 0, "model_init: %s", err.msg);
    Generator g;
    err.msg[0] = 0;
    CHECK(gen_init(&g, &m, cfg.max_seq_len + 1, &err) != 0, "cache longer than max_seq_len accepted");
    CHECK(strstr(err.msg, "max_seq_len") != NULL, "message does not name max_seq_len: %s", err.msg);
    CHECK(gen_init(&g, &m, 0, &err) != 0, "cache length 0 accepted");
    CHECK(gen_init(&g, &m, 3, &err) == 0, "gen_init: %s", err.msg);
    const float *lg = NULL;
    CHECK(gen_step(&g, cfg.vocab_size, &lg, &err) != 0, "token id = V accepted");
    CHECK(strstr(err.msg, "vocabulary") != NULL, "message: %s", err.msg);
    CHECK(gen_step(&g, -1, &lg, &err) != 0, "token id -1 accepted");
    CHECK(g.len == 0, "a rejected token changed the cache");
    CHECK(gen_prefill(&g, NULL, 0, &lg, &err) != 0, "empty prompt accepted");
    int toks[3] = {1, 2, 3};
    CHECK(gen_prefill(&g, toks, 3, &lg, &err) == 0, "prefill: %s", err.msg);
    CHECK(gen_step(&g, 4, &lg, &err) != 0, "step past a full cache accepted");
    CHECK(strstr(err.msg, "full") != NULL, "message: %s", err.msg);
    int out[8];
    SampleOpts o = {1.0f, 0, 1.0f};
    int big[4] = {1, 2, 3, 4};
    CHECK(gen_generate(&g, big, 4, 2, &o, 1, out, NULL, NULL, &err) < 0, "prompt longer than the cache accepted");
    // a diverged model: NaN weights give a clear error, not garbage tokens
    gen_reset(&g);
    m.p.lm_head[5] = NAN;
    CHECK(gen_step(&g, 1, &lg, &err) != 0 && strstr(err.msg, "non-finite"), "NaN logits not reported: %s", err.msg);
    // the sampler never crashes on NaN / inf logits
    float bad[6] = {NAN, 1.0f, NAN, 3.0f, -INFINITY, 2.0f}, pr[6];
    int ix[6];
    uint64_t rng = 5;
    SampleOpts so = {1.0f, 0, 0.9f};
    for (int i = 0; i < 50; i++) {
        int t = sample_token(bad, 6, &so, &rng, pr, ix);
        CHECK(t == 1 || t == 3 || t == 5, "sampled token %d has a NaN or -inf logit", t);
    }
    SampleOpts greedy = {0.0f, 0, 1.0f};
    CHECK(sample_token(bad, 6, &greedy, &rng, pr, ix) == 3, "greedy with NaNs");
    float all_nan[3] = {NAN, NAN, NAN};
    int t = sample_token(all_nan, 3, &so, &rng, pr, ix);
    CHECK(t >= 0 && t < 3, "all-NaN logits gave token %d", t);
    gen_free(&g);
    model_free(&m);
    test_end();
}

static void check_cache_report(void) {
    test_begin("cache report: MLA c_kv + k_pe vs MHA K + V");
    ModelConfig cfg;
    config_tiny(&cfg);  // kvr 10, rope 4, H 2, nope 6, v 5, 3 layers
    GenCacheReport r;
    generate_cache_report(&cfg, &r);
    CHECK(r.mla_floats_per_token_layer == 14, "MLA floats %zu, expected 10 + 4", r.mla_floats_per_token_layer);
    CHECK(r.mha_floats_per_token_layer == 2 * 10 + 2 * 5, "MHA floats %zu, expected 30", r.mha_floats_per_token_layer);
    CHECK(r.mla_bytes_per_token == 14 * 4 * 3, "MLA bytes %zu", r.mla_bytes_per_token);
    CHECK(r.mha_bytes_per_token == 30 * 4 * 3, "MHA bytes %zu", r.mha_bytes_per_token);
    CHECK_CLOSE(r.ratio, 30.0 / 14.0, 1e-12, 1e-9, "ratio");
    // DeepSeek-V3's sizes: 512 + 64 = 576 vs 128 heads * (192 + 128) = 40960 per layer
    config_default(&cfg);
    cfg.n_heads = 128, cfg.kv_lora_rank = 512, cfg.qk_nope_dim = 128, cfg.qk_rope_dim = 64, cfg.v_head_dim = 128;
    generate_cache_report(&cfg, &r);
    CHECK(r.mla_floats_per_token_layer == 576 && r.mha_floats_per_token_layer == 40960, "V3 sizes %zu %zu",
          r.mla_floats_per_token_layer, r.mha_floats_per_token_layer);
    char buf[512];
    FILE *fp = fmemopen(buf, sizeof buf, "w");
    generate_cache_report_print(&r, 100, fp);
    fclose(fp);
    CHECK(strstr(buf, "MLA") && strstr(buf, "MHA") && strstr(buf, "smaller"), "report line: %s", buf);
    test_end();
}

// ---------------------------------------------------------------------------------------
// sampling

#define SV 64

static void random_logits(float *lg, int V, uint64_t seed, float scale) {
    uint64_t rng = rng_seed(seed);
    for (int i = 0; i < V; i++) lg[i] = scale * rng_normal(&rng);
}

static void check_greedy(void) {
    test_begin("sampling: temperature 0 is argmax (lowest id on ties), draws nothing");
    float lg[SV], probs[SV];
    int idx[SV];
    for (int trial = 0; trial < 20; trial++) {
        random_logits(lg, SV, 100 + trial, 2.0f);
        int best = 0;
        for (int i = 1; i < SV; i++)
            if (lg[i] > lg[best]) best = i;
        uint64_t rng = rng_seed(3), rng0 = rng;
        SampleOpts o = {0.0f, 5, 0.5f};
        CHECK(sample_token(lg, SV, &o, &rng, probs, idx) == best, "greedy missed the argmax");
        CHECK(rng == rng0, "greedy advanced the RNG");
    }
    for (int i = 0; i < SV; i++) lg[i] = 0.0f;
    lg[9] = lg[40] = 3.0f;
    SampleOpts o = {0.0f, 0, 1.0f};
    uint64_t rng = 1;
    CHECK(sample_token(lg, SV, &o, &rng, probs, idx) == 9, "tie not broken to the lowest id");
    CHECK(sample_distribution(lg, SV, &o, probs, idx) == 1 && probs[9] == 1.0f, "greedy distribution not one-hot");
    test_end();
}

static void check_deterministic(void) {
    test_begin("sampling: the same seed gives the same tokens");
    float lg[SV], probs[SV];
    int idx[SV], a[200], b[200], c[200];
    random_logits(lg, SV, 7, 1.0f);
    SampleOpts o = {0.9f, 20, 0.95f};
    uint64_t r1 = rng_seed(42), r2 = rng_seed(42), r3 = rng_seed(43);
    for (int i = 0; i < 200; i++) {
        a[i] = sample_token(lg, SV, &o, &r1, probs, idx);
        b[i] = sample_token(lg, SV, &o, &r2, probs, idx);
        c[i] = sample_token(lg, SV, &o, &r3, probs, idx);
    }
    CHECK(memcmp(a, b, sizeof a) == 0, "two runs with seed 42 differ");
    CHECK(memcmp(a, c, sizeof a) != 0, "seeds 42 and 43 gave the same 200 tokens");
    // through the model: gen_generate twice with one seed
    ModelConfig cfg;
    config_tiny(&cfg);
    Model m;
    MoeErr err;
    CHECK(model_init(&m, &cfg, 1, cfg.max_seq_len, 5, &err) == 0, "model_init: %s", err.msg);
    randomize(&m, 9, 1.0f);
    Generator g;
    CHECK(gen_init(&g, &m, cfg.max_seq_len, &err) == 0, "gen_init: %s", err.msg);
    int prompt[2] = {3, 4}, o1[16], o2[16], o3[16];
    SampleOpts so = {1.0f, 0, 1.0f};
    int n1 = gen_generate(&g, prompt, 2, 12, &so, 1234, o1, NULL, NULL, &err);
    int n2 = gen_generate(&g, prompt, 2, 12, &so, 1234, o2, NULL, NULL, &err);
    int n3 = gen_generate(&g, prompt, 2, 12, &so, 99, o3, NULL, NULL, &err);
    CHECK(n1 == 12 && n2 == 12 && n3 == 12, "generated %d %d %d tokens", n1, n2, n3);
    CHECK(memcmp(o1, o2, sizeof(int) * 12) == 0, "gen_generate not deterministic for a seed");
    CHECK(memcmp(o1, o3, sizeof(int) * 12) != 0, "different seeds gave the same 12 tokens");
    gen_free(&g);
    model_free(&m);
    test_end();
}

static void check_top_k(void) {
    test_begin("sampling: top-k never picks outside the k most likely");
    float lg[SV], probs[SV];
    int idx[SV], count[SV];
    for (int trial = 0; trial < 4; trial++) {
        random_logits(lg, SV, 200 + trial, 1.0f);
        int k = 1 + 3 * trial;
        // the k largest logits, by counting how many are larger
        unsigned char in_top[SV];
        for (int i = 0; i < SV; i++) {
            int larger = 0;
            for (int j = 0; j < SV; j++) larger += lg[j] > lg[i];
            in_top[i] = larger < k;
        }
        SampleOpts o = {5.0f, k, 1.0f};  // high temperature: the tail would be drawn often
        uint64_t rng = rng_seed(trial);
        memset(count, 0, sizeof count);
        for (int d = 0; d < 4000; d++) count[sample_token(lg, SV, &o, &rng, probs, idx)]++;
        int outside = 0, covered = 0;
        for (int i = 0; i < SV; i++) {
            if (!in_top[i]) outside += count[i];
            else covered += count[i] > 0;
        }
        CHECK(outside == 0, "k=%d: %d draws outside the top k", k, outside);
        CHECK(covered == k, "k=%d: only %d of the top k were ever drawn", k, covered);
        CHECK(sample_distribution(lg, SV, &o, probs, idx) == k, "distribution keeps a wrong count");
        double sum = 0.0;
        for (int i = 0; i < SV; i++) {
            sum += probs[i];
            CHECK(in_top[i] || probs[i] == 0.0f, "mass outside the top k");
        }
        CHECK_CLOSE(sum, 1.0, 1e-5, 0.0, "top-k mass");
    }
    // ties at the boundary go to the lower ids: all equal, k = 3 keeps 0, 1, 2
    for (int i = 0; i < SV; i++) lg[i] = 0.5f;
    lg[50] = 2.0f;
    SampleOpts o = {1.0f, 3, 1.0f};
    CHECK(sample_distribution(lg, SV, &o, probs, idx) == 3, "tied top-k keeps a wrong count");
    CHECK(probs[50] > 0.0f && probs[0] > 0.0f && probs[1] > 0.0f && probs[2] == 0.0f && probs[3] == 0.0f,
          "tied top-k: kept the wrong ids");
    // a large vocabulary: the selection equals a full sort's first k
    enum { BV = 5000 };
    float *big = (float *)malloc(sizeof(float) * BV), *bp = (float *)malloc(sizeof(float) * BV);
    int *bi = (int *)malloc(sizeof(int) * BV);
    random_logits(big, BV, 999, 1.0f);
    for (int i = 0; i < BV; i += 7) big[i] = big[i / 2];  // some exact ties
    SampleOpts ok = {1.0f, 100, 1.0f};
    CHECK(sample_distribution(big, BV, &ok, bp, bi) == 100, "large top-k count");
    for (int r = 1; r < 100; r++)
        CHECK(big[bi[r - 1]] > big[bi[r]] || (big[bi[r - 1]] == big[bi[r]] && bi[r - 1] < bi[r]),
              "top-k not sorted at rank %d", r);
    int n_better = 0;  // every token outside the kept set ranks after the worst kept one
    for (int i = 0; i < BV; i++) {
        int w = bi[99];
        if (bp[i] == 0.0f && (big[i] > big[w] || (big[i] == big[w] && i < w))) n_better++;
    }
    CHECK(n_better == 0, "%d tokens outside the top-k rank above its last member", n_better);
    free(big);
    free(bp);
    free(bi);
    test_end();
}

static void check_top_p(void) {
    test_begin("sampling: top-p keeps the smallest set with mass >= p");
    float lg[SV], probs[SV];
    int idx[SV];
    const float ps[4] = {0.1f, 0.5f, 0.8f, 0.95f};
    for (int trial = 0; trial < 8; trial++) {
        random_logits(lg, SV, 300 + trial, 1.5f);
        float p = ps[trial % 4], temp = trial < 4 ? 1.0f : 0.7f;
        int k = trial >= 6 ? 10 : 0;  // also top-k then top-p
        // reference in double: softmax(l / temp) over the top k, sorted descending
        double ref[SV];
        int order[SV];
        double mx = -1e30, z = 0.0;
        for (int i = 0; i < SV; i++) order[i] = i;
        for (int i = 0; i < SV; i++)  // selection sort by logit, descending
            for (int j = i + 1; j < SV; j++)
                if (lg[order[j]] > lg[order[i]]) {
                    int t = order[i];
                    order[i] = order[j];
                    order[j] = t;
                }
        int kk = k > 0 ? k : SV;
        for (int r = 0; r < kk; r++) mx = fmax(mx, lg[order[r]]);
        for (int r = 0; r < kk; r++) z += (ref[r] = exp((lg[order[r]] - mx) / temp));
        double cum = 0.0;
        int n_ref = kk;
        for (int r = 0; r < kk; r++) {
            ref[r] /= z;
            cum += ref[r];
            if (cum >= p) {
                n_ref = r + 1;
                break;
            }
        }
        // minimality: without its least likely member the set has mass < p
        double without_last = cum - ref[n_ref - 1];
        CHECK(without_last < p && cum >= p - 1e-6, "reference set is not minimal");
        SampleOpts o = {temp, k, p};
        int kept = sample_distribution(lg, SV, &o, probs, idx);
        CHECK(kept == n_ref, "trial %d (p=%.2f): kept %d tokens, the smallest set with mass >= p has %d", trial, p,
              kept, n_ref);
        double sum = 0.0;
        for (int r = 0; r < SV; r++) {
            int id = order[r];
            sum += probs[id];
            if (r < n_ref)
                CHECK_CLOSE(probs[id], ref[r] / cum, 1e-5, 1e-4, "renormalised nucleus probability");
            else
                CHECK(probs[id] == 0.0f, "trial %d: token of rank %d outside the nucleus has mass", trial, r);
        }
        CHECK_CLOSE(sum, 1.0, 1e-5, 0.0, "nucleus mass");
        // draws stay inside the nucleus and follow its probabilities
        int count[SV] = {0};
        uint64_t rng = rng_seed(50 + trial);
        int draws = 20000;
        for (int d = 0; d < draws; d++) count[sample_token(lg, SV, &o, &rng, probs, idx)]++;
        for (int r = 0; r < SV; r++) {
            int id = order[r];
            if (r >= n_ref) CHECK(count[id] == 0, "trial %d: drew a token outside the nucleus", trial);
            else CHECK_CLOSE((double)count[id] / draws, ref[r] / cum, 0.015, 0.0, "empirical frequency");
        }
    }
    test_end();
}

int main(void) {
    ModelConfig a, b;
    config_tiny(&a);
    second_config(&b);
    check_cached_equals_full("cached = full forward, config_tiny (q_lora, sigmoid, groups, bias)", &a, 11);
    check_cached_equals_full("cached = full forward, q_lora 0, softmax gate, 4 heads, MTP on", &b, 12);
    {
        ModelConfig d = a;  // the bias decides selection: large biases reroute, both paths agree
        d.balance = BALANCE_BIAS_SEQAUX;
        d.n_dense_layers = 0;
        check_cached_equals_full("cached = full forward, all layers MoE, bias+seqaux", &d, 13);
    }
    check_greedy_matches_full();
    check_errors();
    check_cache_report();
    check_greedy();
    check_deterministic();
    check_top_k();
    check_top_p();
    return test_summary();
}
