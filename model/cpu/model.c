// CPU reference model: DeepSeek-V3-style MoE transformer (MLA, shared + routed experts,
// sigmoid/softmax gates with bias-based selection, auxiliary losses, MTP), fp32.
#include "../model.h"

#include <float.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#include "../../common/gemm.h"
#include "../layers.h"
#include "moe.h"

// ---------------------------------------------------------------------------------------
// Parameter layout

typedef struct {
    TensorInfo *t;
    int n;
    size_t off;
} Layout;

static void add_tensor(Layout *L, const char *name, int decay, int ndim, int d0, int d1, int d2) {
    size_t numel = (size_t)d0 * (ndim > 1 ? d1 : 1) * (ndim > 2 ? d2 : 1);
    if (L->t) {
        TensorInfo *ti = &L->t[L->n];
        memset(ti, 0, sizeof(*ti));
        snprintf(ti->name, sizeof(ti->name), "%s", name);
        ti->offset = L->off;
        ti->numel = numel;
        ti->ndim = ndim;
        ti->shape[0] = d0;
        ti->shape[1] = ndim > 1 ? d1 : 0;
        ti->shape[2] = ndim > 2 ? d2 : 0;
        ti->decay = decay;
    }
    L->n++;
    L->off += numel;
}

static void layout_block(Layout *L, const ModelConfig *c, int l, int is_moe) {
    char nm[TENSOR_NAME_LEN];
    int C = c->dim, H = c->n_heads, dqk = cfg_qk_head_dim(c);
#define T1(suffix, d0) (snprintf(nm, sizeof nm, "layers.%d." suffix, l), add_tensor(L, nm, 0, 1, d0, 0, 0))
#define T2(suffix, d0, d1) (snprintf(nm, sizeof nm, "layers.%d." suffix, l), add_tensor(L, nm, 1, 2, d0, d1, 0))
#define T3(suffix, d0, d1, d2) (snprintf(nm, sizeof nm, "layers.%d." suffix, l), add_tensor(L, nm, 1, 3, d0, d1, d2))
    T1("attn_norm", C);
    if (c->q_lora_rank == 0) {
        T2("attn.wq", H * dqk, C);
    } else {
        T2("attn.wq_a", c->q_lora_rank, C);
        T1("attn.q_norm", c->q_lora_rank);
        T2("attn.wq_b", H * dqk, c->q_lora_rank);
    }
    T2("attn.wkv_a", c->kv_lora_rank + c->qk_rope_dim, C);
    T1("attn.kv_norm", c->kv_lora_rank);
    T2("attn.wkv_b", H * (c->qk_nope_dim + c->v_head_dim), c->kv_lora_rank);
    T2("attn.wo", C, H * c->v_head_dim);
    T1("ffn_norm", C);
    if (!is_moe) {
        T2("ffn.w1", c->inter_dim, C);
        T2("ffn.w2", C, c->inter_dim);
        T2("ffn.w3", c->inter_dim, C);
    } else {
        int E = c->n_routed_experts, I = c->moe_inter_dim, S = c->n_shared_experts;
        T2("ffn.gate", E, C);
        T3("ffn.experts.w1", E, I, C);
        T3("ffn.experts.w2", E, C, I);
        T3("ffn.experts.w3", E, I, C);
        if (S > 0) {
            T2("ffn.shared_experts.w1", S * I, C);
            T2("ffn.shared_experts.w2", C, S * I);
            T2("ffn.shared_experts.w3", S * I, C);
        }
    }
#undef T1
#undef T2
#undef T3
}

static int block_is_moe(const ModelConfig *c, int l) {
    if (l < c->n_layers) return cfg_is_moe_layer(c, l);
    return c->n_layers > c->n_dense_layers;  // MTP block: same kind as the last layer
}

size_t model_layout(const ModelConfig *c, TensorInfo *tensors, int *n_tensors) {
    Layout L = {tensors, 0, 0};
    add_tensor(&L, "embed", 1, 2, c->vocab_size, c->dim, 0);
    for (int l = 0; l < c->n_layers; l++) layout_block(&L, c, l, block_is_moe(c, l));
    add_tensor(&L, "norm", 0, 1, c->dim, 0, 0);
    add_tensor(&L, "head", 1, 2, c->vocab_size, c->dim, 0);
    if (c->mtp_depth > 0) {
        char nm[TENSOR_NAME_LEN];
        int l = c->n_layers;
        snprintf(nm, sizeof nm, "layers.%d.enorm", l), add_tensor(&L, nm, 0, 1, c->dim, 0, 0);
        snprintf(nm, sizeof nm, "layers.%d.hnorm", l), add_tensor(&L, nm, 0, 1, c->dim, 0, 0);
        snprintf(nm, sizeof nm, "layers.%d.eh_proj", l), add_tensor(&L, nm, 1, 2, c->dim, 2 * c->dim, 0);
        layout_block(&L, c, l, block_is_moe(c, l));
        snprintf(nm, sizeof nm, "layers.%d.shared_head.norm", l), add_tensor(&L, nm, 0, 1, c->dim, 0, 0);
    }
    if (n_tensors) *n_tensors = L.n;
    return L.off;
}

