// The training loop: data -> forward -> backward -> clip -> AdamW -> bias update, with
// logs, validation, routing statistics per domain, samples, checkpoints and reports.
#include "trainer.h"

#include <ctype.h>
#include <math.h>
#include <omp.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "../common/util.h"
#include "../data/dataloader.h"
#include "../model/generate.h"
#include "../model/layer_math.h"
#include "../model/model.h"
#include "../plots/collapse.h"
#include "../plots/report.h"
#include "../tokenizer/tokenizer.h"
#include "checkpoint.h"
#include "dp.h"
#ifdef MOE_WITH_CUDA
#include "../model/cuda/attention_cudnn.h"
#include "../model/cuda/cuda_model.h"
#include "../model/cuda/cuda_ops.h"
#include "../model/cuda/plan.h"
#endif

// ---------------------------------------------------------------------------------------
// The engine: the CPU reference, or the CUDA model with the CPU Model as its host mirror
// (parameters, AdamW state and biases are copied back for checkpoints and samples; routing
// statistics and biases every step for the logs).

typedef struct {
    Model *m;
    int tokens_per_step;  // of all ranks
    int N;  // tokens per micro-batch
    DataParallel *dp;  // the ranks of a data-parallel run (world 1: none)
#ifdef MOE_WITH_CUDA
    CudaModel *cm;  // NULL: CPU
    char gpu_name[256];
    int precision;   // PREC_FP32 / PREC_BF16 / PREC_FP16 (= CU_F32 / CU_BF16 / CU_F16)
    LossScaler ls;   // fp16: dynamic loss scaling; otherwise the scale stays 1
    int *sel_host;   // (n_moe, N, K) experts chosen in the last forward (validation statistics)
#endif
} Engine;

// the loss scale of backward (1 unless fp16)
static float eng_loss_scale(const Engine *e) {
#ifdef MOE_WITH_CUDA
    if (e->cm) return e->ls.scale;
#else
    (void)e;
#endif
    return 1.0f;
}

static void eng_begin_step(Engine *e, float grad_scale) {
#ifdef MOE_WITH_CUDA
    if (e->cm) {
        cuda_model_zero_grad(e->cm);
        cuda_model_routing_reset(e->cm);
        cuda_model_set_grad_scale(e->cm, grad_scale * e->ls.scale);
        return;
    }
#endif
    model_zero_grad(e->m);
    routing_stats_reset(e->m);
    e->m->grad_scale = grad_scale;
}

// returns the total loss; ce/aux/mtp parts into the model's fields
static float eng_forward(Engine *e, const int *inputs, const int *targets, int B, int T, int collect) {
#ifdef MOE_WITH_CUDA
    if (e->cm) {
        float loss = cuda_model_forward(e->cm, inputs, targets, B, T);
        cuda_model_losses(e->cm, &e->m->ce_loss, &e->m->aux_loss, &e->m->mtp_loss);
        e->m->loss = loss;
        e->m->n_valid = B * T;
        if (targets) {
            int nv = 0;
            for (int i = 0; i < B * T; i++) nv += targets[i] >= 0;
            e->m->n_valid = nv;
        }
        (void)collect;
        return loss;
    }
#endif
    return model_forward(e->m, inputs, targets, B, T, collect);
}

// the experts chosen (N, K) in MoE block number i by the last forward
static const int *eng_selected(Engine *e, int i) {
#ifdef MOE_WITH_CUDA
    if (e->cm) {
        size_t nk = (size_t)e->N * e->m->cfg.top_k;
        cuda_model_download_routing(e->cm, i, e->sel_host + (size_t)i * nk);
        return e->sel_host + (size_t)i * nk;
    }
#endif
    return e->m->acts[e->m->moe_block[i]].sel;
}

static void eng_backward(Engine *e) {
#ifdef MOE_WITH_CUDA
    if (e->cm) {
        cuda_model_backward(e->cm);
        return;
    }
#endif
    model_backward(e->m);
}

// The optimizer step after the micro-batches: the gradient norm, clipping, AdamW, the bias
// update, and the step's routing statistics in e->m->stats (and the biases in e->m->bias).
// Returns the (unscaled) gradient norm; when it is not finite nothing was updated. On the GPU
// all of it runs on the device, then one download brings the norm, the statistics and the
// biases (cuda_model_step); the fp16 loss scale is updated from the result.
static float eng_update(Engine *e, float lr, const TrainOpts *o, int t) {
#ifdef MOE_WITH_CUDA
    if (e->cm) {
        if (e->dp->world > 1) {  // every rank steps with the sums of the ranks' gradients and routing statistics
            size_t n = 0;
            float *g = cuda_model_grads_device(e->cm, &n);
            dp_sum_device(e->dp, g, n);
            g = cuda_model_routing_device(e->cm, &n);
            if (n > 0) dp_sum_device(e->dp, g, n);
        }
        float norm = cuda_model_step(e->cm, lr, o->beta1, o->beta2, 1e-8f, o->weight_decay, o->grad_clip,
                                     1.0f / e->ls.scale, t);
        if (e->precision == PREC_FP16) loss_scaler_update(&e->ls, !isfinite(norm));
        if (!isfinite(norm)) return norm;
        Model *m = e->m;
        int E = m->cfg.n_routed_experts;
        float load[1024], dropped = 0, ent = 0, top1 = 0;
        for (int i = 0; i < m->n_moe; i++) {
            cuda_model_routing_stats(e->cm, i, load, &dropped, &ent, &top1);
            RoutingStats *s = &m->stats[i];
            for (int x = 0; x < E; x++) s->load[x] = load[x];
            s->dropped = dropped;
            s->entropy_sum = ent;
            s->top1_sum = top1;
            s->tokens = e->tokens_per_step;
        }
        cuda_model_last_bias(e->cm, m->bias);
        return norm;
    }
#endif
    float norm = model_grad_norm(e->m);
    if (!isfinite(norm)) return norm;
    model_adamw(e->m, lr, o->beta1, o->beta2, 1e-8f, o->weight_decay, lm_clip_scale(norm, o->grad_clip), t);
    model_update_bias(e->m);
    return norm;
}

// parameters, AdamW state and biases of the GPU into the host model (checkpoints, samples)
static void eng_to_host(Engine *e) {
#ifdef MOE_WITH_CUDA
    if (e->cm) {
        cuda_model_download_params(e->cm, e->m->params);
        cuda_model_download_adam(e->cm, e->m->m, e->m->v);
        cuda_model_download_bias(e->cm, e->m->bias);
    }
#else
    (void)e;
#endif
}

// A resumed run: the GPU's working copy of the weights as AdamW step `step` wrote it (bf16
// stochastic rounding), and the fp16 loss scale of the checkpoint, so that the run continues
// exactly. ckpt_precision: what the checkpoint was trained in.
static void eng_resume(Engine *e, int64_t step, int ckpt_precision, float loss_scale, int good_steps) {
#ifdef MOE_WITH_CUDA
    if (e->cm) {
        cuda_model_refresh_working(e->cm, (int)step);
        if (e->precision == PREC_FP16 && ckpt_precision == PREC_FP16 && loss_scale > 0.0f) {
            e->ls.scale = loss_scale;
            e->ls.good_steps = good_steps;
        }
    }
#else
    (void)e, (void)step, (void)ckpt_precision, (void)loss_scale, (void)good_steps;
#endif
}

#ifdef MOE_WITH_CUDA
static void eng_to_device(Engine *e) {
    cuda_model_upload_params(e->cm, e->m->params);
    cuda_model_upload_adam(e->cm, e->m->m, e->m->v);
    cuda_model_upload_bias(e->cm, e->m->bias);
}

// the precision of a GPU run: --precision, or auto = bf16 where the GPU has bf16 tensor cores
// (compute capability 8.0+), else fp16 with loss scaling (7.0+), else fp32
static int gpu_precision(const TrainOpts *o, const char *gpu, MoeErr *err) {
    int cc = cu_compute_capability();
    if (!strcmp(o->precision, "auto"))
        return cu_supports_dtype(PREC_BF16) ? PREC_BF16 : cu_supports_dtype(PREC_FP16) ? PREC_FP16 : PREC_FP32;
    int p = !strcmp(o->precision, "bf16") ? PREC_BF16 : !strcmp(o->precision, "fp16") ? PREC_FP16 : PREC_FP32;
    if (!cu_supports_dtype(p))
        return moe_err_set(err, "--precision %s: %s (compute capability %d.%d) has no %s tensor cores; use %s", o->precision,
                           gpu, cc / 10, cc % 10, o->precision, cu_supports_dtype(PREC_FP16) ? "fp16 or fp32" : "fp32");
    return p;
}
#endif

