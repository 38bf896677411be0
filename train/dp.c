// Data-parallel training: the launcher, the workers' side, the data order and the collectives
// of the trainer (see dp.h). Without the CUDA backend only --gpus 1 exists.
#include "dp.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifdef MOE_WITH_CUDA
#include "../model/cuda/comm.h"
#include "../model/cuda/cuda_ops.h"
#endif

#define DP_MAX 64

// the process's data-parallel state (one run per process)
static struct {
#ifdef MOE_WITH_CUDA
    Comm *comm;
#endif
    char dir[1024];           // the rendezvous directory (rank 0 created it and removes it)
    pid_t pids[DP_MAX];       // rank 0: the workers' pids (index = rank)
    int status[DP_MAX];       // their wait status once reaped
    int reaped[DP_MAX], killed[DP_MAX], reported[DP_MAX];  // reported: named in an error already
    pid_t parent;             // a worker: rank 0's pid
    int rank, world;
    int hook_rank, hook_step;  // MOE_DP_TEST_EXIT
    int *scratch;             // inputs, targets, domains of the batches other ranks take
    size_t scratch_n;
} g;

int dp_check(int gpus, const char *device, MoeErr *err) {
    if (gpus < 1 || gpus > DP_MAX) return moe_err_set(err, "--gpus must be between 1 and %d, got %d", DP_MAX, gpus);
    if (gpus == 1) return 0;
#ifndef MOE_WITH_CUDA
    (void)device;
    return moe_err_set(err, "--gpus %d: this build of train has no CUDA backend; data-parallel training needs "
                            "build/train_gpu (built by `make train` where nvcc is installed) with NCCL (a multi-GPU "
                            "checkpoint resumes here with --gpus 1)", gpus);
#else
    if (!strcmp(device, "cpu"))
        return moe_err_set(err, "--gpus %d trains on %d GPUs and cannot be combined with --device cpu (the CPU "
                                "reference runs in one process; a multi-GPU checkpoint resumes on it with --gpus 1)",
                           gpus, gpus);
    MoeErr why;
    if (!comm_available(&why)) return moe_err_set(err, "--gpus %d: %s", gpus, why.msg);
    return 0;
#endif
}

