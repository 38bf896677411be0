// Charts of one run (one PNG each) from its logs.
#include "plots/report.h"

#include <float.h>
#include <math.h>

#define EVENT_COLLAPSE_RGB RGB_MARK
#define EVENT_RECOVER_RGB ((Rgb){30, 150, 60})

// ---------------------------------------------------------------------------------------
// small helpers

static int save_png(Canvas *cv, const char *path, MoeErr *err) {
    int rc = canvas_write_png(cv, path, err);
    canvas_free(cv);
    return rc;
}

static Axes panel_axes(Canvas *cv, int bx, int by, int bw, int bh) {
    Axes ax = axes_in_box(cv, bx, by, bw, bh);
    ax.x0 = bx + 56;
    ax.x1 = bx + bw - 12;
    ax.y0 = by + 30;
    ax.y1 = by + bh - 48;
    return ax;
}

// title of a small-multiples chart, saying when only the first MAX_PANELS layers are shown
#define MAX_PANELS 64
static const char *grid_title(const char *t, int n, char *buf, size_t len) {
    if (n <= MAX_PANELS) return t;
    snprintf(buf, len, "%s (first %d of %d layers)", t, MAX_PANELS, n);
    return buf;
}

static void subtitle(Canvas *cv, int w, const char *s) {
    canvas_text(cv, (float)w / 2, 4, s, 17.0f, RGB_TEXT, TEXT_CENTER, TEXT_TOP, TEXT_BOLD);
}

static double *col_of(const float *a, int n, int stride, int off) {
    double *y = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    if (!y) return NULL;
    for (int t = 0; t < n; t++) y[t] = a[(size_t)t * stride + off];
    return y;
}

static void layer_names(const RoutingLog *g, char (*names)[32], const char **ptrs, int maxn) {
    for (int li = 0; li < g->L && li < maxn; li++) {
        snprintf(names[li], 32, "layer %d", g->layer[li]);
        ptrs[li] = names[li];
    }
}

// the legend of a per-layer line chart: one colour per MoE layer
static void layer_legend(Axes *ax, const RoutingLog *g) {
    char names[256][32];
    const char *ptrs[256];
    Rgb colors[256];
    layer_names(g, names, ptrs, 256);
    for (int li = 0; li < g->L && li < 256; li++) colors[li] = palette_color(li, g->L);
    axes_legend(ax, ptrs, colors, NULL, g->L < 256 ? g->L : 256, 0);
}

// first and last logged step (min and max: a run resumed from an earlier checkpoint logs
// some steps twice)
static double step_min(const RoutingLog *g) {
    double m = g->step[0];
    for (int t = 1; t < g->n; t++) m = fmin(m, g->step[t]);
    return m;
}
static double step_max(const RoutingLog *g) {
    double m = g->step[0];
    for (int t = 1; t < g->n; t++) m = fmax(m, g->step[t]);
    return m;
}

static void x_range(const RoutingLog *g, Axes *ax) {
    if (g->n > 0) axes_set_x(ax, step_min(g), g->n > 1 ? step_max(g) : g->step[0] + 1);
}

// draws collapse (red) / recovered (green) events as vertical dashed lines; layer < 0: all
static void draw_events(const Axes *ax, const RunLog *r, int layer) {
    for (int i = 0, drawn = 0; i < r->n_events && drawn < 200; i++) {
        const CollapseEvent *e = &r->events[i];
        if (layer >= 0 && e->layer != layer) continue;
        drawn++;
        char lab[64];
        if (e->type == COLLAPSE_EVENT_COLLAPSE)
            snprintf(lab, sizeof lab, "L%d collapse e%d", e->layer, e->expert);
        else
            snprintf(lab, sizeof lab, "L%d recovered", e->layer);
        axes_vline(ax, (double)e->step,
                   e->type == COLLAPSE_EVENT_COLLAPSE ? EVENT_COLLAPSE_RGB : EVENT_RECOVER_RGB, 1.5f, 1, lab);
    }
}

void routing_window_share(const RoutingLog *g, int window, float *out) {
    int t0 = g->n - (window > 0 ? window : 1);
    if (t0 < 0) t0 = 0;
    for (int li = 0; li < g->L; li++) {
        double mean = 0;
        int ok = 0;
        for (int e = 0; e < g->E; e++) {
            double s = 0;
            int c = 0;
            for (int t = t0; t < g->n; t++) {
                float v = g->load[((size_t)t * g->L + li) * g->E + e];
                if (isfinite(v)) {
                    s += v;
                    c++;
                }
            }
            out[(size_t)li * g->E + e] = c ? (float)s : NAN;
            if (c) {
                mean += s;
                ok++;
            }
        }
        mean = ok ? mean / g->E : 0;
        for (int e = 0; e < g->E; e++) {
            float *v = &out[(size_t)li * g->E + e];
            *v = mean > 0 ? (float)(*v / mean) : NAN;
        }
    }
}

void routing_global_maxvio(const RoutingLog *g, int li, double *out) {
    double *cum = calloc((size_t)(g->E > 0 ? g->E : 1), sizeof(double));
    if (!cum) {
        for (int t = 0; t < g->n; t++) out[t] = NAN;
        return;
    }
    for (int t = 0; t < g->n; t++) {
        const float *ld = g->load + ((size_t)t * g->L + li) * g->E;
        int ok = 1;
        for (int e = 0; e < g->E; e++)
            if (!isfinite(ld[e])) ok = 0;
        if (ok)
            for (int e = 0; e < g->E; e++) cum[e] += ld[e];
        double s = 0, mx = 0;
        for (int e = 0; e < g->E; e++) {
            s += cum[e];
            if (cum[e] > mx) mx = cum[e];
        }
        double mean = g->E ? s / g->E : 0;
        out[t] = mean > 0 ? (mx - mean) / mean : NAN;
    }
    free(cum);
}

