// Robust reading of a run's JSON-lines logs.
#include "plots/runlog.h"

#include <errno.h>
#include <math.h>
#include <sys/stat.h>

void runlog_note(RunLog *r, const char *fmt, ...) {
    if (r->n_notes >= RUNLOG_MAX_NOTES) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->notes[r->n_notes++], sizeof(r->notes[0]), fmt, ap);
    va_end(ap);
}

// integers we cast from JSON numbers must fit (a float -> int overflow is undefined behaviour)
static int fits_int(double v) { return isfinite(v) && v > -2e9 && v < 2e9; }
static int fits_step(double v) { return isfinite(v) && fabs(v) < 1e15; }

double json_num(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!cJSON_IsNumber(v)) return NAN;
    return v->valuedouble;
}

int jsonl_read(const char *path, JsonLineFn fn, void *ctx, int *n_lines, int *bad, int *truncated, MoeErr *err) {
    char *data = NULL;
    size_t n = 0;
    *n_lines = *bad = *truncated = 0;
    if (read_file_all(path, &data, &n, err) != 0) return -1;
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && data[j] != '\n') j++;
        int last_unterminated = (j == n);
        data[j < n ? j : n] = '\0';
        const char *line = data + i;
        while (*line == ' ' || *line == '\t' || *line == '\r') line++;
        if (*line) {
            cJSON *obj = cJSON_Parse(line);
            if (obj && cJSON_IsObject(obj)) {
                fn(obj, ctx);
                (*n_lines)++;
            } else if (last_unterminated) {
                (*truncated)++;
            } else {
                (*bad)++;
            }
            cJSON_Delete(obj);
        }
        i = j + 1;
    }
    free(data);
    return 0;
}

// grow a malloc'd array of `elem`-byte items to hold at least `need` items
static int grow(void **p, size_t elem, int *cap, int need) {
    if (need <= *cap) return 0;
    int nc = *cap ? *cap : 64;
    while (nc < need) nc *= 2;
    void *q = realloc(*p, elem * (size_t)nc);
    if (!q) return -1;
    *p = q;
    *cap = nc;
    return 0;
}

// ---------------------------------------------------------------------------------------
// train.jsonl

typedef struct {
    TrainLog *t;
    int cap, vcap;
    int oom;
} TrainCtx;

static void train_line(cJSON *o, void *vctx) {
    TrainCtx *c = vctx;
    TrainLog *t = c->t;
    double step = json_num(o, "step");
    if (!fits_step(step)) return;
    double vl = json_num(o, "val_loss");
    int has_loss = cJSON_GetObjectItemCaseSensitive(o, "loss") || cJSON_GetObjectItemCaseSensitive(o, "ce");
    if (cJSON_GetObjectItemCaseSensitive(o, "val_loss") && !has_loss) {
        int cap = c->vcap;
        if (grow((void **)&t->val_step, sizeof(double), &cap, t->n_val + 1) ||
            grow((void **)&t->val_loss, sizeof(double), &c->vcap, t->n_val + 1)) {
            c->oom = 1;
            return;
        }
        t->val_step[t->n_val] = step;
        t->val_loss[t->n_val] = vl;
        t->n_val++;
        return;
    }
    if (!has_loss) return;
    int need = t->n + 1, cap = c->cap;
    double **arrs[6] = {&t->step, &t->loss, &t->ce, &t->lr, &t->grad_norm, &t->tokens_per_s};
    for (int k = 0; k < 6; k++) {
        int cp = cap;
        if (grow((void **)arrs[k], sizeof(double), &cp, need)) {
            c->oom = 1;
            return;
        }
        if (k == 5) c->cap = cp;
    }
    int skipped = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(o, "skipped"));
    t->step[t->n] = step;
    t->loss[t->n] = skipped ? NAN : json_num(o, "loss");
    t->ce[t->n] = skipped ? NAN : json_num(o, "ce");
    t->lr[t->n] = json_num(o, "lr");
    t->grad_norm[t->n] = skipped ? NAN : json_num(o, "grad_norm");
    t->tokens_per_s[t->n] = json_num(o, "tokens_per_s");
    t->n++;
}

