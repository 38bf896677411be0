// Raster canvas, anti-aliased lines and text, colour maps, PNG output. The only file of the
// project that compiles the stb_image_write and stb_truetype implementations (static, so
// they cannot clash with another module's copy).
#include "plots/canvas.h"

#include <errno.h>
#include <math.h>
#include <zlib.h>

// stb_image_write: compress with zlib (faster and smaller than stb's own deflate)
static unsigned char *plots_zlib_compress(unsigned char *data, int data_len, int *out_len, int quality) {
    (void)quality;
    uLongf cap = compressBound((uLong)data_len);
    unsigned char *out = malloc(cap);
    if (!out) return NULL;
    if (compress2(out, &cap, data, (uLong)data_len, 2) != Z_OK) {
        free(out);
        return NULL;
    }
    *out_len = (int)cap;
    return out;
}

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#define STBIW_ZLIB_COMPRESS plots_zlib_compress
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb/stb_image_write.h>
#define STBTT_STATIC
#define STB_TRUETYPE_IMPLEMENTATION
#include <stb/stb_truetype.h>
#pragma GCC diagnostic pop

int canvas_init(Canvas *cv, int w, int h, Rgb bg, MoeErr *err) {
    cv->w = cv->h = 0;
    cv->px = NULL;
    if (w <= 0 || h <= 0 || w > 16384 || h > 16384) return moe_err_set(err, "canvas: bad size %dx%d", w, h);
    cv->px = malloc((size_t)w * (size_t)h * 3);
    if (!cv->px) return moe_err_set(err, "canvas: out of memory for %dx%d", w, h);
    cv->w = w;
    cv->h = h;
    for (size_t i = 0; i < (size_t)w * (size_t)h; i++) {
        cv->px[3 * i + 0] = bg.r;
        cv->px[3 * i + 1] = bg.g;
        cv->px[3 * i + 2] = bg.b;
    }
    return 0;
}

void canvas_free(Canvas *cv) {
    free(cv->px);
    cv->px = NULL;
    cv->w = cv->h = 0;
}

Rgb canvas_get(const Canvas *cv, int x, int y) {
    if (x < 0 || y < 0 || x >= cv->w || y >= cv->h) return RGB_BLACK;
    const uint8_t *p = cv->px + 3 * ((size_t)y * (size_t)cv->w + (size_t)x);
    return (Rgb){p[0], p[1], p[2]};
}

void canvas_blend(Canvas *cv, int x, int y, Rgb c, float a) {
    if (x < 0 || y < 0 || x >= cv->w || y >= cv->h || !(a > 0.0f)) return;
    if (a > 1.0f) a = 1.0f;
    uint8_t *p = cv->px + 3 * ((size_t)y * (size_t)cv->w + (size_t)x);
    p[0] = (uint8_t)lrintf(p[0] + a * ((float)c.r - p[0]));
    p[1] = (uint8_t)lrintf(p[1] + a * ((float)c.g - p[1]));
    p[2] = (uint8_t)lrintf(p[2] + a * ((float)c.b - p[2]));
}

static void clip_rect(const Canvas *cv, int *x0, int *y0, int *x1, int *y1) {
    if (*x0 < 0) *x0 = 0;
    if (*y0 < 0) *y0 = 0;
    if (*x1 > cv->w) *x1 = cv->w;
    if (*y1 > cv->h) *y1 = cv->h;
}

void canvas_fill_rect(Canvas *cv, int x0, int y0, int x1, int y1, Rgb c) {
    clip_rect(cv, &x0, &y0, &x1, &y1);
    for (int y = y0; y < y1; y++) {
        uint8_t *p = cv->px + 3 * ((size_t)y * (size_t)cv->w + (size_t)x0);
        for (int x = x0; x < x1; x++, p += 3) {
            p[0] = c.r;
            p[1] = c.g;
            p[2] = c.b;
        }
    }
}

