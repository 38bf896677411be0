// report.html for one run and compare.html for several: summary tables, captions, charts.
#include <float.h>
#include <limits.h>
#include <stdlib.h>
#include <math.h>
#include <sys/stat.h>

#include "plots/report.h"

#define MAXVIO_FLOOR_CMP 1e-3

void report_options_default(ReportOptions *o) {
    o->window = 100;
    o->layer = -1;
    collapse_params_default(&o->collapse);
    o->quiet = 1;
}

// ---------------------------------------------------------------------------------------
// a growing string

typedef struct {
    char *s;
    size_t n, cap;
    int oom;
} Str;

static void sp(Str *b, const char *fmt, ...) {
    if (b->oom) return;
    va_list ap;
    va_start(ap, fmt);
    char tmp[2048];
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k < 0) return;
    if ((size_t)k >= sizeof tmp) k = sizeof tmp - 1;
    if (b->n + (size_t)k + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16384;
        while (cap < b->n + (size_t)k + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->n, tmp, (size_t)k + 1);
    b->n += (size_t)k;
}

// HTML-escaped copy of s (truncated to fit)
static const char *esc(const char *s, char *buf, size_t n) {
    size_t j = 0;
    for (; s && *s && j + 7 < n; s++) {
        const char *r = NULL;
        switch (*s) {
            case '<': r = "&lt;"; break;
            case '>': r = "&gt;"; break;
            case '&': r = "&amp;"; break;
            case '"': r = "&quot;"; break;
            default: break;
        }
        if (r) {
            size_t k = strlen(r);
            memcpy(buf + j, r, k);
            j += k;
        } else {
            buf[j++] = *s;
        }
    }
    buf[j] = '\0';
    return buf;
}

static void html_head(Str *b, const char *title, int refresh) {
    char e[512];
    sp(b, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    if (refresh) sp(b, "<meta http-equiv=\"refresh\" content=\"30\">\n");
    sp(b, "<title>%s</title>\n", esc(title, e, sizeof e));
    sp(b, "<style>body{font-family:'DejaVu Sans',Arial,sans-serif;margin:24px auto;max-width:1240px;color:#222}"
          "h1{font-size:24px}h2{font-size:19px;margin-top:34px;border-bottom:1px solid #ddd}"
          "table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 9px;text-align:left;"
          "font-size:14px}th{background:#f3f3f3}figure{margin:18px 0}img{max-width:100%%;border:1px solid #eee}"
          "figcaption{font-size:14px;color:#444;max-width:1000px;margin-top:4px}.warn{color:#c00;font-weight:bold}"
          ".note{color:#666;font-size:13px}.cfg td{font-family:monospace;font-size:13px}</style>\n</head><body>\n");
}

static void figure(Str *b, const char *png, long version, const char *caption) {
    sp(b, "<figure><img src=\"%s?v=%ld\" alt=\"%s\"><figcaption>%s</figcaption></figure>\n", png, version, png,
       caption);
}

// ---------------------------------------------------------------------------------------
// summary numbers

static double last_step(const RunLog *r) {
    double s = NAN;
    if (r->train.n) s = r->train.step[r->train.n - 1];
    if (r->routing.n && !(s >= r->routing.step[r->routing.n - 1])) s = r->routing.step[r->routing.n - 1];
    return s;
}

static double best_val(const RunLog *r, double *at) {
    double best = NAN;
    *at = NAN;
    for (int i = 0; i < r->train.n_val; i++)
        if (isfinite(r->train.val_loss[i]) && !(r->train.val_loss[i] >= best)) {
            best = r->train.val_loss[i];
            *at = r->train.val_step[i];
        }
    return best;
}

static double mean_maxvio_window(const RoutingLog *g, int window) {
    int t0 = g->n - window;
    if (t0 < 0) t0 = 0;
    double s = 0;
    int c = 0;
    for (size_t i = (size_t)t0 * g->L; i < (size_t)g->n * g->L; i++)
        if (isfinite(g->maxvio[i])) {
            s += g->maxvio[i];
            c++;
        }
    return c ? s / c : NAN;
}

static double final_global_maxvio(const RoutingLog *g) {
    if (g->n == 0) return NAN;
    double *tmp = malloc(sizeof(double) * (size_t)g->n);
    if (!tmp) return NAN;
    double s = 0;
    int c = 0;
    for (int li = 0; li < g->L; li++) {
        routing_global_maxvio(g, li, tmp);
        if (isfinite(tmp[g->n - 1])) {
            s += tmp[g->n - 1];
            c++;
        }
    }
    free(tmp);
    return c ? s / c : NAN;
}

static void fmt_num(double v, char *buf, size_t n) {
    if (isfinite(v))
        snprintf(buf, n, "%.4g", v);
    else
        snprintf(buf, n, "n/a");
}

static int pick_layer(const RunLog *r, const ReportOptions *o) {
    const RoutingLog *g = &r->routing;
    if (o->layer >= 0) {
        int li = runlog_layer_index(r, o->layer);
        if (li >= 0) return li;
    }
    for (int li = 0; li < g->L; li++)
        if (runlog_layer_collapsed(r, li, NULL)) return li;
    int best = 0;
    double bv = -1;
    int t0 = g->n - o->window < 0 ? 0 : g->n - o->window;
    for (int li = 0; li < g->L; li++) {
        double s = 0;
        int c = 0;
        for (int t = t0; t < g->n; t++) {
            float v = g->maxvio[(size_t)t * g->L + li];
            if (isfinite(v)) {
                s += v;
                c++;
            }
        }
        if (c && s / c > bv) {
            bv = s / c;
            best = li;
        }
    }
    return best;
}

static void json_value_str(const cJSON *v, char *buf, size_t n) {
    if (cJSON_IsString(v))
        snprintf(buf, n, "%s", v->valuestring);
    else if (cJSON_IsNumber(v))
        snprintf(buf, n, "%.6g", v->valuedouble);
    else if (cJSON_IsBool(v))
        snprintf(buf, n, "%s", cJSON_IsTrue(v) ? "true" : "false");
    else if (cJSON_IsNull(v))
        snprintf(buf, n, "null");
    else {
        char *p = cJSON_PrintUnformatted(v);
        snprintf(buf, n, "%s", p ? p : "?");
        free(p);
    }
}

static void config_table(Str *b, const cJSON *obj, const char *heading) {
    if (!cJSON_IsObject(obj)) return;
    char v[512], e[1024], k[256];
    sp(b, "<h3>%s</h3><table class=\"cfg\"><tr>", heading);
    int i = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, obj) {
        json_value_str(it, v, sizeof v);
        sp(b, "<td>%s</td><td>%s</td>", esc(it->string ? it->string : "?", k, sizeof k), esc(v, e, sizeof e));
        if (++i % 4 == 0) sp(b, "</tr><tr>");
    }
    sp(b, "</tr></table>\n");
}

