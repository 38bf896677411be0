// Collectives of data-parallel training (see comm.h): NCCL (nvcc with MOE_WITH_NCCL), a
// single-process implementation (nvcc without NCCL: --gpus 1 only), or POSIX shared memory between processes under the
// CUDA-on-CPU harness.
#include <cuda_runtime.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "comm.h"

#if defined(MOE_CUDA_HARNESS)
#include <fcntl.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#elif defined(MOE_WITH_NCCL)
#include <nccl.h>
#endif

static int check_args(int rank, int world, const char *dir, MoeErr *err) {
    if (world < 1 || world > COMM_MAX_WORLD || rank < 0 || rank >= world)
        return moe_err_set(err, "comm: rank %d of world %d is invalid (1 <= world <= %d)", rank, world, COMM_MAX_WORLD);
    if (world > 1 && (!dir || !dir[0])) return moe_err_set(err, "comm: no rendezvous directory");
    return 0;
}

#if defined(MOE_CUDA_HARNESS) || defined(MOE_WITH_NCCL)
static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

// the rendezvous file: rank 0 writes it atomically (tmp + rename), the others poll for it
static int publish_id(const char *dir, const void *id, size_t n, MoeErr *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/comm.id", dir);
    return write_file_atomic(path, id, n, err);
}

static int wait_for_id(const char *dir, void *id, size_t n, int rank, double timeout_s, CommWatch watch, void *ctx,
                       MoeErr *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/comm.id", dir);
    double t0 = now_s();
    for (int it = 0;; it++) {
        char *data = NULL;
        size_t len = 0;
        MoeErr rerr;
        if (read_file_all(path, &data, &len, &rerr) == 0) {
            int ok = len == n;
            if (ok) memcpy(id, data, n);
            free(data);
            if (ok) return 0;
            return moe_err_set(err, "comm: rank %d: %s holds %zu bytes, expected %zu", rank, path, len, n);
        }
        if (watch && watch(ctx, err) != 0) return -1;
        if (now_s() - t0 > timeout_s)
            return moe_err_set(err, "comm: rank %d: rank 0 did not publish %s within %.0f s (set MOE_DP_TIMEOUT to wait longer)",
                               rank, path, timeout_s);
        sleep_us(it < 100 ? 2000 : 20000);
    }
}
#endif

#if defined(MOE_CUDA_HARNESS)
// ---------------------------------------------------------------------------------------
// Shared memory (the harness). Layout: a header page, then one slot per rank. A collective
// copies each rank's chunk into its slot, waits at the barrier, sums the slots in rank order
// into its own buffer, and waits again before the slots are reused.

#define SHM_MAGIC 0x4D4F4544u  // "MOED"

typedef struct {
    uint32_t magic;
    int32_t world;
    uint64_t slot_bytes;
    int32_t count, gen;   // the barrier: arrivals, generation (futex word)
    int32_t claimed, aborted;  // set by the first rank that gives up (after writing why)
    int32_t pids[COMM_MAX_WORLD];
    char why[400];
} ShmHeader;

#define SHM_HEADER_BYTES 4096

struct Comm {
    int rank, world;
    ShmHeader *h;
    char *slots;
    size_t map_bytes, slot_bytes;
    CommWatch watch;
    void *watch_ctx;
    int broken;
};

const char *comm_backend(void) { return "shm"; }
int comm_available(MoeErr *why) {
    (void)why;
    return 1;
}

static long futex(int32_t *addr, int op, int val, const struct timespec *ts) {
    return syscall(SYS_futex, addr, op, val, ts, NULL, 0);
}

static int fail(Comm *c, MoeErr *err) {
    comm_abort(c, err->msg);
    return -1;
}