#ifdef MOE_WITH_CUDA
static void describe_status(int st, char *out, size_t n) {
    if (WIFEXITED(st)) snprintf(out, n, "exited with status %d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st)) snprintf(out, n, "was killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else snprintf(out, n, "ended with wait status %d", st);
}

// rank 0's watch during every wait: has a worker ended?
static int watch_workers(void *ctx, MoeErr *err) {
    (void)ctx;
    for (int r = 1; r < g.world; r++) {
        if (g.reaped[r]) continue;
        int st = 0;
        if (waitpid(g.pids[r], &st, WNOHANG) == g.pids[r]) {
            g.reaped[r] = 1, g.reported[r] = 1;
            g.status[r] = st;
            char d[128];
            describe_status(st, d, sizeof d);
            return moe_err_set(err, "GPU worker rank %d (pid %d) %s", r, (int)g.pids[r], d);
        }
    }
    return 0;
}

// a worker's watch: is rank 0 still there?
static int watch_parent(void *ctx, MoeErr *err) {
    (void)ctx;
    if (getppid() != g.parent) return moe_err_set(err, "rank %d: rank 0 (pid %d) is gone", g.rank, (int)g.parent);
    return 0;
}

static char *env_entry(const char *fmt, const char *a, long b) {
    char buf[1200];
    if (a) snprintf(buf, sizeof buf, fmt, a);
    else snprintf(buf, sizeof buf, fmt, b);
    return strdup(buf);
}

extern char **environ;

// fork + exec worker `r` (the same program and arguments) with its environment; its stdout
// and stderr go to dir/rankR.log
static int spawn_worker(int r, char **argv, MoeErr *err) {
    int n = 0;
    while (environ[n]) n++;
    char **envp = (char **)mallocCheck(sizeof(char *) * (size_t)(n + 5));
    int k = 0;
    for (int i = 0; i < n; i++)
        if (strncmp(environ[i], "MOE_DP_RANK=", 12) && strncmp(environ[i], "MOE_DP_WORLD=", 13) &&
            strncmp(environ[i], "MOE_DP_DIR=", 11) && strncmp(environ[i], "MOE_DP_PPID=", 12))
            envp[k++] = environ[i];
    char *own[4] = {env_entry("MOE_DP_RANK=%ld", NULL, r), env_entry("MOE_DP_WORLD=%ld", NULL, g.world),
                    env_entry("MOE_DP_DIR=%s", g.dir, 0), env_entry("MOE_DP_PPID=%ld", NULL, (long)getpid())};
    for (int i = 0; i < 4; i++) envp[k++] = own[i];
    envp[k] = NULL;
    char log[1100];
    snprintf(log, sizeof log, "%s/rank%d.log", g.dir, r);
    int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        for (int i = 0; i < 4; i++) free(own[i]);
        free(envp);
        return moe_err_set(err, "cannot create %s: %s", log, strerror(errno));
    }
    pid_t parent = getpid();
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {  // only async-signal-safe calls until execve
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
        prctl(PR_SET_PDEATHSIG, SIGKILL);  // a worker dies with rank 0
        if (getppid() != parent) _exit(1);
        execve("/proc/self/exe", argv, envp);
        static const char msg[] = "error: execve /proc/self/exe failed\n";
        if (write(2, msg, sizeof msg - 1) < 0) _exit(127);
        _exit(127);
    }
    close(fd);
    for (int i = 0; i < 4; i++) free(own[i]);
    free(envp);
    if (pid < 0) return moe_err_set(err, "fork of GPU worker rank %d failed: %s", r, strerror(errno));
    g.pids[r] = pid;
    return 0;
}

// the last lines of worker r's log on stderr
static void print_log_tail(int r) {
    char path[1100];
    snprintf(path, sizeof path, "%s/rank%d.log", g.dir, r);
    char *data = NULL;
    size_t n = 0;
    MoeErr err;
    if (read_file_all(path, &data, &n, &err) != 0) return;
    size_t end = n > 0 && data[n - 1] == '\n' ? n - 1 : n, start = end;
    for (int lines = 0; start > 0; start--)
        if (data[start - 1] == '\n' && ++lines == 8) break;
    if (end == 0) fprintf(stderr, "  rank %d | (no output)\n", r);
    char *line = data + start;
    while (line < data + end) {
        char *nl = memchr(line, '\n', (size_t)(data + end - line));
        int len = (int)(nl ? nl - line : data + end - line);
        fprintf(stderr, "  rank %d | %.*s\n", r, len, line);
        line += len + 1;
    }
    free(data);
}

