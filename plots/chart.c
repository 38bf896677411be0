// Axes, ticks, series, legends, heatmaps, colour bars.
#include "plots/chart.h"

#include <float.h>
#include <math.h>

#define FONT_TITLE 17.0f
#define FONT_LABEL 14.0f
#define FONT_TICK 12.0f

Axes axes_in_box(Canvas *cv, int bx, int by, int bw, int bh) {
    Axes ax = {0};
    ax.cv = cv;
    ax.x0 = bx + 78;
    ax.x1 = bx + bw - 18;
    ax.y0 = by + 40;
    ax.y1 = by + bh - 50;
    if (ax.x1 <= ax.x0 + 10) ax.x1 = ax.x0 + 10;
    if (ax.y1 <= ax.y0 + 10) ax.y1 = ax.y0 + 10;
    ax.xmin = 0;
    ax.xmax = 1;
    ax.ymin = 0;
    ax.ymax = 1;
    return ax;
}

void axes_set_x(Axes *ax, double xmin, double xmax) {
    if (!isfinite(xmin) || !isfinite(xmax)) return;
    if (xmax <= xmin) {
        double c = xmin;
        xmin = c - (ax->xlog ? c * 0.5 : 0.5);
        xmax = c + (ax->xlog ? c * 0.5 : 0.5);
    }
    ax->xmin = xmin;
    ax->xmax = xmax;
}

void axes_set_y(Axes *ax, double ymin, double ymax) {
    if (!isfinite(ymin) || !isfinite(ymax)) return;
    if (ymax <= ymin) {
        double c = ymin;
        if (ax->ylog) {
            ymin = c / 2;
            ymax = c * 2;
        } else {
            double d = fabs(c) > 0 ? 0.1 * fabs(c) : 0.5;
            ymin = c - d;
            ymax = c + d;
        }
    }
    ax->ymin = ymin;
    ax->ymax = ymax;
}

int axes_fit_y(Axes *ax, const double *y, int n) {
    double lo = DBL_MAX, hi = -DBL_MAX;
    for (int i = 0; i < n; i++) {
        if (!isfinite(y[i]) || (ax->ylog && y[i] <= 0)) continue;
        if (y[i] < lo) lo = y[i];
        if (y[i] > hi) hi = y[i];
    }
    if (lo > hi) return 0;
    if (ax->ylog) {
        axes_set_y(ax, lo / 1.25, hi * 1.25);
    } else {
        double pad = 0.05 * (hi - lo);
        axes_set_y(ax, lo - pad, hi + pad);
    }
    return 1;
}

static double tr_x(const Axes *ax, double v) { return ax->xlog ? log10(v) : v; }
static double tr_y(const Axes *ax, double v) { return ax->ylog ? log10(v) : v; }

double axes_px_x(const Axes *ax, double x) {
    if (ax->xlog && !(x > 0)) return NAN;
    double a = tr_x(ax, ax->xmin), b = tr_x(ax, ax->xmax);
    return (double)ax->x0 + (tr_x(ax, x) - a) / (b - a) * (double)(ax->x1 - ax->x0);
}

double axes_px_y(const Axes *ax, double y) {
    if (ax->ylog && !(y > 0)) return NAN;
    double a = tr_y(ax, ax->ymin), b = tr_y(ax, ax->ymax);
    return (double)ax->y1 - (tr_y(ax, y) - a) / (b - a) * (double)(ax->y1 - ax->y0);
}

double nice_step(double range, int n) {
    if (!(range > 0) || !isfinite(range) || n < 1) return 1;
    double raw = range / n;
    double mag = pow(10.0, floor(log10(raw)));
    double f = raw / mag;
    double nf = f < 1.5 ? 1 : (f < 3.5 ? 2 : (f < 7.5 ? 5 : 10));
    return nf * mag;
}

