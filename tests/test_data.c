// Tests of data/: shard round trips (uint16 and uint32), corrupt shards (missing, empty,
// truncated, bad magic, newer version, flipped bytes), and the dataloader (determinism,
// seeds, epoch coverage, state save/restore, domains, ordered sweep, several shards).
#include <unistd.h>

#include "../data/dataloader.h"
#include "../data/shard.h"
#include "test.h"

static char g_dir[64];

static void path_in_dir(char *out, size_t n, const char *name) { snprintf(out, n, "%s/%s", g_dir, name); }

// A synthetic shard: token i = (i * mul + add) % vocab, documents of varying lengths,
// alternating domains.
static int make_shard(const char *path, int64_t n_tokens, int vocab, int n_docs, uint32_t mul, uint32_t add,
                      const char *const *names, int n_domains, MoeErr *err) {
    uint32_t *tok = (uint32_t *)malloc((size_t)(n_tokens ? n_tokens : 1) * sizeof(uint32_t));
    int64_t *ds = (int64_t *)malloc((size_t)n_docs * sizeof(int64_t));
    int32_t *dd = (int32_t *)malloc((size_t)n_docs * sizeof(int32_t));
    for (int64_t i = 0; i < n_tokens; i++) tok[i] = (uint32_t)(((uint64_t)i * mul + add) % (uint64_t)vocab);
    for (int d = 0; d < n_docs; d++) {
        ds[d] = n_tokens * d / n_docs;
        dd[d] = d % n_domains;
    }
    int rc = shard_write(path, tok, n_tokens, vocab, ds, dd, n_docs, names, n_domains, err);
    free(tok);
    free(ds);
    free(dd);
    return rc;
}

static int write_bytes(const char *path, const void *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return -1;
    size_t w = fwrite(data, 1, n, fp);
    fclose(fp);
    return w == n ? 0 : -1;
}

static void test_roundtrip(int vocab, const char *name) {
    test_begin(name);
    char path[128];
    path_in_dir(path, sizeof path, "rt.bin");
    const char *names[] = {"bible", "code", "gcide"};
    MoeErr err = {{0}};
    int64_t n = 10007;
    CHECK(make_shard(path, n, vocab, 13, 7919, 3, names, 3, &err) == 0, "write: %s", err.msg);
    Shard s;
    int rc = shard_open(&s, path, &err);
    CHECK(rc == 0, "open: %s", err.msg);
    if (rc == 0) {
        CHECK(s.token_bytes == (vocab <= 65535 ? 2 : 4), "token_bytes %d", s.token_bytes);
        CHECK(s.vocab_size == vocab && s.n_tokens == n && s.n_docs == 13 && s.n_domains == 3, "header fields");
        CHECK(strcmp(s.domain_names[1], "code") == 0, "domain name");
        int bad = 0;
        for (int64_t i = 0; i < n; i++)
            if (shard_token(&s, i) != (uint32_t)(((uint64_t)i * 7919 + 3) % (uint64_t)vocab)) bad++;
        CHECK(bad == 0, "%d tokens differ", bad);
        for (int d = 0; d < 13; d++) {
            int64_t st = n * d / 13;
            CHECK(s.doc_start[d] == st, "doc_start[%d]", d);
            CHECK(shard_domain_at(&s, st) == d % 3, "domain at doc %d start", d);
            if (st > 0) CHECK(shard_domain_at(&s, st - 1) == (d + 2) % 3, "domain before doc %d", d);
        }
        CHECK(shard_domain_at(&s, n - 1) == 12 % 3, "domain of last token");
        shard_close(&s);
    }
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(!file_exists(tmp), "tmp file left");
    test_end();
}

// expect shard_open to fail with a message containing the path and `what`
static void expect_open_fails(const char *path, const char *what) {
    Shard s;
    MoeErr err = {{0}};
    int rc = shard_open(&s, path, &err);
    CHECK(rc != 0, "%s: open succeeded", what);
    if (rc != 0) {
        CHECK(strstr(err.msg, path) != NULL, "%s: message does not name the file: %s", what, err.msg);
        CHECK(strstr(err.msg, what) != NULL, "%s: message does not say '%s': %s", what, what, err.msg);
    } else {
        shard_close(&s);
    }
}

