// The learned expert speculator (see mlp.h): parameters, forward, backward, AdamW, .spec I/O.
#include "mlp.h"

#include <math.h>

// ---------------------------------------------------------------------------------------
// layout

static int add_blocks(SpecModel *m, int n, size_t off, size_t len, int decay) {
    int first = m->n_blocks;
    for (int j = 0; j < n; j++) {
        m->blk_off[m->n_blocks] = off + (size_t)j * len;
        m->blk_len[m->n_blocks] = len;
        m->blk_decay[m->n_blocks] = (uint8_t)decay;
        m->n_blocks++;
    }
    return first;
}

static size_t layout(SpecModel *m, int with_blocks) {
    const SpecConfig *c = &m->c;
    size_t H = (size_t)c->H, E = (size_t)c->E, M = (size_t)c->M, o = 0;
    m->o_tok = o, o += (size_t)c->n_tok * H;
    m->o_pos = o, o += (size_t)c->n_pos * H;
    m->o_layer = o, o += M * H;
    m->o_cur = o, o += M * E * H;
    m->o_prev = o, o += M * E * H;
    m->o_reuse = o, o += c->use_reuse ? M * E * H : 0;
    m->o_w = o, o += (size_t)c->n_hidden * H * H;
    m->o_b = o, o += (size_t)c->n_hidden * H;
    m->o_out = o, o += (size_t)c->D * M * E * H;
    m->o_bout = o, o += (size_t)c->D * M * E;
    if (with_blocks) {
        int nb = c->n_tok + c->n_pos + (int)M + 2 * (int)(M * E) + (c->use_reuse ? (int)(M * E) : 0) +
                 2 * c->n_hidden + 2 * c->D * (int)M;
        m->blk_off = mallocCheck(sizeof(size_t) * nb);
        m->blk_len = mallocCheck(sizeof(size_t) * nb);
        m->blk_decay = mallocCheck((size_t)nb);
        m->n_blocks = 0;
        m->b_tok = add_blocks(m, c->n_tok, m->o_tok, H, 0);
        m->b_pos = add_blocks(m, c->n_pos, m->o_pos, H, 0);
        m->b_layer = add_blocks(m, (int)M, m->o_layer, H, 0);
        m->b_cur = add_blocks(m, (int)(M * E), m->o_cur, H, 0);
        m->b_prev = add_blocks(m, (int)(M * E), m->o_prev, H, 0);
        m->b_reuse = c->use_reuse ? add_blocks(m, (int)(M * E), m->o_reuse, H, 0) : -1;
        m->b_w = add_blocks(m, c->n_hidden, m->o_w, H * H, 1);
        m->b_b = add_blocks(m, c->n_hidden, m->o_b, H, 0);
        m->b_out = add_blocks(m, c->D * (int)M, m->o_out, E * H, 1);
        m->b_bout = add_blocks(m, c->D * (int)M, m->o_bout, E, 0);
    }
    return o;
}

static int config_check(const SpecConfig *c, const char *what, MoeErr *err) {
    if (c->E < 2 || c->E > 65535 || c->K < 1 || c->K >= c->E || c->K > TRACE_MAX_K)
        return moe_err_set(err, "%s: E = %d, K = %d out of range", what, c->E, c->K);
    if (c->M < 2 || c->M > TRACE_MAX_LAYERS) return moe_err_set(err, "%s: M = %d out of range 2..%d", what, c->M, TRACE_MAX_LAYERS);
    if (c->D < 1 || c->D > SPEC_MAX_D) return moe_err_set(err, "%s: D = %d out of range 1..%d", what, c->D, SPEC_MAX_D);
    if (c->H < 1 || c->H > 4096) return moe_err_set(err, "%s: hidden width H = %d out of range 1..4096", what, c->H);
    if (c->n_hidden < 1 || c->n_hidden > 4) return moe_err_set(err, "%s: n_hidden = %d out of range 1..4", what, c->n_hidden);
    if (c->n_tok < 1 || c->n_tok > (1 << 24)) return moe_err_set(err, "%s: n_tok = %d out of range", what, c->n_tok);
    if (c->n_pos < 1 || c->n_pos > 1024) return moe_err_set(err, "%s: n_pos = %d out of range", what, c->n_pos);
    if (c->use_reuse != 0 && c->use_reuse != 1) return moe_err_set(err, "%s: use_reuse must be 0 or 1", what);
    if (c->loss != SPEC_LOSS_BCE_RANK && c->loss != SPEC_LOSS_LISTWISE)
        return moe_err_set(err, "%s: unknown loss %d", what, c->loss);
    if (!isfinite(c->rank_weight) || c->rank_weight < 0) return moe_err_set(err, "%s: bad rank_weight", what);
    double total = (double)c->n_tok * c->H + (double)c->D * c->M * c->E * c->H * 4.0;
    if (total > 1e9) return moe_err_set(err, "%s: model too large (%.3g parameters)", what, total);
    return 0;
}