void canvas_fill_rect_alpha(Canvas *cv, int x0, int y0, int x1, int y1, Rgb c, float a) {
    clip_rect(cv, &x0, &y0, &x1, &y1);
    for (int y = y0; y < y1; y++)
        for (int x = x0; x < x1; x++) canvas_blend(cv, x, y, c, a);
}

void canvas_rect_outline(Canvas *cv, int x0, int y0, int x1, int y1, Rgb c, int t) {
    canvas_fill_rect(cv, x0, y0, x1, y0 + t, c);
    canvas_fill_rect(cv, x0, y1 - t, x1, y1, c);
    canvas_fill_rect(cv, x0, y0, x0 + t, y1, c);
    canvas_fill_rect(cv, x1 - t, y0, x1, y1, c);
}

// Coverage from the distance of each pixel centre to the segment: a capsule of radius w/2
// with a one-pixel linear ramp at its edge.
void canvas_line(Canvas *cv, float x0, float y0, float x1, float y1, Rgb c, float width) {
    if (!isfinite(x0) || !isfinite(y0) || !isfinite(x1) || !isfinite(y1)) return;
    float r = 0.5f * width;
    // clip absurd coordinates (points far outside the canvas) to keep the loop bounded
    const float lim = 4.0f * (float)(cv->w + cv->h);
    if (fabsf(x0) > lim || fabsf(x1) > lim || fabsf(y0) > lim || fabsf(y1) > lim) return;
    int bx0 = (int)floorf(fminf(x0, x1) - r - 1), bx1 = (int)ceilf(fmaxf(x0, x1) + r + 1);
    int by0 = (int)floorf(fminf(y0, y1) - r - 1), by1 = (int)ceilf(fmaxf(y0, y1) + r + 1);
    clip_rect(cv, &bx0, &by0, &bx1, &by1);
    float dx = x1 - x0, dy = y1 - y0, len2 = dx * dx + dy * dy;
    for (int y = by0; y < by1; y++) {
        for (int x = bx0; x < bx1; x++) {
            float px = (float)x + 0.5f, py = (float)y + 0.5f;
            float t = len2 > 0 ? ((px - x0) * dx + (py - y0) * dy) / len2 : 0.0f;
            if (t < 0) t = 0;
            if (t > 1) t = 1;
            float ex = px - (x0 + t * dx), ey = py - (y0 + t * dy);
            float d = sqrtf(ex * ex + ey * ey);
            float a = r + 0.5f - d;
            if (a > 0) canvas_blend(cv, x, y, c, a);
        }
    }
}

void canvas_dashed_line(Canvas *cv, float x0, float y0, float x1, float y1, Rgb c, float width, float dash,
                        float gap) {
    float dx = x1 - x0, dy = y1 - y0, len = sqrtf(dx * dx + dy * dy);
    if (!(len > 0) || !(dash > 0) || gap < 0) {
        canvas_line(cv, x0, y0, x1, y1, c, width);
        return;
    }
    for (float s = 0; s < len; s += dash + gap) {
        float e = fminf(s + dash, len);
        canvas_line(cv, x0 + dx * s / len, y0 + dy * s / len, x0 + dx * e / len, y0 + dy * e / len, c, width);
    }
}

typedef struct {
    unsigned char *data;
    size_t n, cap;
    int failed;
} MemBuf;

static void membuf_write(void *ctx, void *data, int size) {
    MemBuf *m = ctx;
    if (m->failed || size <= 0) return;
    if (m->n + (size_t)size > m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 65536;
        while (cap < m->n + (size_t)size) cap *= 2;
        unsigned char *p = realloc(m->data, cap);
        if (!p) {
            m->failed = 1;
            return;
        }
        m->data = p;
        m->cap = cap;
    }
    memcpy(m->data + m->n, data, (size_t)size);
    m->n += (size_t)size;
}