// ---------------------------------------------------------------------------------------
// report_write

typedef struct {
    const char *file;
    int (*fn)(const RunLog *, const char *, MoeErr *);
    int optional;  // 1: coact, 2: domains
} ChartJob;

static int wrap_loss(const RunLog *r, const char *p, MoeErr *e) { return chart_loss(r, p, NULL, e); }
static int wrap_entropy(const RunLog *r, const char *p, MoeErr *e) { return chart_entropy(r, p, NULL, e); }
static int wrap_maxvio(const RunLog *r, const char *p, MoeErr *e) { return chart_maxvio(r, p, NULL, e); }
static int wrap_dropped(const RunLog *r, const char *p, MoeErr *e) { return chart_dropped(r, p, NULL, e); }
static int wrap_top1(const RunLog *r, const char *p, MoeErr *e) { return chart_top1(r, p, NULL, e); }

int report_write(const char *run_dir, MoeErr *err) {
    ReportOptions o;
    report_options_default(&o);
    return report_write_opts(run_dir, &o, err);
}

int report_write_opts(const char *run_dir, const ReportOptions *o, MoeErr *err) {
    RunLog r;
    if (runlog_load(&r, run_dir, &o->collapse, err) != 0) return -1;
    if (!o->quiet)
        for (int i = 0; i < r.n_notes; i++) fprintf(stderr, "report: %s: %s\n", run_dir, r.notes[i]);
    const RoutingLog *g = &r.routing;
    int window = o->window > 0 ? o->window : 100;
    char path[1400];
    int rc = 0;
#define OUT(name) (snprintf(path, sizeof path, "%s/%s", run_dir, name), path)
    if (!rc) rc = chart_load_heatmap(&r, window, OUT("load_heatmap.png"), NULL, err);
    int li = pick_layer(&r, o);
    if (!rc) rc = chart_share_layer(&r, g->L ? li : -1, OUT("share_layer.png"), NULL, err);
    ChartJob jobs[] = {
        {"share_grid.png", chart_share_grid, 0},   {"entropy.png", wrap_entropy, 0},
        {"maxvio.png", wrap_maxvio, 0},            {"bias.png", chart_bias, 0},
        {"bias_heatmap.png", chart_bias_heatmap, 0}, {"loss.png", wrap_loss, 0},
        {"train_stats.png", chart_train_stats, 0}, {"dropped.png", wrap_dropped, 0},
        {"top1.png", wrap_top1, 0},
        {"coact_within.png", chart_coact_within, 1}, {"coact_across.png", chart_coact_across, 1},
        {"domains.png", chart_domains, 2},
    };
    int n_jobs = (int)(sizeof jobs / sizeof jobs[0]);
    for (int j = 0; j < n_jobs && !rc; j++) {
        if (jobs[j].optional == 1 && !r.coact.present) continue;
        if (jobs[j].optional == 2 && !r.domains.present) continue;
        rc = jobs[j].fn(&r, OUT(jobs[j].file), err);
    }
    if (rc) {
        runlog_free(&r);
        return -1;
    }

    // ---- HTML
    Str b = {0};
    char e[1024], t1[64], t2[64];
    long version = (long)(isfinite(last_step(&r)) ? last_step(&r) : 0);
    char title[400];
    snprintf(title, sizeof title, "moe.c run %s", r.name);
    html_head(&b, title, !r.finished);
    sp(&b, "<h1>Run <code>%s</code> %s</h1>\n", esc(r.name, e, sizeof e),
       r.finished ? "(finished)" : "<span class=\"note\">(in progress: this page reloads every 30 s)</span>");
    const cJSON *parent = r.run ? cJSON_GetObjectItemCaseSensitive(r.run, "parent") : NULL;
    if (cJSON_IsObject(parent)) {
        const cJSON *pr = cJSON_GetObjectItemCaseSensitive(parent, "run");
        const cJSON *ck = cJSON_GetObjectItemCaseSensitive(parent, "checkpoint");
        const cJSON *ov = cJSON_GetObjectItemCaseSensitive(parent, "overrides");
        double ps = json_num(parent, "step");
        char ovs[512] = "";
        if (ov) json_value_str(ov, ovs, sizeof ovs);
        if (cJSON_IsString(pr)) {
            char e2[512], e3[512];
            sp(&b, "<p>Started from run <a href=\"../%s/report.html\">%s</a>", esc(pr->valuestring, e, sizeof e),
               esc(pr->valuestring, e2, sizeof e2));
            if (isfinite(ps)) sp(&b, " at step %.0f", ps);
            if (cJSON_IsString(ck)) sp(&b, " (checkpoint <code>%s</code>)", esc(ck->valuestring, e3, sizeof e3));
            if (ovs[0]) sp(&b, ", overrides <code>%s</code>", esc(ovs, e, sizeof e));
            sp(&b, ".</p>\n");
        }
    }
    // summary table
    double at, bv = best_val(&r, &at);
    sp(&b, "<h2>Summary</h2><table>\n");
    if (r.run) {
        const char *keys[] = {"backend", "precision", "created"};
        for (int k = 0; k < 3; k++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(r.run, keys[k]);
            if (cJSON_IsString(v)) sp(&b, "<tr><th>%s</th><td>%s</td></tr>\n", keys[k], esc(v->valuestring, e, sizeof e));
        }
        const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(r.run, "config");
        if (cJSON_IsObject(cfg)) {
            char c1[64], c2[64], c3[64], c4[64], c5[64], c6[64];
            json_value_str(cJSON_GetObjectItemCaseSensitive(cfg, "n_layers"), c1, sizeof c1);
            json_value_str(cJSON_GetObjectItemCaseSensitive(cfg, "dim"), c2, sizeof c2);
            json_value_str(cJSON_GetObjectItemCaseSensitive(cfg, "n_routed_experts"), c3, sizeof c3);
            json_value_str(cJSON_GetObjectItemCaseSensitive(cfg, "top_k"), c4, sizeof c4);
            json_value_str(cJSON_GetObjectItemCaseSensitive(cfg, "balance"), c5, sizeof c5);
            json_value_str(cJSON_GetObjectItemCaseSensitive(cfg, "score_func"), c6, sizeof c6);
            sp(&b, "<tr><th>config</th><td>%s layers, dim %s, %s routed experts, top-%s, %s scores, balance %s</td></tr>\n",
               c1, c2, c3, c4, c6, c5);
        }
    }
    fmt_num(last_step(&r), t1, sizeof t1);
    sp(&b, "<tr><th>steps</th><td>%s (%d train lines, %d routing lines)</td></tr>\n", t1, r.train.n, g->n);
    fmt_num(bv, t1, sizeof t1);
    fmt_num(at, t2, sizeof t2);
    sp(&b, "<tr><th>best validation loss</th><td>%s%s%s</td></tr>\n", t1, isfinite(bv) ? " at step " : "",
       isfinite(bv) ? t2 : "");
    int w = window < g->n ? window : g->n;
    fmt_num(mean_maxvio_window(g, window), t1, sizeof t1);
    fmt_num(final_global_maxvio(g), t2, sizeof t2);
    sp(&b, "<tr><th>mean MaxVio (batch), last %d steps</th><td>%s (global over the run: %s; mean over layers)</td></tr>\n",
       w, t1, t2);
    sp(&b, "<tr><th>collapsed layers</th><td>");
    int nc = 0;
    for (int l = 0; l < g->L; l++) {
        int ex = -1;
        if (runlog_layer_collapsed(&r, l, &ex)) {
            sp(&b, "%s<span class=\"warn\">layer %d (expert %d)</span>", nc ? ", " : "", g->layer[l], ex);
            nc++;
        }
    }
    sp(&b, "%s</td></tr>\n</table>\n", nc ? "" : (g->n ? "none" : "n/a (no routing data)"));
    // events
    if (r.n_events) {
        sp(&b, "<p>Collapse events (%s):</p><table><tr><th>step</th><th>event</th><th>layer</th><th>expert</th>"
               "<th>share of tokens</th><th>router entropy</th></tr>\n",
           r.events_from_file ? "from events.jsonl" : "recomputed from routing.jsonl");
        for (int i = 0; i < r.n_events && i < 200; i++) {
            const CollapseEvent *ev = &r.events[i];
            fmt_num(ev->share, t1, sizeof t1);
            fmt_num(ev->entropy, t2, sizeof t2);
            if (ev->type == COLLAPSE_EVENT_COLLAPSE)
                sp(&b, "<tr><td>%ld</td><td class=\"warn\">collapse (bad since step %ld)</td><td>%d</td><td>%d</td>"
                       "<td>%s</td><td>%s</td></tr>\n",
                   ev->step, ev->since, ev->layer, ev->expert, t1, t2);
            else
                sp(&b, "<tr><td>%ld</td><td>recovered</td><td>%d</td><td></td><td></td><td></td></tr>\n", ev->step,
                   ev->layer);
        }
        sp(&b, "</table>\n");
    }
    CollapseParams cp = o->collapse;
    sp(&b, "<p class=\"note\">Collapse rule: one expert chosen by at least max(%.2f, min(0.9, 3K/E)) of a layer's "
           "tokens, or router entropy below %.2f&middot;ln E, for %d consecutive steps (plots/collapse.h).</p>\n",
       cp.share_threshold, cp.entropy_frac, cp.patience);
    if (r.n_notes) {
        sp(&b, "<p class=\"note\">Notes on the logs:</p><ul class=\"note\">\n");
        for (int i = 0; i < r.n_notes; i++) sp(&b, "<li>%s</li>\n", esc(r.notes[i], e, sizeof e));
        sp(&b, "</ul>\n");
    }

    // charts
    char cap[2048];
    sp(&b, "<h2>Routing health</h2>\n");
    snprintf(cap, sizeof cap,
             "Expert load per MoE layer (rows) and expert (columns), summed over the last %d logged steps and divided "
             "by the layer's mean load, on a log colour scale: 1.00 (teal) is a perfectly balanced expert, dark purple "
             "a starved one (1/8 of its share or less, 0 = no tokens), bright yellow an overloaded one (8x or more). Load counts all top-K choices of every token. Rows outlined "
             "in red are layers in router collapse, with the expert they collapsed onto.",
             w);
    figure(&b, "load_heatmap.png", version, cap);
    snprintf(cap, sizeof cap,
             "Layer %d: each column is a step (or a bin of steps when there are more steps than pixels), each row an "
             "expert; colour = the expert's load divided by the mean load (1 = uniform). A horizontal bright band is "
             "an expert that keeps winning; red dashed lines mark collapse events, green ones recoveries. This layer "
             "is %s.",
             g->L ? g->layer[li] : -1,
             o->layer >= 0 ? "the one asked for" : "the first collapsed layer, else the one with the highest recent MaxVio");
    figure(&b, "share_layer.png", version, cap);
    figure(&b, "share_grid.png", version,
           "The same step &times; expert view for every MoE layer, on one colour scale. Panels outlined in red are "
           "collapsed layers.");
    figure(&b, "entropy.png", version,
           "Router entropy per layer: the mean over tokens of the entropy (nats) of the router's own scores "
           "normalised to sum 1, <b>before</b> the balancing bias is added (the bias only changes which experts "
           "are selected). The dashed line is uniform routing, ln E. A confident healthy router sits around ln K; a "
           "layer whose entropy falls towards 0 sends every token to the same expert.");
    figure(&b, "maxvio.png", version,
           "MaxVio = (max load &minus; mean load) / mean load per layer, log scale. Thin lines (with a shaded min-max "
           "band when steps are binned): MaxVio of each batch. Thick darker lines: the running global MaxVio, "
           "computed from the loads summed over all steps so far (the loss-free-balancing paper's MaxVio_global). 0 "
           "is perfect balance; 1 means the busiest expert gets twice its share.");
    figure(&b, "bias.png", version,
           "Loss-free balancing bias b_i per expert (one line per expert, one panel per layer): the bias rises for "
           "under-loaded experts and falls for over-loaded ones (b_i += &gamma;&middot;sign(mean load &minus; load_i)). "
           "Steadily diverging lines mean the router keeps fighting the bias.");
    figure(&b, "bias_heatmap.png", version,
           "The same biases as step &times; expert heatmaps on a diverging scale: blue = pushed down (expert was "
           "over-loaded), red = pushed up (under-loaded), white = 0.");
    figure(&b, "top1.png", version,
           "Mean over tokens of the largest routing weight, per layer (the weights after renormalisation over the "
           "K chosen experts and route_scale). 1/K &middot; route_scale means the chosen experts share equally; "
           "values near route_scale mean one expert dominates each token's output.");
    figure(&b, "dropped.png", version,
           "Fraction of token-to-expert assignments dropped by the expert capacity limit, per layer. Dropless runs "
           "(capacity_factor 0) drop nothing and say so.");
    sp(&b, "<h2>Training</h2>\n");
    figure(&b, "loss.png", version,
           "Training loss (the total objective; the cross-entropy alone is drawn too when auxiliary losses make it "
           "differ) and validation loss (dots) in nats per token. With many steps the raw training loss is drawn light "
           "and an exponentially smoothed curve (TensorBoard-style, weight 0.9) dark; with "
           "more steps than pixels the raw curve becomes a shaded min-max band. Collapse events are marked.");
    figure(&b, "train_stats.png", version,
           "Learning rate schedule, global gradient norm (log scale) and throughput in tokens per second.");
    sp(&b, "<h2>Expert co-activation and specialisation</h2>\n");
    if (r.coact.present) {
        figure(&b, "coact_within.png", version,
               "Within one layer: cell (i, j) is the fraction of the tokens that chose expert i which also chose "
               "expert j, over the last validation sweep (from coact.jsonl). With independent choices each off-diagonal "
               "cell would be about (K&minus;1)/(E&minus;1); bright cells are experts that fire together.");
        figure(&b, "coact_across.png", version,
               "Across consecutive MoE layers: cell (i, j) is the probability that a token which used expert i at "
               "this layer uses expert j at the next MoE layer. Rows sum to K. Random routing gives K/E everywhere; "
               "bright, concentrated rows are the structure an expert speculator can exploit.");
    } else {
        sp(&b, "<p class=\"note\">No co-activation charts: coact.jsonl is missing or holds no valid record (it is "
               "written at evaluations).</p>\n");
    }
    if (r.domains.present) {
        figure(&b, "domains.png", version,
               "Domain &times; expert specialisation per layer over the validation split: each cell is the lift "
               "P(expert | domain) / P(expert), i.e. the domain's share of assignments to that expert relative to "
               "the expert's overall share (balanced experts would make per-domain distributions look flat, so the "
               "lift reads better). 1 (white) = no preference, red = the domain prefers this expert (up to 4&times;), "
               "blue = avoids it. Log colour scale, clipped to [1/4, 4].");
    } else {
        sp(&b, "<p class=\"note\">No domain specialisation chart: domains.jsonl is missing or holds no valid record "
               "(it is written at evaluations).</p>\n");
    }
    if (r.run) {
        config_table(&b, cJSON_GetObjectItemCaseSensitive(r.run, "config"), "Model configuration");
        config_table(&b, cJSON_GetObjectItemCaseSensitive(r.run, "train"), "Training options");
    }
    sp(&b, "<p class=\"note\">Generated by <code>report</code> (moe.c plots/) from the run's logs only; "
           "regenerate with <code>make report RUN=%s</code>.</p>\n</body></html>\n",
       esc(r.name, e, sizeof e));
    runlog_free(&r);
    if (b.oom) {
        free(b.s);
        return moe_err_set(err, "%s/report.html: out of memory", run_dir);
    }
    rc = write_file_replace(OUT("report.html"), b.s, b.n, err);
    free(b.s);
    return rc;
#undef OUT
}

