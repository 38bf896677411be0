// speculate: traces -> speculator training, evaluation against every baseline, offloading
// simulation, charts.
//
//   speculate [flags] TRACE [TRACE...]      (or --synthetic for a planted-rule demo)
//
// Prints one table (method x metric, the random value beside each) and the cache simulation;
// writes OUT/metrics.tsv (per method, lookahead, target layer, domain), OUT/cache.tsv,
// OUT/spec_bce_rank.spec, OUT/spec_listwise.spec, OUT/recall_per_layer.png,
// OUT/hit_rate_vs_cache.png.
#include <math.h>
#include <omp.h>

#include "common/util.h"
#include "plots/chart.h"
#include "speculate/cache.h"
#include "speculate/eval.h"
#include "speculate/mlp.h"
#include "speculate/synth.h"
#include "speculate/train.h"
#include "speculate/trace.h"

#define MAX_TRACES 64
#define MAX_SCEN 8

typedef struct {
    const char *traces[MAX_TRACES];
    int n_traces;
    int synthetic;
    const char *out;
    const char *save_trace;
    uint64_t seed;
    float val_frac, test_frac;
    int D, B;
    int H, n_hidden, n_tok, n_pos, reuse_feature;  // reuse_feature: -1 auto
    float rank_weight;
    int epochs, patience, batch;
    float lr, wd;
    size_t max_val;
    int train;
    const char *load[2];
    char scen[MAX_SCEN][32];
    int n_scen;
    double pcie_gbs, hbm_gbs, layer_ms;
    int ctx, prefetch, ahead;
    size_t cache_tokens;
    int plots;
    SynthConfig syn;
} Opts;

static void usage(FILE *f, const Opts *o) {
    fprintf(f,
            "usage: speculate [flags] TRACE [TRACE...]\n"
            "Trains and evaluates expert speculators on routing traces (.trace), compares them with the\n"
            "baselines, and simulates expert offloading.\n"
            "data:\n"
            "  --synthetic            use a synthetic planted-rule trace instead of files (default off)\n"
            "  --syn-p F              synthetic routing noise per slot (default %.2f)\n"
            "  --syn-seqs N           synthetic sequences (default %d)\n"
            "  --syn-experts E        synthetic experts per layer (default %d)\n"
            "  --syn-topk K           synthetic experts per token (default %d)\n"
            "  --syn-layers M         synthetic MoE layers (default %d)\n"
            "  --save-trace PATH      also write the (merged or synthetic) trace to PATH (default none)\n"
            "  --seed N               split seed; sequences go to train/val/test (default %llu)\n"
            "  --val-frac F           share of sequences for validation (default %.2f)\n"
            "  --test-frac F          share of sequences for test (default %.2f)\n"
            "evaluation:\n"
            "  --lookahead D          predict layers l+1..l+D, D <= 3 (default %d)\n"
            "  --budget B             recall@B budget, K < B <= 2K (default 0 = min(2K, E))\n"
            "learned speculator:\n"
            "  --hidden H             hidden width (default %d)\n"
            "  --depth N              residual hidden layers, 1-2 (default %d)\n"
            "  --tok-buckets N        token-id hash buckets (default %d)\n"
            "  --pos-buckets N        position buckets (default %d)\n"
            "  --reuse-feature N      use the gate-reuse field as a feature: -1 auto, 0, 1 (default %d)\n"
            "  --rank-weight F        weight of the pairwise ranking term of BCE+rank (default %.2f)\n"
            "  --epochs N             max epochs (default %d)\n"
            "  --patience N           early stopping patience in epochs (default %d)\n"
            "  --batch N              samples per AdamW step (default %d)\n"
            "  --lr F                 AdamW learning rate (default %g)\n"
            "  --wd F                 AdamW weight decay (default %g)\n"
            "  --max-val N            validation records per epoch, 0 = all (default %zu)\n"
            "  --no-train             skip training: baselines only, or with --load (default off)\n"
            "  --load PATH            evaluate a saved .spec instead of training, one per loss (default none)\n"
            "offloading simulation:\n"
            "  --scenario FMT:GiB     weight format (nf4, nf4-dq, int8, bf16, fp16, fp32) and GPU memory;\n"
            "                         repeatable (default nf4:8 and bf16:24, DeepSeek-MoE-16B config)\n"
            "  --pcie-gbs F           host-to-device GB/s (default %.1f, PCIe 4.0 x16 effective)\n"
            "  --hbm-gbs F            GPU memory GB/s for the layer compute time (default %.0f)\n"
            "  --layer-ms F           override the per-layer compute time, ms (default 0 = from --hbm-gbs)\n"
            "  --ctx N                KV-cache tokens reserved on the GPU (default %d)\n"
            "  --prefetch P           experts prefetched per layer (default 0 = K)\n"
            "  --prefetch-ahead A     prefetch layer l+A while layer l computes, A <= lookahead (default %d)\n"
            "  --cache-tokens N       test tokens simulated, 0 = all (default %zu)\n"
            "output:\n"
            "  --out DIR              output folder (default %s)\n"
            "  --no-plots             skip the PNG charts (default off)\n"
            "  -h, --help             this help\n",
            (double)o->syn.p, o->syn.n_seq, o->syn.E, o->syn.K, o->syn.M, (unsigned long long)o->seed, (double)o->val_frac,
            (double)o->test_frac, o->D, o->H, o->n_hidden, o->n_tok, o->n_pos, o->reuse_feature,
            (double)o->rank_weight, o->epochs, o->patience, o->batch, (double)o->lr, (double)o->wd, o->max_val,
            o->pcie_gbs, o->hbm_gbs, o->ctx, o->ahead, o->cache_tokens, o->out);
}

