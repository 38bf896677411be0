// Speculator training loop: shuffled minibatches of (record, source layer) samples, threads
// accumulate sparse gradients, AdamW, early stopping on validation recall@K.
#include "train.h"

#include <math.h>
#include <omp.h>

double spec_recall(const SpecModel *m, const SpecData *sd, int split, size_t max_rec) {
    size_t nr = sd->n_rec[split];
    if (max_rec && nr > max_rec) nr = max_rec;
    int E = sd->E, K = sd->K, M = sd->M;
    double sum = 0, cnt = 0;
#pragma omp parallel reduction(+ : sum, cnt)
    {
        SpecScratch s;
        spec_scratch_init(&s, &m->c);
        float *z = mallocCheck(sizeof(float) * SPEC_MAX_D * (size_t)E);
        uint16_t pred[TRACE_MAX_K];
#pragma omp for schedule(dynamic, 64)
        for (size_t r = 0; r < nr; r++) {
            size_t i = sd->rec[split][r * (sd->n_rec[split] / nr)];  // even subsample
            for (int l = 0; l + 1 < M; l++) {
                SpecInput in;
                spec_input_from_trace(sd->t, i, l, m->c.D, m->c.use_reuse, &in);
                int nd = spec_forward(m, &in, z, &s);
                for (int d = 1; d <= nd; d++) {
                    rank_top(z + (size_t)(d - 1) * E, sd->freq + (size_t)(l + d) * E, E, K, pred);
                    const uint16_t *tr = in.target[d - 1];
                    int h = 0;
                    for (int a = 0; a < K; a++)
                        for (int b = 0; b < K; b++) h += pred[a] == tr[b];
                    sum += (double)h / K;
                    cnt += 1;
                }
            }
        }
        free(z);
        spec_scratch_free(&s);
    }
    return cnt > 0 ? sum / cnt : 0;
}

// sum the threads' gradients (touched blocks only) and apply AdamW, in one parallel loop
static void reduce_and_step(SpecModel *m, SpecAdam *adam, SpecGrad *G, SpecGrad *T, int nt) {
    for (int t = 0; t < nt; t++) {
        for (int j = 0; j < T[t].n_list; j++) {
            int b = T[t].list[j];
            if (G->stamp[b] != G->step) {
                G->stamp[b] = G->step;
                G->list[G->n_list++] = b;
            }
        }
    }
    adam->t++;
    float bc1 = 1.0f - powf(adam->beta1, (float)adam->t), bc2 = 1.0f - powf(adam->beta2, (float)adam->t);
#pragma omp parallel for schedule(dynamic, 16)
    for (int j = 0; j < G->n_list; j++) {
        int b = G->list[j];
        size_t off = m->blk_off[b], len = m->blk_len[b];
        for (int t = 0; t < nt; t++) {
            if (T[t].stamp[b] != T[t].step) continue;
            float *src = T[t].g + off, *dst = G->g + off;
            for (size_t i = 0; i < len; i++) {
                dst[i] += src[i];
                src[i] = 0;
            }
        }
        spec_adam_block(adam, m, b, G->g + off, bc1, bc2);
    }
    G->n_list = 0;
    G->step++;
    for (int t = 0; t < nt; t++) {
        T[t].n_list = 0;
        T[t].step++;
    }
}

