// Router-collapse detector, shared by the trainer (console warnings, events.jsonl) and the
// report (events recomputed from routing.jsonl, so they are drawn even without events.jsonl).
//
// Usage (once per optimizer step, for every MoE layer):
//   CollapseParams p; collapse_params_default(&p);
//   CollapseDetector det; collapse_init(&det, n_moe_layers, E, K, &p, &err);
//   CollapseEvent ev;
//   if (collapse_update(&det, step, li, layer_id, load, entropy, &ev)) {
//       char line[256]; collapse_event_json(&ev, line, sizeof line);  // events.jsonl line
//       collapse_event_text(&ev, msg, sizeof msg);                     // console warning
//   }
//   collapse_free(&det);
//
// Definitions. share_e = load_e / (sum_e load_e / K): the fraction of the step's tokens that
// chose expert e (load counts all K choices per token, so share is in [0, 1] and uniform
// routing gives K/E). A layer-step is "bad" when
//   max_e share_e >= max(share_threshold, min(0.9, 3K/E))       (one expert takes most tokens)
//   or entropy < entropy_frac * ln E                              (the router's own scores,
//                                                                  before the bias, collapse)
// A collapse event fires when a layer has been bad for `patience` consecutive steps (the event
// names the expert with the largest share at that step); a recovered event fires when a collapsed
// layer has then been good for `patience` consecutive steps.
//
// Default thresholds and why:
//  - share_threshold 0.5: more than half of all tokens go to one expert. The floor 3K/E (capped at
//    0.9) keeps configurations with few experts from tripping at ordinary imbalance: with E = 8,
//    K = 2 the uniform share is 0.25 and the effective threshold 0.75 (MaxVio 2); with E = 64,
//    K = 6 it is 0.5 (5.3x the uniform share 0.094).
//  - entropy_frac 0.2: a healthy confident router spreads its scores over about K experts,
//    entropy ~ ln K, i.e. ln K / ln E = 0.33 (E 8, K 2) to 0.43 (E 64, K 6) of the uniform value;
//    a router putting ~90 % of its score on one expert is below 0.2 ln E.
//  - patience 20: long enough to ignore the noisy first steps and single odd batches, short
//    enough to warn within a few percent of a typical few-hundred-step run.
#ifndef MOE_PLOTS_COLLAPSE_H
#define MOE_PLOTS_COLLAPSE_H

#include <stddef.h>

#include "common/util.h"

typedef struct {
    float share_threshold;  // default 0.5 (fraction of tokens choosing one expert)
    float entropy_frac;     // default 0.2 (fraction of ln E); <= 0 disables the entropy test
    int patience;           // M, default 20 consecutive steps
} CollapseParams;

enum { COLLAPSE_EVENT_COLLAPSE = 1, COLLAPSE_EVENT_RECOVERED = 2 };

typedef struct {
    int type;       // COLLAPSE_EVENT_*
    long step;      // step at which the event fired
    long since;     // first step of the bad (or good) run that triggered it
    int layer;      // model layer number (as in routing.jsonl)
    int expert;     // expert with the largest share (collapse events; -1 for recovered)
    float share;    // its share of tokens at the firing step
    float entropy;  // the layer's router entropy at the firing step (NaN if unknown)
} CollapseEvent;

typedef struct {
    int n_layers, E, K;
    CollapseParams p;
    float share_thr;  // effective share threshold
    int *bad_run, *good_run, *collapsed;  // (n_layers)
    long *run_start;                      // (n_layers) first step of the current run
} CollapseDetector;

void collapse_params_default(CollapseParams *p);
int collapse_init(CollapseDetector *d, int n_layers, int E, int K, const CollapseParams *p, MoeErr *err);
void collapse_free(CollapseDetector *d);
// Feed layer `li` (0..n_layers-1, model layer number `layer_id`) at `step`: load[E] counts
// (all K choices), entropy in nats (NaN if not measured). Returns 1 and fills *ev when an
// event fires, else 0. Loads that are all zero or hold NaN are ignored (no change of state).
int collapse_update(CollapseDetector *d, long step, int li, int layer_id, const float *load, float entropy,
                    CollapseEvent *ev);
// 1 if layer li is currently collapsed
int collapse_is_collapsed(const CollapseDetector *d, int li);
// One events.jsonl line (docs/LOGS.md format, '\n' terminated). Returns the length.
int collapse_event_json(const CollapseEvent *ev, char *buf, size_t n);
// One console line, e.g. "WARNING: router collapse at layer 3 (step 140): expert 5 takes 93% of tokens ..."
int collapse_event_text(const CollapseEvent *ev, char *buf, size_t n);

#endif
