// config.json reading. See hfconfig.h.
#include "hfconfig.h"

#include <cjson/cJSON.h>
#include <math.h>

const char *pt_arch_name(int arch) {
    switch (arch) {
    case PT_DEEPSEEK: return "deepseek";
    case PT_QWEN2_MOE: return "qwen2_moe";
    case PT_DEEPSEEK_V3: return "deepseek_v3";
    default: return "?";
    }
}

typedef struct {
    const cJSON *root;
    const char *path;
    MoeErr *err;
    int failed;
} Reader;

// required positive (or >= min) integer
static int req_int(Reader *r, const char *field, int min, int *out) {
    if (r->failed) return -1;
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(r->root, field);
    if (!j) {
        r->failed = 1;
        return moe_err_set(r->err, "%s: missing field '%s'", r->path, field);
    }
    if (!cJSON_IsNumber(j) || j->valuedouble != floor(j->valuedouble) || j->valuedouble < min ||
        j->valuedouble > 1e9) {
        r->failed = 1;
        return moe_err_set(r->err, "%s: field '%s' must be an integer >= %d", r->path, field, min);
    }
    *out = (int)j->valuedouble;
    return 0;
}

// optional integer (null or absent -> def)
static int opt_int(Reader *r, const char *field, int min, int def, int *out) {
    if (r->failed) return -1;
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(r->root, field);
    if (!j || cJSON_IsNull(j)) {
        *out = def;
        return 0;
    }
    return req_int(r, field, min, out);
}

static int req_float(Reader *r, const char *field, float *out) {
    if (r->failed) return -1;
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(r->root, field);
    if (!j) {
        r->failed = 1;
        return moe_err_set(r->err, "%s: missing field '%s'", r->path, field);
    }
    if (!cJSON_IsNumber(j) || !isfinite(j->valuedouble) || j->valuedouble <= 0) {
        r->failed = 1;
        return moe_err_set(r->err, "%s: field '%s' must be a positive number", r->path, field);
    }
    *out = (float)j->valuedouble;
    return 0;
}

static int opt_float(Reader *r, const char *field, float def, float *out) {
    if (r->failed) return -1;
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(r->root, field);
    if (!j || cJSON_IsNull(j)) {
        *out = def;
        return 0;
    }
    return req_float(r, field, out);
}

static int opt_bool(Reader *r, const char *field, int def, int *out) {
    if (r->failed) return -1;
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(r->root, field);
    if (!j || cJSON_IsNull(j)) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(j)) {
        r->failed = 1;
        return moe_err_set(r->err, "%s: field '%s' must be true or false", r->path, field);
    }
    *out = cJSON_IsTrue(j);
    return 0;
}

static int req_bool(Reader *r, const char *field, int *out) {
    if (r->failed) return -1;
    if (!cJSON_GetObjectItemCaseSensitive(r->root, field)) {
        r->failed = 1;
        return moe_err_set(r->err, "%s: missing field '%s'", r->path, field);
    }
    return opt_bool(r, field, 0, out);
}

// rope_theta: the top-level field (transformers 4 configs) or rope_parameters.rope_theta
// (transformers 5). rope_scaling must be null / absent / type "default".
static int read_rope(Reader *r, PtConfig *c) {
    if (r->failed) return -1;
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(r->root, "rope_scaling");
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(r->root, "rope_parameters");
    const cJSON *scal[2] = {rs, rp};
    for (int i = 0; i < 2; i++) {
        const cJSON *s = scal[i];
        if (!s || cJSON_IsNull(s)) continue;
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(s, "rope_type");
        if (!t) t = cJSON_GetObjectItemCaseSensitive(s, "type");
        if (!cJSON_IsObject(s) || (t && (!cJSON_IsString(t) || strcmp(t->valuestring, "default") != 0)) ||
            (!t && i == 0)) {
            r->failed = 1;
            return moe_err_set(r->err, "%s: field '%s' is not supported (only plain RoPE: null or rope_type \"default\")",
                               r->path, i == 0 ? "rope_scaling" : "rope_parameters");
        }
    }
    const cJSON *th = cJSON_GetObjectItemCaseSensitive(r->root, "rope_theta");
    if (!th && rp && cJSON_IsObject(rp)) th = cJSON_GetObjectItemCaseSensitive(rp, "rope_theta");
    if (!th) {
        r->failed = 1;
        return moe_err_set(r->err, "%s: missing field 'rope_theta'", r->path);
    }
    if (!cJSON_IsNumber(th) || !(th->valuedouble > 0)) {
        r->failed = 1;
        return moe_err_set(r->err, "%s: field 'rope_theta' must be a positive number", r->path);
    }
    c->rope_theta = (float)th->valuedouble;
    return 0;
}