void model_point(const ModelConfig *c, float *base, ParamPtrs *o, LayerParams *ls) {
    int n = 0;
    model_layout(c, NULL, &n);
    TensorInfo *t = (TensorInfo *)mallocCheck(sizeof(TensorInfo) * (size_t)n);
    model_layout(c, t, &n);
    memset(o, 0, sizeof(*o));
    o->layers = ls;
    int nb = c->n_layers + c->mtp_depth;
    memset(ls, 0, sizeof(LayerParams) * (size_t)nb);
    for (int i = 0; i < n; i++) {
        float *p = base + t[i].offset;
        const char *nm = t[i].name;
        if (strcmp(nm, "embed") == 0) o->wte = p;
        else if (strcmp(nm, "norm") == 0) o->final_norm = p;
        else if (strcmp(nm, "head") == 0) o->lm_head = p;
        else {
            int l = 0, consumed = 0;
            if (sscanf(nm, "layers.%d.%n", &l, &consumed) < 1 || consumed == 0) continue;
            const char *s = nm + consumed;
            LayerParams *lp = &ls[l];
            lp->is_moe = block_is_moe(c, l);
            if (!strcmp(s, "attn_norm")) lp->attn_norm = p;
            else if (!strcmp(s, "attn.wq")) lp->wq = p;
            else if (!strcmp(s, "attn.wq_a")) lp->wq_a = p;
            else if (!strcmp(s, "attn.q_norm")) lp->q_norm = p;
            else if (!strcmp(s, "attn.wq_b")) lp->wq_b = p;
            else if (!strcmp(s, "attn.wkv_a")) lp->wkv_a = p;
            else if (!strcmp(s, "attn.kv_norm")) lp->kv_norm = p;
            else if (!strcmp(s, "attn.wkv_b")) lp->wkv_b = p;
            else if (!strcmp(s, "attn.wo")) lp->wo = p;
            else if (!strcmp(s, "ffn_norm")) lp->ffn_norm = p;
            else if (!strcmp(s, "ffn.w1")) lp->w1 = p;
            else if (!strcmp(s, "ffn.w2")) lp->w2 = p;
            else if (!strcmp(s, "ffn.w3")) lp->w3 = p;
            else if (!strcmp(s, "ffn.gate")) lp->gate = p;
            else if (!strcmp(s, "ffn.experts.w1")) lp->ew1 = p;
            else if (!strcmp(s, "ffn.experts.w2")) lp->ew2 = p;
            else if (!strcmp(s, "ffn.experts.w3")) lp->ew3 = p;
            else if (!strcmp(s, "ffn.shared_experts.w1")) lp->sw1 = p;
            else if (!strcmp(s, "ffn.shared_experts.w2")) lp->sw2 = p;
            else if (!strcmp(s, "ffn.shared_experts.w3")) lp->sw3 = p;
            else if (!strcmp(s, "enorm")) o->mtp_enorm = p;
            else if (!strcmp(s, "hnorm")) o->mtp_hnorm = p;
            else if (!strcmp(s, "eh_proj")) o->mtp_proj = p;
            else if (!strcmp(s, "shared_head.norm")) o->mtp_norm = p;
        }
    }
    free(t);
}

// ---------------------------------------------------------------------------------------
// Activation memory: carve named buffers out of one allocation. Called once with base NULL
// to count, once to point.

typedef struct {
    char *base;
    size_t off;  // bytes
} Arena;

static void *take(Arena *a, size_t bytes) {
    bytes = (bytes + 63) & ~(size_t)63;
    void *p = a->base ? a->base + a->off : NULL;
    a->off += bytes;
    return p;
}
#define TAKEF(a, n) ((float *)take((a), sizeof(float) * (size_t)(n)))
#define TAKEI(a, n) ((int *)take((a), sizeof(int) * (size_t)(n)))

static void carve_block(Arena *a, const ModelConfig *c, BlockActs *ba, int is_moe, int B, int T) {
    size_t N = (size_t)B * T;
    int C = c->dim, H = c->n_heads, dqk = cfg_qk_head_dim(c), dv = c->v_head_dim;
    memset(ba, 0, sizeof(*ba));
    ba->x_in = TAKEF(a, N * C);
    ba->ln1 = TAKEF(a, N * C);
    ba->ln1_rstd = TAKEF(a, N);
    if (c->q_lora_rank > 0) {
        ba->qa = TAKEF(a, N * c->q_lora_rank);
        ba->qan = TAKEF(a, N * c->q_lora_rank);
        ba->qa_rstd = TAKEF(a, N);
    }
    ba->q = TAKEF(a, N * H * dqk);
    ba->kva = TAKEF(a, N * (c->kv_lora_rank + c->qk_rope_dim));
    ba->ckvn = TAKEF(a, N * c->kv_lora_rank);
    ba->ckv_rstd = TAKEF(a, N);
    ba->kv = TAKEF(a, N * H * (c->qk_nope_dim + dv));
    ba->qf = TAKEF(a, N * H * dqk);
    ba->kf = TAKEF(a, N * H * dqk);
    ba->vf = TAKEF(a, N * H * dv);
    ba->att = TAKEF(a, (size_t)B * H * T * T);
    ba->atto = TAKEF(a, N * H * dv);
    ba->x_mid = TAKEF(a, N * C);
    ba->ln2 = TAKEF(a, N * C);
    ba->ln2_rstd = TAKEF(a, N);
    ba->ffn_y = TAKEF(a, N * C);
    if (!is_moe) {
        ba->h1 = TAKEF(a, N * c->inter_dim);
        ba->h3 = TAKEF(a, N * c->inter_dim);
        ba->g = TAKEF(a, N * c->inter_dim);
    } else {
        int E = c->n_routed_experts, K = c->top_k, I = c->moe_inter_dim, S = c->n_shared_experts;
        ba->logits = TAKEF(a, N * E);
        ba->scores = TAKEF(a, N * E);
        ba->sel = TAKEI(a, N * K);
        ba->wts = TAKEF(a, N * K);
        ba->row_of = TAKEI(a, N * K);
        ba->perm = TAKEI(a, N * K);
        ba->expert_off = TAKEI(a, E + 1);
        ba->xe = TAKEF(a, N * K * C);
        ba->eh1 = TAKEF(a, N * K * I);
        ba->eh3 = TAKEF(a, N * K * I);
        ba->eg = TAKEF(a, N * K * I);
        ba->ey = TAKEF(a, N * K * C);
        if (S > 0) {
            ba->sh1 = TAKEF(a, N * S * I);
            ba->sh3 = TAKEF(a, N * S * I);
            ba->sg = TAKEF(a, N * S * I);
        }
        ba->aux_f = TAKEF(a, (size_t)(B + 1) * E);
    }
}

