// Expert-offloading simulation (see cache.h).
#include "cache.h"

#include <float.h>
#include <math.h>

int scenario_set_format(Scenario *s, const char *format, MoeErr *err) {
    // bitsandbytes NF4: 4 bits + one fp32 absmax per 64 weights = 4.5 bits; with double
    // quantization of the absmax ~4.127 bits. int8 (LLM.int8 style): 8 bits + fp32 scale per row.
    double lin;
    if (!strcmp(format, "nf4")) lin = 4.5;
    else if (!strcmp(format, "nf4-dq")) lin = 4.127;
    else if (!strcmp(format, "int8")) lin = 8.0 + 32.0 / (double)(s->hidden > 0 ? s->hidden : 2048);
    else if (!strcmp(format, "bf16") || !strcmp(format, "fp16")) lin = 16;
    else if (!strcmp(format, "fp32")) lin = 32;
    else return moe_err_set(err, "unknown weight format '%s' (nf4, nf4-dq, int8, bf16, fp16, fp32)", format);
    snprintf(s->format, sizeof s->format, "%s", format);
    s->bits_linear = lin;
    s->bits_embed = lin >= 16 ? lin : 16;
    return 0;
}

void scenario_default(Scenario *s, const char *name, const char *format, double gpu_gib) {
    memset(s, 0, sizeof(*s));
    snprintf(s->name, sizeof s->name, "%s", name);
    s->hidden = 2048;
    s->moe_inter = 1408;
    s->dense_inter = 10944;
    s->vocab = 102400;
    s->n_layers = 28;
    s->n_dense_layers = 1;
    s->n_experts = 64;
    s->n_shared = 2;
    s->top_k = 6;
    s->gpu_gib = gpu_gib;
    s->context_gib = 0.5;
    s->act_gib = 0.25;
    s->kv_tokens = 2048;
    s->pcie_gbs = 25.0;   // PCIe 4.0 x16: 31.5 GB/s raw, ~25 GB/s measured pinned copies
    s->hbm_gbs = 360.0;   // RTX 3060 class
    s->layer_ms = 0;
    MoeErr err;
    scenario_set_format(s, format, &err);
}

int scenario_sizes(const Scenario *s, ScenarioSizes *z, MoeErr *err) {
    memset(z, 0, sizeof(*z));
    if (s->hidden < 1 || s->moe_inter < 1 || s->n_experts < 1 || s->n_layers <= s->n_dense_layers ||
        s->top_k < 1 || s->top_k > s->n_experts)
        return moe_err_set(err, "scenario %s: bad model config", s->name);
    if (!(s->gpu_gib > 0) || !(s->pcie_gbs > 0) || !(s->hbm_gbs > 0) || s->bits_linear <= 0)
        return moe_err_set(err, "scenario %s: GPU memory, bandwidths and format must be positive", s->name);
    double h = (double)s->hidden, bl = s->bits_linear / 8, be = s->bits_embed / 8;
    int n_moe = s->n_layers - s->n_dense_layers;
    z->expert_params = 3.0 * h * (double)s->moe_inter;
    z->expert_bytes = z->expert_params * bl;
    z->all_experts_bytes = z->expert_bytes * s->n_experts * n_moe;
    double attn = 4.0 * h * h * s->n_layers;  // q, k, v, o (plain multi-head attention)
    double dense = 3.0 * h * (double)s->dense_inter * s->n_dense_layers;
    double shared = (double)s->n_shared * z->expert_params * n_moe;
    double embed = 2.0 * (double)s->vocab * h;  // embeddings + untied head
    double gates = (double)s->n_experts * h * n_moe;
    double norms = (2.0 * s->n_layers + 1) * h;
    z->nonexpert_bytes = (attn + dense + shared) * bl + (embed + gates + norms) * be;
    z->kv_bytes = 2.0 * s->n_layers * h * 2.0 * s->kv_tokens;  // bf16 K and V
    double gib = 1024.0 * 1024.0 * 1024.0;
    z->reserve_bytes = (s->context_gib + s->act_gib) * gib + z->kv_bytes;
    z->free_bytes = s->gpu_gib * gib - z->nonexpert_bytes - z->reserve_bytes;
    z->cache_experts = z->free_bytes > 0 ? (int)floor(z->free_bytes / z->expert_bytes) : 0;
    z->cache_per_layer = z->cache_experts / n_moe;
    if (z->cache_per_layer > s->n_experts) z->cache_per_layer = s->n_experts;
    // decode at batch 1 is memory bound: one MoE layer reads attention, shared experts, its K experts
    double layer_bytes = (4.0 * h * h + (double)s->n_shared * z->expert_params) * bl + gates / n_moe * be +
                         s->top_k * z->expert_bytes;
    z->layer_s = s->layer_ms > 0 ? s->layer_ms * 1e-3 : layer_bytes / (s->hbm_gbs * 1e9);
    z->xfer_s = z->expert_bytes / (s->pcie_gbs * 1e9);
    return 0;
}

// ---------------------------------------------------------------------------------------

typedef struct {
    uint8_t *in;       // (E) resident (or in flight)
    uint8_t *pref;     // (E) prefetched and not used yet
    double *arrive;    // (E) time the transfer completes
    uint64_t *stamp;   // (E) LRU clock of last use
    size_t *next;      // (E) Belady: next use (token index), SIZE_MAX = never
    int count;
} LayerCache;

static int in_set(const uint16_t *s, int K, int e) {
    for (int k = 0; k < K; k++)
        if (s[k] == e) return 1;
    return 0;
}

