// Tiny random HF MoE models. See tiny.h.
#include "tiny.h"

#include <math.h>

#include "../tokenizer/tokenizer.h"
#include "hfconfig.h"
#include "nf4.h"
#include "safetensors.h"

// default sizes of a tiny model (small, but with rows of whole 64-blocks and partial ones)
enum { T_HIDDEN = 64, T_LAYERS = 3, T_MOE_INTER = 32, T_MAX_LAYERS = 256 };

void pt_tiny_defaults(PtTinyOptions *o, int arch) {
    memset(o, 0, sizeof(*o));
    o->arch = arch;
    o->dtype = ST_BF16;
    o->shards = 1;
    o->q_lora = 1;
    o->vocab_size = 320;
    o->seed = 1;
    o->hidden = T_HIDDEN;
    o->layers = T_LAYERS;
    o->moe_inter = T_MOE_INTER;
}

typedef struct {
    StWriter w[2];
    const PtTinyOptions *o;
    uint64_t rng;
    int n_added;
    int C;  // hidden size
    MoeErr *err;
    int failed;
} Builder;

static StWriter *pick(Builder *b) { return &b->w[b->o->shards > 1 ? (b->n_added++ % 2) : 0]; }

// a random tensor: N(mean, std), stored as the model dtype (vectors: always fp32 when asked)
static void add_rand(Builder *b, const char *name, int64_t rows, int64_t cols, float mean, float std, int force_f32) {
    if (b->failed) return;
    int ndim = cols > 0 ? 2 : 1;  // cols == 0: a vector of `rows` values
    int64_t n = ndim == 2 ? rows * cols : rows;
    int64_t shp[2] = {rows, cols};
    float *v = (float *)malloc((size_t)(n ? n : 1) * sizeof(float));
    if (!v) {
        b->failed = 1;
        moe_err_set(b->err, "out of memory");
        return;
    }
    for (int64_t i = 0; i < n; i++) v[i] = mean + std * rng_normal(&b->rng);
    if (st_writer_add_f32(pick(b), name, force_f32 ? ST_F32 : b->o->dtype, ndim, shp, v, b->err) != 0) b->failed = 1;
    free(v);
}

// a projection weight (rows, cols), in bitsandbytes form when asked
static void add_linear(Builder *b, const char *prefix, int64_t rows, int64_t cols, int bias) {
    if (b->failed) return;
    char name[400];
    float std = 1.0f / sqrtf((float)cols);
    if (b->o->bnb) {
        int64_t n = rows * cols;
        float *v = (float *)malloc((size_t)n * sizeof(float));
        if (!v) {
            b->failed = 1;
            return;
        }
        for (int64_t i = 0; i < n; i++) v[i] = std * rng_normal(&b->rng);
        Nf4Tensor t;
        if (nf4_quantize(&t, v, rows, cols, NF4_BLOCK, 1, b->err) != 0 ||
            nf4_write_bnb(&t, pick(b), prefix, b->o->dtype == ST_BF16 ? "bfloat16" : "float32", b->err) != 0)
            b->failed = 1;
        nf4_free(&t);
        free(v);
    } else {
        snprintf(name, sizeof(name), "%s.weight", prefix);
        add_rand(b, name, rows, cols, 0.0f, std, 0);
    }
    if (bias) {
        snprintf(name, sizeof(name), "%s.bias", prefix);
        add_rand(b, name, rows, 0, 0.0f, 0.1f, 0);
    }
}

static void add_mlp(Builder *b, const char *prefix, int64_t width) {
    char name[350];
    snprintf(name, sizeof(name), "%s.gate_proj", prefix);
    add_linear(b, name, width, b->C, 0);
    snprintf(name, sizeof(name), "%s.up_proj", prefix);
    add_linear(b, name, width, b->C, 0);
    snprintf(name, sizeof(name), "%s.down_proj", prefix);
    add_linear(b, name, b->C, width, 0);
}

static const char *tiny_texts[] = {
    "In the beginning God created the heaven and the earth. And the earth was without form, and void.",
    "The quick brown fox jumps over the lazy dog; the dog sleeps, the fox runs away into the woods.",
    "int main(void) { return printf(\"hello, world\\n\") > 0 ? 0 : 1; }",
    "A mixture of experts routes every token to a few experts chosen by a gate.",
    "Expert speculation predicts which experts the next layer will need before it runs.",
};