int spec_init(SpecModel *m, const SpecConfig *c, const TraceHeader *th, uint64_t seed, MoeErr *err) {
    memset(m, 0, sizeof(*m));
    if (config_check(c, "speculator config", err)) return -1;
    m->c = *c;
    if (th) {
        snprintf(m->model, sizeof m->model, "%s", th->model);
        for (int l = 0; l < th->n_layers && l < TRACE_MAX_LAYERS; l++) m->layer_idx[l] = th->layer_idx[l];
    }
    m->n_params = layout(m, 1);
    m->params = mallocCheck(sizeof(float) * m->n_params);
    uint64_t rng = rng_seed(seed);
    float emb = 0.1f, wstd = 0.5f / sqrtf((float)c->H), ostd = 1.0f / sqrtf((float)c->H);
    for (size_t j = 0; j < m->o_w; j++) m->params[j] = emb * rng_normal(&rng);
    for (size_t j = m->o_w; j < m->o_b; j++) m->params[j] = wstd * rng_normal(&rng);
    for (size_t j = m->o_b; j < m->o_out; j++) m->params[j] = 0;
    for (size_t j = m->o_out; j < m->o_bout; j++) m->params[j] = ostd * rng_normal(&rng);
    for (size_t j = m->o_bout; j < m->n_params; j++) m->params[j] = 0;
    return 0;
}

void spec_free(SpecModel *m) {
    free(m->params);
    free(m->blk_off);
    free(m->blk_len);
    free(m->blk_decay);
    memset(m, 0, sizeof(*m));
}

void spec_scratch_init(SpecScratch *s, const SpecConfig *c) {
    size_t H = (size_t)c->H, E = (size_t)c->E;
    s->x0 = mallocCheck(sizeof(float) * H);
    s->h = mallocCheck(sizeof(float) * H * (size_t)(c->n_hidden + 1));
    s->pre = mallocCheck(sizeof(float) * H * (size_t)c->n_hidden);
    s->dh = mallocCheck(sizeof(float) * H * 2);
    s->z = mallocCheck(sizeof(float) * E * SPEC_MAX_D);
    s->dz = mallocCheck(sizeof(float) * E);
    s->tmp = mallocCheck(sizeof(float) * (H > E ? H : E));
}
void spec_scratch_free(SpecScratch *s) {
    free(s->x0);
    free(s->h);
    free(s->pre);
    free(s->dh);
    free(s->z);
    free(s->dz);
    free(s->tmp);
    memset(s, 0, sizeof(*s));
}

void spec_grad_init(SpecGrad *g, const SpecModel *m) {
    g->g = callocCheck(m->n_params, sizeof(float));
    g->stamp = mallocCheck(sizeof(int) * (size_t)m->n_blocks);
    for (int b = 0; b < m->n_blocks; b++) g->stamp[b] = -1;
    g->list = mallocCheck(sizeof(int) * (size_t)m->n_blocks);
    g->n_list = 0;
    g->step = 0;
}
void spec_grad_free(SpecGrad *g) {
    free(g->g);
    free(g->stamp);
    free(g->list);
    memset(g, 0, sizeof(*g));
}