static size_t carve_all(Model *m, char *base) {
    const ModelConfig *c = &m->cfg;
    Arena a = {base, 0};
    int B = m->B_max, T = m->T_max;
    size_t N = (size_t)B * T;
    for (int l = 0; l < m->n_blocks; l++) carve_block(&a, c, &m->acts[l], block_is_moe(c, l), B, T);
    m->x_final = TAKEF(&a, N * c->dim);
    m->lnf = TAKEF(&a, N * c->dim);
    m->lnf_rstd = TAKEF(&a, N);
    m->logits = TAKEF(&a, N * c->vocab_size);
    m->lse = TAKEF(&a, N);
    m->targets = TAKEI(&a, N);
    m->inputs = TAKEI(&a, N);
    m->pos = TAKEI(&a, N);
    m->rope_cos = TAKEF(&a, (size_t)T * (c->qk_rope_dim / 2));
    m->rope_sin = TAKEF(&a, (size_t)T * (c->qk_rope_dim / 2));
    if (c->mtp_depth > 0) {
        m->mtp_emb = TAKEF(&a, N * c->dim);
        m->mtp_en = TAKEF(&a, N * c->dim);
        m->mtp_en_rstd = TAKEF(&a, N);
        m->mtp_hn = TAKEF(&a, N * c->dim);
        m->mtp_hn_rstd = TAKEF(&a, N);
        m->mtp_cat = TAKEF(&a, N * 2 * c->dim);
        m->mtp_x_out = TAKEF(&a, N * c->dim);
        m->mtp_ln = TAKEF(&a, N * c->dim);
        m->mtp_ln_rstd = TAKEF(&a, N);
        m->mtp_logits = TAKEF(&a, N * c->vocab_size);
        m->mtp_lse = TAKEF(&a, N);
        m->mtp_targets = TAKEI(&a, N);
        m->mtp_emb_tok = TAKEI(&a, N);
    }
    return a.off;
}

// scratch for backward: the largest per-block need, plus the residual gradient buffers
static size_t scratch_floats_needed(const ModelConfig *c, int B, int T) {
    size_t N = (size_t)B * T;
    int C = c->dim, H = c->n_heads, dqk = cfg_qk_head_dim(c), dv = c->v_head_dim;
    size_t attn = N * C /*dln*/ + N * H * dv /*datto*/ + 3 * N * H * dqk /*dqf dkf dvf*/ +
                  (size_t)B * H * T * T /*datt*/ + N * H * (c->qk_nope_dim + dv) /*dkv*/ +
                  N * c->kv_lora_rank /*dckvn*/ + N * (c->kv_lora_rank + c->qk_rope_dim) /*dkva*/ +
                  2 * N * (c->q_lora_rank + 1) /*dqa dqan*/ + N * c->qk_rope_dim;
    size_t dense = N * C + 3 * N * (size_t)(c->inter_dim > 0 ? c->inter_dim : 1);
    size_t moe = 0;
    if (c->n_layers > c->n_dense_layers) {
        int E = c->n_routed_experts, K = c->top_k, I = c->moe_inter_dim, S = c->n_shared_experts;
        moe = N * C + 2 * N * E + N * K + 2 * N * K * C + 3 * N * K * I + 3 * N * (size_t)S * I;
    }
    size_t blk = attn > dense ? attn : dense;
    blk = blk > moe ? blk : moe;
    size_t mtp = c->mtp_depth > 0 ? N * (size_t)(2 * C) + 4 * N * C : 0;
    size_t head = N * (size_t)c->vocab_size;  // transposed dlogits
    if (head > blk) blk = head;
    return blk + 2 * N * C + mtp + 1024;
}

size_t model_memory_bytes(const ModelConfig *c, int B, int T) {
    size_t np = model_layout(c, NULL, NULL);
    Model tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.cfg = *c;
    tmp.B_max = B;
    tmp.T_max = T;
    tmp.n_blocks = c->n_layers + c->mtp_depth;
    size_t act = carve_all(&tmp, NULL);
    return 4 * np * sizeof(float) + act + scratch_floats_needed(c, B, T) * sizeof(float);
}

// ---------------------------------------------------------------------------------------
// init / free