static void defaults(Opts *o) {
    memset(o, 0, sizeof(*o));
    o->out = "runs/speculate";
    o->seed = 1337;
    o->val_frac = 0.1f;
    o->test_frac = 0.2f;
    o->D = 3;
    o->B = 0;
    o->H = 128;
    o->n_hidden = 1;
    o->n_tok = 16384;
    o->n_pos = 24;
    o->reuse_feature = -1;
    o->rank_weight = 1.0f;
    o->epochs = 20;
    o->patience = 3;
    o->batch = 256;
    o->lr = 3e-3f;
    o->wd = 1e-4f;
    o->max_val = 20000;
    o->train = 1;
    o->pcie_gbs = 25.0;
    o->hbm_gbs = 360.0;
    o->layer_ms = 0;
    o->ctx = 2048;
    o->prefetch = 0;
    o->ahead = 1;
    o->cache_tokens = 20000;
    o->plots = 1;
    SynthConfig s = {.E = 64, .K = 6, .M = 8, .n_seq = 400, .seq_len = 64, .vocab = 2000, .n_domains = 2,
                     .p = 0.1f, .q = 0.15f, .reuse = 1, .seed = 1};
    o->syn = s;
}

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "speculate: error: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(EXIT_FAILURE);
}

static long parse_long(const char *flag, const char *v, long lo, long hi) {
    char *end;
    long x = strtol(v, &end, 10);
    if (*v == '\0' || *end != '\0' || x < lo || x > hi) die("%s expects an integer in %ld..%ld, got '%s'", flag, lo, hi, v);
    return x;
}
static double parse_double(const char *flag, const char *v, double lo, double hi) {
    char *end;
    double x = strtod(v, &end);
    if (*v == '\0' || *end != '\0' || !(x >= lo && x <= hi)) die("%s expects a number in %g..%g, got '%s'", flag, lo, hi, v);
    return x;
}

