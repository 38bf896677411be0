// A small RGB raster canvas for charts: filled and outlined rectangles, anti-aliased lines,
// anti-aliased text through stb_truetype with DejaVu Sans, perceptual colour maps
// (viridis, a blue-white-red diverging map) and PNG output through stb_image_write
// (written to a temporary file and renamed: a viewer never sees a half-written PNG).
#ifndef MOE_PLOTS_CANVAS_H
#define MOE_PLOTS_CANVAS_H

#include <stdint.h>

#include "common/util.h"

typedef struct {
    uint8_t r, g, b;
} Rgb;

typedef struct {
    int w, h;
    uint8_t *px;  // (h, w, 3) row-major RGB
} Canvas;

#define RGB_WHITE ((Rgb){255, 255, 255})
#define RGB_BLACK ((Rgb){0, 0, 0})
#define RGB_TEXT ((Rgb){34, 34, 34})
#define RGB_GRID ((Rgb){228, 228, 228})
#define RGB_AXIS ((Rgb){90, 90, 90})
#define RGB_MARK ((Rgb){230, 20, 20})   // collapse marks and events
#define RGB_NODATA ((Rgb){200, 200, 200})

int canvas_init(Canvas *cv, int w, int h, Rgb bg, MoeErr *err);
void canvas_free(Canvas *cv);
Rgb canvas_get(const Canvas *cv, int x, int y);
// blend colour c with coverage a in [0,1] into pixel (x, y); out-of-range pixels are ignored
void canvas_blend(Canvas *cv, int x, int y, Rgb c, float a);
// fill [x0, x1) x [y0, y1) (clipped)
void canvas_fill_rect(Canvas *cv, int x0, int y0, int x1, int y1, Rgb c);
void canvas_fill_rect_alpha(Canvas *cv, int x0, int y0, int x1, int y1, Rgb c, float a);
// outline of [x0, x1) x [y0, y1), `t` pixels thick, drawn inside the rectangle
void canvas_rect_outline(Canvas *cv, int x0, int y0, int x1, int y1, Rgb c, int t);
// anti-aliased line segment of width `width` pixels (pixel centres are at integer + 0.5)
void canvas_line(Canvas *cv, float x0, float y0, float x1, float y1, Rgb c, float width);
// dashed version: `dash` pixels on, `gap` pixels off
void canvas_dashed_line(Canvas *cv, float x0, float y0, float x1, float y1, Rgb c, float width, float dash,
                        float gap);
// PNG via stb_image_write, written with write_file_replace()
int canvas_write_png(const Canvas *cv, const char *path, MoeErr *err);
// Write path.tmp and rename it over path: readers (a browser reloading report.html) never see
// a half-written file. No fsync: reports are regenerated from the logs at any time, and the
// trainer refreshes them often (fsync would cost more than the drawing).
int write_file_replace(const char *path, const void *data, size_t n, MoeErr *err);

// ---------------------------------------------------------------------------------------
// Text (DejaVu Sans, anti-aliased). `px` is the font's pixel height. Alignment: the anchor
// (x, y) is at the left/centre/right of the text and at its top/middle/baseline/bottom.
// Rotated text (TEXT_ROT90) reads bottom to top (y-axis labels); then the anchor applies to
// the rotated box. Text is UTF-8. Functions return -1 only when no font can be loaded.
enum { TEXT_LEFT = 0, TEXT_CENTER = 1, TEXT_RIGHT = 2 };
enum { TEXT_TOP = 0, TEXT_MIDDLE = 1, TEXT_BOTTOM = 2 };
enum { TEXT_BOLD = 1, TEXT_ROT90 = 2 };

int font_init(MoeErr *err);  // loads the fonts once (called lazily by the text functions)
float text_width(const char *s, float px, int flags);
int canvas_text(Canvas *cv, float x, float y, const char *s, float px, Rgb c, int halign, int valign, int flags);

// ---------------------------------------------------------------------------------------
// Colour maps. t outside [0, 1] is clamped; NaN gives RGB_NODATA.
Rgb cmap_viridis(float t);
// blue (t = 0) - white (t = 0.5) - red (t = 1), ColorBrewer RdBu reversed
Rgb cmap_diverging(float t);
// i-th of n categorical line colours (tab10 for n <= 10, viridis samples beyond)
Rgb palette_color(int i, int n);
// colour distance (max channel difference), for tests
int rgb_dist(Rgb a, Rgb b);

#endif
