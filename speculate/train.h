// Training of the learned speculator on the train split, early stopping on validation.
#ifndef MOE_SPEC_TRAIN_H
#define MOE_SPEC_TRAIN_H

#include "eval.h"
#include "mlp.h"

typedef struct {
    int max_epochs;       // upper bound on passes over the train samples
    int patience;         // epochs without validation improvement before stopping
    int batch;            // samples per AdamW step
    float lr, wd;
    uint64_t seed;
    size_t max_val;       // validation records used per epoch (0 = all)
    int verbose;          // print one line per epoch
} SpecTrainOpts;

typedef struct {
    int epochs_run, best_epoch;
    double best_val_recall;   // mean recall@K over d on the validation split, best epoch
    double train_loss;        // last epoch's mean train loss
    double seconds;
    size_t train_samples;
} SpecTrainLog;

// Trains m (already initialized for sd's trace) and leaves the best-validation weights in m.
int spec_train(SpecModel *m, const SpecData *sd, const SpecTrainOpts *o, SpecTrainLog *log, MoeErr *err);
// Mean recall@K over every (record, layer, d) of a split, evaluating at most max_rec records.
double spec_recall(const SpecModel *m, const SpecData *sd, int split, size_t max_rec);

#endif
