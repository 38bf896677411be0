// Tests of train/checkpoint.c: bit-exact round trips (params, m, v, bias, train state) on tiny
// configs, the documented byte layout, corrupt files (truncated at many offsets, flipped bytes,
// wrong magic, newer version, invalid config, trailing bytes, wrong shapes), shape checks for
// ablations, run directories (retention, `latest`, best.ckpt, stale tmp files) and resolving
// --resume arguments with fallback past a corrupt newest checkpoint.
//
// Also a helper for tests/test_ckpt_kill.sh:
//   test_checkpoint --save-into DIR STEP   save a deterministic checkpoint of step STEP into DIR
//   test_checkpoint --check DIR STEP       resolve DIR, load it, check it is that checkpoint
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../train/checkpoint.h"
#include "test.h"

#define HDR 1024

static char g_dir[64];

static void in_dir(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", g_dir, name); }

// A model with every buffer filled deterministically from seed (params, m, v and bias all differ).
static int make_model(Model *m, const ModelConfig *cfg, uint64_t seed) {
    MoeErr err;
    if (model_init(m, cfg, 1, 4, seed, &err) != 0) {
        printf("  model_init: %s\n", err.msg);
        return -1;
    }
    uint64_t r = rng_seed(seed ^ 0xABCDEFu);
    for (size_t i = 0; i < m->num_params; i++) {
        m->m[i] = rng_normal(&r) * 1e-3f;
        m->v[i] = rng_uniform(&r) * 1e-5f;
    }
    size_t nb = (size_t)m->n_blocks * (size_t)(cfg->n_routed_experts > 0 ? cfg->n_routed_experts : 1);
    for (size_t i = 0; i < nb; i++) m->bias[i] = rng_normal(&r) * 0.01f;
    return 0;
}

static void make_state(CkptTrainState *st, int64_t step) {
    memset(st, 0, sizeof(*st));
    st->step = step;
    st->tokens_seen = step * 4096 + 7;
    st->rng_state = 0x0123456789ABCDEFull ^ (uint64_t)step;
    st->best_val_loss = INFINITY;
    st->loss_scale = 65536.0f;
    st->good_steps = 17;
    st->precision = 2;
    st->bad_steps = 1;
    st->train_loader.seed = 1234;
    st->train_loader.epoch = 3;
    st->train_loader.position = 5 + step;
    st->train_loader.shuffle = 1;
    st->batch_size = 8;
    st->seq_len = 16;
    st->grad_accum = 2;
    st->warmup_steps = 10;
    st->max_steps = 1000;
    st->lr = 3e-4f;
    st->min_lr = 3e-5f;
    st->weight_decay = 0.1f;
    st->grad_clip = 1.0f;
    st->beta1 = 0.9f;
    st->beta2 = 0.95f;
    st->seed = 42;
    snprintf(st->run_name, sizeof st->run_name, "tiny-run-%lld", (long long)step);
}

static size_t bias_count(const Model *m) {
    return (size_t)m->n_blocks * (size_t)(m->cfg.n_routed_experts > 0 ? m->cfg.n_routed_experts : 1);
}

static int models_equal(const Model *a, const Model *b, int with_opt) {
    if (a->num_params != b->num_params) return 0;
    size_t pb = a->num_params * sizeof(float);
    if (memcmp(a->params, b->params, pb) != 0) return 0;
    if (with_opt && (memcmp(a->m, b->m, pb) != 0 || memcmp(a->v, b->v, pb) != 0)) return 0;
    return memcmp(a->bias, b->bias, bias_count(a) * sizeof(float)) == 0;
}

static int read_all(const char *path, uint8_t **buf, size_t *n) {
    MoeErr err;
    char *d = NULL;
    if (read_file_all(path, &d, n, &err) != 0) return -1;
    *buf = (uint8_t *)d;
    return 0;
}
// (unlink first: rewriting a file through O_TRUNC makes ext4 flush it on close, which is slow)
static int write_bytes(const char *path, const void *data, size_t n) {
    unlink(path);
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    size_t w = n ? fwrite(data, 1, n, fp) : 0;
    fclose(fp);
    return w == n ? 0 : -1;
}
static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }
static void wr32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void wr64(uint8_t *p, uint64_t v) {
    wr32(p, (uint32_t)v);
    wr32(p + 4, (uint32_t)(v >> 32));
}
// Recompute both checksums so that a deliberate edit reaches the deeper checks.
static void refresh_crcs(uint8_t *b, size_t n) {
    wr32(b + HDR - 4, crc32c(0, b, HDR - 4));
    if (n >= HDR + 4) wr32(b + n - 4, crc32c(0, b, n - 4));
}

