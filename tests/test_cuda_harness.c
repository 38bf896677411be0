// Tests of the CUDA-on-CPU harness itself (tests/cuda_harness): warp shuffle and vote
// semantics, block reductions with __syncthreads, shared memory poisoning between blocks,
// missing barriers, dynamic shared memory, atomics, the WMMA model (a known 16x16x16 product
// in every layout, fp32 accumulation in k order, fill rounding, a store without __syncwarp), and
// the errors it must report (divergent barriers, deadlocks, bad masks, bad launch
// configurations, divergent / non-uniform / misaligned / bad-ldm wmma calls, wmma in a partial
// warp, wmma on a shared array that was not declared 32-byte aligned).
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../common/util.h"
#include "cuda_harness/harness_kernels.h"
#include "cuda_test_util.h"  // host fp16 / bf16 conversions (f2h, h2f, f2bf, bf2f)
#include "test.h"

static void test_shuffles(void) {
    test_begin("harness_shuffles");
    int n = 70, block = 64;  // two blocks; the last warp of block 1 is beyond n (still runs)
    int *out = (int *)callocCheck((size_t)n * 5, sizeof(int));
    hk_shuffle(out, n, block);
    for (int i = 0; i < n; i++) {
        int lane = i % 64 % 32;
        // xor butterfly: every lane gets the warp sum 1 + ... + 32
        CHECK(out[5 * i + 0] == 528, "xor sum lane %d: %d", lane, out[5 * i + 0]);
        // down-reduction: lane L gets sum of lanes L, L+1, ... as far as the tree reaches
        int d = 0;
        {
            int v[32];
            for (int l = 0; l < 32; l++) v[l] = l + 1;
            for (int o = 16; o > 0; o >>= 1) {
                int nv[32];
                for (int l = 0; l < 32; l++) nv[l] = v[l] + (l + o < 32 ? v[l + o] : v[l]);
                memcpy(v, nv, sizeof v);
            }
            d = v[lane];
        }
        CHECK(out[5 * i + 1] == d, "down lane %d: %d expected %d", lane, out[5 * i + 1], d);
        CHECK(out[5 * i + 2] == (lane + 1) * (lane + 2) / 2, "up-scan lane %d: %d", lane, out[5 * i + 2]);
        CHECK(out[5 * i + 3] == ((lane / 8) * 8 + 3 + 1) * 10, "width-8 broadcast lane %d: %d", lane, out[5 * i + 3]);
        CHECK(out[5 * i + 4] == (lane ^ 1), "float xor lane %d: %d", lane, out[5 * i + 4]);
    }
    free(out);
    test_end();
}

static void test_ballot(void) {
    test_begin("harness_ballot_partial_warp");
    unsigned out[6];
    memset(out, 0, sizeof out);
    hk_ballot(out, 40);  // warp 0 full, warp 1 has 8 lanes
    unsigned full = 0, part = 0;
    for (int l = 0; l < 32; l++) full |= (unsigned)(l % 3 == 0) << l;
    for (int l = 0; l < 8; l++) part |= (unsigned)(l % 3 == 0) << l;
    CHECK(out[0] == full, "ballot warp 0: 0x%08x expected 0x%08x", out[0], full);
    CHECK(out[1] == 1 && out[2] == 1, "any/all warp 0: %u %u", out[1], out[2]);
    CHECK(out[3] == part, "ballot warp 1: 0x%08x expected 0x%08x", out[3], part);
    CHECK(out[4] == 1 && out[5] == 1, "any/all warp 1: %u %u", out[4], out[5]);
    test_end();
}

