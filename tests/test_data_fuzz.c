// Bounded fuzzing of data/ parsers (deterministic seeds, well under a few seconds):
// shard_open on mutated shards (every mutation must be refused, nothing may crash), the
// CSV / JSONL / text readers and the dictionary normaliser on random bytes, the bible
// parser on random lines, and dataloader invariants on random shapes.
#include <unistd.h>

#include "../data/corpus.h"
#include "../data/dataloader.h"
#include "../data/shard.h"
#include "test.h"

static char g_dir[64];

static void write_file(const char *path, const void *data, size_t n) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return;
    if (n) fwrite(data, 1, n, fp);
    fclose(fp);
}

static void fuzz_shard(void) {
    test_begin("fuzz_shard_open_mutations");
    char good[128], bad[128];
    snprintf(good, sizeof good, "%s/good.bin", g_dir);
    snprintf(bad, sizeof bad, "%s/bad.bin", g_dir);
    uint32_t tok[500];
    for (int i = 0; i < 500; i++) tok[i] = (uint32_t)(i * 7 % 300);
    int64_t ds[4] = {0, 100, 250, 400};
    int32_t dd[4] = {0, 1, 0, 2};
    const char *names[] = {"x", "y", "z"};
    MoeErr err;
    CHECK(shard_write(good, tok, 500, 300, ds, dd, 4, names, 3, &err) == 0, "write: %s", err.msg);
    char *data = NULL;
    size_t n = 0;
    if (read_file_all(good, &data, &n, &err)) {
        CHECK(0, "read: %s", err.msg);
        test_end();
        return;
    }
    unsigned char *m = (unsigned char *)malloc(n + 64);
    uint64_t rng = rng_seed(1234);
    int accepted = 0, iters = 1500;
    for (int it = 0; it < iters; it++) {
        memcpy(m, data, n);
        size_t len = n;
        int kind = (int)(rng_next_u64(&rng) % 4);
        if (kind == 0) {  // flip 1-3 random bits
            int k = 1 + (int)(rng_next_u64(&rng) % 3);
            for (int j = 0; j < k; j++) m[rng_next_u64(&rng) % n] ^= (unsigned char)(1u << (rng_next_u64(&rng) % 8));
        } else if (kind == 1) {  // truncate
            len = (size_t)(rng_next_u64(&rng) % n);
        } else if (kind == 2) {  // append bytes
            size_t extra = 1 + (size_t)(rng_next_u64(&rng) % 63);
            for (size_t j = 0; j < extra; j++) m[n + j] = (unsigned char)rng_next_u64(&rng);
            len = n + extra;
        } else {  // overwrite a header field with a random value
            size_t off = 8 + 4 * (size_t)(rng_next_u64(&rng) % 9);
            uint32_t v = (uint32_t)rng_next_u64(&rng);
            memcpy(m + off, &v, 4);
        }
        if (len == n && memcmp(m, data, n) == 0) continue;  // a no-op mutation
        write_file(bad, m, len);
        Shard s;
        if (shard_open(&s, bad, &err) == 0) {
            accepted++;
            shard_close(&s);
        } else if (!strstr(err.msg, bad)) {
            CHECK(0, "message does not name the file: %s", err.msg);
            break;
        }
    }
    CHECK(accepted == 0, "%d of %d mutated shards were accepted", accepted, iters);
    free(m);
    free(data);
    test_end();
}

// random bytes biased towards the characters that matter to each parser
static size_t random_text(uint64_t *rng, char *buf, size_t max, const char *alphabet) {
    size_t len = (size_t)(rng_next_u64(rng) % max);
    size_t na = strlen(alphabet);
    for (size_t i = 0; i < len; i++) {
        uint64_t r = rng_next_u64(rng);
        buf[i] = (r % 8 == 0) ? (char)(r >> 8) : alphabet[(r >> 8) % na];
    }
    return len;
}

