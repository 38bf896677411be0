// Pretrained MoE models: plan, streaming load, forward. See ptmodel.h.
#include "ptmodel.h"

#include <cjson/cJSON.h>
#include <float.h>
#include <math.h>
#include <omp.h>

#include "../common/gemm.h"

// below this much work a loop runs on one thread: on a loaded 2-core machine an OpenMP
// barrier for a tiny loop can cost more than the loop
#define PT_PAR_MIN 32768

const char *const pt_cat_names[PT_N_CAT] = {"embeddings", "lm_head", "attention", "dense MLP", "routed experts",
                                            "shared experts", "routers", "norms"};

// ---------------------------------------------------------------------------------------
// Plan

static void plan_add(PtPlan *p, int cat, int64_t rows, int64_t cols, int quant, int dq) {
    int64_t n = rows * cols;
    p->params[cat] += n;
    p->bytes[cat] += quant == PT_QUANT_NF4 ? nf4_planned_bytes(n, NF4_BLOCK, dq) : n * 4;
}

void pt_plan(const PtConfig *c, int quant, int dq, int emb_bytes, PtPlan *p) {
    memset(p, 0, sizeof(*p));
    const int64_t C = c->hidden_size, V = c->vocab_size, H = c->n_heads;
    int eb = quant == PT_QUANT_NF4 ? emb_bytes : 4;
    p->params[PT_CAT_EMBED] = V * C;
    p->bytes[PT_CAT_EMBED] = V * C * eb;
    if (!c->tie_word_embeddings) {
        p->params[PT_CAT_HEAD] = V * C;
        p->bytes[PT_CAT_HEAD] = V * C * eb;
    }
    p->params[PT_CAT_NORM] += C;
    for (int l = 0; l < c->n_layers; l++) {
        p->params[PT_CAT_NORM] += 2 * C;
        if (c->arch == PT_DEEPSEEK_V3) {
            int64_t dq_ = c->qk_nope_head_dim + c->qk_rope_head_dim;
            if (c->q_lora_rank > 0) {
                plan_add(p, PT_CAT_ATTN, c->q_lora_rank, C, quant, dq);
                plan_add(p, PT_CAT_ATTN, H * dq_, c->q_lora_rank, quant, dq);
                p->params[PT_CAT_NORM] += c->q_lora_rank;
            } else {
                plan_add(p, PT_CAT_ATTN, H * dq_, C, quant, dq);
            }
            plan_add(p, PT_CAT_ATTN, c->kv_lora_rank + c->qk_rope_head_dim, C, quant, dq);
            plan_add(p, PT_CAT_ATTN, H * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank, quant, dq);
            plan_add(p, PT_CAT_ATTN, C, H * c->v_head_dim, quant, dq);
            p->params[PT_CAT_NORM] += c->kv_lora_rank;
        } else {
            int64_t hd = c->head_dim, KVH = c->n_kv_heads;
            plan_add(p, PT_CAT_ATTN, H * hd, C, quant, dq);
            plan_add(p, PT_CAT_ATTN, KVH * hd, C, quant, dq);
            plan_add(p, PT_CAT_ATTN, KVH * hd, C, quant, dq);
            plan_add(p, PT_CAT_ATTN, C, H * hd, quant, dq);
            if (c->attn_qkv_bias) p->params[PT_CAT_NORM] += (H + 2 * KVH) * hd;
        }
        if (!c->is_moe[l]) {
            for (int k = 0; k < 3; k++) plan_add(p, PT_CAT_DENSE, c->intermediate_size, C, quant, dq);
        } else {
            for (int e = 0; e < c->n_routed_experts; e++)
                for (int k = 0; k < 3; k++) plan_add(p, PT_CAT_EXPERTS, c->moe_intermediate_size, C, quant, dq);
            int64_t S = pt_shared_width(c);
            if (S > 0)
                for (int k = 0; k < 3; k++) plan_add(p, PT_CAT_SHARED, S, C, quant, dq);
            p->params[PT_CAT_ROUTER] += (int64_t)c->n_routed_experts * C;
            if (c->arch == PT_DEEPSEEK_V3) p->params[PT_CAT_ROUTER] += c->n_routed_experts;
            if (c->arch == PT_QWEN2_MOE && S > 0) p->params[PT_CAT_ROUTER] += C;
        }
    }
    p->bytes[PT_CAT_NORM] = p->params[PT_CAT_NORM] * 4;
    p->bytes[PT_CAT_ROUTER] = p->params[PT_CAT_ROUTER] * 4;
    for (int i = 0; i < PT_N_CAT; i++) {
        p->total_params += p->params[i];
        p->total_bytes += p->bytes[i];
    }
}

void pt_plan_print(const PtConfig *c, const PtPlan *p, const char *title, FILE *fp) {
    fprintf(fp, "%s: %s, %d layers (%d MoE), E=%d top-%d, hidden %d, vocab %d\n", title, c->model_type, c->n_layers,
            c->n_moe_layers, c->n_routed_experts, c->top_k, c->hidden_size, c->vocab_size);
    for (int i = 0; i < PT_N_CAT; i++) {
        if (!p->params[i]) continue;
        fprintf(fp, "  %-15s %14lld params %10.1f MB\n", pt_cat_names[i], (long long)p->params[i],
                (double)p->bytes[i] / 1e6);
    }
    fprintf(fp, "  %-15s %14lld params %10.1f MB (%.2f GB, %.2f GiB, %.3f bits/param)\n", "total",
            (long long)p->total_params, (double)p->total_bytes / 1e6, (double)p->total_bytes / 1e9,
            (double)p->total_bytes / (1024.0 * 1024 * 1024), 8.0 * (double)p->total_bytes / (double)p->total_params);
}

int64_t pt_work_bytes(const PtConfig *c, int64_t n, int t_max) {
    int64_t C = c->hidden_size, H = c->n_heads;
    int64_t qd = pt_q_head_dim(c), vd = pt_v_head_dim(c);
    int64_t wide = c->intermediate_size;
    int64_t S = pt_shared_width(c);
    if (S > wide) wide = S;
    if (c->moe_intermediate_size > wide) wide = c->moe_intermediate_size;
    int64_t attn = n * (3 * H * qd + H * vd);
    if (c->arch == PT_DEEPSEEK_V3) attn += n * (c->q_lora_rank + c->kv_lora_rank + c->qk_rope_head_dim);
    // x, xn, tmp, y, expert in/out (N, C); attention; dense/shared MLP (N, wide) x2; expert
    // hidden (N, moe_inter) x2; router logits; per-thread attention rows; routing indices
    int64_t floats = n * C * 6 + attn + 2 * n * wide + 2 * n * c->moe_intermediate_size + n * c->n_routed_experts +
                     (int64_t)omp_get_max_threads() * t_max + 4 * n * c->top_k;
    int nthr = omp_get_max_threads();
    if (nthr > 1 && c->n_routed_experts >= 2 * nthr)  // per-thread expert buffers (see moe_block)
        floats += (int64_t)nthr * n * (3 * C + 2 * c->moe_intermediate_size);
    return floats * 4;
}

