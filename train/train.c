// train: trains a DeepSeek-V3-style MoE language model on token shards (CPU reference).
// One line per step on the console, train.jsonl + routing.jsonl (docs/LOGS.md) in runs/NAME/,
// periodic validation, samples, checkpoints (exact resume), reports.
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "../common/util.h"
#include "flags.h"
#include "trainer.h"

static volatile sig_atomic_t g_stop = 0;
static void on_signal(int sig) {
    (void)sig;
    g_stop++;
    if (g_stop >= 3) _exit(130);  // a third Ctrl-C: leave now
}

// ---------------------------------------------------------------------------------------
// options

static void opts_default(TrainOpts *o) {
    memset(o, 0, sizeof(*o));
    config_default(&o->cfg);
    snprintf(o->name, sizeof o->name, "default");
    snprintf(o->train_data, sizeof o->train_data, "data/cache/default/train_*.bin");
    snprintf(o->val_data, sizeof o->val_data, "data/cache/default/val_*.bin");
    snprintf(o->tokenizer, sizeof o->tokenizer, "data/cache/default/tokenizer.json");
    snprintf(o->runs_dir, sizeof o->runs_dir, "runs");
    snprintf(o->ckpt_dir, sizeof o->ckpt_dir, "checkpoints");
    snprintf(o->device, sizeof o->device, "auto");
    snprintf(o->precision, sizeof o->precision, "auto");
    snprintf(o->attention, sizeof o->attention, "flash");
    o->batch_size = 8;
    o->seq_len = 256;
    o->grad_accum = 1;
    o->max_steps = 600;
    o->lr = 3e-3f;
    o->min_lr = 3e-4f;
    o->warmup_steps = 30;
    o->weight_decay = 0.1f;
    o->grad_clip = 1.0f;
    o->loss_scale = 65536.0f;
    o->beta1 = 0.9f;
    o->beta2 = 0.95f;
    o->seed = 1337;
    o->val_every = 50;
    o->val_batches = 8;
    o->sample_every = 100;
    o->sample_len = 64;
    o->sample_temperature = 0.8f;
    o->sample_top_k = 40;
    o->ckpt_every = 100;
    o->keep_ckpts = 3;
    o->report_every = 50;
    o->max_bad_steps = 5;
    o->log_every = 1;
    o->gpus = 1;
}

#define NFLAGS_MAX 96