// ---------------------------------------------------------------------------------------
// routing.jsonl

typedef struct {
    RunLog *r;
    int cap;
    int oom, bad_layers, k_votes, k_sum;
} RoutingCtx;

static int routing_setup(RoutingLog *g, const cJSON *layers) {
    int L = cJSON_GetArraySize(layers);
    if (L <= 0 || L > 4096) return -1;
    const cJSON *l0 = cJSON_GetArrayItem(layers, 0);
    const cJSON *load = cJSON_GetObjectItemCaseSensitive(l0, "load");
    int E = cJSON_IsArray(load) ? cJSON_GetArraySize(load) : 0;
    if (E <= 0 || E > 65536) return -1;
    g->layer = malloc(sizeof(int) * (size_t)L);
    if (!g->layer) return -1;
    for (int li = 0; li < L; li++) {
        double id = json_num(cJSON_GetArrayItem(layers, li), "layer");
        g->layer[li] = fits_int(id) ? (int)id : li;
    }
    g->L = L;
    g->E = E;
    g->entropy_uniform = log((double)E);
    return 0;
}

static void fill_floats(const cJSON *arr, float *out, int n) {
    for (int i = 0; i < n; i++) {
        const cJSON *v = cJSON_GetArrayItem(arr, i);
        out[i] = cJSON_IsNumber(v) ? (float)v->valuedouble : NAN;
    }
}

static void routing_line(cJSON *o, void *vctx) {
    RoutingCtx *c = vctx;
    RoutingLog *g = &c->r->routing;
    double step = json_num(o, "step");
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(o, "layers");
    if (!fits_step(step) || !cJSON_IsArray(layers)) {
        c->bad_layers++;
        return;
    }
    if (g->L == 0 && routing_setup(g, layers) != 0) {
        c->bad_layers++;
        return;
    }
    int L = g->L, E = g->E, need = g->n + 1;
    if (need > c->cap) {
        int nc = c->cap ? 2 * c->cap : 256;
        while (nc < need) nc *= 2;
        double *s = realloc(g->step, sizeof(double) * (size_t)nc);
        if (s) g->step = s;
        double *tk = realloc(g->tokens, sizeof(double) * (size_t)nc);
        if (tk) g->tokens = tk;
        float *ld = realloc(g->load, sizeof(float) * (size_t)nc * L * E);
        if (ld) g->load = ld;
        float *bs = realloc(g->bias, sizeof(float) * (size_t)nc * L * E);
        if (bs) g->bias = bs;
        float **per[5] = {&g->maxvio, &g->entropy, &g->dropped, &g->top1, &g->usage_entropy};
        int ok = s && tk && ld && bs;
        for (int k = 0; k < 5; k++) {
            float *q = realloc(*per[k], sizeof(float) * (size_t)nc * L);
            if (q)
                *per[k] = q;
            else
                ok = 0;
        }
        if (!ok) {
            c->oom = 1;
            return;
        }
        c->cap = nc;
    }
    int t = g->n;
    g->step[t] = step;
    g->tokens[t] = json_num(o, "tokens");
    size_t base = (size_t)t * L * E;
    for (size_t i = 0; i < (size_t)L * E; i++) g->load[base + i] = g->bias[base + i] = NAN;
    for (int li = 0; li < L; li++) {
        size_t k = (size_t)t * L + li;
        g->maxvio[k] = g->entropy[k] = g->dropped[k] = g->top1[k] = g->usage_entropy[k] = NAN;
    }
    const cJSON *lo;
    int pos = 0;
    cJSON_ArrayForEach(lo, layers) {
        double id = json_num(lo, "layer");
        int li = fits_int(id) ? runlog_layer_index(c->r, (int)id) : (isfinite(id) ? -1 : pos);
        pos++;
        if (li < 0) {
            c->bad_layers++;
            continue;
        }
        const cJSON *load = cJSON_GetObjectItemCaseSensitive(lo, "load");
        if (cJSON_IsArray(load) && cJSON_GetArraySize(load) == E)
            fill_floats(load, g->load + base + (size_t)li * E, E);
        else if (load)
            c->bad_layers++;
        const cJSON *bias = cJSON_GetObjectItemCaseSensitive(lo, "bias");
        if (cJSON_IsArray(bias) && cJSON_GetArraySize(bias) == E) fill_floats(bias, g->bias + base + (size_t)li * E, E);
        size_t k = (size_t)t * L + li;
        g->maxvio[k] = (float)json_num(lo, "maxvio");
        if (!isfinite(g->maxvio[k])) {  // not logged: derive it from the loads
            const float *ld = g->load + base + (size_t)li * E;
            double s = 0, mx = 0;
            for (int e = 0; e < E; e++) {
                s += ld[e];
                if (ld[e] > mx) mx = ld[e];
            }
            if (isfinite(s) && s > 0) g->maxvio[k] = (float)((mx - s / E) / (s / E));
        }
        g->entropy[k] = (float)json_num(lo, "entropy");
        g->dropped[k] = (float)json_num(lo, "dropped");
        g->top1[k] = (float)json_num(lo, "top1_weight");
        g->usage_entropy[k] = (float)json_num(lo, "usage_entropy");
        double eu = json_num(lo, "entropy_uniform");
        if (isfinite(eu) && eu > 0) g->entropy_uniform = eu;
        // top-k from sum(load) = tokens * K
        if (li == 0 && c->k_votes < 8 && isfinite(g->tokens[t]) && g->tokens[t] > 0) {
            double s = 0;
            for (int e = 0; e < E; e++) s += g->load[base + e];
            double kk = s / g->tokens[t];
            if (isfinite(kk) && kk >= 0.5 && kk <= 4096) {
                c->k_sum += (int)lrint(kk);
                c->k_votes++;
            }
        }
    }
    g->n++;
}

