// Chart building blocks on a Canvas: axes with nice ticks (linear or log), line series
// (downsampled to one min/mean/max column per pixel when there are more points than pixels),
// reference lines, legends, heatmaps and colour bars. The data -> pixel mapping is public
// (axes_px_x / axes_px_y / heatmap_cell_rect) so tests can find where data was drawn.
#ifndef MOE_PLOTS_CHART_H
#define MOE_PLOTS_CHART_H

#include "plots/canvas.h"

typedef struct {
    Canvas *cv;
    int x0, y0, x1, y1;  // plot area in pixels: [x0, x1) x [y0, y1)
    double xmin, xmax, ymin, ymax;
    int xlog, ylog;  // log axes (limits must be > 0): 1 ticks at 1, 2, 5 x 10^k; 2 ticks at powers of two
    int no_xticks, no_yticks;  // axes_draw leaves out that axis' grid and tick labels
} Axes;

// Plot area inside the box (bx, by, bw, bh) leaving room for title, tick labels and axis labels.
Axes axes_in_box(Canvas *cv, int bx, int by, int bw, int bh);
// Fit the limits to data (NaN/inf skipped; y limits padded 5 %; log axes ignore values <= 0).
// Returns 0 if no finite value was found (limits are then left as they were).
int axes_fit_y(Axes *ax, const double *y, int n);
void axes_set_x(Axes *ax, double xmin, double xmax);
void axes_set_y(Axes *ax, double ymin, double ymax);

// data -> pixel (continuous pixel coordinates; pixel centres at integer + 0.5)
double axes_px_x(const Axes *ax, double x);
double axes_px_y(const Axes *ax, double y);

// Background grid, frame, ticks with values, title above, x label below, y label rotated.
void axes_draw(const Axes *ax, const char *title, const char *xlabel, const char *ylabel);
// "no data" (or another message) in the middle of the plot area
void axes_message(const Axes *ax, const char *msg);

// Polyline through (x[i], y[i]); NaN points break the line. With more points than plot
// pixels, each pixel column shows a translucent min..max band and a line through the means.
void axes_series(const Axes *ax, const double *x, const double *y, int n, Rgb c, float width);
void axes_hline(const Axes *ax, double y, Rgb c, float width, int dashed);
void axes_vline(const Axes *ax, double x, Rgb c, float width, int dashed, const char *label);

// Legend box in the top-right corner of the plot area (or top-left with left = 1).
// styles[i]: 0 solid line, 1 dashed line, 2 filled square (NULL: all solid)
void axes_legend(const Axes *ax, const char *const *names, const Rgb *colors, const int *styles, int n, int left);

// Heatmap of v (rows, cols) filling the plot area: row 0 at the top. Values mapped to t =
// (v - vmin)/(vmax - vmin) (or of log10 when logscale != 0) through cmap. NaN cells grey.
// colorbar_draw's logscale: 0 linear, 1 log with 1-2-5 ticks, 2 log with powers-of-two ticks.
// annotate: write each value in its cell when cells are large enough (format fmt, e.g. "%.2f").
typedef Rgb (*ColorMap)(float);
void heatmap_draw(const Axes *ax, const float *v, int rows, int cols, double vmin, double vmax, int logscale,
                  ColorMap cmap, const char *fmt);
void heatmap_cell_rect(const Axes *ax, int rows, int cols, int r, int c, int *x0, int *y0, int *x1, int *y1);
// colour for value v exactly as heatmap_draw colours it
Rgb heatmap_color(double v, double vmin, double vmax, int logscale, ColorMap cmap);
// category labels along the axes of a heatmap (NULL labels: numbers 0..n-1); every `every`th
void heatmap_row_labels(const Axes *ax, int rows, const char *const *labels, int every);
void heatmap_col_labels(const Axes *ax, int cols, const char *const *labels, int every);
// vertical colour bar at (x, y0..y1) with width w and ticks labelled on its right
void colorbar_draw(Canvas *cv, int x, int y0, int w, int y1, double vmin, double vmax, int logscale, ColorMap cmap,
                   const char *label);

// Nice tick step for a range split into about n intervals (1, 2, 5 x 10^k).
double nice_step(double range, int n);
// Format a tick value compactly ("0.001", "2.5k", "1e-05").
void format_tick(double v, double step, char *buf, size_t n);

#endif