int pt_write_tiny(const char *dir, const PtTinyOptions *o, MoeErr *err) {
    if (make_dirs(dir, err) != 0) return -1;
    const int V = o->vocab_size, C = o->hidden, L = o->layers;
    if (C < 16 || C % 16 || L < 1 || L > T_MAX_LAYERS || o->moe_inter < 1 || o->experts < 0 || o->experts > 1024)
        return moe_err_set(err, "tiny model: hidden %d (a multiple of 16), layers %d (1..%d), moe_inter %d, experts %d", C, L,
                           T_MAX_LAYERS, o->moe_inter, o->experts);
    const int H = C >= 256 ? C / 64 : 4, hd = C / H, T_INTER = C + C / 2, T_MOE = o->moe_inter;
    char cfg[4096];
    int E = 0, K = 0;
    int is_moe[T_MAX_LAYERS];
    for (int l = 0; l < L; l++) is_moe[l] = l > 0;
    // routed experts per arch, top-K, the rest of each config
    if (o->arch == PT_DEEPSEEK) {
        E = o->experts ? o->experts : 8;
        K = E >= 6 ? (E >= 64 ? 6 : 3) : 2;
        snprintf(cfg, sizeof(cfg),
                 "{\"architectures\": [\"DeepseekForCausalLM\"], \"model_type\": \"deepseek\", \"vocab_size\": %d,"
                 " \"hidden_size\": %d, \"intermediate_size\": %d, \"moe_intermediate_size\": %d,"
                 " \"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"num_key_value_heads\": %d,"
                 " \"n_routed_experts\": %d, \"n_shared_experts\": 2, \"num_experts_per_tok\": %d,"
                 " \"first_k_dense_replace\": 1, \"moe_layer_freq\": 1, \"norm_topk_prob\": false,"
                 " \"scoring_func\": \"softmax\", \"aux_loss_alpha\": 0.001, \"seq_aux\": true,"
                 " \"hidden_act\": \"silu\", \"max_position_embeddings\": 256, \"rms_norm_eps\": 1e-06,"
                 " \"rope_theta\": 10000.0, \"rope_scaling\": null, \"attention_bias\": false,"
                 " \"tie_word_embeddings\": false, \"bos_token_id\": 0, \"eos_token_id\": 1,"
                 " \"torch_dtype\": \"%s\"}\n",
                 V, C, T_INTER, T_MOE, L, H, H / 2, E, K, o->dtype == ST_BF16 ? "bfloat16" : "float32");
    } else if (o->arch == PT_QWEN2_MOE) {
        E = o->experts ? o->experts : 6;
        K = E >= 4 ? 2 : 1;
        is_moe[0] = 1;  // decoder_sparse_step 1, mlp_only_layers [1]
        if (L > 1) is_moe[1] = 0;
        snprintf(cfg, sizeof(cfg),
                 "{\"architectures\": [\"Qwen2MoeForCausalLM\"], \"model_type\": \"qwen2_moe\", \"vocab_size\": %d,"
                 " \"hidden_size\": %d, \"intermediate_size\": %d, \"moe_intermediate_size\": %d,"
                 " \"shared_expert_intermediate_size\": %d, \"num_hidden_layers\": %d,"
                 " \"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"num_experts\": %d,"
                 " \"num_experts_per_tok\": %d, \"decoder_sparse_step\": 1, \"mlp_only_layers\": %s,"
                 " \"norm_topk_prob\": true, \"hidden_act\": \"silu\", \"max_position_embeddings\": 256,"
                 " \"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0, \"use_sliding_window\": false,"
                 " \"tie_word_embeddings\": false, \"bos_token_id\": 0, \"eos_token_id\": 1,"
                 " \"torch_dtype\": \"%s\"}\n",
                 V, C, T_INTER, T_MOE, T_MOE + T_MOE / 2, L, H, H / 2, E, K, L > 1 ? "[1]" : "[]",
                 o->dtype == ST_BF16 ? "bfloat16" : "float32");
    } else {
        E = o->experts ? o->experts : 8;
        if (E % 4) return moe_err_set(err, "tiny deepseek_v3: experts must be a multiple of the 4 groups");
        K = 3;
        char qlora[32];
        snprintf(qlora, sizeof(qlora), "%s", o->q_lora ? "24" : "null");
        snprintf(cfg, sizeof(cfg),
                 "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\", \"vocab_size\": %d,"
                 " \"hidden_size\": %d, \"intermediate_size\": %d, \"moe_intermediate_size\": %d,"
                 " \"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"num_key_value_heads\": %d,"
                 " \"q_lora_rank\": %s, \"kv_lora_rank\": 20, \"qk_nope_head_dim\": 12, \"qk_rope_head_dim\": 8,"
                 " \"v_head_dim\": 12, \"n_routed_experts\": %d, \"n_shared_experts\": 1, \"num_experts_per_tok\": %d,"
                 " \"n_group\": 4, \"topk_group\": 2, \"topk_method\": \"noaux_tc\", \"scoring_func\": \"sigmoid\","
                 " \"routed_scaling_factor\": 2.5, \"norm_topk_prob\": true, \"first_k_dense_replace\": 1,"
                 " \"moe_layer_freq\": 1, \"hidden_act\": \"silu\", \"max_position_embeddings\": 256,"
                 " \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000.0, \"rope_scaling\": null,"
                 " \"attention_bias\": false, \"tie_word_embeddings\": false, \"bos_token_id\": 0,"
                 " \"eos_token_id\": 1, \"torch_dtype\": \"%s\"}\n",
                 V, C, T_INTER, T_MOE, L, H, H, qlora, E, K, o->dtype == ST_BF16 ? "bfloat16" : "float32");
    }
    char path[1200];
    snprintf(path, sizeof(path), "%s/config.json", dir);
    if (write_file_atomic(path, cfg, strlen(cfg), err) != 0) return -1;

    Builder b;
    memset(&b, 0, sizeof(b));
    st_writer_init(&b.w[0]);
    st_writer_init(&b.w[1]);
    b.o = o;
    b.rng = rng_seed(o->seed);
    b.err = err;
    b.C = C;
    char p[200], name[300];
    add_rand(&b, "model.embed_tokens.weight", V, C, 0.0f, 1.0f, 0);
    add_rand(&b, "model.norm.weight", C, 0, 1.0f, 0.1f, 0);
    add_rand(&b, "lm_head.weight", V, C, 0.0f, 1.0f / sqrtf((float)C), 0);
    for (int l = 0; l < L; l++) {
        snprintf(p, sizeof(p), "model.layers.%d", l);
        snprintf(name, sizeof(name), "%s.input_layernorm.weight", p);
        add_rand(&b, name, C, 0, 1.0f, 0.1f, 0);
        snprintf(name, sizeof(name), "%s.post_attention_layernorm.weight", p);
        add_rand(&b, name, C, 0, 1.0f, 0.1f, 0);
        if (o->arch == PT_DEEPSEEK_V3) {
            const int qr = 24, kvr = 20, nope = 12, rope = 8, dv = 12;
            if (o->q_lora) {
                snprintf(name, sizeof(name), "%s.self_attn.q_a_proj", p);
                add_linear(&b, name, qr, C, 0);
                snprintf(name, sizeof(name), "%s.self_attn.q_a_layernorm.weight", p);
                add_rand(&b, name, qr, 0, 1.0f, 0.1f, 0);
                snprintf(name, sizeof(name), "%s.self_attn.q_b_proj", p);
                add_linear(&b, name, H * (nope + rope), qr, 0);
            } else {
                snprintf(name, sizeof(name), "%s.self_attn.q_proj", p);
                add_linear(&b, name, H * (nope + rope), C, 0);
            }
            snprintf(name, sizeof(name), "%s.self_attn.kv_a_proj_with_mqa", p);
            add_linear(&b, name, kvr + rope, C, 0);
            snprintf(name, sizeof(name), "%s.self_attn.kv_a_layernorm.weight", p);
            add_rand(&b, name, kvr, 0, 1.0f, 0.1f, 0);
            snprintf(name, sizeof(name), "%s.self_attn.kv_b_proj", p);
            add_linear(&b, name, H * (nope + dv), kvr, 0);
            snprintf(name, sizeof(name), "%s.self_attn.o_proj", p);
            add_linear(&b, name, C, H * dv, 0);
        } else {
            int kvh = H / 2, bias = o->arch == PT_QWEN2_MOE;
            snprintf(name, sizeof(name), "%s.self_attn.q_proj", p);
            add_linear(&b, name, H * hd, C, bias);
            snprintf(name, sizeof(name), "%s.self_attn.k_proj", p);
            add_linear(&b, name, kvh * hd, C, bias);
            snprintf(name, sizeof(name), "%s.self_attn.v_proj", p);
            add_linear(&b, name, kvh * hd, C, bias);
            snprintf(name, sizeof(name), "%s.self_attn.o_proj", p);
            add_linear(&b, name, C, H * hd, 0);
        }
        if (!is_moe[l]) {
            snprintf(name, sizeof(name), "%s.mlp", p);
            add_mlp(&b, name, T_INTER);
            continue;
        }
        snprintf(name, sizeof(name), "%s.mlp.gate.weight", p);
        add_rand(&b, name, E, C, 0.0f, 2.0f / sqrtf((float)C), 0);
        if (o->arch == PT_DEEPSEEK_V3) {
            snprintf(name, sizeof(name), "%s.mlp.gate.e_score_correction_bias", p);
            add_rand(&b, name, E, 0, 0.0f, 0.05f, 1);
        }
        for (int e = 0; e < E; e++) {
            snprintf(name, sizeof(name), "%s.mlp.experts.%d", p, e);
            add_mlp(&b, name, T_MOE);
        }
        if (o->arch == PT_QWEN2_MOE) {
            snprintf(name, sizeof(name), "%s.mlp.shared_expert", p);
            add_mlp(&b, name, T_MOE + T_MOE / 2);
            snprintf(name, sizeof(name), "%s.mlp.shared_expert_gate.weight", p);
            add_rand(&b, name, 1, C, 0.0f, 1.0f / sqrtf((float)C), 0);
        } else {
            snprintf(name, sizeof(name), "%s.mlp.shared_experts", p);
            add_mlp(&b, name, (o->arch == PT_DEEPSEEK ? 2 : 1) * T_MOE);
        }
    }
    (void)K;
    int rc = b.failed ? -1 : 0;
    if (!rc && o->shards <= 1) {
        snprintf(path, sizeof(path), "%s/model.safetensors", dir);
        rc = st_writer_write(&b.w[0], path, err);
    } else if (!rc) {
        // two shards + index.json (names -> shard file)
        size_t cap = 1 << 16, len = 0;
        char *idx = (char *)malloc(cap);
        if (!idx) rc = moe_err_set(err, "out of memory");
        int n_entries = 0;
        if (idx) len += (size_t)snprintf(idx, cap, "{\"metadata\": {}, \"weight_map\": {");
        for (int s = 0; s < 2 && !rc; s++) {
            char fn[64];
            snprintf(fn, sizeof(fn), "model-%05d-of-00002.safetensors", s + 1);
            snprintf(path, sizeof(path), "%s/%s", dir, fn);
            rc = st_writer_write(&b.w[s], path, err);
            for (int i = 0; i < b.w[s].n && !rc; i++) {
                size_t need = strlen(b.w[s].t[i].name) + 100;
                if (len + need >= cap) {
                    cap = 2 * cap + need;
                    char *n2 = (char *)realloc(idx, cap);
                    if (!n2) { rc = moe_err_set(err, "out of memory"); break; }
                    idx = n2;
                }
                len += (size_t)snprintf(idx + len, cap - len, "%s\"%s\": \"%s\"", n_entries++ ? ", " : "",
                                        b.w[s].t[i].name, fn);
            }
        }
        if (!rc) {
            len += (size_t)snprintf(idx + len, cap - len, "}}\n");
            snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
            rc = write_file_atomic(path, idx, len, err);
        }
        free(idx);
    }
    st_writer_free(&b.w[0]);
    st_writer_free(&b.w[1]);
    if (rc || !o->tokenizer) return rc;
    TokTrainConfig tc;
    tok_train_config_default(&tc);
    tc.vocab_size = V;
    tc.min_frequency = 1;
    size_t nt = sizeof(tiny_texts) / sizeof(tiny_texts[0]);
    size_t lens[8];
    for (size_t i = 0; i < nt; i++) lens[i] = strlen(tiny_texts[i]);
    Tokenizer *tok = tokenizer_train(tiny_texts, lens, nt, &tc, err);
    if (!tok) return -1;
    if (tokenizer_vocab_size(tok) > V) {
        tokenizer_free(tok);
        return moe_err_set(err, "tiny tokenizer has %d entries, more than vocab_size %d", tokenizer_vocab_size(tok), V);
    }
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    rc = tokenizer_save(tok, path, err);
    tokenizer_free(tok);
    return rc;
}