// Pick the device: --device cpu, cuda (an error without a GPU) or auto (the GPU when the CUDA
// runtime finds one). Prints one line saying which. -1 on error.
static int eng_open(Engine *e, Model *m, const TrainOpts *o, int B, int T, DataParallel *dp, MoeErr *err) {
    memset(e, 0, sizeof(*e));
    e->m = m;
    e->N = B * T;
    e->dp = dp;
    e->tokens_per_step = B * T * o->grad_accum * dp->world;
#ifdef MOE_WITH_CUDA
    loss_scaler_init(&e->ls, 1.0f, 2000);
    e->ls.scale = 1.0f;
    if (strcmp(o->device, "cpu") != 0) {
        size_t free_b = 0, total_b = 0;
        int n = cu_device_info(e->gpu_name, sizeof e->gpu_name, &free_b, &total_b);
        if (n <= 0) {
            if (!strcmp(o->device, "cuda")) return moe_err_set(err, "--device cuda: no GPU visible to the CUDA runtime");
            if (dp->world > 1) return moe_err_set(err, "--gpus %d: no GPU visible to the CUDA runtime", dp->world);
            printf("device: no GPU visible to the CUDA runtime: training on the CPU\n");
        } else {
            int prec = gpu_precision(o, e->gpu_name, err);
            if (prec < 0) return -1;
            CudaPlan plan;
            if (cuda_plan(&m->cfg, B, T, prec, o->recompute, &plan, err) != 0) return -1;
            int cc = cu_compute_capability();
            printf("device: GPU %s (compute capability %d.%d, %.1f of %.1f GB free), CUDA backend %s, precision %s%s%s\n",
                   e->gpu_name, cc / 10, cc % 10, free_b / 1e9, total_b / 1e9, cu_backend(), cu_dtype_name(prec),
                   prec == PREC_FP16 ? " with dynamic loss scaling" : "", o->recompute ? ", recomputing norms and SwiGLU" : "");
            if (dp->world > 1)
                printf("data parallel: rank %d of %d (%s); rank r takes micro-batch m*%d + r of the data order, the ranks "
                       "sum gradients and routing statistics before every step\n",
                       dp->rank, dp->world, !strcmp(dp->backend, "nccl") ? "NCCL" : "shared memory between processes",
                       dp->world);
            cuda_plan_print(&plan, stdout);
            if (cuda_plan_check(&plan, free_b, B, o->recompute, err) != 0) return -1;
            if (cuda_model_create(&e->cm, &m->cfg, B, T, prec, o->recompute, err) != 0) return -1;
            e->precision = prec;
            if (!strcmp(o->attention, "cudnn")) {
                const char *why = NULL;
                if (cuda_model_use_cudnn_attention(e->cm, 1, B, T, &why))
                    printf("attention: cuDNN SDPA (cuDNN %zu)\n", cu_cudnn_version());
                else
                    printf("attention: cuDNN refused (%s): using the flash kernels\n", why);
            }
            if (prec == PREC_FP16) loss_scaler_init(&e->ls, o->loss_scale, 2000);
            e->sel_host = (int *)mallocCheck(sizeof(int) * (size_t)(m->n_moe > 0 ? m->n_moe : 1) * e->N * m->cfg.top_k);
            eng_to_device(e);
            return 0;
        }
    }
#else
    if (!strcmp(o->device, "cuda"))
        return moe_err_set(err, "--device cuda: this build of train has no CUDA backend (build/train_gpu is built by "
                                "`make train` where nvcc is installed)");
#endif
    if (strcmp(o->precision, "fp32") != 0 && strcmp(o->precision, "auto") != 0)
        return moe_err_set(err, "--precision %s needs the CUDA backend; the CPU reference trains in fp32", o->precision);
    if (o->recompute) printf("note: --recompute applies to the CUDA backend; the CPU keeps every activation\n");
    printf("device: CPU (fp32 reference, %d OpenMP threads)\n", omp_get_max_threads());
    return 0;
}

static int eng_precision(const Engine *e) {
#ifdef MOE_WITH_CUDA
    return e->cm ? e->precision : 0;
#else
    (void)e;
    return 0;
#endif
}
static const char *eng_backend(const Engine *e) {
#ifdef MOE_WITH_CUDA
    if (e->cm) return cu_backend();
#else
    (void)e;
#endif
    return "cpu";
}

// what a checkpoint records of the engine: precision and loss scaler
static void eng_fill_state(const Engine *e, CkptTrainState *st) {
    st->precision = eng_precision(e);
    st->loss_scale = eng_loss_scale(e);
#ifdef MOE_WITH_CUDA
    st->good_steps = e->cm && e->precision == PREC_FP16 ? e->ls.good_steps : 0;
#endif
}

static void eng_close(Engine *e) {
#ifdef MOE_WITH_CUDA
    if (e->cm) cuda_model_free(e->cm);
    e->cm = NULL;
    free(e->sel_host);
    e->sel_host = NULL;
#else
    (void)e;
#endif
}

// ---------------------------------------------------------------------------------------
// option resolution

static int shape_field_differs(const char *flag, const ModelConfig *a, const ModelConfig *b) {
#define D(fl, field) \
    if (!strcmp(flag, fl)) return a->field != b->field;
    D("vocab-size", vocab_size) D("dim", dim) D("n-layers", n_layers) D("n-dense-layers", n_dense_layers)
    D("n-heads", n_heads) D("q-lora-rank", q_lora_rank) D("kv-lora-rank", kv_lora_rank)
    D("qk-nope-dim", qk_nope_dim) D("qk-rope-dim", qk_rope_dim) D("v-head-dim", v_head_dim)
    D("inter-dim", inter_dim) D("moe-inter-dim", moe_inter_dim) D("n-routed-experts", n_routed_experts)
    D("n-shared-experts", n_shared_experts) D("mtp-depth", mtp_depth) D("max-seq-len", max_seq_len)
#undef D
    return 0;
}

static const char *resume_allowed[] = {"resume", "name", "max-steps", "gpus", "precision", "recompute", "loss-scale", "attention", "val-every", "val-batches", "sample-every",
                                       "sample-len", "sample-temperature", "sample-top-k", "ckpt-every", "keep-ckpts",
                                       "report-every", "log-every", "max-bad-steps", "stop-after", "tokenizer", "runs-dir",
                                       "ckpt-dir", "device", "train-data", "val-data", NULL};

static int in_list(const char *s, const char **list) {
    for (int i = 0; list[i]; i++)
        if (!strcmp(s, list[i])) return 1;
    return 0;
}

// On resume, take the data paths of the original run from runs/NAME/run.json unless given.
// With --init-from, only the data paths and the tokenizer are taken from the parent's run.
static void resume_data_paths(TrainOpts *o, Flag *flags, int nf, const char *run_name, int with_schedule) {
    char path[2200];
    snprintf(path, sizeof path, "%s/%s/run.json", o->runs_dir, run_name);
    char *js = NULL;
    size_t n = 0;
    MoeErr err;
    if (read_file_all(path, &js, &n, &err) != 0) {
        fprintf(stderr, "warning: %s: using the default data paths\n", err.msg);
        return;
    }
    cJSON *root = cJSON_Parse(js);
    free(js);
    const cJSON *tr = root ? cJSON_GetObjectItemCaseSensitive(root, "train") : NULL;
    const char *keys[3] = {"train_data", "val_data", "tokenizer"};
    const char *fl[3] = {"train-data", "val-data", "tokenizer"};
    char *dst[3] = {o->train_data, o->val_data, o->tokenizer};
    for (int i = 0; i < 3; i++) {
        const cJSON *v = tr ? cJSON_GetObjectItemCaseSensitive(tr, keys[i]) : NULL;
        if (cJSON_IsString(v) && !flags_find(flags, nf, fl[i])->set) snprintf(dst[i], FLAG_STR_LEN, "%s", v->valuestring);
    }
    // the periodic work keeps its schedule (validation decides best.ckpt, so it must match)
    const char *ikeys[7] = {"val_every", "val_batches", "sample_every", "ckpt_every", "keep_ckpts", "report_every", "log_every"};
    const char *ifl[7] = {"val-every", "val-batches", "sample-every", "ckpt-every", "keep-ckpts", "report-every", "log-every"};
    int *idst[7] = {&o->val_every, &o->val_batches, &o->sample_every, &o->ckpt_every, &o->keep_ckpts, &o->report_every,
                    &o->log_every};
    for (int i = 0; i < 7 && with_schedule; i++) {
        const cJSON *v = tr ? cJSON_GetObjectItemCaseSensitive(tr, ikeys[i]) : NULL;
        if (cJSON_IsNumber(v) && !flags_find(flags, nf, ifl[i])->set) *idst[i] = v->valueint;
    }
    if (!tr) fprintf(stderr, "warning: %s has no \"train\" object: using the default data paths\n", path);
    cJSON_Delete(root);
}

