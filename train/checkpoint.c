// Checkpoint files (.ckpt) and run directories. See checkpoint.h for the API.
//
// File layout, format version 1 (all integers little-endian, floats IEEE-754 little-endian):
//
//   offset  size  field
//   0       8     magic "MOECKPT\0"
//   8       4     u32 format version (1)
//   12      4     u32 header size (CKPT_HEADER_SIZE = 1024)
//   16      8     u64 file size in bytes (header + sections + 4-byte trailing CRC)
//   24      8     u64 num_params (floats in each of params, m, v)
//   32      4     u32 n_blocks (n_layers + mtp_depth)
//   36      4     u32 bias columns E (max(n_routed_experts, 1))
//   40      32    u64 offsets of the sections params, m, v, bias
//   72      4     u32 number of config fields that follow (28)
//   76      4     u32 flags (0)
//   80      112   ModelConfig: 28 x (i32 | f32) in the order of CKPT_CONFIG_FIELDS below
//   192     328   CkptTrainState, field by field (see put_state), run name 64 bytes, reserved 128
//   520     500   zero
//   1020    4     u32 CRC-32C of bytes [0, 1020) (the header alone, so that a header can be
//                 trusted without reading the payload)
//   1024          params (num_params fp32), m (num_params fp32), v (num_params fp32),
//                 bias (n_blocks x E fp32)
//   end-4   4     u32 CRC-32C of every byte before it (header + payload)
//
// Writing streams the sections into PATH.tmp with the CRC computed on the fly, fsyncs, renames
// over PATH and fsyncs the directory: a crash never leaves a half-written file under PATH.
// Test hook: MOE_CKPT_PAUSE_MS=N makes ckpt_save sleep N ms halfway through the tmp file
// (after announcing it on stderr), so a test can kill -9 the writer mid-write.
#define _POSIX_C_SOURCE 200809L
#include "checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoint.c writes float arrays in native order and assumes a little-endian machine"
#endif

#define CKPT_HEADER_SIZE 1024
#define CKPT_HEADER_CRC_OFF (CKPT_HEADER_SIZE - 4)
#define CKPT_CONFIG_OFF 80
#define CKPT_STATE_OFF 192
#define CKPT_N_CONFIG_FIELDS 28
#define CKPT_CHUNK ((size_t)1 << 20)

_Static_assert(sizeof(CkptTrainState) == 328, "CkptTrainState changed: update the checkpoint format (version)");
_Static_assert(sizeof(DataLoaderState) == 32, "DataLoaderState changed: update the checkpoint format (version)");

// clang-format off
// Every ModelConfig field, in file order. i = int32, f = float32.
#define CKPT_CONFIG_FIELDS(X)                                                                      \
    X(i, vocab_size) X(i, dim) X(i, n_layers) X(i, n_dense_layers) X(i, n_heads) X(i, q_lora_rank) \
    X(i, kv_lora_rank) X(i, qk_nope_dim) X(i, qk_rope_dim) X(i, v_head_dim) X(i, inter_dim)        \
    X(i, moe_inter_dim) X(i, n_routed_experts) X(i, n_shared_experts) X(i, mtp_depth)             \
    X(i, max_seq_len) X(i, top_k) X(i, n_expert_groups) X(i, n_limited_groups) X(f, route_scale)  \
    X(i, score_func) X(i, balance) X(f, bias_update_speed) X(f, aux_alpha) X(f, capacity_factor)  \
    X(f, mtp_lambda) X(f, rope_theta) X(f, norm_eps)

// The fields that decide a tensor's shape (everything else is a routing / training option).
#define CKPT_SHAPE_FIELDS(X)                                                                        \
    X(vocab_size) X(dim) X(n_layers) X(n_dense_layers) X(n_heads) X(q_lora_rank) X(kv_lora_rank)   \
    X(qk_nope_dim) X(qk_rope_dim) X(v_head_dim) X(inter_dim) X(moe_inter_dim) X(n_routed_experts)  \
    X(n_shared_experts) X(mtp_depth) X(max_seq_len)
// clang-format on

// ---------------------------------------------------------------------------------------
// Little-endian field encoding into a byte buffer

typedef struct {
    uint8_t *p;
    size_t off;
} Cursor;

static void put_u32(Cursor *c, uint32_t v) {
    for (int i = 0; i < 4; i++) c->p[c->off++] = (uint8_t)(v >> (8 * i));
}
static void put_u64(Cursor *c, uint64_t v) {
    for (int i = 0; i < 8; i++) c->p[c->off++] = (uint8_t)(v >> (8 * i));
}
static void put_i(Cursor *c, int32_t v) { put_u32(c, (uint32_t)v); }
static void put_i64(Cursor *c, int64_t v) { put_u64(c, (uint64_t)v); }
static void put_f(Cursor *c, float v) {
    uint32_t u;
    memcpy(&u, &v, 4);
    put_u32(c, u);
}
static void put_bytes(Cursor *c, const void *src, size_t n) {
    memcpy(c->p + c->off, src, n);
    c->off += n;
}
static uint32_t get_u32(Cursor *c) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)c->p[c->off++] << (8 * i);
    return v;
}
static uint64_t get_u64(Cursor *c) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)c->p[c->off++] << (8 * i);
    return v;
}
static int32_t get_i(Cursor *c) { return (int32_t)get_u32(c); }
static int64_t get_i64(Cursor *c) { return (int64_t)get_u64(c); }
static float get_f(Cursor *c) {
    uint32_t u = get_u32(c);
    float v;
    memcpy(&v, &u, 4);
    return v;
}
static void get_bytes(Cursor *c, void *dst, size_t n) {
    memcpy(dst, c->p + c->off, n);
    c->off += n;
}