void format_tick(double v, double step, char *buf, size_t n) {
    double a = fabs(v);
    if (a < 1e-12 * (step > 0 ? step : 1)) {
        snprintf(buf, n, "0");
        return;
    }
    if (a >= 1e6) {
        snprintf(buf, n, "%gM", v / 1e6);
    } else if (a >= 1e4) {
        snprintf(buf, n, "%gk", v / 1e3);
    } else if (a < 1e-3) {
        snprintf(buf, n, "%.3g", v);
    } else {
        int d = step > 0 ? (int)ceil(-log10(step) - 1e-9) : 2;
        if (d < 0) d = 0;
        if (d > 6) d = 6;
        snprintf(buf, n, "%.*f", d, v);
    }
}

// ticks: fills up to max values; *step gets the linear step (0 for log axes)
static int axis_ticks(double lo, double hi, int logscale, int target, double *out, int max, double *step,
                      int *major) {
    int n = 0;
    *step = 0;
    if (!isfinite(lo) || !isfinite(hi) || !(hi > lo)) return 0;
    if (logscale && !(lo > 0)) return 0;
    if (!logscale) {
        double s = nice_step(hi - lo, target);
        *step = s;
        for (double v = ceil(lo / s - 1e-9) * s; v <= hi + 1e-9 * s && n < max; v += s) {
            major[n] = 1;
            out[n++] = fabs(v) < 1e-12 * s ? 0 : v;
        }
        return n;
    }
    if (logscale == 2) {  // powers of two (0.125 ... 8), for ratios
        double e0 = ceil(log2(lo) - 1e-9), e1 = floor(log2(hi) + 1e-9);
        int every = (int)((e1 - e0) / 8) + 1;
        for (double k = e0; k <= e1 && n < max; k += every) {
            major[n] = 1;
            out[n++] = pow(2.0, k);
        }
        return n;
    }
    double l0 = floor(log10(lo)), l1 = ceil(log10(hi));
    if (l0 < -300 || l1 > 300) return 0;
    int k0 = (int)l0, k1 = (int)l1;
    int decades = k1 - k0;
    int every = decades > 8 ? (decades + 7) / 8 : 1;
    for (int k = k0; k <= k1 && n < max; k++) {
        for (int m = 1; m <= 9 && n < max; m++) {
            double v = (double)m * pow(10.0, k);
            if (v < lo * (1 - 1e-9) || v > hi * (1 + 1e-9)) continue;
            int is_major = (m == 1 && (k - k0) % every == 0) || (decades <= 3 && (m == 2 || m == 5));
            if (m > 1 && decades > 4) continue;  // no minor ticks on long log axes
            major[n] = is_major;
            out[n++] = v;
        }
    }
    int n_major = 0;
    for (int i = 0; i < n; i++) n_major += major[i];
    if (n_major < 2) {  // less than a decade: plain nice steps inside the range
        double s = nice_step(hi - lo, target);
        *step = s;
        n = 0;
        for (double v = ceil(lo / s - 1e-9) * s; v <= hi + 1e-9 * s && n < max; v += s) {
            if (v <= 0) continue;
            major[n] = 1;
            out[n++] = v;
        }
    }
    return n;
}

