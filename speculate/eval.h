// Splits, baselines and metrics of expert speculation, shared by every method.
//
// A prediction task is (record i, source MoE layer l, lookahead d) with l+d < M: knowing the
// routing of this token up to layer l (and of the earlier tokens), rank the E experts of
// layer l+d. Each method gives a score per expert; the top-B of the ranking is evaluated:
//   recall@K   |top-K ∩ S| / K             random: K/E
//   recall@B   |top-B ∩ S| / K (K<B<=2K)  random: B/E
//   exact      top-K == S as sets          random: 1/C(E,K)
//   top1       the first-ranked expert is the one with the largest gate weight at l+d
//              random: 1/E
#ifndef MOE_SPEC_EVAL_H
#define MOE_SPEC_EVAL_H

#include "mlp.h"
#include "trace.h"

enum { SPLIT_TRAIN = 0, SPLIT_VAL = 1, SPLIT_TEST = 2, N_SPLITS = 3 };

typedef struct {
    uint64_t seed;
    float val_frac, test_frac;  // by sequence
} SplitSpec;

// Split of a sequence id: a pure function of (seq, seed), independent of record order.
int split_of_seq(uint32_t seq, const SplitSpec *s);

enum {
    METHOD_RANDOM,
    METHOD_FREQUENT,
    METHOD_TRANSITION,
    METHOD_PREVTOK,
    METHOD_REUSE,
    METHOD_ORACLE,
    METHOD_MLP_BCE,
    METHOD_MLP_LIST,
    N_METHODS
};
extern const char *method_names[N_METHODS];

typedef struct {
    const Trace *t;
    int E, K, M, D, B, n_dom;
    SplitSpec split;
    uint8_t *split_of;   // (n) split of each record
    int32_t *prev;       // (n) record of the same sequence's previous position, or -1
    uint16_t *top1;      // (n, M) largest-weight expert of each layer
    size_t *rec[N_SPLITS];  // record indices of each split
    size_t n_rec[N_SPLITS];
    size_t n_seq[N_SPLITS];
    float *freq;         // (M, E) share of train tokens choosing each expert
    float *trans;        // (D, M, E, E) P(e2 chosen at l+d | e chosen at l) on train
    const SpecModel *mlp[2];  // learned speculators (BCE+rank, listwise) or NULL
} SpecData;

// Builds splits, previous-token links and the train statistics. B: recall budget (K<B<=2K).
int specdata_init(SpecData *sd, const Trace *t, const SplitSpec *split, int D, int B, MoeErr *err);
void specdata_free(SpecData *sd);
// Whether a method can predict lookahead d on this data (gate reuse: d = 1 and the field
// present; learned: model loaded).
int method_available(const SpecData *sd, int method, int d);
// Scores (D, E) of every expert at layer l+d, for each valid d; returns the number of valid
// d. rng: for the random method. s: scratch for the learned methods (may be NULL otherwise).
int method_scores(const SpecData *sd, int method, size_t i, int l, float *scores, uint64_t *rng, SpecScratch *s);
// Top-B expert ids of a score vector, best first (ties: lower train frequency loses, then id).
void rank_top(const float *scores, const float *prior, int E, int B, uint16_t *out);

// Metric sums, indexed (d-1, target layer, domain).
typedef struct {
    double rk, rb, exact, top1, n;
} MetricSum;
typedef struct {
    int D, M, n_dom;
    MetricSum *s;  // (D, M, n_dom)
    // per sequence of the evaluated split, per d: sums for cluster-robust confidence intervals
    size_t n_seq;
    MetricSum *seq;  // (n_seq, D) or NULL
} Metrics;
void metrics_init(Metrics *mt, int D, int M, int n_dom);
void metrics_free(Metrics *mt);
void metrics_add(Metrics *mt, int d, int lt, int dom, const uint16_t *pred, int K, int B, const uint16_t *truth,
                 uint16_t truth_top1);
void metrics_merge(Metrics *dst, const Metrics *src);
// Sum over a selection (-1 = all): d in 1..D, target layer, domain.
MetricSum metrics_total(const Metrics *mt, int d, int lt, int dom);

// 95 % confidence half-widths of mean recall@K and exact match at lookahead d (-1: all),
// treating sequences as independent clusters (tokens of one sequence are correlated).
void metrics_ci95(const Metrics *mt, int d, double *rk_half, double *exact_half);

// Evaluates a method on one split (every record, every source layer, every valid d).
void evaluate(const SpecData *sd, int method, int split, Metrics *out, uint64_t seed);

// Random-guess expected values.
double random_recall_k(int E, int K);
double random_recall_b(int E, int B);
double random_exact(int E, int K);
double random_top1(int E);

#endif