static void put_state(Cursor *c, const CkptTrainState *s) {
    put_i64(c, s->step);
    put_i64(c, s->tokens_seen);
    put_u64(c, s->rng_state);
    put_f(c, s->best_val_loss);
    put_f(c, s->loss_scale);
    put_i(c, s->good_steps);
    put_i(c, s->precision);
    put_i(c, s->bad_steps);
    put_i(c, s->reserved0);
    put_u64(c, s->train_loader.seed);
    put_i64(c, s->train_loader.epoch);
    put_i64(c, s->train_loader.position);
    put_i(c, s->train_loader.shuffle);
    put_i(c, s->train_loader.reserved);
    put_i(c, s->batch_size);
    put_i(c, s->seq_len);
    put_i(c, s->grad_accum);
    put_i(c, s->warmup_steps);
    put_i(c, s->max_steps);
    put_i(c, s->world);
    put_f(c, s->lr);
    put_f(c, s->min_lr);
    put_f(c, s->weight_decay);
    put_f(c, s->grad_clip);
    put_f(c, s->beta1);
    put_f(c, s->beta2);
    put_u64(c, s->seed);
    put_bytes(c, s->run_name, sizeof(s->run_name));
    put_bytes(c, s->reserved, sizeof(s->reserved));
}

static void get_state(Cursor *c, CkptTrainState *s) {
    memset(s, 0, sizeof(*s));
    s->step = get_i64(c);
    s->tokens_seen = get_i64(c);
    s->rng_state = get_u64(c);
    s->best_val_loss = get_f(c);
    s->loss_scale = get_f(c);
    s->good_steps = get_i(c);
    s->precision = get_i(c);
    s->bad_steps = get_i(c);
    s->reserved0 = get_i(c);
    s->train_loader.seed = get_u64(c);
    s->train_loader.epoch = get_i64(c);
    s->train_loader.position = get_i64(c);
    s->train_loader.shuffle = get_i(c);
    s->train_loader.reserved = get_i(c);
    s->batch_size = get_i(c);
    s->seq_len = get_i(c);
    s->grad_accum = get_i(c);
    s->warmup_steps = get_i(c);
    s->max_steps = get_i(c);
    s->world = get_i(c);
    s->lr = get_f(c);
    s->min_lr = get_f(c);
    s->weight_decay = get_f(c);
    s->grad_clip = get_f(c);
    s->beta1 = get_f(c);
    s->beta2 = get_f(c);
    s->seed = get_u64(c);
    get_bytes(c, s->run_name, sizeof(s->run_name));
    get_bytes(c, s->reserved, sizeof(s->reserved));
}

// Plausibility of a train state (the writer refuses what the reader would refuse).
static int state_validate(const CkptTrainState *s, MoeErr *err) {
    if (s->step < 0) return moe_err_set(err, "step %lld is negative", (long long)s->step);
    if (s->tokens_seen < 0) return moe_err_set(err, "tokens_seen %lld is negative", (long long)s->tokens_seen);
    if (s->precision < 0 || s->precision > 2)
        return moe_err_set(err, "precision %d is not 0 (fp32), 1 (bf16) or 2 (fp16)", s->precision);
    if (!(s->loss_scale > 0.0f) || !isfinite(s->loss_scale))
        return moe_err_set(err, "loss_scale %g must be finite and > 0 (1 for fp32)", s->loss_scale);
    if (s->good_steps < 0 || s->bad_steps < 0)
        return moe_err_set(err, "good_steps %d / bad_steps %d must be >= 0", s->good_steps, s->bad_steps);
    if (s->train_loader.epoch < 0 || s->train_loader.position < 0)
        return moe_err_set(err, "dataloader epoch %lld / position %lld must be >= 0", (long long)s->train_loader.epoch,
                           (long long)s->train_loader.position);
    if (s->train_loader.shuffle != 0 && s->train_loader.shuffle != 1)
        return moe_err_set(err, "dataloader shuffle flag %d must be 0 or 1", s->train_loader.shuffle);
    if (s->batch_size < 0 || s->seq_len < 0 || s->grad_accum < 0 || s->warmup_steps < 0 || s->max_steps < 0)
        return moe_err_set(err, "batch_size/seq_len/grad_accum/warmup_steps/max_steps must be >= 0");
    if (s->world < 0 || s->world > 64) return moe_err_set(err, "world %d (GPUs) must be between 0 and 64", s->world);
    if (memchr(s->run_name, '\0', sizeof(s->run_name)) == NULL)
        return moe_err_set(err, "run_name is not NUL-terminated within %zu bytes", sizeof(s->run_name));
    return 0;
}

