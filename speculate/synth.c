// Synthetic traces with a planted routing rule (see synth.h).
#include "synth.h"

static int in_set(const uint16_t *s, int n, int e) {
    for (int i = 0; i < n; i++)
        if (s[i] == e) return 1;
    return 0;
}

// replace slot k of set s (K entries) by a random expert not in s
static void replace_random(uint16_t *s, int K, int k, int E, uint64_t *rng) {
    int e;
    do e = (int)(rng_next_u64(rng) % (uint64_t)E);
    while (in_set(s, K, e));
    s[k] = (uint16_t)e;
}

int synth_trace(Trace *t, const SynthConfig *c, int *perm, MoeErr *err) {
    if (c->E < 2 || c->K < 1 || c->K >= c->E || c->M < 1 || c->n_seq < 1 || c->seq_len < 1 || c->vocab < 1 ||
        c->n_domains < 1 || c->p < 0 || c->p > 1 || c->q < 0 || c->q > 1)
        return moe_err_set(err, "synth: bad config (E %d K %d M %d n_seq %d seq_len %d)", c->E, c->K, c->M, c->n_seq,
                           c->seq_len);
    TraceHeader h;
    memset(&h, 0, sizeof h);
    snprintf(h.model, sizeof h.model, "synthetic-E%d-K%d-M%d", c->E, c->K, c->M);
    snprintf(h.dataset, sizeof h.dataset, "planted-perm-p%.3f", (double)c->p);
    h.E = c->E;
    h.K = c->K;
    h.n_layers = c->M;
    for (int l = 0; l < c->M; l++) h.layer_idx[l] = l + 1;
    h.has_reuse = c->reuse && c->M > 1;
    h.n_domains = c->n_domains;
    for (int d = 0; d < c->n_domains; d++) snprintf(h.domains[d], TRACE_DOMAIN_LEN, "domain%d", d);
    size_t n = (size_t)c->n_seq * c->seq_len;
    if (trace_alloc(t, &h, n, err)) return -1;
    int E = c->E, K = c->K, M = c->M;
    uint64_t rng = rng_seed(c->seed);
    int *pm = mallocCheck(sizeof(int) * (size_t)(M > 1 ? M - 1 : 1) * E);
    for (int l = 0; l + 1 < M; l++) {
        int *q = pm + (size_t)l * E;
        for (int e = 0; e < E; e++) q[e] = e;
        for (int e = E - 1; e > 0; e--) {
            int j = (int)(rng_next_u64(&rng) % (uint64_t)(e + 1));
            int tmp = q[e];
            q[e] = q[j];
            q[j] = tmp;
        }
    }
    if (perm) memcpy(perm, pm, sizeof(int) * (size_t)(M > 1 ? M - 1 : 0) * E);
    size_t i = 0;
    uint16_t *tmpset = mallocCheck(sizeof(uint16_t) * K);
    for (int s = 0; s < c->n_seq; s++) {
        int dom = s % c->n_domains;
        for (int p = 0; p < c->seq_len; p++, i++) {
            t->seq[i] = (uint32_t)s;
            t->pos[i] = (uint32_t)p;
            uint32_t tok = (uint32_t)(rng_next_u64(&rng) % (uint64_t)c->vocab);
            t->token[i] = tok;
            t->domain[i] = (uint16_t)dom;
            uint16_t *ids = t->ids + i * (size_t)M * K;
            float *w = t->weights + i * (size_t)M * K;
            // layer 0: the token's fixed set, from a hash of the token id
            uint64_t tr = rng_seed(c->seed * 7919u + tok);
            for (int k = 0; k < K; k++) {
                ids[k] = 0;
                int e;
                do e = (int)(rng_next_u64(&tr) % (uint64_t)E);
                while (in_set(ids, k, e));
                ids[k] = (uint16_t)e;
            }
            for (int k = 0; k < K; k++)
                if (rng_uniform(&rng) < c->p) replace_random(ids, K, k, E, &rng);
            for (int l = 1; l < M; l++) {
                const uint16_t *prev = ids + (size_t)(l - 1) * K;
                uint16_t *cur = ids + (size_t)l * K;
                const int *q = pm + (size_t)(l - 1) * E;
                for (int k = 0; k < K; k++) cur[k] = (uint16_t)q[prev[k]];
                for (int k = 0; k < K; k++)
                    if (rng_uniform(&rng) < c->p) replace_random(cur, K, k, E, &rng);
            }
            for (int l = 0; l < M; l++) {
                float sum = 0;
                for (int k = 0; k < K; k++) {
                    w[l * K + k] = 0.05f + rng_uniform(&rng);
                    sum += w[l * K + k];
                }
                for (int k = 0; k < K; k++) w[l * K + k] /= sum;
            }
            if (t->reuse) {
                uint16_t *ru = t->reuse + i * (size_t)(M - 1) * K;
                for (int l = 0; l + 1 < M; l++) {
                    memcpy(tmpset, ids + (size_t)(l + 1) * K, sizeof(uint16_t) * K);
                    for (int k = 0; k < K; k++)
                        if (rng_uniform(&rng) < c->q) replace_random(tmpset, K, k, E, &rng);
                    memcpy(ru + (size_t)l * K, tmpset, sizeof(uint16_t) * K);
                }
            }
        }
    }
    free(tmpset);
    free(pm);
    return 0;
}
