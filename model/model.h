// The model: parameter layout (one allocation, a struct of named pointers and a table of
// named tensors), activations, forward, backward, AdamW, loss-free bias update, routing
// statistics. CPU reference implementation in model/cpu/model.c.
#ifndef MOE_MODEL_H
#define MOE_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

// ---------------------------------------------------------------------------------------
// Parameters

typedef struct {
    int is_moe;
    float *attn_norm;                          // (C)
    float *wq;                                 // (H*dqk, C)        when q_lora_rank == 0
    float *wq_a, *q_norm, *wq_b;               // (qr, C) (qr) (H*dqk, qr) when q_lora_rank > 0
    float *wkv_a;                              // (kvr + rope, C)
    float *kv_norm;                            // (kvr)
    float *wkv_b;                              // (H*(nope + v), kvr)
    float *wo;                                 // (C, H*v)
    float *ffn_norm;                           // (C)
    float *w1, *w2, *w3;                       // dense: (I, C) (C, I) (I, C)
    float *gate;                               // (E, C)
    float *ew1, *ew2, *ew3;                    // routed: (E, Ie, C) (E, C, Ie) (E, Ie, C)
    float *sw1, *sw2, *sw3;                    // shared: (S*Ie, C) (C, S*Ie) (S*Ie, C)
} LayerParams;

typedef struct {
    float *wte;          // (V, C)
    LayerParams *layers; // (n_layers + mtp_depth); layers[n_layers] is the MTP block
    float *final_norm;   // (C)
    float *lm_head;      // (V, C)
    float *mtp_enorm, *mtp_hnorm;  // (C) (C)
    float *mtp_proj;               // (C, 2C): input [enorm(emb(t_{i+1})); hnorm(h_i)]
    float *mtp_norm;               // (C) final norm of the MTP module
} ParamPtrs;

#define TENSOR_NAME_LEN 64
typedef struct {
    char name[TENSOR_NAME_LEN];  // DeepSeek-V3 inference names, e.g. "layers.1.ffn.experts.w1"
    size_t offset;               // in floats, into the parameter buffer
    size_t numel;
    int ndim;
    int shape[3];
    int decay;                   // 1: AdamW weight decay applies (matrices), 0: norms
} TensorInfo;

// ---------------------------------------------------------------------------------------
// Activations of one block (what backward needs)

typedef struct {
    float *x_in;                    // (N, C) residual stream entering the block
    float *ln1, *ln1_rstd;          // (N, C) (N)
    float *qa, *qan, *qa_rstd;      // (N, qr) (N, qr) (N)      q_lora only
    float *q;                       // (N, H*dqk) query projection (before RoPE)
    float *kva;                     // (N, kvr + rope): [c_kv, k_pe]
    float *ckvn, *ckv_rstd;         // (N, kvr) (N)
    float *kv;                      // (N, H*(nope + v))
    float *qf, *kf, *vf;            // (N, H, dqk) (N, H, dqk) (N, H, v) attention inputs
    float *att;                     // (B, H, T, T)
    float *atto;                    // (N, H*v)
    float *x_mid;                   // (N, C) residual after attention
    float *ln2, *ln2_rstd;          // (N, C) (N)
    float *h1, *h3, *g;             // dense (N, I) each
    // MoE
    float *logits, *scores;         // (N, E)
    int *sel;                       // (N, K) chosen experts
    float *wts;                     // (N, K) routing weights (after renormalisation and route_scale)
    int *row_of;                    // (N, K) row in the expert-sorted buffers, -1 when dropped
    int *perm;                      // (N*K) assignment (n*K + k) of each sorted row
    int *expert_off;                // (E + 1) first row of each expert
    float *xe;                      // (N*K, C) gathered expert inputs
    float *eh1, *eh3, *eg;          // (N*K, Ie)
    float *ey;                      // (N*K, C) expert outputs (before weighting)
    float *sh1, *sh3, *sg;          // (N, S*Ie) shared expert
    float *aux_f;                   // (B, E) f_i per sequence (seqaux) or (E) for the batch (aux)
    float *ffn_y;                   // (N, C) FFN output
} BlockActs;

