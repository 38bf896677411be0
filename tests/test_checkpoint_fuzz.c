// Fuzz test of the checkpoint reader (train/checkpoint.c): thousands of mutations of a valid
// tiny checkpoint (random header bytes, with and without repaired checksums so that the
// deeper checks are reached, "interesting" values in the size / config / train-state fields,
// truncations, random garbage, random `latest` pointers). Every reader must return an error
// with a message naming the file, or succeed consistently; never crash (run under SAN=1 too).
// Deterministic: fixed seed and iteration count.
#include <fcntl.h>
#include <limits.h>
#include <unistd.h>

#include "../train/checkpoint.h"
#include "test.h"

#define HDR 1024

static char g_dir[64];

static uint32_t rnd(uint64_t *r, uint32_t n) { return n ? (uint32_t)(rng_next_u64(r) % n) : 0; }

// (unlink first: rewriting a file through O_TRUNC makes ext4 flush it on close, which is slow)
static int write_bytes(const char *path, const void *data, size_t n) {
    unlink(path);
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    size_t w = n ? fwrite(data, 1, n, fp) : 0;
    fclose(fp);
    return w == n ? 0 : -1;
}
static void wr32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void wr64(uint8_t *p, uint64_t v) {
    wr32(p, (uint32_t)v);
    wr32(p + 4, (uint32_t)(v >> 32));
}
static void refresh_crcs(uint8_t *b, size_t n) {
    if (n >= HDR) wr32(b + HDR - 4, crc32c(0, b, HDR - 4));
    if (n >= HDR + 4) wr32(b + n - 4, crc32c(0, b, n - 4));
}

