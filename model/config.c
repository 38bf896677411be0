#include "config.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

void config_default(ModelConfig *c) {
    memset(c, 0, sizeof(*c));
    c->vocab_size = 8192;
    c->dim = 256;
    c->n_layers = 4;
    c->n_dense_layers = 1;
    c->n_heads = 4;
    c->q_lora_rank = 0;
    c->kv_lora_rank = 128;
    c->qk_nope_dim = 64;
    c->qk_rope_dim = 32;
    c->v_head_dim = 64;
    c->inter_dim = 768;
    c->moe_inter_dim = 256;
    c->n_routed_experts = 8;
    c->n_shared_experts = 1;
    c->top_k = 2;
    c->n_expert_groups = 1;
    c->n_limited_groups = 1;
    c->route_scale = 1.0f;
    c->score_func = SCORE_SIGMOID;
    c->balance = BALANCE_BIAS;
    c->bias_update_speed = 1e-3f;
    c->aux_alpha = 1e-4f;
    c->capacity_factor = 0.0f;
    c->mtp_depth = 0;
    c->mtp_lambda = 0.3f;
    c->max_seq_len = 256;
    c->rope_theta = 10000.0f;
    c->norm_eps = 1e-6f;
}

void config_tiny(ModelConfig *c) {
    config_default(c);
    c->vocab_size = 37;
    c->dim = 16;
    c->n_layers = 3;
    c->n_dense_layers = 1;
    c->n_heads = 2;
    c->q_lora_rank = 12;
    c->kv_lora_rank = 10;
    c->qk_nope_dim = 6;
    c->qk_rope_dim = 4;
    c->v_head_dim = 5;
    c->inter_dim = 24;
    c->moe_inter_dim = 7;
    c->n_routed_experts = 6;
    c->n_shared_experts = 1;
    c->top_k = 2;
    c->n_expert_groups = 3;
    c->n_limited_groups = 2;
    c->route_scale = 1.5f;
    c->max_seq_len = 16;
}

const char *balance_name(int b) {
    switch (b) {
        case BALANCE_NONE: return "none";
        case BALANCE_BIAS: return "bias";
        case BALANCE_SEQAUX: return "seqaux";
        case BALANCE_BIAS_SEQAUX: return "bias+seqaux";
        case BALANCE_AUX: return "aux";
    }
    return "?";
}
int balance_from_name(const char *s) {
    for (int b = 0; b <= BALANCE_AUX; b++)
        if (strcmp(s, balance_name(b)) == 0) return b;
    return -1;
}
const char *score_func_name(int s) { return s == SCORE_SOFTMAX ? "softmax" : s == SCORE_SIGMOID ? "sigmoid" : "?"; }
int score_func_from_name(const char *s) {
    if (strcmp(s, "sigmoid") == 0) return SCORE_SIGMOID;
    if (strcmp(s, "softmax") == 0) return SCORE_SOFTMAX;
    return -1;
}