static void test_block_sum(void) {
    test_begin("harness_block_sum_awkward");
    int n = 1000, block = 96, nb = (n + block - 1) / block;
    float *in = (float *)mallocCheck(sizeof(float) * n), *out = (float *)mallocCheck(sizeof(float) * 2 * nb);
    for (int i = 0; i < n; i++) in[i] = (float)((i * 37) % 101) - 50.0f;
    hk_block_sum(out, in, n, block);
    for (int b = 0; b < nb; b++) {
        float s = 0.0f, m = -1e30f;
        for (int i = b * block; i < n && i < (b + 1) * block; i++) {
            s += in[i];
            m = in[i] > m ? in[i] : m;
        }
        if (b == nb - 1 && n % block) m = m > 0.0f ? m : 0.0f;  // padding threads contribute 0
        CHECK(out[2 * b] == s, "block %d sum %g expected %g", b, out[2 * b], s);
        CHECK(out[2 * b + 1] == m, "block %d max %g expected %g", b, out[2 * b + 1], m);
    }
    free(in);
    free(out);
    test_end();
}

static void test_shared_poison(void) {
    test_begin("harness_shared_read_before_write_is_poisoned");
    float *out = (float *)mallocCheck(sizeof(float) * 3 * 64);
    hk_read_before_write(out, 3);
    int nan = 0;
    for (int i = 0; i < 3 * 64; i++) nan += isnan(out[i]) != 0;
    // every block, not just the first, must see poison (static shared memory does not persist)
    CHECK(nan == 3 * 64, "%d of %d reads returned NaN", nan, 3 * 64);
    free(out);
    test_end();
}

static void test_missing_barrier(void) {
    test_begin("harness_missing_barrier_visible");
    int nb = 2, block = 48;
    float *out = (float *)mallocCheck(sizeof(float) * nb * block);
    int bad[2] = {0, 0};
    for (int rep = 0; rep < 2; rep++) {  // consecutive launches run the threads in opposite orders
        hk_neighbour(out, nb, block, 0);
        for (int i = 0; i < nb * block; i++) bad[rep] += isnan(out[i]) != 0;
    }
    CHECK(bad[0] > 0 && bad[1] > 0, "without a barrier the NaN reads were %d and %d (both launches must show some)",
          bad[0], bad[1]);
    for (int rep = 0; rep < 2; rep++) {
        hk_neighbour(out, nb, block, 1);
        for (int b = 0; b < nb; b++)
            for (int t = 0; t < block; t++) {
                float e = (float)((t + 1) % block + b) + (float)((t + block - 1) % block + b);
                CHECK(out[b * block + t] == e, "with barrier, block %d thread %d: %g expected %g", b, t,
                      out[b * block + t], e);
            }
    }
    free(out);
    test_end();
}

static void test_dynamic_shared(void) {
    test_begin("harness_dynamic_shared");
    int n = 100, block = 32;
    float *in = (float *)mallocCheck(sizeof(float) * n), *out = (float *)mallocCheck(sizeof(float) * n);
    for (int i = 0; i < n; i++) in[i] = (float)i, out[i] = -7.0f;
    hk_dyn_reverse(out, in, n, block);
    for (int i = 0; i < n; i++) {
        int b = i / block, t = i % block;
        int src = b * block + (block - 1 - t);
        float e = src < n ? (float)src : -1.0f;
        CHECK(out[i] == e, "out[%d] = %g expected %g", i, out[i], e);
    }
    free(in);
    free(out);
    test_end();
}

static void test_atomics(void) {
    test_begin("harness_atomics_2d_grid");
    int n = 333, nbins = 7;
    int *vals = (int *)mallocCheck(sizeof(int) * n), *hist = (int *)callocCheck((size_t)nbins + 1, sizeof(int));
    int ref[8] = {0}, mx = 0;
    for (int i = 0; i < n; i++) {
        vals[i] = (i * 7919) % 1000;
        ref[vals[i] % nbins]++;
        mx = vals[i] > mx ? vals[i] : mx;
    }
    hk_histogram(hist, vals, n, nbins);
    for (int b = 0; b < nbins; b++) CHECK(hist[b] == ref[b], "bin %d: %d expected %d", b, hist[b], ref[b]);
    CHECK(hist[nbins] == mx, "max %d expected %d", hist[nbins], mx);
    free(vals);
    free(hist);
    test_end();
}

