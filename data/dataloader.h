// The dataloader: batches of B x (T+1) token windows from one or more shards.
// Deterministic for a seed; shuffled (a permutation of window starts per epoch derived
// from (seed, epoch), so the state is two integers); resumable from a saved state; gives
// the domain of every sequence; and an ordered sweep mode for the validation split.
#ifndef MOE_DATALOADER_H
#define MOE_DATALOADER_H

#include <stdint.h>

#include "../common/util.h"
#include "shard.h"

// Plain data, saved verbatim in checkpoints.
typedef struct {
    uint64_t seed;
    int64_t epoch;        // completed passes over the data
    int64_t position;     // index of the next window within the epoch's order
    int32_t shuffle;
    int32_t reserved;
} DataLoaderState;

typedef struct DataLoader DataLoader;

// paths: one path, a glob pattern, or several of either separated by commas.
// Windows are non-overlapping chunks of T+1 tokens, stride T, across the concatenated shards
// (each shard separately: windows never straddle two shards). shuffle=0 gives the ordered sweep.
int dataloader_open(DataLoader **out, const char *paths, int B, int T, uint64_t seed, int shuffle, MoeErr *err);
void dataloader_free(DataLoader *dl);
// Fill inputs (B, T), targets (B, T) and domains (B) (domain index of each sequence: the
// domain of its first token). At the end of an epoch wraps around to the next one.
void dataloader_next(DataLoader *dl, int *inputs, int *targets, int *domains);
// Number of full batches in one epoch (the validation sweep uses this many).
int64_t dataloader_num_batches(const DataLoader *dl);
// Back to the start of epoch 0 (ordered sweeps).
void dataloader_reset(DataLoader *dl);
void dataloader_get_state(const DataLoader *dl, DataLoaderState *st);
int dataloader_set_state(DataLoader *dl, const DataLoaderState *st, MoeErr *err);
int dataloader_vocab_size(const DataLoader *dl);     // max over shards
int dataloader_n_domains(const DataLoader *dl);
const char *dataloader_domain_name(const DataLoader *dl, int d);
int64_t dataloader_n_tokens(const DataLoader *dl);

#endif