// x range of step-binned heatmaps: [first step, last step + mean spacing), so that with one
// column per logged step, step k of n falls exactly into column k
static double step_end(const RoutingLog *g) {
    if (g->n <= 1) return g->step[0] + 1;
    double lo = step_min(g), hi = step_max(g);
    double d = (hi - lo) / (g->n - 1);
    return hi + (d > 0 ? d : 1);
}

static int step_col(double step, double x0, double x1, int cols) {
    double c = floor((step - x0) / (x1 - x0) * cols + 1e-6);
    if (!(c >= 0)) return 0;  // also NaN
    return c >= cols ? cols - 1 : (int)c;
}

// columns left empty between filled ones (irregular logging) repeat the previous column
static void fill_gaps(float *v, int rows, int cols, const int *cnt) {
    for (int c = 1; c < cols; c++)
        if (!cnt[c])
            for (int r = 0; r < rows; r++) v[(size_t)r * cols + c] = v[(size_t)r * cols + c - 1];
}

// ---------------------------------------------------------------------------------------
// load heatmap: layer x expert over the last window

int chart_load_heatmap(const RunLog *r, int window, const char *path, Axes *ax_out, MoeErr *err) {
    const RoutingLog *g = &r->routing;
    int L = g->L > 0 ? g->L : 1, E = g->E > 0 ? g->E : 1;
    int H = L <= 16 ? REPORT_H : (200 + 26 * L > 1600 ? 1600 : 200 + 26 * L);
    Canvas cv;
    if (canvas_init(&cv, REPORT_W, H, RGB_WHITE, err)) return -1;
    Axes ax = axes_in_box(&cv, 0, 0, REPORT_W, H);
    ax.x1 = REPORT_W - 250;
    ax.no_xticks = ax.no_yticks = 1;
    char title[160];
    if (g->n == 0) {
        axes_draw(&ax, "Expert load (layer x expert)", "expert", "MoE layer");
        axes_message(&ax, "no data");
        if (ax_out) *ax_out = ax;
        return save_png(&cv, path, err);
    }
    int w = window < g->n ? window : g->n;
    snprintf(title, sizeof title, "Expert load / uniform share, last %d step%s (%.0f-%.0f)", w, w == 1 ? "" : "s",
             g->step[g->n - w], g->step[g->n - 1]);
    float *v = malloc(sizeof(float) * (size_t)L * E);
    if (!v) {
        canvas_free(&cv);
        return moe_err_set(err, "%s: out of memory", path);
    }
    routing_window_share(g, w, v);
    axes_draw(&ax, title, "expert", "MoE layer");
    heatmap_draw(&ax, v, L, E, SHARE_VMIN, SHARE_VMAX, 2, cmap_viridis, E <= 24 ? "%.2f" : NULL);
    char names[256][32];
    const char *ptrs[256];
    layer_names(g, names, ptrs, 256);
    if (L <= 256) heatmap_row_labels(&ax, L, ptrs, L > 32 ? L / 32 + 1 : 1);
    heatmap_col_labels(&ax, E, NULL, E > 32 ? E / 16 : 1);
    for (int li = 0; li < g->L; li++) {
        int ex = -1;
        if (!runlog_layer_collapsed(r, li, &ex)) continue;
        int x0, y0, x1, y1;
        heatmap_cell_rect(&ax, L, 1, li, 0, &x0, &y0, &x1, &y1);
        canvas_rect_outline(&cv, x0 - 3, y0, x1 + 3, y1, RGB_MARK, 3);
        char lab[48];
        snprintf(lab, sizeof lab, "COLLAPSED (e%d)", ex);
        canvas_text(&cv, (float)x1 + 8, (float)(y0 + y1) / 2, lab, 12.0f, RGB_MARK, TEXT_LEFT, TEXT_MIDDLE, TEXT_BOLD);
    }
    colorbar_draw(&cv, REPORT_W - 120, ax.y0, 22, ax.y1, SHARE_VMIN, SHARE_VMAX, 2, cmap_viridis,
                  "load / mean load (log, 1 = uniform)");
    free(v);
    if (ax_out) *ax_out = ax;
    return save_png(&cv, path, err);
}

// ---------------------------------------------------------------------------------------
// step x expert share heatmap (one layer; small multiples for all layers)

// (E, cols): mean over each step bin of load_e / mean load
static float *share_bins(const RoutingLog *g, int li, int cols) {
    float *v = malloc(sizeof(float) * (size_t)g->E * cols);
    int *cnt = calloc((size_t)cols, sizeof(int));
    if (!v || !cnt) {
        free(v);
        free(cnt);
        return NULL;
    }
    for (size_t i = 0; i < (size_t)g->E * cols; i++) v[i] = 0;
    double x0 = step_min(g), x1 = step_end(g);
    for (int t = 0; t < g->n; t++) {
        const float *ld = g->load + ((size_t)t * g->L + li) * g->E;
        double s = 0;
        for (int e = 0; e < g->E; e++) s += ld[e];
        if (!isfinite(s) || !(s > 0)) continue;
        int c = step_col(g->step[t], x0, x1, cols);
        for (int e = 0; e < g->E; e++) v[(size_t)e * cols + c] += (float)(ld[e] * g->E / s);
        cnt[c]++;
    }
    for (int c = 0; c < cols; c++)
        for (int e = 0; e < g->E; e++) v[(size_t)e * cols + c] = cnt[c] ? v[(size_t)e * cols + c] / cnt[c] : NAN;
    fill_gaps(v, g->E, cols, cnt);
    free(cnt);
    return v;
}