int write_file_replace(const char *path, const void *data, size_t n, MoeErr *err) {
    char tmp[4200];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) return moe_err_set(err, "%s: path too long", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return moe_err_set(err, "%s: cannot write (%s)", tmp, strerror(errno));
    size_t put = n ? fwrite(data, 1, n, f) : 0;
    int bad = put != n;
    if (fclose(f) != 0) bad = 1;
    if (bad) {
        remove(tmp);
        return moe_err_set(err, "%s: write failed (disk full?)", tmp);
    }
    if (rename(tmp, path) != 0) {
        int e = errno;
        remove(tmp);
        return moe_err_set(err, "%s: cannot rename into place (%s)", path, strerror(e));
    }
    return 0;
}

int canvas_write_png(const Canvas *cv, const char *path, MoeErr *err) {
    MemBuf m = {0};
    int ok = stbi_write_png_to_func(membuf_write, &m, cv->w, cv->h, 3, cv->px, cv->w * 3);
    if (!ok || m.failed) {
        free(m.data);
        return moe_err_set(err, "%s: PNG encoding failed", path);
    }
    int rc = write_file_replace(path, m.data, m.n, err);
    free(m.data);
    return rc;
}

// ---------------------------------------------------------------------------------------
// Fonts

static const char *const FONT_PATHS[2][3] = {
    {"/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf",
     "/usr/share/fonts/TTF/DejaVuSans.ttf"},
    {"/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", "/usr/share/fonts/dejavu/DejaVuSans-Bold.ttf",
     "/usr/share/fonts/TTF/DejaVuSans-Bold.ttf"},
};

typedef struct {
    unsigned char *bitmap;  // NULL: not rendered yet
    int w, h, xoff, yoff;
    float advance;
} Glyph;

#define GLYPH_SIZES 24
typedef struct {
    int loaded;
    char *data[2];
    stbtt_fontinfo info[2];
    int ascent[2], descent[2];
    // cache of ASCII glyphs for a few (font, pixel height) pairs
    int cache_px[GLYPH_SIZES], cache_font[GLYPH_SIZES], n_cache;
    Glyph cache[GLYPH_SIZES][128];
} FontState;

static FontState g_font;

int font_init(MoeErr *err) {
    if (g_font.loaded) return 0;
    for (int f = 0; f < 2; f++) {
        size_t n = 0;
        MoeErr e2;
        int ok = 0;
        for (int i = 0; i < 3 && !ok; i++) {
            if (read_file_all(FONT_PATHS[f][i], &g_font.data[f], &n, &e2) == 0) {
                if (stbtt_InitFont(&g_font.info[f], (unsigned char *)g_font.data[f],
                                   stbtt_GetFontOffsetForIndex((unsigned char *)g_font.data[f], 0))) {
                    ok = 1;
                } else {
                    free(g_font.data[f]);
                    g_font.data[f] = NULL;
                }
            }
        }
        if (!ok) {
            if (f == 1 && g_font.data[0]) {  // no bold face: use the regular one
                g_font.data[1] = NULL;
                g_font.info[1] = g_font.info[0];
            } else {
                return moe_err_set(err, "%s: cannot load the DejaVu Sans font (install fonts-dejavu-core)",
                                   FONT_PATHS[f][0]);
            }
        }
        int lg;
        stbtt_GetFontVMetrics(&g_font.info[f], &g_font.ascent[f], &g_font.descent[f], &lg);
    }
    g_font.loaded = 1;
    return 0;
}

