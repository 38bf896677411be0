// Generation with the absorbed MLA KV cache (DeepSeek-V3 inference), CPU reference.
// See model/generate.h for the math. One token per step; all matrix-vector products go
// through the project's GEMM (matmul_forward / gemm with one row).
#include "../generate.h"

#include <float.h>
#include <math.h>
#include <string.h>

#include "../../common/gemm.h"
#include "../layers.h"
#include "moe.h"

// ---------------------------------------------------------------------------------------
// init / free

static size_t max3(size_t a, size_t b, size_t c) {
    size_t m = a > b ? a : b;
    return m > c ? m : c;
}

int gen_init(Generator *g, const Model *m, int max_len, MoeErr *err) {
    memset(g, 0, sizeof(*g));
    const ModelConfig *c = &m->cfg;
    if (!m->params) return moe_err_set(err, "generate: the model is not initialised");
    if (max_len < 1 || max_len > c->max_seq_len)
        return moe_err_set(err, "generate: cache length %d must be in 1..%d (the model's max_seq_len)", max_len,
                           c->max_seq_len);
    int C = c->dim, L = c->n_layers, H = c->n_heads, dqk = cfg_qk_head_dim(c), dv = c->v_head_dim;
    int kvr = c->kv_lora_rank, rope = c->qk_rope_dim, V = c->vocab_size;
    int E = c->n_routed_experts > 0 ? c->n_routed_experts : 1, K = c->top_k > 0 ? c->top_k : 1;
    size_t hid = max3((size_t)c->inter_dim, (size_t)c->n_shared_experts * c->moe_inter_dim, (size_t)c->moe_inter_dim);
    g->m = m;
    g->max_len = max_len;
    g->len = 0;
    g->ckv = (float *)malloc(sizeof(float) * (size_t)L * max_len * kvr);
    g->kpe = (float *)malloc(sizeof(float) * (size_t)L * max_len * rope);
    g->x = (float *)malloc(sizeof(float) * (size_t)C);
    g->ln = (float *)malloc(sizeof(float) * (size_t)C);
    g->qa = (float *)malloc(sizeof(float) * (size_t)(c->q_lora_rank > 0 ? 2 * c->q_lora_rank : 1));
    g->q = (float *)malloc(sizeof(float) * (size_t)H * dqk);
    g->kva = (float *)malloc(sizeof(float) * (size_t)(kvr + rope));
    g->qabs = (float *)malloc(sizeof(float) * (size_t)H * kvr);
    g->att = (float *)malloc(sizeof(float) * (size_t)H * max_len);
    g->ctx = (float *)malloc(sizeof(float) * (size_t)H * kvr);
    g->o = (float *)malloc(sizeof(float) * (size_t)H * dv);
    g->y = (float *)malloc(sizeof(float) * (size_t)C * 2);
    g->h1 = (float *)malloc(sizeof(float) * (hid ? hid : 1));
    g->h3 = (float *)malloc(sizeof(float) * (hid ? hid : 1));
    g->gate_logits = (float *)malloc(sizeof(float) * (size_t)E);
    g->scores = (float *)malloc(sizeof(float) * (size_t)E);
    g->sel = (int *)malloc(sizeof(int) * (size_t)K);
    g->wts = (float *)malloc(sizeof(float) * (size_t)K);
    g->logits = (float *)malloc(sizeof(float) * (size_t)V);
    g->probs = (float *)malloc(sizeof(float) * (size_t)V);
    g->idx = (int *)malloc(sizeof(int) * (size_t)V);
    if (!g->ckv || !g->kpe || !g->x || !g->ln || !g->qa || !g->q || !g->kva || !g->qabs || !g->att || !g->ctx ||
        !g->o || !g->y || !g->h1 || !g->h3 || !g->gate_logits || !g->scores || !g->sel || !g->wts || !g->logits ||
        !g->probs || !g->idx) {
        gen_free(g);
        return moe_err_set(err, "generate: out of memory allocating a KV cache of %d positions", max_len);
    }
    return 0;
}