int runlog_layer_index(const RunLog *r, int layer) {
    for (int li = 0; li < r->routing.L; li++)
        if (r->routing.layer[li] == layer) return li;
    return -1;
}

// ---------------------------------------------------------------------------------------
// events.jsonl

typedef struct {
    RunLog *r;
    int cap, oom;
} EventCtx;

static void event_line(cJSON *o, void *vctx) {
    EventCtx *c = vctx;
    RunLog *r = c->r;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type");
    double step = json_num(o, "step"), layer = json_num(o, "layer");
    if (!cJSON_IsString(type) || !fits_step(step) || !fits_int(layer)) return;
    int kind = strcmp(type->valuestring, "collapse") == 0 ? COLLAPSE_EVENT_COLLAPSE
               : strcmp(type->valuestring, "recovered") == 0 ? COLLAPSE_EVENT_RECOVERED
                                                                : 0;
    if (!kind) return;
    if (grow((void **)&r->events, sizeof(CollapseEvent), &c->cap, r->n_events + 1)) {
        c->oom = 1;
        return;
    }
    double ex = json_num(o, "expert"), since = json_num(o, "since");
    r->events[r->n_events++] = (CollapseEvent){kind,
                                               (long)step,
                                               fits_step(since) ? (long)since : (long)step,
                                               (int)layer,
                                               fits_int(ex) ? (int)ex : -1,
                                               (float)json_num(o, "share"),
                                               (float)json_num(o, "entropy")};
}

static void detect_events(RunLog *r, const CollapseParams *cp) {
    RoutingLog *g = &r->routing;
    if (g->n == 0) return;
    CollapseDetector det;
    MoeErr e;
    if (collapse_init(&det, g->L, g->E, g->K, cp, &e) != 0) {
        runlog_note(r, "collapse detection skipped: %s", e.msg);
        return;
    }
    int cap = 0;
    for (int t = 0; t < g->n; t++) {
        for (int li = 0; li < g->L; li++) {
            CollapseEvent ev;
            size_t k = (size_t)t * g->L + li;
            if (collapse_update(&det, (long)g->step[t], li, g->layer[li], g->load + k * g->E, g->entropy[k], &ev)) {
                if (grow((void **)&r->events, sizeof(CollapseEvent), &cap, r->n_events + 1)) break;
                r->events[r->n_events++] = ev;
            }
        }
    }
    collapse_free(&det);
}