// Expect every reader to refuse `path` with a message naming the file and containing `what`.
static void expect_bad(const char *path, const char *what, const char *label, Model *into) {
    MoeErr err;
    ModelConfig cfg;
    CkptTrainState st;
    err.msg[0] = '\0';
    int rh = ckpt_read_header(path, &cfg, &st, &err);
    CHECK(rh != 0, "%s: ckpt_read_header accepted it", label);
    if (rh != 0) {
        CHECK(strstr(err.msg, path) != NULL, "%s: message does not name the file: %s", label, err.msg);
        CHECK(strstr(err.msg, what) != NULL, "%s: message lacks '%s': %s", label, what, err.msg);
    }
    CHECK(ckpt_verify(path, &err) != 0, "%s: ckpt_verify accepted it", label);
    CHECK(strstr(err.msg, path) != NULL, "%s: verify message does not name the file: %s", label, err.msg);
    if (into) {
        CHECK(ckpt_load(path, into, &st, 1, &err) != 0, "%s: ckpt_load accepted it", label);
        CHECK(strstr(err.msg, path) != NULL, "%s: load message does not name the file: %s", label, err.msg);
    }
}

// Capture stderr of a call into a buffer.
typedef struct {
    int saved;
    char path[128];
} Capture;
static void capture_begin(Capture *c) {
    fflush(stderr);
    snprintf(c->path, sizeof c->path, "%s/stderr.txt", g_dir);
    c->saved = dup(2);
    int fd = open(c->path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        dup2(fd, 2);
        close(fd);
    }
}
static void capture_end(Capture *c, char *out, size_t n) {
    fflush(stderr);
    dup2(c->saved, 2);
    close(c->saved);
    out[0] = '\0';
    FILE *fp = fopen(c->path, "rb");
    if (fp) {
        size_t got = fread(out, 1, n - 1, fp);
        out[got] = '\0';
        fclose(fp);
    }
    unlink(c->path);
}

// ---------------------------------------------------------------------------------------

static void test_roundtrip(const char *label, const ModelConfig *cfg) {
    char name[128];
    snprintf(name, sizeof name, "roundtrip_bit_exact_%s", label);
    test_begin(name);
    char path[256];
    in_dir(path, sizeof path, "rt.ckpt");
    Model a, b;
    if (make_model(&a, cfg, 11) != 0 || make_model(&b, cfg, 99) != 0) {
        CHECK(0, "model_init failed");
        test_end();
        return;
    }
    // special values survive bit for bit
    uint32_t nan_bits = 0x7FC01234u;
    memcpy(&a.params[0], &nan_bits, 4);
    a.params[1] = -0.0f;
    a.m[2] = INFINITY;
    CkptTrainState st, st2;
    make_state(&st, 123456);
    MoeErr err;
    CHECK(ckpt_save(path, &a, &st, &err) == 0, "save: %s", err.msg);
    CHECK(!models_equal(&a, &b, 1), "the two models should differ before loading");
    CHECK(ckpt_load(path, &b, &st2, 1, &err) == 0, "load: %s", err.msg);
    CHECK(models_equal(&a, &b, 1), "params, m, v or bias differ after the round trip");
    CHECK(memcmp(&st, &st2, sizeof st) == 0, "train state differs after the round trip");
    ModelConfig c2;
    memset(&st2, 0, sizeof st2);
    CHECK(ckpt_read_header(path, &c2, &st2, &err) == 0, "read_header: %s", err.msg);
    CHECK(memcmp(&c2, cfg, sizeof c2) == 0, "config differs after the round trip");
    CHECK(memcmp(&st, &st2, sizeof st) == 0, "train state from read_header differs");
    CHECK(ckpt_verify(path, &err) == 0, "verify: %s", err.msg);
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(!file_exists(tmp), "the .tmp file is left behind");
    model_free(&a);
    model_free(&b);
    unlink(path);
    test_end();
}

static void test_layout_known_values(void) {
    test_begin("file_layout_known_values");
    ModelConfig cfg;
    config_tiny(&cfg);
    Model a;
    if (make_model(&a, &cfg, 5) != 0) {
        CHECK(0, "model_init");
        test_end();
        return;
    }
    CkptTrainState st;
    make_state(&st, 7);
    char path[256];
    in_dir(path, sizeof path, "layout.ckpt");
    MoeErr err;
    CHECK(ckpt_save(path, &a, &st, &err) == 0, "save: %s", err.msg);
    uint8_t *b = NULL;
    size_t n = 0;
    CHECK(read_all(path, &b, &n) == 0, "read back");
    if (b) {
        size_t nb = bias_count(&a);
        size_t expect = HDR + 3 * a.num_params * 4 + nb * 4 + 4;
        CHECK(n == expect, "file size %zu, expected %zu", n, expect);
        CHECK(memcmp(b, "MOECKPT\0", 8) == 0, "magic");
        CHECK(rd32(b + 8) == CKPT_VERSION, "version %u", rd32(b + 8));
        CHECK(rd32(b + 12) == HDR, "header size %u", rd32(b + 12));
        CHECK(rd64(b + 16) == n, "stored file size %llu", (unsigned long long)rd64(b + 16));
        CHECK(rd64(b + 24) == a.num_params, "num_params");
        CHECK(rd32(b + 32) == (uint32_t)a.n_blocks && rd32(b + 36) == (uint32_t)cfg.n_routed_experts, "bias shape");
        CHECK(rd64(b + 40) == HDR && rd64(b + 48) == HDR + a.num_params * 4, "section offsets");
        CHECK((int)rd32(b + 80) == cfg.vocab_size && (int)rd32(b + 84) == cfg.dim, "config starts at 80");
        CHECK((int64_t)rd64(b + 192) == st.step, "train state starts at 192 with the step");
        CHECK(rd32(b + HDR - 4) == crc32c(0, b, HDR - 4), "header crc");
        CHECK(n >= HDR + 4 && rd32(b + n - 4) == crc32c(0, b, n - 4), "trailing crc");
        CHECK(memcmp(b + HDR, a.params, a.num_params * 4) == 0, "params are raw little-endian fp32 at 1024");
        CHECK(memcmp(b + n - 4 - nb * 4, a.bias, nb * 4) == 0, "bias just before the crc");
        free(b);
    }
    model_free(&a);
    unlink(path);
    test_end();
}

