// Pretrained Hugging Face MoE models on the CPU: memory plan, streaming 4-bit load, and the
// prefill forward pass (whole sequences, batched as a ragged list of sequences) with the
// routing record that `collect` writes to traces.
//
// Semantics (transformers / the models' own modeling files):
//  - deepseek:    Llama-style multi-head attention (GQA capable), RoPE rotate_half (the two
//                 halves of each head), first_k_dense_replace dense layers then MoE every
//                 moe_layer_freq; gate softmax over all experts then top-K; when
//                 norm_topk_prob (and K > 1) the K weights are renormalised (sum + 1e-20);
//                 y = sum_k w_k expert_k(x) + shared(x), shared = one SwiGLU MLP of width
//                 n_shared_experts * moe_intermediate_size.
//  - qwen2_moe:   the same attention with q/k/v biases (qkv_bias); MoE layers where
//                 (l + 1) % decoder_sparse_step == 0 and l not in mlp_only_layers; softmax
//                 top-K (renormalised when norm_topk_prob); shared expert scaled by
//                 sigmoid(shared_expert_gate(x)).
//  - deepseek_v3: MLA (q_lora or plain q_proj, kv_a_proj_with_mqa -> [c_kv, k_pe],
//                 kv_a_layernorm, kv_b_proj -> per head [k_nope, v]); RoPE on interleaved
//                 pairs of q_pe / k_pe only; scale (nope + rope)^-1/2; sigmoid gate,
//                 e_score_correction_bias added for selection only, group-limited routing
//                 (group score = sum of its top-2 biased scores, or its max score when the
//                 checkpoint has no correction bias as in DeepSeek-V3's inference code; the
//                 best topk_group groups are kept),
//                 weights = unbiased scores renormalised when norm_topk_prob, times
//                 routed_scaling_factor.
//  Top-K ties go to the lower expert index.
//
// Gate reuse (the speculator's baseline), as in speculate/trace.h: for MoE layer m whose next
// MoE layer is m', record the top-K that layer m' routing (its gate, bias and group limits)
// chooses for u = RMSNorm(h) * post_attention_layernorm_weight(m'), where h is the residual
// stream ENTERING layer m's MoE FFN (after layer m's attention; "mid", the default), or the
// residual stream LEAVING layer m ("out"). The choice is made before layer m's experts run,
// so a runtime could prefetch layer m' experts one layer ahead.
#ifndef MOE_PTMODEL_H
#define MOE_PTMODEL_H

#include <stdint.h>
#include <stdio.h>

#include "hfconfig.h"
#include "nf4.h"
#include "safetensors.h"

#define PT_MAX_K 64         // top-K limit
#define PT_MAX_EXPERTS 4096 // routed experts limit

typedef enum { PT_W_F32 = 0, PT_W_BF16 = 1, PT_W_NF4 = 2 } PtWKind;

typedef struct {
    int kind;                    // PtWKind
    int64_t rows, cols;          // (out, in)
    float *f32;                  // (rows, cols)
    uint16_t *bf16;              // (rows, cols)
    Nf4Tensor nf4;
    float *bias;                 // (rows) or NULL
} PtLinear;

typedef struct {
    int is_moe;
    float *attn_norm, *ffn_norm;          // (C)
    PtLinear q, k, v, o;                  // MHA (q also for MLA without q_lora)
    PtLinear q_a, q_b, kv_a, kv_b;        // MLA
    float *q_a_norm, *kv_a_norm;          // (q_lora_rank) (kv_lora_rank)
    PtLinear mlp_gate, mlp_up, mlp_down;  // dense SwiGLU
    float *router;                        // (E, C)
    float *router_bias;                   // (E) or NULL (deepseek_v3 e_score_correction_bias)
    PtLinear *experts;                    // (E * 3): gate, up, down of expert e at 3e..3e+2
    PtLinear sh_gate, sh_up, sh_down;     // shared MLP (rows 0 when none)
    float *sh_expert_gate;                // (C) qwen2_moe
} PtLayer;