// victim among resident experts not in `keep` (K entries, may be NULL)
static int victim(const LayerCache *c, int E, int policy, const uint16_t *keep, int K) {
    int best = -1;
    for (int e = 0; e < E; e++) {
        if (!c->in[e] || (keep && in_set(keep, K, e))) continue;
        if (best < 0) {
            best = e;
            continue;
        }
        if (policy == CACHE_BELADY ? c->next[e] > c->next[best] : c->stamp[e] < c->stamp[best]) best = e;
    }
    return best;
}

int cache_simulate(const uint16_t *ids, size_t n, int M, int K, int E, int C, int policy, const uint16_t *pred,
                   int P, int ahead, double expert_bytes, double xfer_s, double layer_s, CacheStats *out,
                   MoeErr *err) {
    memset(out, 0, sizeof(*out));
    if (C < K || C > E || K < 1 || M < 1) return moe_err_set(err, "cache: need K <= C <= E (K %d, C %d, E %d)", K, C, E);
    if (pred && (P < 0 || P > E)) return moe_err_set(err, "cache: prefetch count %d out of range", P);
    if (pred && (ahead < 1 || ahead >= M)) return moe_err_set(err, "cache: prefetch lookahead %d out of range 1..%d", ahead, M - 1);
    if (policy == CACHE_BELADY) pred = NULL;
    LayerCache *lc = callocCheck((size_t)M, sizeof(LayerCache));
    for (int l = 0; l < M; l++) {
        lc[l].in = callocCheck((size_t)E, 1);
        lc[l].pref = callocCheck((size_t)E, 1);
        lc[l].arrive = callocCheck((size_t)E, sizeof(double));
        lc[l].stamp = callocCheck((size_t)E, sizeof(uint64_t));
        lc[l].next = callocCheck((size_t)E, sizeof(size_t));
    }
    // Belady: next use of each access (token index of the next token using the same expert)
    size_t *nxt = NULL;
    if (policy == CACHE_BELADY) {
        nxt = mallocCheck(sizeof(size_t) * (n ? n : 1) * M * K);
        size_t *last = mallocCheck(sizeof(size_t) * (size_t)M * E);
        for (size_t j = 0; j < (size_t)M * E; j++) last[j] = SIZE_MAX;
        for (size_t i = n; i-- > 0;)
            for (int l = 0; l < M; l++)
                for (int k = 0; k < K; k++) {
                    size_t a = ((size_t)i * M + l) * K + k;
                    nxt[a] = last[(size_t)l * E + ids[a]];
                    last[(size_t)l * E + ids[a]] = i;
                }
        free(last);
    }
    double now = 0, link_free = 0;
    uint64_t clock = 0;
    for (size_t i = 0; i < n; i++) {
        for (int l = 0; l < M; l++) {
            LayerCache *c = &lc[l];
            const uint16_t *S = ids + ((size_t)i * M + l) * K;
            double ready = now;
            for (int k = 0; k < K; k++) {
                int e = S[k];
                out->accesses += 1;
                if (c->in[e]) {
                    if (c->arrive[e] > now) {
                        out->late += 1;
                        if (c->arrive[e] > ready) ready = c->arrive[e];
                    } else {
                        out->hits += 1;
                    }
                    if (c->pref[e]) {
                        out->prefetch_used += 1;
                        c->pref[e] = 0;
                    }
                } else {
                    if (c->count >= C) {
                        int v = victim(c, E, policy, S, K);
                        c->in[v] = 0;
                        c->pref[v] = 0;
                        c->count--;
                    }
                    double start = now > link_free ? now : link_free;
                    c->arrive[e] = start + xfer_s;
                    link_free = c->arrive[e];
                    if (c->arrive[e] > ready) ready = c->arrive[e];
                    c->in[e] = 1;
                    c->count++;
                    out->misses += 1;
                    out->bytes += expert_bytes;
                }
                c->stamp[e] = ++clock;
                if (nxt) c->next[e] = nxt[((size_t)i * M + l) * K + k];
            }
            out->stall_s += ready - now;
            double t0 = ready;  // compute of layer l starts; prefetches for l+1 go out now
            if (pred && l + ahead < M) {
                LayerCache *c2 = &lc[l + ahead];
                const uint16_t *Pr = pred + ((size_t)i * M + l) * P;
                for (int p = 0; p < P; p++) {
                    int e = Pr[p];
                    if (e >= E) continue;
                    if (!c2->in[e]) {
                        if (c2->count >= C) {
                            int v = victim(c2, E, CACHE_LRU, NULL, 0);
                            c2->in[v] = 0;
                            c2->pref[v] = 0;
                            c2->count--;
                        }
                        double start = t0 > link_free ? t0 : link_free;
                        c2->arrive[e] = start + xfer_s;
                        link_free = c2->arrive[e];
                        c2->in[e] = 1;
                        c2->pref[e] = 1;
                        c2->count++;
                        out->prefetched += 1;
                        out->bytes += expert_bytes;
                    }
                    c2->stamp[e] = ++clock;  // predicted experts become most recent
                }
            }
            now = t0 + layer_s;
            out->compute_s += layer_s;
        }
        out->tokens += 1;
    }
    for (int l = 0; l < M; l++) {
        free(lc[l].in);
        free(lc[l].pref);
        free(lc[l].arrive);
        free(lc[l].stamp);
        free(lc[l].next);
    }
    free(lc);
    free(nxt);
    return 0;
}