void axes_draw(const Axes *ax, const char *title, const char *xlabel, const char *ylabel) {
    Canvas *cv = ax->cv;
    double t[64];
    int major[64];
    double step;
    char buf[64];
    // y grid and ticks
    int ny = ax->no_yticks ? 0 : axis_ticks(ax->ymin, ax->ymax, ax->ylog, ((ax->y1 - ax->y0) / 55) + 1, t, 64, &step, major);
    for (int i = 0; i < ny; i++) {
        float py = (float)axes_px_y(ax, t[i]);
        Rgb g = major[i] ? RGB_GRID : (Rgb){242, 242, 242};
        canvas_line(cv, (float)ax->x0, py, (float)ax->x1, py, g, 1.0f);
        if (!major[i]) continue;
        canvas_line(cv, (float)ax->x0 - 5, py, (float)ax->x0, py, RGB_AXIS, 1.0f);
        if (ax->ylog)
            snprintf(buf, sizeof buf, "%g", t[i]);
        else
            format_tick(t[i], step, buf, sizeof buf);
        canvas_text(cv, (float)ax->x0 - 8, py, buf, FONT_TICK, RGB_TEXT, TEXT_RIGHT, TEXT_MIDDLE, 0);
    }
    // x grid and ticks
    int nx = ax->no_xticks ? 0 : axis_ticks(ax->xmin, ax->xmax, ax->xlog, ((ax->x1 - ax->x0) / 90) + 1, t, 64, &step, major);
    for (int i = 0; i < nx; i++) {
        float px = (float)axes_px_x(ax, t[i]);
        canvas_line(cv, px, (float)ax->y0, px, (float)ax->y1, major[i] ? RGB_GRID : (Rgb){242, 242, 242}, 1.0f);
        if (!major[i]) continue;
        canvas_line(cv, px, (float)ax->y1, px, (float)ax->y1 + 5, RGB_AXIS, 1.0f);
        if (ax->xlog)
            snprintf(buf, sizeof buf, "%g", t[i]);
        else
            format_tick(t[i], step, buf, sizeof buf);
        canvas_text(cv, px, (float)ax->y1 + 8, buf, FONT_TICK, RGB_TEXT, TEXT_CENTER, TEXT_TOP, 0);
    }
    canvas_rect_outline(cv, ax->x0 - 1, ax->y0 - 1, ax->x1 + 1, ax->y1 + 1, RGB_AXIS, 1);
    if (title)
        canvas_text(cv, (float)(ax->x0 + ax->x1) / 2, (float)ax->y0 - 10, title, FONT_TITLE, RGB_TEXT, TEXT_CENTER,
                    TEXT_BOTTOM, TEXT_BOLD);
    if (xlabel)
        canvas_text(cv, (float)(ax->x0 + ax->x1) / 2, (float)ax->y1 + 27, xlabel, FONT_LABEL, RGB_TEXT, TEXT_CENTER,
                    TEXT_TOP, 0);
    if (ylabel)
        canvas_text(cv, (float)ax->x0 - 72, (float)(ax->y0 + ax->y1) / 2, ylabel, FONT_LABEL, RGB_TEXT, TEXT_LEFT,
                    TEXT_MIDDLE, TEXT_ROT90);
}

void axes_message(const Axes *ax, const char *msg) {
    canvas_text(ax->cv, (float)(ax->x0 + ax->x1) / 2, (float)(ax->y0 + ax->y1) / 2, msg, 20.0f, (Rgb){120, 120, 120},
                TEXT_CENTER, TEXT_MIDDLE, TEXT_BOLD);
}

static float clamp_py(const Axes *ax, double py) {
    if (py < ax->y0 - 1) py = ax->y0 - 1;
    if (py > ax->y1 + 1) py = ax->y1 + 1;
    return (float)py;
}

static int y_ok(const Axes *ax, double y) { return isfinite(y) && (!ax->ylog || y > 0); }