// copy a flag's value from the command-line parse into a config read from a checkpoint
static void apply_flag_to_cfg(ModelConfig *dst, const ModelConfig *cli, const char *flag) {
#define A(fl, field) \
    if (!strcmp(flag, fl)) dst->field = cli->field;
    A("top-k", top_k) A("n-expert-groups", n_expert_groups) A("n-limited-groups", n_limited_groups)
    A("route-scale", route_scale) A("score-func", score_func) A("balance", balance)
    A("bias-update-speed", bias_update_speed) A("aux-alpha", aux_alpha) A("capacity-factor", capacity_factor)
    A("mtp-lambda", mtp_lambda) A("rope-theta", rope_theta) A("norm-eps", norm_eps)
#undef A
}

int trainer_resolve_options(TrainOpts *o, Flag *flags, int nf) {
    if (flags_find(flags, nf, "score-func")->set) {
        int s = score_func_from_name(o->score_func_s);
        if (s < 0) {
            fprintf(stderr, "error: --score-func must be sigmoid or softmax, got '%s'\n", o->score_func_s);
            return -1;
        }
        o->cfg.score_func = s;
    }
    if (flags_find(flags, nf, "balance")->set) {
        int b = balance_from_name(o->balance_s);
        if (b < 0) {
            fprintf(stderr, "error: --balance must be none, bias, seqaux, bias+seqaux or aux, got '%s'\n", o->balance_s);
            return -1;
        }
        o->cfg.balance = b;
    }
    if (o->resume[0] && o->init_from[0]) {
        fprintf(stderr, "error: --resume and --init-from cannot be combined (resume continues a run, init-from starts a new one)\n");
        return -1;
    }
    MoeErr err;
    if (o->resume[0]) {
        char path[FLAG_STR_LEN];
        if (ckpt_resolve(o->resume, path, sizeof path, &err) != 0) {
            // a bare run name under a checkpoint folder other than the default one
            if (!strcmp(o->ckpt_dir, "checkpoints")) {
                fprintf(stderr, "error: cannot resume '%s': %s\n", o->resume, err.msg);
                return -1;
            }
            char alt[2048];
            snprintf(alt, sizeof alt, "%s/%s", o->ckpt_dir, o->resume);
            MoeErr err2;
            if (ckpt_resolve(alt, path, sizeof path, &err2) != 0) {
                fprintf(stderr, "error: cannot resume '%s': %s\n", o->resume, err.msg);
                return -1;
            }
        }
        ModelConfig cfg;
        CkptTrainState st;
        if (ckpt_read_header(path, &cfg, &st, &err) != 0) {
            fprintf(stderr, "error: %s\n", err.msg);
            return -1;
        }
        for (int i = 0; i < nf; i++) {
            if (!flags[i].set || in_list(flags[i].name, resume_allowed)) continue;
            if (flags[i].is_shape && shape_field_differs(flags[i].name, &cfg, &o->cfg)) {
                fprintf(stderr, "error: --%s changes a tensor's shape; a resumed run keeps the checkpoint's model (use --init-from for a new run)\n", flags[i].name);
                return -1;
            }
            fprintf(stderr, "warning: --%s is ignored when resuming (the run continues with its saved options; use --init-from for an ablation)\n", flags[i].name);
        }
        o->cfg = cfg;
        snprintf(o->resume, sizeof o->resume, "%s", path);
        if (!flags_find(flags, nf, "name")->set) snprintf(o->name, sizeof o->name, "%s", st.run_name);
        o->batch_size = st.batch_size;
        o->seq_len = st.seq_len;
        // the global batch (GPUs x grad_accum micro-batches) stays the checkpoint's: the data
        // position and the schedule count optimizer steps. --gpus may change if it divides it.
        int ck_world = st.world > 0 ? st.world : 1, global = st.grad_accum * ck_world;
        if (!flags_find(flags, nf, "gpus")->set) o->gpus = ck_world;
        if (o->gpus < 1 || global % o->gpus != 0) {
            fprintf(stderr, "error: --gpus %d: the checkpoint's optimizer step takes %d micro-batches (grad_accum %d x "
                            "%d GPU%s) and a resumed run keeps them; use a number of GPUs that divides %d\n",
                    o->gpus, global, st.grad_accum, ck_world, ck_world > 1 ? "s" : "", global);
            return -1;
        }
        o->grad_accum = global / o->gpus;
        if (o->gpus != ck_world)
            printf("note: resuming on %d GPU%s with grad_accum %d (the checkpoint: %d GPU%s x grad_accum %d): the same "
                   "%d micro-batches per step\n", o->gpus, o->gpus > 1 ? "s" : "", o->grad_accum, ck_world,
                   ck_world > 1 ? "s" : "", st.grad_accum, global);
        o->warmup_steps = st.warmup_steps;
        if (!flags_find(flags, nf, "max-steps")->set) o->max_steps = st.max_steps;
        o->lr = st.lr;
        o->min_lr = st.min_lr;
        o->weight_decay = st.weight_decay;
        o->grad_clip = st.grad_clip;
        o->beta1 = st.beta1;
        o->beta2 = st.beta2;
        o->seed = st.seed;
        // the run continues in the precision it was trained in
        if (!flags_find(flags, nf, "precision")->set)
            snprintf(o->precision, sizeof o->precision, "%s", st.precision == 1 ? "bf16" : st.precision == 2 ? "fp16" : "fp32");
        resume_data_paths(o, flags, nf, o->name, 1);
    } else if (o->init_from[0]) {
        char path[FLAG_STR_LEN];
        if (ckpt_resolve(o->init_from, path, sizeof path, &err) != 0) {
            fprintf(stderr, "error: cannot start from '%s': %s\n", o->init_from, err.msg);
            return -1;
        }
        ModelConfig cfg;
        CkptTrainState st;
        if (ckpt_read_header(path, &cfg, &st, &err) != 0) {
            fprintf(stderr, "error: %s\n", err.msg);
            return -1;
        }
        char *js = o->overrides_json;
        size_t cap = sizeof o->overrides_json, len = 0;
        len += (size_t)snprintf(js + len, cap - len, "{");
        int first = 1;
        for (int i = 0; i < nf; i++) {
            const Flag *f = &flags[i];
            if (!f->set || !strcmp(f->name, "init-from") || !strcmp(f->name, "name")) continue;
            if (f->is_shape) {
                if (shape_field_differs(f->name, &cfg, &o->cfg)) {
                    fprintf(stderr, "error: --%s would change a tensor's shape (checkpoint %s has a different value); "
                                    "--init-from only allows options that keep every shape\n", f->name, path);
                    return -1;
                }
                continue;
            }
            apply_flag_to_cfg(&cfg, &o->cfg, f->name);
            char val[FLAG_STR_LEN + 8];
            switch (f->type) {
                case FLAG_INT: snprintf(val, sizeof val, "%d", *(int *)f->dst); break;
                case FLAG_FLOAT: snprintf(val, sizeof val, "%g", *(float *)f->dst); break;
                case FLAG_BOOL: snprintf(val, sizeof val, "%s", *(int *)f->dst ? "true" : "false"); break;
                case FLAG_U64: snprintf(val, sizeof val, "%llu", (unsigned long long)*(uint64_t *)f->dst); break;
                default: snprintf(val, sizeof val, "\"%s\"", (char *)f->dst); break;
            }
            if (len < cap)
                len += (size_t)snprintf(js + len, cap - len, "%s\"%s\": %s", first ? "" : ", ", f->name, val);
            first = 0;
        }
        if (len < cap) snprintf(js + len, cap - len, "}");
        o->cfg = cfg;
        snprintf(o->init_from, sizeof o->init_from, "%s", path);
        if (st.run_name[0]) resume_data_paths(o, flags, nf, st.run_name, 0);
        // the training options of the parent, unless given on the command line
#define INHERIT(fl, dst, src) \
    if (!flags_find(flags, nf, fl)->set) o->dst = st.src;
        INHERIT("batch-size", batch_size, batch_size) INHERIT("seq-len", seq_len, seq_len)
        INHERIT("grad-accum", grad_accum, grad_accum) INHERIT("warmup-steps", warmup_steps, warmup_steps)
        INHERIT("max-steps", max_steps, max_steps) INHERIT("lr", lr, lr) INHERIT("min-lr", min_lr, min_lr)
        INHERIT("weight-decay", weight_decay, weight_decay) INHERIT("grad-clip", grad_clip, grad_clip)
        INHERIT("beta1", beta1, beta1) INHERIT("beta2", beta2, beta2) INHERIT("seed", seed, seed)
#undef INHERIT
        if (!flags_find(flags, nf, "gpus")->set) o->gpus = st.world > 0 ? st.world : 1;  // with its grad_accum: the parent's batch
        if (!flags_find(flags, nf, "name")->set) {
            fprintf(stderr, "error: --init-from starts a new run: give it a name with --name\n");
            return -1;
        }
    } else {
        if (!flags_find(flags, nf, "max-seq-len")->set && o->seq_len > o->cfg.max_seq_len) o->cfg.max_seq_len = o->seq_len;
        if (!flags_find(flags, nf, "vocab-size")->set) o->cfg.vocab_size = 0;  // from the data
    }
    if (o->batch_size <= 0 || o->seq_len <= 0 || o->grad_accum <= 0 || o->max_steps < 0) {
        fprintf(stderr, "error: --batch-size, --seq-len and --grad-accum must be > 0 and --max-steps >= 0\n");
        return -1;
    }
    if (o->seq_len > o->cfg.max_seq_len) {
        fprintf(stderr, "error: --seq-len %d is longer than the model's max_seq_len %d\n", o->seq_len, o->cfg.max_seq_len);
        return -1;
    }
    if (!(o->loss_scale >= 1.0f) || !isfinite(o->loss_scale)) {
        fprintf(stderr, "error: --loss-scale must be a finite number >= 1, got %g\n", o->loss_scale);
        return -1;
    }
    if (!(o->lr > 0) || o->min_lr < 0 || o->warmup_steps < 0 || o->weight_decay < 0 || o->grad_clip < 0 ||
        !(o->beta1 >= 0 && o->beta1 < 1) || !(o->beta2 >= 0 && o->beta2 < 1)) {
        fprintf(stderr, "error: optimizer options out of range (lr > 0, min-lr >= 0, 0 <= beta < 1, ...)\n");
        return -1;
    }
    if (strcmp(o->device, "auto") && strcmp(o->device, "cpu") && strcmp(o->device, "cuda")) {
        fprintf(stderr, "error: --device must be auto, cpu or cuda, got '%s'\n", o->device);
        return -1;
    }
    if (dp_check(o->gpus, o->device, &err) != 0) {
        fprintf(stderr, "error: %s\n", err.msg);
        return -1;
    }
    if (strcmp(o->attention, "flash") && strcmp(o->attention, "cudnn")) {
        fprintf(stderr, "error: --attention must be flash or cudnn, got '%s'\n", o->attention);
        return -1;
    }
    if (strcmp(o->precision, "auto") && strcmp(o->precision, "fp32") && strcmp(o->precision, "bf16") &&
        strcmp(o->precision, "fp16")) {
        fprintf(stderr, "error: --precision must be auto, fp32, bf16 or fp16, got '%s'\n", o->precision);
        return -1;
    }
    for (const char *p = o->name; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '-' || *p == '_' || *p == '.')) {
            fprintf(stderr, "error: --name '%s' may only hold letters, digits, '-', '_' and '.'\n", o->name);
            return -1;
        }
    if (!o->name[0]) {
        fprintf(stderr, "error: --name must not be empty\n");
        return -1;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------
// logging helpers

static void jnum(FILE *fp, double x) {
    if (isfinite(x)) fprintf(fp, "%.7g", x);
    else fprintf(fp, "null");
}

static double rss_mb(void) {
    FILE *fp = fopen("/proc/self/statm", "r");
    if (!fp) return NAN;
    long pages = 0, rss = 0;
    int ok = fscanf(fp, "%ld %ld", &pages, &rss);
    fclose(fp);
    return ok == 2 ? (double)rss * (double)sysconf(_SC_PAGESIZE) / 1e6 : NAN;
}

// Keep only the lines of a JSONL log whose "step" is <= max_step (resume after a crash that
// happened after the last checkpoint).
static void truncate_jsonl(const char *path, int64_t max_step) {
    char *data = NULL;
    size_t n = 0;
    MoeErr err;
    if (read_file_all(path, &data, &n, &err) != 0) return;
    char *out = (char *)mallocCheck(n + 1);
    size_t on = 0;
    char *line = data;
    while (line < data + n) {
        char *nl = memchr(line, '\n', (size_t)(data + n - line));
        size_t len = nl ? (size_t)(nl - line) + 1 : (size_t)(data + n - line);
        const char *s = strstr(line, "\"step\":");
        long long st = -1;
        if (s && s < line + len) st = strtoll(s + 7, NULL, 10);
        if (nl && st >= 0 && st <= max_step) {
            memcpy(out + on, line, len);
            on += len;
        }
        line += len;
    }
    write_file_atomic(path, out, on, &err);
    free(out);
    free(data);
}

// ---------------------------------------------------------------------------------------
// routing statistics of one step

typedef struct {
    double maxvio, entropy, usage_entropy, dropped, top1;
} LayerSummary;

static LayerSummary summarize(const Model *m, const RoutingStats *s) {
    LayerSummary r;
    int E = m->cfg.n_routed_experts, K = m->cfg.top_k;
    double total = 0.0, mx = 0.0;
    for (int e = 0; e < E; e++) {
        total += s->load[e];
        mx = s->load[e] > mx ? s->load[e] : mx;
    }
    double mean = total / E;
    r.maxvio = mean > 0 ? (mx - mean) / mean : NAN;
    r.entropy = s->tokens > 0 ? s->entropy_sum / s->tokens : NAN;
    double h = 0.0;
    for (int e = 0; e < E; e++) {
        double p = total > 0 ? s->load[e] / total : 0.0;
        if (p > 0) h -= p * log(p);
    }
    r.usage_entropy = total > 0 ? h : NAN;
    r.dropped = s->tokens > 0 ? s->dropped / (s->tokens * K) : NAN;
    r.top1 = s->tokens > 0 ? s->top1_sum / s->tokens : NAN;
    return r;
}

static void log_routing(FILE *fp, const Model *m, int64_t step) {
    int E = m->cfg.n_routed_experts;
    double tokens = m->n_moe ? m->stats[0].tokens : 0;
    fprintf(fp, "{\"step\": %lld, \"tokens\": %.0f, \"layers\": [", (long long)step, tokens);
    for (int i = 0; i < m->n_moe; i++) {
        const RoutingStats *s = &m->stats[i];
        LayerSummary r = summarize(m, s);
        fprintf(fp, "%s{\"layer\": %d, \"load\": [", i ? ", " : "", s->layer);
        for (int e = 0; e < E; e++) fprintf(fp, "%s%.0f", e ? ", " : "", s->load[e]);
        fprintf(fp, "], \"maxvio\": ");
        jnum(fp, r.maxvio);
        fprintf(fp, ", \"entropy\": ");
        jnum(fp, r.entropy);
        fprintf(fp, ", \"entropy_uniform\": %.7g, \"usage_entropy\": ", log((double)E));
        jnum(fp, r.usage_entropy);
        fprintf(fp, ", \"dropped\": ");
        jnum(fp, r.dropped);
        fprintf(fp, ", \"top1_weight\": ");
        jnum(fp, r.top1);
        fprintf(fp, ", \"bias\": [");
        const float *b = m->bias + (size_t)s->layer * E;
        for (int e = 0; e < E; e++) {
            fprintf(fp, "%s", e ? ", " : "");
            jnum(fp, b[e]);
        }
        fprintf(fp, "]}");
    }
    fprintf(fp, "]}\n");
    fflush(fp);
}

// ---------------------------------------------------------------------------------------
// validation: loss, and per-domain / co-activation routing counts

typedef struct {
    int D, E, nm;
    double *dom_counts;   // (nm, D, E)
    double *dom_tokens;   // (D)
    double *within;       // (nm, E, E)
    double *across;       // (nm-1, E, E)
    double tokens;
} EvalStats;

static float evaluate(Engine *eng, DataLoader *val, int max_batches, int B, int T, int *inputs, int *targets,
                      int *domains, EvalStats *es) {
    Model *m = eng->m;
    dataloader_reset(val);
    int64_t total = dataloader_num_batches(val), nb = total;
    if (max_batches > 0 && nb > max_batches) nb = max_batches;
    DataLoaderState vs;
    dataloader_get_state(val, &vs);
    int E = m->cfg.n_routed_experts, K = m->cfg.top_k, N = B * T;
    double loss_sum = 0.0;
    long valid = 0;
    for (int64_t b = 0; b < nb; b++) {
        // a subset of the split is spread evenly over it (shards hold documents grouped by
        // domain, so the first batches alone would see one domain)
        vs.position = (b * total / nb) * B;
        MoeErr serr;
        if (dataloader_set_state(val, &vs, &serr) != 0) break;
        dataloader_next(val, inputs, targets, domains);
        eng_forward(eng, inputs, targets, B, T, 0);
        loss_sum += (double)m->ce_loss * m->n_valid;
        valid += m->n_valid;
        if (!es) continue;
        const int *sel[64];
        for (int i = 0; i < es->nm; i++) sel[i] = eng_selected(eng, i);
        for (int i = 0; i < es->nm; i++) {
            for (int n = 0; n < N; n++) {
                int d = domains[n / T];
                if (d < 0 || d >= es->D) d = 0;
                for (int k = 0; k < K; k++) {
                    int e = sel[i][n * K + k];
                    es->dom_counts[((size_t)i * es->D + d) * E + e] += 1;
                    for (int k2 = 0; k2 < K; k2++) es->within[((size_t)i * E + e) * E + sel[i][n * K + k2]] += 1;
                    if (i + 1 < es->nm)
                        for (int k2 = 0; k2 < K; k2++) es->across[((size_t)i * E + e) * E + sel[i + 1][n * K + k2]] += 1;
                }
            }
        }
        for (int n = 0; n < N; n++) {
            int d = domains[n / T];
            es->dom_tokens[d >= 0 && d < es->D ? d : 0] += 1;
        }
        es->tokens += N;
    }
    return valid ? (float)(loss_sum / valid) : NAN;
}

static void write_matrix(FILE *fp, const double *a, int rows, int cols) {
    fprintf(fp, "[");
    for (int r = 0; r < rows; r++) {
        fprintf(fp, "%s[", r ? ", " : "");
        for (int c = 0; c < cols; c++) fprintf(fp, "%s%.0f", c ? ", " : "", a[(size_t)r * cols + c]);
        fprintf(fp, "]");
    }
    fprintf(fp, "]");
}

static void write_eval_logs(const char *run_dir, const Model *m, const EvalStats *es, DataLoader *val, int64_t step) {
    char path[2200];
    int E = es->E;
    snprintf(path, sizeof path, "%s/domains.jsonl", run_dir);
    FILE *fp = fopen(path, "a");
    if (fp) {
        fprintf(fp, "{\"step\": %lld, \"domains\": [", (long long)step);
        for (int d = 0; d < es->D; d++) fprintf(fp, "%s\"%s\"", d ? ", " : "", dataloader_domain_name(val, d));
        fprintf(fp, "], \"E\": %d, \"tokens\": [", E);
        for (int d = 0; d < es->D; d++) fprintf(fp, "%s%.0f", d ? ", " : "", es->dom_tokens[d]);
        fprintf(fp, "], \"layers\": [");
        for (int i = 0; i < es->nm; i++) {
            fprintf(fp, "%s{\"layer\": %d, \"counts\": ", i ? ", " : "", m->moe_block[i]);
            write_matrix(fp, es->dom_counts + (size_t)i * es->D * E, es->D, E);
            fprintf(fp, "}");
        }
        fprintf(fp, "]}\n");
        fclose(fp);
    }
    snprintf(path, sizeof path, "%s/coact.jsonl", run_dir);
    fp = fopen(path, "a");
    if (fp) {
        fprintf(fp, "{\"step\": %lld, \"E\": %d, \"tokens\": %.0f, \"within\": [", (long long)step, E, es->tokens);
        for (int i = 0; i < es->nm; i++) {
            fprintf(fp, "%s{\"layer\": %d, \"counts\": ", i ? ", " : "", m->moe_block[i]);
            write_matrix(fp, es->within + (size_t)i * E * E, E, E);
            fprintf(fp, "}");
        }
        fprintf(fp, "], \"across\": [");
        for (int i = 0; i + 1 < es->nm; i++) {
            fprintf(fp, "%s{\"layer\": %d, \"next\": %d, \"counts\": ", i ? ", " : "", m->moe_block[i], m->moe_block[i + 1]);
            write_matrix(fp, es->across + (size_t)i * E * E, E, E);
            fprintf(fp, "}");
        }
        fprintf(fp, "]}\n");
        fclose(fp);
    }
}

// ---------------------------------------------------------------------------------------

static int dir_exists_(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

// parameters used per token: everything but the unchosen routed experts
static double active_params(const ModelConfig *c) {
    size_t total = model_layout(c, NULL, NULL);
    int nb = c->n_layers + c->mtp_depth, n_moe = 0;
    for (int l = 0; l < nb; l++) n_moe += l < c->n_layers ? cfg_is_moe_layer(c, l) : (c->n_layers > c->n_dense_layers);
    double idle = (double)n_moe * (c->n_routed_experts - c->top_k) * 3.0 * c->moe_inter_dim * c->dim;
    return (double)total - idle;
}

static void json_str(FILE *fp, const char *s) {
    fputc('"', fp);
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') fprintf(fp, "\\%c", ch);
        else if (ch < 0x20) fprintf(fp, "\\u%04x", ch);
        else fputc(ch, fp);
    }
    fputc('"', fp);
}

static void write_run_json(const char *run_dir, const TrainOpts *o, const Model *m, DataLoader *dl, const char *backend,
                           int precision) {
    char path[2200], cfgjs[4096];
    snprintf(path, sizeof path, "%s/run.json", run_dir);
    FILE *fp = fopen(path, "w");
    if (!fp) {
        fprintf(stderr, "warning: cannot write %s\n", path);
        return;
    }
    time_t now = time(NULL);
    struct tm tmv;
    gmtime_r(&now, &tmv);
    char ts[64];
    strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tmv);
    config_to_json(&m->cfg, cfgjs, sizeof cfgjs);
    fprintf(fp, "{\"name\": ");
    json_str(fp, o->name);
    fprintf(fp, ", \"created\": \"%s\", \"backend\": \"%s\", \"precision\": \"%s\",\n \"config\": %s,\n", ts, backend,
            precision == 1 ? "bf16" : precision == 2 ? "fp16" : "fp32", cfgjs);
    fprintf(fp, " \"train\": {\"batch_size\": %d, \"seq_len\": %d, \"grad_accum\": %d, \"lr\": %g, \"min_lr\": %g, "
                "\"warmup_steps\": %d, \"max_steps\": %d, \"weight_decay\": %g, \"grad_clip\": %g, \"seed\": %llu, "
                "\"train_data\": ",
            o->batch_size, o->seq_len, o->grad_accum, o->lr, o->min_lr, o->warmup_steps, o->max_steps, o->weight_decay,
            o->grad_clip, (unsigned long long)o->seed);
    json_str(fp, o->train_data);
    fprintf(fp, ", \"val_data\": ");
    json_str(fp, o->val_data);
    fprintf(fp, ", \"tokenizer\": ");
    json_str(fp, o->tokenizer);
    fprintf(fp, ", \"val_every\": %d, \"val_batches\": %d, \"sample_every\": %d, \"ckpt_every\": %d, \"keep_ckpts\": %d, "
                "\"report_every\": %d, \"log_every\": %d, \"recompute\": %s, \"attention\": \"%s\", \"gpus\": %d",
            o->val_every, o->val_batches, o->sample_every, o->ckpt_every, o->keep_ckpts, o->report_every, o->log_every,
            o->recompute ? "true" : "false", o->attention, o->gpus);
    fprintf(fp, "},\n \"domains\": [");
    for (int d = 0; d < dataloader_n_domains(dl); d++) {
        if (d) fprintf(fp, ", ");
        json_str(fp, dataloader_domain_name(dl, d));
    }
    fprintf(fp, "],\n");
    if (o->init_from[0]) {
        ModelConfig pc;
        CkptTrainState st;
        MoeErr err;
        long long pstep = -1;
        char prun[64] = "";
        if (ckpt_read_header(o->init_from, &pc, &st, &err) == 0) {
            pstep = st.step;
            snprintf(prun, sizeof prun, "%s", st.run_name);
        }
        fprintf(fp, " \"parent\": {\"checkpoint\": ");
        json_str(fp, o->init_from);
        fprintf(fp, ", \"run\": ");
        json_str(fp, prun);
        fprintf(fp, ", \"step\": %lld, \"keep_optimizer\": %s, \"overrides\": %s},\n", pstep,
                o->keep_optimizer ? "true" : "false", o->overrides_json[0] ? o->overrides_json : "{}");
    }
    fprintf(fp, " \"moe_layers\": [");
    for (int i = 0; i < m->n_moe; i++) fprintf(fp, "%s%d", i ? ", " : "", m->moe_block[i]);
    fprintf(fp, "]}\n");
    fclose(fp);
}