int runlog_layer_collapsed(const RunLog *r, int li, int *expert) {
    if (li < 0 || li >= r->routing.L) return 0;
    int state = 0;
    for (int i = 0; i < r->n_events; i++) {
        if (r->events[i].layer != r->routing.layer[li]) continue;
        state = r->events[i].type == COLLAPSE_EVENT_COLLAPSE;
        if (state && expert) *expert = r->events[i].expert;
    }
    return state;
}

// ---------------------------------------------------------------------------------------
// coact.jsonl and domains.jsonl: keep the last record

static void keep_last(cJSON *o, void *vctx) {
    cJSON **last = vctx;
    cJSON_Delete(*last);
    *last = cJSON_Duplicate(o, 1);
}

// E x E matrix from [[...]]; returns 0 if the shape is right
static int read_matrix(const cJSON *m, int rows, int cols, float *out) {
    if (!cJSON_IsArray(m) || cJSON_GetArraySize(m) != rows) return -1;
    for (int i = 0; i < rows; i++) {
        const cJSON *row = cJSON_GetArrayItem(m, i);
        if (!cJSON_IsArray(row) || cJSON_GetArraySize(row) != cols) return -1;
        fill_floats(row, out + (size_t)i * cols, cols);
    }
    return 0;
}

static void coact_from_json(RunLog *r, const cJSON *o) {
    CoactLog *c = &r->coact;
    double E = json_num(o, "E"), step = json_num(o, "step");
    const cJSON *within = cJSON_GetObjectItemCaseSensitive(o, "within");
    const cJSON *across = cJSON_GetObjectItemCaseSensitive(o, "across");
    if (!isfinite(E) || E < 1 || E > 4096) {
        runlog_note(r, "coact.jsonl: last record has no valid \"E\"; co-activation charts left out");
        return;
    }
    int e = (int)E, nw = cJSON_IsArray(within) ? cJSON_GetArraySize(within) : 0;
    int na = cJSON_IsArray(across) ? cJSON_GetArraySize(across) : 0;
    c->E = e;
    c->step = fits_int(step) ? (int)step : 0;
    c->tokens = json_num(o, "tokens");
    c->within_layer = malloc(sizeof(int) * (size_t)(nw + 1));
    c->within = malloc(sizeof(float) * (size_t)(nw + 1) * e * e);
    c->across_layer = malloc(sizeof(int) * (size_t)(na + 1) * 2);
    c->across = malloc(sizeof(float) * (size_t)(na + 1) * e * e);
    if (!c->within_layer || !c->within || !c->across_layer || !c->across) return;
    c->across_next = c->across_layer + na + 1;
    int bad = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, within) {
        double l = json_num(it, "layer");
        if (!fits_int(l) ||
            read_matrix(cJSON_GetObjectItemCaseSensitive(it, "counts"), e, e, c->within + (size_t)c->n_within * e * e)) {
            bad++;
            continue;
        }
        c->within_layer[c->n_within++] = (int)l;
    }
    cJSON_ArrayForEach(it, across) {
        double l = json_num(it, "layer"), nx = json_num(it, "next");
        if (!fits_int(l) || !fits_int(nx) ||
            read_matrix(cJSON_GetObjectItemCaseSensitive(it, "counts"), e, e, c->across + (size_t)c->n_across * e * e)) {
            bad++;
            continue;
        }
        c->across_layer[c->n_across] = (int)l;
        c->across_next[c->n_across++] = (int)nx;
    }
    if (bad) runlog_note(r, "coact.jsonl: %d layer entries with a wrong shape were skipped", bad);
    c->present = c->n_within + c->n_across > 0;
}