// ---------------------------------------------------------------------------------------
// compare

static int compare_lines(RunLog *runs, int n, int which, const char *path, MoeErr *err) {
    // which: 0 train loss, 1 val loss, 2 mean MaxVio over layers, 3 min entropy over layers
    static const char *titles[4] = {"Training loss", "Validation loss", "Mean MaxVio over MoE layers (batch)",
                                    "Lowest router entropy over MoE layers (before the bias)"};
    static const char *yl[4] = {"loss (nats/token)", "validation loss (nats/token)", "MaxVio (log)",
                                "min over layers of entropy (nats)"};
    Canvas cv;
    if (canvas_init(&cv, REPORT_W, REPORT_H, RGB_WHITE, err)) return -1;
    Axes ax = axes_in_box(&cv, 0, 0, REPORT_W, REPORT_H);
    ax.ylog = which == 2;
    double **xs = calloc((size_t)n, sizeof(double *)), **ys = calloc((size_t)n, sizeof(double *));
    int *ns = calloc((size_t)n, sizeof(int));
    if (!xs || !ys || !ns) {
        free(xs);
        free(ys);
        free(ns);
        canvas_free(&cv);
        return moe_err_set(err, "%s: out of memory", path);
    }
    double x0 = DBL_MAX, x1 = -DBL_MAX, lo = DBL_MAX, hi = -DBL_MAX;
    double uniform = NAN;
    for (int k = 0; k < n; k++) {
        RunLog *r = &runs[k];
        const RoutingLog *g = &r->routing;
        if (which == 0) {
            ns[k] = r->train.n;
            xs[k] = r->train.step;
            ys[k] = r->train.loss;
        } else if (which == 1) {
            ns[k] = r->train.n_val;
            xs[k] = r->train.val_step;
            ys[k] = r->train.val_loss;
        } else {
            ns[k] = g->n;
            xs[k] = g->step;
            ys[k] = malloc(sizeof(double) * (size_t)(g->n + 1));
            if (!ys[k]) continue;
            if (which == 3) uniform = isfinite(uniform) ? fmax(uniform, g->entropy_uniform) : g->entropy_uniform;
            for (int t = 0; t < g->n; t++) {
                double s = 0, m = DBL_MAX;
                int c = 0;
                for (int li = 0; li < g->L; li++) {
                    double v = which == 2 ? g->maxvio[(size_t)t * g->L + li] : g->entropy[(size_t)t * g->L + li];
                    if (!isfinite(v)) continue;
                    s += v;
                    m = fmin(m, v);
                    c++;
                }
                double v = c ? (which == 2 ? s / c : m) : NAN;
                if (which == 2 && isfinite(v) && v < MAXVIO_FLOOR_CMP) v = MAXVIO_FLOOR_CMP;
                ys[k][t] = v;
            }
        }
        for (int i = 0; i < ns[k]; i++) {
            if (!ys[k] || !isfinite(ys[k][i]) || (ax.ylog && ys[k][i] <= 0)) continue;
            x0 = fmin(x0, xs[k][i]);
            x1 = fmax(x1, xs[k][i]);
            lo = fmin(lo, ys[k][i]);
            hi = fmax(hi, ys[k][i]);
        }
    }
    if (lo > hi) {
        axes_draw(&ax, titles[which], "step", yl[which]);
        axes_message(&ax, "no data");
    } else {
        axes_set_x(&ax, x0, x1);
        if (which == 3) {
            lo = 0;
            if (isfinite(uniform)) hi = fmax(hi, uniform);
        }
        if (ax.ylog)
            axes_set_y(&ax, pow(10, floor(log10(lo))), pow(10, ceil(log10(hi * 1.01))));
        else
            axes_set_y(&ax, lo - 0.04 * (hi - lo), hi + 0.04 * (hi - lo));
        axes_draw(&ax, titles[which], "step", yl[which]);
        if (which == 3 && isfinite(uniform)) axes_hline(&ax, uniform, RGB_AXIS, 1.5f, 1);
        const char *names[64];
        Rgb colors[64];
        for (int k = 0; k < n; k++) {
            Rgb c = palette_color(k, n);
            axes_series(&ax, xs[k], ys[k], ns[k], c, which == 1 ? 3.0f : 2.0f);
            if (k < 64) {
                names[k] = runs[k].folder;
                colors[k] = c;
            }
        }
        axes_legend(&ax, names, colors, NULL, n < 64 ? n : 64, 0);
    }
    if (which >= 2)
        for (int k = 0; k < n; k++) free(ys[k]);
    free(xs);
    free(ys);
    free(ns);
    int rc = canvas_write_png(&cv, path, err);
    canvas_free(&cv);
    return rc;
}

