// The routing microscope: PNG charts and report.html for a run folder, from its logs only
// (docs/LOGS.md), and a side-by-side comparison of several runs.
//
//   report_write("runs/NAME", &err)    -> runs/NAME/*.png + runs/NAME/report.html
//   report_compare("runs/cmp", dirs, n) -> runs/cmp/compare_*.png + runs/cmp/compare.html
//
// report.html reloads itself every 30 s while RUN_DIR/FINISHED does not exist (the trainer
// creates FINISHED when it ends). Cheap enough to call from the training loop every N steps:
// about 0.1-0.3 s for 2,000 steps x 4 layers x 8 experts on a 2-core CPU (tests/test_plots.c
// prints the measured time). Not thread-safe (one font cache): call from one thread.
#ifndef MOE_PLOTS_REPORT_H
#define MOE_PLOTS_REPORT_H

#include "common/util.h"
#include "plots/chart.h"
#include "plots/collapse.h"
#include "plots/runlog.h"

typedef struct {
    int window;      // steps in the "last window" (load heatmap, mean MaxVio); default 100
    int layer;       // model layer number for the single-layer share chart; -1: auto
                     // (first collapsed layer, else the layer with the highest recent MaxVio)
    CollapseParams collapse;  // used when events.jsonl is absent
    int quiet;       // 0: print notes about the logs to stderr
} ReportOptions;

void report_options_default(ReportOptions *o);
int report_write(const char *run_dir, MoeErr *err);
int report_write_opts(const char *run_dir, const ReportOptions *o, MoeErr *err);
int report_compare(const char *out_dir, const char *const *run_dirs, int n_runs, const ReportOptions *o, MoeErr *err);

// Individual charts (each writes one PNG; used by report_write and by the tests). They never
// fail on missing or odd data: they draw "no data" instead. They fail only on I/O errors.
// Sizes: REPORT_W x REPORT_H unless said otherwise.
// Load shares (load / mean load, 1 = uniform) use one fixed log colour scale everywhere, so
// colours compare across charts and runs: 1/8 (starved, dark purple) .. 1 (teal) .. 8 (yellow).
#define SHARE_VMIN 0.125
#define SHARE_VMAX 8.0
#define REPORT_W 1000
#define REPORT_H 600
// Load heatmap layer x expert over the last `window` steps, as load / mean load (1 = uniform).
// The plot geometry is returned through *ax (may be NULL) so tests can locate cells.
int chart_load_heatmap(const RunLog *r, int window, const char *path, Axes *ax_out, MoeErr *err);
int chart_share_layer(const RunLog *r, int li, const char *path, Axes *ax_out, MoeErr *err);
int chart_share_grid(const RunLog *r, const char *path, MoeErr *err);
int chart_entropy(const RunLog *r, const char *path, Axes *ax_out, MoeErr *err);
int chart_maxvio(const RunLog *r, const char *path, Axes *ax_out, MoeErr *err);
int chart_bias(const RunLog *r, const char *path, MoeErr *err);
int chart_bias_heatmap(const RunLog *r, const char *path, MoeErr *err);
int chart_loss(const RunLog *r, const char *path, Axes *ax_out, MoeErr *err);
int chart_train_stats(const RunLog *r, const char *path, MoeErr *err);
int chart_dropped(const RunLog *r, const char *path, Axes *ax_out, MoeErr *err);
int chart_top1(const RunLog *r, const char *path, Axes *ax_out, MoeErr *err);
int chart_coact_within(const RunLog *r, const char *path, MoeErr *err);
int chart_coact_across(const RunLog *r, const char *path, MoeErr *err);
int chart_domains(const RunLog *r, const char *path, MoeErr *err);

// running global MaxVio of layer li after each step (from loads summed over steps 0..t): (n)
void routing_global_maxvio(const RoutingLog *g, int li, double *out);
// mean load / mean-over-experts over the last `window` steps: (L, E) into out
void routing_window_share(const RoutingLog *g, int window, float *out);

#endif