static void domains_from_json(RunLog *r, const cJSON *o) {
    DomainLog *d = &r->domains;
    const cJSON *names = cJSON_GetObjectItemCaseSensitive(o, "domains");
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(o, "layers");
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(o, "tokens");
    double E = json_num(o, "E"), step = json_num(o, "step");
    int D = cJSON_IsArray(names) ? cJSON_GetArraySize(names) : 0;
    if (D <= 0 || D > 1024 || !isfinite(E) || E < 1 || E > 4096 || !cJSON_IsArray(layers)) {
        runlog_note(r, "domains.jsonl: last record lacks domains, E or layers; specialisation charts left out");
        return;
    }
    int e = (int)E, nl = cJSON_GetArraySize(layers);
    d->D = D;
    d->E = e;
    d->step = fits_int(step) ? (int)step : 0;
    d->names = calloc((size_t)D, sizeof(char *));
    d->dtokens = malloc(sizeof(double) * (size_t)D);
    d->layer = malloc(sizeof(int) * (size_t)(nl + 1));
    d->counts = malloc(sizeof(float) * (size_t)(nl + 1) * D * e);
    if (!d->names || !d->dtokens || !d->layer || !d->counts) return;
    for (int i = 0; i < D; i++) {
        const cJSON *s = cJSON_GetArrayItem(names, i);
        char buf[32];
        snprintf(buf, sizeof buf, "domain %d", i);
        d->names[i] = strdup(cJSON_IsString(s) ? s->valuestring : buf);
        const cJSON *tv = cJSON_IsArray(tok) ? cJSON_GetArrayItem(tok, i) : NULL;
        d->dtokens[i] = cJSON_IsNumber(tv) ? tv->valuedouble : NAN;
    }
    int bad = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, layers) {
        double l = json_num(it, "layer");
        if (!fits_int(l) ||
            read_matrix(cJSON_GetObjectItemCaseSensitive(it, "counts"), D, e, d->counts + (size_t)d->n_layers * D * e)) {
            bad++;
            continue;
        }
        d->layer[d->n_layers++] = (int)l;
    }
    if (bad) runlog_note(r, "domains.jsonl: %d layer entries with a wrong shape were skipped", bad);
    d->present = d->n_layers > 0;
}

// ---------------------------------------------------------------------------------------

static void path_join(char *out, size_t n, const char *dir, const char *file) {
    snprintf(out, n, "%s/%s", dir, file);
}

static void note_read(RunLog *r, const char *file, int lines, int bad, int trunc) {
    if (trunc) runlog_note(r, "%s: the last line is cut off (run in progress or crashed); it was skipped", file);
    if (bad) runlog_note(r, "%s: %d line(s) are not valid JSON (e.g. a bare NaN); they were skipped", file, bad);
    if (lines == 0) runlog_note(r, "%s: no data yet", file);
}