static inline float *touch(SpecGrad *g, const SpecModel *m, int blk) {
    if (g->stamp[blk] != g->step) {
        g->stamp[blk] = g->step;
        g->list[g->n_list++] = blk;
    }
    return g->g + m->blk_off[blk];
}

// ---------------------------------------------------------------------------------------
// forward / backward

static int pos_bucket(uint32_t pos, int n_pos) {
    int b;
    if (pos < 8) b = (int)pos;
    else {
        int lg = 0;
        while ((pos >> (lg + 1)) != 0) lg++;  // floor(log2(pos)) >= 3
        b = 8 + (lg - 3);
    }
    return b < n_pos ? b : n_pos - 1;
}

void spec_input_from_trace(const Trace *t, size_t i, int l, int D, int use_reuse, SpecInput *in) {
    int M = t->h.n_layers, K = t->h.K;
    memset(in, 0, sizeof(*in));
    in->token = t->token[i];
    in->pos = t->pos[i];
    in->l = l;
    in->cur = t->ids + (i * M + l) * (size_t)K;
    in->cur_w = t->weights + (i * M + l) * (size_t)K;
    if (l > 0) {
        in->prev = t->ids + (i * M + l - 1) * (size_t)K;
        in->prev_w = t->weights + (i * M + l - 1) * (size_t)K;
    }
    if (use_reuse && t->reuse && l + 1 < M) in->reuse = t->reuse + (i * (M - 1) + l) * (size_t)K;
    for (int d = 1; d <= D && d <= SPEC_MAX_D; d++)
        if (l + d < M) in->target[d - 1] = t->ids + (i * M + l + d) * (size_t)K;
}

// embedding coefficients: (w / sum(w) + 1/K) / 2, or 1/K when the sum is not positive
static void norm_weights(const float *w, int K, float *out) {
    float s = 0;
    for (int k = 0; k < K; k++) s += w[k];
    for (int k = 0; k < K; k++) out[k] = (s > 0 && isfinite(s)) ? 0.5f * (w[k] / s + 1.0f / K) : 1.0f / K;
}

static void embed_rows(const SpecModel *m, const SpecInput *in, int *rows, float *coef, int *n) {
    const SpecConfig *c = &m->c;
    int K = c->K, E = c->E, j = 0;
    rows[j] = m->b_tok + (int)(in->token % (uint32_t)c->n_tok), coef[j++] = 1.0f;
    rows[j] = m->b_pos + pos_bucket(in->pos, c->n_pos), coef[j++] = 1.0f;
    rows[j] = m->b_layer + in->l, coef[j++] = 1.0f;
    norm_weights(in->cur_w, K, coef + j);
    for (int k = 0; k < K; k++) rows[j++] = m->b_cur + in->l * E + in->cur[k];
    if (in->prev) {
        norm_weights(in->prev_w, K, coef + j);
        for (int k = 0; k < K; k++) rows[j++] = m->b_prev + (in->l - 1) * E + in->prev[k];
    }
    if (c->use_reuse && in->reuse)
        for (int k = 0; k < K; k++) rows[j] = m->b_reuse + in->l * E + in->reuse[k], coef[j++] = 1.0f / K;
    *n = j;
}