void axes_series(const Axes *ax, const double *x, const double *y, int n, Rgb c, float width) {
    int W = ax->x1 - ax->x0;
    if (n <= 0 || W <= 0) return;
    if (n <= 2 * W) {
        int have = 0;
        float lx = 0, ly = 0;
        for (int i = 0; i < n; i++) {
            if (!isfinite(x[i]) || !y_ok(ax, y[i])) {
                have = 0;
                continue;
            }
            float px = (float)axes_px_x(ax, x[i]), py = clamp_py(ax, axes_px_y(ax, y[i]));
            if (have)
                canvas_line(ax->cv, lx, ly, px, py, c, width);
            else if (i + 1 >= n || !isfinite(y[i + 1]))  // isolated point: a dot
                canvas_line(ax->cv, px, py, px, py, c, width + 2);
            lx = px;
            ly = py;
            have = 1;
        }
        return;
    }
    // one column per pixel: min, max, mean (in the axis' transform)
    double *lo = malloc(sizeof(double) * (size_t)W * 3);
    int *cnt = calloc((size_t)W, sizeof(int));
    if (!lo || !cnt) {
        free(lo);
        free(cnt);
        return;
    }
    double *hi = lo + W, *sum = lo + 2 * W;
    for (int i = 0; i < W; i++) {
        lo[i] = DBL_MAX;
        hi[i] = -DBL_MAX;
        sum[i] = 0;
    }
    for (int i = 0; i < n; i++) {
        if (!isfinite(x[i]) || !y_ok(ax, y[i])) continue;
        double pxv = axes_px_x(ax, x[i]);
        if (!(pxv > -1e9 && pxv < 1e9)) continue;
        int col = (int)floor(pxv) - ax->x0;
        if (col < 0 || col >= W) continue;
        double v = ax->ylog ? log10(y[i]) : y[i];
        if (v < lo[col]) lo[col] = v;
        if (v > hi[col]) hi[col] = v;
        sum[col] += v;
        cnt[col]++;
    }
    for (int col = 0; col < W; col++) {
        if (!cnt[col]) continue;
        double a = ax->ylog ? pow(10.0, lo[col]) : lo[col], b = ax->ylog ? pow(10.0, hi[col]) : hi[col];
        int ya = (int)clamp_py(ax, axes_px_y(ax, a)), yb = (int)clamp_py(ax, axes_px_y(ax, b));
        canvas_fill_rect_alpha(ax->cv, ax->x0 + col, yb, ax->x0 + col + 1, ya + 1, c, 0.22f);
    }
    int have = 0;
    float lx = 0, ly = 0;
    for (int col = 0; col < W; col++) {
        if (!cnt[col]) continue;  // gaps in x just connect (a NaN run inside one column is invisible)
        double m = sum[col] / cnt[col];
        if (ax->ylog) m = pow(10.0, m);
        float px = (float)(ax->x0 + col) + 0.5f, py = clamp_py(ax, axes_px_y(ax, m));
        if (have) canvas_line(ax->cv, lx, ly, px, py, c, width);
        lx = px;
        ly = py;
        have = 1;
    }
    free(lo);
    free(cnt);
}

void axes_hline(const Axes *ax, double y, Rgb c, float width, int dashed) {
    if (!y_ok(ax, y)) return;
    float py = (float)axes_px_y(ax, y);
    if (py < ax->y0 || py > ax->y1) return;
    if (dashed)
        canvas_dashed_line(ax->cv, (float)ax->x0, py, (float)ax->x1, py, c, width, 8, 5);
    else
        canvas_line(ax->cv, (float)ax->x0, py, (float)ax->x1, py, c, width);
}

void axes_vline(const Axes *ax, double x, Rgb c, float width, int dashed, const char *label) {
    if (!isfinite(x)) return;
    float px = (float)axes_px_x(ax, x);
    if (!(px >= ax->x0 && px <= ax->x1)) return;
    if (dashed)
        canvas_dashed_line(ax->cv, px, (float)ax->y0, px, (float)ax->y1, c, width, 6, 4);
    else
        canvas_line(ax->cv, px, (float)ax->y0, px, (float)ax->y1, c, width);
    if (label) {
        int right = px > (ax->x0 + ax->x1) / 2;
        float tw = text_width(label, 11.0f, TEXT_BOLD);
        int bx0 = right ? (int)(px - 6 - tw) : (int)(px + 2);
        canvas_fill_rect_alpha(ax->cv, bx0, ax->y0 + 3, bx0 + (int)tw + 5, ax->y0 + 19, RGB_WHITE, 0.8f);
        canvas_text(ax->cv, right ? px - 4 : px + 4, (float)ax->y0 + 4, label, 11.0f, c, right ? TEXT_RIGHT : TEXT_LEFT,
                    TEXT_TOP, TEXT_BOLD);
    }
}