int runlog_load(RunLog *r, const char *run_dir, const CollapseParams *cp, MoeErr *err) {
    memset(r, 0, sizeof(*r));
    struct stat st;
    if (stat(run_dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return moe_err_set(err, "%s: not a run folder (%s)", run_dir, stat(run_dir, &st) != 0 ? strerror(errno) : "not a directory");
    snprintf(r->dir, sizeof r->dir, "%s", run_dir);
    const char *base;
    size_t len = strlen(run_dir);
    while (len > 1 && run_dir[len - 1] == '/') len--;
    // name = last path component
    {
        char tmp[1024];
        snprintf(tmp, sizeof tmp, "%.*s", (int)len, run_dir);
        base = strrchr(tmp, '/');
        snprintf(r->name, sizeof r->name, "%.255s", base ? base + 1 : tmp);
        snprintf(r->folder, sizeof r->folder, "%s", r->name);
    }
    char path[1200];
    int found = 0;
    MoeErr e2;

    path_join(path, sizeof path, run_dir, "run.json");
    char *txt = NULL;
    size_t n = 0;
    if (read_file_all(path, &txt, &n, &e2) == 0) {
        found++;
        r->run = cJSON_Parse(txt);
        if (!r->run || !cJSON_IsObject(r->run)) {
            cJSON_Delete(r->run);
            r->run = NULL;
            runlog_note(r, "run.json: not valid JSON; configuration unknown");
        } else {
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(r->run, "name");
            if (cJSON_IsString(nm) && nm->valuestring[0]) snprintf(r->name, sizeof r->name, "%.255s", nm->valuestring);
        }
        free(txt);
    } else {
        runlog_note(r, "run.json: missing; configuration unknown");
    }
    path_join(path, sizeof path, run_dir, "FINISHED");
    r->finished = file_exists(path);

    int lines, bad, trunc;
    TrainCtx tc = {&r->train, 0, 0, 0};
    path_join(path, sizeof path, run_dir, "train.jsonl");
    if (jsonl_read(path, train_line, &tc, &lines, &bad, &trunc, &e2) == 0) {
        found++;
        note_read(r, "train.jsonl", lines, bad, trunc);
    } else {
        runlog_note(r, "train.jsonl: missing");
    }
    if (tc.oom) return moe_err_set(err, "%s: out of memory reading train.jsonl", run_dir);

    RoutingCtx rc = {r, 0, 0, 0, 0, 0};
    path_join(path, sizeof path, run_dir, "routing.jsonl");
    if (jsonl_read(path, routing_line, &rc, &lines, &bad, &trunc, &e2) == 0) {
        found++;
        note_read(r, "routing.jsonl", lines, bad, trunc);
        if (rc.bad_layers)
            runlog_note(r, "routing.jsonl: %d entries with missing or mismatched layers/sizes were skipped",
                        rc.bad_layers);
    } else {
        runlog_note(r, "routing.jsonl: missing");
    }
    if (rc.oom) return moe_err_set(err, "%s: out of memory reading routing.jsonl", run_dir);
    if (!found) return moe_err_set(err, "%s: no run.json, train.jsonl or routing.jsonl here", run_dir);

    // top-k: run.json config, else inferred from sum(load) = tokens x K
    RoutingLog *g = &r->routing;
    const cJSON *cfg = r->run ? cJSON_GetObjectItemCaseSensitive(r->run, "config") : NULL;
    double k = json_num(cfg, "top_k");
    g->K = fits_int(k) && k >= 1 ? (int)k : (rc.k_votes ? (rc.k_sum + rc.k_votes / 2) / rc.k_votes : 1);
    if (g->E > 0 && (g->K < 1 || g->K > g->E)) g->K = 1;

    EventCtx ec = {r, 0, 0};
    path_join(path, sizeof path, run_dir, "events.jsonl");
    if (file_exists(path) && jsonl_read(path, event_line, &ec, &lines, &bad, &trunc, &e2) == 0) {
        r->events_from_file = 1;
        if (trunc || bad) runlog_note(r, "events.jsonl: %d bad or cut-off line(s) skipped", bad + trunc);
    } else {
        detect_events(r, cp);
    }

    cJSON *last = NULL;
    path_join(path, sizeof path, run_dir, "coact.jsonl");
    if (file_exists(path) && jsonl_read(path, keep_last, &last, &lines, &bad, &trunc, &e2) == 0 && last) {
        coact_from_json(r, last);
    } else {
        runlog_note(r, "coact.jsonl: %s; co-activation charts left out", file_exists(path) ? "no valid record" : "not written (yet)");
    }
    cJSON_Delete(last);
    last = NULL;
    path_join(path, sizeof path, run_dir, "domains.jsonl");
    if (file_exists(path) && jsonl_read(path, keep_last, &last, &lines, &bad, &trunc, &e2) == 0 && last) {
        domains_from_json(r, last);
    } else {
        runlog_note(r, "domains.jsonl: %s; domain specialisation charts left out",
                    file_exists(path) ? "no valid record" : "not written (yet)");
    }
    cJSON_Delete(last);
    return 0;
}

void runlog_free(RunLog *r) {
    cJSON_Delete(r->run);
    TrainLog *t = &r->train;
    free(t->step);
    free(t->loss);
    free(t->ce);
    free(t->lr);
    free(t->grad_norm);
    free(t->tokens_per_s);
    free(t->val_step);
    free(t->val_loss);
    RoutingLog *g = &r->routing;
    free(g->layer);
    free(g->step);
    free(g->tokens);
    free(g->load);
    free(g->bias);
    free(g->maxvio);
    free(g->entropy);
    free(g->dropped);
    free(g->top1);
    free(g->usage_entropy);
    free(r->events);
    free(r->coact.within_layer);
    free(r->coact.within);
    free(r->coact.across_layer);
    free(r->coact.across);
    if (r->domains.names)
        for (int i = 0; i < r->domains.D; i++) free(r->domains.names[i]);
    free(r->domains.names);
    free(r->domains.dtokens);
    free(r->domains.layer);
    free(r->domains.counts);
    memset(r, 0, sizeof(*r));
}