int spec_forward(const SpecModel *m, const SpecInput *in, float *logits, SpecScratch *s) {
    const SpecConfig *c = &m->c;
    int H = c->H, E = c->E, M = c->M;
    int rows[3 + 3 * TRACE_MAX_K];
    float coef[3 + 3 * TRACE_MAX_K];
    int nr;
    embed_rows(m, in, rows, coef, &nr);
    float *x = s->h;  // h_0 = x0
    for (int i = 0; i < H; i++) x[i] = 0;
    for (int r = 0; r < nr; r++) {
        const float *e = m->params + m->blk_off[rows[r]];
        for (int i = 0; i < H; i++) x[i] += coef[r] * e[i];
    }
    for (int j = 0; j < c->n_hidden; j++) {
        const float *W = m->params + m->o_w + (size_t)j * H * H, *b = m->params + m->o_b + (size_t)j * H;
        const float *hin = s->h + (size_t)j * H;
        float *pre = s->pre + (size_t)j * H, *hout = s->h + (size_t)(j + 1) * H;
        for (int o = 0; o < H; o++) {
            float a = 0;
            const float *w = W + (size_t)o * H;
#pragma omp simd reduction(+ : a)
            for (int i = 0; i < H; i++) a += w[i] * hin[i];
            a += b[o];
            pre[o] = a;
            hout[o] = hin[o] + (a > 0 ? a : 0);
        }
    }
    const float *h = s->h + (size_t)c->n_hidden * H;
    int nd = 0;
    for (int d = 1; d <= c->D && in->l + d < M; d++, nd++) {
        int lt = in->l + d;
        const float *W = m->params + m->o_out + ((size_t)(d - 1) * M + lt) * E * H;
        const float *b = m->params + m->o_bout + ((size_t)(d - 1) * M + lt) * E;
        float *z = logits + (size_t)(d - 1) * E;
        for (int e = 0; e < E; e++) {
            float a = 0;
            const float *w = W + (size_t)e * H;
#pragma omp simd reduction(+ : a)
            for (int i = 0; i < H; i++) a += w[i] * h[i];
            z[e] = a + b[e];
        }
    }
    return nd;
}

static inline double softplus(double x) { return x > 0 ? x + log1p(exp(-x)) : log1p(exp(x)); }
static inline double sigm(double x) { return 1.0 / (1.0 + exp(-x)); }

// loss of one head and its gradient dz (E)
static double head_loss(const SpecConfig *c, const float *z, const uint16_t *target, float *dz, float *y) {
    int E = c->E, K = c->K;
    for (int e = 0; e < E; e++) y[e] = 0;
    for (int k = 0; k < K; k++) y[target[k]] = 1;
    double loss = 0;
    if (c->loss == SPEC_LOSS_LISTWISE) {
        float mx = z[0];
        for (int e = 1; e < E; e++) mx = z[e] > mx ? z[e] : mx;
        double se = 0;
        for (int e = 0; e < E; e++) se += exp((double)z[e] - mx);
        double lse = mx + log(se);
        for (int e = 0; e < E; e++) {
            double p = exp((double)z[e] - lse);
            if (y[e] > 0) loss -= ((double)z[e] - lse) / K;
            dz[e] = (float)(p - y[e] / K);
        }
        return loss;
    }
    for (int e = 0; e < E; e++) {
        loss += (softplus(z[e]) - y[e] * z[e]) / K;
        dz[e] = (float)((sigm(z[e]) - y[e]) / K);
    }
    if (c->rank_weight > 0) {
        // softplus(z_n - z_p) with t = exp(z_n - z_p) = exp(z_n - m) / exp(z_p - m): one exp per
        // logit, one log1p per (positive, negative) pair; exp(z - m) of a positive is > 0 as long
        // as logits stay within ~700 of the max (else the pair falls back to the direct formula)
        double scale = (double)c->rank_weight / ((double)K * (E - K));
        float mx = z[0];
        for (int e = 1; e < E; e++) mx = z[e] > mx ? z[e] : mx;
        double ez[1024];
        int cached = E <= 1024;
        if (cached)
            for (int e = 0; e < E; e++) ez[e] = exp((double)z[e] - mx);
        for (int k = 0; k < K; k++) {
            int p = target[k];
            double gp = 0;
            for (int n = 0; n < E; n++) {
                if (y[n] > 0) continue;
                double sp, sg;
                if (cached && ez[p] > 1e-300) {
                    double t = ez[n] / ez[p];
                    sp = log1p(t);
                    sg = t / (1.0 + t);
                } else {
                    double diff = (double)z[n] - z[p];
                    sp = softplus(diff);
                    sg = sigm(diff);
                }
                loss += scale * sp;
                dz[n] += (float)(scale * sg);
                gp += scale * sg;
            }
            dz[p] -= (float)gp;
        }
    }
    return loss;
}