int pt_config_parse(PtConfig *c, const char *json, size_t n, const char *path, MoeErr *err) {
    memset(c, 0, sizeof(*c));
    cJSON *root = cJSON_ParseWithLength(json, n);
    if (!root) return moe_err_set(err, "%s: not valid JSON", path);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return moe_err_set(err, "%s: not a JSON object", path);
    }
    Reader r = {root, path, err, 0};
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    if (!cJSON_IsString(mt)) {
        cJSON_Delete(root);
        return moe_err_set(err, "%s: missing field 'model_type'", path);
    }
    snprintf(c->model_type, sizeof(c->model_type), "%s", mt->valuestring);
    if (strcmp(mt->valuestring, "deepseek") == 0) c->arch = PT_DEEPSEEK;
    else if (strcmp(mt->valuestring, "qwen2_moe") == 0) c->arch = PT_QWEN2_MOE;
    else if (strcmp(mt->valuestring, "deepseek_v3") == 0) c->arch = PT_DEEPSEEK_V3;
    else {
        moe_err_set(err, "%s: field 'model_type' is '%.40s': unsupported (supported: deepseek, qwen2_moe, deepseek_v3)",
                    path, mt->valuestring);
        cJSON_Delete(root);
        return -1;
    }
    const cJSON *act = cJSON_GetObjectItemCaseSensitive(root, "hidden_act");
    if (act && !(cJSON_IsString(act) && strcmp(act->valuestring, "silu") == 0)) {
        cJSON_Delete(root);
        return moe_err_set(err, "%s: field 'hidden_act' must be \"silu\"", path);
    }
    req_int(&r, "vocab_size", 1, &c->vocab_size);
    req_int(&r, "hidden_size", 1, &c->hidden_size);
    req_int(&r, "num_hidden_layers", 1, &c->n_layers);
    req_int(&r, "num_attention_heads", 1, &c->n_heads);
    opt_int(&r, "num_key_value_heads", 1, c->n_heads, &c->n_kv_heads);
    req_int(&r, "intermediate_size", 1, &c->intermediate_size);
    req_int(&r, "moe_intermediate_size", 1, &c->moe_intermediate_size);
    req_int(&r, "num_experts_per_tok", 1, &c->top_k);
    req_float(&r, "rms_norm_eps", &c->rms_norm_eps);
    read_rope(&r, c);
    opt_bool(&r, "tie_word_embeddings", 0, &c->tie_word_embeddings);
    opt_int(&r, "max_position_embeddings", 1, 4096, &c->max_position_embeddings);
    opt_int(&r, "bos_token_id", 0, -1, &c->bos_token_id);
    opt_int(&r, "eos_token_id", 0, -1, &c->eos_token_id);
    if (r.failed) goto done;
    if (c->n_layers > PT_MAX_LAYERS) {
        r.failed = 1;
        moe_err_set(err, "%s: field 'num_hidden_layers' %d exceeds %d", path, c->n_layers, PT_MAX_LAYERS);
        goto done;
    }
    c->n_group = c->topk_group = 1;
    c->routed_scaling_factor = 1.0f;
    if (c->arch == PT_DEEPSEEK || c->arch == PT_DEEPSEEK_V3) {
        int first_dense = 0, freq = 1;
        req_int(&r, "n_routed_experts", 1, &c->n_routed_experts);
        opt_int(&r, "n_shared_experts", 0, 0, &c->n_shared_experts);
        req_int(&r, "first_k_dense_replace", 0, &first_dense);
        opt_int(&r, "moe_layer_freq", 1, 1, &freq);
        req_bool(&r, "norm_topk_prob", &c->norm_topk_prob);
        opt_float(&r, "routed_scaling_factor", 1.0f, &c->routed_scaling_factor);
        int ab = 0;
        opt_bool(&r, "attention_bias", 0, &ab);
        c->attn_qkv_bias = c->attn_o_bias = ab;
        if (r.failed) goto done;
        for (int l = 0; l < c->n_layers; l++) c->is_moe[l] = l >= first_dense && l % freq == 0;
        const cJSON *sf = cJSON_GetObjectItemCaseSensitive(root, "scoring_func");
        const char *def = c->arch == PT_DEEPSEEK ? "softmax" : "sigmoid";
        const char *s = sf && cJSON_IsString(sf) ? sf->valuestring : def;
        if (sf && !cJSON_IsString(sf)) s = "";
        if (strcmp(s, "softmax") == 0) c->score_func = PT_SCORE_SOFTMAX;
        else if (strcmp(s, "sigmoid") == 0) c->score_func = PT_SCORE_SIGMOID;
        else {
            r.failed = 1;
            moe_err_set(err, "%s: field 'scoring_func' must be \"softmax\" or \"sigmoid\"", path);
            goto done;
        }
        if (c->arch == PT_DEEPSEEK) {
            opt_int(&r, "head_dim", 1, 0, &c->head_dim);
            if (!r.failed && c->head_dim == 0) c->head_dim = c->hidden_size / c->n_heads;
        } else {
            const cJSON *ql = cJSON_GetObjectItemCaseSensitive(root, "q_lora_rank");
            if (ql && !cJSON_IsNull(ql)) req_int(&r, "q_lora_rank", 0, &c->q_lora_rank);
            else c->q_lora_rank = 0;
            req_int(&r, "kv_lora_rank", 1, &c->kv_lora_rank);
            req_int(&r, "qk_nope_head_dim", 0, &c->qk_nope_head_dim);
            req_int(&r, "qk_rope_head_dim", 0, &c->qk_rope_head_dim);
            req_int(&r, "v_head_dim", 1, &c->v_head_dim);
            opt_int(&r, "n_group", 1, 1, &c->n_group);
            opt_int(&r, "topk_group", 1, 1, &c->topk_group);
            int ri = 1;
            opt_bool(&r, "rope_interleave", 1, &ri);
            if (!r.failed && !ri) {
                r.failed = 1;
                moe_err_set(err, "%s: field 'rope_interleave' false is not supported", path);
            }
            if (!r.failed && (c->qk_rope_head_dim % 2 || c->qk_nope_head_dim + c->qk_rope_head_dim == 0)) {
                r.failed = 1;
                moe_err_set(err, "%s: field 'qk_rope_head_dim' must be even (and the head non-empty)", path);
            }
            if (!r.failed && (c->n_routed_experts % c->n_group || c->topk_group > c->n_group ||
                              c->top_k > (c->n_routed_experts / c->n_group) * c->topk_group)) {
                r.failed = 1;
                moe_err_set(err, "%s: fields 'n_group' / 'topk_group' do not fit n_routed_experts and num_experts_per_tok",
                            path);
            }
        }
    } else {  // qwen2_moe
        req_int(&r, "num_experts", 1, &c->n_routed_experts);
        opt_int(&r, "shared_expert_intermediate_size", 0, 0, &c->shared_expert_intermediate_size);
        opt_bool(&r, "norm_topk_prob", 0, &c->norm_topk_prob);
        opt_bool(&r, "qkv_bias", 1, &c->attn_qkv_bias);
        int step = 1, sw = 0;
        opt_int(&r, "decoder_sparse_step", 1, 1, &step);
        opt_bool(&r, "use_sliding_window", 0, &sw);
        opt_int(&r, "head_dim", 1, 0, &c->head_dim);
        if (r.failed) goto done;
        if (c->head_dim == 0) c->head_dim = c->hidden_size / c->n_heads;
        if (sw) {
            r.failed = 1;
            moe_err_set(err, "%s: field 'use_sliding_window' true is not supported", path);
            goto done;
        }
        c->score_func = PT_SCORE_SOFTMAX;
        for (int l = 0; l < c->n_layers; l++) c->is_moe[l] = (l + 1) % step == 0;
        const cJSON *mol = cJSON_GetObjectItemCaseSensitive(root, "mlp_only_layers");
        if (mol && !cJSON_IsNull(mol)) {
            if (!cJSON_IsArray(mol)) {
                r.failed = 1;
                moe_err_set(err, "%s: field 'mlp_only_layers' must be a list of layer indices", path);
                goto done;
            }
            for (const cJSON *e = mol->child; e; e = e->next) {
                if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= c->n_layers ||
                    e->valuedouble != floor(e->valuedouble)) {
                    r.failed = 1;
                    moe_err_set(err, "%s: field 'mlp_only_layers' holds a bad layer index", path);
                    goto done;
                }
                c->is_moe[(int)e->valuedouble] = 0;
            }
        }
    }
    if (r.failed) goto done;
    if (c->arch != PT_DEEPSEEK_V3 && (c->n_heads % c->n_kv_heads != 0)) {
        r.failed = 1;
        moe_err_set(err, "%s: field 'num_key_value_heads' (%d) must divide num_attention_heads (%d)", path, c->n_kv_heads,
                    c->n_heads);
        goto done;
    }
    if (c->arch != PT_DEEPSEEK_V3 && c->head_dim % 2) {
        r.failed = 1;
        moe_err_set(err, "%s: the head dimension %d must be even for RoPE", path, c->head_dim);
        goto done;
    }
    if (c->top_k > c->n_routed_experts) {
        r.failed = 1;
        moe_err_set(err, "%s: field 'num_experts_per_tok' (%d) exceeds the number of experts (%d)", path, c->top_k,
                    c->n_routed_experts);
        goto done;
    }
    if (c->n_routed_experts > 4096 || c->top_k > 64 || c->n_group > 256) {
        r.failed = 1;
        moe_err_set(err, "%s: fields 'n_routed_experts' / 'num_experts_per_tok' / 'n_group' exceed 4096 / 64 / 256", path);
        goto done;
    }
    {
        // an upper bound of the parameter count in double: keeps every int64 size product of
        // the plan and the loader far from overflow
        double C = c->hidden_size, w = c->intermediate_size;
        if (c->moe_intermediate_size > w) w = c->moe_intermediate_size;
        if (c->shared_expert_intermediate_size > w) w = c->shared_expert_intermediate_size;
        double attn = 4.0 * C * (double)c->n_heads * 1024.0;
        double per_layer = ((double)c->n_routed_experts + 2.0 + (double)c->n_shared_experts) * 3.0 * C * w + attn;
        double total = (double)c->n_layers * per_layer + 2.0 * (double)c->vocab_size * C;
        if (total > 1e14) {
            r.failed = 1;
            moe_err_set(err, "%s: sizes (hidden_size, intermediate sizes, experts, layers, vocab_size) describe more than "
                             "1e14 parameters", path);
            goto done;
        }
    }
    c->n_moe_layers = 0;
    for (int l = 0; l < c->n_layers; l++) c->n_moe_layers += c->is_moe[l];
done:
    cJSON_Delete(root);
    return r.failed ? -1 : 0;
}

int pt_config_load(PtConfig *c, const char *dir, MoeErr *err) {
    char path[2048];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    char *text = NULL;
    size_t n = 0;
    if (read_file_all(path, &text, &n, err) != 0) return -1;
    int rc = pt_config_parse(c, text, n, path, err);
    free(text);
    return rc;
}
