// Tests of pretrained/: config.json reading (every model_type, missing fields, unsupported
// values), the memory plan of the real DeepSeek-MoE-16B / Qwen1.5-MoE-A2.7B configs, and the
// forward pass of tiny random models of every model_type written as real safetensors +
// config.json, against a plain double-precision reference computation written here
// (fp32 mode: ~1e-5; NF4 mode: the same reference on the dequantized weights; NF4 vs fp32
// drift bounded), routing records equal to a top-K recomputed from the gate logits, the
// gate-reuse prediction recomputed from the reference's hidden states, sharded and
// bitsandbytes-saved checkpoints, and bad inputs.
#include <float.h>
#include <unistd.h>

#include "../pretrained/ptmodel.h"
#include "../speculate/trace.h"
#include "../pretrained/tiny.h"
#include "test.h"

static char tmpdir[256];
static int g_reuse_mode = PT_REUSE_MID;  // which state the gate-reuse prediction reads

// ---------------------------------------------------------------------------------------
// Real configs (as published on the Hugging Face hub)

static const char *DEEPSEEK_MOE_16B_CONFIG =
    "{\"architectures\": [\"DeepseekForCausalLM\"], \"attention_bias\": false, \"attention_dropout\": 0.0,"
    " \"auto_map\": {\"AutoConfig\": \"configuration_deepseek.DeepseekConfig\","
    " \"AutoModel\": \"modeling_deepseek.DeepseekModel\", \"AutoModelForCausalLM\": \"modeling_deepseek.DeepseekForCausalLM\"},"
    " \"aux_loss_alpha\": 0.001, \"bos_token_id\": 100000, \"eos_token_id\": 100001, \"first_k_dense_replace\": 1,"
    " \"hidden_act\": \"silu\", \"hidden_size\": 2048, \"initializer_range\": 0.02, \"intermediate_size\": 10944,"
    " \"max_position_embeddings\": 4096, \"model_type\": \"deepseek\", \"moe_intermediate_size\": 1408,"
    " \"moe_layer_freq\": 1, \"n_routed_experts\": 64, \"n_shared_experts\": 2, \"norm_topk_prob\": false,"
    " \"num_attention_heads\": 16, \"num_experts_per_tok\": 6, \"num_hidden_layers\": 28, \"num_key_value_heads\": 16,"
    " \"pretraining_tp\": 1, \"rms_norm_eps\": 1e-06, \"rope_scaling\": null, \"rope_theta\": 10000,"
    " \"scoring_func\": \"softmax\", \"seq_aux\": true, \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\","
    " \"transformers_version\": \"4.36.0\", \"use_cache\": true, \"vocab_size\": 102400}";

static const char *QWEN15_MOE_CONFIG =
    "{\"architectures\": [\"Qwen2MoeForCausalLM\"], \"attention_dropout\": 0.0, \"bos_token_id\": 151643,"
    " \"eos_token_id\": 151643, \"hidden_act\": \"silu\", \"hidden_size\": 2048, \"initializer_range\": 0.02,"
    " \"intermediate_size\": 5632, \"max_position_embeddings\": 8192, \"max_window_layers\": 21,"
    " \"model_type\": \"qwen2_moe\", \"num_attention_heads\": 16, \"num_hidden_layers\": 24,"
    " \"num_key_value_heads\": 16, \"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0, \"sliding_window\": 32768,"
    " \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\", \"transformers_version\": \"4.39.0.dev0\","
    " \"use_cache\": true, \"use_sliding_window\": false, \"vocab_size\": 151936, \"decoder_sparse_step\": 1,"
    " \"moe_intermediate_size\": 1408, \"shared_expert_intermediate_size\": 5632, \"num_experts_per_tok\": 4,"
    " \"num_experts\": 60, \"norm_topk_prob\": false, \"output_router_logits\": false, \"router_aux_loss_coef\": 0.001}";

// ---------------------------------------------------------------------------------------
// Reference forward (double precision, one sequence at a time, written independently of
// pretrained/ptmodel.c; reads the weights straight from the safetensors files)

typedef struct {
    StModel st;
    PtConfig c;
    int nf4;  // use NF4 round-tripped weights for the projections (as the NF4 loader does)
    int dq;
} Ref;

// tensor as fp32 (malloc'd); quant: this weight is quantized by the NF4 loader
static float *ref_get(Ref *r, int quant, const char *fmt, ...) {
    char name[400], prefix[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof(name), fmt, ap);
    va_end(ap);
    MoeErr err;
    const StTensor *t = st_model_find(&r->st, name);
    snprintf(prefix, sizeof(prefix), "%s", name);
    char *dot = strrchr(prefix, '.');
    if (dot && strcmp(dot, ".weight") == 0) *dot = 0;
    if (quant && nf4_is_bnb(&r->st, prefix)) {  // bitsandbytes saved form
        const StTensor *q = st_model_find(&r->st, name);
        char qs[500];
        snprintf(qs, sizeof(qs), "%s.quant_state.bitsandbytes__nf4", name);
        const StTensor *js = st_model_find(&r->st, qs);
        // shape from the quant state JSON: "shape": [rows, cols]
        long long rows = 0, cols = 0;
        const char *sp = strstr((const char *)js->data, "\"shape\": [");
        if (!sp || sscanf(sp, "\"shape\": [%lld, %lld]", &rows, &cols) != 2 || !q) {
            fprintf(stderr, "reference: bad quant state for %s\n", name);
            exit(1);
        }
        Nf4Tensor t4;
        if (nf4_from_bnb(&t4, &r->st, prefix, rows, cols, &err) != 0) {
            fprintf(stderr, "reference: %s\n", err.msg);
            exit(1);
        }
        float *v = (float *)mallocCheck((size_t)(rows * cols) * sizeof(float));
        nf4_dequantize(&t4, v);
        nf4_free(&t4);
        return v;
    }
    if (!t) {
        fprintf(stderr, "reference: missing %s\n", name);
        exit(1);
    }
    float *v = (float *)mallocCheck((size_t)(t->numel + 1) * sizeof(float));
    if (st_read_f32(t, 0, t->numel, v, &err) != 0) {
        fprintf(stderr, "reference: %s\n", err.msg);
        exit(1);
    }
    if (quant && r->nf4) {
        Nf4Tensor t4;
        nf4_quantize(&t4, v, t->shape[0], t->shape[1], NF4_BLOCK, r->dq, &err);
        nf4_dequantize(&t4, v);
        nf4_free(&t4);
    }
    return v;
}

// y (rows) = W (rows, cols) x (cols) [+ b]
static void ref_mv(const float *W, const float *b, const double *x, int rows, int cols, double *y) {
    for (int r = 0; r < rows; r++) {
        double s = b ? b[r] : 0;
        for (int c = 0; c < cols; c++) s += (double)W[(size_t)r * cols + c] * x[c];
        y[r] = s;
    }
}