#define POS(field)                                                                                 \
    if (c->field <= 0) return moe_err_set(err, "config: " #field " must be > 0 (got %d)", c->field)
#define NONNEG(field)                                                                              \
    if (c->field < 0) return moe_err_set(err, "config: " #field " must be >= 0 (got %d)", c->field)

int config_validate(const ModelConfig *c, MoeErr *err) {
    POS(vocab_size);
    POS(dim);
    POS(n_layers);
    if (c->n_layers > 62) return moe_err_set(err, "config: n_layers (%d) too large (max 62)", c->n_layers);
    NONNEG(n_dense_layers);
    POS(n_heads);
    NONNEG(q_lora_rank);
    POS(kv_lora_rank);
    POS(qk_nope_dim);
    POS(qk_rope_dim);
    POS(v_head_dim);
    POS(max_seq_len);
    if (c->n_dense_layers > c->n_layers)
        return moe_err_set(err, "config: n_dense_layers (%d) > n_layers (%d)", c->n_dense_layers, c->n_layers);
    if (c->qk_rope_dim % 2 != 0)
        return moe_err_set(err, "config: qk_rope_dim must be even for RoPE pairs (got %d)", c->qk_rope_dim);
    if (c->n_dense_layers > 0) POS(inter_dim);
    int has_moe = c->n_layers > c->n_dense_layers;
    if (c->mtp_depth < 0 || c->mtp_depth > 1)
        return moe_err_set(err, "config: mtp_depth must be 0 or 1 (got %d)", c->mtp_depth);
    if (has_moe) {
        POS(moe_inter_dim);
        POS(n_routed_experts);
        NONNEG(n_shared_experts);
        POS(top_k);
        POS(n_expert_groups);
        POS(n_limited_groups);
        if (c->top_k > c->n_routed_experts)
            return moe_err_set(err, "config: top_k (%d) > n_routed_experts (%d)", c->top_k, c->n_routed_experts);
        if (c->n_routed_experts % c->n_expert_groups != 0)
            return moe_err_set(err, "config: n_routed_experts (%d) is not divisible by n_expert_groups (%d)",
                               c->n_routed_experts, c->n_expert_groups);
        if (c->n_limited_groups > c->n_expert_groups)
            return moe_err_set(err, "config: n_limited_groups (%d) > n_expert_groups (%d)", c->n_limited_groups,
                               c->n_expert_groups);
        if (c->n_expert_groups > 1) {
            int per_group = c->n_routed_experts / c->n_expert_groups;
            if (per_group < 2)
                return moe_err_set(err, "config: n_expert_groups (%d) leaves fewer than 2 experts per group",
                                   c->n_expert_groups);
            if (c->top_k > c->n_limited_groups * per_group)
                return moe_err_set(err, "config: top_k (%d) > experts in the %d limited groups (%d)", c->top_k,
                                   c->n_limited_groups, c->n_limited_groups * per_group);
        }
        if (c->n_routed_experts > 1024)
            return moe_err_set(err, "config: n_routed_experts (%d) too large (max 1024)", c->n_routed_experts);
        if (c->n_expert_groups > 256)
            return moe_err_set(err, "config: n_expert_groups (%d) too large (max 256)", c->n_expert_groups);
    }
    if (c->score_func != SCORE_SIGMOID && c->score_func != SCORE_SOFTMAX)
        return moe_err_set(err, "config: score_func must be sigmoid or softmax");
    if (c->balance < BALANCE_NONE || c->balance > BALANCE_AUX)
        return moe_err_set(err, "config: balance must be none, bias, seqaux, bias+seqaux or aux");
    if (!(c->route_scale > 0.0f) || !isfinite(c->route_scale))
        return moe_err_set(err, "config: route_scale must be > 0 (got %g)", c->route_scale);
    if (!(c->bias_update_speed >= 0.0f) || !isfinite(c->bias_update_speed))
        return moe_err_set(err, "config: bias_update_speed must be >= 0 (got %g)", c->bias_update_speed);
    if (!(c->aux_alpha >= 0.0f) || !isfinite(c->aux_alpha))
        return moe_err_set(err, "config: aux_alpha must be >= 0 (got %g)", c->aux_alpha);
    if (!(c->capacity_factor >= 0.0f) || !isfinite(c->capacity_factor))
        return moe_err_set(err, "config: capacity_factor must be >= 0, 0 = dropless (got %g)", c->capacity_factor);
    if (!(c->mtp_lambda >= 0.0f) || !isfinite(c->mtp_lambda))
        return moe_err_set(err, "config: mtp_lambda must be >= 0 (got %g)", c->mtp_lambda);
    if (!(c->rope_theta > 0.0f) || !isfinite(c->rope_theta))
        return moe_err_set(err, "config: rope_theta must be > 0 (got %g)", c->rope_theta);
    if (!(c->norm_eps > 0.0f) || !isfinite(c->norm_eps))
        return moe_err_set(err, "config: norm_eps must be > 0 (got %g)", c->norm_eps);
    // sizes that would overflow our int indexing: every tensor below 2^31 elements
    double dqk = (double)c->qk_nope_dim + c->qk_rope_dim, C = c->dim, H = c->n_heads;
    struct {
        const char *what;
        double n;
    } t[] = {{"vocab_size*dim", (double)c->vocab_size * C},
             {"n_routed_experts*moe_inter_dim*dim", (double)c->n_routed_experts * c->moe_inter_dim * C},
             {"n_shared_experts*moe_inter_dim*dim", (double)c->n_shared_experts * c->moe_inter_dim * C},
             {"inter_dim*dim", (double)c->inter_dim * C},
             {"n_heads*(qk_nope_dim+qk_rope_dim)*dim", H * dqk * C},
             {"n_heads*(qk_nope_dim+qk_rope_dim)*q_lora_rank", H * dqk * c->q_lora_rank},
             {"q_lora_rank*dim", (double)c->q_lora_rank * C},
             {"(kv_lora_rank+qk_rope_dim)*dim", ((double)c->kv_lora_rank + c->qk_rope_dim) * C},
             {"n_heads*(qk_nope_dim+v_head_dim)*kv_lora_rank",
              H * ((double)c->qk_nope_dim + c->v_head_dim) * c->kv_lora_rank},
             {"dim*n_heads*v_head_dim", C * H * c->v_head_dim}};
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (t[i].n > 2147483647.0)
            return moe_err_set(err, "config: the tensor of size %s has more than 2^31 elements (%.3g)", t[i].what, t[i].n);
    return 0;
}

int config_to_json(const ModelConfig *c, char *buf, size_t n) {
    return snprintf(buf, n,
                    "{\"vocab_size\": %d, \"dim\": %d, \"n_layers\": %d, \"n_dense_layers\": %d, \"n_heads\": %d, "
                    "\"q_lora_rank\": %d, \"kv_lora_rank\": %d, \"qk_nope_dim\": %d, \"qk_rope_dim\": %d, "
                    "\"v_head_dim\": %d, \"inter_dim\": %d, \"moe_inter_dim\": %d, \"n_routed_experts\": %d, "
                    "\"n_shared_experts\": %d, \"top_k\": %d, \"n_expert_groups\": %d, \"n_limited_groups\": %d, "
                    "\"route_scale\": %g, \"score_func\": \"%s\", \"balance\": \"%s\", \"bias_update_speed\": %g, "
                    "\"aux_alpha\": %g, \"capacity_factor\": %g, \"mtp_depth\": %d, \"mtp_lambda\": %g, "
                    "\"rope_theta\": %g, \"max_seq_len\": %d, \"norm_eps\": %g}",
                    c->vocab_size, c->dim, c->n_layers, c->n_dense_layers, c->n_heads, c->q_lora_rank,
                    c->kv_lora_rank, c->qk_nope_dim, c->qk_rope_dim, c->v_head_dim, c->inter_dim, c->moe_inter_dim,
                    c->n_routed_experts, c->n_shared_experts, c->top_k, c->n_expert_groups, c->n_limited_groups,
                    c->route_scale, score_func_name(c->score_func), balance_name(c->balance),
                    c->bias_update_speed, c->aux_alpha, c->capacity_factor, c->mtp_depth, c->mtp_lambda,
                    c->rope_theta, c->max_seq_len, c->norm_eps);
}

void config_print(const ModelConfig *c, FILE *fp) {
    fprintf(fp,
            "model: V=%d C=%d L=%d (dense %d) H=%d q_lora=%d kv_lora=%d qk=%d+%d v=%d inter=%d | MoE E=%d shared=%d "
            "K=%d width=%d groups=%d/%d score=%s scale=%g balance=%s gamma=%g alpha=%g capacity=%g | mtp=%d "
            "(lambda %g) T=%d\n",
            c->vocab_size, c->dim, c->n_layers, c->n_dense_layers, c->n_heads, c->q_lora_rank, c->kv_lora_rank,
            c->qk_nope_dim, c->qk_rope_dim, c->v_head_dim, c->inter_dim, c->n_routed_experts, c->n_shared_experts,
            c->top_k, c->moe_inter_dim, c->n_limited_groups, c->n_expert_groups, score_func_name(c->score_func),
            c->route_scale, balance_name(c->balance), c->bias_update_speed, c->aux_alpha, c->capacity_factor,
            c->mtp_depth, c->mtp_lambda, c->max_seq_len);
}