// ---------------------------------------------------------------------------------------
// Low-level I/O

static int write_all(int fd, const void *data, size_t n) {
    const char *p = (const char *)data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

// Read exactly n bytes at offset off. Returns 0, or -1 with errno (0 when the file was short).
static int pread_all(int fd, void *data, size_t n, uint64_t off) {
    char *p = (char *)data;
    while (n > 0) {
        ssize_t r = pread(fd, p, n, (off_t)off);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) {
            errno = 0;
            return -1;
        }
        p += r;
        n -= (size_t)r;
        off += (uint64_t)r;
    }
    return 0;
}

static void fsync_parent_dir(const char *path) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    int fd = open(dir, O_RDONLY);
    if (fd < 0) return;
    (void)fsync(fd);
    close(fd);
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static long pause_ms_from_env(void) {
    const char *s = getenv("MOE_CKPT_PAUSE_MS");
    if (!s || !*s) return 0;
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (*end != '\0' || v < 0) return 0;
    return v > 600000 ? 600000 : v;
}

// ---------------------------------------------------------------------------------------
// Sizes

static size_t bias_cols(const ModelConfig *c) { return (size_t)(c->n_routed_experts > 0 ? c->n_routed_experts : 1); }

typedef struct {
    ModelConfig cfg;
    CkptTrainState st;
    uint64_t file_size, num_params;
    uint32_t n_blocks, E;
    uint64_t off_params, off_m, off_v, off_bias;
} CkptInfo;

static void layout_sizes(const ModelConfig *c, uint64_t num_params, CkptInfo *info) {
    info->num_params = num_params;
    info->n_blocks = (uint32_t)(c->n_layers + c->mtp_depth);
    info->E = (uint32_t)bias_cols(c);
    uint64_t pb = num_params * sizeof(float);
    info->off_params = CKPT_HEADER_SIZE;
    info->off_m = info->off_params + pb;
    info->off_v = info->off_m + pb;
    info->off_bias = info->off_v + pb;
    info->file_size = info->off_bias + (uint64_t)info->n_blocks * info->E * sizeof(float) + 4;
}

// Every dimension model_layout computes in int must fit in an int (config_validate bounds the
// fields but not all of their products; a corrupt header must not overflow model_layout).
static int dims_fit_int(const ModelConfig *c, MoeErr *err) {
    const int64_t H = c->n_heads, dqk = (int64_t)c->qk_nope_dim + c->qk_rope_dim;
    const struct {
        const char *what;
        int64_t v;
    } d[] = {
        {"n_heads * (qk_nope_dim + qk_rope_dim)", H * dqk},
        {"kv_lora_rank + qk_rope_dim", (int64_t)c->kv_lora_rank + c->qk_rope_dim},
        {"n_heads * (qk_nope_dim + v_head_dim)", H * ((int64_t)c->qk_nope_dim + c->v_head_dim)},
        {"n_heads * v_head_dim", H * c->v_head_dim},
        {"n_shared_experts * moe_inter_dim", (int64_t)c->n_shared_experts * c->moe_inter_dim},
        {"2 * dim", 2 * (int64_t)c->dim},
        {"n_layers + mtp_depth", (int64_t)c->n_layers + c->mtp_depth},
    };
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++)
        if (d[i].v > INT_MAX) return moe_err_set(err, "config: %s = %lld is too large", d[i].what, (long long)d[i].v);
    return 0;
}

// ---------------------------------------------------------------------------------------
// Saving

static void encode_header(uint8_t *h, const CkptInfo *info, const ModelConfig *cfg, const CkptTrainState *st) {
    memset(h, 0, CKPT_HEADER_SIZE);
    Cursor c = {h, 0};
    put_bytes(&c, CKPT_MAGIC, 8);  // 7 characters + NUL
    put_u32(&c, CKPT_VERSION);
    put_u32(&c, CKPT_HEADER_SIZE);
    put_u64(&c, info->file_size);
    put_u64(&c, info->num_params);
    put_u32(&c, info->n_blocks);
    put_u32(&c, info->E);
    put_u64(&c, info->off_params);
    put_u64(&c, info->off_m);
    put_u64(&c, info->off_v);
    put_u64(&c, info->off_bias);
    put_u32(&c, CKPT_N_CONFIG_FIELDS);
    put_u32(&c, 0);  // flags
#define PUT_FIELD(t, f) put_##t(&c, cfg->f);
    CKPT_CONFIG_FIELDS(PUT_FIELD)
#undef PUT_FIELD
    c.off = CKPT_STATE_OFF;
    put_state(&c, st);
    uint32_t hcrc = crc32c(0, h, CKPT_HEADER_CRC_OFF);
    c.off = CKPT_HEADER_CRC_OFF;
    put_u32(&c, hcrc);
}