static void ref_rms(const double *x, const float *w, int n, double eps, double *o) {
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double r = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++) o[i] = x[i] * r * w[i];
}

static double ref_silu(double x) { return x / (1.0 + exp(-x)); }

// inverse frequency as transformers computes it (fp32), angle and cos/sin in double
static double ref_angle(int pos, int i, int d, double theta) {
    float invf = 1.0f / powf((float)theta, (float)(2 * i) / (float)d);
    return (double)((float)pos * invf);
}

// independent router: scores, (bias), groups, top-K by a full sort (ties: lower index)
static void ref_route(const PtConfig *c, const double *logit, const float *bias, int *ids, double *w) {
    int E = c->n_routed_experts, K = c->top_k;
    double s[256], ch[256];
    if (c->score_func == PT_SCORE_SOFTMAX) {
        double mx = -1e300, z = 0;
        for (int e = 0; e < E; e++) mx = fmax(mx, logit[e]);
        for (int e = 0; e < E; e++) z += exp(logit[e] - mx);
        for (int e = 0; e < E; e++) s[e] = exp(logit[e] - mx) / z;
    } else {
        for (int e = 0; e < E; e++) s[e] = 1.0 / (1.0 + exp(-logit[e]));
    }
    for (int e = 0; e < E; e++) ch[e] = s[e] + (bias ? bias[e] : 0);
    if (c->arch == PT_DEEPSEEK_V3 && c->n_group > 1) {
        int G = c->n_group, per = E / G;
        double gs[64];
        int order[64];
        for (int g = 0; g < G; g++) {
            double v[64];
            for (int j = 0; j < per; j++) v[j] = ch[g * per + j];
            for (int a = 0; a < per; a++)  // sort descending
                for (int b2 = a + 1; b2 < per; b2++)
                    if (v[b2] > v[a]) { double t = v[a]; v[a] = v[b2]; v[b2] = t; }
            gs[g] = v[0] + (per > 1 && bias ? v[1] : 0);  // max without a correction bias
            order[g] = g;
        }
        for (int a = 0; a < G; a++)
            for (int b2 = a + 1; b2 < G; b2++)
                if (gs[order[b2]] > gs[order[a]] || (gs[order[b2]] == gs[order[a]] && order[b2] < order[a])) {
                    int t = order[a]; order[a] = order[b2]; order[b2] = t;
                }
        for (int a = c->topk_group; a < G; a++)
            for (int j = 0; j < per; j++) ch[order[a] * per + j] = -1e300;
    }
    int idx[256];
    for (int e = 0; e < E; e++) idx[e] = e;
    for (int a = 0; a < E; a++)
        for (int b2 = a + 1; b2 < E; b2++)
            if (ch[idx[b2]] > ch[idx[a]] || (ch[idx[b2]] == ch[idx[a]] && idx[b2] < idx[a])) {
                int t = idx[a]; idx[a] = idx[b2]; idx[b2] = t;
            }
    double sum = 0;
    for (int k = 0; k < K; k++) {
        ids[k] = idx[k];
        w[k] = s[idx[k]];
        sum += w[k];
    }
    if (c->norm_topk_prob && (K > 1 || c->arch == PT_QWEN2_MOE))
        for (int k = 0; k < K; k++) w[k] /= sum + (c->arch == PT_QWEN2_MOE ? 0 : 1e-20);
    for (int k = 0; k < K; k++) w[k] *= c->routed_scaling_factor;
}

typedef struct {
    double *logits;  // (T, V)
    int *ids;        // (n_moe, T, K)
    double *w;       // (n_moe, T, K)
    int *reuse;      // (n_moe, T, K) next MoE layer's routing of the state entering this MoE FFN
    double *glog;    // (n_moe, T, E)
} RefOut;

static void ref_swiglu(Ref *r, const char *prefix, int width, const double *x, double *y) {
    const int C = r->c.hidden_size;
    float *g = ref_get(r, 1, "%s.gate_proj.weight", prefix), *u = ref_get(r, 1, "%s.up_proj.weight", prefix);
    float *d = ref_get(r, 1, "%s.down_proj.weight", prefix);
    double *h1 = (double *)mallocCheck(sizeof(double) * width), *h3 = (double *)mallocCheck(sizeof(double) * width);
    ref_mv(g, NULL, x, width, C, h1);
    ref_mv(u, NULL, x, width, C, h3);
    for (int i = 0; i < width; i++) h1[i] = ref_silu(h1[i]) * h3[i];
    ref_mv(d, NULL, h1, C, width, y);
    free(g); free(u); free(d); free(h1); free(h3);
}

