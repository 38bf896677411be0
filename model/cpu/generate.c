// Generation with the absorbed MLA KV cache (DeepSeek-V3 inference), CPU reference.
// See model/generate.h for the math. One token per step.
//
// Threading: a decode step is ~100 small matrix-vector products. Measured on the 2-core
// machine under load (other processes running), the default config decoded 146 tokens/s
// with OMP_NUM_THREADS=1 but 10 tokens/s with 2 threads when every product went through
// the GEMM library and the layer functions (each an OpenMP parallel region: a region waits
// for a descheduled thread). So a step runs serially in the calling thread with its own
// small kernels, and only products of >= 16M multiply-adds (the output head of a large
// model) use a parallel loop: even the ONE region per token of the default config's head
// (8192 x 256) cost 158 -> 34 tokens/s with 2 threads on the loaded machine, while on an
// idle one it would save at most ~0.3 ms per token.
#include "../generate.h"

#include <float.h>
#include <math.h>
#include <string.h>

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
// single-vector kernels (serial; see the note at the top)

// a . b with 16 independent partial sums (vectorised by the compiler)
static inline float dot(const float *a, const float *b, int n) {
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) acc[j] += a[i + j] * b[i + j];
    float s = 0.0f;
    for (; i < n; i++) s += a[i] * b[i];
    for (int j = 0; j < 16; j++) s += acc[j];
    return s;
}

// y (OC) = W (OC, IC) @ x (IC)
static void matvec(float *y, const float *W, const float *x, int OC, int IC) {
#pragma omp parallel for if ((long)OC * IC >= (1L << 24)) schedule(static)
    for (int o = 0; o < OC; o++) y[o] = dot(W + (size_t)o * IC, x, IC);
}

// out (n) = x * rstd * w (out may be x)
static void rmsnorm_vec(float *out, const float *x, const float *w, int n, float eps) {
    float r = 1.0f / sqrtf(dot(x, x, n) / (float)n + eps);
    for (int i = 0; i < n; i++) out[i] = x[i] * r * w[i];
}

// RoPE (interleaved pairs) on n_heads vectors of d values, head_stride apart, at position pos
static void rope_vec(float *x, int n_heads, int head_stride, int d, int pos, float theta) {
    for (int i = 0; i < d / 2; i++) {
        float a = lm_rope_angle(pos, i, d, theta);
        for (int h = 0; h < n_heads; h++) {
            float *p = x + (size_t)h * head_stride;
            lm_rotate(&p[2 * i], &p[2 * i + 1], a, 1.0f);
        }
    }
}

// gate scores (E) of one token: the formulas of moe_scores (sigmoid, or softmax over experts)
static void gate_scores_vec(const ModelConfig *c, float *s, const float *lg) {
    int E = c->n_routed_experts;
    if (c->score_func == SCORE_SIGMOID) {
        for (int e = 0; e < E; e++) s[e] = lm_sigmoid(lg[e]);
        return;
    }
    float mx = -FLT_MAX, sum = 0.0f;
    for (int e = 0; e < E; e++) mx = lg[e] > mx ? lg[e] : mx;
    for (int e = 0; e < E; e++) sum += (s[e] = expf(lg[e] - mx));
    for (int e = 0; e < E; e++) s[e] /= sum;
}

// y (C) = w2(silu(w1 x) * (w3 x)) for a SwiGLU MLP of width I
static void swiglu_vec(Generator *g, float *y, const float *x, const float *w1, const float *w2, const float *w3,
                       int C, int I) {
    matvec(g->h1, w1, x, I, C);
    matvec(g->h3, w3, x, I, C);
    for (int i = 0; i < I; i++) g->h1[i] = lm_silu(g->h1[i]) * g->h3[i];
    matvec(y, w2, g->h1, C, I);
}

// ---------------------------------------------------------------------------------------
// one decode step