int pt_config_emb_bytes(const char *dir) {
    char path[2048], *text = NULL;
    size_t n = 0;
    snprintf(path, sizeof(path), "%s/config.json", dir);
    if (read_file_all(path, &text, &n, NULL) != 0) return 2;
    cJSON *j = cJSON_ParseWithLength(text, n);
    free(text);
    const cJSON *d = j ? cJSON_GetObjectItemCaseSensitive(j, "torch_dtype") : NULL;
    if (!d && j) d = cJSON_GetObjectItemCaseSensitive(j, "dtype");
    int b = d && cJSON_IsString(d) && strcmp(d->valuestring, "float32") == 0 ? 4 : 2;
    cJSON_Delete(j);
    return b;
}

// ---------------------------------------------------------------------------------------
// Loading

typedef struct {
    PtModel *m;
    const StModel *st;
    MoeErr *err;
} Loader;

static void linear_free(PtLinear *w) {
    free(w->f32);
    free(w->bf16);
    nf4_free(&w->nf4);
    free(w->bias);
    memset(w, 0, sizeof(*w));
}

// A vector (norm weight, bias, router bias) as fp32.
static float *load_vec(Loader *L, const char *name, int64_t n, int cat) {
    int64_t shp[1] = {n};
    const StTensor *t = st_model_get(L->st, name, 1, shp, L->err);
    if (!t) return NULL;
    float *v = (float *)malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!v) {
        moe_err_set(L->err, "out of memory loading '%s'", name);
        return NULL;
    }
    if (st_read_f32(t, 0, n, v, L->err) != 0) {
        moe_err_set(L->err, "%s: tensor '%s': field 'dtype' %s is not a float type", st_model_file_of(L->st, t), name,
                    st_dtype_name(t->dtype));
        free(v);
        return NULL;
    }
    L->m->loaded.params[cat] += n;
    L->m->loaded.bytes[cat] += n * 4;
    return v;
}

// A 2-D matrix kept as fp32 (routers, shared expert gate).
static float *load_mat_f32(Loader *L, const char *name, int64_t rows, int64_t cols, int cat) {
    int64_t shp[2] = {rows, cols};
    const StTensor *t = st_model_get(L->st, name, 2, shp, L->err);
    if (!t) return NULL;
    float *v = (float *)malloc((size_t)(rows * cols + 1) * sizeof(float));
    if (!v) {
        moe_err_set(L->err, "out of memory loading '%s'", name);
        return NULL;
    }
    if (st_read_f32(t, 0, rows * cols, v, L->err) != 0) {
        moe_err_set(L->err, "%s: tensor '%s': field 'dtype' %s is not a float type", st_model_file_of(L->st, t), name,
                    st_dtype_name(t->dtype));
        free(v);
        return NULL;
    }
    st_release(t);
    L->m->loaded.params[cat] += rows * cols;
    L->m->loaded.bytes[cat] += rows * cols * 4;
    return v;
}

// A projection: prefix.weight (rows, cols) [+ prefix.bias (rows)], NF4 or fp32, or already
// in bitsandbytes' saved form. keep: 1 = keep bf16 as bf16 (embeddings, lm_head) instead of
// quantizing.
static int load_linear(Loader *L, PtLinear *w, const char *prefix, int64_t rows, int64_t cols, int has_bias, int cat,
                       int keep) {
    memset(w, 0, sizeof(*w));
    w->rows = rows;
    w->cols = cols;
    PtModel *m = L->m;
    char name[600];
    snprintf(name, sizeof(name), "%s.weight", prefix);
    if (!keep && nf4_is_bnb(L->st, prefix)) {
        if (nf4_from_bnb(&w->nf4, L->st, prefix, rows, cols, L->err) != 0) return -1;
        w->kind = PT_W_NF4;
        m->n_bnb++;
        m->loaded.bytes[cat] += nf4_bytes(&w->nf4);
    } else {
        int64_t shp[2] = {rows, cols};
        const StTensor *t = st_model_get(L->st, name, 2, shp, L->err);
        if (!t) return -1;
        if (t->dtype != ST_F32 && t->dtype != ST_BF16 && t->dtype != ST_F16)
            return moe_err_set(L->err, "%s: tensor '%s': field 'dtype' %s is not a float type", st_model_file_of(L->st, t),
                               name, st_dtype_name(t->dtype));
        if (keep && m->opt.quant == PT_QUANT_NF4 && t->dtype == ST_BF16) {
            w->kind = PT_W_BF16;
            w->bf16 = (uint16_t *)malloc((size_t)(rows * cols + 1) * 2);
            if (!w->bf16) return moe_err_set(L->err, "out of memory loading '%s'", name);
            memcpy(w->bf16, t->data, (size_t)(rows * cols) * 2);
            m->loaded.bytes[cat] += rows * cols * 2;
        } else if (!keep && m->opt.quant == PT_QUANT_NF4) {
            w->kind = PT_W_NF4;
            if (nf4_quantize_raw(&w->nf4, t->data, t->dtype, rows, cols, NF4_BLOCK, m->opt.double_quant, L->err) != 0)
                return -1;
            m->loaded.bytes[cat] += nf4_bytes(&w->nf4);
        } else {
            w->kind = PT_W_F32;
            w->f32 = (float *)malloc((size_t)(rows * cols + 1) * sizeof(float));
            if (!w->f32) return moe_err_set(L->err, "out of memory loading '%s' (%lld floats)", name, (long long)(rows * cols));
            if (st_read_f32(t, 0, rows * cols, w->f32, L->err) != 0) return -1;
            m->loaded.bytes[cat] += rows * cols * 4;
        }
        st_release(t);  // drop the mapped pages: peak memory ~ loaded model + one tensor
    }
    m->loaded.params[cat] += rows * cols;
    if (has_bias) {
        snprintf(name, sizeof(name), "%s.bias", prefix);
        w->bias = load_vec(L, name, rows, PT_CAT_NORM);
        if (!w->bias) return -1;
    }
    return 0;
}

static int load_mlp(Loader *L, const char *prefix, PtLinear *g, PtLinear *u, PtLinear *d, int64_t width, int cat) {
    char name[600];
    const int64_t C = L->m->cfg.hidden_size;
    snprintf(name, sizeof(name), "%s.gate_proj", prefix);
    if (load_linear(L, g, name, width, C, 0, cat, 0)) return -1;
    snprintf(name, sizeof(name), "%s.up_proj", prefix);
    if (load_linear(L, u, name, width, C, 0, cat, 0)) return -1;
    snprintf(name, sizeof(name), "%s.down_proj", prefix);
    return load_linear(L, d, name, C, width, 0, cat, 0);
}