// deadline <= 0: none (collectives may wait for a long validation on rank 0)
static int shm_barrier(Comm *c, double deadline, MoeErr *err) {
    ShmHeader *h = c->h;
    if (c->broken) return moe_err_set(err, "comm: rank %d: the communicator failed earlier", c->rank);
    int32_t gen = __atomic_load_n(&h->gen, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&h->count, 1, __ATOMIC_ACQ_REL) == c->world) {
        __atomic_store_n(&h->count, 0, __ATOMIC_RELAXED);  // before the release: nobody arrives until gen moves
        __atomic_store_n(&h->gen, gen + 1, __ATOMIC_RELEASE);
        futex(&h->gen, FUTEX_WAKE, INT_MAX, NULL);
        return 0;
    }
    while (__atomic_load_n(&h->gen, __ATOMIC_ACQUIRE) == gen) {
        struct timespec ts = {0, 20 * 1000 * 1000};
        futex(&h->gen, FUTEX_WAIT, gen, &ts);
        if (__atomic_load_n(&h->gen, __ATOMIC_ACQUIRE) != gen) break;
        if (__atomic_load_n(&h->aborted, __ATOMIC_ACQUIRE)) {
            c->broken = 1;
            return moe_err_set(err, "comm: rank %d: another rank gave up: %.300s", c->rank, h->why);
        }
        // a peer that completed the barrier and exited is not a failure: look at gen again
        if (c->watch && c->watch(c->watch_ctx, err) != 0) {
            if (__atomic_load_n(&h->gen, __ATOMIC_ACQUIRE) != gen) break;
            return fail(c, err);
        }
        if (deadline > 0 && now_s() > deadline) {
            moe_err_set(err, "comm: rank %d: only %d of %d ranks joined in time (set MOE_DP_TIMEOUT to wait longer)",
                        c->rank, __atomic_load_n(&h->count, __ATOMIC_ACQUIRE), c->world);
            return fail(c, err);
        }
    }
    return 0;
}

int comm_init(Comm **out, int rank, int world, const char *dir, double timeout_s, CommWatch watch, void *watch_ctx,
              MoeErr *err) {
    *out = NULL;
    if (check_args(rank, world, dir, err) != 0) return -1;
    Comm *c = (Comm *)calloc(1, sizeof(Comm));
    if (!c) return moe_err_set(err, "out of memory");
    c->rank = rank, c->world = world, c->watch = watch, c->watch_ctx = watch_ctx;
    if (world == 1) {
        *out = c;
        return 0;
    }
    // slot size: 1M floats (4 MB) per rank unless MOE_COMM_SLOT_FLOATS says (tests: chunking)
    size_t slot_floats = (size_t)1 << 20;
    const char *sf = getenv("MOE_COMM_SLOT_FLOATS");
    if (sf && atol(sf) >= COMM_HOST_MAX) slot_floats = (size_t)atol(sf);
    c->slot_bytes = slot_floats * sizeof(float);
    c->map_bytes = SHM_HEADER_BYTES + (size_t)world * c->slot_bytes;
    // the name: from the rendezvous directory's last component (fresh for every run)
    const char *base = strrchr(dir, '/');
    base = base ? base + 1 : dir;
    char name[256];
    snprintf(name, sizeof name, "/moe_comm.%.200s", base);
    for (char *p = name + 1; *p; p++)
        if (*p == '/') *p = '_';
    double deadline = now_s() + timeout_s;
    int fd;
    if (rank == 0) {
        shm_unlink(name);
        fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
        if (fd < 0 || ftruncate(fd, (off_t)c->map_bytes) != 0) {
            moe_err_set(err, "comm: shm_open/ftruncate %s (%zu bytes): %s", name, c->map_bytes, strerror(errno));
            if (fd >= 0) close(fd), shm_unlink(name);
            free(c);
            return -1;
        }
    } else {
        char got[256] = {0};
        if (wait_for_id(dir, got, sizeof got, rank, timeout_s, watch, watch_ctx, err) != 0) {
            free(c);
            return -1;
        }
        fd = shm_open(got, O_RDWR, 0600);
        struct stat st;
        if (fd < 0 || fstat(fd, &st) != 0 || (size_t)st.st_size != c->map_bytes) {
            moe_err_set(err, "comm: rank %d: shared memory %s: %s", rank, got,
                        fd < 0 ? strerror(errno) : "wrong size (a different MOE_COMM_SLOT_FLOATS or world?)");
            if (fd >= 0) close(fd);
            free(c);
            return -1;
        }
    }
    void *p = mmap(NULL, c->map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        moe_err_set(err, "comm: rank %d: mmap of %zu bytes: %s", rank, c->map_bytes, strerror(errno));
        if (rank == 0) shm_unlink(name);
        free(c);
        return -1;
    }
    c->h = (ShmHeader *)p;
    c->slots = (char *)p + SHM_HEADER_BYTES;
    if (rank == 0) {
        c->h->world = world;
        c->h->slot_bytes = c->slot_bytes;
        __atomic_store_n(&c->h->magic, SHM_MAGIC, __ATOMIC_RELEASE);
        char id[256] = {0};
        snprintf(id, sizeof id, "%s", name);
        if (publish_id(dir, id, sizeof id, err) != 0) {
            shm_unlink(name);
            comm_free(c);
            return -1;
        }
    } else if (__atomic_load_n(&c->h->magic, __ATOMIC_ACQUIRE) != SHM_MAGIC || c->h->world != world ||
               c->h->slot_bytes != c->slot_bytes) {
        moe_err_set(err, "comm: rank %d: shared memory %s was made for world %d (this rank expects %d)", rank, name,
                    c->h->world, world);
        comm_free(c);
        return -1;
    }
    c->h->pids[rank] = (int32_t)getpid();
    int rc = shm_barrier(c, deadline, err);
    if (rank == 0) shm_unlink(name);  // every rank has mapped it (or the rendezvous failed)
    if (rc != 0) {
        comm_free(c);
        return -1;
    }
    *out = c;
    return 0;
}