void gen_free(Generator *g) {
    void *bufs[] = {g->ckv, g->kpe, g->x,  g->ln, g->qa, g->q, g->kva, g->qabs, g->att, g->ctx, g->o,
                    g->y,   g->h1,  g->h3, g->gate_logits, g->scores, g->sel, g->wts, g->logits, g->probs, g->idx};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++) free(bufs[i]);
    memset(g, 0, sizeof(*g));
}

void gen_reset(Generator *g) { g->len = 0; }

// ---------------------------------------------------------------------------------------
// one decode step

// y (C) = w2(silu(w1 x) * (w3 x)) for a SwiGLU MLP of width I
static void swiglu_vec(Generator *g, float *y, const float *x, const float *w1, const float *w2, const float *w3,
                       int C, int I) {
    matmul_forward(g->h1, x, w1, 1, C, I);
    matmul_forward(g->h3, x, w3, 1, C, I);
    swiglu_forward(g->h1, g->h1, g->h3, I);
    matmul_forward(y, g->h1, w2, 1, I, C);
}

// absorbed MLA for one token at position pos of layer l; adds the attention output to g->x
static void attention_step(Generator *g, int l, int pos) {
    const ModelConfig *c = &g->m->cfg;
    const LayerParams *lp = &g->m->p.layers[l];
    int C = c->dim, H = c->n_heads, dqk = cfg_qk_head_dim(c), dv = c->v_head_dim;
    int nope = c->qk_nope_dim, rope = c->qk_rope_dim, kvr = c->kv_lora_rank, T = pos + 1;
    float rstd;
    rmsnorm_forward(g->ln, &rstd, g->x, C, lp->attn_norm, 1, C, c->norm_eps);
    // query (H*dqk): per head [q_nope, q_pe]
    if (c->q_lora_rank > 0) {
        int qr = c->q_lora_rank;
        float *qan = g->qa + qr;
        matmul_forward(g->qa, g->ln, lp->wq_a, 1, C, qr);
        rmsnorm_forward(qan, &rstd, g->qa, qr, lp->q_norm, 1, qr, c->norm_eps);
        matmul_forward(g->q, qan, lp->wq_b, 1, qr, H * dqk);
    } else {
        matmul_forward(g->q, g->ln, lp->wq, 1, C, H * dqk);
    }
    rope_apply(g->q + nope, 1, H, H * dqk, dqk, rope, &pos, c->rope_theta, 0);
    // the cache entry of this token: kv_norm(c_kv) and RoPE'd k_pe
    float *ckv = g->ckv + (size_t)l * g->max_len * kvr;   // (max_len, kvr)
    float *kpe = g->kpe + (size_t)l * g->max_len * rope;  // (max_len, rope)
    matmul_forward(g->kva, g->ln, lp->wkv_a, 1, C, kvr + rope);
    rmsnorm_forward(ckv + (size_t)pos * kvr, &rstd, g->kva, kvr + rope, lp->kv_norm, 1, kvr, c->norm_eps);
    memcpy(kpe + (size_t)pos * rope, g->kva + kvr, sizeof(float) * rope);
    rope_apply(kpe + (size_t)pos * rope, 1, 1, rope, rope, rope, &pos, c->rope_theta, 0);
    // absorb W_UK into the query: qabs_h (kvr) = q_nope_h (nope) @ W_UK_h (nope, kvr)
    const float *wkv_b = lp->wkv_b;  // (H*(nope + v), kvr): per head nope rows of W_UK then v rows of W_UV
    for (int h = 0; h < H; h++) {
        const float *wuk = wkv_b + (size_t)h * (nope + dv) * kvr;
        gemm(0, 0, 1, kvr, nope, 1.0f, g->q + (size_t)h * dqk, nope, wuk, kvr, 0.0f, g->qabs + (size_t)h * kvr, kvr);
    }
    // scores (H, T) = scale * (qabs (H, kvr) @ ckv^T + q_pe (H, rope) @ kpe^T): all heads share the cache
    float scale = 1.0f / sqrtf((float)dqk);
    gemm(0, 1, H, T, kvr, scale, g->qabs, kvr, ckv, kvr, 0.0f, g->att, T);
    gemm(0, 1, H, T, rope, scale, g->q + nope, dqk, kpe, rope, 1.0f, g->att, T);
    for (int h = 0; h < H; h++) {
        float *row = g->att + (size_t)h * T;
        float mx = -FLT_MAX, sum = 0.0f;
        for (int s = 0; s < T; s++) mx = row[s] > mx ? row[s] : mx;
        for (int s = 0; s < T; s++) sum += (row[s] = expf(row[s] - mx));
        float inv = 1.0f / sum;
        for (int s = 0; s < T; s++) row[s] *= inv;
    }
    // ctx (H, kvr) = att (H, T) @ ckv (T, kvr); o_h (v) = W_UV_h (v, kvr) @ ctx_h
    gemm(0, 0, H, kvr, T, 1.0f, g->att, T, ckv, kvr, 0.0f, g->ctx, kvr);
    for (int h = 0; h < H; h++) {
        const float *wuv = wkv_b + ((size_t)h * (nope + dv) + nope) * kvr;
        gemm(0, 1, 1, dv, kvr, 1.0f, g->ctx + (size_t)h * kvr, kvr, wuv, kvr, 0.0f, g->o + (size_t)h * dv, dv);
    }
    matmul_forward(g->y, g->o, lp->wo, 1, H * dv, C);
    for (int i = 0; i < C; i++) g->x[i] += g->y[i];
}