// ---- WMMA ------------------------------------------------------------------------------------

static uint16_t to16(float x, int is_bf16) { return is_bf16 ? f2bf(x) : f2h(x); }
static float from16(uint16_t h, int is_bf16) { return is_bf16 ? bf2f(h) : h2f(h); }

// d = a b + c for every combination of layouts, both 16-bit types: small integers (the product
// is exact, so the result must be equal), then random values against the documented model (16
// exact products added to c one after another in k order, in fp32: bit for bit) and against a
// double reference within the fp32 bound; flag 16 fills a with 0.1, which must be rounded to T
static void test_wmma_product(void) {
    test_begin("harness_wmma_product_layouts_types");
    uint64_t r = 7;
    for (int is_bf16 = 0; is_bf16 < 2; is_bf16++)
        for (int flags = 0; flags < 32; flags++)
            for (int integer = 0; integer < 2; integer++) {
                float a[16][16], b[16][16], c[16][16], out[256];
                uint16_t am[256], bm[256];
                float cm[256];
                for (int i = 0; i < 16; i++)
                    for (int j = 0; j < 16; j++) {
                        float x = integer ? (float)((int)(rng_next_u64(&r) % 9) - 4) : 2.0f * rng_uniform(&r) - 1.0f;
                        float y = integer ? (float)((int)(rng_next_u64(&r) % 9) - 4) : 2.0f * rng_uniform(&r) - 1.0f;
                        a[i][j] = from16(to16(x, is_bf16), is_bf16);  // a[m][k]
                        b[i][j] = from16(to16(y, is_bf16), is_bf16);  // b[k][n]
                        c[i][j] = integer ? (float)(i - j) : 2.0f * rng_uniform(&r) - 1.0f;
                    }
                if (flags & 16)
                    for (int i = 0; i < 16; i++)
                        for (int k = 0; k < 16; k++) a[i][k] = from16(to16(0.1f, is_bf16), is_bf16);
                for (int i = 0; i < 16; i++)
                    for (int j = 0; j < 16; j++) {
                        am[(flags & 1) ? j * 16 + i : i * 16 + j] = to16(a[i][j], is_bf16);
                        bm[(flags & 2) ? j * 16 + i : i * 16 + j] = to16(b[i][j], is_bf16);
                        cm[(flags & 4) ? j * 16 + i : i * 16 + j] = c[i][j];
                    }
                for (int i = 0; i < 256; i++) out[i] = -7.0f;
                hk_wmma_product(out, am, bm, cm, is_bf16, flags);
                int bad = 0;
                for (int i = 0; i < 16 && !bad; i++)
                    for (int j = 0; j < 16 && !bad; j++) {
                        float got = out[(flags & 8) ? j * 16 + i : i * 16 + j];
                        float seq = c[i][j];
                        double ref = c[i][j], mag = fabs(c[i][j]);
                        for (int k = 0; k < 16; k++) {
                            seq += a[i][k] * b[k][j];
                            ref += (double)a[i][k] * b[k][j];
                            mag += fabs((double)a[i][k] * b[k][j]);
                        }
                        // integers (with the 0.1 fill too) are exact; random values: the model's order
                        // bit for bit, and within 16 fp32 roundings of the double sum
                        int ok = integer ? got == (float)ref : got == seq;
                        ok = ok && fabs(got - ref) <= 17.0 * mag / 16777216.0;
                        if (!ok) {
                            CHECK(0, "%s flags %d %s: d[%d][%d] = %.9g, sequential fp32 %.9g, double %.9g",
                                  is_bf16 ? "bf16" : "fp16", flags, integer ? "integers" : "random", i, j, got, seq, ref);
                            bad = 1;
                        }
                    }
            }
    test_end();
}