static int load_layer(Loader *L, int l) {
    PtModel *m = L->m;
    const PtConfig *c = &m->cfg;
    PtLayer *y = &m->layers[l];
    const int64_t C = c->hidden_size, H = c->n_heads;
    char p[600], name[700];
    snprintf(p, sizeof(p), "model.layers.%d", l);
    y->is_moe = c->is_moe[l];
    snprintf(name, sizeof(name), "%s.input_layernorm.weight", p);
    if (!(y->attn_norm = load_vec(L, name, C, PT_CAT_NORM))) return -1;
    snprintf(name, sizeof(name), "%s.post_attention_layernorm.weight", p);
    if (!(y->ffn_norm = load_vec(L, name, C, PT_CAT_NORM))) return -1;
    if (c->arch == PT_DEEPSEEK_V3) {
        int64_t dq = c->qk_nope_head_dim + c->qk_rope_head_dim;
        if (c->q_lora_rank > 0) {
            snprintf(name, sizeof(name), "%s.self_attn.q_a_proj", p);
            if (load_linear(L, &y->q_a, name, c->q_lora_rank, C, 0, PT_CAT_ATTN, 0)) return -1;
            snprintf(name, sizeof(name), "%s.self_attn.q_a_layernorm.weight", p);
            if (!(y->q_a_norm = load_vec(L, name, c->q_lora_rank, PT_CAT_NORM))) return -1;
            snprintf(name, sizeof(name), "%s.self_attn.q_b_proj", p);
            if (load_linear(L, &y->q_b, name, H * dq, c->q_lora_rank, 0, PT_CAT_ATTN, 0)) return -1;
        } else {
            snprintf(name, sizeof(name), "%s.self_attn.q_proj", p);
            if (load_linear(L, &y->q, name, H * dq, C, 0, PT_CAT_ATTN, 0)) return -1;
        }
        snprintf(name, sizeof(name), "%s.self_attn.kv_a_proj_with_mqa", p);
        if (load_linear(L, &y->kv_a, name, c->kv_lora_rank + c->qk_rope_head_dim, C, 0, PT_CAT_ATTN, 0)) return -1;
        snprintf(name, sizeof(name), "%s.self_attn.kv_a_layernorm.weight", p);
        if (!(y->kv_a_norm = load_vec(L, name, c->kv_lora_rank, PT_CAT_NORM))) return -1;
        snprintf(name, sizeof(name), "%s.self_attn.kv_b_proj", p);
        if (load_linear(L, &y->kv_b, name, H * (c->qk_nope_head_dim + c->v_head_dim), c->kv_lora_rank, 0, PT_CAT_ATTN, 0))
            return -1;
        snprintf(name, sizeof(name), "%s.self_attn.o_proj", p);
        if (load_linear(L, &y->o, name, C, H * c->v_head_dim, c->attn_o_bias, PT_CAT_ATTN, 0)) return -1;
    } else {
        int64_t hd = c->head_dim, KVH = c->n_kv_heads;
        snprintf(name, sizeof(name), "%s.self_attn.q_proj", p);
        if (load_linear(L, &y->q, name, H * hd, C, c->attn_qkv_bias, PT_CAT_ATTN, 0)) return -1;
        snprintf(name, sizeof(name), "%s.self_attn.k_proj", p);
        if (load_linear(L, &y->k, name, KVH * hd, C, c->attn_qkv_bias, PT_CAT_ATTN, 0)) return -1;
        snprintf(name, sizeof(name), "%s.self_attn.v_proj", p);
        if (load_linear(L, &y->v, name, KVH * hd, C, c->attn_qkv_bias, PT_CAT_ATTN, 0)) return -1;
        snprintf(name, sizeof(name), "%s.self_attn.o_proj", p);
        if (load_linear(L, &y->o, name, C, H * hd, c->attn_o_bias, PT_CAT_ATTN, 0)) return -1;
    }
    if (!y->is_moe) {
        snprintf(name, sizeof(name), "%s.mlp", p);
        return load_mlp(L, name, &y->mlp_gate, &y->mlp_up, &y->mlp_down, c->intermediate_size, PT_CAT_DENSE);
    }
    const int E = c->n_routed_experts;
    snprintf(name, sizeof(name), "%s.mlp.gate.weight", p);
    if (!(y->router = load_mat_f32(L, name, E, C, PT_CAT_ROUTER))) return -1;
    if (c->arch == PT_DEEPSEEK_V3) {
        snprintf(name, sizeof(name), "%s.mlp.gate.e_score_correction_bias", p);
        if (st_model_find(L->st, name)) {
            if (!(y->router_bias = load_vec(L, name, E, PT_CAT_ROUTER))) return -1;
        }
    }
    y->experts = (PtLinear *)calloc((size_t)E * 3, sizeof(PtLinear));
    if (!y->experts) return moe_err_set(L->err, "out of memory");
    for (int e = 0; e < E; e++) {
        snprintf(name, sizeof(name), "%s.mlp.experts.%d", p, e);
        if (load_mlp(L, name, &y->experts[3 * e], &y->experts[3 * e + 1], &y->experts[3 * e + 2], c->moe_intermediate_size,
                     PT_CAT_EXPERTS))
            return -1;
    }
    int64_t S = pt_shared_width(c);
    if (S > 0) {
        snprintf(name, sizeof(name), c->arch == PT_QWEN2_MOE ? "%s.mlp.shared_expert" : "%s.mlp.shared_experts", p);
        if (load_mlp(L, name, &y->sh_gate, &y->sh_up, &y->sh_down, S, PT_CAT_SHARED)) return -1;
        if (c->arch == PT_QWEN2_MOE) {
            snprintf(name, sizeof(name), "%s.mlp.shared_expert_gate.weight", p);
            if (!(y->sh_expert_gate = load_mat_f32(L, name, 1, C, PT_CAT_ROUTER))) return -1;
        }
    }
    return 0;
}