static void test_load_without_optimizer(void) {
    test_begin("load_without_optimizer_keeps_m_v");
    ModelConfig cfg;
    config_tiny(&cfg);
    Model a, b;
    if (make_model(&a, &cfg, 1) != 0 || make_model(&b, &cfg, 2) != 0) {
        CHECK(0, "model_init");
        test_end();
        return;
    }
    size_t pb = a.num_params * sizeof(float);
    float *m0 = (float *)malloc(pb), *v0 = (float *)malloc(pb);
    memcpy(m0, b.m, pb);
    memcpy(v0, b.v, pb);
    CkptTrainState st;
    make_state(&st, 3);
    char path[256];
    in_dir(path, sizeof path, "noopt.ckpt");
    MoeErr err;
    CHECK(ckpt_save(path, &a, &st, &err) == 0, "save: %s", err.msg);
    CHECK(ckpt_load(path, &b, NULL, 0, &err) == 0, "load: %s", err.msg);
    CHECK(models_equal(&a, &b, 0), "params/bias not loaded");
    CHECK(memcmp(b.m, m0, pb) == 0 && memcmp(b.v, v0, pb) == 0, "m / v changed although load_optimizer = 0");
    free(m0);
    free(v0);
    model_free(&a);
    model_free(&b);
    unlink(path);
    test_end();
}

