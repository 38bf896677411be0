// Hugging Face config.json of the supported MoE model types, read with nothing hard-coded:
//   deepseek     (DeepSeek-MoE-16B; HF remote code modeling_deepseek.py)
//   qwen2_moe    (Qwen1.5-MoE-A2.7B; transformers modeling_qwen2_moe.py)
//   deepseek_v3  (DeepSeek-V3 layout: MLA, sigmoid gate + e_score_correction_bias, groups;
//                 also what our own trainer exports)
// A required field that is missing or of the wrong type, or an unsupported value, gives an
// error naming the file and the field. Optional fields take the transformers defaults.
#ifndef MOE_HFCONFIG_H
#define MOE_HFCONFIG_H

#include <stdint.h>

#include "../common/util.h"

typedef enum { PT_DEEPSEEK = 0, PT_QWEN2_MOE = 1, PT_DEEPSEEK_V3 = 2 } PtArch;
typedef enum { PT_SCORE_SOFTMAX = 0, PT_SCORE_SIGMOID = 1 } PtScore;

#define PT_MAX_LAYERS 1024

typedef struct {
    int arch;                    // PtArch
    char model_type[32];
    int vocab_size;              // V
    int hidden_size;             // C
    int n_layers;                // L
    int n_heads;                 // H
    int n_kv_heads;              // MHA / GQA (deepseek, qwen2_moe)
    int head_dim;                // deepseek, qwen2_moe
    int intermediate_size;       // dense MLP width
    int moe_intermediate_size;   // one routed expert's width
    int n_routed_experts;        // E
    int n_shared_experts;        // deepseek(_v3): shared MLP width = n_shared * moe_intermediate_size
    int shared_expert_intermediate_size;  // qwen2_moe: shared expert width (0: none)
    int top_k;                   // K
    int norm_topk_prob;
    float routed_scaling_factor; // 1 when absent
    int score_func;              // PtScore
    int n_group, topk_group;     // deepseek_v3 group-limited routing (1, 1: off)
    int attn_qkv_bias;           // q/k/v projections have biases (qwen2_moe)
    int attn_o_bias;             // o projection has a bias (deepseek attention_bias)
    // deepseek_v3 MLA
    int q_lora_rank;             // 0: plain q_proj
    int kv_lora_rank;
    int qk_nope_head_dim, qk_rope_head_dim, v_head_dim;
    float rope_theta;
    float rms_norm_eps;
    int tie_word_embeddings;
    int max_position_embeddings;
    int bos_token_id, eos_token_id;  // -1 when absent
    int is_moe[PT_MAX_LAYERS];   // per block: MoE FFN (1) or dense MLP (0)
    int n_moe_layers;
} PtConfig;

// Parse config.json text; `path` names the file in messages.
int pt_config_parse(PtConfig *c, const char *json, size_t n, const char *path, MoeErr *err);
// Read DIR/config.json.
int pt_config_load(PtConfig *c, const char *dir, MoeErr *err);
const char *pt_arch_name(int arch);
// Attention sizes
static inline int pt_q_head_dim(const PtConfig *c) {
    return c->arch == PT_DEEPSEEK_V3 ? c->qk_nope_head_dim + c->qk_rope_head_dim : c->head_dim;
}
static inline int pt_v_head_dim(const PtConfig *c) { return c->arch == PT_DEEPSEEK_V3 ? c->v_head_dim : c->head_dim; }
// width of the shared MLP (0: none)
static inline int pt_shared_width(const PtConfig *c) {
    return c->arch == PT_QWEN2_MOE ? c->shared_expert_intermediate_size : c->n_shared_experts * c->moe_intermediate_size;
}

#endif