int pt_model_load(PtModel *m, const char *dir, const PtLoadOptions *o, MoeErr *err) {
    memset(m, 0, sizeof(*m));
    m->opt = *o;
    if (pt_config_load(&m->cfg, dir, err) != 0) return -1;
    const PtConfig *c = &m->cfg;
    int hd_rope = c->arch == PT_DEEPSEEK_V3 ? c->qk_rope_head_dim : c->head_dim;
    if (hd_rope / 2 > (int)(sizeof(m->rope_inv_freq) / sizeof(float)))
        return moe_err_set(err, "%s/config.json: head dimension %d too large for RoPE tables", dir, hd_rope);
    // inv_freq as transformers computes it in fp32: 1 / theta^(2i/d)
    for (int i = 0; i < hd_rope / 2; i++)
        m->rope_inv_freq[i] = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)hd_rope);
    StModel st;
    if (st_model_open(&st, dir, err) != 0) return -1;
    Loader L = {m, &st, err};
    int rc = 0;
    double t0 = wall_seconds();
    const int64_t C = c->hidden_size, V = c->vocab_size;
    if (load_linear(&L, &m->embed, "model.embed_tokens", V, C, 0, PT_CAT_EMBED, 1)) rc = -1;
    if (!rc && !(m->final_norm = load_vec(&L, "model.norm.weight", C, PT_CAT_NORM))) rc = -1;
    if (!rc) {
        if (c->tie_word_embeddings) {
            m->lm_head = m->embed;  // shares storage (not freed twice: see pt_model_free)
        } else if (load_linear(&L, &m->lm_head, "lm_head", V, C, 0, PT_CAT_HEAD, 1)) {
            rc = -1;
        }
    }
    if (!rc) {
        m->layers = (PtLayer *)calloc((size_t)c->n_layers, sizeof(PtLayer));
        if (!m->layers) rc = moe_err_set(err, "out of memory");
    }
    for (int l = 0; !rc && l < c->n_layers; l++) {
        if (load_layer(&L, l) != 0) rc = -1;
        if (!rc && o->verbose) {
            int64_t tot = 0;
            for (int i = 0; i < PT_N_CAT; i++) tot += m->loaded.bytes[i];
            fprintf(stderr, "\rloading: layer %d/%d, %.1f MB held, %.1f s", l + 1, c->n_layers, (double)tot / 1e6,
                    wall_seconds() - t0);
            fflush(stderr);
        }
    }
    if (o->verbose) fprintf(stderr, "\n");
    st_model_close(&st);
    if (rc) {
        pt_model_free(m);
        return -1;
    }
    m->loaded.total_bytes = m->loaded.total_params = 0;
    for (int i = 0; i < PT_N_CAT; i++) {
        m->loaded.total_bytes += m->loaded.bytes[i];
        m->loaded.total_params += m->loaded.params[i];
    }
    return 0;
}

void pt_model_free(PtModel *m) {
    if (m->layers) {
        for (int l = 0; l < m->cfg.n_layers; l++) {
            PtLayer *y = &m->layers[l];
            free(y->attn_norm);
            free(y->ffn_norm);
            PtLinear *lins[] = {&y->q, &y->k, &y->v, &y->o, &y->q_a, &y->q_b, &y->kv_a, &y->kv_b, &y->mlp_gate,
                                &y->mlp_up, &y->mlp_down, &y->sh_gate, &y->sh_up, &y->sh_down};
            for (size_t i = 0; i < sizeof(lins) / sizeof(lins[0]); i++) linear_free(lins[i]);
            free(y->q_a_norm);
            free(y->kv_a_norm);
            free(y->router);
            free(y->router_bias);
            free(y->sh_expert_gate);
            if (y->experts)
                for (int e = 0; e < 3 * m->cfg.n_routed_experts; e++) linear_free(&y->experts[e]);
            free(y->experts);
        }
    }
    free(m->layers);
    if (m->cfg.tie_word_embeddings) memset(&m->lm_head, 0, sizeof(m->lm_head));
    linear_free(&m->embed);
    linear_free(&m->lm_head);
    free(m->final_norm);
    memset(m, 0, sizeof(*m));
}

// ---------------------------------------------------------------------------------------
// Forward building blocks

void pt_linear(const PtLinear *W, const float *x, int64_t n, float *y) {
    const int64_t rows = W->rows, cols = W->cols;
    if (n <= 0 || rows <= 0) return;
    if (W->kind == PT_W_NF4) {
        nf4_matmul(&W->nf4, x, n, y, W->bias);
        return;
    }
    if (W->kind == PT_W_F32) {
        gemm(0, 1, (int)n, (int)rows, (int)cols, 1.0f, x, (int)cols, W->f32, (int)cols, 0.0f, y, (int)rows);
    } else {  // bf16: convert a tile of rows, GEMM
        int64_t tile = (int64_t)((1 << 20) / (cols > 0 ? cols : 1));
        if (tile < 16) tile = 16;
        if (tile > rows) tile = rows;
        float *buf = (float *)malloc((size_t)(tile * cols + 1) * sizeof(float));
        if (!buf) {
            fprintf(stderr, "error: out of memory in pt_linear\n");
            exit(EXIT_FAILURE);
        }
        for (int64_t r0 = 0; r0 < rows; r0 += tile) {
            int64_t nr = rows - r0 < tile ? rows - r0 : tile;
#pragma omp parallel for schedule(static) if(nr * cols > PT_PAR_MIN)
            for (int64_t i = 0; i < nr * cols; i++) buf[i] = bf16_to_f32(W->bf16[r0 * cols + i]);
            gemm(0, 1, (int)n, (int)nr, (int)cols, 1.0f, x, (int)cols, buf, (int)cols, 0.0f, y + r0, (int)rows);
        }
        free(buf);
    }
    if (W->bias)
        for (int64_t i = 0; i < n; i++)
            for (int64_t r = 0; r < rows; r++) y[i * rows + r] += W->bias[r];
}

static void embed_row(const PtLinear *E, int64_t id, float *out) {
    const int64_t C = E->cols;
    if (E->kind == PT_W_F32) memcpy(out, E->f32 + id * C, (size_t)C * sizeof(float));
    else if (E->kind == PT_W_BF16)
        for (int64_t c = 0; c < C; c++) out[c] = bf16_to_f32(E->bf16[id * C + c]);
    else nf4_dequantize_range(&E->nf4, id * C, C, out);
}

// out (n, d) = rmsnorm(x (n, d)) * w, as HF: x * rsqrt(mean(x^2) + eps) in fp32, times w
static void rmsnorm(const float *x, const float *w, int64_t n, int64_t d, int64_t ldx, int64_t ldo, float eps,
                    float *out) {
#pragma omp parallel for schedule(static) if(n * d > PT_PAR_MIN)
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * ldx;
        float ss = 0;
        for (int64_t j = 0; j < d; j++) ss += xi[j] * xi[j];
        float r = 1.0f / sqrtf(ss / (float)d + eps);
        float *o = out + i * ldo;
        for (int64_t j = 0; j < d; j++) o[j] = w[j] * (xi[j] * r);
    }
}

static inline float silu(float x) { return x / (1.0f + expf(-x)); }

// rotate_half RoPE on one head vector v (d) at position pos (HF Llama style)
static void rope_half(float *v, int d, int pos, const float *inv_freq) {
    int h = d / 2;
    for (int i = 0; i < h; i++) {
        float ang = (float)pos * inv_freq[i];
        float c = cosf(ang), s = sinf(ang);
        float a = v[i], b = v[i + h];
        v[i] = a * c - b * s;
        v[i + h] = b * c + a * s;
    }
}