static void parse_args(Opts *o, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout, o);
            exit(0);
        }
        if (a[0] != '-') {
            if (o->n_traces >= MAX_TRACES) die("too many trace files (at most %d)", MAX_TRACES);
            o->traces[o->n_traces++] = a;
            continue;
        }
        if (!strcmp(a, "--synthetic")) { o->synthetic = 1; continue; }
        if (!strcmp(a, "--no-train")) { o->train = 0; continue; }
        if (!strcmp(a, "--no-plots")) { o->plots = 0; continue; }
        static const char *valued[] = {"--syn-p", "--syn-seqs", "--syn-experts", "--syn-topk", "--syn-layers",
                                       "--save-trace", "--seed", "--val-frac", "--test-frac", "--lookahead",
                                       "--budget", "--hidden", "--depth", "--tok-buckets", "--pos-buckets",
                                       "--reuse-feature", "--rank-weight", "--epochs", "--patience", "--batch", "--lr",
                                       "--wd", "--max-val", "--load", "--scenario", "--pcie-gbs", "--hbm-gbs",
                                       "--layer-ms", "--ctx", "--prefetch", "--prefetch-ahead", "--cache-tokens", "--out"};
        int known = 0;
        for (size_t q = 0; q < sizeof valued / sizeof valued[0]; q++) known |= !strcmp(a, valued[q]);
        if (!known) die("unknown flag '%s' (see -h)", a);
        if (i + 1 >= argc) die("flag %s needs a value (see -h)", a);
        const char *v = argv[++i];
        if (!strcmp(a, "--syn-p")) o->syn.p = (float)parse_double(a, v, 0, 1);
        else if (!strcmp(a, "--syn-seqs")) o->syn.n_seq = (int)parse_long(a, v, 3, 1000000);
        else if (!strcmp(a, "--syn-experts")) o->syn.E = (int)parse_long(a, v, 2, 65535);
        else if (!strcmp(a, "--syn-topk")) o->syn.K = (int)parse_long(a, v, 1, TRACE_MAX_K);
        else if (!strcmp(a, "--syn-layers")) o->syn.M = (int)parse_long(a, v, 2, TRACE_MAX_LAYERS);
        else if (!strcmp(a, "--save-trace")) o->save_trace = v;
        else if (!strcmp(a, "--seed")) o->seed = (uint64_t)parse_long(a, v, 0, 0x7fffffffffffffffL);
        else if (!strcmp(a, "--val-frac")) o->val_frac = (float)parse_double(a, v, 0, 0.9);
        else if (!strcmp(a, "--test-frac")) o->test_frac = (float)parse_double(a, v, 0.001, 0.9);
        else if (!strcmp(a, "--lookahead")) o->D = (int)parse_long(a, v, 1, SPEC_MAX_D);
        else if (!strcmp(a, "--budget")) o->B = (int)parse_long(a, v, 0, 2 * TRACE_MAX_K);
        else if (!strcmp(a, "--hidden")) o->H = (int)parse_long(a, v, 1, 4096);
        else if (!strcmp(a, "--depth")) o->n_hidden = (int)parse_long(a, v, 1, 4);
        else if (!strcmp(a, "--tok-buckets")) o->n_tok = (int)parse_long(a, v, 1, 1 << 24);
        else if (!strcmp(a, "--pos-buckets")) o->n_pos = (int)parse_long(a, v, 1, 1024);
        else if (!strcmp(a, "--reuse-feature")) o->reuse_feature = (int)parse_long(a, v, -1, 1);
        else if (!strcmp(a, "--rank-weight")) o->rank_weight = (float)parse_double(a, v, 0, 100);
        else if (!strcmp(a, "--epochs")) o->epochs = (int)parse_long(a, v, 1, 100000);
        else if (!strcmp(a, "--patience")) o->patience = (int)parse_long(a, v, 1, 100000);
        else if (!strcmp(a, "--batch")) o->batch = (int)parse_long(a, v, 1, 1 << 20);
        else if (!strcmp(a, "--lr")) o->lr = (float)parse_double(a, v, 1e-8, 10);
        else if (!strcmp(a, "--wd")) o->wd = (float)parse_double(a, v, 0, 10);
        else if (!strcmp(a, "--max-val")) o->max_val = (size_t)parse_long(a, v, 0, 1L << 40);
        else if (!strcmp(a, "--load")) {
            if (o->load[0] && o->load[1]) die("--load given more than twice");
            o->load[o->load[0] ? 1 : 0] = v;
        } else if (!strcmp(a, "--scenario")) {
            if (o->n_scen >= MAX_SCEN) die("too many --scenario (at most %d)", MAX_SCEN);
            if (strlen(v) >= sizeof o->scen[0] || !strchr(v, ':')) die("--scenario expects FORMAT:GiB, got '%s'", v);
            snprintf(o->scen[o->n_scen++], sizeof o->scen[0], "%s", v);
        } else if (!strcmp(a, "--pcie-gbs")) o->pcie_gbs = parse_double(a, v, 1e-3, 1e4);
        else if (!strcmp(a, "--hbm-gbs")) o->hbm_gbs = parse_double(a, v, 1e-3, 1e5);
        else if (!strcmp(a, "--layer-ms")) o->layer_ms = parse_double(a, v, 0, 1e4);
        else if (!strcmp(a, "--ctx")) o->ctx = (int)parse_long(a, v, 0, 1 << 24);
        else if (!strcmp(a, "--prefetch")) o->prefetch = (int)parse_long(a, v, 0, 65535);
        else if (!strcmp(a, "--prefetch-ahead")) o->ahead = (int)parse_long(a, v, 1, SPEC_MAX_D);
        else if (!strcmp(a, "--cache-tokens")) o->cache_tokens = (size_t)parse_long(a, v, 0, 1L << 40);
        else if (!strcmp(a, "--out")) o->out = v;
        else die("unknown flag '%s' (see -h)", a);
    }
    if (o->n_scen == 0) {
        snprintf(o->scen[0], sizeof o->scen[0], "nf4:8");
        snprintf(o->scen[1], sizeof o->scen[1], "bf16:24");
        o->n_scen = 2;
    }
    if (!o->synthetic && o->n_traces == 0) die("no trace files given (see -h; --synthetic for a demo)");
    if (o->synthetic && o->n_traces) die("give either trace files or --synthetic, not both");
    if (o->val_frac + o->test_frac >= 0.95f) die("--val-frac + --test-frac must be below 0.95");
    if (o->syn.K >= o->syn.E) die("--syn-topk must be below --syn-experts");
    if (o->ahead > o->D) die("--prefetch-ahead %d exceeds --lookahead %d", o->ahead, o->D);
}

// ---------------------------------------------------------------------------------------

static void load_traces(const Opts *o, Trace *t) {
    MoeErr err;
    if (o->synthetic) {
        if (synth_trace(t, &o->syn, NULL, &err)) die("%s", err.msg);
        return;
    }
    Trace *parts = callocCheck((size_t)o->n_traces, sizeof(Trace));
    for (int j = 0; j < o->n_traces; j++)
        if (trace_read(o->traces[j], &parts[j], &err)) die("%s", err.msg);
    if (trace_concat(t, parts, o->n_traces, o->traces, &err)) die("%s", err.msg);
    for (int j = 0; j < o->n_traces; j++) trace_free(&parts[j]);
    free(parts);
}

