// Model configuration: names as in DESIGN.md. Shared by the CPU reference, CUDA backend,
// checkpoints, export and the pretrained deepseek_v3 path.
#ifndef MOE_CONFIG_H
#define MOE_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "../common/util.h"

typedef enum { SCORE_SIGMOID = 0, SCORE_SOFTMAX = 1 } ScoreFunc;

// Balancing modes (ablation option)
typedef enum {
    BALANCE_NONE = 0,
    BALANCE_BIAS = 1,         // loss-free: b_i += gamma * sign(mean_load - load_i) after each step
    BALANCE_SEQAUX = 2,       // DeepSeek-V3 sequence-wise auxiliary loss alpha * sum_i f_i P_i
    BALANCE_BIAS_SEQAUX = 3,  // both
    BALANCE_AUX = 4,          // classic batch auxiliary loss (Switch/GShard style, over the batch)
} BalanceMode;

typedef struct {
    // shapes (changing any of these changes a tensor's shape)
    int vocab_size;       // V
    int dim;              // C
    int n_layers;         // L
    int n_dense_layers;   // first layers with a dense SwiGLU FFN
    int n_heads;          // H
    int q_lora_rank;      // 0 = plain wq
    int kv_lora_rank;
    int qk_nope_dim;
    int qk_rope_dim;
    int v_head_dim;
    int inter_dim;        // dense FFN width
    int moe_inter_dim;    // width of one expert
    int n_routed_experts; // E
    int n_shared_experts; // shared MLP width = n_shared_experts * moe_inter_dim (0 = none)
    int mtp_depth;        // 0 or 1
    int max_seq_len;      // T max (RoPE tables, checkpoints)
    // routing (no shape change)
    int top_k;            // K
    int n_expert_groups;
    int n_limited_groups;
    float route_scale;
    int score_func;       // ScoreFunc
    int balance;          // BalanceMode
    float bias_update_speed;  // gamma
    float aux_alpha;
    float capacity_factor;    // 0 = dropless
    float mtp_lambda;
    float rope_theta;
    float norm_eps;
} ModelConfig;

// A small default CPU config that learns visibly in minutes on 2 cores.
void config_default(ModelConfig *c);
// A tiny config for tests (every feature on: q_lora, shared experts, groups).
void config_tiny(ModelConfig *c);
// Validate every field; on failure fill err with a message naming the field.
int config_validate(const ModelConfig *c, MoeErr *err);
// Print as one line of key=value pairs.
void config_print(const ModelConfig *c, FILE *fp);
// Write as a JSON object (no trailing newline) into buf; returns bytes written.
int config_to_json(const ModelConfig *c, char *buf, size_t n);

const char *balance_name(int b);
int balance_from_name(const char *s);  // -1 when unknown
const char *score_func_name(int s);
int score_func_from_name(const char *s);  // -1 when unknown

// derived sizes
static inline int cfg_qk_head_dim(const ModelConfig *c) { return c->qk_nope_dim + c->qk_rope_dim; }
static inline int cfg_n_moe_layers(const ModelConfig *c) { return c->n_layers - c->n_dense_layers; }
static inline int cfg_is_moe_layer(const ModelConfig *c, int l) { return l >= c->n_dense_layers; }
static inline int cfg_uses_bias(const ModelConfig *c) {
    return c->balance == BALANCE_BIAS || c->balance == BALANCE_BIAS_SEQAUX;
}

#endif
