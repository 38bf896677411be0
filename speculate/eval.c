// Splits, baselines and metrics (see eval.h).
#include "eval.h"

#include <math.h>
#include <omp.h>

const char *method_names[N_METHODS] = {"random",     "frequent", "transition", "prev-token",
                                       "gate-reuse", "oracle",   "mlp-bce+rank", "mlp-listwise"};

int split_of_seq(uint32_t seq, const SplitSpec *s) {
    uint64_t st = rng_seed(s->seed ^ ((uint64_t)seq * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL));
    double u = (double)(rng_next_u64(&st) >> 11) / 9007199254740992.0;
    if (u < s->test_frac) return SPLIT_TEST;
    if (u < s->test_frac + s->val_frac) return SPLIT_VAL;
    return SPLIT_TRAIN;
}

void specdata_free(SpecData *sd) {
    free(sd->split_of);
    free(sd->prev);
    free(sd->top1);
    for (int s = 0; s < N_SPLITS; s++) free(sd->rec[s]);
    free(sd->freq);
    free(sd->trans);
    memset(sd, 0, sizeof(*sd));
}

static void build_transitions(SpecData *sd) {
    const Trace *t = sd->t;
    int E = sd->E, K = sd->K, M = sd->M, D = sd->D;
    size_t EE = (size_t)E * E;
    double *cnt = callocCheck((size_t)D * M * EE, sizeof(double));
    double *occ = callocCheck((size_t)M * E, sizeof(double));
    for (size_t r = 0; r < sd->n_rec[SPLIT_TRAIN]; r++) {
        size_t i = sd->rec[SPLIT_TRAIN][r];
        const uint16_t *ids = t->ids + i * (size_t)M * K;
        for (int l = 0; l < M; l++) {
            for (int k = 0; k < K; k++) occ[(size_t)l * E + ids[l * K + k]] += 1;
            for (int d = 1; d <= D && l + d < M; d++) {
                double *c = cnt + ((size_t)(d - 1) * M + l) * EE;
                for (int a = 0; a < K; a++)
                    for (int b = 0; b < K; b++) c[(size_t)ids[l * K + a] * E + ids[(l + d) * K + b]] += 1;
            }
        }
    }
    // P(b at l+d | a at l) with add-one smoothing towards the frequency of b at l+d
    for (int d = 1; d <= D; d++)
        for (int l = 0; l + d < M; l++)
            for (int a = 0; a < E; a++) {
                const double *c = cnt + ((size_t)(d - 1) * M + l) * EE + (size_t)a * E;
                float *p = sd->trans + ((size_t)(d - 1) * M + l) * EE + (size_t)a * E;
                double n = occ[(size_t)l * E + a];
                for (int b = 0; b < E; b++)
                    p[b] = (float)((c[b] + sd->freq[(size_t)(l + d) * E + b]) / (n + 1.0));
            }
    free(cnt);
    free(occ);
}