// interleaved-pairs RoPE (DeepSeek-V3): pair (2i, 2i+1) rotated by frequency i
static void rope_pairs(float *v, int d, int pos, const float *inv_freq) {
    for (int i = 0; i < d / 2; i++) {
        float ang = (float)pos * inv_freq[i];
        float c = cosf(ang), s = sinf(ang);
        float a = v[2 * i], b = v[2 * i + 1];
        v[2 * i] = a * c - b * s;
        v[2 * i + 1] = b * c + a * s;
    }
}

// Causal attention over ragged sequences. Token i's head h of q starts at q + i*ldq + h*hsq
// (dq values), of k at k + i*ldk + kvh*hsk (dq), of v at v + i*ldv + kvh*hsv (dv), kvh =
// h / (H / KVH); out (N, H, dv).
static void attention(const float *q, int64_t ldq, int64_t hsq, const float *k, int64_t ldk, int64_t hsk,
                      const float *v, int64_t ldv, int64_t hsv, const int64_t *seq_start, int n_seq, int H, int KVH,
                      int dq, int dv, float scale, float *out, int t_max) {
    int64_t N = seq_start[n_seq];
    int group = H / KVH;
#pragma omp parallel if(N * H * t_max * dq > PT_PAR_MIN)
    {
        float *sc = (float *)malloc((size_t)(t_max + 1) * sizeof(float));
#pragma omp for schedule(dynamic, 4)
        for (int64_t ih = 0; ih < N * H; ih++) {
            if (!sc) continue;
            int64_t i = ih / H;
            int h = (int)(ih % H);
            int s = 0;
            while (seq_start[s + 1] <= i) s++;  // sequences are few; linear scan is fine
            int64_t s0 = seq_start[s];
            int kvh = h / group;
            const float *qi = q + i * ldq + (int64_t)h * hsq;
            float mx = -FLT_MAX;
            for (int64_t j = s0; j <= i; j++) {
                const float *kj = k + j * ldk + (int64_t)kvh * hsk;
                float d = 0;
                for (int c = 0; c < dq; c++) d += qi[c] * kj[c];
                d *= scale;
                sc[j - s0] = d;
                if (d > mx) mx = d;
            }
            float sum = 0;
            for (int64_t j = s0; j <= i; j++) {
                sc[j - s0] = expf(sc[j - s0] - mx);
                sum += sc[j - s0];
            }
            float inv = 1.0f / sum;
            float *o = out + i * (int64_t)H * dv + (int64_t)h * dv;
            for (int c = 0; c < dv; c++) o[c] = 0;
            for (int64_t j = s0; j <= i; j++) {
                const float *vj = v + j * ldv + (int64_t)kvh * hsv;
                float p = sc[j - s0] * inv;
                for (int c = 0; c < dv; c++) o[c] += p * vj[c];
            }
        }
        free(sc);
    }
}

// top-k of v (n) into idx (k), descending, ties to the lower index; -INF entries allowed
static void topk(const float *v, int n, int k, int32_t *idx) {
    for (int j = 0; j < k; j++) idx[j] = -1;
    for (int e = 0; e < n; e++) {
        float x = v[e];
        int pos = k;
        while (pos > 0 && (idx[pos - 1] < 0 || x > v[idx[pos - 1]])) pos--;
        if (pos >= k) continue;
        for (int j = k - 1; j > pos; j--) idx[j] = idx[j - 1];
        idx[pos] = e;
    }
}

void pt_route(const PtModel *m, int l, const float *logits, int32_t *ids, float *w) {
    const PtConfig *c = &m->cfg;
    const PtLayer *y = &m->layers[l];
    const int E = c->n_routed_experts, K = c->top_k;
    float scores[4096], choice[4096];
    if (c->score_func == PT_SCORE_SOFTMAX) {
        float mx = -FLT_MAX;
        for (int e = 0; e < E; e++) mx = logits[e] > mx ? logits[e] : mx;
        float s = 0;
        for (int e = 0; e < E; e++) s += (scores[e] = expf(logits[e] - mx));
        for (int e = 0; e < E; e++) scores[e] /= s;
    } else {
        for (int e = 0; e < E; e++) scores[e] = 1.0f / (1.0f + expf(-logits[e]));
    }
    for (int e = 0; e < E; e++) choice[e] = scores[e] + (y->router_bias ? y->router_bias[e] : 0.0f);
    if (c->arch == PT_DEEPSEEK_V3 && c->n_group > 1) {
        int G = c->n_group, per = E / G;
        float gs[256];
        // group score: sum of the top-2 biased scores; the max score when the checkpoint has
        // no e_score_correction_bias (DeepSeek-V3 inference/model.py: bias None -> amax)
        for (int g = 0; g < G; g++) {
            float a = -FLT_MAX, b = -FLT_MAX;
            for (int e = g * per; e < (g + 1) * per; e++) {
                float x = choice[e];
                if (x > a) { b = a; a = x; } else if (x > b) b = x;
            }
            gs[g] = per >= 2 && y->router_bias ? a + b : a;
        }
        int32_t keep[256];
        topk(gs, G, c->topk_group, keep);
        char kept[256] = {0};
        for (int j = 0; j < c->topk_group; j++) kept[keep[j]] = 1;
        for (int g = 0; g < G; g++)
            if (!kept[g])
                for (int e = g * per; e < (g + 1) * per; e++) choice[e] = -INFINITY;
    }
    topk(choice, E, K, ids);
    float sum = 0;
    for (int j = 0; j < K; j++) sum += (w[j] = scores[ids[j]]);
    int renorm = c->norm_topk_prob && (c->arch == PT_QWEN2_MOE || K > 1);
    if (renorm) {
        float den = c->arch == PT_QWEN2_MOE ? sum : sum + 1e-20f;
        for (int j = 0; j < K; j++) w[j] /= den;
    }
    for (int j = 0; j < K; j++) w[j] *= c->routed_scaling_factor;
}

int pt_routing_alloc(PtRouting *r, const PtModel *m, int64_t n_tok, int keep_logits, MoeErr *err) {
    memset(r, 0, sizeof(*r));
    const PtConfig *c = &m->cfg;
    r->K = c->top_k;
    r->E = c->n_routed_experts;
    r->n_tok = n_tok;
    for (int l = 0; l < c->n_layers; l++)
        if (c->is_moe[l]) r->moe_block[r->n_moe++] = l;
    size_t nk = (size_t)r->n_moe * (size_t)n_tok * (size_t)r->K + 1;
    r->ids = (int32_t *)malloc(nk * sizeof(int32_t));
    r->w = (float *)malloc(nk * sizeof(float));
    r->reuse = (int32_t *)malloc(nk * sizeof(int32_t));
    if (keep_logits) r->gate_logits = (float *)malloc(((size_t)r->n_moe * (size_t)n_tok * (size_t)r->E + 1) * sizeof(float));
    if (!r->ids || !r->w || !r->reuse || (keep_logits && !r->gate_logits)) {
        pt_routing_free(r);
        return moe_err_set(err, "out of memory for the routing record of %lld tokens", (long long)n_tok);
    }
    return 0;
}

