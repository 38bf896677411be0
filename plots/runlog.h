// Reading a run folder's logs (docs/LOGS.md) for the report: train.jsonl, routing.jsonl,
// run.json and the optional events.jsonl, coact.jsonl, domains.jsonl. Robust: a line cut
// off mid-way, a line that is not JSON, null values (NaN/inf as written by the trainer) or
// missing keys never fail the load; they become NaN values and notes for the report.
#ifndef MOE_PLOTS_RUNLOG_H
#define MOE_PLOTS_RUNLOG_H

#include <cjson/cJSON.h>

#include "common/util.h"
#include "plots/collapse.h"

typedef struct {
    int n;  // optimizer-step lines (with "loss" or "ce")
    double *step, *loss, *ce, *lr, *grad_norm, *tokens_per_s;  // (n), NaN when missing
    int n_val;
    double *val_step, *val_loss;  // (n_val)
} TrainLog;

typedef struct {
    int n, L, E, K;                // steps, MoE layers, experts, top-k (inferred)
    int *layer;                    // (L) model layer numbers
    double *step, *tokens;         // (n)
    float *load, *bias;            // (n, L, E), NaN when missing
    float *maxvio, *entropy, *dropped, *top1, *usage_entropy;  // (n, L)
    double entropy_uniform;        // ln E
} RoutingLog;

typedef struct {
    int present, step, E, n_within, n_across;
    double tokens;
    int *within_layer, *across_layer, *across_next;  // (n_within), (n_across)
    float *within, *across;                          // (n_within, E, E), (n_across, E, E)
} CoactLog;

typedef struct {
    int present, step, D, E, n_layers;
    char **names;      // (D)
    double *dtokens;   // (D)
    int *layer;        // (n_layers)
    float *counts;     // (n_layers, D, E)
} DomainLog;

#define RUNLOG_MAX_NOTES 24
typedef struct {
    char dir[1024];
    char name[256];    // run.json "name", else the folder name
    char folder[256];  // last component of the run folder path
    cJSON *run;        // run.json or NULL
    int finished;      // RUN_DIR/FINISHED exists
    TrainLog train;
    RoutingLog routing;
    CollapseEvent *events;
    int n_events;
    int events_from_file;  // 1: events.jsonl, 0: recomputed from routing.jsonl
    CoactLog coact;
    DomainLog domains;
    char notes[RUNLOG_MAX_NOTES][256];
    int n_notes;
} RunLog;

// Loads what exists. Fails (-1) only when run_dir is not a readable folder or holds none of
// run.json, train.jsonl, routing.jsonl. `cp` = collapse parameters (NULL: defaults).
int runlog_load(RunLog *r, const char *run_dir, const CollapseParams *cp, MoeErr *err);
void runlog_free(RunLog *r);
void runlog_note(RunLog *r, const char *fmt, ...);
// index of the layer li whose model layer number is `layer`, or -1
int runlog_layer_index(const RunLog *r, int layer);
// 1 if layer li is collapsed at the end of the log (last event for it is a collapse)
int runlog_layer_collapsed(const RunLog *r, int li, int *expert);
// Helper for any JSON-lines file: calls fn for every line that parses; counts bad lines and a
// truncated last line into *bad / *truncated. Returns -1 if the file cannot be read.
typedef void (*JsonLineFn)(cJSON *obj, void *ctx);
int jsonl_read(const char *path, JsonLineFn fn, void *ctx, int *n_lines, int *bad, int *truncated, MoeErr *err);
// number or NaN (missing, null, not a number)
double json_num(const cJSON *obj, const char *key);

#endif