static void ref_forward(Ref *r, const int32_t *tok, int T, RefOut *out) {
    const PtConfig *c = &r->c;
    const int C = c->hidden_size, V = c->vocab_size, H = c->n_heads, E = c->n_routed_experts, K = c->top_k;
    int n_moe = c->n_moe_layers;
    double *x = (double *)calloc((size_t)T * C, sizeof(double));
    double *mid = (double *)calloc((size_t)c->n_layers * T * C, sizeof(double));
    float *emb = ref_get(r, 0, "model.embed_tokens.weight");
    for (int t = 0; t < T; t++)
        for (int j = 0; j < C; j++) x[t * C + j] = emb[(size_t)tok[t] * C + j];
    free(emb);
    int mi = 0;
    for (int l = 0; l < c->n_layers; l++) {
        char p[100];
        snprintf(p, sizeof(p), "model.layers.%d", l);
        float *n1 = ref_get(r, 0, "%s.input_layernorm.weight", p);
        int qd = pt_q_head_dim(c), vd = pt_v_head_dim(c), KVH = c->arch == PT_DEEPSEEK_V3 ? H : c->n_kv_heads;
        double *Q = (double *)calloc((size_t)T * H * qd, sizeof(double));
        double *Kk = (double *)calloc((size_t)T * KVH * qd, sizeof(double));
        double *Vv = (double *)calloc((size_t)T * KVH * vd, sizeof(double));
        double *xn = (double *)calloc(C, sizeof(double));
        for (int t = 0; t < T; t++) {
            ref_rms(x + t * C, n1, C, c->rms_norm_eps, xn);
            if (c->arch != PT_DEEPSEEK_V3) {
                float *wq = ref_get(r, 1, "%s.self_attn.q_proj.weight", p), *wk = ref_get(r, 1, "%s.self_attn.k_proj.weight", p);
                float *wv = ref_get(r, 1, "%s.self_attn.v_proj.weight", p);
                float *bq = c->attn_qkv_bias ? ref_get(r, 0, "%s.self_attn.q_proj.bias", p) : NULL;
                float *bk = c->attn_qkv_bias ? ref_get(r, 0, "%s.self_attn.k_proj.bias", p) : NULL;
                float *bv = c->attn_qkv_bias ? ref_get(r, 0, "%s.self_attn.v_proj.bias", p) : NULL;
                ref_mv(wq, bq, xn, H * qd, C, Q + (size_t)t * H * qd);
                ref_mv(wk, bk, xn, KVH * qd, C, Kk + (size_t)t * KVH * qd);
                ref_mv(wv, bv, xn, KVH * vd, C, Vv + (size_t)t * KVH * vd);
                free(wq); free(wk); free(wv); free(bq); free(bk); free(bv);
                // rotate_half RoPE on every head
                for (int h = 0; h < H + KVH; h++) {
                    double *v = h < H ? Q + ((size_t)t * H + h) * qd : Kk + ((size_t)t * KVH + (h - H)) * qd;
                    int half = qd / 2;
                    for (int i = 0; i < half; i++) {
                        double a = ref_angle(t, i, qd, c->rope_theta), x1 = v[i], x2 = v[i + half];
                        v[i] = x1 * cos(a) - x2 * sin(a);
                        v[i + half] = x2 * cos(a) + x1 * sin(a);
                    }
                }
            } else {
                int nope = c->qk_nope_head_dim, rope = c->qk_rope_head_dim, kvr = c->kv_lora_rank;
                if (c->q_lora_rank > 0) {
                    float *qa = ref_get(r, 1, "%s.self_attn.q_a_proj.weight", p), *qn = ref_get(r, 0, "%s.self_attn.q_a_layernorm.weight", p);
                    float *qb = ref_get(r, 1, "%s.self_attn.q_b_proj.weight", p);
                    double *t1 = (double *)calloc(c->q_lora_rank, sizeof(double)), *t2 = (double *)calloc(c->q_lora_rank, sizeof(double));
                    ref_mv(qa, NULL, xn, c->q_lora_rank, C, t1);
                    ref_rms(t1, qn, c->q_lora_rank, c->rms_norm_eps, t2);
                    ref_mv(qb, NULL, t2, H * qd, c->q_lora_rank, Q + (size_t)t * H * qd);
                    free(qa); free(qn); free(qb); free(t1); free(t2);
                } else {
                    float *wq = ref_get(r, 1, "%s.self_attn.q_proj.weight", p);
                    ref_mv(wq, NULL, xn, H * qd, C, Q + (size_t)t * H * qd);
                    free(wq);
                }
                float *wa = ref_get(r, 1, "%s.self_attn.kv_a_proj_with_mqa.weight", p);
                float *kn = ref_get(r, 0, "%s.self_attn.kv_a_layernorm.weight", p);
                float *wb = ref_get(r, 1, "%s.self_attn.kv_b_proj.weight", p);
                double *kva = (double *)calloc(kvr + rope, sizeof(double)), *ckv = (double *)calloc(kvr, sizeof(double));
                double *kv = (double *)calloc((size_t)H * (nope + vd), sizeof(double));
                ref_mv(wa, NULL, xn, kvr + rope, C, kva);
                ref_rms(kva, kn, kvr, c->rms_norm_eps, ckv);
                ref_mv(wb, NULL, ckv, H * (nope + vd), kvr, kv);
                double kpe[64];
                for (int i = 0; i < rope / 2; i++) {  // interleaved pairs
                    double a = ref_angle(t, i, rope, c->rope_theta), x1 = kva[kvr + 2 * i], x2 = kva[kvr + 2 * i + 1];
                    kpe[2 * i] = x1 * cos(a) - x2 * sin(a);
                    kpe[2 * i + 1] = x2 * cos(a) + x1 * sin(a);
                }
                for (int h = 0; h < H; h++) {
                    double *q = Q + ((size_t)t * H + h) * qd + nope;
                    for (int i = 0; i < rope / 2; i++) {
                        double a = ref_angle(t, i, rope, c->rope_theta), x1 = q[2 * i], x2 = q[2 * i + 1];
                        q[2 * i] = x1 * cos(a) - x2 * sin(a);
                        q[2 * i + 1] = x2 * cos(a) + x1 * sin(a);
                    }
                    double *k = Kk + ((size_t)t * H + h) * qd;
                    for (int i = 0; i < nope; i++) k[i] = kv[h * (nope + vd) + i];
                    for (int i = 0; i < rope; i++) k[nope + i] = kpe[i];
                    for (int i = 0; i < vd; i++) Vv[((size_t)t * H + h) * vd + i] = kv[h * (nope + vd) + nope + i];
                }
                free(wa); free(kn); free(wb); free(kva); free(ckv); free(kv);
            }
        }
        // causal attention
        double *ao = (double *)calloc((size_t)T * H * vd, sizeof(double));
        int group = H / KVH;
        for (int t = 0; t < T; t++)
            for (int h = 0; h < H; h++) {
                double sc[512], mx = -1e300, z = 0;
                for (int j = 0; j <= t; j++) {
                    double d = 0;
                    for (int i = 0; i < qd; i++) d += Q[((size_t)t * H + h) * qd + i] * Kk[((size_t)j * KVH + h / group) * qd + i];
                    sc[j] = d / sqrt((double)qd);
                    mx = fmax(mx, sc[j]);
                }
                for (int j = 0; j <= t; j++) z += (sc[j] = exp(sc[j] - mx));
                for (int j = 0; j <= t; j++)
                    for (int i = 0; i < vd; i++) ao[((size_t)t * H + h) * vd + i] += sc[j] / z * Vv[((size_t)j * KVH + h / group) * vd + i];
            }
        float *wo = ref_get(r, 1, "%s.self_attn.o_proj.weight", p);
        double *tmp = (double *)calloc(C, sizeof(double));
        for (int t = 0; t < T; t++) {
            ref_mv(wo, NULL, ao + (size_t)t * H * vd, C, H * vd, tmp);
            for (int j = 0; j < C; j++) x[t * C + j] += tmp[j];
        }
        memcpy(mid + (size_t)l * T * C, x, sizeof(double) * T * C);
        free(wo); free(tmp); free(ao); free(Q); free(Kk); free(Vv);
        // FFN
        float *n2 = ref_get(r, 0, "%s.post_attention_layernorm.weight", p);
        double *y = (double *)calloc(C, sizeof(double)), *ye = (double *)calloc(C, sizeof(double));
        char q[200];
        for (int t = 0; t < T; t++) {
            ref_rms(x + t * C, n2, C, c->rms_norm_eps, xn);
            memset(y, 0, sizeof(double) * C);
            if (!c->is_moe[l]) {
                snprintf(q, sizeof(q), "%s.mlp", p);
                ref_swiglu(r, q, c->intermediate_size, xn, y);
            } else {
                float *gw = ref_get(r, 0, "%s.mlp.gate.weight", p);
                float *gb = c->arch == PT_DEEPSEEK_V3 ? ref_get(r, 0, "%s.mlp.gate.e_score_correction_bias", p) : NULL;
                double lg[256], w[64];
                int ids[64];
                ref_mv(gw, NULL, xn, E, C, lg);
                ref_route(c, lg, gb, ids, w);
                for (int k = 0; k < K; k++) {
                    out->ids[((size_t)mi * T + t) * K + k] = ids[k];
                    out->w[((size_t)mi * T + t) * K + k] = w[k];
                    snprintf(q, sizeof(q), "%s.mlp.experts.%d", p, ids[k]);
                    ref_swiglu(r, q, c->moe_intermediate_size, xn, ye);
                    for (int j = 0; j < C; j++) y[j] += w[k] * ye[j];
                }
                for (int e = 0; e < E; e++) out->glog[((size_t)mi * T + t) * E + e] = lg[e];
                int S = pt_shared_width(c);
                if (S > 0) {
                    snprintf(q, sizeof(q), c->arch == PT_QWEN2_MOE ? "%s.mlp.shared_expert" : "%s.mlp.shared_experts", p);
                    ref_swiglu(r, q, S, xn, ye);
                    double g = 1;
                    if (c->arch == PT_QWEN2_MOE) {
                        float *sg = ref_get(r, 0, "%s.mlp.shared_expert_gate.weight", p);
                        double d;
                        ref_mv(sg, NULL, xn, 1, C, &d);
                        g = 1.0 / (1.0 + exp(-d));
                        free(sg);
                    }
                    for (int j = 0; j < C; j++) y[j] += g * ye[j];
                }
                free(gw); free(gb);
            }
            for (int j = 0; j < C; j++) x[t * C + j] += y[j];
        }
        free(n1); free(n2); free(y); free(ye);
        if (c->is_moe[l]) {
            // gate reuse: next MoE layer's norm + gate on the state entering this MoE FFN
            int l2 = -1;
            for (int j = l + 1; j < c->n_layers && l2 < 0; j++)
                if (c->is_moe[j]) l2 = j;
            for (int t = 0; t < T; t++) {
                if (l2 < 0) {
                    for (int k = 0; k < K; k++) out->reuse[((size_t)mi * T + t) * K + k] = -1;
                    continue;
                }
                float *n22 = ref_get(r, 0, "model.layers.%d.post_attention_layernorm.weight", l2);
                float *g2 = ref_get(r, 0, "model.layers.%d.mlp.gate.weight", l2);
                float *b2 = c->arch == PT_DEEPSEEK_V3 ? ref_get(r, 0, "model.layers.%d.mlp.gate.e_score_correction_bias", l2) : NULL;
                double lg[256], w[64];
                int ids[64];
                // mid: the state entering this layer's MoE FFN; out: the layer's output
                const double *state = g_reuse_mode == PT_REUSE_OUT ? x + (size_t)t * C : mid + ((size_t)l * T + t) * C;
                ref_rms(state, n22, C, c->rms_norm_eps, xn);
                ref_mv(g2, NULL, xn, E, C, lg);
                ref_route(c, lg, b2, ids, w);
                for (int k = 0; k < K; k++) out->reuse[((size_t)mi * T + t) * K + k] = ids[k];
                free(n22); free(g2); free(b2);
            }
            mi++;
        }
        free(xn);
    }
    float *nf = ref_get(r, 0, "model.norm.weight");
    float *lm = ref_get(r, 0, "lm_head.weight");
    double *xn = (double *)calloc(C, sizeof(double));
    for (int t = 0; t < T; t++) {
        ref_rms(x + t * C, nf, C, c->rms_norm_eps, xn);
        ref_mv(lm, NULL, xn, V, C, out->logits + (size_t)t * V);
    }
    (void)n_moe;
    free(nf); free(lm); free(xn); free(x); free(mid);
}