int specdata_init(SpecData *sd, const Trace *t, const SplitSpec *split, int D, int B, MoeErr *err) {
    memset(sd, 0, sizeof(*sd));
    sd->t = t;
    sd->E = t->h.E;
    sd->K = t->h.K;
    sd->M = t->h.n_layers;
    sd->D = D;
    sd->B = B;
    sd->n_dom = t->h.n_domains;
    sd->split = *split;
    if (D < 1 || D > SPEC_MAX_D) return moe_err_set(err, "lookahead D = %d out of range 1..%d", D, SPEC_MAX_D);
    if (sd->M < 2) return moe_err_set(err, "trace has %d MoE layer(s): speculation needs at least 2", sd->M);
    if (B <= sd->K || B > 2 * sd->K || B > sd->E)
        return moe_err_set(err, "budget B = %d must satisfy K < B <= min(2K, E) (K = %d, E = %d)", B, sd->K, sd->E);
    if (split->val_frac < 0 || split->test_frac <= 0 || split->val_frac + split->test_frac >= 1)
        return moe_err_set(err, "split fractions val %.3f test %.3f invalid", (double)split->val_frac,
                           (double)split->test_frac);
    size_t n = t->n, M = (size_t)sd->M, K = (size_t)sd->K, E = (size_t)sd->E;
    double trans_bytes = 4.0 * D * (double)M * (double)E * (double)E;
    if (trans_bytes > 4e9)
        return moe_err_set(err, "%s: transition table for E = %zu, %zu MoE layers, lookahead %d needs %.1f GB (limit 4 GB)",
                           t->h.model, E, M, D, trans_bytes / 1e9);
    sd->split_of = mallocCheck(n ? n : 1);
    sd->prev = mallocCheck(sizeof(int32_t) * (n ? n : 1));
    sd->top1 = mallocCheck(sizeof(uint16_t) * (n ? n * M : 1));
    for (int s = 0; s < N_SPLITS; s++) sd->rec[s] = mallocCheck(sizeof(size_t) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) {
        int s = split_of_seq(t->seq[i], split);
        sd->split_of[i] = (uint8_t)s;
        sd->rec[s][sd->n_rec[s]++] = i;
        int new_seq = i == 0 || t->seq[i - 1] != t->seq[i];
        if (new_seq) sd->n_seq[s]++;
        sd->prev[i] = (!new_seq && t->pos[i - 1] + 1 == t->pos[i]) ? (int32_t)(i - 1) : -1;
        for (size_t l = 0; l < M; l++) {
            const float *w = t->weights + (i * M + l) * K;
            size_t best = 0;
            for (size_t k = 1; k < K; k++)
                if (w[k] > w[best]) best = k;
            sd->top1[i * M + l] = t->ids[(i * M + l) * K + best];
        }
    }
    if (sd->n_rec[SPLIT_TRAIN] == 0 || sd->n_rec[SPLIT_TEST] == 0) {
        moe_err_set(err, "%s: too few sequences for train/test splits (train %zu, val %zu, test %zu sequences)",
                    t->h.model, sd->n_seq[0], sd->n_seq[1], sd->n_seq[2]);
        specdata_free(sd);
        return -1;
    }
    sd->freq = callocCheck(M * E, sizeof(float));
    for (size_t r = 0; r < sd->n_rec[SPLIT_TRAIN]; r++) {
        const uint16_t *ids = t->ids + sd->rec[SPLIT_TRAIN][r] * M * K;
        for (size_t j = 0; j < M * K; j++) sd->freq[(j / K) * E + ids[j]] += 1.0f;
    }
    for (size_t j = 0; j < M * E; j++) sd->freq[j] /= (float)sd->n_rec[SPLIT_TRAIN];
    sd->trans = callocCheck((size_t)D * M * E * E, sizeof(float));
    build_transitions(sd);
    return 0;
}

int method_available(const SpecData *sd, int method, int d) {
    if (d < 1 || d > sd->D) return 0;
    switch (method) {
    case METHOD_REUSE: return d == 1 && sd->t->reuse != NULL;
    case METHOD_MLP_BCE: return sd->mlp[0] != NULL && d <= sd->mlp[0]->c.D;
    case METHOD_MLP_LIST: return sd->mlp[1] != NULL && d <= sd->mlp[1]->c.D;
    default: return 1;
    }
}

int method_scores(const SpecData *sd, int method, size_t i, int l, float *scores, uint64_t *rng, SpecScratch *s) {
    const Trace *t = sd->t;
    int E = sd->E, K = sd->K, M = sd->M;
    int nd = 0;
    if (method == METHOD_MLP_BCE || method == METHOD_MLP_LIST) {
        const SpecModel *m = sd->mlp[method == METHOD_MLP_LIST];
        SpecInput in;
        spec_input_from_trace(t, i, l, m->c.D, m->c.use_reuse, &in);
        return spec_forward(m, &in, scores, s);
    }
    for (int d = 1; d <= sd->D && l + d < M; d++, nd++) {
        int lt = l + d;
        float *sc = scores + (size_t)(d - 1) * E;
        const float *fr = sd->freq + (size_t)lt * E;
        switch (method) {
        case METHOD_RANDOM:
            for (int e = 0; e < E; e++) sc[e] = rng_uniform(rng);
            break;
        case METHOD_FREQUENT: memcpy(sc, fr, sizeof(float) * E); break;
        case METHOD_TRANSITION: {
            const uint16_t *src = t->ids + ((size_t)i * M + l) * K;
            const float *P = sd->trans + ((size_t)(d - 1) * M + l) * E * E;
            for (int e = 0; e < E; e++) sc[e] = 0;
            for (int k = 0; k < K; k++) {
                const float *row = P + (size_t)src[k] * E;
                for (int e = 0; e < E; e++) sc[e] += row[e];
            }
            break;
        }
        case METHOD_PREVTOK: {
            for (int e = 0; e < E; e++) sc[e] = 1e-3f * fr[e];
            int32_t p = sd->prev[i];
            if (p >= 0) {
                const uint16_t *ids = t->ids + ((size_t)p * M + lt) * K;
                const float *w = t->weights + ((size_t)p * M + lt) * K;
                for (int k = 0; k < K; k++) sc[ids[k]] = 1.0f + w[k];
            }
            break;
        }
        case METHOD_REUSE: {
            for (int e = 0; e < E; e++) sc[e] = 1e-3f * fr[e];
            if (d == 1 && t->reuse) {
                const uint16_t *ru = t->reuse + ((size_t)i * (M - 1) + l) * K;
                for (int k = 0; k < K; k++) sc[ru[k]] = 2.0f - (float)k / (float)K;
            }
            break;
        }
        case METHOD_ORACLE: {
            for (int e = 0; e < E; e++) sc[e] = 1e-3f * fr[e];
            const uint16_t *ids = t->ids + ((size_t)i * M + lt) * K;
            const float *w = t->weights + ((size_t)i * M + lt) * K;
            for (int k = 0; k < K; k++) sc[ids[k]] = 2.0f + w[k];
            break;
        }
        default: break;
        }
    }
    return nd;
}