static void test_corrupt(void) {
    test_begin("shard_corrupt_inputs");
    char good[128], bad[128];
    path_in_dir(good, sizeof good, "good.bin");
    path_in_dir(bad, sizeof bad, "bad.bin");
    const char *names[] = {"a", "b"};
    MoeErr err = {{0}};
    CHECK(make_shard(good, 3000, 1000, 5, 31, 1, names, 2, &err) == 0, "write: %s", err.msg);
    char *data = NULL;
    size_t n = 0;
    CHECK(read_file_all(good, &data, &n, &err) == 0, "read: %s", err.msg);
    if (!data) {
        test_end();
        return;
    }

    char missing[128];
    path_in_dir(missing, sizeof missing, "does_not_exist.bin");
    expect_open_fails(missing, "cannot open");

    write_bytes(bad, "", 0);
    expect_open_fails(bad, "empty file");

    // truncated at several offsets: inside the header, inside the tables, inside tokens, last byte
    size_t cuts[] = {1, 7, 40, 63, 64, 65, 64 + 2 * 32 + 3, 64 + 2 * 32 + 5 * 16 + 1, n / 2, n - 4, n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_bytes(bad, data, cuts[i]);
        Shard s;
        int rc = shard_open(&s, bad, &err);
        CHECK(rc != 0, "truncated at %zu: open succeeded", cuts[i]);
        if (rc == 0) shard_close(&s);
        else CHECK(strstr(err.msg, bad) != NULL, "truncated at %zu: message lacks path: %s", cuts[i], err.msg);
        if (cuts[i] >= 68 && rc != 0)
            CHECK(strstr(err.msg, "truncated") || strstr(err.msg, "does not match"), "truncated at %zu: %s", cuts[i],
                  err.msg);
    }
    // trailing garbage
    {
        char *big = (char *)malloc(n + 3);
        memcpy(big, data, n);
        memset(big + n, 'x', 3);
        write_bytes(bad, big, n + 3);
        free(big);
        expect_open_fails(bad, "trailing");
    }
    char *copy = (char *)malloc(n);
    // bad magic
    memcpy(copy, data, n);
    copy[0] = 'X';
    write_bytes(bad, copy, n);
    expect_open_fails(bad, "bad magic");
    // newer version (header crc would also fail; version is checked first and says so)
    memcpy(copy, data, n);
    copy[8] = 2;
    write_bytes(bad, copy, n);
    expect_open_fails(bad, "newer");
    // flipped byte in the header
    memcpy(copy, data, n);
    copy[16] ^= 0x01;
    write_bytes(bad, copy, n);
    expect_open_fails(bad, "header checksum");
    // flipped byte in each region: domain table, doc table, tokens, final crc
    size_t offs[] = {64 + 1, 64 + 2 * 32 + 8, n / 2, n - 100, n - 2};
    for (size_t i = 0; i < sizeof offs / sizeof offs[0]; i++) {
        memcpy(copy, data, n);
        copy[offs[i]] ^= 0x10;
        write_bytes(bad, copy, n);
        expect_open_fails(bad, "checksum");
    }
    // a directory is not a shard
    expect_open_fails(g_dir, "not a regular file");
    free(copy);
    free(data);
    test_end();
}

static void test_write_rejects(void) {
    test_begin("shard_write_rejects_bad_arguments");
    char path[128];
    path_in_dir(path, sizeof path, "rej.bin");
    unlink(path);
    MoeErr err = {{0}};
    uint32_t tok[4] = {1, 2, 70000, 3};
    int64_t ds[1] = {0};
    int32_t dd[1] = {0};
    const char *names[] = {"x"};
    CHECK(shard_write(path, tok, 4, 100, ds, dd, 1, names, 1, &err) != 0 && strstr(err.msg, "token 2"),
          "id >= vocab: %s", err.msg);
    CHECK(shard_write_ex(path, tok, 4, 70001, 2, ds, dd, 1, names, 1, &err) != 0 && strstr(err.msg, "too large") &&
              strstr(err.msg, path),
          "vocab too large for uint16: %s", err.msg);
    int32_t dbad[1] = {1};
    CHECK(shard_write(path, tok, 2, 100, ds, dbad, 1, names, 1, &err) != 0, "domain out of range");
    int64_t dsbad[1] = {1};
    CHECK(shard_write(path, tok, 2, 100, dsbad, dd, 1, names, 1, &err) != 0, "doc_start[0] != 0");
    const char *longname[] = {"a_domain_name_that_is_much_longer_than_32_bytes"};
    CHECK(shard_write(path, tok, 2, 100, ds, dd, 1, longname, 1, &err) != 0, "long domain name");
    CHECK(!file_exists(path), "a rejected write left a file");
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(!file_exists(tmp), "a rejected write left a tmp file");
    // into a missing directory
    CHECK(shard_write("/nonexistent_dir_moe/x.bin", tok, 2, 100, ds, dd, 1, names, 1, &err) != 0 &&
              strstr(err.msg, "/nonexistent_dir_moe/x.bin"),
          "missing dir: %s", err.msg);
    // 4-byte ids on request even for a small vocab
    CHECK(shard_write_ex(path, tok, 2, 100, 4, ds, dd, 1, names, 1, &err) == 0, "token_bytes 4: %s", err.msg);
    Shard s;
    if (shard_open(&s, path, &err) == 0) {
        CHECK(s.token_bytes == 4 && shard_token(&s, 1) == 2, "explicit width");
        shard_close(&s);
    } else {
        CHECK(0, "open: %s", err.msg);
    }
    test_end();
}

