// Tests of speculate/trace.c: round trip of the .trace format, and clear errors for a
// truncated file, an expert id out of range, a bad checksum, a wrong magic; a bounded fuzz
// of the reader with random byte flips and truncations (must never crash).
#include <unistd.h>

#include "../common/util.h"
#include "../speculate/trace.h"
#include "test.h"

static char g_dir[64];

static void make_header(TraceHeader *h, int reuse) {
    memset(h, 0, sizeof(*h));
    snprintf(h->model, sizeof h->model, "tiny-moe");
    snprintf(h->dataset, sizeof h->dataset, "synthetic");
    h->E = 16;
    h->K = 3;
    h->n_layers = 4;
    for (int l = 0; l < 4; l++) h->layer_idx[l] = l + 1;
    h->has_reuse = reuse;
    h->n_domains = 2;
    snprintf(h->domains[0], TRACE_DOMAIN_LEN, "prose");
    snprintf(h->domains[1], TRACE_DOMAIN_LEN, "code");
}

static void fill(Trace *t, uint64_t seed) {
    uint64_t rng = rng_seed(seed);
    int M = t->h.n_layers, K = t->h.K, E = t->h.E;
    for (size_t i = 0; i < t->n; i++) {
        t->seq[i] = (uint32_t)(i / 10);
        t->pos[i] = (uint32_t)(i % 10);
        t->token[i] = (uint32_t)(rng_next_u64(&rng) % 1000);
        t->domain[i] = (uint16_t)(t->seq[i] % 2);
        for (int l = 0; l < M; l++) {
            uint16_t *ids = t->ids + (i * M + l) * K;
            int start = (int)(rng_next_u64(&rng) % E);
            for (int k = 0; k < K; k++) {
                ids[k] = (uint16_t)((start + 5 * k) % E);
                t->weights[(i * M + l) * K + k] = rng_uniform(&rng);
            }
        }
        if (t->reuse)
            for (int j = 0; j < (M - 1) * K; j++) t->reuse[i * (M - 1) * K + j] = (uint16_t)(rng_next_u64(&rng) % E);
    }
}

static int same(const Trace *a, const Trace *b) {
    if (a->n != b->n || a->h.E != b->h.E || a->h.K != b->h.K || a->h.n_layers != b->h.n_layers) return 0;
    if (strcmp(a->h.model, b->h.model) || strcmp(a->h.dataset, b->h.dataset)) return 0;
    if (a->h.n_domains != b->h.n_domains || a->h.has_reuse != b->h.has_reuse) return 0;
    for (int d = 0; d < a->h.n_domains; d++)
        if (strcmp(a->h.domains[d], b->h.domains[d])) return 0;
    for (int l = 0; l < a->h.n_layers; l++)
        if (a->h.layer_idx[l] != b->h.layer_idx[l]) return 0;
    size_t MK = (size_t)a->h.n_layers * a->h.K;
    if (a->n == 0) return 1;
    if (memcmp(a->seq, b->seq, a->n * 4) || memcmp(a->pos, b->pos, a->n * 4) || memcmp(a->token, b->token, a->n * 4))
        return 0;
    if (memcmp(a->domain, b->domain, a->n * 2) || memcmp(a->ids, b->ids, a->n * MK * 2)) return 0;
    if (memcmp(a->weights, b->weights, a->n * MK * 4)) return 0;
    if (a->h.has_reuse && memcmp(a->reuse, b->reuse, a->n * (MK - a->h.K) * 2)) return 0;
    return 1;
}

static int read_bytes(const char *path, uint8_t **buf, size_t *n) {
    MoeErr err;
    char *d;
    if (read_file_all(path, &d, n, &err)) return -1;
    *buf = (uint8_t *)d;
    return 0;
}
static void write_bytes(const char *path, const uint8_t *buf, size_t n) {
    FILE *fp = fopenCheck(path, "wb");
    if (n) fwriteCheck(buf, 1, n, fp);
    fclose(fp);
}
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static void wr32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

