// Checkpoint files (.ckpt): everything needed to resume a run exactly.
//
// Layout (little-endian):
//   CkptHeader (fixed size, see below): magic "MOECKPT\0", version, header size, sizes of the
//   sections, the ModelConfig, the training state (CkptTrainState), the precision, the run name
//   then the payload: params (num_params fp32), AdamW m, AdamW v, bias (n_blocks x E fp32)
//   then a CRC-32C of header + payload.
// Written through write_file_atomic (tmp, fsync, rename). Readers validate magic, version,
// sizes against the file length, the config (config_validate) and the checksum, and name the
// file and what is wrong.
#ifndef MOE_CHECKPOINT_H
#define MOE_CHECKPOINT_H

#include <stdint.h>

#include "../common/util.h"
#include "../data/dataloader.h"
#include "../model/model.h"

#define CKPT_MAGIC "MOECKPT"
#define CKPT_VERSION 1

// Training state saved beside the model (plain data).
typedef struct {
    int64_t step;             // optimizer steps completed
    int64_t tokens_seen;
    uint64_t rng_state;       // trainer RNG (sampling, etc.)
    float best_val_loss;      // +inf when none yet
    float loss_scale;         // dynamic loss scale (1 for fp32)
    int32_t good_steps;       // steps since the loss scale last changed
    int32_t precision;        // 0 fp32, 1 bf16, 2 fp16
    int32_t bad_steps;        // consecutive NaN/inf steps
    int32_t reserved0;
    DataLoaderState train_loader;
    // run options that a resume must reuse
    int32_t batch_size, seq_len, grad_accum, warmup_steps;
    int32_t max_steps, world;  // world: GPUs of a data-parallel run (0 in older files: 1)
    float lr, min_lr, weight_decay, grad_clip, beta1, beta2;
    uint64_t seed;
    char run_name[64];
    char reserved[128];
} CkptTrainState;

// Save model parameters, optimizer state, balancing biases and the train state to path (atomic).
int ckpt_save(const char *path, const Model *m, const CkptTrainState *st, MoeErr *err);
// Read only the header: config and train state (for --resume / --init-from planning).
int ckpt_read_header(const char *path, ModelConfig *cfg, CkptTrainState *st, MoeErr *err);
// Full check of a checkpoint file without loading it: everything ckpt_read_header checks plus
// the CRC-32C of header + payload. 0 when the file is usable.
int ckpt_verify(const char *path, MoeErr *err);
// Load into an initialised model whose config has the same shapes as the file's (routing
// options may differ: the caller decides). Restores params, m, v and biases unless
// load_optimizer == 0 (then m and v are left as they are).
int ckpt_load(const char *path, Model *m, CkptTrainState *st, int load_optimizer, MoeErr *err);
// 1 when the two configs have identical tensor shapes; else 0 and err names the first field
// that differs.
int ckpt_shapes_match(const ModelConfig *a, const ModelConfig *b, MoeErr *err);

// Run directories: checkpoints/NAME/step_%08d.ckpt, checkpoints/NAME/best.ckpt and a text file
// checkpoints/NAME/latest holding the file name of the newest complete checkpoint.
// Save into dir, update `latest` (atomically, after the file is complete), keep the newest
// `keep` step checkpoints (+ best.ckpt when is_best), delete older ones.
int ckpt_save_in_dir(const char *dir, const Model *m, const CkptTrainState *st, int keep, int is_best, MoeErr *err);
// Resolve a --resume argument: a .ckpt file, or a run directory / run name (then `latest`, and
// when that file is corrupt, the newest older step checkpoint that validates, with a warning
// on stderr naming the bad file; best.ckpt as the last resort). Writes the chosen path into out.
// Test hook: the environment variable MOE_CKPT_PAUSE_MS=N makes ckpt_save sleep N ms halfway
// through writing its tmp file (after printing "ckpt: pausing ..." on stderr).
int ckpt_resolve(const char *arg, char *out, size_t outlen, MoeErr *err);

#endif