static void train_speculators(const Opts *o, SpecData *sd, SpecModel *mods, int *have) {
    const Trace *t = sd->t;
    MoeErr err;
    char path[1200];
    for (int j = 0; j < 2; j++) {
        if (!o->load[j]) continue;
        SpecModel m;
        if (spec_load(&m, o->load[j], &err)) die("%s", err.msg);
        if (spec_check_compat(&m, &t->h, o->load[j], &err)) die("%s", err.msg);
        if (m.split_seed != o->seed || m.val_frac != o->val_frac || m.test_frac != o->test_frac)
            die("%s: trained with split seed %llu (val %.2f test %.2f) but this run uses seed %llu (val %.2f test %.2f): "
                "its test split would leak into training; pass the same --seed/--val-frac/--test-frac",
                o->load[j], (unsigned long long)m.split_seed, (double)m.val_frac, (double)m.test_frac,
                (unsigned long long)o->seed, (double)o->val_frac, (double)o->test_frac);
        if (have[m.c.loss]) die("%s: two speculators with the same loss given", o->load[j]);
        mods[m.c.loss] = m;
        have[m.c.loss] = 1;
        printf("loaded %s (%s loss, H %d, depth %d)\n", o->load[j], m.c.loss ? "listwise" : "BCE+rank", m.c.H,
               m.c.n_hidden);
    }
    if (!o->train) return;
    int use_reuse = o->reuse_feature < 0 ? t->reuse != NULL : o->reuse_feature;
    if (use_reuse && !t->reuse) die("--reuse-feature 1 but the traces have no gate-reuse field");
    for (int loss = 0; loss < 2; loss++) {
        if (have[loss]) continue;
        SpecConfig c = {.E = sd->E, .K = sd->K, .M = sd->M, .D = sd->D, .H = o->H, .n_hidden = o->n_hidden,
                        .n_tok = o->n_tok, .n_pos = o->n_pos, .use_reuse = use_reuse, .loss = loss,
                        .rank_weight = o->rank_weight};
        if (spec_init(&mods[loss], &c, &t->h, o->seed + 101 + (uint64_t)loss, &err)) die("%s", err.msg);
        mods[loss].split_seed = o->seed;
        mods[loss].val_frac = o->val_frac;
        mods[loss].test_frac = o->test_frac;
        SpecTrainOpts to = {.max_epochs = o->epochs, .patience = o->patience, .batch = o->batch, .lr = o->lr,
                            .wd = o->wd, .seed = o->seed + 7, .max_val = o->max_val, .verbose = 1};
        printf("training %s speculator: %zu parameters, %zu train samples, H %d, depth %d, gate-reuse feature %s\n",
               method_names[loss ? METHOD_MLP_LIST : METHOD_MLP_BCE], mods[loss].n_params,
               sd->n_rec[SPLIT_TRAIN] * (size_t)(sd->M - 1), o->H, o->n_hidden, use_reuse ? "on" : "off");
        SpecTrainLog lg;
        if (spec_train(&mods[loss], sd, &to, &lg, &err)) die("%s", err.msg);
        printf("  done: %d epochs in %.1f s (%.0f samples/s), best epoch %d, val recall@K %.4f\n", lg.epochs_run,
               lg.seconds, lg.seconds > 0 ? (double)lg.train_samples * lg.epochs_run / lg.seconds : 0,
               lg.best_epoch, lg.best_val_recall);
        snprintf(path, sizeof path, "%s/spec_%s.spec", o->out, loss ? "listwise" : "bce_rank");
        if (spec_save(&mods[loss], path, &err)) die("%s", err.msg);
        printf("  saved %s\n", path);
        have[loss] = 1;
    }
}

static double mean(double s, double n) { return n > 0 ? s / n : NAN; }

// single-thread latency of one prediction (one token at one layer, all lookaheads), microseconds
static double spec_latency_us(const SpecModel *m, const SpecData *sd) {
    SpecScratch s;
    spec_scratch_init(&s, &m->c);
    float *z = mallocCheck(sizeof(float) * SPEC_MAX_D * (size_t)m->c.E);
    size_t nr = sd->n_rec[SPLIT_TEST], n = 0;
    double t0 = wall_seconds();
    for (size_t r = 0; r < nr && n < 20000; r++)
        for (int l = 0; l + 1 < sd->M; l++, n++) {
            SpecInput in;
            spec_input_from_trace(sd->t, sd->rec[SPLIT_TEST][r], l, m->c.D, m->c.use_reuse, &in);
            spec_forward(m, &in, z, &s);
        }
    double us = n ? (wall_seconds() - t0) / (double)n * 1e6 : NAN;
    free(z);
    spec_scratch_free(&s);
    return us;
}

static void write_metrics_tsv(const Opts *o, const SpecData *sd, Metrics *mt) {
    char path[1200];
    snprintf(path, sizeof path, "%s/metrics.tsv", o->out);
    FILE *f = fopenCheck(path, "w");
    int E = sd->E, K = sd->K, B = sd->B;
    fprintf(f, "# split test; K %d B %d E %d; random: recall@K %.6f recall@B %.6f exact %.3e top1 %.6f\n", K, B, E,
            random_recall_k(E, K), random_recall_b(E, B), random_exact(E, K), random_top1(E));
    fprintf(f, "method\td\ttarget_layer\tdomain\tn\trecall_at_K\trecall_at_B\texact\ttop1\n");
    for (int m = 0; m < N_METHODS; m++) {
        if (!mt[m].s) continue;
        for (int d = 0; d <= sd->D; d++) {
            if (d > 0 && !method_available(sd, m, d)) continue;
            for (int lt = -1; lt < sd->M; lt++)
                for (int dom = -1; dom < sd->n_dom; dom++) {
                    MetricSum s = metrics_total(&mt[m], d > 0 ? d : -1, lt, dom);
                    if (s.n == 0) continue;
                    char ls[16], ds[16];
                    snprintf(ls, sizeof ls, "%d", lt >= 0 ? sd->t->h.layer_idx[lt] : -1);
                    snprintf(ds, sizeof ds, "%d", d);
                    fprintf(f, "%s\t%s\t%s\t%s\t%.0f\t%.6f\t%.6f\t%.6f\t%.6f\n", method_names[m], d ? ds : "all",
                            lt >= 0 ? ls : "all", dom >= 0 ? sd->t->h.domains[dom] : "all", s.n, s.rk / s.n,
                            s.rb / s.n, s.exact / s.n, s.top1 / s.n);
                }
        }
    }
    fclose(f);
    printf("per-layer, per-domain metrics: %s\n", path);
}