static int compare_load(RunLog *runs, int n, int window, const char *path, MoeErr *err) {
    int pw = 420, maxL = 1;
    for (int k = 0; k < n; k++)
        if (runs[k].routing.L > maxL) maxL = runs[k].routing.L;
    int ph = 140 + 26 * maxL;
    if (ph < 320) ph = 320;
    int gc = n < 3 ? (n < 1 ? 1 : n) : 3, gr = (n + gc - 1) / gc;
    if (gr < 1) gr = 1;
    int W = gc * pw + 130, H = 44 + gr * ph;
    Canvas cv;
    if (canvas_init(&cv, W, H, RGB_WHITE, err)) return -1;
    char title[128];
    snprintf(title, sizeof title, "Final expert load / uniform share (last %d steps of each run)", window);
    canvas_text(&cv, (float)(W - 130) / 2, 4, title, 17.0f, RGB_TEXT, TEXT_CENTER, TEXT_TOP, TEXT_BOLD);
    for (int k = 0; k < n; k++) {
        const RoutingLog *g = &runs[k].routing;
        Axes ax = axes_in_box(&cv, (k % gc) * pw, 44 + (k / gc) * ph, pw, ph);
        ax.x0 = (k % gc) * pw + 70;
        ax.y0 = 44 + (k / gc) * ph + 30;
        ax.no_xticks = ax.no_yticks = 1;
        axes_draw(&ax, NULL, "expert", NULL);
        canvas_text(&cv, (float)(ax.x0 + ax.x1) / 2, (float)ax.y0 - 6, runs[k].folder, 14.0f, RGB_TEXT, TEXT_CENTER,
                    TEXT_BOTTOM, TEXT_BOLD);
        if (!g->n) {
            axes_message(&ax, "no data");
            continue;
        }
        float *v = malloc(sizeof(float) * (size_t)g->L * g->E);
        if (!v) continue;
        routing_window_share(g, window, v);
        heatmap_draw(&ax, v, g->L, g->E, SHARE_VMIN, SHARE_VMAX, 2, cmap_viridis, g->E <= 8 ? "%.1f" : NULL);
        free(v);
        for (int li = 0; li < g->L; li++) {
            int x0, y0, x1, y1;
            heatmap_cell_rect(&ax, g->L, 1, li, 0, &x0, &y0, &x1, &y1);
            char lab[32];
            snprintf(lab, sizeof lab, "L%d", g->layer[li]);
            canvas_text(&cv, (float)ax.x0 - 6, (float)(y0 + y1) / 2, lab, 12.0f, RGB_TEXT, TEXT_RIGHT, TEXT_MIDDLE, 0);
            if (runlog_layer_collapsed(&runs[k], li, NULL)) canvas_rect_outline(&cv, x0 - 3, y0, x1 + 3, y1, RGB_MARK, 3);
        }
        heatmap_col_labels(&ax, g->E, NULL, g->E > 16 ? g->E / 8 : 1);
    }
    colorbar_draw(&cv, W - 115, 74, 20, H - 50, SHARE_VMIN, SHARE_VMAX, 2, cmap_viridis, "load / mean load (log)");
    int rc = canvas_write_png(&cv, path, err);
    canvas_free(&cv);
    return rc;
}