int main(void) {
    snprintf(g_dir, sizeof g_dir, "/tmp/moe_trace_XXXXXX");
    if (!mkdtemp(g_dir)) {
        printf("FAIL mkdtemp\n");
        return 1;
    }
    char path[256], bad[256];
    snprintf(path, sizeof path, "%s/a.trace", g_dir);
    snprintf(bad, sizeof bad, "%s/bad.trace", g_dir);
    MoeErr err;
    TraceHeader h;

    for (int reuse = 0; reuse <= 1; reuse++) {
        test_begin(reuse ? "trace_roundtrip_with_reuse" : "trace_roundtrip");
        make_header(&h, reuse);
        Trace a, b;
        CHECK(trace_alloc(&a, &h, 57, &err) == 0, "alloc: %s", err.msg);
        fill(&a, 7 + reuse);
        CHECK(trace_write(path, &a, &err) == 0, "write: %s", err.msg);
        CHECK(!file_exists(bad) || 1, "");
        char tmp[300];
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        CHECK(!file_exists(tmp), "temporary file left behind");
        int rc = trace_read(path, &b, &err);
        CHECK(rc == 0, "read: %s", err.msg);
        if (rc == 0) {
            CHECK(same(&a, &b), "read back differs");
            trace_free(&b);
        }
        uint8_t *buf = NULL;
        size_t n;
        CHECK(read_bytes(path, &buf, &n) == 0, "read bytes");
        size_t expect = 176 + 4 * 4 + 32 * 2 + 4 + 57 * trace_record_bytes(&h) + 4;
        CHECK(n == expect, "file size %zu expected %zu", n, expect);
        free(buf);
        trace_free(&a);
        test_end();
    }

    test_begin("trace_empty_roundtrip");
    {
        make_header(&h, 1);
        Trace a, b;
        CHECK(trace_alloc(&a, &h, 0, &err) == 0, "alloc");
        CHECK(trace_write(path, &a, &err) == 0, "write: %s", err.msg);
        CHECK(trace_read(path, &b, &err) == 0, "read: %s", err.msg);
        CHECK(b.n == 0, "n = %zu", b.n);
        trace_free(&a);
        trace_free(&b);
    }
    test_end();

    // reference file for the corruption tests
    make_header(&h, 1);
    Trace ref;
    trace_alloc(&ref, &h, 40, &err);
    fill(&ref, 3);
    trace_write(path, &ref, &err);
    uint8_t *good = NULL;
    size_t gn = 0;
    read_bytes(path, &good, &gn);
    uint8_t *buf = mallocCheck(gn);
    size_t hb = 176 + 16 + 64 + 4, rb = trace_record_bytes(&h);
    Trace t;

    test_begin("trace_truncated");
    {
        size_t cuts[] = {gn - 1, gn - 4, gn - rb, hb + 10, hb - 1, 100, 8, 3};
        for (size_t c = 0; c < sizeof cuts / sizeof cuts[0]; c++) {
            write_bytes(bad, good, cuts[c]);
            int rc = trace_read(bad, &t, &err);
            CHECK(rc == -1, "truncation to %zu bytes accepted", cuts[c]);
            if (rc == 0) trace_free(&t);
            else CHECK(strstr(err.msg, bad) != NULL, "error does not name the file: %s", err.msg);
        }
        write_bytes(bad, good, gn - 1);
        trace_read(bad, &t, &err);
        CHECK(strstr(err.msg, "truncated") != NULL, "message: %s", err.msg);
    }
    test_end();

    test_begin("trace_expert_id_out_of_range");
    {
        memcpy(buf, good, gn);
        // record 5, layer 2, slot 1: set id = E; fix the record CRC so only the range check can catch it
        size_t off = hb + 5 * rb + 16 + (2 * h.K + 1) * 2;
        buf[off] = (uint8_t)h.E;
        buf[off + 1] = 0;
        wr32(buf + gn - 4, crc32c(0, buf + hb, gn - 4 - hb));
        write_bytes(bad, buf, gn);
        int rc = trace_read(bad, &t, &err);
        CHECK(rc == -1, "out-of-range id accepted");
        if (rc == 0) trace_free(&t);
        CHECK(strstr(err.msg, "record 5") && strstr(err.msg, "layer 2") && strstr(err.msg, "expert id 16"),
              "message: %s", err.msg);
        // gate-reuse id out of range
        memcpy(buf, good, gn);
        off = hb + 3 * rb + 16 + (size_t)h.n_layers * h.K * 6;
        buf[off] = 0xFF;
        buf[off + 1] = 0x00;
        wr32(buf + gn - 4, crc32c(0, buf + hb, gn - 4 - hb));
        write_bytes(bad, buf, gn);
        rc = trace_read(bad, &t, &err);
        CHECK(rc == -1 && strstr(err.msg, "gate-reuse"), "reuse id: %s", err.msg);
        if (rc == 0) trace_free(&t);
        // duplicate id within a layer
        memcpy(buf, good, gn);
        off = hb + 1 * rb + 16;
        buf[off + 2] = buf[off];
        buf[off + 3] = buf[off + 1];
        wr32(buf + gn - 4, crc32c(0, buf + hb, gn - 4 - hb));
        write_bytes(bad, buf, gn);
        rc = trace_read(bad, &t, &err);
        CHECK(rc == -1 && strstr(err.msg, "twice"), "duplicate id: %s", err.msg);
        if (rc == 0) trace_free(&t);
        // the writer refuses an id out of range too
        TraceWriter *w = trace_writer_open(bad, &h, &err);
        CHECK(w != NULL, "open: %s", err.msg);
        uint16_t ids[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 99};
        float ws[12] = {0};
        uint16_t ru[9] = {0};
        CHECK(trace_writer_append(w, 0, 0, 0, 0, ids, ws, ru, &err) == -1, "writer accepted id 99");
        trace_writer_abort(w);
    }
    test_end();

    test_begin("trace_bad_crc");
    {
        memcpy(buf, good, gn);
        buf[hb + 7 * rb + 20] ^= 0x10;  // flip a bit inside a record
        write_bytes(bad, buf, gn);
        int rc = trace_read(bad, &t, &err);
        CHECK(rc == -1 && strstr(err.msg, "checksum"), "record bit flip: rc %d %s", rc, err.msg);
        if (rc == 0) trace_free(&t);
        memcpy(buf, good, gn);
        buf[60] ^= 0x01;  // model name byte
        write_bytes(bad, buf, gn);
        rc = trace_read(bad, &t, &err);
        CHECK(rc == -1 && strstr(err.msg, "header checksum"), "header bit flip: rc %d %s", rc, err.msg);
        if (rc == 0) trace_free(&t);
    }
    test_end();

    test_begin("trace_wrong_magic_version_missing");
    {
        memcpy(buf, good, gn);
        memcpy(buf, "MOECKPT1", 8);
        write_bytes(bad, buf, gn);
        int rc = trace_read(bad, &t, &err);
        CHECK(rc == -1 && strstr(err.msg, "magic"), "magic: %s", err.msg);
        memcpy(buf, good, gn);
        wr32(buf + 8, 99);
        write_bytes(bad, buf, gn);
        rc = trace_read(bad, &t, &err);
        CHECK(rc == -1 && strstr(err.msg, "version 99"), "version: %s", err.msg);
        rc = trace_read("/nonexistent/x.trace", &t, &err);
        CHECK(rc == -1 && strstr(err.msg, "/nonexistent/x.trace"), "missing: %s", err.msg);
        write_bytes(bad, buf, 0);
        rc = trace_read(bad, &t, &err);
        CHECK(rc == -1 && strstr(err.msg, "empty"), "empty: %s", err.msg);
        // a record count that would overflow size computations
        memcpy(buf, good, gn);
        for (int i = 0; i < 8; i++) buf[40 + i] = 0xFF;
        wr32(buf + hb - 4, crc32c(0, buf, hb - 4));
        write_bytes(bad, buf, gn);
        rc = trace_read(bad, &t, &err);
        CHECK(rc == -1 && strstr(err.msg, "records"), "huge count: %s", err.msg);
        (void)rd32;
    }
    test_end();

    test_begin("trace_fuzz_reader");
    {
        uint64_t rng = rng_seed(11);
        int accepted = 0;
        for (int it = 0; it < 400; it++) {
            memcpy(buf, good, gn);
            size_t n = gn;
            int flips = 1 + (int)(rng_next_u64(&rng) % 4);
            for (int f = 0; f < flips; f++) buf[rng_next_u64(&rng) % gn] ^= (uint8_t)(1 + rng_next_u64(&rng) % 255);
            if (it % 3 == 0) wr32(buf + hb - 4, crc32c(0, buf, hb - 4));  // re-sign the header: deeper checks
            if (it % 5 == 0) n = rng_next_u64(&rng) % gn;
            write_bytes(bad, buf, n);
            if (trace_read(bad, &t, &err) == 0) {
                accepted++;
                trace_free(&t);
            }
        }
        CHECK(accepted < 40, "%d of 400 corrupted files accepted", accepted);
    }
    test_end();

    test_begin("trace_concat_merges_domains_and_sequences");
    {
        TraceHeader h2;
        make_header(&h2, 1);
        snprintf(h2.domains[0], TRACE_DOMAIN_LEN, "code");  // swapped order, one new name
        snprintf(h2.domains[1], TRACE_DOMAIN_LEN, "math");
        Trace b, parts[2], cat;
        trace_alloc(&b, &h2, 25, &err);
        fill(&b, 9);
        parts[0] = ref;
        parts[1] = b;
        const char *names[2] = {"a.trace", "b.trace"};
        int rc = trace_concat(&cat, parts, 2, names, &err);
        CHECK(rc == 0, "concat: %s", err.msg);
        if (rc == 0) {
            CHECK(cat.n == 65 && cat.h.n_domains == 3, "n %zu domains %d", cat.n, cat.h.n_domains);
            CHECK(!strcmp(cat.h.domains[2], "math"), "third domain %s", cat.h.domains[2]);
            // b's domain 0 ("code") is domain 1 of the merged trace; sequence ids stay disjoint
            CHECK(cat.domain[40] == (b.domain[0] == 0 ? 1 : 2), "domain remap %d", cat.domain[40]);
            uint32_t max_a = 0;
            for (size_t i = 0; i < 40; i++) max_a = cat.seq[i] > max_a ? cat.seq[i] : max_a;
            int overlap = 0;
            for (size_t i = 40; i < 65; i++) overlap += cat.seq[i] <= max_a;
            CHECK(overlap == 0, "%d sequence ids of the second file collide", overlap);
            size_t MK = (size_t)h.n_layers * h.K;
            CHECK(!memcmp(cat.ids + 40 * MK, b.ids, 25 * MK * 2), "ids not copied");
            trace_free(&cat);
        }
        parts[1].h.E = 32;  // another model
        rc = trace_concat(&cat, parts, 2, names, &err);
        CHECK(rc == -1 && strstr(err.msg, "b.trace") && strstr(err.msg, "does not match"), "other model: %s", err.msg);
        if (rc == 0) trace_free(&cat);
        trace_free(&b);
    }
    test_end();

    free(buf);
    free(good);
    trace_free(&ref);
    unlink(path);
    unlink(bad);
    rmdir(g_dir);
    return test_summary();
}