void axes_legend(const Axes *ax, const char *const *names, const Rgb *colors, const int *styles, int n, int left) {
    if (n <= 0) return;
    const float fs = 12.0f;
    int shown = n > 16 ? 16 : n;
    float wmax = 0;
    for (int i = 0; i < shown; i++) {
        float w = text_width(names[i], fs, 0);
        if (w > wmax) wmax = w;
    }
    int rowh = 17, bw = (int)wmax + 44, bh = rowh * shown + 10 + (n > shown ? rowh : 0);
    int bx = left ? ax->x0 + 8 : ax->x1 - bw - 8, by = ax->y0 + 8;
    canvas_fill_rect_alpha(ax->cv, bx, by, bx + bw, by + bh, RGB_WHITE, 0.85f);
    canvas_rect_outline(ax->cv, bx, by, bx + bw, by + bh, (Rgb){200, 200, 200}, 1);
    for (int i = 0; i < shown; i++) {
        float cy = (float)by + 5 + rowh * i + rowh / 2.0f;
        int st = styles ? styles[i] : 0;
        if (st == 2)
            canvas_fill_rect(ax->cv, bx + 10, (int)cy - 5, bx + 26, (int)cy + 6, colors[i]);
        else if (st == 1)
            canvas_dashed_line(ax->cv, (float)bx + 8, cy, (float)bx + 30, cy, colors[i], 2.0f, 5, 3);
        else
            canvas_line(ax->cv, (float)bx + 8, cy, (float)bx + 30, cy, colors[i], 2.5f);
        canvas_text(ax->cv, (float)bx + 36, cy, names[i], fs, RGB_TEXT, TEXT_LEFT, TEXT_MIDDLE, 0);
    }
    if (n > shown) {
        char buf[48];
        snprintf(buf, sizeof buf, "... and %d more", n - shown);
        canvas_text(ax->cv, (float)bx + 36, (float)by + 5 + rowh * shown + rowh / 2.0f, buf, fs, RGB_TEXT, TEXT_LEFT,
                    TEXT_MIDDLE, 0);
    }
}

void heatmap_cell_rect(const Axes *ax, int rows, int cols, int r, int c, int *x0, int *y0, int *x1, int *y1) {
    int W = ax->x1 - ax->x0, H = ax->y1 - ax->y0;
    *x0 = ax->x0 + (int)((long)W * c / cols);
    *x1 = ax->x0 + (int)((long)W * (c + 1) / cols);
    *y0 = ax->y0 + (int)((long)H * r / rows);
    *y1 = ax->y0 + (int)((long)H * (r + 1) / rows);
}

Rgb heatmap_color(double v, double vmin, double vmax, int logscale, ColorMap cmap) {
    if (!isfinite(v)) return RGB_NODATA;
    double t;
    if (logscale) {
        if (!(v > 0)) v = vmin;
        t = (log10(v) - log10(vmin)) / (log10(vmax) - log10(vmin));
    } else {
        t = (v - vmin) / (vmax - vmin);
    }
    if (!isfinite(t)) t = 0.5;
    return cmap((float)t);
}

void heatmap_draw(const Axes *ax, const float *v, int rows, int cols, double vmin, double vmax, int logscale,
                  ColorMap cmap, const char *fmt) {
    if (rows <= 0 || cols <= 0) return;
    int cw = (ax->x1 - ax->x0) / cols, ch = (ax->y1 - ax->y0) / rows;
    float fs = ch * 0.42f < 13.0f ? ch * 0.42f : 13.0f;
    int annotate = fmt && cw >= 34 && ch >= 16;
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < cols; c++) {
            int x0, y0, x1, y1;
            heatmap_cell_rect(ax, rows, cols, r, c, &x0, &y0, &x1, &y1);
            double val = v[(size_t)r * cols + c];
            Rgb col = heatmap_color(val, vmin, vmax, logscale, cmap);
            canvas_fill_rect(ax->cv, x0, y0, x1, y1, col);
            if (annotate && isfinite(val)) {
                char buf[32];
                snprintf(buf, sizeof buf, fmt, val);
                int lum = (299 * col.r + 587 * col.g + 114 * col.b) / 1000;
                Rgb tc = lum > 140 ? RGB_BLACK : RGB_WHITE;
                if (text_width(buf, fs, 0) < (float)(x1 - x0) - 2)
                    canvas_text(ax->cv, (float)(x0 + x1) / 2, (float)(y0 + y1) / 2, buf, fs, tc, TEXT_CENTER,
                                TEXT_MIDDLE, 0);
            }
        }
    }
}