static int utf8_next(const char **s) {
    const unsigned char *p = (const unsigned char *)*s;
    int c = p[0];
    int n = 1;
    if (c < 0x80) {
    } else if ((c & 0xE0) == 0xC0 && (p[1] & 0xC0) == 0x80) {
        c = ((c & 0x1F) << 6) | (p[1] & 0x3F);
        n = 2;
    } else if ((c & 0xF0) == 0xE0 && (p[1] & 0xC0) == 0x80 && (p[2] & 0xC0) == 0x80) {
        c = ((c & 0x0F) << 12) | ((p[1] & 0x3F) << 6) | (p[2] & 0x3F);
        n = 3;
    } else if ((c & 0xF8) == 0xF0 && (p[1] & 0xC0) == 0x80 && (p[2] & 0xC0) == 0x80 && (p[3] & 0xC0) == 0x80) {
        c = ((c & 0x07) << 18) | ((p[1] & 0x3F) << 12) | ((p[2] & 0x3F) << 6) | (p[3] & 0x3F);
        n = 4;
    } else {
        c = '?';
    }
    *s += n;
    return c;
}

static void glyph_render(int font, float scale, int cp, Glyph *g) {
    int adv, lsb;
    stbtt_GetCodepointHMetrics(&g_font.info[font], cp, &adv, &lsb);
    g->advance = (float)adv * scale;
    int x0, y0, x1, y1;
    stbtt_GetCodepointBitmapBox(&g_font.info[font], cp, scale, scale, &x0, &y0, &x1, &y1);
    g->w = x1 - x0;
    g->h = y1 - y0;
    g->xoff = x0;
    g->yoff = y0;
    g->bitmap = calloc((size_t)(g->w > 0 ? g->w : 1) * (size_t)(g->h > 0 ? g->h : 1), 1);
    if (g->bitmap && g->w > 0 && g->h > 0)
        stbtt_MakeCodepointBitmap(&g_font.info[font], g->bitmap, g->w, g->h, g->w, scale, scale, cp);
}

// returns a glyph (cached for ASCII); *tmp is set when the caller must free the bitmap
static const Glyph *glyph_get(int font, int px, int cp, Glyph *tmp, int *is_tmp) {
    float scale = stbtt_ScaleForPixelHeight(&g_font.info[font], (float)px);
    *is_tmp = 0;
    if (cp >= 32 && cp < 128) {
        int slot = -1;
        for (int i = 0; i < g_font.n_cache; i++)
            if (g_font.cache_px[i] == px && g_font.cache_font[i] == font) slot = i;
        if (slot < 0 && g_font.n_cache < GLYPH_SIZES) {
            slot = g_font.n_cache++;
            g_font.cache_px[slot] = px;
            g_font.cache_font[slot] = font;
        }
        if (slot >= 0) {
            Glyph *g = &g_font.cache[slot][cp];
            if (!g->bitmap) glyph_render(font, scale, cp, g);
            if (g->bitmap) return g;
        }
    }
    glyph_render(font, scale, cp, tmp);
    *is_tmp = 1;
    return tmp;
}

static int text_px(float px) {
    int p = (int)lrintf(px);
    return p < 4 ? 4 : (p > 200 ? 200 : p);
}

float text_width(const char *s, float px, int flags) {
    if (font_init(NULL) != 0 || !s) return 0;
    int font = (flags & TEXT_BOLD) ? 1 : 0;
    int ipx = text_px(px);
    float scale = stbtt_ScaleForPixelHeight(&g_font.info[font], (float)ipx);
    float w = 0;
    int prev = 0;
    while (*s) {
        int cp = utf8_next(&s);
        int adv, lsb;
        stbtt_GetCodepointHMetrics(&g_font.info[font], cp, &adv, &lsb);
        if (prev) w += scale * (float)stbtt_GetCodepointKernAdvance(&g_font.info[font], prev, cp);
        w += scale * (float)adv;
        prev = cp;
    }
    return w;
}