// absorbed MLA for one token at position pos of layer l; adds the attention output to g->x
static void attention_step(Generator *g, int l, int pos) {
    const ModelConfig *c = &g->m->cfg;
    const LayerParams *lp = &g->m->p.layers[l];
    int C = c->dim, H = c->n_heads, dqk = cfg_qk_head_dim(c), dv = c->v_head_dim;
    int nope = c->qk_nope_dim, rope = c->qk_rope_dim, kvr = c->kv_lora_rank, T = pos + 1;
    rmsnorm_vec(g->ln, g->x, lp->attn_norm, C, c->norm_eps);
    // query (H*dqk): per head [q_nope, q_pe]
    if (c->q_lora_rank > 0) {
        int qr = c->q_lora_rank;
        matvec(g->qa, lp->wq_a, g->ln, qr, C);
        rmsnorm_vec(g->qa, g->qa, lp->q_norm, qr, c->norm_eps);
        matvec(g->q, lp->wq_b, g->qa, H * dqk, qr);
    } else {
        matvec(g->q, lp->wq, g->ln, H * dqk, C);
    }
    rope_vec(g->q + nope, H, dqk, rope, pos, c->rope_theta);
    // the cache entry of this token: kv_norm(c_kv) and RoPE'd k_pe
    float *ckv = g->ckv + (size_t)l * g->max_len * kvr;   // (max_len, kvr)
    float *kpe = g->kpe + (size_t)l * g->max_len * rope;  // (max_len, rope)
    matvec(g->kva, lp->wkv_a, g->ln, kvr + rope, C);
    rmsnorm_vec(ckv + (size_t)pos * kvr, g->kva, lp->kv_norm, kvr, c->norm_eps);
    memcpy(kpe + (size_t)pos * rope, g->kva + kvr, sizeof(float) * rope);
    rope_vec(kpe + (size_t)pos * rope, 1, rope, rope, pos, c->rope_theta);
    const float *wkv_b = lp->wkv_b;  // (H*(nope + v), kvr): per head nope rows of W_UK then v rows of W_UV
    float scale = 1.0f / sqrtf((float)dqk);
    for (int h = 0; h < H; h++) {
        const float *qh = g->q + (size_t)h * dqk;  // [q_nope (nope), q_pe (rope)]
        // absorb W_UK into the query: qabs (kvr) = q_nope (nope) @ W_UK_h (nope, kvr)
        const float *wuk = wkv_b + (size_t)h * (nope + dv) * kvr;
        float *qabs = g->qabs + (size_t)h * kvr;
        memset(qabs, 0, sizeof(float) * kvr);
        for (int i = 0; i < nope; i++) {
            const float *row = wuk + (size_t)i * kvr;
            float qi = qh[i];
            for (int j = 0; j < kvr; j++) qabs[j] += qi * row[j];
        }
        // scores against the latent and the shared rope key of every cached token
        float *att = g->att + (size_t)h * T;
        float mx = -FLT_MAX;
        for (int s = 0; s < T; s++) {
            att[s] = scale * (dot(qabs, ckv + (size_t)s * kvr, kvr) + dot(qh + nope, kpe + (size_t)s * rope, rope));
            mx = att[s] > mx ? att[s] : mx;
        }
        float sum = 0.0f;
        for (int s = 0; s < T; s++) sum += (att[s] = expf(att[s] - mx));
        float inv = 1.0f / sum;
        // ctx (kvr) = sum_s p_s c_kv_s; o_h (v) = W_UV_h (v, kvr) @ ctx
        float *ctx = g->ctx + (size_t)h * kvr;
        memset(ctx, 0, sizeof(float) * kvr);
        for (int s = 0; s < T; s++) {
            float p = att[s] * inv;
            const float *cs = ckv + (size_t)s * kvr;
            for (int j = 0; j < kvr; j++) ctx[j] += p * cs[j];
        }
        matvec(g->o + (size_t)h * dv, wkv_b + ((size_t)h * (nope + dv) + nope) * kvr, ctx, dv, kvr);
    }
    matvec(g->y, lp->wo, g->o, C, H * dv);
    for (int i = 0; i < C; i++) g->x[i] += g->y[i];
}

// FFN of layer l on the current token; adds its output to g->x
static void ffn_step(Generator *g, int l) {
    const Model *m = g->m;
    const ModelConfig *c = &m->cfg;
    const LayerParams *lp = &m->p.layers[l];
    int C = c->dim;
    rmsnorm_vec(g->ln, g->x, lp->ffn_norm, C, c->norm_eps);
    if (!lp->is_moe) {
        swiglu_vec(g, g->y, g->ln, lp->w1, lp->w2, lp->w3, C, c->inter_dim);
        for (int i = 0; i < C; i++) g->x[i] += g->y[i];
        return;
    }
    int E = c->n_routed_experts, K = c->top_k, I = c->moe_inter_dim, S = c->n_shared_experts;
    // the same gate and routing as training (bias only for selection, when the mode uses it)
    matvec(g->gate_logits, lp->gate, g->ln, E, C);
    gate_scores_vec(c, g->scores, g->gate_logits);
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
    rmsnorm_vec(g->ln, g->x, m->p.final_norm, C, c->norm_eps);
    matvec(g->logits, m->p.lm_head, g->ln, V, C);
    g->len = pos + 1;
    for (int v = 0; v < V; v++)
        if (!isfinite(g->logits[v]))
            return moe_err_set(err, "generate: the model produced a non-finite logit (%g for token %d at position %d): "
                                    "are its weights corrupt or diverged?", g->logits[v], v, pos);
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

// the sort key of a logit: NaN ranks last (as -inf), so that the order is total
static inline float key(float x) { return x != x ? -INFINITY : x; }

static int by_logit_desc(const void *a, const void *b, void *ctx) {
    const float *lg = (const float *)ctx;
    int i = *(const int *)a, j = *(const int *)b;
    if (key(lg[i]) > key(lg[j])) return -1;
    if (key(lg[i]) < key(lg[j])) return 1;
    return (i > j) - (i < j);  // ties: lower id first
}

// is token i ranked after token j (smaller logit, or equal logit and larger id)?
static int ranks_after(const float *lg, int i, int j) {
    float a = key(lg[i]), b = key(lg[j]);
    return a < b || (a == b && i > j);
}

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
        if (key(v[i]) > key(v[best])) best = i;
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
    float mx = key(logits[idx[0]]), inv_t = 1.0f / o->temperature;
    if (!isfinite(mx)) {  // no usable distribution (all NaN / -inf, or +inf): the top token
        probs[idx[0]] = 1.0f;
        return 1;
    }
    double sum = 0.0;
    for (int r = 0; r < kept; r++) sum += (probs[idx[r]] = expf((key(logits[idx[r]]) - mx) * inv_t));
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
    int last = idx[0];
    for (int r = 0; r < kept; r++) {
        if (probs[idx[r]] <= 0.0f) continue;
        cum += probs[idx[r]];
        last = idx[r];
        if (u < cum) return idx[r];
    }
    return last;  // rounding: u above the summed mass
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
