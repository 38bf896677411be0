// Small shared utilities: checked allocation and file I/O (llm.c style xxxCheck macros
// that report file and line), error strings for library functions, timing.
#ifndef MOE_UTIL_H
#define MOE_UTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

// ---------------------------------------------------------------------------------------
// Checked calls for programs. Library code should return errors instead (see MoeErr).

static inline void *malloc_check_(size_t size, const char *file, int line) {
    void *p = malloc(size ? size : 1);
    if (!p) {
        fprintf(stderr, "error: out of memory allocating %zu bytes at %s:%d\n", size, file, line);
        exit(EXIT_FAILURE);
    }
    return p;
}
#define mallocCheck(size) malloc_check_((size), __FILE__, __LINE__)

static inline void *calloc_check_(size_t n, size_t size, const char *file, int line) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        fprintf(stderr, "error: out of memory allocating %zu x %zu bytes at %s:%d\n", n, size, file, line);
        exit(EXIT_FAILURE);
    }
    return p;
}
#define callocCheck(n, size) calloc_check_((n), (size), __FILE__, __LINE__)

static inline FILE *fopen_check_(const char *path, const char *mode, const char *file, int line) {
    FILE *fp = fopen(path, mode);
    if (!fp) {
        fprintf(stderr, "error: cannot open '%s' (mode %s) at %s:%d: ", path, mode, file, line);
        perror(NULL);
        exit(EXIT_FAILURE);
    }
    return fp;
}
#define fopenCheck(path, mode) fopen_check_((path), (mode), __FILE__, __LINE__)

static inline void fread_check_(void *ptr, size_t size, size_t n, FILE *fp, const char *file, int line) {
    size_t got = fread(ptr, size, n, fp);
    if (got != n) {
        fprintf(stderr, "error: short read (%zu of %zu items of %zu bytes) at %s:%d\n", got, n, size, file, line);
        exit(EXIT_FAILURE);
    }
}
#define freadCheck(ptr, size, n, fp) fread_check_((ptr), (size), (n), (fp), __FILE__, __LINE__)

static inline void fwrite_check_(const void *ptr, size_t size, size_t n, FILE *fp, const char *file, int line) {
    size_t put = fwrite(ptr, size, n, fp);
    if (put != n) {
        fprintf(stderr, "error: short write (%zu of %zu items of %zu bytes) at %s:%d\n", put, n, size, file, line);
        exit(EXIT_FAILURE);
    }
}
#define fwriteCheck(ptr, size, n, fp) fwrite_check_((ptr), (size), (n), (fp), __FILE__, __LINE__)

// ---------------------------------------------------------------------------------------
// Errors for library functions: functions return 0 on success, -1 on failure and fill an
// error buffer that the caller prints. One clear line: what failed, which file, which field.

typedef struct {
    char msg[512];
} MoeErr;

static inline int moe_err_set(MoeErr *err, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
        va_end(ap);
    }
    return -1;
}

// ---------------------------------------------------------------------------------------
// Time

static inline double wall_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// ---------------------------------------------------------------------------------------
// Deterministic RNG (xorshift64*), state is one uint64 so it checkpoints trivially.

static inline uint64_t rng_next_u64(uint64_t *state) {
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}
static inline uint64_t rng_seed(uint64_t seed) {
    // splitmix64 so that small seeds give well-mixed non-zero states
    uint64_t z = seed + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z = z ^ (z >> 31);
    return z ? z : 0x9E3779B97F4A7C15ULL;
}
// uniform float in [0, 1)
static inline float rng_uniform(uint64_t *state) {
    return (float)(rng_next_u64(state) >> 40) / 16777216.0f;
}
// standard normal (Box-Muller)
float rng_normal(uint64_t *state);

// ---------------------------------------------------------------------------------------
// Files

// Write `n` bytes to `path` atomically: write `path.tmp`, fsync, rename, fsync the
// directory. A crash at any moment leaves either the old file or the new one.
int write_file_atomic(const char *path, const void *data, size_t n, MoeErr *err);
// Read a whole file into a malloc'd buffer (NUL-terminated, *n excludes the NUL).
int read_file_all(const char *path, char **data, size_t *n, MoeErr *err);
// mkdir -p
int make_dirs(const char *path, MoeErr *err);
int file_exists(const char *path);

// CRC-32C (Castagnoli), for checksums of files we write.
uint32_t crc32c(uint32_t crc, const void *data, size_t n);
// the portable table implementation (crc32c uses the SSE4.2 instruction when present)
uint32_t crc32c_sw(uint32_t crc, const void *data, size_t n);

#endif
