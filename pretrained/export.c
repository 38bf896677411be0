// Export to the HF deepseek_v3 layout. See export.h.
#include "export.h"

#include "safetensors.h"

static int add2(StWriter *w, int dtype, const char *name, const float *data, int64_t rows, int64_t cols, MoeErr *err) {
    int64_t shp[2] = {rows, cols};
    return st_writer_add_f32(w, name, dtype, cols > 0 ? 2 : 1, shp, data, err);
}

int pt_export(const Model *m, const char *dir, int dtype, const char *tokenizer_json, int bos, int eos, MoeErr *err) {
    const ModelConfig *c = &m->cfg;
    if (dtype != ST_F32 && dtype != ST_BF16) return moe_err_set(err, "export: dtype must be F32 or BF16");
    if (make_dirs(dir, err) != 0) return -1;
    const int64_t C = c->dim, V = c->vocab_size, H = c->n_heads, E = c->n_routed_experts, Ie = c->moe_inter_dim;
    const int64_t dqk = c->qk_nope_dim + c->qk_rope_dim;
    StWriter w;
    st_writer_init(&w);
    char n[400], p[128];
    int rc = 0;
#define ADD(name, data, rows, cols) \
    do { if (!rc && add2(&w, dtype, name, data, rows, cols, err) != 0) rc = -1; } while (0)
    ADD("model.embed_tokens.weight", m->p.wte, V, C);
    ADD("model.norm.weight", m->p.final_norm, C, 0);
    ADD("lm_head.weight", m->p.lm_head, V, C);
    for (int l = 0; l < c->n_layers && !rc; l++) {
        const LayerParams *L = &m->p.layers[l];
        snprintf(p, sizeof(p), "model.layers.%d", l);
#define NM(suffix) (snprintf(n, sizeof(n), "%s.%s", p, suffix), n)
        ADD(NM("input_layernorm.weight"), L->attn_norm, C, 0);
        ADD(NM("post_attention_layernorm.weight"), L->ffn_norm, C, 0);
        if (c->q_lora_rank > 0) {
            ADD(NM("self_attn.q_a_proj.weight"), L->wq_a, c->q_lora_rank, C);
            ADD(NM("self_attn.q_a_layernorm.weight"), L->q_norm, c->q_lora_rank, 0);
            ADD(NM("self_attn.q_b_proj.weight"), L->wq_b, H * dqk, c->q_lora_rank);
        } else {
            ADD(NM("self_attn.q_proj.weight"), L->wq, H * dqk, C);
        }
        ADD(NM("self_attn.kv_a_proj_with_mqa.weight"), L->wkv_a, c->kv_lora_rank + c->qk_rope_dim, C);
        ADD(NM("self_attn.kv_a_layernorm.weight"), L->kv_norm, c->kv_lora_rank, 0);
        ADD(NM("self_attn.kv_b_proj.weight"), L->wkv_b, H * (c->qk_nope_dim + c->v_head_dim), c->kv_lora_rank);
        ADD(NM("self_attn.o_proj.weight"), L->wo, C, H * c->v_head_dim);
        if (!cfg_is_moe_layer(c, l)) {
            ADD(NM("mlp.gate_proj.weight"), L->w1, c->inter_dim, C);
            ADD(NM("mlp.up_proj.weight"), L->w3, c->inter_dim, C);
            ADD(NM("mlp.down_proj.weight"), L->w2, C, c->inter_dim);
            continue;
        }
        ADD(NM("mlp.gate.weight"), L->gate, E, C);
        if (cfg_uses_bias(c)) {  // the correction bias is kept in fp32 (as transformers does)
            int64_t se[1] = {E};
            if (!rc && st_writer_add(&w, NM("mlp.gate.e_score_correction_bias"), ST_F32, 1, se, m->bias + (size_t)l * E, err))
                rc = -1;
        }
        for (int64_t e = 0; e < E && !rc; e++) {
            char q[200];
            snprintf(q, sizeof(q), "mlp.experts.%lld.gate_proj.weight", (long long)e);
            ADD(NM(q), L->ew1 + e * Ie * C, Ie, C);
            snprintf(q, sizeof(q), "mlp.experts.%lld.up_proj.weight", (long long)e);
            ADD(NM(q), L->ew3 + e * Ie * C, Ie, C);
            snprintf(q, sizeof(q), "mlp.experts.%lld.down_proj.weight", (long long)e);
            ADD(NM(q), L->ew2 + e * C * Ie, C, Ie);
        }
        if (c->n_shared_experts > 0) {
            int64_t S = (int64_t)c->n_shared_experts * Ie;
            ADD(NM("mlp.shared_experts.gate_proj.weight"), L->sw1, S, C);
            ADD(NM("mlp.shared_experts.up_proj.weight"), L->sw3, S, C);
            ADD(NM("mlp.shared_experts.down_proj.weight"), L->sw2, C, S);
        }
#undef NM
    }
#undef ADD
    char path[1200];
    if (!rc) {
        snprintf(path, sizeof(path), "%s/model.safetensors", dir);
        w.metadata_json = strdup("{\"format\": \"pt\"}");
        rc = st_writer_write(&w, path, err);
    }
    st_writer_free(&w);
    if (rc) return rc;
    int sig = c->score_func == SCORE_SIGMOID;
    char q_lora[32], ids[96] = "";
    if (c->q_lora_rank > 0) snprintf(q_lora, sizeof(q_lora), "%d", c->q_lora_rank);
    else snprintf(q_lora, sizeof(q_lora), "null");
    if (bos >= 0) snprintf(ids + strlen(ids), sizeof(ids) - strlen(ids), " \"bos_token_id\": %d,", bos);
    if (eos >= 0) snprintf(ids + strlen(ids), sizeof(ids) - strlen(ids), " \"eos_token_id\": %d,", eos);
    char cfg[3000];
    int n_cfg = snprintf(cfg, sizeof(cfg),
                 "{\n  \"architectures\": [\"DeepseekV3ForCausalLM\"],\n  \"model_type\": \"deepseek_v3\",\n"
                 "  \"vocab_size\": %d, \"hidden_size\": %d, \"intermediate_size\": %d, \"moe_intermediate_size\": %d,\n"
                 "  \"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"num_key_value_heads\": %d,\n"
                 "  \"q_lora_rank\": %s, \"kv_lora_rank\": %d, \"qk_nope_head_dim\": %d, \"qk_rope_head_dim\": %d,"
                 " \"v_head_dim\": %d, \"head_dim\": %d,\n"
                 "  \"n_routed_experts\": %d, \"n_shared_experts\": %d, \"num_experts_per_tok\": %d,\n"
                 "  \"n_group\": %d, \"topk_group\": %d, \"topk_method\": \"noaux_tc\", \"scoring_func\": \"%s\",\n"
                 "  \"norm_topk_prob\": %s, \"routed_scaling_factor\": %.9g,\n"
                 "  \"first_k_dense_replace\": %d, \"moe_layer_freq\": 1,\n"
                 "  \"hidden_act\": \"silu\", \"max_position_embeddings\": %d, \"rms_norm_eps\": %.9g,\n"
                 "  \"rope_theta\": %.9g, \"rope_scaling\": null, \"rope_interleave\": true, \"attention_bias\": false,\n"
                 "  \"attention_dropout\": 0.0, \"initializer_range\": 0.02, \"use_cache\": true,\n"
                 "  \"tie_word_embeddings\": false,%s \"torch_dtype\": \"%s\"\n}\n",
                 c->vocab_size, c->dim, c->inter_dim, c->moe_inter_dim, c->n_layers, c->n_heads, c->n_heads, q_lora,
                 c->kv_lora_rank, c->qk_nope_dim, c->qk_rope_dim, c->v_head_dim, c->qk_rope_dim, c->n_routed_experts,
                 c->n_shared_experts, c->top_k, c->n_expert_groups > 0 ? c->n_expert_groups : 1,
                 c->n_limited_groups > 0 ? c->n_limited_groups : 1, sig ? "sigmoid" : "softmax", sig ? "true" : "false",
                 (double)c->route_scale, c->n_dense_layers, c->max_seq_len, (double)c->norm_eps, (double)c->rope_theta, ids,
                 dtype == ST_BF16 ? "bfloat16" : "float32");
    if (n_cfg >= (int)sizeof(cfg)) return moe_err_set(err, "export: config.json too long");
    snprintf(path, sizeof(path), "%s/config.json", dir);
    if (write_file_atomic(path, cfg, strlen(cfg), err) != 0) return -1;
    if (tokenizer_json) {
        char *text = NULL;
        size_t len = 0;
        if (read_file_all(tokenizer_json, &text, &len, err) != 0) return -1;
        snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
        rc = write_file_atomic(path, text, len, err);
        free(text);
    }
    return rc;
}