int comm_barrier(Comm *c, MoeErr *err) { return c->world == 1 ? 0 : shm_barrier(c, 0.0, err); }

int comm_allreduce_sum(Comm *c, float *buf, size_t n, MoeErr *err) {
    if (c->world == 1 || n == 0) return 0;
    size_t S = c->slot_bytes / sizeof(float);
    float *mine = (float *)(c->slots + (size_t)c->rank * c->slot_bytes);
    for (size_t off = 0; off < n; off += S) {
        size_t m = n - off < S ? n - off : S;
        memcpy(mine, buf + off, m * sizeof(float));
        if (shm_barrier(c, 0.0, err) != 0) return -1;
        for (size_t i = 0; i < m; i++) {
            float s = ((const float *)c->slots)[i];
            for (int r = 1; r < c->world; r++) s += ((const float *)(c->slots + (size_t)r * c->slot_bytes))[i];
            buf[off + i] = s;
        }
        if (shm_barrier(c, 0.0, err) != 0) return -1;  // before the slots are written again
    }
    return 0;
}

int comm_allreduce_sum_host(Comm *c, double *v, int n, MoeErr *err) {
    if (n < 0 || n > COMM_HOST_MAX) return moe_err_set(err, "comm: %d host values (at most %d)", n, COMM_HOST_MAX);
    if (c->world == 1 || n == 0) return 0;
    double *mine = (double *)(c->slots + (size_t)c->rank * c->slot_bytes);
    memcpy(mine, v, sizeof(double) * (size_t)n);
    if (shm_barrier(c, 0.0, err) != 0) return -1;
    for (int i = 0; i < n; i++) {
        double s = ((const double *)c->slots)[i];
        for (int r = 1; r < c->world; r++) s += ((const double *)(c->slots + (size_t)r * c->slot_bytes))[i];
        v[i] = s;
    }
    return shm_barrier(c, 0.0, err);
}

void comm_abort(Comm *c, const char *why) {
    if (!c) return;
    c->broken = 1;
    if (!c->h) return;
    if (!__atomic_exchange_n(&c->h->claimed, 1, __ATOMIC_ACQ_REL)) {  // the first rank to give up says why
        snprintf(c->h->why, sizeof c->h->why, "rank %d: %.380s", c->rank, why ? why : "aborted");
        __atomic_store_n(&c->h->aborted, 1, __ATOMIC_RELEASE);
    }
    futex(&c->h->gen, FUTEX_WAKE, INT_MAX, NULL);
}

void comm_free(Comm *c) {
    if (!c) return;
    if (c->h) munmap(c->h, c->map_bytes);
    free(c);
}

#elif defined(MOE_WITH_NCCL)
// ---------------------------------------------------------------------------------------
// NCCL: one communicator per process on the current device, the default stream (the model's
// kernels run there, so a collective sees the finished gradients and the step sees the sums).
// The communicator is non-blocking (NCCL >= 2.14): the host polls ncclCommGetAsyncError and
// cudaStreamQuery, and calls `watch` in between, so that a dead peer ends the wait.

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 14, 0)
#error "comm.cu needs NCCL 2.14 or later (non-blocking communicators); build without NCCL or update it"
#endif

struct Comm {
    int rank, world;
    ncclComm_t nc;
    double *scratch;  // device: COMM_HOST_MAX doubles for host values
    CommWatch watch;
    void *watch_ctx;
    int broken;
};

const char *comm_backend(void) { return "nccl"; }
int comm_available(MoeErr *why) {
    (void)why;
    return 1;
}

static int nccl_fail(Comm *c, MoeErr *err) {
    comm_abort(c, err->msg);
    return -1;
}