static int draw_share_panel(const RunLog *r, int li, Axes *ax, int full) {
    const RoutingLog *g = &r->routing;
    axes_set_x(ax, step_min(g), step_end(g));
    int cols = ax->x1 - ax->x0;
    if (g->n < cols) cols = g->n;
    float *v = share_bins(g, li, cols);
    if (!v) return -1;
    heatmap_draw(ax, v, g->E, cols, SHARE_VMIN, SHARE_VMAX, 2, cmap_viridis, NULL);
    free(v);
    if (full) {
        heatmap_row_labels(ax, g->E, NULL, g->E > 16 ? g->E / 16 : 1);
        draw_events(ax, r, g->layer[li]);
    } else {
        for (int i = 0; i < r->n_events; i++)
            if (r->events[i].layer == g->layer[li])
                axes_vline(ax, (double)r->events[i].step,
                           r->events[i].type == COLLAPSE_EVENT_COLLAPSE ? EVENT_COLLAPSE_RGB : EVENT_RECOVER_RGB, 1.5f,
                           1, NULL);
    }
    return 0;
}

int chart_share_layer(const RunLog *r, int li, const char *path, Axes *ax_out, MoeErr *err) {
    const RoutingLog *g = &r->routing;
    Canvas cv;
    if (canvas_init(&cv, REPORT_W, REPORT_H, RGB_WHITE, err)) return -1;
    Axes ax = axes_in_box(&cv, 0, 0, REPORT_W, REPORT_H);
    ax.x1 = REPORT_W - 130;
    ax.no_yticks = 1;
    char title[128];
    if (g->n == 0 || li < 0 || li >= g->L) {
        axes_draw(&ax, "Expert share over training", "step", "expert");
        axes_message(&ax, "no data");
    } else {
        snprintf(title, sizeof title, "Layer %d: expert load / uniform share over training", g->layer[li]);
        axes_set_x(&ax, step_min(g), step_end(g));
        axes_draw(&ax, title, "step", "expert");
        if (draw_share_panel(r, li, &ax, 1)) {
            canvas_free(&cv);
            return moe_err_set(err, "%s: out of memory", path);
        }
        colorbar_draw(&cv, REPORT_W - 110, ax.y0, 22, ax.y1, SHARE_VMIN, SHARE_VMAX, 2, cmap_viridis,
                      "load / mean load (log)");
    }
    if (ax_out) *ax_out = ax;
    return save_png(&cv, path, err);
}

static void grid_dims(int n, int *cols, int *rows) {
    if (n > MAX_PANELS) n = MAX_PANELS;
    *cols = n <= 1 ? 1 : (n <= 4 ? 2 : (n <= 9 ? 3 : 4));
    *rows = (n + *cols - 1) / *cols;
    if (*rows < 1) *rows = 1;
}

int chart_share_grid(const RunLog *r, const char *path, MoeErr *err) {
    const RoutingLog *g = &r->routing;
    int cols, rows;
    grid_dims(g->L, &cols, &rows);
    int pw = cols >= 4 ? 300 : 380, ph = 220;
    int W = cols * pw + 130, H = 40 + rows * ph;
    if (W < 760) W = 760;
    Canvas cv;
    if (canvas_init(&cv, W, H, RGB_WHITE, err)) return -1;
    char tbuf[256];
    subtitle(&cv, W - 130, grid_title("Expert load / uniform share over training, every MoE layer", g->L, tbuf, sizeof tbuf));
    if (g->n == 0) {
        Axes ax = panel_axes(&cv, 0, 40, W - 130, H - 40);
        axes_draw(&ax, NULL, "step", "expert");
        axes_message(&ax, "no data");
        return save_png(&cv, path, err);
    }
    for (int li = 0; li < g->L && li < MAX_PANELS; li++) {
        int bx = (li % cols) * pw, by = 40 + (li / cols) * ph;
        Axes ax = panel_axes(&cv, bx, by, pw, ph);
        ax.no_yticks = 1;
        axes_set_x(&ax, step_min(g), step_end(g));
        char t[64];
        int ex = -1, col = runlog_layer_collapsed(r, li, &ex);
        if (col)
            snprintf(t, sizeof t, "layer %d: COLLAPSED (e%d)", g->layer[li], ex);
        else
            snprintf(t, sizeof t, "layer %d", g->layer[li]);
        axes_draw(&ax, NULL, "step", NULL);
        canvas_text(&cv, (float)(ax.x0 + ax.x1) / 2, (float)ax.y0 - 6, t, 14.0f, col ? RGB_MARK : RGB_TEXT, TEXT_CENTER,
                    TEXT_BOTTOM, TEXT_BOLD);
        if (draw_share_panel(r, li, &ax, 0)) {
            canvas_free(&cv);
            return moe_err_set(err, "%s: out of memory", path);
        }
        heatmap_row_labels(&ax, g->E, NULL, g->E > 8 ? g->E / 4 : 1);
        if (col) canvas_rect_outline(&cv, ax.x0 - 3, ax.y0 - 3, ax.x1 + 3, ax.y1 + 3, RGB_MARK, 2);
    }
    colorbar_draw(&cv, W - 115, 60, 20, H - 60, SHARE_VMIN, SHARE_VMAX, 2, cmap_viridis, "load / mean load (log)");
    return save_png(&cv, path, err);
}

// ---------------------------------------------------------------------------------------
// line charts over steps

static int per_layer_lines(const RunLog *r, const float *arr, Axes *ax, double scale, double floor_v) {
    const RoutingLog *g = &r->routing;
    for (int li = 0; li < g->L; li++) {
        double *y = col_of(arr, g->n, g->L, li);
        if (!y) return -1;
        for (int t = 0; t < g->n; t++) {
            y[t] *= scale;
            if (isfinite(y[t]) && y[t] < floor_v) y[t] = floor_v;
        }
        axes_series(ax, g->step, y, g->n, palette_color(li, g->L), 2.0f);
        free(y);
    }
    return 0;
}

static int any_finite(const float *a, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (isfinite(a[i])) return 1;
    return 0;
}