int model_init(Model *m, const ModelConfig *cfg, int B_max, int T_max, uint64_t seed, MoeErr *err) {
    memset(m, 0, sizeof(*m));
    if (config_validate(cfg, err) != 0) return -1;
    if (cfg->n_layers + cfg->mtp_depth > 64) return moe_err_set(err, "config: n_layers too large (max 63)");
    if (B_max <= 0 || T_max <= 0) return moe_err_set(err, "batch size and sequence length must be > 0");
    if (T_max > cfg->max_seq_len)
        return moe_err_set(err, "sequence length %d is longer than the model's max_seq_len %d", T_max,
                           cfg->max_seq_len);
    m->cfg = *cfg;
    m->n_blocks = cfg->n_layers + cfg->mtp_depth;
    m->B_max = B_max;
    m->T_max = T_max;
    m->grad_scale = 1.0f;
    m->num_params = model_layout(cfg, NULL, &m->n_tensors);
    m->tensors = (TensorInfo *)calloc((size_t)m->n_tensors, sizeof(TensorInfo));
    size_t pbytes = m->num_params * sizeof(float);
    m->params = (float *)malloc(pbytes);
    m->grads = (float *)calloc(m->num_params, sizeof(float));
    m->m = (float *)calloc(m->num_params, sizeof(float));
    m->v = (float *)calloc(m->num_params, sizeof(float));
    int E = cfg->n_routed_experts > 0 ? cfg->n_routed_experts : 1;
    m->bias = (float *)calloc((size_t)m->n_blocks * E, sizeof(float));
    size_t act_bytes = carve_all(m, NULL);
    m->act_mem = (float *)malloc(act_bytes);
    m->act_floats = act_bytes / sizeof(float);
    m->scratch_floats = scratch_floats_needed(cfg, B_max, T_max);
    m->scratch = (float *)malloc(m->scratch_floats * sizeof(float));
    if (!m->tensors || !m->params || !m->grads || !m->m || !m->v || !m->bias || !m->act_mem || !m->scratch) {
        size_t total = model_memory_bytes(cfg, B_max, T_max);
        model_free(m);
        return moe_err_set(err, "out of memory: the model needs %.1f MB for this config and batch (%d x %d); "
                                "use a smaller batch or model", (double)total / 1e6, B_max, T_max);
    }
    memset(m->act_mem, 0, act_bytes);
    carve_all(m, (char *)m->act_mem);
    rope_tables(m->rope_cos, m->rope_sin, T_max, cfg->qk_rope_dim, cfg->rope_theta);
    model_layout(cfg, m->tensors, &m->n_tensors);
    model_point(cfg, m->params, &m->p, m->lp[0]);
    model_point(cfg, m->grads, &m->g, m->lp[1]);
    // MoE blocks and their statistics
    m->n_moe = 0;
    for (int l = 0; l < m->n_blocks; l++) {
        if (!block_is_moe(cfg, l)) continue;
        RoutingStats *s = &m->stats[m->n_moe];
        s->layer = l;
        s->load = (double *)calloc((size_t)E, sizeof(double));
        m->moe_block[m->n_moe++] = l;
    }
    // weights: N(0, 0.02) for matrices, output projections scaled by 1/sqrt(2 L), norms = 1
    uint64_t rng = rng_seed(seed);
    float resid_scale = 1.0f / sqrtf(2.0f * (float)(cfg->n_layers + cfg->mtp_depth));
    for (int i = 0; i < m->n_tensors; i++) {
        TensorInfo *t = &m->tensors[i];
        float *p = m->params + t->offset;
        if (t->ndim == 1) {
            for (size_t j = 0; j < t->numel; j++) p[j] = 1.0f;
            continue;
        }
        float std = 0.02f;
        const char *nm = t->name;
        size_t len = strlen(nm);
        if ((len >= 7 && !strcmp(nm + len - 7, "attn.wo")) || (len >= 2 && !strcmp(nm + len - 2, "w2")))
            std *= resid_scale;
        for (size_t j = 0; j < t->numel; j++) p[j] = std * rng_normal(&rng);
    }
    return 0;
}

void model_free(Model *m) {
    free(m->tensors);
    free(m->params);
    free(m->grads);
    free(m->m);
    free(m->v);
    free(m->bias);
    free(m->act_mem);
    free(m->scratch);
    for (int i = 0; i < m->n_moe; i++) free(m->stats[i].load);
    memset(m, 0, sizeof(*m));
}

void routing_stats_reset(Model *m) {
    int E = m->cfg.n_routed_experts;
    for (int i = 0; i < m->n_moe; i++) {
        RoutingStats *s = &m->stats[i];
        memset(s->load, 0, sizeof(double) * (size_t)E);
        s->entropy_sum = s->top1_sum = s->dropped = s->tokens = 0.0;
    }
}

static RoutingStats *stats_of_block(Model *m, int l) {
    for (int i = 0; i < m->n_moe; i++)
        if (m->moe_block[i] == l) return &m->stats[i];
    return NULL;
}

// ---------------------------------------------------------------------------------------
// Block forward

static void attention_block_forward(Model *m, const LayerParams *lp, BlockActs *ba, int B, int T) {
    const ModelConfig *c = &m->cfg;
    int N = B * T, C = c->dim, H = c->n_heads, dqk = cfg_qk_head_dim(c), dv = c->v_head_dim;
    int nope = c->qk_nope_dim, rope = c->qk_rope_dim, kvr = c->kv_lora_rank;
    rmsnorm_forward(ba->ln1, ba->ln1_rstd, ba->x_in, C, lp->attn_norm, N, C, c->norm_eps);
    if (c->q_lora_rank > 0) {
        int qr = c->q_lora_rank;
        matmul_forward(ba->qa, ba->ln1, lp->wq_a, N, C, qr);
        rmsnorm_forward(ba->qan, ba->qa_rstd, ba->qa, qr, lp->q_norm, N, qr, c->norm_eps);
        matmul_forward(ba->q, ba->qan, lp->wq_b, N, qr, H * dqk);
    } else {
        matmul_forward(ba->q, ba->ln1, lp->wq, N, C, H * dqk);
    }
    matmul_forward(ba->kva, ba->ln1, lp->wkv_a, N, C, kvr + rope);
    rmsnorm_forward(ba->ckvn, ba->ckv_rstd, ba->kva, kvr + rope, lp->kv_norm, N, kvr, c->norm_eps);
    matmul_forward(ba->kv, ba->ckvn, lp->wkv_b, N, kvr, H * (nope + dv));
    // assemble per-head q, k, v; RoPE on q_pe and the single shared k_pe
    memcpy(ba->qf, ba->q, sizeof(float) * (size_t)N * H * dqk);
    rope_apply_table(ba->qf + nope, N, H, H * dqk, dqk, rope, m->pos, m->rope_cos, m->rope_sin, 0);
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        const float *kvn = ba->kv + (size_t)n * H * (nope + dv);
        const float *kpe = ba->kva + (size_t)n * (kvr + rope) + kvr;
        for (int h = 0; h < H; h++) {
            float *kh = ba->kf + ((size_t)n * H + h) * dqk;
            memcpy(kh, kvn + (size_t)h * (nope + dv), sizeof(float) * nope);
            memcpy(kh + nope, kpe, sizeof(float) * rope);
            memcpy(ba->vf + ((size_t)n * H + h) * dv, kvn + (size_t)h * (nope + dv) + nope, sizeof(float) * dv);
        }
    }
    rope_apply_table(ba->kf + nope, N, H, H * dqk, dqk, rope, m->pos, m->rope_cos, m->rope_sin, 0);
    float scale = 1.0f / sqrtf((float)dqk);
    attention_forward(ba->atto, ba->att, ba->qf, ba->kf, ba->vf, B, T, H, dqk, dv, scale);
    // x_mid = x_in + atto @ wo^T
    matmul_forward(ba->x_mid, ba->atto, lp->wo, N, H * dv, C);