// wait until the communicator's last operation was issued (non-blocking mode); deadline <= 0: none
static int nccl_settle(Comm *c, ncclResult_t r, const char *what, double deadline, MoeErr *err) {
    for (int it = 0;; it++) {
        if (r == ncclSuccess) return 0;
        if (r != ncclInProgress) {
            moe_err_set(err, "NCCL %s failed on rank %d: %s (%s)", what, c->rank, ncclGetErrorString(r),
                        ncclGetLastError(c->nc));
            return nccl_fail(c, err);
        }
        if (c->watch && c->watch(c->watch_ctx, err) != 0) return nccl_fail(c, err);
        if (deadline > 0 && now_s() > deadline) {
            moe_err_set(err, "NCCL %s on rank %d did not complete in time (a rank missing? set MOE_DP_TIMEOUT)", what,
                        c->rank);
            return nccl_fail(c, err);
        }
        sleep_us(it < 1000 ? 50 : 2000);
        ncclCommGetAsyncError(c->nc, &r);
    }
}

// wait for the default stream (the collective) to finish, watching NCCL's errors and the peers
static int nccl_wait_stream(Comm *c, const char *what, MoeErr *err) {
    for (int it = 0;; it++) {
        cudaError_t e = cudaStreamQuery(0);
        if (e == cudaSuccess) return 0;
        if (e != cudaErrorNotReady) {
            moe_err_set(err, "CUDA error during NCCL %s on rank %d: %s", what, c->rank, cudaGetErrorString(e));
            return nccl_fail(c, err);
        }
        ncclResult_t r = ncclSuccess;
        ncclCommGetAsyncError(c->nc, &r);
        if (r != ncclSuccess && r != ncclInProgress) {
            moe_err_set(err, "NCCL %s failed on rank %d: %s (%s)", what, c->rank, ncclGetErrorString(r),
                        ncclGetLastError(c->nc));
            return nccl_fail(c, err);
        }
        // a peer that finished this collective and exited is not a failure: look at the stream again
        if ((it & 63) == 63 && c->watch && c->watch(c->watch_ctx, err) != 0 && cudaStreamQuery(0) != cudaSuccess)
            return nccl_fail(c, err);
        sleep_us(it < 2000 ? 20 : 500);
    }
}

int comm_init(Comm **out, int rank, int world, const char *dir, double timeout_s, CommWatch watch, void *watch_ctx,
              MoeErr *err) {
    *out = NULL;
    if (check_args(rank, world, dir, err) != 0) return -1;
    Comm *c = (Comm *)calloc(1, sizeof(Comm));
    if (!c) return moe_err_set(err, "out of memory");
    c->rank = rank, c->world = world, c->watch = watch, c->watch_ctx = watch_ctx;
    if (world == 1) {
        *out = c;
        return 0;
    }
    ncclUniqueId id;
    if (rank == 0) {
        ncclResult_t r = ncclGetUniqueId(&id);
        if (r != ncclSuccess) {
            moe_err_set(err, "NCCL: ncclGetUniqueId failed: %s", ncclGetErrorString(r));
            free(c);
            return -1;
        }
        if (publish_id(dir, &id, sizeof id, err) != 0) {
            free(c);
            return -1;
        }
    } else if (wait_for_id(dir, &id, sizeof id, rank, timeout_s, watch, watch_ctx, err) != 0) {
        free(c);
        return -1;
    }
    if (cudaMalloc((void **)&c->scratch, sizeof(double) * COMM_HOST_MAX) != cudaSuccess) {
        moe_err_set(err, "comm: rank %d: cannot allocate %zu bytes of device memory", rank, sizeof(double) * COMM_HOST_MAX);
        free(c);
        return -1;
    }
    ncclConfig_t cfg = NCCL_CONFIG_INITIALIZER;
    cfg.blocking = 0;
    ncclResult_t r = ncclCommInitRankConfig(&c->nc, world, id, rank, &cfg);
    if (r == ncclInProgress || r == ncclSuccess) ncclCommGetAsyncError(c->nc, &r);
    else c->nc = NULL;
    if (!c->nc) {
        moe_err_set(err, "NCCL: ncclCommInitRankConfig failed on rank %d: %s", rank, ncclGetErrorString(r));
        cudaFree(c->scratch);
        free(c);
        return -1;
    }
    if (nccl_settle(c, r, "initialisation", now_s() + timeout_s, err) != 0) {
        comm_free(c);
        return -1;
    }
    *out = c;
    return 0;
}