static void print_table(const SpecData *sd, Metrics *mt) {
    int E = sd->E, K = sd->K, B = sd->B;
    double rk = random_recall_k(E, K), rb = random_recall_b(E, B), rx = random_exact(E, K), r1 = random_top1(E);
    printf("\nExpert prediction on the test split (%zu tokens of %zu sequences; E %d, K %d, B %d); (random) = expected "
           "value of a random guess; ±95%% = confidence half-width with sequences as clusters; n = predictions\n",
           sd->n_rec[SPLIT_TEST], sd->n_seq[SPLIT_TEST], E, K, B);
    printf("%-14s %-3s %9s %-9s %7s %9s %-9s %9s %-10s %7s %9s %-9s %9s\n", "method", "d", "recall@K", "(random)", "±95%",
           "recall@B", "(random)", "exact", "(random)", "±95%", "top1", "(random)", "n");
    for (int m = 0; m < N_METHODS; m++) {
        if (!mt[m].s) continue;
        for (int d = 1; d <= sd->D + 1; d++) {
            int dd = d <= sd->D ? d : -1;
            if (dd > 0 && !method_available(sd, m, dd)) {
                printf("%-14s %-3d %9s\n", method_names[m], d, "n/a");
                continue;
            }
            MetricSum s = metrics_total(&mt[m], dd, -1, -1);
            if (s.n == 0) continue;
            char dl[16];
            snprintf(dl, sizeof dl, "%d", d);
            double hk, hx;
            metrics_ci95(&mt[m], dd, &hk, &hx);
            printf("%-14s %-3s %9.4f (%6.4f) %7.4f %9.4f (%6.4f) %9.4f (%7.1e) %7.4f %9.4f (%6.4f) %9.0f\n",
                   method_names[m], dd > 0 ? dl : "all", mean(s.rk, s.n), rk, hk, mean(s.rb, s.n), rb,
                   mean(s.exact, s.n), rx, hx, mean(s.top1, s.n), r1, s.n);
        }
    }
}

// ---------------------------------------------------------------------------------------
// offloading

typedef struct {
    uint16_t *ids;      // (n, M, K) test tokens in decode order
    uint16_t *pred[2];  // (n, M, P) prefetch lists: [0] speculator, [1] best baseline
    int method[2];
    size_t n;
    int P, ahead;
} CacheInput;

// prefetch lists: row l = top-P experts of layer l+ahead predicted at layer l
static void build_predictions(const SpecData *sd, int method, const size_t *recs, size_t n, int P, int ahead,
                              uint16_t *out) {
    int E = sd->E, M = sd->M;
    const SpecConfig *mc = NULL;
    if (method == METHOD_MLP_BCE || method == METHOD_MLP_LIST) mc = &sd->mlp[method == METHOD_MLP_LIST]->c;
#pragma omp parallel
    {
        float *sc = mallocCheck(sizeof(float) * SPEC_MAX_D * (size_t)E);
        SpecScratch s;
        memset(&s, 0, sizeof s);
        if (mc) spec_scratch_init(&s, mc);
#pragma omp for schedule(dynamic, 64)
        for (size_t j = 0; j < n; j++) {
            uint64_t rng = rng_seed(recs[j] + 12345);
            for (int l = 0; l < M; l++) {
                uint16_t *o = out + (j * M + l) * (size_t)P;
                if (l + ahead >= M) {
                    for (int p = 0; p < P; p++) o[p] = 0xFFFF;
                    continue;
                }
                method_scores(sd, method, recs[j], l, sc, &rng, mc ? &s : NULL);
                rank_top(sc + (size_t)(ahead - 1) * E, sd->freq + (size_t)(l + ahead) * E, E, P, o);
            }
        }
        free(sc);
        if (mc) spec_scratch_free(&s);
    }
}

static void scenario_from_opt(const Opts *o, const char *spec, Scenario *s) {
    char fmt[32];
    snprintf(fmt, sizeof fmt, "%s", spec);
    char *colon = strchr(fmt, ':');
    *colon = '\0';
    double gib = parse_double("--scenario", colon + 1, 0.01, 1e5);
    char name[96];
    snprintf(name, sizeof name, "DeepSeek-MoE-16B %.8s on %g GiB", fmt, gib);
    scenario_default(s, name, "bf16", gib);
    MoeErr err;
    if (scenario_set_format(s, fmt, &err)) die("--scenario %s: %s", spec, err.msg);
    s->pcie_gbs = o->pcie_gbs;
    s->hbm_gbs = o->hbm_gbs;
    s->layer_ms = o->layer_ms;
    s->kv_tokens = o->ctx;
}

static const char *policy_names[4] = {"LRU", "LRU+speculator", "LRU+best-baseline", "Belady (no prefetch)"};

static int run_policy(const SpecData *sd, const CacheInput *ci, int pol, int C, const ScenarioSizes *z,
                      CacheStats *st) {
    MoeErr err;
    const uint16_t *pred = pol == 1 ? ci->pred[0] : pol == 2 ? ci->pred[1] : NULL;
    if ((pol == 1 || pol == 2) && !pred) return -1;
    if (cache_simulate(ci->ids, ci->n, sd->M, sd->K, sd->E, C, pol == 3 ? CACHE_BELADY : CACHE_LRU, pred, ci->P,
                       ci->ahead, z->expert_bytes, z->xfer_s, z->layer_s, st, &err))
        die("%s", err.msg);
    return 0;
}