// FFN of layer l on the current token; adds its output to g->x
static void ffn_step(Generator *g, int l) {
    const Model *m = g->m;
    const ModelConfig *c = &m->cfg;
    const LayerParams *lp = &m->p.layers[l];
    int C = c->dim;
    float rstd;
    rmsnorm_forward(g->ln, &rstd, g->x, C, lp->ffn_norm, 1, C, c->norm_eps);
    if (!lp->is_moe) {
        swiglu_vec(g, g->y, g->ln, lp->w1, lp->w2, lp->w3, C, c->inter_dim);
        for (int i = 0; i < C; i++) g->x[i] += g->y[i];
        return;
    }
    int E = c->n_routed_experts, K = c->top_k, I = c->moe_inter_dim, S = c->n_shared_experts;
    // the same gate and routing as training (bias only for selection, when the mode uses it)
    matmul_forward(g->gate_logits, g->ln, lp->gate, 1, C, E);
    moe_scores(c, g->scores, g->gate_logits, 1);
    const float *bias = cfg_uses_bias(c) ? m->bias + (size_t)l * E : NULL;
    moe_route_token(c, g->scores, bias, g->sel, g->wts);
    float *ye = g->y + C;  // (C) one expert's output
    if (S > 0) {
        swiglu_vec(g, g->y, g->ln, lp->sw1, lp->sw2, lp->sw3, C, S * I);
        for (int i = 0; i < C; i++) g->x[i] += g->y[i];
    }
    for (int k = 0; k < K; k++) {
        int e = g->sel[k];
        swiglu_vec(g, ye, g->ln, lp->ew1 + (size_t)e * I * C, lp->ew2 + (size_t)e * C * I,
                   lp->ew3 + (size_t)e * I * C, C, I);
        float w = g->wts[k];
        for (int i = 0; i < C; i++) g->x[i] += w * ye[i];
    }
}