int chart_entropy(const RunLog *r, const char *path, Axes *ax_out, MoeErr *err) {
    const RoutingLog *g = &r->routing;
    Canvas cv;
    if (canvas_init(&cv, REPORT_W, REPORT_H, RGB_WHITE, err)) return -1;
    Axes ax = axes_in_box(&cv, 0, 0, REPORT_W, REPORT_H);
    const char *title = "Router entropy per MoE layer (router scores before the bias)";
    if (g->n == 0 || !any_finite(g->entropy, (size_t)g->n * g->L)) {
        axes_draw(&ax, title, "step", "entropy (nats)");
        axes_message(&ax, "no data");
    } else {
        x_range(g, &ax);
        double top = g->entropy_uniform;
        for (size_t i = 0; i < (size_t)g->n * g->L; i++)
            if (isfinite(g->entropy[i]) && g->entropy[i] > top) top = g->entropy[i];
        axes_set_y(&ax, 0.0, top * 1.08);
        axes_draw(&ax, title, "step", "entropy (nats)");
        axes_hline(&ax, g->entropy_uniform, RGB_AXIS, 1.5f, 1);
        char lab[64];
        snprintf(lab, sizeof lab, "uniform routing: ln E = %.3f", g->entropy_uniform);
        canvas_text(&cv, (float)ax.x0 + 6, (float)axes_px_y(&ax, g->entropy_uniform) - 3, lab, 12.0f, RGB_AXIS,
                    TEXT_LEFT, TEXT_BOTTOM, 0);
        if (per_layer_lines(r, g->entropy, &ax, 1.0, -DBL_MAX)) {
            canvas_free(&cv);
            return moe_err_set(err, "%s: out of memory", path);
        }
        draw_events(&ax, r, -1);
        layer_legend(&ax, g);
    }
    if (ax_out) *ax_out = ax;
    return save_png(&cv, path, err);
}

#define MAXVIO_FLOOR 1e-3

int chart_maxvio(const RunLog *r, const char *path, Axes *ax_out, MoeErr *err) {
    const RoutingLog *g = &r->routing;
    Canvas cv;
    if (canvas_init(&cv, REPORT_W, REPORT_H, RGB_WHITE, err)) return -1;
    Axes ax = axes_in_box(&cv, 0, 0, REPORT_W, REPORT_H);
    ax.ylog = 1;
    ax.ymin = MAXVIO_FLOOR;
    ax.ymax = 10;
    const char *title = "MaxVio per MoE layer: batch (thin) and global (thick, loads summed so far)";
    double *glob = malloc(sizeof(double) * (size_t)(g->n + 1) * (g->L > 0 ? g->L : 1));
    if (!glob) {
        canvas_free(&cv);
        return moe_err_set(err, "%s: out of memory", path);
    }
    int have = g->n > 0 && (any_finite(g->maxvio, (size_t)g->n * g->L) || any_finite(g->load, (size_t)g->n * g->L * g->E));
    if (!have) {
        axes_draw(&ax, title, "step", "MaxVio = (max load - mean) / mean");
        axes_message(&ax, "no data");
    } else {
        x_range(g, &ax);
        double lo = DBL_MAX, hi = -DBL_MAX;
        for (int li = 0; li < g->L; li++) routing_global_maxvio(g, li, glob + (size_t)li * g->n);
        for (size_t i = 0; i < (size_t)g->n * g->L; i++) {
            double vals[2] = {g->maxvio[i], glob[i]};
            for (int k = 0; k < 2; k++) {
                double v = vals[k] < MAXVIO_FLOOR ? MAXVIO_FLOOR : vals[k];
                if (!isfinite(v)) continue;
                if (v < lo) lo = v;
                if (v > hi) hi = v;
            }
        }
        if (lo <= hi) axes_set_y(&ax, pow(10, floor(log10(lo))), pow(10, ceil(log10(hi * 1.01))));
        axes_draw(&ax, title, "step", "MaxVio = (max load - mean) / mean  (log)");
        if (per_layer_lines(r, g->maxvio, &ax, 1.0, MAXVIO_FLOOR)) {
            free(glob);
            canvas_free(&cv);
            return moe_err_set(err, "%s: out of memory", path);
        }
        for (int li = 0; li < g->L; li++) {
            double *y = glob + (size_t)li * g->n;
            for (int t = 0; t < g->n; t++)
                if (isfinite(y[t]) && y[t] < MAXVIO_FLOOR) y[t] = MAXVIO_FLOOR;
            Rgb c = palette_color(li, g->L);
            Rgb dark = {(uint8_t)(c.r * 0.7), (uint8_t)(c.g * 0.7), (uint8_t)(c.b * 0.7)};
            axes_series(&ax, g->step, y, g->n, dark, 4.0f);
        }
        draw_events(&ax, r, -1);
        layer_legend(&ax, g);
        char note[96];
        snprintf(note, sizeof note, "values below %g drawn at %g", MAXVIO_FLOOR, MAXVIO_FLOOR);
        canvas_text(&cv, (float)ax.x1, (float)ax.y1 + 30, note, 11.0f, RGB_AXIS, TEXT_RIGHT, TEXT_TOP, 0);
    }
    free(glob);
    if (ax_out) *ax_out = ax;
    return save_png(&cv, path, err);
}

static int bias_all_zero(const RoutingLog *g) {
    for (size_t i = 0; i < (size_t)g->n * g->L * g->E; i++)
        if (isfinite(g->bias[i]) && g->bias[i] != 0) return 0;
    return 1;
}