int spec_train(SpecModel *m, const SpecData *sd, const SpecTrainOpts *o, SpecTrainLog *log, MoeErr *err) {
    memset(log, 0, sizeof(*log));
    if (o->batch < 1 || o->max_epochs < 1 || !(o->lr > 0))
        return moe_err_set(err, "speculator training: bad options (batch %d, epochs %d)", o->batch, o->max_epochs);
    if (m->c.E != sd->E || m->c.K != sd->K || m->c.M != sd->M)
        return moe_err_set(err, "speculator training: model shape does not match the traces");
    double t0 = wall_seconds();
    int M = sd->M;
    size_t ntr = sd->n_rec[SPLIT_TRAIN];
    size_t ns = ntr * (size_t)(M - 1);  // (record, source layer) samples
    uint64_t *samples = mallocCheck(sizeof(uint64_t) * (ns ? ns : 1));
    for (size_t r = 0, j = 0; r < ntr; r++)
        for (int l = 0; l + 1 < M; l++) samples[j++] = ((uint64_t)sd->rec[SPLIT_TRAIN][r] << 8) | (uint64_t)l;
    log->train_samples = ns;
    int nt = omp_get_max_threads();
    SpecGrad G, *T = mallocCheck(sizeof(SpecGrad) * nt);
    SpecScratch *S = mallocCheck(sizeof(SpecScratch) * nt);
    spec_grad_init(&G, m);
    for (int t = 0; t < nt; t++) {
        spec_grad_init(&T[t], m);
        spec_scratch_init(&S[t], &m->c);
    }
    SpecAdam adam;
    spec_adam_init(&adam, m, o->lr, o->wd);
    float *best = mallocCheck(sizeof(float) * m->n_params);
    memcpy(best, m->params, sizeof(float) * m->n_params);
    int use_val = sd->n_rec[SPLIT_VAL] > 0;
    int val_split = use_val ? SPLIT_VAL : SPLIT_TRAIN;
    log->best_val_recall = spec_recall(m, sd, val_split, o->max_val);
    log->best_epoch = 0;
    uint64_t rng = rng_seed(o->seed);
    int since_best = 0;
    for (int ep = 1; ep <= o->max_epochs; ep++) {
        for (size_t j = ns; j > 1; j--) {  // Fisher-Yates
            size_t k = (size_t)(rng_next_u64(&rng) % j);
            uint64_t tmp = samples[j - 1];
            samples[j - 1] = samples[k];
            samples[k] = tmp;
        }
        double loss_sum = 0;
        for (size_t b0 = 0; b0 < ns; b0 += (size_t)o->batch) {
            size_t b1 = b0 + (size_t)o->batch < ns ? b0 + (size_t)o->batch : ns;
            float scale = 1.0f / (float)(b1 - b0);
            double bl = 0;
#pragma omp parallel reduction(+ : bl)
            {
                int t = omp_get_thread_num();
#pragma omp for schedule(static)
                for (size_t j = b0; j < b1; j++) {
                    SpecInput in;
                    spec_input_from_trace(sd->t, (size_t)(samples[j] >> 8), (int)(samples[j] & 0xFF), m->c.D,
                                          m->c.use_reuse, &in);
                    bl += spec_loss_backward(m, &in, &S[t], &T[t], scale);
                }
            }
            loss_sum += bl;
            reduce_and_step(m, &adam, &G, T, nt);
        }
        double val = spec_recall(m, sd, val_split, o->max_val);
        log->epochs_run = ep;
        log->train_loss = ns ? loss_sum / ns : 0;
        if (o->verbose)
            printf("  epoch %2d  train loss %.4f  %s recall@K %.4f%s\n", ep, log->train_loss,
                   use_val ? "val" : "train", val, val > log->best_val_recall ? "  (best)" : "");
        if (o->verbose) fflush(stdout);
        if (val > log->best_val_recall) {
            log->best_val_recall = val;
            log->best_epoch = ep;
            memcpy(best, m->params, sizeof(float) * m->n_params);
            since_best = 0;
        } else if (++since_best >= o->patience) {
            break;
        }
    }
    memcpy(m->params, best, sizeof(float) * m->n_params);
    free(best);
    spec_adam_free(&adam);
    for (int t = 0; t < nt; t++) {
        spec_grad_free(&T[t]);
        spec_scratch_free(&S[t]);
    }
    spec_grad_free(&G);
    free(T);
    free(S);
    free(samples);
    log->seconds = wall_seconds() - t0;
    return 0;
}