static void plot_hit_rate(const Opts *o, const SpecData *sd, const CacheInput *ci, const ScenarioSizes *z, int Cscn,
                          const char *scen_name);

static void offload(const Opts *o, const SpecData *sd, const CacheInput *ci) {
    char path[1200];
    snprintf(path, sizeof path, "%s/cache.tsv", o->out);
    FILE *f = fopenCheck(path, "w");
    fprintf(f, "scenario\tpolicy\tC\tE\thit_rate\tlate_rate\tmiss_rate\tprefetch_used\tMB_per_token\tstall_ms_per_token\t"
               "compute_ms_per_token\n");
    printf("\nExpert offloading: %zu test tokens in decode order (batch 1), %d MoE layers, prefetch %d experts per "
           "layer for layer l+%d while layer l computes (speculator: %s, best baseline on validation: %s)\n",
           ci->n, sd->M, ci->P, ci->ahead, ci->pred[0] ? method_names[ci->method[0]] : "none",
           ci->pred[1] ? method_names[ci->method[1]] : "none");
    for (int si = 0; si < o->n_scen; si++) {
        Scenario s;
        ScenarioSizes z;
        MoeErr err;
        scenario_from_opt(o, o->scen[si], &s);
        if (scenario_sizes(&s, &z, &err)) die("%s", err.msg);
        int n_moe = s.n_layers - s.n_dense_layers;
        printf("\n%s: expert %.2f MB (%ld x %ld x 3 params, %.3g bits), all %d x %d experts %.2f GB; non-expert "
               "weights %.2f GB, KV cache %.2f GB, reserve %.2f GB -> %.2f GB for experts = %d per layer of %d\n",
               s.name, z.expert_bytes / 1e6, s.hidden, s.moe_inter, s.bits_linear, s.n_experts, n_moe,
               z.all_experts_bytes / 1e9, z.nonexpert_bytes / 1e9, z.kv_bytes / 1e9, z.reserve_bytes / 1e9,
               z.free_bytes / 1e9, z.cache_per_layer, s.n_experts);
        if (z.cache_per_layer >= s.n_experts) {
            printf("  all experts fit: no offloading needed in this scenario\n");
            continue;
        }
        double frac = (double)z.cache_per_layer / s.n_experts;
        int C = (int)floor(frac * sd->E + 0.5);
        if (C < sd->K) C = sd->K;
        if (C > sd->E) C = sd->E;
        if (sd->E != s.n_experts || sd->M != n_moe)
            printf("  note: traces have E %d, %d MoE layers; the cache keeps the same share of each layer: C = %d of %d\n",
                   sd->E, sd->M, C, sd->E);
        printf("  per layer: compute %.3f ms (window for prefetch), one expert transfer %.3f ms at %.1f GB/s\n",
               z.layer_s * 1e3, z.xfer_s * 1e3, s.pcie_gbs);
        printf("  %-20s %8s %8s %8s %9s %12s %14s %14s\n", "policy", "hit", "late", "miss", "pf.used", "MB/token",
               "stall ms/tok", "compute ms/tok");
        for (int pol = 0; pol < 4; pol++) {
            CacheStats st;
            if (run_policy(sd, ci, pol, C, &z, &st)) {
                printf("  %-20s %8s\n", policy_names[pol], "n/a");
                continue;
            }
            double a = st.accesses;
            char pf[32] = "-";
            if (st.prefetched > 0) snprintf(pf, sizeof pf, "%.4f", st.prefetch_used / st.prefetched);
            printf("  %-20s %8.4f %8.4f %8.4f %9s %12.2f %14.3f %14.3f\n", policy_names[pol], st.hits / a,
                   st.late / a, st.misses / a, pf, st.bytes / st.tokens / 1e6, st.stall_s / st.tokens * 1e3,
                   st.compute_s / st.tokens * 1e3);
            fprintf(f, "%s\t%s\t%d\t%d\t%.6f\t%.6f\t%.6f\t%.6f\t%.4f\t%.5f\t%.5f\n", s.name, policy_names[pol], C,
                    sd->E, st.hits / a, st.late / a, st.misses / a,
                    st.prefetched > 0 ? st.prefetch_used / st.prefetched : NAN, st.bytes / st.tokens / 1e6,
                    st.stall_s / st.tokens * 1e3, st.compute_s / st.tokens * 1e3);
        }
        if (si == 0 && o->plots) plot_hit_rate(o, sd, ci, &z, C, s.name);
    }
    fclose(f);
    printf("cache results: %s\n", path);
}

// ---------------------------------------------------------------------------------------
// charts

