// Tests of plots/: colour maps, ticks, text, PNG round trips, the collapse detector, every
// chart from synthetic logs with pixel checks, robust reading of broken logs (including a
// bounded fuzz), the compare view and the report_write timing on 2,000 steps x 4 layers x 8
// experts.
//   test_plots                    run the tests
//   test_plots --write-run DIR [STEPS LAYERS EXPERTS TOPK]
//                                 write a synthetic run folder (used by tests/test_report_html.sh)
#include <dirent.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

#include "plots/report.h"
#include "tests/test.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#define STBI_ONLY_PNG
#define STB_IMAGE_IMPLEMENTATION
#include <stb/stb_image.h>
#pragma GCC diagnostic pop

// ---------------------------------------------------------------------------------------
// synthetic logs

typedef struct {
    int steps, L, E, K;
    int collapse_layer_index;  // -1: none; that layer collapses onto expert 5 from steps/3
    int dropped;               // 1: a capacity limit drops a few tokens
    int coact, domains, bias;  // write coact.jsonl / domains.jsonl; bias updates on
} SynthSpec;

static void synth_default(SynthSpec *s) {
    s->steps = 300;
    s->L = 4;
    s->E = 8;
    s->K = 2;
    s->collapse_layer_index = 2;
    s->dropped = 0;
    s->coact = s->domains = s->bias = 1;
}

static FILE *open_in(const char *dir, const char *name, const char *mode) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return fopen(p, mode);
}

// collapse onset: layer collapse_layer_index from steps/3 on
static int synth_collapsed(const SynthSpec *s, int li, int t) {
    return li == s->collapse_layer_index && t >= s->steps / 3;
}

static int write_synthetic_run(const char *dir, const SynthSpec *s) {
    MoeErr err;
    if (make_dirs(dir, &err)) return -1;
    uint64_t rng = rng_seed(42);
    FILE *f = open_in(dir, "run.json", "w");
    if (!f) return -1;
    fprintf(f,
            "{\"name\": \"%s\", \"created\": \"2026-11-23T23:59:00Z\", \"backend\": \"cpu\", \"precision\": "
            "\"fp32\", \"config\": {\"vocab_size\": 4096, \"dim\": 128, \"n_layers\": %d, \"n_dense_layers\": 1, "
            "\"n_routed_experts\": %d, \"top_k\": %d, \"score_func\": \"sigmoid\", \"balance\": \"bias\", "
            "\"capacity_factor\": %s}, \"train\": {\"batch_size\": 8, \"seq_len\": 128, \"lr\": 0.003, "
            "\"max_steps\": %d}, \"domains\": [\"bible\", \"gcide\", \"jargon\", \"foldoc\", \"code\"], "
            "\"parent\": {\"checkpoint\": \"checkpoints/base/step_000200.ckpt\", \"run\": \"base\", \"step\": 200, "
            "\"overrides\": {\"balance\": \"aux\"}}}\n",
            strrchr(dir, '/') ? strrchr(dir, '/') + 1 : dir, s->L + 1, s->E, s->K, s->dropped ? "1.25" : "0", s->steps);
    fclose(f);
    FILE *ft = open_in(dir, "train.jsonl", "w");
    FILE *fr = open_in(dir, "routing.jsonl", "w");
    if (!ft || !fr) {
        if (ft) fclose(ft);
        if (fr) fclose(fr);
        return -1;
    }
    int L = s->L, E = s->E, K = s->K, tokens = 2048;
    float *bias = calloc((size_t)L * E, sizeof(float));
    float *load = malloc(sizeof(float) * (size_t)E);
    for (int t = 0; t < s->steps; t++) {
        double loss = 3.0 + 5.0 * exp(-t / 80.0) + 0.05 * (rng_uniform(&rng) - 0.5);
        double lr = t < 20 ? 0.003 * (t + 1) / 20.0 : 0.0003 + 0.0027 * 0.5 * (1 + cos(M_PI * (t - 20) / (s->steps - 20)));
        fprintf(ft,
                "{\"step\": %d, \"loss\": %.5f, \"ce\": %.5f, \"aux_loss\": 0.0, \"lr\": %.6g, \"grad_norm\": %.4f, "
                "\"tokens_per_s\": %.1f, \"ms\": 200.0, \"tokens\": %d, \"mem_mb\": 400.0}\n",
                t, loss, loss - 0.01, lr, 2.0 * exp(-t / 100.0) + 0.3 + 0.1 * rng_uniform(&rng),
                10000 + 500 * rng_uniform(&rng), tokens);
        if (t > 0 && t % 50 == 0) fprintf(ft, "{\"step\": %d, \"val_loss\": %.5f}\n", t, loss + 0.1);
        fprintf(fr, "{\"step\": %d, \"tokens\": %d, \"layers\": [", t, tokens);
        for (int li = 0; li < L; li++) {
            double total = (double)tokens * K;
            double sum = 0;
            for (int e = 0; e < E; e++) {
                load[e] = (float)(1.0 + 0.3 * exp(-t / 60.0) * (e - E / 2.0) / E + 0.1 * (rng_uniform(&rng) - 0.5));
                sum += load[e];
            }
            for (int e = 0; e < E; e++) load[e] = (float)floor(load[e] / sum * total);
            if (synth_collapsed(s, li, t)) {  // expert 5 takes 95 % of tokens
                double rest = total - 0.95 * tokens;
                for (int e = 0; e < E; e++) load[e] = (float)floor(rest / (E - 1));
                load[5 % E] = (float)floor(0.95 * tokens);
            }
            double mean = 0, mx = 0, ue = 0;
            for (int e = 0; e < E; e++) {
                mean += load[e];
                if (load[e] > mx) mx = load[e];
            }
            for (int e = 0; e < E; e++)
                if (load[e] > 0) ue -= load[e] / mean * log(load[e] / mean);
            mean /= E;
            double ent = synth_collapsed(s, li, t) ? 0.15 : log(E) * (0.55 + 0.45 * exp(-t / 100.0)) - 0.05 * li;
            fprintf(fr, "%s{\"layer\": %d, \"load\": [", li ? ", " : "", li + 1);
            for (int e = 0; e < E; e++) fprintf(fr, "%s%.0f", e ? ", " : "", load[e]);
            fprintf(fr, "], \"maxvio\": %.5f, \"entropy\": %.5f, \"entropy_uniform\": %.5f, \"usage_entropy\": %.5f, "
                        "\"dropped\": %.5f, \"top1_weight\": 0.6, \"bias\": [",
                    (mx - mean) / mean, ent, log(E), ue, s->dropped ? 0.01 + 0.02 * exp(-t / 50.0) * (li + 1) : 0.0);
            for (int e = 0; e < E; e++) {
                if (s->bias) bias[li * E + e] += 0.001f * (load[e] < mean ? 1.0f : (load[e] > mean ? -1.0f : 0.0f));
                fprintf(fr, "%s%.5f", e ? ", " : "", bias[li * E + e]);
            }
            fprintf(fr, "]}");
        }
        fprintf(fr, "]}\n");
    }
    fclose(ft);
    fclose(fr);
    if (s->coact) {
        f = open_in(dir, "coact.jsonl", "w");
        if (!f) return -1;
        for (int rec = 0; rec < 2; rec++) {
            fprintf(f, "{\"step\": %d, \"E\": %d, \"tokens\": 65536, \"within\": [", (rec + 1) * 100, E);
            for (int li = 0; li < L; li++) {
                fprintf(f, "%s{\"layer\": %d, \"counts\": [", li ? ", " : "", li + 1);
                for (int i = 0; i < E; i++) {
                    fprintf(f, "%s[", i ? ", " : "");
                    for (int j = 0; j < E; j++) {
                        int v = i == j ? 16384 : (abs(i - j) == 1 ? 6000 : 1500 + 40 * ((i * 7 + j * 3 + li) % 11));
                        fprintf(f, "%s%d", j ? ", " : "", v);
                    }
                    fprintf(f, "]");
                }
                fprintf(f, "]}");
            }
            fprintf(f, "], \"across\": [");
            for (int li = 0; li + 1 < L; li++) {
                fprintf(f, "%s{\"layer\": %d, \"next\": %d, \"counts\": [", li ? ", " : "", li + 1, li + 2);
                for (int i = 0; i < E; i++) {
                    fprintf(f, "%s[", i ? ", " : "");
                    for (int j = 0; j < E; j++) fprintf(f, "%s%d", j ? ", " : "", j == (i + 1) % E ? 12000 : 3000);
                    fprintf(f, "]");
                }
                fprintf(f, "]}");
            }
            fprintf(f, "]}\n");
        }
        fclose(f);
    }
    if (s->domains) {
        f = open_in(dir, "domains.jsonl", "w");
        if (!f) return -1;
        fprintf(f, "{\"step\": 200, \"domains\": [\"bible\", \"gcide\", \"jargon\", \"foldoc\", \"code\"], \"E\": %d, "
                   "\"tokens\": [13000, 12000, 9000, 8000, 11000], \"layers\": [", E);
        for (int li = 0; li < L; li++) {
            fprintf(f, "%s{\"layer\": %d, \"counts\": [", li ? ", " : "", li + 1);
            for (int d = 0; d < 5; d++) {
                fprintf(f, "%s[", d ? ", " : "");
                for (int e = 0; e < E; e++) fprintf(f, "%s%d", e ? ", " : "", e % 5 == d ? 4000 : 1000 + 100 * li);
                fprintf(f, "]");
            }
            fprintf(f, "]}");
        }
        fprintf(f, "]}\n");
        fclose(f);
    }
    free(bias);
    free(load);
    return 0;
}