static int build_flags(Flag *f, TrainOpts *o) {
    int n = 0;
    ModelConfig *c = &o->cfg;
#define FL(name_, sh, type_, dst_, help_, shape_) f[n++] = (Flag){name_, sh, type_, dst_, help_, shape_, 0, {0}}
    // run
    FL("name", 'o', FLAG_STR, o->name, "run name: logs in runs/NAME, checkpoints in checkpoints/NAME", 0);
    FL("train-data", 'i', FLAG_STR, o->train_data, "training shards (path, glob, comma-separated)", 0);
    FL("val-data", 'j', FLAG_STR, o->val_data, "validation shards (empty: no validation)", 0);
    FL("tokenizer", 0, FLAG_STR, o->tokenizer, "tokenizer.json used to print samples (missing: ids)", 0);
    FL("resume", 'r', FLAG_STR, o->resume, "continue a run: a .ckpt file, a checkpoint dir or a run name", 0);
    FL("init-from", 0, FLAG_STR, o->init_from, "start a new run from a checkpoint's parameters (ablations)", 0);
    FL("keep-optimizer", 0, FLAG_BOOL, &o->keep_optimizer, "with --init-from: keep AdamW moments (else reset)", 0);
    FL("overwrite", 0, FLAG_BOOL, &o->overwrite, "start afresh even if runs/NAME exists (deletes its logs)", 0);
    FL("device", 0, FLAG_STR, o->device, "auto | cpu | cuda", 0);
    FL("precision", 0, FLAG_STR, o->precision,
       "auto (CPU: fp32; GPU: bf16 on compute capability 8.0+, else fp16 with loss scaling) | fp32 | bf16 | fp16", 0);
    FL("attention", 0, FLAG_STR, o->attention, "GPU: flash (the project's kernels) | cudnn (cuDNN SDPA where it accepts the shapes)", 0);
    FL("loss-scale", 0, FLAG_FLOAT, &o->loss_scale, "fp16: initial dynamic loss scale (halved on overflow, doubled after 2000 good steps)", 0);
    FL("recompute", 0, FLAG_BOOL, &o->recompute, "GPU: recompute norms and SwiGLU in backward (less memory, same result)", 0);
    FL("gpus", 0, FLAG_INT, &o->gpus, "data parallelism on N GPUs of this machine (NCCL; N x grad-accum micro-batches per step)", 0);
    FL("runs-dir", 0, FLAG_STR, o->runs_dir, "folder of run logs", 0);
    FL("ckpt-dir", 0, FLAG_STR, o->ckpt_dir, "folder of checkpoints", 0);
    // optimisation
    FL("batch-size", 'b', FLAG_INT, &o->batch_size, "sequences per micro-batch", 0);
    FL("seq-len", 't', FLAG_INT, &o->seq_len, "tokens per sequence (<= max_seq_len)", 0);
    FL("grad-accum", 'a', FLAG_INT, &o->grad_accum, "micro-batches per optimizer step", 0);
    FL("max-steps", 'x', FLAG_INT, &o->max_steps, "optimizer steps (total, including resumed ones)", 0);
    FL("lr", 'l', FLAG_FLOAT, &o->lr, "peak learning rate", 0);
    FL("min-lr", 0, FLAG_FLOAT, &o->min_lr, "final learning rate of the cosine schedule", 0);
    FL("warmup-steps", 'u', FLAG_INT, &o->warmup_steps, "linear warmup steps", 0);
    FL("weight-decay", 'c', FLAG_FLOAT, &o->weight_decay, "AdamW decoupled weight decay (matrices only)", 0);
    FL("grad-clip", 0, FLAG_FLOAT, &o->grad_clip, "global gradient-norm clip (0 = off)", 0);
    FL("beta1", 0, FLAG_FLOAT, &o->beta1, "AdamW beta1", 0);
    FL("beta2", 0, FLAG_FLOAT, &o->beta2, "AdamW beta2", 0);
    FL("seed", 's', FLAG_U64, &o->seed, "random seed (weights, data order, samples)", 0);
    // periodic work
    FL("val-every", 'v', FLAG_INT, &o->val_every, "validate every N steps (0 = never)", 0);
    FL("val-batches", 0, FLAG_INT, &o->val_batches, "validation batches (0 = the whole split)", 0);
    FL("sample-every", 'g', FLAG_INT, &o->sample_every, "print a generated sample every N steps (0 = never)", 0);
    FL("sample-len", 0, FLAG_INT, &o->sample_len, "tokens per sample", 0);
    FL("sample-temperature", 0, FLAG_FLOAT, &o->sample_temperature, "sampling temperature", 0);
    FL("sample-top-k", 0, FLAG_INT, &o->sample_top_k, "sampling top-k (0 = off)", 0);
    FL("ckpt-every", 'k', FLAG_INT, &o->ckpt_every, "save a checkpoint every N steps (0 = only at the end)", 0);
    FL("keep-ckpts", 0, FLAG_INT, &o->keep_ckpts, "step checkpoints kept (plus best.ckpt)", 0);
    FL("report-every", 0, FLAG_INT, &o->report_every, "refresh the PNG report every N steps (0 = at the end)", 0);
    FL("log-every", 0, FLAG_INT, &o->log_every, "console line every N steps", 0);
    FL("stop-after", 0, FLAG_INT, &o->stop_after, "stop (save, exit 0) after N steps of this session, as Ctrl-C would (0 = off)", 0);
    FL("max-bad-steps", 0, FLAG_INT, &o->max_bad_steps, "stop after this many NaN/inf steps in a row", 0);
    // model (shape)
    FL("vocab-size", 'V', FLAG_INT, &c->vocab_size, "vocabulary size (0 = from the data)", 1);
    FL("dim", 'C', FLAG_INT, &c->dim, "model width", 1);
    FL("n-layers", 'L', FLAG_INT, &c->n_layers, "transformer blocks", 1);
    FL("n-dense-layers", 0, FLAG_INT, &c->n_dense_layers, "first blocks with a dense FFN", 1);
    FL("n-heads", 'H', FLAG_INT, &c->n_heads, "attention heads", 1);
    FL("q-lora-rank", 0, FLAG_INT, &c->q_lora_rank, "query compression rank (0 = plain wq)", 1);
    FL("kv-lora-rank", 0, FLAG_INT, &c->kv_lora_rank, "latent KV rank", 1);
    FL("qk-nope-dim", 0, FLAG_INT, &c->qk_nope_dim, "per-head query/key dims without RoPE", 1);
    FL("qk-rope-dim", 0, FLAG_INT, &c->qk_rope_dim, "per-head query/key dims with RoPE (shared k_pe)", 1);
    FL("v-head-dim", 0, FLAG_INT, &c->v_head_dim, "per-head value dims", 1);
    FL("inter-dim", 0, FLAG_INT, &c->inter_dim, "dense FFN width", 1);
    FL("moe-inter-dim", 0, FLAG_INT, &c->moe_inter_dim, "width of one expert", 1);
    FL("n-routed-experts", 'E', FLAG_INT, &c->n_routed_experts, "routed experts per MoE layer", 1);
    FL("n-shared-experts", 0, FLAG_INT, &c->n_shared_experts, "shared experts (one MLP of n x width)", 1);
    FL("mtp-depth", 0, FLAG_INT, &c->mtp_depth, "multi-token prediction depth (0 or 1)", 1);
    FL("max-seq-len", 'T', FLAG_INT, &c->max_seq_len, "longest sequence the model supports", 1);
    // model (routing; no shape change)
    FL("top-k", 'K', FLAG_INT, &c->top_k, "experts per token", 0);
    FL("n-expert-groups", 0, FLAG_INT, &c->n_expert_groups, "expert groups for group-limited routing", 0);
    FL("n-limited-groups", 0, FLAG_INT, &c->n_limited_groups, "groups a token may use", 0);
    FL("route-scale", 0, FLAG_FLOAT, &c->route_scale, "routing weight multiplier", 0);
    FL("score-func", 0, FLAG_STR, o->score_func_s, "sigmoid (DeepSeek-V3) | softmax (DeepSeek-MoE)", 0);
    FL("balance", 0, FLAG_STR, o->balance_s, "none | bias | seqaux | bias+seqaux | aux", 0);
    FL("bias-update-speed", 0, FLAG_FLOAT, &c->bias_update_speed, "gamma of the loss-free bias update", 0);
    FL("aux-alpha", 0, FLAG_FLOAT, &c->aux_alpha, "alpha of the auxiliary balancing loss", 0);
    FL("capacity-factor", 0, FLAG_FLOAT, &c->capacity_factor, "expert capacity factor (0 = dropless)", 0);
    FL("mtp-lambda", 0, FLAG_FLOAT, &c->mtp_lambda, "MTP loss weight", 0);
    FL("rope-theta", 0, FLAG_FLOAT, &c->rope_theta, "RoPE base", 0);
    FL("norm-eps", 0, FLAG_FLOAT, &c->norm_eps, "RMSNorm epsilon", 0);
#undef FL
    return n;
}


int main(int argc, char **argv) {
    TrainOpts o;
    opts_default(&o);
    snprintf(o.score_func_s, sizeof o.score_func_s, "%s", score_func_name(o.cfg.score_func));
    snprintf(o.balance_s, sizeof o.balance_s, "%s", balance_name(o.cfg.balance));
    Flag flags[NFLAGS_MAX];
    int nf = build_flags(flags, &o);
    flags_snapshot_defaults(flags, nf);
    int pr = flags_parse(flags, nf, argc, argv);
    if (pr == 1) {
        flags_usage(flags, nf, argv[0],
                    "Trains a DeepSeek-V3-style MoE language model (MLA, shared + routed experts, loss-free\n"
                    "balancing) on token shards. Logs: runs/NAME/{train,routing,events}.jsonl, report.html.\n"
                    "Checkpoints: checkpoints/NAME/. Ctrl-C finishes the step, saves and exits.",
                    stdout);
        return 0;
    }
    if (pr != 0) return 2;
    snprintf(o.prog, sizeof o.prog, "%s", argv[0]);
    o.argv = argv;
    if (trainer_resolve_options(&o, flags, nf) != 0) return 1;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    int rc = trainer_run(&o, &g_stop);
    return rc;
}