// Every kind of damage: a clear error naming the file, never a crash, the model untouched.
static void test_corrupt(void) {
    ModelConfig cfg;
    config_tiny(&cfg);
    Model a, b;
    if (make_model(&a, &cfg, 21) != 0 || make_model(&b, &cfg, 22) != 0) {
        test_begin("corrupt_setup");
        CHECK(0, "model_init");
        test_end();
        return;
    }
    CkptTrainState st;
    make_state(&st, 50);
    char good[256], bad[256];
    in_dir(good, sizeof good, "good.ckpt");
    in_dir(bad, sizeof bad, "bad.ckpt");
    MoeErr err;
    test_begin("corrupt_setup");
    CHECK(ckpt_save(good, &a, &st, &err) == 0, "save: %s", err.msg);
    test_end();
    uint8_t *g = NULL;
    size_t n = 0;
    if (read_all(good, &g, &n) != 0) return;
    uint8_t *w = (uint8_t *)malloc(n + 64);
    size_t pb = a.num_params * 4;
    size_t bb = bias_count(&a) * 4;
    // snapshot of b to check failed loads leave it untouched
    Model snap;
    if (make_model(&snap, &cfg, 22) != 0) return;

    test_begin("truncated_at_many_offsets");
    {
        struct {
            size_t off;
            const char *what;
        } cuts[] = {
            {0, "truncated"},
            {5, "truncated"},
            {8, "truncated"},
            {12, "truncated"},
            {100, "truncated"},
            {HDR - 4, "truncated"},
            {HDR - 1, "truncated"},
            {HDR, "section params"},
            {HDR + pb / 2, "section params"},
            {HDR + pb + 3, "section m"},
            {HDR + 2 * pb + pb / 3, "section v"},
            {HDR + 3 * pb + bb / 2, "section bias"},
            {n - 4, "checksum"},
            {n - 1, "checksum"},
        };
        for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
            char label[64];
            snprintf(label, sizeof label, "cut at %zu", cuts[i].off);
            write_bytes(bad, g, cuts[i].off);
            expect_bad(bad, cuts[i].what, label, &b);
        }
        CHECK(models_equal(&b, &snap, 1), "a failed load changed the model");
    }
    test_end();

    test_begin("flipped_payload_byte");
    {
        size_t offs[] = {HDR, HDR + pb / 2, HDR + pb + 1, HDR + 2 * pb + 17, HDR + 3 * pb + 1, n - 2};
        for (size_t i = 0; i < sizeof offs / sizeof offs[0]; i++) {
            memcpy(w, g, n);
            w[offs[i]] ^= 0x10;
            write_bytes(bad, w, n);
            CHECK(ckpt_read_header(bad, NULL, NULL, &err) == 0, "the header alone is fine (offset %zu): %s", offs[i],
                  err.msg);
            CHECK(ckpt_verify(bad, &err) != 0, "verify accepted a flipped byte at %zu", offs[i]);
            CHECK(strstr(err.msg, bad) && strstr(err.msg, "checksum mismatch"), "message: %s", err.msg);
            CHECK(ckpt_load(bad, &b, NULL, 1, &err) != 0, "load accepted a flipped byte at %zu", offs[i]);
            CHECK(strstr(err.msg, bad) && strstr(err.msg, "checksum mismatch"), "message: %s", err.msg);
        }
        CHECK(models_equal(&b, &snap, 1), "a failed load changed the model");
    }
    test_end();

    test_begin("flipped_header_byte");
    {
        size_t offs[] = {20, 30, 81, 200, 400, 700, HDR - 3};
        for (size_t i = 0; i < sizeof offs / sizeof offs[0]; i++) {
            memcpy(w, g, n);
            w[offs[i]] ^= 0x01;
            write_bytes(bad, w, n);
            expect_bad(bad, "header checksum", "flipped header byte", &b);
        }
    }
    test_end();

    test_begin("wrong_magic");
    memcpy(w, g, n);
    memcpy(w, "GGUF\0\0\0\0", 8);
    write_bytes(bad, w, n);
    expect_bad(bad, "not a moe.c checkpoint", "wrong magic", &b);
    write_bytes(bad, "hello world, this is text\n", 26);
    expect_bad(bad, "not a moe.c checkpoint", "text file", &b);
    test_end();

    test_begin("newer_version");
    memcpy(w, g, n);
    wr32(w + 8, CKPT_VERSION + 1);
    write_bytes(bad, w, n);
    expect_bad(bad, "newer moe.c", "newer version", &b);
    // a newer version is reported as such even when the rest of its layout is different
    write_bytes(bad, w, 64);
    expect_bad(bad, "newer moe.c", "newer version, short", &b);
    wr32(w + 8, 0);
    write_bytes(bad, w, n);
    expect_bad(bad, "invalid format version", "version 0", &b);
    test_end();

    test_begin("invalid_config_with_valid_crc");
    {
        // config field 16 (top_k, at 80 + 16*4) larger than the number of experts
        memcpy(w, g, n);
        wr32(w + 80 + 16 * 4, 99);
        refresh_crcs(w, n);
        write_bytes(bad, w, n);
        expect_bad(bad, "top_k", "top_k > experts", &b);
        // dim = 0
        memcpy(w, g, n);
        wr32(w + 84, 0);
        refresh_crcs(w, n);
        write_bytes(bad, w, n);
        expect_bad(bad, "invalid model config", "dim = 0", &b);
        // fields whose product overflows a tensor dimension (config_validate names the product)
        memcpy(w, g, n);
        wr32(w + 80 + 4 * 4, 0x40000000);  // n_heads: n_heads * (qk_nope + qk_rope) > INT_MAX
        refresh_crcs(w, n);
        write_bytes(bad, w, n);
        expect_bad(bad, "n_heads", "n_heads overflow", &b);
        // a valid but different config: sizes no longer agree with the stored ones
        memcpy(w, g, n);
        wr32(w + 84, 32);
        refresh_crcs(w, n);
        write_bytes(bad, w, n);
        expect_bad(bad, "does not match its config", "dim changed", &b);
        // precision 9 in the train state
        memcpy(w, g, n);
        wr32(w + 192 + 36, 9);
        refresh_crcs(w, n);
        write_bytes(bad, w, n);
        expect_bad(bad, "precision", "bad precision", &b);
        // a non-zero byte in the reserved part of the header
        memcpy(w, g, n);
        w[700] = 1;
        refresh_crcs(w, n);
        write_bytes(bad, w, n);
        expect_bad(bad, "reserved header byte 700", "reserved byte", &b);
        // a stored file size that disagrees
        memcpy(w, g, n);
        wr64(w + 16, n + 8);
        refresh_crcs(w, n);
        write_bytes(bad, w, n);
        expect_bad(bad, "corrupt header", "file size field", &b);
        // a section offset that disagrees
        memcpy(w, g, n);
        wr64(w + 56, 4096);
        refresh_crcs(w, n);
        write_bytes(bad, w, n);
        expect_bad(bad, "section v", "section offset", &b);
    }
    test_end();

    test_begin("trailing_bytes");
    memcpy(w, g, n);
    memset(w + n, 0, 16);
    write_bytes(bad, w, n + 16);
    expect_bad(bad, "unexpected bytes", "trailing bytes", &b);
    test_end();

    test_begin("missing_empty_directory");
    {
        char missing[256];
        in_dir(missing, sizeof missing, "does_not_exist.ckpt");
        CHECK(ckpt_read_header(missing, NULL, NULL, &err) != 0 && strstr(err.msg, missing), "missing: %s", err.msg);
        CHECK(ckpt_load(missing, &b, NULL, 1, &err) != 0, "missing loaded");
        write_bytes(bad, "", 0);
        expect_bad(bad, "truncated", "empty file", &b);
        CHECK(ckpt_read_header(g_dir, NULL, NULL, &err) != 0 && strstr(err.msg, "not a regular file"), "directory: %s",
              err.msg);
    }
    test_end();

    test_begin("load_into_other_shape_refused");
    {
        ModelConfig c2 = cfg;
        c2.dim = 20;
        Model o;
        if (make_model(&o, &c2, 3) == 0) {
            CHECK(ckpt_load(good, &o, NULL, 1, &err) != 0, "loaded into a model of another dim");
            CHECK(strstr(err.msg, good) && strstr(err.msg, "dim"), "message: %s", err.msg);
            model_free(&o);
        }
        // routing-only differences load fine (the caller decides)
        c2 = cfg;
        c2.top_k = 3;
        c2.balance = BALANCE_AUX;
        c2.score_func = SCORE_SOFTMAX;
        c2.capacity_factor = 1.25f;
        if (make_model(&o, &c2, 3) == 0) {
            CHECK(ckpt_load(good, &o, NULL, 1, &err) == 0, "routing-only change refused: %s", err.msg);
            CHECK(memcmp(o.params, a.params, pb) == 0, "params not loaded");
            CHECK(o.cfg.top_k == 3 && o.cfg.balance == BALANCE_AUX, "load changed the model's routing options");
            model_free(&o);
        }
    }
    test_end();

    test_begin("save_errors");
    {
        char p[300];
        snprintf(p, sizeof p, "%s/no/such/dir/x.ckpt", g_dir);
        CHECK(ckpt_save(p, &a, &st, &err) != 0 && strstr(err.msg, "x.ckpt.tmp"), "save into a missing dir: %s",
              err.msg);
        CkptTrainState s2 = st;
        s2.precision = 7;
        CHECK(ckpt_save(bad, &a, &s2, &err) != 0 && strstr(err.msg, "precision"), "bad precision saved: %s", err.msg);
        s2 = st;
        memset(s2.run_name, 'x', sizeof s2.run_name);
        CHECK(ckpt_save(bad, &a, &s2, &err) != 0 && strstr(err.msg, "run_name"), "unterminated name saved: %s",
              err.msg);
        CHECK(ckpt_save("", &a, &st, &err) != 0, "empty path accepted");
    }
    test_end();

    free(w);
    free(g);
    model_free(&a);
    model_free(&b);
    model_free(&snap);
    unlink(good);
    unlink(bad);
}

