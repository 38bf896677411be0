// Expert-offloading simulation: a per-layer GPU cache of C experts, the rest in CPU memory,
// a single host-to-device copy engine (FIFO), decode at batch size 1.
//
// Sizes come from a model config + weight format + GPU memory (the scenario). Per token and
// MoE layer l, in order: the experts the token chose at l that are not resident are fetched on
// demand (the GPU waits for them: stall); experts still in flight from a prefetch are waited
// for (late prefetch); then layer l computes for layer_s seconds, and at the start of that
// compute the prefetcher (when given) enqueues its predicted experts of layer l+ahead (ahead = 1
// by default) behind any transfer in progress, so the compute of layers l..l+ahead-1 is the
// window that hides them.
#ifndef MOE_SPEC_CACHE_H
#define MOE_SPEC_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "../common/util.h"

// Model config + weight format + GPU: everything that decides the cache size and timings.
typedef struct {
    char name[64];
    // model (defaults: DeepSeek-MoE-16B, HF deepseek-ai/deepseek-moe-16b-base config.json)
    long hidden, moe_inter, dense_inter, vocab;
    int n_layers, n_dense_layers, n_experts, n_shared, top_k;
    // formats, bits per weight
    char format[16];      // expert/linear weight format: nf4, nf4-dq, int8, bf16, fp16, fp32
    double bits_linear;   // experts, attention, shared experts, dense FFN
    double bits_embed;    // embeddings, lm head, gates (bitsandbytes leaves them in bf16)
    // GPU
    double gpu_gib;       // total GPU memory
    double context_gib;   // CUDA context + allocator slack
    double act_gib;       // activations / workspace
    int kv_tokens;        // KV cache length reserved (plain MHA: 2 * layers * hidden values per token)
    double pcie_gbs;      // effective host-to-device bandwidth, GB/s
    double hbm_gbs;       // GPU memory bandwidth (decode is memory bound), GB/s
    double layer_ms;      // > 0: override the per-layer compute time
} Scenario;

typedef struct {
    double expert_params, expert_bytes, all_experts_bytes;
    double nonexpert_bytes, kv_bytes, reserve_bytes, free_bytes;
    int cache_experts;    // experts that fit in all (over all layers)
    int cache_per_layer;  // C per layer for the scenario's model
    double layer_s;       // compute time of one MoE layer at batch 1
    double xfer_s;        // time to move one expert over PCIe
} ScenarioSizes;

// Known formats: fills bits_linear / bits_embed. Returns -1 for an unknown name.
int scenario_set_format(Scenario *s, const char *format, MoeErr *err);
// DeepSeek-MoE-16B defaults with the given format and GPU memory.
void scenario_default(Scenario *s, const char *name, const char *format, double gpu_gib);
int scenario_sizes(const Scenario *s, ScenarioSizes *z, MoeErr *err);

enum { CACHE_LRU = 0, CACHE_BELADY = 1 };

typedef struct {
    double accesses;       // (token, layer, expert) uses
    double hits;           // resident and arrived
    double late;           // prefetched, still in flight when needed
    double misses;         // demand fetches
    double prefetched;     // prefetch transfers issued
    double prefetch_used;  // prefetched experts used before eviction
    double bytes;          // bytes moved host -> device
    double stall_s;        // GPU waiting on transfers
    double compute_s;      // layer compute time
    double tokens;
} CacheStats;

// Simulates one policy on tokens in decode order. ids: (n, M, K) chosen experts. pred: (n, M, P)
// experts of layer l+ahead predicted at layer l (rows l >= M-ahead unused), or NULL for no
// prefetch; P experts are prefetched per layer, issued when layer l starts computing, so that
// `ahead` layers of compute can hide them (ignored for Belady, which is demand-only optimal
// replacement). C: cache slots per layer (K <= C <= E).
int cache_simulate(const uint16_t *ids, size_t n, int M, int K, int E, int C, int policy, const uint16_t *pred,
                   int P, int ahead, double expert_bytes, double xfer_s, double layer_s, CacheStats *out,
                   MoeErr *err);

#endif