#pragma omp parallel for
    for (long i = 0; i < (long)N * C; i++) ba->x_mid[i] += ba->x_in[i];
}

static void dense_ffn_forward(const ModelConfig *c, const LayerParams *lp, BlockActs *ba, int N) {
    int C = c->dim, I = c->inter_dim;
    matmul_forward(ba->h1, ba->ln2, lp->w1, N, C, I);
    matmul_forward(ba->h3, ba->ln2, lp->w3, N, C, I);
    swiglu_forward(ba->g, ba->h1, ba->h3, (long)N * I);
    matmul_forward(ba->ffn_y, ba->g, lp->w2, N, I, C);
}

static void block_forward(Model *m, int l, float *x_out, int B, int T, int collect_stats) {
    const ModelConfig *c = &m->cfg;
    const LayerParams *lp = &m->p.layers[l];
    BlockActs *ba = &m->acts[l];
    int N = B * T, C = c->dim;
    attention_block_forward(m, lp, ba, B, T);
    rmsnorm_forward(ba->ln2, ba->ln2_rstd, ba->x_mid, C, lp->ffn_norm, N, C, c->norm_eps);
    if (lp->is_moe) {
        MoeAux aux;
        moe_forward(c, lp, ba, m->bias + (size_t)l * c->n_routed_experts, B, T, &aux,
                    collect_stats ? stats_of_block(m, l) : NULL);
        m->aux_loss += aux.loss;
    } else {
        dense_ffn_forward(c, lp, ba, N);
    }
#pragma omp parallel for
    for (long i = 0; i < (long)N * C; i++) x_out[i] = ba->x_mid[i] + ba->ffn_y[i];
}

float model_forward(Model *m, const int *inputs, const int *targets, int B, int T, int collect_stats) {
    const ModelConfig *c = &m->cfg;
    if (B > m->B_max || T > m->T_max || B <= 0 || T <= 0) {
        fprintf(stderr, "error: model_forward batch %d x %d exceeds the allocated %d x %d\n", B, T, m->B_max, m->T_max);
        exit(EXIT_FAILURE);
    }
    int N = B * T, C = c->dim, V = c->vocab_size, L = c->n_layers;
    for (int n = 0; n < N; n++) {
        if (inputs[n] < 0 || inputs[n] >= V) {
            fprintf(stderr, "error: input token %d at position %d is outside the vocabulary (%d)\n", inputs[n], n, V);
            exit(EXIT_FAILURE);
        }
        if (targets && (targets[n] < -1 || targets[n] >= V)) {
            fprintf(stderr, "error: target token %d at position %d is outside the vocabulary (%d)\n", targets[n], n, V);
            exit(EXIT_FAILURE);
        }
    }
    m->B = B;
    m->T = T;
    m->aux_loss = 0.0f;
    memcpy(m->inputs, inputs, sizeof(int) * (size_t)N);
    for (int n = 0; n < N; n++) m->pos[n] = n % T;
    encoder_forward(m->acts[0].x_in, inputs, m->p.wte, N, C);
    for (int l = 0; l < L; l++) {
        float *x_out = l + 1 < L ? m->acts[l + 1].x_in : m->x_final;
        block_forward(m, l, x_out, B, T, collect_stats);
    }
    rmsnorm_forward(m->lnf, m->lnf_rstd, m->x_final, C, m->p.final_norm, N, C, c->norm_eps);
    matmul_forward(m->logits, m->lnf, m->p.lm_head, N, C, V);
    m->ce_loss = m->mtp_loss = 0.0f;
    m->n_valid = m->mtp_n_valid = 0;
    if (!targets) {
        m->loss = 0.0f;
        return 0.0f;
    }
    memcpy(m->targets, targets, sizeof(int) * (size_t)N);
    m->ce_loss = crossentropy_forward(m->lse, m->logits, targets, N, V, &m->n_valid);
    m->loss = m->ce_loss;
    if (c->mtp_depth > 0) {
        // MTP depth 1: h'_i = eh_proj [enorm(emb(t_{i+1})); hnorm(h_i)] -> block -> norm -> head -> t_{i+2}
        for (int n = 0; n < N; n++) {
            int t = n % T;
            m->mtp_emb_tok[n] = targets[n] >= 0 ? targets[n] : 0;
            m->mtp_targets[n] = (t + 1 < T && targets[n] >= 0) ? targets[n + 1] : -1;
        }
        encoder_forward(m->mtp_emb, m->mtp_emb_tok, m->p.wte, N, C);
        rmsnorm_forward(m->mtp_en, m->mtp_en_rstd, m->mtp_emb, C, m->p.mtp_enorm, N, C, c->norm_eps);
        rmsnorm_forward(m->mtp_hn, m->mtp_hn_rstd, m->x_final, C, m->p.mtp_hnorm, N, C, c->norm_eps);
#pragma omp parallel for
        for (int n = 0; n < N; n++) {
            memcpy(m->mtp_cat + (size_t)n * 2 * C, m->mtp_en + (size_t)n * C, sizeof(float) * C);
            memcpy(m->mtp_cat + (size_t)n * 2 * C + C, m->mtp_hn + (size_t)n * C, sizeof(float) * C);
        }
        matmul_forward(m->acts[L].x_in, m->mtp_cat, m->p.mtp_proj, N, 2 * C, C);
        block_forward(m, L, m->mtp_x_out, B, T, collect_stats);
        rmsnorm_forward(m->mtp_ln, m->mtp_ln_rstd, m->mtp_x_out, C, m->p.mtp_norm, N, C, c->norm_eps);
        matmul_forward(m->mtp_logits, m->mtp_ln, m->p.lm_head, N, C, V);
        m->mtp_loss = crossentropy_forward(m->mtp_lse, m->mtp_logits, m->mtp_targets, N, V, &m->mtp_n_valid);
        m->loss += c->mtp_lambda * m->mtp_loss;
    }
    m->loss += m->aux_loss;
    return m->loss;
}

