// The shared-memory collectives of comm.cu (the harness build that the data-parallel trainer
// uses when processes stand for GPUs): processes forked here are the ranks.
//   - all-reduce of floats in rank order, bit for bit (((x0 + x1) + x2)), identical on every
//     rank, over chunks (a slot of 1000 floats for 2501 values) - the data make the order
//     visible: another order gives other bits for some values;
//   - the host all-reduce of doubles, the barrier (nobody leaves before everyone arrived);
//   - failures end a wait with a message instead of a hang: a missing rank (rendezvous
//     timeout), a dead peer (the watch), a rank that aborts (the others' collective fails).
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../model/cuda/comm.h"
#include "test.h"

#define N_VALUES 2501  // not a multiple of the slot (1000 floats)

// rank r's contribution: magnitudes from 1e-3 to 1e7 with signs, so that float sums depend on
// their order
static float value(int r, int i) {
    uint64_t s = rng_seed((uint64_t)(r * 100003 + i));
    float mag = powf(10.0f, -3.0f + 10.0f * rng_uniform(&s));
    return (rng_uniform(&s) < 0.5f ? -mag : mag) * (1.0f + rng_uniform(&s));
}

static char g_dir[256];

// a child process: rank r of world W; returns the exit status (0: everything as expected)
static int run_rank(int r, int W) {
    MoeErr err;
    Comm *c = NULL;
    if (comm_init(&c, r, W, g_dir, 20.0, NULL, NULL, &err) != 0) {
        printf("  rank %d: %s\n", r, err.msg);
        return 1;
    }
    int bad = 0;
    // floats in rank order, bit for bit
    float *x = (float *)malloc(sizeof(float) * N_VALUES);
    for (int i = 0; i < N_VALUES; i++) x[i] = value(r, i);
    if (comm_allreduce_sum(c, x, N_VALUES, &err) != 0) {
        printf("  rank %d: %s\n", r, err.msg);
        return 1;
    }
    int order_visible = 0;
    for (int i = 0; i < N_VALUES; i++) {
        float s = value(0, i);
        for (int q = 1; q < W; q++) s += value(q, i);
        float rev = value(W - 1, i);
        for (int q = W - 2; q >= 0; q--) rev += value(q, i);
        order_visible += rev != s;
        if (memcmp(&s, &x[i], sizeof s) != 0) {
            if (bad++ < 3) printf("  rank %d: value %d: %.9g, expected %.9g (rank order)\n", r, i, x[i], s);
        }
    }
    if (W > 2 && order_visible == 0) {
        printf("  rank %d: the test data do not show the summation order\n", r);
        bad++;
    }
    // host doubles
    double v[3] = {r + 0.25, 1.0, -2.0 * r};
    if (comm_allreduce_sum_host(c, v, 3, &err) != 0) {
        printf("  rank %d: %s\n", r, err.msg);
        return 1;
    }
    double e0 = 0, e2 = 0;
    for (int q = 0; q < W; q++) e0 += q + 0.25, e2 += -2.0 * q;
    if (v[0] != e0 || v[1] != W || v[2] != e2) {
        printf("  rank %d: host sums %g %g %g, expected %g %d %g\n", r, v[0], v[1], v[2], e0, W, e2);
        bad++;
    }
    // barrier: rank r arrives after r * 40 ms; when anyone leaves, every marker exists
    usleep(40000 * r);
    char path[512];
    snprintf(path, sizeof path, "%s/arrived.%d", g_dir, r);
    FILE *fp = fopen(path, "w");
    if (fp) fclose(fp);
    if (comm_barrier(c, &err) != 0) {
        printf("  rank %d: %s\n", r, err.msg);
        return 1;
    }
    for (int q = 0; q < W; q++) {
        snprintf(path, sizeof path, "%s/arrived.%d", g_dir, q);
        if (access(path, F_OK) != 0) {
            printf("  rank %d left the barrier before rank %d arrived\n", r, q);
            bad++;
        }
    }
    // the result of every rank is the same: compare a checksum of the bits through the host sum
    uint64_t h = 1469598103934665603ULL;
    for (int i = 0; i < N_VALUES; i++) {
        uint32_t b;
        memcpy(&b, &x[i], 4);
        h = (h ^ b) * 1099511628211ULL;
    }
    double hv[2] = {(double)(h >> 40), (double)(h >> 40) * (double)(h >> 40)};
    if (comm_allreduce_sum_host(c, hv, 2, &err) != 0) return 1;
    double mean = hv[0] / W;
    if (hv[1] / W - mean * mean != 0.0) {
        printf("  rank %d: the ranks hold different results\n", r);
        bad++;
    }
    free(x);
    comm_free(c);
    return bad ? 1 : 0;
}