typedef struct {
    int fd;
    uint32_t crc;
    uint64_t written, total;
    long pause_ms;
    int paused;
    const char *tmp;
} Writer;

static int writer_put(Writer *w, const void *data, size_t n, MoeErr *err) {
    const char *p = (const char *)data;
    while (n > 0) {
        size_t k = n < CKPT_CHUNK ? n : CKPT_CHUNK;
        w->crc = crc32c(w->crc, p, k);
        if (write_all(w->fd, p, k) != 0)
            return moe_err_set(err, "cannot write checkpoint '%s': %s", w->tmp, strerror(errno));
        w->written += k;
        p += k;
        n -= k;
        if (w->pause_ms > 0 && !w->paused && w->written * 2 >= w->total) {
            w->paused = 1;
            fprintf(stderr, "ckpt: pausing %ld ms mid-write of '%s' (MOE_CKPT_PAUSE_MS)\n", w->pause_ms, w->tmp);
            fflush(stderr);
            sleep_ms(w->pause_ms);
        }
    }
    return 0;
}

int ckpt_save(const char *path, const Model *m, const CkptTrainState *st, MoeErr *err) {
    if (!path || !*path) return moe_err_set(err, "checkpoint: empty output path");
    MoeErr e2;
    if (config_validate(&m->cfg, &e2) != 0 || dims_fit_int(&m->cfg, &e2) != 0)
        return moe_err_set(err, "cannot save checkpoint '%s': %s", path, e2.msg);
    if (state_validate(st, &e2) != 0)
        return moe_err_set(err, "cannot save checkpoint '%s': train state: %s", path, e2.msg);
    if (model_layout(&m->cfg, NULL, NULL) != m->num_params)
        return moe_err_set(err, "cannot save checkpoint '%s': the model's num_params %zu does not match its config",
                           path, m->num_params);
    CkptInfo info;
    layout_sizes(&m->cfg, m->num_params, &info);
    uint8_t *h = (uint8_t *)malloc(CKPT_HEADER_SIZE);
    if (!h) return moe_err_set(err, "out of memory saving checkpoint '%s'", path);
    encode_header(h, &info, &m->cfg, st);

    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        free(h);
        return moe_err_set(err, "checkpoint path too long: '%s'", path);
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        int e = errno;
        free(h);
        return moe_err_set(err, "cannot create checkpoint '%s': %s", tmp, strerror(e));
    }
    Writer w = {fd, 0, 0, info.file_size, pause_ms_from_env(), 0, tmp};
    size_t pb = m->num_params * sizeof(float);
    size_t bb = (size_t)info.n_blocks * info.E * sizeof(float);
    int rc = writer_put(&w, h, CKPT_HEADER_SIZE, err);
    free(h);
    if (rc == 0) rc = writer_put(&w, m->params, pb, err);
    if (rc == 0) rc = writer_put(&w, m->m, pb, err);
    if (rc == 0) rc = writer_put(&w, m->v, pb, err);
    if (rc == 0) rc = writer_put(&w, m->bias, bb, err);
    if (rc == 0) {
        uint8_t t[4];
        Cursor c = {t, 0};
        put_u32(&c, w.crc);
        if (write_all(fd, t, 4) != 0) rc = moe_err_set(err, "cannot write checkpoint '%s': %s", tmp, strerror(errno));
    }
    if (rc == 0 && fsync(fd) != 0) rc = moe_err_set(err, "cannot fsync checkpoint '%s': %s", tmp, strerror(errno));
    if (close(fd) != 0 && rc == 0) rc = moe_err_set(err, "cannot close checkpoint '%s': %s", tmp, strerror(errno));
    if (rc == 0 && rename(tmp, path) != 0)
        rc = moe_err_set(err, "cannot rename '%s' to '%s': %s", tmp, path, strerror(errno));
    if (rc != 0) {
        unlink(tmp);
        return -1;
    }
    fsync_parent_dir(path);
    return 0;
}

// ---------------------------------------------------------------------------------------
// Reading