int canvas_text(Canvas *cv, float x, float y, const char *s, float px, Rgb c, int halign, int valign, int flags) {
    if (font_init(NULL) != 0) return -1;
    if (!s || !*s) return 0;
    int font = (flags & TEXT_BOLD) ? 1 : 0;
    int ipx = text_px(px);
    float scale = stbtt_ScaleForPixelHeight(&g_font.info[font], (float)ipx);
    int asc = (int)ceilf(scale * (float)g_font.ascent[font]);
    int desc = (int)ceilf(-scale * (float)g_font.descent[font]);
    int bw = (int)ceilf(text_width(s, px, flags)) + 4, bh = asc + desc + 2;
    unsigned char *buf = calloc((size_t)bw * (size_t)bh, 1);  // (bh, bw) coverage
    if (!buf) return -1;
    float pen = 1.0f;
    int prev = 0;
    for (const char *p = s; *p;) {
        int cp = utf8_next(&p);
        if (prev) pen += scale * (float)stbtt_GetCodepointKernAdvance(&g_font.info[font], prev, cp);
        Glyph tmp = {0};
        int is_tmp;
        const Glyph *g = glyph_get(font, ipx, cp, &tmp, &is_tmp);
        if (g->bitmap) {
            int ox = (int)lrintf(pen) + g->xoff, oy = 1 + asc + g->yoff;
            for (int gy = 0; gy < g->h; gy++) {
                int by = oy + gy;
                if (by < 0 || by >= bh) continue;
                for (int gx = 0; gx < g->w; gx++) {
                    int bx = ox + gx;
                    if (bx < 0 || bx >= bw) continue;
                    int v = buf[by * bw + bx] + g->bitmap[gy * g->w + gx];
                    buf[by * bw + bx] = (unsigned char)(v > 255 ? 255 : v);
                }
            }
        }
        pen += g->advance;
        prev = cp;
        if (is_tmp) free(tmp.bitmap);
    }
    // anchor: box of width bw, height bh (before rotation)
    int rot = (flags & TEXT_ROT90) != 0;
    float boxw = rot ? (float)bh : (float)bw, boxh = rot ? (float)bw : (float)bh;
    float left = halign == TEXT_CENTER ? x - boxw / 2 : (halign == TEXT_RIGHT ? x - boxw : x);
    float top = valign == TEXT_MIDDLE ? y - boxh / 2 : (valign == TEXT_BOTTOM ? y - boxh : y);
    int lx = (int)lrintf(left), ty = (int)lrintf(top);
    for (int by = 0; by < bh; by++) {
        for (int bx = 0; bx < bw; bx++) {
            unsigned char a = buf[by * bw + bx];
            if (!a) continue;
            if (!rot)
                canvas_blend(cv, lx + bx, ty + by, c, a / 255.0f);
            else  // rotate 90 degrees counter-clockwise: text reads bottom to top
                canvas_blend(cv, lx + by, ty + (bw - 1 - bx), c, a / 255.0f);
        }
    }
    free(buf);
    return 0;
}

// ---------------------------------------------------------------------------------------
// Colour maps

// matplotlib's viridis (van der Walt & Smith, CC0), entries 0, 16, ..., 240 and 255 of its
// 256-entry table; linear interpolation between them stays within ~1/255 of the full table.
static const float VIRIDIS_KNOTS[17][3] = {
    {0.267004f, 0.004874f, 0.329415f}, {0.282327f, 0.094955f, 0.417331f}, {0.278826f, 0.175490f, 0.483397f},
    {0.258965f, 0.251537f, 0.524736f}, {0.229739f, 0.322361f, 0.545706f}, {0.199430f, 0.387607f, 0.554642f},
    {0.172719f, 0.448791f, 0.557885f}, {0.149039f, 0.508051f, 0.557250f}, {0.127568f, 0.566949f, 0.550556f},
    {0.120638f, 0.625828f, 0.533488f}, {0.157851f, 0.683765f, 0.501686f}, {0.246070f, 0.738910f, 0.452024f},
    {0.369214f, 0.788888f, 0.382914f}, {0.515992f, 0.831158f, 0.294279f}, {0.678489f, 0.863742f, 0.189503f},
    {0.845561f, 0.887322f, 0.099702f}, {0.993248f, 0.906157f, 0.143936f},
};