// ---------------------------------------------------------------------------------------
// Block backward. dx (N, C): on entry the gradient of the block output, on exit the gradient
// of the block input (the residual connections make this an in-place accumulation).

typedef struct {
    float *base;
    size_t off, cap;
} Scratch;

static float *scr(Scratch *s, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (s->off + n > s->cap) {
        fprintf(stderr, "error: internal: backward scratch too small (%zu + %zu > %zu floats)\n", s->off, n, s->cap);
        exit(EXIT_FAILURE);
    }
    float *p = s->base + s->off;
    s->off += n;
    memset(p, 0, n * sizeof(float));
    return p;
}

// like scr, without zeroing (for buffers that are fully overwritten)
static float *scr_raw(Scratch *s, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (s->off + n > s->cap) {
        fprintf(stderr, "error: internal: backward scratch too small (%zu + %zu > %zu floats)\n", s->off, n, s->cap);
        exit(EXIT_FAILURE);
    }
    float *p = s->base + s->off;
    s->off += n;
    return p;
}

static void attention_block_backward(Model *m, int l, float *dx, Scratch *S) {
    const ModelConfig *c = &m->cfg;
    const LayerParams *lp = &m->p.layers[l];
    LayerParams *gp = &m->g.layers[l];
    BlockActs *ba = &m->acts[l];
    int B = m->B, T = m->T, N = B * T, C = c->dim, H = c->n_heads, dqk = cfg_qk_head_dim(c), dv = c->v_head_dim;
    int nope = c->qk_nope_dim, rope = c->qk_rope_dim, kvr = c->kv_lora_rank;
    size_t mark = S->off;
    // x_mid = x_in + atto @ wo^T : dx (grad of x_mid) flows to x_in unchanged, plus the attention path
    float *datto = scr(S, (size_t)N * H * dv);
    matmul_backward(datto, gp->wo, dx, ba->atto, lp->wo, N, H * dv, C);
    float *dqf = scr(S, (size_t)N * H * dqk);
    float *dkf = scr(S, (size_t)N * H * dqk);
    float *dvf = scr(S, (size_t)N * H * dv);
    float *datt = scr(S, (size_t)B * H * T * T);
    float scale = 1.0f / sqrtf((float)dqk);
    attention_backward(dqf, dkf, dvf, datt, datto, ba->att, ba->qf, ba->kf, ba->vf, B, T, H, dqk, dv, scale);
    // undo RoPE on the gradients (transpose of the rotation)
    rope_apply_table(dqf + nope, N, H, H * dqk, dqk, rope, m->pos, m->rope_cos, m->rope_sin, 1);
    rope_apply_table(dkf + nope, N, H, H * dqk, dqk, rope, m->pos, m->rope_cos, m->rope_sin, 1);
    // scatter dk, dv into dkv (per head [k_nope, v]) and dkva (k_pe summed over heads)
    float *dkv = scr(S, (size_t)N * H * (nope + dv));
    float *dkva = scr(S, (size_t)N * (kvr + rope));
#pragma omp parallel for
    for (int n = 0; n < N; n++) {
        float *dkvn = dkv + (size_t)n * H * (nope + dv);
        float *dkpe = dkva + (size_t)n * (kvr + rope) + kvr;
        for (int h = 0; h < H; h++) {
            const float *dk = dkf + ((size_t)n * H + h) * dqk;
            memcpy(dkvn + (size_t)h * (nope + dv), dk, sizeof(float) * nope);
            for (int i = 0; i < rope; i++) dkpe[i] += dk[nope + i];
            memcpy(dkvn + (size_t)h * (nope + dv) + nope, dvf + ((size_t)n * H + h) * dv, sizeof(float) * dv);
        }
    }
    float *dckvn = scr(S, (size_t)N * kvr);
    matmul_backward(dckvn, gp->wkv_b, dkv, ba->ckvn, lp->wkv_b, N, kvr, H * (nope + dv));
    rmsnorm_backward(dkva, kvr + rope, gp->kv_norm, dckvn, ba->kva, kvr + rope, lp->kv_norm, ba->ckv_rstd, N, kvr);
    float *dln1 = scr(S, (size_t)N * C);
    matmul_backward(dln1, gp->wkv_a, dkva, ba->ln1, lp->wkv_a, N, C, kvr + rope);
    // the query path: dq = dqf (RoPE already undone)
    if (c->q_lora_rank > 0) {
        int qr = c->q_lora_rank;
        float *dqan = scr(S, (size_t)N * qr);
        float *dqa = scr(S, (size_t)N * qr);
        matmul_backward(dqan, gp->wq_b, dqf, ba->qan, lp->wq_b, N, qr, H * dqk);
        rmsnorm_backward(dqa, qr, gp->q_norm, dqan, ba->qa, qr, lp->q_norm, ba->qa_rstd, N, qr);
        matmul_backward(dln1, gp->wq_a, dqa, ba->ln1, lp->wq_a, N, C, qr);
    } else {
        matmul_backward(dln1, gp->wq, dqf, ba->ln1, lp->wq, N, C, H * dqk);
    }
    rmsnorm_backward(dx, C, gp->attn_norm, dln1, ba->x_in, C, lp->attn_norm, ba->ln1_rstd, N, C);
    S->off = mark;
}