// Open path and validate everything but the trailing checksum. On success *fd_out is open.
static int ckpt_open(const char *path, int *fd_out, CkptInfo *info, MoeErr *err) {
    *fd_out = -1;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return moe_err_set(err, "cannot open checkpoint '%s': %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return moe_err_set(err, "checkpoint '%s' is not a regular file", path);
    }
    uint64_t fsize = (uint64_t)sb.st_size;
    uint8_t h[CKPT_HEADER_SIZE];
    memset(h, 0, sizeof h);
    size_t have = fsize < CKPT_HEADER_SIZE ? (size_t)fsize : CKPT_HEADER_SIZE;
    int rc = -1;
    if (pread_all(fd, h, have, 0) != 0) {
        moe_err_set(err, "cannot read checkpoint '%s': %s", path, errno ? strerror(errno) : "short read");
        goto fail;
    }
    if (fsize < 8) {
        moe_err_set(err, "checkpoint '%s' is truncated: %llu bytes, too short for the magic", path,
                    (unsigned long long)fsize);
        goto fail;
    }
    if (memcmp(h, CKPT_MAGIC, 8) != 0) {
        moe_err_set(err, "'%s' is not a moe.c checkpoint (bad magic; expected \"%s\")", path, CKPT_MAGIC);
        goto fail;
    }
    if (fsize < 16) {
        moe_err_set(err, "checkpoint '%s' is truncated inside the header (%llu bytes)", path,
                    (unsigned long long)fsize);
        goto fail;
    }
    Cursor c = {h, 8};
    uint32_t version = get_u32(&c);
    uint32_t hsize = get_u32(&c);
    if (version > CKPT_VERSION) {
        moe_err_set(err,
                    "checkpoint '%s' was written by a newer moe.c (format version %u; this build reads up to "
                    "version %d): update moe.c to read it",
                    path, version, CKPT_VERSION);
        goto fail;
    }
    if (version < 1) {
        moe_err_set(err, "checkpoint '%s' has an invalid format version %u", path, version);
        goto fail;
    }
    if (hsize != CKPT_HEADER_SIZE) {
        moe_err_set(err, "checkpoint '%s': header size %u, expected %d for version %u (corrupt header)", path, hsize,
                    CKPT_HEADER_SIZE, version);
        goto fail;
    }
    if (fsize < CKPT_HEADER_SIZE) {
        moe_err_set(err, "checkpoint '%s' is truncated inside the header (%llu bytes, the header alone is %d)", path,
                    (unsigned long long)fsize, CKPT_HEADER_SIZE);
        goto fail;
    }
    Cursor hc = {h, CKPT_HEADER_CRC_OFF};
    uint32_t stored_hcrc = get_u32(&hc);
    uint32_t hcrc = crc32c(0, h, CKPT_HEADER_CRC_OFF);
    if (hcrc != stored_hcrc) {
        moe_err_set(err,
                    "checkpoint '%s': header checksum mismatch (stored %08x, computed %08x): the header is corrupt",
                    path, stored_hcrc, hcrc);
        goto fail;
    }
    uint64_t file_size = get_u64(&c);
    uint64_t num_params = get_u64(&c);
    uint32_t n_blocks = get_u32(&c);
    uint32_t E = get_u32(&c);
    uint64_t offs[4];
    for (int i = 0; i < 4; i++) offs[i] = get_u64(&c);
    uint32_t n_fields = get_u32(&c);
    uint32_t flags = get_u32(&c);
    if (n_fields != CKPT_N_CONFIG_FIELDS || flags != 0) {
        moe_err_set(err, "checkpoint '%s': %u config fields / flags %u, expected %d / 0 (corrupt header)", path,
                    n_fields, flags, CKPT_N_CONFIG_FIELDS);
        goto fail;
    }
    ModelConfig *cfg = &info->cfg;
    memset(cfg, 0, sizeof(*cfg));
    c.off = CKPT_CONFIG_OFF;
#define GET_FIELD(t, f) cfg->f = get_##t(&c);
    CKPT_CONFIG_FIELDS(GET_FIELD)
#undef GET_FIELD
    MoeErr e;
    if (config_validate(cfg, &e) != 0 || dims_fit_int(cfg, &e) != 0) {
        moe_err_set(err, "checkpoint '%s' holds an invalid model config: %s", path, e.msg);
        goto fail;
    }
    c.off = CKPT_STATE_OFF;
    get_state(&c, &info->st);
    for (size_t i = c.off; i < CKPT_HEADER_CRC_OFF; i++) {
        if (h[i] != 0) {
            moe_err_set(err, "checkpoint '%s': reserved header byte %zu is not zero (written by an incompatible moe.c?)",
                        path, i);
            goto fail;
        }
    }
    if (state_validate(&info->st, &e) != 0) {
        moe_err_set(err, "checkpoint '%s' holds an invalid train state: %s", path, e.msg);
        goto fail;
    }
    // sizes implied by the config must agree with the stored ones and with the file length
    uint64_t np = model_layout(cfg, NULL, NULL);
    if (np > ((uint64_t)1 << 58)) {
        moe_err_set(err, "checkpoint '%s': its config implies an impossible %llu parameters (corrupt header)", path,
                    (unsigned long long)np);
        goto fail;
    }
    layout_sizes(cfg, np, info);
    if (num_params != info->num_params) {
        moe_err_set(err, "checkpoint '%s': num_params %llu does not match its config (%llu)", path,
                    (unsigned long long)num_params, (unsigned long long)info->num_params);
        goto fail;
    }
    if (n_blocks != info->n_blocks || E != info->E) {
        moe_err_set(err, "checkpoint '%s': bias shape %u x %u does not match its config (%u x %u)", path, n_blocks, E,
                    info->n_blocks, info->E);
        goto fail;
    }
    const uint64_t want[4] = {info->off_params, info->off_m, info->off_v, info->off_bias};
    static const char *const sec[4] = {"params", "m", "v", "bias"};
    for (int i = 0; i < 4; i++) {
        if (offs[i] != want[i]) {
            moe_err_set(err, "checkpoint '%s': section %s at offset %llu, expected %llu (corrupt header)", path, sec[i],
                        (unsigned long long)offs[i], (unsigned long long)want[i]);
            goto fail;
        }
    }
    if (file_size != info->file_size) {
        moe_err_set(err, "checkpoint '%s': header says %llu bytes but the config implies %llu (corrupt header)", path,
                    (unsigned long long)file_size, (unsigned long long)info->file_size);
        goto fail;
    }
    if (fsize != file_size) {
        const char *where = "the trailing checksum";
        for (int i = 3; i >= 0; i--)
            if (fsize < want[i] + (i < 3 ? num_params * sizeof(float) : (uint64_t)n_blocks * E * sizeof(float)))
                where = sec[i];
        if (fsize < file_size)
            moe_err_set(err, "checkpoint '%s' is truncated: %llu bytes of %llu (cut inside section %s)", path,
                        (unsigned long long)fsize, (unsigned long long)file_size, where);
        else
            moe_err_set(err, "checkpoint '%s' has %llu unexpected bytes after its end (%llu bytes expected)", path,
                        (unsigned long long)(fsize - file_size), (unsigned long long)file_size);
        goto fail;
    }
    *fd_out = fd;
    return 0;
fail:
    close(fd);
    return rc;
}