void rank_top(const float *scores, const float *prior, int E, int B, uint16_t *out) {
    for (int b = 0; b < B; b++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int j = 0; j < b; j++)
                if (out[j] == e) {
                    taken = 1;
                    break;
                }
            if (taken) continue;
            if (best < 0 || scores[e] > scores[best] ||
                (scores[e] == scores[best] && prior && prior[e] > prior[best]))
                best = e;
        }
        out[b] = (uint16_t)best;
    }
}

void metrics_init(Metrics *mt, int D, int M, int n_dom) {
    mt->D = D;
    mt->M = M;
    mt->n_dom = n_dom;
    mt->s = callocCheck((size_t)D * M * n_dom, sizeof(MetricSum));
    mt->n_seq = 0;
    mt->seq = NULL;
}
void metrics_free(Metrics *mt) {
    free(mt->s);
    free(mt->seq);
    mt->s = NULL;
    mt->seq = NULL;
}

void metrics_ci95(const Metrics *mt, int d, double *rk_half, double *exact_half) {
    *rk_half = *exact_half = NAN;
    if (!mt->seq || mt->n_seq < 2) return;
    double n = 0, srk = 0, sex = 0;
    size_t ns = 0;
    for (size_t q = 0; q < mt->n_seq; q++)
        for (int dd = 1; dd <= mt->D; dd++) {
            if (d > 0 && dd != d) continue;
            const MetricSum *c = &mt->seq[q * mt->D + dd - 1];
            n += c->n, srk += c->rk, sex += c->exact;
        }
    if (n == 0) return;
    double mrk = srk / n, mex = sex / n, vrk = 0, vex = 0;
    for (size_t q = 0; q < mt->n_seq; q++) {
        double cn = 0, crk = 0, cex = 0;
        for (int dd = 1; dd <= mt->D; dd++) {
            if (d > 0 && dd != d) continue;
            const MetricSum *c = &mt->seq[q * mt->D + dd - 1];
            cn += c->n, crk += c->rk, cex += c->exact;
        }
        if (cn == 0) continue;
        ns++;
        vrk += (crk - mrk * cn) * (crk - mrk * cn);
        vex += (cex - mex * cn) * (cex - mex * cn);
    }
    if (ns < 2) return;
    double f = (double)ns / (double)(ns - 1) / (n * n);
    *rk_half = 1.96 * sqrt(vrk * f);
    *exact_half = 1.96 * sqrt(vex * f);
}

// the metrics of one prediction
static MetricSum metric_sample(const uint16_t *pred, int K, int B, const uint16_t *truth, uint16_t truth_top1) {
    int hk = 0, hb = 0;
    for (int b = 0; b < B; b++)
        for (int k = 0; k < K; k++)
            if (pred[b] == truth[k]) {
                if (b < K) hk++;
                hb++;
                break;
            }
    MetricSum m = {(double)hk / K, (double)hb / K, hk == K, pred[0] == truth_top1, 1};
    return m;
}

static void sum_into(MetricSum *s, const MetricSum *x) {
    s->rk += x->rk;
    s->rb += x->rb;
    s->exact += x->exact;
    s->top1 += x->top1;
    s->n += x->n;
}

void metrics_add(Metrics *mt, int d, int lt, int dom, const uint16_t *pred, int K, int B, const uint16_t *truth,
                 uint16_t truth_top1) {
    MetricSum x = metric_sample(pred, K, B, truth, truth_top1);
    sum_into(mt->s + ((size_t)(d - 1) * mt->M + lt) * mt->n_dom + dom, &x);
}