static void plot_recall(const Opts *o, const SpecData *sd, Metrics *mt) {
    MoeErr err;
    int W = 520 * sd->D, Hh = 480, legend_h = 40;
    Canvas cv;
    if (canvas_init(&cv, W, Hh + legend_h, RGB_WHITE, &err)) {
        printf("chart skipped: %s\n", err.msg);
        return;
    }
    int M = sd->M;
    double *x = mallocCheck(sizeof(double) * M), *y = mallocCheck(sizeof(double) * M);
    const char *names[N_METHODS];
    Rgb cols[N_METHODS];
    for (int d = 1; d <= sd->D; d++) {
        Axes ax = axes_in_box(&cv, (d - 1) * 520, 0, 520, Hh);
        axes_set_x(&ax, sd->t->h.layer_idx[0] - 0.5, sd->t->h.layer_idx[M - 1] + 0.5);
        axes_set_y(&ax, 0, 1.02);
        char title[96];
        snprintf(title, sizeof title, "recall@%d, lookahead d = %d (test)", sd->K, d);
        axes_draw(&ax, title, "target layer", "recall@K");
        int nn = 0;
        for (int m = 0; m < N_METHODS; m++) {
            if (!mt[m].s || !method_available(sd, m, d)) continue;
            for (int l = 0; l < M; l++) {
                MetricSum s = metrics_total(&mt[m], d, l, -1);
                x[l] = sd->t->h.layer_idx[l];
                y[l] = s.n > 0 ? s.rk / s.n : NAN;
            }
            Rgb c = palette_color(m, N_METHODS);
            axes_series(&ax, x, y, M, c, m >= METHOD_MLP_BCE ? 3.0f : 2.0f);
            names[nn] = method_names[m];
            cols[nn++] = c;
        }
        axes_hline(&ax, random_recall_k(sd->E, sd->K), RGB_AXIS, 1.0f, 1);
        if (d == 1) {  // one legend row under the panels (inside a panel it would hide the lines)
            float x0 = 20, y0 = (float)Hh + legend_h / 2.0f;
            for (int j = 0; j < nn; j++) {
                canvas_line(&cv, x0, y0, x0 + 24, y0, cols[j], 3.0f);
                canvas_text(&cv, x0 + 30, y0, names[j], 14, RGB_TEXT, TEXT_LEFT, TEXT_MIDDLE, 0);
                x0 += 30 + text_width(names[j], 14, 0) + 28;
            }
            canvas_dashed_line(&cv, x0, y0, x0 + 24, y0, RGB_AXIS, 1.0f, 5, 4);
            canvas_text(&cv, x0 + 30, y0, "random K/E", 14, RGB_TEXT, TEXT_LEFT, TEXT_MIDDLE, 0);
        }
    }
    char path[1200];
    snprintf(path, sizeof path, "%s/recall_per_layer.png", o->out);
    if (canvas_write_png(&cv, path, &err)) printf("chart not written: %s\n", err.msg);
    else printf("chart: %s (dashed: random K/E)\n", path);
    free(x);
    free(y);
    canvas_free(&cv);
}

static void plot_hit_rate(const Opts *o, const SpecData *sd, const CacheInput *ci, const ScenarioSizes *z, int Cscn,
                          const char *scen_name) {
    int E = sd->E, K = sd->K;
    int sizes[64], ns = 0;
    int step = (E - K) / 15 > 1 ? (E - K) / 15 : 1;
    for (int C = K; C <= E && ns < 63; C += step) sizes[ns++] = C;
    if (sizes[ns - 1] != E) sizes[ns++] = E;
    double *hr = mallocCheck(sizeof(double) * 4 * ns);
#pragma omp parallel for collapse(2) schedule(dynamic, 1)
    for (int pol = 0; pol < 4; pol++)
        for (int j = 0; j < ns; j++) {
            CacheStats st;
            hr[pol * ns + j] = run_policy(sd, ci, pol, sizes[j], z, &st) ? NAN : (st.hits + st.late) / st.accesses;
        }
    MoeErr err;
    Canvas cv;
    if (canvas_init(&cv, 900, 560, RGB_WHITE, &err)) {
        printf("chart skipped: %s\n", err.msg);
        free(hr);
        return;
    }
    Axes ax = axes_in_box(&cv, 0, 0, 900, 560);
    axes_set_x(&ax, K, E);
    axes_set_y(&ax, 0, 1.02);
    char xlabel[200];
    snprintf(xlabel, sizeof xlabel, "cache size C (experts per layer); sizes and timings: %s", scen_name);
    axes_draw(&ax, "expert cache hit rate (resident or in flight) on the test tokens", xlabel, "hit rate");
    double x[64];
    for (int j = 0; j < ns; j++) x[j] = sizes[j];
    const char *names[4];
    Rgb cols[4];
    int nn = 0;
    for (int pol = 0; pol < 4; pol++) {
        if (isnan(hr[pol * ns])) continue;
        cols[nn] = palette_color(pol, 4);
        names[nn] = policy_names[pol];
        axes_series(&ax, x, hr + pol * ns, ns, cols[nn], 2.5f);
        nn++;
    }
    axes_vline(&ax, Cscn, RGB_AXIS, 1.0f, 1, "scenario C");
    axes_legend(&ax, names, cols, NULL, nn, 0);
    (void)z;
    char path[1200];
    snprintf(path, sizeof path, "%s/hit_rate_vs_cache.png", o->out);
    if (canvas_write_png(&cv, path, &err)) printf("chart not written: %s\n", err.msg);
    else printf("chart: %s\n", path);
    canvas_free(&cv);
    free(hr);
}

// ---------------------------------------------------------------------------------------

