// Data-parallel training on the GPUs of one machine (train_gpu --gpus N): one process per GPU.
// Rank 0 (the process the user started) forks N-1 workers running the same command line with
// MOE_DP_RANK / MOE_DP_WORLD / MOE_DP_DIR (a fresh rendezvous directory) / MOE_DP_PPID in the
// environment; their output goes to MOE_DP_DIR/rankR.log, shown when a worker fails. Every
// process selects its GPU before any other CUDA call, then the ranks meet through comm.h (NCCL;
// shared memory under the CUDA-on-CPU harness).
//
// The data order (dp_next_batch): rank r's micro-batch m of a step is batch m*W + r of the
// order a single process with grad_accum * W would read, so W GPUs with grad_accum a train on
// exactly the batches of one GPU with grad_accum a*W (and the data position and schedule are
// per optimizer step: a checkpoint resumes with any W that divides its W*a).
//
// Failure handling: a worker that exits is seen by rank 0 within ~20 ms of any wait (rendezvous
// or collective), rank 0 then prints the end of the worker's log, kills the other workers and
// exits 1; workers die with rank 0 (PR_SET_PDEATHSIG) and give up when it is gone; the
// rendezvous times out after MOE_DP_TIMEOUT seconds (default 120).
// Test hook: MOE_DP_TEST_EXIT=R:S makes rank R exit with status 3 at the start of step S+1
// (S = 0: before the rendezvous).
#ifndef MOE_DP_H
#define MOE_DP_H

#include <stddef.h>

#include "../common/util.h"
#include "../data/dataloader.h"

typedef struct {
    int rank, world;      // world 1: a single process; every call below is then trivial
    const char *backend;  // "nccl" or "shm" when world > 1
    int stop;             // the stop decision agreed at the last step (the trainer sums the ranks' flags)
} DataParallel;

// Can this build train on `gpus` GPUs with --device `device`? 0, or -1 with one line.
int dp_check(int gpus, const char *device, MoeErr *err);
// 1 in a worker process that the launcher started (known before dp_start: rank 0 alone
// touches the run's files)
int dp_is_worker_process(int gpus);
// Become rank 0 (fork the workers) or a worker (from the environment), select the GPU, meet
// the other ranks. gpus == 1: nothing happens. -1 with err on failure (call dp_finish after).
int dp_start(DataParallel *dp, int gpus, char **argv, MoeErr *err);
// 1 on rank 0 (it writes logs, checkpoints, reports, samples and runs validation)
static inline int dp_is_main(const DataParallel *dp) { return dp->rank == 0; }
// the next micro-batch of this rank: dataloader_next world times, the rank-th kept (B x T)
void dp_next_batch(DataParallel *dp, DataLoader *dl, int B, int T, int *inputs, int *targets, int *domains);
// sums over the ranks in place (host doubles, n <= 64; device floats); a failure is fatal
void dp_sum_host(DataParallel *dp, double *v, int n);
void dp_sum_device(DataParallel *dp, float *buf, size_t n);
// the test hook (MOE_DP_TEST_EXIT) at the start of step `step` + 1
void dp_test_hook(const DataParallel *dp, long long step);
// The end: rank 0 waits for its workers (up to 60 s; on rc != 0 it kills them), reports a
// worker's failure with the end of its log, removes the rendezvous directory. Returns the exit
// code of the run (rc, or 1 when a worker failed).
int dp_finish(DataParallel *dp, int rc);

#endif