// path of `target` relative to folder `from` (both must exist); falls back to target as given
static void rel_path(const char *from, const char *target, char *out, size_t n) {
    char a[4096], b[4096];
    if (!realpath(from, a) || !realpath(target, b)) {
        snprintf(out, n, "%s", target);
        return;
    }
    size_t i = 0, common = 0;  // length of the common leading components
    while (a[i] && a[i] == b[i]) {
        if (a[i] == '/') common = i;
        i++;
    }
    if (!a[i] && (b[i] == '/' || !b[i])) common = i;
    out[0] = '\0';
    size_t len = 0;
    for (const char *p = a + common; *p; p++)  // one ".." per component of `from` below the common part
        if (*p == '/' && len + 4 < n) len += (size_t)snprintf(out + len, n - len, "../");
    const char *rest = b + common;
    if (*rest == '/') rest++;
    snprintf(out + len, n - len, "%s", rest);
}

int report_compare(const char *out_dir, const char *const *run_dirs, int n_runs, const ReportOptions *o, MoeErr *err) {
    ReportOptions def;
    if (!o) {
        report_options_default(&def);
        o = &def;
    }
    if (n_runs < 1) return moe_err_set(err, "compare: no runs given");
    if (make_dirs(out_dir, err) != 0) return -1;
    RunLog *runs = calloc((size_t)n_runs, sizeof(RunLog));
    if (!runs) return moe_err_set(err, "compare: out of memory");
    int loaded = 0, rc = 0;
    for (int k = 0; k < n_runs && !rc; k++) {
        if (runlog_load(&runs[k], run_dirs[k], &o->collapse, err) != 0)
            rc = -1;
        else
            loaded++;
    }
    char path[1400];
    const char *files[5] = {"compare_loss.png", "compare_val_loss.png", "compare_maxvio.png", "compare_entropy.png",
                            "compare_load.png"};
    for (int w = 0; w < 4 && !rc; w++) {
        snprintf(path, sizeof path, "%s/%s", out_dir, files[w]);
        rc = compare_lines(runs, n_runs, w, path, err);
    }
    int window = o->window > 0 ? o->window : 100;
    if (!rc) {
        snprintf(path, sizeof path, "%s/%s", out_dir, files[4]);
        rc = compare_load(runs, n_runs, window, path, err);
    }
    if (!rc) {
        Str b = {0};
        char e[1024], t1[64], t2[64], t3[64];
        int all_done = 1;
        for (int k = 0; k < n_runs; k++) all_done &= runs[k].finished;
        html_head(&b, "moe.c run comparison", !all_done);
        sp(&b, "<h1>Run comparison</h1>\n<table><tr><th>run</th><th>steps</th><th>best val loss</th><th>mean MaxVio "
               "(last %d)</th><th>collapsed layers</th><th>status</th></tr>\n",
           window);
        for (int k = 0; k < n_runs; k++) {
            RunLog *r = &runs[k];
            double at, bv = best_val(r, &at);
            fmt_num(last_step(r), t1, sizeof t1);
            fmt_num(bv, t2, sizeof t2);
            fmt_num(mean_maxvio_window(&r->routing, window), t3, sizeof t3);
            char rel[1200], relp[1100];
            rel_path(out_dir, r->dir, relp, sizeof relp);
            snprintf(rel, sizeof rel, "%s%sreport.html", relp, relp[0] ? "/" : "");
            char en[600];
            sp(&b, "<tr><td><a href=\"%s\">%s</a></td><td>%s</td><td>%s</td><td>%s</td><td>", esc(rel, e, sizeof e),
               esc(r->folder, en, sizeof en), t1, t2, t3);
            int nc = 0;
            for (int li = 0; li < r->routing.L; li++)
                if (runlog_layer_collapsed(r, li, NULL)) sp(&b, "%s%d", nc++ ? ", " : "", r->routing.layer[li]);
            sp(&b, "%s</td><td>%s</td></tr>\n", nc ? "" : "none", r->finished ? "finished" : "in progress");
        }
        sp(&b, "</table>\n<p class=\"note\">Run links point to each run's own report.html (regenerate with "
               "<code>make report RUN=name</code>).</p>\n");
        long v = 0;
        figure(&b, "compare_loss.png", v,
               "Training loss of every run on shared axes (shaded min-max band with the mean line when there are more "
               "steps than pixels).");
        figure(&b, "compare_val_loss.png", v, "Validation loss of every run at its evaluation steps.");
        figure(&b, "compare_maxvio.png", v,
               "Batch MaxVio averaged over the MoE layers, log scale: lower is better balanced.");
        figure(&b, "compare_entropy.png", v,
               "For every step, the lowest router entropy of any MoE layer (router scores before the bias); the dashed "
               "line is uniform routing ln E. A run whose curve drops towards 0 has a collapsing layer.");
        figure(&b, "compare_load.png", v,
               "Final expert load per layer (load / mean load over each run's last window), side by side on one "
               "colour scale; red outlines mark collapsed layers.");
        sp(&b, "</body></html>\n");
        snprintf(path, sizeof path, "%s/compare.html", out_dir);
        if (b.oom)
            rc = moe_err_set(err, "%s: out of memory", path);
        else
            rc = write_file_replace(path, b.s, b.n, err);
        free(b.s);
    }
    for (int k = 0; k < loaded; k++) runlog_free(&runs[k]);
    free(runs);
    return rc;
}