void pt_routing_free(PtRouting *r) {
    free(r->ids);
    free(r->w);
    free(r->reuse);
    free(r->gate_logits);
    memset(r, 0, sizeof(*r));
}

// ---------------------------------------------------------------------------------------
// Forward

typedef struct {
    float *x;      // (N, C) residual stream
    float *xn;     // (N, C) normed
    float *tmp;    // (N, C)
    float *q, *k, *v, *ao;  // attention
    float *qa, *kva, *ckv;  // MLA
    float *h1, *h3;         // (N, wide)
    float *logits;          // (N, E)
    float *y;               // (N, C) FFN output
    int32_t *sel;           // (N, K)
    float *selw;            // (N, K)
    int64_t *order;         // (N * K) token of each assignment, grouped by expert
    int64_t *eoff, *fill;   // (E + 1)
    float *par_buf;         // experts in parallel: per thread [xe, ye, acc (N, C) | h1, h3 (N, Ie)], or NULL
    int par_threads;
    float *xe, *he1, *he3, *ye;  // gathered expert rows
} Work;

static void swiglu_mlp(const PtLinear *g, const PtLinear *u, const PtLinear *d, const float *x, int64_t n, float *h1,
                       float *h3, float *y) {
    pt_linear(g, x, n, h1);
    pt_linear(u, x, n, h3);
    int64_t w = g->rows;
#pragma omp parallel for schedule(static) if(n * w > PT_PAR_MIN)
    for (int64_t i = 0; i < n * w; i++) h1[i] = silu(h1[i]) * h3[i];
    pt_linear(d, h1, n, y);
}

static void attn_block(PtModel *m, const PtLayer *y, Work *w, const int64_t *seq_start, int n_seq, int t_max) {
    const PtConfig *c = &m->cfg;
    const int64_t N = seq_start[n_seq];
    const int H = c->n_heads;
    if (c->arch != PT_DEEPSEEK_V3) {
        const int hd = c->head_dim, KVH = c->n_kv_heads;
        pt_linear(&y->q, w->xn, N, w->q);
        pt_linear(&y->k, w->xn, N, w->k);
        pt_linear(&y->v, w->xn, N, w->v);
#pragma omp parallel for schedule(static) if(N * H * hd > PT_PAR_MIN)
        for (int64_t i = 0; i < N; i++) {
            int s = 0;
            while (seq_start[s + 1] <= i) s++;
            int pos = (int)(i - seq_start[s]);
            for (int h = 0; h < H; h++) rope_half(w->q + (i * H + h) * hd, hd, pos, m->rope_inv_freq);
            for (int h = 0; h < KVH; h++) rope_half(w->k + (i * KVH + h) * hd, hd, pos, m->rope_inv_freq);
        }
        attention(w->q, (int64_t)H * hd, hd, w->k, (int64_t)KVH * hd, hd, w->v, (int64_t)KVH * hd, hd, seq_start, n_seq,
                  H, KVH, hd, hd, 1.0f / sqrtf((float)hd), w->ao, t_max);
    } else {
        const int nope = c->qk_nope_head_dim, rope = c->qk_rope_head_dim, dv = c->v_head_dim, dq = nope + rope;
        const int kvr = c->kv_lora_rank;
        if (c->q_lora_rank > 0) {
            pt_linear(&y->q_a, w->xn, N, w->qa);
            rmsnorm(w->qa, y->q_a_norm, N, c->q_lora_rank, c->q_lora_rank, c->q_lora_rank, c->rms_norm_eps, w->qa);
            pt_linear(&y->q_b, w->qa, N, w->q);
        } else {
            pt_linear(&y->q, w->xn, N, w->q);
        }
        pt_linear(&y->kv_a, w->xn, N, w->kva);  // (N, kvr + rope): [c_kv, k_pe]
        rmsnorm(w->kva, y->kv_a_norm, N, kvr, kvr + rope, kvr, c->rms_norm_eps, w->ckv);
        pt_linear(&y->kv_b, w->ckv, N, w->v);  // (N, H, nope + dv)
        // per-head keys (N, H, dq) = [k_nope, k_pe shared by all heads] into w->k
        float *kf = w->k;
#pragma omp parallel for schedule(static) if(N * H * dq > PT_PAR_MIN)
        for (int64_t i = 0; i < N; i++) {
            int s = 0;
            while (seq_start[s + 1] <= i) s++;
            int pos = (int)(i - seq_start[s]);
            float *kpe = w->kva + i * (kvr + rope) + kvr;
            rope_pairs(kpe, rope, pos, m->rope_inv_freq);
            for (int h = 0; h < H; h++) {
                float *qh = w->q + (i * H + h) * dq;
                rope_pairs(qh + nope, rope, pos, m->rope_inv_freq);
                const float *kvh = w->v + (i * H + h) * (nope + dv);
                float *kh = kf + (i * H + h) * dq;
                memcpy(kh, kvh, (size_t)nope * sizeof(float));
                memcpy(kh + nope, kpe, (size_t)rope * sizeof(float));
            }
        }
        // values: a strided view of w->v (per head [k_nope, v])
        attention(w->q, (int64_t)H * dq, dq, kf, (int64_t)H * dq, dq, w->v + nope, (int64_t)H * (nope + dv), nope + dv,
                  seq_start, n_seq, H, H, dq, dv, 1.0f / sqrtf((float)dq), w->ao, t_max);
    }
    pt_linear(&y->o, w->ao, N, w->tmp);
}