int chart_bias(const RunLog *r, const char *path, MoeErr *err) {
    const RoutingLog *g = &r->routing;
    int cols, rows;
    grid_dims(g->L, &cols, &rows);
    int pw = cols >= 4 ? 320 : 420, ph = 260;
    int W = cols * pw, H = 40 + rows * ph;
    if (W < 600) W = 600;
    Canvas cv;
    if (canvas_init(&cv, W, H, RGB_WHITE, err)) return -1;
    char tbuf[256];
    subtitle(&cv, W, grid_title("Balancing bias per expert over training (one line per expert)", g->L, tbuf, sizeof tbuf));
    if (g->n == 0 || bias_all_zero(g)) {
        Axes ax = panel_axes(&cv, 0, 40, W, H - 40);
        axes_draw(&ax, NULL, "step", "bias");
        axes_message(&ax, g->n == 0 ? "no data" : "no balancing bias (all zero: balance mode without bias)");
        return save_png(&cv, path, err);
    }
    for (int li = 0; li < g->L && li < MAX_PANELS; li++) {
        Axes ax = panel_axes(&cv, (li % cols) * pw, 40 + (li / cols) * ph, pw, ph);
        ax.x0 += 10;
        x_range(g, &ax);
        double lo = DBL_MAX, hi = -DBL_MAX;
        for (int t = 0; t < g->n; t++)
            for (int e = 0; e < g->E; e++) {
                float v = g->bias[((size_t)t * g->L + li) * g->E + e];
                if (!isfinite(v)) continue;
                if (v < lo) lo = v;
                if (v > hi) hi = v;
            }
        if (lo <= hi) axes_set_y(&ax, lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo));
        char t[48];
        snprintf(t, sizeof t, "layer %d", g->layer[li]);
        axes_draw(&ax, NULL, "step", NULL);
        canvas_text(&cv, (float)(ax.x0 + ax.x1) / 2, (float)ax.y0 - 6, t, 14.0f, RGB_TEXT, TEXT_CENTER, TEXT_BOTTOM,
                    TEXT_BOLD);
        axes_hline(&ax, 0.0, RGB_AXIS, 1.0f, 1);
        for (int e = 0; e < g->E; e++) {
            double *y = col_of(g->bias, g->n, g->L * g->E, li * g->E + e);
            if (!y) {
                canvas_free(&cv);
                return moe_err_set(err, "%s: out of memory", path);
            }
            axes_series(&ax, g->step, y, g->n, palette_color(e, g->E), 1.5f);
            free(y);
        }
        if (li == 0 && g->E <= 16) {
            char names[16][32];
            const char *ptrs[16];
            Rgb colors[16];
            for (int e = 0; e < g->E; e++) {
                snprintf(names[e], 32, "e%d", e);
                ptrs[e] = names[e];
                colors[e] = palette_color(e, g->E);
            }
            axes_legend(&ax, ptrs, colors, NULL, g->E, 0);
        }
    }
    return save_png(&cv, path, err);
}

int chart_bias_heatmap(const RunLog *r, const char *path, MoeErr *err) {
    const RoutingLog *g = &r->routing;
    int cols, rows;
    grid_dims(g->L, &cols, &rows);
    int pw = cols >= 4 ? 300 : 380, ph = 220;
    int W = cols * pw + 130, H = 40 + rows * ph;
    if (W < 760) W = 760;
    Canvas cv;
    if (canvas_init(&cv, W, H, RGB_WHITE, err)) return -1;
    char tbuf[256];
    subtitle(&cv, W - 130, grid_title("Balancing bias, step x expert (blue: pushed down, red: pushed up)", g->L, tbuf, sizeof tbuf));
    if (g->n == 0 || bias_all_zero(g)) {
        Axes ax = panel_axes(&cv, 0, 40, W - 130, H - 40);
        axes_draw(&ax, NULL, "step", "expert");
        axes_message(&ax, g->n == 0 ? "no data" : "no balancing bias (all zero)");
        return save_png(&cv, path, err);
    }
    double amax = 0;
    for (size_t i = 0; i < (size_t)g->n * g->L * g->E; i++)
        if (isfinite(g->bias[i]) && fabs(g->bias[i]) > amax) amax = fabs(g->bias[i]);
    for (int li = 0; li < g->L && li < MAX_PANELS; li++) {
        Axes ax = panel_axes(&cv, (li % cols) * pw, 40 + (li / cols) * ph, pw, ph);
        ax.no_yticks = 1;
        axes_set_x(&ax, step_min(g), step_end(g));
        int nc = ax.x1 - ax.x0 < g->n ? ax.x1 - ax.x0 : g->n;
        float *v = malloc(sizeof(float) * (size_t)g->E * nc);
        int *cnt = calloc((size_t)nc, sizeof(int));
        if (!v || !cnt) {
            free(v);
            free(cnt);
            canvas_free(&cv);
            return moe_err_set(err, "%s: out of memory", path);
        }
        for (size_t i = 0; i < (size_t)g->E * nc; i++) v[i] = 0;
        for (int t = 0; t < g->n; t++) {
            const float *b = g->bias + ((size_t)t * g->L + li) * g->E;
            if (!isfinite(b[0])) continue;
            int c = step_col(g->step[t], ax.xmin, ax.xmax, nc);
            for (int e = 0; e < g->E; e++) v[(size_t)e * nc + c] += b[e];
            cnt[c]++;
        }
        for (int c = 0; c < nc; c++)
            for (int e = 0; e < g->E; e++) v[(size_t)e * nc + c] = cnt[c] ? v[(size_t)e * nc + c] / cnt[c] : NAN;
        fill_gaps(v, g->E, nc, cnt);
        char t[48];
        snprintf(t, sizeof t, "layer %d", g->layer[li]);
        axes_draw(&ax, NULL, "step", NULL);
        canvas_text(&cv, (float)(ax.x0 + ax.x1) / 2, (float)ax.y0 - 6, t, 14.0f, RGB_TEXT, TEXT_CENTER, TEXT_BOTTOM,
                    TEXT_BOLD);
        heatmap_draw(&ax, v, g->E, nc, -amax, amax, 0, cmap_diverging, NULL);
        heatmap_row_labels(&ax, g->E, NULL, g->E > 8 ? g->E / 4 : 1);
        free(v);
        free(cnt);
    }
    colorbar_draw(&cv, W - 115, 60, 20, H - 60, -amax, amax, 0, cmap_diverging, "bias");
    return save_png(&cv, path, err);
}

// ---------------------------------------------------------------------------------------
// training curves