Rgb cmap_viridis(float t) {
    if (isnan(t)) return RGB_NODATA;
    if (t < 0) t = 0;
    if (t > 1) t = 1;
    float idx = t * 255.0f;  // position in the 256-entry table
    int k = (int)(idx / 16.0f);
    if (k > 15) k = 15;
    float i0 = 16.0f * (float)k, i1 = k == 15 ? 255.0f : 16.0f * (float)(k + 1);
    float f = (idx - i0) / (i1 - i0);
    if (f > 1) f = 1;
    Rgb c;
    c.r = (uint8_t)lrintf(255.0f * (VIRIDIS_KNOTS[k][0] + f * (VIRIDIS_KNOTS[k + 1][0] - VIRIDIS_KNOTS[k][0])));
    c.g = (uint8_t)lrintf(255.0f * (VIRIDIS_KNOTS[k][1] + f * (VIRIDIS_KNOTS[k + 1][1] - VIRIDIS_KNOTS[k][1])));
    c.b = (uint8_t)lrintf(255.0f * (VIRIDIS_KNOTS[k][2] + f * (VIRIDIS_KNOTS[k + 1][2] - VIRIDIS_KNOTS[k][2])));
    return c;
}

// ColorBrewer RdBu (11 classes), reversed so that low values are blue
static const uint8_t DIVERGING[11][3] = {
    {0x05, 0x30, 0x61}, {0x21, 0x66, 0xac}, {0x43, 0x93, 0xc3}, {0x92, 0xc5, 0xde}, {0xd1, 0xe5, 0xf0},
    {0xf7, 0xf7, 0xf7}, {0xfd, 0xdb, 0xc7}, {0xf4, 0xa5, 0x82}, {0xd6, 0x60, 0x4d}, {0xb2, 0x18, 0x2b},
    {0x67, 0x00, 0x1f},
};

Rgb cmap_diverging(float t) {
    if (isnan(t)) return RGB_NODATA;
    if (t < 0) t = 0;
    if (t > 1) t = 1;
    float idx = t * 10.0f;
    int k = (int)idx;
    if (k > 9) k = 9;
    float f = idx - (float)k;
    Rgb c;
    c.r = (uint8_t)lrintf(DIVERGING[k][0] + f * (DIVERGING[k + 1][0] - DIVERGING[k][0]));
    c.g = (uint8_t)lrintf(DIVERGING[k][1] + f * (DIVERGING[k + 1][1] - DIVERGING[k][1]));
    c.b = (uint8_t)lrintf(DIVERGING[k][2] + f * (DIVERGING[k + 1][2] - DIVERGING[k][2]));
    return c;
}

static const uint8_t TAB10[10][3] = {
    {0x1f, 0x77, 0xb4}, {0xff, 0x7f, 0x0e}, {0x2c, 0xa0, 0x2c}, {0xd6, 0x27, 0x28}, {0x94, 0x67, 0xbd},
    {0x8c, 0x56, 0x4b}, {0xe3, 0x77, 0xc2}, {0x7f, 0x7f, 0x7f}, {0xbc, 0xbd, 0x22}, {0x17, 0xbe, 0xcf},
};

Rgb palette_color(int i, int n) {
    if (n <= 10) {
        int k = ((i % 10) + 10) % 10;
        return (Rgb){TAB10[k][0], TAB10[k][1], TAB10[k][2]};
    }
    return cmap_viridis(n > 1 ? 0.92f * (float)i / (float)(n - 1) : 0.0f);
}

int rgb_dist(Rgb a, Rgb b) {
    int d = abs((int)a.r - (int)b.r);
    int e = abs((int)a.g - (int)b.g);
    int f = abs((int)a.b - (int)b.b);
    return d > e ? (d > f ? d : f) : (e > f ? e : f);
}
