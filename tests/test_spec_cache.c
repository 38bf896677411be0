// Tests of the offloading simulator (speculate/cache.c): LRU and Belady hit counts on
// hand-worked access sequences, prefetch timing (hidden vs late transfers), and the expert
// sizes of the DeepSeek-MoE-16B scenarios computed from its config.
#include "../common/util.h"
#include "../speculate/cache.h"
#include "test.h"

static CacheStats run(const uint16_t *ids, size_t n, int M, int K, int E, int C, int policy, const uint16_t *pred,
                      int P, double xfer, double layer) {
    CacheStats st;
    MoeErr err;
    if (cache_simulate(ids, n, M, K, E, C, policy, pred, P, 1, 100.0, xfer, layer, &st, &err)) {
        printf("  cache_simulate: %s\n", err.msg);
        memset(&st, 0, sizeof st);
    }
    return st;
}

int main(void) {
    test_begin("cache_textbook_sequence_lru_belady");
    {
        // reference string 1 2 3 4 1 2 5 1 2 3 4 5 with 3 frames: LRU 10 faults, OPT 7 faults
        uint16_t s[12] = {1, 2, 3, 4, 1, 2, 5, 1, 2, 3, 4, 5};
        CacheStats a = run(s, 12, 1, 1, 6, 3, CACHE_LRU, NULL, 0, 1, 1);
        CacheStats b = run(s, 12, 1, 1, 6, 3, CACHE_BELADY, NULL, 0, 1, 1);
        CHECK(a.misses == 10 && a.hits == 2, "LRU misses %g hits %g (expected 10, 2)", a.misses, a.hits);
        CHECK(b.misses == 7 && b.hits == 5, "Belady misses %g hits %g (expected 7, 5)", b.misses, b.hits);
        CHECK(a.bytes == 1000 && b.bytes == 700, "bytes %g %g", a.bytes, b.bytes);
        // A B C A B D A with 2 slots: LRU no hit, Belady 2
        uint16_t t[7] = {0, 1, 2, 0, 1, 3, 0};
        a = run(t, 7, 1, 1, 4, 2, CACHE_LRU, NULL, 0, 1, 1);
        b = run(t, 7, 1, 1, 4, 2, CACHE_BELADY, NULL, 0, 1, 1);
        CHECK(a.hits == 0 && b.hits == 2, "ABCABDA: LRU hits %g (0) Belady hits %g (2)", a.hits, b.hits);
        // cache as large as the expert set: only compulsory misses
        a = run(s, 12, 1, 1, 6, 6, CACHE_LRU, NULL, 0, 1, 1);
        CHECK(a.misses == 5, "compulsory misses %g (5)", a.misses);
    }
    test_end();

    test_begin("cache_top2_hand_example");
    {
        // E=4, K=2, C=3, tokens {0,1} {2,3} {0,2} {1,3}; worked by hand:
        // LRU: 0m 1m | 2m 3m(evict 0) | 0m(evict 1) 2h | 1m(evict 0) 3h  -> 2 hits, 6 misses
        // Belady: 0m 1m | 2m 3m(evict 1: next use t3 > t2) | 0h 2h | 1m 3h -> 3 hits, 5 misses
        uint16_t s[8] = {0, 1, 2, 3, 0, 2, 1, 3};
        CacheStats a = run(s, 4, 1, 2, 4, 3, CACHE_LRU, NULL, 0, 1, 1);
        CacheStats b = run(s, 4, 1, 2, 4, 3, CACHE_BELADY, NULL, 0, 1, 1);
        CHECK(a.hits == 2 && a.misses == 6, "LRU hits %g misses %g (2, 6)", a.hits, a.misses);
        CHECK(b.hits == 3 && b.misses == 5, "Belady hits %g misses %g (3, 5)", b.hits, b.misses);
        CHECK(a.accesses == 8, "accesses %g", a.accesses);
    }
    test_end();

    test_begin("cache_prefetch_timing");
    {
        // M=2 layers, K=1, E=4, C=1. Layer 0 always expert 0, layer 1 alternates 1, 2.
        uint16_t ids[8] = {0, 1, 0, 2, 0, 1, 0, 2};
        uint16_t pred[8] = {1, 0, 2, 0, 1, 0, 2, 0};  // perfect prediction of layer 1, made at layer 0
        // no prefetch, transfer 0.5, layer 1.0: first token 2 misses, then one miss per token
        CacheStats a = run(ids, 4, 2, 1, 4, 1, CACHE_LRU, NULL, 0, 0.5, 1.0);
        CHECK(a.misses == 5 && a.hits == 3, "LRU misses %g hits %g (5, 3)", a.misses, a.hits);
        CHECK_CLOSE(a.stall_s, 2.5, 1e-12, 0, "LRU stall");
        // perfect prefetch that fits in the window: only the first layer-0 miss stalls
        CacheStats b = run(ids, 4, 2, 1, 4, 1, CACHE_LRU, pred, 1, 0.5, 1.0);
        CHECK(b.misses == 1 && b.hits == 7 && b.late == 0, "prefetch misses %g hits %g late %g", b.misses, b.hits,
              b.late);
        CHECK(b.prefetched == 4 && b.prefetch_used == 4, "prefetched %g used %g", b.prefetched, b.prefetch_used);
        CHECK_CLOSE(b.stall_s, 0.5, 1e-12, 0, "prefetch stall");
        CHECK(b.bytes == 500, "bytes %g", b.bytes);
        // transfer 1.5 > window 1.0: every prefetch arrives 0.5 late; first token 1.5 + 0.5
        CacheStats c = run(ids, 4, 2, 1, 4, 1, CACHE_LRU, pred, 1, 1.5, 1.0);
        CHECK(c.late == 4 && c.misses == 1, "late %g misses %g", c.late, c.misses);
        CHECK_CLOSE(c.stall_s, 1.5 + 4 * 0.5, 1e-12, 0, "late prefetch stall");
        CHECK_CLOSE(c.compute_s, 8.0, 1e-12, 0, "compute");
        // a wrong prediction costs bandwidth and stalls the demand fetch behind it
        uint16_t wrong[8] = {3, 0, 3, 0, 3, 0, 3, 0};
        CacheStats d = run(ids, 4, 2, 1, 4, 1, CACHE_LRU, wrong, 1, 0.5, 1.0);
        CHECK(d.prefetch_used == 0 && d.misses == 5 && d.prefetched == 4, "wrong: used %g misses %g prefetched %g",
              d.prefetch_used, d.misses, d.prefetched);
    }
    test_end();

    test_begin("cache_prefetch_two_layers_ahead");
    {
        // M=3, K=1, E=4, C=1; layers 0 and 1 always use expert 0, layer 2 alternates 1, 2.
        // Transfer 1.5, layer 1.0: one layer ahead the prefetch is 0.5 late every token; two
        // layers ahead it has 2.0 of compute to hide in and is never late.
        uint16_t ids[12] = {0, 0, 1, 0, 0, 2, 0, 0, 1, 0, 0, 2};
        uint16_t p1[12] = {0, 1, 0, 0, 2, 0, 0, 1, 0, 0, 2, 0};  // row l predicts layer l+1
        uint16_t p2[12] = {1, 0, 0, 2, 0, 0, 1, 0, 0, 2, 0, 0};  // row l predicts layer l+2
        CacheStats a, b;
        MoeErr err;
        CHECK(cache_simulate(ids, 4, 3, 1, 4, 1, CACHE_LRU, p1, 1, 1, 100, 1.5, 1.0, &a, &err) == 0, "%s", err.msg);
        CHECK(cache_simulate(ids, 4, 3, 1, 4, 1, CACHE_LRU, p2, 1, 2, 100, 1.5, 1.0, &b, &err) == 0, "%s", err.msg);
        // ahead 1, by hand: token 0: L0 demand miss (arrives 1.5), L1's prefetch of 0 arrives 3.0 >
        // 2.5 (late), L2's prefetch arrives 4.5 > 4.0 (late); tokens 1-3: L1 hits, L2 late -> 5 late.
        // ahead 2: token 0: L0 miss, L2's prefetch goes out at 1.5 and arrives 3.0, L1 demand miss
        // waits for the link (3.0 -> 4.5); L2 (at 5.5) has it: hit; later tokens: 2.0 window > 1.5.
        CHECK(a.late == 5 && b.late == 0, "late: ahead 1 %g (5), ahead 2 %g (0)", a.late, b.late);
        CHECK(b.misses == 2 && b.prefetch_used == 4, "ahead 2: misses %g used %g", b.misses, b.prefetch_used);
        CHECK(b.stall_s < a.stall_s, "ahead 2 stall %g not below ahead 1 stall %g", b.stall_s, a.stall_s);
        CHECK(cache_simulate(ids, 4, 3, 1, 4, 1, CACHE_LRU, p2, 1, 3, 100, 1.5, 1.0, &b, &err) == -1, "ahead 3 of 3 layers accepted");
    }
    test_end();

    test_begin("cache_bad_arguments");
    {
        uint16_t s[2] = {0, 1};
        CacheStats st;
        MoeErr err;
        CHECK(cache_simulate(s, 1, 1, 2, 4, 1, CACHE_LRU, NULL, 0, 1, 1, 1, 1, &st, &err) == -1, "C < K accepted");
        CHECK(cache_simulate(s, 1, 1, 2, 4, 5, CACHE_LRU, NULL, 0, 1, 1, 1, 1, &st, &err) == -1, "C > E accepted");
    }
    test_end();

    test_begin("scenario_deepseek_moe_16b_sizes");
    {
        Scenario s;
        ScenarioSizes z;
        MoeErr err;
        scenario_default(&s, "nf4-8GB", "nf4", 8.0);
        CHECK(scenario_sizes(&s, &z, &err) == 0, "%s", err.msg);
        CHECK(z.expert_params == 3.0 * 2048 * 1408, "expert params %g", z.expert_params);
        CHECK_CLOSE(z.all_experts_bytes, 64.0 * 27 * 3 * 2048 * 1408 * 4.5 / 8, 1, 0, "NF4 expert bytes");
        CHECK(z.all_experts_bytes > 8e9 && z.all_experts_bytes < 9e9, "NF4 experts %.3g B", z.all_experts_bytes);
        CHECK(z.cache_per_layer >= 6 && z.cache_per_layer < 64, "NF4 8 GB: C = %d must be in [K, E)", z.cache_per_layer);
        printf("  nf4 on 8 GiB: expert %.2f MB, all experts %.2f GB, non-expert %.2f GB, C = %d per layer, layer %.3f ms, "
               "transfer %.3f ms\n",
               z.expert_bytes / 1e6, z.all_experts_bytes / 1e9, z.nonexpert_bytes / 1e9, z.cache_per_layer,
               z.layer_s * 1e3, z.xfer_s * 1e3);
        scenario_default(&s, "bf16-24GB", "bf16", 24.0);
        CHECK(scenario_sizes(&s, &z, &err) == 0, "%s", err.msg);
        CHECK_CLOSE(z.all_experts_bytes, 64.0 * 27 * 3 * 2048 * 1408 * 2, 1, 0, "bf16 expert bytes");
        CHECK(z.cache_per_layer >= 6 && z.cache_per_layer < 64, "bf16 24 GB: C = %d must be in [K, E)", z.cache_per_layer);
        printf("  bf16 on 24 GiB: expert %.2f MB, all experts %.2f GB, non-expert %.2f GB, C = %d per layer\n",
               z.expert_bytes / 1e6, z.all_experts_bytes / 1e9, z.nonexpert_bytes / 1e9, z.cache_per_layer);
        CHECK(scenario_set_format(&s, "q3_k", &err) == -1 && strstr(err.msg, "q3_k"), "unknown format accepted");
        scenario_default(&s, "tiny", "nf4", 1.0);
        CHECK(scenario_sizes(&s, &z, &err) == 0 && z.cache_per_layer == 0, "1 GiB: C %d", z.cache_per_layer);
    }
    test_end();
    return test_summary();
}