static void dense_ffn_backward(const ModelConfig *c, const LayerParams *lp, LayerParams *gp, BlockActs *ba,
                               const float *dy, float *dln2, int N, Scratch *S) {
    int C = c->dim, I = c->inter_dim;
    size_t mark = S->off;
    float *dg = scr(S, (size_t)N * I);
    float *dh1 = scr(S, (size_t)N * I);
    float *dh3 = scr(S, (size_t)N * I);
    matmul_backward(dg, gp->w2, dy, ba->g, lp->w2, N, I, C);
    swiglu_backward(dh1, dh3, dg, ba->h1, ba->h3, (long)N * I);
    matmul_backward(dln2, gp->w1, dh1, ba->ln2, lp->w1, N, C, I);
    matmul_backward(dln2, gp->w3, dh3, ba->ln2, lp->w3, N, C, I);
    S->off = mark;
}

static void block_backward(Model *m, int l, float *dx, Scratch *S) {
    const ModelConfig *c = &m->cfg;
    const LayerParams *lp = &m->p.layers[l];
    LayerParams *gp = &m->g.layers[l];
    BlockActs *ba = &m->acts[l];
    int N = m->B * m->T, C = c->dim;
    size_t mark = S->off;
    // x_out = x_mid + ffn(ln2(x_mid))
    float *dln2 = scr(S, (size_t)N * C);
    if (lp->is_moe)
        moe_backward(c, lp, gp, ba, dx, dln2, m->B, m->T, m->grad_scale, S->base + S->off, S->cap - S->off);
    else
        dense_ffn_backward(c, lp, gp, ba, dx, dln2, N, S);
    rmsnorm_backward(dx, C, gp->ffn_norm, dln2, ba->x_mid, C, lp->ffn_norm, ba->ln2_rstd, N, C);
    S->off = mark;
    attention_block_backward(m, l, dx, S);
}

// The output head's backward: dX += dlogits @ W; dW += dlogits^T @ X. The second product has
// a large M (V) and a transposed A, which the GEMM libraries run at half speed; transposing
// dlogits once (V, N) and multiplying NN is about twice as fast on the model's shapes
// (see bench_gemm).
static void head_backward(Model *m, float *dx, const float *dlogits, const float *x, Scratch *S) {
    const ModelConfig *c = &m->cfg;
    int N = m->B * m->T, C = c->dim, V = c->vocab_size;
    gemm(0, 0, N, C, V, 1.0f, dlogits, V, m->p.lm_head, C, 1.0f, dx, C);
    size_t mark = S->off;
    float *dT = scr_raw(S, (size_t)N * V);
    transpose(dT, dlogits, N, V);
    gemm(0, 0, V, C, N, 1.0f, dT, N, x, C, 1.0f, m->g.lm_head, C);
    S->off = mark;
}