double spec_loss_backward(const SpecModel *m, const SpecInput *in, SpecScratch *s, SpecGrad *g, float scale) {
    const SpecConfig *c = &m->c;
    int H = c->H, E = c->E, M = c->M;
    int nd = spec_forward(m, in, s->z, s);
    int nvalid = 0;
    for (int d = 1; d <= nd; d++) nvalid += in->target[d - 1] != NULL;
    if (nvalid == 0) return 0;
    const float *h = s->h + (size_t)c->n_hidden * H;
    float *dh = s->dh;  // dL/dh at the current depth
    for (int i = 0; i < H; i++) dh[i] = 0;
    double loss = 0;
    for (int d = 1; d <= nd; d++) {
        if (!in->target[d - 1]) continue;
        int lt = in->l + d;
        loss += head_loss(c, s->z + (size_t)(d - 1) * E, in->target[d - 1], s->dz, s->tmp) / nvalid;
        if (!g) continue;
        float sc = scale / (float)nvalid;
        int blk = m->b_out + (d - 1) * M + lt;
        const float *W = m->params + m->blk_off[blk];
        float *dW = touch(g, m, blk);
        float *db = touch(g, m, m->b_bout + (d - 1) * M + lt);
        for (int e = 0; e < E; e++) {
            float gz = s->dz[e] * sc;
            if (gz == 0) continue;
            db[e] += gz;
            const float *w = W + (size_t)e * H;
            float *dw = dW + (size_t)e * H;
            for (int i = 0; i < H; i++) {
                dw[i] += gz * h[i];
                dh[i] += gz * w[i];
            }
        }
    }
    if (!g) return loss;
    for (int j = c->n_hidden - 1; j >= 0; j--) {
        const float *W = m->params + m->o_w + (size_t)j * H * H;
        const float *hin = s->h + (size_t)j * H, *pre = s->pre + (size_t)j * H;
        float *dW = touch(g, m, m->b_w + j), *db = touch(g, m, m->b_b + j);
        float *dpre = s->tmp;
        for (int o = 0; o < H; o++) dpre[o] = pre[o] > 0 ? dh[o] : 0;
        // dh_in = dh_out (residual) + W^T dpre
        for (int o = 0; o < H; o++) {
            float gp = dpre[o];
            if (gp == 0) continue;
            db[o] += gp;
            const float *w = W + (size_t)o * H;
            float *dw = dW + (size_t)o * H;
            for (int i = 0; i < H; i++) {
                dw[i] += gp * hin[i];
                dh[i] += gp * w[i];
            }
        }
    }
    int rows[3 + 3 * TRACE_MAX_K];
    float coef[3 + 3 * TRACE_MAX_K];
    int nr;
    embed_rows(m, in, rows, coef, &nr);
    for (int r = 0; r < nr; r++) {
        float *de = touch(g, m, rows[r]);
        for (int i = 0; i < H; i++) de[i] += coef[r] * dh[i];
    }
    return loss;
}

// ---------------------------------------------------------------------------------------
// AdamW over touched blocks (lazy: untouched rows keep their moments)

void spec_adam_init(SpecAdam *a, const SpecModel *m, float lr, float wd) {
    a->m = callocCheck(m->n_params, sizeof(float));
    a->v = callocCheck(m->n_params, sizeof(float));
    a->t = 0;
    a->lr = lr;
    a->wd = wd;
    a->beta1 = 0.9f;
    a->beta2 = 0.999f;
    a->eps = 1e-8f;
}
void spec_adam_free(SpecAdam *a) {
    free(a->m);
    free(a->v);
    a->m = a->v = NULL;
}