int main(int argc, char **argv) {
    Opts o;
    defaults(&o);
    parse_args(&o, argc, argv);
    MoeErr err;
    if (make_dirs(o.out, &err)) die("%s", err.msg);
    double t0 = wall_seconds();
    Trace t;
    load_traces(&o, &t);
    if (o.save_trace) {
        if (trace_write(o.save_trace, &t, &err)) die("%s", err.msg);
        printf("wrote %s (%zu records)\n", o.save_trace, t.n);
    }
    int B = o.B ? o.B : (2 * t.h.K < t.h.E ? 2 * t.h.K : t.h.E);
    SplitSpec sp = {.seed = o.seed, .val_frac = o.val_frac, .test_frac = o.test_frac};
    SpecData sd;
    if (specdata_init(&sd, &t, &sp, o.D, B, &err)) die("%s", err.msg);
    printf("traces: model '%s', dataset '%s', %zu tokens, E %d, K %d, %d MoE layers (blocks %d..%d), %d domain(s), "
           "gate-reuse field %s\n",
           t.h.model, t.h.dataset, t.n, t.h.E, t.h.K, t.h.n_layers, t.h.layer_idx[0], t.h.layer_idx[t.h.n_layers - 1],
           t.h.n_domains, t.reuse ? "yes" : "no");
    printf("splits by sequence (seed %llu): train %zu seqs / %zu tokens, val %zu / %zu, test %zu / %zu; %d threads\n",
           (unsigned long long)o.seed, sd.n_seq[0], sd.n_rec[0], sd.n_seq[1], sd.n_rec[1], sd.n_seq[2], sd.n_rec[2],
           omp_get_max_threads());
    SpecModel mods[2];
    int have[2] = {0, 0};
    memset(mods, 0, sizeof mods);
    train_speculators(&o, &sd, mods, have);
    for (int j = 0; j < 2; j++) sd.mlp[j] = have[j] ? &mods[j] : NULL;

    Metrics mt[N_METHODS];
    memset(mt, 0, sizeof mt);
    double te = wall_seconds();
    for (int m = 0; m < N_METHODS; m++) {
        if (m == METHOD_REUSE && !t.reuse) continue;
        if ((m == METHOD_MLP_BCE && !have[0]) || (m == METHOD_MLP_LIST && !have[1])) continue;
        evaluate(&sd, m, SPLIT_TEST, &mt[m], o.seed ^ 0xABCDEFu);
    }
    printf("evaluation: %.1f s\n", wall_seconds() - te);
    for (int j = 0; j < 2; j++)
        if (have[j])
            printf("%s: %zu parameters (%.1f MB fp32), %.1f us per prediction (one token, one layer, %d lookaheads; "
                   "1 CPU thread, CPU under load from others may inflate it)\n",
                   method_names[j ? METHOD_MLP_LIST : METHOD_MLP_BCE], mods[j].n_params, mods[j].n_params * 4e-6,
                   spec_latency_us(&mods[j], &sd), mods[j].c.D);
    print_table(&sd, mt);
    write_metrics_tsv(&o, &sd, mt);
    if (o.plots) plot_recall(&o, &sd, mt);

    // prefetchers: the learned speculator and the best baseline, both chosen on validation (d = ahead)
    CacheInput ci;
    memset(&ci, 0, sizeof ci);
    ci.P = o.prefetch ? (o.prefetch < sd.E ? o.prefetch : sd.E) : sd.K;
    ci.ahead = o.ahead < sd.M ? o.ahead : sd.M - 1;
    ci.n = sd.n_rec[SPLIT_TEST];
    if (o.cache_tokens && ci.n > o.cache_tokens) ci.n = o.cache_tokens;
    size_t M = (size_t)sd.M, K = (size_t)sd.K;
    ci.ids = mallocCheck(sizeof(uint16_t) * (ci.n ? ci.n : 1) * M * K);
    for (size_t j = 0; j < ci.n; j++) memcpy(ci.ids + j * M * K, t.ids + sd.rec[SPLIT_TEST][j] * M * K, 2 * M * K);
    int best_base = -1, best_mlp = -1;
    double bv = -1, mv = -1;
    const int bases[4] = {METHOD_FREQUENT, METHOD_TRANSITION, METHOD_PREVTOK, METHOD_REUSE};
    for (int j = 0; j < 4 + 2; j++) {
        int m = j < 4 ? bases[j] : (j == 4 ? METHOD_MLP_BCE : METHOD_MLP_LIST);
        if (!method_available(&sd, m, ci.ahead) || !mt[m].s) continue;
        Metrics v;
        evaluate(&sd, m, sd.n_rec[SPLIT_VAL] ? SPLIT_VAL : SPLIT_TRAIN, &v, 1);
        MetricSum s = metrics_total(&v, ci.ahead, -1, -1);
        metrics_free(&v);
        double r = mean(s.rk, s.n);
        if (j < 4 && r > bv) bv = r, best_base = m;
        if (j >= 4 && r > mv) mv = r, best_mlp = m;
    }
    for (int j = 0; j < 2; j++) {
        int m = j == 0 ? best_mlp : best_base;
        if (m < 0) continue;
        ci.method[j] = m;
        ci.pred[j] = mallocCheck(sizeof(uint16_t) * (ci.n ? ci.n : 1) * M * (size_t)ci.P);
        build_predictions(&sd, m, sd.rec[SPLIT_TEST], ci.n, ci.P, ci.ahead, ci.pred[j]);
    }
    offload(&o, &sd, &ci);
    printf("\ntotal %.1f s\n", wall_seconds() - t0);

    free(ci.ids);
    free(ci.pred[0]);
    free(ci.pred[1]);
    for (int m = 0; m < N_METHODS; m++) metrics_free(&mt[m]);
    for (int j = 0; j < 2; j++)
        if (have[j]) spec_free(&mods[j]);
    specdata_free(&sd);
    trace_free(&t);
    return 0;
}