// CRC of the whole file (minus the trailer) against the trailer.
static int verify_fd(const char *path, int fd, const CkptInfo *info, MoeErr *err) {
    char *buf = (char *)malloc(CKPT_CHUNK);
    if (!buf) return moe_err_set(err, "out of memory verifying checkpoint '%s'", path);
    uint32_t crc = 0;
    uint64_t end = info->file_size - 4, off = 0;
    while (off < end) {
        size_t k = end - off < CKPT_CHUNK ? (size_t)(end - off) : CKPT_CHUNK;
        if (pread_all(fd, buf, k, off) != 0) {
            int e = errno;
            free(buf);
            return moe_err_set(err, "cannot read checkpoint '%s': %s", path,
                               e ? strerror(e) : "file shrank while reading");
        }
        crc = crc32c(crc, buf, k);
        off += k;
    }
    uint8_t t[4];
    int rd = pread_all(fd, t, 4, end);
    free(buf);
    if (rd != 0) return moe_err_set(err, "cannot read the checksum of checkpoint '%s'", path);
    Cursor c = {t, 0};
    uint32_t stored = get_u32(&c);
    if (stored != crc)
        return moe_err_set(err, "checkpoint '%s': checksum mismatch (stored %08x, computed %08x): the file is corrupt",
                           path, stored, crc);
    return 0;
}

int ckpt_read_header(const char *path, ModelConfig *cfg, CkptTrainState *st, MoeErr *err) {
    CkptInfo info;
    int fd;
    if (ckpt_open(path, &fd, &info, err) != 0) return -1;
    close(fd);
    if (cfg) *cfg = info.cfg;
    if (st) *st = info.st;
    return 0;
}

int ckpt_verify(const char *path, MoeErr *err) {
    CkptInfo info;
    int fd;
    if (ckpt_open(path, &fd, &info, err) != 0) return -1;
    int rc = verify_fd(path, fd, &info, err);
    close(fd);
    return rc;
}

int ckpt_load(const char *path, Model *m, CkptTrainState *st, int load_optimizer, MoeErr *err) {
    CkptInfo info;
    int fd;
    if (ckpt_open(path, &fd, &info, err) != 0) return -1;
    MoeErr e;
    int rc = 0;
    if (!ckpt_shapes_match(&info.cfg, &m->cfg, &e)) {
        rc = moe_err_set(err, "checkpoint '%s' does not fit this model: %s (checkpoint vs model)", path, e.msg);
    } else if (m->num_params != info.num_params || !m->params || !m->m || !m->v || !m->bias) {
        rc =
            moe_err_set(err, "checkpoint '%s' does not fit this model: %llu parameters vs %zu (model not initialised?)",
                        path, (unsigned long long)info.num_params, m->num_params);
    }
    // the whole file is checked before anything in the model is touched
    if (rc == 0) rc = verify_fd(path, fd, &info, err);
    size_t pb = m->num_params * sizeof(float);
    size_t bb = (size_t)info.n_blocks * info.E * sizeof(float);
    if (rc == 0 && (pread_all(fd, m->params, pb, info.off_params) != 0 ||
                    (load_optimizer && pread_all(fd, m->m, pb, info.off_m) != 0) ||
                    (load_optimizer && pread_all(fd, m->v, pb, info.off_v) != 0) ||
                    pread_all(fd, m->bias, bb, info.off_bias) != 0))
        rc = moe_err_set(err, "cannot read checkpoint '%s': %s", path, errno ? strerror(errno) : "short read");
    close(fd);
    if (rc == 0 && st) *st = info.st;
    return rc;
}

