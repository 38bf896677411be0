// The training loop behind the `train` program.
#ifndef MOE_TRAINER_H
#define MOE_TRAINER_H

#include <signal.h>
#include <stdint.h>

#include "../model/config.h"
#include "flags.h"

typedef struct {
    ModelConfig cfg;
    char name[FLAG_STR_LEN];
    char train_data[FLAG_STR_LEN], val_data[FLAG_STR_LEN], tokenizer[FLAG_STR_LEN];
    char resume[FLAG_STR_LEN], init_from[FLAG_STR_LEN];
    char runs_dir[FLAG_STR_LEN], ckpt_dir[FLAG_STR_LEN];
    char device[FLAG_STR_LEN], precision[FLAG_STR_LEN], attention[FLAG_STR_LEN];
    char score_func_s[FLAG_STR_LEN], balance_s[FLAG_STR_LEN];
    int keep_optimizer, overwrite, recompute;
    int batch_size, seq_len, grad_accum, max_steps, warmup_steps;
    float lr, min_lr, weight_decay, grad_clip, beta1, beta2, loss_scale;
    uint64_t seed;
    int val_every, val_batches, sample_every, sample_len, sample_top_k;
    float sample_temperature;
    int ckpt_every, keep_ckpts, report_every, log_every, max_bad_steps, stop_after;
    int gpus;                    // data parallelism: processes, one per GPU (train/dp.h)
    char **argv;                 // the command line (the workers of --gpus run it again)
    // filled by trainer_resolve_options
    char overrides_json[4096];   // options set on the command line with --init-from
    char prog[256];              // argv[0], for the resume command printed at the end
} TrainOpts;

// Apply string options (score function, balance), validate; for --resume / --init-from,
// read the checkpoint and merge its config with the overrides (refusing shape changes).
int trainer_resolve_options(TrainOpts *o, Flag *flags, int n_flags);
// Run the training loop; stop is raised by SIGINT/SIGTERM (finish the step, save, exit 0).
int trainer_run(TrainOpts *o, volatile sig_atomic_t *stop);

#endif