typedef enum { PT_QUANT_NONE = 0, PT_QUANT_NF4 = 1 } PtQuant;

enum { PT_CAT_EMBED = 0, PT_CAT_HEAD, PT_CAT_ATTN, PT_CAT_DENSE, PT_CAT_EXPERTS, PT_CAT_SHARED, PT_CAT_ROUTER,
       PT_CAT_NORM, PT_N_CAT };
extern const char *const pt_cat_names[PT_N_CAT];

typedef struct {
    int64_t params[PT_N_CAT];
    int64_t bytes[PT_N_CAT];
    int64_t total_params, total_bytes;
} PtPlan;

typedef struct {
    int quant;          // PtQuant: NF4 for attention / dense / expert weights, or fp32 everything
    int double_quant;   // NF4 with double-quantized absmax (bitsandbytes compress_statistics)
    int verbose;        // progress lines on stderr while loading
} PtLoadOptions;

typedef struct {
    PtConfig cfg;
    PtLoadOptions opt;
    PtLinear embed;     // (V, C) bf16 (NF4 mode with a bf16 checkpoint) or fp32
    PtLinear lm_head;   // (V, C); shares embed's storage when tied
    float *final_norm;  // (C)
    PtLayer *layers;
    PtPlan loaded;      // bytes actually held, per category
    int n_bnb;          // tensors read already quantized (bitsandbytes saved form)
    float rope_inv_freq[512];
} PtModel;

// Memory plan from the config alone: `quant` as in PtLoadOptions; emb_bytes = 2 (bf16
// checkpoint kept as is in NF4 mode) or 4.
void pt_plan(const PtConfig *c, int quant, int double_quant, int emb_bytes, PtPlan *p);
void pt_plan_print(const PtConfig *c, const PtPlan *p, const char *title, FILE *fp);
// Activation memory of one forward over n_tok tokens (longest sequence t_max), bytes.
int64_t pt_work_bytes(const PtConfig *c, int64_t n_tok, int t_max);
// bytes per element of the checkpoint's embeddings, from config.json "torch_dtype" (2 unless float32)
int pt_config_emb_bytes(const char *dir);

int pt_model_load(PtModel *m, const char *dir, const PtLoadOptions *o, MoeErr *err);
void pt_model_free(PtModel *m);

// Routing record of one forward: per MoE layer m (in block order), token i, choice k.
typedef struct {
    int n_moe, K, E;
    int64_t n_tok;
    int moe_block[PT_MAX_LAYERS];  // block index of MoE layer m
    int32_t *ids;      // (n_moe, n_tok, K) chosen experts, in the order the router ranks them
    float *w;          // (n_moe, n_tok, K) their weights (after renormalisation and scaling)
    int32_t *reuse;    // (n_moe, n_tok, K) gate-reuse prediction for the next MoE layer; -1 for the last
    float *gate_logits;  // (n_moe, n_tok, E) raw router logits, when keep_logits
} PtRouting;

enum { PT_REUSE_MID = 0, PT_REUSE_OUT = 1 };

int pt_routing_alloc(PtRouting *r, const PtModel *m, int64_t n_tok, int keep_logits, MoeErr *err);
void pt_routing_free(PtRouting *r);

// Forward over n_seq sequences stored back to back: tokens[seq_start[s] .. seq_start[s+1]),
// positions from 0 in each. logits (n_tok, V) or NULL; routing or NULL. 0 or -1 (bad token
// id, out of memory).
int pt_forward(PtModel *m, const int32_t *tokens, const int64_t *seq_start, int n_seq, float *logits,
               PtRouting *routing, int reuse_mode, MoeErr *err);

// Routing of one token's router logits by layer l's rule (exposed for tests and the
// collector's checks): ids (K) and weights (K).
void pt_route(const PtModel *m, int l, const float *logits, int32_t *ids, float *w);

// y (n, rows) = x (n, cols) W^T + b
void pt_linear(const PtLinear *W, const float *x, int64_t n, float *y);

#endif