int ckpt_shapes_match(const ModelConfig *a, const ModelConfig *b, MoeErr *err) {
#define CMP_FIELD(f)                                                                                  \
    if (a->f != b->f) {                                                                               \
        moe_err_set(err, #f " differs (%d vs %d): changing it changes a tensor's shape", a->f, b->f); \
        return 0;                                                                                     \
    }
    CKPT_SHAPE_FIELDS(CMP_FIELD)
#undef CMP_FIELD
    return 1;
}

// ---------------------------------------------------------------------------------------
// Run directories

// "step_%08d.ckpt" (8 or more digits) -> step, else -1.
static int64_t parse_step_name(const char *name) {
    if (strncmp(name, "step_", 5) != 0) return -1;
    const char *p = name + 5;
    int64_t v = 0;
    int nd = 0;
    while (*p >= '0' && *p <= '9') {
        if (v > (INT64_MAX - 9) / 10) return -1;
        v = v * 10 + (*p - '0');
        p++;
        nd++;
    }
    if (nd < 8 || strcmp(p, ".ckpt") != 0) return -1;
    return v;
}

static int cmp_i64_desc(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x < y) - (x > y);
}

// Steps of the step_*.ckpt files in dir, newest first. Returns the count (or -1), *out malloc'd.
// With remove_tmp, stale step_*.ckpt.tmp files (left by a killed writer) are deleted.
static int list_steps(const char *dir, int64_t **out, int remove_tmp, MoeErr *err) {
    *out = NULL;
    DIR *d = opendir(dir);
    if (!d) return moe_err_set(err, "cannot read run directory '%s': %s", dir, strerror(errno));
    int n = 0, cap = 16;
    int64_t *steps = (int64_t *)malloc((size_t)cap * sizeof(int64_t));
    if (!steps) {
        closedir(d);
        return moe_err_set(err, "out of memory listing '%s'", dir);
    }
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (remove_tmp && strncmp(de->d_name, "step_", 5) == 0 && len > 9 &&
            strcmp(de->d_name + len - 9, ".ckpt.tmp") == 0) {
            char p[4096];
            if (snprintf(p, sizeof p, "%s/%s", dir, de->d_name) < (int)sizeof p) unlink(p);
            continue;
        }
        int64_t s = parse_step_name(de->d_name);
        if (s < 0) continue;
        if (n == cap) {
            cap *= 2;
            int64_t *ns = (int64_t *)realloc(steps, (size_t)cap * sizeof(int64_t));
            if (!ns) {
                free(steps);
                closedir(d);
                return moe_err_set(err, "out of memory listing '%s'", dir);
            }
            steps = ns;
        }
        steps[n++] = s;
    }
    closedir(d);
    qsort(steps, (size_t)n, sizeof(int64_t), cmp_i64_desc);
    *out = steps;
    return n;
}

static int step_path(char *out, size_t n, const char *dir, int64_t step) {
    return snprintf(out, n, "%s/step_%08lld.ckpt", dir, (long long)step) < (int)n ? 0 : -1;
}

int ckpt_save_in_dir(const char *dir, const Model *m, const CkptTrainState *st, int keep, int is_best, MoeErr *err) {
    if (!dir || !*dir) return moe_err_set(err, "checkpoint: empty run directory");
    if (st->step < 0) return moe_err_set(err, "checkpoint: step %lld is negative", (long long)st->step);
    if (make_dirs(dir, err) != 0) return -1;
    char path[4096], name[64], other[4096], tmp[4096];
    snprintf(name, sizeof name, "step_%08lld.ckpt", (long long)st->step);
    if (step_path(path, sizeof path, dir, st->step) != 0 ||
        snprintf(other, sizeof other, "%s/best.ckpt", dir) >= (int)sizeof other ||
        snprintf(tmp, sizeof tmp, "%s/best.ckpt.tmp", dir) >= (int)sizeof tmp)
        return moe_err_set(err, "checkpoint directory path too long: '%s'", dir);
    if (ckpt_save(path, m, st, err) != 0) return -1;
    // the pointer moves only once the file is complete and renamed
    char line[80];
    int ln = snprintf(line, sizeof line, "%s\n", name);
    char latest[4096];
    snprintf(latest, sizeof latest, "%s/latest", dir);
    if (write_file_atomic(latest, line, (size_t)ln, err) != 0) return -1;
    if (is_best) {
        // a hard link of the new file (no second copy), swapped in atomically
        unlink(tmp);
        if (link(path, tmp) == 0 && rename(tmp, other) == 0) {
            fsync_parent_dir(other);
        } else {
            unlink(tmp);
            if (ckpt_save(other, m, st, err) != 0) return -1;
        }
    }
    // retention: the newest `keep` step files at or below this step (files from a later,
    // abandoned branch of the run, e.g. after resuming from an older checkpoint, are left alone)
    int64_t *steps = NULL;
    int n = list_steps(dir, &steps, 1, err);
    if (n < 0) return -1;
    if (keep > 0) {
        int kept = 0;
        for (int i = 0; i < n; i++) {
            if (steps[i] > st->step) continue;
            if (kept < keep || steps[i] == st->step) {
                kept++;
                continue;
            }
            char old[4096];
            if (step_path(old, sizeof old, dir, steps[i]) == 0 && unlink(old) != 0 && errno != ENOENT)
                fprintf(stderr, "warning: cannot delete old checkpoint '%s': %s\n", old, strerror(errno));
        }
    }
    free(steps);
    return 0;
}