// ---------------------------------------------------------------------------------------
// helpers

typedef struct {
    int w, h;
    unsigned char *px;
} Img;

static int load_png(const char *path, Img *img) {
    int n;
    img->px = stbi_load(path, &img->w, &img->h, &n, 3);
    return img->px ? 0 : -1;
}

static Rgb img_at(const Img *img, int x, int y) {
    if (x < 0 || y < 0 || x >= img->w || y >= img->h) return (Rgb){0, 0, 0};
    const unsigned char *p = img->px + 3 * ((size_t)y * img->w + x);
    return (Rgb){p[0], p[1], p[2]};
}

// distance of the closest pixel to c within radius r of (x, y)
static int near_color(const Img *img, int x, int y, int r, Rgb c) {
    int best = 999;
    for (int dy = -r; dy <= r; dy++)
        for (int dx = -r; dx <= r; dx++) {
            int d = rgb_dist(img_at(img, x + dx, y + dy), c);
            if (d < best) best = d;
        }
    return best;
}

static int count_non_white(const Img *img) {
    int n = 0;
    for (int i = 0; i < img->w * img->h; i++)
        if (img->px[3 * i] < 250 || img->px[3 * i + 1] < 250 || img->px[3 * i + 2] < 250) n++;
    return n;
}

static char g_tmp[512];

static void path_in(char *out, size_t n, const char *dir, const char *name) { snprintf(out, n, "%s/%s", dir, name); }