static void remove_dir(void) {
    if (!g.dir[0]) return;
    char path[1100];
    for (int r = 1; r < g.world; r++) {
        snprintf(path, sizeof path, "%s/rank%d.log", g.dir, r);
        unlink(path);
    }
    snprintf(path, sizeof path, "%s/comm.id", g.dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/comm.id.tmp", g.dir);
    unlink(path);
    rmdir(g.dir);
    g.dir[0] = 0;
}

static void fatal(const MoeErr *err) {
    fprintf(stderr, "error: %s\n", err->msg);
    DataParallel dp = {g.rank, g.world, NULL, 0};
    dp_finish(&dp, 1);
    exit(1);
}
#endif

int dp_is_worker_process(int gpus) { return gpus > 1 && getenv("MOE_DP_RANK") != NULL; }

int dp_start(DataParallel *dp, int gpus, char **argv, MoeErr *err) {
    memset(dp, 0, sizeof(*dp));
    dp->world = 1;
    if (gpus <= 1) return 0;
#ifndef MOE_WITH_CUDA
    (void)argv;
    return dp_check(gpus, "auto", err);
#else
    memset(&g, 0, sizeof g);
    g.world = gpus;
    g.hook_rank = -1;
    const char *hook = getenv("MOE_DP_TEST_EXIT");
    if (hook && sscanf(hook, "%d:%d", &g.hook_rank, &g.hook_step) != 2) g.hook_rank = -1;
    double timeout = getenv("MOE_DP_TIMEOUT") ? atof(getenv("MOE_DP_TIMEOUT")) : 120.0;
    if (!(timeout > 0)) timeout = 120.0;
    const char *er = getenv("MOE_DP_RANK");
    if (er) {  // a worker
        const char *ew = getenv("MOE_DP_WORLD"), *ed = getenv("MOE_DP_DIR"), *ep = getenv("MOE_DP_PPID");
        g.rank = atoi(er);
        if (!ew || atoi(ew) != gpus || !ed || !ep || g.rank < 1 || g.rank >= gpus)
            return moe_err_set(err, "GPU worker: MOE_DP_RANK=%s, MOE_DP_WORLD=%s, MOE_DP_DIR=%s do not match --gpus %d "
                                    "(these variables are set by the launcher, rank 0)", er, ew ? ew : "(unset)",
                               ed ? ed : "(unset)", gpus);
        g.parent = (pid_t)atol(ep);
        setvbuf(stdout, NULL, _IOLBF, 0);  // the log shows every line even if the worker dies
        snprintf(g.dir, sizeof g.dir, "%s", ed);
        if (g.hook_rank == g.rank && g.hook_step == 0) {
            fprintf(stderr, "test hook: rank %d exits before the rendezvous (MOE_DP_TEST_EXIT)\n", g.rank);
            exit(3);
        }
    } else {  // the launcher: rank 0
        if (!argv || !argv[0]) return moe_err_set(err, "--gpus %d: no command line to start the workers with", gpus);
        int harness = !strcmp(cu_backend(), "cuda-harness");
        int n = cu_device_count();
        if (!harness && n < gpus) {
            const char *vis = getenv("CUDA_VISIBLE_DEVICES");
            return moe_err_set(err, "--gpus %d: %d GPU%s visible to the CUDA runtime%s%s%s", gpus, n, n == 1 ? " is" : "s are",
                               vis ? " (CUDA_VISIBLE_DEVICES=" : "", vis ? vis : "", vis ? ")" : "");
        }
        const char *tmp = getenv("TMPDIR");
        snprintf(g.dir, sizeof g.dir, "%s/moe_dp.XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
        if (!mkdtemp(g.dir)) {
            moe_err_set(err, "cannot create the rendezvous directory %s: %s", g.dir, strerror(errno));
            g.dir[0] = 0;
            return -1;
        }
        for (int r = 1; r < gpus; r++) {
            if (spawn_worker(r, argv, err) != 0) {
                g.world = r;  // the workers started so far are killed by dp_finish
                return -1;
            }
        }
        char pids[DP_MAX * 12] = "";
        for (int r = 1; r < gpus; r++)
            snprintf(pids + strlen(pids), sizeof pids - strlen(pids), "%s%d", r > 1 ? " " : "", (int)g.pids[r]);
        printf("data parallel: %d GPUs; worker processes (ranks 1..%d): %s; their output: %s/rank*.log (removed at the end)\n",
               gpus, gpus - 1, pids, g.dir);
        fflush(stdout);
    }
    if (cu_select_device(g.rank) != 0)
        return moe_err_set(err, "rank %d: cannot make GPU %d the current device (%d visible)", g.rank, g.rank,
                           cu_device_count());
    if (comm_init(&g.comm, g.rank, gpus, g.dir, timeout, g.rank == 0 ? watch_workers : watch_parent, NULL, err) != 0)
        return -1;
    dp->rank = g.rank;
    dp->world = gpus;
    dp->backend = comm_backend();
    return 0;
#endif
}

void dp_next_batch(DataParallel *dp, DataLoader *dl, int B, int T, int *inputs, int *targets, int *domains) {
    if (dp->world == 1) {
        dataloader_next(dl, inputs, targets, domains);
        return;
    }
    size_t need = 2 * (size_t)B * T + (size_t)B;
    if (g.scratch_n < need) {
        free(g.scratch);
        g.scratch = (int *)mallocCheck(sizeof(int) * need);
        g.scratch_n = need;
    }
    int *si = g.scratch, *st = si + (size_t)B * T, *sd = st + (size_t)B * T;
    for (int r = 0; r < dp->world; r++) {
        if (r == dp->rank) dataloader_next(dl, inputs, targets, domains);
        else dataloader_next(dl, si, st, sd);
    }
}

void dp_sum_host(DataParallel *dp, double *v, int n) {
    if (dp->world == 1) return;
#ifdef MOE_WITH_CUDA
    MoeErr err;
    if (comm_allreduce_sum_host(g.comm, v, n, &err) != 0) fatal(&err);
#else
    (void)v, (void)n;
#endif
}

void dp_sum_device(DataParallel *dp, float *buf, size_t n) {
    if (dp->world == 1) return;
#ifdef MOE_WITH_CUDA
    MoeErr err;
    if (comm_allreduce_sum(g.comm, buf, n, &err) != 0) fatal(&err);
#else
    (void)buf, (void)n;
#endif
}

void dp_test_hook(const DataParallel *dp, long long step) {
    if (dp->world == 1 || g.hook_rank != dp->rank || g.hook_step <= 0 || step + 1 != g.hook_step) return;
    fprintf(stderr, "test hook: rank %d exits at step %lld (MOE_DP_TEST_EXIT)\n", dp->rank, step + 1);
    exit(3);
}

int dp_finish(DataParallel *dp, int rc) {
#ifdef MOE_WITH_CUDA
    if (g.world <= 1) return rc;
    if (g.rank > 0) {
        if (rc != 0 && g.comm) comm_abort(g.comm, "a worker failed");
        comm_free(g.comm);
        g.comm = NULL;
        free(g.scratch);
        g.scratch = NULL;
        return rc;
    }
    if (rc != 0 && g.comm) comm_abort(g.comm, "rank 0 failed");
    // the workers: gone already, done soon (rc == 0: they finish the same last step), or killed
    double t0 = wall_seconds();
    int warned = 0;
    for (int r = 1; r < g.world; r++) {
        while (!g.reaped[r]) {
            int st = 0;
            pid_t p = waitpid(g.pids[r], &st, WNOHANG);
            if (p == g.pids[r]) {
                g.reaped[r] = 1, g.status[r] = st;
                break;
            }
            if (p < 0) {  // not our child any more (cannot happen): nothing to wait for
                g.reaped[r] = 1, g.status[r] = 0;
                break;
            }
            if (rc != 0 || wall_seconds() - t0 > 60.0) {
                if (rc == 0 && !warned++)
                    fprintf(stderr, "error: GPU workers still running 60 s after the end of training: killing them\n");
                kill(g.pids[r], SIGKILL);
                g.killed[r] = 1;
                waitpid(g.pids[r], &st, 0);
                g.reaped[r] = 1, g.status[r] = st;
                if (rc == 0) rc = 1;
                break;
            }
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
    }
    for (int r = 1; r < g.world; r++) {
        if (g.killed[r] || (WIFEXITED(g.status[r]) && WEXITSTATUS(g.status[r]) == 0)) continue;
        char d[128];
        describe_status(g.status[r], d, sizeof d);
        if (g.reported[r]) fprintf(stderr, "the end of GPU worker rank %d's output:\n", r);
        else fprintf(stderr, "error: GPU worker rank %d (pid %d) %s; the end of its output:\n", r, (int)g.pids[r], d);
        print_log_tail(r);
        rc = 1;
    }
    comm_free(g.comm);
    g.comm = NULL;
    remove_dir();
    free(g.scratch);
    g.scratch = NULL;
    g.world = 1;
    (void)dp;
    return rc;
#else
    (void)dp;
    return rc;
#endif
}