// TensorBoard-style exponential smoothing with bias correction; NaN values are skipped
static void ema_smooth(const double *y, int n, double w, double *out) {
    double acc = 0, norm = 0;
    for (int i = 0; i < n; i++) {
        if (isfinite(y[i])) {
            acc = w * acc + (1 - w) * y[i];
            norm = w * norm + (1 - w);
        }
        out[i] = norm > 0 && isfinite(y[i]) ? acc / norm : NAN;
    }
}

static Rgb tint(Rgb c, float f) {  // blend towards white by f
    return (Rgb){(uint8_t)(c.r + f * (255 - c.r)), (uint8_t)(c.g + f * (255 - c.g)), (uint8_t)(c.b + f * (255 - c.b))};
}

// raw series in a light tint, then its smoothed version (when there are enough points)
static void smoothed_series(const Axes *ax, const double *x, const double *y, int n, Rgb c) {
    double *sm = n > 60 ? malloc(sizeof(double) * (size_t)n) : NULL;
    if (!sm) {
        axes_series(ax, x, y, n, c, 1.5f);
        return;
    }
    axes_series(ax, x, y, n, tint(c, 0.6f), 1.0f);
    ema_smooth(y, n, 0.9, sm);
    axes_series(ax, x, sm, n, c, 2.2f);
    free(sm);
}

int chart_loss(const RunLog *r, const char *path, Axes *ax_out, MoeErr *err) {
    const TrainLog *t = &r->train;
    Canvas cv;
    if (canvas_init(&cv, REPORT_W, REPORT_H, RGB_WHITE, err)) return -1;
    Axes ax = axes_in_box(&cv, 0, 0, REPORT_W, REPORT_H);
    int have = 0;
    for (int i = 0; i < t->n && !have; i++) have = isfinite(t->loss[i]) || isfinite(t->ce[i]);
    for (int i = 0; i < t->n_val && !have; i++) have = isfinite(t->val_loss[i]);
    if (!have) {
        axes_draw(&ax, "Loss", "step", "loss (nats/token)");
        axes_message(&ax, "no data");
    } else {
        double lo = DBL_MAX, hi = -DBL_MAX, x0 = DBL_MAX, x1 = -DBL_MAX;
        const double *arrs[3] = {t->loss, t->ce, t->val_loss};
        const double *xs[3] = {t->step, t->step, t->val_step};
        int ns[3] = {t->n, t->n, t->n_val};
        for (int k = 0; k < 3; k++)
            for (int i = 0; i < ns[k]; i++) {
                if (!isfinite(arrs[k][i])) continue;
                lo = fmin(lo, arrs[k][i]);
                hi = fmax(hi, arrs[k][i]);
                x0 = fmin(x0, xs[k][i]);
                x1 = fmax(x1, xs[k][i]);
            }
        axes_set_x(&ax, x0, x1);
        axes_set_y(&ax, lo - 0.04 * (hi - lo), hi + 0.04 * (hi - lo));
        axes_draw(&ax, "Training and validation loss", "step", "loss (nats/token)");
        int differs = 0;
        for (int i = 0; i < t->n; i++)
            if (isfinite(t->ce[i]) && isfinite(t->loss[i]) && fabs(t->ce[i] - t->loss[i]) > 1e-6) differs = 1;
        const char *names[3];
        Rgb colors[3];
        int n = 0;
        smoothed_series(&ax, t->step, t->loss, t->n, palette_color(0, 10));
        names[n] = t->n > 60 ? "train loss (objective; light: raw, dark: smoothed)" : "train loss (objective)";
        colors[n++] = palette_color(0, 10);
        if (differs) {
            smoothed_series(&ax, t->step, t->ce, t->n, palette_color(2, 10));
            names[n] = "train cross-entropy";
            colors[n++] = palette_color(2, 10);
        }
        if (t->n_val > 0) {
            axes_series(&ax, t->val_step, t->val_loss, t->n_val, palette_color(1, 10), 3.0f);
            for (int i = 0; i < t->n_val; i++)
                if (isfinite(t->val_loss[i])) {
                    float px = (float)axes_px_x(&ax, t->val_step[i]), py = (float)axes_px_y(&ax, t->val_loss[i]);
                    canvas_line(&cv, px, py, px, py, palette_color(1, 10), 7.0f);
                }
            names[n] = "validation loss";
            colors[n++] = palette_color(1, 10);
        }
        draw_events(&ax, r, -1);
        axes_legend(&ax, names, colors, NULL, n, 0);
    }
    if (ax_out) *ax_out = ax;
    return save_png(&cv, path, err);
}

int chart_train_stats(const RunLog *r, const char *path, MoeErr *err) {
    const TrainLog *t = &r->train;
    int W = 1200, H = 420;
    Canvas cv;
    if (canvas_init(&cv, W, H, RGB_WHITE, err)) return -1;
    const double *ys[3] = {t->lr, t->grad_norm, t->tokens_per_s};
    const char *titles[3] = {"Learning rate", "Gradient norm (before clipping)", "Throughput"};
    const char *ylabels[3] = {"learning rate", "global L2 norm (log)", "tokens / s"};
    for (int k = 0; k < 3; k++) {
        Axes ax = axes_in_box(&cv, k * 400, 0, 400, H);
        ax.ylog = k == 1;
        int ok = t->n > 0 && axes_fit_y(&ax, ys[k], t->n);
        if (ok) {
            axes_set_x(&ax, t->step[0], t->n > 1 ? t->step[t->n - 1] : t->step[0] + 1);
            if (k != 1 && ax.ymin > 0 && ax.ymin < 0.5 * ax.ymax) ax.ymin = 0;
        }
        axes_draw(&ax, titles[k], "step", ylabels[k]);
        if (!ok)
            axes_message(&ax, "no data");
        else
            axes_series(&ax, t->step, ys[k], t->n, palette_color(k == 0 ? 4 : (k == 1 ? 3 : 2), 10), 1.8f);
    }
    return save_png(&cv, path, err);
}