// Routing statistics of one MoE layer, accumulated over the micro-batches of a step.
typedef struct {
    int layer;            // index of the block (n_layers for the MTP block)
    double *load;         // (E) assignments per expert, all K choices, before dropping
    double entropy_sum;   // sum over tokens of the entropy of normalised scores
    double top1_sum;      // sum over tokens of the largest routing weight
    double dropped;       // dropped assignments
    double tokens;        // tokens seen
} RoutingStats;

typedef struct {
    ModelConfig cfg;
    int n_blocks;          // n_layers + mtp_depth
    // parameters and their gradients / AdamW moments: four buffers of num_params floats
    size_t num_params;
    float *params, *grads, *m, *v;
    ParamPtrs p, g;
    LayerParams lp[2][64];  // storage behind p.layers / g.layers
    TensorInfo *tensors;
    int n_tensors;
    // loss-free balancing bias: (n_blocks, E), rows of dense blocks unused (zero)
    float *bias;
    // activations, sized for B_max x T_max
    int B_max, T_max;
    float *act_mem;
    size_t act_floats;
    BlockActs acts[64];
    float *x_final;        // (N, C) output of the last main block
    float *lnf, *lnf_rstd; // (N, C) (N)
    float *logits;         // (N, V)
    float *lse;            // (N)
    int *targets;          // (N) copy of the last targets
    int *inputs;           // (N) copy of the last inputs
    int *pos;              // (N) positions
    float *rope_cos, *rope_sin;  // (T_max, qk_rope_dim/2) RoPE tables
    // MTP activations
    float *mtp_emb, *mtp_en, *mtp_en_rstd, *mtp_hn, *mtp_hn_rstd, *mtp_cat, *mtp_x_out, *mtp_ln, *mtp_ln_rstd;
    float *mtp_logits, *mtp_lse;
    int *mtp_targets, *mtp_emb_tok;
    // backward scratch
    float *scratch;
    size_t scratch_floats;
    // results of the last forward
    int B, T;
    float loss;            // total objective
    float ce_loss;         // main next-token cross-entropy
    float mtp_loss;        // MTP cross-entropy (0 when off)
    float aux_loss;        // sum of the balancing losses
    int n_valid, mtp_n_valid;
    // routing statistics of MoE blocks (accumulated until routing_stats_reset)
    int n_moe;             // number of MoE blocks (including an MTP MoE block)
    int moe_block[64];     // block index of each
    RoutingStats stats[64];
    double stats_mem_dummy;
    // loss scale used in backward (1 for the CPU reference)
    float grad_scale;
} Model;

// Tensor table and total size for a config (tensors may be NULL to count).
size_t model_layout(const ModelConfig *cfg, TensorInfo *tensors, int *n_tensors);
// Point the named pointers of `out` into `base` following the layout.
void model_point(const ModelConfig *cfg, float *base, ParamPtrs *out, LayerParams *layer_storage);

// Allocate parameters, gradients, AdamW state and activations for batches up to B_max x T_max,
// initialise weights from seed. Returns -1 with err on failure (bad config, out of memory).
int model_init(Model *m, const ModelConfig *cfg, int B_max, int T_max, uint64_t seed, MoeErr *err);
void model_free(Model *m);
// Bytes the model will allocate for a config and batch (parameters, grads, AdamW, activations).
size_t model_memory_bytes(const ModelConfig *cfg, int B_max, int T_max);

// Forward. inputs (B, T); targets (B, T) or NULL (then only logits are computed); -1 = ignored.
// With collect_stats, routing statistics are accumulated into m->stats. Returns the loss.
float model_forward(Model *m, const int *inputs, const int *targets, int B, int T, int collect_stats);
// Backward of the last forward (which must have had targets). Gradients accumulate into m->grads.
void model_backward(Model *m);
void model_zero_grad(Model *m);
// Global L2 norm of the gradients (deterministic summation order).
float model_grad_norm(const Model *m);
// AdamW step (decoupled weight decay on `decay` tensors only); t = step number from 1.
void model_adamw(Model *m, float lr, float beta1, float beta2, float eps, float weight_decay, float grad_scale, int t);
// Loss-free balancing: b_i += gamma * sign(mean_load - load_i) per MoE block, from the
// loads accumulated since the last routing_stats_reset. No-op unless the mode uses the bias.
void model_update_bias(Model *m);
void routing_stats_reset(Model *m);
// Count of FLOPs of forward + backward per token for a sequence length T (active params).
double model_flops_per_token(const ModelConfig *cfg, int T);

#endif