void spec_adam_block(const SpecAdam *a, SpecModel *m, int blk, float *grad, float bc1, float bc2) {
    size_t off = m->blk_off[blk], len = m->blk_len[blk];
    float wd = m->blk_decay[blk] ? a->wd : 0.0f;
    float *p = m->params + off, *mm = a->m + off, *vv = a->v + off;
    for (size_t i = 0; i < len; i++) {
        float gi = grad[i];
        mm[i] = a->beta1 * mm[i] + (1 - a->beta1) * gi;
        vv[i] = a->beta2 * vv[i] + (1 - a->beta2) * gi * gi;
        p[i] -= a->lr * ((mm[i] / bc1) / (sqrtf(vv[i] / bc2) + a->eps) + wd * p[i]);
        grad[i] = 0;
    }
}

void spec_adam_step(SpecAdam *a, SpecModel *m, SpecGrad *g) {
    a->t++;
    float bc1 = 1.0f - powf(a->beta1, (float)a->t), bc2 = 1.0f - powf(a->beta2, (float)a->t);
#pragma omp parallel for schedule(dynamic, 16)
    for (int j = 0; j < g->n_list; j++) {
        int blk = g->list[j];
        spec_adam_block(a, m, blk, g->g + m->blk_off[blk], bc1, bc2);
    }
    g->n_list = 0;
    g->step++;
}

// ---------------------------------------------------------------------------------------
// .spec I/O

#define SPEC_FIXED_BYTES 148

static void put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
static void putf(uint8_t *p, float f) {
    uint32_t v;
    memcpy(&v, &f, 4);
    put32(p, v);
}
static float getf(const uint8_t *p) {
    uint32_t v = get32(p);
    float f;
    memcpy(&f, &v, 4);
    return f;
}

int spec_save(const SpecModel *m, const char *path, MoeErr *err) {
    const SpecConfig *c = &m->c;
    size_t hb = SPEC_FIXED_BYTES + 4 * (size_t)c->M;
    size_t n = hb + 4 * m->n_params + 4;
    uint8_t *buf = calloc(1, n);
    if (!buf) return moe_err_set(err, "%s: out of memory (%zu bytes)", path, n);
    memcpy(buf, SPEC_MAGIC, 8);
    put32(buf + 8, SPEC_VERSION);
    put32(buf + 12, (uint32_t)hb);
    memcpy(buf + 16, m->model, strnlen(m->model, TRACE_NAME_LEN - 1));
    uint32_t f[10] = {(uint32_t)c->E, (uint32_t)c->K, (uint32_t)c->M,        (uint32_t)c->D,         (uint32_t)c->H,
                      (uint32_t)c->n_hidden, (uint32_t)c->n_tok, (uint32_t)c->n_pos, (uint32_t)c->use_reuse,
                      (uint32_t)c->loss};
    for (int j = 0; j < 10; j++) put32(buf + 80 + 4 * j, f[j]);
    putf(buf + 120, c->rank_weight);
    put64(buf + 124, m->split_seed);
    putf(buf + 132, m->val_frac);
    putf(buf + 136, m->test_frac);
    put64(buf + 140, (uint64_t)m->n_params);
    for (int l = 0; l < c->M; l++) put32(buf + SPEC_FIXED_BYTES + 4 * l, (uint32_t)m->layer_idx[l]);
    for (size_t j = 0; j < m->n_params; j++) putf(buf + hb + 4 * j, m->params[j]);
    put32(buf + n - 4, crc32c(0, buf, n - 4));
    int rc = write_file_atomic(path, buf, n, err);
    free(buf);
    return rc;
}