void model_backward(Model *m) {
    const ModelConfig *c = &m->cfg;
    int N = m->B * m->T, C = c->dim, V = c->vocab_size, L = c->n_layers;
    Scratch S = {m->scratch, 0, m->scratch_floats};
    float *dx = scr(&S, (size_t)N * C);      // gradient of the residual stream
    float *dlnf = scr(&S, (size_t)N * C);
    float gs = m->grad_scale;
    // main head
    crossentropy_backward(m->logits, m->lse, m->targets, N, V, gs, m->n_valid);
    head_backward(m, dlnf, m->logits, m->lnf, &S);
    rmsnorm_backward(dx, C, m->g.final_norm, dlnf, m->x_final, C, m->p.final_norm, m->lnf_rstd, N, C);
    if (c->mtp_depth > 0) {
        float *dmx = scr(&S, (size_t)N * C);
        float *dmln = scr(&S, (size_t)N * C);
        crossentropy_backward(m->mtp_logits, m->mtp_lse, m->mtp_targets, N, V, gs * c->mtp_lambda, m->mtp_n_valid);
        head_backward(m, dmln, m->mtp_logits, m->mtp_ln, &S);
        rmsnorm_backward(dmx, C, m->g.mtp_norm, dmln, m->mtp_x_out, C, m->p.mtp_norm, m->mtp_ln_rstd, N, C);
        block_backward(m, L, dmx, &S);  // dmx is now the gradient of the MTP block input
        float *dcat = scr(&S, (size_t)N * 2 * C);
        matmul_backward(dcat, m->g.mtp_proj, dmx, m->mtp_cat, m->p.mtp_proj, N, 2 * C, C);
        float *den = scr(&S, (size_t)N * C);
        float *dhn = scr(&S, (size_t)N * C);
#pragma omp parallel for
        for (int n = 0; n < N; n++) {
            memcpy(den + (size_t)n * C, dcat + (size_t)n * 2 * C, sizeof(float) * C);
            memcpy(dhn + (size_t)n * C, dcat + (size_t)n * 2 * C + C, sizeof(float) * C);
        }
        float *demb = scr(&S, (size_t)N * C);
        rmsnorm_backward(demb, C, m->g.mtp_enorm, den, m->mtp_emb, C, m->p.mtp_enorm, m->mtp_en_rstd, N, C);
        rmsnorm_backward(dx, C, m->g.mtp_hnorm, dhn, m->x_final, C, m->p.mtp_hnorm, m->mtp_hn_rstd, N, C);
        // tokens whose target was ignored embedded token 0 as a stand-in: no gradient flows through it
        for (int n = 0; n < N; n++)
            if (m->targets[n] < 0) memset(demb + (size_t)n * C, 0, sizeof(float) * C);
        encoder_backward(m->g.wte, demb, m->mtp_emb_tok, N, C);
        S.off = 2 * (((size_t)N * C + 15) & ~(size_t)15);  // keep dx, dlnf
    }
    for (int l = L - 1; l >= 0; l--) block_backward(m, l, dx, &S);
    // embedding: dx is now the gradient of block 0's input, acts[0].x_in = wte[inputs]
    encoder_backward(m->g.wte, dx, m->inputs, N, C);
}

// ---------------------------------------------------------------------------------------
// Optimizer and balancing

void model_zero_grad(Model *m) { memset(m->grads, 0, m->num_params * sizeof(float)); }

// sum of squares in fixed chunks, summed in order: the same result for any thread count
float model_grad_norm(const Model *m) {
    enum { CHUNKS = 256 };
    double part[CHUNKS];
    size_t n = m->num_params, per = (n + CHUNKS - 1) / CHUNKS;
#pragma omp parallel for
    for (int c = 0; c < CHUNKS; c++) {
        size_t i0 = (size_t)c * per, i1 = i0 + per < n ? i0 + per : n;
        double s = 0.0;
        for (size_t i = i0; i < i1; i++) s += (double)m->grads[i] * m->grads[i];
        part[c] = s;
    }
    double total = 0.0;
    for (int c = 0; c < CHUNKS; c++) total += part[c];
    return (float)sqrt(total);
}

void model_adamw(Model *m, float lr, float beta1, float beta2, float eps, float weight_decay, float grad_scale, int t) {
    float b1c = 1.0f - powf(beta1, (float)t), b2c = 1.0f - powf(beta2, (float)t);
    for (int ti = 0; ti < m->n_tensors; ti++) {
        const TensorInfo *info = &m->tensors[ti];
        float wd = info->decay ? weight_decay : 0.0f;
        float *p = m->params + info->offset, *g = m->grads + info->offset;
        float *mm = m->m + info->offset, *vv = m->v + info->offset;
        long n = (long)info->numel;
#pragma omp parallel for
        for (long i = 0; i < n; i++) p[i] = lm_adamw(p[i], g[i] * grad_scale, &mm[i], &vv[i], lr, beta1, beta2, eps, wd, b1c, b2c);
    }
}

void model_update_bias(Model *m) {
    const ModelConfig *c = &m->cfg;
    if (!cfg_uses_bias(c)) return;
    int E = c->n_routed_experts;
    for (int i = 0; i < m->n_moe; i++) {
        const RoutingStats *s = &m->stats[i];
        float *b = m->bias + (size_t)s->layer * E;
        double mean = 0.0;
        for (int e = 0; e < E; e++) mean += s->load[e];
        mean /= E;
        for (int e = 0; e < E; e++) {
            double d = mean - s->load[e];
            b[e] += c->bias_update_speed * (float)((d > 0) - (d < 0));
        }
    }
}

// FLOPs of forward + backward (3x forward) per token: 2 per multiply-add of every active
// weight (the K routed experts, shared experts, dense FFN, attention projections, gate, head)
// plus attention scores and values over the causal context (T/2 on average).
double model_flops_per_token(const ModelConfig *c, int T) {
    double C = c->dim, H = c->n_heads, dqk = cfg_qk_head_dim(c), dv = c->v_head_dim;
    double kvr = c->kv_lora_rank, rope = c->qk_rope_dim, nope = c->qk_nope_dim;
    double attn_w = (c->q_lora_rank > 0 ? (double)c->q_lora_rank * C + H * dqk * c->q_lora_rank : H * dqk * C) +
                    (kvr + rope) * C + H * (nope + dv) * kvr + C * H * dv;
    double attn_ctx = H * (dqk + dv) * (T + 1) / 2.0;  // multiply-adds of QK^T and AV, causal
    double per_layer_dense = 3.0 * c->inter_dim * C;
    double per_layer_moe = 3.0 * c->moe_inter_dim * C * (c->top_k + c->n_shared_experts) + (double)c->n_routed_experts * C;
    double macs = 0.0;
    int nb = c->n_layers + c->mtp_depth;
    for (int l = 0; l < nb; l++) {
        macs += attn_w + attn_ctx;
        macs += block_is_moe(c, l) ? per_layer_moe : per_layer_dense;
    }
    macs += (double)c->vocab_size * C * (1 + c->mtp_depth);
    if (c->mtp_depth) macs += 2.0 * C * C;
    return 6.0 * macs;  // 2 FLOPs per MAC, x3 for forward + backward
}
