// Router-collapse detector (see collapse.h for definitions and defaults).
#include "plots/collapse.h"

#include <math.h>

void collapse_params_default(CollapseParams *p) {
    p->share_threshold = 0.5f;
    p->entropy_frac = 0.2f;
    p->patience = 20;
}

int collapse_init(CollapseDetector *d, int n_layers, int E, int K, const CollapseParams *p, MoeErr *err) {
    memset(d, 0, sizeof(*d));
    if (n_layers <= 0 || n_layers > 100000) return moe_err_set(err, "collapse: bad number of layers %d", n_layers);
    if (E <= 0 || E > 1000000) return moe_err_set(err, "collapse: bad number of experts %d", E);
    if (K <= 0 || K > E) return moe_err_set(err, "collapse: bad top_k %d for %d experts", K, E);
    if (p) {
        d->p = *p;
    } else {
        collapse_params_default(&d->p);
    }
    if (d->p.patience < 1) d->p.patience = 1;
    d->n_layers = n_layers;
    d->E = E;
    d->K = K;
    float floor3 = 3.0f * (float)K / (float)E;
    if (floor3 > 0.9f) floor3 = 0.9f;
    d->share_thr = d->p.share_threshold > floor3 ? d->p.share_threshold : floor3;
    d->bad_run = calloc((size_t)n_layers * 3, sizeof(int));
    d->run_start = calloc((size_t)n_layers, sizeof(long));
    if (!d->bad_run || !d->run_start) {
        collapse_free(d);
        return moe_err_set(err, "collapse: out of memory");
    }
    d->good_run = d->bad_run + n_layers;
    d->collapsed = d->bad_run + 2 * n_layers;
    return 0;
}

void collapse_free(CollapseDetector *d) {
    free(d->bad_run);
    free(d->run_start);
    d->bad_run = d->good_run = d->collapsed = NULL;
    d->run_start = NULL;
}

int collapse_is_collapsed(const CollapseDetector *d, int li) {
    return li >= 0 && li < d->n_layers && d->collapsed[li];
}

int collapse_update(CollapseDetector *d, long step, int li, int layer_id, const float *load, float entropy,
                    CollapseEvent *ev) {
    if (li < 0 || li >= d->n_layers || !load) return 0;
    double sum = 0;
    int arg = 0;
    for (int e = 0; e < d->E; e++) {
        if (!isfinite(load[e]) || load[e] < 0) return 0;
        sum += load[e];
        if (load[e] > load[arg]) arg = e;
    }
    if (!(sum > 0)) return 0;
    float share = (float)(load[arg] * d->K / sum);
    int bad = share >= d->share_thr;
    if (d->p.entropy_frac > 0 && isfinite(entropy) && entropy < d->p.entropy_frac * logf((float)d->E)) bad = 1;
    if (bad) {
        d->good_run[li] = 0;
        if (d->bad_run[li]++ == 0) d->run_start[li] = step;
    } else {
        d->bad_run[li] = 0;
        if (d->good_run[li]++ == 0 && d->collapsed[li]) d->run_start[li] = step;
    }
    if (!d->collapsed[li] && d->bad_run[li] >= d->p.patience) {
        d->collapsed[li] = 1;
        d->good_run[li] = 0;
        *ev = (CollapseEvent){COLLAPSE_EVENT_COLLAPSE, step, d->run_start[li], layer_id, arg, share, entropy};
        return 1;
    }
    if (d->collapsed[li] && d->good_run[li] >= d->p.patience) {
        d->collapsed[li] = 0;
        d->bad_run[li] = 0;
        *ev = (CollapseEvent){COLLAPSE_EVENT_RECOVERED, step, d->run_start[li], layer_id, -1, share, entropy};
        return 1;
    }
    return 0;
}

int collapse_event_json(const CollapseEvent *ev, char *buf, size_t n) {
    char ent[32];
    if (isfinite(ev->entropy))
        snprintf(ent, sizeof ent, "%.4g", ev->entropy);
    else
        snprintf(ent, sizeof ent, "null");
    if (ev->type == COLLAPSE_EVENT_COLLAPSE)
        return snprintf(buf, n,
                        "{\"step\": %ld, \"type\": \"collapse\", \"layer\": %d, \"expert\": %d, \"share\": %.4g, "
                        "\"entropy\": %s, \"since\": %ld}\n",
                        ev->step, ev->layer, ev->expert, ev->share, ent, ev->since);
    return snprintf(buf, n, "{\"step\": %ld, \"type\": \"recovered\", \"layer\": %d, \"since\": %ld}\n", ev->step,
                    ev->layer, ev->since);
}

int collapse_event_text(const CollapseEvent *ev, char *buf, size_t n) {
    if (ev->type == COLLAPSE_EVENT_COLLAPSE)
        return snprintf(buf, n,
                        "WARNING: router collapse at layer %d (step %ld, since step %ld): expert %d takes %.0f%% of "
                        "tokens, router entropy %.3g nats",
                        ev->layer, ev->step, ev->since, ev->expert, 100.0 * ev->share, ev->entropy);
    return snprintf(buf, n, "NOTE: layer %d recovered from router collapse at step %ld (healthy since step %ld)",
                    ev->layer, ev->step, ev->since);
}
