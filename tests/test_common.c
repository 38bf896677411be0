// Tests of common/: CRC-32C known values, atomic file writes, the GEMM wrapper against a
// naive triple loop in double for every transpose combination and awkward sizes.
#include <unistd.h>

#include "../common/gemm.h"
#include "../common/util.h"
#include "test.h"

static void naive_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                       int ldb, float beta, double *C, int ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++) {
                double a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                double b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                s += a * b;
            }
            C[(size_t)i * ldc + j] = alpha * s + beta * C[(size_t)i * ldc + j];
        }
}

int main(void) {
    test_begin("crc32c_known_value");
    CHECK(crc32c(0, "123456789", 9) == 0xE3069283u, "crc32c('123456789') = %08x", crc32c(0, "123456789", 9));
    CHECK(crc32c(0, "", 0) == 0, "empty crc");
    // incremental == one shot
    const char *s = "The quick brown fox jumps over the lazy dog, twice over.";
    uint32_t a = crc32c(0, s, strlen(s));
    uint32_t b = crc32c(crc32c(0, s, 13), s + 13, strlen(s) - 13);
    CHECK(a == b, "incremental crc differs");
    CHECK(crc32c_sw(0, "123456789", 9) == 0xE3069283u, "table crc32c('123456789')");
    {
        unsigned char buf[1000];
        uint64_t r = rng_seed(3);
        for (int i = 0; i < 1000; i++) buf[i] = (unsigned char)rng_next_u64(&r);
        for (int len = 0; len < 1000; len += 37)
            CHECK(crc32c(7, buf + 1, (size_t)len) == crc32c_sw(7, buf + 1, (size_t)len), "hw/sw crc differ at %d", len);
    }
    test_end();

    test_begin("write_file_atomic_roundtrip");
    {
        char dir[] = "/tmp/moe_test_XXXXXX";
        CHECK(mkdtemp(dir) != NULL, "mkdtemp");
        char path[300], sub[256];
        snprintf(sub, sizeof sub, "%s/a/b", dir);
        MoeErr err;
        CHECK(make_dirs(sub, &err) == 0, "make_dirs: %s", err.msg);
        snprintf(path, sizeof path, "%s/f.txt", sub);
        CHECK(write_file_atomic(path, "hello", 5, &err) == 0, "write: %s", err.msg);
        CHECK(write_file_atomic(path, "world!", 6, &err) == 0, "rewrite: %s", err.msg);
        char *data = NULL;
        size_t n = 0;
        CHECK(read_file_all(path, &data, &n, &err) == 0, "read: %s", err.msg);
        CHECK(n == 6 && memcmp(data, "world!", 6) == 0, "content");
        free(data);
        char tmp[320];
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        CHECK(!file_exists(tmp), "temporary file left behind");
        CHECK(read_file_all("/nonexistent/x", &data, &n, &err) != 0 && strstr(err.msg, "/nonexistent/x"),
              "missing file error names the file");
        CHECK(write_file_atomic("/nonexistent/dir/x", "a", 1, &err) != 0, "write into a missing dir fails");
        char cmd[300];
        snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
        CHECK(system(cmd) == 0, "cleanup");
    }
    test_end();

    test_begin("gemm_matches_naive_all_transposes");
    {
        uint64_t rng = rng_seed(1);
        int sizes[][3] = {{1, 1, 1}, {7, 13, 5}, {33, 17, 65}, {64, 64, 64}, {5, 130, 3}};
        for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
            int M = sizes[si][0], N = sizes[si][1], K = sizes[si][2];
            for (int ta = 0; ta < 2; ta++)
                for (int tb = 0; tb < 2; tb++) {
                    int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;
                    float *A = mallocCheck(sizeof(float) * (size_t)lda * (ta ? K : M));
                    float *B = mallocCheck(sizeof(float) * (size_t)ldb * (tb ? N : K));
                    float *C = mallocCheck(sizeof(float) * (size_t)ldc * M);
                    double *R = mallocCheck(sizeof(double) * (size_t)ldc * M);
                    for (int i = 0; i < lda * (ta ? K : M); i++) A[i] = rng_uniform(&rng) * 2 - 1;
                    for (int i = 0; i < ldb * (tb ? N : K); i++) B[i] = rng_uniform(&rng) * 2 - 1;
                    for (int i = 0; i < ldc * M; i++) R[i] = C[i] = rng_uniform(&rng);
                    gemm(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, 1.0f, C, ldc);
                    naive_gemm(ta, tb, M, N, K, 0.5f, A, lda, B, ldb, 1.0, R, ldc);
                    double maxd = 0;
                    for (int i = 0; i < M; i++)
                        for (int j = 0; j < N; j++) {
                            double d = fabs(C[i * ldc + j] - R[i * ldc + j]);
                            if (d > maxd) maxd = d;
                        }
                    CHECK(maxd < 1e-4, "M=%d N=%d K=%d ta=%d tb=%d max diff %g", M, N, K, ta, tb, maxd);
                    // beta = 0 must ignore (possibly NaN) C
                    for (int i = 0; i < ldc * M; i++) C[i] = NAN;
                    gemm(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, ldc);
                    int finite = 1;
                    for (int i = 0; i < M; i++)
                        for (int j = 0; j < N; j++) finite &= isfinite(C[i * ldc + j]);
                    CHECK(finite, "beta=0 propagated NaN from C (M=%d N=%d K=%d)", M, N, K);
                    free(A), free(B), free(C), free(R);
                }
        }
    }
    test_end();
    return test_summary();
}