int chart_top1(const RunLog *r, const char *path, Axes *ax_out, MoeErr *err) {
    const RoutingLog *g = &r->routing;
    Canvas cv;
    if (canvas_init(&cv, REPORT_W, REPORT_H, RGB_WHITE, err)) return -1;
    Axes ax = axes_in_box(&cv, 0, 0, REPORT_W, REPORT_H);
    const char *title = "Mean top-1 routing weight per MoE layer (after renormalisation and route_scale)";
    if (g->n == 0 || !any_finite(g->top1, (size_t)g->n * g->L)) {
        axes_draw(&ax, title, "step", "largest routing weight");
        axes_message(&ax, "no data");
    } else {
        x_range(g, &ax);
        double *all = col_of(g->top1, g->n * g->L, 1, 0);
        if (all) {
            axes_fit_y(&ax, all, g->n * g->L);
            free(all);
        }
        const cJSON *cfg = r->run ? cJSON_GetObjectItemCaseSensitive(r->run, "config") : NULL;
        double rs = json_num(cfg, "route_scale");
        if (!(rs > 0)) rs = 1.0;
        axes_set_y(&ax, 0, fmax(ax.ymax, rs * 1.02));
        axes_draw(&ax, title, "step", "largest routing weight");
        double eq = rs / (g->K > 0 ? g->K : 1);
        axes_hline(&ax, eq, RGB_AXIS, 1.5f, 1);
        char lab[80];
        snprintf(lab, sizeof lab, "equal split over the K = %d chosen experts: %.3g", g->K, eq);
        canvas_text(&cv, (float)ax.x0 + 6, (float)axes_px_y(&ax, eq) + 4, lab, 12.0f, RGB_AXIS, TEXT_LEFT, TEXT_TOP, 0);
        if (per_layer_lines(r, g->top1, &ax, 1.0, -DBL_MAX)) {
            canvas_free(&cv);
            return moe_err_set(err, "%s: out of memory", path);
        }
        draw_events(&ax, r, -1);
        layer_legend(&ax, g);
    }
    if (ax_out) *ax_out = ax;
    return save_png(&cv, path, err);
}

int chart_dropped(const RunLog *r, const char *path, Axes *ax_out, MoeErr *err) {
    const RoutingLog *g = &r->routing;
    Canvas cv;
    if (canvas_init(&cv, REPORT_W, REPORT_H, RGB_WHITE, err)) return -1;
    Axes ax = axes_in_box(&cv, 0, 0, REPORT_W, REPORT_H);
    const char *title = "Dropped-token fraction per MoE layer (capacity limit)";
    double mx = 0;
    int finite = 0;
    for (size_t i = 0; i < (size_t)g->n * g->L; i++)
        if (isfinite(g->dropped[i])) {
            finite = 1;
            if (g->dropped[i] > mx) mx = g->dropped[i];
        }
    if (g->n == 0 || !finite) {
        axes_draw(&ax, title, "step", "dropped assignments (%)");
        axes_message(&ax, "no data");
    } else if (mx <= 0) {
        x_range(g, &ax);
        axes_set_y(&ax, 0, 1);
        axes_draw(&ax, title, "step", "dropped assignments (%)");
        axes_message(&ax, "dropless: no tokens dropped");
    } else {
        x_range(g, &ax);
        axes_set_y(&ax, 0, mx * 100 * 1.08);
        axes_draw(&ax, title, "step", "dropped assignments (% of tokens x K)");
        if (per_layer_lines(r, g->dropped, &ax, 100.0, -DBL_MAX)) {
            canvas_free(&cv);
            return moe_err_set(err, "%s: out of memory", path);
        }
        layer_legend(&ax, g);
    }
    if (ax_out) *ax_out = ax;
    return save_png(&cv, path, err);
}

// ---------------------------------------------------------------------------------------
// co-activation and domain specialisation (grids of small heatmaps)

// draws n panels of (rows x cols) matrices m[p] with shared scale; labels: expert numbers
static int matrix_grid(const char *path, const char *title, int n, const float *m, int rows, int cols,
                       const char *const *row_names, char (*panel_titles)[64], double vmin, double vmax, int logscale,
                       ColorMap cmap, const char *fmt, const char *cbar_label, const char *xl, const char *yl,
                       MoeErr *err) {
    int gc, gr;
    grid_dims(n, &gc, &gr);
    if (n > MAX_PANELS) n = MAX_PANELS;
    int pw = cols > 16 ? 420 : (gc >= 4 ? 300 : 360), ph = row_names ? 60 + 40 + rows * 22 : pw - 20;
    if (ph < 200) ph = 200;
    if (ph > 900) ph = 900;
    int left = (row_names ? 40 : 0) + (yl ? 22 : 0);
    int W = gc * (pw + left) + 140, H = 44 + gr * ph;
    if (W < 760) W = 760;
    Canvas cv;
    if (canvas_init(&cv, W, H, RGB_WHITE, err)) return -1;
    subtitle(&cv, W - 140, title);
    if (n == 0) {
        Axes ax = panel_axes(&cv, 0, 44, W - 140, H - 44);
        axes_message(&ax, "no data");
        return save_png(&cv, path, err);
    }
    for (int p = 0; p < n; p++) {
        Axes ax = panel_axes(&cv, (p % gc) * (pw + left), 44 + (p / gc) * ph, pw + left, ph);
        ax.x0 += left;
        ax.no_xticks = ax.no_yticks = 1;
        axes_draw(&ax, NULL, xl, NULL);
        if (yl)
            canvas_text(&cv, (float)((p % gc) * (pw + left) + 6), (float)(ax.y0 + ax.y1) / 2, yl, 13.0f, RGB_TEXT,
                        TEXT_LEFT, TEXT_MIDDLE, TEXT_ROT90);
        canvas_text(&cv, (float)(ax.x0 + ax.x1) / 2, (float)ax.y0 - 6, panel_titles[p], 14.0f, RGB_TEXT, TEXT_CENTER,
                    TEXT_BOTTOM, TEXT_BOLD);
        heatmap_draw(&ax, m + (size_t)p * rows * cols, rows, cols, vmin, vmax, logscale, cmap, fmt);
        heatmap_row_labels(&ax, rows, row_names, row_names ? 1 : (rows > 16 ? rows / 8 : 1));
        heatmap_col_labels(&ax, cols, NULL, cols > 16 ? cols / 8 : 1);
    }
    colorbar_draw(&cv, W - 125, 64, 20, H - 40, vmin, vmax, logscale, cmap, cbar_label);
    return save_png(&cv, path, err);
}