void metrics_merge(Metrics *dst, const Metrics *src) {
    size_t n = (size_t)dst->D * dst->M * dst->n_dom;
    for (size_t j = 0; j < n; j++) {
        dst->s[j].rk += src->s[j].rk;
        dst->s[j].rb += src->s[j].rb;
        dst->s[j].exact += src->s[j].exact;
        dst->s[j].top1 += src->s[j].top1;
        dst->s[j].n += src->s[j].n;
    }
}

MetricSum metrics_total(const Metrics *mt, int d, int lt, int dom) {
    MetricSum r = {0, 0, 0, 0, 0};
    for (int dd = 1; dd <= mt->D; dd++) {
        if (d > 0 && dd != d) continue;
        for (int l = 0; l < mt->M; l++) {
            if (lt >= 0 && l != lt) continue;
            for (int o = 0; o < mt->n_dom; o++) {
                if (dom >= 0 && o != dom) continue;
                const MetricSum *s = mt->s + ((size_t)(dd - 1) * mt->M + l) * mt->n_dom + o;
                r.rk += s->rk;
                r.rb += s->rb;
                r.exact += s->exact;
                r.top1 += s->top1;
                r.n += s->n;
            }
        }
    }
    return r;
}

void evaluate(const SpecData *sd, int method, int split, Metrics *out, uint64_t seed) {
    const Trace *t = sd->t;
    int E = sd->E, K = sd->K, M = sd->M, D = sd->D, B = sd->B;
    metrics_init(out, D, M, sd->n_dom);
    const SpecConfig *mc = NULL;
    if (method == METHOD_MLP_BCE || method == METHOD_MLP_LIST) {
        if (!sd->mlp[method == METHOD_MLP_LIST]) return;
        mc = &sd->mlp[method == METHOD_MLP_LIST]->c;
    }
    size_t nr = sd->n_rec[split];
    // sequence index of each record of the split (records of a sequence are contiguous)
    size_t *seq_of = mallocCheck(sizeof(size_t) * (nr ? nr : 1));
    size_t ns = 0;
    for (size_t r = 0; r < nr; r++) {
        size_t i = sd->rec[split][r];
        if (r > 0 && t->seq[sd->rec[split][r - 1]] != t->seq[i]) ns++;
        seq_of[r] = ns;
    }
    out->n_seq = nr ? ns + 1 : 0;
    out->seq = callocCheck(out->n_seq ? out->n_seq * (size_t)D : 1, sizeof(MetricSum));
#pragma omp parallel
    {
        Metrics loc;
        metrics_init(&loc, D, M, sd->n_dom);
        float *scores = mallocCheck(sizeof(float) * (size_t)SPEC_MAX_D * E);
        uint16_t *pred = mallocCheck(sizeof(uint16_t) * (size_t)B);
        SpecScratch s;
        memset(&s, 0, sizeof s);
        if (mc) spec_scratch_init(&s, mc);
#pragma omp for schedule(dynamic, 64)
        for (size_t r = 0; r < nr; r++) {
            size_t i = sd->rec[split][r];
            uint64_t rng = rng_seed(seed ^ ((uint64_t)i * 0xD1B54A32D192ED03ULL));
            for (int l = 0; l + 1 < M; l++) {
                int nd = method_scores(sd, method, i, l, scores, &rng, mc ? &s : NULL);
                for (int d = 1; d <= nd && d <= D; d++) {
                    if (!method_available(sd, method, d)) continue;
                    int lt = l + d;
                    rank_top(scores + (size_t)(d - 1) * E, sd->freq + (size_t)lt * E, E, B, pred);
                    MetricSum x = metric_sample(pred, K, B, t->ids + ((size_t)i * M + lt) * K,
                                                sd->top1[i * (size_t)M + lt]);
                    sum_into(loc.s + ((size_t)(d - 1) * M + lt) * sd->n_dom + t->domain[i], &x);
                    // a sequence may straddle two threads' chunks: accumulate atomically
                    MetricSum *q = &out->seq[seq_of[r] * (size_t)D + d - 1];
#pragma omp atomic
                    q->rk += x.rk;
#pragma omp atomic
                    q->exact += x.exact;
#pragma omp atomic
                    q->n += 1;
                }
            }
        }
#pragma omp critical
        metrics_merge(out, &loc);
        metrics_free(&loc);
        free(scores);
        free(pred);
        if (mc) spec_scratch_free(&s);
    }
    free(seq_of);
}

double random_recall_k(int E, int K) { return (double)K / E; }
double random_recall_b(int E, int B) { return (double)B / E; }
double random_exact(int E, int K) {
    double c = 1;
    for (int j = 0; j < K; j++) c = c * (double)(E - j) / (double)(j + 1);
    return 1.0 / c;
}
double random_top1(int E) { return 1.0 / E; }