static void fill_state(CkptTrainState *st, const TrainOpts *o, int64_t step, int64_t tokens, uint64_t rng,
                       float best_val, int bad_steps, DataLoader *train) {
    memset(st, 0, sizeof(*st));
    st->step = step;
    st->tokens_seen = tokens;
    st->rng_state = rng;
    st->best_val_loss = best_val;
    st->loss_scale = 1.0f;
    st->precision = 0;
    st->bad_steps = bad_steps;
    dataloader_get_state(train, &st->train_loader);
    st->batch_size = o->batch_size;
    st->seq_len = o->seq_len;
    st->grad_accum = o->grad_accum;
    st->world = o->gpus;
    st->warmup_steps = o->warmup_steps;
    st->max_steps = o->max_steps;
    st->lr = o->lr;
    st->min_lr = o->min_lr;
    st->weight_decay = o->weight_decay;
    st->grad_clip = o->grad_clip;
    st->beta1 = o->beta1;
    st->beta2 = o->beta2;
    st->seed = o->seed;
    snprintf(st->run_name, sizeof st->run_name, "%.63s", o->name);
}

static int save_checkpoint(const TrainOpts *o, const char *ckpt_dir, const Model *m, const CkptTrainState *st, int is_best) {
    MoeErr err;
    double t0 = wall_seconds();
    if (ckpt_save_in_dir(ckpt_dir, m, st, o->keep_ckpts, is_best, &err) != 0) {
        fprintf(stderr, "error: saving a checkpoint failed: %s\n", err.msg);
        return -1;
    }
    printf("saved checkpoint %s/step_%08lld.ckpt (%.1f s)\n", ckpt_dir, (long long)st->step, wall_seconds() - t0);
    return 0;
}