// A file name from `latest`: one plain name, no directories.
static int read_latest(const char *dir, char *name, size_t n) {
    char p[4096];
    if (snprintf(p, sizeof p, "%s/latest", dir) >= (int)sizeof p) return -1;
    FILE *fp = fopen(p, "rb");
    if (!fp) return -1;
    char buf[256];
    size_t got = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[got] = '\0';
    while (got > 0 && (buf[got - 1] == '\n' || buf[got - 1] == '\r' || buf[got - 1] == ' ')) buf[--got] = '\0';
    if (got == 0 || got >= n || strlen(buf) != got || strchr(buf, '/') || !strcmp(buf, ".") || !strcmp(buf, ".."))
        return -1;
    memcpy(name, buf, got + 1);
    return 0;
}

static int copy_out(char *out, size_t outlen, const char *path, MoeErr *err) {
    if (strlen(path) >= outlen)
        return moe_err_set(err, "checkpoint path '%s' is too long for the caller's buffer", path);
    memcpy(out, path, strlen(path) + 1);
    return 0;
}

static int resolve_dir(const char *dir, char *out, size_t outlen, MoeErr *err) {
    int64_t *steps = NULL;
    int n = list_steps(dir, &steps, 0, err);
    if (n < 0) return -1;
    char name[256], path[4096];
    int have_latest = read_latest(dir, name, sizeof name) == 0;
    int64_t latest_step = have_latest ? parse_step_name(name) : -1;
    int tried = 0, rc = -1;
    MoeErr e;
    snprintf(e.msg, sizeof e.msg, "no checkpoint found");
    if (have_latest) {
        snprintf(path, sizeof path, "%s/%s", dir, name);
        tried++;
        if (ckpt_verify(path, &e) == 0) {
            rc = copy_out(out, outlen, path, err);
            free(steps);
            return rc;
        }
        if (n > 0) fprintf(stderr, "warning: %s; falling back to an older checkpoint\n", e.msg);
    } else if (n > 0) {
        fprintf(stderr,
                "warning: run directory '%s' has no valid 'latest' pointer; using its newest valid step checkpoint\n",
                dir);
    }
    for (int i = 0; i < n; i++) {
        // older than what `latest` names (every step file when it names something else)
        if (have_latest && latest_step >= 0 && steps[i] >= latest_step) continue;
        if (step_path(path, sizeof path, dir, steps[i]) != 0) continue;
        tried++;
        if (ckpt_verify(path, &e) == 0) {
            free(steps);
            if (tried > 1) fprintf(stderr, "warning: resuming from the older checkpoint '%s'\n", path);
            return copy_out(out, outlen, path, err);
        }
        fprintf(stderr, "warning: %s; falling back to an older checkpoint\n", e.msg);
    }
    free(steps);
    // last resort: best.ckpt (a complete checkpoint of an earlier step)
    snprintf(path, sizeof path, "%s/best.ckpt", dir);
    if (file_exists(path) && !(have_latest && strcmp(name, "best.ckpt") == 0)) {
        tried++;
        if (ckpt_verify(path, &e) == 0) {
            fprintf(stderr, "warning: no valid step checkpoint in '%s'; resuming from '%s'\n", dir, path);
            return copy_out(out, outlen, path, err);
        }
        fprintf(stderr, "warning: %s\n", e.msg);
    }
    if (tried == 0)
        return moe_err_set(err, "run directory '%s' holds no checkpoint (no 'latest' pointer and no step_*.ckpt)", dir);
    return moe_err_set(err, "no valid checkpoint in '%s' (%d tried; the last: %s)", dir, tried, e.msg);
}

int ckpt_resolve(const char *arg, char *out, size_t outlen, MoeErr *err) {
    if (!arg || !*arg) return moe_err_set(err, "checkpoint: empty --resume argument");
    struct stat sb;
    if (stat(arg, &sb) == 0) {
        if (S_ISREG(sb.st_mode)) {
            if (ckpt_verify(arg, err) != 0) return -1;
            return copy_out(out, outlen, arg, err);
        }
        if (S_ISDIR(sb.st_mode)) return resolve_dir(arg, out, outlen, err);
        return moe_err_set(err, "checkpoint '%s' is neither a file nor a directory", arg);
    }
    char run[4096];
    if (!strchr(arg, '/') && snprintf(run, sizeof run, "checkpoints/%s", arg) < (int)sizeof run &&
        stat(run, &sb) == 0 && S_ISDIR(sb.st_mode))
        return resolve_dir(run, out, outlen, err);
    return moe_err_set(err, "'%s' is not a checkpoint file, a run directory or a run name under checkpoints/", arg);
}
