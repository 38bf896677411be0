// Autoregressive generation with DeepSeek-V3's absorbed MLA KV cache (CPU reference).
//
// The cache holds, per token and per layer, ONLY the normalised latent c_kv (kv_lora_rank
// floats, after kv_norm) and the RoPE'd shared key k_pe (qk_rope_dim floats). A decode step
// never materialises per-head keys or values:
//   score_h(t, s) = scale * ( (q_nope_h W_UK_h) . c_kv_s  +  q_pe_h . k_pe_s )
//   o_h           = W_UV_h ( sum_s p_h(t, s) c_kv_s )
// where W_UK_h (nope, kvr) and W_UV_h (v, kvr) are the per-head row blocks of wkv_b and
// scale = (qk_nope_dim + qk_rope_dim)^-1/2. Then wo, the FFN (dense SwiGLU, or the MoE with
// moe_route_token and the balancing bias of the layer when the mode uses it), the final norm
// and the head give the logits (V). The MTP block is not used for generation.
//
// Routed experts run dropless (the capacity factor is a training option; inference never
// drops a token), so with capacity_factor > 0 the logits differ from model_forward's
// wherever training would have dropped an assignment.
//
// Usage:
//   Generator g;
//   gen_init(&g, &model, max_len, &err);          // cache for up to max_len positions
//   const float *logits;
//   gen_prefill(&g, prompt, n_prompt, &logits, &err);
//   int tok = gen_sample(&g, logits, &opts, &rng);
//   gen_step(&g, tok, &logits, &err); ...
//   gen_free(&g);
#ifndef MOE_GENERATE_H
#define MOE_GENERATE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "model.h"

// ---------------------------------------------------------------------------------------
// KV cache and decoder state

typedef struct {
    const Model *m;       // parameters (read only) and balancing biases
    int max_len;          // positions the cache can hold (<= cfg.max_seq_len)
    int len;              // positions filled so far (= position of the next token)
    // the MLA cache: ONLY the latent and the shared rope key
    float *ckv;           // (L, max_len, kvr) kv_norm(c_kv) of every cached token
    float *kpe;           // (L, max_len, rope) RoPE'd k_pe of every cached token
    // one-token scratch
    float *x, *ln;        // (C) residual stream, normed input
    float *qa, *q;        // (qr) (H*dqk)
    float *kva;           // (kvr + rope)
    float *qabs;          // (H, kvr) q_nope absorbed through W_UK
    float *att;           // (H, max_len) attention probabilities
    float *ctx;           // (H, kvr) attention-weighted latent
    float *o;             // (H*v) per-head outputs after W_UV
    float *y;             // (C) block output scratch
    float *h1, *h3;       // (max(I, S*Ie, Ie))
    float *gate_logits, *scores;  // (E)
    int *sel;             // (K)
    float *wts;           // (K)
    float *logits;        // (V)
    // sampling scratch
    float *probs;         // (V)
    int *idx;             // (V)
} Generator;

// Allocate the cache for up to max_len positions (1 <= max_len <= cfg.max_seq_len).
int gen_init(Generator *g, const Model *m, int max_len, MoeErr *err);
void gen_free(Generator *g);
// Forget the cached tokens (start a new sequence); keeps the allocation.
void gen_reset(Generator *g);
// Feed one token at position g->len: appends its c_kv and k_pe to the cache and returns
// the logits (V) predicting the next token in *logits (owned by g, valid until the next
// step). -1 with err when the token is outside the vocabulary, the cache is full, or a logit
// is NaN/inf (diverged or corrupt weights; the token stays in the cache).
int gen_step(Generator *g, int token, const float **logits, MoeErr *err);
// Feed n >= 1 tokens one by one; *logits (may be NULL) are those after the last one.
int gen_prefill(Generator *g, const int *tokens, int n, const float **logits, MoeErr *err);

// ---------------------------------------------------------------------------------------
// Sampling

typedef struct {
    float temperature;  // 0 = greedy (argmax, lowest id on ties)
    int top_k;          // keep the k most likely tokens (0 = all)
    float top_p;        // then keep the smallest set of most likely tokens with mass >= top_p (1 = all)
} SampleOpts;

// The distribution that sampling draws from: probs (V) = softmax(logits / temperature)
// restricted to the top-k, then to the top-p nucleus, renormalised; zero elsewhere.
// idx (V) is scratch; on return idx[0..kept) are the kept ids, most likely first (ties: lower
// id first). Returns the number kept. temperature 0 keeps the argmax only. NaN logits rank
// last; when no logit is finite the top-ranked token gets all the mass.
int sample_distribution(const float *logits, int V, const SampleOpts *o, float *probs, int *idx);
// Draw a token (deterministic for a given rng state); advances *rng by one draw when
// temperature > 0, not at all when greedy.
int sample_token(const float *logits, int V, const SampleOpts *o, uint64_t *rng, float *probs, int *idx);
// The same with the generator's scratch.
int gen_sample(Generator *g, const float *logits, const SampleOpts *o, uint64_t *rng);

// Prefill the prompt (n_prompt >= 1), then sample n_new tokens into out (n_new). on_token
// (may be NULL) is called after each new token; a non-zero return stops early. Returns the
// number of tokens generated (<= n_new; fewer when the cache fills up) or -1 with err.
int gen_generate(Generator *g, const int *prompt, int n_prompt, int n_new, const SampleOpts *o, uint64_t seed,
                 int *out, int (*on_token)(int token, void *ctx), void *ctx, MoeErr *err);

// ---------------------------------------------------------------------------------------
// Cache size: MLA (c_kv + k_pe) against plain multi-head attention, which would cache per
// token and layer the keys of every head (H * (qk_nope + qk_rope)) and the values
// (H * v_head_dim).
typedef struct {
    int n_layers;
    size_t mla_floats_per_token_layer;  // kv_lora_rank + qk_rope_dim
    size_t mha_floats_per_token_layer;  // H * (qk_nope + qk_rope) + H * v_head_dim
    size_t mla_bytes_per_token;         // fp32, all layers
    size_t mha_bytes_per_token;
    double ratio;                       // mha / mla
} GenCacheReport;

void generate_cache_report(const ModelConfig *c, GenCacheReport *r);
// One line: "KV cache per token: MLA ... vs MHA ... (x smaller); for N tokens: ..."
void generate_cache_report_print(const GenCacheReport *r, int n_tokens, FILE *fp);

#endif