// ---------------------------------------------------------------------------------------

static const char *arch_names[3] = {"deepseek", "qwen2_moe", "deepseek_v3"};

typedef struct {
    double max_logit_diff;
    int64_t id_mismatch, reuse_mismatch, recomputed_mismatch;
    double max_w_diff;
} Cmp;

// Load dir in the given mode, run a batch of 3 sequences, compare with the reference.
static int run_compare(const char *dir, int quant, int dq, Cmp *cmp, float **logits_out) {
    MoeErr err = {{0}};
    memset(cmp, 0, sizeof(*cmp));
    PtModel m;
    PtLoadOptions o = {quant, dq, 0};
    if (pt_model_load(&m, dir, &o, &err) != 0) {
        printf("  load %s: %s\n", dir, err.msg);
        return -1;
    }
    const PtConfig *c = &m.cfg;
    const int lens[3] = {7, 13, 1};
    int64_t seq_start[4] = {0, 7, 20, 21};
    int32_t tokens[21];
    uint64_t rng = rng_seed(5);
    for (int i = 0; i < 21; i++) tokens[i] = (int32_t)(rng_next_u64(&rng) % (uint64_t)c->vocab_size);
    float *logits = (float *)mallocCheck((size_t)21 * c->vocab_size * sizeof(float));
    PtRouting rt;
    if (pt_routing_alloc(&rt, &m, 21, 1, &err) != 0 ||
        pt_forward(&m, tokens, seq_start, 3, logits, &rt, g_reuse_mode, &err) != 0) {
        printf("  forward: %s\n", err.msg);
        pt_model_free(&m);
        free(logits);
        return -1;
    }
    Ref r;
    memset(&r, 0, sizeof(r));
    st_model_open(&r.st, dir, &err);
    r.c = *c;
    r.nf4 = quant == PT_QUANT_NF4;
    r.dq = dq;
    const int K = c->top_k, E = c->n_routed_experts, V = c->vocab_size, M = c->n_moe_layers;
    for (int s = 0; s < 3; s++) {
        int T = lens[s];
        RefOut ro;
        ro.logits = (double *)calloc((size_t)T * V, sizeof(double));
        ro.ids = (int *)calloc((size_t)M * T * K, sizeof(int));
        ro.w = (double *)calloc((size_t)M * T * K, sizeof(double));
        ro.reuse = (int *)calloc((size_t)M * T * K, sizeof(int));
        ro.glog = (double *)calloc((size_t)M * T * E, sizeof(double));
        ref_forward(&r, tokens + seq_start[s], T, &ro);
        for (int t = 0; t < T; t++) {
            int64_t i = seq_start[s] + t;
            for (int v = 0; v < V; v++) {
                double d = fabs(ro.logits[(size_t)t * V + v] - logits[i * V + v]);
                if (d > cmp->max_logit_diff) cmp->max_logit_diff = d;
            }
            for (int mi = 0; mi < M; mi++) {
                for (int k = 0; k < K; k++) {
                    size_t a = ((size_t)mi * 21 + i) * K + k, b = ((size_t)mi * T + t) * K + k;
                    if (rt.ids[a] != ro.ids[b]) cmp->id_mismatch++;
                    else cmp->max_w_diff = fmax(cmp->max_w_diff, fabs(rt.w[a] - ro.w[b]));
                    if (rt.reuse[a] != ro.reuse[b]) cmp->reuse_mismatch++;
                }
                // the recorded choice equals a top-K recomputed from the recorded gate logits
                double lg[256], w[64];
                int ids[64];
                for (int e = 0; e < E; e++) lg[e] = rt.gate_logits[((size_t)mi * 21 + i) * E + e];
                ref_route(c, lg, m.layers[rt.moe_block[mi]].router_bias, ids, w);
                for (int k = 0; k < K; k++)
                    if (ids[k] != rt.ids[((size_t)mi * 21 + i) * K + k]) cmp->recomputed_mismatch++;
            }
        }
        free(ro.logits); free(ro.ids); free(ro.w); free(ro.reuse); free(ro.glog);
    }
    st_model_close(&r.st);
    pt_routing_free(&rt);
    pt_model_free(&m);
    if (logits_out) *logits_out = logits;
    else free(logits);
    return 0;
}

