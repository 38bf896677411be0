// Collectives between the processes of a data-parallel run, one process per GPU
// (model/cuda/comm.cu). The same C interface in three builds:
//   - nvcc with NCCL (-DMOE_WITH_NCCL, the Makefile sets it when nccl.h and libnccl are found):
//     NCCL on the default stream, a non-blocking communicator polled by the host so that a
//     dead peer or an NCCL error ends the wait with a message instead of a hang;
//   - nvcc without NCCL: world 1 only (comm_available() says why);
//   - the CUDA-on-CPU harness (MOE_CUDA_HARNESS: "device" memory is host memory): POSIX shared
//     memory between the processes, a futex barrier, sums in rank order (((x_0 + x_1) + x_2)...,
//     deterministic and bit-identical on every rank), so that the data-parallel trainer runs
//     here with processes standing in for GPUs.
// Rendezvous: rank 0 writes one file (the ncclUniqueId, or the shared-memory name) atomically
// into `dir`, a fresh directory every rank sees; the other ranks poll for it. Every call
// returns 0, or -1 with one line in err. Waits call `watch` (when not NULL) about every 20 ms:
// a non-zero return (with its err) aborts the wait, e.g. because a peer process died; the
// rendezvous also ends after timeout_s seconds. After an error the communicator is unusable
// (comm_abort tells the other ranks where the backend can).
#ifndef MOE_CUDA_COMM_H
#define MOE_CUDA_COMM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#include "../../common/util.h"

#define COMM_MAX_WORLD 64
#define COMM_HOST_MAX 64  // doubles per comm_allreduce_sum_host

typedef struct Comm Comm;
typedef int (*CommWatch)(void *ctx, MoeErr *err);

// "nccl", "shm" (the harness) or "none" (nvcc without NCCL)
const char *comm_backend(void);
// 1 when world > 1 can run in this build; else 0 and why (one line, what to install)
int comm_available(MoeErr *why);
// join the group of `world` ranks through `dir`; call after selecting this rank's device
int comm_init(Comm **out, int rank, int world, const char *dir, double timeout_s, CommWatch watch, void *watch_ctx,
              MoeErr *err);
// in place: buf (device memory, n floats) = the sum over ranks; returns when the result is in buf
int comm_allreduce_sum(Comm *c, float *buf, size_t n, MoeErr *err);
// in place on host doubles (n <= COMM_HOST_MAX): the sum over ranks (max of flags: sum > 0)
int comm_allreduce_sum_host(Comm *c, double *v, int n, MoeErr *err);
int comm_barrier(Comm *c, MoeErr *err);
// give up: the other ranks' waits end with an error naming `why` (shm) or NCCL's abort
void comm_abort(Comm *c, const char *why);
void comm_free(Comm *c);

#ifdef __cplusplus
}
#endif

#endif