static void test_shapes_match(void) {
    test_begin("shapes_match_refuses_shape_fields");
    ModelConfig base;
    config_tiny(&base);
    base.mtp_depth = 1;
    MoeErr err;
    CHECK(ckpt_shapes_match(&base, &base, &err) == 1, "identical configs refused: %s", err.msg);
#define SHAPE_CASE(field, value)                                                                  \
    do {                                                                                          \
        ModelConfig c = base;                                                                     \
        c.field = (value);                                                                        \
        err.msg[0] = '\0';                                                                        \
        CHECK(ckpt_shapes_match(&base, &c, &err) == 0, #field " change accepted");                \
        CHECK(strstr(err.msg, #field) != NULL, #field ": message does not name it: %s", err.msg); \
    } while (0)
    SHAPE_CASE(vocab_size, 50);
    SHAPE_CASE(dim, 32);
    SHAPE_CASE(n_layers, 4);
    SHAPE_CASE(n_dense_layers, 0);
    SHAPE_CASE(n_heads, 4);
    SHAPE_CASE(q_lora_rank, 0);
    SHAPE_CASE(kv_lora_rank, 8);
    SHAPE_CASE(qk_nope_dim, 8);
    SHAPE_CASE(qk_rope_dim, 8);
    SHAPE_CASE(v_head_dim, 6);
    SHAPE_CASE(inter_dim, 32);
    SHAPE_CASE(moe_inter_dim, 9);
    SHAPE_CASE(n_routed_experts, 8);
    SHAPE_CASE(n_shared_experts, 2);
    SHAPE_CASE(mtp_depth, 0);
    SHAPE_CASE(max_seq_len, 32);
#undef SHAPE_CASE
    test_end();

    test_begin("shapes_match_accepts_routing_changes");
#define ROUTE_CASE(field, value)                                                               \
    do {                                                                                       \
        ModelConfig c = base;                                                                  \
        c.field = (value);                                                                     \
        CHECK(ckpt_shapes_match(&base, &c, &err) == 1, #field " change refused: %s", err.msg); \
    } while (0)
    ROUTE_CASE(top_k, 4);
    ROUTE_CASE(balance, BALANCE_SEQAUX);
    ROUTE_CASE(balance, BALANCE_NONE);
    ROUTE_CASE(bias_update_speed, 0.01f);
    ROUTE_CASE(aux_alpha, 0.01f);
    ROUTE_CASE(capacity_factor, 1.5f);
    ROUTE_CASE(mtp_lambda, 0.1f);
    ROUTE_CASE(score_func, SCORE_SOFTMAX);
    ROUTE_CASE(route_scale, 2.5f);
    ROUTE_CASE(n_expert_groups, 1);
    ROUTE_CASE(n_limited_groups, 1);
#undef ROUTE_CASE
    test_end();
}

static int count_step_files(const char *dir) {
    int n = 0;
    for (int s = 0; s <= 20; s++) {
        char p[300];
        snprintf(p, sizeof p, "%s/step_%08d.ckpt", dir, s);
        n += file_exists(p);
    }
    return n;
}

static int read_text(const char *path, char *out, size_t n) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return -1;
    size_t got = fread(out, 1, n - 1, fp);
    out[got] = '\0';
    fclose(fp);
    return 0;
}

static void test_run_dir(void) {
    ModelConfig cfg;
    config_tiny(&cfg);
    Model a;
    if (make_model(&a, &cfg, 31) != 0) return;
    char dir[256], p[320], txt[256], out[512];
    in_dir(dir, sizeof dir, "runs/r1");
    MoeErr err;
    CkptTrainState st;

    test_begin("retention_keeps_k_newest_plus_best");
    for (int s = 1; s <= 5; s++) {
        make_state(&st, s);
        a.params[0] = (float)s;  // tell the files apart
        CHECK(ckpt_save_in_dir(dir, &a, &st, 2, s == 2, &err) == 0, "save step %d: %s", s, err.msg);
    }
    CHECK(count_step_files(dir) == 2, "%d step files kept, expected 2", count_step_files(dir));
    snprintf(p, sizeof p, "%s/step_00000004.ckpt", dir);
    CHECK(file_exists(p), "step 4 deleted");
    snprintf(p, sizeof p, "%s/step_00000005.ckpt", dir);
    CHECK(file_exists(p), "step 5 deleted");
    snprintf(p, sizeof p, "%s/best.ckpt", dir);
    CkptTrainState bs;
    CHECK(ckpt_read_header(p, NULL, &bs, &err) == 0 && bs.step == 2, "best.ckpt is not step 2: %s", err.msg);
    CHECK(ckpt_verify(p, &err) == 0, "best.ckpt: %s", err.msg);
    snprintf(p, sizeof p, "%s/latest", dir);
    CHECK(read_text(p, txt, sizeof txt) == 0 && strcmp(txt, "step_00000005.ckpt\n") == 0, "latest holds '%s'", txt);
    test_end();

    test_begin("resolve_dir_file_and_run_name");
    CHECK(ckpt_resolve(dir, out, sizeof out, &err) == 0, "resolve dir: %s", err.msg);
    CHECK(strstr(out, "step_00000005.ckpt") != NULL, "resolved to %s", out);
    snprintf(p, sizeof p, "%s/step_00000004.ckpt", dir);
    CHECK(ckpt_resolve(p, out, sizeof out, &err) == 0 && strcmp(out, p) == 0, "resolve file: %s", err.msg);
    {
        // a run name is looked up under checkpoints/ of the working directory
        char cwd[1024], cdir[300];
        CHECK(getcwd(cwd, sizeof cwd) != NULL, "getcwd");
        snprintf(cdir, sizeof cdir, "%s/checkpoints/myrun", g_dir);
        make_state(&st, 9);
        CHECK(ckpt_save_in_dir(cdir, &a, &st, 3, 0, &err) == 0, "save: %s", err.msg);
        CHECK(chdir(g_dir) == 0, "chdir");
        CHECK(ckpt_resolve("myrun", out, sizeof out, &err) == 0, "resolve run name: %s", err.msg);
        CHECK(strcmp(out, "checkpoints/myrun/step_00000009.ckpt") == 0, "resolved to %s", out);
        CHECK(ckpt_resolve("nosuchrun", out, sizeof out, &err) != 0 && strstr(err.msg, "nosuchrun"),
              "unknown run name: %s", err.msg);
        CHECK(chdir(cwd) == 0, "chdir back");
        char small[8];
        CHECK(ckpt_resolve(dir, small, sizeof small, &err) != 0, "a too small output buffer was accepted");
    }
    test_end();

    test_begin("resolve_falls_back_past_corrupt_newest");
    {
        char newest[320], older[320], warn[2048];
        snprintf(newest, sizeof newest, "%s/step_00000005.ckpt", dir);
        snprintf(older, sizeof older, "%s/step_00000004.ckpt", dir);
        uint8_t *b = NULL;
        size_t n = 0;
        CHECK(read_all(newest, &b, &n) == 0, "read");
        uint8_t *orig = (uint8_t *)malloc(n);
        if (b) memcpy(orig, b, n);
        if (b) {
            b[n / 2] ^= 0xFF;
            write_bytes(newest, b, n);
        }
        Capture cap;
        capture_begin(&cap);
        int rc = ckpt_resolve(dir, out, sizeof out, &err);
        capture_end(&cap, warn, sizeof warn);
        CHECK(rc == 0, "resolve: %s", err.msg);
        CHECK(strcmp(out, older) == 0, "resolved to %s, expected %s", out, older);
        CHECK(strstr(warn, "warning") && strstr(warn, newest), "no warning naming the bad file: '%s'", warn);
        // the fallback loads
        Model l;
        if (make_model(&l, &cfg, 77) == 0) {
            CkptTrainState ls;
            CHECK(ckpt_load(out, &l, &ls, 1, &err) == 0 && ls.step == 4 && l.params[0] == 4.0f, "load fallback: %s",
                  err.msg);
            model_free(&l);
        }
        // truncated newest: same
        if (b) write_bytes(newest, b, n / 3);
        capture_begin(&cap);
        rc = ckpt_resolve(dir, out, sizeof out, &err);
        capture_end(&cap, warn, sizeof warn);
        CHECK(rc == 0 && strcmp(out, older) == 0, "truncated newest: %s / %s", out, err.msg);
        CHECK(strstr(warn, newest) && strstr(warn, "truncated"), "warning: '%s'", warn);
        // both step files corrupt: best.ckpt (step 2) is the last resort
        write_bytes(older, "MOECKPT", 7);
        capture_begin(&cap);
        rc = ckpt_resolve(dir, out, sizeof out, &err);
        capture_end(&cap, warn, sizeof warn);
        CHECK(rc == 0 && strstr(out, "best.ckpt"), "best.ckpt as last resort: %s / %s", out, err.msg);
        CHECK(strstr(warn, older) && strstr(warn, "best.ckpt"), "warnings: '%s'", warn);
        // everything corrupt: an error, not a crash
        char best[320], best_saved[320];
        snprintf(best, sizeof best, "%s/best.ckpt", dir);
        snprintf(best_saved, sizeof best_saved, "%s/best.saved", dir);
        CHECK(rename(best, best_saved) == 0, "rename best");
        write_bytes(best, "MOECKPT\0\1\0\0\0", 12);
        capture_begin(&cap);
        rc = ckpt_resolve(dir, out, sizeof out, &err);
        capture_end(&cap, warn, sizeof warn);
        CHECK(rc != 0 && strstr(err.msg, "no valid checkpoint") && strstr(err.msg, dir), "all corrupt: %s", err.msg);
        CHECK(rename(best_saved, best) == 0, "rename best back");
        // odd names in the directory are ignored or refused, never a crash: too few digits, a
        // digit overflow, another suffix, a directory that looks like a checkpoint
        const char *odd[] = {"step_1.ckpt", "step_99999999999999999999999.ckpt", "step_00000006.ckpt.bak"};
        for (int i = 0; i < 3; i++) {
            snprintf(p, sizeof p, "%s/%s", dir, odd[i]);
            write_bytes(p, "x", 1);
        }
        snprintf(p, sizeof p, "%s/step_00000003.ckpt", dir);
        CHECK(mkdir(p, 0755) == 0, "mkdir");
        capture_begin(&cap);
        rc = ckpt_resolve(dir, out, sizeof out, &err);
        capture_end(&cap, warn, sizeof warn);
        CHECK(rc == 0 && strstr(out, "best.ckpt"), "odd names: %s / %s", out, err.msg);
        CHECK(strstr(warn, "step_00000003.ckpt") && strstr(warn, "not a regular file"), "warnings: '%s'", warn);
        rmdir(p);
        for (int i = 0; i < 3; i++) {
            snprintf(p, sizeof p, "%s/%s", dir, odd[i]);
            unlink(p);
        }
        // an explicit corrupt file is an error (no fallback)
        CHECK(ckpt_resolve(newest, out, sizeof out, &err) != 0 && strstr(err.msg, newest), "corrupt file: %s", err.msg);
        // repair the newest, remove `latest`: the newest valid step file is used
        write_bytes(newest, orig, n);
        snprintf(p, sizeof p, "%s/latest", dir);
        unlink(p);
        capture_begin(&cap);
        rc = ckpt_resolve(dir, out, sizeof out, &err);
        capture_end(&cap, warn, sizeof warn);
        CHECK(rc == 0 && strcmp(out, newest) == 0, "no latest: %s / %s", out, err.msg);
        // `latest` naming a missing file
        write_bytes(p, "step_00000019.ckpt\n", 19);
        capture_begin(&cap);
        rc = ckpt_resolve(dir, out, sizeof out, &err);
        capture_end(&cap, warn, sizeof warn);
        CHECK(rc == 0 && strcmp(out, newest) == 0, "latest names a missing file: %s / %s", out, err.msg);
        CHECK(strstr(warn, "step_00000019.ckpt") != NULL, "warning: '%s'", warn);
        // `latest` with garbage / a path outside the directory
        write_bytes(p, "../../etc/passwd\n", 17);
        capture_begin(&cap);
        rc = ckpt_resolve(dir, out, sizeof out, &err);
        capture_end(&cap, warn, sizeof warn);
        CHECK(rc == 0 && strcmp(out, newest) == 0, "latest with a path: %s / %s", out, err.msg);
        free(b);
        free(orig);
    }
    test_end();

    test_begin("resume_older_then_save_keeps_newer_branch");
    {
        // after resuming from step 5 with keep = 2, saving step 3 (an older branch) must not delete
        // what it just wrote; `latest` follows the file written last
        make_state(&st, 3);
        CHECK(ckpt_save_in_dir(dir, &a, &st, 1, 0, &err) == 0, "save: %s", err.msg);
        snprintf(p, sizeof p, "%s/step_00000003.ckpt", dir);
        CHECK(file_exists(p), "step 3 was deleted right after being written");
        snprintf(p, sizeof p, "%s/step_00000005.ckpt", dir);
        CHECK(file_exists(p), "a newer file of another branch was deleted");
        CHECK(ckpt_resolve(dir, out, sizeof out, &err) == 0 && strstr(out, "step_00000003.ckpt"), "latest: %s", out);
    }
    test_end();

    test_begin("stale_tmp_removed_and_empty_dir");
    {
        snprintf(p, sizeof p, "%s/step_00000011.ckpt.tmp", dir);
        write_bytes(p, "partial", 7);
        make_state(&st, 12);
        CHECK(ckpt_save_in_dir(dir, &a, &st, 0, 0, &err) == 0, "save: %s", err.msg);
        CHECK(!file_exists(p), "stale tmp file left behind");
        char empty[300];
        in_dir(empty, sizeof empty, "emptyrun");
        make_dirs(empty, &err);
        CHECK(ckpt_resolve(empty, out, sizeof out, &err) != 0 && strstr(err.msg, "holds no checkpoint"),
              "empty dir: %s", err.msg);
        rmdir(empty);
        CHECK(ckpt_resolve("", out, sizeof out, &err) != 0, "empty argument accepted");
    }
    test_end();
    model_free(&a);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s/runs' '%s/checkpoints'", g_dir, g_dir);
    if (system(cmd) != 0) printf("  (cleanup failed)\n");
}

// ---------------------------------------------------------------------------------------
// helper modes for tests/test_ckpt_kill.sh

static int helper(const char *mode, const char *dir, const char *step_s) {
    char *end = NULL;
    long step = strtol(step_s, &end, 10);
    if (*end || step < 0) {
        fprintf(stderr, "error: bad step '%s'\n", step_s);
        return 2;
    }
    ModelConfig cfg;
    config_tiny(&cfg);
    Model m;
    if (make_model(&m, &cfg, (uint64_t)step) != 0) return 2;
    CkptTrainState st;
    make_state(&st, step);
    MoeErr err;
    int rc = 0;
    if (strcmp(mode, "--save-into") == 0) {
        if (ckpt_save_in_dir(dir, &m, &st, 3, 0, &err) != 0) {
            fprintf(stderr, "error: %s\n", err.msg);
            rc = 1;
        }
    } else {
        char path[1024];
        Model l;
        CkptTrainState ls;
        if (ckpt_resolve(dir, path, sizeof path, &err) != 0 || make_model(&l, &cfg, 999) != 0 ||
            ckpt_load(path, &l, &ls, 1, &err) != 0) {
            fprintf(stderr, "error: %s\n", err.msg);
            rc = 1;
        } else {
            if (!models_equal(&m, &l, 1) || memcmp(&st, &ls, sizeof st) != 0) {
                fprintf(stderr, "error: '%s' does not hold the expected step %ld checkpoint\n", path, step);
                rc = 1;
            } else {
                printf("ok %s\n", path);
            }
            model_free(&l);
        }
    }
    model_free(&m);
    return rc;
}

int main(int argc, char **argv) {
    if (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        printf(
            "usage: test_checkpoint                      run the checkpoint tests\n"
            "       test_checkpoint --save-into DIR STEP save a deterministic tiny checkpoint into DIR\n"
            "       test_checkpoint --check DIR STEP     resolve DIR, load, compare with that checkpoint\n");
        return 0;
    }
    if (argc == 4 && (!strcmp(argv[1], "--save-into") || !strcmp(argv[1], "--check")))
        return helper(argv[1], argv[2], argv[3]);
    if (argc != 1) {
        fprintf(stderr, "error: unknown arguments (see -h)\n");
        return 2;
    }
    snprintf(g_dir, sizeof g_dir, "/tmp/moe_ckpt_XXXXXX");
    if (!mkdtemp(g_dir)) {
        printf("FAIL setup: mkdtemp\n");
        return 1;
    }
    ModelConfig cfg;
    config_tiny(&cfg);
    test_roundtrip("tiny", &cfg);
    cfg.mtp_depth = 1;
    cfg.balance = BALANCE_BIAS_SEQAUX;
    test_roundtrip("tiny_mtp", &cfg);
    config_tiny(&cfg);
    cfg.q_lora_rank = 0;
    cfg.n_shared_experts = 0;
    cfg.n_expert_groups = 1;
    cfg.n_limited_groups = 1;
    cfg.score_func = SCORE_SOFTMAX;
    cfg.balance = BALANCE_AUX;
    test_roundtrip("tiny_plain_q_softmax", &cfg);
    config_tiny(&cfg);
    cfg.n_dense_layers = cfg.n_layers;  // no MoE layer at all
    test_roundtrip("tiny_dense_only", &cfg);
    test_layout_known_values();
    test_load_without_optimizer();
    test_corrupt();
    test_shapes_match();
    test_run_dir();
    rmdir(g_dir);
    return test_summary();
}