static void print_sample(Model *m, Tokenizer *tok, const TrainOpts *o, uint64_t *rng) {
    int bos = tok ? tokenizer_bos_id(tok) : -1;
    if (bos < 0 || bos >= m->cfg.vocab_size) bos = 0;
    int len = o->sample_len;
    if (len > m->cfg.max_seq_len - 1) len = m->cfg.max_seq_len - 1;
    if (len <= 0) return;
    Generator g;
    MoeErr err;
    if (gen_init(&g, m, len + 1, &err) != 0) {
        fprintf(stderr, "warning: sample: %s\n", err.msg);
        return;
    }
    int *ids = (int *)mallocCheck(sizeof(int) * (size_t)len);
    SampleOpts so = {o->sample_temperature, o->sample_top_k, 1.0f};
    int n = gen_generate(&g, &bos, 1, len, &so, rng_next_u64(rng), ids, NULL, NULL, &err);
    if (n < 0) {
        fprintf(stderr, "warning: sample: %s\n", err.msg);
        n = 0;
    }
    printf("---- sample (temperature %g, top-k %d) ----\n", o->sample_temperature, o->sample_top_k);
    if (tok) {
        int32_t *ids32 = (int32_t *)mallocCheck(sizeof(int32_t) * (size_t)(n + 1));
        for (int i = 0; i < n; i++) ids32[i] = ids[i];
        char *text = NULL;
        size_t tlen = 0;
        if (tokenizer_decode(tok, ids32, (size_t)n, 1, &text, &tlen, &err) == 0) {
            fwrite(text, 1, tlen, stdout);
            free(text);
        }
        free(ids32);
    } else {
        for (int i = 0; i < n; i++) printf("%d ", ids[i]);
    }
    printf("\n-------------------------------------------\n");
    fflush(stdout);
    free(ids);
    gen_free(&g);
}