static void write_text(const char *path, const char *text) {
    FILE *fp = fopenCheck(path, "w");
    fputs(text, fp);
    fclose(fp);
}

// Replace `from` by `to` in DIR/config.json
static void edit_config(const char *dir, const char *from, const char *to) {
    char path[600], *text = NULL;
    size_t n = 0;
    MoeErr err;
    snprintf(path, sizeof(path), "%s/config.json", dir);
    if (read_file_all(path, &text, &n, &err) != 0) return;
    char *p = strstr(text, from);
    if (p) {
        size_t out_n = n + strlen(to) + 1;
        char *out = (char *)mallocCheck(out_n);
        size_t pre = (size_t)(p - text);
        memcpy(out, text, pre);
        snprintf(out + pre, out_n - pre, "%s%s", to, p + strlen(from));
        write_text(path, out);
        free(out);
    } else {
        printf("  (edit_config: '%s' not found)\n", from);
    }
    free(text);
}

// `test_pretrained --check-trace TRACE MODEL_DIR QUANT`: read a trace written by `collect`
// (through speculate's reader), rebuild its sequences from the records, run the model again
// and check that every recorded choice equals the top-K recomputed from the gate logits, the
// weights match, and the gate-reuse field equals the forward's prediction.
static int check_trace(const char *trace_path, const char *model_dir, const char *quant) {
    MoeErr err = {{0}};
    Trace tr;
    test_begin("collect_trace_reads_back");
    int rc = trace_read(trace_path, &tr, &err);
    CHECK(rc == 0, "%s", err.msg);
    test_end();
    if (rc) return test_summary();
    PtModel m;
    PtLoadOptions lo = {strcmp(quant, "nf4") == 0 ? PT_QUANT_NF4 : PT_QUANT_NONE, 1, 0};
    test_begin("collect_trace_matches_recomputed_routing");
    rc = pt_model_load(&m, model_dir, &lo, &err);
    CHECK(rc == 0, "%s", err.msg);
    if (rc == 0) {
        const PtConfig *c = &m.cfg;
        const int M = tr.h.n_layers, K = tr.h.K, E = tr.h.E;
        CHECK(M == c->n_moe_layers && K == c->top_k && E == c->n_routed_experts, "header sizes");
        for (int l = 0, mi = 0; l < c->n_layers; l++)
            if (c->is_moe[l]) CHECK(tr.h.layer_idx[mi++] == l, "layer_idx");
        int64_t bad_ids = 0, bad_top = 0, bad_reuse = 0, n_seq = 0;
        double max_wd = 0;
        size_t i = 0;
        while (i < tr.n) {  // one sequence at a time: records are contiguous, positions 0..T-1
            size_t j = i;
            while (j < tr.n && tr.seq[j] == tr.seq[i]) j++;
            int T = (int)(j - i);
            int32_t *tok = (int32_t *)mallocCheck((size_t)T * sizeof(int32_t));
            for (int t = 0; t < T; t++) {
                CHECK(tr.pos[i + t] == (uint32_t)t, "positions in order");
                tok[t] = (int32_t)tr.token[i + t];
            }
            int64_t ss[2] = {0, T};
            PtRouting rt;
            if (pt_routing_alloc(&rt, &m, T, 1, &err) != 0 || pt_forward(&m, tok, ss, 1, NULL, &rt, PT_REUSE_MID, &err) != 0) {
                CHECK(0, "%s", err.msg);
                free(tok);
                break;
            }
            for (int t = 0; t < T; t++)
                for (int mi = 0; mi < M; mi++) {
                    double lg[256], w[64];
                    int ids[64];
                    for (int e = 0; e < E; e++) lg[e] = rt.gate_logits[((size_t)mi * T + t) * E + e];
                    ref_route(c, lg, m.layers[rt.moe_block[mi]].router_bias, ids, w);
                    for (int k = 0; k < K; k++) {
                        size_t r = ((i + t) * (size_t)M + mi) * K + k;
                        if (tr.ids[r] != ids[k]) bad_top++;
                        if (tr.ids[r] != rt.ids[((size_t)mi * T + t) * K + k]) bad_ids++;
                        else max_wd = fmax(max_wd, fabs(tr.weights[r] - w[k]));
                        if (tr.reuse && mi + 1 < M && tr.reuse[((i + t) * (size_t)(M - 1) + mi) * K + k] != rt.reuse[((size_t)mi * T + t) * K + k])
                            bad_reuse++;
                    }
                }
            pt_routing_free(&rt);
            free(tok);
            n_seq++;
            i = j;
        }
        printf("  %lld sequences, %zu records: %lld ids differ from the forward, %lld from a top-K of the gate logits, "
               "max weight diff %.3g, %lld reuse ids differ\n",
               (long long)n_seq, tr.n, (long long)bad_ids, (long long)bad_top, max_wd, (long long)bad_reuse);
        CHECK(n_seq > 0 && bad_ids == 0 && bad_top == 0 && bad_reuse == 0 && max_wd < 1e-5, "trace differs from recomputation");
        CHECK(tr.reuse != NULL || M < 2, "gate-reuse field present");
        pt_model_free(&m);
    }
    test_end();
    trace_free(&tr);
    return test_summary();
}