void heatmap_row_labels(const Axes *ax, int rows, const char *const *labels, int every) {
    if (every < 1) every = 1;
    for (int r = 0; r < rows; r += every) {
        int x0, y0, x1, y1;
        heatmap_cell_rect(ax, rows, 1, r, 0, &x0, &y0, &x1, &y1);
        char buf[32];
        const char *s = labels ? labels[r] : buf;
        if (!labels) snprintf(buf, sizeof buf, "%d", r);
        canvas_text(ax->cv, (float)ax->x0 - 6, (float)(y0 + y1) / 2, s, FONT_TICK, RGB_TEXT, TEXT_RIGHT, TEXT_MIDDLE, 0);
    }
}

void heatmap_col_labels(const Axes *ax, int cols, const char *const *labels, int every) {
    if (every < 1) every = 1;
    for (int c = 0; c < cols; c += every) {
        int x0, y0, x1, y1;
        heatmap_cell_rect(ax, 1, cols, 0, c, &x0, &y0, &x1, &y1);
        char buf[32];
        const char *s = labels ? labels[c] : buf;
        if (!labels) snprintf(buf, sizeof buf, "%d", c);
        canvas_text(ax->cv, (float)(x0 + x1) / 2, (float)ax->y1 + 6, s, FONT_TICK, RGB_TEXT, TEXT_CENTER, TEXT_TOP, 0);
    }
}

void colorbar_draw(Canvas *cv, int x, int y0, int w, int y1, double vmin, double vmax, int logscale, ColorMap cmap,
                   const char *label) {
    int H = y1 - y0;
    if (H <= 2) return;
    for (int y = y0; y < y1; y++) {
        float t = (float)(y1 - 1 - y) / (float)(H - 1);
        canvas_fill_rect(cv, x, y, x + w, y + 1, cmap(t));
    }
    canvas_rect_outline(cv, x - 1, y0 - 1, x + w + 1, y1 + 1, RGB_AXIS, 1);
    Axes ax = {0};
    ax.cv = cv;
    ax.x0 = x;
    ax.x1 = x + w;
    ax.y0 = y0;
    ax.y1 = y1;
    ax.ylog = logscale;
    ax.ymin = vmin;
    ax.ymax = vmax;
    double t[64], step;
    int major[64];
    int n = axis_ticks(vmin, vmax, logscale, H / 80 + 1, t, 64, &step, major);
    for (int i = 0; i < n; i++) {
        if (!major[i]) continue;
        float py = (float)axes_px_y(&ax, t[i]);
        char buf[32];
        if (logscale)
            snprintf(buf, sizeof buf, "%g", t[i]);
        else
            format_tick(t[i], step, buf, sizeof buf);
        canvas_line(cv, (float)(x + w), py, (float)(x + w + 4), py, RGB_AXIS, 1.0f);
        canvas_text(cv, (float)(x + w + 7), py, buf, FONT_TICK, RGB_TEXT, TEXT_LEFT, TEXT_MIDDLE, 0);
    }
    if (label)
        canvas_text(cv, (float)(x + w + 50), (float)(y0 + y1) / 2, label, FONT_LABEL - 1, RGB_TEXT, TEXT_LEFT,
                    TEXT_MIDDLE, TEXT_ROT90);
}
