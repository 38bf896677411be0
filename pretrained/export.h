// Export of our trainer's model (model/model.h) to the Hugging Face `deepseek_v3` layout:
// config.json + model.safetensors (+ tokenizer.json copied when given), loadable by
// pretrained/ (pt_model_load) and by transformers' DeepseekV3ForCausalLM.
//
// Names: wte -> model.embed_tokens, attn_norm -> input_layernorm, wq / wq_a, q_norm, wq_b ->
// self_attn.q_proj / q_a_proj, q_a_layernorm, q_b_proj, wkv_a -> kv_a_proj_with_mqa,
// kv_norm -> kv_a_layernorm, wkv_b -> kv_b_proj, wo -> o_proj, ffn_norm ->
// post_attention_layernorm, w1/w3/w2 -> mlp.gate_proj/up_proj/down_proj (dense, experts.E.,
// shared_experts.), gate -> mlp.gate.weight, the balancing bias ->
// mlp.gate.e_score_correction_bias (only when the model balances with the bias), final_norm ->
// model.norm, lm_head -> lm_head. The MTP block is not exported (as HF checkpoints of V3
// leave it out of the main model).
// Semantics kept: sigmoid gate -> norm_topk_prob true; softmax gate -> scoring_func
// "softmax", norm_topk_prob false (transformers' DeepseekV3 implements the sigmoid gate only:
// pretrained/ honours scoring_func, transformers does not).
#ifndef MOE_PT_EXPORT_H
#define MOE_PT_EXPORT_H

#include "../common/util.h"
#include "../model/model.h"

// dtype: ST_F32 or ST_BF16. tokenizer_json: path of a tokenizer.json to copy, or NULL.
// bos / eos ids for config.json (-1: leave out).
int pt_export(const Model *m, const char *dir, int dtype, const char *tokenizer_json, int bos, int eos, MoeErr *err);

#endif