int spec_load(SpecModel *m, const char *path, MoeErr *err) {
    memset(m, 0, sizeof(*m));
    char *data = NULL;
    size_t n = 0;
    if (read_file_all(path, &data, &n, err)) return -1;
    const uint8_t *buf = (const uint8_t *)data;
    int rc = -1;
    if (n < SPEC_FIXED_BYTES + 4) {
        moe_err_set(err, "%s: file too short (%zu bytes) for a speculator header", path, n);
        goto done;
    }
    if (memcmp(buf, SPEC_MAGIC, 8) != 0) {
        moe_err_set(err, "%s: bad magic (not a .spec speculator file)", path);
        goto done;
    }
    if (get32(buf + 8) != SPEC_VERSION) {
        moe_err_set(err, "%s: unsupported version %u (expected %u)", path, get32(buf + 8), SPEC_VERSION);
        goto done;
    }
    SpecConfig c;
    uint32_t f[10];
    for (int j = 0; j < 10; j++) f[j] = get32(buf + 80 + 4 * j);
    for (int j = 0; j < 10; j++)
        if (f[j] > (1u << 24)) {
            moe_err_set(err, "%s: header field %d = %u out of range", path, j, f[j]);
            goto done;
        }
    c.E = (int)f[0], c.K = (int)f[1], c.M = (int)f[2], c.D = (int)f[3], c.H = (int)f[4];
    c.n_hidden = (int)f[5], c.n_tok = (int)f[6], c.n_pos = (int)f[7], c.use_reuse = (int)f[8], c.loss = (int)f[9];
    c.rank_weight = getf(buf + 120);
    if (config_check(&c, path, err)) goto done;
    size_t hb = SPEC_FIXED_BYTES + 4 * (size_t)c.M;
    if (get32(buf + 12) != hb) {
        moe_err_set(err, "%s: header_bytes %u, expected %zu", path, get32(buf + 12), hb);
        goto done;
    }
    m->c = c;
    size_t np = layout(m, 0);
    uint64_t fnp = get64(buf + 140);
    if (fnp != np) {
        moe_err_set(err, "%s: n_params %llu does not match the config (%zu)", path, (unsigned long long)fnp, np);
        goto done;
    }
    if (n != hb + 4 * np + 4) {
        moe_err_set(err, "%s: truncated or oversized: %zu bytes, expected %zu", path, n, hb + 4 * np + 4);
        goto done;
    }
    if (get32(buf + n - 4) != crc32c(0, buf, n - 4)) {
        moe_err_set(err, "%s: checksum mismatch (file corrupted)", path);
        goto done;
    }
    TraceHeader th;
    memset(&th, 0, sizeof th);
    memcpy(th.model, buf + 16, TRACE_NAME_LEN - 1);
    th.n_layers = c.M;
    for (int l = 0; l < c.M; l++) th.layer_idx[l] = (int)get32(buf + SPEC_FIXED_BYTES + 4 * l);
    if (spec_init(m, &c, &th, 0, err)) goto done;
    m->split_seed = get64(buf + 124);
    m->val_frac = getf(buf + 132);
    m->test_frac = getf(buf + 136);
    for (size_t j = 0; j < np; j++) {
        m->params[j] = getf(buf + hb + 4 * j);
        if (!isfinite(m->params[j])) {
            moe_err_set(err, "%s: parameter %zu is not finite", path, j);
            spec_free(m);
            goto done;
        }
    }
    rc = 0;
done:
    free(data);
    return rc;
}

int spec_check_compat(const SpecModel *m, const TraceHeader *h, const char *path, MoeErr *err) {
    int same = strcmp(m->model, h->model) == 0 && m->c.E == h->E && m->c.K == h->K && m->c.M == h->n_layers;
    for (int l = 0; same && l < m->c.M; l++) same = m->layer_idx[l] == h->layer_idx[l];
    if (!same)
        return moe_err_set(err,
                           "%s: speculator was trained for model '%s' (E=%d, K=%d, %d MoE layers) but the traces are "
                           "of '%s' (E=%d, K=%d, %d MoE layers); refusing to use it",
                           path, m->model, m->c.E, m->c.K, m->c.M, h->model, h->E, h->K, h->n_layers);
    if (m->c.use_reuse && !h->has_reuse)
        return moe_err_set(err, "%s: speculator uses the gate-reuse feature but the traces do not record it", path);
    return 0;
}