// store_matrix_sync writes each lane's part when that lane resumes: a read of the whole tile
// right after it sees poison unless a __syncwarp separates them
static void test_wmma_store_race(void) {
    test_begin("harness_wmma_store_without_syncwarp_visible");
    float out[32];
    for (int rep = 0; rep < 2; rep++) {  // both thread orders
        hk_wmma_store_race(out, 0);
        int nan = 0;
        for (int l = 0; l < 32; l++) nan += isnan(out[l]) != 0;
        CHECK(nan > 0, "launch %d without __syncwarp: no lane read poison", rep);
        hk_wmma_store_race(out, 1);
        for (int l = 0; l < 32; l++) CHECK(out[l] == 512.0f, "with __syncwarp lane %d sums %g (expected 512)", l, out[l]);
    }
    test_end();
}

// a launch that must fail with a message containing `want`
static void expect_error(const char *name, void (*fn)(float *), const char *want) {
    test_begin(name);
    float out[2048];
    moe_hx_clear_error();
    moe_hx_set_error_mode(1);
    fn(out);
    moe_hx_set_error_mode(0);
    const char *e = moe_hx_last_error();
    CHECK(strstr(e, want) != NULL, "expected an error containing '%s', got '%s'", want, e);
    moe_hx_clear_error();
    test_end();
}

// a kernel thread that overflows its fiber stack must abort with a message, not a bare SIGSEGV
static void test_stack_overflow(void) {
#if defined(__SANITIZE_ADDRESS__)
    test_skip("harness_reports_stack_overflow", "AddressSanitizer handles segmentation faults itself");
#else
    test_begin("harness_reports_stack_overflow");
    int fds[2];
    CHECK(pipe(fds) == 0, "pipe");
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        int out[32];
        hk_stack_overflow(out);
        _exit(0);
    }
    close(fds[1]);
    char buf[1024];
    ssize_t n, tot = 0;
    while ((n = read(fds[0], buf + tot, sizeof buf - 1 - (size_t)tot)) > 0) tot += n;
    buf[tot] = 0;
    close(fds[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT, "child status 0x%x (expected abort)", status);
    CHECK(strstr(buf, "overflowed its 64 KiB fiber stack") && strstr(buf, "stack_overflow_kernel"), "stderr: %s", buf);
    test_end();
#endif
}

int main(void) {
    test_shuffles();
    test_ballot();
    test_block_sum();
    test_shared_poison();
    test_missing_barrier();
    test_dynamic_shared();
    test_atomics();
    expect_error("harness_detects_divergent_barrier_exit", hk_divergent_barrier, "divergent barrier");
    expect_error("harness_detects_two_barrier_sites", hk_two_barriers, "divergent __syncthreads");
    expect_error("harness_detects_deadlock", hk_warp_deadlock, "deadlock");
    expect_error("harness_detects_full_mask_in_partial_warp", hk_partial_mask, "do not exist");
    expect_error("harness_rejects_bad_launch", hk_bad_launch, "block size out of range");
    test_wmma_product();
    test_wmma_store_race();
    expect_error("harness_wmma_detects_divergent_call", hk_wmma_divergent, "divergent warp operations");
    expect_error("harness_wmma_detects_bad_ldm", hk_wmma_bad_ldm, "ldm 12 is not a multiple of 8");
    expect_error("harness_wmma_detects_misaligned_pointer", hk_wmma_misaligned, "is not 32-byte aligned");
    expect_error("harness_wmma_plain_shared_array_not_32_byte_aligned", hk_wmma_plain_shared, "is not 32-byte aligned");
    expect_error("harness_wmma_detects_non_uniform_pointer", hk_wmma_nonuniform, "must be the same in every lane");
    expect_error("harness_wmma_detects_partial_warp", hk_wmma_partial_warp, "do not exist");
    test_stack_overflow();
    // the harness still works after recorded errors
    test_shuffles();
    printf("# %ld launches, %ld fiber switches\n", moe_hx_launch_count(), moe_hx_switch_count());
    return test_summary();
}