int chart_coact_within(const RunLog *r, const char *path, MoeErr *err) {
    const CoactLog *c = &r->coact;
    int n = c->present ? c->n_within : 0, E = c->E > 0 ? c->E : 1;
    float *m = malloc(sizeof(float) * (size_t)(n + 1) * E * E);
    char(*pt)[64] = calloc((size_t)(n + 1), 64);
    if (!m || !pt) {
        free(m);
        free(pt);
        return moe_err_set(err, "%s: out of memory", path);
    }
    for (int p = 0; p < n; p++) {
        const float *cnt = c->within + (size_t)p * E * E;
        for (int i = 0; i < E; i++)
            for (int j = 0; j < E; j++) {
                float d = cnt[(size_t)i * E + i];
                m[((size_t)p * E + i) * E + j] = i == j || !(d > 0) ? NAN : cnt[(size_t)i * E + j] / d;
            }
        snprintf(pt[p], 64, "layer %d", c->within_layer[p]);
    }
    char title[160];
    snprintf(title, sizeof title, "Co-activation within a layer: P(expert j also chosen | expert i chosen), step %d",
             c->step);
    int rc = matrix_grid(path, title, n, m, E, E, NULL, pt, 0.0, 1.0, 0, cmap_viridis, E <= 8 ? "%.2f" : NULL,
                         "probability", "expert j", "expert i", err);
    free(m);
    free(pt);
    return rc;
}

int chart_coact_across(const RunLog *r, const char *path, MoeErr *err) {
    const CoactLog *c = &r->coact;
    int n = c->present ? c->n_across : 0, E = c->E > 0 ? c->E : 1;
    float *m = malloc(sizeof(float) * (size_t)(n + 1) * E * E);
    char(*pt)[64] = calloc((size_t)(n + 1), 64);
    if (!m || !pt) {
        free(m);
        free(pt);
        return moe_err_set(err, "%s: out of memory", path);
    }
    int K = r->routing.K > 0 ? r->routing.K : 1;
    for (int p = 0; p < n; p++) {
        const float *cnt = c->across + (size_t)p * E * E;
        for (int i = 0; i < E; i++) {
            double rs = 0;
            for (int j = 0; j < E; j++) rs += cnt[(size_t)i * E + j];
            for (int j = 0; j < E; j++)  // tokens with i at layer l = row sum / K (K picks at l+1)
                m[((size_t)p * E + i) * E + j] = rs > 0 ? (float)(cnt[(size_t)i * E + j] * K / rs) : NAN;
        }
        snprintf(pt[p], 64, "layer %d -> %d", c->across_layer[p], c->across_next[p]);
    }
    char title[160];
    snprintf(title, sizeof title, "Across layers: P(expert j at the next MoE layer | expert i at this one), step %d",
             c->step);
    int rc = matrix_grid(path, title, n, m, E, E, NULL, pt, 0.0, 1.0, 0, cmap_viridis, E <= 8 ? "%.2f" : NULL,
                         "probability", "expert j (next layer)", "expert i", err);
    free(m);
    free(pt);
    return rc;
}

int chart_domains(const RunLog *r, const char *path, MoeErr *err) {
    const DomainLog *d = &r->domains;
    int n = d->present ? d->n_layers : 0, D = d->D > 0 ? d->D : 1, E = d->E > 0 ? d->E : 1;
    float *m = malloc(sizeof(float) * (size_t)(n + 1) * D * E);
    char(*pt)[64] = calloc((size_t)(n + 1), 64);
    if (!m || !pt) {
        free(m);
        free(pt);
        return moe_err_set(err, "%s: out of memory", path);
    }
    for (int p = 0; p < n; p++) {
        const float *cnt = d->counts + (size_t)p * D * E;
        double total = 0;
        double *col = calloc((size_t)E, sizeof(double));
        if (!col) {
            free(m);
            free(pt);
            return moe_err_set(err, "%s: out of memory", path);
        }
        for (int i = 0; i < D; i++)
            for (int e = 0; e < E; e++)
                if (isfinite(cnt[(size_t)i * E + e])) {
                    col[e] += cnt[(size_t)i * E + e];
                    total += cnt[(size_t)i * E + e];
                }
        for (int i = 0; i < D; i++) {
            double rs = 0;
            for (int e = 0; e < E; e++)
                if (isfinite(cnt[(size_t)i * E + e])) rs += cnt[(size_t)i * E + e];
            for (int e = 0; e < E; e++) {  // lift = P(e | domain) / P(e)
                double pe = total > 0 ? col[e] / total : 0;
                double v = rs > 0 && pe > 0 ? (cnt[(size_t)i * E + e] / rs) / pe : NAN;
                if (isfinite(v) && v < 0.25) v = 0.25;
                if (isfinite(v) && v > 4) v = 4;
                m[((size_t)p * D + i) * E + e] = (float)v;
            }
        }
        free(col);
        snprintf(pt[p], 64, "layer %d", d->layer[p]);
    }
    char title[160];
    snprintf(title, sizeof title,
             "Domain specialisation: P(expert | domain) / P(expert) (1 = no preference), step %d", d->step);
    int rc = matrix_grid(path, title, n, m, D, E, (const char *const *)d->names, pt, 0.25, 4.0, 2, cmap_diverging,
                         E <= 10 ? "%.2f" : NULL, "lift (log scale)", "expert", NULL, err);
    free(m);
    free(pt);
    return rc;
}