static void fuzz_readers(void) {
    test_begin("fuzz_csv_jsonl_text_readers");
    char path_csv[128], path_jsonl[128], path_txt[128];
    snprintf(path_csv, sizeof path_csv, "%s/f.csv", g_dir);
    snprintf(path_jsonl, sizeof path_jsonl, "%s/f.jsonl", g_dir);
    snprintf(path_txt, sizeof path_txt, "%s/f.txt", g_dir);
    uint64_t rng = rng_seed(99);
    char buf[600];
    int ok_csv = 0, ok_json = 0, ok_txt = 0, msgs_ok = 1;
    for (int it = 0; it < 400; it++) {
        Corpus c = {0};
        MoeErr err;
        ReadOptions o;
        read_options_default(&o);
        o.skip_bad = (int)(rng_next_u64(&rng) % 2);
        o.text_unit = (int)(rng_next_u64(&rng) % 3);
        int d = corpus_domain(&c, "f", &err);
        size_t n = random_text(&rng, buf, sizeof buf, "ab,\"\n\r\t text");
        write_file(path_csv, buf, n);
        const char *cols[] = {"1", "2", "text", "7"};
        int rc = corpus_read_csv(&c, d, path_csv, it % 3 ? ',' : '\t', cols[it % 4], &o, &err);
        ok_csv += rc == 0;
        if (rc != 0 && !strstr(err.msg, "f.csv")) msgs_ok = 0;
        n = random_text(&rng, buf, sizeof buf, "{}[]\":,\\ntext 01u\n");
        if (it % 5 == 0) n = (size_t)snprintf(buf, sizeof buf, "{\"text\": \"v%d\"}\n{\"text\": 1}\n", it);
        write_file(path_jsonl, buf, n);
        rc = corpus_read_jsonl(&c, d, path_jsonl, it % 2 ? "text" : "a.b", &o, &err);
        ok_json += rc == 0;
        if (rc != 0 && !strstr(err.msg, "f.jsonl")) msgs_ok = 0;
        n = random_text(&rng, buf, sizeof buf, "ab \n\n\r\xc3\xa9");
        write_file(path_txt, buf, n);
        rc = corpus_read_text(&c, d, path_txt, &o, &err);
        ok_txt += rc == 0;
        if (rc != 0 && !strstr(err.msg, "f.txt")) msgs_ok = 0;
        for (int64_t i = 0; i < c.n_docs; i++)
            if (c.docs[i].text[c.docs[i].len] != '\0') msgs_ok = 0;
        corpus_free(&c);
    }
    CHECK(msgs_ok, "an error message did not name the file (or a document was not terminated)");
    CHECK(ok_csv > 0 && ok_json > 0 && ok_txt > 0, "some inputs must parse: csv %d json %d txt %d", ok_csv, ok_json,
          ok_txt);
    test_end();

    test_begin("fuzz_dict_normalize_and_bible");
    int grew = 0;
    for (int it = 0; it < 3000; it++) {
        char t[400];
        size_t n = random_text(&rng, t, sizeof t - 1, " \n\n{}[]\\()\"*`'=^~.aeo1:-Syn");
        size_t m = dict_normalize(t, n, it % 2 ? DICT_GCIDE : DICT_PLAIN);
        if (m > n || t[m] != '\0') grew++;
    }
    CHECK(grew == 0, "%d normalised entries grew or lost their terminator", grew);
    for (int it = 0; it < 500; it++) {
        char t[400];
        size_t n = random_text(&rng, t, sizeof t, "  Genesis 1\n\n  2 text");
        Corpus c = {0};
        MoeErr err;
        int d = corpus_domain(&c, "b", &err);
        corpus_parse_bible(&c, d, t, n, "fuzz", &err);
        corpus_free(&c);
    }
    test_end();
}

static void fuzz_dataloader(void) {
    test_begin("fuzz_dataloader_invariants");
    uint64_t rng = rng_seed(7);
    char spec[600];
    int bad = 0;
    for (int it = 0; it < 30 && !bad; it++) {
        int n_shards = 1 + (int)(rng_next_u64(&rng) % 3);
        int T = 1 + (int)(rng_next_u64(&rng) % 20);
        int B = 1 + (int)(rng_next_u64(&rng) % 6);
        spec[0] = '\0';
        int64_t base = 0, total_windows = 0;
        for (int s = 0; s < n_shards; s++) {
            int64_t n = (int64_t)(rng_next_u64(&rng) % 400);
            uint32_t *tok = (uint32_t *)malloc((size_t)(n ? n : 1) * sizeof(uint32_t));
            for (int64_t i = 0; i < n; i++) tok[i] = (uint32_t)(base + i);  // unique ids: identify windows
            int64_t ds[1] = {0};
            int32_t dd[1] = {0};
            const char *names[] = {s % 2 ? "odd" : "even"};
            char path[128];
            snprintf(path, sizeof path, "%s/dl%d.bin", g_dir, s);
            MoeErr err;
            if (shard_write(path, tok, n, 100000, ds, dd, n ? 1 : 0, names, 1, &err)) bad = 1;
            free(tok);
            if (s) strcat(spec, ",");
            strcat(spec, path);
            total_windows += n >= T + 1 ? (n - 1) / T : 0;
            base += 1000;
        }
        DataLoader *dl = NULL;
        MoeErr err;
        int rc = dataloader_open(&dl, spec, B, T, (uint64_t)it, it % 2, &err);
        if (total_windows < B) {
            if (rc == 0) bad = 1;
            dataloader_free(dl);
            continue;
        }
        if (rc != 0) {
            CHECK(0, "open failed: %s", err.msg);
            bad = 1;
            continue;
        }
        int64_t nb = dataloader_num_batches(dl);
        if (nb != total_windows / B) bad = 1;
        int *in = (int *)malloc((size_t)B * T * sizeof(int)), *tg = (int *)malloc((size_t)B * T * sizeof(int));
        int dom[8];
        char *seen = (char *)calloc(4000, 1);
        for (int64_t b = 0; b < nb && !bad; b++) {
            dataloader_next(dl, in, tg, dom);
            for (int i = 0; i < B; i++) {
                int first = in[i * T];
                if (first < 0 || first >= 4000 || seen[first]++) bad = 1;
                if ((first % 1000) % T != 0) bad = 1;                        // window starts at a multiple of T
                for (int t = 0; t < T; t++)
                    if (in[i * T + t] != first + t || tg[i * T + t] != first + t + 1) bad = 1;
                if (strcmp(dataloader_domain_name(dl, dom[i]), (first / 1000) % 2 ? "odd" : "even") != 0) bad = 1;
            }
        }
        CHECK(!bad, "iteration %d (shards %d, B %d, T %d) broke an invariant", it, n_shards, B, T);
        free(seen);
        free(in);
        free(tg);
        dataloader_free(dl);
    }
    CHECK(!bad, "invariants");
    test_end();
}

int main(void) {
    // many small files are written (and fsync'd): a memory file system when there is one
    snprintf(g_dir, sizeof g_dir, "%s/moe_test_fuzz_XXXXXX", access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (!mkdtemp(g_dir)) {
        printf("FAIL setup: mkdtemp\n");
        return 1;
    }
    fuzz_shard();
    fuzz_readers();
    fuzz_dataloader();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    if (system(cmd) != 0) fprintf(stderr, "cleanup failed\n");
    return test_summary();
}