static int nccl_allreduce(Comm *c, void *buf, size_t n, ncclDataType_t t, MoeErr *err) {
    if (c->broken) return moe_err_set(err, "comm: rank %d: the communicator failed earlier", c->rank);
    ncclResult_t r = ncclAllReduce(buf, buf, n, t, ncclSum, c->nc, 0);
    if (nccl_settle(c, r, "all-reduce", 0.0, err) != 0) return -1;
    return nccl_wait_stream(c, "all-reduce", err);
}

int comm_allreduce_sum(Comm *c, float *buf, size_t n, MoeErr *err) {
    if (c->world == 1 || n == 0) return 0;
    return nccl_allreduce(c, buf, n, ncclFloat, err);
}

int comm_allreduce_sum_host(Comm *c, double *v, int n, MoeErr *err) {
    if (n < 0 || n > COMM_HOST_MAX) return moe_err_set(err, "comm: %d host values (at most %d)", n, COMM_HOST_MAX);
    if (c->world == 1 || n == 0) return 0;
    if (cudaMemcpy(c->scratch, v, sizeof(double) * (size_t)n, cudaMemcpyHostToDevice) != cudaSuccess) {
        moe_err_set(err, "comm: rank %d: copy to the device failed", c->rank);
        return nccl_fail(c, err);
    }
    if (nccl_allreduce(c, c->scratch, (size_t)n, ncclDouble, err) != 0) return -1;
    if (cudaMemcpy(v, c->scratch, sizeof(double) * (size_t)n, cudaMemcpyDeviceToHost) != cudaSuccess) {
        moe_err_set(err, "comm: rank %d: copy from the device failed", c->rank);
        return nccl_fail(c, err);
    }
    return 0;
}

int comm_barrier(Comm *c, MoeErr *err) {
    double v = 0.0;
    return comm_allreduce_sum_host(c, &v, 1, err);
}

void comm_abort(Comm *c, const char *why) {
    (void)why;
    if (!c || c->broken) return;
    c->broken = 1;
    if (c->nc) ncclCommAbort(c->nc);
    c->nc = NULL;
}

void comm_free(Comm *c) {
    if (!c) return;
    c->watch = NULL;  // peers that finished may have exited: not an error any more
    if (c->nc && !c->broken) {
        // finalize (flushes the communicator's work), then destroy; abort if it does not settle
        ncclResult_t r = ncclCommFinalize(c->nc);
        MoeErr err;
        if (nccl_settle(c, r, "finalize", now_s() + 10.0, &err) == 0) ncclCommDestroy(c->nc);
        c->nc = NULL;
    }
    if (c->nc) ncclCommAbort(c->nc);
    if (c->scratch) cudaFree(c->scratch);
    free(c);
}

#else
// ---------------------------------------------------------------------------------------
// nvcc without NCCL: a single process only.

struct Comm {
    int rank, world;
};

const char *comm_backend(void) { return "none"; }
int comm_available(MoeErr *why) {
    moe_err_set(why, "this build has no NCCL (nccl.h and libnccl were not found under $CUDA_HOME or /usr at build "
                     "time): install NCCL 2.14+ (e.g. the libnccl-dev package) and rebuild; one GPU trains with --gpus 1");
    return 0;
}

int comm_init(Comm **out, int rank, int world, const char *dir, double timeout_s, CommWatch watch, void *watch_ctx,
              MoeErr *err) {
    (void)timeout_s, (void)watch, (void)watch_ctx;
    *out = NULL;
    if (check_args(rank, world, dir, err) != 0) return -1;
    if (world > 1) {
        comm_available(err);
        return -1;
    }
    Comm *c = (Comm *)calloc(1, sizeof(Comm));
    if (!c) return moe_err_set(err, "out of memory");
    c->rank = rank, c->world = world;
    *out = c;
    return 0;
}
int comm_allreduce_sum(Comm *c, float *buf, size_t n, MoeErr *err) {
    (void)c, (void)buf, (void)n, (void)err;
    return 0;
}
int comm_allreduce_sum_host(Comm *c, double *v, int n, MoeErr *err) {
    (void)c, (void)v;
    if (n < 0 || n > COMM_HOST_MAX) return moe_err_set(err, "comm: %d host values (at most %d)", n, COMM_HOST_MAX);
    return 0;
}
int comm_barrier(Comm *c, MoeErr *err) {
    (void)c, (void)err;
    return 0;
}
void comm_abort(Comm *c, const char *why) { (void)c, (void)why; }
void comm_free(Comm *c) { free(c); }
#endif
