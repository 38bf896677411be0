// report: PNG charts + report.html for a run folder, or a comparison of several runs.
//   report [options] RUN_DIR
//   report [options] --compare OUT_DIR RUN_DIR...
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plots/report.h"

static void usage(FILE *f, const char *prog) {
    fprintf(f,
            "usage: %s [options] RUN_DIR\n"
            "       %s [options] --compare OUT_DIR RUN_DIR [RUN_DIR...]\n"
            "Writes the routing microscope for a run: RUN_DIR/*.png and RUN_DIR/report.html, from the\n"
            "logs only (run.json, train.jsonl, routing.jsonl; events/coact/domains.jsonl when present).\n"
            "With --compare, draws several runs on shared axes into OUT_DIR/compare_*.png + compare.html.\n"
            "options:\n"
            "  --window N           steps in the 'last window' (load heatmap, mean MaxVio) (default 100)\n"
            "  --layer L            model layer number for the single-layer share chart (default -1: auto,\n"
            "                       the first collapsed layer, else the highest recent MaxVio)\n"
            "  --share-threshold X  collapse: fraction of tokens choosing one expert (default 0.5)\n"
            "  --entropy-frac X     collapse: router entropy below X * ln E (default 0.2, 0 = off)\n"
            "  --patience M         collapse: consecutive steps (default 20)\n"
            "                       (the collapse options apply when events.jsonl is absent)\n"
            "  --time               print the time taken\n"
            "  -q                   do not print notes about the logs\n"
            "  -h, --help           this help\n",
            prog, prog);
}

static int parse_int(const char *s, int *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < -1000000000L || v > 1000000000L) return -1;
    *out = (int)v;
    return 0;
}

static int parse_float(const char *s, float *out) {
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end || !(v == v)) return -1;
    *out = (float)v;
    return 0;
}

int main(int argc, char **argv) {
    ReportOptions o;
    report_options_default(&o);
    o.quiet = 0;
    const char *compare_out = NULL;
    int n_dirs = 0, timing = 0;
    // first pass: options; run folders are counted and collected in a second pass
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int need = !strcmp(a, "--window") || !strcmp(a, "--layer") || !strcmp(a, "--share-threshold") ||
                   !strcmp(a, "--entropy-frac") || !strcmp(a, "--patience") || !strcmp(a, "--compare");
        if (need && i + 1 >= argc) {
            fprintf(stderr, "error: %s needs a value (see -h)\n", a);
            return 1;
        }
        int bad = 0;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout, argv[0]);
            return 0;
        } else if (!strcmp(a, "--window")) {
            bad = parse_int(argv[++i], &o.window) || o.window < 1;
        } else if (!strcmp(a, "--layer")) {
            bad = parse_int(argv[++i], &o.layer);
        } else if (!strcmp(a, "--share-threshold")) {
            bad = parse_float(argv[++i], &o.collapse.share_threshold) || o.collapse.share_threshold <= 0 ||
                  o.collapse.share_threshold > 1;
        } else if (!strcmp(a, "--entropy-frac")) {
            bad = parse_float(argv[++i], &o.collapse.entropy_frac) || o.collapse.entropy_frac < 0 ||
                  o.collapse.entropy_frac > 1;
        } else if (!strcmp(a, "--patience")) {
            bad = parse_int(argv[++i], &o.collapse.patience) || o.collapse.patience < 1;
        } else if (!strcmp(a, "--compare")) {
            compare_out = argv[++i];
        } else if (!strcmp(a, "--time")) {
            timing = 1;
        } else if (!strcmp(a, "-q")) {
            o.quiet = 1;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "error: unknown option '%s' (see -h)\n", a);
            return 1;
        } else {
            n_dirs++;
        }
        if (bad) {
            fprintf(stderr, "error: bad value '%s' for %s (see -h)\n", argv[i], a);
            return 1;
        }
    }
    if (n_dirs == 0 || (!compare_out && n_dirs != 1)) {
        fprintf(stderr, "error: %s (see -h)\n", n_dirs == 0 ? "no run folder given" : "give one RUN_DIR (or use --compare)");
        return 1;
    }
    const char **dirs = mallocCheck(sizeof(char *) * (size_t)n_dirs);
    int k = 0;
    for (int i = 1; i < argc; i++) {  // the same walk, keeping the positional arguments
        const char *a = argv[i];
        if (!strcmp(a, "--window") || !strcmp(a, "--layer") || !strcmp(a, "--share-threshold") ||
            !strcmp(a, "--entropy-frac") || !strcmp(a, "--patience") || !strcmp(a, "--compare"))
            i++;
        else if (a[0] != '-' || !a[1])
            dirs[k++] = a;
    }
    MoeErr err = {{0}};
    double t0 = wall_seconds();
    int rc = compare_out ? report_compare(compare_out, dirs, n_dirs, &o, &err) : report_write_opts(dirs[0], &o, &err);
    if (rc != 0) {
        fprintf(stderr, "error: %s\n", err.msg);
        free(dirs);
        return 1;
    }
    if (compare_out)
        printf("wrote %s/compare.html\n", compare_out);
    else
        printf("wrote %s/report.html\n", dirs[0]);
    if (timing) printf("time: %.3f s\n", wall_seconds() - t0);
    free(dirs);
    return 0;
}
