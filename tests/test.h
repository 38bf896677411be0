// Minimal test framework. Each test binary prints one line per case:
//   PASS name | FAIL name: why | SKIP name: why
// tests/run.sh counts these lines over every test program and prints the closing line
// "N passed, N failed, N skipped". A binary that crashes or exits non-zero without a FAIL
// line is counted as one failure by the runner.
#ifndef MOE_TEST_H
#define MOE_TEST_H

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

static int test_n_pass_, test_n_fail_, test_n_skip_;
static int test_case_failed_;
static const char *test_case_name_ = "";

static inline void test_begin(const char *name) {
    test_case_name_ = name;
    test_case_failed_ = 0;
}
// Report the result of the current case (PASS unless a CHECK failed).
static inline void test_end(void) {
    if (test_case_failed_) {
        test_n_fail_++;
        printf("FAIL %s\n", test_case_name_);
    } else {
        test_n_pass_++;
        printf("PASS %s\n", test_case_name_);
    }
    fflush(stdout);
}
static inline void test_skip(const char *name, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("SKIP %s: ", name);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    fflush(stdout);
    test_n_skip_++;
}
static inline void test_fail_msg_(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("  [%s] %s:%d: ", test_case_name_, file, line);
    vprintf(fmt, ap);
    printf("\n");
    va_end(ap);
    test_case_failed_ = 1;
}
// CHECK(cond, "fmt", ...): records a failure (with file, line and message) and continues.
#define CHECK(cond, ...)                                              \
    do {                                                              \
        if (!(cond)) test_fail_msg_(__FILE__, __LINE__, __VA_ARGS__); \
    } while (0)
// CHECK_CLOSE(a, b, atol, rtol)
#define CHECK_CLOSE(a, b, atol, rtol, what)                                                              \
    do {                                                                                                 \
        double a_ = (double)(a), b_ = (double)(b);                                                       \
        if (!(fabs(a_ - b_) <= (atol) + (rtol) * fabs(b_)))                                              \
            test_fail_msg_(__FILE__, __LINE__, "%s: got %.9g expected %.9g (diff %.3g)", what, a_, b_, \
                           fabs(a_ - b_));                                                               \
    } while (0)

// Exit code: non-zero if any case failed.
static inline int test_summary(void) {
    fprintf(stderr, "(%d passed, %d failed, %d skipped in this program)\n", test_n_pass_, test_n_fail_, test_n_skip_);
    return test_n_fail_ ? 1 : 0;
}

#endif