static void write_text(const char *dir, const char *name, const char *text) {
    char p[1024];
    path_in(p, sizeof p, dir, name);
    FILE *f = fopen(p, "w");
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static void rm_rf(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[1024];
        path_in(p, sizeof p, dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            rm_rf(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

// ---------------------------------------------------------------------------------------
// tests

static void test_colormaps(void) {
    test_begin("colormap_viridis_diverging");
    Rgb a = cmap_viridis(0), b = cmap_viridis(1), m = cmap_viridis(0.5f);
    CHECK(rgb_dist(a, (Rgb){68, 1, 84}) <= 1, "viridis(0) = %d,%d,%d", a.r, a.g, a.b);
    CHECK(rgb_dist(b, (Rgb){253, 231, 37}) <= 1, "viridis(1) = %d,%d,%d", b.r, b.g, b.b);
    // matplotlib viridis entry 128 = (0.127568, 0.566949, 0.550556) at t = 128/255
    Rgb c = cmap_viridis(128.0f / 255.0f);
    CHECK(rgb_dist(c, (Rgb){33, 145, 140}) <= 1, "viridis(128/255) = %d,%d,%d", c.r, c.g, c.b);
    CHECK(rgb_dist(m, (Rgb){33, 145, 140}) <= 2, "viridis(0.5)");
    // perceptual: luminance increases monotonically
    double prev = -1;
    int mono = 1;
    for (int i = 0; i <= 100; i++) {
        Rgb v = cmap_viridis(i / 100.0f);
        double lum = 0.2126 * v.r + 0.7152 * v.g + 0.0722 * v.b;
        if (lum < prev - 0.5) mono = 0;
        prev = lum;
    }
    CHECK(mono, "viridis luminance not monotonic");
    Rgb w = cmap_diverging(0.5f), lo = cmap_diverging(0), hi = cmap_diverging(1);
    CHECK(rgb_dist(w, (Rgb){0xf7, 0xf7, 0xf7}) == 0, "diverging centre not white");
    CHECK(lo.b > lo.r && hi.r > hi.b, "diverging ends: blue low, red high");
    CHECK(rgb_dist(cmap_viridis(NAN), RGB_NODATA) == 0, "NaN -> no-data grey");
    test_end();
}

static void test_ticks(void) {
    test_begin("nice_ticks_format");
    CHECK_CLOSE(nice_step(10, 5), 2, 1e-12, 0, "step 10/5");
    CHECK_CLOSE(nice_step(1, 4), 0.2, 1e-12, 0, "step 1/4");   // raw 0.25 -> 0.2
    CHECK_CLOSE(nice_step(700, 7), 100, 1e-9, 0, "step 700/7");
    CHECK_CLOSE(nice_step(0.03, 3), 0.01, 1e-12, 0, "step 0.03/3");
    char buf[32];
    format_tick(0.5, 0.1, buf, sizeof buf);
    CHECK(!strcmp(buf, "0.5"), "0.5 -> %s", buf);
    format_tick(12000, 2000, buf, sizeof buf);
    CHECK(!strcmp(buf, "12k"), "12000 -> %s", buf);
    format_tick(200, 50, buf, sizeof buf);
    CHECK(!strcmp(buf, "200"), "200 -> %s", buf);
    format_tick(1e-16, 0.1, buf, sizeof buf);
    CHECK(!strcmp(buf, "0"), "~0 -> %s", buf);
    test_end();
}

static void test_canvas_png_text(void) {
    test_begin("canvas_png_roundtrip_text_line");
    Canvas cv;
    MoeErr err;
    CHECK(canvas_init(&cv, 320, 200, RGB_WHITE, &err) == 0, "init");
    CHECK(canvas_init(&(Canvas){0}, 0, 10, RGB_WHITE, &err) != 0, "zero size rejected");
    canvas_fill_rect(&cv, 10, 10, 40, 30, (Rgb){10, 200, 30});
    canvas_line(&cv, 50, 100.5f, 300, 100.5f, (Rgb){200, 0, 0}, 2.0f);
    int rc = canvas_text(&cv, 60, 20, "Hello 0.25 \xc3\x97 ln E", 20.0f, RGB_BLACK, TEXT_LEFT, TEXT_TOP, 0);
    CHECK(rc == 0, "text (font missing?)");
    CHECK(text_width("Hello", 20.0f, 0) > 30 && text_width("Hello", 20.0f, 0) < 80, "text width %.1f",
          text_width("Hello", 20.0f, 0));
    canvas_text(&cv, 20, 190, "rotated", 14.0f, RGB_BLACK, TEXT_LEFT, TEXT_BOTTOM, TEXT_ROT90);
    char p[600];
    path_in(p, sizeof p, g_tmp, "canvas.png");
    CHECK(canvas_write_png(&cv, p, &err) == 0, "write: %s", err.msg);
    Img img;
    CHECK(load_png(p, &img) == 0, "decode");
    if (img.px) {
        CHECK(img.w == 320 && img.h == 200, "size %dx%d", img.w, img.h);
        CHECK(rgb_dist(img_at(&img, 20, 20), (Rgb){10, 200, 30}) == 0, "rect pixel");
        CHECK(rgb_dist(img_at(&img, 150, 100), (Rgb){200, 0, 0}) <= 2, "line pixel");
        CHECK(rgb_dist(img_at(&img, 150, 97), RGB_WHITE) == 0, "pixel beside line untouched");
        int dark = 0, grey = 0;  // anti-aliased text: dark pixels and intermediate ones
        for (int y = 18; y < 48; y++)
            for (int x = 58; x < 300; x++) {
                Rgb q = img_at(&img, x, y);
                if (q.r < 60) dark++;
                else if (q.r < 230) grey++;
            }
        CHECK(dark > 50 && grey > 30, "text not drawn anti-aliased (dark %d grey %d)", dark, grey);
        int rot = 0;  // rotated text: taller than wide
        for (int y = 100; y < 190; y++)
            for (int x = 18; x < 40; x++)
                if (img_at(&img, x, y).r < 128) rot++;
        CHECK(rot > 40, "rotated text missing (%d)", rot);
        free(img.px);
    }
    CHECK(canvas_write_png(&cv, "/nonexistent-dir/x.png", &err) != 0 && strstr(err.msg, "/nonexistent-dir/x.png"),
          "unwritable path: %s", err.msg);
    canvas_free(&cv);
    test_end();
}

// heatmap + colour bar primitives with the diverging map on a log scale (as the domain chart)
static void test_heatmap_primitive(void) {
    test_begin("heatmap_diverging_log_cells_colorbar");
    Canvas cv;
    MoeErr err;
    CHECK(canvas_init(&cv, 500, 320, RGB_WHITE, &err) == 0, "init");
    Axes ax = axes_in_box(&cv, 0, 0, 400, 320);
    ax.no_xticks = ax.no_yticks = 1;
    axes_draw(&ax, "t", "x", "y");
    float v[12] = {0.25f, 0.5f, 1.0f, 2.0f, 4.0f, 8.0f, 0.1f, NAN, 1.5f, 0.75f, 3.0f, 1.0f};
    heatmap_draw(&ax, v, 3, 4, 0.25, 4.0, 1, cmap_diverging, "%.2f");
    colorbar_draw(&cv, 430, ax.y0, 16, ax.y1, 0.25, 4.0, 1, cmap_diverging, NULL);
    int bad = 0;
    for (int r = 0; r < 3; r++)
        for (int c = 0; c < 4; c++) {
            int x0, y0, x1, y1;
            heatmap_cell_rect(&ax, 3, 4, r, c, &x0, &y0, &x1, &y1);
            Rgb want = heatmap_color(v[r * 4 + c], 0.25, 4.0, 1, cmap_diverging);
            if (rgb_dist(canvas_get(&cv, x0 + 2, y0 + 2), want) > 0) bad++;
        }
    CHECK(bad == 0, "%d cells differ", bad);
    int x0, y0, x1, y1;
    heatmap_cell_rect(&ax, 3, 4, 0, 2, &x0, &y0, &x1, &y1);  // value 1 -> the white centre
    CHECK(rgb_dist(canvas_get(&cv, x0 + 2, y0 + 2), (Rgb){0xf7, 0xf7, 0xf7}) <= 1, "1.0 not white");
    heatmap_cell_rect(&ax, 3, 4, 0, 0, &x0, &y0, &x1, &y1);  // 0.25 -> darkest blue, 8 clamps to darkest red
    CHECK(rgb_dist(canvas_get(&cv, x0 + 2, y0 + 2), cmap_diverging(0)) <= 1, "vmin colour");
    heatmap_cell_rect(&ax, 3, 4, 1, 1, &x0, &y0, &x1, &y1);
    CHECK(rgb_dist(canvas_get(&cv, x0 + 2, y0 + 2), cmap_diverging(1)) <= 1, "clamped vmax colour");
    heatmap_cell_rect(&ax, 3, 4, 1, 3, &x0, &y0, &x1, &y1);
    CHECK(rgb_dist(canvas_get(&cv, x0 + 2, y0 + 2), RGB_NODATA) == 0, "NaN cell grey");
    // colour bar: the middle (value 1 on a symmetric log scale) is white, the top dark red
    Rgb mid = canvas_get(&cv, 438, (ax.y0 + ax.y1) / 2), top = canvas_get(&cv, 438, ax.y0 + 1);
    CHECK(rgb_dist(mid, (Rgb){0xf7, 0xf7, 0xf7}) <= 3, "colour bar middle %d,%d,%d", mid.r, mid.g, mid.b);
    CHECK(rgb_dist(top, cmap_diverging(1)) <= 3, "colour bar top");
    canvas_free(&cv);
    test_end();
}

static void test_collapse_detector(void) {
    test_begin("collapse_detector_events");
    CollapseParams p;
    collapse_params_default(&p);
    CHECK(p.patience == 20 && fabsf(p.share_threshold - 0.5f) < 1e-6f, "defaults");
    CollapseDetector d;
    MoeErr err;
    CHECK(collapse_init(&d, 2, 8, 0, &p, &err) != 0, "K = 0 rejected");
    CHECK(collapse_init(&d, 2, 8, 2, &p, &err) == 0, "init");
    CHECK(fabsf(d.share_thr - 0.75f) < 1e-6f, "effective threshold for E 8 K 2 = 0.75, got %g", d.share_thr);
    float bal[8] = {512, 512, 512, 512, 512, 512, 512, 512};  // 2048 tokens x K 2 = 4096
    float col[8] = {100, 100, 100, 1946, 100, 100, 100, 1550};  // expert 3: 1946/2048 = 95 % of tokens
    CollapseEvent ev, evs[8];
    int n_ev = 0;
    for (int t = 0; t < 100; t++) {
        const float *l0 = (t >= 10 && t < 40) ? col : bal;
        if (t == 60) l0 = col;  // a single bad step later: no event
        if (collapse_update(&d, t, 0, 5, l0, 1.5f, &ev)) evs[n_ev++ < 8 ? n_ev - 1 : 7] = ev;
        collapse_update(&d, t, 1, 6, bal, 1.5f, &ev) ? (void)(evs[n_ev++ < 8 ? n_ev - 1 : 7] = ev) : (void)0;
    }
    CHECK(n_ev == 2, "expected 2 events, got %d", n_ev);
    if (n_ev >= 2) {
        CHECK(evs[0].type == COLLAPSE_EVENT_COLLAPSE && evs[0].step == 29 && evs[0].since == 10 && evs[0].layer == 5 &&
                  evs[0].expert == 3,
              "collapse event: type %d step %ld since %ld layer %d expert %d", evs[0].type, evs[0].step, evs[0].since,
              evs[0].layer, evs[0].expert);
        CHECK_CLOSE(evs[0].share, 1946.0 / 2048.0, 1e-4, 0, "share");
        CHECK(evs[1].type == COLLAPSE_EVENT_RECOVERED && evs[1].step == 59 && evs[1].layer == 5,
              "recovered event: step %ld", evs[1].step);
        char line[256];
        collapse_event_json(&evs[0], line, sizeof line);
        cJSON *o = cJSON_Parse(line);
        CHECK(o && !strcmp(cJSON_GetObjectItem(o, "type")->valuestring, "collapse") &&
                  json_num(o, "step") == 29 && json_num(o, "layer") == 5 && json_num(o, "expert") == 3,
              "events.jsonl line: %s", line);
        cJSON_Delete(o);
        collapse_event_json(&evs[1], line, sizeof line);
        o = cJSON_Parse(line);
        CHECK(o && !strcmp(cJSON_GetObjectItem(o, "type")->valuestring, "recovered"), "recovered line: %s", line);
        cJSON_Delete(o);
        collapse_event_text(&evs[0], line, sizeof line);
        CHECK(strstr(line, "layer 5") && strstr(line, "expert 3"), "console text: %s", line);
    }
    collapse_free(&d);

    // the entropy rule alone (balanced loads, router entropy 0.1 < 0.2 ln 8 = 0.416), patience 5
    p.patience = 5;
    CHECK(collapse_init(&d, 1, 8, 2, &p, &err) == 0, "init 2");
    n_ev = 0;
    long at = -1;
    for (int t = 0; t < 20; t++)
        if (collapse_update(&d, t, 0, 1, bal, t >= 3 ? 0.1f : 2.0f, &ev)) {
            n_ev++;
            at = ev.step;
        }
    CHECK(n_ev == 1 && at == 7 && collapse_is_collapsed(&d, 0), "entropy collapse at step 7, got %d events at %ld",
          n_ev, at);
    // NaN or empty loads change nothing
    float nanl[8] = {NAN, 1, 1, 1, 1, 1, 1, 1}, zero[8] = {0};
    CHECK(!collapse_update(&d, 21, 0, 1, nanl, NAN, &ev) && !collapse_update(&d, 22, 0, 1, zero, NAN, &ev),
          "NaN/zero loads ignored");
    CHECK(!collapse_update(&d, 23, 5, 1, bal, 1.0f, &ev), "bad layer index ignored");
    collapse_free(&d);
    // E = 64, K = 6: threshold stays 0.5
    CHECK(collapse_init(&d, 1, 64, 6, NULL, &err) == 0 && fabsf(d.share_thr - 0.5f) < 1e-6f, "threshold E64 K6");
    collapse_free(&d);
    test_end();
}

// every chart of the synthetic run, pixel checks on the main ones
static void test_charts(const char *dir) {
    SynthSpec s;
    synth_default(&s);
    MoeErr err;
    test_begin("charts_render_synthetic");
    CHECK(write_synthetic_run(dir, &s) == 0, "write synthetic run");
    RunLog r;
    int ok = runlog_load(&r, dir, NULL, &err) == 0;
    CHECK(ok, "load: %s", ok ? "" : err.msg);
    if (!ok) {
        test_end();
        return;
    }
    CHECK(r.routing.n == s.steps && r.routing.L == s.L && r.routing.E == s.E && r.routing.K == s.K,
          "routing shape n %d L %d E %d K %d", r.routing.n, r.routing.L, r.routing.E, r.routing.K);
    CHECK(r.train.n == s.steps && r.train.n_val == (s.steps - 1) / 50, "train lines %d val %d", r.train.n, r.train.n_val);
    CHECK(r.coact.present && r.coact.n_within == s.L && r.coact.n_across == s.L - 1 && r.coact.step == 200,
          "coact (last record)");
    CHECK(r.domains.present && r.domains.D == 5 && r.domains.n_layers == s.L, "domains");
    // events recomputed from routing.jsonl: layer 3 (index 2) collapses onto expert 5
    int found = 0;
    for (int i = 0; i < r.n_events; i++)
        if (r.events[i].type == COLLAPSE_EVENT_COLLAPSE && r.events[i].layer == 3 && r.events[i].expert == 5 &&
            r.events[i].step == s.steps / 3 + 19)
            found = 1;
    CHECK(found && r.n_events == 1 && !r.events_from_file, "collapse event recomputed (%d events)", r.n_events);
    int ex = -1;
    CHECK(runlog_layer_collapsed(&r, 2, &ex) && ex == 5 && !runlog_layer_collapsed(&r, 0, NULL), "collapsed layers");
    test_end();

    char p[600];
    Img img;
    // ---- load heatmap: cell colours and the collapse mark
    test_begin("chart_load_heatmap_cells_and_mark");
    Axes ax;
    path_in(p, sizeof p, dir, "t_load.png");
    CHECK(chart_load_heatmap(&r, 100, p, &ax, &err) == 0, "render: %s", err.msg);
    if (load_png(p, &img) == 0) {
        CHECK(img.w == REPORT_W && img.h == REPORT_H, "size %dx%d", img.w, img.h);
        float *v = malloc(sizeof(float) * s.L * s.E);
        routing_window_share(&r.routing, 100, v);
        // the collapsed expert: 0.95 of 2048 tokens out of a mean of 512 -> 3.8 x uniform
        CHECK_CLOSE(v[2 * s.E + 5], 0.95 * 2048 / 512.0, 0.01, 0, "collapsed share");
        int bad = 0;
        for (int li = 0; li < s.L; li++)
            for (int e = 0; e < s.E; e++) {
                int x0, y0, x1, y1;
                heatmap_cell_rect(&ax, s.L, s.E, li, e, &x0, &y0, &x1, &y1);
                Rgb want = heatmap_color(v[li * s.E + e], SHARE_VMIN, SHARE_VMAX, 1, cmap_viridis);
                Rgb got = img_at(&img, x0 + 4, y0 + 4);  // corner: away from the value text
                if (rgb_dist(want, got) > 1) bad++;
            }
        CHECK(bad == 0, "%d heatmap cells differ from the colour map", bad);
        // mark: red outline left of the collapsed row (layer index 2), none on row 0
        int x0, y0, x1, y1;
        heatmap_cell_rect(&ax, s.L, 1, 2, 0, &x0, &y0, &x1, &y1);
        CHECK(rgb_dist(img_at(&img, x0 - 2, (y0 + y1) / 2), RGB_MARK) <= 2, "collapsed row not marked");
        CHECK(rgb_dist(img_at(&img, x1 + 1, (y0 + y1) / 2), RGB_MARK) <= 2, "collapsed row right mark");
        heatmap_cell_rect(&ax, s.L, 1, 0, 0, &x0, &y0, &x1, &y1);
        CHECK(rgb_dist(img_at(&img, x0 - 2, (y0 + y1) / 2), RGB_MARK) > 60, "healthy row marked");
        free(v);
        free(img.px);
    } else {
        CHECK(0, "decode %s", p);
    }
    test_end();

    // ---- share over steps for one layer: column = step (300 steps < plot width)
    test_begin("chart_share_layer_cells");
    path_in(p, sizeof p, dir, "t_share.png");
    CHECK(chart_share_layer(&r, 2, p, &ax, &err) == 0, "render: %s", err.msg);
    if (load_png(p, &img) == 0) {
        CHECK(img.w == REPORT_W && img.h == REPORT_H, "size");
        // step 250, expert 5 of the collapsed layer: share 0.95*2048/512 = 3.8 -> the top of the scale
        int x0, y0, x1, y1;
        heatmap_cell_rect(&ax, s.E, s.steps, 5, 250, &x0, &y0, &x1, &y1);
        Rgb got = img_at(&img, (x0 + x1) / 2, (y0 + y1) / 2);
        Rgb top = heatmap_color(0.95 * 2048 / 512.0, SHARE_VMIN, SHARE_VMAX, 1, cmap_viridis);
        CHECK(rgb_dist(top, cmap_viridis((float)((log2(3.8) + 3) / 6))) <= 1, "log share scale");
        CHECK(rgb_dist(got, top) <= 2, "collapsed expert cell %d,%d,%d", got.r, got.g, got.b);
        // step 10, expert 0 (balanced era): near-uniform share -> viridis(~1/vmax) (not the top)
        heatmap_cell_rect(&ax, s.E, s.steps, 0, 10, &x0, &y0, &x1, &y1);
        got = img_at(&img, (x0 + x1) / 2, (y0 + y1) / 2);
        const float *ld = r.routing.load + ((size_t)10 * s.L + 2) * s.E;
        double sum = 0;
        for (int e = 0; e < s.E; e++) sum += ld[e];
        Rgb want = heatmap_color(ld[0] * s.E / sum, SHARE_VMIN, SHARE_VMAX, 1, cmap_viridis);
        CHECK(rgb_dist(got, want) <= 2, "balanced cell %d,%d,%d want %d,%d,%d", got.r, got.g, got.b, want.r, want.g,
              want.b);
        free(img.px);
    }
    test_end();

    // ---- entropy line passes through the expected pixels; ln E reference line
    test_begin("chart_entropy_line_pixels");
    path_in(p, sizeof p, dir, "t_entropy.png");
    CHECK(chart_entropy(&r, p, &ax, &err) == 0, "render: %s", err.msg);
    if (load_png(p, &img) == 0) {
        int misses = 0;
        for (int t = 5; t < s.steps; t += 37) {  // layer index 0: colour palette_color(0, L)
            double y = r.routing.entropy[(size_t)t * s.L + 0];
            int px = (int)floor(axes_px_x(&ax, r.routing.step[t])), py = (int)floor(axes_px_y(&ax, y));
            if (near_color(&img, px, py, 1, palette_color(0, s.L)) > 40) misses++;
        }
        CHECK(misses == 0, "%d entropy points not on the line", misses);
        int ry = (int)floor(axes_px_y(&ax, log(8.0)));
        int dashes = 0;
        for (int x = ax.x0 + 300; x < ax.x1 - 10; x++)
            if (rgb_dist(img_at(&img, x, ry), RGB_AXIS) < 40) dashes++;
        CHECK(dashes > 50, "ln E reference line missing (%d)", dashes);
        // the collapse event: a red dashed vertical line at its step
        int ex_px = (int)floor(axes_px_x(&ax, (double)(s.steps / 3 + 19)));
        int red = 0;
        for (int y = ax.y0 + 30; y < ax.y1; y++)
            if (near_color(&img, ex_px, y, 1, RGB_MARK) < 40) red++;
        CHECK(red > 50, "collapse event line missing (%d)", red);
        free(img.px);
    }
    test_end();

    // ---- MaxVio (log): the global line of a balanced layer, via the mapping
    test_begin("chart_maxvio_log_pixels");
    path_in(p, sizeof p, dir, "t_maxvio.png");
    CHECK(chart_maxvio(&r, p, &ax, &err) == 0, "render: %s", err.msg);
    if (load_png(p, &img) == 0) {
        CHECK(ax.ylog && ax.ymin > 0, "log axis");
        double *glob = malloc(sizeof(double) * s.steps);
        routing_global_maxvio(&r.routing, 2, glob);
        Rgb c = palette_color(2, s.L);
        Rgb dark = {(uint8_t)(c.r * 0.7), (uint8_t)(c.g * 0.7), (uint8_t)(c.b * 0.7)};
        int misses = 0;
        for (int t = 120; t < s.steps; t += 41) {
            int px = (int)floor(axes_px_x(&ax, r.routing.step[t])), py = (int)floor(axes_px_y(&ax, glob[t]));
            if (near_color(&img, px, py, 2, dark) > 40) misses++;
        }
        CHECK(misses == 0, "%d global MaxVio points off the line", misses);
        // global MaxVio from summed loads: at the end of a collapsed layer it is large (> 1)
        CHECK(glob[s.steps - 1] > 1.0, "global maxvio %.3g", glob[s.steps - 1]);
        free(glob);
        free(img.px);
    }
    test_end();

    // ---- loss: the validation points and a training segment
    test_begin("chart_loss_line_pixels");
    path_in(p, sizeof p, dir, "t_loss.png");
    CHECK(chart_loss(&r, p, &ax, &err) == 0, "render: %s", err.msg);
    if (load_png(p, &img) == 0) {
        int misses = 0;
        for (int i = 0; i < r.train.n_val; i++) {
            int px = (int)floor(axes_px_x(&ax, r.train.val_step[i])), py = (int)floor(axes_px_y(&ax, r.train.val_loss[i]));
            if (near_color(&img, px, py, 1, palette_color(1, 10)) > 40) misses++;
        }
        CHECK(misses == 0, "%d validation points missing", misses);
        free(img.px);
    }
    test_end();

    // ---- dropped: dropless message vs lines
    test_begin("chart_dropped_dropless_and_lines");
    path_in(p, sizeof p, dir, "t_dropped.png");
    CHECK(chart_dropped(&r, p, &ax, &err) == 0, "render");
    if (load_png(p, &img) == 0) {
        int txt = 0;  // grey message text in the centre, no coloured lines
        for (int y = (ax.y0 + ax.y1) / 2 - 12; y < (ax.y0 + ax.y1) / 2 + 12; y++)
            for (int x = ax.x0; x < ax.x1; x++)
                if (rgb_dist(img_at(&img, x, y), (Rgb){120, 120, 120}) < 30) txt++;
        CHECK(txt > 100, "dropless message missing (%d)", txt);
        free(img.px);
    }
    test_end();

    // ---- every other chart: renders, decodes, not blank
    test_begin("charts_all_render_decode");
    struct {
        const char *file;
        int (*fn)(const RunLog *, const char *, MoeErr *);
    } others[] = {{"t_grid.png", chart_share_grid},         {"t_bias.png", chart_bias},
                  {"t_biasmap.png", chart_bias_heatmap},    {"t_stats.png", chart_train_stats},
                  {"t_within.png", chart_coact_within},     {"t_across.png", chart_coact_across},
                  {"t_domains.png", chart_domains}};
    for (size_t k = 0; k < sizeof others / sizeof others[0]; k++) {
        path_in(p, sizeof p, dir, others[k].file);
        CHECK(others[k].fn(&r, p, &err) == 0, "%s: %s", others[k].file, err.msg);
        if (load_png(p, &img) == 0) {
            CHECK(img.w >= 600 && img.h >= 300 && count_non_white(&img) > img.w * img.h / 20, "%s: %dx%d mostly blank",
                  others[k].file, img.w, img.h);
            free(img.px);
        } else {
            CHECK(0, "%s does not decode", others[k].file);
        }
    }
    // train stats is 1200 x 420
    path_in(p, sizeof p, dir, "t_stats.png");
    if (load_png(p, &img) == 0) {
        CHECK(img.w == 1200 && img.h == 420, "train_stats size");
        free(img.px);
    }
    // domain lift: domain 0 prefers experts 0 and 5 -> red cell; check via colour of lift
    test_end();
    runlog_free(&r);

    // ---- report_write: every PNG and report.html
    test_begin("report_write_html");
    CHECK(report_write(dir, &err) == 0, "report_write: %s", err.msg);
    const char *pngs[] = {"load_heatmap.png", "share_layer.png", "share_grid.png", "entropy.png",
                          "maxvio.png",       "bias.png",        "bias_heatmap.png", "loss.png",
                          "train_stats.png",  "dropped.png",     "coact_within.png", "coact_across.png",
                          "domains.png",      "top1.png"};
    for (size_t k = 0; k < sizeof pngs / sizeof pngs[0]; k++) {
        path_in(p, sizeof p, dir, pngs[k]);
        CHECK(load_png(p, &img) == 0, "%s missing or broken", pngs[k]);
        free(img.px);
    }
    path_in(p, sizeof p, dir, "report.html");
    char *html = NULL;
    size_t n = 0;
    CHECK(read_file_all(p, &html, &n, &err) == 0, "report.html");
    if (html) {
        for (size_t k = 0; k < sizeof pngs / sizeof pngs[0]; k++) CHECK(strstr(html, pngs[k]), "html lacks %s", pngs[k]);
        CHECK(strstr(html, "http-equiv=\"refresh\""), "in-progress run must refresh");
        CHECK(strstr(html, "../base/report.html"), "parent link");
        CHECK(strstr(html, "<b>before</b> the balancing bias"), "entropy caption says before the bias");
        CHECK(strstr(html, "layer 3 (expert 5)"), "collapsed layer in the summary");
        CHECK(strstr(html, "best validation loss"), "summary");
        free(html);
    }
    write_text(dir, "FINISHED", "");
    CHECK(report_write(dir, &err) == 0, "report_write 2");
    html = NULL;
    if (read_file_all(p, &html, &n, &err) == 0) {
        CHECK(!strstr(html, "http-equiv=\"refresh\""), "finished run must not refresh");
        free(html);
    }
    test_end();

    // ---- events.jsonl from the trainer takes priority over recomputation
    test_begin("events_file_priority");
    write_text(dir, "events.jsonl",
               "{\"step\": 140, \"type\": \"collapse\", \"layer\": 1, \"expert\": 4, \"share\": 0.93, \"entropy\": 0.12}\n"
               "{\"step\": 150, \"type\": \"recovered\", \"layer\": 1}\n"
               "{\"step\": 160, \"type\": \"collapse\", \"layer\": 4, \"expert\": 2, \"share\": 0.9, \"entro");
    ok = runlog_load(&r, dir, NULL, &err) == 0;
    CHECK(ok && r.events_from_file && r.n_events == 2, "events from file: %d", ok ? r.n_events : -1);
    if (ok) {
        CHECK(!runlog_layer_collapsed(&r, 0, NULL), "layer 1 recovered");
        runlog_free(&r);
    }
    path_in(p, sizeof p, dir, "events.jsonl");
    unlink(p);
    test_end();
}

static void test_dropped_lines(const char *dir) {
    test_begin("chart_dropped_with_capacity");
    SynthSpec s;
    synth_default(&s);
    s.dropped = 1;
    s.coact = s.domains = 0;
    s.bias = 0;
    MoeErr err;
    CHECK(write_synthetic_run(dir, &s) == 0, "write");
    RunLog r;
    if (runlog_load(&r, dir, NULL, &err) == 0) {
        Axes ax;
        char p[600];
        path_in(p, sizeof p, dir, "t_dropped.png");
        CHECK(chart_dropped(&r, p, &ax, &err) == 0, "render");
        Img img;
        if (load_png(p, &img) == 0) {
            int misses = 0;
            for (int t = 3; t < s.steps; t += 29) {
                double y = 100.0 * r.routing.dropped[(size_t)t * s.L + 3];
                int px = (int)floor(axes_px_x(&ax, r.routing.step[t])), py = (int)floor(axes_px_y(&ax, y));
                if (near_color(&img, px, py, 1, palette_color(3, s.L)) > 40) misses++;
            }
            CHECK(misses == 0, "%d dropped points off the line", misses);
            free(img.px);
        }
        CHECK(!r.coact.present && !r.domains.present, "no optional logs");
        runlog_free(&r);
        CHECK(report_write(dir, &err) == 0, "report without coact/domains: %s", err.msg);
        char *html = NULL;
        size_t n;
        path_in(p, sizeof p, dir, "report.html");
        if (read_file_all(p, &html, &n, &err) == 0) {
            CHECK(strstr(html, "No co-activation charts") && strstr(html, "No domain specialisation"),
                  "missing optional files noted");
            CHECK(!strstr(html, "coact_within.png"), "no image for a missing log");
            free(html);
        }
    } else {
        CHECK(0, "load: %s", err.msg);
    }
    test_end();
}

// broken logs never crash and say what is wrong
static void test_broken_logs(const char *base) {
    MoeErr err;
    char dir[600], p[700];
    test_begin("broken_logs_empty_truncated_nan");
    // 1. missing folder and empty folder: clear errors
    snprintf(dir, sizeof dir, "%s/nope", base);
    CHECK(report_write(dir, &err) != 0 && strstr(err.msg, "nope"), "missing folder: %s", err.msg);
    snprintf(dir, sizeof dir, "%s/emptydir", base);
    make_dirs(dir, &err);
    CHECK(report_write(dir, &err) != 0 && strstr(err.msg, "no run.json"), "empty folder: %s", err.msg);
    // 2. empty logs: charts say no data, report still written
    snprintf(dir, sizeof dir, "%s/empty", base);
    make_dirs(dir, &err);
    write_text(dir, "train.jsonl", "");
    write_text(dir, "routing.jsonl", "");
    write_text(dir, "coact.jsonl", "");
    CHECK(report_write(dir, &err) == 0, "empty logs: %s", err.msg);
    Img img;
    path_in(p, sizeof p, dir, "entropy.png");
    if (load_png(p, &img) == 0) {
        int txt = 0;
        for (int y = 250; y < 330; y++)
            for (int x = 300; x < 700; x++)
                if (rgb_dist(img_at(&img, x, y), (Rgb){120, 120, 120}) < 30) txt++;
        CHECK(txt > 100, "'no data' missing on empty entropy chart");
        free(img.px);
    } else {
        CHECK(0, "entropy.png for empty logs");
    }
    // 3. truncated last line, a NaN literal line, nulls, wrong sizes, garbage
    snprintf(dir, sizeof dir, "%s/broken", base);
    make_dirs(dir, &err);
    write_text(dir, "run.json", "{\"name\": \"broken\", \"config\": {\"top_k\": 2, \"n_routed_experts\": 4}");
    write_text(dir, "train.jsonl",
               "{\"step\": 0, \"loss\": 5.0, \"lr\": 0.001, \"grad_norm\": null}\n"
               "{\"step\": 1, \"loss\": NaN, \"lr\": 0.001}\n"
               "not json at all\n"
               "{\"step\": 2, \"loss\": null, \"skipped\": true}\n"
               "{\"step\": 3, \"loss\": 4.0, \"lr\": 0.001, \"grad_norm\": 1e999}\n"
               "{\"step\": 4, \"val_loss\": null}\n"
               "{\"step\": 5, \"loss\": 3.9, \"lr\": 0.0");
    write_text(dir, "routing.jsonl",
               "{\"step\": 0, \"tokens\": 8, \"layers\": [{\"layer\": 1, \"load\": [4, 4, 4, 4], \"maxvio\": 0, "
               "\"entropy\": null, \"bias\": [0, 0, 0, 0]}]}\n"
               "{\"step\": 1, \"tokens\": 8, \"layers\": [{\"layer\": 1, \"load\": [4, 4, null, 4], \"maxvio\": null}]}\n"
               "{\"step\": 2, \"tokens\": 8, \"layers\": [{\"layer\": 1, \"load\": [1, 2, 3]}]}\n"
               "{\"step\": 3, \"tokens\": 8, \"layers\": [{\"layer\": 9, \"load\": [4, 4, 4, 4]}]}\n"
               "{\"step\": 4, \"layers\": \"oops\"}\n"
               "[1, 2, 3]\n"
               "{\"step\": 5, \"tokens\": 8, \"layers\": [{\"layer\": 1, \"load\": [16, 0, 0, 0], \"maxvio\": 3.0, "
               "\"entropy\": 0.01}]}\n"
               "{\"step\": 6, \"tokens\": 8, \"layers\": [{\"layer\": 1, \"lo");
    write_text(dir, "coact.jsonl", "{\"step\": 1, \"E\": 4, \"within\": [{\"layer\": 1, \"counts\": [[1, 2], [3]]}]}\n");
    write_text(dir, "domains.jsonl", "{\"step\": 1, \"domains\": [], \"E\": 4}\n");
    write_text(dir, "events.jsonl", "\x01\x02garbage\n");
    RunLog r;
    int ok = runlog_load(&r, dir, NULL, &err) == 0;
    CHECK(ok, "load broken: %s", ok ? "" : err.msg);
    if (ok) {
        CHECK(r.run == NULL, "truncated run.json -> no config");
        CHECK(r.train.n == 3 && r.train.n_val == 1, "train lines kept %d val %d", r.train.n, r.train.n_val);
        CHECK(r.routing.n == 5 && r.routing.E == 4, "routing lines kept %d", r.routing.n);
        CHECK(!r.coact.present && !r.domains.present, "bad optional logs dropped");
        int cut = 0, bad = 0;
        for (int i = 0; i < r.n_notes; i++) {
            if (strstr(r.notes[i], "cut off")) cut++;
            if (strstr(r.notes[i], "not valid JSON")) bad++;
        }
        CHECK(cut >= 2 && bad >= 1, "notes: cut %d bad %d", cut, bad);
        runlog_free(&r);
    }
    CHECK(report_write(dir, &err) == 0, "report on broken logs: %s", err.msg);
    // 4. valid JSON with the wrong types, absurd numbers and markup in names
    snprintf(dir, sizeof dir, "%s/types", base);
    make_dirs(dir, &err);
    write_text(dir, "routing.jsonl",
               "{\"step\": \"1\", \"tokens\": 8, \"layers\": [{\"layer\": 1, \"load\": [4, 4, 4, 4]}]}\n"
               "{\"step\": 1, \"tokens\": 8, \"layers\": [{\"layer\": 1, \"load\": [[4], 4, 4, 4], \"bias\": \"x\"}]}\n"
               "{\"step\": 2, \"tokens\": -8, \"layers\": [{\"layer\": 1e300, \"load\": [-4, 1e308, 1e308, 4]}]}\n"
               "{\"step\": 1e300, \"tokens\": 1e-300, \"layers\": [{\"layer\": 1, \"load\": [4, 4, 4, 1e308]}]}\n"
               "{\"step\": -5, \"tokens\": 8, \"layers\": [{\"load\": [0, 0, 0, 0]}, 5, null, \"s\"]}\n"
               "{\"step\": 4, \"tokens\": 8, \"layers\": []}\n");
    write_text(dir, "train.jsonl",
               "{\"step\": 1e300, \"loss\": 1e300}\n{\"step\": 1, \"loss\": -1e308, \"ce\": \"x\"}\n"
               "{\"step\": 2, \"loss\": 1e308, \"grad_norm\": -1}\n{\"step\": 3, \"val_loss\": \"nan\"}\n");
    write_text(dir, "run.json",
               "{\"name\": \"<b>x</b>\", \"config\": {\"top_k\": 1e300, \"route_scale\": \"x\"}, "
               "\"parent\": {\"run\": 5, \"step\": \"x\"}, \"train\": [1, 2]}");
    write_text(dir, "events.jsonl", "{\"step\": 1e300, \"type\": \"collapse\", \"layer\": 1e300, \"expert\": 1e300}\n"
                                    "{\"step\": 1, \"type\": \"collapse\", \"layer\": 1, \"expert\": 99}\n");
    write_text(dir, "domains.jsonl", "{\"step\": 1, \"domains\": [\"a\", 5], \"E\": 4, \"tokens\": \"x\", \"layers\": "
                                     "[{\"layer\": 1, \"counts\": [[0, 0, 0, 0], [1e308, 1e308, 1e308, 1e308]]}]}\n");
    CHECK(report_write(dir, &err) == 0, "wrong types: %s", err.msg);
    path_in(p, sizeof p, dir, "report.html");
    char *html = NULL;
    size_t hn;
    if (read_file_all(p, &html, &hn, &err) == 0) {
        CHECK(!strstr(html, "<b>x</b>") && strstr(html, "&lt;b&gt;x&lt;/b&gt;"), "run name not escaped");
        free(html);
    }
    // 5. a binary file as a log
    snprintf(dir, sizeof dir, "%s/binary", base);
    make_dirs(dir, &err);
    FILE *f = fopen((snprintf(p, sizeof p, "%s/routing.jsonl", dir), p), "wb");
    if (f) {
        for (int i = 0; i < 5000; i++) fputc((i * 131 + 7) & 0xff, f);
        fclose(f);
    }
    CHECK(report_write(dir, &err) == 0, "binary log: %s", err.msg);
    test_end();
}

// bounded fuzz: random cuts and byte changes of a valid routing.jsonl / train.jsonl
static void test_fuzz(const char *base) {
    test_begin("fuzz_logs_no_crash");
    MoeErr err;
    char src[600], dir[600], p[700];
    snprintf(src, sizeof src, "%s/fuzzsrc", base);
    SynthSpec s;
    synth_default(&s);
    s.steps = 40;
    s.L = 2;
    s.E = 4;
    s.K = 2;
    s.collapse_layer_index = 1;
    write_synthetic_run(src, &s);
    char *files[5] = {NULL, NULL, NULL, NULL, NULL};
    size_t sizes[5] = {0, 0, 0, 0, 0};
    const char *names[5] = {"routing.jsonl", "train.jsonl", "coact.jsonl", "run.json", "domains.jsonl"};
    for (int k = 0; k < 5; k++) {
        path_in(p, sizeof p, src, names[k]);
        read_file_all(p, &files[k], &sizes[k], &err);
    }
    snprintf(dir, sizeof dir, "%s/fuzz", base);
    make_dirs(dir, &err);
    uint64_t rng = rng_seed(7);
    double t0 = wall_seconds();
    int iters = 0, fails = 0;
    while (iters < 60 && (iters < 10 || wall_seconds() - t0 < 5.0)) {
        for (int k = 0; k < 5; k++) {
            if (!files[k]) continue;
            size_t n = sizes[k];
            char *buf = malloc(n + 1);
            memcpy(buf, files[k], n);
            int mode = (int)(rng_next_u64(&rng) % 3);
            if (mode == 0) n = (size_t)(rng_next_u64(&rng) % (n + 1));  // truncate
            int flips = 1 + (int)(rng_next_u64(&rng) % 8);
            for (int i = 0; i < flips && n > 0; i++) {
                size_t at = (size_t)(rng_next_u64(&rng) % n);
                const char pool[] = "{}[],:\"0123456789-.eE nulltruefalseNaN\n\x00\xff";
                buf[at] = mode == 2 ? pool[rng_next_u64(&rng) % (sizeof pool - 1)] : (char)(rng_next_u64(&rng) & 0xff);
            }
            path_in(p, sizeof p, dir, names[k]);
            FILE *f = fopen(p, "wb");
            if (f) {
                fwrite(buf, 1, n, f);
                fclose(f);
            }
            free(buf);
        }
        RunLog r;
        if (runlog_load(&r, dir, NULL, &err) == 0) {
            // every iteration parses; a few charts every 4th, the full report every 25th
            path_in(p, sizeof p, dir, "f.png");
            if (iters % 4 == 1 && (chart_load_heatmap(&r, 10, p, NULL, &err) || chart_maxvio(&r, p, NULL, &err) ||
                                   chart_coact_within(&r, p, &err) || chart_domains(&r, p, &err)))
                fails++;
            runlog_free(&r);
            if (iters % 25 == 3 && report_write(dir, &err) != 0) fails++;
        } else {
            fails++;
        }
        iters++;
    }
    CHECK(fails == 0, "%d of %d fuzz iterations failed (last: %s)", fails, iters, err.msg);
    CHECK(iters >= 10, "only %d fuzz iterations", iters);
    for (int k = 0; k < 5; k++) free(files[k]);
    test_end();
}

static void test_compare(const char *base) {
    test_begin("compare_runs");
    MoeErr err;
    char a[600], b[600], out[600], p[700];
    snprintf(a, sizeof a, "%s/runA", base);
    snprintf(b, sizeof b, "%s/runB", base);
    snprintf(out, sizeof out, "%s/cmp", base);
    SynthSpec s;
    synth_default(&s);
    s.steps = 120;
    write_synthetic_run(a, &s);
    s.collapse_layer_index = -1;
    s.steps = 150;
    write_synthetic_run(b, &s);
    const char *dirs[2] = {a, b};
    CHECK(report_compare(out, dirs, 2, NULL, &err) == 0, "compare: %s", err.msg);
    const char *files[] = {"compare_loss.png", "compare_val_loss.png", "compare_maxvio.png", "compare_entropy.png",
                           "compare_load.png"};
    for (int k = 0; k < 5; k++) {
        path_in(p, sizeof p, out, files[k]);
        Img img;
        CHECK(load_png(p, &img) == 0, "%s", files[k]);
        if (img.px) {
            CHECK(count_non_white(&img) > 1000, "%s blank", files[k]);
            free(img.px);
        }
    }
    path_in(p, sizeof p, out, "compare.html");
    char *html = NULL;
    size_t n;
    CHECK(read_file_all(p, &html, &n, &err) == 0, "compare.html");
    if (html) {
        CHECK(strstr(html, "href=\"../runA/report.html\"") && strstr(html, "href=\"../runB/report.html\""),
              "run links relative to the compare folder");
        free(html);
    }
    const char *bad[2] = {a, "/nonexistent/run"};
    CHECK(report_compare(out, bad, 2, NULL, &err) != 0 && strstr(err.msg, "/nonexistent/run"), "missing run: %s",
          err.msg);
    test_end();
}

static void test_timing(const char *base) {
    test_begin("report_write_timing_2000x4x8");
    MoeErr err;
    char dir[600];
    snprintf(dir, sizeof dir, "%s/big", base);
    SynthSpec s;
    synth_default(&s);
    s.steps = 2000;
    CHECK(write_synthetic_run(dir, &s) == 0, "write");
    double t0 = wall_seconds();
    clock_t c0 = clock();
    CHECK(report_write(dir, &err) == 0, "report: %s", err.msg);
    double dt = wall_seconds() - t0, cpu = (double)(clock() - c0) / CLOCKS_PER_SEC;
    printf("  report_write on 2000 steps x 4 layers x 8 experts: %.3f s wall, %.3f s CPU\n", dt, cpu);
    CHECK(dt < 30.0, "too slow: %.1f s", dt);
    test_end();
}

int main(int argc, char **argv) {
    if ((argc == 3 || argc == 7) && !strcmp(argv[1], "--write-run")) {
        SynthSpec s;
        synth_default(&s);
        if (argc == 7) {  // --write-run DIR STEPS LAYERS EXPERTS TOPK
            s.steps = atoi(argv[3]);
            s.L = atoi(argv[4]);
            s.E = atoi(argv[5]);
            s.K = atoi(argv[6]);
            if (s.steps < 1 || s.L < 1 || s.E < 6 || s.K < 1 || s.K > s.E) {
                fprintf(stderr, "error: bad synthetic run size\n");
                return 1;
            }
        }
        if (write_synthetic_run(argv[2], &s) != 0) {
            fprintf(stderr, "error: cannot write a synthetic run into %s\n", argv[2]);
            return 1;
        }
        return 0;
    }
    if (argc != 1) {
        fprintf(stderr, "usage: %s [--write-run DIR [STEPS LAYERS EXPERTS TOPK]]\n", argv[0]);
        return 1;
    }
    snprintf(g_tmp, sizeof g_tmp, "/tmp/test_plots_XXXXXX");
    if (!mkdtemp(g_tmp)) {
        printf("FAIL setup: mkdtemp\n");
        return 1;
    }
    char dir[600];
    test_colormaps();
    test_ticks();
    test_canvas_png_text();
    test_heatmap_primitive();
    test_collapse_detector();
    snprintf(dir, sizeof dir, "%s/run", g_tmp);
    test_charts(dir);
    snprintf(dir, sizeof dir, "%s/cap", g_tmp);
    test_dropped_lines(dir);
    test_broken_logs(g_tmp);
    test_fuzz(g_tmp);
    test_compare(g_tmp);
    test_timing(g_tmp);
    if (!getenv("KEEP_TEST_OUTPUT"))
        rm_rf(g_tmp);
    else
        fprintf(stderr, "output kept in %s\n", g_tmp);
    return test_summary();
}