// `test_pretrained --check-hf REF.safetensors MODEL_DIR NAME`: logits written by
// tests/reference/pretrained_hf.py (transformers, fp32) against pt_forward in fp32 mode.
static int check_hf(const char *ref_path, const char *model_dir, const char *name) {
    MoeErr err = {{0}};
    char tn[200];
    snprintf(tn, sizeof(tn), "%s_logits_equal_transformers", name);
    test_begin(tn);
    StFile f;
    PtModel m;
    PtLoadOptions lo = {PT_QUANT_NONE, 0, 0};
    if (st_open(&f, ref_path, &err) != 0) {
        CHECK(0, "%s", err.msg);
    } else if (pt_model_load(&m, model_dir, &lo, &err) != 0) {
        CHECK(0, "%s", err.msg);
        st_close(&f);
    } else {
        const StTensor *tt = st_find(&f, "tokens"), *lt = st_find(&f, "logits");
        CHECK(tt && lt && tt->dtype == ST_I64 && tt->ndim == 2 && lt->ndim == 3 && lt->shape[2] == m.cfg.vocab_size,
              "reference file layout");
        if (tt && lt && tt->ndim == 2 && lt->ndim == 3) {
            int B = (int)tt->shape[0], T = (int)tt->shape[1], V = m.cfg.vocab_size;
            int32_t *tok = (int32_t *)mallocCheck((size_t)(B * T) * sizeof(int32_t));
            int64_t *ss = (int64_t *)mallocCheck((size_t)(B + 1) * sizeof(int64_t));
            for (int i = 0; i < B * T; i++) {
                int64_t v;
                memcpy(&v, tt->data + 8 * i, 8);
                tok[i] = (int32_t)v;
            }
            for (int b = 0; b <= B; b++) ss[b] = (int64_t)b * T;
            float *ours = (float *)mallocCheck((size_t)(B * T) * V * sizeof(float));
            float *ref = (float *)mallocCheck((size_t)(B * T) * V * sizeof(float));
            st_read_f32(lt, 0, (int64_t)B * T * V, ref, &err);
            CHECK(pt_forward(&m, tok, ss, B, ours, NULL, PT_REUSE_MID, &err) == 0, "%s", err.msg);
            double md = 0, mx = 0;
            for (int64_t i = 0; i < (int64_t)B * T * V; i++) {
                md = fmax(md, fabs((double)ours[i] - ref[i]));
                mx = fmax(mx, fabs((double)ref[i]));
            }
            printf("  %s: max |logit diff| vs transformers %.3g (logits up to %.3g)\n", name, md, mx);
            CHECK(md < 1e-4 * (1 + mx), "logits differ from transformers by %g", md);
            free(tok); free(ss); free(ours); free(ref);
        }
        pt_model_free(&m);
        st_close(&f);
    }
    test_end();
    return test_summary();
}