// the stop decision: Ctrl-C / SIGTERM / --stop-after; in a data-parallel run the one the ranks
// agreed on at the last step (so that every rank stops after the same step)
static int stop_now(const DataParallel *dp, volatile sig_atomic_t *stop) { return dp->world > 1 ? dp->stop : *stop != 0; }

int trainer_run(TrainOpts *o, volatile sig_atomic_t *stop) {
    MoeErr err;
    // data
    DataLoader *train = NULL, *val = NULL;
    if (dataloader_open(&train, o->train_data, o->batch_size, o->seq_len, o->seed, 1, &err) != 0) {
        fprintf(stderr, "error: training data: %s\n", err.msg);
        if (strstr(o->train_data, "data/cache/")) fprintf(stderr, "hint: run `make data` first (or `make train`, which does it)\n");
        return 1;
    }
    if (o->val_data[0]) {
        if (dataloader_open(&val, o->val_data, o->batch_size, o->seq_len, 0, 0, &err) != 0) {
            fprintf(stderr, "error: validation data: %s\n", err.msg);
            dataloader_free(train);
            return 1;
        }
    }
    int data_vocab = dataloader_vocab_size(train);
    if (val && dataloader_vocab_size(val) > data_vocab) data_vocab = dataloader_vocab_size(val);
    if (o->cfg.vocab_size == 0) o->cfg.vocab_size = data_vocab;
    if (o->cfg.vocab_size < data_vocab) {
        fprintf(stderr, "error: the model's vocab_size %d is smaller than the data's vocabulary %d (%s)\n",
                o->cfg.vocab_size, data_vocab, o->train_data);
        dataloader_free(train);
        dataloader_free(val);
        return 1;
    }
    // model
    Model m;
    if (model_init(&m, &o->cfg, o->batch_size, o->seq_len, o->seed, &err) != 0) {
        fprintf(stderr, "error: %s\n", err.msg);
        dataloader_free(train);
        dataloader_free(val);
        return 1;
    }
    int64_t step = 0, tokens_seen = 0;
    uint64_t rng = rng_seed(o->seed ^ 0x5A17ULL);
    float best_val = INFINITY;
    int bad_steps = 0;
    int resumed = 0, ckpt_prec = 0, ckpt_good = 0;  // what a resumed GPU run restores after eng_open
    float ckpt_scale = 1.0f;
    char ckpt_dir[2048], run_dir[2048], path[2200];
    snprintf(ckpt_dir, sizeof ckpt_dir, "%s/%s", o->ckpt_dir, o->name);
    snprintf(run_dir, sizeof run_dir, "%s/%s", o->runs_dir, o->name);
    int main_rank = !dp_is_worker_process(o->gpus);  // the run's files belong to rank 0
    if (o->resume[0]) {
        CkptTrainState st;
        if (ckpt_load(o->resume, &m, &st, 1, &err) != 0 || dataloader_set_state(train, &st.train_loader, &err) != 0) {
            fprintf(stderr, "error: %s\n", err.msg);
            model_free(&m);
            dataloader_free(train);
            dataloader_free(val);
            return 1;
        }
        step = st.step;
        tokens_seen = st.tokens_seen;
        rng = st.rng_state;
        best_val = st.best_val_loss;
        bad_steps = st.bad_steps;
        resumed = 1, ckpt_prec = st.precision, ckpt_scale = st.loss_scale, ckpt_good = st.good_steps;
        printf("resumed from %s at step %lld\n", o->resume, (long long)step);
        static const char *logs[] = {"train.jsonl", "routing.jsonl", "events.jsonl", "domains.jsonl", "coact.jsonl"};
        for (int i = 0; i < 5 && main_rank; i++) {
            snprintf(path, sizeof path, "%s/%s", run_dir, logs[i]);
            truncate_jsonl(path, step);
        }
        snprintf(path, sizeof path, "%s/FINISHED", run_dir);
        if (main_rank) unlink(path);
    } else {
        if (main_rank && (dir_exists_(run_dir) || dir_exists_(ckpt_dir))) {
            if (!o->overwrite) {
                fprintf(stderr, "error: run '%s' already exists (%s); continue it with --resume %s (make train RESUME=1), "
                                "or start another with --name NAME, or --overwrite\n", o->name, run_dir, o->name);
                model_free(&m);
                dataloader_free(train);
                dataloader_free(val);
                return 1;
            }
            static const char *logs[] = {"train.jsonl", "routing.jsonl", "events.jsonl", "domains.jsonl", "coact.jsonl", "FINISHED"};
            for (int i = 0; i < 6; i++) {
                snprintf(path, sizeof path, "%s/%s", run_dir, logs[i]);
                unlink(path);
            }
        }
        if (o->init_from[0]) {
            CkptTrainState st;
            if (ckpt_load(o->init_from, &m, &st, o->keep_optimizer, &err) != 0) {
                fprintf(stderr, "error: %s\n", err.msg);
                model_free(&m);
                dataloader_free(train);
                dataloader_free(val);
                return 1;
            }
            printf("initialised from %s (step %lld of run '%s'), optimizer state %s\n", o->init_from,
                   (long long)st.step, st.run_name, o->keep_optimizer ? "kept" : "reset");
            // continue with the data the parent would have seen next when the order is the same
            if (st.seed == o->seed && st.batch_size == o->batch_size && st.seq_len == o->seq_len &&
                dataloader_set_state(train, &st.train_loader, &err) == 0)
                printf("data: continuing the parent's order at epoch %lld, window %lld\n",
                       (long long)st.train_loader.epoch, (long long)st.train_loader.position);
            else
                printf("data: a new order (the seed, batch size or sequence length differs from the parent's)\n");
        }
    }
    // data parallelism: rank 0 starts the workers, every rank selects its GPU, the ranks meet
    DataParallel dp;
    Engine eng;
    memset(&eng, 0, sizeof eng);
    if (dp_start(&dp, o->gpus, o->argv, &err) != 0 || eng_open(&eng, &m, o, o->batch_size, o->seq_len, &dp, &err) != 0) {
        fprintf(stderr, "error: %s\n", err.msg);
        eng_close(&eng);
        model_free(&m);
        dataloader_free(train);
        dataloader_free(val);
        return dp_finish(&dp, 1);
    }
    if (resumed) eng_resume(&eng, step, ckpt_prec, ckpt_scale, ckpt_good);
    if (main_rank && (make_dirs(run_dir, &err) != 0 || make_dirs(ckpt_dir, &err) != 0)) {
        fprintf(stderr, "error: %s\n", err.msg);
        return dp_finish(&dp, 1);
    }
    if (main_rank) write_run_json(run_dir, o, &m, val ? val : train, eng_backend(&eng), eng_precision(&eng));
    config_print(&m.cfg, stdout);
    int W = dp.world;
    char gpus_s[32] = "";
    if (W > 1) snprintf(gpus_s, sizeof gpus_s, " x %d GPUs", W);
    printf("parameters: %.2f M total, %.2f M active per token | batch %d x %d x %d accum%s = %d tokens/step\n",
           (double)m.num_params / 1e6, active_params(&m.cfg) / 1e6, o->batch_size, o->seq_len, o->grad_accum, gpus_s,
           o->batch_size * o->seq_len * o->grad_accum * W);
    GenCacheReport cr;
    generate_cache_report(&m.cfg, &cr);
    generate_cache_report_print(&cr, m.cfg.max_seq_len, stdout);
    printf("logs: %s/ | checkpoints: %s/ | stop with Ctrl-C (saves), resume with: %s --resume %s\n", run_dir, ckpt_dir,
           o->prog, o->name);
    fflush(stdout);
    Tokenizer *tok = NULL;
    if (main_rank && o->sample_every > 0 && o->tokenizer[0] && file_exists(o->tokenizer)) {
        tok = tokenizer_load(o->tokenizer, &err);
        if (!tok) fprintf(stderr, "warning: samples will print token ids: %s\n", err.msg);
    }
    // logs (the workers of a data-parallel run write nothing)
    snprintf(path, sizeof path, "%s/train.jsonl", run_dir);
    FILE *ftrain = fopenCheck(main_rank ? path : "/dev/null", "a");
    snprintf(path, sizeof path, "%s/routing.jsonl", run_dir);
    FILE *frout = fopenCheck(main_rank ? path : "/dev/null", "a");
    snprintf(path, sizeof path, "%s/events.jsonl", run_dir);
    FILE *fevents = fopenCheck(main_rank ? path : "/dev/null", "a");
    CollapseParams cp;
    collapse_params_default(&cp);
    CollapseDetector det;
    int have_det = m.n_moe > 0 && collapse_init(&det, m.n_moe, m.cfg.n_routed_experts, m.cfg.top_k, &cp, &err) == 0;
    int B = o->batch_size, T = o->seq_len, N = B * T;
    int *inputs = (int *)mallocCheck(sizeof(int) * (size_t)N);
    int *targets = (int *)mallocCheck(sizeof(int) * (size_t)N);
    int *domains = (int *)mallocCheck(sizeof(int) * (size_t)B);
    EvalStats es;
    memset(&es, 0, sizeof es);
    if (val && m.n_moe > 0) {
        es.D = dataloader_n_domains(val) > 0 ? dataloader_n_domains(val) : 1;
        es.E = m.cfg.n_routed_experts;
        es.nm = m.n_moe;
        es.dom_counts = (double *)callocCheck((size_t)es.nm * es.D * es.E, sizeof(double));
        es.dom_tokens = (double *)callocCheck((size_t)es.D, sizeof(double));
        es.within = (double *)callocCheck((size_t)es.nm * es.E * es.E, sizeof(double));
        es.across = (double *)callocCheck((size_t)es.nm * es.E * es.E, sizeof(double));
    }
    int rc = 0;
    double flops_per_token = model_flops_per_token(&m.cfg, T);
    int64_t start_step = step, saved_step = step;
    double t_report = 0.0;
    while (step < o->max_steps && !stop_now(&dp, stop)) {
        dp_test_hook(&dp, step);
        double t0 = wall_seconds();
        eng_begin_step(&eng, 1.0f / (float)(o->grad_accum * W));
        double loss = 0.0, ce = 0.0, aux = 0.0, mtp = 0.0;
        int finite = 1;
        for (int micro = 0; micro < o->grad_accum; micro++) {
            dp_next_batch(&dp, train, B, T, inputs, targets, domains);
            float l = eng_forward(&eng, inputs, targets, B, T, 1);
            if (!isfinite(l)) {
                finite = 0;
                break;
            }
            eng_backward(&eng);
            loss += l / o->grad_accum;
            ce += m.ce_loss / o->grad_accum;
            aux += m.aux_loss / o->grad_accum;
            mtp += m.mtp_loss / o->grad_accum;
        }
        if (W > 1) {  // the means over the ranks, and the decisions every rank must share
            double v[6] = {loss, ce, aux, mtp, finite ? 0.0 : 1.0, *stop ? 1.0 : 0.0};
            dp_sum_host(&dp, v, 6);
            loss = v[0] / W, ce = v[1] / W, aux = v[2] / W, mtp = v[3] / W;
            finite = v[4] == 0.0;
            dp.stop = v[5] > 0.0;
        }
        float lr = lm_lr_schedule((int)step, o->warmup_steps, o->max_steps, o->lr, o->min_lr);
        float scale_used = eng_loss_scale(&eng);
        float norm = finite ? eng_update(&eng, lr, o, (int)step + 1) : NAN;
        if (finite && !isfinite(norm) && scale_used > 1.0f) {
            // fp16: the loss scale was too large for this step's gradients (an overflow, not a
            // divergence): skipped, the scale halved (LossScaler), not counted as a bad step
            printf("step %lld: fp16 gradient overflow at loss scale %g: step skipped, scale now %g\n", (long long)step + 1,
                   scale_used, eng_loss_scale(&eng));
            fprintf(ftrain, "{\"step\": %lld, \"skipped\": true, \"reason\": \"fp16 overflow\", \"loss_scale\": %g}\n",
                    (long long)step + 1, eng_loss_scale(&eng));
            fflush(ftrain);
            continue;
        }
        if (!finite || !isfinite(norm)) {
            bad_steps++;
            fprintf(stderr, "warning: step %lld: %s is not finite; the step is skipped (parameters unchanged) [%d in a row]\n",
                    (long long)step + 1, finite ? "the gradient norm" : "the loss", bad_steps);
            fprintf(ftrain, "{\"step\": %lld, \"skipped\": true}\n", (long long)step + 1);
            fflush(ftrain);
            if (bad_steps >= o->max_bad_steps) {
                fprintf(stderr, "error: %d non-finite steps in a row: stopping. Lower the learning rate (--lr) or resume from "
                                "the last checkpoint in %s\n", bad_steps, ckpt_dir);
                rc = 1;
                break;
            }
            continue;
        }
        bad_steps = 0;
        step++;
        tokens_seen += (int64_t)N * o->grad_accum * W;
        double dt = wall_seconds() - t0;
        double tps = (double)N * o->grad_accum * W / dt;  // all ranks
        // logs
        fprintf(ftrain, "{\"step\": %lld, \"loss\": ", (long long)step);
        jnum(ftrain, loss);
        fprintf(ftrain, ", \"ce\": ");
        jnum(ftrain, ce);
        fprintf(ftrain, ", \"aux_loss\": ");
        jnum(ftrain, aux);
        if (m.cfg.mtp_depth) {
            fprintf(ftrain, ", \"mtp_loss\": ");
            jnum(ftrain, mtp);
        }
        fprintf(ftrain, ", \"lr\": %.7g, \"grad_norm\": ", lr);
        jnum(ftrain, norm);
        fprintf(ftrain, ", \"tokens_per_s\": %.1f, \"ms\": %.1f, \"tokens\": %lld, \"mem_mb\": ", tps, dt * 1e3,
                (long long)tokens_seen);
        jnum(ftrain, rss_mb());
        fprintf(ftrain, ", \"gflops\": %.2f", tps * flops_per_token / 1e9);
        if (eng_precision(&eng) == 2) fprintf(ftrain, ", \"loss_scale\": %g", scale_used);
        fprintf(ftrain, "}\n");
        fflush(ftrain);
        double mean_vio = 0.0, min_ent = INFINITY;
        if (m.n_moe > 0) {
            log_routing(frout, &m, step);
            for (int i = 0; i < m.n_moe; i++) {
                LayerSummary r = summarize(&m, &m.stats[i]);
                mean_vio += r.maxvio / m.n_moe;
                min_ent = r.entropy < min_ent ? r.entropy : min_ent;
                if (have_det) {
                    float loadf[1024];
                    for (int e = 0; e < m.cfg.n_routed_experts; e++) loadf[e] = (float)m.stats[i].load[e];
                    CollapseEvent ev;
                    if (collapse_update(&det, step, i, m.stats[i].layer, loadf, (float)r.entropy, &ev)) {
                        char line[512];
                        collapse_event_json(&ev, line, sizeof line);
                        fputs(line, fevents);
                        fflush(fevents);
                        collapse_event_text(&ev, line, sizeof line);
                        fprintf(stderr, "%s\n", line);
                    }
                }
            }
        }
        if (o->log_every > 0 && (step % o->log_every == 0 || step == 1)) {
            printf("step %5lld/%d | loss %.4f | lr %.2e | norm %6.3f | %7.0f tok/s | %5.1f GFLOP/s", (long long)step,
                   o->max_steps, loss, lr, norm, tps, tps * flops_per_token / 1e9);
            if (m.n_moe > 0)
                printf(" | maxvio %.3f | min H %.3f/%.3f", mean_vio, min_ent, log((double)m.cfg.n_routed_experts));
#ifdef MOE_WITH_CUDA
            if (eng.cm) {
                double mfu = gpu_mfu(tps * flops_per_token / W, eng.gpu_name, eng.precision);  // per GPU
                if (mfu >= 0) printf(" | MFU %.1f%%", 100.0 * mfu);
            }
#endif
            printf("\n");
            fflush(stdout);
        }
        if (o->stop_after > 0 && step - start_step >= o->stop_after) *stop = 1, dp.stop = 1;
        int last = step == o->max_steps || stop_now(&dp, stop);
        int is_best = 0;
        if (main_rank && val && o->val_every > 0 && (step % o->val_every == 0 || last)) {
            if (es.dom_counts) {
                memset(es.dom_counts, 0, sizeof(double) * (size_t)es.nm * es.D * es.E);
                memset(es.dom_tokens, 0, sizeof(double) * (size_t)es.D);
                memset(es.within, 0, sizeof(double) * (size_t)es.nm * es.E * es.E);
                memset(es.across, 0, sizeof(double) * (size_t)es.nm * es.E * es.E);
                es.tokens = 0;
            }
            float vl = evaluate(&eng, val, o->val_batches, B, T, inputs, targets, domains,
                                es.dom_counts ? &es : NULL);
            printf("step %5lld | val loss %.4f\n", (long long)step, vl);
            fprintf(ftrain, "{\"step\": %lld, \"val_loss\": ", (long long)step);
            jnum(ftrain, vl);
            fprintf(ftrain, "}\n");
            fflush(ftrain);
            if (es.dom_counts) write_eval_logs(run_dir, &m, &es, val, step);
            if (vl < best_val) {
                best_val = vl;
                is_best = 1;
            }
        }
        if (main_rank && o->sample_every > 0 && step % o->sample_every == 0) {
            eng_to_host(&eng);
            print_sample(&m, tok, o, &rng);
        }
        if (main_rank && ((o->ckpt_every > 0 && step % o->ckpt_every == 0) || last || is_best)) {
            CkptTrainState st;
            fill_state(&st, o, step, tokens_seen, rng, best_val, bad_steps, train);
            eng_fill_state(&eng, &st);
            eng_to_host(&eng);
            if (save_checkpoint(o, ckpt_dir, &m, &st, is_best) != 0) {
                rc = 1;
                break;
            }
            saved_step = step;
        }
        if (main_rank && o->report_every > 0 && step % o->report_every == 0 && !last) {
            double tr = wall_seconds();
            if (report_write(run_dir, &err) != 0) fprintf(stderr, "warning: report: %s\n", err.msg);
            t_report += wall_seconds() - tr;
        }
    }
    if (main_rank && rc == 0 && saved_step != step) {  // a signal arrived after this step's checkpoint decision
        CkptTrainState st;
        fill_state(&st, o, step, tokens_seen, rng, best_val, bad_steps, train);
        eng_fill_state(&eng, &st);
        eng_to_host(&eng);
        if (save_checkpoint(o, ckpt_dir, &m, &st, 0) != 0) rc = 1;
    }
    if (stop_now(&dp, stop) && rc == 0) printf("stopped at step %lld (checkpoint saved)\n", (long long)step);
    if (step == start_step && rc == 0 && !stop_now(&dp, stop)) printf("nothing to do: the run is at step %lld of %d\n", (long long)step, o->max_steps);
    fclose(ftrain);
    fclose(frout);
    fclose(fevents);
    if (main_rank && step >= o->max_steps && rc == 0) {  // before the last report, so that its page stops reloading
        snprintf(path, sizeof path, "%s/FINISHED", run_dir);
        write_file_atomic(path, "", 0, &err);
    }
    if (main_rank) {
        if (report_write(run_dir, &err) != 0) fprintf(stderr, "warning: report: %s\n", err.msg);
        else printf("report: %s/report.html\n", run_dir);
    }
    if (t_report > 0) printf("time spent refreshing reports: %.1f s\n", t_report);
    if (rc == 0 && step < o->max_steps)
        printf("to continue: %s --resume %s   (or: make train RESUME=1 NAME=%s)\n", o->prog, o->name, o->name);
    else if (rc == 0)
        printf("done. To train longer: %s --resume %s --max-steps %d\n", o->prog, o->name, o->max_steps * 2);
    if (!main_rank && rc == 0 && getenv("MOE_DP_TEST_SAVE")) {  // test hook: a worker's final model (do the ranks agree?)
        CkptTrainState st;
        fill_state(&st, o, step, tokens_seen, rng, best_val, bad_steps, train);
        eng_fill_state(&eng, &st);
        eng_to_host(&eng);
        snprintf(path, sizeof path, "%s/rank%d.ckpt", ckpt_dir, dp.rank);
        if (ckpt_save(path, &m, &st, &err) != 0) fprintf(stderr, "error: %s\n", err.msg), rc = 1;
    }
    if (have_det) collapse_free(&det);
    free(es.dom_counts);
    free(es.dom_tokens);
    free(es.within);
    free(es.across);
    free(inputs);
    free(targets);
    free(domains);
    if (tok) tokenizer_free(tok);
    eng_close(&eng);
    model_free(&m);
    dataloader_free(train);
    dataloader_free(val);
    return dp_finish(&dp, rc);
}