int gen_step(Generator *g, int token, const float **logits, MoeErr *err) {
    const Model *m = g->m;
    const ModelConfig *c = &m->cfg;
    int C = c->dim, V = c->vocab_size;
    if (token < 0 || token >= V)
        return moe_err_set(err, "generate: token id %d is outside the model's vocabulary (%d)", token, V);
    if (g->len >= g->max_len)
        return moe_err_set(err, "generate: the KV cache is full (%d positions)", g->max_len);
    int pos = g->len;
    memcpy(g->x, m->p.wte + (size_t)token * C, sizeof(float) * C);
    for (int l = 0; l < c->n_layers; l++) {
        attention_step(g, l, pos);
        ffn_step(g, l);
    }
    float rstd;
    rmsnorm_forward(g->ln, &rstd, g->x, C, m->p.final_norm, 1, C, c->norm_eps);
    matmul_forward(g->logits, g->ln, m->p.lm_head, 1, C, V);
    g->len = pos + 1;
    if (logits) *logits = g->logits;
    return 0;
}

int gen_prefill(Generator *g, const int *tokens, int n, const float **logits, MoeErr *err) {
    if (n < 1) return moe_err_set(err, "generate: the prompt is empty (need at least one token)");
    for (int i = 0; i < n; i++)
        if (gen_step(g, tokens[i], logits, err) != 0) return -1;
    return 0;
}

// ---------------------------------------------------------------------------------------
// sampling

static int by_logit_desc(const void *a, const void *b, void *ctx) {
    const float *lg = (const float *)ctx;
    int i = *(const int *)a, j = *(const int *)b;
    if (lg[i] > lg[j]) return -1;
    if (lg[i] < lg[j]) return 1;
    return (i > j) - (i < j);  // ties: lower id first
}

// is token i ranked after token j (smaller logit, or equal logit and larger id)?
static int ranks_after(const float *lg, int i, int j) { return lg[i] < lg[j] || (lg[i] == lg[j] && i > j); }

static void heap_sift_down(const float *lg, int *h, int k, int at) {
    for (;;) {
        int l = 2 * at + 1, r = l + 1, worst = at;
        if (l < k && ranks_after(lg, h[l], h[worst])) worst = l;
        if (r < k && ranks_after(lg, h[r], h[worst])) worst = r;
        if (worst == at) return;
        int t = h[at];
        h[at] = h[worst];
        h[worst] = t;
        at = worst;
    }
}

// the k best-ranked ids of lg (V) into out[0..k), unordered: a heap whose root is the worst kept
static void top_k_select(const float *lg, int V, int k, int *out) {
    for (int i = 0; i < k; i++) out[i] = i;
    for (int i = k / 2 - 1; i >= 0; i--) heap_sift_down(lg, out, k, i);
    for (int i = k; i < V; i++) {
        if (ranks_after(lg, i, out[0])) continue;
        out[0] = i;
        heap_sift_down(lg, out, k, 0);
    }
}

static int argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

int sample_distribution(const float *logits, int V, const SampleOpts *o, float *probs, int *idx) {
    memset(probs, 0, sizeof(float) * (size_t)V);
    if (!(o->temperature > 0.0f)) {
        idx[0] = argmax(logits, V);
        probs[idx[0]] = 1.0f;
        return 1;
    }
    int kept = (o->top_k > 0 && o->top_k < V) ? o->top_k : V;
    if (kept < V) {
        top_k_select(logits, V, kept, idx);  // O(V log k), then sort only the k
    } else {
        for (int i = 0; i < V; i++) idx[i] = i;
    }
    qsort_r(idx, (size_t)kept, sizeof(int), by_logit_desc, (void *)logits);
    // softmax over the kept tokens (sorted: idx[0] has the largest logit)
    float mx = logits[idx[0]], inv_t = 1.0f / o->temperature;
    double sum = 0.0;
    for (int r = 0; r < kept; r++) sum += (probs[idx[r]] = expf((logits[idx[r]] - mx) * inv_t));
    for (int r = 0; r < kept; r++) probs[idx[r]] = (float)(probs[idx[r]] / sum);
    // nucleus: the smallest prefix with mass >= top_p
    if (o->top_p > 0.0f && o->top_p < 1.0f) {
        double cum = 0.0;
        int n = kept;
        for (int r = 0; r < kept; r++) {
            cum += probs[idx[r]];
            if (cum >= o->top_p) {
                n = r + 1;
                break;
            }
        }
        for (int r = n; r < kept; r++) probs[idx[r]] = 0.0f;
        kept = n;
        for (int r = 0; r < kept; r++) probs[idx[r]] = (float)(probs[idx[r]] / cum);
    }
    return kept;
}