int main(int argc, char **argv) {
    if (argc == 5 && strcmp(argv[1], "--check-trace") == 0) return check_trace(argv[2], argv[3], argv[4]);
    if (argc == 5 && strcmp(argv[1], "--check-hf") == 0) return check_hf(argv[2], argv[3], argv[4]);
    if (argc != 1) {
        fprintf(stderr, "usage: test_pretrained [--check-trace TRACE MODEL_DIR nf4|none | --check-hf REF MODEL_DIR NAME]\n");
        return 2;
    }
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/test_pretrained_XXXXXX");
    if (!mkdtemp(tmpdir)) return 1;
    MoeErr err = {{0}};
    char dir[600], path[800];

    // ------------------------------------------------------------------ plans
    test_begin("plan_deepseek_moe_16b_under_10GB");
    {
        PtConfig c;
        int rc = pt_config_parse(&c, DEEPSEEK_MOE_16B_CONFIG, strlen(DEEPSEEK_MOE_16B_CONFIG), "deepseek-moe-16b/config.json", &err);
        CHECK(rc == 0, "%s", err.msg);
        if (rc == 0) {
            CHECK(c.arch == PT_DEEPSEEK && c.n_layers == 28 && c.n_moe_layers == 27 && !c.is_moe[0] && c.is_moe[1] &&
                      c.n_routed_experts == 64 && c.top_k == 6 && c.n_shared_experts == 2 && !c.norm_topk_prob &&
                      c.vocab_size == 102400 && c.head_dim == 128 && c.n_kv_heads == 16 && c.score_func == PT_SCORE_SOFTMAX,
                  "parsed fields");
            CHECK(pt_shared_width(&c) == 2816, "shared width %d", pt_shared_width(&c));
            PtPlan p, p2, pf;
            pt_plan(&c, PT_QUANT_NF4, 1, 2, &p);
            pt_plan(&c, PT_QUANT_NF4, 0, 2, &p2);
            pt_plan(&c, PT_QUANT_NONE, 0, 2, &pf);
            pt_plan_print(&c, &p, "  plan (NF4 + double quant)", stdout);
            printf("  plan (NF4, fp32 absmax): %.2f GB; fp32: %.2f GB\n", p2.total_bytes / 1e9, pf.total_bytes / 1e9);
            CHECK(p.total_bytes < 10000000000LL, "NF4+DQ plan %.2f GB >= 10 GB", p.total_bytes / 1e9);
            CHECK(p2.total_bytes < 10000000000LL, "NF4 plan %.2f GB >= 10 GB", p2.total_bytes / 1e9);
            CHECK(p.total_params > 16300000000LL && p.total_params < 16500000000LL, "16.4B parameters: %lld",
                  (long long)p.total_params);
            CHECK(p.params[PT_CAT_EXPERTS] == 27LL * 64 * 3 * 2048 * 1408, "routed expert params");
        }
    }
    test_end();
    test_begin("plan_qwen15_moe_a27b");
    {
        PtConfig c;
        int rc = pt_config_parse(&c, QWEN15_MOE_CONFIG, strlen(QWEN15_MOE_CONFIG), "qwen/config.json", &err);
        CHECK(rc == 0, "%s", err.msg);
        if (rc == 0) {
            CHECK(c.arch == PT_QWEN2_MOE && c.n_routed_experts == 60 && c.top_k == 4 && c.n_moe_layers == 24 &&
                      pt_shared_width(&c) == 5632 && c.attn_qkv_bias && c.rope_theta == 1e6f,
                  "parsed fields");
            PtPlan p;
            pt_plan(&c, PT_QUANT_NF4, 1, 2, &p);
            pt_plan_print(&c, &p, "  plan (NF4 + double quant)", stdout);
            CHECK(p.total_params > 14000000000LL && p.total_params < 14700000000LL, "14.3B parameters: %lld",
                  (long long)p.total_params);
        }
    }
    test_end();

    // ------------------------------------------------------------------ config errors
    test_begin("config_errors_name_file_and_field");
    {
        struct { const char *from, *to, *want; } cases[] = {
            {"\"hidden_size\": 2048,", "", "'hidden_size'"},
            {"\"model_type\": \"deepseek\"", "\"model_type\": \"mixtral\"", "'model_type'"},
            {"\"num_experts_per_tok\": 6", "\"num_experts_per_tok\": \"six\"", "'num_experts_per_tok'"},
            {"\"norm_topk_prob\": false,", "", "'norm_topk_prob'"},
            {"\"rope_scaling\": null", "\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2}", "'rope_scaling'"},
            {"\"hidden_act\": \"silu\"", "\"hidden_act\": \"gelu\"", "'hidden_act'"},
            {"\"num_experts_per_tok\": 6", "\"num_experts_per_tok\": 65", "num_experts_per_tok"},
            {"\"num_key_value_heads\": 16", "\"num_key_value_heads\": 5", "'num_key_value_heads'"},
            {"\"scoring_func\": \"softmax\"", "\"scoring_func\": \"relu\"", "'scoring_func'"},
            {"\"rope_theta\": 10000,", "", "'rope_theta'"},
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
            const char *base = DEEPSEEK_MOE_16B_CONFIG;
            const char *p = strstr(base, cases[i].from);
            CHECK(p != NULL, "case %zu: pattern missing", i);
            if (!p) continue;
            char buf[4096];
            snprintf(buf, sizeof(buf), "%.*s%s%s", (int)(p - base), base, cases[i].to, p + strlen(cases[i].from));
            PtConfig c;
            int rc = pt_config_parse(&c, buf, strlen(buf), "x/config.json", &err);
            CHECK(rc != 0 && strstr(err.msg, "x/config.json") && strstr(err.msg, cases[i].want), "case %zu: %s", i,
                  rc ? err.msg : "accepted");
        }
        PtConfig c;
        CHECK(pt_config_parse(&c, "{not json", 9, "y/config.json", &err) != 0 && strstr(err.msg, "y/config.json"), "%s", err.msg);
        CHECK(pt_config_load(&c, "/nonexistent", &err) != 0 && strstr(err.msg, "/nonexistent/config.json"), "%s", err.msg);
    }
    test_end();

    test_begin("fuzz_config_parser");
    {
        // random mutations of the real config: parse must succeed or fail with a message
        // naming the file, never crash (also under ASan)
        const char *base = DEEPSEEK_MOE_16B_CONFIG;
        size_t bl = strlen(base);
        char *buf = (char *)mallocCheck(bl + 64);
        uint64_t rng = rng_seed(99);
        static const char alpha[] = "{}[]\":,0123456789-.eE +truefalsn\\";
        int ok = 0, bad = 0;
        double t0 = wall_seconds();
        for (int it = 0; it < 20000 && wall_seconds() - t0 < 2.0; it++) {
            memcpy(buf, base, bl);
            size_t n = bl;
            int nm = 1 + (int)(rng_next_u64(&rng) % 3);
            for (int k = 0; k < nm; k++) {
                size_t pos = rng_next_u64(&rng) % n;
                int op = (int)(rng_next_u64(&rng) % 3);
                char ch = alpha[rng_next_u64(&rng) % (sizeof(alpha) - 1)];
                if (op == 0) buf[pos] = ch;
                else if (op == 1 && n > 1) { memmove(buf + pos, buf + pos + 1, n - pos - 1); n--; }
                else if (n < bl + 60) { memmove(buf + pos + 1, buf + pos, n - pos); buf[pos] = ch; n++; }
            }
            char *img = (char *)mallocCheck(n);  // exact size: ASan sees any read past the end
            memcpy(img, buf, n);
            PtConfig c;
            if (pt_config_parse(&c, img, n, "fuzz/config.json", &err) == 0) {
                ok++;
                CHECK(c.n_layers >= 1 && c.top_k >= 1 && c.top_k <= c.n_routed_experts && c.n_heads % c.n_kv_heads == 0,
                      "accepted an inconsistent config");
                PtPlan pl;
                pt_plan(&c, PT_QUANT_NF4, 1, 2, &pl);
            } else {
                bad++;
                if (!strstr(err.msg, "fuzz/config.json")) { CHECK(0, "message without the file: %s", err.msg); free(img); break; }
            }
            free(img);
        }
        free(buf);
        printf("  config fuzz: %d accepted, %d rejected\n", ok, bad);
        CHECK(ok > 0 && bad > 0, "fuzz coverage");
    }
    test_end();

    // ------------------------------------------------------------------ tiny models
    for (int arch = 0; arch < 3; arch++) {
        char name[128];
        PtTinyOptions o;
        pt_tiny_defaults(&o, arch);
        o.dtype = ST_F32;
        o.seed = 11 + (uint64_t)arch;
        snprintf(dir, sizeof(dir), "%s/%s_f32", tmpdir, arch_names[arch]);
        snprintf(name, sizeof(name), "%s_write_tiny", arch_names[arch]);
        test_begin(name);
        CHECK(pt_write_tiny(dir, &o, &err) == 0, "%s", err.msg);
        test_end();

        Cmp cm;
        float *l32 = NULL, *l4 = NULL;
        snprintf(name, sizeof(name), "%s_fp32_forward_vs_reference", arch_names[arch]);
        test_begin(name);
        int rc = run_compare(dir, PT_QUANT_NONE, 0, &cm, &l32);
        CHECK(rc == 0, "forward failed");
        if (rc == 0) {
            printf("  %s fp32: max |logit diff| %.3g, routed-id mismatches %lld, max weight diff %.3g, reuse mismatches %lld\n",
                   arch_names[arch], cm.max_logit_diff, (long long)cm.id_mismatch, cm.max_w_diff, (long long)cm.reuse_mismatch);
            CHECK(cm.max_logit_diff < 2e-5, "logits differ by %g", cm.max_logit_diff);
            CHECK(cm.id_mismatch == 0, "%lld routed ids differ", (long long)cm.id_mismatch);
            CHECK(cm.max_w_diff < 1e-5, "gate weights differ by %g", cm.max_w_diff);
            CHECK(cm.reuse_mismatch == 0, "%lld gate-reuse ids differ", (long long)cm.reuse_mismatch);
            CHECK(cm.recomputed_mismatch == 0, "%lld recorded ids differ from a top-K of the gate logits",
                  (long long)cm.recomputed_mismatch);
        }
        test_end();
        snprintf(name, sizeof(name), "%s_nf4_forward_vs_reference", arch_names[arch]);
        test_begin(name);
        rc = run_compare(dir, PT_QUANT_NF4, 1, &cm, &l4);
        CHECK(rc == 0, "forward failed");
        if (rc == 0) {
            printf("  %s nf4: max |logit diff| %.3g vs reference on dequantized weights, id mismatches %lld\n",
                   arch_names[arch], cm.max_logit_diff, (long long)cm.id_mismatch);
            CHECK(cm.max_logit_diff < 5e-5, "logits differ by %g", cm.max_logit_diff);
            CHECK(cm.id_mismatch == 0 && cm.reuse_mismatch == 0 && cm.recomputed_mismatch == 0, "routing mismatches");
            // NF4 against fp32: the quantization error stays bounded
            double num = 0, den = 0;
            int V = 320;
            for (int i = 0; i < 21 * V; i++) {
                num += (double)(l4[i] - l32[i]) * (l4[i] - l32[i]);
                den += (double)l32[i] * l32[i];
            }
            double rel = sqrt(num / den);
            printf("  %s: NF4 vs fp32 relative RMS logit difference %.4f\n", arch_names[arch], rel);
            // per-weight NF4 error is ~10% (relative RMS) and compounds through the tiny random
            // layers; unrelated logits would differ by ~1.4: a bound that catches garbage
            CHECK(rel < 0.6, "NF4 drift %.3f", rel);
        }
        free(l32);
        free(l4);
        test_end();
    }

    // bf16, sharded, bitsandbytes-saved variants
    test_begin("deepseek_bf16_sharded_bnb_checkpoint");
    {
        PtTinyOptions o;
        pt_tiny_defaults(&o, PT_DEEPSEEK);
        o.shards = 2;
        o.bnb = 1;
        o.seed = 21;
        snprintf(dir, sizeof(dir), "%s/deepseek_bnb", tmpdir);
        CHECK(pt_write_tiny(dir, &o, &err) == 0, "%s", err.msg);
        snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
        CHECK(file_exists(path), "index written");
        Cmp cm;
        int rc = run_compare(dir, PT_QUANT_NF4, 1, &cm, NULL);
        CHECK(rc == 0, "forward");
        if (rc == 0) {
            CHECK(cm.max_logit_diff < 5e-5 && cm.id_mismatch == 0 && cm.reuse_mismatch == 0, "logit diff %g, ids %lld",
                  cm.max_logit_diff, (long long)cm.id_mismatch);
        }
        PtModel m;
        PtLoadOptions lo = {PT_QUANT_NF4, 1, 0};
        if (pt_model_load(&m, dir, &lo, &err) == 0) {
            CHECK(m.n_bnb > 50 && m.embed.kind == PT_W_BF16, "bitsandbytes tensors read: %d", m.n_bnb);
            pt_model_free(&m);
        } else CHECK(0, "%s", err.msg);
    }
    test_end();

    test_begin("deepseek_reuse_from_layer_output");
    {
        snprintf(dir, sizeof(dir), "%s/deepseek_f32", tmpdir);
        Cmp cm;
        g_reuse_mode = PT_REUSE_OUT;
        CHECK(run_compare(dir, PT_QUANT_NONE, 0, &cm, NULL) == 0 && cm.reuse_mismatch == 0 && cm.id_mismatch == 0,
              "reuse mismatches %lld", (long long)cm.reuse_mismatch);
        g_reuse_mode = PT_REUSE_MID;
    }
    test_end();

    test_begin("deepseek_norm_topk_prob_true");
    {
        snprintf(dir, sizeof(dir), "%s/deepseek_f32", tmpdir);
        edit_config(dir, "\"norm_topk_prob\": false", "\"norm_topk_prob\": true");
        Cmp cm;
        CHECK(run_compare(dir, PT_QUANT_NONE, 0, &cm, NULL) == 0 && cm.max_logit_diff < 2e-5 && cm.id_mismatch == 0 &&
                  cm.max_w_diff < 1e-5,
              "logit diff %g, weight diff %g", cm.max_logit_diff, cm.max_w_diff);
        PtConfig pc;
        CHECK(pt_config_load(&pc, dir, &err) == 0 && pc.norm_topk_prob, "config edited");
    }
    test_end();

    test_begin("deepseek_v3_plain_q_proj");
    {
        PtTinyOptions o;
        pt_tiny_defaults(&o, PT_DEEPSEEK_V3);
        o.q_lora = 0;
        o.dtype = ST_F32;
        snprintf(dir, sizeof(dir), "%s/v3_noqlora", tmpdir);
        CHECK(pt_write_tiny(dir, &o, &err) == 0, "%s", err.msg);
        Cmp cm;
        CHECK(run_compare(dir, PT_QUANT_NONE, 0, &cm, NULL) == 0 && cm.max_logit_diff < 2e-5 && cm.id_mismatch == 0,
              "logit diff %g", cm.max_logit_diff);
    }
    test_end();

    test_begin("loaded_memory_matches_plan");
    {
        snprintf(dir, sizeof(dir), "%s/qwen2_moe_f32", tmpdir);
        PtModel m;
        PtLoadOptions lo = {PT_QUANT_NF4, 1, 0};
        int rc = pt_model_load(&m, dir, &lo, &err);
        CHECK(rc == 0, "%s", err.msg);
        if (rc == 0) {
            PtPlan p;
            pt_plan(&m.cfg, PT_QUANT_NF4, 1, 4, &p);
            for (int i = 0; i < PT_N_CAT; i++)
                CHECK(p.bytes[i] == m.loaded.bytes[i] && p.params[i] == m.loaded.params[i],
                      "%s: planned %lld bytes / %lld params, loaded %lld / %lld", pt_cat_names[i], (long long)p.bytes[i],
                      (long long)p.params[i], (long long)m.loaded.bytes[i], (long long)m.loaded.params[i]);
            // a token outside the vocabulary is refused
            int32_t bad[2] = {1, 100000};
            int64_t ss[2] = {0, 2};
            CHECK(pt_forward(&m, bad, ss, 1, NULL, NULL, PT_REUSE_MID, &err) != 0 && strstr(err.msg, "100000"), "%s", err.msg);
            pt_model_free(&m);
        }
    }
    test_end();

    // ------------------------------------------------------------------ bad checkpoints
    test_begin("bad_checkpoints_clear_errors");
    {
        PtTinyOptions o;
        pt_tiny_defaults(&o, PT_DEEPSEEK);
        snprintf(dir, sizeof(dir), "%s/bad", tmpdir);
        CHECK(pt_write_tiny(dir, &o, &err) == 0, "%s", err.msg);
        PtModel m;
        PtLoadOptions lo = {PT_QUANT_NF4, 1, 0};
        edit_config(dir, "\"num_hidden_layers\": 3", "\"num_hidden_layers\": 4");
        CHECK(pt_model_load(&m, dir, &lo, &err) != 0 && strstr(err.msg, "missing tensor 'model.layers.3."), "missing: %s",
              err.msg);
        edit_config(dir, "\"num_hidden_layers\": 4", "\"num_hidden_layers\": 3");
        edit_config(dir, "\"intermediate_size\": 96", "\"intermediate_size\": 100");
        CHECK(pt_model_load(&m, dir, &lo, &err) != 0 && strstr(err.msg, "'shape'") && strstr(err.msg, "mlp.") &&
                  strstr(err.msg, "model.safetensors"),
              "shape: %s", err.msg);
        edit_config(dir, "\"intermediate_size\": 100", "\"intermediate_size\": 96");
        CHECK(pt_model_load(&m, dir, &lo, &err) == 0, "restored config loads: %s", err.msg);
        pt_model_free(&m);
        // corrupt the safetensors header length
        snprintf(path, sizeof(path), "%s/model.safetensors", dir);
        FILE *fp = fopenCheck(path, "r+b");
        uint8_t big[8] = {0xff, 0xff, 0xff, 0x0f, 0, 0, 0, 0};
        fwriteCheck(big, 1, 8, fp);
        fclose(fp);
        CHECK(pt_model_load(&m, dir, &lo, &err) != 0 && strstr(err.msg, "model.safetensors") && strstr(err.msg, "header"),
              "corrupt: %s", err.msg);
        snprintf(path, sizeof(path), "%s/config.json", dir);
        write_text(path, "{\"model_type\": \"llama\"}");
        CHECK(pt_model_load(&m, dir, &lo, &err) != 0 && strstr(err.msg, "model_type") && strstr(err.msg, "config.json"),
              "model_type: %s", err.msg);
    }
    test_end();

    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "warning: cannot remove %s\n", tmpdir);
    return test_summary();
}