// ---------------------------------------------------------------------------------------
// dataloader

typedef struct {
    int *in, *tg, *dom;
} Batch;

static Batch batch_new(int B, int T) {
    Batch b = {(int *)calloc((size_t)B * T, sizeof(int)), (int *)calloc((size_t)B * T, sizeof(int)),
               (int *)calloc((size_t)B, sizeof(int))};
    return b;
}
static void batch_free(Batch *b) {
    free(b->in);
    free(b->tg);
    free(b->dom);
}

// tokens are i % vocab with vocab large: the first input token identifies the window
static void test_dataloader(void) {
    char p1[128], p2[128], spec[300], globspec[300];
    path_in_dir(p1, sizeof p1, "dl_000.bin");
    path_in_dir(p2, sizeof p2, "dl_001.bin");
    snprintf(spec, sizeof spec, "%s,%s", p1, p2);
    snprintf(globspec, sizeof globspec, "%s/dl_*.bin", g_dir);
    MoeErr err = {{0}};
    const char *n1[] = {"alpha", "beta"};
    const char *n2[] = {"gamma", "alpha"};
    // shard 1: 40*16+1 tokens -> 40 windows of T=16; shard 2: 24*16+5 -> 24 windows. 64 windows.
    int T = 16, B = 4;
    int rc1 = make_shard(p1, 40 * 16 + 1, 100000, 10, 1, 0, n1, 2, &err);
    int rc2 = make_shard(p2, 24 * 16 + 5, 100000, 3, 1, 50000, n2, 2, &err);
    test_begin("dataloader_open");
    CHECK(rc1 == 0 && rc2 == 0, "write shards: %s", err.msg);
    DataLoader *dl = NULL;
    CHECK(dataloader_open(&dl, spec, B, T, 42, 1, &err) == 0, "open: %s", err.msg);
    if (!dl) {
        test_end();
        return;
    }
    CHECK(dataloader_num_batches(dl) == 16, "num_batches %lld", (long long)dataloader_num_batches(dl));
    CHECK(dataloader_n_domains(dl) == 3, "global domains %d", dataloader_n_domains(dl));
    CHECK(strcmp(dataloader_domain_name(dl, 2), "gamma") == 0, "domain 2 name");
    CHECK(dataloader_vocab_size(dl) == 100000, "vocab");
    CHECK(dataloader_n_tokens(dl) == 40 * 16 + 1 + 24 * 16 + 5, "n_tokens");
    DataLoader *dg = NULL;
    CHECK(dataloader_open(&dg, globspec, B, T, 42, 1, &err) == 0, "glob open: %s", err.msg);
    test_end();

    Batch a = batch_new(B, T), b = batch_new(B, T);
    test_begin("dataloader_targets_shifted_and_domains");
    {
        int bad = 0, bad_dom = 0;
        for (int it = 0; it < 16; it++) {
            dataloader_next(dl, a.in, a.tg, a.dom);
            for (int i = 0; i < B; i++) {
                int first = a.in[i * T];
                for (int t = 0; t < T; t++) {
                    if (a.in[i * T + t] != first + t || a.tg[i * T + t] != first + t + 1) bad++;
                }
                // expected domain: shard 1 tokens 0..640 docs of 64 tokens alternating alpha/beta;
                // shard 2 tokens 50000.. docs of 129/130 tokens gamma, alpha, gamma
                int want;
                if (first < 50000) {
                    int64_t pos = first, ntok = 40 * 16 + 1;
                    int d = 0;
                    while (d + 1 < 10 && ntok * (d + 1) / 10 <= pos) d++;
                    want = (d % 2 == 0) ? 0 : 1;  // alpha=0, beta=1
                } else {
                    int64_t pos = first - 50000, ntok = 24 * 16 + 5;
                    int d = 0;
                    while (d + 1 < 3 && ntok * (d + 1) / 3 <= pos) d++;
                    want = (d % 2 == 0) ? 2 : 0;  // gamma=2, alpha=0
                }
                if (a.dom[i] != want) bad_dom++;
            }
        }
        CHECK(bad == 0, "%d tokens not consecutive / shifted", bad);
        CHECK(bad_dom == 0, "%d sequences with the wrong domain", bad_dom);
    }
    test_end();

    test_begin("dataloader_every_window_once_per_epoch");
    {
        dataloader_reset(dl);
        for (int epoch = 0; epoch < 3; epoch++) {
            int seen[64] = {0};
            for (int it = 0; it < 16; it++) {
                dataloader_next(dl, a.in, a.tg, a.dom);
                for (int i = 0; i < B; i++) {
                    int first = a.in[i * T];
                    int w = first < 50000 ? first / T : 40 + (first - 50000) / T;
                    if (w >= 0 && w < 64) seen[w]++;
                }
            }
            int ok = 1;
            for (int w = 0; w < 64; w++) ok &= seen[w] == 1;
            CHECK(ok, "epoch %d: not every window exactly once", epoch);
            DataLoaderState st;
            dataloader_get_state(dl, &st);
            CHECK(st.epoch == epoch && st.position == 64, "state after epoch %d: %lld %lld", epoch,
                  (long long)st.epoch, (long long)st.position);
        }
    }
    test_end();

    test_begin("dataloader_deterministic_for_seed");
    {
        DataLoader *x = NULL, *y = NULL, *z = NULL;
        dataloader_open(&x, spec, B, T, 7, 1, &err);
        dataloader_open(&y, spec, B, T, 7, 1, &err);
        dataloader_open(&z, spec, B, T, 8, 1, &err);
        CHECK(x && y && z, "open");
        if (x && y && z) {
            int same = 1, differs = 0, epochs_differ = 0;
            int first_epoch[64];
            for (int it = 0; it < 40; it++) {
                dataloader_next(x, a.in, a.tg, a.dom);
                dataloader_next(y, b.in, b.tg, b.dom);
                same &= memcmp(a.in, b.in, sizeof(int) * B * T) == 0 && memcmp(a.dom, b.dom, sizeof(int) * B) == 0;
                dataloader_next(z, b.in, b.tg, b.dom);
                differs |= memcmp(a.in, b.in, sizeof(int) * B * T) != 0;
                for (int i = 0; i < B; i++) {
                    int k = (it % 16) * B + i;
                    if (it < 16) first_epoch[k] = a.in[i * T];
                    else if (it < 32 && first_epoch[k] != a.in[i * T]) epochs_differ = 1;
                }
            }
            CHECK(same, "same seed gave different batches");
            CHECK(differs, "different seeds gave identical batches");
            CHECK(epochs_differ, "epoch 1 order equals epoch 0 order");
        }
        dataloader_free(x);
        dataloader_free(y);
        dataloader_free(z);
    }
    test_end();

    test_begin("dataloader_state_save_restore");
    {
        DataLoader *x = NULL, *y = NULL;
        dataloader_open(&x, spec, B, T, 99, 1, &err);
        dataloader_open(&y, globspec, B, T, 1, 0, &err);  // different seed and mode: restored from state
        CHECK(x && y, "open");
        if (x && y) {
            for (int it = 0; it < 21; it++) dataloader_next(x, a.in, a.tg, a.dom);  // into epoch 1
            DataLoaderState st;
            dataloader_get_state(x, &st);
            CHECK(st.epoch == 1 && st.position == 20, "state %lld %lld", (long long)st.epoch, (long long)st.position);
            CHECK(dataloader_set_state(y, &st, &err) == 0, "set_state: %s", err.msg);
            int same = 1;
            for (int it = 0; it < 30; it++) {
                dataloader_next(x, a.in, a.tg, a.dom);
                dataloader_next(y, b.in, b.tg, b.dom);
                same &= memcmp(a.in, b.in, sizeof(int) * B * T) == 0 && memcmp(a.tg, b.tg, sizeof(int) * B * T) == 0 &&
                        memcmp(a.dom, b.dom, sizeof(int) * B) == 0;
            }
            CHECK(same, "restored loader diverged");
            DataLoaderState badst = st;
            badst.position = 65;
            CHECK(dataloader_set_state(y, &badst, &err) != 0, "position beyond the data accepted");
            badst = st;
            badst.epoch = -1;
            CHECK(dataloader_set_state(y, &badst, &err) != 0, "negative epoch accepted");
        }
        dataloader_free(x);
        dataloader_free(y);
    }
    test_end();

    test_begin("dataloader_ordered_sweep");
    {
        DataLoader *v = NULL;
        CHECK(dataloader_open(&v, spec, B, T, 5, 0, &err) == 0, "open: %s", err.msg);
        if (v) {
            int ok = 1;
            for (int pass = 0; pass < 2; pass++) {
                dataloader_reset(v);
                for (int64_t it = 0; it < dataloader_num_batches(v); it++) {
                    dataloader_next(v, a.in, a.tg, a.dom);
                    for (int i = 0; i < B; i++) {
                        int w = (int)it * B + i;
                        int want = w < 40 ? w * T : 50000 + (w - 40) * T;
                        ok &= a.in[i * T] == want;
                    }
                }
            }
            CHECK(ok, "ordered sweep not in file order");
        }
        dataloader_free(v);
    }
    test_end();

    test_begin("dataloader_partial_last_batch_dropped");
    {
        DataLoader *v = NULL;
        // 64 windows, B=5: 12 batches per epoch, 4 windows left out, all distinct
        CHECK(dataloader_open(&v, spec, 5, T, 3, 1, &err) == 0, "open: %s", err.msg);
        if (v) {
            CHECK(dataloader_num_batches(v) == 12, "num_batches");
            Batch c = batch_new(5, T);
            int seen[64] = {0}, dup = 0;
            for (int it = 0; it < 12; it++) {
                dataloader_next(v, c.in, c.tg, c.dom);
                for (int i = 0; i < 5; i++) {
                    int f = c.in[i * T];
                    int w = f < 50000 ? f / T : 40 + (f - 50000) / T;
                    if (seen[w]++) dup++;
                }
            }
            CHECK(dup == 0, "duplicate windows in one epoch");
            dataloader_next(v, c.in, c.tg, c.dom);
            DataLoaderState st;
            dataloader_get_state(v, &st);
            CHECK(st.epoch == 1 && st.position == 5, "wrap to next epoch");
            batch_free(&c);
        }
        dataloader_free(v);
    }
    test_end();

    test_begin("dataloader_errors");
    {
        DataLoader *v = NULL;
        char missing[160], nomatch[160];
        path_in_dir(missing, sizeof missing, "missing.bin");
        path_in_dir(nomatch, sizeof nomatch, "zz_*.bin");
        CHECK(dataloader_open(&v, missing, B, T, 1, 1, &err) != 0 && strstr(err.msg, missing), "missing: %s",
              err.msg);
        CHECK(dataloader_open(&v, nomatch, B, T, 1, 1, &err) != 0 && strstr(err.msg, "no shard files match"),
              "no match: %s", err.msg);
        CHECK(dataloader_open(&v, spec, 100, T, 1, 1, &err) != 0 && strstr(err.msg, "fewer than one batch"),
              "too small: %s", err.msg);
        CHECK(dataloader_open(&v, spec, B, 0, 1, 1, &err) != 0, "T=0");
        CHECK(dataloader_open(&v, "", B, T, 1, 1, &err) != 0, "empty spec");
        CHECK(v == NULL, "out pointer set on failure");
    }
    test_end();

    batch_free(&a);
    batch_free(&b);
    dataloader_free(dl);
    dataloader_free(dg);
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/moe_test_data_XXXXXX");
    if (!mkdtemp(g_dir)) {
        printf("FAIL setup: mkdtemp\n");
        return 1;
    }
    test_roundtrip(1000, "shard_roundtrip_uint16");
    test_roundtrip(65535, "shard_roundtrip_uint16_max");
    test_roundtrip(100000, "shard_roundtrip_uint32");
    test_corrupt();
    test_write_rejects();
    test_dataloader();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
    return test_summary();
}