int sample_token(const float *logits, int V, const SampleOpts *o, uint64_t *rng, float *probs, int *idx) {
    if (!(o->temperature > 0.0f)) return argmax(logits, V);
    int kept = sample_distribution(logits, V, o, probs, idx);
    float u = rng_uniform(rng);
    double cum = 0.0;
    for (int r = 0; r < kept; r++) {
        cum += probs[idx[r]];
        if (u < cum) return idx[r];
    }
    return idx[kept - 1];  // rounding: u above the summed mass
}

int gen_sample(Generator *g, const float *logits, const SampleOpts *o, uint64_t *rng) {
    return sample_token(logits, g->m->cfg.vocab_size, o, rng, g->probs, g->idx);
}

int gen_generate(Generator *g, const int *prompt, int n_prompt, int n_new, const SampleOpts *o, uint64_t seed,
                 int *out, int (*on_token)(int token, void *ctx), void *ctx, MoeErr *err) {
    gen_reset(g);
    if (n_prompt > g->max_len)
        return moe_err_set(err, "generate: the prompt (%d tokens) is longer than the cache (%d positions)", n_prompt,
                           g->max_len);
    const float *logits = NULL;
    if (gen_prefill(g, prompt, n_prompt, &logits, err) != 0) return -1;
    uint64_t rng = rng_seed(seed);
    int n = 0;
    while (n < n_new) {
        int tok = gen_sample(g, logits, o, &rng);
        out[n++] = tok;
        if (on_token && on_token(tok, ctx) != 0) break;
        if (n == n_new || g->len >= g->max_len) break;
        if (gen_step(g, tok, &logits, err) != 0) return -1;
    }
    return n;
}

// ---------------------------------------------------------------------------------------
// cache size report

void generate_cache_report(const ModelConfig *c, GenCacheReport *r) {
    memset(r, 0, sizeof(*r));
    size_t H = (size_t)c->n_heads;
    r->n_layers = c->n_layers;
    r->mla_floats_per_token_layer = (size_t)c->kv_lora_rank + (size_t)c->qk_rope_dim;
    r->mha_floats_per_token_layer = H * (size_t)(c->qk_nope_dim + c->qk_rope_dim) + H * (size_t)c->v_head_dim;
    r->mla_bytes_per_token = r->mla_floats_per_token_layer * sizeof(float) * (size_t)c->n_layers;
    r->mha_bytes_per_token = r->mha_floats_per_token_layer * sizeof(float) * (size_t)c->n_layers;
    r->ratio = r->mla_bytes_per_token ? (double)r->mha_bytes_per_token / (double)r->mla_bytes_per_token : 0.0;
}

void generate_cache_report_print(const GenCacheReport *r, int n_tokens, FILE *fp) {
    fprintf(fp,
            "KV cache per token (fp32, %d layers): MLA c_kv + k_pe %zu floats/layer = %zu bytes, "
            "plain MHA K + V %zu floats/layer = %zu bytes: %.2fx smaller",
            r->n_layers, r->mla_floats_per_token_layer, r->mla_bytes_per_token, r->mha_floats_per_token_layer,
            r->mha_bytes_per_token, r->ratio);
    if (n_tokens > 0)
        fprintf(fp, "; for %d tokens %.1f KiB vs %.1f KiB", n_tokens,
                (double)r->mla_bytes_per_token * n_tokens / 1024.0, (double)r->mha_bytes_per_token * n_tokens / 1024.0);
    fprintf(fp, "\n");
}