static int fresh_dir(void) {
    snprintf(g_dir, sizeof g_dir, "%s/moe_comm_test.XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    return mkdtemp(g_dir) ? 0 : -1;
}
static void remove_dir(void) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "warning: could not remove %s\n", g_dir);
}

static void test_collectives(int W) {
    char name[64];
    snprintf(name, sizeof name, "comm_shm_world%d_rank_order_sums_barrier", W);
    test_begin(name);
    CHECK(fresh_dir() == 0, "mkdtemp");
    pid_t pids[8];
    fflush(stdout);
    for (int r = 0; r < W; r++) {
        pids[r] = fork();
        if (pids[r] == 0) {
            int rc = run_rank(r, W);
            fflush(stdout);
            _exit(rc);
        }
    }
    for (int r = 0; r < W; r++) {
        int st = 0;
        waitpid(pids[r], &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "rank %d ended with status %d", r, st);
    }
    remove_dir();
    test_end();
}

static pid_t g_peer;
static int watch_peer(void *ctx, MoeErr *err) {
    (void)ctx;
    int st;
    if (waitpid(g_peer, &st, WNOHANG) == g_peer) return moe_err_set(err, "peer %d exited with status %d", (int)g_peer, WEXITSTATUS(st));
    return 0;
}

int main(void) {
    setenv("MOE_COMM_SLOT_FLOATS", "1000", 1);
    test_collectives(2);
    test_collectives(3);

    // a rank that never comes: the rendezvous ends after its timeout with a message
    test_begin("comm_shm_rendezvous_timeout");
    {
        CHECK(fresh_dir() == 0, "mkdtemp");
        Comm *c = NULL;
        MoeErr err;
        double t0 = wall_seconds();
        int rc = comm_init(&c, 0, 2, g_dir, 0.5, NULL, NULL, &err);
        double dt = wall_seconds() - t0;
        CHECK(rc != 0 && strstr(err.msg, "only 1 of 2 ranks joined"), "rc %d: %s", rc, rc ? err.msg : "");
        CHECK(dt < 3.0, "took %.1f s", dt);
        remove_dir();
    }
    test_end();

    // a peer that dies before joining: the watch ends the wait at once
    test_begin("comm_shm_dead_peer_seen_by_watch");
    {
        CHECK(fresh_dir() == 0, "mkdtemp");
        fflush(stdout);
        g_peer = fork();
        if (g_peer == 0) _exit(3);
        Comm *c = NULL;
        MoeErr err;
        double t0 = wall_seconds();
        int rc = comm_init(&c, 0, 2, g_dir, 30.0, watch_peer, NULL, &err);
        double dt = wall_seconds() - t0;
        CHECK(rc != 0 && strstr(err.msg, "exited with status 3"), "rc %d: %s", rc, rc ? err.msg : "");
        CHECK(dt < 2.0, "took %.1f s (the watch should end the wait)", dt);
        remove_dir();
    }
    test_end();

    // a worker waiting for a rank 0 that never publishes: its own timeout
    test_begin("comm_shm_worker_waits_for_rank0_with_timeout");
    {
        CHECK(fresh_dir() == 0, "mkdtemp");
        Comm *c = NULL;
        MoeErr err;
        int rc = comm_init(&c, 1, 2, g_dir, 0.3, NULL, NULL, &err);
        CHECK(rc != 0 && strstr(err.msg, "did not publish"), "rc %d: %s", rc, rc ? err.msg : "");
        remove_dir();
    }
    test_end();

    // a rank that gives up: the others' collective fails with its reason
    test_begin("comm_shm_abort_reaches_the_other_ranks");
    {
        CHECK(fresh_dir() == 0, "mkdtemp");
        fflush(stdout);
        pid_t p[3];
        for (int r = 0; r < 3; r++) {
            p[r] = fork();
            if (p[r] == 0) {
                MoeErr err;
                Comm *c = NULL;
                if (comm_init(&c, r, 3, g_dir, 20.0, NULL, NULL, &err) != 0) _exit(10);
                if (r == 2) {
                    comm_abort(c, "test abort");
                    _exit(0);
                }
                float x[5] = {1, 2, 3, 4, 5};
                int rc = comm_allreduce_sum(c, x, 5, &err);
                int ok = rc != 0 && strstr(err.msg, "rank 2: test abort") != NULL;
                if (!ok) printf("  rank %d: rc %d: %s\n", r, rc, rc ? err.msg : "");
                fflush(stdout);
                _exit(ok ? 0 : 11);
            }
        }
        for (int r = 0; r < 3; r++) {
            int st = 0;
            waitpid(p[r], &st, 0);
            CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "rank %d ended with status %d", r, st);
        }
        remove_dir();
    }
    test_end();
    return test_summary();
}