// MoE FFN of layer l on w->xn (N, C) -> w->y; routing of the N tokens into sel/selw
static void moe_block(PtModel *m, int l, Work *w, int64_t N, float *gate_logits_out) {
    const PtConfig *c = &m->cfg;
    const PtLayer *y = &m->layers[l];
    const int E = c->n_routed_experts, K = c->top_k;
    const int64_t C = c->hidden_size;
    gemm(0, 1, (int)N, E, (int)C, 1.0f, w->xn, (int)C, y->router, (int)C, 0.0f, w->logits, E);
    if (gate_logits_out) memcpy(gate_logits_out, w->logits, (size_t)(N * E) * sizeof(float));
#pragma omp parallel for schedule(static) if(N * E > PT_PAR_MIN / 16)
    for (int64_t i = 0; i < N; i++) pt_route(m, l, w->logits + i * E, w->sel + i * K, w->selw + i * K);
    // group assignments by expert (counting sort, deterministic order)
    for (int e = 0; e <= E; e++) w->eoff[e] = 0;
    for (int64_t a = 0; a < N * K; a++) w->eoff[w->sel[a] + 1]++;
    for (int e = 0; e < E; e++) w->eoff[e + 1] += w->eoff[e];
    int64_t *fill = w->fill;
    memcpy(fill, w->eoff, (size_t)(E + 1) * sizeof(int64_t));
    for (int64_t a = 0; a < N * K; a++) w->order[fill[w->sel[a]]++] = a;
    memset(w->y, 0, (size_t)(N * C) * sizeof(float));
    if (w->par_buf) {
        // experts in parallel, one thread each (the GEMMs inside run single-threaded): one
        // OpenMP region per layer instead of several per expert; each thread accumulates into
        // its own (N, C) buffer, summed afterwards (deterministic for a given thread count)
        const int64_t Ie = c->moe_intermediate_size, per = N * (3 * C + 2 * Ie);
        const int nthr = w->par_threads;
#pragma omp parallel num_threads(nthr)
        {
            int t = omp_get_thread_num();
            float *xe = w->par_buf + (size_t)t * per, *ye = xe + N * C, *acc = ye + N * C, *h1 = acc + N * C,
                  *h3 = h1 + N * Ie;
            memset(acc, 0, (size_t)(N * C) * sizeof(float));
#pragma omp for schedule(static, 1)
            for (int e = 0; e < E; e++) {
                int64_t n = w->eoff[e + 1] - w->eoff[e];
                if (n == 0) continue;
                const int64_t *ord = w->order + w->eoff[e];
                for (int64_t r = 0; r < n; r++) memcpy(xe + r * C, w->xn + (ord[r] / K) * C, (size_t)C * sizeof(float));
                swiglu_mlp(&y->experts[3 * e], &y->experts[3 * e + 1], &y->experts[3 * e + 2], xe, n, h1, h3, ye);
                for (int64_t r = 0; r < n; r++) {
                    float wt = w->selw[ord[r]];
                    float *dst = acc + (ord[r] / K) * C;
                    const float *src = ye + r * C;
                    for (int64_t j = 0; j < C; j++) dst[j] += wt * src[j];
                }
            }
#pragma omp for schedule(static)
            for (int64_t i = 0; i < N; i++)
                for (int u = 0; u < nthr; u++) {
                    const float *src = w->par_buf + (size_t)u * per + 2 * N * C + i * C;
                    float *dst = w->y + i * C;
                    for (int64_t j = 0; j < C; j++) dst[j] += src[j];
                }
        }
    }
    for (int e = 0; e < E && !w->par_buf; e++) {
        int64_t n = w->eoff[e + 1] - w->eoff[e];
        if (n == 0) continue;
        const int64_t *ord = w->order + w->eoff[e];
#pragma omp parallel for schedule(static) if(n * C > PT_PAR_MIN)
        for (int64_t r = 0; r < n; r++) memcpy(w->xe + r * C, w->xn + (ord[r] / K) * C, (size_t)C * sizeof(float));
        swiglu_mlp(&y->experts[3 * e], &y->experts[3 * e + 1], &y->experts[3 * e + 2], w->xe, n, w->he1, w->he3, w->ye);
        // accumulate in assignment order per token: tokens are distinct within one expert
#pragma omp parallel for schedule(static) if(n * C > PT_PAR_MIN)
        for (int64_t r = 0; r < n; r++) {
            int64_t a = ord[r];
            float wt = w->selw[a];
            float *dst = w->y + (a / K) * C;
            const float *src = w->ye + r * C;
            for (int64_t j = 0; j < C; j++) dst[j] += wt * src[j];
        }
    }
    if (y->sh_gate.rows > 0) {
        swiglu_mlp(&y->sh_gate, &y->sh_up, &y->sh_down, w->xn, N, w->h1, w->h3, w->tmp);
#pragma omp parallel for schedule(static) if(N * C > PT_PAR_MIN / 4)
        for (int64_t i = 0; i < N; i++) {
            float g = 1.0f;
            if (y->sh_expert_gate) {
                float d = 0;
                for (int64_t j = 0; j < C; j++) d += y->sh_expert_gate[j] * w->xn[i * C + j];
                g = 1.0f / (1.0f + expf(-d));
            }
            for (int64_t j = 0; j < C; j++) w->y[i * C + j] += g * w->tmp[i * C + j];
        }
    }
}

// gate reuse: route the state s (N, C) with MoE layer l2's norm + gate -> ids (N, K)
static void reuse_predict(PtModel *m, int l2, const float *s, int64_t N, Work *w, int32_t *ids) {
    const PtConfig *c = &m->cfg;
    const PtLayer *y = &m->layers[l2];
    const int E = c->n_routed_experts, K = c->top_k;
    const int64_t C = c->hidden_size;
    rmsnorm(s, y->ffn_norm, N, C, C, C, c->rms_norm_eps, w->xe);  // xe (N*K, C) is big enough
    gemm(0, 1, (int)N, E, (int)C, 1.0f, w->xe, (int)C, y->router, (int)C, 0.0f, w->logits, E);
#pragma omp parallel for schedule(static) if(N * E > PT_PAR_MIN / 16)
    for (int64_t i = 0; i < N; i++) {
        float wt[PT_MAX_K];
        pt_route(m, l2, w->logits + i * E, ids + i * K, wt);
    }
}