static uint32_t interesting32(uint64_t *r, size_t n) {
    static const uint32_t vals[] = {0,
                                    1,
                                    2,
                                    3,
                                    7,
                                    8,
                                    0x7F,
                                    0x80,
                                    0xFF,
                                    0x100,
                                    0x7FFF,
                                    0xFFFF,
                                    0x10000,
                                    0x7FFFFFFF,
                                    0x80000000u,
                                    0xFFFFFFFFu,
                                    0xFFFFFFFEu,
                                    1024,
                                    1020,
                                    62,
                                    63,
                                    64,
                                    1025,
                                    0x7F800000u /* +inf */,
                                    0xFF800000u /* -inf */,
                                    0x7FC00000u /* nan */,
                                    0x3F800000u /* 1.0f */,
                                    0xBF800000u /* -1.0f */,
                                    0x00000001u /* denormal */};
    uint32_t k = rnd(r, 4);
    if (k == 0) return (uint32_t)rng_next_u64(r);
    if (k == 1) return (uint32_t)n + rnd(r, 9) - 4;
    return vals[rnd(r, sizeof vals / sizeof vals[0])];
}
static uint64_t interesting64(uint64_t *r, size_t n) {
    switch (rnd(r, 6)) {
        case 0:
            return rng_next_u64(r);
        case 1:
            return (uint64_t)n + rnd(r, 17) - 8;
        case 2:
            return UINT64_MAX - rnd(r, 4);
        case 3:
            return (uint64_t)INT64_MAX + rnd(r, 3);
        case 4:
            return 0;
        default:
            return (uint64_t)n / 3 + rnd(r, 9);
    }
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/moe_ckfz_XXXXXX");
    if (!mkdtemp(g_dir)) {
        printf("FAIL setup: mkdtemp\n");
        return 1;
    }
    char good[128], bad[128], rundir[128], latest[160], stepf[200];
    snprintf(good, sizeof good, "%s/good.ckpt", g_dir);
    snprintf(bad, sizeof bad, "%s/bad.ckpt", g_dir);
    snprintf(rundir, sizeof rundir, "%s/run", g_dir);
    ModelConfig cfg;
    config_tiny(&cfg);
    cfg.mtp_depth = 1;
    Model m, l;
    MoeErr err;
    test_begin("fuzz_setup");
    int ok = model_init(&m, &cfg, 1, 4, 3, &err) == 0;
    CHECK(ok, "model_init: %s", err.msg);
    ok = ok && model_init(&l, &cfg, 1, 4, 4, &err) == 0;
    CkptTrainState st;
    memset(&st, 0, sizeof st);
    st.step = 10;
    st.loss_scale = 1.0f;
    st.best_val_loss = INFINITY;
    snprintf(st.run_name, sizeof st.run_name, "fuzz");
    if (ok) CHECK(ckpt_save(good, &m, &st, &err) == 0, "save: %s", err.msg);
    char *gd = NULL;
    size_t n = 0;
    if (ok) CHECK(read_file_all(good, &gd, &n, &err) == 0, "read: %s", err.msg);
    test_end();
    if (!ok || !gd) return test_summary();
    const uint8_t *g = (const uint8_t *)gd;
    uint8_t *w = (uint8_t *)malloc(n + 64);
    // fixed by default; MOE_FUZZ_ITERS / MOE_FUZZ_SEED allow a longer manual run
    const char *ev = getenv("MOE_FUZZ_ITERS");
    int iters = ev ? atoi(ev) : 3000;
    if (iters <= 0) iters = 3000;
    ev = getenv("MOE_FUZZ_SEED");
    uint64_t r = rng_seed(ev ? strtoull(ev, NULL, 10) : 20261124);

    test_begin("fuzz_header_mutations");
    int n_ok = 0, n_hdr_ok = 0, bad_msgs = 0, inconsistent = 0;
    for (int it = 0; it < iters; it++) {
        memcpy(w, g, n);
        size_t len = n;
        int kind = (int)rnd(&r, 8), fix = 1;
        switch (kind) {
            case 0:  // random bytes anywhere in the header, checksums left stale
                fix = 0;
                // fall through
            case 1: {  // random bytes in the header, checksums repaired
                int k = 1 + (int)rnd(&r, 8);
                for (int j = 0; j < k; j++) w[rnd(&r, HDR)] = (uint8_t)rng_next_u64(&r);
                break;
            }
            case 2: {  // the size / offset fields (16..72)
                int f = (int)rnd(&r, 7);
                if (f == 2)
                    wr32(w + 32 + 4 * rnd(&r, 2), interesting32(&r, n));  // n_blocks, E
                else
                    wr64(w + 16 + 8 * f, interesting64(&r, n));  // sizes, offsets
                break;
            }
            case 3:  // config fields
                for (int j = 1 + (int)rnd(&r, 3); j > 0; j--) wr32(w + 80 + 4 * rnd(&r, 28), interesting32(&r, n));
                break;
            case 4:  // train state fields (4-byte granularity, including inside the 8-byte ones)
                for (int j = 1 + (int)rnd(&r, 3); j > 0; j--) wr32(w + 192 + 4 * rnd(&r, 82), interesting32(&r, n));
                break;
            case 5:  // version, header size, field count, flags
                wr32(w + (rnd(&r, 2) ? 8 + 4 * rnd(&r, 2) : 72 + 4 * rnd(&r, 2)), interesting32(&r, n));
                fix = rnd(&r, 2);
                break;
            case 6:  // truncation, sometimes in the header
                len = rnd(&r, 2) ? rnd(&r, HDR + 16) : rnd(&r, (uint32_t)n);
                fix = 0;
                break;
            default: {  // random garbage file, sometimes with our magic
                len = rnd(&r, 2 * HDR);
                for (size_t j = 0; j < len; j++) w[j] = (uint8_t)rng_next_u64(&r);
                if (len >= 8 && rnd(&r, 2)) memcpy(w, "MOECKPT", 8);
                if (len >= 12 && rnd(&r, 2)) wr32(w + 8, 1);
                fix = 0;
                break;
            }
        }
        if (fix) refresh_crcs(w, len);
        if (write_bytes(bad, w, len) != 0) {
            CHECK(0, "cannot write %s", bad);
            break;
        }
        ModelConfig c2;
        CkptTrainState s2;
        err.msg[0] = '\0';
        int rh = ckpt_read_header(bad, &c2, &s2, &err);
        if (rh != 0 && (!err.msg[0] || !strstr(err.msg, bad))) bad_msgs++;
        if (rh == 0) {
            n_hdr_ok++;
            MoeErr e2;
            if (config_validate(&c2, &e2) != 0) inconsistent++;  // a header that passes must hold a valid config
        }
        int rv = ckpt_verify(bad, &err);
        if (rv != 0 && !strstr(err.msg, bad)) bad_msgs++;
        int rl = ckpt_load(bad, &l, &s2, (int)rnd(&r, 2), &err);
        if (rl != 0 && !strstr(err.msg, bad)) bad_msgs++;
        if (rl == 0) n_ok++;
        if ((rv == 0 && rh != 0) || (rl == 0 && rv != 0)) inconsistent++;
    }
    CHECK(bad_msgs == 0, "%d error messages did not name the file", bad_msgs);
    CHECK(inconsistent == 0, "%d inconsistent verdicts between read_header / verify / load", inconsistent);
    CHECK(n_hdr_ok > 0 && n_hdr_ok < iters, "mutations never (or always) passed the header checks: %d", n_hdr_ok);
    printf("  %d mutations: %d passed the header checks, %d loaded (routing-only or unused-byte edits)\n", iters,
           n_hdr_ok, n_ok);
    test_end();

    test_begin("fuzz_good_file_still_loads");
    CHECK(ckpt_load(good, &l, &st, 1, &err) == 0, "load: %s", err.msg);
    CHECK(memcmp(l.params, m.params, m.num_params * sizeof(float)) == 0, "params differ");
    test_end();

    test_begin("fuzz_latest_pointer");
    {
        // a run dir with one valid checkpoint; random `latest` contents never crash resolve
        CHECK(ckpt_save_in_dir(rundir, &m, &st, 2, 0, &err) == 0, "save: %s", err.msg);
        snprintf(latest, sizeof latest, "%s/latest", rundir);
        snprintf(stepf, sizeof stepf, "%s/step_00000010.ckpt", rundir);
        fflush(stderr);
        int saved = dup(2), devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, 2);  // resolve warns on every bad pointer
        int fails = 0;
        for (int it = 0; it < 300; it++) {
            uint8_t buf[300];
            size_t len = rnd(&r, sizeof buf);
            for (size_t j = 0; j < len; j++) buf[j] = (uint8_t)(rnd(&r, 4) ? 32 + rnd(&r, 95) : rng_next_u64(&r));
            if (rnd(&r, 3) == 0 && len > 20) memcpy(buf, "step_0000001", 12);
            write_bytes(latest, buf, len);
            char out[512];
            if (ckpt_resolve(rundir, out, sizeof out, &err) != 0 || strcmp(out, stepf) != 0) fails++;
        }
        fflush(stderr);
        if (saved >= 0) {
            dup2(saved, 2);
            close(saved);
        }
        if (devnull >= 0) close(devnull);
        CHECK(fails == 0, "%d random `latest` pointers did not resolve to the valid checkpoint", fails);
    }
    test_end();

    free(w);
    free(gd);
    model_free(&m);
    model_free(&l);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    if (system(cmd) != 0) printf("  (cleanup failed)\n");
    return test_summary();
}