int pt_forward(PtModel *m, const int32_t *tokens, const int64_t *seq_start, int n_seq, float *logits,
               PtRouting *routing, int reuse_mode, MoeErr *err) {
    const PtConfig *c = &m->cfg;
    const int64_t N = seq_start[n_seq], C = c->hidden_size, V = c->vocab_size;
    const int H = c->n_heads, E = c->n_routed_experts, K = c->top_k;
    if (N <= 0) return 0;
    if (K > PT_MAX_K || E > PT_MAX_EXPERTS) return moe_err_set(err, "top-K %d or experts %d too large", K, E);
    int t_max = 0;
    for (int s = 0; s < n_seq; s++) {
        if (seq_start[s + 1] < seq_start[s]) return moe_err_set(err, "sequence %d has negative length", s);
        int len = (int)(seq_start[s + 1] - seq_start[s]);
        if (len > t_max) t_max = len;
    }
    for (int64_t i = 0; i < N; i++)
        if (tokens[i] < 0 || tokens[i] >= V)
            return moe_err_set(err, "token id %d at position %lld outside the vocabulary (%lld)", tokens[i], (long long)i,
                               (long long)V);
    if (routing && routing->n_tok < N) return moe_err_set(err, "routing record holds %lld tokens, need %lld",
                                                          (long long)routing->n_tok, (long long)N);
    int64_t qd = pt_q_head_dim(c), vd = pt_v_head_dim(c);
    int64_t wide = c->intermediate_size;
    if (pt_shared_width(c) > wide) wide = pt_shared_width(c);
    int64_t kvw = c->arch == PT_DEEPSEEK_V3 ? (int64_t)H * (c->qk_nope_head_dim + c->v_head_dim) : (int64_t)c->n_kv_heads * vd;
    Work w;
    memset(&w, 0, sizeof(w));
    int64_t NK = N * K;
    w.x = (float *)malloc((size_t)(N * C) * sizeof(float));
    w.xn = (float *)malloc((size_t)(N * C) * sizeof(float));
    w.tmp = (float *)malloc((size_t)(N * C) * sizeof(float));
    w.y = (float *)malloc((size_t)(N * C) * sizeof(float));
    w.q = (float *)malloc((size_t)(N * H * qd) * sizeof(float));
    w.k = (float *)malloc((size_t)(N * (c->arch == PT_DEEPSEEK_V3 ? H * qd : c->n_kv_heads * qd)) * sizeof(float));
    w.v = (float *)malloc((size_t)(N * kvw) * sizeof(float));
    w.ao = (float *)malloc((size_t)(N * H * vd) * sizeof(float));
    if (c->arch == PT_DEEPSEEK_V3) {
        w.qa = (float *)malloc((size_t)(N * (c->q_lora_rank + 1)) * sizeof(float));
        w.kva = (float *)malloc((size_t)(N * (c->kv_lora_rank + c->qk_rope_head_dim)) * sizeof(float));
        w.ckv = (float *)malloc((size_t)(N * c->kv_lora_rank) * sizeof(float));
    }
    w.h1 = (float *)malloc((size_t)(N * wide) * sizeof(float));
    w.h3 = (float *)malloc((size_t)(N * wide) * sizeof(float));
    w.logits = (float *)malloc((size_t)(N * E) * sizeof(float));
    w.sel = (int32_t *)malloc((size_t)NK * sizeof(int32_t));
    w.selw = (float *)malloc((size_t)NK * sizeof(float));
    w.order = (int64_t *)malloc((size_t)NK * sizeof(int64_t));
    w.eoff = (int64_t *)malloc((size_t)(E + 1) * sizeof(int64_t));
    w.fill = (int64_t *)malloc((size_t)(E + 1) * sizeof(int64_t));
    int64_t rows_e = N;  // experts run one at a time and each sees every token at most once
    w.xe = (float *)malloc((size_t)(rows_e * C) * sizeof(float));
    w.he1 = (float *)malloc((size_t)(rows_e * c->moe_intermediate_size) * sizeof(float));
    w.he3 = (float *)malloc((size_t)(rows_e * c->moe_intermediate_size) * sizeof(float));
    w.ye = (float *)malloc((size_t)(rows_e * C) * sizeof(float));
    // experts in parallel when there are enough of them for the threads (fewer, larger
    // OpenMP regions: what a loaded 2-core machine needs); else each expert's GEMMs in parallel
    int nthr = omp_get_max_threads();
    if (nthr > 1 && E >= 2 * nthr && c->n_moe_layers > 0 && !getenv("PT_NO_EXPERT_PARALLEL")) {
        size_t per = (size_t)N * (size_t)(3 * C + 2 * c->moe_intermediate_size);
        w.par_buf = (float *)malloc(per * (size_t)nthr * sizeof(float));
        w.par_threads = nthr;  // NULL on failure: the per-expert path needs no extra memory
    }
    int rc = 0;
    if (!w.x || !w.xn || !w.tmp || !w.y || !w.q || !w.k || !w.v || !w.ao || !w.h1 || !w.h3 || !w.logits || !w.sel ||
        !w.selw || !w.order || !w.eoff || !w.fill || !w.xe || !w.he1 || !w.he3 || !w.ye ||
        (c->arch == PT_DEEPSEEK_V3 && (!w.qa || !w.kva || !w.ckv))) {
        rc = moe_err_set(err, "out of memory for the activations of %lld tokens (%.1f MB planned)", (long long)N,
                         (double)pt_work_bytes(c, N, t_max) / 1e6);
        goto done;
    }
#pragma omp parallel for schedule(static) if(N * C > PT_PAR_MIN)
    for (int64_t i = 0; i < N; i++) embed_row(&m->embed, tokens[i], w.x + i * C);
    int mi = 0;  // MoE layer index
    for (int l = 0; l < c->n_layers; l++) {
        const PtLayer *y = &m->layers[l];
        rmsnorm(w.x, y->attn_norm, N, C, C, C, c->rms_norm_eps, w.xn);
        attn_block(m, y, &w, seq_start, n_seq, t_max);
#pragma omp parallel for schedule(static) if(N * C > PT_PAR_MIN)
        for (int64_t i = 0; i < N * C; i++) w.x[i] += w.tmp[i];
        // the next MoE layer after l (for gate reuse)
        int l2 = -1;
        for (int j = l + 1; j < c->n_layers && l2 < 0; j++)
            if (c->is_moe[j]) l2 = j;
        if (y->is_moe && routing && reuse_mode == PT_REUSE_MID) {
            if (l2 >= 0) reuse_predict(m, l2, w.x, N, &w, routing->reuse + (size_t)mi * N * K);
            else for (int64_t a = 0; a < N * K; a++) routing->reuse[(size_t)mi * N * K + a] = -1;
        }
        rmsnorm(w.x, y->ffn_norm, N, C, C, C, c->rms_norm_eps, w.xn);
        if (!y->is_moe) {
            swiglu_mlp(&y->mlp_gate, &y->mlp_up, &y->mlp_down, w.xn, N, w.h1, w.h3, w.y);
        } else {
            float *gl = routing && routing->gate_logits ? routing->gate_logits + (size_t)mi * N * E : NULL;
            moe_block(m, l, &w, N, gl);
            if (routing) {
                memcpy(routing->ids + (size_t)mi * N * K, w.sel, (size_t)NK * sizeof(int32_t));
                memcpy(routing->w + (size_t)mi * N * K, w.selw, (size_t)NK * sizeof(float));
            }
        }
#pragma omp parallel for schedule(static) if(N * C > PT_PAR_MIN)
        for (int64_t i = 0; i < N * C; i++) w.x[i] += w.y[i];
        if (y->is_moe && routing && reuse_mode == PT_REUSE_OUT) {
            if (l2 >= 0) reuse_predict(m, l2, w.x, N, &w, routing->reuse + (size_t)mi * N * K);
            else for (int64_t a = 0; a < N * K; a++) routing->reuse[(size_t)mi * N * K + a] = -1;
        }
        if (y->is_moe) mi++;
    }
    if (logits) {
        rmsnorm(w.x, m->final_norm, N, C, C, C, c->rms_norm_eps, w.xn);
        pt_linear(&m->lm_head, w.xn, N, logits);
    }
done:
    free(w.x); free(w.xn); free(w.tmp); free(w.y); free(w.q); free(w.k); free(w.v); free(w.ao);
    free(w.qa); free(w.kva); free(w.ckv); free(w.h1); free(w.h3); free(w.logits); free(w.sel); free(w.selw);
    free(w.order); free(w.eoff); free(w.fill); free(w.par_buf); free(w.xe); free(w.he1); free(w.he3); free(w.ye);
    return rc;
}
